//! Wiring: binds the three listeners (port 0 friendly), opens the store, starts the pipeline and
//! servers under supervision, and stops them in the order that loses nothing: receivers first,
//! then the pipeline drains and flushes, then the web server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::aggregate::Aggregator;
use crate::alerts::runtime::{
    self as alerts_runtime, AlertsHandle, AlertsSettings, NotificationSink,
};
use crate::alerts::store::AlertStore;
use crate::budget::MemoryBudget;
use crate::config::Settings;
use crate::ingest::admission::GrpcAdmissionLayer;
use crate::ingest::auth::{GrpcAuthLayer, OtlpAuth};
use crate::ingest::{self, Ingestor};
use crate::notify::{Notification, NotifyError, Outbox};
use crate::pipeline::{self, Durability, Live, PipelineConfig};
use crate::query::Query;
use crate::store::{self, Db, StoreError};
use crate::supervise::{Stage, Stages, join_within, spawn_critical, spawn_restarting};
use crate::tls::{self, ServerTls, TlsError};
use crate::{self_metrics, web};

/// HTTP/2 flow-control window of each OTLP/gRPC stream (connections get four times it).
const RECEIVE_WINDOW_BYTES: u32 = 1 << 20;
/// Largest HTTP/2 frame OTLP/gRPC clients may send.
const RECEIVE_FRAME_BYTES: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the alert e-mail outbox: {0}")]
    Outbox(#[from] NotifyError),
    #[error("opening the data directory was interrupted: {0}")]
    Startup(#[source] tokio::task::JoinError),
    #[error("the {server} server failed: {source}")]
    Serve {
        server: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the {0} stage failed; redline stopped so that it can be restarted")]
    StageFailed(&'static str),
    #[error("cannot serve TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A running redline. Dropping it without `run_until_stopped` aborts the servers.
pub struct App {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    web_addr: SocketAddr,
    stopping: watch::Sender<bool>,
    receivers_stop: watch::Sender<bool>,
    web_stop: watch::Sender<bool>,
    pipeline_stop: oneshot::Sender<()>,
    grpc_task: JoinHandle<Option<Result<(), AppError>>>,
    http_task: JoinHandle<Option<Result<(), AppError>>>,
    web_task: JoinHandle<Option<Result<(), AppError>>>,
    pipeline_task: JoinHandle<Option<()>>,
    alerts_stop: watch::Sender<bool>,
    alerts_tasks: Vec<(Stage, JoinHandle<()>)>,
    query: Query,
    alerts: AlertsHandle,
    stages: Arc<Stages>,
    reloader: Reloader,
}

/// What SIGHUP reloads besides the alert rules: the OTLP API keys and the TLS files.
#[derive(Clone)]
pub struct Reloader {
    auth: Arc<OtlpAuth>,
    tls: Option<Arc<ServerTls>>,
}

impl Reloader {
    /// Uses the OTLP API keys of `settings` (loaded again by the caller) from the next request
    /// on. What needs a restart to change (addresses, whether TLS is on) is not read from them.
    pub fn reload_keys(&self, settings: &Settings) {
        self.auth.set_keys(&settings.otlp_api_keys);
        self_metrics::reloaded("otlp_api_keys", true);
    }

    /// Reads the TLS files again for new connections; on an error the ones loaded before stay
    /// in use. Blocking (reads files).
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let reloaded = tls.reload();
        self_metrics::reloaded("tls", reloaded.is_ok());
        reloaded
    }

    /// Who has sent what, by credential.
    pub fn auth(&self) -> Arc<OtlpAuth> {
        self.auth.clone()
    }
}

impl NotificationSink for Outbox {
    async fn enqueue(&self, notification: Notification) -> Result<(), NotifyError> {
        Outbox::enqueue(self, &notification).await.map(|_| ())
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, AppError> {
    listener
        .local_addr()
        .map_err(|source| AppError::Bind { what, addr, source })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What start-up reads from disk: the database (created or migrated) and the sequence number
/// of its last flush, the alert and outbox stores.
struct OpenedStorage {
    db: Db,
    conn: rusqlite::Connection,
    last_seq: u64,
    alert_store: AlertStore,
    outbox: Outbox,
}

/// Blocking (files and SQLite): run on a blocking thread.
fn open_storage(
    data_dir: &std::path::Path,
    db_path: &std::path::Path,
) -> Result<OpenedStorage, AppError> {
    std::fs::create_dir_all(data_dir).map_err(|source| AppError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let (db, conn) = Db::open(db_path)?;
    let last_seq = store::read::flushed_seq(&conn)?;
    let alert_store = AlertStore::open(&db)?;
    let outbox = Outbox::open(&db)?;
    Ok(OpenedStorage {
        db,
        conn,
        last_seq,
        alert_store,
        outbox,
    })
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `stop`. Over TLS, requests
/// carry their connection's [`tls::PeerInfo`] (OTLP/HTTP's authentication reads the client
/// certificate's name from it).
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<(Arc<ServerTls>, tls::Listener)>,
    stop: watch::Receiver<bool>,
    server: &'static str,
) -> Result<(), AppError> {
    let served = match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped(stop))
                .await
        }
        Some((tls, which)) => {
            let incoming = tls.incoming(listener, which, stop.clone());
            axum::serve(
                incoming,
                router.into_make_service_with_connect_info::<tls::PeerInfo>(),
            )
            .with_graceful_shutdown(stopped(stop))
            .await
        }
    };
    served.map_err(|e| AppError::Serve {
        server,
        source: e.into(),
    })
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        let grpc_listener = bind("OTLP/gRPC", settings.otlp_grpc_addr).await?;
        let http_listener = bind("OTLP/HTTP", settings.otlp_http_addr).await?;
        let web_listener = bind("web", settings.web_addr).await?;
        let grpc_addr = local_addr(&grpc_listener, "OTLP/gRPC", settings.otlp_grpc_addr)?;
        let http_addr = local_addr(&http_listener, "OTLP/HTTP", settings.otlp_http_addr)?;
        let web_addr = local_addr(&web_listener, "web", settings.web_addr)?;
        let server_tls = match settings.tls.clone() {
            Some(files) => Some(
                tokio::task::spawn_blocking(move || ServerTls::load(files))
                    .await
                    .map_err(AppError::Startup)??,
            ),
            None => None,
        };
        let client_certificates = server_tls
            .as_ref()
            .is_some_and(|tls| tls.requires_client_certificates());
        let auth = OtlpAuth::new(&settings.otlp_api_keys, client_certificates);
        let beyond_loopback = !grpc_addr.ip().is_loopback() || !http_addr.ip().is_loopback();
        if beyond_loopback && server_tls.is_none() {
            tracing::warn!(
                "OTLP listens beyond loopback without TLS: API keys and telemetry travel in \
                 clear text; set tls_cert and tls_key"
            );
        }

        let db_path = store::database_path(&settings.data_dir);
        let opened = tokio::task::spawn_blocking({
            let (data_dir, db_path) = (settings.data_dir.clone(), db_path.clone());
            move || open_storage(&data_dir, &db_path)
        })
        .await
        .map_err(AppError::Startup)??;
        let OpenedStorage {
            db,
            conn,
            last_seq,
            alert_store,
            outbox,
        } = opened;

        let started_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let budget = MemoryBudget::new(settings.memory_limit);
        let durability = Durability::new(
            settings.max_unflushed_items,
            max_write_lag(settings.flush_interval),
        );
        let stages = Stages::new();
        // Set when an orderly stop begins: a critical stage that ends before it has failed.
        let (stopping, stopping_rx) = watch::channel(false);
        let live = Arc::new(Live::new(
            Aggregator::new(settings.aggregator, started_ns),
            last_seq,
            budget.clone(),
            durability.clone(),
        ));
        let writer = store::spawn_writer(conn, settings.retention, {
            let live = live.clone();
            move |seq| live.committed(seq)
        });
        let writer_health = writer.health();
        let readers = db.readers();
        let query = Query::new(live.clone(), readers.clone(), settings.retention);
        let pages_live = live.clone();
        let export_live = live.clone();
        let (queue, queue_rx) = pipeline::queue(
            settings.queue_capacity,
            settings.queue_max_bytes,
            durability.clone(),
        );
        let ingestor = Ingestor::new(queue.clone(), budget.clone());

        let (pipeline_stop, pipeline_stop_rx) = oneshot::channel();
        let pipeline_task = spawn_critical(
            stages.clone(),
            Stage::Pipeline,
            pipeline::run(
                queue_rx,
                live,
                writer,
                PipelineConfig {
                    queue_capacity: settings.queue_capacity,
                    flush_interval: settings.flush_interval,
                    retention_interval: Duration::from_secs(60),
                    stop_deadline: STOP_DEADLINE,
                },
                pipeline_stop_rx,
            ),
            stopping_rx.clone(),
        );

        let (receivers_stop, receivers_stop_rx) = watch::channel(false);
        let grpc_routes = ingest::grpc::router(ingestor.clone(), settings.max_body_bytes);
        let grpc_stop = receivers_stop_rx.clone();
        let grpc_admission = GrpcAdmissionLayer::new(ingestor.clone());
        let grpc_auth = GrpcAuthLayer::new(auth.clone());
        let grpc_tls = server_tls.clone();
        let grpc_task = spawn_critical(
            stages.clone(),
            Stage::OtlpGrpc,
            async move {
                let server = tonic::transport::Server::builder()
                    // A 512-span export is ~230 KB: with h2's 64 KiB default windows and 16 KiB
                    // frames it takes several round trips of window updates and ~15 frames.
                    .initial_stream_window_size(RECEIVE_WINDOW_BYTES)
                    .initial_connection_window_size(4 * RECEIVE_WINDOW_BYTES)
                    .max_frame_size(RECEIVE_FRAME_BYTES)
                    // Credentials first: nothing is reserved or read for a refused client.
                    .layer(grpc_auth)
                    .layer(grpc_admission)
                    .add_routes(grpc_routes);
                let served = match grpc_tls {
                    None => {
                        let incoming =
                            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
                        server
                            .serve_with_incoming_shutdown(incoming, stopped(grpc_stop))
                            .await
                    }
                    Some(tls) => {
                        let incoming =
                            tls.incoming(grpc_listener, tls::Listener::OtlpGrpc, grpc_stop.clone());
                        server
                            .serve_with_incoming_shutdown(incoming, stopped(grpc_stop))
                            .await
                    }
                };
                served.map_err(|e| AppError::Serve {
                    server: "OTLP/gRPC",
                    source: e.into(),
                })
            },
            stopping_rx.clone(),
        );

        let http_router = ingest::http::router(
            ingestor,
            settings.max_body_bytes,
            &settings.cors_allowed_origins,
        )
        // Every route, also those not matched: credentials come before anything else.
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            ingest::auth::http_auth,
        ));
        let http_stop = receivers_stop_rx;
        let http_tls = server_tls.clone().map(|tls| (tls, tls::Listener::OtlpHttp));
        let http_task = spawn_critical(
            stages.clone(),
            Stage::OtlpHttp,
            serve_http(http_listener, http_router, http_tls, http_stop, "OTLP/HTTP"),
            stopping_rx.clone(),
        );

        // Alerting: the evaluation loop and the e-mail sender, stopped with the web server and
        // restarted should they panic.
        let alerts = AlertsHandle::new(alert_store);
        let (alerts_stop, alerts_stop_rx) = watch::channel(false);
        let remote_write_stop = alerts_stop_rx.clone();
        let rules_file = settings.alerts_file.clone();
        let dashboard_url = settings.public_url.clone().unwrap_or_else(|| {
            let scheme = if server_tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{web_addr}")
        });
        // Where mail goes comes from the rules file, at every load; held until one loads.
        let (delivery, delivery_rx) = watch::channel(crate::notify::Delivery::Held);
        let outbox_dir = settings.data_dir.join("outbox");
        let mut alerts_tasks = vec![
            (
                Stage::Alerts,
                spawn_restarting(stages.clone(), Stage::Alerts, {
                    let (query, alerts, outbox) = (query.clone(), alerts.clone(), outbox.clone());
                    let stop = alerts_stop_rx.clone();
                    move || {
                        alerts_runtime::run(
                            AlertsSettings {
                                rules_file: rules_file.clone(),
                                dashboard_url: dashboard_url.clone(),
                                delivery: delivery.clone(),
                                outbox_dir: outbox_dir.clone(),
                            },
                            query.clone(),
                            alerts.clone(),
                            outbox.clone(),
                            stop.clone(),
                        )
                    }
                }),
            ),
            (
                Stage::Notify,
                spawn_restarting(stages.clone(), Stage::Notify, {
                    let outbox = outbox.clone();
                    move || {
                        crate::notify::run_sender(
                            outbox.clone(),
                            delivery_rx.clone(),
                            alerts_stop_rx.clone(),
                        )
                    }
                }),
            ),
        ];

        // Remote write stops with alerting, after the pipeline has drained: its last push
        // holds everything acknowledged.
        if !settings.export.remote_write.is_empty() {
            let (targets, live) = (settings.export.remote_write.clone(), export_live.clone());
            let (external, stop) = (settings.export.external_labels.clone(), remote_write_stop);
            alerts_tasks.push((
                Stage::RemoteWrite,
                spawn_restarting(stages.clone(), Stage::RemoteWrite, move || {
                    crate::export::remote_write::run(
                        targets.clone(),
                        live.clone(),
                        external.clone(),
                        stop.clone(),
                    )
                }),
            ));
        }

        let (web_stop, web_stop_rx) = watch::channel(false);
        let readiness = web::Readiness {
            queue: queue.clone(),
            readers: readers.clone(),
            stages: stages.clone(),
            budget,
            durability,
            writer: writer_health,
        };
        let pages = web::pages::Pages::new(
            query.clone(),
            pages_live,
            queue.clone(),
            settings.queue_capacity,
            db_path.clone(),
            settings.dashboards_dir.clone(),
            grpc_addr,
            http_addr,
        )
        .with_alerts(Arc::new(alerts.clone()))
        .with_readiness(readiness.clone())
        .with_otlp_access(web::pages::OtlpAccess {
            auth: auth.clone(),
            tls: server_tls.is_some(),
        });
        let alerts_pages =
            web::pages::alerts::router(pages.clone(), alerts.clone(), outbox.clone());
        let web_router = web::router(query.clone(), self_metrics::install(), readiness)
            .merge(web::pages::router(pages))
            .merge(web::red_metrics::router(
                export_live,
                settings.export.external_labels.clone(),
            ));
        let web_router = web_router
            .merge(web::alerts_api::router(alerts.clone()))
            .merge(alerts_pages);
        // Security headers, the Host allowlist, credentials and the CSRF guard cover every
        // route of the web address.
        let hosts =
            web::guard::AllowedHosts::new(&settings.allowed_hosts, settings.public_url.as_deref());
        let web_router = web::protect(
            web_router,
            settings.web_auth.clone(),
            hosts,
            server_tls.is_some(),
        );
        let web_tls = server_tls.clone().map(|tls| (tls, tls::Listener::Web));
        let web_task = spawn_critical(
            stages.clone(),
            Stage::Web,
            serve_http(web_listener, web_router, web_tls, web_stop_rx, "web"),
            stopping_rx,
        );
        let reloader = Reloader {
            auth,
            tls: server_tls,
        };

        Ok(App {
            grpc_addr,
            http_addr,
            web_addr,
            stopping,
            receivers_stop,
            web_stop,
            pipeline_stop,
            grpc_task,
            http_task,
            web_task,
            pipeline_task,
            alerts_stop,
            alerts_tasks,
            query,
            alerts,
            stages,
            reloader,
        })
    }

    /// What SIGHUP calls.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Whether the listeners serve TLS.
    pub fn tls(&self) -> bool {
        self.reloader.tls.is_some()
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
    }

    /// The read model, for in-process consumers (alerts, pages).
    pub fn query(&self) -> Query {
        self.query.clone()
    }

    /// The alerting state, and the way to ask for a rules reload (SIGHUP).
    pub fn alerts(&self) -> AlertsHandle {
        self.alerts.clone()
    }

    /// How every stage is doing.
    pub fn stages(&self) -> Arc<Stages> {
        self.stages.clone()
    }

    /// Serves until `shutdown` resolves (or a stage fails), then stops in order: receivers
    /// stop accepting and finish their requests, the pipeline drains the queue and writes
    /// everything, the web server stops last. A failed stage makes the result an error, so the
    /// process exits non-zero and its manager restarts it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        let App {
            stopping,
            receivers_stop,
            web_stop,
            pipeline_stop,
            grpc_task,
            http_task,
            web_task,
            pipeline_task,
            alerts_stop,
            alerts_tasks,
            stages,
            ..
        } = self;
        let failed = tokio::select! {
            _ = shutdown => None,
            stage = stages.first_failure() => Some(stage),
        };
        stopping.send_replace(true);
        // In the order that loses nothing: receivers stop acknowledging first, the pipeline
        // then drains the queue and writes everything, alerting and the web address go last.
        let _ = receivers_stop.send(true);
        let (grpc, http) = tokio::join!(
            join_within(&stages, Stage::OtlpGrpc, grpc_task, CLIENTS_FINISH_WITHIN),
            join_within(&stages, Stage::OtlpHttp, http_task, CLIENTS_FINISH_WITHIN),
        );
        let mut results = vec![server_result(grpc), server_result(http)];
        let _ = pipeline_stop.send(());
        let stored = join_within(
            &stages,
            Stage::Pipeline,
            pipeline_task,
            PIPELINE_STOPS_WITHIN,
        );
        if stored.await.is_none() {
            results.push(Err(AppError::StageFailed(Stage::Pipeline.as_str())));
        }
        let _ = alerts_stop.send(true);
        for (stage, task) in alerts_tasks {
            join_within(&stages, stage, task, CLIENTS_FINISH_WITHIN).await;
        }
        let _ = web_stop.send(true);
        let web = join_within(&stages, Stage::Web, web_task, CLIENTS_FINISH_WITHIN).await;
        results.push(server_result(web));
        if let Some(stage) = failed {
            return Err(AppError::StageFailed(stage.as_str()));
        }
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }
}

/// How long a stop keeps trying to store what is left when the store cannot write.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long the pipeline may take to drain, flush and close the writer after a stop: the
/// writer's own deadline and a margin.
const PIPELINE_STOPS_WITHIN: Duration = Duration::from_secs(15);
/// How long a server waits for its clients' requests to finish after a stop, and a restarted
/// stage for its current round; past it, the task is aborted.
const CLIENTS_FINISH_WITHIN: Duration = Duration::from_secs(5);

/// How long acknowledged data may wait for a commit before receivers stop acknowledging more:
/// five flush intervals, and never under five seconds.
fn max_write_lag(flush_interval: Duration) -> Duration {
    (flush_interval * 5).max(Duration::from_secs(5))
}

/// A receiver's or the web server's result once joined. One that panicked, failed or did not
/// stop in time has been reported by its stage; a server that was cut off after its deadline
/// lost no data (receivers stop before the pipeline drains).
fn server_result(joined: Option<Option<Result<(), AppError>>>) -> Result<(), AppError> {
    joined.flatten().unwrap_or(Ok(()))
}
