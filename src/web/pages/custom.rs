//! `/dashboards` and `/dashboards/{name}`: the dashboards defined in `dashboards/*.toml`,
//! read on every request so an edited file shows on the next reload.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;

use super::metrics::agg_name;
use super::service::series_name;
use super::{
    Layout, PageError, Pages, Pairs, Params, merged, range_seconds, red_step, render, stat_points,
};
use crate::dashboards::{self, ChartKind, Dashboard, Panel, PanelQuery};
use crate::query::{MetricAggregation, MetricQuery, RedStat, RedSteps};
use crate::render::{TimeChart, Unit, single_stat_svg};
use crate::vocab::{RedFilter, TimeRange};

pub struct DashboardLink {
    pub href: String,
    pub title: String,
    pub description: String,
    pub panels: usize,
}

#[derive(Template)]
#[template(path = "dashboards.html")]
pub struct DashboardList {
    pub layout: Layout,
    pub dashboards: Vec<DashboardLink>,
    pub problems: Vec<String>,
    pub dir: String,
}

pub async fn list(State(pages): State<Pages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    let params = Params::from_pairs(pairs);
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let dir = pages.dashboards_dir.clone();
    let (dashboards, problems) = tokio::task::spawn_blocking(move || dashboards::load_dir(&dir))
        .await
        .map_err(|_| PageError::not_found("the dashboards could not be read"))?;
    let keep = params.with(&[]);
    render(&DashboardList {
        layout: Layout::new(
            &pages,
            "Dashboards",
            "dashboards",
            &params,
            &choice,
            refresh,
        ),
        dashboards: dashboards
            .into_iter()
            .map(|d| DashboardLink {
                href: format!("/dashboards/{}{keep}", d.name),
                title: d.title,
                description: d.description,
                panels: d.panels.len(),
            })
            .collect(),
        problems: problems.iter().map(|p| p.to_string()).collect(),
        dir: pages.dashboards_dir.display().to_string(),
    })
}

pub struct PanelView {
    pub title: String,
    pub svg: String,
    pub data: String,
    /// Table panels: (series, latest, min, max, mean).
    pub rows: Vec<(String, String, String, String, String)>,
    pub is_table: bool,
    pub wide: bool,
    pub subtitle: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub layout: Layout,
    pub title: String,
    pub description: String,
    pub file: String,
    pub stats: Vec<PanelView>,
    pub panels: Vec<PanelView>,
}

pub async fn page(
    State(pages): State<Pages>,
    Path(name): Path<String>,
    pairs: Pairs,
) -> Result<Html<String>, PageError> {
    render(&build(&pages, name, Params::from_pairs(pairs)).await?)
}

/// Builds a custom dashboard (public for the render-time benchmark).
pub async fn build(
    pages: &Pages,
    name: String,
    params: Params,
) -> Result<DashboardPage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let file = pages.dashboards_dir.join(format!("{name}.toml"));
    if !valid || !file.is_file() {
        return Err(PageError::not_found(format!(
            "There is no dashboard {name:?}: add {} (see /dashboards for the list).",
            file.display()
        )));
    }
    let load = file.clone();
    let dashboard: Dashboard = tokio::task::spawn_blocking(move || dashboards::load_file(&load))
        .await
        .map_err(|_| PageError::not_found("the dashboard could not be read"))?
        .map_err(|problems| {
            PageError::invalid(format!(
                "The dashboard file has problems (run `redline check`):\n{}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        })?;
    let range = choice.range;
    let mut stats = Vec::new();
    let mut panels = Vec::new();
    // Panels on the same service or endpoint share one read.
    let mut reads = RedReads::new();
    for panel in &dashboard.panels {
        let view = panel_view(pages, panel, range, &mut reads).await?;
        if panel.kind == ChartKind::Stat {
            stats.push(view);
        } else {
            panels.push(view);
        }
    }
    Ok(DashboardPage {
        layout: Layout::new(
            pages,
            dashboard.title.clone(),
            "dashboards",
            &params,
            &choice,
            refresh,
        ),
        title: dashboard.title,
        description: dashboard.description,
        file: file.display().to_string(),
        stats,
        panels,
    })
}

/// The unit a RED statistic is in.
fn red_unit(stat: RedStat) -> Unit {
    match stat {
        RedStat::Quantile(_) | RedStat::Mean | RedStat::Max => Unit::Millis,
        RedStat::Rate => Unit::PerSecond("req/s".into()),
        RedStat::ErrorRate => Unit::Ratio,
        RedStat::Requests => Unit::Count("requests".into()),
        RedStat::Errors => Unit::Count("errors".into()),
    }
}

/// RED reads of one page by (service, method, route).
type RedReads = std::collections::HashMap<(String, Option<String>, Option<String>), RedSteps>;

async fn panel_view(
    pages: &Pages,
    panel: &Panel,
    range: TimeRange,
    reads: &mut RedReads,
) -> Result<PanelView, PageError> {
    let step = red_step(range, 90);
    let (unit, series, single, subtitle) = match &panel.query {
        PanelQuery::Red {
            stats,
            method,
            route,
        } => {
            let key = (panel.service.clone(), method.clone(), route.clone());
            if !reads.contains_key(&key) {
                let read = pages
                    .query
                    .red_steps(
                        RedFilter {
                            service: Some(panel.service.clone()),
                            method: method.clone(),
                            route: route.clone(),
                        },
                        range,
                        step,
                        false,
                    )
                    .await?;
                reads.insert(key.clone(), read);
            }
            let red = &reads[&key];
            let steps = red.groups.values().next().cloned().unwrap_or_default();
            let total = merged(steps.values());
            let series: Vec<(String, Vec<(i64, f64)>)> = stats
                .iter()
                .map(|(name, stat)| (name.clone(), stat_points(red, &steps, *stat)))
                .collect();
            let single = stats
                .first()
                .and_then(|(_, stat)| stat.value(&total, range_seconds(range)))
                .filter(|_| total.requests > 0);
            let unit = stats
                .first()
                .map(|(_, s)| red_unit(*s))
                .unwrap_or(Unit::Count(String::new()));
            let scope = match (method, route) {
                (Some(m), Some(r)) => format!("{} {m} {r}", panel.service),
                _ => panel.service.clone(),
            };
            (unit, series, single, scope)
        }
        PanelQuery::Metric {
            name,
            aggregation,
            group_by,
            filter,
        } => {
            let (info, lines) = pages
                .query
                .metric_series(
                    &panel.service,
                    name,
                    MetricQuery {
                        range,
                        step_ms: step,
                        aggregation: *aggregation,
                        filter: filter.clone(),
                        group_by: group_by.clone(),
                    },
                )
                .await?;
            let agg = aggregation
                .or_else(|| {
                    info.as_ref()
                        .map(|i| MetricAggregation::default_for(i.kind))
                })
                .unwrap_or(MetricAggregation::Avg);
            let otel_unit = info.as_ref().map(|i| i.unit.clone()).unwrap_or_default();
            let unit = match agg {
                MetricAggregation::Count => Unit::Count(String::new()),
                MetricAggregation::Quantile(_) if otel_unit == "s" => Unit::Seconds,
                _ => Unit::from_otel(&otel_unit, agg == MetricAggregation::Rate),
            };
            let single = lines.first().and_then(|l| l.points.last()).map(|p| p.1);
            let series = lines
                .into_iter()
                .map(|l| (series_name(&l.attributes), l.points))
                .collect();
            (
                unit,
                series,
                single,
                format!("{} · {name} · {}", panel.service, agg_name(agg)),
            )
        }
    };
    let unit = panel.unit.clone().unwrap_or(unit);
    let mut chart = TimeChart::new(&panel.title, unit.clone(), range.from_ms, range.to_ms, step);
    for (name, points) in &series {
        chart = chart.series(name.clone(), points.clone());
    }
    for t in &panel.thresholds {
        chart = chart.threshold(t.value, t.label.clone());
    }
    if matches!(panel.query, PanelQuery::Metric { .. }) {
        chart = chart.adaptive_gaps(true);
    }
    if panel.wide {
        // Drawn at the width it is shown at, so text keeps its size.
        chart = chart.size(1300, 280);
    }
    let mut view = PanelView {
        title: panel.title.clone(),
        svg: String::new(),
        data: String::new(),
        rows: Vec::new(),
        is_table: false,
        wide: panel.wide,
        subtitle,
    };
    match panel.kind {
        ChartKind::Line => view.svg = chart.line_svg(),
        ChartKind::StackedArea => view.svg = chart.stacked_svg(),
        ChartKind::Bar => view.svg = chart.bars_svg(),
        ChartKind::Stat => {
            view.svg = single_stat_svg(&panel.title, single, &unit, &panel.thresholds, 300, 110);
        }
        ChartKind::Table => {
            view.is_table = true;
            view.rows = series
                .iter()
                .map(|(name, points)| {
                    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
                    let fmt =
                        |v: Option<f64>| v.map(|v| unit.format(v)).unwrap_or_else(|| "–".into());
                    let min = values.iter().copied().reduce(f64::min);
                    let max = values.iter().copied().reduce(f64::max);
                    let mean = (!values.is_empty())
                        .then(|| values.iter().sum::<f64>() / values.len() as f64);
                    (
                        name.clone(),
                        fmt(values.last().copied()),
                        fmt(min),
                        fmt(max),
                        fmt(mean),
                    )
                })
                .collect();
        }
    }
    if chart.has_data() && !matches!(panel.kind, ChartKind::Stat | ChartKind::Table) {
        view.data = chart.table_html();
    }
    Ok(view)
}
