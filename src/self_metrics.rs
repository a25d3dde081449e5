//! redline's own health, recorded through the `metrics` facade and rendered as Prometheus text
//! on `/metrics`. Names live here so every stage reports under one vocabulary.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::aggregate::{AggregatorStats, FlushBatch};

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
}

impl Signal {
    fn item(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "points",
        }
    }
}

pub fn accepted(signal: Signal, count: u64) {
    counter!(format!("redline_{}_accepted_total", signal.item())).increment(count);
    TOTALS[signal as usize].fetch_add(count, Ordering::Relaxed);
}

/// `reason`: invalid, overload, too_large, undecodable, unsupported_media_type.
pub fn rejected(signal: Signal, reason: &'static str, count: u64) {
    counter!(format!("redline_{}_rejected_total", signal.item()), "reason" => reason)
        .increment(count);
    TOTALS[2 + signal as usize].fetch_add(count, Ordering::Relaxed);
}

/// Accepted and rejected spans and points since the process started, for the dashboard's
/// health panel (a typed read instead of parsing Prometheus text). Process-wide, like the
/// Prometheus recorder: several apps in one test process share them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestTotals {
    pub spans_accepted: u64,
    pub points_accepted: u64,
    pub spans_rejected: u64,
    pub points_rejected: u64,
}

/// Spans accepted, points accepted, spans rejected, points rejected (by [`Signal`] index).
static TOTALS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

pub fn ingest_totals() -> IngestTotals {
    let get = |i: usize| TOTALS[i].load(Ordering::Relaxed);
    IngestTotals {
        spans_accepted: get(0),
        points_accepted: get(1),
        spans_rejected: get(2),
        points_rejected: get(3),
    }
}

pub fn requests_rejected(reason: &'static str) {
    counter!("redline_export_requests_rejected_total", "reason" => reason).increment(1);
}

pub fn queue_depth(items: usize, capacity: usize) {
    gauge!("redline_ingest_queue_items").set(items as f64);
    gauge!("redline_ingest_queue_capacity").set(capacity as f64);
}

pub fn aggregator(stats: &AggregatorStats) {
    gauge!("redline_series", "kind" => "services").set(stats.services as f64);
    gauge!("redline_series", "kind" => "endpoints").set(stats.endpoints as f64);
    gauge!("redline_series", "kind" => "metric_series").set(stats.metric_series as f64);
    counter!("redline_overflow_total", "kind" => "services").absolute(stats.overflow.services);
    counter!("redline_overflow_total", "kind" => "endpoints").absolute(stats.overflow.endpoints);
    counter!("redline_overflow_total", "kind" => "metric_series")
        .absolute(stats.overflow.metric_series);
    counter!("redline_traces_dropped_for_budget_total").absolute(stats.traces_dropped_for_budget);
    counter!("redline_clock_skew_corrected_total").absolute(stats.clock_skew_corrected);
}

pub fn store_write(elapsed: Duration, batch: &FlushBatch) {
    histogram!("redline_store_write_seconds").record(elapsed.as_secs_f64());
    counter!("redline_store_rows_written_total", "kind" => "red").increment(batch.red.len() as u64);
    counter!("redline_store_rows_written_total", "kind" => "metric")
        .increment(batch.metrics.len() as u64);
    counter!("redline_store_rows_written_total", "kind" => "span")
        .increment(batch.spans.len() as u64);
}

pub fn store_write_failed(batch: &FlushBatch) {
    counter!("redline_store_write_failures_total").increment(1);
    counter!("redline_store_rows_lost_total")
        .increment((batch.red.len() + batch.metrics.len() + batch.spans.len()) as u64);
}

pub fn database_size(bytes: u64) {
    gauge!("redline_database_size_bytes").set(bytes as f64);
}

pub fn alerts(engine: &crate::alerts::engine::Engine) {
    use crate::alerts::engine::AlertState;
    for state in [
        AlertState::Pending,
        AlertState::Firing,
        AlertState::Resolved,
    ] {
        let count = engine.alerts().filter(|a| a.state == state).count();
        gauge!("redline_alerts", "state" => state.as_str()).set(count as f64);
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

/// A client string cut to its length limit, or a list shortened to its count limit
/// (`field`: see [`crate::ingest::limits::Field`]).
pub fn truncated(field: &'static str) {
    counter!("redline_truncated_total", "field" => field).increment(1);
}
