//! The example API's performance targets (example-api/PERFORMANCE.md), measured against real
//! server processes — release builds of this package's `example-api serve` — so the load
//! generator's CPU is not mixed into the server's. Prints a Markdown report.
//!
//! `cargo bench -p example-api --bench api -- [options]`:
//! 1. telemetry overhead on a cached `GET /v1/products/{id}` ([`telemetry`]): off, on (every
//!    request traced), metrics only, traces sampled (`--sample-ratio`, 1 in 16 by default, the
//!    README's production setting), side by side and interleaved over `--rounds`; saturation
//!    throughput (`--connections`, `--secs`) and p99 at a fixed rate (`--rate`);
//!    `--baseline-exe` adds an older build's off and on servers to the same rounds;
//! 2. overload ([`overload`]): the weighted mix at `--base-rate` and at 10× that, the adaptive
//!    limit against a fixed one (`--max-concurrency`), interleaved over `--rounds`, then the
//!    cost of a rejection.
//!
//! 3. with `--only-postgres` (not part of the default run: it starts PostgreSQL), the
//!    PostgreSQL mode against the SQLite mode ([`postgres`]): a cached and an uncached read at
//!    `--rate`, interleaved over `--rounds`.
//!
//! `--only-telemetry` / `--only-overload` run one of them; `--pin` gives the servers the last
//! CPU and the load generator (this process) the others. Telemetry goes over OTLP/HTTP to a
//! sink in this process that counts and discards it.

#[allow(dead_code)]
#[path = "../../../benches/shared/host.rs"]
mod host;
mod overload;
mod postgres;
mod servers;
mod telemetry;

use clap::Parser;
use servers::{BenchError, Seen, otlp_sink};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "api",
    about = "The example API's performance targets: telemetry overhead and overload"
)]
struct Args {
    /// Arrival rate of the telemetry-overhead runs at a fixed rate.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Interleaved rounds (of the telemetry runs: each server once; of the overload runs: a
    /// base and a 10× phase per limit).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Base rate of the overload runs (the overload is 10×). 500 uses about a quarter of a
    /// slow core; 10× that is beyond what the core can serve, so the overload is real.
    #[arg(long, default_value_t = 500.0)]
    base_rate: f64,
    /// Fixed concurrency limit that the default (adaptive) limit is compared with under overload.
    #[arg(long, default_value_t = 256)]
    max_concurrency: usize,
    /// Keep-alive connections of the saturation runs.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests each saturation connection keeps outstanding (HTTP/1.1 pipelining). 1 is a
    /// browser-like client; on a small machine, where one generator core cannot keep a pinned
    /// server core busy that way, a few more let req/s be the server's capacity (the table's
    /// "server busy" column says whether it was), at a lower cost per request (fewer reads).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Only the telemetry-overhead benchmark.
    #[arg(long, conflicts_with = "only_overload")]
    only_telemetry: bool,
    /// Only the overload benchmark.
    #[arg(long, conflicts_with = "only_postgres")]
    only_overload: bool,
    /// Only the PostgreSQL-mode benchmark (needs PostgreSQL's server programs installed).
    #[arg(long, conflicts_with = "only_telemetry")]
    only_postgres: bool,
    /// Also saturate servers of an older build of `example-api` (telemetry on and off), for a
    /// before/after comparison in the same run.
    #[arg(long)]
    baseline_exe: Option<PathBuf>,
    /// Trace sampling ratio of the "sampled" server (consistent probability sampling, which
    /// redline weights by adjusted count).
    #[arg(long, default_value_t = 0.0625)]
    sample_ratio: f64,
    /// Pin the servers to the last CPU and the load generator to the others.
    #[arg(long)]
    pin: bool,
    /// Working directory for the servers' databases.
    #[arg(long, default_value = "./data/bench")]
    dir: PathBuf,
    /// The `example-api` executable to measure [default: this package's, built with the bench].
    #[arg(long)]
    exe: Option<PathBuf>,
    /// Passed by `cargo bench` to every benchmark target; nothing to do here.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What the benchmarks run with.
pub struct Options {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub rate: f64,
    pub secs: u64,
    pub rounds: usize,
    pub base_rate: f64,
    pub max_concurrency: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub baseline_exe: Option<PathBuf>,
    pub sample_ratio: f64,
}

fn main() -> Result<(), BenchError> {
    let a = Args::parse();
    let cpus = host::cores();
    let server_cpu = (a.pin && cpus > 1).then(|| cpus - 1);
    // Before the runtime starts its threads, so that all of them inherit it.
    if server_cpu.is_some() {
        host::pin_self(0..cpus - 1);
    }
    let o = Options {
        exe: a
            .exe
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_example-api"))),
        dir: a.dir,
        rate: a.rate,
        secs: a.secs,
        rounds: a.rounds,
        base_rate: a.base_rate,
        max_concurrency: a.max_concurrency,
        connections: a.connections,
        pipeline: a.pipeline,
        baseline_exe: a.baseline_exe,
        sample_ratio: a.sample_ratio,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run(
        &o,
        cpus,
        server_cpu,
        !a.only_overload && !a.only_postgres,
        !a.only_telemetry && !a.only_postgres,
        a.only_postgres,
    ))?;
    print!("{report}");
    Ok(())
}

/// Runs the selected benchmarks and returns a Markdown report.
async fn run(
    o: &Options,
    cpus: usize,
    server_cpu: Option<usize>,
    telemetry: bool,
    overload: bool,
    postgres: bool,
) -> Result<String, BenchError> {
    std::fs::create_dir_all(&o.dir)?;
    let seen = Arc::new(Seen::default());
    let sink = otlp_sink(seen.clone()).await?;
    let mut out = String::new();
    out.push_str(&format!(
        "# example-api benchmarks\n\nMachine: {cpus} cores, shared with the load generator (same host). Servers are \
         release builds of `example-api serve` (10k products seeded), telemetry exported over OTLP/HTTP to a local \
         sink that discards it.{}\n\n",
        match server_cpu {
            Some(c) => format!(" Servers pinned to CPU {c}, the load generator to the other CPUs."),
            None => String::new(),
        }
    ));
    if telemetry {
        telemetry::telemetry_overhead(o, server_cpu, &sink, &seen, &mut out).await?;
    }
    if overload {
        overload::overload(o, server_cpu, &sink, &mut out).await?;
    }
    if postgres {
        postgres::postgres_vs_sqlite(o, server_cpu, &mut out).await?;
    }
    Ok(out)
}
