//! Sliding-window rate limiting per client key. In process: the sliding-window counter
//! (`current + previous · (1 − elapsed/window)`), in a bounded map. With Redis: an exact sliding
//! log in one atomic Lua script, timed by the Redis clock, so every instance shares one budget.
//! Responses carry the IETF draft `RateLimit-Policy` / `RateLimit` headers; rejections are 429
//! with `Retry-After`. If Redis fails, the in-process limiter takes over (fail open to local).

use crate::config::RatePolicy;
use crate::telemetry::Telemetry;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::KeyValue;
use redis::aio::ConnectionManager;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    pub policy: RatePolicy,
    pub remaining: u64,
    /// Seconds until the quota frees up (for `RateLimit` `t=` and `Retry-After`).
    pub reset_secs: u64,
}

impl Decision {
    /// Adds `RateLimit-Policy` and `RateLimit` headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let p = &self.policy;
        let policy = format!(
            "\"{}\";q={};w={}",
            p.name,
            p.quota,
            p.window.as_secs().max(1)
        );
        let state = format!("\"{}\";r={};t={}", p.name, self.remaining, self.reset_secs);
        if let (Ok(a), Ok(b)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert("ratelimit-policy", a);
            headers.insert("ratelimit", b);
        }
    }
}

/// The 429 response for a rejected request.
pub fn reject(d: &Decision) -> Response {
    let body = json!({ "error": { "code": "too_many_requests", "message": format!("rate limit '{}' exceeded", d.policy.name) } });
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    d.apply(h);
    h.insert(header::RETRY_AFTER, HeaderValue::from(d.reset_secs.max(1)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Sliding-window counter state of one key.
#[derive(Debug)]
struct Window {
    start: Instant,
    current: u64,
    previous: u64,
}

/// Decides one request against a sliding-window counter (pure; unit-tested).
fn slide(w: &mut Window, now: Instant, quota: u64, window: Duration) -> (bool, u64, u64) {
    let elapsed = now.saturating_duration_since(w.start);
    if elapsed >= window {
        let windows = elapsed.as_nanos() / window.as_nanos().max(1);
        w.previous = if windows == 1 { w.current } else { 0 };
        w.current = 0;
        w.start += window * windows as u32;
    }
    let into = now.saturating_duration_since(w.start).as_secs_f64() / window.as_secs_f64();
    let estimate = w.previous as f64 * (1.0 - into) + w.current as f64;
    let secs_left = (window.as_secs_f64() * (1.0 - into)).ceil() as u64;
    if estimate + 1.0 > quota as f64 {
        return (false, 0, secs_left.max(1));
    }
    w.current += 1;
    let remaining = (quota as f64 - estimate - 1.0).floor().max(0.0) as u64;
    (true, remaining, secs_left)
}

const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local reset = window
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, count, reset}
"#;

pub struct RateLimiter {
    /// Bounded (and idle keys expire), so many distinct clients cannot exhaust memory.
    local: moka::sync::Cache<String, Arc<Mutex<Window>>>,
    redis: Option<(ConnectionManager, String, redis::Script)>,
    telemetry: Arc<Telemetry>,
}

impl RateLimiter {
    pub fn new(redis: Option<(ConnectionManager, String)>, telemetry: Arc<Telemetry>) -> Self {
        RateLimiter {
            local: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            redis: redis.map(|(c, p)| (c, p, redis::Script::new(LUA))),
            telemetry,
        }
    }

    pub async fn check(&self, policy: &RatePolicy, key: &str) -> Decision {
        let d = match self.check_redis(policy, key).await {
            Some(d) => d,
            None => self.check_local(policy, key),
        };
        if !d.allowed {
            self.telemetry
                .m
                .ratelimit_rejections
                .add(1, &[KeyValue::new("ratelimit.policy", policy.name)]);
        }
        d
    }

    fn check_local(&self, policy: &RatePolicy, key: &str) -> Decision {
        let entry = self.local.get_with(format!("{}|{key}", policy.name), || {
            Arc::new(Mutex::new(Window {
                start: Instant::now(),
                current: 0,
                previous: 0,
            }))
        });
        let mut w = entry.lock().unwrap_or_else(|p| p.into_inner());
        let (allowed, remaining, reset_secs) =
            slide(&mut w, Instant::now(), policy.quota, policy.window);
        Decision {
            allowed,
            policy: *policy,
            remaining,
            reset_secs,
        }
    }

    async fn check_redis(&self, policy: &RatePolicy, key: &str) -> Option<Decision> {
        let (conn, prefix, script) = self.redis.as_ref()?;
        let mut c = conn.clone();
        let r: redis::RedisResult<(i64, i64, i64)> = script
            .key(format!("{prefix}:rl:{}:{key}", policy.name))
            .arg(policy.window.as_millis() as u64)
            .arg(policy.quota)
            .arg(rand::random::<u64>())
            .invoke_async(&mut c)
            .await;
        match r {
            Ok((allowed, count, reset_ms)) => Some(Decision {
                allowed: allowed == 1,
                policy: *policy,
                remaining: policy.quota.saturating_sub(count.max(0) as u64),
                reset_secs: (reset_ms.max(0) as u64).div_ceil(1000).max(1),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "redis rate limit failed; using the local limiter");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_previous_window_by_weight() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut s = Window {
            start: t0,
            current: 0,
            previous: 0,
        };
        for _ in 0..10 {
            assert!(slide(&mut s, t0, 10, w).0);
        }
        assert!(!slide(&mut s, t0, 10, w).0, "quota exhausted");
        // Halfway into the next window half of the previous 10 still count: 5 more allowed.
        let half = t0 + Duration::from_secs(15);
        let allowed = (0..10).filter(|_| slide(&mut s, half, 10, w).0).count();
        assert_eq!(allowed, 5);
        // Two windows later everything is forgotten.
        let later = t0 + Duration::from_secs(40);
        assert!(slide(&mut s, later, 10, w).0);
        assert_eq!(s.previous, 0);
    }
}
