//! Generated catalog data: deterministic (seeded RNG), written in one transaction with prepared
//! statements so the default 10k products / 100k reviews load in about a second. Timestamps come
//! in groups of seven equal values on purpose: pagination must not rely on unique timestamps.

use super::{Backend, Db, DbError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const CATEGORIES: &[&str] = &[
    "Books",
    "Music",
    "Garden",
    "Kitchen",
    "Toys",
    "Games",
    "Outdoors",
    "Tools",
    "Office",
    "Health",
    "Beauty",
    "Sports",
    "Automotive",
    "Pets",
    "Baby",
    "Electronics",
    "Computers",
    "Clothing",
    "Shoes",
    "Grocery",
];
const ADJECTIVES: &[&str] = &[
    "Sturdy", "Compact", "Deluxe", "Classic", "Smart", "Eco", "Pro", "Mini", "Ultra", "Vintage",
];
const NOUNS: &[&str] = &[
    "Lamp", "Kettle", "Backpack", "Chair", "Speaker", "Notebook", "Drill", "Blender", "Tent",
    "Watch",
];

/// The text of every generated review.
pub const REVIEW_BODY: &str = "Works as described.";

/// Demo accounts for `POST /v1/auth/token` (username, password).
pub const USERS: &[(&str, &str)] = &[("demo", "demo"), ("loadgen", "loadgen")];

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One generated product.
pub struct SeedProduct {
    pub id: i64,
    /// Index into [`CATEGORIES`].
    pub category: usize,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub ratings: Vec<i64>,
    pub created_at: i64,
}

impl SeedProduct {
    pub fn rating_sum(&self) -> i64 {
        self.ratings.iter().sum()
    }

    /// The creation time of its `r`-th review.
    pub fn review_time(&self, r: usize) -> i64 {
        self.created_at + 1000 + r as i64 * 500
    }
}

/// The generated catalog: the same for both backends (seeded RNG).
pub fn generate(products: usize, reviews_per: usize) -> (Vec<SeedProduct>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(42);
    let base = now_ms() - 86_400_000 * 30;
    let mut counts = vec![0i64; CATEGORIES.len()];
    let mut out = Vec::with_capacity(products);
    for i in 0..products {
        let id = i as i64 + 1;
        let c = rng.random_range(0..CATEGORIES.len());
        counts[c] += 1;
        let n_reviews = if reviews_per == 0 {
            0
        } else {
            rng.random_range(0..=2 * reviews_per)
        };
        let ratings: Vec<i64> = (0..n_reviews).map(|_| rng.random_range(1..=5)).collect();
        let name = format!(
            "{} {} {}",
            ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
            NOUNS[rng.random_range(0..NOUNS.len())],
            id
        );
        out.push(SeedProduct {
            id,
            category: c,
            description: format!(
                "A {} from the {} aisle.",
                name.to_lowercase(),
                CATEGORIES[c]
            ),
            name,
            price_cents: rng.random_range(199..=99_999i64),
            ratings,
            // Groups of seven products share a timestamp (see module docs).
            created_at: base + (i as i64 / 7) * 1000,
        });
    }
    (out, counts)
}

impl Db {
    /// Fills an empty database; does nothing if products already exist. Returns rows inserted.
    pub async fn seed_if_empty(
        &self,
        products: usize,
        reviews_per_product: usize,
    ) -> Result<usize, DbError> {
        if let Backend::Postgres(pg) = &self.inner.backend {
            return pg.seed_if_empty(products, reviews_per_product).await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let Backend::Sqlite { primary, .. } = &inner.backend else {
                unreachable!("the PostgreSQL backend returned above")
            };
            let mut conn = primary.get()?;
            demo_accounts(&conn)?;
            seed(&mut conn, products, reviews_per_product)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }
}

/// Creates the demo accounts that do not exist yet (hashing only those: argon2 is slow on
/// purpose).
fn demo_accounts(conn: &rusqlite::Connection) -> Result<(), DbError> {
    for (username, password) in USERS {
        let exists = conn
            .prepare_cached("SELECT 1 FROM accounts WHERE username = ?1")?
            .exists([username])?;
        if !exists {
            conn.execute(
                "INSERT OR IGNORE INTO accounts (username, password_hash) VALUES (?1, ?2)",
                rusqlite::params![username, crate::passwords::hash(password)?],
            )?;
        }
    }
    Ok(())
}

fn seed(
    conn: &mut rusqlite::Connection,
    products: usize,
    reviews_per: usize,
) -> Result<usize, DbError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: i64 = tx.query_row("SELECT COUNT(id) FROM products", [], |r| r.get(0))?;
    if existing > 0 {
        return Ok(0);
    }
    let (catalog, counts) = generate(products, reviews_per);
    {
        let mut cat = tx.prepare(
            "INSERT OR IGNORE INTO categories (id, name, product_count) VALUES (?1, ?2, 0)",
        )?;
        for (i, name) in CATEGORIES.iter().enumerate() {
            cat.execute(rusqlite::params![i as i64 + 1, name])?;
        }
        let mut prod = tx.prepare(
            "INSERT INTO products (id, category_id, category_name, name, description, price_cents,
                review_count, rating_sum, view_count, created_at, updated_at, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9, 1)",
        )?;
        let mut rev = tx.prepare(
            "INSERT INTO reviews (product_id, rating, body, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for p in &catalog {
            prod.execute(rusqlite::params![
                p.id,
                p.category as i64 + 1,
                CATEGORIES[p.category],
                p.name,
                p.description,
                p.price_cents,
                p.ratings.len() as i64,
                p.rating_sum(),
                p.created_at,
            ])?;
            for (r, rating) in p.ratings.iter().enumerate() {
                rev.execute(rusqlite::params![
                    p.id,
                    rating,
                    REVIEW_BODY,
                    p.review_time(r)
                ])?;
            }
        }
        let mut upd = tx.prepare("UPDATE categories SET product_count = ?1 WHERE id = ?2")?;
        for (i, n) in counts.iter().enumerate() {
            upd.execute(rusqlite::params![n, i as i64 + 1])?;
        }
    }
    tx.execute_batch("ANALYZE")?;
    tx.commit()?;
    Ok(products)
}
