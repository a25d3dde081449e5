//! The ingest pipeline between receivers and store: a bounded queue (counted in spans and
//! points, and in the request bytes they hold, so memory is bounded whatever the batch
//! sizes), one task that owns the aggregator and flushes it to the writer, and the view of
//! not-yet-stored data that queries merge in.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::aggregate::{Aggregator, AggregatorStats, FlushBatch};
use crate::model::IngestBatch;
use crate::self_metrics;
use crate::store::WriterHandle;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("ingest queue is full")]
    Full,
    #[error("redline is shutting down")]
    Closed,
}

struct QueuedBatch {
    batch: IngestBatch,
    /// Hold the batch's place in the queue until the aggregator has taken it.
    _items: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The queue's byte budget is kept in KiB so that any size fits a semaphore's permits.
const BYTES_PER_PERMIT: usize = 1024;

/// The sending side of the ingest queue, cloned into every receiver.
#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<QueuedBatch>,
    permits: Arc<Semaphore>,
    capacity: usize,
    byte_permits: Arc<Semaphore>,
    byte_capacity_permits: usize,
}

impl IngestQueue {
    /// Enqueues without waiting: a full queue is the receiver's cue to answer 503/UNAVAILABLE.
    pub fn try_submit(&self, batch: IngestBatch) -> Result<(), SubmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        let items = batch.item_count().clamp(1, self.capacity) as u32;
        let kib = batch
            .body
            .len()
            .div_ceil(BYTES_PER_PERMIT)
            .clamp(1, self.byte_capacity_permits) as u32;
        let items = self
            .permits
            .clone()
            .try_acquire_many_owned(items)
            .map_err(|_| SubmitError::Full)?;
        let bytes = self
            .byte_permits
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| SubmitError::Full)?;
        self.tx
            .try_send(QueuedBatch {
                batch,
                _items: items,
                _bytes: bytes,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        self.report_depth();
        Ok(())
    }

    pub fn depth(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    fn report_depth(&self) {
        self_metrics::queue_depth(self.depth(), self.capacity);
    }
}

struct LiveState {
    aggregator: Aggregator,
    /// The sequence number the current unflushed data will be stored under.
    next_seq: u64,
    /// Flushes handed to the writer and not yet committed.
    in_flight: Vec<(u64, Arc<FlushBatch>)>,
}

/// Shared view of data not yet in SQLite. Short critical sections only; never held across await.
pub struct Live {
    state: Mutex<LiveState>,
}

impl Live {
    pub fn new(aggregator: Aggregator, last_flushed_seq: u64) -> Self {
        Live {
            state: Mutex::new(LiveState {
                aggregator,
                next_seq: last_flushed_seq + 1,
                in_flight: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Unflushed data with the sequence number each part will be stored under. A reader adds
    /// the parts whose number is above the `flushed_seq` its database snapshot saw.
    pub fn unflushed(&self, service: Option<&str>) -> Vec<(u64, Arc<FlushBatch>)> {
        let state = self.lock();
        let mut parts = state.in_flight.clone();
        parts.push((state.next_seq, Arc::new(state.aggregator.snapshot(service))));
        parts
    }

    pub fn stats(&self) -> AggregatorStats {
        self.lock().aggregator.stats()
    }

    fn apply(&self, batch: IngestBatch) {
        self.lock().aggregator.apply(batch, now_ms());
    }

    fn take_flush(&self) -> Option<(u64, Arc<FlushBatch>)> {
        let mut state = self.lock();
        let batch = state.aggregator.take_flush(now_ms());
        if batch.is_empty() {
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let batch = Arc::new(batch);
        state.in_flight.push((seq, batch.clone()));
        Some((seq, batch))
    }

    /// Called by the writer once `seq` is durable.
    pub fn committed(&self, seq: u64) {
        self.lock().in_flight.retain(|(s, _)| *s > seq);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    pub queue_capacity: usize,
    pub flush_interval: Duration,
    pub retention_interval: Duration,
}

/// Creates the queue, holding at most `capacity` spans and points and `capacity_bytes` of
/// request bodies; the returned receiver goes to [`run`].
pub fn queue(capacity: usize, capacity_bytes: usize) -> (IngestQueue, Receiver) {
    let capacity = capacity.clamp(1, u32::MAX as usize);
    let byte_capacity_permits = capacity_bytes
        .div_ceil(BYTES_PER_PERMIT)
        .clamp(1, u32::MAX as usize);
    let (tx, rx) = mpsc::channel(capacity.min(Semaphore::MAX_PERMITS));
    (
        IngestQueue {
            tx,
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            byte_permits: Arc::new(Semaphore::new(byte_capacity_permits)),
            byte_capacity_permits,
        },
        Receiver(rx),
    )
}

pub struct Receiver(mpsc::Receiver<QueuedBatch>);

/// Runs until `stop` fires: then takes no new batches, drains what was queued (all of it was
/// acknowledged), flushes, and waits until the writer has stored everything.
pub async fn run(
    mut rx: Receiver,
    live: Arc<Live>,
    writer: WriterHandle,
    config: PipelineConfig,
    mut stop: oneshot::Receiver<()>,
) {
    let mut flush_tick = tokio::time::interval(config.flush_interval);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention_tick = tokio::time::interval(config.retention_interval);
    retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            queued = rx.0.recv() => match queued {
                Some(queued) => live.apply(queued.batch),
                None => break,
            },
            _ = flush_tick.tick() => flush(&live, &writer).await,
            _ = retention_tick.tick() => {
                if writer.retention(now_ms()).await.is_err() {
                    break;
                }
            }
            _ = &mut stop => break,
        }
    }
    rx.0.close();
    while let Some(queued) = rx.0.recv().await {
        live.apply(queued.batch);
    }
    flush(&live, &writer).await;
    if let Err(e) = writer.barrier().await {
        tracing::error!(error = %e, "store writer stopped before the final flush");
    }
    writer.close().await;
}

async fn flush(live: &Live, writer: &WriterHandle) {
    self_metrics::aggregator(&live.stats());
    if let Some((seq, batch)) = live.take_flush()
        && let Err(e) = writer.flush(seq, batch).await
    {
        tracing::error!(error = %e, "flush not written");
    }
}
