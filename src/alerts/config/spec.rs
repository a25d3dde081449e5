//! `alerts.toml` as written: what serde reads, before anything is checked.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GlobalSpec {
    pub(super) eval_interval: Option<String>,
    pub(super) dashboard_url: Option<String>,
    pub(super) resolved_retention: Option<String>,
    pub(super) outage_tolerance: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricSpec {
    pub(super) name: String,
    pub(super) agg: Option<String>,
    #[serde(default)]
    pub(super) attributes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) name: String,
    pub(super) kind: Option<String>,
    pub(super) service: String,
    pub(super) method: Option<String>,
    pub(super) route: Option<String>,
    pub(super) by: Option<Vec<String>>,
    pub(super) stat: Option<String>,
    pub(super) metric: Option<MetricSpec>,
    pub(super) window: Option<String>,
    pub(super) op: Option<String>,
    pub(super) threshold: Option<f64>,
    pub(super) recovery_threshold: Option<f64>,
    #[serde(rename = "for")]
    pub(super) for_: Option<String>,
    pub(super) keep_firing_for: Option<String>,
    pub(super) min_rate: Option<f64>,
    pub(super) no_data: Option<String>,
    pub(super) offset: Option<String>,
    pub(super) baseline_window: Option<String>,
    pub(super) change: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SloSpec {
    pub(super) name: String,
    pub(super) service: String,
    pub(super) method: Option<String>,
    pub(super) route: Option<String>,
    /// Percent of good requests, e.g. 99.9.
    pub(super) objective: f64,
    pub(super) period: Option<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailSpec {
    pub(super) to: Vec<String>,
    pub(super) from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiverSpec {
    pub(super) name: String,
    pub(super) email: EmailSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSpec {
    pub(super) receiver: Option<String>,
    #[serde(default)]
    pub(super) matchers: Vec<String>,
    pub(super) group_by: Option<Vec<String>>,
    pub(super) group_wait: Option<String>,
    pub(super) group_interval: Option<String>,
    pub(super) repeat_interval: Option<String>,
    pub(super) send_resolved: Option<bool>,
    #[serde(default, rename = "continue")]
    pub(super) continue_: bool,
    #[serde(default)]
    pub(super) routes: Vec<RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InhibitSpec {
    pub(super) source_matchers: Vec<String>,
    pub(super) target_matchers: Vec<String>,
    #[serde(default)]
    pub(super) equal: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SmtpSpec {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) hello_name: Option<String>,
    pub(super) from: Option<String>,
}
