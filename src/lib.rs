//! # redline
//!
//! An OpenTelemetry sidecar: it receives OTLP traces and metrics, computes RED figures (rate,
//! errors, duration percentiles) per service and endpoint in mergeable windows, keeps history in
//! one SQLite file, evaluates alert rules and sends their e-mail, and serves a dashboard and a
//! JSON query API.
//!
//! Data flows one way — [`ingest`] → [`pipeline`] ([`aggregate`]) → [`store`] → [`query`] →
//! [`alerts`], [`notify`], [`web`] — over a shared vocabulary at the bottom ([`vocab`],
//! [`model`], [`self_metrics`], [`budget`]) and a rendering leaf ([`render`]).
//! `docs/ARCHITECTURE.md` has the map and the rules; `tests/layers.rs` checks the layers.

pub mod aggregate;
pub mod alerts;
pub mod app;
pub mod budget;
pub mod config;
pub mod dashboards;
pub mod export;
pub mod forward;
pub mod ingest;
pub mod memsize;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod query;
pub mod render;
pub mod self_metrics;
pub mod store;
pub mod supervise;
pub mod tls;
pub mod vocab;
pub mod web;
