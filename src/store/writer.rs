//! The writer thread: the only connection that writes. It applies each flush in one
//! transaction, recording the flush sequence number with it (see `apply`), and enforces
//! retention.
//!
//! Nothing acknowledged is given up for a fault: a write that meets a fault of the database or
//! its disk (full, read-only, locked, I/O, damaged) is tried again on the same flush, with
//! backoff, until it is stored or the writer is closed; meanwhile at most [`QUEUED_FLUSHES`]
//! flushes wait here and [`WriterHandle::try_flush`] answers busy, so the caller keeps newer
//! data. A row SQLite refuses for its content makes the flush be written again row by row, the
//! refused rows skipped and counted. A panic while writing is caught: the flush is tried row by
//! row once, then given up and counted; the thread goes on. [`WriterStatus`] says which of
//! these is happening.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};

use crate::aggregate::FlushBatch;
use crate::self_metrics;
use crate::store::apply::{Database, SkippedRows, panic_message};
use crate::store::{Retention, StoreError, data_dir_lock};
use crate::vocab::now_ms;

/// Flushes handed to the writer and not yet stored (the one being written included). Each
/// holds acknowledged data that a crash would lose; beyond this, the caller keeps its data.
pub const QUEUED_FLUSHES: usize = 2;
/// Room in the command channel besides the flushes: retention, barriers and the last flush
/// before closing.
const QUEUED_COMMANDS: usize = QUEUED_FLUSHES + 4;
/// How long one write waits for another connection's write lock before it counts as a fault.
const WRITER_LOCK_WAIT: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long [`WriterHandle::close`] lets a failing store retry what is queued.
pub const DEFAULT_CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// What kind of fault of the database or its disk a write met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    DiskFull,
    ReadOnly,
    Locked,
    Io,
    Corrupt,
    Other,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk_full",
            FaultKind::ReadOnly => "read_only",
            FaultKind::Locked => "locked",
            FaultKind::Io => "io",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WriterState {
    Healthy,
    /// The last write met a fault; the flush is being tried again.
    Failing {
        fault: FaultKind,
        /// Names the database file and says what to do.
        message: String,
        /// When the writes started failing (ms since the Unix epoch).
        since_ms: i64,
    },
}

/// A panic the writer caught and survived.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PanicReport {
    pub message: String,
    pub at_ms: i64,
}

/// A snapshot of the writer, cheap to take.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterStatus {
    pub state: WriterState,
    /// When a flush was last stored (ms since the Unix epoch); `None` before the first.
    pub last_commit_ms: Option<i64>,
    /// Flushes handed over and not yet stored, at most [`QUEUED_FLUSHES`].
    pub queued_flushes: usize,
    /// Write attempts that met a fault, since start.
    pub failed_attempts_total: u64,
    /// Rows left out of stored flushes (refused for their content, or panicked).
    pub rows_skipped_total: u64,
    /// Flushes given up whole (a panic outside any row, or the shutdown deadline).
    pub flushes_dropped_total: u64,
    pub last_panic: Option<PanicReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum TryFlushError {
    /// [`QUEUED_FLUSHES`] flushes are waiting: keep the batch and offer it again later.
    #[error("the store writer is busy: {QUEUED_FLUSHES} flushes are waiting to be stored")]
    Busy(Arc<FlushBatch>),
    #[error("the store has shut down")]
    Closed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TryRetentionError {
    /// The writer's queue is full; retention is skipped this time.
    #[error("the store writer is busy")]
    Busy,
    #[error("the store has shut down")]
    Closed,
}

enum Command {
    Flush {
        seq: u64,
        batch: Arc<FlushBatch>,
        /// The flush's place among [`QUEUED_FLUSHES`], free again once it is dealt with; none
        /// for the last flush before closing.
        _slot: Option<OwnedSemaphorePermit>,
    },
    Retention {
        now_ms: i64,
    },
    /// Replies once every command sent before it has been applied.
    Barrier(oneshot::Sender<()>),
}

/// Acknowledged data handed to the writer and not yet stored.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    flushes: usize,
    red: usize,
    metrics: usize,
    spans: usize,
}

impl Pending {
    fn add(&mut self, batch: &FlushBatch) {
        self.flushes += 1;
        self.red += batch.red.len();
        self.metrics += batch.metrics.len();
        self.spans += batch.spans.len();
    }

    fn remove(&mut self, batch: &FlushBatch) {
        self.flushes = self.flushes.saturating_sub(1);
        self.red = self.red.saturating_sub(batch.red.len());
        self.metrics = self.metrics.saturating_sub(batch.metrics.len());
        self.spans = self.spans.saturating_sub(batch.spans.len());
    }
}

struct Progress {
    status: WriterStatus,
    pending: Pending,
}

/// State shared by the handle, the health readers and the thread.
struct Shared {
    progress: Mutex<Progress>,
    /// Set by `close` (or dropping the handle): the instant after which nothing more is tried.
    stop_at: Mutex<Option<Instant>>,
    stop_changed: Condvar,
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_at(&self) -> MutexGuard<'_, Option<Instant>> {
        self.stop_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> WriterStatus {
        let progress = self.progress();
        let mut status = progress.status.clone();
        status.queued_flushes = progress.pending.flushes;
        status
    }

    /// Asks the thread to stop trying at `deadline` (an earlier request stands).
    fn stop_by(&self, deadline: Instant) {
        let mut stop_at = self.stop_at();
        if stop_at.is_none_or(|current| deadline < current) {
            *stop_at = Some(deadline);
        }
        self.stop_changed.notify_all();
    }

    fn past_stop(&self) -> bool {
        self.stop_at().is_some_and(|at| Instant::now() >= at)
    }

    /// Waits `backoff`, or less: until the stop deadline, or at once when a stop is asked for
    /// while waiting (what is queued is then tried right away).
    fn pause(&self, backoff: Duration) {
        let until = Instant::now() + backoff;
        let mut stop_at = self.stop_at();
        let stopping = stop_at.is_some();
        loop {
            if !stopping && stop_at.is_some() {
                return;
            }
            let wake_at = stop_at.map_or(until, |deadline| until.min(deadline));
            let now = Instant::now();
            if now >= wake_at {
                return;
            }
            stop_at = self
                .stop_changed
                .wait_timeout(stop_at, wake_at - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn stored(&self, skipped: &SkippedRows) {
        let mut progress = self.progress();
        progress.status.state = WriterState::Healthy;
        progress.status.last_commit_ms = Some(now_ms());
        progress.status.rows_skipped_total += skipped.total();
        self_metrics::store_writer_failing(false);
    }

    fn failed(&self, fault: FaultKind, message: String) {
        let mut progress = self.progress();
        let since_ms = match &progress.status.state {
            WriterState::Failing { since_ms, .. } => *since_ms,
            WriterState::Healthy => {
                tracing::error!(fault = fault.as_str(), %message, "the store cannot write: retrying");
                now_ms()
            }
        };
        progress.status.state = WriterState::Failing {
            fault,
            message,
            since_ms,
        };
        progress.status.failed_attempts_total += 1;
        self_metrics::store_write_fault(fault.as_str());
        self_metrics::store_writer_failing(true);
    }

    fn panicked(&self, message: String) {
        self_metrics::store_writer_panic();
        self.progress().status.last_panic = Some(PanicReport {
            message,
            at_ms: now_ms(),
        });
    }

    fn dropped(&self, reason: &'static str, batch: &FlushBatch) {
        self_metrics::store_flush_dropped(reason, batch.rows());
        self.progress().status.flushes_dropped_total += 1;
    }
}

/// Reads the writer's status; cloned into readiness checks and pages.
#[derive(Clone)]
pub struct WriterHealth(Arc<Shared>);

impl WriterHealth {
    pub fn status(&self) -> WriterStatus {
        self.0.status()
    }
}

/// Asks the thread to stop within [`DEFAULT_CLOSE_DEADLINE`] when the handle is dropped
/// without `close`, so that a dropped writer on a failing disk does not retry for ever.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_by(Instant::now() + DEFAULT_CLOSE_DEADLINE);
    }
}

/// Sends work to the writer thread. Dropping it (or `close`) stops the thread after it has
/// applied what was queued, or at the deadline if the store is failing.
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Resolves (closed) when the thread has ended.
    ended: oneshot::Receiver<()>,
    _stop_on_drop: StopOnDrop,
}

/// Starts the writer thread on `conn`. `on_commit(seq)` runs once flush `seq` is durable; a
/// flush given up is never committed, and the next commit's number covers it.
pub fn spawn_writer(
    conn: Connection,
    retention: Retention,
    on_commit: impl Fn(u64) + Send + 'static,
) -> WriterHandle {
    let (tx, mut rx) = mpsc::channel(QUEUED_COMMANDS);
    let shared = Arc::new(Shared {
        progress: Mutex::new(Progress {
            status: WriterStatus {
                state: WriterState::Healthy,
                last_commit_ms: None,
                queued_flushes: 0,
                failed_attempts_total: 0,
                rows_skipped_total: 0,
                flushes_dropped_total: 0,
                last_panic: None,
            },
            pending: Pending::default(),
        }),
        stop_at: Mutex::new(None),
        stop_changed: Condvar::new(),
    });
    self_metrics::store_writer_failing(false);
    let (ended_tx, ended) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("redline-store-writer".into())
        .spawn({
            let shared = shared.clone();
            move || {
                lower_thread_priority();
                let mut writer = Writer {
                    db: Database::new(conn, retention, WRITER_LOCK_WAIT),
                    shared,
                };
                while let Some(command) = rx.blocking_recv() {
                    writer.run(command, &on_commit);
                }
                if let Some(path) = writer.db.path() {
                    data_dir_lock::release(path);
                }
                drop(ended_tx);
            }
        })
        .expect("spawn store writer thread");
    WriterHandle {
        tx,
        slots: Arc::new(Semaphore::new(QUEUED_FLUSHES)),
        shared: shared.clone(),
        thread: Some(thread),
        ended,
        _stop_on_drop: StopOnDrop(shared),
    }
}

/// The writer's niceness. Storing is background work that only has to keep up on average, while
/// a receiver that loses the core for a few milliseconds makes exporters wait and retry: when
/// both want the one core, the receivers should win. At nice 10 the writer still gets about a
/// tenth of a contended core (and every idle cycle), and a writer that falls behind still backs
/// the pipeline up through its bounded queue, so nothing is lost or unbounded.
const WRITER_NICE: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    // On Linux a thread has its own nice value; `setpriority` on its thread id sets just that.
    // SAFETY: plain system calls on the calling thread, no memory is passed.
    let result = unsafe {
        let thread_id = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread_id as libc::id_t, WRITER_NICE)
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the store writer's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

impl WriterHandle {
    /// Hands a flush to the writer without waiting. [`TryFlushError::Busy`] gives the batch
    /// back when [`QUEUED_FLUSHES`] flushes are waiting (the store is slow or failing).
    pub fn try_flush(&self, seq: u64, batch: Arc<FlushBatch>) -> Result<(), TryFlushError> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::NoPermits) => return Err(TryFlushError::Busy(batch)),
            Err(TryAcquireError::Closed) => return Err(TryFlushError::Closed),
        };
        self.send_flush(seq, batch, Some(slot))
    }

    /// Hands over the last flush before [`WriterHandle::close_within`], however many flushes
    /// wait: the caller is about to close and has nowhere to keep it. `close_within` then
    /// stores it with the others, or reports it among what was not stored.
    pub fn try_flush_last(&self, seq: u64, batch: Arc<FlushBatch>) -> Result<(), TryFlushError> {
        self.send_flush(seq, batch, None)
    }

    fn send_flush(
        &self,
        seq: u64,
        batch: Arc<FlushBatch>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(), TryFlushError> {
        self.shared.progress().pending.add(&batch);
        let command = Command::Flush {
            seq,
            batch,
            _slot: slot,
        };
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(error) => {
                let (command, busy) = match error {
                    mpsc::error::TrySendError::Full(command) => (command, true),
                    mpsc::error::TrySendError::Closed(command) => (command, false),
                };
                let Command::Flush { batch, .. } = command else {
                    return Err(TryFlushError::Closed);
                };
                self.shared.progress().pending.remove(&batch);
                if busy {
                    Err(TryFlushError::Busy(batch))
                } else {
                    Err(TryFlushError::Closed)
                }
            }
        }
    }

    /// Hands a flush to the writer, waiting while [`QUEUED_FLUSHES`] flushes are queued.
    pub async fn flush(&self, seq: u64, batch: Arc<FlushBatch>) -> Result<(), StoreError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        self.shared.progress().pending.add(&batch);
        let command = Command::Flush {
            seq,
            batch: batch.clone(),
            _slot: Some(slot),
        };
        if self.tx.send(command).await.is_err() {
            self.shared.progress().pending.remove(&batch);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Queues retention without waiting; skipped (busy) when the queue is full.
    pub fn try_retention(&self, now_ms: i64) -> Result<(), TryRetentionError> {
        self.tx
            .try_send(Command::Retention { now_ms })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => TryRetentionError::Busy,
                mpsc::error::TrySendError::Closed(_) => TryRetentionError::Closed,
            })
    }

    /// Resolves once everything queued before it is written (which, on a failing store, waits
    /// until the fault clears).
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Barrier(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)
    }

    pub fn status(&self) -> WriterStatus {
        self.shared.status()
    }

    /// A status reader that outlives the handle's owner, for readiness and pages.
    pub fn health(&self) -> WriterHealth {
        WriterHealth(self.shared.clone())
    }

    /// [`WriterHandle::close_within`] with [`DEFAULT_CLOSE_DEADLINE`].
    pub async fn close(self) {
        self.close_within(DEFAULT_CLOSE_DEADLINE).await;
    }

    /// Applies what is queued and stops the thread. A failing store is retried until
    /// `deadline`; then this returns whatever the thread is doing, after logging what was not
    /// stored.
    pub async fn close_within(self, deadline: Duration) {
        let WriterHandle {
            tx,
            slots,
            shared,
            thread,
            ended,
            _stop_on_drop,
        } = self;
        let deadline_at = Instant::now() + deadline;
        shared.stop_by(deadline_at);
        slots.close();
        drop(tx);
        let ended_in_time = tokio::time::timeout_at(deadline_at.into(), ended)
            .await
            .is_ok();
        if ended_in_time && let Some(thread) = thread {
            // The thread has let go of everything; joining only collects it.
            let _ = thread.join();
        }
        let pending = shared.progress().pending;
        if pending.flushes > 0 {
            let state = match shared.status().state {
                WriterState::Failing { message, .. } => message,
                WriterState::Healthy => "the writer was still busy".to_string(),
            };
            tracing::error!(
                flushes = pending.flushes,
                red_rows = pending.red,
                metric_rows = pending.metrics,
                spans = pending.spans,
                reason = %state,
                "shutting down with {} flushes not stored ({} RED rows, {} metric rows, {} spans) after {:?}",
                pending.flushes,
                pending.red,
                pending.metrics,
                pending.spans,
                deadline,
            );
        }
    }
}

/// What became of a flush.
enum Stored {
    Yes,
    /// Given up at the stop deadline (never stored).
    Abandoned,
    /// Given up after a panic in one go and row by row.
    Panicked,
    /// Refused outside any row, in one go and row by row.
    Unstorable,
}

struct Writer {
    db: Database,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(&mut self, command: Command, on_commit: &impl Fn(u64)) {
        match command {
            Command::Flush { seq, batch, _slot } => {
                let stored = self.store(seq, &batch);
                match stored {
                    Stored::Yes => {
                        let committed = catch_unwind(AssertUnwindSafe(|| on_commit(seq)));
                        if let Err(panic) = committed {
                            let message = panic_message(panic.as_ref());
                            tracing::error!(panic = %message, seq, "the commit callback panicked");
                            self.shared.panicked(message);
                        }
                    }
                    Stored::Abandoned => self.shared.dropped("shutdown", &batch),
                    Stored::Panicked => self.shared.dropped("panic", &batch),
                    Stored::Unstorable => self.shared.dropped("unstorable", &batch),
                }
                self.shared.progress().pending.remove(&batch);
            }
            Command::Retention { now_ms } => {
                if self.shared.past_stop() {
                    return;
                }
                let applied = catch_unwind(AssertUnwindSafe(|| self.db.apply_retention(now_ms)));
                match applied {
                    Ok(Ok(())) => self.db.report_size(),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "retention failed");
                        let fault = e.fault();
                        self.db.after_failure(fault);
                        if let Some(fault) = fault {
                            self.shared.failed(fault, self.describe(fault, &e));
                        }
                    }
                    Err(panic) => {
                        let message = panic_message(panic.as_ref());
                        tracing::error!(panic = %message, "retention panicked");
                        self.db.after_failure(None);
                        self.shared.panicked(message);
                    }
                }
            }
            Command::Barrier(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Stores one flush: in one go, row by row after a refused row or a panic, again after a
    /// fault until the stop deadline.
    fn store(&mut self, seq: u64, batch: &FlushBatch) -> Stored {
        let mut row_by_row = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.shared.past_stop() {
                return Stored::Abandoned;
            }
            let started = Instant::now();
            let attempt = catch_unwind(AssertUnwindSafe(|| {
                if row_by_row {
                    self.db.write_rows(seq, batch)
                } else {
                    self.db
                        .write_flush(seq, batch)
                        .map(|()| SkippedRows::default())
                }
            }));
            match attempt {
                Ok(Ok(skipped)) => {
                    self_metrics::store_write(started.elapsed(), batch.rows());
                    for (kind, rows) in skipped.by_kind() {
                        if rows > 0 {
                            self_metrics::store_rows_skipped(kind, rows);
                        }
                    }
                    self.shared.stored(&skipped);
                    return Stored::Yes;
                }
                Ok(Err(e)) => {
                    let fault = e.fault();
                    self.db.after_failure(fault);
                    match fault {
                        None if !row_by_row => {
                            tracing::warn!(error = %e, seq, "a flush holds a row that cannot be stored: writing it row by row");
                            row_by_row = true;
                        }
                        None => {
                            tracing::error!(error = %e, seq, "a flush cannot be stored even row by row: dropped");
                            return Stored::Unstorable;
                        }
                        Some(fault) => {
                            self.shared.failed(fault, self.describe(fault, &e));
                            self.shared.pause(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    self.db.after_failure(None);
                    self.shared.panicked(message.clone());
                    if row_by_row {
                        tracing::error!(panic = %message, seq, "writing a flush panicked again, row by row: dropped");
                        return Stored::Panicked;
                    }
                    tracing::error!(panic = %message, seq, "writing a flush panicked: writing it row by row");
                    row_by_row = true;
                }
            }
        }
    }

    /// The message for a fault: the file, what is wrong and what to do, and SQLite's words.
    fn describe(&self, fault: FaultKind, error: &StoreError) -> String {
        match (error, self.db.path()) {
            (StoreError::Open { .. } | StoreError::InUse { .. }, _) | (_, None) => {
                error.to_string()
            }
            (error, Some(path)) => format!("{} {}: {error}", path.display(), fault.advice()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::apply::{PANICKING_SEQ, PANICKING_SPAN};
    use crate::store::test_data::{HOUR, batch, count, plain, poisoned_red, red, span};
    use crate::store::tmpfs::Tmpfs;
    use crate::store::{Db, WRITE_LOCK_WAIT, open_database, read};

    /// The flush numbers `on_commit` was called with, in order.
    #[derive(Clone, Default)]
    struct Commits(Arc<Mutex<Vec<u64>>>);

    impl Commits {
        fn seen(&self) -> Vec<u64> {
            self.0.lock().unwrap().clone()
        }

        fn callback(&self) -> impl Fn(u64) + Send + 'static {
            let seen = self.0.clone();
            move |seq| seen.lock().unwrap().push(seq)
        }
    }

    fn start(path: &Path) -> (WriterHandle, Commits) {
        let (_db, conn) = Db::open(path).unwrap();
        let commits = Commits::default();
        let writer = spawn_writer(conn, Retention::default(), commits.callback());
        (writer, commits)
    }

    /// Polls `done` every 20 ms; fails the test after `deadline`.
    async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < deadline,
                "{what}: not within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    fn fault(status: &WriterStatus) -> Option<FaultKind> {
        match &status.state {
            WriterState::Failing { fault, .. } => Some(*fault),
            WriterState::Healthy => None,
        }
    }

    fn message(status: &WriterStatus) -> String {
        match &status.state {
            WriterState::Failing { message, .. } => message.clone(),
            WriterState::Healthy => String::new(),
        }
    }

    /// Routes with a stored 10-second window.
    fn stored_routes(path: &Path) -> Vec<String> {
        let conn = plain(path);
        let mut statement = conn
            .prepare(
                "SELECT DISTINCT e.route FROM red_10s r JOIN endpoints e ON e.id = r.endpoint_id
                 ORDER BY e.route",
            )
            .unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_keeps_the_flush_until_the_lock_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.db");
        let (writer, commits) = start(&path);
        // Another process's write transaction.
        let locker = plain(&path);
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let flush = batch(
            vec![red("/a", HOUR, 3), red("/b", HOUR, 4)],
            vec![],
            vec![span(1, 1, HOUR)],
        );
        writer.try_flush(1, flush).unwrap();
        wait_until("the writer reports the lock", PATIENCE, || {
            fault(&writer.status()) == Some(FaultKind::Locked)
        })
        .await;
        let status = writer.status();
        assert!(
            message(&status).contains(&path.display().to_string())
                && message(&status).contains("is locked by another process"),
            "{status:?}"
        );
        assert_eq!(status.queued_flushes, 1);
        assert_eq!(status.last_commit_ms, None);
        wait_until("tried again", PATIENCE, || {
            writer.status().failed_attempts_total >= 3
        })
        .await;
        assert!(commits.seen().is_empty(), "{:?}", commits.seen());

        locker.execute_batch("ROLLBACK").unwrap();
        wait_until("the same flush commits", PATIENCE, || commits.seen() == [1]).await;
        let status = writer.status();
        assert_eq!(status.state, WriterState::Healthy);
        assert_eq!(status.queued_flushes, 0);
        assert!(status.last_commit_ms.is_some());
        assert_eq!(stored_routes(&path), ["/a", "/b"]);
        let conn = plain(&path);
        assert_eq!(count(&conn, "spans"), 1);
        assert_eq!(read::flushed_seq(&conn).unwrap(), 1);
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_keeps_the_flushes_until_space_is_freed() {
        let disk = Tmpfs::mount(4 << 20);
        let path = disk.path().join("redline.db");
        let (writer, commits) = start(&path);
        writer
            .try_flush(1, batch(vec![red("/a", HOUR, 1)], vec![], vec![]))
            .unwrap();
        wait_until("the first flush commits", PATIENCE, || {
            commits.seen() == [1]
        })
        .await;

        let filler = disk.fill();
        let spans = (0..200).map(|i| span(9, i, HOUR + i64::from(i))).collect();
        writer
            .try_flush(2, batch(vec![red("/b", HOUR, 2)], vec![], spans))
            .unwrap();
        wait_until("the writer reports the full disk", PATIENCE, || {
            fault(&writer.status()) == Some(FaultKind::DiskFull)
        })
        .await;
        writer
            .try_flush(3, batch(vec![red("/c", HOUR, 3)], vec![], vec![]))
            .unwrap();
        // Two flushes wait: the third is given back to the caller, who keeps it.
        let returned = match writer.try_flush(4, batch(vec![red("/d", HOUR, 4)], vec![], vec![])) {
            Err(TryFlushError::Busy(returned)) => returned,
            other => panic!("expected busy, got {other:?}"),
        };
        assert_eq!(returned.red[0].endpoint.route, "/d");
        wait_until("tried again", PATIENCE, || {
            writer.status().failed_attempts_total >= 3
        })
        .await;
        let status = writer.status();
        assert_eq!(status.queued_flushes, 2);
        assert!(message(&status).contains("full"), "{status:?}");
        assert_eq!(commits.seen(), [1]);

        std::fs::remove_file(filler).unwrap();
        wait_until("the waiting flushes commit", PATIENCE, || {
            commits.seen() == [1, 2, 3]
        })
        .await;
        assert_eq!(writer.status().state, WriterState::Healthy);
        writer.try_flush(4, returned).unwrap();
        wait_until("the returned flush commits", PATIENCE, || {
            commits.seen() == [1, 2, 3, 4]
        })
        .await;
        assert_eq!(stored_routes(&path), ["/a", "/b", "/c", "/d"]);
        assert_eq!(count(&plain(&path), "spans"), 200);
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_file_system_keeps_the_flush_until_it_is_writable_again() {
        let disk = Tmpfs::mount(8 << 20);
        let path = disk.path().join("redline.db");
        drop(open_database(&path, WRITE_LOCK_WAIT).unwrap());
        // The kernel will not remount read-only under a file open for writing, so the writer
        // starts where it is once its file system has turned read-only under it: on a
        // connection SQLite could only open read-only.
        disk.remount_read_only().unwrap();
        let conn = Connection::open(&path).unwrap();
        assert!(conn.is_readonly(rusqlite::MAIN_DB).unwrap());
        let commits = Commits::default();
        let writer = spawn_writer(conn, Retention::default(), commits.callback());
        writer
            .try_flush(1, batch(vec![red("/a", HOUR, 1)], vec![], vec![]))
            .unwrap();
        wait_until("the writer reports the read-only file", PATIENCE, || {
            let status = writer.status();
            fault(&status) == Some(FaultKind::ReadOnly) && status.failed_attempts_total >= 3
        })
        .await;
        let status = writer.status();
        assert!(
            message(&status).contains("cannot be written")
                && message(&status).contains(&path.display().to_string()),
            "{status:?}"
        );
        assert!(commits.seen().is_empty());

        disk.remount_read_write();
        wait_until("the flush commits", PATIENCE, || commits.seen() == [1]).await;
        assert_eq!(writer.status().state, WriterState::Healthy);
        assert_eq!(stored_routes(&path), ["/a"]);
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poisoned_row_is_skipped_and_the_rest_of_its_flush_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.db");
        let (writer, commits) = start(&path);
        let flush = batch(
            vec![
                red("/a", HOUR, 1),
                poisoned_red("/poisoned", HOUR),
                red("/b", HOUR, 2),
            ],
            vec![],
            vec![span(1, 1, HOUR)],
        );
        writer.try_flush(1, flush).unwrap();
        wait_until("the flush commits", PATIENCE, || commits.seen() == [1]).await;
        let status = writer.status();
        assert_eq!(status.state, WriterState::Healthy);
        assert_eq!(status.rows_skipped_total, 1);
        assert_eq!(status.failed_attempts_total, 0);
        assert_eq!(stored_routes(&path), ["/a", "/b"]);
        assert_eq!(count(&plain(&path), "spans"), 1);
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_flush_is_dropped_and_counted_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.db");
        let (writer, commits) = start(&path);
        writer
            .try_flush(
                PANICKING_SEQ,
                batch(vec![red("/lost", HOUR, 1)], vec![], vec![]),
            )
            .unwrap();
        let (mut panicking_span, reason) = span(1, 2, HOUR);
        panicking_span.name = PANICKING_SPAN.into();
        let spans = vec![span(1, 1, HOUR), (panicking_span, reason)];
        writer
            .try_flush(
                PANICKING_SEQ + 1,
                batch(vec![red("/kept", HOUR, 1)], vec![], spans),
            )
            .unwrap();
        wait_until("the next flush commits", PATIENCE, || {
            commits.seen() == [PANICKING_SEQ + 1]
        })
        .await;
        let status = writer.status();
        assert_eq!(status.state, WriterState::Healthy);
        assert_eq!(status.flushes_dropped_total, 1);
        assert_eq!(status.rows_skipped_total, 1);
        assert!(
            status
                .last_panic
                .as_ref()
                .is_some_and(|p| p.message.contains("panics")),
            "{status:?}"
        );
        assert_eq!(stored_routes(&path), ["/kept"]);
        assert_eq!(count(&plain(&path), "spans"), 1);
        writer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_returns_at_its_deadline_while_the_database_stays_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.db");
        let (writer, commits) = start(&path);
        let health = writer.health();
        let locker = plain(&path);
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        for seq in 1..=2 {
            writer
                .try_flush(seq, batch(vec![red("/a", HOUR, 1)], vec![], vec![]))
                .unwrap();
        }
        wait_until("the writer reports the lock", PATIENCE, || {
            fault(&health.status()) == Some(FaultKind::Locked)
        })
        .await;
        writer
            .try_flush_last(3, batch(vec![red("/b", HOUR, 1)], vec![], vec![]))
            .unwrap();
        assert_eq!(health.status().queued_flushes, 3);

        let deadline = Duration::from_millis(1500);
        let started = Instant::now();
        writer.close_within(deadline).await;
        let took = started.elapsed();
        assert!(
            took < deadline + Duration::from_secs(1),
            "close took {took:?}"
        );
        wait_until("the flushes are given up", PATIENCE, || {
            health.status().flushes_dropped_total == 3
        })
        .await;
        assert_eq!(health.status().queued_flushes, 0);
        locker.execute_batch("ROLLBACK").unwrap();
        assert!(commits.seen().is_empty());
        assert!(stored_routes(&path).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_stores_everything_queued_once_the_fault_clears_before_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redline.db");
        let (writer, commits) = start(&path);
        let health = writer.health();
        let locker = plain(&path);
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        writer
            .try_flush(1, batch(vec![red("/a", HOUR, 1)], vec![], vec![]))
            .unwrap();
        writer
            .try_flush(2, batch(vec![red("/b", HOUR, 1)], vec![], vec![]))
            .unwrap();
        writer
            .try_flush_last(3, batch(vec![red("/c", HOUR, 1)], vec![], vec![]))
            .unwrap();
        wait_until("the writer reports the lock", PATIENCE, || {
            fault(&health.status()) == Some(FaultKind::Locked)
        })
        .await;
        let closing = tokio::spawn(writer.close_within(PATIENCE));
        wait_until("close has tried again", PATIENCE, || {
            health.status().failed_attempts_total >= 2
        })
        .await;
        locker.execute_batch("ROLLBACK").unwrap();
        closing.await.unwrap();
        assert_eq!(commits.seen(), [1, 2, 3]);
        assert_eq!(stored_routes(&path), ["/a", "/b", "/c"]);
        assert_eq!(health.status().flushes_dropped_total, 0);
    }
}
