//! The API's client for the recommendations service. One logical call = one circuit-breaker
//! decision; inside it, up to `max_attempts` attempts, each with its own timeout and CLIENT
//! span, separated by full-jitter backoff and limited by the retry budget.

use crate::config::Config;
use crate::resilience::breaker::CircuitBreaker;
use crate::resilience::retry::{RetryBudget, full_jitter};
use crate::telemetry::{Telemetry, inject_context};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("circuit breaker open")]
    Open,
    #[error("recommendations failed: {0}")]
    Failed(String),
}

impl CallError {
    /// The value of `meta.reason` / `X-Degraded`.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Open => "circuit_open",
            CallError::Failed(_) => "downstream_error",
        }
    }
}

pub struct RecommendationsClient {
    http: reqwest::Client,
    base: String,
    host: String,
    port: i64,
    breaker: Arc<CircuitBreaker>,
    budget: RetryBudget,
    timeout: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    slow_call: Duration,
    attempts: AtomicU64,
    /// Last good answer per product: the first fallback when degraded. Bounded.
    last_good: moka::future::Cache<i64, Arc<Vec<i64>>>,
    telemetry: Arc<Telemetry>,
}

enum Attempt {
    Ok(Vec<i64>),
    Retryable(String, Option<Duration>),
    Fatal(String),
}

impl RecommendationsClient {
    pub fn new(base: String, cfg: &Config, telemetry: Arc<Telemetry>) -> Self {
        let url = reqwest::Url::parse(&base).ok();
        let host = url
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let port = url
            .as_ref()
            .and_then(|u| u.port_or_known_default())
            .map(i64::from)
            .unwrap_or(0);
        RecommendationsClient {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_string(),
            host,
            port,
            breaker: CircuitBreaker::new("recommendations", cfg.breaker, telemetry.clone()),
            budget: RetryBudget::new(cfg.retry_budget_ratio, cfg.retry_budget_min_per_sec),
            timeout: cfg.downstream_timeout,
            max_attempts: cfg.retry_max_attempts.max(1),
            backoff_base: cfg.retry_base,
            backoff_cap: cfg.retry_cap,
            slow_call: cfg.breaker.slow_call,
            attempts: AtomicU64::new(0),
            last_good: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            telemetry,
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Attempts sent so far (first tries and retries).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub async fn last_good(&self, id: i64) -> Option<Vec<i64>> {
        self.last_good.get(&id).await.map(|v| (*v).clone())
    }

    /// Recommended product ids for `id`.
    pub async fn get(&self, id: i64) -> Result<Vec<i64>, CallError> {
        let permit = self.breaker.acquire().map_err(|_| CallError::Open)?;
        self.budget.deposit();
        let parent = Context::current();
        let started = Instant::now();
        let mut last = String::new();
        let mut retry_after = None;
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                if !self.budget.try_withdraw() {
                    last = format!("{last}; retry budget exhausted");
                    break;
                }
                self.telemetry
                    .m
                    .retries
                    .add(1, &[KeyValue::new("server.address", self.host.clone())]);
                let mut delay = full_jitter(
                    self.backoff_base,
                    self.backoff_cap,
                    attempt - 1,
                    &mut rand::rng(),
                );
                if let Some(ra) = retry_after.take() {
                    delay = delay.max(std::cmp::min(ra, self.backoff_cap));
                }
                tokio::time::sleep(delay).await;
            }
            match self.attempt(&parent, id, attempt).await {
                Attempt::Ok(items) => {
                    permit.record(started.elapsed() < self.slow_call);
                    self.last_good.insert(id, Arc::new(items.clone())).await;
                    return Ok(items);
                }
                Attempt::Retryable(e, ra) => {
                    last = e;
                    retry_after = ra;
                }
                Attempt::Fatal(e) => {
                    // A 4xx is our mistake, not the dependency failing.
                    permit.record(true);
                    return Err(CallError::Failed(e));
                }
            }
        }
        permit.record(false);
        Err(CallError::Failed(last))
    }

    async fn attempt(&self, parent: &Context, id: i64, attempt: u32) -> Attempt {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/recommendations/{id}", self.base);
        let mut attrs = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.full", url.clone()),
            KeyValue::new("url.template", "/recommendations/{product_id}"),
            KeyValue::new("server.address", self.host.clone()),
            KeyValue::new("server.port", self.port),
        ];
        if attempt > 0 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt),
            ));
        }
        let cx = self.telemetry.child(
            parent,
            "GET /recommendations/{product_id}",
            SpanKind::Client,
            move || attrs,
        );
        let mut headers = http::HeaderMap::new();
        inject_context(&cx, &mut headers);
        let start = Instant::now();
        let res = tokio::time::timeout(self.timeout, async {
            let r = self.http.get(&url).headers(headers).send().await?;
            let status = r.status();
            let ra = r
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, ra, body))
        })
        .await;
        let span = cx.span();
        let mut mattrs = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("server.address", self.host.clone()),
            KeyValue::new("server.port", self.port),
        ];
        let outcome = match res {
            Ok(Ok((status, ra, body))) => {
                let code = i64::from(status.as_u16());
                span.set_attribute(KeyValue::new("http.response.status_code", code));
                mattrs.push(KeyValue::new("http.response.status_code", code));
                if status.is_success() {
                    match serde_json::from_slice::<serde_json::Value>(&body) {
                        Ok(v) => Attempt::Ok(
                            v["items"]
                                .as_array()
                                .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
                                .unwrap_or_default(),
                        ),
                        Err(e) => Attempt::Fatal(format!("bad body: {e}")),
                    }
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Attempt::Retryable(format!("HTTP {status}"), ra)
                } else {
                    Attempt::Fatal(format!("HTTP {status}"))
                }
            }
            Ok(Err(e)) => Attempt::Retryable(format!("request: {e}"), None),
            Err(_) => Attempt::Retryable(format!("timeout after {:?}", self.timeout), None),
        };
        let error_type = match &outcome {
            Attempt::Ok(_) => None,
            Attempt::Retryable(e, _) | Attempt::Fatal(e) => Some(if e.starts_with("timeout") {
                "timeout".to_string()
            } else if let Some(code) = e.strip_prefix("HTTP ") {
                code.split_whitespace().next().unwrap_or("http").to_string()
            } else {
                "request".to_string()
            }),
        };
        if let Some(t) = error_type {
            span.set_status(Status::error(t.clone()));
            span.set_attribute(KeyValue::new("error.type", t.clone()));
            mattrs.push(KeyValue::new("error.type", t));
        }
        span.end();
        self.telemetry
            .m
            .client_duration
            .record(start.elapsed().as_secs_f64(), &mattrs);
        outcome
    }
}
