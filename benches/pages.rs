//! Dashboard render time (issue 5, "Speed"), recorded in docs/PERFORMANCE.md.
//!
//! `cargo bench --bench pages` fills a store with 24 h of 1-minute RED windows of 200 endpoints
//! — the service `example-api` with 180 of them, two more services with 10 each — metric series and
//! sampled traces, written through the store's writer (the ingest path only accepts timestamps
//! within 6 h of now, so a day of history cannot be sent as OTLP). Then it starts redline on
//! it and times sequential `GET`s of every page over loopback for the 1 h (default) and 24 h
//! ranges: median and p90 of 25 requests after 3 warm-ups, and the HTML size. `PAGES_RUNS=N`
//! sets the timed requests per page, `PAGES_ONLY=/prefix` times only matching pages,
//! `PAGES_PROFILE=1` also times the RED reads alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redline::aggregate::metric::MetricAgg;
use redline::aggregate::red::RedStats;
use redline::aggregate::{FlushBatch, MetricDelta, RedDelta, SeriesInfo};
use redline::app::App;
use redline::config::{Settings, SettingsLayer};
use redline::model::{
    EndpointKey, MetricKind, MetricSeriesKey, RedSource, RequestRecord, SpanKind, SpanRecord,
    SpanStatus,
};
use redline::store::{self, Retention};
use redline::vocab::KeepReason;
use redline::vocab::now_ms;

const MINUTES: i64 = 24 * 60;
const BIG_SERVICE: &str = "example-api";
const BIG_ENDPOINTS: usize = 180;
const OTHER_SERVICES: usize = 2;
const OTHER_ENDPOINTS: usize = 10;
const WARMUP: usize = 3;
/// Timed requests per page (`PAGES_RUNS` overrides, for a quick look).
fn runs() -> usize {
    std::env::var("PAGES_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(25)
}

fn endpoints() -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for i in 0..BIG_ENDPOINTS {
        keys.push(EndpointKey {
            service: BIG_SERVICE.into(),
            method: if i % 4 == 0 { "POST" } else { "GET" }.into(),
            route: format!("/api/v1/resource{i}/{{id}}"),
        });
    }
    for s in 0..OTHER_SERVICES {
        for i in 0..OTHER_ENDPOINTS {
            keys.push(EndpointKey {
                service: format!("service-{s:02}"),
                method: "GET".into(),
                route: format!("/route{i}"),
            });
        }
    }
    keys
}

/// A few requests of one endpoint in one minute, with a daily rhythm and some errors.
fn red_window(index: usize, minute_start: i64) -> RedStats {
    let mut stats = RedStats::default();
    let n = 3 + (index + (minute_start / 60_000) as usize) % 5;
    for r in 0..n {
        let base = 5.0 + (index % 17) as f64 * 3.0;
        let duration_ms = base * (1.0 + (r as f64 * 0.7).sin().abs() * 4.0);
        let status = if (r + index).is_multiple_of(23) {
            500
        } else {
            200
        };
        stats.add_request(&RequestRecord {
            end_unix_ms: minute_start + 30_000,
            duration_ms,
            status_code: Some(status),
            is_error: status >= 500,
            count: 1,
        });
    }
    stats
}

fn metric(name: &str, kind: MetricKind, unit: &str, attributes: &[(&str, &str)]) -> SeriesInfo {
    SeriesInfo {
        key: MetricSeriesKey {
            service: BIG_SERVICE.into(),
            name: name.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
        .into(),
        kind,
        unit: unit.into(),
        description: String::new(),
    }
}

fn gauge(value: f64, at: i64) -> MetricAgg {
    MetricAgg {
        samples: 1,
        sum: value,
        min: value,
        max: value,
        last: value,
        last_time_ms: at,
        histogram: None,
    }
}

fn trace(i: usize, at_ms: i64) -> Vec<(SpanRecord, KeepReason)> {
    let trace_id = format!("{:032x}", 0xbe00 + i);
    let start = (at_ms as u64) * 1_000_000;
    (0..6)
        .map(|s| {
            let span = SpanRecord {
                trace_id: trace_id.clone(),
                span_id: format!("{:016x}", (i << 8) + s + 1),
                parent_span_id: (s > 0).then(|| format!("{:016x}", (i << 8) + 1)),
                service: BIG_SERVICE.into(),
                name: if s == 0 {
                    "GET /api/v1/resource1/{id}".into()
                } else {
                    format!("SELECT t{s}")
                },
                kind: if s == 0 {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                },
                start_unix_ns: start + s as u64 * 2_000_000,
                end_unix_ns: start + 40_000_000 - s as u64 * 1_000_000,
                status: if i.is_multiple_of(5) {
                    SpanStatus::Error
                } else {
                    SpanStatus::Unset
                },
                status_message: String::new(),
                attributes: [("db.system.name".to_string(), "sqlite".to_string())].into(),
                events: Vec::new(),
                endpoint: (s == 0).then(|| EndpointKey {
                    service: BIG_SERVICE.into(),
                    method: "GET".into(),
                    route: "/api/v1/resource1/{id}".into(),
                }),
                is_error: i.is_multiple_of(5) && s == 0,
            };
            let reason = if i.is_multiple_of(5) {
                KeepReason::Error
            } else {
                KeepReason::Slow
            };
            (span, reason)
        })
        .collect()
}

async fn fill(data_dir: &std::path::Path) {
    let path = store::database_path(data_dir);
    let (_db, conn) = store::Db::open(&path).expect("database opens");
    let retention = Retention {
        ten_seconds: Duration::from_secs(6 * 3600),
        one_minute: Duration::from_secs(7 * 86_400),
        one_hour: Duration::from_secs(90 * 86_400),
        traces: Duration::from_secs(3 * 86_400),
        max_spans: 1_000_000,
        ..Retention::default()
    };
    let writer = store::spawn_writer(conn, retention, |_| {});
    let keys = endpoints();
    let now = now_ms();
    let first = (now - MINUTES * 60_000).div_euclid(60_000) * 60_000;
    let started = Instant::now();
    for (seq, hour) in (1..).zip(0..(MINUTES / 60)) {
        let mut batch = FlushBatch::default();
        for m in 0..60 {
            let minute_start = first + (hour * 60 + m) * 60_000;
            for (i, key) in keys.iter().enumerate() {
                batch.red.push(RedDelta {
                    source: RedSource::Spans,
                    endpoint: key.clone(),
                    window_start_ms: minute_start,
                    stats: red_window(i, minute_start),
                });
            }
            let wave = ((minute_start / 60_000) as f64 / 30.0).sin();
            for (state, base) in [("idle", 6.0), ("used", 4.0)] {
                batch.metrics.push(MetricDelta {
                    series: metric(
                        "db.client.connection.count",
                        MetricKind::Gauge,
                        "{connection}",
                        &[("db.client.connection.state", state)],
                    ),
                    window_start_ms: minute_start,
                    agg: gauge(base + 3.0 * wave, minute_start),
                });
            }
            for (result, base) in [("hit", 300.0), ("miss", 60.0)] {
                let mut agg = gauge(base * (1.2 + wave), minute_start);
                agg.sum = base * (1.2 + wave);
                batch.metrics.push(MetricDelta {
                    series: metric(
                        "cache.requests",
                        MetricKind::Counter,
                        "{request}",
                        &[("cache.result", result)],
                    ),
                    window_start_ms: minute_start,
                    agg,
                });
            }
        }
        for t in 0..10 {
            batch.spans.extend(trace(
                hour as usize * 10 + t,
                first + hour * 3_600_000 + t as i64 * 300_000,
            ));
        }
        writer.flush(seq, Arc::new(batch)).await.expect("written");
    }
    writer.barrier().await.expect("stored");
    writer.close().await;
    println!(
        "filled {} endpoints × {MINUTES} minutes in {:.1} s",
        keys.len(),
        started.elapsed().as_secs_f64()
    );
}

struct Row {
    page: String,
    range: &'static str,
    median_ms: f64,
    p90_ms: f64,
    bytes: usize,
}

async fn measure(client: &reqwest::Client, base: &str, path: &str) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for run in 0..WARMUP + runs() {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        let status = response.status();
        let body = response.text().await.expect("body");
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        assert!(status.is_success(), "{path}: {status}");
        if run >= WARMUP {
            times.push(elapsed);
        }
        bytes = body.len();
    }
    times.sort_by(f64::total_cmp);
    (times, bytes)
}

/// Times the RED reads behind the slowest pages on their own (`PAGES_PROFILE=1`).
async fn profile_reads(app: &App) {
    use redline::vocab::{RedFilter, TimeRange};
    let query = app.query();
    let range = TimeRange::last(3_600_000);
    let time = |label: String, started: Instant| {
        eprintln!(
            "{label}: {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        )
    };
    for _ in 0..3 {
        let started = Instant::now();
        let all = query
            .red_steps(RedFilter::default(), range, 120_000, false)
            .await
            .unwrap();
        time(
            format!("all services, {} groups", all.groups.len()),
            started,
        );
        let started = Instant::now();
        let one = query
            .red_steps(
                RedFilter {
                    service: Some(BIG_SERVICE.into()),
                    ..Default::default()
                },
                range,
                60_000,
                true,
            )
            .await
            .unwrap();
        time(
            format!("{BIG_SERVICE} per endpoint, {} groups", one.groups.len()),
            started,
        );
        let started = Instant::now();
        let summary = query.services(range).await.unwrap();
        time(format!("services() {}", summary.len()), started);
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        fill(dir.path()).await;
        let settings = Settings::resolve(SettingsLayer {
            otlp_grpc_addr: Some("127.0.0.1:0".into()),
            otlp_http_addr: Some("127.0.0.1:0".into()),
            web_addr: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().to_path_buf()),
            dashboards_dir: Some(format!("{}/dashboards", env!("CARGO_MANIFEST_DIR")).into()),
            alerts_file: Some(dir.path().join("no-alerts.toml")),
            ..Default::default()
        })
        .expect("settings");
        let app = App::build(settings).await.expect("redline starts");
        let base = format!("http://{}", app.web_addr());
        if std::env::var("PAGES_PROFILE").is_ok() {
            profile_reads(&app).await;
        }
        let client = reqwest::Client::new();
        let pages = [
            "/",
            "/services/example-api",
            "/services/example-api/endpoints?method=GET&route=%2Fapi%2Fv1%2Fresource1%2F%7Bid%7D",
            "/traces",
            "/traces/0000000000000000000000000000be01",
            "/metrics-explorer?service=example-api&name=db.client.connection.count",
            "/dashboards/api-golden-signals",
        ];
        // `PAGES_ONLY=/services` times only the pages whose path starts so (for profiling).
        let only = std::env::var("PAGES_ONLY").unwrap_or_default();
        let mut rows = Vec::new();
        for range in ["1h", "24h"] {
            for page in pages.into_iter().filter(|p| p.starts_with(only.as_str())) {
                let sep = if page.contains('?') { '&' } else { '?' };
                let path = format!("{page}{sep}range={range}");
                let (times, bytes) = measure(&client, &base, &path).await;
                eprintln!(
                    "{path}: median {:.1} ms, {:.1} KB",
                    times[times.len() / 2],
                    bytes as f64 / 1000.0
                );
                rows.push(Row {
                    page: page.to_string(),
                    range,
                    median_ms: times[times.len() / 2],
                    p90_ms: times[times.len() * 9 / 10],
                    bytes,
                });
            }
        }
        println!("\n| page | range | median | p90 | HTML |");
        println!("| --- | --- | ---: | ---: | ---: |");
        for r in &rows {
            println!(
                "| `{}` | {} | {:.1} ms | {:.1} ms | {:.1} KB |",
                r.page,
                r.range,
                r.median_ms,
                r.p90_ms,
                r.bytes as f64 / 1000.0
            );
        }
        let worst = rows.iter().map(|r| r.median_ms).fold(0.0, f64::max);
        let overview = rows
            .iter()
            .filter(|r| r.page == "/")
            .map(|r| r.bytes)
            .max()
            .unwrap_or(0);
        println!(
            "\nworst median {worst:.1} ms (budget 50 ms); overview HTML {:.1} KB (budget 150 KB)",
            overview as f64 / 1000.0
        );
    });
}
