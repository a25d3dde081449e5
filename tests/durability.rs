//! What redline promises about acknowledged data when the store cannot write: a full disk or a
//! database locked by another process fails readiness, ingest goes on acknowledging only up to
//! the bound on unwritten data and then answers 503, nothing acknowledged is lost when the
//! fault clears, and a `kill -9` in the middle loses at most that bound.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::helpers::{TestRedline, endpoint, export_request, poll, port_zero_layer, string};

use crate::tmpfs;

/// Posts `request`; the HTTP status and the body's text.
async fn post(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
    request: &ExportTraceServiceRequest,
) -> (u16, String) {
    let response = client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("export");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn readyz(redline: &TestRedline) -> (u16, String) {
    let response = redline
        .client()
        .get(redline.url("/readyz"))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn requests_of(redline: &TestRedline, service: &str, route: &str) -> u64 {
    let body = redline
        .get_ok(&format!("/api/v1/endpoints?service={service}&since=1h"))
        .await;
    endpoint(&body, "GET", route).map_or(0, |e| e["requests"].as_u64().unwrap_or(0))
}

/// Server spans whose kept copies are large: every trace is kept in these tests, so each flush
/// writes a few hundred KiB of spans and a full disk cannot go unnoticed.
fn heavy_request(service: &str, route: &str, count: usize) -> ExportTraceServiceRequest {
    let mut request = export_request(service, route, count);
    let padding = "x".repeat(2_000);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        span.attributes.push(string("padding", &padding));
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_readiness_and_loses_nothing_acknowledged() {
    let disk = tmpfs::Tmpfs::mount(16 << 20);
    let data_dir = disk.path().join("data");
    let mut layer = port_zero_layer(&data_dir);
    layer.max_unflushed_items = Some(2_000);
    let redline = TestRedline::start_in(layer.clone()).await;
    let client = reqwest::Client::new();
    let filler = disk.fill();

    let mut acknowledged = 0u64;
    let mut refusal = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusal.is_none() && Instant::now() < deadline {
        let (status, text) = post(&client, redline.http, &heavy_request("disk", "/d", 100)).await;
        match status {
            200 => acknowledged += 100,
            503 => refusal = Some(text),
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    let refusal = refusal.expect("refused once 2,000 spans wait to be written");
    assert!(refusal.contains("behind on writing"), "{refusal}");
    assert!(acknowledged <= 2_000, "{acknowledged} acknowledged");
    let failing = poll(Duration::from_secs(30), || async {
        let (status, why) = readyz(&redline).await;
        (status == 503 && why.contains("store cannot write")).then_some(why)
    })
    .await;
    assert!(
        failing.is_some_and(|why| why.contains("disk")),
        "readiness names the full disk"
    );
    // Queries still see everything acknowledged, from memory.
    assert_eq!(requests_of(&redline, "disk", "/d").await, acknowledged);

    std::fs::remove_file(filler).unwrap();
    let ready = poll(Duration::from_secs(30), || async {
        (readyz(&redline).await.0 == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready again once the disk has room");
    assert_eq!(
        post(&client, redline.http, &heavy_request("disk", "/d", 100))
            .await
            .0,
        200
    );
    acknowledged += 100;
    redline.stop().await;

    // Everything acknowledged is on disk.
    let restarted = TestRedline::start_in(layer).await;
    assert_eq!(requests_of(&restarted, "disk", "/d").await, acknowledged);
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_stops_acknowledging_after_the_write_lag() {
    let temp = tempfile::tempdir().unwrap();
    let layer = port_zero_layer(temp.path());
    let redline = TestRedline::start_in(layer.clone()).await;
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, redline.http, &export_request("locked", "/l", 10))
            .await
            .0,
        200
    );
    let mut acknowledged = 10u64;
    // Another process takes the write lock: the writer's commits now wait on it.
    let mut other = rusqlite::Connection::open(temp.path().join("redline.db")).unwrap();
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let locked_at = Instant::now();
    let mut last_acknowledged_after = Duration::ZERO;
    let mut refusal = None;
    while locked_at.elapsed() < Duration::from_secs(12) {
        let (status, text) = post(&client, redline.http, &export_request("locked", "/l", 10)).await;
        match status {
            200 => {
                acknowledged += 10;
                last_acknowledged_after = locked_at.elapsed();
            }
            503 => {
                refusal = Some(text);
                break;
            }
            other => panic!("unexpected status {other}: {text}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refusal = refusal.expect("refused while nothing can be stored");
    assert!(refusal.contains("nothing was stored for"), "{refusal}");
    // The write lag allowed is 5 s; with a flush interval of 1 s and room for a slow client.
    assert!(
        last_acknowledged_after < Duration::from_secs(9),
        "acknowledged {last_acknowledged_after:?} after the lock"
    );
    let (status, why) = readyz(&redline).await;
    assert_eq!(status, 503);
    assert!(why.contains("store cannot write"), "{why}");

    drop(lock);
    drop(other);
    let recovered = poll(Duration::from_secs(30), || async {
        (readyz(&redline).await.0 == 200).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "ready again once the lock is released");
    redline.stop().await;
    let restarted = TestRedline::start_in(layer).await;
    assert_eq!(requests_of(&restarted, "locked", "/l").await, acknowledged);
    restarted.stop().await;
}

/// Reads the OTLP/HTTP address redline prints at start-up.
fn http_address(stdout: std::process::ChildStdout) -> std::net::SocketAddr {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("redline prints its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("redline: OTLP/HTTP listening on http://") {
            return rest.parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_store_cannot_write_loses_at_most_the_unwritten_bound() {
    let temp = tempfile::tempdir().unwrap();
    // Create the database, then lock it from here before redline starts writing to it.
    TestRedline::start_in(port_zero_layer(temp.path()))
        .await
        .stop()
        .await;
    let mut other = rusqlite::Connection::open(temp.path().join("redline.db")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redline"))
        .args(["serve", "--otlp-grpc-addr", "127.0.0.1:0"])
        .args([
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--web-addr",
            "127.0.0.1:0",
        ])
        .args(["--flush-interval", "200ms", "--max-unflushed-items", "1000"])
        .arg("--data-dir")
        .arg(temp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redline binary starts");
    let http = http_address(child.stdout.take().unwrap());
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let client = reqwest::Client::new();
    let mut acknowledged = 0;
    for _ in 0..10 {
        if post(&client, http, &export_request("crashy", "/k", 250))
            .await
            .0
            == 200
        {
            acknowledged += 250;
        }
    }
    assert_eq!(
        acknowledged, 1000,
        "acknowledged up to the bound, then refused"
    );
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    drop(lock);
    drop(other);

    // What was lost is what was acknowledged and not written: at most the bound.
    let restarted = TestRedline::start_in(port_zero_layer(temp.path())).await;
    let stored = requests_of(&restarted, "crashy", "/k").await;
    assert!(stored <= acknowledged, "{stored} stored");
    assert!(acknowledged - stored <= 1000);
    restarted.stop().await;
}
