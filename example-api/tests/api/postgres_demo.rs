//! The pieces `example-api demo --postgres` runs: a primary and a streaming standby created
//! afresh in a data directory (even over a killed run's servers), the API pointed at them with
//! reads served by the standby, both servers stopped afterwards; and the PostgreSQL mode's pool
//! and replica-lag metrics, exported over OTLP/HTTP by the SDK's exporter to a receiver here.

use crate::helpers::{TestApp, eventually, export_config, test_config};
use axum::body::Bytes;
use example_api::db::pgcluster::{Replicated, Server};
use example_api::loadgen::{self, Options, Traffic};
use example_api::sampling::Sampling;
use example_api::telemetry::Telemetry;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{Metric, number_data_point};
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_database_serves_reads_from_the_standby_and_is_stopped_after() {
    let dir = tempfile::tempdir().unwrap();
    // Traversable by the servers' user (under root, `postgres`), like the demo's ./data.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = dir.path().join("data/postgres");
    // A run killed without stopping its servers leaves them running in the directory.
    let killed = Replicated::start(data.clone()).await.expect("first start");
    let old = (killed.cluster().primary_port, killed.cluster().standby_port);
    std::mem::forget(killed);
    assert!(accepts(old.0) && accepts(old.1));

    let pg = Replicated::start(data.clone())
        .await
        .expect("starts over the leftovers");
    assert!(
        !accepts(old.0) && !accepts(old.1),
        "the leftovers were stopped"
    );
    let ports = (pg.cluster().primary_port, pg.cluster().standby_port);

    let app_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut cfg = test_config(&app_dir);
    pg.configure(&mut cfg);
    let app = TestApp::spawn_config(cfg, app_dir, Arc::new(Telemetry::disabled())).await;
    eventually("standby in rotation", Duration::from_secs(20), || async {
        let s = app.admin_state().await["db"]["standbys"][0].clone();
        (s["in_rotation"] == true && s["lag_bytes"] == 0).then_some(())
    })
    .await;
    // The demo's traffic (a write burst every 30 s: none in these 2 s; a writer's reads go to
    // the primary for a while after its write).
    let opts = Options::new(app.url(""), 50.0, Duration::from_secs(2));
    assert_eq!(opts.traffic, Traffic::default());
    let report = loadgen::run(opts, std::future::pending()).await.unwrap();
    assert!(report.completed >= 100, "{}", report.render());
    assert!(
        !report.by_status.keys().any(|s| s.starts_with('5')),
        "{}",
        report.render()
    );
    let db = &app.admin_state().await["db"];
    let replica_reads = db["replica_reads"].as_u64().unwrap();
    let primary_reads = db["primary_reads"].as_u64().unwrap();
    assert!(
        replica_reads > primary_reads,
        "reads are the standby's: {db}"
    );
    app.stop().await;

    pg.stop().await;
    assert!(
        !accepts(ports.0) && !accepts(ports.1),
        "both servers stopped"
    );
    for server in ["primary", "standby"] {
        assert!(
            !data.join(server).join("postmaster.pid").exists(),
            "{server}"
        );
    }
}

/// An OTLP/HTTP metrics receiver keeping every metric it is sent.
#[derive(Clone, Default)]
struct MetricsReceiver {
    metrics: Arc<Mutex<Vec<Metric>>>,
}

impl MetricsReceiver {
    async fn start(&self) -> String {
        let stored = self.metrics.clone();
        let empty = || async {
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        };
        let app = axum::Router::new()
            .route(
                "/v1/metrics",
                axum::routing::post(move |body: Bytes| {
                    let req = ExportMetricsServiceRequest::decode(body).expect("valid OTLP");
                    let mut stored = stored.lock().unwrap();
                    for rm in req.resource_metrics {
                        for sm in rm.scope_metrics {
                            stored.extend(sm.metrics);
                        }
                    }
                    empty()
                }),
            )
            .route("/v1/traces", axum::routing::post(empty))
            .route("/v1/logs", axum::routing::post(empty));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        endpoint
    }

    /// The data points of the latest export of `name` that had any: (attributes, value), with
    /// its unit. (An asynchronous instrument reports only what its callback observed.)
    fn latest(&self, name: &str) -> Option<(String, Vec<Point>)> {
        let metrics = self.metrics.lock().unwrap();
        metrics
            .iter()
            .rev()
            .filter(|m| m.name == name)
            .map(|m| (m.unit.clone(), points(m)))
            .find(|(_, p)| !p.is_empty())
    }
}

/// A data point's attributes (sorted key, value) and its value (a histogram's: its count).
type Point = (Vec<(String, String)>, f64);

fn points(m: &Metric) -> Vec<Point> {
    match m.data.as_ref() {
        Some(Data::Gauge(g)) => g
            .data_points
            .iter()
            .map(|p| (attrs(&p.attributes), number(p.value)))
            .collect(),
        Some(Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| (attrs(&p.attributes), number(p.value)))
            .collect(),
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| (attrs(&p.attributes), p.count as f64))
            .collect(),
        _ => Vec::new(),
    }
}

fn number(v: Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kvs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Any::StringValue(s)) => s,
                Some(Any::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect();
    out.sort();
    out
}

fn has(point: &[(String, String)], key: &str, value: &str) -> bool {
    point.iter().any(|(k, v)| k == key && v == value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_replica_lag_metrics_reach_an_otlp_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Replicated::start(dir.path().join("pg"))
        .await
        .expect("PostgreSQL");
    let receiver = MetricsReceiver::default();
    let endpoint = receiver.start().await;
    let export = export_config(
        endpoint,
        "http/protobuf",
        Duration::from_millis(200),
        Sampling::default(),
    );
    let tel = Arc::new(Telemetry::new("example-api", &export).unwrap());
    let app_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut cfg = test_config(&app_dir);
    pg.configure(&mut cfg);
    cfg.replica_max_lag = Duration::from_secs(60);
    let app = TestApp::spawn_config(cfg, app_dir, tel.clone()).await;
    let standby_port = pg.cluster().standby_port.to_string();

    eventually("standby in rotation", Duration::from_secs(20), || async {
        let s = app.admin_state().await["db"]["standbys"][0].clone();
        (s["in_rotation"] == true).then_some(())
    })
    .await;

    // Pool metrics, per pool, with their semantic-convention names, units and attributes,
    // after a write (the primary's pool) and a read (the standby's).
    let token = app.token().await;
    let (s, _) = app.get_json("/v1/products/1").await;
    assert_eq!(s, 200);
    for (name, unit) in [
        ("db.client.connection.count", "{connection}"),
        ("db.client.connection.max", "{connection}"),
        ("db.client.connection.pending_requests", "{request}"),
        ("db.client.connection.wait_time", "s"),
    ] {
        let (got, points) = eventually(name, Duration::from_secs(10), || async {
            let (unit, points) = receiver.latest(name)?;
            let pools = |p: &str| {
                points
                    .iter()
                    .any(|(a, _)| has(a, "db.client.connection.pool.name", p))
            };
            (pools("primary") && pools("replica-1")).then_some((unit, points))
        })
        .await;
        assert_eq!(got, unit, "{name}");
        if name == "db.client.connection.count" {
            for state in ["idle", "used"] {
                assert!(
                    points
                        .iter()
                        .any(|(a, _)| has(a, "db.client.connection.state", state)),
                    "{points:?}"
                );
            }
        }
        if name == "db.client.connection.max" {
            assert!(points.iter().all(|(_, v)| *v == 16.0), "{points:?}");
        }
    }

    // Lag gauges of the standby, in seconds and bytes, naming the standby's pool and address.
    let lag_attrs = |a: &[(String, String)]| {
        has(a, "db.client.connection.pool.name", "replica-1")
            && has(a, "server.address", "127.0.0.1")
            && has(a, "server.port", &standby_port)
    };
    for (name, unit) in [
        ("db.client.replica.lag", "s"),
        ("db.client.replica.lag_bytes", "By"),
        ("db.client.replica.in_rotation", "{replica}"),
    ] {
        let (got, points) = eventually(name, Duration::from_secs(10), || async {
            receiver.latest(name)
        })
        .await;
        assert_eq!(got, unit, "{name}");
        assert_eq!(points.len(), 1, "{name}: {points:?}");
        assert!(lag_attrs(&points[0].0), "{name}: {points:?}");
    }
    // A write the standby does not replay shows as lag at the receiver, in bytes and seconds.
    let (client, conn) =
        tokio_postgres::connect(&pg.cluster().url(Server::Standby), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let r = app
        .http
        .post(app.url("/v1/products/3/reviews"))
        .bearer_auth(&token)
        .header("idempotency-key", "lagging-write")
        .json(&serde_json::json!({"rating": 5, "body": "lag"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    eventually("lag exported", Duration::from_secs(10), || async {
        let bytes = receiver.latest("db.client.replica.lag_bytes")?.1[0].1;
        let secs = receiver.latest("db.client.replica.lag")?.1[0].1;
        (bytes > 0.0 && secs > 0.2).then_some(())
    })
    .await;
    client
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();

    // The product cache's hit ratio, per level, as a fraction.
    for _ in 0..3 {
        let (s, _) = app.get_json("/v1/products/2").await;
        assert_eq!(s, 200);
    }
    let (unit, points) = eventually("cache.hit_ratio", Duration::from_secs(10), || async {
        let (unit, points) = receiver.latest("cache.hit_ratio")?;
        points
            .iter()
            .any(|(a, v)| has(a, "cache.level", "l1") && *v > 0.0 && *v <= 1.0)
            .then_some((unit, points))
    })
    .await;
    assert_eq!(unit, "1", "{points:?}");

    app.stop().await;
    tel.shutdown().await;
    pg.stop().await;
}
