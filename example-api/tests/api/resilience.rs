//! The downstream dependency: circuit breaker, degraded answers, retries with backoff and the
//! retry budget. Calls are counted where they arrive (the recommendations service).

use crate::helpers::{TestApp, eventually};
use example_api::config::BreakerConfig;
use example_api::faults::FaultSettings;
use serde_json::Value;
use std::time::{Duration, Instant};

fn received(state: &Value) -> u64 {
    state["downstream"]["received"].as_u64().unwrap()
}

async fn recs(app: &TestApp, id: i64) -> (Value, Option<String>, String) {
    let r = app
        .get(&format!("/v1/products/{id}/recommendations"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "degraded, never failed");
    let degraded = r
        .headers()
        .get("x-degraded")
        .map(|v| v.to_str().unwrap().to_string());
    let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
    (r.json().await.unwrap(), degraded, cc)
}

#[tokio::test]
async fn breaker_opens_degrades_and_closes_after_probes() {
    let app = TestApp::spawn_with(|c| {
        c.breaker = BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            // Long enough that the dozen requests after opening all find it open on a slow
            // machine, rather than one of them becoming a half-open probe.
            open_wait: Duration::from_secs(3),
            half_open_probes: 2,
            slow_call: Duration::from_secs(5),
        };
        c.retry_max_attempts = 1;
    })
    .await;
    let (body, degraded, cc) = recs(&app, 3).await;
    assert_eq!(body["meta"]["degraded"], false);
    assert!(degraded.is_none());
    assert_eq!(cc, "public, max-age=60");
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
    assert_eq!(received(&app.admin_state().await), 1);

    app.set_faults(FaultSettings {
        downstream_error_rate: 1.0,
        ..Default::default()
    })
    .await;
    for i in 0..12 {
        let (body, degraded, cc) = recs(&app, 3 + i % 2).await;
        assert_eq!(body["meta"]["degraded"], true);
        assert!(degraded.is_some());
        assert_eq!(
            cc, "public, max-age=5",
            "degraded answers are cached briefly"
        );
        assert!(
            !body["data"].as_array().unwrap().is_empty(),
            "cached or popular items"
        );
    }
    let state = app.admin_state().await;
    assert_eq!(state["breaker"], "open");
    // 1 good call, then failures until the window (≥ 4 calls) reaches 50 %: 3 failed calls
    // (3 of 4). The other 9 requests never reached the dependency.
    let failed_calls = received(&state) - 1;
    assert_eq!(failed_calls, 3, "breaker should stop calls");
    let (body, degraded, _) = recs(&app, 3).await;
    assert_eq!(degraded.as_deref(), Some("circuit_open"));
    assert_eq!(body["meta"]["reason"], "circuit_open");
    // Product 3 had a good answer before: the fallback is that cached answer.
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
    app.set_faults(FaultSettings::default()).await;
    assert_eq!(
        received(&app.admin_state().await),
        failed_calls + 1,
        "no calls while open"
    );

    // Dependency healthy again: after the wait, two probes pass and the breaker closes.
    eventually("half-open", Duration::from_secs(15), || async {
        (app.admin_state().await["breaker"] == "half_open").then_some(())
    })
    .await;
    for _ in 0..2 {
        let (body, degraded, _) = recs(&app, 5).await;
        assert_eq!(body["meta"]["degraded"], false);
        assert!(degraded.is_none());
    }
    assert_eq!(app.admin_state().await["breaker"], "closed");
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let app = TestApp::spawn_with(|c| {
        c.retry_max_attempts = 4;
        c.retry_base = Duration::from_millis(40);
        c.retry_cap = Duration::from_millis(400);
        c.retry_budget_min_per_sec = 100.0;
        c.breaker.min_calls = 1000;
    })
    .await;
    app.set_faults(FaultSettings {
        downstream_error_rate: 1.0,
        ..Default::default()
    })
    .await;
    // Each request makes 4 attempts; full-jitter sleeps are U(0, 40·2ⁿ ms): the expected total
    // wait is 20+40+80 = 140 ms per request, so five requests wait ~0.7 s on average.
    let start = Instant::now();
    for _ in 0..5 {
        let (body, degraded, _) = recs(&app, 2).await;
        assert_eq!(degraded.as_deref(), Some("downstream_error"));
        assert_eq!(body["meta"]["degraded"], true);
    }
    let took = start.elapsed();
    let state = app.admin_state().await;
    assert_eq!(received(&state), 20, "4 attempts per request");
    assert_eq!(state["downstream"]["attempts"], 20);
    assert!(
        took >= Duration::from_millis(150),
        "backoff between attempts: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "capped backoff: {took:?}");

    // Fails once then succeeds: a retry hides a transient error from the client.
    app.set_faults(FaultSettings {
        downstream_error_rate: 0.5,
        ..Default::default()
    })
    .await;
    let mut clean = 0;
    for _ in 0..20 {
        let (body, _, _) = recs(&app, 2).await;
        if body["meta"]["degraded"] == false {
            clean += 1;
        }
    }
    // P(4 failures in a row) = 1/16: nearly all requests succeed despite 50 % failing calls.
    assert!(clean >= 14, "clean = {clean}");
    app.stop().await;
}

#[tokio::test]
async fn retry_budget_stops_a_retry_storm() {
    let app = TestApp::spawn_with(|c| {
        c.retry_max_attempts = 5;
        c.retry_base = Duration::from_millis(1);
        c.retry_cap = Duration::from_millis(2);
        c.retry_budget_ratio = 0.1;
        c.retry_budget_min_per_sec = 0.0;
        c.breaker.min_calls = 1000;
    })
    .await;
    app.set_faults(FaultSettings {
        downstream_error_rate: 1.0,
        ..Default::default()
    })
    .await;
    for _ in 0..30 {
        recs(&app, 2).await;
    }
    let calls = received(&app.admin_state().await);
    // Without a budget: 30 × 5 = 150 calls. With 10 % (+1 initial token): ≤ 30 + 3 + 1.
    assert!((30..=34).contains(&calls), "calls = {calls}");
    app.stop().await;
}

#[tokio::test]
async fn slow_downstream_times_out_and_counts_as_failure() {
    let app = TestApp::spawn_with(|c| {
        c.downstream_timeout = Duration::from_millis(100);
        c.retry_max_attempts = 1;
    })
    .await;
    app.set_faults(FaultSettings {
        downstream_latency_ms: 5000,
        ..Default::default()
    })
    .await;
    let start = Instant::now();
    let (body, degraded, _) = recs(&app, 4).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "timeout bounds the wait"
    );
    assert_eq!(body["meta"]["degraded"], true);
    assert_eq!(degraded.as_deref(), Some("downstream_error"));
    app.stop().await;
}

#[tokio::test]
async fn slow_successes_trip_the_breaker() {
    let app = TestApp::spawn_with(|c| {
        c.downstream_timeout = Duration::from_secs(2);
        c.retry_max_attempts = 1;
        c.breaker.slow_call = Duration::from_millis(100);
        c.breaker.min_calls = 3;
    })
    .await;
    app.set_faults(FaultSettings {
        downstream_latency_ms: 150,
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        let (body, _, _) = recs(&app, 4).await;
        assert_eq!(
            body["meta"]["degraded"], false,
            "slow but successful answers are used"
        );
    }
    assert_eq!(app.admin_state().await["breaker"], "open");
    let (_, degraded, _) = recs(&app, 4).await;
    assert_eq!(degraded.as_deref(), Some("circuit_open"));
    app.stop().await;
}
