//! Plain data that flows from the receivers to the aggregator: what one OTLP export means to
//! redline once the protocol details are gone. Nothing here decodes protobuf or knows about SQLite.

use std::collections::BTreeMap;
use std::sync::Arc;

pub mod json_float;
pub mod limits;
pub mod log_record;
pub mod semconv;
pub mod span_record;

/// Identifies one endpoint of one service: the unit every RED figure is kept for.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct EndpointKey {
    pub service: String,
    pub method: String,
    pub route: String,
}

/// Where a RED figure came from. Spans give exact counts and a 1 % sketch (estimates when the
/// spans were probability-sampled: each is weighted by its adjusted count); the
/// `http.server.request.duration` histogram metric gives counts and a coarser estimate.
/// A service that sends both is read from its spans only, so nothing is counted twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RedSource {
    Spans = 0,
    Metrics = 1,
}

/// How one finished server request went, taken from a SERVER span.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Span end time; requests are placed in the window in which they completed.
    pub end_unix_ms: i64,
    pub duration_ms: f64,
    pub status_code: Option<u16>,
    pub is_error: bool,
    /// How many requests this span stands for: its adjusted count when it was sampled with
    /// OpenTelemetry's consistent probability sampling (`ot=th:…` in its tracestate, see
    /// [`crate::ingest::tracestate`]), else 1. Every RED figure but min and max is weighted by
    /// it; 0 adds nothing.
    pub count: u32,
}

/// An already-aggregated group of requests, taken from one `http.server.request.duration`
/// histogram data point (one method + route + status code).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHistogram {
    pub endpoint: EndpointKey,
    pub time_unix_ms: i64,
    pub status_code: Option<u16>,
    pub is_error: bool,
    /// Delta for this point (cumulative points are turned into deltas by the aggregator).
    pub histogram: HistogramValue,
}

/// Identifies one OTLP metric series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricSeriesKey {
    pub service: String,
    pub name: String,
    /// Data-point attributes, sorted by key, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Gauge,
    /// A monotonic sum (a counter): shown as a rate.
    Counter,
    /// A non-monotonic sum (an up-down counter): shown as its value.
    UpDownCounter,
    Histogram,
    ExponentialHistogram,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::UpDownCounter => "updowncounter",
            MetricKind::Histogram => "histogram",
            MetricKind::ExponentialHistogram => "exponential_histogram",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gauge" => MetricKind::Gauge,
            "counter" => MetricKind::Counter,
            "updowncounter" => MetricKind::UpDownCounter,
            "histogram" => MetricKind::Histogram,
            "exponential_histogram" => MetricKind::ExponentialHistogram,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Delta,
    Cumulative,
}

/// One OTLP metric data point, still in the exporter's temporality.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub series: MetricSeriesKey,
    /// The stream the point belongs to: a digest of its resource and scope, which OTLP makes
    /// part of a metric stream's identity. Two instances of one service write one series but
    /// two streams, and cumulative points are only comparable within a stream.
    pub stream: u64,
    pub kind: MetricKind,
    pub unit: String,
    pub description: String,
    pub start_unix_ns: u64,
    pub time_unix_ms: i64,
    pub temporality: Temporality,
    pub value: MetricValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Number(f64),
    Histogram(HistogramValue),
}

/// A histogram in either OTLP layout. Counts are per bucket. Stored as JSON: every float
/// goes through [`json_float`], so sums that overflowed read back as they were.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistogramValue {
    pub count: u64,
    #[serde(with = "json_float")]
    pub sum: f64,
    #[serde(with = "json_float::option")]
    pub min: Option<f64>,
    #[serde(with = "json_float::option")]
    pub max: Option<f64>,
    pub buckets: Buckets,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Buckets {
    /// `counts.len() == bounds.len() + 1`; bucket i is `(bounds[i-1], bounds[i]]`. Conversion
    /// guarantees it (and finite, strictly increasing bounds); arithmetic never relies on it.
    Explicit {
        #[serde(with = "json_float::vec")]
        bounds: Vec<f64>,
        counts: Vec<u64>,
    },
    /// Bucket `offset + i` covers (base^(offset+i), base^(offset+i+1)], base = 2^(2^-scale).
    /// Positive buckets only, at most [`crate::aggregate::histogram::MAX_EXPONENTIAL_BUCKETS`].
    Exponential {
        scale: i32,
        zero_count: u64,
        offset: i32,
        counts: Vec<u64>,
    },
}

/// One span as kept for trace views. Attributes are already flattened to strings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: SpanStatus,
    pub status_message: String,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<SpanEvent>,
    /// Set for SERVER spans: the endpoint the request belongs to.
    pub endpoint: Option<EndpointKey>,
    pub is_error: bool,
}

/// A span's kind, as OTLP names it (stored and shown in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// A span's status code, as OTLP names it (stored and shown in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

/// The lower-case names both enums are stored and shown under.
macro_rules! named {
    ($type:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }

            /// The variant stored under `name`; `None` for a name no build of redline writes.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(SpanKind {
    Unspecified => "unspecified",
    Internal => "internal",
    Server => "server",
    Client => "client",
    Producer => "producer",
    Consumer => "consumer",
});

named!(SpanStatus { Unset => "unset", Ok => "ok", Error => "error" });

impl SpanRecord {
    pub fn duration_ms(&self) -> f64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns) as f64 / 1e6
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_ns: u64,
    pub attributes: BTreeMap<String, String>,
}

/// A server request and the endpoint it belongs to. Requests of one batch share their
/// endpoint's key instead of each holding a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRequest {
    pub endpoint: Arc<EndpointKey>,
    pub request: RequestRecord,
}

/// A span as received, kept as its protobuf encoding (a range of its batch's `body`) until the
/// trace sampler decides to keep it: most spans are dropped, so they are never decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingSpan {
    pub service: Arc<str>,
    /// Set for SERVER spans: the endpoint the request belongs to.
    pub endpoint: Option<Arc<EndpointKey>>,
    pub is_error: bool,
    pub trace_id: [u8; 16],
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Where its `opentelemetry.proto.trace.v1.Span` message lies in the batch's `body`.
    pub encoded: std::ops::Range<usize>,
}

/// Everything one export request contributes, after conversion.
#[derive(Debug, Default, Clone)]
pub struct IngestBatch {
    pub requests: Vec<EndpointRequest>,
    pub metric_points: Vec<MetricPoint>,
    pub spans: Vec<IncomingSpan>,
    /// The export's body, which the spans' `encoded` ranges point into; held until the
    /// batch is applied.
    pub body: bytes::Bytes,
    /// Log records that may be kept (WARN and above, or with a trace id); every record
    /// received is counted in `metric_points` ([`log_record::LOG_RECORDS_METRIC`]).
    pub logs: Vec<log_record::IncomingLog>,
    /// Log records accepted, kept or not.
    pub log_records: usize,
    /// The `service.instance.id` of each resource that had one.
    pub instances: Vec<InstanceSeen>,
}

/// A resource's service and its `service.instance.id` (length-limited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSeen {
    pub service: std::sync::Arc<str>,
    pub instance: String,
}

impl IngestBatch {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.metric_points.is_empty()
            && self.spans.is_empty()
            && self.logs.is_empty()
    }

    /// Items counted against the ingest queue's capacity.
    pub fn item_count(&self) -> usize {
        self.spans.len() + self.metric_points.len() + self.log_records
    }
}

/// Status class index (0 = 1xx … 4 = 5xx) of an HTTP status code.
pub fn status_class(code: u16) -> Option<usize> {
    match code {
        100..=599 => Some((code / 100 - 1) as usize),
        _ => None,
    }
}

pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
