//! RED totals per endpoint since redline started: monotonic counters (requests, errors, 4xx
//! and 5xx, the duration sum) and a classic duration histogram over configured bounds, the
//! figures the Prometheus exposition and remote write publish. Unlike the windows, these are
//! never flushed; an endpoint idle for the cardinality guard's expiry is forgotten, as its key
//! is.
//!
//! A service is counted from its spans. Its `http.server.request.duration` points are counted
//! only until its first span arrives, so nothing is counted twice and no counter goes back.

use foldhash::{HashMap, HashSet};

use crate::aggregate::histogram;
use crate::model::{Buckets, EndpointKey, HistogramValue, RequestRecord, status_class};

/// Most bounds a duration histogram may have.
pub const MAX_BOUNDS: usize = 40;

/// The OpenTelemetry HTTP semantic conventions' advice for `http.server.request.duration`.
pub const DEFAULT_BOUNDS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Upper bounds (seconds) of the published duration histogram, finite and increasing; the
/// `+Inf` bucket is implied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationBounds {
    values: [f64; MAX_BOUNDS],
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("must hold between 1 and {MAX_BOUNDS} bounds")]
    Count,
    #[error("must be finite, positive and strictly increasing")]
    Order,
}

impl DurationBounds {
    pub fn new(bounds: &[f64]) -> Result<Self, BoundsError> {
        if bounds.is_empty() || bounds.len() > MAX_BOUNDS {
            return Err(BoundsError::Count);
        }
        let ordered = bounds.iter().all(|b| b.is_finite() && *b > 0.0)
            && bounds.windows(2).all(|pair| pair[0] < pair[1]);
        if !ordered {
            return Err(BoundsError::Order);
        }
        let mut values = [0.0; MAX_BOUNDS];
        values[..bounds.len()].copy_from_slice(bounds);
        Ok(DurationBounds {
            values,
            len: bounds.len(),
        })
    }

    pub fn seconds(&self) -> &[f64] {
        &self.values[..self.len]
    }

    /// The bucket (0 ..= len, the last one `+Inf`) whose `le` is the first bound ≥ `seconds`.
    pub fn bucket_of(&self, seconds: f64) -> usize {
        self.seconds().partition_point(|bound| *bound < seconds)
    }
}

impl Default for DurationBounds {
    fn default() -> Self {
        DurationBounds::new(&DEFAULT_BOUNDS_SECONDS).expect("valid defaults")
    }
}

/// One endpoint's totals since it was first seen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndpointTotals {
    pub requests: u64,
    pub errors: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub duration_sum_seconds: f64,
    /// Per bucket, not cumulative: one per bound and the last for `+Inf`.
    pub buckets: Box<[u64]>,
    last_seen_ms: i64,
}

impl EndpointTotals {
    fn new(buckets: usize) -> Self {
        EndpointTotals {
            requests: 0,
            errors: 0,
            status_4xx: 0,
            status_5xx: 0,
            duration_sum_seconds: 0.0,
            buckets: vec![0; buckets].into_boxed_slice(),
            last_seen_ms: 0,
        }
    }

    /// Counts saturate, as the windows' do: a client can claim any count.
    fn count(&mut self, requests: u64, is_error: bool, status_code: Option<u16>) {
        self.requests = self.requests.saturating_add(requests);
        if is_error {
            self.errors = self.errors.saturating_add(requests);
        }
        match status_code.and_then(status_class) {
            Some(3) => self.status_4xx = self.status_4xx.saturating_add(requests),
            Some(4) => self.status_5xx = self.status_5xx.saturating_add(requests),
            _ => {}
        }
    }

    fn add_seconds(&mut self, seconds: f64) {
        let sum = self.duration_sum_seconds + seconds;
        if sum.is_finite() {
            self.duration_sum_seconds = sum;
        }
    }

    fn add_to_bucket(&mut self, bucket: usize, count: u64) {
        if let Some(slot) = self.buckets.get_mut(bucket) {
            *slot = slot.saturating_add(count);
        }
    }
}

/// A table entry beyond its key's text and its buckets.
const ENTRY_BYTES: usize = std::mem::size_of::<(EndpointKey, EndpointTotals)>() + 16;

#[derive(Debug)]
pub struct RedTotals {
    bounds: DurationBounds,
    endpoints: HashMap<EndpointKey, EndpointTotals>,
    /// Services that sent a span: their duration metric is no longer counted.
    span_services: HashSet<String>,
    heap_bytes: usize,
}

impl RedTotals {
    pub fn new(bounds: DurationBounds) -> Self {
        RedTotals {
            bounds,
            endpoints: HashMap::default(),
            span_services: HashSet::default(),
            heap_bytes: 0,
        }
    }

    pub fn bounds(&self) -> DurationBounds {
        self.bounds
    }

    /// The totals of `endpoint`, created when new; found by reference in the common case.
    fn entry(&mut self, endpoint: &EndpointKey, now_ms: i64) -> &mut EndpointTotals {
        if !self.endpoints.contains_key(endpoint) {
            let buckets = self.bounds.len + 1;
            self.heap_bytes += ENTRY_BYTES + endpoint_bytes(endpoint) + buckets * 8;
            self.endpoints
                .insert(endpoint.clone(), EndpointTotals::new(buckets));
        }
        let totals = self.endpoints.get_mut(endpoint).expect("just inserted");
        totals.last_seen_ms = now_ms;
        totals
    }

    /// One span, weighted by its adjusted count.
    pub fn add_request(&mut self, endpoint: &EndpointKey, request: &RequestRecord, now_ms: i64) {
        if !self.span_services.contains(endpoint.service.as_str()) {
            self.heap_bytes += endpoint.service.capacity() + 32;
            self.span_services.insert(endpoint.service.clone());
        }
        let count = u64::from(request.count);
        if count == 0 {
            return;
        }
        let seconds = finite_seconds(request.duration_ms / 1000.0);
        let bucket = self.bounds.bucket_of(seconds);
        let totals = self.entry(endpoint, now_ms);
        totals.count(count, request.is_error, request.status_code);
        totals.add_seconds(seconds * count as f64);
        totals.add_to_bucket(bucket, count);
    }

    /// One delta point of `http.server.request.duration` in a unit of which `per_second` make
    /// a second (dividing keeps bounds like 5 ms exactly at 0.005 s).
    /// An explicit bucket's count goes to the first bound at or above the bucket's upper bound
    /// (so every published `le` count is exact or an undercount, never an overcount); an
    /// exponential bucket's to the bucket holding its representative value.
    pub fn add_histogram(
        &mut self,
        endpoint: &EndpointKey,
        value: &HistogramValue,
        status_code: Option<u16>,
        is_error: bool,
        per_second: f64,
        now_ms: i64,
    ) {
        if value.count == 0 || self.span_services.contains(endpoint.service.as_str()) {
            return;
        }
        let bounds = self.bounds;
        let totals = self.entry(endpoint, now_ms);
        totals.count(value.count, is_error, status_code);
        totals.add_seconds(finite_seconds(value.sum / per_second));
        match &value.buckets {
            Buckets::Explicit {
                bounds: upper,
                counts,
            } => {
                for (i, count) in counts.iter().enumerate() {
                    let bucket = match upper.get(i) {
                        Some(upper) => bounds.bucket_of(upper / per_second),
                        None => bounds.len,
                    };
                    totals.add_to_bucket(bucket, *count);
                }
            }
            Buckets::Exponential { .. } => {
                for (representative, count) in histogram::exponential_representatives(value) {
                    let bucket = bounds.bucket_of(finite_seconds(representative / per_second));
                    totals.add_to_bucket(bucket, count);
                }
            }
        }
    }

    /// Forgets endpoints not seen since `cutoff_ms`, as the cardinality guard does.
    pub fn expire(&mut self, cutoff_ms: i64) {
        let before = self.endpoints.len();
        self.endpoints.retain(|_, t| t.last_seen_ms >= cutoff_ms);
        if self.endpoints.len() == before {
            return;
        }
        let endpoints = &self.endpoints;
        self.span_services
            .retain(|service| endpoints.keys().any(|e| e.service == *service));
        let buckets = self.bounds.len + 1;
        self.heap_bytes = self
            .endpoints
            .keys()
            .map(|e| ENTRY_BYTES + endpoint_bytes(e) + buckets * 8)
            .sum::<usize>()
            + self
                .span_services
                .iter()
                .map(|s| s.capacity() + 32)
                .sum::<usize>();
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.heap_bytes
    }

    /// Every endpoint's totals, for publishing.
    pub fn iter(&self) -> impl Iterator<Item = (&EndpointKey, &EndpointTotals)> {
        self.endpoints.iter()
    }

    /// A copy to publish from, without holding the aggregator meanwhile.
    pub fn snapshot(&self) -> TotalsSnapshot {
        TotalsSnapshot {
            bounds: self.bounds,
            endpoints: self
                .endpoints
                .iter()
                .map(|(key, totals)| (key.clone(), totals.clone()))
                .collect(),
        }
    }
}

/// Every endpoint's totals at one moment, in no particular order.
#[derive(Debug, Clone, Default)]
pub struct TotalsSnapshot {
    pub bounds: DurationBounds,
    pub endpoints: Vec<(EndpointKey, EndpointTotals)>,
}

fn endpoint_bytes(endpoint: &EndpointKey) -> usize {
    endpoint.service.capacity() + endpoint.method.capacity() + endpoint.route.capacity()
}

/// Durations are finite and not negative by validation; a histogram's sum may still be huge.
fn finite_seconds(seconds: f64) -> f64 {
    if seconds.is_finite() {
        seconds.max(0.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(service: &str) -> EndpointKey {
        EndpointKey {
            service: service.into(),
            method: "GET".into(),
            route: "/a".into(),
        }
    }

    fn span(duration_ms: f64, status: u16, count: u32) -> RequestRecord {
        RequestRecord {
            end_unix_ms: 0,
            duration_ms,
            status_code: Some(status),
            is_error: status >= 500,
            count,
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(DurationBounds::new(&[]), Err(BoundsError::Count));
        assert_eq!(DurationBounds::new(&[0.1, 0.1]), Err(BoundsError::Order));
        assert_eq!(DurationBounds::new(&[f64::NAN]), Err(BoundsError::Order));
        assert_eq!(DurationBounds::new(&[-1.0, 1.0]), Err(BoundsError::Order));
        assert_eq!(
            DurationBounds::new(&[1.0; MAX_BOUNDS + 1]),
            Err(BoundsError::Count)
        );
        let bounds = DurationBounds::new(&[0.1, 1.0]).unwrap();
        // `le` includes its bound.
        assert_eq!(
            [0.0, 0.1, 0.1000001, 1.0, 5.0].map(|s| bounds.bucket_of(s)),
            [0, 0, 1, 1, 2]
        );
    }

    #[test]
    fn spans_count_exactly_with_their_adjusted_count() {
        let mut totals = RedTotals::new(DurationBounds::new(&[0.1, 1.0]).unwrap());
        let key = endpoint("api");
        totals.add_request(&key, &span(100.0, 200, 1), 1);
        totals.add_request(&key, &span(250.0, 404, 4), 1);
        totals.add_request(&key, &span(2_000.0, 503, 1), 1);
        let (_, t) = totals.iter().next().unwrap();
        assert_eq!((t.requests, t.errors), (6, 1));
        assert_eq!((t.status_4xx, t.status_5xx), (4, 1));
        assert_eq!(&*t.buckets, &[1, 4, 1]);
        assert!((t.duration_sum_seconds - (0.1 + 1.0 + 2.0)).abs() < 1e-9);
    }

    #[test]
    fn a_service_with_spans_stops_counting_its_duration_metric() {
        let mut totals = RedTotals::new(DurationBounds::new(&[0.1, 1.0]).unwrap());
        let key = endpoint("api");
        let histogram = HistogramValue {
            count: 3,
            sum: 0.3,
            min: None,
            max: None,
            buckets: Buckets::Explicit {
                bounds: vec![0.05, 0.5],
                counts: vec![1, 1, 1],
            },
        };
        totals.add_histogram(&key, &histogram, Some(200), false, 1.0, 1);
        let (_, t) = totals.iter().next().unwrap();
        // (…, 0.05] → le 0.1; (0.05, 0.5] → le 1; (0.5, +Inf) → +Inf.
        assert_eq!(&*t.buckets, &[1, 1, 1]);
        totals.add_request(&key, &span(10.0, 200, 1), 1);
        totals.add_histogram(&key, &histogram, Some(200), false, 1.0, 1);
        let (_, t) = totals.iter().next().unwrap();
        assert_eq!(t.requests, 4);
    }

    #[test]
    fn idle_endpoints_are_forgotten_with_their_bytes() {
        let mut totals = RedTotals::new(DurationBounds::default());
        totals.add_request(&endpoint("a"), &span(1.0, 200, 1), 10);
        totals.add_request(&endpoint("b"), &span(1.0, 200, 1), 20);
        let two = totals.heap_bytes();
        totals.expire(15);
        assert_eq!(totals.len(), 1);
        assert!(totals.heap_bytes() < two && totals.heap_bytes() > 0);
        totals.expire(25);
        assert!(totals.is_empty());
        assert_eq!(totals.heap_bytes(), 0);
    }
}
