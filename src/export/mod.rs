//! RED for Prometheus: every endpoint's totals since start (from the aggregator's
//! [`crate::aggregate::totals`]) as Prometheus series, served in the text exposition format on
//! `GET /metrics/red` ([`exposition`]) and pushed with the remote-write 1.0 protocol
//! ([`remote_write`], [`proto`]). Both publish exactly the same series, built here.
//!
//! The names and labels are a public contract:
//! `redline_requests_total`, `redline_request_errors_total`,
//! `redline_requests_by_status_total{status_class="4xx"|"5xx"}` and the classic histogram
//! `redline_request_duration_seconds` (`_bucket{le}`, `_sum`, `_count`), each labelled
//! `service`, `method`, `route` plus the configured external labels. Counters start at zero
//! when redline starts (a restart is a counter reset, which `rate()` and `increase()` handle);
//! the stored history is windowed, rolled up and cut by retention, so a sum over it would not
//! be a counter.

pub mod exposition;
pub mod proto;
pub mod remote_write;

use crate::aggregate::totals::{EndpointTotals, TotalsSnapshot};
use crate::model::EndpointKey;

/// The labels every series has, besides the external ones and `le` / `status_class`.
pub const ENDPOINT_LABELS: [&str; 3] = ["service", "method", "route"];
/// Label names that external labels may not take.
pub const RESERVED_LABELS: [&str; 5] = ["service", "method", "route", "le", "status_class"];

/// Labels added to every published series (e.g. `host`), so that the series of several
/// redlines do not collide in one Prometheus. Names are checked when settings are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalLabels(Vec<(String, String)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{0:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)")]
    Name(String),
    #[error("{0:?} is a label redline sets itself")]
    Reserved(String),
    #[error("{0:?} is given twice")]
    Duplicate(String),
}

impl ExternalLabels {
    pub fn new(labels: Vec<(String, String)>) -> Result<Self, LabelError> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &labels {
            if !is_label_name(name) || name.starts_with("__") {
                return Err(LabelError::Name(name.clone()));
            }
            if RESERVED_LABELS.contains(&name.as_str()) {
                return Err(LabelError::Reserved(name.clone()));
            }
            if !seen.insert(name.as_str()) {
                return Err(LabelError::Duplicate(name.clone()));
            }
        }
        Ok(ExternalLabels(labels))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Requests,
    Errors,
    ByStatus,
    Duration,
}

/// One metric family: its name, its help text and its kind.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub measure: Measure,
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

pub const REQUESTS: Family = Family {
    measure: Measure::Requests,
    name: "redline_requests_total",
    help: "Server requests since redline started, by service, method and route.",
    kind: Kind::Counter,
};
pub const ERRORS: Family = Family {
    measure: Measure::Errors,
    name: "redline_request_errors_total",
    help: "Failed server requests (5xx, or a span with an error status) since redline started.",
    kind: Kind::Counter,
};
pub const BY_STATUS: Family = Family {
    measure: Measure::ByStatus,
    name: "redline_requests_by_status_total",
    help: "Server requests answered 4xx or 5xx since redline started.",
    kind: Kind::Counter,
};
pub const DURATION: Family = Family {
    measure: Measure::Duration,
    name: "redline_request_duration_seconds",
    help: "Server request duration in seconds since redline started.",
    kind: Kind::Histogram,
};

pub const FAMILIES: [Family; 4] = [REQUESTS, ERRORS, BY_STATUS, DURATION];

/// One sample: a series of `family` (with `suffix`: `_bucket`, `_sum`, `_count` for the
/// histogram) for `endpoint`, plus at most one label of its own.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub family: &'static Family,
    pub suffix: &'static str,
    pub endpoint: &'a EndpointKey,
    pub label: Option<(&'static str, &'a str)>,
    pub value: f64,
}

/// The `le` values of a snapshot's buckets, `+Inf` last, formatted once.
pub fn le_values(snapshot: &TotalsSnapshot) -> Vec<String> {
    snapshot
        .bounds
        .seconds()
        .iter()
        .map(|b| format!("{b}"))
        .chain(std::iter::once("+Inf".to_string()))
        .collect()
}

/// Every sample of `family` for one endpoint, in exposition order.
pub fn samples<'a>(
    family: &'static Family,
    endpoint: &'a EndpointKey,
    totals: &'a EndpointTotals,
    le: &'a [String],
    mut emit: impl FnMut(Sample<'a>),
) {
    let sample = |suffix, label, value: f64| Sample {
        family,
        suffix,
        endpoint,
        label,
        value,
    };
    match family.measure {
        Measure::Requests => emit(sample("", None, totals.requests as f64)),
        Measure::Errors => emit(sample("", None, totals.errors as f64)),
        Measure::ByStatus => {
            emit(sample(
                "",
                Some(("status_class", "4xx")),
                totals.status_4xx as f64,
            ));
            emit(sample(
                "",
                Some(("status_class", "5xx")),
                totals.status_5xx as f64,
            ));
        }
        Measure::Duration => {
            let mut cumulative = 0u64;
            for (count, le) in totals.buckets.iter().zip(le) {
                cumulative = cumulative.saturating_add(*count);
                emit(sample("_bucket", Some(("le", le)), cumulative as f64));
            }
            emit(sample("_sum", None, totals.duration_sum_seconds));
            emit(sample("_count", None, cumulative as f64));
        }
    }
}

/// The snapshot's endpoints in a stable order (by service, method, route).
pub fn sorted(mut snapshot: TotalsSnapshot) -> TotalsSnapshot {
    snapshot.endpoints.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_label_names_are_checked() {
        let label = |n: &str| vec![(n.to_string(), "x".to_string())];
        assert!(ExternalLabels::new(label("host")).is_ok());
        assert!(ExternalLabels::new(label("_a9")).is_ok());
        assert!(matches!(
            ExternalLabels::new(label("9a")),
            Err(LabelError::Name(_))
        ));
        assert!(matches!(
            ExternalLabels::new(label("__name__")),
            Err(LabelError::Name(_))
        ));
        assert!(matches!(
            ExternalLabels::new(label("a-b")),
            Err(LabelError::Name(_))
        ));
        assert!(matches!(
            ExternalLabels::new(label("route")),
            Err(LabelError::Reserved(_))
        ));
        let twice = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(matches!(
            ExternalLabels::new(twice),
            Err(LabelError::Duplicate(_))
        ));
    }
}
