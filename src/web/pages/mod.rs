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
//!   `traces.rs` `/traces` and `/traces/{id}`, `logs.rs` `/logs` (and the log panels of the
//!   other pages), `metrics.rs` `/metrics-explorer`,
//!   `custom.rs` `/dashboards` and `/dashboards/{name}`.
//! - Static assets (`/assets/…`) are embedded in the binary with an ETag.
//!
//! # Alerts on every page
//! [`AlertView`] is what the pages read of alerting (the alert runtime's handle implements it,
//! in `alerts.rs`): with it in [`Pages::alerts`], the layout shows the firing-alerts banner,
//! the nav links `/alerts`, and RED charts get threshold lines and shaded firing periods.

pub mod alerts;
mod assets;
mod custom;
mod instances;
mod layout;
mod logs;
mod metrics;
mod overview;
mod params;
mod service;
mod traces;

use assets::*;
pub use layout::*;
pub use params::*;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::Query as QueryString;
use axum::http::{HeaderMap, StatusCode, header};
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

/// What exporters need to reach redline: whether the OTLP listeners serve TLS, and their
/// credentials (with who has sent what).
#[derive(Clone)]
pub struct OtlpAccess {
    pub auth: Arc<crate::ingest::auth::OtlpAuth>,
    pub tls: bool,
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
    /// How exporters reach the OTLP listeners, and who has sent what.
    pub otlp_access: Option<OtlpAccess>,
    /// OTLP forwarding, for the health panel, when configured.
    pub forward: Option<crate::forward::ForwardHandle>,
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
    t.spans_accepted + t.points_accepted + t.log_records_accepted
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
            otlp_access: None,
            forward: None,
            ingest_rate: Arc::new(Mutex::new(IngestSamples::default())),
        }
    }

    /// Attaches what the health panel shows of stages, memory and unwritten data.
    pub fn with_readiness(mut self, readiness: crate::web::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Attaches the OTLP listeners' credentials, for the senders table and the help.
    pub fn with_otlp_access(mut self, access: OtlpAccess) -> Self {
        self.otlp_access = Some(access);
        self
    }

    /// Attaches OTLP forwarding, whose figures the health panel shows.
    pub fn with_forward(mut self, forward: Option<crate::forward::ForwardHandle>) -> Self {
        self.forward = forward;
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

/// The dashboard routes, compressed (`web::protect` adds the security headers).
pub fn router(pages: Pages) -> Router {
    pages.start_sampler();
    Router::new()
        .route("/", get(overview::page))
        .route("/services/{service}", get(service::service_page))
        .route("/services/{service}/endpoints", get(service::endpoint_page))
        .route("/traces", get(traces::list))
        .route("/traces/{trace_id}", get(traces::trace))
        .route("/logs", get(logs::list))
        .route("/metrics-explorer", get(metrics::page))
        .route("/dashboards", get(custom::list))
        .route("/dashboards/{name}", get(custom::page))
        .route("/assets/{file}", get(asset))
        .with_state(pages)
        .layer(CompressionLayer::new())
}

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
