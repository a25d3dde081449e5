//! Write-behind view counters: each product view is queued (bounded; a full queue makes the
//! request wait — backpressure, never a silent drop), coalesced by product and written in one
//! transaction per batch. Shutdown drains the queue and flushes, so every view that was
//! acknowledged to a client reaches the database.

use crate::db::{Db, DbError, queries};
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Flush once this many distinct products are pending, even before the interval.
const MAX_BATCH: usize = 1000;

pub struct ViewCounter {
    tx: mpsc::Sender<i64>,
    stop: Arc<Notify>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("view counter stopped")]
pub struct Stopped;

impl ViewCounter {
    pub fn start(
        db: Db,
        capacity: usize,
        interval: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = oneshot::channel();
        let weak = tx.downgrade();
        if telemetry.metrics_enabled {
            let _gauge = telemetry
                .meter
                .i64_observable_gauge("write_behind.queue.depth")
                .with_unit("{item}")
                .with_callback(move |obs| {
                    if let Some(tx) = weak.upgrade() {
                        obs.observe((tx.max_capacity() - tx.capacity()) as i64, &[]);
                    }
                })
                .build();
        }
        tokio::spawn(run(db, rx, stop.clone(), interval, telemetry, done_tx));
        Arc::new(ViewCounter {
            tx,
            stop,
            done: tokio::sync::Mutex::new(Some(done_rx)),
        })
    }

    /// Queues one view; waits while the queue is full.
    pub async fn record(&self, product_id: i64) -> Result<(), Stopped> {
        self.tx.send(product_id).await.map_err(|_| Stopped)
    }

    /// Stops accepting views, flushes everything queued and waits until it is written.
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        if let Some(done) = self.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

async fn run(
    db: Db,
    mut rx: mpsc::Receiver<i64>,
    stop: Arc<Notify>,
    interval: Duration,
    telemetry: Arc<Telemetry>,
    done: oneshot::Sender<()>,
) {
    let mut pending: HashMap<i64, u64> = HashMap::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            msg = rx.recv() => match msg {
                Some(id) => {
                    *pending.entry(id).or_default() += 1;
                    if pending.len() >= MAX_BATCH {
                        flush(&db, &mut pending, &telemetry).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    flush(&db, &mut pending, &telemetry).await;
                }
            }
        }
    }
    // Drain: closing makes `recv` return what is buffered and then None.
    rx.close();
    while let Some(id) = rx.recv().await {
        *pending.entry(id).or_default() += 1;
    }
    for _ in 0..5 {
        if pending.is_empty() {
            break;
        }
        flush(&db, &mut pending, &telemetry).await;
    }
    let _ = done.send(());
}

/// Writes the pending counts in one transaction; on failure they stay pending for the next try.
async fn flush(db: &Db, pending: &mut HashMap<i64, u64>, telemetry: &Telemetry) {
    let batch = std::mem::take(pending);
    let result: Result<HashMap<i64, u64>, (DbError, HashMap<i64, u64>)> = {
        let b = batch.clone();
        db.write(None, move |sql| queries::add_views(sql, &b))
            .await
            .map(|_| batch.clone())
            .map_err(|e| (e, batch))
    };
    match result {
        Ok(_) => telemetry.m.view_flushes.add(1, &[]),
        Err((e, batch)) => {
            tracing::warn!(error = %e, "view counter flush failed; will retry");
            for (k, v) in batch {
                *pending.entry(k).or_default() += v;
            }
        }
    }
}
