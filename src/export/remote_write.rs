//! Remote write: every `interval`, the RED series (one sample each, at that moment) are pushed
//! to each configured target with the remote-write 1.0 protocol. Each target has its own task
//! and its own queue of compressed requests, bounded in bytes: when the target is slow or down,
//! the oldest requests are dropped and counted (the counters are cumulative, so a later sample
//! carries everything an old one did). A push answered 5xx or 429, or not answered, is tried
//! again with exponential backoff, after `Retry-After` when the target says; any other 4xx is
//! dropped and counted. Ingest never waits on any of this: the stage only reads a snapshot of
//! the aggregator's totals.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, StatusCode, Uri};
use backon::BackoffBuilder;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ExternalLabels;
use super::proto::{encode, write_requests};
use crate::pipeline::Live;
use crate::self_metrics;
use crate::vocab::now_ms;

/// One remote-write target, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteTarget {
    /// `http://` or `https://`, without credentials (`basic_auth` holds those).
    pub url: Uri,
    /// Extra request headers (e.g. a tenant id); names and values are checked at start-up.
    pub headers: Vec<(String, String)>,
    pub basic_auth: Option<(String, String)>,
    pub interval: Duration,
    /// Compressed requests waiting for this target, in bytes, at most.
    pub queue_max_bytes: usize,
}

impl RemoteWriteTarget {
    /// The URL as shown on `/metrics` and in logs: no credentials, no query.
    pub fn display_name(&self) -> String {
        display_url(&self.url)
    }
}

/// A URL as `/metrics` and logs show it: scheme, host, port and path; no credentials (a
/// `Uri`'s authority may hold them), no query.
pub fn display_url(url: &Uri) -> String {
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme_str().unwrap_or(""),
        url.host().unwrap_or(""),
        url.path()
    )
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 16 << 20;
/// Series per request; Prometheus' own senders use a few thousand samples per request.
const MAX_SERIES_PER_REQUEST: usize = 2_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How long a stop keeps trying to deliver the last sample.
const FINAL_PUSH_WITHIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
}

/// Runs every target until `stop`; a panic in one restarts the stage (its supervisor's job).
pub async fn run(
    targets: Vec<RemoteWriteTarget>,
    live: Arc<Live>,
    external: ExternalLabels,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let sender = match Sender::new(target, live.clone(), external.clone()) {
            Ok(sender) => sender,
            Err(e) => {
                tracing::error!(error = %e, "remote write target not started");
                continue;
            }
        };
        tasks.spawn(sender.run(stop.clone()));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// The checked headers of a target, for its requests.
pub fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, RemoteWriteError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| RemoteWriteError::Header(name.clone()))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| RemoteWriteError::Header(name.to_string()))?;
        map.insert(name, value);
    }
    Ok(map)
}

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP version a [`client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// HTTP/2 only: with prior knowledge over `http://`, by ALPN over `https://` (gRPC).
    Http2,
}

/// hyper's pooled client; `https://` verified against the system's roots.
pub fn client(version: HttpVersion) -> Result<HttpClient, RemoteWriteError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_platform_verifier()?
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(match version {
        HttpVersion::Http1 => {
            Client::builder(TokioExecutor::new()).build(connector.enable_http1().build())
        }
        HttpVersion::Http2 => Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector.enable_http2().build()),
    })
}

/// A compressed request waiting to be sent.
struct Payload {
    body: Bytes,
    samples: u64,
}

/// Requests waiting for one target, oldest first, bounded in bytes.
struct Queue {
    items: VecDeque<Payload>,
    bytes: usize,
    max_bytes: usize,
}

impl Queue {
    /// Adds `payload`, dropping the oldest requests while over the bound; returns the samples
    /// dropped. The front may be in flight: it is kept (`keep_front`) and dropped after.
    fn push(&mut self, payload: Payload, keep_front: bool) -> u64 {
        self.bytes += payload.body.len();
        self.items.push_back(payload);
        let mut dropped = 0;
        let first_droppable = usize::from(keep_front);
        while self.bytes > self.max_bytes && self.items.len() > first_droppable {
            if let Some(old) = self.items.remove(first_droppable) {
                self.bytes -= old.body.len();
                dropped += old.samples;
            }
        }
        dropped
    }

    fn front(&self) -> Option<&Payload> {
        self.items.front()
    }

    fn pop(&mut self) -> Option<Payload> {
        let payload = self.items.pop_front()?;
        self.bytes -= payload.body.len();
        Some(payload)
    }
}

/// What became of one push.
#[derive(Debug)]
pub enum Outcome {
    Sent,
    /// 5xx, 429, or no answer: try again, after this long when the target said.
    Retry(Option<Duration>),
    /// Any other 4xx: the target will never take this request.
    Rejected(StatusCode),
}

type Sending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

struct Sender {
    target: RemoteWriteTarget,
    name: String,
    client: HttpClient,
    headers: HeaderMap,
    live: Arc<Live>,
    external: ExternalLabels,
    queue: Queue,
}

impl Sender {
    fn new(
        target: RemoteWriteTarget,
        live: Arc<Live>,
        external: ExternalLabels,
    ) -> Result<Self, RemoteWriteError> {
        Ok(Sender {
            name: target.display_name(),
            client: client(HttpVersion::Http1)?,
            headers: header_map(&target.headers)?,
            queue: Queue {
                items: VecDeque::new(),
                bytes: 0,
                max_bytes: target.queue_max_bytes,
            },
            target,
            live,
            external,
        })
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.target.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let backoff_builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times();
        let mut backoff = backoff_builder.build();
        let mut retry_at: Option<Instant> = None;
        let mut sending: Option<Sending> = None;
        loop {
            if sending.is_none() && retry_at.is_none() {
                sending = self.send_front();
            }
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tick.tick() => self.take_sample(sending.is_some()).await,
                outcome = in_flight(&mut sending) => {
                    sending = None;
                    match outcome {
                        Outcome::Sent => {
                            backoff = backoff_builder.build();
                            if let Some(sent) = self.queue.pop() {
                                self_metrics::remote_write_sent(&self.name, sent.samples);
                            }
                        }
                        Outcome::Retry(after) => {
                            self_metrics::remote_write_retry(&self.name);
                            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                            retry_at = Some(Instant::now() + after.unwrap_or(delay));
                        }
                        Outcome::Rejected(status) => {
                            if let Some(rejected) = self.queue.pop() {
                                tracing::warn!(target = %self.name, %status, "remote write rejected a request; dropped");
                                self_metrics::remote_write_dropped(&self.name, "rejected", rejected.samples);
                            }
                        }
                    }
                }
                _ = sleep_until(retry_at), if sending.is_none() => retry_at = None,
            }
            self_metrics::remote_write_queue_bytes(&self.name, self.queue.bytes);
        }
        self.final_push(sending.is_some()).await;
    }

    /// Queues one sample of every series, built and compressed off the async threads.
    async fn take_sample(&mut self, front_in_flight: bool) {
        let snapshot = self.live.red_totals();
        let external = self.external.clone();
        let built = tokio::task::spawn_blocking(move || {
            write_requests(snapshot, &external, now_ms(), MAX_SERIES_PER_REQUEST)
                .iter()
                .map(|request| {
                    let samples = request.timeseries.len() as u64;
                    (encode(request), samples)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(built) = built else {
            return;
        };
        for (body, samples) in built {
            match body {
                Ok(body) => {
                    let payload = Payload {
                        body: Bytes::from(body),
                        samples,
                    };
                    let dropped = self.queue.push(payload, front_in_flight);
                    if dropped > 0 {
                        self_metrics::remote_write_dropped(&self.name, "queue_full", dropped);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "remote write request not compressed");
                    self_metrics::remote_write_dropped(&self.name, "encode", samples);
                }
            }
        }
    }

    fn send_front(&self) -> Option<Sending> {
        let body = self.queue.front()?.body.clone();
        let mut request = Request::post(self.target.url.clone())
            .header(header::CONTENT_ENCODING, "snappy")
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0");
        if let Some((user, password)) = &self.target.basic_auth {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header(header::AUTHORIZATION, format!("Basic {credentials}"));
        }
        let mut request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(error = %e, "remote write request not built");
                return Some(Box::pin(async {
                    Outcome::Rejected(StatusCode::BAD_REQUEST)
                }));
            }
        };
        request.headers_mut().extend(self.headers.clone());
        let client = self.client.clone();
        Some(Box::pin(async move {
            let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                // Read (a bounded part of) the answer so the connection can be reused.
                let _ = Limited::new(body, 64 * 1024).collect().await;
                Ok::<_, hyper_util::client::legacy::Error>(parts)
            })
            .await;
            match sent {
                Ok(Ok(parts)) => outcome_of(parts.status, &parts.headers),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "remote write request failed");
                    Outcome::Retry(None)
                }
                Err(_) => Outcome::Retry(None),
            }
        }))
    }

    /// On a stop: one last sample, and a bounded try to deliver what waits.
    async fn final_push(mut self, front_in_flight: bool) {
        self.take_sample(front_in_flight).await;
        let deadline = Instant::now() + FINAL_PUSH_WITHIN;
        while let Some(sending) = self.send_front() {
            match tokio::time::timeout_at(deadline, sending).await {
                Ok(Outcome::Sent) => {
                    if let Some(sent) = self.queue.pop() {
                        self_metrics::remote_write_sent(&self.name, sent.samples);
                    }
                }
                Ok(Outcome::Rejected(_)) => {
                    if let Some(rejected) = self.queue.pop() {
                        self_metrics::remote_write_dropped(
                            &self.name,
                            "rejected",
                            rejected.samples,
                        );
                    }
                }
                Ok(Outcome::Retry(_)) | Err(_) => break,
            }
        }
    }
}

/// Resolves once a stop is asked for (the watch's guard is not held across the caller's awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn in_flight(sending: &mut Option<Sending>) -> Outcome {
    match sending {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 2xx: sent; 429 and 5xx: again (after `Retry-After` when given); any other: refused for good.
pub fn outcome_of(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status.is_success() {
        Outcome::Sent
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry(retry_after(headers, std::time::SystemTime::now()))
    } else {
        Outcome::Rejected(status)
    }
}

/// `Retry-After` in seconds or as an HTTP date, at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(bytes: usize, samples: u64) -> Payload {
        Payload {
            body: Bytes::from(vec![0; bytes]),
            samples,
        }
    }

    #[test]
    fn the_queue_drops_its_oldest_requests_beyond_its_bytes() {
        let mut queue = Queue {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes: 250,
        };
        assert_eq!(queue.push(payload(100, 1), false), 0);
        assert_eq!(queue.push(payload(100, 2), false), 0);
        assert_eq!(queue.push(payload(100, 3), false), 1);
        assert_eq!(queue.bytes, 200);
        // The front is being sent: the one behind it goes instead.
        assert_eq!(queue.push(payload(100, 4), true), 3);
        assert_eq!(
            queue.items.iter().map(|p| p.samples).collect::<Vec<_>>(),
            [2, 4]
        );
    }

    #[test]
    fn statuses_decide_between_retry_and_drop() {
        let none = HeaderMap::new();
        assert!(matches!(
            outcome_of(StatusCode::NO_CONTENT, &none),
            Outcome::Sent
        ));
        assert!(matches!(
            outcome_of(StatusCode::SERVICE_UNAVAILABLE, &none),
            Outcome::Retry(None)
        ));
        assert!(matches!(
            outcome_of(StatusCode::BAD_REQUEST, &none),
            Outcome::Rejected(StatusCode::BAD_REQUEST)
        ));
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert!(matches!(
            outcome_of(StatusCode::TOO_MANY_REQUESTS, &headers),
            Outcome::Retry(Some(d)) if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_a_cap() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let at = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(at("3"), Some(Duration::from_secs(3)));
        assert_eq!(at("100000"), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(at(&later), Some(Duration::from_secs(20)));
        assert_eq!(at("soon"), None);
    }

    #[test]
    fn the_display_name_hides_the_query() {
        let target = RemoteWriteTarget {
            url: "https://example.com:9090/api/v1/write?token=x"
                .parse()
                .unwrap(),
            headers: Vec::new(),
            basic_auth: None,
            interval: DEFAULT_INTERVAL,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
        };
        assert_eq!(
            target.display_name(),
            "https://example.com:9090/api/v1/write"
        );
    }
}
