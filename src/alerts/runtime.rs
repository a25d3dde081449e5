//! The alerting loop: every `eval_interval` evaluate all rules through the query layer, advance
//! the state machine, persist state and transitions, route and group, and hand notifications
//! to the sink (the e-mail outbox). Reloads `alerts.toml` on SIGHUP or when the file changes;
//! a file that fails to validate is logged and the last good rule set stays in force. Mail
//! delivery settings are part of the file: each good load publishes them to the sender.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::{Notify, watch};

use crate::alerts::config::{self, AlertsConfig, AlertsConfigError, Rule, RuleKind, Selector};
use crate::alerts::engine::{Alert, AlertState, Engine, FiringPeriod, Transition};
use crate::alerts::routing::{AlertView, Dispatcher, Silence};
use crate::alerts::source::{self, DataSource};
use crate::alerts::store::{self as persist, AlertStore, HistoryEntry};
use crate::notify::{Delivery, Notification, NotifyError};
use crate::query::Query;
use crate::store::StoreError;
use crate::vocab::{RedFilter, TimeRange, now_ms};

/// Where notifications go once the dispatcher decides to send them.
pub trait NotificationSink: Send + Sync + 'static {
    /// Durably queues the notification (before the notification log records it as sent).
    fn enqueue(
        &self,
        notification: Notification,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
}

/// A rule's current standing, for the dashboard and the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleStatus {
    pub name: String,
    pub kind: &'static str,
    pub service: String,
    pub method: Option<String>,
    pub route: Option<String>,
    pub stat: String,
    pub op: &'static str,
    pub threshold: f64,
    pub unit: &'static str,
    /// "inactive", "pending" or "firing": the most severe state among its alerts.
    pub state: &'static str,
    pub value: Option<f64>,
    pub labels: BTreeMap<String, String>,
}

/// An SLO's error budget over its period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SloStatus {
    pub name: String,
    pub service: String,
    pub objective_percent: f64,
    pub error_ratio: Option<f64>,
    /// 1.0 = untouched, 0.0 = spent, negative = overspent.
    pub budget_remaining: Option<f64>,
}

/// Past firing periods kept in memory for chart shading.
const PERIODS_KEPT: usize = 1000;

/// What the alerting loop shows the rest of redline.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AlertsView {
    pub rules: Vec<RuleStatus>,
    pub alerts: Vec<Alert>,
    pub silences: Vec<Silence>,
    pub slos: Vec<SloStatus>,
    /// Firing periods: ended ones since start (bounded) and current ones.
    pub periods: Vec<FiringPeriod>,
    pub last_eval_ms: Option<i64>,
    /// The last failure to reload the rules file (the previous rules stay in force).
    pub config_error: Option<String>,
    pub eval_errors: Vec<String>,
}

/// Shared access to the alerting state: read by pages and the API, silences written through it.
#[derive(Clone)]
pub struct AlertsHandle {
    view: Arc<RwLock<AlertsView>>,
    store: AlertStore,
    reload: Arc<Notify>,
    wake: Arc<Notify>,
    rules: Arc<RwLock<Vec<Rule>>>,
}

impl AlertsHandle {
    pub fn new(store: AlertStore) -> Self {
        AlertsHandle {
            view: Arc::new(RwLock::new(AlertsView::default())),
            store,
            reload: Arc::new(Notify::new()),
            wake: Arc::new(Notify::new()),
            rules: Arc::new(RwLock::new(Vec::new())),
        }
    }

    pub fn view(&self) -> AlertsView {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The loaded rules (thresholds for charts).
    pub fn rules(&self) -> Vec<Rule> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the loop to reload the rules file (SIGHUP).
    pub fn request_reload(&self) {
        self.reload.notify_one();
    }

    pub async fn add_silence(&self, silence: Silence) -> Result<(), StoreError> {
        let stored = silence.clone();
        self.store
            .run(move |conn| persist::save_silence(conn, &stored))
            .await?;
        // Shown at once; the loop applies it to notifications on its next (immediate) cycle.
        self.publish(|view| {
            view.silences.push(silence);
            view.silences.sort_by_key(|s| s.ends_at_ms);
        });
        self.wake.notify_one();
        Ok(())
    }

    pub async fn delete_silence(&self, id: String) -> Result<bool, StoreError> {
        let key = id.clone();
        let deleted = self
            .store
            .run(move |conn| persist::delete_silence(conn, &key))
            .await?;
        self.publish(|view| view.silences.retain(|s| s.id != id));
        self.wake.notify_one();
        Ok(deleted)
    }

    pub async fn history(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store
            .run(move |conn| persist::history(conn, since_ms, limit))
            .await
    }

    fn publish(&self, update: impl FnOnce(&mut AlertsView)) {
        update(&mut self.view.write().unwrap_or_else(|p| p.into_inner()));
    }
}

pub struct AlertsSettings {
    pub rules_file: PathBuf,
    /// Base URL of the dashboard for links in e-mails (no trailing slash).
    pub dashboard_url: String,
    /// Where mail goes, published from every rules file that loads (the e-mail sender
    /// follows it).
    pub delivery: watch::Sender<Delivery>,
    /// Where `.eml` files go when the rules file configures no SMTP server.
    pub outbox_dir: PathBuf,
}

impl AlertsSettings {
    /// Publishes the delivery of a rules file that loaded; the sender only hears of a change.
    fn publish_delivery(&self, config: &AlertsConfig) {
        let fresh = config.delivery(&self.outbox_dir);
        self.delivery.send_if_modified(|current| {
            let changed = *current != fresh;
            if changed {
                *current = fresh;
            }
            changed
        });
    }
}

/// The rules file, with the modification time it was read at.
struct Loaded {
    config: AlertsConfig,
    modified: Option<SystemTime>,
}

/// The rules file's modification time, read without blocking the runtime.
async fn modified(path: &std::path::Path) -> Option<SystemTime> {
    tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .ok()
}

/// The rules file's modification time and its rules, read and parsed on a blocking thread. No
/// file means no rules, a valid state for a new user.
async fn read_rules(
    path: &std::path::Path,
) -> (Option<SystemTime>, Result<AlertsConfig, AlertsConfigError>) {
    let path = path.to_path_buf();
    let read = path.clone();
    tokio::task::spawn_blocking(move || {
        let modified = std::fs::metadata(&read).and_then(|m| m.modified()).ok();
        let config = match modified {
            None => Ok(AlertsConfig::default()),
            Some(_) => config::load(&read),
        };
        (modified, config)
    })
    .await
    .unwrap_or_else(|e| {
        let source = std::io::Error::other(e);
        (None, Err(AlertsConfigError::Read { path, source }))
    })
}

/// Runs until `stop` turns true.
pub async fn run<N: NotificationSink>(
    settings: AlertsSettings,
    query: Query,
    handle: AlertsHandle,
    sink: N,
    mut stop: watch::Receiver<bool>,
) {
    let mut loaded = match read_rules(&settings.rules_file).await {
        (modified, Ok(config)) => {
            settings.publish_delivery(&config);
            Loaded { config, modified }
        }
        (modified, Err(error)) => {
            tracing::error!(%error, "alert rules not loaded; no rules in force until the file is fixed");
            handle.publish(|v| v.config_error = Some(error.to_string()));
            Loaded {
                config: AlertsConfig::default(),
                modified,
            }
        }
    };
    let store = handle.store.clone();
    let saved = store.run(persist::load_alerts).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not restore alert state");
        Vec::new()
    });
    let mut engine = Engine::restore(saved, now_ms(), loaded.config.outage_tolerance);
    let log = store.run(persist::load_log).await.unwrap_or_default();
    let mut dispatcher = Dispatcher::with_log(log);
    *handle.rules.write().unwrap_or_else(|p| p.into_inner()) = loaded.config.rules.clone();
    // Ended firing periods from before this start, so charts shade them too.
    let mut past: std::collections::VecDeque<FiringPeriod> = store
        .run(|conn| persist::firing_periods(conn, PERIODS_KEPT))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not restore past firing periods");
            Vec::new()
        })
        .into();

    loop {
        let started = now_ms();
        let state = LoopState {
            engine: &mut engine,
            dispatcher: &mut dispatcher,
            past: &mut past,
        };
        cycle(
            &settings,
            &query,
            &handle,
            &sink,
            &loaded.config,
            state,
            started,
        )
        .await;
        let wait = loaded.config.eval_interval;
        let reload_requested = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = handle.wake.notified() => false,
            _ = handle.reload.notified() => true,
            _ = stop.wait_for(|s| *s) => break,
        };
        if reload_requested {
            let fresh = read_rules(&settings.rules_file).await;
            if reload(fresh, &handle, &mut loaded, &mut engine, true) {
                settings.publish_delivery(&loaded.config);
            }
        }
        if modified(&settings.rules_file).await != loaded.modified {
            let fresh = read_rules(&settings.rules_file).await;
            if reload(fresh, &handle, &mut loaded, &mut engine, false) {
                settings.publish_delivery(&loaded.config);
            }
        }
    }
}

/// Loads the file again; on success unchanged rules keep their alerts, changed or removed
/// rules lose theirs. On failure everything stays as it was. Whether the file loaded.
fn reload(
    (modified, config): (Option<SystemTime>, Result<AlertsConfig, AlertsConfigError>),
    handle: &AlertsHandle,
    loaded: &mut Loaded,
    engine: &mut Engine,
    forced: bool,
) -> bool {
    match config {
        Ok(config) => {
            let fresh = Loaded { config, modified };
            let unchanged: HashSet<String> = fresh
                .config
                .rules
                .iter()
                .filter(|rule| loaded.config.rules.contains(rule))
                .map(|rule| rule.name.clone())
                .collect();
            engine.retain_rules(|name| unchanged.contains(name));
            tracing::info!(
                rules = fresh.config.rules.len(),
                forced,
                "alert rules reloaded"
            );
            *handle.rules.write().unwrap_or_else(|p| p.into_inner()) = fresh.config.rules.clone();
            handle.publish(|v| v.config_error = None);
            *loaded = fresh;
            true
        }
        Err(error) => {
            tracing::error!(%error, "alert rules file rejected; the previous rules stay in force");
            handle.publish(|v| v.config_error = Some(error.to_string()));
            loaded.modified = modified;
            false
        }
    }
}

/// What the loop carries from one cycle to the next.
struct LoopState<'a> {
    engine: &'a mut Engine,
    dispatcher: &'a mut Dispatcher,
    past: &'a mut std::collections::VecDeque<FiringPeriod>,
}

async fn cycle<N: NotificationSink>(
    settings: &AlertsSettings,
    query: &Query,
    handle: &AlertsHandle,
    sink: &N,
    config: &AlertsConfig,
    state: LoopState<'_>,
    now: i64,
) {
    let LoopState {
        engine,
        dispatcher,
        past,
    } = state;
    // Fired-at times of alerts about to resolve, before the engine forgets them.
    let fired_before: BTreeMap<String, i64> = engine
        .alerts()
        .filter_map(|a| a.fired_at_ms.map(|f| (a.key.clone(), f)))
        .collect();
    let (transitions, errors) = evaluate_all(query, config, engine, now).await;
    for t in transitions
        .iter()
        .filter(|t| t.from == "firing" && t.to == "resolved")
    {
        if let Some(from_ms) = fired_before.get(&t.key) {
            past.push_back(FiringPeriod {
                rule: t.rule.clone(),
                labels: t.labels.clone(),
                from_ms: *from_ms,
                to_ms: Some(t.at_ms),
            });
        }
    }
    while past.len() > PERIODS_KEPT {
        past.pop_front();
    }
    let mut periods: Vec<FiringPeriod> = past.iter().cloned().collect();
    periods.extend(
        engine
            .alerts()
            .filter(|a| a.state == AlertState::Firing)
            .map(|a| FiringPeriod {
                rule: a.rule.clone(),
                labels: a.labels.clone(),
                from_ms: a.fired_at_ms.unwrap_or(a.active_at_ms),
                to_ms: None,
            }),
    );
    for t in &transitions {
        tracing::info!(rule = %t.rule, from = t.from, to = t.to, value = ?t.value, "alert transition");
    }
    let alerts: Vec<Alert> = engine.alerts().cloned().collect();
    let store = handle.store.clone();
    let (to_save, transitions_to_save) = (alerts.clone(), transitions.clone());
    if let Err(e) = store
        .run(move |conn| persist::save_evaluation(conn, &to_save, &transitions_to_save))
        .await
    {
        tracing::error!(error = %e, "alert state not saved");
    }
    let silences = store
        .run(move |conn| persist::load_silences(conn, now))
        .await
        .unwrap_or_default();
    let views: Vec<AlertView> = alerts
        .iter()
        .filter(|a| a.state != AlertState::Pending)
        .map(|a| AlertView {
            key: a.key.clone(),
            labels: a.labels.clone(),
            firing: a.state == AlertState::Firing,
        })
        .collect();
    dispatcher.update(&config.route, &config.inhibit, &silences, &views, now);
    let flushes = dispatcher.due(now);
    let mut queued_all = true;
    for flush in flushes {
        let notification = super::evidence::notification(
            &settings.dashboard_url,
            query,
            config,
            engine,
            &flush,
            now,
        )
        .await;
        if let Err(e) = sink.enqueue(notification).await {
            tracing::error!(error = %e, group = %flush.group_key, "notification not queued");
            queued_all = false;
            // Not logged as sent: the next cycle tries again.
            dispatcher.log.remove(&flush.group_key);
        }
    }
    let log = dispatcher.log.clone();
    if let Err(e) = store.run(move |conn| persist::save_log(conn, &log)).await {
        tracing::error!(error = %e, queued_all, "notification log not saved");
    }
    let slos = slo_status(query, config, now).await;
    let rules = rule_statuses(config, engine);
    handle.publish(|view| {
        view.rules = rules;
        view.alerts = alerts;
        view.silences = silences;
        view.slos = slos;
        view.periods = periods;
        view.last_eval_ms = Some(now);
        view.eval_errors = errors;
    });
    crate::self_metrics::alerts(
        [
            AlertState::Pending,
            AlertState::Firing,
            AlertState::Resolved,
        ]
        .map(|state| {
            let count = engine.alerts().filter(|a| a.state == state).count();
            (state.as_str(), count)
        }),
    );
}

/// Evaluates every rule once.
pub async fn evaluate_all<S: DataSource + Sync>(
    source: &S,
    config: &AlertsConfig,
    engine: &mut Engine,
    now: i64,
) -> (Vec<Transition>, Vec<String>) {
    let mut transitions = Vec::new();
    let mut errors = Vec::new();
    let cached = source::CycleCache::new(source);
    for rule in &config.rules {
        match source::evaluate(&cached, rule, now).await {
            Ok(observations) => transitions.extend(engine.evaluate(rule, observations, now)),
            Err(e) => errors.push(format!("{}: {e}", rule.name)),
        }
    }
    engine.expire_resolved(config.resolved_retention, now);
    (transitions, errors)
}

fn rule_statuses(config: &AlertsConfig, engine: &Engine) -> Vec<RuleStatus> {
    config
        .rules
        .iter()
        .map(|rule| {
            let mine: Vec<&Alert> = engine.alerts().filter(|a| a.rule == rule.name).collect();
            let state = if mine.iter().any(|a| a.state == AlertState::Firing) {
                "firing"
            } else if mine.iter().any(|a| a.state == AlertState::Pending) {
                "pending"
            } else {
                "inactive"
            };
            RuleStatus {
                name: rule.name.clone(),
                kind: match rule.kind {
                    RuleKind::Threshold => "threshold",
                    RuleKind::Change { .. } => "change",
                    RuleKind::Absent => "absent",
                    RuleKind::BurnRate { .. } => "burn_rate",
                },
                service: rule.service.clone(),
                method: rule.method.clone(),
                route: rule.route.clone(),
                stat: match &rule.selector {
                    Selector::Red { stat_name, .. } => stat_name.clone(),
                    Selector::Metric { name, .. } => name.clone(),
                },
                op: rule.op.symbol(),
                threshold: rule.threshold,
                unit: rule.unit(),
                state,
                value: engine.last_value(&rule.name),
                labels: rule.labels.clone(),
            }
        })
        .collect()
}

async fn slo_status(query: &Query, config: &AlertsConfig, now: i64) -> Vec<SloStatus> {
    let mut out = Vec::new();
    for rule in config.rules.iter().filter(|r| r.name.ends_with("-page")) {
        let RuleKind::BurnRate { error_budget, .. } = rule.kind else {
            continue;
        };
        let period = TimeRange {
            from_ms: now - 30 * 86_400_000,
            to_ms: now,
        };
        let filter = RedFilter {
            service: Some(rule.service.clone()),
            method: rule.method.clone(),
            route: rule.route.clone(),
        };
        let stats = query.red_stats(filter, period).await.unwrap_or_default();
        let (requests, errors) = stats.iter().fold((0u64, 0u64), |(r, e), (_, s)| {
            (r + s.requests, e + s.errors)
        });
        let error_ratio = (requests > 0).then(|| errors as f64 / requests as f64);
        out.push(SloStatus {
            name: rule
                .labels
                .get("slo")
                .cloned()
                .unwrap_or_else(|| rule.name.clone()),
            service: rule.service.clone(),
            objective_percent: (1.0 - error_budget) * 100.0,
            error_ratio,
            budget_remaining: error_ratio.map(|ratio| 1.0 - ratio / error_budget),
        });
    }
    out
}
