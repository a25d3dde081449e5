//! Hostile OTLP messages, as a client could send them: trace and metric exports whose every
//! field may be out of its specified range — ids of the wrong length, timestamps from 1970 to
//! the end of `u64`, unknown enum values, attributes of the wrong type, markup and control
//! characters, strings longer than any limit, non-finite and extreme numbers, histogram layouts
//! that disagree. Names come mostly from small pools, so that hostile points land in the same
//! services, endpoints and series as each other and as well-formed ones.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    exponential_histogram_data_point, metric, number_data_point, summary_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use proptest::collection::vec;
use proptest::prelude::*;

/// Services the generated exports mostly name; the reads visit their pages.
pub const SERVICES: [&str; 4] = ["checkout", "<b>x</b>", "naïve 🦀 ☃", "a/b?c=%2F#d"];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Text that is hard to key, store, escape or print, up to 70,000 bytes.
pub fn hostile_text() -> BoxedStrategy<String> {
    hostile_text_up_to(70_000)
}

/// Hostile text of at most `longest` characters (a URL holds less than a span).
pub fn hostile_text_up_to(longest: usize) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", " ", "GET", "POST", "/", "/api/{id}", "/api/:id/items", "*", "%", "%zz%", "%C3%28",
            "<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>", "{{7*7}}",
            "{% raw %}", "${jndi:x}", "../../etc/passwd", "a\u{0}b", "\r\nSet-Cookie: x=1",
            "\u{202e}gnp.exe", "\u{feff}", "é", "🦀", "\u{10ffff}", "__overflow__",
        ]).prop_map(str::to_string),
        2 => ".{0,40}",
        1 => (prop::char::any(), 250..longest).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// A name from `pool` most of the time, otherwise hostile text.
pub fn pooled(pool: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(pool).prop_map(str::to_string),
        1 => hostile_text(),
    ]
    .boxed()
}

pub fn hostile_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => -1e3..1e3f64,
        1 => prop::sample::select(vec![
            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN, 1e308, -1e308,
            f64::MIN_POSITIVE, 5e-324, -0.0, 0.0, 9.3e18, -9.3e18,
        ]),
        1 => any::<u64>().prop_map(f64::from_bits),
    ]
    .boxed()
}

pub fn hostile_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        6 => 0..50u64,
        1 => prop::sample::select(vec![u64::MAX, u64::MAX / 2 + 1, i64::MAX as u64, 1 << 53]),
        1 => any::<u64>(),
    ]
    .boxed()
}

pub fn hostile_i32() -> BoxedStrategy<i32> {
    prop_oneof![
        4 => -4..8i32,
        1 => prop::sample::select(vec![i32::MIN, i32::MAX, i32::MAX - 1, -1075, 1023]),
        1 => any::<i32>(),
    ]
    .boxed()
}

/// Nanoseconds since 1970: mostly around now, also 0, far past, far future and `u64::MAX`.
pub fn hostile_time() -> BoxedStrategy<u64> {
    let now = now_ns();
    let hour = 3_600_000_000_000u64;
    prop_oneof![
        6 => (0..120_000_000_000u64).prop_map(move |back| now - back),
        1 => prop::sample::select(vec![
            0, 1, now + 7 * hour, now - 7 * hour, now - 100 * 24 * hour, now + 400 * 24 * hour,
            16_725_225_600_000_000_000, // the year 2500
            i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX,
        ]),
        1 => any::<u64>(),
    ]
    .boxed()
}

/// Trace and span ids: the right length mostly, also empty, all zero, short and long.
pub fn hostile_id(length: usize) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), length),
        1 => Just(vec![0; length]),
        1 => vec(any::<u8>(), 0..40),
    ]
    .boxed()
}

pub fn hostile_value() -> BoxedStrategy<AnyValue> {
    let leaf = prop_oneof![
        hostile_text().prop_map(any_value::Value::StringValue),
        prop_oneof![
            prop::sample::select(vec![200i64, 404, 500, 503, 599, 0, -1, i64::MIN, i64::MAX]),
            any::<i64>(),
        ]
        .prop_map(any_value::Value::IntValue),
        hostile_f64().prop_map(any_value::Value::DoubleValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        vec(any::<u8>(), 0..16).prop_map(any_value::Value::BytesValue),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| {
                any_value::Value::ArrayValue(ArrayValue {
                    values: values
                        .into_iter()
                        .map(|v| AnyValue { value: Some(v) })
                        .collect(),
                })
            }),
            vec((hostile_text(), inner), 0..4).prop_map(|pairs| {
                any_value::Value::KvlistValue(KeyValueList {
                    values: pairs
                        .into_iter()
                        .map(|(key, v)| KeyValue {
                            key,
                            value: Some(AnyValue { value: Some(v) }),
                            ..Default::default()
                        })
                        .collect(),
                })
            }),
        ]
    });
    proptest::option::weighted(0.95, value)
        .prop_map(|value| AnyValue { value })
        .boxed()
}

const ATTRIBUTE_KEYS: &[&str] = &[
    "http.request.method",
    "http.method",
    "http.route",
    "http.target",
    "url.path",
    "url.full",
    "http.url",
    "http.response.status_code",
    "http.status_code",
    "rpc.system",
    "error.type",
    "service.name",
    "otel.metric.overflow",
    "cache.result",
    "db.client.connection.state",
];

pub fn attributes() -> BoxedStrategy<Vec<KeyValue>> {
    vec(
        (
            pooled(ATTRIBUTE_KEYS),
            proptest::option::weighted(0.95, hostile_value()),
        ),
        0..6,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value,
                ..Default::default()
            })
            .collect()
    })
    .boxed()
}

pub fn resource() -> BoxedStrategy<Option<Resource>> {
    let service_name = prop_oneof![
        8 => pooled(&SERVICES).prop_map(|name| Some(AnyValue {
            value: Some(any_value::Value::StringValue(name)),
        })),
        1 => hostile_value().prop_map(Some),
        1 => Just(None),
    ];
    proptest::option::weighted(0.95, (service_name, attributes()))
        .prop_map(|resource| {
            resource.map(|(name, mut attributes)| {
                attributes.insert(
                    0,
                    KeyValue {
                        key: "service.name".into(),
                        value: name,
                        ..Default::default()
                    },
                );
                Resource {
                    attributes,
                    ..Default::default()
                }
            })
        })
        .boxed()
}

pub fn scope() -> BoxedStrategy<Option<InstrumentationScope>> {
    proptest::option::of(
        (hostile_text(), attributes()).prop_map(|(name, attributes)| InstrumentationScope {
            name,
            attributes,
            ..Default::default()
        }),
    )
    .boxed()
}

fn span_strategy() -> BoxedStrategy<Span> {
    let event =
        (hostile_time(), hostile_text(), attributes()).prop_map(|(t, name, attrs)| span::Event {
            time_unix_nano: t,
            name,
            attributes: attrs,
            dropped_attributes_count: 0,
        });
    let link =
        (hostile_id(16), hostile_id(8), attributes()).prop_map(|(t, s, attributes)| span::Link {
            trace_id: t,
            span_id: s,
            attributes,
            ..Default::default()
        });
    let status = (
        prop_oneof![4 => 0..3i32, 1 => hostile_i32()],
        hostile_text(),
    )
        .prop_map(|(code, message)| Status { code, message });
    (
        (
            hostile_id(16),
            hostile_id(8),
            hostile_id(8),
            pooled(&["GET /api/{id}", "SELECT items", "checkout", "/"]),
            prop_oneof![4 => 0..6i32, 1 => hostile_i32()],
        ),
        (
            hostile_time(),
            prop_oneof![
                6 => (0..5_000_000_000u64).prop_map(Some),
                1 => Just(None),
            ],
            hostile_time(),
        ),
        (
            attributes(),
            vec(event, 0..3),
            vec(link, 0..2),
            proptest::option::weighted(0.9, status),
            hostile_text(),
        ),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id, name, kind),
                (start, duration, other_end),
                (attributes, events, links, status, trace_state),
            )| Span {
                trace_id,
                span_id,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                // Mostly a real duration; sometimes an unrelated end, before the start too.
                end_time_unix_nano: duration.map_or(other_end, |d| start.saturating_add(d)),
                attributes,
                events,
                links,
                status,
                trace_state,
                ..Default::default()
            },
        )
        .boxed()
}

pub fn trace_export() -> BoxedStrategy<ExportTraceServiceRequest> {
    let scope_spans = (scope(), vec(span_strategy(), 0..8)).prop_map(|(scope, spans)| ScopeSpans {
        scope,
        spans,
        ..Default::default()
    });
    vec((resource(), vec(scope_spans, 0..3)), 0..3)
        .prop_map(|resources| ExportTraceServiceRequest {
            resource_spans: resources
                .into_iter()
                .map(|(resource, scope_spans)| ResourceSpans {
                    resource,
                    scope_spans,
                    ..Default::default()
                })
                .collect(),
        })
        .boxed()
}

fn exemplars() -> BoxedStrategy<Vec<opentelemetry_proto::tonic::metrics::v1::Exemplar>> {
    vec(
        (hostile_time(), hostile_f64(), hostile_id(16), hostile_id(8)),
        0..2,
    )
    .prop_map(|exemplars| {
        exemplars
            .into_iter()
            .map(|(time_unix_nano, value, trace_id, span_id)| {
                opentelemetry_proto::tonic::metrics::v1::Exemplar {
                    time_unix_nano,
                    value: Some(
                        opentelemetry_proto::tonic::metrics::v1::exemplar::Value::AsDouble(value),
                    ),
                    trace_id,
                    span_id,
                    ..Default::default()
                }
            })
            .collect()
    })
    .boxed()
}

/// Start and end of a point, and its attributes.
fn point_frame() -> impl Strategy<Value = (u64, u64, Vec<KeyValue>)> {
    (hostile_time(), hostile_time(), attributes())
}

fn number_points() -> BoxedStrategy<Vec<NumberDataPoint>> {
    let value = prop_oneof![
        hostile_f64().prop_map(number_data_point::Value::AsDouble),
        prop_oneof![any::<i64>(), -5..100i64].prop_map(number_data_point::Value::AsInt),
    ];
    vec(
        (
            point_frame(),
            proptest::option::weighted(0.95, value),
            exemplars(),
        ),
        0..4,
    )
    .prop_map(|points| {
        points
            .into_iter()
            .map(
                |((start, time, attributes), value, exemplars)| NumberDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    attributes,
                    value,
                    exemplars,
                    ..Default::default()
                },
            )
            .collect()
    })
    .boxed()
}

/// Bounds that are sorted, or nearly: valid layouts must be common for merges to happen.
fn explicit_bounds() -> BoxedStrategy<Vec<f64>> {
    prop_oneof![
        3 => Just(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        2 => vec(-10.0..10.0f64, 0..8).prop_map(|mut bounds| {
            bounds.sort_by(f64::total_cmp);
            bounds
        }),
        1 => vec(hostile_f64(), 0..8),
        1 => (1..5000usize).prop_map(|n| (0..n).map(|i| i as f64).collect()),
    ]
    .boxed()
}

fn histogram_points() -> BoxedStrategy<Vec<HistogramDataPoint>> {
    let point = (
        point_frame(),
        explicit_bounds(),
        prop_oneof![3 => Just(None), 1 => vec(hostile_u64(), 0..14).prop_map(Some)],
        vec(0..20u64, 12),
        (hostile_u64(), proptest::option::of(hostile_f64())),
        (
            proptest::option::of(hostile_f64()),
            proptest::option::of(hostile_f64()),
        ),
    );
    vec(point, 0..3)
        .prop_map(|points| {
            points
                .into_iter()
                .map(
                    |(
                        (start, time, attributes),
                        bounds,
                        counts,
                        fill,
                        (count, sum),
                        (min, max),
                    )| {
                        // Without explicit counts, a layout that fits the bounds and a matching count.
                        let (bucket_counts, count) = match counts {
                            Some(counts) => (counts, count),
                            None => {
                                let counts: Vec<u64> = fill
                                    .iter()
                                    .cycle()
                                    .take(bounds.len() + 1)
                                    .copied()
                                    .collect();
                                let total = counts.iter().sum();
                                (counts, total)
                            }
                        };
                        HistogramDataPoint {
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            attributes,
                            count,
                            sum,
                            bucket_counts,
                            explicit_bounds: bounds,
                            min,
                            max,
                            ..Default::default()
                        }
                    },
                )
                .collect()
        })
        .boxed()
}

fn exponential_points() -> BoxedStrategy<Vec<ExponentialHistogramDataPoint>> {
    let buckets = (hostile_i32(), vec(hostile_u64(), 0..12)).prop_map(|(offset, bucket_counts)| {
        exponential_histogram_data_point::Buckets {
            offset,
            bucket_counts,
        }
    });
    let point = (
        point_frame(),
        prop_oneof![4 => -10..21i32, 1 => hostile_i32()],
        (
            hostile_u64(),
            hostile_u64(),
            proptest::option::of(hostile_f64()),
        ),
        (
            proptest::option::of(buckets.clone()),
            proptest::option::of(buckets),
        ),
        (
            proptest::option::of(hostile_f64()),
            proptest::option::of(hostile_f64()),
        ),
    );
    vec(point, 0..3)
        .prop_map(|points| {
            points
                .into_iter()
                .map(
                    |(
                        (start, time, attributes),
                        scale,
                        (count, zero_count, sum),
                        (positive, negative),
                        (min, max),
                    )| {
                        ExponentialHistogramDataPoint {
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            attributes,
                            count,
                            sum,
                            scale,
                            zero_count,
                            positive,
                            negative,
                            min,
                            max,
                            ..Default::default()
                        }
                    },
                )
                .collect()
        })
        .boxed()
}

fn summary_points() -> BoxedStrategy<Vec<SummaryDataPoint>> {
    let quantile = (hostile_f64(), hostile_f64())
        .prop_map(|(quantile, value)| summary_data_point::ValueAtQuantile { quantile, value });
    vec(
        (
            point_frame(),
            hostile_u64(),
            hostile_f64(),
            vec(quantile, 0..4),
        ),
        0..3,
    )
    .prop_map(|points| {
        points
            .into_iter()
            .map(
                |((start, time, attributes), count, sum, quantile_values)| SummaryDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    attributes,
                    count,
                    sum,
                    quantile_values,
                    ..Default::default()
                },
            )
            .collect()
    })
    .boxed()
}

fn metric_data() -> BoxedStrategy<Option<metric::Data>> {
    let temporality = prop_oneof![4 => 0..3i32, 1 => hostile_i32()];
    let data = prop_oneof![
        number_points().prop_map(|data_points| metric::Data::Gauge(Gauge { data_points })),
        (number_points(), temporality.clone(), any::<bool>()).prop_map(
            |(data_points, aggregation_temporality, is_monotonic)| metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality,
                is_monotonic,
            })
        ),
        (histogram_points(), temporality.clone()).prop_map(
            |(data_points, aggregation_temporality)| metric::Data::Histogram(Histogram {
                data_points,
                aggregation_temporality,
            })
        ),
        (exponential_points(), temporality).prop_map(|(data_points, aggregation_temporality)| {
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points,
                aggregation_temporality,
            })
        }),
        summary_points().prop_map(|data_points| metric::Data::Summary(Summary { data_points })),
    ];
    proptest::option::weighted(0.95, data).boxed()
}

const METRIC_NAMES: &[&str] = &[
    "http.server.request.duration",
    "http.server.duration",
    "rpc.server.duration",
    "process.cpu.utilization",
    "db.client.connection.count",
    "cache.requests",
];

pub fn metrics_export() -> BoxedStrategy<ExportMetricsServiceRequest> {
    let metric = (
        pooled(METRIC_NAMES),
        pooled(&["s", "ms", "By", "1", "{request}"]),
        hostile_text(),
        metric_data(),
    )
        .prop_map(|(name, unit, description, data)| Metric {
            name,
            unit,
            description,
            data,
            ..Default::default()
        });
    let scope_metrics = (scope(), vec(metric, 0..4)).prop_map(|(scope, metrics)| ScopeMetrics {
        scope,
        metrics,
        ..Default::default()
    });
    vec((resource(), vec(scope_metrics, 0..3)), 0..3)
        .prop_map(|resources| ExportMetricsServiceRequest {
            resource_metrics: resources
                .into_iter()
                .map(|(resource, scope_metrics)| ResourceMetrics {
                    resource,
                    scope_metrics,
                    ..Default::default()
                })
                .collect(),
        })
        .boxed()
}
