//! How a flush and retention become SQL, on the writer's connection. A flush is applied in one
//! transaction, either in one go (every resolution at once, so rollups never lag) or row by row,
//! each row in its own savepoint, so that a row SQLite refuses (or whose merge panics) is left
//! out without the others. The connection is dropped after a fault and opened again for the
//! next attempt: a file system remounted, or a file replaced or made writable, is only seen by
//! a new connection.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::aggregate::{FlushBatch, SeriesInfo};
use crate::model::{EndpointKey, MetricSeriesKey, RedSource, SpanRecord};
use crate::self_metrics;
use crate::store::codec::{self, RED_COLUMNS};
use crate::store::logs::{apply_log_retention, insert_log};
use crate::store::{FaultKind, Resolution, Retention, StoreError, open_database};

/// Rows of one flush left out by a row-by-row write, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SkippedRows {
    pub red: u64,
    pub metric: u64,
    pub span: u64,
    pub log: u64,
    /// Of those, the rows whose write panicked.
    pub panicked: u64,
}

impl SkippedRows {
    pub fn total(&self) -> u64 {
        self.red + self.metric + self.span + self.log
    }

    /// The counts by the `kind` label of `redline_store_rows_skipped_total`.
    pub fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            (RowKind::Red.as_str(), self.red),
            (RowKind::Metric.as_str(), self.metric),
            (RowKind::Span.as_str(), self.span),
            (RowKind::Log.as_str(), self.log),
        ]
    }

    /// Counts (and logs) a row of `kind` that `outcome` left out.
    fn count<T>(&mut self, kind: RowKind, outcome: &RowOutcome<T>) {
        let kind_name = kind.as_str();
        match outcome {
            RowOutcome::Written(_) => return,
            RowOutcome::Refused(e) => {
                tracing::warn!(kind = kind_name, error = %e, "a row of a flush cannot be stored: skipped");
            }
            RowOutcome::Panicked(message) => {
                tracing::error!(kind = kind_name, panic = %message, "writing a row of a flush panicked: skipped");
                self.panicked += 1;
            }
        }
        *match kind {
            RowKind::Red => &mut self.red,
            RowKind::Metric => &mut self.metric,
            RowKind::Span => &mut self.span,
            RowKind::Log => &mut self.log,
        } += 1;
    }
}

#[derive(Debug, Clone, Copy)]
enum RowKind {
    Red,
    Metric,
    Span,
    Log,
}

impl RowKind {
    fn as_str(self) -> &'static str {
        match self {
            RowKind::Red => "red",
            RowKind::Metric => "metric",
            RowKind::Span => "span",
            RowKind::Log => "log",
        }
    }
}

/// Ids of endpoints and series known to be in the database.
#[derive(Default)]
struct IdCache {
    endpoints: HashMap<(RedSource, EndpointKey), i64>,
    /// Keyed by the series itself: a known series is found without serializing its attributes.
    series: HashMap<Arc<MetricSeriesKey>, i64>,
}

const ID_CACHE_CAP: usize = 100_000;

impl IdCache {
    fn clear(&mut self) {
        self.endpoints.clear();
        self.series.clear();
    }

    fn trim(&mut self) {
        if self.endpoints.len() > ID_CACHE_CAP {
            self.endpoints.clear();
        }
        if self.series.len() > ID_CACHE_CAP {
            self.series.clear();
        }
    }
}

/// The writer's database: its connection (absent after a fault until the next attempt) and id
/// caches. Used from the writer thread only.
pub struct Database {
    conn: Option<Connection>,
    /// Where to open the connection again; `None` for an in-memory database, whose connection
    /// is never dropped.
    path: Option<PathBuf>,
    lock_wait: Duration,
    retention: Retention,
    ids: IdCache,
}

impl Database {
    /// Takes over `conn`; a connection opened again waits `lock_wait` for another's write lock.
    pub fn new(conn: Connection, retention: Retention, lock_wait: Duration) -> Database {
        let path = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from);
        if let Err(e) = conn.busy_timeout(lock_wait) {
            tracing::warn!(error = %e, "cannot set the store writer's lock wait");
        }
        Database {
            conn: Some(conn),
            path,
            lock_wait,
            retention,
            ids: IdCache::default(),
        }
    }

    /// The database file, for messages.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Forgets what a failed or abandoned attempt may have left behind: ids of rows it rolled
    /// back, and (after a fault that a new connection may not meet) the connection itself.
    pub fn after_failure(&mut self, fault: Option<FaultKind>) {
        self.ids.clear();
        let keep_connection = matches!(
            fault,
            None | Some(FaultKind::Locked) | Some(FaultKind::DiskFull)
        );
        if !keep_connection && self.path.is_some() {
            self.conn = None;
        }
    }

    fn connection(&mut self) -> Result<&mut Connection, StoreError> {
        connect(&mut self.conn, self.path.as_ref(), self.lock_wait)
    }

    /// Applies `batch` in one transaction, rows of a key merged before they are written.
    pub fn write_flush(&mut self, seq: u64, batch: &FlushBatch) -> Result<(), StoreError> {
        self.ids.trim();
        let ids = &mut self.ids;
        let tx = connect(&mut self.conn, self.path.as_ref(), self.lock_wait)?
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut red_ids = Vec::with_capacity(batch.red.len());
        for delta in &batch.red {
            let key = (delta.source, delta.endpoint.clone());
            let id = match ids.endpoints.get(&key) {
                Some(id) => *id,
                None => {
                    let id = endpoint_id(&tx, delta.source, &delta.endpoint)?;
                    ids.endpoints.insert(key, id);
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
            let id = match ids.series.get(&delta.series.key) {
                Some(id) => *id,
                None => {
                    let id = series_id(&tx, &delta.series)?;
                    ids.series.insert(delta.series.key.clone(), id);
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
        for record in &batch.logs {
            insert_log(&tx, record)?;
        }
        set_flushed_seq(&tx, seq)?;
        tx.commit()?;
        Ok(())
    }

    /// Applies `batch` in one transaction, each delta and span in its own savepoint: a row
    /// whose write fails for its content, or panics, is left out and counted; a fault of the
    /// database fails the whole attempt.
    pub fn write_rows(&mut self, seq: u64, batch: &FlushBatch) -> Result<SkippedRows, StoreError> {
        self.ids.trim();
        let ids = &mut self.ids;
        let mut tx = connect(&mut self.conn, self.path.as_ref(), self.lock_wait)?
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut skipped = SkippedRows::default();
        for delta in &batch.red {
            let key = (delta.source, delta.endpoint.clone());
            let known = ids.endpoints.get(&key).copied();
            let outcome = in_savepoint(&mut tx, |sp| {
                let id = match known {
                    Some(id) => id,
                    None => endpoint_id(sp, delta.source, &delta.endpoint)?,
                };
                for resolution in Resolution::RED_TIERS {
                    let start_ms = resolution.align(delta.window_start_ms);
                    upsert_red(sp, resolution, id, start_ms, delta.stats.clone())?;
                }
                Ok(id)
            })?;
            // An id is remembered only once its row is committed to the transaction.
            if let RowOutcome::Written(id) = outcome {
                ids.endpoints.insert(key, id);
            }
            skipped.count(RowKind::Red, &outcome);
        }

        for delta in &batch.metrics {
            let known = ids.series.get(&delta.series.key).copied();
            let outcome = in_savepoint(&mut tx, |sp| {
                let id = match known {
                    Some(id) => id,
                    None => series_id(sp, &delta.series)?,
                };
                for resolution in Resolution::ALL {
                    let start_ms = resolution.align(delta.window_start_ms);
                    upsert_metric(sp, resolution, id, start_ms, delta.agg.clone())?;
                }
                Ok(id)
            })?;
            if let RowOutcome::Written(id) = outcome {
                ids.series.insert(delta.series.key.clone(), id);
            }
            skipped.count(RowKind::Metric, &outcome);
        }

        for (span, reason) in &batch.spans {
            let outcome = in_savepoint(&mut tx, |sp| insert_span(sp, span, reason.as_str()))?;
            skipped.count(RowKind::Span, &outcome);
        }
        for record in &batch.logs {
            let outcome = in_savepoint(&mut tx, |sp| insert_log(sp, record))?;
            skipped.count(RowKind::Log, &outcome);
        }
        set_flushed_seq(&tx, seq)?;
        tx.commit()?;
        Ok(skipped)
    }

    pub fn apply_retention(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let retention = self.retention;
        let conn = self.connection()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cutoff = |resolution| now_ms - retention.of(resolution).as_millis() as i64;
        for resolution in Resolution::RED_TIERS {
            tx.execute(
                &format!("DELETE FROM {} WHERE start_ms < ?1", resolution.red_table()),
                params![cutoff(resolution)],
            )?;
        }
        for resolution in Resolution::ALL {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE start_ms < ?1",
                    resolution.metric_table()
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
            (now_ms - retention.traces.as_millis() as i64).max(0) as i128 * 1_000_000;
        delete_traces_before(&tx, trace_cutoff_ns.min(i64::MAX as i128) as i64)?;
        enforce_span_cap(&tx, retention.max_spans)?;
        let log_cutoff_ns = (now_ms - retention.logs.as_millis() as i64).max(0) as i128 * 1_000_000;
        apply_log_retention(
            &tx,
            log_cutoff_ns.min(i64::MAX as i128) as i64,
            retention.max_log_bytes,
        )?;
        tx.commit()?;
        conn.execute_batch("PRAGMA incremental_vacuum;")?;
        self.ids.clear();
        Ok(())
    }

    pub fn report_size(&mut self) {
        let Ok(conn) = self.connection() else {
            return;
        };
        let size: rusqlite::Result<i64> = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get(0),
        );
        if let Ok(bytes) = size {
            self_metrics::database_size(bytes.max(0) as u64);
        }
    }

    #[cfg(test)]
    pub fn conn(&mut self) -> &mut Connection {
        self.connection().expect("a connection")
    }
}

/// The connection in `conn`, opened again at `path` when a fault dropped it.
fn connect<'a>(
    conn: &'a mut Option<Connection>,
    path: Option<&PathBuf>,
    lock_wait: Duration,
) -> Result<&'a mut Connection, StoreError> {
    if conn.is_none()
        && let Some(path) = path
    {
        *conn = Some(open_database(path, lock_wait)?);
    }
    conn.as_mut().ok_or(StoreError::Closed)
}

/// What became of one row written in its own savepoint.
enum RowOutcome<T> {
    Written(T),
    /// Refused for its content (a constraint, a type, a value that cannot be stored).
    Refused(StoreError),
    Panicked(String),
}

/// Runs `write` in a savepoint of `tx`, rolled back unless it succeeds. A fault of the database
/// is returned as the error: the whole transaction is lost with it.
fn in_savepoint<T>(
    tx: &mut Transaction<'_>,
    write: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<RowOutcome<T>, StoreError> {
    // A panic unwinds through the savepoint, whose drop rolls it back: the transaction stays
    // as it was before the row.
    let attempt = catch_unwind(AssertUnwindSafe(|| -> Result<T, StoreError> {
        let savepoint = tx.savepoint()?;
        let value = write(&savepoint)?;
        savepoint.commit()?;
        Ok(value)
    }));
    match attempt {
        Ok(Ok(value)) => Ok(RowOutcome::Written(value)),
        Ok(Err(e)) if e.fault().is_some() => Err(e),
        Ok(Err(e)) => Ok(RowOutcome::Refused(e)),
        Err(panic) => Ok(RowOutcome::Panicked(panic_message(panic.as_ref()))),
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Tests make a write panic with these: a span of this name, a flush of this number.
#[cfg(test)]
pub const PANICKING_SPAN: &str = "test: writing this span panics";
#[cfg(test)]
pub const PANICKING_SEQ: u64 = 1_000_000_007;

fn set_flushed_seq(conn: &Connection, seq: u64) -> Result<(), StoreError> {
    #[cfg(test)]
    if seq == PANICKING_SEQ {
        panic!("test: storing flush {seq} panics");
    }
    let seq = i64::try_from(seq).map_err(|_| StoreError::Unstorable(format!("flush {seq}")))?;
    conn.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'flushed_seq'",
        params![seq],
    )?;
    Ok(())
}

fn endpoint_id(
    conn: &Connection,
    source: RedSource,
    endpoint: &EndpointKey,
) -> Result<i64, StoreError> {
    let source = source as i64;
    conn.prepare_cached(
        "INSERT INTO endpoints (service, source, method, route) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        endpoint.service,
        source,
        endpoint.method,
        endpoint.route
    ])?;
    Ok(conn
        .prepare_cached(
            "SELECT id FROM endpoints
             WHERE service = ?1 AND source = ?2 AND method = ?3 AND route = ?4",
        )?
        .query_row(
            params![endpoint.service, source, endpoint.method, endpoint.route],
            |row| row.get(0),
        )?)
}

fn series_id(conn: &Connection, series: &SeriesInfo) -> Result<i64, StoreError> {
    let attributes = codec::json(&series.key.attributes)?;
    conn.prepare_cached(
        "INSERT INTO metric_series (service, name, attributes, kind, unit, description)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (service, name, attributes) DO UPDATE SET
           kind = excluded.kind, unit = excluded.unit, description = excluded.description",
    )?
    .execute(params![
        series.key.service,
        series.key.name,
        attributes,
        series.kind.as_str(),
        series.unit,
        series.description
    ])?;
    Ok(conn
        .prepare_cached(
            "SELECT id FROM metric_series WHERE service = ?1 AND name = ?2 AND attributes = ?3",
        )?
        .query_row(
            params![series.key.service, series.key.name, attributes],
            |row| row.get(0),
        )?)
}

fn upsert_red(
    conn: &Connection,
    resolution: Resolution,
    endpoint_id: i64,
    start_ms: i64,
    mut stats: RedStats,
) -> Result<(), StoreError> {
    let table = resolution.red_table();
    let existing = conn
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
            self_metrics::store_row_unreadable(table);
            tracing::warn!(error = %e, table, endpoint_id, start_ms, "unreadable RED row replaced");
        }
        None => {}
    }
    let c = codec::to_columns(&stats)?;
    conn.prepare_cached(&format!(
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
    conn: &Connection,
    resolution: Resolution,
    series_id: i64,
    start_ms: i64,
    mut agg: MetricAgg,
) -> Result<(), StoreError> {
    let table = resolution.metric_table();
    let existing: Option<rusqlite::types::Value> = conn
        .prepare_cached(&format!(
            "SELECT agg FROM {table} WHERE series_id = ?1 AND start_ms = ?2"
        ))?
        .query_row(params![series_id, start_ms], |row| row.get(0))
        .optional()?;
    // A stored row that cannot be read must not block every later flush: it is replaced.
    if let Some(value) = existing {
        let stored = match &value {
            rusqlite::types::Value::Text(text) => {
                serde_json::from_str::<MetricAgg>(text).map_err(|e| e.to_string())
            }
            other => Err(format!("agg is {:?}, not text", other.data_type())),
        };
        match stored {
            Ok(stored) => agg.merge(&stored),
            Err(e) => {
                self_metrics::store_row_unreadable(table);
                tracing::warn!(error = %e, table, series_id, start_ms, "unreadable metric row replaced");
            }
        }
    }
    let text = codec::json(&agg)?;
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table} (series_id, start_ms, agg) VALUES (?1, ?2, ?3)"
    ))?
    .execute(params![series_id, start_ms, text])?;
    Ok(())
}

fn insert_span(conn: &Connection, span: &SpanRecord, reason: &str) -> Result<(), StoreError> {
    #[cfg(test)]
    if span.name == PANICKING_SPAN {
        panic!("test: writing span {} panics", span.span_id);
    }
    let inserted = conn
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
            span.kind.as_str(),
            span.start_unix_ns as i64,
            span.end_unix_ns as i64,
            span.status.as_str(),
            span.status_message,
            codec::json(&span.attributes)?,
            codec::json(&span.events)?,
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
    conn.prepare_cached(
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

fn delete_traces_before(conn: &Connection, cutoff_ns: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM spans WHERE trace_id IN (SELECT trace_id FROM traces WHERE start_ns < ?1)",
        params![cutoff_ns],
    )?;
    conn.execute("DELETE FROM traces WHERE start_ns < ?1", params![cutoff_ns])?;
    Ok(())
}

/// Deletes the oldest traces until at most `max_spans` spans remain.
fn enforce_span_cap(conn: &Connection, max_spans: u64) -> Result<(), StoreError> {
    let total: i64 = conn.query_row("SELECT count(*) FROM spans", [], |row| row.get(0))?;
    let excess = total.saturating_sub(i64::try_from(max_spans).unwrap_or(i64::MAX));
    if excess <= 0 {
        return Ok(());
    }
    // The start time at which the oldest traces hold `excess` spans.
    let cutoff: Option<i64> = conn
        .query_row(
            "SELECT start_ns FROM (
               SELECT start_ns, sum(span_count) OVER (ORDER BY start_ns) AS running FROM traces
             ) WHERE running >= ?1 ORDER BY start_ns LIMIT 1",
            params![excess],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(cutoff) = cutoff {
        delete_traces_before(conn, cutoff.saturating_add(1))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::RedDelta;
    use crate::model::RequestRecord;
    use crate::vocab::KeepReason;

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
            kind: crate::model::SpanKind::Server,
            start_unix_ns: start_ms as u64 * 1_000_000,
            end_unix_ns: start_ms as u64 * 1_000_000 + 5_000_000,
            status: crate::model::SpanStatus::Unset,
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

    fn writer(retention: Retention) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_database(
            &dir.path().join("redline.db"),
            crate::store::WRITE_LOCK_WAIT,
        )
        .unwrap();
        (dir, Database::new(conn, retention, Duration::from_secs(1)))
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
        let conn = writer.conn();
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
            ..Retention::default()
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
        let conn = writer.conn();
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

#[cfg(test)]
mod fault_tests {
    use super::*;
    use crate::store::test_data::{
        HOUR, batch, count, database, gauge, plain, poisoned_red, red, sample, span, with_metrics,
    };

    fn requests(conn: &Connection, table: &str, route: &str) -> i64 {
        conn.query_row(
            &format!(
                "SELECT coalesce(sum(requests), 0) FROM {table}
                 JOIN endpoints e ON e.id = endpoint_id WHERE e.route = ?1"
            ),
            [route],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_stored_row_that_cannot_be_read_is_replaced_by_the_next_flush_and_counted() {
        let (dir, mut db) = database(Retention::default());
        db.write_flush(
            1,
            &batch(
                vec![red("/a", HOUR, 3)],
                vec![gauge("q", "1", HOUR, 1.0)],
                vec![],
            ),
        )
        .unwrap();
        let damaged = plain(&dir.path().join("redline.db"));
        damaged
            .execute_batch("UPDATE red_1m SET sketch = x'0102'; UPDATE metric_1m SET agg = 7;")
            .unwrap();
        let (written, metrics) = with_metrics(|| {
            db.write_flush(
                2,
                &batch(
                    vec![red("/a", HOUR + 10_000, 4)],
                    vec![gauge("q", "1", HOUR + 10_000, 2.0)],
                    vec![],
                ),
            )
        });
        written.unwrap();
        // The damaged minute holds the new flush only; the intact tiers hold both.
        assert_eq!(requests(&damaged, "red_1m", "/a"), 4);
        assert_eq!(requests(&damaged, "red_1h", "/a"), 7);
        let samples: i64 = damaged
            .query_row(
                "SELECT json_extract(agg, '$.samples') FROM metric_1m",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(samples, 1);
        let unreadable = "redline_store_rows_unreadable_total";
        assert_eq!(
            sample(&metrics, &format!("{unreadable}{{table=\"red_1m\"}}")),
            1.0
        );
        assert_eq!(
            sample(&metrics, &format!("{unreadable}{{table=\"metric_1m\"}}")),
            1.0
        );
        assert_eq!(
            sample(&metrics, &format!("{unreadable}{{table=\"red_1h\"}}")),
            0.0
        );
    }

    #[test]
    fn row_by_row_leaves_out_the_refused_rows_and_stores_the_rest() {
        let (dir, mut db) = database(Retention::default());
        // A NaN is data like any other: stored, and read back.
        let mut nan_gauge = gauge("q", "2", HOUR, 1.0);
        nan_gauge.agg.sum = f64::NAN;
        let flush = batch(
            vec![
                red("/a", HOUR, 3),
                // Same endpoint and minute as the good one: merged in one go, it would take
                // the good requests with it.
                poisoned_red("/a", HOUR + 10_000),
                red("/b", HOUR, 4),
            ],
            vec![gauge("q", "1", HOUR, 1.0), nan_gauge],
            vec![span(1, 1, HOUR)],
        );
        let in_one_go = db.write_flush(1, &flush).unwrap_err();
        assert_eq!(in_one_go.fault(), None, "{in_one_go}");
        db.after_failure(None);
        let skipped = db.write_rows(1, &flush).unwrap();
        assert_eq!(
            skipped,
            SkippedRows {
                red: 1,
                metric: 0,
                span: 0,
                log: 0,
                panicked: 0
            }
        );
        let conn = plain(&dir.path().join("redline.db"));
        assert_eq!(requests(&conn, "red_10s", "/a"), 3);
        assert_eq!(requests(&conn, "red_1m", "/a"), 3);
        assert_eq!(requests(&conn, "red_1h", "/b"), 4);
        assert_eq!(count(&conn, "red_10s"), 2);
        assert_eq!(count(&conn, "metric_10s"), 2);
        assert_eq!(count(&conn, "spans"), 1);
        assert_eq!(crate::store::read::flushed_seq(&conn).unwrap(), 1);
    }

    #[test]
    fn a_row_whose_write_panics_is_left_out_row_by_row() {
        let (dir, mut db) = database(Retention::default());
        let (mut panicking, reason) = span(1, 2, HOUR);
        panicking.name = PANICKING_SPAN.into();
        let flush = batch(
            vec![red("/a", HOUR, 3)],
            vec![],
            vec![span(1, 1, HOUR), (panicking, reason), span(1, 3, HOUR)],
        );
        let skipped = db.write_rows(1, &flush).unwrap();
        assert_eq!((skipped.span, skipped.panicked), (1, 1));
        let conn = plain(&dir.path().join("redline.db"));
        assert_eq!(count(&conn, "spans"), 2);
        assert_eq!(requests(&conn, "red_1m", "/a"), 3);
    }
}
