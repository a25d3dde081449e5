//! example-api: a product catalog that exercises every scaling pattern of the guide, instrumented
//! with OpenTelemetry so redline has something real to watch.
//!
//! # Layout (request data flow, outside in)
//! ```text
//! HTTP ─► telemetry middleware (server span + http.server.* metrics)
//!      ─► load shedder (concurrency limit, 503 instead of queueing)
//!      ─► rate limiter (sliding window; Redis Lua when REDIS_URL is set)
//!      ─► route fault injection (demo only)
//!      ─► routes/*  ─► cache/ (L1 moka → L2 Redis) ─► db/ (primary writer + read-only replicas)
//!                   └► downstream client (timeout, retry + budget, circuit breaker) ─► recommendations
//! ```
//! - [`config`]: command line + environment → typed settings.
//! - [`app`]: binds listeners (port 0 friendly), wires state and background tasks, ordered shutdown.
//! - [`db`]: schema, seed data, the primary/replica pools and every SQL statement.
//! - [`cache`]: the two-level product cache, ETags and the write-behind view counters.
//! - [`ratelimit`]: sliding-window limits per client, in process or shared through Redis.
//! - [`passwords`]: argon2id password hashes, verified off the executor, a few at once.
//! - [`resilience`]: circuit breaker, full-jitter retry with a budget, load shedding.
//! - [`downstream`]: the recommendations service (with fault injection) and its client.
//! - [`routes`]: HTTP handlers, pagination, sparse fieldsets, includes, idempotency.
//! - [`telemetry`]: the OpenTelemetry SDK's tracer and meter providers (OTLP export), span
//!   helpers and instruments; [`sampling`] decides which traces are kept.
//! - [`loadgen`]: open-model load generator with coordinated-omission-free latencies.
//! - [`demo`]: redline + API + load + a scripted fault scenario in one command.
//!
//! The performance benchmarks are not part of the library: `benches/api/` (`cargo bench -p
//! example-api --bench api`) drives `example-api serve` processes from outside.

pub mod app;
pub mod cache;
pub mod config;
pub mod db;
pub mod demo;
pub mod downstream;
pub mod faults;
pub mod loadgen;
pub mod passwords;
pub mod ratelimit;
pub mod resilience;
pub mod routes;
pub mod sampling;
pub mod telemetry;

pub use app::App;
pub use config::Config;
