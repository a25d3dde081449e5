//! Delivery of the outbox's messages: [`run_sender`] takes due rows, sends each over SMTP (or
//! writes it as an `.eml` file), and records the outcome — sent, a retry after a delay drawn
//! with full jitter, or failed for good. Where mail goes follows the rules file: each reload
//! publishes a [`Delivery`], and the next message goes by it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::AsyncTransport;
use lettre::address::Envelope;
use rand::Rng;
use tokio::sync::watch;

use super::Delivery;
use super::outbox::{DueRow, Outbox, Outcome, StoredEnvelope};
use super::transport::{self, SmtpTransport};
use crate::self_metrics;
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

enum SendError {
    Transient(String),
    Permanent(String),
}

enum Sender {
    Smtp(Box<SmtpTransport>),
    Files(PathBuf),
    /// Nothing is sent: the delivery is held, or its SMTP settings are not usable.
    Idle,
}

impl Sender {
    fn build(delivery: &Delivery, options: &SenderOptions, outbox: &Outbox) -> Sender {
        match delivery {
            Delivery::Smtp(settings) => {
                match transport::build_with_roots(settings, &options.extra_roots) {
                    Ok(t) => {
                        tracing::info!(
                            "notifications go to SMTP {}",
                            transport::describe(settings)
                        );
                        Sender::Smtp(Box::new(t))
                    }
                    Err(e) => {
                        let error = format!("SMTP transport not usable: {e}");
                        tracing::error!("{error}; notifications stay queued");
                        outbox.note_error(&error);
                        Sender::Idle
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
            Delivery::Held => {
                tracing::debug!("notifications stay queued until the alert rules file loads");
                Sender::Idle
            }
        }
    }

    async fn close(self) {
        if let Sender::Smtp(transport) = self {
            transport.shutdown().await;
        }
    }
}

/// [`run_sender_following`] with the default [`SenderOptions`].
pub async fn run_sender(
    outbox: Outbox,
    delivery: watch::Receiver<Delivery>,
    stop: watch::Receiver<bool>,
) {
    run_sender_following(outbox, delivery, SenderOptions::default(), stop).await
}

/// [`run_sender_following`] with a delivery that never changes.
pub async fn run_sender_with(
    outbox: Outbox,
    delivery: Delivery,
    options: SenderOptions,
    stop: watch::Receiver<bool>,
) {
    let (_fixed, delivery) = watch::channel(delivery);
    run_sender_following(outbox, delivery, options, stop).await
}

/// Sends due messages until `stop` turns true (or its sender is dropped). Finishes the
/// message in flight, then returns; what is still pending waits for the next start. A new
/// value of `delivery` (the rules file reloaded) takes effect before the next message.
pub async fn run_sender_following(
    outbox: Outbox,
    mut delivery: watch::Receiver<Delivery>,
    options: SenderOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut sender = Sender::build(&delivery.borrow_and_update(), &options, &outbox);
    let batch = options.batch.max(1);
    if let Ok(pending) = outbox.pending().await {
        self_metrics::outbox_pending(pending);
        if pending > 0 {
            tracing::info!(pending, "resuming the delivery of queued notifications");
        }
    }
    let mut last_prune: Option<std::time::Instant> = None;
    // Set once the delivery's publisher is gone, after which the delivery stays as it is.
    let mut fixed = false;
    let mut changed = false;
    loop {
        if *stop.borrow() {
            break;
        }
        if std::mem::take(&mut changed) || delivery.has_changed().unwrap_or(false) {
            let next = delivery.borrow_and_update().clone();
            std::mem::replace(&mut sender, Sender::Idle).close().await;
            sender = Sender::build(&next, &options, &outbox);
        }
        if last_prune.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(std::time::Instant::now());
            match outbox.prune(options.keep_sent, options.keep_failed).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "old outbox rows deleted"),
                Err(e) => tracing::warn!("outbox prune failed: {e}"),
            }
        }
        if matches!(sender, Sender::Idle) {
            tokio::select! {
                seen = delivery.changed(), if !fixed => (changed, fixed) = (seen.is_ok(), seen.is_err()),
                stopped = stop.changed() => {
                    if stopped.is_err() {
                        break;
                    }
                }
            }
            continue;
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
            _ = outbox.woken() => {}
            seen = delivery.changed(), if !fixed => (changed, fixed) = (seen.is_ok(), seen.is_err()),
            stopped = stop.changed() => {
                if stopped.is_err() {
                    break;
                }
            }
        }
    }
    sender.close().await;
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
        Sender::Idle => Err(SendError::Transient("no delivery configured".into())),
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
