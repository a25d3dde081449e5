//! A circuit breaker after resilience4j's model: CLOSED judges the failure rate over a
//! count-based sliding window (once it holds `min_calls`); at or above the threshold it OPENs
//! and rejects calls without making them; after `open_wait` it lets `half_open_probes` calls
//! through (HALF_OPEN): all succeed → CLOSED, any fails → OPEN again.

use crate::config::BreakerConfig;
use crate::telemetry::Telemetry;
use opentelemetry::KeyValue;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    fn level(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Outcomes of recent calls in CLOSED (true = failure).
    window: VecDeque<bool>,
    opened_at: Instant,
    probes_started: usize,
    probes_ok: usize,
}

/// Returned when the breaker rejects a call.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker is open")]
pub struct Rejected;

pub struct CircuitBreaker {
    name: &'static str,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    telemetry: Arc<Telemetry>,
}

impl CircuitBreaker {
    pub fn new(name: &'static str, cfg: BreakerConfig, telemetry: Arc<Telemetry>) -> Arc<Self> {
        let b = Arc::new(CircuitBreaker {
            name,
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window: VecDeque::with_capacity(cfg.window),
                opened_at: Instant::now(),
                probes_started: 0,
                probes_ok: 0,
            }),
            telemetry: telemetry.clone(),
        });
        if !telemetry.metrics_enabled {
            return b;
        }
        let weak = Arc::downgrade(&b);
        let _gauge = telemetry
            .meter
            .i64_observable_gauge("circuit_breaker.state")
            .with_description("0 closed, 1 half-open, 2 open")
            .with_callback(move |obs| {
                if let Some(b) = weak.upgrade() {
                    obs.observe(
                        b.state().level(),
                        &[KeyValue::new("circuit_breaker.name", b.name)],
                    );
                }
            })
            .build();
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        let mut g = self.lock();
        self.maybe_half_open(&mut g);
        g.state
    }

    pub fn state_name(&self) -> &'static str {
        self.state().name()
    }

    fn transition(&self, g: &mut Inner, to: State) {
        let from = g.state;
        if from == to {
            return;
        }
        g.state = to;
        match to {
            State::Open => g.opened_at = Instant::now(),
            State::HalfOpen => {
                g.probes_started = 0;
                g.probes_ok = 0;
            }
            State::Closed => g.window.clear(),
        }
        tracing::info!(
            breaker = self.name,
            from = from.name(),
            to = to.name(),
            "circuit breaker transition"
        );
        self.telemetry.m.breaker_transitions.add(
            1,
            &[
                KeyValue::new("circuit_breaker.name", self.name),
                KeyValue::new("from", from.name()),
                KeyValue::new("to", to.name()),
            ],
        );
    }

    fn maybe_half_open(&self, g: &mut Inner) {
        if g.state == State::Open && g.opened_at.elapsed() >= self.cfg.open_wait {
            self.transition(g, State::HalfOpen);
        }
    }

    /// Asks to make a call. The permit records the outcome; dropped without one (the caller
    /// was cancelled), it gives its half-open probe slot back so the breaker cannot get stuck.
    pub fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        let mut g = self.lock();
        self.maybe_half_open(&mut g);
        let probe = match g.state {
            State::Closed => false,
            State::Open => return Err(Rejected),
            State::HalfOpen if g.probes_started < self.cfg.half_open_probes => {
                g.probes_started += 1;
                true
            }
            State::HalfOpen => return Err(Rejected),
        };
        Ok(Permit {
            breaker: self,
            probe,
            done: false,
        })
    }

    fn abandon(&self, probe: bool) {
        let mut g = self.lock();
        if probe && g.state == State::HalfOpen {
            g.probes_started = g.probes_started.saturating_sub(1);
        }
    }

    /// Records the outcome of a permitted call.
    fn record(&self, success: bool) {
        let mut g = self.lock();
        match g.state {
            State::Closed => {
                if g.window.len() == self.cfg.window {
                    g.window.pop_front();
                }
                g.window.push_back(!success);
                let n = g.window.len();
                let failures = g.window.iter().filter(|f| **f).count();
                if n >= self.cfg.min_calls && failures as f64 / n as f64 >= self.cfg.failure_rate {
                    self.transition(&mut g, State::Open);
                }
            }
            State::HalfOpen => {
                if !success {
                    self.transition(&mut g, State::Open);
                } else {
                    g.probes_ok += 1;
                    if g.probes_ok >= self.cfg.half_open_probes {
                        self.transition(&mut g, State::Closed);
                    }
                }
            }
            // A call admitted before the breaker opened; its outcome no longer matters.
            State::Open => {}
        }
    }
}

/// Permission for one call; see [`CircuitBreaker::acquire`].
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    pub fn record(mut self, success: bool) {
        self.done = true;
        self.breaker.record(success);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandon(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            open_wait: Duration::from_secs(5),
            half_open_probes: 2,
            slow_call: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_waits_probes_and_closes() {
        let b = CircuitBreaker::new("t", cfg(), Arc::new(Telemetry::disabled()));
        for _ in 0..3 {
            b.acquire().unwrap().record(false);
        }
        assert_eq!(b.state(), State::Closed, "below min_calls");
        b.acquire().unwrap().record(false);
        assert_eq!(b.state(), State::Open);
        assert!(b.acquire().is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let p1 = b.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only two probes");
        p1.record(true);
        p2.record(true);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = CircuitBreaker::new("t", cfg(), Arc::new(Telemetry::disabled()));
        for _ in 0..4 {
            b.acquire().unwrap().record(false);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        b.acquire().unwrap().record(false);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_keep_it_closed() {
        let b = CircuitBreaker::new("t", cfg(), Arc::new(Telemetry::disabled()));
        for i in 0..20 {
            b.acquire().unwrap().record(i % 3 != 2); // 1 failure in 3 < 50 %
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let b = CircuitBreaker::new("t", cfg(), Arc::new(Telemetry::disabled()));
        for _ in 0..4 {
            b.acquire().unwrap().record(false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.acquire().unwrap());
        drop(b.acquire().unwrap());
        // Without giving the slots back, no probe could ever run again.
        let p1 = b.acquire().unwrap();
        let p2 = b.acquire().unwrap();
        p1.record(true);
        p2.record(true);
        assert_eq!(b.state(), State::Closed);
    }
}
