//! The product cache: L1 in process (moka: bounded, TTL, concurrent misses for one key coalesce
//! into one load, so no stampede) in front of an optional L2 in Redis shared by all instances.
//! Reads are cache-aside, updates write-through; invalidations are published on a Redis channel
//! so every instance drops its L1 copy. Staleness bound: pub/sub delivery (milliseconds) while
//! the subscription is up, otherwise the L1 TTL.

pub mod etag;
pub mod views;

use crate::telemetry::{CacheLevel, Telemetry};
use futures_util::StreamExt;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use redis::aio::ConnectionManager;
use serde_json::{Map, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub type Product = Arc<Map<String, Value>>;

/// Why a cache fill failed; `NotFound` is not cached (a later insert must become visible).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Failed(String),
}

impl From<crate::db::DbError> for LoadError {
    fn from(e: crate::db::DbError) -> Self {
        LoadError::Failed(e.to_string())
    }
}

/// Where a product read was answered from; the API sends it as the `X-Cache` response header
/// so clients (the load generator) can split latency by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From this instance's L1.
    L1Hit,
    /// From the shared L2 (Redis), filling L1.
    L2Hit,
    /// Loaded from the database, filling both levels.
    Miss,
    /// Not looked up: a client that just wrote reads straight from the primary.
    Bypass,
}

impl CacheOutcome {
    pub const HEADER: &'static str = "x-cache";

    pub fn header_value(self) -> &'static str {
        match self {
            CacheOutcome::L1Hit => "hit",
            CacheOutcome::L2Hit => "hit-l2",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

struct L2 {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

/// Two-level cache of products by id.
pub struct ProductCache {
    l1: moka::future::Cache<i64, Product>,
    l2: Option<L2>,
    /// Distinguishes this instance's own invalidation messages from others'.
    instance: String,
    telemetry: Arc<Telemetry>,
}

impl ProductCache {
    /// Builds the cache; with a Redis connection, subscribes to invalidations before returning
    /// so no write that happens after start-up can be missed.
    pub async fn new(
        capacity: u64,
        l1_ttl: Duration,
        redis: Option<(redis::Client, ConnectionManager, String, Duration)>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let l1 = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(l1_ttl)
            .build();
        let instance = format!("{:016x}", rand::random::<u64>());
        let mut l2 = None;
        if let Some((client, conn, prefix, ttl)) = redis {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(format!("{prefix}:invalidate")).await?;
            let l1c = l1.clone();
            let me = instance.clone();
            tokio::spawn(async move {
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Some((from, id)) = payload.split_once(':')
                        && from != me
                        && let Ok(id) = id.parse::<i64>()
                    {
                        l1c.invalidate(&id).await;
                    }
                }
                tracing::warn!(
                    "cache invalidation subscription ended; L1 TTL now bounds staleness"
                );
            });
            l2 = Some(L2 { conn, prefix, ttl });
        }
        Ok(Arc::new(ProductCache {
            l1,
            l2,
            instance,
            telemetry,
        }))
    }

    fn record(&self, level: CacheLevel, hit: bool) {
        self.telemetry.m.cache_requests.record(level, hit);
    }

    /// Cache-aside read: L1, then L2, then `load` (the database). One load per key at a time.
    pub async fn get_or_load<F, Fut>(
        &self,
        id: i64,
        load: F,
    ) -> Result<(Product, CacheOutcome), LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Map<String, Value>>, LoadError>>,
    {
        let parent = Context::current();
        let cx = self
            .telemetry
            .child(&parent, "cache.get product", SpanKind::Internal, || {
                vec![
                    KeyValue::new("cache.name", "product"),
                    KeyValue::new("cache.key", id),
                ]
            });
        let l2_hit = std::sync::atomic::AtomicBool::new(false);
        let entry = self
            .l1
            .entry(id)
            .or_try_insert_with::<_, LoadError>(async {
                if let Some(v) = self.l2_get(id).await {
                    l2_hit.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(Arc::new(v));
                }
                let v = load().await?.ok_or(LoadError::NotFound)?;
                self.l2_set(id, &v).await;
                Ok(Arc::new(v))
            })
            .await;
        let span = cx.span();
        let out = match entry {
            Ok(e) => {
                let fresh = e.is_fresh();
                self.record(CacheLevel::L1, !fresh);
                span.set_attribute(KeyValue::new("cache.l1.hit", !fresh));
                let mut outcome = if fresh {
                    CacheOutcome::Miss
                } else {
                    CacheOutcome::L1Hit
                };
                if fresh && self.l2.is_some() {
                    let hit = l2_hit.load(std::sync::atomic::Ordering::Relaxed);
                    self.record(CacheLevel::L2, hit);
                    span.set_attribute(KeyValue::new("cache.l2.hit", hit));
                    if hit {
                        outcome = CacheOutcome::L2Hit;
                    }
                }
                Ok((e.into_value(), outcome))
            }
            Err(e) => {
                self.record(CacheLevel::L1, false);
                Err((*e).clone())
            }
        };
        span.end();
        out
    }

    /// Write-through: the new value goes to both levels and other instances drop their copy.
    pub async fn put(&self, id: i64, value: Map<String, Value>) {
        self.l2_set(id, &value).await;
        self.l1.insert(id, Arc::new(value)).await;
        self.publish(id).await;
    }

    /// Removes a product from both levels everywhere.
    pub async fn remove(&self, id: i64) {
        self.l1.invalidate(&id).await;
        if let Some(l2) = &self.l2 {
            let mut c = l2.conn.clone();
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(format!("{}:product:{id}", l2.prefix))
                .query_async(&mut c)
                .await;
        }
        self.publish(id).await;
    }

    async fn publish(&self, id: i64) {
        if let Some(l2) = &self.l2 {
            let mut c = l2.conn.clone();
            let r: Result<(), _> = redis::cmd("PUBLISH")
                .arg(format!("{}:invalidate", l2.prefix))
                .arg(format!("{}:{id}", self.instance))
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "cache invalidation publish failed");
            }
        }
    }

    async fn l2_get(&self, id: i64) -> Option<Map<String, Value>> {
        let l2 = self.l2.as_ref()?;
        let mut c = l2.conn.clone();
        // A Redis failure degrades to a miss: the database still answers.
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("{}:product:{id}", l2.prefix))
            .query_async(&mut c)
            .await
            .unwrap_or(None);
        raw.and_then(|s| serde_json::from_str(&s).ok())
    }

    async fn l2_set(&self, id: i64, v: &Map<String, Value>) {
        if let Some(l2) = &self.l2 {
            let mut c = l2.conn.clone();
            let body = serde_json::to_string(v).unwrap_or_default();
            let _: Result<(), _> = redis::cmd("SET")
                .arg(format!("{}:product:{id}", l2.prefix))
                .arg(body)
                .arg("PX")
                .arg(l2.ttl.as_millis() as u64)
                .query_async(&mut c)
                .await;
        }
    }
}
