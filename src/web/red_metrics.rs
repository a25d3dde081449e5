//! `GET /metrics/red`: every endpoint's RED totals in the Prometheus text format, for a
//! Prometheus (or any compatible scraper) to scrape. Behind the web address's credentials like
//! the API; rendered off the async threads.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::export::ExternalLabels;
use crate::export::exposition::{CONTENT_TYPE, render};
use crate::pipeline::Live;

#[derive(Clone)]
struct RedMetrics {
    live: Arc<Live>,
    external: Arc<ExternalLabels>,
}

pub fn router(live: Arc<Live>, external: ExternalLabels) -> Router {
    Router::new()
        .route("/metrics/red", get(red_metrics))
        .with_state(RedMetrics {
            live,
            external: Arc::new(external),
        })
}

async fn red_metrics(State(state): State<RedMetrics>) -> Response {
    let snapshot = state.live.red_totals();
    let external = state.external.clone();
    match tokio::task::spawn_blocking(move || render(snapshot, &external)).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
