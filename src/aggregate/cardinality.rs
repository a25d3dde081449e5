//! Cardinality limits: a bounded set of services, endpoints per service and metric series,
//! bounded in count and in the bytes of their keys. What does not fit goes to an `__overflow__`
//! series and is counted, so a flood of distinct routes or attribute values costs a counter,
//! not memory.

use std::sync::Arc;

use foldhash::HashMap;

use crate::memsize::HeapSize;
use crate::model::{EndpointKey, MetricSeriesKey};

pub const OVERFLOW: &str = "__overflow__";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_services: usize,
    pub max_endpoints_per_service: usize,
    pub max_metric_series: usize,
    /// Bytes all admitted keys may take together (their text plus a table entry each).
    pub max_key_bytes: usize,
    /// A key unseen for this long is forgotten and frees its place.
    pub idle_expiry_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: 200,
            max_endpoints_per_service: 2_000,
            max_metric_series: 20_000,
            max_key_bytes: 32 << 20,
            idle_expiry_ms: 60 * 60 * 1000,
        }
    }
}

/// Counts of what went to overflow since start, for `/metrics` and the dashboard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OverflowCounts {
    pub services: u64,
    pub endpoints: u64,
    pub metric_series: u64,
}

#[derive(Debug)]
pub struct CardinalityGuard {
    limits: Limits,
    /// service → endpoint → last seen (unix ms). Keyed by the whole endpoint so a known one is
    /// found by reference, without building a key.
    endpoints: HashMap<String, HashMap<EndpointKey, i64>>,
    /// The one shared copy of each admitted series key: the aggregator, the delta converter
    /// and the store writer hold clones of these `Arc`s, not copies of the key.
    metric_series: HashMap<Arc<MetricSeriesKey>, i64>,
    /// Bytes of the admitted keys, as [`key_bytes`] counts them.
    key_bytes: usize,
    overflow: OverflowCounts,
}

/// A key's table entry beyond its text.
const KEY_ENTRY_BYTES: usize = 96;

fn service_bytes(service: &str) -> usize {
    service.len() + KEY_ENTRY_BYTES
}

fn endpoint_bytes(endpoint: &EndpointKey) -> usize {
    endpoint.heap_bytes() + KEY_ENTRY_BYTES
}

fn series_bytes(series: &MetricSeriesKey) -> usize {
    series.heap_bytes() + KEY_ENTRY_BYTES
}

impl CardinalityGuard {
    pub fn new(limits: Limits) -> Self {
        CardinalityGuard {
            limits,
            endpoints: HashMap::default(),
            metric_series: HashMap::default(),
            key_bytes: 0,
            overflow: OverflowCounts::default(),
        }
    }

    /// The key to aggregate `endpoint` under: itself, or its service's overflow series, or
    /// the global overflow service.
    pub fn admit_endpoint(&mut self, endpoint: &EndpointKey, now_ms: i64) -> EndpointKey {
        self.admit_endpoint_in_place(endpoint, now_ms)
            .unwrap_or_else(|| endpoint.clone())
    }

    /// As [`Self::admit_endpoint`], but `None` when `endpoint` is admitted as itself: the
    /// common case, which then allocates nothing.
    pub fn admit_endpoint_in_place(
        &mut self,
        endpoint: &EndpointKey,
        now_ms: i64,
    ) -> Option<EndpointKey> {
        if let Some(routes) = self.endpoints.get_mut(endpoint.service.as_str())
            && let Some(seen) = routes.get_mut(endpoint)
        {
            *seen = now_ms;
            return None;
        }
        if !self.endpoints.contains_key(endpoint.service.as_str()) {
            let bytes = service_bytes(&endpoint.service) + endpoint_bytes(endpoint);
            if self.endpoints.len() >= self.limits.max_services || !self.fits(bytes) {
                self.overflow.services += 1;
                return Some(overflow_endpoint(OVERFLOW));
            }
            self.key_bytes += service_bytes(&endpoint.service);
            self.endpoints
                .insert(endpoint.service.clone(), HashMap::default());
        }
        let bytes = endpoint_bytes(endpoint);
        let fits = self.fits(bytes);
        let routes = self.endpoints.get_mut(endpoint.service.as_str())?;
        if routes.len() >= self.limits.max_endpoints_per_service || !fits {
            self.overflow.endpoints += 1;
            return Some(overflow_endpoint(&endpoint.service));
        }
        routes.insert(endpoint.clone(), now_ms);
        self.key_bytes += bytes;
        None
    }

    fn fits(&self, bytes: usize) -> bool {
        self.key_bytes + bytes <= self.limits.max_key_bytes
    }

    /// The key to aggregate `series` under: itself, or its service's overflow series.
    pub fn admit_series(&mut self, series: &MetricSeriesKey, now_ms: i64) -> Arc<MetricSeriesKey> {
        if let Some((key, _)) = self.metric_series.get_key_value(series) {
            let key = key.clone();
            self.metric_series.insert(key.clone(), now_ms);
            return key;
        }
        let bytes = series_bytes(series);
        if self.metric_series.len() >= self.limits.max_metric_series || !self.fits(bytes) {
            self.overflow.metric_series += 1;
            return Arc::new(MetricSeriesKey {
                service: series.service.clone(),
                name: OVERFLOW.to_string(),
                attributes: [("otel.metric.overflow".to_string(), "true".to_string())].into(),
            });
        }
        let key = Arc::new(series.clone());
        self.metric_series.insert(key.clone(), now_ms);
        self.key_bytes += bytes;
        key
    }

    /// Forgets keys not seen since `now_ms − idle_expiry`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.limits.idle_expiry_ms;
        for routes in self.endpoints.values_mut() {
            routes.retain(|_, seen| *seen >= cutoff);
        }
        self.endpoints.retain(|_, routes| !routes.is_empty());
        self.metric_series.retain(|_, seen| *seen >= cutoff);
        self.key_bytes = self
            .endpoints
            .iter()
            .map(|(service, routes)| {
                service_bytes(service) + routes.keys().map(endpoint_bytes).sum::<usize>()
            })
            .sum::<usize>()
            + self
                .metric_series
                .keys()
                .map(|k| series_bytes(k))
                .sum::<usize>();
    }

    /// Bytes of the admitted keys.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    pub fn knows_series(&self, series: &MetricSeriesKey) -> bool {
        self.metric_series.contains_key(series)
    }

    pub fn overflow(&self) -> OverflowCounts {
        self.overflow
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.values().map(|routes| routes.len()).sum()
    }

    pub fn service_count(&self) -> usize {
        self.endpoints.len()
    }

    pub fn series_count(&self) -> usize {
        self.metric_series.len()
    }
}

fn overflow_endpoint(service: &str) -> EndpointKey {
    EndpointKey {
        service: service.to_string(),
        method: OVERFLOW.to_string(),
        route: OVERFLOW.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(service: &str, route: &str) -> EndpointKey {
        EndpointKey {
            service: service.into(),
            method: "GET".into(),
            route: route.into(),
        }
    }

    fn guard() -> CardinalityGuard {
        CardinalityGuard::new(Limits {
            max_services: 2,
            max_endpoints_per_service: 3,
            max_metric_series: 2,
            max_key_bytes: usize::MAX,
            idle_expiry_ms: 1000,
        })
    }

    #[test]
    fn excess_endpoints_go_to_the_service_overflow_series() {
        let mut guard = guard();
        for i in 0..10 {
            let admitted = guard.admit_endpoint(&endpoint("a", &format!("/r{i}")), 0);
            if i < 3 {
                assert_eq!(admitted.route, format!("/r{i}"));
            } else {
                assert_eq!(admitted, overflow_endpoint("a"));
            }
        }
        assert_eq!(guard.overflow().endpoints, 7);
        assert_eq!(guard.endpoint_count(), 3);
        // Known endpoints keep working when the service is full.
        assert_eq!(guard.admit_endpoint(&endpoint("a", "/r1"), 0).route, "/r1");
    }

    #[test]
    fn excess_services_go_to_the_overflow_service() {
        let mut guard = guard();
        guard.admit_endpoint(&endpoint("a", "/"), 0);
        guard.admit_endpoint(&endpoint("b", "/"), 0);
        assert_eq!(
            guard.admit_endpoint(&endpoint("c", "/"), 0).service,
            OVERFLOW
        );
        assert_eq!(guard.overflow().services, 1);
    }

    #[test]
    fn idle_keys_expire_and_free_their_place() {
        let mut guard = guard();
        for i in 0..3 {
            guard.admit_endpoint(&endpoint("a", &format!("/r{i}")), 0);
        }
        guard.admit_endpoint(&endpoint("a", "/r0"), 5000);
        guard.expire(5500);
        assert_eq!(guard.endpoint_count(), 1);
        assert_eq!(
            guard.admit_endpoint(&endpoint("a", "/new"), 5500).route,
            "/new"
        );
    }

    #[test]
    fn excess_metric_series_overflow() {
        let mut guard = guard();
        let series = |v: &str| MetricSeriesKey {
            service: "a".into(),
            name: "m".into(),
            attributes: [("k".to_string(), v.to_string())].into(),
        };
        guard.admit_series(&series("1"), 0);
        guard.admit_series(&series("2"), 0);
        let third = guard.admit_series(&series("3"), 0);
        assert_eq!(third.name, OVERFLOW);
        assert_eq!(guard.overflow().metric_series, 1);
    }
    #[test]
    fn an_admitted_series_key_is_one_shared_copy() {
        let mut guard = guard();
        let series = MetricSeriesKey {
            service: "a".into(),
            name: "m".into(),
            attributes: [("k".to_string(), "v".to_string())].into(),
        };
        let first = guard.admit_series(&series, 0);
        let again = guard.admit_series(&series.clone(), 10);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(*first, series);
    }
}
