//! The PostgreSQL mode on a real primary and a real streaming hot standby (started per test
//! on loopback, in a temporary directory): the catalog, indexed plans, idempotent writes,
//! read-your-writes while the standby's replay is paused, and standbys that lag or die
//! leaving the rotation.

use crate::helpers::{TestApp, eventually, test_config};
use example_api::config::Config;
use example_api::db::pgcluster::{PgCluster, Server};
use example_api::db::queries::{self, ProductFilter, ProductSort};
use example_api::telemetry::Telemetry;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Cluster {
    pg: Option<PgCluster>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let pg = tokio::task::spawn_blocking(move || PgCluster::start(&path))
            .await
            .unwrap()
            .expect("PostgreSQL primary and standby start");
        Cluster {
            pg: Some(pg),
            _dir: dir,
        }
    }

    fn pg(&self) -> &PgCluster {
        self.pg.as_ref().expect("running")
    }

    async fn sql(&self, server: Server, stmt: &str) {
        let (client, conn) = tokio_postgres::connect(&self.pg().url(server), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client.batch_execute(stmt).await.expect(stmt);
    }

    async fn stop(&mut self, server: Server) {
        let pg = self.pg.take().unwrap();
        let pg = tokio::task::spawn_blocking(move || {
            pg.stop_server(server, true).expect("stop");
            pg
        })
        .await
        .unwrap();
        self.pg = Some(pg);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stopping blocks for a moment; the servers must not outlive the test.
        drop(self.pg.take());
    }
}

async fn spawn_api(cluster: &Cluster, f: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut cfg = test_config(&dir);
    cfg.database_url = Some(cluster.pg().url(Server::Primary));
    cfg.replica_urls = vec![cluster.pg().url(Server::Standby)];
    cfg.replica_probe_interval = Duration::from_millis(100);
    f(&mut cfg);
    let app = TestApp::spawn_config(cfg, dir, Arc::new(Telemetry::disabled())).await;
    // The standby is in rotation and has replayed the seed.
    eventually("standby in rotation", Duration::from_secs(20), || async {
        let s = standby(&app).await;
        (s["in_rotation"] == true && s["lag_bytes"] == 0).then_some(())
    })
    .await;
    app
}

async fn standby(app: &TestApp) -> Value {
    app.admin_state().await["db"]["standbys"][0].clone()
}

/// Two API keys, both replicated to the standby (keys are looked up on a standby).
async fn two_tokens(app: &TestApp) -> (String, String) {
    let (a, b) = (app.token().await, app.token().await);
    for t in [&a, &b] {
        eventually(
            "the key reaches the standby",
            Duration::from_secs(10),
            || async {
                let r = app
                    .get("/v1/products/1/reviews")
                    .bearer_auth(t)
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }
    (a, b)
}

async fn newest_review(app: &TestApp, token: &str, product: i64) -> i64 {
    let r = app
        .get(&format!("/v1/products/{product}/reviews?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["data"][0]["id"]
        .as_i64()
        .unwrap()
}

async fn post_review(app: &TestApp, token: &str, product: i64, key: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/v1/products/{product}/reviews")))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"rating": 4, "body": key}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn postgres_serves_the_catalog_with_indexes_and_idempotent_writes() {
    let cluster = Cluster::start().await;
    // The demo's catalog size: on a table of a few pages a sequential scan is rightly cheaper,
    // so the plans are judged where the indexes matter.
    let app = spawn_api(&cluster, |c| {
        c.seed_products = 10_000;
        c.reviews_per_product = 10;
    })
    .await;
    let (s, page) = app
        .get_json("/v1/products?limit=5&include=category,reviews")
        .await;
    assert_eq!(s, 200, "{page}");
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{page}");
    assert!(rows[0]["category"]["name"].is_string(), "{page}");
    // Keyset pagination: the next page continues where this one ended.
    let next = page["links"]["next"]
        .as_str()
        .expect("next link")
        .to_string();
    let (s, page2) = app.get_json(&next).await;
    assert_eq!(s, 200);
    assert_ne!(page2["data"][0]["id"], rows[0]["id"]);
    let (s, stats) = app.get_json("/v1/stats").await;
    assert_eq!(s, 200);
    assert_eq!(stats["data"]["totals"]["products"], 10_000, "{stats}");

    // Every list query is an index scan in PostgreSQL's own plan, with no sort step.
    let db = &app.state.db;
    let bad = db
        .explain(
            "SELECT id FROM products ORDER BY name LIMIT 5".into(),
            vec![],
        )
        .await
        .unwrap();
    assert!(bad.iter().any(|l| l.contains("Sort")), "{bad:?}");
    let filters = [
        ProductFilter::default(),
        ProductFilter {
            category: Some(3),
            ..Default::default()
        },
        ProductFilter {
            category: Some(3),
            min_price: Some(1000),
            max_price: None,
        },
    ];
    let mut plans = Vec::new();
    for f in &filters {
        for sort in [ProductSort::Created, ProductSort::Price] {
            for after in [None, Some((1_000_000, 50))] {
                plans.push(queries::product_list_sql(f, sort, after, 20));
            }
        }
    }
    plans.push(queries::review_list_sql(7, Some((1_000_000, 50)), 20));
    // (Categories are one page of 20 rows: a sequential scan is PostgreSQL's right choice.)
    for (stmt, params) in plans {
        let plan = db.explain(stmt.clone(), params).await.unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("Index Scan") || l.contains("Index Only Scan"))
                && !plan
                    .iter()
                    .any(|l| l.contains("Sort") || l.contains("Seq Scan")),
            "{stmt}: {plan:#?}"
        );
    }

    // Idempotent writes: the same key answers the same review once.
    let token = app.token().await;
    let (s, first) = post_review(&app, &token, 5, "pg-once").await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = post_review(&app, &token, 5, "pg-once").await;
    assert_eq!(s, 201);
    assert_eq!(first["data"]["id"], again["data"]["id"]);
    assert_eq!(newest_review(&app, &token, 5).await, first["data"]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn read_your_writes_holds_while_the_standby_replay_is_paused() {
    let cluster = Cluster::start().await;
    let app = spawn_api(&cluster, |c| c.replica_max_lag = Duration::from_secs(60)).await;
    let (writer, other) = two_tokens(&app).await;
    let before = newest_review(&app, &other, 11).await;

    cluster
        .sql(Server::Standby, "SELECT pg_wal_replay_pause()")
        .await;
    let (s, created) = post_review(&app, &writer, 11, "while-paused").await;
    assert_eq!(s, 201, "{created}");
    let mine = created["data"]["id"].as_i64().unwrap();
    // One second of paused replay: every read of the writer sees its write, every read of the
    // other client is served by the standby, which has not replayed it.
    let (mut reads, start) = (0, Instant::now());
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(newest_review(&app, &writer, 11).await, mine, "stale read");
        assert_eq!(newest_review(&app, &other, 11).await, before);
        reads += 1;
    }
    assert!(reads > 10, "{reads} rounds");
    let st = standby(&app).await;
    assert_eq!(st["in_rotation"], true, "{st}");
    assert!(st["lag_bytes"].as_u64().unwrap() > 0, "{st}");

    cluster
        .sql(Server::Standby, "SELECT pg_wal_replay_resume()")
        .await;
    eventually(
        "the standby replays the write",
        Duration::from_secs(10),
        || async { (newest_review(&app, &other, 11).await == mine).then_some(()) },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_standby_that_lags_or_dies_leaves_the_rotation() {
    let mut cluster = Cluster::start().await;
    let limit = Duration::from_millis(500);
    let app = spawn_api(&cluster, |c| c.replica_max_lag = limit).await;
    let (writer, other) = two_tokens(&app).await;

    cluster
        .sql(Server::Standby, "SELECT pg_wal_replay_pause()")
        .await;
    let (s, created) = post_review(&app, &writer, 12, "lagging").await;
    assert_eq!(s, 201);
    let written = Instant::now();
    let mine = created["data"]["id"].as_i64().unwrap();
    // The lag crosses the limit `limit` after the write; it must be out 2 s after that.
    eventually(
        "lagging standby out of rotation",
        limit + Duration::from_secs(2),
        || async { (standby(&app).await["in_rotation"] == false).then_some(()) },
    )
    .await;
    let took = written.elapsed();
    assert!(
        took >= limit,
        "removed before lagging past the limit: {took:?}"
    );
    let st = standby(&app).await;
    assert_eq!(st["removals"], 1, "{st}");
    // Reads fall back to the primary: the other client now sees the write too.
    let primary_before = app.admin_state().await["db"]["primary_reads"]
        .as_u64()
        .unwrap();
    assert_eq!(newest_review(&app, &other, 12).await, mine);
    let primary_after = app.admin_state().await["db"]["primary_reads"]
        .as_u64()
        .unwrap();
    assert!(primary_after > primary_before);

    cluster
        .sql(Server::Standby, "SELECT pg_wal_replay_resume()")
        .await;
    eventually(
        "caught-up standby back in rotation",
        Duration::from_secs(10),
        || async { (standby(&app).await["in_rotation"] == true).then_some(()) },
    )
    .await;

    cluster.stop(Server::Standby).await;
    let down = Instant::now();
    eventually(
        "dead standby out of rotation",
        Duration::from_secs(2),
        || async { (standby(&app).await["in_rotation"] == false).then_some(()) },
    )
    .await;
    eprintln!("standby removed {:?} after it stopped", down.elapsed());
    for _ in 0..20 {
        assert_eq!(newest_review(&app, &other, 12).await, mine);
    }
    assert_eq!(standby(&app).await["removals"], 2);
    app.stop().await;
}
