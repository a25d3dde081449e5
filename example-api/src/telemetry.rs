//! OpenTelemetry wiring: one [`Telemetry`] per service (the API and the recommendations service
//! each get their own `service.name`), exporting traces and metrics over OTLP to
//! `OTEL_EXPORTER_OTLP_ENDPOINT`: spans through [`crate::tracer`] and [`crate::span_export`],
//! metrics through the SDK. Export runs on threads of its own with bounded queues, so a slow or
//! absent collector drops telemetry instead of slowing requests.
//!
//! Also holds the instruments every module records into and small span helpers that follow the
//! HTTP and database semantic conventions.

use crate::resilience::limit::Rejection;
use crate::sampling::Sampling;
use crate::span_export::{self, BatchSettings, ExportCounters, SpanQueue};
use crate::tracer::{EncodedAttribute, RecordingSpan, SpanLimits, SpanName, Tracer};
use foldhash::fast::RandomState;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, MeterProvider as _,
};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Bucket boundaries the HTTP semantic conventions advise for `http.server.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP metric exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("building the OTLP span exporter: {0}")]
    SpanExporter(#[from] crate::span_export::ExportBuildError),
}

/// A number from the environment variable `key` (`None` when unset or not a number).
pub(crate) fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// Where and how to export; read from the standard environment variables.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); `None` disables export.
    pub endpoint: Option<String>,
    /// `grpc`, `http/protobuf` (the spec's default) or `http/json`.
    pub protocol: String,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta` selects delta temporality.
    pub delta: bool,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms); 10 s by default so dashboards move during a demo.
    pub metric_interval: Duration,
    /// `OTEL_SDK_DISABLED=true` turns everything off.
    pub disabled: bool,
    /// `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram`
    /// exports histograms as exponential histograms (bounded relative error) instead of the
    /// semantic conventions' explicit buckets.
    pub exponential_histograms: bool,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub sampling: Sampling,
    /// `OTEL_BSP_*`: the span export queue.
    pub batch: BatchSettings,
    /// `OTEL_SPAN_*_COUNT_LIMIT`.
    pub limits: SpanLimits,
}

impl ExportConfig {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        ExportConfig {
            endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
            protocol: var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
            delta: var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
                .is_some_and(|v| v.eq_ignore_ascii_case("delta")),
            metric_interval: env_number("OTEL_METRIC_EXPORT_INTERVAL")
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(10)),
            disabled: var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            exponential_histograms: var("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION")
                .is_some_and(|v| v.eq_ignore_ascii_case("base2_exponential_bucket_histogram")),
            sampling: Sampling::from_env(),
            batch: BatchSettings::from_env(),
            limits: SpanLimits::from_env(),
        }
    }

    /// Export over gRPC to `endpoint` (used by the demo, which knows where redline listens).
    pub fn grpc(endpoint: &str) -> Self {
        ExportConfig {
            endpoint: Some(endpoint.to_string()),
            protocol: "grpc".into(),
            ..ExportConfig::from_env()
        }
    }
}

/// The service name of the API: `OTEL_SERVICE_NAME`, else `example-api`.
pub fn api_service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "example-api".into())
}

/// HTTP methods as the semantic conventions name them (`_OTHER` for the rest); the index into
/// [`ActiveRequests`].
pub const HTTP_METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// `http.server.active_requests`, kept in atomics and read by an asynchronous UpDownCounter at
/// export time. Why not a synchronous UpDownCounter: it costs two SDK measurements per request
/// (+1 and −1, each hashing its attribute set), about a tenth of telemetry's cost on a cached
/// GET; two atomic adds give the same exported series.
#[derive(Default)]
pub struct ActiveRequests {
    by_method: [AtomicI64; HTTP_METHODS.len()],
    seen: [AtomicBool; HTTP_METHODS.len()],
}

impl ActiveRequests {
    /// `method` is an index into [`HTTP_METHODS`].
    pub fn add(&self, method: usize, delta: i64) {
        let m = method.min(HTTP_METHODS.len() - 1);
        self.seen[m].store(true, Ordering::Relaxed);
        self.by_method[m].fetch_add(delta, Ordering::Relaxed);
    }

    /// (method, in progress) for every method seen so far (a return to 0 is reported too).
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        HTTP_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.seen[*i].load(Ordering::Relaxed))
            .map(|(i, m)| (*m, self.by_method[i].load(Ordering::Relaxed)))
    }
}

/// `cache.requests` of the product cache by level and result, counted in atomics and read by
/// an asynchronous Counter at export time (same reason as [`ActiveRequests`]: one SDK
/// measurement with three attributes on every cached read, for a series that only changes by
/// one).
#[derive(Default)]
pub struct CacheRequests {
    /// [l1 hit, l1 miss, l2 hit, l2 miss]
    counts: [AtomicU64; 4],
}

impl CacheRequests {
    pub fn record(&self, level: CacheLevel, hit: bool) {
        let i = (level as usize) * 2 + usize::from(!hit);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (level, result, count) for every combination counted so far.
    pub fn snapshot(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        [("l1", "hit"), ("l1", "miss"), ("l2", "hit"), ("l2", "miss")]
            .into_iter()
            .zip(&self.counts)
            .map(|((l, r), c)| (l, r, c.load(Ordering::Relaxed)))
            .filter(|(_, _, c)| *c > 0)
    }
}

/// `http.server.request.duration`, with each attribute set (method, route, status code) bound
/// once through the SDK's bound instruments. Why: an unbound `record` hashes and compares its
/// four attributes on every request; a bound one goes straight to its aggregator.
pub struct HttpDurations {
    histogram: Histogram<f64>,
    /// Route ("" when unmatched) → (method index, status code, bound histogram). The router's
    /// routes, the methods and the status codes the server answers with are finite sets, and
    /// [`MAX_BOUND_DURATIONS`] caps it anyway (beyond it, records go unbound).
    bound: RwLock<BoundDurations>,
}

type BoundDurations = HashMap<Box<str>, Vec<(u8, u16, BoundHistogram<f64>)>, RandomState>;

const MAX_BOUND_DURATIONS: usize = 1024;

impl HttpDurations {
    fn new(histogram: Histogram<f64>) -> Self {
        HttpDurations {
            histogram,
            bound: RwLock::default(),
        }
    }

    /// Records one request; `method` indexes [`HTTP_METHODS`].
    pub fn record(&self, seconds: f64, method: usize, route: Option<&str>, status: u16) {
        let method = method.min(HTTP_METHODS.len() - 1) as u8;
        let key = route.unwrap_or("");
        {
            let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = bound.get(key).and_then(|v| find(v, method, status)) {
                h.record(seconds);
                return;
            }
        }
        let attrs = Self::attributes(method, route, status);
        let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
        if bound.values().map(Vec::len).sum::<usize>() >= MAX_BOUND_DURATIONS {
            drop(bound);
            self.histogram.record(seconds, &attrs);
            return;
        }
        let entries = bound.entry(key.into()).or_default();
        let h = match find(entries, method, status) {
            Some(h) => h.clone(),
            None => {
                let h = self.histogram.bind(&attrs);
                entries.push((method, status, h.clone()));
                h
            }
        };
        drop(bound);
        h.record(seconds);
    }

    fn attributes(method: u8, route: Option<&str>, status: u16) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new("http.request.method", HTTP_METHODS[usize::from(method)]),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if let Some(r) = route {
            attrs.push(KeyValue::new("http.route", r.to_string()));
        }
        if status >= 500 {
            attrs.push(KeyValue::new("error.type", status.to_string()));
        }
        attrs
    }
}

fn find(
    v: &[(u8, u16, BoundHistogram<f64>)],
    method: u8,
    status: u16,
) -> Option<&BoundHistogram<f64>> {
    v.iter()
        .find(|(m, s, _)| *m == method && *s == status)
        .map(|(_, _, h)| h)
}

/// What the SERVER span of each route repeats on every request — its name per method and its
/// `http.route` attribute — made once per route. The router's routes are a finite set;
/// [`MAX_ROUTE_SPANS`] caps it anyway (beyond it, each request builds its own).
#[derive(Default)]
pub struct RouteSpans {
    routes: RwLock<HashMap<Box<str>, Arc<RouteSpan>, RandomState>>,
}

const MAX_ROUTE_SPANS: usize = 256;

pub struct RouteSpan {
    /// `{method} {route}` for each of [`HTTP_METHODS`].
    names: [Arc<str>; HTTP_METHODS.len()],
    pub route: EncodedAttribute,
}

impl RouteSpan {
    fn new(route: &str) -> Self {
        RouteSpan {
            names: std::array::from_fn(|m| Arc::from(format!("{} {route}", HTTP_METHODS[m]))),
            route: EncodedAttribute::new("http.route", route.to_string()),
        }
    }

    /// The span name for `method` (an index into [`HTTP_METHODS`]).
    pub fn name(&self, method: usize) -> SpanName {
        SpanName::Shared(self.names[method.min(HTTP_METHODS.len() - 1)].clone())
    }
}

impl RouteSpans {
    pub fn get(&self, route: &str) -> Arc<RouteSpan> {
        if let Some(r) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return r.clone();
        }
        let made = Arc::new(RouteSpan::new(route));
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() < MAX_ROUTE_SPANS {
            routes.insert(route.into(), made.clone());
        }
        made
    }
}

#[derive(Debug, Clone, Copy)]
pub enum CacheLevel {
    L1 = 0,
    L2 = 1,
}

/// The instruments shared by all modules of one service.
#[derive(Clone)]
pub struct Instruments {
    pub http_duration: Arc<HttpDurations>,
    /// Names and route attributes of SERVER spans.
    pub route_spans: Arc<RouteSpans>,
    /// Read by the `http.server.active_requests` callback.
    pub http_active: Arc<ActiveRequests>,
    pub client_duration: Histogram<f64>,
    pub db_pool_wait: Histogram<f64>,
    pub db_duration: Histogram<f64>,
    /// Read by the `cache.requests` callback.
    pub cache_requests: Arc<CacheRequests>,
    pub ratelimit_rejections: Counter<u64>,
    pub breaker_transitions: Counter<u64>,
    pub retries: Counter<u64>,
    /// `http.server.shed_requests`, bound once per `reason` (indexed by [`Rejection`]): a
    /// rejection is the path that must stay cheapest under overload.
    pub shed: [BoundCounter<u64>; 3],
    pub view_flushes: Counter<u64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Instruments {
            http_duration: Arc::new(HttpDurations::new(
                meter
                    .f64_histogram("http.server.request.duration")
                    .with_unit("s")
                    .with_description("Duration of HTTP server requests.")
                    .with_boundaries(DURATION_BUCKETS.to_vec())
                    .build(),
            )),
            http_active: Arc::default(),
            route_spans: Arc::default(),
            client_duration: meter
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            db_pool_wait: meter
                .f64_histogram("db.client.connection.wait_time")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ])
                .build(),
            db_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ])
                .build(),
            cache_requests: Arc::default(),
            ratelimit_rejections: meter
                .u64_counter("ratelimit.rejections")
                .with_unit("{request}")
                .build(),
            breaker_transitions: meter
                .u64_counter("circuit_breaker.transitions")
                .with_unit("{transition}")
                .build(),
            retries: meter
                .u64_counter("http.client.retries")
                .with_unit("{retry}")
                .build(),
            shed: {
                let counter = meter
                    .u64_counter("http.server.shed_requests")
                    .with_unit("{request}")
                    .build();
                Rejection::ALL.map(|r| counter.bind(&[KeyValue::new("reason", r.as_str())]))
            },
            view_flushes: meter
                .u64_counter("write_behind.flushes")
                .with_unit("{flush}")
                .build(),
        }
    }
}

/// Tracing and metrics of one service.
pub struct Telemetry {
    pub tracer: Tracer,
    pub meter: Meter,
    pub m: Instruments,
    /// Whether anything reads the metrics; observable instruments are only registered then
    /// (the SDK rejects them, noisily, when there is no reader).
    pub metrics_enabled: bool,
    meter_provider: SdkMeterProvider,
    /// The span export queue and its thread, when spans are exported.
    spans: Option<SpanExport>,
}

struct SpanExport {
    queue: Arc<SpanQueue>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The longest a flush or shutdown waits for the span export thread.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

impl Telemetry {
    /// Export according to `cfg`; without an endpoint, spans are not recorded at all, which is
    /// the "telemetry off" side of the overhead benchmark.
    pub fn new(service_name: &str, cfg: &ExportConfig) -> Result<Self, TelemetryError> {
        let resource = service_resource(service_name);
        let mp = SdkMeterProvider::builder().with_resource(resource);
        match cfg.endpoint.as_deref() {
            Some(endpoint) if !cfg.disabled => {
                let metrics = metric_exporter(endpoint, cfg)?;
                let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(metrics)
                    .with_interval(cfg.metric_interval)
                    .build();
                let mp = if cfg.exponential_histograms {
                    mp.with_view(exponential_view)
                } else {
                    mp
                };
                Self::exporting_spans(service_name, cfg, mp.with_reader(reader).build())
            }
            _ => Ok(Self::not_recording(mp.build())),
        }
    }

    /// Spans exported as `cfg` says (its endpoint must be set), metrics read from
    /// `meter_provider` (tests pass an in-memory reader here).
    pub fn exporting_spans(
        service_name: &str,
        cfg: &ExportConfig,
        meter_provider: SdkMeterProvider,
    ) -> Result<Self, TelemetryError> {
        let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
        let meter = meter_provider.meter("example-api");
        let queue = Arc::new(SpanQueue::new(
            cfg.batch.clone(),
            ExportCounters::new(&meter),
            &service_resource(service_name),
            "example-api",
        ));
        let thread = span_export::start_exporter(queue.clone(), endpoint, &cfg.protocol)?;
        let tracer = Tracer::new(cfg.sampling.clone(), Some(queue.clone()), cfg.limits);
        Ok(Self::build(
            tracer,
            meter_provider,
            true,
            Some(SpanExport {
                queue,
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        ))
    }

    /// Spans are not recorded at all; metrics go to `mp`.
    fn not_recording(mp: SdkMeterProvider) -> Self {
        let tracer = Tracer::new(
            Sampling::parse("always_off", None),
            None,
            SpanLimits::from_env(),
        );
        Self::build(tracer, mp, false, None)
    }

    /// No export, no recording: for tests that do not look at telemetry.
    pub fn disabled() -> Self {
        Self::not_recording(SdkMeterProvider::builder().build())
    }

    fn build(
        tracer: Tracer,
        meter_provider: SdkMeterProvider,
        metrics_enabled: bool,
        spans: Option<SpanExport>,
    ) -> Self {
        let meter = meter_provider.meter("example-api");
        let m = Instruments::new(&meter);
        let t = Telemetry {
            tracer,
            meter,
            m,
            metrics_enabled,
            meter_provider,
            spans,
        };
        t.register_counted_instruments();
        t
    }

    /// The asynchronous instruments over [`ActiveRequests`] and [`CacheRequests`].
    fn register_counted_instruments(&self) {
        if !self.metrics_enabled {
            return;
        }
        let active = self.m.http_active.clone();
        let _active = self
            .meter
            .i64_observable_up_down_counter("http.server.active_requests")
            .with_unit("{request}")
            .with_callback(move |obs| {
                for (method, n) in active.snapshot() {
                    obs.observe(
                        n,
                        &[
                            KeyValue::new("http.request.method", method),
                            KeyValue::new("url.scheme", "http"),
                        ],
                    );
                }
            })
            .build();
        let cache = self.m.cache_requests.clone();
        let _cache = self
            .meter
            .u64_observable_counter("cache.requests")
            .with_unit("{request}")
            .with_callback(move |obs| {
                for (level, result, n) in cache.snapshot() {
                    obs.observe(
                        n,
                        &[
                            KeyValue::new("cache.name", "product"),
                            KeyValue::new("cache.level", level),
                            KeyValue::new("cache.result", result),
                        ],
                    );
                }
            })
            .build();
    }

    /// Sends every finished span, then stops the span export thread and the metrics. Both
    /// block, so they run off the runtime.
    pub async fn shutdown(&self) {
        let spans = self.spans.as_ref().map(|s| {
            (
                s.queue.clone(),
                s.thread.lock().ok().and_then(|mut t| t.take()),
            )
        });
        let mp = self.meter_provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some((queue, thread)) = spans {
                queue.flush(FLUSH_TIMEOUT);
                queue.close();
                if let Some(t) = thread {
                    let _ = t.join();
                }
            }
            let _ = mp.shutdown();
        })
        .await;
    }

    /// Forces an export of finished spans and metrics (tests and shutdown).
    pub async fn flush(&self) {
        let queue = self.spans.as_ref().map(|s| s.queue.clone());
        let mp = self.meter_provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(q) = queue {
                q.flush(FLUSH_TIMEOUT);
            }
            let _ = mp.force_flush();
        })
        .await;
    }

    /// Starts a child span of `parent` (an INTERNAL or CLIENT span) and returns its context;
    /// `record` sets its attributes. Under a parent that is not sampled (with a parent-based
    /// sampler, the default) no span is started and `record` is not called: `parent` is
    /// returned, whose span records nothing.
    pub fn child(
        &self,
        parent: &Context,
        name: impl Into<SpanName>,
        kind: SpanKind,
        record: impl FnOnce(&mut RecordingSpan),
    ) -> Context {
        {
            let span = parent.span();
            let sc = span.span_context();
            if self.tracer.sampling().follows_parent() && sc.is_valid() && !sc.is_sampled() {
                return parent.clone();
            }
        }
        let mut span = self.tracer.start_span(parent, kind, || name.into());
        if span.is_recording() {
            record(&mut span);
        }
        parent.with_span(span)
    }

    /// Registers process CPU and memory gauges (read from `/proc`, Linux only).
    pub fn register_process_metrics(&self) {
        if !self.metrics_enabled {
            return;
        }
        let _cpu = self
            .meter
            .f64_observable_counter("process.cpu.time")
            .with_unit("s")
            .with_callback(|obs| {
                if let Some(secs) = proc_cpu_seconds() {
                    obs.observe(secs, &[]);
                }
            })
            .build();
        let _mem = self
            .meter
            .i64_observable_up_down_counter("process.memory.usage")
            .with_unit("By")
            .with_callback(|obs| {
                if let Some(bytes) = proc_rss_bytes() {
                    obs.observe(bytes, &[]);
                }
            })
            .build();
    }
}

/// The OpenTelemetry resource of a service: `service.name` plus what the SDK detects
/// (`OTEL_RESOURCE_ATTRIBUTES`, the SDK's own attributes).
fn service_resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_string())
        .build()
}

fn metric_exporter(
    endpoint: &str,
    cfg: &ExportConfig,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let temporality = if cfg.delta {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    };
    let exporter = if cfg.protocol == "grpc" {
        opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(base)
            .with_temporality(temporality)
            .build()?
    } else {
        let protocol = if cfg.protocol == "http/json" {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        };
        // The HTTP exporter uses an explicit endpoint as given, so the signal path is ours to add.
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_temporality(temporality)
            .build()?
    };
    Ok(exporter)
}

/// Turns every histogram into a base-2 exponential histogram (160 buckets, scale ≤ 20: the
/// SDK defaults of the specification).
pub fn exponential_view(
    i: &opentelemetry_sdk::metrics::Instrument,
) -> Option<opentelemetry_sdk::metrics::Stream> {
    use opentelemetry_sdk::metrics::{Aggregation, InstrumentKind, Stream};
    if i.kind() != InstrumentKind::Histogram {
        return None;
    }
    Stream::builder()
        .with_aggregation(Aggregation::Base2ExponentialHistogram {
            max_size: 160,
            max_scale: 20,
            record_min_max: true,
        })
        .build()
        .ok()
}

fn proc_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

fn proc_rss_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Reads W3C trace context from incoming HTTP headers.
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    // Most requests carry none: one header lookup instead of the propagator's work.
    static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if !headers.contains_key(&TRACEPARENT) {
        return Context::current();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the W3C `traceparent` of `cx` into outgoing headers.
pub fn inject_context(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(val)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, val);
        }
    }
}

pub use opentelemetry::trace::Status as SpanStatus;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};

    /// Every exported data point of the u64 sum `name`: its attributes and value.
    pub(crate) fn u64_sum_points(
        metrics: &InMemoryMetricExporter,
        name: &str,
    ) -> Vec<(Vec<KeyValue>, u64)> {
        let mut points = Vec::new();
        for rm in metrics.get_finished_metrics().unwrap() {
            for sm in rm.scope_metrics() {
                for metric in sm.metrics().filter(|m| m.name() == name) {
                    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
                        panic!("{name} is not a u64 sum");
                    };
                    for dp in sum.data_points() {
                        points.push((dp.attributes().cloned().collect(), dp.value()));
                    }
                }
            }
        }
        points
    }

    #[test]
    fn exponential_view_makes_exponential_histograms() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_view(exponential_view)
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let m = Instruments::new(&mp.meter("t"));
        m.http_duration.record(0.012, 0, Some("/x"), 200);
        mp.force_flush().unwrap();
        let found = metrics.get_finished_metrics().unwrap().iter().any(|rm| {
            rm.scope_metrics().any(|sm| {
                sm.metrics().any(|m| {
                    m.name() == "http.server.request.duration"
                        && matches!(
                            m.data(),
                            AggregatedMetrics::F64(MetricData::ExponentialHistogram(_))
                        )
                })
            })
        });
        assert!(found);
    }

    #[test]
    fn shed_requests_are_counted_per_reason() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let m = Instruments::new(&mp.meter("t"));
        m.shed[Rejection::Cpu as usize].add(3);
        m.shed[Rejection::Backlog as usize].add(1);
        mp.force_flush().unwrap();
        let counts: std::collections::BTreeMap<_, _> =
            u64_sum_points(&metrics, "http.server.shed_requests")
                .into_iter()
                .map(|(attributes, value)| {
                    let reason = attributes
                        .iter()
                        .find(|kv| kv.key.as_str() == "reason")
                        .map(|kv| kv.value.to_string());
                    (reason, value)
                })
                .collect();
        // Bound up front, every reason exports a series from the start, at 0 until it occurs.
        assert_eq!(
            counts,
            [
                (Some("backlog".to_string()), 1),
                (Some("concurrency".to_string()), 0),
                (Some("cpu".to_string()), 3)
            ]
            .into(),
            "one series per reason"
        );
    }
}
