//! Which traces are kept for the trace views: every trace with an error, the slowest requests
//! per endpoint per minute, and a uniform sample by trace id (consistent across services).
//! Spans of traces not (yet) chosen wait in a bounded buffer, so a trace chosen by a later span
//! still gets its earlier spans.

use std::collections::VecDeque;

use foldhash::{HashMap, HashSet};

use crate::ingest::convert::span_record;
use crate::model::{EndpointKey, IncomingSpan, SpanRecord};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Fraction of traces kept at random (by trace id), 0.0 … 1.0.
    pub uniform_ratio: f64,
    /// Slowest requests kept per endpoint per minute.
    pub slowest_per_minute: usize,
    /// Spans buffered while their trace is undecided.
    pub buffer_spans: usize,
    /// Bytes of encoded spans buffered while their trace is undecided (one span can be large).
    pub buffer_bytes: usize,
    /// New traces kept per second at most, so an error storm cannot flood the store.
    pub max_new_traces_per_second: u32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            uniform_ratio: 0.01,
            slowest_per_minute: 3,
            buffer_spans: 20_000,
            buffer_bytes: 32 << 20,
            max_new_traces_per_second: 200,
        }
    }
}

/// Why a trace was kept (stored with it; the dashboard shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    Error,
    Slow,
    Sampled,
}

impl KeepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Error => "error",
            KeepReason::Slow => "slow",
            KeepReason::Sampled => "sampled",
        }
    }
}

type TraceId = [u8; 16];

/// Spans of undecided traces, oldest first. Their encodings are copied into one ring of bytes,
/// so waiting costs no allocation per span and holds on to no request body. A trace's waiting
/// spans are linked newest to oldest, so keeping a trace finds them all; spans taken that way
/// stay in the ring, unreachable (their trace's link is gone), until they reach its front.
#[derive(Debug, Default)]
struct WaitBuffer {
    spans: VecDeque<WaitingSpan>,
    /// Sequence number of `spans[0]`; a span's number is its position since start.
    first_seq: u64,
    bytes: VecDeque<u8>,
    /// Offset of `bytes[0]` since start; a waiting span's `encoded` range uses these offsets.
    first_byte: usize,
    /// The newest waiting span of each trace.
    newest: HashMap<TraceId, u64>,
}

#[derive(Debug)]
struct WaitingSpan {
    span: IncomingSpan,
    /// The same trace's previous waiting span.
    previous: Option<u64>,
}

impl WaitBuffer {
    fn push(&mut self, span: &IncomingSpan, encoded: &[u8]) {
        let seq = self.first_seq + self.spans.len() as u64;
        let previous = self.newest.insert(span.trace_id, seq);
        let start = self.first_byte + self.bytes.len();
        self.bytes.extend(encoded);
        self.spans.push_back(WaitingSpan {
            span: IncomingSpan {
                encoded: start..start + encoded.len(),
                ..span.clone()
            },
            previous,
        });
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.spans.pop_front() else {
            return;
        };
        let seq = self.first_seq;
        self.first_seq += 1;
        let len = oldest.span.encoded.len();
        self.bytes.drain(..len);
        self.first_byte += len;
        let trace_id = &oldest.span.trace_id;
        if self.newest.get(trace_id) == Some(&seq) {
            self.newest.remove(trace_id);
        }
    }

    /// Takes every waiting span of `trace_id`, oldest first, each with its encoding.
    fn take_trace(&mut self, trace_id: &TraceId) -> Vec<(IncomingSpan, Vec<u8>)> {
        let mut taken = Vec::new();
        let mut next = self.newest.remove(trace_id);
        while let Some(seq) = next.filter(|seq| *seq >= self.first_seq) {
            let waiting = &self.spans[(seq - self.first_seq) as usize];
            next = waiting.previous;
            let range = &waiting.span.encoded;
            let encoded = self
                .bytes
                .range(range.start - self.first_byte..range.end - self.first_byte)
                .copied()
                .collect();
            taken.push((waiting.span.clone(), encoded));
        }
        taken.reverse();
        taken
    }
}

#[derive(Debug)]
pub struct TraceSampler {
    config: SamplerConfig,
    /// Kept trace ids, oldest first (bounded), so late spans of a kept trace are kept too.
    kept: HashSet<TraceId>,
    kept_order: VecDeque<TraceId>,
    waiting: WaitBuffer,
    /// Durations of the slowest requests this minute per endpoint, ascending.
    slowest: HashMap<EndpointKey, Vec<f64>>,
    slowest_minute: i64,
    budget_second: i64,
    budget_used: u32,
    out: Vec<(SpanRecord, KeepReason)>,
    dropped_for_budget: u64,
}

const KEPT_IDS_REMEMBERED: usize = 10_000;

/// Endpoints whose slowest requests are tracked per minute; beyond it no new endpoint is.
const SLOWEST_ENDPOINTS_TRACKED: usize = 10_000;

impl TraceSampler {
    pub fn new(config: SamplerConfig) -> Self {
        TraceSampler {
            config,
            kept: HashSet::default(),
            kept_order: VecDeque::new(),
            waiting: WaitBuffer::default(),
            slowest: HashMap::default(),
            slowest_minute: i64::MIN,
            budget_second: i64::MIN,
            budget_used: 0,
            out: Vec::new(),
            dropped_for_budget: 0,
        }
    }

    /// Offers one span of a batch; `body` is the batch's body, which `span.encoded` points into.
    pub fn offer(&mut self, span: IncomingSpan, body: &[u8]) {
        let encoded = &body[span.encoded.clone()];
        let trace_id = span.trace_id;
        let end_ms = (span.end_unix_ns / 1_000_000) as i64;
        if self.kept.contains(&trace_id) {
            let reason = if span.is_error {
                KeepReason::Error
            } else {
                KeepReason::Sampled
            };
            self.keep_span(&span, encoded, reason);
            return;
        }
        match self.decide(&trace_id, &span, end_ms) {
            Some(reason) if self.take_budget(end_ms) => {
                self.keep_trace(trace_id);
                for (earlier, earlier_encoded) in self.waiting.take_trace(&trace_id) {
                    self.keep_span(&earlier, &earlier_encoded, reason);
                }
                self.keep_span(&span, encoded, reason);
            }
            Some(_) => {
                self.dropped_for_budget += 1;
                self.wait(&span, encoded);
            }
            None => self.wait(&span, encoded),
        }
    }

    fn keep_span(&mut self, span: &IncomingSpan, encoded: &[u8], reason: KeepReason) {
        if let Some(record) = span_record(span, encoded) {
            self.out.push((record, reason));
        }
    }

    fn decide(
        &mut self,
        trace_id: &TraceId,
        span: &IncomingSpan,
        end_ms: i64,
    ) -> Option<KeepReason> {
        if span.is_error {
            return Some(KeepReason::Error);
        }
        if let Some(endpoint) = &span.endpoint {
            let duration = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64;
            if self.is_among_slowest(endpoint, duration, end_ms) {
                return Some(KeepReason::Slow);
            }
        }
        let random = u64::from_be_bytes(trace_id[8..16].try_into().expect("8 bytes"));
        let threshold = (self.config.uniform_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        (random < threshold).then_some(KeepReason::Sampled)
    }

    fn is_among_slowest(&mut self, endpoint: &EndpointKey, duration: f64, end_ms: i64) -> bool {
        if self.config.slowest_per_minute == 0 {
            return false;
        }
        let minute = end_ms.div_euclid(60_000);
        if minute > self.slowest_minute {
            self.slowest.clear();
            self.slowest_minute = minute;
        } else if minute < self.slowest_minute {
            return false;
        }
        // Look up before inserting: cloning the key for every request costs three allocations.
        if !self.slowest.contains_key(endpoint) {
            // Keyed by the raw endpoint: a flood of distinct routes must not grow this table
            // (the cardinality guard bounds the aggregates, this bounds the sampler).
            if self.slowest.len() >= SLOWEST_ENDPOINTS_TRACKED {
                return false;
            }
            self.slowest.insert(endpoint.clone(), Vec::new());
        }
        let top = self.slowest.get_mut(endpoint).expect("inserted above");
        if top.len() < self.config.slowest_per_minute {
            let at = top.partition_point(|d| *d < duration);
            top.insert(at, duration);
            return true;
        }
        if duration > top[0] {
            top.remove(0);
            let at = top.partition_point(|d| *d < duration);
            top.insert(at, duration);
            return true;
        }
        false
    }

    fn take_budget(&mut self, end_ms: i64) -> bool {
        let second = end_ms.div_euclid(1000);
        if second != self.budget_second {
            self.budget_second = second;
            self.budget_used = 0;
        }
        if self.budget_used >= self.config.max_new_traces_per_second {
            return false;
        }
        self.budget_used += 1;
        true
    }

    fn keep_trace(&mut self, trace_id: TraceId) {
        if self.kept.insert(trace_id) {
            self.kept_order.push_back(trace_id);
        }
        while self.kept_order.len() > KEPT_IDS_REMEMBERED {
            if let Some(old) = self.kept_order.pop_front() {
                self.kept.remove(&old);
            }
        }
    }

    fn wait(&mut self, span: &IncomingSpan, encoded: &[u8]) {
        if self.config.buffer_spans == 0 || encoded.len() > self.config.buffer_bytes {
            return;
        }
        self.waiting.push(span, encoded);
        while self.waiting.spans.len() > self.config.buffer_spans
            || self.waiting.bytes.len() > self.config.buffer_bytes
        {
            self.waiting.evict_oldest();
        }
    }

    /// Spans chosen since the last call, with the reason their trace was kept.
    pub fn take_kept(&mut self) -> Vec<(SpanRecord, KeepReason)> {
        std::mem::take(&mut self.out)
    }

    pub fn pending_kept(&self) -> &[(SpanRecord, KeepReason)] {
        &self.out
    }

    pub fn dropped_for_budget(&self) -> u64 {
        self.dropped_for_budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// A span and the body it lies in (just its own encoding).
    fn span(
        trace: u8,
        span_id: u8,
        duration_ms: u64,
        error: bool,
        server: bool,
    ) -> (IncomingSpan, Vec<u8>) {
        let mut trace_id = [0u8; 16];
        trace_id[0] = trace;
        trace_id[8] = 0xff; // far above any small uniform threshold
        let start = 1_000_000_000;
        let end = start + duration_ms * 1_000_000;
        let encoded = Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![span_id; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        }
        .encode_to_vec();
        let span = IncomingSpan {
            service: "svc".into(),
            endpoint: server.then(|| {
                EndpointKey {
                    service: "svc".into(),
                    method: "GET".into(),
                    route: "/x".into(),
                }
                .into()
            }),
            is_error: error,
            trace_id,
            start_unix_ns: start,
            end_unix_ns: end,
            encoded: 0..encoded.len(),
        };
        (span, encoded)
    }

    fn offer(sampler: &mut TraceSampler, (span, body): (IncomingSpan, Vec<u8>)) {
        sampler.offer(span, &body);
    }

    fn config() -> SamplerConfig {
        SamplerConfig {
            uniform_ratio: 0.0,
            slowest_per_minute: 1,
            buffer_spans: 100,
            buffer_bytes: 1 << 20,
            max_new_traces_per_second: 100,
        }
    }

    #[test]
    fn an_error_keeps_the_whole_trace_including_earlier_spans() {
        let mut sampler = TraceSampler::new(config());
        offer(&mut sampler, span(1, 1, 5, false, false));
        offer(&mut sampler, span(1, 2, 5, true, false));
        offer(&mut sampler, span(1, 3, 5, false, false));
        let kept = sampler.take_kept();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|(_, r)| *r != KeepReason::Slow));
    }

    #[test]
    fn only_the_slowest_per_endpoint_minute_are_kept() {
        let mut sampler = TraceSampler::new(config());
        offer(&mut sampler, span(1, 1, 100, false, true)); // first: slowest so far
        offer(&mut sampler, span(2, 1, 50, false, true)); // not slower
        offer(&mut sampler, span(3, 1, 200, false, true)); // slower: kept
        let kept: Vec<_> = sampler
            .take_kept()
            .into_iter()
            .map(|(s, _)| s.trace_id)
            .collect();
        assert_eq!(kept.len(), 2);
        assert!(kept[0].starts_with("01"));
        assert!(kept[1].starts_with("03"));
    }

    #[test]
    fn uniform_sampling_follows_the_trace_id() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            uniform_ratio: 1.0,
            slowest_per_minute: 0,
            ..config()
        });
        offer(&mut sampler, span(1, 1, 5, false, false));
        assert_eq!(sampler.take_kept()[0].1, KeepReason::Sampled);
    }

    #[test]
    fn the_slowest_table_is_bounded_under_a_route_flood() {
        let mut sampler = TraceSampler::new(config());
        for i in 0..(SLOWEST_ENDPOINTS_TRACKED + 500) {
            let endpoint = EndpointKey {
                service: "svc".into(),
                method: "GET".into(),
                route: format!("/r/{i}"),
            };
            sampler.is_among_slowest(&endpoint, 5.0, 1_000);
        }
        assert_eq!(sampler.slowest.len(), SLOWEST_ENDPOINTS_TRACKED);
    }

    #[test]
    fn the_wait_buffer_is_bounded() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            buffer_spans: 10,
            ..config()
        });
        for t in 0..100u8 {
            offer(&mut sampler, span(t, 1, 5, false, false));
        }
        assert!(sampler.waiting.spans.len() <= 10);
        assert!(sampler.waiting.newest.len() <= 10);
    }

    #[test]
    fn the_wait_buffer_is_bounded_in_bytes() {
        let one = span(0, 1, 5, false, false).1.len();
        let mut sampler = TraceSampler::new(SamplerConfig {
            buffer_bytes: one * 3,
            ..config()
        });
        for t in 0..20u8 {
            offer(&mut sampler, span(t, 1, 5, false, false));
        }
        assert_eq!(sampler.waiting.spans.len(), 3);
        assert_eq!(sampler.waiting.bytes.len(), one * 3);
        assert_eq!(sampler.waiting.newest.len(), 3);
    }

    #[test]
    fn spans_evicted_from_the_wait_buffer_are_not_kept_later() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            buffer_spans: 2,
            ..config()
        });
        offer(&mut sampler, span(1, 1, 5, false, false));
        offer(&mut sampler, span(2, 1, 5, false, false));
        offer(&mut sampler, span(1, 2, 5, false, false)); // evicts trace 1's first span
        offer(&mut sampler, span(1, 3, 5, true, false)); // keeps trace 1
        let kept: Vec<_> = sampler
            .take_kept()
            .into_iter()
            .map(|(s, _)| s.span_id)
            .collect();
        assert_eq!(kept, vec!["02".repeat(8), "03".repeat(8)]);
    }

    #[test]
    fn waiting_spans_do_not_hold_the_request_body() {
        let mut sampler = TraceSampler::new(config());
        let (waiting, encoded) = span(1, 1, 5, false, false);
        let mut body = encoded.clone();
        body.extend_from_slice(&[0; 4096]);
        let body = bytes::Bytes::from(body);
        sampler.offer(waiting, &body);
        // The span's bytes were copied into the ring, not the 4 KiB body.
        assert!(body.is_unique());
        assert_eq!(sampler.waiting.bytes.len(), encoded.len());
        // And they come back intact when the trace is kept.
        offer(&mut sampler, span(1, 2, 5, true, false));
        let kept = sampler.take_kept();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].0.span_id, "01".repeat(8));
    }

    #[test]
    fn the_keep_budget_caps_error_storms() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_new_traces_per_second: 5,
            ..config()
        });
        for t in 0..50u8 {
            offer(&mut sampler, span(t, 1, 5, true, false));
        }
        assert_eq!(sampler.take_kept().len(), 5);
        assert_eq!(sampler.dropped_for_budget(), 45);
    }
}
