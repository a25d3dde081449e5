//! What a run measured: latencies (HDR histograms, 1 µs – 60 s, 3 significant digits) overall,
//! of admitted requests, per endpoint and per cache result (the API's `X-Cache` header), counts
//! by status and endpoint, and its rendering as text or JSON.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy)]
pub struct EndpointCounts {
    /// Requests sent (what the server, and redline, can have seen).
    pub requests: u64,
    /// Sent requests that failed: 5xx or a transport failure.
    pub errors: u64,
    /// Scheduled but never sent because `max_in_flight` was reached (charged as errors in
    /// `by_status` as `client_overload`, but invisible to the server).
    pub not_sent: u64,
}

/// How the API's product cache answered a read, from its `X-Cache` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheResult {
    /// `hit` (this instance's L1) or `hit-l2` (the shared Redis level).
    Hit,
    /// `miss`: loaded from the database.
    Miss,
    /// `bypass`: the client had just written, so the read went to the primary.
    Bypass,
}

impl CacheResult {
    pub fn from_header(v: &str) -> Option<CacheResult> {
        match v {
            "hit" | "hit-l2" => Some(CacheResult::Hit),
            "miss" => Some(CacheResult::Miss),
            "bypass" => Some(CacheResult::Bypass),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Latencies above this are recorded as this (the histogram's upper bound, 60 s).
pub(super) const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// A histogram of latencies in µs, 1 µs – 60 s, 3 significant digits.
pub(super) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid histogram bounds")
}

/// The outcome of a run.
pub struct Report {
    pub scheduled: u64,
    pub completed: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// Latencies of requests the server admitted (everything except 429, 503 and failures).
    pub admitted: Histogram<u64>,
    /// Count per status code (`"200"`) or client-side failure (`"timeout"`, `"connect"`,
    /// `"client_overload"`).
    pub by_status: BTreeMap<String, u64>,
    /// Requests and errors (5xx and transport failures) per `METHOD /route/{template}`.
    pub by_endpoint: BTreeMap<String, EndpointCounts>,
    /// Latencies of admitted requests per endpoint: which route a tail comes from.
    pub admitted_by_endpoint: BTreeMap<String, Histogram<u64>>,
    /// Latencies of the responses that said how the product cache answered them, by result.
    pub by_cache: BTreeMap<CacheResult, Histogram<u64>>,
    /// Requests sent before the measured run (API keys, catalog size), per endpoint, so totals
    /// can be compared with what the server (or redline) counted.
    pub setup: BTreeMap<String, u64>,
    /// Writes sent in bursts (counted in `by_endpoint` too).
    pub burst_writes: u64,
    pub target_rate: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Report {
    pub fn achieved_rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Responses the cache answered with `r`.
    pub fn cache_count(&self, r: CacheResult) -> u64 {
        self.by_cache.get(&r).map_or(0, Histogram::len)
    }

    /// Hits over hits and misses (bypassed reads left out: the cache was not asked).
    pub fn cache_hit_ratio(&self) -> Option<f64> {
        let (h, m) = (
            self.cache_count(CacheResult::Hit),
            self.cache_count(CacheResult::Miss),
        );
        (h + m > 0).then(|| h as f64 / (h + m) as f64)
    }

    pub fn to_json(&self) -> Value {
        let cache_latency: serde_json::Map<String, Value> = self
            .by_cache
            .iter()
            .map(|(r, h)| {
                (
                    r.name().to_string(),
                    json!({"count": h.len(), "p50": ms(h, 0.5), "p99": ms(h, 0.99)}),
                )
            })
            .collect();
        json!({
            "target_rate": self.target_rate,
            "achieved_rate": self.achieved_rate(),
            "scheduled": self.scheduled,
            "completed": self.completed,
            "burst_writes": self.burst_writes,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "latency_ms": { "p50": ms(&self.hist, 0.5), "p95": ms(&self.hist, 0.95), "p99": ms(&self.hist, 0.99), "max": self.hist.max() as f64 / 1000.0 },
            "admitted_latency_ms": {
                "count": self.admitted.len(),
                "p50": ms(&self.admitted, 0.5),
                "p99": ms(&self.admitted, 0.99),
            },
            "cache": {
                "hits": self.cache_count(CacheResult::Hit),
                "misses": self.cache_count(CacheResult::Miss),
                "bypassed": self.cache_count(CacheResult::Bypass),
                "hit_ratio": self.cache_hit_ratio(),
                "latency_ms": cache_latency,
            },
            "by_status": self.by_status,
            "setup": self.setup,
            "by_endpoint": self.by_endpoint.iter().map(|(k, v)| (k.clone(), json!({"requests": v.requests, "errors": v.errors, "not_sent": v.not_sent}))).collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "target {:.1} req/s, achieved {:.1} req/s ({} scheduled, {} of them burst writes; {} completed in {:.1} s)\n\
             latency (from intended start): p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            self.target_rate,
            self.achieved_rate(),
            self.scheduled,
            self.burst_writes,
            self.completed,
            self.elapsed.as_secs_f64(),
            ms(&self.hist, 0.5),
            ms(&self.hist, 0.95),
            ms(&self.hist, 0.99),
            self.hist.max() as f64 / 1000.0,
        );
        if let Some(ratio) = self.cache_hit_ratio() {
            s.push_str(&format!(
                "product cache: hit ratio {:.1} % ({} hits, {} misses, {} bypassed after a write)\n",
                ratio * 100.0,
                self.cache_count(CacheResult::Hit),
                self.cache_count(CacheResult::Miss),
                self.cache_count(CacheResult::Bypass),
            ));
            for (r, h) in &self.by_cache {
                s.push_str(&format!(
                    "  {:<8} p50 {:.2} ms  p99 {:.2} ms\n",
                    r.name(),
                    ms(h, 0.5),
                    ms(h, 0.99)
                ));
            }
        }
        s.push_str("responses by status:\n");
        for (k, v) in &self.by_status {
            s.push_str(&format!("  {k:>16}  {v}\n"));
        }
        s.push_str("by endpoint (requests / errors; admitted p50 / p99 ms):\n");
        for (k, v) in &self.by_endpoint {
            let (p50, p99) = self
                .admitted_by_endpoint
                .get(k)
                .map_or((0.0, 0.0), |h| (ms(h, 0.5), ms(h, 0.99)));
            s.push_str(&format!(
                "  {k:<45} {:>8} / {:<8} {p50:>7.2} / {p99:.2}\n",
                v.requests, v.errors
            ));
        }
        s
    }
}
