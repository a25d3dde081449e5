//! Arithmetic on OTLP histogram values: merging, turning cumulative points into deltas, and
//! reading quantiles from bucket layouts. Nothing here can panic or allocate more than a fixed
//! budget, whatever the values: exponential layouts are downscaled to fit
//! [`MAX_EXPONENTIAL_BUCKETS`] (as the SDKs do), explicit layouts keep the receiving side's
//! bounds, and counts saturate.

use std::ops::RangeInclusive;

use crate::aggregate::explicit::ExplicitBuckets;
use crate::model::{Buckets, HistogramValue};

/// The most buckets an exponential histogram holds: the SDKs' default maximum size. A merge
/// (or a conversion) whose buckets would span more lowers the scale until they fit.
pub const MAX_EXPONENTIAL_BUCKETS: usize = 160;
/// The scales the OTLP data model allows for exponential histograms.
pub const MIN_SCALE: i32 = -10;
pub const MAX_SCALE: i32 = 20;

/// The bucket indices finite positive `f64` values map to at `scale` (in
/// [`MIN_SCALE`]`..=`[`MAX_SCALE`]). Bucket `i` is (2^(i·2^−s), 2^((i+1)·2^−s)].
///
/// - Lowest: the smallest positive value is 2^−1074 (a subnormal). It lies in bucket `i` for
///   the largest `i` with i·2^−s < −1074, i.e. i = ⌈−1074·2^s⌉ − 1 = −⌊1074·2^s⌋ − 1
///   (−1075·2^s − 1 … at scale 0 it is −1075, at scale −10 it is −2).
/// - Highest: the largest value is f64::MAX = 2^1024·(1 − 2^−53), just below 2^1024. It lies in
///   bucket ⌈log2(f64::MAX)·2^s⌉ − 1; log2(f64::MAX)·2^s falls short of 1024·2^s by about
///   1.6e−16·2^s, under 1 for every allowed scale, and 1024·2^s is an integer for s ≥ −10, so
///   the bucket is 1024·2^s − 1 (2^30 − 1 at scale 20, 0 at scale −10).
///
/// Both ends fit an `i32` at every allowed scale. Outside the allowed scales the range is
/// empty: no index is valid.
pub fn index_range(scale: i32) -> RangeInclusive<i64> {
    if !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
        #[expect(clippy::reversed_empty_ranges, reason = "deliberately empty")]
        return 1..=0;
    }
    let (lowest_exponent, highest_exponent) = if scale >= 0 {
        (1074i64 << scale, 1024i64 << scale)
    } else {
        (1074i64 >> -scale, 1024i64 >> -scale)
    };
    -lowest_exponent - 1..=highest_exponent - 1
}

/// `(representative value, count)` of every populated bucket of an exponential histogram.
/// The representative of (a, b] is 2ab/(a+b): its relative error is (base−1)/(base+1). Always a
/// finite, non-negative number, whatever the scale and indices.
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
    // 2^-scale for any i32 scale: exp2 of a clamped exponent never overflows or divides by 0.
    let width = (-(*scale as f64)).exp2();
    let mut out = Vec::with_capacity(counts.len() + 1);
    if *zero_count > 0 {
        out.push((0.0, *zero_count));
    }
    for (i, count) in counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let index = *offset as i64 + i as i64;
        let lower = (index as f64 * width).exp2();
        let upper = ((index + 1) as f64 * width).exp2();
        out.push((representative(lower, upper), *count));
    }
    out
}

/// 2ab/(a+b) for 0 ≤ a ≤ b, written as a·2/(1 + a/b) so that neither a product nor a sum can
/// overflow; the top bucket's upper bound is 2^1024 = +∞ in `f64`: its lower bound stands in.
fn representative(lower: f64, upper: f64) -> f64 {
    let value = if upper.is_infinite() || lower.is_infinite() {
        lower
    } else if upper <= 0.0 || lower.is_nan() || upper.is_nan() {
        0.0
    } else {
        lower * (2.0 / (1.0 + lower / upper))
    };
    within(value, Some(0.0), Some(f64::MAX))
}

/// `value` limited to `lower ..= upper` where they are known: `f64::clamp` without its panics
/// (it panics when `lower > upper` or either is NaN — stored rows may hold such extremes). When
/// the limits contradict each other the upper one wins; NaN limits are ignored, and a NaN value
/// takes the first known limit.
pub fn within(value: f64, lower: Option<f64>, upper: Option<f64>) -> f64 {
    let mut value = value;
    if value.is_nan() {
        value = lower.or(upper).unwrap_or(value);
    }
    if let Some(lower) = lower
        && value < lower
    {
        value = lower;
    }
    if let Some(upper) = upper
        && value > upper
    {
        value = upper;
    }
    value
}

/// Positive exponential buckets at one scale: `counts[i]` counts index `offset + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExponentialBuckets {
    pub scale: i32,
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// One side of an exponential merge, borrowed.
#[derive(Clone, Copy)]
struct Side<'a> {
    scale: i32,
    offset: i32,
    counts: &'a [u64],
}

impl Side<'_> {
    /// First and last populated index.
    fn populated(&self) -> Option<(i64, i64)> {
        let first = self.counts.iter().position(|c| *c != 0)?;
        let last = self.counts.iter().rposition(|c| *c != 0)?;
        Some((
            self.offset as i64 + first as i64,
            self.offset as i64 + last as i64,
        ))
    }
}

/// `index` at a scale `by` steps lower: each step halves the index (rounding towards −∞),
/// which maps bucket (b^i, b^(i+1)] exactly into bucket ⌊i/2⌋ of base b².
fn downscaled(index: i64, by: i64) -> i64 {
    index >> by.clamp(0, 63)
}

/// The common layout of `sides`: the highest scale, at most the lowest of theirs, at which
/// their populated buckets span at most [`MAX_EXPONENTIAL_BUCKETS`] and every index fits an
/// `i32`; with the lowest and highest index there. `None` when nothing is populated.
fn common_layout(sides: &[Side<'_>]) -> Option<(i64, i64, i64)> {
    let ranges: Vec<(i64, (i64, i64))> = sides
        .iter()
        .filter_map(|side| Some((side.scale as i64, side.populated()?)))
        .collect();
    let mut scale = ranges.iter().map(|(scale, _)| *scale).min()?;
    loop {
        let (lo, hi) = ranges
            .iter()
            .map(|(own, (lo, hi))| (downscaled(*lo, own - scale), downscaled(*hi, own - scale)))
            .fold((i64::MAX, i64::MIN), |(lo, hi), (l, h)| {
                (lo.min(l), hi.max(h))
            });
        // Every step halves the span, so this ends within 64 steps whatever the indices.
        if hi - lo < MAX_EXPONENTIAL_BUCKETS as i64
            && lo >= i32::MIN as i64
            && hi <= i32::MAX as i64
        {
            return Some((scale, lo, hi));
        }
        scale -= 1;
    }
}

/// Adds `side`'s counts, brought down to `scale`, into `dense` (which starts at index `lo`).
fn add_into(dense: &mut [u64], scale: i64, lo: i64, side: Side<'_>) {
    let by = side.scale as i64 - scale;
    for (i, count) in side.counts.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        let index = downscaled(side.offset as i64 + i as i64, by);
        let slot = usize::try_from(index - lo)
            .ok()
            .and_then(|at| dense.get_mut(at));
        if let Some(slot) = slot {
            *slot = slot.saturating_add(*count);
        }
    }
}

/// `sides` summed on their common layout: at most [`MAX_EXPONENTIAL_BUCKETS`] counts, no
/// leading or trailing empty bucket. Exact: downscaling moves counts, never splits them.
fn merged(sides: &[Side<'_>], fallback_scale: i32) -> ExponentialBuckets {
    let Some((scale, lo, hi)) = common_layout(sides) else {
        return ExponentialBuckets {
            scale: fallback_scale,
            offset: 0,
            counts: Vec::new(),
        };
    };
    let mut counts = vec![0; (hi - lo + 1) as usize];
    for side in sides {
        add_into(&mut counts, scale, lo, *side);
    }
    ExponentialBuckets {
        scale: scale.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        offset: lo as i32,
        counts,
    }
}

/// One exponential histogram's buckets brought within [`MAX_EXPONENTIAL_BUCKETS`]: empty
/// buckets at either end are dropped, then the scale is lowered until the rest fits. Exact.
pub fn fit_exponential(scale: i32, offset: i32, counts: &[u64]) -> ExponentialBuckets {
    merged(
        &[Side {
            scale,
            offset,
            counts,
        }],
        scale,
    )
}

/// Adds `other` into `into`. Explicit buckets with different bounds are brought to `into`'s
/// bounds; exponential buckets to a common scale within [`MAX_EXPONENTIAL_BUCKETS`]
/// (downscaling is exact). Counts saturate.
pub fn merge(into: &mut HistogramValue, other: &HistogramValue) {
    into.count = into.count.saturating_add(other.count);
    into.sum += other.sum;
    into.min = min_option(into.min, other.min);
    into.max = max_option(into.max, other.max);
    let total = into.count;
    match (&mut into.buckets, &other.buckets) {
        (
            Buckets::Explicit { bounds, counts },
            Buckets::Explicit {
                bounds: other_bounds,
                counts: other_counts,
            },
        ) => {
            let merged = match ExplicitBuckets::new(std::mem::take(bounds), std::mem::take(counts))
            {
                Ok(mut mine) => {
                    mine.add(other_bounds, other_counts);
                    mine
                }
                // Only a value built outside conversion can be malformed: take the other
                // layout, or as a last resort one +Inf bucket holding everything.
                Err(_) => ExplicitBuckets::new(other_bounds.clone(), other_counts.clone())
                    .unwrap_or_else(|_| ExplicitBuckets::single(total)),
            };
            (*bounds, *counts) = merged.into_parts();
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
            let result = merged(
                &[
                    Side {
                        scale: *scale,
                        offset: *offset,
                        counts,
                    },
                    Side {
                        scale: *other_scale,
                        offset: *other_offset,
                        counts: other_counts,
                    },
                ],
                *scale,
            );
            *zero_count = zero_count.saturating_add(*other_zero);
            (*scale, *offset, *counts) = (result.scale, result.offset, result.counts);
        }
        // Layouts of different kinds in one series: keep count and sum, drop the other's buckets.
        _ => {}
    }
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
    let count = current.count.checked_sub(previous.count)?;
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
            // SDKs only ever downscale a cumulative series: both are brought to a common scale,
            // lowered further if their union would not fit the bucket budget.
            let now = Side {
                scale: *scale,
                offset: *offset,
                counts,
            };
            let before = Side {
                scale: *previous_scale,
                offset: *previous_offset,
                counts: previous_counts,
            };
            let delta = match common_layout(&[now, before]) {
                Some((common, lo, hi)) => {
                    let mut now_dense = vec![0; (hi - lo + 1) as usize];
                    let mut before_dense = vec![0; now_dense.len()];
                    add_into(&mut now_dense, common, lo, now);
                    add_into(&mut before_dense, common, lo, before);
                    let delta = subtract_counts(&now_dense, &before_dense)?;
                    fit_exponential(
                        common.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                        lo as i32,
                        &delta,
                    )
                }
                None => ExponentialBuckets {
                    scale: *scale,
                    offset: 0,
                    counts: Vec::new(),
                },
            };
            Buckets::Exponential {
                scale: delta.scale,
                zero_count: zero_count.checked_sub(*previous_zero)?,
                offset: delta.offset,
                counts: delta.counts,
            }
        }
        _ => return None,
    };
    Some(HistogramValue {
        count,
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

/// Quantile of a histogram metric value in its own unit, with the layout's estimator, within
/// the value's known extremes.
pub fn quantile(value: &HistogramValue, q: f64) -> Option<f64> {
    let raw = match &value.buckets {
        Buckets::Explicit { bounds, counts } => {
            ExplicitBuckets::new(bounds.clone(), counts.clone())
                .ok()?
                .quantile(q)?
        }
        Buckets::Exponential { .. } => {
            let mut sketch = crate::aggregate::sketch::LatencySketch::default();
            for (representative, count) in exponential_representatives(value) {
                // The sketch's counts must not overflow: a valid point's total fits a u64.
                let room = u64::MAX - sketch.count();
                sketch.add_with_count(representative, count.min(room));
            }
            sketch.quantile(q)?
        }
    };
    Some(within(raw, value.min, value.max))
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

    fn exponential_parts(value: &HistogramValue) -> (i32, i32, Vec<u64>) {
        match &value.buckets {
            Buckets::Exponential {
                scale,
                offset,
                counts,
                ..
            } => (*scale, *offset, counts.clone()),
            Buckets::Explicit { .. } => panic!("exponential"),
        }
    }

    #[test]
    fn index_ranges_cover_exactly_the_finite_values() {
        for scale in MIN_SCALE..=MAX_SCALE {
            let range = index_range(scale);
            assert!(*range.start() >= i32::MIN as i64 && *range.end() <= i32::MAX as i64);
            let width = (-(scale as f64)).exp2();
            // The lowest bucket's upper bound reaches the smallest subnormal, the one below it
            // does not; the highest bucket's lower bound is finite, its upper is 2^1024.
            let low = *range.start();
            assert!(
                ((low + 1) as f64 * width).exp2() >= f64::from_bits(1),
                "scale {scale}"
            );
            assert!((low as f64 * width) < -1074.0, "scale {scale}");
            let high = *range.end();
            assert!((high as f64 * width).exp2().is_finite(), "scale {scale}");
            assert!(((high + 1) as f64 * width) >= 1024.0, "scale {scale}");
        }
        assert_eq!(index_range(0), -1075..=1023);
        assert_eq!(index_range(20), -(1074 << 20) - 1..=(1 << 30) - 1);
        assert_eq!(index_range(-10), -2..=0);
        assert!(index_range(21).is_empty() && index_range(-11).is_empty());
    }

    /// Offsets −2³¹ and 2³¹−1 in one series: a dense array across both would take tens of
    /// GiB and abort the process.
    #[test]
    fn merging_far_apart_offsets_downscales_within_the_budget() {
        let mut a = exp(20, i32::MIN, vec![1, 2]);
        let b = exp(20, i32::MAX, vec![3]);
        merge(&mut a, &b);
        let (scale, offset, counts) = exponential_parts(&a);
        assert!(counts.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert_eq!(counts.iter().sum::<u64>(), 6);
        assert_eq!(a.count, 6);
        // Exact: every count is in the bucket its index maps to at the new scale.
        let by = 20 - scale;
        assert_eq!(offset as i64, (i32::MIN as i64) >> by);
        assert_eq!(
            counts.last().copied(),
            Some(3),
            "the far bucket lands last at scale {scale}"
        );
    }

    #[test]
    fn merges_that_fit_keep_their_scale_and_wide_ones_lose_just_enough() {
        // 100 + 100 buckets 60 apart: the union spans 160, which fits.
        let mut a = exp(3, 0, vec![1; 100]);
        merge(&mut a, &exp(3, 60, vec![1; 100]));
        let (scale, offset, counts) = exponential_parts(&a);
        assert_eq!((scale, offset, counts.len()), (3, 0, 160));
        // One more bucket does not: one downscale halves the span.
        let mut a = exp(3, 0, vec![1; 100]);
        merge(&mut a, &exp(3, 61, vec![1; 100]));
        let (scale, offset, counts) = exponential_parts(&a);
        assert_eq!((scale, offset, counts.len()), (2, 0, 81));
        assert_eq!(counts.iter().sum::<u64>(), 200);
    }

    #[test]
    fn conversion_fit_trims_and_downscales_exactly() {
        let mut counts = vec![0; 1000];
        counts[10] = 1;
        counts[20] = 2;
        // Two populated buckets among 1000: trimming is enough.
        let fitted = fit_exponential(5, -7, &counts);
        assert_eq!((fitted.scale, fitted.offset), (5, 3));
        assert_eq!(fitted.counts, {
            let mut c = vec![0; 11];
            c[0] = 1;
            c[10] = 2;
            c
        });
        // 1000 populated buckets: 1000 → 500 → 250 → 125 buckets, three scales down.
        let fitted = fit_exponential(5, 0, &[1; 1000]);
        assert_eq!(
            (fitted.scale, fitted.offset, fitted.counts.len()),
            (2, 0, 125)
        );
        assert_eq!(fitted.counts.iter().sum::<u64>(), 1000);
        assert!(fit_exponential(0, 5, &[0, 0]).counts.is_empty());
    }

    #[test]
    fn subtraction_of_far_apart_cumulative_points_stays_within_the_budget() {
        let before = exp(20, i32::MIN, vec![1]);
        let mut now = before.clone();
        merge(&mut now, &exp(20, i32::MAX, vec![5]));
        let delta = subtract(&now, &before).unwrap();
        let (_, _, counts) = exponential_parts(&delta);
        assert!(counts.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!(delta.count, 5);
        // The same scale and a count that went down: a reset.
        assert!(subtract(&before, &now).is_none());
        let wider = exp(0, 0, vec![1; 160]);
        let shifted = exp(0, 100, vec![2; 160]);
        assert!(
            subtract(&shifted, &wider).is_none(),
            "bucket 0 went from 1 to 0"
        );
        let mut grown = wider.clone();
        merge(&mut grown, &shifted);
        let delta = subtract(&grown, &wider).unwrap();
        assert_eq!(delta.count, 320);
        assert!(exponential_parts(&delta).2.len() <= MAX_EXPONENTIAL_BUCKETS);
    }

    #[test]
    fn representatives_are_finite_for_every_valid_index() {
        for scale in [MIN_SCALE, -3, 0, 7, MAX_SCALE] {
            let range = index_range(scale);
            for offset in [*range.start(), *range.end() - 1, 0] {
                let value = exp(scale, offset as i32, vec![1, 1]);
                for (representative, _) in exponential_representatives(&value) {
                    assert!(
                        representative.is_finite() && representative >= 0.0,
                        "scale {scale} offset {offset}: {representative}"
                    );
                }
            }
        }
        // Any i32 scale and offset, valid or not.
        for (scale, offset) in [(i32::MAX, i32::MAX), (i32::MIN, i32::MIN), (30, i32::MIN)] {
            for (representative, _) in exponential_representatives(&exp(scale, offset, vec![1])) {
                assert!(representative.is_finite() && representative >= 0.0);
            }
        }
    }

    #[test]
    fn quantiles_do_not_panic_on_min_above_max_or_nan() {
        let mut value = exp(0, 0, vec![1, 1]);
        value.min = Some(10.0);
        value.max = Some(1.0);
        assert_eq!(quantile(&value, 0.5), Some(1.0));
        value.min = Some(f64::NAN);
        value.max = Some(f64::NAN);
        assert!(quantile(&value, 0.5).is_some());
        let explicit = HistogramValue {
            count: 2,
            sum: 0.0,
            min: Some(5.0),
            max: Some(f64::NAN),
            buckets: Buckets::Explicit {
                bounds: vec![1.0],
                counts: vec![1, 1],
            },
        };
        assert_eq!(quantile(&explicit, 0.5), Some(5.0));
        assert_eq!(within(f64::NAN, Some(1.0), Some(2.0)), 1.0);
        assert_eq!(within(f64::NAN, None, Some(2.0)), 2.0);
        assert_eq!(within(7.0, Some(f64::NAN), Some(f64::NAN)), 7.0);
    }

    #[test]
    fn explicit_merges_of_malformed_layouts_do_not_panic() {
        let malformed = HistogramValue {
            count: 3,
            sum: 0.0,
            min: None,
            max: None,
            buckets: Buckets::Explicit {
                bounds: vec![1.0],
                counts: vec![],
            },
        };
        let valid = HistogramValue {
            count: 3,
            sum: 0.0,
            min: None,
            max: None,
            buckets: Buckets::Explicit {
                bounds: vec![0.5, 2.0],
                counts: vec![1, 1, 1],
            },
        };
        let mut into = malformed.clone();
        merge(&mut into, &valid);
        assert_eq!(
            into.buckets,
            Buckets::Explicit {
                bounds: vec![0.5, 2.0],
                counts: vec![1, 1, 1]
            }
        );
        let mut into = valid.clone();
        merge(&mut into, &malformed);
        assert_eq!(into.count, 6);
        let mut into = malformed.clone();
        merge(&mut into, &malformed);
        assert_eq!(
            into.buckets,
            Buckets::Explicit {
                bounds: vec![],
                counts: vec![6]
            }
        );
    }
}
