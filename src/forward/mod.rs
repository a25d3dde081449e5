//! OTLP forwarding (a tee): every export redline accepts is sent on, as received, to one
//! upstream (a Collector, Tempo, Jaeger, another redline) over OTLP/gRPC or OTLP/HTTP protobuf.
//!
//! The receivers hand accepted requests to a [`ForwardHandle`] as protobuf bytes (the bytes
//! they received, decompressed; JSON is encoded as protobuf); the queue keeps a copy of its
//! own, exactly as large as it counts (see [`queue::ForwardQueue::offer`]). An
//! export answered with success is forwarded whole, including items redline itself rejected
//! inside it (`partial_success`: e.g. summary metrics, which redline does not aggregate): the
//! upstream judges them by its own rules. An export refused whole (401, 400, 413, 415, or
//! 503/UNAVAILABLE, which the exporter retries) is not forwarded, so nothing is sent twice.
//!
//! The requests wait in a queue bounded in bytes ([`queue`]); a request that does not fit is
//! dropped and counted, so ingest never waits on the upstream. The stage ([`stage`]) sends a
//! few at a time, retries UNAVAILABLE / 429 / 5xx (and the codes OTLP says are retryable) with
//! backoff, after `Retry-After` or RetryInfo when given, and drops and counts a request the
//! upstream refuses for good. On a stop it drains what it can within a bounded time.

pub mod grpc;
pub mod http;
pub mod queue;
pub mod stage;

use std::sync::Arc;

use axum::http::Uri;
use bytes::Bytes;

use crate::self_metrics::Signal;
use queue::{ForwardQueue, Item, Totals};

pub use stage::run;

/// How requests travel upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC: `ENDPOINT/opentelemetry.proto.collector.trace.v1.TraceService/Export`, …
    Grpc,
    /// OTLP/HTTP with protobuf bodies: `ENDPOINT/v1/traces`, `/v1/metrics`, `/v1/logs`.
    HttpProtobuf,
}

impl Protocol {
    /// As in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// The upstream, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSettings {
    /// `http://` or `https://` and the authority, and a base path for OTLP/HTTP.
    pub endpoint: Uri,
    pub protocol: Protocol,
    /// Request headers (gRPC metadata), e.g. an API key; checked at start-up.
    pub headers: Vec<(String, String)>,
    /// The signals forwarded.
    pub signals: Vec<Signal>,
    /// Requests that may wait (or be in flight), in bytes.
    pub queue_max_bytes: usize,
}

pub const DEFAULT_QUEUE_MAX_BYTES: usize = 64 << 20;

impl ForwardSettings {
    /// The endpoint as shown on `/metrics` and in logs: no credentials, no query.
    pub fn display_name(&self) -> String {
        let shown = crate::export::remote_write::display_url(&self.endpoint);
        shown.trim_end_matches('/').to_string()
    }
}

/// What the receivers hold: cheap to clone, never waits.
#[derive(Clone)]
pub struct ForwardHandle {
    queue: Arc<ForwardQueue>,
    signals: [bool; 3],
}

/// The health panel's view of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardStatus {
    pub upstream: String,
    pub totals: Totals,
    pub queue_bytes: usize,
    pub queue_max_bytes: usize,
}

impl ForwardHandle {
    pub fn new(settings: &ForwardSettings) -> Self {
        let mut signals = [false; 3];
        for signal in &settings.signals {
            signals[*signal as usize] = true;
        }
        ForwardHandle {
            queue: ForwardQueue::new(settings.display_name(), settings.queue_max_bytes),
            signals,
        }
    }

    /// Whether `signal` is forwarded (a JSON export is encoded as protobuf only then).
    pub fn wants(&self, signal: Signal) -> bool {
        self.signals[signal as usize]
    }

    /// Hands an accepted request on (`body`: protobuf; `items`: spans, points or log records in
    /// it). Dropped and counted when the queue is full; never waits.
    pub fn offer(&self, signal: Signal, body: Bytes, items: u64) {
        if self.wants(signal) {
            self.queue.offer(Item {
                signal,
                body,
                items,
            });
        }
    }

    pub fn status(&self) -> ForwardStatus {
        ForwardStatus {
            upstream: self.queue.upstream().to_string(),
            totals: self.queue.totals(),
            queue_bytes: self.queue.bytes(),
            queue_max_bytes: self.queue.max_bytes(),
        }
    }

    pub(crate) fn queue(&self) -> &Arc<ForwardQueue> {
        &self.queue
    }
}

/// Why the stage cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Client(#[from] crate::export::remote_write::RemoteWriteError),
    #[error("{0:?} does not make a request URL with the endpoint")]
    Url(String),
}
