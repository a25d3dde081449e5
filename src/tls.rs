//! TLS on redline's listeners (rustls on ring): the server certificate of `tls_cert` and
//! `tls_key` on OTLP/gRPC, OTLP/HTTP and the web address, and on the OTLP listeners, when
//! `otlp_client_ca` is set, required client certificates (mTLS).
//!
//! [`ServerTls`] holds one rustls configuration per listener kind (ALPN and client
//! certificates differ) behind an [`ArcSwap`]. A reload builds all of them from the files again
//! and swaps them in: each handshake takes the configuration current when it starts, so a new
//! certificate, key or CA applies to the next connection while established ones go on with
//! theirs. Swapping the whole configuration, not only the certificate, is what lets the client
//! CA be replaced the same way.
//!
//! [`TlsIncoming`] accepts TCP connections and runs each handshake in a task of its own, bounded
//! in number and time, so a client that stalls its handshake holds neither the accept loop nor
//! more than one slot; finished connections are handed to the server (tonic as a stream, axum
//! as a [`axum::serve::Listener`]) with the verified client certificate's name ([`PeerInfo`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::self_metrics;

/// The PEM files TLS is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates OTLP clients' certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("tls_cert and tls_key do not make a usable pair: {0}")]
    Pair(rustls::Error),
    #[error("otlp_client_ca {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
    #[error("otlp_client_ca: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
}

/// A listener served over TLS: what it offers in ALPN and whether it asks for client
/// certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    OtlpGrpc,
    OtlpHttp,
    Web,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp_grpc",
            Listener::OtlpHttp => "otlp_http",
            Listener::Web => "web",
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            // tonic serves HTTP/2 only.
            Listener::OtlpGrpc => vec![b"h2".to_vec()],
            Listener::OtlpHttp | Listener::Web => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }

    fn takes_client_certificates(self) -> bool {
        matches!(self, Listener::OtlpGrpc | Listener::OtlpHttp)
    }
}

/// What the files hold, parsed.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<Arc<RootCertStore>>,
}

/// The server side of TLS for every listener, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
    web: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files. Blocking (file reads).
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let material = read_material(&files)?;
        let config = |listener| {
            Ok::<_, TlsError>(ArcSwap::from_pointee(server_config(&material, listener)?))
        };
        Ok(Arc::new(ServerTls {
            grpc: config(Listener::OtlpGrpc)?,
            http: config(Listener::OtlpHttp)?,
            web: config(Listener::Web)?,
            files,
        }))
    }

    /// Reads the files again and serves what they hold to new connections; on an error the
    /// configuration in use stays. Blocking (file reads).
    pub fn reload(&self) -> Result<(), TlsError> {
        let material = read_material(&self.files)?;
        let grpc = server_config(&material, Listener::OtlpGrpc)?;
        let http = server_config(&material, Listener::OtlpHttp)?;
        let web = server_config(&material, Listener::Web)?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        self.web.store(Arc::new(web));
        Ok(())
    }

    /// Whether OTLP clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn config(&self, listener: Listener) -> Arc<ServerConfig> {
        match listener {
            Listener::OtlpGrpc => self.grpc.load_full(),
            Listener::OtlpHttp => self.http.load_full(),
            Listener::Web => self.web.load_full(),
        }
    }

    /// Accepts TLS connections on `tcp` for `listener` until `stop` turns true or the server
    /// drops the returned [`TlsIncoming`].
    pub fn incoming(
        self: &Arc<Self>,
        tcp: TcpListener,
        listener: Listener,
        stop: watch::Receiver<bool>,
    ) -> TlsIncoming {
        let local_addr = tcp.local_addr().ok();
        let (sender, connections) = mpsc::channel(HANDED_OVER_CONNECTIONS);
        tokio::spawn(accept_loop(self.clone(), tcp, listener, sender, stop));
        TlsIncoming {
            connections,
            local_addr,
        }
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_material(files: &TlsFiles) -> Result<Material, TlsError> {
    let chain = certificates(&files.cert).map_err(|m| file_error(&files.cert, m))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            &files.key,
            "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)",
        ),
        other => file_error(&files.key, other),
    })?;
    let client_roots = match &files.client_ca {
        None => None,
        Some(path) => {
            let client_ca = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path).map_err(client_ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| client_ca(format!("not a usable CA certificate: {e}")))?;
            }
            Some(Arc::new(roots))
        }
    };
    Ok(Material {
        chain,
        key,
        client_roots,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(chain)
}

fn server_config(material: &Material, listener: Listener) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?;
    let builder = match &material.client_roots {
        Some(roots) if listener.takes_client_certificates() => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(TlsError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = listener.alpn();
    Ok(config)
}

/// Handshakes in progress at most per listener; connections beyond it are closed at once.
const MAX_HANDSHAKES: usize = 256;
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished connections waiting for the server to take them.
const HANDED_OVER_CONNECTIONS: usize = 64;

async fn accept_loop(
    tls: Arc<ServerTls>,
    tcp: TcpListener,
    listener: Listener,
    connections: mpsc::Sender<TlsConnection>,
    mut stop: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = connections.closed() => return,
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(listener = listener.as_str(), %error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            self_metrics::tls_handshake_failed(listener.as_str(), "busy");
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.config(listener));
        let connections = connections.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let peer = PeerInfo {
                        remote,
                        client: client_name(&stream),
                    };
                    let _ = connections.send(TlsConnection { stream, peer }).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(listener = listener.as_str(), %remote, %error, "TLS handshake failed");
                    self_metrics::tls_handshake_failed(listener.as_str(), "error");
                }
                Err(_) => self_metrics::tls_handshake_failed(listener.as_str(), "timeout"),
            }
        });
    }
}

/// Who is on the other end of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The name of the client certificate the handshake verified, if one was asked for.
    pub client: Option<Arc<str>>,
}

/// Longest client-certificate name kept; longer ones are cut.
const MAX_CLIENT_NAME_CHARS: usize = 64;

/// The verified client certificate's subject common name, else its first DNS name, else a
/// fingerprint: a name for the sender table and `/metrics`, printable and short.
fn client_name(stream: &TlsStream<TcpStream>) -> Option<Arc<str>> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    let named = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .and_then(|(_, certificate)| {
            let common_name = certificate
                .subject()
                .iter_common_name()
                .find_map(|cn| cn.as_str().ok().map(str::to_string));
            common_name.or_else(|| {
                let alternative = certificate.subject_alternative_name().ok()??;
                alternative
                    .value
                    .general_names
                    .iter()
                    .find_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                        _ => None,
                    })
            })
        })
        .map(|name| {
            name.chars()
                .filter(|c| !c.is_control())
                .take(MAX_CLIENT_NAME_CHARS)
                .collect::<String>()
        })
        .filter(|name| !name.trim().is_empty());
    let name = named.unwrap_or_else(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(leaf.as_ref());
        format!("sha256:{}", hex::encode(&digest[..8]))
    });
    Some(Arc::from(name))
}

/// A connection whose handshake is done.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl TlsConnection {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// tonic puts the peer into every request's extensions.
impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Connections whose handshake is done, for a server to serve.
pub struct TlsIncoming {
    connections: mpsc::Receiver<TlsConnection>,
    local_addr: Option<SocketAddr>,
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<TlsConnection, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConnection, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => {
                let remote = connection.peer.remote;
                (connection, remote)
            }
            // The accept loop stopped: no connection will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.local_addr
            .ok_or_else(|| std::io::Error::other("the listener has no local address"))
    }
}

/// axum puts the peer into every request's extensions (as `ConnectInfo<PeerInfo>`).
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsIncoming>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsIncoming>) -> Self {
        stream.io().peer.clone()
    }
}
