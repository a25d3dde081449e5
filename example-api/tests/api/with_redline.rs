//! The whole loop: the API exports over OTLP (gRPC, HTTP/protobuf and HTTP/JSON, through the
//! SDK's batch span processor and `opentelemetry-otlp`) to a real redline, the load generator
//! drives it, and redline's per-endpoint counts equal what the load generator sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use example_api::loadgen::{self, Options};
use example_api::sampling::Sampling;
use example_api::telemetry::Telemetry;
use redline::app::App as Redline;
use redline::config::{Settings, SettingsLayer};

use crate::helpers::{TestApp, export_config, test_config};

pub(crate) struct RunningRedline {
    pub(crate) grpc: std::net::SocketAddr,
    pub(crate) http: std::net::SocketAddr,
    pub(crate) web: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// Its data directory (the `.eml` outbox is `outbox/` in it).
    pub(crate) dir: tempfile::TempDir,
}

impl RunningRedline {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn start_redline() -> RunningRedline {
    start_redline_with(|_, _| {}).await
}

/// A redline in this process on port 0, its data in a temporary directory, without alert
/// rules unless `f` (given the settings and that directory) sets some.
pub(crate) async fn start_redline_with(
    f: impl FnOnce(&mut SettingsLayer, &std::path::Path),
) -> RunningRedline {
    let dir = tempfile::tempdir().unwrap();
    let mut layer = SettingsLayer {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        web_addr: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        alerts_file: Some(dir.path().join("no-alerts.toml")),
        ..Default::default()
    };
    f(&mut layer, dir.path());
    let settings = Settings::resolve(layer).unwrap();
    let app = Redline::build(settings).await.expect("redline starts");
    let (grpc, http, web) = (app.grpc_addr(), app.http_addr(), app.web_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .expect("redline stops cleanly");
    });
    RunningRedline {
        grpc,
        http,
        web,
        stop,
        task,
        dir,
    }
}

/// Requests per "METHOD route" as redline reports them for `service`.
async fn redline_counts(web: std::net::SocketAddr, service: &str) -> BTreeMap<String, (u64, u64)> {
    let url = format!("http://{web}/api/v1/endpoints?service={service}&since=15m");
    let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                format!(
                    "{} {}",
                    e["method"].as_str().unwrap(),
                    e["route"].as_str().unwrap()
                ),
                (
                    e["requests"].as_u64().unwrap(),
                    e["errors"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redline_counts_exactly_what_the_load_generator_sent() {
    counts_match_over("grpc").await;
}

/// The same over OTLP/HTTP protobuf, the default protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redline_counts_exactly_what_was_sent_over_http_protobuf() {
    counts_match_over("http/protobuf").await;
}

/// And over OTLP/HTTP JSON (hex ids, the JSON mapping of `opentelemetry_proto`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redline_counts_exactly_what_was_sent_over_http_json() {
    counts_match_over("http/json").await;
}

/// The API, its downstream service and a redline they export to.
struct Loop {
    redline: RunningRedline,
    api: TestApp,
    tel: Arc<Telemetry>,
    dtel: Arc<Telemetry>,
}

impl Loop {
    async fn start(protocol: &str, sampling: Sampling) -> Loop {
        let redline = start_redline().await;
        let addr = if protocol == "grpc" {
            redline.grpc
        } else {
            redline.http
        };
        let export = export_config(
            format!("http://{addr}"),
            protocol,
            Duration::from_secs(1),
            sampling,
        );
        let tel = Arc::new(Telemetry::new("example-api", &export).unwrap());
        let dtel = Arc::new(Telemetry::new("recommendations", &export).unwrap());
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let api = TestApp::spawn_telemetry(test_config(&dir), dir, tel.clone(), dtel.clone()).await;
        Loop {
            redline,
            api,
            tel,
            dtel,
        }
    }

    /// Runs the load generator, flushes telemetry and returns what it sent per endpoint
    /// (requests, errors), including its set-up requests.
    async fn drive(&self, rate: f64) -> BTreeMap<String, (u64, u64)> {
        let report = loadgen::run(
            Options::new(self.api.url(""), rate, Duration::from_secs(5)),
            std::future::pending(),
        )
        .await
        .expect("load generator runs");
        assert!(
            report.completed > 100,
            "the run did something: {}",
            report.completed
        );
        self.tel.flush().await;
        self.dtel.flush().await;
        let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (endpoint, counts) in &report.by_endpoint {
            let entry = expected.entry(endpoint.clone()).or_default();
            entry.0 += counts.requests;
            entry.1 += counts.errors;
        }
        for (endpoint, count) in &report.setup {
            expected.entry(endpoint.clone()).or_default().0 += count;
        }
        expected
    }

    async fn stop(self) {
        self.api.stop().await;
        self.tel.shutdown().await;
        self.dtel.shutdown().await;
        let _ = self.redline.stop.send(());
        self.redline.task.await.unwrap();
    }
}

/// With 1 in 4 traces sampled (consistent probability sampling, `ot=th:c` in tracestate),
/// redline counts each sampled request 4 times: every count is a multiple of 4 and the total is
/// within four standard deviations of what the load generator sent (unweighted, it would be
/// about a quarter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redline_estimates_counts_from_sampled_traces() {
    let l = Loop::start("http/protobuf", Sampling::ratio(0.25)).await;
    let expected = l.drive(80.0).await;
    let sent: u64 = expected.values().map(|(r, _)| r).sum();
    // Binomial thinning: the estimate's variance is sent × (1 − p) / p.
    let tolerance = 4.0 * (sent as f64 * 3.0).sqrt();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut counted = BTreeMap::new();
    let mut total = 0;
    while std::time::Instant::now() < deadline {
        counted = redline_counts(l.redline.web, "example-api").await;
        total = counted.values().map(|(r, _)| r).sum::<u64>();
        if (total as f64 - sent as f64).abs() <= tolerance {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (total as f64 - sent as f64).abs() <= tolerance,
        "redline estimated {total} requests, the load generator sent {sent} (±{tolerance:.0}): {counted:?}"
    );
    assert!(
        counted.values().all(|(r, e)| r % 4 == 0 && e % 4 == 0),
        "each sampled request counts 4: {counted:?}"
    );
    l.stop().await;
}

async fn counts_match_over(protocol: &str) {
    let l = Loop::start(protocol, Sampling::default()).await;
    let expected = l.drive(40.0).await;
    let redline = &l.redline;
    // Poll with a deadline, keeping the last answer so a mismatch shows what differs.
    let mut counted = BTreeMap::new();
    for _ in 0..200 {
        counted = redline_counts(redline.web, "example-api").await;
        if counted == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counted, expected,
        "redline's counts (left) versus the load generator's (right)"
    );

    // The downstream service reports under its own name, with the calls the API made.
    let downstream = redline_counts(redline.web, "recommendations").await;
    assert!(
        !downstream.is_empty(),
        "the recommendations service is visible too"
    );

    l.stop().await;
}

/// The API's `tracing` events reach redline as OTLP log records through the
/// `opentelemetry-appender-tracing` bridge: an ERROR event inside a request's span carries the
/// span's trace and span ids, over gRPC and over OTLP/HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_log_events_reach_redline_with_their_trace() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    use tracing_subscriber::layer::SubscriberExt as _;
    let redline = start_redline().await;
    for (protocol, addr) in [("grpc", redline.grpc), ("http/protobuf", redline.http)] {
        let export = export_config(
            format!("http://{addr}"),
            protocol,
            Duration::from_secs(1),
            Sampling::parse("always_on", None),
        );
        let service = format!("logs-{}", protocol.replace('/', "-"));
        let tel = Telemetry::new(&service, &export).unwrap();
        let (trace_id, span_id) = {
            let subscriber = tracing_subscriber::registry().with(tel.log_layer());
            let _default = tracing::subscriber::set_default(subscriber);
            let span = tel.tracer.start("POST /v1/orders");
            let ids = (
                span.span_context().trace_id(),
                span.span_context().span_id(),
            );
            let _request = opentelemetry::Context::current_with_span(span).attach();
            tracing::error!(order = 7, "payment declined");
            tracing::debug!("below the bridge's level");
            ids
        };
        tel.flush().await;
        let url = format!(
            "http://{}/api/v1/logs?service={service}&since=5m",
            redline.web
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let record = loop {
            let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            if let Some(record) = body["logs"].as_array().and_then(|l| l.first()).cloned() {
                break record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log record of {service} in redline"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(record["body"], "payment declined");
        assert_eq!(record["severity_number"], 17);
        assert_eq!(record["trace_id"], trace_id.to_string());
        assert_eq!(record["span_id"], span_id.to_string());
        assert_eq!(record["attributes"]["order"], "7");
        tel.shutdown().await;
    }
    let _ = redline.stop.send(());
    redline.task.await.unwrap();
}
