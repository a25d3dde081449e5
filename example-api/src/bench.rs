//! Benchmarks of the targets, run against real server processes (this binary's `serve`)
//! so the load generator's CPU is not mixed into the server's:
//! 1. Telemetry overhead on a cached `GET /v1/products/{id}`: one server exporting OTLP/HTTP to
//!    a local sink, one with export off and one exporting metrics only, measured side by side
//!    and interleaved (the order rotates each round):
//!    a. throughput at saturation: a closed loop of keep-alive connections (a minimal HTTP/1.1
//!    client, so the generator costs far less per request than the server) — with `--pin` the
//!    server has one CPU to itself and the generator the others, so req/s is the server's
//!    capacity;
//!    b. latency at a fixed arrival rate (open model): p50/p99 and server CPU per request.
//!    The sink counts the spans it receives, so dropped spans would show.
//! 2. Overload: the weighted mix at a base rate, then at 10× that rate (open model), against the
//!    `serve` defaults (adaptive concurrency limit) and, for comparison, a fixed limit, both
//!    servers up at once and their base and overload phases interleaved over `--rounds`:
//!    admitted p99 versus the unloaded p99 of the same round, shed responses, and any other 5xx,
//!    with the server's CPU, the time other processes and the hypervisor took from its core,
//!    and the arrivals each of the limiter's rules shed in each phase.
//! 3. Rejection cost: the 10× rate against a server that sheds every arrival, for the CPU time
//!    of one 503 and so the most arrivals one CPU can turn away.

use crate::loadgen::{self, Options, Report};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::collections::BTreeMap;
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
    /// The fixed concurrency limit the default (adaptive) one is compared with.
    pub max_concurrency: usize,
    /// Keep-alive connections of the saturation runs.
    pub connections: usize,
    /// Run the telemetry benchmark.
    pub telemetry: bool,
    /// An older build whose servers join the saturation runs (before/after).
    pub baseline_exe: Option<PathBuf>,
    /// Run the overload benchmark.
    pub overload: bool,
    /// Pin servers to the last CPU (`taskset`) and the load generator to the others.
    pub pin: bool,
    /// Trace sampling ratio of the "sampled" server.
    pub sample_ratio: f64,
}

struct Server {
    child: Child,
    url: String,
    /// The loopback admin endpoint (`/admin/state` counts shed arrivals per rule).
    admin: String,
    pid: u32,
}

/// Export requests, bytes and spans received by the sink.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    bytes: AtomicU64,
    spans: AtomicU64,
}

/// Accepts any OTLP/HTTP export and answers an empty (valid) protobuf response; counts the
/// export requests, bytes and spans it receives.
async fn otlp_sink(seen: Arc<Seen>) -> Result<String, BenchError> {
    let app = Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.requests.fetch_add(1, Ordering::Relaxed);
            seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            if uri.path() == "/v1/traces" {
                seen.spans
                    .fetch_add(count_spans(&body).unwrap_or(0), Ordering::Relaxed);
            }
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

/// Reads one protobuf varint at `*i`.
fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, body)` for each length-delimited field of a message, skipping the others.
fn for_each_len_field(b: &[u8], mut f: impl FnMut(u64, &[u8])) -> Option<()> {
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        match key & 7 {
            0 => {
                read_varint(b, &mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let len = read_varint(b, &mut i)? as usize;
                f(key >> 3, b.get(i..i + len)?);
                i += len;
            }
            _ => return None,
        }
    }
    Some(())
}

/// Spans in an `ExportTraceServiceRequest` (resource_spans → scope_spans → spans), found by
/// walking the wire format without decoding it (the sink shares the generator's CPUs).
fn count_spans(b: &[u8]) -> Option<u64> {
    let mut n = 0;
    for_each_len_field(b, |f, rs| {
        if f == 1 {
            let _ = for_each_len_field(rs, |f, ss| {
                if f == 2 {
                    let _ = for_each_len_field(ss, |f, _| n += u64::from(f == 2));
                }
            });
        }
    })?;
    Some(n)
}

async fn spawn_server(
    exe: &Path,
    db: &Path,
    otlp: Option<&str>,
    concurrency: &[&str],
    pin: Option<usize>,
    extra_env: &[(&str, &str)],
) -> Result<Server, BenchError> {
    // A fresh database per server: each run starts from the same seeded catalog, not from the
    // reviews the previous runs wrote.
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
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
    .args(concurrency)
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
    let mut announced = async |prefix: &str| -> Result<String, BenchError> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| BenchError::NoAddress)??
            .ok_or(BenchError::NoAddress)?;
        let addr = line.strip_prefix(prefix).ok_or(BenchError::NoAddress)?;
        Ok(addr.to_string())
    };
    let url = announced("listening on ").await?;
    let admin = announced("admin on ").await?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        url,
        admin,
        pid,
    })
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

/// Reads one HTTP/1.1 response (headers, then `Content-Length` bytes of body) and returns its
/// status. Our server always sends a length, and requests are not pipelined.
async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    use tokio::io::AsyncReadExt;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
    buf.clear();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad())?;
    let status: u16 = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(status)
}

/// Closed loop: `conns` keep-alive connections each send `GET /v1/products/{id}` (ids 1..=100,
/// cached after warm-up) back to back for `secs`. Returns (200 responses, other responses).
async fn saturate(url: &str, conns: usize, secs: u64) -> Result<(u64, u64), BenchError> {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let addr = addr.clone();
        set.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(8192);
            let (mut ok, mut other) = (0u64, 0u64);
            let mut id = c as u64;
            while tokio::time::Instant::now() < deadline {
                id = id % 100 + 1;
                let req = format!("GET /v1/products/{id} HTTP/1.1\r\nHost: bench\r\n\r\n");
                s.write_all(req.as_bytes()).await?;
                if read_response(&mut s, &mut buf).await? == 200 {
                    ok += 1;
                } else {
                    other += 1;
                }
            }
            Ok::<_, std::io::Error>((ok, other))
        });
    }
    let (mut ok, mut other) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (o, x) = r.map_err(std::io::Error::other)??;
        ok += o;
        other += x;
    }
    Ok((ok, other))
}

fn ms(r: &Report, q: f64) -> f64 {
    r.hist.value_at_quantile(q) as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
    let server_cpu = (o.pin && cpus > 1).then(|| cpus - 1);
    if server_cpu.is_some() {
        pin_self(cpus - 1);
    }
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

    if o.telemetry {
        telemetry_overhead(&o, server_cpu, &sink, &seen, &mut out).await?;
    }
    if o.overload {
        overload(&o, server_cpu, &sink, &mut out).await?;
    }
    Ok(out)
}

async fn telemetry_overhead(
    o: &BenchOptions,
    server_cpu: Option<usize>,
    sink: &str,
    seen: &Seen,
    out: &mut String,
) -> Result<(), BenchError> {
    // 1. Telemetry overhead on a cached GET. The concurrency limit is out of the way here.
    let unlimited = ["--max-concurrency", "100000", "--fixed-concurrency"];
    let off = spawn_server(
        &o.exe,
        &o.dir.join("off.db"),
        None,
        &unlimited,
        server_cpu,
        &[],
    )
    .await?;
    let on = spawn_server(
        &o.exe,
        &o.dir.join("on.db"),
        Some(sink),
        &unlimited,
        server_cpu,
        &[],
    )
    .await?;
    // Metrics exported, traces not sampled: splits the cost between the two signals.
    let metrics_only = spawn_server(
        &o.exe,
        &o.dir.join("metrics-only.db"),
        Some(sink),
        &unlimited,
        server_cpu,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )
    .await?;
    // Traces sampled as in production (consistent probability sampling, weighted by redline).
    let ratio = o.sample_ratio.to_string();
    let sampled = spawn_server(
        &o.exe,
        &o.dir.join("sampled.db"),
        Some(&format!("{sink}/sampled")),
        &unlimited,
        server_cpu,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.as_str()),
        ],
    )
    .await?;
    let sampled_name = format!("on, traces sampled {}", o.sample_ratio);
    let only = Some(("/v1/products/{id}".to_string(), 100));
    for s in [&off, &on, &metrics_only, &sampled] {
        load(&s.url, o.rate, 3, only.clone()).await?; // warm-up: fills the L1 cache
        saturate(&s.url, o.connections, 2).await?;
    }
    // An older build for a before/after comparison (`--baseline-exe`); it exports under another
    // path so the sink's span count stays that of this build's "on" server.
    let mut baseline = Vec::new();
    if let Some(exe) = &o.baseline_exe {
        let old_sink = format!("{sink}/baseline");
        for (name, otlp) in [
            ("off, baseline build", None),
            ("on, baseline build", Some(old_sink.as_str())),
        ] {
            let s = spawn_server(
                exe,
                &o.dir.join(format!("baseline-{}.db", baseline.len())),
                otlp,
                &["--max-concurrency", "100000"],
                server_cpu,
                &[],
            )
            .await?;
            load(&s.url, o.rate, 3, only.clone()).await?;
            saturate(&s.url, o.connections, 2).await?;
            baseline.push((name, s));
        }
    }
    let mut servers: Vec<(&str, &Server)> = vec![
        ("off", &off),
        ("on", &on),
        ("metrics only", &metrics_only),
        (&sampled_name, &sampled),
    ];
    servers.extend(baseline.iter().map(|(n, s)| (*n, s)));
    let n = servers.len();

    // 1a. Saturation.
    out.push_str(&format!(
        "## Telemetry on vs off: cached `GET /v1/products/{{id}}` at saturation ({} keep-alive connections, \
         closed loop), {} s per run\n\n\
         | round | telemetry | req/s | non-200 | server CPU µs/req |\n|---|---|---|---|---|\n",
        o.connections, o.secs
    ));
    let mut sat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut sat_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let (spans0, served_on0) = (seen.spans.load(Ordering::Relaxed), 0u64);
    let mut served_on = served_on0;
    for round in 0..o.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let (name, s) = servers[i];
            let c0 = cpu_secs(s.pid);
            let t0 = std::time::Instant::now();
            let (ok, other) = saturate(&s.url, o.connections, o.secs).await?;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = (cpu_secs(s.pid) - c0) / (ok + other).max(1) as f64 * 1e6;
            let rate = (ok + other) as f64 / secs;
            if name == "on" {
                served_on += ok + other;
            }
            out.push_str(&format!(
                "| {round} | {name} | {rate:.0} | {other} | {cpu:.1} |\n"
            ));
            sat[i].push(rate);
            sat_cpu[i].push(cpu);
        }
    }
    // Let the last batches reach the sink before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let spans = seen.spans.load(Ordering::Relaxed) - spans0;
    let rates: Vec<f64> = sat.into_iter().map(median).collect();
    let cpus: Vec<f64> = sat_cpu.into_iter().map(median).collect();
    let (r_off, r_on, r_m, r_s) = (rates[0], rates[1], rates[2], rates[3]);
    let (c_off, c_on, c_m, c_s) = (cpus[0], cpus[1], cpus[2], cpus[3]);
    let loss = |r: f64| (1.0 - r / r_off.max(1e-9)) * 100.0;
    out.push_str(&format!(
        "\nMedians: **every request traced: {r_on:.0} (on) vs {r_off:.0} (off) req/s → throughput loss {:.1} %**; \
         **traces sampled {}: {r_s:.0} req/s → {:.1} %**; metrics only: {r_m:.0} req/s, {:.1} %. \
         Server CPU per request {c_on:.1} (on), {c_s:.1} (sampled), {c_m:.1} (metrics only) vs {c_off:.1} µs (off). \
         Spans received from the telemetry-on server during these runs: {spans} for {served_on} requests \
         ({:.2} per request; export is asynchronous, so a few may arrive after the count).\n\n",
        loss(r_on),
        o.sample_ratio,
        loss(r_s),
        loss(r_m),
        spans as f64 / served_on.max(1) as f64,
    ));
    if n == 6 {
        out.push_str(&format!(
            "Baseline build (`--baseline-exe`), same runs: {:.0} (on) vs {:.0} (off) req/s → throughput loss **{:.1} %**; server CPU per request {:.1} vs {:.1} µs.\n\n",
            rates[5],
            rates[4],
            (1.0 - rates[5] / rates[4].max(1e-9)) * 100.0,
            cpus[5],
            cpus[4],
        ));
    }
    drop(servers);
    drop(baseline);

    // 1b. Fixed arrival rate.
    out.push_str(&format!(
        "## Telemetry on vs off: cached `GET /v1/products/{{id}}` at {:.0} req/s (open model), {} s per run\n\n\
         | round | telemetry | achieved req/s | p50 ms | p99 ms | server CPU µs/req |\n|---|---|---|---|---|---|\n",
        o.rate, o.secs
    ));
    let mut p99s: [Vec<f64>; 4] = Default::default();
    let mut cpus_fixed: [Vec<f64>; 4] = Default::default();
    let servers = [
        ("off", &off),
        ("on", &on),
        ("metrics only", &metrics_only),
        (sampled_name.as_str(), &sampled),
    ];
    for round in 0..o.rounds {
        for k in 0..4 {
            let i = (k + round) % 4;
            let (name, s) = servers[i];
            let c0 = cpu_secs(s.pid);
            let r = load(&s.url, o.rate, o.secs, only.clone()).await?;
            let cpu = (cpu_secs(s.pid) - c0) / r.completed.max(1) as f64 * 1e6;
            out.push_str(&format!(
                "| {round} | {name} | {:.0} | {:.2} | {:.2} | {cpu:.0} |\n",
                r.achieved_rate(),
                ms(&r, 0.5),
                ms(&r, 0.99),
            ));
            p99s[i].push(ms(&r, 0.99));
            cpus_fixed[i].push(cpu);
        }
    }
    let [p_off, p_on, p_m, p_s] = p99s.map(median);
    let [f_off, f_on, f_m, f_s] = cpus_fixed.map(median);
    out.push_str(&format!(
        "\nMedians: **p99 {p_on:.2} (on) vs {p_off:.2} (off) ms → added {:+.2} ms**; sampled {p_s:.2} ms \
         ({:+.2}); metrics only {p_m:.2} ms; server CPU per request {f_on:.0} (on), {f_s:.0} (sampled), \
         {f_m:.0} (metrics only) vs {f_off:.0} µs (off).\n\n",
        p_on - p_off,
        p_s - p_off
    ));
    drop(off);
    drop(on);
    drop(metrics_only);
    drop(sampled);
    out.push_str(&format!(
        "The sink received {} OTLP export requests ({} KiB, {} spans) in all.\n\n",
        seen.requests.load(Ordering::Relaxed),
        seen.bytes.load(Ordering::Relaxed) / 1024,
        seen.spans.load(Ordering::Relaxed),
    ));
    Ok(())
}

async fn overload(
    o: &BenchOptions,
    server_cpu: Option<usize>,
    sink: &str,
    out: &mut String,
) -> Result<(), BenchError> {
    // 2. Overload: the serve defaults (adaptive limit) against a fixed limit, both servers up at
    // once and their phases interleaved round by round, so that a noisy spell of the shared
    // machine falls on both and on base and overload phases alike.
    let fixed = o.max_concurrency.to_string();
    let configs: [(String, Vec<&str>); 2] = [
        ("default (adaptive)".to_string(), vec![]),
        (
            format!("fixed {fixed}"),
            vec!["--max-concurrency", fixed.as_str(), "--fixed-concurrency"],
        ),
    ];
    out.push_str(&format!(
        "## Overload: weighted mix, base {:.0} req/s then 10×, {} s per phase, {} interleaved rounds\n\n\
         | limit | round | load | offered req/s | completed | admitted | shed (429+503) | other 5xx | client errors | admitted p50 ms | admitted p99 ms | server CPU | others on its core | steal | client CPU | shed by rule |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        o.base_rate, o.secs, o.rounds
    ));
    let mut servers = Vec::new();
    for (i, (_, args)) in configs.iter().enumerate() {
        let srv = spawn_server(
            &o.exe,
            &o.dir.join(format!("overload-{i}.db")),
            Some(sink),
            args,
            server_cpu,
            &[],
        )
        .await?;
        load(&srv.url, o.base_rate, 3, None).await?; // warm-up
        servers.push(srv);
    }
    let mut pairs: Vec<Vec<(Phase, Phase)>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..o.rounds {
        for (srv, runs) in servers.iter().zip(&mut pairs) {
            let base = load_phase(srv, server_cpu, o.base_rate, o.secs).await?;
            let over = load_phase(srv, server_cpu, o.base_rate * 10.0, o.secs).await?;
            runs.push((base, over));
        }
    }
    drop(servers);
    let mut verdicts = String::new();
    for ((label, _), runs) in configs.iter().zip(&pairs) {
        for (round, (base, over)) in runs.iter().enumerate() {
            for (name, phase) in [("base", base), ("10×", over)] {
                out.push_str(&overload_row(label, round + 1, name, phase));
            }
        }
        let ratios: Vec<f64> = runs
            .iter()
            .map(|(base, over)| admitted_p99(&over.report) / admitted_p99(&base.report).max(1e-9))
            .collect();
        let median_ratio = median(ratios.clone());
        // The same comparison over every round's requests at once: less at the mercy of one
        // round's noise than any single ratio.
        let pooled = |pick: fn(&(Phase, Phase)) -> &Phase| {
            let mut all = hdrhistogram::Histogram::new_from(&runs[0].0.report.admitted);
            for run in runs {
                let _ = all.add(&pick(run).report.admitted);
            }
            all.value_at_quantile(0.99) as f64 / 1000.0
        };
        let (pooled_base, pooled_over) = (pooled(|r| &r.0), pooled(|r| &r.1));
        let listed = ratios
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", ");
        verdicts.push_str(&format!(
            "Limit {label}: admitted p99 under 10× overload over the unloaded p99 of the same round: \
             {listed}; median **{median_ratio:.2}×** (target ≤ 2×). Pooled over the rounds: \
             {pooled_over:.2} ms against {pooled_base:.2} ms, **{:.2}×**.\n",
            pooled_over / pooled_base.max(1e-9)
        ));
        if let Some((base, over)) = runs
            .iter()
            .zip(&ratios)
            .min_by(|(_, a), (_, b)| {
                (**a - median_ratio)
                    .abs()
                    .total_cmp(&(**b - median_ratio).abs())
            })
            .map(|(run, _)| run)
        {
            verdicts.push_str(&format!(
                "Admitted p99 by endpoint in the median round, at base: {}; at 10×: {}\n\n",
                slowest_endpoints(&base.report),
                slowest_endpoints(&over.report)
            ));
        }
    }
    out.push('\n');
    out.push_str(&verdicts);
    rejection_cost(o, server_cpu, sink, out).await
}

fn admitted_p99(r: &Report) -> f64 {
    r.admitted.value_at_quantile(0.99) as f64 / 1000.0
}

/// One row of the overload table.
fn overload_row(label: &str, round: usize, load: &str, phase: &Phase) -> String {
    let r = &phase.report;
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 {
        r.by_status
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| *v)
            .sum()
    };
    let shed = count(&|k| k == "503" || k == "429");
    let other_5xx = count(&|k| k.starts_with('5') && k != "503");
    let client_err = count(&|k| k.parse::<u16>().is_err());
    let percent =
        |share: Option<f64>| share.map_or("–".to_string(), |s| format!("{:.0} %", s * 100.0));
    let by_rule = phase
        .shed_by_rule
        .iter()
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "| {label} | {round} | {load} | {:.0} | {} | {} | {shed} | {other_5xx} | {client_err} | {:.2} | {:.2} | {:.0} % | {} | {} | {:.0} % | {by_rule} |\n",
        r.target_rate,
        r.completed,
        r.admitted.len(),
        r.admitted.value_at_quantile(0.5) as f64 / 1000.0,
        admitted_p99(r),
        phase.cpu * 100.0,
        percent(phase.core.map(|c| c.others)),
        percent(phase.core.map(|c| c.steal)),
        phase.client_cpu * 100.0,
    )
}

/// What the server spent and shed during one load phase.
struct Phase {
    report: Report,
    /// The server's CPU time over the phase, as a share of one CPU's wall time.
    cpu: f64,
    /// Who else used the server's CPU (when it is pinned to one).
    core: Option<CoreShares>,
    /// This process's CPU time (load generator and OTLP sink) as a share of one CPU: near
    /// its CPUs' count, the client itself is late and its lateness counts as latency.
    client_cpu: f64,
    /// Arrivals shed by each of the limiter's rules, as `/admin/state` counts them.
    shed_by_rule: BTreeMap<String, u64>,
}

/// Shares of one CPU's time over a phase that the server did not get: other processes' work
/// and the hypervisor's steal. Either one leaves the server less of the core than its CPU
/// rule assumes, which is what a noisy spell of a shared machine looks like. `/proc/stat`
/// counts in clock ticks, the server's own time is exact: at light load "others" is off by up
/// to some 15 % of the core; steal is exact enough to compare phases.
#[derive(Clone, Copy)]
struct CoreShares {
    others: f64,
    steal: f64,
}

/// A CPU's busy, steal and total jiffies from `/proc/stat`.
fn core_jiffies(cpu: usize) -> Option<[u64; 3]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = f.try_into().ok()?;
    let busy = user + nice + system + irq + softirq;
    Some([busy, steal, busy + steal + idle + iowait])
}

/// Runs a load against `srv` and measures the server's side of it.
async fn load_phase(
    srv: &Server,
    server_cpu: Option<usize>,
    rate: f64,
    secs: u64,
) -> Result<Phase, BenchError> {
    let core_before = server_cpu.and_then(core_jiffies);
    let (shed_before, cpu_before) = (shed_by_rule(srv).await, cpu_secs(srv.pid));
    let client_before = cpu_secs(std::process::id());
    let report = load(&srv.url, rate, secs, None).await?;
    let cpu = (cpu_secs(srv.pid) - cpu_before) / secs as f64;
    let client_cpu = (cpu_secs(std::process::id()) - client_before) / secs as f64;
    let core_after = server_cpu.and_then(core_jiffies);
    let server_jiffies = (cpu * secs as f64 * 100.0).round();
    let core = core_before.zip(core_after).and_then(|(b, a)| {
        let total = a[2].saturating_sub(b[2]) as f64;
        (total > 0.0).then(|| CoreShares {
            others: ((a[0].saturating_sub(b[0]) as f64 - server_jiffies) / total).max(0.0),
            steal: a[1].saturating_sub(b[1]) as f64 / total,
        })
    });
    let shed_by_rule = shed_by_rule(srv)
        .await
        .into_iter()
        .map(|(rule, n)| {
            let before = shed_before.get(&rule).copied().unwrap_or(0);
            (rule, n.saturating_sub(before))
        })
        .collect();
    Ok(Phase {
        report,
        cpu,
        core,
        client_cpu,
        shed_by_rule,
    })
}

/// The server's shed arrivals so far per rule (empty if its admin endpoint does not answer).
async fn shed_by_rule(srv: &Server) -> BTreeMap<String, u64> {
    let state: Option<serde_json::Value> = async {
        reqwest::get(format!("{}/admin/state", srv.admin))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    state
        .as_ref()
        .and_then(|s| s["shed"]["rejected"].as_object())
        .map(|rules| {
            rules
                .iter()
                .map(|(rule, n)| (rule.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// What shedding the whole 10× load costs: a server whose only permit is held (a POST whose
/// body never comes, so its handler waits) answers every arrival with 503, and its CPU time per
/// request is the price of a rejection, whose inverse is the most arrivals one CPU can turn
/// away. Once the overload nears that rate, rejecting alone saturates the server and arrivals
/// wait in the socket backlog before any limit sees them: shedding has to move in front of the
/// process (a proxy's connection or rate limit).
async fn rejection_cost(
    o: &BenchOptions,
    server_cpu: Option<usize>,
    sink: &str,
    out: &mut String,
) -> Result<(), BenchError> {
    use tokio::io::AsyncWriteExt;
    let srv = spawn_server(
        &o.exe,
        &o.dir.join("rejection.db"),
        Some(sink),
        &["--max-concurrency", "1", "--fixed-concurrency"],
        server_cpu,
        &[],
    )
    .await?;
    let mut holder = tokio::net::TcpStream::connect(srv.url.trim_start_matches("http://")).await?;
    holder
        .write_all(
            b"POST /v1/products HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n",
        )
        .await?;
    let rate = o.base_rate * 10.0;
    // Until the held request has its permit, some arrivals are still admitted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = load(&srv.url, 50.0, 1, None).await?;
        if probe.by_status.get("503") == Some(&probe.completed)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    let Phase { report: r, cpu, .. } = load_phase(&srv, server_cpu, rate, o.secs).await?;
    drop(holder);
    drop(srv);
    let shed = r.by_status.get("503").copied().unwrap_or(0);
    let micros = cpu * o.secs as f64 / r.completed.max(1) as f64 * 1e6;
    out.push_str(&format!(
        "\n## Rejection cost: every arrival shed, {rate:.0} req/s for {} s\n\n\
         {shed} of {} responses were 503. Server CPU **{:.0} %** of a CPU, **{micros:.1} µs per rejection**: \
         one CPU turns away at most about {:.0} req/s, so an overload nearing that rate must be shed in front \
         of the process.\n",
        o.secs,
        r.completed,
        cpu * 100.0,
        1e6 / micros.max(1e-3),
    ));
    Ok(())
}

/// The endpoints' admitted p99s, slowest first (`GET /v1/stats 12.3 ms, …`): which route a
/// tail comes from.
fn slowest_endpoints(r: &Report) -> String {
    let mut p99s: Vec<(f64, &str)> = r
        .admitted_by_endpoint
        .iter()
        .map(|(k, h)| (h.value_at_quantile(0.99) as f64 / 1000.0, k.as_str()))
        .collect();
    p99s.sort_by(|a, b| b.0.total_cmp(&a.0));
    p99s.iter()
        .map(|(ms, k)| format!("{k} {ms:.2} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
