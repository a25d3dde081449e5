//! The protobuf wire format of the OTLP messages the tracer writes (spans, and the request
//! that carries them), encoded by hand: each span is written once into its batch's buffer,
//! borrowing keys and values, where the generated `opentelemetry_proto` types would need a copy
//! of every attribute first. Field numbers are those of `opentelemetry/proto/trace/v1` and
//! `common/v1`; the tests in [`crate::tracer`] decode the output with `opentelemetry_proto`.

use opentelemetry::{Array, KeyValue, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const LEN: u8 = 2;
pub(crate) const VARINT: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const I32: u8 = 5;

#[inline]
pub(crate) fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
pub(crate) fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

#[inline]
pub(crate) fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A proto3 string/bytes field: omitted when empty (the default).
#[inline]
pub(crate) fn opt_bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        bytes_field(buf, field, b);
    }
}

#[inline]
pub(crate) fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

#[inline]
pub(crate) fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, I64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub(crate) fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(buf, field, I32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// Writes a length-delimited sub-message: its body is encoded in place, then its length is
/// inserted in front (one move of the body; cheaper than computing every length twice).
pub(crate) fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(buf, field, LEN);
    let start = buf.len();
    body(buf);
    let len = (buf.len() - start) as u64;
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    buf.splice(start..start, prefix[..n].iter().copied());
}

#[inline]
pub(crate) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `AnyValue` of a scalar or an array (arrays become `ArrayValue` of scalars).
pub(crate) fn any_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            tag(buf, 4, I64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => bytes_field(buf, 1, s.as_str().as_bytes()),
        Value::Array(a) => message(buf, 5, |buf| match a {
            Array::Bool(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::Bool(*x)))),
            Array::I64(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::I64(*x)))),
            Array::F64(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| any_value(b, &Value::F64(*x)))),
            Array::String(v) => v
                .iter()
                .for_each(|x| message(buf, 1, |b| bytes_field(b, 1, x.as_str().as_bytes()))),
            // A future array type: its text form rather than a broken message.
            other => message(buf, 1, |b| {
                bytes_field(b, 1, Value::Array(other.clone()).as_str().as_bytes())
            }),
        }),
        other => bytes_field(buf, 1, other.as_str().as_bytes()),
    }
}

/// A `KeyValue`. Scalars (nearly every attribute) get their lengths computed up front, so the
/// body is written once; arrays are written in place and moved behind their length.
pub(crate) fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let Some(any_len) = scalar_len(value) else {
        return message(buf, field, |buf| {
            opt_bytes_field(buf, 1, key.as_bytes());
            message(buf, 2, |buf| any_value(buf, value));
        });
    };
    key_value_head(buf, field, key, any_len);
    any_value(buf, value);
}

/// A `KeyValue`'s tag and length, its key, and the tag and length of its `AnyValue` (whose
/// body, `any_len` bytes, the caller writes next).
#[inline]
fn key_value_head(buf: &mut Vec<u8>, field: u32, key: &str, any_len: usize) {
    let key_len = if key.is_empty() {
        0
    } else {
        1 + varint_len(key.len() as u64) + key.len()
    };
    tag(buf, field, LEN);
    varint(
        buf,
        (key_len + 1 + varint_len(any_len as u64) + any_len) as u64,
    );
    opt_bytes_field(buf, 1, key.as_bytes());
    tag(buf, 2, LEN);
    varint(buf, any_len as u64);
}

/// The encoded length of a scalar `AnyValue` (`None` for arrays and other composites).
fn scalar_len(value: &Value) -> Option<usize> {
    Some(match value {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => 1 + varint_len(s.as_str().len() as u64) + s.as_str().len(),
        _ => return None,
    })
}

/// A `KeyValue` with a string value, for callers holding a `&str`.
#[inline]
pub(crate) fn key_value_str(buf: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let s = value.as_bytes();
    key_value_head(buf, field, key, 1 + varint_len(s.len() as u64) + s.len());
    bytes_field(buf, 1, s);
}

pub(crate) fn attributes<'a>(
    buf: &mut Vec<u8>,
    field: u32,
    kvs: impl IntoIterator<Item = &'a KeyValue>,
) {
    for kv in kvs {
        key_value(buf, field, kv.key.as_str(), &kv.value);
    }
}

pub(crate) fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (0x100), plus IS_REMOTE (0x200) when it is.
    let mut f = u32::from(trace_flags) | 0x100;
    if parent_is_remote {
        f |= 0x200;
    }
    f
}
