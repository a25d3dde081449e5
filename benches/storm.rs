//! redline under storms and hostile input (issue 13), recorded in docs/PERFORMANCE.md. The
//! error-storm throughput comparison with rotel-agent is `cargo bench --bench ingest -- ingest
//! --errors 50` (`benches/ingest.rs`).
//!
//! `cargo bench --bench storm -- <mode> [options]`, modes:
//! - `hostile` — every hostile OTLP/HTTP case of `shared/hostile.rs` sent once in protobuf and
//!   once in JSON (explicit histograms whose counts do not match their bounds, the issue's
//!   two-point layout change, exponential offsets −2³¹ and 2³¹−1, `min > max`, NaN/Inf, a
//!   1e308 s bound, 1.7e308 gauges, 1 MiB attribute values and service names, spans ending in
//!   2500 and 1971). After each case redline must still run with no new "panicked" on stderr,
//!   acknowledge a normal export, drain its ingest queue within 5 s and answer the reads of the
//!   hostile services' data (status < 500) within 1 s; a case that breaks it is named and
//!   redline restarted, so one run lists every case that breaks it. Checks issue 13's "hostile
//!   points" target: every case answered 200 (with `partial_success`) or 400, no case broke
//!   redline, and on the last redline every page and API read answered within 1 s, `/readyz`
//!   200, no panic, RED counting every acknowledged span.
//! - `soak`    — one redline (release build, pinned to core 1, temporary data directory,
//!   retention shortened so it acts within the run) for `--minutes` (30): normal traffic the
//!   whole time (open loop, `--rate` 20k spans/s, `--errors` 2 % errors, service `shop`,
//!   payloads regenerated every report so timestamps stay current); in the middle a
//!   `--storm-secs` (120) error storm of service `checkout` at full speed (closed loop,
//!   `--storm-in-flight` 8, `--storm-errors` 50 % errors, random trace ids, no retries); 30 s
//!   after it a flood of `--flood-routes` (1,000,000) distinct `http.route` values (closed loop,
//!   retried on UNAVAILABLE); and one hostile case every `--hostile-every-secs` (3) over
//!   OTLP/HTTP, alternating protobuf and JSON. Every `--report-secs` (60) it prints RSS, the
//!   database file size (+WAL), spans acknowledged and refused so far, `/readyz`, and whether
//!   `/healthz`, the overview page and `/api/v1/services` answer within 1 s. At the end it
//!   checks: normal traffic ingested (< 1 % of its batches lost in reports without a storm or
//!   flood: RED keeps up with 20k spans/s, so refusing it means ingest broke); RSS flat (median
//!   VmRSS of the last quarter ≤ 1.25 × the first quarter's + 16 MiB); the database within
//!   retention (no 10 s RED row or trace older than its retention + 2 min, none dated more
//!   than a day ahead, and database + WAL grown by ≤ 10 % + 8 MiB over the last quarter); no
//!   panic (alive, no "panicked" on stderr); every probe answered; every hostile request
//!   answered 200, 400 or 503; RED exact for acknowledged spans. Exits non-zero when a check
//!   fails; stops early (and fails) if redline dies. `--storm-secs 0`, `--flood-routes 0` and
//!   `--hostile-every-secs 0` leave a part out (to see one part's effect on its own). The disk
//!   is shared: when database + WAL pass `--max-db-mib` (2048) redline is killed and the run
//!   stops (a failed check).
//!
//! Soak retention: `--retention-10s` (default a sixth of the run, at least 1 min: 5m for 30
//! minutes) and `--trace-retention` (a third, at least 1 min: 10m). The spans dated 2500 and
//! 1971 are not sent in the last trace retention + 2 min, so that any stored trace dated
//! outside the window is one retention failed to remove.
//! Generator options of both modes: `--in-flight N` (8) and `--connections N` (2).
//!
//! `REDLINE_BIN` runs another build. Everything listens on 127.0.0.1 only; the benchmark pins
//! itself (the load generator) to core 0 and redline to core 1 with `taskset`; redline is
//! stopped when the benchmark ends, on error and on panic (PR_SET_PDEATHSIG if it dies).

#[allow(dead_code)]
#[path = "shared/grpc_load.rs"]
mod grpc_load;
#[allow(dead_code)]
#[path = "shared/host.rs"]
mod host;
#[allow(dead_code)]
#[path = "shared/hostile.rs"]
mod hostile;
#[path = "storm/hostile_mode.rs"]
mod hostile_mode;
#[allow(dead_code)]
#[path = "shared/payload.rs"]
mod payload;
#[allow(dead_code)]
#[path = "shared/probe.rs"]
mod probe;
#[allow(dead_code)]
#[path = "shared/procs.rs"]
mod procs;
#[path = "storm/soak.rs"]
mod soak;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grpc_load::{ClosedLoop, Tally, connect, send_closed};

use payload::{SPANS_PER_BATCH, trace_payloads};
use probe::timed_get;
use procs::Sut;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

pub struct Options {
    mode: String,
    pub minutes: f64,
    pub rate: f64,
    pub error_percent: u32,
    pub storm_secs: f64,
    pub storm_error_percent: u32,
    pub storm_in_flight: usize,
    pub flood_routes: usize,
    pub hostile_every_secs: f64,
    pub report_secs: f64,
    pub retention_10s: Option<String>,
    pub trace_retention: Option<String>,
    pub max_in_flight: usize,
    pub connections: usize,
    pub max_db_mib: f64,
}

fn options() -> Result<Options> {
    let mut o = Options {
        mode: "soak".into(),
        minutes: 30.0,
        rate: 20_000.0,
        error_percent: payload::NORMAL_ERROR_PERCENT,
        storm_secs: 120.0,
        storm_error_percent: 50,
        storm_in_flight: 8,
        flood_routes: 1_000_000,
        hostile_every_secs: 3.0,
        report_secs: 60.0,
        retention_10s: None,
        trace_retention: None,
        max_in_flight: 8,
        connections: 2,
        max_db_mib: 2048.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // cargo bench passes this through
            "--minutes" => o.minutes = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            "--errors" => o.error_percent = value()?.parse::<u32>()?.min(100),
            "--storm-secs" => o.storm_secs = value()?.parse()?,
            "--storm-errors" => o.storm_error_percent = value()?.parse::<u32>()?.min(100),
            "--storm-in-flight" => o.storm_in_flight = value()?.parse()?,
            "--flood-routes" => o.flood_routes = value()?.parse()?,
            "--hostile-every-secs" => o.hostile_every_secs = value()?.parse()?,
            "--report-secs" => o.report_secs = value()?.parse()?,
            "--retention-10s" => o.retention_10s = Some(value()?),
            "--trace-retention" => o.trace_retention = Some(value()?),
            "--in-flight" => o.max_in_flight = value()?.parse()?,
            "--connections" => o.connections = value()?.parse()?,
            "--max-db-mib" => o.max_db_mib = value()?.parse()?,
            "soak" | "hostile" => o.mode = arg.clone(),
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}").into());
            }
            _ => {}
        }
    }
    if o.minutes <= 0.0 || o.report_secs <= 0.0 || o.hostile_every_secs < 0.0 {
        return Err("--minutes and --report-secs must be positive".into());
    }
    Ok(o)
}

fn main() -> Result<()> {
    let options = options()?;
    procs::pin_generator();
    procs::print_machine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Children are spawned from this (the main) thread only: PR_SET_PDEATHSIG follows the
    // thread that forked them.
    let failed = runtime.block_on(async {
        match options.mode.as_str() {
            "hostile" => hostile_mode::hostile_mode().await,
            _ => soak::soak(&options).await,
        }
    })?;
    if failed.is_empty() {
        println!("\nall checks passed");
        Ok(())
    } else {
        println!("\nFAILED checks: {}", failed.join("; "));
        std::process::exit(1);
    }
}

/// The outcome of one named check, printed as it is made.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    pub fn check(&mut self, name: &str, pass: bool, detail: String) {
        println!(
            "  [{}] {name}: {detail}",
            if pass { "pass" } else { "FAIL" }
        );
        if !pass {
            self.0.push(name.to_string());
        }
    }

    pub fn failed(self) -> Vec<String> {
        self.0
    }
}

/// Whether redline still runs, and the lines of its stderr that report a panic.
pub fn panics(redline: &mut Sut) -> (bool, Vec<String>) {
    let alive = redline.alive();
    let panicked = redline
        .stderr()
        .lines()
        .filter(|l| l.contains("panicked"))
        .map(|l| l.chars().take(240).collect())
        .collect();
    (alive, panicked)
}

/// Sends one 512-span batch of normal traffic over gRPC; true when it was acknowledged whole.
pub async fn normal_export(redline: &Sut, tally: &Arc<Tally>) -> bool {
    let Ok(channels) = connect(redline.grpc, 1).await else {
        return false;
    };
    let payloads = trace_payloads(1, 4242);
    let before = tally.snapshot().acknowledged;
    let config = ClosedLoop {
        parallel: 1,
        until: None,
        retry_unavailable: false,
        api_key: None,
    };
    let mut batch = payloads.first().map(|p| (p.bytes.clone(), p.spans()));
    send_closed(&channels, |_| batch.take(), &config, tally).await;
    tally.snapshot().acknowledged - before == SPANS_PER_BATCH as u64
}

/// GETs each of `paths`; returns the ones not answered (status < 500) within `limit`.
pub async fn slow_or_failing_reads(
    web: SocketAddr,
    paths: &[&str],
    limit: Duration,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut bad = Vec::new();
    for path in paths {
        match timed_get(
            &client,
            &format!("http://{web}{path}"),
            Duration::from_secs(10),
        )
        .await
        {
            Ok((status, secs)) if status < 500 && secs <= limit.as_secs_f64() => {}
            Ok((status, secs)) => bad.push(format!("{path} → {status} in {:.0} ms", secs * 1e3)),
            Err(e) => bad.push(format!("{path} → {e}")),
        }
    }
    bad
}
