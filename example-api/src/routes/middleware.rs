//! Cross-cutting request handling, outermost first: HTTP telemetry (server span and metrics per
//! the HTTP semantic conventions), load shedding, client identity + rate limiting, and route
//! fault injection.

use super::{ApiError, AppState, Client};
use crate::faults::Faults;
use crate::ratelimit;
use crate::telemetry::{HTTP_METHODS, Telemetry, extract_context};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The method as the semantic conventions name it, and its index in [`HTTP_METHODS`].
fn method_attr(m: &axum::http::Method) -> (usize, &'static str) {
    let i = HTTP_METHODS
        .iter()
        .position(|x| *x == m.as_str())
        .unwrap_or(HTTP_METHODS.len() - 1);
    (i, HTTP_METHODS[i])
}

/// One SERVER span per request named `{method} {route}`, child of an incoming `traceparent`,
/// and the `http.server.request.duration` / `http.server.active_requests` metrics. The span's
/// name and attributes are only built when the sampler keeps the span.
pub async fn http_telemetry(
    State(tel): State<Arc<Telemetry>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let (method_idx, method) = method_attr(req.method());
    let route = matched.as_ref().map(MatchedPath::as_str);
    let parent = extract_context(req.headers());
    // Started even when not sampled, so the trace id and flags propagate downstream. The
    // sampler decides on the parent and the trace id alone (see `sampling`), so the span starts
    // under the method's static name, and a span that records gets its full name and
    // attributes afterwards: an unsampled request allocates neither.
    let mut span = tel.tracer.build_with_context(
        SpanBuilder::from_name(method).with_kind(SpanKind::Server),
        &parent,
    );
    let sampled = span.is_recording();
    if sampled {
        if let Some(r) = route {
            span.update_name(format!("{method} {r}"));
        }
        span.set_attributes(request_attributes(&req, method, route));
    }
    let cx = parent.with_span(span);
    let active = ActiveGuard::new(&tel, method_idx);
    let start = Instant::now();
    let resp = next.run(req).with_context(cx.clone()).await;
    let elapsed = start.elapsed().as_secs_f64();
    drop(active);
    let status = resp.status().as_u16();
    if sampled {
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            // Server spans: only 5xx is an error (4xx is the client's).
            span.set_status(Status::error(format!("HTTP {status}")));
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
        }
        span.end();
    }
    tel.m
        .http_duration
        .record(elapsed, method_idx, route, status);
    resp
}

/// The SERVER span's request attributes (HTTP semantic conventions).
fn request_attributes(req: &Request, method: &'static str, route: Option<&str>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(5);
    attributes.push(KeyValue::new("http.request.method", method));
    attributes.push(KeyValue::new("url.path", req.uri().path().to_string()));
    attributes.push(KeyValue::new("url.scheme", "http"));
    if let Some(r) = route {
        attributes.push(KeyValue::new("http.route", r.to_string()));
    }
    if let Some(ua) = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    attributes
}

/// Counts a request as active until dropped — also when the client disconnects and the
/// request future is dropped mid-way.
struct ActiveGuard<'a> {
    tel: &'a Telemetry,
    method: usize,
}

impl<'a> ActiveGuard<'a> {
    fn new(tel: &'a Telemetry, method: usize) -> Self {
        tel.m.http_active.add(method, 1);
        ActiveGuard { tel, method }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.tel.m.http_active.add(self.method, -1);
    }
}

async fn api_key_owner(st: &AppState, key: &str) -> Result<Option<String>, ApiError> {
    let db = st.db.clone();
    let k = key.to_string();
    st.api_keys
        .try_get_with(key.to_string(), async move {
            let k2 = k.clone();
            let owner = db
                .read(None, move |sql| {
                    crate::db::queries::api_key_owner(sql, &k).map_err(ApiError::from)
                })
                .await?;
            if owner.is_some() {
                return Ok(owner);
            }
            // A key issued a moment ago may not have reached the standby yet: the primary
            // has the last word (the answer is cached either way).
            db.read_primary(move |sql| {
                crate::db::queries::api_key_owner(sql, &k2).map_err(ApiError::from)
            })
            .await
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Identifies the client (API key if valid, else peer IP; `X-Forwarded-For` is not trusted)
/// and applies the default sliding-window policy. `/v1/auth/token` gets its stricter policy in
/// the handler, where the username is known.
pub async fn rate_limit(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let user = match &bearer {
        Some(k) => match api_key_owner(&st, k).await {
            Ok(Some(u)) => Some(u),
            Ok(None) => return ApiError::Unauthorized.into_response(),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let key = match (&user, &bearer) {
        // Hashed: the key becomes a Redis key name and a log/metric label, never the secret.
        (Some(_), Some(k)) => {
            use sha2::{Digest, Sha256};
            format!("key:{}", hex::encode(&Sha256::digest(k.as_bytes())[..8]))
        }
        _ => format!("ip:{ip}"),
    };
    req.extensions_mut().insert(Client {
        key: key.clone(),
        user,
        ip,
    });
    if req.uri().path() == "/v1/auth/token" {
        return next.run(req).await;
    }
    let decision = st.limiter.check(&st.cfg.rate_default, &key).await;
    if !decision.allowed {
        return ratelimit::reject(&decision);
    }
    let mut resp = next.run(req).await;
    decision.apply(resp.headers_mut());
    resp
}

/// Answers 503 + `Retry-After` at once when the limiter ([`crate::resilience::limit`]) turns the
/// request away — the process is over its CPU target, the runtime is working through a backlog,
/// or the concurrency limit is reached — instead of queueing (a queue would only add latency to
/// every request behind it).
pub async fn load_shed(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match st.shed.try_acquire() {
        Ok(permit) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(reason) => {
            st.telemetry.m.shed[reason as usize].add(1);
            overloaded()
        }
    }
}

/// The 503 of a shed request, built from constants: under overload a rejection must cost as
/// little as possible, so nothing is serialized or allocated beyond the response itself.
fn overloaded() -> Response {
    const BODY: &str =
        r#"{"error":{"code":"overloaded","message":"server is at capacity; retry later"}}"#;
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::RETRY_AFTER, HeaderValue::from_static("1")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        BODY,
    )
        .into_response()
}

/// Demo fault: fails a share of the requests to one route with 500.
pub async fn route_faults(
    State(st): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let f = st.faults.get();
    if let (Some(route), Some(m)) = (f.error_route.as_deref(), matched.as_ref())
        && route == m.as_str()
        && Faults::roll(f.route_error_rate)
    {
        return ApiError::Internal("injected fault".into()).into_response();
    }
    next.run(req).await
}
