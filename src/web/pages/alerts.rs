//! `/alerts`: rules with their state and value, active alerts, SLO error budgets, silences
//! (create with an expiry, delete) and the history of transitions. Also the alert engine's side
//! of [`AlertView`]: the firing banner and the threshold lines and firing periods on charts.

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{
    AlertView, Annotations, ChartTarget, FiringAlert, Layout, PageError, Pages, Pairs, Params,
    render,
};
use crate::alerts::config::{Rule, Selector};
use crate::alerts::engine::AlertState;
use crate::alerts::runtime::AlertsHandle;
use crate::notify::Outbox;
use crate::render::{Interval, Threshold, format_utc};
use crate::vocab::{TimeRange, now_ms};
use crate::web::alerts_api::{NewSilence, build_silence};

impl AlertView for AlertsHandle {
    fn firing(&self) -> Vec<FiringAlert> {
        let mut firing: Vec<FiringAlert> = self
            .view()
            .alerts
            .into_iter()
            .filter(|a| a.state == AlertState::Firing)
            .map(|a| FiringAlert {
                name: a.labels.get("alertname").cloned().unwrap_or(a.rule.clone()),
                severity: a.labels.get("severity").cloned().unwrap_or_default(),
                summary: a.annotations.get("summary").cloned().unwrap_or_default(),
                since_ms: a.fired_at_ms.unwrap_or(a.active_at_ms),
            })
            .collect();
        // Pages before tickets, then the longest-firing first.
        firing.sort_by(|a, b| {
            (a.severity != "page", a.since_ms).cmp(&(b.severity != "page", b.since_ms))
        });
        firing
    }

    fn annotations(&self, target: &ChartTarget<'_>, range: TimeRange) -> Annotations {
        let rules: Vec<Rule> = self
            .rules()
            .into_iter()
            .filter(|r| concerns(r, target))
            .collect();
        let thresholds = rules
            .iter()
            .filter(|r| matches!(r.kind, crate::alerts::config::RuleKind::Threshold))
            .map(|r| Threshold {
                value: r.threshold,
                label: r.name.clone(),
            })
            .collect();
        let now = now_ms();
        let firing = self
            .view()
            .periods
            .into_iter()
            .filter(|p| rules.iter().any(|r| r.name == p.rule))
            .filter(|p| labels_match(&p.labels, target))
            .filter(|p| p.from_ms < range.to_ms && p.to_ms.unwrap_or(now) > range.from_ms)
            .map(|p| Interval {
                from_ms: p.from_ms.max(range.from_ms),
                to_ms: p.to_ms.unwrap_or(now).min(range.to_ms),
                label: format!("{} firing", p.rule),
            })
            .collect();
        Annotations { thresholds, firing }
    }
}

/// A RED rule concerns a chart of the same service and statistic whose endpoint it covers.
fn concerns(rule: &Rule, target: &ChartTarget<'_>) -> bool {
    let Selector::Red { stat_name, .. } = &rule.selector else {
        return false;
    };
    let endpoint_rule = rule.method.is_some() || rule.route.is_some();
    let same_scope = match (target.method, target.route) {
        // An endpoint chart: rules on that endpoint, and per-endpoint (`by`) rules.
        (Some(method), Some(route)) => {
            rule.method.as_deref().is_none_or(|m| m == method)
                && rule.route.as_deref().is_none_or(|r| r == route)
                && (endpoint_rule || !rule.by.is_empty())
        }
        // A service chart: whole-service rules only.
        _ => !endpoint_rule && rule.by.is_empty(),
    };
    rule.service == target.service && stat_name == target.stat && same_scope
}

fn labels_match(
    labels: &std::collections::BTreeMap<String, String>,
    target: &ChartTarget<'_>,
) -> bool {
    labels.get("service").map(String::as_str) == Some(target.service)
        && target
            .method
            .is_none_or(|m| labels.get("method").is_none_or(|l| l == m))
        && target
            .route
            .is_none_or(|r| labels.get("route").is_none_or(|l| l == r))
}

pub struct RuleRow {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub condition: String,
    pub state: &'static str,
    pub value: String,
}

pub struct AlertRow {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub state: &'static str,
    pub since: String,
    pub value: String,
    pub summary: String,
    /// Matchers that silence exactly this alert, one per line.
    pub silence_matchers: String,
}

pub struct SloRow {
    pub name: String,
    pub service: String,
    pub objective: String,
    pub error_ratio: String,
    pub remaining: String,
    /// 0–100, for the bar.
    pub remaining_percent: u32,
    pub bad: bool,
}

pub struct SilenceRow {
    pub id: String,
    pub matchers: String,
    pub ends: String,
    pub created_by: String,
    pub comment: String,
}

pub struct HistoryRow {
    pub at: String,
    pub rule: String,
    pub labels: String,
    pub change: String,
    pub to: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
pub struct AlertsPage {
    pub layout: Layout,
    pub config_error: Option<String>,
    pub eval_errors: Vec<String>,
    pub last_eval: String,
    pub rules: Vec<RuleRow>,
    pub alerts: Vec<AlertRow>,
    pub slos: Vec<SloRow>,
    pub silences: Vec<SilenceRow>,
    pub history: Vec<HistoryRow>,
    pub prefill: String,
    pub mail: MailStatus,
}

/// The e-mail outbox at a glance: delivery failures must be visible, not only in logs.
pub struct MailStatus {
    pub sent: u64,
    pub pending: u64,
    pub failed: u64,
    pub last_error: String,
}

#[derive(Clone)]
struct AlertPages {
    pages: Pages,
    alerts: AlertsHandle,
    outbox: Outbox,
}

/// The `/alerts` routes; the caller's CSRF guard covers the POSTs.
pub fn router(pages: Pages, alerts: AlertsHandle, outbox: Outbox) -> Router {
    Router::new()
        .route("/alerts", get(page))
        .route("/alerts/silences", post(create_silence))
        .route("/alerts/silences/{id}/delete", post(delete_silence))
        .with_state(AlertPages {
            pages,
            alerts,
            outbox,
        })
}

fn value_text(value: Option<f64>, unit: &str) -> String {
    crate::alerts::template::format_value(value, unit)
}

async fn page(State(state): State<AlertPages>, pairs: Pairs) -> Result<Html<String>, PageError> {
    let params = Params::from_pairs(pairs);
    let choice = params.range()?;
    let refresh = params.refresh()?;
    let view = state.alerts.view();
    let units: std::collections::HashMap<String, &'static str> = state
        .alerts
        .rules()
        .iter()
        .map(|r| (r.name.clone(), r.unit()))
        .collect();
    let rules = view
        .rules
        .iter()
        .map(|r| RuleRow {
            name: r.name.clone(),
            kind: r.kind,
            target: format!(
                "{}{}{}",
                r.service,
                r.method
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default(),
                r.route
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default()
            ),
            condition: format!(
                "{} {} {}",
                r.stat,
                r.op,
                value_text(Some(r.threshold), r.unit)
            ),
            state: r.state,
            value: value_text(r.value, r.unit),
        })
        .collect();
    let alerts = view
        .alerts
        .iter()
        .map(|a| AlertRow {
            name: a.rule.clone(),
            labels: a
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            state: a.state.as_str(),
            since: format_utc(a.fired_at_ms.unwrap_or(a.active_at_ms)),
            value: value_text(a.value, units.get(&a.rule).copied().unwrap_or("")),
            summary: a.annotations.get("summary").cloned().unwrap_or_default(),
            silence_matchers: a
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .collect();
    let slos = view
        .slos
        .iter()
        .map(|s| {
            let remaining = s.budget_remaining.unwrap_or(1.0);
            SloRow {
                name: s.name.clone(),
                service: s.service.clone(),
                objective: format!("{}%", s.objective_percent),
                error_ratio: s
                    .error_ratio
                    .map_or("no data".into(), |r| format!("{:.3}%", r * 100.0)),
                remaining: s
                    .budget_remaining
                    .map_or("no data".into(), |r| format!("{:.1}%", r * 100.0)),
                remaining_percent: (remaining.clamp(0.0, 1.0) * 100.0) as u32,
                bad: remaining < 0.25,
            }
        })
        .collect();
    let silences = view
        .silences
        .iter()
        .map(|s| SilenceRow {
            id: s.id.clone(),
            matchers: s
                .matchers
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            ends: format_utc(s.ends_at_ms),
            created_by: s.created_by.clone(),
            comment: s.comment.clone(),
        })
        .collect();
    let history = state
        .alerts
        .history(choice.range.from_ms, 200)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|h| HistoryRow {
            at: format_utc(h.at_ms),
            labels: h
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            value: value_text(h.value, units.get(&h.rule).copied().unwrap_or("")),
            rule: h.rule,
            change: format!("{} → {}", h.from, h.to),
            to: h.to,
        })
        .collect();
    let outbox = state.outbox.stats().await.unwrap_or_default();
    let mail = MailStatus {
        sent: outbox.sent,
        pending: outbox.pending,
        failed: outbox.failed,
        last_error: match (outbox.last_error, outbox.last_error_ms) {
            (Some(error), Some(at)) => format!("{error} ({})", format_utc(at)),
            (Some(error), None) => error,
            _ => String::new(),
        },
    };
    let layout = Layout::new(&state.pages, "Alerts", "alerts", &params, &choice, refresh);
    render(&AlertsPage {
        layout,
        config_error: view.config_error,
        eval_errors: view.eval_errors,
        last_eval: view.last_eval_ms.map_or("not yet".into(), format_utc),
        rules,
        alerts,
        slos,
        silences,
        history,
        prefill: params.get("silence").unwrap_or("").to_string(),
        mail,
    })
}

/// The silence form: one matcher per line.
#[derive(Deserialize)]
struct SilenceForm {
    matchers: String,
    duration: String,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

async fn create_silence(
    State(state): State<AlertPages>,
    Form(form): Form<SilenceForm>,
) -> Response {
    let new = NewSilence {
        matchers: form
            .matchers
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        duration: Some(form.duration),
        ends_at_ms: None,
        created_by: form.created_by,
        comment: form.comment,
    };
    match build_silence(new, now_ms()) {
        Ok(silence) => match state.alerts.add_silence(silence).await {
            Ok(()) => Redirect::to("/alerts").into_response(),
            Err(e) => PageError::from(e).into_response(),
        },
        Err((parameter, message)) => PageError::bad(parameter, message).into_response(),
    }
}

async fn delete_silence(State(state): State<AlertPages>, Path(id): Path<String>) -> Response {
    match state.alerts.delete_silence(id).await {
        Ok(true) => Redirect::to("/alerts").into_response(),
        Ok(false) => PageError::not_found("no such silence").into_response(),
        Err(e) => PageError::from(e).into_response(),
    }
}
