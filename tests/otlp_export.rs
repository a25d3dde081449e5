//! End to end through the real `opentelemetry-otlp` exporter: spans over gRPC, HTTP/protobuf
//! and HTTP/JSON (also spans weighted by the sampling threshold in their tracestate), and the
//! `http.server.request.duration` histogram, checked against the exact values the test
//! generated.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Link, Span as _, SpanKind, Status, TraceContextExt, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use rand::SeedableRng;
use rand_distr::{Distribution, LogNormal};

use crate::helpers::{TestRedline, assert_within_one_percent, endpoint, exact_quantile};

enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

fn tracer_provider(
    redline: &TestRedline,
    transport: Transport,
    service: &str,
) -> SdkTracerProvider {
    tracer_provider_sampled_by(redline, transport, service, None)
}

/// A tracer provider exporting to `redline`, with `sampler` instead of the SDK's default.
fn tracer_provider_sampled_by(
    redline: &TestRedline,
    transport: Transport,
    service: &str,
    sampler: Option<Box<dyn ShouldSample>>,
) -> SdkTracerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", redline.grpc))
            .build(),
        Transport::HttpProtobuf | Transport::HttpJson => {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(match transport {
                    Transport::HttpJson => Protocol::HttpJson,
                    _ => Protocol::HttpBinary,
                })
                .with_endpoint(format!("http://{}/v1/traces", redline.http))
                .build()
        }
    }
    .expect("exporter builds");
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        );
    if let Some(sampler) = sampler {
        builder = builder.with_sampler(sampler);
    }
    builder.build()
}

/// The SDK's flush blocks its caller; off the async runtime it must go.
async fn flush_traces(provider: SdkTracerProvider) {
    tokio::task::spawn_blocking(move || {
        provider.force_flush().expect("spans exported");
        provider.shutdown().expect("provider shut down");
    })
    .await
    .expect("flush task");
}

/// One server request as the test generates it.
struct Request {
    route: &'static str,
    duration_us: u64,
    status: i64,
}

fn emit(provider: &SdkTracerProvider, requests: &[Request]) {
    let tracer = provider.tracer("redline-tests");
    let end = SystemTime::now();
    for request in requests {
        let start = end - Duration::from_micros(request.duration_us);
        let mut span = tracer
            .span_builder(format!("GET {}", request.route))
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", request.route),
                KeyValue::new("url.path", request.route.replace("{id}", "42")),
                KeyValue::new("http.response.status_code", request.status),
            ])
            .start(&tracer);
        if request.status >= 500 {
            span.set_status(Status::error("server error"));
        }
        span.end_with_timestamp(end);
    }
}

/// Skewed latencies: lognormal, a bimodal mix, and rare large outliers.
fn skewed_requests(count: usize, seed: u64) -> Vec<Request> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lognormal = LogNormal::new((20_000f64).ln(), 1.0).expect("distribution");
    (0..count)
        .map(|i| {
            let (route, duration_us) = match i % 3 {
                0 => ("/v1/products/{id}", lognormal.sample(&mut rng)),
                1 => (
                    "/v1/products",
                    if i % 2 == 0 {
                        2_000.0 + (i % 97) as f64
                    } else {
                        300_000.0 + (i % 89) as f64 * 100.0
                    },
                ),
                _ => (
                    "/v1/checkout",
                    if i % 50 == 0 {
                        5_000_000.0
                    } else {
                        40_000.0 + (i % 113) as f64 * 37.0
                    },
                ),
            };
            let status = match i % 20 {
                0 => 500,
                1 => 404,
                2 => 503,
                _ => 200,
            };
            Request {
                route,
                duration_us: duration_us.max(1.0) as u64,
                status,
            }
        })
        .collect()
}

/// Checks counts exactly and every percentile to 1 % against the generated requests.
fn check_endpoints(body: &serde_json::Value, requests: &[Request]) {
    check_weighted_endpoints(body, requests, |_| 1);
}

/// [`check_endpoints`] for spans that each stand for `weight(route)` requests: counts are
/// multiplied, percentiles are those of the requests each repeated that often, the maximum is
/// the observed one.
fn check_weighted_endpoints(
    body: &serde_json::Value,
    requests: &[Request],
    weight: impl Fn(&str) -> u64,
) {
    for route in ["/v1/products/{id}", "/v1/products", "/v1/checkout"] {
        let mine: Vec<&Request> = requests.iter().filter(|r| r.route == route).collect();
        let weight = weight(route);
        let reported =
            endpoint(body, "GET", route).unwrap_or_else(|| panic!("{route} missing: {body}"));
        let errors = mine.iter().filter(|r| r.status >= 500).count() as u64 * weight;
        let client_errors = mine
            .iter()
            .filter(|r| (400..500).contains(&r.status))
            .count() as u64
            * weight;
        assert_eq!(reported["requests"], mine.len() as u64 * weight, "{route}");
        assert_eq!(reported["errors"], errors, "{route}");
        assert_eq!(
            reported["status"]["4xx"], client_errors,
            "{route}: 4xx counted, not errors"
        );
        assert_eq!(reported["status"]["5xx"], errors, "{route}");
        assert_eq!(reported["estimate"], "sketch");
        let mut durations: Vec<f64> = mine
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.duration_us as f64 / 1000.0, weight as usize))
            .collect();
        durations.sort_by(f64::total_cmp);
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
            let value = reported["latency_ms"][name].as_f64().expect("percentile");
            assert_within_one_percent(
                value,
                exact_quantile(&durations, q),
                &format!("{route} {name}"),
            );
        }
        assert_eq!(
            reported["latency_ms"]["max"].as_f64(),
            durations.last().copied()
        );
        let mean = durations.iter().sum::<f64>() / durations.len() as f64;
        let reported_mean = reported["latency_ms"]["mean"].as_f64().expect("mean");
        assert!(
            (reported_mean - mean).abs() <= mean * 1e-9,
            "{route}: mean {reported_mean} vs {mean}"
        );
    }
}

async fn export_and_check(transport: Transport, service: &str, count: usize, seed: u64) {
    let redline = TestRedline::start().await;
    let requests = skewed_requests(count, seed);
    let provider = tracer_provider(&redline, transport, service);
    emit(&provider, &requests);
    flush_traces(provider).await;
    let path = format!("/api/v1/endpoints?service={service}&since=10m");
    let body = redline
        .wait_for(&path, Duration::from_secs(10), |b| {
            let total: u64 = b["endpoints"].as_array().map_or(0, |e| {
                e.iter().map(|e| e["requests"].as_u64().unwrap_or(0)).sum()
            });
            total == count as u64
        })
        .await;
    check_endpoints(&body, &requests);

    let services = redline.get_ok("/api/v1/services?since=10m").await;
    let summary = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == service))
        .expect("service listed");
    let errors = requests.iter().filter(|r| r.status >= 500).count() as f64;
    assert_eq!(summary["requests"], count as u64);
    assert!((summary["error_rate"].as_f64().unwrap() - errors / count as f64).abs() < 1e-12);
    // The service's percentiles come from the merged sketches of its endpoints.
    let mut all: Vec<f64> = requests
        .iter()
        .map(|r| r.duration_us as f64 / 1000.0)
        .collect();
    all.sort_by(f64::total_cmp);
    assert_within_one_percent(
        summary["latency_ms"]["p99"].as_f64().unwrap(),
        exact_quantile(&all, 0.99),
        "service p99",
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_grpc_give_exact_counts_and_percentiles() {
    export_and_check(Transport::Grpc, "grpc-shop", 1500, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_http_protobuf_give_exact_counts_and_percentiles() {
    export_and_check(Transport::HttpProtobuf, "http-shop", 900, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_http_json_give_exact_counts_and_percentiles() {
    export_and_check(Transport::HttpJson, "json-shop", 600, 3).await;
}

/// A consistent probability sampler as the exporter shows it: it keeps every span, and records
/// the threshold `th:c` (probability 1/4, adjusted count 4) in the tracestate of all but the
/// checkout spans, which it leaves without one, as a sampler that does not record its
/// probability would.
#[derive(Debug, Clone)]
struct QuarterThreshold;

impl ShouldSample for QuarterThreshold {
    fn should_sample(
        &self,
        _parent_context: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let trace_state = if name == "GET /v1/checkout" {
            TraceState::NONE
        } else {
            TraceState::from_str("vendor=x,ot=th:c").expect("valid tracestate")
        };
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_with_a_sampling_threshold_count_their_adjusted_count() {
    let redline = TestRedline::start().await;
    let weight = |route: &str| if route == "/v1/checkout" { 1 } else { 4 };
    // gRPC carries protobuf as is; OTLP/JSON is decoded and re-encoded before the same path.
    for (transport, service, count, seed) in [
        (Transport::Grpc, "weighted-grpc", 300, 4),
        (Transport::HttpJson, "weighted-json", 150, 5),
    ] {
        let requests = skewed_requests(count, seed);
        let provider = tracer_provider_sampled_by(
            &redline,
            transport,
            service,
            Some(Box::new(QuarterThreshold)),
        );
        emit(&provider, &requests);
        flush_traces(provider).await;
        let expected: u64 = requests.iter().map(|r| weight(r.route)).sum();
        let path = format!("/api/v1/endpoints?service={service}&since=10m");
        let body = redline
            .wait_for(&path, Duration::from_secs(10), |b| {
                let total: u64 = b["endpoints"].as_array().map_or(0, |e| {
                    e.iter().map(|e| e["requests"].as_u64().unwrap_or(0)).sum()
                });
                total == expected
            })
            .await;
        // `th:c` spans count four times each; the spans without `ot` count once.
        check_weighted_endpoints(&body, &requests, weight);
        let checkout = endpoint(&body, "GET", "/v1/checkout").expect("checkout");
        assert_eq!(
            checkout["requests"],
            requests
                .iter()
                .filter(|r| r.route == "/v1/checkout")
                .count() as u64
        );
        let services = redline.get_ok("/api/v1/services?since=10m").await;
        let summary = services
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == service))
            .expect("service listed");
        assert_eq!(summary["requests"], expected, "{service}");
        let errors: u64 = requests
            .iter()
            .filter(|r| r.status >= 500)
            .map(|r| weight(r.route))
            .sum();
        assert!(
            (summary["error_rate"].as_f64().unwrap() - errors as f64 / expected as f64).abs()
                < 1e-12
        );
    }
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_keep_the_span_tree() {
    let redline = TestRedline::start().await;
    let provider = tracer_provider(&redline, Transport::Grpc, "tree");
    let tracer = provider.tracer("redline-tests");
    let trace_id = {
        let root = tracer
            .span_builder("GET /orders/{id}")
            .with_kind(SpanKind::Server)
            .with_attributes(vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", "/orders/{id}"),
                KeyValue::new("http.response.status_code", 502),
            ])
            .start(&tracer);
        let cx = opentelemetry::Context::current_with_span(root);
        let mut child = tracer
            .span_builder("SELECT orders")
            .with_kind(SpanKind::Client)
            .with_attributes(vec![KeyValue::new("db.system", "sqlite")])
            .start_with_context(&tracer, &cx);
        child.add_event("retry", vec![KeyValue::new("attempt", 2)]);
        child.end();
        let span = cx.span();
        span.set_status(Status::error("bad gateway"));
        let id = span.span_context().trace_id().to_string();
        span.end();
        id
    };
    flush_traces(provider).await;
    let body = redline
        .wait_for(
            &format!("/api/v1/traces/{trace_id}"),
            Duration::from_secs(10),
            |b| b["spans"].as_array().is_some_and(|s| s.len() == 2),
        )
        .await;
    let spans = body["spans"].as_array().unwrap();
    let root = spans.iter().find(|s| s["kind"] == "server").expect("root");
    let child = spans.iter().find(|s| s["kind"] == "client").expect("child");
    assert_eq!(child["parent_span_id"], root["span_id"]);
    assert!(root["parent_span_id"].is_null());
    assert_eq!(root["status"], "error");
    assert_eq!(child["events"][0]["name"], "retry");
    assert_eq!(child["attributes"]["db.system"], "sqlite");

    // The list reads the store: it shows the trace after the next flush (1 s).
    let list = redline
        .wait_for(
            "/api/v1/traces?service=tree&error=true&since=10m",
            Duration::from_secs(15),
            |b| b["traces"].as_array().is_some_and(|t| !t.is_empty()),
        )
        .await;
    let listed = &list["traces"][0];
    assert_eq!(listed["trace_id"], trace_id.as_str());
    assert_eq!(listed["route"], "/orders/{id}");
    assert_eq!(listed["error"], true);
    assert_eq!(listed["reason"], "error");
    let (status, _) = redline
        .get("/api/v1/traces/0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(status, 404);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_histograms_alone_give_a_red_dashboard() {
    let redline = TestRedline::start().await;
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", redline.grpc))
        .with_temporality(Temporality::Cumulative)
        .build()
        .expect("metric exporter");
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder()
                .with_service_name("metrics-only")
                .build(),
        )
        .build();
    let histogram = provider
        .meter("redline-tests")
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
        ])
        .build();
    let ok = [
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("http.route", "/v1/items/{id}"),
        KeyValue::new("http.response.status_code", 200),
    ];
    let failed = [
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("http.route", "/v1/items/{id}"),
        KeyValue::new("http.response.status_code", 503),
    ];
    let mut values = Vec::new();
    for i in 0..200 {
        let seconds = 0.030 + (i % 40) as f64 * 0.001; // 30–69 ms
        histogram.record(seconds, if i % 10 == 0 { &failed } else { &ok });
        values.push(seconds * 1000.0);
    }
    let active = provider
        .meter("redline-tests")
        .i64_up_down_counter("http.server.active_requests")
        .build();
    active.add(3, &[KeyValue::new("http.request.method", "GET")]);
    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || {
        flushed.force_flush().expect("metrics exported");
    })
    .await
    .unwrap();

    let body = redline
        .wait_for(
            "/api/v1/endpoints?service=metrics-only&since=10m",
            Duration::from_secs(10),
            |b| endpoint(b, "GET", "/v1/items/{id}").is_some_and(|e| e["requests"] == 200),
        )
        .await;
    let reported = endpoint(&body, "GET", "/v1/items/{id}").unwrap();
    assert_eq!(reported["errors"], 20);
    assert_eq!(reported["status"]["5xx"], 20);
    assert_eq!(reported["source"], "metrics");
    assert_eq!(reported["estimate"], "explicit_buckets");
    // Interpolation inside (25, 50] ms: the estimate must stay within the bucket holding the
    // exact median (the documented bound of explicit buckets).
    values.sort_by(f64::total_cmp);
    let median = exact_quantile(&values, 0.5);
    let p50 = reported["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        median > 25.0 && median <= 50.0 && p50 > 25.0 && p50 <= 50.0,
        "p50 {p50} vs {median}"
    );
    let mean = reported["latency_ms"]["mean"].as_f64().unwrap();
    let exact_mean = values.iter().sum::<f64>() / values.len() as f64;
    assert!(
        (mean - exact_mean).abs() < 1e-6,
        "mean {mean} vs {exact_mean}"
    );

    // A second export merges into the windows already stored (a regression: histogram-only
    // windows were written in a form the next flush could not read back, and replaced).
    for i in 0..200 {
        histogram.record(0.030 + (i % 40) as f64 * 0.001, &ok);
    }
    let flushed = provider.clone();
    tokio::task::spawn_blocking(move || flushed.force_flush().expect("metrics exported"))
        .await
        .unwrap();
    redline
        .wait_for(
            "/api/v1/endpoints?service=metrics-only&since=10m",
            Duration::from_secs(10),
            |b| endpoint(b, "GET", "/v1/items/{id}").is_some_and(|e| e["requests"] == 400),
        )
        .await;
    let metrics = redline.get_ok("/api/v1/metrics?service=metrics-only").await;
    let names: Vec<&str> = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"http.server.request.duration"), "{metrics}");
    assert!(names.contains(&"http.server.active_requests"), "{metrics}");
    let gauge = redline
        .get_ok(
            "/api/v1/metrics/query?service=metrics-only&name=http.server.active_requests&since=10m",
        )
        .await;
    assert_eq!(gauge["agg"], "last");
    assert_eq!(gauge["series"][0]["points"][0][1], 3.0);
    redline.stop().await;
}

/// A meter provider of `service` instance `instance`, exporting cumulative sums over gRPC only
/// when flushed.
fn instance_meter_provider(
    redline: &TestRedline,
    service: &str,
    instance: &str,
) -> SdkMeterProvider {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", redline.grpc))
        .with_temporality(Temporality::Cumulative)
        .build()
        .expect("metric exporter");
    let reader = PeriodicReader::builder(exporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
                .build(),
        )
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_one_service_add_up_and_are_listed_on_its_page() {
    let redline = TestRedline::start().await;
    let providers = [
        instance_meter_provider(&redline, "two-instances", "api-1"),
        instance_meter_provider(&redline, "two-instances", "api-2"),
    ];
    let counters: Vec<_> = providers
        .iter()
        .map(|p| {
            p.meter("redline-tests")
                .u64_counter("orders.placed")
                .build()
        })
        .collect();
    // Interleaved exports of two running totals: 100 → 130 and 40 → 45. Read as one stream,
    // each drop would look like a reset and the sum would be far off.
    for (instance, add) in [(0, 100), (1, 40), (0, 30), (1, 5)] {
        counters[instance].add(add, &[KeyValue::new("channel", "web")]);
        let flushed = providers[instance].clone();
        tokio::task::spawn_blocking(move || flushed.force_flush().expect("metrics exported"))
            .await
            .unwrap();
    }
    let path =
        "/api/v1/metrics/query?service=two-instances&name=orders.placed&since=10m&agg=sum&step=10m";
    let total = |body: &serde_json::Value| -> f64 {
        body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().into_iter().flatten())
            .filter_map(|p| p[1].as_f64())
            .sum()
    };
    let body = redline
        .wait_for(path, Duration::from_secs(10), |b| total(b) >= 175.0)
        .await;
    assert_eq!(total(&body), 175.0, "{body}");

    // The service page names both instances; a third arrives with spans, its id hostile text.
    let mut spans = crate::helpers::export_request("two-instances", "/orders", 3);
    spans.resource_spans[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(crate::helpers::string(
            "service.instance.id",
            "<b>pod-3</b>",
        ));
    assert_eq!(redline.export(&spans).await, 200);
    let page = crate::helpers::poll(Duration::from_secs(10), || async {
        let page = redline.text("/services/two-instances").await;
        page.contains("3 instances").then_some(page)
    })
    .await
    .expect("the service page lists three instances");
    for id in [
        "<code>api-1</code>",
        "<code>api-2</code>",
        "&#60;b&#62;pod-3&#60;/b&#62;",
    ] {
        assert!(page.contains(id), "{id} missing: {page}");
    }
    assert!(!page.contains("<b>pod-3"), "unescaped instance id");
    redline.stop().await;
}
