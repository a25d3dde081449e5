//! The demo's redline: which alert rules it loads, where their e-mails go, starting the binary
//! with them and stopping it; and a watch on the `.eml` outbox that tells the terminal when an
//! alert e-mail lands.

use super::DemoError;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};

/// The rules file shipped at the repository root, for a demo started from another directory.
const SHIPPED_ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../alerts.toml");

/// The alert rules the demo hands to redline: `explicit` when given, else `./alerts.toml` (the
/// repository root, where the README runs the demo), else the file shipped with these sources.
pub async fn alerts_file(explicit: Option<&Path>) -> Result<PathBuf, DemoError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_path_buf()],
        None => vec![PathBuf::from("alerts.toml"), PathBuf::from(SHIPPED_ALERTS)],
    };
    for candidate in &candidates {
        if tokio::fs::metadata(candidate)
            .await
            .is_ok_and(|m| m.is_file())
        {
            // Absolute, so the path printed and handed to redline means the same from anywhere.
            return Ok(std::path::absolute(candidate)?);
        }
    }
    Err(DemoError::AlertsMissing(candidates[0].clone()))
}

/// Where redline delivers the alert e-mails of a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailDestination {
    /// The rules file configures an SMTP server.
    Smtp { host: String, port: u16 },
    /// No `[smtp]`: each message becomes an `.eml` file in this folder (redline's data dir).
    Outbox(PathBuf),
}

impl fmt::Display for MailDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailDestination::Smtp { host, port } => write!(f, "sent over SMTP to {host}:{port}"),
            MailDestination::Outbox(dir) => write!(f, "written as .eml files to {}", dir.display()),
        }
    }
}

/// The `[smtp]` table of a rules file, as far as the destination goes; redline validates the
/// rest when it loads the file.
#[derive(serde::Deserialize)]
struct RulesFile {
    smtp: Option<SmtpTable>,
}

#[derive(serde::Deserialize)]
struct SmtpTable {
    host: String,
    port: Option<u16>,
    tls: Option<String>,
}

/// Where the e-mails of `alerts` go when redline runs with `data_dir`.
pub async fn mail_destination(
    alerts: &Path,
    data_dir: &Path,
) -> Result<MailDestination, DemoError> {
    let text = tokio::fs::read_to_string(alerts)
        .await
        .map_err(|e| DemoError::AlertsRead(alerts.to_path_buf(), e))?;
    // Unknown keys are redline's business: only `[smtp]` is read here.
    let file: RulesFile =
        toml::from_str(&text).map_err(|e| DemoError::AlertsParse(alerts.to_path_buf(), e))?;
    Ok(match file.smtp {
        // redline's defaults: 587 for STARTTLS (its default), 465 for implicit TLS, 25 without.
        Some(smtp) => MailDestination::Smtp {
            port: smtp.port.unwrap_or(match smtp.tls.as_deref() {
                Some("implicit") => 465,
                Some("none") => 25,
                _ => 587,
            }),
            host: smtp.host,
        },
        None => MailDestination::Outbox(std::path::absolute(data_dir)?.join("outbox")),
    })
}

/// The addresses the demo's redline listens on.
pub struct RedlineAddrs<'a> {
    pub grpc: &'a str,
    pub http: &'a str,
    pub web: &'a str,
}

/// Starts `binary` serving `addrs`, keeping its data in `data_dir` and its rules in `alerts`;
/// returns once the OTLP receiver and the dashboard accept connections.
pub async fn start(
    binary: &Path,
    addrs: &RedlineAddrs<'_>,
    data_dir: &Path,
    alerts: &Path,
) -> Result<Child, DemoError> {
    if !tokio::fs::try_exists(binary).await.unwrap_or(false) {
        return Err(DemoError::RedlineMissing(binary.to_path_buf()));
    }
    tokio::fs::create_dir_all(data_dir).await?;
    let mut child = Command::new(binary)
        .arg("serve")
        .args(["--otlp-grpc-addr", addrs.grpc])
        .args(["--otlp-http-addr", addrs.http])
        .args(["--web-addr", addrs.web])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--alerts-file")
        .arg(alerts)
        // Its own process group: a terminal's Ctrl-C reaches only the demo, which stops redline
        // last, after the API's final telemetry has been flushed to it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(DemoError::Spawn)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for target in [addrs.grpc, addrs.web] {
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(DemoError::RedlineExited(status.to_string()));
            }
            if tokio::net::TcpStream::connect(target).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::RedlineTimeout(target.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(child)
}

/// Asks the child to stop (SIGTERM) so it can flush, then kills it after a grace period.
pub async fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The `.eml` files in `dir` (none when it does not exist yet).
async fn eml_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "eml") {
            found.insert(path);
        }
    }
    found
}

/// The `Subject:` header of an `.eml` file, when it has a plain one-line subject.
pub fn eml_subject(message: &str) -> Option<&str> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Subject: "))
}

/// Prints every `.eml` file that appears in `dir` from now on, with its subject, until dropped.
/// Files there from earlier runs are not announced.
pub async fn announce_new_emails(dir: PathBuf) {
    let mut seen = eml_files(&dir).await;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for path in eml_files(&dir).await {
            if seen.contains(&path) {
                continue;
            }
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let subject = eml_subject(&text).unwrap_or("(no subject)");
            println!("alert e-mail: {subject}  →  {}", path.display());
            seen.insert(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("alerts.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn e_mails_go_to_the_outbox_without_smtp_and_to_the_server_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let outbox = rules(dir.path(), "[global]\neval_interval = \"15s\"\n");
        assert_eq!(
            mail_destination(&outbox, &data).await.unwrap(),
            MailDestination::Outbox(data.join("outbox"))
        );
        let smtp = rules(dir.path(), "[smtp]\nhost = \"mail.example.com\"\n");
        assert_eq!(
            mail_destination(&smtp, &data).await.unwrap(),
            MailDestination::Smtp {
                host: "mail.example.com".into(),
                port: 587
            }
        );
        let implicit = rules(
            dir.path(),
            "[smtp]\nhost = \"mail.example.com\"\ntls = \"implicit\"\n",
        );
        assert_eq!(
            mail_destination(&implicit, &data)
                .await
                .unwrap()
                .to_string(),
            "sent over SMTP to mail.example.com:465"
        );
        let broken = rules(dir.path(), "[smtp\n");
        assert!(matches!(
            mail_destination(&broken, &data).await,
            Err(DemoError::AlertsParse(..))
        ));
    }

    #[tokio::test]
    async fn the_shipped_rules_are_found_and_a_missing_file_is_named() {
        let found = alerts_file(None).await.unwrap();
        assert!(
            found.is_absolute() && found.ends_with("alerts.toml"),
            "{found:?}"
        );
        let missing = Path::new("/nonexistent/alerts.toml");
        match alerts_file(Some(missing)).await {
            Err(DemoError::AlertsMissing(p)) => assert_eq!(p, missing),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_subject_is_read_from_the_headers_only() {
        let eml = "From: a@b\r\nSubject: [FIRING:1] X svc\r\n\r\nSubject: not this\r\n";
        assert_eq!(eml_subject(eml), Some("[FIRING:1] X svc"));
        assert_eq!(eml_subject("From: a@b\r\n\r\nSubject: body\r\n"), None);
    }
}
