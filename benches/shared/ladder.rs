//! The `ingest` mode: redline against rotel-agent (blackhole exporter) and optionally an
//! older redline build, on the same payloads, on a ×1.2 ladder of open-loop arrival rates,
//! interleaved at every rung (A B A B), as medians over rounds. Per contender and round it
//! also measures peak RSS (VmRSS sampled every 100 ms, and VmHWM), RSS a while after its load
//! stopped, and for redline builds the exactness of RED: spans counted in
//! `/api/v1/services` against spans acknowledged, plus the loss counters of `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::transport::Channel;

use crate::grpc_load::{
    ClosedLoop, Counts, Fate, LoadConfig, Tally, connect, run_load_counted, send_closed,
};
use crate::payload::{Payload, SPANS_PER_BATCH, fresh_ids, trace_payloads_for};
use crate::probe::{
    RssSampler, cpu_seconds, database_mib, exactness, median, metric, print_loss_counters,
    prometheus, rss, wait_for_empty_queue,
};
use crate::procs::{
    Sut, baseline_binary, rotel_binary, start_redline, start_redline_binary, start_rotel,
    start_rotel_forwarding, start_rotel_upstream,
};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

pub struct LadderOptions {
    pub rounds: usize,
    pub step_secs: f64,
    pub start_rate: f64,
    pub max_in_flight: usize,
    pub connections: usize,
    /// Share of spans that are 5xx errors with status ERROR.
    pub error_percent: u32,
    /// RSS is read this long after a contender's last step (0: not measured).
    pub after_secs: f64,
    /// After the ladder, each contender in turn gets this long of closed-loop load with
    /// `max_in_flight` requests in flight and no retries (0: skipped).
    pub full_speed_secs: f64,
    /// Forwarding mode: redline aggregates and forwards everything over OTLP/gRPC, rotel-agent
    /// forwards over OTLP/gRPC (no blackhole), both to one more rotel-agent with the blackhole
    /// exporter on core 0.
    pub forward: bool,
}

/// Spans per second prost decodes (and drops) on this core, for `duration`.
fn decode_bound(payloads: &[Payload], duration: Duration) -> f64 {
    let started = Instant::now();
    let mut spans = 0usize;
    let mut i = 0;
    while started.elapsed() < duration {
        for _ in 0..8 {
            let payload = &payloads[i % payloads.len()];
            let request = ExportTraceServiceRequest::decode(&payload.bytes[..]).expect("decodes");
            spans += request.resource_spans[0].scope_spans[0].spans.len();
            drop(std::hint::black_box(request));
            i += 1;
        }
    }
    spans as f64 / started.elapsed().as_secs_f64()
}

struct Contender {
    sut: Sut,
    channels: Vec<Channel>,
    /// Highest passing rate this round, and whether it has failed a step yet.
    best: f64,
    done: bool,
    tally: Arc<Tally>,
    last_load: Instant,
}

impl Contender {
    async fn connect(sut: Sut, connections: usize) -> Result<Self> {
        let channels = connect(sut.grpc, connections).await?;
        Ok(Contender {
            sut,
            channels,
            best: 0.0,
            done: false,
            tally: Arc::default(),
            last_load: Instant::now(),
        })
    }
}

/// One contender's figures in one round.
#[derive(Default)]
struct Figures {
    best: Vec<f64>,
    /// Spans acknowledged and refused per second in the full-speed phase.
    full_speed: Vec<(f64, f64)>,
    peak_mib: Vec<f64>,
    after_mib: Vec<f64>,
    counted: u64,
    sent: Counts,
    /// Rounds in which redline's count differed from what it acknowledged.
    inexact_rounds: usize,
}

async fn step(
    contender: &mut Contender,
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    rate: f64,
    options: &LadderOptions,
) -> Result<bool> {
    let config = LoadConfig {
        spans_per_s: rate,
        duration: Duration::from_secs_f64(options.step_secs),
        max_in_flight: options.max_in_flight,
    };
    let forward_dropped_before = match (contender.sut.web, options.forward) {
        (Some(web), true) => forward_dropped(web).await,
        _ => 0.0,
    };
    let cpu_before = cpu_seconds(contender.sut.pid()).unwrap_or(0.0);
    let result = run_load_counted(
        &contender.channels,
        payloads,
        sequence,
        &config,
        &contender.tally,
    )
    .await;
    contender.last_load = Instant::now();
    let cpu = (cpu_seconds(contender.sut.pid()).unwrap_or(0.0) - cpu_before) / result.elapsed_s;
    // redline queues what it accepted: the step only counts as sustained if the queue did
    // not pile up (it must be back under a quarter of its capacity right after the step).
    let mut backlog = String::new();
    let mut sustained = true;
    if let Some(web) = contender.sut.web {
        match prometheus(web).await {
            Ok(m) => {
                let depth = metric(&m, "redline_ingest_queue_items");
                let capacity = metric(&m, "redline_ingest_queue_capacity").max(1.0);
                sustained = depth <= capacity / 4.0;
                backlog = format!(" queue {:.0}/{:.0}", depth, capacity);
                wait_for_empty_queue(web, Duration::from_secs(15)).await;
                if options.forward {
                    // Forwarding must keep up too: what it dropped is lost.
                    let accepted = result.accepted_spans_per_s() * result.elapsed_s;
                    let dropped = forward_dropped(web).await - forward_dropped_before;
                    sustained &= dropped <= accepted / 100.0;
                    backlog.push_str(&format!(" forward dropped {dropped:.0}"));
                    wait_for_forwarded(web, Duration::from_secs(15)).await;
                }
            }
            Err(e) => {
                sustained = false;
                backlog = format!(" /metrics unreadable ({e})");
            }
        }
    } else {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pass = result.loss_fraction() < 0.01 && sustained;
    let rss_now = rss(contender.sut.pid()).map_or(0.0, |r| r.rss);
    println!(
        "  {:8} {:>9.0} spans/s offered: {:>9.0} accepted/s, lost {:5.2} % (unavailable {}, failed {}, overrun {}), partial-rejected {}, latency p50 {:.1} ms p99 {:.1} ms, SUT cpu {:.0} %, RSS {:.0} MiB, generator cpu {:.0} %{} → {}",
        contender.sut.name,
        rate,
        result.accepted_spans_per_s(),
        result.loss_fraction() * 100.0,
        result.unavailable,
        result.failed,
        result.overrun,
        result.partial_rejected,
        result.latency_p50_ms,
        result.latency_p99_ms,
        cpu * 100.0,
        rss_now,
        result.generator_cpu_pct,
        backlog,
        if pass { "pass" } else { "FAIL" }
    );
    Ok(pass)
}

/// Spans redline's forwarding has dropped since it started.
async fn forward_dropped(web: std::net::SocketAddr) -> f64 {
    prometheus(web).await.map_or(0.0, |m| {
        m.iter()
            .filter(|(name, _)| name.starts_with("redline_forward_items_dropped_total"))
            .map(|(_, v)| v)
            .sum()
    })
}

/// Waits (at most `deadline`) until redline's forwarding queue is empty.
async fn wait_for_forwarded(web: std::net::SocketAddr, deadline: Duration) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let waiting: f64 = prometheus(web).await.map_or(0.0, |m| {
            m.iter()
                .filter(|(name, _)| name.starts_with("redline_forward_queue_bytes"))
                .map(|(_, v)| v)
                .sum()
        });
        if waiting == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Closed-loop load for `full_speed_secs`: (spans acknowledged per second, refused per second).
async fn full_speed(
    contender: &mut Contender,
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    options: &LadderOptions,
) -> (f64, f64) {
    let before = contender.tally.snapshot();
    let started = Instant::now();
    let config = ClosedLoop {
        parallel: options.max_in_flight,
        until: Some(started + Duration::from_secs_f64(options.full_speed_secs)),
        retry_unavailable: false,
        api_key: None,
    };
    let sent = send_closed(
        &contender.channels,
        |_| {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            let payload = &payloads[(n % payloads.len() as u64) as usize];
            Some((fresh_ids(payload, n), payload.spans()))
        },
        &config,
        &contender.tally,
    )
    .await;
    contender.last_load = Instant::now();
    let secs = started.elapsed().as_secs_f64();
    let after = contender.tally.snapshot();
    let acknowledged = (after.acknowledged - before.acknowledged) as f64 / secs;
    let refused = (after.refused - before.refused) as f64 / secs;
    let other = (after.failed + after.unknown + after.rejected)
        - (before.failed + before.unknown + before.rejected);
    println!(
        "  {:8} full speed ({} in flight, closed loop, {secs:.0} s, {} requests): {acknowledged:.0} spans/s acknowledged, {refused:.0} spans/s refused, {other} spans failed/unknown/rejected; RSS {:.0} MiB",
        contender.sut.name,
        options.max_in_flight,
        sent.requests,
        rss(contender.sut.pid()).map_or(0.0, |r| r.rss),
    );
    (acknowledged, refused)
}

pub async fn ingest(options: &LadderOptions) -> Result<()> {
    println!(
        "\n== ingest: 512-span batches of HTTP server spans over OTLP/gRPC, {} % errors ==",
        options.error_percent
    );
    let payloads = Arc::new(trace_payloads_for(64, 42, "shop", options.error_percent));
    let mean_bytes =
        payloads.iter().map(|p| p.bytes.len()).sum::<usize>() as f64 / payloads.len() as f64;
    println!(
        "payloads: {} batches × {SPANS_PER_BATCH} spans, {:.0} bytes per batch ({:.0} B/span), {} % errors (5xx, status ERROR), fresh random trace ids per sent batch",
        payloads.len(),
        mean_bytes,
        mean_bytes / SPANS_PER_BATCH as f64,
        options.error_percent
    );
    println!(
        "generator: open loop, {} connections, at most {} requests in flight, {} s per step; a step passes with < 1 % of batches lost",
        options.connections, options.max_in_flight, options.step_secs
    );
    let rotel = rotel_binary();
    if rotel.is_none() {
        println!("rotel-agent not found (pip install rotel, or set ROTEL_AGENT): peer skipped");
    }
    let sequence = Arc::new(AtomicU64::new(0));
    let mut decode = Vec::new();
    let mut figures: HashMap<&'static str, Figures> = HashMap::new();
    let mut start_rate = options.start_rate;
    let mut skipped_rounds = 0;
    for round in 1..=options.rounds {
        println!("-- round {round}/{}", options.rounds);
        let bound = decode_bound(&payloads, Duration::from_secs(2));
        println!("  decode-only bound: {bound:.0} spans/s (prost decode + drop, one core)");
        decode.push(bound);
        let mut contenders = Vec::new();
        // Forwarding: both contenders send to one blackhole upstream, alive for the round.
        let upstream = match (&rotel, options.forward) {
            (Some(binary), true) => Some(start_rotel_upstream(binary)?),
            (None, true) => return Err("the forwarding mode needs rotel-agent".into()),
            _ => None,
        };
        let endpoint = upstream.as_ref().map(|u| format!("http://{}", u.grpc));
        let redline_args: Vec<&str> = match &endpoint {
            Some(endpoint) => vec![
                "--forward-otlp-endpoint",
                endpoint,
                "--forward-otlp-protocol",
                "grpc",
            ],
            None => Vec::new(),
        };
        contenders
            .push(Contender::connect(start_redline(&redline_args)?, options.connections).await?);
        if let Some(binary) = baseline_binary() {
            let sut = start_redline_binary(&binary, "baseline", &redline_args)?;
            contenders.push(Contender::connect(sut, options.connections).await?);
        }
        if let Some(binary) = &rotel {
            let sut = match &upstream {
                Some(upstream) => start_rotel_forwarding(binary, upstream.grpc)?,
                None => start_rotel(binary)?,
            };
            contenders.push(Contender::connect(sut, options.connections).await?);
        }
        let pids: Vec<u32> = contenders.iter().map(|c| c.sut.pid()).collect();
        let sampler = RssSampler::start(&pids, Duration::from_millis(100));
        // Check each with the generated client first (one typed export), then warm up.
        for c in &mut contenders {
            let mut client = TraceServiceClient::new(c.channels[0].clone());
            let request = ExportTraceServiceRequest::decode(&payloads[0].bytes[..])?;
            let response = client.export(request).await?.into_inner();
            let rejected = response
                .partial_success
                .map_or(0, |p| p.rejected_spans.max(0) as u64);
            c.tally
                .record(payloads[0].spans(), Fate::Acknowledged { rejected });
            if rejected > 0 {
                return Err(format!("{} rejected spans of a valid batch", c.sut.name).into());
            }
            let warm = LoadConfig {
                spans_per_s: 10_000.0,
                duration: Duration::from_secs(1),
                max_in_flight: options.max_in_flight,
            };
            run_load_counted(&c.channels, &payloads, &sequence, &warm, &c.tally).await;
        }
        // A geometric ladder of arrival rates; at each rate the contenders take turns
        // (A B A B …) until each has failed a step.
        let mut rate = start_rate;
        while contenders.iter().any(|c| !c.done) && rate < 5_000_000.0 {
            for c in contenders.iter_mut().filter(|c| !c.done) {
                if step(c, &payloads, &sequence, rate, options).await? {
                    c.best = rate;
                } else {
                    c.done = true;
                }
            }
            rate *= 1.2;
        }
        if options.full_speed_secs > 0.0 {
            for c in &mut contenders {
                let rate = full_speed(c, &payloads, &sequence, options).await;
                figures.entry(c.sut.name).or_default().full_speed.push(rate);
            }
        }
        // A contender that failed the round's first rung has no rate: the start was too high
        // for the machine at that moment (it is shared). Such a round's rates are left out of
        // every contender's median, so the medians stay side by side.
        let rates_valid = contenders.iter().all(|c| c.best > 0.0);
        if !rates_valid {
            println!(
                "  a contender failed the first rung ({start_rate:.0} spans/s): this round's rates are left out of the medians"
            );
            skipped_rounds += 1;
        }
        // Memory after the load: each contender is read `after_secs` after its own last step.
        contenders.sort_by_key(|c| c.last_load);
        for c in &mut contenders {
            let entry = figures.entry(c.sut.name).or_default();
            if rates_valid {
                entry.best.push(c.best);
            }
            let after = if options.after_secs > 0.0 {
                let at = c.last_load + Duration::from_secs_f64(options.after_secs);
                tokio::time::sleep_until(at.into()).await;
                rss(c.sut.pid()).map_or(f64::NAN, |r| r.rss)
            } else {
                f64::NAN
            };
            let now = rss(c.sut.pid()).unwrap_or_default();
            let peak = now.hwm.max(sampler.peak(c.sut.pid()));
            entry.peak_mib.push(peak);
            entry.after_mib.push(after);
            println!(
                "  {}: highest rate with < 1 % lost: {:.0} spans/s; peak RSS {peak:.1} MiB (sampled max {:.1}); RSS {:.0} s after its load stopped: {after:.1} MiB (anon {:.1}, file {:.1})",
                c.sut.name,
                c.best,
                sampler.peak(c.sut.pid()),
                options.after_secs,
                now.anon,
                now.file,
            );
        }
        drop(sampler);
        for c in &mut contenders {
            if let Some(web) = c.sut.web {
                let (db, wal) = database_mib(c.sut.data_dir());
                println!("  {} database {db:.1} MiB + WAL {wal:.1} MiB", c.sut.name);
                let entry = figures.entry(c.sut.name).or_default();
                let sent = c.tally.snapshot();
                entry.sent = entry.sent + sent;
                match exactness(web, "1h", sent).await {
                    Ok(check) => {
                        print!("  {} ", c.sut.name);
                        check.print("");
                        entry.counted += check.counted;
                        entry.inexact_rounds += usize::from(!check.exact());
                    }
                    Err(e) => {
                        println!("  {}: exactness NOT CHECKED: {e}", c.sut.name);
                        entry.inexact_rounds += 1;
                    }
                }
                print_loss_counters(web, "    ").await;
                if !c.sut.alive() {
                    let status = c.sut.exit_status().unwrap_or_default();
                    println!("  {} DIED during the round ({status})", c.sut.name);
                }
            }
            c.sut.stop();
        }
        // Later rounds start a little below the slower contender's result, to save time.
        let slowest = contenders
            .iter()
            .map(|c| c.best)
            .fold(f64::INFINITY, f64::min);
        if slowest.is_finite() && slowest > 0.0 {
            start_rate = (slowest * 0.6).max(5_000.0);
        } else {
            start_rate = (start_rate * 0.5).max(5_000.0);
        }
    }
    summary(options, &mut decode, &mut figures, skipped_rounds);
    Ok(())
}

fn summary(
    options: &LadderOptions,
    decode: &mut [f64],
    figures: &mut HashMap<&'static str, Figures>,
    skipped_rounds: usize,
) {
    let storm = options.error_percent >= 50;
    let decode_median = median(decode);
    println!(
        "\n== ingest summary ({} % errors, medians of {} rounds{}) ==",
        options.error_percent,
        options.rounds,
        if skipped_rounds > 0 {
            format!(
                "; rates of {} round(s) left out: a contender failed the first rung",
                skipped_rounds
            )
        } else {
            String::new()
        }
    );
    println!("decode-only bound:  {decode_median:>8.0} spans/s");
    let full_speed = |f: &mut Figures| {
        let mut acknowledged: Vec<f64> = f.full_speed.iter().map(|r| r.0).collect();
        let mut refused: Vec<f64> = f.full_speed.iter().map(|r| r.1).collect();
        (median(&mut acknowledged), median(&mut refused))
    };
    let (redline, redline_full) = match figures.get_mut("redline") {
        Some(f) => (median(&mut f.best), full_speed(f).0),
        None => (f64::NAN, f64::NAN),
    };
    for (name, label) in [
        ("redline", "redline:"),
        ("baseline", "baseline build:"),
        (
            "rotel",
            if options.forward {
                "rotel (forwarding):"
            } else {
                "rotel (blackhole):"
            },
        ),
    ] {
        let Some(f) = figures.get_mut(name) else {
            continue;
        };
        let best = median(&mut f.best);
        let (acknowledged, refused) = full_speed(f);
        let (ratio, full_ratio) = (redline / best, redline_full / acknowledged);
        let target = match name {
            "rotel" => format!(
                "; redline/rotel = {ratio:.2} (target ≥ {})",
                if storm { "1.0" } else { "1.5" }
            ),
            "baseline" => format!("; redline/baseline = {ratio:.2} (target ≥ 1: no regression)"),
            _ => " (target ≥ 40 %)".to_string(),
        };
        println!(
            "{label:19} {best:>8.0} spans/s, highest rate with < 1 % lost = {:.1} % of the decode-only bound{target}",
            best / decode_median * 100.0,
        );
        if options.full_speed_secs > 0.0 {
            println!(
                "{:19} full speed: {acknowledged:.0} spans/s acknowledged, {refused:.0} refused{}",
                "",
                if name == "redline" {
                    String::new()
                } else {
                    format!(" (redline/{name} = {full_ratio:.2})")
                }
            );
        }
        println!(
            "{:19} peak RSS {:.1} MiB{}; RSS {:.0} s after its load stopped {:.1} MiB",
            "",
            median(&mut f.peak_mib),
            if name == "redline" && storm {
                " (target ≤ 256 MiB)"
            } else {
                ""
            },
            options.after_secs,
            median(&mut f.after_mib),
        );
        if name != "rotel" {
            let pct = f.counted as f64 / f.sent.acknowledged.max(1) as f64 * 100.0;
            println!(
                "{:19} counted {} of {} acknowledged ({pct:.3} %) over all rounds{} — {}",
                "",
                f.counted,
                f.sent.acknowledged,
                if name == "redline" {
                    " (target 100 %)"
                } else {
                    ""
                },
                if f.inexact_rounds == 0 {
                    "exact in every round".to_string()
                } else {
                    format!(
                        "NOT EXACT in {} of {} rounds",
                        f.inexact_rounds, options.rounds
                    )
                }
            );
        }
    }
    println!("(rates are on a ×1.2 ladder: a result means the next rung up failed)");
}
