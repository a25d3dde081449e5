//! The read model's metric reads: the metrics a service exports, their series over a range
//! (filtered, grouped, aggregated per step), and one window's aggregate for alert rules.

use super::*;

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

impl Query {
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
}
