//! SQLite history: one file (`redline.db`) in WAL mode. One writer thread applies flushes in
//! transactions and enforces retention; readers use their own read-only connections. Nothing
//! here runs on the async runtime: callers go through the writer's channel or `spawn_blocking`.

pub mod alerts;
mod codec;
pub mod read;
pub mod schema;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use read::{MetricSeriesRow, TraceFilter, TraceSummary};
pub use writer::{WriterHandle, spawn_writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store has shut down")]
    Closed,
}

/// The window sizes kept, each with its own table and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resolution {
    TenSeconds,
    OneMinute,
    /// RED only, and never a resolution a query asks for: a rollup tier that lets a read of
    /// per-endpoint totals (`read::red_totals`) take whole 10-minute rows instead of ten 1-minute
    /// ones. Not in [`Resolution::ALL`]; see [`Resolution::RED_TIERS`].
    TenMinutes,
    OneHour,
}

impl Resolution {
    /// The resolutions a query can read, for RED and metrics alike.
    pub const ALL: [Resolution; 3] = [
        Resolution::TenSeconds,
        Resolution::OneMinute,
        Resolution::OneHour,
    ];

    /// Every RED table, finest first: the writer rolls each flush into all of them.
    pub const RED_TIERS: [Resolution; 4] = [
        Resolution::TenSeconds,
        Resolution::OneMinute,
        Resolution::TenMinutes,
        Resolution::OneHour,
    ];

    pub fn millis(self) -> i64 {
        match self {
            Resolution::TenSeconds => 10_000,
            Resolution::OneMinute => 60_000,
            Resolution::TenMinutes => 600_000,
            Resolution::OneHour => 3_600_000,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Resolution::TenSeconds => "10s",
            Resolution::OneMinute => "1m",
            Resolution::TenMinutes => "10m",
            Resolution::OneHour => "1h",
        }
    }

    pub fn align(self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// How long each resolution and the sampled traces are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub ten_seconds: Duration,
    pub one_minute: Duration,
    pub one_hour: Duration,
    pub traces: Duration,
    /// Oldest traces are deleted past this many stored spans.
    pub max_spans: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ten_seconds: Duration::from_secs(6 * 3600),
            one_minute: Duration::from_secs(7 * 86_400),
            one_hour: Duration::from_secs(90 * 86_400),
            traces: Duration::from_secs(3 * 86_400),
            max_spans: 1_000_000,
        }
    }
}

impl Retention {
    pub fn of(&self, resolution: Resolution) -> Duration {
        match resolution {
            Resolution::TenSeconds => self.ten_seconds,
            Resolution::OneMinute => self.one_minute,
            // A 10-minute row goes only once all its 1-minute rows have gone, so a read never
            // finds one without the other inside the 1-minute retention.
            Resolution::TenMinutes => self.one_minute + Duration::from_secs(600),
            Resolution::OneHour => self.one_hour,
        }
    }
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("redline.db")
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens (creating if needed) and migrates the database; the connection becomes the writer's.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_error)?;
    // Incremental auto-vacuum must be chosen before the first table exists.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(open_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_error)?;
    // WAL + NORMAL never corrupts on a crash; a power cut may lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_error)?;
    configure(&conn).map_err(open_error)?;
    schema::migrate(&mut conn).map_err(open_error)?;
    Ok(conn)
}

/// A small pool of read-only connections, used from blocking threads.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

const MAX_IDLE_READERS: usize = 4;

impl Readers {
    pub fn new(path: &Path) -> Self {
        Readers {
            path: path.to_path_buf(),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `f` with a read connection. Blocking: call it from `spawn_blocking`.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().expect("reader pool lock").pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|source| StoreError::Open {
                    path: self.path.clone(),
                    source,
                })?;
                configure(&conn)?;
                conn
            }
        };
        let result = f(&mut conn);
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` on the blocking pool with a read connection.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Corrupt(format!("reader task failed: {e}")))?
    }
}
