//! Open-model load generator: requests start on a fixed schedule (constant arrival rate),
//! whatever the server's response times, and each latency is measured from the request's
//! *intended* start time. That is the coordinated-omission correction of wrk2: when the server
//! stalls, the requests that should have been sent meanwhile are charged the stall, instead of
//! silently not being sent (a closed loop would also need `record_corrected_value`; an open
//! loop measured from the schedule does not). Latencies go into an HDR histogram (1 µs – 60 s,
//! 3 significant digits). The mix of endpoints is weighted like real catalog traffic, and its
//! shape ([`traffic`]) too: Zipf-skewed product popularity, bursts of writes to popular
//! products, an optional diurnal swing of the rate; the report splits product reads by how the
//! API's cache answered them ([`report`]).

pub mod report;
pub mod traffic;

pub use report::{CacheResult, EndpointCounts, Report};
pub use traffic::{Traffic, TrafficError};

use report::{MAX_LATENCY_MICROS, latency_histogram};
use traffic::{Arrival, Popularity, Schedule};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Requests allowed in flight; beyond it a scheduled request is counted as `client_overload`
    /// (and charged as an error) instead of letting the generator's own memory grow.
    pub max_in_flight: usize,
    /// API keys to spread traffic over (simulated client applications); the first also sends
    /// every write.
    pub users: usize,
    pub timeout: Duration,
    /// Instead of the mix, GET only this path; `{id}` becomes a uniformly random id in
    /// `1..=max_id` (benchmarks of one endpoint; no write bursts).
    pub only: Option<(String, i64)>,
    pub traffic: Traffic,
}

impl Options {
    pub fn new(target: String, rate: f64, duration: Duration) -> Self {
        Options {
            target,
            rate,
            duration,
            max_in_flight: 10_000,
            users: 8,
            timeout: Duration::from_secs(10),
            only: None,
            traffic: Traffic::default(),
        }
    }
}

/// Endpoint templates and their weights in the mix.
pub const MIX: &[(&str, &str, u32)] = &[
    ("GET", "/v1/products/{id}", 50),
    ("GET", "/v1/products", 15),
    ("GET", "/v1/products?include", 5),
    ("GET", "/v1/products/{id}/reviews", 8),
    ("GET", "/v1/products/{id}/recommendations", 12),
    ("GET", "/v1/categories", 3),
    ("GET", "/v1/stats", 3),
    ("POST", "/v1/products/{id}/reviews", 4),
];

struct Shared {
    hist: Histogram<u64>,
    admitted: Histogram<u64>,
    by_status: BTreeMap<String, u64>,
    by_endpoint: BTreeMap<String, EndpointCounts>,
    admitted_by_endpoint: BTreeMap<String, Histogram<u64>>,
    by_cache: BTreeMap<CacheResult, Histogram<u64>>,
}

/// Picks an endpoint index by weight.
pub fn pick(r: u32) -> usize {
    let total: u32 = MIX.iter().map(|m| m.2).sum();
    let mut x = r % total;
    for (i, m) in MIX.iter().enumerate() {
        if x < m.2 {
            return i;
        }
        x -= m.2;
    }
    0
}

async fn fetch_keys(client: &reqwest::Client, target: &str, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let r = client
            .post(format!("{target}/v1/auth/token"))
            .json(&json!({"username": "loadgen", "password": "loadgen"}))
            .send()
            .await;
        if let Ok(r) = r
            && let Ok(v) = r.json::<Value>().await
            && let Some(k) = v["api_key"].as_str()
        {
            keys.push(k.to_string());
        }
    }
    keys
}

/// One request to send: the endpoint (index into [`MIX`]), the product and a random number
/// for the rest of its parameters.
struct Request {
    idx: usize,
    id: i64,
    seq: u64,
    burst: bool,
}

/// Runs until `duration` elapses or `stop` resolves, then waits (up to the request timeout)
/// for requests in flight.
pub async fn run(opts: Options, stop: impl Future<Output = ()>) -> Result<Report, LoadgenError> {
    if !opts.rate.is_finite() || opts.rate <= 0.0 {
        return Err(LoadgenError::Options(
            "rate must be a positive number".into(),
        ));
    }
    opts.traffic.validate()?;
    let target = opts.target.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .timeout(opts.timeout)
        .pool_max_idle_per_host(1024)
        .build()?;
    let keys = Arc::new(fetch_keys(&client, &target, opts.users).await);
    let mut setup = BTreeMap::new();
    setup.insert("POST /v1/auth/token".to_string(), opts.users as u64);
    setup.insert("GET /v1/stats".to_string(), 1);
    let products = match client.get(format!("{target}/v1/stats")).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["data"]["totals"]["products"].as_i64())
            .unwrap_or(1000),
        Err(_) => 1000,
    }
    .max(1);
    let popularity = Popularity::new(products, opts.traffic.zipf_exponent)?;
    let mut schedule = Schedule::new(opts.rate, &opts.traffic, opts.only.is_none());
    let shared = Arc::new(Mutex::new(Shared {
        hist: latency_histogram(),
        admitted: latency_histogram(),
        by_status: BTreeMap::new(),
        by_endpoint: BTreeMap::new(),
        admitted_by_endpoint: BTreeMap::new(),
        by_cache: BTreeMap::new(),
    }));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(opts.max_in_flight.max(1)));
    let start = Instant::now();
    let end = start + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let (mut scheduled, mut burst_writes) = (0u64, 0u64);
    tokio::pin!(stop);
    loop {
        let (offset, kind) = schedule.next_arrival();
        let intended = start + traffic::seconds(offset);
        if intended >= end {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(intended) => {}
        }
        scheduled += 1;
        // Reap finished tasks so the set does not grow with the run length.
        while tasks.try_join_next().is_some() {}
        let r = {
            let mut rng = rand::rng();
            let id = popularity.sample(&mut rng);
            match kind {
                Arrival::Regular => Request {
                    idx: pick(rng.random()),
                    id,
                    seq: rng.random(),
                    burst: false,
                },
                Arrival::BurstWrite => Request {
                    idx: MIX.len() - 1,
                    id,
                    seq: rng.random(),
                    burst: true,
                },
            }
        };
        burst_writes += u64::from(r.burst);
        let (method, route, _) = MIX[r.idx];
        let only = opts.only.as_ref().map(|(p, max)| {
            p.replace(
                "{id}",
                &(1 + (r.seq as i64).rem_euclid((*max).max(1))).to_string(),
            )
        });
        let label = match &opts.only {
            Some((path, _)) => format!("GET {path}"),
            None => format!("{method} {}", route.split('?').next().unwrap_or(route)),
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            *s.by_status.entry("client_overload".into()).or_default() += 1;
            s.by_endpoint.entry(label).or_default().not_sent += 1;
            continue;
        };
        let client = client.clone();
        let target = target.clone();
        let keys = keys.clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            let Request { idx, id, seq, .. } = r;
            // Writes come from one client of the `users` (as in a catalog, few clients write),
            // reads from all: a client's reads go to the primary, past the cache, for a while
            // after its write (read-your-writes), which only the writer's reads should pay.
            let write = only.is_none() && idx == MIX.len() - 1;
            let key = (!keys.is_empty()).then(|| {
                let i = if write {
                    0
                } else {
                    (seq as usize) % keys.len()
                };
                keys[i].clone()
            });
            let req = match (only, idx) {
                (Some(path), _) => client.get(format!("{target}{path}")),
                (None, 0) => client.get(format!("{target}/v1/products/{id}")),
                (None, 1) => {
                    let sort = if seq % 2 == 0 { "created" } else { "price" };
                    let cat = if seq % 3 == 0 {
                        format!("&category={}", 1 + seq % 20)
                    } else {
                        String::new()
                    };
                    client.get(format!("{target}/v1/products?limit=20&sort={sort}{cat}"))
                }
                (None, 2) => client.get(format!(
                    "{target}/v1/products?limit=10&include=category,reviews"
                )),
                (None, 3) => client.get(format!("{target}/v1/products/{id}/reviews?limit=10")),
                (None, 4) => client.get(format!("{target}/v1/products/{id}/recommendations")),
                (None, 5) => client.get(format!("{target}/v1/categories")),
                (None, 6) => client.get(format!("{target}/v1/stats")),
                (None, _) => client
                    .post(format!("{target}/v1/products/{id}/reviews"))
                    .header("idempotency-key", format!("lg-{seq:016x}"))
                    .json(&json!({"rating": 1 + seq % 5, "body": "load generator review"})),
            };
            let req = match &key {
                Some(k) => req.bearer_auth(k),
                None => req,
            };
            let result = req.send().await;
            let status = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_string(),
                Err(e) if e.is_connect() => "connect".to_string(),
                Err(_) => "error".to_string(),
            };
            let cache = result.as_ref().ok().and_then(|r| {
                r.headers()
                    .get("x-cache")
                    .and_then(|v| v.to_str().ok())
                    .and_then(CacheResult::from_header)
            });
            // Drain the body so the connection is reused and the latency includes it.
            if let Ok(r) = result {
                let _ = r.bytes().await;
            }
            let micros = (intended.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_MICROS);
            let failed =
                !status.starts_with('2') && !status.starts_with('3') && !status.starts_with('4');
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            let _ = s.hist.record(micros);
            let admitted = status.starts_with('2')
                || status.starts_with('3')
                || (status.starts_with('4') && status != "429");
            if admitted {
                let _ = s.admitted.record(micros);
                let _ = s
                    .admitted_by_endpoint
                    .entry(label.clone())
                    .or_insert_with(latency_histogram)
                    .record(micros);
            }
            if let Some(c) = cache {
                let _ = s
                    .by_cache
                    .entry(c)
                    .or_insert_with(latency_histogram)
                    .record(micros);
            }
            *s.by_status.entry(status).or_default() += 1;
            let e = s.by_endpoint.entry(label).or_default();
            e.requests += 1;
            if failed {
                e.errors += 1;
            }
            drop(permit);
        });
    }
    let deadline = Instant::now() + opts.timeout;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let completed = s.hist.len();
    Ok(Report {
        scheduled,
        completed,
        elapsed,
        hist: s.hist.clone(),
        admitted: s.admitted.clone(),
        setup,
        by_status: s.by_status.clone(),
        by_endpoint: s.by_endpoint.clone(),
        admitted_by_endpoint: s.admitted_by_endpoint.clone(),
        by_cache: s.by_cache.clone(),
        burst_writes,
        target_rate: opts.rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_follows_weights() {
        let total: u32 = MIX.iter().map(|m| m.2).sum();
        let mut counts = vec![0u32; MIX.len()];
        for r in 0..total * 10 {
            counts[pick(r)] += 1;
        }
        for (i, m) in MIX.iter().enumerate() {
            assert_eq!(counts[i], m.2 * 10);
        }
    }
}
