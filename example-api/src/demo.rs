//! The one-command demo: start redline (the binary next to this one), the API with its
//! recommendations service exporting OTLP to redline, and the load generator; print the
//! dashboard URL; run a scripted fault scenario (the downstream fails for a while, then
//! recovers) so the breaker, the degraded answers and redline's alerts show up within minutes.
//! Ctrl-C or SIGTERM stops everything in order: load, API (write-behind flushed), telemetry
//! (flushed to redline), then redline itself (SIGTERM, then kill after a grace period).

use crate::app::{App, StartError};
use crate::config::{Config, RatePolicy};
use crate::db::pgcluster::{ClusterError, Replicated};
use crate::loadgen;
use crate::telemetry::{ExportConfig, Telemetry, TelemetryError, api_service_name};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const REDLINE_GRPC: &str = "127.0.0.1:4317";
pub const REDLINE_HTTP: &str = "127.0.0.1:4318";
pub const REDLINE_WEB: &str = "127.0.0.1:9900";
pub const API_ADDR: &str = "127.0.0.1:3000";

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
    pub rate: f64,
    pub fail_after: Duration,
    pub fail_for: Duration,
    /// The API on a PostgreSQL primary and standby in ./data/postgres instead of SQLite.
    pub postgres: bool,
    pub traffic: loadgen::Traffic,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "redline binary not found at {0}; build everything first with `cargo build --release --workspace` \
         and run the demo from the same target directory (e.g. `cargo run --release -p example-api -- demo`)"
    )]
    RedlineMissing(PathBuf),
    #[error("starting redline: {0}")]
    Spawn(std::io::Error),
    #[error("redline exited during start-up ({0})")]
    RedlineExited(String),
    #[error("redline did not open {0} within 30 s")]
    RedlineTimeout(&'static str),
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

async fn start_redline(path: &PathBuf) -> Result<Child, DemoError> {
    if !path.exists() {
        return Err(DemoError::RedlineMissing(path.clone()));
    }
    std::fs::create_dir_all("./data/redline")?;
    let mut child = Command::new(path)
        .args([
            "serve",
            "--otlp-grpc-addr",
            REDLINE_GRPC,
            "--otlp-http-addr",
            REDLINE_HTTP,
            "--web-addr",
            REDLINE_WEB,
            "--data-dir",
            "./data/redline",
        ])
        // Its own process group: a terminal's Ctrl-C reaches only the demo, which stops redline
        // last, after the API's final telemetry has been flushed to it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(DemoError::Spawn)?;
    // Ready when both the OTLP receiver and the dashboard accept connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for target in [REDLINE_GRPC, REDLINE_WEB] {
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(DemoError::RedlineExited(status.to_string()));
            }
            if tokio::net::TcpStream::connect(target).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::RedlineTimeout(target));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(child)
}

/// Asks the child to stop (SIGTERM) so it can flush, then kills it after a grace period.
async fn stop_child(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The demo's telemetry: the API's (named by `OTEL_SERVICE_NAME`) and its recommendations
/// service's, both exporting over OTLP/gRPC to the redline [`run`] starts. Built before
/// [`run`], so that the caller can make the API's providers global and back its `tracing`
/// subscriber with them before anything logs.
pub fn telemetry() -> Result<(Arc<Telemetry>, Arc<Telemetry>), TelemetryError> {
    let export = ExportConfig::grpc(&format!("http://{REDLINE_GRPC}"));
    let tel = Arc::new(Telemetry::new(&api_service_name(), &export)?);
    let dtel = Arc::new(Telemetry::new("recommendations", &export)?);
    Ok((tel, dtel))
}

/// Runs the demo with `tel` (the API's telemetry) and `dtel` (the recommendations service's),
/// as [`telemetry`] builds them; both are flushed and shut down at the end.
pub async fn run(
    o: DemoOptions,
    tel: Arc<Telemetry>,
    dtel: Arc<Telemetry>,
) -> Result<(), DemoError> {
    let mut redline = start_redline(&o.redline).await?;
    let pg = match o.postgres {
        true => match Replicated::start(PathBuf::from("./data/postgres")).await {
            Ok(pg) => Some(pg),
            Err(e) => {
                stop_child(&mut redline).await;
                return Err(e.into());
            }
        },
        false => None,
    };

    let mut cfg = Config::new(addr(API_ADDR), PathBuf::from("./data/catalog.db"));
    cfg.admin_addr = addr("127.0.0.1:3001");
    cfg.rate_default = RatePolicy {
        name: "default",
        quota: 1200,
        window: Duration::from_secs(60),
    };
    if let Some(pg) = &pg {
        pg.configure(&mut cfg);
    }
    let app = match App::build(cfg, tel.clone(), dtel.clone()).await {
        Ok(app) => app,
        Err(e) => {
            if let Some(pg) = pg {
                pg.stop().await;
            }
            stop_child(&mut redline).await;
            return Err(e.into());
        }
    };
    let faults = app.state().faults.clone();
    let api = format!("http://{}", app.addr());
    println!("redline dashboard: http://{REDLINE_WEB}/");
    println!(
        "example API:       {api}   (admin: http://{})",
        app.admin_addr()
    );
    if let Some(pg) = &pg {
        println!("PostgreSQL:        {pg} (./data/postgres)");
    }
    println!(
        "load: {:.0} req/s; scenario: downstream fails after {} s for {} s, then recovers. Ctrl-C stops.",
        o.rate,
        o.fail_after.as_secs(),
        o.fail_for.as_secs()
    );

    // One stop signal for every part: Ctrl-C/SIGTERM, or redline going away.
    let (stop_tx, stop_rx) = watch::channel(false);
    let waiter = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(app.run_until_stopped(waiter(stop_rx.clone())));
    let scenario = tokio::spawn({
        let faults = faults.clone();
        async move {
            tokio::time::sleep(o.fail_after).await;
            println!("scenario: the recommendations service starts failing (100 % errors)");
            faults.update(|f| f.downstream_error_rate = 1.0);
            tokio::time::sleep(o.fail_for).await;
            println!("scenario: the recommendations service recovers");
            faults.update(|f| f.downstream_error_rate = 0.0);
        }
    });
    let mut opts = loadgen::Options::new(api, o.rate, Duration::from_secs(365 * 24 * 3600));
    opts.traffic = o.traffic;
    let load = loadgen::run(opts, waiter(stop_rx.clone()));
    tokio::pin!(load);
    let report = tokio::select! {
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
    match &report {
        Ok(r) => print!("{}", r.render()),
        Err(e) => eprintln!("load generator: {e}"),
    }
    if let Ok(Err(e)) = server.await {
        eprintln!("API server: {e}");
    }
    tel.shutdown().await;
    dtel.shutdown().await;
    if let Some(pg) = pg {
        pg.stop().await;
    }
    stop_child(&mut redline).await;
    report.map(|_| ())?;
    Ok(())
}
