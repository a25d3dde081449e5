//! Log records: OTLP's severity scale ([`Severity`]), a record as redline keeps and shows it
//! ([`LogRecord`]), and the synthetic metric all records are counted under
//! ([`LOG_RECORDS_METRIC`]), so counts per service and severity live with the metric series:
//! stored, rolled up, charted and read by alert rules like any counter.

use std::collections::BTreeMap;

/// Every record received is counted under this counter of its service, with the attributes
/// [`SEVERITY_ATTRIBUTE`] (a [`Severity`] name) and [`ERROR_ATTRIBUTE`] (`true` at ERROR and
/// above).
pub const LOG_RECORDS_METRIC: &str = "redline.log.records";
pub const SEVERITY_ATTRIBUTE: &str = "severity";
pub const ERROR_ATTRIBUTE: &str = "error";
pub const LOG_RECORDS_UNIT: &str = "{record}";

/// The lowest severity number of WARN: records from here up are kept whatever their trace.
pub const WARN_NUMBER: u8 = 13;
/// The lowest severity number of ERROR: what `log_errors` counts.
pub const ERROR_NUMBER: u8 = 17;
/// The highest severity number OTLP defines (FATAL4).
pub const MAX_SEVERITY_NUMBER: i32 = 24;

/// The ranges of OTLP's `SeverityNumber`: 1–4 TRACE … 21–24 FATAL, 0 unspecified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Unspecified,
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Severity {
    pub const ALL: [Severity; 7] = [
        Severity::Unspecified,
        Severity::Trace,
        Severity::Debug,
        Severity::Info,
        Severity::Warn,
        Severity::Error,
        Severity::Fatal,
    ];

    /// The range `number` (0–24) lies in.
    pub fn of_number(number: u8) -> Severity {
        match number {
            1..=4 => Severity::Trace,
            5..=8 => Severity::Debug,
            9..=12 => Severity::Info,
            13..=16 => Severity::Warn,
            17..=20 => Severity::Error,
            21.. => Severity::Fatal,
            0 => Severity::Unspecified,
        }
    }

    /// The first number of the range (0 for unspecified).
    pub fn min_number(self) -> u8 {
        match self {
            Severity::Unspecified => 0,
            Severity::Trace => 1,
            Severity::Debug => 5,
            Severity::Info => 9,
            Severity::Warn => 13,
            Severity::Error => 17,
            Severity::Fatal => 21,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unspecified => "UNSPECIFIED",
            Severity::Trace => "TRACE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }

    /// A severity by name, in any case, with the common spellings of logging libraries
    /// (`warning`, `critical`, `err`); `None` for anything else.
    pub fn parse(name: &str) -> Option<Severity> {
        if name.len() > 16 {
            return None;
        }
        Some(match name.to_ascii_uppercase().as_str() {
            "UNSPECIFIED" => Severity::Unspecified,
            "TRACE" => Severity::Trace,
            "DEBUG" => Severity::Debug,
            "INFO" | "INFORMATION" | "NOTICE" => Severity::Info,
            "WARN" | "WARNING" => Severity::Warn,
            "ERROR" | "ERR" => Severity::Error,
            "FATAL" | "CRITICAL" | "CRIT" | "ALERT" | "EMERGENCY" | "PANIC" => Severity::Fatal,
            _ => return None,
        })
    }

    /// A minimum severity a reader asked for: a name ([`Severity::parse`]) or a number 0–24.
    pub fn parse_min(text: &str) -> Option<u8> {
        match text.parse::<u8>() {
            Ok(n) => (i32::from(n) <= MAX_SEVERITY_NUMBER).then_some(n),
            Err(_) => Severity::parse(text).map(Severity::min_number),
        }
    }

    /// The severity number a record is treated as: its own when set, else the first of the
    /// range its severity text names (SDKs that only set the text still have their errors
    /// counted), else 0.
    pub fn effective_number(number: u8, text: &str) -> u8 {
        if number != 0 {
            return number;
        }
        Severity::parse(text.trim()).map_or(0, Severity::min_number)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kept log record. Text is cut to [`super::limits`]; ids are lower-case hex.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// The record's time, else its observed time, else its arrival; by redline's clock when
    /// the client's lies outside the accepted skew.
    pub time_unix_ns: u64,
    pub service: String,
    /// 0–24; see [`Severity::effective_number`].
    pub severity_number: u8,
    pub severity_text: String,
    pub body: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl LogRecord {
    pub fn severity(&self) -> Severity {
        Severity::of_number(self.severity_number)
    }

    /// The severity text to show: the record's own, else its range's name.
    pub fn severity_label(&self) -> &str {
        if self.severity_text.is_empty() {
            self.severity().as_str()
        } else {
            &self.severity_text
        }
    }

    pub fn time_ms(&self) -> i64 {
        (self.time_unix_ns / 1_000_000) as i64
    }
}

/// A converted record on its way to the aggregator: kept if it is WARN or above, or if its
/// trace is (or becomes) a kept one.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingLog {
    pub trace_id: Option<[u8; 16]>,
    pub record: LogRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fall_in_their_ranges() {
        assert_eq!(Severity::of_number(0), Severity::Unspecified);
        assert_eq!(Severity::of_number(4), Severity::Trace);
        assert_eq!(Severity::of_number(12), Severity::Info);
        assert_eq!(Severity::of_number(WARN_NUMBER), Severity::Warn);
        assert_eq!(Severity::of_number(ERROR_NUMBER), Severity::Error);
        assert_eq!(Severity::of_number(24), Severity::Fatal);
        for severity in Severity::ALL {
            assert_eq!(Severity::of_number(severity.min_number()), severity);
            assert_eq!(Severity::parse(severity.as_str()), Some(severity));
        }
    }

    #[test]
    fn text_stands_in_for_a_missing_number() {
        assert_eq!(Severity::effective_number(0, "warning"), WARN_NUMBER);
        assert_eq!(Severity::effective_number(0, " Error "), ERROR_NUMBER);
        assert_eq!(Severity::effective_number(9, "ERROR"), 9);
        assert_eq!(Severity::effective_number(0, "chatty"), 0);
        assert_eq!(Severity::parse(&"x".repeat(1 << 20)), None);
    }
}
