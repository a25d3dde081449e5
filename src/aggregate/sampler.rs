//! Which traces are kept for the trace views: every trace with an error, the slowest requests
//! per endpoint per minute, and a uniform sample by trace id (consistent across services).
//! Spans of traces not (yet) chosen wait in a bounded buffer, so a trace chosen by a later span
//! still gets its earlier spans.
//!
//! Keeping is the first thing shed under a storm, and visibly: every kept span — of a new
//! trace, waiting for one, or arriving late for a kept trace — is paid from a budget of spans
//! and bytes per second of redline's own clock, and kept spans the writer has not taken yet are
//! bounded in bytes. What does not fit is dropped and counted ([`SamplerStats`]); RED figures
//! never depend on it. Client timestamps never drive this state: the second and minute used
//! are the arrival's, and spans outside the accepted clock window are not kept at all.

use std::collections::VecDeque;

use foldhash::{HashMap, HashSet};

use crate::memsize::HeapSize;
use crate::model::span_record::span_record;
use crate::model::{EndpointKey, IncomingSpan, SpanRecord};
use crate::vocab::KeepReason;

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
    /// New traces kept per second at most.
    pub max_new_traces_per_second: u32,
    /// Spans kept per second at most, whatever trace they belong to.
    pub max_kept_spans_per_second: u32,
    /// Encoded bytes of the spans kept per second at most.
    pub max_kept_bytes_per_second: usize,
    /// Kept spans not yet taken by a flush, in bytes; beyond it (a writer that cannot keep up)
    /// further spans are dropped.
    pub max_pending_bytes: usize,
    /// Spans that start or end further than this from redline's clock are not kept: stored
    /// traces are expired by their start time, which must therefore be believable.
    pub max_clock_skew_ms: i64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            uniform_ratio: 0.01,
            slowest_per_minute: 3,
            buffer_spans: 20_000,
            buffer_bytes: 32 << 20,
            max_new_traces_per_second: 200,
            max_kept_spans_per_second: 2_000,
            max_kept_bytes_per_second: 4 << 20,
            max_pending_bytes: 32 << 20,
            max_clock_skew_ms: 6 * 60 * 60 * 1000,
        }
    }
}

/// What the sampler kept and shed since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SamplerStats {
    pub kept_spans: u64,
    /// New traces refused because this second's budget of new traces, spans or bytes was spent.
    pub traces_dropped_for_budget: u64,
    /// Spans of chosen traces refused by the per-second budget (the trace may be kept in part).
    pub spans_dropped_for_budget: u64,
    /// Spans refused because kept spans were waiting for the writer beyond their byte bound.
    pub spans_dropped_for_memory: u64,
    /// Spans not kept because their times lie outside the accepted clock window.
    pub spans_dropped_for_clock: u64,
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

    /// The waiting spans of `trace_id`, newest first.
    fn trace(&self, trace_id: &TraceId) -> impl Iterator<Item = &WaitingSpan> {
        let mut next = self.newest.get(trace_id).copied();
        std::iter::from_fn(move || {
            let seq = next.filter(|seq| *seq >= self.first_seq)?;
            let waiting = &self.spans[(seq - self.first_seq) as usize];
            next = waiting.previous;
            Some(waiting)
        })
    }

    /// How many spans of `trace_id` wait, and their encoded bytes.
    fn measure(&self, trace_id: &TraceId) -> (u32, usize) {
        self.trace(trace_id)
            .fold((0, 0), |(spans, bytes), waiting| {
                (spans + 1, bytes + waiting.span.encoded.len())
            })
    }

    /// Takes every waiting span of `trace_id`, oldest first, each with its encoding.
    fn take_trace(&mut self, trace_id: &TraceId) -> Vec<(IncomingSpan, Vec<u8>)> {
        let mut taken: Vec<(IncomingSpan, Vec<u8>)> = self
            .trace(trace_id)
            .map(|waiting| {
                let range = &waiting.span.encoded;
                let encoded = self
                    .bytes
                    .range(range.start - self.first_byte..range.end - self.first_byte)
                    .copied()
                    .collect();
                (waiting.span.clone(), encoded)
            })
            .collect();
        self.newest.remove(trace_id);
        taken.reverse();
        taken
    }

    /// Gives memory back after a burst: a ring holding a quarter of what it once grew to
    /// shrinks to fit.
    fn shrink(&mut self) {
        if self.bytes.len() < self.bytes.capacity() / 4 {
            self.bytes.shrink_to_fit();
        }
        if self.spans.len() < self.spans.capacity() / 4 {
            self.spans.shrink_to_fit();
            self.newest.shrink_to_fit();
        }
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.spans.capacity() * std::mem::size_of::<WaitingSpan>()
            + self.newest.capacity() * std::mem::size_of::<(TraceId, u64)>()
    }
}

/// The budget of one second of redline's clock.
#[derive(Debug, Default)]
struct SecondBudget {
    second: i64,
    new_traces: u32,
    spans: u32,
    bytes: usize,
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
    /// Heap bytes of `slowest`'s keys.
    slowest_bytes: usize,
    slowest_minute: i64,
    budget: SecondBudget,
    out: Vec<(SpanRecord, KeepReason)>,
    out_bytes: usize,
    stats: SamplerStats,
    /// Traces chosen since the last [`TraceSampler::take_newly_kept`], for the log keeper.
    newly_kept: Vec<TraceId>,
}

const KEPT_IDS_REMEMBERED: usize = 10_000;

/// Endpoints whose slowest requests are tracked per minute; beyond it no new endpoint is.
const SLOWEST_ENDPOINTS_TRACKED: usize = 10_000;
/// A `slowest` entry beyond its key's text: the key, the durations and the table's slot.
const SLOWEST_ENTRY_BYTES: usize = 160;

impl TraceSampler {
    pub fn new(config: SamplerConfig) -> Self {
        TraceSampler {
            config,
            kept: HashSet::default(),
            kept_order: VecDeque::new(),
            waiting: WaitBuffer::default(),
            slowest: HashMap::default(),
            slowest_bytes: 0,
            slowest_minute: i64::MIN,
            budget: SecondBudget::default(),
            out: Vec::new(),
            out_bytes: 0,
            stats: SamplerStats::default(),
            newly_kept: Vec::new(),
        }
    }

    /// Whether `trace_id` is among the kept traces remembered.
    pub fn is_kept(&self, trace_id: &TraceId) -> bool {
        self.kept.contains(trace_id)
    }

    /// Traces chosen since the last call.
    pub fn take_newly_kept(&mut self) -> Vec<TraceId> {
        std::mem::take(&mut self.newly_kept)
    }

    /// Offers one span of a batch arriving at `now_ms`; `body` is the batch's body, which
    /// `span.encoded` points into.
    pub fn offer(&mut self, span: IncomingSpan, body: &[u8], now_ms: i64) {
        let Some(encoded) = body.get(span.encoded.clone()) else {
            return;
        };
        if !self.within_clock(&span, now_ms) {
            self.stats.spans_dropped_for_clock += 1;
            return;
        }
        let second = now_ms.div_euclid(1000);
        if second != self.budget.second {
            self.budget = SecondBudget {
                second,
                ..SecondBudget::default()
            };
        }
        let trace_id = span.trace_id;
        if self.kept.contains(&trace_id) {
            if self.fits(0, 1, encoded.len()) {
                let reason = if span.is_error {
                    KeepReason::Error
                } else {
                    KeepReason::Sampled
                };
                self.keep_span(&span, encoded, reason);
            } else {
                self.stats.spans_dropped_for_budget += 1;
            }
            return;
        }
        let Some(reason) = self.decide(&trace_id, &span, now_ms) else {
            self.wait(&span, encoded);
            return;
        };
        let (waiting_spans, waiting_bytes) = self.waiting.measure(&trace_id);
        if !self.fits(1, waiting_spans + 1, waiting_bytes + encoded.len()) {
            self.stats.traces_dropped_for_budget += 1;
            self.wait(&span, encoded);
            return;
        }
        self.budget.new_traces += 1;
        self.keep_trace(trace_id);
        for (earlier, earlier_encoded) in self.waiting.take_trace(&trace_id) {
            self.keep_span(&earlier, &earlier_encoded, reason);
        }
        self.keep_span(&span, encoded, reason);
    }

    fn within_clock(&self, span: &IncomingSpan, now_ms: i64) -> bool {
        let skew_ns = i128::from(self.config.max_clock_skew_ms) * 1_000_000;
        let now_ns = i128::from(now_ms) * 1_000_000;
        [span.start_unix_ns, span.end_unix_ns]
            .iter()
            .all(|t| (i128::from(*t) - now_ns).abs() <= skew_ns)
    }

    /// Whether this second's budget still has room for `traces` new traces of `spans` spans
    /// and `bytes` bytes; if so they are paid for (but for the trace, which the caller counts).
    fn fits(&mut self, traces: u32, spans: u32, bytes: usize) -> bool {
        let budget = &self.budget;
        let fits = budget.new_traces + traces <= self.config.max_new_traces_per_second
            && budget.spans.saturating_add(spans) <= self.config.max_kept_spans_per_second
            && budget.bytes.saturating_add(bytes) <= self.config.max_kept_bytes_per_second;
        if fits {
            self.budget.spans += spans;
            self.budget.bytes += bytes;
        }
        fits
    }

    fn keep_span(&mut self, span: &IncomingSpan, encoded: &[u8], reason: KeepReason) {
        // A decoded span takes a few times its encoding; checked before paying for decoding.
        if self.out_bytes + 4 * encoded.len() > self.config.max_pending_bytes {
            self.stats.spans_dropped_for_memory += 1;
            return;
        }
        if let Some(record) = span_record(span, encoded) {
            self.out_bytes += record.heap_bytes() + std::mem::size_of::<SpanRecord>();
            self.out.push((record, reason));
            self.stats.kept_spans += 1;
        }
    }

    fn decide(
        &mut self,
        trace_id: &TraceId,
        span: &IncomingSpan,
        now_ms: i64,
    ) -> Option<KeepReason> {
        if span.is_error {
            return Some(KeepReason::Error);
        }
        if let Some(endpoint) = &span.endpoint {
            let duration = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64;
            if self.is_among_slowest(endpoint, duration, now_ms) {
                return Some(KeepReason::Slow);
            }
        }
        let random = u64::from_be_bytes([
            trace_id[8],
            trace_id[9],
            trace_id[10],
            trace_id[11],
            trace_id[12],
            trace_id[13],
            trace_id[14],
            trace_id[15],
        ]);
        let threshold = (self.config.uniform_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        (random < threshold).then_some(KeepReason::Sampled)
    }

    /// Whether a request of `duration` is among the slowest of its endpoint in the minute of
    /// redline's clock it arrived in.
    fn is_among_slowest(&mut self, endpoint: &EndpointKey, duration: f64, now_ms: i64) -> bool {
        if self.config.slowest_per_minute == 0 {
            return false;
        }
        let minute = now_ms.div_euclid(60_000);
        if minute != self.slowest_minute {
            self.slowest.clear();
            self.slowest_bytes = 0;
            self.slowest_minute = minute;
        }
        // Look up before inserting: cloning the key for every request costs three allocations.
        if !self.slowest.contains_key(endpoint) {
            // Keyed by the raw endpoint: a flood of distinct routes must not grow this table
            // (the cardinality guard bounds the aggregates, this bounds the sampler).
            if self.slowest.len() >= SLOWEST_ENDPOINTS_TRACKED {
                return false;
            }
            self.slowest_bytes += endpoint.heap_bytes() + SLOWEST_ENTRY_BYTES;
            self.slowest.insert(endpoint.clone(), Vec::new());
        }
        let Some(top) = self.slowest.get_mut(endpoint) else {
            return false;
        };
        if top.len() < self.config.slowest_per_minute {
            let at = top.partition_point(|d| *d < duration);
            top.insert(at, duration);
            return true;
        }
        if top.first().is_some_and(|fastest| duration > *fastest) {
            top.remove(0);
            let at = top.partition_point(|d| *d < duration);
            top.insert(at, duration);
            return true;
        }
        false
    }

    fn keep_trace(&mut self, trace_id: TraceId) {
        if self.kept.insert(trace_id) {
            self.kept_order.push_back(trace_id);
            self.newly_kept.push(trace_id);
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
        self.out_bytes = 0;
        self.waiting.shrink();
        std::mem::take(&mut self.out)
    }

    pub fn pending_kept(&self) -> &[(SpanRecord, KeepReason)] {
        &self.out
    }

    pub fn stats(&self) -> SamplerStats {
        self.stats
    }

    /// What the sampler holds: its wait buffer and the kept spans not yet taken.
    pub fn heap_bytes(&self) -> usize {
        self.waiting.heap_bytes()
            + self.out_bytes
            + self.out.capacity() * std::mem::size_of::<(SpanRecord, KeepReason)>()
            + self.kept.capacity() * std::mem::size_of::<TraceId>()
            + self.kept_order.capacity() * std::mem::size_of::<TraceId>()
            + self.slowest_bytes
            + self.newly_kept.capacity() * std::mem::size_of::<TraceId>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    /// redline's clock in these tests; spans end at it unless a test says otherwise.
    const NOW_MS: i64 = 1_800_000_000_000;

    /// A span ending at `end_ms` and the body it lies in (just its own encoding).
    fn span_at(
        trace: u8,
        span_id: u8,
        duration_ms: u64,
        error: bool,
        server: bool,
        end_ms: i64,
    ) -> (IncomingSpan, Vec<u8>) {
        let mut trace_id = [0u8; 16];
        trace_id[0] = trace;
        trace_id[8] = 0xff; // far above any small uniform threshold
        let end = end_ms as u64 * 1_000_000;
        let start = end - duration_ms * 1_000_000;
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

    fn span(
        trace: u8,
        span_id: u8,
        duration_ms: u64,
        error: bool,
        server: bool,
    ) -> (IncomingSpan, Vec<u8>) {
        span_at(trace, span_id, duration_ms, error, server, NOW_MS)
    }

    fn offer_at(sampler: &mut TraceSampler, (span, body): (IncomingSpan, Vec<u8>), now_ms: i64) {
        sampler.offer(span, &body, now_ms);
    }

    fn offer(sampler: &mut TraceSampler, span: (IncomingSpan, Vec<u8>)) {
        offer_at(sampler, span, NOW_MS);
    }

    fn config() -> SamplerConfig {
        SamplerConfig {
            uniform_ratio: 0.0,
            slowest_per_minute: 1,
            buffer_spans: 100,
            buffer_bytes: 1 << 20,
            max_new_traces_per_second: 100,
            ..SamplerConfig::default()
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
        assert_eq!(sampler.stats().kept_spans, 3);
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
            sampler.is_among_slowest(&endpoint, 5.0, NOW_MS);
        }
        assert_eq!(sampler.slowest.len(), SLOWEST_ENDPOINTS_TRACKED);
        assert!(sampler.heap_bytes() > SLOWEST_ENDPOINTS_TRACKED * SLOWEST_ENTRY_BYTES);
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
    fn the_wait_buffer_is_bounded_in_bytes_and_shrinks_after_a_burst() {
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

        let mut big = TraceSampler::new(config());
        for t in 0..100u8 {
            offer(&mut big, span(t, 1, 5, false, false));
        }
        let grown = big.heap_bytes();
        // The burst's traces are all kept by errors: the buffer empties and gives memory back.
        big.config.max_kept_spans_per_second = u32::MAX;
        big.config.max_new_traces_per_second = u32::MAX;
        for t in 0..100u8 {
            offer(&mut big, span(t, 2, 5, true, false));
        }
        for _ in 0..100 {
            big.waiting.evict_oldest();
        }
        big.take_kept();
        assert!(
            big.heap_bytes() < grown / 2,
            "{} of {grown}",
            big.heap_bytes()
        );
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
        sampler.offer(waiting, &body, NOW_MS);
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
    fn the_keep_budget_caps_new_traces_per_second_of_arrival() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_new_traces_per_second: 5,
            ..config()
        });
        // Client timestamps that interleave across seconds must not reset the budget: it is
        // kept per second of redline's clock.
        for t in 0..50u8 {
            let end_ms = NOW_MS - 1000 * i64::from(t % 3);
            offer(&mut sampler, span_at(t, 1, 5, true, false, end_ms));
        }
        assert_eq!(sampler.take_kept().len(), 5);
        assert_eq!(sampler.stats().traces_dropped_for_budget, 45);
        // The next second of arrival has a fresh budget.
        for t in 50..60u8 {
            offer_at(&mut sampler, span(t, 1, 5, true, false), NOW_MS + 1000);
        }
        assert_eq!(sampler.take_kept().len(), 5);
    }

    #[test]
    fn late_spans_of_kept_traces_pay_from_the_span_budget() {
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_kept_spans_per_second: 4,
            ..config()
        });
        offer(&mut sampler, span(1, 1, 5, true, false));
        for id in 2..10u8 {
            offer(&mut sampler, span(1, id, 5, false, false));
        }
        assert_eq!(sampler.take_kept().len(), 4);
        assert_eq!(sampler.stats().spans_dropped_for_budget, 5);
    }

    #[test]
    fn the_byte_budget_caps_kept_bytes_per_second() {
        let one = span(0, 1, 5, true, false).1.len();
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_kept_bytes_per_second: one * 3,
            ..config()
        });
        for t in 0..10u8 {
            offer(&mut sampler, span(t, 1, 5, true, false));
        }
        assert_eq!(sampler.take_kept().len(), 3);
        assert_eq!(sampler.stats().traces_dropped_for_budget, 7);
    }

    #[test]
    fn kept_spans_the_writer_has_not_taken_are_bounded_in_bytes() {
        let one = span(0, 1, 5, true, false).1.len();
        let mut sampler = TraceSampler::new(SamplerConfig {
            max_pending_bytes: 4 * one * 3,
            ..config()
        });
        for t in 0..10u8 {
            offer(&mut sampler, span(t, 1, 5, true, false));
        }
        assert!(sampler.pending_kept().len() <= 3);
        assert!(sampler.stats().spans_dropped_for_memory >= 7);
        // Once a flush takes them, keeping resumes.
        sampler.take_kept();
        offer(&mut sampler, span(20, 1, 5, true, false));
        assert_eq!(sampler.pending_kept().len(), 1);
    }

    #[test]
    fn spans_outside_the_clock_window_are_not_kept_and_do_not_move_the_clock() {
        let mut sampler = TraceSampler::new(config());
        let year_2500_ms = 16_725_225_600_000;
        offer(&mut sampler, span_at(1, 1, 5, true, true, year_2500_ms));
        offer(&mut sampler, span_at(2, 1, 5, true, true, 1_000));
        assert!(sampler.take_kept().is_empty());
        assert_eq!(sampler.stats().spans_dropped_for_clock, 2);
        // Slow-trace keeping still works for spans of now.
        offer(&mut sampler, span(3, 1, 100, false, true));
        assert_eq!(sampler.take_kept().len(), 1);
    }

    #[test]
    fn the_slowest_minute_follows_arrival_not_span_times() {
        let mut sampler = TraceSampler::new(config());
        // A span that claims to end five minutes ahead is slowest in the minute it arrived in.
        offer(
            &mut sampler,
            span_at(1, 1, 100, false, true, NOW_MS + 300_000),
        );
        // The next minute of arrival starts a new table, whatever the spans' own times.
        offer_at(
            &mut sampler,
            span_at(2, 1, 10, false, true, NOW_MS - 300_000),
            NOW_MS + 60_000,
        );
        assert_eq!(sampler.take_kept().len(), 2);
    }
}
