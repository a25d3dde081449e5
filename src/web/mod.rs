//! The web address: the dashboard ([`pages`], charts from [`charts`]), the JSON query API,
//! `/healthz`, `/readyz` and redline's own `/metrics`, behind [`auth`] when configured.

pub mod alerts_api;
pub mod api;
pub mod auth;
pub mod charts;
pub mod pages;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::pipeline::IngestQueue;
use crate::query::Query;
use crate::self_metrics;
use crate::store::Readers;

#[derive(Clone)]
struct Health {
    prometheus: PrometheusHandle,
    queue: IngestQueue,
    readers: Readers,
    queue_capacity: usize,
}

pub fn router(
    query: Query,
    prometheus: PrometheusHandle,
    queue: IngestQueue,
    readers: Readers,
    queue_capacity: usize,
) -> Router {
    let health = Health {
        prometheus,
        queue,
        readers,
        queue_capacity,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_metrics))
        .with_state(health)
        .merge(api::router(query))
}

/// Wraps the finished web router: credentials when configured, and the CSRF guard on every
/// unsafe method (the outermost layers, so they cover routes merged by any module).
pub fn protect(router: Router, web_auth: auth::WebAuth) -> Router {
    router
        .layer(axum::middleware::from_fn(auth::csrf_guard))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(web_auth),
            auth::require_auth,
        ))
}

/// Ready when the database answers and the ingest queue has room.
async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let database = health
        .readers
        .run(|conn| Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?))
        .await;
    let queue_full = health.queue.depth() >= health.queue_capacity;
    match (database, queue_full) {
        (Ok(_), false) => (StatusCode::OK, "ready\n".to_string()),
        (Err(e), _) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        (_, true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest queue is full\n".to_string(),
        ),
    }
}

async fn prometheus_metrics(State(health): State<Health>) -> impl IntoResponse {
    self_metrics::queue_depth(health.queue.depth(), health.queue_capacity);
    health.prometheus.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        health.prometheus.render(),
    )
}
