//! Hardening against hostile clients: password spraying meets a per-IP limit, passwords are
//! stored as salted argon2id hashes and checked a bounded number at once, an Idempotency-Key
//! never stays stuck when its request dies (client gone, process killed), and the admin
//! endpoint refuses hosts a DNS rebinding page would send.

use crate::helpers::{TestApp, eventually};
use example_api::config::RatePolicy;
use example_api::faults::FaultSettings;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

async fn login(app: &TestApp, username: &str, password: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/auth/token"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn spraying_passwords_across_usernames_meets_the_per_ip_limit() {
    let app = TestApp::spawn_with(|c| {
        c.rate_auth_ip = RatePolicy {
            name: "auth_ip",
            quota: 5,
            window: Duration::from_secs(60),
        };
    })
    .await;
    // One password tried on many accounts: each account sees one attempt, the IP five.
    for user in ["alice", "bob", "carol", "demo", "loadgen"] {
        let r = login(&app, user, "Summer2024!").await;
        assert_eq!(r.status(), 401, "{user}");
    }
    let sixth = login(&app, "demo", "demo").await;
    assert_eq!(
        sixth.status(),
        429,
        "the IP's quota is spent, whatever the account"
    );
    assert!(
        sixth.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("\"auth_ip\""),
        "{:?}",
        sixth.headers()
    );
    assert!(sixth.headers().contains_key("retry-after"));
    app.stop().await;
}

#[tokio::test]
async fn passwords_are_salted_argon2id_hashes() {
    let app = TestApp::spawn().await;
    assert_eq!(login(&app, "demo", "demo").await.status(), 201);
    assert_eq!(login(&app, "demo", "Demo").await.status(), 401);
    assert_eq!(login(&app, "nobody", "demo").await.status(), 401);
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    let hashes: Vec<String> = conn
        .prepare("SELECT password_hash FROM accounts ORDER BY username")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(hashes.len(), 2);
    for hash in &hashes {
        // $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>
        let parts: Vec<&str> = hash.split('$').collect();
        assert_eq!(parts[1], "argon2id", "{hash}");
        assert!(parts[3].starts_with("m="), "{hash}");
        assert!(parts[4].len() >= 22, "a salt of at least 16 bytes: {hash}");
    }
    app.stop().await;

    // Another database, the same password: another salt, another hash.
    let other = TestApp::spawn().await;
    let again: String = rusqlite::Connection::open(&other.db_path)
        .unwrap()
        .query_row(
            "SELECT password_hash FROM accounts WHERE username = 'demo'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_ne!(again, hashes[0]);
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_are_bounded_and_never_stall_the_executor() {
    let app = TestApp::spawn_with(|c| {
        c.password_slots = 1;
        c.password_wait = Duration::from_millis(1);
    })
    .await;
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (app.http.clone(), app.url("/v1/auth/token"));
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .json(&json!({ "username": "demo", "password": "demo" }))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.headers().get("retry-after").cloned())
            })
        })
        .collect();
    // The executor keeps answering while hashes run on the blocking pool.
    let probe = tokio::time::Instant::now();
    let health = app.get("/healthz").send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        probe.elapsed() < Duration::from_secs(2),
        "{:?}",
        probe.elapsed()
    );
    let mut created = 0;
    let mut busy = 0;
    for login in logins {
        match login.await.unwrap() {
            (201, _) => created += 1,
            (503, Some(retry)) => {
                assert_eq!(retry, "1");
                busy += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(created >= 1, "{created} created, {busy} refused");
    assert!(
        busy >= 1,
        "one hash at a time: {created} created, {busy} refused"
    );
    assert_eq!(app.state.passwords.free_slots(), 1, "every slot comes back");
    app.stop().await;
}

fn claimed(db: &Path, key: &str) -> Option<(Option<i64>, i64)> {
    rusqlite::Connection::open(db)
        .ok()?
        .query_row(
            "SELECT status, created_at FROM idempotency_keys WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

fn products_named(db: &Path, name: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM products WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_flight_gets_its_response_on_retry() {
    let app = TestApp::spawn().await;
    let token = app.token().await;
    let body = json!({"name": "Gone", "price_cents": 500, "category_id": 2});
    // A slow database: the claim and the write take 700 ms each, the client waits one second.
    app.set_faults(FaultSettings {
        db_latency_ms: 700,
        ..Default::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1000))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url("/v1/products"))
        .bearer_auth(&token)
        .header("idempotency-key", "gone")
        .json(&body)
        .send()
        .await;
    assert!(
        gone.as_ref().is_err_and(|e| e.is_timeout()),
        "the client left: {gone:?}"
    );
    // The request runs to its end and stores its response.
    eventually(
        "the response is stored",
        Duration::from_secs(20),
        || async { claimed(&app.db_path, "gone").and_then(|(status, _)| status) },
    )
    .await;
    app.set_faults(FaultSettings::default()).await;
    let retry = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(&token)
        .header("idempotency-key", "gone")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let product: Value = retry.json().await.unwrap();
    assert_eq!(product["data"]["name"], "Gone");
    assert_eq!(products_named(&app.db_path, "Gone"), 1, "created once");
    app.stop().await;
}

/// `example-api serve` as a process, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Served {
    fn start(db: &Path, lease_secs: u64) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-api"))
            .args(["serve", "--addr", "127.0.0.1:0", "--seed-products", "50"])
            .args(["--admin-addr", "127.0.0.1:0", "--fixed-concurrency"])
            .args(["--idempotency-lease", &lease_secs.to_string()])
            .arg("--db")
            .arg(db)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("example-api starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = |prefix: &str| -> SocketAddr {
            let line = lines.next().expect("an address line").unwrap();
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?}"))
                .parse()
                .unwrap()
        };
        let addr = address("listening on http://");
        let admin = address("admin on http://");
        Served { child, addr, admin }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_by_a_killed_process_is_taken_over_after_the_lease() {
    const LEASE_SECS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("catalog.db");
    let http = reqwest::Client::new();
    let mut first = Served::start(&db, LEASE_SECS);
    let token: Value = http
        .post(format!("http://{}/v1/auth/token", first.addr))
        .json(&json!({"username": "demo", "password": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["api_key"].as_str().unwrap().to_string();
    let post = |addr: SocketAddr| {
        http.post(format!("http://{addr}/v1/products"))
            .bearer_auth(&token)
            .header("idempotency-key", "crash")
            .json(&json!({"name": "Crashed", "price_cents": 700, "category_id": 3}))
            .send()
    };
    let faults = http
        .put(format!("http://{}/admin/faults", first.admin))
        .json(&json!({"db_latency_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 200);
    let in_flight = tokio::spawn(post(first.addr));
    // Killed once the key is claimed, while the write itself waits on the slow database.
    eventually("the key is claimed", Duration::from_secs(30), || async {
        claimed(&db, "crash").filter(|(status, _)| status.is_none())
    })
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(in_flight.await.unwrap().is_err(), "the request died");
    let (_, claimed_at) = claimed(&db, "crash").unwrap();

    let second = Served::start(&db, LEASE_SECS);
    let early = post(second.addr).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    if now - claimed_at < (LEASE_SECS as i64 - 1) * 1000 {
        assert_eq!(
            early.status(),
            409,
            "within the lease the key is still held"
        );
    }
    let retried = eventually("the lease expires", Duration::from_secs(30), || async {
        let r = post(second.addr).await.ok()?;
        (r.status() == 201).then_some(r)
    })
    .await;
    assert!(retried.headers().get("idempotent-replayed").is_none());
    assert_eq!(products_named(&db, "Crashed"), 1, "the write ran once");
    let replay = post(second.addr).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn the_admin_endpoint_refuses_hosts_from_dns_rebinding() {
    let app = TestApp::spawn().await;
    let put = |host: String| {
        app.http
            .put(format!("http://{}/admin/faults", app.admin))
            .header("host", host)
            .json(&json!({"downstream_error_rate": 1.0}))
            .send()
    };
    let port = app.admin.port();
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
    ] {
        let r = put(host.clone()).await.unwrap();
        assert_eq!(r.status(), 421, "{host}");
    }
    assert_eq!(
        app.state.faults.get().downstream_error_rate,
        0.0,
        "unchanged"
    );
    let state = app
        .http
        .get(format!("http://{}/admin/state", app.admin))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(state.status(), 421);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = put(host.clone()).await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    assert_eq!(app.state.faults.get().downstream_error_rate, 1.0);
    app.stop().await;
}
