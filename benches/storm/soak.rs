//! The `soak` mode of `benches/storm.rs` (its module doc says what runs and what is checked):
//! the schedule of normal traffic, error storm, route flood and hostile requests, the
//! per-report figures, and the final checks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::grpc_load::{
    ClosedLoop, Counts, LoadConfig, Tally, connect, run_load_counted, send_closed,
};
use crate::hostile::{self, AnswerLog, Encoding};
use crate::payload::{
    Payload, Rng, SPANS_PER_BATCH, endpoint_batch, fresh_ids, now_ns, trace_payloads_for,
};
use crate::probe::{
    RssSampler, database_mib, exactness, median, metric, print_loss_counters, prometheus, rss,
    timed_get,
};
use crate::procs::{Sut, start_redline};
use crate::{Checks, Options, Result, panics, slow_or_failing_reads};

/// Reads every report checks: liveness, the overview page, the services API.
const PROBES: &[&str] = &["/healthz", "/", "/api/v1/services?since=15m"];
/// Slack on retention checks: retention runs once a minute, and windows have a width.
const RETENTION_SLACK: Duration = Duration::from_secs(120);

/// When things happen, as offsets from the start of the run.
struct Schedule {
    total: Duration,
    storm: (Duration, Duration),
    flood_at: Duration,
    /// Spans dated 2500 and 1971 are sent only before this.
    skewed_clock_until: Duration,
    retention_10s: Duration,
    trace_retention: Duration,
}

impl Schedule {
    fn new(o: &Options) -> Result<Schedule> {
        let total = Duration::from_secs_f64(o.minutes * 60.0);
        let storm = Duration::from_secs_f64(o.storm_secs.max(0.0)).min(total);
        let storm_start = (total - storm) / 2;
        let storm_end = storm_start + storm;
        let flood_at = (storm_end + Duration::from_secs(30))
            .min(total.saturating_sub(Duration::from_secs(10)));
        let fraction = |f: u32| (total / f).max(Duration::from_secs(60));
        let parse = |v: &Option<String>, default: Duration| -> Result<Duration> {
            Ok(match v {
                Some(text) => humantime::parse_duration(text)?,
                None => default,
            })
        };
        let retention_10s = parse(&o.retention_10s, fraction(6))?;
        let trace_retention = parse(&o.trace_retention, fraction(3))?;
        Ok(Schedule {
            total,
            storm: (storm_start, storm_end),
            flood_at,
            skewed_clock_until: total.saturating_sub(trace_retention + RETENTION_SLACK),
            retention_10s,
            trace_retention,
        })
    }
}

/// What the senders acknowledged and were refused, per kind of traffic.
#[derive(Default)]
struct Tallies {
    normal: Arc<Tally>,
    storm: Arc<Tally>,
    flood: Arc<Tally>,
    hostile: Arc<Tally>,
}

impl Tallies {
    fn total(&self) -> Counts {
        self.normal.snapshot()
            + self.storm.snapshot()
            + self.flood.snapshot()
            + self.hostile.snapshot()
    }
}

/// What the run observed besides the tallies, for the final checks.
#[derive(Default)]
struct Observed {
    answers: AnswerLog,
    probe_failures: Vec<String>,
    /// Database + WAL in MiB at each report.
    sizes: Vec<(Duration, f64)>,
    rss_samples: Vec<(f64, crate::probe::Rss)>,
    /// Normal-traffic batches (scheduled, lost) in reports without a storm or flood.
    quiet_batches: (u64, u64),
    /// Database + WAL size (MiB) at which redline was killed, past `--max-db-mib`.
    outgrew_disk: Option<f64>,
}

fn mmss(d: Duration) -> String {
    format!("{:02}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
}

pub async fn soak(o: &Options) -> Result<Vec<String>> {
    let plan = Schedule::new(o)?;
    let r10 = format!("{}s", plan.retention_10s.as_secs());
    let rt = format!("{}s", plan.trace_retention.as_secs());
    println!(
        "\n== soak: {:.1} min; normal {:.0} spans/s ({} % errors); storm {}–{} ({} % errors, {} in flight); flood of {} routes at {}; a hostile case every {} s; --retention-10s {r10} --trace-retention {rt} ==",
        o.minutes,
        o.rate,
        o.error_percent,
        mmss(plan.storm.0),
        mmss(plan.storm.1),
        o.storm_error_percent,
        o.storm_in_flight,
        o.flood_routes,
        mmss(plan.flood_at),
        o.hostile_every_secs,
    );
    let mut redline = start_redline(&["--retention-10s", &r10, "--trace-retention", &rt])?;
    let pid = redline.pid();
    let data_dir = redline.data_dir().to_path_buf();
    let web = redline.web.ok_or("no web address")?;
    let http = redline.http.ok_or("no OTLP/HTTP address")?;
    let normal_channels = connect(redline.grpc, o.connections).await?;
    let burst_channels = connect(redline.grpc, o.connections).await?;
    let client = reqwest::Client::new();
    let tallies = Tallies::default();
    let mut seen = Observed::default();
    let log = &mut seen.answers;
    let sequence = Arc::new(AtomicU64::new(0));
    let mut storm_payloads: Option<Arc<Vec<Payload>>> = None;
    let mut flood_done = false;
    let mut hostile_cursor = 0u64;
    let sampler = RssSampler::start(&[pid], Duration::from_millis(100));
    let started = Instant::now();
    let report = Duration::from_secs_f64(o.report_secs);
    let mut previous = Counts::default();
    while started.elapsed() < plan.total {
        // The report period that holds now (one that overran, under overload, moves the
        // next reports on rather than squeezing them in).
        let tick = (started.elapsed().as_secs_f64() / report.as_secs_f64()) as u32;
        let tick_end = (started + report * (tick + 1)).min(started + plan.total);
        let payloads = Arc::new(trace_payloads_for(
            64,
            u64::from(tick),
            "shop",
            o.error_percent,
        ));
        let normal = async {
            let config = LoadConfig {
                spans_per_s: o.rate,
                duration: tick_end.saturating_duration_since(Instant::now()),
                max_in_flight: o.max_in_flight,
            };
            run_load_counted(
                &normal_channels,
                &payloads,
                &sequence,
                &config,
                &tallies.normal,
            )
            .await
        };
        let bursts = async {
            let mut notes = Vec::new();
            let (storm_from, storm_to) = (started + plan.storm.0, started + plan.storm.1);
            if storm_to > storm_from && storm_from < tick_end && storm_to > Instant::now() {
                tokio::time::sleep_until(storm_from.into()).await;
                let payloads = storm_payloads
                    .get_or_insert_with(|| {
                        Arc::new(trace_payloads_for(
                            64,
                            77,
                            "checkout",
                            o.storm_error_percent,
                        ))
                    })
                    .clone();
                let before = tallies.storm.snapshot();
                let sent = send_closed(
                    &burst_channels,
                    |n| {
                        let payload = &payloads[(n % payloads.len() as u64) as usize];
                        let id = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Some((fresh_ids(payload, id), payload.spans()))
                    },
                    &ClosedLoop {
                        parallel: o.storm_in_flight,
                        until: Some(storm_to.min(tick_end)),
                        retry_unavailable: false,
                        api_key: None,
                    },
                    &tallies.storm,
                )
                .await;
                let after = tallies.storm.snapshot();
                notes.push(format!(
                    "storm: {} requests, {} spans acknowledged, {} refused",
                    sent.requests,
                    after.acknowledged - before.acknowledged,
                    after.refused - before.refused
                ));
            }
            let flood_from = started + plan.flood_at;
            if !flood_done && o.flood_routes > 0 && flood_from < tick_end {
                flood_done = true;
                tokio::time::sleep_until(flood_from.into()).await;
                let flood_started = Instant::now();
                let before = prometheus(web).await.unwrap_or_default();
                let batches = o.flood_routes.div_ceil(SPANS_PER_BATCH) as u64;
                let mut rng = Rng(1234);
                let sent = send_closed(
                    &burst_channels,
                    |b| {
                        (b < batches).then(|| {
                            let first = 100_000 + b as usize * SPANS_PER_BATCH;
                            (
                                endpoint_batch(&mut rng, first, SPANS_PER_BATCH, 0),
                                SPANS_PER_BATCH as u64,
                            )
                        })
                    },
                    &ClosedLoop {
                        parallel: 4,
                        // Retries wait for a redline that refuses; the run's end bounds them.
                        until: Some(started + plan.total),
                        retry_unavailable: true,
                        api_key: None,
                    },
                    &tallies.flood,
                )
                .await;
                let m = prometheus(web).await.unwrap_or_default();
                let key = "redline_overflow_total{kind=\"endpoints\"}";
                notes.push(format!(
                    "flood: {} of {} routes sent in {:.1} s ({} UNAVAILABLE retried, {} batches not acknowledged); endpoints tracked {}, overflow +{}",
                    sent.requests * SPANS_PER_BATCH as u64,
                    batches * SPANS_PER_BATCH as u64,
                    flood_started.elapsed().as_secs_f64(),
                    sent.retried,
                    sent.failed,
                    metric(&m, "redline_series{kind=\"endpoints\"}"),
                    metric(&m, key) - metric(&before, key),
                ));
            }
            notes
        };
        let hostile_requests = async {
            let every = Duration::from_secs_f64(o.hostile_every_secs);
            let mut next = Instant::now();
            while o.hostile_every_secs > 0.0 && next < tick_end {
                tokio::time::sleep_until(next.into()).await;
                let encoding = if hostile_cursor.is_multiple_of(2) {
                    Encoding::Protobuf
                } else {
                    Encoding::Json
                };
                let skewed_ok = started.elapsed() < plan.skewed_clock_until;
                let cases: Vec<_> = hostile::cases(encoding, hostile_cursor)
                    .into_iter()
                    .filter(|c| skewed_ok || !c.skewed_clock)
                    .collect();
                let case = &cases[(hostile_cursor / 2) as usize % cases.len()];
                for request in &case.requests {
                    let answer =
                        hostile::send(&client, http, request, encoding, &tallies.hostile).await;
                    log.record(case.name, encoding, answer);
                }
                hostile_cursor += 1;
                next += every;
            }
        };
        // The disk is shared: a redline whose database outgrows the bound is killed, which
        // ends the run (its data directory is deleted when the benchmark stops it).
        let disk_guard = async {
            while Instant::now() < tick_end {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (db, wal) = database_mib(&data_dir);
                if db + wal > o.max_db_mib {
                    // SAFETY: signalling our own child by pid.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                    return Some(db + wal);
                }
            }
            None
        };
        let (load, notes, (), outgrown) =
            tokio::join!(normal, bursts, hostile_requests, disk_guard);
        // The report.
        if notes.is_empty() {
            seen.quiet_batches.0 += load.scheduled;
            seen.quiet_batches.1 += load.lost();
        }
        let now = rss(pid).unwrap_or_default();
        let (db, wal) = database_mib(redline.data_dir());
        seen.sizes.push((started.elapsed(), db + wal));
        let total = tallies.total();
        let ready = timed_get(
            &client,
            &format!("http://{web}/readyz"),
            Duration::from_secs(5),
        )
        .await;
        let bad = slow_or_failing_reads(web, PROBES, Duration::from_secs(1)).await;
        for b in &bad {
            seen.probe_failures
                .push(format!("{}: {b}", mmss(started.elapsed())));
        }
        println!(
            "[{}] RSS {:.1} MiB (anon {:.1}, file {:.1}; peak {:.1}) | db {db:.1} MiB + wal {wal:.1} MiB | spans acknowledged {} (+{}), refused {} (+{}), rejected {}, unknown {} | normal traffic lost {:.2} % | readyz {} | probes {}",
            mmss(started.elapsed()),
            now.rss,
            now.anon,
            now.file,
            now.hwm,
            total.acknowledged,
            total.acknowledged - previous.acknowledged,
            total.refused,
            total.refused - previous.refused,
            total.rejected,
            total.unknown,
            load.loss_fraction() * 100.0,
            match &ready {
                Ok((status, _)) => status.to_string(),
                Err(e) => e.clone(),
            },
            if bad.is_empty() {
                "ok within 1 s".to_string()
            } else {
                format!("FAILED {bad:?}")
            },
        );
        for note in notes {
            println!("        {note}");
        }
        previous = total;
        if let Some(size) = outgrown {
            println!(
                "database + WAL reached {size:.0} MiB > --max-db-mib {:.0}: redline KILLED to protect the disk; the soak stops here",
                o.max_db_mib
            );
            seen.outgrew_disk = Some(size);
        }
        if !redline.alive() {
            println!(
                "redline DIED at {} ({}): the soak stops here",
                mmss(started.elapsed()),
                redline.exit_status().unwrap_or_default()
            );
            break;
        }
    }
    seen.rss_samples = sampler.samples(pid);
    drop(sampler);
    println!(
        "\n== soak end: load stopped at {} ==",
        mmss(started.elapsed())
    );
    final_checks(o, &plan, &mut redline, web, &tallies, &seen).await
}

async fn final_checks(
    o: &Options,
    plan: &Schedule,
    redline: &mut Sut,
    web: SocketAddr,
    tallies: &Tallies,
    seen: &Observed,
) -> Result<Vec<String>> {
    let mut checks = Checks::default();
    for (name, tally) in [
        ("normal", &tallies.normal),
        ("storm", &tallies.storm),
        ("flood", &tallies.flood),
        ("hostile spans", &tallies.hostile),
    ] {
        println!("  {name:14} {}", tally.snapshot());
    }
    // At 20k spans/s RED keeps up easily: refusing normal traffic when no storm or flood
    // is running means ingest broke (the issue: refuse RED data only when RED cannot keep up).
    let (scheduled, lost) = seen.quiet_batches;
    checks.check(
        "normal traffic ingested outside bursts",
        scheduled > 0 && (lost as f64) < 0.01 * scheduled as f64,
        format!(
            "{lost} of {scheduled} batches lost ({:.2} %) in reports without a storm or flood",
            lost as f64 / scheduled.max(1) as f64 * 100.0
        ),
    );
    // Spans dated 2500 or 1971 are placed at "now" by redline's RED (more than its ±6 h clock
    // skew away), so the ones acknowledged are inside the hour asked for and are expected in
    // the count like every other acknowledged span.
    let since = if o.minutes <= 45.0 {
        "1h".to_string()
    } else {
        format!("{:.0}m", o.minutes + 15.0)
    };
    let exact = exactness(web, &since, tallies.total()).await;
    match &exact {
        Ok(check) => {
            check.print("  ");
            checks.check(
                "RED exact for acknowledged spans",
                check.exact(),
                format!(
                    "{} counted of {} acknowledged",
                    check.counted, check.sent.acknowledged
                ),
            );
        }
        Err(e) => checks.check(
            "RED exact for acknowledged spans",
            false,
            format!("could not read: {e}"),
        ),
    }
    let after = rss(redline.pid()).unwrap_or_default();
    println!(
        "  RSS after the load (and the drain): {:.1} MiB (anon {:.1}, file {:.1}); peak {:.1} MiB (memory_limit default 256 MiB)",
        after.rss, after.anon, after.file, after.hwm
    );
    let quarter = plan.total.as_secs_f64() / 4.0;
    let mut first: Vec<f64> = seen
        .rss_samples
        .iter()
        .filter(|(t, _)| *t < quarter)
        .map(|(_, r)| r.rss)
        .collect();
    let mut last: Vec<f64> = seen
        .rss_samples
        .iter()
        .filter(|(t, _)| *t >= 3.0 * quarter)
        .map(|(_, r)| r.rss)
        .collect();
    let (first, last) = (median(&mut first), median(&mut last));
    checks.check(
        "RSS flat",
        last <= first * 1.25 + 16.0,
        format!(
            "median VmRSS first quarter {first:.1} MiB, last quarter {last:.1} MiB ({:+.1} MiB)",
            last - first
        ),
    );
    let (db, wal) = database_mib(redline.data_dir());
    if let Some(size) = seen.outgrew_disk {
        checks.check(
            "database below --max-db-mib",
            false,
            format!("reached {size:.0} MiB; redline was killed"),
        );
    }
    let at_last_quarter = seen
        .sizes
        .iter()
        .find(|(t, _)| t.as_secs_f64() >= 3.0 * quarter)
        .or(seen.sizes.first())
        .map_or(0.0, |(_, s)| *s);
    checks.check(
        "database size flat under retention",
        db + wal <= at_last_quarter * 1.10 + 8.0,
        format!("{db:.1} MiB + wal {wal:.1} MiB at the end, {at_last_quarter:.1} MiB at the start of the last quarter"),
    );
    match rows_outside_retention(redline.data_dir(), plan) {
        Ok((red, old_traces, future_traces)) => checks.check(
            "database within retention",
            red == 0 && old_traces == 0 && future_traces == 0,
            format!(
                "10 s RED rows older than {} + 2 min: {red}; traces older than {} + 2 min: {old_traces}; traces dated > 1 day ahead: {future_traces}{}",
                humantime::format_duration(plan.retention_10s),
                humantime::format_duration(plan.trace_retention),
                if plan.skewed_clock_until.is_zero() { " (run too short to send dated spans early enough: not tested)" } else { "" }
            ),
        ),
        Err(e) => checks.check("database within retention", false, format!("could not read the database: {e}")),
    }
    checks.check(
        "responsive",
        seen.probe_failures.is_empty(),
        format!(
            "{PROBES:?} within 1 s at every report; failures: {:?}",
            seen.probe_failures
        ),
    );
    println!("  hostile requests (case, encoding, answers):");
    seen.answers.print("    ");
    checks.check(
        "hostile requests answered 200, 400 or 503",
        seen.answers.unacceptable() == 0,
        format!("{} answered otherwise", seen.answers.unacceptable()),
    );
    print_loss_counters(web, "  ").await;
    let (alive, panicked) = panics(redline);
    checks.check(
        "no panic",
        alive && panicked.is_empty(),
        format!("alive {alive}, panics on stderr: {panicked:?}"),
    );
    Ok(checks.failed())
}

/// (10 s RED rows older than their retention, traces older than theirs, traces dated more than a
/// day ahead), with the slack of [`RETENTION_SLACK`]; read from the database file (read-only).
fn rows_outside_retention(dir: &Path, plan: &Schedule) -> Result<(i64, i64, i64)> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("redline.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let now_ms = (now_ns() / 1_000_000) as i64;
    let ms = |d: Duration| d.as_millis() as i64;
    let red_cutoff = now_ms - ms(plan.retention_10s + RETENTION_SLACK);
    let trace_cutoff =
        (now_ms - ms(plan.trace_retention + RETENTION_SLACK)).saturating_mul(1_000_000);
    let future = (now_ms + 86_400_000).saturating_mul(1_000_000);
    let count = |sql: &str, bound: i64| -> rusqlite::Result<i64> {
        conn.query_row(sql, [bound], |r| r.get(0))
    };
    Ok((
        count(
            "SELECT count(*) FROM red_10s WHERE start_ms < ?1",
            red_cutoff,
        )?,
        count(
            "SELECT count(*) FROM traces WHERE start_ns < ?1",
            trace_cutoff,
        )?,
        count("SELECT count(*) FROM traces WHERE start_ns > ?1", future)?,
    ))
}
