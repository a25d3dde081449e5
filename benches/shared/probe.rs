//! What the benchmarks read from the systems under test: CPU and memory from /proc (one-off
//! reads and a 100 ms RSS sampler), redline's `/metrics`, waits for its ingest queue and store
//! writer to settle, timed HTTP reads, and the exactness check — spans counted in
//! `GET /api/v1/services` against spans acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::grpc_load::Counts;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

// The /proc helpers and the median are shared with every benchmark (`host.rs`).
pub use crate::host::{cpu_seconds, median};

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// Memory of a process from /proc/PID/status, in MiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rss {
    /// VmRSS: resident now.
    pub rss: f64,
    /// VmHWM: the most resident since the process started.
    pub hwm: f64,
    /// RssAnon: heap and stacks (what a leak grows).
    pub anon: f64,
    /// RssFile: mapped files (redline maps its database for reads; reclaimable).
    pub file: f64,
}

pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some(Rss {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:").unwrap_or(0.0),
        file: field("RssFile:").unwrap_or(0.0),
    })
}

/// (VmRSS, VmHWM) in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    rss(pid).map(|r| (r.rss, r.hwm))
}

/// Samples the RSS of some processes every `every` in a background task, until dropped.
/// RSS readings per process: seconds since the sampler started, and the reading.
type Samples = Arc<Mutex<HashMap<u32, Vec<(f64, Rss)>>>>;

pub struct RssSampler {
    started: Instant,
    samples: Samples,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: &[u32], every: Duration) -> RssSampler {
        let started = Instant::now();
        let samples: Samples = Arc::default();
        let (pids, shared) = (pids.to_vec(), samples.clone());
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let at = started.elapsed().as_secs_f64();
                for pid in &pids {
                    if let Some(r) = rss(*pid) {
                        shared
                            .lock()
                            .unwrap()
                            .entry(*pid)
                            .or_default()
                            .push((at, r));
                    }
                }
            }
        });
        RssSampler {
            started,
            samples,
            task,
        }
    }

    /// The highest VmRSS sampled for `pid`, in MiB.
    pub fn peak(&self, pid: u32) -> f64 {
        self.samples(pid)
            .iter()
            .map(|(_, r)| r.rss)
            .fold(0.0, f64::max)
    }

    /// Every sample of `pid`: seconds since the sampler started, and the reading.
    pub fn samples(&self, pid: u32) -> Vec<(f64, Rss)> {
        self.samples
            .lock()
            .unwrap()
            .get(&pid)
            .cloned()
            .unwrap_or_default()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn file_mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}

/// redline's database file and its WAL in a data directory, in MiB.
pub fn database_mib(dir: &std::path::Path) -> (f64, f64) {
    (
        file_mib(&dir.join("redline.db")),
        file_mib(&dir.join("redline.db-wal")),
    )
}

// ---------------------------------------------------------------------------------------------
// redline's /metrics
// ---------------------------------------------------------------------------------------------

pub async fn prometheus(web: SocketAddr) -> Result<HashMap<String, f64>> {
    let text = reqwest::get(format!("http://{web}/metrics"))
        .await?
        .text()
        .await?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

pub fn metric(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

/// Words that mark a counter of things redline did not keep or had to repair.
const LOSS_WORDS: &[&str] = &[
    "dropped",
    "rejected",
    "refused",
    "lost",
    "shed",
    "skipped",
    "truncated",
    "invalid",
    "overflow",
    "failures",
    "restarts",
    "panics",
    "clock_skew",
];

/// Prints every `redline_*` series of `/metrics` whose name says something was dropped,
/// rejected, lost, truncated, … (found by name, so counters added to redline later show up
/// too), and `redline_traces_dropped_for_budget_total` always.
pub async fn print_loss_counters(web: SocketAddr, indent: &str) {
    let Ok(m) = prometheus(web).await else {
        println!("{indent}/metrics: unreadable");
        return;
    };
    let mut shown: BTreeMap<&str, f64> = m
        .iter()
        .filter(|(name, _)| {
            let base = name.split('{').next().unwrap_or(name);
            base.starts_with("redline_")
                && !name.contains("quantile=")
                && !base.ends_with("_bucket")
                && LOSS_WORDS.iter().any(|w| base.contains(w))
        })
        .map(|(name, value)| (name.as_str(), *value))
        .collect();
    let budget = "redline_traces_dropped_for_budget_total";
    shown.entry(budget).or_insert(metric(&m, budget));
    let line: Vec<String> = shown
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    println!("{indent}/metrics: {}", line.join(", "));
}

/// Waits until redline's store writer has written no RED rows for `quiet` (a fill's backlog is
/// stored), at most `limit`; returns how long that took.
pub async fn wait_for_idle_writer(web: SocketAddr, quiet: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    let rows = || async {
        prometheus(web)
            .await
            .map(|m| metric(&m, "redline_store_rows_written_total{kind=\"red\"}"))
            .unwrap_or(0.0)
    };
    let mut last = rows().await;
    let mut since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rows().await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    started.elapsed()
}

/// Waits until redline's ingest queue is empty (or `limit` passes); returns its depth.
pub async fn wait_for_empty_queue(web: SocketAddr, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let depth = prometheus(web)
            .await
            .map(|m| metric(&m, "redline_ingest_queue_items"))
            .unwrap_or(0.0);
        if depth == 0.0 || Instant::now() > deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Timed reads
// ---------------------------------------------------------------------------------------------

/// Median, min and max of `n` sequential GETs of `url`, and redline's CPU per request.
pub struct QueryTimes {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    pub cpu_ms: f64,
}

impl std::fmt::Display for QueryTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.1} ms, min {:.1} ms, max {:.1} ms over {} requests; server cpu per request {:.1} ms",
            self.median, self.min, self.max, self.n, self.cpu_ms
        )
    }
}

pub async fn time_queries(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    pid: u32,
) -> Result<QueryTimes> {
    let mut times = Vec::new();
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    for _ in 0..n {
        let t = Instant::now();
        let response = client.get(url).send().await?;
        let status = response.status();
        let _ = response.bytes().await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            return Err(format!("query answered {status}").into());
        }
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(QueryTimes {
        median: median(&mut times),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        n: sorted.len(),
        cpu_ms: cpu / sorted.len() as f64 * 1e3,
    })
}

/// One GET with a deadline: Ok(status, seconds) or why it failed.
pub async fn timed_get(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> Result<(u16, f64), String> {
    let started = Instant::now();
    let read = async {
        let response = client.get(url).send().await?;
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok::<u16, reqwest::Error>(status)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(status)) => Ok((status, started.elapsed().as_secs_f64())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:.0} s", limit.as_secs_f64())),
    }
}

// ---------------------------------------------------------------------------------------------
// Exactness
// ---------------------------------------------------------------------------------------------

/// Spans counted by redline (`requests` of span-sourced services) against spans sent.
pub struct Exactness {
    pub counted: u64,
    pub sent: Counts,
    pub by_service: BTreeMap<String, u64>,
}

impl Exactness {
    /// Every acknowledged span counted, and none that was refused or rejected. Requests of
    /// unknown fate (timed out) may or may not be counted.
    pub fn exact(&self) -> bool {
        self.counted >= self.sent.acknowledged
            && self.counted <= self.sent.acknowledged + self.sent.unknown
    }

    pub fn print(&self, indent: &str) {
        let acknowledged = self.sent.acknowledged;
        let pct = if acknowledged == 0 {
            100.0
        } else {
            self.counted as f64 / acknowledged as f64 * 100.0
        };
        println!(
            "{indent}exactness: counted {} of {} acknowledged ({pct:.3} %){} — {}",
            self.counted,
            acknowledged,
            if self.sent.unknown > 0 {
                format!(
                    ", plus {} spans of unknown fate (timed out: may be counted)",
                    self.sent.unknown
                )
            } else {
                String::new()
            },
            if self.exact() {
                "exact".to_string()
            } else {
                format!(
                    "MISMATCH: {:+} spans — RED is NOT exact for acknowledged spans",
                    self.counted as i64 - acknowledged as i64
                )
            }
        );
        if !self.exact() || self.by_service.len() > 1 {
            let parts: Vec<String> = self
                .by_service
                .iter()
                .map(|(service, n)| format!("{} {n}", shorten(service)))
                .collect();
            println!("{indent}  counted per service: {}", parts.join(", "));
        }
    }
}

/// A service name for printing: long ones (hostile input) shortened.
pub fn shorten(name: &str) -> String {
    if name.len() <= 40 {
        return name.to_string();
    }
    let head: String = name.chars().take(24).collect();
    format!("{head}…({} bytes)", name.len())
}

/// Waits until redline has applied and stored what it acknowledged, then compares
/// `GET /api/v1/services?since=…` with `sent`.
pub async fn exactness(web: SocketAddr, since: &str, sent: Counts) -> Result<Exactness> {
    let depth = wait_for_empty_queue(web, Duration::from_secs(120)).await;
    if depth > 0.0 {
        println!("  (ingest queue still holds {depth} items after 120 s)");
    }
    wait_for_idle_writer(web, Duration::from_secs(3), Duration::from_secs(120)).await;
    let url = format!("http://{web}/api/v1/services?since={since}");
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}").into());
    }
    let body: serde_json::Value = response.json().await?;
    let mut by_service = BTreeMap::new();
    for service in body.as_array().ok_or("services: not a JSON array")? {
        if service["source"].as_str() == Some("spans") {
            let name = service["service"].as_str().unwrap_or_default().to_string();
            *by_service.entry(name).or_insert(0) += service["requests"].as_u64().unwrap_or(0);
        }
    }
    Ok(Exactness {
        counted: by_service.values().sum(),
        sent,
        by_service,
    })
}
