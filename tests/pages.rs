//! The dashboard's pages rendered by the real server, over a store filled through the real
//! OTLP/HTTP ingest path: content, empty states, escaping of hostile telemetry, static assets,
//! compression, authentication and the CSRF guard.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::SpanKind, status::StatusCode,
};
use prost::Message;

use crate::helpers::{TestRedline, now_ns, poll, string};

pub const XSS_SPAN: &str = "<script>alert(1)</script>";
pub const XSS_ROUTE: &str = "/a\"><img src=x onerror=alert(1)>";
pub const XSS_SERVICE: &str = "evil</svg><script>alert(2)</script>";

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// One request of `service` as a trace: a SERVER span and a CLIENT child with an event.
pub struct Request<'a> {
    pub service: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub span_name: &'a str,
    pub duration_ms: u64,
    pub status: i64,
    pub trace: u128,
    /// How long ago the request ended, in seconds.
    pub ago_s: u64,
}

pub fn traces_request(requests: &[Request<'_>]) -> ExportTraceServiceRequest {
    let now = now_ns();
    let resource_spans = requests
        .iter()
        .map(|r| {
            let end = now - r.ago_s * 1_000_000_000;
            let start = end - r.duration_ms * 1_000_000;
            let error = r.status >= 500;
            let server = Span {
                trace_id: r.trace.to_be_bytes().to_vec(),
                span_id: ((r.trace as u64) << 8 | 1).to_be_bytes().to_vec(),
                name: r.span_name.into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes: vec![
                    string("http.request.method", r.method),
                    string("http.route", r.route),
                    int("http.response.status_code", r.status),
                    string("user.note", XSS_SPAN),
                ],
                status: error.then(|| Status {
                    code: StatusCode::Error as i32,
                    message: "boom".into(),
                }),
                ..Default::default()
            };
            let client = Span {
                trace_id: r.trace.to_be_bytes().to_vec(),
                span_id: ((r.trace as u64) << 8 | 2).to_be_bytes().to_vec(),
                parent_span_id: server.span_id.clone(),
                name: "SELECT products".into(),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: start + 1_000_000,
                end_time_unix_nano: end - 1_000_000,
                attributes: vec![string("db.system.name", "sqlite")],
                events: vec![Event {
                    time_unix_nano: start + 2_000_000,
                    name: "cache miss".into(),
                    attributes: vec![string("cache.key", "product:1")],
                    ..Default::default()
                }],
                ..Default::default()
            };
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", r.service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![server, client],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// A gauge `name` of `service` with one point per attribute value.
pub fn gauge_request(
    service: &str,
    name: &str,
    unit: &str,
    points: &[(&str, f64)],
) -> ExportMetricsServiceRequest {
    let now = now_ns();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    unit: unit.into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        // Every 5 minutes over the last hour, varying around `v`.
                        data_points: (0..12u64)
                            .flat_map(|k| {
                                points.iter().map(move |(state, v)| NumberDataPoint {
                                    attributes: vec![string("db.client.connection.state", state)],
                                    time_unix_nano: now - k * 300_000_000_000,
                                    value: Some(number_data_point::Value::AsDouble(
                                        v + (k % 4) as f64,
                                    )),
                                    ..Default::default()
                                })
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub async fn post_otlp(redline: &TestRedline, path: &str, body: Vec<u8>) {
    let response = redline
        .client()
        .post(format!("http://{}{path}", redline.http))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200, "export to {path}");
}

/// Fills a redline with a normal service (two endpoints, errors, a DB pool gauge) and the
/// hostile names; returns once the overview shows them.
pub async fn fill(redline: &TestRedline) {
    let mut requests = Vec::new();
    for i in 0..40u128 {
        requests.push(Request {
            service: "checkout",
            method: "GET",
            route: "/products/{id}",
            span_name: "GET /products/{id}",
            duration_ms: 5 + (i as u64 % 20) * 3,
            status: if i % 10 == 0 { 500 } else { 200 },
            trace: 0x1000 + i,
            // Spread over the last hour, with a quiet gap in the middle.
            ago_s: if (i / 4) % 10 == 5 {
                90
            } else {
                (i as u64 / 4) * 330 + i as u64 * 7
            },
        });
    }
    for i in 0..10u128 {
        requests.push(Request {
            service: "checkout",
            method: "POST",
            route: "/orders",
            span_name: "POST /orders",
            duration_ms: 120 + i as u64,
            status: 201,
            trace: 0x2000 + i,
            ago_s: i as u64 * 300,
        });
    }
    requests.push(Request {
        service: "checkout",
        method: "GET",
        route: XSS_ROUTE,
        span_name: XSS_SPAN,
        duration_ms: 7,
        status: 404,
        trace: 0x3000,
        ago_s: 60,
    });
    requests.push(Request {
        service: XSS_SERVICE,
        method: "GET",
        route: "/x",
        span_name: XSS_SPAN,
        duration_ms: 9,
        status: 500,
        trace: 0x4000,
        ago_s: 30,
    });
    // The example API, so the shipped golden-signals dashboard has data.
    for i in 0..30u128 {
        requests.push(Request {
            service: "example-api",
            method: "GET",
            route: "/products/{id}",
            span_name: "GET /products/{id}",
            duration_ms: 8 + (i as u64 % 7) * 9,
            status: if i % 15 == 0 { 503 } else { 200 },
            trace: 0x5000 + i,
            ago_s: i as u64 * 110,
        });
    }
    post_otlp(
        redline,
        "/v1/traces",
        traces_request(&requests).encode_to_vec(),
    )
    .await;
    post_otlp(
        redline,
        "/v1/metrics",
        gauge_request(
            "checkout",
            "db.client.connection.count",
            "{connection}",
            &[("idle", 3.0), ("used", 7.0)],
        )
        .encode_to_vec(),
    )
    .await;
    post_otlp(
        redline,
        "/v1/metrics",
        gauge_request(
            "example-api",
            "db.client.connection.count",
            "{connection}",
            &[("idle", 4.0), ("used", 2.0)],
        )
        .encode_to_vec(),
    )
    .await;
    // Traces are listed after a flush; wait until the slowest POST is findable.
    let found = poll(Duration::from_secs(10), || async {
        let (_, body) = page(redline, "/traces?service=checkout&sort=slowest").await;
        body.contains("POST /orders").then_some(())
    })
    .await;
    assert!(found.is_some(), "traces were not listed in time");
}

pub async fn page(redline: &TestRedline, path: &str) -> (u16, String) {
    let response = redline
        .client()
        .get(redline.url(path))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

pub async fn page_ok(redline: &TestRedline, path: &str) -> String {
    let (status, body) = page(redline, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    assert!(body.starts_with("<!doctype html>"), "GET {path}");
    body
}

fn dashboards_dir() -> String {
    format!("{}/dashboards", env!("CARGO_MANIFEST_DIR"))
}

pub async fn start() -> TestRedline {
    TestRedline::start_with(|s| s.dashboards_dir = Some(dashboards_dir().into())).await
}

/// No raw payload anywhere: every hostile string appears only escaped.
pub fn assert_inert(body: &str) {
    assert!(!body.contains("<script>alert"), "unescaped script");
    assert!(!body.contains("<img src=x"), "unescaped img");
    assert!(!body.contains("evil</svg>"), "unescaped </svg>");
    assert_eq!(
        body.matches("<script").count(),
        1,
        "only the dashboard's own script tag"
    );
}

#[tokio::test]
async fn an_empty_redline_explains_how_to_send_data() {
    let redline = start().await;
    let body = page_ok(&redline, "/").await;
    assert!(body.contains("No requests in this time range"));
    assert!(body.contains(&format!(
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://{}",
        redline.grpc
    )));
    assert!(body.contains(&format!("http://{}", redline.http)));
    // The health panel is there even without data.
    assert!(body.contains("id=\"health\"") && body.contains("database size"));
    let traces = page_ok(&redline, "/traces").await;
    assert!(traces.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let service = page_ok(&redline, "/services/nobody").await;
    assert!(service.contains("No requests from nobody"));
}

#[tokio::test]
async fn every_page_renders_the_ingested_data() {
    let redline = start().await;
    fill(&redline).await;

    // Overview: the service, its figures and sparklines, health, within budget.
    let overview = page_ok(&redline, "/").await;
    assert!(
        overview.contains("<a href=\"/services/checkout\">checkout</a>"),
        "{overview}"
    );
    assert!(overview.matches("class=\"rl-spark\"").count() >= 6);
    assert!(overview.contains("items/s") || overview.contains("measuring"));
    assert!(overview.len() < 150_000);
    assert_inert(&overview);

    // Service: four RED charts, the endpoints table, the DB pool resource panel.
    let service = page_ok(&redline, "/services/checkout").await;
    assert_eq!(
        service
            .matches("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"rl-chart")
            .count(),
        5,
        "4 RED charts + 1 resource panel"
    );
    for title in [
        "Request rate",
        "Error rate",
        "Latency percentiles",
        "Requests by status class",
        "DB pool connections",
    ] {
        assert!(service.contains(title), "{title}");
    }
    assert!(service.contains(">2xx</text>") && service.contains(">5xx</text>"));
    assert!(service.contains("/products/{id}") && service.contains("/orders"));
    assert!(service.contains("db.client.connection.state=used"));
    assert_inert(&service);

    // Endpoint: charts, distribution, slowest and erroring traces linking to the trace page.
    let endpoint = page_ok(
        &redline,
        "/services/checkout/endpoints?method=GET&route=%2Fproducts%2F%7Bid%7D",
    )
    .await;
    assert!(endpoint.contains("Latency distribution"));
    assert!(endpoint.contains("Slowest requests") && endpoint.contains("Erroring requests"));
    let link = endpoint
        .split("href=\"/traces/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a trace link")
        .to_string();
    assert_eq!(link.len(), 32);

    // Trace: the waterfall has both spans in order, with attributes and events.
    let trace = page_ok(&redline, &format!("/traces/{link}")).await;
    let server = trace.find("GET /products/{id}").expect("server span");
    let client = trace.find("SELECT products").expect("client span");
    assert!(server < client, "parent before child");
    assert!(trace.contains("cache miss") && trace.contains("product:1"));
    assert!(trace.contains("padding-left:14px"), "the child is indented");
    assert_inert(&trace);

    // Traces list: filtered to errors only.
    let errors = page_ok(&redline, "/traces?service=checkout&errors=1").await;
    assert!(errors.contains("chip bad"));
    assert!(!errors.contains("POST /orders"), "201s are not errors");

    // Metrics explorer: the gauge, charted per state.
    let metrics = page_ok(
        &redline,
        "/metrics-explorer?service=checkout&name=db.client.connection.count&agg=last",
    )
    .await;
    assert!(metrics.contains("db.client.connection.state=idle"));
    assert!(metrics.contains("class=\"rl-chart rl-line\""));

    // Custom dashboard: the shipped golden signals, with thresholds drawn.
    let list = page_ok(&redline, "/dashboards").await;
    assert!(list.contains("API golden signals"));
    let golden = page_ok(&redline, "/dashboards/api-golden-signals").await;
    assert!(golden.contains("Latency percentiles") && golden.contains("rl-threshold"));
    assert!(golden.contains("rl-single"));
    // Its stat panels show numbers for the example API's data, e.g. the error rate (2 of 30).
    assert!(golden.contains(">6.67%</text>"), "{golden}");
}

#[tokio::test]
async fn hostile_telemetry_renders_inert_everywhere() {
    let redline = start().await;
    fill(&redline).await;
    let evil_service = format!("/services/{}", urlencode(XSS_SERVICE));
    let evil_route = format!(
        "/services/checkout/endpoints?method=GET&route={}",
        urlencode(XSS_ROUTE)
    );
    for path in [
        "/".to_string(),
        "/services/checkout".into(),
        evil_service,
        evil_route,
        "/traces".into(),
        "/traces/00000000000000000000000000003000".into(),
        "/traces/00000000000000000000000000004000".into(),
        format!("/metrics-explorer?service={}", urlencode(XSS_SERVICE)),
    ] {
        let body = page_ok(&redline, &path).await;
        assert_inert(&body);
        let escaped = [
            "&lt;script&gt;",
            "&#60;script&#62;",
            "&lt;img src=x",
            "&#60;img src=x",
            "&lt;/svg&gt;",
            "&#60;/svg&#62;",
        ];
        assert!(
            escaped.iter().any(|e| body.contains(e)),
            "{path} shows a payload, escaped"
        );
    }
}

#[tokio::test]
async fn sorting_and_the_range_are_in_the_url() {
    let redline = start().await;
    fill(&redline).await;
    let by_p99 = page_ok(
        &redline,
        "/services/checkout?sort=p99&dir=desc&range=6h&refresh=30s",
    )
    .await;
    let orders = by_p99.find(">/orders</a>").expect("orders row");
    let products = by_p99.find(">/products/{id}</a>").expect("products row");
    assert!(orders < products, "slowest first");
    assert!(by_p99.contains("aria-sort=\"descending\""));
    // The picker keeps the sort and the refresh; the 6h preset is current.
    assert!(by_p99.contains("href=\"?dir=desc&#38;range=1h&#38;refresh=30s&#38;sort=p99\""));
    assert!(by_p99.contains("data-range=\"6h\" aria-current=\"true\""));
    assert!(by_p99.contains("<meta http-equiv=\"refresh\" content=\"30\">"));
    let ascending = page_ok(&redline, "/services/checkout?sort=p99&dir=asc").await;
    assert!(
        ascending.find(">/orders</a>").unwrap() > ascending.find(">/products/{id}</a>").unwrap()
    );
    // A custom range from datetime-local inputs.
    let custom = page_ok(&redline, "/?from=2026-01-01T00:00&to=2026-01-01T01:00").await;
    assert!(custom.contains("2026-01-01 00:00:00 UTC – 2026-01-01 01:00:00 UTC"));
}

/// A server that is neither HTTP nor RPC (a queue consumer) has endpoints with an empty
/// method; their links must still open.
#[tokio::test]
async fn endpoints_without_a_method_open_from_their_links() {
    let redline = start().await;
    let now = now_ns();
    let span = Span {
        trace_id: vec![7; 16],
        span_id: vec![7; 8],
        name: "consume orders".into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: now - 5_000_000,
        end_time_unix_nano: now,
        ..Default::default()
    };
    let export = crate::helpers::spans_export("worker", vec![span]);
    assert_eq!(redline.export(&export).await, 200);
    redline
        .wait_for(
            "/api/v1/endpoints?service=worker&since=5m",
            Duration::from_secs(10),
            |b| crate::helpers::endpoint(b, "", "consume orders").is_some(),
        )
        .await;
    let service = page_ok(&redline, "/services/worker").await;
    let link = "/services/worker/endpoints?method=&#38;route=consume%20orders";
    assert!(service.contains(link), "{service}");
    let endpoint = page_ok(&redline, &link.replace("&#38;", "&")).await;
    assert!(endpoint.contains("consume orders"));
}

#[tokio::test]
async fn bad_parameters_are_400_pages_naming_them() {
    let redline = start().await;
    let (status, body) = page(&redline, "/?range=3w").await;
    assert_eq!(status, 400);
    assert!(body.contains("range: &#34;3w&#34; is not one of"), "{body}");
    let (status, _) = page(&redline, "/services/x/endpoints?method=GET").await;
    assert_eq!(status, 400);
    let (status, body) = page(&redline, "/traces/not-a-trace").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = page(&redline, "/traces/0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, 404);
    assert!(body.contains("is not stored"));
    let (status, _) = page(&redline, "/dashboards/nope").await;
    assert_eq!(status, 404);
    let (status, _) = page(&redline, "/dashboards/..%2Fsecrets").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_invalid_dashboard_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "title = \"b\"\nservice = \"s\"\n[[panel]]\ntitle = \"x\"\nkind = \"line\"\nred = [\"p42\"]\n",
    )
    .unwrap();
    let path = dir.path().to_path_buf();
    let redline = TestRedline::start_with(|s| s.dashboards_dir = Some(path)).await;
    let list = page_ok(&redline, "/dashboards").await;
    assert!(
        list.contains("broken.toml:6:8: unknown RED statistic"),
        "{list}"
    );
    let (status, body) = page(&redline, "/dashboards/broken").await;
    assert_eq!(status, 422);
    assert!(body.contains("broken.toml:6:8"));
}

#[tokio::test]
async fn assets_are_cached_and_pages_compressed() {
    let redline = start().await;
    let overview = page_ok(&redline, "/").await;
    let css = overview
        .split("href=\"/assets/style.css")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|q| format!("/assets/style.css{q}"))
        .expect("stylesheet link");
    let response = redline
        .client()
        .get(redline.url(&css))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/css; charset=utf-8"
    );
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let etag = response.headers()["etag"].clone();
    let again = redline
        .client()
        .get(redline.url("/assets/style.css"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let gzipped = redline
        .client()
        .get(redline.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let brotli = redline
        .client()
        .get(redline.url("/"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(brotli.headers()["content-encoding"], "br");
    let csp = gzipped.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"));
    let (status, _) = page(&redline, "/assets/nope.js").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn credentials_are_required_when_configured_and_writes_need_the_same_origin() {
    let redline = TestRedline::start_with(|s| {
        s.web_auth_token = Some("s3cret".into());
        s.web_basic_auth = Some("ops:pw".into());
    })
    .await;
    let client = redline.client();
    let denied = client.get(redline.url("/")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(
        denied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let api = client
        .get(redline.url("/api/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401, "the JSON API is covered too");
    let bearer = client
        .get(redline.url("/"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let basic = client
        .get(redline.url("/"))
        .basic_auth("ops", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let wrong = client
        .get(redline.url("/"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let health = client.get(redline.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "probes stay open");

    // A cross-site POST is refused before any handler sees it; a same-origin one passes.
    let forged = client
        .post(redline.url("/"))
        .bearer_auth("s3cret")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let same = client
        .post(redline.url("/"))
        .bearer_auth("s3cret")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        same.status(),
        405,
        "reaches the router, which has no POST /"
    );
}

pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn redline_check_validates_dashboards_with_positions() {
    let binary = env!("CARGO_BIN_EXE_redline");
    let shipped = std::process::Command::new(binary)
        .args(["check", &dashboards_dir()])
        .output()
        .expect("redline check runs");
    let stdout = String::from_utf8_lossy(&shipped.stdout);
    assert!(
        shipped.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    assert!(stdout.contains("api-golden-signals.toml: ok"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let dashboards = dir.path().join("dashboards");
    std::fs::create_dir(&dashboards).unwrap();
    std::fs::write(
        dashboards.join("bad.toml"),
        "title = \"b\"\n[[panel]]\ntitle = \"x\"\nkind = \"pie\"\n",
    )
    .unwrap();
    // Without arguments: ./alerts.toml (absent here, skipped) and ./dashboards/.
    let broken = std::process::Command::new(binary)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("redline check runs");
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.toml:4:8: unknown variant `pie`"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&broken.stdout).contains("alerts.toml: not present, skipped"));
}
