//! `alerts.toml`: parsing and validation into typed rules, routes and receivers. Every problem
//! in the file is reported at once with file:line:column; unknown fields are rejected;
//! annotation templates are rendered once with sample data at load time.
//!
//! - `spec.rs`: the file as written (serde structs, unknown fields rejected);
//! - `model.rs`: the validated configuration the engine, router and notifier use;
//! - `parse.rs`: loading, the problem collector with positions, the walk over the file;
//! - `compile.rs`: turning each written rule, SLO, route and SMTP block into the model.

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

mod compile;
mod model;
mod parse;
mod spec;

pub use compile::{PAGE_WINDOWS, TICKET_WINDOWS};
pub use model::*;
pub use parse::{load, parse};

use compile::*;
use parse::*;
use spec::*;

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
    fn log_errors_reads_the_counts_of_error_records() {
        let receiver = "[[receiver]]\nname = \"r\"\nemail = { to = [\"a@example.com\"] }\n";
        let config = parse(&format!(
            r#"{receiver}
[[rule]]
name = "error logs"
service = "api"
stat = "log_errors"
window = "5m"
op = ">"
threshold = 10
"#
        ))
        .unwrap();
        let Selector::Metric {
            name,
            agg,
            attributes,
        } = &config.rules[0].selector
        else {
            panic!("log_errors reads the log counts");
        };
        assert_eq!(name, crate::model::log_record::LOG_RECORDS_METRIC);
        assert_eq!(*agg, Some(MetricAggregation::Sum));
        assert_eq!(attributes["error"], "true");
        let problems = parse(&format!(
            r#"{receiver}
[[rule]]
name = "x"
service = "api"
route = "/a"
stat = "log_errors"
op = ">"
threshold = 1
"#
        ))
        .unwrap_err();
        assert!(problems[0].message.contains("log_errors"), "{problems:?}");
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

    #[test]
    fn an_smtp_password_never_goes_out_in_clear_text() {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "hunter2\n").unwrap();
        let smtp = |tls: &str| {
            format!(
                "{GOOD}\n[smtp]\nhost = \"mail.example.com\"\n{tls}username = \"alerts\"\npassword_file = {:?}\n",
                secret.path()
            )
        };
        let problems = parse(&smtp("tls = \"none\"\n")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains("clear text") && problems[0].message.contains("starttls"),
            "{problems:?}"
        );
        for tls in ["", "tls = \"starttls\"\n", "tls = \"implicit\"\n"] {
            let config = parse(&smtp(tls)).unwrap();
            assert_eq!(
                config.smtp.unwrap().password,
                Some(Secret("hunter2".into()))
            );
        }
        // A trusted relay without a password may stay in plain text.
        let relay = format!("{GOOD}\n[smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n");
        assert_eq!(parse(&relay).unwrap().smtp.unwrap().tls, TlsMode::None);
    }
}
