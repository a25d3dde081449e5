//! The dashboard: server-rendered HTML pages (askama templates in `templates/`) on the web
//! address, drawn from the same [`Query`] as the JSON API, with charts from
//! [`crate::render`].
//!
//! Every view's state lives in the URL (range, refresh, filters, sort), so a page can be
//! bookmarked and shared. Telemetry text is untrusted: askama escapes everything by default,
//! and the only `|safe` values are SVG/HTML produced by `render`, which escapes its own text.
//!
//! # Layout
//! - `mod.rs`: state, router, the shared layout (nav, range picker, alert banner), parameters.
//! - `overview.rs` `/`, `service.rs` `/services/{s}` and `/services/{s}/endpoints`,
//!   `traces.rs` `/traces` and `/traces/{id}`, `metrics.rs` `/metrics-explorer`,
//!   `custom.rs` `/dashboards` and `/dashboards/{name}`.
//! - Static assets (`/assets/…`) are embedded in the binary with an ETag.
//!
//! # Alerts on every page
//! [`AlertView`] is what the pages read of alerting (the alert runtime's handle implements it,
//! in `alerts.rs`): with it in [`Pages::alerts`], the layout shows the firing-alerts banner,
//! the nav links `/alerts`, and RED charts get threshold lines and shaded firing periods.

pub mod alerts;
mod custom;
mod metrics;
mod overview;
mod service;
mod traces;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Query as QueryString, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::aggregate::red::RedStats;
use crate::pipeline::{IngestQueue, Live};
use crate::query::{Query, RedStat, RedSteps};
use crate::render::{Interval, Threshold};
use crate::self_metrics;
use crate::store::StoreError;
use crate::vocab::{TimeRange, now_ms};

/// One alert that is firing now, for the banner.
#[derive(Debug, Clone, PartialEq)]
pub struct FiringAlert {
    pub name: String,
    pub severity: String,
    pub summary: String,
    pub since_ms: i64,
}

/// What a chart shows, so the alert engine can say which rules concern it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartTarget<'a> {
    pub service: &'a str,
    /// Both set for an endpoint's chart, both `None` for a whole service.
    pub method: Option<&'a str>,
    pub route: Option<&'a str>,
    /// The RED statistic: `rate`, `error_rate`, `p50`, `p95`, `p99`, …
    pub stat: &'a str,
}

/// Threshold lines and firing periods for one chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    pub thresholds: Vec<Threshold>,
    pub firing: Vec<Interval>,
}

/// What the pages read of alerting; in [`Pages::alerts`] it brings the banner, the `/alerts`
/// nav link and chart annotations.
pub trait AlertView: Send + Sync {
    /// Alerts firing now, most severe first.
    fn firing(&self) -> Vec<FiringAlert>;
    /// Thresholds of rules on `target` and the periods they fired within `range`.
    fn annotations(&self, target: &ChartTarget<'_>, range: TimeRange) -> Annotations;
}

/// Everything the pages read. Cheap to clone.
#[derive(Clone)]
pub struct Pages {
    pub query: Query,
    /// Live aggregator counters (series counts, overflow) for the health panel.
    pub live: Arc<Live>,
    pub queue: IngestQueue,
    pub queue_capacity: usize,
    /// The SQLite file, whose size the overview reports.
    pub database_path: PathBuf,
    /// Where `dashboards/*.toml` are read from (on every request, so edits show at once).
    pub dashboards_dir: PathBuf,
    /// The OTLP addresses, for the "point your SDK here" empty states.
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    /// The alert engine's view, once there is one.
    pub alerts: Option<Arc<dyn AlertView>>,
    /// Stages, memory and unwritten data, for the health panel.
    pub readiness: Option<crate::web::Readiness>,
    ingest_rate: Arc<Mutex<IngestSamples>>,
}

/// Accepted-item totals sampled every few seconds, for the ingest rate.
#[derive(Default)]
struct IngestSamples {
    samples: VecDeque<(i64, u64)>,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(5);

impl IngestSamples {
    fn push(&mut self, at_ms: i64, total: u64) {
        self.samples.push_back((at_ms, total));
        while self.samples.len() > 720 {
            self.samples.pop_front();
        }
    }

    /// Items per second over the last minute (or what has been sampled of it).
    fn rate(&self, now_ms: i64, total: u64) -> Option<f64> {
        let (at, then) = self
            .samples
            .iter()
            .find(|(at, _)| now_ms - at <= 60_000)
            .copied()?;
        let seconds = (now_ms - at) as f64 / 1000.0;
        (seconds >= 1.0).then(|| total.saturating_sub(then) as f64 / seconds)
    }
}

fn accepted_total() -> u64 {
    let t = self_metrics::ingest_totals();
    t.spans_accepted + t.points_accepted
}

impl Pages {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        query: Query,
        live: Arc<Live>,
        queue: IngestQueue,
        queue_capacity: usize,
        database_path: PathBuf,
        dashboards_dir: PathBuf,
        otlp_grpc_addr: SocketAddr,
        otlp_http_addr: SocketAddr,
    ) -> Self {
        Pages {
            query,
            live,
            queue,
            queue_capacity,
            database_path,
            dashboards_dir,
            otlp_grpc_addr,
            otlp_http_addr,
            alerts: None,
            readiness: None,
            ingest_rate: Arc::new(Mutex::new(IngestSamples::default())),
        }
    }

    /// Attaches what the health panel shows of stages, memory and unwritten data.
    pub fn with_readiness(mut self, readiness: crate::web::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Attaches the alert engine's view.
    pub fn with_alerts(mut self, alerts: Arc<dyn AlertView>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// Samples the ingest totals every few seconds while the pages exist (needs a runtime).
    fn start_sampler(&self) {
        let weak: Weak<Mutex<IngestSamples>> = Arc::downgrade(&self.ingest_rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(samples) = weak.upgrade() else { break };
                let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                samples.push(now_ms(), accepted_total());
            }
        });
    }

    fn ingest_rate(&self) -> Option<f64> {
        let samples = self.ingest_rate.lock().unwrap_or_else(|p| p.into_inner());
        samples.rate(now_ms(), accepted_total())
    }

    /// Services seen in the last day, for pickers: a day is read at 1-hour resolution, so
    /// this stays cheap whatever range the page shows.
    pub async fn service_names(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .query
            .services(TimeRange::last(24 * 3_600_000))
            .await?
            .into_iter()
            .map(|s| s.service)
            .collect())
    }

    fn annotations(&self, target: ChartTarget<'_>, range: TimeRange) -> Annotations {
        self.alerts
            .as_ref()
            .map(|a| a.annotations(&target, range))
            .unwrap_or_default()
    }
}

/// The dashboard routes, compressed, with security headers.
pub fn router(pages: Pages) -> Router {
    pages.start_sampler();
    Router::new()
        .route("/", get(overview::page))
        .route("/services/{service}", get(service::service_page))
        .route("/services/{service}/endpoints", get(service::endpoint_page))
        .route("/traces", get(traces::list))
        .route("/traces/{trace_id}", get(traces::trace))
        .route("/metrics-explorer", get(metrics::page))
        .route("/dashboards", get(custom::list))
        .route("/dashboards/{name}", get(custom::page))
        .route("/assets/{file}", get(asset))
        .with_state(pages)
        .layer(middleware::from_fn(security_headers))
        .layer(CompressionLayer::new())
}

/// Headers that keep injected markup inert even if escaping ever failed: no inline or foreign
/// scripts, no framing, no MIME sniffing.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
             form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

// ---------------------------------------------------------------------------------------------
// Static assets

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/favicon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
];

/// A strong ETag from the content (FNV-1a, stable across builds of the same content).
fn etag(body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// The URL of an asset, versioned by its ETag so it can be cached for long.
pub fn asset_url(name: &str) -> String {
    let version = ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| etag(a.body))
        .unwrap_or_default();
    format!("/assets/{name}?v={}", version.trim_matches('"'))
}

async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let tag = etag(asset.body);
    let cache = (
        header::CACHE_CONTROL,
        "public, max-age=86400, must-revalidate",
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag.as_str()), cache],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::ETAG, tag.as_str()),
            cache,
        ],
        asset.body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error page: a status and a message a person can act on.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn bad(parameter: &str, message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{parameter}: {}", message.into()),
        }
    }

    /// A definition (dashboard file) that does not validate.
    pub fn invalid(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "dashboard query failed");
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the query failed; see redline's log".into(),
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> Self {
        tracing::error!(%error, "template failed");
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the page could not be rendered; see redline's log".into(),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            layout: Layout::plain(&format!("{}", self.status)),
            status: self.status.to_string(),
            message: self.message,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, "error\n").into_response(),
        }
    }
}

/// Renders a template into an HTML response.
pub fn render(template: &impl Template) -> Result<Html<String>, PageError> {
    Ok(Html(template.render()?))
}

// ---------------------------------------------------------------------------------------------
// Parameters, range and the shared layout

/// Query-string parameters of a page (pages are lenient about unknown names: links from
/// elsewhere may carry extra ones).
#[derive(Debug, Clone, Default)]
pub struct Params(pub BTreeMap<String, String>);

pub type Pairs = QueryString<Vec<(String, String)>>;

impl Params {
    pub fn from_pairs(QueryString(pairs): Pairs) -> Self {
        Params(pairs.into_iter().collect())
    }

    /// A non-empty parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value even when empty: an endpoint's method is empty for servers that are neither
    /// HTTP nor RPC, and its route when the span has no name.
    pub fn given(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "true" | "on" | "yes"))
    }

    /// The time range: `range=15m|1h|6h|24h|7d` (default 1h), or `from`/`to` as unix ms or
    /// `YYYY-MM-DDTHH:MM` (UTC, what a datetime-local input sends).
    pub fn range(&self) -> Result<RangeChoice, PageError> {
        let now = now_ms();
        if let Some(from) = self.get("from") {
            let from_ms = parse_time("from", from)?;
            let to_ms = match self.get("to") {
                Some(to) => parse_time("to", to)?,
                None => now,
            };
            let range = TimeRange::checked(from_ms, to_ms)
                .map_err(|e| PageError::bad(e.parameter(), e.to_string()))?;
            return Ok(RangeChoice {
                range,
                preset: None,
            });
        }
        let preset = self.get("range").unwrap_or("1h");
        let Some((_, ms)) = PRESETS.iter().find(|(name, _)| *name == preset) else {
            return Err(PageError::bad(
                "range",
                format!("{preset:?} is not one of 15m, 1h, 6h, 24h, 7d"),
            ));
        };
        Ok(RangeChoice {
            range: TimeRange {
                from_ms: now - ms,
                to_ms: now,
            },
            preset: Some(preset.to_string()),
        })
    }

    /// Auto-refresh in seconds: `refresh=off|10s|30s|1m|5m`.
    pub fn refresh(&self) -> Result<u32, PageError> {
        match self.get("refresh").unwrap_or("off") {
            "off" => Ok(0),
            "10s" => Ok(10),
            "30s" => Ok(30),
            "1m" => Ok(60),
            "5m" => Ok(300),
            other => Err(PageError::bad(
                "refresh",
                format!("{other:?} is not one of off, 10s, 30s, 1m, 5m"),
            )),
        }
    }

    /// This query string with `changes` applied (`None` removes), as `?a=b&…`.
    /// Empty values of this query string are dropped; empty values in `changes` are kept (an
    /// endpoint's method or route may be empty and still name it).
    pub fn with(&self, changes: &[(&str, Option<&str>)]) -> String {
        let mut map = self.0.clone();
        map.retain(|_, v| !v.is_empty());
        for (name, value) in changes {
            match value {
                Some(v) => map.insert(name.to_string(), v.to_string()),
                None => map.remove(*name),
            };
        }
        query_string(map.iter())
    }
}

/// `?k=v&…`, percent-encoded (empty when there is nothing).
pub fn query_string<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let encoded: Vec<String> = pairs
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

/// Percent-encodes a URL component (RFC 3986 unreserved characters stay).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

const PRESETS: [(&str, i64); 5] = [
    ("15m", 15 * 60_000),
    ("1h", 3_600_000),
    ("6h", 6 * 3_600_000),
    ("24h", 24 * 3_600_000),
    ("7d", 7 * 24 * 3_600_000),
];

fn parse_time(name: &str, text: &str) -> Result<i64, PageError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_datetime_local(text).ok_or_else(|| {
        PageError::bad(
            name,
            format!("{text:?} is not unix ms or a UTC time like 2026-11-28T15:40"),
        )
    })
}

/// `YYYY-MM-DDTHH:MM[:SS]` as UTC unix ms.
fn parse_datetime_local(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (t.next()??, t.next()??);
    let s = t.next().flatten().unwrap_or(0);
    let calendar = (1970..=9999).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&day);
    if !calendar || !(0..=23).contains(&h) || !(0..=59).contains(&mi) || !(0..=59).contains(&s) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000)
}

/// `YYYY-MM-DDTHH:MM` for a datetime-local input.
fn datetime_local(ms: i64) -> String {
    let (y, mo, d, h, mi, _) = crate::render::civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}")
}

pub struct RangeChoice {
    pub range: TimeRange,
    /// The preset name, or `None` for a custom range.
    pub preset: Option<String>,
}

/// A step that gives about `points` steps over the range, rounded up to a round interval.
pub fn step_for(range: TimeRange, points: i64) -> i64 {
    const STEPS: [i64; 14] = [
        10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
    ];
    let raw = (range.to_ms - range.from_ms) / points.max(1);
    STEPS.into_iter().find(|s| *s >= raw).unwrap_or(86_400_000)
}

/// A step of about `points` steps, but at least an hour for ranges over 6 hours: a RED read
/// returns every window of every endpoint in the range, and the store picks the coarsest
/// resolution not above the step — a day at 1-minute resolution is 1,440 rows per endpoint,
/// at 1-hour resolution 24.
pub fn red_step(range: TimeRange, points: i64) -> i64 {
    let step = step_for(range, points);
    if range.to_ms - range.from_ms > 6 * 3_600_000 {
        step.max(3_600_000)
    } else {
        step
    }
}

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
}

impl EmptyHelp {
    pub fn of(pages: &Pages) -> Self {
        EmptyHelp {
            grpc: pages.otlp_grpc_addr.to_string(),
            http: pages.otlp_http_addr.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_round_trips() {
        let ms = 1_795_880_400_000; // 2026-11-28 15:40 UTC
        assert_eq!(datetime_local(ms), "2026-11-28T15:40");
        assert_eq!(parse_datetime_local("2026-11-28T15:40"), Some(ms));
        assert_eq!(
            parse_datetime_local("2026-11-28T15:40:30"),
            Some(ms + 30_000)
        );
        assert_eq!(parse_datetime_local("2026-13-28T15:40"), None);
        assert_eq!(parse_datetime_local("yesterday"), None);
    }

    #[test]
    fn steps_follow_the_range() {
        let r = |ms| TimeRange {
            from_ms: 0,
            to_ms: ms,
        };
        assert_eq!(step_for(r(15 * 60_000), 120), 10_000);
        assert_eq!(step_for(r(3_600_000), 120), 30_000);
        assert_eq!(step_for(r(24 * 3_600_000), 120), 900_000);
        assert_eq!(step_for(r(7 * 24 * 3_600_000), 120), 7_200_000);
        assert_eq!(red_step(r(3_600_000), 90), 60_000);
        assert_eq!(red_step(r(6 * 3_600_000), 90), 300_000);
        assert_eq!(red_step(r(24 * 3_600_000), 90), 3_600_000);
    }

    #[test]
    fn links_keep_other_parameters_and_encode_them() {
        let params = Params(
            [
                ("route".to_string(), "/a b&c".to_string()),
                ("range".into(), "6h".into()),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(
            params.with(&[("range", Some("1h"))]),
            "?range=1h&route=%2Fa%20b%26c"
        );
        assert_eq!(params.with(&[("range", None), ("route", None)]), "");
    }

    #[test]
    fn the_ingest_rate_uses_the_last_minute() {
        let mut s = IngestSamples::default();
        assert_eq!(s.rate(100_000, 10), None);
        s.push(0, 0);
        s.push(50_000, 100);
        // The sample at 0 is over a minute old at 70 s; the one at 50 s counts.
        assert_eq!(s.rate(70_000, 300), Some(10.0));
    }

    #[test]
    fn asset_etags_depend_on_content() {
        assert_ne!(etag("a"), etag("b"));
        assert!(asset_url("style.css").starts_with("/assets/style.css?v="));
    }
}
