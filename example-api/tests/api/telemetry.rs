//! Spans and metrics follow the semantic conventions. Uses the SDK's in-memory exporters (real
//! SDK components) instead of an OTLP endpoint; the OTLP path is covered end to end with redline.

use crate::helpers::{TestApp, eventually, export_config, test_config};
use example_api::faults::FaultSettings;
use example_api::sampling::Sampling;
use example_api::telemetry::Telemetry;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::sync::Arc;
use std::time::Duration;

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn has(attrs: &[KeyValue], key: &str, v: Value) -> bool {
    attrs
        .iter()
        .any(|kv| kv.key.as_str() == key && kv.value == v)
}

struct Harness {
    app: TestApp,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    tel: Arc<Telemetry>,
}

async fn harness() -> Harness {
    harness_sampled(Sampling::default()).await
}

/// The API and its downstream service, both with `sampling`.
async fn harness_sampled(sampling: Sampling) -> Harness {
    let spans = InMemorySpanExporter::default();
    let metrics = InMemoryMetricExporter::default();
    let tp = SdkTracerProvider::builder().with_simple_exporter(spans.clone());
    let mp = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();
    let tel = Arc::new(Telemetry::sampled(tp, mp, sampling.clone()));
    let dtp = SdkTracerProvider::builder().with_simple_exporter(spans.clone());
    let dtel = Arc::new(Telemetry::sampled(
        dtp,
        SdkMeterProvider::builder().build(),
        sampling,
    ));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let cfg = test_config(&dir);
    let app = TestApp::spawn_telemetry(cfg, dir, tel.clone(), dtel).await;
    Harness {
        app,
        spans,
        metrics,
        tel,
    }
}

async fn find_span(h: &Harness, pred: impl Fn(&SpanData) -> bool) -> SpanData {
    eventually("span", Duration::from_secs(5), || async {
        h.spans
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|s| pred(s))
    })
    .await
}

#[tokio::test]
async fn server_spans_follow_http_semantic_conventions() {
    let h = harness().await;
    let r = h.app.get("/v1/products/5").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let server = find_span(&h, |s| s.name == "GET /v1/products/{id}").await;
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(
        attr(&server, "http.request.method"),
        Some(&Value::from("GET"))
    );
    assert_eq!(
        attr(&server, "http.route"),
        Some(&Value::from("/v1/products/{id}"))
    );
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(&Value::I64(200))
    );
    assert_eq!(server.status, Status::Unset);
    let trace = server.span_context.trace_id();
    let id = server.span_context.span_id();

    // Children: the cache lookup and, on this first (missed) read, the SQL statement.
    let cache = find_span(&h, |s| {
        s.name == "cache.get product" && s.span_context.trace_id() == trace
    })
    .await;
    assert_eq!(cache.parent_span_id, id);
    assert_eq!(attr(&cache, "cache.l1.hit"), Some(&Value::Bool(false)));
    let sql = find_span(&h, |s| {
        s.name == "SELECT products" && s.span_context.trace_id() == trace
    })
    .await;
    assert_eq!(attr(&sql, "db.system"), Some(&Value::from("sqlite")));
    let text = attr(&sql, "db.query.text").unwrap().as_str();
    assert!(
        text.contains("FROM products WHERE id = ?1"),
        "statement shape, no values: {text}"
    );
    assert_eq!(sql.span_context.trace_id(), trace);

    // An incoming W3C traceparent is continued.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.app
        .get("/v1/categories")
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    let s = find_span(&h, |s| s.name == "GET /v1/categories").await;
    assert_eq!(
        s.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(s.parent_span_id.to_string(), "00f067aa0ba902b7");

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
    assert!(matches!(s.status, Status::Error { .. }));
    assert_eq!(
        attr(&s, "http.response.status_code"),
        Some(&Value::I64(500))
    );
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
        s.name == "GET /v1/products/{id}"
            && attr(s, "http.response.status_code") == Some(&Value::I64(404))
    })
    .await;
    assert_eq!(s.status, Status::Unset);
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
    let trace = server.span_context.trace_id();
    let spans = h.spans.get_finished_spans().unwrap();
    let mut clients: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.span_kind == SpanKind::Client && s.name == "GET /recommendations/{product_id}"
        })
        .collect();
    clients.sort_by_key(|s| s.start_time);
    // One CLIENT span per attempt (3 by default), retries numbered, all children of the request.
    assert_eq!(clients.len(), 3);
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.span_context.trace_id(), trace);
        assert_eq!(c.parent_span_id, server.span_context.span_id());
        assert_eq!(attr(c, "http.response.status_code"), Some(&Value::I64(500)));
        assert!(matches!(c.status, Status::Error { .. }));
        let resend = attr(c, "http.request.resend_count").cloned();
        assert_eq!(
            resend,
            if i == 0 {
                None
            } else {
                Some(Value::I64(i as i64))
            }
        );
        // The downstream's SERVER span continues this attempt's context.
        let ds = spans
            .iter()
            .find(|s| {
                s.span_kind == SpanKind::Server && s.parent_span_id == c.span_context.span_id()
            })
            .expect("downstream server span");
        assert_eq!(ds.span_context.trace_id(), trace);
        assert_eq!(ds.name, "GET /recommendations/{product_id}");
    }
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
    let spans = h.spans.get_finished_spans().unwrap();
    let servers: Vec<&SpanData> = spans
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
        assert_eq!(s.span_context.trace_state().get("ot"), Some("th:c"));
        // Consistent: the trace id's randomness (low 56 bits) is at or above the threshold.
        let id = s.span_context.trace_id().to_bytes();
        assert!(
            id[9] >= 0xc0,
            "randomness below th:c in {:?}",
            s.span_context.trace_id()
        );
        assert_eq!(
            attr(s, "http.route"),
            Some(&Value::from("/v1/products/{id}"))
        );
    }
    let traced: std::collections::HashSet<_> =
        servers.iter().map(|s| s.span_context.span_id()).collect();
    let caches: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "cache.get product")
        .collect();
    assert_eq!(
        caches.len(),
        servers.len(),
        "one cache span per traced request"
    );
    assert!(caches.iter().all(|c| traced.contains(&c.parent_span_id)));
    assert_eq!(duration_count(&h.metrics, "/v1/products/{id}"), n);

    // A sampled incoming traceparent is followed whatever its trace id; an unsampled one is not.
    h.spans.reset();
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
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "GET /v1/categories")
        .collect();
    assert_eq!(followed.len(), 1, "only the sampled parent's request");
    assert!(followed[0].span_context.is_sampled());
    h.app.stop().await;
}

/// Export to an endpoint where nothing listens: every request still succeeds, quickly.
#[tokio::test]
async fn failing_export_never_blocks_or_fails_requests() {
    let cfg = export_config(
        "http://127.0.0.1:9".into(),
        "http/protobuf",
        Duration::from_millis(100),
        Sampling::default(),
    );
    let tel = Arc::new(Telemetry::new("example-api", &cfg).unwrap());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::spawn_config(test_config(&dir), dir, tel.clone()).await;
    let start = std::time::Instant::now();
    for i in 0..300 {
        let r = app
            .get(&format!("/v1/products/{}", 1 + i % 50))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
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
    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::metric;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
    use prost::Message;
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

    let cfg = export_config(
        endpoint,
        "http/protobuf",
        Duration::from_millis(200),
        Sampling::default(),
    );
    let tel = Arc::new(Telemetry::new("example-api", &cfg).unwrap());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = TestApp::spawn_config(test_config(&dir), dir, tel.clone()).await;
    // Two spans per cached GET: 1600 requests end 3200 spans, more than the export in flight
    // (512) plus the queue (2048) can hold.
    for i in 0..1600 {
        let r = app
            .get(&format!("/v1/products/{}", 1 + i % 50))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
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
