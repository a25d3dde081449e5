//! Stage supervision: redline must never be silently deaf. Every long-running stage runs under
//! a supervisor that records how it is doing ([`Stages`]), which `/readyz` reports. Stages that
//! hold no state of their own (alert evaluation, e-mail delivery) are restarted after a panic,
//! with backoff; a stage that cannot be restarted without losing what it holds (the receivers,
//! the pipeline) is marked failed, and the app then stops and exits non-zero so that a process
//! manager restarts it. Panics inside a stage's unit of work (a batch, a flush) are caught where
//! they happen and counted; these supervisors are the net beneath. On shutdown every stage is
//! joined with a deadline ([`join_within`]): one that does not stop in time is aborted and
//! reported, so no client and no stuck task can hold a stop up.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::self_metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    OtlpGrpc,
    OtlpHttp,
    Pipeline,
    Alerts,
    Notify,
    Web,
    RemoteWrite,
    Forward,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::OtlpGrpc => "otlp_grpc",
            Stage::OtlpHttp => "otlp_http",
            Stage::Pipeline => "pipeline",
            Stage::Alerts => "alerts",
            Stage::Notify => "notify",
            Stage::Web => "web",
            Stage::RemoteWrite => "remote_write",
            Stage::Forward => "forward",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageState {
    Running,
    /// It panicked and is waiting to be started again.
    Restarting {
        panics: u64,
    },
    /// It ended unexpectedly and is not restarted.
    Failed {
        reason: String,
    },
    /// It ended as asked, on shutdown.
    Stopped,
}

/// How every supervised stage is doing.
#[derive(Debug)]
pub struct Stages {
    states: Mutex<BTreeMap<Stage, StageState>>,
    failed: watch::Sender<Option<Stage>>,
}

impl Stages {
    pub fn new() -> Arc<Self> {
        Arc::new(Stages {
            states: Mutex::new(BTreeMap::new()),
            failed: watch::channel(None).0,
        })
    }

    fn set(&self, stage: Stage, state: StageState) {
        if let StageState::Failed { reason } = &state {
            tracing::error!(stage = stage.as_str(), %reason, "stage failed");
            self.failed.send_replace(Some(stage));
        }
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage, state);
    }

    pub fn states(&self) -> BTreeMap<Stage, StageState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why redline is not ready, if a stage is failed or restarting.
    pub fn trouble(&self) -> Option<String> {
        self.states()
            .into_iter()
            .find_map(|(stage, state)| match state {
                StageState::Failed { reason } => {
                    Some(format!("stage {} failed: {reason}", stage.as_str()))
                }
                StageState::Restarting { panics } => Some(format!(
                    "stage {} is restarting after {panics} panic(s)",
                    stage.as_str()
                )),
                StageState::Running | StageState::Stopped => None,
            })
    }

    /// Resolves with the first stage that fails.
    pub async fn first_failure(&self) -> Stage {
        let mut failed = self.failed.subscribe();
        loop {
            if let Some(stage) = *failed.borrow_and_update() {
                return stage;
            }
            if failed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Backoff between restarts of a stage that keeps panicking.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Runs `start()` as `stage`, starting it again after a panic (after 1 s, doubling up to 30 s);
/// when it returns, the stage has stopped.
pub fn spawn_restarting<F, Fut>(stages: Arc<Stages>, stage: Stage, mut start: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut panics = 0;
        let mut delay = FIRST_RESTART_DELAY;
        loop {
            stages.set(stage, StageState::Running);
            match tokio::spawn(start()).await {
                Ok(()) => {
                    stages.set(stage, StageState::Stopped);
                    return;
                }
                Err(e) if e.is_panic() => {
                    panics += 1;
                    self_metrics::stage_panicked(stage.as_str());
                    tracing::error!(stage = stage.as_str(), panics, "stage panicked; restarting");
                    stages.set(stage, StageState::Restarting { panics });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RESTART_DELAY);
                }
                Err(_) => return,
            }
        }
    })
}

/// Runs `future` as `stage` once. A panic, or an end before `until_stopped` says the stage
/// was asked to stop, marks it failed; the result is `None` then.
pub fn spawn_critical<T, Fut>(
    stages: Arc<Stages>,
    stage: Stage,
    future: Fut,
    until_stopped: watch::Receiver<bool>,
) -> JoinHandle<Option<T>>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    stages.set(stage, StageState::Running);
    tokio::spawn(async move {
        let result = tokio::spawn(future).await;
        let asked_to_stop = *until_stopped.borrow();
        match result {
            Ok(value) if asked_to_stop => {
                stages.set(stage, StageState::Stopped);
                Some(value)
            }
            Ok(value) => {
                stages.set(
                    stage,
                    StageState::Failed {
                        reason: "it ended unexpectedly".into(),
                    },
                );
                Some(value)
            }
            Err(e) => {
                if e.is_panic() {
                    self_metrics::stage_panicked(stage.as_str());
                }
                stages.set(
                    stage,
                    StageState::Failed {
                        reason: if e.is_panic() {
                            "it panicked".into()
                        } else {
                            "it was cancelled".into()
                        },
                    },
                );
                None
            }
        }
    })
}

/// Waits for `stage`'s task after it was asked to stop. Past `deadline` the task is aborted
/// and that is reported (logged, and the stage's state says so); the result is `None` then, as
/// it is for a task that panicked or was cancelled.
pub async fn join_within<T>(
    stages: &Stages,
    stage: Stage,
    mut task: JoinHandle<T>,
    deadline: Duration,
) -> Option<T> {
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::error!(stage = stage.as_str(), error = %e, "stage task ended abnormally");
            None
        }
        Err(_) => {
            task.abort();
            tracing::warn!(
                stage = stage.as_str(),
                ?deadline,
                "stage did not stop within its deadline; aborted"
            );
            stages.set(
                stage,
                StageState::Failed {
                    reason: format!("it did not stop within {deadline:?} and was aborted"),
                },
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_does_not_stop_in_time_is_aborted_and_reported() {
        let stages = Stages::new();
        let quick = tokio::spawn(async { 7 });
        assert_eq!(
            join_within(&stages, Stage::Web, quick, Duration::from_secs(5)).await,
            Some(7)
        );
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = tokio::spawn(async move {
            let _abort_notice = dropped_tx;
            std::future::pending::<()>().await
        });
        let started = tokio::time::Instant::now();
        let joined = join_within(&stages, Stage::OtlpHttp, stuck, Duration::from_secs(5)).await;
        assert_eq!(joined, None);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Aborted: the task's state is dropped.
        assert!(dropped_rx.await.is_err());
        assert!(matches!(
            stages.states().get(&Stage::OtlpHttp),
            Some(StageState::Failed { reason }) if reason.contains("did not stop within 5s")
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_stage_is_restarted_and_reported_meanwhile() {
        let stages = Stages::new();
        let starts = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        let handle = spawn_restarting(stages.clone(), Stage::Alerts, {
            let starts = starts.clone();
            move || {
                let starts = starts.clone();
                let mut stopped = stopped.clone();
                async move {
                    if starts.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("a bug in the stage");
                    }
                    let _ = stopped.wait_for(|s| *s).await;
                }
            }
        });
        // The first two runs panic; meanwhile the stage says so.
        let mut saw_restarting = false;
        while starts.load(Ordering::SeqCst) < 3 {
            saw_restarting |= matches!(
                stages.states().get(&Stage::Alerts),
                Some(StageState::Restarting { .. })
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(saw_restarting);
        assert!(stages.trouble().is_none_or(|t| t.contains("alerts")));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            stages.states().get(&Stage::Alerts),
            Some(&StageState::Running)
        );
        stop.send_replace(true);
        handle.await.unwrap();
        assert_eq!(
            stages.states().get(&Stage::Alerts),
            Some(&StageState::Stopped)
        );
        assert!(stages.trouble().is_none());
    }

    #[tokio::test]
    async fn a_critical_stage_that_panics_or_ends_early_fails_redline() {
        let stages = Stages::new();
        let (_stop, not_stopped) = watch::channel(false);
        let panicking = spawn_critical(
            stages.clone(),
            Stage::Pipeline,
            async { panic!("a bug in the pipeline") },
            not_stopped.clone(),
        );
        assert_eq!(stages.first_failure().await, Stage::Pipeline);
        assert_eq!(panicking.await.unwrap(), None::<()>);
        assert!(stages.trouble().unwrap().contains("pipeline"));

        let ending = spawn_critical(stages.clone(), Stage::OtlpHttp, async { 7 }, not_stopped);
        assert_eq!(ending.await.unwrap(), Some(7));
        assert!(matches!(
            stages.states().get(&Stage::OtlpHttp),
            Some(StageState::Failed { .. })
        ));

        let (stop, stopping) = watch::channel(false);
        stop.send_replace(true);
        let stopped = spawn_critical(stages.clone(), Stage::Web, async {}, stopping);
        stopped.await.unwrap();
        assert_eq!(stages.states().get(&Stage::Web), Some(&StageState::Stopped));
    }
}
