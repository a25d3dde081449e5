//! SQLite access: one writer connection (the "primary") and a pool of read-only connections (the
//! "replicas"). All SQL runs on tokio's blocking pool, never on the async workers. Reads go to
//! replicas except for a client that wrote within the read-your-writes window, which reads from
//! the primary. Every statement goes through [`Sql`], which makes the DB client span, records the
//! duration and counts statements (the N+1 test reads that count).

pub mod queries;
pub mod schema;
pub mod seed;

use crate::faults::Faults;
use crate::telemetry::Telemetry;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, Params, Row};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Pool = r2d2::Pool<SqliteConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error(transparent)]
    Password(#[from] crate::passwords::PasswordError),
}

/// Which connection set served a unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
    Replica,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        }
    }
}

/// Counters tests and the admin endpoint read.
#[derive(Debug, Default)]
pub struct DbCounters {
    pub statements: AtomicU64,
    pub primary_reads: AtomicU64,
    pub replica_reads: AtomicU64,
}

struct Inner {
    primary: Pool,
    replicas: Pool,
    counters: DbCounters,
    /// Clients that wrote recently; bounded and expiring, so outside input cannot grow it.
    recent_writers: moka::sync::Cache<String, ()>,
    faults: Arc<Faults>,
    telemetry: Arc<Telemetry>,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// Opens (creating if needed) the database, applies the schema and builds both pools.
    pub fn open(
        path: &Path,
        replicas: u32,
        read_your_writes: Duration,
        faults: Arc<Faults>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let primary_mgr = SqliteConnectionManager::file(path).with_init(|c| {
            c.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
                 PRAGMA foreign_keys=ON;",
            )
        });
        // One connection: SQLite has one writer at a time anyway; queueing here is cheaper
        // than busy-waiting on the database lock.
        let primary = r2d2::Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(10))
            .build(primary_mgr)?;
        schema::apply(&*primary.get()?)?;
        let replica_mgr = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;"));
        let replicas = r2d2::Pool::builder()
            .max_size(replicas.max(1))
            .connection_timeout(Duration::from_secs(10))
            .build(replica_mgr)?;
        let db = Db {
            inner: Arc::new(Inner {
                primary,
                replicas,
                counters: DbCounters::default(),
                recent_writers: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(read_your_writes.max(Duration::from_millis(1)))
                    .build(),
                faults,
                telemetry,
            }),
        };
        db.register_pool_metrics();
        Ok(db)
    }

    fn register_pool_metrics(&self) {
        if !self.inner.telemetry.metrics_enabled {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let _gauge = self
            .inner
            .telemetry
            .meter
            .i64_observable_gauge("db.client.connection.count")
            .with_unit("{connection}")
            .with_callback(move |obs| {
                let Some(inner) = weak.upgrade() else { return };
                for (name, pool) in [("primary", &inner.primary), ("replica", &inner.replicas)] {
                    let s = pool.state();
                    let pool_attr = KeyValue::new("db.client.connection.pool.name", name);
                    obs.observe(
                        i64::from(s.idle_connections),
                        &[
                            pool_attr.clone(),
                            KeyValue::new("db.client.connection.state", "idle"),
                        ],
                    );
                    obs.observe(
                        i64::from(s.connections - s.idle_connections),
                        &[
                            pool_attr,
                            KeyValue::new("db.client.connection.state", "used"),
                        ],
                    );
                }
            })
            .build();
    }

    pub fn counters(&self) -> &DbCounters {
        &self.inner.counters
    }

    /// Remembers that `client` just wrote, so its next reads see the write.
    pub fn mark_write(&self, client: &str) {
        self.inner.recent_writers.insert(client.to_string(), ());
    }

    /// Where a read for `client` goes.
    pub fn read_target(&self, client: Option<&str>) -> Target {
        match client {
            Some(c) if self.inner.recent_writers.contains_key(c) => Target::Primary,
            _ => Target::Replica,
        }
    }

    /// Runs read-only work on a replica (or the primary for a client that just wrote).
    pub async fn read<T, E, F>(&self, client: Option<&str>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        let target = self.read_target(client);
        let counter = match target {
            Target::Primary => &self.inner.counters.primary_reads,
            Target::Replica => &self.inner.counters.replica_reads,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.run(target, false, f).await
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the primary; rolls back on error.
    pub async fn write<T, E, F>(&self, client: Option<&str>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        let out = self.run(Target::Primary, true, f).await;
        if out.is_ok()
            && let Some(c) = client
        {
            self.mark_write(c);
        }
        out
    }

    async fn run<T, E, F>(&self, target: Target, tx: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        let cx = Context::current();
        let handle = tokio::task::spawn_blocking(move || {
            let pool = match target {
                Target::Primary => &inner.primary,
                Target::Replica => &inner.replicas,
            };
            let waited = Instant::now();
            let conn = pool.get().map_err(DbError::from)?;
            inner.telemetry.m.db_pool_wait.record(
                waited.elapsed().as_secs_f64(),
                &[KeyValue::new(
                    "db.client.connection.pool.name",
                    target.name(),
                )],
            );
            let extra = inner.faults.get().db_latency_ms;
            if extra > 0 {
                // Injected fault: a slow database. This is a blocking-pool thread, so sleeping
                // here is what a slow query would do.
                std::thread::sleep(Duration::from_millis(extra));
            }
            let sql = Sql {
                conn: &conn,
                inner: &inner,
                cx: &cx,
            };
            if !tx {
                return f(&sql);
            }
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(DbError::from)?;
            match f(&sql) {
                Ok(v) => {
                    conn.execute_batch("COMMIT").map_err(DbError::from)?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        });
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(E::from(DbError::Join(e.to_string()))),
        }
    }

    /// `EXPLAIN QUERY PLAN` of a statement, one detail line per row (tests prove index use).
    pub async fn explain(
        &self,
        stmt: String,
        params: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<String>, DbError> {
        self.read(None, move |sql: &Sql| {
            let mut st = sql.conn.prepare(&format!("EXPLAIN QUERY PLAN {stmt}"))?;
            let rows = st.query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// A connection lent to one unit of work; every statement through it is traced and counted.
pub struct Sql<'a> {
    conn: &'a Connection,
    inner: &'a Inner,
    cx: &'a Context,
}

impl Sql<'_> {
    fn traced<T>(
        &self,
        stmt: &str,
        run: impl FnOnce() -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.inner
            .counters
            .statements
            .fetch_add(1, Ordering::Relaxed);
        let (op, table) = summarize(stmt);
        let tel = &self.inner.telemetry;
        let cx = tel.child(self.cx, format!("{op} {table}"), SpanKind::Client, || {
            vec![
                KeyValue::new("db.system", "sqlite"),
                KeyValue::new("db.system.name", "sqlite"),
                KeyValue::new("db.operation.name", op.to_string()),
                KeyValue::new("db.collection.name", table.to_string()),
                KeyValue::new("db.query.text", stmt.to_string()),
            ]
        });
        let start = Instant::now();
        let out = run();
        tel.m.db_duration.record(
            start.elapsed().as_secs_f64(),
            &[
                KeyValue::new("db.system.name", "sqlite"),
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

    /// Runs a query and maps every row.
    pub fn query<T, P: Params>(
        &self,
        stmt: &str,
        params: P,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        self.traced(stmt, || {
            let mut st = self.conn.prepare_cached(stmt)?;
            let rows = st.query_map(params, map)?;
            rows.collect()
        })
    }

    /// Runs a query expected to return at most one row.
    pub fn query_opt<T, P: Params>(
        &self,
        stmt: &str,
        params: P,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Option<T>> {
        self.traced(stmt, || {
            let mut st = self.conn.prepare_cached(stmt)?;
            let mut rows = st.query(params)?;
            match rows.next()? {
                Some(r) => Ok(Some(map(r)?)),
                None => Ok(None),
            }
        })
    }

    /// Executes a statement and returns the number of changed rows.
    pub fn execute<P: Params>(&self, stmt: &str, params: P) -> rusqlite::Result<usize> {
        self.traced(stmt, || self.conn.prepare_cached(stmt)?.execute(params))
    }

    pub fn last_insert_rowid(&self) -> i64 {
        self.conn.last_insert_rowid()
    }
}

/// The statement's operation and main table, for span names (`SELECT products`).
fn summarize(stmt: &str) -> (&str, &str) {
    let mut words = stmt.split_whitespace();
    let op = words.next().unwrap_or("SQL");
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let key = match op.to_ascii_uppercase().as_str() {
        "INSERT" | "REPLACE" => "INTO",
        "UPDATE" => "UPDATE",
        _ => "FROM",
    };
    let table = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case(key))
        .and_then(|i| words.get(i + 1))
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
        .filter(|t| !t.is_empty())
        .unwrap_or("?");
    (op, table)
}

#[cfg(test)]
mod tests {
    #[test]
    fn summarize_names_operation_and_table() {
        assert_eq!(
            super::summarize("SELECT id FROM products WHERE id = ?"),
            ("SELECT", "products")
        );
        assert_eq!(
            super::summarize("INSERT INTO reviews (a) VALUES (?)"),
            ("INSERT", "reviews")
        );
        assert_eq!(
            super::summarize("UPDATE products SET x = 1"),
            ("UPDATE", "products")
        );
    }
}
