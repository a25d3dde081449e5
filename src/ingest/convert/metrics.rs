//! OTLP metric exports → [`MetricPoint`]s. Every data point is checked against the data model
//! ([`super::points`]): a point that breaks it is rejected and counted, never kept. Every string
//! that becomes part of a series key is length-limited ([`crate::model::limits`]), and a point
//! keeps a bounded number and size of attributes, so one series key is small whatever arrives.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, metric, number_data_point,
};

use prost::Message;

use super::points::{self, InvalidPoint};
use super::{Converted, attribute_text, instance_id, service_name};
use crate::model::limits::{
    Field, MAX_METRIC_ATTRIBUTE_BYTES, MAX_METRIC_POINT_ATTRIBUTES, limit_str,
};
use crate::model::log_record::LOG_RECORDS_METRIC;
use crate::model::{
    InstanceSeen, MetricKind, MetricPoint, MetricSeriesKey, MetricValue, Temporality,
};

/// Converts a metrics export. Summary metrics and malformed points are rejected.
pub fn convert_metrics(request: ExportMetricsServiceRequest) -> Converted {
    let mut out = Converted::default();
    for resource_metrics in request.resource_metrics {
        let service = service_name(resource_metrics.resource.as_ref());
        if let Some(instance) = instance_id(resource_metrics.resource.as_ref()) {
            out.batch.instances.push(InstanceSeen {
                service: service.as_str().into(),
                instance,
            });
        }
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default();
        for scope_metrics in resource_metrics.scope_metrics {
            let stream = stream_of(&resource, scope_metrics.scope.as_ref());
            for metric in scope_metrics.metrics {
                convert_metric(&service, stream, metric, &mut out);
            }
        }
    }
    out
}

/// The identity of a metric stream's producer: its resource (as encoded, which one SDK repeats
/// byte for byte) and its instrumentation scope. A fixed seed keeps it the same for the life of
/// the process, which is as long as the cumulative state it keys.
fn stream_of(resource: &[u8], scope: Option<&InstrumentationScope>) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = foldhash::fast::FixedState::with_seed(STREAM_SEED).build_hasher();
    resource.hash(&mut hasher);
    if let Some(scope) = scope {
        scope.name.hash(&mut hasher);
        scope.version.hash(&mut hasher);
    }
    hasher.finish()
}

const STREAM_SEED: u64 = 0x7265_646c_696e_6531;

fn temporality(value: i32) -> Option<Temporality> {
    match AggregationTemporality::try_from(value).ok()? {
        AggregationTemporality::Delta => Some(Temporality::Delta),
        AggregationTemporality::Cumulative => Some(Temporality::Cumulative),
        AggregationTemporality::Unspecified => None,
    }
}

/// Fields every data point of one metric shares, already length-limited.
struct PointContext<'a> {
    /// "gauge", "sum", …: how rejections name the metric's type.
    what: &'static str,
    service: &'a str,
    stream: u64,
    name: &'a str,
    unit: &'a str,
    description: &'a str,
    kind: MetricKind,
    temporality: Temporality,
}

impl PointContext<'_> {
    /// Keeps the point, or rejects it with the reason.
    fn add(
        &self,
        out: &mut Converted,
        attributes: &[KeyValue],
        start_unix_ns: u64,
        time_unix_ns: u64,
        value: Result<MetricValue, InvalidPoint>,
    ) {
        match value {
            Ok(value) => out.batch.metric_points.push(MetricPoint {
                series: MetricSeriesKey {
                    service: self.service.to_string(),
                    name: self.name.to_string(),
                    attributes: series_attributes(attributes),
                },
                stream: self.stream,
                kind: self.kind,
                unit: self.unit.to_string(),
                description: self.description.to_string(),
                start_unix_ns,
                time_unix_ms: (time_unix_ns / 1_000_000) as i64,
                temporality: self.temporality,
                value,
            }),
            Err(why) => out.reject(1, || format!("{} {:?}: {why}", self.what, self.name)),
        }
    }
}

fn convert_metric(service: &str, stream: u64, metric: Metric, out: &mut Converted) {
    if metric.name.is_empty() {
        out.reject(count_points(&metric.data), || {
            "metric without a name".into()
        });
        return;
    }
    if metric.name == LOG_RECORDS_METRIC {
        out.reject(count_points(&metric.data), || {
            format!("metric {LOG_RECORDS_METRIC:?}: the name is redline's own (log counts)")
        });
        return;
    }
    let name = limit_str(&metric.name, Field::MetricName);
    let unit = limit_str(&metric.unit, Field::MetricUnit);
    let description = limit_str(&metric.description, Field::MetricDescription);
    let context = |what, kind, temporality| PointContext {
        what,
        service,
        stream,
        name: &name,
        unit: &unit,
        description: &description,
        kind,
        temporality,
    };
    let unspecified = |out: &mut Converted, what: &str, points: usize| {
        out.reject(points as u64, || {
            format!("{what} {name:?}: unspecified aggregation temporality")
        });
    };
    match &metric.data {
        None => out.reject(0, || format!("metric {name:?} has no data")),
        Some(metric::Data::Gauge(gauge)) => {
            let ctx = context("gauge", MetricKind::Gauge, Temporality::Delta);
            add_numbers(&ctx, out, &gauge.data_points);
        }
        Some(metric::Data::Sum(sum)) => {
            let Some(temporality) = temporality(sum.aggregation_temporality) else {
                return unspecified(out, "sum", sum.data_points.len());
            };
            let kind = if sum.is_monotonic {
                MetricKind::Counter
            } else {
                MetricKind::UpDownCounter
            };
            let ctx = context("sum", kind, temporality);
            add_numbers(&ctx, out, &sum.data_points);
        }
        Some(metric::Data::Histogram(histogram)) => {
            let Some(temporality) = temporality(histogram.aggregation_temporality) else {
                return unspecified(out, "histogram", histogram.data_points.len());
            };
            let ctx = context("histogram", MetricKind::Histogram, temporality);
            for p in &histogram.data_points {
                let value = points::explicit_histogram(p).map(MetricValue::Histogram);
                ctx.add(
                    out,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        Some(metric::Data::ExponentialHistogram(histogram)) => {
            let Some(temporality) = temporality(histogram.aggregation_temporality) else {
                return unspecified(out, "exponential histogram", histogram.data_points.len());
            };
            let ctx = context(
                "exponential histogram",
                MetricKind::ExponentialHistogram,
                temporality,
            );
            for p in &histogram.data_points {
                let value = points::exponential_histogram(p).map(MetricValue::Histogram);
                ctx.add(
                    out,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        Some(metric::Data::Summary(summary)) => {
            out.reject(summary.data_points.len() as u64, || {
                format!("summary {name:?}: summary metrics are not supported, export a histogram")
            });
        }
    }
}

fn count_points(data: &Option<metric::Data>) -> u64 {
    (match data {
        None => 0,
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
    }) as u64
}

/// The points of a gauge or a sum.
fn add_numbers(ctx: &PointContext<'_>, out: &mut Converted, data_points: &[NumberDataPoint]) {
    for p in data_points {
        let value = number_value(p.value.as_ref()).map(MetricValue::Number);
        ctx.add(
            out,
            &p.attributes,
            p.start_time_unix_nano,
            p.time_unix_nano,
            value,
        );
    }
}

fn number_value(value: Option<&number_data_point::Value>) -> Result<f64, InvalidPoint> {
    match value.ok_or(InvalidPoint::MissingValue)? {
        number_data_point::Value::AsDouble(v) => points::finite_number("value", *v),
        number_data_point::Value::AsInt(v) => Ok(*v as f64),
    }
}

/// A point's attributes as its series key holds them: keys and values length-limited, then at
/// most [`MAX_METRIC_POINT_ATTRIBUTES`] of them and [`MAX_METRIC_ATTRIBUTE_BYTES`] in all, the
/// first in key order (so a point keeps the same attributes whatever order they arrive in).
fn series_attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = attributes
        .iter()
        .map(|kv| {
            (
                limit_str(&kv.key, Field::MetricAttributeKey).into_owned(),
                attribute_text(kv.value.as_ref(), Field::MetricAttributeValue),
            )
        })
        .collect();
    let mut bytes = 0usize;
    let first_dropped = map.iter().enumerate().find_map(|(i, (key, value))| {
        bytes += key.len() + value.len();
        (i >= MAX_METRIC_POINT_ATTRIBUTES || bytes > MAX_METRIC_ATTRIBUTE_BYTES)
            .then(|| key.clone())
    });
    if let Some(key) = first_dropped {
        map.split_off(&key);
        Field::MetricAttributes.count_truncation();
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Buckets;
    use crate::model::limits::{
        MARKER, MAX_ATTRIBUTE_KEY_BYTES, MAX_DESCRIPTION_BYTES, MAX_METRIC_ATTRIBUTE_VALUE_BYTES,
        MAX_METRIC_NAME_BYTES, MAX_SERVICE_NAME_BYTES, MAX_UNIT_BYTES,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: points,
            })),
            ..Default::default()
        }
    }

    fn number(value: number_data_point::Value, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            value: Some(value),
            attributes,
            time_unix_nano: 1_000_000_000,
            ..Default::default()
        }
    }

    fn histogram(points: Vec<HistogramDataPoint>) -> Metric {
        Metric {
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_points_are_rejected_with_a_reason_and_the_rest_kept() {
        let good = HistogramDataPoint {
            count: 3,
            explicit_bounds: vec![0.1],
            bucket_counts: vec![1, 2],
            ..Default::default()
        };
        let no_counts = HistogramDataPoint {
            count: 3,
            explicit_bounds: vec![0.1],
            ..Default::default()
        };
        let min_above_max = HistogramDataPoint {
            min: Some(2.0),
            max: Some(1.0),
            ..good.clone()
        };
        let converted = convert_metrics(request(
            "svc",
            vec![
                histogram(vec![no_counts, good, min_above_max]),
                gauge(
                    "g",
                    vec![
                        number(number_data_point::Value::AsDouble(f64::NAN), vec![]),
                        number(number_data_point::Value::AsInt(i64::MAX), vec![]),
                    ],
                ),
            ],
        ));
        assert_eq!(converted.rejected, 3);
        assert_eq!(converted.batch.metric_points.len(), 2);
        let message = converted.first_error.unwrap();
        assert!(
            message.contains("http.server.request.duration") && message.contains("bucket counts"),
            "{message}"
        );
    }

    #[test]
    fn sums_with_non_finite_values_are_rejected() {
        let sum = Metric {
            name: "c".into(),
            data: Some(metric::Data::Sum(Sum {
                data_points: vec![
                    number(number_data_point::Value::AsDouble(f64::INFINITY), vec![]),
                    number(number_data_point::Value::AsDouble(1.0), vec![]),
                ],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let converted = convert_metrics(request("svc", vec![sum]));
        assert_eq!(converted.rejected, 1);
        assert!(converted.first_error.unwrap().contains("not finite"));
    }

    #[test]
    fn strings_that_become_keys_are_cut_to_their_limits() {
        let huge = "v".repeat(1 << 20);
        let mut metric = gauge(
            &"n".repeat(1000),
            vec![number(
                number_data_point::Value::AsInt(1),
                vec![kv("route", &huge), kv(&"k".repeat(1000), "x")],
            )],
        );
        metric.unit = "u".repeat(1000);
        metric.description = "d".repeat(10_000);
        let converted = convert_metrics(request(&huge, vec![metric]));
        let point = &converted.batch.metric_points[0];
        assert_eq!(point.series.service.len(), MAX_SERVICE_NAME_BYTES);
        assert!(point.series.service.ends_with(MARKER));
        assert_eq!(point.series.name.len(), MAX_METRIC_NAME_BYTES);
        assert_eq!(point.unit.len(), MAX_UNIT_BYTES);
        assert_eq!(point.description.len(), MAX_DESCRIPTION_BYTES);
        assert_eq!(
            point.series.attributes["route"].len(),
            MAX_METRIC_ATTRIBUTE_VALUE_BYTES
        );
        assert!(
            point
                .series
                .attributes
                .keys()
                .any(|k| k.len() == MAX_ATTRIBUTE_KEY_BYTES)
        );
        assert!(
            point
                .series
                .attributes
                .keys()
                .all(|k| k.len() <= MAX_ATTRIBUTE_KEY_BYTES)
        );
        // Cut strings stay strings: the key serializes and compares like any other.
        assert!(serde_json::to_string(&point.series.attributes).is_ok());
    }

    #[test]
    fn a_point_keeps_a_bounded_number_and_size_of_attributes() {
        // Arrival order does not matter: the first keys in order are kept.
        let many: Vec<KeyValue> = (0..100)
            .rev()
            .map(|i| kv(&format!("a{i:03}"), "v"))
            .collect();
        let kept = series_attributes(&many);
        assert_eq!(kept.len(), MAX_METRIC_POINT_ATTRIBUTES);
        assert_eq!(kept.keys().next().unwrap(), "a000");
        assert_eq!(
            kept.keys().last().unwrap(),
            &format!("a{:03}", MAX_METRIC_POINT_ATTRIBUTES - 1)
        );
        // Long values: the byte budget binds before the count.
        let long: Vec<KeyValue> = (0..30)
            .map(|i| kv(&format!("k{i:02}"), &"x".repeat(1000)))
            .collect();
        let kept = series_attributes(&long);
        let bytes: usize = kept.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= MAX_METRIC_ATTRIBUTE_BYTES, "{bytes}");
        assert!(kept.len() < 30 && !kept.is_empty());
        // A few ordinary attributes are untouched.
        let few = vec![kv("http.route", "/a"), kv("http.request.method", "GET")];
        assert_eq!(series_attributes(&few).len(), 2);
    }

    #[test]
    fn wide_exponential_points_convert_within_the_bucket_budget() {
        let metric = Metric {
            name: "e".into(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    count: 500,
                    scale: 8,
                    positive: Some(exponential_histogram_data_point::Buckets {
                        offset: 0,
                        bucket_counts: vec![1; 500],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        };
        let converted = convert_metrics(request("svc", vec![metric]));
        assert_eq!(converted.rejected, 0);
        let MetricValue::Histogram(value) = &converted.batch.metric_points[0].value else {
            panic!("histogram");
        };
        let Buckets::Exponential { counts, scale, .. } = &value.buckets else {
            panic!("exponential");
        };
        assert!(counts.len() <= crate::aggregate::histogram::MAX_EXPONENTIAL_BUCKETS);
        assert_eq!(counts.iter().sum::<u64>(), 500);
        assert!(*scale < 8);
    }
}
