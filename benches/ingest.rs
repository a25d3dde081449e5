//! redline's benchmarks (issues 2 and 13, "Performance"), recorded in docs/PERFORMANCE.md.
//!
//! `cargo bench --bench ingest -- <mode> [options]`, modes:
//! - `ingest`  — (with `--forward`: redline aggregating and forwarding everything over
//!   OTLP/gRPC against rotel-agent forwarding over OTLP/gRPC, both to a blackhole rotel-agent
//!   on core 0) side by side in one run, interleaved and as medians over rounds: (a) the
//!   decode-only bound (prost decode of the same payloads, one core), (b) redline and (c)
//!   rotel-agent (blackhole exporter) receiving OTLP/gRPC from an open-loop load generator: the
//!   highest arrival rate with < 1 % of batches lost (rejected, failed, or not sendable because
//!   every in-flight slot was busy); a round in which a contender fails its first rung (the
//!   shared machine was busy) is left out of the rate medians. Then each contender in turn
//!   gets `--full-speed-secs` of closed-loop load (as fast as answers come, `--in-flight`
//!   requests, no retries): spans acknowledged and refused per second. Per contender and
//!   round also: peak RSS (VmRSS sampled every 100 ms, and VmHWM) and RSS `--after-secs` after
//!   its load stopped; for redline builds the database size, the exactness of RED ("counted X
//!   of Y acknowledged": the `requests` of `/api/v1/services?since=1h` against the spans in
//!   batches answered OK, once the ingest queue is drained and the writer idle) and the loss
//!   counters of `/metrics` (`redline_*dropped*`, `*rejected*`, … found by name). `--errors
//!   50` is issue 13's error storm; `--errors 2` (the default) with `REDLINE_BASELINE_BIN` its
//!   "no regression".
//! - `cpu`     — CPU (% of one core, from /proc/PID/stat over a 20 s window) and RSS of redline
//!   and rotel-agent at a steady 10k spans/s, interleaved.
//! - `memory`  — redline RSS idle, peak RSS with 1,000 active endpoints and 10,000 metric
//!   series, and RSS during a flood of 1,000,000 distinct routes.
//! - `query`   — `GET /api/v1/endpoints?service=S&since=1h` with 1,000 endpoints and 1 h of data.
//! - `profile` — in process, no network: decode + convert + aggregate of the same payloads
//!   (for `valgrind --tool=callgrind`).
//! - `tls`     — OTLP/gRPC ingest in plain text, over TLS and with API keys, interleaved over
//!   at least 5 rounds, medians and ratios; and the authentication check's cost per request
//!   (`benches/ingest/tls.rs`).
//! - `all`     — ingest, cpu, memory and query in turn.
//!
//! Options: `--rounds N` (3), `--step-secs S` (4), `--start-rate SPANS_PER_S` (20000),
//! `--in-flight N` (8), `--connections N` (2) for the generator; `--errors PERCENT` (2: share
//! of spans that are 5xx with status ERROR, trace ids random per span), `--full-speed-secs S`
//! (20) and `--after-secs S` (30) for `ingest` (0 skips either); `--cpu-window-secs S` (20)
//! for `cpu`; `--flood-routes N` (1000000) for `memory`; `--query-spans-per-window N` (4) and
//! `--queries N` (25) for `query`; `--rate` and `--secs` for `load`.
//!
//! `REDLINE_BIN` runs another build as "redline"; in `ingest`, `REDLINE_BASELINE_BIN` adds an
//! older build as a third contender, interleaved with the others (before/after in one run).
//! Hostile input and the 30-minute soak are in `benches/storm.rs`.
//!
//! Everything listens on 127.0.0.1 only. The benchmark pins itself (the load generator) to
//! core 0 and the system under test to core 1 with `taskset`. Child processes are killed when
//! the benchmark ends, on error and on panic (and by the kernel if it dies: PR_SET_PDEATHSIG).

#[allow(dead_code)]
#[path = "shared/grpc_load.rs"]
mod grpc_load;
#[allow(dead_code)]
#[path = "shared/host.rs"]
mod host;
#[allow(dead_code)]
#[path = "shared/ladder.rs"]
mod ladder;
#[allow(dead_code)]
#[path = "shared/payload.rs"]
mod payload;
#[allow(dead_code)]
#[path = "shared/probe.rs"]
mod probe;
#[allow(dead_code)]
#[path = "shared/procs.rs"]
mod procs;
#[path = "ingest/tls.rs"]
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use grpc_load::{LoadConfig, connect, run_load, send_all};
use payload::{
    Rng, SPANS_PER_BATCH, endpoint_batch, fresh_ids, http_span, kv, now_ns, resource, s,
    trace_payloads, trace_request,
};
use probe::{
    cpu_seconds, median, metric, prometheus, rss_mib, time_queries, wait_for_empty_queue,
    wait_for_idle_writer,
};
use procs::{rotel_binary, start_redline, start_rotel};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    mode: String,
    rounds: usize,
    step_secs: f64,
    start_rate: f64,
    max_in_flight: usize,
    connections: usize,
    cpu_window_secs: f64,
    query_spans_per_window: usize,
    flood_routes: usize,
    rate: f64,
    secs: f64,
    queries: usize,
    error_percent: u32,
    after_secs: f64,
    full_speed_secs: f64,
    forward: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        mode: "all".into(),
        rounds: 3,
        step_secs: 4.0,
        start_rate: 20_000.0,
        max_in_flight: 8,
        connections: 2,
        cpu_window_secs: 20.0,
        query_spans_per_window: 4,
        flood_routes: 1_000_000,
        rate: 50_000.0,
        secs: 20.0,
        queries: 25,
        error_percent: payload::NORMAL_ERROR_PERCENT,
        after_secs: 30.0,
        full_speed_secs: 20.0,
        forward: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // cargo bench passes this through
            "--rounds" => o.rounds = value()?.parse()?,
            "--step-secs" => o.step_secs = value()?.parse()?,
            "--start-rate" => o.start_rate = value()?.parse()?,
            "--in-flight" => o.max_in_flight = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--cpu-window-secs" => o.cpu_window_secs = value()?.parse()?,
            "--query-spans-per-window" => o.query_spans_per_window = value()?.parse()?,
            "--flood-routes" => o.flood_routes = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            "--secs" => o.secs = value()?.parse()?,
            "--queries" => o.queries = value()?.parse()?,
            "--errors" => o.error_percent = value()?.parse::<u32>()?.min(100),
            "--after-secs" => o.after_secs = value()?.parse()?,
            "--full-speed-secs" => o.full_speed_secs = value()?.parse()?,
            "--forward" => o.forward = true,
            "ingest" | "cpu" | "memory" | "query" | "profile" | "load" | "tls" | "all" => {
                o.mode = arg.clone()
            }
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}").into());
            }
            _ => {}
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let options = options()?;
    // The load generator lives on core 0; the system under test gets core 1. Pin before any
    // thread exists so every thread of this process inherits it.
    procs::pin_generator();
    procs::print_machine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Children are spawned from this (the main) thread only: PR_SET_PDEATHSIG follows the
    // thread that forked them.
    runtime.block_on(async {
        match options.mode.as_str() {
            "ingest" => ladder::ingest(&options.ladder()).await,
            "cpu" => cpu(&options).await,
            "memory" => memory(&options).await,
            "query" => query(&options).await,
            "profile" => {
                profile();
                Ok(())
            }
            "load" => load(&options).await,
            "tls" => {
                tls::run(&tls::TlsOptions {
                    rounds: options.rounds,
                    secs: options.full_speed_secs,
                    in_flight: options.max_in_flight,
                    connections: options.connections,
                })
                .await
            }
            _ => {
                ladder::ingest(&options.ladder()).await?;
                cpu(&options).await?;
                memory(&options).await?;
                query(&options).await
            }
        }
    })
}

impl Options {
    fn ladder(&self) -> ladder::LadderOptions {
        ladder::LadderOptions {
            rounds: self.rounds,
            step_secs: self.step_secs,
            start_rate: self.start_rate,
            max_in_flight: self.max_in_flight,
            connections: self.connections,
            error_percent: self.error_percent,
            after_secs: self.after_secs,
            full_speed_secs: self.full_speed_secs,
            forward: self.forward,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mode: cpu
// ---------------------------------------------------------------------------------------------

async fn cpu(options: &Options) -> Result<()> {
    println!(
        "\n== cpu: steady 10k spans/s, {} s window ==",
        options.cpu_window_secs
    );
    let payloads = Arc::new(trace_payloads(32, 7));
    let sequence = Arc::new(AtomicU64::new(0));
    let rotel = rotel_binary();
    let mut results: HashMap<&'static str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let rounds = options.rounds.clamp(1, 2);
    for round in 1..=rounds {
        println!("-- round {round}/{rounds}");
        let mut suts = vec![start_redline(&[])?];
        if let Some(binary) = &rotel {
            suts.push(start_rotel(binary)?);
        }
        for sut in &mut suts {
            let channels = connect(sut.grpc, 1).await?;
            let config = LoadConfig {
                spans_per_s: 10_000.0,
                duration: Duration::from_secs_f64(options.cpu_window_secs + 5.0),
                max_in_flight: options.max_in_flight,
            };
            let pid = sut.pid();
            // Measure from 3 s in (after warm-up) over the window.
            let window = options.cpu_window_secs;
            let sampler = async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let before = cpu_seconds(pid).unwrap_or(0.0);
                let t0 = Instant::now();
                tokio::time::sleep(Duration::from_secs_f64(window)).await;
                let used = cpu_seconds(pid).unwrap_or(0.0) - before;
                let (rss, _) = rss_mib(pid).unwrap_or((0.0, 0.0));
                (used / t0.elapsed().as_secs_f64() * 100.0, rss)
            };
            let (load, (cpu_pct, rss)) =
                tokio::join!(run_load(&channels, &payloads, &sequence, &config), sampler);
            let (_, hwm) = rss_mib(pid).unwrap_or((0.0, 0.0));
            println!(
                "  {:8} cpu {:5.2} % of one core, RSS {:.1} MiB (peak {:.1} MiB); {} batches ok, lost {:.2} %",
                sut.name,
                cpu_pct,
                rss,
                hwm,
                load.ok,
                load.loss_fraction() * 100.0
            );
            let entry = results.entry(sut.name).or_default();
            entry.0.push(cpu_pct);
            entry.1.push(rss);
        }
        for sut in &mut suts {
            sut.stop();
        }
    }
    println!("\n== cpu summary (medians) ==");
    for name in ["redline", "rotel"] {
        if let Some((cpu, rss)) = results.get_mut(name) {
            println!(
                "{name:8} at 10k spans/s: cpu {:.2} % of one core{}, RSS {:.1} MiB",
                median(cpu),
                if name == "redline" {
                    " (target ≤ 5 %)"
                } else {
                    ""
                },
                median(rss)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: memory
// ---------------------------------------------------------------------------------------------

/// 10,000 metric series: 10 metrics (gauges, cumulative counters, delta histograms) × 1,000
/// attribute sets, as one export.
fn metrics_request(sequence: u64, start_ns: u64) -> ExportMetricsServiceRequest {
    let now = now_ns();
    let attributes = |i: usize| {
        vec![
            kv(
                "region",
                s(["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"][i % 4]),
            ),
            kv("instance", s(&format!("i-{:05}", i))),
            kv("pool", s(["a", "b", "c"][i % 3])),
        ]
    };
    let mut metrics = Vec::new();
    for m in 0..10 {
        let name = format!("bench.metric.{m}");
        let data = match m % 3 {
            0 => metric::Data::Gauge(Gauge {
                data_points: (0..1000)
                    .map(|i| NumberDataPoint {
                        attributes: attributes(i),
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(
                            (i as f64 + sequence as f64).sin(),
                        )),
                        ..Default::default()
                    })
                    .collect(),
            }),
            1 => metric::Data::Sum(Sum {
                data_points: (0..1000)
                    .map(|i| NumberDataPoint {
                        attributes: attributes(i),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsInt(
                            (sequence * 10 + i as u64) as i64,
                        )),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            _ => metric::Data::Histogram(Histogram {
                data_points: (0..1000)
                    .map(|i| HistogramDataPoint {
                        attributes: attributes(i),
                        start_time_unix_nano: now - 1_000_000_000,
                        time_unix_nano: now,
                        count: 20,
                        sum: Some(3.5),
                        bucket_counts: vec![2, 5, 8, 3, 1, 1, 0, 0, 0, 0, 0],
                        explicit_bounds: vec![
                            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        ],
                        min: Some(0.001),
                        max: Some(0.4),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Delta as i32,
            }),
        };
        metrics.push(Metric {
            name,
            unit: if m % 3 == 2 { "s".into() } else { "1".into() },
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("shop")),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn memory(options: &Options) -> Result<()> {
    println!("\n== memory ==");
    let redline = start_redline(&[])?;
    let pid = redline.pid();
    let web = redline.web.expect("redline has a web address");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, _) = rss_mib(pid).ok_or("no /proc status")?;
    println!("idle RSS: {idle:.1} MiB (target ≤ 30 MB)");

    // 1,000 active endpoints and 10,000 metric series, for 20 s.
    let channels = connect(redline.grpc, 2).await?;
    let mut metrics_client = MetricsServiceClient::connect(format!("http://{}", redline.grpc))
        .await?
        .max_encoding_message_size(64 << 20);
    let start_ns = now_ns() - 1_000_000_000;
    let mut rng = Rng(99);
    let started = Instant::now();
    let mut sequence = 0u64;
    let mut peak_during = 0.0f64;
    while started.elapsed() < Duration::from_secs(20) {
        // Every second: 10 batches over the 1,000 routes (5,120 spans) and all 10,000 series.
        let batches: Vec<Bytes> = (0..10)
            .map(|_| {
                sequence += 1;
                endpoint_batch(&mut rng, 0, 1000, sequence)
            })
            .collect();
        send_all(&channels, batches.into_iter(), 4).await;
        let response = metrics_client
            .export(metrics_request(sequence, start_ns))
            .await?
            .into_inner();
        if let Some(partial) = response.partial_success
            && partial.rejected_data_points > 0
        {
            println!("  metrics partially rejected: {partial:?}");
        }
        if let Some((rss, _)) = rss_mib(pid) {
            peak_during = peak_during.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = prometheus(web).await?;
    let (rss, hwm) = rss_mib(pid).ok_or("no /proc status")?;
    println!(
        "active: {} endpoints, {} metric series tracked; RSS now {rss:.1} MiB, peak (VmHWM) {hwm:.1} MiB (target ≤ 100 MB)",
        metric(&m, "redline_series{kind=\"endpoints\"}"),
        metric(&m, "redline_series{kind=\"metric_series\"}"),
    );
    println!(
        "  store writer: {:.0} flushes, mean {:.0} ms per flush, max {:.0} ms",
        metric(&m, "redline_store_write_seconds_count"),
        metric(&m, "redline_store_write_seconds_sum")
            / metric(&m, "redline_store_write_seconds_count").max(1.0)
            * 1e3,
        metric(&m, "redline_store_write_seconds{quantile=\"1\"}") * 1e3,
    );

    // A flood of distinct routes.
    let flood = options.flood_routes;
    println!("flood: {flood} spans, each with its own http.route");
    let overflow_before = metric(&m, "redline_overflow_total{kind=\"endpoints\"}");
    let batches = flood.div_ceil(SPANS_PER_BATCH);
    let mut samples = Vec::new();
    let flood_started = Instant::now();
    let quarter = batches.div_ceil(4);
    let mut flood_rng = Rng(1234);
    for q in 0..4 {
        let from = q * quarter;
        let to = ((q + 1) * quarter).min(batches);
        let iter = (from..to).map(|b| {
            endpoint_batch(
                &mut flood_rng,
                100_000 + b * SPANS_PER_BATCH,
                SPANS_PER_BATCH,
                0,
            )
        });
        let (retried, failed) = send_all(&channels, iter, 4).await;
        wait_for_empty_queue(web, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = prometheus(web).await?;
        let (rss, hwm) = rss_mib(pid).ok_or("no /proc status")?;
        let overflow = metric(&m, "redline_overflow_total{kind=\"endpoints\"}") - overflow_before;
        println!(
            "  after {:>7} routes ({:5.1} s): RSS {rss:.1} MiB, peak {hwm:.1} MiB, endpoints tracked {}, overflow_total{{kind=\"endpoints\"}} +{overflow:.0} (retried {retried}, failed {failed})",
            to * SPANS_PER_BATCH,
            flood_started.elapsed().as_secs_f64(),
            metric(&m, "redline_series{kind=\"endpoints\"}"),
        );
        samples.push(rss);
    }
    println!(
        "flood RSS: first quarter {:.1} MiB, last {:.1} MiB ({:+.1} MiB over the last three quarters)",
        samples[0],
        samples[3],
        samples[3] - samples[0]
    );
    drop(metrics_client);
    drop(channels);
    drop(redline);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: query
// ---------------------------------------------------------------------------------------------

async fn query(options: &Options) -> Result<()> {
    println!("\n== query: /api/v1/endpoints, 1,000 endpoints, 1 h of data ==");
    let redline = start_redline(&[])?;
    let web = redline.web.expect("web address");
    let channels = connect(redline.grpc, 2).await?;
    // History: every endpoint gets `per_window` requests in every 10 s window of the past
    // hour, sent oldest first.
    let per_window = options.query_spans_per_window;
    let now = now_ns();
    let windows = 360u64;
    let endpoints = 1000usize;
    let total_spans = windows as usize * endpoints * per_window;
    println!(
        "filling: {total_spans} spans ({per_window} per endpoint per 10 s window, {windows} windows)"
    );
    let fill_started = Instant::now();
    let mut rng = Rng(5);
    let mut buffer: Vec<Span> = Vec::with_capacity(SPANS_PER_BATCH);
    let mut batches: Vec<Bytes> = Vec::new();
    let mut index = 0u64;
    let mut sent = (0u64, 0u64);
    for w in 0..windows {
        let window_end = now - (windows - w - 1) * 10_000_000_000;
        for _ in 0..per_window {
            for e in 0..endpoints {
                index += 1;
                let route = format!("/api/q{e}/{{id}}");
                let end = window_end - rng.below(9_000_000_000) as u64 - 500_000_000;
                buffer.push(http_span(
                    &mut rng,
                    index,
                    "GET",
                    &route,
                    end,
                    payload::NORMAL_ERROR_PERCENT,
                ));
                if buffer.len() == SPANS_PER_BATCH {
                    let spans = std::mem::take(&mut buffer);
                    batches.push(Bytes::from(trace_request("shop", spans).encode_to_vec()));
                }
            }
        }
        if batches.len() >= 64 || w == windows - 1 {
            if !buffer.is_empty() {
                let spans = std::mem::take(&mut buffer);
                batches.push(Bytes::from(trace_request("shop", spans).encode_to_vec()));
            }
            let (retried, failed) =
                send_all(&channels, std::mem::take(&mut batches).into_iter(), 4).await;
            sent.0 += retried;
            sent.1 += failed;
        }
    }
    wait_for_empty_queue(web, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "filled in {:.1} s (retried {} batches after UNAVAILABLE, failed {})",
        fill_started.elapsed().as_secs_f64(),
        sent.0,
        sent.1
    );
    let client = reqwest::Client::new();
    let url = format!("http://{web}/api/v1/endpoints?service=shop&since=1h");
    let body: serde_json::Value = client.get(&url).send().await?.json().await?;
    let listed = body["endpoints"].as_array().map_or(0, Vec::len);
    let requests: u64 = body["endpoints"]
        .as_array()
        .map(|a| a.iter().map(|e| e["requests"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    println!("response: {listed} endpoints, {requests} requests in the last hour");
    let pid = redline.pid();
    std::fs::write("/tmp/redline-bench-query.pid", pid.to_string())?;
    // Right after the fill the writer may still be storing the hour just sent (on a slow
    // machine, for tens of seconds); queries then merge those windows from memory and share
    // the core with the writer. Both figures are printed; the target is the steady state.
    let backlog = time_queries(&client, &url, 5, pid).await?;
    println!("while the writer stores the fill: {backlog}");
    let waited = wait_for_idle_writer(web, Duration::from_secs(3), Duration::from_secs(300)).await;
    println!("writer idle {:.1} s after the fill", waited.as_secs_f64());
    let steady = time_queries(&client, &url, options.queries, pid).await?;
    println!("GET {url}: {steady} (target ≤ 50 ms)");
    let (rss, hwm) = rss_mib(pid).unwrap_or((0.0, 0.0));
    println!("redline RSS after the queries: {rss:.1} MiB (peak {hwm:.1} MiB)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: load (a steady load on a fresh redline, for profiling it from outside)
// ---------------------------------------------------------------------------------------------

async fn load(options: &Options) -> Result<()> {
    let redline = start_redline(&[])?;
    println!("redline pid {}", redline.pid());
    std::fs::write("/tmp/redline-bench.pid", redline.pid().to_string())?;
    let channels = connect(redline.grpc, options.connections).await?;
    let payloads = Arc::new(trace_payloads(64, 42));
    let sequence = Arc::new(AtomicU64::new(0));
    let config = LoadConfig {
        spans_per_s: options.rate,
        duration: Duration::from_secs_f64(options.secs),
        max_in_flight: options.max_in_flight,
    };
    let cpu_before = cpu_seconds(redline.pid()).unwrap_or(0.0);
    let result = run_load(&channels, &payloads, &sequence, &config).await;
    let cpu = cpu_seconds(redline.pid()).unwrap_or(0.0) - cpu_before;
    println!(
        "{:.0} spans/s offered, {:.0} accepted/s, lost {:.2} %, redline cpu {:.0} % ({:.2} µs per span)",
        options.rate,
        result.accepted_spans_per_s(),
        result.loss_fraction() * 100.0,
        cpu / result.elapsed_s * 100.0,
        cpu / (result.ok as f64 * SPANS_PER_BATCH as f64) * 1e6
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode: profile (in process, for callgrind)
// ---------------------------------------------------------------------------------------------

fn profile() {
    use redline::aggregate::{Aggregator, AggregatorConfig};
    let payloads = trace_payloads(16, 3);
    let batches: usize = std::env::var("PROFILE_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut aggregator = Aggregator::new(AggregatorConfig::default(), 0);
    let now_ms = (now_ns() / 1_000_000) as i64;
    let mut prost_s = 0.0;
    let mut convert_s = 0.0;
    let mut apply_s = 0.0;
    for n in 0..batches {
        let bytes = fresh_ids(&payloads[n % payloads.len()], n as u64);
        let t = Instant::now();
        // For comparison only: what decoding the whole message with prost costs.
        drop(ExportTraceServiceRequest::decode(&bytes[..]).expect("decodes"));
        let t1 = Instant::now();
        let converted = redline::ingest::convert::convert_traces(&bytes).expect("decodes");
        let t2 = Instant::now();
        aggregator.apply(converted.batch, now_ms);
        let t3 = Instant::now();
        prost_s += (t1 - t).as_secs_f64();
        convert_s += (t2 - t1).as_secs_f64();
        apply_s += (t3 - t2).as_secs_f64();
        if n % 20 == 19 {
            let _ = aggregator.take_flush(now_ms);
        }
    }
    let spans = (batches * SPANS_PER_BATCH) as f64;
    println!(
        "in process, {batches} batches: prost decode (not used) {:.2} µs/span; redline read + convert {:.2} µs/span, aggregate {:.2} µs/span → {:.0} spans/s for both",
        prost_s / spans * 1e6,
        convert_s / spans * 1e6,
        apply_s / spans * 1e6,
        spans / (convert_s + apply_s)
    );
}
