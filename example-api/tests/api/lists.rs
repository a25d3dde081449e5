//! Lists: sparse fieldsets, keyset cursors, limits, index use, batch-loaded includes,
//! read/write routing, and the command-line contract.

use crate::helpers::{SEED_PRODUCTS, TestApp};
use example_api::db::queries::{self, ProductFilter, ProductSort};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn sparse_fieldsets_return_only_the_asked_fields() {
    let app = TestApp::spawn().await;
    let (s, body) = app
        .get_json("/v1/products?limit=3&fields=name,price_cents")
        .await;
    assert_eq!(s, 200);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for p in data {
        assert_eq!(
            keys(p),
            BTreeSet::from(["id".into(), "name".into(), "price_cents".into()])
        );
    }
    let (_, one) = app.get_json("/v1/products/4?fields=rating_avg").await;
    assert_eq!(
        keys(&one["data"]),
        BTreeSet::from(["id".into(), "rating_avg".into()])
    );
    // Without fields=, everything public comes back (and nothing internal).
    let (_, full) = app.get_json("/v1/products/4").await;
    assert!(keys(&full["data"]).contains("description"));
    assert!(!keys(&full["data"]).contains("rating_sum"));

    for bad in [
        "/v1/products?fields=name,bogus",
        "/v1/products/4?fields=password",
        "/v1/categories?fields=x",
    ] {
        let (s, body) = app.get_json(bad).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(body["error"]["parameter"], "fields", "{bad}");
    }
    let (s, body) = app.get_json("/v1/products?include=owner").await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["parameter"], "include");
    app.stop().await;
}

async fn walk(app: &TestApp, first: &str, mut during: impl AsyncFnMut(usize)) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut url = first.to_string();
    for page in 0.. {
        let r = app.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = r.json().await.unwrap();
        ids.extend(
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_i64().unwrap()),
        );
        during(page).await;
        match body["meta"]["next_cursor"].as_str() {
            Some(_) => {
                let next = body["links"]["next"].as_str().unwrap().to_string();
                assert_eq!(link.unwrap(), format!("<{next}>; rel=\"next\""));
                url = next;
            }
            None => {
                assert!(link.is_none(), "no Link header on the last page");
                break;
            }
        }
    }
    ids
}

#[tokio::test]
async fn cursor_walk_sees_every_product_once_despite_equal_timestamps_and_inserts() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    // Seeded timestamps come in groups of seven equal values; pages of 5 cut through groups.
    let ids = walk(&app, "/v1/products?limit=5", async |page| {
        if page % 3 == 1 {
            let r = app
                .http
                .post(app.url("/v1/products"))
                .bearer_auth(&token)
                .json(&json!({"name": format!("new {page}"), "price_cents": 100, "category_id": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    })
    .await;
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(*id).or_default() += 1;
    }
    assert!(counts.values().all(|&c| c == 1), "an id appeared twice");
    for id in 1..=SEED_PRODUCTS as i64 {
        assert_eq!(counts.get(&id), Some(&1), "seeded product {id} missed");
    }
    // Price order walk (ascending, id tie-breaker) also sees everything exactly once.
    let by_price = walk(
        &app,
        "/v1/products?limit=7&sort=price&category=2",
        async |_| {},
    )
    .await;
    let unique: BTreeSet<i64> = by_price.iter().copied().collect();
    assert_eq!(unique.len(), by_price.len());
    let (_, all) = app
        .get_json("/v1/products?limit=100&category=2&fields=category_id")
        .await;
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"].as_i64().is_some())
    );
    app.stop().await;
}

#[tokio::test]
async fn tampered_or_foreign_cursors_are_rejected() {
    let app = TestApp::spawn().await;
    let (_, body) = app.get_json("/v1/products?limit=2").await;
    let cursor = body["meta"]["next_cursor"].as_str().unwrap().to_string();
    let (s, _) = app
        .get_json(&format!("/v1/products?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(s, 200);
    // Flip one character of the payload.
    let mut bytes = cursor.clone().into_bytes();
    bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(bytes).unwrap();
    for bad in [
        format!("/v1/products?cursor={flipped}"),
        format!("/v1/products?cursor={cursor}&sort=price"),
        format!("/v1/products?cursor={cursor}&category=3"),
        format!("/v1/products/1/reviews?cursor={cursor}"),
        "/v1/products?cursor=garbage".to_string(),
    ] {
        let (s, body) = app.get_json(&bad).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(body["error"]["parameter"], "cursor");
    }
    app.stop().await;
}

#[tokio::test]
async fn limit_is_bounded() {
    let app = TestApp::spawn().await;
    for bad in ["0", "101", "ten", "-5"] {
        for list in ["/v1/products", "/v1/categories", "/v1/products/1/reviews"] {
            let (s, body) = app.get_json(&format!("{list}?limit={bad}")).await;
            assert_eq!(s, 400, "{list} limit={bad}");
            assert_eq!(body["error"]["parameter"], "limit");
        }
    }
    let (s, body) = app.get_json("/v1/products?limit=100").await;
    assert_eq!(s, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 100);
    let (_, body) = app.get_json("/v1/products").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 20, "default limit");
    app.stop().await;
}

/// A plan uses an index when no table is scanned without one and nothing is sorted in a
/// temporary B-tree.
/// `rowid_order` allows a scan of a table in its INTEGER PRIMARY KEY order (the table is its
/// own index there).
fn assert_indexed(plan: &[String], what: &str, rowid_order: bool) {
    for line in plan {
        assert!(
            !line.contains("TEMP B-TREE"),
            "{what}: sorts without an index: {plan:?}"
        );
        if line.starts_with("SCAN") && !rowid_order {
            assert!(
                line.contains("USING") && line.contains("INDEX"),
                "{what}: full scan: {plan:?}"
            );
        }
    }
    assert!(
        rowid_order
            || plan
                .iter()
                .any(|l| l.contains("INDEX") || l.contains("PRIMARY KEY")),
        "{what}: {plan:?}"
    );
}

#[tokio::test]
async fn every_list_query_uses_an_index() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    // Negative control: the check does catch a query that sorts without an index.
    let bad = db
        .explain(
            "SELECT id FROM products ORDER BY name LIMIT 5".into(),
            vec![],
        )
        .await
        .unwrap();
    assert!(std::panic::catch_unwind(|| assert_indexed(&bad, "control", false)).is_err());

    let filters = [
        ProductFilter::default(),
        ProductFilter {
            category: Some(3),
            ..Default::default()
        },
        ProductFilter {
            min_price: Some(1000),
            max_price: Some(5000),
            ..Default::default()
        },
        ProductFilter {
            category: Some(3),
            min_price: Some(1000),
            max_price: None,
        },
    ];
    for f in &filters {
        for sort in [ProductSort::Created, ProductSort::Price] {
            for after in [None, Some((1_000_000, 50))] {
                let (sql, params) = queries::product_list_sql(f, sort, after, 20);
                let plan = db.explain(sql, params).await.unwrap();
                assert_indexed(&plan, &format!("products {f:?} {sort:?} {after:?}"), false);
            }
        }
    }
    for after in [None, Some((1_000_000, 50))] {
        let (sql, params) = queries::review_list_sql(7, after, 20);
        assert_indexed(&db.explain(sql, params).await.unwrap(), "reviews", false);
    }
    for after in [None, Some(3)] {
        let (sql, params) = queries::category_list_sql(after, 20);
        // Categories page in primary-key order: a rowid range scan, no sort.
        assert_indexed(&db.explain(sql, params).await.unwrap(), "categories", true);
    }
    app.stop().await;
}

#[tokio::test]
async fn includes_cost_a_constant_number_of_statements() {
    let app = TestApp::spawn().await;
    let count = || app.state.db.counters().statements.load(Ordering::SeqCst);
    let mut seen = Vec::new();
    for (url, expected) in [
        ("/v1/products?limit=20", 1),
        ("/v1/products?limit=20&include=category", 2),
        ("/v1/products?limit=20&include=category,reviews", 3),
        ("/v1/products?limit=5&include=category,reviews", 3),
        ("/v1/products?limit=100&include=reviews,category", 3),
    ] {
        let before = count();
        let (s, body) = app.get_json(url).await;
        assert_eq!(s, 200);
        let n = count() - before;
        assert_eq!(n, expected, "{url} ran {n} statements");
        seen.push(body);
    }
    let p = &seen[2]["data"][0];
    assert_eq!(p["category"]["id"], p["category_id"]);
    assert!(p["reviews"].as_array().unwrap().len() <= 3);
    // Nothing unrequested is embedded.
    assert!(seen[0]["data"][0].get("category").is_none());
    assert!(seen[0]["data"][0].get("reviews").is_none());
    app.stop().await;
}

#[tokio::test]
async fn reads_go_to_replicas_except_right_after_a_write() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let c = app.state.db.counters();
    let (p0, r0) = (
        c.primary_reads.load(Ordering::SeqCst),
        c.replica_reads.load(Ordering::SeqCst),
    );
    let r = app
        .get("/v1/products?limit=2")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.primary_reads.load(Ordering::SeqCst),
        p0,
        "reads use replicas"
    );
    assert!(c.replica_reads.load(Ordering::SeqCst) > r0);

    let created: Value = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(&token)
        .json(&json!({"name": "fresh", "price_cents": 5, "category_id": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["data"]["id"].as_i64().unwrap();
    let p1 = c.primary_reads.load(Ordering::SeqCst);
    let (s, body) = {
        let r = app
            .get(&format!("/v1/products/{id}/reviews"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200, "{body}");
    assert!(
        c.primary_reads.load(Ordering::SeqCst) > p1,
        "the writer reads its writes from the primary"
    );
    // Another client (no key) still reads from a replica.
    let p2 = c.primary_reads.load(Ordering::SeqCst);
    let (s, _) = app.get_json("/v1/products?limit=1").await;
    assert_eq!(s, 200);
    assert_eq!(c.primary_reads.load(Ordering::SeqCst), p2);
    app.stop().await;
}

#[tokio::test]
async fn serve_command_prints_its_address_and_serves() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_example-api"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--seed-products",
            "30",
            "--db",
        ])
        .arg(dir.path().join("c.db"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Keep draining stdout, as a supervisor would.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = tx.send(first);
        for _ in lines {}
    });
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
        .await
        .unwrap()
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    let (s, body) = {
        let r = reqwest::get(format!("{url}/v1/stats")).await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(body["data"]["totals"]["products"], 30);
    child.kill().unwrap();
    child.wait().unwrap();
}
