//! The durable outbox: every notification is composed and stored (full message bytes and
//! envelope) in the SQLite `outbox` table *before* any delivery attempt, then sent by
//! [`run_sender`] with retries.
//!
//! - Success marks the row `sent`. A transient failure (connection refused, timeout, TLS, an
//!   SMTP 4xx reply) schedules a retry after a delay drawn with full jitter,
//!   `U(0, min(cap, base·2^attempts))`; a permanent SMTP 5xx reply marks the row `failed` and it
//!   is never retried; a row still pending after [`RetryPolicy::max_age`] fails as `expired`.
//! - Delivery is at least once: the row is marked `sent` only after the server accepted the
//!   message, so a crash in between re-sends it after the restart; pending rows are picked up
//!   by the next sender.
//! - The outbox has its own connection to the database file (WAL, `busy_timeout`,
//!   `synchronous = FULL`, writes in `BEGIN IMMEDIATE`); all SQLite and file work runs on
//!   tokio's blocking pool. Run one sender per database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::AsyncTransport;
use lettre::address::Envelope;
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::transport::{self, SmtpTransport};
use super::{Delivery, Notification, NotifyError, email};
use crate::self_metrics;
use crate::store::{Commits, Db};
use crate::vocab::now_ms;

/// When to retry and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The delay bound of the first retry; doubles with each attempt.
    pub base: Duration,
    /// The largest delay bound.
    pub cap: Duration,
    /// A message still undelivered this long after it was queued fails as `expired`.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay after `attempts` failed attempts: `min(cap, base·2^attempts)`.
    pub fn bound(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.min(30));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from `0..=bound(attempts)` (full jitter).
    pub fn delay(&self, attempts: u32) -> Duration {
        let bound = self.bound(attempts).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=bound))
    }
}

/// How [`run_sender_with`] works.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderOptions {
    pub retry: RetryPolicy,
    /// Longest sleep between looks at the table (rows queued by another process, clock
    /// jumps); [`Outbox::enqueue`] wakes the sender at once.
    pub poll_interval: Duration,
    /// Rows taken per look.
    pub batch: usize,
    /// Extra PEM root certificates trusted for SMTP TLS (a private CA, a test certificate).
    pub extra_roots: Vec<Vec<u8>>,
    /// Sent messages are deleted this long after they were queued (checked hourly).
    pub keep_sent: Duration,
    /// Failed messages are kept longer, for the dashboard and for investigation.
    pub keep_failed: Duration,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(5),
            batch: 16,
            extra_roots: Vec::new(),
            keep_sent: Duration::from_secs(7 * 24 * 3600),
            keep_failed: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

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
struct StoredEnvelope {
    from: String,
    to: Vec<String>,
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

    fn note_error(&self, error: &str) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((error.to_string(), now_ms()));
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<DueRow>, NotifyError> {
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
    async fn next_due(&self) -> Result<Option<i64>, NotifyError> {
        self.with_conn(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_attempt_ms) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn record(&self, id: i64, outcome: Outcome) -> Result<u64, NotifyError> {
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

    async fn pending(&self) -> Result<u64, NotifyError> {
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

struct DueRow {
    id: i64,
    group_key: String,
    created_ms: i64,
    recipients: String,
    message: Vec<u8>,
    attempts: u32,
}

enum Outcome {
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

enum SendError {
    Transient(String),
    Permanent(String),
}

enum Sender {
    Smtp(Box<SmtpTransport>),
    Files(PathBuf),
}

/// `run_sender_with` and the default [`SenderOptions`].
pub async fn run_sender(outbox: Outbox, delivery: Delivery, stop: watch::Receiver<bool>) {
    run_sender_with(outbox, delivery, SenderOptions::default(), stop).await
}

/// Sends due messages until `stop` turns true (or its sender is dropped). Finishes the
/// message in flight, then returns; what is still pending waits for the next start.
pub async fn run_sender_with(
    outbox: Outbox,
    delivery: Delivery,
    options: SenderOptions,
    mut stop: watch::Receiver<bool>,
) {
    let sender = match &delivery {
        Delivery::Smtp(settings) => {
            match transport::build_with_roots(settings, &options.extra_roots) {
                Ok(t) => {
                    tracing::info!("notifications go to SMTP {}", transport::describe(settings));
                    Sender::Smtp(Box::new(t))
                }
                Err(e) => {
                    let error = format!("SMTP transport not usable: {e}");
                    tracing::error!("{error}; notifications stay queued");
                    outbox.note_error(&error);
                    let _ = stop.wait_for(|stopped| *stopped).await;
                    return;
                }
            }
        }
        Delivery::Outbox(dir) => {
            tracing::info!(
                "no SMTP server configured: notifications are written as .eml files to {}",
                dir.display()
            );
            Sender::Files(dir.clone())
        }
    };
    let batch = options.batch.max(1);
    if let Ok(pending) = outbox.pending().await {
        self_metrics::outbox_pending(pending);
        if pending > 0 {
            tracing::info!(pending, "resuming the delivery of queued notifications");
        }
    }
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if last_prune.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(std::time::Instant::now());
            match outbox.prune(options.keep_sent, options.keep_failed).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "old outbox rows deleted"),
                Err(e) => tracing::warn!("outbox prune failed: {e}"),
            }
        }
        let now = now_ms();
        let due = match outbox.due(now, batch).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!("outbox read failed: {e}");
                outbox.note_error(&format!("outbox read failed: {e}"));
                Vec::new()
            }
        };
        let full = due.len() == batch;
        for row in due {
            if *stop.borrow() {
                break;
            }
            let id = row.id;
            let outcome = deliver(&sender, &options.retry, row).await;
            let reason = match &outcome {
                Outcome::Sent { .. } => {
                    self_metrics::notification_sent();
                    tracing::info!(id, "notification delivered");
                    None
                }
                Outcome::Retry { next, error } => {
                    self_metrics::notification_retry();
                    tracing::warn!(
                        id,
                        retry_in_ms = next - now_ms(),
                        "notification delivery failed, will retry: {error}"
                    );
                    outbox.note_error(error);
                    None
                }
                Outcome::Failed { error, counted } => {
                    let reason = if *counted { "permanent" } else { "expired" };
                    tracing::error!(id, reason, "notification not delivered: {error}");
                    outbox.note_error(error);
                    Some(reason)
                }
            };
            if let Some(reason) = reason {
                self_metrics::notification_failed(reason);
            }
            match outbox.record(id, outcome).await {
                Ok(pending) => self_metrics::outbox_pending(pending),
                Err(e) => tracing::error!(id, "outbox update failed: {e}"),
            }
        }
        if full {
            continue;
        }
        let wait = match outbox.next_due().await {
            Ok(Some(next)) => Duration::from_millis((next - now_ms()).max(0) as u64),
            _ => options.poll_interval,
        }
        .min(options.poll_interval);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = outbox.inner.wake.notified() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    if let Sender::Smtp(transport) = &sender {
        transport.shutdown().await;
    }
}

async fn deliver(sender: &Sender, retry: &RetryPolicy, row: DueRow) -> Outcome {
    let now = now_ms();
    if now - row.created_ms > retry.max_age.as_millis() as i64 {
        return Outcome::Failed {
            error: format!("expired after {} attempts", row.attempts),
            counted: false,
        };
    }
    let result = match sender {
        Sender::Smtp(transport) => send_smtp(transport, &row).await,
        Sender::Files(dir) => write_eml(dir, &row).await,
    };
    match result {
        Ok(()) => Outcome::Sent { at: now_ms() },
        Err(SendError::Permanent(error)) => Outcome::Failed {
            error,
            counted: true,
        },
        Err(SendError::Transient(error)) => Outcome::Retry {
            next: now_ms() + retry.delay(row.attempts).as_millis() as i64,
            error,
        },
    }
}

async fn send_smtp(transport: &SmtpTransport, row: &DueRow) -> Result<(), SendError> {
    let stored: StoredEnvelope = serde_json::from_str(&row.recipients)
        .map_err(|e| SendError::Permanent(format!("stored envelope unreadable: {e}")))?;
    let parse = |a: &str| {
        a.parse()
            .map_err(|e| SendError::Permanent(format!("stored address {a:?}: {e}")))
    };
    let from = if stored.from.is_empty() {
        None
    } else {
        Some(parse(&stored.from)?)
    };
    let to = stored
        .to
        .iter()
        .map(|a| parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envelope =
        Envelope::new(from, to).map_err(|e| SendError::Permanent(format!("envelope: {e}")))?;
    match transport.send_raw(&envelope, &row.message).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP: {e}"))),
        Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
    }
}

/// `<id>-<group>.eml`, the group reduced to safe file-name characters.
pub fn eml_file_name(id: i64, group_key: &str) -> String {
    let mut group = String::new();
    for c in group_key.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
            c
        } else {
            '_'
        };
        if !(c == '_' && group.ends_with('_')) {
            group.push(c);
        }
        if group.len() >= 80 {
            break;
        }
    }
    let group = group.trim_matches(|c| c == '_' || c == '.');
    if group.is_empty() {
        format!("{id}.eml")
    } else {
        format!("{id}-{group}.eml")
    }
}

async fn write_eml(dir: &Path, row: &DueRow) -> Result<(), SendError> {
    let dir = dir.to_path_buf();
    let name = eml_file_name(row.id, &row.group_key);
    let message = row.message.clone();
    let id = row.id;
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&dir)?;
        let temp = dir.join(format!(".{id}.eml.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&message)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(name))
    })
    .await
    .map_err(|e| SendError::Transient(e.to_string()))?
    .map_err(|e| SendError::Transient(format!("writing the .eml file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bound_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_age: Duration::from_secs(60),
        };
        assert_eq!(policy.bound(0), Duration::from_millis(100));
        assert_eq!(policy.bound(1), Duration::from_millis(200));
        assert_eq!(policy.bound(3), Duration::from_millis(800));
        assert_eq!(policy.bound(4), Duration::from_secs(1));
        assert_eq!(policy.bound(200), Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_full_and_bounded() {
        let policy = RetryPolicy {
            base: Duration::from_millis(1000),
            cap: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
        };
        let delays: Vec<Duration> = (0..500).map(|_| policy.delay(2)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        // Full jitter reaches both ends of the range.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(3600)));
    }

    #[test]
    fn eml_names_are_safe() {
        assert_eq!(
            eml_file_name(7, "route0/{alertname=\"High\"}"),
            "7-route0_alertname_High.eml"
        );
        assert_eq!(eml_file_name(8, "../../etc/passwd"), "8-etc_passwd.eml");
        assert_eq!(eml_file_name(9, "///"), "9.eml");
        assert!(eml_file_name(1, &"x".repeat(500)).len() < 100);
    }
}
