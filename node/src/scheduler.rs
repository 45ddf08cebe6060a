//! Which chunk of a file to fetch next, and from whom: a pure state machine.
//!
//! [`FileScheduler::handle`] takes an [`Event`] (a peer's availability, a chunk done or failed, a
//! peer gone) and returns the [`Action`]s to take. It does no I/O and reads no clock, so it is
//! tested with plain values and driven by [`crate::fetch`] over real sockets.
//!
//! Rules ("peers first"):
//! - A chunk that some usable peer holds is fetched from a peer, never from the Hub: rarest
//!   chunks first, each from the holder with the fewest requests in flight, at most
//!   [`Limits::per_peer`] at a time per peer.
//! - Chunks no usable peer holds go to the Hub, but only by their **owner**: when
//!   several nodes download the file at once, each such chunk belongs to one of them, chosen by
//!   rendezvous hashing of (node, file, chunk) over the interested nodes this node sees
//!   (itself included). The owner fetches it from the Hub; everyone else waits for it to appear
//!   at the owner and takes it from there, chunk by chunk. Alone, a node owns everything.
//!   Hub requests are at most [`Limits::hub`] at a time (shared out among interested nodes), and
//!   only if the Hub is allowed (offline runs finish from peers or not at all). Across the swarm,
//!   only the first [`Limits::hub_window`] chunks that have not left the Hub may be fetched from
//!   it: the Hub work in flight stays bounded whatever the number of nodes, and chunks land one
//!   after another rather than all together at the end. What has left the Hub is what this
//!   node holds, what its peers hold, and what they said has ([`Event::Landed`]), so the window
//!   slides for nodes that do not see each other. Over the file's last chunks the window
//!   narrows to half (`FileScheduler::end_window`).
//! - An owner that leaves loses its chunks at once (they hash to the others); one that owes
//!   Hub work (a chunk nobody holds that it claims, or an unclaimed one of its own inside the
//!   Hub window) and has made no progress for [`Limits::stall_after`] since it began to owe it
//!   is passed over until it progresses again. An owner whose chunks lie past the window waits
//!   for its turn and is not judged. Progress is bytes arriving from the Hub ([`Event::Progress`], announced
//!   with availability), not only chunks completed: behind a slow, shared uplink a chunk takes
//!   long, and judging owners by chunks passed healthy ones over and made the uplink busier
//!   still. Chunks fetched from the Hub that this node no longer owns (nodes it has just met
//!   outscore it) are released ([`Action::Release`]): the driver stops those of which little has
//!   arrived, and their owners fetch them; the others finish here, claimed, so nobody fetches
//!   them twice. Chunks fetched from the Hub that another node owned are counted as
//!   take-overs: the only way (besides two views of the membership disagreeing for a moment)
//!   that a chunk crosses the uplink twice.
//! - A peer that sent bytes not matching their record is banned: none of its chunks are asked
//!   for again. A peer that fails otherwise (gone, no longer holds it) loses the bit for
//!   that chunk, and after [`Limits::max_peer_failures`] failures in a row, every bit until it
//!   next says what it holds; it keeps its claims and its membership. A peer
//!   that answers busy keeps its chunks and is left alone for [`BUSY_BACKOFF`]: a chunk only
//!   it holds waits for it (or another holder) rather than go to the Hub, for up to
//!   [`BUSY_PATIENCE`] of nothing but busy answers; after that busy counts as a failure.
//! - One source per chunk at a time, until the endgame: when nothing is left to start and
//!   nothing waits for another owner's Hub fetch (every chunk not done is in flight), a chunk
//!   in flight for three times as long as a peer chunk usually takes (at least
//!   [`ENDGAME_MIN_AGE`]) is asked of a second source too: another peer that holds it, or, once the first source has been slow for [`Limits::stall_after`],
//!   the Hub. Not while its bytes arrive fast enough to finish before a fresh copy would (its
//!   rate so far, from the share in that the driver reports with [`FileScheduler::arrived`]). A chunk this node fetches from the Hub and nobody holds is asked of the Hub again
//!   on a second connection: alone on the file, once it is three times as old as a Hub chunk
//!   usually takes (at least [`ENDGAME_FIRST_AGE`]); with other nodes downloading it, only after
//!   [`Limits::stall_after`] too, since they share the uplink. The first verified copy wins and
//!   the other is cancelled. The second copy is
//!   received into memory and written only if it wins (the store refuses the loser's writes), so
//!   two writers never share a chunk's bytes. Endgame duplicates are counted.

use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use swarm_protocol::rendezvous;
use swarm_protocol::wire::Bitmap;

/// Where a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Hub (or its CDN).
    Hub,
    /// A peer.
    Peer(PeerId),
}

/// How a fetch failed, from the scheduler's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The peer could not deliver (gone, not held, timeout): try elsewhere.
    Unavailable,
    /// The peer holds the chunk but had no upload slot free (or dropped the streams opened to
    /// it, its queue of new streams full): it keeps the chunk, and is asked
    /// again after [`BUSY_BACKOFF`] (or another holder is). Taking "busy" for "does not hold
    /// it" sent chunks whose only holder was busy to the Hub: 16 nodes at 100 Mbit/s pulled up
    /// to 1.062x the repo from the Hub, every extra chunk right after a "busy".
    Busy,
    /// The peer delivered bytes that do not match their signed record: ban it.
    BadData,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer's current availability for this file (replaces what it said before).
    Have {
        /// Who.
        peer: PeerId,
        /// Chunks it holds, verified, with records we accept.
        have: Bitmap,
        /// Whether it is downloading the file too (a candidate owner).
        downloading: bool,
        /// Chunks it is fetching from the Hub right now (nobody else should).
        claimed: Bitmap,
    },
    /// A peer left (disconnected, or banned elsewhere).
    PeerGone(PeerId),
    /// Membership news from beyond this node's neighbours (gossip, a DHT): a node downloading
    /// the file, and how many chunks it holds, without its availability. It can own chunks.
    Member {
        /// Who.
        peer: PeerId,
        /// Whether it downloads the file.
        downloading: bool,
        /// Chunks it holds (for stall detection).
        held: u32,
    },
    /// How many bytes a peer downloading the file has received from the Hub for it so far (a
    /// counter that only grows): for stall detection.
    Progress {
        /// Who.
        peer: PeerId,
        /// Bytes.
        bytes: u64,
    },
    /// Chunks that have left the Hub: held by some node, as a peer heard it (its
    /// [`FileScheduler::landed`]), perhaps from nodes this one does not talk to. A hint, only
    /// used to slide the swarm-wide Hub window ([`Limits::hub_window`]) past chunks that no
    /// longer need the Hub; whether a chunk is fetched from a peer or the Hub still depends
    /// on who this node sees holding it.
    Landed(Bitmap),
    /// The driver stopped a Hub fetch this node was asked to [`Action::Release`].
    Released {
        /// Which chunk.
        index: u32,
    },
    /// A chunk arrived and was verified.
    Done {
        /// Which.
        index: u32,
        /// From where.
        source: Source,
    },
    /// A peer fetch failed. (Hub failures end the download; they are not events.)
    Failed {
        /// Which chunk.
        index: u32,
        /// Which peer.
        peer: PeerId,
        /// How.
        fault: Fault,
    },
}

/// Something to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fetch chunk `index` from `source`.
    Fetch {
        /// Which.
        index: u32,
        /// From where.
        source: Source,
    },
    /// Endgame: fetch chunk `index` from `source` too, into memory; it is written only if it
    /// arrives (verified) before the copy already in flight. `source` may be the first copy's
    /// (the Hub, on a second connection).
    Duplicate {
        /// Which.
        index: u32,
        /// From where.
        source: Source,
    },
    /// Stop fetching chunk `index` from `source`: another copy won. When both copies came
    /// from the same source (the Hub), this is the one that did not report `Done`.
    Cancel {
        /// Which.
        index: u32,
        /// From where.
        source: Source,
    },
    /// Chunk `index`, fetched from the Hub now, is no longer this node's: stop the fetch if
    /// little of it has arrived (then report [`Event::Released`]), or let it finish. Asked once
    /// per fetch.
    Release {
        /// Which.
        index: u32,
    },
    /// Stop using this peer for this file (banned).
    Ban(PeerId),
}

/// Concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per peer.
    pub per_peer: u32,
    /// Requests in flight to the Hub for this file, from this node.
    pub hub: u32,
    /// Requests in flight to the Hub for this file across the swarm, when other nodes download
    /// it too: only the first `hub_window` chunks (in file order) that no node holds yet may be
    /// fetched from the Hub, each by its owner. However many nodes there are, the uplink then
    /// carries about this many requests, and chunks arrive one after another, so that the
    /// nodes pass the first ones round while the Hub still sends the last. The driver shares
    /// one budget among the files it fetches at once ([`FileScheduler::set_hub_window`]).
    pub hub_window: u32,
    /// Failures in a row after which a peer is asked for nothing until its next availability
    /// answer.
    pub max_peer_failures: u32,
    /// How long an owner may go without a new chunk before its chunks are taken over.
    pub stall_after: Duration,
    /// For this long after the file starts, every known peer counts as a node about to download
    /// it when the Hub requests are shared out: peers that start the file a moment later say so
    /// only when they ask, and a node that began alone with all its connections threw away
    /// what they had in flight (bytes a CDN has sent are counted whether or not they arrive).
    pub warmup: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_peer: 4,
            hub: 16,
            hub_window: 16,
            max_peer_failures: 3,
            stall_after: Duration::from_secs(20),
            warmup: Duration::ZERO,
        }
    }
}

impl Limits {
    /// The stall timeout for chunks of `chunk_size` bytes: 10 s plus the chunk at 512 KiB/s.
    pub fn stall_for(chunk_size: u64) -> Duration {
        Duration::from_secs(10) + Duration::from_millis(chunk_size / 512)
    }
}

/// Rendezvous-hash score of `node` for chunk `index` of the file with `salt`: the highest
/// score owns the chunk. The rule is [`swarm_protocol::rendezvous`]'s, shared by every node.
pub fn score(node: &PeerId, salt: u64, index: u32) -> u64 {
    rendezvous::score(node_hash(node), salt, index)
}

fn score_hashed(node_hash: u64, salt: u64, index: u32) -> u64 {
    rendezvous::score(node_hash, salt, index)
}

/// A 64-bit salt for a file (from its ETag), so that different files spread differently.
pub fn salt_of(etag: &str) -> u64 {
    rendezvous::salt_of(etag)
}

fn node_hash(node: &PeerId) -> u64 {
    rendezvous::node_hash(&node.to_bytes())
}

#[derive(Debug, Clone, Copy)]
struct Interest {
    held: u32,
    /// Bytes it has received from the Hub for the file, as last heard.
    progress: u64,
    last_growth: Duration,
    /// Since when it has owed Hub work without a break, as seen at the stall checks.
    owing_since: Option<Duration>,
    stalled: bool,
    /// [`node_hash`] of the peer, computed once.
    hash: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Missing,
    /// Being fetched from `source` since `since`; in the endgame, also from `dup`. `arrived`:
    /// thousandths of the chunk `source` has delivered, as last reported ([`FileScheduler::arrived`]).
    InFlight {
        source: Source,
        since: Duration,
        dup: Option<Source>,
        arrived: u16,
    },
    Done,
}

/// An endgame duplicate is never asked before a chunk has been in flight this long: a chunk
/// takes tens of milliseconds on a LAN, and several nodes pulling a fresh chunk from its owner
/// at once slow each other down without anything being wrong (at 250 ms, 8 nodes behind a
/// 100 Mbit/s uplink made 103 needless copies in one run).
pub const ENDGAME_MIN_AGE: Duration = Duration::from_secs(1);
/// Nor, before any peer chunk has arrived to tell how long one takes, before this long.
pub const ENDGAME_FIRST_AGE: Duration = Duration::from_secs(2);
/// How long a peer that answered busy is left alone (its chunks stay its own meanwhile).
pub const BUSY_BACKOFF: Duration = Duration::from_millis(200);
/// How long a peer may answer nothing but busy before its busy counts as "cannot deliver": a
/// peer that announces chunks and never serves them must not hold a download up for good. As
/// long as an owner's stall timeout, not shorter: a chunk only a busy peer holds then goes to
/// the Hub. At 16 nodes the first node holds the first chunks alone for a while and answers
/// busy to most askers for 5-10 s; at 5 s, 4 to 6 of its chunks per run crossed the uplink a
/// second time.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Peer {
    have: Bitmap,
    claimed: Bitmap,
    in_flight: u32,
    failures: u32,
    /// Not asked for chunks before this (it answered busy).
    busy_until: Duration,
    /// Its first busy answer since it last delivered a chunk.
    busy_since: Option<Duration>,
}

/// The schedule of one file's chunks.
#[derive(Debug)]
pub struct FileScheduler {
    chunks: Vec<Chunk>,
    peers: HashMap<PeerId, Peer>,
    banned: HashSet<PeerId>,
    hub_in_flight: u32,
    hub_allowed: bool,
    limits: Limits,
    me: PeerId,
    salt: u64,
    /// Peers downloading this file now, and how their availability grows.
    interested: HashMap<PeerId, Interest>,
    /// Every peer seen downloading this file (for counting take-overs).
    ever_interested: HashSet<PeerId>,
    takeovers: u32,
    me_hash: u64,
    /// Owner of each chunk under the current membership, with its score; kept current as
    /// members come (compared with the cached owner) and go (only their chunks are forgotten).
    owner_cache: Vec<Option<(u64, PeerId)>>,
    /// Interested peers not passed over (kept with the membership).
    live_interested: u32,
    /// When owners were last checked for stalls (at most once a second: it walks the members).
    last_stall_check: Option<Duration>,
    /// How long a chunk from a peer usually takes (a moving average).
    typical_peer_chunk: Option<Duration>,
    /// How long a chunk from the Hub usually takes (a moving average).
    typical_hub_chunk: Option<Duration>,
    /// Endgame duplicates asked for.
    duplicates: u32,
    /// When placement first ran (for [`Limits::warmup`]).
    started: Option<Duration>,
    /// Within [`Limits::warmup`] of `started`.
    warming_up: bool,
    /// Hub fetches this node was asked to release and has not heard back about.
    release_asked: HashSet<u32>,
    /// Hub fetches released (stopped early because another node owns the chunk now).
    released: u32,
    /// Bumped whenever the owners may have changed (members come, go, stall or revive).
    membership: u64,
    /// [`Self::membership`] when in-flight Hub fetches were last checked for release.
    release_checked: u64,
    /// Chunks peers said have left the Hub ([`Event::Landed`]).
    landed: Bitmap,
    /// Why the last placement started no more Hub fetches (for the log).
    hub_wait: HubWait,
}

/// What kept chunks from the Hub at the last placement: the chunks no peer holds, by reason.
/// Logged by the driver when it changes, to tell an owner that waits from one that stalls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubWait {
    /// Owned by another node.
    pub others: u32,
    /// Owned here, but another node already fetches them.
    pub claimed: u32,
    /// Owned here, past the swarm-wide window.
    pub beyond_window: u32,
    /// The first chunk past the swarm-wide window.
    pub window_end: u32,
    /// Hub requests in flight after placing.
    pub in_flight: u32,
}

impl FileScheduler {
    /// A schedule for this node (`me`) of a file of `count` chunks with rendezvous `salt`, of
    /// which `done` are already held.
    pub fn new(
        me: PeerId,
        salt: u64,
        count: u32,
        done: impl IntoIterator<Item = u32>,
        hub_allowed: bool,
        limits: Limits,
    ) -> Self {
        let mut chunks = vec![Chunk::Missing; count as usize];
        for i in done {
            if let Some(c) = chunks.get_mut(i as usize) {
                *c = Chunk::Done;
            }
        }
        Self {
            chunks,
            peers: HashMap::new(),
            banned: HashSet::new(),
            hub_in_flight: 0,
            hub_allowed,
            limits,
            me,
            salt,
            interested: HashMap::new(),
            ever_interested: HashSet::new(),
            takeovers: 0,
            me_hash: node_hash(&me),
            owner_cache: vec![None; count as usize],
            live_interested: 0,
            last_stall_check: None,
            typical_peer_chunk: None,
            typical_hub_chunk: None,
            duplicates: 0,
            release_asked: HashSet::new(),
            started: None,
            warming_up: false,
            released: 0,
            membership: 0,
            release_checked: 0,
            landed: Bitmap::new(count),
            hub_wait: HubWait::default(),
        }
    }

    /// Chunk `index`'s first source has delivered `per_mille` thousandths of it (the driver
    /// reports this before each placement round). The endgame asks no second source for a
    /// chunk whose bytes arrive fast enough to finish before a fresh copy would.
    pub fn arrived(&mut self, index: u32, per_mille: u16) {
        if let Some(Chunk::InFlight { arrived, .. }) = self.chunks.get_mut(index as usize) {
            *arrived = per_mille.min(1000);
        }
    }

    /// Chunk `index`'s first source has not begun: its request waits for a slot of the
    /// download. Its age counts from when it begins, or the endgame would take a request queued
    /// behind others for a slow source (8 nodes at 400 Mbit/s: 1-11 needless copies per run).
    pub fn waiting(&mut self, index: u32, now: Duration) {
        if let Some(Chunk::InFlight { since, dup: None, .. }) = self.chunks.get_mut(index as usize) {
            *since = now;
        }
    }

    /// Endgame duplicates asked for (second sources for a chunk already in flight).
    pub fn duplicates(&self) -> u32 {
        self.duplicates
    }

    /// Chunks this node fetched from the Hub that another node owned (it left or stalled).
    pub fn takeovers(&self) -> u32 {
        self.takeovers
    }

    /// What kept chunks from the Hub at the last placement.
    pub fn hub_wait(&self) -> HubWait {
        self.hub_wait
    }

    /// Hub fetches stopped early because nodes met mid-file own the chunk.
    pub fn released(&self) -> u32 {
        self.released
    }

    /// Peers downloading the file now, as this node sees them.
    pub fn interested(&self) -> usize {
        self.interested.len()
    }

    /// The peers downloading the file now, as this node sees them.
    pub fn interested_peers(&self) -> Vec<PeerId> {
        self.interested.keys().copied().collect()
    }

    /// Whether the swarm-wide Hub window has reached the end of the file: every chunk that has
    /// not left the Hub may be in flight from it now, so each landing may be one the others
    /// wait for.
    pub fn window_at_end(&self) -> bool {
        let count = self.chunks.len() as u32;
        count.saturating_sub(self.landed().count_ones()) <= self.limits.hub_window
    }

    /// Who fetches chunk `index` from the Hub, among this node and the interested peers not
    /// passed over as stalled.
    pub fn owner(&self, index: u32) -> PeerId {
        if let Some(Some((_, o))) = self.owner_cache.get(index as usize) {
            return *o;
        }
        let live = self.interested.iter().filter(|(_, i)| !i.stalled).map(|(p, i)| (i.hash, p));
        best(self.me_hash, &self.me, live, self.salt, index)
    }

    fn owner_cached(&mut self, index: u32) -> PeerId {
        let o = self.owner(index);
        let h = if o == self.me { self.me_hash } else { self.interested.get(&o).map_or(0, |i| i.hash) };
        if let Some(slot) = self.owner_cache.get_mut(index as usize) {
            *slot = Some((score_hashed(h, self.salt, index), o));
        }
        o
    }

    /// A candidate owner arrived: it takes the chunks where it outscores the cached owner.
    fn member_joined(&mut self, peer: PeerId, hash: u64) {
        self.membership += 1;
        let salt = self.salt;
        for (i, slot) in self.owner_cache.iter_mut().enumerate() {
            if let Some((s, _)) = slot
                && score_hashed(hash, salt, i as u32) > *s
            {
                *slot = Some((score_hashed(hash, salt, i as u32), peer));
            }
        }
    }

    /// A candidate owner left (or was passed over): its chunks are worked out again.
    fn member_left(&mut self, peer: &PeerId) {
        self.membership += 1;
        for slot in self.owner_cache.iter_mut() {
            if slot.is_some_and(|(_, o)| o == *peer) {
                *slot = None;
            }
        }
    }

    /// Records that `peer` downloads the file and holds `held` chunks.
    fn interest(&mut self, peer: PeerId, held: u32, now: Duration) {
        self.ever_interested.insert(peer);
        let mut changed = false;
        let mut revived = false;
        let i = self.interested.entry(peer).or_insert_with(|| {
            changed = true;
            Interest { held, progress: 0, last_growth: now, owing_since: None, stalled: false, hash: node_hash(&peer) }
        });
        if held > i.held {
            revived = i.stalled;
            *i = Interest { held, last_growth: now, stalled: false, ..*i };
        }
        if changed || revived {
            self.live_interested += 1;
            let hash = self.interested.get(&peer).map_or(0, |i| i.hash);
            self.member_joined(peer, hash);
        }
    }

    /// Records that `peer` has received `bytes` from the Hub for the file: if that grew, it is
    /// making progress (and, if it was passed over, owns chunks again).
    fn progressed(&mut self, peer: &PeerId, bytes: u64, now: Duration) {
        let Some(i) = self.interested.get_mut(peer) else { return };
        if bytes <= i.progress {
            return;
        }
        let revived = i.stalled;
        *i = Interest { progress: bytes, last_growth: now, stalled: false, ..*i };
        if revived {
            let hash = i.hash;
            self.live_interested += 1;
            self.member_joined(*peer, hash);
        }
    }

    fn uninterest(&mut self, peer: &PeerId) {
        if let Some(i) = self.interested.remove(peer)
            && !i.stalled
        {
            self.live_interested -= 1;
            self.member_left(peer);
        }
    }

    fn natural_owner(&self, index: u32) -> PeerId {
        let all = self.ever_interested.iter().filter(|p| !self.banned.contains(p)).map(|p| (node_hash(p), p));
        best(self.me_hash, &self.me, all, self.salt, index)
    }

    /// Hub requests allowed at once. Alone: all of [`Limits::hub`]. Together with others: a
    /// few, so that owned chunks complete one after another and reach the other nodes early
    /// (pipelining), and a node that dies leaves little half-fetched.
    fn hub_limit(&self) -> u32 {
        let mut n = 1 + self.live_interested;
        if self.warming_up {
            n = n.max(1 + self.peers.len() as u32);
        }
        if n == 1 { self.limits.hub } else { (self.limits.hub / (2 * n)).clamp(2, self.limits.hub.max(2)) }
    }

    /// Sets [`Limits::hub_window`] (at least 1): the driver's share of the swarm's Hub budget
    /// for this file, which changes as other files start and finish.
    pub fn set_hub_window(&mut self, window: u32) {
        self.limits.hub_window = window.max(1);
    }

    /// The first chunk index past the swarm-wide Hub window ([`Limits::hub_window`]): the
    /// window holds the first chunks that still have to come from the Hub as far as this node
    /// can tell, including those in flight at the Hub here or elsewhere. `hub_only` lists, in
    /// index order, the missing chunks no peer holds. Alone on the file, there is no window
    /// beyond [`Limits::hub`].
    fn hub_window_end(&self, hub_only: &[u32]) -> u32 {
        if self.live_interested == 0 && !self.warming_up {
            return self.chunks.len() as u32;
        }
        let window = self.end_window();
        let mut open = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            let via_hub = match c {
                Chunk::Done | Chunk::InFlight { source: Source::Peer(_), .. } => false,
                Chunk::InFlight { source: Source::Hub, .. } => true,
                Chunk::Missing => !self.landed.get(i as u32) && hub_only.binary_search(&(i as u32)).is_ok(),
            };
            if via_hub {
                open += 1;
                if open > window {
                    return i as u32;
                }
            }
        }
        self.chunks.len() as u32
    }

    /// The Hub window for the next start: [`Limits::hub_window`], narrowing to half of it over
    /// the file's last chunks: once half the file has left the Hub, half of what is left, but
    /// not below half the window.
    ///
    /// Why: the ranges in flight share the uplink, so when none is left to start the last ones
    /// finish together (the j-th from last lands j x chunk / window / rate after the one before
    /// it), in an order uneven rates shuffle. Every node then receives them at once, and checks
    /// the file from the first of them on: with 16 ranges, up to 15 chunks wait behind one that
    /// lands last. Half as many ranges at the end halve both. Not earlier, and not from the
    /// start of a file of few chunks: 8 ranges on the uplink from the start let it fall to
    /// 29-40 of 50 MB/s in 5 of 10 runs while nodes re-planned around a seed that came up late
    /// (4 nodes, 400 Mbit/s).
    fn end_window(&self) -> u32 {
        let window = self.limits.hub_window.max(1);
        let count = self.chunks.len() as u32;
        let left = count.saturating_sub(self.landed().count_ones());
        if left.saturating_mul(2) > count {
            return window;
        }
        window.min(window.div_ceil(2).max(left.div_ceil(2)))
    }

    /// True when every chunk is done.
    pub fn is_complete(&self) -> bool {
        self.chunks.iter().all(|c| *c == Chunk::Done)
    }

    /// True when nothing is in flight and nothing can be started: the file cannot finish with
    /// the sources known now (offline with no holder for some chunk).
    pub fn is_stuck(&self) -> bool {
        !self.is_complete() && self.in_flight() == 0
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.chunks.iter().filter(|c| matches!(c, Chunk::InFlight { .. })).count() as u32
    }

    /// Chunks that have left the Hub as far as this node knows: done here, held by a peer, or
    /// said to have landed by one. Passed on to peers, so that the Hub window slides across
    /// the whole swarm although no node talks to every other.
    pub fn landed(&self) -> Bitmap {
        let mut bits = self.landed.clone();
        for (i, c) in self.chunks.iter().enumerate() {
            if *c == Chunk::Done {
                bits.set(i as u32);
            }
        }
        for p in self.peers.values() {
            bits.union_with(&p.have);
        }
        bits
    }

    /// Chunks not yet done.
    pub fn remaining(&self) -> u32 {
        self.chunks.iter().filter(|c| **c != Chunk::Done).count() as u32
    }

    /// Known, usable peers.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    /// Every peer this schedule counts on: holders and nodes downloading the file.
    pub fn known_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.peers.keys().chain(self.interested.keys()).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Applies an event and returns what to do now.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut out = self.observe(event, now);
        out.extend(self.assign(now));
        out
    }

    /// Applies an event without starting anything: for a batch of events (the answers of every
    /// peer) that must all be known before chunks are placed, or a chunk only one peer was
    /// heard from would go to the Hub. Follow with [`Self::assign`].
    pub fn observe(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Have { peer, have, downloading, claimed } => {
                if !self.banned.contains(&peer) {
                    let held = have.count_ones();
                    if downloading {
                        self.interest(peer, held, now);
                    } else {
                        self.uninterest(&peer);
                    }
                    let (in_flight, busy_until, busy_since) = self
                        .peers
                        .get(&peer)
                        .map_or((0, Duration::ZERO, None), |p| (p.in_flight, p.busy_until, p.busy_since));
                    self.peers.insert(peer, Peer { have, claimed, in_flight, failures: 0, busy_until, busy_since });
                }
            }
            Event::PeerGone(peer) => self.drop_peer(&peer),
            Event::Landed(bits) => self.landed.union_with(&bits),
            Event::Progress { peer, bytes } => self.progressed(&peer, bytes, now),
            Event::Released { index } => {
                if let Some(Chunk::InFlight { source: Source::Hub, dup: None, .. }) = self.chunks.get(index as usize) {
                    self.free_slot(Source::Hub);
                    self.chunks[index as usize] = Chunk::Missing;
                    self.released += 1;
                }
                self.release_asked.remove(&index);
            }
            Event::Member { peer, downloading, held } => {
                if self.banned.contains(&peer) {
                } else if downloading {
                    self.interest(peer, held, now);
                } else {
                    self.uninterest(&peer);
                }
            }
            Event::Done { index, source } => {
                if let Some(Chunk::InFlight { source: first, since, dup, .. }) =
                    self.chunks.get(index as usize).copied()
                {
                    self.free_slot(first);
                    // The copy that did not finish is stopped (with two Hub copies, the
                    // driver knows which one reported).
                    let loser = if source == first { dup } else { Some(first) };
                    if let Some(d) = dup {
                        self.free_slot(d);
                    }
                    if let Some(l) = loser {
                        out.push(Action::Cancel { index, source: l });
                    }
                    if source == first && dup.is_none() {
                        let took = now.saturating_sub(since);
                        let typical = match source {
                            Source::Peer(_) => &mut self.typical_peer_chunk,
                            Source::Hub => &mut self.typical_hub_chunk,
                        };
                        *typical = Some(typical.map_or(took, |t| (t * 7 + took) / 8));
                    }
                }
                if let Some(c) = self.chunks.get_mut(index as usize) {
                    *c = Chunk::Done;
                }
                self.release_asked.remove(&index);
                if let Source::Peer(p) = source
                    && let Some(peer) = self.peers.get_mut(&p)
                {
                    peer.failures = 0;
                    peer.busy_since = None;
                }
            }
            Event::Failed { index, peer, fault } => {
                let failed = Source::Peer(peer);
                if let Some(Chunk::InFlight { source, since, dup, .. }) = self.chunks.get(index as usize).copied()
                    && (source == failed || dup == Some(failed))
                {
                    self.free_slot(failed);
                    // The other copy, if any, carries on alone.
                    let other = if source == failed { dup } else { Some(source) };
                    self.chunks[index as usize] = match other {
                        Some(source) => Chunk::InFlight { source, since, dup: None, arrived: 0 },
                        None => Chunk::Missing,
                    };
                }
                match fault {
                    Fault::BadData => {
                        self.banned.insert(peer);
                        self.drop_peer(&peer);
                        out.push(Action::Ban(peer));
                    }
                    Fault::Busy if self.wait_for_busy(&peer, now) => {}
                    Fault::Busy | Fault::Unavailable => {
                        // A source that keeps failing is asked for nothing more until its next
                        // availability answer. It stays a member (it may still download the file
                        // and fetch its own chunks from the Hub; the stall rule judges that) and
                        // its claims stand: dropped whole, a busy seed at 16 nodes lost its
                        // chunks and its claims for a few seconds, and 6 chunks it was fetching
                        // crossed the uplink twice.
                        let count = self.chunks.len() as u32;
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.have.clear(index);
                            p.failures += 1;
                            if p.failures >= self.limits.max_peer_failures {
                                p.have = Bitmap::new(count);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// A busy answer from `peer`: leaves it alone for [`BUSY_BACKOFF`], and says whether to
    /// wait for it (true) or, after [`BUSY_PATIENCE`] of nothing but busy, to take the answer as
    /// "cannot deliver".
    fn wait_for_busy(&mut self, peer: &PeerId, now: Duration) -> bool {
        let Some(p) = self.peers.get_mut(peer) else { return false };
        p.busy_until = now + BUSY_BACKOFF;
        now.saturating_sub(*p.busy_since.get_or_insert(now)) < BUSY_PATIENCE
    }

    /// Frees the request slot a fetch from `source` held.
    fn free_slot(&mut self, source: Source) {
        match source {
            Source::Hub => self.hub_in_flight = self.hub_in_flight.saturating_sub(1),
            Source::Peer(p) => {
                if let Some(peer) = self.peers.get_mut(&p) {
                    peer.in_flight = peer.in_flight.saturating_sub(1);
                }
            }
        }
    }

    fn drop_peer(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.uninterest(peer);
        // Its requests in flight will report back as failures; nothing else to undo.
    }

    /// Starts as many fetches as the limits allow: rarest peer-held chunks first, then the Hub
    /// for chunks no peer holds. Idempotent: call it whenever capacity may have freed.
    pub fn assign(&mut self, now: Duration) -> Vec<Action> {
        let started = *self.started.get_or_insert(now);
        self.warming_up = now.saturating_sub(started) < self.limits.warmup;
        let mut holders: Vec<(u32, u32)> = Vec::new(); // (holder count, index)
        let mut hub_only = Vec::new();
        for (i, c) in self.chunks.iter().enumerate() {
            if *c != Chunk::Missing {
                continue;
            }
            let i = i as u32;
            let n = self.peers.values().filter(|p| p.have.get(i)).count() as u32;
            if n == 0 { hub_only.push(i) } else { holders.push((n, i)) }
        }
        holders.sort_unstable();
        // Owners that owe Hub work and have not grown for too long are passed over.
        let stall_after = self.limits.stall_after;
        if self.last_stall_check.is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1)) {
            self.last_stall_check = Some(now);
            let owing = self.owing(&hub_only);
            let mut stalled = Vec::new();
            for (p, i) in &mut self.interested {
                if i.stalled {
                    continue;
                }
                if !owing.contains(p) {
                    i.owing_since = None;
                    continue;
                }
                let since = *i.owing_since.get_or_insert(now);
                if now.saturating_sub(since.max(i.last_growth)) > stall_after {
                    tracing::info!(peer = %p, idle_s = now.saturating_sub(i.last_growth).as_secs(), hub_bytes = i.progress,
                        "passed over an owner whose Hub bytes for the file stopped growing");
                    i.stalled = true;
                    stalled.push(*p);
                }
            }
            for p in stalled {
                self.live_interested -= 1;
                self.member_left(&p);
            }
        }
        let mut out = Vec::new();
        if self.membership != self.release_checked {
            self.release_checked = self.membership;
            for i in 0..self.chunks.len() as u32 {
                let Chunk::InFlight { source: Source::Hub, dup: None, .. } = self.chunks[i as usize] else {
                    continue;
                };
                if self.owner_cached(i) == self.me {
                    continue;
                }
                if self.release_asked.insert(i) {
                    out.push(Action::Release { index: i });
                }
            }
        }
        // Whether some chunk could still start as soon as a slot frees (no endgame then).
        let mut work_left = false;
        for (_, i) in holders {
            let best = self
                .peers
                .iter_mut()
                .filter(|(_, p)| p.have.get(i) && p.in_flight < self.limits.per_peer && p.busy_until <= now)
                .min_by_key(|(id, p)| (p.in_flight, **id));
            if let Some((id, p)) = best {
                p.in_flight += 1;
                let source = Source::Peer(*id);
                self.chunks[i as usize] = Chunk::InFlight { source, since: now, dup: None, arrived: 0 };
                out.push(Action::Fetch { index: i, source });
            } else {
                work_left = true;
            }
        }
        if self.hub_allowed {
            let limit = self.hub_limit();
            // After the stall check: an owner passed over may leave this node alone on the file.
            let window_end = self.hub_window_end(&hub_only);
            let mut wait = HubWait { window_end, ..HubWait::default() };
            for i in hub_only {
                if self.owner_cached(i) != self.me {
                    // Its owner will have it soon. Until then this is not the end of the file:
                    // no endgame.
                    wait.others += 1;
                    work_left = true;
                    continue;
                }
                if self.claimed_by_live_peer(i) {
                    // Whoever already fetches it will have it soon.
                    wait.claimed += 1;
                    work_left = true;
                    continue;
                }
                if i >= window_end {
                    // Its turn at the Hub has not come (the swarm-wide window is full).
                    wait.beyond_window += 1;
                    work_left = true;
                    continue;
                }
                if self.hub_in_flight >= limit {
                    work_left = true;
                    break;
                }
                let natural = self.natural_owner(i);
                if natural != self.me {
                    let why = match self.interested.get(&natural) {
                        Some(o) if o.stalled => "stalled",
                        Some(_) => "downloading",
                        None if self.peers.contains_key(&natural) => "not downloading the file",
                        None => "gone",
                    };
                    tracing::info!(chunk = i, owner = %natural, owner_is = why, "taking over a chunk at the Hub");
                    self.takeovers += 1;
                }
                self.hub_in_flight += 1;
                self.chunks[i as usize] = Chunk::InFlight { source: Source::Hub, since: now, dup: None, arrived: 0 };
                out.push(Action::Fetch { index: i, source: Source::Hub });
            }
            wait.in_flight = self.hub_in_flight;
            self.hub_wait = wait;
        }
        if !work_left {
            out.extend(self.endgame(now));
        }
        out
    }

    /// Endgame: asks a second source for each chunk in flight for much longer than usual.
    fn endgame(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        let after = self.typical_peer_chunk.map_or(ENDGAME_FIRST_AGE, |t| (t * 3).max(ENDGAME_MIN_AGE));
        // The whole-chunk times that the peer chunks in flight with bytes in are on course for.
        let projected: Vec<(Source, Duration)> = self
            .chunks
            .iter()
            .filter_map(|c| match *c {
                Chunk::InFlight { source: s @ Source::Peer(_), since, arrived, .. } if arrived > 0 => {
                    Some((s, now.saturating_sub(since) * 1000 / u32::from(arrived.min(1000))))
                }
                _ => None,
            })
            .collect();
        for i in 0..self.chunks.len() as u32 {
            let Chunk::InFlight { source, since, dup: None, arrived } = self.chunks[i as usize] else {
                continue;
            };
            let age = now.saturating_sub(since);
            if age < after {
                continue;
            }
            let fresh = match source {
                Source::Peer(_) => slowest(self.typical_peer_chunk, median_elsewhere(&projected, source)),
                Source::Hub => self.typical_hub_chunk,
            };
            if finishes_first(age, arrived, fresh) {
                continue;
            }
            let per_peer = self.limits.per_peer;
            let other_peer = self
                .peers
                .iter()
                .filter(|(id, p)| {
                    Source::Peer(**id) != source && p.have.get(i) && p.in_flight < per_peer && p.busy_until <= now
                })
                .min_by_key(|(id, p)| (p.in_flight, **id))
                .map(|(id, _)| *id);
            let hub_free = self.hub_allowed && self.hub_in_flight < self.hub_limit();
            let dup = match (other_peer, source) {
                (Some(p), _) => Source::Peer(p),
                (None, Source::Peer(_)) if hub_free && age >= self.limits.stall_after => Source::Hub,
                // A Hub chunk on a slow or stuck connection: the Hub again, on another.
                (None, Source::Hub) if hub_free && age >= self.hub_copy_after() => Source::Hub,
                (None, _) => continue,
            };
            match dup {
                Source::Hub => self.hub_in_flight += 1,
                Source::Peer(p) => {
                    if let Some(peer) = self.peers.get_mut(&p) {
                        peer.in_flight += 1;
                    }
                }
            }
            tracing::debug!(chunk = i, first = ?source, second = ?dup, age_ms = age.as_millis() as u64,
                arrived_permille = arrived, after_ms = after.as_millis() as u64, "endgame: a second source");
            self.chunks[i as usize] = Chunk::InFlight { source, since, dup: Some(dup), arrived };
            self.duplicates += 1;
            out.push(Action::Duplicate { index: i, source: dup });
        }
        out
    }
}

impl FileScheduler {
    /// How old a chunk this node fetches from the Hub must be before the Hub is asked for it a
    /// second time.
    fn hub_copy_after(&self) -> Duration {
        let slow = self.typical_hub_chunk.map_or(self.limits.stall_after, |t| (t * 3).max(ENDGAME_FIRST_AGE));
        if self.live_interested > 0 { slow.max(self.limits.stall_after) } else { slow }
    }

    /// The peers that owe Hub work now, as this node sees it: those fetching a chunk that nobody
    /// holds yet (they claimed it), and the owners of unclaimed such chunks inside the Hub
    /// window. Only these can stall. An owner whose chunks all lie past the window waits for
    /// its turn: judged by every chunk it owned, 16 nodes at 100 Mbit/s passed over the node that
    /// had started first (it had fetched its early chunks and waited 47-56 s for the window),
    /// and took 2-5 of its chunks per run.
    fn owing(&mut self, hub_only: &[u32]) -> HashSet<PeerId> {
        let mut nobody_holds = Bitmap::new(self.chunks.len() as u32);
        for &c in hub_only {
            nobody_holds.set(c);
        }
        let live = |id: &PeerId| self.interested.get(id).is_some_and(|i| !i.stalled);
        let mut out: HashSet<PeerId> = self
            .peers
            .iter()
            .filter(|(id, p)| live(id) && p.claimed.0.iter().zip(&nobody_holds.0).any(|(a, b)| a & b != 0))
            .map(|(id, _)| *id)
            .collect();
        let window_end = self.hub_window_end(hub_only);
        for &c in hub_only.iter().take_while(|&&c| c < window_end) {
            if !self.landed.get(c) && !self.claimed_by_live_peer(c) {
                out.insert(self.owner_cached(c));
            }
        }
        out.remove(&self.me);
        out
    }

    /// A peer fetches it from the Hub now, and is not stalled.
    fn claimed_by_live_peer(&self, index: u32) -> bool {
        self.peers.iter().any(|(id, p)| p.claimed.get(index) && self.interested.get(id).is_none_or(|i| !i.stalled))
    }
}

/// Whether a copy in flight for `age`, of which `arrived` thousandths are in, will likely finish
/// before a fresh copy that takes `fresh`: at the rate its bytes have come so far, what is left
/// takes less than `fresh`. Never for a copy with nothing in yet, or before a fresh copy's time
/// is known. A second source for such a chunk only splits the same links and CPU in two: at
/// 8 nodes behind a 100 Mbit/s uplink, the last chunks, pulled from their owners by everyone at
/// once, took over a second each and drew up to 66 needless copies in a run.
fn finishes_first(age: Duration, arrived: u16, fresh: Option<Duration>) -> bool {
    let Some(fresh) = fresh else {
        return false;
    };
    if arrived == 0 {
        return false;
    }
    let arrived = u32::from(arrived.min(1000));
    age * (1000 - arrived) / arrived < fresh
}

/// How long a fresh copy of a peer chunk takes now, by the chunks in flight from sources other
/// than `source`: the median of their projected times. When every source is as slow, the limit
/// is this node's (its CPU or link), and a second copy would only share it: 8 nodes at
/// 400 Mbit/s on 2 busy cores, judged by the usual time alone, asked up to 40 second copies in
/// a run (2026-12-03), of chunks 12-75% in after 3-11 s while the others came no faster.
fn median_elsewhere(projected: &[(Source, Duration)], source: Source) -> Option<Duration> {
    let mut times: Vec<Duration> = projected.iter().filter(|(s, _)| *s != source).map(|(_, t)| *t).collect();
    times.sort_unstable();
    times.get(times.len() / 2).copied()
}

/// The longer of two estimates, either of which may be unknown.
fn slowest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The highest-scoring of `first` and `others` (ties, vanishingly rare, go to the larger id).
fn best<'a>(
    first_hash: u64,
    first: &'a PeerId,
    others: impl Iterator<Item = (u64, &'a PeerId)>,
    salt: u64,
    index: u32,
) -> PeerId {
    let mut top = (score_hashed(first_hash, salt, index), first);
    for (h, n) in others {
        let s = score_hashed(h, salt, index);
        if s > top.0 || (s == top.0 && n.to_bytes() > top.1.to_bytes()) {
            top = (s, n);
        }
    }
    *top.1
}

trait BitmapExt {
    fn clear(&mut self, i: u32);
}

impl BitmapExt for Bitmap {
    fn clear(&mut self, i: u32) {
        if let Some(b) = self.0.get_mut((i / 8) as usize) {
            *b &= !(1 << (i % 8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    fn me() -> PeerId {
        PeerId::from_bytes(&[0, 2, 0, 0]).unwrap_or_else(|_| PeerId::random())
    }

    fn bits(count: u32, set: &[u32]) -> Bitmap {
        let mut b = Bitmap::new(count);
        for &i in set {
            b.set(i);
        }
        b
    }

    fn fetches(actions: &[Action]) -> Vec<(u32, Source)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { index, source } => Some((*index, *source)),
                _ => None,
            })
            .collect()
    }

    fn duplicates(actions: &[Action]) -> Vec<(u32, Source)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Duplicate { index, source } => Some((*index, *source)),
                _ => None,
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn alone_everything_goes_to_the_hub_within_its_limit() {
        let mut s = FileScheduler::new(me(), 7, 10, [3], true, Limits { hub: 4, ..Limits::default() });
        let a = fetches(&s.assign(T0));
        assert_eq!(a, vec![(0, Source::Hub), (1, Source::Hub), (2, Source::Hub), (4, Source::Hub)]);
        let a = fetches(&s.handle(Event::Done { index: 1, source: Source::Hub }, T0));
        assert_eq!(a, vec![(5, Source::Hub)]);
    }

    #[test]
    fn chunks_a_peer_holds_never_go_to_the_hub() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(
            me(),
            7,
            6,
            [],
            true,
            Limits { per_peer: 2, hub: 8, max_peer_failures: 3, ..Limits::default() },
        );
        let first = fetches(&s.handle(
            Event::Have { peer: a, have: bits(6, &[0, 1, 2, 3]), downloading: false, claimed: Bitmap::default() },
            T0,
        ));
        // Two from a (its limit); 4 and 5 nobody holds: Hub.
        assert_eq!(first.iter().filter(|(_, s)| *s == Source::Peer(a)).count(), 2);
        assert_eq!(first.iter().filter(|(_, s)| *s == Source::Hub).map(|(i, _)| *i).collect::<Vec<_>>(), vec![4, 5]);
        // b holds 2 and 3 as well: the rest spreads to b, rarest (only-a) chunks were taken first.
        let second = fetches(&s.handle(
            Event::Have { peer: b, have: bits(6, &[2, 3]), downloading: false, claimed: Bitmap::default() },
            T0,
        ));
        assert_eq!(second, vec![(2, Source::Peer(b)), (3, Source::Peer(b))]);
        assert_eq!(s.in_flight(), 6);
    }

    #[test]
    fn rarest_first_and_least_loaded_holder() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(
            me(),
            7,
            2,
            [],
            false,
            Limits { per_peer: 1, hub: 0, max_peer_failures: 3, ..Limits::default() },
        );
        s.peers.insert(
            a,
            Peer {
                have: bits(2, &[0, 1]),
                claimed: Bitmap::default(),
                in_flight: 0,
                failures: 0,
                busy_until: Duration::ZERO,
                busy_since: None,
            },
        );
        s.peers.insert(
            b,
            Peer {
                have: bits(2, &[0]),
                claimed: Bitmap::default(),
                in_flight: 0,
                failures: 0,
                busy_until: Duration::ZERO,
                busy_since: None,
            },
        );
        // Chunk 1 has one holder, chunk 0 two: 1 goes first (to a), then 0 to b, the idle one.
        assert_eq!(fetches(&s.assign(T0)), vec![(1, Source::Peer(a)), (0, Source::Peer(b))]);
    }

    #[test]
    fn a_batch_of_answers_is_placed_as_a_whole() {
        // Regression: the first answer of a refresh was placed before the others were known, so
        // an empty answer from one peer sent every chunk to the Hub although the next peer held
        // them all (seen in `swarm-dl demo`: 128 MiB of 200 from the Hub).
        let (empty, full) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(
            me(),
            7,
            4,
            [],
            true,
            Limits { per_peer: 2, hub: 8, max_peer_failures: 3, ..Limits::default() },
        );
        assert!(
            s.observe(
                Event::Have { peer: empty, have: bits(4, &[]), downloading: false, claimed: Bitmap::default() },
                T0
            )
            .is_empty()
        );
        assert!(
            s.observe(
                Event::Have {
                    peer: full,
                    have: bits(4, &[0, 1, 2, 3]),
                    downloading: false,
                    claimed: Bitmap::default()
                },
                T0
            )
            .is_empty()
        );
        let a = fetches(&s.assign(T0));
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|(_, src)| *src == Source::Peer(full)));
    }

    #[test]
    fn bad_data_bans_and_refetches_elsewhere() {
        let a = PeerId::random();
        let mut s = FileScheduler::new(me(), 7, 1, [], true, Limits::default());
        s.peers.insert(
            a,
            Peer {
                have: bits(1, &[0]),
                claimed: Bitmap::default(),
                in_flight: 0,
                failures: 0,
                busy_until: Duration::ZERO,
                busy_since: None,
            },
        );
        assert_eq!(fetches(&s.assign(T0)), vec![(0, Source::Peer(a))]);
        let out = s.handle(Event::Failed { index: 0, peer: a, fault: Fault::BadData }, T0);
        assert!(out.contains(&Action::Ban(a)));
        assert_eq!(fetches(&out), vec![(0, Source::Hub)]);
        // A banned peer's later availability is ignored.
        assert!(
            fetches(&s.handle(
                Event::Have { peer: a, have: bits(1, &[0]), downloading: false, claimed: Bitmap::default() },
                T0
            ))
            .is_empty()
        );
        assert!(s.peers().all(|p| *p != a));
    }

    #[test]
    fn a_peer_that_keeps_failing_is_dropped_and_offline_gets_stuck() {
        let a = PeerId::random();
        let mut s = FileScheduler::new(
            me(),
            7,
            4,
            [],
            false,
            Limits { per_peer: 1, hub: 0, max_peer_failures: 2, ..Limits::default() },
        );
        assert_eq!(
            fetches(&s.handle(
                Event::Have { peer: a, have: bits(4, &[0, 1, 2, 3]), downloading: false, claimed: Bitmap::default() },
                T0
            )),
            vec![(0, Source::Peer(a))]
        );
        assert_eq!(
            fetches(&s.handle(Event::Failed { index: 0, peer: a, fault: Fault::Unavailable }, T0)),
            vec![(1, Source::Peer(a))]
        );
        assert!(fetches(&s.handle(Event::Failed { index: 1, peer: a, fault: Fault::Unavailable }, T0)).is_empty());
        assert!(s.is_stuck());
    }

    #[test]
    fn a_busy_holder_keeps_its_chunk_and_is_asked_again_rather_than_the_hub() {
        // This node owns every chunk (alone among the downloaders) and may use the Hub; peer
        // `a` holds chunk 0 and is not downloading.
        let a = PeerId::random();
        let mut s = FileScheduler::new(me(), 7, 2, [1], true, Limits::default());
        let have = Event::Have { peer: a, have: bits(2, &[0]), downloading: false, claimed: Bitmap::default() };
        let out = s.handle(have.clone(), T0);
        assert!(fetches(&out).contains(&(0, Source::Peer(a))), "{out:?}");
        let out = s.handle(Event::Failed { index: 0, peer: a, fault: Fault::Busy }, T0);
        assert!(!hub_chunks(&out).contains(&0), "a busy holder's chunk went to the Hub: {out:?}");
        assert!(fetches(&out).is_empty(), "asked again at once: {out:?}");
        // A fresh availability answer does not lift the backoff; its end does.
        assert!(fetches(&s.handle(have, ms(100))).is_empty());
        assert_eq!(fetches(&s.assign(T0 + BUSY_BACKOFF)), vec![(0, Source::Peer(a))]);
        // "Does not hold it" is another matter: the Hub then.
        let out = s.handle(Event::Failed { index: 0, peer: a, fault: Fault::Unavailable }, T0 + BUSY_BACKOFF);
        assert_eq!(hub_chunks(&out), vec![0]);
    }

    #[test]
    fn a_source_that_keeps_failing_keeps_its_chunks_and_its_claims() {
        // Peer `a` downloads the file too, holds chunks 0-2, and fetches from the Hub a chunk
        // this node would own. It then fails three times as a source (a busy seed). Before,
        // that dropped it whole: its chunks became this node's and its claim was forgotten, so
        // both went to the Hub twice.
        let a = PeerId::random();
        let mut s = FileScheduler::new(me(), 7, 32, [], true, wide());
        let _ = s.observe(Event::Member { peer: a, downloading: true, held: 0 }, T0);
        let claimed = (3..32).find(|&i| s.owner(i) == me()).expect("this node owns some chunk");
        let theirs: Vec<u32> = (3..32).filter(|&i| s.owner(i) == a).collect();
        assert!(!theirs.is_empty(), "`a` owns some chunk");
        let have =
            Event::Have { peer: a, have: bits(32, &[0, 1, 2]), downloading: true, claimed: bits(32, &[claimed]) };
        let mut hub = hub_chunks(&s.handle(have, T0));
        for i in 0..3 {
            hub.extend(hub_chunks(&s.handle(Event::Failed { index: i, peer: a, fault: Fault::Unavailable }, T0)));
        }
        assert!(!hub.contains(&claimed), "the chunk `a` fetches went to the Hub: {hub:?}");
        assert!(hub.iter().all(|i| !theirs.contains(i)), "`a`'s chunks went to the Hub: {hub:?}");
        assert!(hub.iter().filter(|&&i| i >= 3).all(|&i| s.owner(i) == me()), "{hub:?}");
        assert_eq!(s.takeovers(), 0);
    }

    #[test]
    fn a_holder_that_answers_nothing_but_busy_holds_nothing_up_for_long() {
        let a = PeerId::random();
        let mut s = FileScheduler::new(me(), 7, 2, [1], true, Limits::default());
        let have = Event::Have { peer: a, have: bits(2, &[0]), downloading: false, claimed: Bitmap::default() };
        let mut t = T0;
        let mut out = s.handle(have.clone(), t);
        // Asked again after every backoff, busy every time, its availability repeated meanwhile.
        while fetches(&out).contains(&(0, Source::Peer(a))) {
            assert!(t < BUSY_PATIENCE + BUSY_BACKOFF * 2, "still waiting for it at {t:?}");
            out = s.handle(Event::Failed { index: 0, peer: a, fault: Fault::Busy }, t);
            if !hub_chunks(&out).is_empty() {
                break;
            }
            t += BUSY_BACKOFF;
            out = s.handle(have.clone(), t);
        }
        assert_eq!(hub_chunks(&out), vec![0], "given up on at {t:?}");
        assert!(t >= BUSY_PATIENCE, "given up on too soon, at {t:?}");
    }

    #[test]
    fn done_chunks_are_not_fetched_and_completion_is_seen() {
        let mut s = FileScheduler::new(me(), 7, 2, [0], true, Limits::default());
        assert_eq!(fetches(&s.assign(T0)), vec![(1, Source::Hub)]);
        assert!(!s.is_complete());
        assert!(fetches(&s.handle(Event::Done { index: 1, source: Source::Hub }, T0)).is_empty());
        assert!(s.is_complete() && !s.is_stuck());
    }

    fn hub_chunks(actions: &[Action]) -> Vec<u32> {
        fetches(actions).into_iter().filter(|(_, src)| *src == Source::Hub).map(|(i, _)| i).collect()
    }

    fn wide() -> Limits {
        Limits { hub: 1000, hub_window: 1000, ..Limits::default() }
    }

    #[test]
    fn the_swarm_keeps_a_window_of_hub_chunks_that_slides_as_chunks_land() {
        // Four nodes on a 64-chunk file, a window of 8: together they fetch only chunks 0..8
        // from the Hub, each its own; the rest wait even though each node may open more.
        let nodes: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let limits = Limits { hub: 1000, hub_window: 8, ..Limits::default() };
        let join = |me: &PeerId| {
            let mut s = FileScheduler::new(*me, 99, 64, [], true, limits);
            for p in nodes.iter().filter(|p| *p != me) {
                s.observe(
                    Event::Have { peer: *p, have: bits(64, &[]), downloading: true, claimed: Bitmap::default() },
                    T0,
                );
            }
            s
        };
        let mut all: Vec<u32> = Vec::new();
        let mut scheds: Vec<FileScheduler> = nodes.iter().map(join).collect();
        let mut first = Vec::new();
        for s in &mut scheds {
            let started = hub_chunks(&s.assign(T0));
            all.extend(&started);
            first.push(started);
        }
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<u32>>(), "the first 8 chunks, once each");
        // Node 0 finishes its own; the others' land where it does not see them (nodes it has no
        // connection to): only a peer's hint slides the window on, to 8..16.
        let s = &mut scheds[0];
        for &i in &first[0] {
            let more = hub_chunks(&s.handle(Event::Done { index: i, source: Source::Hub }, T0));
            assert!(more.iter().all(|&m| m < 8 + first[0].len() as u32), "no further than its own freed places");
        }
        let before: Vec<u32> = (0..64).filter(|&i| matches!(s.chunks[i as usize], Chunk::InFlight { .. })).collect();
        let landed = bits(64, &(0..8).collect::<Vec<u32>>());
        let mine: Vec<u32> = (8..16).filter(|&i| s.owner(i) == nodes[0] && !before.contains(&i)).collect();
        let now: Vec<u32> = hub_chunks(&s.handle(Event::Landed(landed), T0));
        assert_eq!(now, mine, "its own chunks of the next window");
        assert!(s.landed().count_ones() >= 8, "the hint is passed on");
    }

    /// This node and one other downloading a 64-chunk file with a Hub window of 16, and which
    /// chunks of a range this node owns.
    fn two_on_a_file() -> (FileScheduler, PeerId, impl Fn(&FileScheduler, std::ops::Range<u32>) -> Vec<u32>) {
        let (me, other) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(me, 7, 64, [], true, Limits { hub: 1000, hub_window: 16, ..Limits::default() });
        s.observe(Event::Have { peer: other, have: bits(64, &[]), downloading: true, claimed: Bitmap::default() }, T0);
        let mine = move |s: &FileScheduler, r: std::ops::Range<u32>| r.filter(|&i| s.owner(i) == me).collect();
        (s, other, mine)
    }

    #[test]
    fn the_window_follows_the_share_the_driver_sets() {
        // The driver narrows the window to 4 (another file started), then widens it to 16
        // (that file finished).
        let (mut s, _, mine) = two_on_a_file();
        s.set_hub_window(4);
        let narrow = hub_chunks(&s.assign(T0));
        assert_eq!(narrow, mine(&s, 0..4), "only its own chunks among the first 4");
        let wide = hub_chunks(&s.assign(T0));
        assert!(wide.is_empty(), "nothing more while the window is full");
        s.set_hub_window(16);
        let wider = hub_chunks(&s.assign(T0));
        assert_eq!(wider, mine(&s, 4..16), "a wider share opens at once");
        s.set_hub_window(0);
        assert_eq!(s.limits.hub_window, 1, "never below one request");
    }

    #[test]
    fn the_window_narrows_to_half_over_the_last_chunks() {
        // Far from the end, 16 chunks may be at the Hub; with 20 left to leave it, 10; with 12
        // or fewer, 8.
        let (mut s, other, mine) = two_on_a_file();
        assert_eq!(hub_chunks(&s.assign(T0)), mine(&s, 0..16), "the whole window far from the end");
        for i in mine(&s, 0..16) {
            s.observe(Event::Done { index: i, source: Source::Hub }, T0);
        }
        // The other node holds chunks up to 44 (they come from it): 20 are left for the Hub.
        let have = |n: u32| bits(64, &(0..n).collect::<Vec<u32>>());
        s.observe(Event::Have { peer: other, have: have(44), downloading: true, claimed: Bitmap::default() }, T0);
        assert_eq!(hub_chunks(&s.assign(T0)), mine(&s, 44..54), "10 of the 20 left");
        for i in mine(&s, 44..54) {
            s.observe(Event::Done { index: i, source: Source::Hub }, T0);
        }
        s.observe(Event::Have { peer: other, have: have(52), downloading: true, claimed: Bitmap::default() }, T0);
        let left: Vec<u32> = (52..64).filter(|&i| s.chunks[i as usize] != Chunk::Done).collect();
        assert!(left.len() <= 12, "{left:?}");
        let window: Vec<u32> = left.iter().copied().take(8).filter(|&i| s.owner(i) == s.me).collect();
        assert_eq!(hub_chunks(&s.assign(T0)), window, "half the window: the first 8 of those left");
        assert!(s.window_at_end(), "the pushes near the end still start with the whole window");
        // A file of 16 chunks starts with the whole window too.
        let me = s.me;
        let mut small =
            FileScheduler::new(me, 7, 16, [], true, Limits { hub: 1000, hub_window: 16, ..Limits::default() });
        small.observe(
            Event::Have { peer: other, have: bits(16, &[]), downloading: true, claimed: Bitmap::default() },
            T0,
        );
        let all: Vec<u32> = (0..16).filter(|&i| small.owner(i) == me).collect();
        assert_eq!(hub_chunks(&small.assign(T0)), all, "every chunk of its own at once");
    }

    #[test]
    fn alone_the_window_does_not_hold_a_node_back() {
        let limits = Limits { hub: 12, hub_window: 4, ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 20, [], true, limits);
        assert_eq!(hub_chunks(&s.assign(T0)).len(), 12);
    }

    #[test]
    fn nodes_downloading_together_split_the_hub_work_exactly() {
        let nodes: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let mut seen = vec![0u32; 64];
        for me in &nodes {
            let mut s = FileScheduler::new(*me, 99, 64, [], true, wide());
            for p in nodes.iter().filter(|p| *p != me) {
                s.observe(
                    Event::Have { peer: *p, have: bits(64, &[]), downloading: true, claimed: Bitmap::default() },
                    T0,
                );
            }
            for i in hub_chunks(&s.assign(T0)) {
                seen[i as usize] += 1;
                assert_eq!(s.owner(i), *me);
            }
            assert_eq!(s.takeovers(), 0);
        }
        assert!(seen.iter().all(|n| *n == 1), "every chunk fetched from the Hub exactly once: {seen:?}");
    }

    #[test]
    fn a_chunk_owned_elsewhere_comes_from_its_owner_once_it_has_it() {
        let (me, other) = (me(), PeerId::random());
        let mut s = FileScheduler::new(me, 1, 16, [], true, wide());
        let mine = hub_chunks(&s.handle(
            Event::Have { peer: other, have: bits(16, &[]), downloading: true, claimed: Bitmap::default() },
            T0,
        ));
        let theirs: Vec<u32> = (0..16).filter(|i| !mine.contains(i)).collect();
        assert!(!theirs.is_empty() && !mine.is_empty());
        let got = fetches(&s.handle(
            Event::Have { peer: other, have: bits(16, &theirs[..1]), downloading: true, claimed: Bitmap::default() },
            T0,
        ));
        assert_eq!(got, vec![(theirs[0], Source::Peer(other))]);
    }

    #[test]
    fn a_departed_owner_loses_its_chunks_at_once_and_they_count_as_takeovers() {
        let (me, other) = (me(), PeerId::random());
        let mut s = FileScheduler::new(me, 1, 32, [], true, wide());
        let mine = hub_chunks(&s.handle(
            Event::Have { peer: other, have: bits(32, &[]), downloading: true, claimed: Bitmap::default() },
            T0,
        ));
        let rest = hub_chunks(&s.handle(Event::PeerGone(other), T0));
        assert_eq!(mine.len() + rest.len(), 32);
        assert_eq!(s.takeovers() as usize, rest.len());
    }

    #[test]
    fn a_stalled_owner_is_passed_over_after_the_timeout_and_not_before() {
        let (me, other) = (me(), PeerId::random());
        let limits = Limits { stall_after: Duration::from_secs(10), ..wide() };
        let mut s = FileScheduler::new(me, 1, 32, [], true, limits);
        let mine = hub_chunks(&s.handle(
            Event::Have { peer: other, have: bits(32, &[]), downloading: true, claimed: Bitmap::default() },
            T0,
        ));
        assert!(hub_chunks(&s.assign(Duration::from_secs(9))).is_empty(), "patience first");
        let rest = hub_chunks(&s.assign(Duration::from_secs(11)));
        assert_eq!(mine.len() + rest.len(), 32);
        assert_eq!(s.takeovers() as usize, rest.len());
    }

    #[test]
    fn an_owner_waiting_for_the_window_is_judged_only_from_when_its_turn_comes() {
        // The first of 16 nodes had fetched its early chunks and then waited 47-56 s for the Hub
        // window to reach its next ones; judged by every chunk it owned, the others passed it
        // over after 18 s of that wait and took its chunks as soon as the window reached them.
        let limits = Limits { hub: 1000, hub_window: 1, stall_after: Duration::from_secs(10), ..Limits::default() };
        let (me, other) = loop {
            let (a, b) = (PeerId::random(), PeerId::random());
            if score(&a, 1, 0) > score(&b, 1, 0) && score(&b, 1, 1) > score(&a, 1, 1) {
                break (a, b);
            }
        };
        let mut s = FileScheduler::new(me, 1, 8, [], true, limits);
        let joined = Event::Have { peer: other, have: bits(8, &[]), downloading: true, claimed: Bitmap::default() };
        assert_eq!(hub_chunks(&s.handle(joined, T0)), vec![0], "the window holds chunk 0, this node's");
        for t in 1..=30 {
            assert!(hub_chunks(&s.assign(Duration::from_secs(t))).is_empty(), "at {t} s");
        }
        // Chunk 0 is done: the window moves on to chunk 1, the other node's. Its stall time starts.
        let next = hub_chunks(&s.handle(Event::Done { index: 0, source: Source::Hub }, Duration::from_secs(30)));
        assert!(next.is_empty(), "{next:?}");
        for t in 31..=41 {
            assert!(hub_chunks(&s.assign(Duration::from_secs(t))).is_empty(), "passed over at {t} s");
        }
        // Passed over, it leaves this node alone on the file: the rest, chunk 1 first.
        let got = hub_chunks(&s.assign(Duration::from_secs(42)));
        assert_eq!(got.first(), Some(&1), "{got:?}");
        assert!(s.takeovers() >= 1);
    }

    #[test]
    fn a_chunk_another_node_already_fetches_is_waited_for_not_fetched_twice() {
        // Two nodes whose views of who downloads differed for a moment: the other one started
        // chunk 0 from the Hub first. Seeing its claim, this node waits for it.
        let (me, other) = (me(), PeerId::random());
        let mut s = FileScheduler::new(me, 1, 4, [], true, wide());
        let claimed = bits(4, &[0, 1, 2, 3]);
        let hub =
            hub_chunks(&s.handle(Event::Have { peer: other, have: bits(4, &[]), downloading: true, claimed }, T0));
        assert!(hub.is_empty(), "{hub:?}");
        // It leaves: its claims go with it.
        assert_eq!(hub_chunks(&s.handle(Event::PeerGone(other), T0)).len(), 4);
    }

    /// Peers `a` and `b` hold all 4 chunks (2 requests each at a time); the first placement.
    fn two_holders_of_four_chunks() -> (FileScheduler, PeerId, PeerId, Vec<(u32, Source)>) {
        let (a, b) = (PeerId::random(), PeerId::random());
        let limits = Limits { per_peer: 2, hub: 8, ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 4, [], true, limits);
        let held =
            |p| Event::Have { peer: p, have: bits(4, &[0, 1, 2, 3]), downloading: false, claimed: Bitmap::default() };
        s.observe(held(a), T0);
        s.observe(held(b), T0);
        let placed = fetches(&s.assign(T0));
        (s, a, b, placed)
    }

    #[test]
    fn endgame_asks_a_second_holder_for_a_slow_chunk_and_the_first_copy_cancels_the_other() {
        let (mut s, a, b, placed) = two_holders_of_four_chunks();
        assert_eq!(placed.len(), 4);
        let from =
            |p: PeerId| placed.iter().filter(|(_, s)| *s == Source::Peer(p)).map(|(i, _)| *i).collect::<Vec<_>>();
        let (at_a, at_b) = (from(a), from(b));
        // a is quick (100 ms a chunk); b's two chunks hang.
        for &i in &at_a {
            assert!(duplicates(&s.handle(Event::Done { index: i, source: Source::Peer(a) }, ms(100))).is_empty());
        }
        // Not yet three times the usual time, nor the minimum age: no duplicate.
        assert!(duplicates(&s.assign(ms(400))).is_empty());
        assert!(duplicates(&s.assign(ms(900))).is_empty());
        let dups = duplicates(&s.assign(ms(1000)));
        assert_eq!(dups, at_b.iter().map(|&i| (i, Source::Peer(a))).collect::<Vec<_>>());
        assert_eq!(s.duplicates(), 2);
        // Never a third copy.
        assert!(duplicates(&s.assign(ms(5000))).is_empty());
        // a's copy of the first wins: b's is cancelled.
        let out = s.handle(Event::Done { index: at_b[0], source: Source::Peer(a) }, ms(1050));
        assert!(out.contains(&Action::Cancel { index: at_b[0], source: Source::Peer(b) }), "{out:?}");
        // a's copy of the second fails: b's carries on alone, and the chunk is not placed again.
        let out = s.handle(Event::Failed { index: at_b[1], peer: a, fault: Fault::Unavailable }, ms(1060));
        assert!(fetches(&out).is_empty() && !out.iter().any(|x| matches!(x, Action::Cancel { .. })), "{out:?}");
        assert_eq!(s.in_flight(), 1);
        // b's copy of the second lands: the file is complete.
        let _ = s.handle(Event::Done { index: at_b[1], source: Source::Peer(b) }, ms(1100));
        assert!(s.is_complete());
    }

    #[test]
    fn endgame_leaves_a_slow_chunk_alone_while_its_bytes_arrive_fast_enough() {
        let (mut s, a, b, placed) = two_holders_of_four_chunks();
        let at_b: Vec<u32> = placed.iter().filter(|(_, s)| *s == Source::Peer(b)).map(|(i, _)| *i).collect();
        for (i, _) in placed.iter().filter(|(_, s)| *s == Source::Peer(a)) {
            let _ = s.handle(Event::Done { index: *i, source: Source::Peer(a) }, ms(100));
        }
        // A fresh copy takes 100 ms (a's chunks). At 2 s, b's first chunk is 95% in: 105 ms to
        // go at its rate, so a copy. b's second is 99% in: 20 ms to go, so none.
        s.arrived(at_b[0], 950);
        s.arrived(at_b[1], 990);
        assert_eq!(duplicates(&s.assign(ms(2000))), vec![(at_b[0], Source::Peer(a))]);
        // Its bytes stop: at the same arrived share, the time left grows with the age.
        assert!(duplicates(&s.assign(ms(2400))).is_empty(), "at 2.4 s, 24 ms to go");
        assert_eq!(duplicates(&s.assign(ms(11_000))), vec![(at_b[1], Source::Peer(a))]);
        // Nothing in yet: the age alone decides, as before.
        assert!(!finishes_first(ms(5000), 0, Some(ms(100))));
        assert!(!finishes_first(ms(5000), 999, None), "a fresh copy's time unknown");
    }

    #[test]
    fn endgame_counts_a_chunk_s_age_from_when_its_request_got_a_slot() {
        let (mut s, a, b, placed) = two_holders_of_four_chunks();
        let at_b: Vec<u32> = placed.iter().filter(|(_, s)| *s == Source::Peer(b)).map(|(i, _)| *i).collect();
        for (i, _) in placed.iter().filter(|(_, s)| *s == Source::Peer(a)) {
            let _ = s.handle(Event::Done { index: *i, source: Source::Peer(a) }, ms(100));
        }
        // b's requests wait for a slot until 4.9 s: at 5 s they are 100 ms old, no copy.
        for &i in &at_b {
            s.waiting(i, ms(4900));
        }
        assert!(duplicates(&s.assign(ms(5000))).is_empty());
        // Begun at 4.9 s, nothing in at 5.9 s (1 s, the least age for a copy): copies.
        assert_eq!(duplicates(&s.assign(ms(5900))).len(), 2);
    }

    #[test]
    fn endgame_asks_no_second_source_while_every_source_is_as_slow() {
        // a and b hold 4 chunks; 2 go to each. One of a's lands at 100 ms: a chunk usually
        // takes 100 ms, and the other three are in flight with nothing left to start.
        let (a, b) = (PeerId::random(), PeerId::random());
        let limits = Limits { per_peer: 4, hub: 8, ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 4, [], true, limits);
        for p in [a, b] {
            s.observe(
                Event::Have { peer: p, have: bits(4, &[0, 1, 2, 3]), downloading: false, claimed: Bitmap::default() },
                T0,
            );
        }
        let placed = fetches(&s.assign(T0));
        let from =
            |p: PeerId| placed.iter().filter(|(_, s)| *s == Source::Peer(p)).map(|(i, _)| *i).collect::<Vec<_>>();
        let (at_a, at_b) = (from(a), from(b));
        assert_eq!((at_a.len(), at_b.len()), (2, 2));
        assert!(duplicates(&s.handle(Event::Done { index: at_a[0], source: Source::Peer(a) }, ms(100))).is_empty());
        // At 2 s every chunk is 30% in, from either source: all are on course for 6.7 s, so a
        // copy from the other source would be no sooner. The usual 100 ms alone asked three.
        for &i in at_b.iter().chain(&at_a[1..]) {
            s.arrived(i, 300);
        }
        assert!(duplicates(&s.assign(ms(2000))).is_empty());
        // b's bytes stop while a's come: at 4 s a's chunk is on course for 4 s, b's need 9.3 s
        // more, and a is asked for them.
        s.arrived(at_a[1], 990);
        let dups = duplicates(&s.assign(ms(4000)));
        assert_eq!(dups, at_b.iter().map(|&i| (i, Source::Peer(a))).collect::<Vec<_>>());
        // With no other source in flight, the usual time decides, as before.
        assert_eq!(median_elsewhere(&[(Source::Peer(b), ms(100))], Source::Peer(b)), None);
        assert_eq!(slowest(Some(ms(100)), None), Some(ms(100)));
    }

    #[test]
    fn no_endgame_while_other_chunks_wait_to_start() {
        let a = PeerId::random();
        let limits = Limits { per_peer: 1, hub: 8, ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 3, [], false, limits);
        s.observe(
            Event::Have { peer: a, have: bits(3, &[0, 1, 2]), downloading: false, claimed: Bitmap::default() },
            T0,
        );
        assert_eq!(fetches(&s.assign(T0)).len(), 1);
        // Two chunks still wait for a slot at a: the slow one is not duplicated, however old.
        assert!(duplicates(&s.assign(Duration::from_secs(60))).is_empty());
    }

    #[test]
    fn a_chunk_no_other_peer_holds_goes_to_the_hub_as_well_once_its_peer_stalls() {
        let a = PeerId::random();
        let limits = Limits { per_peer: 4, hub: 8, stall_after: Duration::from_secs(10), ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 1, [], true, limits);
        s.observe(Event::Have { peer: a, have: bits(1, &[0]), downloading: false, claimed: Bitmap::default() }, T0);
        assert_eq!(fetches(&s.assign(T0)), vec![(0, Source::Peer(a))]);
        assert!(duplicates(&s.assign(Duration::from_secs(5))).is_empty());
        assert_eq!(duplicates(&s.assign(Duration::from_secs(11))), vec![(0, Source::Hub)]);
        let out = s.handle(Event::Done { index: 0, source: Source::Hub }, Duration::from_secs(12));
        assert_eq!(out, vec![Action::Cancel { index: 0, source: Source::Peer(a) }]);
    }

    #[test]
    fn alone_a_hub_chunk_on_a_stuck_connection_is_asked_of_the_hub_again() {
        let limits = Limits { hub: 4, stall_after: Duration::from_secs(20), ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 4, [], true, limits);
        assert_eq!(hub_chunks(&s.assign(T0)), vec![0, 1, 2, 3]);
        // Three chunks take a second each; the fourth hangs.
        for i in 0..3 {
            assert!(duplicates(&s.handle(Event::Done { index: i, source: Source::Hub }, ms(1000))).is_empty());
        }
        // Not before three times the usual second (nor the first-copy minimum).
        assert!(duplicates(&s.assign(ms(2900))).is_empty());
        assert_eq!(duplicates(&s.assign(ms(3000))), vec![(3, Source::Hub)]);
        assert!(duplicates(&s.assign(ms(9000))).is_empty(), "never a third copy");
        // Either copy finishing stops the other: the driver is told to cancel "the other Hub copy".
        let out = s.handle(Event::Done { index: 3, source: Source::Hub }, ms(3500));
        assert_eq!(out, vec![Action::Cancel { index: 3, source: Source::Hub }]);
        assert!(s.is_complete());
        assert_eq!((s.duplicates(), s.in_flight()), (1, 0));
    }

    #[test]
    fn with_others_on_the_file_a_second_hub_copy_waits_for_the_stall_timeout() {
        let other = PeerId::random();
        let limits = Limits { hub: 8, stall_after: Duration::from_secs(20), ..wide() };
        let mut s = FileScheduler::new(me(), 7, 64, [], true, limits);
        s.observe(Event::Member { peer: other, downloading: true, held: 0 }, T0);
        let mut started = hub_chunks(&s.assign(T0));
        let stuck = started[0];
        // Every chunk this node owns comes in a second, but the first, which hangs.
        while let Some(i) = started.pop() {
            if i != stuck {
                started.extend(hub_chunks(&s.handle(Event::Done { index: i, source: Source::Hub }, ms(1000))));
            }
        }
        assert_eq!(s.in_flight(), 1);
        // The other node keeps growing, so it is not passed over; its chunks are not ours.
        let grow = |held| Event::Member { peer: other, downloading: true, held };
        s.observe(grow(10), ms(9000));
        assert!(duplicates(&s.assign(ms(9000))).is_empty(), "its chunks still wait: not the end yet");
        // They arrive here (from the other node): only the stuck one is left.
        let theirs: Vec<u32> = (0..64).filter(|&i| i != stuck && s.owner(i) == other).collect();
        for i in theirs {
            let _ = s.handle(Event::Done { index: i, source: Source::Peer(other) }, ms(9500));
        }
        assert!(duplicates(&s.assign(ms(10_000))).is_empty(), "only 3× the usual time: the uplink is shared");
        s.observe(grow(20), ms(18_000));
        assert!(duplicates(&s.assign(ms(19_000))).is_empty());
        assert_eq!(duplicates(&s.assign(ms(21_000))), vec![(stuck, Source::Hub)]);
    }

    #[test]
    fn an_owner_whose_hub_bytes_grow_is_never_passed_over_however_slow_its_chunks() {
        let (me, other) = (me(), PeerId::random());
        let limits = Limits { stall_after: Duration::from_secs(10), ..wide() };
        let mut s = FileScheduler::new(me, 1, 32, [], true, limits);
        let joined = Event::Have { peer: other, have: bits(32, &[]), downloading: true, claimed: Bitmap::default() };
        let mine = hub_chunks(&s.handle(joined, T0));
        // A minute without a chunk done, but bytes keep arriving at the other owner.
        for t in (5..=60).step_by(5) {
            s.observe(Event::Progress { peer: other, bytes: t * 100_000 }, Duration::from_secs(t));
            assert!(hub_chunks(&s.assign(Duration::from_secs(t))).is_empty(), "took over at {t} s");
        }
        assert_eq!(s.takeovers(), 0);
        // Its bytes stop: after the timeout, its chunks are taken over.
        assert!(hub_chunks(&s.assign(Duration::from_secs(70))).is_empty());
        let rest = hub_chunks(&s.assign(Duration::from_secs(71)));
        assert_eq!(mine.len() + rest.len(), 32);
        // Bytes again: it owns its chunks again (those not yet started here go back to it).
        s.observe(Event::Progress { peer: other, bytes: 7_000_000 }, Duration::from_secs(72));
        assert!(s.owner(rest[0]) == other);
    }

    #[test]
    fn hub_fetches_a_node_met_mid_file_owns_are_released_once() {
        let (me, other) = (me(), PeerId::random());
        let mut s = FileScheduler::new(me, 1, 64, [], true, Limits { hub: 16, ..Limits::default() });
        // Alone: 16 chunks from the Hub at once.
        let started = hub_chunks(&s.assign(T0));
        assert_eq!(started.len(), 16);
        // Another node downloading the file appears: those it owns now are released, once.
        let out = s.handle(
            Event::Have { peer: other, have: bits(64, &[]), downloading: true, claimed: Bitmap::default() },
            ms(500),
        );
        let released: Vec<u32> =
            out.iter().filter_map(|a| if let Action::Release { index } = a { Some(*index) } else { None }).collect();
        assert!(!released.is_empty() && released.len() < 16, "{released:?}");
        assert!(released.iter().all(|&i| s.owner(i) == other));
        assert!(!s.assign(ms(600)).iter().any(|a| matches!(a, Action::Release { .. })), "asked once");
        // The driver stops the first (little had arrived) and lets the second finish.
        let out = s.handle(Event::Released { index: released[0] }, ms(700));
        assert!(!hub_chunks(&out).contains(&released[0]), "not fetched again here: its owner fetches it");
        if let Some(&kept) = released.get(1) {
            let _ = s.handle(Event::Done { index: kept, source: Source::Hub }, ms(900));
        }
        assert_eq!(s.released(), 1);
        // The owner has it: it comes from there.
        let have = bits(64, &[released[0]]);
        let out = s.handle(Event::Have { peer: other, have, downloading: true, claimed: Bitmap::default() }, ms(1000));
        assert!(fetches(&out).contains(&(released[0], Source::Peer(other))), "{out:?}");
        assert_eq!(s.takeovers(), 0);
    }

    #[test]
    fn no_endgame_while_a_chunk_waits_for_its_owner() {
        // Behind a slow uplink, chunks wait for their owners most of the time; an owner's fresh
        // chunk, pulled by many at once, is slow without anything being wrong. Copies then
        // were 13 % of all chunk fetches at 8 nodes and 100 Mbit/s.
        let (a, owner) = (PeerId::random(), PeerId::random());
        let limits = Limits { stall_after: Duration::from_secs(3600), ..wide() };
        let mut s = FileScheduler::new(me(), 7, 64, [], true, limits);
        s.observe(Event::Member { peer: owner, downloading: true, held: 0 }, T0);
        let mine = hub_chunks(&s.assign(T0));
        for &i in &mine {
            let _ = s.handle(Event::Done { index: i, source: Source::Hub }, ms(100));
        }
        let theirs: Vec<u32> = (0..64).filter(|i| !mine.contains(i)).collect();
        // One of the owner's chunks is at a, which is slow to send it; the others wait.
        let have = bits(64, &theirs[..1]);
        let out = s.handle(Event::Have { peer: a, have, downloading: false, claimed: Bitmap::default() }, ms(200));
        assert_eq!(fetches(&out), vec![(theirs[0], Source::Peer(a))]);
        let b = PeerId::random();
        s.observe(
            Event::Have { peer: b, have: bits(64, &theirs[..1]), downloading: false, claimed: Bitmap::default() },
            ms(300),
        );
        assert!(duplicates(&s.assign(Duration::from_secs(30))).is_empty(), "chunks still wait for their owner");
        // The rest arrives (from the owner); now the slow one gets its copy, from b.
        let mut out = Vec::new();
        for &i in &theirs[1..] {
            out.extend(s.handle(Event::Done { index: i, source: Source::Peer(owner) }, Duration::from_secs(31)));
        }
        out.extend(s.assign(Duration::from_secs(32)));
        assert_eq!(duplicates(&out), vec![(theirs[0], Source::Peer(b))]);
    }

    #[test]
    fn while_warming_up_known_peers_count_when_hub_requests_are_shared_out() {
        let limits = Limits { hub: 32, warmup: Duration::from_secs(1), ..Limits::default() };
        let mut s = FileScheduler::new(me(), 7, 64, [], true, limits);
        for _ in 0..7 {
            let idle = Event::Have {
                peer: PeerId::random(),
                have: bits(64, &[]),
                downloading: false,
                claimed: Bitmap::default(),
            };
            s.observe(idle, T0);
        }
        // Seven peers, none downloading yet: a share as if all eight were (32 / 16).
        assert_eq!(hub_chunks(&s.assign(T0)).len(), 2);
        assert!(hub_chunks(&s.assign(ms(900))).is_empty());
        // After the warm-up nobody else turned out to download it: all 32 connections.
        assert_eq!(hub_chunks(&s.assign(ms(1000))).len(), 30);
    }
}
