//! Length limits on the strings that arrive from clients and are kept: the parts of keys (service,
//! endpoint, metric series) and the text of kept spans. Cardinality limits count keys, not bytes;
//! these bound the bytes of each key, so a 1 MiB attribute value costs at most its limit.
//!
//! A value over its limit is cut on a UTF-8 character boundary and ends with [`MARKER`], so the
//! result is still valid UTF-8, visibly shortened, and at most the limit long. Two long values
//! with the same prefix become one key: that is the point. Each cut is counted on `/metrics` as
//! `redline_truncated_total{field}`.
//!
//! The check is one length compare; only a value that is actually cut allocates.

use std::borrow::Cow;

use crate::self_metrics;

/// Appended to every cut value (3 bytes in UTF-8).
pub const MARKER: &str = "…";

/// `service.name`. Kubernetes names reach 253 bytes; nothing sensible is longer.
pub const MAX_SERVICE_NAME_BYTES: usize = 256;
/// An endpoint's route (`http.route`, the templated path or the span name). Metric points
/// name their route in an attribute value, which has the same limit.
pub const MAX_ROUTE_BYTES: usize = 256;
/// An endpoint's method when it comes from `rpc.system` (HTTP methods are a fixed set).
pub const MAX_METHOD_BYTES: usize = 32;
/// A metric name: the OpenTelemetry API limits instrument names to 255 characters.
pub const MAX_METRIC_NAME_BYTES: usize = 255;
/// A metric unit: the OpenTelemetry API limits units to 63 ASCII characters.
pub const MAX_UNIT_BYTES: usize = 63;
/// A metric description: the OpenTelemetry API supports descriptions of 1023 characters.
pub const MAX_DESCRIPTION_BYTES: usize = 1023;
/// An attribute key, of a metric point or a kept span.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 128;
/// A metric point's attribute value (the same as a route: `http.route` is one).
pub const MAX_METRIC_ATTRIBUTE_VALUE_BYTES: usize = MAX_ROUTE_BYTES;
/// Attributes of one metric point: the series key holds at most this many …
pub const MAX_METRIC_POINT_ATTRIBUTES: usize = 32;
/// … and at most this many bytes of attribute keys and values, so one series key is at most
/// about 4.6 KiB with its service and name (semantic-convention points use a few hundred bytes).
pub const MAX_METRIC_ATTRIBUTE_BYTES: usize = 4096;
/// Kept spans are shown, not keyed: their text has larger limits. A span's and an event's name.
pub const MAX_SPAN_NAME_BYTES: usize = 1024;
/// A kept span's attribute and event-attribute values (long enough for the top of a stack
/// trace or an SQL statement) and its status message.
pub const MAX_SPAN_TEXT_BYTES: usize = 4096;
/// Attributes of a kept span, events of a kept span, attributes of one event: the SDKs' default
/// limits (128 each).
pub const MAX_SPAN_ATTRIBUTES: usize = 128;
pub const MAX_SPAN_EVENTS: usize = 128;
/// A kept log record's body: long enough for a stack trace's top frames.
pub const MAX_LOG_BODY_BYTES: usize = 16 * 1024;
/// A log record's severity text (`WARNING`, `Error`, …).
pub const MAX_SEVERITY_TEXT_BYTES: usize = 64;

/// What was cut, as the `field` label of `redline_truncated_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ServiceName,
    Route,
    Method,
    MetricName,
    MetricUnit,
    MetricDescription,
    MetricAttributeKey,
    MetricAttributeValue,
    /// Attributes dropped from a metric point beyond the count or byte budget.
    MetricAttributes,
    SpanName,
    SpanStatusMessage,
    SpanAttributeKey,
    SpanAttributeValue,
    /// Attributes dropped from a kept span or one of its events beyond the count limit.
    SpanAttributes,
    /// Events dropped from a kept span beyond the count limit.
    SpanEvents,
    LogBody,
    LogSeverityText,
    LogAttributeKey,
    LogAttributeValue,
    /// Attributes dropped from a kept log record beyond the count limit.
    LogAttributes,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::ServiceName => "service_name",
            Field::Route => "route",
            Field::Method => "method",
            Field::MetricName => "metric_name",
            Field::MetricUnit => "metric_unit",
            Field::MetricDescription => "metric_description",
            Field::MetricAttributeKey => "metric_attribute_key",
            Field::MetricAttributeValue => "metric_attribute_value",
            Field::MetricAttributes => "metric_attributes",
            Field::SpanName => "span_name",
            Field::SpanStatusMessage => "span_status_message",
            Field::SpanAttributeKey => "span_attribute_key",
            Field::SpanAttributeValue => "span_attribute_value",
            Field::SpanAttributes => "span_attributes",
            Field::SpanEvents => "span_events",
            Field::LogBody => "log_body",
            Field::LogSeverityText => "log_severity_text",
            Field::LogAttributeKey => "log_attribute_key",
            Field::LogAttributeValue => "log_attribute_value",
            Field::LogAttributes => "log_attributes",
        }
    }

    /// The byte limit of a text field (`usize::MAX` for the count-limited ones).
    pub fn max_bytes(self) -> usize {
        match self {
            Field::ServiceName => MAX_SERVICE_NAME_BYTES,
            Field::Route => MAX_ROUTE_BYTES,
            Field::Method => MAX_METHOD_BYTES,
            Field::MetricName => MAX_METRIC_NAME_BYTES,
            Field::MetricUnit => MAX_UNIT_BYTES,
            Field::MetricDescription => MAX_DESCRIPTION_BYTES,
            Field::MetricAttributeKey | Field::SpanAttributeKey | Field::LogAttributeKey => {
                MAX_ATTRIBUTE_KEY_BYTES
            }
            Field::MetricAttributeValue => MAX_METRIC_ATTRIBUTE_VALUE_BYTES,
            Field::SpanName => MAX_SPAN_NAME_BYTES,
            Field::SpanStatusMessage | Field::SpanAttributeValue | Field::LogAttributeValue => {
                MAX_SPAN_TEXT_BYTES
            }
            Field::LogBody => MAX_LOG_BODY_BYTES,
            Field::LogSeverityText => MAX_SEVERITY_TEXT_BYTES,
            Field::MetricAttributes
            | Field::SpanAttributes
            | Field::SpanEvents
            | Field::LogAttributes => usize::MAX,
        }
    }

    /// Counts one cut (or one list shortened) of this field.
    pub fn count_truncation(self) {
        self_metrics::truncated(self.as_str());
    }
}

/// `value`, or its cut copy when it is longer than `field` allows.
#[inline]
pub fn limit_str(value: &str, field: Field) -> Cow<'_, str> {
    if value.len() <= field.max_bytes() {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(cut(value, field))
    }
}

/// [`limit_str`] for an owned value: cut in place, and its allocation shrunk to the cut length
/// (a cut megabyte must not stay allocated behind a short key).
#[inline]
pub fn limit_string(mut value: String, field: Field) -> String {
    let max = field.max_bytes();
    if value.len() > max {
        value.truncate(keep_len(&value, max));
        value.push_str(MARKER);
        value.shrink_to_fit();
        field.count_truncation();
    }
    value
}

#[cold]
fn cut(value: &str, field: Field) -> String {
    let kept = &value[..keep_len(value, field.max_bytes())];
    field.count_truncation();
    let mut out = String::with_capacity(kept.len() + MARKER.len());
    out.push_str(kept);
    out.push_str(MARKER);
    out
}

/// How many leading bytes of `value` to keep so that they and the marker fit in `max`: a
/// character boundary, never inside a character.
fn keep_len(value: &str, max: usize) -> usize {
    value.floor_char_boundary(max.saturating_sub(MARKER.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_borrowed_unchanged() {
        let route = "/users/{id}";
        assert!(matches!(
            limit_str(route, Field::Route),
            Cow::Borrowed(r) if std::ptr::eq(r, route)
        ));
        let exact = "x".repeat(MAX_ROUTE_BYTES);
        assert!(matches!(limit_str(&exact, Field::Route), Cow::Borrowed(_)));
    }

    #[test]
    fn long_values_are_cut_to_the_limit_with_a_marker() {
        let long = "a".repeat(1 << 20);
        let cut = limit_str(&long, Field::Route);
        assert_eq!(cut.len(), MAX_ROUTE_BYTES);
        assert!(cut.ends_with(MARKER));
        assert!(long.starts_with(cut.trim_end_matches(MARKER)));
        let owned = limit_string(long, Field::ServiceName);
        assert_eq!(owned.len(), MAX_SERVICE_NAME_BYTES);
        assert!(
            owned.capacity() < 2 * MAX_SERVICE_NAME_BYTES,
            "the megabyte is freed"
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // 'é' is two bytes: a cut at an odd byte would split one.
        let long = "é".repeat(MAX_ROUTE_BYTES);
        let cut = limit_str(&long, Field::Route);
        assert!(cut.len() <= MAX_ROUTE_BYTES);
        assert!(cut.ends_with(MARKER));
        let kept = cut.trim_end_matches(MARKER);
        assert!(kept.chars().all(|c| c == 'é'));
        assert_eq!(kept.len(), MAX_ROUTE_BYTES - 4);
        // Four-byte characters too.
        let emoji = "🦀".repeat(100);
        let cut = limit_str(&emoji, Field::Method);
        assert_eq!(cut, format!("{}{MARKER}", "🦀".repeat(7)));
    }

    #[test]
    fn long_values_with_one_prefix_collapse_into_one_key() {
        let a = format!("{}a", "x".repeat(1000));
        let b = format!("{}b", "x".repeat(1000));
        assert_eq!(limit_str(&a, Field::Route), limit_str(&b, Field::Route));
    }
}
