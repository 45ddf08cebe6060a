//! Fetching one file's chunks through the swarm: peers first, the Hub second.
//!
//! Drives a [`FileScheduler`] with real sources. Availability is asked of every connected peer
//! (and of DHT providers) when the file starts and again every [`REFRESH`] while chunks are
//! missing, so chunks that appear at peers mid-download are taken from them. Every chunk from a
//! peer is checked against the peer's own signed record before it counts; a mismatch bans the
//! peer. Chunks from the Hub are signed by this node; the file is offered to peers chunk by chunk
//! as chunks are verified.

use super::chunk::ChunkWriter;
use super::{Ctx, FetchError, blocking};
use crate::fetch::chunk::HubSource;
use crate::fetch::progress::FileProgress;
use crate::hub::RemoteFile;
use crate::scheduler::{Action, Event, Fault, FileScheduler, Limits, Source};
use crate::store::PartialFile;
use crate::swarm::NodeHandle;
use crate::swarm::holdings::{Partial, Record};
use crate::swarm::transfer::PeerFetchError;
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::chunk::ChunkLayout;
use swarm_protocol::wire::{Bitmap, ChunkRequest, HaveRequest};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How often availability is asked again while a file is incomplete.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The same, while other nodes download the file at the same time.
pub const REFRESH_SHARED: Duration = Duration::from_millis(250);
/// How long an offline download waits for some peer to hold a missing chunk.
pub const OFFLINE_PATIENCE: Duration = Duration::from_secs(10);
/// Longest wait for the DHT's answer (and for connections to the holders it names).
pub const PROVIDER_WAIT: Duration = Duration::from_secs(2);

/// Chunks of this file that came from peers in this run: (server, record), for settling a
/// whole-file mismatch against the Hub's bytes.
pub type Suspects = Vec<Option<(PeerId, Record)>>;

struct Outcome {
    index: u32,
    source: Source,
    result: Result<(), PeerFetchError>,
    /// Bytes counted as arrived that turned out wrong (taken back from progress).
    wrong_bytes: u64,
}

/// Fetches the missing chunks of `f` into `pf`. With `hub_only` (the second round after a
/// whole-file mismatch), peers are not asked, and every chunk the Hub sends is compared with the
/// record a peer gave for it in the first round: a difference bans the record's signer and the
/// peer that served it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_chunks(
    ctx: &Arc<Ctx>,
    node: &NodeHandle,
    f: &RemoteFile,
    pf: &Arc<PartialFile>,
    source: Option<&Arc<HubSource>>,
    fp: &Arc<FileProgress>,
    wake: &Arc<Notify>,
    suspects: &mut Suspects,
    hub_only: bool,
) -> Result<(), FetchError> {
    let layout = ChunkLayout::for_len(f.size);
    let count = layout.count();
    let partial = node.holdings().add_partial(&f.etag, f.size, pf.clone());
    let missing = pf.missing();
    let done = (0..count).filter(|i| !missing.contains(i));
    let limits =
        Limits { hub: ctx.max_workers as u32, stall_after: Limits::stall_for(layout.chunk_size), ..Limits::default() };
    let started = tokio::time::Instant::now();
    let now = || started.elapsed();
    let salt = crate::scheduler::salt_of(f.etag.as_str());
    let mut sched = FileScheduler::new(node.peer_id(), salt, count, done, source.is_some(), limits);
    let mut stuck_since: Option<tokio::time::Instant> = None;
    if suspects.len() != count as usize {
        *suspects = vec![None; count as usize];
    }
    let previous: Suspects =
        if hub_only { std::mem::replace(suspects, vec![None; count as usize]) } else { Vec::new() };
    let mut records: HashMap<PeerId, Vec<Option<Record>>> = HashMap::new();
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut next_refresh = tokio::time::Instant::now();
    if !hub_only {
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

    let mut actions = if hub_only { sched.assign(now()) } else { Vec::new() };
    let result = loop {
        let mut queue: std::collections::VecDeque<Action> = std::mem::take(&mut actions).into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Ban(p) => node.ban(p, "sent bytes that do not match their record"),
                Action::Fetch { index, source: Source::Hub } => {
                    tracing::debug!(file = %f.path, chunk = index, "from the Hub");
                    let Some(src) = source.cloned() else { continue };
                    let (ctx, pf, fp, wake, partial) =
                        (ctx.clone(), pf.clone(), fp.clone(), wake.clone(), partial.clone());
                    let (node, f, check) = (node.clone(), f.clone(), previous.get(index as usize).cloned().flatten());
                    tasks.spawn(async move {
                        let r = hub_chunk(&ctx, &node, &f, &pf, &src, &fp, &partial, index, check).await;
                        wake.notify_one();
                        Outcome { index, source: Source::Hub, result: r.map_err(PeerFetchError::Local), wrong_bytes: 0 }
                    });
                }
                Action::Fetch { index, source: Source::Peer(peer) } => {
                    let Some(record) = records.get(&peer).and_then(|v| v.get(index as usize)).cloned().flatten() else {
                        queue.extend(sched.handle(Event::Failed { index, peer, fault: Fault::Unavailable }, now()));
                        continue;
                    };
                    let (ctx, pf, fp, wake, partial, node, f) =
                        (ctx.clone(), pf.clone(), fp.clone(), wake.clone(), partial.clone(), node.clone(), f.clone());
                    tasks.spawn(async move {
                        let out = peer_chunk(&ctx, &node, &f, &pf, &fp, &partial, index, peer, record).await;
                        wake.notify_one();
                        out
                    });
                }
            }
        }
        if sched.is_complete() {
            break Ok(());
        }
        // Offline, no peer holding what is missing: wait a while for one to appear, then say so.
        if source.is_none() && sched.is_stuck() && tasks.is_empty() {
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
                    Err(e) => break Err(FetchError::Internal(format!("chunk task failed: {e}"))),
                };
                if out.wrong_bytes > 0 {
                    ctx.progress.take_back(fp, out.wrong_bytes);
                }
                match (out.source, out.result) {
                    (source, Ok(())) => {
                        if let Source::Peer(p) = source {
                            suspects[out.index as usize] = records.get(&p).and_then(|v| v.get(out.index as usize)).cloned().flatten().map(|r| (p, r));
                        }
                        actions = sched.handle(Event::Done { index: out.index, source }, now());
                    }
                    (_, Err(PeerFetchError::Local(e))) => break Err(e),
                    (Source::Peer(peer), Err(e @ (PeerFetchError::Unavailable(_) | PeerFetchError::BadData))) => {
                        let fault = if matches!(e, PeerFetchError::BadData) { Fault::BadData } else { Fault::Unavailable };
                        let why = e.to_string();
                        tracing::debug!(%peer, chunk = out.index, %why, "peer fetch failed");
                        actions = sched.handle(Event::Failed { index: out.index, peer, fault }, now());
                    }
                    (Source::Hub, Err(e)) => break Err(FetchError::Internal(e.to_string())),
                }
            }
            _ = tokio::time::sleep_until(next_refresh), if !hub_only => {
                // Faster while others download the same file: their chunks are ours to take as
                // soon as they land.
                next_refresh = tokio::time::Instant::now() + if sched.interested() > 0 { REFRESH_SHARED } else { REFRESH };
                actions = ask_peers(node, f, count, &node.peers(), &mut records, &mut sched, now()).await;
                actions.extend(sched.assign(now()));
            }
        }
    };
    tasks.abort_all();
    let takeovers = u64::from(sched.takeovers());
    if takeovers > 0 {
        tracing::info!(file = %f.path, chunks = takeovers, "took over chunks of nodes that left or stalled");
        ctx.progress.takeovers.fetch_add(takeovers, std::sync::atomic::Ordering::Relaxed);
        node.count_takeovers(takeovers);
    }
    if result.is_err() {
        node.holdings().finish_partial(&f.etag, None);
    }
    result
}

/// Asks peers what they hold, merges their records, and feeds the scheduler.
async fn ask_peers(
    node: &NodeHandle,
    f: &RemoteFile,
    count: u32,
    peers: &[PeerId],
    records: &mut HashMap<PeerId, Vec<Option<Record>>>,
    sched: &mut FileScheduler,
    now: Duration,
) -> Vec<Action> {
    let asks = peers.iter().filter(|p| !node.is_banned(p)).map(|&peer| {
        let mut known = Bitmap::new(count);
        if let Some(v) = records.get(&peer) {
            for (i, r) in v.iter().enumerate() {
                if r.is_some() {
                    known.set(i as u32);
                }
            }
        }
        let req = HaveRequest { etag: f.etag.clone(), size: f.size, known };
        async move { (peer, node.have(peer, req).await) }
    });
    let answers = futures::future::join_all(asks).await;
    let mut actions = Vec::new();
    // Peers that disconnected are not asked; forget them here, or a node that left would keep
    // owning chunks (and count as a holder) until its stall timeout.
    for gone in sched.known_peers().into_iter().filter(|p| !peers.contains(p)) {
        records.remove(&gone);
        actions.extend(sched.observe(Event::PeerGone(gone), now));
    }
    for (peer, answer) in answers {
        match answer {
            Ok(Some((list, downloading, claimed))) => {
                let v = records.entry(peer).or_insert_with(|| vec![None; count as usize]);
                let mut have = Bitmap::new(count);
                for (i, r) in list {
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
            }
            Ok(None) => actions.extend(sched.observe(Event::PeerGone(peer), now)),
            Err(why) => {
                node.ban(peer, &format!("sent an invalid availability answer: {why}"));
                records.remove(&peer);
                actions.extend(sched.observe(Event::PeerGone(peer), now));
            }
        }
    }
    actions
}

#[allow(clippy::too_many_arguments)]
async fn hub_chunk(
    ctx: &Arc<Ctx>,
    node: &NodeHandle,
    f: &RemoteFile,
    pf: &Arc<PartialFile>,
    source: &HubSource,
    fp: &Arc<FileProgress>,
    partial: &Partial,
    index: u32,
    check: Option<(PeerId, Record)>,
) -> Result<(), FetchError> {
    // Announced while in flight, so that a node deciding now waits for it instead of fetching it.
    struct Claim<'a>(&'a Partial, u32);
    impl Drop for Claim<'_> {
        fn drop(&mut self) {
            self.0.set_fetching(self.1, false);
        }
    }
    partial.set_fetching(index, true);
    let _claim = Claim(partial, index);
    let _slot = ctx.slots.acquire().await.map_err(|e| FetchError::Internal(e.to_string()))?;
    let range = ChunkLayout::for_len(f.size)
        .range(index)
        .ok_or_else(|| FetchError::Internal(format!("chunk {index} out of range")))?;
    let mut w = ChunkWriter::new(pf.clone(), index, range);
    source.fetch(&mut w, &ctx.throttle, &ctx.progress, fp).await?;
    let hash = w.finish().await?;
    if let Some((server, record)) = check
        && record.sha256 != hash
    {
        // The Hub's bytes decide: whoever signed the false record, and whoever served it, lied.
        let why = format!("signed a false hash for chunk {index} of {}", f.path);
        node.ban(record.signer.peer, &why);
        if server != record.signer.peer {
            node.ban(server, &format!("served a chunk of {} under a false record", f.path));
        }
    }
    let p = pf.clone();
    blocking(move || p.chunk_done(index, hash)).await??;
    partial.add(index, node.holdings().sign(&f.etag, f.size, index, hash));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn peer_chunk(
    ctx: &Arc<Ctx>,
    node: &NodeHandle,
    f: &RemoteFile,
    pf: &Arc<PartialFile>,
    fp: &Arc<FileProgress>,
    partial: &Partial,
    index: u32,
    peer: PeerId,
    record: Record,
) -> Outcome {
    let mut got = 0u64;
    let result = async {
        let _slot = ctx.slots.acquire().await.map_err(|e| FetchError::Internal(e.to_string()))?;
        let range = ChunkLayout::for_len(f.size)
            .range(index)
            .ok_or_else(|| FetchError::Internal(format!("chunk {index} out of range")))?;
        let mut w = ChunkWriter::new(pf.clone(), index, range);
        let req = ChunkRequest { etag: f.etag.clone(), size: f.size, index };
        let progress = ctx.progress.clone();
        node.transfer()
            .fetch(peer, &req, &mut w, &ctx.throttle, |n| {
                got += n;
                progress.received_from_peer(fp, n);
            })
            .await?;
        let hash = w.finish().await?;
        if hash != record.sha256 {
            return Err(PeerFetchError::BadData);
        }
        let p = pf.clone();
        blocking(move || p.chunk_done(index, hash)).await?.map_err(FetchError::from)?;
        partial.add(index, record);
        Ok(())
    }
    .await;
    let wrong_bytes = if result.is_err() { got } else { 0 };
    Outcome { index, source: Source::Peer(peer), result, wrong_bytes }
}
