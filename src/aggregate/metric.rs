//! OTLP metric series in windows: cumulative points become deltas (counter resets handled), and
//! every window keeps what its kind needs (last/min/max/avg for gauges, the delta for counters,
//! the merged buckets for histograms).

use std::sync::Arc;

use foldhash::HashMap;

use crate::aggregate::histogram;
use crate::model::{
    HistogramValue, MetricKind, MetricPoint, MetricSeriesKey, MetricValue, Temporality, json_float,
};

/// One series over one window. Merges associatively. Stored as JSON: every float goes through
/// [`json_float`], so overflowed sums and the empty window's infinities read back as written.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricAgg {
    /// Number of data points folded in.
    pub samples: u64,
    /// Counters: the increase in the window; gauges: the sum of sampled values (for the mean).
    #[serde(with = "json_float")]
    pub sum: f64,
    /// ±infinity while no number was folded in (a stored `null` reads as that infinity).
    #[serde(with = "json_float::null_as_positive_infinity")]
    pub min: f64,
    #[serde(with = "json_float::null_as_negative_infinity")]
    pub max: f64,
    /// The newest value and its time, for gauges and up-down counters.
    #[serde(with = "json_float")]
    pub last: f64,
    pub last_time_ms: i64,
    pub histogram: Option<HistogramValue>,
}

impl Default for MetricAgg {
    fn default() -> Self {
        MetricAgg {
            samples: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            last_time_ms: i64::MIN,
            histogram: None,
        }
    }
}

impl MetricAgg {
    /// Folds in a number: a counter's increase, or a sampled value.
    pub fn add_number(&mut self, value: f64, time_ms: i64) {
        self.samples = self.samples.saturating_add(1);
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if time_ms >= self.last_time_ms {
            self.last = value;
            self.last_time_ms = time_ms;
        }
    }

    /// Folds in a delta histogram.
    pub fn add_histogram(&mut self, value: &HistogramValue, time_ms: i64) {
        self.samples = self.samples.saturating_add(1);
        self.last_time_ms = self.last_time_ms.max(time_ms);
        match &mut self.histogram {
            Some(existing) => histogram::merge(existing, value),
            None => self.histogram = Some(value.clone()),
        }
    }

    pub fn merge(&mut self, other: &MetricAgg) {
        self.samples = self.samples.saturating_add(other.samples);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_time_ms >= self.last_time_ms {
            self.last = other.last;
            self.last_time_ms = other.last_time_ms;
        }
        match (&mut self.histogram, &other.histogram) {
            (Some(mine), Some(theirs)) => histogram::merge(mine, theirs),
            (None, Some(theirs)) => self.histogram = Some(theirs.clone()),
            _ => {}
        }
    }
}

/// The previous cumulative point of a stream, to turn the next one into a delta.
#[derive(Debug, Clone)]
struct CumulativeState {
    start_unix_ns: u64,
    value: MetricValue,
    /// When redline last saw the stream, to forget streams that went away.
    seen_ms: i64,
}

/// A series as one producer writes it: the series and the producer's stream
/// ([`MetricPoint::stream`]). Instances of a service each have their own.
type StreamKey = (Arc<MetricSeriesKey>, u64);

/// A stream not seen for this long is forgotten; should it come back, its next point is only
/// a baseline unless it restarted meanwhile. Longer than any export interval in use.
pub const STREAM_IDLE_MS: i64 = 60 * 60 * 1000;

/// Turns cumulative points into deltas, one stream at a time, so that several instances of a
/// service writing the same counter add up instead of reading as each other's resets.
#[derive(Debug, Default)]
pub struct DeltaConverter {
    previous: HashMap<StreamKey, CumulativeState>,
    /// Points that start before this (redline's start) carry history redline never saw: their
    /// first value is only a baseline, not an increase.
    started_unix_ns: u64,
    /// Streams remembered at most; beyond it a new stream counts nothing (and is counted).
    max_streams: usize,
    /// Points of streams that found no room, since start.
    untracked: u64,
}

/// What a point contributes to its window.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    Number(f64),
    Histogram(HistogramValue),
    /// First sight of a long-running cumulative series: remembered, counts nothing yet.
    Baseline,
}

impl DeltaConverter {
    pub fn new(started_unix_ns: u64, max_streams: usize) -> Self {
        DeltaConverter {
            previous: HashMap::default(),
            started_unix_ns,
            max_streams,
            untracked: 0,
        }
    }

    /// The contribution of `point` (of the series `key`) to its window. Gauges and up-down
    /// counters pass through as values; cumulative counters and histograms become increases.
    pub fn contribution(
        &mut self,
        key: &Arc<MetricSeriesKey>,
        point: &MetricPoint,
        now_ms: i64,
    ) -> Contribution {
        let cumulative_increase = point.temporality == Temporality::Cumulative
            && matches!(
                point.kind,
                MetricKind::Counter | MetricKind::Histogram | MetricKind::ExponentialHistogram
            );
        if !cumulative_increase {
            return match &point.value {
                MetricValue::Number(v) => Contribution::Number(*v),
                MetricValue::Histogram(h) => Contribution::Histogram(h.clone()),
            };
        }
        let stream = (key.clone(), point.stream);
        if self.previous.len() >= self.max_streams && !self.previous.contains_key(&stream) {
            self.untracked += 1;
            return Contribution::Baseline;
        }
        let previous = self.previous.insert(
            stream,
            CumulativeState {
                start_unix_ns: point.start_unix_ns,
                value: point.value.clone(),
                seen_ms: now_ms,
            },
        );
        let same_run = previous
            .as_ref()
            .is_some_and(|p| p.start_unix_ns == point.start_unix_ns || point.start_unix_ns == 0);
        match (previous, &point.value) {
            (Some(prev), MetricValue::Number(now)) if same_run => match prev.value {
                // A drop is a counter reset: everything since the reset is new.
                MetricValue::Number(before) if *now >= before => Contribution::Number(now - before),
                _ => Contribution::Number(*now),
            },
            (Some(prev), MetricValue::Histogram(now)) if same_run => match &prev.value {
                MetricValue::Histogram(before) => Contribution::Histogram(
                    histogram::subtract(now, before).unwrap_or_else(|| now.clone()),
                ),
                MetricValue::Number(_) => Contribution::Histogram(now.clone()),
            },
            (previous, value) => {
                let new_run_since_start = point.start_unix_ns >= self.started_unix_ns
                    || (previous.is_some() && point.start_unix_ns != 0);
                if !new_run_since_start {
                    return Contribution::Baseline;
                }
                match value {
                    MetricValue::Number(v) => Contribution::Number(*v),
                    MetricValue::Histogram(h) => Contribution::Histogram(h.clone()),
                }
            }
        }
    }

    /// Forgets series the cardinality guard dropped, so this map stays bounded with it, and
    /// streams idle for [`STREAM_IDLE_MS`] (instances that went away).
    pub fn retain(&mut self, keep: impl Fn(&MetricSeriesKey) -> bool, now_ms: i64) {
        let idle_before = now_ms.saturating_sub(STREAM_IDLE_MS);
        self.previous
            .retain(|(series, _), state| state.seen_ms >= idle_before && keep(series));
    }

    /// Points of streams that found no room, since start.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    pub fn len(&self) -> usize {
        self.previous.len()
    }

    /// Bytes the remembered points hold, for the memory budget.
    pub fn heap_bytes(&self) -> usize {
        use crate::memsize::HeapSize;
        self.previous
            .values()
            .map(|state| {
                std::mem::size_of::<(StreamKey, CumulativeState)>() + state.value.heap_bytes()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.previous.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn contribution(converter: &mut DeltaConverter, point: &MetricPoint) -> Contribution {
        converter.contribution(&Arc::new(point.series.clone()), point, 0)
    }

    fn counter(value: f64, start: u64) -> MetricPoint {
        MetricPoint {
            series: MetricSeriesKey {
                service: "s".into(),
                name: "requests".into(),
                attributes: BTreeMap::new(),
            },
            stream: 1,
            kind: MetricKind::Counter,
            unit: "1".into(),
            description: String::new(),
            start_unix_ns: start,
            time_unix_ms: 0,
            temporality: Temporality::Cumulative,
            value: MetricValue::Number(value),
        }
    }

    #[test]
    fn cumulative_counters_become_increases_with_resets() {
        let mut converter = DeltaConverter::new(100, 100);
        assert_eq!(
            contribution(&mut converter, &counter(10.0, 200)),
            Contribution::Number(10.0)
        );
        assert_eq!(
            contribution(&mut converter, &counter(15.0, 200)),
            Contribution::Number(5.0)
        );
        // Reset within the same run (value went down): the new value is all new.
        assert_eq!(
            contribution(&mut converter, &counter(3.0, 200)),
            Contribution::Number(3.0)
        );
        // A restart of the exporter (new start time).
        assert_eq!(
            contribution(&mut converter, &counter(2.0, 300)),
            Contribution::Number(2.0)
        );
    }

    #[test]
    fn series_older_than_redline_start_with_a_baseline() {
        let mut converter = DeltaConverter::new(1_000, 100);
        assert_eq!(
            contribution(&mut converter, &counter(500.0, 10)),
            Contribution::Baseline
        );
        assert_eq!(
            contribution(&mut converter, &counter(510.0, 10)),
            Contribution::Number(10.0)
        );
    }

    #[test]
    fn instances_writing_one_counter_add_up() {
        let mut converter = DeltaConverter::new(100, 100);
        let of = |stream, value| MetricPoint {
            stream,
            ..counter(value, 200)
        };
        let mut total = 0.0;
        // Two instances, interleaved: 100 → 130 and 40 → 45, each its own run.
        for point in [of(1, 100.0), of(2, 40.0), of(1, 130.0), of(2, 45.0)] {
            match contribution(&mut converter, &point) {
                Contribution::Number(n) => total += n,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 175.0);
    }

    #[test]
    fn streams_beyond_the_bound_count_nothing_and_idle_ones_are_forgotten() {
        let mut converter = DeltaConverter::new(100, 2);
        let of = |stream| MetricPoint {
            stream,
            ..counter(10.0, 200)
        };
        let key = Arc::new(of(1).series.clone());
        assert_eq!(
            converter.contribution(&key, &of(1), 0),
            Contribution::Number(10.0)
        );
        assert_eq!(
            converter.contribution(&key, &of(2), 1_000),
            Contribution::Number(10.0)
        );
        assert_eq!(
            converter.contribution(&key, &of(3), 1_000),
            Contribution::Baseline
        );
        assert_eq!(converter.untracked(), 1);
        // Stream 1 idles out; stream 3 then finds room.
        converter.retain(|_| true, STREAM_IDLE_MS + 500);
        assert_eq!(converter.len(), 1);
        assert_eq!(
            converter.contribution(&key, &of(3), STREAM_IDLE_MS + 500),
            Contribution::Number(10.0)
        );
    }

    #[test]
    fn windows_without_numbers_survive_storage() {
        // A histogram-only window keeps min/max at ±infinity.
        let mut agg = MetricAgg::default();
        agg.add_histogram(
            &crate::model::HistogramValue {
                count: 2,
                sum: 3.0,
                min: None,
                max: None,
                buckets: crate::model::Buckets::Explicit {
                    bounds: vec![1.0],
                    counts: vec![1, 1],
                },
            },
            5,
        );
        let text = serde_json::to_string(&agg).unwrap();
        let back: MetricAgg = serde_json::from_str(&text).unwrap();
        assert_eq!(back, agg);
        assert_eq!(back.min, f64::INFINITY);
        assert_eq!(back.max, f64::NEG_INFINITY);
    }

    #[test]
    fn windows_merge_and_keep_the_newest_value() {
        let mut a = MetricAgg::default();
        a.add_number(5.0, 10);
        let mut b = MetricAgg::default();
        b.add_number(1.0, 20);
        a.merge(&b);
        assert_eq!(a.samples, 2);
        assert_eq!(a.last, 1.0);
        assert_eq!(a.min, 1.0);
        assert_eq!(a.max, 5.0);
        assert_eq!(a.sum, 6.0);
    }

    #[test]
    fn overflowed_sums_and_non_finite_values_survive_storage() {
        // A gauge of 1.7e308 twice in one window: the sum is +Inf, which plain JSON writes as
        // an unreadable null.
        let mut agg = MetricAgg::default();
        agg.add_number(1.7e308, 1);
        agg.add_number(1.7e308, 2);
        assert_eq!(agg.sum, f64::INFINITY);
        let text = serde_json::to_string(&agg).unwrap();
        assert!(text.contains(r#""sum":"+Inf""#), "{text}");
        let back: MetricAgg = serde_json::from_str(&text).unwrap();
        assert_eq!(back, agg);
        // Windows of opposite infinities merge into NaN, which reads back as NaN.
        let mut negative = MetricAgg::default();
        negative.add_number(-1.7e308, 3);
        negative.add_number(-1.7e308, 4);
        agg.merge(&negative);
        assert!(agg.sum.is_nan());
        let back: MetricAgg = serde_json::from_str(&serde_json::to_string(&agg).unwrap()).unwrap();
        assert!(back.sum.is_nan());
        assert_eq!((back.min, back.max), (-1.7e308, 1.7e308));
        // A histogram whose sum overflowed.
        let mut histogram = MetricAgg::default();
        let value = crate::model::HistogramValue {
            count: 1,
            sum: f64::MAX,
            min: Some(f64::NEG_INFINITY),
            max: None,
            buckets: crate::model::Buckets::Explicit {
                bounds: vec![],
                counts: vec![1],
            },
        };
        histogram.add_histogram(&value, 1);
        histogram.add_histogram(&value, 2);
        let back: MetricAgg =
            serde_json::from_str(&serde_json::to_string(&histogram).unwrap()).unwrap();
        assert_eq!(back, histogram);
        assert_eq!(back.histogram.unwrap().sum, f64::INFINITY);
    }

    #[test]
    fn rows_with_null_extremes_read_as_infinities() {
        let legacy = r#"{"samples":1,"sum":2.0,"min":null,"max":null,"last":0.0,"last_time_ms":5,"histogram":{"count":2,"sum":3.0,"min":null,"max":1.5,"buckets":{"explicit":{"bounds":[1.0],"counts":[1,1]}}}}"#;
        let agg: MetricAgg = serde_json::from_str(legacy).unwrap();
        assert_eq!((agg.min, agg.max), (f64::INFINITY, f64::NEG_INFINITY));
        let histogram = agg.histogram.unwrap();
        assert_eq!((histogram.min, histogram.max), (None, Some(1.5)));
    }

    #[test]
    fn sample_counts_saturate() {
        let mut a = MetricAgg {
            samples: u64::MAX,
            ..MetricAgg::default()
        };
        a.add_number(1.0, 1);
        a.merge(&a.clone());
        assert_eq!(a.samples, u64::MAX);
    }
}
