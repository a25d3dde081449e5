//! Reads OTLP trace exports straight from their protobuf bytes, without building the message.
//!
//! Decoding an `ExportTraceServiceRequest` with prost allocates some thirty heap objects per
//! span (every attribute key and value), and redline reads only a dozen fields of each span
//! and keeps the bytes of the few spans the trace sampler chooses. This reader checks the whole
//! request as strictly as prost does — wire types of known fields, lengths, varints, UTF-8 of
//! every `string` field, nesting depth — so a request is refused here exactly when prost would
//! refuse it, and hands out each span's fields as slices of the request body.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`.

use crate::model::semconv::{self, deprecated};

/// Why the bytes are not an `ExportTraceServiceRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf: {0}")]
pub struct DecodeError(&'static str);

/// Nested messages deeper than this are refused, as prost does (its recursion limit).
const MAX_DEPTH: u32 = 100;

/// An attribute value as far as redline reads it. Other kinds are checked but not kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// The key was there without a value.
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// An array, key-value list, bytes or string-table reference: the whole `AnyValue`
    /// message, for the rare reader that needs it (decode it with prost).
    Other(&'a [u8]),
}

/// The span attributes that decide a request's endpoint and outcome (HTTP and RPC semantic
/// conventions, current and older names). Each holds the first occurrence of its key.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SpanAttributes<'a> {
    pub http_request_method: Option<Value<'a>>,
    pub http_method: Option<Value<'a>>,
    pub http_route: Option<Value<'a>>,
    pub http_response_status_code: Option<Value<'a>>,
    pub http_status_code: Option<Value<'a>>,
    pub url_path: Option<Value<'a>>,
    pub http_target: Option<Value<'a>>,
    pub url_full: Option<Value<'a>>,
    pub http_url: Option<Value<'a>>,
    pub rpc_system: Option<Value<'a>>,
}

impl<'a> SpanAttributes<'a> {
    fn record(&mut self, key: &str, value: Value<'a>) {
        let slot = match key {
            semconv::HTTP_REQUEST_METHOD => &mut self.http_request_method,
            deprecated::HTTP_METHOD => &mut self.http_method,
            semconv::HTTP_ROUTE => &mut self.http_route,
            semconv::HTTP_RESPONSE_STATUS_CODE => &mut self.http_response_status_code,
            deprecated::HTTP_STATUS_CODE => &mut self.http_status_code,
            semconv::URL_PATH => &mut self.url_path,
            deprecated::HTTP_TARGET => &mut self.http_target,
            semconv::URL_FULL => &mut self.url_full,
            deprecated::HTTP_URL => &mut self.http_url,
            deprecated::RPC_SYSTEM => &mut self.rpc_system,
            _ => return,
        };
        slot.get_or_insert(value);
    }
}

/// One span, its fields borrowed from the request body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanView<'a> {
    /// The span's whole encoded message (an `opentelemetry.proto.trace.v1.Span`).
    pub encoded: &'a [u8],
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    /// The W3C `tracestate` (empty when absent); it carries the OpenTelemetry sampling
    /// threshold (see [`super::tracestate`]).
    pub trace_state: &'a str,
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `Status.code`; 0 (unset) when there is no status.
    pub status_code: i32,
    pub attributes: SpanAttributes<'a>,
}

/// What [`read_trace_export`] reports, in order: each resource, then the spans under it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "items are handed to a callback one at a time, never stored; boxing would allocate per span"
)]
pub enum Item<'a> {
    /// A new `ResourceSpans` begins; its resource's `service.name` and `service.instance.id`,
    /// when present.
    Resource {
        service_name: Option<Value<'a>>,
        instance_id: Option<Value<'a>>,
    },
    Span(SpanView<'a>),
}

/// Walks an `ExportTraceServiceRequest`. Items already reported must be discarded when it
/// returns an error: the request as a whole is invalid.
pub fn read_trace_export<'a>(
    body: &'a [u8],
    mut visit: impl FnMut(Item<'a>),
) -> Result<(), DecodeError> {
    each_field(body, 0, |reader, field, wire| {
        match field {
            1 => read_resource_spans(reader.message(wire)?, 1, &mut visit)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// Calls `on_field` for each field of the message in `buf`, nested `depth` deep. A field it
/// does not know (it returns `false` without reading it) is skipped. Always inlined, so each
/// walker compiles to its own loop (`ingest -- profile` measured it as fast as hand-written
/// loops).
#[inline(always)]
fn each_field<'a>(
    buf: &'a [u8],
    depth: u32,
    mut on_field: impl FnMut(&mut Reader<'a>, u32, WireType) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    check_depth(depth)?;
    let mut reader = Reader::new(buf);
    while let Some((field, wire)) = reader.next_field()? {
        if !on_field(&mut reader, field, wire)? {
            reader.skip(field, wire, depth)?;
        }
    }
    Ok(())
}

fn read_resource_spans<'a>(
    buf: &'a [u8],
    depth: u32,
    visit: &mut impl FnMut(Item<'a>),
) -> Result<(), DecodeError> {
    // The resource may come after the spans on the wire: find it (and check every field) first.
    let mut service_name = None;
    let mut instance_id = None;
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => {
                let (name, instance) = read_resource(reader.message(wire)?, depth + 1)?;
                // prost merges repeated resources; the first `service.name` is the one read.
                service_name = service_name.or(name);
                instance_id = instance_id.or(instance);
            }
            2 => {
                reader.message(wire)?;
            }
            3 => {
                reader.string(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    visit(Item::Resource {
        service_name,
        instance_id,
    });
    each_field(buf, depth, |reader, field, wire| {
        match field {
            2 => read_scope_spans(reader.message(wire)?, depth + 1, visit)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// A `Resource`: returns its first `service.name` and `service.instance.id` attributes.
type ResourceIdentity<'a> = (Option<Value<'a>>, Option<Value<'a>>);

fn read_resource(buf: &[u8], depth: u32) -> Result<ResourceIdentity<'_>, DecodeError> {
    let mut service_name = None;
    let mut instance_id = None;
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => {
                let (key, value) = read_key_value(reader.message(wire)?, depth + 1)?;
                if key == semconv::SERVICE_NAME && service_name.is_none() {
                    service_name = Some(value);
                } else if key == semconv::SERVICE_INSTANCE_ID && instance_id.is_none() {
                    instance_id = Some(value);
                }
            }
            2 => {
                reader.varint(wire)?;
            }
            3 => check_entity_ref(reader.message(wire)?, depth + 1)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((service_name, instance_id))
}

fn check_entity_ref(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1..=4 => {
                reader.string(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn read_scope_spans<'a>(
    buf: &'a [u8],
    depth: u32,
    visit: &mut impl FnMut(Item<'a>),
) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => check_scope(reader.message(wire)?, depth + 1)?,
            2 => visit(Item::Span(read_span(reader.message(wire)?, depth + 1)?)),
            3 => {
                reader.string(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn check_scope(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 | 2 => {
                reader.string(wire)?;
            }
            3 => {
                read_key_value(reader.message(wire)?, depth + 1)?;
            }
            4 => {
                reader.varint(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn read_span(buf: &[u8], depth: u32) -> Result<SpanView<'_>, DecodeError> {
    let mut span = SpanView {
        encoded: buf,
        trace_id: &[],
        span_id: &[],
        trace_state: "",
        name: "",
        kind: 0,
        start_time_unix_nano: 0,
        end_time_unix_nano: 0,
        status_code: 0,
        attributes: SpanAttributes::default(),
    };
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => span.trace_id = reader.bytes(wire)?,
            2 => span.span_id = reader.bytes(wire)?,
            3 => span.trace_state = reader.string(wire)?,
            4 => {
                reader.bytes(wire)?; // parent_span_id
            }
            5 => span.name = reader.string(wire)?,
            6 => span.kind = reader.varint(wire)? as i32,
            7 => span.start_time_unix_nano = reader.fixed64(wire)?,
            8 => span.end_time_unix_nano = reader.fixed64(wire)?,
            9 => {
                let (key, value) = read_key_value(reader.message(wire)?, depth + 1)?;
                span.attributes.record(key, value);
            }
            10 | 12 | 14 => {
                reader.varint(wire)?; // dropped counts
            }
            11 => check_event(reader.message(wire)?, depth + 1)?,
            13 => check_link(reader.message(wire)?, depth + 1)?,
            15 => {
                if let Some(code) = read_status(reader.message(wire)?, depth + 1)? {
                    span.status_code = code;
                }
            }
            16 => {
                reader.fixed32(wire)?; // flags
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(span)
}

/// A `Status`: its code, when the field is present.
fn read_status(buf: &[u8], depth: u32) -> Result<Option<i32>, DecodeError> {
    let mut code = None;
    each_field(buf, depth, |reader, field, wire| {
        match field {
            2 => {
                reader.string(wire)?;
            }
            3 => code = Some(reader.varint(wire)? as i32),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(code)
}

fn check_event(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => {
                reader.fixed64(wire)?;
            }
            2 => {
                reader.string(wire)?;
            }
            3 => {
                read_key_value(reader.message(wire)?, depth + 1)?;
            }
            4 => {
                reader.varint(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn check_link(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 | 2 => {
                reader.bytes(wire)?;
            }
            3 => {
                reader.string(wire)?;
            }
            4 => {
                read_key_value(reader.message(wire)?, depth + 1)?;
            }
            5 => {
                reader.varint(wire)?;
            }
            6 => {
                reader.fixed32(wire)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// A `KeyValue`: its key and value ([`Value::Empty`] when the value is missing).
fn read_key_value(buf: &[u8], depth: u32) -> Result<(&str, Value<'_>), DecodeError> {
    let mut key = "";
    let mut value = Value::Empty;
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => key = reader.string(wire)?,
            2 => {
                // A repeated message field is merged by prost: an empty second value keeps
                // the first.
                let next = read_any_value(reader.message(wire)?, depth + 1)?;
                if next != Value::Empty {
                    value = next;
                }
            }
            3 => {
                reader.varint(wire)?; // key_strindex (profiles only)
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((key, value))
}

/// An `AnyValue`. Its oneof keeps the last variant on the wire, as prost does.
fn read_any_value(buf: &[u8], depth: u32) -> Result<Value<'_>, DecodeError> {
    let mut value = Value::Empty;
    each_field(buf, depth, |reader, field, wire| {
        value = match field {
            1 => Value::Str(reader.string(wire)?),
            2 => Value::Bool(reader.varint(wire)? != 0),
            3 => Value::Int(reader.varint(wire)? as i64),
            4 => Value::Double(f64::from_bits(reader.fixed64(wire)?)),
            5 => {
                check_array(reader.message(wire)?, depth + 1)?;
                Value::Other(buf)
            }
            6 => {
                check_key_value_list(reader.message(wire)?, depth + 1)?;
                Value::Other(buf)
            }
            7 => {
                reader.bytes(wire)?;
                Value::Other(buf)
            }
            8 => {
                reader.varint(wire)?;
                Value::Other(buf)
            }
            _ => return Ok(false),
        };
        Ok(true)
    })?;
    Ok(value)
}

fn check_array(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => {
                read_any_value(reader.message(wire)?, depth + 1)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn check_key_value_list(buf: &[u8], depth: u32) -> Result<(), DecodeError> {
    each_field(buf, depth, |reader, field, wire| {
        match field {
            1 => {
                read_key_value(reader.message(wire)?, depth + 1)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn check_depth(depth: u32) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("messages nested too deeply"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    LengthDelimited,
    StartGroup,
    EndGroup,
    Fixed32,
}

/// A cursor over one message's fields.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    /// The next field's number and wire type, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u32, WireType)>, DecodeError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.raw_varint()?;
        if key > u64::from(u32::MAX) {
            return Err(DecodeError("field key out of range"));
        }
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::LengthDelimited,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            _ => return Err(DecodeError("invalid wire type")),
        };
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(DecodeError("field number 0"));
        }
        Ok(Some((field, wire)))
    }

    fn raw_varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                if i == 9 && byte > 1 {
                    return Err(DecodeError("varint overflows 64 bits"));
                }
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(DecodeError(if self.rest.len() < 10 {
            "truncated varint"
        } else {
            "varint longer than 10 bytes"
        }))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.rest.len() {
            return Err(DecodeError("field runs past the end of its message"));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn expect(wire: WireType, expected: WireType) -> Result<(), DecodeError> {
        if wire != expected {
            return Err(DecodeError("a known field has the wrong wire type"));
        }
        Ok(())
    }

    fn varint(&mut self, wire: WireType) -> Result<u64, DecodeError> {
        Self::expect(wire, WireType::Varint)?;
        self.raw_varint()
    }

    fn fixed64(&mut self, wire: WireType) -> Result<u64, DecodeError> {
        Self::expect(wire, WireType::Fixed64)?;
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn fixed32(&mut self, wire: WireType) -> Result<u32, DecodeError> {
        Self::expect(wire, WireType::Fixed32)?;
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.raw_varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError("length out of range"))?;
        self.take(len)
    }

    fn bytes(&mut self, wire: WireType) -> Result<&'a [u8], DecodeError> {
        Self::expect(wire, WireType::LengthDelimited)?;
        self.length_delimited()
    }

    fn message(&mut self, wire: WireType) -> Result<&'a [u8], DecodeError> {
        self.bytes(wire)
    }

    fn string(&mut self, wire: WireType) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(wire)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError("a string field is not valid UTF-8"))
    }

    /// Skips an unknown field, as prost does (groups included).
    fn skip(&mut self, field: u32, wire: WireType, depth: u32) -> Result<(), DecodeError> {
        match wire {
            WireType::Varint => {
                self.raw_varint()?;
            }
            WireType::Fixed64 => {
                self.take(8)?;
            }
            WireType::Fixed32 => {
                self.take(4)?;
            }
            WireType::LengthDelimited => {
                self.length_delimited()?;
            }
            WireType::StartGroup => {
                check_depth(depth + 1)?;
                loop {
                    let Some((inner, inner_wire)) = self.next_field()? else {
                        return Err(DecodeError("unterminated group"));
                    };
                    if inner_wire == WireType::EndGroup {
                        if inner != field {
                            return Err(DecodeError("mismatched end group"));
                        }
                        break;
                    }
                    self.skip(inner, inner_wire, depth + 1)?;
                }
            }
            WireType::EndGroup => return Err(DecodeError("unexpected end group")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;
    use prost::Message;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn string(s: &str) -> any_value::Value {
        any_value::Value::StringValue(s.into())
    }

    fn sample_request() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            parent_span_id: vec![9; 8],
            trace_state: "vendor=x,ot=th:c".into(),
            name: "GET /items/{id}".into(),
            kind: 2,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                kv("http.request.method", string("GET")),
                kv("http.route", string("/items/{id}")),
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                kv("http.route", string("/ignored/second/occurrence")),
                kv(
                    "tags",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::KvlistValue(KeyValueList {
                                values: vec![kv("deep", any_value::Value::BoolValue(true))],
                            })),
                        }],
                    }),
                ),
            ],
            events: vec![Event {
                time_unix_nano: 3_000,
                name: "retry".into(),
                attributes: vec![kv("attempt", any_value::Value::IntValue(2))],
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                ..Default::default()
            }],
            status: Some(Status {
                message: "boom".into(),
                code: 2,
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", string("shop"))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn items(bytes: &[u8]) -> Result<Vec<Item<'_>>, DecodeError> {
        let mut out = Vec::new();
        read_trace_export(bytes, |item| out.push(item))?;
        Ok(out)
    }

    #[test]
    fn reads_the_fields_redline_uses() {
        let bytes = sample_request().encode_to_vec();
        let items = items(&bytes).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0],
            Item::Resource {
                service_name: Some(Value::Str("shop")),
                instance_id: None,
            }
        );
        let Item::Span(span) = items[1] else {
            panic!("expected a span")
        };
        assert_eq!(span.trace_id, &[7; 16]);
        assert_eq!(span.span_id, &[8; 8]);
        assert_eq!(span.trace_state, "vendor=x,ot=th:c");
        assert_eq!(span.name, "GET /items/{id}");
        assert_eq!(span.kind, 2);
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_000, 5_000)
        );
        assert_eq!(span.status_code, 2);
        assert_eq!(span.attributes.http_request_method, Some(Value::Str("GET")));
        assert_eq!(span.attributes.http_route, Some(Value::Str("/items/{id}")));
        assert_eq!(
            span.attributes.http_response_status_code,
            Some(Value::Int(503))
        );
        assert_eq!(span.attributes.url_path, None);
        // The span's bytes are the span message: prost decodes them to the same span.
        let original = &sample_request().resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(&Span::decode(span.encoded).unwrap(), original);
    }

    #[test]
    fn a_resource_after_its_spans_still_names_them() {
        // Field 2 (scope_spans) first, then field 1 (resource): legal protobuf.
        let request = sample_request();
        let resource_spans = &request.resource_spans[0];
        let mut inner = Vec::new();
        prost::encoding::message::encode(2, &resource_spans.scope_spans[0], &mut inner);
        prost::encoding::message::encode(1, resource_spans.resource.as_ref().unwrap(), &mut inner);
        let mut bytes = Vec::new();
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
        bytes.extend_from_slice(&inner);
        let items = items(&bytes).unwrap();
        assert_eq!(
            items[0],
            Item::Resource {
                service_name: Some(Value::Str("shop")),
                instance_id: None,
            }
        );
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let valid = sample_request().encode_to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", valid[..valid.len() - 3].to_vec()),
            (
                "garbage",
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            ),
            ("wrong wire type for resource_spans", vec![0x08, 0x01]),
            ("wire type 7", vec![0x0f]),
            ("field 0", vec![0x02, 0x00]),
            ("end group alone", vec![0x0c]),
        ];
        for (what, bytes) in cases {
            assert!(
                ExportTraceServiceRequest::decode(&bytes[..]).is_err(),
                "{what}: prost accepts"
            );
            assert!(items(&bytes).is_err(), "{what}: wire reader accepts");
        }
        // Invalid UTF-8 in an attribute key nobody reads.
        let mut request = sample_request();
        request.resource_spans[0].scope_spans[0].spans[0].attributes[0].key = "KEYX".into();
        let mut bytes = request.encode_to_vec();
        let at = bytes.windows(4).position(|w| w == b"KEYX").unwrap();
        bytes[at + 3] = 0xff;
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_err());
        assert!(items(&bytes).is_err());
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped() {
        let mut bytes = sample_request().encode_to_vec();
        // Unknown field 9 as a group holding a varint, then unknown fixed32 field 10.
        bytes.extend_from_slice(&[
            (9 << 3) | 3,
            0x08,
            0x01,
            (9 << 3) | 4,
            (10 << 3) | 5,
            1,
            2,
            3,
            4,
        ]);
        assert!(ExportTraceServiceRequest::decode(&bytes[..]).is_ok());
        assert_eq!(items(&bytes).unwrap().len(), 3);
    }

    proptest! {
        /// Mutated requests: the wire reader refuses exactly what prost refuses.
        #[test]
        fn agrees_with_prost_on_mutated_bytes(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = sample_request().encode_to_vec();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let prost_ok = ExportTraceServiceRequest::decode(&bytes[..]).is_ok();
            prop_assert_eq!(items(&bytes).is_ok(), prost_ok);
        }
    }
}
