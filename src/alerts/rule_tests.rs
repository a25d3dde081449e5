//! `redline test-rules TESTS.toml`, in the spirit of `promtool test rules`: synthetic request
//! series on a virtual clock, the real rules and the real engine, and expected alerts at given
//! times.
//!
//! ```toml
//! rule_files = ["alerts.toml"]
//! [[test]]
//! name = "slow product pages page someone"
//! interval = "10s"                      # one input value per 10 s window
//! [[test.series]]
//! service = "example-api"
//! method = "GET"
//! route = "/v1/products/{id}"
//! requests = "100x60"                   # promtool notation: `a+bxN`, `VxN`, `_` (missing)
//! errors = "0x60"
//! latency_ms = "40x20 400x40"
//! [[test.expect]]
//! at = "5m"
//! firing = ["HighP99Latency"]
//! pending = []
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::aggregate::metric::MetricAgg;
use crate::aggregate::red::RedStats;
use crate::alerts::config::{self, AlertsConfig, Rule};
use crate::alerts::engine::{AlertState, Engine};
use crate::alerts::routing::Labels;
use crate::alerts::runtime::evaluate_all;
use crate::alerts::source::{DataSource, Endpoints, SourceError};
use crate::model::{EndpointKey, RequestRecord};
use crate::vocab::TimeRange;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<PathBuf>,
    evaluation_interval: Option<String>,
    #[serde(default)]
    test: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    series: Vec<SeriesSpec>,
    #[serde(default)]
    expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesSpec {
    service: String,
    method: Option<String>,
    route: Option<String>,
    requests: String,
    errors: Option<String>,
    latency_ms: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    at: String,
    #[serde(default)]
    firing: Vec<String>,
    pending: Option<Vec<String>>,
}

/// The outcome of one test case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleTestError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}")]
    Rules(String),
    #[error("test {0:?}: {1}")]
    Invalid(String, String),
}

/// Expands promtool series notation: `a+bxN` (N+1 values from a in steps of b), `VxN` (V, N+1
/// times), `_` (missing) and `_xN`, plain numbers.
pub fn expand(notation: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in notation.split_whitespace() {
        let (start, rest) = match token.split_once('x') {
            Some((head, count)) => (head, Some(count)),
            None => (token, None),
        };
        let times: usize = match rest {
            Some(count) => {
                count
                    .parse::<usize>()
                    .map_err(|_| format!("{token:?}: bad repeat count"))?
                    + 1
            }
            None => 1,
        };
        if start == "_" {
            out.extend(std::iter::repeat_n(None, times));
            continue;
        }
        let (base, step) = match start.rsplit_once(['+', '-']).filter(|(b, _)| !b.is_empty()) {
            Some((base, step)) => {
                let negative = start[base.len()..].starts_with('-');
                let step: f64 = step.parse().map_err(|_| format!("{token:?}: bad step"))?;
                (base, if negative { -step } else { step })
            }
            None => (start, 0.0),
        };
        let base: f64 = base
            .parse()
            .map_err(|_| format!("{token:?}: not a number"))?;
        out.extend((0..times).map(|i| Some(base + step * i as f64)));
    }
    Ok(out)
}

/// Virtual time zero: an arbitrary hour boundary, so windows align like real ones.
const ORIGIN_MS: i64 = 1_700_000_000_000 / 3_600_000 * 3_600_000;

/// One endpoint's synthetic windows.
struct Series {
    endpoint: EndpointKey,
    interval_ms: i64,
    windows: Vec<Option<RedStats>>,
}

struct Synthetic {
    series: Vec<Series>,
}

impl Synthetic {
    fn matching(&self, service: &str, range: TimeRange) -> Vec<(EndpointKey, RedStats)> {
        let mut out: Vec<(EndpointKey, RedStats)> = Vec::new();
        for s in self.series.iter().filter(|s| s.endpoint.service == service) {
            let mut merged: Option<RedStats> = None;
            for (i, window) in s.windows.iter().enumerate() {
                let start = ORIGIN_MS + i as i64 * s.interval_ms;
                if let Some(stats) = window
                    .as_ref()
                    .filter(|_| start >= range.from_ms && start < range.to_ms)
                {
                    merged.get_or_insert_with(RedStats::default).merge(stats);
                }
            }
            if let Some(stats) = merged {
                out.push((s.endpoint.clone(), stats));
            }
        }
        out
    }
}

impl DataSource for Synthetic {
    async fn endpoints(&self, service: &str, range: TimeRange) -> Result<Endpoints, SourceError> {
        Ok(std::sync::Arc::new(self.matching(service, range)))
    }

    async fn metric(
        &self,
        _rule: &Rule,
        _range: TimeRange,
    ) -> Result<Vec<(Labels, MetricAgg)>, SourceError> {
        Err(SourceError::MetricsUnsupported("rule tests"))
    }
}

fn duration(case: &str, text: &str) -> Result<Duration, RuleTestError> {
    humantime::parse_duration(text)
        .map_err(|_| RuleTestError::Invalid(case.into(), format!("{text:?} is not a duration")))
}

fn build_series(case: &TestCase, interval_ms: i64) -> Result<Vec<Series>, RuleTestError> {
    let invalid = |m: String| RuleTestError::Invalid(case.name.clone(), m);
    case.series
        .iter()
        .map(|spec| {
            let requests = expand(&spec.requests).map_err(invalid)?;
            let errors = expand(spec.errors.as_deref().unwrap_or("0")).map_err(invalid)?;
            let latency = expand(spec.latency_ms.as_deref().unwrap_or("10")).map_err(invalid)?;
            let endpoint = EndpointKey {
                service: spec.service.clone(),
                method: spec.method.clone().unwrap_or_else(|| "GET".into()),
                route: spec.route.clone().unwrap_or_else(|| "/".into()),
            };
            let windows = requests
                .iter()
                .enumerate()
                .map(|(i, count)| {
                    let count = (*count)? as u64;
                    // Shorter errors/latency lists repeat their last value.
                    let pick =
                        |list: &[Option<f64>]| list.get(i).or(list.last()).copied().flatten();
                    let errors = pick(&errors).unwrap_or(0.0) as u64;
                    let latency = pick(&latency).unwrap_or(10.0);
                    let mut stats = RedStats::default();
                    for n in 0..count {
                        let failed = n < errors;
                        stats.add_request(&RequestRecord {
                            end_unix_ms: 0,
                            duration_ms: latency,
                            status_code: Some(if failed { 500 } else { 200 }),
                            is_error: failed,
                            count: 1,
                        });
                    }
                    Some(stats)
                })
                .collect();
            Ok(Series {
                endpoint,
                interval_ms,
                windows,
            })
        })
        .collect()
}

/// Runs one case on a virtual clock.
async fn run_case(
    config: &AlertsConfig,
    eval: Duration,
    case: &TestCase,
) -> Result<CaseResult, RuleTestError> {
    let interval = duration(&case.name, case.interval.as_deref().unwrap_or("10s"))?;
    let source = Synthetic {
        series: build_series(case, interval.as_millis() as i64)?,
    };
    let mut expectations: Vec<(i64, &Expectation)> = case
        .expect
        .iter()
        .map(|e| duration(&case.name, &e.at).map(|d| (d.as_millis() as i64, e)))
        .collect::<Result<_, _>>()?;
    expectations.sort_by_key(|(at, _)| *at);
    let end = expectations.last().map_or(0, |(at, _)| *at);
    let step = eval.as_millis().max(1) as i64;
    let mut engine = Engine::default();
    let mut failures = Vec::new();
    let mut next = 0;
    let mut t = 0;
    while t <= end {
        evaluate_all(&source, config, &mut engine, ORIGIN_MS + t).await;
        // Check every expectation due by now (at or before this evaluation).
        while next < expectations.len() && expectations[next].0 <= t {
            let (at, expectation) = expectations[next];
            let names = |state: AlertState| -> BTreeSet<String> {
                engine
                    .alerts()
                    .filter(|a| a.state == state)
                    .map(|a| a.rule.clone())
                    .collect()
            };
            let firing = names(AlertState::Firing);
            let wanted: BTreeSet<String> = expectation.firing.iter().cloned().collect();
            if firing != wanted {
                failures.push(format!(
                    "at {}: firing {:?}, expected {:?}",
                    humanize(at),
                    firing,
                    wanted
                ));
            }
            if let Some(pending) = &expectation.pending {
                let actual = names(AlertState::Pending);
                let wanted: BTreeSet<String> = pending.iter().cloned().collect();
                if actual != wanted {
                    failures.push(format!(
                        "at {}: pending {:?}, expected {:?}",
                        humanize(at),
                        actual,
                        wanted
                    ));
                }
            }
            next += 1;
        }
        t += step;
    }
    Ok(CaseResult {
        name: case.name.clone(),
        failures,
    })
}

fn humanize(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms as u64)).to_string()
}

/// Runs every case of a test file; rule files are relative to it.
pub async fn run_file(path: &Path) -> Result<Vec<CaseResult>, RuleTestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RuleTestError::Read(path.into(), e.to_string()))?;
    let file: TestFile =
        toml::from_str(&text).map_err(|e| RuleTestError::Read(path.into(), e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config = AlertsConfig::default();
    for rules in &file.rule_files {
        let loaded =
            config::load(&base.join(rules)).map_err(|e| RuleTestError::Rules(e.to_string()))?;
        config.eval_interval = loaded.eval_interval;
        config.rules.extend(loaded.rules);
    }
    let eval = match &file.evaluation_interval {
        Some(text) => duration("evaluation_interval", text)?,
        None => config.eval_interval,
    };
    let mut results = Vec::new();
    for case in &file.test {
        results.push(run_case(&config, eval, case).await?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promtool_notation_expands() {
        assert_eq!(
            expand("1+2x3").unwrap(),
            vec![Some(1.0), Some(3.0), Some(5.0), Some(7.0)]
        );
        assert_eq!(
            expand("5x2 _ 7").unwrap(),
            vec![Some(5.0), Some(5.0), Some(5.0), None, Some(7.0)]
        );
        assert_eq!(
            expand("10-5x2").unwrap(),
            vec![Some(10.0), Some(5.0), Some(0.0)]
        );
        assert_eq!(expand("_x1").unwrap(), vec![None, None]);
        assert!(expand("abc").is_err());
    }

    #[tokio::test]
    async fn a_rule_test_passes_and_a_wrong_expectation_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.toml"),
            r#"
[global]
eval_interval = "15s"
[[receiver]]
name = "r"
email = { to = ["a@example.com"] }
[[rule]]
name = "Slow"
service = "api"
stat = "p99"
window = "1m"
threshold = 250
for = "1m"
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tests.toml"),
            r#"
rule_files = ["rules.toml"]
[[test]]
name = "slow after a minute and a half"
[[test.series]]
service = "api"
requests = "10x60"
latency_ms = "20x5 400x60"
[[test.expect]]
at = "1m"
firing = []
pending = []
[[test.expect]]
at = "1m30s"
firing = []
pending = ["Slow"]
[[test.expect]]
at = "2m30s"
firing = ["Slow"]

[[test]]
name = "wrong on purpose"
[[test.series]]
service = "api"
requests = "10x60"
[[test.expect]]
at = "1m"
firing = ["Slow"]
"#,
        )
        .unwrap();
        let results = run_file(&dir.path().join("tests.toml")).await.unwrap();
        assert!(results[0].failures.is_empty(), "{:?}", results[0]);
        assert_eq!(results[1].failures.len(), 1, "{:?}", results[1]);
    }

    async fn run(rules: &str, tests: &str) -> Vec<CaseResult> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), format!("[[receiver]]\nname = \"r\"\nemail = {{ to = [\"a@example.com\"] }}\n[global]\neval_interval = \"15s\"\n{rules}")).unwrap();
        std::fs::write(
            dir.path().join("tests.toml"),
            format!("rule_files = [\"rules.toml\"]\n{tests}"),
        )
        .unwrap();
        run_file(&dir.path().join("tests.toml")).await.unwrap()
    }

    #[tokio::test]
    async fn change_rules_compare_with_the_offset_baseline_and_never_divide_by_zero() {
        let rules = "[[rule]]\nname = \"Tripled\"\nkind = \"change\"\nservice = \"api\"\nstat = \"rate\"\nwindow = \"1m\"\noffset = \"2m\"\nthreshold = 2\n";
        let results = run(
            rules,
            r#"
[[test]]
name = "traffic triples against two minutes ago"
[[test.series]]
service = "api"
requests = "10x17 30x30"
[[test.expect]]
at = "2m50s"
firing = []
[[test.expect]]
at = "4m"
firing = ["Tripled"]

[[test]]
name = "no baseline traffic is no data, not infinity"
[[test.series]]
service = "api"
requests = "0x17 30x30"
[[test.expect]]
at = "4m"
firing = []
"#,
        )
        .await;
        for result in results {
            assert!(result.failures.is_empty(), "{result:?}");
        }
    }

    #[tokio::test]
    async fn burn_rate_pairs_need_both_windows() {
        // 99 % objective: budget 1 %. A 2-minute burst of 50 % errors burns the 5 m window far
        // above 14.4× but the 1 h window stays under it: no page. (Over the single hour of
        // history it still spent 1.6 % > 1 %, so the slow 3d/6h ticket pair does fire.)
        let rules = "[[slo]]\nname = \"avail\"\nservice = \"api\"\nobjective = 99\n";
        let results = run(
            rules,
            r#"
[[test]]
name = "a short burst does not page"
[[test.series]]
service = "api"
requests = "100x400"
errors = "0x349 50x11 0x40"
[[test.expect]]
at = "61m"
firing = ["avail-ticket"]

[[test]]
name = "a sustained burn pages"
[[test.series]]
service = "api"
requests = "100x400"
errors = "0x200 50x200"
[[test.expect]]
at = "61m"
firing = ["avail-page", "avail-ticket"]
"#,
        )
        .await;
        for result in results {
            assert!(result.failures.is_empty(), "{result:?}");
        }
    }
}
