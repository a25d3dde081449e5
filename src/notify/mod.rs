//! Notification delivery: turns an alert group's notification into an e-mail (text + HTML +
//! an inline PNG chart of the evidence), queues it in a durable SQLite outbox before any
//! attempt, and sends it with retries — over SMTP, or as `.eml` files when no SMTP server is
//! configured. The alert engine decides *what* to send; this module only delivers.

//!
//! - [`email`]: [`compose`] a [`Notification`] into a MIME message; [`preview`] renders it.
//! - [`chart`]: a [`ChartSpec`] as SVG, rasterised to PNG for the inline image.
//! - [`outbox`]: the durable SQLite outbox and the sender loop ([`run_sender`]).
//! - [`transport`]: the lettre SMTP transport for `tls = none | starttls | implicit`.

pub mod chart;
pub mod email;
pub mod outbox;
pub mod sender;
pub mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use email::{InlineImage, Rendered, compose, preview};
pub use outbox::{EntryStatus, Outbox, OutboxEntry, OutboxStats};
pub use sender::{RetryPolicy, SenderOptions, run_sender, run_sender_following, run_sender_with};

/// Why a notification could not be queued or delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A sender or recipient address that does not parse.
    #[error("invalid address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// The message could not be built (no usable recipient, MIME assembly).
    #[error("message: {0}")]
    Message(String),
    #[error("chart: {0}")]
    Chart(String),
    #[error("outbox database: {0}")]
    Store(#[from] rusqlite::Error),
    /// The database could not be opened for the outbox (the message names the file).
    #[error("{0}")]
    Open(#[from] crate::store::StoreError),
    #[error("smtp settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("outbox worker stopped: {0}")]
    Worker(String),
}

/// Firing or resolved, as shown in the subject and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One notification for one alert group, to one receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Stable identity of the group (route + group_by label values).
    pub group_key: String,
    pub receiver: String,
    pub email: EmailReceiver,
    /// Labels every alert of the group shares (alertname, service, …).
    pub group_labels: BTreeMap<String, String>,
    /// Firing alerts first, then resolved ones.
    pub alerts: Vec<AlertSummary>,
    pub created_at_ms: i64,
}

impl Notification {
    pub fn firing_count(&self) -> usize {
        self.alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .count()
    }
}

/// Everything the e-mail says about one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSummary {
    pub alertname: String,
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    /// summary, description, runbook_url, … already templated.
    pub annotations: BTreeMap<String, String>,
    pub value: Option<f64>,
    /// The value with its unit, e.g. "312 ms", "4.1 %", "12.5 req/s".
    pub value_text: String,
    pub threshold_text: String,
    pub active_since_ms: i64,
    pub resolved_at_ms: Option<i64>,
    /// The dashboard page of the service or endpoint.
    pub dashboard_url: String,
    /// 0–3 exemplar traces (slowest or erroring requests).
    pub exemplars: Vec<TraceLink>,
    pub chart: Option<ChartSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceLink {
    pub trace_id: String,
    pub url: String,
    pub duration_ms: f64,
    pub error: bool,
}

/// The metric around the firing time, drawn with the threshold line and the firing period.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSpec {
    pub title: String,
    /// "ms", "%", "req/s", or a metric's unit.
    pub unit: String,
    pub points: Vec<(i64, f64)>,
    pub threshold: Option<f64>,
    pub firing_from_ms: i64,
    /// `None` while still firing.
    pub firing_to_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailReceiver {
    pub to: Vec<String>,
    pub from: String,
}

/// How mail leaves redline.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Smtp(SmtpSettings),
    /// No SMTP configured: each message becomes a `.eml` file here, so a new user sees it.
    Outbox(PathBuf),
    /// The rules file that says where mail goes has not loaded: messages stay queued.
    Held,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    StartTls,
    Implicit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    /// Never logged; read from a file or an environment variable at load time.
    pub password: Option<Secret>,
    pub timeout: Duration,
    /// EHLO name; defaults to the host name.
    pub hello_name: Option<String>,
}

/// A credential whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}
