//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics` and `/v1/logs`, protobuf or JSON, optionally gzip. Answers in
//! the request's encoding: 200 with partial success, 400 with a `google.rpc.Status` for an
//! undecodable body, 413 past the size limit (also after decompression), 415 for other media
//! types or encodings, 503 + Retry-After when redline cannot take the data now (the memory
//! budget, the ingest queue or unwritten data at its bound).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::budget::Reservation;
use crate::ingest::admission::{BodyError, read_body};
use crate::ingest::{
    Accepted, DECODED_BYTES_PER_ENCODED_BYTE, IngestError, Ingestor, RETRY_AFTER_SECONDS,
};
use crate::self_metrics;

/// `google.rpc.Status`, the error body OTLP/HTTP specifies.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The header an exporter sends its API key in (`OTEL_EXPORTER_OTLP_HEADERS=x-otlp-api-key=KEY`),
/// also as gRPC metadata; checked by [`super::auth`].
pub const API_KEY_HEADER: &str = "x-otlp-api-key";

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
        .route("/v1/logs", post(logs))
        // The limit is enforced in `admission::read_body`, also for decompressed bodies.
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
            .allow_headers([
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::AUTHORIZATION,
                header::HeaderName::from_static(API_KEY_HEADER),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

async fn traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    receiver
        .handle(&headers, body, |r, bytes, encoding, mut memory| {
            // Protobuf goes to the ingestor as bytes (it reads them without decoding the
            // message); JSON is decoded and re-encoded, the rarer and slower path anyway.
            let bytes = match encoding {
                Encoding::Protobuf => bytes,
                Encoding::Json => {
                    let request: ExportTraceServiceRequest = decode(bytes, encoding, &mut memory)?;
                    Bytes::from(request.encode_to_vec())
                }
            };
            r.ingestor
                .traces(&bytes, memory)
                .map(Accepted::trace_response)
        })
        .await
}

async fn metrics(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    receiver
        .handle(&headers, body, |r, bytes, encoding, mut memory| {
            let protobuf = (encoding == Encoding::Protobuf).then(|| bytes.clone());
            let request = decode(bytes, encoding, &mut memory)?;
            r.ingestor
                .metrics(request, protobuf, memory)
                .map(Accepted::metrics_response)
        })
        .await
}

async fn logs(State(receiver): State<Receiver>, headers: HeaderMap, body: Body) -> Response {
    receiver
        .handle(&headers, body, |r, bytes, encoding, mut memory| {
            let protobuf = (encoding == Encoding::Protobuf).then(|| bytes.clone());
            let request = decode(bytes, encoding, &mut memory)?;
            r.ingestor
                .logs(request, protobuf, memory)
                .map(Accepted::logs_response)
        })
        .await
}

/// Decodes a message in the request's encoding, first reserving what the decoded message is
/// reckoned to take.
fn decode<M: Message + Default + DeserializeOwned>(
    bytes: Bytes,
    encoding: Encoding,
    memory: &mut Reservation,
) -> Result<M, IngestError> {
    if let Err(refused) = memory.grow(bytes.len().saturating_mul(DECODED_BYTES_PER_ENCODED_BYTE)) {
        self_metrics::requests_rejected("memory");
        return Err(refused.into());
    }
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

impl Receiver {
    async fn handle<Resp, F>(&self, headers: &HeaderMap, body: Body, export: F) -> Response
    where
        Resp: Message + Serialize,
        F: FnOnce(&Receiver, Bytes, Encoding, Reservation) -> Result<Resp, IngestError>,
    {
        let Some(encoding) = request_encoding(headers) else {
            self_metrics::requests_rejected("unsupported_media_type");
            return status_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                format!("Content-Type must be {PROTOBUF} or {JSON}"),
            );
        };
        let (bytes, memory) =
            match read_body(&self.ingestor, headers, body, self.max_body_bytes).await {
                Ok(read) => read,
                Err(error) => return body_error_response(error, encoding),
            };
        match export(self, bytes, encoding, memory) {
            Ok(response) => encoded(StatusCode::OK, encoding, &response),
            Err(error) => ingest_error_response(error, encoding),
        }
    }
}

fn body_error_response(error: BodyError, encoding: Encoding) -> Response {
    let (status, reason) = match &error {
        BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        BodyError::UnsupportedEncoding(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        BodyError::Unreadable(_) => (StatusCode::BAD_REQUEST, "undecodable"),
        BodyError::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "memory"),
    };
    if let BodyError::Refused(refused) = error {
        // Counted where it was refused.
        return ingest_error_response(refused, encoding);
    }
    self_metrics::requests_rejected(reason);
    status_response(status, encoding, error.to_string())
}

fn ingest_error_response(error: IngestError, encoding: Encoding) -> Response {
    if let IngestError::Undecodable(message) = error {
        return status_response(StatusCode::BAD_REQUEST, encoding, message);
    }
    let mut response =
        status_response(StatusCode::SERVICE_UNAVAILABLE, encoding, error.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// 401 for a request without valid credentials, in the request's encoding (JSON when it has
/// none redline takes).
pub(crate) fn unauthenticated(headers: &HeaderMap, message: String) -> Response {
    let encoding = request_encoding(headers).unwrap_or(Encoding::Json);
    // 16: UNAUTHENTICATED.
    let mut response = encoded(
        StatusCode::UNAUTHORIZED,
        encoding,
        &RpcStatus { code: 16, message },
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"redline OTLP\""),
    );
    response
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
