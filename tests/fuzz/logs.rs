//! Hostile OTLP log exports: severity numbers far outside 0–24, ids of every length, bodies of
//! every value type and any size, times from 1970 to the end of `u64`, markup in every text,
//! trace ids from a small pool (so records meet kept traces and each other).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use proptest::collection::vec;
use proptest::prelude::*;

use super::otlp::{
    attributes, hostile_i32, hostile_id, hostile_text, hostile_time, hostile_value, pooled,
    resource, scope,
};

/// A trace id from a pool of four, or a hostile one.
fn trace_id() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => (1..5u8).prop_map(|n| vec![n; 16]),
        1 => Just(Vec::new()),
        2 => hostile_id(16),
    ]
    .boxed()
}

fn log_record() -> BoxedStrategy<LogRecord> {
    (
        (hostile_time(), hostile_time()),
        (
            prop_oneof![6 => 0..25i32, 1 => hostile_i32()],
            pooled(&["INFO", "WARN", "ERROR", "warning", "Fatal", ""]),
        ),
        proptest::option::weighted(0.9, hostile_value()),
        (attributes(), trace_id(), hostile_id(8)),
        (
            any::<u32>(),
            prop_oneof![4 => Just(String::new()), 1 => hostile_text()],
        ),
    )
        .prop_map(
            |(
                (time_unix_nano, observed_time_unix_nano),
                (severity_number, severity_text),
                body,
                (attributes, trace_id, span_id),
                (flags, event_name),
            )| LogRecord {
                time_unix_nano,
                observed_time_unix_nano,
                severity_number,
                severity_text,
                body,
                attributes,
                trace_id,
                span_id,
                flags,
                event_name,
                ..Default::default()
            },
        )
        .boxed()
}

pub fn logs_export() -> BoxedStrategy<ExportLogsServiceRequest> {
    let scope_logs =
        (scope(), vec(log_record(), 0..8)).prop_map(|(scope, log_records)| ScopeLogs {
            scope,
            log_records,
            ..Default::default()
        });
    vec((resource(), vec(scope_logs, 0..3)), 0..3)
        .prop_map(|resources| ExportLogsServiceRequest {
            resource_logs: resources
                .into_iter()
                .map(|(resource, scope_logs)| ResourceLogs {
                    resource,
                    scope_logs,
                    ..Default::default()
                })
                .collect(),
        })
        .boxed()
}
