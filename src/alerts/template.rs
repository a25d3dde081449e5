//! Annotation templates (`{{ labels.route }}`, `{{ value }}`, `{{ threshold }}`): checked once
//! with sample data when rules load, rendered every evaluation with a safe fallback, so a
//! template mistake never drops a notification.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, context};

/// What a template can say about its rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleFacts<'a> {
    pub name: &'a str,
    pub service: &'a str,
    pub threshold: f64,
    /// The unit of the rule's values and threshold.
    pub unit: &'a str,
}

/// What a template can refer to.
pub struct TemplateData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub value: Option<f64>,
    pub rule: RuleFacts<'a>,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt name is an error at load time, not an empty string in an e-mail.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Formats a value with the rule's unit, the way messages show it.
pub fn format_value(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "no data".to_string(),
        Some(v) if unit.is_empty() && (0.0..=1.0).contains(&v) && v.fract() != 0.0 => {
            format!("{v:.4}")
        }
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}{}", unit_suffix(unit)),
        Some(v) => format!("{}{}", trim(v), unit_suffix(unit)),
    }
}

fn unit_suffix(unit: &str) -> String {
    match unit {
        "" => String::new(),
        "×" | "%" => unit.to_string(),
        other => format!(" {other}"),
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn render(template: &str, data: &TemplateData<'_>) -> Result<String, minijinja::Error> {
    let env = environment();
    let unit = data.rule.unit;
    env.render_str(
        template,
        context! {
            labels => data.labels,
            value => format_value(data.value, unit),
            value_raw => data.value,
            threshold => format_value(Some(data.rule.threshold), unit),
            rule => data.rule.name,
            service => data.rule.service,
        },
    )
}

/// Renders, or on error the raw template with the reason: the notification still goes out.
pub fn render_or_fallback(template: &str, data: &TemplateData<'_>) -> String {
    render(template, data).unwrap_or_else(|error| format!("{template} [template error: {error}]"))
}

/// Load-time check: the template parses and renders with sample labels and a value past the
/// threshold.
pub fn check(
    template: &str,
    rule: RuleFacts<'_>,
    sample_labels: &BTreeMap<String, String>,
) -> Result<(), minijinja::Error> {
    let data = TemplateData {
        labels: sample_labels,
        value: Some(rule.threshold * 1.5),
        rule,
    };
    render(template, &data).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::alerts::config::Rule;

    fn rule() -> Rule {
        let text = "[[receiver]]\nname = \"r\"\nemail = { to = [\"a@example.com\"] }\n[[rule]]\nname = \"R\"\nservice = \"api\"\nstat = \"p99\"\nthreshold = 250\n";
        crate::alerts::config::parse(text).unwrap().rules.remove(0)
    }

    #[test]
    fn values_render_with_units() {
        let rule = rule();
        let labels = rule.sample_labels();
        let data = TemplateData {
            labels: &labels,
            value: Some(312.456),
            rule: rule.template_facts(),
        };
        assert_eq!(
            render("{{ labels.service }}: {{ value }} > {{ threshold }}", &data).unwrap(),
            "api: 312 ms > 250 ms"
        );
        assert_eq!(format_value(Some(0.0512), ""), "0.0512");
        assert_eq!(format_value(None, "ms"), "no data");
    }

    #[test]
    fn a_broken_template_falls_back_instead_of_dropping_the_text() {
        let rule = rule();
        let labels = rule.sample_labels();
        let data = TemplateData {
            labels: &labels,
            value: Some(1.0),
            rule: rule.template_facts(),
        };
        let text = render_or_fallback("route {{ labels.route }}", &data);
        assert!(
            text.starts_with("route {{ labels.route }} [template error:"),
            "{text}"
        );
    }
}
