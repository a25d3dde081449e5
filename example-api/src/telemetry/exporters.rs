//! The OTLP exporters of one service (spans, metrics, log records), built with
//! `opentelemetry-otlp` for the configured protocol (`grpc`, `http/protobuf`, `http/json`), and [`CountingExporter`], which counts what
//! the span exporter sends (`otel.sdk.exporter.span.exported`) and keeps the batch span
//! processor's thread out of the requests' way.

use super::{ExportConfig, TelemetryError};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use opentelemetry_otlp::{LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{Aggregation, Instrument, InstrumentKind, Stream, Temporality};
use opentelemetry_sdk::trace::SpanData;
use std::cell::Cell;
use std::time::Duration;

/// The protocol `OTEL_EXPORTER_OTLP_PROTOCOL` names, for the HTTP exporters.
fn http_protocol(name: &str) -> Protocol {
    if name == "http/json" {
        Protocol::HttpJson
    } else {
        Protocol::HttpBinary
    }
}

/// The span exporter for `cfg.protocol`, sending to `endpoint`.
pub(super) fn span_exporter(
    endpoint: &str,
    cfg: &ExportConfig,
) -> Result<SpanExporter, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let timeout = cfg.batch.export_timeout;
    let exporter = if cfg.protocol == "grpc" {
        SpanExporter::builder()
            .with_tonic()
            .with_endpoint(base)
            .with_timeout(timeout)
            .build()?
    } else {
        // The HTTP exporter uses an explicit endpoint as given, so the signal path is ours to add.
        SpanExporter::builder()
            .with_http()
            .with_protocol(http_protocol(&cfg.protocol))
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(timeout)
            .build()?
    };
    Ok(exporter)
}

/// The log record exporter for `cfg.protocol`, sending to `endpoint`.
pub(super) fn log_exporter(
    endpoint: &str,
    cfg: &ExportConfig,
) -> Result<LogExporter, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let timeout = cfg.batch.export_timeout;
    let exporter = if cfg.protocol == "grpc" {
        LogExporter::builder()
            .with_tonic()
            .with_endpoint(base)
            .with_timeout(timeout)
            .build()?
    } else {
        LogExporter::builder()
            .with_http()
            .with_protocol(http_protocol(&cfg.protocol))
            .with_endpoint(format!("{base}/v1/logs"))
            .with_timeout(timeout)
            .build()?
    };
    Ok(exporter)
}

/// The metric exporter for `cfg.protocol` and temporality, sending to `endpoint`.
pub(super) fn metric_exporter(
    endpoint: &str,
    cfg: &ExportConfig,
) -> Result<MetricExporter, TelemetryError> {
    let base = endpoint.trim_end_matches('/');
    let temporality = if cfg.delta {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    };
    let exporter = if cfg.protocol == "grpc" {
        MetricExporter::builder()
            .with_tonic()
            .with_endpoint(base)
            .with_temporality(temporality)
            .build()?
    } else {
        MetricExporter::builder()
            .with_http()
            .with_protocol(http_protocol(&cfg.protocol))
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_temporality(temporality)
            .build()?
    };
    Ok(exporter)
}

/// Turns every histogram into a base-2 exponential histogram (160 buckets, scale ≤ 20: the
/// SDK defaults of the specification).
pub fn exponential_view(i: &Instrument) -> Option<Stream> {
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

/// Wraps the span exporter the batch span processor calls: counts exported and failed spans
/// (`otel.sdk.exporter.span.exported`, `error.type` on failure) so lost telemetry is visible,
/// and lowers the priority of the thread that calls it.
#[derive(Debug)]
pub(super) struct CountingExporter<E> {
    pub inner: E,
    pub exported: Counter<u64>,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E, meter: &opentelemetry::metrics::Meter) -> Self {
        CountingExporter {
            inner,
            exported: meter
                .u64_counter("otel.sdk.exporter.span.exported")
                .with_unit("{span}")
                .build(),
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for CountingExporter<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        lower_thread_priority_once();
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => self.exported.add(n, &[]),
            Err(_) => self
                .exported
                .add(n, &[KeyValue::new("error.type", "export_failed")]),
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The niceness of the thread that encodes and sends spans (the batch span processor's).
/// Exporting is background work with a bounded queue in front: when requests and the exporter
/// want the same saturated core, requests should win and the queue should drop spans (counted
/// by the processor), not the other way round. At nice 10 the thread still gets about a tenth
/// of a contended core and every idle cycle.
const EXPORT_NICE: libc::c_int = 10;

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority the first time it exports. The SDK starts the batch
/// processor's thread itself and offers no hook, so its first export call is where that thread
/// can be reached; the flag makes later calls free.
fn lower_thread_priority_once() {
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::instruments::tests::u64_sum_points;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanExporter as _};

    /// The export call's thread ends up at [`EXPORT_NICE`] (or lower), and the spans it sent
    /// are counted.
    #[test]
    fn exports_are_counted_and_run_at_a_lower_priority() {
        let metrics = InMemoryMetricExporter::default();
        let mp = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let spans = InMemorySpanExporter::default();
        let exporter = CountingExporter::new(spans.clone(), &mp.meter("t"));
        let nice = std::thread::spawn(move || {
            let batch = vec![opentelemetry_sdk::trace::SpanData {
                span_context: opentelemetry::trace::SpanContext::empty_context(),
                parent_span_id: opentelemetry::trace::SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: opentelemetry::trace::SpanKind::Internal,
                name: "x".into(),
                start_time: std::time::SystemTime::now(),
                end_time: std::time::SystemTime::now(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: opentelemetry::trace::Status::Unset,
                instrumentation_scope: Default::default(),
            }];
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(exporter.export(batch)).unwrap();
            // SAFETY: reads the calling thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .join()
        .unwrap();
        // At least: a test run that is itself niced further keeps its (lower) priority.
        assert!(nice >= EXPORT_NICE, "nice {nice}");
        assert_eq!(spans.get_finished_spans().unwrap().len(), 1);
        mp.force_flush().unwrap();
        let counted: u64 = u64_sum_points(&metrics, "otel.sdk.exporter.span.exported")
            .into_iter()
            .map(|(_, v)| v)
            .sum();
        assert_eq!(counted, 1);
    }
}
