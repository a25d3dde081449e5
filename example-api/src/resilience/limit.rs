//! An adaptive concurrency limit for load shedding (delay-based AIMD, after the gradient
//! limiters of Netflix's concurrency-limits): requests in progress are capped at a limit that
//! moves between `min` and `max` with the latency of admitted requests.
//!
//! Why adaptive: a fixed cap is either lenient (256 in flight let queueing stretch the admitted
//! p99 to 5.8× the unloaded p99 under a 10× overload on two cores) or, when tight enough for
//! overload (8 held it to 1.13×), too tight for a dependency that merely got slower, where
//! requests wait on I/O and need more concurrency, not less.
//!
//! The rule, per window of [`WINDOW`] completed requests:
//! - the window's median latency is compared with a baseline: a moving average of the window
//!   medians that follows uncongested windows quickly and congested ones only slowly, so that
//!   overload does not become the norm within one episode but a lasting change of the workload
//!   (a slower dependency) does;
//! - median above `TOLERANCE` × baseline: queueing has begun, halve the limit (multiplicative
//!   decrease, down to `min`);
//! - otherwise, if the window used at least half of the limit, raise it by √limit (additive
//!   increase, up to `max`);
//! - and in any case keep it within `HEADROOM` × the recent peak concurrency: a limit far above
//!   what is used protects nothing, and the first windows of an overload would otherwise admit
//!   a burst at the old, lenient limit (measured: a start at 256 left the admitted p99 at 2.4×
//!   the unloaded one under 10× overload).
//!
//! A second congestion signal is the runtime's scheduling delay ([`AdaptiveLimit::spawn_lag_probe`]:
//! every 10 ms, how long a task that yields waits to run again, which is the run queue's length in
//! time). When the CPU is saturated, requests wait in the socket backlog and the run queue before
//! any handler sees them, which handler latency cannot show; the run queue does.
//!
//! A concurrency limit cannot relieve a saturated CPU: at any limit of one or more per core, the
//! admitted requests alone keep the core busy, and every arrival — admitted or shed — waits
//! behind them. So the scheduling delay also drives an **admission share**: while the smoothed
//! delay is above [`DELAY_TARGET`], the share of arrivals let through to the concurrency check
//! falls by an eighth every probe (multiplicative decrease, down to [`MIN_SHARE`]); below it, it
//! climbs back by [`SHARE_RECOVERY`] per probe (about 0.3 s from the floor to everything). Shed
//! arrivals cost a fraction of admitted ones, so the core gets out of saturation and the admitted
//! requests stop queueing. (The first probe measured how late a 10 ms timer fired: tokio's timers
//! have a resolution of 1 ms, so that read about 1 ms at rest and under a 10× overload alike.)
//!
//! Admission is one compare-and-swap on the in-flight count; the bookkeeping happens when a
//! request completes, under a mutex held for a few arithmetic operations (never across `.await`).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Completed requests per adjustment.
pub const WINDOW: u32 = 32;
/// Window median latency over baseline beyond which the limit is cut (Netflix's gradient limit
/// uses the same 1.5).
const TOLERANCE: f64 = 1.5;
/// Multiplicative decrease.
const DECREASE: f64 = 0.5;
/// Limit at most this many times the recent peak concurrency (but at least `min`).
const HEADROOM: usize = 4;
/// Per-window decay of the recent peak concurrency (half-life about 14 windows, some 450
/// requests).
const PEAK_DECAY: f64 = 0.95;
/// Smoothed scheduling delay beyond which the runtime counts as congested and the limit is cut.
const LAG_LIMIT: Duration = Duration::from_millis(2);
/// Smoothed scheduling delay above which the admission share falls. Measured on a one-core
/// server: about 30 µs on average at a tenth of its capacity, about 200 µs under a 10× overload.
const DELAY_TARGET: Duration = Duration::from_micros(250);
/// The admission share is kept in 1/`FULL_SHARE` steps.
const FULL_SHARE: u32 = 1024;
/// Never shed more than half of the arrivals on the delay signal alone.
const MIN_SHARE: u32 = FULL_SHARE / 2;
/// Share regained per probe below the target.
const SHARE_RECOVERY: u32 = FULL_SHARE / 64;
/// Period of the lag probe.
const LAG_PERIOD: Duration = Duration::from_millis(10);
/// Weight of an uncongested window's median in the baseline.
const BASELINE_FOLLOW: f64 = 0.05;
/// Weight of a congested window's median: a few hundred windows (about 10k requests) to accept a
/// lasting shift.
const BASELINE_DRIFT: f64 = 1.0 / 300.0;

#[derive(Debug)]
struct Window {
    n: u32,
    /// Latencies (seconds) of the window's requests. The median, not the mean: a window of an
    /// uneven mix (a few writes or downstream calls among cached reads) has a mean well above
    /// the baseline with no queueing at all, which cut the limit at a tenth of capacity and shed
    /// requests at normal load; queueing delays every request and moves the median too.
    latencies: [f64; WINDOW as usize],
    max_in_flight: usize,
    /// The peak concurrency of recent windows, decaying by [`PEAK_DECAY`] per window: the
    /// headroom rule's reference. One window's peak alone is often 1 at light load (32 fast
    /// requests one after another), which set the limit to 4 and shed the next small burst —
    /// a slow request and the arrivals behind it — at a tenth of capacity.
    recent_peak: f64,
    /// Median latency (seconds) regarded as uncongested; 0 until the first window.
    baseline: f64,
}

/// A concurrency limit that adapts to latency; `min == max` makes it fixed.
#[derive(Debug)]
pub struct AdaptiveLimit {
    min: usize,
    max: usize,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// Smoothed scheduling delay in µs (see [`Self::spawn_lag_probe`]).
    lag_us: AtomicU64,
    /// Arrivals let through to the concurrency check, in 1/[`FULL_SHARE`].
    admit_share: AtomicU32,
    window: Mutex<Window>,
}

/// An admitted request; dropping it records its latency and frees its slot (also when the
/// request future is dropped because the client went away).
#[derive(Debug)]
pub struct Permit {
    limit: Arc<AdaptiveLimit>,
    start: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let in_flight = self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.limit.completed(self.start.elapsed(), in_flight);
    }
}

impl AdaptiveLimit {
    /// Starts at `max` (the configured cap) and adapts within `min..=max`.
    pub fn new(min: usize, max: usize) -> Self {
        let max = max.max(1);
        let min = min.clamp(1, max);
        AdaptiveLimit {
            min,
            max,
            limit: AtomicUsize::new(max),
            in_flight: AtomicUsize::new(0),
            lag_us: AtomicU64::new(0),
            admit_share: AtomicU32::new(FULL_SHARE),
            window: Mutex::new(Window {
                n: 0,
                latencies: [0.0; WINDOW as usize],
                max_in_flight: 0,
                recent_peak: 0.0,
                baseline: 0.0,
            }),
        }
    }

    /// A fixed limit (no adaptation).
    pub fn fixed(limit: usize) -> Self {
        Self::new(limit, limit)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether an uncongested window has set the latency baseline yet (until then, only the
    /// runtime-lag signal can cut the limit).
    pub fn has_baseline(&self) -> bool {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .baseline
            > 0.0
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Every [`LAG_PERIOD`], measures how long a yielding task waits to be polled again on the
    /// current runtime and feeds it to the limit, until the limit is dropped. Only adaptive
    /// limits need it.
    pub fn spawn_lag_probe(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.min == self.max {
            return None;
        }
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(LAG_PERIOD).await;
                let start = Instant::now();
                tokio::task::yield_now().await;
                let delay = start.elapsed();
                let Some(limit) = weak.upgrade() else { break };
                limit.record_lag(delay);
            }
        }))
    }

    /// Folds one scheduling-delay sample into the smoothed value (weight 1/8: one late poll
    /// behind a slow request must not shed at rest) and moves the admission share with it.
    pub fn record_lag(&self, lag: Duration) {
        let sample = lag.as_micros().min(u128::from(u32::MAX)) as u64;
        let prev = self.lag_us.load(Ordering::Relaxed);
        let smoothed = prev - prev / 8 + sample / 8;
        self.lag_us.store(smoothed, Ordering::Relaxed);
        let share = self.admit_share.load(Ordering::Relaxed);
        let next = if smoothed > DELAY_TARGET.as_micros() as u64 {
            share - share / 8
        } else {
            share + SHARE_RECOVERY
        };
        self.admit_share
            .store(next.clamp(MIN_SHARE, FULL_SHARE), Ordering::Relaxed);
    }

    /// The share of arrivals currently let through to the concurrency check (1.0 = all).
    pub fn admit_share(&self) -> f64 {
        f64::from(self.admit_share.load(Ordering::Relaxed)) / f64::from(FULL_SHARE)
    }

    /// Admits a request if it falls within the admission share and fewer than the limit are in
    /// progress.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let share = self.admit_share.load(Ordering::Relaxed);
        if share < FULL_SHARE && rand::random::<u32>() % FULL_SHARE >= share {
            return None;
        }
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Permit {
            limit: self.clone(),
            start: Instant::now(),
        })
    }

    /// `in_flight` is the count including the request that just completed.
    fn completed(&self, latency: Duration, in_flight: usize) {
        if self.min == self.max {
            return;
        }
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let slot = w.n as usize;
        w.latencies[slot] = latency.as_secs_f64();
        w.n += 1;
        w.max_in_flight = w.max_in_flight.max(in_flight);
        if w.n < WINDOW {
            return;
        }
        let middle = WINDOW as usize / 2;
        let (_, &mut median, _) = w.latencies.select_nth_unstable_by(middle, f64::total_cmp);
        let lagging = self.lag_us.load(Ordering::Relaxed) > LAG_LIMIT.as_micros() as u64;
        let congested = lagging || (w.baseline > 0.0 && median > TOLERANCE * w.baseline);
        if w.baseline == 0.0 {
            w.baseline = if lagging { 0.0 } else { median };
        } else if congested {
            w.baseline += (median - w.baseline) * BASELINE_DRIFT;
        } else {
            w.baseline += (median - w.baseline) * BASELINE_FOLLOW;
        }
        let limit = self.limit();
        let next = if congested {
            (limit as f64 * DECREASE) as usize
        } else if w.max_in_flight * 2 >= limit {
            limit + ((limit as f64).sqrt() as usize).max(1)
        } else {
            limit
        };
        w.recent_peak = (w.recent_peak * PEAK_DECAY).max(w.max_in_flight as f64);
        let next = next
            .min((w.recent_peak.ceil() as usize).saturating_mul(HEADROOM))
            .clamp(self.min, self.max);
        self.limit.store(next, Ordering::Relaxed);
        w.n = 0;
        w.max_in_flight = 0;
    }
}

/// The default lower bound, 2 per CPU: enough to keep every core busy while one request per
/// core waits on I/O. (4 per CPU left the limit at its floor with the core still saturated
/// under a 10× overload of a one-CPU server: admitted p99 2.3–3.3× the unloaded one.)
pub fn default_min() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    2 * cores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(l: &Arc<AdaptiveLimit>, windows: u32, in_flight: usize, latency: Duration) {
        for _ in 0..windows * WINDOW {
            // The in-flight count as the request saw it, without holding permits.
            l.completed(latency, in_flight);
        }
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let l = Arc::new(AdaptiveLimit::fixed(2));
        let a = l.try_acquire().expect("first");
        let _b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none(), "third is over the limit");
        drop(a);
        assert!(l.try_acquire().is_some(), "a slot was freed");
    }

    #[test]
    fn queueing_latency_cuts_the_limit_to_min() {
        let l = Arc::new(AdaptiveLimit::new(8, 256));
        feed(&l, 5, 4, Duration::from_millis(2));
        assert_eq!(l.limit(), 16, "unloaded: 4× the peak concurrency");
        // Latency triples under load: the limit falls to the floor, not below.
        feed(&l, 30, 200, Duration::from_millis(6));
        assert_eq!(l.limit(), 8);
    }

    #[test]
    fn a_few_slow_requests_in_a_window_are_not_queueing() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        feed(&l, 5, 4, Duration::from_millis(1));
        assert_eq!(l.limit(), 16);
        // Every window: 28 cached reads at 1 ms and 4 writes at 20 ms (mean 3.4× the baseline).
        for _ in 0..50 {
            for i in 0..WINDOW {
                let slow = i % 8 == 0;
                l.completed(Duration::from_millis(if slow { 20 } else { 1 }), 4);
            }
        }
        assert_eq!(l.limit(), 16, "an uneven mix is not a reason to shed");
    }

    #[test]
    fn limit_grows_back_when_used_without_queueing() {
        let l = Arc::new(AdaptiveLimit::new(8, 64));
        feed(&l, 1, 4, Duration::from_millis(2));
        feed(&l, 30, 200, Duration::from_millis(10));
        assert_eq!(l.limit(), 8);
        // Latency back to normal, limit in use: +1 per window up to max.
        feed(&l, 100, 64, Duration::from_millis(2));
        assert_eq!(l.limit(), 64);
    }

    #[test]
    fn a_lasting_slowdown_becomes_the_new_baseline() {
        let l = Arc::new(AdaptiveLimit::new(8, 64));
        feed(&l, 1, 4, Duration::from_millis(2));
        // A dependency gets slower for good (5 ms): cut at first, then accepted as normal and
        // the limit, being used, recovers.
        feed(&l, 3000, 64, Duration::from_millis(5));
        assert_eq!(l.limit(), 64);
    }

    #[test]
    fn an_unused_limit_shrinks_to_headroom_over_the_recent_peak() {
        let l = Arc::new(AdaptiveLimit::new(8, 256));
        feed(&l, 1, 10, Duration::from_millis(1));
        assert_eq!(l.limit(), 40);
        // Light load, one request at a time: the peak of 10 fades over some hundred windows…
        feed(&l, 1, 1, Duration::from_millis(1));
        assert_eq!(
            l.limit(),
            40,
            "one quiet window does not forget the recent peak"
        );
        feed(&l, 200, 1, Duration::from_millis(1));
        assert_eq!(l.limit(), 8, "…and the limit with it, never below min");
    }

    #[test]
    fn a_late_runtime_cuts_the_limit_even_at_normal_latency() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        feed(&l, 1, 64, Duration::from_millis(1));
        for _ in 0..20 {
            l.record_lag(Duration::from_millis(10));
        }
        feed(&l, 10, 64, Duration::from_millis(1));
        assert_eq!(l.limit(), 2);
        for _ in 0..40 {
            l.record_lag(Duration::ZERO);
        }
        feed(&l, 100, 64, Duration::from_millis(1));
        assert_eq!(l.limit(), 64, "recovers once the runtime is on time");
    }

    #[test]
    fn a_busy_run_queue_sheds_a_share_of_arrivals_until_it_drains() {
        // Each permit is dropped at once, so the concurrency limit never binds here.
        let admitted =
            |l: &Arc<AdaptiveLimit>| (0..2000).filter(|_| l.try_acquire().is_some()).count();
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        for _ in 0..50 {
            l.record_lag(Duration::from_micros(20));
        }
        assert_eq!(admitted(&l), 2000, "a short run queue sheds nothing");
        for _ in 0..50 {
            l.record_lag(Duration::from_micros(500));
        }
        assert_eq!(l.admit_share(), 0.5, "down to the floor");
        let n = admitted(&l);
        assert!((850..1150).contains(&n), "about half of 2000 admitted: {n}");
        for _ in 0..100 {
            l.record_lag(Duration::from_micros(5));
        }
        assert_eq!(
            l.admit_share(),
            1.0,
            "back to everything once the queue drains"
        );
    }

    #[test]
    fn fixed_limits_do_not_move() {
        let l = Arc::new(AdaptiveLimit::fixed(3));
        feed(&l, 10, 3, Duration::from_secs(1));
        assert_eq!(l.limit(), 3);
    }
}
