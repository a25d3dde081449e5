//! Alerting end to end: spans through OTLP make a rule fire, a real SMTP server receives the
//! e-mail with its evidence, the alert resolves, a restart while firing sends nothing twice,
//! and mail queued while the SMTP server is down arrives exactly once when it is back.

use std::path::Path;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};

use crate::helpers::{TestRedline, poll, port_zero_layer};
use crate::notify::{SmtpServer, received};

fn write_rules(dir: &Path, smtp_port: u16) -> std::path::PathBuf {
    let path = dir.join("alerts.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[global]
eval_interval = "1s"
resolved_retention = "10m"

[[rule]]
name = "SlowCheckout"
service = "shop"
method = "GET"
route = "/checkout"
stat = "p99"
window = "15s"
threshold = 100
labels = {{ severity = "page" }}
annotations = {{ summary = "p99 of checkout is {{{{ value }}}}" }}

[[receiver]]
name = "oncall"
email = {{ to = ["oncall@example.com"], from = "redline@example.com" }}

[route]
receiver = "oncall"
group_wait = "1s"
group_interval = "2s"
repeat_interval = "1h"
send_resolved = true

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout = "5s"
"#
        ),
    )
    .unwrap();
    path
}

/// Sends `count` checkout requests of `duration_ms` each, ending now.
async fn send(redline: &TestRedline, duration_ms: u64, count: usize) {
    let mut request = crate::helpers::export_request("shop", "/checkout", count);
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        span.start_time_unix_nano = span.end_time_unix_nano - duration_ms * 1_000_000;
        span.trace_id[0] = rand::random();
        span.span_id[0] = rand::random();
    }
    assert_eq!(redline.export(&request).await, 200);
}

/// Keeps sending requests of `duration_ms` until `done` holds for the received mail.
async fn drive_until(
    redline: &TestRedline,
    smtp_dir: &Path,
    duration_ms: u64,
    deadline: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    poll(deadline, || async {
        send(redline, duration_ms, 20).await;
        let subjects = subjects(smtp_dir);
        done(&subjects).then_some(subjects)
    })
    .await
    .unwrap_or_else(|| panic!("mail never matched; received {:?}", subjects(smtp_dir)))
}

fn subjects(dir: &Path) -> Vec<String> {
    received(dir)
        .iter()
        .map(|m| {
            MessageParser::default()
                .parse(&m.raw)
                .and_then(|p| p.subject().map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

fn firing(subjects: &[String]) -> usize {
    subjects.iter().filter(|s| s.starts_with("[FIRING")).count()
}

async fn alert_state(redline: &TestRedline) -> String {
    let body = redline.get_ok("/api/v1/alerts").await;
    body["rules"][0]["state"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_fires_mails_evidence_resolves_and_survives_restarts_and_smtp_outages() {
    let smtp_dir = tempfile::tempdir().unwrap();
    let mut smtp = SmtpServer::start(smtp_dir.path(), &[]);
    let data = tempfile::tempdir().unwrap();
    let mut layer = port_zero_layer(data.path());
    layer.alerts_file = Some(write_rules(data.path(), smtp.port));
    let redline = TestRedline::start_in(layer.clone()).await;

    // Slow checkouts: the rule fires and one e-mail with evidence arrives.
    let mail = drive_until(
        &redline,
        smtp_dir.path(),
        300,
        Duration::from_secs(30),
        |s| firing(s) == 1,
    )
    .await;
    assert!(
        mail[0].starts_with("[FIRING:1] SlowCheckout shop"),
        "{mail:?}"
    );
    let raw = &received(smtp_dir.path())[0].raw;
    let message = MessageParser::default()
        .parse(raw)
        .expect("parseable e-mail");
    let text = message.body_text(0).expect("text part");
    assert!(
        text.contains("SlowCheckout") && text.contains("300"),
        "{text}"
    );
    let html = message.body_html(0).expect("html part");
    let image = message
        .attachments()
        .find(|part| {
            part.content_type()
                .is_some_and(|c| c.ctype() == "image" && c.subtype() == Some("png"))
        })
        .expect("inline PNG chart");
    let cid = image.content_id().expect("the chart has a Content-ID");
    assert!(
        html.contains(&format!("cid:{cid}")),
        "the HTML shows the chart"
    );
    assert!(image.contents().starts_with(b"\x89PNG"), "a real PNG");

    // A restart while firing: still firing, nothing sent twice. (The window is wide enough
    // that a slow restart does not let the slow requests age out of it before they resume.)
    redline.stop().await;
    let redline = TestRedline::start_in(layer.clone()).await;
    send(&redline, 300, 20).await;
    let state = poll(Duration::from_secs(10), || async {
        let state = alert_state(&redline).await;
        (state == "firing").then_some(state)
    })
    .await;
    assert_eq!(
        state.as_deref(),
        Some("firing"),
        "firing survives the restart"
    );
    for _ in 0..8 {
        send(&redline, 300, 20).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        subjects(smtp_dir.path()).len(),
        1,
        "no duplicate after the restart"
    );

    // Fast again: the resolved e-mail arrives.
    let mail = drive_until(&redline, smtp_dir.path(), 5, Duration::from_secs(60), |s| {
        s.iter().any(|s| s.starts_with("[RESOLVED]"))
    })
    .await;
    assert_eq!(firing(&mail), 1);

    // SMTP down while it fires again: queued, retried, delivered once when the server is back.
    smtp.stop();
    poll(Duration::from_secs(30), || async {
        send(&redline, 300, 20).await;
        let metrics = redline.metrics_text().await;
        let retried = metrics
            .lines()
            .any(|l| l.starts_with("redline_notification_retries_total") && !l.ends_with(" 0"));
        retried.then_some(())
    })
    .await
    .expect("the send failed and was scheduled for a retry");
    smtp.restart();
    let mail = drive_until(
        &redline,
        smtp_dir.path(),
        300,
        Duration::from_secs(60),
        |s| firing(s) == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        firing(&subjects(smtp_dir.path())),
        2,
        "exactly once per group: {mail:?}"
    );
    redline.stop().await;
}

fn rule_names(body: &serde_json::Value) -> Vec<String> {
    body["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

const RECEIVER: &str = "[[receiver]]\nname = \"r\"\nemail = { to = [\"a@example.com\"] }\n[global]\neval_interval = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_last_good_rules() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("alerts.toml");
    let rule = |name: &str| {
        format!(
            "{RECEIVER}[[rule]]\nname = \"{name}\"\nservice = \"s\"\nstat = \"rate\"\nthreshold = 1\n"
        )
    };
    std::fs::write(&path, rule("First")).unwrap();
    let redline = TestRedline::start_in(port_zero_layer(data.path())).await;
    redline
        .wait_for("/api/v1/alerts", Duration::from_secs(10), |b| {
            rule_names(b) == ["First"]
        })
        .await;

    std::fs::write(&path, format!("{}\nthreshold = \"high\"\n", rule("Broken"))).unwrap();
    let body = redline
        .wait_for("/api/v1/alerts", Duration::from_secs(10), |b| {
            b["config_error"].is_string()
        })
        .await;
    assert_eq!(
        rule_names(&body),
        ["First"],
        "the last good rules stay in force"
    );
    assert!(
        body["config_error"]
            .as_str()
            .unwrap()
            .contains("alerts.toml:"),
        "{body}"
    );

    std::fs::write(&path, rule("Second")).unwrap();
    redline
        .wait_for("/api/v1/alerts", Duration::from_secs(10), |b| {
            rule_names(b) == ["Second"] && b["config_error"].is_null()
        })
        .await;
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_are_created_listed_and_deleted() {
    let redline = TestRedline::start().await;
    let url = redline.url("/api/v1/silences");
    let created = redline
        .client()
        .post(&url)
        .json(&serde_json::json!({"matchers": ["alertname=SlowCheckout", "service=~shop.*"], "duration": "2h", "created_by": "test", "comment": "deploy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = redline
        .wait_for("/api/v1/silences", Duration::from_secs(5), |b| {
            b["silences"].as_array().is_some_and(|s| s.len() == 1)
        })
        .await;
    assert_eq!(listed["silences"][0]["matchers"][1], "service=~shop.*");
    let ends = listed["silences"][0]["ends_at_ms"].as_i64().unwrap();
    assert!(
        ends - redline::vocab::now_ms() > 7_000_000,
        "about two hours from now"
    );

    let bad = redline
        .client()
        .post(&url)
        .json(&serde_json::json!({"matchers": ["no operator"], "duration": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["parameter"],
        "matchers"
    );

    let deleted = redline
        .client()
        .delete(format!("{url}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    redline
        .wait_for("/api/v1/silences", Duration::from_secs(5), |b| {
            b["silences"].as_array().is_some_and(|s| s.is_empty())
        })
        .await;
    let again = redline
        .client()
        .delete(format!("{url}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_check_and_their_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .arg("check")
        .arg(root.join("alerts.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let tests = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .arg("test-rules")
        .arg(root.join("alerts.test.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&tests.stdout);
    assert!(tests.status.success(), "{out}");
    assert!(out.contains(" 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\nservice = \"s\"\nstat = \"p42\"\nthreshold = 1\n\n[[rule]]\nname = \"y\"\nservice = \"s\"\nstat = \"p99\"\ntreshold = 1\n").unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&check.stderr);
    assert!(
        // At the bad value (line 4, `stat = "p42"`), not at the rule's header.
        errors.contains("bad.toml:4:8") && errors.contains("p42"),
        "{errors}"
    );
    assert!(
        errors.contains("bad.toml:11:1") && errors.contains("treshold"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_page_shows_rules_alerts_silences_and_chart_thresholds() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("alerts.toml");
    std::fs::write(
        &path,
        format!(
            "{RECEIVER}[[rule]]\nname = \"SlowCheckout\"\nservice = \"shop\"\nmethod = \"GET\"\nroute = \"/checkout\"\nstat = \"p99\"\nwindow = \"1m\"\nthreshold = 100\nlabels = {{ severity = \"page\", team = \"<script>alert(1)</script>\" }}\nannotations = {{ summary = \"checkout p99 is {{{{ value }}}}\" }}\n[route]\nreceiver = \"r\"\ngroup_wait = \"1s\"\n"
        ),
    )
    .unwrap();
    let redline = TestRedline::start_in(port_zero_layer(data.path())).await;
    poll(Duration::from_secs(20), || async {
        send(&redline, 300, 20).await;
        (alert_state(&redline).await == "firing").then_some(())
    })
    .await
    .expect("the rule fires");

    let page = redline
        .client()
        .get(redline.url("/alerts"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("SlowCheckout") && html.contains("▲ firing"),
        "rule and state shown"
    );
    assert!(html.contains("checkout p99 is 300 ms"), "templated summary");
    assert!(!html.contains("<script>alert(1)"), "labels are escaped");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || html.contains("&#60;script&#62;")
    );

    // The firing banner on every page, and the threshold on the endpoint's p99 chart.
    let overview = redline.text("/").await;
    assert!(overview.contains("1 alert firing"), "banner");
    let endpoint = redline
        .text("/services/shop/endpoints?method=GET&route=/checkout")
        .await;
    assert!(
        endpoint.contains("SlowCheckout"),
        "threshold line labelled with the rule"
    );

    // Without [smtp] the notification is an .eml file in the outbox folder.
    let outbox = data.path().join("outbox");
    let written = poll(Duration::from_secs(15), || async {
        let count = std::fs::read_dir(&outbox)
            .ok()?
            .filter(|e| e.is_ok())
            .count();
        (count > 0).then_some(count)
    })
    .await;
    assert!(written.is_some(), "an .eml file in {}", outbox.display());

    // A silence created through the form (same-origin POST) shows up and can be expired.
    let created = redline
        .client()
        .post(redline.url("/alerts/silences"))
        .header("origin", format!("http://{}", redline.web))
        .form(&[
            ("matchers", "alertname=SlowCheckout\nservice=shop"),
            ("duration", "1h"),
            ("comment", "deploy"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success() || created.status().is_redirection(),
        "{}",
        created.status()
    );
    let page = redline.text("/alerts").await;
    assert!(
        page.contains("alertname=SlowCheckout, service=shop"),
        "silence listed"
    );
    let forged = redline
        .client()
        .post(redline.url("/alerts/silences"))
        .header("origin", "http://evil.example")
        .form(&[("matchers", "alertname=x"), ("duration", "1h")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403, "cross-origin form posts are refused");
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_otlp_metric_series_fire() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("alerts.toml"),
        format!(
            "{RECEIVER}[[rule]]\nname = \"QueueDeep\"\nservice = \"worker\"\nmetric = {{ name = \"queue.depth\", agg = \"last\", attributes = {{ queue = \"mail\" }} }}\nwindow = \"1m\"\nthreshold = 100\n"
        ),
    )
    .unwrap();
    let redline = TestRedline::start_in(port_zero_layer(data.path())).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let gauge = |queue: &str, value: i64| {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"worker"}}}}]}},"scopeMetrics":[{{"metrics":[{{"name":"queue.depth","gauge":{{"dataPoints":[{{"timeUnixNano":"{now}","asInt":"{value}","attributes":[{{"key":"queue","value":{{"stringValue":"{queue}"}}}}]}}]}}}}]}}]}}]}}"#
        )
    };
    for body in [gauge("mail", 250), gauge("other", 5)] {
        let status = redline
            .client()
            .post(format!("http://{}/v1/metrics", redline.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let body = redline
        .wait_for("/api/v1/alerts", Duration::from_secs(10), |b| {
            b["rules"][0]["state"] == "firing"
        })
        .await;
    assert_eq!(
        body["rules"][0]["value"], 250.0,
        "the filtered series, not the other queue"
    );
    redline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_email_renders_a_rule_with_sample_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("preview.eml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .args(["preview-email", "HighP99Latency", "--alerts"])
        .arg(root.join("alerts.toml"))
        .arg("--eml")
        .arg(&eml)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.starts_with("Subject: [FIRING:1] HighP99Latency example-api"),
        "{text}"
    );
    assert!(text.contains("/v1/products/{id}"), "{text}");
    let raw = std::fs::read(&eml).unwrap();
    let message = MessageParser::default().parse(&raw).expect("parseable");
    assert!(message.body_html(0).is_some());
    assert!(
        message
            .attachments()
            .any(|p| p.content_type().is_some_and(|c| c.subtype() == Some("png"))),
        "the sample chart is attached"
    );
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_redline"))
        .args(["preview-email", "NoSuchRule", "--alerts"])
        .arg(root.join("alerts.toml"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NoSuchRule"));
}
