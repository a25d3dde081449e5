//! The one-command demo (stub; see below).

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub struct DemoOptions {
    pub redline: std::path::PathBuf,
    pub rate: f64,
    pub fail_after: std::time::Duration,
    pub fail_for: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("not implemented yet")]
    Todo,
}

pub async fn run(_o: DemoOptions) -> Result<(), DemoError> {
    Err(DemoError::Todo)
}
