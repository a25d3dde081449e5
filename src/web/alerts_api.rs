//! The alerting part of the JSON API: rules and alerts, transition history, silences.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query as QueryString, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::alerts::routing::{Matcher, Silence};
use crate::alerts::runtime::AlertsHandle;
use crate::vocab::{TimeRange, duration_ms, now_ms};

pub fn router(alerts: AlertsHandle) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(list))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/silences", get(silences).post(create_silence))
        .route("/api/v1/silences/{id}", delete(delete_silence))
        .with_state(alerts)
}

fn bad(parameter: &str, message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.into(), "parameter": parameter})),
    )
        .into_response()
}

async fn list(State(alerts): State<AlertsHandle>) -> Json<Value> {
    let view = alerts.view();
    Json(json!({
        "last_eval_ms": view.last_eval_ms,
        "config_error": view.config_error,
        "eval_errors": view.eval_errors,
        "rules": view.rules,
        "alerts": view.alerts,
        "slos": view.slos,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    since: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(alerts): State<AlertsHandle>,
    params: Result<QueryString<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let QueryString(params) = match params {
        Ok(params) => params,
        Err(rejection) => return bad("query", rejection.body_text()),
    };
    let since_ms = match params.since.as_deref().map(humantime::parse_duration) {
        None => now_ms() - 24 * 3_600_000,
        Some(Ok(d)) => TimeRange::before(now_ms(), duration_ms(d)).from_ms,
        Some(Err(_)) => return bad("since", "since must be a duration like 1h or 7d"),
    };
    let limit = params.limit.unwrap_or(200).clamp(1, 1000);
    match alerts.history(since_ms, limit).await {
        Ok(entries) => Json(json!({ "history": entries })).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn silences(State(alerts): State<AlertsHandle>) -> Json<Value> {
    Json(json!({ "silences": alerts.view().silences }))
}

/// A silence as posted: matchers like `alertname=HighP99Latency`, and an end or a duration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub matchers: Vec<String>,
    /// How long from now, e.g. "2h".
    pub duration: Option<String>,
    pub ends_at_ms: Option<i64>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// Validates a posted silence into one that can be stored (shared with the dashboard form).
pub fn build_silence(new: NewSilence, now: i64) -> Result<Silence, (&'static str, String)> {
    if new.matchers.is_empty() {
        return Err(("matchers", "a silence needs at least one matcher".into()));
    }
    let matchers = new
        .matchers
        .iter()
        .map(|m| Matcher::parse(m).map_err(|e| ("matchers", format!("{m:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let ends_at_ms = match (new.duration.as_deref(), new.ends_at_ms) {
        (Some(text), None) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => now + d.as_millis() as i64,
            _ => {
                return Err((
                    "duration",
                    format!("{text:?} is not a duration like 30m or 2h"),
                ));
            }
        },
        (None, Some(end)) if end > now => end,
        (None, Some(_)) => return Err(("ends_at_ms", "the end must be in the future".into())),
        _ => return Err(("duration", "give duration or ends_at_ms".into())),
    };
    Ok(Silence {
        id: format!("{:016x}", rand::random::<u64>()),
        matchers,
        starts_at_ms: now,
        ends_at_ms,
        created_by: new.created_by,
        comment: new.comment,
    })
}

async fn create_silence(
    State(alerts): State<AlertsHandle>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(new) = match body {
        Ok(body) => body,
        Err(rejection) => return bad("body", rejection.body_text()),
    };
    let silence = match build_silence(new, now_ms()) {
        Ok(silence) => silence,
        Err((parameter, message)) => return bad(parameter, message),
    };
    let id = silence.id.clone();
    match alerts.add_silence(silence).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn delete_silence(State(alerts): State<AlertsHandle>, Path(id): Path<String>) -> Response {
    match alerts.delete_silence(id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such silence"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
