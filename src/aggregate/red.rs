//! RED statistics of one endpoint over one window: exact counts plus a latency distribution.
//! Everything here merges associatively, so windows roll up and endpoints combine freely.

use crate::aggregate::histogram;
use crate::aggregate::sketch::LatencySketch;
use crate::model::{Buckets, HistogramValue, RequestRecord, status_class};

/// Which estimator produced the latency quantiles, reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimate {
    /// DDSketch over span durations: within 1 % of the exact value.
    Sketch,
    /// Exponential-histogram buckets fed to the sketch: bucket width adds its own error.
    ExponentialHistogram,
    /// Linear interpolation inside explicit buckets (as Prometheus' `histogram_quantile`).
    ExplicitBuckets,
    /// No latency data.
    None,
}

/// Explicit-bucket latency counts (bounds in milliseconds) from histogram metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExplicitBuckets {
    pub bounds_ms: Vec<f64>,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone)]
pub struct RedStats {
    pub requests: u64,
    pub errors: u64,
    /// Requests per status class, 1xx … 5xx.
    pub status: [u64; 5],
    pub duration_sum_ms: f64,
    /// `f64::INFINITY` while empty.
    pub duration_min_ms: f64,
    /// `f64::NEG_INFINITY` while empty.
    pub duration_max_ms: f64,
    pub sketch: LatencySketch,
    /// True when some of the sketch came from exponential-histogram buckets, not exact values.
    pub sketch_from_buckets: bool,
    pub explicit: Option<ExplicitBuckets>,
}

impl Default for RedStats {
    fn default() -> Self {
        RedStats {
            requests: 0,
            errors: 0,
            status: [0; 5],
            duration_sum_ms: 0.0,
            duration_min_ms: f64::INFINITY,
            duration_max_ms: f64::NEG_INFINITY,
            sketch: LatencySketch::default(),
            sketch_from_buckets: false,
            explicit: None,
        }
    }
}

impl RedStats {
    /// Adds one span as `request.count` requests (its adjusted count): counts, status classes,
    /// the duration sum and the sketch are weighted by it; min and max are the observed values.
    pub fn add_request(&mut self, request: &RequestRecord) {
        let count = u64::from(request.count);
        if count == 0 {
            return;
        }
        let errors = if request.is_error { count } else { 0 };
        self.count(count, errors, request.status_code);
        let duration = request.duration_ms.max(0.0);
        self.duration_sum_ms += duration * count as f64;
        self.duration_min_ms = self.duration_min_ms.min(duration);
        self.duration_max_ms = self.duration_max_ms.max(duration);
        self.sketch.add_with_count(duration, count);
    }

    fn count(&mut self, requests: u64, errors: u64, status_code: Option<u16>) {
        self.requests += requests;
        self.errors += errors;
        if let Some(class) = status_code.and_then(status_class) {
            self.status[class] += requests;
        }
    }

    /// Adds one delta data point of `http.server.request.duration`; `to_ms` converts its unit.
    pub fn add_histogram(
        &mut self,
        value: &HistogramValue,
        status_code: Option<u16>,
        is_error: bool,
        to_ms: f64,
    ) {
        if value.count == 0 {
            return;
        }
        self.count(
            value.count,
            if is_error { value.count } else { 0 },
            status_code,
        );
        self.duration_sum_ms += value.sum * to_ms;
        if let Some(min) = value.min {
            self.duration_min_ms = self.duration_min_ms.min(min * to_ms);
        }
        if let Some(max) = value.max {
            self.duration_max_ms = self.duration_max_ms.max(max * to_ms);
        }
        match &value.buckets {
            Buckets::Explicit { bounds, counts } => {
                let incoming = ExplicitBuckets {
                    bounds_ms: bounds.iter().map(|b| b * to_ms).collect(),
                    counts: counts.clone(),
                };
                match &mut self.explicit {
                    Some(existing) => existing.merge(&incoming),
                    None => self.explicit = Some(incoming),
                }
            }
            Buckets::Exponential { .. } => {
                for (representative, count) in histogram::exponential_representatives(value) {
                    self.sketch.add_with_count(representative * to_ms, count);
                }
                self.sketch_from_buckets = true;
            }
        }
    }

    pub fn merge(&mut self, other: &RedStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.status.iter_mut().zip(other.status) {
            *mine += theirs;
        }
        self.duration_sum_ms += other.duration_sum_ms;
        self.duration_min_ms = self.duration_min_ms.min(other.duration_min_ms);
        self.duration_max_ms = self.duration_max_ms.max(other.duration_max_ms);
        self.sketch.merge(&other.sketch);
        self.sketch_from_buckets |= other.sketch_from_buckets;
        match (&mut self.explicit, &other.explicit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.explicit = Some(theirs.clone()),
            _ => {}
        }
    }

    pub fn estimate(&self) -> Estimate {
        if self.sketch.count() > 0 {
            if self.sketch_from_buckets {
                Estimate::ExponentialHistogram
            } else {
                Estimate::Sketch
            }
        } else if self.explicit.as_ref().is_some_and(|e| e.total() > 0) {
            Estimate::ExplicitBuckets
        } else {
            Estimate::None
        }
    }

    /// The latency at quantile `q` in ms, from whichever estimator holds the data.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let raw = match self.estimate() {
            Estimate::Sketch | Estimate::ExponentialHistogram => self.sketch.quantile(q),
            Estimate::ExplicitBuckets => self.explicit.as_ref()?.quantile(q),
            Estimate::None => None,
        }?;
        // Known extremes bound every estimate (they are exact when present).
        Some(raw.clamp(self.min_ms().unwrap_or(raw), self.max_ms().unwrap_or(raw)))
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.duration_sum_ms / self.requests as f64)
    }

    pub fn min_ms(&self) -> Option<f64> {
        self.duration_min_ms
            .is_finite()
            .then_some(self.duration_min_ms)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.duration_max_ms
            .is_finite()
            .then_some(self.duration_max_ms)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

impl ExplicitBuckets {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another bucket set. Identical bounds add exactly; different bounds put each of the
    /// other's buckets into the bucket of ours that holds its upper bound (never under-reports).
    pub fn merge(&mut self, other: &ExplicitBuckets) {
        if self.bounds_ms == other.bounds_ms {
            for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
            return;
        }
        for (i, count) in other.counts.iter().enumerate() {
            let upper = other.bounds_ms.get(i).copied().unwrap_or(f64::INFINITY);
            let target = self.bounds_ms.partition_point(|b| *b < upper);
            self.counts[target] += count;
        }
    }

    /// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the
    /// rank, 0 as the lowest bucket's lower limit, the highest finite bound for the +Inf bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            let cumulative = below + count;
            if (cumulative as f64) >= rank && *count > 0 {
                let Some(upper) = self.bounds_ms.get(i).copied() else {
                    return self.bounds_ms.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds_ms[i - 1] };
                let fraction = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * fraction);
            }
            below = cumulative;
        }
        self.bounds_ms.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(duration_ms: f64, status: u16) -> RequestRecord {
        RequestRecord {
            end_unix_ms: 0,
            duration_ms,
            status_code: Some(status),
            is_error: status >= 500,
            count: 1,
        }
    }

    #[test]
    fn counts_errors_and_status_classes() {
        let mut stats = RedStats::default();
        for (d, s) in [(1.0, 200), (2.0, 404), (3.0, 503), (4.0, 201)] {
            stats.add_request(&request(d, s));
        }
        assert_eq!(stats.requests, 4);
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.status, [0, 2, 0, 1, 1]);
        assert_eq!(stats.mean_ms(), Some(2.5));
        assert_eq!(stats.min_ms(), Some(1.0));
        assert_eq!(stats.max_ms(), Some(4.0));
        assert_eq!(stats.estimate(), Estimate::Sketch);
    }

    #[test]
    fn a_weighted_request_counts_as_that_many() {
        // One span with adjusted count 4 (`th:c`) is four requests and, failed, four errors.
        let mut weighted = RedStats::default();
        weighted.add_request(&RequestRecord {
            count: 4,
            ..request(7.5, 503)
        });
        let mut repeated = RedStats::default();
        for _ in 0..4 {
            repeated.add_request(&request(7.5, 503));
        }
        assert_eq!(weighted.requests, 4);
        assert_eq!(weighted.errors, 4);
        assert_eq!(weighted.status, [0, 0, 0, 0, 4]);
        assert_eq!(weighted.duration_sum_ms, 30.0);
        assert_eq!(weighted.sketch.count(), 4);
        assert_eq!(weighted.sketch.encode(), repeated.sketch.encode());
        assert_eq!(weighted.mean_ms(), Some(7.5));
        assert_eq!(
            (weighted.min_ms(), weighted.max_ms()),
            (Some(7.5), Some(7.5))
        );
        // A count of 0 stands for no request.
        weighted.add_request(&RequestRecord {
            count: 0,
            ..request(1_000.0, 200)
        });
        assert_eq!(weighted.requests, 4);
        assert_eq!(weighted.max_ms(), Some(7.5));
    }

    #[test]
    fn weights_move_the_quantiles_between_observed_values() {
        // 10 ms once and 100 ms with weight 3: four requests, three of them at 100 ms.
        let mut stats = RedStats::default();
        stats.add_request(&request(10.0, 200));
        stats.add_request(&RequestRecord {
            count: 3,
            ..request(100.0, 200)
        });
        assert_eq!(stats.requests, 4);
        assert_eq!(stats.mean_ms(), Some(77.5));
        // Unweighted, the median (rank ⌊0.5·1⌋ = 0) would be 10 ms; weighted (rank
        // ⌊0.5·3⌋ = 1) it is 100 ms. Every quantile is still one of the observed values, to 1 %.
        let near = |value: Option<f64>, exact: f64| (value.unwrap() - exact).abs() <= exact * 0.01;
        assert!(near(stats.quantile_ms(0.5), 100.0));
        assert!(near(stats.quantile_ms(0.25), 10.0));
        assert!(near(stats.quantile_ms(0.99), 100.0));
        assert_eq!((stats.min_ms(), stats.max_ms()), (Some(10.0), Some(100.0)));
    }

    #[test]
    fn explicit_buckets_interpolate_like_prometheus() {
        let buckets = ExplicitBuckets {
            bounds_ms: vec![100.0, 200.0, 400.0],
            counts: vec![50, 30, 20, 0],
        };
        // rank 50 of 100 ends the first bucket: 100 ms.
        assert_eq!(buckets.quantile(0.5), Some(100.0));
        // rank 65: 15 of 30 into (100, 200] → 150 ms.
        assert_eq!(buckets.quantile(0.65), Some(150.0));
        // rank 95: 15 of 20 into (200, 400] → 350 ms.
        assert_eq!(buckets.quantile(0.95), Some(350.0));
        let inf = ExplicitBuckets {
            bounds_ms: vec![100.0],
            counts: vec![0, 5],
        };
        assert_eq!(inf.quantile(0.5), Some(100.0));
    }

    #[test]
    fn histogram_points_count_like_spans() {
        let mut stats = RedStats::default();
        let value = HistogramValue {
            count: 10,
            sum: 1.5,
            min: Some(0.05),
            max: Some(0.4),
            buckets: Buckets::Explicit {
                bounds: vec![0.1, 0.2, 0.5],
                counts: vec![4, 4, 2, 0],
            },
        };
        stats.add_histogram(&value, Some(500), true, 1000.0);
        assert_eq!(stats.requests, 10);
        assert_eq!(stats.errors, 10);
        assert_eq!(stats.status[4], 10);
        assert_eq!(stats.estimate(), Estimate::ExplicitBuckets);
        assert!((stats.mean_ms().unwrap() - 150.0).abs() < 1e-9);
        // rank 5 of 10: 1 of 4 into (100, 200] → 125 ms.
        assert!((stats.quantile_ms(0.5).unwrap() - 125.0).abs() < 1e-9);
        // Clamped by the exact maximum.
        assert!(stats.quantile_ms(0.99).unwrap() <= 400.0);
    }
}
