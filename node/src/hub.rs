//! The Hub client: repo info, tree listings, resolve redirects and ranged GETs, with retries.
//!
//! Speaks the Hub's HTTP protocol as `huggingface_hub` does: metadata from the API, data
//! from `/resolve/<commit>/<path>`, whose LFS answers redirect to a CDN on another origin. The
//! `Authorization` header goes only to the Hub's own origin, never to the CDN. The token is
//! never logged or printed ([`Token`]'s `Debug` is redacted).
//!
//! This module does not write files: byte streams are handed to the caller ([`HubClient::open`]),
//! who owns resuming and verification.

pub mod error;
pub mod retry;

pub use error::{HubError, Subject, redact};
pub use retry::RetryPolicy;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::hash::Etag;
use swarm_protocol::repo::{RepoId, RepoType, check_repo_path};
use url::Url;

/// A Hub access token. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token; `None` for an empty or blank one.
    pub fn new(raw: &str) -> Option<Self> {
        let t = raw.trim().replace(['\r', '\n'], "");
        (!t.is_empty()).then_some(Self(t))
    }

    /// The secret itself, for handing to a local `join` node over its loopback control API.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A repo on the Hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    /// Its id.
    pub id: RepoId,
    /// Its type.
    pub ty: RepoType,
}

impl RepoRef {
    /// The error subject for this repo.
    pub fn subject(&self, revision: Option<&str>, path: Option<&str>) -> Subject {
        Subject {
            repo: self.id.to_string(),
            repo_type: self.ty,
            revision: revision.map(str::to_owned),
            path: path.map(str::to_owned),
        }
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, e.g. `https://huggingface.co` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Token sent to the Hub's own origin.
    pub token: Option<Token>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response (`HF_HUB_DOWNLOAD_TIMEOUT`).
    pub read_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://huggingface.co".into(),
            token: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// `GET /api/{type}s/{repo}/revision/{rev}`: the fields a download needs.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    /// Canonical repo id.
    pub id: String,
    /// Commit the revision points at.
    pub sha: Option<String>,
    /// Only its owners (and their tokens) can see it.
    #[serde(default)]
    pub private: bool,
    /// `false`, or how access is granted (`"auto"`, `"manual"`): users must accept conditions.
    #[serde(default)]
    pub gated: serde_json::Value,
}

/// Who may download a repo, as the Hub said in its repo info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Gated: access needs accepted conditions and a token.
    pub gated: bool,
    /// Private.
    pub private: bool,
}

impl Access {
    /// Anyone may download it without a token.
    pub fn is_public(self) -> bool {
        !self.gated && !self.private
    }
}

impl RepoInfo {
    /// Gated or private, as the Hub says.
    pub fn access(&self) -> Access {
        let gated = !matches!(&self.gated, serde_json::Value::Null | serde_json::Value::Bool(false));
        Access { gated, private: self.private }
    }
}

/// One entry of `GET /api/{type}s/{repo}/tree/{rev}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeEntry {
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// git object id (blob sha1 for files).
    pub oid: String,
    /// Size in bytes (real size for LFS files).
    #[serde(default)]
    pub size: u64,
    /// Path in the repo, `/`-separated.
    pub path: String,
    /// LFS pointer data, for LFS files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs: Option<LfsInfo>,
    /// Xet file id, for Xet-backed files.
    #[serde(rename = "xetHash", default, skip_serializing_if = "Option::is_none")]
    pub xet_hash: Option<String>,
}

/// LFS part of a tree entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LfsInfo {
    /// sha256 of the content.
    pub oid: String,
    /// Content size.
    pub size: u64,
    /// Size of the pointer file.
    #[serde(rename = "pointerSize", default)]
    pub pointer_size: u64,
}

/// A file of a repo at a commit, checked and ready to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path in the repo (validated by [`check_repo_path`]).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The Hub ETag: LFS sha256, else the git blob sha1.
    pub etag: Etag,
    /// git blob id (of the pointer file, for LFS files).
    pub blob_id: String,
    /// LFS sha256 and size, for LFS files.
    pub lfs: Option<(String, u64)>,
    /// Xet hash, if any.
    pub xet_hash: Option<String>,
}

impl RemoteFile {
    /// From a tree entry; `None` for directories. Errors for entries that could hurt us.
    pub fn from_entry(e: &TreeEntry) -> Result<Option<Self>, String> {
        if e.kind != "file" {
            return Ok(None);
        }
        check_repo_path(&e.path).map_err(|err| err.0)?;
        let etag_src = e.lfs.as_ref().map_or(e.oid.as_str(), |l| l.oid.as_str());
        let etag = Etag::parse(etag_src).map_err(|err| format!("{} for '{}'", err, e.path))?;
        Ok(Some(Self {
            path: e.path.clone(),
            size: e.lfs.as_ref().map_or(e.size, |l| l.size),
            etag,
            blob_id: e.oid.clone(),
            lfs: e.lfs.as_ref().map(|l| (l.oid.to_ascii_lowercase(), l.size)),
            xet_hash: e.xet_hash.clone(),
        }))
    }
}

/// Where a file's bytes can be fetched, and whether the token may go there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The URL (resolve URL, or the CDN URL it redirected to).
    pub url: Url,
    /// Send `Authorization`: only to the Hub's own origin.
    pub auth: bool,
}

/// The outcome of one attempt: try again (with the server's hint, if any), or stop.
#[derive(Debug)]
pub enum Attempt {
    /// Transient: network error, timeout, 408/429/5xx.
    Retry {
        /// What went wrong, for the final message.
        last: String,
        /// Server-requested pause.
        hint: Option<Duration>,
        /// Whether the Hub answered at all.
        cause: Cause,
    },
    /// Final.
    Fatal(HubError),
}

/// Why an attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No connection (refused, no route, DNS): nothing answers at that address now.
    Connect,
    /// Connected, then silence or a broken connection.
    Network,
    /// The Hub answered "try later" (408, 429, 5xx).
    Answer,
}

/// An open response body for (part of) a file.
#[derive(Debug)]
pub struct Opened {
    /// The response, status 200 or 206.
    pub response: reqwest::Response,
    /// Where we ended up (reuse it for the file's next ranges).
    pub location: Location,
    /// True when the server honoured the range (206); false for a 200 with the whole file.
    pub partial: bool,
}

/// How long a connection carries file bytes: past this age it is closed when its range ends,
/// and the next range opens a new one.
///
/// The CDN's congestion control gives each connection a share of a shaped uplink, and the
/// share sticks to the connection. On the testbed (4 nodes, seed last, 400 Mbit/s; the
/// stand-in's kernel sends with BBR, as large CDNs do), with connections kept for the whole
/// download, a few carried 80-140 Mbit/s while others crawled at 6-9, range after range. The
/// slowest 4 MiB chunk of a run took 3.3-7.7 s (10 runs) where the median took 1.2; it landed
/// last, in the middle of its file, and every node's whole-file check then read half a file
/// back: makespan up to 14.1 s. With this age, the slowest took 2.6-3.2 s and the makespan
/// was at most 13.5 s; with a new connection for every range, 2.4-2.9 s and 13.5 s.
///
/// A new connection pays the TCP and TLS handshakes and slow start. Counted in time rather
/// than in ranges, the cost stays small where it would matter: where ranges are fast (a wide
/// uplink, one node) a connection carries dozens of them before it is replaced; where they are
/// slow (a narrow uplink shared by many requests), it carries one or two, and that is where
/// shares stick.
pub const MAX_DATA_CONNECTION_AGE: Duration = Duration::from_millis(1500);

fn build_http(timeouts: (Duration, Duration), idle_per_host: usize) -> Result<reqwest::Client, HubError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeouts.0)
        .read_timeout(timeouts.1)
        .pool_max_idle_per_host(idle_per_host)
        .tcp_nodelay(true)
        .user_agent(concat!("swarm-dl/", env!("CARGO_PKG_VERSION"), "; hf_hub/compatible"))
        .build()
        .map_err(|e| HubError::Malformed { url: String::new(), what: format!("cannot build HTTP client: {e}") })
}

/// Connections for file bytes, each held by a client of its own (which keeps at most one), so
/// that each can be told apart, aged and closed: a pooled client picks connections itself.
#[derive(Debug)]
struct Lanes {
    /// Connections between ranges, the most recently used last.
    idle: std::sync::Mutex<Vec<Lane>>,
    timeouts: (Duration, Duration),
}

#[derive(Debug)]
struct Lane {
    http: reqwest::Client,
    born: std::time::Instant,
}

impl Lanes {
    /// A new connection's client; should building it fail (it did not in `HubClient::new`,
    /// with the same settings), `shared`, whose connections are pooled.
    fn open(&self, shared: &reqwest::Client) -> Lane {
        let http = build_http(self.timeouts, 1).unwrap_or_else(|_| shared.clone());
        Lane { http, born: std::time::Instant::now() }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One request's connection for file bytes ([`HubClient::data_connection`]). Dropped without
/// [`Self::reuse`], its connection is closed.
#[derive(Debug)]
pub struct DataConnection {
    /// Sends on `lane`; its `lanes` take the lane back.
    hub: HubClient,
    lane: Option<Lane>,
    reuse: bool,
}

impl DataConnection {
    /// The client that sends on this connection.
    pub fn hub(&self) -> &HubClient {
        &self.hub
    }

    /// The range ended cleanly: the connection may carry the next one (while young enough).
    pub fn reuse(&mut self) {
        self.reuse = true;
    }
}

impl Drop for DataConnection {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take().filter(|l| self.reuse && l.born.elapsed() < MAX_DATA_CONNECTION_AGE) {
            lock(&self.hub.lanes.idle).push(lane);
        }
    }
}

/// The Hub client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    /// Connections for file bytes ([`HubClient::data_connection`]).
    lanes: Arc<Lanes>,
    endpoint: Url,
    token: Option<Token>,
    retry: RetryPolicy,
    /// Give up on the network early (see [`HubClient::fail_fast`]).
    fail_fast: bool,
    /// Where requests are counted.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

const MAX_REDIRECTS: usize = 10;

impl HubClient {
    /// Builds a client. Redirects are followed by hand (to keep the token off other origins).
    pub fn new(cfg: HubConfig) -> Result<Self, HubError> {
        let trimmed = cfg.endpoint.trim_end_matches('/');
        let endpoint =
            Url::parse(&format!("{trimmed}/")).map_err(|_| HubError::InvalidEndpoint(cfg.endpoint.clone()))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
            return Err(HubError::InvalidEndpoint(cfg.endpoint));
        }
        let timeouts = (cfg.connect_timeout, cfg.read_timeout);
        let http = build_http(timeouts, 64)?;
        // Checked once here: a lane's client is built with the same settings.
        build_http(timeouts, 1)?;
        let lanes = Arc::new(Lanes { idle: Default::default(), timeouts });
        Ok(Self { http, lanes, endpoint, token: cfg.token, retry: cfg.retry, fail_fast: false, metrics: None })
    }

    /// A connection for one request for file bytes: one kept from an earlier range if it is
    /// younger than [`MAX_DATA_CONNECTION_AGE`], else a new one. It goes back for the next
    /// range only if [`DataConnection::reuse`] is called (its range ended cleanly).
    pub fn data_connection(&self) -> DataConnection {
        let kept = {
            let mut idle = lock(&self.lanes.idle);
            idle.retain(|l| l.born.elapsed() < MAX_DATA_CONNECTION_AGE);
            idle.pop()
        };
        let lane = kept.unwrap_or_else(|| self.lanes.open(&self.http));
        let hub = Self { http: lane.http.clone(), ..self.clone() };
        DataConnection { hub, lane: Some(lane), reuse: false }
    }

    /// The endpoint, without trailing slash.
    pub fn endpoint(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_owned()
    }

    /// The same client, giving up early when the Hub does not answer: at once when nothing
    /// accepts the connection, after one retry when the connection goes silent. For metadata
    /// that the cache can answer instead (`huggingface_hub` falls back to the cached ref on
    /// connection errors). Answers such as 5xx still get every attempt.
    #[must_use]
    pub fn fail_fast(&self) -> Self {
        Self { fail_fast: true, ..self.clone() }
    }

    /// The same client, counting its requests into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sends a request, counting it (`kind`: api, resolve or data) with its status.
    async fn send(&self, rb: reqwest::RequestBuilder, kind: &str) -> Result<reqwest::Response, Attempt> {
        let r = rb.send().await;
        if let Some(m) = &self.metrics {
            m.hub_request(kind, r.as_ref().ok().map(|r| r.status().as_u16()));
        }
        r.map_err(transport)
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether a token is configured.
    pub fn authenticated(&self) -> bool {
        self.token.is_some()
    }

    fn url(&self, path: &str) -> Url {
        // `path` is built from validated ids and percent-encoded segments.
        self.endpoint.join(path).unwrap_or_else(|_| self.endpoint.clone())
    }

    /// `…/resolve/<rev>/<path>` for a file.
    pub fn resolve_url(&self, repo: &RepoRef, revision: &str, path: &str) -> Url {
        self.url(&format!("{}{}/resolve/{}/{}", repo.ty.url_prefix(), repo.id, enc_segment(revision), enc_path(path)))
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    fn request(&self, method: Method, url: &Url, auth: bool) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, url.clone()).header(header::ACCEPT_ENCODING, "identity");
        if auth && let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.0)).unwrap_or(HeaderValue::from_static(""));
            v.set_sensitive(true);
            rb = rb.header(header::AUTHORIZATION, v);
        }
        rb
    }

    fn status_error(&self, r: &reqwest::Response, subject: &Subject) -> Attempt {
        let status = r.status();
        if retry::is_retryable_status(status) {
            return Attempt::Retry {
                last: format!("HTTP {status}"),
                hint: retry::server_hint(r.headers()),
                cause: Cause::Answer,
            };
        }
        Attempt::Fatal(HubError::from_status(
            status,
            r.headers(),
            &redact(r.url()),
            subject,
            self.authenticated(),
            &self.endpoint(),
        ))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy gives up.
    pub async fn with_retries<T, F, Fut>(&self, url: &Url, mut attempt: F) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut n = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry { last, hint, cause }) => {
                    n += 1;
                    let give_up = n >= self.retry.max_attempts
                        || (self.fail_fast && (cause == Cause::Connect || (cause == Cause::Network && n >= 2)));
                    if give_up {
                        let answered = cause == Cause::Answer;
                        return Err(HubError::Unreachable { url: redact(url), attempts: n, last, answered });
                    }
                    let wait = self.retry.delay(n - 1, hint);
                    tracing::debug!(url = %redact(url), attempt = n, wait_ms = wait.as_millis() as u64, %last, "retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        subject: &Subject,
    ) -> Result<(T, HeaderMap), HubError> {
        self.with_retries(url, || async {
            let mut r = self.send(self.request(Method::GET, url, true), "api").await?;
            // Renames (case, legacy ids) answer with a relative redirect on the Hub's origin.
            for _ in 0..MAX_REDIRECTS {
                if !r.status().is_redirection() {
                    break;
                }
                let next = header_str(r.headers(), header::LOCATION)
                    .and_then(|l| r.url().join(&l).ok())
                    .filter(|n| self.same_origin(n))
                    .ok_or_else(|| malformed(url, "redirect away from the Hub"))?;
                r = self.send(self.request(Method::GET, &next, true), "api").await?;
            }
            if !r.status().is_success() {
                return Err(self.status_error(&r, subject));
            }
            let headers = r.headers().clone();
            let body = r.bytes().await.map_err(transport)?;
            let v = serde_json::from_slice(&body).map_err(|e| {
                Attempt::Fatal(HubError::Malformed { url: redact(url), what: format!("invalid JSON: {e}") })
            })?;
            Ok((v, headers))
        })
        .await
    }

    /// Repo info at a revision: gives the commit the revision points at.
    pub async fn repo_info(&self, repo: &RepoRef, revision: &str) -> Result<RepoInfo, HubError> {
        let url = self.url(&format!("api/{}/{}/revision/{}", repo.ty.api_segment(), repo.id, enc_segment(revision)));
        let (info, _): (RepoInfo, _) = self.get_json(&url, &repo.subject(Some(revision), None)).await?;
        Ok(info)
    }

    /// Resolves a revision (branch, tag, `refs/pr/N`, short or full commit) to a full commit id,
    /// with the repo's access class.
    pub async fn resolve(&self, repo: &RepoRef, revision: &str) -> Result<(String, Access), HubError> {
        let info = self.repo_info(repo, revision).await?;
        let access = info.access();
        match info.sha {
            Some(sha) if swarm_protocol::repo::is_commit(&sha) => Ok((sha, access)),
            other => Err(HubError::Malformed {
                url: redact(&self.url(&format!("api/{}/{}", repo.ty.api_segment(), repo.id))),
                what: format!("repo info has no valid 'sha' (got {other:?})"),
            }),
        }
    }

    /// The complete recursive tree at a commit, following `Link: rel="next"` pages.
    pub async fn list_tree(&self, repo: &RepoRef, commit: &str) -> Result<Vec<TreeEntry>, HubError> {
        let mut url = self.url(&format!(
            "api/{}/{}/tree/{}?recursive=true&expand=false",
            repo.ty.api_segment(),
            repo.id,
            enc_segment(commit)
        ));
        let subject = repo.subject(Some(commit), None);
        let mut out = Vec::new();
        for _page in 0..100_000 {
            let (entries, headers): (Vec<TreeEntry>, _) = self.get_json(&url, &subject).await?;
            out.extend(entries);
            match next_link(&headers).and_then(|l| url.join(&l).ok()) {
                Some(next) if self.same_origin(&next) => url = next,
                Some(next) => {
                    return Err(HubError::Malformed {
                        url: redact(&url),
                        what: format!("pagination leaves the Hub ({})", redact(&next)),
                    });
                }
                None => return Ok(out),
            }
        }
        Err(HubError::Malformed { url: redact(&url), what: "tree listing never ends".into() })
    }

    /// The files of a repo at a commit.
    pub async fn list_files(&self, repo: &RepoRef, commit: &str) -> Result<Vec<RemoteFile>, HubError> {
        let tree = self.list_tree(repo, commit).await?;
        files_from_tree(&tree).map_err(|what| HubError::Malformed { url: self.endpoint(), what })
    }

    /// Finds where a file's bytes live: `HEAD` on the resolve URL, following same-origin
    /// (relative) redirects and stopping at a redirect to another origin (the CDN). Checks the
    /// Hub's `X-Linked-Etag`/`ETag` and size against what the listing said.
    pub async fn locate(&self, repo: &RepoRef, commit: &str, file: &RemoteFile) -> Result<Location, HubError> {
        let start = self.resolve_url(repo, commit, &file.path);
        let subject = repo.subject(Some(commit), Some(&file.path));
        self.with_retries(&start, || async {
            let mut url = start.clone();
            for _ in 0..MAX_REDIRECTS {
                let kind = if self.same_origin(&url) { "resolve" } else { "data" };
                let r = self.send(self.request(Method::HEAD, &url, true), kind).await?;
                let h = r.headers();
                if r.status().is_redirection() {
                    let loc =
                        header_str(h, header::LOCATION).ok_or_else(|| malformed(&url, "redirect without Location"))?;
                    let next = url.join(&loc).map_err(|_| malformed(&url, "bad Location"))?;
                    if self.same_origin(&next) && !h.contains_key(X_LINKED_ETAG) {
                        url = next; // a rename: same origin, keep the token
                        continue;
                    }
                    check_linked(h, file, &url)?;
                    let auth = self.same_origin(&next);
                    return Ok(Location { url: next, auth });
                }
                if !r.status().is_success() {
                    return Err(self.status_error(&r, &subject));
                }
                check_linked(h, file, &url)?;
                return Ok(Location { url, auth: true });
            }
            Err(malformed(&start, "too many redirects"))
        })
        .await
    }

    /// One attempt at `GET` of `range` (or the whole file), following redirects (dropping the
    /// token on other origins). No retry here: the caller resumes from where bytes stopped.
    pub async fn open(&self, from: &Location, range: Option<Range<u64>>, subject: &Subject) -> Result<Opened, Attempt> {
        let mut loc = from.clone();
        for _ in 0..MAX_REDIRECTS {
            let mut rb = self.request(Method::GET, &loc.url, loc.auth);
            if let Some(r) = &range {
                rb = rb.header(header::RANGE, format!("bytes={}-{}", r.start, r.end.saturating_sub(1)));
            }
            let kind = if self.same_origin(&loc.url) { "resolve" } else { "data" };
            let resp = self.send(rb, kind).await?;
            let status = resp.status();
            if status.is_redirection() {
                let target = header_str(resp.headers(), header::LOCATION)
                    .and_then(|l| loc.url.join(&l).ok())
                    .ok_or_else(|| malformed(&loc.url, "redirect without a valid Location"))?;
                // The token stays only while we stay on the Hub's origin.
                loc = Location { auth: loc.auth && self.same_origin(&target), url: target };
                continue;
            }
            if status == StatusCode::PARTIAL_CONTENT || status == StatusCode::OK {
                return Ok(Opened { partial: status == StatusCode::PARTIAL_CONTENT, response: resp, location: loc });
            }
            if (status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED) && !self.same_origin(&loc.url) {
                // An expired signed CDN URL: the caller locates the file again.
                return Err(Attempt::Retry {
                    last: format!("CDN answered {status}"),
                    hint: None,
                    cause: Cause::Answer,
                });
            }
            return Err(self.status_error(&resp, subject));
        }
        Err(malformed(&from.url, "too many redirects"))
    }
}

/// Files of a tree listing, with paths and ETags checked.
pub fn files_from_tree(tree: &[TreeEntry]) -> Result<Vec<RemoteFile>, String> {
    let mut out = Vec::new();
    for e in tree {
        if let Some(f) = RemoteFile::from_entry(e)? {
            out.push(f);
        }
    }
    Ok(out)
}

fn check_linked(h: &HeaderMap, file: &RemoteFile, url: &Url) -> Result<(), Attempt> {
    let etag = header_str(h, X_LINKED_ETAG).or_else(|| header_str(h, header::ETAG));
    if let Some(raw) = etag
        && let Ok(got) = Etag::parse(&raw)
        && got != file.etag
    {
        return Err(malformed(
            url,
            &format!("file '{}' changed: the Hub now says {got}, the listing said {}", file.path, file.etag),
        ));
    }
    if let Some(size) = header_str(h, X_LINKED_SIZE).and_then(|s| s.parse::<u64>().ok())
        && size != file.size
    {
        return Err(malformed(
            url,
            &format!("file '{}' is {size} bytes at the Hub, the listing said {}", file.path, file.size),
        ));
    }
    Ok(())
}

const X_LINKED_ETAG: header::HeaderName = header::HeaderName::from_static("x-linked-etag");
const X_LINKED_SIZE: header::HeaderName = header::HeaderName::from_static("x-linked-size");

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn malformed(url: &Url, what: &str) -> Attempt {
    Attempt::Fatal(HubError::Malformed { url: redact(url), what: what.to_owned() })
}

/// Every transport failure (connect, reset, timeout, truncated body) is worth another attempt.
pub fn transport(e: reqwest::Error) -> Attempt {
    let cause = if e.is_connect() { Cause::Connect } else { Cause::Network };
    Attempt::Retry { last: describe(&e), hint: None, cause }
}

/// A transport error with its causes, for messages.
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading"
    } else {
        "request failed"
    };
    let mut last = format!("{what}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        last = format!("{last}: {s}");
        src = s.source();
    }
    last
}

/// `Link: <url>; rel="next"` (RFC 8288), as the Hub paginates listings.
fn next_link(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::LINK)?.to_str().ok()?;
    v.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next")
            .then(|| target.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
const PATH: &percent_encoding::AsciiSet = &SEGMENT.remove(b'/');

/// Python's `quote(s, safe="")`: the revision is one path segment, `/` included.
pub fn enc_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Python's `quote(s)`: a repo path keeps its slashes.
pub fn enc_path(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff in virtual time: a Hub that keeps answering "try later" is asked `max_attempts`
    /// times, `Retry-After` is obeyed (capped), and the error says how often it was tried. No
    /// real second passes.
    #[tokio::test(start_paused = true)]
    async fn retries_obey_the_servers_hint_and_give_up_after_max_attempts() {
        let retry = RetryPolicy { max_attempts: 4, ..RetryPolicy::default() };
        let client = HubClient::new(HubConfig { retry, ..HubConfig::default() }).expect("client");
        let url = Url::parse("https://huggingface.co/api/models/org/m").expect("url");
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let r: Result<(), HubError> = client
            .with_retries(&url, || async {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let hint = if n == 0 { Duration::from_secs(30) } else { Duration::from_secs(3600) };
                Err(Attempt::Retry { last: "503 Service Unavailable".into(), hint: Some(hint), cause: Cause::Answer })
            })
            .await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert!(matches!(r, Err(HubError::Unreachable { attempts: 4, answered: true, .. })), "{r:?}");
        // 30 s as asked, then twice the cap (an hour is too long to park a download).
        assert_eq!(started.elapsed(), Duration::from_secs(30) + 2 * retry::MAX_HINT);
    }

    /// A connection for file bytes carries the next range only after a range that ended
    /// cleanly, and only while younger than [`MAX_DATA_CONNECTION_AGE`]; otherwise the next
    /// range opens a new one.
    #[tokio::test]
    async fn data_connections_are_reused_while_young_and_after_a_clean_range_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1024];
                    while let Ok(n) = sock.read(&mut byte).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&byte[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/4\r\nContent-Length: 4\r\n\r\nabcd";
                            if sock.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let client =
            HubClient::new(HubConfig { endpoint: format!("http://{addr}"), ..HubConfig::default() }).expect("client");
        let loc = Location { url: Url::parse(&format!("http://{addr}/file")).expect("url"), auth: false };
        let repo = RepoRef { id: RepoId::parse("org/m").expect("id"), ty: RepoType::Model };
        let range = |reuse: bool| {
            let (client, loc, subject) = (client.clone(), loc.clone(), repo.subject(None, Some("file")));
            async move {
                let mut conn = client.data_connection();
                let opened = conn.hub().open(&loc, Some(0..4), &subject).await.map_err(|_| "open").expect("open");
                assert_eq!(&opened.response.bytes().await.expect("body")[..], b"abcd");
                if reuse {
                    conn.reuse();
                }
            }
        };
        let accepted = || accepted.load(std::sync::atomic::Ordering::Relaxed);
        range(true).await;
        range(true).await;
        assert_eq!(accepted(), 1, "a young connection after a clean range carries the next one");
        // That connection carries this range, which does not end cleanly: the next one opens
        // a new connection, which then carries the one after.
        range(false).await;
        range(true).await;
        range(true).await;
        assert_eq!(accepted(), 2, "a connection whose range did not end cleanly is not reused");
        tokio::time::sleep(MAX_DATA_CONNECTION_AGE).await;
        range(true).await;
        assert_eq!(accepted(), 3, "an old connection is not reused");
    }

    /// With the cache able to answer, a Hub that is not there is given up on at once (no
    /// connection) or after one retry (silence); one that answers "try later" still gets every
    /// attempt, and its answer is not taken for an outage.
    #[tokio::test(start_paused = true)]
    async fn fail_fast_gives_up_on_the_network_not_on_answers() {
        let client = HubClient::new(HubConfig::default()).expect("client").fail_fast();
        let url = Url::parse("https://huggingface.co/api/models/org/m").expect("url");
        let tries = |cause: Cause| {
            let calls = std::sync::atomic::AtomicU32::new(0);
            let client = client.clone();
            let url = url.clone();
            async move {
                let r: Result<(), HubError> = client
                    .with_retries(&url, || async {
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Err(Attempt::Retry { last: "x".into(), hint: None, cause })
                    })
                    .await;
                let answered = matches!(r, Err(HubError::Unreachable { answered: true, .. }));
                (calls.load(std::sync::atomic::Ordering::Relaxed), answered)
            }
        };
        assert_eq!(tries(Cause::Connect).await, (1, false));
        assert_eq!(tries(Cause::Network).await, (2, false));
        assert_eq!(tries(Cause::Answer).await, (RetryPolicy::default().max_attempts, true));
    }

    #[test]
    fn token_never_shows_in_debug() {
        let t = Token::new("hf_secret\n").expect("token");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let cfg = HubConfig { token: Some(t), ..HubConfig::default() };
        assert!(!format!("{cfg:?}").contains("hf_secret"));
        assert!(Token::new(" \n").is_none());
    }

    #[test]
    fn urls_are_encoded_like_huggingface_hub() {
        let c = HubClient::new(HubConfig { endpoint: "http://h:1/".into(), ..HubConfig::default() }).expect("client");
        let repo = RepoRef { id: RepoId::parse("org/m").expect("id"), ty: RepoType::Dataset };
        assert_eq!(
            c.resolve_url(&repo, "refs/pr/1", "dir/a b.bin").as_str(),
            "http://h:1/datasets/org/m/resolve/refs%2Fpr%2F1/dir/a%20b.bin"
        );
    }

    #[test]
    fn link_header_next_page() {
        let mut h = HeaderMap::new();
        h.insert(header::LINK, HeaderValue::from_static("<https://h/api/x?cursor=abc>; rel=\"next\""));
        assert_eq!(next_link(&h).as_deref(), Some("https://h/api/x?cursor=abc"));
        h.insert(header::LINK, HeaderValue::from_static("<https://h/p>; rel=\"prev\""));
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn hostile_tree_entries_are_refused() {
        let e = |path: &str, oid: &str| TreeEntry {
            kind: "file".into(),
            oid: oid.into(),
            size: 1,
            path: path.into(),
            lfs: None,
            xet_hash: None,
        };
        assert!(RemoteFile::from_entry(&e("../../.bashrc", &"a".repeat(40))).is_err());
        assert!(RemoteFile::from_entry(&e("ok.txt", "../x")).is_err());
        assert!(RemoteFile::from_entry(&e("ok.txt", &"a".repeat(40))).is_ok());
    }
}
