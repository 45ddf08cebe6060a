//! From "this repo at this revision" to verified files in the cache: the `get` pipeline.
//!
//! 1. Metadata, from the Hub (the root of trust): the revision's commit, then the complete
//!    listing at that commit (cached in `trees/<commit>.json`, so it is asked once per commit).
//! 2. Selection (`--include`/`--exclude`), and what is already there: files present in the
//!    snapshot, and blobs present under another snapshot, cost no data request.
//! 3. Every other file is cut into chunks ([`swarm_protocol::chunk`]) and its missing chunks are
//!    fetched by [`chunk::HubSource`] as parallel ranged GETs; one semaphore bounds the requests
//!    in flight across all files, one token bucket bounds their rate.
//! 4. A file enters `blobs/` (or the local dir) only when its whole-file hash equals the ETag
//!    ([`crate::store`]). A mismatch fetches the file once more from scratch, then fails.
//!
//! Files already completed are never lost to a later failure: each is published on its own.

pub mod chunk;
mod pipeline;
pub mod progress;
pub mod select;

use crate::cache::local_dir::LocalDir;
use crate::cache::{BlobLock, HubCache, RepoCache};
use crate::hub::{HubClient, HubError, RemoteFile, RepoRef};
use crate::store::{PartialFile, StoreError};
use crate::swarm::NodeHandle;
use crate::throttle::Throttle;
use chunk::HubSource;
use futures_util::StreamExt as _;
use progress::{FileProgress, Progress};
use select::Selection;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use swarm_protocol::chunk::ChunkLayout;
use swarm_protocol::hash::Etag;
use swarm_protocol::repo::is_commit;
use tokio::sync::{Notify, Semaphore};

/// Requests in flight for a download unless told otherwise (`get --max-workers`).
pub const DEFAULT_MAX_WORKERS: u32 = 32;
/// How long a download waits for a first peer unless told otherwise (`get --peer-wait`).
pub const DEFAULT_PEER_WAIT: Duration = Duration::from_millis(500);

/// What to download and where.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The repo.
    pub repo: RepoRef,
    /// Branch, tag, `refs/pr/N`, short or full commit.
    pub revision: String,
    /// Patterns a file must match (any); empty for all.
    pub include: Vec<String>,
    /// `include` holds files named on the command line (`get REPO FILE…`), not patterns: a
    /// plain name that is not in the repo is an error, as with `hf download`.
    pub named: bool,
    /// Fetch the selected files again even when the destination has them (`--force-download`).
    pub force: bool,
    /// Patterns that exclude a file.
    pub exclude: Vec<String>,
    /// The hub cache (refs go here even in local-dir mode, as `huggingface_hub` does).
    pub cache: HubCache,
    /// Plain copies here instead of the cache's snapshots.
    pub local_dir: Option<LocalDir>,
    /// Requests in flight (and files in progress) at most.
    pub max_workers: usize,
    /// Total download rate cap, bytes per second (Hub and peers together).
    pub max_download_rate: Option<u64>,
    /// The swarm node to fetch through (peers first); `None` fetches from the Hub alone.
    pub node: Option<NodeHandle>,
    /// How long to wait for a first peer before starting (discovery at start-up; a node with
    /// no discovery does not wait, one with unreachable `--peer`s waits longer the first time).
    pub peer_wait: Duration,
    /// A blob whose lock in `.locks/` the caller already holds for this download (the Hub
    /// endpoint takes it before it answers a client that may share the cache).
    pub lock_held: Option<(Etag, Arc<BlobLock>)>,
}

/// What a successful `get` did (also sent, as JSON, from a `join` node to the `get` it ran for).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GetOutcome {
    /// The commit downloaded.
    pub commit: String,
    /// The snapshot folder (or the local dir).
    pub path: PathBuf,
    /// Files selected.
    pub files: usize,
    /// Of those, files fetched in this run.
    pub files_fetched: usize,
    /// Size of the selected files.
    pub bytes_selected: u64,
    /// Bytes received from the Hub in this run.
    pub bytes_from_hub: u64,
    /// Bytes received from peers in this run.
    pub bytes_from_peers: u64,
    /// Chunks taken over from owners that left or stalled.
    pub chunks_taken_over: u64,
    /// Chunks asked of a second source in the endgame (the first was slow).
    #[serde(default)]
    pub chunks_duplicated: u64,
    /// Bytes kept from an interrupted earlier run.
    pub bytes_resumed: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a `get` failed. Files completed before the failure stay in place.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The Hub said no, or could not be reached.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Bad patterns, nothing selected, and such.
    #[error("{0}")]
    Usage(String),
    /// The destination cannot be written.
    #[error("cannot write to '{}' ({source}): choose another place with --cache-dir, --local-dir or HF_HUB_CACHE", .path.display())]
    NotWritable {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No space left.
    #[error("disk full while writing '{}': free some space and run the same command again (finished chunks are kept and will not be fetched again)", .path.display())]
    DiskFull {
        /// Where.
        path: PathBuf,
    },
    /// The Hub's bytes twice failed to match the Hub's hash.
    #[error("'{path}' did not match its Hub hash on two downloads ({detail}); nothing was written to the cache for it")]
    Integrity {
        /// Repo path.
        path: String,
        /// Expected/got.
        detail: String,
    },
    /// Offline, and the cache cannot answer.
    #[error("{0}")]
    Offline(String),
    /// Other local I/O failure.
    #[error(transparent)]
    Store(StoreError),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl FetchError {
    /// A stable name for the kind of failure (`--json` output, scripts): `usage`,
    /// `not_writable`, `disk_full`, `integrity`, `offline`, `io`, `internal`, or the Hub's
    /// ([`HubError::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hub(e) => e.kind(),
            Self::Usage(_) => "usage",
            Self::NotWritable { .. } => "not_writable",
            Self::DiskFull { .. } => "disk_full",
            Self::Integrity { .. } => "integrity",
            Self::Offline(_) => "offline",
            Self::Store(_) => "io",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { path, source, .. } if crate::store::is_disk_full(&source) => Self::DiskFull { path },
            StoreError::Io { path, source, .. } if is_not_writable(&source) => Self::NotWritable { path, source },
            other => Self::Store(other),
        }
    }
}

fn is_not_writable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::NotADirectory
    )
}

fn local_io(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::from(StoreError::Io { op: "cannot write", path: path.to_path_buf(), source })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| FetchError::Internal(format!("blocking task failed: {e}")))
}

/// Where files go: the cache's snapshot, or a local dir.
#[derive(Debug, Clone)]
enum Dest {
    Cache(RepoCache),
    Local { dir: LocalDir, cache: RepoCache },
}

struct FilePaths {
    lock: PathBuf,
    incomplete: PathBuf,
    state: PathBuf,
    final_path: PathBuf,
}

impl Dest {
    fn paths(&self, f: &RemoteFile) -> FilePaths {
        match self {
            Dest::Cache(rc) => FilePaths {
                lock: rc.lock_path(&f.etag),
                incomplete: rc.incomplete(&f.etag),
                state: rc.chunk_state(&f.etag),
                final_path: rc.blob(&f.etag),
            },
            Dest::Local { dir, .. } => FilePaths {
                lock: dir.lock_path(&f.path),
                incomplete: dir.incomplete(&f.path, &f.etag),
                state: dir.chunk_state(&f.path, &f.etag),
                final_path: dir.file(&f.path),
            },
        }
    }

    fn is_done(&self, commit: &str, f: &RemoteFile) -> bool {
        match self {
            Dest::Cache(rc) => rc.has_file(commit, &f.path),
            Dest::Local { dir, .. } => dir.is_current(&f.path, &f.etag),
        }
    }

    /// Publishes `f` without downloading when its bytes are already on disk (a blob of another
    /// snapshot). Returns whether it did.
    fn publish_existing(&self, commit: &str, f: &RemoteFile) -> io::Result<bool> {
        match self {
            Dest::Cache(rc) if rc.blob(&f.etag).is_file() => rc.link(commit, &f.path, &f.etag).map(|()| true),
            Dest::Local { dir, cache } if cache.blob(&f.etag).is_file() => {
                let target = dir.file(&f.path);
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::copy(cache.blob(&f.etag), &target)?;
                dir.write_metadata(&f.path, commit, &f.etag).map(|()| true)
            }
            _ => Ok(false),
        }
    }

    fn after_finish(&self, commit: &str, f: &RemoteFile) -> io::Result<()> {
        match self {
            Dest::Cache(rc) => rc.link(commit, &f.path, &f.etag),
            Dest::Local { dir, .. } => dir.write_metadata(&f.path, commit, &f.etag),
        }
    }

    fn root(&self, commit: &str) -> PathBuf {
        match self {
            Dest::Cache(rc) => rc.snapshot(commit),
            Dest::Local { dir, .. } => dir.root().to_path_buf(),
        }
    }

    fn read_tree(&self, commit: &str) -> Option<Vec<RemoteFile>> {
        match self {
            Dest::Cache(rc) => rc.read_tree(commit),
            Dest::Local { dir, .. } => crate::cache::read_tree_file(&dir.tree_path(commit)),
        }
    }

    fn write_tree(&self, commit: &str, files: &[RemoteFile]) -> io::Result<()> {
        match self {
            Dest::Cache(rc) => rc.write_tree(commit, files),
            Dest::Local { dir, .. } => dir.write_tree(commit, files),
        }
    }
}

/// A download's request slots (`--max-workers`), of which peer requests may never take a
/// quarter: a Hub request, which the whole swarm waits for, must not queue behind peer requests.
/// At 16 nodes on two busy cores, up to 120 peer requests of a node (4 per peer and file) queued
/// for its 32 slots, and one of its Hub chunks was placed 10 s before its bytes came, the uplink
/// idle meanwhile and every node waiting for that chunk (2026-12-03; the slot queue is the
/// likely wait).
pub(crate) struct Slots {
    all: Semaphore,
    peers: Semaphore,
}

/// A slot taken; given back when dropped.
pub(crate) struct Slot<'a> {
    _peer: Option<tokio::sync::SemaphorePermit<'a>>,
    _any: tokio::sync::SemaphorePermit<'a>,
}

impl Slots {
    fn new(workers: usize) -> Self {
        let reserve = (workers / 4).min(workers.saturating_sub(1));
        Self { all: Semaphore::new(workers), peers: Semaphore::new(workers - reserve) }
    }

    /// Waits for a slot: a peer request takes one of the peers' first, then any.
    pub(crate) async fn take(&self, peer: bool) -> Result<Slot<'_>, tokio::sync::AcquireError> {
        let _peer = if peer { Some(self.peers.acquire().await?) } else { None };
        Ok(Slot { _peer, _any: self.all.acquire().await? })
    }
}

pub(crate) struct Ctx {
    /// `None` offline: chunks come from peers or not at all.
    hub: Option<HubClient>,
    repo: RepoRef,
    commit: String,
    dest: Dest,
    slots: Slots,
    throttle: Arc<Throttle>,
    progress: Arc<Progress>,
    max_workers: usize,
    node: Option<NodeHandle>,
    cache: HubCache,
    /// `--force-download`: a blob already on disk is fetched again.
    force: bool,
    /// [`GetRequest::lock_held`]'s blob.
    lock_held: Option<Etag>,
    /// Files of several chunks whose chunks are being fetched now: they share one swarm-wide
    /// Hub window ([`pipeline::hub_window`]).
    hub_sharers: std::sync::atomic::AtomicU32,
}

fn dest_for(req: &GetRequest) -> Result<Dest, FetchError> {
    let rc = req.cache.repo(&req.repo);
    match &req.local_dir {
        None => {
            req.cache.ensure().map_err(|source| FetchError::NotWritable { path: req.cache.root().into(), source })?;
            Ok(Dest::Cache(rc))
        }
        Some(dir) => {
            dir.ensure().map_err(|source| FetchError::NotWritable { path: dir.root().into(), source })?;
            Ok(Dest::Local { dir: dir.clone(), cache: rc })
        }
    }
}

/// Downloads the selected files of a repo at a revision. With `hub = None` (offline) it only
/// answers from what is on disk.
pub async fn get(req: &GetRequest, hub: Option<HubClient>, progress: Arc<Progress>) -> Result<GetOutcome, FetchError> {
    let started = Instant::now();
    // One wait for peers in all, however many steps wait for them.
    let wait = req.node.as_ref().map_or(Duration::ZERO, |n| n.peer_wait(req.peer_wait));
    let peers_until = tokio::time::Instant::now() + wait;
    swarm_protocol::repo::check_revision(&req.revision).map_err(|e| FetchError::Usage(e.to_string()))?;
    let selection = Selection::new(&req.include, &req.exclude).map_err(FetchError::Usage)?;
    let mut shared_age: Option<u64> = None;
    let mut node = req.node.clone();
    let (commit, listing, dest) = match &hub {
        Some(hub) => {
            // When the cache can answer, a Hub that is not there is given up on quickly and the
            // cached revision is used, as `huggingface_hub` does.
            let cached = if req.force { None } else { offline(req, &selection).ok() };
            let meta_hub = if cached.is_some() { hub.fail_fast() } else { hub.clone() };
            let fall_back = |e: HubError| match (e, cached.clone()) {
                (HubError::Unreachable { url, last, answered: false, .. }, Some(outcome)) => {
                    progress.note(format!(
                        "the Hub could not be reached ({url}: {last}); using the cached commit {} of {} '{}' at '{}'",
                        outcome.commit, req.repo.ty, req.repo.id, req.revision
                    ));
                    Ok(outcome)
                }
                (e, _) => Err(FetchError::Hub(e)),
            };
            let shared = match &req.node {
                Some(node) if node.is_private() => listing_from_members(req, node, peers_until).await,
                _ => None,
            };
            let commit = match &shared {
                Some((commit, _, _)) => commit.clone(),
                // Alone, every byte comes from the Hub with this caller's token: the Hub decides.
                None if is_commit(&req.revision) && req.node.is_none() => req.revision.clone(),
                None => {
                    let (commit, access) = match meta_hub.resolve(&req.repo, &req.revision).await {
                        Ok(answer) => answer,
                        Err(e) => return fall_back(e),
                    };
                    req.cache.record_access(&req.repo, access);
                    if !access.is_public() && node.as_ref().is_some_and(|n| !n.is_private()) {
                        // An open swarm never carries gated or private repos, either way.
                        tracing::warn!(
                            repo = %req.repo.id,
                            "this repo is gated or private: downloading it from the Hub alone, not through the open swarm"
                        );
                        node = None;
                    }
                    commit
                }
            };
            let dest = dest_for(req)?;
            if let Some((_, files, _)) = &shared
                && dest.read_tree(&commit).is_none()
            {
                dest.write_tree(&commit, files).map_err(local_io(&dest.root(&commit)))?;
            }
            let listing = match dest.read_tree(&commit) {
                Some(files) => files,
                None => {
                    let files = match meta_hub.list_files(&req.repo, &commit).await {
                        Ok(files) => files,
                        Err(e) => return fall_back(e),
                    };
                    dest.write_tree(&commit, &files).map_err(local_io(&dest.root(&commit)))?;
                    files
                }
            };
            if let Some((_, _, age)) = &shared {
                shared_age = Some(*age);
            }
            (commit, listing, dest)
        }
        None => match (offline(req, &selection), &req.node) {
            (Err(FetchError::Offline(why)), Some(node)) => {
                let (commit, listing) = listing_from_peers(req, node, why).await?;
                let dest = dest_for(req)?;
                dest.write_tree(&commit, &listing).map_err(local_io(&dest.root(&commit)))?;
                (commit, listing, dest)
            }
            (done, _) => return done,
        },
    };
    let rc = req.cache.repo(&req.repo);
    let wrote_ref = if req.revision != commit { Some(rc.write_ref(&req.revision, &commit)) } else { None };
    if let (Some(Ok(())), Some(age)) = (&wrote_ref, shared_age) {
        // A ref learnt from a member keeps the member's age, so that it is not passed on as
        // fresher than it is.
        let when = std::time::SystemTime::now() - Duration::from_secs(age);
        let _ =
            std::fs::File::options().write(true).open(rc.ref_path(&req.revision)).and_then(|f| f.set_modified(when));
    }
    if let Some(Err(e)) = wrote_ref {
        match &dest {
            Dest::Cache(_) => return Err(local_io(&rc.ref_path(&req.revision))(e)),
            Dest::Local { .. } => tracing::warn!(error = %e, "cannot record the revision in the hub cache"),
        }
    }
    if let Dest::Cache(rc) = &dest {
        rc.ensure(&commit).map_err(local_io(rc.dir()))?;
    }

    let selected = select(req, &selection, listing)?;
    let bytes_selected = selected.iter().map(|f| f.size).sum();
    progress.files_total.store(selected.len() as u64, Relaxed);
    let mut todo = Vec::new();
    for f in selected.iter() {
        let present = !req.force
            && (dest.is_done(&commit, f)
                || dest.publish_existing(&commit, f).map_err(local_io(&dest.root(&commit)))?);
        if present {
            progress.files_done.fetch_add(1, Relaxed);
        } else {
            progress.bytes_total.fetch_add(f.size, Relaxed);
            todo.push(f.clone());
        }
    }
    let files_fetched = todo.len();
    let workers = req.max_workers.max(1);
    let ctx = Arc::new(Ctx {
        hub,
        repo: req.repo.clone(),
        commit: commit.clone(),
        dest: dest.clone(),
        slots: Slots::new(workers),
        throttle: match (req.max_download_rate, node.as_ref().and_then(|n| n.download_throttle())) {
            (None, Some(shared)) => shared,
            (rate, _) => Arc::new(Throttle::new(rate)),
        },
        progress: progress.clone(),
        max_workers: workers,
        node: node.clone(),
        cache: req.cache.clone(),
        force: req.force,
        lock_held: req.lock_held.as_ref().map(|(etag, _)| etag.clone()),
        hub_sharers: Default::default(),
    });
    // Say what this node is about to download before waiting for peers, so that nodes starting
    // together count each other in when they share out the Hub work.
    let _wanted = node.as_ref().map(|node| node.want(todo.iter().map(|f| f.etag.clone()).collect()));
    if let Some(node) = &node
        && !todo.is_empty()
    {
        let n = node.wait_for_peers(peers_until).await;
        if node.gave_up_on_static_peers() {
            progress.note(format!(
                "no --peer could be reached within {} s: downloading without them for now (they are dialled again and used as soon as they answer)",
                crate::swarm::STATIC_PEER_WAIT.as_secs()
            ));
        }
        tracing::info!(peers = n, "swarm peers at start");
    }
    // After a failure no new file starts, but files in flight run to their end: whatever can
    // still complete is kept. The first error is the one reported.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut files = futures_util::stream::iter(todo)
        .map(|f| {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            async move { if stop.load(Relaxed) { Ok(()) } else { download_file(ctx, f).await } }
        })
        .buffer_unordered(workers);
    let mut first_error = None;
    while let Some(r) = files.next().await {
        if let Err(e) = r {
            stop.store(true, Relaxed);
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(GetOutcome {
        path: dest.root(&commit),
        commit,
        files: selected.len(),
        files_fetched,
        bytes_selected,
        bytes_from_hub: progress.from_hub.load(Relaxed),
        bytes_from_peers: progress.from_peers.load(Relaxed),
        chunks_taken_over: progress.takeovers.load(Relaxed),
        chunks_duplicated: progress.duplicates.load(Relaxed),
        bytes_resumed: progress.bytes_resumed.load(Relaxed),
        elapsed: started.elapsed(),
    })
}

/// The files of `listing` that `req` asks for: every named file must be there, and something
/// must be selected.
fn select(req: &GetRequest, selection: &Selection, listing: Vec<RemoteFile>) -> Result<Vec<RemoteFile>, FetchError> {
    if req.named {
        let plain = req.include.iter().filter(|p| !p.ends_with('/') && !p.contains(['*', '?', '[']));
        for name in plain {
            if !listing.iter().any(|f| f.path == *name) {
                return Err(FetchError::Hub(HubError::EntryNotFound {
                    subject: req.repo.subject(Some(&req.revision), Some(name)),
                }));
            }
        }
    }
    let selected: Vec<RemoteFile> = listing.into_iter().filter(|f| selection.matches(&f.path)).collect();
    if selected.is_empty() {
        let asked = if req.named { "the files named" } else { "--include/--exclude" };
        return Err(FetchError::Usage(format!(
            "no file of {} '{}' at '{}' matches {asked} (include {:?}, exclude {:?})",
            req.repo.ty, req.repo.id, req.revision, req.include, req.exclude
        )));
    }
    Ok(selected)
}

/// What a `get` would do, file by file ([`plan`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// The commit the revision points at.
    pub commit: String,
    /// Where the files would be.
    pub path: PathBuf,
    /// Every selected file.
    pub files: Vec<PlannedFile>,
}

/// One file of a [`Plan`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedFile {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// What would happen: `present` (nothing to do), `link` (its blob is in the cache under
    /// another snapshot), `resume` (an interrupted download has `verified` bytes) or `fetch`.
    pub action: &'static str,
    /// Bytes already verified on disk (all of them for `present` and `link`).
    pub verified: u64,
}

/// Says what [`get`] would fetch, without downloading or writing anything. The Hub (or, with
/// `hub = None`, the cache) is asked for the revision and the file list.
pub async fn plan(req: &GetRequest, hub: Option<HubClient>) -> Result<Plan, FetchError> {
    swarm_protocol::repo::check_revision(&req.revision).map_err(|e| FetchError::Usage(e.to_string()))?;
    let selection = Selection::new(&req.include, &req.exclude).map_err(FetchError::Usage)?;
    let rc = req.cache.repo(&req.repo);
    let dest = match &req.local_dir {
        None => Dest::Cache(rc.clone()),
        Some(dir) => Dest::Local { dir: dir.clone(), cache: rc.clone() },
    };
    let commit = match &hub {
        Some(hub) => hub.resolve(&req.repo, &req.revision).await?.0,
        None => offline(req, &selection)?.commit,
    };
    let listing = match (dest.read_tree(&commit), &hub) {
        (Some(files), _) => files,
        (None, Some(hub)) => hub.list_files(&req.repo, &commit).await?,
        (None, None) => {
            return Err(FetchError::Offline(format!("the file list of commit {commit} is not in the cache")));
        }
    };
    let files = select(req, &selection, listing)?
        .into_iter()
        .map(|f| {
            let (action, verified) = if !req.force && dest.is_done(&commit, &f) {
                ("present", f.size)
            } else if !req.force && req.cache.repo(&req.repo).blob(&f.etag).is_file() {
                ("link", f.size)
            } else {
                match crate::cache::scan::verified_bytes(&dest.paths(&f).state) {
                    0 => ("fetch", 0),
                    v => ("resume", v),
                }
            };
            PlannedFile { path: f.path, size: f.size, action, verified }
        })
        .collect();
    Ok(Plan { path: dest.root(&commit), commit, files })
}

/// Copies the selected files of `commit`, which a `join` node has just put in the cache, into
/// `req.local_dir`. This is how `get --local-dir` works through a node: the node only ever
/// writes its own cache, and the calling process writes the folder it named, with its own
/// rights. Files already current in the folder are left alone.
pub fn publish_local_dir(req: &GetRequest, mut outcome: GetOutcome) -> Result<GetOutcome, FetchError> {
    let Some(dir) = &req.local_dir else {
        return Ok(outcome);
    };
    let selection = Selection::new(&req.include, &req.exclude).map_err(FetchError::Usage)?;
    let rc = req.cache.repo(&req.repo);
    let commit = outcome.commit.clone();
    let listing = rc.read_tree(&commit).ok_or_else(|| {
        FetchError::Internal(format!("the node left no file listing of commit {commit} in the cache"))
    })?;
    let dest = dest_for(req)?;
    for f in listing.iter().filter(|f| selection.matches(&f.path)) {
        if !dest.is_done(&commit, f) && !dest.publish_existing(&commit, f).map_err(local_io(dir.root()))? {
            return Err(FetchError::Internal(format!("'{}' is not in the cache after the node's download", f.path)));
        }
    }
    dest.write_tree(&commit, &listing).map_err(local_io(dir.root()))?;
    outcome.path = dir.root().to_path_buf();
    Ok(outcome)
}

async fn download_file(ctx: Arc<Ctx>, f: RemoteFile) -> Result<(), FetchError> {
    let fp = ctx.progress.start_file(&f.path, f.size);
    let paths = ctx.dest.paths(&f);
    let lock_path = paths.lock.clone();
    let _lock = if ctx.lock_held.as_ref() == Some(&f.etag) {
        None
    } else {
        Some(blocking(move || BlobLock::acquire(&lock_path)).await?.map_err(local_io(&paths.lock))?)
    };
    fp.writing.store(true, Relaxed);
    // Someone (another swarm-dl, or Python) may have finished it while we waited.
    let (dest, commit, file) = (ctx.dest.clone(), ctx.commit.clone(), f.clone());
    if !ctx.force
        && blocking(move || dest.publish_existing(&commit, &file)).await?.map_err(local_io(&paths.final_path))?
    {
        ctx.progress.finish_file(&fp);
        return Ok(());
    }
    let mut suspects = Vec::new();
    for round in 0..2 {
        match fetch_verified(&ctx, &f, &paths, &fp, &mut suspects, round == 1).await {
            Ok(()) => break,
            Err(FetchError::Store(StoreError::Mismatch { expected, got, .. })) => {
                ctx.progress.discard(&fp);
                ctx.progress.verify_failed();
                if round == 1 {
                    return Err(FetchError::Integrity {
                        path: f.path.clone(),
                        detail: format!("expected {expected}, got {got}"),
                    });
                }
                tracing::warn!(file = %f.path, %expected, %got, "file does not match its Hub hash; fetching it again from the Hub");
            }
            Err(FetchError::Hub(HubError::EntryNotFound { subject })) => {
                if let Dest::Cache(rc) = &ctx.dest {
                    let _ = rc.mark_no_exist(&ctx.commit, &f.path);
                }
                return Err(FetchError::Hub(HubError::EntryNotFound { subject }));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(node) = &ctx.node {
        // Offer the blob under this node's signature; a local-dir copy is the user's to edit, so
        // it is not offered.
        let blob = matches!(ctx.dest, Dest::Cache(_)).then_some(paths.final_path.as_path());
        node.finish_offer(&f.etag, blob);
        if blob.is_some() {
            node.provide(&f.etag).await;
        }
    }
    let (dest, commit, file) = (ctx.dest.clone(), ctx.commit.clone(), f.clone());
    blocking(move || dest.after_finish(&commit, &file)).await?.map_err(local_io(&paths.final_path))?;
    ctx.progress.finish_file(&fp);
    tracing::debug!(file = %f.path, bytes = f.size, "file complete");
    Ok(())
}

/// Fetches the missing chunks of `f` into its partial file and publishes it if the whole-file
/// hash matches. On a mismatch the partial file is gone and `StoreError::Mismatch` is returned.
async fn fetch_verified(
    ctx: &Arc<Ctx>,
    f: &RemoteFile,
    paths: &FilePaths,
    fp: &Arc<FileProgress>,
    suspects: &mut pipeline::Suspects,
    hub_only: bool,
) -> Result<(), FetchError> {
    let (inc, state, etag, size) = (paths.incomplete.clone(), paths.state.clone(), f.etag.clone(), f.size);
    let (pf, resumed) = blocking(move || PartialFile::open(&inc, &state, &etag, size)).await??;
    if resumed.chunks_kept > 0 || resumed.bytes_partial > 0 {
        tracing::info!(file = %f.path, chunks = resumed.chunks_kept, bytes = resumed.bytes_kept, in_chunks = resumed.bytes_partial, "resuming");
    }
    ctx.progress.resumed(fp, resumed.bytes_kept + resumed.bytes_partial);
    let pf = Arc::new(pf);
    fp.attach(&pf);
    let layout = ChunkLayout::for_len(f.size);
    let source = ctx
        .hub
        .clone()
        .map(|hub| Arc::new(HubSource::new(hub, ctx.repo.clone(), ctx.commit.clone(), f.clone(), layout.count())));

    // The whole-file hash follows finished chunks in order, overlapping with the download.
    let wake = Arc::new(Notify::new());
    let verifier = tokio::spawn({
        let (pf, wake) = (pf.clone(), wake.clone());
        async move {
            loop {
                wake.notified().await;
                let pf = pf.clone();
                if tokio::task::spawn_blocking(move || pf.advance_verifier())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
                {
                    return Ok::<(), String>(());
                }
            }
        }
    });
    wake.notify_one();

    let failed = if ctx.node.is_none() && source.is_none() {
        Some(FetchError::Internal("offline without a swarm node: nothing can fetch".into()))
    } else {
        let file = pipeline::FileFetch { ctx, f, pf: &pf, hub: source.as_ref(), fp, wake: &wake };
        pipeline::fetch_chunks(file, suspects, hub_only).await.err()
    };
    if let Some(e) = failed {
        verifier.abort();
        // Keep what was written for the next run; a file with nothing in it is litter.
        let pf2 = pf.clone();
        let _ = blocking(move || {
            if pf2.has_progress() {
                let _ = pf2.save_state(true);
            } else {
                pf2.discard();
            }
        })
        .await;
        return Err(e);
    }
    wake.notify_one();
    verifier.await.map_err(|e| FetchError::Internal(e.to_string()))?.map_err(FetchError::Internal)?;
    let final_path = paths.final_path.clone();
    let pf2 = pf.clone();
    blocking(move || pf2.finish(&final_path)).await?.map_err(FetchError::from)?;
    // Multi-chunk blobs keep their chunk manifest, so a node can serve them without a re-hash.
    if let Dest::Cache(_) = &ctx.dest
        && ChunkLayout::for_len(f.size).count() > 1
    {
        let (cache, m) = (ctx.cache.clone(), pf.manifest());
        blocking(move || cache.save_manifest(&m)).await?;
    }
    Ok(())
}

/// How old a member's answer for a branch or tag may be to be used instead of the Hub's.
pub const SHARED_METADATA_FRESH: Duration = Duration::from_secs(600);

/// In a private swarm: the revision's commit and listing from a member that got them from the
/// Hub, so that nodes starting together ask the Hub once. One member per (repo, revision) is
/// its metadata owner (rendezvous hashing over this node and its peers): it asks the Hub, the
/// others ask it, for a few seconds, then the Hub themselves.
async fn listing_from_members(
    req: &GetRequest,
    node: &NodeHandle,
    peers_until: tokio::time::Instant,
) -> Option<(String, Vec<RemoteFile>, u64)> {
    node.wait_for_peers(peers_until).await;
    let peers = node.peers();
    if peers.is_empty() {
        return None;
    }
    let key = swarm_protocol::rendezvous::metadata_key(req.repo.ty.as_str(), req.repo.id.as_str(), &req.revision);
    let me = node.peer_id();
    let owner = peers.iter().chain([&me]).max_by_key(|p| crate::scheduler::score(p, key, 0)).copied();
    let ask = swarm_protocol::wire::MetaRequest {
        repo_type: req.repo.ty.as_str().to_owned(),
        repo_id: req.repo.id.as_str().to_owned(),
        revision: req.revision.clone(),
    };
    let patience = if owner == Some(me) { Duration::ZERO } else { Duration::from_secs(5) };
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let fresh = node
            .listings(&ask)
            .await
            .into_iter()
            .filter(|a| is_commit(&req.revision) || Duration::from_secs(a.age_secs) <= SHARED_METADATA_FRESH)
            .min_by_key(|a| a.age_secs);
        if let Some(a) = fresh {
            tracing::info!(commit = %a.commit, signer = %a.signer, age_s = a.age_secs, "file list from a swarm member");
            return Some((a.commit, a.files, a.age_secs));
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Offline, with peers: takes the revision's commit and listing from peers, trusting them (the
/// Hub cannot be asked), and says so. Where peers disagree, the commit most of them name wins.
async fn listing_from_peers(
    req: &GetRequest,
    node: &NodeHandle,
    why_not_local: String,
) -> Result<(String, Vec<RemoteFile>), FetchError> {
    node.wait_for_peers(tokio::time::Instant::now() + req.peer_wait.max(Duration::from_secs(2))).await;
    let ask = swarm_protocol::wire::MetaRequest {
        repo_type: req.repo.ty.as_str().to_owned(),
        repo_id: req.repo.id.as_str().to_owned(),
        revision: req.revision.clone(),
    };
    let answers = node.listings(&ask).await;
    let mut votes: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for a in &answers {
        *votes.entry(a.commit.as_str()).or_default() += 1;
    }
    let Some(best) = votes.iter().max_by_key(|(c, n)| (**n, *c)).map(|(c, _)| c.to_string()) else {
        return Err(FetchError::Offline(format!("{why_not_local}; and no reachable peer knows this revision")));
    };
    let chosen =
        answers.into_iter().find(|a| a.commit == best).ok_or_else(|| FetchError::Internal("vote lost".into()))?;
    tracing::warn!(
        commit = %chosen.commit,
        signer = %chosen.signer,
        "offline: using the file list of {} '{}' at '{}' signed by a peer, not checked with the Hub",
        req.repo.ty,
        req.repo.id,
        req.revision
    );
    Ok((chosen.commit, chosen.files))
}

/// `HF_HUB_OFFLINE`: answer from the cache alone, like `snapshot_download(local_files_only=True)`.
fn offline(req: &GetRequest, selection: &Selection) -> Result<GetOutcome, FetchError> {
    let started = Instant::now();
    let rc = req.cache.repo(&req.repo);
    let what = format!("{} '{}' at '{}'", req.repo.ty, req.repo.id, req.revision);
    let commit = if is_commit(&req.revision) { Some(req.revision.clone()) } else { rc.read_ref(&req.revision) };
    let Some(commit) = commit else {
        return Err(FetchError::Offline(format!(
            "offline mode (HF_HUB_OFFLINE) and {what} is not in the cache at '{}': run once with network access",
            req.cache.root().display()
        )));
    };
    let (root, listing) = match &req.local_dir {
        None => (rc.snapshot(&commit), rc.read_tree(&commit)),
        Some(dir) => (dir.root().to_path_buf(), crate::cache::read_tree_file(&dir.tree_path(&commit))),
    };
    if !root.is_dir() {
        return Err(FetchError::Offline(format!(
            "offline mode (HF_HUB_OFFLINE) and {what} has no files on disk: run once with network access"
        )));
    }
    let mut files = 0;
    let mut bytes = 0;
    if let Some(listing) = listing {
        let missing: Vec<&RemoteFile> = listing
            .iter()
            .filter(|f| selection.matches(&f.path))
            .inspect(|f| {
                files += 1;
                bytes += f.size;
            })
            .filter(|f| match &req.local_dir {
                None => !rc.has_file(&commit, &f.path),
                Some(dir) => !dir.file(&f.path).is_file(),
            })
            .collect();
        if let Some(first) = missing.first() {
            return Err(FetchError::Offline(format!(
                "offline mode (HF_HUB_OFFLINE) and {what} is incomplete on disk: {} file(s) missing, e.g. '{}'; run once with network access",
                missing.len(),
                first.path
            )));
        }
    }
    Ok(GetOutcome {
        commit,
        path: root,
        files,
        files_fetched: 0,
        bytes_selected: bytes,
        bytes_from_hub: 0,
        bytes_from_peers: 0,
        chunks_taken_over: 0,
        chunks_duplicated: 0,
        bytes_resumed: 0,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[test]
    fn peer_requests_never_take_the_slots_kept_for_the_hub() {
        let slots = Slots::new(DEFAULT_MAX_WORKERS as usize);
        let take = |peer| slots.take(peer).now_or_never().map(|s| s.expect("open"));
        let mut peers: Vec<_> = std::iter::from_fn(|| take(true)).take(100).collect();
        assert_eq!(peers.len(), 24, "peers take three quarters");
        let hub: Vec<_> = std::iter::from_fn(|| take(false)).take(100).collect();
        assert_eq!(hub.len(), 8, "the Hub still has the rest");
        drop(hub);
        peers.truncate(20);
        let more: Vec<_> = std::iter::from_fn(|| take(false)).take(100).collect();
        assert_eq!(more.len(), 12, "and what peers gave back");
        // With one slot, peers may use it, or a download with one worker could not use peers.
        let one = Slots::new(1);
        let s = one.take(true).now_or_never().expect("free").expect("open");
        assert!(one.take(false).now_or_never().is_none());
        drop(s);
        assert!(one.take(false).now_or_never().is_some());
    }
}
