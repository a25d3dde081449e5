//! The `hostile` mode of `benches/storm.rs` (its module doc says what is checked): every
//! hostile case in both encodings, each followed by a health check of redline; a case that
//! kills redline, makes a stage panic, stops ingest or breaks a read is named and redline is
//! restarted for the next case, so one run lists every case that breaks it. The final reads
//! and the exactness check run on the last redline, which holds every case that did not break
//! it.

use std::sync::Arc;
use std::time::Duration;

use crate::grpc_load::Tally;
use crate::hostile::{self, AnswerLog, Encoding};
use crate::probe::{exactness, print_loss_counters, timed_get, wait_for_empty_queue};
use crate::procs::{Sut, start_redline};
use crate::{Checks, Result, normal_export, panics, slow_or_failing_reads};

/// Every page and API read of the dashboard, with parameters that reach stored data of the
/// normal and the hostile services.
const READS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/services/shop",
    "/services/shop/endpoints?method=GET&route=%2Fapi%2Fv1%2Fcart",
    "/services/hostile",
    "/services/hostile-spans",
    "/traces",
    "/metrics-explorer?service=hostile&name=hostile.gauge",
    "/metrics-explorer?service=hostile&name=http.server.request.duration",
    "/alerts",
    "/dashboards",
    "/api/v1/services?since=1h",
    "/api/v1/endpoints?service=shop&since=1h",
    "/api/v1/endpoints?service=hostile&since=1h",
    "/api/v1/series?service=shop&stat=p99&since=1h",
    "/api/v1/series?service=hostile&stat=p99&since=1h",
    "/api/v1/metrics",
    "/api/v1/metrics?service=hostile",
    "/api/v1/metrics/query?service=hostile&name=hostile.gauge&since=1h",
    "/api/v1/metrics/query?service=hostile&name=http.server.request.duration&since=1h",
    "/api/v1/traces",
    "/api/v1/alerts",
];

/// Reads made after every case: the ones that touch the hostile services' data.
const CASE_READS: &[&str] = &[
    "/api/v1/services?since=1h",
    "/api/v1/endpoints?service=hostile&since=1h",
    "/services/hostile",
    "/services/hostile-spans",
    "/api/v1/metrics/query?service=hostile&name=hostile.gauge&since=1h",
];

/// A redline and what was sent to it.
struct Instance {
    redline: Sut,
    spans: Arc<Tally>,
    panics_seen: usize,
}

impl Instance {
    async fn start() -> Result<Instance> {
        let instance = Instance {
            redline: start_redline(&[])?,
            spans: Arc::default(),
            panics_seen: 0,
        };
        if !normal_export(&instance.redline, &instance.spans).await {
            return Err("a fresh redline did not acknowledge a normal export".into());
        }
        Ok(instance)
    }

    /// What is wrong with redline after a case, if anything.
    async fn health(&mut self) -> Option<String> {
        // Long enough for the pipeline to apply the case and the writer to flush it (1 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (alive, panicked) = panics(&mut self.redline);
        if !alive {
            let status = self.redline.exit_status().unwrap_or_default();
            return Some(format!("process ended ({status}); panics: {panicked:?}"));
        }
        if panicked.len() > self.panics_seen {
            let new = panicked[self.panics_seen..].to_vec();
            self.panics_seen = panicked.len();
            return Some(format!("a task panicked: {new:?}"));
        }
        if !normal_export(&self.redline, &self.spans).await {
            return Some("a normal export was not acknowledged".into());
        }
        let web = self.redline.web?;
        let depth = wait_for_empty_queue(web, Duration::from_secs(5)).await;
        if depth > 0.0 {
            return Some(format!("the ingest queue does not drain ({depth} items)"));
        }
        let bad = slow_or_failing_reads(web, CASE_READS, Duration::from_secs(1)).await;
        (!bad.is_empty()).then(|| format!("reads fail: {bad:?}"))
    }
}

pub async fn hostile_mode() -> Result<Vec<String>> {
    println!("\n== hostile: every case once in protobuf and once in JSON, over OTLP/HTTP ==");
    let mut instance = Instance::start().await?;
    let mut checks = Checks::default();
    let client = reqwest::Client::new();
    let mut log = AnswerLog::default();
    let mut broke = Vec::new();
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        for case in hostile::cases(encoding, 7) {
            let http = instance.redline.http.ok_or("no OTLP/HTTP address")?;
            let mut answers = Vec::new();
            for request in &case.requests {
                let answer = hostile::send(&client, http, request, encoding, &instance.spans).await;
                answers.push(answer.to_string());
                log.record(case.name, encoding, answer);
            }
            let health = instance.health().await;
            println!(
                "  {:<66} {:<8} {:<28} {}",
                case.name,
                encoding.name(),
                answers.join(", "),
                health
                    .as_deref()
                    .map_or("redline ok".to_string(), |why| format!(
                        "BROKE redline: {} — restarted",
                        shorten_text(why)
                    ))
            );
            if let Some(why) = health {
                broke.push(format!("{} ({}): {why}", case.name, encoding.name()));
                instance = Instance::start().await?;
            }
        }
    }
    checks.check(
        "hostile cases answered 200 or 400",
        log.unacceptable() == 0,
        format!("{} requests answered otherwise", log.unacceptable()),
    );
    checks.check(
        "no case broke redline",
        broke.is_empty(),
        format!(
            "{} of {} broke it",
            broke.len(),
            2 * hostile::cases(Encoding::Json, 0).len()
        ),
    );
    let web = instance.redline.web.ok_or("no web address")?;
    let check = exactness(web, "1h", instance.spans.snapshot()).await?;
    check.print("  ");
    checks.check(
        "RED exact for acknowledged spans",
        check.exact(),
        format!("{} counted, {}", check.counted, check.sent),
    );
    let bad = slow_or_failing_reads(web, READS, Duration::from_secs(1)).await;
    checks.check(
        "every page and API read within 1 s",
        bad.is_empty(),
        format!("{} reads, failing: {bad:?}", READS.len()),
    );
    let ready = timed_get(
        &client,
        &format!("http://{web}/readyz"),
        Duration::from_secs(5),
    )
    .await;
    checks.check(
        "/readyz 200",
        matches!(ready, Ok((200, _))),
        format!("{ready:?}"),
    );
    print_loss_counters(web, "  ").await;
    let (alive, panicked) = panics(&mut instance.redline);
    checks.check(
        "no panic",
        alive && panicked.is_empty(),
        format!("alive {alive}, panics on stderr: {panicked:?}"),
    );
    Ok(checks.failed())
}

/// A message for one line: at most 160 characters.
fn shorten_text(text: &str) -> String {
    if text.len() <= 160 {
        return text.to_string();
    }
    let head: String = text.chars().take(160).collect();
    format!("{head}…")
}
