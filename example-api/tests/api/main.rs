//! One integration-test binary: every test starts the API on port 0 with a temporary database.

mod cli;
mod demo_alerts;
mod demo_instances;
mod hardening;
mod helpers;
mod instrumentation;
mod lists;
mod postgres;
mod postgres_demo;
mod resilience;
mod telemetry;
mod traffic;
mod with_redis;
mod with_redline;
mod writes;
