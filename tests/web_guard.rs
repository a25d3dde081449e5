//! The web address's guard on a real server: the security headers on every answer of every
//! route (pages, API, assets, errors, 404s, 405s, refusals, `/metrics`), and the Host allowlist
//! that keeps DNS rebinding away from the API and the CSRF-guarded forms.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestRedline, poll};

const HEADERS: [(&str, &str); 7] = [
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("permissions-policy", "camera=()"),
];

fn assert_guarded(response: &Response, what: &str) {
    for (name, expected) in HEADERS {
        let value = response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what} ({}): no {name}", response.status()));
        assert!(
            value.contains(expected),
            "{what}: {name} is {value:?}, not {expected:?}"
        );
    }
    // Meaningless over clear text, and a lie about how the dashboard is served.
    assert!(
        response
            .headers()
            .get("strict-transport-security")
            .is_none(),
        "{what}: Strict-Transport-Security over http"
    );
}

/// Every route template of the web address, read from the code (`.route("…"`), so that a
/// route added later is covered without touching this test.
fn route_templates() -> Vec<String> {
    let mut routes = Vec::new();
    let mut files = Vec::new();
    collect_rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web"),
        &mut files,
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices(".route(\"") {
            let rest = &text[at + ".route(\"".len()..];
            let end = rest.find('"').expect("closing quote");
            routes.push(rest[..end].to_string());
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

fn collect_rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// A template with its parameters filled in (`{service}` → `shop`, `{file}` → `style.css`).
fn concrete(template: &str) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("closing brace") + open;
        path.push_str(match &rest[open + 1..close] {
            "file" => "style.css",
            "trace_id" => "0af7651916cd43dd8448eb211c80319c",
            "service" => "shop",
            _ => "nothing-here",
        });
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    path
}

async fn refused_total(redline: &TestRedline, reason: &str) -> u64 {
    let wanted = format!("redline_web_requests_refused_total{{reason=\"{reason}\"}} ");
    redline
        .metrics_text()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&wanted)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn every_answer_of_every_route_carries_the_security_headers() {
    let redline = TestRedline::start().await;
    let client = redline.client();
    let routes = route_templates();
    assert!(routes.len() >= 20, "routes found in src/web: {routes:?}");
    assert!(routes.contains(&"/alerts".to_string()), "{routes:?}");
    let mut statuses = std::collections::BTreeSet::new();
    for template in &routes {
        let path = concrete(template);
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let response = client
                .request(method.clone(), redline.url(&path))
                .send()
                .await
                .unwrap();
            statuses.insert(response.status().as_u16());
            assert_guarded(&response, &format!("{method} {path}"));
        }
    }
    // Pages, created silences, bad requests, not found, wrong methods, bad bodies.
    for status in [200, 400, 404, 405] {
        assert!(statuses.contains(&status), "{status} among {statuses:?}");
    }

    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("a page", client.get(redline.url("/alerts")), 200),
        ("metrics", client.get(redline.url("/metrics")), 200),
        ("no route", client.get(redline.url("/no/such/page")), 404),
        ("no asset", client.get(redline.url("/assets/nope.js")), 404),
        (
            "a bad parameter",
            client.get(redline.url("/api/v1/services?range=forever")),
            400,
        ),
        (
            "an unknown trace",
            client.get(redline.url("/traces/0af7651916cd43dd8448eb211c80319c")),
            404,
        ),
        (
            "a CSRF refusal",
            client
                .post(redline.url("/alerts/silences"))
                .header("sec-fetch-site", "cross-site")
                .form(&[("matchers", "alertname=X"), ("duration", "1h")]),
            403,
        ),
        (
            "a Host refusal",
            client
                .get(redline.url("/"))
                .header("host", "rebound.evil.example"),
            421,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_guarded(&response, what);
    }
    let etag = client
        .get(redline.url("/assets/app.js"))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    let not_modified = client
        .get(redline.url("/assets/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_guarded(&not_modified, "304");
    redline.stop().await;

    // Refusals of the credentials check too.
    let locked = TestRedline::start_with(|s| s.web_auth_token = Some("s3cret".into())).await;
    for path in ["/", "/alerts", "/api/v1/services", "/metrics", "/nowhere"] {
        let response = locked.client().get(locked.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_guarded(&response, path);
    }
    let probe = locked
        .client()
        .get(locked.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    assert_guarded(&probe, "/healthz");
    locked.stop().await;
}

#[tokio::test]
async fn dns_rebinding_cannot_reach_the_api_or_the_forms() {
    let redline = TestRedline::start_with(|s| {
        s.public_url = Some("https://redline.example.com/".into());
        s.allowed_hosts = Some(vec!["dash.internal:8443".into(), ".ops.example".into()]);
    })
    .await;
    let client = redline.client();
    let port = redline.web.port();
    let before = refused_total(&redline, "host").await;

    let status = |host: String, path: &'static str| {
        let request = client.get(redline.url(path)).header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost:8080".into(),
        "redline.example.com".into(),
        "dash.internal:8443".into(),
        "grafana.ops.example".into(),
    ] {
        assert_eq!(
            status(host.clone(), "/api/v1/services").await,
            200,
            "{host}"
        );
    }
    for host in [
        format!("rebound.evil.example:{port}"),
        "evil.example".into(),
        "dash.internal:9900".into(),
        "redline.example.com.evil.example".into(),
        "localhost.evil.example".into(),
    ] {
        assert_eq!(
            status(host.clone(), "/api/v1/services").await,
            421,
            "{host}"
        );
        assert_eq!(status(host.clone(), "/").await, 421, "{host}");
    }
    let refused = client
        .get(redline.url("/api/v1/services"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    let body = refused.text().await.unwrap();
    assert!(body.contains("allowed_hosts"), "{body}");

    // The rebinding page's form post is same-origin to the browser, so the CSRF guard lets
    // it through; the Host check does not.
    let forged = client
        .post(redline.url("/alerts/silences"))
        .header("host", format!("evil.example:{port}"))
        .header("origin", format!("http://evil.example:{port}"))
        .header("sec-fetch-site", "same-origin")
        .form(&[
            ("matchers", "alertname=Everything"),
            ("duration", "30d"),
            ("created_by", "attacker"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 421);
    let api = client
        .post(redline.url("/api/v1/silences"))
        .header("host", "evil.example")
        .json(&serde_json::json!({"matchers": ["alertname=X"], "duration": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 421);
    let silences = redline.get_ok("/api/v1/silences").await;
    assert_eq!(silences["silences"], serde_json::json!([]), "{silences}");

    // The same form from the dashboard's own origin works.
    let own = client
        .post(redline.url("/api/v1/silences"))
        .header("host", format!("localhost:{port}"))
        .json(&serde_json::json!({"matchers": ["alertname=X"], "duration": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201);

    // HTTP/1.1 as written on the wire: no Host at all, and an absolute-form target whose
    // authority is not allowed even though the Host header is.
    let raw = |request: String| async move {
        let mut stream = tokio::net::TcpStream::connect(redline.web).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    let no_host = raw("GET /api/v1/services HTTP/1.0\r\n\r\n".into()).await;
    assert!(no_host.starts_with("HTTP/1.0 400"), "{no_host}");
    assert!(
        no_host
            .to_ascii_lowercase()
            .contains("x-frame-options: deny")
    );
    let absolute = raw(format!(
        "GET http://evil.example:{port}/api/v1/services HTTP/1.1\r\nhost: localhost:{port}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(absolute.starts_with("HTTP/1.1 421"), "{absolute}");

    // Counted on /metrics (process-wide: other tests may add to it, never take away).
    let counted = poll(Duration::from_secs(10), || async {
        let now = refused_total(&redline, "host").await;
        (now >= before + 13).then_some(now)
    })
    .await;
    assert!(counted.is_some(), "refusals counted on /metrics");
    assert!(refused_total(&redline, "no_host").await >= 1);
    redline.stop().await;
}

#[tokio::test]
async fn a_wildcard_turns_the_host_check_off_and_bad_entries_are_refused() {
    let open = TestRedline::start_with(|s| s.allowed_hosts = Some(vec!["*".into()])).await;
    let response = open
        .client()
        .get(open.url("/api/v1/services"))
        .header("host", "anything.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    open.stop().await;

    let temp = tempfile::tempdir().unwrap();
    let mut layer = crate::helpers::port_zero_layer(temp.path());
    layer.allowed_hosts = Some(vec!["http://x.example/".into(), "10.0.0.1".into()]);
    layer.public_url = Some("redline.example.com".into());
    let message = redline::config::Settings::resolve(layer)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("allowed_hosts: \"http://x.example/\""),
        "{message}"
    );
    assert!(message.contains("allowed_hosts: \"10.0.0.1\""), "{message}");
    assert!(
        message.contains("public_url: \"redline.example.com\""),
        "{message}"
    );
}
