//! Loading a rules file: reading it, walking its tables, and collecting every problem with its
//! position.

use super::*;

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
pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Checker<'_> {
    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    pub(super) fn toml_error(&mut self, error: toml::de::Error, fallback: Range<usize>) {
        let span = error.span().unwrap_or(fallback);
        self.at(span, error.message().trim().to_string());
    }

    pub(super) fn value<T: DeserializeOwned>(
        &mut self,
        value: &toml::Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml_error(e, span);
                None
            }
        }
    }

    pub(super) fn duration(
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
pub(super) fn each<'i>(
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

pub(super) const RED_STATS: &str =
    "requests, errors, rate, error_rate, p50, p90, p95, p99, mean, max, log_errors";

/// Where a table and each of its fields (and the fields of its inline tables, as `outer.inner`)
/// are in the file, so a problem can point at the value it is about.
pub(super) struct FieldSpans {
    pub(super) table: Range<usize>,
    pub(super) fields: std::collections::HashMap<String, Range<usize>>,
}

impl FieldSpans {
    pub(super) fn of_table(value: &toml::Spanned<DeValue<'_>>) -> Self {
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
    pub(super) fn of(&self, field: &str) -> Range<usize> {
        self.fields
            .get(field)
            .cloned()
            .unwrap_or_else(|| self.table.clone())
    }
}
