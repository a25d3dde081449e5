//! One byte budget (`memory_limit`) for everything between the socket and SQLite: request bodies
//! being read and decoded, the ingest queue, the aggregator's state, the trace sampler's buffers
//! and the flushes waiting for the writer.
//!
//! Receivers reserve what a request will hold before they read it ([`MemoryBudget::try_reserve`])
//! and answer 503/UNAVAILABLE when the budget is spent; the stages after them report what they
//! hold ([`MemoryBudget::set`]). Admission looks at the sum of every part, so memory held
//! downstream (a slow writer, a large aggregator) throttles intake instead of growing without
//! bound. Trace keeping and cardinality keys have fixed shares ([`share`]) that their owners
//! enforce by dropping traces or overflowing keys, never by refusing RED data.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a part of the budget holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Request bodies read, inflated or decoded by a receiver and not yet queued.
    RequestBodies,
    /// Batches acknowledged and waiting for the aggregator.
    Queue,
    /// Open windows, cumulative-series state and cardinality keys.
    Aggregator,
    /// The trace sampler's wait buffer and kept spans not yet flushed.
    Traces,
    /// Flushes handed to the store writer and not yet committed.
    Writer,
}

impl Part {
    pub const ALL: [Part; 5] = [
        Part::RequestBodies,
        Part::Queue,
        Part::Aggregator,
        Part::Traces,
        Part::Writer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::RequestBodies => "request_bodies",
            Part::Queue => "queue",
            Part::Aggregator => "aggregator",
            Part::Traces => "traces",
            Part::Writer => "writer",
        }
    }
}

/// The bytes each of the shares its owner enforces may hold — the trace sampler's wait buffer,
/// kept spans not yet flushed, and the cardinality guard's keys: an eighth of the limit each,
/// so that together they leave more than half of the budget to RED data in flight.
pub fn share(limit: usize) -> usize {
    limit / 8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("redline's memory budget ({limit} bytes) is spent, retry later")]
pub struct OverBudget {
    pub limit: usize,
}

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: [AtomicUsize; Part::ALL.len()],
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: Default::default(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used
            .iter()
            .map(|part| part.load(Ordering::Relaxed))
            .fold(0, usize::saturating_add)
    }

    pub fn used_by(&self, part: Part) -> usize {
        self.used[part as usize].load(Ordering::Relaxed)
    }

    /// Whether `bytes` more fit within the limit now.
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    /// Records what a stage measures it holds (replacing its previous figure).
    pub fn set(&self, part: Part, bytes: usize) {
        self.used[part as usize].store(bytes, Ordering::Relaxed);
    }

    /// Reserves `bytes` for `part` if the whole budget stays within the limit; the reservation
    /// is released when dropped.
    pub fn try_reserve(
        self: &Arc<Self>,
        part: Part,
        bytes: usize,
    ) -> Result<Reservation, OverBudget> {
        let mut reservation = Reservation {
            budget: self.clone(),
            part,
            bytes: 0,
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    fn add(&self, part: Part, bytes: usize) {
        self.used[part as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, part: Part, bytes: usize) {
        self.used[part as usize].fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    part: Part,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `more` bytes if they fit; on failure the reservation is unchanged.
    pub fn grow(&mut self, more: usize) -> Result<(), OverBudget> {
        // Add first, then check: two receivers racing for the last bytes cannot both pass.
        self.budget.add(self.part, more);
        if self.budget.used() > self.budget.limit {
            self.budget.sub(self.part, more);
            return Err(OverBudget {
                limit: self.budget.limit,
            });
        }
        self.bytes += more;
        Ok(())
    }

    /// Hands the bytes over to `part` as `bytes` (what the next stage holds of the same data),
    /// checking the limit only for growth.
    pub fn transfer(mut self, part: Part, bytes: usize) -> Result<Reservation, OverBudget> {
        let mut moved = Reservation {
            budget: self.budget.clone(),
            part,
            bytes: 0,
        };
        let kept = bytes.min(self.bytes);
        self.budget.sub(self.part, kept);
        self.bytes -= kept;
        self.budget.add(part, kept);
        moved.bytes = kept;
        moved.grow(bytes - kept)?;
        Ok(moved)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.sub(self.part, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_release_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(Part::RequestBodies, 60).unwrap();
        assert!(budget.try_reserve(Part::RequestBodies, 41).is_err());
        let mut b = budget.try_reserve(Part::Queue, 40).unwrap();
        assert_eq!(budget.used(), 100);
        assert!(b.grow(1).is_err());
        assert_eq!(b.bytes(), 40);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.grow(10).unwrap();
        assert_eq!(budget.used_by(Part::Queue), 50);
    }

    #[test]
    fn measured_parts_count_against_admission() {
        let budget = MemoryBudget::new(100);
        budget.set(Part::Aggregator, 90);
        assert!(budget.try_reserve(Part::RequestBodies, 20).is_err());
        assert!(!budget.has_room_for(11));
        budget.set(Part::Aggregator, 10);
        assert!(budget.try_reserve(Part::RequestBodies, 20).is_ok());
    }

    #[test]
    fn a_transfer_moves_bytes_between_parts() {
        let budget = MemoryBudget::new(100);
        let body = budget.try_reserve(Part::RequestBodies, 30).unwrap();
        let queued = body.transfer(Part::Queue, 50).unwrap();
        assert_eq!(budget.used_by(Part::RequestBodies), 0);
        assert_eq!(budget.used_by(Part::Queue), 50);
        let smaller = queued.transfer(Part::Writer, 20).unwrap();
        assert_eq!(budget.used(), 20);
        drop(smaller);
        assert_eq!(budget.used(), 0);
        // Growth past the limit fails and releases what was moved.
        let body = budget.try_reserve(Part::RequestBodies, 30).unwrap();
        assert!(body.transfer(Part::Queue, 200).is_err());
        assert_eq!(budget.used(), 0);
    }
}
