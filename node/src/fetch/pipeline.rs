//! The one chunk pipeline: fetching one file's chunks, from peers first and the Hub second.
//!
//! Every download goes through here, with a swarm node or without one (`--no-swarm`, a node
//! alone): it drives a [`FileScheduler`] with real sources, each a [`ChunkSource`] that streams
//! a chunk into a [`ChunkWriter`]; one [`Job`] path takes a slot, writes, hashes, checks and
//! commits, whatever the source. Without a node the scheduler simply has no peers. Availability is asked of every connected peer
//! (and of DHT providers) when the file starts and again every [`REFRESH`] while chunks are
//! missing, so chunks that appear at peers mid-download are taken from them. Answers are taken
//! as they come: the loop never waits for the slowest peer (see [`Asking`]). Every chunk from a
//! peer is checked against the peer's own signed record before it counts; a mismatch bans the
//! peer. Chunks from the Hub are signed by this node; the file is offered to peers chunk by chunk
//! as chunks are verified. In the endgame a slow chunk is also asked of a second source, into
//! memory ([`Job`] with `copy`); the first verified copy wins and the other is aborted.

use super::{Ctx, FetchError, blocking};
use crate::fetch::chunk::HubSource;
use crate::fetch::progress::FileProgress;
use crate::hub::RemoteFile;
use crate::scheduler::{Action, Event, Fault, FileScheduler, Limits, Source};
use crate::store::direct::AlignedBuf;
use crate::store::{ChunkWriter, PartialFile, StoreError};
use crate::swarm::holdings::Record;
use crate::swarm::transfer::PeerFetchError;
use crate::swarm::{NodeHandle, Offer};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use swarm_protocol::chunk::ChunkLayout;
use swarm_protocol::hash::ChunkHash;
use swarm_protocol::wire::{Bitmap, ChunkRequest, HaveRequest};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};

/// How often availability is asked again while a file is incomplete.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The same, while other nodes download the file at the same time.
pub const REFRESH_SHARED: Duration = Duration::from_millis(250);
/// The most peers asked again per refresh, per file: those asked longest ago. Up to 9 nodes
/// every peer is asked every round; beyond, each peer in turn, so that what a node asks (and
/// what each peer is asked) per second stays the same whatever the swarm's size. Asking every
/// peer every round cost O(N²) questions: at 32 nodes on two cores, 170 answers a second per
/// node, and the nodes spent 8 of their 11 CPU-s per GiB received in libp2p and the kernel
/// (`bench/cluster.py --nodes 32 --perf`). Peers asked for the first time, and peers with news,
/// are asked at once whatever this says.
pub const ASKS_PER_ROUND: usize = 8;
/// How long an offline download waits for some peer to hold a missing chunk.
pub const OFFLINE_PATIENCE: Duration = Duration::from_secs(10);
/// Longest wait for the DHT's answer (and for connections to the holders it names).
pub const PROVIDER_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the first answers of every peer before the first chunks are placed.
pub const FIRST_ANSWERS_WAIT: Duration = Duration::from_secs(5);
/// Chunks of this file that came from peers in this run: (server, record), for settling a
/// whole-file mismatch against the Hub's bytes.
pub type Suspects = Vec<Option<(PeerId, Record)>>;

/// Why one chunk from one source failed.
#[derive(Debug, thiserror::Error)]
enum ChunkError {
    /// The peer could not deliver, or sent bytes that do not match its record: ask elsewhere
    /// (and, for bad data, ban it).
    #[error("{why}")]
    Peer {
        /// What went wrong, for the scheduler.
        fault: Fault,
        /// In words.
        why: String,
    },
    /// A local or Hub failure: the file stops.
    #[error(transparent)]
    Fatal(#[from] FetchError),
}

impl From<StoreError> for ChunkError {
    fn from(e: StoreError) -> Self {
        Self::Fatal(e.into())
    }
}

impl From<PeerFetchError> for ChunkError {
    fn from(e: PeerFetchError) -> Self {
        match e {
            PeerFetchError::Unavailable(why) => Self::Peer { fault: Fault::Unavailable, why },
            PeerFetchError::Busy | PeerFetchError::Interrupted(_) => {
                Self::Peer { fault: Fault::Busy, why: e.to_string() }
            }
            PeerFetchError::BadData => Self::Peer { fault: Fault::BadData, why: e.to_string() },
            PeerFetchError::Local(e) => e.into(),
        }
    }
}

/// Where a chunk's bytes come from: it streams chunk `w.index` into `w`.
trait ChunkSource {
    async fn fill(&self, w: &mut ChunkWriter, ctx: &Ctx, fp: &FileProgress) -> Result<(), ChunkError>;

    /// Whether a chunk can continue from where an interrupted fetch stopped (a ranged GET can;
    /// a peer sends whole chunks).
    fn resumes(&self) -> bool {
        false
    }

    /// Whether it is a peer: its requests may not take the slots kept for the Hub
    /// ([`super::Slots`]).
    fn is_peer(&self) -> bool {
        true
    }
}

impl ChunkSource for HubSource {
    async fn fill(&self, w: &mut ChunkWriter, ctx: &Ctx, fp: &FileProgress) -> Result<(), ChunkError> {
        Ok(self.fetch(w, &ctx.throttle, &ctx.progress, fp).await?)
    }

    fn resumes(&self) -> bool {
        true
    }

    fn is_peer(&self) -> bool {
        false
    }
}

/// One peer, for one file's chunks.
struct PeerSource<'a> {
    node: &'a NodeHandle,
    peer: PeerId,
    f: &'a RemoteFile,
}

impl ChunkSource for PeerSource<'_> {
    async fn fill(&self, w: &mut ChunkWriter, ctx: &Ctx, fp: &FileProgress) -> Result<(), ChunkError> {
        let req = ChunkRequest { etag: self.f.etag.clone(), size: self.f.size, index: w.index };
        let progress = &ctx.progress;
        self.node.fetch_chunk(self.peer, &req, w, &ctx.throttle, |n| progress.received_from_peer(fp, n)).await?;
        Ok(())
    }
}

/// What a fetch brought.
enum Fetched {
    /// Written into the file and committed, with this hash.
    Written(ChunkHash),
    /// An endgame copy, whole in memory, to be written if the chunk is still not done.
    Copy(AlignedBuf, ChunkHash),
}

struct Outcome {
    job: u64,
    index: u32,
    source: Source,
    result: Result<Fetched, ChunkError>,
}

/// A fetch in flight (keyed by a number of its own: two copies of a chunk may come from the
/// same source): its chunk and source, how to stop it, and the bytes it has counted in progress
/// (taken back if it fails or loses).
struct Running {
    index: u32,
    source: Source,
    abort: AbortHandle,
    got: Arc<AtomicU64>,
    /// Its request has a slot ([`super::Slots`]): before, it only waits.
    started: Arc<AtomicBool>,
    /// An endgame copy (a second source for the chunk).
    copy: bool,
    /// Stopped by a release: the scheduler hears [`Event::Released`] once the task has ended
    /// cancelled (a task that finished first reports its chunk as usual).
    released: bool,
}

/// This file's share of the swarm-wide Hub window: the swarm keeps half of `--max-workers` Hub
/// requests in flight for the whole download, however many nodes there are, shared equally
/// among the files of several chunks fetched at once (at least one request each). A window per
/// file let a 2-file repo keep 32 requests on the uplink: TCP shared it so unevenly that a few
/// 4 MiB ranges took 6-8 s where most took 2, and every node's whole-file check waited for
/// them, then caught up on 7-23 chunks at the end (4 nodes, seed last, 400 Mbit/s: 13.3-13.9 s
/// in 11 runs; with the shared window 13.3-13.6 s in 10).
pub(crate) fn hub_window(max_workers: usize, sharers: &AtomicU32) -> u32 {
    let budget = (max_workers as u32 / 2).max(1);
    (budget / sharers.load(Relaxed).max(1)).max(1)
}

/// Counts a file among those sharing the Hub window while it lives.
struct HubShare<'a>(&'a AtomicU32);

impl<'a> HubShare<'a> {
    fn join(sharers: &'a AtomicU32) -> Self {
        sharers.fetch_add(1, Relaxed);
        Self(sharers)
    }
}

impl Drop for HubShare<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Tells the scheduler how much of each chunk its first source has delivered (the endgame asks
/// no second source for a chunk that is arriving fast enough), and which requests still wait
/// for a slot (their age starts when they get one).
fn report_arrivals(sched: &mut FileScheduler, running: &HashMap<u64, Running>, layout: &ChunkLayout, now: Duration) {
    for r in running.values().filter(|r| !r.copy) {
        if !r.started.load(Relaxed) {
            sched.waiting(r.index, now);
            continue;
        }
        let len = layout.range(r.index).map_or(0, |x| x.end - x.start);
        if let Some(per_mille) = (r.got.load(Relaxed).min(len) * 1000).checked_div(len) {
            sched.arrived(r.index, per_mille as u16);
        }
    }
}

/// One file to fetch: where its chunks go and where they may come from.
pub(crate) struct FileFetch<'a> {
    /// The download it belongs to (its node, if any, is `ctx.node`).
    pub ctx: &'a Arc<Ctx>,
    /// The file.
    pub f: &'a RemoteFile,
    /// Its partial file.
    pub pf: &'a Arc<PartialFile>,
    /// The Hub, unless offline.
    pub hub: Option<&'a Arc<HubSource>>,
    /// Its progress.
    pub fp: &'a Arc<FileProgress>,
    /// Woken whenever a chunk is done (the whole-file verifier follows).
    pub wake: &'a Arc<Notify>,
}

/// Fetches the missing chunks of a file into its partial file. With `hub_only` (the second round
/// after a whole-file mismatch), peers are not asked, and every chunk the Hub sends is compared
/// with the record a peer gave for it in the first round: a difference bans the record's signer
/// and the peer that served it.
pub(crate) async fn fetch_chunks(
    file: FileFetch<'_>,
    suspects: &mut Suspects,
    hub_only: bool,
) -> Result<(), FetchError> {
    let FileFetch { ctx, f, pf, hub: source_hub, fp, wake } = file;
    let node = ctx.node.as_ref();
    let asks_peers = node.is_some() && !hub_only;
    let layout = ChunkLayout::for_len(f.size);
    let count = layout.count();
    let name = format!("{}{}: {}", ctx.repo.ty.url_prefix(), ctx.repo.id, f.path);
    let partial = node.map(|n| n.offer(&f.etag, name, fp.clone(), pf.clone()));
    let missing = pf.missing();
    let done = (0..count).filter(|i| !missing.contains(i));
    // Counted while its chunks are fetched: the files fetched at once share one Hub window.
    let _sharing = (count > 1).then(|| HubShare::join(&ctx.hub_sharers));
    let limits = Limits {
        hub: ctx.max_workers as u32,
        hub_window: hub_window(ctx.max_workers, &ctx.hub_sharers),
        stall_after: Limits::stall_for(layout.chunk_size),
        warmup: if asks_peers { REFRESH } else { Duration::ZERO },
        ..Limits::default()
    };
    let started = tokio::time::Instant::now();
    let now = || started.elapsed();
    let salt = crate::scheduler::salt_of(f.etag.as_str());
    // Alone, the scheduler has no peers: every chunk is this node's, from the Hub.
    let me = node.map_or_else(PeerId::random, NodeHandle::peer_id);
    let mut sched = FileScheduler::new(me, salt, count, done, source_hub.is_some(), limits);
    let mut stuck_since: Option<tokio::time::Instant> = None;
    if suspects.len() != count as usize {
        *suspects = vec![None; count as usize];
    }
    let previous: Suspects =
        if hub_only { std::mem::replace(suspects, vec![None; count as usize]) } else { Vec::new() };
    let mut records: HashMap<PeerId, Vec<Option<Record>>> = HashMap::new();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut jobs = 0u64;
    let mut next_refresh = tokio::time::Instant::now();
    let mut asking = Asking::default();
    // The last "owns chunks, fetches none from the Hub" state logged (owners that wait look
    // stalled to the others).
    let mut idle_logged = None;
    if let Some(node) = node
        && asks_peers
    {
        // Holders announced in the DHT are found (and connected) before the first placement,
        // or everything they hold would already be on its way from the Hub.
        let found = tokio::time::timeout(PROVIDER_WAIT, node.find_providers(&f.etag)).await.unwrap_or_default();
        let connected = node.peers();
        let new: Vec<PeerId> = found.into_iter().filter(|p| !connected.contains(p)).collect();
        if !new.is_empty() {
            tracing::debug!(file = %f.path, providers = new.len(), "holders found in the DHT");
            node.wait_connected(&new, PROVIDER_WAIT).await;
        }
    }

    let mut actions = if asks_peers { Vec::new() } else { sched.assign(now()) };
    let result = loop {
        sched.set_hub_window(hub_window(ctx.max_workers, &ctx.hub_sharers));
        let mut queue: std::collections::VecDeque<Action> = std::mem::take(&mut actions).into();
        while let Some(a) = queue.pop_front() {
            let (index, source, copy) = match a {
                Action::Ban(p) => {
                    if let Some(node) = node {
                        node.ban(p, "sent bytes that do not match their record");
                    }
                    continue;
                }
                Action::Cancel { index, source } => {
                    // The copy that reported is no longer running: what is left from `source`
                    // is the other one, even when both came from the Hub.
                    running.retain(|_, r| {
                        let stop = r.index == index && r.source == source;
                        if stop {
                            r.abort.abort();
                            ctx.progress.take_back(fp, r.got.load(Relaxed));
                        }
                        !stop
                    });
                    continue;
                }
                Action::Release { index } => {
                    // Another node owns it now. Stop it only while nothing of it has arrived
                    // (it waits for a request slot, or for the Hub's first byte); one that goes
                    // on is claimed, so nobody fetches it twice and only its speed is at stake.
                    // What a stopped fetch had received is thrown away, and so is what the CDN
                    // had already sent toward it (socket buffers, counted as served): at "under
                    // half arrived" a seed that met three nodes a second in threw away a fifth of
                    // a 64 MiB repo, at "under an eighth" with peers heard within 100 ms up to
                    // 17 %, and stopping begun fetches the owner also made, up to 26 %.
                    let little = |r: &Running| r.got.load(Relaxed) == 0;
                    if let Some(r) =
                        running.values_mut().find(|r| r.index == index && r.source == Source::Hub && little(r))
                    {
                        r.released = true;
                        r.abort.abort();
                    }
                    continue;
                }
                Action::Fetch { index, source } => (index, source, false),
                Action::Duplicate { index, source } => (index, source, true),
            };
            let got = Arc::new(AtomicU64::new(0));
            let started = Arc::new(AtomicBool::new(false));
            jobs += 1;
            let id = jobs;
            let job = Job {
                ctx: ctx.clone(),
                f: f.clone(),
                pf: pf.clone(),
                fp: fp.clone(),
                partial: partial.clone(),
                index,
                copy,
                got: got.clone(),
                started: started.clone(),
            };
            let wake = wake.clone();
            let abort = match source {
                Source::Hub => {
                    tracing::debug!(file = %f.path, chunk = index, copy, "from the Hub");
                    let Some(src) = source_hub.cloned() else { continue };
                    let check = previous.get(index as usize).cloned().flatten();
                    tasks.spawn(async move {
                        let result = job.hub_chunk(&src, check).await;
                        wake.notify_one();
                        Outcome { job: id, index, source: Source::Hub, result }
                    })
                }
                Source::Peer(peer) => {
                    let (Some(node), Some(record)) =
                        (node.cloned(), records.get(&peer).and_then(|v| v.get(index as usize)).cloned().flatten())
                    else {
                        let fault = Fault::Unavailable;
                        queue.extend(sched.handle(Event::Failed { index, peer, fault }, now()));
                        continue;
                    };
                    tracing::debug!(file = %f.path, chunk = index, copy, %peer, "from a peer");
                    tasks.spawn(async move {
                        let result = job.peer_chunk(&node, peer, record).await;
                        wake.notify_one();
                        Outcome { job: id, index, source: Source::Peer(peer), result }
                    })
                }
            };
            running.insert(id, Running { index, source, abort, got, started, copy, released: false });
        }
        if sched.is_complete() {
            break Ok(());
        }
        // Offline, no peer holding what is missing: wait a while for one to appear, then say so.
        if source_hub.is_none() && sched.is_stuck() && tasks.is_empty() {
            let since = *stuck_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > OFFLINE_PATIENCE {
                break Err(FetchError::Offline(format!(
                    "offline mode and no reachable peer holds {} chunk(s) of '{}': run with network access, or start a node that has it",
                    sched.remaining(),
                    f.path
                )));
            }
        } else {
            stuck_since = None;
        }
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                let out = match joined {
                    Ok(o) => o,
                    Err(e) if e.is_cancelled() => {
                        // A released fetch, stopped: its owner fetches it. (A copy that lost the
                        // endgame was forgotten when it was cancelled.)
                        let released = running.iter().find(|(_, r)| r.released && r.abort.id() == e.id()).map(|(&id, _)| id);
                        if let Some(r) = released.and_then(|id| running.remove(&id)) {
                            ctx.progress.take_back(fp, r.got.load(Relaxed));
                            tracing::debug!(file = %f.path, chunk = r.index, "released to its owner");
                            actions = place(&mut asking, &mut sched, Event::Released { index: r.index }, now());
                        }
                        continue;
                    }
                    Err(e) => break Err(FetchError::Internal(format!("chunk task failed: {e}"))),
                };
                // A copy cancelled after it ended (it lost a race) has nothing more to say.
                let Some(run) = running.remove(&out.job) else { continue };
                match (out.source, out.result) {
                    (source, Ok(fetched)) => {
                        let record = match source {
                            Source::Peer(p) => records.get(&p).and_then(|v| v.get(out.index as usize)).cloned().flatten(),
                            Source::Hub => None,
                        };
                        if let Fetched::Copy(bytes, hash) = fetched {
                            // An endgame copy arrived first: it takes the chunk over from the
                            // copy writing into the file, unless that one has just finished.
                            let (p, offset) = (pf.clone(), u64::from(out.index) * layout.chunk_size);
                            match blocking(move || adopt(&p, out.index, offset, &bytes, hash)).await {
                                Ok(Ok(true)) => {
                                    if let Some(offer) = &partial {
                                        match record.clone() {
                                            Some(r) => offer.add_relayed(out.index, r),
                                            None => offer.add_own(out.index, hash),
                                        }
                                    }
                                    wake.notify_one();
                                }
                                Ok(Ok(false)) => {
                                    ctx.progress.take_back(fp, run.got.load(Relaxed));
                                    continue; // the other copy's own outcome settles the chunk
                                }
                                Ok(Err(e)) => break Err(e.into()),
                                Err(e) => break Err(e),
                            }
                        }
                        if let Source::Peer(p) = source {
                            tracing::debug!(file = %f.path, chunk = out.index, "landed from a peer");
                            suspects[out.index as usize] = record.map(|r| (p, r));
                        }
                        if let Some(node) = node {
                            heard_askers(node, f, &mut sched, now());
                        }
                        ctx.progress.chunk_verified();
                        report_arrivals(&mut sched, &running, &layout, now());
                        actions = place(&mut asking, &mut sched, Event::Done { index: out.index, source }, now());
                        if source == Source::Hub
                            && asks_peers
                            && let Some(node) = node
                            && sched.window_at_end()
                        {
                            let peers = sched.interested_peers();
                            tracing::debug!(file = %f.path, chunk = out.index, peers = peers.len(), "landed near the end: telling the nodes downloading it");
                            tell_news(node, f, count, peers);
                        }
                    }
                    (_, Err(ChunkError::Fatal(FetchError::Store(StoreError::Superseded { .. })))) => {
                        ctx.progress.take_back(fp, run.got.load(Relaxed));
                    }
                    (_, Err(ChunkError::Fatal(e))) => break Err(e),
                    (Source::Peer(peer), Err(ChunkError::Peer { fault, why })) => {
                        ctx.progress.take_back(fp, run.got.load(Relaxed));
                        if fault == Fault::BadData {
                            ctx.progress.verify_failed();
                        }
                        if fault == Fault::BadData
                            && let Some(node) = node
                        {
                            // Its disk may have rotted: tell it, so it can check its copy.
                            node.report_bad_chunk(peer, &f.etag, f.size, out.index);
                        }
                        tracing::debug!(%peer, chunk = out.index, %why, "peer fetch failed");
                        actions = place(&mut asking, &mut sched, Event::Failed { index: out.index, peer, fault }, now());
                    }
                    (Source::Hub, Err(e)) => break Err(FetchError::Internal(e.to_string())),
                }
            }
            Some((peer, answer)) = asking.next() => {
                let Some(node) = node else { continue };
                let again = asking.answered(peer);
                actions = take_answer(node, f, count, peer, answer, &mut records, &mut sched, now());
                if again {
                    asking.ask_now(node, f, count, &records, vec![peer]);
                }
                if asking.placing() {
                    report_arrivals(&mut sched, &running, &layout, now());
                    actions.extend(sched.assign(now()));
                }
            }
            () = poked(partial.as_ref()) => {
                // Peers that have just landed a chunk near the end: asked back at once.
                let (Some(node), Some(offer)) = (node, &partial) else { continue };
                let news = offer.take_news();
                if asks_peers && !news.is_empty() {
                    tracing::debug!(file = %f.path, peers = news.len(), "news from peers: asking them now");
                    asking.ask_now(node, f, count, &records, news);
                }
            }
            _ = tokio::time::sleep_until(next_refresh) => {
                // Faster while others download the same file: their chunks are ours to take as
                // soon as they land. Alone, the tick still lets the endgame see a slow chunk.
                next_refresh = tokio::time::Instant::now() + if sched.interested() > 0 || !asks_peers { REFRESH_SHARED } else { REFRESH };
                if let Some(node) = node
                    && asks_peers
                {
                    actions = asking.ask(node, f, count, &mut records, &mut sched, now());
                    heard_askers(node, f, &mut sched, now());
                }
                if let Some(offer) = &partial {
                    offer.set_landed(sched.landed());
                }
                report_arrivals(&mut sched, &running, &layout, now());
                if asking.placing() {
                    actions.extend(sched.assign(now()));
                }
                let wait = sched.hub_wait();
                let idle = (wait.in_flight == 0 && wait.claimed + wait.beyond_window > 0).then_some(wait);
                if idle != idle_logged {
                    if let Some(w) = idle {
                        tracing::debug!(file = %f.path, owned_claimed_elsewhere = w.claimed, owned_past_window = w.beyond_window,
                            window_end = w.window_end, others = w.others, "owns chunks but fetches none from the Hub");
                    }
                    idle_logged = idle;
                }
            }
        }
    };
    tasks.abort_all();
    let duplicates = u64::from(sched.duplicates());
    if duplicates > 0 {
        tracing::info!(file = %f.path, chunks = duplicates, "endgame: asked a second source for slow chunks");
        ctx.progress.duplicates.fetch_add(duplicates, Relaxed);
        node.inspect(|n| n.count_duplicates(duplicates));
    }
    let takeovers = u64::from(sched.takeovers());
    if takeovers > 0 {
        tracing::info!(file = %f.path, chunks = takeovers, "took over chunks of nodes that left or stalled");
        ctx.progress.takeovers.fetch_add(takeovers, Relaxed);
        node.inspect(|n| n.count_takeovers(takeovers));
    }
    if sched.released() > 0 {
        tracing::info!(file = %f.path, chunks = sched.released(), "released Hub fetches to the nodes that own them now");
    }
    if let Some(node) = node
        && result.is_err()
    {
        node.finish_offer(&f.etag, None);
    }
    result
}

/// Peers that asked this node about the file saying they download it too are owners from now
/// on: without this, a node alone would go on fetching their chunks until its next round of
/// questions (up to [`REFRESH`]) and the chunks would cross the uplink twice.
fn heard_askers(node: &NodeHandle, f: &RemoteFile, sched: &mut FileScheduler, now: Duration) {
    for peer in node.take_askers(&f.etag) {
        let _ = sched.observe(Event::Member { peer, downloading: true, held: 0 }, now);
    }
}

/// Near the end of a file the others may have nothing left to fetch but the chunk this node
/// has just landed from the Hub and the few like it: tells them, so they ask this node back now
/// rather than at their next round. Each question goes out on its own task, as this download
/// may end with this very chunk, and asks for no records (its answer is not needed).
fn tell_news(node: &NodeHandle, f: &RemoteFile, count: u32, peers: Vec<PeerId>) {
    let known = Bitmap::full(count);
    for peer in peers {
        let req =
            HaveRequest { etag: f.etag.clone(), size: f.size, known: known.clone(), downloading: true, news: true };
        let node = node.clone();
        tokio::spawn(async move {
            let _ = node.have(peer, req).await;
        });
    }
}

/// Resolves when a peer says it has news of the file ([`crate::swarm::Offer::poked`]); never
/// without an offer.
async fn poked(offer: Option<&crate::swarm::Offer>) {
    match offer {
        Some(o) => o.poked().await,
        None => std::future::pending().await,
    }
}

type Answer = Result<Option<crate::swarm::Availability>, crate::swarm::InvalidAnswer>;

/// The availability questions in flight for one file. Each connected peer is asked again once
/// it has answered and the next refresh comes, and each answer is taken when it arrives. The
/// driver used to ask every peer and wait for all the answers before it did anything else: at
/// 16 nodes on two busy cores a round took 2-7 s, and while it ran no finished chunk was taken
/// in and no fetch started. Chunks a node had fetched from the Hub then sat unreported for up
/// to 20 s, so the others took it for stalled and fetched its chunks from the Hub again.
///
/// Only a peer's first answer is waited for (at most [`FIRST_ANSWERS_WAIT`]): until it comes,
/// nothing is placed, or chunks the peer holds or owns would go to the Hub from here.
#[derive(Default)]
struct Asking<'a> {
    answers: futures::stream::FuturesUnordered<futures::future::BoxFuture<'a, (PeerId, Answer)>>,
    /// Peers with a question in flight.
    asked: HashSet<PeerId>,
    /// Peers asked for the first time, not yet heard from, and until when they are waited for.
    first: HashMap<PeerId, tokio::time::Instant>,
    /// Peers to ask again as soon as their question in flight is answered (it left before
    /// they said they had news).
    again: HashSet<PeerId>,
    /// When each peer ever asked was last asked.
    last: HashMap<PeerId, tokio::time::Instant>,
}

impl<'a> Asking<'a> {
    /// Asks connected peers without a question in flight: each one never asked, and of the
    /// others the [`ASKS_PER_ROUND`] asked longest ago. Forgets peers that left (their records,
    /// and their ownership: a node that left would otherwise own chunks until its stall
    /// timeout).
    fn ask(
        &mut self,
        node: &'a NodeHandle,
        f: &RemoteFile,
        count: u32,
        records: &mut HashMap<PeerId, Vec<Option<Record>>>,
        sched: &mut FileScheduler,
        now: Duration,
    ) -> Vec<Action> {
        let peers = node.peers();
        let mut actions = Vec::new();
        for gone in sched.known_peers().into_iter().filter(|p| !peers.contains(p)) {
            records.remove(&gone);
            actions.extend(sched.observe(Event::PeerGone(gone), now));
        }
        let idle: Vec<PeerId> = peers.into_iter().filter(|p| !node.is_banned(p) && !self.asked.contains(p)).collect();
        let mut asked_before = Vec::new();
        for peer in idle {
            match self.last.get(&peer) {
                None => self.ask_one(node, f, count, records, peer),
                Some(&at) => asked_before.push((peer, at)),
            }
        }
        for peer in longest_ago(asked_before, ASKS_PER_ROUND) {
            self.ask_one(node, f, count, records, peer);
        }
        actions
    }

    /// Asks `peers` out of turn: now, or as soon as their question in flight is answered.
    fn ask_now(
        &mut self,
        node: &'a NodeHandle,
        f: &RemoteFile,
        count: u32,
        records: &HashMap<PeerId, Vec<Option<Record>>>,
        peers: Vec<PeerId>,
    ) {
        let connected = node.peers();
        for peer in peers.into_iter().filter(|p| connected.contains(p)) {
            if self.asked.contains(&peer) {
                self.again.insert(peer);
            } else {
                self.ask_one(node, f, count, records, peer);
            }
        }
    }

    fn ask_one(
        &mut self,
        node: &'a NodeHandle,
        f: &RemoteFile,
        count: u32,
        records: &HashMap<PeerId, Vec<Option<Record>>>,
        peer: PeerId,
    ) {
        self.asked.insert(peer);
        if self.last.insert(peer, tokio::time::Instant::now()).is_none() {
            self.first.insert(peer, tokio::time::Instant::now() + FIRST_ANSWERS_WAIT);
        }
        let mut known = Bitmap::new(count);
        if let Some(v) = records.get(&peer) {
            for (i, r) in v.iter().enumerate() {
                if r.is_some() {
                    known.set(i as u32);
                }
            }
        }
        let req = HaveRequest { etag: f.etag.clone(), size: f.size, known, downloading: true, news: false };
        self.answers.push(Box::pin(async move { (peer, node.have(peer, req).await) }));
    }

    /// The next answer; pending while none is in flight.
    async fn next(&mut self) -> Option<(PeerId, Answer)> {
        if self.answers.is_empty() {
            return std::future::pending().await;
        }
        futures::StreamExt::next(&mut self.answers).await
    }

    /// Records that `peer` answered. True: ask it again now ([`Self::ask_now`]).
    fn answered(&mut self, peer: PeerId) -> bool {
        self.asked.remove(&peer);
        self.first.remove(&peer);
        self.again.remove(&peer)
    }

    /// Whether chunks may be placed: no peer's first answer is awaited any more.
    fn placing(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let before = self.first.len();
        self.first.retain(|_, until| now < *until);
        if self.first.len() < before {
            tracing::debug!(
                peers = before - self.first.len(),
                "placing chunks without the first answers of some peers"
            );
        }
        self.first.is_empty()
    }
}

/// The `n` peers asked longest ago, of `peers` with when each was last asked.
fn longest_ago<T: Ord + Copy>(mut peers: Vec<(PeerId, T)>, n: usize) -> impl Iterator<Item = PeerId> {
    peers.sort_unstable_by_key(|&(_, at)| at);
    peers.into_iter().take(n).map(|(p, _)| p)
}

/// Applies an event, and places chunks unless a peer's first answer is awaited.
fn place(asking: &mut Asking<'_>, sched: &mut FileScheduler, event: Event, now: Duration) -> Vec<Action> {
    if asking.placing() { sched.handle(event, now) } else { sched.observe(event, now) }
}

/// Takes one peer's availability answer: merges its records and feeds the scheduler.
#[allow(clippy::too_many_arguments)]
fn take_answer(
    node: &NodeHandle,
    f: &RemoteFile,
    count: u32,
    peer: PeerId,
    answer: Answer,
    records: &mut HashMap<PeerId, Vec<Option<Record>>>,
    sched: &mut FileScheduler,
    now: Duration,
) -> Vec<Action> {
    let mut actions = Vec::new();
    match answer {
        Ok(Some(crate::swarm::Availability { chunks, downloading, fetching: claimed, hub_bytes, landed })) => {
            let v = records.entry(peer).or_insert_with(|| vec![None; count as usize]);
            let mut have = Bitmap::new(count);
            for (i, r) in chunks {
                if let Some(r) = r
                    && let Some(slot) = v.get_mut(i as usize)
                {
                    *slot = Some(r);
                }
                if v.get(i as usize).is_some_and(|r| r.is_some()) {
                    have.set(i);
                }
            }
            tracing::debug!(%peer, file = %f.path, held = have.count_ones(), "peer availability");
            actions.extend(sched.observe(Event::Have { peer, have, downloading, claimed }, now));
            actions.extend(sched.observe(Event::Progress { peer, bytes: hub_bytes }, now));
            actions.extend(sched.observe(Event::Landed(landed), now));
        }
        Ok(None) => actions.extend(sched.observe(Event::PeerGone(peer), now)),
        Err(why) => {
            node.ban(peer, &format!("sent an invalid availability answer: {why}"));
            records.remove(&peer);
            actions.extend(sched.observe(Event::PeerGone(peer), now));
        }
    }
    actions
}

/// Writes an endgame copy that won (chunk `index`, at `offset`) into the file: takes the chunk
/// over (the copy still writing into the file can no longer write), writes it, and marks it
/// done. `Ok(false)` if the chunk was done already. Blocking.
fn adopt(pf: &PartialFile, index: u32, offset: u64, bytes: &[u8], hash: ChunkHash) -> Result<bool, StoreError> {
    let Some(ticket) = pf.supersede(index) else { return Ok(false) };
    pf.write_at(ticket, offset, bytes)?;
    pf.chunk_done(ticket, hash)?;
    Ok(true)
}

/// One chunk to fetch from one source: into the file, or (`copy`, an endgame duplicate) into
/// memory.
struct Job {
    ctx: Arc<Ctx>,
    f: RemoteFile,
    pf: Arc<PartialFile>,
    fp: Arc<FileProgress>,
    /// Where verified chunks are offered to peers (with a node).
    partial: Option<Offer>,
    index: u32,
    copy: bool,
    got: Arc<AtomicU64>,
    /// Set once the request has a slot.
    started: Arc<AtomicBool>,
}

impl Job {
    /// The one path every chunk takes: a request slot, a writer, the source's bytes, the hash
    /// (checked against `expect`, a peer's record), then the commit into the file, or the bytes
    /// in memory for an endgame copy.
    async fn fetch_from(
        &self,
        source: &impl ChunkSource,
        expect: Option<ChunkHash>,
        also_count: Option<Arc<AtomicU64>>,
    ) -> Result<Fetched, ChunkError> {
        let _slot = self.ctx.slots.take(source.is_peer()).await.map_err(|e| FetchError::Internal(e.to_string()))?;
        self.started.store(true, Relaxed);
        let range = ChunkLayout::for_len(self.f.size)
            .range(self.index)
            .ok_or_else(|| FetchError::Internal(format!("chunk {} out of range", self.index)))?;
        let w = if self.copy {
            ChunkWriter::in_memory(self.index, range)
        } else if source.resumes() {
            ChunkWriter::resume(self.pf.clone(), self.index, range).await?
        } else {
            // Starts the chunk over: what an interrupted Hub fetch had written no longer counts.
            self.ctx.progress.take_back(&self.fp, self.pf.kept(self.index));
            ChunkWriter::new(self.pf.clone(), self.index, range)
        };
        let mut w = w.counting(self.got.clone()).also_counting(also_count);
        source.fill(&mut w, &self.ctx, &self.fp).await?;
        let hash = w.finish().await?;
        if expect.is_some_and(|e| e != hash) {
            return Err(PeerFetchError::BadData.into());
        }
        if self.copy {
            return Ok(Fetched::Copy(w.into_bytes(), hash));
        }
        w.commit(hash).await?;
        Ok(Fetched::Written(hash))
    }

    /// From the Hub. A chunk written into the file is then signed and offered, after a check
    /// against the record a peer gave for it in an earlier round (`check`).
    async fn hub_chunk(self, source: &HubSource, check: Option<(PeerId, Record)>) -> Result<Fetched, ChunkError> {
        // Announced while in flight, so that a node deciding now waits for it instead of fetching it.
        struct Claim<'a>(&'a Offer, u32);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                self.0.claim(self.1, false);
            }
        }
        let index = self.index;
        let _claim = self.partial.as_ref().filter(|_| !self.copy).map(|p| {
            p.claim(index, true);
            Claim(p, index)
        });
        // Bytes arriving are announced as this node's Hub progress (so it is not taken for stalled).
        let fetched = self.fetch_from(source, None, self.partial.as_ref().map(Offer::hub_bytes)).await?;
        if let (Fetched::Written(hash), Some(node)) = (&fetched, &self.ctx.node) {
            if let Some((server, record)) = check
                && record.hash() != *hash
            {
                // The Hub's bytes decide: whoever signed the false record, and whoever served it, lied.
                let why = format!("signed a false hash for chunk {index} of {}", self.f.path);
                node.ban(record.signer(), &why);
                if server != record.signer() {
                    node.ban(server, &format!("served a chunk of {} under a false record", self.f.path));
                }
            }
            if let Some(p) = &self.partial {
                p.add_own(index, *hash);
            }
        }
        Ok(fetched)
    }

    /// From a peer, checked against the peer's record before it counts, then offered under it.
    async fn peer_chunk(self, node: &NodeHandle, peer: PeerId, record: Record) -> Result<Fetched, ChunkError> {
        let fetched = self.fetch_from(&PeerSource { node, peer, f: &self.f }, Some(record.hash()), None).await?;
        if let (Fetched::Written(_), Some(p)) = (&fetched, &self.partial) {
            p.add_relayed(self.index, record);
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_asked_in_turn_a_bounded_number_per_round() {
        // 8 peers or fewer: all of them every round.
        let few: Vec<_> = (0..ASKS_PER_ROUND as u32).map(|i| (PeerId::random(), i)).collect();
        assert_eq!(longest_ago(few, ASKS_PER_ROUND).count(), ASKS_PER_ROUND);
        // 31 peers, asked at once when first met: then at most 8 a round, those asked longest
        // ago first, so each is asked again within 4 rounds and none twice before all once.
        let peers: Vec<PeerId> = (0..31).map(|_| PeerId::random()).collect();
        let mut last: HashMap<PeerId, u32> = peers.iter().map(|&p| (p, 0)).collect();
        let mut asked_at: HashMap<PeerId, Vec<u32>> = HashMap::new();
        for round in 1..=40 {
            let due: Vec<_> = longest_ago(last.iter().map(|(&p, &t)| (p, t)).collect(), ASKS_PER_ROUND).collect();
            assert_eq!(due.len(), ASKS_PER_ROUND, "round {round}");
            for p in due {
                last.insert(p, round);
                asked_at.entry(p).or_default().push(round);
            }
        }
        for p in &peers {
            let rounds = &asked_at[p];
            assert!(rounds.len() >= 10, "{p} asked in rounds {rounds:?} only");
            assert!(rounds[0] <= 4, "{p} first asked again in round {}", rounds[0]);
            assert!(rounds.windows(2).all(|w| w[1] - w[0] <= 4), "{p} waited more than 4 rounds: {rounds:?}");
        }
    }

    #[test]
    fn files_fetched_at_once_share_the_hub_window() {
        let sharers = AtomicU32::new(0);
        assert_eq!(hub_window(32, &sharers), 16, "no file counted: the whole budget");
        let a = HubShare::join(&sharers);
        assert_eq!(hub_window(32, &sharers), 16, "one file has it all");
        let b = HubShare::join(&sharers);
        assert_eq!(hub_window(32, &sharers), 8, "two files: half each");
        let many: Vec<_> = (0..30).map(|_| HubShare::join(&sharers)).collect();
        assert_eq!(hub_window(32, &sharers), 1, "never below one request per file");
        drop(many);
        drop(b);
        assert_eq!(hub_window(32, &sharers), 16, "a file that ends gives its share back");
        drop(a);
        assert_eq!(sharers.load(Relaxed), 0);
        assert_eq!(hub_window(1, &sharers), 1, "one worker still gets one request");
    }
}
