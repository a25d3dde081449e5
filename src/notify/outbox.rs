//! The durable outbox: every notification is composed and stored (full message bytes and
//! envelope) in the SQLite `outbox` table *before* any delivery attempt, then sent by
//! [`super::sender::run_sender`] with retries.
//!
//! - Success marks the row `sent`. A transient failure (connection refused, timeout, TLS, an
//!   SMTP 4xx reply) schedules a retry after a delay drawn with full jitter,
//!   `U(0, min(cap, base·2^attempts))`; a permanent SMTP 5xx reply marks the row `failed` and it
//!   is never retried; a row still pending after [`super::RetryPolicy::max_age`] fails as `expired`.
//! - Delivery is at least once: the row is marked `sent` only after the server accepted the
//!   message, so a crash in between re-sends it after the restart; pending rows are picked up
//!   by the next sender.
//! - Sending is [`super::sender`]'s.
//! - The outbox has its own connection to the database file (WAL, `busy_timeout`,
//!   `synchronous = FULL`, writes in `BEGIN IMMEDIATE`); all SQLite and file work runs on
//!   tokio's blocking pool. Run one sender per database.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Notification, NotifyError, email};
use crate::self_metrics;
use crate::store::{Commits, Db};
use crate::vocab::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    Pending,
    Sent,
    Failed,
}

impl EntryStatus {
    fn parse(text: &str) -> EntryStatus {
        match text {
            "sent" => EntryStatus::Sent,
            "failed" => EntryStatus::Failed,
            _ => EntryStatus::Pending,
        }
    }
}

/// One queued message, without its bytes (for the dashboard and tests).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub group_key: String,
    pub receiver: String,
    pub created_ms: i64,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub status: EntryStatus,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub sent_ms: Option<i64>,
}

/// Counts for `/metrics` and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStats {
    pub pending: u64,
    pub sent: u64,
    pub failed: u64,
    /// The most recent delivery error (this process's, else the newest stored one).
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// When the oldest pending message was queued.
    pub oldest_pending_ms: Option<i64>,
}

/// The envelope as stored in the `recipients` column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredEnvelope {
    pub(super) from: String,
    pub(super) to: Vec<String>,
}

struct Inner {
    conn: Mutex<Connection>,
    wake: Notify,
    last_error: Mutex<Option<(String, i64)>>,
    path: PathBuf,
}

/// A handle to the outbox; clones share one connection.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Outbox {
    /// The outbox in `db`, on a connection of its own. Blocking: call it at startup or on a
    /// blocking thread.
    pub fn open(db: &Db) -> Result<Outbox, NotifyError> {
        // A queued notification must survive a power cut, not only a crash.
        let conn = db.connection(Commits::SurvivePowerLoss)?;
        let db_path = db.path();
        let outbox = Outbox {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                wake: Notify::new(),
                last_error: Mutex::new(None),
                path: db_path.to_path_buf(),
            }),
        };
        Ok(outbox)
    }

    /// Runs `work` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, work: F) -> Result<T, NotifyError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, NotifyError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .conn
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| NotifyError::Worker(e.to_string()))?
    }

    /// Composes the notification and stores the message (bytes and envelope) as `pending`,
    /// then wakes the sender. Returns the row id. Fails only for unusable addresses or the
    /// database; rendering problems degrade the message instead (see [`email::compose`]).
    pub async fn enqueue(&self, notification: &Notification) -> Result<i64, NotifyError> {
        let notification = notification.clone();
        // Compose (charts included) without holding the connection.
        let (group_key, receiver, subject, recipients, bytes) =
            tokio::task::spawn_blocking(move || -> Result<_, NotifyError> {
                let message = email::compose(&notification)?;
                let envelope = message.envelope();
                let stored = StoredEnvelope {
                    from: envelope.from().map(|a| a.to_string()).unwrap_or_default(),
                    to: envelope.to().iter().map(|a| a.to_string()).collect(),
                };
                let recipients = serde_json::to_string(&stored)
                    .map_err(|e| NotifyError::Message(e.to_string()))?;
                Ok((
                    notification.group_key.clone(),
                    notification.receiver.clone(),
                    email::subject(&notification),
                    recipients,
                    message.formatted(),
                ))
            })
            .await
            .map_err(|e| NotifyError::Worker(e.to_string()))??;
        let id = self
            .with_conn(move |conn| {
                let now = now_ms();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT INTO outbox (group_key, receiver, created_ms, recipients, subject, \
                     message, status, attempts, next_attempt_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?3)",
                    params![group_key, receiver, now, recipients, subject, bytes],
                )?;
                let id = tx.last_insert_rowid();
                tx.commit()?;
                self_metrics::outbox_pending(pending_count(conn)?);
                Ok(id)
            })
            .await?;
        tracing::debug!(id, "notification queued");
        self.wake();
        Ok(id)
    }

    /// Deletes sent messages older than `keep_sent` and failed ones older than `keep_failed`
    /// (by queue time); returns how many rows went. Pending messages are never deleted.
    pub async fn prune(
        &self,
        keep_sent: Duration,
        keep_failed: Duration,
    ) -> Result<usize, NotifyError> {
        let now = now_ms();
        let sent_before = now - keep_sent.as_millis() as i64;
        let failed_before = now - keep_failed.as_millis() as i64;
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let deleted = tx.execute(
                "DELETE FROM outbox WHERE (status = 'sent' AND created_ms < ?1) \
                 OR (status = 'failed' AND created_ms < ?2)",
                params![sent_before, failed_before],
            )?;
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    /// Makes the sender look at the table now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Resolves at the next [`Outbox::wake`] (a new message, or a stop).
    pub(super) async fn woken(&self) {
        self.inner.wake.notified().await
    }

    /// Pending, sent and failed counts, and the last error.
    pub async fn stats(&self) -> Result<OutboxStats, NotifyError> {
        let memory = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.with_conn(move |conn| {
            let mut stats = OutboxStats::default();
            let mut statement = conn
                .prepare("SELECT status, COUNT(*), MIN(created_ms) FROM outbox GROUP BY status")?;
            let rows = statement.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })?;
            for row in rows {
                let (status, count, oldest) = row?;
                match EntryStatus::parse(&status) {
                    EntryStatus::Pending => {
                        stats.pending = count as u64;
                        stats.oldest_pending_ms = oldest;
                    }
                    EntryStatus::Sent => stats.sent = count as u64,
                    EntryStatus::Failed => stats.failed = count as u64,
                }
            }
            match memory {
                Some((error, at)) => {
                    stats.last_error = Some(error);
                    stats.last_error_ms = Some(at);
                }
                None => {
                    stats.last_error = conn
                        .query_row(
                            "SELECT last_error FROM outbox WHERE last_error IS NOT NULL \
                             ORDER BY id DESC LIMIT 1",
                            [],
                            |r| r.get(0),
                        )
                        .optional()?;
                }
            }
            Ok(stats)
        })
        .await
    }

    /// One entry by id.
    pub async fn entry(&self, id: i64) -> Result<Option<OutboxEntry>, NotifyError> {
        self.with_conn(move |conn| {
            Ok(conn
                .query_row(
                    &format!("{ENTRY_COLUMNS} WHERE id = ?1"),
                    [id],
                    entry_from_row,
                )
                .optional()?)
        })
        .await
    }

    /// The newest `limit` entries, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<OutboxEntry>, NotifyError> {
        self.with_conn(move |conn| {
            let mut statement =
                conn.prepare(&format!("{ENTRY_COLUMNS} ORDER BY id DESC LIMIT ?1"))?;
            let rows = statement.query_map([limit as i64], entry_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The stored message bytes of one entry.
    pub async fn message(&self, id: i64) -> Result<Option<Vec<u8>>, NotifyError> {
        self.with_conn(move |conn| {
            Ok(conn
                .query_row("SELECT message FROM outbox WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?)
        })
        .await
    }

    pub(super) fn note_error(&self, error: &str) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((error.to_string(), now_ms()));
    }

    pub(super) async fn due(&self, now: i64, limit: usize) -> Result<Vec<DueRow>, NotifyError> {
        self.with_conn(move |conn| {
            let mut statement = conn.prepare(
                "SELECT id, group_key, created_ms, recipients, message, attempts FROM outbox \
                 WHERE status = 'pending' AND next_attempt_ms <= ?1 \
                 ORDER BY next_attempt_ms, id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now, limit as i64], |r| {
                Ok(DueRow {
                    id: r.get(0)?,
                    group_key: r.get(1)?,
                    created_ms: r.get(2)?,
                    recipients: r.get(3)?,
                    message: r.get(4)?,
                    attempts: r.get::<_, i64>(5)?.max(0) as u32,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The earliest `next_attempt_ms` of a pending row.
    pub(super) async fn next_due(&self) -> Result<Option<i64>, NotifyError> {
        self.with_conn(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_attempt_ms) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub(super) async fn record(&self, id: i64, outcome: Outcome) -> Result<u64, NotifyError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match outcome {
                Outcome::Sent { at } => tx.execute(
                    "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_ms = ?2, \
                     last_error = NULL WHERE id = ?1",
                    params![id, at],
                )?,
                Outcome::Retry { next, error } => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, \
                     last_error = ?3 WHERE id = ?1",
                    params![id, next, error],
                )?,
                Outcome::Failed { error, counted } => tx.execute(
                    &format!(
                        "UPDATE outbox SET status = 'failed', attempts = attempts + {}, \
                         last_error = ?2 WHERE id = ?1",
                        u8::from(counted)
                    ),
                    params![id, error],
                )?,
            };
            tx.commit()?;
            pending_count(conn)
        })
        .await
    }

    pub(super) async fn pending(&self) -> Result<u64, NotifyError> {
        self.with_conn(|conn| pending_count(conn)).await
    }
}

fn pending_count(conn: &Connection) -> Result<u64, NotifyError> {
    let pending: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE status = 'pending'",
        [],
        |r| r.get(0),
    )?;
    Ok(pending.max(0) as u64)
}

const ENTRY_COLUMNS: &str = "SELECT id, group_key, receiver, created_ms, recipients, subject, \
                             status, attempts, next_attempt_ms, last_error, sent_ms FROM outbox";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let recipients: String = r.get(4)?;
    let envelope: StoredEnvelope = serde_json::from_str(&recipients).unwrap_or(StoredEnvelope {
        from: String::new(),
        to: Vec::new(),
    });
    Ok(OutboxEntry {
        id: r.get(0)?,
        group_key: r.get(1)?,
        receiver: r.get(2)?,
        created_ms: r.get(3)?,
        from: envelope.from,
        to: envelope.to,
        subject: r.get(5)?,
        status: EntryStatus::parse(&r.get::<_, String>(6)?),
        attempts: r.get::<_, i64>(7)?.max(0) as u32,
        next_attempt_ms: r.get(8)?,
        last_error: r.get(9)?,
        sent_ms: r.get(10)?,
    })
}

pub(super) struct DueRow {
    pub(super) id: i64,
    pub(super) group_key: String,
    pub(super) created_ms: i64,
    pub(super) recipients: String,
    pub(super) message: Vec<u8>,
    pub(super) attempts: u32,
}

pub(super) enum Outcome {
    Sent {
        at: i64,
    },
    Retry {
        next: i64,
        error: String,
    },
    /// `counted`: whether an attempt was made (not for an expired row).
    Failed {
        error: String,
        counted: bool,
    },
}
