//! A kept span's stored form ([`SpanRecord`]), read from its OTLP encoding when the trace
//! sampler keeps it, and OTLP attribute values as text. Every string is cut to its limit
//! ([`super::limits`]): kept spans are shown, and what they show is bounded.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message;

use super::limits::{self, Field, limit_str, limit_string};
use super::{IncomingSpan, SpanEvent, SpanRecord, SpanStatus};

/// Renders an attribute value as text (arrays and maps as JSON-like text).
pub fn any_value_to_string(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(any_value_to_string).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|kv| {
                    let v = kv
                        .value
                        .as_ref()
                        .map(any_value_to_string)
                        .unwrap_or_default();
                    format!("{}={}", kv.key, v)
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(any_value::Value::StringValueStrindex(i)) => format!("#{i}"),
        None => String::new(),
    }
}

/// An attribute value as text, cut to `field`'s limit. A string value is copied only up to the
/// limit; other kinds are rendered, then cut.
pub fn attribute_text(value: Option<&AnyValue>, field: Field) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => limit_str(s, field).into_owned(),
        Some(_) => limit_string(value.map(any_value_to_string).unwrap_or_default(), field),
        None => String::new(),
    }
}

/// A kept span's (or event's) attributes: the first [`limits::MAX_SPAN_ATTRIBUTES`] in arrival
/// order (as the SDKs limit them), keys and values cut to their limits.
fn span_attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    if attributes.len() > limits::MAX_SPAN_ATTRIBUTES {
        Field::SpanAttributes.count_truncation();
    }
    attributes
        .iter()
        .take(limits::MAX_SPAN_ATTRIBUTES)
        .map(|kv| {
            (
                limit_str(&kv.key, Field::SpanAttributeKey).into_owned(),
                attribute_text(kv.value.as_ref(), Field::SpanAttributeValue),
            )
        })
        .collect()
}

/// Flattens a kept span, given its encoding, into the form stored for trace views. `None`
/// only if the bytes do not decode, which cannot happen for bytes that passed
/// `ingest::convert::convert_traces`.
pub fn span_record(incoming: &IncomingSpan, encoded: &[u8]) -> Option<SpanRecord> {
    let span = Span::decode(encoded).ok()?;
    let status = match span.status.as_ref().map(|s| s.code) {
        Some(c) if c == StatusCode::Error as i32 => SpanStatus::Error,
        Some(c) if c == StatusCode::Ok as i32 => SpanStatus::Ok,
        _ => SpanStatus::Unset,
    };
    Some(SpanRecord {
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: (!span.parent_span_id.is_empty())
            .then(|| hex::encode(&span.parent_span_id)),
        service: incoming.service.to_string(),
        kind: span_kind(span.kind),
        start_unix_ns: span.start_time_unix_nano,
        end_unix_ns: span.end_time_unix_nano,
        status,
        status_message: span
            .status
            .as_ref()
            .map(|s| limit_str(&s.message, Field::SpanStatusMessage).into_owned())
            .unwrap_or_default(),
        attributes: span_attributes(&span.attributes),
        events: span_events(&span.events),
        endpoint: incoming.endpoint.as_deref().cloned(),
        is_error: incoming.is_error,
        name: limit_string(span.name, Field::SpanName),
    })
}

/// The first [`limits::MAX_SPAN_EVENTS`] events, names and attributes limited.
fn span_events(events: &[opentelemetry_proto::tonic::trace::v1::span::Event]) -> Vec<SpanEvent> {
    if events.len() > limits::MAX_SPAN_EVENTS {
        Field::SpanEvents.count_truncation();
    }
    events
        .iter()
        .take(limits::MAX_SPAN_EVENTS)
        .map(|e| SpanEvent {
            name: limit_str(&e.name, Field::SpanName).into_owned(),
            time_unix_ns: e.time_unix_nano,
            attributes: span_attributes(&e.attributes),
        })
        .collect()
}

fn span_kind(kind: i32) -> super::SpanKind {
    use super::SpanKind as Kind;
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => Kind::Internal,
        Ok(SpanKind::Server) => Kind::Server,
        Ok(SpanKind::Client) => Kind::Client,
        Ok(SpanKind::Producer) => Kind::Producer,
        Ok(SpanKind::Consumer) => Kind::Consumer,
        _ => Kind::Unspecified,
    }
}
