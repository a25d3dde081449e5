//! How many requests one span stands for: its *adjusted count* under OpenTelemetry's consistent
//! probability sampling, read from the sampling threshold its SDK (or a collector) recorded in
//! the span's W3C `tracestate`.
//!
//! The rules are those of the OpenTelemetry specification, "TraceState: Probability Sampling"
//! (<https://opentelemetry.io/docs/specs/otel/trace/tracestate-probability-sampling/>, from
//! OTEP 235) and "TraceState Handling"
//! (<https://opentelemetry.io/docs/specs/otel/trace/tracestate-handling/>):
//!
//! - The W3C `tracestate` is a `,`-separated list of `key=value` members; spaces and tabs around
//!   a member are ignored, and empty members are allowed.
//! - OpenTelemetry's member has the key `ot`; its value is a `;`-separated list of `key:value`
//!   sub-keys (e.g. `ot=rv:…;th:c`).
//! - The sub-key `th` is the *rejection threshold*: 1 to 14 hexadecimal digits with trailing
//!   zeros omitted. Extended with zeros to 14 digits it is a 56-bit number T; a span is kept
//!   when its 56 bits of randomness are ≥ T. The sampling probability is (2^56 − T) / 2^56 and
//!   the adjusted count 2^56 / (2^56 − T): `th:0` → 1, `th:8` → 2, `th:c` → 4, `th:f` → 16.
//! - A span without a threshold was not probability-sampled (or its sampler did not say how):
//!   its adjusted count is undefined, and redline counts it as one request, as it always did.
//!   So does a span whose `ot` member or `th` value is malformed.
//!
//! Two choices of redline's own:
//!
//! - **Rounding.** RED counts are integers, but adjusted counts need not be (probability 0.3 →
//!   3.33…). A span with adjusted count `a` counts as ⌊a⌋, or ⌊a⌋ + 1 with probability equal to
//!   the fractional part of `a`, so the expected count is exactly `a` (unbiased) and totals over
//!   many spans converge on the estimate. The coin is the span id, scrambled by the SplitMix64
//!   finaliser (a bijection, so random ids stay uniform and sequential ids still spread out): the
//!   same span always counts the same, whichever receiver or retry delivers it. Not the trace
//!   id: its low 56 bits are the randomness that decided the sampling, so among kept spans they
//!   are biased (≥ T), and every span of a trace would round the same way.
//! - **Cap.** A threshold close to 2^56 means an absurd adjusted count (up to 2^56 for
//!   `th:ffffffffffffff`), which a single span should not be allowed to pour into a dashboard.
//!   Counts are capped at [`MAX_ADJUSTED_COUNT`] (2^20 = 1,048,576: a sampling probability down
//!   to about one in a million is honoured exactly). The arithmetic is in integers, so nothing
//!   overflows whatever the threshold.

/// The largest number of requests one span may stand for; larger adjusted counts are capped.
pub const MAX_ADJUSTED_COUNT: u32 = 1 << 20;

/// 2^56: the number of distinct 56-bit randomness values (the specification's
/// `MaxAdjustedCount`).
const RANDOMNESS_RANGE: u64 = 1 << 56;

/// Hex digits of a full 56-bit threshold.
const THRESHOLD_DIGITS: usize = 14;

/// The span's adjusted count (see the module docs): 1 unless `trace_state` carries a valid
/// OpenTelemetry sampling threshold, capped at [`MAX_ADJUSTED_COUNT`], rounded to an integer by
/// a coin drawn from `span_id`.
pub fn adjusted_count(trace_state: &str, span_id: &[u8]) -> u32 {
    if trace_state.is_empty() {
        return 1;
    }
    let Some(threshold) = threshold(trace_state) else {
        return 1;
    };
    // `threshold` < 2^56, so 1 ≤ kept ≤ 2^56 and the adjusted count 2^56 / kept is ≥ 1.
    let kept = RANDOMNESS_RANGE - threshold;
    let whole = RANDOMNESS_RANGE / kept;
    if whole >= u64::from(MAX_ADJUSTED_COUNT) {
        return MAX_ADJUSTED_COUNT;
    }
    let remainder = RANDOMNESS_RANGE % kept;
    // Round up when u < remainder / kept, u uniform in [0, 1): u = coin / 2^64, compared
    // exactly in 128 bits (coin · kept < 2^120, remainder · 2^64 < 2^120).
    let round_up = remainder != 0
        && u128::from(coin(span_id)) * u128::from(kept) < u128::from(remainder) << 64;
    whole as u32 + u32::from(round_up)
}

/// The rejection threshold T (56 bits) of the first `ot` member's `th` sub-key, if present and
/// valid: 1 to 14 hex digits, padded with trailing zeros to 14. The specification's grammar
/// (`hexdigit = DIGIT ; A-F ; a-f`) admits either case; SDKs write lowercase.
pub fn threshold(trace_state: &str) -> Option<u64> {
    let ot = trace_state
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .find_map(|member| member.strip_prefix("ot="))?;
    // Sub-keys are unique; the first `th` is the one read.
    let digits = ot.split(';').find_map(|sub| sub.strip_prefix("th:"))?;
    if digits.is_empty() || digits.len() > THRESHOLD_DIGITS {
        return None;
    }
    let mut value = 0u64;
    for c in digits.chars() {
        value = (value << 4) | u64::from(c.to_digit(16)?);
    }
    Some(value << (4 * (THRESHOLD_DIGITS - digits.len())))
}

/// A uniform 64-bit value derived from the span id: its bytes (big-endian, as the hex id reads)
/// through the SplitMix64 finaliser.
fn coin(span_id: &[u8]) -> u64 {
    let mut z = span_id
        .iter()
        .take(8)
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAN: [u8; 8] = [0x5a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71];

    fn count(trace_state: &str) -> u32 {
        adjusted_count(trace_state, &SPAN)
    }

    #[test]
    fn thresholds_pad_to_fourteen_hex_digits() {
        assert_eq!(threshold("ot=th:8"), Some(0x80_0000_0000_0000));
        assert_eq!(threshold("ot=th:c"), Some(0xc0_0000_0000_0000));
        assert_eq!(threshold("ot=th:f"), Some(0xf0_0000_0000_0000));
        assert_eq!(threshold("ot=th:0"), Some(0));
        assert_eq!(threshold("ot=th:fd70a4"), Some(0xfd_70a4_0000_0000));
        assert_eq!(
            threshold("ot=th:ffffffffffffff"),
            Some(RANDOMNESS_RANGE - 1)
        );
        // Either case of hex digit, as the specification's grammar allows.
        assert_eq!(threshold("ot=th:C"), Some(0xc0_0000_0000_0000));
    }

    #[test]
    fn power_of_two_probabilities_give_exact_counts() {
        assert_eq!(count("ot=th:0"), 1);
        assert_eq!(count("ot=th:8"), 2);
        assert_eq!(count("ot=th:c"), 4);
        assert_eq!(count("ot=th:e"), 8);
        assert_eq!(count("ot=th:f"), 16);
        assert_eq!(count("ot=th:ff"), 256);
        // Exact counts do not depend on the span id.
        for id in 0u64..64 {
            assert_eq!(adjusted_count("ot=th:c", &id.to_be_bytes()), 4);
        }
    }

    #[test]
    fn the_ot_member_is_found_among_other_vendors() {
        assert_eq!(count("vendor=x,ot=th:c"), 4);
        assert_eq!(count("ot=th:c,vendor=x"), 4);
        assert_eq!(count("a=1,b@tenant=2,ot=th:f,c=3"), 16);
        // Other `ot` sub-keys, before or after `th`.
        assert_eq!(count("vendor=x,ot=rv:0123456789abcd;th:c"), 4);
        assert_eq!(count("ot=th:8;rv:0123456789abcd"), 2);
        assert_eq!(count("ot=p:8;r:62;th:f;k1:13"), 16);
        // Spaces and tabs around members (W3C OWS) and empty members.
        assert_eq!(count("vendor=x , \tot=th:c\t"), 4);
        assert_eq!(count(" ot=th:8 "), 2);
        assert_eq!(count("vendor=x,,  ,ot=th:c"), 4);
        // Keys that merely resemble `ot` or `th`.
        assert_eq!(count("xot=th:c"), 1);
        assert_eq!(count("ot@vendor=th:c"), 1);
        assert_eq!(count("vendor=ot=th:c"), 1);
        assert_eq!(count("ot=xth:c"), 1);
        assert_eq!(count("ot=rv:th:c"), 1);
        // Duplicate keys are invalid tracestate; the first `ot` and the first `th` are read.
        assert_eq!(count("ot=th:c,ot=th:f"), 4);
        assert_eq!(count("ot=th:8;th:f"), 2);
    }

    #[test]
    fn missing_or_invalid_thresholds_count_once() {
        for trace_state in [
            "",
            "vendor=x",
            "ot=rv:0123456789abcd",
            "ot=",
            "ot=th:",
            "ot=th:xyz",
            "ot=th:c0g",
            "ot=th:-1",
            "ot=th:+c",
            "ot=th:0x8",
            "ot=th: c",
            "ot=th:fffffffffffffff", // 15 digits
            "ot=th:1000000000000000",
            "ot=th:é",
            "ot:th=c",
            "ot = th:c",
            "ot=TH:c",
        ] {
            assert_eq!(count(trace_state), 1, "{trace_state:?}");
        }
    }

    #[test]
    fn probability_one_tenth_is_ten_on_average() {
        // th for probability 0.1 with four digits of precision (the specification's table):
        // adjusted count 9.99938968568813.
        let kept = RANDOMNESS_RANGE - threshold("ot=th:e666").unwrap();
        let exact = RANDOMNESS_RANGE as f64 / kept as f64;
        assert!((exact - 9.999_389_685_688_13).abs() < 1e-9);
        let spans = 100_000u64;
        let mut total = 0u64;
        let mut seen = [false; 2];
        for id in 1..=spans {
            // Sequential ids, as some generators make: the scrambled coin still spreads.
            let n = adjusted_count("ot=th:e666", &id.to_be_bytes());
            assert!(n == 9 || n == 10, "{n}");
            seen[(n - 9) as usize] = true;
            total += u64::from(n);
        }
        assert_eq!(seen, [true, true]);
        let mean = total as f64 / spans as f64;
        // The rounding's standard error over 100,000 spans is under 0.001.
        assert!((mean - exact).abs() < 0.005, "mean {mean} vs {exact}");
        // Probability 0.3 (th:b333): 3.33…, so 3 or 4, a third of the time 4.
        let thirds: u64 = (1..=30_000u64)
            .map(|id| u64::from(adjusted_count("ot=th:b333", &id.to_be_bytes())))
            .sum();
        assert!((thirds as f64 / 30_000.0 - 3.3334).abs() < 0.02, "{thirds}");
    }

    #[test]
    fn the_same_span_always_counts_the_same() {
        let first = adjusted_count("ot=th:b333", &SPAN);
        for _ in 0..10 {
            assert_eq!(adjusted_count("ot=th:b333", &SPAN), first);
        }
    }

    #[test]
    fn absurd_counts_are_capped_without_overflow() {
        assert_eq!(count("ot=th:ffffffffffffff"), MAX_ADJUSTED_COUNT);
        assert_eq!(count("ot=th:fffffffffffff"), MAX_ADJUSTED_COUNT);
        // One in 2^20 is exactly the cap; one in 2^19 is below it.
        assert_eq!(count("ot=th:fffff"), 1 << 20);
        assert_eq!(count("ot=th:ffffe"), 1 << 19);
        // One in a million (th:ffffef39, 999,992.39…) is honoured, rounded.
        let n = count("ot=th:ffffef39");
        assert!(n == 999_992 || n == 999_993, "{n}");
        // Odd span ids (empty, short) do not panic.
        assert_eq!(adjusted_count("ot=th:c", &[]), 4);
        assert!(adjusted_count("ot=th:b333", &[1]) >= 3);
    }
}
