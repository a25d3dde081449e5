//! Reads: stored windows for a time range, metric series, sampled traces. Each RED or metric
//! read returns the flush sequence number it saw, read in the same snapshot, so the query layer
//! can add exactly the unflushed data the snapshot does not contain.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, OptionalExtension, Row, params_from_iter, types::Value};

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::aggregate::{MetricDelta, RedDelta, SeriesInfo};
use crate::model::semconv::{self, deprecated};
use crate::model::{
    EndpointKey, MetricKind, MetricSeriesKey, RedSource, SpanEvent, SpanKind, SpanRecord,
    SpanStatus,
};
use crate::self_metrics;
use crate::store::codec::{self, RED_COLUMN_COUNT, RED_COLUMNS};
use crate::store::{Resolution, StoreError};
use crate::vocab::{KeepReason, RedFilter, TraceFilter, TraceSummary, now_ms};

/// Counts a stored row that cannot be decoded; the read goes on without it. Such a row stays
/// until retention or the writer replaces it, and every read meets it again: it is logged once a
/// minute at most, and counted every time.
pub(crate) fn unreadable(table: &'static str, error: &StoreError) {
    static LAST_LOGGED_MS: AtomicI64 = AtomicI64::new(i64::MIN);
    self_metrics::store_row_unreadable(table);
    let now = now_ms();
    let last = LAST_LOGGED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && LAST_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            table,
            %error,
            "a stored row cannot be read and is skipped (see redline_store_rows_unreadable_total)"
        );
    }
}

/// Adds the RED row (columns as [`RED_COLUMNS`]) to the sum of `key`; a row that cannot be read
/// adds nothing, not even an empty entry.
fn merge_into<K: Hash + Eq>(
    sums: &mut HashMap<K, RedStats>,
    key: K,
    row: &Row<'_>,
) -> Result<(), StoreError> {
    match sums.entry(key) {
        Entry::Occupied(sum) => codec::merge_row(row, 0, sum.into_mut()),
        Entry::Vacant(vacant) => {
            let mut stats = RedStats::default();
            codec::merge_row(row, 0, &mut stats)?;
            vacant.insert(stats);
            Ok(())
        }
    }
}

/// The sequence number of the last flush the database holds.
pub(crate) fn flushed_seq(conn: &Connection) -> Result<u64, StoreError> {
    let seq: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'flushed_seq'",
        [],
        |row| row.get(0),
    )?;
    Ok(seq as u64)
}

/// Runs `f` inside one read transaction: one consistent WAL snapshot.
fn in_snapshot<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction()?;
    let result = f(&tx)?;
    tx.finish()?;
    Ok(result)
}

/// Stored RED statistics summed per endpoint (and source) over a range.
pub struct RedTotals {
    /// One row per endpoint with data; `window_start_ms` is the start of the range.
    pub rows: Vec<RedDelta>,
    pub flushed_seq: u64,
}

/// Sums the stored windows of the blocks `blocks(ten_minutes_from)` gives — each
/// `(resolution, from_ms, to_ms)` selects the rows of that resolution starting in
/// `[from_ms, to_ms)`; `ten_minutes_from` is where the 10-minute tier holds every window (see
/// migration 4) — per endpoint, in one snapshot. Rows are merged as they are read: nothing per
/// window is kept, however many windows the range holds.
pub fn red_totals(
    conn: &mut Connection,
    filter: &RedFilter,
    blocks: impl FnOnce(i64) -> Vec<(Resolution, i64, i64)>,
) -> Result<RedTotals, StoreError> {
    map_database_file(conn)?;
    in_snapshot(conn, |conn| {
        let ten_minutes_from: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'red_10m_from'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let blocks = blocks(ten_minutes_from.unwrap_or(i64::MAX));
        let mut endpoints = selected_endpoints(conn, filter)?;
        let mut totals: HashMap<i64, RedStats> = HashMap::new();
        for (resolution, from_ms, to_ms) in &blocks {
            scan_windows(
                conn,
                &endpoints,
                *resolution,
                *from_ms,
                *to_ms,
                |id, _, row| merge_into(&mut totals, id, row),
            )?;
        }
        let from_ms = blocks.iter().map(|b| b.1).min().unwrap_or(0);
        let rows = totals
            .into_iter()
            .filter_map(|(id, stats)| {
                let (source, endpoint) = endpoints.remove(&id)?;
                Some(RedDelta {
                    source,
                    endpoint,
                    window_start_ms: from_ms,
                    stats,
                })
            })
            .collect();
        Ok(RedTotals {
            rows,
            flushed_seq: flushed_seq(conn)?,
        })
    })
}

/// Sums the stored windows of `resolution` starting in `[from_ms, to_ms)` per step (a window
/// starting at `s` belongs to the step starting at `s` rounded down to `step_ms`) and per
/// endpoint, or with `per_endpoint` false per service and source (the endpoint key then has an
/// empty method and route). Rows are merged as they are read: no per-window statistics,
/// endpoint names or decoded sketches are built.
pub fn red_steps(
    conn: &mut Connection,
    filter: &RedFilter,
    resolution: Resolution,
    (from_ms, to_ms): (i64, i64),
    step_ms: i64,
    per_endpoint: bool,
) -> Result<RedTotals, StoreError> {
    map_database_file(conn)?;
    in_snapshot(conn, |conn| {
        let endpoints = selected_endpoints(conn, filter)?;
        // Each endpoint id's group: itself, or its service and source.
        let mut groups: Vec<(RedSource, EndpointKey)> = Vec::new();
        let mut group_of: HashMap<i64, usize> = HashMap::with_capacity(endpoints.len());
        let mut service_groups: HashMap<(RedSource, &str), usize> = HashMap::new();
        for (id, (source, endpoint)) in &endpoints {
            let group = if per_endpoint {
                groups.push((*source, endpoint.clone()));
                groups.len() - 1
            } else {
                *service_groups
                    .entry((*source, endpoint.service.as_str()))
                    .or_insert_with(|| {
                        groups.push((
                            *source,
                            EndpointKey {
                                service: endpoint.service.clone(),
                                method: String::new(),
                                route: String::new(),
                            },
                        ));
                        groups.len() - 1
                    })
            };
            group_of.insert(*id, group);
        }
        let step_ms = step_ms.max(1);
        let mut sums: HashMap<(usize, i64), RedStats> = HashMap::new();
        scan_windows(
            conn,
            &endpoints,
            resolution,
            from_ms,
            to_ms,
            |id, start_ms, row| {
                let Some(&group) = group_of.get(&id) else {
                    return Ok(());
                };
                let step = start_ms.div_euclid(step_ms) * step_ms;
                merge_into(&mut sums, (group, step), row)
            },
        )?;
        let rows = sums
            .into_iter()
            .map(|((group, step), stats)| {
                let (source, endpoint) = groups[group].clone();
                RedDelta {
                    source,
                    endpoint,
                    window_start_ms: step,
                    stats,
                }
            })
            .collect();
        Ok(RedTotals {
            rows,
            flushed_seq: flushed_seq(conn)?,
        })
    })
}

/// The endpoints a filter selects, by id, looked up once: the window scans then need no join
/// (one b-tree seek per row saved).
fn selected_endpoints(
    conn: &Connection,
    filter: &RedFilter,
) -> Result<HashMap<i64, (RedSource, EndpointKey)>, StoreError> {
    let (conditions, filter_values) = endpoint_conditions(filter, 0);
    let sql = format!(
        "SELECT e.id, e.source, e.service, e.method, e.route FROM endpoints e WHERE 1{conditions}"
    );
    let mut endpoints = HashMap::new();
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(filter_values))?;
    let read = |row: &Row<'_>| -> Result<(i64, RedSource, EndpointKey), StoreError> {
        let source: i64 = row.get(1)?;
        let source = if source == RedSource::Metrics as i64 {
            RedSource::Metrics
        } else {
            RedSource::Spans
        };
        let endpoint = EndpointKey {
            service: row.get(2)?,
            method: row.get(3)?,
            route: row.get(4)?,
        };
        Ok((row.get(0)?, source, endpoint))
    };
    while let Some(row) = rows.next()? {
        match read(row) {
            Ok((id, source, endpoint)) => {
                endpoints.insert(id, (source, endpoint));
            }
            Err(e) => unreadable("endpoints", &e),
        }
    }
    Ok(endpoints)
}

/// Calls `f(endpoint_id, start_ms, row)` for every stored window of `resolution` starting in
/// `[from_ms, to_ms)` of the `endpoints` (the filter's selection), the row's columns being
/// [`RED_COLUMNS`] from offset 0. A row `f` cannot read is skipped and counted.
fn scan_windows(
    conn: &Connection,
    endpoints: &HashMap<i64, (RedSource, EndpointKey)>,
    resolution: Resolution,
    from_ms: i64,
    to_ms: i64,
    mut f: impl FnMut(i64, i64, &rusqlite::Row<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if endpoints.is_empty() || from_ms >= to_ms {
        return Ok(());
    }
    // Every RED table is clustered by (endpoint_id, start_ms) (migration 3), so each selected
    // endpoint's windows of the range are one seek and a sequential run of rows — cheaper than
    // a scan of the start_ms index, which needs a seek into the table for every row. Ids in
    // order keep the seeks moving forward through the file.
    let table = resolution.red_table();
    let sql = format!(
        "SELECT {RED_COLUMNS}, start_ms FROM {table}
         WHERE endpoint_id = ?1 AND start_ms >= ?2 AND start_ms < ?3"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut ids: Vec<i64> = endpoints.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let mut rows = statement.query(rusqlite::params![id, from_ms, to_ms])?;
        while let Some(row) = rows.next()? {
            let visited = row
                .get(RED_COLUMN_COUNT)
                .map_err(StoreError::from)
                .and_then(|start_ms| f(id, start_ms, row));
            if let Err(e) = visited {
                unreadable(table, &e);
            }
        }
    }
    Ok(())
}

/// Lets a read connection map the database file instead of copying every page it reads with
/// `pread`: a range scan over an hour of windows touches thousands of pages, and the page cache
/// of a WAL reader is dropped whenever the writer commits (every flush), so without the map
/// each scan copies them all again. Only a setting of the connection; results are the same.
fn map_database_file(conn: &Connection) -> Result<(), StoreError> {
    const MAP_BYTES: i64 = 1 << 30;
    let current: i64 = conn.query_row("PRAGMA mmap_size", [], |row| row.get(0))?;
    if current < MAP_BYTES {
        conn.pragma_update(None, "mmap_size", MAP_BYTES)?;
    }
    Ok(())
}

/// ` AND e.service = ?n …` for the filter's set fields, numbered after `skip` parameters.
fn endpoint_conditions(filter: &RedFilter, skip: usize) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut values: Vec<Value> = Vec::new();
    for (column, value) in [
        ("e.service", &filter.service),
        ("e.method", &filter.method),
        ("e.route", &filter.route),
    ] {
        if let Some(value) = value {
            values.push(value.clone().into());
            sql.push_str(&format!(" AND {column} = ?{}", skip + values.len()));
        }
    }
    (sql, values)
}

pub struct MetricSeriesRow {
    pub series: SeriesInfo,
}

/// Metric series of a service (all services when `None`) that have data in the hour table.
pub fn metric_series(
    conn: &mut Connection,
    service: Option<&str>,
) -> Result<Vec<MetricSeriesRow>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT service, name, attributes, kind, unit, description FROM metric_series
         WHERE ?1 IS NULL OR service = ?1 ORDER BY service, name, attributes",
    )?;
    let mut rows = statement.query([service])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match series_info(row, 0) {
            Ok(series) => out.push(MetricSeriesRow { series }),
            Err(e) => unreadable("metric_series", &e),
        }
    }
    Ok(out)
}

fn series_info(row: &rusqlite::Row<'_>, offset: usize) -> Result<SeriesInfo, StoreError> {
    let attributes: String = row.get(offset + 2)?;
    let kind: String = row.get(offset + 3)?;
    Ok(SeriesInfo {
        key: MetricSeriesKey {
            service: row.get(offset)?,
            name: row.get(offset + 1)?,
            attributes: serde_json::from_str::<BTreeMap<String, String>>(&attributes)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        }
        .into(),
        kind: MetricKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("metric kind {kind:?}")))?,
        unit: row.get(offset + 4)?,
        description: row.get(offset + 5)?,
    })
}

pub struct MetricRows {
    pub rows: Vec<MetricDelta>,
    pub flushed_seq: u64,
}

/// Windows of every series named `name` of `service` in the range.
pub fn metric_windows(
    conn: &mut Connection,
    service: &str,
    name: &str,
    resolution: Resolution,
    from_ms: i64,
    to_ms: i64,
) -> Result<MetricRows, StoreError> {
    map_database_file(conn)?;
    in_snapshot(conn, |conn| {
        let table = resolution.metric_table();
        let sql = format!(
            "SELECT s.id, s.service, s.name, s.attributes, s.kind, s.unit, s.description, m.start_ms,
                    m.agg
             FROM metric_series s JOIN {table} m ON m.series_id = s.id
             WHERE s.service = ?1 AND s.name = ?2 AND m.start_ms >= ?3 AND m.start_ms < ?4"
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(rusqlite::params![service, name, from_ms, to_ms])?;
        let mut out = Vec::new();
        // A series' description (its attributes are JSON) is parsed once, not once per window.
        let mut described: HashMap<i64, SeriesInfo> = HashMap::new();
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let series = match described.get(&id) {
                Some(info) => info.clone(),
                None => match series_info(row, 1) {
                    Ok(info) => {
                        described.insert(id, info.clone());
                        info
                    }
                    Err(e) => {
                        unreadable("metric_series", &e);
                        continue;
                    }
                },
            };
            let window = || -> Result<(i64, MetricAgg), StoreError> {
                let agg = row
                    .get_ref(8)?
                    .as_str()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let agg = serde_json::from_str::<MetricAgg>(agg)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((row.get(7)?, agg))
            };
            match window() {
                Ok((window_start_ms, agg)) => out.push(MetricDelta {
                    series,
                    window_start_ms,
                    agg,
                }),
                Err(e) => unreadable(table, &e),
            }
        }
        Ok(MetricRows {
            rows: out,
            flushed_seq: flushed_seq(conn)?,
        })
    })
}

pub fn traces(
    conn: &mut Connection,
    filter: &TraceFilter,
) -> Result<Vec<TraceSummary>, StoreError> {
    let mut sql = String::from(
        "SELECT trace_id, service, method, route, root_name, start_ns, end_ns, error, span_count,
                reason
         FROM traces WHERE start_ns >= ?1 AND start_ns < ?2",
    );
    let mut values: Vec<Value> = vec![
        (filter.from_ms.saturating_mul(1_000_000)).into(),
        (filter.to_ms.saturating_mul(1_000_000)).into(),
    ];
    for (column, value) in [
        ("service", &filter.service),
        ("method", &filter.method),
        ("route", &filter.route),
    ] {
        if let Some(value) = value {
            values.push(value.clone().into());
            sql.push_str(&format!(" AND {column} = ?{}", values.len()));
        }
    }
    if filter.errors_only {
        sql.push_str(" AND error = 1");
    }
    if let Some(min) = filter.min_duration_ms {
        values.push(((min * 1e6) as i64).into());
        sql.push_str(&format!(" AND end_ns - start_ns >= ?{}", values.len()));
    }
    sql.push_str(if filter.slowest_first {
        " ORDER BY end_ns - start_ns DESC"
    } else {
        " ORDER BY start_ns DESC"
    });
    values.push((filter.limit as i64).into());
    sql.push_str(&format!(" LIMIT ?{}", values.len()));
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    let mut out = Vec::new();
    let read = |row: &Row<'_>| -> Result<TraceSummary, StoreError> {
        let start: i64 = row.get(5)?;
        let end: i64 = row.get(6)?;
        let stored_reason: String = row.get(9)?;
        let reason = KeepReason::parse(&stored_reason)
            .ok_or_else(|| StoreError::Corrupt(format!("keep reason {stored_reason:?}")))?;
        Ok(TraceSummary {
            trace_id: row.get(0)?,
            service: row.get(1)?,
            method: row.get(2)?,
            route: row.get(3)?,
            root_name: row.get(4)?,
            start_unix_ms: start as f64 / 1e6,
            duration_ms: end.saturating_sub(start) as f64 / 1e6,
            error: row.get(7)?,
            span_count: row.get::<_, i64>(8)?.max(0) as u64,
            reason,
        })
    };
    while let Some(row) = rows.next()? {
        match read(row) {
            Ok(summary) => out.push(summary),
            Err(e) => unreadable("traces", &e),
        }
    }
    Ok(out)
}

/// Every stored span of a trace, by start time.
pub fn trace_spans(conn: &mut Connection, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT trace_id, span_id, parent_span_id, service, name, kind, start_ns, end_ns, status,
                status_message, attributes, events
         FROM spans WHERE trace_id = ?1 ORDER BY start_ns, span_id",
    )?;
    let mut rows = statement.query([trace_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match span_record(row) {
            Ok(span) => out.push(span),
            Err(e) => unreadable("spans", &e),
        }
    }
    Ok(out)
}

/// A stored span (columns as [`trace_spans`] selects them).
fn span_record(row: &Row<'_>) -> Result<SpanRecord, StoreError> {
    let attributes: String = row.get(10)?;
    let events: String = row.get(11)?;
    let stored_status: String = row.get(8)?;
    let status = SpanStatus::parse(&stored_status)
        .ok_or_else(|| StoreError::Corrupt(format!("span status {stored_status:?}")))?;
    let stored_kind: String = row.get(5)?;
    let kind = SpanKind::parse(&stored_kind)
        .ok_or_else(|| StoreError::Corrupt(format!("span kind {stored_kind:?}")))?;
    let attributes: BTreeMap<String, String> =
        serde_json::from_str(&attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let is_error = status == SpanStatus::Error
        || [
            semconv::HTTP_RESPONSE_STATUS_CODE,
            deprecated::HTTP_STATUS_CODE,
        ]
        .iter()
        .any(|k| attributes.get(*k).and_then(|v| v.parse::<u16>().ok()) >= Some(500));
    Ok(SpanRecord {
        trace_id: row.get(0)?,
        span_id: row.get(1)?,
        parent_span_id: row.get(2)?,
        service: row.get(3)?,
        name: row.get(4)?,
        kind,
        start_unix_ns: row.get::<_, i64>(6)? as u64,
        end_unix_ns: row.get::<_, i64>(7)? as u64,
        status,
        status_message: row.get(9)?,
        attributes,
        events: serde_json::from_str::<Vec<SpanEvent>>(&events)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        endpoint: None,
        is_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Retention;
    use crate::store::test_data::{
        HOUR, batch, count, database, gauge, plain, red, sample, span, with_metrics,
    };

    const UNREADABLE: &str = "redline_store_rows_unreadable_total";

    fn all_endpoints() -> RedFilter {
        RedFilter::default()
    }

    fn requests_by_route(rows: &[RedDelta]) -> BTreeMap<String, u64> {
        rows.iter()
            .map(|r| (r.endpoint.route.clone(), r.stats.requests))
            .collect()
    }

    #[test]
    fn a_red_row_that_cannot_be_decoded_is_skipped_and_counted() {
        // Each way a RED row can be damaged: the sketch, the status counts, the explicit
        // buckets, a count of the wrong type or sign.
        let damages = [
            "sketch = x'0102'",
            "status = x'00'",
            "status = 'text'",
            "explicit = '{not json'",
            "requests = 'many'",
            "requests = -5",
        ];
        for damage in damages {
            let (dir, mut db) = database(Retention::default());
            let flush = batch(
                vec![red("/a", HOUR, 3), red("/b", HOUR, 4), red("/c", HOUR, 5)],
                vec![],
                vec![],
            );
            db.write_flush(1, &flush).unwrap();
            let path = dir.path().join("redline.db");
            let damaged = plain(&path)
                .execute(
                    &format!(
                        "UPDATE red_10s SET {damage} WHERE endpoint_id =
                           (SELECT id FROM endpoints WHERE route = '/b')"
                    ),
                    [],
                )
                .unwrap();
            assert_eq!(damaged, 1);

            let mut reader = plain(&path);
            let ((totals, steps), metrics) = with_metrics(|| {
                let totals = red_totals(&mut reader, &all_endpoints(), |_| {
                    vec![(Resolution::TenSeconds, HOUR, HOUR + 60_000)]
                })
                .unwrap();
                let steps = red_steps(
                    &mut reader,
                    &all_endpoints(),
                    Resolution::TenSeconds,
                    (HOUR, HOUR + 60_000),
                    10_000,
                    true,
                )
                .unwrap();
                (totals, steps)
            });
            let expected = BTreeMap::from([("/a".to_string(), 3), ("/c".to_string(), 5)]);
            assert_eq!(requests_by_route(&totals.rows), expected, "{damage}");
            assert_eq!(requests_by_route(&steps.rows), expected, "{damage}");
            assert_eq!(totals.flushed_seq, 1);
            assert_eq!(
                sample(&metrics, &format!("{UNREADABLE}{{table=\"red_10s\"}}")),
                2.0,
                "{damage}: {metrics}"
            );
            // The other tiers of the same endpoint are intact.
            let hourly = red_totals(&mut reader, &all_endpoints(), |_| {
                vec![(Resolution::OneHour, HOUR, HOUR + 3_600_000)]
            })
            .unwrap();
            assert_eq!(requests_by_route(&hourly.rows)["/b"], 4);
        }
    }

    #[test]
    fn an_endpoint_that_cannot_be_read_is_left_out() {
        let (dir, mut db) = database(Retention::default());
        db.write_flush(
            1,
            &batch(vec![red("/a", HOUR, 3), red("/b", HOUR, 4)], vec![], vec![]),
        )
        .unwrap();
        let path = dir.path().join("redline.db");
        plain(&path)
            .execute(
                "UPDATE endpoints SET method = x'00ff' WHERE route = '/b'",
                [],
            )
            .unwrap();
        let mut reader = plain(&path);
        let (totals, metrics) = with_metrics(|| {
            red_totals(&mut reader, &all_endpoints(), |_| {
                vec![(Resolution::OneMinute, HOUR, HOUR + 60_000)]
            })
            .unwrap()
        });
        assert_eq!(
            requests_by_route(&totals.rows),
            BTreeMap::from([("/a".to_string(), 3)])
        );
        assert_eq!(
            sample(&metrics, &format!("{UNREADABLE}{{table=\"endpoints\"}}")),
            1.0
        );
    }

    #[test]
    fn metric_windows_and_series_that_cannot_be_decoded_are_skipped_and_counted() {
        let (dir, mut db) = database(Retention::default());
        let flush = batch(
            vec![],
            vec![
                gauge("queue", "1", HOUR, 1.0),
                gauge("queue", "2", HOUR, 2.0),
                gauge("queue", "3", HOUR, 3.0),
            ],
            vec![],
        );
        db.write_flush(1, &flush).unwrap();
        let path = dir.path().join("redline.db");
        let writer = plain(&path);
        writer
            .execute(
                "UPDATE metric_10s SET agg = '{\"samples\": ' WHERE series_id =
                   (SELECT id FROM metric_series WHERE attributes LIKE '%\"2\"%')",
                [],
            )
            .unwrap();
        writer
            .execute(
                "UPDATE metric_series SET attributes = '{' WHERE attributes LIKE '%\"3\"%'",
                [],
            )
            .unwrap();
        let mut reader = plain(&path);
        let ((windows, series), metrics) = with_metrics(|| {
            let windows = metric_windows(
                &mut reader,
                "svc",
                "queue",
                Resolution::TenSeconds,
                HOUR,
                HOUR + 60_000,
            )
            .unwrap();
            let series = metric_series(&mut reader, Some("svc")).unwrap();
            (windows, series)
        });
        let labels = |keys: Vec<&MetricSeriesKey>| -> Vec<String> {
            keys.iter().map(|k| k.attributes["k"].clone()).collect()
        };
        assert_eq!(
            labels(windows.rows.iter().map(|w| &*w.series.key).collect()),
            ["1"]
        );
        assert_eq!(windows.rows[0].agg.last, 1.0);
        assert_eq!(
            labels(series.iter().map(|s| &*s.series.key).collect()),
            ["1", "2"]
        );
        assert_eq!(
            sample(&metrics, &format!("{UNREADABLE}{{table=\"metric_10s\"}}")),
            1.0
        );
        // Once by the window read, once by the series list.
        assert_eq!(
            sample(
                &metrics,
                &format!("{UNREADABLE}{{table=\"metric_series\"}}")
            ),
            2.0
        );
    }

    #[test]
    fn spans_and_traces_that_cannot_be_decoded_are_skipped_and_counted() {
        let (dir, mut db) = database(Retention::default());
        let flush = batch(
            vec![],
            vec![],
            vec![
                span(1, 1, HOUR),
                span(1, 2, HOUR + 1),
                span(1, 3, HOUR + 2),
                span(2, 1, HOUR + 3),
                span(3, 1, HOUR + 4),
            ],
        );
        db.write_flush(1, &flush).unwrap();
        let path = dir.path().join("redline.db");
        let writer = plain(&path);
        writer
            .execute(
                "UPDATE spans SET attributes = 'garbage' WHERE span_id = ?1",
                [format!("{:016x}", 2)],
            )
            .unwrap();
        writer
            .execute(
                "UPDATE spans SET events = '[{' WHERE span_id = ?1",
                [format!("{:016x}", 3)],
            )
            .unwrap();
        writer
            .execute(
                "UPDATE traces SET span_count = 'several' WHERE trace_id = ?1",
                [format!("{:032x}", 2)],
            )
            .unwrap();
        let mut reader = plain(&path);
        let ((spans, traces), metrics) = with_metrics(|| {
            let spans = trace_spans(&mut reader, &format!("{:032x}", 1)).unwrap();
            let traces = traces(
                &mut reader,
                &TraceFilter {
                    from_ms: HOUR - 1,
                    to_ms: HOUR + 60_000,
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
            (spans, traces)
        });
        assert_eq!(
            spans.iter().map(|s| s.span_id.as_str()).collect::<Vec<_>>(),
            [format!("{:016x}", 1)]
        );
        let mut listed: Vec<String> = traces.into_iter().map(|t| t.trace_id).collect();
        listed.sort();
        assert_eq!(listed, [format!("{:032x}", 1), format!("{:032x}", 3)]);
        assert_eq!(
            sample(&metrics, &format!("{UNREADABLE}{{table=\"spans\"}}")),
            2.0
        );
        assert_eq!(
            sample(&metrics, &format!("{UNREADABLE}{{table=\"traces\"}}")),
            1.0
        );
        assert_eq!(count(&reader, "spans"), 5, "reads change nothing");
    }
}
