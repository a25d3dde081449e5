//! Sample data for `redline preview-email RULE`: the notification a rule would produce, with
//! made-up but plausible values, rendered through the same code as real mail.

use crate::alerts::config::{AlertsConfig, RuleKind};
use crate::alerts::engine::alert_labels;
use crate::alerts::template::{self, TemplateData};
use crate::notify::{AlertStatus, AlertSummary, ChartSpec, EmailReceiver, Notification, TraceLink};
use crate::vocab::now_ms;

pub fn sample_notification(config: &AlertsConfig, rule_name: &str) -> Option<Notification> {
    let rule = config.rules.iter().find(|r| r.name == rule_name)?;
    let now = now_ms();
    let labels = alert_labels(rule, &rule.sample_labels());
    let value = match rule.kind {
        RuleKind::Absent => 0.0,
        _ => rule.threshold * 1.5,
    };
    let annotations = rule
        .annotations
        .iter()
        .map(|(k, text)| {
            let data = TemplateData {
                labels: &labels,
                value: Some(value),
                rule: rule.template_facts(),
            };
            (k.clone(), template::render_or_fallback(text, &data))
        })
        .collect();
    let fired = now - 6 * 60_000;
    let points = (0..60)
        .map(|i| {
            let t = now - (60 - i) * 30_000;
            let level = if t >= fired {
                value
            } else {
                rule.threshold * 0.6
            };
            (t, level * (1.0 + 0.05 * ((i % 7) as f64 - 3.0) / 3.0))
        })
        .collect();
    let base = config
        .dashboard_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:9900".into());
    let receiver = config.route.receiver.clone();
    let email = config
        .receiver(&receiver)
        .map(|r| r.email.clone())
        .unwrap_or(EmailReceiver {
            to: vec!["oncall@example.com".into()],
            from: "redline@localhost".into(),
        });
    let unit = rule.unit();
    Some(Notification {
        group_key: format!("preview:{}", rule.name),
        receiver,
        email,
        group_labels: [
            ("alertname".to_string(), rule.name.clone()),
            ("service".to_string(), rule.service.clone()),
        ]
        .into(),
        alerts: vec![AlertSummary {
            alertname: rule.name.clone(),
            status: AlertStatus::Firing,
            labels,
            annotations,
            value: Some(value),
            value_text: template::format_value(Some(value), unit),
            threshold_text: format!(
                "{} {}",
                rule.op.symbol(),
                template::format_value(Some(rule.threshold), unit)
            ),
            active_since_ms: fired,
            resolved_at_ms: None,
            dashboard_url: format!("{base}/services/{}", rule.service),
            exemplars: vec![TraceLink {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                url: format!("{base}/traces/4bf92f3577b34da6a3ce929d0e0e4736"),
                duration_ms: 1234.5,
                error: true,
            }],
            chart: Some(ChartSpec {
                title: format!("{} of {}", rule.name, rule.service),
                unit: unit.to_string(),
                points,
                threshold: Some(rule.threshold),
                firing_from_ms: fired,
                firing_to_ms: None,
            }),
        }],
        created_at_ms: now,
    })
}
