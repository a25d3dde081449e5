//! The forwarding queue: accepted OTLP requests (their protobuf bytes) waiting for the
//! upstream, bounded in bytes. The receivers only ever `offer`: a request that does not fit is
//! dropped and counted at once, so ingest never waits on the upstream. A request taken for
//! sending stays counted in the bound until its [`Lease`] ends (sent, refused, or abandoned),
//! so the bound covers everything forwarding holds, retries included.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::self_metrics::{self, Signal};

/// One accepted request, as protobuf bytes.
#[derive(Debug, Clone)]
pub struct Item {
    pub signal: Signal,
    pub body: Bytes,
    /// Spans, data points or log records in it, for the counters.
    pub items: u64,
}

/// Why items were never forwarded (the `reason` label of the drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was at its bytes when the request was accepted.
    QueueFull,
    /// The upstream refused the request for good.
    Rejected,
    /// Not delivered by the stop's deadline (or its sending was abandoned).
    Shutdown,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

struct State {
    waiting: VecDeque<Item>,
    /// Bytes of the waiting requests and of those being sent.
    bytes: usize,
}

/// Forwarded and dropped items since start, by signal, for the health panel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: [u64; 3],
    pub dropped: [u64; 3],
}

pub struct ForwardQueue {
    /// The upstream's name on `/metrics`.
    upstream: String,
    state: Mutex<State>,
    max_bytes: usize,
    ready: Notify,
    sent: [AtomicU64; 3],
    dropped: [AtomicU64; 3],
}

impl ForwardQueue {
    pub fn new(upstream: String, max_bytes: usize) -> Arc<Self> {
        Arc::new(ForwardQueue {
            upstream,
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
            ready: Notify::new(),
            sent: Default::default(),
            dropped: Default::default(),
        })
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock: every change
        // is one push or pop with its byte count.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, or drops and counts it when it does not fit. Never waits.
    ///
    /// The queued body is a copy: a received body is a slice of its connection's receive
    /// buffer (up to 256 KiB for gRPC), which a queued slice would keep whole, so the memory
    /// held would exceed the bytes counted by that much per waiting request.
    pub fn offer(&self, item: Item) -> bool {
        let len = item.body.len();
        {
            let mut state = self.state();
            if state.bytes.saturating_add(len) > self.max_bytes {
                drop(state);
                self.count_dropped(item.signal, DropReason::QueueFull, item.items);
                return false;
            }
            state.bytes += len;
        }
        let item = Item {
            body: Bytes::copy_from_slice(&item.body),
            ..item
        };
        self.state().waiting.push_back(item);
        self.ready.notify_one();
        true
    }

    /// The oldest waiting request, for sending; its bytes stay counted until the lease ends.
    pub fn take(self: &Arc<Self>) -> Option<Lease> {
        let item = self.state().waiting.pop_front()?;
        Some(Lease {
            queue: self.clone(),
            item,
            settled: false,
        })
    }

    /// Resolves when a request may have been queued since the last call.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Bytes waiting and being sent.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn totals(&self) -> Totals {
        let get =
            |counters: &[AtomicU64; 3]| counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        Totals {
            sent: get(&self.sent),
            dropped: get(&self.dropped),
        }
    }

    /// Drops and counts every waiting request (at the end of a stop).
    pub fn drop_waiting(self: &Arc<Self>) {
        while let Some(lease) = self.take() {
            lease.dropped(DropReason::Shutdown);
        }
    }

    fn count_dropped(&self, signal: Signal, reason: DropReason, items: u64) {
        self.dropped[signal as usize].fetch_add(items, Ordering::Relaxed);
        self_metrics::forward_dropped(&self.upstream, signal, reason.as_str(), items);
    }
}

/// A request taken for sending. Ending it (sent, dropped, or simply dropped by an aborted
/// task) gives its bytes back to the bound; one dropped unsettled counts as `shutdown`.
pub struct Lease {
    queue: Arc<ForwardQueue>,
    item: Item,
    settled: bool,
}

impl Lease {
    pub fn item(&self) -> &Item {
        &self.item
    }

    pub fn upstream(&self) -> &str {
        &self.queue.upstream
    }

    pub fn sent(mut self) {
        self.settled = true;
        let Item { signal, items, .. } = self.item;
        self.queue.sent[signal as usize].fetch_add(items, Ordering::Relaxed);
        self_metrics::forward_sent(&self.queue.upstream, signal, items);
    }

    pub fn dropped(mut self, reason: DropReason) {
        self.settled = true;
        self.queue
            .count_dropped(self.item.signal, reason, self.item.items);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            self.queue
                .count_dropped(self.item.signal, DropReason::Shutdown, self.item.items);
        }
        let mut state = self.queue.state();
        state.bytes = state.bytes.saturating_sub(self.item.body.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: usize, items: u64) -> Item {
        Item {
            signal: Signal::Traces,
            body: Bytes::from(vec![0; bytes]),
            items,
        }
    }

    #[test]
    fn requests_beyond_the_bytes_are_dropped_and_counted_and_in_flight_bytes_count() {
        let queue = ForwardQueue::new("test-bound".into(), 250);
        assert!(queue.offer(item(100, 1)));
        assert!(queue.offer(item(100, 2)));
        // 300 > 250: the newest is dropped, the queue keeps what it holds.
        assert!(!queue.offer(item(100, 4)));
        assert_eq!(queue.bytes(), 200);
        assert_eq!(queue.totals().dropped[Signal::Traces as usize], 4);
        // Taken for sending, a request still holds its bytes...
        let lease = queue.take().expect("a request waits");
        assert_eq!(lease.item().items, 1);
        assert!(!queue.offer(item(100, 8)));
        assert_eq!(queue.bytes(), 200);
        // ...until it is settled.
        lease.sent();
        assert_eq!(queue.bytes(), 100);
        assert!(queue.offer(item(150, 16)));
        assert_eq!(queue.bytes(), 250);
        let totals = queue.totals();
        assert_eq!(totals.sent[Signal::Traces as usize], 1);
        assert_eq!(totals.dropped[Signal::Traces as usize], 12);
    }

    #[test]
    fn a_request_larger_than_the_bound_never_fits() {
        let queue = ForwardQueue::new("test-large".into(), 99);
        assert!(!queue.offer(item(100, 3)));
        assert_eq!(queue.bytes(), 0);
        assert!(queue.take().is_none());
    }

    #[test]
    fn an_abandoned_lease_gives_its_bytes_back_and_counts_as_shutdown() {
        let queue = ForwardQueue::new("test-abandoned".into(), 1000);
        assert!(queue.offer(item(100, 5)));
        assert!(queue.offer(item(100, 7)));
        drop(queue.take());
        assert_eq!(queue.bytes(), 100);
        queue.drop_waiting();
        assert_eq!(queue.bytes(), 0);
        assert_eq!(queue.totals().dropped[Signal::Traces as usize], 12);
    }
}
