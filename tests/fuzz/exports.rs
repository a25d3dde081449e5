//! The ingest side of the fuzz run: a generated export goes over one of the real transports —
//! OTLP/HTTP protobuf or JSON, gzip or not, or OTLP/gRPC — possibly with its bytes mutated
//! after encoding, and the answer must be one the OTLP specification allows.

use std::io::Write;
use std::net::SocketAddr;

use proptest::prelude::*;

/// How an export travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

/// A change to the encoded bytes: what a broken client or a hostile one sends.
#[derive(Debug, Clone)]
pub enum Mutation {
    None,
    /// Overwrite bytes at these positions (taken modulo the length).
    Overwrite(Vec<(usize, u8)>),
    /// Keep this share (in 1/256) of the bytes.
    Truncate(u8),
    /// Repeat a slice, as a retransmission gone wrong.
    Repeat {
        at: usize,
        length: usize,
    },
    /// JSON only: replace a token at this position with a hostile literal.
    JsonLiteral {
        at: usize,
        literal: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub transport: Transport,
    pub gzip: bool,
    /// OTLP/HTTP with gzip only: the mutation hits the compressed bytes (gRPC framing errors
    /// are tonic's, answered INTERNAL as gRPC specifies).
    pub mutate_compressed: bool,
    pub mutation: Mutation,
}

pub fn delivery() -> BoxedStrategy<Delivery> {
    let mutation = prop_oneof![
        6 => Just(Mutation::None),
        1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..4).prop_map(Mutation::Overwrite),
        1 => any::<u8>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, length)| Mutation::Repeat { at, length }),
        2 => (any::<usize>(), prop::sample::select(vec![
            "1e999", "-1e999", "NaN", "\"NaN\"", "\"Infinity\"", "\"-Infinity\"", "1.5",
            "18446744073709551616", "-1", "\"-1\"", "null", "\"\"", "{}", "[]", "true",
            "\"zz\"", "\"7fffffffffffffffffff\"", "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
        ])).prop_map(|(at, literal)| Mutation::JsonLiteral { at, literal }),
    ];
    (
        prop_oneof![
            Just(Transport::HttpProtobuf),
            Just(Transport::HttpJson),
            Just(Transport::Grpc)
        ],
        any::<bool>(),
        mutation,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(transport, gzip, mutation, mutate_compressed)| Delivery {
            transport,
            gzip,
            mutation,
            mutate_compressed,
        })
        .boxed()
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self {
            Mutation::None => {}
            Mutation::Overwrite(changes) => {
                for (at, byte) in changes {
                    let index = at % bytes.len();
                    bytes[index] = *byte;
                }
            }
            Mutation::Truncate(share) => bytes.truncate(bytes.len() * usize::from(*share) / 256),
            Mutation::Repeat { at, length } => {
                let start = at % bytes.len();
                let end = (start + length).min(bytes.len());
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Mutation::JsonLiteral { at, literal } => {
                // Replaces the value after a `:` at or after `at`, up to the next `,` or `}`.
                let Some(colon) = bytes[at % bytes.len()..].iter().position(|b| *b == b':') else {
                    return;
                };
                let start = at % bytes.len() + colon + 1;
                let end = bytes[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']'))
                    .map_or(bytes.len(), |n| start + n);
                bytes.splice(start..end, literal.bytes());
            }
        }
    }
}

/// The answer to one export.
#[derive(Debug)]
pub enum Answer {
    Http(u16),
    /// The `grpc-status` code.
    Grpc(u32),
    /// The connection closed while an HTTP body over the size limit was being sent.
    ClosedOnOversizedBody,
}

impl Answer {
    /// Whether the OTLP specification allows this answer: success (full or partial), a
    /// refusal of the request, or "try again later"; never an internal error.
    pub fn allowed(&self) -> bool {
        match self {
            Answer::Http(status) => matches!(status, 200 | 400 | 413 | 415 | 429 | 503),
            // OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE.
            Answer::Grpc(code) => matches!(code, 0 | 3 | 8 | 14),
            Answer::ClosedOnOversizedBody => true,
        }
    }

    pub fn accepted(&self) -> bool {
        matches!(self, Answer::Http(200) | Answer::Grpc(0))
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

pub struct Endpoints {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub max_body_bytes: usize,
}

/// Encodes `message` for `delivery`, applies its mutation and sends it.
pub async fn send<M: prost::Message + serde::Serialize>(
    client: &reqwest::Client,
    endpoints: &Endpoints,
    signal: Signal,
    message: &M,
    delivery: &Delivery,
) -> Result<Answer, String> {
    let mut bytes = match delivery.transport {
        Transport::HttpJson => serde_json::to_vec(message).expect("OTLP messages serialize"),
        Transport::HttpProtobuf | Transport::Grpc => message.encode_to_vec(),
    };
    let compressed_mutation =
        delivery.gzip && delivery.mutate_compressed && delivery.transport != Transport::Grpc;
    if !compressed_mutation {
        delivery.mutation.apply(&mut bytes);
    }
    let (path, service) = match signal {
        Signal::Traces => ("/v1/traces", "trace.v1.TraceService"),
        Signal::Metrics => ("/v1/metrics", "metrics.v1.MetricsService"),
        Signal::Logs => ("/v1/logs", "logs.v1.LogsService"),
    };
    if delivery.transport == Transport::Grpc {
        let path = format!("/opentelemetry.proto.collector.{service}/Export");
        let code = crate::helpers::grpc_status(endpoints.grpc, &path, &bytes, delivery.gzip)
            .await
            .map_err(|e| format!("gRPC export: {e}"))?;
        return Ok(Answer::Grpc(code));
    }
    let content_type = match delivery.transport {
        Transport::HttpJson => "application/json",
        _ => "application/x-protobuf",
    };
    let mut request = client
        .post(format!("http://{}{path}", endpoints.http))
        .header("content-type", content_type);
    if delivery.gzip {
        bytes = gzip(&bytes);
        if compressed_mutation {
            delivery.mutation.apply(&mut bytes);
        }
        request = request.header("content-encoding", "gzip");
    }
    let length = bytes.len();
    match request.body(bytes).send().await {
        Ok(response) => Ok(Answer::Http(response.status().as_u16())),
        // redline answers 413 as soon as a body passes the limit and closes the connection
        // rather than read the rest, so the client may fail while still sending.
        Err(_) if length > endpoints.max_body_bytes => Ok(Answer::ClosedOnOversizedBody),
        Err(e) => Err(format!("HTTP export of {length} bytes: {e:?}")),
    }
}
