//! `join --hub-listen`: every node is a Hub endpoint, so that unmodified clients download
//! through the swarm. With `HF_ENDPOINT=http://127.0.0.1:8008`, `huggingface_hub`,
//! `transformers`, `datasets` and vLLM need no change.
//!
//! - **`resolve`** (`[datasets/|spaces/]<repo>/resolve/<rev>/<path>`, HEAD and GET) is answered
//!   by the node. It first asks the Hub the same HEAD with the caller's own `Authorization`: the
//!   Hub decides who may read what, and its answer gives the commit, the ETag and the size. The
//!   bytes then come from the node's cache, or from a download the node runs like any `get`
//!   (peers first, the Hub share second, every chunk verified). A GET streams the file's
//!   in-order prefix as it grows: whole chunks that are present, then what the Hub has written
//!   in order into the next one. The last byte waits for the whole-file hash, so a client never
//!   holds a complete file that failed it. Nothing is answered before the first bytes are
//!   there, so a download that fails first is a 5xx; one that fails later closes the
//!   connection (the client resumes with a `Range`).
//! - **Every other route** (repo info, revisions, tree pages, paths-info, whoami) is relayed to
//!   the node's Hub with the caller's `Authorization`. Successful GET and HEAD answers are kept
//!   [`ANSWER_TTL`], keyed by the caller's token, and requests for the same key in flight share
//!   one Hub request: a cached answer only ever goes to the token the Hub gave it to.
//! - Answers carry no `X-Xet-*` header, so Xet-capable clients use plain HTTP through the node
//!   instead of going around it.
//! - Errors are the Hub's own status, `X-Error-Code` and `X-Error-Message`, so clients raise the
//!   same exceptions as against the Hub.
//!
//! A HEAD of a file that is not in the cache takes the file's lock in `.locks/` and starts its
//! download before it answers, so that when client and node share a cache the node, not the
//! client, holds the lock: the client waits on it, finds the blob in place, and writes nothing
//! (`huggingface_hub` checks for the blob under the lock).

use crate::cache::{BlobLock, HubCache};
use crate::fetch::progress::{FileProgress, Progress};
use crate::fetch::{self, FetchError, GetRequest};
use crate::http::{error, file_head, put};
use crate::hub::{HubClient, HubConfig, HubError, RepoRef, RetryPolicy, Token};
use crate::store::direct::{AlignedBuf, DataFile};
use crate::swarm::NodeHandle;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_protocol::hash::Etag;
use swarm_protocol::repo::{RepoId, RepoType};
use tokio::sync::{OnceCell, watch};

/// Where `join` listens for Hub clients unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8008";
/// How long a relayed Hub answer is reused for the same token and URL.
pub const ANSWER_TTL: Duration = Duration::from_secs(5);
/// Relayed answers larger than this are not kept.
const MAX_KEPT_BODY: usize = 4 << 20;
/// Request bodies (paths-info forms) larger than this are refused.
const MAX_REQUEST_BODY: usize = 1 << 20;
/// Answers kept at most; past it the oldest are dropped.
const MAX_KEPT: usize = 4096;
/// Bytes read per body piece.
const PIECE: u64 = 256 << 10;
/// How often a waiting stream looks again.
const POLL: Duration = Duration::from_millis(20);

/// How to run the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The Hub that answers metadata and that downloads use (`--endpoint` / `HF_ENDPOINT`).
    pub upstream: String,
    /// Requests in flight per download, as `get --max-workers`.
    pub max_workers: usize,
    /// Seconds a download waits for a first peer, as `get --peer-wait`.
    pub peer_wait: Duration,
    /// Attempts per Hub request in those downloads, as `get --retries`.
    pub retries: u32,
}

/// Why the endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The upstream is not a usable URL.
    #[error("{0}")]
    Upstream(HubError),
    /// The upstream is this endpoint: every request would come back here.
    #[error(
        "the Hub this node fetches from ({0}) is its own Hub endpoint: start `join` with --endpoint set to the real Hub (HF_ENDPOINT is meant for the clients)"
    )]
    Loop(String),
    /// The address cannot be bound.
    #[error("cannot listen for Hub clients on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running endpoint; stops when dropped.
#[derive(Debug)]
pub struct HubEndpoint {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HubEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HubEndpoint {
    /// Binds `cfg.listen` and serves. Refuses an upstream that points back at this address.
    pub async fn start(node: NodeHandle, cache: HubCache, cfg: EndpointConfig) -> Result<Self, EndpointError> {
        let upstream = HubClient::new(HubConfig { endpoint: cfg.upstream.clone(), ..HubConfig::default() })
            .map_err(EndpointError::Upstream)?
            .endpoint();
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| EndpointError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr().unwrap_or(cfg.listen);
        if points_at(&upstream, addr) {
            return Err(EndpointError::Loop(upstream));
        }
        node.set_hub_endpoint(addr);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .user_agent(concat!("swarm-dl/", env!("CARGO_PKG_VERSION"), " (hub endpoint)"))
            .build()
            .map_err(|e| EndpointError::Upstream(HubError::InvalidEndpoint(e.to_string())))?;
        let gw = Arc::new(Gateway {
            node,
            cache,
            upstream,
            http,
            max_workers: cfg.max_workers.max(1),
            peer_wait: cfg.peer_wait,
            retry: RetryPolicy { max_attempts: cfg.retries.max(1), ..RetryPolicy::default() },
            answers: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(gw);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the Hub endpoint stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// The address bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What clients put in `HF_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// True when `url` names `addr` (or, for a wildcard bind, any loopback address on its port).
pub fn points_at(url: &str, addr: SocketAddr) -> bool {
    let Ok(u) = url::Url::parse(url) else { return false };
    if u.port_or_known_default() != Some(addr.port()) {
        return false;
    }
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip == addr.ip() || (ip.is_loopback() && addr.ip().is_unspecified()),
        Some(url::Host::Ipv6(ip)) => ip == addr.ip() || (ip.is_loopback() && addr.ip().is_unspecified()),
        Some(url::Host::Domain(d)) => d == "localhost" && (addr.ip().is_loopback() || addr.ip().is_unspecified()),
        None => false,
    }
}

struct Gateway {
    node: NodeHandle,
    cache: HubCache,
    /// Without trailing slash.
    upstream: String,
    http: reqwest::Client,
    max_workers: usize,
    peer_wait: Duration,
    retry: RetryPolicy,
    /// Relayed answers by (token digest, method, path and query).
    answers: Mutex<HashMap<(String, Method, String), Arc<Kept>>>,
    /// Downloads this endpoint started, by ETag.
    inflight: Mutex<HashMap<Etag, Arc<Inflight>>>,
}

/// One relayed answer, or the request that will produce it.
struct Kept {
    at: Instant,
    answer: OnceCell<Answer>,
}

/// A Hub answer as relayed: status, the headers worth passing on, body.
#[derive(Clone)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Headers not passed on: per-connection ones, lengths (recomputed), and Xet's.
fn relayed_header(name: &HeaderName, method: &Method) -> bool {
    let n = name.as_str();
    !(matches!(
        n,
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "te" | "trailer" | "proxy-authenticate"
    ) || (n == "content-length" && method != Method::HEAD)
        || n.starts_with("x-xet-"))
}

impl Answer {
    fn bad_gateway(upstream: &str, why: &str) -> Self {
        let message = format!("the node cannot reach the Hub at {upstream}: {why}");
        let mut headers = HeaderMap::new();
        put(&mut headers, "x-error-message", &message);
        put(&mut headers, header::CONTENT_TYPE.as_str(), "application/json");
        Self {
            status: StatusCode::BAD_GATEWAY,
            headers,
            body: Bytes::from(serde_json::json!({ "error": message }).to_string()),
        }
    }

    fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }

    /// The answer for a client that reached us as `base`: links to the Hub point back here. A
    /// GET answered with what a HEAD returned gets the error message as its body.
    fn into_response(mut self, base: &str, upstream: &str, head: bool) -> Response {
        if !head {
            self.headers.remove(header::CONTENT_LENGTH);
            if self.body.is_empty() && !self.status.is_success() && !self.status.is_redirection() {
                let message = self.header("x-error-message").unwrap_or("").to_owned();
                self.body = Bytes::from(serde_json::json!({ "error": message }).to_string());
                put(&mut self.headers, header::CONTENT_TYPE.as_str(), "application/json");
            }
        }
        let mut r = Response::new(if head { Body::empty() } else { Body::from(self.body) });
        *r.status_mut() = self.status;
        for (k, v) in &self.headers {
            let v = match (k.as_str(), v.to_str()) {
                ("location" | "link", Ok(s)) if s.contains(upstream) => {
                    if k == "link" && s.contains("xet") {
                        continue;
                    }
                    HeaderValue::from_str(&s.replace(upstream, base)).unwrap_or_else(|_| v.clone())
                }
                ("link", Ok(s)) if s.contains("xet") => continue,
                _ => v.clone(),
            };
            r.headers_mut().append(k.clone(), v);
        }
        r
    }
}

/// The digest a token is filed under (the token itself is never kept).
fn token_key(auth: Option<&HeaderValue>) -> String {
    auth.map_or_else(String::new, |v| hex::encode(sha2::Sha256::digest(v.as_bytes())))
}

/// What of a client's request goes to the Hub.
struct Call<'a> {
    method: Method,
    /// Path and query.
    pq: &'a str,
    auth: Option<&'a HeaderValue>,
    ctype: Option<&'a HeaderValue>,
    body: Bytes,
}

impl Gateway {
    /// Relays a request to the Hub, sharing GET and HEAD answers for the same token and URL.
    async fn relay(&self, call: Call<'_>) -> Answer {
        if !matches!(call.method, Method::GET | Method::HEAD) || !call.body.is_empty() {
            return self.ask(&call).await;
        }
        let key = (token_key(call.auth), call.method.clone(), call.pq.to_owned());
        let kept = {
            let mut map = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_KEPT {
                map.retain(|_, k| k.at.elapsed() < ANSWER_TTL);
                if map.len() >= MAX_KEPT {
                    map.clear();
                }
            }
            match map.get(&key) {
                Some(k) if k.at.elapsed() < ANSWER_TTL => k.clone(),
                _ => {
                    let k = Arc::new(Kept { at: Instant::now(), answer: OnceCell::new() });
                    map.insert(key.clone(), k.clone());
                    k
                }
            }
        };
        let answer = kept.answer.get_or_init(|| self.ask(&call)).await.clone();
        if !answer.status.is_success() && !answer.status.is_redirection() || answer.body.len() > MAX_KEPT_BODY {
            // Failures are shared with the requests that waited for them, never kept.
            let mut map = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|k| Arc::ptr_eq(k, &kept)) {
                map.remove(&key);
            }
        }
        answer
    }

    async fn ask(&self, call: &Call<'_>) -> Answer {
        let (method, pq) = (&call.method, call.pq);
        let url = format!("{}{pq}", self.upstream);
        let mut req = self.http.request(method.clone(), &url).header(header::ACCEPT_ENCODING, "identity");
        if let Some(a) = call.auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        if let Some(c) = call.ctype {
            req = req.header(header::CONTENT_TYPE, c.clone());
        }
        if !call.body.is_empty() {
            req = req.body(call.body.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.node.metrics().hub_request("api", None);
                return Answer::bad_gateway(&self.upstream, &crate::hub::describe(&e));
            }
        };
        let status = resp.status();
        self.node
            .metrics()
            .hub_request(if pq.contains("/resolve/") { "resolve" } else { "api" }, Some(status.as_u16()));
        let mut headers = HeaderMap::new();
        for (k, v) in resp.headers() {
            if relayed_header(k, method) {
                headers.append(k.clone(), v.clone());
            }
        }
        match resp.bytes().await {
            Ok(body) => Answer { status, headers, body },
            Err(e) => Answer::bad_gateway(&self.upstream, &crate::hub::describe(&e)),
        }
    }
}

/// `[datasets/|spaces/]<repo>/resolve/<rev>/<path>`, decoded.
#[derive(Debug, Clone, PartialEq)]
struct Resolve {
    repo: RepoRef,
    rev: String,
    path: String,
}

fn parse_resolve(path: &str) -> Option<Resolve> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ty, rest) = match segs.first() {
        Some(&"datasets") => (RepoType::Dataset, &segs[1..]),
        Some(&"spaces") => (RepoType::Space, &segs[1..]),
        Some(&"models") => (RepoType::Model, &segs[1..]),
        _ => (RepoType::Model, &segs[..]),
    };
    // A repo id is `name` or `org/name`.
    let at = (1..=2).find(|&i| rest.get(i) == Some(&"resolve"))?;
    if rest.len() < at + 3 || rest[at + 2..].iter().any(|s| s.is_empty()) {
        return None;
    }
    let d = crate::http::decode;
    Some(Resolve {
        repo: RepoRef { id: RepoId::parse(&rest[..at].iter().map(|s| d(s)).collect::<Vec<_>>().join("/")).ok()?, ty },
        rev: d(rest[at + 1]),
        path: rest[at + 2..].iter().map(|s| d(s)).collect::<Vec<_>>().join("/"),
    })
}

/// What the Hub's HEAD of a `resolve` URL says about the file.
#[derive(Debug, Clone)]
struct FileMeta {
    commit: String,
    etag: Etag,
    size: u64,
    /// The Hub's headers to repeat: `ETag`, `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`.
    extra: Vec<(&'static str, String)>,
}

impl FileMeta {
    /// `None` when the answer is not a file (an error, a redirect to a renamed repo).
    fn from_answer(a: &Answer) -> Option<Self> {
        if !(a.status.is_success() || a.status.is_redirection()) {
            return None;
        }
        let commit = a.header("x-repo-commit")?.to_owned();
        let linked = a.header("x-linked-etag");
        let etag = Etag::parse(linked.or(a.header("etag"))?).ok()?;
        let size = match a.header("x-linked-size") {
            Some(s) => s.parse().ok()?,
            None if a.status.is_success() => a.header("content-length")?.parse().ok()?,
            None => return None,
        };
        let mut extra = vec![("x-repo-commit", commit.clone())];
        for k in ["etag", "x-linked-etag", "x-linked-size"] {
            if let Some(v) = a.header(k) {
                extra.push((k, v.to_owned()));
            }
        }
        Some(Self { commit, etag, size, extra })
    }
}

/// A download this endpoint started, shared by every request for the same blob.
struct Inflight {
    progress: Arc<Progress>,
    /// `Some` once it ended.
    done: watch::Receiver<Option<Result<(), Failure>>>,
}

impl Inflight {
    fn file(&self) -> Option<Arc<FileProgress>> {
        self.progress.active_files().into_iter().next()
    }

    fn ended(&self) -> Option<Result<(), Failure>> {
        self.done.borrow().clone()
    }
}

/// A failed download as a Hub-style answer.
#[derive(Debug, Clone)]
struct Failure {
    status: StatusCode,
    code: Option<&'static str>,
    message: String,
}

impl Failure {
    fn from_fetch(e: &FetchError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            FetchError::Hub(h) => match h {
                HubError::RepoNotFound { .. } => (StatusCode::NOT_FOUND, Some("RepoNotFound")),
                HubError::Gated { .. } => (StatusCode::FORBIDDEN, Some("GatedRepo")),
                HubError::RevisionNotFound { .. } => (StatusCode::NOT_FOUND, Some("RevisionNotFound")),
                HubError::EntryNotFound { .. } => (StatusCode::NOT_FOUND, Some("EntryNotFound")),
                HubError::BadToken { .. } => (StatusCode::UNAUTHORIZED, None),
                HubError::Forbidden { .. } => (StatusCode::FORBIDDEN, None),
                HubError::Status { status, .. } if status.is_server_error() => (*status, None),
                HubError::Unreachable { answered: false, .. } => (StatusCode::GATEWAY_TIMEOUT, None),
                _ => (StatusCode::BAD_GATEWAY, None),
            },
            FetchError::DiskFull { .. } | FetchError::NotWritable { .. } => (StatusCode::INSUFFICIENT_STORAGE, None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        Self { status, code, message }
    }

    fn response(&self) -> Response {
        error(self.status, self.code, &self.message, &[])
    }
}

impl Gateway {
    /// The download of `meta`'s blob: the one in flight, or a new one.
    fn download(self: &Arc<Self>, r: &Resolve, meta: &FileMeta, auth: Option<&HeaderValue>) -> Arc<Inflight> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = map.get(&meta.etag) {
            return i.clone();
        }
        let progress = Arc::new(Progress::reporting_to(self.node.metrics()));
        let (tx, done) = watch::channel(None);
        let inflight = Arc::new(Inflight { progress: progress.clone(), done });
        map.insert(meta.etag.clone(), inflight.clone());
        let token = auth.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).and_then(Token::new);
        // The file's lock is taken here, before the client that asked can take it in a cache
        // they share; if someone else holds it, the download waits for them as any would.
        let lock_path = self.cache.repo(&r.repo).lock_path(&meta.etag);
        let lock_held = match BlobLock::try_acquire(&lock_path) {
            Ok(Some(lock)) => Some((meta.etag.clone(), Arc::new(lock))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(lock = %lock_path.display(), error = %e, "cannot take a file's lock for the Hub endpoint");
                None
            }
        };
        let req = GetRequest {
            repo: r.repo.clone(),
            revision: meta.commit.clone(),
            include: vec![r.path.clone()],
            named: true,
            force: false,
            exclude: Vec::new(),
            cache: self.cache.clone(),
            local_dir: None,
            max_workers: self.max_workers,
            max_download_rate: None,
            node: Some(self.node.clone()),
            peer_wait: self.peer_wait,
            lock_held,
        };
        let (gw, etag, path) = (self.clone(), meta.etag.clone(), r.path.clone());
        tokio::spawn(async move {
            let metrics = gw.node.metrics();
            metrics.download_running(1);
            tracing::info!(repo = %req.repo.id, file = %path, "download asked through the Hub endpoint");
            let result = match HubClient::new(HubConfig {
                endpoint: gw.upstream.clone(),
                token,
                retry: gw.retry,
                ..HubConfig::default()
            }) {
                Ok(hub) => fetch::get(&req, Some(hub.with_metrics(metrics.clone())), progress).await.map(|_| ()),
                Err(e) => Err(FetchError::Hub(e)),
            };
            if let Err(e) = &result {
                tracing::warn!(repo = %req.repo.id, file = %path, error = %e, "a download asked through the Hub endpoint failed");
            }
            metrics.download_running(-1);
            gw.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&etag);
            let _ = tx.send(Some(result.map_err(|e| Failure::from_fetch(&e))));
        });
        inflight
    }
}

async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let base = match parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => String::new(),
    };
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let auth = parts.headers.get(header::AUTHORIZATION);
    let head = parts.method == Method::HEAD;
    if let Some(r) = parse_resolve(parts.uri.path())
        && matches!(parts.method, Method::GET | Method::HEAD)
    {
        gw.node.metrics().endpoint_request("resolve");
        return resolve(&gw, &r, &pq, &parts.headers, head, &base).await;
    }
    gw.node.metrics().endpoint_request("relay");
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                "request body too large for the node's Hub endpoint",
                &[],
            );
        }
    };
    let ctype = parts.headers.get(header::CONTENT_TYPE);
    let answer = gw.relay(Call { method: parts.method.clone(), pq: &pq, auth, ctype, body }).await;
    answer.into_response(&base, &gw.upstream, head)
}

async fn resolve(gw: &Arc<Gateway>, r: &Resolve, pq: &str, headers: &HeaderMap, head: bool, base: &str) -> Response {
    let auth = headers.get(header::AUTHORIZATION);
    let answer = gw.relay(Call { method: Method::HEAD, pq, auth, ctype: None, body: Bytes::new() }).await;
    let Some(meta) = FileMeta::from_answer(&answer) else {
        return answer.into_response(base, &gw.upstream, head);
    };
    let rc = gw.cache.repo(&r.repo);
    let blob = rc.blob(&meta.etag);
    let inflight = if blob.is_file() { None } else { Some(gw.download(r, &meta, auth)) };
    let (resp, start, len) = match file_head(meta.size, headers, &meta.extra) {
        Ok(h) => h,
        Err(refused) => return *refused,
    };
    if head {
        return resp;
    }
    let mut stream = FileStream {
        pos: start,
        end: start + len,
        size: meta.size,
        blob,
        incomplete: rc.incomplete(&meta.etag),
        inflight,
        file: None,
        round: 0,
    };
    // No answer before the first bytes are there: a download that fails first is a 5xx, never a
    // 200 cut short. (A client that gives up waiting asks again and joins the same download.)
    if len > 0 {
        loop {
            match stream.available() {
                Err(Stop::Failed(f)) => return f.response(),
                Err(Stop::Io(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string(), &[]),
                Ok(n) if n > stream.pos => break,
                Ok(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
    let metrics = gw.node.metrics();
    let body = futures_util::stream::unfold(stream, move |mut s| {
        let metrics = metrics.clone();
        async move {
            let piece = s.next().await?;
            if let Ok(b) = &piece {
                metrics.endpoint_sent(b.len() as u64);
            }
            Some((piece, s))
        }
    });
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, Body::from_stream(body))
}

enum Stop {
    Failed(Failure),
    Io(std::io::Error),
}

/// The bytes `pos..end` of a file, from its blob, or from the partial file of a download as its
/// in-order prefix grows.
struct FileStream {
    pos: u64,
    end: u64,
    size: u64,
    blob: PathBuf,
    incomplete: PathBuf,
    inflight: Option<Arc<Inflight>>,
    /// Open on the blob, or on the partial file (which stays valid when it is moved into place).
    /// Read directly where aligned, like every reader of chunk data (`store::direct`).
    file: Option<(Arc<DataFile>, bool)>,
    /// The download's restart count when the partial file was opened.
    round: u64,
}

impl FileStream {
    /// How far the file may be read now; opens it when it can.
    fn available(&mut self) -> Result<u64, Stop> {
        if let Some((_, true)) = &self.file {
            return Ok(self.size);
        }
        let Some(inflight) = self.inflight.clone() else {
            self.file = Some((Arc::new(DataFile::open_read(&self.blob).map_err(Stop::Io)?), true));
            return Ok(self.size);
        };
        match inflight.ended() {
            Some(Err(f)) => return Err(Stop::Failed(f)),
            // (No stat per piece once a file is open.)
            Some(Ok(())) | None if self.file.is_none() && self.blob.is_file() => {
                self.file = Some((Arc::new(DataFile::open_read(&self.blob).map_err(Stop::Io)?), true));
                return Ok(self.size);
            }
            Some(Ok(())) => {
                return if self.file.is_some() {
                    // Finished: the partial file we read is the blob now.
                    Ok(self.size)
                } else {
                    Err(Stop::Io(std::io::Error::other("the download ended but its blob is not in the cache")))
                };
            }
            None => {}
        }
        let Some(fp) = inflight.file() else { return Ok(0) };
        let round = fp.restarts.load(Relaxed);
        if self.file.is_some() && round != self.round {
            return Err(Stop::Io(std::io::Error::other("the file failed its hash and is fetched again")));
        }
        if self.file.is_none() && fp.writing.load(Relaxed) {
            match DataFile::open_read(&self.incomplete) {
                Ok(f) => {
                    self.file = Some((Arc::new(f), false));
                    self.round = round;
                }
                Err(_) => return Ok(0),
            }
        }
        // The last byte waits for the whole-file hash.
        Ok(fp.readable().min(self.size.saturating_sub(1)))
    }

    /// The next piece of the body, waiting for it if need be; `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let avail = match self.available() {
                Ok(n) => n,
                Err(Stop::Failed(f)) => {
                    self.end = self.pos;
                    return Some(Err(std::io::Error::other(f.message)));
                }
                Err(Stop::Io(e)) => {
                    self.end = self.pos;
                    return Some(Err(e));
                }
            };
            if avail > self.pos
                && let Some((file, _)) = &self.file
            {
                let n = (avail.min(self.end) - self.pos).min(PIECE);
                let (file, at) = (file.clone(), self.pos);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = AlignedBuf::new(usize::try_from(n).unwrap_or(0));
                    file.read_exact_at(&mut buf, at).map(|()| buf)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                return match read {
                    Ok(buf) => {
                        self.pos += n;
                        Some(Ok(Bytes::from_owner(buf)))
                    }
                    Err(e) => {
                        self.end = self.pos;
                        Some(Err(e))
                    }
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_urls_parse_as_the_hub_reads_them() {
        let r = parse_resolve("/org/model/resolve/main/sub/config.json").expect("parses");
        assert_eq!(
            (r.repo.id.to_string().as_str(), r.repo.ty, r.rev.as_str(), r.path.as_str()),
            ("org/model", RepoType::Model, "main", "sub/config.json")
        );
        let r = parse_resolve("/gpt2/resolve/main/config.json").expect("one-segment id");
        assert_eq!(r.repo.id.to_string(), "gpt2");
        let r = parse_resolve("/datasets/org/ds/resolve/refs%2Fpr%2F1/data/a%20b.csv").expect("dataset");
        assert_eq!((r.repo.ty, r.rev.as_str(), r.path.as_str()), (RepoType::Dataset, "refs/pr/1", "data/a b.csv"));
        assert!(parse_resolve("/api/models/org/model").is_none());
        assert!(parse_resolve("/org/model/resolve/main").is_none());
        assert!(parse_resolve("/org/model/resolve/main/").is_none());
    }

    #[test]
    fn an_upstream_on_the_endpoints_own_address_is_a_loop() {
        let addr: SocketAddr = "127.0.0.1:8008".parse().expect("addr");
        assert!(points_at("http://127.0.0.1:8008", addr));
        assert!(points_at("http://localhost:8008/", addr));
        assert!(!points_at("http://127.0.0.1:8009", addr));
        assert!(!points_at("https://huggingface.co", addr));
        let any: SocketAddr = "0.0.0.0:8008".parse().expect("addr");
        assert!(points_at("http://127.0.0.1:8008", any));
    }

    #[test]
    fn xet_and_per_connection_headers_are_not_relayed() {
        let get = Method::GET;
        assert!(!relayed_header(&HeaderName::from_static("x-xet-hash"), &get));
        assert!(!relayed_header(&HeaderName::from_static("transfer-encoding"), &get));
        assert!(!relayed_header(&HeaderName::from_static("content-length"), &get));
        assert!(relayed_header(&HeaderName::from_static("content-length"), &Method::HEAD));
        assert!(relayed_header(&HeaderName::from_static("x-error-code"), &get));
        assert!(relayed_header(&HeaderName::from_static("link"), &get));
    }
}
