//! What a rule reads, and how its readings become observations. The data comes from a
//! [`DataSource`]: the live query layer in redline, synthetic series in `redline test-rules` —
//! so both evaluate rules with exactly the same code.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::alerts::config::{ChangeMode, Rule, RuleKind, Selector};
use crate::alerts::engine::Observation;
use crate::alerts::routing::Labels;
use crate::model::EndpointKey;
use crate::query::{MetricAggregation, Query, RedStat};
use crate::store::StoreError;
use crate::vocab::{RedFilter, TimeRange};

/// Why a rule's data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source has no metric series (rule tests' synthetic data).
    #[error("metric series are not supported in {0}")]
    MetricsUnsupported(&'static str),
}

/// Per-endpoint RED statistics of one service over a range: what rules read.
pub type Endpoints = Arc<Vec<(EndpointKey, RedStats)>>;

/// The data rules are evaluated against.
pub trait DataSource {
    /// RED statistics of every endpoint of `service`, merged over `range`.
    fn endpoints(
        &self,
        service: &str,
        range: TimeRange,
    ) -> impl Future<Output = Result<Endpoints, SourceError>> + Send;

    /// The rule's metric merged over `range`, one entry per `by` attribute group.
    fn metric(
        &self,
        rule: &Rule,
        range: TimeRange,
    ) -> impl Future<Output = Result<Vec<(Labels, MetricAgg)>, SourceError>> + Send;
}

/// The rule's endpoints (its method/route, if fixed) grouped by its `by` dimensions.
pub async fn red<S: DataSource>(
    source: &S,
    rule: &Rule,
    range: TimeRange,
) -> Result<Vec<(Labels, RedStats)>, SourceError> {
    let endpoints = source.endpoints(&rule.service, range).await?;
    let mut groups: BTreeMap<Labels, RedStats> = BTreeMap::new();
    for (endpoint, stats) in endpoints.iter() {
        if rule.method.as_ref().is_some_and(|m| *m != endpoint.method)
            || rule.route.as_ref().is_some_and(|r| *r != endpoint.route)
        {
            continue;
        }
        let labels: Labels = rule
            .by
            .iter()
            .map(|dimension| {
                let value = if dimension == "method" {
                    &endpoint.method
                } else {
                    &endpoint.route
                };
                (dimension.clone(), value.clone())
            })
            .collect();
        groups.entry(labels).or_default().merge(stats);
    }
    Ok(groups.into_iter().collect())
}

impl DataSource for Query {
    async fn endpoints(&self, service: &str, range: TimeRange) -> Result<Endpoints, SourceError> {
        let filter = RedFilter {
            service: Some(service.to_string()),
            ..Default::default()
        };
        Ok(Arc::new(self.red_stats(filter, range).await?))
    }

    async fn metric(
        &self,
        rule: &Rule,
        range: TimeRange,
    ) -> Result<Vec<(Labels, MetricAgg)>, SourceError> {
        let Selector::Metric {
            name, attributes, ..
        } = &rule.selector
        else {
            return Ok(Vec::new());
        };
        let windows = self
            .metric_window(&rule.service, name, attributes, &rule.by, range)
            .await?;
        Ok(windows
            .into_iter()
            .map(|(_, labels, agg)| (labels, agg))
            .collect())
    }
}

/// Reads each (service, range) once per evaluation cycle: rules that share a window share the
/// read, so 500 rules over a few services cost a few queries, not 500.
pub struct CycleCache<'a, S> {
    source: &'a S,
    endpoints: Mutex<HashMap<(String, i64, i64), Endpoints>>,
}

impl<'a, S> CycleCache<'a, S> {
    pub fn new(source: &'a S) -> Self {
        CycleCache {
            source,
            endpoints: Mutex::new(HashMap::new()),
        }
    }
}

impl<S: DataSource + Sync> DataSource for CycleCache<'_, S> {
    async fn endpoints(&self, service: &str, range: TimeRange) -> Result<Endpoints, SourceError> {
        let key = (service.to_string(), range.from_ms, range.to_ms);
        if let Some(hit) = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let fresh = self.source.endpoints(service, range).await?;
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, fresh.clone());
        Ok(fresh)
    }

    async fn metric(
        &self,
        rule: &Rule,
        range: TimeRange,
    ) -> Result<Vec<(Labels, MetricAgg)>, SourceError> {
        self.source.metric(rule, range).await
    }
}

fn window_before(now_ms: i64, window: Duration) -> TimeRange {
    TimeRange {
        from_ms: now_ms - window.as_millis() as i64,
        to_ms: now_ms,
    }
}

/// Reads one value per label set for the rule's selector over `range`; `None` means no data
/// (no requests, or below the rule's minimum request rate).
async fn values<S: DataSource>(
    source: &S,
    rule: &Rule,
    range: TimeRange,
) -> Result<Vec<(Labels, Option<f64>)>, SourceError> {
    let seconds = ((range.to_ms - range.from_ms).max(1)) as f64 / 1000.0;
    match &rule.selector {
        Selector::Red { stat, .. } => Ok(red(source, rule, range)
            .await?
            .into_iter()
            .map(|(labels, stats)| {
                let rate = stats.requests as f64 / seconds;
                let guarded = rule.min_rate.is_some_and(|min| rate < min);
                let value = if guarded
                    || stats.requests == 0 && *stat != RedStat::Requests && *stat != RedStat::Rate
                {
                    None
                } else {
                    stat.value(&stats, seconds)
                };
                (labels, value.filter(|v| v.is_finite()))
            })
            .collect()),
        Selector::Metric { agg, .. } => Ok(source
            .metric(rule, range)
            .await?
            .into_iter()
            .map(|(labels, window)| {
                let aggregation = agg.unwrap_or(if window.histogram.is_some() {
                    MetricAggregation::Quantile(95)
                } else {
                    MetricAggregation::Last
                });
                (
                    labels,
                    aggregation
                        .value(&window, seconds)
                        .filter(|v| v.is_finite()),
                )
            })
            .collect()),
    }
}

fn observe(rule: &Rule, labels: Labels, value: Option<f64>) -> Observation {
    let breach = value.is_some_and(|v| rule.op.holds(v, rule.threshold));
    let within_recovery = match (value, rule.recovery_threshold) {
        (Some(v), Some(recovery)) => rule.op.holds(v, recovery),
        _ => false,
    };
    Observation {
        labels,
        value,
        breach,
        within_recovery,
    }
}

/// Evaluates `rule` at `now_ms` against `source`.
pub async fn evaluate<S: DataSource>(
    source: &S,
    rule: &Rule,
    now_ms: i64,
) -> Result<Vec<Observation>, SourceError> {
    let current = window_before(now_ms, rule.window);
    match &rule.kind {
        RuleKind::Threshold => {
            let mut readings = values(source, rule, current).await?;
            if readings.is_empty() && rule.by.is_empty() {
                // The service sent nothing at all: one alert's worth of no data.
                readings.push((Labels::new(), None));
            }
            Ok(readings
                .into_iter()
                .map(|(labels, value)| observe(rule, labels, value))
                .collect())
        }
        RuleKind::Change {
            offset,
            baseline_window,
            mode,
        } => {
            let now = values(source, rule, current).await?;
            let baseline_end = now_ms - offset.as_millis() as i64;
            let baseline: BTreeMap<Labels, Option<f64>> =
                values(source, rule, window_before(baseline_end, *baseline_window))
                    .await?
                    .into_iter()
                    .collect();
            Ok(now
                .into_iter()
                .map(|(labels, value)| {
                    let before = baseline.get(&labels).copied().flatten();
                    // No baseline, or a zero one, is no data: never a division by zero.
                    let change = match (value, before) {
                        (Some(v), Some(b)) if b != 0.0 => Some(match mode {
                            ChangeMode::Ratio => v / b,
                            ChangeMode::Percent => (v - b) / b * 100.0,
                        }),
                        _ => None,
                    };
                    observe(rule, labels, change)
                })
                .collect())
        }
        RuleKind::Absent => {
            // Label sets seen in the hour before the window are the ones expected to report.
            let lookback = TimeRange {
                from_ms: current.from_ms - 3_600_000,
                to_ms: now_ms,
            };
            let known = red(source, rule, lookback).await?;
            let recent: BTreeMap<Labels, u64> = red(source, rule, current)
                .await?
                .into_iter()
                .map(|(labels, stats)| (labels, stats.requests))
                .collect();
            let mut expected: Vec<Labels> = known.into_iter().map(|(labels, _)| labels).collect();
            if expected.is_empty() && rule.by.is_empty() {
                expected.push(Labels::new());
            }
            Ok(expected
                .into_iter()
                .map(|labels| {
                    let requests = recent.get(&labels).copied().unwrap_or(0);
                    Observation {
                        labels,
                        value: Some(requests as f64),
                        breach: requests == 0,
                        within_recovery: false,
                    }
                })
                .collect())
        }
        RuleKind::BurnRate {
            error_budget,
            windows,
        } => {
            let mut worst: Option<f64> = None;
            let mut breach = false;
            for pair in windows {
                let burn = |stats: Option<RedStats>| {
                    stats
                        .filter(|s| s.requests > 0)
                        .map(|s| s.error_rate() / error_budget)
                };
                let long = burn(merged(
                    red(source, rule, window_before(now_ms, pair.long)).await?,
                ));
                let short = burn(merged(
                    red(source, rule, window_before(now_ms, pair.short)).await?,
                ));
                if let (Some(long), Some(short)) = (long, short) {
                    // Both windows must burn faster than the factor (AND); pairs are ORed.
                    breach |= long > pair.factor && short > pair.factor;
                    let pair_burn = long.min(short);
                    worst = Some(worst.map_or(pair_burn, |w: f64| w.max(pair_burn)));
                }
            }
            Ok(vec![Observation {
                labels: Labels::new(),
                value: worst,
                breach,
                within_recovery: false,
            }])
        }
    }
}

fn merged(groups: Vec<(Labels, RedStats)>) -> Option<RedStats> {
    let mut all: Option<RedStats> = None;
    for (_, stats) in groups {
        all.get_or_insert_with(RedStats::default).merge(&stats);
    }
    all
}
