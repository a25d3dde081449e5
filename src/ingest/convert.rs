//! OTLP → redline's plain records. Pure functions: what counts as a request, an error and an
//! endpoint (HTTP semantic conventions), how many requests a sampled span stands for (its
//! adjusted count, [`super::tracestate`]), and which data points are malformed (metrics, in
//! `metrics` and [`points`]). Every client string kept is length-limited
//! ([`crate::model::limits`]); on the span path that is one length compare unless a string is cut.

mod logs;
#[cfg(test)]
mod metric_properties;
mod metrics;
pub mod points;

pub use logs::convert_logs;
pub use metrics::convert_metrics;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::HashMap;
use prost::Message;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use crate::ingest::tracestate;
use crate::ingest::wire::{self, DecodeError, Item, SpanAttributes, SpanView, Value};
use crate::model::limits::{self, Field, limit_str, limit_string};
use crate::model::semconv::{self, known_method};
use crate::model::span_record::{any_value_to_string, attribute_text};
use crate::model::{
    EndpointKey, EndpointRequest, IncomingSpan, IngestBatch, InstanceSeen, RequestRecord,
};

pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// What a conversion kept and what it refused, for `partial_success`.
#[derive(Debug, Default)]
pub struct Converted {
    pub batch: IngestBatch,
    pub rejected: u64,
    /// The first reason something was rejected, for the response's `error_message`.
    pub first_error: Option<String>,
}

impl Converted {
    fn reject(&mut self, count: u64, why: impl FnOnce() -> String) {
        self.rejected += count;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Converts a trace export from its protobuf bytes (`ExportTraceServiceRequest`). Spans with
/// invalid ids or times are rejected, the rest are kept; bytes that are not a valid request
/// are an error and nothing is kept. Kept spans are ranges of `body`, which the batch holds.
pub fn convert_traces(body: &Bytes) -> Result<Converted, DecodeError> {
    let mut out = Converted::default();
    let mut service: Arc<str> = Arc::from(UNKNOWN_SERVICE);
    let mut endpoints = EndpointTable::default();
    wire::read_trace_export(body, |item| match item {
        Item::Resource {
            service_name,
            instance_id,
        } => {
            service = service_name_of(service_name).into();
            endpoints.clear();
            if let Some(instance) = instance_id_of(instance_id) {
                out.batch.instances.push(InstanceSeen {
                    service: service.clone(),
                    instance,
                });
            }
        }
        Item::Span(span) => {
            if let Err(why) = validate_span(&span) {
                out.reject(1, || format!("span {:?}: {why}", span.name));
                return;
            }
            let (incoming, status_code) = classify(&service, &span, &mut endpoints, body);
            if let Some(endpoint) = &incoming.endpoint {
                out.batch.requests.push(EndpointRequest {
                    endpoint: endpoint.clone(),
                    request: RequestRecord {
                        end_unix_ms: (incoming.end_unix_ns / 1_000_000) as i64,
                        duration_ms: (incoming.end_unix_ns - incoming.start_unix_ns) as f64 / 1e6,
                        status_code,
                        is_error: incoming.is_error,
                        count: tracestate::adjusted_count(span.trace_state, span.span_id),
                    },
                });
            }
            out.batch.spans.push(incoming);
        }
    })?;
    if !out.batch.spans.is_empty() {
        out.batch.body = body.clone();
    }
    Ok(out)
}

/// One batch's endpoints, so the requests of a batch share one key per endpoint instead of
/// copying it for every span. Keys borrow from the request body; cleared per resource.
#[derive(Default)]
struct EndpointTable<'a> {
    by_name: HashMap<(Cow<'static, str>, Cow<'a, str>), Arc<EndpointKey>>,
}

impl<'a> EndpointTable<'a> {
    fn clear(&mut self) {
        self.by_name.clear();
    }

    fn get(
        &mut self,
        service: &str,
        method: Cow<'static, str>,
        route: Cow<'a, str>,
    ) -> Arc<EndpointKey> {
        let key = (method, route);
        if let Some(endpoint) = self.by_name.get(&key) {
            return endpoint.clone();
        }
        let endpoint = Arc::new(EndpointKey {
            service: service.to_string(),
            method: key.0.to_string(),
            route: key.1.to_string(),
        });
        self.by_name.insert(key, endpoint.clone());
        endpoint
    }
}

/// Why a span is rejected, per the OTLP data model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum InvalidSpan {
    #[error("trace_id must be 16 bytes and not all zero")]
    TraceId,
    #[error("span_id must be 8 bytes and not all zero")]
    SpanId,
    #[error("start time must be set and not after the end time")]
    Times,
}

fn validate_span(span: &SpanView<'_>) -> Result<(), InvalidSpan> {
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
        return Err(InvalidSpan::TraceId);
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
        return Err(InvalidSpan::SpanId);
    }
    if span.end_time_unix_nano < span.start_time_unix_nano || span.start_time_unix_nano == 0 {
        return Err(InvalidSpan::Times);
    }
    Ok(())
}

/// The span with its endpoint (SERVER spans only) and error flag, and its HTTP status code.
fn classify<'a>(
    service: &Arc<str>,
    span: &SpanView<'a>,
    endpoints: &mut EndpointTable<'a>,
    body: &Bytes,
) -> (IncomingSpan, Option<u16>) {
    let attributes = &span.attributes;
    let status_code = http_status_code(attributes);
    let is_error =
        span.status_code == StatusCode::Error as i32 || status_code.is_some_and(|c| c >= 500);
    let endpoint = (span.kind == SpanKind::Server as i32)
        .then(|| endpoints.get(service, request_method(attributes), route(span)));
    let incoming = IncomingSpan {
        service: service.clone(),
        endpoint,
        is_error,
        trace_id: span.trace_id.try_into().expect("validated: 16 bytes"),
        start_unix_ns: span.start_time_unix_nano,
        end_unix_ns: span.end_time_unix_nano,
        encoded: range_within(body, span.encoded),
    };
    (incoming, status_code)
}

/// Where `part`, a slice of `body`, lies in it.
fn range_within(body: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - body.as_ptr() as usize;
    debug_assert!(start + part.len() <= body.len());
    start..start + part.len()
}

/// The resource's `service.name` (length-limited), or `unknown_service` when it is missing or
/// empty.
pub fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| find_attribute(&r.attributes, semconv::SERVICE_NAME))
        .map(|value| attribute_text(Some(value), Field::ServiceName))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string())
}

/// A resource's `service.instance.id`, length-limited; `None` when absent or empty.
pub fn instance_id(resource: Option<&Resource>) -> Option<String> {
    resource
        .and_then(|r| find_attribute(&r.attributes, semconv::SERVICE_INSTANCE_ID))
        .map(|value| attribute_text(Some(value), Field::ServiceName))
        .filter(|id| !id.is_empty())
}

/// [`instance_id`] for a resource read off the wire.
fn instance_id_of(value: Option<Value<'_>>) -> Option<String> {
    Some(resource_text(value)).filter(|id| !id.is_empty())
}

/// [`service_name`] for a resource read off the wire.
fn service_name_of(value: Option<Value<'_>>) -> String {
    let name = resource_text(value);
    if name.is_empty() {
        UNKNOWN_SERVICE.to_string()
    } else {
        name
    }
}

/// A resource attribute read off the wire as text, limited like a service name.
fn resource_text(value: Option<Value<'_>>) -> String {
    let text = match value {
        Some(Value::Str(s)) => return limit_str(s, Field::ServiceName).into_owned(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Double(d)) => d.to_string(),
        Some(Value::Other(encoded)) => AnyValue::decode(encoded)
            .map(|v| any_value_to_string(&v))
            .unwrap_or_default(),
        Some(Value::Empty) | None => String::new(),
    };
    limit_string(text, Field::ServiceName)
}

fn find_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// The first of `values` (attributes in order of preference) that is a non-empty string.
fn first_string<'a>(values: &[Option<Value<'a>>]) -> Option<&'a str> {
    values.iter().find_map(|value| match value {
        Some(Value::Str(s)) if !s.is_empty() => Some(*s),
        _ => None,
    })
}

/// `http.response.status_code`, or the older `http.status_code`, as int or string.
fn http_status_code(attributes: &SpanAttributes<'_>) -> Option<u16> {
    [
        attributes.http_response_status_code,
        attributes.http_status_code,
    ]
    .into_iter()
    .find_map(|value| match value? {
        Value::Int(v) => u16::try_from(v).ok(),
        Value::Str(s) => s.parse().ok(),
        Value::Double(v) => Some(v as u16),
        _ => None,
    })
}

fn http_method<'a>(attributes: &SpanAttributes<'a>) -> Option<&'a str> {
    first_string(&[attributes.http_request_method, attributes.http_method])
}

fn request_method(attributes: &SpanAttributes<'_>) -> Cow<'static, str> {
    if let Some(method) = http_method(attributes) {
        return Cow::Borrowed(known_method(method));
    }
    // Non-HTTP servers: name the protocol (`grpc`, …) so the endpoint list still reads well.
    let system = first_string(&[attributes.rpc_system]).unwrap_or("");
    Cow::Owned(limit_str(system, Field::Method).to_ascii_uppercase())
}

/// `http.route`; for HTTP spans without one, the templated URL path; for everything else, the
/// span name. Never a raw path: that would make one endpoint per id. Length-limited: borrowed
/// from the body unless it is cut.
fn route<'a>(span: &SpanView<'a>) -> Cow<'a, str> {
    let attributes = &span.attributes;
    if let Some(route) = first_string(&[attributes.http_route]) {
        return limit_str(route, Field::Route);
    }
    if http_method(attributes).is_some()
        && let Some(path) = url_path(attributes)
    {
        return Cow::Owned(templated_route(path));
    }
    limit_str(span.name, Field::Route)
}

/// [`template_path`] within the route limit. Of a longer path only the part that can show is
/// templated, so a megabyte path costs no more than a short one.
fn templated_route(path: &str) -> String {
    if path.len() <= limits::MAX_ROUTE_BYTES {
        return limit_string(template_path(path), Field::Route);
    }
    let head = &path[..path.floor_char_boundary(limits::MAX_ROUTE_BYTES)];
    let mut templated = template_path(head);
    templated
        .truncate(templated.floor_char_boundary(limits::MAX_ROUTE_BYTES - limits::MARKER.len()));
    templated.push_str(limits::MARKER);
    Field::Route.count_truncation();
    templated
}

fn url_path<'a>(attributes: &SpanAttributes<'a>) -> Option<&'a str> {
    let without_query = |path: &'a str| path.split(['?', '#']).next().unwrap_or("");
    if let Some(path) = first_string(&[attributes.url_path, attributes.http_target]) {
        return Some(without_query(path));
    }
    let full = first_string(&[attributes.url_full, attributes.http_url])?;
    let after_scheme = full.split_once("://").map_or(full, |(_, rest)| rest);
    let path_start = after_scheme.find('/')?;
    Some(without_query(&after_scheme[path_start..]))
}
/// Replaces id-like path segments (numbers, UUIDs, long hex strings) with `{id}`.
pub fn template_path(path: &str) -> String {
    let templated: Vec<&str> = path
        .split('/')
        .map(|segment| {
            if is_id_segment(segment) {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    let joined = templated.join("/");
    if joined.is_empty() {
        "/".to_string()
    } else {
        joined
    }
}

fn is_id_segment(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let all_digits = segment.bytes().all(|b| b.is_ascii_digit());
    let is_uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let long_hex = segment.len() >= 16 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    all_digits || is_uuid || long_hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::semconv::normalize_method;
    use crate::model::span_record::span_record;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn server_span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_250_000_000,
            attributes,
            ..Default::default()
        }
    }

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn convert_trace_request(request: &ExportTraceServiceRequest) -> Converted {
        convert_traces(&Bytes::from(request.encode_to_vec()))
            .expect("prost encodes a valid ExportTraceServiceRequest")
    }

    fn request_with(resource: Option<Resource>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource,
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn service_resource(name: any_value::Value) -> Option<Resource> {
        Some(Resource {
            attributes: vec![kv("service.name", name)],
            ..Default::default()
        })
    }

    fn classify(span: Span) -> IncomingSpan {
        let request = request_with(service_resource(s("svc")), vec![span]);
        convert_trace_request(&request).batch.spans.remove(0)
    }

    #[test]
    fn route_and_method_come_from_semantic_conventions() {
        let span = classify(server_span(vec![
            kv("http.request.method", s("get")),
            kv("http.route", s("/users/{id}")),
            kv("url.path", s("/users/42")),
        ]));
        let endpoint = span.endpoint.unwrap();
        assert_eq!(endpoint.method, "GET");
        assert_eq!(endpoint.route, "/users/{id}");
    }

    #[test]
    fn old_attribute_names_are_accepted() {
        let span = classify(server_span(vec![
            kv("http.method", s("POST")),
            kv("http.target", s("/orders/123?x=1")),
            kv("http.status_code", any_value::Value::IntValue(503)),
        ]));
        assert!(span.is_error);
        let endpoint = span.endpoint.unwrap();
        assert_eq!(endpoint.method, "POST");
        assert_eq!(endpoint.route, "/orders/{id}");
    }

    #[test]
    fn paths_without_route_are_templated() {
        assert_eq!(template_path("/users/123"), "/users/{id}");
        assert_eq!(
            template_path("/a/550e8400-e29b-41d4-a716-446655440000/b"),
            "/a/{id}/b"
        );
        assert_eq!(template_path("/blob/0123456789abcdef0123"), "/blob/{id}");
        assert_eq!(template_path("/v1/products"), "/v1/products");
        assert_eq!(template_path(""), "/");
        let from_url = classify(server_span(vec![
            kv("http.request.method", s("GET")),
            kv("url.full", s("https://x.example/items/99?q=1")),
        ]));
        assert_eq!(from_url.endpoint.unwrap().route, "/items/{id}");
    }

    #[test]
    fn unknown_methods_collapse_to_other() {
        assert_eq!(normalize_method("BREW"), "_OTHER");
        assert_eq!(normalize_method("patch"), "PATCH");
    }

    #[test]
    fn non_http_servers_use_the_span_name() {
        let mut span = server_span(vec![kv("rpc.system", s("grpc"))]);
        span.name = "shop.Cart/Add".into();
        let endpoint = classify(span).endpoint.unwrap();
        assert_eq!(endpoint.method, "GRPC");
        assert_eq!(endpoint.route, "shop.Cart/Add");
    }

    #[test]
    fn errors_are_status_error_or_5xx_but_not_4xx() {
        let not_found = classify(server_span(vec![kv(
            "http.response.status_code",
            any_value::Value::IntValue(404),
        )]));
        assert!(!not_found.is_error);
        let mut failed = server_span(vec![]);
        failed.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "boom".into(),
        });
        assert!(classify(failed).is_error);
    }

    #[test]
    fn client_spans_are_not_requests() {
        let mut span = server_span(vec![]);
        span.kind = SpanKind::Client as i32;
        assert!(classify(span).endpoint.is_none());
    }

    #[test]
    fn sampled_server_spans_carry_their_adjusted_count() {
        let with_state = |trace_state: &str| {
            let mut span = server_span(vec![]);
            span.trace_state = trace_state.into();
            span
        };
        let request = request_with(
            service_resource(s("svc")),
            vec![
                with_state("ot=th:c"),
                with_state("vendor=x, ot=rv:0123456789abcd;th:f"),
                with_state(""),
                with_state("ot=th:nothex"),
            ],
        );
        let converted = convert_trace_request(&request);
        let counts: Vec<u32> = converted
            .batch
            .requests
            .iter()
            .map(|r| r.request.count)
            .collect();
        assert_eq!(counts, vec![4, 16, 1, 1]);
        // A kept span is still one span.
        assert_eq!(converted.batch.spans.len(), 4);
    }

    #[test]
    fn invalid_spans_are_rejected_with_a_reason() {
        let mut bad = server_span(vec![]);
        bad.trace_id = vec![0; 16];
        let request = request_with(None, vec![server_span(vec![]), bad]);
        let converted = convert_trace_request(&request);
        assert_eq!(converted.rejected, 1);
        assert!(converted.first_error.unwrap().contains("trace_id"));
        assert_eq!(converted.batch.requests.len(), 1);
        assert_eq!(
            converted.batch.requests[0].endpoint.service,
            UNKNOWN_SERVICE
        );
        assert!((converted.batch.requests[0].request.duration_ms - 250.0).abs() < 1e-9);
    }

    #[test]
    fn undecodable_bytes_are_an_error_and_keep_nothing() {
        let mut bytes = request_with(None, vec![server_span(vec![])]).encode_to_vec();
        bytes.truncate(bytes.len() - 1);
        assert!(convert_traces(&Bytes::from(bytes)).is_err());
    }

    #[test]
    fn requests_of_one_endpoint_share_its_key() {
        let span = || {
            server_span(vec![
                kv("http.request.method", s("GET")),
                kv("http.route", s("/a")),
            ])
        };
        let request = request_with(service_resource(s("svc")), vec![span(), span()]);
        let converted = convert_trace_request(&request);
        let requests = &converted.batch.requests;
        assert_eq!(requests.len(), 2);
        assert!(Arc::ptr_eq(&requests[0].endpoint, &requests[1].endpoint));
        assert_eq!(requests[0].endpoint.service, "svc");
        assert_eq!(converted.batch.body.len(), request.encoded_len());
    }

    #[test]
    fn service_names_of_any_type_read_as_text() {
        let convert = |name| {
            let request = request_with(service_resource(name), vec![server_span(vec![])]);
            convert_trace_request(&request).batch.spans[0]
                .service
                .to_string()
        };
        assert_eq!(convert(any_value::Value::IntValue(42)), "42");
        assert_eq!(convert(s("")), UNKNOWN_SERVICE);
        let array =
            any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![AnyValue {
                    value: Some(s("a")),
                }],
            });
        assert_eq!(convert(array), "[a]");
    }

    #[test]
    fn kept_spans_flatten_to_records() {
        let mut span = server_span(vec![
            kv("http.request.method", s("GET")),
            kv("http.route", s("/a")),
            kv("note", s("<b>")),
        ]);
        span.parent_span_id = vec![3; 8];
        let request = request_with(service_resource(s("svc")), vec![span]);
        let batch = convert_trace_request(&request).batch;
        let record =
            span_record(&batch.spans[0], &batch.body[batch.spans[0].encoded.clone()]).unwrap();
        assert_eq!(record.trace_id, "01".repeat(16));
        assert_eq!(record.parent_span_id, Some("03".repeat(8)));
        assert_eq!(record.service, "svc");
        assert_eq!(record.kind, crate::model::SpanKind::Server);
        assert_eq!(record.attributes["note"], "<b>");
        assert_eq!(record.endpoint.unwrap().route, "/a");
    }

    fn view_with<'a>(name: &'a str, attributes: SpanAttributes<'a>) -> SpanView<'a> {
        SpanView {
            encoded: &[],
            trace_id: &[],
            span_id: &[],
            trace_state: "",
            name,
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            status_code: 0,
            attributes,
        }
    }

    #[test]
    fn routes_borrow_from_the_body_unless_cut() {
        let short = view_with(
            "GET",
            SpanAttributes {
                http_route: Some(Value::Str("/users/{id}")),
                ..Default::default()
            },
        );
        assert!(matches!(route(&short), Cow::Borrowed("/users/{id}")));
        assert!(matches!(
            route(&view_with("op", Default::default())),
            Cow::Borrowed("op")
        ));
        let long_route = format!("/{}", "r".repeat(1 << 20));
        let long = view_with(
            "GET",
            SpanAttributes {
                http_route: Some(Value::Str(&long_route)),
                ..Default::default()
            },
        );
        let cut = route(&long);
        assert!(matches!(cut, Cow::Owned(_)));
        assert_eq!(cut.len(), limits::MAX_ROUTE_BYTES);
        assert!(cut.ends_with(limits::MARKER));
    }

    #[test]
    fn endpoint_keys_of_huge_strings_are_cut() {
        let huge = "x".repeat(1 << 20);
        let mut span = server_span(vec![kv("rpc.system", s(&huge))]);
        span.name = huge.clone();
        let request = request_with(service_resource(s(&huge)), vec![span]);
        let converted = convert_trace_request(&request);
        let endpoint = &converted.batch.requests[0].endpoint;
        assert_eq!(endpoint.service.len(), limits::MAX_SERVICE_NAME_BYTES);
        assert_eq!(endpoint.route.len(), limits::MAX_ROUTE_BYTES);
        assert_eq!(endpoint.method.len(), limits::MAX_METHOD_BYTES);
        assert!(endpoint.method.starts_with("XXX") && endpoint.method.ends_with(limits::MARKER));
        assert_eq!(&*converted.batch.spans[0].service, endpoint.service);
        // Two long names with one prefix are one endpoint.
        let other = format!("{huge}y");
        let routes = |names: [&str; 2]| {
            let spans = names
                .iter()
                .map(|name| {
                    let mut span = server_span(vec![]);
                    span.name = name.to_string();
                    span
                })
                .collect();
            let converted = convert_trace_request(&request_with(None, spans));
            converted.batch.requests[0].endpoint.clone()
                == converted.batch.requests[1].endpoint.clone()
        };
        assert!(routes([&huge, &other]));
    }

    #[test]
    fn templated_paths_are_cut_after_templating_only_what_shows() {
        let long_path = format!("/users/123/{}", "seg/".repeat(100_000));
        let span = classify(server_span(vec![
            kv("http.request.method", s("GET")),
            kv("url.path", s(&long_path)),
        ]));
        let route = &span.endpoint.unwrap().route;
        assert!(route.starts_with("/users/{id}/seg/seg/"), "{route}");
        assert!(route.len() <= limits::MAX_ROUTE_BYTES);
        assert!(route.ends_with(limits::MARKER));
        // A short path whose templated form is longer than the limit is cut too.
        let ids = "/1".repeat(limits::MAX_ROUTE_BYTES / 2);
        assert!(templated_route(&ids).len() <= limits::MAX_ROUTE_BYTES);
        assert_eq!(templated_route("/a/7"), "/a/{id}");
    }

    #[test]
    fn kept_spans_store_limited_text() {
        use opentelemetry_proto::tonic::trace::v1::span::Event;
        let huge = "v".repeat(1 << 20);
        let mut attributes: Vec<KeyValue> =
            (0..200).map(|i| kv(&format!("a{i}"), s("x"))).collect();
        attributes.insert(0, kv("big", s(&huge)));
        attributes.insert(1, kv(&huge, s("key")));
        let mut span = server_span(attributes.clone());
        span.name = huge.clone();
        span.status = Some(Status {
            code: StatusCode::Error as i32,
            message: huge.clone(),
        });
        let long_name = "e".repeat(2 * limits::MAX_SPAN_NAME_BYTES);
        let many: Vec<KeyValue> = (0..200).map(|i| kv(&format!("a{i}"), s("x"))).collect();
        span.events = (0..300)
            .map(|i| Event {
                name: long_name.clone(),
                time_unix_nano: i,
                attributes: many.clone(),
                ..Default::default()
            })
            .collect();
        let request = request_with(service_resource(s("svc")), vec![span]);
        let batch = convert_trace_request(&request).batch;
        let record =
            span_record(&batch.spans[0], &batch.body[batch.spans[0].encoded.clone()]).unwrap();
        assert_eq!(record.name.len(), limits::MAX_SPAN_NAME_BYTES);
        assert_eq!(record.status_message.len(), limits::MAX_SPAN_TEXT_BYTES);
        assert_eq!(record.attributes.len(), limits::MAX_SPAN_ATTRIBUTES);
        assert_eq!(record.attributes["big"].len(), limits::MAX_SPAN_TEXT_BYTES);
        assert!(
            record
                .attributes
                .keys()
                .all(|k| k.len() <= limits::MAX_ATTRIBUTE_KEY_BYTES)
        );
        assert_eq!(record.events.len(), limits::MAX_SPAN_EVENTS);
        assert!(
            record
                .events
                .iter()
                .all(|e| e.name.len() == limits::MAX_SPAN_NAME_BYTES
                    && e.attributes.len() == limits::MAX_SPAN_ATTRIBUTES)
        );
        let stored = serde_json::to_string(&record).unwrap();
        assert!(stored.len() < 4 << 20, "{} bytes", stored.len());
    }
}
