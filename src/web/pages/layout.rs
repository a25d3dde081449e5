//! What every page shares: the layout (nav, range picker, alert banner), sortable table
//! headers, number formatting and empty states.

use super::*;

/// A link of the range picker or the refresh menu.
pub struct PickerLink {
    pub label: String,
    pub href: String,
    pub current: bool,
}

/// What the base template needs: title, nav, picker, banner.
pub struct Layout {
    pub title: String,
    pub nav: &'static str,
    pub presets: Vec<PickerLink>,
    pub refreshes: Vec<PickerLink>,
    pub custom_from: String,
    pub custom_to: String,
    /// Hidden inputs of the custom-range form: the page's other parameters.
    pub keep: Vec<(String, String)>,
    pub custom: bool,
    pub range_text: String,
    pub refresh: u32,
    pub firing: Vec<FiringAlert>,
    pub alerts_enabled: bool,
    pub show_picker: bool,
    pub css: String,
    pub js: String,
    pub icon: String,
}

impl Layout {
    /// The layout of a page under `nav`, with the picker reflecting `params`.
    pub fn new(
        pages: &Pages,
        title: impl Into<String>,
        nav: &'static str,
        params: &Params,
        choice: &RangeChoice,
        refresh: u32,
    ) -> Self {
        let presets = PRESETS
            .iter()
            .map(|(name, _)| PickerLink {
                label: name.to_string(),
                href: params.with(&[("range", Some(name)), ("from", None), ("to", None)]),
                current: choice.preset.as_deref() == Some(name),
            })
            .collect();
        let refreshes = ["off", "10s", "30s", "1m", "5m"]
            .iter()
            .map(|r| PickerLink {
                label: r.to_string(),
                href: params.with(&[("refresh", if *r == "off" { None } else { Some(r) })]),
                current: (refresh == 0 && *r == "off")
                    || params.get("refresh") == Some(r) && refresh > 0,
            })
            .collect();
        let keep = params
            .0
            .iter()
            .filter(|(k, v)| !["from", "to", "range"].contains(&k.as_str()) && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let range = choice.range;
        let firing = pages
            .alerts
            .as_ref()
            .map(|a| a.firing())
            .unwrap_or_default();
        Layout {
            title: title.into(),
            nav,
            presets,
            refreshes,
            custom_from: datetime_local(range.from_ms),
            custom_to: datetime_local(range.to_ms),
            keep,
            custom: choice.preset.is_none(),
            range_text: format!(
                "{} – {}",
                crate::render::format_utc(range.from_ms),
                crate::render::format_utc(range.to_ms)
            ),
            refresh,
            firing,
            alerts_enabled: pages.alerts.is_some(),
            show_picker: true,
            css: asset_url("style.css"),
            js: asset_url("app.js"),
            icon: asset_url("favicon.svg"),
        }
    }

    /// A layout without the range picker (error pages).
    pub fn plain(title: &str) -> Self {
        Layout {
            title: title.to_string(),
            nav: "",
            presets: Vec::new(),
            refreshes: Vec::new(),
            custom_from: String::new(),
            custom_to: String::new(),
            keep: Vec::new(),
            custom: false,
            range_text: String::new(),
            refresh: 0,
            firing: Vec::new(),
            alerts_enabled: false,
            show_picker: false,
            css: asset_url("style.css"),
            js: asset_url("app.js"),
            icon: asset_url("favicon.svg"),
        }
    }

    /// `aria-current` value of a nav item.
    pub fn current(&self, nav: &str) -> &'static str {
        if self.nav == nav { "page" } else { "false" }
    }
}

/// The sortable header of a table column: link toggles direction, `aria-sort` marks the key.
pub struct SortHeader {
    pub label: String,
    pub href: String,
    /// `ascending`, `descending` or empty.
    pub aria: &'static str,
    pub arrow: &'static str,
    pub numeric: bool,
}

/// Headers for `columns` (key, label, numeric), the current `sort`/`dir` from `params`.
pub fn sort_headers(
    params: &Params,
    columns: &[(&str, &str, bool)],
    default: &str,
) -> Vec<SortHeader> {
    let (key, descending) = sort_of(params, default);
    columns
        .iter()
        .map(|(k, label, numeric)| {
            let active = *k == key;
            let next_dir = if active {
                if descending { "asc" } else { "desc" }
            } else if *numeric {
                "desc"
            } else {
                "asc"
            };
            SortHeader {
                label: label.to_string(),
                href: params.with(&[("sort", Some(k)), ("dir", Some(next_dir))]),
                aria: match (active, descending) {
                    (false, _) => "",
                    (true, true) => "descending",
                    (true, false) => "ascending",
                },
                arrow: match (active, descending) {
                    (false, _) => "",
                    (true, true) => " ▼",
                    (true, false) => " ▲",
                },
                numeric: *numeric,
            }
        })
        .collect()
}

/// The sort key and whether it is descending.
pub fn sort_of<'a>(params: &'a Params, default: &'a str) -> (&'a str, bool) {
    let key = params.get("sort").unwrap_or(default);
    let descending = match params.get("dir") {
        Some("asc") => false,
        Some("desc") => true,
        // Names read A→Z, figures largest first.
        _ => key != "name",
    };
    (key, descending)
}

/// Compares optional numbers with "no data" last.
pub fn cmp_opt(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// Formats an optional value, "–" without data.
pub fn fmt_opt(value: Option<f64>, unit: &crate::render::Unit) -> String {
    value.map(|v| unit.format(v)).unwrap_or_else(|| "–".into())
}

/// Bytes as a human size.
pub fn fmt_bytes(bytes: u64) -> String {
    crate::render::Unit::Bytes.format(bytes as f64)
}

// ---------------------------------------------------------------------------------------------
// RED helpers shared by the pages

/// A statistic per step of one group of [`RedSteps`]; steps without a value are left out.
pub fn stat_points(
    red: &RedSteps,
    steps: &BTreeMap<i64, RedStats>,
    stat: RedStat,
) -> Vec<(i64, f64)> {
    steps
        .iter()
        .filter_map(|(start, stats)| stat.value(stats, red.seconds(*start)).map(|v| (*start, v)))
        .collect()
}

/// All steps merged.
pub fn merged<'a>(steps: impl IntoIterator<Item = &'a RedStats>) -> RedStats {
    let mut total = RedStats::default();
    for stats in steps {
        total.merge(stats);
    }
    total
}

/// Seconds the range covers up to now (rates divide by it).
pub fn range_seconds(range: TimeRange) -> f64 {
    ((range.to_ms.min(now_ms()) - range.from_ms).max(1000)) as f64 / 1000.0
}

/// The "point an SDK at redline" help shown where there is no data.
pub struct EmptyHelp {
    pub grpc: String,
    pub http: String,
    /// `https` when the listeners serve TLS.
    pub scheme: &'static str,
    /// Exporters must send an API key.
    pub api_key: bool,
}

impl EmptyHelp {
    pub fn of(pages: &Pages) -> Self {
        let access = pages.otlp_access.as_ref();
        EmptyHelp {
            grpc: pages.otlp_grpc_addr.to_string(),
            http: pages.otlp_http_addr.to_string(),
            scheme: if access.is_some_and(|a| a.tls) {
                "https"
            } else {
                "http"
            },
            api_key: access.is_some_and(|a| a.auth.requires_api_key()),
        }
    }
}
