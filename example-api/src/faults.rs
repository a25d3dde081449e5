//! Fault injection switches for demos and tests: downstream errors, latency and outage, extra DB
//! latency and the error rate of one chosen route. Changed through the loopback-only admin
//! endpoint; read lock-free-ish on the hot path (one short mutex hold, never across `.await`).

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The current fault settings; every field defaults to "no fault".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultSettings {
    /// Share of downstream calls answered with 500 (0.0–1.0).
    pub downstream_error_rate: f64,
    /// Extra latency added by the downstream before answering.
    pub downstream_latency_ms: u64,
    /// The downstream answers every call with 503, as if its backend were gone.
    pub downstream_outage: bool,
    /// Extra latency added to every SQL unit of work (simulates a slow database).
    pub db_latency_ms: u64,
    /// Route template (e.g. `/v1/products/{id}`) whose requests fail with `route_error_rate`.
    pub error_route: Option<String>,
    /// Share of requests to `error_route` answered with an injected 500 (0.0–1.0).
    pub route_error_rate: f64,
}

/// Shared, mutable fault settings.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<FaultSettings>,
}

impl Faults {
    pub fn get(&self) -> FaultSettings {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, settings: FaultSettings) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Applies a change to the current settings (used by the demo scenario).
    pub fn update(&self, f: impl FnOnce(&mut FaultSettings)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Decides whether to inject a failure with probability `rate`.
    pub fn roll(rate: f64) -> bool {
        rate > 0.0 && rand::random::<f64>() < rate
    }
}
