//! Spans and metrics follow the semantic conventions. Spans go over OTLP/HTTP to a collector
//! on port 0 inside the test (which decodes them with `opentelemetry_proto`); metrics to the
//! SDK's in-memory exporter. The path into redline is covered end to end in `with_redline`.

use crate::helpers::{TestApp, eventually, export_config, test_config};
use axum::body::Bytes;
use example_api::faults::FaultSettings;
use example_api::sampling::Sampling;
use example_api::telemetry::Telemetry;
use opentelemetry::{KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An OTLP/HTTP collector keeping every span it receives, with its resource's `service.name`.
#[derive(Clone)]
pub(crate) struct Collector {
    pub(crate) endpoint: String,
    pub(crate) spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Collector {
    pub(crate) async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
        let stored = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                let mut stored = stored.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            Any::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            stored.push((service.clone(), span));
                        }
                    }
                }
                async {
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, spans }
    }

    pub(crate) fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn reset(&self) {
        self.spans.lock().unwrap().clear();
    }
}

pub(crate) fn attr(s: &Span, key: &str) -> Option<Any> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

pub(crate) fn string(s: &str) -> Option<Any> {
    Some(Any::StringValue(s.to_string()))
}

fn int(i: i64) -> Option<Any> {
    Some(Any::IntValue(i))
}

fn status_code(s: &Span) -> StatusCode {
    s.status
        .as_ref()
        .map(|st| st.code())
        .unwrap_or(StatusCode::Unset)
}

fn has(attrs: &[KeyValue], key: &str, v: Value) -> bool {
    attrs
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value == v)
}

pub(crate) struct Harness {
    pub(crate) app: TestApp,
    pub(crate) collector: Collector,
    metrics: InMemoryMetricExporter,
    pub(crate) tel: Arc<Telemetry>,
}

pub(crate) async fn harness() -> Harness {
    harness_sampled(Sampling::default()).await
}

/// The API and its downstream service, both with `sampling`, exporting spans to a collector.
async fn harness_sampled(sampling: Sampling) -> Harness {
    let collector = Collector::start().await;
    let cfg = export_config(
        collector.endpoint.clone(),
        "http/protobuf",
        Duration::from_millis(100),
        sampling,
    );
    let metrics = InMemoryMetricExporter::default();
    let mp = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();
    let tel = Arc::new(Telemetry::exporting_spans("example-api", &cfg, mp).unwrap());
    let dtel = Arc::new(
        Telemetry::exporting_spans("recommendations", &cfg, SdkMeterProvider::builder().build())
            .unwrap(),
    );
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::spawn_telemetry(test_config(&dir), dir, tel.clone(), dtel).await;
    Harness {
        app,
        collector,
        metrics,
        tel,
    }
}

pub(crate) async fn find_span(h: &Harness, pred: impl Fn(&Span) -> bool) -> Span {
    eventually("span", Duration::from_secs(5), || async {
        h.collector.spans().into_iter().find(|s| pred(s))
    })
    .await
}

#[tokio::test]
async fn server_spans_follow_http_semantic_conventions() {
    let h = harness().await;
    let r = h.app.get("/v1/products/5").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let server = find_span(&h, |s| s.name == "GET /v1/products/{id}").await;
    assert_eq!(server.kind(), SpanKind::Server);
    assert_eq!(attr(&server, "http.request.method"), string("GET"));
    assert_eq!(attr(&server, "http.route"), string("/v1/products/{id}"));
    assert_eq!(attr(&server, "url.path"), string("/v1/products/5"));
    assert_eq!(attr(&server, "http.response.status_code"), int(200));
    assert_eq!(status_code(&server), StatusCode::Unset);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert!(
        server.end_time_unix_nano > server.start_time_unix_nano,
        "timed: {server:?}"
    );
    assert_eq!(server.flags & 0x1, 1, "sampled flag");
    let trace = server.trace_id.clone();

    // Children: the cache lookup and, on this first (missed) read, the SQL statement.
    let cache = find_span(&h, |s| s.name == "cache.get product" && s.trace_id == trace).await;
    assert_eq!(cache.parent_span_id, server.span_id);
    assert_eq!(cache.kind(), SpanKind::Internal);
    assert_eq!(attr(&cache, "cache.l1.hit"), Some(Any::BoolValue(false)));
    let sql = find_span(&h, |s| s.name == "SELECT products" && s.trace_id == trace).await;
    assert_eq!(sql.kind(), SpanKind::Client);
    assert_eq!(attr(&sql, "db.system"), string("sqlite"));
    assert_eq!(attr(&sql, "db.system.name"), string("sqlite"));
    assert_eq!(attr(&sql, "db.collection.name"), string("products"));
    let Some(Any::StringValue(text)) = attr(&sql, "db.query.text") else {
        panic!("db.query.text on {sql:?}")
    };
    assert!(
        text.contains("FROM products WHERE id = ?1"),
        "statement shape, no values: {text}"
    );

    // An incoming W3C traceparent is continued.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.app
        .get("/v1/categories")
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    let s = find_span(&h, |s| s.name == "GET /v1/categories").await;
    assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex::encode(&s.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(s.flags & 0x300, 0x300, "the parent is remote");

    // 5xx marks the server span as an error; 4xx does not.
    h.app
        .set_faults(FaultSettings {
            error_route: Some("/v1/stats".into()),
            route_error_rate: 1.0,
            ..Default::default()
        })
        .await;
    assert_eq!(h.app.get("/v1/stats").send().await.unwrap().status(), 500);
    let s = find_span(&h, |s| s.name == "GET /v1/stats").await;
    assert_eq!(status_code(&s), StatusCode::Error);
    assert_eq!(attr(&s, "http.response.status_code"), int(500));
    assert_eq!(attr(&s, "error.type"), string("500"));
    assert_eq!(
        h.app
            .get("/v1/products/99999")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let s = find_span(&h, |s| {
        s.name == "GET /v1/products/{id}" && attr(s, "http.response.status_code") == int(404)
    })
    .await;
    assert_eq!(status_code(&s), StatusCode::Unset);
    h.app.stop().await;
}

#[tokio::test]
async fn downstream_calls_are_client_spans_joined_to_the_downstream_trace() {
    let h = harness().await;
    h.app
        .set_faults(FaultSettings {
            downstream_error_rate: 1.0,
            ..Default::default()
        })
        .await;
    assert_eq!(
        h.app
            .get("/v1/products/6/recommendations")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let server = find_span(&h, |s| s.name == "GET /v1/products/{id}/recommendations").await;
    let trace = server.trace_id.clone();
    // The downstream's server spans of all three attempts have arrived.
    let spans = eventually(
        "three downstream server spans",
        Duration::from_secs(5),
        || {
            let spans = h.collector.spans();
            let n = spans
                .iter()
                .filter(|s| s.kind() == SpanKind::Server && s.trace_id == trace)
                .count();
            async move { (n >= 4).then_some(spans) }
        },
    )
    .await;
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client && s.name == "GET /recommendations/{product_id}")
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    // One CLIENT span per attempt (3 by default), retries numbered, all children of the request.
    assert_eq!(clients.len(), 3);
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.trace_id, trace);
        assert_eq!(c.parent_span_id, server.span_id);
        assert_eq!(attr(c, "http.response.status_code"), int(500));
        assert_eq!(status_code(c), StatusCode::Error);
        let resend = attr(c, "http.request.resend_count");
        assert_eq!(resend, if i == 0 { None } else { int(i as i64) });
        // The downstream's SERVER span continues this attempt's context.
        let ds = spans
            .iter()
            .find(|s| s.kind() == SpanKind::Server && s.parent_span_id == c.span_id)
            .expect("downstream server span");
        assert_eq!(ds.trace_id, trace);
        assert_eq!(ds.name, "GET /recommendations/{product_id}");
    }
    // Each service's spans carry its own resource.
    let services: std::collections::BTreeSet<String> = h
        .collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|(service, _)| service.clone())
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["example-api", "recommendations"]
    );
    h.app.stop().await;
}

#[tokio::test]
async fn http_and_internal_metrics_are_recorded() {
    let h = harness().await;
    for _ in 0..3 {
        h.app.get("/v1/products/5").send().await.unwrap();
    }
    h.app
        .get("/v1/products/5/recommendations")
        .send()
        .await
        .unwrap();
    h.tel.flush().await;
    let exported = h.metrics.get_finished_metrics().unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut found = false;
    for rm in &exported {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                names.insert(m.name().to_string());
                if m.name() == "http.server.request.duration" {
                    assert_eq!(m.unit(), "s");
                    if let AggregatedMetrics::F64(MetricData::Histogram(hist)) = m.data() {
                        for dp in hist.data_points() {
                            let attrs: Vec<KeyValue> = dp.attributes().cloned().collect();
                            if has(&attrs, "http.route", Value::from("/v1/products/{id}"))
                                && has(&attrs, "http.request.method", Value::from("GET"))
                                && has(&attrs, "http.response.status_code", Value::I64(200))
                            {
                                assert_eq!(dp.count(), 3);
                                assert!(dp.sum() > 0.0 && dp.sum() < 10.0, "seconds, not ms");
                                found = true;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(found, "duration histogram with route, method and status");
    for expected in [
        "http.server.active_requests",
        "http.client.request.duration",
        "db.client.connection.count",
        "db.client.connection.wait_time",
        "cache.requests",
        "circuit_breaker.state",
        "write_behind.queue.depth",
        "process.cpu.time",
        "process.memory.usage",
    ] {
        assert!(
            names.contains(expected),
            "missing {expected}; have {names:?}"
        );
    }
    h.app.stop().await;
}

/// Sums the `http.server.request.duration` counts of one route.
fn duration_count(metrics: &InMemoryMetricExporter, route: &'static str) -> u64 {
    let mut n = 0;
    for rm in metrics.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                if m.name() != "http.server.request.duration" {
                    continue;
                }
                if let AggregatedMetrics::F64(MetricData::Histogram(hist)) = m.data() {
                    for dp in hist.data_points() {
                        let attrs: Vec<KeyValue> = dp.attributes().cloned().collect();
                        if has(&attrs, "http.route", Value::from(route)) {
                            n = n.max(dp.count());
                        }
                    }
                }
            }
        }
    }
    n
}

/// With a ratio sampler, about that share of requests is traced, each traced span records the
/// threshold in `tracestate` (`ot=th:…`, so redline can weight it), a request that is not
/// traced records no child spans either, an incoming sampled `traceparent` is followed, and
/// the duration metric still counts every request.
#[tokio::test]
async fn ratio_sampling_is_consistent_and_recorded_in_tracestate() {
    let h = harness_sampled(Sampling::ratio(0.25)).await;
    let n = 400;
    for _ in 0..n {
        let r = h.app.get("/v1/products/7").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    h.tel.flush().await;
    let spans = h.collector.spans();
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "GET /v1/products/{id}")
        .collect();
    // Binomial(400, 0.25): mean 100, sd ≈ 8.7.
    assert!(
        (50..=150).contains(&servers.len()),
        "{} of {n} traced",
        servers.len()
    );
    for s in &servers {
        assert_eq!(s.trace_state, "ot=th:c");
        // Consistent: the trace id's randomness (low 56 bits) is at or above the threshold.
        assert!(
            s.trace_id[9] >= 0xc0,
            "randomness below th:c in {:?}",
            s.trace_id
        );
        assert_eq!(attr(s, "http.route"), string("/v1/products/{id}"));
    }
    let traced: std::collections::HashSet<_> = servers.iter().map(|s| &s.span_id).collect();
    let caches: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "cache.get product")
        .collect();
    assert_eq!(
        caches.len(),
        servers.len(),
        "one cache span per traced request"
    );
    assert!(caches.iter().all(|c| traced.contains(&c.parent_span_id)));
    assert!(
        caches.iter().all(|c| c.trace_state == "ot=th:c"),
        "inherited"
    );
    assert_eq!(duration_count(&h.metrics, "/v1/products/{id}"), n);

    // A sampled incoming traceparent is followed whatever its trace id; an unsampled one is not.
    h.collector.reset();
    let low = "00-4bf92f3577b34da6a3ce929d0e000001-00f067aa0ba902b7";
    for flags in ["01", "00"] {
        h.app
            .get("/v1/categories")
            .header("traceparent", format!("{low}-{flags}"))
            .send()
            .await
            .unwrap();
    }
    h.tel.flush().await;
    let followed: Vec<_> = h
        .collector
        .spans()
        .into_iter()
        .filter(|s| s.name == "GET /v1/categories")
        .collect();
    assert_eq!(followed.len(), 1, "only the sampled parent's request");
    assert_eq!(followed[0].flags & 1, 1);
    h.app.stop().await;
}

/// The API alone, exporting its telemetry to `endpoint` every `interval`.
async fn app_exporting_to(
    endpoint: String,
    interval: Duration,
    export_timeout: Duration,
) -> (TestApp, Arc<Telemetry>) {
    let mut cfg = export_config(endpoint, "http/protobuf", interval, Sampling::default());
    cfg.batch.export_timeout = export_timeout;
    let tel = Arc::new(Telemetry::new("example-api", &cfg).unwrap());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::spawn_config(test_config(&dir), dir, tel.clone()).await;
    (app, tel)
}

/// `n` cached product reads, each answered 200.
async fn read_products(app: &TestApp, n: usize) {
    for i in 0..n {
        let r = app
            .get(&format!("/v1/products/{}", 1 + i % 50))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// Export to an endpoint where nothing listens: every request still succeeds, quickly.
#[tokio::test]
async fn failing_export_never_blocks_or_fails_requests() {
    let (app, tel) = app_exporting_to(
        "http://127.0.0.1:9".into(),
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await;
    let start = std::time::Instant::now();
    read_products(&app, 300).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "300 requests took {took:?}");
    app.stop().await;
    tel.shutdown().await;
}

/// A collector that accepts metrics but never answers trace exports: the span queue fills, the
/// excess is dropped and counted (`otel.sdk.processor.span.processed` with
/// `error.type=queue_full`, exported with the service's metrics), and requests are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_dropped_at_a_full_queue_are_counted() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::metric;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
    use tokio::sync::watch;

    let metrics_bodies: Arc<std::sync::Mutex<Vec<Bytes>>> = Arc::default();
    let (release, released) = watch::channel(false);
    let stored = metrics_bodies.clone();
    let collector = axum::Router::new()
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: Bytes| {
                stored.lock().unwrap().push(body);
                async {
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        )
        .route(
            "/v1/traces",
            axum::routing::post(move || {
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    // The stuck export must not time out while the test reads: a timed-out batch would make
    // room in the queue and fewer spans would be dropped than the count below expects.
    let (app, tel) = app_exporting_to(
        endpoint,
        Duration::from_millis(200),
        Duration::from_secs(600),
    )
    .await;
    // Two spans per cached GET: 1600 requests end 3200 spans, more than the export in flight
    // (512) plus the queue (2048) can hold.
    read_products(&app, 1600).await;
    let dropped = || {
        let mut dropped = 0;
        for body in metrics_bodies.lock().unwrap().iter() {
            let req = ExportMetricsServiceRequest::decode(body.clone()).unwrap();
            for m in req
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .filter(|m| m.name == "otel.sdk.processor.span.processed")
            {
                let Some(metric::Data::Sum(sum)) = &m.data else {
                    continue;
                };
                for dp in &sum.data_points {
                    let queue_full = dp.attributes.iter().any(|kv| {
                        kv.key == "error.type"
                            && matches!(
                                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                Some(any_value::Value::StringValue(s)) if s == "queue_full"
                            )
                    });
                    if let (true, Some(v)) = (queue_full, &dp.value) {
                        let n = match v {
                            NumberValue::AsInt(i) => *i,
                            NumberValue::AsDouble(d) => *d as i64,
                        };
                        dropped = dropped.max(n);
                    }
                }
            }
        }
        dropped
    };
    // 3200 spans ended, at most 512 + 2048 held: at least 640 dropped (a cumulative counter,
    // exported every 200 ms, so the last export may lag the last drop).
    eventually(
        "at least 600 queue-full drops in the exported metrics",
        Duration::from_secs(10),
        || {
            let n = dropped();
            async move { (n >= 600).then_some(n) }
        },
    )
    .await;
    let _ = release.send(true);
    app.stop().await;
    tel.shutdown().await;
}
