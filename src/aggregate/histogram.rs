//! Arithmetic on OTLP histogram values: merging, turning cumulative points into deltas, and
//! reading quantiles from bucket layouts.

use crate::aggregate::red::ExplicitBuckets;
use crate::model::{Buckets, HistogramValue};

/// `(representative value, count)` of every populated bucket of an exponential histogram.
/// The representative of (a, b] is 2ab/(a+b): its relative error is (base−1)/(base+1).
pub fn exponential_representatives(value: &HistogramValue) -> Vec<(f64, u64)> {
    let Buckets::Exponential {
        scale,
        zero_count,
        offset,
        counts,
    } = &value.buckets
    else {
        return Vec::new();
    };
    let base = 2f64.powf(2f64.powi(-scale));
    let mut out = Vec::with_capacity(counts.len() + 1);
    if *zero_count > 0 {
        out.push((0.0, *zero_count));
    }
    for (i, count) in counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let index = (*offset as i64 + i as i64) as f64;
        let lower = base.powf(index);
        let upper = lower * base;
        out.push((2.0 * lower * upper / (lower + upper), *count));
    }
    out
}

/// Adds `other` into `into`. Explicit buckets with different bounds and exponential buckets of
/// different scales are brought to a common layout (exponential downscaling is exact).
pub fn merge(into: &mut HistogramValue, other: &HistogramValue) {
    into.count += other.count;
    into.sum += other.sum;
    into.min = min_option(into.min, other.min);
    into.max = max_option(into.max, other.max);
    match (&mut into.buckets, &other.buckets) {
        (
            Buckets::Explicit { bounds, counts },
            Buckets::Explicit {
                bounds: other_bounds,
                counts: other_counts,
            },
        ) => {
            let mut mine = ExplicitBuckets {
                bounds_ms: std::mem::take(bounds),
                counts: std::mem::take(counts),
            };
            if mine.counts.is_empty() {
                mine.counts = vec![0; mine.bounds_ms.len() + 1];
            }
            let theirs = ExplicitBuckets {
                bounds_ms: other_bounds.clone(),
                counts: if other_counts.is_empty() {
                    vec![0; other_bounds.len() + 1]
                } else {
                    other_counts.clone()
                },
            };
            mine.merge(&theirs);
            *bounds = mine.bounds_ms;
            *counts = mine.counts;
        }
        (
            Buckets::Exponential {
                scale,
                zero_count,
                offset,
                counts,
            },
            Buckets::Exponential {
                scale: other_scale,
                zero_count: other_zero,
                offset: other_offset,
                counts: other_counts,
            },
        ) => {
            let common = (*scale).min(*other_scale);
            let mut merged = downscale(*offset, counts, *scale - common);
            let theirs = downscale(*other_offset, other_counts, *other_scale - common);
            for (index, count) in theirs {
                *merged.entry(index).or_insert(0) += count;
            }
            *scale = common;
            *zero_count += other_zero;
            let (new_offset, new_counts) = dense(merged);
            *offset = new_offset;
            *counts = new_counts;
        }
        // Layouts of different kinds in one series: keep count and sum, drop the other's buckets.
        _ => {}
    }
}

fn downscale(offset: i32, counts: &[u64], by: i32) -> std::collections::BTreeMap<i64, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (i, count) in counts.iter().enumerate() {
        if *count > 0 {
            *out.entry((offset as i64 + i as i64) >> by).or_insert(0) += count;
        }
    }
    out
}

fn dense(sparse: std::collections::BTreeMap<i64, u64>) -> (i32, Vec<u64>) {
    let (Some(first), Some(last)) = (sparse.keys().next(), sparse.keys().next_back()) else {
        return (0, Vec::new());
    };
    let mut counts = vec![0; (last - first + 1) as usize];
    for (index, count) in &sparse {
        counts[(index - first) as usize] = *count;
    }
    (*first as i32, counts)
}

fn min_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `current − previous` for two cumulative points of one series; `None` when the layouts do not
/// line up or a count went down (a reset: the caller then takes `current` whole).
pub fn subtract(current: &HistogramValue, previous: &HistogramValue) -> Option<HistogramValue> {
    if current.count < previous.count {
        return None;
    }
    let buckets = match (&current.buckets, &previous.buckets) {
        (
            Buckets::Explicit { bounds, counts },
            Buckets::Explicit {
                bounds: previous_bounds,
                counts: previous_counts,
            },
        ) if bounds == previous_bounds && counts.len() == previous_counts.len() => {
            Buckets::Explicit {
                bounds: bounds.clone(),
                counts: subtract_counts(counts, previous_counts)?,
            }
        }
        (
            Buckets::Exponential {
                scale,
                zero_count,
                offset,
                counts,
            },
            Buckets::Exponential {
                scale: previous_scale,
                zero_count: previous_zero,
                offset: previous_offset,
                counts: previous_counts,
            },
        ) => {
            // SDKs only ever downscale a cumulative series: bring the older one to the new scale.
            let common = (*scale).min(*previous_scale);
            let now = downscale(*offset, counts, scale - common);
            let before = downscale(*previous_offset, previous_counts, previous_scale - common);
            let mut delta = std::collections::BTreeMap::new();
            for (index, count) in &now {
                let earlier = before.get(index).copied().unwrap_or(0);
                delta.insert(*index, count.checked_sub(earlier)?);
            }
            if before.keys().any(|k| !now.contains_key(k)) {
                return None;
            }
            let (offset, counts) = dense(delta);
            Buckets::Exponential {
                scale: common,
                zero_count: zero_count.checked_sub(*previous_zero)?,
                offset,
                counts,
            }
        }
        _ => return None,
    };
    Some(HistogramValue {
        count: current.count - previous.count,
        sum: current.sum - previous.sum,
        // Extremes of a cumulative series cover its whole life, not this interval.
        min: None,
        max: None,
        buckets,
    })
}

fn subtract_counts(now: &[u64], before: &[u64]) -> Option<Vec<u64>> {
    now.iter()
        .zip(before)
        .map(|(n, b)| n.checked_sub(*b))
        .collect()
}

/// Quantile of a histogram metric value in its own unit, with the layout's estimator.
pub fn quantile(value: &HistogramValue, q: f64) -> Option<f64> {
    let raw = match &value.buckets {
        Buckets::Explicit { bounds, counts } => ExplicitBuckets {
            bounds_ms: bounds.clone(),
            counts: counts.clone(),
        }
        .quantile(q)?,
        Buckets::Exponential { .. } => {
            let mut sketch = crate::aggregate::sketch::LatencySketch::default();
            for (representative, count) in exponential_representatives(value) {
                sketch.add_with_count(representative, count);
            }
            sketch.quantile(q)?
        }
    };
    let lower = value.min.unwrap_or(f64::NEG_INFINITY);
    let upper = value.max.unwrap_or(f64::INFINITY);
    Some(raw.clamp(lower, upper.max(lower)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(scale: i32, offset: i32, counts: Vec<u64>) -> HistogramValue {
        HistogramValue {
            count: counts.iter().sum(),
            sum: 0.0,
            min: None,
            max: None,
            buckets: Buckets::Exponential {
                scale,
                zero_count: 0,
                offset,
                counts,
            },
        }
    }

    #[test]
    fn exponential_merge_downscales_exactly() {
        // scale 1: base √2; indexes 2,3 → scale 0 index 1; index 4 → 2.
        let mut a = exp(1, 2, vec![1, 2, 3]);
        let b = exp(0, 1, vec![10]);
        merge(&mut a, &b);
        assert_eq!(
            a.buckets,
            Buckets::Exponential {
                scale: 0,
                zero_count: 0,
                offset: 1,
                counts: vec![13, 3]
            }
        );
        assert_eq!(a.count, 16);
    }

    #[test]
    fn cumulative_subtraction_and_resets() {
        let before = HistogramValue {
            count: 3,
            sum: 3.0,
            min: None,
            max: None,
            buckets: Buckets::Explicit {
                bounds: vec![1.0],
                counts: vec![2, 1],
            },
        };
        let mut now = before.clone();
        now.count = 5;
        now.sum = 6.0;
        now.buckets = Buckets::Explicit {
            bounds: vec![1.0],
            counts: vec![3, 2],
        };
        let delta = subtract(&now, &before).unwrap();
        assert_eq!(delta.count, 2);
        assert_eq!(delta.sum, 3.0);
        assert!(subtract(&before, &now).is_none());
    }

    #[test]
    fn exponential_representatives_stay_within_bucket_error() {
        let value = exp(3, 40, vec![5]);
        let (rep, count) = exponential_representatives(&value)[0];
        let base = 2f64.powf(2f64.powi(-3));
        let lower = base.powi(40);
        assert_eq!(count, 5);
        let bound = (base - 1.0) / (base + 1.0) + 1e-12;
        assert!((rep - lower).abs() / lower <= bound);
        assert!((rep - lower * base).abs() / (lower * base) <= bound);
    }
}
