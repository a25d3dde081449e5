//! OTLP logs end to end: the real `opentelemetry-otlp` log exporter over gRPC and HTTP, records
//! of a kept trace on its waterfall (also when they arrive before the trace is chosen),
//! counts per severity, hostile exports (rejected, cut or unassociated, and counted), and the
//! logs API's and page's checks of their parameters.

use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue as OtlpValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};
use opentelemetry_sdk::Resource as SdkResource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use prost::Message;
use serde_json::Value;

use crate::helpers::{TestRedline, now_ns, spans_export, string};

enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

fn logger_provider(
    redline: &TestRedline,
    transport: Transport,
    service: &str,
) -> SdkLoggerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", redline.grpc))
            .build(),
        Transport::HttpProtobuf | Transport::HttpJson => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            })
            .with_endpoint(format!("http://{}/v1/logs", redline.http))
            .build(),
    }
    .expect("exporter builds");
    SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            SdkResource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build()
}

/// Emits `(severity, body)` records, the traced ones in `trace`, and flushes them (off the
/// async runtime: the SDK's flush blocks).
async fn emit(
    provider: SdkLoggerProvider,
    records: Vec<(Severity, &'static str)>,
    trace: Option<(TraceId, SpanId)>,
) {
    tokio::task::spawn_blocking(move || {
        let logger = provider.logger("otlp-logs-test");
        for (severity, body) in records {
            let mut record = logger.create_log_record();
            record.set_severity_number(severity);
            record.set_severity_text(severity.name());
            record.set_body(AnyValue::from(body));
            record.add_attribute("code.function", "checkout");
            if let Some((trace_id, span_id)) = trace {
                record.set_trace_context(trace_id, span_id, None);
            }
            logger.emit(record);
        }
        provider.force_flush().expect("logs exported");
        provider.shutdown().expect("provider shut down");
    })
    .await
    .expect("flush task");
}

/// The `logs` of an `/api/v1/logs` answer.
fn logs(body: &Value) -> Vec<Value> {
    body["logs"].as_array().cloned().unwrap_or_default()
}

fn bodies(body: &Value) -> Vec<String> {
    logs(body)
        .iter()
        .map(|l| l["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Records of `service` by severity over the last 5 minutes, every record received.
async fn counts(redline: &TestRedline, service: &str) -> Vec<(String, f64)> {
    let body = redline
        .get_ok(&format!(
            "/api/v1/metrics/query?service={service}&name=redline.log.records&agg=sum\
             &group_by=severity&since=5m&step=5m"
        ))
        .await;
    let mut out: Vec<(String, f64)> = body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let total = s["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[1].as_f64())
                .sum();
            (
                s["attributes"]["severity"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                total,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn sdk_round_trip(transport: Transport, service: &'static str) {
    let redline = TestRedline::start().await;
    emit(
        logger_provider(&redline, transport, service),
        vec![
            (Severity::Info, "request served"),
            (Severity::Debug, "cache lookup"),
            (Severity::Warn, "slow downstream"),
            (Severity::Error, "payment declined"),
        ],
        None,
    )
    .await;
    let path = format!("/api/v1/logs?service={service}&since=5m");
    let body = redline
        .wait_for(&path, Duration::from_secs(10), |b| logs(b).len() == 2)
        .await;
    // Newest first; records below WARN without a trace are counted, not kept.
    assert_eq!(bodies(&body), ["payment declined", "slow downstream"]);
    let error = &logs(&body)[0];
    assert_eq!(error["service"], service);
    assert_eq!(error["severity_number"], 17);
    assert_eq!(error["severity_text"], "ERROR");
    assert_eq!(error["attributes"]["code.function"], "checkout");
    assert!(error["trace_id"].is_null());
    assert!(error["time_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let errors_only = redline
        .get_ok(&format!(
            "/api/v1/logs?service={service}&severity_min=error&since=5m"
        ))
        .await;
    assert_eq!(bodies(&errors_only), ["payment declined"]);
    let found = redline
        .get_ok(&format!(
            "/api/v1/logs?service={service}&q=DOWNSTREAM&since=5m"
        ))
        .await;
    assert_eq!(bodies(&found), ["slow downstream"]);
    assert_eq!(
        counts(&redline, service).await,
        [
            ("DEBUG".to_string(), 1.0),
            ("ERROR".to_string(), 1.0),
            ("INFO".to_string(), 1.0),
            ("WARN".to_string(), 1.0),
        ]
    );
    let metrics = redline.metrics_text().await;
    assert!(
        metrics.contains("redline_log_records_accepted_total"),
        "{metrics}"
    );
    // The service page has its log panel, the /logs page lists the kept records.
    let page = redline.text(&format!("/services/{service}")).await;
    assert!(page.contains("Records by severity"), "{page}");
    assert!(page.contains("payment declined"));
    let list = redline.text(&format!("/logs?service={service}")).await;
    assert!(list.contains("slow downstream") && list.contains("payment declined"));
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exports_logs_over_grpc() {
    sdk_round_trip(Transport::Grpc, "logs-grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exports_logs_over_http_protobuf() {
    sdk_round_trip(Transport::HttpProtobuf, "logs-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_exports_logs_over_http_json() {
    sdk_round_trip(Transport::HttpJson, "logs-json").await;
}

fn text(value: &str) -> Option<OtlpValue> {
    Some(OtlpValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn record(severity_number: i32, body: &str, trace_id: &[u8], span_id: &[u8]) -> LogRecord {
    LogRecord {
        time_unix_nano: now_ns(),
        severity_number,
        body: text(body),
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        ..Default::default()
    }
}

fn logs_export(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn post(redline: &TestRedline, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    redline
        .client()
        .post(format!("http://{}/v1/logs", redline.http))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /v1/logs")
}

async fn post_logs(
    redline: &TestRedline,
    request: &ExportLogsServiceRequest,
) -> ExportLogsServiceResponse {
    let response = post(redline, "application/x-protobuf", request.encode_to_vec()).await;
    assert_eq!(response.status(), 200);
    ExportLogsServiceResponse::decode(response.bytes().await.unwrap()).expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_traces_logs_show_under_their_spans() {
    let redline = TestRedline::start().await;
    let trace_id = [0x5a; 16];
    let (root, child) = ([1u8; 8], [2u8; 8]);
    // An INFO record arrives before its trace is chosen: it waits, then is kept with it.
    let early = logs_export(
        "shop",
        vec![record(9, "reserving stock <b>now</b>", &trace_id, &child)],
    );
    assert!(post_logs(&redline, &early).await.partial_success.is_none());
    let end = now_ns();
    let span = |id: [u8; 8], parent: Option<[u8; 8]>, name: &str, error: bool| Span {
        trace_id: trace_id.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: end - 50_000_000,
        end_time_unix_nano: end,
        status: error.then(|| Status {
            code: StatusCode::Error as i32,
            ..Default::default()
        }),
        attributes: vec![
            string("http.request.method", "POST"),
            string("http.route", "/orders"),
        ],
        ..Default::default()
    };
    let spans = spans_export(
        "shop",
        vec![
            span(root, None, "POST /orders", true),
            span(child, Some(root), "reserve", false),
        ],
    );
    assert_eq!(redline.export(&spans).await, 200);
    // A DEBUG record after the trace is kept is kept at once; one of an unknown span too.
    let late = logs_export(
        "shop",
        vec![
            record(5, "stock reserved", &trace_id, &child),
            record(17, "order failed", &trace_id, &root),
            record(9, "from a span not kept", &trace_id, &[9; 8]),
        ],
    );
    post_logs(&redline, &late).await;
    let trace_hex = hex::encode(trace_id);
    let body = redline
        .wait_for(
            &format!(
                "/api/v1/logs?trace_id={}&since=5m",
                trace_hex.to_uppercase()
            ),
            Duration::from_secs(10),
            |b| logs(b).len() == 4,
        )
        .await;
    assert!(
        logs(&body)
            .iter()
            .all(|l| l["trace_id"] == trace_hex.as_str())
    );
    let page = redline.text(&format!("/traces/{trace_hex}")).await;
    // Telemetry text is escaped.
    assert!(
        page.contains("reserving stock &#60;b&#62;now&#60;/b&#62;")
            || page.contains("reserving stock &lt;b&gt;now&lt;/b&gt;"),
        "{page}"
    );
    assert!(!page.contains("<b>now</b>"));
    // Each record sits under its span: the child's two after the child's row.
    let child_row = page
        .find("reserve</div>")
        .or_else(|| page.find(">reserve"))
        .expect("child row");
    let reserved = page.find("stock reserved").expect("child's record");
    let failed = page.find("order failed").expect("root's record");
    assert!(
        failed < child_row && child_row < reserved,
        "records under their spans"
    );
    assert!(page.contains("Logs of spans not kept") && page.contains("from a span not kept"));
    // The endpoint page lists the trace's error record.
    let endpoint = redline
        .text("/services/shop/endpoints?method=POST&route=%2Forders")
        .await;
    assert!(endpoint.contains("Recent error logs") && endpoint.contains("order failed"));
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_log_exports_are_rejected_cut_or_unassociated_and_counted() {
    let redline = TestRedline::start().await;
    let huge = "x".repeat(1 << 20);
    let request = logs_export(
        "hostile",
        vec![
            record(99, "too severe", &[], &[]),
            record(-3, "negative", &[], &[]),
            record(17, &huge, &[1; 15], &[2; 3]),
            record(13, "<script>alert(1)</script>", &[], &[]),
        ],
    );
    let answer = post_logs(&redline, &request).await;
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_log_records, 2);
    assert!(
        partial.error_message.contains("severity_number"),
        "{partial:?}"
    );
    let body = redline
        .wait_for(
            "/api/v1/logs?service=hostile&since=5m",
            Duration::from_secs(10),
            |b| logs(b).len() == 2,
        )
        .await;
    let cut = logs(&body)
        .into_iter()
        .find(|l| l["severity_number"] == 17)
        .expect("the huge record is kept, cut");
    assert_eq!(cut["body"].as_str().unwrap().len(), 16 * 1024);
    assert!(cut["trace_id"].is_null() && cut["span_id"].is_null());

    // Not a logs export at all: 400 in the request's encoding; a gzip body is read.
    let garbage = post(&redline, "application/x-protobuf", vec![0xff; 64]).await;
    assert_eq!(garbage.status(), 400);
    let bad_hex = post(
        &redline,
        "application/json",
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"abc","body":{"stringValue":"x"}}]}]}]}"#.to_vec(),
    )
    .await;
    assert_eq!(bad_hex.status(), 400);
    let mut zipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut zipped,
        &logs_export("zipped", vec![record(21, "fatal, zipped", &[], &[])]).encode_to_vec(),
    )
    .unwrap();
    let response = redline
        .client()
        .post(format!("http://{}/v1/logs", redline.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(zipped.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // gRPC: a message that does not decode is INVALID_ARGUMENT.
    let code = crate::helpers::grpc_status(
        redline.grpc,
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        &[0xff; 16],
        false,
    )
    .await
    .expect("an answer");
    assert_eq!(code, 3);
    redline
        .wait_for(
            "/api/v1/logs?service=zipped&since=5m",
            Duration::from_secs(10),
            |b| bodies(b) == ["fatal, zipped"],
        )
        .await;
    let metrics = redline.metrics_text().await;
    for (counter, at_least) in [
        (
            "redline_log_records_rejected_total{reason=\"invalid\"}",
            2.0,
        ),
        ("redline_log_ids_ignored_total", 2.0),
        ("redline_truncated_total{field=\"log_body\"}", 1.0),
    ] {
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(counter)?.trim().parse::<f64>().ok());
        assert!(value >= Some(at_least), "{counter} in\n{metrics}");
    }
    // The record's text is escaped on the page.
    let page = redline.text("/logs?service=hostile").await;
    assert!(!page.contains("<script>alert(1)</script>"), "{page}");
    assert!(page.contains("alert(1)"));
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_api_and_page_name_the_parameter_they_refuse() {
    let redline = TestRedline::start().await;
    let long_q = "q".repeat(2000);
    for (query, parameter) in [
        ("severity_min=LOUD", "severity_min"),
        ("severity_min=25", "severity_min"),
        ("trace_id=xyz", "trace_id"),
        ("trace_id=0123456789abcdef0123456789abcdeg", "trace_id"),
        (&format!("q={long_q}") as &str, "q"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("since=forever", "since"),
        ("from=-5", "from"),
        ("from=300000000000000", "from"),
        ("verbose=1", "verbose"),
        ("service=a&service=b", "service"),
    ] {
        let (status, body) = redline.get(&format!("/api/v1/logs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        let page_query = query.replace("since=", "range=");
        if ["verbose", "service", "limit"].contains(&parameter) {
            continue;
        }
        let page = redline
            .client()
            .get(redline.url(&format!("/logs?{page_query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 400, "/logs?{page_query}");
    }
    let (status, body) = redline.get("/api/v1/logs").await;
    assert_eq!(status, 200);
    assert_eq!(body["logs"], serde_json::json!([]));
    redline.stop().await;
}
