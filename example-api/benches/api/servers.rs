//! The servers under test and the client side of the benchmarks: `example-api serve` child
//! processes (a fresh database each, optionally pinned to one CPU), the OTLP/HTTP sink their
//! telemetry goes to, the open-model load generator of the library, and a minimal HTTP/1.1
//! client for saturation runs, which costs far less per request than the server it measures.

use crate::host;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use example_api::loadgen::{self, Options, Report};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server did not print its address")]
    NoAddress,
    #[error("load generator: {0}")]
    Loadgen(#[from] loadgen::LoadgenError),
}

/// A running `example-api serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    /// The loopback admin endpoint (`/admin/state` counts shed arrivals per rule).
    pub admin: String,
    pub pid: u32,
}

impl Server {
    /// The server's CPU time so far, in seconds (0 once it is gone).
    pub fn cpu_secs(&self) -> f64 {
        host::cpu_seconds(self.pid).unwrap_or(0.0)
    }
}

/// Export requests, bytes and spans received by the sink.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub spans: AtomicU64,
}

/// Accepts any OTLP/HTTP export and answers an empty (valid) protobuf response; counts the
/// export requests, bytes and spans it receives.
pub async fn otlp_sink(seen: Arc<Seen>) -> Result<String, BenchError> {
    let app = Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.requests.fetch_add(1, Ordering::Relaxed);
            seen.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            if uri.path() == "/v1/traces" {
                seen.spans
                    .fetch_add(count_spans(&body).unwrap_or(0), Ordering::Relaxed);
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
                .into_response()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok(url)
}

/// Reads one protobuf varint at `*i`.
fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, body)` for each length-delimited field of a message, skipping the others.
fn for_each_len_field(b: &[u8], mut f: impl FnMut(u64, &[u8])) -> Option<()> {
    let mut i = 0;
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        match key & 7 {
            0 => {
                read_varint(b, &mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let len = read_varint(b, &mut i)? as usize;
                f(key >> 3, b.get(i..i + len)?);
                i += len;
            }
            _ => return None,
        }
    }
    Some(())
}

/// Spans in an `ExportTraceServiceRequest` (resource_spans → scope_spans → spans), found by
/// walking the wire format without decoding it (the sink shares the generator's CPUs).
fn count_spans(b: &[u8]) -> Option<u64> {
    let mut n = 0;
    for_each_len_field(b, |f, rs| {
        if f == 1 {
            let _ = for_each_len_field(rs, |f, ss| {
                if f == 2 {
                    let _ = for_each_len_field(ss, |f, _| n += u64::from(f == 2));
                }
            });
        }
    })?;
    Some(n)
}

pub async fn spawn_server(
    exe: &Path,
    db: &Path,
    otlp: Option<&str>,
    concurrency: &[&str],
    pin: Option<usize>,
    extra_env: &[(&str, &str)],
) -> Result<Server, BenchError> {
    // A fresh database per server: each run starts from the same seeded catalog, not from the
    // reviews the previous runs wrote.
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    let mut cmd = Command::from(host::pinned_command(exe, pin));
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--rate-limit",
        "1000000000",
    ])
    .args(concurrency)
    .arg("--db")
    .arg(db)
    .env_remove("REDIS_URL")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    match otlp {
        Some(url) => {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", url)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        }
        None => {
            cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
    }
    cmd.envs(extra_env.iter().copied());
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().ok_or(BenchError::NoAddress)?;
    let mut lines = BufReader::new(stdout).lines();
    let mut announced = async |prefix: &str| -> Result<String, BenchError> {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .map_err(|_| BenchError::NoAddress)??
            .ok_or(BenchError::NoAddress)?;
        let addr = line.strip_prefix(prefix).ok_or(BenchError::NoAddress)?;
        Ok(addr.to_string())
    };
    let url = announced("listening on ").await?;
    let admin = announced("admin on ").await?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child,
        url,
        admin,
        pid,
    })
}

pub async fn load(
    url: &str,
    rate: f64,
    secs: u64,
    only: Option<(String, i64)>,
) -> Result<Report, BenchError> {
    let mut o = Options::new(url.to_string(), rate, Duration::from_secs(secs));
    o.only = only;
    Ok(loadgen::run(o, std::future::pending()).await?)
}

/// The responses arriving on one keep-alive connection. Requests are pipelined, so a read may
/// end inside the next response: what follows the current one stays in the buffer.
struct Responses {
    buf: Vec<u8>,
}

impl Responses {
    /// Reads the next response (headers, then `Content-Length` bytes of body; our server always
    /// sends a length) and returns its status.
    async fn next(&mut self, s: &mut tokio::net::TcpStream) -> std::io::Result<u16> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((status, len)) = Self::complete(&self.buf)? {
                self.buf.drain(..len);
                return Ok(status);
            }
            let mut chunk = [0u8; 16384];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The status and length of the response at the start of `buf`, once all of it is there.
    fn complete(buf: &[u8]) -> std::io::Result<Option<(u16, usize)>> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad())?;
        let status: u16 = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        Ok((buf.len() >= head_end + len).then_some((status, head_end + len)))
    }
}

/// Closed loop: `conns` keep-alive connections each send `GET /v1/products/{id}` (ids 1..=100,
/// cached after warm-up) for `secs`, keeping `pipeline` requests outstanding: a new request
/// goes out as each response comes in (HTTP/1.1 pipelining). That keeps the server busy
/// while a response travels, and a read collects several responses, so a request costs the
/// load generator less than it costs the server. (A request is written as each response
/// arrives, not in batches: batches would wait on the server's Nagle delay, as nothing else
/// would carry the client's acknowledgements.) Returns (200 responses, other responses).
pub async fn saturate(
    url: &str,
    conns: usize,
    pipeline: usize,
    secs: u64,
) -> Result<(u64, u64), BenchError> {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let pipeline = pipeline.max(1);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let addr = addr.clone();
        set.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let mut responses = Responses {
                buf: Vec::with_capacity(16384),
            };
            let mut id = c as u64;
            let mut request = move || {
                id = id % 100 + 1;
                format!("GET /v1/products/{id} HTTP/1.1\r\nHost: bench\r\n\r\n")
            };
            let first: String = (0..pipeline).map(|_| request()).collect();
            s.write_all(first.as_bytes()).await?;
            let (mut ok, mut other) = (0u64, 0u64);
            let mut outstanding = pipeline;
            while outstanding > 0 {
                if responses.next(&mut s).await? == 200 {
                    ok += 1;
                } else {
                    other += 1;
                }
                outstanding -= 1;
                if tokio::time::Instant::now() < deadline {
                    s.write_all(request().as_bytes()).await?;
                    outstanding += 1;
                }
            }
            Ok::<_, std::io::Error>((ok, other))
        });
    }
    let (mut ok, mut other) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (o, x) = r.map_err(std::io::Error::other)??;
        ok += o;
        other += x;
    }
    Ok((ok, other))
}

pub fn ms(r: &Report, q: f64) -> f64 {
    r.hist.value_at_quantile(q) as f64 / 1000.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
