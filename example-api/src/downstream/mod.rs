//! The recommendations dependency: [`service`] is the downstream service itself (run by the
//! same binary on its own port, with fault injection), [`client`] is how the API calls it —
//! per-attempt timeout, full-jitter retries under a budget, a circuit breaker, one CLIENT span
//! per attempt with W3C trace context propagated.

pub mod client;
pub mod service;
