//! Forwarding over OTLP/gRPC: the request's protobuf bytes in one uncompressed gRPC frame,
//! `POST ENDPOINT/opentelemetry.proto.collector.<signal>.v1.<Signal>Service/Export` over
//! HTTP/2 (over a few connections), and what an answer means, as the OTLP specification says: OK is sent; CANCELLED,
//! DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are tried again (after
//! the RetryInfo delay when given), RESOURCE_EXHAUSTED too when it carries RetryInfo; any other
//! code is refused for good. An HTTP error status before gRPC (a proxy's) is read as OTLP/HTTP
//! reads it.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::header::{self, HeaderMap};
use axum::http::response::Parts;
use axum::http::{Request, Uri};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use tonic::Code;
use tonic_types::StatusExt;

use super::http::{Outcome, exchange, signal_urls};
use super::queue::Item;
use super::{ForwardError, ForwardSettings};
use crate::export::remote_write::{self, HttpClient, HttpVersion, header_map};
use crate::self_metrics::Signal;

/// HTTP/2 connections to the upstream. A gRPC server's flow-control windows (64 KiB per
/// connection by default) bound what one connection carries per round trip; requests of a
/// few hundred KB go out faster over several.
const CONNECTIONS: usize = 4;

/// An OTLP/gRPC upstream.
pub struct GrpcUpstream {
    /// One connection each (a client pools one HTTP/2 connection per host).
    clients: Vec<HttpClient>,
    next: AtomicUsize,
    /// By [`Signal`] index.
    urls: [Uri; 3],
    headers: HeaderMap,
}

fn service_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    }
}

impl GrpcUpstream {
    pub fn new(settings: &ForwardSettings) -> Result<Self, ForwardError> {
        let base = settings.endpoint.to_string();
        let base = base.trim_end_matches('/');
        Ok(GrpcUpstream {
            clients: (0..CONNECTIONS)
                .map(|_| remote_write::client(HttpVersion::Http2))
                .collect::<Result<_, _>>()?,
            next: AtomicUsize::new(0),
            urls: signal_urls(|signal| format!("{base}{}", service_path(signal)))?,
            headers: header_map(&settings.headers)?,
        })
    }

    pub async fn send(&self, item: &Item) -> Outcome {
        let Ok(length) = u32::try_from(item.body.len()) else {
            return Outcome::Rejected("larger than a gRPC message can be".into());
        };
        // The frame: not compressed, the length, the message (one copy, off the receivers).
        let mut frame = BytesMut::with_capacity(5 + item.body.len());
        frame.put_u8(0);
        frame.put_u32(length);
        frame.extend_from_slice(&item.body);
        let request = Request::post(self.urls[item.signal as usize].clone())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from(frame)));
        let mut request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Rejected(format!("request not built: {e}")),
        };
        request.headers_mut().extend(self.headers.clone());
        let client = &self.clients[self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS];
        match exchange(client, request).await {
            Ok((parts, trailers)) => outcome_of(&parts, trailers.as_ref()),
            Err(outcome) => outcome,
        }
    }
}

fn outcome_of(parts: &Parts, trailers: Option<&HeaderMap>) -> Outcome {
    if !parts.status.is_success() {
        return match remote_write::outcome_of(parts.status, &parts.headers) {
            remote_write::Outcome::Sent => Outcome::Retry(None),
            remote_write::Outcome::Retry(after) => Outcome::Retry(after),
            remote_write::Outcome::Rejected(status) => Outcome::Rejected(format!("HTTP {status}")),
        };
    }
    // A trailers-only answer carries the status in its headers.
    let status = tonic::Status::from_header_map(&parts.headers)
        .or_else(|| trailers.and_then(tonic::Status::from_header_map));
    let Some(status) = status else {
        // The stream ended without a status: nothing says the upstream took the request.
        return Outcome::Retry(None);
    };
    let retry_delay = || status.get_details_retry_info().map(|info| info.retry_delay);
    match status.code() {
        Code::Ok => Outcome::Sent,
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Outcome::Retry(retry_delay().flatten()),
        Code::ResourceExhausted => match retry_delay() {
            Some(delay) => Outcome::Retry(delay),
            None => Outcome::Rejected(format!("RESOURCE_EXHAUSTED: {}", status.message())),
        },
        code => Outcome::Rejected(format!("{code:?}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)]) -> Parts {
        let mut response = axum::http::Response::builder().status(200);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap().into_parts().0
    }

    #[test]
    fn grpc_codes_are_retried_or_refused_as_otlp_says() {
        assert_eq!(
            outcome_of(&answer(&[("grpc-status", "0")]), None),
            Outcome::Sent
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(
            outcome_of(&answer(&[]), Some(&trailers)),
            Outcome::Retry(None)
        );
        assert!(matches!(
            outcome_of(&answer(&[("grpc-status", "3")]), None),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            outcome_of(&answer(&[("grpc-status", "8")]), None),
            Outcome::Rejected(_)
        ));
        assert_eq!(outcome_of(&answer(&[]), None), Outcome::Retry(None));
        let retry_info = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            tonic_types::ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(2))),
        );
        let mut headers = HeaderMap::new();
        retry_info.add_header(&mut headers).unwrap();
        assert_eq!(
            outcome_of(&answer(&[]), Some(&headers)),
            Outcome::Retry(Some(std::time::Duration::from_secs(2)))
        );
    }
}
