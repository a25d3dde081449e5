//! redline's benchmarks (issue 2, "Performance"), recorded in docs/PERFORMANCE.md.
//!
//! `cargo bench --bench ingest -- <mode> [options]`, modes:
//! - `ingest`  — side by side in one run, interleaved and as medians over rounds: (a) the
//!   decode-only bound (prost decode of the same payloads, one core), (b) redline and (c)
//!   rotel-agent (blackhole exporter) receiving OTLP/gRPC from an open-loop load generator: the
//!   highest arrival rate with < 1 % of batches lost (rejected, failed, or not sendable because
//!   every in-flight slot was busy).
//! - `cpu`     — CPU (% of one core, from /proc/PID/stat over a 20 s window) and RSS of redline
//!   and rotel-agent at a steady 10k spans/s, interleaved.
//! - `memory`  — redline RSS idle, peak RSS with 1,000 active endpoints and 10,000 metric
//!   series, and RSS during a flood of 1,000,000 distinct routes.
//! - `query`   — `GET /api/v1/endpoints?service=S&since=1h` with 1,000 endpoints and 1 h of data.
//! - `profile` — in process, no network: decode + convert + aggregate of the same payloads
//!   (for `valgrind --tool=callgrind`).
//! - `all`     — ingest, cpu, memory and query in turn.
//!
//! `REDLINE_BIN` runs another build as "redline"; in `ingest`, `REDLINE_BASELINE_BIN` adds an
//! older build as a third contender, interleaved with the others (before/after in one run).
//!
//! Everything listens on 127.0.0.1 only. The benchmark pins itself (the load generator) to
//! core 0 and the system under test to core 1 with `taskset`. Child processes are killed when
//! the benchmark ends, on error and on panic (and by the kernel if it dies: PR_SET_PDEATHSIG).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prost::Message;
use tokio::sync::Semaphore;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const SPANS_PER_BATCH: usize = 512;
const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Marks the first 4 bytes of every trace id in a pre-encoded payload, so the generator can
/// find them and make every sent trace unique without re-encoding.
const TRACE_ID_MAGIC: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/products"),
    ("GET", "/api/v1/products/{id}"),
    ("GET", "/api/v1/products/{id}/reviews"),
    ("POST", "/api/v1/products/{id}/reviews"),
    ("GET", "/api/v1/cart"),
    ("POST", "/api/v1/cart/items"),
    ("DELETE", "/api/v1/cart/items/{id}"),
    ("POST", "/api/v1/checkout"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{id}"),
    ("GET", "/api/v1/users/{id}"),
    ("PUT", "/api/v1/users/{id}"),
    ("POST", "/api/v1/login"),
    ("GET", "/api/v1/search"),
    ("GET", "/healthz"),
    ("GET", "/api/v1/recommendations"),
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
];

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// splitmix64: cheap deterministic pseudo-randomness.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Lognormal latency in ns around `median_ms`.
    fn latency_ns(&mut self, median_ms: f64) -> u64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (median_ms * (0.6 * normal).exp() * 1e6) as u64
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn int(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("service.version", s("1.4.2")),
            kv("host.name", s("bench-host-1")),
            kv("telemetry.sdk.name", s("opentelemetry")),
            kv("telemetry.sdk.language", s("rust")),
        ],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// One realistic HTTP SERVER span: ~10 attributes, a few errors.
fn http_span(rng: &mut Rng, index: u64, method: &str, route: &str, end_ns: u64) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&TRACE_ID_MAGIC);
    trace_id[4..8].copy_from_slice(&(index as u32).to_be_bytes());
    trace_id[8..].copy_from_slice(&rng.next().to_be_bytes());
    let span_id = (rng.next() | 1).to_be_bytes().to_vec();
    let error = rng.below(100) < 2; // 2 % server errors
    let status_code: i64 = if error {
        500 + rng.below(4) as i64
    } else if rng.below(100) < 5 {
        404
    } else {
        200
    };
    let duration_ns = rng.latency_ns(if error { 80.0 } else { 25.0 }).max(1000);
    let path = route.replace("{id}", &(rng.next() % 100_000).to_string());
    Span {
        trace_id: trace_id.to_vec(),
        span_id,
        parent_span_id: Vec::new(),
        name: format!("{method} {route}"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: end_ns - duration_ns,
        end_time_unix_nano: end_ns,
        attributes: vec![
            kv("http.request.method", s(method)),
            kv("http.route", s(route)),
            kv("http.response.status_code", int(status_code)),
            kv("url.path", s(&path)),
            kv("url.scheme", s("http")),
            kv("server.address", s("shop.internal")),
            kv("server.port", int(8080)),
            kv(
                "user_agent.original",
                s(USER_AGENTS[rng.below(USER_AGENTS.len())]),
            ),
            kv("network.protocol.version", s("1.1")),
            kv(
                "client.address",
                s(&format!("10.0.{}.{}", rng.below(256), rng.below(256))),
            ),
        ],
        status: error.then(|| Status {
            code: StatusCode::Error as i32,
            message: "internal error".into(),
        }),
        ..Default::default()
    }
}

fn trace_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry-instrumentation-http".into(),
                    version: "0.50.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A pre-encoded export request and where its trace ids' random halves are.
#[derive(Clone)]
struct Payload {
    bytes: Bytes,
    trace_id_offsets: Vec<usize>,
}

fn encode_payload(request: &ExportTraceServiceRequest) -> Payload {
    let bytes = request.encode_to_vec();
    let mut offsets = Vec::new();
    let mut i = 0;
    while i + 16 <= bytes.len() {
        if bytes[i..i + 4] == TRACE_ID_MAGIC && i > 0 && bytes[i - 1] == 16 {
            offsets.push(i + 8);
            i += 16;
        } else {
            i += 1;
        }
    }
    Payload {
        bytes: Bytes::from(bytes),
        trace_id_offsets: offsets,
    }
}

/// `count` batches of 512 spans over the fixed route set, ending around now.
fn trace_payloads(count: usize, seed: u64) -> Vec<Payload> {
    let mut rng = Rng(seed);
    let now = now_ns();
    (0..count)
        .map(|b| {
            let spans = (0..SPANS_PER_BATCH)
                .map(|i| {
                    let (method, route) = ROUTES[rng.below(ROUTES.len())];
                    let index = (b * SPANS_PER_BATCH + i) as u64;
                    let end = now - rng.below(1_000_000_000) as u64;
                    http_span(&mut rng, index, method, route, end)
                })
                .collect();
            let payload = encode_payload(&trace_request("shop", spans));
            assert_eq!(payload.trace_id_offsets.len(), SPANS_PER_BATCH);
            payload
        })
        .collect()
}

/// The bytes to send for the `n`-th request: the payload with fresh trace ids, so every sent
/// trace is new to the receiver (as in real traffic) and the uniform sampler sees new ids.
fn fresh_ids(payload: &Payload, n: u64) -> Bytes {
    let mut bytes = BytesMut::from(&payload.bytes[..]);
    for (i, offset) in payload.trace_id_offsets.iter().enumerate() {
        let random = mix(n.wrapping_mul(1 << 20) ^ i as u64);
        bytes[*offset..*offset + 8].copy_from_slice(&random.to_be_bytes());
    }
    bytes.freeze()
}

// ---------------------------------------------------------------------------------------------
// A tonic codec that sends pre-encoded bytes (no per-request protobuf encoding in the
// generator) and decodes the ExportTraceServiceResponse.
// ---------------------------------------------------------------------------------------------

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

async fn export_raw(
    channel: Channel,
    bytes: Bytes,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
    grpc.unary(tonic::Request::new(bytes), path, PreEncoded)
        .await
        .map(|r| r.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A system under test, killed (SIGTERM, then SIGKILL) when dropped.
struct Sut {
    name: &'static str,
    child: Child,
    grpc: SocketAddr,
    web: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Sut {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Online CPUs of the machine (not of this process: it pins itself to one).
fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// A command pinned to core 1 (when there is one), dying with this process.
fn pinned_command(program: &Path) -> Command {
    let mut command = if cores() >= 2 && which("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("1").arg(program);
        c
    } else {
        Command::new(program)
    };
    // SAFETY: prctl is async-signal-safe; it only sets the parent-death signal of the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn redline_binary() -> PathBuf {
    std::env::var_os("REDLINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_redline")))
}

fn start_redline(extra: &[&str]) -> Result<Sut> {
    start_redline_binary(&redline_binary(), "redline", extra)
}

/// An older build to compare with, interleaved in the same run (`REDLINE_BASELINE_BIN`).
fn baseline_binary() -> Option<PathBuf> {
    std::env::var_os("REDLINE_BASELINE_BIN").map(PathBuf::from)
}

fn start_redline_binary(binary: &Path, name: &'static str, extra: &[&str]) -> Result<Sut> {
    let dir = tempfile::tempdir()?;
    let mut command = pinned_command(binary);
    command
        .args([
            "serve",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--web-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("stderr.log"),
        )?));
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    // Keeps reading to the end so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let mut sut = Sut {
        name,
        child,
        grpc: "127.0.0.1:0".parse()?,
        web: None,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut grpc = None;
    while sut.web.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| "redline did not print its addresses within 30 s")?;
        let addr_after = |marker: &str| -> Option<SocketAddr> {
            let rest = line.split(marker).nth(1)?.trim();
            let rest = rest.trim_start_matches("http://").trim_end_matches('/');
            rest.parse().ok()
        };
        if line.contains("OTLP/gRPC listening on") {
            grpc = addr_after("OTLP/gRPC listening on");
        } else if line.contains("dashboard and API on") {
            sut.web = addr_after("dashboard and API on");
        }
    }
    sut.grpc = grpc.ok_or("redline did not print its OTLP/gRPC address")?;
    Ok(sut)
}

fn rotel_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROTEL_AGENT") {
        return Some(PathBuf::from(path));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.exists().then_some(path)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_rotel(binary: &Path) -> Result<Sut> {
    let dir = tempfile::tempdir()?;
    let (grpc_port, http_port) = (free_port()?, free_port()?);
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse()?;
    let mut command = pinned_command(binary);
    command
        .args(["start", "--otlp-grpc-endpoint"])
        .arg(grpc.to_string())
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{http_port}"))
        .args(["--exporter", "blackhole", "--pid-file"])
        .arg(dir.path().join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.path().join("rotel.log"))
        .stdout(Stdio::from(std::fs::File::create(
            dir.path().join("stdout.log"),
        )?))
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("stderr.log"),
        )?));
    let child = command.spawn()?;
    let mut sut = Sut {
        name: "rotel",
        child,
        grpc,
        web: None,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(grpc).is_err() {
        if Instant::now() > deadline || matches!(sut.child.try_wait(), Ok(Some(_))) {
            sut.stop();
            return Err("rotel-agent did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(sut)
}

// ---------------------------------------------------------------------------------------------
// /proc and /metrics
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process (all threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0], utime is field 14 overall → [11], stime [12].
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

async fn prometheus(web: SocketAddr) -> Result<HashMap<String, f64>> {
    let text = reqwest::get(format!("http://{web}/metrics"))
        .await?
        .text()
        .await?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

fn metric(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(0.0)
}

/// Waits until redline's store writer has written no RED rows for `quiet` (a fill's backlog is
/// stored), at most `limit`; returns how long that took.
async fn wait_for_idle_writer(web: SocketAddr, quiet: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    let rows = || async {
        prometheus(web)
            .await
            .map(|m| metric(&m, "redline_store_rows_written_total{kind=\"red\"}"))
            .unwrap_or(0.0)
    };
    let mut last = rows().await;
    let mut since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rows().await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    started.elapsed()
}

/// Median, min and max of `n` sequential GETs of `url`, and redline's CPU per request.
struct QueryTimes {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
    cpu_ms: f64,
}

impl std::fmt::Display for QueryTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.1} ms, min {:.1} ms, max {:.1} ms over {} requests; server cpu per request {:.1} ms",
            self.median, self.min, self.max, self.n, self.cpu_ms
        )
    }
}

async fn time_queries(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    pid: u32,
) -> Result<QueryTimes> {
    let mut times = Vec::new();
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    for _ in 0..n {
        let t = Instant::now();
        let response = client.get(url).send().await?;
        let status = response.status();
        let _ = response.bytes().await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            return Err(format!("query answered {status}").into());
        }
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(QueryTimes {
        median: median(&mut times),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        n: sorted.len(),
        cpu_ms: cpu / sorted.len() as f64 * 1e3,
    })
}

/// Waits until redline's ingest queue is empty (or `limit` passes).
async fn wait_for_empty_queue(web: SocketAddr, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let depth = prometheus(web)
            .await
            .map(|m| metric(&m, "redline_ingest_queue_items"))
            .unwrap_or(0.0);
        if depth == 0.0 || Instant::now() > deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The open-loop load generator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct LoadResult {
    /// Batches due by the arrival schedule.
    scheduled: u64,
    ok: u64,
    /// gRPC UNAVAILABLE answers (overload).
    unavailable: u64,
    /// Other errors, timeouts included.
    failed: u64,
    /// Batches not sent: every in-flight slot was still busy when they were due.
    overrun: u64,
    /// Spans the receiver reported as rejected in `partial_success`.
    partial_rejected: u64,
    elapsed_s: f64,
    /// CPU the generator itself used, as % of one core.
    generator_cpu_pct: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

impl LoadResult {
    fn lost(&self) -> u64 {
        self.unavailable + self.failed + self.overrun
    }
    fn loss_fraction(&self) -> f64 {
        if self.scheduled == 0 {
            return 1.0;
        }
        self.lost() as f64 / self.scheduled as f64
    }
    fn accepted_spans_per_s(&self) -> f64 {
        self.ok as f64 * SPANS_PER_BATCH as f64 / self.elapsed_s.max(1e-9)
    }
}

struct LoadConfig {
    spans_per_s: f64,
    duration: Duration,
    max_in_flight: usize,
}

async fn connect(addr: SocketAddr, connections: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Sends batches at a constant arrival rate (open loop) and counts what happened to them.
async fn run_load(
    channels: &[Channel],
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    config: &LoadConfig,
) -> LoadResult {
    let batches_per_s = config.spans_per_s / SPANS_PER_BATCH as f64;
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
        let bytes = fresh_ids(payload, n);
        let channel = channels[(n % channels.len() as u64) as usize].clone();
        let counters = counters.clone();
        let latencies = latencies.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result =
                tokio::time::timeout(Duration::from_secs(10), export_raw(channel, bytes)).await;
            let index = match result {
                Ok(Ok(response)) => {
                    if let Some(partial) = response.partial_success {
                        counters[3].fetch_add(partial.rejected_spans as u64, Ordering::Relaxed);
                    }
                    0
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => 1,
                _ => 2,
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
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    mode: String,
    rounds: usize,
    step_secs: f64,
    start_rate: f64,
    max_in_flight: usize,
    connections: usize,
    cpu_window_secs: f64,
    query_spans_per_window: usize,
    flood_routes: usize,
    rate: f64,
    secs: f64,
    queries: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        mode: "all".into(),
        rounds: 3,
        step_secs: 4.0,
        start_rate: 20_000.0,
        max_in_flight: 8,
        connections: 2,
        cpu_window_secs: 20.0,
        query_spans_per_window: 4,
        flood_routes: 1_000_000,
        rate: 50_000.0,
        secs: 20.0,
        queries: 25,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // cargo bench passes this through
            "--rounds" => o.rounds = value()?.parse()?,
            "--step-secs" => o.step_secs = value()?.parse()?,
            "--start-rate" => o.start_rate = value()?.parse()?,
            "--in-flight" => o.max_in_flight = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--cpu-window-secs" => o.cpu_window_secs = value()?.parse()?,
            "--query-spans-per-window" => o.query_spans_per_window = value()?.parse()?,
            "--flood-routes" => o.flood_routes = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            "--secs" => o.secs = value()?.parse()?,
            "--queries" => o.queries = value()?.parse()?,
            "ingest" | "cpu" | "memory" | "query" | "profile" | "load" | "all" => {
                o.mode = arg.clone()
            }
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}").into());
            }
            _ => {}
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let options = options()?;
    // The load generator lives on core 0; the system under test gets core 1. Pin before any
    // thread exists so every thread of this process inherits it.
    if cores() >= 2 && which("taskset") {
        let _ = Command::new("taskset")
            .args(["-cp", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
    }
    print_machine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Children are spawned from this (the main) thread only: PR_SET_PDEATHSIG follows the
    // thread that forked them.
    runtime.block_on(async {
        match options.mode.as_str() {
            "ingest" => ingest(&options).await,
            "cpu" => cpu(&options).await,
            "memory" => memory(&options).await,
            "query" => query(&options).await,
            "profile" => {
                profile();
                Ok(())
            }
            "load" => load(&options).await,
            _ => {
                ingest(&options).await?;
                cpu(&options).await?;
                memory(&options).await?;
                query(&options).await
            }
        }
    })
}

fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    println!("machine: {} cores, {model}", cores());
    println!(
        "pinning: generator on core 0, system under test on core 1 ({})",
        if cores() >= 2 {
            "taskset"
        } else {
            "not pinned: one core"
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Mode: ingest
// ---------------------------------------------------------------------------------------------

/// Spans per second prost decodes (and drops) on this core, for `duration`.
fn decode_bound(payloads: &[Payload], duration: Duration) -> f64 {
    let started = Instant::now();
    let mut spans = 0usize;
    let mut i = 0;
    while started.elapsed() < duration {
        for _ in 0..8 {
            let payload = &payloads[i % payloads.len()];
            let request = ExportTraceServiceRequest::decode(&payload.bytes[..]).expect("decodes");
            spans += request.resource_spans[0].scope_spans[0].spans.len();
            drop(std::hint::black_box(request));
            i += 1;
        }
    }
    spans as f64 / started.elapsed().as_secs_f64()
}

struct Contender {
    sut: Sut,
    channels: Vec<Channel>,
    /// Highest passing rate this round, and whether it has failed a step yet.
    best: f64,
    done: bool,
}

impl Contender {
    async fn connect(sut: Sut, connections: usize) -> Result<Self> {
        let channels = connect(sut.grpc, connections).await?;
        Ok(Contender {
            sut,
            channels,
            best: 0.0,
            done: false,
        })
    }
}

async fn step(
    contender: &mut Contender,
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    rate: f64,
    options: &Options,
) -> Result<bool> {
    let config = LoadConfig {
        spans_per_s: rate,
        duration: Duration::from_secs_f64(options.step_secs),
        max_in_flight: options.max_in_flight,
    };
    let cpu_before = cpu_seconds(contender.sut.pid()).unwrap_or(0.0);
    let result = run_load(&contender.channels, payloads, sequence, &config).await;
    let cpu = (cpu_seconds(contender.sut.pid()).unwrap_or(0.0) - cpu_before) / result.elapsed_s;
    // redline queues what it accepted: the step only counts as sustained if the queue did
    // not pile up (it must be back under a quarter of its capacity right after the step).
    let mut backlog = String::new();
    let mut sustained = true;
    if let Some(web) = contender.sut.web {
        let m = prometheus(web).await?;
        let depth = metric(&m, "redline_ingest_queue_items");
        let capacity = metric(&m, "redline_ingest_queue_capacity").max(1.0);
        sustained = depth <= capacity / 4.0;
        backlog = format!(" queue {:.0}/{:.0}", depth, capacity);
        wait_for_empty_queue(web, Duration::from_secs(15)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pass = result.loss_fraction() < 0.01 && sustained;
    println!(
        "  {:8} {:>9.0} spans/s offered: {:>9.0} accepted/s, lost {:5.2} % (unavailable {}, failed {}, overrun {}), partial-rejected {}, latency p50 {:.1} ms p99 {:.1} ms, SUT cpu {:.0} %, generator cpu {:.0} %{} → {}",
        contender.sut.name,
        rate,
        result.accepted_spans_per_s(),
        result.loss_fraction() * 100.0,
        result.unavailable,
        result.failed,
        result.overrun,
        result.partial_rejected,
        result.latency_p50_ms,
        result.latency_p99_ms,
        cpu * 100.0,
        result.generator_cpu_pct,
        backlog,
        if pass { "pass" } else { "FAIL" }
    );
    Ok(pass)
}

async fn ingest(options: &Options) -> Result<()> {
    println!("\n== ingest: 512-span batches of HTTP server spans over OTLP/gRPC ==");
    let payloads = Arc::new(trace_payloads(64, 42));
    let mean_bytes =
        payloads.iter().map(|p| p.bytes.len()).sum::<usize>() as f64 / payloads.len() as f64;
    println!(
        "payloads: {} batches × {SPANS_PER_BATCH} spans, {:.0} bytes per batch ({:.0} B/span)",
        payloads.len(),
        mean_bytes,
        mean_bytes / SPANS_PER_BATCH as f64
    );
    println!(
        "generator: open loop, {} connections, at most {} requests in flight, {} s per step; a step passes with < 1 % of batches lost",
        options.connections, options.max_in_flight, options.step_secs
    );
    let rotel = rotel_binary();
    if rotel.is_none() {
        println!("rotel-agent not found (pip install rotel, or set ROTEL_AGENT): peer skipped");
    }
    let sequence = Arc::new(AtomicU64::new(0));
    let mut decode = Vec::new();
    let mut best: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut start_rate = options.start_rate;
    for round in 1..=options.rounds {
        println!("-- round {round}/{}", options.rounds);
        let bound = decode_bound(&payloads, Duration::from_secs(2));
        println!("  decode-only bound: {bound:.0} spans/s (prost decode + drop, one core)");
        decode.push(bound);
        let mut contenders = Vec::new();
        contenders.push(Contender::connect(start_redline(&[])?, options.connections).await?);
        if let Some(binary) = baseline_binary() {
            let sut = start_redline_binary(&binary, "baseline", &[])?;
            contenders.push(Contender::connect(sut, options.connections).await?);
        }
        if let Some(binary) = &rotel {
            contenders.push(Contender::connect(start_rotel(binary)?, options.connections).await?);
        }
        // Check each with the generated client first (one typed export), then warm up.
        for c in &mut contenders {
            let mut client = TraceServiceClient::new(c.channels[0].clone());
            let request = ExportTraceServiceRequest::decode(&payloads[0].bytes[..])?;
            let response = client.export(request).await?.into_inner();
            if response
                .partial_success
                .is_some_and(|p| p.rejected_spans > 0)
            {
                return Err(format!("{} rejected spans of a valid batch", c.sut.name).into());
            }
            let warm = LoadConfig {
                spans_per_s: 10_000.0,
                duration: Duration::from_secs(1),
                max_in_flight: options.max_in_flight,
            };
            run_load(&c.channels, &payloads, &sequence, &warm).await;
        }
        // A geometric ladder of arrival rates; at each rate the contenders take turns
        // (A B A B …) until each has failed a step.
        let mut rate = start_rate;
        while contenders.iter().any(|c| !c.done) && rate < 5_000_000.0 {
            for c in contenders.iter_mut().filter(|c| !c.done) {
                if step(c, &payloads, &sequence, rate, options).await? {
                    c.best = rate;
                } else {
                    c.done = true;
                }
            }
            rate *= 1.2;
        }
        for c in &mut contenders {
            println!(
                "  {}: highest rate with < 1 % lost: {:.0} spans/s",
                c.sut.name, c.best
            );
            best.entry(c.sut.name).or_default().push(c.best);
            c.sut.stop();
        }
        // Later rounds start a little below the slower contender's result, to save time.
        let slowest = contenders
            .iter()
            .map(|c| c.best)
            .fold(f64::INFINITY, f64::min);
        if slowest.is_finite() && slowest > 0.0 {
            start_rate = (slowest * 0.6).max(5_000.0);
        }
    }
    let decode_median = median(&mut decode);
    let redline = median(best.get_mut("redline").expect("redline ran"));
    println!(
        "\n== ingest summary (medians of {} rounds) ==",
        options.rounds
    );
    println!("decode-only bound:   {decode_median:>10.0} spans/s");
    println!(
        "redline:             {redline:>10.0} spans/s = {:.1} % of the decode-only bound (target ≥ 40 %)",
        redline / decode_median * 100.0
    );
    if let Some(rotel) = best.get_mut("rotel") {
        let rotel = median(rotel);
        println!(
            "rotel (blackhole):   {rotel:>10.0} spans/s = {:.1} % of the decode-only bound; redline/rotel = {:.2} (target ≥ 1)",
            rotel / decode_median * 100.0,
            redline / rotel
        );
    }
    if let Some(baseline) = best.get_mut("baseline") {
        let baseline = median(baseline);
        println!(
            "baseline build:      {baseline:>10.0} spans/s = {:.1} % of the decode-only bound; redline/baseline = {:.2}",
            baseline / decode_median * 100.0,
            redline / baseline
        );
    }
    println!("(rates are on a ×1.2 ladder: a result means the next rung up failed)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: cpu
// ---------------------------------------------------------------------------------------------

async fn cpu(options: &Options) -> Result<()> {
    println!(
        "\n== cpu: steady 10k spans/s, {} s window ==",
        options.cpu_window_secs
    );
    let payloads = Arc::new(trace_payloads(32, 7));
    let sequence = Arc::new(AtomicU64::new(0));
    let rotel = rotel_binary();
    let mut results: HashMap<&'static str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let rounds = options.rounds.clamp(1, 2);
    for round in 1..=rounds {
        println!("-- round {round}/{rounds}");
        let mut suts = vec![start_redline(&[])?];
        if let Some(binary) = &rotel {
            suts.push(start_rotel(binary)?);
        }
        for sut in &mut suts {
            let channels = connect(sut.grpc, 1).await?;
            let config = LoadConfig {
                spans_per_s: 10_000.0,
                duration: Duration::from_secs_f64(options.cpu_window_secs + 5.0),
                max_in_flight: options.max_in_flight,
            };
            let pid = sut.pid();
            // Measure from 3 s in (after warm-up) over the window.
            let window = options.cpu_window_secs;
            let sampler = async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let before = cpu_seconds(pid).unwrap_or(0.0);
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_secs_f64(window)).await;
                let used = cpu_seconds(pid).unwrap_or(0.0) - before;
                let (rss, _) = rss_mib(pid).unwrap_or((0.0, 0.0));
                (used / t0.elapsed().as_secs_f64() * 100.0, rss)
            };
            let (load, (cpu_pct, rss)) =
                tokio::join!(run_load(&channels, &payloads, &sequence, &config), sampler);
            let (_, hwm) = rss_mib(pid).unwrap_or((0.0, 0.0));
            println!(
                "  {:8} cpu {:5.2} % of one core, RSS {:.1} MiB (peak {:.1} MiB); {} batches ok, lost {:.2} %",
                sut.name,
                cpu_pct,
                rss,
                hwm,
                load.ok,
                load.loss_fraction() * 100.0
            );
            let entry = results.entry(sut.name).or_default();
            entry.0.push(cpu_pct);
            entry.1.push(rss);
        }
        for sut in &mut suts {
            sut.stop();
        }
    }
    println!("\n== cpu summary (medians) ==");
    for name in ["redline", "rotel"] {
        if let Some((cpu, rss)) = results.get_mut(name) {
            println!(
                "{name:8} at 10k spans/s: cpu {:.2} % of one core{}, RSS {:.1} MiB",
                median(cpu),
                if name == "redline" {
                    " (target ≤ 5 %)"
                } else {
                    ""
                },
                median(rss)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: memory
// ---------------------------------------------------------------------------------------------

/// Batches of spans over `endpoints` distinct routes (one service), generated on the fly.
fn endpoint_batch(rng: &mut Rng, first_route: usize, routes: usize, sequence: u64) -> Bytes {
    let now = now_ns();
    let spans = (0..SPANS_PER_BATCH)
        .map(|i| {
            let route = format!(
                "/api/r{}/{{id}}",
                first_route + (i + sequence as usize * SPANS_PER_BATCH) % routes
            );
            http_span(
                rng,
                sequence * 1000 + i as u64,
                "GET",
                &route,
                now - 1_000_000,
            )
        })
        .collect();
    Bytes::from(trace_request("shop", spans).encode_to_vec())
}

/// 10,000 metric series: 10 metrics (gauges, cumulative counters, delta histograms) × 1,000
/// attribute sets, as one export.
fn metrics_request(sequence: u64, start_ns: u64) -> ExportMetricsServiceRequest {
    let now = now_ns();
    let attributes = |i: usize| {
        vec![
            kv(
                "region",
                s(["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"][i % 4]),
            ),
            kv("instance", s(&format!("i-{:05}", i))),
            kv("pool", s(["a", "b", "c"][i % 3])),
        ]
    };
    let mut metrics = Vec::new();
    for m in 0..10 {
        let name = format!("bench.metric.{m}");
        let data = match m % 3 {
            0 => metric::Data::Gauge(Gauge {
                data_points: (0..1000)
                    .map(|i| NumberDataPoint {
                        attributes: attributes(i),
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(
                            (i as f64 + sequence as f64).sin(),
                        )),
                        ..Default::default()
                    })
                    .collect(),
            }),
            1 => metric::Data::Sum(Sum {
                data_points: (0..1000)
                    .map(|i| NumberDataPoint {
                        attributes: attributes(i),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsInt(
                            (sequence * 10 + i as u64) as i64,
                        )),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            _ => metric::Data::Histogram(Histogram {
                data_points: (0..1000)
                    .map(|i| HistogramDataPoint {
                        attributes: attributes(i),
                        start_time_unix_nano: now - 1_000_000_000,
                        time_unix_nano: now,
                        count: 20,
                        sum: Some(3.5),
                        bucket_counts: vec![2, 5, 8, 3, 1, 1, 0, 0, 0, 0, 0],
                        explicit_bounds: vec![
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        ],
                        min: Some(0.001),
                        max: Some(0.4),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
            }),
        };
        metrics.push(Metric {
            name,
            unit: if m % 3 == 2 { "s".into() } else { "1".into() },
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("shop")),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends raw batches closed-loop (`parallel` at a time), retrying UNAVAILABLE after a pause.
async fn send_all(
    channels: &[Channel],
    batches: impl Iterator<Item = Bytes>,
    parallel: usize,
) -> (u64, u64) {
    let slots = Arc::new(Semaphore::new(parallel));
    let retried = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, bytes) in batches.enumerate() {
        let slot = slots.clone().acquire_owned().await.expect("open");
        let channel = channels[n % channels.len()].clone();
        let (retried, failed) = (retried.clone(), failed.clone());
        tasks.spawn(async move {
            for _ in 0..50 {
                match export_raw(channel.clone(), bytes.clone()).await {
                    Ok(_) => return drop(slot),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => break,
                }
            }
            failed.fetch_add(1, Ordering::Relaxed);
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (
        retried.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

async fn memory(options: &Options) -> Result<()> {
    println!("\n== memory ==");
    let redline = start_redline(&[])?;
    let pid = redline.pid();
    let web = redline.web.expect("redline has a web address");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = rss_mib(pid).ok_or("no /proc status")?;
    println!("idle RSS: {idle:.1} MiB (target ≤ 30 MB)");

    // 1,000 active endpoints and 10,000 metric series, for 20 s.
    let channels = connect(redline.grpc, 2).await?;
    let mut metrics_client = MetricsServiceClient::connect(format!("http://{}", redline.grpc))
        .await?
        .max_encoding_message_size(64 << 20);
    let start_ns = now_ns() - 1_000_000_000;
    let mut rng = Rng(99);
    let started = Instant::now();
    let mut sequence = 0u64;
    let mut peak_during = 0.0f64;
    while started.elapsed() < Duration::from_secs(20) {
        // Every second: 10 batches over the 1,000 routes (5,120 spans) and all 10,000 series.
        let batches: Vec<Bytes> = (0..10)
            .map(|_| {
                sequence += 1;
                endpoint_batch(&mut rng, 0, 1000, sequence)
            })
            .collect();
        send_all(&channels, batches.into_iter(), 4).await;
        let response = metrics_client
            .export(metrics_request(sequence, start_ns))
            .await?
            .into_inner();
        if let Some(partial) = response.partial_success
            && partial.rejected_data_points > 0
        {
            println!("  metrics partially rejected: {partial:?}");
        }
        if let Some((rss, _)) = rss_mib(pid) {
            peak_during = peak_during.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = prometheus(web).await?;
    let (rss, hwm) = rss_mib(pid).ok_or("no /proc status")?;
    println!(
        "active: {} endpoints, {} metric series tracked; RSS now {rss:.1} MiB, peak (VmHWM) {hwm:.1} MiB (target ≤ 100 MB)",
        metric(&m, "redline_series{kind=\"endpoints\"}"),
        metric(&m, "redline_series{kind=\"metric_series\"}"),
    );
    println!(
        "  store writer: {:.0} flushes, mean {:.0} ms per flush, max {:.0} ms",
        metric(&m, "redline_store_write_seconds_count"),
        metric(&m, "redline_store_write_seconds_sum")
            / metric(&m, "redline_store_write_seconds_count").max(1.0)
            * 1e3,
        metric(&m, "redline_store_write_seconds{quantile=\"1\"}") * 1e3,
    );

    // A flood of distinct routes.
    let flood = options.flood_routes;
    println!("flood: {flood} spans, each with its own http.route");
    let overflow_before = metric(&m, "redline_overflow_total{kind=\"endpoints\"}");
    let batches = flood.div_ceil(SPANS_PER_BATCH);
    let mut samples = Vec::new();
    let flood_started = Instant::now();
    let quarter = batches.div_ceil(4);
    let mut flood_rng = Rng(1234);
    for q in 0..4 {
        let from = q * quarter;
        let to = ((q + 1) * quarter).min(batches);
        let iter = (from..to).map(|b| {
            endpoint_batch(
                &mut flood_rng,
                100_000 + b * SPANS_PER_BATCH,
                SPANS_PER_BATCH,
                0,
            )
        });
        let (retried, failed) = send_all(&channels, iter, 4).await;
        wait_for_empty_queue(web, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = prometheus(web).await?;
        let (rss, hwm) = rss_mib(pid).ok_or("no /proc status")?;
        let overflow = metric(&m, "redline_overflow_total{kind=\"endpoints\"}") - overflow_before;
        println!(
            "  after {:>7} routes ({:5.1} s): RSS {rss:.1} MiB, peak {hwm:.1} MiB, endpoints tracked {}, overflow_total{{kind=\"endpoints\"}} +{overflow:.0} (retried {retried}, failed {failed})",
            to * SPANS_PER_BATCH,
            flood_started.elapsed().as_secs_f64(),
            metric(&m, "redline_series{kind=\"endpoints\"}"),
        );
        samples.push(rss);
    }
    println!(
        "flood RSS: first quarter {:.1} MiB, last {:.1} MiB ({:+.1} MiB over the last three quarters)",
        samples[0],
        samples[3],
        samples[3] - samples[0]
    );
    drop(metrics_client);
    drop(channels);
    drop(redline);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: query
// ---------------------------------------------------------------------------------------------

async fn query(options: &Options) -> Result<()> {
    println!("\n== query: /api/v1/endpoints, 1,000 endpoints, 1 h of data ==");
    let redline = start_redline(&[])?;
    let web = redline.web.expect("web address");
    let channels = connect(redline.grpc, 2).await?;
    // History: every endpoint gets `per_window` requests in every 10 s window of the past
    // hour, sent oldest first.
    let per_window = options.query_spans_per_window;
    let now = now_ns();
    let windows = 360u64;
    let endpoints = 1000usize;
    let total_spans = windows as usize * endpoints * per_window;
    println!(
        "filling: {total_spans} spans ({per_window} per endpoint per 10 s window, {windows} windows)"
    );
    let fill_started = Instant::now();
    let mut rng = Rng(5);
    let mut buffer: Vec<Span> = Vec::with_capacity(SPANS_PER_BATCH);
    let mut batches: Vec<Bytes> = Vec::new();
    let mut index = 0u64;
    let mut sent = (0u64, 0u64);
    for w in 0..windows {
        let window_end = now - (windows - w - 1) * 10_000_000_000;
        for _ in 0..per_window {
            for e in 0..endpoints {
                index += 1;
                let route = format!("/api/q{e}/{{id}}");
                let end = window_end - rng.below(9_000_000_000) as u64 - 500_000_000;
                buffer.push(http_span(&mut rng, index, "GET", &route, end));
                if buffer.len() == SPANS_PER_BATCH {
                    let spans = std::mem::take(&mut buffer);
                    batches.push(Bytes::from(trace_request("shop", spans).encode_to_vec()));
                }
            }
        }
        if batches.len() >= 64 || w == windows - 1 {
            if !buffer.is_empty() {
                let spans = std::mem::take(&mut buffer);
                batches.push(Bytes::from(trace_request("shop", spans).encode_to_vec()));
            }
            let (retried, failed) =
                send_all(&channels, std::mem::take(&mut batches).into_iter(), 4).await;
            sent.0 += retried;
            sent.1 += failed;
        }
    }
    wait_for_empty_queue(web, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "filled in {:.1} s (retried {} batches after UNAVAILABLE, failed {})",
        fill_started.elapsed().as_secs_f64(),
        sent.0,
        sent.1
    );
    let client = reqwest::Client::new();
    let url = format!("http://{web}/api/v1/endpoints?service=shop&since=1h");
    let body: serde_json::Value = client.get(&url).send().await?.json().await?;
    let listed = body["endpoints"].as_array().map_or(0, Vec::len);
    let requests: u64 = body["endpoints"]
        .as_array()
        .map(|a| a.iter().map(|e| e["requests"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    println!("response: {listed} endpoints, {requests} requests in the last hour");
    let pid = redline.pid();
    std::fs::write("/tmp/redline-bench-query.pid", pid.to_string())?;
    // Right after the fill the writer may still be storing the hour just sent (on a slow
    // machine, for tens of seconds); queries then merge those windows from memory and share
    // the core with the writer. Both figures are printed; the target is the steady state.
    let backlog = time_queries(&client, &url, 5, pid).await?;
    println!("while the writer stores the fill: {backlog}");
    let waited = wait_for_idle_writer(web, Duration::from_secs(3), Duration::from_secs(300)).await;
    println!("writer idle {:.1} s after the fill", waited.as_secs_f64());
    let steady = time_queries(&client, &url, options.queries, pid).await?;
    println!("GET {url}: {steady} (target ≤ 50 ms)");
    let (rss, hwm) = rss_mib(pid).unwrap_or((0.0, 0.0));
    println!("redline RSS after the queries: {rss:.1} MiB (peak {hwm:.1} MiB)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: load (a steady load on a fresh redline, for profiling it from outside)
// ---------------------------------------------------------------------------------------------

async fn load(options: &Options) -> Result<()> {
    let redline = start_redline(&[])?;
    println!("redline pid {}", redline.pid());
    std::fs::write("/tmp/redline-bench.pid", redline.pid().to_string())?;
    let channels = connect(redline.grpc, options.connections).await?;
    let payloads = Arc::new(trace_payloads(64, 42));
    let sequence = Arc::new(AtomicU64::new(0));
    let config = LoadConfig {
        spans_per_s: options.rate,
        duration: Duration::from_secs_f64(options.secs),
        max_in_flight: options.max_in_flight,
    };
    let cpu_before = cpu_seconds(redline.pid()).unwrap_or(0.0);
    let result = run_load(&channels, &payloads, &sequence, &config).await;
    let cpu = cpu_seconds(redline.pid()).unwrap_or(0.0) - cpu_before;
    println!(
        "{:.0} spans/s offered, {:.0} accepted/s, lost {:.2} %, redline cpu {:.0} % ({:.2} µs per span)",
        options.rate,
        result.accepted_spans_per_s(),
        result.loss_fraction() * 100.0,
        cpu / result.elapsed_s * 100.0,
        cpu / (result.ok as f64 * SPANS_PER_BATCH as f64) * 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: profile (in process, for callgrind)
// ---------------------------------------------------------------------------------------------

fn profile() {
    use redline::aggregate::{Aggregator, AggregatorConfig};
    let payloads = trace_payloads(16, 3);
    let batches: usize = std::env::var("PROFILE_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
    let now_ms = (now_ns() / 1_000_000) as i64;
    let mut prost_s = 0.0;
    let mut convert_s = 0.0;
    let mut apply_s = 0.0;
    for n in 0..batches {
        let bytes = fresh_ids(&payloads[n % payloads.len()], n as u64);
        let t = Instant::now();
        // For comparison only: what decoding the whole message with prost costs.
        drop(ExportTraceServiceRequest::decode(&bytes[..]).expect("decodes"));
        let t1 = Instant::now();
        let converted = redline::ingest::convert::convert_traces(&bytes).expect("decodes");
        let t2 = Instant::now();
        aggregator.apply(converted.batch, now_ms);
        let t3 = Instant::now();
        prost_s += (t1 - t).as_secs_f64();
        convert_s += (t2 - t1).as_secs_f64();
        apply_s += (t3 - t2).as_secs_f64();
        if n % 20 == 19 {
            let _ = aggregator.take_flush(now_ms);
        }
    }
    let spans = (batches * SPANS_PER_BATCH) as f64;
    println!(
        "in process, {batches} batches: prost decode (not used) {:.2} µs/span; redline read + convert {:.2} µs/span, aggregate {:.2} µs/span → {:.0} spans/s for both",
        prost_s / spans * 1e6,
        convert_s / spans * 1e6,
        apply_s / spans * 1e6,
        spans / (convert_s + apply_s)
    );
}
