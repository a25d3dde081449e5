//! The aggregator: folds converted OTLP records into per-window deltas (RED statistics per
//! endpoint, metric windows per series, kept trace spans) until the next flush hands them to
//! the store. Pure and synchronous: one task owns it, tests drive it directly.

pub mod cardinality;
pub mod explicit;
mod heap_size;
pub mod histogram;
pub mod instances;
pub mod logs;
pub mod metric;
pub mod red;
pub mod sampler;
pub mod sketch;
pub mod totals;

use std::sync::Arc;

use foldhash::HashMap;

use crate::memsize::HeapSize;
use crate::model::log_record::LogRecord;
use crate::model::semconv::{self, deprecated};
use crate::model::{
    EndpointKey, EndpointRequest, IngestBatch, MetricKind, MetricPoint, MetricSeriesKey, RedSource,
    SpanRecord,
};
use crate::self_metrics;
use crate::vocab::KeepReason;
use cardinality::{CardinalityGuard, Limits, OverflowCounts};
use logs::{LogKeeper, LogKeeperConfig, LogStats};
use metric::{Contribution, DeltaConverter, MetricAgg};
use red::RedStats;
use sampler::{SamplerConfig, SamplerStats, TraceSampler};
use totals::{DurationBounds, RedTotals};

/// The stable HTTP server metric; its histograms give RED figures like server spans do.
pub const HTTP_SERVER_DURATION: &str = semconv::HTTP_SERVER_REQUEST_DURATION;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregatorConfig {
    pub window_ms: i64,
    pub limits: Limits,
    pub sampler: SamplerConfig,
    pub logs: LogKeeperConfig,
    /// Timestamps further than this from now are placed at now (a skewed client clock must
    /// not create windows outside retention).
    pub max_clock_skew_ms: i64,
    /// Bounds of the published duration histogram ([`totals`]).
    pub duration_bounds: DurationBounds,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            window_ms: 10_000,
            limits: Limits::default(),
            sampler: SamplerConfig::default(),
            logs: LogKeeperConfig::default(),
            max_clock_skew_ms: 6 * 60 * 60 * 1000,
            duration_bounds: DurationBounds::default(),
        }
    }
}

/// RED statistics of one endpoint for one window, not yet in the store.
#[derive(Debug, Clone)]
pub struct RedDelta {
    pub source: RedSource,
    pub endpoint: EndpointKey,
    pub window_start_ms: i64,
    pub stats: RedStats,
}

/// Identity and description of a metric series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// Shared with the cardinality guard (one copy of each key, however many windows).
    pub key: Arc<MetricSeriesKey>,
    pub kind: MetricKind,
    pub unit: String,
    pub description: String,
}

/// One metric series window, not yet in the store.
#[derive(Debug, Clone)]
pub struct MetricDelta {
    pub series: SeriesInfo,
    pub window_start_ms: i64,
    pub agg: MetricAgg,
}

/// What one flush hands to the store.
#[derive(Debug, Clone, Default)]
pub struct FlushBatch {
    pub red: Vec<RedDelta>,
    pub metrics: Vec<MetricDelta>,
    pub spans: Vec<(SpanRecord, KeepReason)>,
    pub logs: Vec<LogRecord>,
}

impl FlushBatch {
    pub fn is_empty(&self) -> bool {
        self.red.is_empty()
            && self.metrics.is_empty()
            && self.spans.is_empty()
            && self.logs.is_empty()
    }

    pub fn rows(&self) -> self_metrics::FlushRows {
        self_metrics::FlushRows {
            red: self.red.len(),
            metric: self.metrics.len(),
            span: self.spans.len(),
            log: self.logs.len(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AggregatorStats {
    pub overflow: OverflowCounts,
    pub services: usize,
    pub endpoints: usize,
    pub metric_series: usize,
    pub clock_skew_corrected: u64,
    /// Cumulative points of streams the delta converter had no room for.
    pub untracked_metric_points: u64,
    pub traces: SamplerStats,
    pub logs: LogStats,
}

impl AggregatorStats {
    /// Reports these figures on `/metrics`.
    pub fn report(&self) {
        self_metrics::series(self.services, self.endpoints, self.metric_series);
        let overflow = &self.overflow;
        self_metrics::overflow(
            overflow.services,
            overflow.endpoints,
            overflow.metric_series,
            self.untracked_metric_points,
        );
        self_metrics::clock_skew_corrected(self.clock_skew_corrected);
        let traces = &self.traces;
        self_metrics::trace_keeping(self_metrics::TraceKeeping {
            kept_spans: traces.kept_spans,
            traces_dropped_for_budget: traces.traces_dropped_for_budget,
            spans_dropped_for_budget: traces.spans_dropped_for_budget,
            spans_dropped_for_memory: traces.spans_dropped_for_memory,
            spans_dropped_for_clock: traces.spans_dropped_for_clock,
        });
        self_metrics::log_keeping(self_metrics::LogKeeping {
            kept: self.logs.kept,
            dropped_for_budget: self.logs.dropped_for_budget,
            dropped_for_memory: self.logs.dropped_for_memory,
        });
    }
}

/// What the aggregator holds, in bytes, for the memory budget.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AggregatorMemory {
    /// Open windows, cumulative-series state and cardinality keys.
    pub windows_and_keys: usize,
    /// The trace sampler's and the log keeper's wait buffers and what they kept, not yet
    /// flushed.
    pub traces: usize,
}

/// Producers (instances) per metric series the delta converter makes room for, on average.
const STREAMS_PER_SERIES: usize = 4;

/// A delta converter's entry beyond the value it remembers.
const CONVERTER_ENTRY_BYTES: usize = 96;

/// Open RED windows: endpoint → (source, window start) → statistics. Nested so that a
/// request finds its endpoint by reference (no key is built per request).
type RedWindows = HashMap<EndpointKey, HashMap<(RedSource, i64), RedStats>>;
type MetricKey = (Arc<MetricSeriesKey>, i64);

/// A RED endpoint's entry beyond its key's text; and a window's entry.
const RED_ENDPOINT_ENTRY_BYTES: usize =
    std::mem::size_of::<(EndpointKey, HashMap<(RedSource, i64), RedStats>)>() + 16;
const RED_WINDOW_ENTRY_BYTES: usize = std::mem::size_of::<((RedSource, i64), RedStats)>() + 8;
const METRIC_WINDOW_ENTRY_BYTES: usize =
    std::mem::size_of::<(MetricKey, (SeriesInfo, MetricAgg))>() + 8;

/// Adds to the statistics of `endpoint` for `source` and `window` (created when new) and
/// returns how many heap bytes the windows grew by.
fn add_to_red(
    red: &mut RedWindows,
    source: RedSource,
    endpoint: &EndpointKey,
    window: i64,
    add: impl FnOnce(&mut RedStats),
) -> usize {
    let mut grown = 0;
    let windows = match red.get_mut(endpoint) {
        Some(windows) => windows,
        None => {
            grown += RED_ENDPOINT_ENTRY_BYTES + endpoint.heap_bytes();
            red.entry(endpoint.clone()).or_default()
        }
    };
    let stats = windows.entry((source, window)).or_insert_with(|| {
        grown += RED_WINDOW_ENTRY_BYTES;
        RedStats::default()
    });
    let before = stats.heap_bytes();
    add(stats);
    grown + stats.heap_bytes().saturating_sub(before)
}

pub struct Aggregator {
    config: AggregatorConfig,
    guard: CardinalityGuard,
    converter: DeltaConverter,
    sampler: TraceSampler,
    logs: LogKeeper,
    red: RedWindows,
    /// Totals since start, for the Prometheus exposition and remote write.
    totals: RedTotals,
    metrics: HashMap<MetricKey, (SeriesInfo, MetricAgg)>,
    clock_skew_corrected: u64,
    /// Heap bytes of `red` and `metrics`, kept as they grow (they empty at each flush).
    window_bytes: usize,
    /// Heap bytes of the delta converter: counted at each flush, raised by every cumulative
    /// point in between (an over-estimate until the next count).
    converter_bytes: usize,
    instances: instances::InstanceRegistry,
}

impl Aggregator {
    /// `started_unix_ns`: cumulative series that began before this are only baselined.
    pub fn new(config: AggregatorConfig, started_unix_ns: u64) -> Self {
        Aggregator {
            config,
            guard: CardinalityGuard::new(config.limits),
            // Room for a few instances of every series the guard admits.
            converter: DeltaConverter::new(
                started_unix_ns,
                config
                    .limits
                    .max_metric_series
                    .saturating_mul(STREAMS_PER_SERIES),
            ),
            sampler: TraceSampler::new(SamplerConfig {
                max_clock_skew_ms: config.max_clock_skew_ms,
                ..config.sampler
            }),
            logs: LogKeeper::new(LogKeeperConfig {
                max_clock_skew_ms: config.max_clock_skew_ms,
                ..config.logs
            }),
            red: HashMap::default(),
            totals: RedTotals::new(config.duration_bounds),
            metrics: HashMap::default(),
            clock_skew_corrected: 0,
            window_bytes: 0,
            converter_bytes: 0,
            instances: instances::InstanceRegistry::default(),
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.config.window_ms
    }

    fn window_start(&mut self, time_ms: i64, now_ms: i64) -> i64 {
        let time_ms = if (time_ms - now_ms).abs() > self.config.max_clock_skew_ms {
            self.clock_skew_corrected += 1;
            now_ms
        } else {
            time_ms
        };
        time_ms.div_euclid(self.config.window_ms) * self.config.window_ms
    }

    pub fn apply(&mut self, batch: IngestBatch, now_ms: i64) {
        for request in &batch.requests {
            self.add_request(request, now_ms);
        }
        for seen in &batch.instances {
            self.instances.record(seen, now_ms);
        }
        for point in &batch.metric_points {
            self.add_metric_point(point, now_ms);
        }
        for span in batch.spans {
            self.sampler.offer(span, &batch.body, now_ms);
        }
        for trace_id in self.sampler.take_newly_kept() {
            self.logs.trace_kept(&trace_id, now_ms);
        }
        let sampler = &self.sampler;
        for log in batch.logs {
            self.logs.offer(log, now_ms, |id| sampler.is_kept(id));
        }
    }

    fn add_request(&mut self, request: &EndpointRequest, now_ms: i64) {
        let overflow = self
            .guard
            .admit_endpoint_in_place(&request.endpoint, now_ms);
        let endpoint = overflow.as_ref().unwrap_or(&request.endpoint);
        let window = self.window_start(request.request.end_unix_ms, now_ms);
        self.window_bytes += add_to_red(&mut self.red, RedSource::Spans, endpoint, window, |s| {
            s.add_request(&request.request)
        });
        self.totals.add_request(endpoint, &request.request, now_ms);
    }

    fn add_metric_point(&mut self, point: &MetricPoint, now_ms: i64) {
        let key = self.guard.admit_series(&point.series, now_ms);
        let overflowed = *key != point.series;
        let window = self.window_start(point.time_unix_ms, now_ms);
        // Overflow series fold many series together: deltas of each are not tracked.
        let contribution = if overflowed {
            Contribution::Baseline
        } else {
            if point.temporality == crate::model::Temporality::Cumulative {
                self.converter_bytes += CONVERTER_ENTRY_BYTES + point.value.heap_bytes();
            }
            self.converter.contribution(&key, point, now_ms)
        };
        if let Contribution::Histogram(delta) = &contribution
            && point.series.name == HTTP_SERVER_DURATION
        {
            self.add_request_histogram(point, delta, window, now_ms);
        }
        let info = SeriesInfo {
            key: key.clone(),
            kind: point.kind,
            unit: point.unit.clone(),
            description: point.description.clone(),
        };
        let mut grown = 0;
        let (_, agg) = self.metrics.entry((key, window)).or_insert_with(|| {
            grown += METRIC_WINDOW_ENTRY_BYTES + info.heap_bytes();
            (info, MetricAgg::default())
        });
        let before = agg.heap_bytes();
        match contribution {
            Contribution::Number(v) => agg.add_number(v, point.time_unix_ms),
            Contribution::Histogram(h) => agg.add_histogram(&h, point.time_unix_ms),
            Contribution::Baseline => {}
        }
        self.window_bytes += grown + agg.heap_bytes().saturating_sub(before);
    }

    /// `http.server.request.duration` → RED: one data point is one (method, route, status).
    fn add_request_histogram(
        &mut self,
        point: &MetricPoint,
        delta: &crate::model::HistogramValue,
        window: i64,
        now_ms: i64,
    ) {
        let attributes = &point.series.attributes;
        let method = attributes
            .get(semconv::HTTP_REQUEST_METHOD)
            .or_else(|| attributes.get(deprecated::HTTP_METHOD))
            .map(|m| crate::model::semconv::normalize_method(m))
            .unwrap_or_default();
        let route = attributes
            .get(semconv::HTTP_ROUTE)
            .cloned()
            .unwrap_or_else(|| "(no route)".to_string());
        let status_code = attributes
            .get(semconv::HTTP_RESPONSE_STATUS_CODE)
            .or_else(|| attributes.get(deprecated::HTTP_STATUS_CODE))
            .and_then(|s| s.parse::<u16>().ok());
        let is_error =
            status_code.is_some_and(|c| c >= 500) || attributes.contains_key(semconv::ERROR_TYPE);
        let per_second = match point.unit.as_str() {
            "ms" => 1_000.0,
            "us" | "µs" => 1_000_000.0,
            "ns" => 1_000_000_000.0,
            _ => 1.0, // "s", the unit the semantic conventions require
        };
        let to_ms = 1000.0 / per_second;
        let endpoint = self.guard.admit_endpoint(
            &EndpointKey {
                service: point.series.service.clone(),
                method,
                route,
            },
            now_ms,
        );
        self.window_bytes +=
            add_to_red(&mut self.red, RedSource::Metrics, &endpoint, window, |s| {
                s.add_histogram(delta, status_code, is_error, to_ms)
            });
        self.totals
            .add_histogram(&endpoint, delta, status_code, is_error, per_second, now_ms);
    }

    /// Hands over everything gathered since the last flush and starts afresh.
    pub fn take_flush(&mut self, now_ms: i64) -> FlushBatch {
        self.guard.expire(now_ms);
        self.totals
            .expire(now_ms - self.config.limits.idle_expiry_ms);
        let guard = &self.guard;
        self.converter.retain(|k| guard.knows_series(k), now_ms);
        self.instances.expire(now_ms);
        self.converter_bytes = self.converter.heap_bytes();
        self.window_bytes = 0;
        // Keep the tables as large as this flush needed, and give back what a burst grew.
        let (red_len, metrics_len) = (self.red.len(), self.metrics.len());
        let flush = FlushBatch {
            red: self
                .red
                .drain()
                .flat_map(|(endpoint, windows)| {
                    windows
                        .into_iter()
                        .map(move |((source, window_start_ms), stats)| RedDelta {
                            source,
                            endpoint: endpoint.clone(),
                            window_start_ms,
                            stats,
                        })
                })
                .collect(),
            metrics: self
                .metrics
                .drain()
                .map(|((_, window_start_ms), (series, agg))| MetricDelta {
                    series,
                    window_start_ms,
                    agg,
                })
                .collect(),
            spans: self.sampler.take_kept(),
            logs: self.logs.take_kept(),
        };
        self.red.shrink_to(red_len);
        self.metrics.shrink_to(metrics_len);
        flush
    }

    /// A copy of what has not been flushed yet, for queries that must see it.
    pub fn snapshot(&self, service: Option<&str>) -> FlushBatch {
        let wanted = |s: &str| service.is_none_or(|w| w == s);
        FlushBatch {
            red: self
                .red
                .iter()
                .filter(|(endpoint, _)| wanted(&endpoint.service))
                .flat_map(|(endpoint, windows)| {
                    windows.iter().map(|((source, window), stats)| RedDelta {
                        source: *source,
                        endpoint: endpoint.clone(),
                        window_start_ms: *window,
                        stats: stats.clone(),
                    })
                })
                .collect(),
            metrics: self
                .metrics
                .iter()
                .filter(|((key, _), _)| wanted(&key.service))
                .map(|((_, window), (series, agg))| MetricDelta {
                    series: series.clone(),
                    window_start_ms: *window,
                    agg: agg.clone(),
                })
                .collect(),
            spans: self.sampler.pending_kept().to_vec(),
            logs: self
                .logs
                .pending_kept()
                .iter()
                .filter(|log| wanted(&log.service))
                .cloned()
                .collect(),
        }
    }

    /// RED totals per endpoint since start, including what is not flushed yet.
    pub fn totals(&self) -> &RedTotals {
        &self.totals
    }

    /// The instances `service` was heard from lately.
    pub fn instances(&self, service: &str) -> instances::InstancesView {
        self.instances.of(service)
    }

    pub fn stats(&self) -> AggregatorStats {
        AggregatorStats {
            overflow: self.guard.overflow(),
            services: self.guard.service_count(),
            endpoints: self.guard.endpoint_count(),
            metric_series: self.guard.series_count(),
            clock_skew_corrected: self.clock_skew_corrected,
            untracked_metric_points: self.converter.untracked(),
            traces: self.sampler.stats(),
            logs: self.logs.stats(),
        }
    }

    /// What the aggregator holds now, for the memory budget.
    pub fn memory(&self) -> AggregatorMemory {
        AggregatorMemory {
            windows_and_keys: self.window_bytes
                + self.converter_bytes
                + self.guard.key_bytes()
                + self.totals.heap_bytes()
                + self.instances.heap_bytes(),
            traces: self.sampler.heap_bytes() + self.logs.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Buckets, HistogramValue, MetricValue, RequestRecord, Temporality};
    use std::collections::BTreeMap;

    fn request(route: &str, end_ms: i64, duration: f64, status: u16) -> EndpointRequest {
        EndpointRequest {
            endpoint: EndpointKey {
                service: "api".into(),
                method: "GET".into(),
                route: route.into(),
            }
            .into(),
            request: RequestRecord {
                end_unix_ms: end_ms,
                duration_ms: duration,
                status_code: Some(status),
                is_error: status >= 500,
                count: 1,
            },
        }
    }

    #[test]
    fn requests_land_in_aligned_windows() {
        let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
        let now = 1_000_000;
        let batch = IngestBatch {
            requests: vec![
                request("/a", now - 1, 10.0, 200),
                request("/a", now + 5, 20.0, 500),
                request("/a", now + 10_000, 30.0, 200),
            ],
            ..Default::default()
        };
        aggregator.apply(batch, now);
        let mut flush = aggregator.take_flush(now);
        flush.red.sort_by_key(|d| d.window_start_ms);
        let windows: Vec<_> = flush
            .red
            .iter()
            .map(|d| (d.window_start_ms, d.stats.requests))
            .collect();
        assert_eq!(windows, vec![(990_000, 1), (1_000_000, 1), (1_010_000, 1)]);
        assert_eq!(flush.red[1].stats.errors, 1);
        assert!(aggregator.take_flush(now).is_empty());
    }

    /// Server spans of `/a` as an OTLP export, each (duration ms, status, tracestate),
    /// converted as the receivers do.
    fn converted_spans(spans: &[(u64, i64, &str)], end_ns: u64) -> IngestBatch {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use prost::Message;
        let kv = |key: &str, value| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let spans = spans
            .iter()
            .enumerate()
            .map(|(i, (duration_ms, status, trace_state))| Span {
                trace_id: (i as u128 + 1).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                trace_state: trace_state.to_string(),
                name: "GET /a".into(),
                kind: 2, // SERVER
                start_time_unix_nano: end_ns - duration_ms * 1_000_000,
                end_time_unix_nano: end_ns,
                attributes: vec![
                    kv(
                        "http.request.method",
                        any_value::Value::StringValue("GET".into()),
                    ),
                    kv("http.route", any_value::Value::StringValue("/a".into())),
                    kv(
                        "http.response.status_code",
                        any_value::Value::IntValue(*status),
                    ),
                ],
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = bytes::Bytes::from(request.encode_to_vec());
        crate::ingest::convert::convert_traces(&body)
            .expect("valid export")
            .batch
    }

    #[test]
    fn sampled_spans_count_their_adjusted_count() {
        let now_ms = 1_000_000;
        let end_ns = now_ms as u64 * 1_000_000;
        // `th:c`: probability 1/4, so each span stands for four requests; the last is unsampled.
        let batch = converted_spans(
            &[
                (10, 200, "ot=th:c"),
                (20, 200, "vendor=x,ot=th:c"),
                (40, 503, "ot=rv:0123456789abcd;th:c"),
                (80, 200, ""),
            ],
            end_ns,
        );
        let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
        aggregator.apply(batch, now_ms);
        let flush = aggregator.take_flush(now_ms);
        assert_eq!(flush.red.len(), 1);
        let stats = &flush.red[0].stats;
        assert_eq!(stats.requests, 3 * 4 + 1);
        assert_eq!(stats.errors, 4);
        assert_eq!(stats.status, [0, 9, 0, 0, 4]);
        assert_eq!(stats.duration_sum_ms, (10.0 + 20.0 + 40.0) * 4.0 + 80.0);
        assert_eq!(stats.sketch.count(), 13);
        // The sketch holds the observed durations, each as often as the requests it stands
        // for: the same as the 13 requests added one by one.
        let mut expanded = red::RedStats::default();
        for (duration, times) in [(10.0, 4), (20.0, 4), (40.0, 4), (80.0, 1)] {
            for _ in 0..times {
                expanded.add_request(&RequestRecord {
                    end_unix_ms: now_ms,
                    duration_ms: duration,
                    status_code: Some(200),
                    is_error: false,
                    count: 1,
                });
            }
        }
        assert_eq!(stats.sketch.encode(), expanded.sketch.encode());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(stats.quantile_ms(q), expanded.quantile_ms(q), "q {q}");
        }
        // Weighted ranks: the median of 13 is the 7th value, 20 ms (unweighted: 4 spans,
        // rank 1, also 20 ms); p90 is rank 10 → 40 ms, where four spans alone give 40 ms too,
        // but p25 is rank 3 → 10 ms.
        let near =
            |q: f64, exact: f64| (stats.quantile_ms(q).unwrap() - exact).abs() <= exact * 0.01;
        assert!(near(0.25, 10.0) && near(0.5, 20.0) && near(0.9, 40.0));
        assert_eq!((stats.min_ms(), stats.max_ms()), (Some(10.0), Some(80.0)));
    }

    #[test]
    fn skewed_timestamps_are_placed_at_now() {
        let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
        let now = 100_000_000_000;
        aggregator.apply(
            IngestBatch {
                requests: vec![request("/a", 5, 1.0, 200)],
                ..Default::default()
            },
            now,
        );
        assert_eq!(aggregator.take_flush(now).red[0].window_start_ms, now);
        assert_eq!(aggregator.stats().clock_skew_corrected, 1);
    }

    #[test]
    fn duration_histograms_give_red_figures() {
        let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
        let attributes: BTreeMap<String, String> = [
            ("http.request.method", "GET"),
            ("http.route", "/items/{id}"),
            ("http.response.status_code", "503"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let point = |count: u64| MetricPoint {
            series: MetricSeriesKey {
                service: "api".into(),
                name: HTTP_SERVER_DURATION.into(),
                attributes: attributes.clone(),
            },
            kind: MetricKind::Histogram,
            unit: "s".into(),
            description: String::new(),
            stream: 1,
            start_unix_ns: 10,
            time_unix_ms: 50_000,
            temporality: Temporality::Cumulative,
            value: MetricValue::Histogram(HistogramValue {
                count,
                sum: count as f64 * 0.1,
                min: None,
                max: None,
                buckets: Buckets::Explicit {
                    bounds: vec![0.05, 0.2],
                    counts: vec![0, count, 0],
                },
            }),
        };
        aggregator.apply(
            IngestBatch {
                metric_points: vec![point(4), point(10)],
                ..Default::default()
            },
            50_000,
        );
        let flush = aggregator.take_flush(50_000);
        let red = &flush.red[0];
        assert_eq!(red.source, RedSource::Metrics);
        assert_eq!(red.endpoint.route, "/items/{id}");
        // Cumulative 4 then 10: 10 requests in all, all errors.
        assert_eq!(red.stats.requests, 10);
        assert_eq!(red.stats.errors, 10);
        assert_eq!(red.stats.estimate(), red::Estimate::ExplicitBuckets);
        assert_eq!(flush.metrics.len(), 1);
        assert_eq!(flush.metrics[0].agg.histogram.as_ref().unwrap().count, 10);
    }
}
