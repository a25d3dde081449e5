//! The `redline` command line: parse, load settings, run until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use redline::app::App;
use redline::config::{Settings, SettingsLayer};

#[derive(Parser)]
#[command(
    name = "redline",
    version,
    about = "OpenTelemetry sidecar: OTLP in, RED figures, history and alerts out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Receive OTLP, aggregate, store and serve the query API.
    ///
    /// Every setting comes from the file given with --config (TOML, keys as the flags in
    /// snake_case), then the REDLINE_* environment variable, then the flag, the later winning.
    ///
    /// Attaching services over a network: an OTLP address beyond loopback needs credentials,
    /// --otlp-api-keys (or --otlp-api-keys-file) or --otlp-client-ca, and --tls-cert with
    /// --tls-key so they travel encrypted. Exporters set OTEL_EXPORTER_OTLP_ENDPOINT=https://HOST:4317
    /// (or :4318 with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf),
    /// OTEL_EXPORTER_OTLP_HEADERS=x-otlp-api-key=KEY, OTEL_EXPORTER_OTLP_CERTIFICATE=CA.pem and,
    /// for mTLS, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY.
    /// SIGHUP reloads the alert rules, the API keys and the TLS files.
    Serve {
        /// Settings file (TOML)
        #[arg(long, env = "REDLINE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsLayer,
    },
    /// Validate configuration files: every problem at once, as file:line:column (exit 1).
    ///
    /// Without arguments: ./alerts.toml and ./dashboards/ (each skipped when missing).
    Check {
        /// Files to check.
        files: Vec<PathBuf>,
    },
    /// Run alert rule tests (synthetic series, virtual clock, expected alerts); exit 1 on failure.
    TestRules {
        /// Test files (TOML); their `rule_files` are relative to them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Render the e-mail a rule would send, with sample data.
    PreviewEmail {
        /// The rule's name.
        rule: String,
        /// The rules file.
        #[arg(long, default_value = "alerts.toml")]
        alerts: PathBuf,
        /// Also write the HTML part to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Also write the whole message (with the PNG chart) to this .eml file.
        #[arg(long)]
        eml: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
    let runtime = || tokio::runtime::Runtime::new().context("starting the async runtime");
    match cli.command {
        Command::Serve { config, settings } => {
            let loaded = Settings::load(settings.clone(), config.as_deref())?;
            let source = SettingsSource {
                layer: settings,
                config,
            };
            runtime()?.block_on(serve(loaded, source))
        }
        Command::Check { files } => check(files),
        Command::TestRules { files } => runtime()?.block_on(test_rules(files)),
        Command::PreviewEmail {
            rule,
            alerts,
            html,
            eml,
        } => preview_email(&rule, &alerts, html, eml),
    }
}

/// Validates each file by its kind (a directory or a file under `dashboards/`: dashboards;
/// otherwise alert rules); reports every problem and exits 1 if any. Without arguments it checks
/// `alerts.toml` and `dashboards/`, skipping whichever does not exist.
fn check(files: Vec<PathBuf>) -> anyhow::Result<()> {
    let defaults = files.is_empty();
    let files = if defaults {
        vec![PathBuf::from("alerts.toml"), PathBuf::from("dashboards")]
    } else {
        files
    };
    let mut failed = false;
    for file in &files {
        if defaults && !file.exists() {
            println!("{}: not present, skipped", file.display());
            continue;
        }
        if redline::dashboards::is_dashboards_path(file) {
            match redline::dashboards::check(file) {
                Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
                Err(problems) => {
                    problems.iter().for_each(|problem| eprintln!("{problem}"));
                    failed = true;
                }
            }
            continue;
        }
        match redline::alerts::config::load(file) {
            Ok(config) => println!("{}: ok ({} rules)", file.display(), config.rules.len()),
            Err(error) => {
                eprintln!("{error}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

async fn test_rules(files: Vec<PathBuf>) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut passed = 0;
    for file in &files {
        let results = redline::alerts::rule_tests::run_file(file).await?;
        for result in results {
            if result.failures.is_empty() {
                passed += 1;
                println!("PASS {}: {}", file.display(), result.name);
            } else {
                failed += 1;
                println!("FAIL {}: {}", file.display(), result.name);
                for failure in &result.failures {
                    println!("     {failure}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn preview_email(
    rule: &str,
    alerts: &std::path::Path,
    html: Option<PathBuf>,
    eml: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config = redline::alerts::config::load(alerts)?;
    let notification = redline::alerts::preview::sample_notification(&config, rule)
        .with_context(|| format!("no rule named {rule:?} in {}", alerts.display()))?;
    let rendered = redline::notify::preview(&notification);
    println!("Subject: {}\n\n{}", rendered.subject, rendered.text);
    for warning in &rendered.warnings {
        eprintln!("warning: {warning}");
    }
    if let Some(path) = html {
        std::fs::write(&path, &rendered.html)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = eml {
        let message = redline::notify::compose(&notification)?;
        std::fs::write(&path, message.formatted())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Where the settings came from, to load them again on SIGHUP.
struct SettingsSource {
    layer: SettingsLayer,
    config: Option<PathBuf>,
}

async fn serve(settings: Settings, source: SettingsSource) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let app = App::build(settings).await?;
    let scheme = if app.tls() { "https" } else { "http" };
    // One line per address, so scripts (and people) can find the ports picked for port 0.
    announce(&format!("OTLP/gRPC listening on {}", app.grpc_addr()));
    announce(&format!(
        "OTLP/HTTP listening on {scheme}://{}",
        app.http_addr()
    ));
    announce(&format!(
        "dashboard and API on {scheme}://{}/",
        app.web_addr()
    ));
    announce(&format!("data in {}", data_dir.display()));
    reload_on_sighup(app.alerts(), app.reloader(), source);
    app.run_until_stopped(shutdown_signal()).await?;
    announce("stopped, everything acknowledged is stored");
    Ok(())
}

/// Prints a status line; a closed stdout (a parent that stopped reading) must not stop redline.
fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "redline: {line}").and_then(|_| stdout.flush());
}

/// SIGHUP reloads the alert rules, as it does for Prometheus, the TLS files, and the OTLP API
/// keys (from the settings file, `otlp_api_keys_file` and the rest, loaded again). What does
/// not load leaves what is in use as it is.
fn reload_on_sighup(
    alerts: redline::alerts::runtime::AlertsHandle,
    reloader: redline::app::Reloader,
    source: SettingsSource,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        let source = std::sync::Arc::new(source);
        while hangup.recv().await.is_some() {
            alerts.request_reload();
            let (reloader, source) = (reloader.clone(), source.clone());
            // Reads files: off the runtime.
            let reloaded = tokio::task::spawn_blocking(move || {
                if let Err(error) = reloader.reload_tls() {
                    tracing::error!("TLS not reloaded, the certificate in use stays: {error}");
                }
                match Settings::load(source.layer.clone(), source.config.as_deref()) {
                    Ok(settings) => reloader.reload_keys(&settings),
                    Err(error) => {
                        redline::self_metrics::reloaded("otlp_api_keys", false);
                        tracing::error!(
                            "settings not reloaded, the OTLP API keys in use stay: {error}"
                        )
                    }
                }
            })
            .await;
            if let Err(error) = reloaded {
                tracing::error!("reload on SIGHUP: {error}");
            }
        }
    });
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
