//! Hostile OTLP metric points and oversized strings, over real OTLP/HTTP (protobuf and JSON):
//! each is answered 200 with `partial_success` or 400, never 5xx; what is kept is stored and
//! read back (after a restart, so from SQLite) as sent; and afterwards redline accepts a
//! normal export and answers every API read and dashboard page within a second.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    exponential_histogram_data_point, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

use crate::helpers::{TestRedline, endpoint, export_request, now_ns, port_zero_layer, string};

const DURATION: &str = "http.server.request.duration";

fn metrics_request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn route_attributes(route: &str) -> Vec<KeyValue> {
    vec![
        string("http.request.method", "GET"),
        string("http.route", route),
        string("http.response.status_code", "200"),
    ]
}

/// One delta `http.server.request.duration` point of `/items`, in seconds.
fn duration_point(bounds: Vec<f64>, counts: Vec<u64>, count: u64) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes: route_attributes("/items"),
        start_time_unix_nano: now_ns() - 1_000_000_000,
        time_unix_nano: now_ns(),
        count,
        sum: Some(0.5),
        explicit_bounds: bounds,
        bucket_counts: counts,
        ..Default::default()
    }
}

fn histogram(name: &str, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

fn exponential(name: &str, scale: i32, offset: i32, counts: Vec<u64>) -> Metric {
    Metric {
        name: name.into(),
        unit: "s".into(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                attributes: vec![string("queue", "q")],
                time_unix_nano: now_ns(),
                count: counts.iter().sum(),
                sum: Some(1.0),
                scale,
                positive: Some(exponential_histogram_data_point::Buckets {
                    offset,
                    bucket_counts: counts,
                }),
                ..Default::default()
            }],
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, value: f64, time_unix_nano: u64, attributes: Vec<KeyValue>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes,
                time_unix_nano,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

/// What an export was answered: the status and, for a 200, `partial_success`'s rejected count
/// and message.
#[derive(Debug)]
struct Answer {
    status: u16,
    rejected: i64,
    message: String,
}

impl Answer {
    /// Accepted whole.
    fn accepted(&self) -> bool {
        self.status == 200 && self.rejected == 0
    }

    /// Refused in part or whole as the OTLP specification says: 200 with the rejected points
    /// counted and a reason, or 400 for a request that is invalid as a whole.
    fn refused(&self, points: i64) -> bool {
        (self.status == 200 && self.rejected == points && !self.message.is_empty())
            || self.status == 400
    }
}

async fn post_protobuf(redline: &TestRedline, request: &ExportMetricsServiceRequest) -> Answer {
    let response = redline
        .client()
        .post(format!("http://{}/v1/metrics", redline.http))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .expect("export");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let partial = ExportMetricsServiceResponse::decode(bytes)
        .ok()
        .and_then(|r| r.partial_success);
    Answer {
        status,
        rejected: partial.as_ref().map_or(0, |p| p.rejected_data_points),
        message: partial.map(|p| p.error_message).unwrap_or_default(),
    }
}

async fn post_json(redline: &TestRedline, body: String) -> Answer {
    let response = redline
        .client()
        .post(format!("http://{}/v1/metrics", redline.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("export");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let partial = &body["partialSuccess"];
    let rejected = match &partial["rejectedDataPoints"] {
        Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    };
    Answer {
        status,
        rejected,
        message: partial["errorMessage"].as_str().unwrap_or_default().into(),
    }
}

/// A graceful stop and a start on the same data directory: whatever is read afterwards comes
/// from SQLite.
async fn restarted(redline: TestRedline) -> (TestRedline, tempfile::TempDir) {
    let temp = redline.stop().await.expect("temporary data directory");
    let restarted = TestRedline::start_in(port_zero_layer(temp.path())).await;
    (restarted, temp)
}

fn url(redline: &TestRedline, path: &[&str], query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&redline.url("/")).unwrap();
    url.path_segments_mut().unwrap().pop_if_empty().extend(path);
    url.query_pairs_mut().extend_pairs(query);
    url.to_string()
}

/// GETs `url` and asserts 200 within one second; returns the body.
async fn answered_within_a_second(redline: &TestRedline, url: &str) -> String {
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(1), async {
        let response = redline.client().get(url).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
    .await
    .unwrap_or_else(|_| panic!("GET {url} took over a second"));
    assert_eq!(response.0, 200, "GET {url}: {}", response.1);
    assert!(started.elapsed() < Duration::from_secs(1));
    response.1
}

async fn api(redline: &TestRedline, path: &[&str], query: &[(&str, &str)]) -> Value {
    let body = answered_within_a_second(redline, &url(redline, path, query)).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path:?}: {e}: {body}"))
}

/// A normal export is accepted and counted, and every API read and dashboard page of every
/// service (those with RED figures, and `metric_services`) and metric answers 200 within a
/// second.
async fn serves_everything(redline: &TestRedline, metric_services: &[&str]) {
    let normal = export_request("after-hostile", "/alive", 3);
    assert_eq!(redline.export(&normal).await, 200);
    redline
        .wait_for(
            "/api/v1/endpoints?service=after-hostile&since=5m",
            Duration::from_secs(5),
            |b| endpoint(b, "GET", "/alive").is_some_and(|e| e["requests"] == 3),
        )
        .await;
    let since = [("since", "1h")];
    let services = api(redline, &["api", "v1", "services"], &since).await;
    let names: Vec<String> = services
        .as_array()
        .expect("a list of services")
        .iter()
        .filter_map(|s| s["service"].as_str().map(str::to_string))
        .collect();
    assert!(names.iter().any(|n| n == "after-hostile"), "{services}");
    answered_within_a_second(redline, &url(redline, &[], &since)).await;
    answered_within_a_second(redline, &url(redline, &["traces"], &since)).await;
    api(redline, &["api", "v1", "metrics"], &[]).await;
    let mut all_services = names.clone();
    all_services.extend(metric_services.iter().map(|s| s.to_string()));
    for service in &all_services {
        let s = service.as_str();
        let q = [("service", s), ("since", "1h")];
        api(redline, &["api", "v1", "endpoints"], &q).await;
        for stat in ["p99", "rate", "mean", "max"] {
            let query = [("service", s), ("stat", stat), ("since", "1h")];
            api(redline, &["api", "v1", "series"], &query).await;
        }
        api(redline, &["api", "v1", "traces"], &q).await;
        answered_within_a_second(redline, &url(redline, &["services", s], &since)).await;
        let described = api(redline, &["api", "v1", "metrics"], &[("service", s)]).await;
        answered_within_a_second(redline, &url(redline, &["metrics-explorer"], &q)).await;
        for metric in described["metrics"].as_array().into_iter().flatten() {
            let name = metric["name"].as_str().expect("metric name");
            for agg in [
                "", "avg", "min", "max", "last", "sum", "rate", "count", "p50", "p99",
            ] {
                let mut query = vec![("service", s), ("name", name), ("since", "1h")];
                if !agg.is_empty() {
                    query.push(("agg", agg));
                }
                api(redline, &["api", "v1", "metrics", "query"], &query).await;
                let page = url(redline, &["metrics-explorer"], &query);
                answered_within_a_second(redline, &page).await;
            }
        }
    }
}

/// The values of a metric query's single series (`null` for non-finite values).
async fn metric_values(redline: &TestRedline, service: &str, name: &str, agg: &str) -> Vec<Value> {
    let query = [
        ("service", service),
        ("name", name),
        ("agg", agg),
        ("since", "1h"),
    ];
    let body = api(redline, &["api", "v1", "metrics", "query"], &query).await;
    body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .map(|point| point[1].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_without_counts_then_another_layout_is_rejected_not_fatal() {
    let redline = TestRedline::start().await;
    // The first point has one bound and no counts: invalid; merged with the second it would
    // index out of bounds and stop all ingest.
    let first = metrics_request(
        "layouts",
        vec![histogram(
            DURATION,
            vec![duration_point(vec![0.1], vec![], 3)],
        )],
    );
    let answer = post_protobuf(&redline, &first).await;
    assert!(answer.refused(1), "{answer:?}");
    assert!(answer.message.contains("bucket counts"), "{answer:?}");
    let second = metrics_request(
        "layouts",
        vec![histogram(
            DURATION,
            vec![duration_point(vec![0.05, 0.2], vec![1, 2, 3], 6)],
        )],
    );
    assert!(post_protobuf(&redline, &second).await.accepted());
    let (redline, _temp) = restarted(redline).await;
    let body = redline
        .get_ok("/api/v1/endpoints?service=layouts&since=1h")
        .await;
    let items = endpoint(&body, "GET", "/items").expect("the valid point is stored");
    assert_eq!(items["requests"], 6, "{body}");
    serves_everything(&redline, &[]).await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_points_far_apart_are_rejected_or_downscaled() {
    let redline = TestRedline::start().await;
    // Offsets −2³¹ and 2³¹−1: no finite value maps there, so both are rejected (a dense
    // merge across both would take tens of GiB and abort the process).
    for offset in [i32::MIN, i32::MAX] {
        let request = metrics_request("far", vec![exponential("far.apart", 0, offset, vec![1])]);
        let answer = post_protobuf(&redline, &request).await;
        assert!(answer.refused(1), "offset {offset}: {answer:?}");
    }
    // The widest valid spread, lowest and highest bucket at scale 20: accepted and merged
    // into one window of at most 160 buckets.
    let lowest = -(1074 << 20) - 1;
    let highest = (1 << 30) - 2;
    for offset in [lowest, highest] {
        let request = metrics_request(
            "far",
            vec![exponential("far.apart", 20, offset, vec![1, 1])],
        );
        let answer = post_protobuf(&redline, &request).await;
        assert!(answer.accepted(), "offset {offset}: {answer:?}");
    }
    let (redline, _temp) = restarted(redline).await;
    let counts = metric_values(&redline, "far", "far.apart", "count").await;
    let total: f64 = counts.iter().filter_map(Value::as_f64).sum();
    assert_eq!(total, 4.0, "{counts:?}");
    for value in metric_values(&redline, "far", "far.apart", "p50").await {
        assert!(value.as_f64().is_some_and(f64::is_finite), "{value}");
    }
    serves_everything(&redline, &["far"]).await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_above_max_nan_and_infinite_values_are_rejected() {
    let redline = TestRedline::start().await;
    let valid = || duration_point(vec![0.1], vec![1, 1], 2);
    let cases = [
        HistogramDataPoint {
            min: Some(2.0),
            max: Some(1.0),
            ..valid()
        },
        HistogramDataPoint {
            sum: Some(f64::NAN),
            ..valid()
        },
        HistogramDataPoint {
            sum: Some(f64::INFINITY),
            ..valid()
        },
        HistogramDataPoint {
            max: Some(f64::NEG_INFINITY),
            ..valid()
        },
    ];
    for point in cases {
        let request = metrics_request("extremes", vec![histogram(DURATION, vec![point.clone()])]);
        let answer = post_protobuf(&redline, &request).await;
        assert!(answer.refused(1), "{point:?}: {answer:?}");
    }
    let gauge_of = |value: f64| {
        metrics_request(
            "extremes",
            vec![gauge("g", value, now_ns(), vec![string("k", "v")])],
        )
    };
    for value in [f64::NAN, f64::INFINITY] {
        assert!(post_protobuf(&redline, &gauge_of(value)).await.refused(1));
    }
    // OTLP/JSON: min above max, and non-finite numbers as JSON can (not) spell them.
    let now = now_ns();
    let json_point = |fields: &str| {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"extremes"}}}}]}},"scopeMetrics":[{{"metrics":[{{"name":"{DURATION}","unit":"s","histogram":{{"aggregationTemporality":1,"dataPoints":[{{"timeUnixNano":"{now}","count":"2","bucketCounts":["1","1"],"explicitBounds":[0.1],{fields}}}]}}}}]}}]}}]}}"#
        )
    };
    let answer = post_json(&redline, json_point(r#""sum":1.0,"min":2.0,"max":1.0"#)).await;
    assert!(answer.refused(1), "{answer:?}");
    // JSON has no NaN or infinity: spelled as strings or out of range, the OTLP/JSON decoder
    // drops the metric's data (200, nothing kept) or refuses the request; never a 5xx, never
    // stored (the count below proves it). An absent (null) sum is valid.
    for sum in [r#""NaN""#, r#""Infinity""#, r#""-Infinity""#, "1e999"] {
        let answer = post_json(&redline, json_point(&format!(r#""sum":{sum}"#))).await;
        assert!(
            answer.refused(1) || answer.status == 200 || answer.status == 400,
            "sum {sum}: {answer:?}"
        );
    }
    let answer = post_json(&redline, json_point(r#""sum":null"#)).await;
    assert!(answer.accepted(), "{answer:?}");
    // One valid point among them is kept.
    let answer = post_protobuf(
        &redline,
        &metrics_request("extremes", vec![histogram(DURATION, vec![valid()])]),
    )
    .await;
    assert!(answer.accepted(), "{answer:?}");
    let (redline, _temp) = restarted(redline).await;
    let body = redline
        .get_ok("/api/v1/endpoints?service=extremes&since=1h")
        .await;
    // The valid protobuf point (/items) and the JSON one without a sum (it has no route
    // attribute): nothing else.
    let items = endpoint(&body, "GET", "/items").expect("the valid point is stored");
    assert_eq!(items["requests"], 2, "{body}");
    let no_route = endpoint(&body, "", "(no route)").expect("the JSON point is stored");
    assert_eq!(no_route["requests"], 2, "{body}");
    assert_eq!(
        body["endpoints"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    serves_everything(&redline, &[]).await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_overflow_are_stored_and_read_back() {
    let redline = TestRedline::start().await;
    // A bound of 1e308 s is finite, but +Inf in ms: the point is kept and its bucket folds
    // into the +Inf one.
    let huge_bound = duration_point(vec![1e308], vec![1, 1], 2);
    let answer = post_protobuf(
        &redline,
        &metrics_request("overflow", vec![histogram(DURATION, vec![huge_bound])]),
    )
    .await;
    assert!(answer.accepted(), "{answer:?}");
    // A gauge of 1.7e308 twice in one window: its sum is +Inf, which plain JSON stores as an
    // unreadable `null`.
    let time = now_ns();
    for _ in 0..2 {
        let request = metrics_request("overflow", vec![gauge("big", 1.7e308, time, vec![])]);
        assert!(post_protobuf(&redline, &request).await.accepted());
    }
    let (redline, _temp) = restarted(redline).await;
    let body = redline
        .get_ok("/api/v1/endpoints?service=overflow&since=1h")
        .await;
    let items = endpoint(&body, "GET", "/items").expect("the point is stored");
    assert_eq!(items["requests"], 2, "{body}");
    assert_eq!(
        metric_values(&redline, "overflow", "big", "max").await,
        vec![Value::from(1.7e308)]
    );
    assert_eq!(
        metric_values(&redline, "overflow", "big", "last").await,
        vec![Value::from(1.7e308)]
    );
    assert_eq!(
        metric_values(&redline, "overflow", "big", "count").await,
        vec![Value::from(2.0)]
    );
    serves_everything(&redline, &[]).await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_strings_are_cut_to_their_limits() {
    let redline = TestRedline::start().await;
    let megabyte = "m".repeat(1 << 20);
    // A 1 MiB service name and route over traces.
    let mut spans = export_request(&megabyte, &megabyte, 2);
    spans.resource_spans[0].scope_spans[0].spans[0].name = megabyte.clone();
    assert_eq!(redline.export(&spans).await, 200);
    // A 1 MiB metric attribute value and service name over metrics.
    let request = metrics_request(
        &megabyte,
        vec![gauge(
            "sized",
            1.0,
            now_ns(),
            vec![string("blob", &megabyte)],
        )],
    );
    assert!(post_protobuf(&redline, &request).await.accepted());
    let (redline, _temp) = restarted(redline).await;
    let services = redline.get_ok("/api/v1/services?since=1h").await;
    let cut: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["service"].as_str())
        .filter(|s| s.starts_with("mmm"))
        .collect();
    assert_eq!(cut.len(), 1, "{services}");
    let service = cut[0];
    assert!(service.len() <= 256 && service.ends_with('…'), "{service}");
    let endpoints = api(
        &redline,
        &["api", "v1", "endpoints"],
        &[("service", service), ("since", "1h")],
    )
    .await;
    let routes: Vec<&str> = endpoints["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["route"].as_str())
        .collect();
    assert!(
        !routes.is_empty() && routes.iter().all(|r| r.len() <= 256 && r.ends_with('…')),
        "{routes:?}"
    );
    let series = api(
        &redline,
        &["api", "v1", "metrics", "query"],
        &[("service", service), ("name", "sized"), ("since", "1h")],
    )
    .await;
    let blob = series["series"][0]["attributes"]["blob"]
        .as_str()
        .unwrap_or_else(|| panic!("{series}"));
    assert!(blob.len() <= 256 && blob.ends_with('…'), "{blob}");
    let text = redline.metrics_text().await;
    for field in ["service_name", "route", "metric_attribute_value"] {
        assert!(
            text.contains(&format!("redline_truncated_total{{field=\"{field}\"}}")),
            "{field}: {text}"
        );
    }
    serves_everything(&redline, &[]).await;
    redline.stop().await;
}
