//! redline's own health, recorded through the `metrics` facade and rendered as Prometheus text
//! on `/metrics`. Names live here so every stage reports under one vocabulary.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder once and returns its handle. Later calls (a
/// second app in one test process) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| {
                    // Someone else installed a recorder: render an empty, private one.
                    PrometheusBuilder::new().build_recorder().handle()
                })
        })
        .clone()
}

/// The signal an ingest counter is about.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    /// What one item of the signal is called: the `item` label of per-sender counts.
    pub fn item(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "points",
            Signal::Logs => "log_records",
        }
    }
}

pub fn accepted(signal: Signal, count: u64) {
    counter!(format!("redline_{}_accepted_total", signal.item())).increment(count);
    TOTALS[signal as usize].fetch_add(count, Ordering::Relaxed);
}

/// `reason`: invalid, overload (the queue is full), memory (the memory budget is spent), behind
/// (unwritten data at its bound), too_large, undecodable, unsupported_media_type.
pub fn rejected(signal: Signal, reason: &'static str, count: u64) {
    counter!(format!("redline_{}_rejected_total", signal.item()), "reason" => reason)
        .increment(count);
    TOTALS[SIGNALS + signal as usize].fetch_add(count, Ordering::Relaxed);
}

/// Accepted and rejected spans and points since the process started, for the dashboard's
/// health panel (a typed read instead of parsing Prometheus text). Process-wide, like the
/// Prometheus recorder: several apps in one test process share them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestTotals {
    pub spans_accepted: u64,
    pub points_accepted: u64,
    pub log_records_accepted: u64,
    pub spans_rejected: u64,
    pub points_rejected: u64,
    pub log_records_rejected: u64,
}

const SIGNALS: usize = 3;

/// Accepted items by [`Signal`] index, then rejected ones.
static TOTALS: [AtomicU64; 2 * SIGNALS] = [const { AtomicU64::new(0) }; 2 * SIGNALS];

pub fn ingest_totals() -> IngestTotals {
    let get = |i: usize| TOTALS[i].load(Ordering::Relaxed);
    IngestTotals {
        spans_accepted: get(0),
        points_accepted: get(1),
        log_records_accepted: get(2),
        spans_rejected: get(3),
        points_rejected: get(4),
        log_records_rejected: get(5),
    }
}

/// A log record's trace or span id of the wrong length, ignored (the record is kept as one
/// not associated with a trace, as the OTLP data model says).
pub fn log_ids_ignored() {
    counter!("redline_log_ids_ignored_total").increment(1);
}

/// The counter of items accepted from one authenticated sender (an OTLP API key's name, or a
/// client certificate's).
pub fn sender_accepted(sender: &str, signal: Signal) -> metrics::Counter {
    counter!("redline_sender_items_accepted_total", "sender" => sender.to_string(), "item" => signal.item())
}

/// A TLS connection that did not become one. `listener`: otlp_grpc, otlp_http, web; `reason`:
/// error (the handshake failed, e.g. no or an untrusted client certificate), timeout, busy (too
/// many handshakes in progress).
pub fn tls_handshake_failed(listener: &'static str, reason: &'static str) {
    counter!("redline_tls_handshakes_failed_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// A reload (SIGHUP) of `what` (otlp_api_keys, tls), and whether it took.
pub fn reloaded(what: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!("redline_reloads_total", "what" => what, "result" => result).increment(1);
}

/// `reason` besides those of [`rejected`]: missing_api_key, wrong_api_key,
/// no_client_certificate (OTLP authentication, answered 401/UNAUTHENTICATED).
pub fn requests_rejected(reason: &'static str) {
    counter!("redline_export_requests_rejected_total", "reason" => reason).increment(1);
}

/// Requests the web address refused before any route: `reason` is host (a Host not in the
/// allowlist), no_host, auth (no or wrong credentials) or csrf (a cross-site write).
pub fn web_refused(reason: &'static str) {
    counter!("redline_web_requests_refused_total", "reason" => reason).increment(1);
}

pub fn queue_depth(items: usize, capacity: usize) {
    gauge!("redline_ingest_queue_items").set(items as f64);
    gauge!("redline_ingest_queue_capacity").set(capacity as f64);
}

/// Keys the aggregator tracks, by kind.
pub fn series(services: usize, endpoints: usize, metric_series: usize) {
    gauge!("redline_series", "kind" => "services").set(services as f64);
    gauge!("redline_series", "kind" => "endpoints").set(endpoints as f64);
    gauge!("redline_series", "kind" => "metric_series").set(metric_series as f64);
}

/// Data sent to `__overflow__` since start, by kind (totals); `metric_streams`: cumulative
/// points of producers beyond the delta converter's room, counted as nothing.
pub fn overflow(services: u64, endpoints: u64, metric_series: u64, metric_streams: u64) {
    counter!("redline_overflow_total", "kind" => "services").absolute(services);
    counter!("redline_overflow_total", "kind" => "endpoints").absolute(endpoints);
    counter!("redline_overflow_total", "kind" => "metric_series").absolute(metric_series);
    counter!("redline_overflow_total", "kind" => "metric_streams").absolute(metric_streams);
}

/// RED data placed at now because its time was more than 6 h off (total).
pub fn clock_skew_corrected(total: u64) {
    counter!("redline_clock_skew_corrected_total").absolute(total);
}

/// What trace keeping kept and dropped since start (totals).
pub struct TraceKeeping {
    pub kept_spans: u64,
    pub traces_dropped_for_budget: u64,
    pub spans_dropped_for_budget: u64,
    pub spans_dropped_for_memory: u64,
    pub spans_dropped_for_clock: u64,
}

pub fn trace_keeping(totals: TraceKeeping) {
    counter!("redline_trace_spans_kept_total").absolute(totals.kept_spans);
    counter!("redline_traces_dropped_for_budget_total").absolute(totals.traces_dropped_for_budget);
    for (reason, count) in [
        ("budget", totals.spans_dropped_for_budget),
        ("memory", totals.spans_dropped_for_memory),
        ("clock", totals.spans_dropped_for_clock),
    ] {
        counter!("redline_trace_spans_dropped_total", "reason" => reason).absolute(count);
    }
}

/// What log keeping kept and dropped since start (totals).
pub struct LogKeeping {
    pub kept: u64,
    pub dropped_for_budget: u64,
    pub dropped_for_memory: u64,
}

pub fn log_keeping(totals: LogKeeping) {
    counter!("redline_log_records_kept_total").absolute(totals.kept);
    for (reason, count) in [
        ("budget", totals.dropped_for_budget),
        ("memory", totals.dropped_for_memory),
    ] {
        counter!("redline_log_records_dropped_total", "reason" => reason).absolute(count);
    }
}

/// The memory limit, and what each part of the budget holds.
pub fn memory(limit: usize, used_by_part: impl IntoIterator<Item = (&'static str, usize)>) {
    gauge!("redline_memory_limit_bytes").set(limit as f64);
    for (part, used) in used_by_part {
        gauge!("redline_memory_used_bytes", "part" => part).set(used as f64);
    }
}

/// Acknowledged spans and points that are not yet stored.
pub fn unwritten(items: u64) {
    gauge!("redline_unwritten_items").set(items as f64);
}

/// A stage caught a panic (a bug) and went on without the work that panicked.
pub fn stage_panicked(stage: &'static str) {
    counter!("redline_stage_panics_total", "stage" => stage).increment(1);
}

/// Rows of one flush, by kind.
#[derive(Debug, Clone, Copy)]
pub struct FlushRows {
    pub red: usize,
    pub metric: usize,
    pub span: usize,
    pub log: usize,
}

impl FlushRows {
    fn total(self) -> u64 {
        (self.red + self.metric + self.span + self.log) as u64
    }
}

pub fn store_write(elapsed: Duration, rows: FlushRows) {
    histogram!("redline_store_write_seconds").record(elapsed.as_secs_f64());
    counter!("redline_store_rows_written_total", "kind" => "red").increment(rows.red as u64);
    counter!("redline_store_rows_written_total", "kind" => "metric").increment(rows.metric as u64);
    counter!("redline_store_rows_written_total", "kind" => "span").increment(rows.span as u64);
    counter!("redline_store_rows_written_total", "kind" => "log").increment(rows.log as u64);
}

pub fn database_size(bytes: u64) {
    gauge!("redline_database_size_bytes").set(bytes as f64);
}

/// Alerts the engine holds, by state (`pending`, `firing`, `resolved`).
pub fn alerts(by_state: impl IntoIterator<Item = (&'static str, usize)>) {
    for (state, count) in by_state {
        gauge!("redline_alerts", "state" => state).set(count as f64);
    }
}

/// An alert e-mail accepted by the SMTP server (or written as an `.eml` file).
pub fn notification_sent() {
    counter!("redline_notifications_sent_total").increment(1);
}

/// `reason`: permanent (an SMTP 5xx reply), expired (retried past the outbox's maximum age).
pub fn notification_failed(reason: &'static str) {
    counter!("redline_notifications_failed_total", "reason" => reason).increment(1);
}

/// A transient delivery failure that schedules another attempt.
pub fn notification_retry() {
    counter!("redline_notification_retries_total").increment(1);
}

pub fn outbox_pending(messages: u64) {
    gauge!("redline_outbox_pending").set(messages as f64);
}

/// A stored row that cannot be decoded: skipped by a read, or replaced by the writer. `table`:
/// red_10s, red_1m, red_10m, red_1h, metric_10s, metric_1m, metric_1h, metric_series,
/// endpoints, traces, spans.
pub fn store_row_unreadable(table: &'static str) {
    counter!("redline_store_rows_unreadable_total", "table" => table).increment(1);
}

/// Rows of a flush the writer left out because SQLite refused them for their content (or their
/// write panicked), the rest of the flush being stored. `kind`: red, metric, span.
pub fn store_rows_skipped(kind: &'static str, rows: u64) {
    counter!("redline_store_rows_skipped_total", "kind" => kind).increment(rows);
}

/// Whether the store writer is failing (its last write met a fault of the database or disk).
pub fn store_writer_failing(failing: bool) {
    gauge!("redline_store_writer_failing").set(if failing { 1.0 } else { 0.0 });
}

/// A write attempt that met a fault and will be tried again. `fault`: disk_full, read_only,
/// locked, io, corrupt, other.
pub fn store_write_fault(fault: &'static str) {
    counter!("redline_store_write_failures_total", "fault" => fault).increment(1);
}

/// A flush the writer gave up. `reason`: panic (it panicked in one go and row by row),
/// shutdown (not stored by the shutdown deadline), unstorable (refused outside any row).
pub fn store_flush_dropped(reason: &'static str, rows: FlushRows) {
    counter!("redline_store_flushes_dropped_total", "reason" => reason).increment(1);
    counter!("redline_store_rows_lost_total").increment(rows.total());
}

/// A panic caught in the store writer thread, which goes on serving.
pub fn store_writer_panic() {
    counter!("redline_store_writer_panics_total").increment(1);
}

/// A client string cut to its length limit, or a list shortened to its count limit
/// (`field`: see [`crate::model::limits::Field`]).
pub fn truncated(field: &'static str) {
    counter!("redline_truncated_total", "field" => field).increment(1);
}

/// Samples a remote-write target accepted, by `target` (its URL without credentials or query).
pub fn remote_write_sent(target: &str, samples: u64) {
    counter!("redline_remote_write_samples_sent_total", "target" => target.to_string())
        .increment(samples);
}

/// Samples never delivered to a remote-write target. `reason`: queue_full (the oldest were
/// dropped to make room), rejected (the target answered a 4xx other than 429), encode.
pub fn remote_write_dropped(target: &str, reason: &'static str, samples: u64) {
    counter!(
        "redline_remote_write_samples_dropped_total",
        "target" => target.to_string(),
        "reason" => reason
    )
    .increment(samples);
}

/// A failed push that will be tried again (5xx, 429, or no answer).
pub fn remote_write_retry(target: &str) {
    counter!("redline_remote_write_retries_total", "target" => target.to_string()).increment(1);
}

/// Bytes of compressed requests waiting for a remote-write target.
pub fn remote_write_queue_bytes(target: &str, bytes: usize) {
    gauge!("redline_remote_write_queue_bytes", "target" => target.to_string()).set(bytes as f64);
}
