//! `/logs` (kept log records, filtered by service, minimum severity, trace and text, newest
//! first), and the log parts of other pages: the service page's counts per severity and recent
//! error records, an endpoint's recent error records, a trace's records under their spans.

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;
use axum::response::Html;

use super::{Layout, PageError, Pages, Pairs, Params, render, step_for};
use crate::model::log_record::{
    ERROR_NUMBER, LOG_RECORDS_METRIC, LogRecord, SEVERITY_ATTRIBUTE, Severity,
};
use crate::query::{MetricAggregation, MetricQuery};
use crate::render::{TimeChart, Unit, format_utc, url_component};
use crate::vocab::{LogFilter, TimeRange};

/// The longest text search the page takes (as the API).
const MAX_QUERY_BYTES: usize = crate::web::api::MAX_LOG_QUERY_BYTES;

/// One record as the pages show it.
pub struct LogRow {
    pub time_unix_ns: u64,
    pub when: String,
    /// `+12 ms` from the start of its trace, on the waterfall.
    pub offset: String,
    pub service: String,
    pub service_href: String,
    pub severity: String,
    /// `bad` at ERROR and above, `warn` at WARN, else empty.
    pub class: &'static str,
    pub body: String,
    pub trace_href: String,
    pub trace_id: String,
    pub attributes: Vec<(String, String)>,
}

pub fn log_row(record: &LogRecord) -> LogRow {
    let class = match record.severity() {
        Severity::Error | Severity::Fatal => "bad",
        Severity::Warn => "warn",
        _ => "",
    };
    let trace_id = record.trace_id.clone().unwrap_or_default();
    LogRow {
        time_unix_ns: record.time_unix_ns,
        when: format_utc(record.time_ms()),
        offset: String::new(),
        service_href: format!("/services/{}", url_component(&record.service)),
        service: record.service.clone(),
        severity: record.severity_label().to_string(),
        class,
        body: record.body.clone(),
        trace_href: if trace_id.is_empty() {
            String::new()
        } else {
            format!("/traces/{}", url_component(&trace_id))
        },
        trace_id,
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[derive(Template)]
#[template(path = "logs.html")]
pub struct LogsPage {
    pub layout: Layout,
    pub services: Vec<(String, bool)>,
    /// (value, label, selected) of the minimum-severity menu.
    pub severities: Vec<(String, &'static str, bool)>,
    pub trace_id: String,
    pub q: String,
    pub rows: Vec<LogRow>,
    pub filtered: bool,
}

pub async fn list(State(pages): State<Pages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    render(&build_list(&pages, Params::from_pairs(pairs)).await?)
}

/// Builds the log list (public for the render-time benchmark).
pub async fn build_list(pages: &Pages, params: Params) -> Result<LogsPage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let min_severity = match params.get("severity_min") {
        Some(text) => Severity::parse_min(text).ok_or_else(|| {
            PageError::bad(
                "severity_min",
                "TRACE, DEBUG, INFO, WARN, ERROR, FATAL or a number 0–24",
            )
        })?,
        None => 0,
    };
    let trace_id = match params.get("trace_id") {
        Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(id.to_ascii_lowercase())
        }
        Some(_) => return Err(PageError::bad("trace_id", "a trace id is 32 hex digits")),
        None => None,
    };
    let q = params.get("q").map(str::to_string);
    if q.as_ref().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return Err(PageError::bad(
            "q",
            format!("the search is at most {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let service = params.get("service").map(str::to_string);
    let filter = LogFilter {
        service: service.clone(),
        min_severity,
        trace_id: trace_id.clone(),
        trace_ids: None,
        text: q.clone(),
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit: 200,
    };
    let records = pages.query.logs(filter).await?;
    let mut names = pages.service_names().await?;
    if let Some(s) = &service
        && !names.contains(s)
    {
        names.push(s.clone());
    }
    let chosen = params.get("severity_min").unwrap_or_default();
    let severities = std::iter::once((String::new(), "any", chosen.is_empty()))
        .chain(
            [
                Severity::Debug,
                Severity::Info,
                Severity::Warn,
                Severity::Error,
                Severity::Fatal,
            ]
            .into_iter()
            .map(|s| {
                let selected = Severity::parse_min(chosen) == Some(s.min_number());
                (s.as_str().to_string(), s.as_str(), selected)
            }),
        )
        .collect();
    Ok(LogsPage {
        layout: Layout::new(pages, "Logs", "logs", &params, &choice, refresh),
        services: names
            .into_iter()
            .map(|n| {
                let selected = service.as_deref() == Some(n.as_str());
                (n, selected)
            })
            .collect(),
        severities,
        filtered: service.is_some() || min_severity > 0 || trace_id.is_some() || q.is_some(),
        trace_id: trace_id.unwrap_or_default(),
        q: q.unwrap_or_default(),
        rows: records.iter().map(log_row).collect(),
    })
}

/// The service page's log panel: records per severity over the range (a chart and the totals)
/// and the recent records at ERROR and above.
pub struct LogPanel {
    /// The stacked chart's SVG and its data table.
    pub chart: Option<(String, String)>,
    pub counts: Vec<(&'static str, String, &'static str)>,
    pub recent: Vec<LogRow>,
    pub href: String,
}

impl LogPanel {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.recent.is_empty()
    }
}

pub async fn service_panel(
    pages: &Pages,
    service: &str,
    range: TimeRange,
) -> Result<LogPanel, PageError> {
    let counts = pages.query.log_counts(service, range).await?;
    let chart = if counts.is_empty() {
        None
    } else {
        let step = step_for(range, 120);
        let (_, series) = pages
            .query
            .metric_series(
                service,
                LOG_RECORDS_METRIC,
                MetricQuery {
                    range,
                    step_ms: step,
                    aggregation: Some(MetricAggregation::Rate),
                    filter: Default::default(),
                    group_by: Some(vec![SEVERITY_ATTRIBUTE.to_string()]),
                },
            )
            .await?;
        let mut chart = TimeChart::new(
            "Log records by severity",
            Unit::PerSecond("records/s".into()),
            range.from_ms,
            range.to_ms,
            step,
        );
        let mut lines: Vec<_> = series
            .into_iter()
            .map(|line| {
                let name = line
                    .attributes
                    .get(SEVERITY_ATTRIBUTE)
                    .cloned()
                    .unwrap_or_default();
                (Severity::parse(&name), name, line.points)
            })
            .collect();
        lines.sort_by_key(|(severity, ..)| std::cmp::Reverse(*severity));
        for (_, name, points) in lines {
            chart = chart.series(name, points);
        }
        let table = if chart.has_data() {
            chart.table_html()
        } else {
            String::new()
        };
        Some((chart.stacked_svg(), table))
    };
    let recent = error_logs(pages, Some(service), None, range).await?;
    Ok(LogPanel {
        chart,
        counts: counts
            .into_iter()
            .rev()
            .map(|(severity, n)| {
                let class = match severity {
                    Severity::Error | Severity::Fatal => "bad",
                    _ => "",
                };
                (severity.as_str(), super::overview::number_int(n), class)
            })
            .collect(),
        recent,
        href: format!("/logs?service={}&severity_min=WARN", url_component(service)),
    })
}

/// The ten most recent kept records at ERROR and above, of a service or of some traces.
pub async fn error_logs(
    pages: &Pages,
    service: Option<&str>,
    trace_ids: Option<Vec<String>>,
    range: TimeRange,
) -> Result<Vec<LogRow>, PageError> {
    let records = pages
        .query
        .logs(LogFilter {
            service: service.map(str::to_string),
            min_severity: ERROR_NUMBER,
            trace_ids,
            from_ms: range.from_ms,
            to_ms: range.to_ms,
            limit: 10,
            ..LogFilter::default()
        })
        .await?;
    Ok(records.iter().map(log_row).collect())
}

/// A trace's records by span id (records without a known span under `""`), oldest first, each
/// with its offset from `start_ns`.
pub async fn trace_logs(
    pages: &Pages,
    trace_id: &str,
    start_ns: u64,
) -> Result<HashMap<String, Vec<LogRow>>, PageError> {
    let mut records = pages
        .query
        .logs(LogFilter {
            trace_id: Some(trace_id.to_string()),
            from_ms: 0,
            to_ms: crate::vocab::LATEST_MS,
            limit: 1000,
            ..LogFilter::default()
        })
        .await?;
    records.reverse();
    let mut by_span: HashMap<String, Vec<LogRow>> = HashMap::new();
    for record in &records {
        let mut row = log_row(record);
        let offset_ms = record.time_unix_ns as f64 / 1e6 - start_ns as f64 / 1e6;
        row.offset = if offset_ms >= 0.0 {
            format!("+{}", Unit::Millis.format(offset_ms))
        } else {
            format!("−{}", Unit::Millis.format(-offset_ms))
        };
        by_span
            .entry(record.span_id.clone().unwrap_or_default())
            .or_default()
            .push(row);
    }
    Ok(by_span)
}
