//! Remote write when the target misbehaves, end to end over real sockets: a scripted target
//! answers 503 and 429 with `Retry-After` (the same request comes again, no sooner), 400 (never
//! asked again, counted as dropped), is down and comes back (what waited arrives, oldest first,
//! nothing dropped), or stays down past a small queue bound (the oldest are dropped and counted,
//! the bound holds).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use redline::config::export::RemoteWriteTable;
use redline::export::proto::WriteRequest;

use crate::helpers::{TestRedline, export_request, poll};

const WAIT: Duration = Duration::from_secs(30);

/// What the scripted target answers next; once the script is used up, 200.
#[derive(Clone, Copy)]
struct Answer {
    status: u16,
    retry_after_s: Option<u64>,
}

/// One push the target received.
#[derive(Clone)]
struct Received {
    at: Instant,
    body: Bytes,
    request: WriteRequest,
}

impl Received {
    /// The sample of `redline_requests_total` for `service`, summed over its endpoints.
    fn requests_of(&self, service: &str) -> Option<f64> {
        let mut found = None;
        for series in &self.request.timeseries {
            let has = |name: &str, value: &str| {
                series
                    .labels
                    .iter()
                    .any(|l| l.name == name && l.value == value)
            };
            if has("__name__", "redline_requests_total") && has("service", service) {
                *found.get_or_insert(0.0) += series.samples.iter().map(|s| s.value).sum::<f64>();
            }
        }
        found
    }

    fn timestamp_ms(&self) -> i64 {
        self.request
            .timeseries
            .iter()
            .flat_map(|s| &s.samples)
            .map(|s| s.timestamp)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
}

/// A remote-write target on `addr` that decodes every push (snappy + protobuf) and answers
/// from its script.
struct ScriptedTarget {
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptedTarget {
    async fn start(addr: SocketAddr, answers: &[Answer]) -> Self {
        let script = Arc::new(Script::default());
        script.answers.lock().unwrap().extend(answers);
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(receive))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedTarget { script, server }
    }

    fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    async fn wait_for_pushes(&self, count: usize) -> Vec<Received> {
        poll(WAIT, || async {
            let received = self.received();
            (received.len() >= count).then_some(received)
        })
        .await
        .unwrap_or_else(|| panic!("{count} pushes not received; got {}", self.received().len()))
    }
}

impl Drop for ScriptedTarget {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(script): State<Arc<Script>>, headers: HeaderMap, body: Bytes) -> Response {
    assert_eq!(
        headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("snappy")
    );
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&body)
        .expect("snappy block");
    let request = WriteRequest::decode(raw.as_slice()).expect("WriteRequest");
    script.received.lock().unwrap().push(Received {
        at: Instant::now(),
        body,
        request,
    });
    let answer = script.answers.lock().unwrap().pop_front();
    match answer {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(answer) => {
            let status = StatusCode::from_u16(answer.status).expect("status");
            match answer.retry_after_s {
                Some(seconds) => (status, [("retry-after", seconds.to_string())]).into_response(),
                None => status.into_response(),
            }
        }
    }
}

/// A loopback address nothing listens on (yet).
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn write_url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1/write")
}

/// redline pushing every second to `addr`, with this queue bound.
async fn redline_writing_to(addr: SocketAddr, queue_max_bytes: Option<usize>) -> TestRedline {
    TestRedline::start_with(move |layer| {
        layer.remote_write = Some(vec![RemoteWriteTable {
            url: write_url(addr),
            headers: Default::default(),
            basic_auth: None,
            interval: Some("1s".into()),
            queue_max_bytes,
        }]);
    })
    .await
}

/// The sum of `/metrics` samples of `name` whose labels include every one of `labels`.
fn self_metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_and_a_429_are_tried_again_with_the_same_request_after_retry_after() {
    let addr = free_address();
    let target = ScriptedTarget::start(
        addr,
        &[
            Answer {
                status: 503,
                retry_after_s: Some(2),
            },
            Answer {
                status: 429,
                retry_after_s: Some(1),
            },
        ],
    )
    .await;
    let redline = redline_writing_to(addr, None).await;
    assert_eq!(
        redline.export(&export_request("rw-retry", "/a", 50)).await,
        200
    );
    let pushes = target.wait_for_pushes(3).await;
    assert_eq!(
        pushes[0].body, pushes[1].body,
        "503: the same request again"
    );
    assert_eq!(
        pushes[1].body, pushes[2].body,
        "429: the same request again"
    );
    let after_503 = pushes[1].at - pushes[0].at;
    let after_429 = pushes[2].at - pushes[1].at;
    // Retry-After, not the backoff's first 0.5 s, decides the wait.
    assert!(after_503 >= Duration::from_millis(1900), "{after_503:?}");
    assert!(after_429 >= Duration::from_millis(900), "{after_429:?}");
    assert!(after_503 < Duration::from_secs(5), "{after_503:?}");

    let url = write_url(addr);
    let metrics = redline.metrics_text().await;
    assert_eq!(
        self_metric(
            &metrics,
            "redline_remote_write_retries_total",
            &[("target", &url)]
        ),
        2.0,
        "{metrics}"
    );
    assert!(
        self_metric(
            &metrics,
            "redline_remote_write_samples_sent_total",
            &[("target", &url)]
        ) > 0.0
    );
    assert_eq!(
        self_metric(
            &metrics,
            "redline_remote_write_samples_dropped_total",
            &[("target", &url)]
        ),
        0.0
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dropped_counted_and_not_asked_again() {
    let addr = free_address();
    let target = ScriptedTarget::start(
        addr,
        &[Answer {
            status: 400,
            retry_after_s: None,
        }],
    )
    .await;
    let redline = redline_writing_to(addr, None).await;
    assert_eq!(
        redline.export(&export_request("rw-reject", "/a", 20)).await,
        200
    );
    let pushes = target.wait_for_pushes(2).await;
    assert_ne!(
        pushes[0].body, pushes[1].body,
        "the rejected request came again"
    );
    assert!(
        pushes[1].timestamp_ms() > pushes[0].timestamp_ms(),
        "the next push is a later sample"
    );
    let rejected_series = pushes[0].request.timeseries.len() as f64;
    let url = write_url(addr);
    let metrics = redline.metrics_text().await;
    assert_eq!(
        self_metric(
            &metrics,
            "redline_remote_write_samples_dropped_total",
            &[("target", &url), ("reason", "rejected")]
        ),
        rejected_series,
        "{metrics}"
    );
    assert_eq!(
        self_metric(
            &metrics,
            "redline_remote_write_retries_total",
            &[("target", &url)]
        ),
        0.0
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_comes_back_receives_every_sample_that_waited() {
    let addr = free_address();
    let redline = redline_writing_to(addr, None).await;
    assert_eq!(
        redline.export(&export_request("rw-outage", "/a", 30)).await,
        200
    );
    let url = write_url(addr);
    // Samples pile up while nothing listens: the queue holds at least three.
    poll(WAIT, || async {
        let metrics = redline.metrics_text().await;
        let retries = self_metric(
            &metrics,
            "redline_remote_write_retries_total",
            &[("target", &url)],
        );
        (retries >= 1.0).then_some(())
    })
    .await
    .expect("no failed push counted while the target was down");
    // The outage lasts three more seconds: three more samples wait in the queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let target_started = now_ms();
    let target = ScriptedTarget::start(addr, &[]).await;

    let pushes = target.wait_for_pushes(4).await;
    let waited = pushes
        .iter()
        .filter(|p| p.timestamp_ms() < target_started)
        .count();
    assert!(
        waited >= 3,
        "samples taken during the outage arrived: {waited}"
    );
    let timestamps: Vec<i64> = pushes.iter().map(Received::timestamp_ms).collect();
    assert!(
        timestamps.windows(2).all(|w| w[0] < w[1]),
        "oldest first, each once: {timestamps:?}"
    );
    // A sample taken before the export was aggregated has no series of it; every other one
    // carries the whole count.
    for push in &pushes {
        if let Some(requests) = push.requests_of("rw-outage") {
            assert_eq!(requests, 30.0);
        }
    }
    assert_eq!(
        pushes.last().and_then(|p| p.requests_of("rw-outage")),
        Some(30.0)
    );
    let metrics = redline.metrics_text().await;
    assert_eq!(
        self_metric(
            &metrics,
            "redline_remote_write_samples_dropped_total",
            &[("target", &url)]
        ),
        0.0,
        "{metrics}"
    );
    redline.stop().await;
}

/// Six endpoints of `service`, ten requests each.
async fn send_six_endpoints(redline: &TestRedline, service: &str) {
    for route in ["/a", "/b", "/c", "/d", "/e", "/f"] {
        assert_eq!(
            redline.export(&export_request(service, route, 10)).await,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_bound_the_queue_drops_the_oldest_samples_and_counts_them() {
    // One push's size for this load, from a redline whose target is up.
    let measuring_addr = free_address();
    let sizer_target = ScriptedTarget::start(measuring_addr, &[]).await;
    let sizer = redline_writing_to(measuring_addr, None).await;
    send_six_endpoints(&sizer, "rw-bounded").await;
    let push_bytes = poll(WAIT, || async {
        sizer_target
            .received()
            .iter()
            .find(|p| p.requests_of("rw-bounded") == Some(60.0))
            .map(|p| p.body.len())
    })
    .await
    .expect("no full push from the sizing redline");
    sizer.stop().await;

    // Room for two pushes and a half: while the target is down, older ones must go.
    let bound = push_bytes * 5 / 2;
    let addr = free_address();
    let redline = redline_writing_to(addr, Some(bound)).await;
    send_six_endpoints(&redline, "rw-bounded").await;
    let url = write_url(addr);
    poll(WAIT, || async {
        let metrics = redline.metrics_text().await;
        let dropped = self_metric(
            &metrics,
            "redline_remote_write_samples_dropped_total",
            &[("target", &url), ("reason", "queue_full")],
        );
        let queued = self_metric(
            &metrics,
            "redline_remote_write_queue_bytes",
            &[("target", &url)],
        );
        assert!(
            queued <= bound as f64,
            "queue over its bound: {queued} > {bound}"
        );
        (dropped > 0.0).then_some(())
    })
    .await
    .expect("no sample dropped past the queue bound");

    // What is left is the newest: it arrives once the target is back.
    let target_started = now_ms();
    let target = ScriptedTarget::start(addr, &[]).await;
    let pushes = target.wait_for_pushes(1).await;
    assert!(
        pushes[0].timestamp_ms() >= target_started - 3_000,
        "an old sample survived: {} vs {target_started}",
        pushes[0].timestamp_ms()
    );
    assert_eq!(pushes[0].requests_of("rw-bounded"), Some(60.0));
    redline.stop().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
