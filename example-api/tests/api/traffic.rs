//! The load generator's traffic shape against the real API: Zipf-skewed product popularity
//! raises the cache hit ratio the API reports in `X-Cache`, the report splits latency by cache
//! result, and write bursts arrive on schedule on top of the regular load.

use crate::helpers::TestApp;
use example_api::loadgen::{self, CacheResult, Options, Traffic};
use std::time::Duration;

async fn run(app: &TestApp, rate: f64, secs: u64, traffic: Traffic) -> loadgen::Report {
    let mut opts = Options::new(app.url(""), rate, Duration::from_secs(secs));
    opts.traffic = traffic;
    loadgen::run(opts, std::future::pending()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_splits_product_reads_by_cache_result() {
    let app = TestApp::spawn().await;
    let traffic = Traffic {
        write_burst_every: 1.0,
        write_burst_size: 10,
        ..Traffic::default()
    };
    let report = run(&app, 100.0, 3, traffic).await;
    app.stop().await;

    // Bursts at 1 s and 2 s (the one at 3 s would start at the end): 10 writes each, on top of
    // the 300 regular arrivals.
    assert_eq!(report.burst_writes, 20);
    assert_eq!(report.scheduled, 320);
    let posts = report.by_endpoint["POST /v1/products/{id}/reviews"].requests;
    assert!(posts >= 20, "{posts}");
    assert!(
        !report.by_status.keys().any(|s| s.starts_with('5')),
        "{:?}",
        report.by_status
    );

    // Every product read said how the cache answered it.
    let reads = report.by_endpoint["GET /v1/products/{id}"].requests;
    let labelled: u64 = report.by_cache.values().map(|h| h.len()).sum();
    assert_eq!(labelled, reads);
    let (hits, misses) = (
        report.cache_count(CacheResult::Hit),
        report.cache_count(CacheResult::Miss),
    );
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
    // Only the writing client's reads skip the cache after its writes (one client of eight).
    let bypassed = report.cache_count(CacheResult::Bypass);
    assert!(
        bypassed * 4 < reads,
        "{bypassed} of {reads} reads bypassed the cache"
    );
    let json = report.to_json();
    assert_eq!(json["cache"]["hits"], hits);
    assert_eq!(json["cache"]["misses"], misses);
    let ratio = json["cache"]["hit_ratio"].as_f64().unwrap();
    assert!((ratio - hits as f64 / (hits + misses) as f64).abs() < 1e-9);
    for r in ["hit", "miss"] {
        let l = &json["cache"]["latency_ms"][r];
        assert!(
            l["p99"].as_f64().unwrap() >= l["p50"].as_f64().unwrap(),
            "{l}"
        );
    }
    let text = report.render();
    assert!(text.contains("product cache: hit ratio"), "{text}");
}

/// The same number of product reads over the same catalog, on a cold cache each time: with
/// Zipf popularity the hot products repeat, so far fewer reads miss than with uniform ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipf_popularity_raises_the_hit_ratio_over_uniform_ids() {
    let mut ratios = Vec::new();
    for exponent in [0.0, 1.0] {
        let app = TestApp::spawn().await;
        let traffic = Traffic {
            zipf_exponent: exponent,
            ..Traffic::steady()
        };
        let report = run(&app, 200.0, 1, traffic).await;
        app.stop().await;
        ratios.push(report.cache_hit_ratio().expect("product reads"));
    }
    eprintln!(
        "hit ratios: uniform {:.2}, Zipf {:.2}",
        ratios[0], ratios[1]
    );
    // 120 products, ~100 reads: about 0.3 uniform, about 0.6 with exponent 1.
    assert!(
        ratios[1] > ratios[0] + 0.1,
        "uniform {} vs Zipf {}",
        ratios[0],
        ratios[1]
    );
}

/// The traffic flags reach the demo, which checks them before it starts anything (here: before
/// it looks for the redline binary).
#[tokio::test]
async fn the_demo_rejects_bad_traffic_flags_before_starting() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_example-api"))
        .args([
            "demo",
            "--redline",
            "/nonexistent/redline",
            "--postgres",
            "--zipf-exponent",
            "1.2",
            "--diurnal-period",
            "600",
            "--diurnal-amplitude",
            "1.5",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--diurnal-amplitude must be in [0, 1)"),
        "{err}"
    );
    assert!(!err.contains("redline binary not found"), "{err}");
}
