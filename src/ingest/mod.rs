//! OTLP receivers: gRPC and HTTP front ends that decode, convert and hand batches to the
//! bounded ingest queue, answering as the OTLP specification requires. Both share
//! [`Ingestor`], so they count, reject and throttle the same way.

pub mod convert;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod tracestate;
pub mod wire;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

use crate::pipeline::{IngestQueue, SubmitError};
use crate::self_metrics::{self, Signal};

/// What an accepted export reports back (`partial_success`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: u64,
    pub message: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// The body is not the message it claims to be (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    Undecodable(String),
    #[error("redline is overloaded: the ingest queue is full, retry later")]
    Overloaded,
    #[error("redline is shutting down")]
    ShuttingDown,
}

/// Seconds a throttled client is asked to wait.
pub const RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Clone)]
pub struct Ingestor {
    queue: IngestQueue,
}

impl Ingestor {
    pub fn new(queue: IngestQueue) -> Self {
        Ingestor { queue }
    }

    /// Takes a trace export in protobuf encoding (`ExportTraceServiceRequest`).
    pub fn traces(&self, body: &Bytes) -> Result<Accepted, IngestError> {
        let converted = convert::convert_traces(body).map_err(|e| {
            self_metrics::requests_rejected("undecodable");
            IngestError::Undecodable(e.to_string())
        })?;
        let count = converted.batch.spans.len() as u64;
        self.submit(Signal::Traces, converted, count)
    }

    pub fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        let converted = convert::convert_metrics(request);
        let count = converted.batch.metric_points.len() as u64;
        self.submit(Signal::Metrics, converted, count)
    }

    fn submit(
        &self,
        signal: Signal,
        converted: convert::Converted,
        count: u64,
    ) -> Result<Accepted, IngestError> {
        if converted.rejected > 0 {
            self_metrics::rejected(signal, "invalid", converted.rejected);
        }
        match self.queue.try_submit(converted.batch) {
            Ok(()) => {
                self_metrics::accepted(signal, count);
                Ok(Accepted {
                    rejected: converted.rejected,
                    message: converted.first_error,
                })
            }
            Err(SubmitError::Full) => {
                self_metrics::rejected(signal, "overload", count);
                Err(IngestError::Overloaded)
            }
            Err(SubmitError::Closed) => {
                self_metrics::rejected(signal, "shutting_down", count);
                Err(IngestError::ShuttingDown)
            }
        }
    }
}
