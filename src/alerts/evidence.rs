//! What an alert e-mail carries besides the alert itself: a summary per alert with links to
//! the dashboard, exemplar traces of the endpoint, and the rule's figure around the firing time
//! as a chart.

use crate::alerts::config::{AlertsConfig, Rule, RuleKind, Selector};
use crate::alerts::engine::{Alert, Engine};
use crate::alerts::routing::Flush;
use crate::alerts::template;
use crate::notify::{AlertStatus, AlertSummary, ChartSpec, Notification, TraceLink};
use crate::query::{Query, RedStat};
use crate::render::url_component;
use crate::vocab::{RedFilter, TimeRange, TraceFilter};

/// Builds the e-mail content of one group: every alert with its evidence.
pub(super) async fn notification(
    dashboard_url: &str,
    query: &Query,
    config: &AlertsConfig,
    engine: &Engine,
    flush: &Flush,
    now: i64,
) -> Notification {
    let base = config
        .dashboard_url
        .clone()
        .unwrap_or_else(|| dashboard_url.to_string());
    let mut alerts = Vec::new();
    for (keys, status) in [
        (&flush.firing, AlertStatus::Firing),
        (&flush.resolved, AlertStatus::Resolved),
    ] {
        for key in keys {
            let Some(alert) = engine.get(key) else {
                continue;
            };
            let Some(rule) = config.rules.iter().find(|r| r.name == alert.rule) else {
                continue;
            };
            alerts.push(summary(&base, query, rule, alert, status, now).await);
        }
    }
    let email = config
        .receiver(&flush.receiver)
        .map(|r| r.email.clone())
        .unwrap_or(crate::notify::EmailReceiver {
            to: Vec::new(),
            from: "redline@localhost".into(),
        });
    Notification {
        group_key: flush.group_key.clone(),
        receiver: flush.receiver.clone(),
        email,
        group_labels: flush.group_labels.clone(),
        alerts,
        created_at_ms: now,
    }
}

async fn summary(
    base: &str,
    query: &Query,
    rule: &Rule,
    alert: &Alert,
    status: AlertStatus,
    now: i64,
) -> AlertSummary {
    let service = alert
        .labels
        .get("service")
        .cloned()
        .unwrap_or_else(|| rule.service.clone());
    let method = alert.labels.get("method").cloned();
    let route = alert.labels.get("route").cloned();
    let dashboard_url = match (&method, &route) {
        (Some(m), Some(r)) => format!(
            "{base}/services/{}/endpoints?method={}&route={}",
            url_component(&service),
            url_component(m),
            url_component(r)
        ),
        _ => format!("{base}/services/{}", url_component(&service)),
    };
    let unit = rule.unit();
    let threshold_text = match rule.kind {
        RuleKind::Absent => "no requests in the window".to_string(),
        RuleKind::BurnRate { .. } => {
            "burn rate over 14.4× (1h and 5m) or 6× (6h and 30m)".to_string()
        }
        _ => format!(
            "{} {}",
            rule.op.symbol(),
            template::format_value(Some(rule.threshold), unit)
        ),
    };
    AlertSummary {
        alertname: rule.name.clone(),
        status,
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        value: alert.value,
        value_text: template::format_value(alert.value, unit),
        threshold_text,
        active_since_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
        resolved_at_ms: alert.resolved_at_ms,
        dashboard_url,
        exemplars: exemplars(
            base,
            query,
            &service,
            method.as_deref(),
            route.as_deref(),
            alert,
            now,
        )
        .await,
        chart: chart(
            query,
            rule,
            &service,
            method.clone(),
            route.clone(),
            alert,
            now,
        )
        .await,
    }
}

async fn exemplars(
    base: &str,
    query: &Query,
    service: &str,
    method: Option<&str>,
    route: Option<&str>,
    alert: &Alert,
    now: i64,
) -> Vec<TraceLink> {
    let from = alert.active_at_ms - 10 * 60_000;
    let mut links = Vec::new();
    for errors_only in [true, false] {
        let filter = TraceFilter {
            service: Some(service.to_string()),
            method: method.map(str::to_string),
            route: route.map(str::to_string),
            errors_only,
            min_duration_ms: None,
            from_ms: from,
            to_ms: now,
            limit: 3,
            slowest_first: true,
        };
        for trace in query.traces(filter).await.unwrap_or_default() {
            if links.len() < 3
                && !links
                    .iter()
                    .any(|l: &TraceLink| l.trace_id == trace.trace_id)
            {
                links.push(TraceLink {
                    url: format!("{base}/traces/{}", trace.trace_id),
                    trace_id: trace.trace_id,
                    duration_ms: trace.duration_ms,
                    error: trace.error,
                });
            }
        }
    }
    links
}

/// The rule's figure around the firing time (30 min before it, until now) for the e-mail.
async fn chart(
    query: &Query,
    rule: &Rule,
    service: &str,
    method: Option<String>,
    route: Option<String>,
    alert: &Alert,
    now: i64,
) -> Option<ChartSpec> {
    let Selector::Red { stat, stat_name } = &rule.selector else {
        return None;
    };
    let (stat, title) = match rule.kind {
        RuleKind::Threshold => (*stat, stat_name.clone()),
        // Change and burn-rate rules: chart the underlying figure, no threshold line.
        _ => (*stat, stat_name.clone()),
    };
    let from = alert.active_at_ms.min(now) - 30 * 60_000;
    let range = TimeRange {
        from_ms: from,
        to_ms: now,
    };
    let step = ((now - from) / 90).max(10_000) / 10_000 * 10_000;
    let filter = RedFilter {
        service: Some(service.to_string()),
        method,
        route,
    };
    let points = query.series(filter, stat, range, step).await.ok()?;
    let points: Vec<(i64, f64)> = match stat {
        RedStat::ErrorRate => points.into_iter().map(|(t, v)| (t, v * 100.0)).collect(),
        _ => points,
    };
    Some(ChartSpec {
        title: format!("{title} of {service}"),
        unit: match stat {
            RedStat::ErrorRate => "%".into(),
            _ => rule.unit().to_string(),
        },
        points,
        threshold: matches!(rule.kind, RuleKind::Threshold).then(|| match stat {
            RedStat::ErrorRate => rule.threshold * 100.0,
            _ => rule.threshold,
        }),
        firing_from_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
        firing_to_ms: alert.resolved_at_ms,
    })
}
