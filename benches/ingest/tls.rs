//! Mode `tls`: what TLS and OTLP API keys cost OTLP/gRPC ingest. Three redline builds of the
//! same binary, interleaved round by round (the order rotating): plain text; TLS (a server
//! certificate made at start by rcgen, the client trusting its CA); and API keys (three keys
//! configured, plain text). Each gets the same closed-loop load of the same 512-span payloads
//! (`--in-flight` requests over `--connections` connections) for `--full-speed-secs` after 3 s of
//! warm-up, in a fresh process; the figure is spans acknowledged per second. Every request
//! carries an `x-otlp-api-key` header, which the builds without keys never look at, so the
//! bytes on the wire are the same. Medians over `--rounds` (at least 5), ratios against plain
//! text. Then the authentication check alone, in process: its time per request against the
//! time one request takes at the plain-text median.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Result;
use crate::grpc_load::{ClosedLoop, Tally, connect_with, send_closed};
use crate::payload::{Payload, SPANS_PER_BATCH, fresh_ids, trace_payloads};
use crate::probe::median;
use crate::procs::start_redline;

pub struct TlsOptions {
    pub rounds: usize,
    pub secs: f64,
    pub in_flight: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Build {
    Plain,
    Tls,
    Keys,
}

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::Plain => "plain text",
            Build::Tls => "TLS",
            Build::Keys => "API keys",
        }
    }
}

const KEY: &str = "bench-key-0123456789abcdef0123456789";
const WARM_UP: Duration = Duration::from_secs(3);

/// A CA and a server certificate for localhost, written to `dir`: (CA PEM, cert path, key path).
fn certificates(dir: &std::path::Path) -> Result<(String, String, String)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate()?;
    let server =
        rcgen::CertificateParams::new(vec!["localhost".into()])?.signed_by(&server_key, &issuer)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, server.pem())?;
    std::fs::write(&key, server_key.serialize_pem())?;
    let path = |p: std::path::PathBuf| p.to_str().map(str::to_string).ok_or("path not UTF-8");
    Ok((ca_pem, path(cert)?, path(key)?))
}

/// Closed-loop load until `until`: spans acknowledged.
async fn load(
    channels: &[tonic::transport::Channel],
    payloads: &Arc<Vec<Payload>>,
    sequence: &Arc<AtomicU64>,
    options: &TlsOptions,
    until: Instant,
) -> (u64, u64) {
    let tally = Arc::new(Tally::default());
    let config = ClosedLoop {
        parallel: options.in_flight,
        until: Some(until),
        retry_unavailable: false,
        api_key: Some(KEY.parse().expect("ASCII key")),
    };
    let sent = send_closed(
        channels,
        |_| {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            let payload = &payloads[(n % payloads.len() as u64) as usize];
            Some((fresh_ids(payload, n), payload.spans()))
        },
        &config,
        &tally,
    )
    .await;
    (tally.snapshot().acknowledged, sent.failed)
}

pub async fn run(options: &TlsOptions) -> Result<()> {
    let rounds = options.rounds.max(5);
    println!(
        "\n== tls: OTLP/gRPC ingest, plain text / TLS / API keys, closed loop ({} in flight, {} connections), {} s per build and round, {rounds} rounds ==",
        options.in_flight, options.connections, options.secs
    );
    let dir = tempfile::tempdir()?;
    let (ca_pem, cert, key) = certificates(dir.path())?;
    let keys = format!("bench={KEY},other-a={KEY}a,other-b={KEY}b");
    let payloads = Arc::new(trace_payloads(32, 7));
    let sequence = Arc::new(AtomicU64::new(0));
    let builds = [Build::Plain, Build::Tls, Build::Keys];
    let mut figures: BTreeMap<Build, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        println!("-- round {}/{rounds}", round + 1);
        for i in 0..builds.len() {
            let build = builds[(i + round) % builds.len()];
            let args: Vec<&str> = match build {
                Build::Plain => vec![],
                Build::Tls => vec!["--tls-cert", &cert, "--tls-key", &key],
                Build::Keys => vec!["--otlp-api-keys", &keys],
            };
            let mut sut = start_redline(&args)?;
            let ca = (build == Build::Tls).then_some(ca_pem.as_str());
            let channels = connect_with(sut.grpc, options.connections, ca).await?;
            load(
                &channels,
                &payloads,
                &sequence,
                options,
                Instant::now() + WARM_UP,
            )
            .await;
            let started = Instant::now();
            let until = started + Duration::from_secs_f64(options.secs);
            let (acknowledged, failed) =
                load(&channels, &payloads, &sequence, options, until).await;
            let rate = acknowledged as f64 / started.elapsed().as_secs_f64();
            println!(
                "  {:10} {rate:>9.0} spans/s acknowledged ({failed} requests not acknowledged)",
                build.name()
            );
            figures.entry(build).or_default().push(rate);
            sut.stop();
        }
    }
    let plain = median(figures.get_mut(&Build::Plain).expect("plain text ran"));
    println!("\n== tls summary (medians of {rounds} rounds) ==");
    for build in builds {
        let values = figures.get_mut(&build).expect("every build ran");
        let m = median(values);
        println!(
            "{:10} {m:>9.0} spans/s  {:.3}× plain text  (rounds: {})",
            build.name(),
            m / plain,
            values
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    check_cost(plain);
    Ok(())
}

/// The authentication check alone (three keys configured, the key in `x-otlp-api-key`),
/// in process: nanoseconds per request, and that against one request's share of time at
/// `plain_spans_per_s`.
fn check_cost(plain_spans_per_s: f64) {
    use redline::ingest::auth::{ApiKeys, OtlpAuth};
    let entries = [
        format!("bench={KEY}"),
        format!("other-a={KEY}a"),
        format!("other-b={KEY}b"),
    ];
    let keys =
        ApiKeys::parse(entries.iter().map(|e| (String::new(), e.as_str()))).expect("valid keys");
    let auth = OtlpAuth::new(&keys, false);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-otlp-api-key", KEY.parse().expect("header value"));
    const CHECKS: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..CHECKS {
        let sender = auth.check(std::hint::black_box(&headers), None);
        assert!(std::hint::black_box(sender).is_ok_and(|s| s.is_some()));
    }
    let check_ns = started.elapsed().as_nanos() as f64 / f64::from(CHECKS);
    let request_ns = 1e9 * SPANS_PER_BATCH as f64 / plain_spans_per_s;
    println!(
        "authentication check: {check_ns:.0} ns per request = {:.4} % of one {SPANS_PER_BATCH}-span request's time at the plain-text median ({:.0} µs)",
        100.0 * check_ns / request_ns,
        request_ns / 1e3
    );
}
