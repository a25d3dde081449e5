//! The instruments every module records into (HTTP server and client, database, cache, rate
//! limits, breaker, retries, shedding, write-behind), named and shaped as the OpenTelemetry
//! semantic conventions say, and the cheap paths for the per-request ones: atomics read by
//! asynchronous instruments, and bound histograms per attribute set.

use crate::resilience::limit::Rejection;
use foldhash::fast::RandomState;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram, Meter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Bucket boundaries the HTTP semantic conventions advise for `http.server.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// HTTP methods as the semantic conventions name them (`_OTHER` for the rest); the index into
/// [`ActiveRequests`].
pub const HTTP_METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// `http.server.active_requests`, kept in atomics and read by an asynchronous UpDownCounter at
/// export time. Why not a synchronous UpDownCounter: it costs two SDK measurements per request
/// (+1 and −1, each hashing its attribute set), about a tenth of telemetry's cost on a cached
/// GET; two atomic adds give the same exported series.
#[derive(Default)]
pub struct ActiveRequests {
    by_method: [AtomicI64; HTTP_METHODS.len()],
    seen: [AtomicBool; HTTP_METHODS.len()],
}

impl ActiveRequests {
    /// `method` is an index into [`HTTP_METHODS`].
    pub fn add(&self, method: usize, delta: i64) {
        let m = method.min(HTTP_METHODS.len() - 1);
        self.seen[m].store(true, Ordering::Relaxed);
        self.by_method[m].fetch_add(delta, Ordering::Relaxed);
    }

    /// (method, in progress) for every method seen so far (a return to 0 is reported too).
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        HTTP_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[*i].load(Ordering::Relaxed))
            .map(|(i, m)| (*m, self.by_method[i].load(Ordering::Relaxed)))
    }
}

/// `cache.requests` of the product cache by level and result, counted in atomics and read by
/// an asynchronous Counter at export time (same reason as [`ActiveRequests`]: one SDK
/// measurement with three attributes on every cached read, for a series that only changes by
/// one).
#[derive(Default)]
pub struct CacheRequests {
    /// [l1 hit, l1 miss, l2 hit, l2 miss]
    counts: [AtomicU64; 4],
}

impl CacheRequests {
    pub fn record(&self, level: CacheLevel, hit: bool) {
        let i = (level as usize) * 2 + usize::from(!hit);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (level, result, count) for every combination counted so far.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        [("l1", "hit"), ("l1", "miss"), ("l2", "hit"), ("l2", "miss")]
            .into_iter()
            .zip(&self.counts)
            .map(|((l, r), c)| (l, r, c.load(Ordering::Relaxed)))
            .filter(|(_, _, c)| *c > 0)
    }

    /// Per level, hits over lookups since `last` (the counts at the previous call, updated),
    /// for the levels looked up since then: the hit ratio of the last export interval.
    pub fn interval_hit_ratios(&self, last: &mut [u64; 4]) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        for (level, name) in ["l1", "l2"].into_iter().enumerate() {
            let (h, m) = (2 * level, 2 * level + 1);
            let hits = self.counts[h].load(Ordering::Relaxed);
            let misses = self.counts[m].load(Ordering::Relaxed);
            let (dh, dm) = (hits - last[h], misses - last[m]);
            (last[h], last[m]) = (hits, misses);
            if dh + dm > 0 {
                out.push((name, dh as f64 / (dh + dm) as f64));
            }
        }
        out
    }
}

/// `http.server.request.duration`, with each attribute set (method, route, status code) bound
/// once through the SDK's bound instruments. Why: an unbound `record` hashes and compares its
/// four attributes on every request; a bound one goes straight to its aggregator.
pub struct HttpDurations {
    histogram: Histogram<f64>,
    /// Route ("" when unmatched) → (method index, status code, bound histogram). The router's
    /// routes, the methods and the status codes the server answers with are finite sets, and
    /// [`MAX_BOUND_DURATIONS`] caps it anyway (beyond it, records go unbound).
    bound: RwLock<BoundDurations>,
}

type BoundDurations = HashMap<Box<str>, Vec<(u8, u16, BoundHistogram<f64>)>, RandomState>;

const MAX_BOUND_DURATIONS: usize = 1024;

impl HttpDurations {
    fn new(histogram: Histogram<f64>) -> Self {
        HttpDurations {
            histogram,
            bound: RwLock::default(),
        }
    }

    /// Records one request; `method` indexes [`HTTP_METHODS`].
    pub fn record(&self, seconds: f64, method: usize, route: Option<&str>, status: u16) {
        let method = method.min(HTTP_METHODS.len() - 1) as u8;
        let key = route.unwrap_or("");
        {
            let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = bound.get(key).and_then(|v| find(v, method, status)) {
                h.record(seconds);
                return;
            }
        }
        let attrs = Self::attributes(method, route, status);
        let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
        if bound.values().map(Vec::len).sum::<usize>() >= MAX_BOUND_DURATIONS {
            drop(bound);
            self.histogram.record(seconds, &attrs);
            return;
        }
        let entries = bound.entry(key.into()).or_default();
        let h = match find(entries, method, status) {
            Some(h) => h.clone(),
            None => {
                let h = self.histogram.bind(&attrs);
                entries.push((method, status, h.clone()));
                h
            }
        };
        drop(bound);
        h.record(seconds);
    }

    fn attributes(method: u8, route: Option<&str>, status: u16) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new("http.request.method", HTTP_METHODS[usize::from(method)]),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if let Some(r) = route {
            attrs.push(KeyValue::new("http.route", r.to_string()));
        }
        if status >= 500 {
            attrs.push(KeyValue::new("error.type", status.to_string()));
        }
        attrs
    }
}

fn find(
    v: &[(u8, u16, BoundHistogram<f64>)],
    method: u8,
    status: u16,
) -> Option<&BoundHistogram<f64>> {
    v.iter()
        .find(|(m, s, _)| *m == method && *s == status)
        .map(|(_, _, h)| h)
}

#[derive(Debug, Clone, Copy)]
pub enum CacheLevel {
    L1 = 0,
    L2 = 1,
}

/// The instruments shared by all modules of one service.
#[derive(Clone)]
pub struct Instruments {
    pub http_duration: Arc<HttpDurations>,
    /// Read by the `http.server.active_requests` callback.
    pub http_active: Arc<ActiveRequests>,
    pub client_duration: Histogram<f64>,
    pub db_pool_wait: Histogram<f64>,
    pub db_duration: Histogram<f64>,
    /// Read by the `cache.requests` callback.
    pub cache_requests: Arc<CacheRequests>,
    pub ratelimit_rejections: Counter<u64>,
    pub breaker_transitions: Counter<u64>,
    pub retries: Counter<u64>,
    /// `http.server.shed_requests`, bound once per `reason` (indexed by [`Rejection`]): a
    /// rejection is the path that must stay cheapest under overload.
    pub shed: [BoundCounter<u64>; 3],
    pub view_flushes: Counter<u64>,
}

impl Instruments {
    pub(super) fn new(meter: &Meter) -> Self {
        Instruments {
            http_duration: Arc::new(HttpDurations::new(
                meter
                    .f64_histogram("http.server.request.duration")
                    .with_unit("s")
                    .with_description("Duration of HTTP server requests.")
                    .with_boundaries(DURATION_BUCKETS.to_vec())
                    .build(),
            )),
            http_active: Arc::default(),
            client_duration: meter
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            db_pool_wait: meter
                .f64_histogram("db.client.connection.wait_time")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ])
                .build(),
            db_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ])
                .build(),
            cache_requests: Arc::default(),
            ratelimit_rejections: meter
                .u64_counter("ratelimit.rejections")
                .with_unit("{request}")
                .build(),
            breaker_transitions: meter
                .u64_counter("circuit_breaker.transitions")
                .with_unit("{transition}")
                .build(),
            retries: meter
                .u64_counter("http.client.retries")
                .with_unit("{retry}")
                .build(),
            shed: {
                let counter = meter
                    .u64_counter("http.server.shed_requests")
                    .with_unit("{request}")
                    .build();
                Rejection::ALL.map(|r| counter.bind(&[KeyValue::new("reason", r.as_str())]))
            },
            view_flushes: meter
                .u64_counter("write_behind.flushes")
                .with_unit("{flush}")
                .build(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::telemetry::exponential_view;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    /// Every exported data point of the u64 sum `name`: its attributes and value.
    pub(crate) fn u64_sum_points(
        metrics: &InMemoryMetricExporter,
        name: &str,
    ) -> Vec<(Vec<KeyValue>, u64)> {
        let mut points = Vec::new();
        for rm in metrics.get_finished_metrics().unwrap() {
            for sm in rm.scope_metrics() {
                for metric in sm.metrics().filter(|m| m.name() == name) {
                    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                        panic!("{name} is not a u64 sum");
                    };
                    for dp in sum.data_points() {
                        points.push((dp.attributes().cloned().collect(), dp.value()));
                    }
                }
            }
        }
        points
    }

    #[test]
    fn exponential_view_makes_exponential_histograms() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_view(exponential_view)
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let m = Instruments::new(&mp.meter("t"));
        m.http_duration.record(0.012, 0, Some("/x"), 200);
        mp.force_flush().unwrap();
        let found = metrics.get_finished_metrics().unwrap().iter().any(|rm| {
            rm.scope_metrics().any(|sm| {
                sm.metrics().any(|m| {
                    m.name() == "http.server.request.duration"
                        && matches!(
                            m.data(),
                            AggregatedMetrics::F64(MetricData::ExponentialHistogram(_))
                        )
                })
            })
        });
        assert!(found);
    }

    #[test]
    fn shed_requests_are_counted_per_reason() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let m = Instruments::new(&mp.meter("t"));
        m.shed[Rejection::Cpu as usize].add(3);
        m.shed[Rejection::Backlog as usize].add(1);
        mp.force_flush().unwrap();
        let counts: std::collections::BTreeMap<_, _> =
            u64_sum_points(&metrics, "http.server.shed_requests")
                .into_iter()
                .map(|(attributes, value)| {
                    let reason = attributes
                        .iter()
                        .find(|kv| kv.key.as_str() == "reason")
                        .map(|kv| kv.value.to_string());
                    (reason, value)
                })
                .collect();
        // Bound up front, every reason exports a series from the start, at 0 until it occurs.
        assert_eq!(
            counts,
            [
                (Some("backlog".to_string()), 1),
                (Some("concurrency".to_string()), 0),
                (Some("cpu".to_string()), 3)
            ]
            .into(),
            "one series per reason"
        );
    }
}
