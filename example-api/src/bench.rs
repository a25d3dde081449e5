//! Benchmarks of the targets, run against real server processes (this binary's `serve`)
//! so the load generator's CPU is not mixed into the server's:
//! 1. Telemetry overhead on a cached `GET /v1/products/{id}`: one server exporting OTLP/HTTP to
//!    a local sink, one with export off, measured side by side and interleaved (off, on, on,
//!    off, …) at a fixed arrival rate: achieved rate, p50/p99, server CPU per request.
//! 2. Overload: the weighted mix at a base rate, then at 10× that rate (open model) against a
//!    server with a small concurrency limit: admitted p99 versus unloaded p99, shed responses,
//!    and any other 5xx.

use crate::loadgen::{self, Options, Report};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server did not print its address")]
    NoAddress,
    #[error("load generator: {0}")]
    Loadgen(#[from] loadgen::LoadgenError),
}

pub struct BenchOptions {
    pub exe: PathBuf,
    pub dir: PathBuf,
    /// Arrival rate of the overhead benchmark.
    pub rate: f64,
    pub secs: u64,
    pub rounds: usize,
    /// Base rate of the overload benchmark (10× is the overload).
    pub base_rate: f64,
    pub max_concurrency: usize,
    /// Pin servers to the last CPU (`taskset`) and the load generator to the others.
    pub pin: bool,
}

struct Server {
    child: Child,
    url: String,
    pid: u32,
}

/// Accepts any OTLP/HTTP export and answers an empty (valid) protobuf response; counts the
/// export requests and bytes it receives.
async fn otlp_sink(seen: Arc<(AtomicU64, AtomicU64)>) -> Result<String, BenchError> {
    let app = Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.0.fetch_add(1, Ordering::Relaxed);
            seen.1.fetch_add(body.len() as u64, Ordering::Relaxed);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
                .into_response()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(url)
}

async fn spawn_server(
    exe: &Path,
    db: &Path,
    otlp: Option<&str>,
    max_concurrency: usize,
    pin: Option<usize>,
    extra_env: &[(&str, &str)],
) -> Result<Server, BenchError> {
    let mut cmd = match pin {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--rate-limit",
        "1000000000",
    ])
    .arg("--max-concurrency")
    .arg(max_concurrency.to_string())
    .arg("--db")
    .arg(db)
    .env_remove("REDIS_URL")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    match otlp {
        Some(url) => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", url)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        }
        None => {
            cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
    }
    cmd.envs(extra_env.iter().copied());
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().ok_or(BenchError::NoAddress)?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| BenchError::NoAddress)??
        .ok_or(BenchError::NoAddress)?;
    let url = first
        .strip_prefix("listening on ")
        .ok_or(BenchError::NoAddress)?
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server { child, url, pid })
}

fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn load(
    url: &str,
    rate: f64,
    secs: u64,
    only: Option<(String, i64)>,
) -> Result<Report, BenchError> {
    let mut o = Options::new(url.to_string(), rate, Duration::from_secs(secs));
    o.only = only;
    Ok(loadgen::run(o, std::future::pending()).await?)
}

fn ms(r: &Report, q: f64) -> f64 {
    r.hist.value_at_quantile(q) as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Restricts this process (the load generator) to CPUs `0..n`.
#[cfg(target_os = "linux")]
fn pin_self(n: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..n {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_self(_n: usize) {}

/// Runs both benchmarks and returns a Markdown report.
pub async fn run(o: BenchOptions) -> Result<String, BenchError> {
    std::fs::create_dir_all(&o.dir)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = cpus;
    let server_cpu = (o.pin && cpus > 1).then(|| cpus - 1);
    if server_cpu.is_some() {
        pin_self(cpus - 1);
    }
    let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sink = otlp_sink(seen.clone()).await?;
    let mut out = String::new();

    out.push_str(&format!(
        "# example-api benchmarks\n\nMachine: {cores} cores, shared with the load generator (same host). Servers are \
         release builds of `example-api serve` (10k products seeded), telemetry exported over OTLP/HTTP to a local \
         sink that discards it.{}\n\n",
        match server_cpu {
            Some(c) => format!(" Servers pinned to CPU {c}, the load generator to the other CPUs."),
            None => String::new(),
        }
    ));

    // 1. Telemetry overhead on a cached GET.
    let off = spawn_server(&o.exe, &o.dir.join("off.db"), None, 4096, server_cpu, &[]).await?;
    let on = spawn_server(
        &o.exe,
        &o.dir.join("on.db"),
        Some(&sink),
        4096,
        server_cpu,
        &[],
    )
    .await?;
    let only = Some(("/v1/products/{id}".to_string(), 100));
    // Metrics exported, traces not sampled: splits the cost between the two signals.
    let metrics_only = spawn_server(
        &o.exe,
        &o.dir.join("metrics-only.db"),
        Some(&sink),
        4096,
        server_cpu,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )
    .await?;
    for s in [&off, &on, &metrics_only] {
        load(&s.url, o.rate, 3, only.clone()).await?; // warm-up: fills the L1 cache
    }
    let mut cpu_metrics_only = vec![];
    out.push_str(&format!(
        "## Telemetry on vs off: cached `GET /v1/products/{{id}}` at {:.0} req/s, {} s per run\n\n\
         | run | telemetry | achieved req/s | p50 ms | p99 ms | server CPU µs/req |\n|---|---|---|---|---|---|\n",
        o.rate, o.secs
    ));
    let (mut cpu_on, mut cpu_off, mut p99_on, mut p99_off, mut rate_on, mut rate_off) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..o.rounds {
        let c0 = cpu_secs(metrics_only.pid);
        let r = load(&metrics_only.url, o.rate, o.secs, only.clone()).await?;
        let cpu_per_req = (cpu_secs(metrics_only.pid) - c0) / r.completed.max(1) as f64 * 1e6;
        out.push_str(&format!(
            "| {round} | metrics only | {:.0} | {:.2} | {:.2} | {:.0} |\n",
            r.achieved_rate(),
            ms(&r, 0.5),
            ms(&r, 0.99),
            cpu_per_req
        ));
        cpu_metrics_only.push(cpu_per_req);
        let order: [(&str, &Server); 2] = if round % 2 == 0 {
            [("off", &off), ("on", &on)]
        } else {
            [("on", &on), ("off", &off)]
        };
        for (name, s) in order {
            let c0 = cpu_secs(s.pid);
            let r = load(&s.url, o.rate, o.secs, only.clone()).await?;
            let cpu_per_req = (cpu_secs(s.pid) - c0) / r.completed.max(1) as f64 * 1e6;
            out.push_str(&format!(
                "| {round} | {name} | {:.0} | {:.2} | {:.2} | {:.0} |\n",
                r.achieved_rate(),
                ms(&r, 0.5),
                ms(&r, 0.99),
                cpu_per_req
            ));
            let (cpu, p99, rate) = if name == "on" {
                (&mut cpu_on, &mut p99_on, &mut rate_on)
            } else {
                (&mut cpu_off, &mut p99_off, &mut rate_off)
            };
            cpu.push(cpu_per_req);
            p99.push(ms(&r, 0.99));
            rate.push(r.achieved_rate());
        }
    }
    let (c_on, c_off) = (median(cpu_on), median(cpu_off));
    out.push_str(&format!(
        "\nMedians: achieved {:.0} (on) vs {:.0} (off) req/s; p99 {:.2} vs {:.2} ms (added {:+.2} ms); server CPU per \
         request {:.0} vs {:.0} µs → at CPU saturation telemetry would cost {:.1} % of throughput.\n\n",
        median(rate_on),
        median(rate_off),
        median(p99_on.clone()),
        median(p99_off.clone()),
        median(p99_on) - median(p99_off),
        c_on,
        c_off,
        if c_on > 0.0 { (1.0 - c_off / c_on) * 100.0 } else { 0.0 }
    ));
    out.push_str(&format!(
        "Metrics only (traces not sampled): median {:.0} µs CPU per request.\n\n",
        median(cpu_metrics_only)
    ));
    drop(off);
    drop(on);
    drop(metrics_only);
    out.push_str(&format!(
        "The sink received {} OTLP export requests ({} KiB) from the exporting servers.\n\n",
        seen.0.load(Ordering::Relaxed),
        seen.1.load(Ordering::Relaxed) / 1024
    ));

    // 2. Overload.
    let srv = spawn_server(
        &o.exe,
        &o.dir.join("overload.db"),
        Some(&sink),
        o.max_concurrency,
        server_cpu,
        &[],
    )
    .await?;
    load(&srv.url, o.base_rate, 3, None).await?; // warm-up
    let base = load(&srv.url, o.base_rate, o.secs, None).await?;
    let over = load(&srv.url, o.base_rate * 10.0, o.secs, None).await?;
    let shed = |r: &Report| {
        r.by_status.get("503").copied().unwrap_or(0) + r.by_status.get("429").copied().unwrap_or(0)
    };
    let other_5xx = |r: &Report| {
        r.by_status
            .iter()
            .filter(|(k, _)| k.starts_with('5') && k.as_str() != "503")
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    let ap99 = |r: &Report| r.admitted.value_at_quantile(0.99) as f64 / 1000.0;
    out.push_str(&format!(
        "## Overload: weighted mix, --max-concurrency {}, {} s per run\n\n\
         | load | offered req/s | completed | admitted | shed (429+503) | other 5xx | client errors | admitted p50 ms | admitted p99 ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        o.max_concurrency, o.secs
    ));
    for (name, r) in [("base", &base), ("10×", &over)] {
        let client_err: u64 = r
            .by_status
            .iter()
            .filter(|(k, _)| k.parse::<u16>().is_err())
            .map(|(_, v)| *v)
            .sum();
        out.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
            r.target_rate,
            r.completed,
            r.admitted.len(),
            shed(r),
            other_5xx(r),
            client_err,
            r.admitted.value_at_quantile(0.5) as f64 / 1000.0,
            ap99(r)
        ));
    }
    out.push_str(&format!(
        "\nAdmitted p99 under 10× overload is {:.2}× the unloaded p99 (target ≤ 2×).\n",
        ap99(&over) / ap99(&base).max(1e-9)
    ));
    drop(srv);
    Ok(out)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
