//! `/`: every service with its RED figures and sparklines, and redline's own health.

use askama::Template;
use axum::extract::State;
use axum::response::Html;

use super::{
    EmptyHelp, Layout, PageError, Pages, Pairs, Params, SortHeader, cmp_opt, fmt_bytes, fmt_opt,
    merged, range_seconds, red_step, render, sort_headers, sort_of, stat_points,
};
use crate::query::RedStat;
use crate::render::url_component;
use crate::render::{Unit, number, sparkline_svg};
use crate::store::writer::WriterState;
use crate::vocab::RedFilter;

pub struct ServiceRow {
    pub name: String,
    pub href: String,
    pub rate: String,
    pub errors: String,
    pub errors_bad: bool,
    pub p50: String,
    pub p95: String,
    pub p99: String,
    pub spark_rate: String,
    pub spark_errors: String,
    pub spark_p99: String,
}

pub struct HealthView {
    pub ingest_rate: String,
    pub accepted: String,
    pub rejected: String,
    pub rejected_bad: bool,
    pub queue: String,
    pub series: String,
    pub overflow: String,
    pub overflow_bad: bool,
    pub database: String,
    /// Spans kept for the trace views, and those shed (budget, memory, clock).
    pub traces: String,
    pub traces_bad: bool,
    pub traces_detail: String,
    pub memory: String,
    pub memory_bad: bool,
    /// Acknowledged data not yet stored.
    pub unwritten: String,
    /// Every stage running, or what is not.
    pub stages: String,
    pub stages_bad: bool,
    /// The store writer: writing, or the fault it is retrying.
    pub store: String,
    pub store_bad: bool,
    /// OTLP forwarding, when configured: where to, what was sent and dropped.
    pub forward: Option<ForwardView>,
}

/// The health panel's forwarding figures.
pub struct ForwardView {
    pub upstream: String,
    /// Items sent and dropped, per signal.
    pub summary: String,
    pub bad: bool,
    /// The queue, and the drops per signal.
    pub detail: String,
}

fn forward_view(status: crate::forward::ForwardStatus) -> ForwardView {
    let [spans, points, logs] = status.totals.sent;
    let [spans_dropped, points_dropped, logs_dropped] = status.totals.dropped;
    let dropped = spans_dropped + points_dropped + logs_dropped;
    ForwardView {
        summary: format!(
            "{} sent, {} dropped",
            number_int(spans + points + logs),
            number_int(dropped)
        ),
        bad: dropped > 0,
        detail: format!(
            "sent: {} spans, {} points, {} log records; dropped: {} spans, {} points, {} log \
             records; queue {} of {}",
            number_int(spans),
            number_int(points),
            number_int(logs),
            number_int(spans_dropped),
            number_int(points_dropped),
            number_int(logs_dropped),
            fmt_bytes(status.queue_bytes as u64),
            fmt_bytes(status.queue_max_bytes as u64)
        ),
        upstream: status.upstream,
    }
}

/// One authenticated sender: an OTLP API key's name or a client certificate's, and what it
/// has sent since start.
pub struct SenderRow {
    pub name: String,
    pub credential: &'static str,
    pub services: String,
    pub accepted: String,
    pub last_seen: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    pub layout: Layout,
    pub rows: Vec<ServiceRow>,
    /// Who sends what; `None` when exporters need no credentials.
    pub senders: Option<Vec<SenderRow>>,
    pub headers: Vec<SortHeader>,
    pub health: HealthView,
    pub help: EmptyHelp,
    pub empty_title: &'static str,
}

/// Sort keys of the services table.
const COLUMNS: [(&str, &str, bool); 6] = [
    ("name", "service", false),
    ("rate", "requests/s", true),
    ("errors", "errors", true),
    ("p50", "p50", true),
    ("p95", "p95", true),
    ("p99", "p99", true),
];

pub async fn page(State(pages): State<Pages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    render(&build(&pages, Params::from_pairs(pairs)).await?)
}

/// Builds the overview (public for the render-time benchmark).
pub async fn build(pages: &Pages, params: Params) -> Result<Overview, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let step = red_step(range, 40);
    let red = pages
        .query
        .red_steps(RedFilter::default(), range, step, false)
        .await?;
    let seconds = range_seconds(range);
    let rate_unit = Unit::PerSecond("req/s".into());
    struct Figures {
        name: String,
        rate: f64,
        errors: f64,
        p50: Option<f64>,
        p95: Option<f64>,
        p99: Option<f64>,
        row: ServiceRow,
    }
    let mut figures: Vec<Figures> = red
        .groups
        .iter()
        .map(|(key, steps)| {
            let total = merged(steps.values());
            let rate = total.requests as f64 / seconds;
            let errors = total.error_rate();
            let (p50, p95, p99) = (
                total.quantile_ms(0.5),
                total.quantile_ms(0.95),
                total.quantile_ms(0.99),
            );
            let spark = |stat, unit: &Unit, label: &str| {
                sparkline_svg(
                    &format!("{} {label}", key.service),
                    &stat_points(&red, steps, stat),
                    range.from_ms,
                    range.to_ms,
                    red.step_ms,
                    unit,
                )
            };
            let row = ServiceRow {
                name: key.service.clone(),
                href: format!(
                    "/services/{}{}",
                    url_component(&key.service),
                    params.with(&[("sort", None), ("dir", None)])
                ),
                rate: rate_unit.format(rate),
                errors: Unit::Ratio.format(errors),
                errors_bad: errors >= 0.01,
                p50: fmt_opt(p50, &Unit::Millis),
                p95: fmt_opt(p95, &Unit::Millis),
                p99: fmt_opt(p99, &Unit::Millis),
                spark_rate: spark(RedStat::Rate, &rate_unit, "requests/s"),
                spark_errors: spark(RedStat::ErrorRate, &Unit::Ratio, "error rate"),
                spark_p99: spark(RedStat::Quantile(99), &Unit::Millis, "p99"),
            };
            Figures {
                name: key.service.clone(),
                rate,
                errors,
                p50,
                p95,
                p99,
                row,
            }
        })
        .collect();
    let (key, descending) = sort_of(&params, "name");
    figures.sort_by(|a, b| {
        let order = match key {
            "rate" => a.rate.total_cmp(&b.rate),
            "errors" => a.errors.total_cmp(&b.errors),
            "p50" => cmp_opt(a.p50, b.p50),
            "p95" => cmp_opt(a.p95, b.p95),
            "p99" => cmp_opt(a.p99, b.p99),
            _ => a.name.cmp(&b.name),
        };
        if descending { order.reverse() } else { order }
    });
    Ok(Overview {
        layout: Layout::new(pages, "Overview", "overview", &params, &choice, refresh),
        rows: figures.into_iter().map(|f| f.row).collect(),
        headers: sort_headers(&params, &COLUMNS, "name"),
        health: health(pages).await,
        senders: senders(pages),
        help: EmptyHelp::of(pages),
        empty_title: "No requests in this time range",
    })
}

fn senders(pages: &Pages) -> Option<Vec<SenderRow>> {
    let auth = &pages.otlp_access.as_ref()?.auth;
    let views = auth.senders();
    if views.is_empty() && !auth.requires_api_key() {
        return None;
    }
    Some(
        views
            .into_iter()
            .map(|view| {
                let mut services = view.services.join(", ");
                if view.more_services {
                    services.push_str(", …");
                }
                let accepted = if view.accepted.is_empty() {
                    "nothing yet".to_string()
                } else {
                    view.accepted
                        .iter()
                        .map(|(item, count)| format!("{} {item}", number_int(*count)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                SenderRow {
                    name: view.name,
                    credential: view.credential.as_str(),
                    services,
                    accepted,
                    last_seen: view
                        .last_ms
                        .map(crate::render::format_utc)
                        .unwrap_or_else(|| "never".into()),
                }
            })
            .collect(),
    )
}

/// Size of a file, 0 when it is missing (read off the runtime, as `tokio::fs` does).
async fn file_len(path: &std::path::Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn health(pages: &Pages) -> HealthView {
    let stats = pages.live.stats();
    let totals = crate::self_metrics::ingest_totals();
    let rejected = totals.spans_rejected + totals.points_rejected + totals.log_records_rejected;
    let overflow =
        stats.overflow.services + stats.overflow.endpoints + stats.overflow.metric_series;
    let database = file_len(&pages.database_path).await
        + file_len(&pages.database_path.with_extension("db-wal")).await;
    let depth = pages.queue.depth();
    let readiness = pages.readiness.as_ref();
    let trouble = readiness.and_then(|r| r.stages.trouble());
    let store = readiness.map(|r| r.writer.status().state);
    let traces_dropped = stats.traces.traces_dropped_for_budget
        + stats.traces.spans_dropped_for_budget
        + stats.traces.spans_dropped_for_memory
        + stats.traces.spans_dropped_for_clock;
    HealthView {
        ingest_rate: pages
            .ingest_rate()
            .map(|r| format!("{} items/s", number(r)))
            .unwrap_or_else(|| "measuring…".into()),
        accepted: format!(
            "{} spans, {} points, {} log records",
            number_int(totals.spans_accepted),
            number_int(totals.points_accepted),
            number_int(totals.log_records_accepted)
        ),
        rejected: format!(
            "{} spans, {} points, {} log records",
            number_int(totals.spans_rejected),
            number_int(totals.points_rejected),
            number_int(totals.log_records_rejected)
        ),
        rejected_bad: rejected > 0,
        queue: format!(
            "{} / {} ({})",
            number_int(depth as u64),
            number_int(pages.queue_capacity as u64),
            Unit::Ratio.format(depth as f64 / pages.queue_capacity.max(1) as f64)
        ),
        series: format!(
            "{} services, {} endpoints, {} metric series",
            stats.services, stats.endpoints, stats.metric_series
        ),
        overflow: format!(
            "{} services, {} endpoints, {} metric series",
            stats.overflow.services, stats.overflow.endpoints, stats.overflow.metric_series
        ),
        overflow_bad: overflow > 0,
        database: fmt_bytes(database),
        traces: format!(
            "{} spans kept, {} dropped",
            number_int(stats.traces.kept_spans),
            number_int(traces_dropped)
        ),
        traces_bad: traces_dropped > 0,
        traces_detail: format!(
            "dropped: {} new traces and {} spans over the keep budget, {} spans while the \
             writer was behind, {} spans outside the clock window",
            number_int(stats.traces.traces_dropped_for_budget),
            number_int(stats.traces.spans_dropped_for_budget),
            number_int(stats.traces.spans_dropped_for_memory),
            number_int(stats.traces.spans_dropped_for_clock)
        ),
        memory: readiness.map_or_else(String::new, |r| {
            format!(
                "{} of {}",
                fmt_bytes(r.budget.used() as u64),
                fmt_bytes(r.budget.limit() as u64)
            )
        }),
        memory_bad: readiness.is_some_and(|r| r.budget.used() * 10 > r.budget.limit() * 9),
        unwritten: readiness.map_or_else(String::new, |r| {
            format!("{} spans and points", number_int(r.durability.unwritten()))
        }),
        stages: trouble.clone().unwrap_or_else(|| "all running".into()),
        stages_bad: trouble.is_some(),
        store: match &store {
            Some(WriterState::Failing { message, .. }) => format!("failing, retrying: {message}"),
            Some(WriterState::Healthy) => "writing".into(),
            None => String::new(),
        },
        store_bad: matches!(store, Some(WriterState::Failing { .. })),
        forward: pages.forward.as_ref().map(|f| forward_view(f.status())),
    }
}

/// An integer with thin thousands separators.
pub fn number_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
