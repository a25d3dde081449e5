//! The shared test harness: a real redline (in process, or as the built binary) on port 0 with
//! a temporary data directory, and polling helpers with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[allow(dead_code)]
    reloader: redline::app::Reloader,
    /// The CA a redline serving TLS is trusted by ([`TestRedline::trust`]).
    tls_ca: Option<String>,
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
        let reloader = app.reloader();
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
            reloader,
            tls_ca: None,
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

    /// For a redline serving TLS: [`TestRedline::get`] and [`TestRedline::get_text`] speak
    /// https, trusting `ca_pem`.
    #[allow(dead_code)]
    pub fn trust(&mut self, ca_pem: &str) {
        self.tls_ca = Some(ca_pem.to_string());
    }

    /// A page's status and text.
    #[allow(dead_code)]
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        if let Some(ca) = &self.tls_ca {
            let request =
                axum::http::Request::get(format!("https://localhost:{}{path}", self.web.port()))
                    .body(bytes::Bytes::new())
                    .unwrap();
            let response = https(self.web, ca, None, request)
                .await
                .expect("GET over TLS");
            let status = response.status().as_u16();
            return (
                status,
                String::from_utf8_lossy(response.body()).into_owned(),
            );
        }
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The server's own read model (what its API and alert rules use).
    #[allow(dead_code)]
    pub fn query(&self) -> redline::query::Query {
        self.query.clone()
    }

    /// What SIGHUP reloads (keys, TLS files).
    #[allow(dead_code)]
    pub fn reloader(&self) -> &redline::app::Reloader {
        &self.reloader
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
        if self.tls_ca.is_some() {
            let (status, text) = self.get_text(path).await;
            return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
        }
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
        if self.tls_ca.is_some() {
            return self.get_text("/metrics").await.1;
        }
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
    grpc_status_with(grpc, path, message, gzip, &[]).await
}

/// [`grpc_status`] with metadata (`headers`).
pub async fn grpc_status_with(
    grpc: SocketAddr,
    path: &str,
    message: &[u8],
    gzip: bool,
    headers: &[(&str, &str)],
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
    for (name, value) in headers {
        request = request.header(*name, *value);
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

/// A certificate authority made at test time, which issues server and client certificates.
#[allow(dead_code)]
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, as PEM.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

#[allow(dead_code)]
impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            cert_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().unwrap();
        Issued {
            cert_pem: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue(
            vec!["localhost".into(), "127.0.0.1".into()],
            "redline",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject's common name is `common_name`.
    pub fn client(&self, common_name: &str) -> Issued {
        self.issue(
            Vec::new(),
            common_name,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// Writes `text` to `dir/name`; returns the path.
#[allow(dead_code)]
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// A rustls client configuration (ring) trusting `ca_pem`, presenting `identity` if given.
#[allow(dead_code)]
pub fn client_tls(ca_pem: &str, identity: Option<&Issued>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// One HTTP/1.1 request over TLS to `address` (as `localhost`), trusting `ca_pem`, presenting
/// `identity` if given, on a connection of its own.
#[allow(dead_code)]
pub async fn https(
    address: SocketAddr,
    ca_pem: &str,
    identity: Option<&Issued>,
    request: axum::http::Request<bytes::Bytes>,
) -> Result<axum::http::Response<bytes::Bytes>, String> {
    use http_body_util::BodyExt;
    let mut config = client_tls(ca_pem, identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request.map(http_body_util::Full::new))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(axum::http::Response::from_parts(parts, body))
}

/// The OTLP/HTTP exporter's client over TLS. The SDK's batch processor exports from a thread
/// of its own, without a runtime: requests run on the test's.
#[derive(Debug)]
struct TlsHttpClient {
    ca_pem: String,
    identity: Option<Issued>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for TlsHttpClient {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let address: SocketAddr = request
            .uri()
            .authority()
            .ok_or("no address")?
            .as_str()
            .parse()?;
        let (ca, identity) = (self.ca_pem.clone(), self.identity.clone());
        let sent = self
            .runtime
            .spawn(async move { https(address, &ca, identity.as_ref(), request).await })
            .await?;
        Ok(sent?)
    }
}

/// The OTLP transport of an SDK exporter.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// How a test's SDK exporter reaches redline: what `OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_KEY` set in SDKs
/// that read them (the Rust SDK reads the headers; certificates go through its TLS settings).
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct ExportVia {
    pub headers: Vec<(String, String)>,
    /// The CA certificate the exporter trusts; set: `https://`.
    pub ca_pem: Option<String>,
    pub identity: Option<Issued>,
}

/// Builds the real `opentelemetry-otlp` span exporter for `transport` to `address`; `None`
/// for the endpoint reads `OTEL_EXPORTER_OTLP_ENDPOINT`. Blocking (the HTTP client is reqwest's
/// blocking one): call off the async runtime, within it.
#[allow(dead_code)]
pub fn sdk_span_exporter(
    transport: Transport,
    address: Option<SocketAddr>,
    via: &ExportVia,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let scheme = if via.ca_pem.is_some() {
        "https"
    } else {
        "http"
    };
    let built = match transport {
        Transport::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(address) = address {
                builder = builder.with_endpoint(format!("{scheme}://{address}"));
            }
            if !via.headers.is_empty() {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &via.headers {
                    metadata.insert(
                        tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                builder = builder.with_metadata(metadata);
            }
            if let Some(ca) = &via.ca_pem {
                use opentelemetry_otlp::tonic_types::transport::{
                    Certificate, ClientTlsConfig, Identity,
                };
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some(identity) = &via.identity {
                    tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        Transport::Http => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(address) = address {
                builder = builder.with_endpoint(format!("{scheme}://{address}/v1/traces"));
            }
            if !via.headers.is_empty() {
                builder = builder.with_headers(via.headers.iter().cloned().collect());
            }
            if let Some(ca) = &via.ca_pem {
                builder = builder.with_http_client(TlsHttpClient {
                    ca_pem: ca.clone(),
                    identity: via.identity.clone(),
                    runtime: tokio::runtime::Handle::current(),
                });
            }
            builder.build()
        }
    };
    built.map_err(|e| e.to_string())
}

/// Sends `count` SERVER spans of `GET route` from `service` through `exporter` and flushes;
/// the flush's result (an export refused or failed is an error). Blocking.
#[allow(dead_code)]
pub fn sdk_send_spans(
    exporter: opentelemetry_otlp::SpanExporter,
    service: &str,
    route: &str,
    count: usize,
) -> Result<(), String> {
    use opentelemetry::trace::{Span as _, SpanKind as Kind, Tracer as _, TracerProvider as _};
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("redline-tests");
    for _ in 0..count {
        let mut span = tracer
            .span_builder(format!("GET {route}"))
            .with_kind(Kind::Server)
            .with_attributes(vec![
                opentelemetry::KeyValue::new("http.request.method", "GET"),
                opentelemetry::KeyValue::new("http.route", route.to_string()),
                opentelemetry::KeyValue::new("http.response.status_code", 200),
            ])
            .start(&tracer);
        span.end();
    }
    let flushed = provider.force_flush().map_err(|e| e.to_string());
    let _ = provider.shutdown();
    flushed
}

/// [`sdk_span_exporter`] and [`sdk_send_spans`] off the runtime.
#[allow(dead_code)]
pub async fn sdk_export(
    transport: Transport,
    address: SocketAddr,
    via: ExportVia,
    service: &str,
    route: &str,
    count: usize,
) -> Result<(), String> {
    let (service, route) = (service.to_string(), route.to_string());
    tokio::task::spawn_blocking(move || {
        let exporter = sdk_span_exporter(transport, Some(address), &via)?;
        sdk_send_spans(exporter, &service, &route, count)
    })
    .await
    .expect("export task")
}

/// Requests of `service` in the last hour, as the API reports them.
#[allow(dead_code)]
pub async fn requests_of_service(redline: &TestRedline, service: &str) -> u64 {
    let body = redline.get_ok("/api/v1/services?since=1h").await;
    body.as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"] == service)
        .and_then(|s| s["requests"].as_u64())
        .unwrap_or(0)
}

/// The value of the `/metrics` sample whose line starts with `series` (name and labels as
/// rendered), 0 when absent.
#[allow(dead_code)]
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// redline as a process of its own (the built binary) on port 0, for signals: stopped
/// (SIGTERM) when dropped.
#[allow(dead_code)]
pub struct RedlineProcess {
    child: std::process::Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub web: SocketAddr,
    pub data_dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RedlineProcess {
    /// Starts `redline serve` with `args` besides the addresses and data directory; waits
    /// for its addresses.
    pub fn start(args: &[&std::ffi::OsStr]) -> RedlineProcess {
        use std::io::BufRead;
        let data_dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
            .args(["serve", "--otlp-grpc-addr", "127.0.0.1:0"])
            .args([
                "--otlp-http-addr",
                "127.0.0.1:0",
                "--web-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--alerts-file")
            .arg(data_dir.path().join("alerts.toml"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("redline binary starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = |prefix: &str| loop {
            let line = lines.next().expect("redline prints its addresses").unwrap();
            if let Some(rest) = line.strip_prefix(prefix) {
                let rest = rest
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                return rest.trim_end_matches('/').parse::<SocketAddr>().unwrap();
            }
        };
        let grpc = address("redline: OTLP/gRPC listening on ");
        let http = address("redline: OTLP/HTTP listening on ");
        let web = address("redline: dashboard and API on ");
        // The rest of its output is not read: keep the pipe drained.
        std::thread::spawn(move || for _ in lines {});
        RedlineProcess {
            child,
            grpc,
            http,
            web,
            data_dir,
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({signal})");
    }

    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }
}

impl Drop for RedlineProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }
}
