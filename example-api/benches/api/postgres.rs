//! The PostgreSQL mode against the SQLite mode, one endpoint at a time at a fixed arrival rate
//! (open model): a cached `GET /v1/products/{id}` (the product cache answers; the database
//! only fills it) and an uncached list read, `GET /v1/products?limit=20&sort=price&category=N`
//! (a keyset query on every request). Two `example-api serve` processes, one per mode (the
//! PostgreSQL one on a primary and a streaming hot standby started here, reads on the standby),
//! warmed up (and again for a second before each run), then measured interleaved — the order of the modes alternates each round — and
//! compared by the medians of the rounds' p99s. Targets: cached reads unchanged, uncached list
//! p99 within 2× of SQLite's.

use crate::Options;
use crate::host::median;
use crate::servers::{BenchError, Server, load, ms, spawn_server};
use example_api::db::pgcluster::{Replicated, Server as Pg};
use example_api::loadgen::Report;

/// (name, path, largest `{id}`). 100 hot products: a second of warm-up before each run caches
/// them all, and they stay cached for the run (the L1 TTL is 30 s), so the cached run measures
/// hits, not the misses of entries that expired since the previous round.
const ENDPOINTS: [(&str, &str, i64); 2] = [
    ("cached product", "/v1/products/{id}", 100),
    (
        "uncached list",
        "/v1/products?limit=20&sort=price&category={id}",
        20,
    ),
];

pub async fn postgres_vs_sqlite(
    o: &Options,
    server_cpu: Option<usize>,
    out: &mut String,
) -> Result<(), BenchError> {
    let pg = Replicated::start(o.dir.join("postgres"))
        .await
        .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
    let result = measure(o, server_cpu, &pg, out).await;
    pg.stop().await;
    result
}

async fn measure(
    o: &Options,
    server_cpu: Option<usize>,
    pg: &Replicated,
    out: &mut String,
) -> Result<(), BenchError> {
    let (primary, standby) = (pg.cluster().url(Pg::Primary), pg.cluster().url(Pg::Standby));
    let common = ["--max-concurrency", "100000", "--fixed-concurrency"];
    let sqlite = spawn_server(
        &o.exe,
        &o.dir.join("sqlite-mode.db"),
        None,
        &common,
        server_cpu,
        &[],
    )
    .await?;
    let mut pg_args = common.to_vec();
    pg_args.extend(["--database-url", &primary, "--replica-url", &standby]);
    let postgres = spawn_server(
        &o.exe,
        &o.dir.join("unused.db"),
        None,
        &pg_args,
        server_cpu,
        &[],
    )
    .await?;
    let servers: [(&str, &Server); 2] = [("SQLite", &sqlite), ("PostgreSQL", &postgres)];
    // Warm-up: connection pools full, the product cache and the databases' pages warm.
    for (_, server) in servers {
        for (_, path, max) in ENDPOINTS {
            load(&server.url, o.rate, 3, Some((path.to_string(), max))).await?;
        }
    }
    out.push_str(&format!(
        "## PostgreSQL mode vs SQLite mode — {} req/s per endpoint, {} s per run, {} rounds\n\n\
         | round | endpoint | mode | achieved req/s | p50 ms | p99 ms | max ms | 5xx / failures | cache hits |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        o.rate, o.secs, o.rounds
    ));
    // p99 per (endpoint, mode) over the rounds.
    let mut p99s = vec![vec![Vec::new(); servers.len()]; ENDPOINTS.len()];
    for round in 0..o.rounds {
        for (e, (endpoint, path, max)) in ENDPOINTS.iter().enumerate() {
            for k in 0..servers.len() {
                let m = (k + round) % servers.len();
                let (mode, server) = servers[m];
                load(&server.url, o.rate, 1, Some((path.to_string(), *max))).await?;
                let r = load(&server.url, o.rate, o.secs, Some((path.to_string(), *max))).await?;
                out.push_str(&format!(
                    "| {round} | {endpoint} | {mode} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                    r.achieved_rate(),
                    ms(&r, 0.5),
                    ms(&r, 0.99),
                    r.hist.max() as f64 / 1000.0,
                    failures(&r),
                    r.cache_hit_ratio()
                        .map_or("–".to_string(), |h| format!("{:.1} %", h * 100.0)),
                ));
                p99s[e][m].push(ms(&r, 0.99));
            }
        }
    }
    out.push_str("\nMedians of the rounds' p99 (ms):\n\n| endpoint | SQLite | PostgreSQL | PostgreSQL / SQLite |\n|---|---|---|---|\n");
    for (e, (endpoint, _, _)) in ENDPOINTS.iter().enumerate() {
        let s = median(&mut p99s[e][0]);
        let p = median(&mut p99s[e][1]);
        out.push_str(&format!(
            "| {endpoint} | {s:.2} | {p:.2} | {:.2}× |\n",
            p / s.max(1e-9)
        ));
    }
    out.push('\n');
    Ok(())
}

/// 5xx responses and transport failures.
fn failures(r: &Report) -> u64 {
    r.by_status
        .iter()
        .filter(|(s, _)| !s.starts_with('2') && !s.starts_with('3') && !s.starts_with('4'))
        .map(|(_, n)| n)
        .sum()
}
