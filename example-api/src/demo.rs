//! The one-command demo: start redline (the binary next to this one) with the shipped alert
//! rules, one or more API instances with their recommendations service exporting OTLP to
//! redline, and a load generator per instance; print the dashboard URL and where alert e-mails
//! go; run a scripted fault scenario (the downstream fails for a while, then recovers) so the
//! breaker, the degraded answers and an alert (`RecommendationsFailing`, e-mailed when it fires
//! and when it resolves) show up within minutes.
//! Ctrl-C or SIGTERM stops everything in order: load, API (write-behind flushed), telemetry
//! (flushed to redline), then redline itself (SIGTERM, then kill after a grace period).

mod instances;
mod redline;

pub use instances::{DemoTelemetry, PORTS_PER_INSTANCE, check_redis, instance_id, start_instances};
pub use redline::{MailDestination, alerts_file, eml_subject, mail_destination};

use crate::app::StartError;
use crate::config::{Config, RatePolicy};
use crate::db::pgcluster::{ClusterError, Replicated};
use crate::faults::Faults;
use crate::loadgen;
use crate::telemetry::{ExportConfig, TelemetryError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const REDLINE_GRPC: &str = "127.0.0.1:4317";
pub const REDLINE_HTTP: &str = "127.0.0.1:4318";
pub const REDLINE_WEB: &str = "127.0.0.1:9900";
/// The first instance's address; the next ones take the following port pairs.
pub const API_ADDR: &str = "127.0.0.1:3000";
pub const ADMIN_ADDR: &str = "127.0.0.1:3001";
pub const REDLINE_DATA_DIR: &str = "./data/redline";
/// Where several instances look for Redis when neither `--redis-url` nor `REDIS_URL` is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Most instances the demo runs.
pub const MAX_INSTANCES: usize = 8;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub struct DemoOptions {
    pub redline: PathBuf,
    /// The alert rules for redline; `None`: see [`alerts_file`].
    pub alerts: Option<PathBuf>,
    pub rate: f64,
    pub fail_after: Duration,
    pub fail_for: Duration,
    /// API instances (at least one; more need Redis).
    pub instances: usize,
    /// Redis for the instances' shared cache and limits; `None`: `REDIS_URL`, and with several
    /// instances [`DEFAULT_REDIS_URL`] after that.
    pub redis_url: Option<String>,
    /// The API on a PostgreSQL primary and standby in ./data/postgres instead of SQLite.
    pub postgres: bool,
    pub traffic: loadgen::Traffic,
}

/// A demo whose prerequisites are checked: the redline binary, the alert rules and, for
/// several instances, Redis. What [`prepare`] returns and [`run`] starts.
pub struct Prepared {
    o: DemoOptions,
    cfg: Config,
    alerts: PathBuf,
    mail: MailDestination,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "redline binary not found at {0}; build everything first with `cargo build --release --workspace` \
         and run the demo from the same target directory (e.g. `cargo run --release -p example-api -- demo`)"
    )]
    RedlineMissing(PathBuf),
    #[error(
        "alert rules not found at {0}; run the demo from the repository root or pass --alerts FILE"
    )]
    AlertsMissing(PathBuf),
    #[error("reading the alert rules {0}: {1}")]
    AlertsRead(PathBuf, std::io::Error),
    #[error("the alert rules {0} are not valid TOML: {1}")]
    AlertsParse(PathBuf, toml::de::Error),
    #[error("starting redline: {0}")]
    Spawn(std::io::Error),
    #[error("redline exited during start-up ({0})")]
    RedlineExited(String),
    #[error("redline did not open {0} within 30 s")]
    RedlineTimeout(String),
    #[error(
        "{0} instances need Redis to share their cache, rate limits and invalidations; \
         give --redis-url (or REDIS_URL)"
    )]
    RedisRequired(usize),
    #[error(
        "several instances need Redis to share their cache, rate limits and invalidations, \
         but Redis at {url} is unreachable; start one (e.g. `redis-server` or \
         `docker run -p 6379:6379 redis`) or point --redis-url at one"
    )]
    RedisUnreachable {
        url: String,
        source: redis::RedisError,
    },
    #[error(
        "several instances need Redis to share their cache, rate limits and invalidations, \
         but Redis at {0} did not answer within 3 s; start one or point --redis-url at one"
    )]
    RedisTimeout(String),
    #[error("starting the API: {0}")]
    Api(#[from] StartError),
    #[error("load generator: {0}")]
    Loadgen(#[from] loadgen::LoadgenError),
    #[error("starting PostgreSQL: {0}")]
    Postgres(#[from] ClusterError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("constant address")
}

/// The demo's telemetry for `instances` API instances, exporting over OTLP/gRPC to the redline
/// [`run`] starts. Built before [`run`], so that the caller can make the first instance's
/// providers global and back its `tracing` subscriber with them before anything logs.
pub fn telemetry(instances: usize) -> Result<DemoTelemetry, TelemetryError> {
    DemoTelemetry::new(
        &ExportConfig::grpc(&format!("http://{REDLINE_GRPC}")),
        instances,
    )
}

/// The fault scenario: after `fail_after`, the recommendations service fails every call for
/// `fail_for`, then recovers. `faults` are those of the instance that runs the service.
pub async fn scenario(faults: Arc<Faults>, fail_after: Duration, fail_for: Duration) {
    tokio::time::sleep(fail_after).await;
    println!("scenario: the recommendations service starts failing (100 % errors)");
    faults.update(|f| f.downstream_error_rate = 1.0);
    tokio::time::sleep(fail_for).await;
    println!("scenario: the recommendations service recovers");
    faults.update(|f| f.downstream_error_rate = 0.0);
}

/// The API settings the demo runs with (the first instance's addresses).
fn api_config(o: &DemoOptions, instances: usize) -> Config {
    let mut cfg = Config::new(addr(API_ADDR), PathBuf::from("./data/catalog.db"));
    cfg.admin_addr = addr(ADMIN_ADDR);
    cfg.rate_default = RatePolicy {
        name: "default",
        quota: 1200,
        window: Duration::from_secs(60),
    };
    if instances > 1 {
        // Each load generator logs its 8 users in at start, all from 127.0.0.1 as `loadgen`,
        // and Redis keeps the shared login limits across demo runs: room for two starts of
        // every instance's load generator within a minute.
        let logins = 20 * instances as u64;
        cfg.rate_auth.quota = cfg.rate_auth.quota.max(logins);
        cfg.rate_auth_ip.quota = cfg.rate_auth_ip.quota.max(logins);
    }
    if let Some(url) = &o.redis_url {
        cfg.redis_url = Some(url.clone());
    } else if instances > 1 && cfg.redis_url.is_none() {
        cfg.redis_url = Some(DEFAULT_REDIS_URL.to_string());
    }
    cfg
}

/// Checks what the demo needs before anything starts (and before any telemetry is built, whose
/// export would only add noise to the error): the redline binary, the alert rules and where
/// their e-mails go, and for several instances a reachable Redis.
pub async fn prepare(mut o: DemoOptions) -> Result<Prepared, DemoError> {
    o.instances = o.instances.clamp(1, MAX_INSTANCES);
    o.traffic.validate().map_err(loadgen::LoadgenError::from)?;
    if !tokio::fs::try_exists(&o.redline).await.unwrap_or(false) {
        return Err(DemoError::RedlineMissing(o.redline));
    }
    let cfg = api_config(&o, o.instances);
    let alerts = alerts_file(o.alerts.as_deref()).await?;
    let mail = mail_destination(&alerts, Path::new(REDLINE_DATA_DIR)).await?;
    if o.instances > 1 {
        check_redis(
            cfg.redis_url
                .as_deref()
                .ok_or(DemoError::RedisRequired(o.instances))?,
        )
        .await?;
    }
    Ok(Prepared {
        o,
        cfg,
        alerts,
        mail,
    })
}

/// Runs the demo `p` with `tel` (as [`telemetry`] builds it for `p`'s instances), which is
/// flushed and shut down at the end.
pub async fn run(p: Prepared, tel: DemoTelemetry) -> Result<(), DemoError> {
    let Prepared {
        o,
        mut cfg,
        alerts,
        mail,
    } = p;
    let instances = tel.api.len();
    let data_dir = Path::new(REDLINE_DATA_DIR);
    let addrs = redline::RedlineAddrs {
        grpc: REDLINE_GRPC,
        http: REDLINE_HTTP,
        web: REDLINE_WEB,
    };
    let mut redline = redline::start(&o.redline, &addrs, data_dir, &alerts).await?;
    let pg = match o.postgres {
        true => match Replicated::start(PathBuf::from("./data/postgres")).await {
            Ok(pg) => Some(pg),
            Err(e) => {
                redline::stop(&mut redline).await;
                return Err(e.into());
            }
        },
        false => None,
    };
    if let Some(pg) = &pg {
        pg.configure(&mut cfg);
    }

    let apps = match start_instances(&cfg, &tel).await {
        Ok(apps) => apps,
        Err(e) => {
            if let Some(pg) = pg {
                pg.stop().await;
            }
            redline::stop(&mut redline).await;
            return Err(e);
        }
    };
    // The first instance runs the recommendations service: its switches break it.
    let faults = apps[0].state().faults.clone();
    println!("redline dashboard: http://{REDLINE_WEB}/");
    println!("alert rules:       {}", alerts.display());
    println!("alert e-mails:     {mail}");
    let mut targets = Vec::with_capacity(instances);
    for (n, app) in apps.iter().enumerate() {
        let api = format!("http://{}", app.addr());
        println!(
            "example API:       {api}   (admin: http://{}, service.instance.id {})",
            app.admin_addr(),
            instance_id(&crate::telemetry::api_service_name(), n + 1)
        );
        targets.push(api);
    }
    if instances > 1
        && let Some(url) = &cfg.redis_url
    {
        println!("shared Redis:      {url} (cache, rate limits, invalidations)");
    }
    if let Some(pg) = &pg {
        println!("PostgreSQL:        {pg} (./data/postgres)");
    }
    println!(
        "load: {:.0} req/s{}; scenario: the recommendations service fails after {} s for {} s, \
         then recovers; the RecommendationsFailing alert fires and resolves. Ctrl-C stops.",
        o.rate,
        if instances > 1 {
            format!(" spread over {instances} instances")
        } else {
            String::new()
        },
        o.fail_after.as_secs(),
        o.fail_for.as_secs()
    );

    // One stop signal for every part: Ctrl-C/SIGTERM, or redline going away.
    let (stop_tx, stop_rx) = watch::channel(false);
    let waiter = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let servers: Vec<_> = apps
        .into_iter()
        .map(|app| tokio::spawn(app.run_until_stopped(waiter(stop_rx.clone()))))
        .collect();
    let scenario = tokio::spawn(scenario(faults, o.fail_after, o.fail_for));
    let announcer = match &mail {
        MailDestination::Outbox(dir) => {
            Some(tokio::spawn(redline::announce_new_emails(dir.clone())))
        }
        MailDestination::Smtp { .. } => None,
    };
    // One load generator per instance, each with its share of the rate.
    let share = o.rate / instances as f64;
    let load = futures_util::future::join_all(targets.iter().map(|target| {
        let mut opts =
            loadgen::Options::new(target.clone(), share, Duration::from_secs(365 * 24 * 3600));
        opts.traffic = o.traffic.clone();
        loadgen::run(opts, waiter(stop_rx.clone()))
    }));
    tokio::pin!(load);
    let reports = tokio::select! {
        r = &mut load => r,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            load.await
        }
        status = redline.wait() => {
            eprintln!("redline exited ({status:?}); stopping the demo");
            let _ = stop_tx.send(true);
            load.await
        }
    };
    let _ = stop_tx.send(true);
    scenario.abort();
    if let Some(a) = announcer {
        a.abort();
    }
    let mut failed = None;
    for (target, report) in targets.iter().zip(reports) {
        if instances > 1 {
            println!("load on {target}:");
        }
        match report {
            Ok(r) => print!("{}", r.render()),
            Err(e) => {
                eprintln!("load generator: {e}");
                failed.get_or_insert(e);
            }
        }
    }
    for server in servers {
        if let Ok(Err(e)) = server.await {
            eprintln!("API server: {e}");
        }
    }
    tel.shutdown().await;
    if let Some(pg) = pg {
        pg.stop().await;
    }
    redline::stop(&mut redline).await;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
