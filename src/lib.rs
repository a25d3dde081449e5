//! # redline
//!
//! An OpenTelemetry sidecar: it receives OTLP traces and metrics, computes RED figures (rate,
//! errors, duration percentiles) per service and endpoint in mergeable windows, keeps history in
//! one SQLite file and serves a JSON query API (and, later, alerts and a dashboard).
//!
//! ## Layout — data flows one way
//! ```text
//! ingest (gRPC :4317, HTTP :4318) ──convert──▶ bounded queue ──▶ aggregate (windows, sketches,
//!   cardinality limits, trace sampling) ──flush──▶ store (SQLite writer thread, rollups,
//!   retention) ──▶ query (stored rows + unflushed deltas) ──▶ web (JSON API, /metrics)
//! ```
//! - [`model`]: the plain records passed between stages.
//! - [`ingest`]: OTLP receivers and the pure OTLP → record conversion.
//! - [`aggregate`]: per-window RED statistics, metric windows, trace sampling.
//! - [`pipeline`]: the task that owns the aggregator, flushes it and shares unflushed data.
//! - [`store`]: SQLite schema, migrations, the writer thread, reads and retention.
//! - [`query`]: the read model every consumer uses.
//! - [`web`]: the dashboard (askama pages, SVG charts), the HTTP API, health and Prometheus
//!   endpoints.
//! - [`dashboards`]: custom dashboards as code (`dashboards/*.toml`) and their validation.
//! - [`budget`] and [`memsize`]: the one memory budget between the sockets and SQLite, and the
//!   size estimates it counts with.
//! - [`supervise`]: every stage under a supervisor that `/readyz` reports.
//! - [`config`] and [`app`]: settings, wiring and ordered shutdown.

pub mod aggregate;
pub mod alerts;
pub mod app;
pub mod budget;
pub mod config;
pub mod dashboards;
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
pub mod vocab;
pub mod web;
