//! The alert state machine with Prometheus' semantics, pure and driven by the caller's clock:
//! inactive → pending → firing → resolved, identity by labels, `for`, `keep_firing_for`,
//! hysteresis, no-data modes, resolved alerts kept for re-sending, and restoration after a
//! restart.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::alerts::config::{NoData, Rule};
use crate::alerts::routing::Labels;
use crate::alerts::template::{self, TemplateData};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            "resolved" => AlertState::Resolved,
            _ => return None,
        })
    }
}

/// One alert: a rule applied to one label set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub key: String,
    pub rule: String,
    pub labels: Labels,
    pub state: AlertState,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub keep_firing_since_ms: Option<i64>,
    pub value: Option<f64>,
    pub annotations: BTreeMap<String, String>,
    pub last_eval_ms: i64,
}

/// What one evaluation saw for one label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Series labels (e.g. method, route); rule labels and alertname are added here.
    pub labels: Labels,
    /// `None`: no data (no requests, below the rate guard, division by zero).
    pub value: Option<f64>,
    /// The alert condition holds.
    pub breach: bool,
    /// The value has not yet crossed the recovery threshold (hysteresis keeps firing).
    pub within_recovery: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transition {
    pub key: String,
    pub rule: String,
    pub labels: Labels,
    /// "inactive", "pending", "firing" or "resolved".
    pub from: &'static str,
    pub to: &'static str,
    pub value: Option<f64>,
    pub at_ms: i64,
}

/// The identity of an alert: its full label set.
pub fn alert_key(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn alert_labels(rule: &Rule, series: &Labels) -> Labels {
    let mut labels = rule.labels.clone();
    labels.insert("service".into(), rule.service.clone());
    if let Some(method) = &rule.method {
        labels.insert("method".into(), method.clone());
    }
    if let Some(route) = &rule.route {
        labels.insert("route".into(), route.clone());
    }
    labels.extend(series.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert("alertname".into(), rule.name.clone());
    labels
}

enum Verdict {
    Breach,
    /// Firing alerts stay firing (hysteresis); others treat it as clear.
    Hold,
    Clear,
    /// `no_data = "keep_last"`: nothing changes.
    Skip,
}

#[derive(Debug, Default, Clone)]
pub struct Engine {
    alerts: BTreeMap<String, Alert>,
    /// The largest value each rule saw at its last evaluation, alerting or not.
    last_values: BTreeMap<String, Option<f64>>,
}

impl Engine {
    /// Restores persisted alerts. Within `outage_tolerance` of their last evaluation every
    /// alert comes back as it was (pending time keeps counting, firing stays firing); after a
    /// longer outage pending alerts start over.
    pub fn restore(alerts: Vec<Alert>, now_ms: i64, outage_tolerance: Duration) -> Self {
        let tolerance = outage_tolerance.as_millis() as i64;
        Engine {
            alerts: alerts
                .into_iter()
                .filter(|a| a.state != AlertState::Pending || now_ms - a.last_eval_ms <= tolerance)
                .map(|a| (a.key.clone(), a))
                .collect(),
            last_values: BTreeMap::new(),
        }
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    pub fn get(&self, key: &str) -> Option<&Alert> {
        self.alerts.get(key)
    }

    /// Forgets alerts of rules no longer loaded (or changed).
    pub fn retain_rules(&mut self, keep: impl Fn(&str) -> bool) {
        self.alerts.retain(|_, a| keep(&a.rule));
    }

    /// Drops resolved alerts once they have been kept for `retention`.
    pub fn expire_resolved(&mut self, retention: Duration, now_ms: i64) {
        let retention = retention.as_millis() as i64;
        self.alerts.retain(|_, a| {
            a.state != AlertState::Resolved
                || a.resolved_at_ms.is_some_and(|r| now_ms - r < retention)
        });
    }

    /// The largest value `rule` saw at its last evaluation (`None`: no data).
    pub fn last_value(&self, rule: &str) -> Option<f64> {
        self.last_values.get(rule).copied().flatten()
    }

    /// Applies one evaluation of `rule`.
    pub fn evaluate(
        &mut self,
        rule: &Rule,
        observations: Vec<Observation>,
        now_ms: i64,
    ) -> Vec<Transition> {
        let seen_max = observations.iter().filter_map(|o| o.value).reduce(f64::max);
        self.last_values.insert(rule.name.clone(), seen_max);
        let mut transitions = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for observation in observations {
            let labels = alert_labels(rule, &observation.labels);
            let key = alert_key(&labels);
            seen.insert(key.clone());
            let verdict = match observation.value {
                None => no_data_verdict(rule.no_data),
                Some(_) if observation.breach => Verdict::Breach,
                Some(_) if observation.within_recovery => Verdict::Hold,
                Some(_) => Verdict::Clear,
            };
            self.apply(
                rule,
                key,
                labels,
                verdict,
                observation.value,
                now_ms,
                &mut transitions,
            );
        }
        // Alerts whose series vanished have no data this round.
        let vanished: Vec<(String, Labels)> = self
            .alerts
            .values()
            .filter(|a| {
                a.rule == rule.name && a.state != AlertState::Resolved && !seen.contains(&a.key)
            })
            .map(|a| (a.key.clone(), a.labels.clone()))
            .collect();
        for (key, labels) in vanished {
            self.apply(
                rule,
                key,
                labels,
                no_data_verdict(rule.no_data),
                None,
                now_ms,
                &mut transitions,
            );
        }
        transitions
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rule: &Rule,
        key: String,
        labels: Labels,
        verdict: Verdict,
        value: Option<f64>,
        now_ms: i64,
        transitions: &mut Vec<Transition>,
    ) {
        let for_ms = rule.for_.as_millis() as i64;
        let keep_ms = rule.keep_firing_for.as_millis() as i64;
        let mut transition = |from: &'static str, to: &'static str| {
            transitions.push(Transition {
                key: key.clone(),
                rule: rule.name.clone(),
                labels: labels.clone(),
                from,
                to,
                value,
                at_ms: now_ms,
            })
        };
        let current = self
            .alerts
            .get(&key)
            .filter(|a| a.state != AlertState::Resolved)
            .cloned();
        let next = match (current, verdict) {
            (_, Verdict::Skip) => {
                if let Some(alert) = self.alerts.get_mut(&key) {
                    alert.last_eval_ms = now_ms;
                }
                return;
            }
            (None, Verdict::Breach) => {
                let mut alert = Alert {
                    key: key.clone(),
                    rule: rule.name.clone(),
                    labels: labels.clone(),
                    state: AlertState::Pending,
                    active_at_ms: now_ms,
                    fired_at_ms: None,
                    resolved_at_ms: None,
                    keep_firing_since_ms: None,
                    value,
                    annotations: BTreeMap::new(),
                    last_eval_ms: now_ms,
                };
                if for_ms == 0 {
                    alert.state = AlertState::Firing;
                    alert.fired_at_ms = Some(now_ms);
                    transition("inactive", "firing");
                } else {
                    transition("inactive", "pending");
                }
                Some(alert)
            }
            (None, _) => None,
            (Some(mut alert), Verdict::Breach) => {
                alert.keep_firing_since_ms = None;
                if alert.state == AlertState::Pending && now_ms - alert.active_at_ms >= for_ms {
                    alert.state = AlertState::Firing;
                    alert.fired_at_ms = Some(now_ms);
                    transition("pending", "firing");
                }
                Some(alert)
            }
            (Some(alert), Verdict::Hold) if alert.state == AlertState::Firing => {
                let mut alert = alert;
                alert.keep_firing_since_ms = None;
                Some(alert)
            }
            (Some(alert), _) if alert.state == AlertState::Pending => {
                transition("pending", "inactive");
                self.alerts.remove(&key);
                return;
            }
            (Some(mut alert), _) => {
                let since = *alert.keep_firing_since_ms.get_or_insert(now_ms);
                if keep_ms == 0 || now_ms - since >= keep_ms {
                    alert.state = AlertState::Resolved;
                    alert.resolved_at_ms = Some(now_ms);
                    alert.keep_firing_since_ms = None;
                    transition("firing", "resolved");
                }
                Some(alert)
            }
        };
        let Some(mut alert) = next else {
            return;
        };
        alert.value = value.or(alert.value);
        alert.last_eval_ms = now_ms;
        alert.labels = labels;
        // Re-templated every evaluation; never touches the timers.
        alert.annotations = rule
            .annotations
            .iter()
            .map(|(name, text)| {
                let data = TemplateData {
                    labels: &alert.labels,
                    value: alert.value,
                    rule: rule.template_facts(),
                };
                (name.clone(), template::render_or_fallback(text, &data))
            })
            .collect();
        self.alerts.insert(key, alert);
    }
}

fn no_data_verdict(mode: NoData) -> Verdict {
    match mode {
        NoData::Ok => Verdict::Clear,
        NoData::Alerting => Verdict::Breach,
        NoData::KeepLast => Verdict::Skip,
    }
}

/// A period during which an alert was firing (`to_ms` `None`: still firing), for shading charts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FiringPeriod {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub from_ms: i64,
    pub to_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::parse;

    const S: i64 = 1000;

    fn rule(extra: &str) -> Rule {
        let text = format!(
            r#"[[receiver]]
name = "r"
email = {{ to = ["a@example.com"] }}
[[rule]]
name = "HighP99"
service = "api"
stat = "p99"
threshold = 250
annotations = {{ summary = "p99 is {{{{ value }}}}" }}
{extra}
"#
        );
        parse(&text).unwrap().rules.remove(0)
    }

    fn seen(value: f64, rule: &Rule) -> Vec<Observation> {
        vec![Observation {
            labels: Labels::new(),
            value: Some(value),
            breach: rule.op.holds(value, rule.threshold),
            within_recovery: rule
                .recovery_threshold
                .is_some_and(|r| rule.op.holds(value, r)),
        }]
    }

    fn nothing() -> Vec<Observation> {
        vec![Observation {
            labels: Labels::new(),
            value: None,
            breach: false,
            within_recovery: false,
        }]
    }

    fn state(engine: &Engine) -> Option<AlertState> {
        engine.alerts().next().map(|a| a.state)
    }

    #[test]
    fn pending_becomes_firing_exactly_at_for() {
        let rule = rule("for = \"2m\"");
        let mut engine = Engine::default();
        let t = engine.evaluate(&rule, seen(300.0, &rule), 0);
        assert_eq!((t[0].from, t[0].to), ("inactive", "pending"));
        engine.evaluate(&rule, seen(300.0, &rule), 119 * S);
        assert_eq!(state(&engine), Some(AlertState::Pending));
        let t = engine.evaluate(&rule, seen(300.0, &rule), 120 * S);
        assert_eq!((t[0].from, t[0].to), ("pending", "firing"));
        assert_eq!(engine.alerts().next().unwrap().active_at_ms, 0);
    }

    #[test]
    fn without_for_the_first_breach_fires() {
        let rule = rule("");
        let mut engine = Engine::default();
        let t = engine.evaluate(&rule, seen(300.0, &rule), 0);
        assert_eq!((t[0].from, t[0].to), ("inactive", "firing"));
    }

    #[test]
    fn a_pending_alert_that_clears_is_dropped() {
        let rule = rule("for = \"2m\"");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        let t = engine.evaluate(&rule, seen(100.0, &rule), 60 * S);
        assert_eq!((t[0].from, t[0].to), ("pending", "inactive"));
        assert_eq!(state(&engine), None);
        // It starts over: `for` counts from the new breach.
        engine.evaluate(&rule, seen(300.0, &rule), 70 * S);
        engine.evaluate(&rule, seen(300.0, &rule), 180 * S);
        assert_eq!(state(&engine), Some(AlertState::Pending));
    }

    #[test]
    fn keep_firing_for_holds_and_resets() {
        let rule = rule("keep_firing_for = \"1m\"");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        engine.evaluate(&rule, seen(100.0, &rule), 15 * S);
        assert_eq!(state(&engine), Some(AlertState::Firing));
        // Back above: the keep-firing clock resets.
        engine.evaluate(&rule, seen(300.0, &rule), 30 * S);
        engine.evaluate(&rule, seen(100.0, &rule), 45 * S);
        engine.evaluate(&rule, seen(100.0, &rule), 100 * S);
        assert_eq!(state(&engine), Some(AlertState::Firing));
        let t = engine.evaluate(&rule, seen(100.0, &rule), 105 * S);
        assert_eq!((t[0].from, t[0].to), ("firing", "resolved"));
    }

    #[test]
    fn hysteresis_keeps_firing_until_the_recovery_threshold() {
        let rule = rule("recovery_threshold = 200");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        engine.evaluate(&rule, seen(240.0, &rule), 15 * S);
        assert_eq!(
            state(&engine),
            Some(AlertState::Firing),
            "below threshold, above recovery"
        );
        engine.evaluate(&rule, seen(190.0, &rule), 30 * S);
        assert_eq!(state(&engine), Some(AlertState::Resolved));
        // Hysteresis does not start an alert.
        let mut fresh = Engine::default();
        fresh.evaluate(&rule, seen(240.0, &rule), 0);
        assert_eq!(state(&fresh), None);
    }

    #[test]
    fn identity_is_the_label_set_and_annotations_do_not_reset_for() {
        let rule = rule("for = \"1m\"");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        engine.evaluate(&rule, seen(400.0, &rule), 30 * S);
        let alert = engine.alerts().next().unwrap();
        assert_eq!(engine.alerts().count(), 1, "a new value is not a new alert");
        assert_eq!(alert.active_at_ms, 0);
        assert_eq!(alert.annotations["summary"], "p99 is 400 ms");
        assert_eq!(alert.labels["alertname"], "HighP99");
        assert_eq!(alert.labels["service"], "api");
    }

    #[test]
    fn no_data_modes() {
        let ok = rule("no_data = \"ok\"");
        let mut engine = Engine::default();
        engine.evaluate(&ok, seen(300.0, &ok), 0);
        engine.evaluate(&ok, nothing(), 15 * S);
        assert_eq!(state(&engine), Some(AlertState::Resolved));

        let alerting = rule("no_data = \"alerting\"");
        let mut engine = Engine::default();
        engine.evaluate(&alerting, nothing(), 0);
        assert_eq!(state(&engine), Some(AlertState::Firing));

        let keep = rule("no_data = \"keep_last\"");
        let mut engine = Engine::default();
        engine.evaluate(&keep, seen(300.0, &keep), 0);
        engine.evaluate(&keep, nothing(), 15 * S);
        engine.evaluate(&keep, Vec::new(), 30 * S);
        assert_eq!(state(&engine), Some(AlertState::Firing));
    }

    #[test]
    fn resolved_alerts_are_kept_for_the_retention_window() {
        let rule = rule("");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        engine.evaluate(&rule, seen(100.0, &rule), 10 * S);
        engine.expire_resolved(Duration::from_secs(900), 900 * S);
        assert_eq!(state(&engine), Some(AlertState::Resolved));
        engine.expire_resolved(Duration::from_secs(900), 910 * S);
        assert_eq!(state(&engine), None);
    }

    #[test]
    fn a_restart_keeps_firing_and_pending_time_within_tolerance() {
        let rule = rule("for = \"5m\"");
        let mut engine = Engine::default();
        engine.evaluate(&rule, seen(300.0, &rule), 0);
        let saved: Vec<Alert> = engine.alerts().cloned().collect();
        let mut restored = Engine::restore(saved.clone(), 120 * S, Duration::from_secs(3600));
        let t = restored.evaluate(&rule, seen(300.0, &rule), 300 * S);
        assert_eq!(
            (t[0].from, t[0].to),
            ("pending", "firing"),
            "pending time survived"
        );
        let long_outage = Engine::restore(saved, 2 * 3600 * S, Duration::from_secs(3600));
        assert_eq!(long_outage.alerts().count(), 0);
    }
}
