//! Alert e-mail delivery against a real SMTP server (aiosmtpd over TCP, started per test from
//! `tests/support/smtp_server.py`): the message parsed back, HTML escaping, retries on 4xx,
//! no retry on 5xx, queueing while the server is down, restarts, `.eml` files, AUTH and TLS.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use redline::notify::{
    AlertStatus, AlertSummary, ChartSpec, Delivery, EmailReceiver, EntryStatus, Notification,
    Outbox, OutboxEntry, RetryPolicy, Secret, SenderOptions, SmtpSettings, TlsMode, TraceLink,
    run_sender_with,
};
use redline::store::Db;
use resvg::tiny_skia::Pixmap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::poll;

const DEADLINE: Duration = Duration::from_secs(30);

/// The SMTP server child process and the directory it writes received mail to.
pub(crate) struct SmtpServer {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl SmtpServer {
    pub(crate) fn start(dir: &Path, args: &[&str]) -> SmtpServer {
        Self::start_on(dir, 0, args)
    }

    fn start_on(dir: &Path, port: u16, args: &[&str]) -> SmtpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(dir)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/test.sh installs aiosmtpd)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        let Some(port) = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse::<u16>().ok())
        else {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            panic!("the SMTP server did not start (is aiosmtpd installed?): {line:?} {stderr}");
        };
        SmtpServer {
            child,
            port,
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Answers `code` for the next `count` messages (-1: until told otherwise).
    fn steer(&self, code: u16, count: i32) {
        std::fs::write(self.dir.join("control"), format!("{code} {count}\n")).unwrap();
    }

    fn accept_all(&self) {
        std::fs::write(self.dir.join("control"), "").unwrap();
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops and starts again on the same port and directory.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = SmtpServer::start_on(&self.dir.clone(), self.port, &args);
    }

    fn cert(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("cert.pem")).expect("the server wrote its certificate")
    }

    pub(crate) fn settings(&self, tls: TlsMode) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            tls,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
            hello_name: Some("redline.test".into()),
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message the server accepted.
pub(crate) struct Received {
    pub(crate) raw: Vec<u8>,
    meta: serde_json::Value,
}

/// Every message the server accepted, in order.
pub(crate) fn received(dir: &Path) -> Vec<Received> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("msg-") && n.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|name| {
            let raw = std::fs::read(dir.join(name)).unwrap();
            let meta = std::fs::read(dir.join(name.replace(".eml", ".json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            Received { raw, meta }
        })
        .collect()
}

/// DATA outcomes as the server logged them: "accepted", "451", "550", …
fn attempts_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("attempts.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn alert(alertname: &str, status: AlertStatus, route: &str) -> AlertSummary {
    let now = now_ms();
    AlertSummary {
        alertname: alertname.into(),
        status,
        labels: labels(&[
            ("alertname", alertname),
            ("service", "example-api"),
            ("route", route),
            ("severity", "page"),
        ]),
        annotations: labels(&[
            ("summary", "p99 latency of the product page is above 250 ms"),
            ("description", "Slow SQL on the products table."),
            ("runbook_url", "https://runbooks.example/high-latency"),
        ]),
        value: Some(312.0),
        value_text: "312 ms".into(),
        threshold_text: "> 250 ms".into(),
        active_since_ms: now - 300_000,
        resolved_at_ms: (status == AlertStatus::Resolved).then_some(now - 5_000),
        dashboard_url: "http://127.0.0.1:8080/services/example-api".into(),
        exemplars: vec![
            TraceLink {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                url: "http://127.0.0.1:8080/traces/4bf92f3577b34da6a3ce929d0e0e4736".into(),
                duration_ms: 812.0,
                error: false,
            },
            TraceLink {
                trace_id: "00f067aa0ba902b700f067aa0ba902b7".into(),
                url: "http://127.0.0.1:8080/traces/00f067aa0ba902b700f067aa0ba902b7".into(),
                duration_ms: 95.0,
                error: true,
            },
        ],
        chart: Some(ChartSpec {
            title: format!("p99 latency {route}"),
            unit: "ms".into(),
            points: (0..60)
                .map(|i| {
                    let v = if i >= 40 {
                        300.0 + (i % 5) as f64 * 8.0
                    } else {
                        120.0 + (i % 7) as f64 * 5.0
                    };
                    (now - 900_000 + i * 15_000, v)
                })
                .collect(),
            threshold: Some(250.0),
            firing_from_ms: now - 300_000,
            firing_to_ms: None,
        }),
    }
}

fn notification(alertname: &str) -> Notification {
    Notification {
        group_key: format!("{{}}:{{alertname=\"{alertname}\",service=\"example-api\"}}"),
        receiver: "oncall".into(),
        email: EmailReceiver {
            to: vec!["oncall@example.com".into(), "sre@example.com".into()],
            from: "redline <redline@example.com>".into(),
        },
        group_labels: labels(&[("alertname", alertname), ("service", "example-api")]),
        alerts: vec![
            alert(alertname, AlertStatus::Firing, "GET /v1/products/{id}"),
            alert(alertname, AlertStatus::Firing, "GET /v1/orders"),
            alert(alertname, AlertStatus::Resolved, "GET /v1/cart"),
        ],
        created_at_ms: now_ms(),
    }
}

/// As [`notification`] with one chart instead of three: rendering charts is slow in debug builds.
pub(crate) fn light(alertname: &str) -> Notification {
    let mut n = notification(alertname);
    for alert in n.alerts.iter_mut().skip(1) {
        alert.chart = None;
    }
    n
}

pub(crate) fn fast_options() -> SenderOptions {
    SenderOptions {
        retry: RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            max_age: Duration::from_secs(3600),
        },
        poll_interval: Duration::from_millis(200),
        ..SenderOptions::default()
    }
}

/// An outbox in a fresh data directory and its running sender.
struct Harness {
    outbox: Outbox,
    stop: watch::Sender<bool>,
    sender: Option<JoinHandle<()>>,
}

impl Harness {
    fn start(db: &Db, delivery: Delivery, options: SenderOptions) -> Harness {
        let outbox = Outbox::open(db).expect("outbox opens");
        let (stop, stopped) = watch::channel(false);
        let sender = tokio::spawn(run_sender_with(outbox.clone(), delivery, options, stopped));
        Harness {
            outbox,
            stop,
            sender: Some(sender),
        }
    }

    /// Stops the sender and waits for it, as on shutdown.
    async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(sender) = self.sender.take() {
            tokio::time::timeout(DEADLINE, sender)
                .await
                .expect("the sender stops promptly")
                .expect("the sender does not panic");
        }
    }

    async fn wait_entry(
        &self,
        id: i64,
        what: &str,
        done: impl Fn(&OutboxEntry) -> bool,
    ) -> OutboxEntry {
        poll(DEADLINE, || async {
            let entry = self.outbox.entry(id).await.expect("entry reads")?;
            done(&entry).then_some(entry)
        })
        .await
        .unwrap_or_else(|| panic!("outbox entry {id} never became {what}"))
    }
}

async fn wait_received(dir: &Path, count: usize) -> Vec<Received> {
    poll(DEADLINE, || async {
        let got = received(dir);
        (got.len() >= count).then_some(got)
    })
    .await
    .unwrap_or_else(|| panic!("the SMTP server did not receive {count} message(s)"))
}

/// The database of a fresh data directory, opened as redline opens it.
pub(crate) fn database(temp: &tempfile::TempDir) -> Db {
    let (db, _writer) = Db::open(&redline::store::database_path(temp.path())).expect("opens");
    db
}

#[tokio::test]
async fn delivered_email_parses_back_with_text_html_and_inline_chart() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let server = SmtpServer::start(&mail, &[]);
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::None)),
        fast_options(),
    );
    let id = harness
        .outbox
        .enqueue(&notification("HighP99Latency"))
        .await
        .unwrap();
    let entry = harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.subject, "[FIRING:2] HighP99Latency example-api");

    let got = wait_received(&mail, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].meta["mail_from"], "redline@example.com");
    assert_eq!(
        got[0].meta["rcpt_tos"],
        serde_json::json!(["oncall@example.com", "sre@example.com"])
    );

    let message = MessageParser::default().parse(&got[0].raw).expect("parses");
    assert_eq!(
        message.subject(),
        Some("[FIRING:2] HighP99Latency example-api")
    );
    let text = message.body_text(0).expect("text part").to_string();
    for expected in [
        "FIRING HighP99Latency",
        "RESOLVED HighP99Latency",
        "312 ms (threshold > 250 ms)",
        "(for 5m)",
        "route = GET /v1/products/{id}",
        "https://runbooks.example/high-latency",
        "http://127.0.0.1:8080/services/example-api",
        "4bf92f3577b34da6a3ce929d0e0e4736 (812 ms)",
        "00f067aa0ba902b700f067aa0ba902b7 (95 ms, error)",
    ] {
        assert!(
            text.contains(expected),
            "text part lacks {expected:?}:\n{text}"
        );
    }
    assert!(!text.contains("<td"), "the text part is plain");

    let html = message.body_html(0).expect("html part").to_string();
    assert!(html.contains("href=\"http://127.0.0.1:8080/services/example-api\""));
    assert!(
        html.contains("href=\"http://127.0.0.1:8080/traces/4bf92f3577b34da6a3ce929d0e0e4736\"")
    );
    assert!(html.contains("GET /v1/orders"));

    // One PNG per alert with a chart, each referenced from the HTML by its Content-ID.
    let images: Vec<_> = message
        .parts
        .iter()
        .filter(|p| {
            p.content_type()
                .is_some_and(|t| t.ctype() == "image" && t.subtype() == Some("png"))
        })
        .collect();
    assert_eq!(images.len(), 3);
    for image in images {
        let cid = image
            .content_id()
            .expect("inline image has a Content-ID")
            .trim_matches(['<', '>']);
        assert!(
            html.contains(&format!("src=\"cid:{cid}\"")),
            "{cid} not in the HTML"
        );
        let pixmap = Pixmap::decode_png(image.contents()).expect("a valid PNG");
        assert_eq!((pixmap.width(), pixmap.height()), (1280, 480));
        let background = pixmap.pixels()[0];
        let drawn = pixmap.pixels().iter().filter(|p| **p != background).count();
        assert!(
            drawn > 5_000,
            "the chart is nearly blank ({drawn} pixels drawn)"
        );
    }
    // Parts are nested: alternative(text, related(html, png…)).
    let raw = String::from_utf8_lossy(&got[0].raw);
    assert!(raw.contains("multipart/alternative"));
    assert!(raw.contains("multipart/related"));
    harness.shutdown().await;
}

#[tokio::test]
async fn hostile_telemetry_is_escaped_in_the_delivered_html() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let server = SmtpServer::start(&mail, &[]);
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::None)),
        fast_options(),
    );
    let hostile = "/a\"><script>alert(1)</script><img src=x onerror=alert(2)>";
    let mut n = notification("HighP99Latency");
    n.alerts[0].labels.insert("route".into(), hostile.into());
    n.alerts[0]
        .annotations
        .insert("summary".into(), format!("slow {hostile}"));
    n.alerts[0].dashboard_url = "javascript:alert(3)".into();
    n.alerts[0].exemplars[0].url = "javascript:alert(4)".into();
    if let Some(chart) = n.alerts[0].chart.as_mut() {
        chart.title = hostile.into();
    }
    let id = harness.outbox.enqueue(&n).await.unwrap();
    harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    let got = wait_received(&mail, 1).await;
    let message = MessageParser::default().parse(&got[0].raw).expect("parses");
    let html = message.body_html(0).expect("html part").to_string();
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img src=x"));
    assert!(
        !html.contains("href=\"javascript:"),
        "unsafe URLs never become links"
    );
    assert!(
        html.contains("Dashboard: javascript:alert(3)"),
        "they stay visible as text"
    );
    assert!(html.contains("&#60;script&#62;"));
    // The text part keeps the label as it is: it is plain text.
    let text = message.body_text(0).unwrap().to_string();
    assert!(text.contains(hostile));
    // The chart with the hostile title still renders.
    assert_eq!(message.attachment_count(), 3);
    harness.shutdown().await;
}

#[tokio::test]
async fn transient_451_is_retried_with_backoff_and_delivered_once() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let server = SmtpServer::start(&mail, &[]);
    server.steer(451, 2);
    let metrics = redline::self_metrics::install();
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::None)),
        fast_options(),
    );
    let id = harness
        .outbox
        .enqueue(&light("HighErrorRate"))
        .await
        .unwrap();
    let entry = harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    assert_eq!(entry.attempts, 3, "two 451 replies, then success");
    assert_eq!(attempts_log(&mail), ["451", "451", "accepted"]);
    assert_eq!(received(&mail).len(), 1);
    let stats = harness.outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.failed), (0, 1, 0));
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("451")),
        "{stats:?}"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("redline_notification_retries_total"),
        "{rendered}"
    );
    assert!(rendered.contains("redline_notifications_sent_total"));
    assert!(rendered.contains("redline_outbox_pending"));
    harness.shutdown().await;
}

#[tokio::test]
async fn permanent_550_fails_and_is_never_retried() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let server = SmtpServer::start(&mail, &[]);
    server.steer(550, -1);
    let metrics = redline::self_metrics::install();
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::None)),
        fast_options(),
    );
    let rejected = harness.outbox.enqueue(&light("Rejected")).await.unwrap();
    let entry = harness
        .wait_entry(rejected, "failed", |e| e.status == EntryStatus::Failed)
        .await;
    assert_eq!(entry.attempts, 1);
    assert!(
        entry.last_error.as_deref().unwrap_or("").contains("550"),
        "{entry:?}"
    );

    // The server accepts again; a later message goes through while the failed one stays
    // failed, with no second attempt in the server's log.
    server.accept_all();
    let later = harness.outbox.enqueue(&light("Accepted")).await.unwrap();
    harness
        .wait_entry(later, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    assert_eq!(attempts_log(&mail), ["550", "accepted"]);
    let entry = harness.outbox.entry(rejected).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.attempts), (EntryStatus::Failed, 1));
    let stats = harness.outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.failed), (0, 1, 1));
    assert!(
        metrics
            .render()
            .contains("redline_notifications_failed_total{reason=\"permanent\"}")
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn mail_queued_while_the_server_is_down_arrives_once_it_is_up() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    // A port with nothing listening: connections are refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        username: None,
        password: None,
        timeout: Duration::from_secs(5),
        hello_name: None,
    };
    let harness = Harness::start(&database(&temp), Delivery::Smtp(settings), fast_options());
    let id = harness.outbox.enqueue(&light("ServiceDown")).await.unwrap();
    let entry = harness
        .wait_entry(id, "retried twice", |e| e.attempts >= 2)
        .await;
    assert_eq!(entry.status, EntryStatus::Pending);
    assert!(entry.last_error.is_some());
    let stats = harness.outbox.stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    // Pruning never touches a pending message.
    let deleted = harness
        .outbox
        .prune(Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(deleted, 0);

    let _server = SmtpServer::start_on(&mail, port, &[]);
    harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    let got = received(&mail);
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert_eq!(attempts_log(&mail), ["accepted"]);
    harness.shutdown().await;
}

#[tokio::test]
async fn restart_delivers_pending_mail_and_does_not_resend_sent_mail() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let server = SmtpServer::start(&mail, &[]);
    let db = database(&temp);
    let delivery = Delivery::Smtp(server.settings(TlsMode::None));

    let first = Harness::start(&db, delivery.clone(), fast_options());
    let sent = first.outbox.enqueue(&light("SentBefore")).await.unwrap();
    first
        .wait_entry(sent, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    server.steer(451, -1);
    let pending = first
        .outbox
        .enqueue(&light("PendingAcrossRestart"))
        .await
        .unwrap();
    first
        .wait_entry(pending, "attempted", |e| e.attempts >= 1)
        .await;
    first.shutdown().await;

    // Queued with no sender running at all: picked up by the next start too.
    let queued_offline = {
        let outbox = Outbox::open(&db).unwrap();
        outbox.enqueue(&light("QueuedOffline")).await.unwrap()
    };

    server.accept_all();
    let second = Harness::start(&db, delivery, fast_options());
    for id in [pending, queued_offline] {
        second
            .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
            .await;
    }
    let subjects: Vec<String> = received(&mail)
        .iter()
        .map(|r| {
            MessageParser::default()
                .parse(&r.raw)
                .and_then(|m| m.subject().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    for name in ["SentBefore", "PendingAcrossRestart", "QueuedOffline"] {
        let count = subjects.iter().filter(|s| s.contains(name)).count();
        assert_eq!(count, 1, "{name} delivered {count} times: {subjects:?}");
    }
    let stats = second.outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.failed), (0, 3, 0));
    second.shutdown().await;
}

#[tokio::test]
async fn without_smtp_messages_become_parseable_eml_files() {
    let temp = tempfile::tempdir().unwrap();
    let outbox_dir = temp.path().join("outbox");
    let harness = Harness::start(
        &database(&temp),
        Delivery::Outbox(outbox_dir.clone()),
        fast_options(),
    );
    let mut resolved = notification("HighP99Latency");
    for alert in &mut resolved.alerts {
        alert.status = AlertStatus::Resolved;
        alert.resolved_at_ms = Some(now_ms());
    }
    let id = harness.outbox.enqueue(&resolved).await.unwrap();
    harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    let names: Vec<String> = std::fs::read_dir(&outbox_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with(&format!("{id}-")) && names[0].ends_with(".eml"),
        "{names:?}"
    );
    assert!(!names[0].contains('"') && !names[0].contains('/'));
    let raw = std::fs::read(outbox_dir.join(&names[0])).unwrap();
    let message = MessageParser::default().parse(&raw).expect("parses");
    assert_eq!(
        message.subject(),
        Some("[RESOLVED] HighP99Latency example-api")
    );
    assert!(
        message
            .body_text(0)
            .unwrap()
            .contains("RESOLVED HighP99Latency")
    );
    assert!(message.body_html(0).is_some());
    assert_eq!(message.attachment_count(), 3);

    // Sent rows are pruned once old enough; the .eml file stays.
    let kept = harness
        .outbox
        .prune(Duration::from_secs(3600), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let deleted = harness
        .outbox
        .prune(Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(harness.outbox.entry(id).await.unwrap().is_none());
    assert!(outbox_dir.join(&names[0]).exists());
    harness.shutdown().await;
}

const PASSWORD: &str = "pa55-Wr0ng-Horse-staple";

async fn auth_round(extra_args: &[&str], mechanism: &str) {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let auth = format!("alerts:{PASSWORD}");
    let mut args = vec!["--auth", auth.as_str()];
    args.extend_from_slice(extra_args);
    let server = SmtpServer::start(&mail, &args);
    let mut settings = server.settings(TlsMode::None);
    settings.username = Some("alerts".into());
    settings.password = Some(Secret(PASSWORD.into()));
    assert!(!format!("{settings:?}").contains(PASSWORD));
    assert!(!format!("{:?}", Delivery::Smtp(settings.clone())).contains(PASSWORD));

    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(settings.clone()),
        fast_options(),
    );
    let id = harness.outbox.enqueue(&light("Authed")).await.unwrap();
    harness
        .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    let got = received(&mail);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].meta["auth_login"], "alerts");
    assert_eq!(got[0].meta["auth_mechanism"], mechanism);
    harness.shutdown().await;

    // A wrong password: the server answers 535, a permanent failure.
    let temp = tempfile::tempdir().unwrap();
    settings.password = Some(Secret(format!("{PASSWORD}-but-wrong")));
    let harness = Harness::start(&database(&temp), Delivery::Smtp(settings), fast_options());
    let id = harness.outbox.enqueue(&light("Authed")).await.unwrap();
    let entry = harness
        .wait_entry(id, "failed", |e| e.status == EntryStatus::Failed)
        .await;
    let error = entry.last_error.unwrap_or_default();
    assert!(error.contains("535"), "{error}");
    assert!(!error.contains(PASSWORD));
    let stats = harness.outbox.stats().await.unwrap();
    assert!(!format!("{stats:?}").contains(PASSWORD));
    harness.shutdown().await;
    assert_eq!(
        received(&mail).len(),
        1,
        "nothing delivered with the wrong password"
    );
}

/// Runs [`auth_rounds_with_captured_logs`] in a process of its own, where the log subscriber is
/// the global one (a per-thread subscriber misses events whose callsites other tests' threads
/// registered first), and checks its whole log output.
#[tokio::test]
async fn smtp_auth_plain_and_login_work_and_credentials_never_leak() {
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "notify::auth_rounds_with_captured_logs",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .await
        .expect("the test binary runs");
    let logged = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the auth rounds failed:\n{logged}");
    assert!(
        logged.contains("1 passed"),
        "the auth rounds ran:\n{logged}"
    );
    assert!(
        logged.contains("notification delivered"),
        "logs were captured:\n{logged}"
    );
    assert!(
        logged.contains("535"),
        "the auth failure is logged:\n{logged}"
    );
    assert!(
        !logged.contains(PASSWORD),
        "the password leaked into the logs"
    );
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "run in its own process by smtp_auth_plain_and_login_work_and_credentials_never_leak"]
async fn auth_rounds_with_captured_logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    auth_round(&[], "PLAIN").await;
    auth_round(&["--exclude-auth", "PLAIN"], "LOGIN").await;
}

#[tokio::test]
async fn starttls_and_implicit_tls_deliver_over_tls() {
    for (mode, arg) in [
        (TlsMode::StartTls, "starttls"),
        (TlsMode::Implicit, "implicit"),
    ] {
        let temp = tempfile::tempdir().unwrap();
        let mail = temp.path().join("mail");
        let server = SmtpServer::start(&mail, &["--tls", arg, "--auth", "alerts:tls-secret"]);
        let mut settings = server.settings(mode);
        settings.username = Some("alerts".into());
        settings.password = Some(Secret("tls-secret".into()));
        let options = SenderOptions {
            extra_roots: vec![server.cert()],
            ..fast_options()
        };
        let harness = Harness::start(&database(&temp), Delivery::Smtp(settings), options);
        let id = harness.outbox.enqueue(&light("Tls")).await.unwrap();
        harness
            .wait_entry(id, "sent", |e| e.status == EntryStatus::Sent)
            .await;
        let got = received(&mail);
        assert_eq!(got.len(), 1, "{arg}");
        assert_eq!(got[0].meta["tls"], true, "{arg}: delivered over TLS");
        assert_eq!(got[0].meta["auth_login"], "alerts");
        harness.shutdown().await;
    }
}

#[tokio::test]
async fn starttls_required_never_falls_back_to_plain_text() {
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    // A server without TLS: STARTTLS is required, so nothing may be sent in the clear.
    let server = SmtpServer::start(&mail, &[]);
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::StartTls)),
        fast_options(),
    );
    let id = harness.outbox.enqueue(&light("NoTls")).await.unwrap();
    let entry = harness
        .wait_entry(id, "attempted twice", |e| e.attempts >= 2)
        .await;
    assert_eq!(
        entry.status,
        EntryStatus::Pending,
        "a TLS problem is retried"
    );
    assert!(received(&mail).is_empty());
    assert!(attempts_log(&mail).is_empty(), "no DATA reached the server");
    harness.shutdown().await;
}

#[tokio::test]
async fn server_restart_between_messages_is_survived() {
    // The pooled SMTP connection dies with the server; the next message still arrives.
    let temp = tempfile::tempdir().unwrap();
    let mail = temp.path().join("mail");
    let mut server = SmtpServer::start(&mail, &[]);
    let harness = Harness::start(
        &database(&temp),
        Delivery::Smtp(server.settings(TlsMode::None)),
        fast_options(),
    );
    let one = harness.outbox.enqueue(&light("One")).await.unwrap();
    harness
        .wait_entry(one, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    server.restart();
    let two = harness.outbox.enqueue(&light("Two")).await.unwrap();
    harness
        .wait_entry(two, "sent", |e| e.status == EntryStatus::Sent)
        .await;
    assert_eq!(received(&mail).len(), 2);
    harness.shutdown().await;
}
