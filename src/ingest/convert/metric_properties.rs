//! Property test: adversarial metric exports — random layouts, offsets over the whole i32
//! range, scales beyond the allowed ones, NaN, infinities, huge values and counts — through
//! conversion, the aggregator and the JSON the store writes. Nothing panics, nothing holds more
//! than the bucket budget, and every flushed value reads back as it was written.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;

use super::convert_metrics;
use super::points::MAX_EXPLICIT_BOUNDS;
use crate::aggregate::explicit::ExplicitBuckets;
use crate::aggregate::histogram::{self, MAX_EXPONENTIAL_BUCKETS};
use crate::aggregate::metric::MetricAgg;
use crate::aggregate::{Aggregator, FlushBatch};
use crate::model::{Buckets, HistogramValue, MetricValue};

const NOW_MS: i64 = 1_700_000_000_000;

fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e3..1e3f64,
        1 => prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(1e308),
            Just(-1e308),
            Just(1.7e308),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(5e-324),
            Just(0.0),
        ],
        1 => any::<u64>().prop_map(f64::from_bits),
    ]
}

fn hostile_count() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..20u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 2 + 1),
        1 => any::<u64>(),
    ]
}

fn hostile_offset() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -300..300i32,
        1 => prop_oneof![
            Just(i32::MIN),
            Just(i32::MAX),
            Just(i32::MAX - 1),
            Just(-1075),
            Just(1023),
            Just(-(1074 << 20) - 1),
            Just((1 << 30) - 1),
        ],
        1 => any::<i32>(),
    ]
}

fn optional(value: impl Strategy<Value = f64>) -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(value)
}

/// Fixes a generated layout up to validity when `repair` says so, so that both valid and
/// invalid points are common.
fn explicit_point() -> impl Strategy<Value = HistogramDataPoint> {
    (
        prop_oneof![
            proptest::collection::vec(-10.0..10.0f64, 0..6).prop_map(|mut bounds| {
                bounds.sort_by(f64::total_cmp);
                bounds.dedup();
                bounds
            }),
            proptest::collection::vec(hostile_f64(), 0..6),
            Just(vec![1e308]),
            Just(vec![1.0, 1e308, 1.5e308]),
        ],
        proptest::collection::vec(hostile_count(), 0..8),
        any::<(bool, bool)>(),
        hostile_count(),
        (
            optional(hostile_f64()),
            optional(hostile_f64()),
            optional(hostile_f64()),
        ),
    )
        .prop_map(
            |(bounds, mut counts, (repair_layout, repair_count), count, (sum, min, max))| {
                if repair_layout {
                    counts.resize(bounds.len() + 1, 1);
                }
                let count = if repair_count {
                    counts.iter().fold(0u64, |a, c| a.wrapping_add(*c))
                } else {
                    count
                };
                HistogramDataPoint {
                    count,
                    sum,
                    min,
                    max,
                    explicit_bounds: bounds,
                    bucket_counts: counts,
                    ..Default::default()
                }
            },
        )
}

fn exponential_buckets() -> impl Strategy<Value = Option<exponential_histogram_data_point::Buckets>>
{
    proptest::option::of(
        (
            hostile_offset(),
            prop_oneof![
                proptest::collection::vec(hostile_count(), 0..8),
                proptest::collection::vec(0..3u64, 150..300),
            ],
        )
            .prop_map(|(offset, bucket_counts)| {
                exponential_histogram_data_point::Buckets {
                    offset,
                    bucket_counts,
                }
            }),
    )
}

fn exponential_point() -> impl Strategy<Value = ExponentialHistogramDataPoint> {
    (
        -20..30i32,
        hostile_count(),
        exponential_buckets(),
        exponential_buckets(),
        any::<bool>(),
        hostile_count(),
        (
            optional(hostile_f64()),
            optional(hostile_f64()),
            optional(hostile_f64()),
        ),
    )
        .prop_map(
            |(scale, zero_count, positive, negative, repair, count, (sum, min, max))| {
                let count = if repair {
                    [&positive, &negative]
                        .into_iter()
                        .flatten()
                        .flat_map(|b| &b.bucket_counts)
                        .fold(zero_count, |a, c| a.wrapping_add(*c))
                } else {
                    count
                };
                ExponentialHistogramDataPoint {
                    count,
                    sum,
                    min,
                    max,
                    scale,
                    zero_count,
                    positive,
                    negative,
                    ..Default::default()
                }
            },
        )
}

fn number_point() -> impl Strategy<Value = NumberDataPoint> {
    prop_oneof![
        hostile_f64().prop_map(number_data_point::Value::AsDouble),
        any::<i64>().prop_map(number_data_point::Value::AsInt),
    ]
    .prop_map(|value| NumberDataPoint {
        value: Some(value),
        ..Default::default()
    })
}

/// A few attribute sets, so that points of one metric often share a series.
fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    let kv = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    };
    prop_oneof![
        Just(vec![]),
        Just(vec![
            kv("http.route", "/a"),
            kv("http.request.method", "GET")
        ]),
        Just(vec![
            kv("http.route", "/a"),
            kv("http.response.status_code", "503")
        ]),
    ]
}

fn data() -> impl Strategy<Value = metric::Data> {
    let temporality = 0..3i32;
    prop_oneof![
        proptest::collection::vec(number_point(), 1..4)
            .prop_map(|data_points| metric::Data::Gauge(Gauge { data_points })),
        (
            proptest::collection::vec(number_point(), 1..4),
            temporality.clone(),
            any::<bool>()
        )
            .prop_map(|(data_points, aggregation_temporality, is_monotonic)| {
                metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality,
                    is_monotonic,
                })
            }),
        (
            proptest::collection::vec(explicit_point(), 1..4),
            temporality.clone()
        )
            .prop_map(|(data_points, aggregation_temporality)| {
                metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality,
                })
            }),
        (
            proptest::collection::vec(exponential_point(), 1..4),
            temporality
        )
            .prop_map(|(data_points, aggregation_temporality)| {
                metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points,
                    aggregation_temporality,
                })
            }),
    ]
}

fn export() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let metric = (
        prop_oneof![Just("http.server.request.duration"), Just("m")],
        prop_oneof![Just("s"), Just("ms"), Just("ns"), Just("")],
        data(),
        attributes(),
        prop_oneof![Just(0u64), Just(1_000u64)],
    )
        .prop_map(|(name, unit, mut data, attributes, start)| {
            let time = NOW_MS as u64 * 1_000_000;
            let stamp = |attrs: &mut Vec<KeyValue>, s: &mut u64, t: &mut u64| {
                *attrs = attributes.clone();
                (*s, *t) = (start, time);
            };
            match &mut data {
                metric::Data::Gauge(g) => g.data_points.iter_mut().for_each(|p| {
                    stamp(
                        &mut p.attributes,
                        &mut p.start_time_unix_nano,
                        &mut p.time_unix_nano,
                    )
                }),
                metric::Data::Sum(g) => g.data_points.iter_mut().for_each(|p| {
                    stamp(
                        &mut p.attributes,
                        &mut p.start_time_unix_nano,
                        &mut p.time_unix_nano,
                    )
                }),
                metric::Data::Histogram(g) => g.data_points.iter_mut().for_each(|p| {
                    stamp(
                        &mut p.attributes,
                        &mut p.start_time_unix_nano,
                        &mut p.time_unix_nano,
                    )
                }),
                metric::Data::ExponentialHistogram(g) => g.data_points.iter_mut().for_each(|p| {
                    stamp(
                        &mut p.attributes,
                        &mut p.start_time_unix_nano,
                        &mut p.time_unix_nano,
                    )
                }),
                metric::Data::Summary(_) => {}
            }
            Metric {
                name: name.into(),
                unit: unit.into(),
                data: Some(data),
                ..Default::default()
            }
        });
    proptest::collection::vec(metric, 1..6).prop_map(|metrics| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource::default()),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Within the bucket budget and a valid layout.
fn check_histogram(value: &HistogramValue) -> Result<(), TestCaseError> {
    match &value.buckets {
        Buckets::Explicit { bounds, counts } => {
            prop_assert!(bounds.len() <= MAX_EXPLICIT_BOUNDS);
            prop_assert_eq!(counts.len(), bounds.len() + 1);
        }
        Buckets::Exponential { counts, .. } => {
            prop_assert!(counts.len() <= MAX_EXPONENTIAL_BUCKETS, "{}", counts.len());
        }
    }
    for q in [0.0, 0.5, 0.99, 1.0] {
        let _ = histogram::quantile(value, q);
    }
    Ok(())
}

/// Written, read back and written again, the JSON is the same; without NaN (which is never
/// equal to itself) the values compare equal too.
fn round_trips<T>(value: &T) -> Result<T, TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
    let again = serde_json::to_string(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&again, &text);
    if !text.contains("NaN") {
        prop_assert_eq!(&back, value);
    }
    Ok(back)
}

fn check_flush(flush: &FlushBatch) -> Result<(), TestCaseError> {
    for delta in &flush.metrics {
        let back: MetricAgg = round_trips(&delta.agg)?;
        if let Some(h) = &delta.agg.histogram {
            check_histogram(h)?;
        }
        // A window merged with its stored copy (a rollup) stays within budget and readable.
        let mut merged = delta.agg.clone();
        merged.merge(&back);
        if let Some(h) = &merged.histogram {
            check_histogram(h)?;
        }
        round_trips(&merged)?;
    }
    for delta in &flush.red {
        let stats = &delta.stats;
        prop_assert!(stats.duration_sum_ms.is_finite() && stats.duration_sum_ms >= 0.0);
        if let Some(explicit) = &stats.explicit {
            let back: ExplicitBuckets = round_trips(explicit)?;
            prop_assert_eq!(back.counts().len(), back.bounds_ms().len() + 1);
        }
        for q in [0.0, 0.5, 0.99, 1.0] {
            let _ = stats.quantile_ms(q);
        }
        let mut doubled = stats.clone();
        doubled.merge(stats);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn hostile_metric_points_never_panic_overflow_the_budget_or_poison_storage(
        exports in proptest::collection::vec(export(), 1..4),
    ) {
        let mut aggregator = Aggregator::new(Default::default(), 0);
        for request in exports {
            let converted = convert_metrics(request);
            for point in &converted.batch.metric_points {
                match &point.value {
                    MetricValue::Histogram(h) => {
                        check_histogram(h)?;
                        prop_assert!(h.sum.is_finite());
                        prop_assert!(h.min.is_none_or(f64::is_finite));
                        prop_assert!(h.max.is_none_or(f64::is_finite));
                    }
                    MetricValue::Number(v) => prop_assert!(v.is_finite()),
                }
            }
            aggregator.apply(converted.batch, NOW_MS);
            check_flush(&aggregator.snapshot(None))?;
        }
        check_flush(&aggregator.take_flush(NOW_MS))?;
    }
}
