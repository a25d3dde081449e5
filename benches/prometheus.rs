//! RED in Prometheus form (issue 16): how long rendering `/metrics/red` and building the
//! remote-write requests take for 1,000 endpoints, recorded in docs/PERFORMANCE.md.
//!
//! `cargo bench --bench prometheus` fills the aggregator's totals with 1,000 endpoints (10
//! services × 100 routes, 200 spans each over the default bounds), then times, interleaved
//! round by round, the snapshot (what `GET /metrics/red` holds the aggregator for), the text
//! rendering, and the remote-write requests (protobuf + snappy). Medians and p90 of
//! `PROM_ROUNDS` rounds (default 25) after 3 warm-ups; the target is ≤ 50 ms per render.

use std::time::{Duration, Instant};

use redline::aggregate::totals::{DurationBounds, RedTotals};
use redline::export::ExternalLabels;
use redline::export::exposition::render;
use redline::export::proto::{encode, write_requests};
use redline::model::{EndpointKey, RequestRecord};

fn totals(endpoints: usize) -> RedTotals {
    let mut totals = RedTotals::new(DurationBounds::default());
    for e in 0..endpoints {
        let key = EndpointKey {
            service: format!("service-{}", e % 10),
            method: "GET".into(),
            route: format!("/api/v1/resource-{e}/{{id}}"),
        };
        for i in 0..200u32 {
            let request = RequestRecord {
                end_unix_ms: 0,
                duration_ms: f64::from(1 + (i * 37) % 2_000),
                status_code: Some(if i % 20 == 0 { 503 } else { 200 }),
                is_error: i % 20 == 0,
                count: 1,
            };
            totals.add_request(&key, &request, 0);
        }
    }
    totals
}

fn median_p90(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(times[times.len() / 2]),
        ms(times[(times.len() * 9 / 10).min(times.len() - 1)]),
    )
}

fn main() {
    let rounds: usize = std::env::var("PROM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let totals = totals(1_000);
    let external = ExternalLabels::new(vec![("host".into(), "web-1".into())]).expect("labels");
    let (mut snapshot_t, mut render_t, mut remote_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut text_bytes, mut body_bytes, mut series) = (0, 0, 0);
    for round in 0..rounds + 3 {
        let started = Instant::now();
        let snapshot = totals.snapshot();
        let snapshot_took = started.elapsed();
        let copy = snapshot.clone();
        let started = Instant::now();
        let text = render(snapshot, &external);
        let render_took = started.elapsed();
        let started = Instant::now();
        let requests = write_requests(copy, &external, 1_000, 2_000);
        let bodies: Vec<Vec<u8>> = requests
            .iter()
            .map(|r| encode(r).expect("snappy"))
            .collect();
        let remote_took = started.elapsed();
        if round >= 3 {
            snapshot_t.push(snapshot_took);
            render_t.push(render_took);
            remote_t.push(remote_took);
        }
        text_bytes = text.len();
        body_bytes = bodies.iter().map(Vec::len).sum();
        series = requests.iter().map(|r| r.timeseries.len()).sum();
    }
    println!("1,000 endpoints, {series} series, {rounds} rounds (median / p90):");
    let (m, p) = median_p90(snapshot_t);
    println!("  snapshot under the aggregator's lock  {m:.2} ms / {p:.2} ms");
    let (m, p) = median_p90(render_t);
    println!("  /metrics/red text                     {m:.2} ms / {p:.2} ms  ({text_bytes} bytes)");
    let (m, p) = median_p90(remote_t);
    println!("  remote-write requests (proto+snappy)  {m:.2} ms / {p:.2} ms  ({body_bytes} bytes)");
}
