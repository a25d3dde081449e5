//! The PostgreSQL backend: an async deadpool of tokio-postgres connections for the primary and
//! one per hot standby (pool size, acquire timeout and statement timeout from the settings),
//! the schema, the seed, and choosing the pool a unit of work runs on (a standby in rotation
//! whose breaker lets it through, else the primary).

use super::replicas::{Replica, ReplicaSet, RotationSettings};
use super::seed::{CATEGORIES, REVIEW_BODY, USERS, generate};
use super::{Backend, DbError, Inner, Target, schema};
use crate::telemetry::Telemetry;
use deadpool_postgres::tokio_postgres::config::Host;
use deadpool_postgres::tokio_postgres::{self, NoTls};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Connection settings of the PostgreSQL mode.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://…` of the primary.
    pub primary_url: String,
    /// `postgres://…` of each hot standby.
    pub replica_urls: Vec<String>,
    /// Connections per pool (the primary's and each standby's).
    pub pool_size: usize,
    /// How long a unit of work waits for a connection (and a new connection may take).
    pub acquire_timeout: Duration,
    /// The server cancels a statement running longer than this.
    pub statement_timeout: Duration,
    pub rotation: RotationSettings,
}

/// What a pool serves, for metric and span attributes.
#[derive(Debug)]
pub struct PoolInfo {
    /// `primary`, `replica-1`, …: `db.client.connection.pool.name`.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The database: `db.namespace`.
    pub namespace: String,
}

/// A connection taken for one unit of work.
pub(super) struct Lease {
    pub client: deadpool_postgres::Client,
    pub info: Arc<PoolInfo>,
    pub primary: bool,
}

pub(super) struct PgBackend {
    pub primary: Pool,
    pub primary_config: tokio_postgres::Config,
    primary_info: Arc<PoolInfo>,
    pub replicas: Arc<ReplicaSet>,
    timeouts: Counter<u64>,
}

fn pg_config(url: &str, s: &PgSettings) -> Result<tokio_postgres::Config, DbError> {
    let mut c: tokio_postgres::Config = url.parse()?;
    c.options(format!(
        "-c statement_timeout={}",
        s.statement_timeout.as_millis().max(1)
    ));
    c.application_name("example-api");
    c.connect_timeout(s.acquire_timeout);
    Ok(c)
}

fn info(name: String, c: &tokio_postgres::Config) -> Arc<PoolInfo> {
    let host = match c.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    Arc::new(PoolInfo {
        name,
        host,
        port: c.get_ports().first().copied().unwrap_or(5432),
        namespace: c
            .get_dbname()
            .or(c.get_user())
            .unwrap_or("postgres")
            .to_string(),
    })
}

fn pool(c: &tokio_postgres::Config, s: &PgSettings) -> Result<Pool, DbError> {
    let mgr = Manager::from_config(
        c.clone(),
        NoTls,
        ManagerConfig {
            // A closed connection (its server restarted) is replaced; a live one is lent
            // without a round trip.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(mgr)
        .max_size(s.pool_size.max(1))
        .wait_timeout(Some(s.acquire_timeout))
        .create_timeout(Some(s.acquire_timeout))
        .runtime(Runtime::Tokio1)
        .build()?)
}

impl PgBackend {
    pub async fn connect(s: &PgSettings, telemetry: &Arc<Telemetry>) -> Result<Self, DbError> {
        let primary_config = pg_config(&s.primary_url, s)?;
        let primary = pool(&primary_config, s)?;
        {
            let c = primary.get().await?;
            c.batch_execute(schema::POSTGRES).await?;
        }
        let mut replicas = Vec::new();
        for (i, url) in s.replica_urls.iter().enumerate() {
            let c = pg_config(url, s)?;
            replicas.push(Arc::new(Replica::new(
                pool(&c, s)?,
                info(format!("replica-{}", i + 1), &c),
                c,
                s.rotation.breaker,
                telemetry.clone(),
            )));
        }
        Ok(PgBackend {
            primary_info: info("primary".into(), &primary_config),
            primary,
            primary_config,
            replicas: Arc::new(ReplicaSet::new(replicas, s.rotation)),
            timeouts: telemetry
                .meter
                .u64_counter("db.client.connection.timeouts")
                .with_unit("{timeout}")
                .with_description("Connection acquisitions that timed out")
                .build(),
        })
    }

    /// Every pool with its name.
    pub fn pools(&self) -> impl Iterator<Item = (&str, &Pool)> {
        std::iter::once((self.primary_info.name.as_str(), &self.primary)).chain(
            self.replicas
                .replicas
                .iter()
                .map(|r| (r.info.name.as_str(), &r.pool)),
        )
    }

    fn failed(&self, e: &PoolError, pool: &PoolInfo) {
        if matches!(e, PoolError::Timeout(_)) {
            self.timeouts.add(
                1,
                &[KeyValue::new(
                    "db.client.connection.pool.name",
                    pool.name.clone(),
                )],
            );
        }
    }

    /// A connection for `target`: reads try the standbys in rotation (a failed attempt counts
    /// against that standby's breaker), then fall back to the primary.
    pub async fn acquire(&self, target: Target) -> Result<Lease, DbError> {
        if target == Target::Replica {
            for r in self.replicas.candidates() {
                let Ok(permit) = r.breaker.acquire() else {
                    continue;
                };
                match r.pool.get().await {
                    Ok(client) => {
                        permit.record(true);
                        return Ok(Lease {
                            client,
                            info: r.info.clone(),
                            primary: false,
                        });
                    }
                    Err(e) => {
                        permit.record(false);
                        self.failed(&e, &r.info);
                        tracing::warn!(standby = %r.info.name, error = %e, "standby unavailable; reading elsewhere");
                    }
                }
            }
        }
        let client = self
            .primary
            .get()
            .await
            .inspect_err(|e| self.failed(e, &self.primary_info))?;
        Ok(Lease {
            client,
            info: self.primary_info.clone(),
            primary: true,
        })
    }

    /// Fills an empty catalog in one transaction (arrays through `UNNEST`: one statement per
    /// table), creates the demo accounts, and moves the id sequences past the seeded ids.
    pub async fn seed_if_empty(
        &self,
        products: usize,
        reviews_per: usize,
    ) -> Result<usize, DbError> {
        let mut c = self.primary.get().await?;
        for (username, password) in USERS {
            let exists = c
                .query_opt("SELECT 1 FROM accounts WHERE username = $1", &[username])
                .await?
                .is_some();
            if !exists {
                let hash = {
                    let p = password.to_string();
                    tokio::task::spawn_blocking(move || crate::passwords::hash(&p))
                        .await
                        .map_err(|e| DbError::Join(e.to_string()))??
                };
                c.execute(
                    "INSERT INTO accounts (username, password_hash) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                    &[username, &hash],
                )
                .await?;
            }
        }
        let tx = c.transaction().await?;
        tx.batch_execute("LOCK TABLE products IN EXCLUSIVE MODE")
            .await?;
        let existing: i64 = tx
            .query_one("SELECT COUNT(id) FROM products", &[])
            .await?
            .get(0);
        if existing > 0 {
            return Ok(0);
        }
        let (catalog, counts) =
            tokio::task::spawn_blocking(move || generate(products, reviews_per))
                .await
                .map_err(|e| DbError::Join(e.to_string()))?;
        let ids: Vec<i64> = (1..=CATEGORIES.len() as i64).collect();
        let names: Vec<&str> = CATEGORIES.to_vec();
        tx.execute(
            "INSERT INTO categories (id, name, product_count)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING",
            &[&ids, &names, &counts],
        )
        .await?;
        let col = |f: &dyn Fn(&super::seed::SeedProduct) -> i64| -> Vec<i64> {
            catalog.iter().map(f).collect()
        };
        let text = |f: &dyn Fn(&super::seed::SeedProduct) -> String| -> Vec<String> {
            catalog.iter().map(f).collect()
        };
        tx.execute(
            "INSERT INTO products (id, category_id, category_name, name, description,
                price_cents, review_count, rating_sum, view_count, created_at, updated_at, version)
             SELECT id, cat, cname, name, descr, price, nrev, rsum, 0, created, created, 1
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
                  AS t(id, cat, cname, name, descr, price, nrev, rsum, created)",
            &[
                &col(&|p| p.id),
                &col(&|p| p.category as i64 + 1),
                &text(&|p| CATEGORIES[p.category].to_string()),
                &text(&|p| p.name.clone()),
                &text(&|p| p.description.clone()),
                &col(&|p| p.price_cents),
                &col(&|p| p.ratings.len() as i64),
                &col(&|p| p.rating_sum()),
                &col(&|p| p.created_at),
            ],
        )
        .await?;
        let (mut pid, mut rating, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for p in &catalog {
            for (r, v) in p.ratings.iter().enumerate() {
                pid.push(p.id);
                rating.push(*v);
                at.push(p.review_time(r));
            }
        }
        tx.execute(
            "INSERT INTO reviews (product_id, rating, body, created_at)
             SELECT pid, rating, $4, at FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])
                  AS t(pid, rating, at)",
            &[&pid, &rating, &at, &REVIEW_BODY],
        )
        .await?;
        for table in ["categories", "products", "reviews"] {
            tx.batch_execute(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                               COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ))
            .await?;
        }
        tx.commit().await?;
        c.batch_execute("ANALYZE").await?;
        Ok(products)
    }
}

/// `db.client.connection.max` and `db.client.connection.pending_requests` per pool.
pub(super) fn register_pool_limits(telemetry: &Telemetry, inner: Weak<Inner>) {
    let w = inner.clone();
    let each = move |f: &mut dyn FnMut(&str, &Pool)| {
        let Some(inner) = w.upgrade() else { return };
        if let Backend::Postgres(pg) = &inner.backend {
            for (name, pool) in pg.pools() {
                f(name, pool);
            }
        }
    };
    let each2 = each.clone();
    let attr = |name: &str| {
        [KeyValue::new(
            "db.client.connection.pool.name",
            name.to_string(),
        )]
    };
    let _ = telemetry
        .meter
        .i64_observable_gauge("db.client.connection.max")
        .with_unit("{connection}")
        .with_callback(move |obs| {
            each(&mut |name, pool| obs.observe(pool.status().max_size as i64, &attr(name)))
        })
        .build();
    let _ = telemetry
        .meter
        .i64_observable_gauge("db.client.connection.pending_requests")
        .with_unit("{request}")
        .with_callback(move |obs| {
            each2(&mut |name, pool| obs.observe(pool.status().waiting as i64, &attr(name)))
        })
        .build();
}
