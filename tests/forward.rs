//! OTLP forwarding end to end: redline A forwarding to a second real redline B over gRPC and
//! over OTLP/HTTP protobuf (counts on B equal counts on A, JSON arrives as protobuf), an
//! upstream that is down and comes back (nothing lost up to the queue bound; drops beyond it
//! counted on /metrics and shown on the overview), the `forward_signals` filter, retries (503
//! with Retry-After, then 200) and refusals for good (400), and authentication (a request
//! refused for its API key is not forwarded).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::helpers::{
    ExportVia, TestRedline, Transport, export_request, grpc_status, now_ns, poll,
    requests_of_service, sample, sdk_export, string,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![string("service.name", service)],
        ..Default::default()
    })
}

/// `count` gauge points of `forward.level` from `service`.
fn metrics_request(service: &str, count: usize) -> ExportMetricsServiceRequest {
    let now = now_ns();
    let data_points = (0..count)
        .map(|i| NumberDataPoint {
            time_unix_nano: now - i as u64 * 1_000,
            value: Some(number_data_point::Value::AsDouble(i as f64)),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(service),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "forward.level".into(),
                    data: Some(metric::Data::Gauge(Gauge { data_points })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `count` INFO log records from `service`.
fn logs_request(service: &str, count: usize) -> ExportLogsServiceRequest {
    let now = now_ns();
    let log_records = (0..count)
        .map(|i| LogRecord {
            time_unix_nano: now,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("record {i}"))),
            }),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(service),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs `body` to `/v1/{signal}` of `redline`; the status.
async fn post(redline: &TestRedline, signal: &str, content_type: &str, body: Vec<u8>) -> u16 {
    redline
        .client()
        .post(format!("http://{}/v1/{signal}", redline.http))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("export")
        .status()
        .as_u16()
}

/// The sum over the last 5 minutes of `/api/v1/metrics/query` for `name` of `service`.
async fn metric_total(redline: &TestRedline, service: &str, name: &str, agg: &str) -> u64 {
    let body = redline
        .get_ok(&format!(
            "/api/v1/metrics/query?service={service}&name={name}&agg={agg}&since=5m&step=5m"
        ))
        .await;
    body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[1].as_f64())
        .sum::<f64>() as u64
}

/// Spans (SERVER requests), data points and log records `redline` holds of `service`.
async fn counts(redline: &TestRedline, service: &str) -> (u64, u64, u64) {
    (
        requests_of_service(redline, service).await,
        metric_total(redline, service, "forward.level", "count").await,
        metric_total(redline, service, "redline.log.records", "sum").await,
    )
}

/// Polls until `redline` holds `expected` of `service`; the last counts otherwise.
async fn wait_for_counts(
    redline: &TestRedline,
    service: &str,
    expected: (u64, u64, u64),
) -> (u64, u64, u64) {
    let reached = poll(DEADLINE, || async {
        (counts(redline, service).await == expected).then_some(())
    })
    .await;
    match reached {
        Some(()) => expected,
        None => counts(redline, service).await,
    }
}

async fn forwarding(
    endpoint: String,
    protocol: &str,
    tweak: impl FnOnce(&mut redline::config::SettingsLayer),
) -> TestRedline {
    let protocol = protocol.to_string();
    TestRedline::start_with(move |layer| {
        layer.forward_otlp_endpoint = Some(endpoint);
        layer.forward_otlp_protocol = Some(protocol);
        tweak(layer);
    })
    .await
}

/// Sends a known load of every signal to `a` through real exporters and real HTTP: spans by
/// the SDK over gRPC and HTTP and as OTLP/JSON, points over HTTP protobuf, JSON and gRPC
/// (gzip), log records over HTTP protobuf and JSON. What `a` must count.
async fn send_load(a: &TestRedline, service: &str) -> (u64, u64, u64) {
    sdk_export(
        Transport::Grpc,
        a.grpc,
        ExportVia::default(),
        service,
        "/grpc",
        40,
    )
    .await
    .expect("spans over gRPC");
    sdk_export(
        Transport::Http,
        a.http,
        ExportVia::default(),
        service,
        "/http",
        30,
    )
    .await
    .expect("spans over HTTP");
    let json = serde_json::to_vec(&export_request(service, "/json", 7)).unwrap();
    assert_eq!(post(a, "traces", "application/json", json).await, 200);

    let protobuf = metrics_request(service, 50).encode_to_vec();
    assert_eq!(
        post(a, "metrics", "application/x-protobuf", protobuf).await,
        200
    );
    let json = serde_json::to_vec(&metrics_request(service, 11)).unwrap();
    assert_eq!(post(a, "metrics", "application/json", json).await, 200);
    let path = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    let grpc = metrics_request(service, 13).encode_to_vec();
    assert_eq!(grpc_status(a.grpc, path, &grpc, true).await, Ok(0));

    let protobuf = logs_request(service, 20).encode_to_vec();
    assert_eq!(
        post(a, "logs", "application/x-protobuf", protobuf).await,
        200
    );
    let json = serde_json::to_vec(&logs_request(service, 9)).unwrap();
    assert_eq!(post(a, "logs", "application/json", json).await, 200);
    (40 + 30 + 7, 50 + 11 + 13, 20 + 9)
}

async fn forwards_everything_to_another_redline(protocol: &str, service: &str) {
    let b = TestRedline::start().await;
    let endpoint = match protocol {
        "grpc" => format!("http://{}", b.grpc),
        _ => format!("http://{}", b.http),
    };
    let a = forwarding(endpoint, protocol, |_| {}).await;
    let expected = send_load(&a, service).await;
    assert_eq!(
        wait_for_counts(&a, service, expected).await,
        expected,
        "on A"
    );
    assert_eq!(
        wait_for_counts(&b, service, expected).await,
        expected,
        "on B"
    );
    // The JSON spans arrived as such.
    let routes = b
        .get_ok(&format!("/api/v1/endpoints?service={service}&since=1h"))
        .await;
    assert!(
        crate::helpers::endpoint(&routes, "GET", "/json").is_some(),
        "{routes}"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redline_forwards_traces_metrics_and_logs_to_another_over_grpc() {
    forwards_everything_to_another_redline("grpc", "fwd-grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redline_forwards_traces_metrics_and_logs_to_another_over_http_protobuf() {
    forwards_everything_to_another_redline("http/protobuf", "fwd-http").await;
}

/// A port nothing listens on (just freed).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The value of the `/metrics` series named `name` whose labels include every one of
/// `labels` (`key="value"`), 0 when absent.
fn labelled(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_while_the_upstream_is_down_arrives_once_it_is_back() {
    let upstream = free_port();
    let a = forwarding(format!("http://{upstream}"), "grpc", |_| {}).await;
    let service = "fwd-outage";
    for batch in 0..5 {
        let request = export_request(service, &format!("/r{batch}"), 20);
        assert_eq!(a.export(&request).await, 200);
    }
    let logs = logs_request(service, 15).encode_to_vec();
    assert_eq!(post(&a, "logs", "application/x-protobuf", logs).await, 200);
    // The upstream is tried (and retried) meanwhile.
    let retries = poll(DEADLINE, || async {
        let metrics = a.metrics_text().await;
        let upstream_label = format!("upstream=\"http://{upstream}\"");
        (labelled(
            &metrics,
            "redline_forward_retries_total",
            &[&upstream_label],
        ) > 0.0)
            .then_some(())
    })
    .await;
    assert!(
        retries.is_some(),
        "forwarding retried while the upstream was down"
    );
    let b = TestRedline::start_with(|layer| {
        layer.otlp_grpc_addr = Some(upstream.to_string());
    })
    .await;
    let expected = (100, 0, 15);
    assert_eq!(wait_for_counts(&b, service, expected).await, expected);
    let metrics = a.metrics_text().await;
    let upstream_label = format!("upstream=\"http://{upstream}\"");
    assert_eq!(
        labelled(
            &metrics,
            "redline_forward_items_dropped_total",
            &[&upstream_label]
        ),
        0.0,
        "nothing dropped"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_a_tiny_queue_requests_are_dropped_counted_and_shown() {
    let upstream = free_port();
    let request = export_request("fwd-tiny", "/tiny", 10);
    let size = request.encoded_len();
    // One request fits; while it waits for the upstream, nothing else does.
    let a = forwarding(format!("http://{upstream}"), "grpc", |layer| {
        layer.forward_queue_max_bytes = Some(size + size / 2);
    })
    .await;
    for _ in 0..4 {
        assert_eq!(a.export(&request).await, 200, "ingest never waits");
    }
    let metrics = a.metrics_text().await;
    let upstream_label = format!("upstream=\"http://{upstream}\"");
    let dropped = labelled(
        &metrics,
        "redline_forward_items_dropped_total",
        &[
            &upstream_label,
            "signal=\"traces\"",
            "reason=\"queue_full\"",
        ],
    );
    assert_eq!(dropped, 30.0, "{metrics}");
    let queue_bytes = labelled(&metrics, "redline_forward_queue_bytes", &[&upstream_label]);
    assert!(queue_bytes <= (size + size / 2) as f64, "{queue_bytes}");
    let (status, page) = a.get_text("/").await;
    assert_eq!(status, 200);
    let panel = page
        .split("id=\"forwarding\"")
        .nth(1)
        .expect("the health panel shows forwarding");
    let panel = &panel[..panel.find("</div></div>").unwrap_or(panel.len())];
    assert!(panel.contains(&format!("http://{upstream}")), "{panel}");
    assert!(panel.contains("0 sent, 30 dropped"), "{panel}");
    assert!(panel.contains("class=\"v bad\""), "{panel}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_signals_limits_what_is_forwarded() {
    let b = TestRedline::start().await;
    let a = forwarding(format!("http://{}", b.grpc), "grpc", |layer| {
        layer.forward_signals = Some(vec!["traces".into()]);
    })
    .await;
    let service = "fwd-filter";
    let metrics = metrics_request(service, 12).encode_to_vec();
    assert_eq!(
        post(&a, "metrics", "application/x-protobuf", metrics).await,
        200
    );
    let logs = logs_request(service, 8).encode_to_vec();
    assert_eq!(post(&a, "logs", "application/x-protobuf", logs).await, 200);
    assert_eq!(a.export(&export_request(service, "/only", 25)).await, 200);
    assert_eq!(wait_for_counts(&a, service, (25, 12, 8)).await, (25, 12, 8));
    assert_eq!(wait_for_counts(&b, service, (25, 0, 0)).await, (25, 0, 0));
    let text = a.metrics_text().await;
    let upstream_label = format!("upstream=\"http://{}\"", b.grpc);
    for (signal, expected) in [("traces", 25.0), ("metrics", 0.0), ("logs", 0.0)] {
        let signal_label = format!("signal=\"{signal}\"");
        for name in [
            "redline_forward_items_sent_total",
            "redline_forward_items_dropped_total",
        ] {
            let value = labelled(&text, name, &[&upstream_label, &signal_label]);
            let want = if name.ends_with("sent_total") {
                expected
            } else {
                0.0
            };
            assert_eq!(value, want, "{name} {signal}");
        }
    }
    b.stop().await;
    a.stop().await;
}

/// One request an upstream received.
#[derive(Clone)]
struct Received {
    at: Instant,
    path: String,
    headers: HeaderMap,
    body: bytes::Bytes,
}

/// What a scripted upstream received, and the statuses it answers in turn.
type Script = (Arc<Mutex<Vec<Received>>>, Arc<Vec<StatusCode>>);

/// A small OTLP/HTTP upstream that records what it receives and answers the `script`'s
/// statuses in turn (with `Retry-After: 1` for a 503), then 200.
async fn scripted_upstream(script: Vec<StatusCode>) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let state = (received.clone(), Arc::new(script));
    let app = axum::Router::new()
        .fallback(
            |axum::extract::State((received, script)): axum::extract::State<Script>,
             uri: axum::http::Uri,
             headers: HeaderMap,
             body: bytes::Bytes| async move {
                let mut received = received.lock().unwrap();
                let status = script
                    .get(received.len())
                    .copied()
                    .unwrap_or(StatusCode::OK);
                received.push(Received {
                    at: Instant::now(),
                    path: uri.path().to_string(),
                    headers,
                    body,
                });
                let mut response = axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/x-protobuf");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response = response.header("retry-after", "1");
                }
                response.body(axum::body::Body::empty()).unwrap()
            },
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_retried_after_it_and_a_400_is_dropped() {
    let (upstream, received) = scripted_upstream(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let a = forwarding(
        format!("http://{upstream}/base/"),
        "http/protobuf",
        |layer| {
            layer.forward_otlp_headers = Some(vec!["x-tenant=team-a".into()]);
        },
    )
    .await;
    let request = export_request("fwd-retry", "/retry", 6);
    assert_eq!(a.export(&request).await, 200);
    let both = poll(DEADLINE, || async {
        let received = received.lock().unwrap().clone();
        (received.len() >= 2).then_some(received)
    })
    .await
    .expect("the request is sent again");
    assert_eq!(both.len(), 2);
    let waited = both[1].at - both[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    for sent in &both {
        assert_eq!(sent.path, "/base/v1/traces");
        assert_eq!(sent.body, request.encode_to_vec(), "forwarded as received");
        assert_eq!(sent.headers["x-tenant"], "team-a");
        assert_eq!(sent.headers["content-type"], "application/x-protobuf");
    }
    let upstream_label = format!("upstream=\"http://{upstream}/base\"");
    let sent = poll(DEADLINE, || async {
        let metrics = a.metrics_text().await;
        let sent = labelled(
            &metrics,
            "redline_forward_items_sent_total",
            &[&upstream_label],
        );
        (sent == 6.0).then_some(metrics)
    })
    .await
    .expect("counted as sent");
    assert_eq!(
        labelled(&sent, "redline_forward_retries_total", &[&upstream_label]),
        1.0
    );
    a.stop().await;

    let (upstream, received) =
        scripted_upstream(vec![StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST]).await;
    let a = forwarding(format!("http://{upstream}"), "http/protobuf", |_| {}).await;
    assert_eq!(
        a.export(&export_request("fwd-refused", "/no", 4)).await,
        200
    );
    let upstream_label = format!("upstream=\"http://{upstream}\"");
    let dropped = poll(DEADLINE, || async {
        let metrics = a.metrics_text().await;
        let dropped = labelled(
            &metrics,
            "redline_forward_items_dropped_total",
            &[&upstream_label, "reason=\"rejected\""],
        );
        (dropped == 4.0).then_some(())
    })
    .await;
    assert!(dropped.is_some(), "a 400 is counted as dropped");
    // Settled after one attempt: never sent again.
    assert_eq!(received.lock().unwrap().len(), 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_its_api_key_is_not_forwarded() {
    let (upstream, received) = scripted_upstream(vec![]).await;
    let key = "fwd-key-0123456789abcdef";
    let a = forwarding(format!("http://{upstream}"), "http/protobuf", |layer| {
        layer.otlp_api_keys = Some(vec![format!("team={key}")]);
    })
    .await;
    let refused = export_request("fwd-auth", "/refused", 3);
    let status = a
        .client()
        .post(format!("http://{}/v1/traces", a.http))
        .header("content-type", "application/x-protobuf")
        .header("x-otlp-api-key", "wrong-key-0123456789abcdef")
        .body(refused.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    assert_ne!(
        grpc_status(a.grpc, path, &refused.encode_to_vec(), false).await,
        Ok(0)
    );
    let accepted = export_request("fwd-auth", "/accepted", 5);
    let status = a
        .client()
        .post(format!("http://{}/v1/traces", a.http))
        .header("content-type", "application/x-protobuf")
        .header("x-otlp-api-key", key)
        .body(accepted.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let first = poll(DEADLINE, || async {
        received.lock().unwrap().first().cloned()
    })
    .await
    .expect("the accepted request is forwarded");
    assert_eq!(first.body, accepted.encode_to_vec());
    // The refused ones came first; only the accepted one went upstream.
    assert_eq!(received.lock().unwrap().len(), 1);
    let metrics = a.metrics_text().await;
    assert!(
        sample(
            &metrics,
            "redline_export_requests_rejected_total{reason=\"wrong_api_key\"}"
        ) >= 1.0
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sends_what_waits_within_its_deadline() {
    let (upstream, received) = scripted_upstream(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let a = forwarding(format!("http://{upstream}"), "http/protobuf", |_| {}).await;
    let request = export_request("fwd-stop", "/stop", 5);
    assert_eq!(a.export(&request).await, 200);
    let first = poll(DEADLINE, || async {
        (!received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert!(first.is_some(), "sent once before the stop");
    // Stopped while the request waits out its Retry-After: the stop still delivers it.
    a.stop().await;
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "sent again during the stop");
    assert_eq!(received[1].body, request.encode_to_vec());
}
