//! redline's integration tests: one binary, the real server on port 0 through `helpers`.

mod helpers;

mod alerting;
mod browser;
mod hostile_input;
mod ingest_errors;
mod notify;
mod otlp_export;
mod pages;
mod query_semantics;
mod restart;
mod sketch_properties;
