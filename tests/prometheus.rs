//! RED in Prometheus form against a real Prometheus: remote write and scraping `/metrics/red`
//! give PromQL the same counts as redline's own API and a p99 in the bucket of redline's own,
//! two redlines (a fleet) write to one Prometheus without colliding, and every query of the
//! shipped Grafana dashboard returns data.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use serde_json::Value;

use crate::helpers::{TestRedline, endpoint, now_ns, spans_export, string};
use crate::prometheus_server::TestPrometheus;

const ROUTE: &str = "/items/{id}";
/// Telemetry text with what the exposition format must escape.
const HOSTILE_SERVICE: &str = "we\"ird\\svc\nname";
const WAIT: Duration = Duration::from_secs(45);

/// What a load sent, by redline's definitions: 5xx are errors.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    requests: u64,
    errors: u64,
    status_4xx: u64,
}

/// `count` server spans of `service` on `ROUTE`: durations 1–400 ms, every 20th answered 503,
/// every 25th (offset 1) 404; exported over OTLP/HTTP in batches of 100.
async fn send_load(redline: &TestRedline, service: &str, count: usize, seed: usize) -> Load {
    let mut load = Load::default();
    let end = now_ns();
    let spans: Vec<Span> = (0..count)
        .map(|i| {
            let n = i + seed;
            let status = if n.is_multiple_of(20) {
                503
            } else if n % 25 == 1 {
                404
            } else {
                200
            };
            load.requests += 1;
            load.errors += u64::from(status >= 500);
            load.status_4xx += u64::from((400..500).contains(&status));
            let duration_ns = (1 + (n * 7) % 400) as u64 * 1_000_000;
            Span {
                trace_id: (((seed as u128) << 64) | (i as u128 + 1))
                    .to_be_bytes()
                    .to_vec(),
                span_id: (n as u64 + 1).to_be_bytes().to_vec(),
                name: format!("GET {ROUTE}"),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: end - duration_ns,
                end_time_unix_nano: end,
                attributes: vec![
                    string("http.request.method", "GET"),
                    string("http.route", ROUTE),
                    KeyValue {
                        key: "http.response.status_code".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(status)),
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }
        })
        .collect();
    for batch in spans.chunks(100) {
        let status = redline.export(&spans_export(service, batch.to_vec())).await;
        assert_eq!(status, 200, "export accepted");
    }
    load
}

/// redline's own figures for `service`'s endpoint, once they count `requests`.
async fn own_figures(redline: &TestRedline, service: &str, requests: u64) -> Value {
    let path = format!("/api/v1/endpoints?service={service}&since=1h");
    let body = redline
        .wait_for(&path, WAIT, |body| {
            endpoint(body, "GET", ROUTE).is_some_and(|e| e["requests"] == requests)
        })
        .await;
    endpoint(&body, "GET", ROUTE).expect("endpoint").clone()
}

/// The default bounds' bucket (lower, upper] holding `seconds`.
fn bucket_of(seconds: f64) -> (f64, f64) {
    let bounds = redline::aggregate::totals::DEFAULT_BOUNDS_SECONDS;
    let upper = bounds.partition_point(|b| *b < seconds);
    let lower = if upper == 0 { 0.0 } else { bounds[upper - 1] };
    (lower, bounds.get(upper).copied().unwrap_or(f64::INFINITY))
}

/// PromQL over the series of `service` equals redline's own counts, and
/// `histogram_quantile(0.99, …)` lies in the bucket of redline's own p99.
async fn assert_prometheus_agrees(
    prometheus: &TestPrometheus,
    redline: &TestRedline,
    service: &str,
    load: Load,
) {
    let own = own_figures(redline, service, load.requests).await;
    assert_eq!(own["errors"], load.errors);
    let selector = format!(r#"{{service="{service}"}}"#);
    for (query, expected) in [
        (
            format!("sum(redline_requests_total{selector})"),
            load.requests,
        ),
        (
            format!("sum(redline_request_errors_total{selector})"),
            load.errors,
        ),
        (
            format!(
                r#"sum(redline_requests_by_status_total{{service="{service}",status_class="4xx"}})"#
            ),
            load.status_4xx,
        ),
        (
            format!("sum(redline_request_duration_seconds_count{selector})"),
            load.requests,
        ),
    ] {
        prometheus
            .wait_for_value(&query, WAIT, |v| v == expected as f64)
            .await;
    }
    let own_p99 = own["latency_ms"]["p99"].as_f64().expect("p99") / 1000.0;
    let (lower, upper) = bucket_of(own_p99);
    let promql = format!(
        "histogram_quantile(0.99, sum by (le) (redline_request_duration_seconds_bucket{selector}))"
    );
    let quantile = prometheus
        .wait_for_value(&promql, WAIT, |v| v.is_finite())
        .await;
    assert!(
        lower <= quantile && quantile <= upper,
        "PromQL p99 {quantile} s outside ({lower}, {upper}], the bucket of redline's p99 {own_p99} s"
    );
}

/// The hostile service name arrives in Prometheus exactly as sent.
async fn assert_hostile_name_survives(prometheus: &TestPrometheus) {
    let found = crate::helpers::poll(WAIT, || async {
        let names = prometheus
            .label_values("service", "redline_requests_total")
            .await;
        names.iter().any(|n| n == HOSTILE_SERVICE).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "service {HOSTILE_SERVICE:?} not among {:?}",
        prometheus
            .label_values("service", "redline_requests_total")
            .await
    );
}

/// A Prometheus that only takes remote writes (it scrapes nothing).
const REMOTE_WRITE_ONLY: &str = "global:\n  scrape_interval: 15s\n";

/// redline pushing to `prometheus` every second, labelled `host` when given.
async fn redline_writing_to(prometheus: &TestPrometheus, host: Option<&str>) -> TestRedline {
    let write_url = prometheus.write_url();
    let host = host.map(|h| format!("host={h}"));
    TestRedline::start_with(move |layer| {
        layer.remote_write_url = Some(vec![write_url]);
        layer.remote_write_interval = Some("1s".into());
        layer.external_labels = host.map(|h| vec![h]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_gives_prometheus_redlines_own_figures() {
    let prometheus = TestPrometheus::start(REMOTE_WRITE_ONLY).await;
    let redline = redline_writing_to(&prometheus, None).await;
    let load = send_load(&redline, "rw-api", 400, 0).await;
    send_load(&redline, HOSTILE_SERVICE, 3, 0).await;
    assert_prometheus_agrees(&prometheus, &redline, "rw-api", load).await;
    assert_hostile_name_survives(&prometheus).await;
    let metrics = redline.metrics_text().await;
    assert!(
        metrics.contains("redline_remote_write_samples_sent_total"),
        "{metrics}"
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_red_metrics_with_the_apis_credentials() {
    let token = "scrape-s3cret";
    let redline = TestRedline::start_with(|layer| {
        layer.web_auth_token = Some(token.into());
    })
    .await;
    let unauthorised = redline
        .client()
        .get(redline.url("/metrics/red"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthorised.status().as_u16(), 401);
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: redline\n    \
         scrape_interval: 1s\n    metrics_path: /metrics/red\n    authorization:\n      \
         credentials: {token}\n    static_configs:\n      - targets: ['{}']\n",
        redline.web
    );
    let prometheus = TestPrometheus::start(&config).await;
    let load = send_load(&redline, "scraped-api", 300, 7).await;
    send_load(&redline, HOSTILE_SERVICE, 3, 0).await;
    // The API needs the token too.
    let authorised = redline
        .client()
        .get(redline.url("/api/v1/endpoints?service=scraped-api&since=1h"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(authorised.status().as_u16(), 200);
    let prometheus_sees = prometheus
        .wait_for_value(
            r#"sum(redline_requests_total{service="scraped-api"})"#,
            WAIT,
            |v| v == load.requests as f64,
        )
        .await;
    assert_eq!(prometheus_sees, load.requests as f64);
    prometheus
        .wait_for_value(
            r#"sum(redline_request_errors_total{service="scraped-api"})"#,
            WAIT,
            |v| v == load.errors as f64,
        )
        .await;
    let quantile = prometheus
        .wait_for_value(
            r#"histogram_quantile(0.99, sum by (le) (redline_request_duration_seconds_bucket{service="scraped-api"}))"#,
            WAIT,
            |v| v.is_finite(),
        )
        .await;
    let own = authorised_endpoint(&redline, token, "scraped-api", load.requests).await;
    let own_p99 = own["latency_ms"]["p99"].as_f64().expect("p99") / 1000.0;
    let (lower, upper) = bucket_of(own_p99);
    assert!(
        lower <= quantile && quantile <= upper,
        "PromQL p99 {quantile} s outside ({lower}, {upper}], the bucket of redline's p99 {own_p99} s"
    );
    assert_hostile_name_survives(&prometheus).await;
    redline.stop().await;
}

/// The endpoint figures through the API with a bearer token.
async fn authorised_endpoint(
    redline: &TestRedline,
    token: &str,
    service: &str,
    requests: u64,
) -> Value {
    let url = redline.url(&format!("/api/v1/endpoints?service={service}&since=1h"));
    let found = crate::helpers::poll(WAIT, || async {
        let body: Value = redline
            .client()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        endpoint(&body, "GET", ROUTE)
            .filter(|e| e["requests"] == requests)
            .cloned()
    })
    .await;
    found.expect("redline counts the load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_redlines_adds_up_in_one_prometheus() {
    let prometheus = TestPrometheus::start(REMOTE_WRITE_ONLY).await;
    let start = |host: &'static str| redline_writing_to(&prometheus, Some(host));
    let (a, b) = (start("host-a").await, start("host-b").await);
    let load_a = send_load(&a, "fleet-api", 200, 0).await;
    let load_b = send_load(&b, "fleet-api", 300, 3).await;
    let fleet = load_a.requests + load_b.requests;
    prometheus
        .wait_for_value(
            r#"sum(redline_requests_total{service="fleet-api"})"#,
            WAIT,
            |v| v == fleet as f64,
        )
        .await;
    prometheus
        .wait_for_value(
            r#"sum(redline_request_errors_total{service="fleet-api"})"#,
            WAIT,
            |v| v == (load_a.errors + load_b.errors) as f64,
        )
        .await;
    // One series per host: neither overwrote the other.
    let by_host = prometheus
        .query(r#"sum by (host) (redline_requests_total{service="fleet-api"})"#)
        .await;
    let mut by_host: Vec<(String, f64)> = by_host
        .into_iter()
        .map(|(labels, v)| (labels["host"].as_str().unwrap_or("").to_string(), v))
        .collect();
    by_host.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        by_host,
        [
            ("host-a".to_string(), load_a.requests as f64),
            ("host-b".to_string(), load_b.requests as f64)
        ]
    );
    // The fleet's p99 is the merged buckets' p99, finite and within the load's range.
    let quantile = prometheus
        .wait_for_value(
            r#"histogram_quantile(0.99, sum by (le) (redline_request_duration_seconds_bucket{service="fleet-api"}))"#,
            WAIT,
            |v| v.is_finite(),
        )
        .await;
    assert!((0.25..=0.5).contains(&quantile), "fleet p99 {quantile}");
    a.stop().await;
    b.stop().await;
}

/// Every PromQL expression of the dashboard's panels, with `$service`, `$route` and
/// `$__rate_interval` substituted.
fn dashboard_queries(dashboard: &Value, service: &str) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("${service:regex}", service)
                .replace("$service", service)
                .replace("$route", ".*");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            queries.push((panel["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grafana_panel_query_returns_data() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/grafana/redline-red.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"service") && variables.contains(&"route"));

    let prometheus = TestPrometheus::start(REMOTE_WRITE_ONLY).await;
    let redline = redline_writing_to(&prometheus, None).await;
    // Two bursts a few pushes apart, so that rates over them are not zero.
    let first = send_load(&redline, "grafana-api", 200, 0).await;
    prometheus
        .wait_for_value(
            r#"sum(redline_requests_total{service="grafana-api"})"#,
            WAIT,
            |v| v == first.requests as f64,
        )
        .await;
    let second = send_load(&redline, "grafana-api", 200, 11).await;
    prometheus
        .wait_for_value(
            r#"sum(redline_requests_total{service="grafana-api"})"#,
            WAIT,
            |v| v == (first.requests + second.requests) as f64,
        )
        .await;
    // The variables' own queries find the service and its route.
    assert!(
        prometheus
            .label_values("service", "redline_requests_total")
            .await
            .contains(&"grafana-api".to_string())
    );
    assert_eq!(
        prometheus
            .label_values("route", r#"redline_requests_total{service=~"grafana-api"}"#)
            .await,
        [ROUTE]
    );
    let queries = dashboard_queries(&dashboard, "grafana-api");
    assert!(queries.len() >= 6, "{queries:?}");
    for (title, expr) in queries {
        let found = crate::helpers::poll(WAIT, || async {
            let result = prometheus.query(&expr).await;
            (!result.is_empty() && result.iter().all(|(_, v)| v.is_finite())).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "panel {title:?}: {expr} returned no finite data: {:?}",
            prometheus.query(&expr).await
        );
    }
    redline.stop().await;
}
