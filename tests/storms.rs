//! Storms and backlogs: trace keeping sheds first (by redline's clock, visibly), RED stays
//! exact for every acknowledged span, the memory budget and the bound on unwritten data
//! refuse with 503 instead of growing, and client clocks never drive internal state.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};
use prost::Message;

use crate::helpers::{TestRedline, endpoint, export_request, now_ns, poll, spans_export, string};

/// Server spans of `route` for `service`, one per `(trace id, end ns, error)`.
fn spans_request(
    service: &str,
    route: &str,
    spans: impl IntoIterator<Item = (u128, u64, bool)>,
) -> ExportTraceServiceRequest {
    let spans = spans
        .into_iter()
        .map(|(trace, end_ns, error)| Span {
            trace_id: trace.to_be_bytes().to_vec(),
            span_id: ((trace as u64) | 1).to_be_bytes().to_vec(),
            name: format!("GET {route}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: end_ns - 5_000_000,
            end_time_unix_nano: end_ns,
            attributes: vec![
                string("http.request.method", "GET"),
                string("http.route", route),
            ],
            status: error.then(|| Status {
                code: StatusCode::Error as i32,
                message: "boom".into(),
            }),
            ..Default::default()
        })
        .collect();
    spans_export(service, spans)
}

/// Random-looking 128-bit trace ids, as SDKs make them.
fn trace_id(n: u64) -> u128 {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (u128::from(x ^ (x >> 31)) << 64) | u128::from(n + 1)
}

/// The value of the first `/metrics` sample whose line starts with `prefix`.
fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn overview(redline: &TestRedline) -> String {
    let response = redline.client().get(redline.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The overview's "N spans kept, M dropped".
async fn trace_keeping(redline: &TestRedline) -> (u64, u64) {
    let page = overview(redline).await;
    let number = |text: &str| text.trim().replace(',', "").parse::<u64>().unwrap();
    let (before, after) = page
        .split_once(" spans kept, ")
        .expect("trace keeping shown");
    let kept = before.rsplit('>').next().unwrap();
    let dropped = after.split_once(" dropped").unwrap().0;
    (number(kept), number(dropped))
}

/// Requests of every endpoint in an `/api/v1/endpoints` answer.
fn all_requests(body: &serde_json::Value) -> u64 {
    body["endpoints"].as_array().map_or(0, |endpoints| {
        endpoints
            .iter()
            .map(|e| e["requests"].as_u64().unwrap_or(0))
            .sum()
    })
}

async fn requests_and_errors(redline: &TestRedline, service: &str, route: &str) -> (u64, u64) {
    let body = redline
        .get_ok(&format!("/api/v1/endpoints?service={service}&since=1h"))
        .await;
    endpoint(&body, "GET", route).map_or((0, 0), |e| {
        (
            e["requests"].as_u64().unwrap_or(0),
            e["errors"].as_u64().unwrap_or(0),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_storm_sheds_trace_keeping_by_arrival_and_keeps_red_exact() {
    let redline = TestRedline::start_with(|s| {
        s.trace_sample_ratio = Some(0.0);
        s.trace_slowest_per_minute = Some(0);
        s.trace_keep_spans_per_second = Some(40);
    })
    .await;
    let now = now_ns();
    let started = std::time::Instant::now();
    // 2,000 failed requests with random trace ids whose end times interleave across three
    // seconds, as batches from several SDK instances do: a budget kept per second of the spans'
    // own times would start afresh on almost every span.
    for batch in 0..20u64 {
        let spans = (0..100u64).map(|i| {
            let n = batch * 100 + i;
            (trace_id(n), now - (n % 3) * 1_000_000_000, true)
        });
        assert_eq!(
            redline.export(&spans_request("storm", "/pay", spans)).await,
            200
        );
    }
    redline
        .wait_for(
            "/api/v1/endpoints?service=storm&since=1h",
            Duration::from_secs(10),
            |b| endpoint(b, "GET", "/pay").is_some_and(|e| e["requests"] == 2000),
        )
        .await;
    // Every span was offered within these seconds of redline's clock (the first and last may
    // be partial).
    let seconds = started.elapsed().as_secs() + 2;
    assert_eq!(
        requests_and_errors(&redline, "storm", "/pay").await,
        (2000, 2000),
        "RED counts every acknowledged span"
    );
    let kept = redline
        .get_ok("/api/v1/traces?service=storm&since=1h&limit=1000")
        .await["traces"]
        .as_array()
        .map_or(0, Vec::len) as u64;
    assert!(kept > 0, "some error traces are kept");
    assert!(
        kept <= 40 * seconds,
        "{kept} traces kept in {seconds} s with a budget of 40 spans per second"
    );
    // The overview's health panel shows what was shed (this server's own figures; `/metrics`
    // is shared by every server of the test process).
    let (kept_shown, dropped_shown) = trace_keeping(&redline).await;
    assert_eq!(kept_shown, kept);
    assert_eq!(dropped_shown, 2000 - kept);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_clocks_do_not_drive_trace_keeping() {
    let redline = TestRedline::start_with(|s| {
        s.trace_sample_ratio = Some(0.0);
        s.trace_slowest_per_minute = Some(1);
    })
    .await;
    let year_2500_ns = 16_725_225_600_000_000_000u64;
    let skewed = spans_request("clock", "/future", [(trace_id(1), year_2500_ns, true)]);
    assert_eq!(redline.export(&skewed).await, 200);
    // A slow request of now is still kept as the slowest of its minute: the span from 2500 did
    // not move the sampler's minute into the future.
    let slow = spans_request("clock", "/now", [(trace_id(2), now_ns(), false)]);
    assert_eq!(redline.export(&slow).await, 200);
    let kept = redline
        .wait_for(
            "/api/v1/traces?service=clock&since=1h",
            Duration::from_secs(10),
            |b| b["traces"].as_array().is_some_and(|t| !t.is_empty()),
        )
        .await;
    let traces = kept["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 1, "{kept}");
    assert_eq!(traces[0]["route"], "/now");
    // The skewed span still counts for RED, placed at now, and its drop is counted.
    assert_eq!(
        requests_and_errors(&redline, "clock", "/future").await,
        (1, 1)
    );
    let overview = overview(&redline).await;
    assert!(
        overview.contains("1 spans outside the clock window"),
        "{overview}"
    );
    redline.stop().await;
}

/// A redline with a 1 MiB memory budget, and exports whose 300 spans each fall in a different
/// 10-second window of the last hour, each export on its own route: every window is a new
/// entry of the aggregator, which holds them until the next flush, so a few exports spend the
/// budget.
async fn small_budget() -> (TestRedline, impl Fn(u64) -> ExportTraceServiceRequest) {
    let redline = TestRedline::start_with(|s| {
        s.max_body_bytes = Some(256 * 1024);
        s.memory_limit = Some(1 << 20);
        s.flush_interval = Some("2s".into());
        // RED alone: kept traces would only slow the writer down.
        s.trace_sample_ratio = Some(0.0);
    })
    .await;
    let now = now_ns();
    let request = move |batch: u64| {
        spans_request(
            "heavy",
            &format!("/w{batch}"),
            (0..300u64).map(move |i| {
                let n = batch * 300 + i;
                (trace_id(n), now - i * 10_000_000_000, false)
            }),
        )
    };
    (redline, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_memory_budget_refuses_grpc_with_unavailable() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let (redline, request) = small_budget().await;
    let mut client = TraceServiceClient::connect(format!("http://{}", redline.grpc))
        .await
        .unwrap();
    let (mut acknowledged, mut refused) = (0u64, 0u64);
    for batch in 0..60 {
        match client.export(request(batch)).await {
            Ok(_) => acknowledged += 300,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("memory budget"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0 && acknowledged > 0, "{refused} refused");
    redline
        .wait_for(
            "/api/v1/endpoints?service=heavy&since=2h",
            Duration::from_secs(15),
            |b| all_requests(b) == acknowledged,
        )
        .await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_memory_budget_refuses_with_503_and_memory_comes_back() {
    let (redline, request) = small_budget().await;
    let (mut acknowledged, mut refused) = (0u64, 0u64);
    for batch in 0..60 {
        let response = redline
            .client()
            .post(format!("http://{}/v1/traces", redline.http))
            .header("content-type", "application/x-protobuf")
            .body(request(batch).encode_to_vec())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged += 300,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let text = response.text().await.unwrap();
                assert!(text.contains("memory budget"), "{text}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "1 MiB cannot hold 18,000 open windows");
    assert!(acknowledged > 0);
    let metrics = redline.metrics_text().await;
    // Refused before the body was read (its declared length did not fit), so counted per
    // request rather than per span.
    assert!(
        metric_value(
            &metrics,
            "redline_export_requests_rejected_total{reason=\"memory\"}"
        )
        .is_some_and(|v| v >= refused as f64),
        "{metrics}"
    );
    // Every acknowledged span is counted, none refused.
    redline
        .wait_for(
            "/api/v1/endpoints?service=heavy&since=2h",
            Duration::from_secs(15),
            |b| all_requests(b) == acknowledged,
        )
        .await;
    // Once flushed and written, the memory is given back and exports are taken again.
    let back = poll(Duration::from_secs(30), || async {
        let metrics = redline.metrics_text().await;
        let used: f64 = ["queue", "aggregator", "writer", "request_bodies"]
            .iter()
            .filter_map(|part| {
                metric_value(
                    &metrics,
                    &format!("redline_memory_used_bytes{{part=\"{part}\"}}"),
                )
            })
            .sum();
        (used < 256.0 * 1024.0).then_some(used)
    })
    .await;
    assert!(back.is_some(), "the memory budget did not come back");
    assert_eq!(
        redline.export(&export_request("heavy", "/after", 10)).await,
        200
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritten_data_is_bounded_and_a_graceful_stop_stores_all_of_it() {
    let temp = tempfile::tempdir().unwrap();
    let mut layer = crate::helpers::port_zero_layer(temp.path());
    // Nothing is written before the stop: every acknowledged span waits in memory.
    layer.flush_interval = Some("1h".into());
    layer.max_unflushed_items = Some(1000);
    let redline = TestRedline::start_in(layer.clone()).await;
    let mut acknowledged = 0;
    let mut refusal = None;
    for _ in 0..10 {
        let response = redline
            .client()
            .post(format!("http://{}/v1/traces", redline.http))
            .header("content-type", "application/x-protobuf")
            .body(export_request("bounded", "/b", 250).encode_to_vec())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged += 250,
            503 => refusal = Some(response.text().await.unwrap()),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(acknowledged, 1000, "at most 1,000 unwritten spans");
    let refusal = refusal.expect("refused beyond the bound");
    assert!(refusal.contains("behind on writing"), "{refusal}");
    let ready = redline
        .client()
        .get(redline.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("behind on writing"));
    redline.stop().await;

    let restarted = TestRedline::start_in(layer).await;
    assert_eq!(
        requests_and_errors(&restarted, "bounded", "/b").await.0,
        acknowledged
    );
    restarted.stop().await;
    drop(temp);
}
