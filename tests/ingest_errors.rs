//! Every error path of the receivers and the API answers as specified, and the server keeps
//! serving afterwards.

use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use redline::ingest::http::RpcStatus;

use crate::helpers::{TestRedline, endpoint, export_request, poll};

async fn post(
    redline: &TestRedline,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    redline
        .client()
        .post(format!("http://{}{}", redline.http, path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The receiver still accepts a good export and its data shows up.
async fn still_serves(redline: &TestRedline, service: &str) {
    let response = post(
        redline,
        "/v1/traces",
        "application/x-protobuf",
        export_request(service, "/alive", 3).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    redline
        .wait_for(
            &format!("/api/v1/endpoints?service={service}&since=5m"),
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/alive").is_some_and(|e| e["requests"] == 3),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bodies_get_400_with_a_status_in_the_request_encoding() {
    let redline = TestRedline::start().await;
    let response = post(
        &redline,
        "/v1/traces",
        "application/x-protobuf",
        vec![0xff, 0xff, 0xff, 0x0f],
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status =
        RpcStatus::decode(response.bytes().await.unwrap()).expect("google.rpc.Status body");
    assert_eq!(status.code, 3);
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let response = post(
        &redline,
        "/v1/metrics",
        "application/json",
        b"{\"resourceMetrics\": [".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("JSON"));
    still_serves(&redline, "after-400").await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_and_encoding_get_415() {
    let redline = TestRedline::start().await;
    let response = post(&redline, "/v1/traces", "text/plain", b"hello".to_vec()).await;
    assert_eq!(response.status(), 415);
    let response = redline
        .client()
        .post(format!("http://{}/v1/traces", redline.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "br")
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    still_serves(&redline, "after-415").await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_gzip_bombs_get_413() {
    let redline = TestRedline::start_with(|s| s.max_body_bytes = Some(64 * 1024)).await;
    let big = export_request("big", "/x", 2000).encode_to_vec();
    assert!(big.len() > 64 * 1024);
    let response = post(&redline, "/v1/traces", "application/x-protobuf", big).await;
    assert_eq!(response.status(), 413);

    // 50 MB of zeros compresses to about 50 KB: under the limit on the wire, far over it inflated.
    let bomb = gzip(&vec![0u8; 50 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let response = redline
        .client()
        .post(format!("http://{}/v1/traces", redline.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A legitimate gzip body is accepted.
    let small = gzip(&export_request("gzipped", "/gz", 5).encode_to_vec());
    let response = redline
        .client()
        .post(format!("http://{}/v1/traces", redline.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    still_serves(&redline, "after-413").await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_accepts_gzip_refuses_oversized_messages_and_takes_logs() {
    let redline = TestRedline::start_with(|s| s.max_body_bytes = Some(64 * 1024)).await;
    let endpoint_url = format!("http://{}", redline.grpc);
    let mut client = TraceServiceClient::connect(endpoint_url.clone())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let response = client
        .export(export_request("grpc-gz", "/g", 10))
        .await
        .expect("gzip export");
    assert!(response.into_inner().partial_success.is_none());

    let mut plain = TraceServiceClient::connect(endpoint_url.clone())
        .await
        .unwrap();
    let error = plain
        .export(export_request("grpc-big", "/g", 2000))
        .await
        .expect_err("oversized message refused");
    // Not OUT_OF_RANGE, which OTLP clients retry; no RetryInfo either.
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
    assert!(error.details().is_empty(), "no RetryInfo: {error:?}");

    // A compressed bomb is measured after decompression too.
    let mut zipped = TraceServiceClient::connect(endpoint_url.clone())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let error = zipped
        .export(export_request("grpc-bomb", "/g", 5000))
        .await
        .expect_err("inflated size is limited");
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");

    let mut logs = LogsServiceClient::connect(endpoint_url).await.unwrap();
    let answer = logs
        .export(ExportLogsServiceRequest::default())
        .await
        .expect("an empty logs export is accepted");
    assert!(answer.into_inner().partial_success.is_none());

    redline
        .wait_for(
            "/api/v1/endpoints?service=grpc-gz&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/g").is_some_and(|e| e["requests"] == 10),
        )
        .await;
    redline.stop().await;
}

/// Sends `message` as one gRPC frame to `path` and returns the answer's `grpc-status`.
async fn grpc_status_for(redline: &TestRedline, path: &str, message: &[u8]) -> String {
    let code = crate::helpers::grpc_status(redline.grpc, path, message, false).await;
    code.expect("gRPC answer").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refuses_malformed_exports_with_invalid_argument() {
    let redline = TestRedline::start().await;
    let export = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let valid = export_request("grpc-raw", "/ok", 4).encode_to_vec();
    assert_eq!(grpc_status_for(&redline, export, &valid).await, "0");
    // Field 1 (resource_spans) as a varint, then a truncated message.
    assert_eq!(grpc_status_for(&redline, export, &[0x08, 0x01]).await, "3");
    assert_eq!(
        grpc_status_for(&redline, export, &valid[..valid.len() - 2]).await,
        "3"
    );
    // The metrics service answers a message that does not decode the same way.
    let metrics = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    assert_eq!(
        grpc_status_for(&redline, metrics, &[0x0a, 0x05, 0x01]).await,
        "3"
    );
    // An unknown method of the trace service.
    let unknown = "/opentelemetry.proto.collector.trace.v1.TraceService/Nope";
    assert_eq!(grpc_status_for(&redline, unknown, &valid).await, "12");
    redline
        .wait_for(
            "/api/v1/endpoints?service=grpc-raw&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/ok").is_some_and(|e| e["requests"] == 4),
        )
        .await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_invalid_batches_are_accepted_with_partial_success() {
    let redline = TestRedline::start().await;
    let mut request = export_request("partial", "/p", 4);
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![0; 16];
    request.resource_spans[0].scope_spans[0].spans[2].span_id = vec![];
    let response = post(
        &redline,
        "/v1/traces",
        "application/x-protobuf",
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            response.bytes().await.unwrap(),
        )
        .unwrap();
    let partial = body.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("trace_id"),
        "{}",
        partial.error_message
    );
    redline
        .wait_for(
            "/api/v1/endpoints?service=partial&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/p").is_some_and(|e| e["requests"] == 2),
        )
        .await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_503_with_retry_after_and_the_server_recovers() {
    let redline = TestRedline::start_with(|s| s.queue_capacity = Some(500)).await;
    let body = export_request("flood", "/f", 500).encode_to_vec();
    let url = format!("http://{}/v1/traces", redline.http);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = redline.client().clone();
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = (0u32, 0u32, None);
            for _ in 0..40 {
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => seen.0 += 1,
                    503 => {
                        seen.1 += 1;
                        seen.2 = response
                            .headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap().to_string());
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            seen
        }));
    }
    let (mut accepted, mut throttled, mut retry_after) = (0, 0, None);
    for task in tasks {
        let (a, t, r) = task.await.unwrap();
        accepted += a;
        throttled += t;
        retry_after = retry_after.or(r);
    }
    assert!(
        throttled > 0,
        "a queue of 500 spans must throttle 320 concurrent 500-span batches"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Everything acknowledged is counted, nothing more.
    redline
        .wait_for(
            "/api/v1/endpoints?service=flood&since=5m",
            Duration::from_secs(10),
            |b| endpoint(b, "GET", "/f").is_some_and(|e| e["requests"] == accepted as u64 * 500),
        )
        .await;
    let metrics = redline.metrics_text().await;
    assert!(
        metrics.contains("redline_spans_rejected_total{reason=\"overload\"}"),
        "{metrics}"
    );
    still_serves(&redline, "after-503").await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_browser_origins_export() {
    let redline = TestRedline::start_with(|s| {
        s.cors_allowed_origins = Some(vec!["http://app.example".into()])
    })
    .await;
    let preflight = redline
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/v1/traces", redline.http),
        )
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let other = redline
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/v1/traces", redline.http),
        )
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_get_400_naming_the_parameter() {
    let redline = TestRedline::start().await;
    for (path, parameter) in [
        ("/api/v1/endpoints?service=a&colour=red", "colour"),
        ("/api/v1/endpoints", "service"),
        ("/api/v1/endpoints?service=a&since=yesterday", "since"),
        ("/api/v1/series?service=a&stat=p42", "stat"),
        ("/api/v1/series?service=a&stat=p99&step=-1s", "step"),
        ("/api/v1/traces?limit=0", "limit"),
        ("/api/v1/traces?error=maybe", "error"),
        ("/api/v1/services?from=10&to=5", "to"),
        ("/api/v1/metrics/query?service=a&name=m&agg=median", "agg"),
        ("/api/v1/traces/not-a-trace-id", "trace_id"),
        // Times from 1970 to the end of 9999 only: beyond, range arithmetic would overflow.
        ("/api/v1/services?from=0&to=253402300800000", "to"),
        ("/api/v1/series?service=a&stat=p99&to=-1", "to"),
    ] {
        let (status, body) = redline.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
        assert!(body["error"].is_string());
    }
    // A `since` longer than time since 1970 starts in 1970.
    let body = redline
        .get_ok("/api/v1/endpoints?service=a&since=1000000000y")
        .await;
    assert_eq!(body["from"], 0, "{body}");
    // Pages: a custom range outside 1970..9999 is a 400 page, not a chart of 10^15 ticks.
    for path in [
        "/?from=-6144843281301380840",
        "/?from=0&to=9223372036854775807",
        "/services/a?from=99999-01-01T00:00",
    ] {
        let response = redline
            .client()
            .get(redline.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
    }
    let found = poll(Duration::from_secs(2), || async {
        let (status, _) = redline.get("/healthz").await;
        (status == 200).then_some(())
    })
    .await;
    assert!(found.is_some());
    redline.stop().await;
}
