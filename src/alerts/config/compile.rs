//! Turning the written rules, SLOs, routes and SMTP settings into the validated model, each
//! problem reported at the value it is about.

use super::*;

/// The figure `stat = "log_errors"` names: log records at ERROR and above.
pub const LOG_ERRORS: &str = "log_errors";

/// `log_errors` as what it reads: the sum of the service's counts of log records at ERROR and
/// above over the window.
fn log_errors_selector() -> Selector {
    use crate::model::log_record::{ERROR_ATTRIBUTE, LOG_RECORDS_METRIC};
    Selector::Metric {
        name: LOG_RECORDS_METRIC.to_string(),
        agg: Some(MetricAggregation::Sum),
        attributes: BTreeMap::from([(ERROR_ATTRIBUTE.to_string(), "true".to_string())]),
    }
}

pub(super) fn compile_rule(
    checker: &mut Checker<'_>,
    spans: &FieldSpans,
    spec: RuleSpec,
) -> Option<Rule> {
    let name = spec.name.clone();
    let problems_before = checker.problems.len();
    // Problems point at the field they are about ("" = the rule as a whole).
    let bad = |checker: &mut Checker<'_>, field: &str, message: String| {
        checker.at(spans.of(field), format!("rule {name:?}: {message}"))
    };
    let window = checker.duration(&spans.of("window"), "window", spec.window.as_deref(), "5m");
    let for_ = checker.duration(&spans.of("for"), "for", spec.for_.as_deref(), "0s");
    let keep_firing_for = checker.duration(
        &spans.of("keep_firing_for"),
        "keep_firing_for",
        spec.keep_firing_for.as_deref(),
        "0s",
    );
    let selector = match (&spec.stat, spec.metric) {
        (Some(stat), None) if stat == LOG_ERRORS => {
            if spec.method.is_some() || spec.route.is_some() {
                bad(
                    checker,
                    "stat",
                    "log_errors counts the service's log records; method and route do not apply"
                        .into(),
                );
            }
            Some(log_errors_selector())
        }
        (Some(stat), None) => match RedStat::parse(stat) {
            Some(parsed) => Some(Selector::Red {
                stat: parsed,
                stat_name: stat.clone(),
            }),
            None => {
                bad(
                    checker,
                    "stat",
                    format!("stat {stat:?} is not one of {RED_STATS}"),
                );
                None
            }
        },
        (None, Some(metric)) => {
            let agg = match metric.agg.as_deref() {
                None => None,
                Some(a) => match MetricAggregation::parse(a) {
                    Some(agg) => Some(agg),
                    None => {
                        bad(
                            checker,
                            "metric.agg",
                            format!(
                                "metric agg {a:?} is not one of avg, min, max, last, sum, rate, count, p50, p90, p95, p99"
                            ),
                        );
                        None
                    }
                },
            };
            Some(Selector::Metric {
                name: metric.name,
                agg,
                attributes: metric.attributes,
            })
        }
        (Some(_), Some(_)) => {
            bad(
                checker,
                "metric",
                "give either stat (a RED figure) or metric, not both".into(),
            );
            None
        }
        (None, None) if spec.kind.as_deref() == Some("absent") => Some(Selector::Red {
            stat: RedStat::Requests,
            stat_name: "requests".into(),
        }),
        (None, None) => {
            bad(
                checker,
                "",
                format!("give stat (one of {RED_STATS}) or metric = {{ name = … }}"),
            );
            None
        }
    };
    let kind = match spec.kind.as_deref().unwrap_or("threshold") {
        "threshold" => RuleKind::Threshold,
        "absent" => RuleKind::Absent,
        "change" => {
            let offset =
                checker.duration(&spans.of("offset"), "offset", spec.offset.as_deref(), "1h");
            let baseline_window = match spec.baseline_window.as_deref() {
                Some(text) => checker.duration(
                    &spans.of("baseline_window"),
                    "baseline_window",
                    Some(text),
                    "1h",
                ),
                None => window,
            };
            if offset < window {
                bad(checker, "offset", "offset must be at least the window, so the current window is not its own baseline".into());
            }
            let mode = match spec.change.as_deref().unwrap_or("ratio") {
                "ratio" => ChangeMode::Ratio,
                "percent" => ChangeMode::Percent,
                other => {
                    bad(
                        checker,
                        "change",
                        format!("change {other:?} is not ratio or percent"),
                    );
                    ChangeMode::Ratio
                }
            };
            RuleKind::Change {
                offset,
                baseline_window,
                mode,
            }
        }
        other => {
            bad(
                checker,
                "kind",
                format!("kind {other:?} is not threshold, change or absent"),
            );
            RuleKind::Threshold
        }
    };
    let op = match spec.op.as_deref() {
        None => Op::Greater,
        Some(text) => Op::parse(text).unwrap_or_else(|| {
            bad(
                checker,
                "op",
                format!("op {text:?} is not one of >, >=, <, <="),
            );
            Op::Greater
        }),
    };
    let threshold = match (&kind, spec.threshold) {
        (RuleKind::Absent, _) => 0.0,
        (_, Some(t)) if t.is_finite() => t,
        (_, Some(t)) => {
            bad(
                checker,
                "threshold",
                format!("threshold {t} is not a finite number"),
            );
            0.0
        }
        (_, None) => {
            bad(checker, "", "threshold is required".into());
            0.0
        }
    };
    if let Some(recovery) = spec.recovery_threshold {
        // Hysteresis only makes sense on the safe side of the threshold.
        let safe_side = match op {
            Op::Greater | Op::GreaterOrEqual => recovery <= threshold,
            Op::Less | Op::LessOrEqual => recovery >= threshold,
        };
        if !safe_side {
            bad(
                checker,
                "recovery_threshold",
                format!(
                    "recovery_threshold {recovery} must be on the safe side of threshold {threshold} (op {})",
                    op.symbol()
                ),
            );
        }
    }
    let no_data = match spec.no_data.as_deref().unwrap_or("ok") {
        "ok" => NoData::Ok,
        "alerting" => NoData::Alerting,
        "keep_last" => NoData::KeepLast,
        other => {
            bad(
                checker,
                "no_data",
                format!("no_data {other:?} is not ok, alerting or keep_last"),
            );
            NoData::Ok
        }
    };
    let by = spec.by.unwrap_or_default();
    if matches!(selector, Some(Selector::Red { .. })) {
        for dimension in &by {
            if dimension != "method" && dimension != "route" {
                bad(
                    checker,
                    "by",
                    format!("by {dimension:?}: RED rules split by method and/or route"),
                );
            }
        }
    }
    for reserved in ["alertname"] {
        if spec.labels.contains_key(reserved) {
            bad(
                checker,
                "labels",
                format!("label {reserved:?} is set by redline"),
            );
        }
    }
    let rule = Rule {
        name: spec.name,
        kind,
        service: spec.service,
        method: spec.method,
        route: spec.route,
        by,
        selector: selector?,
        window,
        op,
        threshold,
        recovery_threshold: spec.recovery_threshold,
        for_,
        keep_firing_for,
        min_rate: spec.min_rate,
        no_data,
        labels: spec.labels,
        annotations: spec.annotations,
    };
    let sample_labels = rule.sample_labels();
    for (key, text) in &rule.annotations {
        if let Err(e) = template::check(text, rule.template_facts(), &sample_labels) {
            bad(
                checker,
                &format!("annotations.{key}"),
                format!("annotation {key:?}: {e}"),
            );
        }
    }
    (checker.problems.len() == problems_before).then_some(rule)
}

/// The SRE Workbook's multiwindow, multi-burn-rate alerts for one objective.
pub const PAGE_WINDOWS: [(u64, u64, f64); 2] = [(3600, 300, 14.4), (6 * 3600, 1800, 6.0)];
pub const TICKET_WINDOWS: [(u64, u64, f64); 2] = [(86_400, 7200, 3.0), (3 * 86_400, 6 * 3600, 1.0)];

pub(super) fn compile_slo(
    checker: &mut Checker<'_>,
    span: &Range<usize>,
    spec: SloSpec,
) -> Vec<Rule> {
    if !(spec.objective > 0.0 && spec.objective < 100.0) {
        checker.at(
            span.clone(),
            format!(
                "slo {:?}: objective {} must be a percentage between 0 and 100",
                spec.name, spec.objective
            ),
        );
        return Vec::new();
    }
    let _period = checker.duration(span, "period", spec.period.as_deref(), "30d");
    // Computed in integer millionths so 99.9 gives exactly 0.001 (no 0.000999…).
    let objective_millionths = (spec.objective * 10_000.0).round() as i64;
    let error_budget = (1_000_000 - objective_millionths) as f64 / 1_000_000.0;
    let make = |severity: &str, pairs: &[(u64, u64, f64)]| {
        let mut labels = spec.labels.clone();
        labels.insert("severity".into(), severity.into());
        labels.insert("slo".into(), spec.name.clone());
        let mut annotations = spec.annotations.clone();
        annotations.entry("summary".into()).or_insert_with(|| {
            "{{ labels.service }} is burning its error budget {{ value }} times too fast".into()
        });
        Rule {
            name: format!("{}-{}", spec.name, severity),
            kind: RuleKind::BurnRate {
                error_budget,
                windows: pairs
                    .iter()
                    .map(|(long, short, factor)| BurnWindow {
                        long: Duration::from_secs(*long),
                        short: Duration::from_secs(*short),
                        factor: *factor,
                    })
                    .collect(),
            },
            service: spec.service.clone(),
            method: spec.method.clone(),
            route: spec.route.clone(),
            by: Vec::new(),
            selector: Selector::Red {
                stat: RedStat::ErrorRate,
                stat_name: "error_rate".into(),
            },
            window: Duration::from_secs(pairs[0].0),
            op: Op::Greater,
            threshold: pairs[0].2,
            recovery_threshold: None,
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            min_rate: None,
            no_data: NoData::Ok,
            labels,
            annotations,
        }
    };
    vec![make("page", &PAGE_WINDOWS), make("ticket", &TICKET_WINDOWS)]
}

pub(super) fn matchers(
    checker: &mut Checker<'_>,
    span: &Range<usize>,
    texts: &[String],
) -> Vec<Matcher> {
    texts
        .iter()
        .filter_map(|text| match Matcher::parse(text) {
            Ok(m) => Some(m),
            Err(e) => {
                checker.at(span.clone(), format!("matcher {text:?}: {e}"));
                None
            }
        })
        .collect()
}

pub(super) fn compile_route(
    checker: &mut Checker<'_>,
    span: &Range<usize>,
    spec: RouteSpec,
    parent: Option<&Route>,
    receivers: &[String],
) -> Route {
    let inherited = parent.cloned().unwrap_or_default();
    let receiver = spec.receiver.unwrap_or_else(|| {
        parent
            .map(|p| p.receiver.clone())
            .or_else(|| receivers.first().cloned())
            .unwrap_or_default()
    });
    if !receiver.is_empty() && !receivers.contains(&receiver) {
        checker.at(
            span.clone(),
            format!("route: receiver {receiver:?} is not defined"),
        );
    }
    let mut route = Route {
        receiver,
        matchers: matchers(checker, span, &spec.matchers),
        group_by: spec.group_by.unwrap_or(inherited.group_by.clone()),
        group_wait: match spec.group_wait {
            Some(text) => checker.duration(span, "group_wait", Some(&text), "30s"),
            None => inherited.group_wait,
        },
        group_interval: match spec.group_interval {
            Some(text) => checker.duration(span, "group_interval", Some(&text), "5m"),
            None => inherited.group_interval,
        },
        repeat_interval: match spec.repeat_interval {
            Some(text) => checker.duration(span, "repeat_interval", Some(&text), "4h"),
            None => inherited.repeat_interval,
        },
        send_resolved: spec.send_resolved.unwrap_or(inherited.send_resolved),
        continue_: spec.continue_,
        routes: Vec::new(),
    };
    let children: Vec<Route> = spec
        .routes
        .into_iter()
        .map(|child| compile_route(checker, span, child, Some(&route), receivers))
        .collect();
    route.routes = children;
    route
}

pub(super) fn compile_smtp(
    checker: &mut Checker<'_>,
    span: &Range<usize>,
    spec: SmtpSpec,
) -> Option<SmtpSettings> {
    let tls = match spec.tls.as_deref().unwrap_or("starttls") {
        "none" => TlsMode::None,
        "starttls" => TlsMode::StartTls,
        "implicit" => TlsMode::Implicit,
        other => {
            checker.at(
                span.clone(),
                format!("smtp.tls {other:?} is not none, starttls or implicit"),
            );
            TlsMode::None
        }
    };
    let password = match (&spec.password_file, &spec.password_env) {
        (Some(_), Some(_)) => {
            checker.at(
                span.clone(),
                "smtp: give password_file or password_env, not both",
            );
            None
        }
        (Some(file), None) => match std::fs::read_to_string(file) {
            Ok(text) => Some(Secret(text.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => {
                checker.at(
                    span.clone(),
                    format!("smtp.password_file {}: {e}", file.display()),
                );
                None
            }
        },
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => Some(Secret(value)),
            Err(_) => {
                checker.at(
                    span.clone(),
                    format!("smtp.password_env: environment variable {var} is not set"),
                );
                None
            }
        },
        (None, None) => None,
    };
    if password.is_some() && spec.username.is_none() {
        checker.at(span.clone(), "smtp: a password needs a username");
    }
    if password.is_some() && tls == TlsMode::None {
        checker.at(
            span.clone(),
            "smtp: a password with tls = \"none\" would cross the network in clear text; \
             use tls = \"starttls\" (port 587) or \"implicit\" (port 465), or a relay that \
             needs no password",
        );
    }
    let timeout = checker.duration(span, "smtp.timeout", spec.timeout.as_deref(), "10s");
    let port = spec.port.unwrap_or(match tls {
        TlsMode::Implicit => 465,
        TlsMode::StartTls => 587,
        TlsMode::None => 25,
    });
    Some(SmtpSettings {
        host: spec.host,
        port,
        tls,
        username: spec.username,
        password,
        timeout,
        hello_name: spec.hello_name,
    })
}
