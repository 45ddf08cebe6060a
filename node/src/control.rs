//! The local control API of a `join` node, and its client.
//!
//! A running node listens on a Unix socket in its state dir,
//! `<cache>/.locks/swarm-dl/control.sock`, and announces itself in `node.json` beside it (pid,
//! peer id, listen addresses) once it is ready; it removes both when it stops. `swarm-dl get`
//! and `swarm-dl status` find the node of their cache dir there. No TCP port is opened, so
//! nothing on the network, and no web page through DNS rebinding, can reach it; pods reach it
//! through the mount of the host's cache.
//!
//! Each connection carries one request ([`swarm_protocol::control`], decoded with bounds) and
//! gets newline-delimited JSON [`Line`]s back. What a caller may ask is decided by its uid, read
//! with `SO_PEERCRED` ([`ControlPolicy`]):
//! - root and the node's own uid: everything;
//! - members of `--control-group`: downloads into the node's cache from the node's own Hub
//!   endpoint (naming another endpoint could fill the shared cache with anything);
//! - everyone else: `status` only.
//!
//! The node never writes where a caller names: a download always lands in the node's cache,
//! and a caller that wants a `--local-dir` copies the files there itself, with its own rights.
//! A caller's token is used for its download only, and is never logged or written to disk.
//!
//! The client side trusts a node only after [`trust`] checks: the state dir, `node.json` and the
//! socket belong to root, to the caller or to the cache's owner, and the process answering on
//! the socket (`SO_PEERCRED` again) is that uid and the pid `node.json` names.

use crate::cache::HubCache;
use crate::cache::trust::{self, TrustError};
use crate::fetch::progress::{Progress, Snapshot};
use crate::fetch::{self, GetRequest};
use crate::hub::{HubClient, HubConfig, RepoRef, RetryPolicy, Token};
use crate::swarm::preheat::{self, PreheatView};
use crate::swarm::{NodeHandle, NodeStatus};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::control::{
    ControlRequest, GetParams, MAX_REQUEST_BYTES, PreheatParams, decode_request, encode_request,
};
use swarm_protocol::repo::RepoType;
use swarm_protocol::wire::{PreheatJob, PreheatState};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One line of a node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// The node's status.
    Status(Box<NodeStatus>),
    /// Download counters now.
    Progress(Snapshot),
    /// A warning for the user (the `get` shows it on stderr).
    Note(String),
    /// The download finished.
    Done(fetch::GetOutcome),
    /// Refused: one sentence.
    Error(String),
    /// Where a preheat stands on every node asked.
    Preheat(Box<PreheatView>),
    /// The download failed: what kind of failure ([`fetch::FetchError::kind`]), and one
    /// sentence.
    Failed {
        /// E.g. `repo_not_found`, `disk_full`.
        kind: String,
        /// The sentence.
        message: String,
    },
}

/// What `node.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    /// The node's process.
    pub pid: u32,
    /// Its control socket.
    pub socket: PathBuf,
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

/// The control socket of the node serving `cache_root`.
pub fn socket_path(cache_root: &Path) -> PathBuf {
    state_dir(cache_root).join("control.sock")
}

/// Who may ask a node for downloads besides root and the node's own uid.
#[derive(Debug, Clone)]
pub struct ControlPolicy {
    /// Members of this group may run downloads (from [`ControlPolicy::endpoint`] only).
    pub group: Option<u32>,
    /// The Hub that group members' downloads use.
    pub endpoint: String,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Root or the node's uid.
    Owner,
    /// A member of the control group.
    Member,
    /// Anyone else: status only.
    Reader,
}

fn role(uid: u32, gid: u32, pid: Option<i32>, policy: &ControlPolicy) -> Role {
    if uid == 0 || uid == trust::euid() {
        return Role::Owner;
    }
    match policy.group {
        Some(g) if gid == g || pid.is_some_and(|p| supplementary_groups(p).contains(&g)) => Role::Member,
        _ => Role::Reader,
    }
}

/// The supplementary groups of a live process (Linux: `/proc/<pid>/status`), as the kernel
/// checks them for file access. Empty where unknown.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// Why the control API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlStartError {
    /// The state dir is not safe to use.
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    /// The socket cannot be bound.
    #[error("cannot listen on control socket '{}': {source}", .path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket path is longer than Unix sockets allow.
    #[error("control socket path '{}' is longer than {max} bytes: use a shorter --cache-dir", .path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
}

/// Longest Unix socket path (`sun_path` less its NUL) on Linux.
const MAX_SOCKET_PATH: usize = 107;
/// Connections served at once; more wait (a local user cannot exhaust the node's files).
const MAX_CONNECTIONS: usize = 64;

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    cache: HubCache,
    policy: Arc<ControlPolicy>,
}

/// A running control API.
#[derive(Debug)]
pub struct ControlServer {
    socket: PathBuf,
    file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Serves the control API of `node` on the cache's socket and announces it in `node.json`.
    /// The caller must hold the node identity lock of the cache (only one node per cache).
    pub async fn start(node: NodeHandle, cache: HubCache, policy: ControlPolicy) -> Result<Self, ControlStartError> {
        let state = trust::secure_state_dir(cache.root())?;
        let socket = state.join("control.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ControlStartError::PathTooLong { path: socket, max: MAX_SOCKET_PATH });
        }
        let bind = |source| ControlStartError::Bind { path: socket.clone(), source };
        // A socket left by a node that died: we hold the identity lock, so no node uses it.
        match std::fs::symlink_metadata(&socket) {
            Ok(_) => std::fs::remove_file(&socket).map_err(bind)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind(e)),
        }
        let listener = UnixListener::bind(&socket).map_err(bind)?;
        // Anyone may connect; what each caller may do is decided by its uid.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(bind)?;
        let file = state.join("node.json");
        let nf = NodeFile {
            pid: std::process::id(),
            socket: socket.clone(),
            peer_id: node.peer_id().to_string(),
            listen: node.listen_addrs().iter().map(|a| a.to_string()).collect(),
        };
        crate::swarm::write_private(&file, &serde_json::to_vec_pretty(&nf).unwrap_or_default())
            .map_err(|source| TrustError::Io { path: file.clone(), source })?;
        // node.json holds no secret; callers of other uids read it to find the node.
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644));
        let st = AppState { node, cache, policy: Arc::new(policy) };
        if let Some(queue) = st.node.preheat_board().take_queue() {
            tokio::spawn(run_preheats(st.clone(), queue));
        }
        let task = tokio::spawn(accept(listener, st));
        Ok(Self { socket, file, task })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops serving and removes the announcement and the socket.
    pub fn stop(self) {
        if node_file_pid(&self.file) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.file);
            let _ = std::fs::remove_file(&self.socket);
        }
        self.task.abort();
    }
}

fn node_file_pid(file: &Path) -> Option<u32> {
    let nf: NodeFile = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    Some(nf.pid)
}

async fn accept(listener: UnixListener, st: AppState) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let st = st.clone();
        tokio::spawn(async move {
            serve(stream, st).await;
            drop(slot);
        });
    }
}

async fn serve(stream: UnixStream, st: AppState) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let who = role(cred.uid(), cred.gid(), cred.pid(), &st.policy);
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let req = match tokio::time::timeout(Duration::from_secs(10), limited.read_until(b'\n', &mut line)).await {
        Ok(Ok(_)) => decode_request(&line),
        _ => return,
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(uid = cred.uid(), error = %e, "control socket: refused a request");
            let _ = send(&mut write, &Line::Error(e.to_string())).await;
            return;
        }
    };
    match req {
        ControlRequest::Status => {
            let _ = send(&mut write, &Line::Status(Box::new(st.node.status().await))).await;
        }
        ControlRequest::Preheat(p) => {
            if who == Role::Reader {
                let why = format!(
                    "uid {} may only read this node's status: ask its owner to start it with --control-group",
                    cred.uid()
                );
                let _ = send(&mut write, &Line::Error(why)).await;
                return;
            }
            tracing::info!(uid = cred.uid(), repo = %p.repo_id, "preheat asked through the control socket");
            ask_preheat(&st, p, &mut write).await;
        }
        ControlRequest::Get(mut g) => {
            if st.node.hub_endpoint().is_some_and(|a| crate::endpoint::points_at(&g.endpoint, a)) {
                // The caller's HF_ENDPOINT is this node's Hub endpoint: the download goes to the
                // Hub that endpoint relays to, not back through it.
                g.endpoint.clone_from(&st.policy.endpoint);
            }
            if let Err(why) = allowed(who, cred.uid(), &g, &st.policy) {
                tracing::info!(uid = cred.uid(), repo = %g.repo_id, "control socket: refused a download");
                let _ = send(&mut write, &Line::Error(why)).await;
                return;
            }
            tracing::info!(uid = cred.uid(), repo = %g.repo_id, "download asked through the control socket");
            remote_get(&st, g, &mut write).await;
        }
    }
}

fn allowed(who: Role, uid: u32, g: &GetParams, policy: &ControlPolicy) -> Result<(), String> {
    match who {
        Role::Owner => Ok(()),
        Role::Member if g.endpoint.trim_end_matches('/') == policy.endpoint.trim_end_matches('/') => Ok(()),
        Role::Member => Err(format!(
            "this node downloads for its control group from {} only, not from {} (run `get --no-swarm` to use another Hub)",
            policy.endpoint, g.endpoint
        )),
        Role::Reader => Err(format!(
            "uid {uid} may only read this node's status: ask its owner to start it with --control-group, or run `get --no-swarm`"
        )),
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, line: &Line) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

async fn remote_get(st: &AppState, g: GetParams, write: &mut tokio::net::unix::OwnedWriteHalf) {
    let progress = Arc::new(Progress::reporting_to(st.node.metrics()));
    // Counted while it runs, whichever way it ends.
    struct Running(Arc<crate::metrics::Metrics>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.download_running(-1);
        }
    }
    st.node.metrics().download_running(1);
    let running = Running(st.node.metrics());
    let run = run_get(st, g, progress.clone());
    let mut run = std::pin::pin!(run);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let last = loop {
        tokio::select! {
            r = &mut run => break match r {
                Ok(o) => Line::Done(o),
                Err((kind, message)) => Line::Failed { kind: kind.to_owned(), message },
            },
            _ = tick.tick() => {
                for note in progress.take_notes() {
                    let _ = send(write, &Line::Note(note)).await;
                }
                if send(write, &Line::Progress(progress.snapshot())).await.is_err() {
                    tracing::info!("the get that asked for this download went away; stopping it");
                    return;
                }
            }
        }
    };
    // Ended before the client hears so: a scrape after `get` returns must not count it.
    drop(running);
    for note in progress.take_notes() {
        let _ = send(write, &Line::Note(note)).await;
    }
    let _ = send(write, &Line::Progress(progress.snapshot())).await;
    let _ = send(write, &last).await;
}

async fn run_get(
    s: &AppState,
    g: GetParams,
    progress: Arc<Progress>,
) -> Result<fetch::GetOutcome, (&'static str, String)> {
    let hub = HubClient::new(HubConfig {
        endpoint: g.endpoint,
        token: g.token.as_deref().and_then(Token::new),
        read_timeout: Duration::from_millis(g.read_timeout_ms),
        retry: RetryPolicy { max_attempts: g.retries, ..RetryPolicy::default() },
        ..HubConfig::default()
    })
    .map_err(|e| (e.kind(), e.to_string()))?
    .with_metrics(s.node.metrics());
    let req = GetRequest {
        repo: RepoRef { id: g.repo_id, ty: g.repo_type },
        revision: g.revision,
        include: g.include,
        named: g.named,
        force: g.force,
        exclude: g.exclude,
        cache: s.cache.clone(),
        local_dir: None,
        max_workers: g.max_workers as usize,
        max_download_rate: g.max_download_rate,
        node: Some(s.node.clone()),
        // As an embedded node would: the node itself decides whether it can wait for peers.
        peer_wait: Duration::from_millis(g.peer_wait_ms),

        lock_held: None,
    };
    fetch::get(&req, Some(hub), progress.clone()).await.map_err(|e| {
        let (done, total) = (
            progress.files_done.load(std::sync::atomic::Ordering::Relaxed),
            progress.files_total.load(std::sync::atomic::Ordering::Relaxed),
        );
        let kept =
            if done > 0 { format!(" ({done} of {total} files are complete and were kept)") } else { String::new() };
        (e.kind(), format!("{e}{kept}"))
    })
}

/// Runs the preheats queued for this node, each as a download with the node's own Hub and no
/// token, at once (they are meant to run while the swarm is otherwise idle).
async fn run_preheats(st: AppState, mut queue: tokio::sync::mpsc::Receiver<preheat::Incoming>) {
    while let Some((job, _)) = queue.recv().await {
        let st = st.clone();
        tokio::spawn(async move {
            let id = job.id;
            let progress = Arc::new(Progress::reporting_to(st.node.metrics()));
            st.node.preheat_board().running(id, progress.clone());
            st.node.metrics().download_running(1);
            let state = match preheat_get(&st, job, progress).await {
                Ok(()) => PreheatState::Done,
                Err(why) => {
                    tracing::warn!(error = %why, "a preheat failed");
                    PreheatState::Failed(why)
                }
            };
            st.node.metrics().download_running(-1);
            st.node.preheat_board().finished(id, state);
        });
    }
}

async fn preheat_get(st: &AppState, job: PreheatJob, progress: Arc<Progress>) -> Result<(), String> {
    let repo_type: RepoType = job.repo_type.parse().map_err(|e: swarm_protocol::repo::RepoIdError| e.to_string())?;
    let repo_id = swarm_protocol::repo::RepoId::parse(&job.repo_id).map_err(|e| e.to_string())?;
    let hub = HubClient::new(HubConfig { endpoint: st.policy.endpoint.clone(), ..HubConfig::default() })
        .map_err(|e| e.to_string())?
        .with_metrics(st.node.metrics());
    let req = GetRequest {
        repo: RepoRef { id: repo_id, ty: repo_type },
        revision: job.revision,
        include: job.include,
        named: false,
        force: false,
        exclude: job.exclude,
        cache: st.cache.clone(),
        local_dir: None,
        max_workers: fetch::DEFAULT_MAX_WORKERS as usize,
        max_download_rate: None,
        node: Some(st.node.clone()),
        peer_wait: fetch::DEFAULT_PEER_WAIT,
        lock_held: None,
    };
    fetch::get(&req, Some(hub), progress).await.map(|_| ()).map_err(|e| e.to_string())
}

/// `swarm-dl preheat`: starts the preheat here and on the nodes asked, then reports where it
/// stands every half second until every node is done (the preheat goes on if the caller leaves).
async fn ask_preheat(st: &AppState, p: PreheatParams, write: &mut tokio::net::unix::OwnedWriteHalf) {
    let mut targets = Vec::new();
    for n in &p.nodes {
        match n.parse::<libp2p::PeerId>() {
            Ok(peer) => targets.push(peer),
            Err(_) => {
                let _ =
                    send(write, &Line::Error(format!("'{n}' is not a peer id (see `swarm-dl status` on that node)")))
                        .await;
                return;
            }
        }
    }
    let job = PreheatJob {
        id: rand::random(),
        repo_type: p.repo_type.to_string(),
        repo_id: p.repo_id.to_string(),
        revision: p.revision,
        include: p.include,
        exclude: p.exclude,
    };
    let id = job.id;
    if let Err(why) = preheat::ask_all(&st.node, job, targets).await {
        let _ = send(write, &Line::Error(why)).await;
        return;
    }
    loop {
        let Some(view) = st.node.preheat_board().view(id) else { return };
        let last = view.is_final();
        if send(write, &Line::Preheat(Box::new(view))).await.is_err() || last {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A client of a running node's control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
    /// What the node announced.
    pub file: NodeFile,
}

/// Why talking to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node announces itself for this cache dir.
    #[error("no swarm-dl node is running for cache '{}' (start one with `swarm-dl join`)", .0.display())]
    NoNode(PathBuf),
    /// The node's files are not trusted (or cannot be read).
    #[error("not using the swarm-dl node of this cache: {0}")]
    Untrusted(#[from] TrustError),
    /// `node.json` names a process that is gone.
    #[error("the swarm-dl node of cache '{}' (pid {pid}) is no longer running (start one with `swarm-dl join`)", .cache.display())]
    Stale {
        /// The cache.
        cache: PathBuf,
        /// The pid in `node.json`.
        pid: u32,
    },
    /// The socket is answered by another process than the one `node.json` names.
    #[error(
        "not using the swarm-dl node of this cache: its socket is served by uid {uid} pid {pid:?}, not by the node that node.json names"
    )]
    Impostor {
        /// Who answered.
        uid: u32,
        /// Its pid.
        pid: Option<i32>,
    },
    /// The node stopped answering, or answered nonsense.
    #[error("the swarm-dl node on '{}' stopped answering: {reason}", .socket.display())]
    Lost {
        /// Its socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The node refused.
    #[error("{0}")]
    Failed(String),
    /// The download failed in the node.
    #[error("{message}")]
    GetFailed {
        /// [`fetch::FetchError::kind`].
        kind: String,
        /// One sentence.
        message: String,
    },
}

impl ControlError {
    /// What kind of failure, for `--json` output.
    pub fn kind(&self) -> &str {
        match self {
            Self::GetFailed { kind, .. } => kind,
            Self::Failed(_) | Self::Impostor { .. } | Self::Untrusted(_) => "refused",
            Self::NoNode(_) | Self::Stale { .. } | Self::Lost { .. } => "node",
        }
    }
}

impl ControlClient {
    /// Finds the node serving `cache_root`, if one runs, is trusted and answers.
    pub async fn find(cache_root: &Path) -> Option<Self> {
        match Self::locate(cache_root).await {
            Ok(c) => Some(c),
            Err(why @ (ControlError::NoNode(_) | ControlError::Stale { .. })) => {
                tracing::debug!("{why}");
                None
            }
            Err(why) => {
                tracing::warn!("{why}");
                None
            }
        }
    }

    /// Like [`Self::find`], saying why not.
    pub async fn locate(cache_root: &Path) -> Result<Self, ControlError> {
        let trusted = trust::trusted_uids(cache_root);
        let state = state_dir(cache_root);
        let path = node_file(cache_root);
        match trust::check_dir(&state, &trusted) {
            Err(e) if e.is_missing() => return Err(ControlError::NoNode(cache_root.to_path_buf())),
            other => other?,
        }
        match trust::check_owned(&path, &trusted, "regular file", trust::is_file) {
            Err(e) if e.is_missing() => return Err(ControlError::NoNode(cache_root.to_path_buf())),
            other => other?,
        };
        let bytes = std::fs::read(&path).map_err(|source| TrustError::Io { path: path.clone(), source })?;
        let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| TrustError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let pid = i32::try_from(file.pid).unwrap_or(i32::MAX);
        if let Err(nix::errno::Errno::ESRCH) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            return Err(ControlError::Stale { cache: cache_root.to_path_buf(), pid: file.pid });
        }
        // The socket is always the one beside node.json, whatever the file says.
        let socket = socket_path(cache_root);
        trust::check_owned(&socket, &trusted, "socket", trust::is_socket)?;
        let c = Self { socket, file };
        let stream = c.connect().await?;
        let cred = stream.peer_cred().map_err(|e| c.lost(e))?;
        if !trusted.contains(&cred.uid()) || cred.pid() != Some(pid) {
            return Err(ControlError::Impostor { uid: cred.uid(), pid: cred.pid() });
        }
        drop(stream);
        c.status().await?;
        Ok(c)
    }

    fn lost(&self, e: impl std::fmt::Display) -> ControlError {
        ControlError::Lost { socket: self.socket.clone(), reason: e.to_string() }
    }

    async fn connect(&self) -> Result<UnixStream, ControlError> {
        tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&self.socket))
            .await
            .map_err(|_| self.lost("connecting timed out"))?
            .map_err(|e| self.lost(e))
    }

    /// Sends `req` on a new connection; the answer's lines follow.
    async fn ask(&self, req: &ControlRequest) -> Result<tokio::io::Lines<BufReader<UnixStream>>, ControlError> {
        let mut stream = self.connect().await?;
        stream.write_all(&encode_request(req)).await.map_err(|e| self.lost(e))?;
        Ok(BufReader::new(stream).lines())
    }

    async fn next(&self, lines: &mut tokio::io::Lines<BufReader<UnixStream>>) -> Result<Line, ControlError> {
        let Some(line) = lines.next_line().await.map_err(|e| self.lost(e))? else {
            return Err(self.lost("the answer ended early"));
        };
        serde_json::from_str(&line).map_err(|e| self.lost(e))
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, ControlError> {
        let mut lines = self.ask(&ControlRequest::Status).await?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.next(&mut lines))
            .await
            .map_err(|_| self.lost("no status within 10 s"))??;
        match line {
            Line::Status(s) => Ok(*s),
            Line::Error(e) => Err(ControlError::Failed(e)),
            other => Err(self.lost(format!("unexpected answer {other:?}"))),
        }
    }

    /// Asks the node to preheat a repo across the swarm; `on_view` sees each report. Returns the
    /// last one, once every node's part is final.
    pub async fn preheat(
        &self,
        p: PreheatParams,
        mut on_view: impl FnMut(&PreheatView),
    ) -> Result<PreheatView, ControlError> {
        let mut lines = self.ask(&ControlRequest::Preheat(p)).await?;
        loop {
            match self.next(&mut lines).await? {
                Line::Preheat(v) => {
                    on_view(&v);
                    if v.is_final() {
                        return Ok(*v);
                    }
                }
                Line::Error(e) => return Err(ControlError::Failed(e)),
                other => return Err(self.lost(format!("unexpected answer {other:?}"))),
            }
        }
    }

    /// Runs a download in the node, mirroring its progress into `progress`.
    pub async fn get(&self, g: GetParams, progress: &Progress) -> Result<fetch::GetOutcome, ControlError> {
        let mut lines = self.ask(&ControlRequest::Get(g)).await?;
        loop {
            match self.next(&mut lines).await? {
                Line::Progress(s) => progress.apply(&s),
                Line::Note(n) => tracing::warn!("{}", swarm_protocol::repo::Printable(&n)),
                Line::Done(o) => return Ok(o),
                Line::Error(e) => return Err(ControlError::Failed(e)),
                Line::Failed { kind, message } => return Err(ControlError::GetFailed { kind, message }),
                Line::Status(_) | Line::Preheat(_) => return Err(self.lost("unexpected line")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_uid_and_group() {
        let me = trust::euid();
        let stranger = me.wrapping_add(4242);
        let open = ControlPolicy { group: None, endpoint: "https://huggingface.co".into() };
        let grouped = ControlPolicy { group: Some(4343), endpoint: "https://huggingface.co".into() };
        assert_eq!(role(0, 0, None, &open), Role::Owner);
        assert_eq!(role(me, 1, None, &open), Role::Owner);
        assert_eq!(role(stranger, 4343, None, &open), Role::Reader);
        assert_eq!(role(stranger, 4343, None, &grouped), Role::Member);
        assert_eq!(role(stranger, 1, None, &grouped), Role::Reader);
    }

    #[test]
    fn members_download_only_from_the_nodes_hub() {
        let policy = ControlPolicy { group: Some(1), endpoint: "https://huggingface.co".into() };
        let mut g: GetParams = serde_json::from_value(serde_json::json!({
            "repo_type": "model", "repo_id": "org/m", "revision": "main", "include": [], "exclude": [],
            "endpoint": "https://huggingface.co/", "token": null, "retries": 1, "read_timeout_ms": 1,
            "max_workers": 1, "max_download_rate": null, "peer_wait_ms": 0
        }))
        .expect("params");
        assert!(allowed(Role::Member, 7, &g, &policy).is_ok());
        assert!(allowed(Role::Reader, 7, &g, &policy).is_err_and(|e| e.contains("only read")));
        g.endpoint = "http://evil.example".into();
        assert!(allowed(Role::Member, 7, &g, &policy).is_err_and(|e| e.contains("from https://huggingface.co only")));
        assert!(allowed(Role::Owner, 7, &g, &policy).is_ok());
    }
}
