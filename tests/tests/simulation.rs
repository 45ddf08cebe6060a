//! The scheduler at scale: 100 and 1,000 simulated nodes with churn, in simulated time.
//!
//! Every node runs the real [`FileScheduler`] (the pure state machine `swarm-dl` drives over
//! sockets). The world around it is simulated: a Hub uplink shared equally by the transfers on
//! it, a LAN where each node sends and receives at a fixed rate shared by its transfers, a few
//! random neighbours per node whose availability it sees (as `Have` answers, with the chunks each
//! says have left the Hub), and membership learnt by gossip over those neighbours (`Member`
//! events as news arrives; a death is seen at once only by the dead node's neighbours). Nodes
//! die and join mid-download.
//!
//! The gossip is the simulation's: the node itself learns who downloads a file only from the
//! peers it is connected to (their availability answers, and their questions). The simulation
//! thus shows what the scheduler does with partial, late membership, as a swarm of 1,000 would
//! have; carrying membership between nodes that are not connected is not built yet.
//!
//! The test prints Hub bytes / repo and makespan / bound (bound = repo size / uplink) and holds
//! them to limits, so that regressions that show only at scale are caught.

use std::time::Duration;
use swarm_node::scheduler::{Action, Event, Fault, FileScheduler, Limits, Source};
use swarm_node::swarm::libp2p::PeerId;
use swarm_protocol::wire::Bitmap;

const CHUNK: f64 = 4.0 * 1048576.0;
const UPLINK: f64 = 50e6; // 400 Mbit/s
const LAN: f64 = 125e6; // 1 Gbit/s per node, each way
const DT: f64 = 0.05;
const NEIGHBOURS: usize = 8;

struct Node {
    id: PeerId,
    sched: FileScheduler,
    have: Bitmap,
    claimed: Bitmap,
    /// Bytes received from the Hub (announced with availability, for stall detection).
    hub_bytes: f64,
    alive: bool,
    finished_at: Option<f64>,
    neighbours: Vec<usize>,
    /// Membership news it has heard (bit `e` is `World::news[e]`).
    heard: Vec<u64>,
    /// When it joined.
    born: f64,
    /// When it last heard news, or joined.
    last_news: f64,
    /// Whether it has started placing chunks (after the settle, as `get` waits for peers).
    settled: bool,
}

/// Membership news, spread by gossip: each tick, every live node hears what its live neighbours
/// had heard by the tick before, so news takes a few ticks to cross the swarm.
#[derive(Clone, Copy)]
enum News {
    /// The node started downloading.
    Joined(usize),
    /// The node finished (it still serves; it no longer owns chunks).
    Finished(usize),
    /// The node died (its neighbours see the connection close at once).
    Died(usize),
}

fn hear(bits: &mut Vec<u64>, e: usize) {
    if bits.len() <= e / 64 {
        bits.resize(e / 64 + 1, 0);
    }
    bits[e / 64] |= 1 << (e % 64);
}

/// A node places no chunk until it has heard no membership news for this long (as `get` waits
/// until no peer has connected for `swarm::PEERS_SETTLE`), or for at most [`SETTLE_MAX`].
/// Without it, 1,000 nodes that each knew only their neighbours owned (and fetched) every chunk
/// many times over in the first tick, and the uplink collapsed: no node finished.
const SETTLE_QUIET: f64 = 0.1;
const SETTLE_MAX: f64 = 3.0;

struct Transfer {
    dst: usize,
    src: Option<usize>,
    index: u32,
    left: f64,
    /// Another copy won (endgame).
    cancelled: bool,
}

struct World {
    nodes: Vec<Node>,
    index: std::collections::HashMap<PeerId, usize>,
    transfers: Vec<Transfer>,
    chunks: u32,
    salt: u64,
    hub_bytes: f64,
    rng: u64,
    news: Vec<News>,
}

impl World {
    fn rand(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    fn add_node(&mut self, now: f64) {
        // Ids from the seeded generator, so that a run is repeatable.
        let mut secret = [0u8; 32];
        for b in secret.chunks_mut(8) {
            let r = self.rand(usize::MAX).to_le_bytes();
            b.copy_from_slice(&r);
        }
        let id = swarm_node::swarm::libp2p::identity::Keypair::ed25519_from_bytes(secret)
            .map(|k| k.public().to_peer_id())
            .unwrap_or_else(|_| PeerId::random());
        // As `get` sets them: --max-workers Hub connections alone, half of them as the window.
        let workers = swarm_node::fetch::DEFAULT_MAX_WORKERS;
        let limits = Limits {
            hub: workers,
            hub_window: workers / 2,
            stall_after: Limits::stall_for(CHUNK as u64),
            ..Limits::default()
        };
        let sched = FileScheduler::new(id, self.salt, self.chunks, [], true, limits);
        let me = self.nodes.len();
        let mut heard = Vec::new();
        hear(&mut heard, self.news.len());
        self.news.push(News::Joined(me));
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].alive).collect();
        let mut neighbours = Vec::new();
        for _ in 0..NEIGHBOURS.min(alive.len()) {
            let j = alive[self.rand(alive.len())];
            if !neighbours.contains(&j) {
                neighbours.push(j);
                self.nodes[j].neighbours.push(me);
            }
        }
        let (have, claimed) = (Bitmap::new(self.chunks), Bitmap::new(self.chunks));
        self.index.insert(id, self.nodes.len());
        self.nodes.push(Node {
            id,
            sched,
            have,
            claimed,
            hub_bytes: 0.0,
            alive: true,
            finished_at: None,
            neighbours,
            heard,
            born: now,
            last_news: now,
            settled: false,
        });
    }

    fn kill(&mut self, victim: usize, now: f64) {
        let at = Duration::from_secs_f64(now);
        self.nodes[victim].alive = false;
        let id = self.nodes[victim].id;
        let mut failed = Vec::new();
        self.transfers.retain(|t| {
            if t.src == Some(victim) {
                failed.push((t.dst, t.index));
            }
            t.src != Some(victim) && t.dst != victim
        });
        for (dst, index) in failed {
            let _ = self.nodes[dst].sched.observe(Event::Failed { index, peer: id, fault: Fault::Unavailable }, at);
        }
        let e = self.news.len();
        self.news.push(News::Died(victim));
        for j in self.nodes[victim].neighbours.clone() {
            let n = &mut self.nodes[j];
            if n.alive {
                hear(&mut n.heard, e);
                let _ = n.sched.observe(Event::PeerGone(id), at);
            }
        }
    }

    fn start(&mut self, dst: usize, actions: Vec<Action>, at: Duration) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            if let Action::Release { index } = a {
                // Stopped if nothing has arrived, as the real driver does.
                let keep_from = CHUNK - 1.0; // bytes left
                let little = |t: &Transfer| {
                    t.dst == dst && t.index == index && t.src.is_none() && !t.cancelled && t.left > keep_from
                };
                if let Some(t) = self.transfers.iter_mut().find(|t| little(t)) {
                    t.cancelled = true;
                    let b = &mut self.nodes[dst].claimed.0[(index / 8) as usize];
                    *b &= !(1 << (index % 8));
                    queue.extend(self.nodes[dst].sched.handle(Event::Released { index }, at));
                }
            }
            if let Action::Cancel { index, source } = a {
                let src = match source {
                    Source::Hub => None,
                    Source::Peer(p) => self.index.get(&p).copied(),
                };
                for t in self.transfers.iter_mut().filter(|t| t.dst == dst && t.index == index && t.src == src) {
                    t.cancelled = true;
                }
            }
            if let Action::Fetch { index, source } | Action::Duplicate { index, source } = a {
                let src = match source {
                    Source::Hub => {
                        self.nodes[dst].claimed.set(index);
                        None
                    }
                    Source::Peer(p) => self.index.get(&p).copied(),
                };
                if matches!(source, Source::Peer(_)) && src.is_none_or(|s| !self.nodes[s].alive) {
                    continue;
                }
                self.transfers.push(Transfer { dst, src, index, left: CHUNK, cancelled: false });
            }
        }
    }

    fn tick(&mut self, now: f64) {
        let at = Duration::from_secs_f64(now);
        // What each node would announce as having left the Hub, as of the start of the tick.
        let landed: Vec<Bitmap> = self.nodes.iter().map(|n| n.sched.landed()).collect();
        let told: Vec<Vec<u64>> = self.nodes.iter().map(|n| n.heard.clone()).collect();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let mut news = Vec::new();
            for &j in &self.nodes[i].neighbours {
                if !self.nodes[j].alive {
                    continue;
                }
                for (w, &bits) in told[j].iter().enumerate() {
                    let new = bits & !self.nodes[i].heard.get(w).copied().unwrap_or(0);
                    for b in 0..64 {
                        if new & (1 << b) != 0 {
                            news.push(w * 64 + b);
                        }
                    }
                }
            }
            news.sort_unstable();
            news.dedup();
            if !news.is_empty() {
                self.nodes[i].last_news = now;
            }
            for e in news {
                hear(&mut self.nodes[i].heard, e);
                let event = match self.news[e] {
                    News::Joined(n) if n != i => Event::Member { peer: self.nodes[n].id, downloading: true, held: 0 },
                    News::Finished(n) if n != i => {
                        Event::Member { peer: self.nodes[n].id, downloading: false, held: 0 }
                    }
                    News::Died(n) if n != i => Event::PeerGone(self.nodes[n].id),
                    _ => continue,
                };
                let _ = self.nodes[i].sched.observe(event, at);
            }
        }

        // Availability from neighbours, then placement, for every node still downloading.
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive || self.nodes[i].finished_at.is_some() {
                continue;
            }
            let news: Vec<Event> = self.nodes[i]
                .neighbours
                .iter()
                .filter(|&&j| self.nodes[j].alive)
                .map(|&j| {
                    let n = &self.nodes[j];
                    Event::Have {
                        peer: n.id,
                        have: n.have.clone(),
                        downloading: n.finished_at.is_none(),
                        claimed: n.claimed.clone(),
                    }
                })
                .collect();
            let landed: Vec<Event> = self.nodes[i]
                .neighbours
                .iter()
                .filter(|&&j| self.nodes[j].alive)
                .map(|&j| Event::Landed(landed[j].clone()))
                .collect();
            for e in news.into_iter().chain(landed) {
                let _ = self.nodes[i].sched.observe(e, at);
            }
            let progress: Vec<Event> = self.nodes[i]
                .neighbours
                .iter()
                .filter(|&&j| self.nodes[j].alive)
                .map(|&j| Event::Progress { peer: self.nodes[j].id, bytes: self.nodes[j].hub_bytes as u64 })
                .collect();
            for e in progress {
                let _ = self.nodes[i].sched.observe(e, at);
            }
            let n = &mut self.nodes[i];
            n.settled |= now - n.last_news >= SETTLE_QUIET || now - n.born >= SETTLE_MAX;
            if !n.settled {
                continue;
            }
            let actions = self.nodes[i].sched.assign(at);
            self.start(i, actions, at);
        }
        // Move bytes.
        self.transfers.retain(|t| !t.cancelled);
        let hub_flows = self.transfers.iter().filter(|t| t.src.is_none()).count().max(1) as f64;
        let mut up = vec![0usize; self.nodes.len()];
        let mut down = vec![0usize; self.nodes.len()];
        for t in &self.transfers {
            down[t.dst] += 1;
            if let Some(s) = t.src {
                up[s] += 1;
            }
        }
        let mut done = Vec::new();
        let mut hub_moved = Vec::new();
        for (k, t) in self.transfers.iter_mut().enumerate() {
            let rate = match t.src {
                None => (UPLINK / hub_flows).min(LAN / down[t.dst] as f64),
                Some(s) => (LAN / up[s] as f64).min(LAN / down[t.dst] as f64),
            };
            let moved = (rate * DT).min(t.left);
            t.left -= moved;
            if t.src.is_none() {
                self.hub_bytes += moved;
                hub_moved.push((t.dst, moved));
            }
            if t.left <= 0.0 {
                done.push(k);
            }
        }
        for (dst, moved) in hub_moved {
            self.nodes[dst].hub_bytes += moved;
        }
        for k in done.into_iter().rev() {
            let t = self.transfers.swap_remove(k);
            if t.cancelled {
                continue;
            }
            let source = t.src.map_or(Source::Hub, |s| Source::Peer(self.nodes[s].id));
            let n = &mut self.nodes[t.dst];
            n.have.set(t.index);
            if t.src.is_none() {
                let b = &mut n.claimed.0[(t.index / 8) as usize];
                *b &= !(1 << (t.index % 8));
            }
            let actions = n.sched.handle(Event::Done { index: t.index, source }, at);
            if n.sched.is_complete() && n.finished_at.is_none() {
                n.finished_at = Some(now);
                hear(&mut n.heard, self.news.len());
                self.news.push(News::Finished(t.dst));
            } else {
                self.start(t.dst, actions, at);
            }
        }
    }
}

struct Outcome {
    hub_ratio: f64,
    makespan: f64,
    bound: f64,
    finished: usize,
    alive: usize,
    /// Endgame duplicates per node, on average.
    duplicates: f64,
}

fn simulate(nodes: usize, chunks: u32, deaths: usize, joins: usize, seed: u64) -> Outcome {
    let mut w = World {
        nodes: Vec::new(),
        index: Default::default(),
        transfers: Vec::new(),
        chunks,
        salt: 77,
        hub_bytes: 0.0,
        rng: seed | 1,
        news: Vec::new(),
    };
    for _ in 0..nodes {
        w.add_node(0.0);
    }
    let repo = chunks as f64 * CHUNK;
    let bound = repo / UPLINK;
    let mut now = 0.0;
    let (mut killed, mut joined) = (0, 0);
    while now < 20.0 * bound {
        // Churn through the first part of the download: deaths and late joiners, spread out.
        let phase = now / bound;
        if killed < deaths && phase > 0.2 + 0.6 * killed as f64 / deaths.max(1) as f64 {
            let alive: Vec<usize> = (0..w.nodes.len()).filter(|&i| w.nodes[i].alive).collect();
            let v = alive[w.rand(alive.len())];
            w.kill(v, now);
            killed += 1;
        }
        if joined < joins && phase > 0.3 + 0.6 * joined as f64 / joins.max(1) as f64 {
            w.add_node(now);
            joined += 1;
        }
        w.tick(now);
        now += DT;
        if killed == deaths && joined == joins && w.nodes.iter().all(|n| !n.alive || n.finished_at.is_some()) {
            break;
        }
    }
    let alive = w.nodes.iter().filter(|n| n.alive).count();
    let finished = w.nodes.iter().filter(|n| n.alive && n.finished_at.is_some()).count();
    let makespan = w.nodes.iter().filter(|n| n.alive).filter_map(|n| n.finished_at).fold(0.0, f64::max);
    let duplicates = w.nodes.iter().map(|n| f64::from(n.sched.duplicates())).sum::<f64>() / w.nodes.len() as f64;
    Outcome { hub_ratio: w.hub_bytes / repo, makespan, bound, finished, alive, duplicates }
}

fn report(label: &str, o: &Outcome) {
    println!(
        "{label}: {}/{} live nodes finished; Hub bytes / repo {:.3}; makespan {:.2} s = {:.2} x bound ({:.2} s); endgame duplicates {:.1} chunks per node",
        o.finished,
        o.alive,
        o.hub_ratio,
        o.makespan,
        o.makespan / o.bound,
        o.bound,
        o.duplicates
    );
}

#[test]
fn one_hundred_nodes_with_churn() {
    let o = simulate(100, 64, 10, 5, 0x5eed);
    report("100 nodes, 10 die, 5 join", &o);
    assert_eq!(o.finished, o.alive, "every live node finishes");
    assert!(o.hub_ratio <= 1.10, "Hub bytes {:.3} x repo", o.hub_ratio);
    assert!(o.makespan <= 2.0 * o.bound, "makespan {:.2} x bound", o.makespan / o.bound);
}

#[test]
fn one_hundred_nodes_without_churn_pull_the_repo_about_once() {
    // Not exactly once: a node sees the availability of 8 neighbours only, so when a node that
    // finished stops owning chunks, the new owner may not see who holds them and fetches from
    // the Hub (runs with other seeds gave 1.00 to 1.05).
    let o = simulate(100, 64, 0, 0, 0xbeef);
    report("100 nodes, no churn", &o);
    assert_eq!(o.finished, o.alive);
    assert!(o.hub_ratio <= 1.10, "Hub bytes {:.3} x repo", o.hub_ratio);
    assert!(o.makespan <= 2.0 * o.bound, "makespan {:.2} x bound", o.makespan / o.bound);
}

#[test]
fn a_thousand_nodes_with_churn() {
    let o = simulate(1000, 128, 50, 20, 0xfeed);
    // 512 MiB, the size `bench/cluster.py` uses. Without the swarm-wide Hub window all 128
    // chunks came from the Hub at once, landed together at the end, and only then spread:
    // 1.82 x the bound. With it (16, the default), 1.41 x; 1.43 to 1.47 x with four other seeds.
    report("1000 nodes, 50 die, 20 join", &o);
    assert_eq!(o.finished, o.alive, "every live node finishes");
    assert!(o.hub_ratio <= 1.05, "Hub bytes {:.3} x repo", o.hub_ratio);
    assert!(o.makespan <= 1.5 * o.bound, "makespan {:.2} x bound", o.makespan / o.bound);
}
