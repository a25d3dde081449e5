//! Idempotency keys for POST (Stripe's semantics): the first request with a key runs and its
//! response is stored; the same key with the same request replays that response; with a
//! different request → 422; while the first is still running → 409. Keys are scoped to the
//! client and purged after a day, so the table stays bounded.
//!
//! A claimed key never stays stuck: the claimed request runs to its end in a task of its own,
//! so a client that goes away mid-flight neither cancels a write half done nor leaves the key
//! claimed (its retry gets the stored response); and a claim whose request died with the
//! process expires after `idempotency_lease`, when a retry of the same request takes it over.
//! Each claim carries a random token, so only its holder stores a response or releases it.

use super::{ApiError, AppState, Client};
use crate::cache::etag;
use crate::db::queries;
use crate::db::seed::now_ms;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::context::FutureExt as _;
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
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Stored, ApiError>> + Send + 'static,
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
    let mut h = Sha256::new();
    h.update(what.as_bytes());
    h.update(b"\n");
    h.update(body);
    let hash = hex::encode(h.finalize());
    // A `tracing` span rather than an OpenTelemetry API span: the service's `tracing` layer
    // (`Telemetry::tracing_layer`) makes it a span of the request's trace, and the statements
    // run inside it (the claim, the write itself, the completion) nest under it — which is how
    // any `tracing`-instrumented code joins the service's traces.
    let span = tracing::info_span!(
        "idempotency",
        otel.kind = "internal",
        idempotency.replayed = tracing::field::Empty
    );
    // From the claim to the stored response in a task of its own: dropping the handler (the
    // client went away) must not leave the key claimed or a write half done.
    let claimed = claim_and_run(st.clone(), client.key.clone(), key, hash, f)
        .instrument(span)
        .with_current_context();
    match tokio::spawn(claimed).await {
        Ok(result) => result.map(|(stored, replayed)| respond(&stored, replayed)),
        // A panic: the claim expires after the lease.
        Err(e) => Err(ApiError::Internal(format!("the request failed: {e}"))),
    }
}

/// Claims the key and runs `f`, or answers from the key's record: the stored response and
/// whether it is a replay.
async fn claim_and_run<F, Fut>(
    st: AppState,
    client: String,
    key: String,
    hash: String,
    f: F,
) -> Result<(Stored, bool), ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Stored, ApiError>>,
{
    let replayed = |yes: bool| {
        tracing::Span::current().record("idempotency.replayed", yes);
    };
    let (c, k, hh) = (client.clone(), key.clone(), hash.clone());
    let claim: i64 = rand::random();
    let lease_ms = st.cfg.idempotency_lease.as_millis() as i64;
    let existing = st
        .db
        .write(None, move |sql| {
            queries::claim_idempotency_key(sql, &c, &k, &hh, claim, now_ms(), lease_ms)
                .map_err(ApiError::from)
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
                Ok((stored, true))
            }
            _ => Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still in progress".into(),
            )),
        };
    }
    replayed(false);
    match f().await {
        Ok(stored) => {
            let json = serde_json::to_string(&stored).unwrap_or_default();
            let status = stored.status;
            st.db
                .write(None, move |sql| {
                    queries::complete_idempotency_key(sql, &client, &key, claim, status, &json)
                        .map_err(ApiError::from)
                })
                .await?;
            Ok((stored, false))
        }
        Err(e) => {
            // Failed requests are not remembered: the client may retry with the same key.
            let _ = st
                .db
                .write(None, move |sql| {
                    queries::release_idempotency_key(sql, &client, &key, claim)
                        .map_err(ApiError::from)
                })
                .await;
            Err(e)
        }
    }
}
