//! The writer thread: the only connection that writes. Applies each flush in one transaction
//! (every resolution at once, so rollups never lag), records the flush sequence number with it,
//! and enforces retention.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::aggregate::{FlushBatch, SeriesInfo};
use crate::model::{EndpointKey, MetricSeriesKey, RedSource, SpanRecord};
use crate::self_metrics;
use crate::store::codec::{self, RED_COLUMNS};
use crate::store::{Resolution, Retention, StoreError};

enum Command {
    Flush {
        seq: u64,
        batch: Arc<FlushBatch>,
    },
    Retention {
        now_ms: i64,
    },
    /// Replies once every command sent before it has been applied.
    Barrier(oneshot::Sender<()>),
}

/// Sends work to the writer thread. Dropping every handle (or `close`) stops the thread after
/// it has applied what was queued.
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// Flushes queued ahead of the writer; beyond it the pipeline keeps data in memory.
const QUEUED_FLUSHES: usize = 2;

/// Why the writer did not take a flush.
#[derive(Debug)]
pub enum TryFlushError {
    /// Its queue is full: the caller keeps the flush and offers it again later.
    Busy(Arc<FlushBatch>),
    Closed,
}

/// Starts the writer thread on `conn`. `on_commit(seq)` runs after each flush is durable.
pub fn spawn_writer(
    conn: Connection,
    retention: Retention,
    on_commit: impl Fn(u64) + Send + 'static,
) -> WriterHandle {
    let (tx, mut rx) = mpsc::channel(QUEUED_FLUSHES);
    let thread = std::thread::Builder::new()
        .name("redline-store-writer".into())
        .spawn(move || {
            lower_thread_priority();
            let mut writer = Writer {
                conn,
                retention,
                endpoint_ids: HashMap::new(),
                series_ids: HashMap::new(),
            };
            while let Some(command) = rx.blocking_recv() {
                match command {
                    Command::Flush { seq, batch } => {
                        writer.flush_with_retries(seq, &batch);
                        on_commit(seq);
                    }
                    Command::Retention { now_ms } => {
                        if let Err(e) = writer.apply_retention(now_ms) {
                            tracing::error!(error = %e, "retention failed");
                        }
                        writer.report_size();
                    }
                    Command::Barrier(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
        })
        .expect("spawn store writer thread");
    WriterHandle {
        tx,
        thread: Some(thread),
    }
}

/// The writer's niceness. Storing is background work that only has to keep up on average, while
/// a receiver that loses the core for a few milliseconds makes exporters wait and retry: when
/// both want the one core, the receivers should win. At nice 10 the writer still gets about a
/// tenth of a contended core (and every idle cycle), and a writer that falls behind still backs
/// the pipeline up through its bounded channel, so nothing is lost or unbounded.
const WRITER_NICE: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    // On Linux a thread has its own nice value; `setpriority` on its thread id sets just that.
    // SAFETY: plain system calls on the calling thread, no memory is passed.
    let result = unsafe {
        let thread_id = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread_id as libc::id_t, WRITER_NICE)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the store writer's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

impl WriterHandle {
    /// Queues a flush; waits (backpressure) while the writer is behind.
    pub async fn flush(&self, seq: u64, batch: Arc<FlushBatch>) -> Result<(), StoreError> {
        self.tx
            .send(Command::Flush { seq, batch })
            .await
            .map_err(|_| StoreError::Closed)
    }

    pub async fn retention(&self, now_ms: i64) -> Result<(), StoreError> {
        self.tx
            .send(Command::Retention { now_ms })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a flush if the writer has room, without waiting.
    pub fn try_flush(&self, seq: u64, batch: Arc<FlushBatch>) -> Result<(), TryFlushError> {
        self.tx
            .try_send(Command::Flush { seq, batch })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(Command::Flush { batch, .. }) => {
                    TryFlushError::Busy(batch)
                }
                _ => TryFlushError::Closed,
            })
    }

    /// Queues retention if the writer has room, without waiting.
    pub fn try_retention(&self, now_ms: i64) -> Result<(), StoreError> {
        self.tx
            .try_send(Command::Retention { now_ms })
            .map_err(|_| StoreError::Closed)
    }

    /// Resolves once everything queued before it is written.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Barrier(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)
    }

    /// Stops the thread after it has applied everything queued, and waits for it.
    pub async fn close(mut self, _deadline: std::time::Duration) {
        let thread = self.thread.take();
        drop(self.tx);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct Writer {
    conn: Connection,
    retention: Retention,
    /// Id caches; cleared when retention may have deleted rows, and when they grow past a cap.
    endpoint_ids: HashMap<(RedSource, EndpointKey), i64>,
    /// Keyed by the series itself: a known series is found without serializing its attributes.
    series_ids: HashMap<Arc<MetricSeriesKey>, i64>,
}

const ID_CACHE_CAP: usize = 100_000;
const WRITE_ATTEMPTS: u32 = 3;

impl Writer {
    fn flush_with_retries(&mut self, seq: u64, batch: &FlushBatch) {
        for attempt in 1..=WRITE_ATTEMPTS {
            let started = Instant::now();
            match self.write_flush(seq, batch) {
                Ok(()) => {
                    self_metrics::store_write(started.elapsed(), batch);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "writing a flush failed");
                    self.endpoint_ids.clear();
                    self.series_ids.clear();
                    std::thread::sleep(std::time::Duration::from_millis(100 * attempt as u64));
                }
            }
        }
        self_metrics::store_write_failed(batch);
    }

    fn write_flush(&mut self, seq: u64, batch: &FlushBatch) -> Result<(), StoreError> {
        if self.endpoint_ids.len() > ID_CACHE_CAP {
            self.endpoint_ids.clear();
        }
        if self.series_ids.len() > ID_CACHE_CAP {
            self.series_ids.clear();
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut red_ids = Vec::with_capacity(batch.red.len());
        for delta in &batch.red {
            let key = (delta.source, delta.endpoint.clone());
            let id = match self.endpoint_ids.get(&key) {
                Some(id) => *id,
                None => {
                    let id = endpoint_id(&tx, delta.source, &delta.endpoint)?;
                    self.endpoint_ids.insert(key, id);
                    id
                }
            };
            red_ids.push(id);
        }
        for resolution in Resolution::RED_TIERS {
            let mut merged: HashMap<(i64, i64), RedStats> = HashMap::new();
            for (delta, id) in batch.red.iter().zip(&red_ids) {
                merged
                    .entry((*id, resolution.align(delta.window_start_ms)))
                    .or_default()
                    .merge(&delta.stats);
            }
            for ((id, start_ms), stats) in merged {
                upsert_red(&tx, resolution, id, start_ms, stats)?;
            }
        }

        let mut series_ids = Vec::with_capacity(batch.metrics.len());
        for delta in &batch.metrics {
            let id = match self.series_ids.get(&delta.series.key) {
                Some(id) => *id,
                None => {
                    let attributes = serde_json::to_string(&delta.series.key.attributes)
                        .expect("attributes serialize");
                    let id = series_id(&tx, &delta.series, &attributes)?;
                    self.series_ids.insert(delta.series.key.clone(), id);
                    id
                }
            };
            series_ids.push(id);
        }
        for resolution in Resolution::ALL {
            let mut merged: HashMap<(i64, i64), MetricAgg> = HashMap::new();
            for (delta, id) in batch.metrics.iter().zip(&series_ids) {
                merged
                    .entry((*id, resolution.align(delta.window_start_ms)))
                    .or_default()
                    .merge(&delta.agg);
            }
            for ((id, start_ms), agg) in merged {
                upsert_metric(&tx, resolution, id, start_ms, agg)?;
            }
        }

        for (span, reason) in &batch.spans {
            insert_span(&tx, span, reason.as_str())?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'flushed_seq'",
            params![seq as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn apply_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cutoff = |resolution| now_ms - self.retention.of(resolution).as_millis() as i64;
        for resolution in Resolution::RED_TIERS {
            tx.execute(
                &format!(
                    "DELETE FROM red_{} WHERE start_ms < ?1",
                    resolution.suffix()
                ),
                params![cutoff(resolution)],
            )?;
        }
        for resolution in Resolution::ALL {
            tx.execute(
                &format!(
                    "DELETE FROM metric_{} WHERE start_ms < ?1",
                    resolution.suffix()
                ),
                params![cutoff(resolution)],
            )?;
        }
        // Every row is written at all resolutions, so the longest-kept one decides.
        tx.execute(
            "DELETE FROM endpoints WHERE id NOT IN (SELECT endpoint_id FROM red_1h)",
            [],
        )?;
        tx.execute(
            "DELETE FROM metric_series WHERE id NOT IN (SELECT series_id FROM metric_1h)",
            [],
        )?;
        let trace_cutoff_ns =
            (now_ms - self.retention.traces.as_millis() as i64).max(0) as i128 * 1_000_000;
        delete_traces_before(&tx, trace_cutoff_ns.min(i64::MAX as i128) as i64)?;
        enforce_span_cap(&tx, self.retention.max_spans)?;
        tx.commit()?;
        self.endpoint_ids.clear();
        self.series_ids.clear();
        self.conn.execute_batch("PRAGMA incremental_vacuum;")?;
        Ok(())
    }

    fn report_size(&self) {
        let size: rusqlite::Result<i64> = self.conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get(0),
        );
        if let Ok(bytes) = size {
            self_metrics::database_size(bytes as u64);
        }
    }
}

fn endpoint_id(
    tx: &rusqlite::Transaction<'_>,
    source: RedSource,
    endpoint: &EndpointKey,
) -> Result<i64, StoreError> {
    let source = source as i64;
    tx.execute(
        "INSERT INTO endpoints (service, source, method, route) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![endpoint.service, source, endpoint.method, endpoint.route],
    )?;
    Ok(tx.query_row(
        "SELECT id FROM endpoints WHERE service = ?1 AND source = ?2 AND method = ?3 AND route = ?4",
        params![endpoint.service, source, endpoint.method, endpoint.route],
        |row| row.get(0),
    )?)
}

fn series_id(
    tx: &rusqlite::Transaction<'_>,
    series: &SeriesInfo,
    attributes: &str,
) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT INTO metric_series (service, name, attributes, kind, unit, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (service, name, attributes) DO UPDATE SET
           kind = excluded.kind, unit = excluded.unit, description = excluded.description",
        params![
            series.key.service,
            series.key.name,
            attributes,
            series.kind.as_str(),
            series.unit,
            series.description
        ],
    )?;
    Ok(tx.query_row(
        "SELECT id FROM metric_series WHERE service = ?1 AND name = ?2 AND attributes = ?3",
        params![series.key.service, series.key.name, attributes],
        |row| row.get(0),
    )?)
}

fn upsert_red(
    tx: &rusqlite::Transaction<'_>,
    resolution: Resolution,
    endpoint_id: i64,
    start_ms: i64,
    mut stats: RedStats,
) -> Result<(), StoreError> {
    let table = format!("red_{}", resolution.suffix());
    let existing = tx
        .prepare_cached(&format!(
            "SELECT {RED_COLUMNS} FROM {table} WHERE endpoint_id = ?1 AND start_ms = ?2"
        ))?
        .query_row(params![endpoint_id, start_ms], |row| {
            Ok(codec::from_row(row, 0))
        })
        .optional()?;
    // A stored row that cannot be read must not block every later flush: it is replaced.
    match existing {
        Some(Ok(existing)) => stats.merge(&existing),
        Some(Err(e)) => {
            tracing::warn!(error = %e, endpoint_id, start_ms, "unreadable RED row replaced")
        }
        None => {}
    }
    let c = codec::to_columns(&stats);
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table} (endpoint_id, start_ms, {RED_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        endpoint_id,
        start_ms,
        c.requests,
        c.errors,
        c.status,
        c.sum_ms,
        c.min_ms,
        c.max_ms,
        c.sketch,
        c.sketch_from_buckets,
        c.explicit
    ])?;
    Ok(())
}

fn upsert_metric(
    tx: &rusqlite::Transaction<'_>,
    resolution: Resolution,
    series_id: i64,
    start_ms: i64,
    mut agg: MetricAgg,
) -> Result<(), StoreError> {
    let table = format!("metric_{}", resolution.suffix());
    let existing: Option<String> = tx
        .prepare_cached(&format!(
            "SELECT agg FROM {table} WHERE series_id = ?1 AND start_ms = ?2"
        ))?
        .query_row(params![series_id, start_ms], |row| row.get(0))
        .optional()?;
    // A stored row that cannot be read must not block every later flush: it is replaced.
    if let Some(text) = existing {
        match serde_json::from_str::<MetricAgg>(&text) {
            Ok(stored) => agg.merge(&stored),
            Err(e) => {
                tracing::warn!(error = %e, series_id, start_ms, "unreadable metric row replaced")
            }
        }
    }
    let text = serde_json::to_string(&agg).expect("metric window serializes");
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table} (series_id, start_ms, agg) VALUES (?1, ?2, ?3)"
    ))?
    .execute(params![series_id, start_ms, text])?;
    Ok(())
}

fn insert_span(
    tx: &rusqlite::Transaction<'_>,
    span: &SpanRecord,
    reason: &str,
) -> Result<(), StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO spans (trace_id, span_id, parent_span_id, service, name, kind,
               start_ns, end_ns, status, status_message, attributes, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.service,
            span.name,
            span.kind,
            span.start_unix_ns as i64,
            span.end_unix_ns as i64,
            span.status,
            span.status_message,
            serde_json::to_string(&span.attributes).expect("attributes serialize"),
            serde_json::to_string(&span.events).expect("events serialize"),
        ])?;
    if inserted == 0 {
        return Ok(());
    }
    let is_root = span.parent_span_id.is_none();
    let (service, method, route) = match &span.endpoint {
        Some(e) => (
            Some(e.service.as_str()),
            Some(e.method.as_str()),
            Some(e.route.as_str()),
        ),
        None if is_root => (Some(span.service.as_str()), None, None),
        None => (None, None, None),
    };
    tx.prepare_cached(
        "INSERT INTO traces (trace_id, start_ns, end_ns, service, method, route, root_name,
           error, span_count, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9)
         ON CONFLICT (trace_id) DO UPDATE SET
           start_ns = min(start_ns, excluded.start_ns),
           end_ns = max(end_ns, excluded.end_ns),
           service = CASE WHEN excluded.root_name IS NOT NULL AND excluded.service IS NOT NULL
                          THEN excluded.service ELSE coalesce(service, excluded.service) END,
           method = CASE WHEN excluded.root_name IS NOT NULL AND excluded.method IS NOT NULL
                         THEN excluded.method ELSE coalesce(method, excluded.method) END,
           route = CASE WHEN excluded.root_name IS NOT NULL AND excluded.route IS NOT NULL
                        THEN excluded.route ELSE coalesce(route, excluded.route) END,
           root_name = coalesce(excluded.root_name, root_name),
           error = max(error, excluded.error),
           span_count = span_count + 1,
           reason = CASE WHEN excluded.reason = 'error' THEN 'error' ELSE reason END",
    )?
    .execute(params![
        span.trace_id,
        span.start_unix_ns as i64,
        span.end_unix_ns as i64,
        service,
        method,
        route,
        is_root.then_some(span.name.as_str()),
        span.is_error,
        reason,
    ])?;
    Ok(())
}

fn delete_traces_before(tx: &rusqlite::Transaction<'_>, cutoff_ns: i64) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM spans WHERE trace_id IN (SELECT trace_id FROM traces WHERE start_ns < ?1)",
        params![cutoff_ns],
    )?;
    tx.execute("DELETE FROM traces WHERE start_ns < ?1", params![cutoff_ns])?;
    Ok(())
}

/// Deletes the oldest traces until at most `max_spans` spans remain.
fn enforce_span_cap(tx: &rusqlite::Transaction<'_>, max_spans: u64) -> Result<(), StoreError> {
    let total: i64 = tx.query_row("SELECT count(*) FROM spans", [], |row| row.get(0))?;
    let excess = total - max_spans as i64;
    if excess <= 0 {
        return Ok(());
    }
    // The start time at which the oldest traces hold `excess` spans.
    let cutoff: Option<i64> = tx
        .query_row(
            "SELECT start_ns FROM (
               SELECT start_ns, sum(span_count) OVER (ORDER BY start_ns) AS running FROM traces
             ) WHERE running >= ?1 ORDER BY start_ns LIMIT 1",
            params![excess],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(cutoff) = cutoff {
        delete_traces_before(tx, cutoff + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::RedDelta;
    use crate::aggregate::sampler::KeepReason;
    use crate::model::RequestRecord;
    use std::time::Duration;

    fn delta(window_start_ms: i64, route: &str) -> RedDelta {
        let endpoint = EndpointKey {
            service: "svc".into(),
            method: "GET".into(),
            route: route.into(),
        };
        let mut stats = RedStats::default();
        stats.add_request(&RequestRecord {
            end_unix_ms: window_start_ms,
            duration_ms: 12.0,
            status_code: Some(200),
            is_error: false,
            count: 1,
        });
        RedDelta {
            source: RedSource::Spans,
            endpoint,
            window_start_ms,
            stats,
        }
    }

    fn span(trace: u8, start_ms: i64) -> SpanRecord {
        SpanRecord {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{trace:016x}"),
            parent_span_id: None,
            service: "svc".into(),
            name: "GET /".into(),
            kind: "server".into(),
            start_unix_ns: start_ms as u64 * 1_000_000,
            end_unix_ns: start_ms as u64 * 1_000_000 + 5_000_000,
            status: "unset".into(),
            status_message: String::new(),
            attributes: Default::default(),
            events: Vec::new(),
            endpoint: None,
            is_error: false,
        }
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn writer(retention: Retention) -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_writer(&dir.path().join("redline.db")).unwrap();
        let writer = Writer {
            conn,
            retention,
            endpoint_ids: HashMap::new(),
            series_ids: HashMap::new(),
        };
        (dir, writer)
    }

    #[test]
    fn flushes_merge_into_every_resolution() {
        let (_dir, mut writer) = writer(Retention::default());
        let minute = 1_800_000_000_000;
        for (seq, offset) in [(1, 0), (2, 10_000), (3, 10_000)] {
            let batch = FlushBatch {
                red: vec![delta(minute + offset, "/a")],
                ..Default::default()
            };
            writer.write_flush(seq, &batch).unwrap();
        }
        let conn = &writer.conn;
        assert_eq!(count(conn, "red_10s"), 2);
        assert_eq!(count(conn, "red_1m"), 1);
        assert_eq!(count(conn, "red_10m"), 1);
        let requests: i64 = conn
            .query_row("SELECT requests FROM red_1m", [], |r| r.get(0))
            .unwrap();
        assert_eq!(requests, 3);
        let seq: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'flushed_seq'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 3);
    }

    #[test]
    fn retention_deletes_old_windows_traces_and_orphans() {
        let retention = Retention {
            ten_seconds: Duration::from_secs(3600),
            one_minute: Duration::from_secs(86_400),
            one_hour: Duration::from_secs(7 * 86_400),
            traces: Duration::from_secs(3600),
            max_spans: 2,
        };
        let (_dir, mut writer) = writer(retention);
        let now = 1_800_000_000_000i64;
        let batch = FlushBatch {
            red: vec![
                delta(now - 2 * 3_600_000, "/recent"),
                delta(now - 30 * 86_400_000, "/ancient"),
            ],
            spans: vec![
                (span(1, now - 2 * 3_600_000), KeepReason::Sampled),
                (span(2, now - 1_000), KeepReason::Sampled),
                (span(3, now - 2_000), KeepReason::Sampled),
                (span(4, now - 3_000), KeepReason::Error),
            ],
            ..Default::default()
        };
        writer.write_flush(1, &batch).unwrap();
        writer.apply_retention(now).unwrap();
        let conn = &writer.conn;
        // The 2 h old window: gone from 10 s, kept at 1 m and 1 h.
        assert_eq!(count(conn, "red_10s"), 0);
        assert_eq!(count(conn, "red_1m"), 1);
        assert_eq!(count(conn, "red_10m"), 1);
        assert_eq!(count(conn, "red_1h"), 1);
        // The 30 day old endpoint lost all its rows and its row in `endpoints`.
        assert_eq!(count(conn, "endpoints"), 1);
        // Traces: the 2 h old one by age, then the oldest beyond the 2-span cap.
        assert_eq!(count(conn, "spans"), 2);
        let kept: Vec<String> = conn
            .prepare("SELECT trace_id FROM traces ORDER BY start_ns")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, vec![format!("{:032x}", 3), format!("{:032x}", 2)]);
    }
}
