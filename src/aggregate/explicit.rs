//! Explicit-bucket latency counts from histogram metrics, as Prometheus' classic histograms:
//! a layout that is always valid, merges across layouts, and linear interpolation for quantiles.

/// Explicit-bucket latency counts (bounds in milliseconds) from histogram metrics. Always a valid
/// layout: finite, strictly increasing bounds and one more count than bounds (the last bucket
/// is +Inf). Only the constructors make one, and reading a stored one checks it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "StoredExplicitBuckets")]
pub struct ExplicitBuckets {
    #[serde(with = "crate::model::json_float::vec")]
    bounds_ms: Vec<f64>,
    counts: Vec<u64>,
}

/// Why bounds and counts do not make an explicit-bucket layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{counts} bucket counts for {bounds} bounds: there must be one more count than bounds")]
    CountsDoNotMatchBounds { bounds: usize, counts: usize },
    #[error("bucket bounds must be finite and strictly increasing")]
    BoundsNotIncreasing,
}

/// [`ExplicitBuckets`] as stored, before its layout is checked.
#[derive(serde::Deserialize)]
struct StoredExplicitBuckets {
    #[serde(with = "crate::model::json_float::vec")]
    bounds_ms: Vec<f64>,
    counts: Vec<u64>,
}

impl TryFrom<StoredExplicitBuckets> for ExplicitBuckets {
    type Error = LayoutError;

    /// Stored rows may hold bounds that met after the conversion to milliseconds
    /// (they are folded, as [`ExplicitBuckets::scaled`] does) or no counts at all (a layout
    /// with nothing counted yet).
    fn try_from(stored: StoredExplicitBuckets) -> Result<Self, LayoutError> {
        let counts = if stored.counts.is_empty() {
            vec![0; stored.bounds_ms.len() + 1]
        } else {
            stored.counts
        };
        ExplicitBuckets::scaled(&stored.bounds_ms, &counts, 1.0)
    }
}

impl ExplicitBuckets {
    /// Checks the layout: finite, strictly increasing bounds, one more count than bounds.
    pub fn new(bounds_ms: Vec<f64>, counts: Vec<u64>) -> Result<Self, LayoutError> {
        check_counts(bounds_ms.len(), counts.len())?;
        let increasing = bounds_ms.iter().all(|b| b.is_finite())
            && bounds_ms.windows(2).all(|pair| pair[0] < pair[1]);
        if !increasing {
            return Err(LayoutError::BoundsNotIncreasing);
        }
        Ok(ExplicitBuckets { bounds_ms, counts })
    }

    /// One +Inf bucket holding `count`: a histogram that only knows its count.
    pub fn single(count: u64) -> Self {
        ExplicitBuckets {
            bounds_ms: Vec::new(),
            counts: vec![count],
        }
    }

    /// The layout with every bound multiplied by `factor` (a unit conversion). A bound that is
    /// not finite or not above the one before after the multiplication (it overflowed, or two
    /// bounds met in rounding) is dropped and its bucket joins the next, so the result is
    /// always valid and counts are never lost. Only the counts must match the bounds.
    pub fn scaled(bounds: &[f64], counts: &[u64], factor: f64) -> Result<Self, LayoutError> {
        check_counts(bounds.len(), counts.len())?;
        let mut bounds_ms = Vec::with_capacity(bounds.len());
        let mut kept_counts = Vec::with_capacity(counts.len());
        let mut pending = 0u64;
        for (bound, count) in bounds.iter().zip(counts) {
            pending = pending.saturating_add(*count);
            let scaled = bound * factor;
            if scaled.is_finite() && bounds_ms.last().is_none_or(|last| scaled > *last) {
                bounds_ms.push(scaled);
                kept_counts.push(pending);
                pending = 0;
            }
        }
        let last = counts.last().copied().unwrap_or(0);
        kept_counts.push(pending.saturating_add(last));
        Ok(ExplicitBuckets {
            bounds_ms,
            counts: kept_counts,
        })
    }

    pub fn bounds_ms(&self) -> &[f64] {
        &self.bounds_ms
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn into_parts(self) -> (Vec<f64>, Vec<u64>) {
        (self.bounds_ms, self.counts)
    }

    /// Bytes its bounds and counts take on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bounds_ms.capacity() * size_of::<f64>() + self.counts.capacity() * size_of::<u64>()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |sum, c| sum.saturating_add(*c))
    }

    /// Adds another bucket set. Identical bounds add exactly; different bounds put each of the
    /// other's buckets into the bucket of ours that holds its upper bound (never under-reports).
    pub fn merge(&mut self, other: &ExplicitBuckets) {
        self.add(&other.bounds_ms, &other.counts);
    }

    /// [`Self::merge`] for a layout given as parts, which need not be valid: whatever they
    /// hold, every count lands in one of this layout's buckets (a count without a bound is a
    /// +Inf one) and nothing indexes out of bounds.
    pub fn add(&mut self, bounds: &[f64], counts: &[u64]) {
        if self.bounds_ms == bounds && self.counts.len() == counts.len() {
            for (mine, theirs) in self.counts.iter_mut().zip(counts) {
                *mine = mine.saturating_add(*theirs);
            }
            return;
        }
        for (i, count) in counts.iter().enumerate() {
            let upper = bounds.get(i).copied().unwrap_or(f64::INFINITY);
            // `partition_point` is at most `bounds_ms.len()`, the +Inf bucket's index.
            let target = self.bounds_ms.partition_point(|b| *b < upper);
            if let Some(slot) = self.counts.get_mut(target) {
                *slot = slot.saturating_add(*count);
            }
        }
    }

    /// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the
    /// rank, 0 as the lowest bucket's lower limit, the highest finite bound for the +Inf bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        let mut lower = 0.0f64;
        for (count, upper) in self
            .counts
            .iter()
            .zip(self.bounds_ms.iter().map(Some).chain([None]))
        {
            let cumulative = below.saturating_add(*count);
            if (cumulative as f64) >= rank && *count > 0 {
                let Some(upper) = upper.copied() else {
                    return self.bounds_ms.last().copied();
                };
                // A first bucket at or below 0 has no positive lower limit: its bound stands.
                let lower = lower.min(upper);
                let fraction = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * fraction);
            }
            below = cumulative;
            if let Some(upper) = upper {
                lower = *upper;
            }
        }
        self.bounds_ms.last().copied()
    }
}

fn check_counts(bounds: usize, counts: usize) -> Result<(), LayoutError> {
    if counts == bounds.saturating_add(1) {
        Ok(())
    } else {
        Err(LayoutError::CountsDoNotMatchBounds { bounds, counts })
    }
}
