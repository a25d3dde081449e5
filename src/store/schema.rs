//! The database schema as numbered migrations, applied in order and recorded in
//! `PRAGMA user_version`, so any older file is brought up to date at open.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`. Never edit a shipped one:
/// append a new migration.
const MIGRATIONS: &[&str] = &[
    // 1: RED windows at three resolutions, metric windows, sampled traces.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('flushed_seq', 0);

    CREATE TABLE endpoints (
        id INTEGER PRIMARY KEY,
        service TEXT NOT NULL,
        source INTEGER NOT NULL,
        method TEXT NOT NULL,
        route TEXT NOT NULL,
        UNIQUE (service, source, method, route)
    );

    CREATE TABLE red_10s (
        endpoint_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        status BLOB NOT NULL,
        sum_ms REAL NOT NULL,
        min_ms REAL,
        max_ms REAL,
        sketch BLOB,
        sketch_from_buckets INTEGER NOT NULL,
        explicit TEXT,
        PRIMARY KEY (endpoint_id, start_ms)
    ) WITHOUT ROWID;
    CREATE INDEX red_10s_start ON red_10s (start_ms);
    CREATE TABLE red_1m AS SELECT * FROM red_10s WHERE 0;
    CREATE TABLE red_1h AS SELECT * FROM red_10s WHERE 0;
    CREATE UNIQUE INDEX red_1m_key ON red_1m (endpoint_id, start_ms);
    CREATE INDEX red_1m_start ON red_1m (start_ms);
    CREATE UNIQUE INDEX red_1h_key ON red_1h (endpoint_id, start_ms);
    CREATE INDEX red_1h_start ON red_1h (start_ms);

    CREATE TABLE metric_series (
        id INTEGER PRIMARY KEY,
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        attributes TEXT NOT NULL,
        kind TEXT NOT NULL,
        unit TEXT NOT NULL,
        description TEXT NOT NULL,
        UNIQUE (service, name, attributes)
    );
    CREATE TABLE metric_10s (
        series_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        agg TEXT NOT NULL,
        PRIMARY KEY (series_id, start_ms)
    ) WITHOUT ROWID;
    CREATE INDEX metric_10s_start ON metric_10s (start_ms);
    CREATE TABLE metric_1m AS SELECT * FROM metric_10s WHERE 0;
    CREATE TABLE metric_1h AS SELECT * FROM metric_10s WHERE 0;
    CREATE UNIQUE INDEX metric_1m_key ON metric_1m (series_id, start_ms);
    CREATE INDEX metric_1m_start ON metric_1m (start_ms);
    CREATE UNIQUE INDEX metric_1h_key ON metric_1h (series_id, start_ms);
    CREATE INDEX metric_1h_start ON metric_1h (start_ms);

    CREATE TABLE traces (
        trace_id TEXT PRIMARY KEY,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        service TEXT,
        method TEXT,
        route TEXT,
        root_name TEXT,
        error INTEGER NOT NULL,
        span_count INTEGER NOT NULL,
        reason TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX traces_start ON traces (start_ns);
    CREATE INDEX traces_service_start ON traces (service, start_ns);

    CREATE TABLE spans (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        status TEXT NOT NULL,
        status_message TEXT NOT NULL,
        attributes TEXT NOT NULL,
        events TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID;
    "#,
    // 2: alerting — rule state, transition history, notification log, silences, e-mail outbox.
    r#"
    CREATE TABLE alert_state (
        alert_key TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        state TEXT NOT NULL,
        active_at_ms INTEGER NOT NULL,
        fired_at_ms INTEGER,
        resolved_at_ms INTEGER,
        keep_firing_since_ms INTEGER,
        value REAL,
        annotations TEXT NOT NULL,
        last_eval_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE alert_history (
        id INTEGER PRIMARY KEY,
        alert_key TEXT NOT NULL,
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        value REAL,
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX alert_history_at ON alert_history (at_ms);
    CREATE INDEX alert_history_rule ON alert_history (rule, at_ms);

    CREATE TABLE notification_log (
        group_key TEXT PRIMARY KEY,
        receiver TEXT NOT NULL,
        firing_hash TEXT NOT NULL,
        resolved_hash TEXT NOT NULL,
        last_sent_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at_ms INTEGER NOT NULL,
        ends_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        group_key TEXT NOT NULL,
        receiver TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        message BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT,
        sent_ms INTEGER
    );
    CREATE INDEX outbox_due ON outbox (status, next_attempt_ms);
    "#,
    // 3: the rollup tables clustered by their key, like the 10 s ones. Migration 1 made them
    // rowid tables with a unique index, so every read of a window (and the writer's
    // read-merge-write of each rollup row) was an index step plus a table seek; clustered,
    // an endpoint's windows of a range are one seek and a sequential scan. Rows are copied in
    // key order (the unique index gives it), so the copy appends.
    r#"
    CREATE TABLE red_1m_new (
        endpoint_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        status BLOB NOT NULL,
        sum_ms REAL NOT NULL,
        min_ms REAL,
        max_ms REAL,
        sketch BLOB,
        sketch_from_buckets INTEGER NOT NULL,
        explicit TEXT,
        PRIMARY KEY (endpoint_id, start_ms)
    ) WITHOUT ROWID;
    INSERT INTO red_1m_new SELECT endpoint_id, start_ms, requests, errors, status, sum_ms, min_ms,
        max_ms, sketch, sketch_from_buckets, explicit FROM red_1m ORDER BY endpoint_id, start_ms;
    DROP TABLE red_1m;
    ALTER TABLE red_1m_new RENAME TO red_1m;
    CREATE INDEX red_1m_start ON red_1m (start_ms);

    CREATE TABLE red_1h_new (
        endpoint_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        status BLOB NOT NULL,
        sum_ms REAL NOT NULL,
        min_ms REAL,
        max_ms REAL,
        sketch BLOB,
        sketch_from_buckets INTEGER NOT NULL,
        explicit TEXT,
        PRIMARY KEY (endpoint_id, start_ms)
    ) WITHOUT ROWID;
    INSERT INTO red_1h_new SELECT endpoint_id, start_ms, requests, errors, status, sum_ms, min_ms,
        max_ms, sketch, sketch_from_buckets, explicit FROM red_1h ORDER BY endpoint_id, start_ms;
    DROP TABLE red_1h;
    ALTER TABLE red_1h_new RENAME TO red_1h;
    CREATE INDEX red_1h_start ON red_1h (start_ms);

    CREATE TABLE metric_1m_new (
        series_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        agg TEXT NOT NULL,
        PRIMARY KEY (series_id, start_ms)
    ) WITHOUT ROWID;
    INSERT INTO metric_1m_new SELECT series_id, start_ms, agg FROM metric_1m
        ORDER BY series_id, start_ms;
    DROP TABLE metric_1m;
    ALTER TABLE metric_1m_new RENAME TO metric_1m;
    CREATE INDEX metric_1m_start ON metric_1m (start_ms);

    CREATE TABLE metric_1h_new (
        series_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        agg TEXT NOT NULL,
        PRIMARY KEY (series_id, start_ms)
    ) WITHOUT ROWID;
    INSERT INTO metric_1h_new SELECT series_id, start_ms, agg FROM metric_1h
        ORDER BY series_id, start_ms;
    DROP TABLE metric_1h;
    ALTER TABLE metric_1h_new RENAME TO metric_1h;
    CREATE INDEX metric_1h_start ON metric_1h (start_ms);
    "#,
    // 4: a 10-minute RED rollup tier, so a read of per-endpoint totals over an hour takes ~20
    // rows per endpoint instead of ~66. It is not back-filled (that needs the sketches merged);
    // instead `red_10m_from` records the first 10-minute window that holds everything: the
    // boundary after the newest window stored when the tier was created (0 for a new file).
    // Reads use the tier only from there on.
    r#"
    CREATE TABLE red_10m (
        endpoint_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        status BLOB NOT NULL,
        sum_ms REAL NOT NULL,
        min_ms REAL,
        max_ms REAL,
        sketch BLOB,
        sketch_from_buckets INTEGER NOT NULL,
        explicit TEXT,
        PRIMARY KEY (endpoint_id, start_ms)
    ) WITHOUT ROWID;
    CREATE INDEX red_10m_start ON red_10m (start_ms);
    INSERT INTO meta (key, value)
        SELECT 'red_10m_from', coalesce((max(start_ms) / 600000 + 1) * 600000, 0)
        FROM (SELECT max(start_ms) AS start_ms FROM red_10s
              UNION ALL SELECT max(start_ms) FROM red_1m
              UNION ALL SELECT max(start_ms) FROM red_1h);
    "#,
    // 5: kept log records, and their running weight for the byte cap.
    r#"
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        time_ns INTEGER NOT NULL,
        service TEXT NOT NULL,
        severity_number INTEGER NOT NULL,
        severity_text TEXT NOT NULL,
        body TEXT NOT NULL,
        trace_id TEXT,
        span_id TEXT,
        attributes TEXT NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE INDEX logs_time ON logs (time_ns);
    CREATE INDEX logs_service_time ON logs (service, time_ns);
    CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id IS NOT NULL;
    INSERT INTO meta (key, value) VALUES ('log_bytes', 0);
    "#,
];

pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Applies every migration the file has not seen, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, latest_version());
        let seq: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'flushed_seq'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 0);
    }

    #[test]
    fn rollup_tables_keep_their_rows_when_clustered() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A file at version 2, with rows in the old rowid rollup tables.
        for (index, sql) in MIGRATIONS.iter().take(2).enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", index as i64 + 1)
                .unwrap();
        }
        for table in ["red_1m", "red_1h"] {
            conn.execute(
                &format!(
                    "INSERT INTO {table} VALUES (7, 60000, 3, 1, x'00', 1.5, 0.5, 1.0, x'01', 0, NULL)"
                ),
                [],
            )
            .unwrap();
        }
        conn.execute("INSERT INTO metric_1m VALUES (4, 60000, '{}')", [])
            .unwrap();
        migrate(&mut conn).unwrap();
        for table in ["red_1m", "red_1h"] {
            let row: (i64, i64, i64, f64) = conn
                .query_row(
                    &format!("SELECT endpoint_id, start_ms, requests, sum_ms FROM {table}"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
            assert_eq!(row, (7, 60000, 3, 1.5));
            // Clustered: the same key twice is refused, like the old unique index did.
            assert!(
                conn.execute(
                    &format!(
                        "INSERT INTO {table} VALUES (7, 60000, 1, 0, x'00', 1, NULL, NULL, NULL, 0, NULL)"
                    ),
                    [],
                )
                .is_err()
            );
        }
        let agg: String = conn
            .query_row("SELECT agg FROM metric_1m WHERE series_id = 4", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(agg, "{}");
        // The 10-minute tier starts after the newest stored window (at 60000 here).
        let from: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'red_10m_from'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(from, 600_000);
    }

    #[test]
    fn a_new_file_has_the_ten_minute_tier_from_the_start() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let from: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'red_10m_from'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(from, 0);
    }
}
