//! Start-up and shutdown: bind the listeners (port 0 friendly), open the database and seed it,
//! connect Redis when configured, wire the shared state and background tasks, then serve until
//! the shutdown future resolves. Shutdown order: stop accepting and finish in-flight requests,
//! stop the admin and downstream servers, then flush the write-behind queue.

use crate::cache::ProductCache;
use crate::cache::views::ViewCounter;
use crate::config::Config;
use crate::db::{Db, DbError, queries};
use crate::downstream::client::RecommendationsClient;
use crate::downstream::service::{self, Service};
use crate::faults::Faults;
use crate::ratelimit::RateLimiter;
use crate::resilience::limit::AdaptiveLimit;
use crate::routes::pagination::CursorCodec;
use crate::routes::{self, AppState, Shared};
use crate::telemetry::Telemetry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the admin endpoint must bind a loopback address, not {0}")]
    AdminNotLoopback(SocketAddr),
}

/// A built, bound, not yet running API instance.
pub struct App {
    listener: TcpListener,
    admin: TcpListener,
    downstream: Option<(TcpListener, axum::Router)>,
    state: AppState,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Bind(addr, e))
}

impl App {
    /// `telemetry` serves the API, `downstream_telemetry` the in-process recommendations service.
    pub async fn build(
        cfg: Config,
        telemetry: Arc<Telemetry>,
        downstream_telemetry: Arc<Telemetry>,
    ) -> Result<App, StartError> {
        if !cfg.admin_addr.ip().is_loopback() {
            return Err(StartError::AdminNotLoopback(cfg.admin_addr));
        }
        let faults = Arc::new(Faults::default());
        let db = match cfg.postgres() {
            Some(pg) => {
                Db::open_postgres(&pg, cfg.read_your_writes, faults.clone(), telemetry.clone())
                    .await?
            }
            None => Db::open(
                &cfg.db_path,
                cfg.replicas,
                cfg.read_your_writes,
                faults.clone(),
                telemetry.clone(),
            )?,
        };
        db.seed_if_empty(cfg.seed_products, cfg.reviews_per_product)
            .await?;
        let product_count = db
            .read(None, |sql| {
                sql.query_opt("SELECT MAX(id) FROM products", &[])?
                    .map(|r| r.opt_int(0))
                    .transpose()
            })
            .await?
            .flatten()
            .unwrap_or(1);

        let listener = bind(cfg.addr).await?;
        let admin = bind(cfg.admin_addr).await?;
        let received = Arc::new(AtomicU64::new(0));
        let (downstream, downstream_url) = match &cfg.downstream_url {
            Some(url) => (None, url.clone()),
            None => {
                let l = bind(cfg.downstream_addr).await?;
                let url = format!(
                    "http://{}",
                    l.local_addr()
                        .map_err(|e| StartError::Bind(cfg.downstream_addr, e))?
                );
                let svc = Arc::new(Service {
                    faults: faults.clone(),
                    received: received.clone(),
                    products: product_count,
                });
                (Some((l, service::router(svc, downstream_telemetry))), url)
            }
        };

        let (redis_cache, redis_rl) = match &cfg.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str())?;
                let conn = client
                    .get_connection_manager_with_config(
                        redis::aio::ConnectionManagerConfig::new()
                            .set_response_timeout(Some(cfg.redis_timeout)),
                    )
                    .await?;
                (
                    Some((client, conn.clone(), cfg.redis_prefix.clone(), cfg.l2_ttl)),
                    Some((conn, cfg.redis_prefix.clone())),
                )
            }
            None => (None, None),
        };
        let cache =
            ProductCache::new(cfg.l1_capacity, cfg.l1_ttl, redis_cache, telemetry.clone()).await?;
        let views = ViewCounter::start(
            db.clone(),
            cfg.view_queue_capacity,
            cfg.view_flush_interval,
            telemetry.clone(),
        );
        telemetry.register_process_metrics();

        let shed = Arc::new(match cfg.min_concurrency {
            Some(min) => AdaptiveLimit::new(min, cfg.max_concurrency),
            None => AdaptiveLimit::fixed(cfg.max_concurrency),
        });
        // Ends by itself when the limit (the app) is dropped.
        let _ = shed.spawn_lag_probe();
        let state = Arc::new(Shared {
            db: db.clone(),
            cache,
            views,
            stats: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(Duration::from_secs(10))
                .build(),
            popular: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(Duration::from_secs(60))
                .build(),
            api_keys: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            cursors: CursorCodec::new(&cfg.cursor_secret),
            limiter: Arc::new(RateLimiter::new(redis_rl, telemetry.clone())),
            shed: shed.clone(),
            recs: Arc::new(RecommendationsClient::new(
                downstream_url,
                &cfg,
                telemetry.clone(),
            )),
            faults,
            passwords: Arc::new(crate::passwords::Passwords::new(
                cfg.password_slots,
                cfg.password_wait,
            )),
            downstream_received: received,
            telemetry,
            cfg,
        });

        // Keep the idempotency table bounded.
        let purge_db = db;
        tokio::spawn(async move {
            let every = Duration::from_secs(600);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let before = crate::db::seed::now_ms() - routes::idempotency::RETENTION_MS;
                let _ = purge_db
                    .write(None, move |sql| {
                        queries::purge_idempotency_keys(sql, before)
                    })
                    .await;
            }
        });

        Ok(App {
            listener,
            admin,
            downstream,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Address of the in-process downstream service, if one runs.
    pub fn downstream_addr(&self) -> Option<SocketAddr> {
        self.downstream
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down in order (see module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let admin = axum::serve(self.admin, routes::admin::router(self.state.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()));
        let admin = tokio::spawn(async move { admin.await });
        let downstream = self.downstream.map(|(l, r)| {
            let s = axum::serve(l, r).with_graceful_shutdown(stopped(stop_rx.clone()));
            tokio::spawn(async move { s.await })
        });
        let app =
            routes::router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = admin.await;
        if let Some(d) = downstream {
            let _ = d.await;
        }
        self.state.views.shutdown().await;
        served
    }
}
