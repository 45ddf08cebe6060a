//! `swarm-dl hub serve`: a Hub-compatible HTTP server over a local folder or HF cache.
//!
//! Two listeners, like the real Hub: the **API listener** answers repo info, tree listings and
//! `/resolve/` (regular files directly, LFS files with a redirect), and the **data listener**
//! stands in for the CDN on another origin, serving LFS blobs by sha256 with single ranges. Status
//! codes and headers follow the Hub's (errors, `X-Repo-Commit`, `X-Linked-Etag`, redirects) so that the real
//! `huggingface_hub` client can use it. It is a mirror for air-gapped sites and the origin every
//! test runs against; `/_swarm-dl/stats` counts what it served.
//!
//! It serves a snapshot of the folder taken at start; it never writes to the folder except the
//! hash memo of [`index`].

pub mod index;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use index::{HubIndex, IndexedRepo};
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use swarm_protocol::repo::RepoType;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

/// How to serve.
#[derive(Debug, Clone)]
pub struct HubServerConfig {
    /// A HF cache directory, or a folder `DIR/[datasets/|spaces/]<org>/<name>/…`.
    pub dir: PathBuf,
    /// API listener address.
    pub listen: SocketAddr,
    /// Data (CDN) listener address.
    pub data_listen: SocketAddr,
    /// Base URL put in LFS redirects, when the data listener is reached through something else
    /// (a proxy, a test's fault injector). Default: the data listener's own address.
    pub data_public_url: Option<String>,
    /// Repos that need a token with access.
    pub gated: Vec<String>,
    /// Tokens that are valid (and have access to gated repos).
    pub tokens: Vec<String>,
    /// Entries per tree page.
    pub page_size: usize,
    /// Per-connection rate cap on the data listener, bytes per second.
    pub data_rate: Option<u64>,
}

impl HubServerConfig {
    /// Serve `dir` on ephemeral loopback ports with default settings.
    pub fn loopback(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_public_url: None,
            gated: Vec::new(),
            tokens: Vec::new(),
            page_size: 1000,
            data_rate: None,
        }
    }
}

/// What the server has served so far.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// Requests to `/api/…`.
    pub api_requests: AtomicU64,
    /// Requests to `/…/resolve/…`.
    pub resolve_requests: AtomicU64,
    /// Body bytes of regular files sent by the API listener.
    pub resolve_bytes: AtomicU64,
    /// Requests to the data listener.
    pub data_requests: AtomicU64,
    /// Body bytes sent by the data listener.
    pub data_bytes: AtomicU64,
}

impl Stats {
    /// All file bytes served (both listeners).
    pub fn file_bytes(&self) -> u64 {
        self.resolve_bytes.load(Relaxed) + self.data_bytes.load(Relaxed)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The folder cannot be read.
    #[error("cannot read '{}': {source}", .dir.display())]
    Index {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

struct AppState {
    /// The index as last built; replaced (never edited) when the folder changes.
    index: std::sync::RwLock<Arc<HubIndex>>,
    /// Something under the folder changed since the index was built (set by the watcher).
    stale: Arc<std::sync::atomic::AtomicBool>,
    /// When the index was last built; held while it is rebuilt, so one request rebuilds it.
    built: tokio::sync::Mutex<std::time::Instant>,
    cfg: HubServerConfig,
    data_base: String,
    stats: Arc<Stats>,
}

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct HubServer {
    /// API listener address.
    pub addr: SocketAddr,
    /// Data listener address.
    pub data_addr: SocketAddr,
    /// Counters.
    pub stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Marks the index stale when files under the folder change (none where the platform
    /// cannot watch: then a request for an unknown repo rescans, at most once a second).
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HubServer {
    /// Indexes the folder, binds both listeners and starts serving.
    pub async fn start(cfg: HubServerConfig) -> Result<Self, ServeError> {
        let dir = cfg.dir.clone();
        let index = tokio::task::spawn_blocking(move || HubIndex::build(&dir))
            .await
            .map_err(|e| ServeError::Index { dir: cfg.dir.clone(), source: std::io::Error::other(e) })?
            .map_err(|source| ServeError::Index { dir: cfg.dir.clone(), source })?;
        let api = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
        let data = tokio::net::TcpListener::bind(cfg.data_listen)
            .await
            .map_err(|source| ServeError::Bind { addr: cfg.data_listen, source })?;
        let (addr, data_addr) = (local(&api, cfg.listen), local(&data, cfg.data_listen));
        let data_base = cfg.data_public_url.clone().unwrap_or_else(|| format!("http://{data_addr}"));
        let stats = Arc::new(Stats::default());
        let repos = index.repos.len();
        let stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = watch(&cfg.dir, stale.clone());
        let state = Arc::new(AppState {
            index: std::sync::RwLock::new(Arc::new(index)),
            stale,
            built: tokio::sync::Mutex::new(std::time::Instant::now()),
            cfg,
            data_base: data_base.trim_end_matches('/').to_owned(),
            stats: stats.clone(),
        });
        tracing::info!(%addr, %data_addr, repos, "hub stand-in serving");
        let api_app = axum::Router::new().fallback(api_handler).with_state(state.clone());
        let data_app = axum::Router::new().fallback(data_handler).with_state(state);
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(api, api_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(data, data_app).await;
            }),
        ];
        Ok(Self { addr, data_addr, stats, tasks, _watcher: watcher })
    }

    /// The endpoint clients use (`HF_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Watches `dir` for changes that matter to the index: not our own hash memo, lock files or
/// downloads in progress.
fn watch(dir: &std::path::Path, stale: Arc<std::sync::atomic::AtomicBool>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let handler = move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if ev.kind.is_access() {
            return;
        }
        let ours = |p: &std::path::PathBuf| {
            let s = p.to_string_lossy();
            s.contains("/.swarm-dl/") || s.contains("/.locks/") || s.contains(".incomplete")
        };
        if ev.paths.iter().any(|p| !ours(p)) {
            stale.store(true, Relaxed);
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the served folder: new repos appear on the first request for them");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(error = %e, "cannot watch the served folder: new repos appear on the first request for them");
        return None;
    }
    Some(w)
}

fn local(l: &tokio::net::TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

pub(crate) fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

/// An error answer as the Hub gives it: JSON body, `X-Error-Code` (when there is one) and
/// `X-Error-Message`, which `huggingface_hub` turns into its exception classes.
pub(crate) fn error(status: StatusCode, code: Option<&str>, message: &str, extra: &[(&str, String)]) -> Response {
    let mut r = (status, axum::Json(json!({ "error": message }))).into_response();
    let h = r.headers_mut();
    if let Some(code) = code {
        h.insert("x-error-code", HeaderValue::from_str(code).unwrap_or(HeaderValue::from_static("")));
    }
    h.insert("x-error-message", HeaderValue::from_str(message).unwrap_or(HeaderValue::from_static("error")));
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    r
}

enum Auth {
    Anonymous,
    Valid,
    Invalid,
}

impl AppState {
    fn auth(&self, headers: &HeaderMap) -> Auth {
        match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
            None => Auth::Anonymous,
            Some(t) if self.cfg.tokens.iter().any(|k| k == t.trim()) => Auth::Valid,
            Some(_) => Auth::Invalid,
        }
    }

    /// The index, rebuilt first when files changed under the folder, or when `missed` (a repo
    /// was not found) and it was last built over a second ago.
    async fn index(&self, missed: bool) -> Arc<HubIndex> {
        let current = || self.index.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !missed && !self.stale.load(Relaxed) {
            return current();
        }
        let mut built = self.built.lock().await;
        let due = self.stale.swap(false, Relaxed) || (missed && built.elapsed() >= Duration::from_secs(1));
        if !due {
            return current();
        }
        let dir = self.cfg.dir.clone();
        match tokio::task::spawn_blocking(move || HubIndex::build(&dir)).await {
            Ok(Ok(fresh)) => {
                tracing::info!(repos = fresh.repos.len(), "folder changed: index rebuilt");
                *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot re-index the served folder; serving the last index"),
            Err(e) => tracing::warn!(error = %e, "re-indexing failed"),
        }
        *built = std::time::Instant::now();
        current()
    }

    /// The index, with the repo named by the first segments of `segs` in it if the folder has
    /// it now.
    async fn index_with(&self, ty: RepoType, segs: &[String]) -> Arc<HubIndex> {
        let idx = self.index(false).await;
        if find_repo(&idx, ty, segs).is_some() { idx } else { self.index(true).await }
    }

    /// Like the Hub: a repo named with other letter case is redirected, with a relative
    /// `Location`, to its canonical name (a "rename", which clients follow keeping their token).
    /// `first` is the index of the repo id's first path segment.
    fn canonical_redirect(idx: &HubIndex, ty: RepoType, uri: &Uri, first: usize) -> Option<Response> {
        let raw: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
        for n in [2, 1] {
            let Some(asked) = raw.get(first..first + n) else { continue };
            let asked = asked.join("/").to_ascii_lowercase();
            let Some((_, id)) = idx.repos.keys().find(|(t, id)| *t == ty && id.to_ascii_lowercase() == asked) else {
                continue;
            };
            let mut path = raw[..first].to_vec();
            path.push(id);
            path.extend_from_slice(&raw[first + n..]);
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            put(r.headers_mut(), header::LOCATION.as_str(), &format!("/{}{query}", path.join("/")));
            return Some(r);
        }
        None
    }

    fn repo_not_found(&self, auth: &Auth) -> Response {
        let (status, msg) = match auth {
            Auth::Invalid => (StatusCode::UNAUTHORIZED, "Invalid credentials in Authorization header"),
            Auth::Anonymous => (StatusCode::UNAUTHORIZED, "Repository not found"),
            Auth::Valid => (StatusCode::NOT_FOUND, "Repository not found"),
        };
        let code = (!matches!(auth, Auth::Invalid)).then_some("RepoNotFound");
        error(status, code, msg, &[])
    }
}

async fn api_handler(State(st): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if path == "/_swarm-dl/stats" {
        return axum::Json(&*st.stats).into_response();
    }
    let segs: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    let auth = st.auth(&headers);
    if matches!(auth, Auth::Invalid) {
        return st.repo_not_found(&auth);
    }
    if segs.first().map(String::as_str) == Some("api") {
        st.stats.api_requests.fetch_add(1, Relaxed);
        let Some(ty) = segs.get(1).and_then(|s| s.parse::<RepoType>().ok()) else {
            return error(StatusCode::NOT_FOUND, None, "Not Found", &[]);
        };
        let rest = &segs[2..];
        let idx = st.index_with(ty, rest).await;
        let Some((repo, used)) = find_repo(&idx, ty, rest) else {
            return AppState::canonical_redirect(&idx, ty, &uri, 2).unwrap_or_else(|| st.repo_not_found(&auth));
        };
        let tail = &rest[used..];
        return match tail.first().map(String::as_str) {
            None => repo_info(&st, ty, repo, "main", &uri),
            Some("revision") if tail.len() == 2 => repo_info(&st, ty, repo, &tail[1], &uri),
            Some("tree") if tail.len() >= 2 => tree(&st, repo, &tail[1], &tail[2..].join("/"), &uri, &headers),
            Some("refs") => refs(repo),
            _ => error(StatusCode::NOT_FOUND, None, "Not Found", &[]),
        };
    }
    // [datasets|spaces/]<repo>/resolve/<rev>/<path…>
    let (ty, rest) = match segs.first().map(String::as_str) {
        Some("datasets") => (RepoType::Dataset, &segs[1..]),
        Some("spaces") => (RepoType::Space, &segs[1..]),
        _ => (RepoType::Model, &segs[..]),
    };
    let Some(pos) = rest.iter().position(|s| s == "resolve") else {
        return error(StatusCode::NOT_FOUND, None, "Not Found", &[]);
    };
    st.stats.resolve_requests.fetch_add(1, Relaxed);
    let idx = st.index_with(ty, &rest[..pos]).await;
    let Some((repo, used)) = find_repo(&idx, ty, &rest[..pos]) else {
        let first = segs.len() - rest.len();
        return AppState::canonical_redirect(&idx, ty, &uri, first).unwrap_or_else(|| st.repo_not_found(&auth));
    };
    if used != pos || rest.len() < pos + 3 {
        return error(StatusCode::NOT_FOUND, None, "Not Found", &[]);
    }
    if st.cfg.gated.contains(&repo.id) && !matches!(auth, Auth::Valid) {
        let msg = format!(
            "Access to {} {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            ty.as_str(),
            repo.id
        );
        return error(StatusCode::UNAUTHORIZED, Some("GatedRepo"), &msg, &[]);
    }
    let rev = &rest[pos + 1];
    let file_path = rest[pos + 2..].join("/");
    let Some(commit) = repo.resolve(rev) else {
        return error(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"), &[]);
    };
    let Some(file) = repo.commits.get(commit).and_then(|c| c.get(&file_path)) else {
        return error(
            StatusCode::NOT_FOUND,
            Some("EntryNotFound"),
            &format!("{file_path} does not exist on \"{rev}\""),
            &[("x-repo-commit", commit.to_owned())],
        );
    };
    if let Some(sha) = &file.lfs_sha256 {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::FOUND;
        let h = r.headers_mut();
        put(h, header::LOCATION.as_str(), &format!("{}/lfs/{sha}", st.data_base));
        put(h, "x-linked-etag", &format!("\"{sha}\""));
        put(h, "x-linked-size", &file.size.to_string());
        put(h, "x-repo-commit", commit);
        put(h, header::ETAG.as_str(), &format!("\"{}\"", file.blob_id));
        return r;
    }
    let extra = [("x-repo-commit", commit.to_owned()), ("etag", format!("\"{}\"", file.blob_id))];
    serve_file(&file.source, file.size, &method, &headers, &extra, None, st.stats.clone(), false).await
}

/// Finds the repo named by the first segments (`name` or `ns/name`), returning it and the
/// number of segments used.
fn find_repo<'a>(idx: &'a HubIndex, ty: RepoType, segs: &[String]) -> Option<(&'a IndexedRepo, usize)> {
    if segs.len() >= 2
        && let Some(r) = idx.repos.get(&(ty, format!("{}/{}", segs[0], segs[1])))
    {
        return Some((r, 2));
    }
    segs.first().and_then(|s| idx.repos.get(&(ty, s.clone()))).map(|r| (r, 1))
}

pub(crate) fn put(h: &mut HeaderMap, k: &str, v: &str) {
    if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
        h.insert(k, v);
    }
}

fn query_flag(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

fn repo_info(st: &AppState, ty: RepoType, repo: &IndexedRepo, rev: &str, uri: &Uri) -> Response {
    let Some(commit) = repo.resolve(rev) else {
        return error(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"), &[]);
    };
    let blobs = query_flag(uri, "blobs").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let files = &repo.commits[commit];
    let siblings: Vec<_> = files
        .iter()
        .map(|(path, f)| {
            let mut s = json!({ "rfilename": path });
            if blobs {
                s["size"] = json!(f.size);
                s["blobId"] = json!(f.blob_id);
                if let Some(sha) = &f.lfs_sha256 {
                    s["lfs"] = json!({ "sha256": sha, "size": f.size, "pointerSize": f.pointer_size() });
                }
            }
            s
        })
        .collect();
    let gated = if st.cfg.gated.contains(&repo.id) { json!("manual") } else { json!(false) };
    let mut info = json!({
        "_id": &commit[..24],
        "id": repo.id,
        "author": repo.id.split_once('/').map(|(a, _)| a),
        "sha": commit,
        "lastModified": "2026-01-01T00:00:00.000Z",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "private": false,
        "gated": gated,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
    });
    if ty == RepoType::Model {
        info["modelId"] = json!(repo.id);
    }
    if ty == RepoType::Space {
        info["sdk"] = json!("static");
    }
    axum::Json(info).into_response()
}

fn tree(st: &AppState, repo: &IndexedRepo, rev: &str, dir: &str, uri: &Uri, headers: &HeaderMap) -> Response {
    let Some(commit) = repo.resolve(rev) else {
        return error(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"), &[]);
    };
    let recursive = query_flag(uri, "recursive").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let prefix = if dir.is_empty() { String::new() } else { format!("{}/", dir.trim_end_matches('/')) };
    let files = &repo.commits[commit];
    let mut entries: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for (path, f) in files.iter().filter(|(p, _)| p.starts_with(&prefix)) {
        let rel = &path[prefix.len()..];
        let parts: Vec<&str> = rel.split('/').collect();
        let dirs = if recursive { parts.len() - 1 } else { (parts.len() - 1).min(1) };
        for i in 1..=dirs {
            let d = format!("{prefix}{}", parts[..i].join("/"));
            let oid = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(d.as_bytes()));
            entries
                .entry(d.clone())
                .or_insert_with(|| json!({ "type": "directory", "oid": oid, "size": 0, "path": d }));
        }
        if recursive || parts.len() == 1 {
            let mut e = json!({ "type": "file", "oid": f.blob_id, "size": f.size, "path": path });
            if let Some(sha) = &f.lfs_sha256 {
                e["lfs"] = json!({ "oid": sha, "size": f.size, "pointerSize": f.pointer_size() });
            }
            entries.insert(path.clone(), e);
        }
    }
    if !prefix.is_empty() && entries.is_empty() {
        return error(StatusCode::NOT_FOUND, Some("EntryNotFound"), &format!("{dir} does not exist on \"{rev}\""), &[]);
    }
    let all: Vec<_> = entries.into_values().collect();
    let cursor: usize = query_flag(uri, "cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let page = st.cfg.page_size.max(1);
    let end = (cursor + page).min(all.len());
    let mut r = axum::Json(&all[cursor.min(all.len())..end]).into_response();
    if end < all.len() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let query: Vec<&str> =
            uri.query().unwrap_or("").split('&').filter(|kv| !kv.starts_with("cursor=") && !kv.is_empty()).collect();
        let mut q = query.join("&");
        if !q.is_empty() {
            q.push('&');
        }
        let next = format!("http://{host}{}?{q}cursor={end}", uri.path());
        put(r.headers_mut(), header::LINK.as_str(), &format!("<{next}>; rel=\"next\""));
    }
    r
}

fn refs(repo: &IndexedRepo) -> Response {
    let mut branches = Vec::new();
    let mut tags = Vec::new();
    let mut prs = Vec::new();
    for (name, commit) in &repo.refs {
        if let Some(pr) = name.strip_prefix("refs/pr/") {
            prs.push(json!({ "name": pr, "ref": name, "targetCommit": commit }));
        } else if name.starts_with('v') && name.contains('.') {
            tags.push(json!({ "name": name, "ref": format!("refs/tags/{name}"), "targetCommit": commit }));
        } else {
            branches.push(json!({ "name": name, "ref": format!("refs/heads/{name}"), "targetCommit": commit }));
        }
    }
    axum::Json(json!({ "branches": branches, "converts": [], "tags": tags, "pullRequests": prs })).into_response()
}

async fn data_handler(State(st): State<Arc<AppState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    st.stats.data_requests.fetch_add(1, Relaxed);
    let Some(sha) = uri.path().strip_prefix("/lfs/") else {
        return error(StatusCode::NOT_FOUND, None, "Not Found", &[]);
    };
    let idx = st.index(false).await;
    let Some((path, size)) = idx.lfs_blobs.get(sha) else {
        return error(StatusCode::NOT_FOUND, None, "Not Found", &[]);
    };
    let extra = [("etag", format!("\"{sha}\""))];
    serve_file(path, *size, &method, &headers, &extra, st.cfg.data_rate, st.stats.clone(), true).await
}

/// The head of a file answer: 200, or 206 for one satisfiable `Range` (several ranges get the
/// whole file), with `Content-Length`, `Accept-Ranges` and `extra`; returns it with the first
/// byte and the length to send. An unsatisfiable range is refused with 416, as the Hub does.
pub(crate) fn file_head(
    size: u64,
    headers: &HeaderMap,
    extra: &[(&str, String)],
) -> Result<(Response, u64, u64), Box<Response>> {
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(raw) => match http_range_header::parse_range_header(raw).and_then(|r| r.validate(size)) {
            Ok(ranges) if ranges.len() == 1 => Some(ranges[0].clone()),
            Ok(_) => None,
            Err(_) => {
                let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, None, "Requested Range Not Satisfiable", extra);
                put(r.headers_mut(), header::CONTENT_RANGE.as_str(), &format!("bytes */{size}"));
                return Err(Box::new(r));
            }
        },
    };
    let (status, start, len) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, *r.start(), r.end() - r.start() + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (k, v) in extra {
        put(h, k, v);
    }
    put(h, header::CONTENT_LENGTH.as_str(), &len.to_string());
    put(h, header::ACCEPT_RANGES.as_str(), "bytes");
    put(h, header::CONTENT_TYPE.as_str(), "application/octet-stream");
    if range.is_some() {
        put(h, header::CONTENT_RANGE.as_str(), &format!("bytes {start}-{}/{size}", start + len - 1));
    }
    Ok((resp, start, len))
}

/// Serves a file (or one byte range of it) with the Hub's headers, counting the bytes sent and
/// pacing them when `rate` is set.
#[allow(clippy::too_many_arguments)]
async fn serve_file(
    path: &std::path::Path,
    size: u64,
    method: &Method,
    headers: &HeaderMap,
    extra: &[(&str, String)],
    rate: Option<u64>,
    stats: Arc<Stats>,
    on_data_listener: bool,
) -> Response {
    let (mut resp, start, len) = match file_head(size, headers, extra) {
        Ok(head) => head,
        Err(refused) => return *refused,
    };
    if method == Method::HEAD || len == 0 {
        return resp;
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, None, &format!("cannot read blob: {e}"), &[]),
    };
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, None, "cannot seek blob", &[]);
    }
    let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10);
    let started = Instant::now();
    let mut sent = 0u64;
    let body = reader.then(move |chunk| {
        let stats = stats.clone();
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
        }
        let sent_now = sent;
        async move {
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(sent_now as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            if let Ok(c) = &chunk {
                let counter = if on_data_listener { &stats.data_bytes } else { &stats.resolve_bytes };
                counter.fetch_add(c.len() as u64, Relaxed);
            }
            chunk
        }
    });
    *resp.body_mut() = Body::from_stream(body);
    resp
}
