//! Telemetry overhead on a cached `GET /v1/products/{id}`: servers with telemetry off, on
//! (every request traced), metrics only and traces sampled (the README's production setting),
//! and optionally an older build's off and on servers, measured side by side and interleaved
//! (the order rotates each round), as medians over the rounds:
//! a. throughput at saturation (closed loop of keep-alive connections; with `--pin` the server
//!    has a CPU to itself, so req/s is its capacity), with the server's CPU per request;
//! b. latency at a fixed arrival rate (open model): p99 and server CPU per request.
//!
//! The sink counts the spans it receives, so dropped spans would show.

use crate::Options;
use crate::host::median;
use crate::servers::{BenchError, Seen, Server, load, ms, saturate, spawn_server};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub async fn telemetry_overhead(
    o: &Options,
    server_cpu: Option<usize>,
    sink: &str,
    seen: &Seen,
    out: &mut String,
) -> Result<(), BenchError> {
    // 1. Telemetry overhead on a cached GET. The concurrency limit is out of the way here.
    let unlimited = ["--max-concurrency", "100000", "--fixed-concurrency"];
    let off = spawn_server(
        &o.exe,
        &o.dir.join("off.db"),
        None,
        &unlimited,
        server_cpu,
        &[],
    )
    .await?;
    let on = spawn_server(
        &o.exe,
        &o.dir.join("on.db"),
        Some(sink),
        &unlimited,
        server_cpu,
        &[],
    )
    .await?;
    // Metrics exported, traces not sampled: splits the cost between the two signals.
    let metrics_only = spawn_server(
        &o.exe,
        &o.dir.join("metrics-only.db"),
        Some(sink),
        &unlimited,
        server_cpu,
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    )
    .await?;
    // Traces sampled as in production (consistent probability sampling, weighted by redline).
    let ratio = o.sample_ratio.to_string();
    let sampled = spawn_server(
        &o.exe,
        &o.dir.join("sampled.db"),
        Some(&format!("{sink}/sampled")),
        &unlimited,
        server_cpu,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.as_str()),
        ],
    )
    .await?;
    let sampled_name = format!("on, traces sampled {}", o.sample_ratio);
    let only = Some(("/v1/products/{id}".to_string(), 100));
    for s in [&off, &on, &metrics_only, &sampled] {
        load(&s.url, o.rate, 3, only.clone()).await?; // warm-up: fills the L1 cache
        saturate(&s.url, o.connections, o.pipeline, 2).await?;
    }
    // An older build for a before/after comparison (`--baseline-exe`); it exports under another
    // path so the sink's span count stays that of this build's "on" server.
    let mut baseline = Vec::new();
    if let Some(exe) = &o.baseline_exe {
        let old_sink = format!("{sink}/baseline");
        for (name, otlp) in [
            ("off, baseline build", None),
            ("on, baseline build", Some(old_sink.as_str())),
        ] {
            let s = spawn_server(
                exe,
                &o.dir.join(format!("baseline-{}.db", baseline.len())),
                otlp,
                // The same limits as this build's servers: only the build differs.
                &unlimited,
                server_cpu,
                &[],
            )
            .await?;
            load(&s.url, o.rate, 3, only.clone()).await?;
            saturate(&s.url, o.connections, o.pipeline, 2).await?;
            baseline.push((name, s));
        }
    }
    let mut servers: Vec<(&str, &Server)> = vec![
        ("off", &off),
        ("on", &on),
        ("metrics only", &metrics_only),
        (&sampled_name, &sampled),
    ];
    servers.extend(baseline.iter().map(|(n, s)| (*n, s)));
    let n = servers.len();

    // 1a. Saturation.
    out.push_str(&format!(
        "## Telemetry on vs off: cached `GET /v1/products/{{id}}` at saturation ({} keep-alive connections, \
         closed loop, {} outstanding per connection), {} s per run\n\n\
         | round | telemetry | req/s | non-200 | server CPU µs/req | server busy |\n|---|---|---|---|---|---|\n",
        o.connections, o.pipeline, o.secs
    ));
    let mut sat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut sat_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut sat_busy: Vec<Vec<f64>> = vec![Vec::new(); n];
    let (spans0, served_on0) = (seen.spans.load(Ordering::Relaxed), 0u64);
    let mut served_on = served_on0;
    for round in 0..o.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let (name, s) = servers[i];
            let c0 = s.cpu_secs();
            let t0 = std::time::Instant::now();
            let (ok, other) = saturate(&s.url, o.connections, o.pipeline, o.secs).await?;
            let secs = t0.elapsed().as_secs_f64();
            let used = s.cpu_secs() - c0;
            let cpu = used / (ok + other).max(1) as f64 * 1e6;
            let rate = (ok + other) as f64 / secs;
            if name == "on" {
                served_on += ok + other;
            }
            // Near 100 % of its core, req/s is the server's capacity; well below, the load
            // generator set the pace and only the CPU per request tells the servers apart.
            let busy = used / secs * 100.0;
            out.push_str(&format!(
                "| {round} | {name} | {rate:.0} | {other} | {cpu:.1} | {busy:.0} % |\n"
            ));
            sat[i].push(rate);
            sat_cpu[i].push(cpu);
            sat_busy[i].push(busy);
        }
    }
    // Let the last batches reach the sink before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let spans = seen.spans.load(Ordering::Relaxed) - spans0;
    // Each round's loss against the "off" run of the same round, then their median: less at
    // the mercy of the machine drifting between rounds than the ratio of two medians.
    let round_losses = |x: usize, rates: &[Vec<f64>]| {
        let mut losses: Vec<f64> = rates[x]
            .iter()
            .zip(&rates[0])
            .map(|(r, off)| (1.0 - r / off.max(1e-9)) * 100.0)
            .collect();
        median(&mut losses)
    };
    let (rl_on, rl_m, rl_s) = (
        round_losses(1, &sat),
        round_losses(2, &sat),
        round_losses(3, &sat),
    );
    // The same over the rounds in which both servers held their core (≥ 90 % busy): there
    // req/s is each one's capacity, whatever the shared machine did to the generator's core.
    let saturated_losses = |x: usize| {
        let mut losses: Vec<f64> = (0..sat[x].len())
            .filter(|&r| sat_busy[x][r] >= 90.0 && sat_busy[0][r] >= 90.0)
            .map(|r| (1.0 - sat[x][r] / sat[0][r].max(1e-9)) * 100.0)
            .collect();
        let rounds = losses.len();
        match rounds {
            0 => "no round saturated both".to_string(),
            _ => format!(
                "{:.1} % over {rounds} saturated rounds",
                median(&mut losses)
            ),
        }
    };
    let (sl_on, sl_m, sl_s) = (
        saturated_losses(1),
        saturated_losses(2),
        saturated_losses(3),
    );
    let rates: Vec<f64> = sat.iter_mut().map(|v| median(v)).collect();
    let cpus: Vec<f64> = sat_cpu.iter_mut().map(|v| median(v)).collect();
    let (r_off, r_on, r_m, r_s) = (rates[0], rates[1], rates[2], rates[3]);
    let (c_off, c_on, c_m, c_s) = (cpus[0], cpus[1], cpus[2], cpus[3]);
    let loss = |r: f64| (1.0 - r / r_off.max(1e-9)) * 100.0;
    // At CPU saturation a core serves 1 / (CPU per request): the capacity lost.
    let capacity_loss = |c: f64| (1.0 - c_off / c.max(1e-9)) * 100.0;
    out.push_str(&format!(
        "\nMedians: **every request traced: {r_on:.0} (on) vs {r_off:.0} (off) req/s → throughput loss {:.1} %** \
         (median of the rounds' losses {rl_on:.1} %; {sl_on}); **traces sampled {}: {r_s:.0} req/s → {:.1} %** \
         ({rl_s:.1} %; {sl_s}); metrics only: {r_m:.0} req/s, {:.1} % ({rl_m:.1} %; {sl_m}). \
         Server CPU per request {c_on:.1} (on), {c_s:.1} (sampled), {c_m:.1} (metrics only) vs {c_off:.1} µs (off): \
         capacity at CPU saturation −{:.1} % (on), −{:.1} % (sampled), −{:.1} % (metrics only). \
         Spans received from the telemetry-on server during these runs: {spans} for {served_on} requests \
         ({:.2} per request; export is asynchronous, so a few may arrive after the count).\n\n",
        loss(r_on),
        o.sample_ratio,
        loss(r_s),
        loss(r_m),
        capacity_loss(c_on),
        capacity_loss(c_s),
        capacity_loss(c_m),
        spans as f64 / served_on.max(1) as f64,
    ));
    if n == 6 {
        out.push_str(&format!(
            "Baseline build (`--baseline-exe`), same runs: {:.0} (on) vs {:.0} (off) req/s → throughput loss **{:.1} %**; server CPU per request {:.1} vs {:.1} µs.\n\n",
            rates[5],
            rates[4],
            (1.0 - rates[5] / rates[4].max(1e-9)) * 100.0,
            cpus[5],
            cpus[4],
        ));
    }
    drop(servers);
    drop(baseline);

    // 1b. Fixed arrival rate.
    out.push_str(&format!(
        "## Telemetry on vs off: cached `GET /v1/products/{{id}}` at {:.0} req/s (open model), {} s per run\n\n\
         | round | telemetry | achieved req/s | p50 ms | p99 ms | server CPU µs/req |\n|---|---|---|---|---|---|\n",
        o.rate, o.secs
    ));
    let mut p99s: [Vec<f64>; 4] = Default::default();
    let mut cpus_fixed: [Vec<f64>; 4] = Default::default();
    let servers = [
        ("off", &off),
        ("on", &on),
        ("metrics only", &metrics_only),
        (sampled_name.as_str(), &sampled),
    ];
    for round in 0..o.rounds {
        for k in 0..4 {
            let i = (k + round) % 4;
            let (name, s) = servers[i];
            let c0 = s.cpu_secs();
            let r = load(&s.url, o.rate, o.secs, only.clone()).await?;
            let cpu = (s.cpu_secs() - c0) / r.completed.max(1) as f64 * 1e6;
            out.push_str(&format!(
                "| {round} | {name} | {:.0} | {:.2} | {:.2} | {cpu:.0} |\n",
                r.achieved_rate(),
                ms(&r, 0.5),
                ms(&r, 0.99),
            ));
            p99s[i].push(ms(&r, 0.99));
            cpus_fixed[i].push(cpu);
        }
    }
    let [p_off, p_on, p_m, p_s] = p99s.map(|mut v| median(&mut v));
    let [f_off, f_on, f_m, f_s] = cpus_fixed.map(|mut v| median(&mut v));
    out.push_str(&format!(
        "\nMedians: **p99 {p_on:.2} (on) vs {p_off:.2} (off) ms → added {:+.2} ms**; sampled {p_s:.2} ms \
         ({:+.2}); metrics only {p_m:.2} ms; server CPU per request {f_on:.0} (on), {f_s:.0} (sampled), \
         {f_m:.0} (metrics only) vs {f_off:.0} µs (off).\n\n",
        p_on - p_off,
        p_s - p_off
    ));
    drop(off);
    drop(on);
    drop(metrics_only);
    drop(sampled);
    out.push_str(&format!(
        "The sink received {} OTLP export requests ({} KiB, {} spans) in all.\n\n",
        seen.requests.load(Ordering::Relaxed),
        seen.bytes.load(Ordering::Relaxed) / 1024,
        seen.spans.load(Ordering::Relaxed),
    ));
    Ok(())
}
