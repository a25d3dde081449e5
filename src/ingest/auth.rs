//! Authentication of OTLP exporters, on every OTLP route and gRPC service alike: an API key
//! (`x-otlp-api-key: KEY` or `Authorization: Bearer KEY`, as `OTEL_EXPORTER_OTLP_HEADERS`
//! sends it) when keys are configured, and a verified client certificate when
//! `otlp_client_ca` is. Each configured credential is required. A request is counted for its
//! sender: its key's name, or else its client certificate's.
//!
//! [`OtlpAuth`] holds the keys (swapped whole on reload) and the senders' figures.
//! [`GrpcAuthLayer`] and [`http_auth`] put it in front of the two receivers, before anything
//! reads a body, and run an accepted request with its sender in a task-local: the ingestor
//! counts what it accepts per sender from there, so no handler has to pass the sender along.
//!
//! Keys are kept as SHA-256 digests and a presented key is compared with every one of them in
//! constant time, so neither the time of an answer nor its content tells how close a guess was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tonic::codegen::{BoxFuture, Service, http};

use crate::model::IngestBatch;
use crate::self_metrics::{self, Signal};
use crate::tls::PeerInfo;
use crate::vocab::now_ms;

pub use super::http::API_KEY_HEADER;

const MAX_NAME_CHARS: usize = 64;
const MIN_KEY_CHARS: usize = 16;
const MAX_KEY_CHARS: usize = 256;

/// Why a list of keys is not usable. Messages never contain a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("{0}: not NAME=KEY")]
    NotAPair(String),
    #[error("{0}: a name is 1 to {MAX_NAME_CHARS} letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error(
        "{0}: a key is {MIN_KEY_CHARS} to {MAX_KEY_CHARS} letters, digits, '.', '_', '~', '+', '/' \
         or '-' (make one with `openssl rand -hex 32`)"
    )]
    BadKey(String),
    #[error("{0}: the name is given twice")]
    DuplicateName(String),
    #[error("{0}: the key is also another name's")]
    DuplicateKey(String),
}

/// Named OTLP API keys, as digests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    keys: Vec<(Arc<str>, [u8; 32])>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Characters that pass unchanged through `OTEL_EXPORTER_OTLP_HEADERS` (whose values SDKs
/// URL-decode) and through a header value.
fn valid_key(key: &str) -> bool {
    (MIN_KEY_CHARS..=MAX_KEY_CHARS).contains(&key.len())
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'-')
        })
}

impl ApiKeys {
    /// Parses `NAME=KEY` entries, each with where it came from (for the messages); reports
    /// every problem.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<ApiKeys, Vec<KeyProblem>> {
        let mut problems = Vec::new();
        let mut keys: Vec<(Arc<str>, [u8; 32])> = Vec::new();
        for (origin, entry) in entries {
            let Some((name, key)) = entry.split_once('=') else {
                problems.push(KeyProblem::NotAPair(origin));
                continue;
            };
            let (name, key) = (name.trim(), key.trim());
            if !valid_name(name) {
                problems.push(KeyProblem::BadName(origin));
                continue;
            }
            if !valid_key(key) {
                problems.push(KeyProblem::BadKey(format!("{origin} ({name})")));
                continue;
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if keys.iter().any(|(n, _)| &**n == name) {
                problems.push(KeyProblem::DuplicateName(format!("{origin} ({name})")));
            } else if keys.iter().any(|(_, d)| *d == digest) {
                problems.push(KeyProblem::DuplicateKey(format!("{origin} ({name})")));
            } else {
                keys.push((Arc::from(name), digest));
            }
        }
        if problems.is_empty() {
            Ok(ApiKeys { keys })
        } else {
            Err(problems)
        }
    }

    /// The entries of a keys file: one `NAME=KEY` a line; blank lines and `#` comments skipped.
    pub fn file_entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
        text.lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(name, _)| &**name)
    }
}

/// Where the credentials a request is counted for come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Credential {
    ApiKey,
    ClientCertificate,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::ApiKey => "API key",
            Credential::ClientCertificate => "client certificate",
        }
    }
}

/// Why a request was refused (401 / UNAUTHENTICATED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "an OTLP API key is required: send it in the x-otlp-api-key header \
         (OTEL_EXPORTER_OTLP_HEADERS=x-otlp-api-key=KEY) or as Authorization: Bearer KEY"
    )]
    MissingKey,
    #[error("the OTLP API key is not valid")]
    WrongKey,
    #[error("a client certificate is required")]
    NoClientCertificate,
}

impl Refusal {
    /// The `reason` label of `redline_export_requests_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_api_key",
            Refusal::WrongKey => "wrong_api_key",
            Refusal::NoClientCertificate => "no_client_certificate",
        }
    }
}

/// Senders tracked at most (client certificates can name any number); others are counted
/// together under this name.
const MAX_SENDERS: usize = 256;
const OVERFLOW_SENDER: &str = "__overflow__";
/// Services listed per sender at most.
const MAX_SERVICES_PER_SENDER: usize = 16;

/// What one sender has had accepted.
pub struct SenderStats {
    name: Arc<str>,
    credential: Credential,
    figures: Mutex<Figures>,
}

#[derive(Default)]
struct Figures {
    /// Items accepted by item name (spans, points), with the `/metrics` counter of each (kept,
    /// so that counting does not build its labels again for every request).
    accepted: BTreeMap<&'static str, (u64, metrics::Counter)>,
    services: BTreeSet<Arc<str>>,
    more_services: bool,
    last_ms: Option<i64>,
}

impl SenderStats {
    fn new(name: Arc<str>, credential: Credential) -> Self {
        SenderStats {
            name,
            credential,
            figures: Mutex::new(Figures::default()),
        }
    }

    /// Counts an accepted export of `count` items from `services`.
    pub(crate) fn record(&self, signal: Signal, count: u64, services: &[Arc<str>]) {
        let mut figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        let (total, counter) = figures
            .accepted
            .entry(signal.item())
            .or_insert_with(|| (0, self_metrics::sender_accepted(&self.name, signal)));
        *total += count;
        counter.increment(count);
        figures.last_ms = Some(now_ms());
        for service in services {
            if figures.services.contains(service) {
                continue;
            }
            if figures.services.len() < MAX_SERVICES_PER_SENDER {
                figures.services.insert(service.clone());
            } else {
                figures.more_services = true;
            }
        }
    }
}

/// A sender as the overview shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderView {
    pub name: String,
    pub credential: Credential,
    pub services: Vec<String>,
    /// More services than listed sent with this credential.
    pub more_services: bool,
    /// Items accepted by item name (spans, points), since start.
    pub accepted: Vec<(&'static str, u64)>,
    pub last_ms: Option<i64>,
}

/// The keys in use, each with its sender's figures.
#[derive(Default)]
struct BoundKeys {
    digests: Vec<[u8; 32]>,
    senders: Vec<Arc<SenderStats>>,
}

impl BoundKeys {
    /// The sender whose key `presented` is. Every digest is compared, without an early exit.
    fn find(&self, presented: &[u8]) -> Option<&Arc<SenderStats>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut matched = Choice::from(0);
        let mut at = 0u64;
        for (i, candidate) in self.digests.iter().enumerate() {
            let equal = candidate.ct_eq(&digest);
            at.conditional_assign(&(i as u64), equal);
            matched |= equal;
        }
        bool::from(matched).then(|| &self.senders[at as usize])
    }
}

/// The OTLP receivers' credentials and who sent what.
pub struct OtlpAuth {
    keys: ArcSwap<BoundKeys>,
    client_certificates: bool,
    senders: Mutex<SenderTable>,
}

/// Every sender's figures, by credential and name.
type SenderTable = BTreeMap<(Credential, Arc<str>), Arc<SenderStats>>;

impl OtlpAuth {
    /// `client_certificates`: the OTLP listeners verify client certificates (mTLS).
    pub fn new(keys: &ApiKeys, client_certificates: bool) -> Arc<OtlpAuth> {
        let auth = Arc::new(OtlpAuth {
            keys: ArcSwap::from_pointee(BoundKeys::default()),
            client_certificates,
            senders: Mutex::new(BTreeMap::new()),
        });
        auth.set_keys(keys);
        auth
    }

    /// Uses `keys` from the next request on. A name keeps its figures across reloads.
    pub fn set_keys(&self, keys: &ApiKeys) {
        let bound = BoundKeys {
            digests: keys.keys.iter().map(|(_, digest)| *digest).collect(),
            senders: keys
                .keys
                .iter()
                .map(|(name, _)| self.sender(Credential::ApiKey, name))
                .collect(),
        };
        self.keys.store(Arc::new(bound));
    }

    /// Whether exporters must present an API key.
    pub fn requires_api_key(&self) -> bool {
        !self.keys.load().digests.is_empty()
    }

    fn sender(&self, credential: Credential, name: &str) -> Arc<SenderStats> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = senders.get(&(credential, Arc::from(name))) {
            return sender.clone();
        }
        // Keys are as many as configured; certificates as many as a CA signed.
        let name: Arc<str> = if credential == Credential::ApiKey || senders.len() < MAX_SENDERS {
            Arc::from(name)
        } else {
            Arc::from(OVERFLOW_SENDER)
        };
        senders
            .entry((credential, name.clone()))
            .or_insert_with(|| Arc::new(SenderStats::new(name, credential)))
            .clone()
    }

    /// Checks a request's credentials: its sender (`None` when nothing is required), or why
    /// it is refused.
    pub fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Option<Arc<SenderStats>>, Refusal> {
        let certificate = peer.and_then(|peer| peer.client.as_deref());
        if self.client_certificates && certificate.is_none() {
            return Err(Refusal::NoClientCertificate);
        }
        let keys = self.keys.load();
        if !keys.digests.is_empty() {
            let presented = presented_key(headers).ok_or(Refusal::MissingKey)?;
            return keys
                .find(presented)
                .cloned()
                .map(Some)
                .ok_or(Refusal::WrongKey);
        }
        Ok(certificate.map(|name| self.sender(Credential::ClientCertificate, name)))
    }

    /// Every sender seen or configured, by name.
    pub fn senders(&self) -> Vec<SenderView> {
        let senders: Vec<Arc<SenderStats>> = self
            .senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut views: Vec<SenderView> = senders
            .iter()
            .map(|sender| {
                let figures = sender.figures.lock().unwrap_or_else(|p| p.into_inner());
                SenderView {
                    name: sender.name.to_string(),
                    credential: sender.credential,
                    services: figures.services.iter().map(|s| s.to_string()).collect(),
                    more_services: figures.more_services,
                    accepted: figures
                        .accepted
                        .iter()
                        .map(|(item, (total, _))| (*item, *total))
                        .collect(),
                    last_ms: figures.last_ms,
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then(a.credential.cmp(&b.credential)));
        views
    }
}

/// The key in `x-otlp-api-key`, else in `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let key = value.as_bytes().trim_ascii();
        return (!key.is_empty()).then_some(key);
    }
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, credentials) = value.split_at(value.iter().position(|&b| b == b' ')?);
    let key = credentials.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !key.is_empty()).then_some(key)
}

tokio::task_local! {
    /// The sender of the request being served (set by the receivers' auth layers).
    static SENDER: Option<Arc<SenderStats>>;
}

/// The sender of the request being served, if it has one.
pub(crate) fn current_sender() -> Option<Arc<SenderStats>> {
    SENDER.try_with(|sender| sender.clone()).ok().flatten()
}

/// The services an export's items come from, a few at most (spans of one resource share their
/// service, so comparing with the last one found is usually enough).
pub(crate) fn services_of(batch: &IngestBatch) -> Vec<Arc<str>> {
    let mut services: Vec<Arc<str>> = Vec::new();
    let mut add = |service: &str| {
        if services.len() > MAX_SERVICES_PER_SENDER
            || services.iter().any(|known| &**known == service)
        {
            return;
        }
        services.push(Arc::from(service));
    };
    let mut last: Option<&Arc<str>> = None;
    for span in &batch.spans {
        // Spans of one resource share their service's allocation.
        if last.is_some_and(|last| Arc::ptr_eq(last, &span.service)) {
            continue;
        }
        last = Some(&span.service);
        add(&span.service);
    }
    for point in &batch.metric_points {
        add(&point.series.service);
    }
    services
}

/// Checks OTLP/gRPC requests before admission: UNAUTHENTICATED without valid credentials.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Arc<OtlpAuth>,
}

impl GrpcAuthLayer {
    pub fn new(auth: Arc<OtlpAuth>) -> Self {
        GrpcAuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Arc<OtlpAuth>,
}

impl<S, B, R> Service<http::Request<B>> for GrpcAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<R>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let checked = self
            .auth
            .check(request.headers(), request.extensions().get::<PeerInfo>());
        let sender = match checked {
            Ok(sender) => sender,
            Err(refusal) => {
                self_metrics::requests_rejected(refusal.reason());
                let response = tonic::Status::unauthenticated(refusal.to_string()).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        // The service that was polled ready takes the call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(SENDER.scope(sender, inner.call(request)))
    }
}

/// Middleware of the OTLP/HTTP router: 401 with a `google.rpc.Status` without valid
/// credentials. CORS preflights (OPTIONS) pass: browsers send them without credentials.
pub async fn http_auth(
    State(auth): State<Arc<OtlpAuth>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map(|ConnectInfo(peer)| peer);
    match auth.check(request.headers(), peer) {
        Ok(sender) => SENDER.scope(sender, next.run(request)).await,
        Err(refusal) => {
            self_metrics::requests_rejected(refusal.reason());
            super::http::unauthenticated(request.headers(), refusal.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn keys(entries: &[&str]) -> Result<ApiKeys, Vec<KeyProblem>> {
        ApiKeys::parse(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("entry {}", i + 1), *e)),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn keys_are_checked_by_name_in_either_header() {
        let auth = OtlpAuth::new(
            &keys(&[&format!("team-a={KEY_A}"), &format!("team-b={KEY_B}")]).unwrap(),
            false,
        );
        let name = |h: HeaderMap| auth.check(&h, None).map(|s| s.map(|s| s.name.to_string()));
        assert_eq!(
            name(headers(&[(API_KEY_HEADER, KEY_B)])),
            Ok(Some("team-b".into()))
        );
        assert_eq!(
            name(headers(&[("authorization", &format!("Bearer {KEY_A}"))])),
            Ok(Some("team-a".into()))
        );
        assert_eq!(
            name(headers(&[("authorization", &format!("bearer  {KEY_A} "))])),
            Ok(Some("team-a".into()))
        );
        assert_eq!(name(HeaderMap::new()), Err(Refusal::MissingKey));
        assert_eq!(
            name(headers(&[(API_KEY_HEADER, "")])),
            Err(Refusal::MissingKey)
        );
        assert_eq!(
            name(headers(&[("authorization", &format!("Basic {KEY_A}"))])),
            Err(Refusal::MissingKey)
        );
        assert_eq!(
            name(headers(&[(API_KEY_HEADER, &KEY_A[1..])])),
            Err(Refusal::WrongKey)
        );
        assert_eq!(
            name(headers(&[(API_KEY_HEADER, &format!("{KEY_A}a"))])),
            Err(Refusal::WrongKey)
        );
    }

    #[test]
    fn without_keys_or_certificates_everything_passes() {
        let auth = OtlpAuth::new(&ApiKeys::default(), false);
        assert!(auth.check(&HeaderMap::new(), None).unwrap().is_none());
        assert!(!auth.requires_api_key());
    }

    #[test]
    fn client_certificates_name_the_sender_and_are_required_when_configured() {
        let auth = OtlpAuth::new(&ApiKeys::default(), true);
        let peer = PeerInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            client: Some(Arc::from("billing")),
        };
        let sender = auth.check(&HeaderMap::new(), Some(&peer)).unwrap().unwrap();
        assert_eq!(&*sender.name, "billing");
        assert_eq!(sender.credential, Credential::ClientCertificate);
        let anonymous = PeerInfo {
            client: None,
            ..peer
        };
        assert_eq!(
            auth.check(&HeaderMap::new(), Some(&anonymous)).err(),
            Some(Refusal::NoClientCertificate)
        );
    }

    #[test]
    fn reloaded_keys_apply_and_names_keep_their_figures() {
        let auth = OtlpAuth::new(&keys(&[&format!("ops={KEY_A}")]).unwrap(), false);
        let sender = auth
            .check(&headers(&[(API_KEY_HEADER, KEY_A)]), None)
            .unwrap()
            .unwrap();
        sender.record(Signal::Traces, 5, &[Arc::from("checkout")]);
        auth.set_keys(&keys(&[&format!("ops={KEY_B}")]).unwrap());
        assert_eq!(
            auth.check(&headers(&[(API_KEY_HEADER, KEY_A)]), None).err(),
            Some(Refusal::WrongKey)
        );
        let again = auth
            .check(&headers(&[(API_KEY_HEADER, KEY_B)]), None)
            .unwrap()
            .unwrap();
        again.record(Signal::Metrics, 2, &[]);
        let views = auth.senders();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].accepted, vec![("points", 2), ("spans", 5)]);
        assert_eq!(views[0].services, vec!["checkout".to_string()]);
    }

    #[test]
    fn bad_entries_are_all_reported_without_their_keys() {
        let problems = keys(&[
            "no-separator",
            "bad name=aaaaaaaaaaaaaaaaaaaa",
            "short=abc",
            &format!("a={KEY_A}"),
            &format!("a={KEY_B}"),
            &format!("b={KEY_A}"),
        ])
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                KeyProblem::NotAPair("entry 1".into()),
                KeyProblem::BadName("entry 2".into()),
                KeyProblem::BadKey("entry 3 (short)".into()),
                KeyProblem::DuplicateName("entry 5 (a)".into()),
                KeyProblem::DuplicateKey("entry 6 (b)".into()),
            ]
        );
        let text = problems.iter().map(ToString::to_string).collect::<String>();
        assert!(!text.contains(KEY_A) && !text.contains("abc"), "{text}");
    }

    #[test]
    fn files_hold_one_key_a_line_with_comments() {
        let text = format!("# ops keys\n\nops={KEY_A}\n  # old\n  web = {KEY_B}  \n");
        let entries: Vec<_> = ApiKeys::file_entries(&text).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, 5);
        let parsed = ApiKeys::parse(entries.iter().map(|(n, e)| (format!("line {n}"), *e)));
        assert_eq!(parsed.unwrap().names().collect::<Vec<_>>(), ["ops", "web"]);
    }

    #[test]
    fn senders_beyond_the_limit_are_counted_together() {
        let auth = OtlpAuth::new(&ApiKeys::default(), true);
        for i in 0..MAX_SENDERS + 10 {
            let peer = PeerInfo {
                remote: "127.0.0.1:1".parse().unwrap(),
                client: Some(Arc::from(format!("client-{i}"))),
            };
            auth.check(&HeaderMap::new(), Some(&peer)).unwrap();
        }
        let views = auth.senders();
        assert_eq!(views.len(), MAX_SENDERS + 1);
        assert!(views.iter().any(|v| v.name == OVERFLOW_SENDER));
    }
}
