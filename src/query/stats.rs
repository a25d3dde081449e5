//! What the read model answers with, and how a RED or metric statistic is computed from a
//! window's aggregate: summaries, latency figures, the stats a series or rule can ask for.

use super::*;

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
    pub(super) fn of(stats: &RedStats) -> Self {
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
