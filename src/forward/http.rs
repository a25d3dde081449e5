//! Forwarding over OTLP/HTTP protobuf: `POST ENDPOINT/v1/{traces,metrics,logs}` with the
//! request's protobuf bytes as the body (shared, not copied), and what an answer means: 2xx
//! sent, 429 and 5xx again (after `Retry-After`), any other status refused for good. Also the
//! one exchange both protocols make (a request with a deadline, a bounded read of the answer).

use std::time::Duration;

use axum::http::header::{self, HeaderMap};
use axum::http::response::Parts;
use axum::http::{Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::queue::Item;
use super::{ForwardError, ForwardSettings};
use crate::export::remote_write::{self, HttpClient, HttpVersion, header_map};
use crate::self_metrics::Signal;

/// How long one request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body read (errors and partial successes are small).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What became of one attempt to forward a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Try again, after this long when the upstream said.
    Retry(Option<Duration>),
    /// The upstream will never take this request: why.
    Rejected(String),
}

/// An OTLP/HTTP upstream.
pub struct HttpUpstream {
    client: HttpClient,
    /// By [`Signal`] index.
    urls: [Uri; 3],
    headers: HeaderMap,
}

impl HttpUpstream {
    pub fn new(settings: &ForwardSettings) -> Result<Self, ForwardError> {
        let base = settings.endpoint.to_string();
        let base = base.trim_end_matches('/');
        Ok(HttpUpstream {
            client: remote_write::client(HttpVersion::Http1)?,
            urls: signal_urls(|signal| format!("{base}/v1/{}", signal.name()))?,
            headers: header_map(&settings.headers)?,
        })
    }

    pub async fn send(&self, item: &Item) -> Outcome {
        let request = Request::post(self.urls[item.signal as usize].clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(item.body.clone()));
        let mut request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Rejected(format!("request not built: {e}")),
        };
        request.headers_mut().extend(self.headers.clone());
        match exchange(&self.client, request).await {
            Ok((parts, _)) => match remote_write::outcome_of(parts.status, &parts.headers) {
                remote_write::Outcome::Sent => Outcome::Sent,
                remote_write::Outcome::Retry(after) => Outcome::Retry(after),
                remote_write::Outcome::Rejected(status) => {
                    Outcome::Rejected(format!("HTTP {status}"))
                }
            },
            Err(outcome) => outcome,
        }
    }
}

/// The three request URLs, by [`Signal`] index.
pub fn signal_urls(url: impl Fn(Signal) -> String) -> Result<[Uri; 3], ForwardError> {
    let [traces, metrics, logs] = Signal::ALL.map(|signal| {
        let text = url(signal);
        text.parse::<Uri>().map_err(|_| ForwardError::Url(text))
    });
    Ok([traces?, metrics?, logs?])
}

/// Sends `request` and reads the answer's head, and its trailers (gRPC's status) when it has
/// them. No answer in time, or none at all, is an outcome: try again.
pub async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(Parts, Option<HeaderMap>), Outcome> {
    let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let response = client.request(request).await?;
        let (parts, body) = response.into_parts();
        // Read (a bounded part of) the answer, for the trailers and so the connection can be
        // reused.
        let collected = Limited::new(body, MAX_ANSWER_BYTES).collect().await.ok();
        let trailers = collected.and_then(|c| c.trailers().cloned());
        Ok::<_, hyper_util::client::legacy::Error>((parts, trailers))
    })
    .await;
    match answered {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "forwarding request failed");
            Err(Outcome::Retry(None))
        }
        Err(_) => Err(Outcome::Retry(None)),
    }
}
