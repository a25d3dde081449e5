//! Overload: the weighted mix at a base rate, then at 10× that rate (open model), against the
//! `serve` defaults (adaptive concurrency limit) and, for comparison, a fixed limit, both
//! servers up at once and their base and overload phases interleaved over `--rounds`:
//! admitted p99 versus the unloaded p99 of the same round, shed responses, and any other 5xx,
//! with the server's CPU, the time other processes and the hypervisor took from its core, and
//! the arrivals each of the limiter's rules shed in each phase. Then the rejection cost: the
//! 10× rate against a server that sheds every arrival, for the CPU time of one 503 and so the
//! most arrivals one CPU can turn away.

use crate::Options;
use crate::host::{self, median};
use crate::servers::{BenchError, Server, load, spawn_server};
use example_api::loadgen::Report;
use std::collections::BTreeMap;
use std::time::Duration;

pub async fn overload(
    o: &Options,
    server_cpu: Option<usize>,
    sink: &str,
    out: &mut String,
) -> Result<(), BenchError> {
    // 2. Overload: the serve defaults (adaptive limit) against a fixed limit, both servers up at
    // once and their phases interleaved round by round, so that a noisy spell of the shared
    // machine falls on both and on base and overload phases alike.
    let fixed = o.max_concurrency.to_string();
    let configs: [(String, Vec<&str>); 2] = [
        ("default (adaptive)".to_string(), vec![]),
        (
            format!("fixed {fixed}"),
            vec!["--max-concurrency", fixed.as_str(), "--fixed-concurrency"],
        ),
    ];
    out.push_str(&format!(
        "## Overload: weighted mix, base {:.0} req/s then 10×, {} s per phase, {} interleaved rounds\n\n\
         | limit | round | load | offered req/s | completed | admitted | shed (429+503) | other 5xx | client errors | admitted p50 ms | admitted p99 ms | server CPU | others on its core | steal | client CPU | shed by rule |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        o.base_rate, o.secs, o.rounds
    ));
    let mut servers = Vec::new();
    for (i, (_, args)) in configs.iter().enumerate() {
        let srv = spawn_server(
            &o.exe,
            &o.dir.join(format!("overload-{i}.db")),
            Some(sink),
            args,
            server_cpu,
            &[],
        )
        .await?;
        load(&srv.url, o.base_rate, 3, None).await?; // warm-up
        servers.push(srv);
    }
    let mut pairs: Vec<Vec<(Phase, Phase)>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..o.rounds {
        for (srv, runs) in servers.iter().zip(&mut pairs) {
            let base = load_phase(srv, server_cpu, o.base_rate, o.secs).await?;
            let over = load_phase(srv, server_cpu, o.base_rate * 10.0, o.secs).await?;
            runs.push((base, over));
        }
    }
    drop(servers);
    let mut verdicts = String::new();
    for ((label, _), runs) in configs.iter().zip(&pairs) {
        for (round, (base, over)) in runs.iter().enumerate() {
            for (name, phase) in [("base", base), ("10×", over)] {
                out.push_str(&overload_row(label, round + 1, name, phase));
            }
        }
        let ratios: Vec<f64> = runs
            .iter()
            .map(|(base, over)| admitted_p99(&over.report) / admitted_p99(&base.report).max(1e-9))
            .collect();
        let median_ratio = median(&mut ratios.clone());
        // The same comparison over every round's requests at once: less at the mercy of one
        // round's noise than any single ratio.
        let pooled = |pick: fn(&(Phase, Phase)) -> &Phase| {
            let mut all = hdrhistogram::Histogram::new_from(&runs[0].0.report.admitted);
            for run in runs {
                let _ = all.add(&pick(run).report.admitted);
            }
            all.value_at_quantile(0.99) as f64 / 1000.0
        };
        let (pooled_base, pooled_over) = (pooled(|r| &r.0), pooled(|r| &r.1));
        let listed = ratios
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", ");
        verdicts.push_str(&format!(
            "Limit {label}: admitted p99 under 10× overload over the unloaded p99 of the same round: \
             {listed}; median **{median_ratio:.2}×** (target ≤ 2×). Pooled over the rounds: \
             {pooled_over:.2} ms against {pooled_base:.2} ms, **{:.2}×**.\n",
            pooled_over / pooled_base.max(1e-9)
        ));
        if let Some((base, over)) = runs
            .iter()
            .zip(&ratios)
            .min_by(|(_, a), (_, b)| {
                (**a - median_ratio)
                    .abs()
                    .total_cmp(&(**b - median_ratio).abs())
            })
            .map(|(run, _)| run)
        {
            verdicts.push_str(&format!(
                "Admitted p99 by endpoint in the median round, at base: {}; at 10×: {}\n\n",
                slowest_endpoints(&base.report),
                slowest_endpoints(&over.report)
            ));
        }
    }
    out.push('\n');
    out.push_str(&verdicts);
    rejection_cost(o, server_cpu, sink, out).await
}

fn admitted_p99(r: &Report) -> f64 {
    r.admitted.value_at_quantile(0.99) as f64 / 1000.0
}

/// One row of the overload table.
fn overload_row(label: &str, round: usize, load: &str, phase: &Phase) -> String {
    let r = &phase.report;
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 {
        r.by_status
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| *v)
            .sum()
    };
    let shed = count(&|k| k == "503" || k == "429");
    let other_5xx = count(&|k| k.starts_with('5') && k != "503");
    let client_err = count(&|k| k.parse::<u16>().is_err());
    let percent =
        |share: Option<f64>| share.map_or("–".to_string(), |s| format!("{:.0} %", s * 100.0));
    let by_rule = phase
        .shed_by_rule
        .iter()
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "| {label} | {round} | {load} | {:.0} | {} | {} | {shed} | {other_5xx} | {client_err} | {:.2} | {:.2} | {:.0} % | {} | {} | {:.0} % | {by_rule} |\n",
        r.target_rate,
        r.completed,
        r.admitted.len(),
        r.admitted.value_at_quantile(0.5) as f64 / 1000.0,
        admitted_p99(r),
        phase.cpu * 100.0,
        percent(phase.core.map(|c| c.others)),
        percent(phase.core.map(|c| c.steal)),
        phase.client_cpu * 100.0,
    )
}

/// What the server spent and shed during one load phase.
struct Phase {
    report: Report,
    /// The server's CPU time over the phase, as a share of one CPU's wall time.
    cpu: f64,
    /// Who else used the server's CPU (when it is pinned to one).
    core: Option<CoreShares>,
    /// This process's CPU time (load generator and OTLP sink) as a share of one CPU: near
    /// its CPUs' count, the client itself is late and its lateness counts as latency.
    client_cpu: f64,
    /// Arrivals shed by each of the limiter's rules, as `/admin/state` counts them.
    shed_by_rule: BTreeMap<String, u64>,
}

/// Shares of one CPU's time over a phase that the server did not get: other processes' work
/// and the hypervisor's steal. Either one leaves the server less of the core than its CPU
/// rule assumes, which is what a noisy spell of a shared machine looks like. `/proc/stat`
/// counts in clock ticks, the server's own time is exact: at light load "others" is off by up
/// to some 15 % of the core; steal is exact enough to compare phases.
#[derive(Clone, Copy)]
struct CoreShares {
    others: f64,
    steal: f64,
}

/// Runs a load against `srv` and measures the server's side of it.
async fn load_phase(
    srv: &Server,
    server_cpu: Option<usize>,
    rate: f64,
    secs: u64,
) -> Result<Phase, BenchError> {
    let core_before = server_cpu.and_then(host::core_ticks);
    let (shed_before, cpu_before) = (shed_by_rule(srv).await, srv.cpu_secs());
    let client_before = host::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let report = load(&srv.url, rate, secs, None).await?;
    let cpu = (srv.cpu_secs() - cpu_before) / secs as f64;
    let client_cpu =
        (host::cpu_seconds(std::process::id()).unwrap_or(0.0) - client_before) / secs as f64;
    let core_after = server_cpu.and_then(host::core_ticks);
    let server_jiffies = (cpu * secs as f64 * 100.0).round();
    let core = core_before.zip(core_after).and_then(|(b, a)| {
        let total = a.total.saturating_sub(b.total) as f64;
        (total > 0.0).then(|| CoreShares {
            others: ((a.busy.saturating_sub(b.busy) as f64 - server_jiffies) / total).max(0.0),
            steal: a.steal.saturating_sub(b.steal) as f64 / total,
        })
    });
    let shed_by_rule = shed_by_rule(srv)
        .await
        .into_iter()
        .map(|(rule, n)| {
            let before = shed_before.get(&rule).copied().unwrap_or(0);
            (rule, n.saturating_sub(before))
        })
        .collect();
    Ok(Phase {
        report,
        cpu,
        core,
        client_cpu,
        shed_by_rule,
    })
}

/// The server's shed arrivals so far per rule (empty if its admin endpoint does not answer).
async fn shed_by_rule(srv: &Server) -> BTreeMap<String, u64> {
    let state: Option<serde_json::Value> = async {
        reqwest::get(format!("{}/admin/state", srv.admin))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    state
        .as_ref()
        .and_then(|s| s["shed"]["rejected"].as_object())
        .map(|rules| {
            rules
                .iter()
                .map(|(rule, n)| (rule.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// What shedding the whole 10× load costs: a server whose only permit is held (a POST whose
/// body never comes, so its handler waits) answers every arrival with 503, and its CPU time per
/// request is the price of a rejection, whose inverse is the most arrivals one CPU can turn
/// away. Once the overload nears that rate, rejecting alone saturates the server and arrivals
/// wait in the socket backlog before any limit sees them: shedding has to move in front of the
/// process (a proxy's connection or rate limit).
async fn rejection_cost(
    o: &Options,
    server_cpu: Option<usize>,
    sink: &str,
    out: &mut String,
) -> Result<(), BenchError> {
    use tokio::io::AsyncWriteExt;
    let srv = spawn_server(
        &o.exe,
        &o.dir.join("rejection.db"),
        Some(sink),
        &["--max-concurrency", "1", "--fixed-concurrency"],
        server_cpu,
        &[],
    )
    .await?;
    let mut holder = tokio::net::TcpStream::connect(srv.url.trim_start_matches("http://")).await?;
    holder
        .write_all(
            b"POST /v1/products HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n",
        )
        .await?;
    let rate = o.base_rate * 10.0;
    // Until the held request has its permit, some arrivals are still admitted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = load(&srv.url, 50.0, 1, None).await?;
        if probe.by_status.get("503") == Some(&probe.completed)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    let Phase { report: r, cpu, .. } = load_phase(&srv, server_cpu, rate, o.secs).await?;
    drop(holder);
    drop(srv);
    let shed = r.by_status.get("503").copied().unwrap_or(0);
    let micros = cpu * o.secs as f64 / r.completed.max(1) as f64 * 1e6;
    out.push_str(&format!(
        "\n## Rejection cost: every arrival shed, {rate:.0} req/s for {} s\n\n\
         {shed} of {} responses were 503. Server CPU **{:.0} %** of a CPU, **{micros:.1} µs per rejection**: \
         one CPU turns away at most about {:.0} req/s, so an overload nearing that rate must be shed in front \
         of the process.\n",
        o.secs,
        r.completed,
        cpu * 100.0,
        1e6 / micros.max(1e-3),
    ));
    Ok(())
}

/// The endpoints' admitted p99s, slowest first (`GET /v1/stats 12.3 ms, …`): which route a
/// tail comes from.
fn slowest_endpoints(r: &Report) -> String {
    let mut p99s: Vec<(f64, &str)> = r
        .admitted_by_endpoint
        .iter()
        .map(|(k, h)| (h.value_at_quantile(0.99) as f64 / 1000.0, k.as_str()))
        .collect();
    p99s.sort_by(|a, b| b.0.total_cmp(&a.0));
    p99s.iter()
        .map(|(ms, k)| format!("{k} {ms:.2} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}
