//! The shared test harness: a real redline (in process, or as the built binary) on port 0 with
//! a temporary data directory, and polling helpers with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use redline::app::App;
use redline::config::{Settings, SettingsLayer};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A redline running inside the test process.
pub struct TestRedline {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub web: SocketAddr,
    #[allow(dead_code)]
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    client: reqwest::Client,
    #[allow(dead_code)] // the benches share this harness and read it
    query: redline::query::Query,
    _temp: Option<tempfile::TempDir>,
}

pub fn port_zero_layer(data_dir: &Path) -> SettingsLayer {
    SettingsLayer {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        web_addr: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.to_path_buf()),
        // Keep every trace so tests can look them up.
        trace_sample_ratio: Some(1.0),
        // No rules unless a test writes this file.
        alerts_file: Some(data_dir.join("alerts.toml")),
        ..Default::default()
    }
}

impl TestRedline {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a fresh temporary data directory after `tweak` adjusts the settings.
    pub async fn start_with(tweak: impl FnOnce(&mut SettingsLayer)) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut layer = port_zero_layer(temp.path());
        tweak(&mut layer);
        let mut redline = Self::start_in(layer).await;
        redline._temp = Some(temp);
        redline
    }

    /// Starts with exactly these settings (e.g. an existing data directory).
    pub async fn start_in(layer: SettingsLayer) -> Self {
        let data_dir = layer.data_dir.clone().expect("data dir");
        let settings = Settings::resolve(layer).expect("valid settings");
        let app = App::build(settings).await.expect("redline starts");
        let (grpc, http, web) = (app.grpc_addr(), app.http_addr(), app.web_addr());
        let query = app.query();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("redline stops cleanly");
        });
        TestRedline {
            grpc,
            http,
            web,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            client: reqwest::Client::new(),
            query,
            _temp: None,
        }
    }

    /// Graceful stop, as on SIGTERM; returns the temporary directory so data can be reused.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("stops within 30 s")
                .expect("stop task");
        }
        self._temp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.web, path)
    }

    /// The server's own read model (what its API and alert rules use).
    #[allow(dead_code)]
    pub fn query(&self) -> redline::query::Query {
        self.query.clone()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The body of `GET path` as text, whatever its status.
    pub async fn text(&self, path: &str) -> String {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        response.text().await.expect("body")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Exports spans over OTLP/HTTP protobuf; returns the HTTP status.
    pub async fn export(&self, request: &ExportTraceServiceRequest) -> u16 {
        use prost::Message;
        self.client
            .post(format!("http://{}/v1/traces", self.http))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .expect("export")
            .status()
            .as_u16()
    }

    /// redline's own `/metrics` text (empty if the request fails).
    pub async fn metrics_text(&self) -> String {
        match self.client.get(self.url("/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Polls `path` until `done` holds for its JSON, or panics after `deadline`.
    pub async fn wait_for(
        &self,
        path: &str,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let body = poll(deadline, || async {
            let body = self.get_ok(path).await;
            done(&body).then_some(body)
        })
        .await;
        body.unwrap_or_else(|| {
            panic!("GET {path} did not reach the expected state in {deadline:?}")
        })
    }
}

impl Drop for TestRedline {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sends `message` as one gRPC frame (gzip-compressed if `gzip`) to `path` on `grpc` and
/// returns the answer's `grpc-status` code.
#[allow(dead_code)]
pub async fn grpc_status(
    grpc: SocketAddr,
    path: &str,
    message: &[u8],
    gzip: bool,
) -> Result<u32, String> {
    use http_body_util::{BodyExt, Full};
    use std::io::Write;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let payload = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(message).map_err(|e| e.to_string())?;
        encoder.finish().map_err(|e| e.to_string())?
    } else {
        message.to_vec()
    };
    let mut frame = vec![u8::from(gzip)];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let mut request = axum::http::Request::post(format!("http://{grpc}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(frame)))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = match response.headers().get("grpc-status") {
        Some(status) => status.clone(),
        None => {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let trailers = body.trailers().ok_or("no grpc-status header or trailer")?;
            trailers
                .get("grpc-status")
                .ok_or("no grpc-status trailer")?
                .clone()
        }
    };
    status
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("grpc-status {status:?} is not a number"))
}

/// Calls `attempt` until it returns `Some`, or `None` after `deadline`.
pub async fn poll<T, F, Fut>(deadline: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The endpoint entry of `route` in an `/api/v1/endpoints` answer.
pub fn endpoint<'a>(body: &'a Value, method: &str, route: &str) -> Option<&'a Value> {
    body["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["method"] == method && e["route"] == route)
}

/// The exact sample at rank ⌊q·(n−1)⌋ — the value the accuracy contract is stated against.
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

pub fn assert_within_one_percent(reported: f64, exact: f64, what: &str) {
    let error = (reported - exact).abs() / exact;
    assert!(
        error <= 0.01 + 1e-9,
        "{what}: reported {reported} vs exact {exact} (relative error {error:.5})"
    );
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `count` server spans of `route`, 10 ms each, for `service`.
pub fn export_request(service: &str, route: &str, count: usize) -> ExportTraceServiceRequest {
    let end = now_ns();
    let spans = (0..count)
        .map(|i| Span {
            trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("GET {route}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: end - 10_000_000,
            end_time_unix_nano: end,
            attributes: vec![
                string("http.request.method", "GET"),
                string("http.route", route),
            ],
            ..Default::default()
        })
        .collect();
    spans_export(service, spans)
}

/// One trace export of `spans` from `service`.
pub fn spans_export(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
