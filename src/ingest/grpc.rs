//! OTLP/gRPC: TraceService, MetricsService and LogsService Export (gzip accepted). Overload is UNAVAILABLE with RetryInfo, which OTLP clients retry; a message
//! that does not decode is INVALID_ARGUMENT, as OTLP specifies for bad data, and one over the
//! size limit RESOURCE_EXHAUSTED without RetryInfo, which clients do not retry. Requests pass
//! [`super::admission::GrpcAdmissionLayer`] first, which counts their bytes against the memory
//! budget.
//!
//! The export services use tonic's framing, compression and limits but take the request
//! as bytes: the trace export hands them to the ingestor undecoded (the generated service would
//! decode every span into owned structs first, which costs more than everything else redline
//! does with a span; see `wire`), and all answer a decode error with INVALID_ARGUMENT where
//! tonic's generated services answer INTERNAL.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::SERVICE_NAME as LOGS_SERVICE;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::SERVICE_NAME as METRICS_SERVICE;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::SERVICE_NAME as TRACE_SERVICE;
use prost::Message;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings,
    EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, Bytes, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::budget::Reservation;
use crate::ingest::admission::unavailable;
use crate::ingest::{DECODED_BYTES_PER_ENCODED_BYTE, IngestError, Ingestor};
use crate::self_metrics;

/// The gRPC router with all three OTLP services.
pub fn router(ingestor: Ingestor, max_message_bytes: usize) -> tonic::service::Routes {
    let traces = ExportServer::<Traces> {
        ingestor: ingestor.clone(),
        max_message_bytes,
        signal: Traces,
    };
    let metrics = ExportServer::<Metrics> {
        ingestor: ingestor.clone(),
        max_message_bytes,
        signal: Metrics,
    };
    let logs = ExportServer::<Logs> {
        ingestor,
        max_message_bytes,
        signal: Logs,
    };
    tonic::service::Routes::new(traces)
        .add_service(metrics)
        .add_service(logs)
}

fn to_status(error: IngestError) -> Status {
    if let IngestError::Undecodable(message) = error {
        return Status::invalid_argument(message);
    }
    unavailable(error.to_string())
}

/// One OTLP export service: its gRPC names and what it does with a request's bytes.
trait ExportSignal: Clone + Send + Sync + 'static {
    const SERVICE: &'static str;
    const PATH: &'static str;
    type Response: Message + Send + 'static;

    fn export(&self, ingestor: &Ingestor, body: &Bytes) -> Result<Self::Response, IngestError>;
}

#[derive(Clone)]
struct Traces;

impl ExportSignal for Traces {
    const SERVICE: &'static str = TRACE_SERVICE;
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Response = ExportTraceServiceResponse;

    fn export(&self, ingestor: &Ingestor, body: &Bytes) -> Result<Self::Response, IngestError> {
        let memory = ingestor.reserve(body.len())?;
        Ok(ingestor.traces(body, memory)?.trace_response())
    }
}

#[derive(Clone)]
struct Metrics;

impl ExportSignal for Metrics {
    const SERVICE: &'static str = METRICS_SERVICE;
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    type Response = ExportMetricsServiceResponse;

    fn export(&self, ingestor: &Ingestor, body: &Bytes) -> Result<Self::Response, IngestError> {
        let (request, memory) = decode_reserved::<ExportMetricsServiceRequest>(ingestor, body)?;
        Ok(ingestor
            .metrics(request, Some(body.clone()), memory)?
            .metrics_response())
    }
}

#[derive(Clone)]
struct Logs;

impl ExportSignal for Logs {
    const SERVICE: &'static str = LOGS_SERVICE;
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Response = ExportLogsServiceResponse;

    fn export(&self, ingestor: &Ingestor, body: &Bytes) -> Result<Self::Response, IngestError> {
        let (request, memory) = decode_reserved::<ExportLogsServiceRequest>(ingestor, body)?;
        Ok(ingestor
            .logs(request, Some(body.clone()), memory)?
            .logs_response())
    }
}

/// Reserves the memory a decoded request takes before decoding it, so a burst of exports cannot
/// decode past the budget; undecodable bytes are counted and refused.
fn decode_reserved<M: Message + Default>(
    ingestor: &Ingestor,
    body: &Bytes,
) -> Result<(M, Reservation), IngestError> {
    let decoded_bytes = body.len().saturating_mul(DECODED_BYTES_PER_ENCODED_BYTE);
    let memory = ingestor.reserve(decoded_bytes)?;
    let request = M::decode(body.as_ref()).map_err(|e| {
        self_metrics::requests_rejected("undecodable");
        IngestError::Undecodable(format!("invalid OTLP protobuf: {e}"))
    })?;
    Ok((request, memory))
}

/// An export service served from the request's bytes.
#[derive(Clone)]
struct ExportServer<S> {
    ingestor: Ingestor,
    max_message_bytes: usize,
    signal: S,
}

impl<S: ExportSignal> NamedService for ExportServer<S> {
    const NAME: &'static str = S::SERVICE;
}

impl<S, B> Service<http::Request<B>> for ExportServer<S>
where
    S: ExportSignal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            if request.uri().path() != S::PATH {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(RawExportCodec::<S::Response>::default())
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(server.max_message_bytes), None);
            Ok(refuse_oversized_for_good(grpc.unary(server, request).await))
        })
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE, a code OTLP clients retry;
/// a message that can never be accepted is refused for good instead: RESOURCE_EXHAUSTED
/// without RetryInfo, as grpc-go and the Collector answer (and as a gzip bomb already is).
fn refuse_oversized_for_good(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == tonic::Code::OutOfRange => {
            Status::resource_exhausted(status.message().to_string()).into_http()
        }
        _ => response,
    }
}

impl<S: ExportSignal> UnaryService<Bytes> for ExportServer<S> {
    type Response = S::Response;
    type Future = BoxFuture<Response<S::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let result = self.signal.export(&self.ingestor, request.get_ref());
        Box::pin(async move { Ok(Response::new(result.map_err(to_status)?)) })
    }
}

/// gRPC framing for an export: the request stays bytes, the response `R` is protobuf.
struct RawExportCodec<R>(std::marker::PhantomData<R>);

impl<R> Default for RawExportCodec<R> {
    fn default() -> Self {
        RawExportCodec(std::marker::PhantomData)
    }
}

impl<R: Message + Send + 'static> Codec for RawExportCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = ResponseEncoder<R>;
    type Decoder = RequestBytes;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestBytes
    }
}

struct ResponseEncoder<R>(std::marker::PhantomData<R>);

impl<R: Message> Encoder for ResponseEncoder<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response failed: {e}")))
    }
}

struct RequestBytes;

/// Large enough for a typical batch of spans in one piece, so the receive buffer is not
/// grown (and copied) several times per request.
const RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

impl Decoder for RequestBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        // Splits the message off the receive buffer: no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(RECEIVE_BUFFER_BYTES, 32 * 1024)
    }
}
