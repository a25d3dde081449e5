//! OTLP/gRPC: TraceService and MetricsService Export (gzip accepted), LogsService answering
//! UNIMPLEMENTED. Overload is UNAVAILABLE with RetryInfo, which OTLP clients retry. Requests
//! pass [`super::admission::GrpcAdmissionLayer`] first, which counts their bytes against the
//! memory budget.
//!
//! MetricsService and LogsService are opentelemetry-proto's generated tonic services.
//! TraceService is served the same way (same path, codec framing, compression and limits), but
//! hands the request to the ingestor as bytes: the generated service would decode every span
//! into owned structs first, which costs more than everything else redline does with a span
//! (see `wire`).

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
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

use crate::ingest::admission::unavailable;
use crate::ingest::{DECODED_BYTES_PER_ENCODED_BYTE, IngestError, Ingestor};

/// The gRPC router with all three OTLP services.
pub fn router(ingestor: Ingestor, max_message_bytes: usize) -> tonic::service::Routes {
    let traces = TraceExportServer {
        ingestor: ingestor.clone(),
        max_message_bytes,
    };
    let metrics = MetricsServiceServer::new(GrpcReceiver(ingestor))
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes);
    let logs = LogsServiceServer::new(NoLogs);
    tonic::service::Routes::new(traces)
        .add_service(metrics)
        .add_service(logs)
}

/// The metrics receiver, behind the generated `MetricsService`.
struct GrpcReceiver(Ingestor);

fn to_status(error: IngestError) -> Status {
    if let IngestError::Undecodable(message) = error {
        return Status::invalid_argument(message);
    }
    unavailable(error.to_string())
}

/// `TraceService/Export`, taking the request message as bytes.
#[derive(Clone)]
struct TraceExportServer {
    ingestor: Ingestor,
    max_message_bytes: usize,
}

impl NamedService for TraceExportServer {
    const NAME: &'static str = TRACE_SERVICE;
}

impl<B> Service<http::Request<B>> for TraceExportServer
where
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
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(RawTraceCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(server.max_message_bytes), None);
            Ok(grpc.unary(server, request).await)
        })
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl UnaryService<Bytes> for TraceExportServer {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let body = request.get_ref();
        let result = self
            .ingestor
            .reserve(body.len())
            .and_then(|memory| self.ingestor.traces(body, memory));
        Box::pin(async move {
            let accepted = result.map_err(to_status)?;
            Ok(Response::new(accepted.trace_response()))
        })
    }
}

/// gRPC framing for the trace export: the request stays bytes, the response is protobuf.
struct RawTraceCodec;

impl Codec for RawTraceCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RequestBytes;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestBytes
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
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

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let request = request.into_inner();
        let decoded_bytes = request
            .encoded_len()
            .saturating_mul(DECODED_BYTES_PER_ENCODED_BYTE);
        let accepted = self
            .0
            .reserve(decoded_bytes)
            .and_then(|memory| self.0.metrics(request, memory))
            .map_err(to_status)?;
        Ok(Response::new(accepted.metrics_response()))
    }
}

struct NoLogs;

#[tonic::async_trait]
impl LogsService for NoLogs {
    async fn export(
        &self,
        _request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Err(Status::unimplemented("redline does not accept logs"))
    }
}
