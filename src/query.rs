//! The read model: RED summaries, time series, metric series and traces over a time range,
//! merging stored windows with the data still in memory. The JSON API, the dashboard and the
//! alert engine all read through here, so they always agree.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::aggregate::histogram;
use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::{Estimate, RedStats};
use crate::aggregate::sampler::KeepReason;
use crate::aggregate::{FlushBatch, MetricDelta, RedDelta, SeriesInfo};
use crate::model::{EndpointKey, MetricKind, RedSource, STATUS_CLASSES, SpanRecord};
use crate::pipeline::Live;
use crate::store::read;
use crate::store::{Readers, Resolution, Retention, StoreError};
use crate::vocab::{RedFilter, TimeRange, TraceFilter, TraceSummary, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    fn of(stats: &RedStats) -> Self {
        Latency {
            p50: stats.quantile_ms(0.5),
            p90: stats.quantile_ms(0.9),
            p95: stats.quantile_ms(0.95),
            p99: stats.quantile_ms(0.99),
            max: stats.max_ms(),
            mean: stats.mean_ms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceSummary {
    pub service: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub rate_per_s: f64,
    pub latency_ms: Latency,
    /// How the percentiles were estimated: sketch, exponential_histogram or explicit_buckets.
    pub estimate: Estimate,
    /// Spans or the `http.server.request.duration` metric.
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointSummary {
    pub method: String,
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub rate_per_s: f64,
    pub status: BTreeMap<&'static str, u64>,
    pub latency_ms: Latency,
    pub estimate: Estimate,
    pub source: &'static str,
}

/// One statistic of a RED time series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedStat {
    Quantile(u8),
    Rate,
    ErrorRate,
    Requests,
    Errors,
    Mean,
    Max,
}

impl RedStat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "p50" => RedStat::Quantile(50),
            "p90" => RedStat::Quantile(90),
            "p95" => RedStat::Quantile(95),
            "p99" => RedStat::Quantile(99),
            "rate" => RedStat::Rate,
            "error_rate" => RedStat::ErrorRate,
            "requests" => RedStat::Requests,
            "errors" => RedStat::Errors,
            "mean" => RedStat::Mean,
            "max" => RedStat::Max,
            _ => return None,
        })
    }

    /// The statistic of `stats`, which covers `seconds`.
    pub fn value(self, stats: &RedStats, seconds: f64) -> Option<f64> {
        match self {
            RedStat::Quantile(q) => stats.quantile_ms(q as f64 / 100.0),
            RedStat::Rate => Some(stats.requests as f64 / seconds),
            RedStat::ErrorRate => (stats.requests > 0).then(|| stats.error_rate()),
            RedStat::Requests => Some(stats.requests as f64),
            RedStat::Errors => Some(stats.errors as f64),
            RedStat::Mean => stats.mean_ms(),
            RedStat::Max => stats.max_ms(),
        }
    }
}

/// How metric windows are reduced to one number per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricAggregation {
    Avg,
    Min,
    Max,
    Last,
    Sum,
    Rate,
    Count,
    Quantile(u8),
}

impl MetricAggregation {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "avg" => MetricAggregation::Avg,
            "min" => MetricAggregation::Min,
            "max" => MetricAggregation::Max,
            "last" => MetricAggregation::Last,
            "sum" => MetricAggregation::Sum,
            "rate" => MetricAggregation::Rate,
            "count" => MetricAggregation::Count,
            "p50" => MetricAggregation::Quantile(50),
            "p90" => MetricAggregation::Quantile(90),
            "p95" => MetricAggregation::Quantile(95),
            "p99" => MetricAggregation::Quantile(99),
            _ => return None,
        })
    }

    /// What a chart of this kind shows when the user does not say.
    pub fn default_for(kind: MetricKind) -> Self {
        match kind {
            MetricKind::Counter => MetricAggregation::Rate,
            MetricKind::Gauge | MetricKind::UpDownCounter => MetricAggregation::Last,
            MetricKind::Histogram | MetricKind::ExponentialHistogram => {
                MetricAggregation::Quantile(95)
            }
        }
    }

    /// The aggregation of `agg`, which covers `seconds`.
    pub fn value(self, agg: &MetricAgg, seconds: f64) -> Option<f64> {
        let numeric = agg.samples > 0 && agg.histogram.is_none();
        match self {
            MetricAggregation::Avg => match &agg.histogram {
                Some(h) => (h.count > 0).then(|| h.sum / h.count as f64),
                None => numeric.then(|| agg.sum / agg.samples as f64),
            },
            MetricAggregation::Min => numeric.then_some(agg.min),
            MetricAggregation::Max => match &agg.histogram {
                Some(h) => h.max,
                None => numeric.then_some(agg.max),
            },
            MetricAggregation::Last => numeric.then_some(agg.last),
            MetricAggregation::Sum => match &agg.histogram {
                Some(h) => Some(h.sum),
                None => numeric.then_some(agg.sum),
            },
            MetricAggregation::Rate => match &agg.histogram {
                Some(h) => Some(h.count as f64 / seconds),
                None => numeric.then(|| agg.sum / seconds),
            },
            MetricAggregation::Count => match &agg.histogram {
                Some(h) => Some(h.count as f64),
                None => Some(agg.samples as f64),
            },
            MetricAggregation::Quantile(q) => {
                histogram::quantile(agg.histogram.as_ref()?, q as f64 / 100.0)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricDescription {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MetricKind,
    pub unit: String,
    pub description: String,
    pub attribute_keys: Vec<String>,
    pub series: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricSeriesPoints {
    pub attributes: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

#[derive(Clone)]
pub struct Query {
    live: Arc<Live>,
    readers: Readers,
    retention: Retention,
}

impl Query {
    pub fn new(live: Arc<Live>, readers: Readers, retention: Retention) -> Self {
        Query {
            live,
            readers,
            retention,
        }
    }

    /// The finest resolution that still holds data from `from_ms` and gives at most
    /// `max_windows` windows for the range.
    fn resolution_for(&self, range: TimeRange, max_windows: i64) -> Resolution {
        let age_ms = now_ms() - range.from_ms;
        let span_ms = (range.to_ms - range.from_ms).max(1);
        Resolution::ALL
            .into_iter()
            .find(|r| {
                age_ms <= self.retention.of(*r).as_millis() as i64
                    && span_ms / r.millis() <= max_windows
            })
            .unwrap_or(Resolution::OneHour)
    }

    /// Merged RED statistics per endpoint for a range (alert rules read these).
    pub async fn red_stats(
        &self,
        filter: RedFilter,
        range: TimeRange,
    ) -> Result<Vec<(EndpointKey, RedStats)>, StoreError> {
        let resolution = self.resolution_for(range, 400);
        let rows = self.red_totals(filter, range, resolution).await?;
        let mut by_endpoint: BTreeMap<EndpointKey, RedStats> = BTreeMap::new();
        for row in rows {
            by_endpoint
                .entry(row.endpoint)
                .or_default()
                .merge(&row.stats);
        }
        Ok(by_endpoint.into_iter().collect())
    }

    /// The RED windows of `resolution` starting in the range, stored and unflushed, summed per
    /// endpoint (and source): the stored part as per-endpoint totals, the unflushed part as
    /// windows. Stored data is read
    /// from the coarsest rollup rows that lie entirely inside the range (a rollup row holds
    /// exactly the merge of its finer windows, written in the same transaction), so one hour
    /// of 10 s windows is mostly read as 1 min rows, and rows are merged as they are read.
    async fn red_totals(
        &self,
        filter: RedFilter,
        range: TimeRange,
        resolution: Resolution,
    ) -> Result<Vec<RedDelta>, StoreError> {
        let parts = self.live.unflushed(filter.service.as_deref());
        let from = resolution.align(range.from_ms);
        let to = range.to_ms;
        let read_filter = filter.clone();
        let stored = self
            .readers
            .run(move |conn| {
                read::red_totals(conn, &read_filter, |ten_minutes_from| {
                    covering_blocks(resolution, from, to, ten_minutes_from)
                })
            })
            .await?;
        let mut rows = stored.rows;
        let unflushed = unflushed_red(&parts, stored.flushed_seq, &filter, resolution, from, to);
        rows.extend(unflushed.map(|(start, delta)| RedDelta {
            window_start_ms: start,
            ..delta.clone()
        }));
        Ok(prefer_spans(rows))
    }

    /// The RED windows of `resolution` starting in the range, summed per step
    /// (`window_start_ms` is the step's start)
    /// and per endpoint and source — or, without `per_endpoint`, per service and source, with
    /// empty method and route. The stored part is summed while it is read (one row per group
    /// and step comes back), the unflushed 10 s windows are added as rows; `step_ms` must be at
    /// least `resolution`. Steps are taken of resolution-aligned window starts, as before.
    async fn red_step_rows(
        &self,
        filter: RedFilter,
        range: TimeRange,
        resolution: Resolution,
        step_ms: i64,
        per_endpoint: bool,
    ) -> Result<Vec<RedDelta>, StoreError> {
        let parts = self.live.unflushed(filter.service.as_deref());
        let from = resolution.align(range.from_ms);
        let to = range.to_ms;
        let read_filter = filter.clone();
        let stored = self
            .readers
            .run(move |conn| {
                read::red_steps(
                    conn,
                    &read_filter,
                    resolution,
                    (from, to),
                    step_ms,
                    per_endpoint,
                )
            })
            .await?;
        let mut rows = stored.rows;
        let unflushed = unflushed_red(&parts, stored.flushed_seq, &filter, resolution, from, to);
        rows.extend(unflushed.map(|(start, delta)| {
            let endpoint = if per_endpoint {
                delta.endpoint.clone()
            } else {
                EndpointKey {
                    service: delta.endpoint.service.clone(),
                    method: String::new(),
                    route: String::new(),
                }
            };
            RedDelta {
                source: delta.source,
                endpoint,
                window_start_ms: start.div_euclid(step_ms) * step_ms,
                stats: delta.stats.clone(),
            }
        }));
        Ok(prefer_spans(rows))
    }

    pub async fn services(&self, range: TimeRange) -> Result<Vec<ServiceSummary>, StoreError> {
        let resolution = self.resolution_for(range, 400);
        let rows = self
            .red_totals(RedFilter::default(), range, resolution)
            .await?;
        let mut by_service: BTreeMap<String, (RedStats, RedSource)> = BTreeMap::new();
        for row in rows {
            let entry = by_service
                .entry(row.endpoint.service.clone())
                .or_insert_with(|| (RedStats::default(), row.source));
            entry.0.merge(&row.stats);
        }
        let seconds = range.seconds();
        Ok(by_service
            .into_iter()
            .map(|(service, (stats, source))| ServiceSummary {
                service,
                requests: stats.requests,
                errors: stats.errors,
                error_rate: stats.error_rate(),
                rate_per_s: stats.requests as f64 / seconds,
                latency_ms: Latency::of(&stats),
                estimate: stats.estimate(),
                source: source_name(source),
            })
            .collect())
    }

    pub async fn endpoints(
        &self,
        service: &str,
        range: TimeRange,
    ) -> Result<Vec<EndpointSummary>, StoreError> {
        let resolution = self.resolution_for(range, 400);
        let filter = RedFilter {
            service: Some(service.to_string()),
            ..Default::default()
        };
        let rows = self.red_totals(filter, range, resolution).await?;
        let mut by_endpoint: BTreeMap<(String, String), (RedStats, RedSource)> = BTreeMap::new();
        for row in rows {
            let entry = by_endpoint
                .entry((row.endpoint.method.clone(), row.endpoint.route.clone()))
                .or_insert_with(|| (RedStats::default(), row.source));
            entry.0.merge(&row.stats);
        }
        let seconds = range.seconds();
        Ok(by_endpoint
            .into_iter()
            .map(|((method, route), (stats, source))| EndpointSummary {
                method,
                route,
                requests: stats.requests,
                errors: stats.errors,
                error_rate: stats.error_rate(),
                rate_per_s: stats.requests as f64 / seconds,
                status: STATUS_CLASSES
                    .iter()
                    .zip(stats.status)
                    .map(|(class, n)| (*class, n))
                    .collect(),
                latency_ms: Latency::of(&stats),
                estimate: stats.estimate(),
                source: source_name(source),
            })
            .collect())
    }

    /// A RED statistic per step for a service, or one endpoint of it. Steps without data have
    /// no point (a gap, not a zero).
    pub async fn series(
        &self,
        filter: RedFilter,
        stat: RedStat,
        range: TimeRange,
        step_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let resolution = self.resolution_for_step(range, step_ms);
        let step_ms = step_ms.max(resolution.millis());
        let rows = self
            .red_step_rows(filter, range, resolution, step_ms, false)
            .await?;
        let mut steps: BTreeMap<i64, RedStats> = BTreeMap::new();
        for row in rows {
            steps
                .entry(row.window_start_ms)
                .or_default()
                .merge(&row.stats);
        }
        let now = now_ms();
        Ok(steps
            .into_iter()
            .filter_map(|(start, stats)| {
                // The newest step is still filling: a rate divides by the time it has covered.
                let seconds = ((start + step_ms).min(now) - start).max(1000) as f64 / 1000.0;
                stat.value(&stats, seconds).map(|v| (start, v))
            })
            .collect())
    }

    /// RED statistics per step for every service (or every endpoint, with `per_endpoint`)
    /// matching `filter`, from one read: the dashboard draws all its sparklines and charts of a
    /// page from it. Keys have empty method and route unless `per_endpoint`.
    pub async fn red_steps(
        &self,
        filter: RedFilter,
        range: TimeRange,
        step_ms: i64,
        per_endpoint: bool,
    ) -> Result<RedSteps, StoreError> {
        let resolution = self.resolution_for_step(range, step_ms);
        let step_ms = step_ms.max(resolution.millis());
        let rows = self
            .red_step_rows(filter, range, resolution, step_ms, per_endpoint)
            .await?;
        let mut groups: BTreeMap<EndpointKey, BTreeMap<i64, RedStats>> = BTreeMap::new();
        for row in rows {
            let steps = groups.entry(row.endpoint).or_default();
            match steps.entry(row.window_start_ms) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(row.stats);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    slot.get_mut().merge(&row.stats)
                }
            }
        }
        Ok(RedSteps { step_ms, groups })
    }

    fn resolution_for_step(&self, range: TimeRange, step_ms: i64) -> Resolution {
        let age_ms = now_ms() - range.from_ms;
        Resolution::ALL
            .into_iter()
            .rev()
            .find(|r| r.millis() <= step_ms && age_ms <= self.retention.of(*r).as_millis() as i64)
            .unwrap_or_else(|| self.resolution_for(range, 2_000))
    }

    /// Metric names of a service, with type, unit and attribute keys.
    pub async fn metrics(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<MetricDescription>, StoreError> {
        let wanted = service.map(str::to_string);
        let stored = self
            .readers
            .run(move |conn| read::metric_series(conn, wanted.as_deref()))
            .await?;
        let mut series: Vec<SeriesInfo> = stored.into_iter().map(|row| row.series).collect();
        for (_, batch) in self.live.unflushed(service) {
            series.extend(batch.metrics.iter().map(|delta| delta.series.clone()));
        }
        // (service, name) → (description, attribute keys, distinct attribute sets)
        type Described = (
            SeriesInfo,
            HashSet<String>,
            HashSet<BTreeMap<String, String>>,
        );
        let mut by_name: BTreeMap<(String, String), Described> = BTreeMap::new();
        for info in series {
            let entry = by_name
                .entry((info.key.service.clone(), info.key.name.clone()))
                .or_insert_with(|| (info.clone(), HashSet::new(), HashSet::new()));
            entry.1.extend(info.key.attributes.keys().cloned());
            entry.2.insert(info.key.attributes.clone());
        }
        Ok(by_name
            .into_values()
            .map(|(info, keys, sets)| {
                let mut attribute_keys: Vec<String> = keys.into_iter().collect();
                attribute_keys.sort();
                MetricDescription {
                    name: info.key.name.clone(),
                    kind: info.kind,
                    unit: info.unit,
                    description: info.description,
                    attribute_keys,
                    series: sets.len(),
                }
            })
            .collect())
    }

    /// One OTLP metric per step, one line per attribute set (after `filter` and `group_by`:
    /// series are merged over attributes not in `group_by`, when it is given).
    pub async fn metric_series(
        &self,
        service: &str,
        name: &str,
        request: MetricQuery,
    ) -> Result<(Option<SeriesInfo>, Vec<MetricSeriesPoints>), StoreError> {
        let MetricQuery {
            range,
            step_ms,
            aggregation,
            filter,
            group_by,
        } = request;
        let resolution = self.resolution_for_step(range, step_ms);
        let step_ms = step_ms.max(resolution.millis());
        let rows = self.metric_rows(service, name, range, resolution).await?;
        let info = rows.first().map(|r| r.series.clone());
        let aggregation = aggregation.unwrap_or_else(|| {
            info.as_ref()
                .map(|i| MetricAggregation::default_for(i.kind))
                .unwrap_or(MetricAggregation::Avg)
        });
        let mut lines: BTreeMap<BTreeMap<String, String>, BTreeMap<i64, MetricAgg>> =
            BTreeMap::new();
        for row in rows {
            let attributes = &row.series.key.attributes;
            if !filter.iter().all(|(k, v)| attributes.get(k) == Some(v)) {
                continue;
            }
            let line_key: BTreeMap<String, String> = match &group_by {
                Some(keys) => attributes
                    .iter()
                    .filter(|(k, _)| keys.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => attributes.clone(),
            };
            lines
                .entry(line_key)
                .or_default()
                .entry(row.window_start_ms.div_euclid(step_ms) * step_ms)
                .or_default()
                .merge(&row.agg);
        }
        let now = now_ms();
        let series = lines
            .into_iter()
            .map(|(attributes, steps)| MetricSeriesPoints {
                attributes,
                points: steps
                    .into_iter()
                    .filter_map(|(start, agg)| {
                        let seconds =
                            ((start + step_ms).min(now) - start).max(1000) as f64 / 1000.0;
                        aggregation.value(&agg, seconds).map(|v| (start, v))
                    })
                    .collect(),
            })
            .collect();
        Ok((info, series))
    }

    /// Stored and unflushed windows of every series named `name`, aligned to `resolution`.
    async fn metric_rows(
        &self,
        service: &str,
        name: &str,
        range: TimeRange,
        resolution: Resolution,
    ) -> Result<Vec<MetricDelta>, StoreError> {
        let (svc, metric) = (service.to_string(), name.to_string());
        let from = resolution.align(range.from_ms);
        let to = range.to_ms;
        let stored = self
            .readers
            .run(move |conn| read::metric_windows(conn, &svc, &metric, resolution, from, to))
            .await?;
        let mut rows: Vec<MetricDelta> = stored.rows;
        for (seq, batch) in self.live.unflushed(Some(service)) {
            if seq <= stored.flushed_seq {
                continue;
            }
            for delta in &batch.metrics {
                let start = resolution.align(delta.window_start_ms);
                if delta.series.key.name == name && start >= from && start < to {
                    let mut delta = delta.clone();
                    delta.window_start_ms = start;
                    rows.push(delta);
                }
            }
        }
        Ok(rows)
    }

    /// One merged window per attribute group (attributes in `group_by`) of a metric over a
    /// range, after equality `filter`s (alert rules read these).
    pub async fn metric_window(
        &self,
        service: &str,
        name: &str,
        filter: &BTreeMap<String, String>,
        group_by: &[String],
        range: TimeRange,
    ) -> Result<Vec<(SeriesInfo, BTreeMap<String, String>, MetricAgg)>, StoreError> {
        let resolution = self.resolution_for(range, 400);
        let rows = self.metric_rows(service, name, range, resolution).await?;
        let mut groups: BTreeMap<BTreeMap<String, String>, (SeriesInfo, MetricAgg)> =
            BTreeMap::new();
        for row in rows {
            let attributes = &row.series.key.attributes;
            if !filter.iter().all(|(k, v)| attributes.get(k) == Some(v)) {
                continue;
            }
            let key: BTreeMap<String, String> = attributes
                .iter()
                .filter(|(k, _)| group_by.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            groups
                .entry(key)
                .or_insert_with(|| (row.series.clone(), MetricAgg::default()))
                .1
                .merge(&row.agg);
        }
        Ok(groups
            .into_iter()
            .map(|(k, (info, agg))| (info, k, agg))
            .collect())
    }

    /// Sampled traces, newest (or slowest) first: stored ones plus traces whose spans are kept
    /// but not yet flushed, so a trace is listed as soon as its export is acknowledged.
    pub async fn traces(&self, filter: TraceFilter) -> Result<Vec<TraceSummary>, StoreError> {
        let read_filter = filter.clone();
        let mut traces = self
            .readers
            .run(move |conn| read::traces(conn, &read_filter))
            .await?;
        let stored: HashSet<String> = traces.iter().map(|t| t.trace_id.clone()).collect();
        let mut spans: Vec<(SpanRecord, KeepReason)> = Vec::new();
        for (_, batch) in self.live.unflushed(None) {
            spans.extend(
                batch
                    .spans
                    .iter()
                    .filter(|(span, _)| !stored.contains(&span.trace_id))
                    .cloned(),
            );
        }
        traces.extend(
            unflushed_summaries(spans)
                .into_iter()
                .filter(|t| trace_matches(t, &filter)),
        );
        if filter.slowest_first {
            traces.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        } else {
            traces.sort_by(|a, b| b.start_unix_ms.total_cmp(&a.start_unix_ms));
        }
        traces.truncate(filter.limit);
        Ok(traces)
    }

    /// Every span of a trace: stored ones plus kept spans not yet flushed.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let id = trace_id.to_string();
        let mut spans = self
            .readers
            .run(move |conn| read::trace_spans(conn, &id))
            .await?;
        let known: HashSet<String> = spans.iter().map(|s| s.span_id.clone()).collect();
        let pending: Vec<Arc<FlushBatch>> = self
            .live
            .unflushed(None)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        for batch in pending {
            for (span, _) in &batch.spans {
                if span.trace_id == trace_id && !known.contains(&span.span_id) {
                    spans.push(span.clone());
                }
            }
        }
        spans.sort_by(|a, b| {
            a.start_unix_ns
                .cmp(&b.start_unix_ns)
                .then(a.span_id.cmp(&b.span_id))
        });
        spans.dedup_by(|a, b| a.span_id == b.span_id);
        Ok(spans)
    }
}

/// Per-step RED statistics by group, from [`Query::red_steps`].
#[derive(Debug, Clone, Default)]
pub struct RedSteps {
    /// The step used (at least the resolution read).
    pub step_ms: i64,
    pub groups: BTreeMap<EndpointKey, BTreeMap<i64, RedStats>>,
}

impl RedSteps {
    /// Seconds a step starting at `start_ms` covers: the newest step is still filling.
    pub fn seconds(&self, start_ms: i64) -> f64 {
        ((start_ms + self.step_ms).min(now_ms()) - start_ms).max(1000) as f64 / 1000.0
    }
}

/// Options of a metric series query.
#[derive(Debug, Clone)]
pub struct MetricQuery {
    pub range: TimeRange,
    pub step_ms: i64,
    pub aggregation: Option<MetricAggregation>,
    /// Attribute equality filters.
    pub filter: BTreeMap<String, String>,
    pub group_by: Option<Vec<String>>,
}

/// Splits the windows of `resolution` starting in `[from_ms, to_ms)` into blocks
/// `(resolution, from, to)` that select the same data: the coarsest RED tier wherever one of
/// its windows lies entirely inside, the finer ones at the edges. A stored window of any tier
/// starting at `s` holds the finest windows starting in `[s, s + its width)`. The 10-minute
/// tier is used only for windows from `ten_minutes_from` on (it was not back-filled).
fn covering_blocks(
    resolution: Resolution,
    from_ms: i64,
    to_ms: i64,
    ten_minutes_from: i64,
) -> Vec<(Resolution, i64, i64)> {
    let levels = |with_ten_minutes: bool| -> Vec<Resolution> {
        Resolution::RED_TIERS
            .into_iter()
            .filter(|r| r.millis() >= resolution.millis())
            .filter(|r| with_ten_minutes || *r != Resolution::TenMinutes)
            .collect()
    };
    // `ten_minutes_from` is a 10-minute boundary, so also one of every finer tier.
    let split = ten_minutes_from.clamp(from_ms, to_ms.max(from_ms));
    let mut blocks = Vec::new();
    split_blocks(&levels(false), from_ms, split, &mut blocks);
    split_blocks(&levels(true), split, to_ms, &mut blocks);
    blocks
}

fn split_blocks(
    levels: &[Resolution],
    from_ms: i64,
    to_ms: i64,
    out: &mut Vec<(Resolution, i64, i64)>,
) {
    let Some((&level, coarser)) = levels.split_first() else {
        return;
    };
    if from_ms >= to_ms {
        return;
    }
    if let Some(&next) = coarser.first() {
        let width = next.millis();
        let inner_from = next.align(from_ms + width - 1);
        let inner_to = next.align(to_ms);
        if inner_from < inner_to {
            out.push((level, from_ms, inner_from));
            split_blocks(coarser, inner_from, inner_to, out);
            out.push((level, inner_to, to_ms));
            return;
        }
    }
    out.push((level, from_ms, to_ms));
}

/// Trace summaries of kept spans not yet in the store (as the writer would summarise them:
/// the root span names the trace, a server span gives its endpoint).
fn unflushed_summaries(spans: Vec<(SpanRecord, KeepReason)>) -> Vec<TraceSummary> {
    let mut by_trace: BTreeMap<String, (TraceSummary, i64, i64)> = BTreeMap::new();
    for (span, reason) in spans {
        let start = span.start_unix_ns as i64;
        let end = span.end_unix_ns as i64;
        let is_root = span.parent_span_id.is_none();
        let (summary, first, last) = by_trace.entry(span.trace_id.clone()).or_insert_with(|| {
            (
                TraceSummary {
                    trace_id: span.trace_id.clone(),
                    service: None,
                    method: None,
                    route: None,
                    root_name: None,
                    start_unix_ms: 0.0,
                    duration_ms: 0.0,
                    error: false,
                    span_count: 0,
                    reason: reason.as_str().to_string(),
                },
                start,
                end,
            )
        });
        *first = (*first).min(start);
        *last = (*last).max(end);
        summary.span_count += 1;
        summary.error |= span.is_error;
        if reason == KeepReason::Error {
            summary.reason = reason.as_str().to_string();
        }
        if let Some(endpoint) = &span.endpoint {
            if is_root || summary.route.is_none() {
                summary.service = Some(endpoint.service.clone());
                summary.method = Some(endpoint.method.clone());
                summary.route = Some(endpoint.route.clone());
            }
        } else if is_root && summary.service.is_none() {
            summary.service = Some(span.service.clone());
        }
        if is_root {
            summary.root_name = Some(span.name.clone());
        }
    }
    by_trace
        .into_values()
        .map(|(mut summary, first, last)| {
            summary.start_unix_ms = first as f64 / 1e6;
            summary.duration_ms = (last - first) as f64 / 1e6;
            summary
        })
        .collect()
}

fn trace_matches(trace: &TraceSummary, filter: &TraceFilter) -> bool {
    let equal =
        |wanted: &Option<String>, actual: &Option<String>| wanted.is_none() || wanted == actual;
    equal(&filter.service, &trace.service)
        && equal(&filter.method, &trace.method)
        && equal(&filter.route, &trace.route)
        && (!filter.errors_only || trace.error)
        && filter
            .min_duration_ms
            .is_none_or(|min| trace.duration_ms >= min)
        && trace.start_unix_ms >= filter.from_ms as f64
        && trace.start_unix_ms < filter.to_ms as f64
}

/// The unflushed RED windows a reader must add to its snapshot: those of flushes after the
/// `flushed_seq` it saw, matching `filter`, whose start aligned to `resolution` lies in
/// `[from, to)`; each with that aligned start.
fn unflushed_red<'a>(
    parts: &'a [(u64, Arc<FlushBatch>)],
    flushed_seq: u64,
    filter: &'a RedFilter,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> impl Iterator<Item = (i64, &'a RedDelta)> {
    parts
        .iter()
        .filter(move |(seq, _)| *seq > flushed_seq)
        .flat_map(|(_, batch)| &batch.red)
        .filter_map(move |delta| {
            let start = resolution.align(delta.window_start_ms);
            (start >= from && start < to && matches_filter(&delta.endpoint, filter))
                .then_some((start, delta))
        })
}

fn matches_filter(endpoint: &EndpointKey, filter: &RedFilter) -> bool {
    filter
        .service
        .as_ref()
        .is_none_or(|s| *s == endpoint.service)
        && filter.method.as_ref().is_none_or(|m| *m == endpoint.method)
        && filter.route.as_ref().is_none_or(|r| *r == endpoint.route)
}

/// A service that sends spans is read from its spans only; its duration metric would count
/// the same requests again. Rows keep their order.
fn prefer_spans(rows: Vec<RedDelta>) -> Vec<RedDelta> {
    if rows.iter().all(|r| r.source == RedSource::Spans) {
        return rows;
    }
    let with_spans: HashSet<String> = rows
        .iter()
        .filter(|r| r.source == RedSource::Spans)
        .map(|r| r.endpoint.service.as_str())
        .collect::<HashSet<&str>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    rows.into_iter()
        .filter(|r| r.source == RedSource::Spans || !with_spans.contains(&r.endpoint.service))
        .collect()
}

fn source_name(source: RedSource) -> &'static str {
    match source {
        RedSource::Spans => "spans",
        RedSource::Metrics => "metrics",
    }
}

#[cfg(test)]
mod block_tests {
    use super::*;

    #[test]
    fn covering_blocks_use_whole_rollup_windows_inside_the_range() {
        let min = 60_000;
        let hour = 3_600_000;
        // 10:07:20 → 11:07:25: 10 s edges, whole minutes inside, no whole hour.
        let from = 10 * hour + 7 * min + 20_000;
        let to = 11 * hour + 7 * min + 25_000;
        assert_eq!(
            covering_blocks(Resolution::TenSeconds, from, to, i64::MAX),
            vec![
                (Resolution::TenSeconds, from, 10 * hour + 8 * min),
                (
                    Resolution::OneMinute,
                    10 * hour + 8 * min,
                    11 * hour + 7 * min
                ),
                (Resolution::TenSeconds, 11 * hour + 7 * min, to),
            ]
        );
        // Wide enough for a whole hour.
        let blocks = covering_blocks(Resolution::TenSeconds, from, to + hour, i64::MAX);
        assert!(blocks.contains(&(Resolution::OneHour, 11 * hour, 12 * hour)));
        // Every block is non-empty, they are contiguous and cover exactly [from, to).
        let cases = [(from, to), (from, to + hour), (from, from + 30_000), (0, 1)];
        let tier_froms = [i64::MAX, 0, 10 * hour + 40 * min, 11 * hour];
        for ((start, end), tier_from) in cases.into_iter().flat_map(|c| tier_froms.map(|t| (c, t)))
        {
            let blocks: Vec<_> = covering_blocks(Resolution::TenSeconds, start, end, tier_from)
                .into_iter()
                .filter(|b| b.1 < b.2)
                .collect();
            assert_eq!(blocks.first().unwrap().1, start);
            assert_eq!(blocks.last().unwrap().2, end);
            for pair in blocks.windows(2) {
                assert_eq!(pair[0].2, pair[1].1);
            }
            for (resolution, block_from, block_to) in blocks {
                assert_eq!(resolution.align(block_from), block_from);
                if resolution == Resolution::TenMinutes {
                    assert!(block_from >= tier_from, "10 min rows only where complete");
                }
                if resolution != Resolution::TenSeconds {
                    assert_eq!(resolution.align(block_to), block_to);
                }
            }
        }
        // With the 10-minute tier: whole 10-minute windows inside the hour, 1 min at the edges.
        assert_eq!(
            covering_blocks(Resolution::TenSeconds, from, to, 0),
            vec![
                (Resolution::TenSeconds, from, 10 * hour + 8 * min),
                (
                    Resolution::OneMinute,
                    10 * hour + 8 * min,
                    10 * hour + 10 * min
                ),
                (Resolution::TenMinutes, 10 * hour + 10 * min, 11 * hour),
                (Resolution::OneMinute, 11 * hour, 11 * hour),
                (Resolution::TenMinutes, 11 * hour, 11 * hour),
                (Resolution::OneMinute, 11 * hour, 11 * hour + 7 * min),
                (Resolution::TenSeconds, 11 * hour + 7 * min, to),
            ]
            .into_iter()
            .filter(|b| b.1 < b.2)
            .collect::<Vec<_>>()
        );
        // A coarser base resolution never reads finer rows.
        assert!(
            covering_blocks(Resolution::OneMinute, 7 * min, 3 * hour + 5 * min, 0)
                .iter()
                .all(|b| b.0 != Resolution::TenSeconds)
        );
    }
}
