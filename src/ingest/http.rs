//! OTLP/HTTP: `POST /v1/traces` and `/v1/metrics`, protobuf or JSON, optionally gzip. Answers in
//! the request's encoding: 200 with partial success, 400 with a `google.rpc.Status` for an
//! undecodable body, 413 past the size limit (also after decompression), 415 for other media
//! types or encodings, 503 + Retry-After when the ingest queue is full.

use std::io::Read;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::ingest::{Accepted, IngestError, Ingestor, RETRY_AFTER_SECONDS};
use crate::self_metrics;

/// `google.rpc.Status`, the error body OTLP/HTTP specifies.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

#[derive(Clone)]
struct Receiver {
    ingestor: Ingestor,
    max_body_bytes: usize,
}

pub fn router(ingestor: Ingestor, max_body_bytes: usize, cors_origins: &[String]) -> Router {
    let receiver = Receiver {
        ingestor,
        max_body_bytes,
    };
    let router = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        // The limit is enforced in `read_body`, also for decompressed bodies.
        .layer(DefaultBodyLimit::disable())
        .with_state(receiver);
    if cors_origins.is_empty() {
        return router;
    }
    let allow_origin = if cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    router.layer(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([axum::http::Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::CONTENT_ENCODING])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

async fn traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    receiver
        .handle(&headers, body, |r, bytes, encoding| {
            // Protobuf goes to the ingestor as bytes (it reads them without decoding the
            // message); JSON is decoded and re-encoded, the rarer and slower path anyway.
            let bytes = match encoding {
                Encoding::Protobuf => bytes,
                Encoding::Json => {
                    let request: ExportTraceServiceRequest = decode(bytes, encoding)?;
                    Bytes::from(request.encode_to_vec())
                }
            };
            r.ingestor.traces(&bytes).map(trace_response)
        })
        .await
}

async fn metrics(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    receiver
        .handle(&headers, body, |r, bytes, encoding| {
            let request = decode(bytes, encoding)?;
            r.ingestor.metrics(request).map(metrics_response)
        })
        .await
}

/// Decodes a message in the request's encoding.
fn decode<M: Message + Default + DeserializeOwned>(
    bytes: Bytes,
    encoding: Encoding,
) -> Result<M, IngestError> {
    let decoded = match encoding {
        Encoding::Protobuf => M::decode(bytes).map_err(|e| format!("invalid protobuf: {e}")),
        Encoding::Json => {
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid OTLP/JSON: {e}"))
        }
    };
    decoded.map_err(|message| {
        self_metrics::requests_rejected("undecodable");
        IngestError::Undecodable(message)
    })
}

fn trace_response(accepted: Accepted) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (accepted.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: accepted.rejected as i64,
            error_message: accepted.message.unwrap_or_default(),
        }),
    }
}

fn metrics_response(accepted: Accepted) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (accepted.rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: accepted.rejected as i64,
            error_message: accepted.message.unwrap_or_default(),
        }),
    }
}

/// Why a request body could not be turned into an export request.
enum BodyError {
    TooLarge,
    UnsupportedEncoding(String),
    Unreadable(String),
}

impl Receiver {
    async fn handle<Resp, F>(&self, headers: &HeaderMap, body: Body, export: F) -> Response
    where
        Resp: Message + Serialize,
        F: FnOnce(&Receiver, Bytes, Encoding) -> Result<Resp, IngestError>,
    {
        let Some(encoding) = request_encoding(headers) else {
            self_metrics::requests_rejected("unsupported_media_type");
            return status_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                format!("Content-Type must be {PROTOBUF} or {JSON}"),
            );
        };
        let bytes = match self.read_body(headers, body).await {
            Ok(bytes) => bytes,
            Err(BodyError::TooLarge) => {
                self_metrics::requests_rejected("too_large");
                return status_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    encoding,
                    format!("request body exceeds {} bytes", self.max_body_bytes),
                );
            }
            Err(BodyError::UnsupportedEncoding(e)) => {
                self_metrics::requests_rejected("unsupported_media_type");
                return status_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, encoding, e);
            }
            Err(BodyError::Unreadable(e)) => {
                self_metrics::requests_rejected("undecodable");
                return status_response(StatusCode::BAD_REQUEST, encoding, e);
            }
        };
        match export(self, bytes, encoding) {
            Ok(response) => encoded(StatusCode::OK, encoding, &response),
            Err(IngestError::Undecodable(message)) => {
                status_response(StatusCode::BAD_REQUEST, encoding, message)
            }
            Err(error) => {
                let mut response =
                    status_response(StatusCode::SERVICE_UNAVAILABLE, encoding, error.to_string());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                response
            }
        }
    }

    /// Reads the body, undoing gzip, never holding more than the limit in memory.
    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
        let raw = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|e| {
                if is_length_limit(&e) {
                    BodyError::TooLarge
                } else {
                    BodyError::Unreadable(format!("reading the body failed: {e}"))
                }
            })?;
        let encoding = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        match encoding.as_deref() {
            None | Some("") | Some("identity") => Ok(raw),
            Some("gzip") => {
                let mut decoder =
                    flate2::read::GzDecoder::new(&raw[..]).take(self.max_body_bytes as u64 + 1);
                let mut out = Vec::new();
                decoder
                    .read_to_end(&mut out)
                    .map_err(|e| BodyError::Unreadable(format!("invalid gzip body: {e}")))?;
                if out.len() > self.max_body_bytes {
                    return Err(BodyError::TooLarge);
                }
                Ok(Bytes::from(out))
            }
            Some(other) => Err(BodyError::UnsupportedEncoding(format!(
                "Content-Encoding {other:?} is not supported (use gzip)"
            ))),
        }
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn request_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media_type = content_type.split(';').next()?.trim().to_ascii_lowercase();
    match media_type.as_str() {
        PROTOBUF => Some(Encoding::Protobuf),
        JSON => Some(Encoding::Json),
        _ => None,
    }
}

fn encoded<M: Message + Serialize>(
    status: StatusCode,
    encoding: Encoding,
    message: &M,
) -> Response {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).expect("OTLP messages serialize"),
    };
    (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

fn status_response(status: StatusCode, encoding: Encoding, message: String) -> Response {
    // gRPC codes: INVALID_ARGUMENT for client errors, UNAVAILABLE for throttling.
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        14
    } else {
        3
    };
    encoded(status, encoding, &RpcStatus { code, message })
}
