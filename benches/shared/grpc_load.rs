//! OTLP/gRPC load for the benchmarks: a tonic codec that sends pre-encoded export requests,
//! the open-loop generator (a constant arrival rate whatever happens to earlier batches), a
//! closed-loop sender (as fast as answers come back, for storms and floods), and a tally of
//! what happened to every span sent: acknowledged, rejected in `partial_success`, refused
//! (UNAVAILABLE), failed, or of unknown fate (timed out or lost with its connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::sync::Semaphore;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::payload::{Payload, fresh_ids};
use crate::probe::cpu_seconds;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// How long the generators wait for an answer before giving a request up as "unknown".
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Default)]
struct PreEncoded;
struct BytesEncoder;
struct ResponseDecoder;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// One `TraceService/Export` of pre-encoded request bytes.
pub async fn export_raw(
    channel: Channel,
    bytes: Bytes,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    export_raw_with_key(channel, bytes, None).await
}

/// [`export_raw`], presenting `api_key` in `x-otlp-api-key` if given.
pub async fn export_raw_with_key(
    channel: Channel,
    bytes: Bytes,
    api_key: Option<&tonic::metadata::AsciiMetadataValue>,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
    let mut request = tonic::Request::new(bytes);
    if let Some(key) = api_key {
        request.metadata_mut().insert("x-otlp-api-key", key.clone());
    }
    grpc.unary(request, path, PreEncoded)
        .await
        .map(|r| r.into_inner())
}

pub async fn connect(addr: SocketAddr, connections: usize) -> Result<Vec<Channel>> {
    connect_with(addr, connections, None).await
}

/// [`connect`], over TLS trusting the PEM CA certificate `ca_pem` when given.
pub async fn connect_with(
    addr: SocketAddr,
    connections: usize,
    ca_pem: Option<&str>,
) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(ca) = ca_pem {
            use tonic::transport::{Certificate, ClientTlsConfig};
            endpoint = endpoint.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )?;
        }
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

// ---------------------------------------------------------------------------------------------
// What happened to the spans sent
// ---------------------------------------------------------------------------------------------

/// Spans by fate, shared by every sender of a run and read while they run.
#[derive(Default)]
pub struct Tally {
    /// In requests answered OK, minus those the answer's `partial_success` rejected: redline
    /// must count every one of these.
    pub acknowledged: AtomicU64,
    /// Rejected in an OK answer's `partial_success`.
    pub rejected: AtomicU64,
    /// Answered UNAVAILABLE (gRPC) or 503 (HTTP): overload, not stored.
    pub refused: AtomicU64,
    /// Answered with another error (invalid, too large, …): not stored.
    pub failed: AtomicU64,
    /// Timed out or lost with the connection: may or may not have been stored.
    pub unknown: AtomicU64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Acknowledged { rejected: u64 },
    Refused,
    Failed,
    Unknown,
}

impl Tally {
    pub fn record(&self, spans: u64, fate: Fate) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        match fate {
            Fate::Acknowledged { rejected } => {
                let rejected = rejected.min(spans);
                add(&self.acknowledged, spans - rejected);
                add(&self.rejected, rejected);
            }
            Fate::Refused => add(&self.refused, spans),
            Fate::Failed => add(&self.failed, spans),
            Fate::Unknown => add(&self.unknown, spans),
        }
    }

    pub fn snapshot(&self) -> Counts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            acknowledged: get(&self.acknowledged),
            rejected: get(&self.rejected),
            refused: get(&self.refused),
            failed: get(&self.failed),
            unknown: get(&self.unknown),
        }
    }
}

/// A [`Tally`] read at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub acknowledged: u64,
    pub rejected: u64,
    pub refused: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, o: Counts) -> Counts {
        Counts {
            acknowledged: self.acknowledged + o.acknowledged,
            rejected: self.rejected + o.rejected,
            refused: self.refused + o.refused,
            failed: self.failed + o.failed,
            unknown: self.unknown + o.unknown,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {}, refused {}, rejected {}, failed {}, unknown {}",
            self.acknowledged, self.refused, self.rejected, self.failed, self.unknown
        )
    }
}

/// The fate of a gRPC export from its answer.
pub fn grpc_fate(result: &Result<ExportTraceServiceResponse, tonic::Status>) -> Fate {
    use tonic::Code;
    match result {
        Ok(response) => Fate::Acknowledged {
            rejected: response
                .partial_success
                .as_ref()
                .map_or(0, |p| p.rejected_spans.max(0) as u64),
        },
        Err(status) => match status.code() {
            Code::Unavailable => Fate::Refused,
            Code::InvalidArgument
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::AlreadyExists => Fate::Failed,
            _ => Fate::Unknown,
        },
    }
}

/// An export with the generators' timeout; a timeout is reported as DEADLINE_EXCEEDED.
async fn export_with_timeout(
    channel: Channel,
    bytes: Bytes,
    api_key: Option<&tonic::metadata::AsciiMetadataValue>,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        export_raw_with_key(channel, bytes, api_key),
    )
    .await
    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("bench timeout")))
}

// ---------------------------------------------------------------------------------------------
// The open-loop generator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
pub struct LoadResult {
    /// Batches due by the arrival schedule.
    pub scheduled: u64,
    pub ok: u64,
    /// gRPC UNAVAILABLE answers (overload).
    pub unavailable: u64,
    /// Other errors, timeouts included.
    pub failed: u64,
    /// Batches not sent: every in-flight slot was still busy when they were due.
    pub overrun: u64,
    /// Spans the receiver reported as rejected in `partial_success`.
    pub partial_rejected: u64,
    pub elapsed_s: f64,
    /// CPU the generator itself used, as % of one core.
    pub generator_cpu_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl LoadResult {
    pub fn lost(&self) -> u64 {
        self.unavailable + self.failed + self.overrun
    }
    pub fn loss_fraction(&self) -> f64 {
        if self.scheduled == 0 {
            return 1.0;
        }
        self.lost() as f64 / self.scheduled as f64
    }
    pub fn accepted_spans_per_s(&self) -> f64 {
        self.ok as f64 * crate::payload::SPANS_PER_BATCH as f64 / self.elapsed_s.max(1e-9)
    }
}

pub struct LoadConfig {
    pub spans_per_s: f64,
    pub duration: Duration,
    pub max_in_flight: usize,
}

/// Sends batches at a constant arrival rate (open loop) and counts what happened to them.
pub async fn run_load(
    channels: &[Channel],
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    config: &LoadConfig,
) -> LoadResult {
    run_load_counted(channels, payloads, sequence, config, &Arc::default()).await
}

/// [`run_load`], also recording every span's fate in `tally` as answers arrive.
pub async fn run_load_counted(
    channels: &[Channel],
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    config: &LoadConfig,
    tally: &Arc<Tally>,
) -> LoadResult {
    let batches_per_s = config.spans_per_s / crate::payload::SPANS_PER_BATCH as f64;
    let period = Duration::from_secs_f64(1.0 / batches_per_s);
    let total = (batches_per_s * config.duration.as_secs_f64())
        .round()
        .max(1.0) as u64;
    let slots = Arc::new(Semaphore::new(config.max_in_flight));
    let counters = Arc::new([
        AtomicU64::new(0), // ok
        AtomicU64::new(0), // unavailable
        AtomicU64::new(0), // failed
        AtomicU64::new(0), // partial rejected
    ]);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let cpu_start = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut overrun = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        // Open loop: batch i is due at i·period whatever happened to earlier ones.
        tokio::time::sleep_until((started + period.mul_f64(i as f64)).into()).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            overrun += 1;
            continue;
        };
        let n = sequence.fetch_add(1, Ordering::Relaxed);
        let payload = &payloads[(n % payloads.len() as u64) as usize];
        let spans = payload.spans();
        let bytes = fresh_ids(payload, n);
        let channel = channels[(n % channels.len() as u64) as usize].clone();
        let counters = counters.clone();
        let latencies = latencies.clone();
        let tally = tally.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = export_with_timeout(channel, bytes, None).await;
            let fate = grpc_fate(&result);
            tally.record(spans, fate);
            let index = match fate {
                Fate::Acknowledged { rejected } => {
                    counters[3].fetch_add(rejected, Ordering::Relaxed);
                    0
                }
                Fate::Refused => 1,
                Fate::Failed | Fate::Unknown => 2,
            };
            counters[index].fetch_add(1, Ordering::Relaxed);
            if index == 0 {
                latencies
                    .lock()
                    .unwrap()
                    .push(sent.elapsed().as_secs_f64() * 1e3);
            }
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_start;
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    LoadResult {
        scheduled: total,
        ok: counters[0].load(Ordering::Relaxed),
        unavailable: counters[1].load(Ordering::Relaxed),
        failed: counters[2].load(Ordering::Relaxed),
        overrun,
        partial_rejected: counters[3].load(Ordering::Relaxed),
        elapsed_s,
        generator_cpu_pct: cpu / elapsed_s * 100.0,
        latency_p50_ms: pick(0.5),
        latency_p99_ms: pick(0.99),
    }
}

// ---------------------------------------------------------------------------------------------
// The closed-loop sender
// ---------------------------------------------------------------------------------------------

/// How [`send_closed`] sends.
pub struct ClosedLoop {
    /// Requests kept in flight.
    pub parallel: usize,
    /// Stop sending new requests at this moment (None: when the batches run out).
    pub until: Option<Instant>,
    /// Send a batch answered UNAVAILABLE again after 200 ms, up to 50 times (as an exporter
    /// with retries does); otherwise it is refused at once.
    pub retry_unavailable: bool,
    /// Present this OTLP API key with every request.
    pub api_key: Option<tonic::metadata::AsciiMetadataValue>,
}

/// What [`send_closed`] did, in requests.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClosedResult {
    pub requests: u64,
    /// UNAVAILABLE answers that were retried.
    pub retried: u64,
    /// Batches that ended in anything but an acknowledgement.
    pub failed: u64,
}

/// Sends `next(n)` (request bytes and their span count) for n = 0, 1, … with `parallel`
/// requests in flight, until it returns None or `until` passes; records each batch's final
/// fate in `tally`.
pub async fn send_closed(
    channels: &[Channel],
    mut next: impl FnMut(u64) -> Option<(Bytes, u64)>,
    config: &ClosedLoop,
    tally: &Arc<Tally>,
) -> ClosedResult {
    let slots = Arc::new(Semaphore::new(config.parallel.max(1)));
    let retried = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        if config.until.is_some_and(|until| Instant::now() >= until) {
            break;
        }
        let Some((bytes, spans)) = next(n) else {
            break;
        };
        let channel = channels[(n % channels.len() as u64) as usize].clone();
        let (retried, failed, tally) = (retried.clone(), failed.clone(), tally.clone());
        let api_key = config.api_key.clone();
        let attempts = if config.retry_unavailable { 50 } else { 1 };
        tasks.spawn(async move {
            let mut fate = Fate::Unknown;
            for attempt in 1..=attempts {
                let answer =
                    export_with_timeout(channel.clone(), bytes.clone(), api_key.as_ref()).await;
                fate = grpc_fate(&answer);
                if fate != Fate::Refused || attempts == 1 {
                    break;
                }
                retried.fetch_add(1, Ordering::Relaxed);
                if attempt < attempts {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if !matches!(fate, Fate::Acknowledged { .. }) {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            tally.record(spans, fate);
            drop(slot);
        });
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    ClosedResult {
        requests: n,
        retried: retried.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

/// Sends raw batches closed-loop (`parallel` at a time), retrying UNAVAILABLE after a pause;
/// returns (UNAVAILABLE answers retried, batches that failed in the end).
pub async fn send_all(
    channels: &[Channel],
    batches: impl Iterator<Item = Bytes>,
    parallel: usize,
) -> (u64, u64) {
    let mut batches = batches;
    let config = ClosedLoop {
        parallel,
        until: None,
        retry_unavailable: true,
        api_key: None,
    };
    let result = send_closed(
        channels,
        |_| batches.next().map(|b| (b, 0)),
        &config,
        &Arc::default(),
    )
    .await;
    (result.retried, result.failed)
}
