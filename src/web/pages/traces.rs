//! `/traces` (sampled traces, filtered) and `/traces/{trace_id}` (the span waterfall).

use std::collections::{HashMap, HashSet};

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;

use super::logs::{LogRow, trace_logs};
use super::{EmptyHelp, Layout, PageError, Pages, Pairs, Params, render};
use crate::model::{SpanRecord, SpanStatus};
use crate::render::{Unit, format_utc, url_component};
use crate::vocab::TraceFilter;

#[derive(Template)]
#[template(path = "traces.html")]
pub struct TracesPage {
    pub layout: Layout,
    pub services: Vec<(String, bool)>,
    pub method: String,
    pub route: String,
    pub errors_only: bool,
    pub min_ms: String,
    pub slowest: bool,
    pub rows: Vec<TraceRow>,
    /// Width of each row's duration bar in px (relative to the slowest shown).
    pub bars: Vec<u32>,
    pub help: EmptyHelp,
    pub empty_title: &'static str,
    pub filtered: bool,
}

pub async fn list(State(pages): State<Pages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    render(&build_list(&pages, Params::from_pairs(pairs)).await?)
}

/// Builds the trace list (public for the render-time benchmark).
pub async fn build_list(pages: &Pages, params: Params) -> Result<TracesPage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let range = choice.range;
    let min_duration_ms = params
        .get("min_ms")
        .map(|text| {
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| PageError::bad("min_ms", "the minimum duration is a number ≥ 0"))
        })
        .transpose()?;
    let slowest = params.get("sort") == Some("slowest");
    let service = params.get("service").map(str::to_string);
    let filter = TraceFilter {
        service: service.clone(),
        method: params.get("method").map(str::to_string),
        route: params.get("route").map(str::to_string),
        errors_only: params.flag("errors"),
        min_duration_ms,
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        limit: 100,
        slowest_first: slowest,
    };
    let traces = pages.query.traces(filter.clone()).await?;
    let longest = traces.iter().map(|t| t.duration_ms).fold(0.0, f64::max);
    let bars = traces
        .iter()
        .map(|t| {
            if longest > 0.0 {
                (t.duration_ms / longest * 80.0).max(2.0) as u32
            } else {
                2
            }
        })
        .collect();
    let mut names = pages.service_names().await?;
    if let Some(s) = &service
        && !names.contains(s)
    {
        names.push(s.clone());
    }
    Ok(TracesPage {
        layout: Layout::new(pages, "Traces", "traces", &params, &choice, refresh),
        services: names
            .into_iter()
            .map(|n| {
                let selected = service.as_ref() == Some(&n);
                (n, selected)
            })
            .collect(),
        method: filter.method.clone().unwrap_or_default(),
        route: filter.route.clone().unwrap_or_default(),
        errors_only: filter.errors_only,
        min_ms: params.get("min_ms").unwrap_or_default().to_string(),
        slowest,
        rows: traces.into_iter().map(trace_row).collect(),
        bars,
        help: EmptyHelp::of(pages),
        empty_title: "No sampled traces match",
        filtered: filter.service.is_some()
            || filter.route.is_some()
            || filter.errors_only
            || min_duration_ms.is_some(),
    })
}

pub struct TraceRow {
    pub href: String,
    pub service: String,
    pub when: String,
    pub duration: String,
    pub name: String,
    pub error: bool,
    pub reason: String,
}

pub fn trace_row(t: crate::vocab::TraceSummary) -> TraceRow {
    TraceRow {
        href: format!("/traces/{}", url_component(&t.trace_id)),
        service: t.service.clone().unwrap_or_default(),
        when: format_utc(t.start_unix_ms as i64),
        duration: Unit::Millis.format(t.duration_ms),
        name: t.root_name.unwrap_or_else(|| {
            format!(
                "{} {}",
                t.method.unwrap_or_default(),
                t.route.unwrap_or_default()
            )
        }),
        error: t.error,
        reason: t.reason.to_string(),
    }
}

pub struct SpanRow {
    pub name: String,
    pub service: String,
    pub kind: String,
    pub duration: String,
    pub status: String,
    pub status_message: String,
    pub error: bool,
    pub indent: u32,
    pub left: String,
    pub width: String,
    pub start: String,
    pub attributes: Vec<(String, String)>,
    pub events: Vec<EventRow>,
    /// The span's log records, oldest first.
    pub logs: Vec<LogRow>,
}

pub struct EventRow {
    pub name: String,
    pub at: String,
    pub attributes: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "trace.html")]
pub struct TracePage {
    pub layout: Layout,
    pub trace_id: String,
    pub started: String,
    pub duration: String,
    pub services: String,
    pub rows: Vec<SpanRow>,
    /// Log records of the trace whose span is not among the kept ones.
    pub other_logs: Vec<LogRow>,
    pub ticks: Vec<(String, String)>,
}

pub async fn trace(
    State(pages): State<Pages>,
    Path(trace_id): Path<String>,
    pairs: Pairs,
) -> Result<Html<String>, PageError> {
    render(&build_trace(&pages, trace_id, Params::from_pairs(pairs)).await?)
}

/// Builds the waterfall of a trace (public for the render-time benchmark).
pub async fn build_trace(
    pages: &Pages,
    trace_id: String,
    params: Params,
) -> Result<TracePage, PageError> {
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let valid = trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(PageError::bad("trace_id", "a trace id is 32 hex digits"));
    }
    let trace_id = trace_id.to_ascii_lowercase();
    let spans = pages.query.trace(&trace_id).await?;
    if spans.is_empty() {
        return Err(PageError::not_found(format!(
            "Trace {trace_id} is not stored. redline keeps a sample of traces: every trace with \
             an error, the slowest requests of each endpoint every minute, and a uniform share."
        )));
    }
    let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_unix_ns)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let total_ns = (end - start) as f64;
    let services: Vec<String> = spans
        .iter()
        .map(|s| s.service.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut logs = trace_logs(pages, &trace_id, start).await?;
    let rows: Vec<SpanRow> = waterfall(&spans)
        .into_iter()
        .map(|(depth, span)| {
            let offset = (span.start_unix_ns - start) as f64;
            let length = span.end_unix_ns.saturating_sub(span.start_unix_ns) as f64;
            SpanRow {
                name: span.name.clone(),
                service: span.service.clone(),
                kind: span.kind.to_string(),
                duration: Unit::Millis.format(span.duration_ms()),
                status: span.status.to_string(),
                status_message: span.status_message.clone(),
                error: span.is_error || span.status == SpanStatus::Error,
                indent: (depth.min(24) * 14) as u32,
                left: format!("{:.3}", offset / total_ns * 100.0),
                width: format!("{:.3}", (length / total_ns * 100.0).max(0.2)),
                start: format!("+{}", Unit::Millis.format(offset / 1e6)),
                attributes: span
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                events: span
                    .events
                    .iter()
                    .map(|e| EventRow {
                        name: e.name.clone(),
                        at: format!(
                            "+{}",
                            Unit::Millis.format(e.time_unix_ns.saturating_sub(start) as f64 / 1e6)
                        ),
                        attributes: e
                            .attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    })
                    .collect(),
                logs: logs.remove(&span.span_id).unwrap_or_default(),
            }
        })
        .collect();
    let mut other_logs: Vec<LogRow> = logs.into_values().flatten().collect();
    other_logs.sort_by_key(|l| l.time_unix_ns);
    let ticks = (0..4)
        .map(|i| {
            (
                format!("{}", i * 25),
                Unit::Millis.format(total_ns / 1e6 * i as f64 / 4.0),
            )
        })
        .collect();
    Ok(TracePage {
        layout: Layout::new(
            pages,
            format!("Trace {trace_id}"),
            "traces",
            &params,
            &choice,
            refresh,
        ),
        started: format_utc((start / 1_000_000) as i64),
        duration: Unit::Millis.format(total_ns / 1e6),
        services: services.join(", "),
        trace_id,
        rows,
        other_logs,
        ticks,
    })
}

/// Spans in tree order (each parent before its children, siblings by start time) with their
/// depth. Spans whose parent is missing (not sampled, or still in flight) are roots.
pub fn waterfall(spans: &[SpanRecord]) -> Vec<(usize, &SpanRecord)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots: Vec<&SpanRecord> = Vec::new();
    for span in spans {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) && parent != span.span_id => {
                children.entry(parent).or_default().push(span)
            }
            _ => roots.push(span),
        }
    }
    let by_start = |a: &&SpanRecord, b: &&SpanRecord| {
        a.start_unix_ns
            .cmp(&b.start_unix_ns)
            .then(a.span_id.cmp(&b.span_id))
    };
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    let mut out = Vec::with_capacity(spans.len());
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack: Vec<(usize, &SpanRecord)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    while let Some((depth, span)) = stack.pop() {
        // A cycle of parent ids must not loop forever.
        if !seen.insert(span.span_id.as_str()) {
            continue;
        }
        out.push((depth, span));
        if let Some(kids) = children.get(span.span_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
        }
    }
    // Spans only reachable through a cycle are still shown.
    for span in spans {
        if !seen.contains(span.span_id.as_str()) {
            out.push((0, span));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn span(id: &str, parent: Option<&str>, start: u64) -> SpanRecord {
        SpanRecord {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            service: "s".into(),
            name: id.into(),
            kind: crate::model::SpanKind::Server,
            start_unix_ns: start,
            end_unix_ns: start + 10,
            status: crate::model::SpanStatus::Unset,
            status_message: String::new(),
            attributes: BTreeMap::new(),
            events: Vec::new(),
            endpoint: None,
            is_error: false,
        }
    }

    #[test]
    fn the_waterfall_is_in_tree_order_with_depths() {
        let spans = vec![
            span("c2", Some("root"), 5),
            span("root", None, 0),
            span("g", Some("c1"), 3),
            span("c1", Some("root"), 2),
            span("orphan", Some("missing"), 1),
        ];
        let order: Vec<(usize, &str)> = waterfall(&spans)
            .into_iter()
            .map(|(d, s)| (d, s.span_id.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(0, "root"), (1, "c1"), (2, "g"), (1, "c2"), (0, "orphan")]
        );
    }

    #[test]
    fn a_parent_cycle_does_not_hang_and_loses_no_span() {
        let spans = vec![span("a", Some("b"), 0), span("b", Some("a"), 1)];
        assert_eq!(waterfall(&spans).len(), 2);
    }
}
