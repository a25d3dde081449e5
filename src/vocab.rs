//! The shared vocabulary every layer speaks: redline's clock, the time ranges reads cover, and
//! the selectors and summaries that name what a read returns. It imports nothing of redline,
//! so the store below the query layer and the pages above it can all use it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since 1970 by redline's clock (never a client's).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A half-open time range `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The latest time a client may ask about: the end of the year 9999, the last a date input
/// can show. With the earliest, 1970, it keeps every range's arithmetic far from overflow.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// Why a range a client asked for cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("the start must lie between 1970 and the end of 9999")]
    StartOutOfBounds,
    #[error("the end must lie between 1970 and the end of 9999")]
    EndOutOfBounds,
    #[error("the end must be after the start")]
    Empty,
}

impl RangeError {
    /// The query parameter that names the offending end.
    pub fn parameter(self) -> &'static str {
        match self {
            RangeError::StartOutOfBounds => "from",
            RangeError::EndOutOfBounds | RangeError::Empty => "to",
        }
    }
}

/// Milliseconds of a duration a client gave, saturating instead of wrapping.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl TimeRange {
    /// A range a client asked for: both ends from 1970 to the end of 9999, the end after
    /// the start.
    pub fn checked(from_ms: i64, to_ms: i64) -> Result<Self, RangeError> {
        if !(0..=LATEST_MS).contains(&from_ms) {
            return Err(RangeError::StartOutOfBounds);
        }
        if !(0..=LATEST_MS).contains(&to_ms) {
            return Err(RangeError::EndOutOfBounds);
        }
        if to_ms <= from_ms {
            return Err(RangeError::Empty);
        }
        Ok(TimeRange { from_ms, to_ms })
    }

    /// The `duration_ms` before `to_ms`, starting no earlier than 1970.
    pub fn before(to_ms: i64, duration_ms: i64) -> Self {
        TimeRange {
            from_ms: to_ms.saturating_sub(duration_ms).max(0),
            to_ms,
        }
    }

    pub fn last(duration_ms: i64) -> Self {
        let now = now_ms();
        TimeRange {
            from_ms: now - duration_ms,
            to_ms: now,
        }
    }

    /// Seconds the range covers up to now (at least 1 ms), for rates.
    pub fn seconds(&self) -> f64 {
        ((self.to_ms.min(now_ms()) - self.from_ms).max(1)) as f64 / 1000.0
    }
}

/// Which endpoints a RED read covers.
#[derive(Debug, Clone, Default)]
pub struct RedFilter {
    pub service: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
}

/// Which sampled traces to list.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub service: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub errors_only: bool,
    pub min_duration_ms: Option<f64>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
    /// Slowest first instead of newest first.
    pub slowest_first: bool,
}

/// Which kept log records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub service: Option<String>,
    /// Records below this severity number are left out.
    pub min_severity: u8,
    /// Lower-case hex.
    pub trace_id: Option<String>,
    /// Only records of these traces (lower-case hex); `None`: of any trace or none.
    pub trace_ids: Option<Vec<String>>,
    /// A piece of the body, matched ignoring ASCII case.
    pub text: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub service: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub root_name: Option<String>,
    pub start_unix_ms: f64,
    pub duration_ms: f64,
    pub error: bool,
    pub span_count: u64,
    /// Why it was kept.
    pub reason: KeepReason,
}

/// Why a trace was kept (stored with it; the dashboard shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepReason {
    Error,
    Slow,
    Sampled,
}

impl KeepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Error => "error",
            KeepReason::Slow => "slow",
            KeepReason::Sampled => "sampled",
        }
    }

    /// The reason stored under `name`; `None` for a name no build of redline writes.
    pub fn parse(name: &str) -> Option<Self> {
        [KeepReason::Error, KeepReason::Slow, KeepReason::Sampled]
            .into_iter()
            .find(|reason| reason.as_str() == name)
    }
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
