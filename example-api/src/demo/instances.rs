//! Several instances of the API behind one redline, as a load balancer would see them: one
//! `service.name` with a `service.instance.id` each, one shared Redis (L2 cache, rate limits,
//! invalidation messages), one database and one recommendations service (run by the first
//! instance, called by all), one pagination-cursor key. Without a reachable Redis, several instances would each keep their
//! own cache and limits, so starting them is refused.

use super::DemoError;
use crate::app::App;
use crate::config::Config;
use crate::telemetry::{ExportConfig, Telemetry, TelemetryError, api_service_name};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Ports taken per instance: the API's and its admin endpoint's.
pub const PORTS_PER_INSTANCE: u16 = 2;

/// How long the demo waits for Redis to answer before giving up.
const REDIS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The telemetry of the demo's services: one per API instance, and the recommendations
/// service's.
pub struct DemoTelemetry {
    pub api: Vec<Arc<Telemetry>>,
    pub recommendations: Arc<Telemetry>,
}

/// `service.instance.id` of the `n`-th instance (from 1).
pub fn instance_id(service: &str, n: usize) -> String {
    format!("{service}-{n}")
}

impl DemoTelemetry {
    /// `instances` API telemetries (named by `OTEL_SERVICE_NAME`, each with its
    /// `service.instance.id`) and the recommendations service's, all exporting per `export`
    /// (redline keeps each instance's cumulative counters apart, so they add up).
    pub fn new(export: &ExportConfig, instances: usize) -> Result<Self, TelemetryError> {
        let service = api_service_name();
        let api = (1..=instances.max(1))
            .map(|n| {
                let export = ExportConfig {
                    instance_id: Some(instance_id(&service, n)),
                    ..export.clone()
                };
                Telemetry::new(&service, &export).map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(DemoTelemetry {
            api,
            recommendations: Arc::new(Telemetry::new("recommendations", export)?),
        })
    }

    /// Flushes and stops every service's export.
    pub async fn shutdown(&self) {
        for t in &self.api {
            t.shutdown().await;
        }
        self.recommendations.shutdown().await;
    }
}

/// Fails unless Redis at `url` answers a PING within a few seconds.
pub async fn check_redis(url: &str) -> Result<(), DemoError> {
    let unreachable = |source: redis::RedisError| DemoError::RedisUnreachable {
        url: url.to_string(),
        source,
    };
    let ping = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(REDIS_CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => Err(DemoError::RedisTimeout(url.to_string())),
    }
}

/// `addr` moved up by `offset` ports; port 0 (any free port) stays 0.
fn shifted(addr: SocketAddr, offset: u16) -> SocketAddr {
    match addr.port() {
        0 => addr,
        port => SocketAddr::new(addr.ip(), port.saturating_add(offset)),
    }
}

/// Builds one API instance per telemetry in `tel` from `base`: instance `i` (from 0) listens
/// on `base`'s ports moved up by `i ×` [`PORTS_PER_INSTANCE`]; the first one runs the
/// recommendations service (unless `base` names an external one) and the others call it. With
/// more than one instance, `base.redis_url` must name a reachable Redis.
pub async fn start_instances(base: &Config, tel: &DemoTelemetry) -> Result<Vec<App>, DemoError> {
    let count = tel.api.len();
    if count > 1 {
        let url = base
            .redis_url
            .as_deref()
            .ok_or(DemoError::RedisRequired(count))?;
        check_redis(url).await?;
    }
    let mut apps: Vec<App> = Vec::with_capacity(count);
    for (i, t) in tel.api.iter().enumerate() {
        let offset = PORTS_PER_INSTANCE.saturating_mul(i as u16);
        let mut cfg = base.clone();
        cfg.addr = shifted(base.addr, offset);
        cfg.admin_addr = shifted(base.admin_addr, offset);
        if let Some(downstream) = apps.first().and_then(App::downstream_addr) {
            cfg.downstream_url = Some(format!("http://{downstream}"));
        }
        apps.push(App::build(cfg, t.clone(), tel.recommendations.clone()).await?);
    }
    Ok(apps)
}
