//! OTLP receivers: gRPC and HTTP front ends that decode, convert and hand batches to the
//! bounded ingest queue, answering as the OTLP specification requires. Both share
//! [`Ingestor`], so they count, reject and throttle the same way: a request is refused with
//! 503/UNAVAILABLE and Retry-After when its bytes do not fit the memory budget, when the queue
//! is full, or when too much acknowledged data is not yet stored.

pub mod admission;
pub mod auth;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod tracestate;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};

use crate::budget::{MemoryBudget, OverBudget, Part, Reservation};
use crate::forward::ForwardHandle;
use crate::pipeline::{Behind, IngestQueue, SubmitError};
use crate::self_metrics::{self, Signal};

/// What an accepted export reports back (`partial_success`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: u64,
    pub message: Option<String>,
}

impl Accepted {
    /// `partial_success` is sent when something was rejected, and also for a warning alone
    /// (nothing rejected, but a message), as the OTLP specification allows.
    fn partial(self) -> Option<(i64, String)> {
        (self.rejected > 0 || self.message.is_some())
            .then(|| (self.rejected as i64, self.message.unwrap_or_default()))
    }

    pub fn trace_response(self) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: self.partial().map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }
    }

    pub fn metrics_response(self) -> ExportMetricsServiceResponse {
        ExportMetricsServiceResponse {
            partial_success: self.partial().map(|(rejected_data_points, error_message)| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        }
    }

    pub fn logs_response(self) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: self.partial().map(|(rejected_log_records, error_message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// The body is not the message it claims to be (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    Undecodable(String),
    /// A retryable refusal (503 / UNAVAILABLE with Retry-After).
    #[error("{0}")]
    Overloaded(Overload),
    #[error("redline is shutting down")]
    ShuttingDown,
}

/// Why an export was refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    #[error("redline is overloaded: the ingest queue is full, retry later")]
    QueueFull,
    #[error(transparent)]
    Memory(#[from] OverBudget),
    #[error("{0}")]
    Behind(Behind),
}

impl Overload {
    /// The `reason` label of the rejection counters.
    pub fn reason(self) -> &'static str {
        match self {
            Overload::QueueFull => "overload",
            Overload::Memory(_) => "memory",
            Overload::Behind(_) => "behind",
        }
    }
}

impl From<OverBudget> for IngestError {
    fn from(e: OverBudget) -> Self {
        IngestError::Overloaded(Overload::Memory(e))
    }
}

/// Seconds a throttled client is asked to wait.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Bytes a decoded protobuf or JSON request is reckoned to take per byte of its encoding
/// (owned strings, vectors and structs instead of a flat buffer), reserved before decoding.
pub const DECODED_BYTES_PER_ENCODED_BYTE: usize = 4;

#[derive(Clone)]
pub struct Ingestor {
    queue: IngestQueue,
    budget: Arc<MemoryBudget>,
    /// Where accepted requests are forwarded, when they are.
    forward: Option<ForwardHandle>,
}

impl Ingestor {
    pub fn new(queue: IngestQueue, budget: Arc<MemoryBudget>) -> Self {
        Ingestor {
            queue,
            budget,
            forward: None,
        }
    }

    /// Forwards every accepted request through `forward` (see [`crate::forward`]).
    pub fn with_forward(mut self, forward: Option<ForwardHandle>) -> Self {
        self.forward = forward;
        self
    }

    /// The protobuf bytes of a request that arrived as JSON, when its signal is forwarded
    /// (encoded before the request is converted, which consumes it).
    fn forwarded_encoding<M: prost::Message>(
        &self,
        signal: Signal,
        protobuf: Option<Bytes>,
        request: &M,
    ) -> Option<Bytes> {
        match &self.forward {
            Some(forward) if forward.wants(signal) => {
                protobuf.or_else(|| Some(Bytes::from(request.encode_to_vec())))
            }
            _ => None,
        }
    }

    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Reserves what a request body will hold before it is read or decoded.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, IngestError> {
        self.budget
            .try_reserve(Part::RequestBodies, bytes)
            .map_err(|e| self.refused(Overload::Memory(e)))
    }

    /// Counts a request refused before its items could be counted.
    fn refused(&self, overload: Overload) -> IngestError {
        self_metrics::requests_rejected(overload.reason());
        IngestError::Overloaded(overload)
    }

    /// Takes a trace export in protobuf encoding (`ExportTraceServiceRequest`); `memory` holds
    /// the body's bytes.
    pub fn traces(&self, body: &Bytes, memory: Reservation) -> Result<Accepted, IngestError> {
        let converted = convert::convert_traces(body).map_err(|e| {
            self_metrics::requests_rejected("undecodable");
            IngestError::Undecodable(e.to_string())
        })?;
        let count = converted.batch.spans.len() as u64;
        self.submit(Signal::Traces, converted, count, memory, Some(body))
    }

    /// Takes a decoded metrics export; `protobuf`: its bytes when it came as protobuf (`None`
    /// for JSON); `memory` holds the decoded request's bytes.
    pub fn metrics(
        &self,
        request: ExportMetricsServiceRequest,
        protobuf: Option<Bytes>,
        memory: Reservation,
    ) -> Result<Accepted, IngestError> {
        let forwarded = self.forwarded_encoding(Signal::Metrics, protobuf, &request);
        let converted = convert::convert_metrics(request);
        let count = converted.batch.metric_points.len() as u64;
        self.submit(
            Signal::Metrics,
            converted,
            count,
            memory,
            forwarded.as_ref(),
        )
    }

    /// Takes a decoded logs export; `protobuf`: its bytes when it came as protobuf (`None` for
    /// JSON); `memory` holds the decoded request's bytes.
    pub fn logs(
        &self,
        request: ExportLogsServiceRequest,
        protobuf: Option<Bytes>,
        memory: Reservation,
    ) -> Result<Accepted, IngestError> {
        let forwarded = self.forwarded_encoding(Signal::Logs, protobuf, &request);
        let converted = convert::convert_logs(request, crate::vocab::now_ms());
        let count = converted.batch.log_records as u64;
        self.submit(Signal::Logs, converted, count, memory, forwarded.as_ref())
    }

    /// Queues a converted export for the aggregator; once it is taken, hands `protobuf` (the
    /// request as received) to forwarding: a request accepted whole or in part is forwarded
    /// whole, one refused is not.
    fn submit(
        &self,
        signal: Signal,
        converted: convert::Converted,
        count: u64,
        memory: Reservation,
        protobuf: Option<&Bytes>,
    ) -> Result<Accepted, IngestError> {
        if converted.rejected > 0 {
            self_metrics::rejected(signal, "invalid", converted.rejected);
        }
        let sender =
            auth::current_sender().map(|sender| (sender, auth::services_of(&converted.batch)));
        let overload = match self.queue.try_submit(converted.batch, memory) {
            Ok(()) => {
                self_metrics::accepted(signal, count);
                if let (Some(forward), Some(protobuf)) = (&self.forward, protobuf) {
                    forward.offer(signal, protobuf.clone(), count + converted.rejected);
                }
                if let Some((sender, services)) = sender {
                    sender.record(signal, count, &services);
                }
                return Ok(Accepted {
                    rejected: converted.rejected,
                    message: converted.first_error,
                });
            }
            Err(SubmitError::Full) => Overload::QueueFull,
            Err(SubmitError::OverBudget(e)) => Overload::Memory(e),
            Err(SubmitError::Behind(behind)) => Overload::Behind(behind),
            Err(SubmitError::Closed) => {
                self_metrics::rejected(signal, "shutting_down", count);
                return Err(IngestError::ShuttingDown);
            }
        };
        self_metrics::rejected(signal, overload.reason(), count);
        Err(IngestError::Overloaded(overload))
    }
}
