//! Every SQL statement of the API, each a small function over [`Sql`]. Columns are always named
//! (no `SELECT *`); list queries are keyset queries shaped to match an index.

use super::{DbError, DbRow, Sql, SqlValue};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The public fields of a product, with the SQL expression of each.
pub const PRODUCT_FIELDS: &[(&str, &str)] = &[
    ("id", "id"),
    ("name", "name"),
    ("description", "description"),
    ("price_cents", "price_cents"),
    ("category_id", "category_id"),
    ("category_name", "category_name"),
    ("review_count", "review_count"),
    (
        "rating_avg",
        // The same figure on both backends: PostgreSQL rounds a numeric, then both cast.
        "CASE WHEN review_count > 0 THEN CAST(ROUND(rating_sum * 1.0 / review_count, 2) AS DOUBLE PRECISION) END",
    ),
    ("created_at", "created_at"),
    ("updated_at", "updated_at"),
    ("version", "version"),
];

pub const REVIEW_FIELDS: &[&str] = &["id", "product_id", "rating", "body", "created_at"];
pub const CATEGORY_FIELDS: &[&str] = &["id", "name", "product_count"];

/// SQLite's default limit on bound variables is 32766; stay far below it per `IN (…)` chunk.
const IN_CHUNK: usize = 500;

fn product_columns() -> String {
    PRODUCT_FIELDS
        .iter()
        .map(|(_, e)| *e)
        .collect::<Vec<_>>()
        .join(", ")
}

fn row_map(row: &DbRow, names: &[&str]) -> Result<Map<String, Value>, DbError> {
    let mut m = Map::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        m.insert((*n).to_string(), row.json(i)?);
    }
    Ok(m)
}

fn product_rows(rows: Vec<DbRow>) -> Result<Vec<Map<String, Value>>, DbError> {
    let names: Vec<&str> = PRODUCT_FIELDS.iter().map(|(n, _)| *n).collect();
    rows.iter().map(|r| row_map(r, &names)).collect()
}

/// Rows as JSON objects with the given field names.
fn objects(rows: Vec<DbRow>, names: &[&str]) -> Result<Vec<Value>, DbError> {
    rows.iter()
        .map(|r| Ok(Value::Object(row_map(r, names)?)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductSort {
    /// Newest first: `created_at DESC, id DESC`.
    Created,
    /// Cheapest first: `price_cents ASC, id ASC`.
    Price,
}

impl ProductSort {
    pub fn name(self) -> &'static str {
        match self {
            ProductSort::Created => "created",
            ProductSort::Price => "price",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductFilter {
    pub category: Option<i64>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
}

/// The keyset list statement and its parameters (shared by the handler and the plan tests).
/// Fetches `limit + 1` rows so the caller knows whether another page exists.
pub fn product_list_sql(
    filter: &ProductFilter,
    sort: ProductSort,
    after: Option<(i64, i64)>,
    limit: u32,
) -> (String, Vec<SqlValue>) {
    let mut wheres = Vec::new();
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(c) = filter.category {
        wheres.push("category_id = ?".to_string());
        params.push(c.into());
    }
    // With sort=created the price bounds are residual filters (unary `+` keeps the planner on
    // the created index, so pages stay index-ordered instead of sorting a price range).
    let price_col = if sort == ProductSort::Created {
        "+price_cents"
    } else {
        "price_cents"
    };
    if let Some(p) = filter.min_price {
        wheres.push(format!("{price_col} >= ?"));
        params.push(p.into());
    }
    if let Some(p) = filter.max_price {
        wheres.push(format!("{price_col} <= ?"));
        params.push(p.into());
    }
    let (order, keyset) = match sort {
        ProductSort::Created => ("created_at DESC, id DESC", "(created_at, id) < (?, ?)"),
        ProductSort::Price => ("price_cents ASC, id ASC", "(price_cents, id) > (?, ?)"),
    };
    if let Some((a, b)) = after {
        wheres.push(keyset.to_string());
        params.push(a.into());
        params.push(b.into());
    }
    let where_sql = if wheres.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", wheres.join(" AND "))
    };
    params.push(i64::from(limit + 1).into());
    (
        format!(
            "SELECT {} FROM products{where_sql} ORDER BY {order} LIMIT ?",
            product_columns()
        ),
        params,
    )
}

pub fn list_products(
    sql: &Sql,
    filter: &ProductFilter,
    sort: ProductSort,
    after: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<Map<String, Value>>, DbError> {
    let (stmt, p) = product_list_sql(filter, sort, after, limit);
    product_rows(sql.query(&stmt, &p)?)
}

pub fn get_product(sql: &Sql, id: i64) -> Result<Option<Map<String, Value>>, DbError> {
    let stmt = format!("SELECT {} FROM products WHERE id = ?1", product_columns());
    Ok(product_rows(sql.query(&stmt, &[id.into()])?)?
        .into_iter()
        .next())
}

pub fn category_name(sql: &Sql, id: i64) -> Result<Option<String>, DbError> {
    sql.query_opt("SELECT name FROM categories WHERE id = ?1", &[id.into()])?
        .map(|r| r.text(0))
        .transpose()
}

pub struct NewProduct {
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub category_id: i64,
    pub category_name: String,
}

pub fn insert_product(sql: &Sql, p: &NewProduct, now: i64) -> Result<i64, DbError> {
    let id = sql
        .query_opt(
            "INSERT INTO products (category_id, category_name, name, description, price_cents,
            review_count, rating_sum, view_count, created_at, updated_at, version)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, 0, ?6, ?6, 1) RETURNING id",
            &[
                p.category_id.into(),
                (&p.category_name).into(),
                (&p.name).into(),
                (&p.description).into(),
                p.price_cents.into(),
                now.into(),
            ],
        )?
        .ok_or(DbError::Column(0, "no id returned"))?
        .int(0)?;
    sql.execute(
        "UPDATE categories SET product_count = product_count + 1 WHERE id = ?1",
        &[p.category_id.into()],
    )?;
    Ok(id)
}

pub fn update_product(sql: &Sql, id: i64, p: &NewProduct, now: i64) -> Result<u64, DbError> {
    sql.execute(
        "UPDATE products SET name = ?2, description = ?3, price_cents = ?4, category_id = ?5,
            category_name = ?6, updated_at = ?7, version = version + 1 WHERE id = ?1",
        &[
            id.into(),
            (&p.name).into(),
            (&p.description).into(),
            p.price_cents.into(),
            p.category_id.into(),
            (&p.category_name).into(),
            now.into(),
        ],
    )
}

pub fn move_category_count(sql: &Sql, from: i64, to: i64) -> Result<(), DbError> {
    if from != to {
        sql.execute(
            "UPDATE categories SET product_count = product_count - 1 WHERE id = ?1",
            &[from.into()],
        )?;
        sql.execute(
            "UPDATE categories SET product_count = product_count + 1 WHERE id = ?1",
            &[to.into()],
        )?;
    }
    Ok(())
}

pub fn delete_product(sql: &Sql, id: i64, category_id: i64) -> Result<u64, DbError> {
    let n = sql.execute("DELETE FROM products WHERE id = ?1", &[id.into()])?;
    if n > 0 {
        sql.execute(
            "UPDATE categories SET product_count = product_count - 1 WHERE id = ?1",
            &[category_id.into()],
        )?;
    }
    Ok(n)
}

/// Keyset page of a product's reviews, newest first.
pub fn review_list_sql(
    product_id: i64,
    after: Option<(i64, i64)>,
    limit: u32,
) -> (String, Vec<SqlValue>) {
    let mut params: Vec<SqlValue> = vec![product_id.into()];
    let keyset = if let Some((a, b)) = after {
        params.push(a.into());
        params.push(b.into());
        " AND (created_at, id) < (?, ?)"
    } else {
        ""
    };
    params.push(i64::from(limit + 1).into());
    (
        format!(
            "SELECT {} FROM reviews WHERE product_id = ?{keyset} ORDER BY created_at DESC, id DESC LIMIT ?",
            REVIEW_FIELDS.join(", ")
        ),
        params,
    )
}

pub fn list_reviews(
    sql: &Sql,
    product_id: i64,
    after: Option<(i64, i64)>,
    limit: u32,
) -> Result<Vec<Map<String, Value>>, DbError> {
    let (stmt, p) = review_list_sql(product_id, after, limit);
    sql.query(&stmt, &p)?
        .iter()
        .map(|r| row_map(r, REVIEW_FIELDS))
        .collect()
}

pub fn insert_review(
    sql: &Sql,
    product_id: i64,
    rating: i64,
    body: &str,
    now: i64,
) -> Result<i64, DbError> {
    let id = sql
        .query_opt(
            "INSERT INTO reviews (product_id, rating, body, created_at) VALUES (?1, ?2, ?3, ?4)
             RETURNING id",
            &[product_id.into(), rating.into(), body.into(), now.into()],
        )?
        .ok_or(DbError::Column(0, "no id returned"))?
        .int(0)?;
    sql.execute(
        "UPDATE products SET review_count = review_count + 1, rating_sum = rating_sum + ?2 WHERE id = ?1",
        &[product_id.into(), rating.into()],
    )?;
    Ok(id)
}

/// Keyset page of categories by id.
pub fn category_list_sql(after: Option<i64>, limit: u32) -> (String, Vec<SqlValue>) {
    let mut params: Vec<SqlValue> = Vec::new();
    let keyset = if let Some(a) = after {
        params.push(a.into());
        " WHERE id > ?"
    } else {
        ""
    };
    params.push(i64::from(limit + 1).into());
    (
        format!(
            "SELECT {} FROM categories{keyset} ORDER BY id ASC LIMIT ?",
            CATEGORY_FIELDS.join(", ")
        ),
        params,
    )
}

pub fn list_categories(
    sql: &Sql,
    after: Option<i64>,
    limit: u32,
) -> Result<Vec<Map<String, Value>>, DbError> {
    let (stmt, p) = category_list_sql(after, limit);
    sql.query(&stmt, &p)?
        .iter()
        .map(|r| row_map(r, CATEGORY_FIELDS))
        .collect()
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn ints(ids: &[i64]) -> Vec<SqlValue> {
    ids.iter().map(SqlValue::from).collect()
}

/// Batch loader: categories by id, one `IN (…)` query per chunk.
pub fn categories_by_ids(sql: &Sql, ids: &[i64]) -> Result<HashMap<i64, Value>, DbError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let stmt = format!(
            "SELECT id, name FROM categories WHERE id IN ({})",
            placeholders(chunk.len())
        );
        for r in sql.query(&stmt, &ints(chunk))? {
            out.insert(r.int(0)?, Value::Object(row_map(&r, &["id", "name"])?));
        }
    }
    Ok(out)
}

/// Batch loader: the `per` newest reviews of each product, one query per chunk.
pub fn latest_reviews_by_products(
    sql: &Sql,
    ids: &[i64],
    per: u32,
) -> Result<HashMap<i64, Vec<Value>>, DbError> {
    let mut out: HashMap<i64, Vec<Value>> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let stmt = format!(
            "SELECT id, product_id, rating, body, created_at FROM (
                SELECT id, product_id, rating, body, created_at,
                       ROW_NUMBER() OVER (PARTITION BY product_id ORDER BY created_at DESC, id DESC) AS rn
                FROM reviews WHERE product_id IN ({})) AS ranked WHERE rn <= ? ORDER BY product_id, rn",
            placeholders(chunk.len())
        );
        let mut p = ints(chunk);
        p.push(i64::from(per).into());
        for r in sql.query(&stmt, &p)? {
            out.entry(r.int(1)?)
                .or_default()
                .push(Value::Object(row_map(&r, REVIEW_FIELDS)?));
        }
    }
    Ok(out)
}

/// Catalog aggregates for `/v1/stats` (cached by the caller). The casts give both backends
/// the same types (PostgreSQL's `SUM` and `AVG` of integers are numerics).
pub fn stats(sql: &Sql) -> Result<Value, DbError> {
    let totals = sql
        .query_opt(
            "SELECT COUNT(id), CAST(COALESCE(AVG(price_cents), 0) AS DOUBLE PRECISION),
                CAST(COALESCE(SUM(review_count), 0) AS BIGINT),
                CAST(COALESCE(SUM(view_count), 0) AS BIGINT) FROM products",
            &[],
        )?
        .map(|r| -> Result<Value, DbError> {
            Ok(serde_json::json!({
                "products": r.int(0)?,
                "avg_price_cents": r.real(1)?.round(),
                "reviews": r.int(2)?,
                "views": r.int(3)?,
            }))
        })
        .transpose()?;
    let cats = objects(
        sql.query(
            "SELECT id, name, product_count FROM categories ORDER BY id",
            &[],
        )?,
        CATEGORY_FIELDS,
    )?;
    Ok(serde_json::json!({ "totals": totals, "categories": cats }))
}

/// Most reviewed products: the fallback when recommendations are unavailable.
pub fn popular_product_ids(sql: &Sql, n: u32) -> Result<Vec<i64>, DbError> {
    sql.query(
        "SELECT id FROM products ORDER BY review_count DESC, id DESC LIMIT ?1",
        &[i64::from(n).into()],
    )?
    .iter()
    .map(|r| r.int(0))
    .collect()
}

pub fn add_views(sql: &Sql, counts: &HashMap<i64, u64>) -> Result<(), DbError> {
    for (id, n) in counts {
        sql.execute(
            "UPDATE products SET view_count = view_count + ?2 WHERE id = ?1",
            &[id.into(), (*n as i64).into()],
        )?;
    }
    Ok(())
}

/// The stored password hash (a PHC string) of `username`, if the account exists.
pub fn password_hash(sql: &Sql, username: &str) -> Result<Option<String>, DbError> {
    sql.query_opt(
        "SELECT password_hash FROM accounts WHERE username = ?1",
        &[username.into()],
    )?
    .map(|r| r.text(0))
    .transpose()
}

pub fn insert_api_key(sql: &Sql, key: &str, username: &str, now: i64) -> Result<(), DbError> {
    sql.execute(
        "INSERT INTO api_keys (key, username, created_at) VALUES (?1, ?2, ?3)",
        &[key.into(), username.into(), now.into()],
    )?;
    Ok(())
}

pub fn api_key_owner(sql: &Sql, key: &str) -> Result<Option<String>, DbError> {
    sql.query_opt(
        "SELECT username FROM api_keys WHERE key = ?1",
        &[key.into()],
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// A stored idempotency record.
pub struct IdemRecord {
    pub request_hash: String,
    /// `None` while the first request is still in progress.
    pub status: Option<u16>,
    pub body: Option<String>,
}

/// Claims `(client, key)` for the request holding `claim`: a new key, or one whose claim is
/// older than `lease_ms` without a response (its request died) and that was claimed for the
/// same request. Returns the existing record if the key is someone else's.
pub fn claim_idempotency_key(
    sql: &Sql,
    client: &str,
    key: &str,
    hash: &str,
    claim: i64,
    now: i64,
    lease_ms: i64,
) -> Result<Option<IdemRecord>, DbError> {
    let inserted = sql.execute(
        "INSERT INTO idempotency_keys (client, key, request_hash, created_at, claim)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        &[
            client.into(),
            key.into(),
            hash.into(),
            now.into(),
            claim.into(),
        ],
    )?;
    if inserted == 1 {
        return Ok(None);
    }
    let taken_over = sql.execute(
        "UPDATE idempotency_keys SET created_at = ?4, claim = ?5
         WHERE client = ?1 AND key = ?2 AND request_hash = ?3 AND status IS NULL AND created_at < ?6",
        &[
            client.into(),
            key.into(),
            hash.into(),
            now.into(),
            claim.into(),
            (now - lease_ms).into(),
        ],
    )?;
    if taken_over == 1 {
        return Ok(None);
    }
    sql.query_opt(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE client = ?1 AND key = ?2",
        &[client.into(), key.into()],
    )?
    .map(|r| {
        Ok(IdemRecord {
            request_hash: r.text(0)?,
            status: r.opt_int(1)?.map(|s| s as u16),
            body: r.opt_text(2)?,
        })
    })
    .transpose()
}

/// Stores the response of the request holding `claim`; false if its claim was taken over.
pub fn complete_idempotency_key(
    sql: &Sql,
    client: &str,
    key: &str,
    claim: i64,
    status: u16,
    body: &str,
) -> Result<bool, DbError> {
    Ok(sql.execute(
        "UPDATE idempotency_keys SET status = ?4, body = ?5 WHERE client = ?1 AND key = ?2 AND claim = ?3",
        &[
            client.into(),
            key.into(),
            claim.into(),
            i64::from(status).into(),
            body.into(),
        ],
    )? == 1)
}

pub fn release_idempotency_key(
    sql: &Sql,
    client: &str,
    key: &str,
    claim: i64,
) -> Result<(), DbError> {
    sql.execute(
        "DELETE FROM idempotency_keys WHERE client = ?1 AND key = ?2 AND claim = ?3 AND status IS NULL",
        &[client.into(), key.into(), claim.into()],
    )?;
    Ok(())
}

/// Forgets keys older than `before` (keeps the table bounded).
pub fn purge_idempotency_keys(sql: &Sql, before: i64) -> Result<u64, DbError> {
    sql.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ?1",
        &[before.into()],
    )
}

/// Names and prices of the given products, in the given order (missing ids are skipped).
pub fn product_summaries(sql: &Sql, ids: &[i64]) -> Result<Vec<Value>, DbError> {
    let mut found: HashMap<i64, Value> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let stmt = format!(
            "SELECT id, name, price_cents FROM products WHERE id IN ({})",
            placeholders(chunk.len())
        );
        for r in sql.query(&stmt, &ints(chunk))? {
            found.insert(
                r.int(0)?,
                Value::Object(row_map(&r, &["id", "name", "price_cents"])?),
            );
        }
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}
