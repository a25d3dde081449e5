//! The Prometheus text exposition format (version 0.0.4) of the RED series, for
//! `GET /metrics/red`. Rendered by hand from the totals snapshot: the series are the same ones
//! remote write sends, built once in [`super`], and telemetry text in label values is escaped
//! here (backslash, double quote and line feed, as the format requires).

use std::fmt::Write as _;

use super::{ExternalLabels, FAMILIES, Sample, le_values, samples, sorted};
use crate::aggregate::totals::TotalsSnapshot;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every endpoint's series, families in a fixed order, endpoints sorted.
pub fn render(snapshot: TotalsSnapshot, external: &ExternalLabels) -> String {
    let snapshot = sorted(snapshot);
    let le = le_values(&snapshot);
    // Each endpoint's own labels, escaped once and shared by its ~20 lines.
    let mut external_text = String::new();
    for (name, value) in external.iter() {
        external_text.push(',');
        push_label(&mut external_text, name, value);
    }
    let prefixes: Vec<String> = snapshot
        .endpoints
        .iter()
        .map(|(endpoint, _)| {
            let mut text = String::with_capacity(
                32 + endpoint.service.len() + endpoint.method.len() + endpoint.route.len(),
            );
            push_label(&mut text, "service", &endpoint.service);
            text.push(',');
            push_label(&mut text, "method", &endpoint.method);
            text.push(',');
            push_label(&mut text, "route", &endpoint.route);
            text.push_str(&external_text);
            text
        })
        .collect();
    let mut out = String::with_capacity(snapshot.endpoints.len() * 2_500 + 1_024);
    for family in &FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        for ((endpoint, totals), prefix) in snapshot.endpoints.iter().zip(&prefixes) {
            samples(family, endpoint, totals, &le, |sample| {
                push_sample(&mut out, &sample, prefix)
            });
        }
    }
    out
}

fn push_sample(out: &mut String, sample: &Sample<'_>, prefix: &str) {
    out.push_str(sample.family.name);
    out.push_str(sample.suffix);
    out.push('{');
    out.push_str(prefix);
    if let Some((name, value)) = sample.label {
        out.push(',');
        push_label(out, name, value);
    }
    out.push_str("} ");
    push_value(out, sample.value);
    out.push('\n');
}

fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    push_escaped(out, value);
    out.push('"');
}

/// Label-value escaping of the text format: `\` → `\\`, `"` → `\"`, line feed → `\n`.
pub fn push_escaped(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Counts are integers up to 2^53 and print as such; sums print in Rust's shortest form that
/// reads back as the same `f64`.
fn push_value(out: &mut String, value: f64) {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::totals::{DurationBounds, RedTotals};
    use crate::model::{EndpointKey, RequestRecord};

    fn snapshot(service: &str, route: &str) -> TotalsSnapshot {
        let mut totals = RedTotals::new(DurationBounds::new(&[0.1, 1.0]).unwrap());
        let key = EndpointKey {
            service: service.into(),
            method: "GET".into(),
            route: route.into(),
        };
        for (ms, status) in [(50.0, 200), (100.0, 404), (500.0, 503)] {
            totals.add_request(
                &key,
                &RequestRecord {
                    end_unix_ms: 0,
                    duration_ms: ms,
                    status_code: Some(status),
                    is_error: status >= 500,
                    count: 1,
                },
                0,
            );
        }
        totals.snapshot()
    }

    #[test]
    fn renders_the_contracted_families() {
        let external = ExternalLabels::new(vec![("host".to_string(), "a".to_string())]).unwrap();
        let text = render(snapshot("api", "/items/{id}"), &external);
        let labels = r#"service="api",method="GET",route="/items/{id}",host="a""#;
        for line in [
            "# TYPE redline_requests_total counter".to_string(),
            format!("redline_requests_total{{{labels}}} 3"),
            format!("redline_request_errors_total{{{labels}}} 1"),
            format!(r#"redline_requests_by_status_total{{{labels},status_class="4xx"}} 1"#),
            format!(r#"redline_requests_by_status_total{{{labels},status_class="5xx"}} 1"#),
            "# TYPE redline_request_duration_seconds histogram".to_string(),
            format!(r#"redline_request_duration_seconds_bucket{{{labels},le="0.1"}} 2"#),
            format!(r#"redline_request_duration_seconds_bucket{{{labels},le="1"}} 3"#),
            format!(r#"redline_request_duration_seconds_bucket{{{labels},le="+Inf"}} 3"#),
            format!("redline_request_duration_seconds_sum{{{labels}}} 0.65"),
            format!("redline_request_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let text = render(
            snapshot("a\"b\\c\nd", "/x\r\u{1}"),
            &ExternalLabels::default(),
        );
        assert!(
            text.contains(r#"service="a\"b\\c\nd",method="GET",route="/x"#),
            "{text}"
        );
        // One sample per line: nothing from the label values broke a line.
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("redline_"))
        );
    }
}
