//! The load generator and the demo's start-up contract.

use crate::helpers::TestApp;
use axum::Router;
use axum::http::{StatusCode, Uri};
use example_api::loadgen::{self, Options};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn loadgen_keeps_the_arrival_rate_and_counts_by_endpoint() {
    let app = TestApp::spawn().await;
    let opts = Options::new(
        format!("http://{}", app.addr),
        100.0,
        Duration::from_secs(2),
    );
    let report = loadgen::run(opts, std::future::pending()).await.unwrap();
    assert_eq!(report.scheduled, 200);
    assert_eq!(report.completed, 200);
    let per_endpoint: u64 = report.by_endpoint.values().map(|c| c.requests).sum();
    assert_eq!(per_endpoint, 200);
    let per_status: u64 = report.by_status.values().sum();
    assert_eq!(per_status, 200);
    assert!(report.by_endpoint.contains_key("GET /v1/products/{id}"));
    assert_eq!(
        report.setup["POST /v1/auth/token"], 8,
        "setup requests are reported separately"
    );
    assert!(
        !report.by_status.contains_key("500") && !report.by_status.contains_key("timeout"),
        "{:?}",
        report.by_status
    );
    // All 200 were sent on schedule (above); the run then only waits for the last responses.
    assert!(
        report.elapsed < Duration::from_secs(12),
        "the run ends once its last requests are answered: {:?}",
        report.elapsed
    );
    let json = report.to_json();
    assert!(
        json["latency_ms"]["p99"].as_f64().unwrap() >= json["latency_ms"]["p50"].as_f64().unwrap()
    );
    app.stop().await;
}

/// A server that stalls for one second from the first load request: an open-model generator
/// keeps sending on schedule and charges the stall to every request that arrived during it
/// (a closed loop would send one request and record one slow sample).
#[tokio::test]
async fn loadgen_measures_stalls_without_coordinated_omission() {
    let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let router = Router::new().fallback({
        let first = first.clone();
        move |uri: Uri| {
            let first = first.clone();
            async move {
                if uri.path() == "/v1/auth/token" || uri.path() == "/v1/stats" {
                    return StatusCode::NOT_FOUND;
                }
                let t0 = *first.get_or_init(Instant::now);
                tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let opts = Options::new(format!("http://{addr}"), 100.0, Duration::from_secs(2));
    let report = loadgen::run(opts, std::future::pending()).await.unwrap();
    assert_eq!(
        report.scheduled, 200,
        "requests keep being sent during the stall"
    );
    let slow = report.hist.count_between(100_000, 2_000_000);
    assert!(
        slow >= 80,
        "the stall is charged to the ~100 requests scheduled during it: {slow}"
    );
    assert!(report.hist.value_at_quantile(0.9) >= 300_000);
    assert!(report.hist.max() >= 900_000);
}

#[tokio::test]
async fn demo_explains_a_missing_redline_binary() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_example-api"))
        .args(["demo", "--redline", "/nonexistent/redline"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release --workspace"), "{err}");
}

/// `demo --instances 2` refuses to start without Redis, with the reason alone: nothing has
/// started yet (no telemetry failing to export to a redline that never ran).
#[tokio::test]
async fn demo_with_two_instances_refuses_an_unreachable_redis_before_starting_anything() {
    // Any existing file passes the binary check; nothing listens on port 1.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_example-api"))
        .args([
            "demo",
            "--instances",
            "2",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .arg("--redline")
        .arg(env!("CARGO_BIN_EXE_example-api"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Redis at redis://127.0.0.1:1 is unreachable"),
        "{err}"
    );
    assert!(
        !err.contains("opentelemetry"),
        "nothing exported before the check: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing started: {:?}", out.stdout);
}
