//! `example-api demo --instances 2`: the demo's start-up of several instances (its
//! [`start_instances`] and [`DemoTelemetry`]) against one Redis (127.0.0.1:6379; CI starts it):
//! one rate-limit budget, cache invalidations crossing instances, one recommendations service,
//! a `service.instance.id` per instance on the wire, counters that add up in a real redline, and
//! a clear refusal without Redis.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use example_api::config::{Config, RatePolicy};
use example_api::demo::{DemoError, DemoTelemetry, start_instances};
use example_api::sampling::Sampling;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::Value;

use crate::helpers::{REDIS_URL, TestApp, eventually, export_config, redis_prefix, test_config};
use crate::with_redline::start_redline_with;

/// Two instances as the demo starts them, sharing `prefix` in Redis, each exporting per `tel`.
async fn two_instances(tel: &DemoTelemetry, setup: impl FnOnce(&mut Config)) -> (TestApp, TestApp) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut cfg = test_config(&dir);
    cfg.redis_url = Some(REDIS_URL.into());
    cfg.redis_prefix = redis_prefix("demo");
    setup(&mut cfg);
    let mut apps = start_instances(&cfg, tel)
        .await
        .expect("two instances start");
    assert_eq!(apps.len(), 2);
    let b = TestApp::run(apps.pop().unwrap(), dir.clone());
    let a = TestApp::run(apps.pop().unwrap(), dir);
    assert_ne!(a.addr, b.addr);
    (a, b)
}

fn no_export(instances: usize) -> DemoTelemetry {
    let mut export = example_api::telemetry::ExportConfig::from_env();
    export.endpoint = None;
    DemoTelemetry::new(&export, instances).unwrap()
}

#[tokio::test]
async fn demo_instances_share_one_rate_limit_budget() {
    let tel = no_export(2);
    let (a, b) = two_instances(&tel, |c| {
        c.rate_default = RatePolicy {
            name: "default",
            quota: 6,
            window: Duration::from_secs(60),
        };
    })
    .await;
    for app in [&a, &b, &a, &b, &a, &b] {
        assert_eq!(
            app.get("/v1/categories").send().await.unwrap().status(),
            200
        );
    }
    for app in [&a, &b] {
        let r = app.get("/v1/categories").send().await.unwrap();
        assert_eq!(
            r.status(),
            429,
            "6 requests spread over two instances use up one quota of 6"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// An OTLP/HTTP trace receiver keeping (service.name, service.instance.id) of every resource.
async fn resource_collector() -> (String, Arc<Mutex<BTreeSet<(String, String)>>>) {
    let seen: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    let stored = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
            let attribute = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
                             key: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == key)
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Any::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            for rs in req.resource_spans {
                let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
                stored.lock().unwrap().insert((
                    attribute(&attrs, "service.name"),
                    attribute(&attrs, "service.instance.id"),
                ));
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
    (endpoint, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_instances_share_invalidations_and_the_downstream_with_their_own_instance_ids() {
    let (endpoint, resources) = resource_collector().await;
    let export = export_config(
        endpoint,
        "http/protobuf",
        Duration::from_millis(500),
        Sampling::parse("always_on", None),
    );
    let tel = DemoTelemetry::new(&export, 2).unwrap();
    // A long L1 TTL: only the invalidation message can make B drop its copy in time.
    let (a, b) = two_instances(&tel, |c| c.l1_ttl = Duration::from_secs(300)).await;

    // B caches product 11 (L1), then A changes it.
    let (status, before) = b.get_json("/v1/products/11").await;
    assert_eq!(status, 200);
    assert_ne!(before["data"]["name"], "Changed on instance 1");
    a.rename_product(11, "Changed on instance 1").await;
    eventually(
        "instance 2 sees instance 1's write",
        Duration::from_secs(10),
        || async {
            let (_, now) = b.get_json("/v1/products/11").await;
            (now["data"]["name"] == "Changed on instance 1").then_some(())
        },
    )
    .await;

    // Instance 2 has no recommendations service of its own: it calls instance 1's.
    let received = || {
        a.state
            .downstream_received
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = received();
    let r = b
        .get("/v1/products/12/recommendations")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-degraded").is_none(), "not degraded");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["degraded"], false);
    assert!(received() > before, "instance 1's service answered");

    // Each instance's spans carry its own service.instance.id under the one service name.
    let expected: BTreeSet<(String, String)> = [
        ("example-api", "example-api-1"),
        ("example-api", "example-api-2"),
        ("recommendations", ""),
    ]
    .into_iter()
    .map(|(s, i)| (s.to_string(), i.to_string()))
    .collect();
    eventually(
        "spans of both instances",
        Duration::from_secs(15),
        || async { (*resources.lock().unwrap() == expected).then_some(()) },
    )
    .await;
    a.stop().await;
    b.stop().await;
    tel.shutdown().await;
}

/// Both instances export cumulative counters of one series: redline adds them up instead of
/// reading them as one counter's resets, and its service page lists both instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_redline_adds_up_both_instances_request_counts() {
    let redline = start_redline_with(|_, _| {}).await;
    let export = export_config(
        format!("http://{}", redline.grpc),
        "grpc",
        Duration::from_millis(500),
        Sampling::default(),
    );
    let tel = DemoTelemetry::new(&export, 2).unwrap();
    let (a, b) = two_instances(&tel, |_| {}).await;
    let (on_a, on_b) = (7, 5);
    for (app, n) in [(&a, on_a), (&b, on_b)] {
        for _ in 0..n {
            assert_eq!(
                app.get("/v1/categories").send().await.unwrap().status(),
                200
            );
        }
    }
    let url = format!(
        "http://{}/api/v1/metrics/query?service=example-api&name=http.server.request.duration\
         &agg=count&attr.http.route=/v1/categories&since=5m&step=5m",
        redline.web
    );
    let count = || async {
        let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p[1].as_f64())
            .sum::<f64>()
    };
    eventually(
        "both instances' requests in redline",
        Duration::from_secs(15),
        || async { (count().await == f64::from(on_a + on_b)).then_some(()) },
    )
    .await;
    // Over several more exports (cumulative points of two instances would each count again),
    // the total stays.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        assert_eq!(count().await, f64::from(on_a + on_b), "the total stays");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let page = reqwest::get(format!("http://{}/services/example-api", redline.web))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for id in ["<code>example-api-1</code>", "<code>example-api-2</code>"] {
        assert!(page.contains(id), "{id} not on the service page");
    }
    a.stop().await;
    b.stop().await;
    tel.shutdown().await;
    redline.stop().await;
}

#[tokio::test]
async fn several_instances_without_redis_are_refused() {
    let tel = no_export(2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&dir);
    cfg.redis_url = None;
    let err = start_instances(&cfg, &tel)
        .await
        .err()
        .expect("refused without Redis");
    assert!(matches!(err, DemoError::RedisRequired(2)), "{err}");

    // Nothing listens on port 1.
    cfg.redis_url = Some("redis://127.0.0.1:1".into());
    let err = start_instances(&cfg, &tel)
        .await
        .err()
        .expect("refused with Redis unreachable");
    assert!(matches!(err, DemoError::RedisUnreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("redis://127.0.0.1:1") && message.contains("unreachable"),
        "{message}"
    );

    // One instance needs no Redis.
    let mut apps = start_instances(&cfg_without_redis(&dir), &no_export(1))
        .await
        .expect("one instance starts without Redis");
    assert_eq!(apps.len(), 1);
    drop(apps.pop());
}

fn cfg_without_redis(dir: &tempfile::TempDir) -> Config {
    let mut cfg = test_config(dir);
    cfg.redis_url = None;
    cfg
}
