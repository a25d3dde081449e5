//! A [`Notification`] as an e-mail: a subject like `[FIRING:2] HighP99Latency example-api`, a
//! plain-text part, and an HTML part (askama, `templates/email/notification.html`, escaping on)
//! with one inline PNG chart per alert that has a chart, referenced by `cid:`.
//!
//! Rendering never drops a notification: a chart that fails to draw is left out, and an HTML
//! template that fails falls back to the plain text wrapped in `<pre>`. The text part is built
//! without templates, so every alert is always listed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use lettre::Message;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};

use super::chart;
use super::{AlertStatus, AlertSummary, Notification, NotifyError};

/// At most this many exemplar traces are shown per alert.
pub const MAX_TRACES: usize = 3;
/// At most this many charts per message (the first alerts', firing ones come first): a large
/// group still makes a message of reasonable size. Every alert is listed regardless.
pub const MAX_CHARTS: usize = 10;
const MAX_SUBJECT_CHARS: usize = 200;
/// Annotations shown in their own places rather than in the generic list.
const PLACED_ANNOTATIONS: [&str; 3] = ["summary", "description", "runbook_url"];

/// One inline image of the HTML part.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineImage {
    /// The `Content-ID` (without angle brackets); the HTML refers to it as `cid:…`.
    pub cid: String,
    pub png: Vec<u8>,
}

/// What the message says, before MIME assembly (also `redline preview-email`'s output).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The charts the HTML refers to by `cid:`, in order.
    pub images: Vec<InlineImage>,
    /// Rendering problems that were worked around (a chart left out, the HTML fallback).
    pub warnings: Vec<String>,
}

impl Rendered {
    /// The HTML with each `cid:` image inlined as a `data:` URI, so a browser shows the page
    /// as a mail client would (for `redline preview-email --html`).
    pub fn standalone_html(&self) -> String {
        use base64::Engine as _;
        let mut html = self.html.clone();
        for image in &self.images {
            let data = base64::engine::general_purpose::STANDARD.encode(&image.png);
            html = html.replace(
                &format!("\"cid:{}\"", image.cid),
                &format!("\"data:image/png;base64,{data}\""),
            );
        }
        html
    }
}

/// Renders the notification. Never fails: problems become [`Rendered::warnings`].
pub fn preview(notification: &Notification) -> Rendered {
    let subject = subject(notification);
    let text = text_body(notification, &subject);
    let mut warnings = Vec::new();
    let mut images = Vec::new();
    let mut chart_cids = Vec::with_capacity(notification.alerts.len());
    for (index, alert) in notification.alerts.iter().enumerate() {
        let spec = alert.chart.as_ref();
        if spec.is_some() && images.len() >= MAX_CHARTS {
            chart_cids.push(None);
            continue;
        }
        let cid = spec.and_then(|spec| {
            let rendered = std::panic::catch_unwind(|| chart::render_png(spec))
                .unwrap_or_else(|_| Err(NotifyError::Chart("the renderer panicked".into())));
            match rendered {
                Ok(png) => {
                    let cid = format!("chart-{index}@redline");
                    images.push(InlineImage {
                        cid: cid.clone(),
                        png,
                    });
                    Some(cid)
                }
                Err(e) => {
                    warnings.push(format!("chart of {} left out: {e}", alert.alertname));
                    None
                }
            }
        });
        chart_cids.push(cid);
    }
    let charts = notification
        .alerts
        .iter()
        .filter(|a| a.chart.is_some())
        .count();
    if charts > MAX_CHARTS {
        tracing::debug!(
            group = %notification.group_key,
            "{} of {charts} charts left out of the message (at most {MAX_CHARTS})",
            charts - MAX_CHARTS
        );
    }
    let html = match html_body(notification, &subject, &chart_cids) {
        Ok(html) => html,
        Err(e) => {
            warnings.push(format!(
                "HTML template failed, sent the plain fallback: {e}"
            ));
            images.clear();
            fallback_html(&subject, &text)
        }
    };
    for warning in &warnings {
        tracing::warn!(group = %notification.group_key, "{warning}");
    }
    Rendered {
        subject,
        text,
        html,
        images,
        warnings,
    }
}

/// The notification as a MIME message: `multipart/alternative` of the text part and the HTML
/// (inside `multipart/related` with the chart PNGs when there are charts).
///
/// Fails only for addresses: an unparsable `from`, or no parsable recipient (unparsable
/// recipients are skipped with a warning).
pub fn compose(notification: &Notification) -> Result<Message, NotifyError> {
    let from: Mailbox = parse_mailbox(&notification.email.from)?;
    let mut recipients = Vec::new();
    for to in &notification.email.to {
        match parse_mailbox(to) {
            Ok(mailbox) => recipients.push(mailbox),
            Err(e) => tracing::warn!(group = %notification.group_key, "recipient skipped: {e}"),
        }
    }
    if recipients.is_empty() {
        return Err(NotifyError::Message(format!(
            "receiver {:?} has no valid recipient",
            notification.receiver
        )));
    }
    let rendered = preview(notification);
    let mut builder = Message::builder()
        .from(from)
        .subject(rendered.subject.clone())
        .date(system_time(notification.created_at_ms))
        .header(AutoSubmitted);
    for mailbox in recipients {
        builder = builder.to(mailbox);
    }
    let html_part = SinglePart::html(rendered.html);
    let html = if rendered.images.is_empty() {
        MultiPart::alternative()
            .singlepart(SinglePart::plain(rendered.text))
            .singlepart(html_part)
    } else {
        let mut related = MultiPart::related().singlepart(html_part);
        let png = ContentType::parse("image/png").expect("a valid content type");
        for image in rendered.images {
            let name = format!("{}.png", image.cid.split('@').next().unwrap_or("chart"));
            related = related.singlepart(
                Attachment::new_inline_with_name(image.cid, name).body(image.png, png.clone()),
            );
        }
        MultiPart::alternative()
            .singlepart(SinglePart::plain(rendered.text))
            .multipart(related)
    };
    builder
        .multipart(html)
        .map_err(|e| NotifyError::Message(e.to_string()))
}

/// `Auto-Submitted: auto-generated` (RFC 3834): vacation responders and ticket systems do not
/// answer an alert with an auto-reply.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

fn parse_mailbox(address: &str) -> Result<Mailbox, NotifyError> {
    address
        .trim()
        .parse::<Mailbox>()
        .map_err(|e| NotifyError::Address {
            address: address.to_string(),
            reason: e.to_string(),
        })
}

fn system_time(ms: i64) -> SystemTime {
    if ms > 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        SystemTime::now()
    }
}

/// Telemetry text on one line: control characters become spaces.
fn one_line(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Multi-line telemetry text: keeps newlines and tabs, drops other control characters.
fn multi_line(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect::<String>()
        .trim()
        .to_string()
}

/// `[FIRING:2] HighP99Latency example-api`, or `[RESOLVED] …` when nothing fires.
pub fn subject(notification: &Notification) -> String {
    let firing = notification.firing_count();
    let mut subject = if firing > 0 {
        format!("[FIRING:{firing}]")
    } else {
        "[RESOLVED]".to_string()
    };
    let alertname = match notification.group_labels.get("alertname") {
        Some(name) => one_line(name),
        None => {
            let mut names: Vec<&str> = notification
                .alerts
                .iter()
                .map(|a| a.alertname.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            match names.as_slice() {
                [] => String::new(),
                [one] => one_line(one),
                [first, rest @ ..] => format!("{} +{}", one_line(first), rest.len()),
            }
        }
    };
    if !alertname.is_empty() {
        subject.push(' ');
        subject.push_str(&alertname);
    }
    let service = notification
        .group_labels
        .get("service")
        .or_else(|| common_label(&notification.alerts, "service"));
    if let Some(service) = service {
        subject.push(' ');
        subject.push_str(&one_line(service));
    }
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        subject = subject.chars().take(MAX_SUBJECT_CHARS - 1).collect();
        subject.push('…');
    }
    subject
}

/// The value of `name` when every alert has the same one.
fn common_label<'a>(alerts: &'a [AlertSummary], name: &str) -> Option<&'a String> {
    let first = alerts.first()?.labels.get(name)?;
    alerts
        .iter()
        .all(|a| a.labels.get(name) == Some(first))
        .then_some(first)
}

/// "2026-11-28 15:40:00 UTC", as the dashboard writes times.
pub use crate::render::format_utc;

/// "45s", "5m", "1h 5m", "2d 3h".
pub fn format_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) if s == 0 => format!("{m}m"),
        (0, 0, m) => format!("{m}m {s}s"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// `url` when it is an absolute http(s) URL, safe to put in an `href`.
fn safe_url(url: &str) -> Option<String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    let absolute = lower.starts_with("https://") || lower.starts_with("http://");
    (absolute && url.len() > 8 && !url.chars().any(|c| c.is_control() || c.is_whitespace()))
        .then(|| url.to_string())
}

fn status_word(status: AlertStatus) -> &'static str {
    match status {
        AlertStatus::Firing => "FIRING",
        AlertStatus::Resolved => "RESOLVED",
    }
}

fn headline(notification: &Notification) -> String {
    let firing = notification.firing_count();
    let resolved = notification.alerts.len() - firing;
    match (firing, resolved) {
        (0, 0) => "No alerts.".into(),
        (f, 0) => format!("{f} alert{} firing.", plural(f)),
        (0, r) => format!("{r} alert{} resolved.", plural(r)),
        (f, r) => format!("{f} alert{} firing, {r} resolved.", plural(f)),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn group_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{}={}", one_line(k), one_line(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long the alert has been (or was) active.
fn active_for(alert: &AlertSummary, now_ms: i64) -> String {
    let end = alert.resolved_at_ms.unwrap_or(now_ms);
    format_duration(end - alert.active_since_ms)
}

fn short_trace_id(id: &str) -> String {
    let id = one_line(id);
    if id.chars().count() > 16 {
        id.chars().take(16).collect::<String>() + "…"
    } else {
        id
    }
}

fn trace_detail(duration_ms: f64, error: bool) -> String {
    let mut detail = if duration_ms.is_finite() && duration_ms >= 0.0 {
        format!("{} ms", chart::format_number(duration_ms))
    } else {
        String::new()
    };
    if error {
        if !detail.is_empty() {
            detail.push_str(", ");
        }
        detail.push_str("error");
    }
    detail
}

/// The plain-text part: every alert, always.
pub fn text_body(notification: &Notification, subject: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{subject}\n");
    let _ = writeln!(out, "{}", headline(notification));
    if !notification.group_labels.is_empty() {
        let _ = writeln!(out, "Group: {}", group_text(&notification.group_labels));
    }
    for alert in &notification.alerts {
        let _ = writeln!(
            out,
            "\n== {} {} ==",
            status_word(alert.status),
            one_line(&alert.alertname)
        );
        if let Some(summary) = alert.annotations.get("summary") {
            let _ = writeln!(out, "{}", one_line(summary));
        }
        if let Some(description) = alert.annotations.get("description") {
            let _ = writeln!(out, "{}", multi_line(description));
        }
        let _ = write!(out, "Value:     {}", one_line(&alert.value_text));
        if !alert.threshold_text.is_empty() {
            let _ = write!(out, " (threshold {})", one_line(&alert.threshold_text));
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "Since:     {} (for {})",
            format_utc(alert.active_since_ms),
            active_for(alert, notification.created_at_ms)
        );
        if let Some(resolved) = alert.resolved_at_ms {
            let _ = writeln!(out, "Resolved:  {}", format_utc(resolved));
        }
        if let Some(runbook) = alert.annotations.get("runbook_url") {
            let _ = writeln!(out, "Runbook:   {}", one_line(runbook));
        }
        for (name, value) in &alert.annotations {
            if !PLACED_ANNOTATIONS.contains(&name.as_str()) {
                let _ = writeln!(out, "{}: {}", one_line(name), one_line(value));
            }
        }
        if !alert.dashboard_url.is_empty() {
            let _ = writeln!(out, "Dashboard: {}", one_line(&alert.dashboard_url));
        }
        if !alert.exemplars.is_empty() {
            let _ = writeln!(out, "Example traces:");
            for trace in alert.exemplars.iter().take(MAX_TRACES) {
                let _ = writeln!(
                    out,
                    "  - {} ({}) {}",
                    one_line(&trace.trace_id),
                    trace_detail(trace.duration_ms, trace.error),
                    one_line(&trace.url)
                );
            }
        }
        if !alert.labels.is_empty() {
            let _ = writeln!(out, "Labels:");
            for (name, value) in &alert.labels {
                let _ = writeln!(out, "  {} = {}", one_line(name), one_line(value));
            }
        }
    }
    let _ = writeln!(
        out,
        "\nSent by redline at {}.",
        format_utc(notification.created_at_ms)
    );
    out
}

struct Pair {
    name: String,
    value: String,
}

struct HtmlTrace {
    short_id: String,
    url: String,
    detail: String,
}

struct HtmlAlert {
    status: &'static str,
    color: &'static str,
    alertname: String,
    summary: String,
    description: String,
    value_text: String,
    threshold_text: String,
    since_text: String,
    duration_text: String,
    resolved_text: String,
    runbook_url: String,
    runbook_text: String,
    annotations: Vec<Pair>,
    labels: Vec<Pair>,
    dashboard_url: String,
    dashboard_text: String,
    traces: Vec<HtmlTrace>,
    chart_cid: String,
    chart_title: String,
    /// The chart's text equivalent.
    chart_alt: String,
}

/// The HTML part. Every field is plain text; askama escapes all of it.
#[derive(Template)]
#[template(path = "email/notification.html")]
struct HtmlEmail {
    subject: String,
    headline: String,
    group_text: String,
    alerts: Vec<HtmlAlert>,
    sent_text: String,
    chart_width: u32,
    chart_height: u32,
}

fn html_body(
    notification: &Notification,
    subject: &str,
    chart_cids: &[Option<String>],
) -> Result<String, askama::Error> {
    let alerts = notification
        .alerts
        .iter()
        .enumerate()
        .map(|(index, alert)| {
            let runbook = alert.annotations.get("runbook_url");
            let runbook_url = runbook.and_then(|r| safe_url(r));
            let dashboard_url = safe_url(&alert.dashboard_url);
            HtmlAlert {
                status: status_word(alert.status),
                color: match alert.status {
                    AlertStatus::Firing => "#dc2626",
                    AlertStatus::Resolved => "#16a34a",
                },
                alertname: one_line(&alert.alertname),
                summary: alert
                    .annotations
                    .get("summary")
                    .map(|s| one_line(s))
                    .unwrap_or_default(),
                description: alert
                    .annotations
                    .get("description")
                    .map(|s| multi_line(s))
                    .unwrap_or_default(),
                value_text: one_line(&alert.value_text),
                threshold_text: one_line(&alert.threshold_text),
                since_text: format_utc(alert.active_since_ms),
                duration_text: active_for(alert, notification.created_at_ms),
                resolved_text: alert.resolved_at_ms.map(format_utc).unwrap_or_default(),
                runbook_text: match (runbook, &runbook_url) {
                    (Some(text), None) => one_line(text),
                    _ => String::new(),
                },
                runbook_url: runbook_url.unwrap_or_default(),
                annotations: alert
                    .annotations
                    .iter()
                    .filter(|(name, _)| !PLACED_ANNOTATIONS.contains(&name.as_str()))
                    .map(|(name, value)| Pair {
                        name: one_line(name),
                        value: multi_line(value),
                    })
                    .collect(),
                labels: alert
                    .labels
                    .iter()
                    .map(|(name, value)| Pair {
                        name: one_line(name),
                        value: one_line(value),
                    })
                    .collect(),
                dashboard_text: match &dashboard_url {
                    None => one_line(&alert.dashboard_url),
                    Some(_) => String::new(),
                },
                dashboard_url: dashboard_url.unwrap_or_default(),
                traces: alert
                    .exemplars
                    .iter()
                    .take(MAX_TRACES)
                    .map(|trace| HtmlTrace {
                        short_id: short_trace_id(&trace.trace_id),
                        url: safe_url(&trace.url).unwrap_or_default(),
                        detail: trace_detail(trace.duration_ms, trace.error),
                    })
                    .collect(),
                chart_cid: chart_cids.get(index).cloned().flatten().unwrap_or_default(),
                chart_title: alert
                    .chart
                    .as_ref()
                    .map(|c| one_line(&c.title))
                    .unwrap_or_default(),
                chart_alt: alert
                    .chart
                    .as_ref()
                    .map(|c| one_line(&chart::describe(c)))
                    .unwrap_or_default(),
            }
        })
        .collect();
    HtmlEmail {
        subject: subject.to_string(),
        headline: headline(notification),
        group_text: group_text(&notification.group_labels),
        alerts,
        sent_text: format_utc(notification.created_at_ms),
        chart_width: chart::WIDTH,
        chart_height: chart::HEIGHT,
    }
    .render()
}

/// The HTML part when the template fails: the text part, escaped, in `<pre>`.
pub fn fallback_html(subject: &str, text: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body><pre style=\"font-family:monospace;white-space:pre-wrap\">{}</pre></body></html>",
        crate::render::escape(subject),
        crate::render::escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{ChartSpec, EmailReceiver, TraceLink};

    pub(crate) fn sample() -> Notification {
        let now = 1_764_340_800_000;
        let alert = |name: &str, status, route: &str| AlertSummary {
            alertname: name.into(),
            status,
            labels: [
                ("alertname", name),
                ("service", "example-api"),
                ("route", route),
                ("severity", "page"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            annotations: [
                ("summary", "p99 of GET /v1/products/{id} is 312 ms"),
                ("description", "Line one\nLine two"),
                ("runbook_url", "https://runbooks.example/latency"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            value: Some(312.0),
            value_text: "312 ms".into(),
            threshold_text: "> 250 ms".into(),
            active_since_ms: now - 300_000,
            resolved_at_ms: (status == AlertStatus::Resolved).then_some(now - 10_000),
            dashboard_url: "http://localhost:8080/services/example-api".into(),
            exemplars: vec![TraceLink {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                url: "http://localhost:8080/traces/4bf92f3577b34da6a3ce929d0e0e4736".into(),
                duration_ms: 812.0,
                error: true,
            }],
            chart: Some(ChartSpec {
                title: "p99 latency".into(),
                unit: "ms".into(),
                points: (0..40)
                    .map(|i| (now - 600_000 + i * 15_000, 100.0 + (i * 7 % 250) as f64))
                    .collect(),
                threshold: Some(250.0),
                firing_from_ms: now - 300_000,
                firing_to_ms: None,
            }),
        };
        Notification {
            group_key: "route0/{alertname=\"HighP99Latency\"}".into(),
            receiver: "oncall".into(),
            email: EmailReceiver {
                to: vec!["oncall@example.com".into()],
                from: "redline@example.com".into(),
            },
            group_labels: [("alertname", "HighP99Latency"), ("service", "example-api")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            alerts: vec![
                alert(
                    "HighP99Latency",
                    AlertStatus::Firing,
                    "GET /v1/products/{id}",
                ),
                alert("HighP99Latency", AlertStatus::Firing, "GET /v1/orders"),
                alert("HighP99Latency", AlertStatus::Resolved, "GET /v1/cart"),
            ],
            created_at_ms: now,
        }
    }

    #[test]
    fn subject_counts_firing_alerts() {
        let mut n = sample();
        assert_eq!(subject(&n), "[FIRING:2] HighP99Latency example-api");
        for alert in &mut n.alerts {
            alert.status = AlertStatus::Resolved;
        }
        assert_eq!(subject(&n), "[RESOLVED] HighP99Latency example-api");
        n.group_labels.clear();
        n.alerts[0].alertname = "ErrorRate".into();
        assert_eq!(subject(&n), "[RESOLVED] ErrorRate +1 example-api");
        n.alerts[0]
            .labels
            .insert("service".into(), "a\r\nBcc: x".into());
        assert!(!subject(&n).contains('\n'));
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(format_duration(45_000), "45s");
        assert_eq!(format_duration(300_000), "5m");
        assert_eq!(format_duration(330_000), "5m 30s");
        assert_eq!(format_duration(3_900_000), "1h 5m");
        assert_eq!(format_duration(3 * 86_400_000 + 7_200_000), "3d 2h");
        assert_eq!(format_utc(1_764_340_800_000), "2025-11-28 14:40:00 UTC");
    }

    #[test]
    fn text_and_html_list_every_alert() {
        let rendered = preview(&sample());
        assert!(rendered.warnings.is_empty(), "{:?}", rendered.warnings);
        for part in [&rendered.text, &rendered.html] {
            assert!(part.contains("GET /v1/orders"));
            assert!(part.contains("GET /v1/cart"));
            assert!(part.contains("312 ms"));
            assert!(part.contains("2025-11-28 14:35:00 UTC"));
            assert!(part.contains("https://runbooks.example/latency"));
            assert!(part.contains("812 ms, error"));
        }
        assert!(rendered.text.contains("(for 5m)"));
        assert_eq!(rendered.images.len(), 3);
        assert!(rendered.html.contains("src=\"cid:chart-0@redline\""));
        let standalone = rendered.standalone_html();
        assert!(!standalone.contains("cid:"));
        assert_eq!(
            standalone
                .matches("src=\"data:image/png;base64,iVBOR")
                .count(),
            3
        );
    }

    #[test]
    fn large_groups_list_every_alert_but_cap_the_charts() {
        let mut n = sample();
        let template = n.alerts[0].clone();
        n.alerts = (0..25)
            .map(|i| {
                let mut alert = template.clone();
                alert.labels.insert("route".into(), format!("GET /r{i}"));
                alert
            })
            .collect();
        let rendered = preview(&n);
        assert_eq!(rendered.images.len(), MAX_CHARTS);
        assert_eq!(rendered.html.matches("src=\"cid:").count(), MAX_CHARTS);
        for i in 0..25 {
            assert!(rendered.text.contains(&format!("route = GET /r{i}\n")));
            assert!(rendered.html.contains(&format!("GET /r{i}<")));
        }
    }

    #[test]
    fn hostile_telemetry_stays_inert_in_html() {
        let mut n = sample();
        let hostile = "/a\"><script>alert(1)</script><img src=x onerror=alert(2)>";
        n.alerts[0].labels.insert("route".into(), hostile.into());
        n.alerts[0]
            .annotations
            .insert("summary".into(), hostile.into());
        n.alerts[0].dashboard_url = "javascript:alert(3)".into();
        n.alerts[0]
            .annotations
            .insert("runbook_url".into(), "https://x/\"><script>".into());
        let html = preview(&n).html;
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=x"));
        assert!(!html.contains("href=\"javascript:"));
        assert!(
            html.contains("&#60;script&#62;"),
            "askama's escaping: {html}"
        );
    }

    #[test]
    fn compose_builds_alternative_with_related_images() {
        let message = compose(&sample()).expect("composes");
        let raw = String::from_utf8_lossy(&message.formatted()).to_string();
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("multipart/related"));
        assert!(raw.contains("Content-ID: <chart-0@redline>"));
        assert!(raw.contains("Auto-Submitted: auto-generated"));
        assert!(raw.contains("image/png"));
    }

    #[test]
    fn compose_skips_bad_recipients_but_needs_one() {
        let mut n = sample();
        n.email.to = vec!["not an address".into(), "ok@example.com".into()];
        let message = compose(&n).expect("one good recipient is enough");
        assert_eq!(message.envelope().to().len(), 1);
        n.email.to = vec!["still not an address".into()];
        assert!(compose(&n).is_err());
    }

    #[test]
    fn fallback_html_escapes() {
        let html = fallback_html("s", "<b>x</b>");
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
    }
}
