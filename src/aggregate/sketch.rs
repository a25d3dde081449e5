//! The latency sketch: a DDSketch with one global configuration (1 % relative accuracy), so any
//! two sketches — windows, rollups, endpoints — merge exactly.

use sketches_ddsketch::{Config, DDSketch};

/// Relative accuracy of every quantile read from a [`LatencySketch`].
pub const RELATIVE_ACCURACY: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
#[error("stored latency sketch is unreadable: {0}")]
pub struct SketchDecodeError(String);

/// A mergeable latency distribution, values in milliseconds.
#[derive(Clone)]
pub struct LatencySketch(DDSketch);

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.count())
            .finish()
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        // The crate's defaults are α = 1 %, 2,048 bins, minimum 1e-9: 1 ps … years in ms fit
        // without collapsing, and decoding restores exactly this configuration.
        LatencySketch(DDSketch::new(Config::defaults()))
    }
}

impl LatencySketch {
    pub fn add(&mut self, value_ms: f64) {
        self.0.add(value_ms.max(0.0));
    }

    pub fn add_with_count(&mut self, value_ms: f64, count: u64) {
        self.0.add_with_count(value_ms.max(0.0), count);
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        // One global configuration means the configurations always match.
        self.0
            .merge(&other.0)
            .expect("latency sketches share one configuration");
    }

    /// Merges an encoded sketch (as [`Self::encode`] writes it) into this one: the same result as
    /// `self.merge(&LatencySketch::decode(bytes)?)`, with one allocation and one merge fewer.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), SketchDecodeError> {
        let sketch =
            DDSketch::from_java_bytes(bytes).map_err(|e| SketchDecodeError(format!("{e:?}")))?;
        self.0
            .merge(&sketch)
            .map_err(|e| SketchDecodeError(format!("{e:?}")))
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The value at rank ⌊q·(n−1)⌋, within 1 % relative error; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.to_java_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SketchDecodeError> {
        let sketch =
            DDSketch::from_java_bytes(bytes).map_err(|e| SketchDecodeError(format!("{e:?}")))?;
        let mut restored = LatencySketch::default();
        // Re-home the decoded bins under the global configuration (a no-op check when equal).
        restored
            .0
            .merge(&sketch)
            .map_err(|e| SketchDecodeError(format!("{e:?}")))?;
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
