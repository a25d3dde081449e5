//! Export of finished spans: a bounded queue of spans already encoded as OTLP protobuf (the
//! [`crate::tracer`] writes them), and a thread of its own that wraps each batch in an
//! `ExportTraceServiceRequest` and sends it over the configured OTLP protocol.
//!
//! The queue follows the batch span processor's settings (`OTEL_BSP_*`): a batch goes out when
//! it holds `max_export_batch_size` spans or `schedule_delay` after the last export; at most
//! `max_queue_size` spans wait besides the batch being sent, and spans ending beyond that are
//! dropped and counted (`otel.sdk.processor.span.processed`, `error.type=queue_full`). A slow
//! or absent collector therefore costs requests nothing.

use crate::otlp_wire::{LEN, key_value, message, opt_bytes_field, tag, varint, varint_len};
use crate::telemetry::env_number;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::Resource;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ExportBuildError {
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("the OTLP endpoint {0:?} is not a valid URI")]
    Endpoint(String),
    #[error("starting the span export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The batch span processor's settings, from the standard environment variables.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (2048): spans waiting, besides the batch being sent.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512): spans per export request.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (5000 ms): the longest a finished span waits for export.
    pub schedule_delay: Duration,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (10000 ms): one export request's deadline.
    pub export_timeout: Duration,
}

impl BatchSettings {
    pub fn from_env() -> Self {
        let num = env_number::<u64>;
        let max_queue_size = num("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(2048).max(1) as usize;
        BatchSettings {
            max_queue_size,
            // The specification: a batch larger than the queue is clamped to it.
            max_export_batch_size: (num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").unwrap_or(512).max(1)
                as usize)
                .min(max_queue_size),
            schedule_delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(5000)),
            export_timeout: Duration::from_millis(
                num("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                    .or_else(|| num("OTEL_EXPORTER_OTLP_TIMEOUT"))
                    .unwrap_or(10_000),
            ),
        }
    }
}

/// What the queue reports into: the service's meter.
#[derive(Clone)]
pub struct ExportCounters {
    /// `otel.sdk.processor.span.processed`: drops at a full queue carry `error.type`.
    pub processed: Counter<u64>,
    /// `otel.sdk.exporter.span.exported`: failed exports carry `error.type`.
    pub exported: Counter<u64>,
}

impl ExportCounters {
    pub fn new(meter: &opentelemetry::metrics::Meter) -> Self {
        ExportCounters {
            processed: meter
                .u64_counter("otel.sdk.processor.span.processed")
                .with_unit("{span}")
                .build(),
            exported: meter
                .u64_counter("otel.sdk.exporter.span.exported")
                .with_unit("{span}")
                .build(),
        }
    }
}

/// The attributes the SDK's batch span processor reports itself with.
fn component() -> Vec<KeyValue> {
    vec![
        KeyValue::new("otel.component.type", "batching_span_processor"),
        KeyValue::new("otel.component.name", "batching_span_processor/0"),
    ]
}

/// Encoded spans waiting for export, in batches.
pub struct SpanQueue {
    state: Mutex<QueueState>,
    /// Wakes the export thread: a batch is full, a flush was asked for, or shutdown.
    work: Condvar,
    /// Wakes flushers: the export thread finished a flush.
    flushed: Condvar,
    settings: BatchSettings,
    counters: ExportCounters,
    /// Written in front of each batch when it is sent.
    prefix: RequestPrefix,
}

struct QueueState {
    /// The batch being filled: `Span` messages (field 2 of `ScopeSpans`), back to back.
    open: Vec<u8>,
    open_spans: usize,
    /// Full batches, oldest first.
    sealed: VecDeque<Batch>,
    /// Spans in `open` and `sealed` (the bound).
    queued: usize,
    /// Bytes reserved at the front of every batch for the request's prefix, so a batch becomes
    /// the request without being copied.
    headroom: usize,
    /// The capacity a new batch starts with: the last batch's size.
    size_hint: usize,
    flush_asked: u64,
    flush_done: u64,
    shutdown: bool,
}

/// Encoded spans after `headroom` bytes of room for the request's prefix.
struct Batch {
    body: Vec<u8>,
    headroom: usize,
    spans: usize,
}

impl SpanQueue {
    /// Batches become requests carrying `resource` and the instrumentation scope `scope`.
    pub fn new(
        settings: BatchSettings,
        counters: ExportCounters,
        resource: &Resource,
        scope: &str,
    ) -> Self {
        let prefix = RequestPrefix::new(resource, scope);
        let headroom = prefix.max_len();
        SpanQueue {
            state: Mutex::new(QueueState {
                open: vec![0; headroom],
                open_spans: 0,
                sealed: VecDeque::new(),
                queued: 0,
                headroom,
                size_hint: 4096,
                flush_asked: 0,
                flush_done: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            flushed: Condvar::new(),
            settings,
            counters,
            prefix,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one span, written by `encode` as a complete `Span` field, or drops and counts
    /// it when the queue is full.
    pub fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.lock();
        if st.queued >= self.settings.max_queue_size || st.shutdown {
            drop(st);
            let mut attrs = component();
            attrs.push(KeyValue::new("error.type", "queue_full"));
            self.counters.processed.add(1, &attrs);
            return;
        }
        encode(&mut st.open);
        st.open_spans += 1;
        st.queued += 1;
        if st.open_spans >= self.settings.max_export_batch_size {
            st.seal();
            drop(st);
            self.work.notify_one();
        }
    }

    /// Waits until everything that ended before this call was sent (or failed to be), at most
    /// `timeout`. Blocking: call it off the async runtime.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        st.flush_asked += 1;
        let asked = st.flush_asked;
        self.work.notify_one();
        while st.flush_done < asked && !st.shutdown {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .flushed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Makes the export thread send what is queued and stop.
    pub fn close(&self) {
        self.lock().shutdown = true;
        self.work.notify_one();
    }

    /// The next batch to send, waiting for one to fill, the schedule delay, a flush or
    /// shutdown; `None` once shut down and empty.
    fn next_batch(&self, due: Instant) -> Option<Batch> {
        let mut st = self.lock();
        loop {
            if let Some(b) = st.sealed.pop_front() {
                st.queued -= b.spans;
                return Some(b);
            }
            let flushing = st.flush_asked > st.flush_done;
            if st.open_spans > 0 && (flushing || st.shutdown || Instant::now() >= due) {
                st.seal();
                continue;
            }
            if flushing {
                st.flush_done = st.flush_asked;
                self.flushed.notify_all();
            }
            if st.shutdown {
                self.flushed.notify_all();
                return None;
            }
            let wait = due.saturating_duration_since(Instant::now());
            let wait = if wait.is_zero() {
                self.settings.schedule_delay.max(Duration::from_millis(1))
            } else {
                wait
            };
            st = self
                .work
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl QueueState {
    fn seal(&mut self) {
        self.size_hint = self.open.len();
        let mut next = Vec::with_capacity(self.size_hint + self.size_hint / 8);
        next.resize(self.headroom, 0);
        let body = std::mem::replace(&mut self.open, next);
        self.sealed.push_back(Batch {
            body,
            headroom: self.headroom,
            spans: std::mem::take(&mut self.open_spans),
        });
    }
}

/// The export thread's niceness. Exporting is background work with a bounded queue in front:
/// when requests and the exporter want the same saturated core, requests should win and the
/// queue should drop spans (counted), not the other way round. At nice 10 the thread still gets
/// about a tenth of a contended core and every idle cycle.
const EXPORT_NICE: libc::c_int = 10;

fn lower_thread_priority() {
    // Linux gives every thread its own nice value; `setpriority` on the thread id sets just it.
    // SAFETY: plain system calls on the calling thread; no memory is passed.
    let failed = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            EXPORT_NICE,
        ) != 0
    };
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the span export thread's priority");
    }
}

/// Starts the export thread for `queue`: batches become requests to `endpoint` (the base URL)
/// over `protocol` (`http/protobuf`, `http/json` or `grpc`).
pub fn start_exporter(
    queue: Arc<SpanQueue>,
    endpoint: &str,
    protocol: &str,
) -> Result<std::thread::JoinHandle<()>, ExportBuildError> {
    let endpoint = endpoint.trim_end_matches('/').to_string();
    let protocol = protocol.to_string();
    let timeout = queue.settings.export_timeout;
    // The transport is built on the export thread: reqwest's blocking client and tonic's
    // channel each want a runtime of their own, which must not be the caller's.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("otel-span-export".into())
        .spawn(move || {
            lower_thread_priority();
            let mut transport = match Transport::new(&endpoint, &protocol, timeout) {
                Ok(t) => {
                    let _ = ready_tx.send(Ok(()));
                    t
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            run(&queue, &mut transport);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ExportBuildError::Client("export thread ended".into())),
    }
}

fn run(queue: &SpanQueue, transport: &mut Transport) {
    let mut failing = false;
    let mut due = Instant::now() + queue.settings.schedule_delay;
    while let Some(mut batch) = queue.next_batch(due) {
        due = Instant::now() + queue.settings.schedule_delay;
        let start = queue.prefix.write_before(&mut batch.body, batch.headroom);
        let spans = batch.spans as u64;
        match transport.send(batch.body, start) {
            Ok(()) => {
                queue.counters.processed.add(spans, &component());
                queue.counters.exported.add(spans, &[]);
                failing = false;
            }
            Err(e) => {
                let mut attrs = component();
                attrs.push(KeyValue::new("error.type", "export_failed"));
                queue.counters.processed.add(spans, &attrs);
                queue
                    .counters
                    .exported
                    .add(spans, &[KeyValue::new("error.type", "export_failed")]);
                // Once per outage, not once per batch.
                if !failing {
                    tracing::warn!(error = %e, spans, "span export failed; dropping the batch");
                }
                failing = true;
            }
        }
    }
}

/// The encoded `Resource` and `InstrumentationScope` every request repeats.
struct RequestPrefix {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl RequestPrefix {
    fn new(resource: &Resource, scope: &str) -> Self {
        let mut r = Vec::new();
        for (k, v) in resource.iter() {
            key_value(&mut r, 1, k.as_str(), v);
        }
        let mut s = Vec::new();
        opt_bytes_field(&mut s, 1, scope.as_bytes());
        RequestPrefix {
            resource: r,
            scope: s,
        }
    }

    /// The most bytes [`Self::write_before`] writes: four tags and lengths of at most 11 bytes.
    fn max_len(&self) -> usize {
        self.resource.len() + self.scope.len() + 4 * 11
    }

    /// Turns `buf` — `headroom` bytes, then `Span` messages — into `ExportTraceServiceRequest
    /// { resource_spans: [{ resource, scope_spans: [{ scope, spans }] }] }` by writing the
    /// prefix right before the spans; returns where the request starts.
    fn write_before(&self, buf: &mut [u8], headroom: usize) -> usize {
        let field_len = |n: usize| 1 + varint_len(n as u64) + n;
        let scope_spans = field_len(self.scope.len()) + (buf.len() - headroom);
        let resource_spans = field_len(self.resource.len()) + field_len(scope_spans);
        let mut head = Vec::with_capacity(self.max_len());
        tag(&mut head, 1, LEN);
        varint(&mut head, resource_spans as u64);
        message_bytes(&mut head, 1, &self.resource);
        tag(&mut head, 2, LEN);
        varint(&mut head, scope_spans as u64);
        message_bytes(&mut head, 1, &self.scope);
        let start = headroom - head.len();
        buf[start..headroom].copy_from_slice(&head);
        start
    }
}

/// A sub-message whose body is already encoded (written even when empty, like prost).
fn message_bytes(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    message(out, field, |b| b.extend_from_slice(body));
}

enum Transport {
    Http {
        client: reqwest::blocking::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        json: bool,
    },
    Grpc {
        /// Boxed: a runtime is large, and this variant is not the default one.
        runtime: Box<tokio::runtime::Runtime>,
        client: TraceServiceClient<tonic::transport::Channel>,
        headers: reqwest::header::HeaderMap,
        timeout: Duration,
    },
}

impl Transport {
    fn new(endpoint: &str, protocol: &str, timeout: Duration) -> Result<Self, ExportBuildError> {
        let headers = export_headers();
        if protocol == "grpc" {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
                .map_err(|_| ExportBuildError::Endpoint(endpoint.to_string()))?
                .timeout(timeout);
            let channel = {
                let _rt = runtime.enter();
                channel.connect_lazy()
            };
            return Ok(Transport::Grpc {
                runtime: Box::new(runtime),
                client: TraceServiceClient::new(channel),
                headers,
                timeout,
            });
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ExportBuildError::Client(e.to_string()))?;
        let json = protocol == "http/json";
        let mut headers = headers;
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static(if json {
                "application/json"
            } else {
                "application/x-protobuf"
            }),
        );
        Ok(Transport::Http {
            client,
            url: format!("{endpoint}/v1/traces"),
            headers,
            json,
        })
    }

    /// Sends the encoded `ExportTraceServiceRequest` in `buf[start..]`. For OTLP/JSON and gRPC
    /// it is decoded into the generated types first (the tonic client and the OTLP/JSON mapping
    /// need them); protobuf over HTTP, the default, goes out as written, without a copy.
    fn send(&mut self, buf: Vec<u8>, start: usize) -> Result<(), String> {
        let request = &buf[start..];
        match self {
            Transport::Http {
                client,
                url,
                headers,
                json,
            } => {
                let body = if *json {
                    bytes::Bytes::from(
                        serde_json::to_vec(&decode(request)?).map_err(|e| e.to_string())?,
                    )
                } else {
                    bytes::Bytes::from(buf).slice(start..)
                };
                let resp = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .map_err(|e| format!("OTLP export: {e}"))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("OTLP export: HTTP {}", resp.status()))
                }
            }
            Transport::Grpc {
                runtime,
                client,
                headers,
                timeout,
            } => {
                let mut req = tonic::Request::new(decode(request)?);
                for (k, v) in headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.as_str().as_bytes()),
                        tonic::metadata::MetadataValue::try_from(v.as_bytes()),
                    ) {
                        req.metadata_mut().insert(k, v);
                    }
                }
                let call = client.export(req);
                runtime
                    .block_on(async { tokio::time::timeout(*timeout, call).await })
                    .map_err(|_| "OTLP export: timed out".to_string())?
                    .map(|_| ())
                    .map_err(|s| format!("OTLP export: {}: {}", s.code(), s.message()))
            }
        }
    }
}

fn decode(request: &[u8]) -> Result<ExportTraceServiceRequest, String> {
    prost::Message::decode(request).map_err(|e| format!("encoding spans: {e}"))
}

/// Extra headers from `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TRACES_HEADERS`.
fn export_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Ok(v) = std::env::var(var) {
            for (k, v) in parse_headers(&v) {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                    reqwest::header::HeaderValue::from_str(&v),
                ) {
                    headers.insert(k, v);
                }
            }
        }
    }
    headers
}

/// `k=v,k2=v2` with percent-encoded values (the OTel environment variable format).
fn parse_headers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
impl SpanQueue {
    /// Everything queued, as one encoded request (unit tests of the encoding).
    pub(crate) fn drain_request(&self) -> (Vec<u8>, usize) {
        let mut st = self.lock();
        if st.open_spans > 0 {
            st.seal();
        }
        let mut body = vec![0; st.headroom];
        let mut spans = 0;
        while let Some(b) = st.sealed.pop_front() {
            st.queued -= b.spans;
            body.extend_from_slice(&b.body[b.headroom..]);
            spans += b.spans;
        }
        let start = self.prefix.write_before(&mut body, st.headroom);
        (body[start..].to_vec(), spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::u64_sum_points;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    fn settings(queue: usize, batch: usize) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            schedule_delay: Duration::from_millis(50),
            export_timeout: Duration::from_secs(2),
        }
    }

    fn span_bytes(b: &mut Vec<u8>) {
        // An empty `Span` message as field 2.
        b.extend_from_slice(&[0x12, 0x00]);
    }

    /// (sum of `name` points with `error.type`, sum without).
    fn counted(metrics: &InMemoryMetricExporter, name: &str) -> (u64, u64) {
        let (mut failed, mut ok) = (0, 0);
        for (attributes, value) in u64_sum_points(metrics, name) {
            if attributes.iter().any(|kv| kv.key.as_str() == "error.type") {
                failed += value;
            } else {
                ok += value;
            }
        }
        (failed, ok)
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_batches_are_sealed_at_their_size() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let q = SpanQueue::new(
            settings(10, 4),
            ExportCounters::new(&mp.meter("t")),
            &Resource::builder_empty().build(),
            "t",
        );
        for _ in 0..13 {
            q.push(span_bytes);
        }
        {
            let st = q.lock();
            assert_eq!(st.queued, 10);
            assert_eq!(st.sealed.len(), 2, "two full batches of 4");
            assert_eq!(st.open_spans, 2);
        }
        // Sending a batch makes room again.
        let b = q
            .next_batch(Instant::now() + Duration::from_secs(60))
            .unwrap();
        assert_eq!(b.spans, 4);
        assert_eq!(b.body.len() - b.headroom, 8);
        q.push(span_bytes);
        assert_eq!(q.lock().queued, 7);
        mp.force_flush().unwrap();
        assert_eq!(
            counted(&metrics, "otel.sdk.processor.span.processed"),
            (3, 0)
        );
    }

    #[test]
    fn failed_exports_are_counted_and_flush_returns() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let q = Arc::new(SpanQueue::new(
            settings(100, 10),
            ExportCounters::new(&mp.meter("t")),
            &Resource::builder_empty().build(),
            "t",
        ));
        // Nothing listens on port 9 (discard) of loopback here: every export fails.
        let t = start_exporter(q.clone(), "http://127.0.0.1:9", "http/protobuf").unwrap();
        for _ in 0..3 {
            q.push(span_bytes);
        }
        q.flush(Duration::from_secs(10));
        q.close();
        t.join().unwrap();
        mp.force_flush().unwrap();
        assert_eq!(counted(&metrics, "otel.sdk.exporter.span.exported"), (3, 0));
    }

    #[test]
    fn header_variables_are_parsed() {
        assert_eq!(
            parse_headers("api-key=a%20b, x=1,broken"),
            vec![
                ("api-key".to_string(), "a b".to_string()),
                ("x".to_string(), "1".to_string())
            ]
        );
    }
}
