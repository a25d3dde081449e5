//! The read model's log reads: kept records by filter (stored, or still waiting for the
//! writer), and how many records each severity had over a range (every record received,
//! from the counts kept as [`LOG_RECORDS_METRIC`]).

use super::*;
use crate::model::log_record::{LOG_RECORDS_METRIC, LogRecord, SEVERITY_ATTRIBUTE, Severity};
use crate::store::logs as stored_logs;
use crate::vocab::LogFilter;

impl Query {
    /// Kept log records matching `filter`, newest first: stored ones plus those kept but not
    /// yet flushed, so a record is listed as soon as its export is acknowledged.
    pub async fn logs(&self, filter: LogFilter) -> Result<Vec<LogRecord>, StoreError> {
        let parts = self.live.unflushed(filter.service.as_deref());
        let read_filter = filter.clone();
        let stored = self
            .readers
            .run(move |conn| stored_logs::logs(conn, &read_filter))
            .await?;
        let mut rows = stored.rows;
        for (seq, batch) in parts {
            if seq <= stored.flushed_seq {
                continue;
            }
            rows.extend(
                batch
                    .logs
                    .iter()
                    .filter(|record| log_matches(record, &filter))
                    .cloned(),
            );
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.time_unix_ns));
        rows.truncate(filter.limit);
        Ok(rows)
    }

    /// Records `service` sent per severity over `range`, kept or not; severities without
    /// records are left out.
    pub async fn log_counts(
        &self,
        service: &str,
        range: TimeRange,
    ) -> Result<Vec<(Severity, u64)>, StoreError> {
        let groups = self
            .metric_window(
                service,
                LOG_RECORDS_METRIC,
                &BTreeMap::new(),
                &[SEVERITY_ATTRIBUTE.to_string()],
                range,
            )
            .await?;
        let mut counts: BTreeMap<Severity, u64> = BTreeMap::new();
        for (_, attributes, agg) in groups {
            let severity = attributes
                .get(SEVERITY_ATTRIBUTE)
                .and_then(|s| Severity::parse(s))
                .unwrap_or(Severity::Unspecified);
            *counts.entry(severity).or_default() += agg.sum.max(0.0).round() as u64;
        }
        Ok(counts.into_iter().filter(|(_, n)| *n > 0).collect())
    }
}

/// Whether a record not yet stored matches `filter`, as the store's read decides.
fn log_matches(record: &LogRecord, filter: &LogFilter) -> bool {
    let time_ns = i128::from(record.time_unix_ns);
    let ns = |ms: i64| i128::from(ms) * 1_000_000;
    time_ns >= ns(filter.from_ms)
        && time_ns < ns(filter.to_ms)
        && record.severity_number >= filter.min_severity
        && filter.service.as_ref().is_none_or(|s| *s == record.service)
        && filter
            .trace_id
            .as_ref()
            .is_none_or(|t| record.trace_id.as_ref() == Some(t))
        && filter.trace_ids.as_ref().is_none_or(|ids| {
            record
                .trace_id
                .as_ref()
                .is_some_and(|t| ids.iter().any(|id| id == t))
        })
        && filter.text.as_ref().is_none_or(|text| {
            record
                .body
                .to_ascii_lowercase()
                .contains(&text.to_ascii_lowercase())
        })
}
