//! Database access over two backends with one interface: the embedded SQLite file (the
//! default: one writer connection, the "primary", and a pool of read-only connections, the
//! "replicas") or a real PostgreSQL primary with streaming hot standbys ([`postgres`],
//! [`replicas`]). Routes hand a closure over [`Sql`] to [`Db::read`] or [`Db::write`]; it runs
//! on tokio's blocking pool, never on the async workers. Reads go to a replica except for a
//! client that wrote within the read-your-writes window, which reads from the primary. Every
//! statement goes through [`Sql`], which makes the DB client span, records the duration and
//! counts statements (the N+1 test reads that count).

pub mod pgcluster;
pub mod postgres;
pub mod queries;
pub mod replicas;
pub mod schema;
pub mod seed;
mod sql;
pub mod value;

use crate::faults::Faults;
use crate::telemetry::Telemetry;
use opentelemetry::{Context, KeyValue};
use postgres::PgBackend;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::OpenFlags;
pub use sql::Sql;
use sql::{Conn, Place};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
pub use value::{DbRow, SqlValue};

type Pool = r2d2::Pool<SqliteConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("postgresql: {0}")]
    Postgres(#[from] deadpool_postgres::tokio_postgres::Error),
    #[error("postgresql connection pool: {0}")]
    PgPool(#[from] deadpool_postgres::PoolError),
    #[error("postgresql pool settings: {0}")]
    PgBuild(#[from] deadpool_postgres::BuildError),
    #[error("column {0}: {1}")]
    Column(usize, &'static str),
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

/// Counters tests and the admin endpoint read.
#[derive(Debug, Default)]
pub struct DbCounters {
    pub statements: AtomicU64,
    pub primary_reads: AtomicU64,
    pub replica_reads: AtomicU64,
}

enum Backend {
    Sqlite { primary: Pool, replicas: Pool },
    Postgres(Box<PgBackend>),
}

struct Inner {
    backend: Backend,
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

fn recent_writers(read_your_writes: Duration) -> moka::sync::Cache<String, ()> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(read_your_writes.max(Duration::from_millis(1)))
        .build()
}

impl Db {
    /// Opens (creating if needed) the SQLite database, applies the schema and builds both pools.
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
                backend: Backend::Sqlite { primary, replicas },
                counters: DbCounters::default(),
                recent_writers: recent_writers(read_your_writes),
                faults,
                telemetry,
            }),
        };
        db.register_pool_metrics();
        Ok(db)
    }

    /// Connects to a PostgreSQL primary and its hot standbys, applies the schema on the
    /// primary and starts watching the standbys' lag.
    pub async fn open_postgres(
        settings: &postgres::PgSettings,
        read_your_writes: Duration,
        faults: Arc<Faults>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Db, DbError> {
        let backend = PgBackend::connect(settings, &telemetry).await?;
        let db = Db {
            inner: Arc::new(Inner {
                backend: Backend::Postgres(Box::new(backend)),
                counters: DbCounters::default(),
                recent_writers: recent_writers(read_your_writes),
                faults,
                telemetry,
            }),
        };
        db.register_pool_metrics();
        if let Backend::Postgres(pg) = &db.inner.backend {
            pg.replicas
                .spawn_monitor(pg.primary_config.clone(), &db.inner.telemetry);
        }
        Ok(db)
    }

    /// The PostgreSQL standbys, when this is the PostgreSQL mode.
    pub fn replica_set(&self) -> Option<&replicas::ReplicaSet> {
        match &self.inner.backend {
            Backend::Postgres(pg) => Some(&pg.replicas),
            Backend::Sqlite { .. } => None,
        }
    }

    /// `postgresql` or `sqlite`, as `db.system.name` says it.
    pub fn system_name(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Postgres(_) => "postgresql",
            Backend::Sqlite { .. } => "sqlite",
        }
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
                let report = |name: &str, idle: i64, used: i64| {
                    let pool_attr =
                        KeyValue::new("db.client.connection.pool.name", name.to_string());
                    obs.observe(
                        idle,
                        &[
                            pool_attr.clone(),
                            KeyValue::new("db.client.connection.state", "idle"),
                        ],
                    );
                    obs.observe(
                        used,
                        &[
                            pool_attr,
                            KeyValue::new("db.client.connection.state", "used"),
                        ],
                    );
                };
                match &inner.backend {
                    Backend::Sqlite { primary, replicas } => {
                        for (name, pool) in [("primary", primary), ("replica", replicas)] {
                            let s = pool.state();
                            report(
                                name,
                                i64::from(s.idle_connections),
                                i64::from(s.connections - s.idle_connections),
                            );
                        }
                    }
                    Backend::Postgres(pg) => {
                        for (name, pool) in pg.pools() {
                            let s = pool.status();
                            let idle = s.available as i64;
                            report(name, idle, s.size as i64 - idle);
                        }
                    }
                }
            })
            .build();
        if let Backend::Postgres(_) = &self.inner.backend {
            postgres::register_pool_limits(&self.inner.telemetry, Arc::downgrade(&self.inner));
        }
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

    /// Runs read-only work on a replica (or the primary for a client that just wrote, or when
    /// no standby is in rotation).
    pub async fn read<T, E, F>(&self, client: Option<&str>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        let target = self.read_target(client);
        self.run(target, false, f).await
    }

    /// Runs read-only work on the primary, for an answer a standby may not have yet.
    pub async fn read_primary<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        self.run(Target::Primary, false, f).await
    }

    /// Runs `f` in one transaction on the primary; rolls back on error.
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

    fn count_read(&self, primary: bool) {
        let c = &self.inner.counters;
        let counter = if primary {
            &c.primary_reads
        } else {
            &c.replica_reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn record_wait(&self, pool: &str, waited: Instant) {
        self.inner.telemetry.m.db_pool_wait.record(
            waited.elapsed().as_secs_f64(),
            &[KeyValue::new(
                "db.client.connection.pool.name",
                pool.to_string(),
            )],
        );
    }

    async fn run<T, E, F>(&self, target: Target, tx: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Sql) -> Result<T, E> + Send + 'static,
    {
        if let Backend::Postgres(pg) = &self.inner.backend {
            let waited = Instant::now();
            let lease = pg.acquire(target).await.map_err(E::from)?;
            self.record_wait(&lease.info.name, waited);
            if !tx {
                self.count_read(lease.primary);
            }
            let inner = self.inner.clone();
            let cx = Context::current();
            let rt = tokio::runtime::Handle::current();
            let handle = tokio::task::spawn_blocking(move || {
                inner.injected_latency();
                let sql = Sql {
                    conn: Conn::Postgres {
                        client: &lease.client,
                        rt: &rt,
                    },
                    place: Place {
                        system: "postgresql",
                        namespace: &lease.info.namespace,
                        server: Some((&lease.info.host, lease.info.port)),
                    },
                    counters: &inner.counters,
                    telemetry: &inner.telemetry,
                    cx: &cx,
                };
                if tx { sql.in_transaction(f) } else { f(&sql) }
            });
            return match handle.await {
                Ok(r) => r,
                Err(e) => Err(E::from(DbError::Join(e.to_string()))),
            };
        }
        if !tx {
            self.count_read(target == Target::Primary);
        }
        let inner = self.inner.clone();
        let cx = Context::current();
        let db = self.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let Backend::Sqlite { primary, replicas } = &inner.backend else {
                unreachable!("the PostgreSQL backend returned above")
            };
            let (pool, name) = match target {
                Target::Primary => (primary, "primary"),
                Target::Replica => (replicas, "replica"),
            };
            let waited = Instant::now();
            let conn = pool.get().map_err(DbError::from)?;
            db.record_wait(name, waited);
            inner.injected_latency();
            let sql = Sql {
                conn: Conn::Sqlite(&conn),
                place: Place {
                    system: "sqlite",
                    namespace: "main",
                    server: None,
                },
                counters: &inner.counters,
                telemetry: &inner.telemetry,
                cx: &cx,
            };
            if tx { sql.in_transaction(f) } else { f(&sql) }
        });
        match handle.await {
            Ok(r) => r,
            Err(e) => Err(E::from(DbError::Join(e.to_string()))),
        }
    }

    /// The plan of a statement, one line per row (`EXPLAIN QUERY PLAN` details on SQLite,
    /// `EXPLAIN` on PostgreSQL): tests prove index use with it.
    pub async fn explain(
        &self,
        stmt: String,
        params: Vec<SqlValue>,
    ) -> Result<Vec<String>, DbError> {
        let pg = matches!(self.inner.backend, Backend::Postgres(_));
        self.read(None, move |sql: &Sql| {
            let (text, col) = if pg {
                (format!("EXPLAIN {stmt}"), 0)
            } else {
                (format!("EXPLAIN QUERY PLAN {stmt}"), 3)
            };
            sql.query(&text, &params)?
                .iter()
                .map(|r| r.text(col))
                .collect()
        })
        .await
    }
}

impl Inner {
    fn injected_latency(&self) {
        let extra = self.faults.get().db_latency_ms;
        if extra > 0 {
            // Injected fault: a slow database. This is a blocking-pool thread, so sleeping
            // here is what a slow query would do.
            std::thread::sleep(Duration::from_millis(extra));
        }
    }
}
