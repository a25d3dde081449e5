//! The read model's trace reads: kept traces listed by filter and one trace's spans, stored
//! or still waiting for the writer.

use super::*;

impl Query {
    /// Sampled traces, newest (or slowest) first: stored ones plus traces whose spans are kept
    /// but not yet flushed, so a trace is listed as soon as its export is acknowledged.
    pub async fn traces(&self, filter: TraceFilter) -> Result<Vec<TraceSummary>, StoreError> {
        let read_filter = filter.clone();
        let mut traces = self
            .readers
            .run(move |conn| read::traces(conn, &read_filter))
            .await?;
        let stored: HashSet<String> = traces.iter().map(|t| t.trace_id.clone()).collect();
        let mut spans: Vec<(SpanRecord, KeepReason)> = Vec::new();
        for (_, batch) in self.live.unflushed(None) {
            spans.extend(
                batch
                    .spans
                    .iter()
                    .filter(|(span, _)| !stored.contains(&span.trace_id))
                    .cloned(),
            );
        }
        traces.extend(
            unflushed_summaries(spans)
                .into_iter()
                .filter(|t| trace_matches(t, &filter)),
        );
        if filter.slowest_first {
            traces.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        } else {
            traces.sort_by(|a, b| b.start_unix_ms.total_cmp(&a.start_unix_ms));
        }
        traces.truncate(filter.limit);
        Ok(traces)
    }

    /// Every span of a trace: stored ones plus kept spans not yet flushed.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, StoreError> {
        let id = trace_id.to_string();
        let mut spans = self
            .readers
            .run(move |conn| read::trace_spans(conn, &id))
            .await?;
        let known: HashSet<String> = spans.iter().map(|s| s.span_id.clone()).collect();
        let pending: Vec<Arc<FlushBatch>> = self
            .live
            .unflushed(None)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        for batch in pending {
            for (span, _) in &batch.spans {
                if span.trace_id == trace_id && !known.contains(&span.span_id) {
                    spans.push(span.clone());
                }
            }
        }
        spans.sort_by(|a, b| {
            a.start_unix_ns
                .cmp(&b.start_unix_ns)
                .then(a.span_id.cmp(&b.span_id))
        });
        spans.dedup_by(|a, b| a.span_id == b.span_id);
        Ok(spans)
    }
}

/// Trace summaries of kept spans not yet in the store (as the writer would summarise them:
/// the root span names the trace, a server span gives its endpoint).
fn unflushed_summaries(spans: Vec<(SpanRecord, KeepReason)>) -> Vec<TraceSummary> {
    let mut by_trace: BTreeMap<String, (TraceSummary, i64, i64)> = BTreeMap::new();
    for (span, reason) in spans {
        let start = span.start_unix_ns as i64;
        let end = span.end_unix_ns as i64;
        let is_root = span.parent_span_id.is_none();
        let (summary, first, last) = by_trace.entry(span.trace_id.clone()).or_insert_with(|| {
            (
                TraceSummary {
                    trace_id: span.trace_id.clone(),
                    service: None,
                    method: None,
                    route: None,
                    root_name: None,
                    start_unix_ms: 0.0,
                    duration_ms: 0.0,
                    error: false,
                    span_count: 0,
                    reason,
                },
                start,
                end,
            )
        });
        *first = (*first).min(start);
        *last = (*last).max(end);
        summary.span_count += 1;
        summary.error |= span.is_error;
        if reason == KeepReason::Error {
            summary.reason = reason;
        }
        if let Some(endpoint) = &span.endpoint {
            if is_root || summary.route.is_none() {
                summary.service = Some(endpoint.service.clone());
                summary.method = Some(endpoint.method.clone());
                summary.route = Some(endpoint.route.clone());
            }
        } else if is_root && summary.service.is_none() {
            summary.service = Some(span.service.clone());
        }
        if is_root {
            summary.root_name = Some(span.name.clone());
        }
    }
    by_trace
        .into_values()
        .map(|(mut summary, first, last)| {
            summary.start_unix_ms = first as f64 / 1e6;
            summary.duration_ms = (last - first) as f64 / 1e6;
            summary
        })
        .collect()
}

fn trace_matches(trace: &TraceSummary, filter: &TraceFilter) -> bool {
    let equal =
        |wanted: &Option<String>, actual: &Option<String>| wanted.is_none() || wanted == actual;
    equal(&filter.service, &trace.service)
        && equal(&filter.method, &trace.method)
        && equal(&filter.route, &trace.route)
        && (!filter.errors_only || trace.error)
        && filter
            .min_duration_ms
            .is_none_or(|min| trace.duration_ms >= min)
        && trace.start_unix_ms >= filter.from_ms as f64
        && trace.start_unix_ms < filter.to_ms as f64
}
