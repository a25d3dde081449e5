//! [`Sql`]: a connection of either backend lent to one unit of work on a blocking-pool thread.
//! Every statement through it is counted, timed and traced as a DB client span named after
//! the semantic conventions (`SELECT reviews`: operation plus collection).

use super::value::{DbRow, SqlValue, to_postgres_placeholders};
use super::{DbCounters, DbError};
use crate::telemetry::Telemetry;
use deadpool_postgres::tokio_postgres::types::ToSql as PgToSql;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use std::time::Instant;

/// The connection behind a [`Sql`].
pub(super) enum Conn<'a> {
    Sqlite(&'a rusqlite::Connection),
    /// An async client driven from this blocking thread through the runtime's handle (the
    /// connection's own task runs on the async workers).
    Postgres {
        client: &'a deadpool_postgres::Client,
        rt: &'a tokio::runtime::Handle,
    },
}

/// Where statements run, for span attributes.
pub(super) struct Place<'a> {
    pub system: &'static str,
    pub namespace: &'a str,
    pub server: Option<(&'a str, u16)>,
}

/// A connection lent to one unit of work; every statement through it is traced and counted.
pub struct Sql<'a> {
    pub(super) conn: Conn<'a>,
    pub(super) place: Place<'a>,
    pub(super) counters: &'a DbCounters,
    pub(super) telemetry: &'a Telemetry,
    pub(super) cx: &'a Context,
}

impl Sql<'_> {
    fn traced<T>(
        &self,
        stmt: &str,
        run: impl FnOnce() -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.counters
            .statements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (op, table) = summarize(stmt);
        let name = match table {
            Some(t) => format!("{op} {t}"),
            None => op.to_string(),
        };
        let place = &self.place;
        let cx = self.telemetry.child(self.cx, name, SpanKind::Client, || {
            let mut a = vec![
                // The attribute's name before the conventions' 1.30; dashboards use both.
                KeyValue::new("db.system", place.system),
                KeyValue::new("db.system.name", place.system),
                KeyValue::new("db.namespace", place.namespace.to_string()),
                KeyValue::new("db.operation.name", op.to_string()),
                KeyValue::new("db.query.text", stmt.to_string()),
            ];
            if let Some(t) = table {
                a.push(KeyValue::new("db.collection.name", t.to_string()));
            }
            if let Some((host, port)) = place.server {
                a.push(KeyValue::new("server.address", host.to_string()));
                a.push(KeyValue::new("server.port", i64::from(port)));
            }
            a
        });
        let start = Instant::now();
        let out = run();
        self.telemetry.m.db_duration.record(
            start.elapsed().as_secs_f64(),
            &[
                KeyValue::new("db.system.name", place.system),
                KeyValue::new("db.operation.name", op.to_string()),
            ],
        );
        let span = cx.span();
        if let Err(e) = &out {
            span.set_status(opentelemetry::trace::Status::error(e.to_string()));
        }
        span.end();
        out
    }

    /// Runs a query and returns every row.
    pub fn query(&self, stmt: &str, params: &[SqlValue]) -> Result<Vec<DbRow>, DbError> {
        self.traced(stmt, || match &self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(stmt)?;
                let n = st.column_count();
                let rows = st.query_map(rusqlite::params_from_iter(params), |r| {
                    DbRow::from_sqlite(r, n)
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            }
            Conn::Postgres { client, rt } => rt.block_on(async {
                let st = client
                    .prepare_cached(&to_postgres_placeholders(stmt))
                    .await?;
                let refs: Vec<&(dyn PgToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
                client
                    .query(&st, &refs)
                    .await?
                    .iter()
                    .map(DbRow::from_postgres)
                    .collect()
            }),
        })
    }

    /// Runs a query expected to return at most one row.
    pub fn query_opt(&self, stmt: &str, params: &[SqlValue]) -> Result<Option<DbRow>, DbError> {
        Ok(self.query(stmt, params)?.into_iter().next())
    }

    /// Executes a statement and returns the number of changed rows.
    pub fn execute(&self, stmt: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        self.traced(stmt, || match &self.conn {
            Conn::Sqlite(c) => {
                Ok(c.prepare_cached(stmt)?
                    .execute(rusqlite::params_from_iter(params))? as u64)
            }
            Conn::Postgres { client, rt } => rt.block_on(async {
                let st = client
                    .prepare_cached(&to_postgres_placeholders(stmt))
                    .await?;
                let refs: Vec<&(dyn PgToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn PgToSql + Sync)).collect();
                Ok(client.execute(&st, &refs).await?)
            }),
        })
    }

    fn batch(&self, stmt: &str) -> Result<(), DbError> {
        match &self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(stmt)?),
            Conn::Postgres { client, rt } => Ok(rt.block_on(client.batch_execute(stmt))?),
        }
    }

    /// Runs `f` in one transaction; rolls back on error. Writers take turns on both backends
    /// (SQLite's `BEGIN IMMEDIATE`; a transaction-level advisory lock on PostgreSQL), so a
    /// route's read-check-write unit (If-Match versions, idempotency claims) sees no
    /// concurrent writer.
    pub(super) fn in_transaction<T, E>(&self, f: impl FnOnce(&Sql) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let begin = match self.conn {
            Conn::Sqlite(_) => "BEGIN IMMEDIATE",
            Conn::Postgres { .. } => "BEGIN; SELECT pg_advisory_xact_lock(17)",
        };
        self.batch(begin)?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The statement's operation and main table, for span names (`SELECT products`): the first
/// name after the keyword, past subqueries. Statements without a table (`SELECT 1`) are named
/// by their operation alone.
fn summarize(stmt: &str) -> (&str, Option<&str>) {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let op = words.first().copied().unwrap_or("SQL");
    let key = match op.to_ascii_uppercase().as_str() {
        "INSERT" | "REPLACE" => "INTO",
        "UPDATE" => return (op, words.get(1).copied().and_then(table_name)),
        _ => "FROM",
    };
    let table = words
        .windows(2)
        .filter(|w| w[0].eq_ignore_ascii_case(key))
        .find_map(|w| table_name(w[1]));
    (op, table)
}

fn table_name(word: &str) -> Option<&str> {
    let t = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
    (!t.is_empty() && t.starts_with(|c: char| c.is_ascii_alphabetic())).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn summarize_names_operation_and_table() {
        assert_eq!(
            summarize("SELECT id FROM products WHERE id = ?"),
            ("SELECT", Some("products"))
        );
        assert_eq!(
            summarize("INSERT INTO reviews (a) VALUES (?)"),
            ("INSERT", Some("reviews"))
        );
        assert_eq!(
            summarize("UPDATE products SET x = 1"),
            ("UPDATE", Some("products"))
        );
        assert_eq!(
            summarize("SELECT a FROM (\n SELECT a, ROW_NUMBER() OVER () FROM reviews) AS r"),
            ("SELECT", Some("reviews"))
        );
        assert_eq!(summarize("SELECT 1"), ("SELECT", None));
    }
}
