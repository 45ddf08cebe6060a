//! The local control API of a `join` node, and its client.
//!
//! A running node writes `<cache>/.locks/swarm-dl/node.json` (its pid, control address, peer id) once
//! it is ready, and removes it when it stops. `swarm-dl get` and `swarm-dl status` find the node
//! that serves their cache dir through that file and talk to it over HTTP on loopback:
//! - `GET /v1/status` → [`NodeStatus`];
//! - `POST /v1/get` with a [`RemoteGet`] → newline-delimited JSON [`Line`]s: progress snapshots,
//!   then the outcome or one error sentence. If the asker goes away, the download stops (what
//!   was verified stays for the next run).
//!
//! The API binds to loopback only and the file is private to the cache's owner: whoever can
//! write the cache can already do anything a download could.

use crate::cache::HubCache;
use crate::cache::local_dir::LocalDir;
use crate::fetch::progress::{Progress, Snapshot};
use crate::fetch::{self, GetRequest};
use crate::hub::{HubClient, HubConfig, RepoRef, RetryPolicy, Token};
use crate::swarm::{NodeHandle, NodeStatus};
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::repo::{RepoId, RepoType};

/// A download asked of a running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteGet {
    /// model, dataset or space.
    pub repo_type: String,
    /// The repo id.
    pub repo_id: String,
    /// Revision.
    pub revision: String,
    /// Include patterns.
    pub include: Vec<String>,
    /// Exclude patterns.
    pub exclude: Vec<String>,
    /// Plain copies here instead of the cache's snapshot.
    pub local_dir: Option<PathBuf>,
    /// Hub URL.
    pub endpoint: String,
    /// Hub token (never logged).
    pub token: Option<String>,
    /// Attempts per request.
    pub retries: u32,
    /// Read timeout, milliseconds.
    pub read_timeout_ms: u64,
    /// Requests in flight.
    pub max_workers: usize,
    /// Total download rate cap (bytes/s); the node's own cap (shared by its downloads) applies
    /// when unset.
    pub max_download_rate: Option<u64>,
}

/// One line of a `/v1/get` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Counters now.
    Progress(Snapshot),
    /// Finished.
    Done(fetch::GetOutcome),
    /// Failed: one sentence.
    Error(String),
}

/// What `node.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    /// The node's process.
    pub pid: u32,
    /// Control API address.
    pub control: SocketAddr,
    /// Peer id.
    pub peer_id: String,
    /// Listen addresses.
    pub listen: Vec<String>,
}

/// The folder where a node keeps its state for the cache at `cache_root` ([`HubCache::swarm_dir`]).
pub fn state_dir(cache_root: &Path) -> PathBuf {
    HubCache::new(cache_root.to_path_buf()).swarm_dir()
}

/// Where a node serving `cache_root` announces itself.
pub fn node_file(cache_root: &Path) -> PathBuf {
    state_dir(cache_root).join("node.json")
}

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    cache: HubCache,
}

/// A running control API.
#[derive(Debug)]
pub struct ControlServer {
    addr: SocketAddr,
    file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Serves the control API of `node` on `addr` and announces it in the cache dir.
    pub async fn start(addr: SocketAddr, node: NodeHandle, cache: HubCache) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let file = node_file(cache.root());
        let app = axum::Router::new()
            .route("/v1/status", get(status))
            .route("/v1/get", post(remote_get))
            .with_state(AppState { node: node.clone(), cache });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let nf = NodeFile {
            pid: std::process::id(),
            control: addr,
            peer_id: node.peer_id().to_string(),
            listen: node.listen_addrs().iter().map(|a| a.to_string()).collect(),
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::swarm::write_private(&file, &serde_json::to_vec_pretty(&nf).unwrap_or_default())?;
        Ok(Self { addr, file, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and removes the announcement.
    pub fn stop(self) {
        if node_file_pid(&self.file) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.file);
        }
        self.task.abort();
    }
}

fn node_file_pid(file: &Path) -> Option<u32> {
    let nf: NodeFile = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    Some(nf.pid)
}

async fn status(State(s): State<AppState>) -> axum::Json<NodeStatus> {
    axum::Json(s.node.status().await)
}

async fn remote_get(State(s): State<AppState>, axum::Json(g): axum::Json<RemoteGet>) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Line>(4);
    tokio::spawn(async move {
        let progress = Arc::new(Progress::default());
        let run = run_get(&s, g, progress.clone());
        let mut run = std::pin::pin!(run);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let last = loop {
            tokio::select! {
                r = &mut run => break match r {
                    Ok(o) => Line::Done(o),
                    Err(e) => Line::Error(e),
                },
                _ = tick.tick() => {
                    if tx.send(Line::Progress(progress.snapshot())).await.is_err() {
                        tracing::info!("the get that asked for this download went away; stopping it");
                        return;
                    }
                }
            }
        };
        let _ = tx.send(Line::Progress(progress.snapshot())).await;
        let _ = tx.send(last).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_default()
}

async fn run_get(s: &AppState, g: RemoteGet, progress: Arc<Progress>) -> Result<fetch::GetOutcome, String> {
    let ty: RepoType = g.repo_type.parse().map_err(|e: swarm_protocol::repo::RepoIdError| e.to_string())?;
    let repo = RepoRef { id: RepoId::parse(&g.repo_id).map_err(|e| e.to_string())?, ty };
    let hub = HubClient::new(HubConfig {
        endpoint: g.endpoint,
        token: g.token.as_deref().and_then(Token::new),
        read_timeout: Duration::from_millis(g.read_timeout_ms),
        retry: RetryPolicy { max_attempts: g.retries, ..RetryPolicy::default() },
        ..HubConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let req = GetRequest {
        repo,
        revision: g.revision,
        include: g.include,
        exclude: g.exclude,
        cache: s.cache.clone(),
        local_dir: g.local_dir.map(LocalDir::new),
        max_workers: g.max_workers,
        max_download_rate: g.max_download_rate,
        node: Some(s.node.clone()),
        peer_wait: Duration::ZERO,
    };
    fetch::get(&req, Some(hub), progress.clone()).await.map_err(|e| {
        let (done, total) = (
            progress.files_done.load(std::sync::atomic::Ordering::Relaxed),
            progress.files_total.load(std::sync::atomic::Ordering::Relaxed),
        );
        if done > 0 { format!("{e} ({done} of {total} files are complete and were kept)") } else { e.to_string() }
    })
}

/// A client of a running node's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
    /// What the node announced.
    pub file: NodeFile,
}

/// Why talking to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node answers for this cache dir.
    #[error("no swarm-dl node is running for cache '{}' (start one with `swarm-dl join`)", .0.display())]
    NoNode(PathBuf),
    /// The node stopped answering mid-way.
    #[error("the swarm-dl node at {addr} stopped answering: {reason}")]
    Lost {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The download failed in the node.
    #[error("{0}")]
    Failed(String),
}

impl ControlClient {
    /// Finds the node serving `cache_root`, if one runs and answers.
    pub async fn find(cache_root: &Path) -> Option<Self> {
        match Self::locate(cache_root).await {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::debug!(cache = %cache_root.display(), %why, "no running node");
                None
            }
        }
    }

    /// Like [`Self::find`], saying why not.
    pub async fn locate(cache_root: &Path) -> Result<Self, String> {
        let path = node_file(cache_root);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        let c = Self { base: format!("http://{}", file.control), http, file };
        c.status().await.map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn lost(&self, e: impl std::error::Error) -> ControlError {
        let mut reason = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        ControlError::Lost { addr: self.file.control, reason }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, ControlError> {
        let r = self
            .http
            .get(format!("{}/v1/status", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.lost(e))?;
        r.error_for_status().map_err(|e| self.lost(e))?.json().await.map_err(|e| self.lost(e))
    }

    /// Runs a download in the node, mirroring its progress into `progress`.
    pub async fn get(&self, g: &RemoteGet, progress: &Progress) -> Result<fetch::GetOutcome, ControlError> {
        let mut r = self
            .http
            .post(format!("{}/v1/get", self.base))
            .json(g)
            .send()
            .await
            .map_err(|e| self.lost(e))?
            .error_for_status()
            .map_err(|e| self.lost(e))?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let Some(chunk) = r.chunk().await.map_err(|e| self.lost(e))? else {
                return Err(ControlError::Lost {
                    addr: self.file.control,
                    reason: "the answer ended before the download did".into(),
                });
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                match serde_json::from_slice::<Line>(&line).map_err(|e| self.lost(e))? {
                    Line::Progress(s) => progress.apply(&s),
                    Line::Done(o) => return Ok(o),
                    Line::Error(e) => return Err(ControlError::Failed(e)),
                }
            }
        }
    }
}
