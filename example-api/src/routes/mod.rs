//! HTTP handlers and the router. Handlers parse and validate input, then call the cache, the
//! database or the downstream client; cross-cutting concerns live in [`middleware`].

pub mod admin;
pub mod auth;
pub mod error;
pub mod idempotency;
pub mod middleware;
pub mod misc;
pub mod pagination;
pub mod products;

use crate::cache::views::ViewCounter;
use crate::cache::{ProductCache, etag};
use crate::config::Config;
use crate::db::Db;
use crate::downstream::client::RecommendationsClient;
use crate::faults::Faults;
use crate::ratelimit::RateLimiter;
use crate::telemetry::Telemetry;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use error::ApiError;
use pagination::CursorCodec;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Everything handlers share.
pub struct Shared {
    pub cfg: Config,
    pub db: Db,
    pub cache: Arc<ProductCache>,
    pub views: Arc<ViewCounter>,
    /// `/v1/stats` aggregates; one entry, short TTL, computed once per expiry.
    pub stats: moka::future::Cache<(), Arc<Value>>,
    /// Popular product ids, the recommendations fallback.
    pub popular: moka::future::Cache<(), Arc<Vec<i64>>>,
    /// API key → owner; bounded, and unknown keys are cached briefly too.
    pub api_keys: moka::future::Cache<String, Option<String>>,
    pub cursors: CursorCodec,
    pub limiter: Arc<RateLimiter>,
    /// Requests in progress and their adaptive limit (load shedding).
    pub shed: Arc<crate::resilience::limit::AdaptiveLimit>,
    pub recs: Arc<RecommendationsClient>,
    pub faults: Arc<Faults>,
    /// Password verification, a bounded number at once.
    pub passwords: Arc<crate::passwords::Passwords>,
    /// Calls received by the in-process downstream service (0 when it is external).
    pub downstream_received: Arc<std::sync::atomic::AtomicU64>,
    pub telemetry: Arc<Telemetry>,
}

pub type AppState = Arc<Shared>;

/// Who is calling: the API key's owner if one was presented, else the peer address.
#[derive(Debug, Clone)]
pub struct Client {
    /// Rate-limit and read-your-writes key.
    pub key: String,
    /// Owner of a valid API key.
    pub user: Option<String>,
    pub ip: String,
}

impl Client {
    /// Writes need an API key.
    pub fn require_user(&self) -> Result<&str, ApiError> {
        self.user.as_deref().ok_or(ApiError::Unauthorized)
    }
}

/// The public router (`/v1`, health checks) with its middleware stack.
pub fn router(state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    let v1 = Router::new()
        .route("/v1/products", get(products::list).post(products::create))
        .route(
            "/v1/products/{id}",
            get(products::get_one)
                .patch(products::update)
                .delete(products::delete),
        )
        .route(
            "/v1/products/{id}/reviews",
            get(products::list_reviews).post(products::create_review),
        )
        .route(
            "/v1/products/{id}/recommendations",
            get(misc::recommendations),
        )
        .route("/v1/categories", get(misc::categories))
        .route("/v1/stats", get(misc::stats))
        .route("/v1/auth/token", post(auth::token))
        // Innermost first: route faults, identity + rate limit, then shedding outermost (after
        // telemetry): under overload a rejection must cost as little as possible, so it comes
        // before the API-key lookup and the limiter.
        .layer(from_fn_with_state(state.clone(), middleware::route_faults))
        .layer(from_fn_with_state(state.clone(), middleware::rate_limit))
        .layer(from_fn_with_state(state.clone(), middleware::load_shed));
    Router::new()
        .route("/healthz", get(misc::healthz))
        .route("/readyz", get(misc::readyz))
        .merge(v1)
        .layer(from_fn_with_state(
            state.telemetry.clone(),
            middleware::http_telemetry,
        ))
        .with_state(state)
}

/// Parses `fields=a,b` against the allowed set; `id` is always returned. Unknown → 400.
pub fn parse_fields(raw: Option<&str>, allowed: &[&str]) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let mut out = vec!["id".to_string()];
    for f in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if !allowed.contains(&f) {
            return Err(ApiError::bad_param(
                "fields",
                format!("unknown field '{f}'; allowed: {}", allowed.join(",")),
            ));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    Ok(Some(out))
}

/// Parses `include=category,reviews`. Unknown → 400.
pub fn parse_include(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for f in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        if !allowed.contains(&f) {
            return Err(ApiError::bad_param(
                "include",
                format!("unknown include '{f}'; allowed: {}", allowed.join(",")),
            ));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

/// Keeps only the asked fields (plus included relations, added later).
pub fn project(row: &Map<String, Value>, fields: Option<&[String]>) -> Map<String, Value> {
    match fields {
        None => row.clone(),
        Some(f) => row
            .iter()
            .filter(|(k, _)| f.iter().any(|x| x == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Query parameters as given (validated by each handler, so errors can name the parameter).
pub type RawQuery = HashMap<String, String>;

pub fn int_param(q: &RawQuery, name: &'static str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::bad_param(name, format!("{name} must be an integer")))
        })
        .transpose()
}

/// A JSON response with a strong ETag over its body and conditional GET (`If-None-Match` →
/// 304 with the same validators and no body).
pub fn cached_json(
    req_headers: &HeaderMap,
    status: StatusCode,
    body: &Value,
    cache_control: &str,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let tag = etag::etag(&bytes);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("etag is ascii"),
    );
    if let Ok(cc) = HeaderValue::from_str(cache_control) {
        headers.insert(header::CACHE_CONTROL, cc);
    }
    let not_modified = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| etag::none_match_hits(h, &tag));
    if not_modified && status == StatusCode::OK {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, Body::from(bytes)).into_response()
}

/// The ETag a plain `GET /v1/products/{id}` would carry for this product (for `If-Match`).
pub fn product_etag(product: &Map<String, Value>) -> String {
    let body = serde_json::json!({ "data": product });
    etag::etag(&serde_json::to_vec(&body).unwrap_or_default())
}
