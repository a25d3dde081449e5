//! Approximate heap sizes of what the memory budget counts ([`crate::budget`]): records on
//! their way through the pipeline (the aggregator's own types count themselves in
//! `aggregate::heap_size`). Estimates, not allocator truths: string and vector contents, plus a
//! fixed overhead per map entry, so that the figures grow with what a client sends and stay
//! cheap to compute.

use std::collections::BTreeMap;
use std::mem::size_of;

use crate::model::log_record::{IncomingLog, LogRecord};
use crate::model::{
    Buckets, EndpointKey, HistogramValue, IngestBatch, MetricPoint, MetricSeriesKey, MetricValue,
    SpanEvent, SpanRecord,
};

/// A B-tree entry's share of its node beyond the key and value themselves.
const BTREE_ENTRY_OVERHEAD: usize = 16;

/// Bytes a value owns on the heap (not counting its own `size_of`).
pub trait HeapSize {
    fn heap_bytes(&self) -> usize;
}

impl HeapSize for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl<T: HeapSize> HeapSize for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, HeapSize::heap_bytes)
    }
}

impl HeapSize for BTreeMap<String, String> {
    fn heap_bytes(&self) -> usize {
        self.iter()
            .map(|(k, v)| {
                k.heap_bytes() + v.heap_bytes() + 2 * size_of::<String>() + BTREE_ENTRY_OVERHEAD
            })
            .sum()
    }
}

impl HeapSize for EndpointKey {
    fn heap_bytes(&self) -> usize {
        self.service.heap_bytes() + self.method.heap_bytes() + self.route.heap_bytes()
    }
}

impl HeapSize for MetricSeriesKey {
    fn heap_bytes(&self) -> usize {
        self.service.heap_bytes() + self.name.heap_bytes() + self.attributes.heap_bytes()
    }
}

impl HeapSize for HistogramValue {
    fn heap_bytes(&self) -> usize {
        match &self.buckets {
            Buckets::Explicit { bounds, counts } => {
                bounds.capacity() * size_of::<f64>() + counts.capacity() * size_of::<u64>()
            }
            Buckets::Exponential { counts, .. } => counts.capacity() * size_of::<u64>(),
        }
    }
}

impl HeapSize for MetricValue {
    fn heap_bytes(&self) -> usize {
        match self {
            MetricValue::Number(_) => 0,
            MetricValue::Histogram(h) => h.heap_bytes(),
        }
    }
}

impl HeapSize for MetricPoint {
    fn heap_bytes(&self) -> usize {
        self.series.heap_bytes()
            + self.unit.heap_bytes()
            + self.description.heap_bytes()
            + self.value.heap_bytes()
    }
}

impl HeapSize for IngestBatch {
    fn heap_bytes(&self) -> usize {
        // Requests share their endpoint keys, which lie within the body's bytes anyway.
        self.body.len()
            + self.requests.capacity() * size_of::<crate::model::EndpointRequest>()
            + self.spans.capacity() * size_of::<crate::model::IncomingSpan>()
            + self.metric_points.capacity() * size_of::<MetricPoint>()
            + self
                .metric_points
                .iter()
                .map(HeapSize::heap_bytes)
                .sum::<usize>()
            + self.logs.capacity() * size_of::<IncomingLog>()
            + self
                .instances
                .iter()
                .map(|seen| size_of::<crate::model::InstanceSeen>() + seen.instance.len())
                .sum::<usize>()
            + self
                .logs
                .iter()
                .map(|l| l.record.heap_bytes())
                .sum::<usize>()
    }
}

impl HeapSize for LogRecord {
    fn heap_bytes(&self) -> usize {
        self.service.heap_bytes()
            + self.severity_text.heap_bytes()
            + self.body.heap_bytes()
            + self.trace_id.heap_bytes()
            + self.span_id.heap_bytes()
            + self.attributes.heap_bytes()
    }
}

impl HeapSize for SpanEvent {
    fn heap_bytes(&self) -> usize {
        self.name.heap_bytes() + self.attributes.heap_bytes()
    }
}

impl HeapSize for SpanRecord {
    fn heap_bytes(&self) -> usize {
        self.trace_id.heap_bytes()
            + self.span_id.heap_bytes()
            + self.parent_span_id.heap_bytes()
            + self.service.heap_bytes()
            + self.name.heap_bytes()
            + self.status_message.heap_bytes()
            + self.attributes.heap_bytes()
            + self.events.capacity() * size_of::<SpanEvent>()
            + self.events.iter().map(HeapSize::heap_bytes).sum::<usize>()
            + self
                .endpoint
                .as_ref()
                .map_or(0, |e| size_of::<EndpointKey>() + e.heap_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_what_clients_send() {
        let short = EndpointKey {
            service: "a".into(),
            method: "GET".into(),
            route: "/".into(),
        };
        let long = EndpointKey {
            route: "x".repeat(10_000),
            ..short.clone()
        };
        assert!(long.heap_bytes() >= 10_000);
        assert!(short.heap_bytes() < 100);

        let mut record_attributes = BTreeMap::new();
        record_attributes.insert("k".to_string(), "v".repeat(5_000));
        assert!(record_attributes.heap_bytes() >= 5_000);
    }
}
