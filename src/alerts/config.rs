//! `alerts.toml`: parsing and validation into typed rules, routes and receivers. Every problem
//! in the file is reported at once with file:line:column; unknown fields are rejected;
//! annotation templates are rendered once with sample data at load time.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::alerts::routing::{Inhibit, Matcher, Route};
use crate::alerts::template::{self, RuleFacts};
use crate::notify::{Delivery, EmailReceiver, Secret, SmtpSettings, TlsMode};
use crate::query::{MetricAggregation, RedStat};

/// One problem in a rules file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertsConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}:{}:{}: {}", path.display(), p.line, p.column, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AlertsConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            AlertsConfigError::Invalid { problems, .. } => problems,
            AlertsConfigError::Read { .. } => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalSpec {
    eval_interval: Option<String>,
    dashboard_url: Option<String>,
    resolved_retention: Option<String>,
    outage_tolerance: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricSpec {
    name: String,
    agg: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    kind: Option<String>,
    service: String,
    method: Option<String>,
    route: Option<String>,
    by: Option<Vec<String>>,
    stat: Option<String>,
    metric: Option<MetricSpec>,
    window: Option<String>,
    op: Option<String>,
    threshold: Option<f64>,
    recovery_threshold: Option<f64>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    min_rate: Option<f64>,
    no_data: Option<String>,
    offset: Option<String>,
    baseline_window: Option<String>,
    change: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SloSpec {
    name: String,
    service: String,
    method: Option<String>,
    route: Option<String>,
    /// Percent of good requests, e.g. 99.9.
    objective: f64,
    period: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailSpec {
    to: Vec<String>,
    from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverSpec {
    name: String,
    email: EmailSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    receiver: Option<String>,
    #[serde(default)]
    matchers: Vec<String>,
    group_by: Option<Vec<String>>,
    group_wait: Option<String>,
    group_interval: Option<String>,
    repeat_interval: Option<String>,
    send_resolved: Option<bool>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default)]
    routes: Vec<RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InhibitSpec {
    source_matchers: Vec<String>,
    target_matchers: Vec<String>,
    #[serde(default)]
    equal: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSpec {
    host: String,
    port: Option<u16>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    timeout: Option<String>,
    hello_name: Option<String>,
    from: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            ">" => Op::Greater,
            ">=" => Op::GreaterOrEqual,
            "<" => Op::Less,
            "<=" => Op::LessOrEqual,
            _ => return None,
        })
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Greater => value > threshold,
            Op::GreaterOrEqual => value >= threshold,
            Op::Less => value < threshold,
            Op::LessOrEqual => value <= threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Greater => ">",
            Op::GreaterOrEqual => ">=",
            Op::Less => "<",
            Op::LessOrEqual => "<=",
        }
    }
}

/// What a rule does when it has no data (no requests, below the rate guard, series gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoData {
    Ok,
    Alerting,
    KeepLast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeMode {
    /// now / baseline
    Ratio,
    /// (now − baseline) / baseline × 100
    Percent,
}

/// What one rule reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Red {
        stat: RedStat,
        stat_name: String,
    },
    Metric {
        name: String,
        agg: Option<MetricAggregation>,
        attributes: BTreeMap<String, String>,
    },
}

/// One burn-rate pair of the SRE Workbook: both windows must burn faster than `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnWindow {
    pub long: Duration,
    pub short: Duration,
    pub factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Threshold,
    Change {
        offset: Duration,
        baseline_window: Duration,
        mode: ChangeMode,
    },
    Absent,
    BurnRate {
        /// 1 − objective, as a fraction (0.001 for 99.9 %).
        error_budget: f64,
        windows: Vec<BurnWindow>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub service: String,
    pub method: Option<String>,
    pub route: Option<String>,
    /// Label dimensions that split the rule into one alert each: `method`, `route` for RED;
    /// attribute keys for metrics.
    pub by: Vec<String>,
    pub selector: Selector,
    pub window: Duration,
    pub op: Op,
    pub threshold: f64,
    pub recovery_threshold: Option<f64>,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub min_rate: Option<f64>,
    pub no_data: NoData,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// What annotation templates can say about this rule.
    pub fn template_facts(&self) -> RuleFacts<'_> {
        RuleFacts {
            name: &self.name,
            service: &self.service,
            threshold: self.threshold,
            unit: self.unit(),
        }
    }

    /// The labels an alert of this rule will carry, with sample values for the series
    /// dimensions.
    pub fn sample_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("alertname".into(), self.name.clone());
        labels.insert("service".into(), self.service.clone());
        for (key, fixed) in [("method", &self.method), ("route", &self.route)] {
            if let Some(value) = fixed {
                labels.insert(key.into(), value.clone());
            }
        }
        for key in &self.by {
            labels
                .entry(key.clone())
                .or_insert_with(|| format!("<{key}>"));
        }
        labels
    }

    /// The unit the rule's values are in, for messages and charts.
    pub fn unit(&self) -> &'static str {
        match (&self.kind, &self.selector) {
            (RuleKind::BurnRate { .. }, _) => "×",
            (RuleKind::Change { mode, .. }, _) => match mode {
                ChangeMode::Ratio => "×",
                ChangeMode::Percent => "%",
            },
            (_, Selector::Red { stat, .. }) => match stat {
                RedStat::Quantile(_) | RedStat::Mean | RedStat::Max => "ms",
                RedStat::Rate => "req/s",
                RedStat::ErrorRate => "",
                RedStat::Requests | RedStat::Errors => "",
            },
            (_, Selector::Metric { .. }) => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Receiver {
    pub name: String,
    pub email: EmailReceiver,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub eval_interval: Duration,
    pub dashboard_url: Option<String>,
    pub resolved_retention: Duration,
    pub outage_tolerance: Duration,
    pub rules: Vec<Rule>,
    pub receivers: Vec<Receiver>,
    pub route: Route,
    pub inhibit: Vec<Inhibit>,
    /// `None`: write `.eml` files to the outbox folder.
    pub smtp: Option<SmtpSettings>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            eval_interval: Duration::from_secs(15),
            dashboard_url: None,
            resolved_retention: Duration::from_secs(15 * 60),
            outage_tolerance: Duration::from_secs(3600),
            rules: Vec::new(),
            receivers: Vec::new(),
            route: Route::default(),
            inhibit: Vec::new(),
            smtp: None,
        }
    }
}

impl AlertsConfig {
    /// Where mail goes: SMTP when configured, else `.eml` files in `outbox_dir`.
    pub fn delivery(&self, outbox_dir: &Path) -> Delivery {
        match &self.smtp {
            Some(smtp) => Delivery::Smtp(smtp.clone()),
            None => Delivery::Outbox(outbox_dir.to_path_buf()),
        }
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Reads and validates a rules file.
pub fn load(path: &Path) -> Result<AlertsConfig, AlertsConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| AlertsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|problems| AlertsConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Collects problems with positions while the file is walked.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn toml_error(&mut self, error: toml::de::Error, fallback: Range<usize>) {
        let span = error.span().unwrap_or(fallback);
        self.at(span, error.message().trim().to_string());
    }

    fn value<T: DeserializeOwned>(&mut self, value: &toml::Spanned<DeValue<'_>>) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml_error(e, span);
                None
            }
        }
    }

    fn duration(
        &mut self,
        span: &Range<usize>,
        field: &str,
        value: Option<&str>,
        default: &str,
    ) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(_) => {
                self.at(
                    span.clone(),
                    format!("{field}: {text:?} is not a duration like 30s, 5m, 1h or 7d"),
                );
                Duration::from_secs(60)
            }
        }
    }
}

/// Parses a rules file's text; all problems at once.
pub fn parse(text: &str) -> Result<AlertsConfig, Vec<Problem>> {
    let mut checker = Checker {
        text,
        problems: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    for error in errors {
        checker.toml_error(error, 0..0);
    }
    if !checker.problems.is_empty() {
        return Err(checker.problems);
    }
    let root = root.into_inner();
    let mut config = AlertsConfig::default();
    let mut rule_specs = Vec::new();
    let mut slo_specs = Vec::new();
    let mut receiver_specs = Vec::new();
    let mut route_spec = None;
    let mut inhibit_specs = Vec::new();
    let mut smtp_spec = None;
    let mut global = GlobalSpec::default();

    for (key, value) in root.iter() {
        let span = value.span();
        match key.get_ref().as_ref() {
            "global" => global = checker.value(value).unwrap_or_default(),
            "rule" => each(&mut checker, value, |c, v| {
                if let Some(spec) = c.value::<RuleSpec>(v) {
                    rule_specs.push((FieldSpans::of_table(v), spec));
                }
            }),
            "slo" => each(&mut checker, value, |c, v| {
                if let Some(spec) = c.value::<SloSpec>(v) {
                    slo_specs.push((v.span(), spec));
                }
            }),
            "receiver" => each(&mut checker, value, |c, v| {
                if let Some(spec) = c.value::<ReceiverSpec>(v) {
                    receiver_specs.push((v.span(), spec));
                }
            }),
            "route" => route_spec = checker.value::<RouteSpec>(value).map(|r| (span, r)),
            "inhibit" => each(&mut checker, value, |c, v| {
                if let Some(spec) = c.value::<InhibitSpec>(v) {
                    inhibit_specs.push((v.span(), spec));
                }
            }),
            "smtp" => smtp_spec = checker.value::<SmtpSpec>(value).map(|s| (span, s)),
            other => checker.at(
                key.span(),
                format!("unknown key `{other}`, expected one of global, rule, slo, receiver, route, inhibit, smtp"),
            ),
        }
    }

    let global_span = 0..0;
    config.eval_interval = checker.duration(
        &global_span,
        "eval_interval",
        global.eval_interval.as_deref(),
        "15s",
    );
    config.resolved_retention = checker.duration(
        &global_span,
        "resolved_retention",
        global.resolved_retention.as_deref(),
        "15m",
    );
    config.outage_tolerance = checker.duration(
        &global_span,
        "outage_tolerance",
        global.outage_tolerance.as_deref(),
        "1h",
    );
    config.dashboard_url = global
        .dashboard_url
        .map(|u| u.trim_end_matches('/').to_string());

    let smtp_from = smtp_spec.as_ref().and_then(|(_, s)| s.from.clone());
    for (span, spec) in receiver_specs {
        if spec.email.to.is_empty() {
            checker.at(
                span.clone(),
                format!("receiver {:?}: email.to lists no address", spec.name),
            );
        }
        for address in &spec.email.to {
            if address.parse::<lettre::Address>().is_err() {
                checker.at(
                    span.clone(),
                    format!(
                        "receiver {:?}: {address:?} is not an e-mail address",
                        spec.name
                    ),
                );
            }
        }
        let from = spec
            .email
            .from
            .or_else(|| smtp_from.clone())
            .unwrap_or_else(|| "redline@localhost".to_string());
        if from.parse::<lettre::message::Mailbox>().is_err() {
            checker.at(
                span.clone(),
                format!(
                    "receiver {:?}: from {from:?} is not an e-mail address",
                    spec.name
                ),
            );
        }
        if config.receivers.iter().any(|r| r.name == spec.name) {
            checker.at(
                span.clone(),
                format!("receiver {:?} is defined twice", spec.name),
            );
        }
        config.receivers.push(Receiver {
            name: spec.name,
            email: EmailReceiver {
                to: spec.email.to,
                from,
            },
        });
    }

    for (spans, spec) in rule_specs {
        if let Some(rule) = compile_rule(&mut checker, &spans, spec) {
            config.rules.push(rule);
        }
    }
    for (span, spec) in slo_specs {
        config.rules.extend(compile_slo(&mut checker, &span, spec));
    }
    let mut seen = std::collections::HashSet::new();
    for rule in &config.rules {
        if !seen.insert(rule.name.clone()) {
            checker.at(0..0, format!("rule name {:?} is used twice", rule.name));
        }
    }

    let receiver_names: Vec<String> = config.receivers.iter().map(|r| r.name.clone()).collect();
    config.route = match route_spec {
        Some((span, spec)) => compile_route(&mut checker, &span, spec, None, &receiver_names),
        None => Route {
            receiver: receiver_names.first().cloned().unwrap_or_default(),
            ..Route::default()
        },
    };
    if config.route.receiver.is_empty() && !config.rules.is_empty() {
        checker.at(
            0..0,
            "no receiver: add a [[receiver]] (and optionally a [route])",
        );
    }
    for (span, spec) in inhibit_specs {
        let source = matchers(&mut checker, &span, &spec.source_matchers);
        let target = matchers(&mut checker, &span, &spec.target_matchers);
        config.inhibit.push(Inhibit {
            source,
            target,
            equal: spec.equal,
        });
    }
    if let Some((span, spec)) = smtp_spec {
        config.smtp = compile_smtp(&mut checker, &span, spec);
    }
    if checker.problems.is_empty() {
        Ok(config)
    } else {
        checker.problems.sort_by_key(|p| (p.line, p.column));
        Err(checker.problems)
    }
}

/// Runs `f` on each table of an array of tables (`[[rule]]`).
fn each<'i>(
    checker: &mut Checker<'_>,
    value: &toml::Spanned<DeValue<'i>>,
    mut f: impl FnMut(&mut Checker<'_>, &toml::Spanned<DeValue<'i>>),
) {
    match value.get_ref() {
        DeValue::Array(items) => {
            for item in items.iter() {
                f(checker, item);
            }
        }
        _ => checker.at(value.span(), "expected an array of tables ([[…]])"),
    }
}

const RED_STATS: &str = "requests, errors, rate, error_rate, p50, p90, p95, p99, mean, max";

/// Where a table and each of its fields (and the fields of its inline tables, as `outer.inner`)
/// are in the file, so a problem can point at the value it is about.
struct FieldSpans {
    table: Range<usize>,
    fields: std::collections::HashMap<String, Range<usize>>,
}

impl FieldSpans {
    fn of_table(value: &toml::Spanned<DeValue<'_>>) -> Self {
        let mut fields = std::collections::HashMap::new();
        if let DeValue::Table(table) = value.get_ref() {
            for (key, field) in table.iter() {
                let key = key.get_ref().to_string();
                if let DeValue::Table(inner) = field.get_ref() {
                    for (inner_key, inner_field) in inner.iter() {
                        fields.insert(format!("{key}.{}", inner_key.get_ref()), inner_field.span());
                    }
                }
                fields.insert(key, field.span());
            }
        }
        FieldSpans {
            table: value.span(),
            fields,
        }
    }

    /// The field's value, else the table's header.
    fn of(&self, field: &str) -> Range<usize> {
        self.fields
            .get(field)
            .cloned()
            .unwrap_or_else(|| self.table.clone())
    }
}

fn compile_rule(checker: &mut Checker<'_>, spans: &FieldSpans, spec: RuleSpec) -> Option<Rule> {
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

fn compile_slo(checker: &mut Checker<'_>, span: &Range<usize>, spec: SloSpec) -> Vec<Rule> {
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

fn matchers(checker: &mut Checker<'_>, span: &Range<usize>, texts: &[String]) -> Vec<Matcher> {
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

fn compile_route(
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

fn compile_smtp(
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[global]
eval_interval = "10s"

[[receiver]]
name = "oncall"
email = { to = ["oncall@example.com"] }

[[rule]]
name = "HighP99"
service = "api"
route = "/v1/products/{id}"
method = "GET"
stat = "p99"
window = "5m"
threshold = 250
recovery_threshold = 200
for = "2m"
labels = { severity = "page" }
annotations = { summary = "p99 of {{ labels.route }} is {{ value }}" }

[[slo]]
name = "availability"
service = "api"
objective = 99.9
"#;

    #[test]
    fn a_good_file_compiles() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.eval_interval, Duration::from_secs(10));
        assert_eq!(config.rules.len(), 3);
        let rule = &config.rules[0];
        assert_eq!(rule.threshold, 250.0);
        assert_eq!(rule.for_, Duration::from_secs(120));
        assert_eq!(config.route.receiver, "oncall");
        let RuleKind::BurnRate {
            error_budget,
            windows,
        } = &config.rules[1].kind
        else {
            panic!("slo rule");
        };
        assert_eq!(*error_budget, 0.001);
        assert_eq!(windows[0].factor, 14.4);
        assert_eq!(config.rules[2].labels["severity"], "ticket");
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let text = r#"[[receiver]]
name = "oncall"
email = { to = ["oncall@example.com"] }

[[rule]]
name = "A"
service = "api"
stat = "p98"
threshold = 1

[[rule]]
name = "B"
service = "api"
stat = "p99"
treshold = 5

[[rule]]
name = "C"
service = "api"
stat = "p99"
threshold = 5
window = "soon"
"#;
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        // Semantic problems point at the offending value, not at the rule's header.
        assert!(
            problems[0].message.contains("p98") && (problems[0].line, problems[0].column) == (8, 8),
            "{problems:?}"
        );
        assert!(
            problems[1].message.contains("treshold") && problems[1].line == 15,
            "{problems:?}"
        );
        assert!(
            problems[2].message.contains("soon")
                && (problems[2].line, problems[2].column) == (22, 10),
            "{problems:?}"
        );
    }

    #[test]
    fn templates_are_checked_at_load_time() {
        let text = r#"[[receiver]]
name = "r"
email = { to = ["a@example.com"] }
[[rule]]
name = "T"
service = "api"
stat = "rate"
threshold = 1
annotations = { summary = "{{ labels.route " }
"#;
        let problems = parse(text).unwrap_err();
        assert!(problems[0].message.contains("annotation"), "{problems:?}");
    }
}
