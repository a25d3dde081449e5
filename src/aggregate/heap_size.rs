//! The heap sizes of the aggregator's own types, for the memory budget (see [`crate::memsize`]).

use std::mem::size_of;

use super::metric::MetricAgg;
use super::red::RedStats;
use super::{FlushBatch, MetricDelta, RedDelta, SeriesInfo};
use crate::memsize::HeapSize;
use crate::model::{HistogramValue, SpanRecord};

impl HeapSize for RedStats {
    fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes() + self.explicit.as_ref().map_or(0, |e| e.heap_bytes())
    }
}

impl HeapSize for MetricAgg {
    fn heap_bytes(&self) -> usize {
        self.histogram
            .as_ref()
            .map_or(0, |h| size_of::<HistogramValue>() + h.heap_bytes())
    }
}

impl HeapSize for SeriesInfo {
    fn heap_bytes(&self) -> usize {
        // The key is shared with the cardinality guard, which counts it.
        self.unit.heap_bytes() + self.description.heap_bytes()
    }
}

impl HeapSize for FlushBatch {
    fn heap_bytes(&self) -> usize {
        let red: usize = self
            .red
            .iter()
            .map(|d: &RedDelta| {
                size_of::<RedDelta>() + d.endpoint.heap_bytes() + d.stats.heap_bytes()
            })
            .sum();
        let metrics: usize = self
            .metrics
            .iter()
            .map(|d: &MetricDelta| {
                size_of::<MetricDelta>() + d.series.heap_bytes() + d.agg.heap_bytes()
            })
            .sum();
        let spans: usize = self
            .spans
            .iter()
            .map(|(span, _)| size_of::<SpanRecord>() + span.heap_bytes())
            .sum();
        let logs: usize = self
            .logs
            .iter()
            .map(|log| size_of::<crate::model::log_record::LogRecord>() + log.heap_bytes())
            .sum();
        red + metrics + spans + logs
    }
}
