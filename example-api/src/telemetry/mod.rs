//! OpenTelemetry wiring: one [`Telemetry`] per service (the API and the recommendations service
//! each get their own `service.name`), exporting traces, metrics and logs over OTLP to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` through the SDK: an `SdkTracerProvider` with the batch span
//! processor and the consistent-probability sampler ([`crate::sampling`]), an
//! `SdkMeterProvider` with a periodic reader, and an `SdkLoggerProvider` with the batch log
//! processor, which `tracing` events reach through the `opentelemetry-appender-tracing`
//! bridge ([`Telemetry::log_layer`]), each with the trace context of the request it belongs to. Export runs on the SDK's own threads with bounded
//! queues, so a slow or absent collector drops telemetry instead of slowing requests.
//!
//! The service's providers can be made the process's global ones ([`Telemetry::install_global`])
//! and its tracer can back a `tracing` layer ([`Telemetry::tracing_layer`]), so spans that
//! libraries start through the OpenTelemetry API or through `tracing` join the same traces.
//! Also holds the span helpers that follow the HTTP and database semantic conventions; the
//! instruments are in [`instruments`], the exporters in [`exporters`].

mod exporters;
mod instruments;

pub use exporters::exponential_view;
pub use instruments::*;

use crate::sampling::Sampling;
use exporters::{CountingExporter, log_exporter, metric_exporter, span_exporter};
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A number from the environment variable `key` (`None` when unset or not a number).
fn env_number<T: std::str::FromStr>(key: &str) -> Option<T> {
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
    /// `OTEL_BSP_*`: the batch span processor's queue.
    pub batch: BatchSettings,
    /// The resource's `service.instance.id`, telling apart instances of one service that
    /// export to the same place (`OTEL_RESOURCE_ATTRIBUTES` can set it too).
    pub instance_id: Option<String>,
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
            instance_id: None,
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

/// The batch span processor's settings, from the standard environment variables. Kept here
/// rather than left to the SDK's own reading of them so that tests can set them explicitly.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (2048): finished spans waiting for export; beyond it, spans
    /// are dropped and counted (`otel.sdk.processor.span.processed`, `error.type=queue_full`).
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512): spans per export request.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (5000 ms): the longest a finished span waits for export.
    pub schedule_delay: Duration,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` (10000 ms): one
    /// export request's deadline (the SDK's batch processor leaves it to the exporter).
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

/// The service name of the API: `OTEL_SERVICE_NAME`, else `example-api`.
pub fn api_service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "example-api".into())
}

/// Serialises every change of the global providers. The SDK's batch span processor reports its
/// drops (`otel.sdk.processor.span.processed`) through the meter of the global meter provider
/// *at the moment it is built*: to land in the right service's metrics, that provider is made
/// global just before, and a process may build several services' telemetry at once (the API
/// and its downstream; tests in parallel).
static GLOBAL_PROVIDERS: Mutex<()> = Mutex::new(());

/// Tracing and metrics of one service.
pub struct Telemetry {
    /// The service's tracer (instrumentation scope `example-api`).
    pub tracer: SdkTracer,
    /// The sampler the tracer provider uses, asked before child spans are built.
    sampling: Sampling,
    pub meter: Meter,
    pub m: Instruments,
    /// Whether anything reads the metrics; observable instruments are only registered then
    /// (the SDK rejects them, noisily, when there is no reader).
    pub metrics_enabled: bool,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    /// Set when the service exports: where `tracing` events go as OTLP log records.
    logger_provider: Option<SdkLoggerProvider>,
}

impl Telemetry {
    /// Export according to `cfg`; without an endpoint, spans are not recorded at all (an
    /// `always_off` sampler), which is the "telemetry off" side of the overhead benchmark.
    pub fn new(service_name: &str, cfg: &ExportConfig) -> Result<Self, TelemetryError> {
        let mp = SdkMeterProvider::builder().with_resource(service_resource(service_name, cfg));
        match cfg.endpoint.as_deref() {
            Some(endpoint) if !cfg.disabled => {
                let reader = PeriodicReader::builder(metric_exporter(endpoint, cfg)?)
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

    /// Spans exported as `cfg` says (its endpoint must be set) through the SDK's batch span
    /// processor, metrics read from `meter_provider` (tests pass an in-memory reader here).
    pub fn exporting_spans(
        service_name: &str,
        cfg: &ExportConfig,
        meter_provider: SdkMeterProvider,
    ) -> Result<Self, TelemetryError> {
        let endpoint = cfg.endpoint.as_deref().unwrap_or_default();
        let exporter = CountingExporter::new(
            span_exporter(endpoint, cfg)?,
            &meter_provider.meter("example-api"),
        );
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.batch.max_queue_size)
            .with_max_export_batch_size(cfg.batch.max_export_batch_size)
            .with_scheduled_delay(cfg.batch.schedule_delay)
            .build();
        let processor = {
            let _global = GLOBAL_PROVIDERS.lock().unwrap_or_else(|e| e.into_inner());
            global::set_meter_provider(meter_provider.clone());
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build()
        };
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(service_resource(service_name, cfg))
            .with_sampler(cfg.sampling.clone())
            .with_span_processor(processor)
            .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_resource(service_resource(service_name, cfg))
            .with_batch_exporter(log_exporter(endpoint, cfg)?)
            .build();
        let mut telemetry =
            Self::build(tracer_provider, cfg.sampling.clone(), meter_provider, true);
        telemetry.logger_provider = Some(logger_provider);
        Ok(telemetry)
    }

    /// Spans are not recorded at all (an `always_off` sampler, no processor); metrics go to
    /// `mp`. Span contexts are still created, so trace ids propagate.
    fn not_recording(mp: SdkMeterProvider) -> Self {
        let sampling = Sampling::parse("always_off", None);
        let tp = SdkTracerProvider::builder()
            .with_sampler(sampling.clone())
            .build();
        Self::build(tp, sampling, mp, false)
    }

    /// No export, no recording: for tests that do not look at telemetry.
    pub fn disabled() -> Self {
        Self::not_recording(SdkMeterProvider::builder().build())
    }

    fn build(
        tracer_provider: SdkTracerProvider,
        sampling: Sampling,
        meter_provider: SdkMeterProvider,
        metrics_enabled: bool,
    ) -> Self {
        let meter = meter_provider.meter("example-api");
        let m = Instruments::new(&meter);
        let t = Telemetry {
            tracer: tracer_provider.tracer("example-api"),
            sampling,
            meter,
            m,
            metrics_enabled,
            tracer_provider,
            meter_provider,
            logger_provider: None,
        };
        t.register_counted_instruments();
        t
    }

    /// Makes this service's tracer and meter providers the process's global ones, and W3C
    /// trace context its propagator: what libraries that instrument themselves through
    /// `opentelemetry::global` use. One service per process can be global (the API's, in
    /// `serve` and `demo`); its downstream keeps its own providers.
    pub fn install_global(&self) {
        let _global = GLOBAL_PROVIDERS.lock().unwrap_or_else(|e| e.into_inner());
        global::set_tracer_provider(self.tracer_provider.clone());
        global::set_meter_provider(self.meter_provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
    }

    /// A `tracing` layer that turns `tracing` spans into this service's OpenTelemetry spans:
    /// a `tracing` span started inside a request (whose OpenTelemetry context the HTTP
    /// middleware makes current) is a child of the request's span, and while it is entered it
    /// is the current OpenTelemetry context, so spans started under it nest inside it. The
    /// sampler decides for these spans as for any other.
    pub fn tracing_layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            // A task moves between the runtime's threads; a thread id says nothing about it.
            .with_threads(false)
    }

    /// A `tracing` layer that exports events (INFO and above) as this service's OTLP log
    /// records through the SDK's batch log processor; `None` when the service does not export.
    /// A record emitted while a request's span is current carries its trace and span ids.
    /// Events of the HTTP and gRPC clients the exporters themselves use are left out, so
    /// exporting never logs about itself in a loop.
    pub fn log_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::filter::{LevelFilter, Targets};
        let provider = self.logger_provider.as_ref()?;
        let quiet = [
            "hyper",
            "hyper_util",
            "h2",
            "tonic",
            "tower",
            "reqwest",
            "opentelemetry",
        ];
        let filter = quiet
            .into_iter()
            .fold(
                Targets::new().with_default(LevelFilter::INFO),
                |f, target| f.with_target(target, LevelFilter::OFF),
            )
            .with_target("opentelemetry_sdk", LevelFilter::OFF)
            .with_target("opentelemetry_otlp", LevelFilter::OFF);
        Some(OpenTelemetryTracingBridge::new(provider).with_filter(filter))
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
        // The ratio itself, which a dashboard cannot derive from the counter's series.
        let cache = self.m.cache_requests.clone();
        let last = std::sync::Mutex::new([0u64; 4]);
        let _ratio = self
            .meter
            .f64_observable_gauge("cache.hit_ratio")
            .with_unit("1")
            .with_description("Hits over lookups of the product cache in the last interval")
            .with_callback(move |obs| {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                for (level, ratio) in cache.interval_hit_ratios(&mut last) {
                    obs.observe(
                        ratio,
                        &[
                            KeyValue::new("cache.name", "product"),
                            KeyValue::new("cache.level", level),
                        ],
                    );
                }
            })
            .build();
    }

    /// Exports every finished span, then stops both providers. The SDK's shutdown blocks, so
    /// it runs off the runtime.
    pub async fn shutdown(&self) {
        let tp = self.tracer_provider.clone();
        let mp = self.meter_provider.clone();
        let lp = self.logger_provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = tp.shutdown();
            let _ = mp.shutdown();
            if let Some(lp) = lp {
                let _ = lp.shutdown();
            }
        })
        .await;
    }

    /// Forces an export of finished spans, metrics and log records (tests and shutdown).
    pub async fn flush(&self) {
        let tp = self.tracer_provider.clone();
        let mp = self.meter_provider.clone();
        let lp = self.logger_provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = tp.force_flush();
            let _ = mp.force_flush();
            if let Some(lp) = lp {
                let _ = lp.force_flush();
            }
        })
        .await;
    }

    /// Starts a child span of `parent` (an INTERNAL or CLIENT span) and returns its context;
    /// `attributes` are the span's attributes. When the span cannot be sampled — its parent is
    /// not sampled and the sampler follows parents (the default), or nothing is ever sampled —
    /// no span is started and `attributes` is not called: `parent` is returned, whose span
    /// records nothing. That is what keeps an unsampled request cheap.
    pub fn child(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        {
            let span = parent.span();
            let sc = span.span_context();
            let unsampled_parent = sc.is_valid() && !sc.is_sampled();
            if self.sampling.never_samples() || (self.sampling.follows_parent() && unsampled_parent)
            {
                return parent.clone();
            }
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(&self.tracer, parent);
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
fn service_resource(service_name: &str, cfg: &ExportConfig) -> Resource {
    let builder = Resource::builder().with_service_name(service_name.to_string());
    match &cfg.instance_id {
        Some(id) => builder
            .with_attribute(KeyValue::new("service.instance.id", id.clone()))
            .build(),
        None => builder.build(),
    }
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

/// Writes the W3C `traceparent` and `tracestate` of `cx` into outgoing headers.
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
