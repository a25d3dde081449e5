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

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP, aggregate, store and serve the query API.
    ///
    /// Every setting comes from the file given with --config (TOML, keys as the flags in
    /// snake_case), then the REDLINE_* environment variable, then the flag, the later winning.
    Serve {
        /// Settings file (TOML)
        #[arg(long, env = "REDLINE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsLayer,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, settings } => {
            let settings = Settings::load(settings, config.as_deref())?;
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(serve(settings))
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let app = App::build(settings).await?;
    // One line per address, so scripts (and people) can find the ports picked for port 0.
    announce(&format!("OTLP/gRPC listening on {}", app.grpc_addr()));
    announce(&format!(
        "OTLP/HTTP listening on http://{}",
        app.http_addr()
    ));
    announce(&format!("dashboard and API on http://{}/", app.web_addr()));
    announce(&format!("data in {}", data_dir.display()));
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
