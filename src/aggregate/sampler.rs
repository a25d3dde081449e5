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

/// An undecided span: its encoding copied out of the request body, so a waiting span does
/// not hold on to the whole body it came in.
#[derive(Debug)]
struct WaitingSpan {
    span: IncomingSpan,
}

impl WaitingSpan {
    fn new(mut span: IncomingSpan) -> Self {
        span.encoded = bytes::Bytes::copy_from_slice(&span.encoded);
        WaitingSpan { span }
    }

    fn size(&self) -> usize {
        self.span.encoded.len()
    }
}

#[derive(Debug)]
pub struct TraceSampler {
    config: SamplerConfig,
    /// Kept trace ids, oldest first (bounded), so late spans of a kept trace are kept too.
    kept: HashSet<TraceId>,
    kept_order: VecDeque<TraceId>,
    /// Undecided spans by trace, with arrival order for eviction.
    waiting: HashMap<TraceId, Vec<WaitingSpan>>,
    waiting_order: VecDeque<TraceId>,
    waiting_spans: usize,
    waiting_bytes: usize,
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
            waiting: HashMap::default(),
            waiting_order: VecDeque::new(),
            waiting_spans: 0,
            waiting_bytes: 0,
            slowest: HashMap::default(),
            slowest_minute: i64::MIN,
            budget_second: i64::MIN,
            budget_used: 0,
            out: Vec::new(),
            dropped_for_budget: 0,
        }
    }

    pub fn offer(&mut self, span: IncomingSpan) {
        let trace_id = span.trace_id;
        let end_ms = (span.end_unix_ns / 1_000_000) as i64;
        if self.kept.contains(&trace_id) {
            let reason = if span.is_error {
                KeepReason::Error
            } else {
                KeepReason::Sampled
            };
            self.keep_span(&span, reason);
            return;
        }
        match self.decide(&trace_id, &span, end_ms) {
            Some(reason) if self.take_budget(end_ms) => {
                self.keep_trace(trace_id);
                if let Some(earlier) = self.waiting.remove(&trace_id) {
                    for waiting in earlier {
                        self.waiting_spans -= 1;
                        self.waiting_bytes -= waiting.size();
                        self.keep_span(&waiting.span, reason);
                    }
                }
                self.keep_span(&span, reason);
            }
            Some(_) => {
                self.dropped_for_budget += 1;
                self.wait(trace_id, span);
            }
            None => self.wait(trace_id, span),
        }
    }

    fn keep_span(&mut self, span: &IncomingSpan, reason: KeepReason) {
        if let Some(record) = span_record(span) {
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

    fn wait(&mut self, trace_id: TraceId, span: IncomingSpan) {
        if self.config.buffer_spans == 0 || span.encoded.len() > self.config.buffer_bytes {
            return;
        }
        let waiting = WaitingSpan::new(span);
        self.waiting_spans += 1;
        self.waiting_bytes += waiting.size();
        let entry = self.waiting.entry(trace_id).or_default();
        if entry.is_empty() {
            self.waiting_order.push_back(trace_id);
        }
        entry.push(waiting);
        while self.waiting_spans > self.config.buffer_spans
            || self.waiting_bytes > self.config.buffer_bytes
        {
            let Some(oldest) = self.waiting_order.pop_front() else {
                break;
            };
            for evicted in self.waiting.remove(&oldest).into_iter().flatten() {
                self.waiting_spans -= 1;
                self.waiting_bytes -= evicted.size();
            }
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

    fn span(trace: u8, span_id: u8, duration_ms: u64, error: bool, server: bool) -> IncomingSpan {
        let mut trace_id = [0u8; 16];
        trace_id[0] = trace;
        trace_id[8] = 0xff; // far above any small uniform threshold
        let start = 1_000_000_000;
        let end = start + duration_ms * 1_000_000;
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![span_id; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            ..Default::default()
        };
        IncomingSpan {
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
            encoded: span.encode_to_vec().into(),
        }
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
        sampler.offer(span(1, 1, 5, false, false));
        sampler.offer(span(1, 2, 5, true, false));
        sampler.offer(span(1, 3, 5, false, false));
        let kept = sampler.take_kept();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|(_, r)| *r != KeepReason::Slow));
    }

    #[test]
    fn only_the_slowest_per_endpoint_minute_are_kept() {
        let mut sampler = TraceSampler::new(config());
        sampler.offer(span(1, 1, 100, false, true)); // first: slowest so far
        sampler.offer(span(2, 1, 50, false, true)); // not slower
        sampler.offer(span(3, 1, 200, false, true)); // slower: kept
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
        sampler.offer(span(1, 1, 5, false, false));
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
            sampler.offer(span(t, 1, 5, false, false));
        }
        assert!(sampler.waiting_spans <= 10);
        assert!(sampler.waiting.len() <= 10);
    }

    #[test]
    fn the_wait_buffer_is_bounded_in_bytes() {
        let one = span(0, 1, 5, false, false).encoded.len();
        let mut sampler = TraceSampler::new(SamplerConfig {
            buffer_bytes: one * 3,
            ..config()
        });
        for t in 0..20u8 {
            sampler.offer(span(t, 1, 5, false, false));
        }
        assert_eq!(sampler.waiting_spans, 3);
        assert_eq!(sampler.waiting_bytes, one * 3);
    }

    #[test]
    fn waiting_spans_do_not_hold_the_request_body() {
        let mut sampler = TraceSampler::new(config());
        let mut body = span(1, 1, 5, false, false).encoded.to_vec();
        let len = body.len();
        body.extend_from_slice(&[0; 4096]);
        let body = bytes::Bytes::from(body);
        let mut waiting = span(1, 1, 5, false, false);
        waiting.encoded = body.slice(..len);
        sampler.offer(waiting);
        let held = &sampler.waiting.values().next().unwrap()[0].span.encoded;
        // A copy of just the span, not a second reference to the body.
        assert_eq!(held.len(), len);
        assert!(held.is_unique());
        assert!(body.is_unique());
    }

    #[test]
    fn the_keep_budget_caps_error_storms() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_new_traces_per_second: 5,
            ..config()
        });
        for t in 0..50u8 {
            sampler.offer(span(t, 1, 5, true, false));
        }
        assert_eq!(sampler.take_kept().len(), 5);
        assert_eq!(sampler.dropped_for_budget(), 45);
    }
}
