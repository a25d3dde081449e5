//! Mail delivery settings as part of the rules file: a password in clear text is refused by
//! `redline check`, at start-up and on reload; delivery follows each good load (SIGHUP to the
//! real binary), so a rules file broken at start-up does not send mail to `.eml` files for
//! good; and the sender switches transports between messages. A real SMTP server receives.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prost::Message;
use redline::notify::{Delivery, EntryStatus, Outbox, TlsMode, run_sender_following};
use tokio::sync::watch;

use crate::helpers::{export_request, poll};
use crate::notify::{SmtpServer, database, fast_options, light, received};

const DEADLINE: Duration = Duration::from_secs(60);

/// A rule that fires on slow checkouts, and an `[smtp]` block to the test server with `auth`
/// lines added.
fn rules(smtp_port: u16, auth: &str) -> String {
    format!(
        r#"
[global]
eval_interval = "1s"

[[rule]]
name = "SlowCheckout"
service = "shop"
method = "GET"
route = "/checkout"
stat = "p99"
window = "15s"
threshold = 100

[[receiver]]
name = "oncall"
email = {{ to = ["oncall@example.com"], from = "redline@example.com" }}

[route]
receiver = "oncall"
group_wait = "1s"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout = "5s"
{auth}"#
    )
}

/// The `redline` binary, killed when dropped.
struct Redline {
    child: Child,
    http: SocketAddr,
    web: SocketAddr,
    log: PathBuf,
}

impl Redline {
    fn start(data: &Path, alerts: &Path) -> Redline {
        let log = data.join("redline.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_redline"))
            .arg("serve")
            .args(["--otlp-grpc-addr", "127.0.0.1:0"])
            .args(["--otlp-http-addr", "127.0.0.1:0"])
            .args(["--web-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .arg("--alerts-file")
            .arg(alerts)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("redline binary starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut http, mut web) = (None, None);
        while http.is_none() || web.is_none() {
            let line = lines.next().expect("redline prints its addresses").unwrap();
            if let Some(rest) = line.strip_prefix("redline: OTLP/HTTP listening on http://") {
                http = rest.parse().ok();
            }
            if let Some(rest) = line.strip_prefix("redline: dashboard and API on http://") {
                web = rest.trim_end_matches('/').parse().ok();
            }
        }
        Redline {
            child,
            http: http.unwrap(),
            web: web.unwrap(),
            log,
        }
    }

    fn hang_up(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a signal number touches no memory of this process.
        let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(sent, 0, "SIGHUP sent");
    }

    async fn alerts(&self, client: &reqwest::Client) -> serde_json::Value {
        client
            .get(format!("http://{}/api/v1/alerts", self.web))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Redline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eml_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_file_fixed_and_reloaded_sends_mail_over_smtp_not_to_eml_files() {
    let smtp_dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(smtp_dir.path(), &[]);
    let data = tempfile::tempdir().unwrap();
    let secret = data.path().join("smtp-password");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let alerts = data.path().join("alerts.toml");
    let clear_text_password = format!("username = \"alerts\"\npassword_file = {secret:?}\n");
    std::fs::write(&alerts, rules(smtp.port, &clear_text_password)).unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_redline"))
        .arg("check")
        .arg(&alerts)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let refused = String::from_utf8_lossy(&check.stderr);
    assert!(
        refused.contains("alerts.toml:") && refused.contains("clear text"),
        "{refused}"
    );

    // Start-up with the refused file: no rules, the reason on the alerts API, mail held.
    let redline = Redline::start(data.path(), &alerts);
    let client = reqwest::Client::new();
    let body = poll(Duration::from_secs(20), || async {
        let body = redline.alerts(&client).await;
        body["config_error"].is_string().then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("the refusal is shown\n{}", redline.log()));
    assert!(
        body["config_error"]
            .as_str()
            .unwrap()
            .contains("clear text"),
        "{body}"
    );

    // Fixed (a relay that needs no password) and SIGHUP'd: the rule fires and its mail goes to
    // the SMTP server the file names.
    std::fs::write(&alerts, rules(smtp.port, "")).unwrap();
    redline.hang_up();
    poll(Duration::from_secs(20), || async {
        let body = redline.alerts(&client).await;
        (body["config_error"].is_null() && body["rules"].as_array().is_some_and(|r| r.len() == 1))
            .then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the fixed file loads\n{}", redline.log()));
    let delivered = poll(DEADLINE, || async {
        let mut request = export_request("shop", "/checkout", 20);
        for span in &mut request.resource_spans[0].scope_spans[0].spans {
            span.start_time_unix_nano = span.end_time_unix_nano - 300_000_000;
            span.trace_id[0] = rand::random();
        }
        let status = client
            .post(format!("http://{}/v1/traces", redline.http))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        let mail = received(smtp_dir.path());
        (!mail.is_empty()).then_some(mail)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no mail reached the SMTP server; .eml files: {:?}\n{}",
            eml_files(&data.path().join("outbox")),
            redline.log()
        )
    });
    let text = String::from_utf8_lossy(&delivered[0].raw);
    assert!(text.contains("SlowCheckout"), "{text}");
    assert_eq!(
        eml_files(&data.path().join("outbox")),
        Vec::<String>::new(),
        "nothing went to .eml files"
    );

    // A reload that brings the clear-text password back is refused; the good settings stay.
    std::fs::write(&alerts, rules(smtp.port, &clear_text_password)).unwrap();
    redline.hang_up();
    let body = poll(Duration::from_secs(20), || async {
        let body = redline.alerts(&client).await;
        body["config_error"].is_string().then_some(body)
    })
    .await
    .expect("the refused reload is shown");
    assert!(
        body["config_error"]
            .as_str()
            .unwrap()
            .contains("clear text"),
        "{body}"
    );
    assert_eq!(body["rules"].as_array().map(Vec::len), Some(1), "{body}");
    assert!(!redline.log().contains("hunter2"), "the password leaked");
}

#[tokio::test]
async fn the_sender_holds_mail_then_follows_each_published_delivery() {
    let temp = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (temp.path().join("first"), temp.path().join("second"));
    let first = SmtpServer::start(&first_dir, &[]);
    let second = SmtpServer::start(&second_dir, &[]);
    let outbox = Outbox::open(&database(&temp)).expect("outbox opens");
    let (delivery, following) = watch::channel(Delivery::Held);
    let (stop, stopped) = watch::channel(false);
    let sender = tokio::spawn(run_sender_following(
        outbox.clone(),
        following,
        fast_options(),
        stopped,
    ));
    let sent = |id: i64| {
        let outbox = outbox.clone();
        async move {
            poll(DEADLINE, || async {
                let entry = outbox.entry(id).await.unwrap()?;
                (entry.status == EntryStatus::Sent).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("message {id} was not sent"))
        }
    };

    // Held: the message waits, untried, whatever the poll interval.
    let held = outbox.enqueue(&light("Held")).await.unwrap();
    tokio::time::sleep(fast_options().poll_interval * 3).await;
    let entry = outbox.entry(held).await.unwrap().unwrap();
    assert_eq!(
        (entry.status, entry.attempts),
        (EntryStatus::Pending, 0),
        "held, not tried"
    );

    delivery.send_replace(Delivery::Smtp(first.settings(TlsMode::None)));
    sent(held).await;
    assert_eq!(received(&first_dir).len(), 1);

    delivery.send_replace(Delivery::Smtp(second.settings(TlsMode::None)));
    // Published before the message is queued: the sender looks at the delivery before each
    // round of messages.
    let next = outbox.enqueue(&light("Moved")).await.unwrap();
    sent(next).await;
    assert_eq!(
        received(&first_dir).len(),
        1,
        "the old server got nothing more"
    );
    assert_eq!(
        received(&second_dir).len(),
        1,
        "the new server got the message"
    );

    let _ = stop.send(true);
    tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("the sender stops")
        .expect("no panic");
}
