//! Which log records are kept: every record at WARN or above, and every record of a kept trace
//! (the trace sampler decides which traces those are). A record of an undecided trace waits in
//! a bounded buffer, so a trace chosen after its logs arrived still gets them; one whose trace
//! is never chosen is let go when the buffer needs its room.
//!
//! Like kept spans, kept records are paid from a budget of records and bytes per second of
//! redline's clock, and the kept records the writer has not taken yet are bounded in bytes;
//! what does not fit is dropped and counted ([`LogStats`]). Counts per severity never depend
//! on it: every record is counted at conversion.

use std::collections::VecDeque;

use foldhash::HashMap;

use crate::memsize::HeapSize;
use crate::model::log_record::{IncomingLog, LogRecord, WARN_NUMBER};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogKeeperConfig {
    /// Records kept per second at most.
    pub max_kept_per_second: u32,
    /// Bytes of records kept per second at most.
    pub max_kept_bytes_per_second: usize,
    /// Records of undecided traces waiting, in count and bytes.
    pub buffer_records: usize,
    pub buffer_bytes: usize,
    /// Kept records not yet taken by a flush, in bytes; beyond it further records are dropped.
    pub max_pending_bytes: usize,
    /// A record further than this from redline's clock is placed at now: stored records are
    /// expired and listed by their time, which must therefore be believable.
    pub max_clock_skew_ms: i64,
}

impl Default for LogKeeperConfig {
    fn default() -> Self {
        LogKeeperConfig {
            max_kept_per_second: 2_000,
            max_kept_bytes_per_second: 1 << 20,
            buffer_records: 20_000,
            buffer_bytes: 8 << 20,
            max_pending_bytes: 16 << 20,
            max_clock_skew_ms: 6 * 60 * 60 * 1000,
        }
    }
}

/// What log keeping kept and shed since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    pub kept: u64,
    /// Records refused because this second's budget of records or bytes was spent.
    pub dropped_for_budget: u64,
    /// Records refused because kept records were waiting for the writer beyond their bound.
    pub dropped_for_memory: u64,
    /// Records whose time was placed at now (too far from redline's clock).
    pub clock_corrected: u64,
}

type TraceId = [u8; 16];

struct Waiting {
    trace_id: TraceId,
    record: LogRecord,
    bytes: usize,
}

/// Records of undecided traces, oldest first; a record taken with its trace leaves `None`
/// behind until it reaches the front.
#[derive(Default)]
struct WaitBuffer {
    records: VecDeque<Option<Waiting>>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// Waiting records of each trace, oldest first.
    by_trace: HashMap<TraceId, Vec<u64>>,
    bytes: usize,
    count: usize,
}

impl WaitBuffer {
    fn push(&mut self, waiting: Waiting) {
        let seq = self.first_seq + self.records.len() as u64;
        self.by_trace.entry(waiting.trace_id).or_default().push(seq);
        self.bytes += waiting.bytes;
        self.count += 1;
        self.records.push_back(Some(waiting));
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.records.pop_front() else {
            return;
        };
        self.first_seq += 1;
        let Some(oldest) = oldest else {
            return;
        };
        self.bytes -= oldest.bytes;
        self.count -= 1;
        if let Some(seqs) = self.by_trace.get_mut(&oldest.trace_id) {
            seqs.retain(|seq| *seq >= self.first_seq);
            if seqs.is_empty() {
                self.by_trace.remove(&oldest.trace_id);
            }
        }
    }

    /// Takes the waiting records of `trace_id`, oldest first.
    fn take_trace(&mut self, trace_id: &TraceId) -> Vec<LogRecord> {
        let Some(seqs) = self.by_trace.remove(trace_id) else {
            return Vec::new();
        };
        let mut taken = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(slot) = seq
                .checked_sub(self.first_seq)
                .and_then(|i| self.records.get_mut(i as usize))
            else {
                continue;
            };
            if let Some(waiting) = slot.take() {
                self.bytes -= waiting.bytes;
                self.count -= 1;
                taken.push(waiting.record);
            }
        }
        while matches!(self.records.front(), Some(None)) {
            self.records.pop_front();
            self.first_seq += 1;
        }
        taken
    }

    fn heap_bytes(&self) -> usize {
        self.bytes
            + self.records.capacity() * std::mem::size_of::<Option<Waiting>>()
            + self.by_trace.capacity() * (std::mem::size_of::<(TraceId, Vec<u64>)>() + 8)
    }
}

pub struct LogKeeper {
    config: LogKeeperConfig,
    waiting: WaitBuffer,
    /// The second of redline's clock the budget is for, and what it has spent.
    second: i64,
    spent_records: u32,
    spent_bytes: usize,
    out: Vec<LogRecord>,
    out_bytes: usize,
    stats: LogStats,
}

/// Bytes a record holds: its struct and its text.
fn record_bytes(record: &LogRecord) -> usize {
    std::mem::size_of::<LogRecord>() + record.heap_bytes()
}

impl LogKeeper {
    pub fn new(config: LogKeeperConfig) -> Self {
        LogKeeper {
            config,
            waiting: WaitBuffer::default(),
            second: i64::MIN,
            spent_records: 0,
            spent_bytes: 0,
            out: Vec::new(),
            out_bytes: 0,
            stats: LogStats::default(),
        }
    }

    /// Offers a record arriving at `now_ms`; `trace_kept` says whether a trace is kept.
    pub fn offer(&mut self, log: IncomingLog, now_ms: i64, trace_kept: impl Fn(&TraceId) -> bool) {
        let IncomingLog {
            trace_id,
            mut record,
        } = log;
        let skew_ns = i128::from(self.config.max_clock_skew_ms) * 1_000_000;
        let now_ns = i128::from(now_ms) * 1_000_000;
        if (i128::from(record.time_unix_ns) - now_ns).abs() > skew_ns {
            record.time_unix_ns = now_ns.max(0) as u64;
            self.stats.clock_corrected += 1;
        }
        if record.severity_number >= WARN_NUMBER || trace_id.as_ref().is_some_and(&trace_kept) {
            self.keep(record, now_ms);
            return;
        }
        let Some(trace_id) = trace_id else {
            return;
        };
        let bytes = record_bytes(&record);
        if self.config.buffer_records == 0 || bytes > self.config.buffer_bytes {
            return;
        }
        self.waiting.push(Waiting {
            trace_id,
            record,
            bytes,
        });
        while self.waiting.count > self.config.buffer_records
            || self.waiting.bytes > self.config.buffer_bytes
        {
            self.waiting.evict_oldest();
        }
    }

    /// Keeps the waiting records of a trace the sampler has just chosen.
    pub fn trace_kept(&mut self, trace_id: &TraceId, now_ms: i64) {
        for record in self.waiting.take_trace(trace_id) {
            self.keep(record, now_ms);
        }
    }

    fn keep(&mut self, record: LogRecord, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        if second != self.second {
            self.second = second;
            self.spent_records = 0;
            self.spent_bytes = 0;
        }
        let bytes = record_bytes(&record);
        if self.spent_records >= self.config.max_kept_per_second
            || self.spent_bytes.saturating_add(bytes) > self.config.max_kept_bytes_per_second
        {
            self.stats.dropped_for_budget += 1;
            return;
        }
        if self.out_bytes.saturating_add(bytes) > self.config.max_pending_bytes {
            self.stats.dropped_for_memory += 1;
            return;
        }
        self.spent_records += 1;
        self.spent_bytes += bytes;
        self.out_bytes += bytes;
        self.out.push(record);
        self.stats.kept += 1;
    }

    /// Records kept since the last call.
    pub fn take_kept(&mut self) -> Vec<LogRecord> {
        self.out_bytes = 0;
        if self.waiting.records.len() < self.waiting.records.capacity() / 4 {
            self.waiting.records.shrink_to_fit();
            self.waiting.by_trace.shrink_to_fit();
        }
        std::mem::take(&mut self.out)
    }

    pub fn pending_kept(&self) -> &[LogRecord] {
        &self.out
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// What the keeper holds: waiting records and kept ones not yet taken.
    pub fn heap_bytes(&self) -> usize {
        self.waiting.heap_bytes()
            + self.out_bytes
            + self.out.capacity() * std::mem::size_of::<LogRecord>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn log(severity_number: u8, trace: Option<u8>, body: &str) -> IncomingLog {
        let trace_id = trace.map(|t| [t; 16]);
        IncomingLog {
            trace_id,
            record: LogRecord {
                time_unix_ns: NOW_MS as u64 * 1_000_000,
                service: "api".into(),
                severity_number,
                severity_text: String::new(),
                body: body.into(),
                trace_id: trace_id.map(hex::encode),
                span_id: None,
                attributes: BTreeMap::new(),
            },
        }
    }

    fn bodies(records: &[LogRecord]) -> Vec<&str> {
        records.iter().map(|r| r.body.as_str()).collect()
    }

    #[test]
    fn warnings_and_records_of_kept_traces_are_kept() {
        let mut keeper = LogKeeper::new(LogKeeperConfig::default());
        let kept_trace = |id: &TraceId| id[0] == 1;
        keeper.offer(log(9, None, "info"), NOW_MS, kept_trace);
        keeper.offer(log(13, None, "warn"), NOW_MS, kept_trace);
        keeper.offer(log(9, Some(1), "info of a kept trace"), NOW_MS, kept_trace);
        keeper.offer(log(9, Some(2), "info, undecided"), NOW_MS, kept_trace);
        keeper.offer(log(5, Some(2), "debug, undecided"), NOW_MS, kept_trace);
        assert_eq!(
            bodies(&keeper.take_kept()),
            ["warn", "info of a kept trace"]
        );
        // The sampler chooses trace 2 later: its waiting records follow, oldest first.
        keeper.trace_kept(&[2; 16], NOW_MS);
        assert_eq!(
            bodies(&keeper.take_kept()),
            ["info, undecided", "debug, undecided"]
        );
        keeper.trace_kept(&[2; 16], NOW_MS);
        assert!(keeper.take_kept().is_empty());
        assert_eq!(keeper.stats().kept, 4);
    }

    #[test]
    fn the_wait_buffer_and_the_budgets_are_bounded() {
        let config = LogKeeperConfig {
            buffer_records: 2,
            max_kept_per_second: 3,
            ..LogKeeperConfig::default()
        };
        let mut keeper = LogKeeper::new(config);
        for (i, trace) in [3u8, 4, 5].into_iter().enumerate() {
            keeper.offer(log(9, Some(trace), &format!("w{i}")), NOW_MS, |_| false);
        }
        // The oldest waiting record made room: its trace finds nothing.
        keeper.trace_kept(&[3; 16], NOW_MS);
        keeper.trace_kept(&[5; 16], NOW_MS);
        assert_eq!(bodies(&keeper.take_kept()), ["w2"]);
        for i in 0..5 {
            keeper.offer(log(17, None, &format!("e{i}")), NOW_MS, |_| false);
        }
        assert_eq!(keeper.take_kept().len(), 2, "3 per second, one spent on w2");
        assert_eq!(keeper.stats().dropped_for_budget, 3);
        // A new second, a new budget.
        keeper.offer(log(17, None, "next second"), NOW_MS + 1000, |_| false);
        assert_eq!(bodies(&keeper.take_kept()), ["next second"]);
        assert!(keeper.waiting.count <= 2 && keeper.waiting.records.len() <= 2);
    }

    #[test]
    fn a_record_from_a_skewed_clock_is_placed_at_now() {
        let mut keeper = LogKeeper::new(LogKeeperConfig::default());
        let mut far = log(17, None, "from 1970");
        far.record.time_unix_ns = 5;
        keeper.offer(far, NOW_MS, |_| false);
        assert_eq!(keeper.take_kept()[0].time_ms(), NOW_MS);
        assert_eq!(keeper.stats().clock_corrected, 1);
    }
}
