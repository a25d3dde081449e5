//! `example-api`: `serve` the catalog API, generate `loadgen` traffic, or run the whole `demo`.
//! anyhow lives only here; the library returns typed errors.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use example_api::config::{Config, RatePolicy};
use example_api::telemetry::{ExportConfig, Telemetry, api_service_name};
use example_api::{App, demo, loadgen};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "example-api",
    version,
    about = "A product catalog API showing every scaling pattern, instrumented with OpenTelemetry"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (and its recommendations service on its own port).
    Serve(Box<ServeArgs>),
    /// Open-model load generator: constant arrival rate, weighted endpoint mix.
    Loadgen(LoadgenArgs),
    /// Start redline, the API and the load generator, with a scripted fault scenario that
    /// fires an alert.
    ///
    /// Starts redline (dashboard http://127.0.0.1:9900/, OTLP on 4317/4318, data in
    /// ./data/redline, the alert rules of ./alerts.toml), the API on 127.0.0.1:3000 (admin 3001)
    /// with its recommendations service, and a load generator. After --fail-after seconds the
    /// recommendations service fails every call for --fail-for seconds: the breaker opens,
    /// answers degrade, and the RecommendationsFailing alert fires, then resolves after the
    /// recovery. Its e-mails are written as .eml files to ./data/redline/outbox (or sent to the
    /// [smtp] server of the rules file); the demo prints each file as it lands.
    ///
    /// With --instances N, N API instances (ports 3000, 3002, …; admin 3001, 3003, …) share one
    /// Redis (cache, rate limits, invalidations), one database and one recommendations service,
    /// each with its own service.instance.id and load generator (--rate is split between them).
    Demo(DemoArgs),
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    #[arg(long, default_value = "./data/catalog.db")]
    db: PathBuf,
    /// Products generated into an empty database (reviews: ~10 per product).
    #[arg(long, default_value_t = 10_000)]
    seed_products: usize,
    /// Loopback address of the admin (fault injection) endpoint [default: --addr port + 1].
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Address of the in-process recommendations service.
    #[arg(long, default_value = "127.0.0.1:0")]
    downstream_addr: SocketAddr,
    /// Use an external recommendations service instead.
    #[arg(long)]
    downstream_url: Option<String>,
    /// Requests per minute per client (default policy).
    #[arg(long, default_value_t = 1200)]
    rate_limit: u64,
    /// Upper bound of the adaptive concurrency limit (requests in progress before shedding with
    /// 503); with --fixed-concurrency, the limit itself.
    #[arg(long, default_value_t = 256)]
    max_concurrency: usize,
    /// Lower bound of the adaptive concurrency limit [default: 4 per CPU].
    #[arg(long)]
    min_concurrency: Option<usize>,
    /// Keep the concurrency limit fixed at --max-concurrency instead of adapting it to latency.
    #[arg(long, conflicts_with = "min_concurrency")]
    fixed_concurrency: bool,
    /// Seconds a claimed Idempotency-Key waits for its request (one that died with the process)
    /// before a retry of the same request takes it over; longer than any write takes.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    idempotency_lease: u64,
    /// PostgreSQL primary (`postgres://user@host:port/db`): the PostgreSQL mode instead of the
    /// SQLite file given by --db.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A PostgreSQL hot standby taking reads (repeatable; needs --database-url).
    #[arg(long = "replica-url", value_name = "URL", requires = "database_url")]
    replica_urls: Vec<String>,
    /// Connections per PostgreSQL pool (the primary's and each standby's).
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// Milliseconds a request waits for a PostgreSQL connection before failing.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pool_timeout_ms: u64,
    /// Milliseconds after which PostgreSQL cancels a statement.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    statement_timeout_ms: u64,
    /// Milliseconds of replication lag past which a standby stops taking reads.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    replica_max_lag_ms: u64,
}

#[derive(Args)]
struct LoadgenArgs {
    /// Base URL of the API.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    target: String,
    /// Requests per second (arrival rate, independent of response times).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// GET only this path instead of the mix (`{id}` becomes a uniform random id up to
    /// --only-max-id), e.g. `/v1/products?limit=20`.
    #[arg(long, value_name = "PATH")]
    only: Option<String>,
    #[arg(long, default_value_t = 10_000, requires = "only")]
    only_max_id: i64,
    #[command(flatten)]
    traffic: loadgen::Traffic,
}

#[derive(Args)]
struct DemoArgs {
    /// Load generator arrival rate (requests per second, over all instances).
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Seconds before the downstream starts failing.
    #[arg(long, default_value_t = 120)]
    fail_after: u64,
    /// Seconds the failure lasts.
    #[arg(long, default_value_t = 120)]
    fail_for: u64,
    /// Path of the redline binary [default: next to this executable].
    #[arg(long)]
    redline: Option<PathBuf>,
    /// Alert rules for redline [default: ./alerts.toml, else the repository's alerts.toml].
    #[arg(long, value_name = "FILE")]
    alerts: Option<PathBuf>,
    /// API instances behind the one redline; more than one needs Redis (see --redis-url).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=demo::MAX_INSTANCES as i64))]
    instances: u16,
    /// Redis shared by the instances [default: REDIS_URL, else redis://127.0.0.1:6379 with
    /// several instances]; the demo refuses to start several instances without it.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Run the API on a PostgreSQL primary and a streaming hot standby, started in
    /// ./data/postgres (and stopped on exit) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    #[command(flatten)]
    traffic: loadgen::Traffic,
}

/// Logs to stderr, filtered by `RUST_LOG`. With `tel`, the service's telemetry also becomes the
/// process's global OpenTelemetry providers, `tracing` spans (the API's and libraries')
/// become spans of its traces, and events at INFO and above are also exported as its OTLP log
/// records; `RUST_LOG` selects those spans and events too.
fn init_logs(tel: Option<&Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The OpenTelemetry SDK logs routine set-up steps at info; its warnings still show.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn")
        });
    if let Some(t) = tel {
        t.install_global();
    }
    tracing_subscriber::registry()
        .with(tel.map(|t| t.tracing_layer()))
        .with(tel.and_then(|t| t.log_layer()))
        // Colour codes only for a terminal: logs piped to a file or collector stay plain text.
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();
}

fn config(a: &ServeArgs) -> Config {
    let mut cfg = Config::new(a.addr, a.db.clone());
    cfg.seed_products = a.seed_products;
    cfg.admin_addr = a.admin_addr.unwrap_or_else(|| {
        let port = if a.addr.port() == 0 {
            0
        } else {
            a.addr.port().saturating_add(1)
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    });
    cfg.downstream_addr = a.downstream_addr;
    cfg.downstream_url = a.downstream_url.clone();
    cfg.rate_default = RatePolicy {
        name: "default",
        quota: a.rate_limit,
        window: Duration::from_secs(60),
    };
    cfg.max_concurrency = a.max_concurrency;
    cfg.idempotency_lease = Duration::from_secs(a.idempotency_lease);
    cfg.database_url = a.database_url.clone();
    cfg.replica_urls = a.replica_urls.clone();
    cfg.pool_size = a.pool_size;
    cfg.pool_timeout = Duration::from_millis(a.pool_timeout_ms);
    cfg.statement_timeout = Duration::from_millis(a.statement_timeout_ms);
    cfg.replica_max_lag = Duration::from_millis(a.replica_max_lag_ms);
    cfg.min_concurrency = if a.fixed_concurrency {
        None
    } else {
        Some(
            a.min_concurrency
                .unwrap_or_else(example_api::resilience::limit::default_min),
        )
    };
    cfg
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let export = ExportConfig::from_env();
    let tel = Arc::new(Telemetry::new(&api_service_name(), &export).context("telemetry")?);
    let dtel = Arc::new(Telemetry::new("recommendations", &export).context("telemetry")?);
    init_logs(Some(&tel));
    let app = App::build(config(&args), tel.clone(), dtel.clone())
        .await
        .context("starting the API")?;
    // Scripts read these lines; a closed stdout must not stop the server, so errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", app.addr());
    let _ = writeln!(out, "admin on http://{}", app.admin_addr());
    if let Some(d) = app.downstream_addr() {
        let _ = writeln!(out, "recommendations on http://{d}");
    }
    let _ = out.flush();
    drop(out);
    app.run_until_stopped(demo::shutdown_signal())
        .await
        .context("serving")?;
    tel.shutdown().await;
    dtel.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve(a) => serve(*a).await,
        Cmd::Loadgen(a) => {
            init_logs(None);
            let mut opts = loadgen::Options::new(a.target, a.rate, Duration::from_secs(a.duration));
            opts.only = a.only.map(|p| (p, a.only_max_id));
            opts.traffic = a.traffic;
            let report = loadgen::run(opts, demo::shutdown_signal())
                .await
                .context("load generator")?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Cmd::Demo(a) => {
            let redline = match a.redline {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("redline"),
            };
            let instances = usize::from(a.instances);
            let prepared = demo::prepare(demo::DemoOptions {
                redline,
                alerts: a.alerts,
                rate: a.rate,
                fail_after: Duration::from_secs(a.fail_after),
                fail_for: Duration::from_secs(a.fail_for),
                instances,
                redis_url: a.redis_url,
                postgres: a.postgres,
                traffic: a.traffic,
            })
            .await
            .context("demo")?;
            let tel = demo::telemetry(instances).context("telemetry")?;
            init_logs(Some(&tel.api[0]));
            demo::run(prepared, tel).await.context("demo")
        }
    }
}
