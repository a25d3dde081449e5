//! Typed settings for the API: built from the command line and the environment (`REDIS_URL`;
//! the `OTEL_*` variables are read by [`crate::telemetry`]), with defaults tuned for the demo
//! and overridable by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One rate-limit policy: `quota` requests per sliding `window`.
#[derive(Debug, Clone, Copy)]
pub struct RatePolicy {
    pub name: &'static str,
    pub quota: u64,
    pub window: Duration,
}

/// Circuit breaker tuning (resilience4j's model).
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Size of the count-based sliding window of recent calls.
    pub window: usize,
    /// Calls needed in the window before the failure rate is judged.
    pub min_calls: usize,
    /// Failure rate (0–1) at or above which the breaker opens.
    pub failure_rate: f64,
    /// Time spent open before probing.
    pub open_wait: Duration,
    /// Probe calls allowed (and needed to succeed) in half-open.
    pub half_open_probes: usize,
    /// A call slower than this counts as a failure even if it succeeds (resilience4j's
    /// slow-call threshold): a dependency that is slowing down trips the breaker too.
    pub slow_call: Duration,
}

/// All settings of one API instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Loopback address of the admin (fault injection) listener.
    pub admin_addr: SocketAddr,
    /// Address of the in-process downstream service; ignored when `downstream_url` is set.
    pub downstream_addr: SocketAddr,
    /// Use an external recommendations service instead of starting one.
    pub downstream_url: Option<String>,
    pub db_path: PathBuf,
    /// `postgres://…` of a PostgreSQL primary: the PostgreSQL mode instead of the SQLite file.
    pub database_url: Option<String>,
    /// `postgres://…` of each hot standby (PostgreSQL mode).
    pub replica_urls: Vec<String>,
    /// Connections per PostgreSQL pool (the primary's and each standby's).
    pub pool_size: usize,
    /// How long a request waits for a PostgreSQL connection before failing.
    pub pool_timeout: Duration,
    /// PostgreSQL cancels a statement running longer than this.
    pub statement_timeout: Duration,
    /// A standby lagging more than this leaves the read rotation.
    pub replica_max_lag: Duration,
    /// How often the standbys' lag is measured.
    pub replica_probe_interval: Duration,
    pub seed_products: usize,
    pub reviews_per_product: usize,
    /// Number of read-only "replica" connections.
    pub replicas: u32,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so tests and instances groups never collide.
    pub redis_prefix: String,
    /// How long a Redis command may take before the cache or the rate limiter gives up on it
    /// and falls back to the instance's own (the redis crate's default, 500 ms).
    pub redis_timeout: Duration,
    /// HMAC key for pagination cursors (random per process unless set, so share it between
    /// instances that sit behind one load balancer).
    pub cursor_secret: Vec<u8>,
    pub l1_capacity: u64,
    pub l1_ttl: Duration,
    pub l2_ttl: Duration,
    /// How long after a write a client's reads go to the primary (read-your-writes).
    pub read_your_writes: Duration,
    pub view_queue_capacity: usize,
    pub view_flush_interval: Duration,
    pub rate_default: RatePolicy,
    /// `POST /v1/auth/token` per client IP and username (guessing one account's password).
    pub rate_auth: RatePolicy,
    /// `POST /v1/auth/token` per client IP across usernames (password spraying).
    pub rate_auth_ip: RatePolicy,
    /// Password hashes computed at once (argon2id takes tens of milliseconds of one core);
    /// a login waits at most `password_wait` for a slot, then gets 503.
    pub password_slots: usize,
    pub password_wait: Duration,
    /// How long a claimed Idempotency-Key waits for its request to finish before a retry may
    /// take it over (the request died with the process). Longer than any write takes.
    pub idempotency_lease: Duration,
    /// Requests processed at once before shedding with 503: the upper bound of the adaptive
    /// limit, or the fixed limit when `min_concurrency` is `None`.
    pub max_concurrency: usize,
    /// Lower bound of the adaptive concurrency limit (see [`crate::resilience::limit`]);
    /// `None` keeps the limit fixed at `max_concurrency`.
    pub min_concurrency: Option<usize>,
    pub breaker: BreakerConfig,
    /// Timeout of one downstream attempt.
    pub downstream_timeout: Duration,
    pub retry_max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Retries allowed as a share of first attempts (retry budget), plus a floor per second.
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_sec: f64,
}

impl Config {
    /// The PostgreSQL settings, when `database_url` selects the PostgreSQL mode.
    pub fn postgres(&self) -> Option<crate::db::postgres::PgSettings> {
        let url = self.database_url.clone()?;
        Some(crate::db::postgres::PgSettings {
            primary_url: url,
            replica_urls: self.replica_urls.clone(),
            pool_size: self.pool_size,
            acquire_timeout: self.pool_timeout,
            statement_timeout: self.statement_timeout,
            rotation: crate::db::replicas::RotationSettings {
                max_lag: self.replica_max_lag,
                probe_interval: self.replica_probe_interval,
                probe_timeout: self.replica_probe_interval.max(Duration::from_millis(500)),
                breaker: BreakerConfig {
                    // A slow acquire is the pool's business (its timeout), not the breaker's.
                    slow_call: self.pool_timeout,
                    open_wait: Duration::from_secs(2),
                    ..self.breaker
                },
            },
        })
    }

    /// Defaults for a local run; `REDIS_URL` enables the shared L2 cache and rate limits.
    pub fn new(addr: SocketAddr, db_path: PathBuf) -> Self {
        Config {
            addr,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            downstream_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            downstream_url: None,
            db_path,
            database_url: None,
            replica_urls: Vec::new(),
            pool_size: 16,
            pool_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            replica_max_lag: Duration::from_secs(1),
            replica_probe_interval: Duration::from_millis(250),
            seed_products: 10_000,
            reviews_per_product: 10,
            replicas: 4,
            redis_url: std::env::var("REDIS_URL").ok().filter(|s| !s.is_empty()),
            redis_prefix: "example-api".into(),
            redis_timeout: Duration::from_millis(500),
            cursor_secret: rand::random::<[u8; 32]>().to_vec(),
            l1_capacity: 10_000,
            l1_ttl: Duration::from_secs(30),
            l2_ttl: Duration::from_secs(120),
            read_your_writes: Duration::from_secs(5),
            view_queue_capacity: 10_000,
            view_flush_interval: Duration::from_secs(1),
            rate_default: RatePolicy {
                name: "default",
                quota: 600,
                window: Duration::from_secs(60),
            },
            rate_auth: RatePolicy {
                name: "auth",
                quota: 10,
                window: Duration::from_secs(60),
            },
            rate_auth_ip: RatePolicy {
                name: "auth_ip",
                quota: 30,
                window: Duration::from_secs(60),
            },
            password_slots: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
            password_wait: Duration::from_secs(2),
            idempotency_lease: Duration::from_secs(30),
            max_concurrency: 256,
            min_concurrency: Some(crate::resilience::limit::default_min()),
            breaker: BreakerConfig {
                window: 20,
                min_calls: 5,
                failure_rate: 0.5,
                open_wait: Duration::from_secs(10),
                half_open_probes: 3,
                slow_call: Duration::from_millis(250),
            },
            downstream_timeout: Duration::from_millis(300),
            retry_max_attempts: 3,
            retry_base: Duration::from_millis(20),
            retry_cap: Duration::from_millis(200),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 5.0,
        }
    }
}
