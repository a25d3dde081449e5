//! The validated alerting configuration: rules, receivers, routes, SMTP and global settings.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Op {
    pub(super) fn parse(s: &str) -> Option<Op> {
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
