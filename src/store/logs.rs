//! Kept log records in SQLite: writing them (from the writer's transaction), their retention by
//! age and by stored bytes, and reading them by filter, newest first. A record's `bytes` is
//! what it weighs against `log_max_bytes`; the running total lives in `meta` (`log_bytes`), so
//! retention does not sum the table.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter, types::Value};

use crate::model::log_record::LogRecord;
use crate::store::StoreError;
use crate::store::codec;
use crate::store::read::{flushed_seq, unreadable};
use crate::vocab::LogFilter;

/// What a stored record weighs: its text plus a row's overhead.
fn stored_bytes(record: &LogRecord, attributes: &str) -> i64 {
    (64 + record.service.len()
        + record.severity_text.len()
        + record.body.len()
        + record.trace_id.as_ref().map_or(0, String::len)
        + record.span_id.as_ref().map_or(0, String::len)
        + attributes.len()) as i64
}

/// Inserts one record and adds its weight to the running total.
pub(super) fn insert_log(conn: &Connection, record: &LogRecord) -> Result<(), StoreError> {
    let attributes = codec::json(&record.attributes)?;
    let bytes = stored_bytes(record, &attributes);
    conn.prepare_cached(
        "INSERT INTO logs (time_ns, service, severity_number, severity_text, body, trace_id,
           span_id, attributes, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        i64::try_from(record.time_unix_ns).unwrap_or(i64::MAX),
        record.service,
        record.severity_number,
        record.severity_text,
        record.body,
        record.trace_id,
        record.span_id,
        attributes,
        bytes,
    ])?;
    conn.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'log_bytes'")?
        .execute(params![bytes])?;
    Ok(())
}

/// Deletes records older than `cutoff_ns`, then the oldest until at most `max_bytes` remain.
pub(super) fn apply_log_retention(
    conn: &Connection,
    cutoff_ns: i64,
    max_bytes: u64,
) -> Result<(), StoreError> {
    delete_before(conn, cutoff_ns)?;
    let total: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'log_bytes'",
        [],
        |row| row.get(0),
    )?;
    let excess = total.saturating_sub(i64::try_from(max_bytes).unwrap_or(i64::MAX));
    if excess <= 0 {
        return Ok(());
    }
    // The time at which the oldest records weigh `excess`.
    let cutoff: Option<i64> = conn
        .query_row(
            "SELECT time_ns FROM (
               SELECT time_ns, sum(bytes) OVER (ORDER BY time_ns, id) AS running FROM logs
             ) WHERE running >= ?1 LIMIT 1",
            params![excess],
            |row| row.get(0),
        )
        .optional()?;
    match cutoff {
        Some(cutoff) => delete_before(conn, cutoff.saturating_add(1)),
        // The running total drifted above the table (it cannot, but must not stick): recount.
        None => {
            conn.execute(
                "UPDATE meta SET value = (SELECT total(bytes) FROM logs) WHERE key = 'log_bytes'",
                [],
            )?;
            Ok(())
        }
    }
}

fn delete_before(conn: &Connection, cutoff_ns: i64) -> Result<(), StoreError> {
    let deleted: i64 = conn.query_row(
        "SELECT total(bytes) FROM logs WHERE time_ns < ?1",
        params![cutoff_ns],
        |row| row.get::<_, f64>(0).map(|b| b as i64),
    )?;
    if deleted > 0 {
        conn.execute("DELETE FROM logs WHERE time_ns < ?1", params![cutoff_ns])?;
        conn.execute(
            "UPDATE meta SET value = max(0, value - ?1) WHERE key = 'log_bytes'",
            params![deleted],
        )?;
    }
    Ok(())
}

/// Stored records matching a filter, newest first, and the flush they were read at.
pub struct LogRows {
    pub rows: Vec<LogRecord>,
    pub flushed_seq: u64,
}

/// Stored records matching `filter`, newest first, at most `filter.limit`.
pub fn logs(conn: &mut Connection, filter: &LogFilter) -> Result<LogRows, StoreError> {
    let tx = conn.transaction()?;
    let rows = matching(&tx, filter)?;
    let flushed_seq = flushed_seq(&tx)?;
    tx.finish()?;
    Ok(LogRows { rows, flushed_seq })
}

fn matching(conn: &Connection, filter: &LogFilter) -> Result<Vec<LogRecord>, StoreError> {
    let mut sql = String::from(
        "SELECT time_ns, service, severity_number, severity_text, body, trace_id, span_id,
                attributes
         FROM logs WHERE time_ns >= ?1 AND time_ns < ?2 AND severity_number >= ?3",
    );
    let ns = |ms: i64| ms.saturating_mul(1_000_000);
    let mut values: Vec<Value> = vec![
        ns(filter.from_ms).into(),
        ns(filter.to_ms).into(),
        i64::from(filter.min_severity).into(),
    ];
    let mut add = |sql: &mut String, clause: &str, value: Value| {
        values.push(value);
        sql.push_str(&clause.replace("?#", &format!("?{}", values.len())));
    };
    if let Some(service) = &filter.service {
        add(&mut sql, " AND service = ?#", service.clone().into());
    }
    if let Some(trace_id) = &filter.trace_id {
        add(&mut sql, " AND trace_id = ?#", trace_id.clone().into());
    }
    if let Some(trace_ids) = &filter.trace_ids {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(" AND trace_id IN (");
        for (i, id) in trace_ids.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            add(&mut sql, "?#", id.clone().into());
        }
        sql.push(')');
    }
    if let Some(text) = &filter.text {
        add(
            &mut sql,
            " AND instr(lower(body), ?#) > 0",
            text.to_ascii_lowercase().into(),
        );
    }
    add(
        &mut sql,
        " ORDER BY time_ns DESC, id DESC LIMIT ?#",
        (filter.limit as i64).into(),
    );
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        match log_record(row) {
            Ok(record) => out.push(record),
            Err(e) => unreadable("logs", &e),
        }
    }
    Ok(out)
}

fn log_record(row: &Row<'_>) -> Result<LogRecord, StoreError> {
    let attributes: String = row.get(7)?;
    let severity: i64 = row.get(2)?;
    Ok(LogRecord {
        time_unix_ns: row.get::<_, i64>(0)?.max(0) as u64,
        service: row.get(1)?,
        severity_number: u8::try_from(severity)
            .ok()
            .filter(|n| *n <= 24)
            .ok_or_else(|| StoreError::Corrupt(format!("severity number {severity}")))?,
        severity_text: row.get(3)?,
        body: row.get(4)?,
        trace_id: row.get(5)?,
        span_id: row.get(6)?,
        attributes: serde_json::from_str::<BTreeMap<String, String>>(&attributes)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::migrate;

    fn record(time_ms: i64, severity_number: u8, body: &str) -> LogRecord {
        LogRecord {
            time_unix_ns: time_ms as u64 * 1_000_000,
            service: "api".into(),
            severity_number,
            severity_text: String::new(),
            body: body.into(),
            trace_id: Some("ab".repeat(16)),
            span_id: None,
            attributes: BTreeMap::from([("k".to_string(), "v".to_string())]),
        }
    }

    fn filter() -> LogFilter {
        LogFilter {
            from_ms: 0,
            to_ms: 1_000_000,
            limit: 100,
            ..LogFilter::default()
        }
    }

    #[test]
    fn records_are_filtered_newest_first_and_weigh_against_their_cap() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for (t, severity, body) in [
            (1_000, 17, "disk FULL"),
            (2_000, 13, "slow disk"),
            (3_000, 9, "all fine"),
        ] {
            insert_log(&conn, &record(t, severity, body)).unwrap();
        }
        let bodies = |f: &LogFilter, conn: &mut Connection| -> Vec<String> {
            logs(conn, f)
                .unwrap()
                .rows
                .into_iter()
                .map(|r| r.body)
                .collect()
        };
        assert_eq!(
            bodies(&filter(), &mut conn),
            ["all fine", "slow disk", "disk FULL"]
        );
        let warn = LogFilter {
            min_severity: 13,
            text: Some("Disk".into()),
            ..filter()
        };
        assert_eq!(bodies(&warn, &mut conn), ["slow disk", "disk FULL"]);
        let none = LogFilter {
            trace_ids: Some(Vec::new()),
            ..filter()
        };
        assert!(bodies(&none, &mut conn).is_empty());
        // A cap of one record's weight keeps only the newest.
        let one = stored_bytes(&record(0, 9, "all fine"), r#"{"k":"v"}"#);
        apply_log_retention(&conn, 0, one as u64).unwrap();
        assert_eq!(bodies(&filter(), &mut conn), ["all fine"]);
        apply_log_retention(&conn, 3_000_000_001, u64::MAX).unwrap();
        assert!(bodies(&filter(), &mut conn).is_empty());
        let total: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'log_bytes'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(total, 0);
    }
}
