//! The whole loop: the API exports over OTLP (gRPC through the OTLP crate, HTTP/protobuf through
//! the API's own encoder) to a real redline, the load generator drives it, and redline's
//! per-endpoint counts equal what the load generator sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use example_api::loadgen::{self, Options};
use example_api::telemetry::{ExportConfig, Telemetry};
use redline::app::App as Redline;
use redline::config::{Settings, SettingsLayer};

use crate::helpers::{TestApp, test_config};

struct RunningRedline {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    web: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_redline() -> RunningRedline {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::resolve(SettingsLayer {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        web_addr: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        alerts_file: Some(dir.path().join("no-alerts.toml")),
        ..Default::default()
    })
    .unwrap();
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
        _dir: dir,
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

/// The same over OTLP/HTTP protobuf, the default protocol, whose spans the API encodes itself
/// (`span_export`): a real receiver decodes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redline_counts_exactly_what_was_sent_over_http_protobuf() {
    counts_match_over("http/protobuf").await;
}

async fn counts_match_over(protocol: &str) {
    let redline = start_redline().await;
    let addr = if protocol == "grpc" {
        redline.grpc
    } else {
        redline.http
    };
    let export = ExportConfig {
        endpoint: Some(format!("http://{addr}")),
        protocol: protocol.into(),
        delta: false,
        metric_interval: Duration::from_secs(1),
        disabled: false,
        exponential_histograms: false,
    };
    let tel = Arc::new(Telemetry::new("example-api", &export).unwrap());
    let dtel = Arc::new(Telemetry::new("recommendations", &export).unwrap());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let api = TestApp::spawn_telemetry(test_config(&dir), dir, tel.clone(), dtel.clone()).await;

    let report = loadgen::run(
        Options::new(api.url(""), 40.0, Duration::from_secs(5)),
        std::future::pending(),
    )
    .await
    .expect("load generator runs");
    assert!(
        report.completed > 100,
        "the run did something: {}",
        report.completed
    );
    tel.flush().await;
    dtel.flush().await;

    // What the load generator sent, including its set-up requests.
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (endpoint, counts) in &report.by_endpoint {
        let entry = expected.entry(endpoint.clone()).or_default();
        entry.0 += counts.requests;
        entry.1 += counts.errors;
    }
    for (endpoint, count) in &report.setup {
        expected.entry(endpoint.clone()).or_default().0 += count;
    }
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

    api.stop().await;
    tel.shutdown().await;
    dtel.shutdown().await;
    let _ = redline.stop.send(());
    redline.task.await.unwrap();
}
