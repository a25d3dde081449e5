//! Which requests get traced: the standard `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
//! settings, with the ratio samplers implemented as OpenTelemetry's *consistent probability
//! sampling* so a backend can count what was not sampled.
//!
//! Why not the SDK's `TraceIdRatioBased`: it does not say what probability it sampled with, so
//! a backend deriving request rates from spans (redline does) under-counts by the ratio. The
//! consistent sampler (OpenTelemetry specification, "TraceState: Probability Sampling") samples
//! a trace when the randomness of its trace id (the low 56 bits) is at or above a rejection
//! threshold and writes that threshold into the W3C `tracestate` as `ot=th:…`; every span of the
//! trace (children and, through propagation, the downstream service's spans) carries it, and the
//! backend weights each span by its adjusted count, 1 / probability.
//!
//! [`Sampling`] is the SDK tracer provider's sampler (it implements the SDK's [`ShouldSample`]),
//! so every span of the service — the API's own, and those that libraries and `tracing` start
//! through the global provider — gets the same decision and the same `tracestate`. The request
//! path also asks it ([`Sampling::follows_parent`]) before building a child span's attributes:
//! under a parent that is not sampled, no child span is started at all.

use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

/// 2^56: trace-id randomness and thresholds are 56-bit numbers.
const MAX_THRESHOLD: u64 = 1 << 56;

/// The configured sampler, in a form the request path can evaluate before building a span.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    root: Root,
    /// Children follow their parent's decision (the `parentbased_*` samplers, the default).
    parent_based: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sample when the trace id's randomness is ≥ `threshold`; `th` is its tracestate form.
    Probability {
        threshold: u64,
        th: String,
    },
}

impl Default for Sampling {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Sampling {
            root: Root::AlwaysOn,
            parent_based: true,
        }
    }
}

impl Sampling {
    /// Reads `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`, and their
    /// `parentbased_` forms) and `OTEL_TRACES_SAMPLER_ARG` (the ratio, 1.0 by default). Unknown
    /// names fall back to the default, as the specification asks.
    pub fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Self::parse(&name, arg.as_deref())
    }

    pub fn parse(name: &str, arg: Option<&str>) -> Self {
        let name = name.trim().to_ascii_lowercase();
        let (parent_based, root) = match name.strip_prefix("parentbased_") {
            Some(rest) => (true, rest.to_string()),
            None if name.is_empty() => (true, "always_on".to_string()),
            None => (false, name),
        };
        let root = match root.as_str() {
            "always_off" => Root::AlwaysOff,
            "traceidratio" => {
                let ratio = arg
                    .and_then(|a| a.trim().parse::<f64>().ok())
                    .unwrap_or(1.0);
                Self::probability(ratio)
            }
            _ => Root::AlwaysOn,
        };
        Sampling { root, parent_based }
    }

    /// Samples each trace with probability `ratio` (clamped to 0..=1).
    pub fn ratio(ratio: f64) -> Self {
        Sampling {
            root: Self::probability(ratio),
            parent_based: true,
        }
    }

    fn probability(ratio: f64) -> Root {
        if ratio.is_nan() || ratio <= 0.0 {
            return Root::AlwaysOff;
        }
        if ratio >= 1.0 {
            return Root::AlwaysOn;
        }
        // The threshold rejects the lowest (1 − ratio) share of the 2^56 randomness values.
        // (Computed from the kept share: 1 − ratio loses precision, 0.1 would not give e666….)
        let kept = ((ratio * MAX_THRESHOLD as f64).round() as u64).clamp(1, MAX_THRESHOLD);
        let threshold = MAX_THRESHOLD - kept;
        if threshold == 0 {
            return Root::AlwaysOn;
        }
        Root::Probability {
            threshold,
            th: encode_threshold(threshold),
        }
    }

    /// The decision for a span under `parent` (the invalid context for a root), in a trace
    /// with id `trace_id`, and the `tracestate` the span gets.
    pub fn sample(&self, parent: &SpanContext, trace_id: TraceId) -> Decision {
        if self.parent_based && parent.is_valid() {
            return Decision {
                sampled: parent.is_sampled(),
                trace_state: parent.trace_state().clone(),
            };
        }
        let sampled = match &self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Probability { threshold, .. } => randomness(trace_id) >= *threshold,
        };
        let inherited = parent.trace_state();
        Decision {
            sampled,
            trace_state: if sampled {
                self.root_trace_state(inherited)
            } else {
                inherited.clone()
            },
        }
    }

    /// Whether a span whose parent is not sampled is certainly not sampled either, so callers
    /// can skip building its attributes.
    pub fn follows_parent(&self) -> bool {
        self.parent_based
    }

    /// Whether no span is ever sampled (`always_off`), whatever its parent says.
    pub fn never_samples(&self) -> bool {
        self.root == Root::AlwaysOff && !self.parent_based
    }

    /// The `tracestate` of a span sampled by the root sampler: `ot=th:…` for a probability,
    /// `th:0` (probability 1) when an inherited `ot` entry would otherwise claim less.
    fn root_trace_state(&self, inherited: &TraceState) -> TraceState {
        let th = match &self.root {
            Root::Probability { th, .. } => th.as_str(),
            _ if inherited.get("ot").is_some() => "0",
            _ => return inherited.clone(),
        };
        inherited
            .insert("ot", format!("th:{th}"))
            .unwrap_or_else(|_| inherited.clone())
    }
}

impl ShouldSample for Sampling {
    /// The SDK asks before it builds a span; the answer depends on the parent and the trace id
    /// only (name, kind, attributes and links play no part, so callers may set them later).
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let decision = match parent_context {
            Some(cx) => self.sample(cx.span().span_context(), trace_id),
            None => self.sample(&SpanContext::NONE, trace_id),
        };
        SamplingResult {
            decision: if decision.sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: decision.trace_state,
        }
    }
}

/// A sampling decision and the `tracestate` that goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub sampled: bool,
    pub trace_state: TraceState,
}

/// The randomness the threshold is compared with: the low 56 bits of the trace id (W3C trace
/// context level 2 makes them random).
fn randomness(trace_id: TraceId) -> u64 {
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&bytes[9..]);
    u64::from_be_bytes(low)
}

/// A threshold as `th` writes it: 14 hex digits with trailing zeros dropped (`0` for zero).
fn encode_threshold(threshold: u64) -> String {
    let hex = format!("{threshold:014x}");
    let trimmed = hex.trim_end_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags};

    fn trace_id_with_randomness(r: u64) -> TraceId {
        let mut b = [0xabu8; 16];
        b[8..].copy_from_slice(&r.to_be_bytes());
        b[8] = 0xcd; // the byte above the 56 random bits is not part of the randomness
        TraceId::from_bytes(b)
    }

    fn sample(s: &Sampling, parent: &SpanContext, r: u64) -> Decision {
        s.sample(parent, trace_id_with_randomness(r))
    }

    #[test]
    fn thresholds_are_written_as_the_specification_shows() {
        assert_eq!(encode_threshold(0), "0");
        assert_eq!(encode_threshold(1 << 55), "8");
        assert_eq!(encode_threshold(0xc0000000000000), "c");
        assert_eq!(encode_threshold(0xf0000000000000), "f");
        assert_eq!(encode_threshold(0x00000000000001), "00000000000001");
        // 1/10: the specification's example threshold for 10 %.
        let Root::Probability { th, .. } = Sampling::probability(0.1) else {
            panic!("a probability")
        };
        assert_eq!(th, "e6666666666666");
    }

    #[test]
    fn the_ratio_decides_by_trace_id_randomness_and_records_the_threshold() {
        let s = Sampling::ratio(0.25); // threshold 0xc0000000000000
        let root = SpanContext::empty_context();
        let kept = sample(&s, &root, 0xc0000000000000);
        assert!(kept.sampled);
        assert_eq!(kept.trace_state.get("ot"), Some("th:c"));
        let dropped = sample(&s, &root, 0xbfffffffffffff);
        assert!(!dropped.sampled);
        // About a quarter of uniformly spread trace ids.
        let kept = (0..4096u64)
            .filter(|i| sample(&s, &root, i << 44).sampled)
            .count();
        assert_eq!(kept, 1024);
    }

    #[test]
    fn children_follow_the_parent_and_keep_its_trace_state() {
        let s = Sampling::ratio(0.25);
        let state = TraceState::from_key_value([("vendor", "x"), ("ot", "th:c")]).unwrap();
        let parent_sc = |flags| {
            SpanContext::new(
                trace_id_with_randomness(0),
                SpanId::from_bytes([1; 8]),
                flags,
                true,
                state.clone(),
            )
        };
        // Randomness 0 would be dropped at the root; the sampled parent decides.
        let r = sample(&s, &parent_sc(TraceFlags::SAMPLED), 0);
        assert!(r.sampled);
        assert_eq!(r.trace_state, state);
        assert!(!sample(&s, &parent_sc(TraceFlags::default()), u64::MAX).sampled);
    }

    #[test]
    fn environment_names_map_to_samplers() {
        assert_eq!(Sampling::parse("", None), Sampling::default());
        assert_eq!(Sampling::parse("bogus", None).root, Root::AlwaysOn);
        let off = Sampling::parse("always_off", None);
        assert!(!sample(&off, &SpanContext::empty_context(), u64::MAX).sampled);
        let ratio = Sampling::parse("parentbased_traceidratio", Some("0.5"));
        assert!(ratio.follows_parent());
        assert_eq!(ratio.root, Sampling::probability(0.5));
        assert_eq!(
            Sampling::parse("traceidratio", Some("1")).root,
            Root::AlwaysOn
        );
        assert_eq!(
            Sampling::parse("traceidratio", Some("0")).root,
            Root::AlwaysOff
        );
        assert!(!Sampling::parse("traceidratio", Some("0.5")).follows_parent());
    }

    /// What the SDK's tracer sees: the same decision and `tracestate` as [`Sampling::sample`],
    /// for a root and under a parent carried in a `Context`.
    #[test]
    fn the_sdk_sampler_interface_gives_the_same_decisions() {
        let s = Sampling::ratio(0.25);
        let ask = |cx: Option<&Context>, r: u64| {
            s.should_sample(
                cx,
                trace_id_with_randomness(r),
                "GET",
                &SpanKind::Server,
                &[],
                &[],
            )
        };
        let kept = ask(None, 0xc0000000000000);
        assert_eq!(kept.decision, SamplingDecision::RecordAndSample);
        assert_eq!(kept.trace_state.get("ot"), Some("th:c"));
        let dropped = ask(Some(&Context::new()), 0xbfffffffffffff);
        assert_eq!(dropped.decision, SamplingDecision::Drop);
        assert_eq!(dropped.trace_state.get("ot"), None);
        let parent = SpanContext::new(
            trace_id_with_randomness(0),
            SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("ot", "th:c")]).unwrap(),
        );
        let child = ask(Some(&Context::new().with_remote_span_context(parent)), 0);
        assert_eq!(child.decision, SamplingDecision::RecordAndSample);
        assert_eq!(child.trace_state.get("ot"), Some("th:c"));
        assert!(Sampling::parse("always_off", None).never_samples());
        assert!(!Sampling::parse("parentbased_always_off", None).never_samples());
    }

    #[test]
    fn an_always_on_root_under_an_inherited_threshold_claims_probability_one() {
        let s = Sampling::parse("always_on", None);
        let state = TraceState::from_key_value([("ot", "th:f")]).unwrap();
        let parent = SpanContext::new(
            trace_id_with_randomness(0),
            SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        let r = sample(&s, &parent, 0);
        assert_eq!(r.trace_state.get("ot"), Some("th:0"));
    }
}
