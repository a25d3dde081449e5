//! `/metrics-explorer`: any ingested OTLP metric by service, name and attributes, charted.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::State;
use axum::response::Html;

use super::service::{ChartPanel, series_name};
use super::{EmptyHelp, Layout, PageError, Pages, Pairs, Params, render, step_for};
use crate::query::{MetricAggregation, MetricDescription, MetricQuery};
use crate::render::{TimeChart, Unit};

/// Most lines drawn in one chart; the rest are listed as left out.
const MAX_LINES: usize = 12;

pub struct MetricRow {
    pub name: String,
    pub kind: String,
    pub unit: String,
    pub description: String,
    pub keys: String,
    pub series: usize,
    pub href: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "metrics.html")]
pub struct MetricsPage {
    pub layout: Layout,
    pub services: Vec<(String, bool)>,
    pub service: String,
    pub metrics: Vec<MetricRow>,
    pub name: String,
    pub aggregations: Vec<(String, bool)>,
    pub filter: String,
    pub group_by: String,
    pub attribute_keys: String,
    pub chart: Option<ChartPanel>,
    pub left_out: usize,
    pub help: EmptyHelp,
    pub empty_title: &'static str,
}

pub async fn page(State(pages): State<Pages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    render(&build(&pages, Params::from_pairs(pairs)).await?)
}

/// `k=v, k2=v2` into attribute filters.
fn parse_filter(text: &str) -> Result<BTreeMap<String, String>, PageError> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| PageError::bad("filter", format!("{pair:?} is not key=value")))
        })
        .collect()
}

/// Builds the metrics explorer (public for the render-time benchmark).
pub async fn build(pages: &Pages, params: Params) -> Result<MetricsPage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let mut names = pages.service_names().await?;
    let service = params
        .get("service")
        .map(str::to_string)
        .or_else(|| names.first().cloned());
    if let Some(s) = &service
        && !names.contains(s)
    {
        names.push(s.clone());
    }
    let metrics: Vec<MetricDescription> = match &service {
        Some(s) => pages.query.metrics(Some(s)).await?,
        None => Vec::new(),
    };
    let name = params.get("name").unwrap_or_default().to_string();
    let aggregation = params
        .get("agg")
        .map(|a| {
            MetricAggregation::parse(a).ok_or_else(|| {
                PageError::bad(
                    "agg",
                    "one of avg, min, max, last, sum, rate, count, p50, p90, p95, p99",
                )
            })
        })
        .transpose()?;
    let filter_text = params.get("filter").unwrap_or_default().to_string();
    let filter = parse_filter(&filter_text)?;
    let group_text = params.get("group_by").unwrap_or_default().to_string();
    let group_by: Option<Vec<String>> = (!group_text.trim().is_empty()).then(|| {
        group_text
            .split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    });
    let selected = metrics.iter().find(|m| m.name == name);
    let mut chart = None;
    let mut left_out = 0;
    let mut chosen_agg = aggregation;
    if let (Some(service), Some(metric)) = (&service, selected) {
        let step = step_for(range, 120);
        let (info, mut series) = pages
            .query
            .metric_series(
                service,
                &metric.name,
                MetricQuery {
                    range,
                    step_ms: step,
                    aggregation,
                    filter,
                    group_by,
                },
            )
            .await?;
        let kind = info.as_ref().map(|i| i.kind).unwrap_or(metric.kind);
        let agg = aggregation.unwrap_or_else(|| MetricAggregation::default_for(kind));
        chosen_agg = Some(agg);
        let unit = match agg {
            MetricAggregation::Count => Unit::Count(String::new()),
            MetricAggregation::Quantile(_) if metric.unit == "s" => Unit::Seconds,
            _ => Unit::from_otel(&metric.unit, agg == MetricAggregation::Rate),
        };
        // Busiest lines first when there are too many to draw.
        series.sort_by(|a, b| {
            let sum = |s: &crate::query::MetricSeriesPoints| {
                s.points.iter().map(|p| p.1.abs()).sum::<f64>()
            };
            sum(b).total_cmp(&sum(a))
        });
        left_out = series.len().saturating_sub(MAX_LINES);
        let mut c = TimeChart::new(
            format!("{} · {} ({})", metric.name, service, agg_name(agg)),
            unit,
            range.from_ms,
            range.to_ms,
            step,
        )
        .size(1300, 320)
        .adaptive_gaps(true);
        for line in series.into_iter().take(MAX_LINES) {
            c = c.series(series_name(&line.attributes), line.points);
        }
        let mut panel = ChartPanel::line(c);
        panel.wide = true;
        chart = Some(panel);
    }
    let rows = metrics
        .iter()
        .map(|m| MetricRow {
            name: m.name.clone(),
            kind: m.kind.as_str().to_string(),
            unit: m.unit.clone(),
            description: m.description.clone(),
            keys: m.attribute_keys.join(", "),
            series: m.series,
            href: params.with(&[
                ("service", service.as_deref()),
                ("name", Some(&m.name)),
                ("agg", None),
                ("filter", None),
                ("group_by", None),
            ]),
            selected: m.name == name,
        })
        .collect();
    let aggregations = [
        "", "avg", "min", "max", "last", "sum", "rate", "count", "p50", "p90", "p95", "p99",
    ]
    .iter()
    .map(|a| {
        let current = match chosen_agg {
            Some(agg) if params.get("agg").is_some() => agg_name(agg) == *a,
            _ => a.is_empty(),
        };
        (a.to_string(), current)
    })
    .collect();
    Ok(MetricsPage {
        layout: Layout::new(
            pages,
            "Metrics explorer",
            "metrics",
            &params,
            &choice,
            refresh,
        ),
        services: names
            .into_iter()
            .map(|n| {
                let sel = service.as_ref() == Some(&n);
                (n, sel)
            })
            .collect(),
        service: service.unwrap_or_default(),
        attribute_keys: selected
            .map(|m| m.attribute_keys.join(", "))
            .unwrap_or_default(),
        metrics: rows,
        name,
        aggregations,
        filter: filter_text,
        group_by: group_text,
        chart,
        left_out,
        help: EmptyHelp::of(pages),
        empty_title: "No metrics received from this service",
    })
}

pub fn agg_name(agg: MetricAggregation) -> String {
    match agg {
        MetricAggregation::Quantile(q) => format!("p{q}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
