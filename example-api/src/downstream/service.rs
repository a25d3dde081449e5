//! The recommendations service: `GET /recommendations/{product_id}` returns related product
//! ids. It reads the shared fault settings (error rate, latency, outage) so demos and tests can
//! break it, and counts the calls it receives. It has its own `service.name`, so traces show two
//! services joined by trace context.

use crate::faults::Faults;
use crate::routes::middleware::http_telemetry;
use crate::telemetry::Telemetry;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Service {
    pub faults: Arc<Faults>,
    pub received: Arc<AtomicU64>,
    /// Number of products, so recommended ids exist.
    pub products: i64,
}

pub fn router(svc: Arc<Service>, telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/recommendations/{product_id}", get(recommend))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(svc)
        .layer(axum::middleware::from_fn_with_state(
            telemetry,
            http_telemetry,
        ))
}

/// Deterministic "related products": five ids spread over the catalog.
pub fn related(id: i64, products: i64) -> Vec<i64> {
    let n = products.max(1);
    (1..=5)
        .map(|k| (id * 7 + k * 131).rem_euclid(n) + 1)
        .filter(|&p| p != id)
        .collect()
}

async fn recommend(State(svc): State<Arc<Service>>, Path(id): Path<i64>) -> Response {
    svc.received.fetch_add(1, Ordering::Relaxed);
    let f = svc.faults.get();
    if f.downstream_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.downstream_latency_ms)).await;
    }
    if f.downstream_outage {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "outage"})),
        )
            .into_response();
    }
    if Faults::roll(f.downstream_error_rate) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "injected failure"})),
        )
            .into_response();
    }
    Json(json!({ "product_id": id, "items": related(id, svc.products) })).into_response()
}
