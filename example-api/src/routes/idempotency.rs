//! Idempotency keys for POST (Stripe's semantics): the first request with a key runs and its
//! response is stored; the same key with the same request replays that response; with a
//! different request → 422; while the first is still running → 409. Keys are scoped to the
//! client and purged after a day, so the table stays bounded.

use super::{ApiError, AppState, Client};
use crate::cache::etag;
use crate::db::queries;
use crate::db::seed::now_ms;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::future::Future;
use tracing::Instrument as _;

pub const HEADER: &str = "idempotency-key";
/// How long a key is remembered.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;

/// A response as stored for replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub status: u16,
    pub location: Option<String>,
    pub body: Value,
}

/// Renders a stored (or fresh) write response.
pub fn respond(s: &Stored, replayed: bool) -> Response {
    let bytes = serde_json::to_vec(&s.body).unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&etag::etag(&bytes)) {
        headers.insert(header::ETAG, v);
    }
    if let Some(loc) = s
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, loc);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    (status, headers, Body::from(bytes)).into_response()
}

/// Runs `f` at most once per `(client, Idempotency-Key)`.
pub async fn run<F, Fut>(
    st: &AppState,
    client: &Client,
    headers: &HeaderMap,
    what: &str,
    body: &Bytes,
    f: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Stored, ApiError>>,
{
    let Some(key) = headers.get(HEADER) else {
        return Ok(respond(&f().await?, false));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible characters".into())
        })?
        .to_string();
    // A `tracing` span rather than an OpenTelemetry API span: the service's `tracing` layer
    // (`Telemetry::tracing_layer`) makes it a span of the request's trace, and the statements
    // run inside it (the claim, the write itself, the completion) nest under it — which is how
    // any `tracing`-instrumented code joins the service's traces.
    let span = tracing::info_span!(
        "idempotency",
        otel.kind = "internal",
        idempotency.replayed = tracing::field::Empty
    );
    async move {
        let replayed = |yes: bool| {
            tracing::Span::current().record("idempotency.replayed", yes);
        };
        let mut h = Sha256::new();
        h.update(what.as_bytes());
        h.update(b"\n");
        h.update(body);
        let hash = hex::encode(h.finalize());
        let (c, k, hh) = (client.key.clone(), key.clone(), hash.clone());
        let existing = st
            .db
            .write(None, move |sql| {
                queries::claim_idempotency_key(sql, &c, &k, &hh, now_ms()).map_err(ApiError::from)
            })
            .await?;
        if let Some(rec) = existing {
            if rec.request_hash != hash {
                return Err(ApiError::Unprocessable(
                    "Idempotency-Key was already used with a different request".into(),
                ));
            }
            return match (rec.status, rec.body) {
                (Some(_), Some(body)) => {
                    let stored: Stored = serde_json::from_str(&body)
                        .map_err(|e| ApiError::Internal(format!("stored response: {e}")))?;
                    replayed(true);
                    Ok(respond(&stored, true))
                }
                _ => Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is still in progress".into(),
                )),
            };
        }
        let (c, k) = (client.key.clone(), key.clone());
        replayed(false);
        match f().await {
            Ok(stored) => {
                let json = serde_json::to_string(&stored).unwrap_or_default();
                let status = stored.status;
                st.db
                    .write(None, move |sql| {
                        queries::complete_idempotency_key(sql, &c, &k, status, &json)
                            .map_err(ApiError::from)
                    })
                    .await?;
                Ok(respond(&stored, false))
            }
            Err(e) => {
                // Failed requests are not remembered: the client may retry with the same key.
                let _ = st
                    .db
                    .write(None, move |sql| {
                        queries::release_idempotency_key(sql, &c, &k).map_err(ApiError::from)
                    })
                    .await;
                Err(e)
            }
        }
    }
    .instrument(span)
    .await
}
