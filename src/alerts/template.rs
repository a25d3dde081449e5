//! Annotation templates (`{{ labels.route }}`, `{{ value }}`, `{{ threshold }}`): checked once
//! with sample data when rules load, rendered every evaluation with a safe fallback, so a
//! template mistake never drops a notification.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, context};

use crate::alerts::config::Rule;

/// What a template can refer to.
pub struct TemplateData<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub value: Option<f64>,
    pub rule: &'a Rule,
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

pub fn render(template: &str, data: &TemplateData<'_>) -> Result<String, String> {
    let env = environment();
    let unit = data.rule.unit();
    env.render_str(
        template,
        context! {
            labels => data.labels,
            value => format_value(data.value, unit),
            value_raw => data.value,
            threshold => format_value(Some(data.rule.threshold), unit),
            rule => data.rule.name.clone(),
            service => data.rule.service.clone(),
        },
    )
    .map_err(|e| e.to_string())
}

/// Renders, or on error the raw template with the reason: the notification still goes out.
pub fn render_or_fallback(template: &str, data: &TemplateData<'_>) -> String {
    render(template, data).unwrap_or_else(|error| format!("{template} [template error: {error}]"))
}

/// The labels an alert of `rule` will carry, with sample values for the series dimensions.
pub fn sample_labels(rule: &Rule) -> BTreeMap<String, String> {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("service".into(), rule.service.clone());
    for key in ["method", "route"] {
        let fixed = if key == "method" {
            &rule.method
        } else {
            &rule.route
        };
        if let Some(value) = fixed {
            labels.insert(key.into(), value.clone());
        }
    }
    for key in &rule.by {
        labels
            .entry(key.clone())
            .or_insert_with(|| format!("<{key}>"));
    }
    labels
}

/// Load-time check: the template parses and renders with sample data.
pub fn check(template: &str, rule: &Rule) -> Result<(), String> {
    let labels = sample_labels(rule);
    render(
        template,
        &TemplateData {
            labels: &labels,
            value: Some(rule.threshold * 1.5),
            rule,
        },
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        let text = "[[receiver]]\nname = \"r\"\nemail = { to = [\"a@example.com\"] }\n[[rule]]\nname = \"R\"\nservice = \"api\"\nstat = \"p99\"\nthreshold = 250\n";
        crate::alerts::config::parse(text).unwrap().rules.remove(0)
    }

    #[test]
    fn values_render_with_units() {
        let rule = rule();
        let labels = sample_labels(&rule);
        let data = TemplateData {
            labels: &labels,
            value: Some(312.456),
            rule: &rule,
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
        let labels = sample_labels(&rule);
        let data = TemplateData {
            labels: &labels,
            value: Some(1.0),
            rule: &rule,
        };
        let text = render_or_fallback("route {{ labels.route }}", &data);
        assert!(
            text.starts_with("route {{ labels.route }} [template error:"),
            "{text}"
        );
    }
}
