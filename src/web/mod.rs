//! The web address: the dashboard ([`pages`], charts from [`crate::render`]), the JSON query API,
//! `/healthz`, `/readyz` and redline's own `/metrics`, behind [`auth`] when configured and
//! [`guard`] always (the Host allowlist and the security headers).

pub mod alerts_api;
pub mod api;
pub mod auth;
pub mod guard;
pub mod pages;
pub mod red_metrics;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use std::sync::Arc;

use crate::budget::MemoryBudget;
use crate::pipeline::{Durability, IngestQueue};
use crate::query::Query;
use crate::self_metrics;
use crate::store::Readers;
use crate::store::writer::{WriterHealth, WriterState};
use crate::supervise::Stages;

/// What `/readyz` and `/metrics` look at.
#[derive(Clone)]
pub struct Readiness {
    pub queue: IngestQueue,
    pub readers: Readers,
    pub stages: Arc<Stages>,
    pub budget: Arc<MemoryBudget>,
    pub durability: Arc<Durability>,
    pub writer: WriterHealth,
}

#[derive(Clone)]
struct Health {
    prometheus: PrometheusHandle,
    readiness: Readiness,
}

pub fn router(query: Query, prometheus: PrometheusHandle, readiness: Readiness) -> Router {
    let health = Health {
        prometheus,
        readiness,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_metrics))
        .with_state(health)
        .merge(api::router(query))
}

/// Wraps the finished web router (the outermost layers, so they cover routes merged by any
/// module, the fallback 404 and each other's refusals): the security headers on every
/// response, the Host allowlist, credentials when configured, and the CSRF guard on every
/// unsafe method; over TLS (`https`), Strict-Transport-Security too.
pub fn protect(
    router: Router,
    web_auth: auth::WebAuth,
    hosts: guard::AllowedHosts,
    https: bool,
) -> Router {
    let router = if https {
        router.layer(axum::middleware::from_fn(guard::strict_transport_security))
    } else {
        router
    };
    router
        .layer(axum::middleware::from_fn(auth::csrf_guard))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(web_auth),
            auth::require_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            guard::check_host,
        ))
        .layer(axum::middleware::from_fn(guard::security_headers))
}

/// Ready when every stage runs, the database answers, and redline can take data: the ingest
/// queue and the memory budget have room and unwritten data is within its bound.
async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    match not_ready(&health.readiness).await {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Why redline is not ready, if it is not.
async fn not_ready(readiness: &Readiness) -> Option<String> {
    if let Some(trouble) = readiness.stages.trouble() {
        return Some(trouble);
    }
    let database = readiness
        .readers
        .run(|conn| Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?))
        .await;
    if let Err(e) = database {
        return Some(format!("database: {e}"));
    }
    if let WriterState::Failing { message, .. } = readiness.writer.status().state {
        return Some(format!("the store cannot write: {message}"));
    }
    if let Err(behind) = readiness.durability.check(1, crate::vocab::now_ms()) {
        return Some(behind.to_string());
    }
    if readiness.queue.depth() >= readiness.queue.capacity() {
        return Some("ingest queue is full".into());
    }
    let budget = &readiness.budget;
    if !budget.has_room_for(1) {
        return Some(format!(
            "the memory budget is spent ({} of {} bytes)",
            budget.used(),
            budget.limit()
        ));
    }
    None
}

async fn prometheus_metrics(State(health): State<Health>) -> impl IntoResponse {
    let readiness = &health.readiness;
    self_metrics::queue_depth(readiness.queue.depth(), readiness.queue.capacity());
    let budget = &readiness.budget;
    let parts = crate::budget::Part::ALL.map(|part| (part.as_str(), budget.used_by(part)));
    self_metrics::memory(budget.limit(), parts);
    self_metrics::unwritten(readiness.durability.unwritten());
    health.prometheus.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.prometheus.render(),
    )
}
