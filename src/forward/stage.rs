//! The forwarding stage: takes requests off the queue and sends them upstream, a few at a
//! time (so one slow answer does not hold the rest up), each retried with exponential backoff
//! (or after the upstream's `Retry-After` / RetryInfo) until it is sent or refused for good.
//! A request being retried stays in the queue's byte bound, so a long outage fills the queue
//! and the receivers' newer requests are dropped and counted. On a stop, what waits is sent
//! within [`DRAIN_WITHIN`]; what is left then is dropped and counted as `shutdown`.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::grpc::GrpcUpstream;
use super::http::{HttpUpstream, Outcome};
use super::queue::{DropReason, Lease};
use super::{ForwardError, ForwardHandle, ForwardSettings, Protocol};
use crate::self_metrics;

/// Requests sent at once.
const MAX_IN_FLIGHT: usize = 8;
/// How long a stop keeps sending what waits.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(3);

enum Upstream {
    // Boxed: the clients are large, and built once.
    Grpc(Box<GrpcUpstream>),
    Http(Box<HttpUpstream>),
}

impl Upstream {
    fn new(settings: &ForwardSettings) -> Result<Self, ForwardError> {
        Ok(match settings.protocol {
            Protocol::Grpc => Upstream::Grpc(Box::new(GrpcUpstream::new(settings)?)),
            Protocol::HttpProtobuf => Upstream::Http(Box::new(HttpUpstream::new(settings)?)),
        })
    }

    async fn send(&self, lease: &Lease) -> Outcome {
        match self {
            Upstream::Grpc(grpc) => grpc.send(lease.item()).await,
            Upstream::Http(http) => http.send(lease.item()).await,
        }
    }
}

/// Runs until `stop`, then drains; a panic restarts it (its supervisor's job), the queue and
/// its counts surviving.
pub async fn run(settings: ForwardSettings, handle: ForwardHandle, stop: watch::Receiver<bool>) {
    let upstream = match Upstream::new(&settings) {
        Ok(upstream) => Arc::new(upstream),
        Err(e) => {
            tracing::error!(error = %e, "OTLP forwarding not started");
            return;
        }
    };
    let queue = handle.queue().clone();
    let mut stop = stop;
    let mut sending = JoinSet::new();
    loop {
        start_sending(&handle, &upstream, &mut sending);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = queue.ready(), if sending.len() < MAX_IN_FLIGHT => {}
            Some(joined) = sending.join_next() => settled(joined),
        }
        self_metrics::forward_queue_bytes(queue.upstream(), queue.bytes());
    }
    let deadline = Instant::now() + DRAIN_WITHIN;
    loop {
        start_sending(&handle, &upstream, &mut sending);
        match tokio::time::timeout_at(deadline, sending.join_next()).await {
            Ok(Some(joined)) => settled(joined),
            Ok(None) => break,
            Err(_) => {
                // Leases of aborted sends count themselves as dropped.
                sending.shutdown().await;
                break;
            }
        }
    }
    queue.drop_waiting();
    self_metrics::forward_queue_bytes(queue.upstream(), queue.bytes());
}

fn start_sending(handle: &ForwardHandle, upstream: &Arc<Upstream>, sending: &mut JoinSet<()>) {
    while sending.len() < MAX_IN_FLIGHT {
        let Some(lease) = handle.queue().take() else {
            return;
        };
        sending.spawn(deliver(upstream.clone(), lease));
    }
}

fn settled(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        // The lease counted its request as dropped when the task unwound.
        tracing::error!("forwarding a request panicked");
        self_metrics::stage_panicked("forward");
    }
}

/// Sends one request until it is sent or refused for good.
async fn deliver(upstream: Arc<Upstream>, lease: Lease) {
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match upstream.send(&lease).await {
            Outcome::Sent => return lease.sent(),
            Outcome::Rejected(why) => {
                tracing::warn!(%why, "the OTLP upstream refused a forwarded request; dropped");
                return lease.dropped(DropReason::Rejected);
            }
            Outcome::Retry(after) => {
                self_metrics::forward_retry(lease.upstream());
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::time::sleep(after.unwrap_or(delay)).await;
            }
        }
    }
}
