//! [`Db`]: the database file and every connection to it — the writer's, the readers', and those
//! of alert state and the outbox — with one set of pragmas and one migration path. Opening it
//! checks the file (a database, writable, not in use by another redline) and migrates it once;
//! every later connection only configures itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::{Readers, StoreError, data_dir_lock, read, schema};

/// How long a writing connection waits for another one's write lock before calling it a fault.
pub(crate) const WRITE_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long a reader waits for a lock (a checkpoint) before the read fails.
const READ_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How far a connection's commits survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commits {
    /// WAL with `synchronous = NORMAL`: never corrupt after a crash; a power cut may lose the
    /// last commits. History and alert state.
    SurviveCrashes,
    /// `synchronous = FULL`: a commit survives a power cut too. Queued notifications.
    SurvivePowerLoss,
}

/// The database of one data directory. Cheap to clone: it is its path.
#[derive(Debug, Clone)]
pub struct Db {
    path: PathBuf,
}

impl Db {
    /// Opens the database at `path` (creating and migrating it if needed) for this process, the
    /// one writer of its data directory, and returns the writer's connection with it. Fails with
    /// a message that names the file and says what to do when it is not a database, cannot be
    /// written, is locked, or another redline writes to it.
    pub fn open(path: &Path) -> Result<(Db, Connection), StoreError> {
        // The database is checked first: what is wrong with it is the more useful message.
        let conn = open_database(path, WRITE_LOCK_WAIT)?;
        data_dir_lock::claim(path)?;
        let db = Db {
            path: path.to_path_buf(),
        };
        Ok((db, conn))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pool of read-only connections.
    pub fn readers(&self) -> Readers {
        Readers::new(&self.path)
    }

    /// Another writing connection, for a component's own tables (alert state, the outbox).
    /// The schema is the writer's, migrated when the database was opened.
    pub fn connection(&self, commits: Commits) -> Result<Connection, StoreError> {
        let open_error = |source| StoreError::open(&self.path, source);
        let conn = Connection::open(&self.path).map_err(open_error)?;
        configure_writer(&conn, WRITE_LOCK_WAIT, commits).map_err(open_error)?;
        Ok(conn)
    }
}

/// The pragmas of every writing connection.
fn configure_writer(
    conn: &Connection,
    lock_wait: Duration,
    commits: Commits,
) -> rusqlite::Result<()> {
    conn.busy_timeout(lock_wait)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match commits {
        Commits::SurviveCrashes => "NORMAL",
        Commits::SurvivePowerLoss => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
}

/// The pragmas of every read-only connection.
pub(crate) fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(READ_LOCK_WAIT)?;
    conn.pragma_update(None, "foreign_keys", "ON")
}

/// Opens (creating if needed) and migrates the database on a new writable connection, checking
/// that it can be written: at start-up ([`Db::open`]) and for the writer's reconnections.
pub(crate) fn open_database(path: &Path, lock_wait: Duration) -> Result<Connection, StoreError> {
    let open_error = |source| StoreError::open(path, source);
    let mut conn = Connection::open(path).map_err(open_error)?;
    // SQLite opens a file it may not write read-only without a word; writes would fail later.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(open_error)? {
        return Err(open_error(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("SQLite could open it read-only only".into()),
        )));
    }
    // Incremental auto-vacuum must be chosen before the first table exists.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(open_error)?;
    configure_writer(&conn, lock_wait, Commits::SurviveCrashes).map_err(open_error)?;
    // Takes the write lock once: a file locked by another process is found here, at start-up,
    // rather than at the first flush.
    conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")
        .map_err(open_error)?;
    schema::migrate(&mut conn).map_err(open_error)?;
    // Reads the schema and the flush sequence number: a damaged first page or schema is found
    // here, where the message can say what to do, rather than by the first query.
    read::flushed_seq(&conn).map_err(|e| match e {
        StoreError::Sql(source) => open_error(source),
        other => other,
    })?;
    Ok(conn)
}
