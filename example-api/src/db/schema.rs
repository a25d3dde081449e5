//! The catalog schema. Indexes exist for exactly the list queries the API runs (keyset order
//! with a unique tie-breaker); the EXPLAIN QUERY PLAN tests hold them to that.

use rusqlite::Connection;

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    product_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    category_id INTEGER NOT NULL REFERENCES categories(id),
    -- denormalized for read performance: product pages never join categories
    category_name TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    review_count INTEGER NOT NULL DEFAULT 0,
    rating_sum INTEGER NOT NULL DEFAULT 0,
    view_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS products_created ON products(created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS products_category_created ON products(category_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS products_price ON products(price_cents, id);
CREATE INDEX IF NOT EXISTS products_category_price ON products(category_id, price_cents, id);
CREATE INDEX IF NOT EXISTS products_popular ON products(review_count DESC, id DESC);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    product_id INTEGER NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    rating INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_product_created ON reviews(product_id, created_at DESC, id DESC);
-- Unsalted hashes of an earlier version: the demo accounts are created again in accounts.
DROP TABLE IF EXISTS users;
CREATE TABLE IF NOT EXISTS accounts (
    username TEXT PRIMARY KEY,
    -- an argon2id PHC string: algorithm, cost, salt and hash
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    client TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    -- when the key was claimed (or its claim taken over): a claim without a status expires
    -- after the lease
    created_at INTEGER NOT NULL,
    -- the claiming request's token: only it completes or releases the claim
    claim INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client, key)
);
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency_keys(created_at);
"#;

pub fn apply(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    // Tables of an earlier version lack the claim token.
    let has_claim = conn
        .prepare("SELECT 1 FROM pragma_table_info('idempotency_keys') WHERE name = 'claim'")?
        .exists([])?;
    if !has_claim {
        conn.execute_batch(
            "ALTER TABLE idempotency_keys ADD COLUMN claim INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    Ok(())
}
