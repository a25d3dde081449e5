//! With Redis (127.0.0.1:6379; CI starts it): instances share one rate-limit budget and one
//! cache, and an invalidation on one instance is visible on the other. Each test uses its own
//! key prefix.

use crate::helpers::{REDIS_URL, TestApp, eventually, redis_prefix, test_config};
use example_api::config::RatePolicy;
use example_api::telemetry::Telemetry;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn two_instances_share_one_rate_limit_budget() {
    let prefix = redis_prefix("rl");
    let setup = |c: &mut example_api::Config| {
        c.redis_url = Some(REDIS_URL.into());
        c.redis_prefix = prefix.clone();
        c.rate_default = RatePolicy {
            name: "default",
            quota: 6,
            window: Duration::from_secs(60),
        };
    };
    let a = TestApp::spawn_with(setup).await;
    let b = TestApp::spawn_with(setup).await;
    for app in [&a, &a, &a, &b, &b] {
        assert_eq!(
            app.get("/v1/categories").send().await.unwrap().status(),
            200
        );
    }
    let r = b.get("/v1/categories").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["ratelimit"].to_str().unwrap().contains("r=0"),
        "{:?}",
        r.headers()["ratelimit"]
    );
    for app in [&a, &b] {
        let r = app.get("/v1/categories").send().await.unwrap();
        assert_eq!(r.status(), 429, "the budget is shared");
        assert!(r.headers().contains_key("retry-after"));
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_instances_share_the_cache_and_see_invalidations() {
    let prefix = redis_prefix("cache");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mk = || {
        let mut c = test_config(&dir);
        c.redis_url = Some(REDIS_URL.into());
        c.redis_prefix = prefix.clone();
        // A long L1 TTL: only the invalidation message can make B drop its copy in time.
        c.l1_ttl = Duration::from_secs(300);
        c
    };
    let a = TestApp::spawn_config(mk(), dir.clone(), Arc::new(Telemetry::disabled())).await;
    let b = TestApp::spawn_config(mk(), dir.clone(), Arc::new(Telemetry::disabled())).await;

    let (_, before) = b.get_json("/v1/products/11").await;
    let old_name = before["data"]["name"].as_str().unwrap().to_string();
    // B's read filled the shared L2.
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:product:11"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let cached: Value = serde_json::from_str(&cached.expect("product in L2")).unwrap();
    assert_eq!(cached["name"], old_name.as_str());

    // Update through A.
    a.rename_product(11, "Changed on A").await;
    // B (a different client, so no read-your-writes shortcut) sees the change promptly.
    eventually("B sees A's write", Duration::from_secs(10), || async {
        let (_, now) = b.get_json("/v1/products/11").await;
        (now["data"]["name"] == "Changed on A").then_some(())
    })
    .await;
    // Written through to L2 as well.
    let cached: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:product:11"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(cached.unwrap().contains("Changed on A"));
    a.stop().await;
    b.stop().await;
}
