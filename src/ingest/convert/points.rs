//! The OTLP data model's rules for metric data points, one small function each. A point that
//! breaks one is rejected at conversion (and counted in `partial_success`), never stored, so
//! nothing downstream has to cope with it: histogram layouts match, counts add up, bucket
//! indices are ones finite values map to, and every float is finite.

use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, HistogramDataPoint, exponential_histogram_data_point,
};

use crate::aggregate::histogram::{self, MAX_SCALE, MIN_SCALE};
use crate::model::{Buckets, HistogramValue};

/// The most explicit bounds a histogram point may have. Semantic-convention histograms use
/// about 15; 4,096 keeps any layout's memory small (32 KiB a point) and every merge bounded.
pub const MAX_EXPLICIT_BOUNDS: usize = 4096;

/// Why a data point was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidPoint {
    #[error("the data point has no value")]
    MissingValue,
    #[error("{field} is not finite ({value})")]
    NotFinite { field: &'static str, value: f64 },
    #[error("min {min} is above max {max}")]
    MinAboveMax { min: f64, max: f64 },
    #[error("{bounds} explicit bounds, more than the {MAX_EXPLICIT_BOUNDS} allowed")]
    TooManyBounds { bounds: usize },
    #[error(
        "{counts} bucket counts for {bounds} explicit bounds: there must be one more count \
         than bounds, or neither"
    )]
    CountsDoNotMatchBounds { bounds: usize, counts: usize },
    #[error("explicit bounds must be finite and strictly increasing")]
    BoundsNotIncreasing,
    #[error("count {count} is not the sum of the bucket counts")]
    CountIsNotBucketSum { count: u64 },
    #[error("scale {scale} is outside {MIN_SCALE}..={MAX_SCALE}")]
    ScaleOutOfRange { scale: i32 },
    #[error(
        "bucket indices {first}..={last} lie outside {lowest}..={highest}, where finite values \
         map at scale {scale}"
    )]
    IndexOutOfRange {
        scale: i32,
        first: i64,
        last: i64,
        lowest: i64,
        highest: i64,
    },
}

/// A gauge or sum value: finite (integer values always are).
pub fn finite_number(field: &'static str, value: f64) -> Result<f64, InvalidPoint> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(InvalidPoint::NotFinite { field, value })
    }
}

/// An optional `sum`, `min` or `max`: finite when present.
fn finite_if_present(field: &'static str, value: Option<f64>) -> Result<(), InvalidPoint> {
    value.map_or(Ok(()), |v| finite_number(field, v).map(|_| ()))
}

/// `min ≤ max` when both are present.
fn min_not_above_max(min: Option<f64>, max: Option<f64>) -> Result<(), InvalidPoint> {
    match (min, max) {
        (Some(min), Some(max)) if min > max => Err(InvalidPoint::MinAboveMax { min, max }),
        _ => Ok(()),
    }
}

/// The fields every histogram point has besides its buckets.
fn summary_fields(
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
) -> Result<(), InvalidPoint> {
    finite_if_present("sum", sum)?;
    finite_if_present("min", min)?;
    finite_if_present("max", max)?;
    min_not_above_max(min, max)
}

/// At most [`MAX_EXPLICIT_BOUNDS`] bounds, whatever arrives.
fn bounds_within_limit(bounds: &[f64]) -> Result<(), InvalidPoint> {
    if bounds.len() > MAX_EXPLICIT_BOUNDS {
        Err(InvalidPoint::TooManyBounds {
            bounds: bounds.len(),
        })
    } else {
        Ok(())
    }
}

/// One more count than bounds, or neither (a histogram that only has a count and sum).
fn counts_match_bounds(bounds: usize, counts: usize) -> Result<(), InvalidPoint> {
    if counts == bounds + 1 || (counts == 0 && bounds == 0) {
        Ok(())
    } else {
        Err(InvalidPoint::CountsDoNotMatchBounds { bounds, counts })
    }
}

/// Finite and strictly increasing.
fn bounds_increasing(bounds: &[f64]) -> Result<(), InvalidPoint> {
    let finite = bounds.iter().all(|b| b.is_finite());
    if finite && bounds.windows(2).all(|pair| pair[0] < pair[1]) {
        Ok(())
    } else {
        Err(InvalidPoint::BoundsNotIncreasing)
    }
}

/// `count` is the sum of `buckets`; a sum that overflows a u64 never is.
fn count_is_bucket_sum(
    count: u64,
    buckets: impl IntoIterator<Item = u64>,
) -> Result<(), InvalidPoint> {
    let sum = buckets
        .into_iter()
        .try_fold(0u64, |sum, bucket| sum.checked_add(bucket));
    if sum == Some(count) {
        Ok(())
    } else {
        Err(InvalidPoint::CountIsNotBucketSum { count })
    }
}

/// An explicit-bucket histogram point as redline keeps it. A point without buckets becomes one
/// +Inf bucket holding its count, so no merge ever meets an empty layout.
pub fn explicit_histogram(point: &HistogramDataPoint) -> Result<HistogramValue, InvalidPoint> {
    let (bounds, counts) = (&point.explicit_bounds, &point.bucket_counts);
    bounds_within_limit(bounds)?;
    counts_match_bounds(bounds.len(), counts.len())?;
    bounds_increasing(bounds)?;
    summary_fields(point.sum, point.min, point.max)?;
    let counts = if counts.is_empty() {
        vec![point.count]
    } else {
        count_is_bucket_sum(point.count, counts.iter().copied())?;
        counts.clone()
    };
    Ok(HistogramValue {
        count: point.count,
        sum: point.sum.unwrap_or(0.0),
        min: point.min,
        max: point.max,
        buckets: Buckets::Explicit {
            bounds: bounds.clone(),
            counts,
        },
    })
}

/// A scale the data model allows.
fn scale_in_range(scale: i32) -> Result<(), InvalidPoint> {
    if (MIN_SCALE..=MAX_SCALE).contains(&scale) {
        Ok(())
    } else {
        Err(InvalidPoint::ScaleOutOfRange { scale })
    }
}

/// Every index `offset + i` of a bucket range lies where finite values map at `scale`
/// ([`histogram::index_range`]). In i64: `offset + len` may not fit an i32.
fn indices_in_range(
    scale: i32,
    buckets: Option<&exponential_histogram_data_point::Buckets>,
) -> Result<(), InvalidPoint> {
    let Some(buckets) = buckets.filter(|b| !b.bucket_counts.is_empty()) else {
        return Ok(());
    };
    let first = buckets.offset as i64;
    let last = first + (buckets.bucket_counts.len() as i64 - 1);
    let range = histogram::index_range(scale);
    if range.contains(&first) && range.contains(&last) {
        Ok(())
    } else {
        Err(InvalidPoint::IndexOutOfRange {
            scale,
            first,
            last,
            lowest: *range.start(),
            highest: *range.end(),
        })
    }
}

/// An exponential histogram point as redline keeps it: its positive buckets, brought within
/// [`histogram::MAX_EXPONENTIAL_BUCKETS`] (downscaled, exactly, when wider). Durations and sizes
/// are never negative: negative buckets are checked, then dropped (the count keeps them).
pub fn exponential_histogram(
    point: &ExponentialHistogramDataPoint,
) -> Result<HistogramValue, InvalidPoint> {
    scale_in_range(point.scale)?;
    let (positive, negative) = (point.positive.as_ref(), point.negative.as_ref());
    indices_in_range(point.scale, positive)?;
    indices_in_range(point.scale, negative)?;
    fn bucket_counts(buckets: Option<&exponential_histogram_data_point::Buckets>) -> &[u64] {
        buckets.map_or(&[], |b| b.bucket_counts.as_slice())
    }
    count_is_bucket_sum(
        point.count,
        std::iter::once(point.zero_count)
            .chain(bucket_counts(positive).iter().copied())
            .chain(bucket_counts(negative).iter().copied()),
    )?;
    summary_fields(point.sum, point.min, point.max)?;
    let fitted = histogram::fit_exponential(
        point.scale,
        positive.map_or(0, |b| b.offset),
        bucket_counts(positive),
    );
    Ok(HistogramValue {
        count: point.count,
        sum: point.sum.unwrap_or(0.0),
        min: point.min,
        max: point.max,
        buckets: Buckets::Exponential {
            scale: fitted.scale,
            zero_count: point.zero_count,
            offset: fitted.offset,
            counts: fitted.counts,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::histogram::{MAX_EXPONENTIAL_BUCKETS, index_range};

    fn explicit(bounds: Vec<f64>, counts: Vec<u64>) -> HistogramDataPoint {
        HistogramDataPoint {
            count: counts.iter().sum(),
            sum: Some(1.0),
            explicit_bounds: bounds,
            bucket_counts: counts,
            ..Default::default()
        }
    }

    fn buckets(offset: i32, counts: Vec<u64>) -> Option<exponential_histogram_data_point::Buckets> {
        Some(exponential_histogram_data_point::Buckets {
            offset,
            bucket_counts: counts,
        })
    }

    fn exponential(scale: i32, offset: i32, counts: Vec<u64>) -> ExponentialHistogramDataPoint {
        ExponentialHistogramDataPoint {
            count: counts.iter().sum(),
            scale,
            positive: buckets(offset, counts),
            ..Default::default()
        }
    }

    #[test]
    fn gauge_and_sum_values_must_be_finite() {
        assert_eq!(finite_number("value", 1.5), Ok(1.5));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(finite_number("value", bad).is_err());
        }
    }

    #[test]
    fn sum_min_and_max_must_be_finite_when_present() {
        assert!(summary_fields(None, None, None).is_ok());
        assert!(summary_fields(Some(f64::NAN), None, None).is_err());
        assert!(summary_fields(None, Some(f64::NEG_INFINITY), None).is_err());
        assert!(summary_fields(None, None, Some(f64::INFINITY)).is_err());
        let mut point = explicit(vec![1.0], vec![1, 1]);
        point.sum = Some(f64::NAN);
        assert!(matches!(
            explicit_histogram(&point),
            Err(InvalidPoint::NotFinite { field: "sum", .. })
        ));
    }

    #[test]
    fn min_must_not_be_above_max() {
        assert!(min_not_above_max(Some(1.0), Some(1.0)).is_ok());
        assert!(min_not_above_max(Some(2.0), None).is_ok());
        assert_eq!(
            min_not_above_max(Some(2.0), Some(1.0)),
            Err(InvalidPoint::MinAboveMax { min: 2.0, max: 1.0 })
        );
        let mut point = exponential(0, 0, vec![1]);
        (point.min, point.max) = (Some(5.0), Some(1.0));
        assert!(exponential_histogram(&point).is_err());
    }

    #[test]
    fn counts_must_match_bounds_or_both_be_empty() {
        assert!(counts_match_bounds(2, 3).is_ok());
        assert!(counts_match_bounds(0, 0).is_ok());
        assert!(counts_match_bounds(0, 1).is_ok());
        // The first half of the case that stopped all ingest: a bound and no counts.
        assert!(explicit_histogram(&explicit(vec![0.1], vec![])).is_err());
        assert!(counts_match_bounds(2, 2).is_err());
        assert!(counts_match_bounds(1, 3).is_err());
    }

    #[test]
    fn a_point_without_buckets_becomes_one_inf_bucket() {
        let point = HistogramDataPoint {
            count: 7,
            ..Default::default()
        };
        let value = explicit_histogram(&point).unwrap();
        assert_eq!(
            value.buckets,
            Buckets::Explicit {
                bounds: vec![],
                counts: vec![7]
            }
        );
    }

    #[test]
    fn bounds_must_be_finite_and_strictly_increasing() {
        assert!(bounds_increasing(&[1.0, 2.0, 3.0]).is_ok());
        assert!(bounds_increasing(&[1.0, 1.0]).is_err());
        assert!(bounds_increasing(&[2.0, 1.0]).is_err());
        assert!(bounds_increasing(&[1.0, f64::NAN]).is_err());
        assert!(bounds_increasing(&[f64::NEG_INFINITY, 1.0]).is_err());
        assert!(bounds_increasing(&[1.0, f64::INFINITY]).is_err());
        // 1e308 s is finite: accepted here, folded into +Inf when converted to ms.
        assert!(explicit_histogram(&explicit(vec![1e308], vec![1, 1])).is_ok());
    }

    #[test]
    fn bounds_are_limited_in_number() {
        let many: Vec<f64> = (0..=MAX_EXPLICIT_BOUNDS).map(|i| i as f64).collect();
        assert!(bounds_within_limit(&many[..MAX_EXPLICIT_BOUNDS]).is_ok());
        let counts = vec![0; many.len() + 1];
        assert_eq!(
            explicit_histogram(&explicit(many, counts)),
            Err(InvalidPoint::TooManyBounds {
                bounds: MAX_EXPLICIT_BOUNDS + 1
            })
        );
    }

    #[test]
    fn count_must_be_the_bucket_sum_without_overflow() {
        assert!(count_is_bucket_sum(6, [1, 2, 3]).is_ok());
        assert!(count_is_bucket_sum(5, [1, 2, 3]).is_err());
        // u64::MAX + 2 wraps to 1: a wrapping sum would accept this.
        assert!(count_is_bucket_sum(1, [u64::MAX, 2]).is_err());
        let mut point = explicit(vec![1.0], vec![1, 2]);
        point.count = 4;
        assert!(explicit_histogram(&point).is_err());
        let mut point = exponential(0, 0, vec![1, 2]);
        point.zero_count = 1;
        point.negative = buckets(0, vec![5]);
        point.count = 9;
        assert!(exponential_histogram(&point).is_ok());
        point.count = 3;
        assert!(exponential_histogram(&point).is_err());
    }

    #[test]
    fn scale_must_be_in_range() {
        assert!(scale_in_range(MIN_SCALE).is_ok() && scale_in_range(MAX_SCALE).is_ok());
        assert!(scale_in_range(MIN_SCALE - 1).is_err());
        assert!(exponential_histogram(&exponential(21, 0, vec![1])).is_err());
    }

    #[test]
    fn bucket_indices_must_be_where_finite_values_map() {
        let range = index_range(0);
        let (low, high) = (*range.start() as i32, *range.end() as i32);
        assert!(indices_in_range(0, buckets(low, vec![1, 1]).as_ref()).is_ok());
        assert!(indices_in_range(0, buckets(high - 1, vec![1, 1]).as_ref()).is_ok());
        assert!(indices_in_range(0, buckets(low - 1, vec![1]).as_ref()).is_err());
        assert!(indices_in_range(0, buckets(high, vec![1, 1]).as_ref()).is_err());
        // An offset at the top of i32 with a few buckets overflows an i32 sum, not an i64 one.
        assert!(indices_in_range(20, buckets(i32::MAX, vec![1, 1]).as_ref()).is_err());
        assert!(indices_in_range(20, buckets(i32::MIN, vec![1]).as_ref()).is_err());
        let mut point = exponential(0, 0, vec![1]);
        point.negative = buckets(i32::MIN, vec![1]);
        point.count = 2;
        assert!(exponential_histogram(&point).is_err());
    }

    #[test]
    fn wide_exponential_points_are_downscaled_to_the_budget() {
        let counts = vec![1; 1000];
        let value = exponential_histogram(&exponential(4, -500, counts)).unwrap();
        let Buckets::Exponential {
            scale,
            offset,
            counts,
            ..
        } = value.buckets
        else {
            panic!("exponential");
        };
        assert!(counts.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert_eq!(counts.iter().sum::<u64>(), 1000);
        assert_eq!(scale, 1);
        assert_eq!(offset, -500 >> 3);
        assert_eq!(value.count, 1000);
    }
}
