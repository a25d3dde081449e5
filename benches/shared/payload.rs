//! OTLP trace payloads for the benchmarks: realistic HTTP SERVER spans (10 attributes, a
//! configurable share of 5xx errors, 5 % 404, lognormal durations) pre-encoded in batches of
//! 512, with the trace ids marked so every sent batch can get fresh ones without re-encoding.

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prost::Message;
use std::time::{SystemTime, UNIX_EPOCH};

pub const SPANS_PER_BATCH: usize = 512;
/// Share of spans that are server errors (5xx, status ERROR) in normal traffic.
pub const NORMAL_ERROR_PERCENT: u32 = 2;
/// Marks the first 4 bytes of every trace id in a pre-encoded payload, so the generator can
/// find them and make every sent trace unique without re-encoding.
const TRACE_ID_MAGIC: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/products"),
    ("GET", "/api/v1/products/{id}"),
    ("GET", "/api/v1/products/{id}/reviews"),
    ("POST", "/api/v1/products/{id}/reviews"),
    ("GET", "/api/v1/cart"),
    ("POST", "/api/v1/cart/items"),
    ("DELETE", "/api/v1/cart/items/{id}"),
    ("POST", "/api/v1/checkout"),
    ("GET", "/api/v1/orders"),
    ("GET", "/api/v1/orders/{id}"),
    ("GET", "/api/v1/users/{id}"),
    ("PUT", "/api/v1/users/{id}"),
    ("POST", "/api/v1/login"),
    ("GET", "/api/v1/search"),
    ("GET", "/healthz"),
    ("GET", "/api/v1/recommendations"),
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
];

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// splitmix64: cheap deterministic pseudo-randomness.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Lognormal latency in ns around `median_ms`.
    pub fn latency_ns(&mut self, median_ms: f64) -> u64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (median_ms * (0.6 * normal).exp() * 1e6) as u64
    }
}

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

pub fn int(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

pub fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("service.version", s("1.4.2")),
            kv("host.name", s("bench-host-1")),
            kv("telemetry.sdk.name", s("opentelemetry")),
            kv("telemetry.sdk.language", s("rust")),
        ],
        ..Default::default()
    }
}

/// One realistic HTTP SERVER span: ~10 attributes; `error_percent` % are 5xx with status ERROR.
pub fn http_span(
    rng: &mut Rng,
    index: u64,
    method: &str,
    route: &str,
    end_ns: u64,
    error_percent: u32,
) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&TRACE_ID_MAGIC);
    trace_id[4..8].copy_from_slice(&(index as u32).to_be_bytes());
    trace_id[8..].copy_from_slice(&rng.next().to_be_bytes());
    let span_id = (rng.next() | 1).to_be_bytes().to_vec();
    let error = rng.below(100) < error_percent as usize;
    let status_code: i64 = if error {
        500 + rng.below(4) as i64
    } else if rng.below(100) < 5 {
        404
    } else {
        200
    };
    let duration_ns = rng.latency_ns(if error { 80.0 } else { 25.0 }).max(1000);
    let path = route.replace("{id}", &(rng.next() % 100_000).to_string());
    Span {
        trace_id: trace_id.to_vec(),
        span_id,
        parent_span_id: Vec::new(),
        name: format!("{method} {route}"),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: end_ns.saturating_sub(duration_ns),
        end_time_unix_nano: end_ns,
        attributes: vec![
            kv("http.request.method", s(method)),
            kv("http.route", s(route)),
            kv("http.response.status_code", int(status_code)),
            kv("url.path", s(&path)),
            kv("url.scheme", s("http")),
            kv("server.address", s("shop.internal")),
            kv("server.port", int(8080)),
            kv(
                "user_agent.original",
                s(USER_AGENTS[rng.below(USER_AGENTS.len())]),
            ),
            kv("network.protocol.version", s("1.1")),
            kv(
                "client.address",
                s(&format!("10.0.{}.{}", rng.below(256), rng.below(256))),
            ),
        ],
        status: error.then(|| Status {
            code: StatusCode::Error as i32,
            message: "internal error".into(),
        }),
        ..Default::default()
    }
}

pub fn trace_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry-instrumentation-http".into(),
                    version: "0.50.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A pre-encoded export request and where its trace ids' random halves are.
#[derive(Clone)]
pub struct Payload {
    pub bytes: Bytes,
    trace_id_offsets: Vec<usize>,
}

impl Payload {
    /// Spans in the request (each has one marked trace id).
    pub fn spans(&self) -> u64 {
        self.trace_id_offsets.len() as u64
    }
}

fn encode_payload(request: &ExportTraceServiceRequest) -> Payload {
    let bytes = request.encode_to_vec();
    let mut offsets = Vec::new();
    let mut i = 0;
    while i + 16 <= bytes.len() {
        if bytes[i..i + 4] == TRACE_ID_MAGIC && i > 0 && bytes[i - 1] == 16 {
            offsets.push(i + 8);
            i += 16;
        } else {
            i += 1;
        }
    }
    Payload {
        bytes: Bytes::from(bytes),
        trace_id_offsets: offsets,
    }
}

/// `count` batches of 512 spans of service `shop` over the fixed route set, ending around now,
/// 2 % errors.
pub fn trace_payloads(count: usize, seed: u64) -> Vec<Payload> {
    trace_payloads_for(count, seed, "shop", NORMAL_ERROR_PERCENT)
}

/// `count` batches of 512 spans of `service` over the fixed route set, ending within the last
/// second, `error_percent` % of them server errors.
pub fn trace_payloads_for(
    count: usize,
    seed: u64,
    service: &str,
    error_percent: u32,
) -> Vec<Payload> {
    let mut rng = Rng(seed);
    let now = now_ns();
    (0..count)
        .map(|b| {
            let spans = (0..SPANS_PER_BATCH)
                .map(|i| {
                    let (method, route) = ROUTES[rng.below(ROUTES.len())];
                    let index = (b * SPANS_PER_BATCH + i) as u64;
                    let end = now - rng.below(1_000_000_000) as u64;
                    http_span(&mut rng, index, method, route, end, error_percent)
                })
                .collect();
            let payload = encode_payload(&trace_request(service, spans));
            assert_eq!(payload.trace_id_offsets.len(), SPANS_PER_BATCH);
            payload
        })
        .collect()
}

/// The bytes to send for the `n`-th request: the payload with fresh trace ids, so every sent
/// trace is new to the receiver (as in real traffic, where SDKs make random trace ids) and the
/// uniform sampler sees new ids.
pub fn fresh_ids(payload: &Payload, n: u64) -> Bytes {
    let mut bytes = BytesMut::from(&payload.bytes[..]);
    for (i, offset) in payload.trace_id_offsets.iter().enumerate() {
        let random = mix(n.wrapping_mul(1 << 20) ^ i as u64);
        bytes[*offset..*offset + 8].copy_from_slice(&random.to_be_bytes());
    }
    bytes.freeze()
}

/// A batch of 512 spans of service `shop` over `routes` distinct routes starting at route
/// number `first_route`, generated on the fly (2 % errors).
pub fn endpoint_batch(rng: &mut Rng, first_route: usize, routes: usize, sequence: u64) -> Bytes {
    let now = now_ns();
    let spans = (0..SPANS_PER_BATCH)
        .map(|i| {
            let route = format!(
                "/api/r{}/{{id}}",
                first_route + (i + sequence as usize * SPANS_PER_BATCH) % routes
            );
            http_span(
                rng,
                sequence * 1000 + i as u64,
                "GET",
                &route,
                now - 1_000_000,
                NORMAL_ERROR_PERCENT,
            )
        })
        .collect();
    Bytes::from(trace_request("shop", spans).encode_to_vec())
}
