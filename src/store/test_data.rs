//! Flush contents and helpers for the store's unit tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::aggregate::{FlushBatch, MetricDelta, RedDelta, SeriesInfo};
use crate::model::{
    EndpointKey, MetricKind, MetricSeriesKey, RedSource, RequestRecord, SpanRecord,
};
use crate::store::apply::Database;
use crate::store::{Retention, WRITE_LOCK_WAIT, open_database};
use crate::vocab::KeepReason;

/// A window start aligned to every resolution.
pub const HOUR: i64 = 1_800_000_000_000;

pub fn endpoint(route: &str) -> EndpointKey {
    EndpointKey {
        service: "svc".into(),
        method: "GET".into(),
        route: route.into(),
    }
}

/// `requests` requests of 12 ms on `route` in the window starting at `window_start_ms`.
pub fn red(route: &str, window_start_ms: i64, requests: u32) -> RedDelta {
    let mut stats = RedStats::default();
    stats.add_request(&RequestRecord {
        end_unix_ms: window_start_ms,
        duration_ms: 12.0,
        status_code: Some(200),
        is_error: false,
        count: requests,
    });
    RedDelta {
        source: RedSource::Spans,
        endpoint: endpoint(route),
        window_start_ms,
        stats,
    }
}

/// A RED delta the store refuses to write ([`crate::store::codec::REFUSED_SUM_MS`]).
pub fn poisoned_red(route: &str, window_start_ms: i64) -> RedDelta {
    let mut delta = red(route, window_start_ms, 1);
    delta.stats.duration_sum_ms = crate::store::codec::REFUSED_SUM_MS;
    delta
}

/// One sample of the gauge `name` with attribute `k` = `label`.
pub fn gauge(name: &str, label: &str, window_start_ms: i64, value: f64) -> MetricDelta {
    MetricDelta {
        series: SeriesInfo {
            key: Arc::new(MetricSeriesKey {
                service: "svc".into(),
                name: name.into(),
                attributes: BTreeMap::from([("k".to_string(), label.to_string())]),
            }),
            kind: MetricKind::Gauge,
            unit: "1".into(),
            description: String::new(),
        },
        window_start_ms,
        agg: MetricAgg {
            samples: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
            last_time_ms: window_start_ms,
            histogram: None,
        },
    }
}

pub fn span(trace: u8, span: u8, start_ms: i64) -> (SpanRecord, KeepReason) {
    let record = SpanRecord {
        trace_id: format!("{trace:032x}"),
        span_id: format!("{span:016x}"),
        parent_span_id: None,
        service: "svc".into(),
        name: "GET /".into(),
        kind: crate::model::SpanKind::Server,
        start_unix_ns: start_ms as u64 * 1_000_000,
        end_unix_ns: start_ms as u64 * 1_000_000 + 5_000_000,
        status: crate::model::SpanStatus::Unset,
        status_message: String::new(),
        attributes: BTreeMap::from([("http.route".to_string(), "/".to_string())]),
        events: Vec::new(),
        endpoint: None,
        is_error: false,
    };
    (record, KeepReason::Sampled)
}

pub fn batch(
    red: Vec<RedDelta>,
    metrics: Vec<MetricDelta>,
    spans: Vec<(SpanRecord, KeepReason)>,
) -> Arc<FlushBatch> {
    Arc::new(FlushBatch {
        red,
        metrics,
        spans,
        logs: Vec::new(),
    })
}

/// A migrated database in a new temporary directory, and its writer-side wrapper.
pub fn database(retention: Retention) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = open_database(&dir.path().join("redline.db"), WRITE_LOCK_WAIT).expect("opens");
    (dir, Database::new(conn, retention, Duration::from_secs(1)))
}

/// A plain connection, as another process (or a damaged disk) has.
pub fn plain(path: &Path) -> Connection {
    Connection::open(path).expect("a plain connection")
}

pub fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count rows")
}

/// Runs `f` with a Prometheus recorder of its own (on this thread); returns its text too.
pub fn with_metrics<T>(f: impl FnOnce() -> T) -> (T, String) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let value = metrics::with_local_recorder(&recorder, f);
    (value, handle.render())
}

/// The value of the Prometheus sample `name{labels}` in `text`, 0 when absent.
pub fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
        .unwrap_or(0.0)
}
