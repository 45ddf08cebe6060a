//! Preheat (`swarm-dl preheat`): one node asks the others to fetch a repo now, so that a cluster
//! is warm before the job that needs it starts.
//!
//! The asking node sends [`PreheatRequest::Start`] to every connected peer (or to the peers
//! named), runs the same download itself, then asks each node every second how far it is
//! ([`PreheatRequest::Progress`]) until every node is done. `status` on any node shows every
//! node's progress: the asking node knows it, and the others ask it ([`PreheatRequest::Nodes`]).
//! The downloads start within moments of each other, so they share the Hub work like any
//! downloads started together.
//!
//! A node accepts a preheat from a member of its private swarm; in an open swarm only when started
//! with `--accept-preheat`. It downloads with its own Hub and no token: no token crosses the
//! wire, and the swarm's rules for gated and private repos apply as to any download.

use super::NodeHandle;
use crate::fetch::progress::Progress;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_protocol::wire::{PreheatJob, PreheatProgress, PreheatReply, PreheatRequest, PreheatState};
use tokio::sync::mpsc;

/// How a view names the node that shows it.
pub const THIS_NODE: &str = "this node";
/// Preheats queued for this node's runner at most.
const QUEUE: usize = 64;
/// Preheats remembered (finished ones are dropped oldest first past this).
const KEPT: usize = 32;
/// How often the asking node polls the others.
const POLL: Duration = Duration::from_secs(1);
/// A node that does not answer a progress query this many times in a row counts as gone.
const SILENT_POLLS: u32 = 10;

/// A preheat for this node to run, and who asked (`None`: asked here).
pub type Incoming = (PreheatJob, Option<PeerId>);

/// One node's part of a preheat, as the node that shows it knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePart {
    /// Asked; no answer yet.
    Asked,
    /// It said no, and why.
    Refused(String),
    /// Its last progress.
    Progress(PreheatProgress),
    /// It stopped answering.
    Gone(String),
}

impl NodePart {
    /// Nothing more will change.
    pub fn is_final(&self) -> bool {
        match self {
            Self::Asked => false,
            Self::Progress(p) => !matches!(p.state, PreheatState::Running),
            Self::Refused(_) | Self::Gone(_) => true,
        }
    }

    /// Finished with every file in place.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Progress(PreheatProgress { state: PreheatState::Done, .. }))
    }
}

/// A preheat as `status` and `preheat` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreheatView {
    /// Its id (the same on every node).
    pub id: u64,
    /// `model org/name` and such.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The node that asked, or `None` when asked here.
    pub asked_by: Option<String>,
    /// Each node's part: this node first (as "this node"), then the others this node asked.
    pub nodes: Vec<(String, NodePart)>,
}

impl PreheatView {
    /// Every node's part is final.
    pub fn is_final(&self) -> bool {
        self.nodes.iter().all(|(_, p)| p.is_final())
    }
}

struct Job {
    job: PreheatJob,
    asked_by: Option<PeerId>,
    /// This node's download: its counters, and its end.
    local: Option<(Arc<Progress>, Option<PreheatState>)>,
    /// The nodes this node asked, with how many progress queries in a row went unanswered.
    remote: BTreeMap<PeerId, (NodePart, u32)>,
    seq: u64,
}

/// The preheats this node runs or asked for.
#[derive(Debug)]
pub struct Board {
    jobs: Mutex<BTreeMap<u64, Job>>,
    tx: mpsc::Sender<Incoming>,
    rx: Mutex<Option<mpsc::Receiver<Incoming>>>,
    /// A runner took the queue (a `join` node); a `get`'s own node runs no preheats.
    runner: std::sync::atomic::AtomicBool,
    seq: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.job.id).finish_non_exhaustive()
    }
}

impl Default for Board {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            jobs: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            runner: Default::default(),
            seq: Default::default(),
        }
    }
}

fn local_progress(p: &Progress, end: Option<&PreheatState>) -> PreheatProgress {
    PreheatProgress {
        state: end.cloned().unwrap_or(PreheatState::Running),
        files: (p.files_done.load(Relaxed), p.files_total.load(Relaxed)),
        bytes: (p.bytes_done.load(Relaxed), p.bytes_total.load(Relaxed)),
    }
}

impl Board {
    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queue of preheats to run; `None` after the first call (one runner per node).
    pub fn take_queue(&self) -> Option<mpsc::Receiver<Incoming>> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.runner.store(rx.is_some() || self.runner.load(Relaxed), Relaxed);
        rx
    }

    /// Records a preheat and queues it for this node's runner. Asking twice for the same id is
    /// one preheat. Returns why it cannot run, if it cannot.
    pub fn accept(&self, job: PreheatJob, asked_by: Option<PeerId>) -> Result<(), String> {
        if !self.runner.load(Relaxed) {
            return Err("this node runs no preheats (it is the node of one `get`, not a `join` node)".into());
        }
        let mut jobs = self.jobs();
        if jobs.contains_key(&job.id) {
            return Ok(());
        }
        self.tx.try_send((job.clone(), asked_by)).map_err(|_| "too many preheats queued on this node".to_owned())?;
        let seq = self.seq.fetch_add(1, Relaxed);
        jobs.insert(job.id, Job { job, asked_by, local: None, remote: BTreeMap::new(), seq });
        while jobs.len() > KEPT {
            let oldest =
                jobs.values().filter(|j| j.local.as_ref().is_some_and(|(_, end)| end.is_some())).min_by_key(|j| j.seq);
            let Some(id) = oldest.map(|j| j.job.id) else { break };
            jobs.remove(&id);
        }
        Ok(())
    }

    /// The runner started preheat `id` with these counters.
    pub fn running(&self, id: u64, progress: Arc<Progress>) {
        if let Some(j) = self.jobs().get_mut(&id) {
            j.local = Some((progress, None));
        }
    }

    /// The runner finished preheat `id`.
    pub fn finished(&self, id: u64, state: PreheatState) {
        if let Some(j) = self.jobs().get_mut(&id)
            && let Some((_, end)) = &mut j.local
        {
            *end = Some(state);
        }
    }

    /// This node's progress on preheat `id`, for a node that asks.
    pub fn progress(&self, id: u64) -> Option<PreheatProgress> {
        let jobs = self.jobs();
        let j = jobs.get(&id)?;
        Some(match &j.local {
            Some((p, end)) => local_progress(p, end.as_ref()),
            None => PreheatProgress { state: PreheatState::Running, files: (0, 0), bytes: (0, 0) },
        })
    }

    fn set_remote(&self, id: u64, peer: PeerId, part: NodePart) {
        if let Some(j) = self.jobs().get_mut(&id) {
            j.remote.insert(peer, (part, 0));
        }
    }

    /// Every node's part in preheat `id`, as this node (which asked them) knows it, for a node
    /// that asks; this node's own part is named `me`.
    pub fn nodes(&self, id: u64, me: PeerId) -> Option<Vec<(String, PreheatProgress)>> {
        let view = self.view(id)?;
        let failed = |why: String| PreheatProgress { state: PreheatState::Failed(why), files: (0, 0), bytes: (0, 0) };
        Some(
            view.nodes
                .into_iter()
                .map(|(name, part)| {
                    let name = if name == THIS_NODE { me.to_string() } else { name };
                    let p = match part {
                        NodePart::Asked => {
                            PreheatProgress { state: PreheatState::Running, files: (0, 0), bytes: (0, 0) }
                        }
                        NodePart::Refused(why) => failed(format!("refused: {why}")),
                        NodePart::Gone(why) => failed(format!("lost: {why}")),
                        NodePart::Progress(p) => p,
                    };
                    (name, p)
                })
                .collect(),
        )
    }

    /// Every preheat, newest first.
    pub fn views(&self) -> Vec<PreheatView> {
        let jobs = self.jobs();
        let mut views: Vec<(u64, PreheatView)> = jobs
            .values()
            .map(|j| {
                let own = match &j.local {
                    Some((p, end)) => NodePart::Progress(local_progress(p, end.as_ref())),
                    None => NodePart::Asked,
                };
                let mut nodes = vec![(THIS_NODE.to_owned(), own)];
                nodes.extend(j.remote.iter().map(|(peer, (part, _))| (peer.to_string(), part.clone())));
                let view = PreheatView {
                    id: j.job.id,
                    repo: format!("{} {}", j.job.repo_type, j.job.repo_id),
                    revision: j.job.revision.clone(),
                    asked_by: j.asked_by.map(|p| p.to_string()),
                    nodes,
                };
                (j.seq, view)
            })
            .collect();
        views.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// The view of preheat `id`.
    pub fn view(&self, id: u64) -> Option<PreheatView> {
        self.views().into_iter().find(|v| v.id == id)
    }
}

/// Every preheat as `status` shows it: for a preheat another node asked for, every node's part
/// as that node knows it (asked for at most `wait`), else this node's own.
pub async fn status_views(node: &NodeHandle, wait: Duration) -> Vec<PreheatView> {
    let views = node.preheat_board().views();
    let me = node.peer_id().to_string();
    // All asked at once: the answer takes `wait` at most, however many preheats there are.
    let asks = views.into_iter().map(|mut v| {
        let me = me.clone();
        async move {
            let Some(origin) = v.asked_by.as_deref().and_then(|p| p.parse::<PeerId>().ok()) else { return v };
            let ask = node.preheat_ask(origin, PreheatRequest::Nodes { id: v.id });
            if let Ok(Ok(PreheatReply::Nodes(parts))) = tokio::time::timeout(wait, ask).await {
                let others = parts.into_iter().filter(|(peer, _)| *peer != me);
                v.nodes.truncate(1);
                v.nodes.extend(others.map(|(peer, p)| (peer, NodePart::Progress(p))));
            }
            v
        }
    });
    futures::future::join_all(asks).await
}

/// Starts preheat `job` here and on `targets` (every connected peer when empty), then keeps
/// asking them how far they are until all are done. Returns once every target has answered the
/// start (or failed to).
pub async fn ask_all(node: &NodeHandle, job: PreheatJob, targets: Vec<PeerId>) -> Result<(), String> {
    let board = node.preheat_board();
    board.accept(job.clone(), None)?;
    let targets = if targets.is_empty() { node.peers() } else { targets };
    let starts = targets.iter().map(|peer| {
        let (node, job) = (node.clone(), job.clone());
        async move { (*peer, node.preheat_ask(*peer, PreheatRequest::Start(job)).await) }
    });
    for (peer, reply) in futures::future::join_all(starts).await {
        let part = match reply {
            Ok(PreheatReply::Accepted) => NodePart::Asked,
            Ok(PreheatReply::Refused(why)) => NodePart::Refused(why),
            Ok(other) => NodePart::Gone(format!("unexpected answer {other:?}")),
            Err(e) => NodePart::Gone(e),
        };
        board.set_remote(job.id, peer, part);
    }
    let (node, id) = (node.clone(), job.id);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let waiting: Vec<PeerId> = {
                let jobs = node.preheat_board().jobs();
                let Some(j) = jobs.get(&id) else { return };
                j.remote.iter().filter(|(_, (part, _))| !part.is_final()).map(|(p, _)| *p).collect()
            };
            if waiting.is_empty() {
                return;
            }
            for peer in waiting {
                let reply = node.preheat_ask(peer, PreheatRequest::Progress { id }).await;
                let mut jobs = node.preheat_board().jobs();
                let Some(j) = jobs.get_mut(&id) else { return };
                let Some((part, silent)) = j.remote.get_mut(&peer) else { continue };
                match reply {
                    Ok(PreheatReply::Progress(p)) => (*part, *silent) = (NodePart::Progress(p), 0),
                    Ok(PreheatReply::Unknown) => *part = NodePart::Gone("it no longer knows this preheat".into()),
                    Ok(_) | Err(_) => {
                        *silent += 1;
                        if *silent >= SILENT_POLLS {
                            *part = NodePart::Gone(format!("no answer to {SILENT_POLLS} progress queries"));
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
