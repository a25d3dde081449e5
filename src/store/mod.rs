//! SQLite history: one file (`redline.db`) in WAL mode, opened through [`Db`], which owns every
//! connection's pragmas and the one migration. One writer thread applies flushes in
//! transactions and enforces retention; readers use their own read-only connections. Nothing
//! here runs on the async runtime: callers go through the writer's channel or `spawn_blocking`.
//!
//! Failures are sorted into [`FaultKind`]s (the database or its disk, as opposed to a row's
//! content) so that start-up can say what is wrong with the file and what to do, and the writer
//! can tell a fault to wait out from a row to skip. The writer of a data directory holds
//! `redline.db.lock` (see `data_dir_lock`), so a second redline on it stops at start-up.

mod apply;
mod codec;
mod data_dir_lock;
mod db;
pub mod logs;
pub mod read;
pub mod schema;
pub mod writer;

#[cfg(test)]
mod test_data;
#[cfg(test)]
#[path = "../../tests/support/tmpfs.rs"]
mod tmpfs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, ffi::ErrorCode};

#[cfg(test)]
pub(crate) use db::WRITE_LOCK_WAIT;
pub use db::{Commits, Db};
pub(crate) use db::{configure_reader, open_database};
pub use read::MetricSeriesRow;
pub use writer::{
    FaultKind, PanicReport, TryFlushError, TryRetentionError, WriterHandle, WriterHealth,
    WriterState, WriterStatus, spawn_writer,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or made ready for writing; the message names the file
    /// and says what to do.
    #[error("{} {}: {source}", path.display(), fault.advice())]
    Open {
        path: PathBuf,
        fault: FaultKind,
        source: rusqlite::Error,
    },
    /// Another redline (this process or another) writes to the same database.
    #[error(
        "{} is locked by another process: is another redline using this data directory? \
         (its lock file {} is held)",
        path.display(),
        lock_file.display()
    )]
    InUse { path: PathBuf, lock_file: PathBuf },
    /// The lock file next to the database cannot be created or locked.
    #[error("{} cannot be written: {}: {source}", path.display(), FaultKind::ReadOnly.advice())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A value of a row that SQLite would not give back as it was given (a NaN, JSON that
    /// does not parse back): the row is not stored.
    #[error("a value cannot be stored: {0}")]
    Unstorable(String),
    #[error("the store has shut down")]
    Closed,
}

impl StoreError {
    /// The fault of the database or its disk this error reports, or `None` when it is about
    /// the content of a row (a constraint, a type, a size, a value that cannot be stored).
    pub fn fault(&self) -> Option<FaultKind> {
        match self {
            StoreError::Open { fault, .. } => Some(*fault),
            StoreError::InUse { .. } => Some(FaultKind::Locked),
            StoreError::LockFile { .. } => Some(FaultKind::ReadOnly),
            StoreError::Sql(e) => FaultKind::of(e),
            StoreError::Closed => Some(FaultKind::Other),
            StoreError::Corrupt(_) | StoreError::Unstorable(_) => None,
        }
    }

    fn open(path: &Path, source: rusqlite::Error) -> StoreError {
        StoreError::Open {
            path: path.to_path_buf(),
            fault: FaultKind::of(&source).unwrap_or(FaultKind::Other),
            source,
        }
    }
}

impl FaultKind {
    /// The fault a SQLite error reports, or `None` for an error caused by a row's content.
    pub fn of(error: &rusqlite::Error) -> Option<FaultKind> {
        let rusqlite::Error::SqliteFailure(failure, _) = error else {
            // Conversions, bad UTF-8, NUL bytes, missing rows: about the values, not the disk.
            return None;
        };
        Some(match failure.code {
            ErrorCode::DiskFull => FaultKind::DiskFull,
            ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied => {
                FaultKind::ReadOnly
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::FileLockingProtocolFailed => FaultKind::Locked,
            ErrorCode::SystemIoFailure | ErrorCode::NoLargeFileSupport => FaultKind::Io,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => FaultKind::Corrupt,
            ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch
            | ErrorCode::TooBig
            | ErrorCode::ParameterOutOfRange => return None,
            _ => FaultKind::Other,
        })
    }

    /// What is wrong with the database file and what to do, after its path.
    pub fn advice(self) -> &'static str {
        match self {
            FaultKind::Corrupt => {
                "is not a SQLite database (or is damaged): move it aside and redline will \
                 create a new one, or restore it from a backup"
            }
            FaultKind::Locked => {
                "is locked by another process: is another redline using this data directory?"
            }
            FaultKind::ReadOnly => {
                "cannot be written: check the file system is mounted read-write and the \
                 permissions of the file and its directory"
            }
            FaultKind::DiskFull => {
                "cannot grow: its file system is full; free some space and redline goes on"
            }
            FaultKind::Io => "cannot be read or written (I/O error): check the disk",
            FaultKind::Other => "cannot be used",
        }
    }
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

    /// The RED table of this resolution.
    fn red_table(self) -> &'static str {
        match self {
            Resolution::TenSeconds => "red_10s",
            Resolution::OneMinute => "red_1m",
            Resolution::TenMinutes => "red_10m",
            Resolution::OneHour => "red_1h",
        }
    }

    /// The metric table of this resolution. Metrics have no 10-minute tier: its name is of a
    /// table that does not exist.
    fn metric_table(self) -> &'static str {
        match self {
            Resolution::TenSeconds => "metric_10s",
            Resolution::OneMinute => "metric_1m",
            Resolution::TenMinutes => "metric_10m",
            Resolution::OneHour => "metric_1h",
        }
    }

    pub fn align(self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// How long each resolution, the sampled traces and the kept log records are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub ten_seconds: Duration,
    pub one_minute: Duration,
    pub one_hour: Duration,
    pub traces: Duration,
    /// Oldest traces are deleted past this many stored spans.
    pub max_spans: u64,
    pub logs: Duration,
    /// Oldest log records are deleted past this many stored bytes.
    pub max_log_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ten_seconds: Duration::from_secs(6 * 3600),
            one_minute: Duration::from_secs(7 * 86_400),
            one_hour: Duration::from_secs(90 * 86_400),
            traces: Duration::from_secs(3 * 86_400),
            max_spans: 1_000_000,
            logs: Duration::from_secs(3 * 86_400),
            max_log_bytes: 256 << 20,
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

/// A small pool of read-only connections, used from blocking threads.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

const MAX_IDLE_READERS: usize = 4;

impl Readers {
    pub(super) fn new(path: &Path) -> Self {
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
                .map_err(|source| StoreError::open(&self.path, source))?;
                configure_reader(&conn)?;
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
