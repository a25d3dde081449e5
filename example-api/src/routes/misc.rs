//! The smaller endpoints: categories, stats, recommendations (with graceful degradation), and
//! health checks.

use super::pagination::{next_url, parse_limit};
use super::products::parse_id;
use super::{ApiError, AppState, Client, RawQuery, cached_json, parse_fields, project};
use crate::db::queries::{self, CATEGORY_FIELDS};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET /v1/categories`
pub async fn categories(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Query(q): Query<RawQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = parse_limit(q.get("limit").map(String::as_str))?;
    let fields = parse_fields(q.get("fields").map(String::as_str), CATEGORY_FIELDS)?;
    let after = q
        .get("cursor")
        .map(|c| st.cursors.decode("categories", c))
        .transpose()?
        .map(|k| k.1);
    let mut rows = st
        .db
        .read(Some(&client.key), move |sql| {
            queries::list_categories(sql, after, limit).map_err(ApiError::from)
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match (has_more, rows.last()) {
        (true, Some(last)) => {
            let id = last["id"].as_i64().unwrap_or(0);
            Some(st.cursors.encode("categories", (id, id)))
        }
        _ => None,
    };
    let next = next_cursor
        .as_deref()
        .map(|c| next_url(uri.path(), uri.query(), c));
    let data: Vec<Value> = rows
        .iter()
        .map(|r| Value::Object(project(r, fields.as_deref())))
        .collect();
    let body = json!({ "data": data, "meta": { "limit": limit, "next_cursor": next_cursor }, "links": { "next": next } });
    let mut resp = cached_json(&headers, StatusCode::OK, &body, "public, max-age=300");
    if let Some(v) = next.and_then(|u| HeaderValue::from_str(&format!("<{u}>; rel=\"next\"")).ok())
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

/// `GET /v1/stats`: aggregates computed at most once per cache TTL, however many ask.
pub async fn stats(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let db = st.db.clone();
    let v = st
        .stats
        .try_get_with((), async move {
            db.read(None, |sql| queries::stats(sql).map_err(ApiError::from))
                .await
                .map(Arc::new)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(cached_json(
        &headers,
        StatusCode::OK,
        &json!({ "data": *v }),
        "public, max-age=10",
    ))
}

/// `GET /v1/products/{id}/recommendations`: from the downstream service when it is healthy;
/// otherwise the last good answer for this product or the popular products, flagged as degraded.
pub async fn recommendations(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (ids, degraded) = match st.recs.get(id).await {
        Ok(ids) => (ids, None),
        Err(e) => {
            let reason = e.reason();
            let ids = match st.recs.last_good(id).await {
                Some(ids) => ids,
                None => {
                    let db = st.db.clone();
                    let popular = st
                        .popular
                        .try_get_with((), async move {
                            db.read(None, |sql| {
                                queries::popular_product_ids(sql, 5).map_err(ApiError::from)
                            })
                            .await
                            .map(Arc::new)
                        })
                        .await
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    popular.iter().copied().filter(|&p| p != id).collect()
                }
            };
            (ids, Some(reason))
        }
    };
    let items = st
        .db
        .read(Some(&client.key), move |sql| {
            queries::product_summaries(sql, &ids).map_err(ApiError::from)
        })
        .await?;
    let body = json!({
        "data": items,
        "meta": { "degraded": degraded.is_some(), "reason": degraded },
    });
    // Degraded answers are cached briefly so clients pick up the real answer soon.
    let cc = if degraded.is_some() {
        "public, max-age=5"
    } else {
        "public, max-age=60"
    };
    let mut resp = cached_json(&headers, StatusCode::OK, &body, cc);
    if let Some(reason) = degraded {
        resp.headers_mut()
            .insert("x-degraded", HeaderValue::from_static(reason));
    }
    Ok(resp)
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the database answers.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let r = st
        .db
        .read(None, |sql| {
            sql.query_opt("SELECT 1", &[])?
                .map(|r| r.int(0))
                .transpose()
                .map_err(ApiError::from)
        })
        .await;
    match r {
        Ok(Some(1)) => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready" })),
        )
            .into_response(),
    }
}
