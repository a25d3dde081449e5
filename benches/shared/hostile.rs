//! Hostile OTLP/HTTP requests (issue 13), each in protobuf and in JSON, and what redline
//! answered to them. Metric points whose explicit bucket counts do not match their bounds
//! (including the two points of one `http.server.request.duration` series, the first
//! with one bound and no counts, the second with another layout), count ≠ bucket sum, unsorted
//! and NaN bounds, exponential points with offsets −2³¹ and 2³¹−1 and out-of-range scales,
//! `min > max`, NaN/Inf sums, a bound of 1e308 s, gauges and counters of 1.7e308 and NaN,
//! 1 MiB attribute values and service names; spans ending in the year 2500 and in 1971, with
//! a 1 MiB route and with a 1 MiB service name. The acceptable answers are 200 (with
//! `partial_success` for what was dropped) and 400; 503 means overload (counted apart).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    exponential_histogram_data_point::Buckets, metric, number_data_point,
};
use prost::Message;

use crate::grpc_load::{Fate, Tally};
use crate::payload::{Rng, http_span, int, kv, resource, s, trace_request};

const RED_METRIC: &str = "http.server.request.duration";
/// Service of the hostile metric points (its RED comes from metrics, not spans).
pub const METRIC_SERVICE: &str = "hostile";
/// Service of the hostile spans.
pub const SPAN_SERVICE: &str = "hostile-spans";
const MIB: usize = 1 << 20;
const SECOND_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "json",
        }
    }
}

/// One OTLP/HTTP request of a case.
pub enum Request {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

/// A hostile case: requests sent in order (a pair of points of one series is two requests).
pub struct Case {
    pub name: &'static str,
    pub requests: Vec<Request>,
    /// Whether its spans carry client timestamps far from now (year 2500, 1971).
    pub skewed_clock: bool,
}

/// Stand-ins for NaN and ±Inf in JSON: serde writes non-finite f64 as `null`, so JSON bodies
/// carry these finite values and the text is replaced with the OTLP/JSON spellings.
const JSON_NAN: f64 = 1.234_567_8e-300;
const JSON_INF: f64 = 2.345_678_9e-300;
const JSON_NEG_INF: f64 = 3.456_789_1e-300;

struct Specials {
    nan: f64,
    inf: f64,
    neg_inf: f64,
}

fn point_attributes(route: &str) -> Vec<KeyValue> {
    vec![
        kv("http.request.method", s("GET")),
        kv("http.route", s(route)),
        kv("http.response.status_code", int(200)),
    ]
}

fn metrics_request(service: &str, metric: Metric) -> Request {
    Request::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(service)),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn histogram(name: &str, point: HistogramDataPoint) -> Request {
    metrics_request(
        METRIC_SERVICE,
        Metric {
            name: name.into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![point],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        },
    )
}

/// A delta explicit-bucket point of `route`'s series, over the second before `end_ns`.
fn explicit(route: &str, end_ns: u64, bounds: Vec<f64>, counts: Vec<u64>) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: point_attributes(route),
        start_time_unix_nano: end_ns - SECOND_NS,
        time_unix_nano: end_ns,
        count: counts.iter().sum(),
        sum: Some(0.25),
        bucket_counts: counts,
        explicit_bounds: bounds,
        min: Some(0.01),
        max: Some(0.5),
        ..Default::default()
    }
}

fn exponential(name: &str, route: &str, end_ns: u64, scale: i32, offset: i32) -> Request {
    metrics_request(
        METRIC_SERVICE,
        Metric {
            name: name.into(),
            unit: "s".into(),
            data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: point_attributes(route),
                    start_time_unix_nano: end_ns - SECOND_NS,
                    time_unix_nano: end_ns,
                    count: 2,
                    sum: Some(0.5),
                    scale,
                    positive: Some(Buckets {
                        offset,
                        bucket_counts: vec![1, 1],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            })),
            ..Default::default()
        },
    )
}

fn number(service: &str, name: &str, sum: bool, value: f64, attrs: Vec<KeyValue>) -> Request {
    let now = crate::payload::now_ns();
    let point = NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: now - SECOND_NS,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = if sum {
        metric::Data::Sum(Sum {
            data_points: vec![point],
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })
    } else {
        metric::Data::Gauge(Gauge {
            data_points: vec![point],
        })
    };
    metrics_request(
        service,
        Metric {
            name: name.into(),
            unit: "s".into(),
            data: Some(data),
            ..Default::default()
        },
    )
}

/// One error SERVER span of `service` on `route` ending at `end_ns`.
fn span(service: &str, route: &str, end_ns: u64, seed: u64) -> Request {
    let mut rng = Rng(seed);
    let mut span = http_span(&mut rng, seed, "GET", route, end_ns, 100);
    // Random trace ids, as SDKs make them.
    span.trace_id = [rng.next().to_be_bytes(), rng.next().to_be_bytes()].concat();
    Request::Traces(trace_request(service, vec![span]))
}

/// Unix time of the start of `year` (proleptic, 365.2425-day years: close enough here).
fn year_ns(year: u64) -> u64 {
    ((year - 1970) as f64 * 365.2425 * 86_400.0) as u64 * SECOND_NS
}

fn all_cases(now: u64, seed: u64, x: &Specials) -> Vec<Case> {
    let big = |c: char| std::iter::repeat_n(c, MIB).collect::<String>();
    let case = |name, requests| Case {
        name,
        requests,
        skewed_clock: false,
    };
    let red_point = |route: &str, f: &dyn Fn(&mut HistogramDataPoint)| {
        let mut point = explicit(route, now, vec![0.1, 0.5], vec![1, 1, 0]);
        f(&mut point);
        histogram(RED_METRIC, point)
    };
    vec![
        case(
            "two points, one series: 1 bound + no counts, then another layout",
            vec![
                // A count without bucket counts, so the point is not skipped as empty; both
                // points share one window, so the second merges into the first's layout.
                histogram(RED_METRIC, {
                    let mut first = explicit("/layout", now, vec![0.1], vec![]);
                    first.count = 1;
                    first
                }),
                histogram(
                    RED_METRIC,
                    explicit("/layout", now, vec![0.1, 0.5, 1.0], vec![1, 2, 3, 4]),
                ),
            ],
        ),
        case(
            "bucket counts ≠ bounds + 1",
            vec![histogram(
                RED_METRIC,
                explicit("/mismatch", now, vec![0.1, 0.2], vec![1, 2, 3, 4, 5]),
            )],
        ),
        case(
            "count ≠ bucket sum",
            vec![red_point("/count", &|p| p.count = 1000)],
        ),
        case(
            "unsorted and NaN bounds",
            vec![histogram(
                "hostile.bounds",
                explicit("/bounds", now, vec![0.5, 0.1, x.nan], vec![1, 1, 1, 1]),
            )],
        ),
        case(
            "exponential offsets -2^31 and 2^31-1, one series",
            vec![
                exponential("hostile.exp", "/exp", now - SECOND_NS, 0, i32::MIN),
                exponential("hostile.exp", "/exp", now, 0, i32::MAX),
            ],
        ),
        case(
            "exponential offsets -2^31 and 2^31-1, RED series",
            vec![
                exponential(RED_METRIC, "/exp", now - SECOND_NS, 0, i32::MIN),
                exponential(RED_METRIC, "/exp", now, 0, i32::MAX),
            ],
        ),
        case(
            "exponential scales 100 and -100",
            vec![
                exponential(RED_METRIC, "/scale", now - SECOND_NS, 100, 0),
                exponential(RED_METRIC, "/scale", now, -100, 0),
            ],
        ),
        case(
            "min > max",
            vec![red_point("/minmax", &|p| {
                (p.min, p.max) = (Some(5.0), Some(1.0))
            })],
        ),
        case("NaN sum", vec![red_point("/nan", &|p| p.sum = Some(x.nan))]),
        case(
            "+Inf sum, -Inf min",
            vec![red_point("/inf", &|p| {
                (p.sum, p.min) = (Some(x.inf), Some(x.neg_inf))
            })],
        ),
        case(
            "bound of 1e308 s",
            vec![red_point("/huge-bound", &|p| {
                (p.explicit_bounds, p.bucket_counts) = (vec![1e308], vec![1, 1])
            })],
        ),
        case(
            "gauge and counter of 1.7e308, gauge NaN",
            vec![
                number(METRIC_SERVICE, "hostile.gauge", false, 1.7e308, vec![]),
                number(METRIC_SERVICE, "hostile.counter", true, 1.7e308, vec![]),
                number(METRIC_SERVICE, "hostile.gauge.nan", false, x.nan, vec![]),
            ],
        ),
        case(
            "1 MiB metric attribute value",
            vec![number(
                METRIC_SERVICE,
                "hostile.attr",
                true,
                1.0,
                vec![kv("tenant", s(&big('a')))],
            )],
        ),
        case(
            "1 MiB service name (metrics)",
            vec![number(&big('m'), "hostile.svc", true, 1.0, vec![])],
        ),
        Case {
            name: "span ending in the year 2500",
            requests: vec![span(SPAN_SERVICE, "/future", year_ns(2500), seed)],
            skewed_clock: true,
        },
        Case {
            name: "span ending in 1971",
            requests: vec![span(SPAN_SERVICE, "/past", year_ns(1971), seed + 1)],
            skewed_clock: true,
        },
        case(
            "span with a 1 MiB http.route",
            vec![span(SPAN_SERVICE, &big('r'), now, seed + 2)],
        ),
        case(
            "span with a 1 MiB service name",
            vec![span(&big('s'), "/big-service", now, seed + 3)],
        ),
    ]
}

/// Every case, built for `encoding` with timestamps around now; `seed` varies the trace ids.
pub fn cases(encoding: Encoding, seed: u64) -> Vec<Case> {
    let specials = match encoding {
        Encoding::Protobuf => Specials {
            nan: f64::NAN,
            inf: f64::INFINITY,
            neg_inf: f64::NEG_INFINITY,
        },
        Encoding::Json => Specials {
            nan: JSON_NAN,
            inf: JSON_INF,
            neg_inf: JSON_NEG_INF,
        },
    };
    all_cases(crate::payload::now_ns(), seed, &specials)
}

fn body(request: &Request, encoding: Encoding) -> Bytes {
    let json = |text: String| {
        let mut text = text;
        for (stand_in, spelling) in [
            (JSON_NAN, "\"NaN\""),
            (JSON_INF, "\"Infinity\""),
            (JSON_NEG_INF, "\"-Infinity\""),
        ] {
            let written = serde_json::to_string(&stand_in).expect("a finite f64 serializes");
            text = text.replace(&written, spelling);
        }
        Bytes::from(text)
    };
    match (request, encoding) {
        (Request::Metrics(m), Encoding::Protobuf) => Bytes::from(m.encode_to_vec()),
        (Request::Traces(t), Encoding::Protobuf) => Bytes::from(t.encode_to_vec()),
        (Request::Metrics(m), Encoding::Json) => json(serde_json::to_string(m).expect("json")),
        (Request::Traces(t), Encoding::Json) => json(serde_json::to_string(t).expect("json")),
    }
}

/// How redline answered one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// 200; how many items `partial_success` rejected, of how many sent.
    Ok { rejected: u64, sent: u64 },
    /// 400 (undecodable or invalid).
    BadRequest,
    /// 503: overload, may be retried.
    Refused,
    /// Any other status.
    Status(u16),
    /// No answer: connection error or timeout.
    Unanswered,
}

impl Answer {
    /// Whether the answer is one the issue allows for hostile input (200 or 400; 503 is
    /// overload, not a verdict on the input).
    pub fn acceptable(&self) -> bool {
        matches!(
            self,
            Answer::Ok { .. } | Answer::BadRequest | Answer::Refused
        )
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Ok { rejected: 0, .. } => write!(f, "200"),
            Answer::Ok { rejected, sent } => write!(f, "200 ({rejected}/{sent} rejected)"),
            Answer::BadRequest => write!(f, "400"),
            Answer::Refused => write!(f, "503"),
            Answer::Status(200) => write!(f, "200 with an unreadable body (NOT ACCEPTABLE)"),
            Answer::Status(code) => write!(f, "{code} (NOT ACCEPTABLE)"),
            Answer::Unanswered => write!(f, "no answer (NOT ACCEPTABLE)"),
        }
    }
}

fn items(request: &Request) -> u64 {
    match request {
        Request::Traces(t) => t
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum(),
        Request::Metrics(m) => m
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
                _ => 0,
            } as u64)
            .sum(),
    }
}

/// The `partial_success` rejection count of a 200 answer.
fn rejected(request: &Request, encoding: Encoding, bytes: &[u8]) -> Option<u64> {
    let n = match (request, encoding) {
        (Request::Traces(_), Encoding::Protobuf) => ExportTraceServiceResponse::decode(bytes)
            .ok()?
            .partial_success
            .map_or(0, |p| p.rejected_spans),
        (Request::Traces(_), Encoding::Json) => {
            serde_json::from_slice::<ExportTraceServiceResponse>(bytes)
                .ok()?
                .partial_success
                .map_or(0, |p| p.rejected_spans)
        }
        (Request::Metrics(_), Encoding::Protobuf) => ExportMetricsServiceResponse::decode(bytes)
            .ok()?
            .partial_success
            .map_or(0, |p| p.rejected_data_points),
        (Request::Metrics(_), Encoding::Json) => {
            serde_json::from_slice::<ExportMetricsServiceResponse>(bytes)
                .ok()?
                .partial_success
                .map_or(0, |p| p.rejected_data_points)
        }
    };
    Some(n.max(0) as u64)
}

/// Sends one request over OTLP/HTTP; spans of trace requests go into `spans`' tally.
pub async fn send(
    client: &reqwest::Client,
    http: SocketAddr,
    request: &Request,
    encoding: Encoding,
    spans: &Tally,
) -> Answer {
    let path = match request {
        Request::Metrics(_) => "metrics",
        Request::Traces(_) => "traces",
    };
    let sent = items(request);
    let response = client
        .post(format!("http://{http}/v1/{path}"))
        .header("content-type", encoding.content_type())
        .body(body(request, encoding))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let answer = match response {
        Err(_) => Answer::Unanswered,
        Ok(response) => {
            let status = response.status().as_u16();
            match (status, response.bytes().await) {
                (200, Ok(bytes)) => match rejected(request, encoding, &bytes) {
                    Some(rejected) => Answer::Ok { rejected, sent },
                    None => Answer::Status(200),
                },
                (400, _) => Answer::BadRequest,
                (503, _) => Answer::Refused,
                (_, Err(_)) => Answer::Unanswered,
                (status, _) => Answer::Status(status),
            }
        }
    };
    if let Request::Traces(_) = request {
        let fate = match answer {
            Answer::Ok { rejected, .. } => Fate::Acknowledged { rejected },
            Answer::Refused => Fate::Refused,
            Answer::BadRequest | Answer::Status(_) => Fate::Failed,
            Answer::Unanswered => Fate::Unknown,
        };
        spans.record(sent, fate);
    }
    answer
}

/// Answers per case and encoding.
#[derive(Default)]
pub struct AnswerLog {
    answers: BTreeMap<(&'static str, Encoding), BTreeMap<Answer, u64>>,
}

impl AnswerLog {
    pub fn record(&mut self, case: &'static str, encoding: Encoding, answer: Answer) {
        *self
            .answers
            .entry((case, encoding))
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }

    /// Requests answered with something else than 200, 400 or 503.
    pub fn unacceptable(&self) -> u64 {
        self.answers
            .values()
            .flat_map(|a| a.iter())
            .filter(|(answer, _)| !answer.acceptable())
            .map(|(_, n)| n)
            .sum()
    }

    pub fn print(&self, indent: &str) {
        for ((case, encoding), answers) in &self.answers {
            let parts: Vec<String> = answers
                .iter()
                .map(|(answer, n)| format!("{answer} ×{n}"))
                .collect();
            println!(
                "{indent}{case:<66} {:<8} {}",
                encoding.name(),
                parts.join(", ")
            );
        }
    }
}
