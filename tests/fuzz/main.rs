//! Structured fuzzing of redline end to end, on stable Rust with proptest: hostile OTLP trace,
//! metric and log exports, over OTLP/HTTP (protobuf and JSON, gzip or not) and OTLP/gRPC, with the
//! encoded bytes sometimes mutated, into a real redline in this process; then every page, API
//! read, alert evaluation and alert e-mail over what they left, and reads with hostile query
//! parameters. The run checks that every answer is one OTLP allows, no read fails or hangs,
//! nothing panics anywhere (the panic hook sees panics that stages catch), no row written is
//! unreadable or refused, no single allocation or the live heap grows past a bound, and a
//! normal export afterwards is still counted exactly.
//!
//! The CI run is bounded: `cargo test --test fuzz` runs `PROPTEST_CASES` cases per property
//! (default 128; about ten seconds in all). The long run is the same test, optimised and by time:
//!
//! ```text
//! REDLINE_FUZZ_SECONDS=900 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! It runs rounds of cases with fresh random seeds until the time is up and prints the count.
//! A failure prints the shrunk input that caused it.

#[path = "../helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod alloc;
mod exports;
mod logs;
mod otlp;
mod reads;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Url;

use exports::{Delivery, Endpoints, Signal};
use helpers::TestRedline;

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

/// The fuzzed redline's body limit; the memory limit is four times it (the smallest allowed).
const MAX_BODY_BYTES: usize = 4 << 20;
/// No single allocation may exceed this: a few bodies' worth (a body, its decoded copy, the
/// doubling of a growing buffer). A merge across hostile offsets asked for tens of GiB.
const LARGEST_ALLOCATION: usize = 8 * MAX_BODY_BYTES;
/// The live heap of the whole process (redline, SQLite's caches, the test's client) must stay
/// under this.
const LIVE_HEAP: usize = 512 << 20;

/// Counters on `/metrics` that must stay zero whatever arrives.
const MUST_STAY_ZERO: &[&str] = &[
    "redline_stage_panics_total",
    "redline_store_writer_panics_total",
    "redline_store_rows_unreadable_total",
    "redline_store_rows_skipped_total",
    "redline_store_rows_lost_total",
    "redline_store_flushes_dropped_total",
];

/// Panics outside this test's own code, with where they happened, from every test here.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let place = info.location().map(|l| l.to_string()).unwrap_or_default();
            if !place.starts_with("tests/") {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let mut panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
                panics.push(format!("{place}: {message}"));
            }
            default_hook(info);
        }));
    });
}

fn fuzz_config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128);
    Config {
        cases,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `property` over `strategy`: one round in CI, rounds with fresh seeds until
/// `REDLINE_FUZZ_SECONDS` have passed in the long run. Returns the cases run.
fn run_rounds<S: Strategy>(
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> usize {
    let seconds: u64 = std::env::var("REDLINE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(seconds);
    let config = fuzz_config();
    let mut cases = 0;
    loop {
        let mut runner = TestRunner::new(config.clone());
        if let Err(failure) = runner.run(&strategy, &property) {
            panic!("{failure}");
        }
        cases += config.cases as usize;
        if Instant::now() >= until {
            return cases;
        }
    }
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

fn start_redline(runtime: &tokio::runtime::Runtime) -> TestRedline {
    runtime.block_on(TestRedline::start_with(|layer| {
        layer.max_body_bytes = Some(MAX_BODY_BYTES);
        layer.memory_limit = Some(4 * MAX_BODY_BYTES);
        layer.flush_interval = Some("200ms".into());
        // Small caps, so that even a short run reaches `__overflow__`.
        layer.max_services = Some(24);
        layer.max_endpoints_per_service = Some(64);
        layer.max_metric_series = Some(256);
        layer.alerts_file = Some(fuzz_dir().join("alerts.toml"));
        layer.dashboards_dir = Some(fuzz_dir().join("dashboards"));
    }))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn web_base(redline: &TestRedline) -> Url {
    Url::parse(&redline.url("/")).expect("web address")
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// A generated export of either signal.
#[derive(Debug)]
enum Export {
    Traces(opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest),
    Metrics(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest),
    Logs(opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest),
}

fn export() -> impl Strategy<Value = Export> {
    prop_oneof![
        otlp::trace_export().prop_map(Export::Traces),
        otlp::metrics_export().prop_map(Export::Metrics),
        logs::logs_export().prop_map(Export::Logs),
    ]
}

/// What must hold after any fuzz run: no panic anywhere, no counter of lost or unreadable data
/// above zero once everything is written, allocation within bounds, and a normal export still
/// accepted and counted exactly.
fn check_afterwards(runtime: &tokio::runtime::Runtime, redline: &TestRedline) {
    let base = web_base(redline);
    runtime.block_on(async {
        // A normal export afterwards is counted exactly. After a long run the service and
        // endpoint caps may be full and it lands in `__overflow__`, so it is checked against
        // the total of all services, once what the fuzz sent has all been aggregated.
        let settled = settled_total(redline).await;
        let control = helpers::export_request("fuzz-control", "/control", 40);
        assert_eq!(
            redline.export(&control).await,
            200,
            "a normal export after the fuzz"
        );
        let counted = helpers::poll(Duration::from_secs(20), || async {
            (total_requests(redline).await? == settled + 40).then_some(())
        })
        .await;
        assert!(
            counted.is_some(),
            "40 spans after the fuzz: total {:?}, expected {}",
            total_requests(redline).await,
            settled + 40
        );
        // Everything acknowledged is written (not yet stored: 0) and the stages are ready.
        let ready = helpers::poll(Duration::from_secs(30), || async {
            let response = redline
                .client()
                .get(redline.url("/readyz"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "/readyz is not 200 30 s after the fuzz");
        reads::visit_everything(redline.client(), &base)
            .await
            .unwrap_or_else(|e| panic!("a read after the fuzz: {e}"));
        let metrics = redline.metrics_text().await;
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let counter = name.split('{').next().unwrap_or(name);
            if MUST_STAY_ZERO.contains(&counter) {
                assert_eq!(value.parse::<f64>().ok(), Some(0.0), "{line}");
            }
        }
    });
    let panics = PANICS.lock().unwrap_or_else(|p| p.into_inner());
    assert!(panics.is_empty(), "panics during the fuzz run: {panics:#?}");
    let usage = alloc::usage();
    eprintln!(
        "fuzz: live heap {:.1} MiB (peak {:.1} MiB), largest allocation {:.1} MiB",
        usage.live as f64 / 1048576.0,
        usage.peak as f64 / 1048576.0,
        usage.largest as f64 / 1048576.0
    );
    assert!(
        usage.largest <= LARGEST_ALLOCATION,
        "one allocation of {} bytes (bound {LARGEST_ALLOCATION})",
        usage.largest
    );
    assert!(
        usage.peak <= LIVE_HEAP,
        "live heap peaked at {} bytes (bound {LIVE_HEAP})",
        usage.peak
    );
}

/// Requests of all services, over every time the ±6 h clock window can place them.
async fn total_requests(redline: &TestRedline) -> Option<u64> {
    let now = helpers::now_ns() as i64 / 1_000_000;
    let hours = 3_600_000;
    let path = format!(
        "/api/v1/services?from={}&to={}",
        now - 7 * hours,
        now + 7 * hours
    );
    let (status, body) = redline.get(&path).await;
    let services = body.as_array().filter(|_| status == 200)?;
    services.iter().map(|s| s["requests"].as_u64()).sum()
}

/// The total once it has stopped changing (ten equal readings in a row, 100 ms apart):
/// everything acknowledged has been aggregated.
async fn settled_total(redline: &TestRedline) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut equal) = (None, 0);
    loop {
        let total = total_requests(redline).await;
        equal = if total.is_some() && total == last {
            equal + 1
        } else {
            0
        };
        last = total;
        if let (Some(total), 10..) = (total, equal) {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "the total did not settle: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn hostile_exports_through_every_stage() {
    record_panics();
    let runtime = runtime();
    let redline = start_redline(&runtime);
    let client = reqwest::Client::new();
    let endpoints = Endpoints {
        http: redline.http,
        grpc: redline.grpc,
        max_body_bytes: MAX_BODY_BYTES,
    };
    let base = web_base(&redline);
    let sent = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);
    let started = Instant::now();
    let cases = run_rounds(
        (export(), exports::delivery()),
        |(export, delivery): (Export, Delivery)| {
            runtime.block_on(async {
                let answer = match &export {
                    Export::Traces(message) => {
                        { exports::send(&client, &endpoints, Signal::Traces, message, &delivery) }
                            .await
                    }
                    Export::Metrics(message) => {
                        { exports::send(&client, &endpoints, Signal::Metrics, message, &delivery) }
                            .await
                    }
                    Export::Logs(message) => {
                        { exports::send(&client, &endpoints, Signal::Logs, message, &delivery) }
                            .await
                    }
                }
                .map_err(fail)?;
                prop_assert!(answer.allowed(), "answer {answer:?} to {delivery:?}");
                if answer.accepted() {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                // Every few exports, everything is read back through the pages and the API.
                if sent.fetch_add(1, Ordering::Relaxed) % 16 == 15 {
                    let count = reads::visit_everything(&client, &base)
                        .await
                        .map_err(fail)?;
                    reads.fetch_add(count, Ordering::Relaxed);
                }
                Ok(())
            })
        },
    );
    eprintln!(
        "fuzz: {cases} cases, {} exports ({} accepted), {} reads in {:.0?}",
        sent.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        started.elapsed()
    );
    check_afterwards(&runtime, &redline);
    runtime.block_on(redline.stop());
}

#[test]
fn hostile_query_parameters() {
    record_panics();
    let runtime = runtime();
    let redline = start_redline(&runtime);
    let base = web_base(&redline);
    runtime.block_on(async {
        for service in otlp::SERVICES {
            let request = helpers::export_request(service, "/api/{id}", 20);
            assert_eq!(redline.export(&request).await, 200);
        }
    });
    let answered = AtomicUsize::new(0);
    let started = Instant::now();
    let cases = run_rounds(reads::hostile_read(), |(path, parameters)| {
        runtime.block_on(async {
            let status = reads::read_with(redline.client(), &base, &path, &parameters)
                .await
                .map_err(fail)?;
            if status == 200 {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    });
    eprintln!(
        "fuzz: {cases} hostile reads ({} answered 200, the rest refused) in {:.0?}",
        answered.load(Ordering::Relaxed),
        started.elapsed()
    );
    check_afterwards(&runtime, &redline);
    runtime.block_on(redline.stop());
}
