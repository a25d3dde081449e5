//! Test harness: starts the API in process on port 0 against a temporary database, with a
//! small seed, and stops it (awaiting the ordered shutdown) on request.

use example_api::App;
use example_api::config::{Config, RatePolicy};
use example_api::faults::FaultSettings;
use example_api::routes::AppState;
use example_api::sampling::Sampling;
use example_api::telemetry::{BatchSettings, ExportConfig, Telemetry};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SEED_PRODUCTS: usize = 120;

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    pub db_path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    /// Kept alive with the app; clone it to keep the database after `stop`.
    pub dir: Arc<tempfile::TempDir>,
}

/// A config for tests: small seed, generous limits, no Redis unless a test asks.
/// Export to `endpoint` over `protocol` with explicit settings (tests do not read `OTEL_*`).
pub fn export_config(
    endpoint: String,
    protocol: &str,
    metric_interval: Duration,
    sampling: Sampling,
) -> ExportConfig {
    ExportConfig {
        endpoint: Some(endpoint),
        protocol: protocol.into(),
        delta: false,
        metric_interval,
        disabled: false,
        exponential_histograms: false,
        sampling,
        // Spans leave as often as metrics, so tests need not flush.
        batch: BatchSettings {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: metric_interval,
            export_timeout: Duration::from_secs(10),
        },
        instance_id: None,
    }
}

pub fn test_config(dir: &tempfile::TempDir) -> Config {
    let mut cfg = Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("catalog.db"),
    );
    cfg.seed_products = SEED_PRODUCTS;
    cfg.reviews_per_product = 2;
    cfg.replicas = 2;
    cfg.redis_url = None;
    cfg.cursor_secret = b"test-secret".to_vec();
    // A fixed limit: tests run in parallel on a busy machine, where the adaptive limit could
    // (rightly) shed their concurrent requests; its own tests opt in.
    cfg.min_concurrency = None;
    // Generous, so that a slow machine does not turn a healthy downstream call into a timeout;
    // the timeout tests set their own.
    cfg.downstream_timeout = Duration::from_secs(5);
    cfg.redis_timeout = Duration::from_secs(5);
    cfg.rate_default = RatePolicy {
        name: "default",
        quota: 100_000,
        window: Duration::from_secs(60),
    };
    cfg
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(f: impl FnOnce(&mut Config)) -> TestApp {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut cfg = test_config(&dir);
        f(&mut cfg);
        Self::spawn_config(cfg, dir, Arc::new(Telemetry::disabled())).await
    }

    pub async fn spawn_config(
        cfg: Config,
        dir: Arc<tempfile::TempDir>,
        tel: Arc<Telemetry>,
    ) -> TestApp {
        Self::spawn_telemetry(cfg, dir, tel, Arc::new(Telemetry::disabled())).await
    }

    /// `dtel` is the telemetry of the in-process recommendations service.
    pub async fn spawn_telemetry(
        cfg: Config,
        dir: Arc<tempfile::TempDir>,
        tel: Arc<Telemetry>,
        dtel: Arc<Telemetry>,
    ) -> TestApp {
        let app = App::build(cfg, tel, dtel).await.expect("app builds");
        Self::run(app, dir)
    }

    /// Runs an app built elsewhere (e.g. by the demo's [`example_api::demo::start_instances`]).
    pub fn run(app: App, dir: Arc<tempfile::TempDir>) -> TestApp {
        let db_path = app.state().cfg.db_path.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let (addr, admin, state) = (app.addr(), app.admin_addr(), app.state());
        let handle = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            admin,
            state,
            http: reqwest::Client::new(),
            db_path,
            shutdown: Some(tx),
            handle: Some(handle),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let r = self.get(path).send().await.expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// An API key for the demo user.
    pub async fn token(&self) -> String {
        let r = self
            .http
            .post(self.url("/v1/auth/token"))
            .json(&json!({"username": "demo", "password": "demo"}))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Renames product `id` as the demo user, with the ETag it has now; asserts 200.
    pub async fn rename_product(&self, id: u64, name: &str) {
        let token = self.token().await;
        let path = format!("/v1/products/{id}");
        let etag = self.get(&path).send().await.unwrap().headers()["etag"]
            .to_str()
            .unwrap()
            .to_string();
        let r = self
            .http
            .patch(self.url(&path))
            .bearer_auth(&token)
            .header("if-match", etag)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn set_faults(&self, f: FaultSettings) {
        let r = self
            .http
            .put(format!("http://{}/admin/faults", self.admin))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn admin_state(&self) -> Value {
        self.http
            .get(format!("http://{}/admin/state", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stops the server (graceful, write-behind flushed) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server result");
        }
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A unique Redis key prefix per test.
pub fn redis_prefix(test: &str) -> String {
    format!("ea-test-{test}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
