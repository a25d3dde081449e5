//! TLS end to end, with certificates made at test time: real `opentelemetry-otlp` exporters
//! over OTLP/gRPC and OTLP/HTTP trusting the test CA (as `OTEL_EXPORTER_OTLP_CERTIFICATE`
//! does), the dashboard over https, client certificates required and naming the sender (mTLS),
//! and certificates reloaded by SIGHUP while an established connection goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prost::Message;
use tokio::net::TcpStream;

use crate::helpers::{
    ExportVia, Issued, RedlineProcess, TestCa, TestRedline, Transport, client_tls, export_request,
    https, poll, requests_of_service, sample, sdk_export, write_file,
};
use crate::otlp_auth::run_env_exporter;

async fn serving_tls(ca: &TestCa, client_ca: Option<&TestCa>) -> TestRedline {
    let server = ca.server();
    let dir = tempfile::tempdir().unwrap().keep();
    let cert = write_file(&dir, "cert.pem", &server.cert_pem);
    let key = write_file(&dir, "key.pem", &server.key_pem);
    let client_ca = client_ca.map(|ca| write_file(&dir, "client-ca.pem", &ca.cert_pem));
    let mut redline = TestRedline::start_with(|layer| {
        layer.tls_cert = Some(cert);
        layer.tls_key = Some(key);
        layer.otlp_client_ca = client_ca;
    })
    .await;
    redline.trust(&ca.cert_pem);
    redline
}

fn trusting(ca: &TestCa, identity: Option<Issued>) -> ExportVia {
    ExportVia {
        ca_pem: Some(ca.cert_pem.clone()),
        identity,
        ..Default::default()
    }
}

async fn wait_for_requests(redline: &TestRedline, service: &str, count: u64) {
    let reached = poll(Duration::from_secs(10), || async {
        (requests_of_service(redline, service).await == count).then_some(())
    })
    .await;
    assert!(reached.is_some(), "{service}: expected {count} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_send_over_tls_and_the_dashboard_is_served_over_https() {
    let ca = TestCa::new("redline test CA");
    let redline = serving_tls(&ca, None).await;
    sdk_export(
        Transport::Grpc,
        redline.grpc,
        trusting(&ca, None),
        "tls-grpc",
        "/a",
        4,
    )
    .await
    .expect("gRPC over TLS");
    sdk_export(
        Transport::Http,
        redline.http,
        trusting(&ca, None),
        "tls-http",
        "/b",
        3,
    )
    .await
    .expect("HTTP over TLS");
    // What the README tells SDKs: the endpoint and OTEL_EXPORTER_OTLP_CERTIFICATE.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.cert_pem);
    for (transport, address, service) in [
        ("grpc", redline.grpc, "tls-env-grpc"),
        ("http", redline.http, "tls-env-http"),
    ] {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://{address}")),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ca_file.display().to_string(),
            ),
            ("OTEL_SERVICE_NAME", service.to_string()),
        ];
        assert!(run_env_exporter(transport, &env).await, "{transport}");
        wait_for_requests(&redline, service, 6).await;
    }
    // The pages and API over https (the harness's client trusts the CA).
    wait_for_requests(&redline, "tls-grpc", 4).await;
    wait_for_requests(&redline, "tls-http", 3).await;
    let (status, overview) = redline.get_text("/").await;
    assert_eq!(status, 200);
    assert!(overview.contains("tls-grpc"), "{overview}");
    // Over https, browsers are told to keep to https.
    let request = axum::http::Request::get(format!("https://localhost:{}/", redline.web.port()))
        .body(Bytes::new())
        .unwrap();
    let response = https(redline.web, &ca.cert_pem, None, request)
        .await
        .expect("GET over TLS");
    assert_eq!(
        response
            .headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );

    // Plain text to a TLS port gets nowhere, nor does a client trusting another CA.
    let plain = sdk_export(
        Transport::Http,
        redline.http,
        ExportVia::default(),
        "tls-plain",
        "/c",
        1,
    )
    .await;
    assert!(plain.is_err());
    let stranger = TestCa::new("another CA");
    let untrusted = sdk_export(
        Transport::Grpc,
        redline.grpc,
        trusting(&stranger, None),
        "tls-plain",
        "/c",
        1,
    )
    .await;
    assert!(untrusted.is_err());
    assert_eq!(requests_of_service(&redline, "tls-plain").await, 0);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_name_the_sender() {
    let ca = TestCa::new("redline test CA");
    let redline = serving_tls(&ca, Some(&ca)).await;
    let billing = ca.client("tls-billing");
    sdk_export(
        Transport::Grpc,
        redline.grpc,
        trusting(&ca, Some(billing.clone())),
        "tls-mtls",
        "/m",
        5,
    )
    .await
    .expect("gRPC with a client certificate");
    sdk_export(
        Transport::Http,
        redline.http,
        trusting(&ca, Some(billing)),
        "tls-mtls",
        "/m",
        2,
    )
    .await
    .expect("HTTP with a client certificate");
    wait_for_requests(&redline, "tls-mtls", 7).await;

    let before = redline.metrics_text().await;
    let failed = |metrics: &str, listener: &str| {
        sample(
            metrics,
            &format!(
                r#"redline_tls_handshakes_failed_total{{listener="{listener}",reason="error"}}"#
            ),
        )
    };
    for transport in [Transport::Grpc, Transport::Http] {
        let address = match transport {
            Transport::Grpc => redline.grpc,
            Transport::Http => redline.http,
        };
        let anonymous = sdk_export(transport, address, trusting(&ca, None), "tls-anon", "/m", 1);
        assert!(
            anonymous.await.is_err(),
            "{transport:?} without a certificate"
        );
        let stranger = TestCa::new("another CA").client("tls-stranger");
        let forged = sdk_export(
            transport,
            address,
            trusting(&ca, Some(stranger)),
            "tls-anon",
            "/m",
            1,
        );
        assert!(
            forged.await.is_err(),
            "{transport:?} with another CA's certificate"
        );
    }
    let metrics = redline.metrics_text().await;
    assert!(failed(&metrics, "otlp_grpc") >= failed(&before, "otlp_grpc") + 2.0);
    assert!(failed(&metrics, "otlp_http") >= failed(&before, "otlp_http") + 2.0);
    assert_eq!(
        sample(
            &metrics,
            r#"redline_sender_items_accepted_total{sender="tls-billing",item="spans"}"#
        ),
        7.0,
        "{metrics}"
    );
    assert_eq!(requests_of_service(&redline, "tls-anon").await, 0);
    // The dashboard asks for no client certificate.
    let (_, page) = redline.get_text("/").await;
    assert!(page.contains("tls-billing") && page.contains("client certificate"));
    redline.stop().await;
}

/// A TLS connection to `address` trusting `ca_pem` (ALPN h2), or the handshake's error.
async fn tls_connect(
    address: SocketAddr,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut config = client_tls(ca_pem, None);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection over TLS that the test holds (no pool that would reconnect).
async fn h2_connection(address: SocketAddr, ca_pem: &str) -> H2Sender {
    let stream = tls_connect(address, ca_pem).await.expect("TLS handshake");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

async fn post_traces(sender: &mut H2Sender, address: SocketAddr) -> Result<u16, String> {
    let body = export_request("tls-reload", "/r", 1).encode_to_vec();
    let request =
        axum::http::Request::post(format!("https://localhost:{}/v1/traces", address.port()))
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[test]
fn certificates_reload_on_sighup_and_established_connections_go_on() {
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let dir = tempfile::tempdir().unwrap();
    let old = old_ca.server();
    let cert = write_file(dir.path(), "cert.pem", &old.cert_pem);
    let key = write_file(dir.path(), "key.pem", &old.key_pem);
    let redline = RedlineProcess::start(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut established = h2_connection(redline.http, &old_ca.cert_pem).await;
        assert_eq!(post_traces(&mut established, redline.http).await, Ok(200));
        assert!(tls_connect(redline.http, &new_ca.cert_pem).await.is_err());

        let new = new_ca.server();
        std::fs::write(&cert, &new.cert_pem).unwrap();
        std::fs::write(&key, &new.key_pem).unwrap();
        redline.hangup();
        let reloaded = poll(Duration::from_secs(10), || async {
            tls_connect(redline.http, &new_ca.cert_pem)
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            reloaded.is_some(),
            "the new certificate is served after SIGHUP"
        );
        for address in [redline.grpc, redline.web] {
            assert!(
                tls_connect(address, &new_ca.cert_pem).await.is_ok(),
                "{address}"
            );
        }
        assert!(tls_connect(redline.http, &old_ca.cert_pem).await.is_err());
        // The connection made with the old certificate goes on.
        assert_eq!(post_traces(&mut established, redline.http).await, Ok(200));
    });
}
