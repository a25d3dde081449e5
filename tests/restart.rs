//! History survives restarts: a graceful stop loses nothing that was acknowledged, and a
//! `kill -9` loses at most the last flush interval and never corrupts the database.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use prost::Message;

use crate::helpers::{TestRedline, endpoint, export_request, poll, port_zero_layer};

async fn post_spans(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
    service: &str,
    count: usize,
) -> u16 {
    client
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(export_request(service, "/orders", count).encode_to_vec())
        .send()
        .await
        .expect("export")
        .status()
        .as_u16()
}

fn requests_of(body: &serde_json::Value) -> u64 {
    endpoint(body, "GET", "/orders").map_or(0, |e| e["requests"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_loses_nothing_acknowledged() {
    let temp = tempfile::tempdir().unwrap();
    // A long flush interval: only the shutdown flush can have stored these.
    let mut layer = port_zero_layer(temp.path());
    layer.flush_interval = Some("1h".into());
    let redline = TestRedline::start_in(layer.clone()).await;
    let client = reqwest::Client::new();
    let mut acknowledged = 0;
    for _ in 0..20 {
        if post_spans(&client, redline.http, "durable", 50).await == 200 {
            acknowledged += 50;
        }
    }
    assert_eq!(acknowledged, 1000);
    redline.stop().await;

    let restarted = TestRedline::start_in(layer).await;
    let body = restarted
        .get_ok("/api/v1/endpoints?service=durable&since=1h")
        .await;
    assert_eq!(requests_of(&body), acknowledged);
    // And the history keeps growing after the restart.
    assert_eq!(
        post_spans(&client, restarted.http, "durable", 10).await,
        200
    );
    restarted
        .wait_for(
            "/api/v1/endpoints?service=durable&since=1h",
            Duration::from_secs(5),
            |b| requests_of(b) == acknowledged + 10,
        )
        .await;
    restarted.stop().await;
}

/// Reads the addresses redline prints at start-up.
fn read_http_address(stdout: std::process::ChildStdout) -> String {
    let mut lines = BufReader::new(stdout).lines();
    let mut http = None;
    while http.is_none() {
        let line = lines.next().expect("redline prints its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("redline: OTLP/HTTP listening on ") {
            http = Some(rest.trim_start_matches("http://").to_string());
        }
    }
    http.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_flush_and_never_corrupts() {
    let temp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_redline"))
        .args([
            "serve",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--web-addr",
            "127.0.0.1:0",
            "--flush-interval",
            "200ms",
            "--data-dir",
        ])
        .arg(temp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redline binary starts");
    let http = read_http_address(child.stdout.take().unwrap());
    let client = reqwest::Client::new();
    let http: std::net::SocketAddr = http.parse().unwrap();
    for _ in 0..10 {
        assert_eq!(post_spans(&client, http, "crashy", 100).await, 200);
    }
    // Every acknowledged export older than one flush interval is on disk: watch the file.
    let db_path = temp.path().join("redline.db");
    let on_disk = poll(Duration::from_secs(10), || async {
        let db = rusqlite::Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let stored: i64 = db
            .query_row("SELECT coalesce(sum(requests), 0) FROM red_1h", [], |r| {
                r.get(0)
            })
            .ok()?;
        (stored == 1000).then_some(())
    })
    .await;
    assert!(
        on_disk.is_some(),
        "acknowledged spans were not flushed within the interval"
    );
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let db = rusqlite::Connection::open(temp.path().join("redline.db")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(db);

    let restarted = TestRedline::start_in(port_zero_layer(temp.path())).await;
    let body = restarted
        .get_ok("/api/v1/endpoints?service=crashy&since=1h")
        .await;
    assert_eq!(requests_of(&body), 1000);
    restarted.stop().await;
}

/// Clients that never finish their requests (a body that stops half-way, headers that never
/// end) cannot hold a stop up: each stage is given a deadline, and what was acknowledged is
/// still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_not_held_up_by_clients_that_never_finish() {
    use tokio::io::AsyncWriteExt;
    let redline = TestRedline::start().await;
    let data_dir = redline.data_dir.clone();
    let request = export_request("before-stop", "/kept", 25);
    assert_eq!(redline.export(&request).await, 200);

    let mut stalled_body = tokio::net::TcpStream::connect(redline.http).await.unwrap();
    stalled_body
        .write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\n\
              content-length: 100000\r\n\r\n\x0a\x05",
        )
        .await
        .unwrap();
    let mut stalled_page = tokio::net::TcpStream::connect(redline.web).await.unwrap();
    stalled_page
        .write_all(b"GET /api/v1/services HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The receiver has the stalled request in hand before the stop begins.
    let reading = poll(Duration::from_secs(5), || async {
        let metrics = redline.metrics_text().await;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("redline_memory_used_bytes{part=\"request_bodies\"}")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    assert!(reading.is_some(), "the stalled body is being read");

    let started = std::time::Instant::now();
    let temp = redline.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the stop took {took:?}");
    drop((stalled_body, stalled_page));

    let restarted = TestRedline::start_in(port_zero_layer(&data_dir)).await;
    restarted
        .wait_for(
            "/api/v1/endpoints?service=before-stop&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/kept").is_some_and(|e| e["requests"] == 25),
        )
        .await;
    restarted.stop().await;
    drop(temp);
}
