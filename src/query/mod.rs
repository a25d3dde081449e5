//! The read model: RED summaries, time series, metric series and traces over a time range,
//! merging stored windows with the data still in memory. The JSON API, the dashboard and the
//! alert engine all read through here, so they always agree.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::aggregate::histogram;
use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::{Estimate, RedStats};
use crate::aggregate::{FlushBatch, MetricDelta, RedDelta, SeriesInfo};
use crate::model::{EndpointKey, MetricKind, RedSource, STATUS_CLASSES, SpanRecord};
use crate::pipeline::Live;
use crate::store::read;
use crate::store::{Readers, Resolution, Retention, StoreError};
use crate::vocab::KeepReason;
use crate::vocab::{RedFilter, TimeRange, TraceFilter, TraceSummary, now_ms};

mod logs;
mod metrics;
mod stats;
mod traces;

pub use metrics::MetricQuery;
pub use stats::*;

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
