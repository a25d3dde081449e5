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
//! - median above `TOLERANCE` × baseline + [`QUEUE_SLACK`]: queueing has begun, halve the limit
//!   (multiplicative decrease, down to `min`);
//! - otherwise, if the window used at least half of the limit, raise it by √limit (additive
//!   increase, up to `max`);
//! - and in any case keep it within `HEADROOM` × the recent peak concurrency: a limit far above
//!   what is used protects nothing, and the first windows of an overload would otherwise admit
//!   a burst at the old, lenient limit (measured: a start at 256 left the admitted p99 at 2.4×
//!   the unloaded one under 10× overload).
//!
//! A second congestion signal is the runtime's scheduling delay ([`AdaptiveLimit::spawn_lag_probe`]:
//! every 10 ms, how long a task that yields waits to run again, which is the run queue's length in
//! time); above [`LAG_LIMIT`] it cuts the limit like queueing latency does.
//!
//! A concurrency limit cannot relieve a saturated CPU: at any limit of one or more per core, the
//! admitted requests alone keep the core busy, and every arrival — admitted or shed — waits
//! behind them in the socket backlog and the run queue, where handler latency cannot see it. So
//! two more rules shed arrivals before the concurrency check:
//!
//! - **Admission share** (CPU-based shedding, as in Google's SRE book, "Handling Overload"). The
//!   probe also reads the process's CPU time. Each probe multiplies the share of arrivals let
//!   through by [`UTIL_TARGET`] / smoothed utilization, bounded to a step between
//!   [`SHARE_STEP_DOWN`] and [`SHARE_STEP_UP`] and a floor of [`MIN_SHARE`]; a sample that is
//!   both saturated and late halves it at once. Below the target the share climbs back to
//!   everything; above it, it falls until the process uses about the target share of its CPUs.
//!   Shed arrivals cost a fraction of admitted ones (on a slow core 45–65 µs of CPU against
//!   300–800 µs for a request of the mix), so the core leaves saturation and admitted requests
//!   stop queueing. The price of a rejection also bounds what one core can shed at all (15–20k
//!   req/s there): beyond it, shedding belongs in front of the process.
//! - **Backlog shedding** (like CoDel's sojourn time, measured on the runtime): the probe beats
//!   every millisecond, and while its beat is older than [`BACKLOG_LATE`] the runtime is working
//!   through a backlog, so every arrival polled meanwhile is shed. This covers the first tens of
//!   milliseconds of an overload, before the share has fallen: a one-core server that jumped to
//!   10× its base load stalled for up to 39 ms, and the requests it admitted in that stall set
//!   the p99 of the whole run.
//!
//! Why utilization and not the scheduling delay alone: the delay depends on the machine (about
//! 200 µs under a 10× overload on a fast core, 2 ms on a core three times slower), so no one
//! threshold fits both, and a share driven by it had to be floored at one half, which on the
//! slower core still let through more than it could serve (admitted p99 9.6× the unloaded one).
//! (The first probe measured how late a 10 ms timer fired: tokio's timers have a resolution of
//! 1 ms, so that read about 1 ms at rest and under a 10× overload alike.) The CPU time is the
//! process's, not the runtime's: SQLite's blocking threads, the span exporter and the in-process
//! downstream service compete for the same cores; several adaptive limits in one process (tests)
//! therefore see each other's load.
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
/// Absolute latency added to the tolerance: cached reads take some 80 µs, and a window of the
/// normal mix has a median up to twice that without any queueing, which at 1.5× alone halved
/// the limit to 2 and shed bursts of three at a tenth of capacity.
const QUEUE_SLACK: f64 = 200e-6;
/// Multiplicative decrease.
const DECREASE: f64 = 0.5;
/// Limit at most this many times the recent peak concurrency (but at least `min`).
const HEADROOM: usize = 4;
/// Per-window decay of the recent peak concurrency (half-life about 14 windows, some 450
/// requests).
const PEAK_DECAY: f64 = 0.95;
/// Smoothed scheduling delay beyond which the runtime counts as congested and the limit is cut.
const LAG_LIMIT: Duration = Duration::from_millis(2);
/// Share of its CPUs' time the process may use before arrivals are shed: the headroom keeps
/// admitted requests from queueing behind each other. (0.6 held the admitted p99 as well as 0.7
/// but admitted a third less under a 10× overload.)
const UTIL_TARGET: f64 = 0.7;
/// Weight of a new utilization sample in the smoothed value.
const UTIL_WEIGHT: f64 = 0.5;
/// Bounds of the per-probe change of the admission share: down quickly, since a saturated core
/// builds a backlog every probe, and up slowly, so that it does not overshoot.
const SHARE_STEP_DOWN: f64 = 0.5;
const SHARE_STEP_UP: f64 = 1.05;
/// A probe sample with at least this utilization and a yield wait of at least
/// [`BACKLOG_DELAY`] is a backlog on a saturated CPU: the share is multiplied by [`SHARE_CUT`]
/// at once, without waiting for the smoothed utilization.
const SATURATED: f64 = 0.9;
const BACKLOG_DELAY: Duration = Duration::from_millis(1);
const SHARE_CUT: f64 = 0.5;
/// The admission share is kept in 1/`FULL_SHARE` steps.
const FULL_SHARE: u32 = 1 << 16;
/// Always let a sixteenth of the arrivals through to the concurrency check.
const MIN_SHARE: u32 = FULL_SHARE / 16;
/// Period of the lag probe's samples.
const LAG_PERIOD: Duration = Duration::from_millis(10);
/// Period of the probe's heartbeat (the timer's resolution).
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(1);
/// Heartbeat age beyond which arrivals are shed as backlog: the heartbeat is due every 1–2 ms
/// (the timer's resolution), and at a sixth of capacity its polls are up to 2 ms late.
const BACKLOG_LATE: Duration = Duration::from_millis(3);
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

/// Why an arrival was shed: which of the limiter's three rules turned it away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The runtime was working through a backlog (the probe's heartbeat was late).
    Backlog,
    /// The arrival fell outside the admission share (the process is over its CPU target).
    Cpu,
    /// The concurrency limit was reached.
    Concurrency,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [Rejection::Backlog, Rejection::Cpu, Rejection::Concurrency];

    /// The name used in metrics and the admin state.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Backlog => "backlog",
            Rejection::Cpu => "cpu",
            Rejection::Concurrency => "concurrency",
        }
    }
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
    /// Smoothed CPU utilization of the process (0–1), as `f64` bits.
    utilization: AtomicU64,
    /// Arrivals let through to the concurrency check, in 1/[`FULL_SHARE`].
    admit_share: AtomicU32,
    /// Time base of `heartbeat_ns`.
    epoch: Instant,
    /// When the probe last ran, in ns since `epoch`; 0 while no probe runs.
    heartbeat_ns: AtomicU64,
    /// Arrivals shed so far, per [`Rejection`] (in the order of [`Rejection::ALL`]).
    rejected: [AtomicU64; 3],
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
            utilization: AtomicU64::new(0f64.to_bits()),
            admit_share: AtomicU32::new(FULL_SHARE),
            epoch: Instant::now(),
            heartbeat_ns: AtomicU64::new(0),
            rejected: Default::default(),
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

    /// Beats every [`HEARTBEAT_PERIOD`] and, every [`LAG_PERIOD`], measures how long a yielding
    /// task waits to be polled again on the current runtime and how much CPU the process used
    /// since the last sample, and feeds both to the limit, until the limit is dropped. Only
    /// adaptive limits need it.
    pub fn spawn_lag_probe(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.min == self.max {
            return None;
        }
        let weak = Arc::downgrade(self);
        let cpu = ProcessCpu::new();
        Some(tokio::spawn(async move {
            let mut last = cpu.read();
            let mut sampled = Instant::now();
            loop {
                tokio::time::sleep(HEARTBEAT_PERIOD).await;
                let Some(limit) = weak.upgrade() else { break };
                limit.beat();
                if sampled.elapsed() < LAG_PERIOD {
                    continue;
                }
                let start = Instant::now();
                sampled = start;
                tokio::task::yield_now().await;
                let delay = start.elapsed();
                let now = cpu.read();
                limit.record_probe(delay, cpu.utilization(last, now));
                last = now;
            }
        }))
    }

    /// Folds one scheduling-delay sample into the smoothed value (weight 1/8: one late poll
    /// behind a slow request must not cut the limit at rest).
    pub fn record_lag(&self, lag: Duration) {
        let sample = lag.as_micros().min(u128::from(u32::MAX)) as u64;
        let prev = self.lag_us.load(Ordering::Relaxed);
        self.lag_us
            .store(prev - prev / 8 + sample / 8, Ordering::Relaxed);
    }

    /// Folds one probe into the limit: `delay`, how long the probe waited to run after yielding,
    /// and `utilization`, the process's CPU time over the wall time of its CPUs since the last
    /// probe (0–1). Moves the admission share towards the share that keeps the smoothed
    /// utilization at [`UTIL_TARGET`], and halves it at once when the CPU is saturated with a
    /// backlog.
    pub fn record_probe(&self, delay: Duration, utilization: f64) {
        self.record_lag(delay);
        let prev = f64::from_bits(self.utilization.load(Ordering::Relaxed));
        let smoothed = prev + (utilization - prev) * UTIL_WEIGHT;
        self.utilization
            .store(smoothed.to_bits(), Ordering::Relaxed);
        let step = if delay >= BACKLOG_DELAY && utilization >= SATURATED {
            SHARE_CUT
        } else {
            (UTIL_TARGET / smoothed.max(1e-3)).clamp(SHARE_STEP_DOWN, SHARE_STEP_UP)
        };
        let share = f64::from(self.admit_share.load(Ordering::Relaxed));
        let next = (share * step).round() as u32;
        self.admit_share
            .store(next.clamp(MIN_SHARE, FULL_SHARE), Ordering::Relaxed);
    }

    /// Records that the probe ran just now: the runtime got through its queue up to here.
    fn beat(&self) {
        let ns = self.epoch.elapsed().as_nanos().max(1);
        self.heartbeat_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether the probe is overdue at `now`: it was due every [`HEARTBEAT_PERIOD`] and has not
    /// run for [`BACKLOG_LATE`], so the runtime is working through a backlog and whatever is
    /// polled now arrived long ago. Shedding it drains the backlog several times faster than
    /// serving it.
    fn backlogged_at(&self, now: Instant) -> bool {
        let beat = self.heartbeat_ns.load(Ordering::Relaxed);
        if beat == 0 {
            return false;
        }
        let now = now.saturating_duration_since(self.epoch).as_nanos();
        now.saturating_sub(u128::from(beat)) > BACKLOG_LATE.as_nanos()
    }

    /// The share of arrivals currently let through to the concurrency check (1.0 = all).
    pub fn admit_share(&self) -> f64 {
        f64::from(self.admit_share.load(Ordering::Relaxed)) / f64::from(FULL_SHARE)
    }

    /// Admits a request if the runtime is not working through a backlog, the request falls
    /// within the admission share and fewer than the limit are in progress.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Rejection> {
        let now = Instant::now();
        self.check_admission(now).inspect_err(|&r| {
            self.rejected[r as usize].fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(Permit {
            limit: self.clone(),
            start: now,
        })
    }

    /// The three rules in order, taking a slot when all pass.
    fn check_admission(&self, now: Instant) -> Result<(), Rejection> {
        if self.backlogged_at(now) {
            return Err(Rejection::Backlog);
        }
        let share = self.admit_share.load(Ordering::Relaxed);
        if share < FULL_SHARE && rand::random::<u32>() % FULL_SHARE >= share {
            return Err(Rejection::Cpu);
        }
        let limit = self.limit();
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| Rejection::Concurrency)
    }

    /// Arrivals shed so far by `reason`.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
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
        let queueing = w.baseline > 0.0 && median > TOLERANCE * w.baseline + QUEUE_SLACK;
        let congested = lagging || queueing;
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

/// Reads the CPU time of this process: every thread that competes with request handling for
/// the cores (runtime workers, SQLite's blocking threads, the span exporter, the in-process
/// downstream service), including the kernel's network processing done in their system calls.
struct ProcessCpu {
    /// CPUs this process may run on (its affinity mask and cgroup quota).
    cpus: f64,
}

impl ProcessCpu {
    fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ProcessCpu { cpus: cpus as f64 }
    }

    fn read(&self) -> (Instant, Duration) {
        (Instant::now(), process_cpu_time())
    }

    /// CPU time between two readings as a share of the CPUs' wall time.
    fn utilization(&self, before: (Instant, Duration), after: (Instant, Duration)) -> f64 {
        let wall = after.0.duration_since(before.0).as_secs_f64() * self.cpus;
        let cpu = after.1.saturating_sub(before.1).as_secs_f64();
        if wall > 0.0 { cpu / wall } else { 0.0 }
    }
}

#[cfg(unix)]
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id a constant of the C library.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn process_cpu_time() -> Duration {
    Duration::ZERO
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
        assert_eq!(
            l.try_acquire().err(),
            Some(Rejection::Concurrency),
            "third is over the limit"
        );
        assert_eq!(l.rejected(Rejection::Concurrency), 1);
        drop(a);
        assert!(l.try_acquire().is_ok(), "a slot was freed");
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

    /// Admissions out of 4000 arrivals; each permit is dropped at once, so the concurrency
    /// limit never binds.
    fn admitted_of_4000(l: &Arc<AdaptiveLimit>) -> usize {
        (0..4000).filter(|_| l.try_acquire().is_ok()).count()
    }

    #[test]
    fn a_saturated_cpu_sheds_a_share_of_arrivals_until_it_has_headroom() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        for _ in 0..50 {
            l.record_probe(Duration::ZERO, UTIL_TARGET - 0.05);
        }
        assert_eq!(
            admitted_of_4000(&l),
            4000,
            "a busy CPU below the target sheds nothing"
        );
        for _ in 0..20 {
            l.record_probe(Duration::ZERO, 1.0);
        }
        assert_eq!(l.admit_share(), 1.0 / 16.0, "down to the floor");
        let n = admitted_of_4000(&l);
        assert!(
            (150..350).contains(&n),
            "about a sixteenth of 4000 admitted: {n}"
        );
        assert_eq!(
            l.rejected(Rejection::Cpu),
            4000 - n as u64,
            "every arrival turned away was counted as a CPU rejection"
        );
        for _ in 0..100 {
            l.record_probe(Duration::ZERO, 0.2);
        }
        assert_eq!(l.admit_share(), 1.0, "back to everything with headroom");
    }

    #[test]
    fn the_admission_share_settles_where_the_cpu_meets_its_target() {
        // A server offered 4× what it can serve: 5 % of a CPU on its own, and each arrival let
        // through costs a quarter of the CPU per unit of share (a shed one 1 %).
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        let mut used = Vec::new();
        for _ in 0..400 {
            let share = l.admit_share();
            let utilization = (0.05 + 4.0 * (share * 0.25 + (1.0 - share) * 0.01)).min(1.0);
            l.record_probe(Duration::ZERO, utilization);
            used.push(utilization);
        }
        let settled = &used[200..];
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        assert!(
            (UTIL_TARGET - 0.05..UTIL_TARGET + 0.05).contains(&mean),
            "mean utilization {mean}"
        );
        assert!(
            settled.iter().all(|u| *u < 1.0),
            "never back in saturation once settled: {settled:?}"
        );
    }

    #[test]
    fn a_backlog_on_a_saturated_cpu_halves_the_share_at_once() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        l.record_probe(Duration::from_millis(3), 0.3);
        assert_eq!(
            l.admit_share(),
            1.0,
            "a late poll on an idle CPU is not a backlog"
        );
        l.record_probe(Duration::from_millis(3), 0.95);
        assert_eq!(
            l.admit_share(),
            0.5,
            "without waiting for the smoothed utilization"
        );
    }

    #[test]
    fn an_overdue_heartbeat_sheds_every_arrival() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        assert!(
            !l.backlogged_at(Instant::now() + Duration::from_secs(1)),
            "no probe runs yet: nothing to judge by"
        );
        l.beat();
        // Judged at instants relative to the beat, not by the wall clock: a loaded CI machine
        // can stall this thread for longer than BACKLOG_LATE between two lines.
        let beat = l.epoch + Duration::from_nanos(l.heartbeat_ns.load(Ordering::Relaxed));
        assert_eq!(
            l.check_admission(beat + BACKLOG_LATE / 2),
            Ok(()),
            "a fresh beat sheds nothing"
        );
        assert_eq!(
            l.check_admission(beat + BACKLOG_LATE + Duration::from_millis(1)),
            Err(Rejection::Backlog),
            "the runtime is behind its heartbeat"
        );
    }

    #[tokio::test]
    async fn the_probe_beats_and_samples_on_the_runtime() {
        let l = Arc::new(AdaptiveLimit::new(2, 64));
        let probe = l.spawn_lag_probe().expect("adaptive limits run a probe");
        // Polled, not checked once: a loaded machine may stall this thread past BACKLOG_LATE,
        // but a probe that keeps beating is seen current again within the deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut beats = std::collections::BTreeSet::new();
        let mut seen_current = false;
        while (beats.len() < 3 || !seen_current) && Instant::now() < deadline {
            let beat = l.heartbeat_ns.load(Ordering::Relaxed);
            if beat != 0 {
                beats.insert(beat);
                seen_current |= beats.len() >= 3 && !l.backlogged_at(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(beats.len() >= 3, "the probe kept beating: {beats:?}");
        assert!(seen_current, "an idle runtime keeps its heartbeat");
        assert!(
            Arc::new(AdaptiveLimit::fixed(3))
                .spawn_lag_probe()
                .is_none()
        );
        drop(l);
        tokio::time::timeout(Duration::from_secs(10), probe)
            .await
            .expect("the probe ends with its limit")
            .expect("the probe did not panic");
    }

    #[test]
    fn fixed_limits_do_not_move() {
        let l = Arc::new(AdaptiveLimit::fixed(3));
        feed(&l, 10, 3, Duration::from_secs(1));
        assert_eq!(l.limit(), 3);
    }
}
