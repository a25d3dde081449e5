//! OTLP authentication end to end: real `opentelemetry-otlp` exporters presenting named API
//! keys over gRPC and HTTP (also configured only by the SDK's environment variables, in a
//! process of their own), refusals as 401 with a `google.rpc.Status` in the request's encoding
//! and as UNAUTHENTICATED, counted per reason; what each key sends on `/metrics` and the
//! overview; every OTLP route and service covered; keys reloaded (and by SIGHUP); and the
//! refusal to listen beyond loopback without credentials.

use std::time::Duration;

use prost::Message;

use crate::helpers::{
    ExportVia, RedlineProcess, TestRedline, Transport, export_request, grpc_status_with, poll,
    requests_of_service, sample, sdk_export, sdk_send_spans, sdk_span_exporter,
};

const TEAM_A_KEY: &str = "team-a-0123456789abcdef0123456789";
const TEAM_B_KEY: &str = "team-b-fedcba9876543210fedcba9876";

fn key_header(key: &str) -> ExportVia {
    ExportVia {
        headers: vec![("x-otlp-api-key".into(), key.into())],
        ..Default::default()
    }
}

async fn with_keys(keys: &[(&str, &str)]) -> TestRedline {
    let keys: Vec<String> = keys.iter().map(|(n, k)| format!("{n}={k}")).collect();
    TestRedline::start_with(|layer| layer.otlp_api_keys = Some(keys)).await
}

/// Waits until `service` has `count` requests.
async fn wait_for_requests(redline: &TestRedline, service: &str, count: u64) {
    let reached = poll(Duration::from_secs(10), || async {
        (requests_of_service(redline, service).await == count).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "{service}: {} requests, expected {count}",
        requests_of_service(redline, service).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_with_a_key_are_accepted_and_counted_by_its_name() {
    let redline = with_keys(&[("auth-team-a", TEAM_A_KEY), ("auth-team-b", TEAM_B_KEY)]).await;
    sdk_export(
        Transport::Grpc,
        redline.grpc,
        key_header(TEAM_A_KEY),
        "auth-checkout",
        "/cart",
        7,
    )
    .await
    .expect("gRPC export with team A's key");
    // Authorization: Bearer works as well, over OTLP/HTTP.
    let bearer = ExportVia {
        headers: vec![("authorization".into(), format!("Bearer {TEAM_B_KEY}"))],
        ..Default::default()
    };
    sdk_export(
        Transport::Http,
        redline.http,
        bearer,
        "auth-billing",
        "/pay",
        5,
    )
    .await
    .expect("HTTP export with team B's key");
    wait_for_requests(&redline, "auth-checkout", 7).await;
    wait_for_requests(&redline, "auth-billing", 5).await;

    let metrics = redline.metrics_text().await;
    assert_eq!(
        sample(
            &metrics,
            r#"redline_sender_items_accepted_total{sender="auth-team-a",item="spans"}"#
        ),
        7.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"redline_sender_items_accepted_total{sender="auth-team-b",item="spans"}"#
        ),
        5.0
    );
    // Who sends what, on the overview.
    let (_, page) = redline.get_text("/").await;
    let senders = &page[page.find("id=\"senders\"").expect("a senders table")..];
    let team_a = &senders[senders.find("auth-team-a").expect("team A listed")..];
    let row = &team_a[..team_a.find("</tr>").unwrap()];
    assert!(
        row.contains("API key") && row.contains("auth-checkout"),
        "{row}"
    );
    assert!(row.contains("7 spans"), "{row}");
    assert!(!row.contains("auth-billing"), "{row}");
    assert!(!page.contains(TEAM_A_KEY), "a key is never shown");
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_keys_are_refused_in_the_request_encoding_and_counted() {
    let redline = with_keys(&[("auth-refusals", TEAM_A_KEY)]).await;
    let before = redline.metrics_text().await;
    let rejected = |metrics: &str, reason: &str| {
        sample(
            metrics,
            &format!(r#"redline_export_requests_rejected_total{{reason="{reason}"}}"#),
        )
    };
    let body = export_request("auth-refused", "/x", 3).encode_to_vec();
    let post = |content_type: &'static str, key: Option<&'static str>, body: Vec<u8>| {
        let mut request = redline
            .client()
            .post(format!("http://{}/v1/traces", redline.http))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.header("x-otlp-api-key", key);
        }
        request.send()
    };

    // Protobuf without a key: 401 and a protobuf google.rpc.Status, UNAUTHENTICATED (16).
    let response = post("application/x-protobuf", None, body.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let status = redline::ingest::http::RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 16);
    assert!(
        status.message.contains("x-otlp-api-key"),
        "{}",
        status.message
    );

    // JSON with a wrong key: 401 and a JSON google.rpc.Status.
    let response = post("application/json", Some(TEAM_B_KEY), b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["code"], 16);
    assert_eq!(json["message"], "the OTLP API key is not valid");

    // gRPC: UNAUTHENTICATED, without a key, with a wrong one.
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let no_key = grpc_status_with(redline.grpc, path, &body, false, &[]).await;
    assert_eq!(no_key, Ok(16));
    let wrong = [("authorization", "Bearer not-the-key-0123456789")];
    assert_eq!(
        grpc_status_with(redline.grpc, path, &body, false, &wrong).await,
        Ok(16)
    );
    let right = [("x-otlp-api-key", TEAM_A_KEY)];
    assert_eq!(
        grpc_status_with(redline.grpc, path, &body, false, &right).await,
        Ok(0)
    );

    // The real exporter sees its export fail, and nothing it sent is counted.
    let refused = sdk_export(
        Transport::Grpc,
        redline.grpc,
        key_header(TEAM_B_KEY),
        "auth-refused",
        "/x",
        4,
    )
    .await;
    assert!(refused.is_err(), "an export with a wrong key fails");
    let refused = sdk_export(
        Transport::Http,
        redline.http,
        ExportVia::default(),
        "auth-refused",
        "/x",
        4,
    )
    .await;
    assert!(refused.is_err(), "an export without a key fails");
    wait_for_requests(&redline, "auth-refused", 3).await;

    let after = redline.metrics_text().await;
    assert!(rejected(&after, "missing_api_key") >= rejected(&before, "missing_api_key") + 3.0);
    assert!(rejected(&after, "wrong_api_key") >= rejected(&before, "wrong_api_key") + 3.0);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_otlp_route_and_service_requires_the_key() {
    let redline = with_keys(&[("auth-routes", TEAM_A_KEY)]).await;
    for path in ["/v1/logs", "/v1/metrics", "/v1/anything", "/"] {
        let response = redline
            .client()
            .post(format!("http://{}{path}", redline.http))
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    for path in [
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        "/some.other.Service/Method",
    ] {
        let status = grpc_status_with(redline.grpc, path, &[], false, &[]).await;
        assert_eq!(status, Ok(16), "{path}");
    }
    // A CORS preflight carries no credentials and is not refused for it.
    let preflight = redline
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{}/v1/traces", redline.http),
        )
        .send()
        .await
        .unwrap();
    assert_ne!(preflight.status(), 401);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_keys_apply_to_the_next_request() {
    let redline = with_keys(&[("auth-reload", TEAM_A_KEY)]).await;
    let body = export_request("auth-reload", "/r", 1).encode_to_vec();
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let with = |key| [("x-otlp-api-key", key)];
    assert_eq!(
        grpc_status_with(redline.grpc, path, &body, false, &with(TEAM_A_KEY)).await,
        Ok(0)
    );
    let mut layer = crate::helpers::port_zero_layer(&redline.data_dir);
    layer.otlp_api_keys = Some(vec![format!("auth-reload={TEAM_B_KEY}")]);
    let settings = redline::config::Settings::resolve(layer).unwrap();
    redline.reloader().reload_keys(&settings);
    assert_eq!(
        grpc_status_with(redline.grpc, path, &body, false, &with(TEAM_A_KEY)).await,
        Ok(16)
    );
    assert_eq!(
        grpc_status_with(redline.grpc, path, &body, false, &with(TEAM_B_KEY)).await,
        Ok(0)
    );
    redline.stop().await;
}

/// What an application configured only by the SDK's standard variables sends: run by
/// [`the_sdk_environment_variables_just_work`] in a process of its own, whose environment it
/// sets (`REDLINE_TEST_TRANSPORT`: grpc or http).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by the_sdk_environment_variables_just_work"]
async fn exporter_configured_by_the_environment() {
    let transport = match std::env::var("REDLINE_TEST_TRANSPORT").as_deref() {
        Ok("grpc") => Transport::Grpc,
        Ok("http") => Transport::Http,
        other => panic!("REDLINE_TEST_TRANSPORT is {other:?}"),
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap();
    // The Rust SDK reads the endpoint and the headers itself; certificates are the
    // application's to pass to its TLS settings, which is what this does with the variables
    // other SDKs read themselves.
    let read = |name| {
        std::env::var(name)
            .ok()
            .map(|path| std::fs::read_to_string(path).unwrap())
    };
    let via = ExportVia {
        headers: Vec::new(),
        ca_pem: read("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        identity: read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE").map(|cert_pem| {
            crate::helpers::Issued {
                cert_pem,
                key_pem: read("OTEL_EXPORTER_OTLP_CLIENT_KEY").unwrap(),
            }
        }),
    };
    tokio::task::spawn_blocking(move || {
        let exporter = sdk_span_exporter(transport, None, &via).expect("exporter builds");
        sdk_send_spans(exporter, &service, "/env", 6).expect("spans exported");
    })
    .await
    .unwrap();
}

/// Runs [`exporter_configured_by_the_environment`] with `env` set; whether it passed.
pub async fn run_env_exporter(transport: &str, env: &[(&str, String)]) -> bool {
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "otlp_auth::exporter_configured_by_the_environment",
            "--ignored",
            "--nocapture",
        ])
        .env("REDLINE_TEST_TRANSPORT", transport)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("the test binary runs");
    let text = String::from_utf8_lossy(&output.stdout);
    output.status.success() && text.contains("1 passed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_environment_variables_just_work() {
    let redline = with_keys(&[("auth-env", TEAM_A_KEY)]).await;
    for (transport, address, service) in [
        ("grpc", redline.grpc, "auth-env-grpc"),
        ("http", redline.http, "auth-env-http"),
    ] {
        let env = |key: &str| {
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{address}")),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    format!("x-otlp-api-key={key}"),
                ),
                ("OTEL_SERVICE_NAME", service.to_string()),
            ]
        };
        assert!(
            !run_env_exporter(transport, &env(TEAM_B_KEY)).await,
            "{transport}: a wrong key fails"
        );
        assert!(
            run_env_exporter(transport, &env(TEAM_A_KEY)).await,
            "{transport}"
        );
        wait_for_requests(&redline, service, 6).await;
    }
    redline.stop().await;
}

#[test]
fn keys_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let keys = crate::helpers::write_file(dir.path(), "keys", &format!("ops={TEAM_A_KEY}\n"));
    let redline = RedlineProcess::start(&["--otlp-api-keys-file".as_ref(), keys.as_os_str()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = export_request("auth-sighup", "/h", 1).encode_to_vec();
    let path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let status = |key: &'static str| {
        runtime.block_on(grpc_status_with(
            redline.grpc,
            path,
            &body,
            false,
            &[("x-otlp-api-key", key)],
        ))
    };
    assert_eq!(status(TEAM_A_KEY), Ok(0));
    assert_eq!(status(TEAM_B_KEY), Ok(16));
    std::fs::write(&keys, format!("# rotated\nops={TEAM_B_KEY}\n")).unwrap();
    redline.hangup();
    let rotated = runtime.block_on(poll(Duration::from_secs(10), || async {
        let answer = grpc_status_with(
            redline.grpc,
            path,
            &body,
            false,
            &[("x-otlp-api-key", TEAM_B_KEY)],
        )
        .await;
        (answer == Ok(0)).then_some(())
    }));
    assert!(rotated.is_some(), "the new key is taken after SIGHUP");
    assert_eq!(status(TEAM_A_KEY), Ok(16), "the old key is refused");

    // A keys file that no longer loads leaves the keys in use.
    std::fs::write(&keys, "ops=short\n").unwrap();
    redline.hangup();
    let failed = runtime.block_on(poll(Duration::from_secs(10), || async {
        let metrics = reqwest::get(format!("http://{}/metrics", redline.web))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let series = r#"redline_reloads_total{what="otlp_api_keys",result="error"}"#;
        (sample(&metrics, series) == 1.0).then_some(())
    }));
    assert!(failed.is_some(), "the failed reload is counted");
    assert_eq!(status(TEAM_B_KEY), Ok(0));
}

#[test]
fn otlp_beyond_loopback_without_credentials_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .args([
            "serve",
            "--otlp-grpc-addr",
            "0.0.0.0:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
        ])
        .args(["--web-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("REDLINE_OTLP_API_KEYS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("otlp_grpc_addr: 0.0.0.0:0 is reachable beyond this machine")
            && stderr.contains("set otlp_api_keys or otlp_api_keys_file"),
        "{stderr}"
    );
}
