//! OTLP log exports → counts and candidate records. Every record is counted per service and
//! severity (as points of [`LOG_RECORDS_METRIC`]); only the records redline may keep — WARN and
//! above, or carrying a trace id — are turned into [`LogRecord`]s, every string cut to its
//! limit. A severity number outside the data model's 0–24 rejects the record; ids of the wrong
//! length are ignored, as the data model tells receivers to (the record is then not associated
//! with a trace), and counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::HashMap;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpLogRecord;

use super::{Converted, attribute_text, instance_id, service_name};
use crate::model::limits::{self, Field, limit_str, limit_string};
use crate::model::log_record::{
    ERROR_ATTRIBUTE, IncomingLog, LOG_RECORDS_METRIC, LOG_RECORDS_UNIT, LogRecord,
    MAX_SEVERITY_NUMBER, SEVERITY_ATTRIBUTE, Severity, WARN_NUMBER,
};
use crate::model::{
    InstanceSeen, MetricKind, MetricPoint, MetricSeriesKey, MetricValue, Temporality,
};
use crate::self_metrics;

/// Why a log record is rejected, per the OTLP data model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum InvalidLog {
    #[error("severity_number must be between 0 and 24")]
    SeverityNumber,
}

/// Converts a logs export arriving at `now_ms`.
pub fn convert_logs(request: ExportLogsServiceRequest, now_ms: i64) -> Converted {
    let mut out = Converted::default();
    // (service, severity, second) → records, so a batch adds one point per group.
    let mut counts: HashMap<(Arc<str>, Severity, i64), u64> = HashMap::default();
    for resource_logs in request.resource_logs {
        let service: Arc<str> = service_name(resource_logs.resource.as_ref()).into();
        if let Some(instance) = instance_id(resource_logs.resource.as_ref()) {
            out.batch.instances.push(InstanceSeen {
                service: service.clone(),
                instance,
            });
        }
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                let severity_number = match u8::try_from(record.severity_number) {
                    Ok(n) if i32::from(n) <= MAX_SEVERITY_NUMBER => n,
                    _ => {
                        out.reject(1, || {
                            format!(
                                "log record with severity_number {}: {}",
                                record.severity_number,
                                InvalidLog::SeverityNumber
                            )
                        });
                        continue;
                    }
                };
                let number = Severity::effective_number(severity_number, &record.severity_text);
                let time_unix_ns = record_time(&record, now_ms);
                let second_ms = (time_unix_ns / 1_000_000_000) as i64 * 1000;
                *counts
                    .entry((service.clone(), Severity::of_number(number), second_ms))
                    .or_default() += 1;
                out.batch.log_records += 1;
                let trace_id = valid_id::<16>(&record.trace_id, "trace_id", &mut out);
                let span_id = valid_id::<8>(&record.span_id, "span_id", &mut out);
                if number < WARN_NUMBER && trace_id.is_none() {
                    continue;
                }
                out.batch.logs.push(IncomingLog {
                    trace_id,
                    record: LogRecord {
                        time_unix_ns,
                        service: service.to_string(),
                        severity_number: number,
                        severity_text: limit_str(&record.severity_text, Field::LogSeverityText)
                            .into_owned(),
                        body: attribute_text(record.body.as_ref(), Field::LogBody),
                        trace_id: trace_id.map(hex::encode),
                        // A span id without a trace id points nowhere.
                        span_id: span_id.filter(|_| trace_id.is_some()).map(hex::encode),
                        attributes: log_attributes(&record.attributes, &record.event_name),
                    },
                });
            }
        }
    }
    out.batch.metric_points.extend(counts.into_iter().map(
        |((service, severity, second_ms), count)| count_point(&service, severity, second_ms, count),
    ));
    out
}

/// The record's time, else its observed time, else its arrival.
fn record_time(record: &OtlpLogRecord, now_ms: i64) -> u64 {
    [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|t| *t != 0)
        .unwrap_or(now_ms.max(0) as u64 * 1_000_000)
}

/// An id of `N` bytes, not all zero; an empty one is no id, and one of another length is
/// ignored with a warning in the response.
fn valid_id<const N: usize>(bytes: &[u8], name: &str, out: &mut Converted) -> Option<[u8; N]> {
    if bytes.is_empty() {
        return None;
    }
    let Ok(id) = <[u8; N]>::try_from(bytes) else {
        self_metrics::log_ids_ignored();
        if out.first_error.is_none() {
            out.first_error = Some(format!(
                "a log record's {name} of {} bytes was ignored: it must be {N} bytes",
                bytes.len()
            ));
        }
        return None;
    };
    id.iter().any(|b| *b != 0).then_some(id)
}

/// A kept record's attributes: the first [`limits::MAX_SPAN_ATTRIBUTES`], keys and values cut
/// to their limits; an event's name as `event.name`.
fn log_attributes(attributes: &[KeyValue], event_name: &str) -> BTreeMap<String, String> {
    if attributes.len() > limits::MAX_SPAN_ATTRIBUTES {
        Field::LogAttributes.count_truncation();
    }
    let mut out: BTreeMap<String, String> = attributes
        .iter()
        .take(limits::MAX_SPAN_ATTRIBUTES)
        .map(|kv| {
            (
                limit_str(&kv.key, Field::LogAttributeKey).into_owned(),
                attribute_text(kv.value.as_ref(), Field::LogAttributeValue),
            )
        })
        .collect();
    if !event_name.is_empty() {
        out.entry("event.name".into())
            .or_insert_with(|| limit_string(event_name.to_string(), Field::LogAttributeValue));
    }
    out
}

/// One point of [`LOG_RECORDS_METRIC`]: `count` records of `severity` from `service`.
fn count_point(service: &str, severity: Severity, second_ms: i64, count: u64) -> MetricPoint {
    let attributes = BTreeMap::from([
        (
            SEVERITY_ATTRIBUTE.to_string(),
            severity.as_str().to_string(),
        ),
        (
            ERROR_ATTRIBUTE.to_string(),
            (severity >= Severity::Error).to_string(),
        ),
    ]);
    MetricPoint {
        series: MetricSeriesKey {
            service: service.to_string(),
            name: LOG_RECORDS_METRIC.to_string(),
            attributes,
        },
        // Delta counts: no cumulative state to keep apart.
        stream: 0,
        kind: MetricKind::Counter,
        unit: LOG_RECORDS_UNIT.to_string(),
        description: "Log records redline received, by severity".to_string(),
        start_unix_ns: 0,
        time_unix_ms: second_ms,
        temporality: Temporality::Delta,
        value: MetricValue::Number(count as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    const NOW_MS: i64 = 1_800_000_000_000;

    fn text(value: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        })
    }

    fn record(severity_number: i32, body: &str, trace_id: Vec<u8>) -> OtlpLogRecord {
        OtlpLogRecord {
            time_unix_nano: NOW_MS as u64 * 1_000_000,
            severity_number,
            body: text(body),
            span_id: if trace_id.is_empty() {
                Vec::new()
            } else {
                vec![7; 8]
            },
            trace_id,
            ..Default::default()
        }
    }

    fn request(records: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: text("api"),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn counted(converted: &Converted, severity: &str) -> f64 {
        converted
            .batch
            .metric_points
            .iter()
            .filter(|p| p.series.attributes[SEVERITY_ATTRIBUTE] == severity)
            .map(|p| match p.value {
                MetricValue::Number(n) => n,
                MetricValue::Histogram(_) => 0.0,
            })
            .sum()
    }

    #[test]
    fn every_record_is_counted_and_only_candidates_are_kept() {
        let converted = convert_logs(
            request(vec![
                record(9, "info, no trace", Vec::new()),
                record(9, "info in a trace", vec![1; 16]),
                record(13, "warn", Vec::new()),
                record(17, "error", Vec::new()),
                record(17, "error too", Vec::new()),
            ]),
            NOW_MS,
        );
        assert_eq!(converted.rejected, 0);
        assert_eq!(converted.batch.log_records, 5);
        assert_eq!(counted(&converted, "INFO"), 2.0);
        assert_eq!(counted(&converted, "ERROR"), 2.0);
        let bodies: Vec<&str> = converted
            .batch
            .logs
            .iter()
            .map(|l| l.record.body.as_str())
            .collect();
        assert_eq!(bodies, ["info in a trace", "warn", "error", "error too"]);
        let traced = &converted.batch.logs[0].record;
        assert_eq!(traced.trace_id.as_deref(), Some("01".repeat(16).as_str()));
        assert_eq!(traced.span_id.as_deref(), Some("07".repeat(8).as_str()));
    }

    #[test]
    fn hostile_records_are_rejected_cut_or_unassociated() {
        let mut huge = record(17, &"x".repeat(1 << 20), vec![1; 15]);
        huge.attributes = (0..1000)
            .map(|i| KeyValue {
                key: format!("k{i}"),
                value: text("v"),
                ..Default::default()
            })
            .collect();
        let converted = convert_logs(
            request(vec![
                record(25, "too severe", Vec::new()),
                record(-1, "negative", Vec::new()),
                huge,
                record(9, "zero trace id", vec![0; 16]),
            ]),
            NOW_MS,
        );
        assert_eq!(converted.rejected, 2);
        assert!(converted.first_error.unwrap().contains("severity_number"));
        assert_eq!(converted.batch.log_records, 2);
        assert_eq!(converted.batch.logs.len(), 1, "the INFO record lost its id");
        let kept = &converted.batch.logs[0].record;
        assert_eq!(kept.body.len(), limits::MAX_LOG_BODY_BYTES);
        assert_eq!(kept.trace_id, None);
        assert_eq!(kept.span_id, None);
        assert_eq!(kept.attributes.len(), limits::MAX_SPAN_ATTRIBUTES);
    }

    #[test]
    fn severity_text_stands_in_for_a_missing_number_and_time_for_a_missing_one() {
        let mut warning = record(0, "by text", Vec::new());
        warning.severity_text = "Warning".into();
        warning.time_unix_nano = 0;
        let converted = convert_logs(request(vec![warning]), NOW_MS);
        let kept = &converted.batch.logs[0].record;
        assert_eq!(kept.severity_number, WARN_NUMBER);
        assert_eq!(kept.severity_label(), "Warning");
        assert_eq!(kept.time_unix_ns, NOW_MS as u64 * 1_000_000);
    }
}
