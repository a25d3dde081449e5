//! Alerting: rules from `alerts.toml` evaluated against the query layer, a Prometheus-style
//! state machine, Alertmanager-style routing and grouping, and notifications handed to the
//! e-mail outbox.
//!
//! - [`config`]: the file → validated rules, routes, receivers (all problems at once).
//! - [`source`]: what a rule reads and how readings become observations.
//! - [`engine`]: the pure state machine (virtual clock in tests).
//! - [`routing`]: routes, grouping timers, inhibition, silences, the notification log.
//! - [`runtime`]: the evaluation loop, reloads, persistence, notification building.
//! - [`rule_tests`]: `redline test-rules`, promtool-style tests on synthetic series.

pub mod config;
pub mod engine;
mod evidence;
pub mod preview;
pub mod routing;
pub mod rule_tests;
pub mod runtime;
pub mod source;
pub mod store;
pub mod template;
