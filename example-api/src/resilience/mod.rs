//! Protecting the API from a failing dependency and from overload: a circuit breaker
//! ([`breaker`]), retries with full-jitter exponential backoff under a retry budget ([`retry`]).
//! Load shedding is the `load_shed` middleware in [`crate::routes::middleware`] (it needs the
//! request path, so it lives with the other middleware); its limiter — CPU-based admission,
//! backlog shedding and an adaptive concurrency limit — is [`limit`].

pub mod breaker;
pub mod limit;
pub mod retry;
