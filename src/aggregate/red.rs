//! RED statistics of one endpoint over one window: exact counts plus a latency distribution.
//! Everything here merges associatively, so windows roll up and endpoints combine freely.

use crate::aggregate::explicit::ExplicitBuckets;
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
        let duration = finite_duration(request.duration_ms);
        self.duration_sum_ms = finite_duration(self.duration_sum_ms + duration * count as f64);
        self.duration_min_ms = self.duration_min_ms.min(duration);
        self.duration_max_ms = self.duration_max_ms.max(duration);
        self.sketch.add_with_count(duration, count);
    }

    /// Counts saturate: a client can claim any count, and a wrapped one would be a lie.
    fn count(&mut self, requests: u64, errors: u64, status_code: Option<u16>) {
        self.requests = self.requests.saturating_add(requests);
        self.errors = self.errors.saturating_add(errors);
        if let Some(slot) = status_code
            .and_then(status_class)
            .and_then(|class| self.status.get_mut(class))
        {
            *slot = slot.saturating_add(requests);
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
        self.duration_sum_ms =
            finite_duration(self.duration_sum_ms + finite_duration(value.sum * to_ms));
        if let Some(min) = value.min {
            self.duration_min_ms = self.duration_min_ms.min(finite_duration(min * to_ms));
        }
        if let Some(max) = value.max {
            self.duration_max_ms = self.duration_max_ms.max(finite_duration(max * to_ms));
        }
        match &value.buckets {
            Buckets::Explicit { bounds, counts } => {
                // A malformed layout (conversion refuses them) adds its counts, not its buckets.
                if let Ok(incoming) = ExplicitBuckets::scaled(bounds, counts, to_ms) {
                    match &mut self.explicit {
                        Some(existing) => existing.merge(&incoming),
                        None => self.explicit = Some(incoming),
                    }
                }
            }
            Buckets::Exponential { .. } => {
                for (representative, count) in histogram::exponential_representatives(value) {
                    // The sketch's counts must not overflow; beyond u64::MAX nothing is exact.
                    let room = u64::MAX - self.sketch.count();
                    self.sketch
                        .add_with_count(finite_duration(representative * to_ms), count.min(room));
                }
                self.sketch_from_buckets = true;
            }
        }
    }

    pub fn merge(&mut self, other: &RedStats) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (mine, theirs) in self.status.iter_mut().zip(other.status) {
            *mine = mine.saturating_add(theirs);
        }
        self.duration_sum_ms = finite_duration(self.duration_sum_ms + other.duration_sum_ms);
        self.duration_min_ms = self.duration_min_ms.min(other.duration_min_ms);
        self.duration_max_ms = self.duration_max_ms.max(other.duration_max_ms);
        // The sketch's own counts do not saturate: one holding u64::MAX values is full.
        if self
            .sketch
            .count()
            .checked_add(other.sketch.count())
            .is_some()
        {
            self.sketch.merge(&other.sketch);
        }
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
        Some(histogram::within(raw, self.min_ms(), self.max_ms()))
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

/// A RED duration sum or extreme as stored: finite and not negative (durations are not), so
/// that a REAL column holds it and it reads back. NaN counts as 0, overflow holds at `f64::MAX`.
fn finite_duration(ms: f64) -> f64 {
    if ms.is_nan() {
        0.0
    } else {
        // Constant, ordered bounds: this clamp cannot panic.
        ms.clamp(0.0, f64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::explicit::LayoutError;

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
        let buckets = ExplicitBuckets::new(vec![100.0, 200.0, 400.0], vec![50, 30, 20, 0]).unwrap();
        // rank 50 of 100 ends the first bucket: 100 ms.
        assert_eq!(buckets.quantile(0.5), Some(100.0));
        // rank 65: 15 of 30 into (100, 200] → 150 ms.
        assert_eq!(buckets.quantile(0.65), Some(150.0));
        // rank 95: 15 of 20 into (200, 400] → 350 ms.
        assert_eq!(buckets.quantile(0.95), Some(350.0));
        let inf = ExplicitBuckets::new(vec![100.0], vec![0, 5]).unwrap();
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

    fn explicit_point(bounds: Vec<f64>, counts: Vec<u64>) -> HistogramValue {
        HistogramValue {
            count: counts.iter().sum(),
            sum: 0.0,
            min: None,
            max: None,
            buckets: Buckets::Explicit { bounds, counts },
        }
    }

    /// The case that stopped all ingest: two delta points of one series, the first with a
    /// bound and no counts, the second with another layout (index out of bounds on merge).
    #[test]
    fn a_bound_without_counts_then_another_layout_does_not_panic() {
        let mut stats = RedStats::default();
        let no_counts = HistogramValue {
            count: 3,
            ..explicit_point(vec![0.1], vec![])
        };
        stats.add_histogram(&no_counts, Some(200), false, 1000.0);
        stats.add_histogram(
            &explicit_point(vec![0.05, 0.2], vec![1, 2, 3]),
            Some(200),
            false,
            1000.0,
        );
        assert_eq!(stats.requests, 9);
        let explicit = stats.explicit.as_ref().unwrap();
        assert_eq!(explicit.bounds_ms(), &[50.0, 200.0]);
        assert_eq!(explicit.counts(), &[1, 2, 3]);
        // And the other way round: the malformed layout arrives second.
        let mut stats = RedStats::default();
        stats.add_histogram(&explicit_point(vec![0.05], vec![1, 1]), None, false, 1000.0);
        stats.add_histogram(&no_counts, None, false, 1000.0);
        assert_eq!(stats.explicit.as_ref().unwrap().counts(), &[1, 1]);
        assert_eq!(stats.requests, 5);
    }

    #[test]
    fn explicit_buckets_only_hold_valid_layouts() {
        assert_eq!(
            ExplicitBuckets::new(vec![1.0], vec![]),
            Err(LayoutError::CountsDoNotMatchBounds {
                bounds: 1,
                counts: 0
            })
        );
        assert_eq!(
            ExplicitBuckets::new(vec![2.0, 1.0], vec![0, 0, 0]),
            Err(LayoutError::BoundsNotIncreasing)
        );
        assert_eq!(
            ExplicitBuckets::new(vec![1.0, f64::INFINITY], vec![0, 0, 0]),
            Err(LayoutError::BoundsNotIncreasing)
        );
        assert!(ExplicitBuckets::scaled(&[1.0, 2.0], &[1, 2], 1.0).is_err());
        // Reading a stored row checks it too: the store treats such a row as unreadable.
        let bad = r#"{"bounds_ms":[1.0,2.0],"counts":[1,2]}"#;
        assert!(serde_json::from_str::<ExplicitBuckets>(bad).is_err());
    }

    #[test]
    fn bounds_that_overflow_in_ms_fold_into_the_inf_bucket_and_survive_storage() {
        // 1e308 s and 1.5e308 s are +Inf in ms; 1e-320 s and 2e-320 s meet at 0 ms·(rounding).
        let scaled =
            ExplicitBuckets::scaled(&[1.0, 1e308, 1.5e308], &[1, 2, 3, 4], 1000.0).unwrap();
        assert_eq!(scaled.bounds_ms(), &[1000.0]);
        assert_eq!(scaled.counts(), &[1, 9]);
        assert_eq!(scaled.total(), 10);
        let meeting = ExplicitBuckets::scaled(&[1e-320, 2e-320, 1.0], &[1, 2, 3, 4], 1e-3).unwrap();
        assert_eq!(meeting.counts().len(), meeting.bounds_ms().len() + 1);
        assert!(meeting.bounds_ms().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(meeting.total(), 10);
        let text = serde_json::to_string(&scaled).unwrap();
        assert_eq!(
            serde_json::from_str::<ExplicitBuckets>(&text).unwrap(),
            scaled
        );
        // Through RED statistics: the +Inf-bound point is counted and the row reads back.
        let mut stats = RedStats::default();
        stats.add_histogram(
            &explicit_point(vec![1e308], vec![1, 1]),
            None,
            false,
            1000.0,
        );
        assert_eq!(stats.explicit.as_ref().unwrap().bounds_ms(), &[] as &[f64]);
        assert_eq!(stats.quantile_ms(0.5), None);
    }

    #[test]
    fn stored_rows_without_counts_or_with_met_bounds_read() {
        // No counts: a layout with nothing counted yet.
        let empty: ExplicitBuckets =
            serde_json::from_str(r#"{"bounds_ms":[1.0,2.0],"counts":[]}"#).unwrap();
        assert_eq!(empty.counts(), &[0, 0, 0]);
        // Bounds that met when converted to ms fold together.
        let met: ExplicitBuckets =
            serde_json::from_str(r#"{"bounds_ms":[1.0,1.0,2.0],"counts":[1,2,3,4]}"#).unwrap();
        assert_eq!(met.bounds_ms(), &[1.0, 2.0]);
        assert_eq!(met.counts(), &[1, 5, 4]);
    }

    #[test]
    fn merging_any_two_layouts_stays_in_bounds() {
        let mut mine = ExplicitBuckets::new(vec![10.0, 20.0], vec![1, 1, 1]).unwrap();
        // Malformed parts: more counts than bounds allow, NaN and unsorted bounds.
        mine.add(&[f64::NAN, 5.0], &[1, 2, 3, 4, 5]);
        mine.add(&[], &[]);
        mine.add(&[30.0], &[7]);
        assert_eq!(mine.total(), 3 + 15 + 7);
        let mut empty = ExplicitBuckets::single(2);
        empty.merge(&ExplicitBuckets::new(vec![1.0], vec![4, 5]).unwrap());
        assert_eq!(empty.counts(), &[11]);
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut stats = RedStats::default();
        let huge = HistogramValue {
            count: u64::MAX,
            sum: f64::MAX,
            ..explicit_point(vec![1.0], vec![u64::MAX, 0])
        };
        stats.add_histogram(&huge, Some(503), true, 1000.0);
        stats.add_histogram(&huge, Some(503), true, 1000.0);
        let copy = stats.clone();
        stats.merge(&copy);
        assert_eq!(stats.requests, u64::MAX);
        assert_eq!(stats.errors, u64::MAX);
        assert_eq!(stats.status[4], u64::MAX);
        assert_eq!(stats.explicit.as_ref().unwrap().total(), u64::MAX);
        // The sum is held finite: a REAL column stores it and it reads back.
        assert_eq!(stats.duration_sum_ms, f64::MAX);
        let mut requests = RedStats::default();
        requests.add_request(&RequestRecord {
            count: u32::MAX,
            ..request(1.0, 200)
        });
        requests.requests = u64::MAX - 1;
        requests.add_request(&request(1.0, 200));
        requests.add_request(&request(1.0, 200));
        assert_eq!(requests.requests, u64::MAX);
    }

    #[test]
    fn histogram_sums_and_extremes_stay_finite_and_not_negative() {
        let mut stats = RedStats::default();
        let point = HistogramValue {
            count: 2,
            sum: -5.0,
            min: Some(-1.0),
            max: Some(1e308),
            buckets: Buckets::Explicit {
                bounds: vec![],
                counts: vec![2],
            },
        };
        stats.add_histogram(&point, None, false, 1000.0);
        assert_eq!(stats.duration_sum_ms, 0.0);
        assert_eq!(stats.min_ms(), Some(0.0));
        assert_eq!(stats.max_ms(), Some(f64::MAX));
    }

    #[test]
    fn quantiles_do_not_panic_on_contradictory_or_nan_extremes() {
        // Stored rows may hold min > max (or NaN); clamp would panic on them.
        let mut stats = RedStats::default();
        stats.add_request(&request(10.0, 200));
        stats.duration_min_ms = 50.0;
        stats.duration_max_ms = 5.0;
        assert_eq!(stats.quantile_ms(0.5), Some(5.0));
        stats.duration_min_ms = f64::NAN;
        stats.duration_max_ms = f64::NAN;
        assert!(stats.quantile_ms(0.5).is_some());
        let buckets = ExplicitBuckets::new(vec![1.0], vec![1, 1]).unwrap();
        assert!(buckets.quantile(f64::NAN).is_some());
    }

    #[test]
    fn exponential_points_with_extreme_indices_stay_finite() {
        use crate::aggregate::histogram::index_range;
        let range = index_range(0);
        let mut stats = RedStats::default();
        let point = HistogramValue {
            count: 4,
            sum: 0.0,
            min: None,
            max: None,
            buckets: Buckets::Exponential {
                scale: 0,
                zero_count: 0,
                offset: *range.start() as i32,
                counts: vec![1, 1],
            },
        };
        stats.add_histogram(&point, None, false, 1000.0);
        let top = HistogramValue {
            buckets: Buckets::Exponential {
                scale: 0,
                zero_count: 0,
                offset: *range.end() as i32 - 1,
                counts: vec![1, 1],
            },
            ..point
        };
        stats.add_histogram(&top, None, false, 1000.0);
        for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let value = stats.quantile_ms(q).unwrap();
            assert!(value.is_finite() && value >= 0.0, "q {q}: {value}");
        }
    }
}
