//! The remote-write 1.0 payload: Prometheus' `prometheus.WriteRequest` protobuf (the messages
//! of `prompb/remote.proto` and `types.proto` that 1.0 uses), built from the same series as the
//! exposition, and compressed with snappy's block format as the protocol requires.

use prost::Message;

use super::{ExternalLabels, FAMILIES, le_values, samples, sorted};
use crate::aggregate::totals::TotalsSnapshot;

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<ProtoSample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Every series of `snapshot` with one sample at `timestamp_ms`, split into requests of at
/// most `max_series` series each (a receiver's body limits stay far away).
pub fn write_requests(
    snapshot: TotalsSnapshot,
    external: &ExternalLabels,
    timestamp_ms: i64,
    max_series: usize,
) -> Vec<WriteRequest> {
    let snapshot = sorted(snapshot);
    let le = le_values(&snapshot);
    let mut requests = Vec::new();
    let mut current = WriteRequest::default();
    for family in &FAMILIES {
        for (endpoint, totals) in &snapshot.endpoints {
            samples(family, endpoint, totals, &le, |sample| {
                let mut labels = Vec::with_capacity(6);
                let mut label = |name: &str, value: &str| {
                    labels.push(Label {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                };
                label(
                    "__name__",
                    &format!("{}{}", sample.family.name, sample.suffix),
                );
                label("service", &sample.endpoint.service);
                label("method", &sample.endpoint.method);
                label("route", &sample.endpoint.route);
                if let Some((name, value)) = sample.label {
                    label(name, value);
                }
                for (name, value) in external.iter() {
                    label(name, value);
                }
                labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                current.timeseries.push(TimeSeries {
                    labels,
                    samples: vec![ProtoSample {
                        value: sample.value,
                        timestamp: timestamp_ms,
                    }],
                });
                if current.timeseries.len() >= max_series.max(1) {
                    requests.push(std::mem::take(&mut current));
                }
            });
        }
    }
    if !current.timeseries.is_empty() {
        requests.push(current);
    }
    requests
}

/// The request body: the protobuf encoding, snappy-compressed (block format, not framed).
pub fn encode(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::totals::{DurationBounds, RedTotals};
    use crate::model::{EndpointKey, RequestRecord};

    #[test]
    fn series_carry_sorted_labels_and_round_trip_through_snappy() {
        let mut totals = RedTotals::new(DurationBounds::new(&[0.1]).unwrap());
        let key = EndpointKey {
            service: "api".into(),
            method: "GET".into(),
            route: "/a".into(),
        };
        let request = RequestRecord {
            end_unix_ms: 0,
            duration_ms: 20.0,
            status_code: Some(200),
            is_error: false,
            count: 1,
        };
        totals.add_request(&key, &request, 0);
        let external = ExternalLabels::new(vec![("host".into(), "h1".into())]).unwrap();
        // requests, errors, 2 status classes, 2 buckets, sum, count: 8 series.
        let requests = write_requests(totals.snapshot(), &external, 1_000, 3);
        assert_eq!(
            requests
                .iter()
                .map(|r| r.timeseries.len())
                .collect::<Vec<_>>(),
            [3, 3, 2]
        );
        let first = &requests[0].timeseries[0];
        let names: Vec<&str> = first.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "host", "method", "route", "service"]);
        assert_eq!(first.labels[0].value, "redline_requests_total");
        assert_eq!(
            first.samples,
            [ProtoSample {
                value: 1.0,
                timestamp: 1_000
            }]
        );

        let body = encode(&requests[0]).unwrap();
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(raw.as_slice()).unwrap(), requests[0]);
    }
}
