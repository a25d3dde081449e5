//! Product and review handlers: keyset-paginated lists with sparse fieldsets and batch-loaded
//! includes, cached single reads with ETags, and conditional, idempotent writes.

use super::idempotency::{self, Stored};
use super::pagination::{next_url, parse_limit};
use super::{
    ApiError, AppState, Client, RawQuery, cached_json, int_param, parse_fields, parse_include,
    product_etag, project,
};
use crate::cache::{CacheOutcome, LoadError, Product, etag};
use crate::db::queries::{
    self, NewProduct, PRODUCT_FIELDS, ProductFilter, ProductSort, REVIEW_FIELDS,
};
use crate::db::seed::now_ms;
use crate::db::{Sql, Target};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

const INCLUDES: &[&str] = &["category", "reviews"];
/// Reviews embedded per product by `include=reviews`.
const INCLUDED_REVIEWS: u32 = 3;

fn product_field_names() -> Vec<&'static str> {
    PRODUCT_FIELDS.iter().map(|(n, _)| *n).collect()
}

pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError::NotFound)
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Related data fetched in one batch per relation (never one query per row).
#[derive(Default)]
struct Included {
    categories: HashMap<i64, Value>,
    reviews: HashMap<i64, Vec<Value>>,
}

fn load_includes(
    sql: &Sql,
    rows: &[Map<String, Value>],
    include: &[String],
) -> Result<Included, ApiError> {
    let mut inc = Included::default();
    if include.iter().any(|i| i == "category") {
        let mut cids: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.get("category_id")?.as_i64())
            .collect();
        cids.sort_unstable();
        cids.dedup();
        if !cids.is_empty() {
            inc.categories = queries::categories_by_ids(sql, &cids)?;
        }
    }
    if include.iter().any(|i| i == "reviews") {
        let ids: Vec<i64> = rows.iter().filter_map(|r| r.get("id")?.as_i64()).collect();
        if !ids.is_empty() {
            inc.reviews = queries::latest_reviews_by_products(sql, &ids, INCLUDED_REVIEWS)?;
        }
    }
    Ok(inc)
}

fn render(
    row: &Map<String, Value>,
    fields: Option<&[String]>,
    include: &[String],
    inc: &Included,
) -> Value {
    let mut m = project(row, fields);
    for i in include {
        match i.as_str() {
            "category" => {
                let c = row
                    .get("category_id")
                    .and_then(Value::as_i64)
                    .and_then(|c| inc.categories.get(&c));
                m.insert("category".into(), c.cloned().unwrap_or(Value::Null));
            }
            "reviews" => {
                let r = row
                    .get("id")
                    .and_then(Value::as_i64)
                    .and_then(|id| inc.reviews.get(&id));
                m.insert(
                    "reviews".into(),
                    Value::Array(r.cloned().unwrap_or_default()),
                );
            }
            _ => {}
        }
    }
    Value::Object(m)
}

fn with_link(mut resp: Response, next: Option<&str>) -> Response {
    if let Some(url) = next
        && let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\""))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

fn page_body(
    data: Vec<Value>,
    limit: u32,
    next_cursor: Option<String>,
    next: Option<&str>,
) -> Value {
    json!({
        "data": data,
        "meta": { "limit": limit, "next_cursor": next_cursor },
        "links": { "next": next },
    })
}

/// `GET /v1/products`
pub async fn list(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Query(q): Query<RawQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = parse_limit(q.get("limit").map(String::as_str))?;
    let fields = parse_fields(q.get("fields").map(String::as_str), &product_field_names())?;
    let include = parse_include(q.get("include").map(String::as_str), INCLUDES)?;
    let sort = match q.get("sort").map(String::as_str) {
        None | Some("created") => ProductSort::Created,
        Some("price") => ProductSort::Price,
        Some(_) => {
            return Err(ApiError::bad_param(
                "sort",
                "sort must be 'created' or 'price'",
            ));
        }
    };
    let filter = ProductFilter {
        category: int_param(&q, "category")?,
        min_price: int_param(&q, "min_price")?,
        max_price: int_param(&q, "max_price")?,
    };
    // The cursor is bound to the sort and filters it was issued for.
    let scope = format!(
        "products|{}|{:?}|{:?}|{:?}",
        sort.name(),
        filter.category,
        filter.min_price,
        filter.max_price
    );
    let after = q
        .get("cursor")
        .map(|c| st.cursors.decode(&scope, c))
        .transpose()?;
    let inc_names = include.clone();
    let (mut rows, inc) = st
        .db
        .read(Some(&client.key), move |sql| -> Result<_, ApiError> {
            let rows = queries::list_products(sql, &filter, sort, after, limit)?;
            let shown = &rows[..rows.len().min(limit as usize)];
            let inc = load_includes(sql, shown, &inc_names)?;
            Ok((rows, inc))
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match (has_more, rows.last()) {
        (true, Some(last)) => {
            let id = last["id"].as_i64().unwrap_or(0);
            let k = match sort {
                ProductSort::Created => last["created_at"].as_i64().unwrap_or(0),
                ProductSort::Price => last["price_cents"].as_i64().unwrap_or(0),
            };
            Some(st.cursors.encode(&scope, (k, id)))
        }
        _ => None,
    };
    let next = next_cursor
        .as_deref()
        .map(|c| next_url(uri.path(), uri.query(), c));
    let data = rows
        .iter()
        .map(|r| render(r, fields.as_deref(), &include, &inc))
        .collect();
    let body = page_body(data, limit, next_cursor, next.as_deref());
    Ok(with_link(
        cached_json(&headers, StatusCode::OK, &body, "public, max-age=5"),
        next.as_deref(),
    ))
}

/// Loads one product: cache-aside, except right after this client wrote (read-your-writes:
/// straight from the primary).
async fn load_product(
    st: &AppState,
    client: &Client,
    id: i64,
) -> Result<(Product, CacheOutcome), ApiError> {
    if st.db.read_target(Some(&client.key)) == Target::Primary {
        let p = st
            .db
            .read(Some(&client.key), move |sql| {
                queries::get_product(sql, id).map_err(ApiError::from)
            })
            .await?;
        return p
            .map(|p| (Arc::new(p), CacheOutcome::Bypass))
            .ok_or(ApiError::NotFound);
    }
    let db = st.db.clone();
    let key = client.key.clone();
    st.cache
        .get_or_load(id, || async move {
            db.read(Some(&key), move |sql| {
                queries::get_product(sql, id).map_err(|e| LoadError::Failed(e.to_string()))
            })
            .await
        })
        .await
        .map_err(|e| match e {
            LoadError::NotFound => ApiError::NotFound,
            LoadError::Failed(m) => ApiError::Internal(m),
        })
}

/// `GET /v1/products/{id}`
pub async fn get_one(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    Query(q): Query<RawQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let fields = parse_fields(q.get("fields").map(String::as_str), &product_field_names())?;
    let include = parse_include(q.get("include").map(String::as_str), INCLUDES)?;
    let (product, outcome) = load_product(&st, &client, id).await?;
    let inc = if include.is_empty() {
        Included::default()
    } else {
        let rows = vec![(*product).clone()];
        let names = include.clone();
        st.db
            .read(Some(&client.key), move |sql| {
                load_includes(sql, &rows, &names)
            })
            .await?
    };
    // Counted write-behind; waits only if the queue is full (backpressure).
    let _ = st.views.record(id).await;
    let body = json!({ "data": render(&product, fields.as_deref(), &include, &inc) });
    let mut resp = cached_json(
        &headers,
        StatusCode::OK,
        &body,
        "public, max-age=30, stale-while-revalidate=60",
    );
    resp.headers_mut().insert(
        CacheOutcome::HEADER,
        HeaderValue::from_static(outcome.header_value()),
    );
    Ok(resp)
}

/// Body of POST and PATCH; unknown fields are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    category_id: Option<i64>,
}

impl ProductInput {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(n) = &self.name
            && (n.trim().is_empty() || n.len() > 200)
        {
            return Err(ApiError::Unprocessable(
                "name must be 1 to 200 characters".into(),
            ));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 5000) {
            return Err(ApiError::Unprocessable(
                "description is limited to 5000 characters".into(),
            ));
        }
        if self
            .price_cents
            .is_some_and(|p| !(0..=1_000_000_000).contains(&p))
        {
            return Err(ApiError::Unprocessable(
                "price_cents must be from 0 to 1e9".into(),
            ));
        }
        Ok(())
    }
}

fn stored_product(status: StatusCode, product: &Map<String, Value>, location: bool) -> Stored {
    let id = product.get("id").and_then(Value::as_i64).unwrap_or(0);
    Stored {
        status: status.as_u16(),
        location: location.then(|| format!("/v1/products/{id}")),
        body: json!({ "data": product }),
    }
}

/// `POST /v1/products`
pub async fn create(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    client.require_user()?;
    let st2 = st.clone();
    let c2 = client.clone();
    let raw = body.clone();
    idempotency::run(
        &st,
        &client,
        &headers,
        "POST /v1/products",
        &raw,
        || async move {
            let input: ProductInput = parse_json(&body)?;
            input.validate()?;
            let (Some(name), Some(price), Some(cat)) =
                (input.name.clone(), input.price_cents, input.category_id)
            else {
                return Err(ApiError::Unprocessable(
                    "name, price_cents and category_id are required".into(),
                ));
            };
            let description = input.description.clone().unwrap_or_default();
            let product = st2
                .db
                .write(Some(&c2.key), move |sql| -> Result<_, ApiError> {
                    let category_name = queries::category_name(sql, cat)?
                        .ok_or_else(|| ApiError::Unprocessable("unknown category_id".into()))?;
                    let p = NewProduct {
                        name,
                        description,
                        price_cents: price,
                        category_id: cat,
                        category_name,
                    };
                    let id = queries::insert_product(sql, &p, now_ms())?;
                    queries::get_product(sql, id)?.ok_or(ApiError::NotFound)
                })
                .await?;
            let id = product["id"].as_i64().unwrap_or(0);
            st2.cache.put(id, product.clone()).await;
            Ok(stored_product(StatusCode::CREATED, &product, true))
        },
    )
    .await
}

/// The write preconditions: `If-Match` (required) and an optional `If-None-Match`.
struct Preconditions {
    if_match: String,
    if_none_match: Option<String>,
}

impl Preconditions {
    /// RFC 9110 §13.2.2 order: If-Match (strong), then If-None-Match (weak; a match fails a
    /// state-changing request with 412).
    fn check(&self, current: &str) -> Result<(), ApiError> {
        if !etag::match_hits(&self.if_match, current) {
            return Err(ApiError::PreconditionFailed);
        }
        if self
            .if_none_match
            .as_deref()
            .is_some_and(|h| etag::none_match_hits(h, current))
        {
            return Err(ApiError::PreconditionFailed);
        }
        Ok(())
    }
}

fn if_match(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    let get = |h| {
        headers
            .get(h)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(Preconditions {
        if_match: get(header::IF_MATCH).ok_or(ApiError::PreconditionRequired)?,
        if_none_match: get(header::IF_NONE_MATCH),
    })
}

/// `PATCH /v1/products/{id}`: requires `If-Match`; the check and the update share one
/// transaction, so two concurrent writers cannot both pass the check.
pub async fn update(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    client.require_user()?;
    let id = parse_id(&id)?;
    let precondition = if_match(&headers)?;
    let input: ProductInput = parse_json(&body)?;
    input.validate()?;
    let product = st
        .db
        .write(Some(&client.key), move |sql| -> Result<_, ApiError> {
            let cur = queries::get_product(sql, id)?.ok_or(ApiError::NotFound)?;
            precondition.check(&product_etag(&cur))?;
            let s = |k: &str| {
                cur.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let old_cat = cur.get("category_id").and_then(Value::as_i64).unwrap_or(0);
            let cat = input.category_id.unwrap_or(old_cat);
            let category_name = if cat == old_cat {
                s("category_name")
            } else {
                queries::category_name(sql, cat)?
                    .ok_or_else(|| ApiError::Unprocessable("unknown category_id".into()))?
            };
            let p = NewProduct {
                name: input.name.unwrap_or_else(|| s("name")),
                description: input.description.unwrap_or_else(|| s("description")),
                price_cents: input
                    .price_cents
                    .unwrap_or_else(|| cur.get("price_cents").and_then(Value::as_i64).unwrap_or(0)),
                category_id: cat,
                category_name,
            };
            queries::update_product(sql, id, &p, now_ms())?;
            queries::move_category_count(sql, old_cat, cat)?;
            queries::get_product(sql, id)?.ok_or(ApiError::NotFound)
        })
        .await?;
    st.cache.put(id, product.clone()).await;
    Ok(idempotency::respond(
        &stored_product(StatusCode::OK, &product, false),
        false,
    ))
}

/// `DELETE /v1/products/{id}`: requires `If-Match`.
pub async fn delete(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    client.require_user()?;
    let id = parse_id(&id)?;
    let precondition = if_match(&headers)?;
    st.db
        .write(Some(&client.key), move |sql| -> Result<_, ApiError> {
            let cur = queries::get_product(sql, id)?.ok_or(ApiError::NotFound)?;
            precondition.check(&product_etag(&cur))?;
            let cat = cur.get("category_id").and_then(Value::as_i64).unwrap_or(0);
            queries::delete_product(sql, id, cat)?;
            Ok(())
        })
        .await?;
    st.cache.remove(id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/products/{id}/reviews`
pub async fn list_reviews(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    Query(q): Query<RawQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let limit = parse_limit(q.get("limit").map(String::as_str))?;
    let fields = parse_fields(q.get("fields").map(String::as_str), REVIEW_FIELDS)?;
    let scope = format!("reviews|{id}");
    let after = q
        .get("cursor")
        .map(|c| st.cursors.decode(&scope, c))
        .transpose()?;
    let mut rows = st
        .db
        .read(Some(&client.key), move |sql| -> Result<_, ApiError> {
            let rows = queries::list_reviews(sql, id, after, limit)?;
            // Only an empty first page needs to tell "no reviews" from "no product".
            if rows.is_empty() && after.is_none() && queries::get_product(sql, id)?.is_none() {
                return Err(ApiError::NotFound);
            }
            Ok(rows)
        })
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = match (has_more, rows.last()) {
        (true, Some(last)) => Some(st.cursors.encode(
            &scope,
            (
                last["created_at"].as_i64().unwrap_or(0),
                last["id"].as_i64().unwrap_or(0),
            ),
        )),
        _ => None,
    };
    let next = next_cursor
        .as_deref()
        .map(|c| next_url(uri.path(), uri.query(), c));
    let data = rows
        .iter()
        .map(|r| Value::Object(project(r, fields.as_deref())))
        .collect();
    let body = page_body(data, limit, next_cursor, next.as_deref());
    Ok(with_link(
        cached_json(&headers, StatusCode::OK, &body, "public, max-age=10"),
        next.as_deref(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewInput {
    rating: i64,
    #[serde(default)]
    body: String,
}

/// `POST /v1/products/{id}/reviews`: the review and the product's denormalized counters change
/// in one transaction; the product cache is written through.
pub async fn create_review(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    client.require_user()?;
    let id = parse_id(&id)?;
    let st2 = st.clone();
    let c2 = client.clone();
    let what = format!("POST /v1/products/{id}/reviews");
    let raw = body.clone();
    idempotency::run(&st, &client, &headers, &what, &raw, move || async move {
        let input: ReviewInput = parse_json(&body)?;
        if !(1..=5).contains(&input.rating) || input.body.len() > 2000 {
            return Err(ApiError::Unprocessable("rating must be 1 to 5 and body at most 2000 characters".into()));
        }
        let (review, product) = st2
            .db
            .write(Some(&c2.key), move |sql| -> Result<_, ApiError> {
                if queries::get_product(sql, id)?.is_none() {
                    return Err(ApiError::NotFound);
                }
                let now = now_ms();
                let rid = queries::insert_review(sql, id, input.rating, &input.body, now)?;
                let product = queries::get_product(sql, id)?.ok_or(ApiError::NotFound)?;
                let review = json!({"id": rid, "product_id": id, "rating": input.rating, "body": input.body, "created_at": now});
                Ok((review, product))
            })
            .await?;
        st2.cache.put(id, product).await;
        Ok(Stored { status: 201, location: None, body: json!({ "data": review }) })
    })
    .await
}
