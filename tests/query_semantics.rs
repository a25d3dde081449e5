//! What the query layer promises: fresh data is visible at once, rollups agree with the finest
//! windows, and a flood of distinct routes overflows instead of growing.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::helpers::{TestRedline, endpoint, export_request};

async fn post_protobuf(redline: &TestRedline, request: ExportTraceServiceRequest) {
    assert_eq!(redline.export(&request).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_data_is_queryable_before_any_flush() {
    // No flush for an hour: only the unflushed view can answer.
    let redline = TestRedline::start_with(|s| s.flush_interval = Some("1h".into())).await;
    post_protobuf(&redline, export_request("fresh", "/now", 7)).await;
    let body = redline
        .wait_for(
            "/api/v1/endpoints?service=fresh&since=5m",
            // Generous for a loaded machine: the hour-long flush interval is what proves
            // the answer came from data not yet flushed.
            Duration::from_secs(10),
            |b| endpoint(b, "GET", "/now").is_some_and(|e| e["requests"] == 7),
        )
        .await;
    assert_eq!(endpoint(&body, "GET", "/now").unwrap()["status"]["2xx"], 0);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_traces_are_listed_before_any_flush() {
    let redline = TestRedline::start_with(|s| s.flush_interval = Some("1h".into())).await;
    post_protobuf(&redline, export_request("fresh-traces", "/t", 3)).await;
    let body = redline
        .wait_for(
            "/api/v1/traces?service=fresh-traces&since=5m",
            // Generous for a loaded machine: the hour-long flush interval is what proves
            // the answer came from data not yet flushed.
            Duration::from_secs(10),
            |b| b["traces"].as_array().is_some_and(|t| t.len() == 3),
        )
        .await;
    let trace = &body["traces"][0];
    assert_eq!(trace["route"], "/t");
    assert_eq!(trace["span_count"], 1);
    assert!((trace["duration_ms"].as_f64().unwrap() - 10.0).abs() < 1e-6);
    let none = redline
        .get_ok("/api/v1/traces?service=fresh-traces&since=5m&error=true")
        .await;
    assert_eq!(
        none["traces"].as_array().unwrap().len(),
        0,
        "filters apply to unflushed traces"
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_agree_with_the_finest_windows() {
    let redline = TestRedline::start_with(|s| s.flush_interval = Some("100ms".into())).await;
    for _ in 0..5 {
        post_protobuf(&redline, export_request("rolled", "/r", 40)).await;
    }
    let fine = redline
        .wait_for(
            "/api/v1/endpoints?service=rolled&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/r").is_some_and(|e| e["requests"] == 200),
        )
        .await;
    // A week-long range is answered from the 1 h table; a 10 s step from the 10 s table.
    let coarse = redline
        .get_ok("/api/v1/endpoints?service=rolled&since=7d")
        .await;
    let fine_endpoint = endpoint(&fine, "GET", "/r").unwrap();
    let coarse_endpoint = endpoint(&coarse, "GET", "/r").unwrap();
    assert_eq!(coarse_endpoint["requests"], 200);
    assert_eq!(coarse_endpoint["latency_ms"], fine_endpoint["latency_ms"]);
    let series = redline
        .get_ok(
            "/api/v1/series?service=rolled&method=GET&route=/r&stat=requests&step=10s&since=10m",
        )
        .await;
    let total: f64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .sum();
    assert_eq!(total, 200.0);
    let hourly = redline
        .get_ok("/api/v1/series?service=rolled&stat=requests&step=1h&since=7d")
        .await;
    let total: f64 = hourly["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .sum();
    assert_eq!(total, 200.0);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_routes_overflows_and_is_counted() {
    let redline = TestRedline::start_with(|s| s.max_endpoints_per_service = Some(50)).await;
    let mut batch = export_request("floody", "/seed", 1);
    let template = batch.resource_spans[0].scope_spans[0].spans[0].clone();
    batch.resource_spans[0].scope_spans[0].spans = (0..500u64)
        .map(|i| {
            let mut span = template.clone();
            span.span_id = (i + 1).to_be_bytes().to_vec();
            span.attributes[1] = crate::helpers::string("http.route", &format!("/r/{i}x"));
            span
        })
        .collect();
    post_protobuf(&redline, batch).await;
    let body = redline
        .wait_for(
            "/api/v1/endpoints?service=floody&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "__overflow__", "__overflow__").is_some_and(|e| e["requests"] == 450),
        )
        .await;
    assert_eq!(body["endpoints"].as_array().unwrap().len(), 51);
    let metrics = redline.metrics_text().await;
    let overflow = crate::helpers::poll(Duration::from_secs(5), || async {
        let text = redline.metrics_text().await;
        text.lines()
            .any(|l| l == "redline_overflow_total{kind=\"endpoints\"} 450")
            .then_some(())
    })
    .await;
    assert!(overflow.is_some(), "{metrics}");
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_metrics_and_health_endpoints_answer() {
    let redline = TestRedline::start().await;
    post_protobuf(&redline, export_request("health", "/h", 3)).await;
    let text = crate::helpers::poll(Duration::from_secs(5), || async {
        let text = redline.metrics_text().await;
        text.contains("redline_database_size_bytes").then_some(text)
    })
    .await
    .expect("database size reported");
    for name in [
        "redline_spans_accepted_total",
        "redline_ingest_queue_items",
        "redline_ingest_queue_capacity",
        "redline_series{kind=\"endpoints\"}",
        "redline_store_write_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let ready = redline
        .client()
        .get(redline.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    redline.stop().await;
}
