//! Admission at the sockets: request bodies are read against the memory budget, so the bytes
//! of requests in flight — raw, inflated and decoded — count before they are held, and a
//! request that does not fit is refused with 503/UNAVAILABLE instead of being buffered.
//!
//! OTLP/HTTP bodies are read here ([`read_body`]); OTLP/gRPC bodies are read by tonic, through
//! [`GrpcAdmissionLayer`], which refuses a stream at once when the budget is spent and counts
//! each frame as it arrives.

use std::io::Read;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::codegen::{BoxFuture, Service, http};
use tonic_types::{ErrorDetails, StatusExt};

use crate::budget::{OverBudget, Reservation};
use crate::ingest::{IngestError, Ingestor, RETRY_AFTER_SECONDS};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("Content-Encoding {0:?} is not supported (use gzip)")]
    UnsupportedEncoding(String),
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Refused(IngestError),
}

/// Inflated bytes are read (and reserved) this many at a time.
const INFLATE_CHUNK_BYTES: usize = 64 * 1024;

/// Reads an OTLP/HTTP body, undoing gzip, never holding more than `max_bytes` nor more than the
/// memory budget grants. Returns the bytes with the reservation that holds them.
pub async fn read_body(
    ingestor: &Ingestor,
    headers: &HeaderMap,
    body: Body,
    max_bytes: usize,
) -> Result<(Bytes, Reservation), BodyError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > max_bytes) {
        return Err(BodyError::TooLarge(max_bytes));
    }
    // A declared length is reserved at once, so a request that cannot fit is refused before a
    // byte of it is read.
    let mut memory = ingestor
        .reserve(declared.unwrap_or(0))
        .map_err(BodyError::Refused)?;
    let raw = read_raw(body, max_bytes, &mut memory).await?;
    if !gzip {
        return Ok((raw, memory));
    }
    let inflated = inflate(&raw, max_bytes, &mut memory)?;
    Ok((inflated, memory))
}

async fn read_raw(
    body: Body,
    max_bytes: usize,
    memory: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| BodyError::Unreadable(format!("reading the body failed: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        length += chunk.len();
        if length > max_bytes {
            return Err(BodyError::TooLarge(max_bytes));
        }
        if length > memory.bytes() {
            memory
                .grow(length - memory.bytes())
                .map_err(|e| BodyError::Refused(e.into()))?;
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(length);
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    })
}

fn inflate(raw: &[u8], max_bytes: usize, memory: &mut Reservation) -> Result<Bytes, BodyError> {
    let mut decoder = flate2::read::GzDecoder::new(raw).take(max_bytes as u64 + 1);
    let mut out = Vec::new();
    loop {
        memory
            .grow(INFLATE_CHUNK_BYTES)
            .map_err(|e| BodyError::Refused(e.into()))?;
        let start = out.len();
        out.resize(start + INFLATE_CHUNK_BYTES, 0);
        let read = read_fully(&mut decoder, &mut out[start..])
            .map_err(|e| BodyError::Unreadable(format!("invalid gzip body: {e}")))?;
        out.truncate(start + read);
        if out.len() > max_bytes {
            return Err(BodyError::TooLarge(max_bytes));
        }
        if read < INFLATE_CHUNK_BYTES {
            return Ok(Bytes::from(out));
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The gRPC status of a retryable refusal: UNAVAILABLE with RetryInfo, which OTLP clients retry.
pub fn unavailable(message: String) -> tonic::Status {
    let details =
        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(RETRY_AFTER_SECONDS)));
    tonic::Status::with_error_details(tonic::Code::Unavailable, message, details)
}

/// Bytes reserved for a gRPC stream before its first frame: the decoder's receive buffer.
const GRPC_STREAM_RESERVE_BYTES: usize = 64 * 1024;

/// Wraps the OTLP/gRPC router: refuses a request at once when the budget is spent, and counts
/// its frames against the budget as tonic reads them.
#[derive(Clone)]
pub struct GrpcAdmissionLayer {
    ingestor: Ingestor,
}

impl GrpcAdmissionLayer {
    pub fn new(ingestor: Ingestor) -> Self {
        GrpcAdmissionLayer { ingestor }
    }
}

impl<S> tower::Layer<S> for GrpcAdmissionLayer {
    type Service = GrpcAdmission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAdmission {
            inner,
            ingestor: self.ingestor.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAdmission<S> {
    inner: S,
    ingestor: Ingestor,
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl<S> Service<GrpcRequest> for GrpcAdmission<S>
where
    S: Service<GrpcRequest, Response = GrpcResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = BoxFuture<GrpcResponse, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let memory = match self.ingestor.reserve(GRPC_STREAM_RESERVE_BYTES) {
            Ok(memory) => memory,
            Err(refused) => {
                let response = unavailable(refused.to_string()).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        let request = request.map(|body| tonic::body::Body::new(BudgetedBody { body, memory }));
        // The service that was polled ready takes the call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

/// A request body whose data frames are reserved from the budget as they arrive; a frame that
/// does not fit ends the body with UNAVAILABLE, which tonic answers with.
struct BudgetedBody {
    body: tonic::body::Body,
    memory: Reservation,
}

impl http_body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(OverBudget { .. }) = this.memory.grow(data.len())
        {
            crate::self_metrics::requests_rejected("memory");
            return Poll::Ready(Some(Err(unavailable(
                "redline's memory budget is spent, retry later".into(),
            ))));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
