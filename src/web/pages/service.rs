//! `/services/{service}` (charts, status classes, endpoints table, resource panels) and
//! `/services/{service}/endpoints?method=…&route=…` (the same charts for one endpoint, the
//! latency distribution and exemplar traces).

use super::instances::{InstanceRow, instance_rows};
use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;

use super::traces::{TraceRow, trace_row};
use super::{
    ChartTarget, EmptyHelp, Layout, PageError, Pages, Pairs, Params, SortHeader, cmp_opt, fmt_opt,
    merged, range_seconds, red_step, render, sort_headers, sort_of, stat_points, step_for,
};
use crate::aggregate::red::RedStats;
use crate::model::STATUS_CLASSES;
use crate::query::{MetricAggregation, MetricQuery, RedStat, RedSteps};
use crate::render::url_component;
use crate::render::{TimeChart, Unit, bar_chart_svg, sparkline_svg};
use crate::vocab::{RedFilter, TimeRange, TraceFilter};

/// A chart with its text equivalent.
pub struct ChartPanel {
    pub title: String,
    pub svg: String,
    /// The data as a table, for a `<details>` under the chart (may be empty).
    pub table: String,
    pub wide: bool,
}

impl ChartPanel {
    pub fn line(chart: TimeChart) -> Self {
        ChartPanel {
            title: chart.title.clone(),
            svg: chart.line_svg(),
            table: if chart.has_data() {
                chart.table_html()
            } else {
                String::new()
            },
            wide: false,
        }
    }

    pub fn stacked(chart: TimeChart) -> Self {
        ChartPanel {
            title: chart.title.clone(),
            svg: chart.stacked_svg(),
            table: if chart.has_data() {
                chart.table_html()
            } else {
                String::new()
            },
            wide: false,
        }
    }
}

/// A headline figure.
pub struct Figure {
    pub label: &'static str,
    pub value: String,
    pub bad: bool,
}

pub struct EndpointRow {
    pub method: String,
    pub route: String,
    pub href: String,
    pub rate: String,
    pub errors: String,
    pub errors_bad: bool,
    pub p50: String,
    pub p95: String,
    pub p99: String,
    pub spark: String,
}

#[derive(Template)]
#[template(path = "service.html")]
pub struct ServicePage {
    pub layout: Layout,
    pub service: String,
    pub figures: Vec<Figure>,
    pub charts: Vec<ChartPanel>,
    pub headers: Vec<SortHeader>,
    pub rows: Vec<EndpointRow>,
    pub resources: Vec<ChartPanel>,
    pub logs: super::logs::LogPanel,
    pub traces_href: String,
    /// Instances (`service.instance.id`) heard from lately, most recent first.
    pub instances: Vec<InstanceRow>,
    pub more_instances: u64,
    pub help: EmptyHelp,
    pub empty_title: String,
}

/// Sort keys of the endpoints table.
const COLUMNS: [(&str, &str, bool); 7] = [
    ("method", "method", false),
    ("name", "route", false),
    ("rate", "requests/s", true),
    ("errors", "errors", true),
    ("p50", "p50", true),
    ("p95", "p95", true),
    ("p99", "p99", true),
];

pub async fn service_page(
    State(pages): State<Pages>,
    Path(service): Path<String>,
    pairs: Pairs,
) -> Result<Html<String>, PageError> {
    render(&build_service(&pages, service, Params::from_pairs(pairs)).await?)
}

/// Builds the service page (public for the render-time benchmark).
pub async fn build_service(
    pages: &Pages,
    service: String,
    params: Params,
) -> Result<ServicePage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let red = pages
        .query
        .red_steps(
            RedFilter {
                service: Some(service.clone()),
                ..Default::default()
            },
            range,
            red_step(range, 90),
            true,
        )
        .await?;
    // The whole service per step: every endpoint merged.
    let mut service_steps: BTreeMap<i64, RedStats> = BTreeMap::new();
    for steps in red.groups.values() {
        for (start, stats) in steps {
            service_steps.entry(*start).or_default().merge(stats);
        }
    }
    let charts = red_charts(pages, &red, &service_steps, range, (&service, None, None));
    let total = merged(service_steps.values());
    let seconds = range_seconds(range);

    // Endpoints, each with a coarse request-rate sparkline.
    let spark_step = step_for(range, 30).max(red.step_ms);
    let rate_unit = Unit::PerSecond("req/s".into());
    let mut rows: Vec<(RedStats, EndpointRow)> = red
        .groups
        .iter()
        .map(|(key, steps)| {
            let total = merged(steps.values());
            let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
            for (start, stats) in steps {
                *buckets
                    .entry(start.div_euclid(spark_step) * spark_step)
                    .or_default() += stats.requests;
            }
            let now = crate::vocab::now_ms();
            let points: Vec<(i64, f64)> = buckets
                .into_iter()
                .map(|(start, n)| {
                    let secs = ((start + spark_step).min(now) - start).max(1000) as f64 / 1000.0;
                    (start, n as f64 / secs)
                })
                .collect();
            let error_rate = total.error_rate();
            let row = EndpointRow {
                method: key.method.clone(),
                route: key.route.clone(),
                href: format!(
                    "/services/{}/endpoints{}",
                    url_component(&service),
                    params.with(&[
                        ("method", Some(&key.method)),
                        ("route", Some(&key.route)),
                        ("sort", None),
                        ("dir", None),
                    ])
                ),
                rate: rate_unit.format(total.requests as f64 / seconds),
                errors: Unit::Ratio.format(error_rate),
                errors_bad: error_rate >= 0.01,
                p50: fmt_opt(total.quantile_ms(0.5), &Unit::Millis),
                p95: fmt_opt(total.quantile_ms(0.95), &Unit::Millis),
                p99: fmt_opt(total.quantile_ms(0.99), &Unit::Millis),
                spark: sparkline_svg(
                    &format!("{} {} requests/s", key.method, key.route),
                    &points,
                    range.from_ms,
                    range.to_ms,
                    spark_step,
                    &rate_unit,
                ),
            };
            (total, row)
        })
        .collect();
    let (key, descending) = sort_of(&params, "rate");
    rows.sort_by(|(a, ra), (b, rb)| {
        let order = match key {
            "method" => ra.method.cmp(&rb.method).then(ra.route.cmp(&rb.route)),
            "name" => ra.route.cmp(&rb.route).then(ra.method.cmp(&rb.method)),
            "errors" => a.error_rate().total_cmp(&b.error_rate()),
            "p50" => cmp_opt(a.quantile_ms(0.5), b.quantile_ms(0.5)),
            "p95" => cmp_opt(a.quantile_ms(0.95), b.quantile_ms(0.95)),
            "p99" => cmp_opt(a.quantile_ms(0.99), b.quantile_ms(0.99)),
            _ => a.requests.cmp(&b.requests),
        };
        if descending { order.reverse() } else { order }
    });

    let resources = resource_panels(pages, &service, range).await?;
    let logs = super::logs::service_panel(pages, &service, range).await?;
    let empty_title = format!("No requests from {service} in this time range");
    let (instances, more_instances) = instance_rows(pages, &service);
    Ok(ServicePage {
        layout: Layout::new(
            pages,
            service.clone(),
            "overview",
            &params,
            &choice,
            refresh,
        ),
        figures: figures(&total, seconds),
        charts: if red.groups.is_empty() {
            Vec::new()
        } else {
            charts
        },
        headers: sort_headers(&params, &COLUMNS, "rate"),
        rows: rows.into_iter().map(|(_, row)| row).collect(),
        resources,
        logs,
        traces_href: format!("/traces?service={}", url_component(&service)),
        instances,
        more_instances,
        help: EmptyHelp::of(pages),
        empty_title,
        service,
    })
}

fn figures(total: &RedStats, seconds: f64) -> Vec<Figure> {
    let error_rate = total.error_rate();
    vec![
        Figure {
            label: "requests/s",
            value: Unit::PerSecond("req/s".into()).format(total.requests as f64 / seconds),
            bad: false,
        },
        Figure {
            label: "requests",
            value: super::overview::number_int(total.requests),
            bad: false,
        },
        Figure {
            label: "error rate",
            value: Unit::Ratio.format(error_rate),
            bad: error_rate >= 0.01,
        },
        Figure {
            label: "p50",
            value: fmt_opt(total.quantile_ms(0.5), &Unit::Millis),
            bad: false,
        },
        Figure {
            label: "p95",
            value: fmt_opt(total.quantile_ms(0.95), &Unit::Millis),
            bad: false,
        },
        Figure {
            label: "p99",
            value: fmt_opt(total.quantile_ms(0.99), &Unit::Millis),
            bad: false,
        },
    ]
}

/// Request rate, error rate, latency percentiles and status classes over time, with the
/// alert engine's thresholds and firing periods when it has any for the chart.
fn red_charts(
    pages: &Pages,
    red: &RedSteps,
    steps: &BTreeMap<i64, RedStats>,
    range: TimeRange,
    endpoint: (&str, Option<&str>, Option<&str>),
) -> Vec<ChartPanel> {
    let (service, method, route) = endpoint;
    let target = |stat: &'static str| ChartTarget {
        service,
        method,
        route,
        stat,
    };
    let chart = |title: &str, unit: Unit| {
        TimeChart::new(title, unit, range.from_ms, range.to_ms, red.step_ms)
    };
    let annotate = |mut chart: TimeChart, stats: &[&'static str]| {
        for stat in stats {
            let notes = pages.annotations(target(stat), range);
            chart.thresholds.extend(notes.thresholds);
            chart.shaded.extend(notes.firing);
        }
        chart
    };
    let rate = annotate(
        chart("Request rate", Unit::PerSecond("req/s".into()))
            .series("requests/s", stat_points(red, steps, RedStat::Rate)),
        &["rate"],
    );
    let errors = annotate(
        chart("Error rate", Unit::Ratio)
            .series("error rate", stat_points(red, steps, RedStat::ErrorRate)),
        &["error_rate"],
    );
    let latency = annotate(
        chart("Latency percentiles", Unit::Millis)
            .series("p50", stat_points(red, steps, RedStat::Quantile(50)))
            .series("p95", stat_points(red, steps, RedStat::Quantile(95)))
            .series("p99", stat_points(red, steps, RedStat::Quantile(99))),
        &["p50", "p95", "p99"],
    );
    let mut status = chart("Requests by status class", Unit::PerSecond("req/s".into()));
    for (i, class) in STATUS_CLASSES.iter().enumerate() {
        let points: Vec<(i64, f64)> = steps
            .iter()
            .filter(|(_, s)| s.requests > 0)
            .map(|(start, s)| (*start, s.status[i] as f64 / red.seconds(*start)))
            .collect();
        if points.iter().any(|p| p.1 > 0.0) {
            status = status.series(*class, points);
        }
    }
    let unclassified: Vec<(i64, f64)> = steps
        .iter()
        .filter(|(_, s)| s.requests > s.status.iter().sum::<u64>())
        .map(|(start, s)| {
            let n = s.requests - s.status.iter().sum::<u64>();
            (*start, n as f64 / red.seconds(*start))
        })
        .collect();
    if !unclassified.is_empty() {
        status = status.series("no status code", unclassified);
    }
    vec![
        ChartPanel::line(rate),
        ChartPanel::line(errors),
        ChartPanel::line(latency),
        ChartPanel::stacked(status),
    ]
}

/// A resource panel the service page looks for among the service's metrics.
struct ResourceSpec {
    title: &'static str,
    /// The first name present is charted.
    names: &'static [&'static str],
    aggregation: Option<MetricAggregation>,
    group_by: &'static [&'static str],
    stacked: bool,
}

const RESOURCES: [ResourceSpec; 6] = [
    ResourceSpec {
        title: "CPU",
        names: &[
            "process.cpu.utilization",
            "process.cpu.time",
            "system.cpu.utilization",
        ],
        aggregation: None,
        group_by: &[],
        stacked: false,
    },
    ResourceSpec {
        title: "Memory",
        names: &[
            "process.memory.usage",
            "process.runtime.jvm.memory.usage",
            "system.memory.usage",
        ],
        aggregation: None,
        group_by: &[],
        stacked: false,
    },
    ResourceSpec {
        title: "DB pool connections",
        names: &["db.client.connection.count", "db.client.connections.usage"],
        aggregation: Some(MetricAggregation::Last),
        group_by: &["db.client.connection.state", "state"],
        stacked: true,
    },
    ResourceSpec {
        title: "Cache hit ratio",
        names: &["cache.requests"],
        aggregation: Some(MetricAggregation::Sum),
        group_by: &["cache.result"],
        stacked: false,
    },
    ResourceSpec {
        title: "Rate-limit rejections",
        names: &["ratelimit.rejections", "rate_limit.rejections"],
        aggregation: Some(MetricAggregation::Rate),
        group_by: &[],
        stacked: false,
    },
    ResourceSpec {
        title: "Circuit-breaker state",
        names: &["circuit_breaker.state"],
        aggregation: Some(MetricAggregation::Max),
        group_by: &[],
        stacked: false,
    },
];

/// Panels for the resource metrics the service exports (none when it exports none).
async fn resource_panels(
    pages: &Pages,
    service: &str,
    range: TimeRange,
) -> Result<Vec<ChartPanel>, PageError> {
    let metrics = pages.query.metrics(Some(service)).await?;
    let step = step_for(range, 120);
    let mut panels = Vec::new();
    for spec in &RESOURCES {
        let Some(metric) = spec
            .names
            .iter()
            .find_map(|name| metrics.iter().find(|m| m.name == *name))
        else {
            continue;
        };
        let group_by: Vec<String> = spec
            .group_by
            .iter()
            .filter(|k| metric.attribute_keys.iter().any(|a| a == *k))
            .map(|k| k.to_string())
            .collect();
        let (info, series) = pages
            .query
            .metric_series(
                service,
                &metric.name,
                MetricQuery {
                    range,
                    step_ms: step,
                    aggregation: spec.aggregation,
                    filter: BTreeMap::new(),
                    group_by: Some(group_by),
                },
            )
            .await?;
        let kind = info.as_ref().map(|i| i.kind).unwrap_or(metric.kind);
        let aggregation = spec
            .aggregation
            .unwrap_or_else(|| MetricAggregation::default_for(kind));
        let title = format!("{} · {}", spec.title, metric.name);
        let mut chart = TimeChart::new(
            title,
            Unit::from_otel(&metric.unit, aggregation == MetricAggregation::Rate),
            range.from_ms,
            range.to_ms,
            step,
        )
        .adaptive_gaps(true);
        if spec.title == "Cache hit ratio" {
            chart.unit = Unit::Ratio;
            chart = chart.series("hit ratio", hit_ratio(&series));
        } else {
            for line in series {
                chart = chart.series(series_name(&line.attributes), line.points);
            }
        }
        panels.push(if spec.stacked {
            ChartPanel::stacked(chart)
        } else {
            ChartPanel::line(chart)
        });
    }
    Ok(panels)
}

/// hits / (hits + misses) per step from series grouped by `cache.result`.
fn hit_ratio(series: &[crate::query::MetricSeriesPoints]) -> Vec<(i64, f64)> {
    let mut steps: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for line in series {
        let hit = line.attributes.get("cache.result").map(String::as_str) == Some("hit");
        for (t, v) in &line.points {
            let entry = steps.entry(*t).or_default();
            if hit {
                entry.0 += v;
            }
            entry.1 += v;
        }
    }
    steps
        .into_iter()
        .filter(|(_, (_, all))| *all > 0.0)
        .map(|(t, (hits, all))| (t, hits / all))
        .collect()
}

/// `k=v, k=v` of a series' attributes (or "all" for none).
pub fn series_name(attributes: &BTreeMap<String, String>) -> String {
    if attributes.is_empty() {
        "all".into()
    } else {
        attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// One endpoint

#[derive(Template)]
#[template(path = "endpoint.html")]
pub struct EndpointPage {
    pub layout: Layout,
    pub service: String,
    pub service_href: String,
    pub method: String,
    pub route: String,
    pub figures: Vec<Figure>,
    pub charts: Vec<ChartPanel>,
    pub distribution: String,
    pub slowest: Vec<TraceRow>,
    pub erroring: Vec<TraceRow>,
    /// Recent records at ERROR and above of the endpoint's kept traces.
    pub error_logs: Vec<super::logs::LogRow>,
    pub traces_href: String,
    pub help: EmptyHelp,
    pub empty_title: String,
    pub has_data: bool,
}

pub async fn endpoint_page(
    State(pages): State<Pages>,
    Path(service): Path<String>,
    pairs: Pairs,
) -> Result<Html<String>, PageError> {
    render(&build_endpoint(&pages, service, Params::from_pairs(pairs)).await?)
}

/// Builds the endpoint page (public for the render-time benchmark).
pub async fn build_endpoint(
    pages: &Pages,
    service: String,
    params: Params,
) -> Result<EndpointPage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let method = params
        .given("method")
        .ok_or_else(|| PageError::bad("method", "the endpoint's method is required"))?
        .to_string();
    let route = params
        .given("route")
        .ok_or_else(|| PageError::bad("route", "the endpoint's route is required"))?
        .to_string();
    let red = pages
        .query
        .red_steps(
            RedFilter {
                service: Some(service.clone()),
                method: Some(method.clone()),
                route: Some(route.clone()),
            },
            range,
            red_step(range, 90),
            false,
        )
        .await?;
    let steps = red.groups.values().next().cloned().unwrap_or_default();
    let charts = red_charts(
        pages,
        &red,
        &steps,
        range,
        (&service, Some(&method), Some(&route)),
    );
    let total = merged(steps.values());
    let trace_filter = |errors_only, slowest_first| TraceFilter {
        service: Some(service.clone()),
        method: Some(method.clone()),
        route: Some(route.clone()),
        errors_only,
        min_duration_ms: None,
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit: 10,
        slowest_first,
    };
    let slowest = pages.query.traces(trace_filter(false, true)).await?;
    let erroring = pages.query.traces(trace_filter(true, false)).await?;
    let recent = pages.query.traces(TraceFilter {
        limit: 200,
        ..trace_filter(false, false)
    });
    let ids = recent.await?.into_iter().map(|t| t.trace_id).collect();
    let error_logs = super::logs::error_logs(pages, None, Some(ids), range).await?;
    let to_rows = |traces: Vec<crate::vocab::TraceSummary>| -> Vec<TraceRow> {
        traces.into_iter().map(trace_row).collect()
    };
    let title = format!("{method} {route}");
    Ok(EndpointPage {
        layout: Layout::new(pages, title, "overview", &params, &choice, refresh),
        service_href: format!(
            "/services/{}{}",
            url_component(&service),
            params.with(&[("method", None), ("route", None)])
        ),
        traces_href: format!(
            "/traces?service={}&method={}&route={}",
            url_component(&service),
            url_component(&method),
            url_component(&route)
        ),
        figures: figures(&total, range_seconds(range)),
        distribution: distribution_svg(&total),
        has_data: total.requests > 0,
        charts,
        slowest: to_rows(slowest),
        erroring: to_rows(erroring),
        error_logs,
        help: EmptyHelp::of(pages),
        empty_title: format!("No requests to {method} {route} of {service} in this time range"),
        service,
        method,
        route,
    })
}

/// The latency distribution as a histogram: the sketch's percentiles (1 % of requests each)
/// counted into log-spaced buckets with round bounds.
pub fn distribution_svg(total: &RedStats) -> String {
    let title = "Latency distribution";
    let quantiles: Vec<f64> = (0..100)
        .filter_map(|i| total.quantile_ms((i as f64 + 0.5) / 100.0))
        .collect();
    if quantiles.is_empty() || total.requests == 0 {
        return bar_chart_svg(title, &[], &Unit::Count("requests".into()), 640, 200);
    }
    let lo = quantiles
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(0.001);
    let hi = total
        .max_ms()
        .unwrap_or(lo)
        .max(quantiles.iter().copied().fold(0.0, f64::max));
    // Round bounds 1-2-5 × 10^k between lo and hi.
    let mut bounds: Vec<f64> = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while bounds.last().is_none_or(|b| *b < hi) {
        for m in [1.0, 2.0, 5.0] {
            let b = m * decade;
            if b > lo && bounds.last().is_none_or(|last| *last < hi) {
                bounds.push(b);
            }
        }
        decade *= 10.0;
    }
    let mut counts = vec![0.0; bounds.len()];
    for q in &quantiles {
        let i = bounds
            .iter()
            .position(|b| q <= b)
            .unwrap_or(bounds.len() - 1);
        counts[i] += total.requests as f64 / quantiles.len() as f64;
    }
    let bars: Vec<(String, f64)> = bounds
        .iter()
        .zip(counts)
        .map(|(b, c)| (format!("≤{}", Unit::Millis.format(*b)), c.round()))
        .collect();
    bar_chart_svg(title, &bars, &Unit::Count("requests".into()), 640, 200)
}
