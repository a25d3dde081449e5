//! Serde for the `f64` fields redline stores as JSON text: finite values as JSON numbers, NaN
//! and the infinities as the strings `"NaN"`, `"+Inf"` and `"-Inf"` (Prometheus' spelling).
//! serde_json on its own writes every non-finite value as `null`, which cannot be read back as
//! an `f64`: one overflowed sum would make its row unreadable for as long as it is kept.
//!
//! Use with `#[serde(with = "crate::model::json_float")]` (an `f64`), `…::option` (an
//! `Option<f64>`, `null` being `None`), `…::vec` (a `Vec<f64>`), or
//! `…::null_as_positive_infinity` / `…::null_as_negative_infinity` for fields where a stored
//! `null` (plain serde_json's spelling of an infinity) means that infinity.
//!
//! Finite values read back bit for bit because the crate enables serde_json's
//! `float_roundtrip` feature (its default parser may be one unit in the last place off).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

const NAN: &str = "NaN";
const POSITIVE_INFINITY: &str = "+Inf";
const NEGATIVE_INFINITY: &str = "-Inf";

pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        serializer.serialize_str(non_finite_name(*value))
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(FloatVisitor { null: None })
}

fn non_finite_name(value: f64) -> &'static str {
    if value.is_nan() {
        NAN
    } else if value > 0.0 {
        POSITIVE_INFINITY
    } else {
        NEGATIVE_INFINITY
    }
}

fn parse_name(text: &str) -> Option<f64> {
    match text {
        NAN => Some(f64::NAN),
        POSITIVE_INFINITY | "Inf" => Some(f64::INFINITY),
        NEGATIVE_INFINITY => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Reads a number or one of the non-finite names; `null` reads as `null` when that is set.
struct FloatVisitor {
    null: Option<f64>,
}

impl<'de> Visitor<'de> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, \"NaN\", \"+Inf\" or \"-Inf\"")
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
        parse_name(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }

    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        self.null
            .ok_or_else(|| E::invalid_type(de::Unexpected::Unit, &self))
    }

    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// `null` (plain serde_json's spelling of an infinity, which stored rows may hold) reads as +∞.
pub mod null_as_positive_infinity {
    pub use super::serialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(super::FloatVisitor {
            null: Some(f64::INFINITY),
        })
    }
}

/// `null` (plain serde_json's spelling of an infinity, which stored rows may hold) reads as −∞.
pub mod null_as_negative_infinity {
    pub use super::serialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_any(super::FloatVisitor {
            null: Some(f64::NEG_INFINITY),
        })
    }
}

/// An `Option<f64>`: `None` is `null`, `Some` as [`super::json_float`].
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<f64>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null, a number, \"NaN\", \"+Inf\" or \"-Inf\"")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<f64>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<f64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Option<f64>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }
}

/// A `Vec<f64>`, each element as [`super::json_float`].
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&Element(*value))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
        deserializer.deserialize_seq(SeqVisitor)
    }

    struct Element(f64);

    impl serde::Serialize for Element {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            super::serialize(&self.0, serializer)
        }
    }

    impl<'de> serde::Deserialize<'de> for Element {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::deserialize(deserializer).map(Element)
        }
    }

    struct SeqVisitor;

    impl<'de> Visitor<'de> for SeqVisitor {
        type Value = Vec<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of numbers")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f64>, A::Error> {
            // The size hint comes from the input: cap the preallocation, let the rest grow.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(Element(value)) = seq.next_element()? {
                out.push(value);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Sample {
        #[serde(with = "super")]
        plain: f64,
        #[serde(with = "super::option")]
        maybe: Option<f64>,
        #[serde(with = "super::vec")]
        many: Vec<f64>,
        #[serde(with = "super::null_as_positive_infinity")]
        low: f64,
        #[serde(with = "super::null_as_negative_infinity")]
        high: f64,
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            proptest::num::f64::ANY,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            // Every bit pattern: subnormals, NaN payloads, all exponents.
            any::<u64>().prop_map(f64::from_bits),
        ]
    }

    /// Bit-exact, except that every NaN is a NaN (JSON keeps no payload).
    fn same(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn every_f64_reads_back_as_written(
            plain in any_f64(),
            maybe in proptest::option::of(any_f64()),
            many in proptest::collection::vec(any_f64(), 0..8),
            low in any_f64(),
            high in any_f64(),
        ) {
            let sample = Sample { plain, maybe, many: many.clone(), low, high };
            let text = serde_json::to_string(&sample).unwrap();
            let back: Sample = serde_json::from_str(&text).unwrap();
            prop_assert!(same(back.plain, plain), "{text}");
            prop_assert_eq!(back.maybe.is_some(), maybe.is_some());
            if let (Some(a), Some(b)) = (back.maybe, maybe) {
                prop_assert!(same(a, b), "{text}");
            }
            prop_assert_eq!(back.many.len(), many.len());
            for (a, b) in back.many.iter().zip(&many) {
                prop_assert!(same(*a, *b), "{text}");
            }
            prop_assert!(same(back.low, low) && same(back.high, high), "{text}");
        }
    }

    #[test]
    fn non_finite_values_are_written_as_prometheus_names() {
        let sample = Sample {
            plain: f64::NAN,
            maybe: Some(f64::INFINITY),
            many: vec![f64::NEG_INFINITY, 1.5],
            low: 0.0,
            high: -2.0,
        };
        assert_eq!(
            serde_json::to_string(&sample).unwrap(),
            r#"{"plain":"NaN","maybe":"+Inf","many":["-Inf",1.5],"low":0.0,"high":-2.0}"#
        );
    }

    #[test]
    fn null_reads_as_the_legacy_infinity_or_none_and_is_refused_elsewhere() {
        let legacy = r#"{"plain":1,"maybe":null,"many":[2],"low":null,"high":null}"#;
        let sample: Sample = serde_json::from_str(legacy).unwrap();
        assert_eq!(sample.plain, 1.0);
        assert_eq!(sample.maybe, None);
        assert_eq!(
            (sample.low, sample.high),
            (f64::INFINITY, f64::NEG_INFINITY)
        );
        let null_plain = r#"{"plain":null,"maybe":null,"many":[],"low":0,"high":0}"#;
        assert!(serde_json::from_str::<Sample>(null_plain).is_err());
        let null_element = r#"{"plain":0,"maybe":null,"many":[null],"low":0,"high":0}"#;
        assert!(serde_json::from_str::<Sample>(null_element).is_err());
        let unknown_name = r#"{"plain":"Infinity","maybe":null,"many":[],"low":0,"high":0}"#;
        assert!(serde_json::from_str::<Sample>(unknown_name).is_err());
    }
}
