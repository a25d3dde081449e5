//! Custom dashboards as code: each `dashboards/NAME.toml` is a dashboard served at
//! `/dashboards/NAME`, and `redline check` validates them.
//!
//! ```toml
//! title = "API golden signals"
//! service = "example-api"          # default service of every panel
//!
//! [[panel]]
//! title = "Latency"
//! kind = "line"                    # line | stacked_area | bar | stat | table
//! red = ["p50", "p95", "p99"]      # RED statistics of the service (or of method + route)
//! thresholds = [{ value = 250, label = "p99 objective" }]
//!
//! [[panel]]
//! title = "DB pool"
//! kind = "stacked_area"
//! metric = "db.client.connection.count"   # or an OTLP metric
//! agg = "last"
//! group_by = ["db.client.connection.state"]
//! filter = { "db.client.connection.pool.name" = "primary" }
//! ```
//!
//! Parsing is strict (unknown keys are errors) and every problem is reported at once, each as
//! `file:line:column: message`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::query::{MetricAggregation, RedStat};
use crate::render::{Threshold, Unit};

/// How a panel is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    Line,
    StackedArea,
    Bar,
    /// One big number: the latest value of the (single) series.
    Stat,
    /// Per series: latest, minimum, maximum and mean.
    Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DashboardDef {
    title: Spanned<String>,
    #[serde(default)]
    description: String,
    service: Option<String>,
    #[serde(default, rename = "panel")]
    panels: Vec<Spanned<PanelDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PanelDef {
    title: Spanned<String>,
    kind: ChartKind,
    service: Option<String>,
    red: Option<Spanned<Vec<Spanned<String>>>>,
    method: Option<Spanned<String>>,
    route: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    agg: Option<Spanned<String>>,
    group_by: Option<Spanned<Vec<String>>>,
    filter: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    thresholds: Vec<Spanned<ThresholdDef>>,
    unit: Option<String>,
    #[serde(default)]
    wide: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdDef {
    value: f64,
    #[serde(default)]
    label: String,
}

/// A validated dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// The file stem: the URL is `/dashboards/{name}`.
    pub name: String,
    pub title: String,
    pub description: String,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub kind: ChartKind,
    pub service: String,
    pub query: PanelQuery,
    pub thresholds: Vec<Threshold>,
    /// Overrides the unit the query implies.
    pub unit: Option<Unit>,
    /// Spans the whole row.
    pub wide: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PanelQuery {
    /// RED statistics (name as written, parsed) of a service, or of one endpoint of it.
    Red {
        stats: Vec<(String, RedStat)>,
        method: Option<String>,
        route: Option<String>,
    },
    /// An OTLP metric, one line per attribute set after filtering and grouping.
    Metric {
        name: String,
        aggregation: Option<MetricAggregation>,
        group_by: Option<Vec<String>>,
        filter: BTreeMap<String, String>,
    },
}

/// One problem in a file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = position(self.text, span.start);
        self.list.push(Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// A dashboard's name from its file: the stem, which must be URL-safe.
fn name_of(file: &Path) -> Option<String> {
    let stem = file.file_stem()?.to_str()?;
    let ok = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| stem.to_string())
}

/// The unit a panel names.
pub fn parse_unit(text: &str) -> Unit {
    match text {
        "ms" => Unit::Millis,
        "s" => Unit::Seconds,
        "ratio" => Unit::Ratio,
        "%" | "percent" => Unit::Percent,
        "bytes" | "By" => Unit::Bytes,
        t if t.ends_with("/s") => Unit::PerSecond(t.to_string()),
        t => Unit::Count(t.to_string()),
    }
}

/// Parses and validates one dashboard file's text; every problem at once.
pub fn parse(file: &Path, text: &str) -> Result<Dashboard, Vec<Problem>> {
    let mut problems = Problems {
        file,
        text,
        list: Vec::new(),
    };
    let def: DashboardDef = match toml::from_str(text) {
        Ok(def) => def,
        Err(e) => {
            problems.at(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return Err(problems.list);
        }
    };
    let name = name_of(file).unwrap_or_else(|| {
        problems.at(
            0..0,
            "the file name must be letters, digits, '-' or '_' followed by .toml (it is the URL)",
        );
        String::new()
    });
    if def.title.get_ref().trim().is_empty() {
        problems.at(def.title.span(), "title must not be empty");
    }
    if def.panels.is_empty() {
        problems.at(0..0, "a dashboard needs at least one [[panel]]");
    }
    let mut panels = Vec::new();
    for spanned in &def.panels {
        if let Some(panel) = panel(&mut problems, spanned, def.service.as_deref()) {
            panels.push(panel);
        }
    }
    if !problems.list.is_empty() {
        problems.list.sort_by_key(|p| (p.line, p.column));
        return Err(problems.list);
    }
    Ok(Dashboard {
        name,
        title: def.title.into_inner(),
        description: def.description,
        panels,
    })
}

fn panel(
    problems: &mut Problems<'_>,
    spanned: &Spanned<PanelDef>,
    default_service: Option<&str>,
) -> Option<Panel> {
    let def = spanned.get_ref();
    let before = problems.list.len();
    if def.title.get_ref().trim().is_empty() {
        problems.at(def.title.span(), "a panel's title must not be empty");
    }
    let service = def.service.as_deref().or(default_service);
    if service.is_none() {
        problems.at(
            spanned.span(),
            "this panel has no service: set `service` in the panel or at the top of the file",
        );
    }
    let query = match (&def.red, &def.metric) {
        (Some(_), Some(metric)) => {
            problems.at(
                metric.span(),
                "a panel has either `red` or `metric`, not both",
            );
            None
        }
        (None, None) => {
            problems.at(
                spanned.span(),
                "a panel needs a query: `red = [\"p99\", …]` or `metric = \"name\"`",
            );
            None
        }
        (Some(red), None) => {
            for (key, span) in [
                ("agg", def.agg.as_ref().map(Spanned::span)),
                ("group_by", def.group_by.as_ref().map(Spanned::span)),
                ("filter", def.filter.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    problems.at(
                        span,
                        format!(
                            "`{key}` applies to `metric` panels; RED panels take method and route"
                        ),
                    );
                }
            }
            if red.get_ref().is_empty() {
                problems.at(red.span(), "`red` needs at least one statistic");
            }
            let mut stats = Vec::new();
            for stat in red.get_ref() {
                match RedStat::parse(stat.get_ref()) {
                    Some(parsed) => stats.push((stat.get_ref().clone(), parsed)),
                    None => problems.at(
                        stat.span(),
                        format!(
                            "unknown RED statistic {:?}: use p50, p90, p95, p99, rate, error_rate, \
                             requests, errors, mean or max",
                            stat.get_ref()
                        ),
                    ),
                }
            }
            if def.kind == ChartKind::Stat && red.get_ref().len() > 1 {
                problems.at(
                    red.span(),
                    "a stat panel shows one number: give one statistic",
                );
            }
            match (&def.method, &def.route) {
                (Some(m), None) => problems.at(m.span(), "`method` needs `route` too"),
                (None, Some(r)) => problems.at(r.span(), "`route` needs `method` too"),
                _ => {}
            }
            Some(PanelQuery::Red {
                stats,
                method: def.method.as_ref().map(|m| m.get_ref().clone()),
                route: def.route.as_ref().map(|r| r.get_ref().clone()),
            })
        }
        (None, Some(metric)) => {
            for (key, span) in [
                ("method", def.method.as_ref().map(Spanned::span)),
                ("route", def.route.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    problems.at(
                        span,
                        format!("`{key}` applies to `red` panels; filter metrics with `filter`"),
                    );
                }
            }
            if metric.get_ref().trim().is_empty() {
                problems.at(metric.span(), "`metric` must name a metric");
            }
            let aggregation = def.agg.as_ref().and_then(|agg| {
                let parsed = MetricAggregation::parse(agg.get_ref());
                if parsed.is_none() {
                    problems.at(
                        agg.span(),
                        format!(
                            "unknown aggregation {:?}: use avg, min, max, last, sum, rate, count, \
                             p50, p90, p95 or p99",
                            agg.get_ref()
                        ),
                    );
                }
                parsed
            });
            Some(PanelQuery::Metric {
                name: metric.get_ref().clone(),
                aggregation,
                group_by: def.group_by.as_ref().map(|g| g.get_ref().clone()),
                filter: def
                    .filter
                    .as_ref()
                    .map(|f| f.get_ref().clone())
                    .unwrap_or_default(),
            })
        }
    };
    let mut thresholds = Vec::new();
    for t in &def.thresholds {
        let value = t.get_ref().value;
        if !value.is_finite() {
            problems.at(t.span(), "a threshold's value must be a finite number");
        }
        thresholds.push(Threshold {
            value,
            label: t.get_ref().label.clone(),
        });
    }
    if problems.list.len() > before {
        return None;
    }
    Some(Panel {
        title: def.title.get_ref().clone(),
        kind: def.kind,
        service: service?.to_string(),
        query: query?,
        thresholds,
        unit: def.unit.as_deref().map(parse_unit),
        wide: def.wide,
    })
}

/// Reads and validates one file.
pub fn load_file(file: &Path) -> Result<Dashboard, Vec<Problem>> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(file, &text),
        Err(e) => Err(vec![Problem {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read: {e}"),
        }]),
    }
}

/// The `*.toml` files of a directory, sorted (none when it does not exist).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every dashboard of a directory: the valid ones, and the problems of the others.
pub fn load_dir(dir: &Path) -> (Vec<Dashboard>, Vec<Problem>) {
    let mut dashboards = Vec::new();
    let mut problems = Vec::new();
    for file in files_in(dir) {
        match load_file(&file) {
            Ok(d) => dashboards.push(d),
            Err(p) => problems.extend(p),
        }
    }
    (dashboards, problems)
}

/// Whether `redline check` treats `path` as dashboards: a directory, or a `.toml` file inside a
/// directory named `dashboards`.
pub fn is_dashboards_path(path: &Path) -> bool {
    path.is_dir()
        || path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|name| name == "dashboards")
}

/// `redline check` for dashboards (a directory of them, or one file): a line per valid
/// dashboard, or every problem of every file.
pub fn check(path: &Path) -> Result<Vec<String>, Vec<Problem>> {
    let files = if path.is_dir() {
        files_in(path)
    } else {
        vec![path.to_path_buf()]
    };
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(d) => ok.push(format!(
                "{}: ok (dashboard {:?}, {} panels)",
                file.display(),
                d.name,
                d.panels.len()
            )),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Dashboard, Vec<String>> {
        parse(Path::new("dashboards/test.toml"), text)
            .map_err(|ps| ps.iter().map(|p| p.to_string()).collect())
    }

    const GOOD: &str = r#"
title = "Golden"
service = "api"

[[panel]]
title = "Latency"
kind = "line"
red = ["p50", "p99"]
thresholds = [{ value = 250, label = "objective" }]

[[panel]]
title = "Pool"
kind = "stacked_area"
metric = "db.client.connection.count"
agg = "last"
group_by = ["state"]
filter = { pool = "primary" }
"#;

    #[test]
    fn a_good_dashboard_parses() {
        let d = check(GOOD).unwrap();
        assert_eq!(d.name, "test");
        assert_eq!(d.panels.len(), 2);
        assert_eq!(d.panels[0].service, "api");
        assert_eq!(d.panels[0].thresholds[0].value, 250.0);
        let PanelQuery::Metric {
            aggregation,
            group_by,
            filter,
            ..
        } = &d.panels[1].query
        else {
            panic!("metric panel")
        };
        assert_eq!(*aggregation, Some(MetricAggregation::Last));
        assert_eq!(group_by.as_deref(), Some(&["state".to_string()][..]));
        assert_eq!(filter.get("pool").map(String::as_str), Some("primary"));
    }

    #[test]
    fn unknown_keys_are_errors_with_their_position() {
        let errors = check("title = \"x\"\n[[panel]]\ntitle = \"a\"\nkind = \"line\"\nred = [\"p99\"]\ncolour = \"red\"\n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("dashboards/test.toml:6:1: "),
            "{errors:?}"
        );
        assert!(errors[0].contains("colour"), "{errors:?}");
    }

    #[test]
    fn an_unknown_kind_names_the_choices() {
        let errors = check("title = \"x\"\nservice = \"a\"\n[[panel]]\ntitle = \"a\"\nkind = \"pie\"\nred = [\"p99\"]\n").unwrap_err();
        assert!(
            errors[0].starts_with("dashboards/test.toml:5:8: "),
            "{errors:?}"
        );
        assert!(errors[0].contains("stacked_area"), "{errors:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once_with_positions() {
        let text = "title = \"x\"\n\
                    [[panel]]\n\
                    title = \"a\"\n\
                    kind = \"line\"\n\
                    red = [\"p99\", \"p42\"]\n\
                    agg = \"avg\"\n\
                    [[panel]]\n\
                    title = \"b\"\n\
                    kind = \"line\"\n\
                    service = \"api\"\n\
                    metric = \"m\"\n\
                    agg = \"median\"\n";
        let errors = check(text).unwrap_err();
        let joined = errors.join("\n");
        // Panel 1: no service, unknown stat (line 5, column 14), agg on a RED panel (line 6).
        assert!(
            joined.contains("test.toml:2:1: this panel has no service"),
            "{joined}"
        );
        assert!(
            joined.contains("test.toml:5:15: unknown RED statistic \"p42\""),
            "{joined}"
        );
        assert!(
            joined.contains("test.toml:6:7: `agg` applies to `metric` panels"),
            "{joined}"
        );
        // Panel 2: bad aggregation.
        assert!(
            joined.contains("test.toml:12:7: unknown aggregation \"median\""),
            "{joined}"
        );
        assert_eq!(errors.len(), 4, "{joined}");
    }

    #[test]
    fn a_panel_needs_exactly_one_query_and_a_stat_one_number() {
        let errors = check("title = \"x\"\nservice = \"a\"\n[[panel]]\ntitle = \"a\"\nkind = \"line\"\n[[panel]]\ntitle = \"b\"\nkind = \"stat\"\nred = [\"p50\", \"p99\"]\n").unwrap_err();
        let joined = errors.join("\n");
        assert!(joined.contains("needs a query"), "{joined}");
        assert!(
            joined.contains("test.toml:9:7: a stat panel shows one number"),
            "{joined}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errors = check("title = \"x\"\n[[panel]\n").unwrap_err();
        assert!(
            errors[0].starts_with("dashboards/test.toml:2:"),
            "{errors:?}"
        );
    }

    #[test]
    fn check_reports_every_file_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("bad.toml"), "title = 1\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let problems = super::check(dir.path()).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].to_string().contains("bad.toml:1:9"),
            "{problems:?}"
        );
        std::fs::remove_file(dir.path().join("bad.toml")).unwrap();
        let ok = super::check(dir.path()).unwrap();
        assert_eq!(ok.len(), 1);
        assert!(
            ok[0].ends_with("good.toml: ok (dashboard \"good\", 2 panels)"),
            "{ok:?}"
        );
        assert!(is_dashboards_path(dir.path()));
        assert!(is_dashboards_path(Path::new("dashboards/x.toml")));
        assert!(!is_dashboards_path(Path::new("alerts.toml")));
    }

    #[test]
    fn the_shipped_dashboards_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
        let (dashboards, problems) = load_dir(&dir);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(dashboards.iter().any(|d| d.name == "api-golden-signals"));
    }
}
