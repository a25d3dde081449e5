//! redline's integration tests: one binary, the real server on port 0 through `helpers`.

mod helpers;
#[path = "support/prometheus.rs"]
mod prometheus_server;
#[path = "support/tmpfs.rs"]
mod tmpfs;

mod alerting;
mod browser;
mod durability;
mod hostile_input;
mod ingest_errors;
mod layers;
mod mail_settings;
mod notify;
mod otlp_auth;
mod otlp_export;
mod otlp_logs;
mod otlp_tls;
mod pages;
mod prometheus;
mod query_semantics;
mod remote_write_faults;
mod restart;
mod sketch_properties;
mod store_faults;
mod storms;
mod web_guard;
