//! The PostgreSQL hot standbys and their rotation. A monitor task probes every standby each
//! `probe_interval` over its own connection (a busy read pool cannot starve it): it reads the
//! primary's WAL position and each standby's replay position. Lag in bytes is their
//! difference; lag in seconds is how long ago the monitor first saw a primary position the
//! standby has not replayed yet (exact to one probe interval, and not fooled by an idle
//! primary's old commit times). A standby over `max_lag`, or whose probe fails, leaves the
//! rotation at once; reads then go to the other standbys or the primary. Each standby also has
//! a circuit breaker over its pool's connection attempts, so a standby that dies between
//! probes stops taking reads after a few failures.

use super::postgres::PoolInfo;
use crate::config::BreakerConfig;
use crate::resilience::breaker::CircuitBreaker;
use crate::telemetry::Telemetry;
use deadpool_postgres::tokio_postgres::{self, NoTls};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Positions of the primary the monitor remembers per standby while it lags: one per probe,
/// so this bounds the lag it can time exactly (4096 × 250 ms ≈ 17 min; past that it saturates).
const MAX_PENDING: usize = 4096;

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct RotationSettings {
    /// A standby lagging more than this is taken out of rotation.
    pub max_lag: Duration,
    pub probe_interval: Duration,
    /// A probe slower than this counts as the standby being down.
    pub probe_timeout: Duration,
    pub breaker: BreakerConfig,
}

/// Why a standby left the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Lag,
    Down,
}

impl Removal {
    fn name(self) -> &'static str {
        match self {
            Removal::Lag => "lag",
            Removal::Down => "down",
        }
    }
}

/// One hot standby: its pool, breaker and last probe's figures.
pub struct Replica {
    pub pool: deadpool_postgres::Pool,
    pub info: Arc<PoolInfo>,
    pub breaker: Arc<CircuitBreaker>,
    pg_config: tokio_postgres::Config,
    in_rotation: AtomicBool,
    lag_micros: AtomicU64,
    lag_bytes: AtomicU64,
    removals: AtomicU64,
}

impl Replica {
    pub fn new(
        pool: deadpool_postgres::Pool,
        info: Arc<PoolInfo>,
        pg_config: tokio_postgres::Config,
        breaker: BreakerConfig,
        telemetry: Arc<Telemetry>,
    ) -> Replica {
        // Breakers are named once per configured standby, at start-up.
        let name: &'static str = Box::leak(format!("db.{}", info.name).into_boxed_str());
        Replica {
            pool,
            info,
            breaker: CircuitBreaker::new(name, breaker, telemetry),
            pg_config,
            // Out until the first probe says it is current.
            in_rotation: AtomicBool::new(false),
            lag_micros: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            removals: AtomicU64::new(0),
        }
    }

    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Acquire)
    }

    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Ordering::Relaxed))
    }

    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    /// Times this standby left the rotation.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Relaxed)
    }
}

/// The standbys and the round-robin over those in rotation.
pub struct ReplicaSet {
    pub replicas: Vec<Arc<Replica>>,
    pub settings: RotationSettings,
    next: AtomicUsize,
}

impl ReplicaSet {
    pub fn new(replicas: Vec<Arc<Replica>>, settings: RotationSettings) -> ReplicaSet {
        ReplicaSet {
            replicas,
            settings,
            next: AtomicUsize::new(0),
        }
    }

    /// The standbys in rotation, starting with the next one in round-robin order.
    pub fn candidates(&self) -> impl Iterator<Item = &Arc<Replica>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(move |i| &self.replicas[(start + i) % n])
            .filter(|r| r.in_rotation())
    }

    /// Starts the monitor; it ends when the set is dropped.
    pub(super) fn spawn_monitor(
        self: &Arc<Self>,
        primary: tokio_postgres::Config,
        telemetry: &Arc<Telemetry>,
    ) {
        register_metrics(telemetry, Arc::downgrade(self));
        let removed = telemetry
            .meter
            .u64_counter("db.client.replica.removals")
            .with_description("Standbys taken out of read rotation, by reason")
            .build();
        let weak = Arc::downgrade(self);
        tokio::spawn(monitor(weak, primary, removed));
    }
}

/// A WAL position (`16/B374D848`) as a byte offset.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

async fn lsn(client: &tokio_postgres::Client, stmt: &str) -> Option<u64> {
    let row = client.query_one(stmt, &[]).await.ok()?;
    // NULL on a server that is not a standby: it is as current as it can be.
    Some(
        row.get::<_, Option<String>>(0)
            .and_then(|s| parse_lsn(&s))
            .unwrap_or(u64::MAX),
    )
}

/// Per-standby monitor state: its probe connection and the primary positions it lags behind.
#[derive(Default)]
struct Watch {
    client: Option<tokio_postgres::Client>,
    pending: VecDeque<(u64, Instant)>,
    /// Whether the standby has replayed everything the primary had when it was first (or
    /// again, after being down) probed: until then how long it has lagged is unknown.
    caught_up: bool,
}

async fn connect(cfg: &tokio_postgres::Config) -> Option<tokio_postgres::Client> {
    let (client, conn) = cfg.connect(NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(client)
}

async fn monitor(set: Weak<ReplicaSet>, primary: tokio_postgres::Config, removed: Counter<u64>) {
    let mut watches: Vec<Watch> = Vec::new();
    let mut primary_probe: Option<tokio_postgres::Client> = None;
    loop {
        let Some(set) = set.upgrade() else { return };
        let s = set.settings;
        watches.resize_with(set.replicas.len(), Watch::default);
        let started = Instant::now();
        if primary_probe.as_ref().is_none_or(|c| c.is_closed()) {
            primary_probe = tokio::time::timeout(s.probe_timeout, connect(&primary))
                .await
                .ok()
                .flatten();
        }
        let head = match &primary_probe {
            Some(c) => {
                tokio::time::timeout(s.probe_timeout, lsn(c, "SELECT pg_current_wal_lsn()::text"))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        for (r, w) in set.replicas.iter().zip(watches.iter_mut()) {
            let probe = async {
                if w.client.as_ref().is_none_or(|c| c.is_closed()) {
                    w.client = connect(&r.pg_config).await;
                }
                lsn(w.client.as_ref()?, "SELECT pg_last_wal_replay_lsn()::text").await
            };
            let replayed = tokio::time::timeout(s.probe_timeout, probe)
                .await
                .ok()
                .flatten();
            let now = Instant::now();
            let healthy = match replayed {
                None => {
                    w.client = None;
                    w.caught_up = false;
                    Err(Removal::Down)
                }
                Some(replayed) => {
                    if let Some(head) = head
                        && head > replayed
                        && w.pending.back().is_none_or(|(l, _)| *l < head)
                        && w.pending.len() < MAX_PENDING
                    {
                        w.pending.push_back((head, now));
                    }
                    while w.pending.front().is_some_and(|(l, _)| *l <= replayed) {
                        w.pending.pop_front();
                    }
                    let lag = w.pending.front().map_or(Duration::ZERO, |(_, t)| now - *t);
                    let bytes = head.map_or(0, |h| h.saturating_sub(replayed));
                    r.lag_micros
                        .store(lag.as_micros() as u64, Ordering::Relaxed);
                    r.lag_bytes.store(
                        if replayed == u64::MAX { 0 } else { bytes },
                        Ordering::Relaxed,
                    );
                    w.caught_up |= w.pending.is_empty();
                    if lag > s.max_lag || !w.caught_up {
                        Err(Removal::Lag)
                    } else {
                        Ok(())
                    }
                }
            };
            let was = r.in_rotation.swap(healthy.is_ok(), Ordering::AcqRel);
            match healthy {
                Err(why) if was => {
                    r.removals.fetch_add(1, Ordering::Relaxed);
                    removed.add(
                        1,
                        &[
                            KeyValue::new("db.client.connection.pool.name", r.info.name.clone()),
                            KeyValue::new("reason", why.name()),
                        ],
                    );
                    tracing::warn!(standby = %r.info.name, reason = why.name(), lag_ms = r.lag().as_millis() as u64, "standby taken out of read rotation");
                }
                Ok(()) if !was => {
                    tracing::info!(standby = %r.info.name, "standby in read rotation");
                }
                _ => {}
            }
        }
        drop(set);
        tokio::time::sleep_until(started + s.probe_interval).await;
    }
}

fn register_metrics(telemetry: &Telemetry, set: Weak<ReplicaSet>) {
    if !telemetry.metrics_enabled {
        return;
    }
    let attrs = |r: &Replica| {
        [
            KeyValue::new("db.client.connection.pool.name", r.info.name.clone()),
            KeyValue::new("server.address", r.info.host.clone()),
            KeyValue::new("server.port", i64::from(r.info.port)),
        ]
    };
    let w = set.clone();
    let _ = telemetry
        .meter
        .f64_observable_gauge("db.client.replica.lag")
        .with_unit("s")
        .with_description("How far a standby's replay is behind the primary, in time")
        .with_callback(move |obs| {
            let Some(set) = w.upgrade() else { return };
            for r in &set.replicas {
                obs.observe(r.lag().as_secs_f64(), &attrs(r));
            }
        })
        .build();
    let w = set.clone();
    let _ = telemetry
        .meter
        .u64_observable_gauge("db.client.replica.lag_bytes")
        .with_unit("By")
        .with_description("How far a standby's replay is behind the primary, in WAL bytes")
        .with_callback(move |obs| {
            let Some(set) = w.upgrade() else { return };
            for r in &set.replicas {
                obs.observe(r.lag_bytes(), &attrs(r));
            }
        })
        .build();
    let _ = telemetry
        .meter
        .i64_observable_gauge("db.client.replica.in_rotation")
        .with_unit("{replica}")
        .with_description("1 while a standby takes reads, 0 while it is out of rotation")
        .with_callback(move |obs| {
            let Some(set) = set.upgrade() else { return };
            for r in &set.replicas {
                obs.observe(i64::from(r.in_rotation()), &attrs(r));
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsn_is_a_byte_offset() {
        assert_eq!(super::parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(
            super::parse_lsn("16/B374D848"),
            Some((0x16 << 32) | 0xB374_D848)
        );
        assert_eq!(super::parse_lsn("nope"), None);
    }
}
