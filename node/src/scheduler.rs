//! Which chunk of a file to fetch next, and from whom: a pure state machine.
//!
//! [`FileScheduler::handle`] takes an [`Event`] (a peer's availability, a chunk done or failed, a
//! peer gone) and returns the [`Action`]s to take. It does no I/O and reads no clock, so it is
//! tested with plain values and driven by [`crate::fetch`] over real sockets.
//!
//! Rules (DESIGN §3, "peers first"):
//! - A chunk that some usable peer holds is fetched from a peer, never from the Hub: rarest
//!   chunks first, each from the holder with the fewest requests in flight, at most
//!   [`Limits::per_peer`] at a time per peer.
//! - Only chunks no usable peer holds go to the Hub, at most [`Limits::hub`] at a time, and
//!   only if the Hub is allowed (offline runs finish from peers or not at all).
//! - A peer that sent bytes not matching their record is banned: none of its chunks are asked
//!   for again. A peer that fails otherwise (gone, busy, no longer holds it) loses the bit for
//!   that chunk, and after [`Limits::max_peer_failures`] failures in a row, its place.
//! - One source per chunk at a time: two writers into one chunk's bytes could let a bad copy
//!   overwrite a verified one.

use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
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
    /// The peer could not deliver (gone, busy, not held, timeout): try elsewhere.
    Unavailable,
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
    },
    /// A peer left (disconnected, or banned elsewhere).
    PeerGone(PeerId),
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
    /// Stop using this peer for this file (banned).
    Ban(PeerId),
}

/// Concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per peer.
    pub per_peer: u32,
    /// Requests in flight to the Hub for this file.
    pub hub: u32,
    /// Failures in a row after which a peer is dropped for this file.
    pub max_peer_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_peer: 4, hub: 16, max_peer_failures: 3 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Missing,
    InFlight(Source),
    Done,
}

#[derive(Debug)]
struct Peer {
    have: Bitmap,
    in_flight: u32,
    failures: u32,
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
}

impl FileScheduler {
    /// A schedule for a file of `count` chunks, of which `done` are already held.
    pub fn new(count: u32, done: impl IntoIterator<Item = u32>, hub_allowed: bool, limits: Limits) -> Self {
        let mut chunks = vec![Chunk::Missing; count as usize];
        for i in done {
            if let Some(c) = chunks.get_mut(i as usize) {
                *c = Chunk::Done;
            }
        }
        Self { chunks, peers: HashMap::new(), banned: HashSet::new(), hub_in_flight: 0, hub_allowed, limits }
    }

    /// Peers not to use (banned before this file started).
    pub fn ban_all(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        for p in peers {
            self.banned.insert(p);
            self.peers.remove(&p);
        }
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
        self.chunks.iter().filter(|c| matches!(c, Chunk::InFlight(_))).count() as u32
    }

    /// Chunks not yet done.
    pub fn remaining(&self) -> u32 {
        self.chunks.iter().filter(|c| **c != Chunk::Done).count() as u32
    }

    /// Known, usable peers.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    /// Applies an event and returns what to do now.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = self.observe(event);
        out.extend(self.assign());
        out
    }

    /// Applies an event without starting anything: for a batch of events (the answers of every
    /// peer) that must all be known before chunks are placed, or a chunk only one peer was
    /// heard from would go to the Hub. Follow with [`Self::assign`].
    pub fn observe(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Have { peer, have } => {
                if !self.banned.contains(&peer) {
                    let in_flight = self.peers.get(&peer).map_or(0, |p| p.in_flight);
                    self.peers.insert(peer, Peer { have, in_flight, failures: 0 });
                }
            }
            Event::PeerGone(peer) => self.drop_peer(&peer),
            Event::Done { index, source } => {
                self.release(index, source);
                if let Some(c) = self.chunks.get_mut(index as usize) {
                    *c = Chunk::Done;
                }
                if let Source::Peer(p) = source
                    && let Some(peer) = self.peers.get_mut(&p)
                {
                    peer.failures = 0;
                }
            }
            Event::Failed { index, peer, fault } => {
                self.release(index, Source::Peer(peer));
                if let Some(c) = self.chunks.get_mut(index as usize)
                    && *c == Chunk::InFlight(Source::Peer(peer))
                {
                    *c = Chunk::Missing;
                }
                match fault {
                    Fault::BadData => {
                        self.banned.insert(peer);
                        self.drop_peer(&peer);
                        out.push(Action::Ban(peer));
                    }
                    Fault::Unavailable => {
                        let drop = match self.peers.get_mut(&peer) {
                            Some(p) => {
                                p.have.clear(index);
                                p.failures += 1;
                                p.failures >= self.limits.max_peer_failures
                            }
                            None => false,
                        };
                        if drop {
                            self.drop_peer(&peer);
                        }
                    }
                }
            }
        }
        out
    }

    fn release(&mut self, index: u32, source: Source) {
        if self.chunks.get(index as usize) != Some(&Chunk::InFlight(source)) {
            return;
        }
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
        // Its requests in flight will report back as failures; nothing else to undo.
    }

    /// Starts as many fetches as the limits allow: rarest peer-held chunks first, then the Hub
    /// for chunks no peer holds. Idempotent: call it whenever capacity may have freed.
    pub fn assign(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
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
        for (_, i) in holders {
            let best = self
                .peers
                .iter_mut()
                .filter(|(_, p)| p.have.get(i) && p.in_flight < self.limits.per_peer)
                .min_by_key(|(id, p)| (p.in_flight, **id));
            if let Some((id, p)) = best {
                p.in_flight += 1;
                let source = Source::Peer(*id);
                self.chunks[i as usize] = Chunk::InFlight(source);
                out.push(Action::Fetch { index: i, source });
            }
        }
        if self.hub_allowed {
            for i in hub_only {
                if self.hub_in_flight >= self.limits.hub {
                    break;
                }
                self.hub_in_flight += 1;
                self.chunks[i as usize] = Chunk::InFlight(Source::Hub);
                out.push(Action::Fetch { index: i, source: Source::Hub });
            }
        }
        out
    }
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
                Action::Ban(_) => None,
            })
            .collect()
    }

    #[test]
    fn alone_everything_goes_to_the_hub_within_its_limit() {
        let mut s = FileScheduler::new(10, [3], true, Limits { hub: 4, ..Limits::default() });
        let a = fetches(&s.assign());
        assert_eq!(a, vec![(0, Source::Hub), (1, Source::Hub), (2, Source::Hub), (4, Source::Hub)]);
        let a = fetches(&s.handle(Event::Done { index: 1, source: Source::Hub }));
        assert_eq!(a, vec![(5, Source::Hub)]);
    }

    #[test]
    fn chunks_a_peer_holds_never_go_to_the_hub() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(6, [], true, Limits { per_peer: 2, hub: 8, max_peer_failures: 3 });
        let first = fetches(&s.handle(Event::Have { peer: a, have: bits(6, &[0, 1, 2, 3]) }));
        // Two from a (its limit); 4 and 5 nobody holds: Hub.
        assert_eq!(first.iter().filter(|(_, s)| *s == Source::Peer(a)).count(), 2);
        assert_eq!(first.iter().filter(|(_, s)| *s == Source::Hub).map(|(i, _)| *i).collect::<Vec<_>>(), vec![4, 5]);
        // b holds 2 and 3 as well: the rest spreads to b, rarest (only-a) chunks were taken first.
        let second = fetches(&s.handle(Event::Have { peer: b, have: bits(6, &[2, 3]) }));
        assert_eq!(second, vec![(2, Source::Peer(b)), (3, Source::Peer(b))]);
        assert_eq!(s.in_flight(), 6);
    }

    #[test]
    fn rarest_first_and_least_loaded_holder() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(2, [], false, Limits { per_peer: 1, hub: 0, max_peer_failures: 3 });
        s.peers.insert(a, Peer { have: bits(2, &[0, 1]), in_flight: 0, failures: 0 });
        s.peers.insert(b, Peer { have: bits(2, &[0]), in_flight: 0, failures: 0 });
        // Chunk 1 has one holder, chunk 0 two: 1 goes first (to a), then 0 to b, the idle one.
        assert_eq!(fetches(&s.assign()), vec![(1, Source::Peer(a)), (0, Source::Peer(b))]);
    }

    #[test]
    fn a_batch_of_answers_is_placed_as_a_whole() {
        // Regression: the first answer of a refresh was placed before the others were known, so
        // an empty answer from one peer sent every chunk to the Hub although the next peer held
        // them all (seen in `swarm-dl demo`: 128 MiB of 200 from the Hub).
        let (empty, full) = (PeerId::random(), PeerId::random());
        let mut s = FileScheduler::new(4, [], true, Limits { per_peer: 2, hub: 8, max_peer_failures: 3 });
        assert!(s.observe(Event::Have { peer: empty, have: bits(4, &[]) }).is_empty());
        assert!(s.observe(Event::Have { peer: full, have: bits(4, &[0, 1, 2, 3]) }).is_empty());
        let a = fetches(&s.assign());
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|(_, src)| *src == Source::Peer(full)));
    }

    #[test]
    fn bad_data_bans_and_refetches_elsewhere() {
        let a = PeerId::random();
        let mut s = FileScheduler::new(1, [], true, Limits::default());
        s.peers.insert(a, Peer { have: bits(1, &[0]), in_flight: 0, failures: 0 });
        assert_eq!(fetches(&s.assign()), vec![(0, Source::Peer(a))]);
        let out = s.handle(Event::Failed { index: 0, peer: a, fault: Fault::BadData });
        assert!(out.contains(&Action::Ban(a)));
        assert_eq!(fetches(&out), vec![(0, Source::Hub)]);
        // A banned peer's later availability is ignored.
        assert!(fetches(&s.handle(Event::Have { peer: a, have: bits(1, &[0]) })).is_empty());
        assert!(s.peers().all(|p| *p != a));
    }

    #[test]
    fn a_peer_that_keeps_failing_is_dropped_and_offline_gets_stuck() {
        let a = PeerId::random();
        let mut s = FileScheduler::new(4, [], false, Limits { per_peer: 1, hub: 0, max_peer_failures: 2 });
        assert_eq!(
            fetches(&s.handle(Event::Have { peer: a, have: bits(4, &[0, 1, 2, 3]) })),
            vec![(0, Source::Peer(a))]
        );
        assert_eq!(
            fetches(&s.handle(Event::Failed { index: 0, peer: a, fault: Fault::Unavailable })),
            vec![(1, Source::Peer(a))]
        );
        assert!(fetches(&s.handle(Event::Failed { index: 1, peer: a, fault: Fault::Unavailable })).is_empty());
        assert!(s.is_stuck());
    }

    #[test]
    fn done_chunks_are_not_fetched_and_completion_is_seen() {
        let mut s = FileScheduler::new(2, [0], true, Limits::default());
        assert_eq!(fetches(&s.assign()), vec![(1, Source::Hub)]);
        assert!(!s.is_complete());
        assert!(fetches(&s.handle(Event::Done { index: 1, source: Source::Hub })).is_empty());
        assert!(s.is_complete() && !s.is_stuck());
    }
}
