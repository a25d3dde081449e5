//! The ingest pipeline between receivers and store: a bounded queue (counted in spans and
//! points, and in the bytes they hold, against the memory budget), one task that owns the
//! aggregator and flushes it to the writer, the view of not-yet-stored data that queries merge
//! in, and the bound on acknowledged data that is not yet durable ([`Durability`]).
//!
//! The task never waits on the writer: a flush the writer cannot take yet stays in memory
//! (queries still see it) while the aggregator keeps folding new data into its windows, and
//! the receivers stop acknowledging once the unwritten data reaches its bound. So a slow or
//! failing disk throttles intake; it never blocks a stage or drops acknowledged data.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::aggregate::totals::TotalsSnapshot;
use crate::aggregate::{Aggregator, AggregatorStats, FlushBatch};
use crate::budget::{MemoryBudget, OverBudget, Part, Reservation};
use crate::memsize::HeapSize;
use crate::model::IngestBatch;
use crate::self_metrics;
use crate::store::WriterHandle;
use crate::store::writer::TryFlushError;
use crate::vocab::now_ms;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the ingest queue is full")]
    Full,
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error("{0}")]
    Behind(Behind),
    #[error("redline is shutting down")]
    Closed,
}

/// Why acknowledged data that is not yet durable has reached its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// More spans and points wait to be written than `max_unflushed_items`.
    Items { unwritten: u64, limit: u64 },
    /// Data waits, and the store has not committed for longer than the lag allowed.
    Lag { seconds: u64 },
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behind::Items { unwritten, limit } => write!(
                f,
                "redline is behind on writing: {unwritten} acknowledged spans and points are \
                 not stored yet (limit {limit}), retry later"
            ),
            Behind::Lag { seconds } => write!(
                f,
                "redline is behind on writing: nothing was stored for {seconds} s, retry later"
            ),
        }
    }
}

/// How much acknowledged data may be lost on a crash: every acknowledged span and point is
/// counted until the flush holding it is committed, and receivers stop acknowledging when
/// either bound is reached. A `kill -9` therefore loses at most `max_items` spans and points,
/// all acknowledged within `max_lag` plus one flush interval of the last commit.
#[derive(Debug)]
pub struct Durability {
    max_items: u64,
    max_lag_ms: i64,
    unwritten: AtomicU64,
    /// The last commit, or when data began to wait after none did.
    last_progress_ms: AtomicI64,
}

impl Durability {
    pub fn new(max_items: u64, max_lag: Duration) -> Arc<Self> {
        Arc::new(Durability {
            max_items,
            max_lag_ms: max_lag.as_millis().min(i64::MAX as u128) as i64,
            unwritten: AtomicU64::new(0),
            last_progress_ms: AtomicI64::new(now_ms()),
        })
    }

    /// Acknowledged spans and points not yet committed.
    pub fn unwritten(&self) -> u64 {
        self.unwritten.load(Ordering::Relaxed)
    }

    /// Whether `items` more may be acknowledged at `now_ms`.
    pub fn check(&self, items: u64, now_ms: i64) -> Result<(), Behind> {
        let unwritten = self.unwritten();
        if unwritten > 0 && unwritten.saturating_add(items) > self.max_items {
            return Err(Behind::Items {
                unwritten,
                limit: self.max_items,
            });
        }
        let waited = now_ms - self.last_progress_ms.load(Ordering::Relaxed);
        if unwritten > 0 && waited > self.max_lag_ms {
            return Err(Behind::Lag {
                seconds: (waited / 1000) as u64,
            });
        }
        Ok(())
    }

    fn acknowledged(&self, items: u64, now_ms: i64) {
        if self.unwritten.fetch_add(items, Ordering::Relaxed) == 0 {
            self.last_progress_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Takes back items acknowledged and then refused after all (the queue closed meanwhile).
    fn withdrawn(&self, items: u64) {
        self.unwritten.fetch_sub(items, Ordering::Relaxed);
    }

    fn written(&self, items: u64, now_ms: i64) {
        self.unwritten.fetch_sub(items, Ordering::Relaxed);
        self.last_progress_ms.store(now_ms, Ordering::Relaxed);
    }
}

struct QueuedBatch {
    batch: IngestBatch,
    /// Hold the batch's place in the queue until the aggregator has taken it.
    _items: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _memory: Reservation,
}

/// The queue's byte cap is kept in KiB so that any size fits a semaphore's permits.
const BYTES_PER_PERMIT: usize = 1024;

/// The sending side of the ingest queue, cloned into every receiver.
#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<QueuedBatch>,
    permits: Arc<Semaphore>,
    capacity: usize,
    byte_permits: Arc<Semaphore>,
    byte_capacity_permits: usize,
    durability: Arc<Durability>,
}

impl IngestQueue {
    /// Enqueues without waiting, moving the request's `memory` into the queue's part of the
    /// budget: a full queue, a spent budget or unwritten data at its bound is the receiver's
    /// cue to answer 503/UNAVAILABLE. Once this returns `Ok` the batch is acknowledged.
    pub fn try_submit(&self, batch: IngestBatch, memory: Reservation) -> Result<(), SubmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        let item_count = batch.item_count() as u64;
        let now = now_ms();
        self.durability
            .check(item_count, now)
            .map_err(SubmitError::Behind)?;
        let items = (item_count as usize).clamp(1, self.capacity) as u32;
        let held_bytes = batch.heap_bytes();
        let kib = held_bytes
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
        let memory = memory.transfer(Part::Queue, held_bytes)?;
        // Counted before it can be written, so a fast commit never finds it missing.
        self.durability.acknowledged(item_count, now);
        let sent = self.tx.try_send(QueuedBatch {
            batch,
            _items: items,
            _bytes: bytes,
            _memory: memory,
        });
        if let Err(e) = sent {
            self.durability.withdrawn(item_count);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            });
        }
        self.report_depth();
        Ok(())
    }

    pub fn depth(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn report_depth(&self) {
        self_metrics::queue_depth(self.depth(), self.capacity);
    }
}

/// A flush handed to the writer (or waiting for it to have room), until committed.
struct InFlight {
    seq: u64,
    batch: Arc<FlushBatch>,
    items: u64,
    bytes: usize,
}

struct LiveState {
    aggregator: Aggregator,
    /// The sequence number the current unflushed data will be stored under.
    next_seq: u64,
    /// Acknowledged spans and points folded into the aggregator since the last flush.
    items: u64,
    /// Flushes taken and not yet committed, oldest first.
    in_flight: Vec<InFlight>,
}

/// Shared view of data not yet in SQLite. Short critical sections only; never held across await.
pub struct Live {
    state: Mutex<LiveState>,
    budget: Arc<MemoryBudget>,
    durability: Arc<Durability>,
}

impl Live {
    pub fn new(
        aggregator: Aggregator,
        last_flushed_seq: u64,
        budget: Arc<MemoryBudget>,
        durability: Arc<Durability>,
    ) -> Self {
        Live {
            state: Mutex::new(LiveState {
                aggregator,
                next_seq: last_flushed_seq + 1,
                items: 0,
                in_flight: Vec::new(),
            }),
            budget,
            durability,
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
        let mut parts: Vec<(u64, Arc<FlushBatch>)> = state
            .in_flight
            .iter()
            .map(|f| (f.seq, f.batch.clone()))
            .collect();
        parts.push((state.next_seq, Arc::new(state.aggregator.snapshot(service))));
        parts
    }

    pub fn stats(&self) -> AggregatorStats {
        self.lock().aggregator.stats()
    }

    /// RED totals per endpoint since start, unflushed data included.
    pub fn red_totals(&self) -> TotalsSnapshot {
        self.lock().aggregator.totals().snapshot()
    }

    /// The instances (`service.instance.id`) `service` was heard from lately.
    pub fn instances(&self, service: &str) -> crate::aggregate::instances::InstancesView {
        self.lock().aggregator.instances(service)
    }

    /// Acknowledged spans and points not yet committed.
    pub fn unwritten(&self) -> u64 {
        self.durability.unwritten()
    }

    fn apply(&self, batch: IngestBatch) {
        let items = batch.item_count() as u64;
        let mut state = self.lock();
        state.items += items;
        state.aggregator.apply(batch, now_ms());
        self.report_memory(&state);
    }

    fn report_memory(&self, state: &LiveState) {
        let memory = state.aggregator.memory();
        self.budget.set(Part::Aggregator, memory.windows_and_keys);
        self.budget.set(Part::Traces, memory.traces);
        self.budget.set(
            Part::Writer,
            state.in_flight.iter().map(|f| f.bytes).sum::<usize>(),
        );
    }

    fn take_flush(&self) -> Option<(u64, Arc<FlushBatch>)> {
        let mut state = self.lock();
        let batch = state.aggregator.take_flush(now_ms());
        if batch.is_empty() && state.items == 0 {
            self.report_memory(&state);
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let items = std::mem::take(&mut state.items);
        let bytes = batch.heap_bytes();
        let batch = Arc::new(batch);
        state.in_flight.push(InFlight {
            seq,
            batch: batch.clone(),
            items,
            bytes,
        });
        self.report_memory(&state);
        Some((seq, batch))
    }

    /// Called by the writer once `seq` is durable.
    pub fn committed(&self, seq: u64) {
        let mut state = self.lock();
        let written: u64 = state
            .in_flight
            .iter()
            .filter(|f| f.seq <= seq)
            .map(|f| f.items)
            .sum();
        state.in_flight.retain(|f| f.seq > seq);
        self.durability.written(written, now_ms());
        self.report_memory(&state);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    pub queue_capacity: usize,
    pub flush_interval: Duration,
    pub retention_interval: Duration,
    /// How long a stop may keep trying to store what is left (a failing disk).
    pub stop_deadline: Duration,
}

/// Creates the queue, holding at most `capacity` spans and points and `capacity_bytes` of
/// their memory; the returned receiver goes to [`run`].
pub fn queue(
    capacity: usize,
    capacity_bytes: usize,
    durability: Arc<Durability>,
) -> (IngestQueue, Receiver) {
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
            durability,
        },
        Receiver(rx),
    )
}

pub struct Receiver(mpsc::Receiver<QueuedBatch>);

/// Runs until `stop` fires: then takes no new batches, drains what was queued (all of it was
/// acknowledged), flushes, and waits until the writer has stored everything (or the stop
/// deadline passes on a store that cannot write).
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
    let mut flusher = Flusher::default();
    loop {
        tokio::select! {
            queued = rx.0.recv() => match queued {
                Some(queued) => apply(&live, queued),
                None => break,
            },
            _ = flush_tick.tick() => flusher.flush(&live, &writer),
            _ = retention_tick.tick() => {
                if let Err(e) = writer.try_retention(now_ms()) {
                    tracing::debug!(error = ?e, "retention skipped");
                }
            }
            _ = &mut stop => break,
        }
    }
    rx.0.close();
    while let Some(queued) = rx.0.recv().await {
        apply(&live, queued);
    }
    flusher.flush_last(&live, &writer);
    writer.close_within(config.stop_deadline).await;
}

/// Folds one queued batch into the aggregator. A panic there (a bug, never input: input is
/// validated at conversion) costs that batch, counted, and not the stage.
fn apply(live: &Live, queued: QueuedBatch) {
    let QueuedBatch { batch, .. } = queued;
    if std::panic::catch_unwind(AssertUnwindSafe(|| live.apply(batch))).is_err() {
        tracing::error!("aggregating a batch panicked; the batch is dropped");
        self_metrics::stage_panicked("pipeline");
    }
}

/// Hands flushes to the writer in order, never waiting for it.
#[derive(Default)]
struct Flusher {
    /// A flush the writer had no room for; no newer one is taken until it is handed over.
    waiting: Option<(u64, Arc<FlushBatch>)>,
}

impl Flusher {
    fn flush(&mut self, live: &Live, writer: &WriterHandle) {
        live.stats().report();
        if self.waiting.is_none() {
            self.waiting = live.take_flush();
        }
        let Some((seq, batch)) = self.waiting.take() else {
            return;
        };
        match writer.try_flush(seq, batch) {
            Ok(()) => {}
            Err(TryFlushError::Busy(batch)) => self.waiting = Some((seq, batch)),
            Err(TryFlushError::Closed) => {
                tracing::error!(seq, "the store writer has stopped; flush not written");
            }
        }
    }

    /// Hands over everything left before the writer closes, whatever its queue holds.
    fn flush_last(&mut self, live: &Live, writer: &WriterHandle) {
        let last = live.take_flush();
        for (seq, batch) in self.waiting.take().into_iter().chain(last) {
            if writer.try_flush_last(seq, batch).is_err() {
                tracing::error!(seq, "the store writer has stopped; flush not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_items_are_bounded_in_count_and_in_time() {
        let durability = Durability::new(100, Duration::from_secs(5));
        let t0 = 1_000_000;
        assert_eq!(durability.check(1_000, t0), Ok(()), "nothing waits yet");
        durability.acknowledged(60, t0);
        assert_eq!(durability.check(40, t0), Ok(()));
        assert!(matches!(
            durability.check(41, t0),
            Err(Behind::Items { unwritten: 60, .. })
        ));
        // Data has waited 6 s without a commit: the lag bound refuses.
        assert!(matches!(
            durability.check(1, t0 + 6_000),
            Err(Behind::Lag { seconds: 6 })
        ));
        durability.written(60, t0 + 6_000);
        assert_eq!(durability.check(100, t0 + 6_000), Ok(()));
        // Once all is written, a long quiet spell does not count as lag.
        assert_eq!(durability.check(1, t0 + 60_000), Ok(()));
        durability.acknowledged(1, t0 + 60_000);
        assert_eq!(durability.check(1, t0 + 61_000), Ok(()));
    }
}
