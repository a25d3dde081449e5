//! The latency sketch: a DDSketch (Masson, Rim, Lee, 2019) with one global configuration (1 %
//! relative accuracy), so any two sketches — windows, rollups, endpoints — merge exactly.
//!
//! The store is our own dense one; only the key mapping comes from `sketches-ddsketch`
//! ([`Config::key`] and [`Config::value`]). Why not the crate's `DDSketch`: reading a stored
//! sketch with it means decoding into a fresh sketch whose store grows and recentres key by key,
//! then merging that — most of the CPU of a dashboard or API read of many windows. Here the bins
//! of a stored sketch are added straight into the accumulator ([`LatencySketch::merge_encoded`]).
//!
//! Everything observable is the crate's, so stored rows read and write unchanged:
//! - the same bins (key = ⌊ln v / ln γ⌋ for v > 1e-9, smaller values count as zeros), at most
//!   2,048 of them, collapsing the lowest keys first (the guarantee then holds above them);
//! - the same quantile rule: rank ⌊q·(n−1)⌋, exact min and max at q = 0 and 1;
//! - the same bytes: the Java-compatible DDSketch encoding the crate writes (tests compare both
//!   bit for bit).

use std::cell::RefCell;
use std::sync::LazyLock;

use sketches_ddsketch::Config;

/// Relative accuracy of every quantile read from a [`LatencySketch`].
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Values at or below this count as zero (the crate's default minimum).
const MIN_VALUE: f64 = 1e-9;
/// At most this many bins: the lowest keys collapse beyond it (the crate's default).
const MAX_BINS: i32 = 2048;
/// Keys allocated at least beyond the current range on each side when the store grows, so a
/// window filling up reallocates a few times, not once per new key.
const SLACK: i32 = 16;
/// Keys are clamped into ±KEY_LIMIT: far beyond any finite f64 (ln(f64::MAX)/ln γ ≈ 35,000), so
/// finite values are untouched, and key arithmetic cannot overflow on infinities or garbage.
const KEY_LIMIT: i64 = 1 << 20;

/// The one configuration: α = 1 %, 2,048 bins, minimum 1e-9 (ms: 1 fs … years fit uncollapsed).
static CONFIG: LazyLock<Config> =
    LazyLock::new(|| Config::new(RELATIVE_ACCURACY, MAX_BINS as u32, MIN_VALUE));

#[derive(Debug, thiserror::Error)]
#[error("stored latency sketch is unreadable: {0}")]
pub struct SketchDecodeError(String);

fn corrupt(what: impl Into<String>) -> SketchDecodeError {
    SketchDecodeError(what.into())
}

/// A mergeable latency distribution, values in milliseconds.
#[derive(Clone)]
pub struct LatencySketch {
    /// Counts of keys `offset .. offset + bins.len()`; empty while no value above zero is kept.
    bins: Vec<u64>,
    offset: i32,
    /// Every non-zero bin lies in `min_key ..= max_key` (valid while `store_count > 0`).
    min_key: i32,
    max_key: i32,
    store_count: u64,
    zero_count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.count())
            .finish()
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch {
            bins: Vec::new(),
            offset: 0,
            min_key: 0,
            max_key: 0,
            store_count: 0,
            zero_count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
        }
    }
}

fn clamp_key(key: i64) -> i32 {
    key.clamp(-KEY_LIMIT, KEY_LIMIT) as i32
}

impl LatencySketch {
    pub fn add(&mut self, value_ms: f64) {
        self.add_with_count(value_ms, 1);
    }

    pub fn add_with_count(&mut self, value_ms: f64, count: u64) {
        if count == 0 {
            return;
        }
        let v = value_ms.max(0.0);
        if v > MIN_VALUE {
            let key = clamp_key(CONFIG.key(v) as i64);
            self.make_room(key, key);
            self.add_key(key, count);
        } else {
            self.zero_count = self.zero_count.saturating_add(count);
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v * count as f64;
    }

    /// Widens the store so keys `lo ..= hi` can be added, collapsing the lowest keys into the
    /// lowest kept one when the range would exceed [`MAX_BINS`].
    fn make_room(&mut self, lo: i32, hi: i32) {
        let (wanted_min, new_max) = if self.store_count == 0 {
            (lo, hi)
        } else {
            (self.min_key.min(lo), self.max_key.max(hi))
        };
        let floor = new_max - (MAX_BINS - 1);
        let new_min = wanted_min.max(floor);
        let end = self.offset + self.bins.len() as i32;
        let fits = !self.bins.is_empty() && new_min >= self.offset && new_max < end;
        if !fits {
            // Room to grow by a quarter more on each side: an accumulator summing many rows
            // widens a little with most of them, and should not reallocate with each.
            let slack = SLACK.max((new_max - new_min + 1) / 4);
            let start = (new_min - slack).max(floor);
            let mut bins = vec![0u64; (new_max + slack - start + 1) as usize];
            if self.store_count > 0 {
                for key in self.min_key..=self.max_key {
                    let count = self.bins[(key - self.offset) as usize];
                    if count != 0 {
                        let bin = &mut bins[(key.max(new_min) - start) as usize];
                        *bin = bin.saturating_add(count);
                    }
                }
            }
            self.bins = bins;
            self.offset = start;
        } else if self.store_count > 0 && new_min > self.min_key {
            // The range grew upwards past the limit: fold the lowest keys into the new lowest.
            let mut folded: u64 = 0;
            for key in self.min_key..new_min {
                folded = folded
                    .saturating_add(std::mem::take(&mut self.bins[(key - self.offset) as usize]));
            }
            let bin = &mut self.bins[(new_min - self.offset) as usize];
            *bin = bin.saturating_add(folded);
        }
        self.min_key = new_min;
        self.max_key = new_max;
    }

    /// Adds to a key after [`Self::make_room`] covered it (keys below the kept range collapse).
    fn add_key(&mut self, key: i32, count: u64) {
        let key = key.max(self.min_key);
        // Saturating: counts come from clients and stored rows, and are not trusted to fit.
        let bin = &mut self.bins[(key - self.offset) as usize];
        *bin = bin.saturating_add(count);
        self.store_count = self.store_count.saturating_add(count);
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        if other.store_count > 0 {
            self.make_room(other.min_key, other.max_key);
            for key in other.min_key..=other.max_key {
                let count = other.bins[(key - other.offset) as usize];
                if count != 0 {
                    self.add_key(key, count);
                }
            }
        }
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Merges an encoded sketch (as [`Self::encode`] writes it) into this one: the same result as
    /// `self.merge(&LatencySketch::decode(bytes)?)`, without building the other sketch — its bins
    /// are added straight into this store. On error `self` is unchanged.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), SketchDecodeError> {
        thread_local! {
            /// Decoded bins of one sketch, reused: a read merges thousands of rows.
            static BINS: RefCell<Vec<(i32, u64)>> = const { RefCell::new(Vec::new()) };
        }
        BINS.with(|scratch| {
            let mut bins = scratch.borrow_mut();
            bins.clear();
            let decoded = decode_into(bytes, &mut bins)?;
            if let (Some(lo), Some(hi)) = (
                bins.iter().map(|b| b.0).min(),
                bins.iter().map(|b| b.0).max(),
            ) {
                self.make_room(lo, hi);
                for &(key, count) in bins.iter() {
                    self.add_key(key, count);
                }
            }
            self.zero_count = self.zero_count.saturating_add(decoded.zero_count);
            self.min = self.min.min(decoded.min);
            self.max = self.max.max(decoded.max);
            self.sum += decoded.sum;
            // Keep the scratch bounded after an unusually wide sketch.
            if bins.capacity() > 4 * MAX_BINS as usize {
                *bins = Vec::new();
            }
            Ok(())
        })
    }

    pub fn count(&self) -> u64 {
        self.store_count.saturating_add(self.zero_count)
    }

    /// Bytes its bins take on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<u64>()
    }

    /// The value at rank ⌊q·(n−1)⌋, within 1 % relative error; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let q = q.clamp(0.0, 1.0);
        if q.is_nan() || self.count() == 0 {
            return None;
        }
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count() as f64 - 1.0)) as u64;
        if rank < self.zero_count {
            return Some(0.0);
        }
        Some(CONFIG.value(self.key_at_rank(rank - self.zero_count)))
    }

    fn key_at_rank(&self, rank: u64) -> i32 {
        let mut seen: u64 = 0;
        for (i, count) in self.bins.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen > rank {
                return i as i32 + self.offset;
            }
        }
        self.max_key
    }

    /// The Java-compatible DDSketch encoding, byte for byte what `sketches-ddsketch` writes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(48 + 3 * (self.max_key - self.min_key + 1).max(0) as usize);
        let count = self.count() as f64;
        if count != 0.0 {
            out.push(FLAG_COUNT);
            encode_var_double(&mut out, count);
            out.push(FLAG_MIN);
            out.extend_from_slice(&self.min.to_le_bytes());
            out.push(FLAG_MAX);
            out.extend_from_slice(&self.max.to_le_bytes());
        }
        if self.sum != 0.0 {
            out.push(FLAG_SUM);
            out.extend_from_slice(&self.sum.to_le_bytes());
        }
        out.push(FLAG_INDEX_MAPPING_LOG);
        out.extend_from_slice(&CONFIG.gamma.to_le_bytes());
        out.extend_from_slice(&0.0f64.to_le_bytes());
        if self.zero_count != 0 {
            out.push(FLAG_ZERO_COUNT);
            encode_var_double(&mut out, self.zero_count as f64);
        }
        if self.store_count > 0 {
            let kept = || {
                (self.min_key..=self.max_key)
                    .map(|key| (key, self.bins[(key - self.offset) as usize]))
                    .filter(|(_, count)| *count > 0)
            };
            out.push(FLAG_POSITIVE_INDEX_DELTAS_AND_COUNTS);
            encode_unsigned_var_long(&mut out, kept().count() as u64);
            let mut previous = 0i64;
            for (key, count) in kept() {
                encode_signed_var_long(&mut out, key as i64 - previous);
                encode_var_double(&mut out, count as f64);
                previous = key as i64;
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SketchDecodeError> {
        let mut sketch = LatencySketch::default();
        sketch.merge_encoded(bytes)?;
        Ok(sketch)
    }
}

// The encoding (sketches-java's `DDSketchWithExactSummaryStatistics`, as ported by
// `sketches-ddsketch` 0.4): flag bytes `(subflag << 2) | type`, var-length integers and doubles.
const FLAG_INDEX_MAPPING_LOG: u8 = 0x02;
const FLAG_ZERO_COUNT: u8 = 0x04;
const FLAG_COUNT: u8 = 0xA0;
const FLAG_SUM: u8 = 0x84;
const FLAG_MIN: u8 = 0x88;
const FLAG_MAX: u8 = 0x8C;
const FLAG_POSITIVE_INDEX_DELTAS_AND_COUNTS: u8 = (1 << 2) | 1;
const TYPE_FEATURES: u8 = 0;
const TYPE_POSITIVE_STORE: u8 = 1;
const TYPE_INDEX_MAPPING: u8 = 2;
const TYPE_NEGATIVE_STORE: u8 = 3;
const MODE_INDEX_DELTAS_AND_COUNTS: u8 = 1;
const MODE_INDEX_DELTAS: u8 = 2;
const MODE_CONTIGUOUS_COUNTS: u8 = 3;

/// Everything of an encoded sketch but its bins.
struct Decoded {
    zero_count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Parses `bytes` (the crate's decoder, rule for rule), pushing positive bins onto `bins`.
fn decode_into(bytes: &[u8], bins: &mut Vec<(i32, u64)>) -> Result<Decoded, SketchDecodeError> {
    if bytes.is_empty() {
        return Err(corrupt("empty"));
    }
    let mut input = bytes;
    // An optional version prefix: 0x02 followed by a valid flag byte.
    if input.len() >= 2 && input[0] == 0x02 && is_valid_flag_byte(input[1]) {
        input = &input[1..];
    }
    let mut decoded = Decoded {
        zero_count: 0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };
    let mut zero_count = 0.0;
    while !input.is_empty() {
        let flag = read_byte(&mut input)?;
        let subflag = flag >> 2;
        match flag & 0x03 {
            TYPE_INDEX_MAPPING => {
                let gamma = read_f64(&mut input)?;
                let _index_offset = read_f64(&mut input)?;
                // The crate refuses to merge sketches of another configuration.
                if gamma != CONFIG.gamma {
                    return Err(corrupt(format!("relative accuracy differs (γ = {gamma})")));
                }
            }
            TYPE_FEATURES => match flag {
                FLAG_ZERO_COUNT => zero_count += decode_var_double(&mut input)?,
                FLAG_COUNT => {
                    decode_var_double(&mut input)?;
                }
                FLAG_SUM => decoded.sum = read_f64(&mut input)?,
                FLAG_MIN => decoded.min = read_f64(&mut input)?,
                FLAG_MAX => decoded.max = read_f64(&mut input)?,
                _ => return Err(corrupt(format!("invalid flag byte 0x{flag:02X}"))),
            },
            TYPE_POSITIVE_STORE => decode_store(&mut input, subflag, Some(bins))?,
            TYPE_NEGATIVE_STORE => decode_store(&mut input, subflag, None)?,
            _ => unreachable!("two bits"),
        }
    }
    decoded.zero_count = zero_count as u64;
    Ok(decoded)
}

/// Reads one store's bins; `into` is `None` for the negative store, which must be empty
/// (latencies are never negative).
fn decode_store(
    input: &mut &[u8],
    subflag: u8,
    mut into: Option<&mut Vec<(i32, u64)>>,
) -> Result<(), SketchDecodeError> {
    let num_bins = decode_unsigned_var_long(input)?;
    // Each bin takes at least one byte: a count beyond the input is garbage, not an allocation.
    if num_bins > input.len() as u64 {
        return Err(corrupt("bin count beyond the input"));
    }
    let mut push = |index: i64, count: f64| -> Result<(), SketchDecodeError> {
        let count = count as u64;
        if count == 0 {
            return Ok(());
        }
        match into.as_deref_mut() {
            Some(bins) => bins.push((clamp_key(index), count)),
            None => return Err(corrupt("negative latencies")),
        }
        Ok(())
    };
    match subflag {
        MODE_INDEX_DELTAS_AND_COUNTS => {
            let mut index = 0i64;
            for _ in 0..num_bins {
                index = index.wrapping_add(decode_signed_var_long(input)?);
                let count = decode_var_double(input)?;
                push(index, count)?;
            }
        }
        MODE_INDEX_DELTAS => {
            let mut index = 0i64;
            for _ in 0..num_bins {
                index = index.wrapping_add(decode_signed_var_long(input)?);
                push(index, 1.0)?;
            }
        }
        MODE_CONTIGUOUS_COUNTS => {
            let mut index = decode_signed_var_long(input)?;
            let delta = decode_signed_var_long(input)?;
            for _ in 0..num_bins {
                let count = decode_var_double(input)?;
                push(index, count)?;
                index = index.wrapping_add(delta);
            }
        }
        _ => return Err(corrupt(format!("unknown bin encoding {subflag}"))),
    }
    Ok(())
}

fn is_valid_flag_byte(b: u8) -> bool {
    if matches!(
        b,
        FLAG_ZERO_COUNT | FLAG_COUNT | FLAG_SUM | FLAG_MIN | FLAG_MAX | FLAG_INDEX_MAPPING_LOG
    ) {
        return true;
    }
    let subflag = b >> 2;
    match b & 0x03 {
        TYPE_POSITIVE_STORE | TYPE_NEGATIVE_STORE => (1..=3).contains(&subflag),
        TYPE_INDEX_MAPPING => subflag <= 4,
        _ => false,
    }
}

fn read_byte(input: &mut &[u8]) -> Result<u8, SketchDecodeError> {
    let (&byte, rest) = input.split_first().ok_or_else(|| corrupt("truncated"))?;
    *input = rest;
    Ok(byte)
}

fn read_f64(input: &mut &[u8]) -> Result<f64, SketchDecodeError> {
    let (bytes, rest) = input
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("truncated"))?;
    *input = rest;
    Ok(f64::from_le_bytes(*bytes))
}

fn encode_unsigned_var_long(out: &mut Vec<u8>, mut value: u64) {
    let length = ((63 - value.leading_zeros() as i32) / 7).clamp(0, 8);
    for _ in 0..length {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn decode_unsigned_var_long(input: &mut &[u8]) -> Result<u64, SketchDecodeError> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let next = read_byte(input)?;
        if next < 0x80 || shift == 56 {
            return Ok(value | (u64::from(next) << shift));
        }
        value |= (u64::from(next) & 0x7F) << shift;
        shift += 7;
    }
}

fn encode_signed_var_long(out: &mut Vec<u8>, value: i64) {
    encode_unsigned_var_long(out, ((value >> 63) ^ (value << 1)) as u64);
}

fn decode_signed_var_long(input: &mut &[u8]) -> Result<i64, SketchDecodeError> {
    let encoded = decode_unsigned_var_long(input)?;
    Ok(((encoded >> 1) as i64) ^ -((encoded & 1) as i64))
}

const VAR_DOUBLE_ROTATE: u32 = 6;

fn encode_var_double(out: &mut Vec<u8>, value: f64) {
    let mut bits = f64::to_bits(value + 1.0)
        .wrapping_sub(f64::to_bits(1.0))
        .rotate_left(VAR_DOUBLE_ROTATE);
    for _ in 0..8 {
        let next = (bits >> 57) as u8;
        bits <<= 7;
        if bits == 0 {
            out.push(next);
            return;
        }
        out.push(next | 0x80);
    }
    out.push((bits >> 56) as u8);
}

fn decode_var_double(input: &mut &[u8]) -> Result<f64, SketchDecodeError> {
    let mut bits = 0u64;
    let mut shift = 57i32;
    loop {
        let next = read_byte(input)?;
        if shift == 1 {
            bits |= u64::from(next);
            break;
        }
        if next < 0x80 {
            bits |= u64::from(next) << shift;
            break;
        }
        bits |= (u64::from(next) & 0x7F) << shift;
        shift -= 7;
    }
    Ok(f64::from_bits(
        bits.rotate_right(VAR_DOUBLE_ROTATE)
            .wrapping_add(f64::to_bits(1.0)),
    ) - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sketches_ddsketch::DDSketch;

    fn both(values: &[f64]) -> (LatencySketch, DDSketch) {
        let mut ours = LatencySketch::default();
        let mut theirs = DDSketch::new(Config::defaults());
        for v in values {
            ours.add(*v);
            theirs.add(v.max(0.0));
        }
        (ours, theirs)
    }

    fn skewed(seed: u64, n: usize) -> Vec<f64> {
        // A deterministic spread over nine decades, with zeros and repeats.
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                if i % 50 == 0 {
                    0.0
                } else {
                    1e-4 * 10f64.powf(u * 9.0)
                }
            })
            .collect()
    }

    const QS: [f64; 9] = [0.0, 0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];

    #[test]
    fn same_bytes_and_quantiles_as_the_crate() {
        for seed in 0..20 {
            let (ours, theirs) = both(&skewed(seed, 1 + seed as usize * 97));
            assert_eq!(ours.encode(), theirs.to_java_bytes(), "seed {seed}");
            assert_eq!(ours.count(), theirs.count() as u64);
            for q in QS {
                assert_eq!(ours.quantile(q), theirs.quantile(q).unwrap(), "q {q}");
            }
        }
    }

    #[test]
    fn merges_like_the_crate_in_any_order() {
        let parts: Vec<Vec<f64>> = (0..8).map(|s| skewed(100 + s, 300)).collect();
        let mut ours = LatencySketch::default();
        let mut theirs = DDSketch::new(Config::defaults());
        for part in parts.iter().rev() {
            let (a, b) = both(part);
            ours.merge_encoded(&a.encode()).unwrap();
            theirs.merge(&b).unwrap();
        }
        let mut direct = LatencySketch::default();
        for part in &parts {
            direct.merge(&both(part).0);
        }
        assert_eq!(ours.encode(), theirs.to_java_bytes());
        assert_eq!(direct.encode(), ours.encode());
        for q in QS {
            assert_eq!(ours.quantile(q), theirs.quantile(q).unwrap());
            assert_eq!(direct.quantile(q), ours.quantile(q));
        }
        // Crate-written bytes (rows stored before this implementation) read the same.
        assert_eq!(
            LatencySketch::decode(&theirs.to_java_bytes())
                .unwrap()
                .encode(),
            ours.encode()
        );
    }

    #[test]
    fn collapses_the_lowest_keys_past_the_bin_limit() {
        // 1e-8 … 1e14 spans ~2,500 keys: the lowest collapse, upper quantiles stay exact.
        let values: Vec<f64> = (0..=44).map(|e| 10f64.powf(e as f64 / 2.0 - 8.0)).collect();
        let mut ascending = LatencySketch::default();
        let mut descending = LatencySketch::default();
        for v in &values {
            ascending.add(*v);
        }
        for v in values.iter().rev() {
            descending.add(*v);
        }
        assert!(ascending.max_key - ascending.min_key < MAX_BINS);
        assert_eq!(ascending.encode(), descending.encode());
        let (_, theirs) = both(&values);
        for q in [0.5, 0.9, 0.99] {
            assert_eq!(ascending.quantile(q), theirs.quantile(q).unwrap());
        }
        assert_eq!(ascending.count(), values.len() as u64);
        // Extremes never overflow the key arithmetic.
        let mut odd = LatencySketch::default();
        odd.add(f64::INFINITY);
        odd.add(f64::MAX);
        odd.add(f64::NAN);
        odd.add(-5.0);
        assert_eq!(odd.count(), 4);
        assert!(LatencySketch::decode(&odd.encode()).is_ok());
    }

    #[test]
    fn round_trip_keeps_every_quantile() {
        let mut sketch = LatencySketch::default();
        for i in 1..=1000 {
            sketch.add(i as f64 * 0.37);
        }
        sketch.add(0.0);
        let decoded = LatencySketch::decode(&sketch.encode()).unwrap();
        assert_eq!(decoded.count(), sketch.count());
        for q in [0.0, 0.01, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(decoded.quantile(q), sketch.quantile(q));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(LatencySketch::decode(&[0xff, 0x01, 0x02]).is_err());
        assert!(LatencySketch::decode(&[]).is_err());
        // A huge bin count, a truncated store, another γ.
        assert!(LatencySketch::decode(&[0x05, 0xff, 0xff, 0xff, 0x7f]).is_err());
        let mut bytes = both(&[1.0, 2.0, 3.0]).0.encode();
        bytes.truncate(bytes.len() - 1);
        assert!(LatencySketch::decode(&bytes).is_err());
        let other = DDSketch::new(Config::new(0.02, 2048, 1e-9));
        assert!(LatencySketch::decode(&other.to_java_bytes()).is_err());
        // A failed merge leaves the sketch as it was.
        let (mut sketch, _) = both(&[5.0, 6.0]);
        let before = sketch.encode();
        assert!(sketch.merge_encoded(&bytes).is_err());
        assert_eq!(sketch.encode(), before);
    }

    #[test]
    fn merging_encoded_equals_decoding_then_merging() {
        let mut a = LatencySketch::default();
        let mut b = LatencySketch::default();
        for i in 1..=500 {
            a.add(i as f64 * 0.11);
            b.add(i as f64 * 3.7);
        }
        let mut via_decode = a.clone();
        via_decode.merge(&LatencySketch::decode(&b.encode()).unwrap());
        let mut direct = a.clone();
        direct.merge_encoded(&b.encode()).unwrap();
        assert_eq!(direct.count(), via_decode.count());
        assert_eq!(direct.encode(), via_decode.encode());
        for q in [0.0, 0.01, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(direct.quantile(q), via_decode.quantile(q));
        }
        assert!(direct.merge_encoded(&[0xff, 0x01]).is_err());
    }
}
