//! The node's presence on the network: one libp2p `Swarm`, owned by one event-loop task, and a
//! cloneable [`NodeHandle`] through which everything else talks to it (commands with one-shot
//! replies), as in rust-libp2p's `file-sharing` example.
//!
//! Transport: TCP + Noise with AES-256-GCM ([`secure`]) + yamux: one encryption layer. A private
//! swarm's key goes into the Noise prologue ([`noise_prologue`]): both ends mix it into the
//! handshake hash, so a node without the same key fails the handshake, and no byte of the swarm
//! flows to it. (It was libp2p's pnet, an XSalsa20 layer under noise: every byte encrypted twice.)
//!
//! Behaviours: mDNS (LAN discovery), identify (addresses for Kademlia), Kademlia under
//! `/swarm-dl/kad/1` in server mode (cluster discovery and one provider record per complete
//! blob), `/swarm-dl/have/6` (availability with signed chunk records, [`holdings`]) and
//! `/swarm-dl/chunk/1` (bytes, [`transfer`]).
//!
//! It must not decide what to fetch (that is [`crate::scheduler`] and [`crate::fetch`]) nor write
//! into the cache (that is [`crate::store`] and [`crate::cache`]).

pub mod codec;
pub mod holdings;
pub mod hooks;
pub mod meta;
pub mod preheat;
pub mod secure;
pub mod transfer;

pub use libp2p;

use futures::StreamExt as _;
use holdings::{Holdings, Record, Signer};
use hooks::Hooks;
use libp2p::core::transport::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::pnet::PreSharedKey;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, Transport as _, identify, mdns, tcp, yamux};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_protocol::chunk::ChunkLayout;
use swarm_protocol::hash::{ChunkHash, Etag};
use swarm_protocol::repo::Printable;
use swarm_protocol::wire::{self, HaveRequest, HaveResponse, MetaRequest, MetaResponse};
use tokio::sync::{Notify, mpsc, oneshot};
use transfer::Transfer;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Hugging Face hub cache whose blobs the node serves.
    pub cache_root: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial (and re-dial while they are away).
    pub peers: Vec<Multiaddr>,
    /// Private swarm key; `None` is an open swarm.
    pub swarm_key: Option<PreSharedKey>,
    /// LAN discovery by mDNS.
    pub mdns: bool,
    /// The node's key.
    pub key: Keypair,
    /// Cap on bytes per second served to peers.
    pub max_upload_rate: Option<u64>,
    /// Cap on bytes per second pulled (Hub and peers) by all the downloads this node runs that
    /// set no cap of their own.
    pub max_download_rate: Option<u64>,
    /// How long a peer caught lying stays banned.
    pub ban_time: Duration,
    /// Misbehave on purpose (tests of hostile peers only; empty without feature `test-hooks`).
    pub hooks: Hooks,
    /// Accept preheats from any peer of an open swarm (a private swarm's members always may).
    pub accept_preheat: bool,
    /// Download and upload caps by local time (`join --rate-schedule`); outside its rules the
    /// two caps above apply.
    pub rate_schedule: Option<crate::schedule::Schedule>,
}

impl NodeConfig {
    /// Defaults for a node serving `cache_root` with key `key`: listen on every interface on a
    /// random port, mDNS on, open swarm.
    pub fn new(cache_root: PathBuf, key: Keypair) -> Self {
        Self {
            cache_root,
            listen: vec![default_listen()],
            peers: Vec::new(),
            swarm_key: None,
            mdns: true,
            key,
            max_upload_rate: None,
            max_download_rate: None,
            ban_time: Duration::from_secs(3600),
            hooks: Hooks::default(),
            accept_preheat: false,
            rate_schedule: None,
        }
    }
}

/// `/ip4/0.0.0.0/tcp/0`.
pub fn default_listen() -> Multiaddr {
    Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED).with(libp2p::multiaddr::Protocol::Tcp(0))
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport or a behaviour could not be built.
    #[error("cannot start the swarm node: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The swarm key file is unreadable or malformed.
    #[error("cannot use swarm key '{}': {reason}; make one with `swarm-dl keygen FILE`", .path.display())]
    SwarmKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The node identity cannot be read or written.
    #[error("cannot use node identity '{}': {reason}", .path.display())]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    have: request_response::Behaviour<codec::HaveCodec>,
    meta: request_response::Behaviour<codec::MetaCodec>,
    report: request_response::Behaviour<codec::ReportCodec>,
    preheat: request_response::Behaviour<codec::PreheatCodec>,
    stream: libp2p_stream::Behaviour,
}

/// What the event loop is asked to do.
enum Command {
    /// Stop: close every connection and end the loop.
    Shutdown,
    /// Work for the swarm.
    Peer(PeerCommand),
}

impl From<PeerCommand> for Command {
    fn from(c: PeerCommand) -> Self {
        Self::Peer(c)
    }
}

/// Work the event loop does for the rest of the node.
enum PeerCommand {
    Have { peer: PeerId, req: HaveRequest, reply: oneshot::Sender<Result<HaveResponse, String>> },
    Respond { channel: request_response::ResponseChannel<HaveResponse>, resp: HaveResponse },
    Meta { peer: PeerId, req: MetaRequest, reply: oneshot::Sender<Result<MetaResponse, String>> },
    MetaRespond { channel: request_response::ResponseChannel<MetaResponse>, resp: MetaResponse },
    Report { peer: PeerId, req: wire::ChunkRequest },
    ReportRespond { channel: request_response::ResponseChannel<wire::ReportAck>, resp: wire::ReportAck },
    Preheat { peer: PeerId, req: Box<wire::PreheatRequest>, reply: oneshot::Sender<Result<wire::PreheatReply, String>> },
    Provide(Etag),
    FindProviders { etag: Etag, reply: oneshot::Sender<Vec<PeerId>> },
}

/// A file being downloaded here, offered to peers chunk by chunk ([`NodeHandle::offer`]).
#[derive(Debug, Clone)]
pub struct Offer {
    node: NodeHandle,
    etag: Etag,
    size: u64,
    partial: Arc<holdings::Partial>,
}

impl Offer {
    /// Marks chunk `index` as being fetched from the Hub now (`on`), or no longer: nodes
    /// deciding meanwhile wait for it instead of fetching it too.
    pub fn claim(&self, index: u32, on: bool) {
        self.partial.set_fetching(index, on);
    }

    /// Offers chunk `index`, whose bytes this node fetched from the Hub and hashed to `hash`,
    /// under this node's signature.
    pub fn add_own(&self, index: u32, hash: ChunkHash) {
        self.partial.add(index, self.node.shared.holdings.sign(&self.etag, self.size, index, hash));
    }

    /// Announces the chunks that have left the Hub, as this node's schedule knows them.
    pub fn set_landed(&self, bits: wire::Bitmap) {
        self.partial.set_landed(bits);
    }

    /// Waits until a peer downloading the file says it has news ([`wire::HaveRequest::news`]).
    pub async fn poked(&self) {
        self.partial.poked().await;
    }

    /// The peers that said they have news since the last call.
    pub fn take_news(&self) -> Vec<PeerId> {
        self.partial.take_news()
    }

    /// The counter of bytes received from the Hub for this file, announced to peers.
    pub fn hub_bytes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.partial.hub_bytes.clone()
    }

    /// Offers chunk `index`, received from a peer and checked against `record`, under that
    /// record (its signer stays answerable for it).
    pub fn add_relayed(&self, index: u32, record: Record) {
        self.partial.add(index, record);
    }
}

/// Files announced as about to be downloaded ([`NodeHandle::want`]), withdrawn on drop.
#[derive(Debug)]
pub struct Wanted {
    node: NodeHandle,
    etags: Vec<Etag>,
}

impl Drop for Wanted {
    fn drop(&mut self) {
        self.node.shared.holdings.unwant(self.etags.drain(..));
    }
}

/// What a peer holds of a file, its answer checked ([`NodeHandle::have`]).
#[derive(Debug)]
pub struct Availability {
    /// Per held chunk, the record sent for it (`None` for chunks the asker said it knew).
    pub chunks: Vec<(u32, Option<Record>)>,
    /// The peer downloads the file too.
    pub downloading: bool,
    /// Chunks the peer is fetching from the Hub now.
    pub fetching: wire::Bitmap,
    /// Bytes it has received from the Hub for the file so far (only grows while it progresses).
    pub hub_bytes: u64,
    /// Chunks that have left the Hub, as it knows them.
    pub landed: wire::Bitmap,
}

/// A peer's answer that failed its checks: the peer misbehaved (ban it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAnswer(pub String);

/// A peer this node is connected to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its id.
    pub id: String,
    /// The address of the connection.
    pub address: String,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
}

/// A file being downloaded by this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InProgress {
    /// `org/model: path/in/repo`.
    #[serde(default)]
    pub name: String,
    /// Its ETag.
    pub etag: String,
    /// Bytes present.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes per second over the last seconds (none before a second has passed).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Its size.
    pub size: u64,
    /// Chunks verified.
    pub chunks_held: u32,
    /// Chunks in all.
    pub chunks: u32,
}

/// What `swarm-dl status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub peer_id: String,
    /// Where it listens.
    pub listen: Vec<String>,
    /// True without a swarm key.
    pub open_swarm: bool,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// Complete blobs in the cache (all served).
    pub files_held: usize,
    /// Their bytes.
    pub bytes_held: u64,
    /// Files being downloaded.
    pub in_progress: Vec<InProgress>,
    /// Bytes received from peers since start.
    pub bytes_in: u64,
    /// Bytes sent to peers since start.
    pub bytes_out: u64,
    /// Receive rate over the last seconds, bytes/s.
    pub rate_in: u64,
    /// Send rate over the last seconds, bytes/s.
    pub rate_out: u64,
    /// Peers banned now.
    pub banned: Vec<String>,
    /// Chunks this node fetched from the Hub though another node owned them (it left or
    /// stalled): the only chunks that may have crossed the uplink twice.
    pub hub_takeovers: u64,
    /// Chunks asked of a second source in the endgame, because the first was slow.
    #[serde(default)]
    pub endgame_duplicates: u64,
    /// Connections that failed in the handshake (another swarm key, or none).
    #[serde(default)]
    pub handshake_failures: u64,
    /// Where Prometheus metrics are served (`join --metrics-listen`).
    #[serde(default)]
    pub metrics: Option<String>,
    /// Where unmodified Hub clients download through this node (`join --hub-listen`), for
    /// their `HF_ENDPOINT`.
    #[serde(default)]
    pub hub_endpoint: Option<String>,
    /// Preheats run or asked for here, newest first.
    #[serde(default)]
    pub preheats: Vec<preheat::PreheatView>,
}

/// Peers caught lying, and until when.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<HashMap<PeerId, Instant>>,
}

impl Bans {
    /// Bans `peer` for `time`.
    pub fn ban(&self, peer: PeerId, time: Duration, why: &str) {
        tracing::warn!(%peer, why, secs = time.as_secs(), "banning peer");
        self.until.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, Instant::now() + time);
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        let mut m = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(peer) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                m.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Peers banned now.
    pub fn current(&self) -> Vec<PeerId> {
        let now = Instant::now();
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(p, _)| *p)
            .collect()
    }
}

struct Shared {
    peer_id: PeerId,
    open: bool,
    cmd: mpsc::Sender<Command>,
    holdings: Arc<Holdings>,
    /// Record signatures already checked.
    checked: Arc<holdings::CheckedRecords>,
    transfer: Arc<Transfer>,
    bans: Bans,
    ban_time: Duration,
    listen: Mutex<Vec<Multiaddr>>,
    connected: Mutex<HashMap<PeerId, Multiaddr>>,
    peers_changed: Notify,
    /// When a peer last connected.
    peers_changed_at: Mutex<Instant>,
    rate_in: AtomicU64,
    rate_out: AtomicU64,
    takeovers: AtomicU64,
    duplicates: AtomicU64,
    handshake_failures: AtomicU64,
    /// mDNS or `--peer`s: something can bring peers, so a download may wait for them.
    discovers: bool,
    /// `--peer`s were given.
    has_static_peers: bool,
    /// A download already waited for unreachable `--peer`s and went on without them.
    static_wait_spent: std::sync::atomic::AtomicBool,
    download: Option<Arc<crate::throttle::Throttle>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where the metrics are served, if they are (`status` says).
    metrics_url: std::sync::OnceLock<String>,
    hub_endpoint: std::sync::OnceLock<std::net::SocketAddr>,
    /// Preheats run or asked for here.
    preheat: preheat::Board,
    /// [`NodeConfig::accept_preheat`].
    accept_preheat: bool,
}

/// How long the set of peers must stay the same, once one is connected, before a node that has
/// just started takes it as its view of the swarm: the nodes one mDNS answer names connect within
/// milliseconds of each other, and nodes that start together must agree on who owns what.
pub const PEERS_SETTLE: Duration = Duration::from_millis(100);

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").field("peer_id", &self.shared.peer_id).finish()
    }
}

/// A running node: drop or [`Node::shutdown`] to stop it.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
    /// The rate schedule's driver, if there is a schedule.
    schedule: Option<tokio::task::JoinHandle<()>>,
}

/// How many connections a node takes, from its budget of open files. Each connection holds a
/// descriptor and, while it carries data, about half a MiB of buffers; without bounds anyone who
/// reaches the peer port could open connections until the node can open no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Connections in all, in and out (half the open files at most).
    pub established: u32,
    /// Of those, opened by the other side.
    pub established_incoming: u32,
    /// Inbound connections still in their handshake (at most 10 s each).
    pub pending_incoming: u32,
}

impl PeerLimits {
    /// The most connections in all, whatever the open-file limit: enough for a node to reach
    /// every other one of a 1,000-node swarm, twice.
    pub const MAX_ESTABLISHED: u32 = 2048;
    /// The most inbound handshakes at once.
    pub const MAX_PENDING_INCOMING: u32 = 64;

    /// The limits for a process that may open `open_files` files (`None`: no such limit).
    pub fn for_open_files(open_files: Option<u64>) -> Self {
        let half = open_files.map_or(u64::MAX, |n| n / 2);
        let established = half.min(u64::from(Self::MAX_ESTABLISHED)) as u32;
        Self {
            established,
            established_incoming: established / 2,
            pending_incoming: (established / 8).clamp(1, Self::MAX_PENDING_INCOMING),
        }
    }

    fn to_libp2p(self) -> libp2p::connection_limits::ConnectionLimits {
        libp2p::connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(2))
            .with_max_established(Some(self.established))
            .with_max_established_incoming(Some(self.established_incoming))
            .with_max_pending_incoming(Some(self.pending_incoming))
    }
}

fn build_swarm(cfg: &NodeConfig) -> Result<Swarm<Behaviour>, NodeError> {
    let build = |e: &dyn std::fmt::Display| NodeError::Build(e.to_string());
    let open_files = crate::os::raise_open_file_limit();
    let limits = PeerLimits::for_open_files(open_files);
    tracing::debug!(?open_files, ?limits, "peer connection limits");
    let behaviour = |key: &Keypair| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let peer_id = key.public().to_peer_id();
        let mut kad_cfg = kad::Config::new(StreamProtocol::new(wire::KAD_PROTOCOL));
        kad_cfg.set_query_timeout(Duration::from_secs(30));
        let store = MemoryStore::with_config(
            peer_id,
            kad::store::MemoryStoreConfig { max_provided_keys: 1 << 20, ..Default::default() },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_cfg);
        // On a LAN nothing ever confirms an external address, so kad would stay a client and
        // answer nobody (libp2p.md §1.2).
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if cfg.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
        Ok(Behaviour {
            limits: libp2p::connection_limits::Behaviour::new(limits.to_libp2p()),
            mdns: mdns.into(),
            identify: identify::Behaviour::new(identify::Config::new(wire::IDENTIFY_VERSION.into(), key.public())),
            kad,
            have: request_response::Behaviour::with_codec(
                codec::have_codec(),
                [(StreamProtocol::new(wire::HAVE_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(120)),
            ),
            meta: request_response::Behaviour::with_codec(
                codec::meta_codec(),
                [(StreamProtocol::new(wire::META_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            ),
            report: request_response::Behaviour::with_codec(
                codec::report_codec(),
                [(StreamProtocol::new(wire::REPORT_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            ),
            preheat: request_response::Behaviour::with_codec(
                codec::preheat_codec(),
                [(StreamProtocol::new(wire::PREHEAT_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
    };
    let swarm_cfg = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(300)).with_max_negotiating_inbound_streams(256)
    };
    // One transport: TCP, Noise (with the swarm key in its prologue in a private swarm), yamux.
    let prologue = noise_prologue(cfg.swarm_key);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.key.clone())
        .with_tokio()
        .with_other_transport(move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let tcp = NewPorts(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)));
            Ok(tcp
                .upgrade(Version::V1Lazy)
                .authenticate(secure::Config::new(key, prologue))
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10))
                .boxed())
        })
        .map_err(|e| build(&e))?
        .with_dns()
        .map_err(|e| build(&e))?
        .with_behaviour(behaviour)
        .map_err(|e| build(&e))?
        .with_swarm_config(swarm_cfg)
        .build();
    Ok(swarm)
}

/// A transport whose every dial leaves from a new local port, never from the listening one.
///
/// libp2p dials from the listening port unless a dial asks otherwise, and Kademlia's dials do
/// not ask. When two nodes dial each other in the same instant from their listening ports, TCP
/// merges the two SYNs into one connection (simultaneous open) on which both ends play the
/// initiator, and the handshake hangs until the 10 s upgrade timeout. Two nodes finding each
/// other by mDNS in the same instant lost 0.5 s (the next probe) on every start. (At 32 nodes,
/// `bench/cluster.py --nodes 32`, about 30 dials per run hung too, and were first put down to
/// this; at least part of them, perhaps all, were the testbed's kernel neighbour table
/// overflowing, which the bench now makes room for.) Doing it here covers every dial, whoever
/// makes it. What the listening port is for, a NAT that maps it, a LAN does not need.
struct NewPorts<T>(T);

impl<T: libp2p::core::Transport + Unpin> libp2p::core::Transport for NewPorts<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: libp2p::core::transport::ListenerId,
        addr: Multiaddr,
    ) -> Result<(), libp2p::TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: libp2p::core::transport::ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::TransportError<Self::Error>> {
        let port_use = libp2p::core::transport::PortUse::New;
        self.0.dial(addr, libp2p::core::transport::DialOpts { port_use, ..opts })
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

impl Node {
    /// Starts a node: listens, dials the configured peers, starts discovery and serving, and
    /// advertises every complete blob of the cache.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let mut swarm = build_swarm(&cfg)?;
        for addr in &cfg.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: e.to_string() })?;
        }
        let peer_id = *swarm.local_peer_id();
        let holdings =
            Arc::new(Holdings::new(cfg.cache_root.clone(), cfg.swarm_key.is_none(), cfg.key.clone(), cfg.hooks));
        let transfer = Arc::new(Transfer::new(swarm.behaviour().stream.new_control(), cfg.max_upload_rate, cfg.hooks));
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            peer_id,
            open: cfg.swarm_key.is_none(),
            cmd: tx,
            holdings: holdings.clone(),
            checked: Arc::default(),
            transfer: transfer.clone(),
            bans: Bans::default(),
            ban_time: cfg.ban_time,
            listen: Mutex::default(),
            connected: Mutex::default(),
            peers_changed: Notify::new(),
            peers_changed_at: Mutex::new(Instant::now()),
            rate_in: AtomicU64::new(0),
            rate_out: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            discovers: cfg.mdns || !cfg.peers.is_empty(),
            has_static_peers: !cfg.peers.is_empty(),
            static_wait_spent: std::sync::atomic::AtomicBool::new(false),
            // A schedule changes the node-wide cap, so there is one even when it starts uncapped.
            download: (cfg.max_download_rate.is_some() || cfg.rate_schedule.is_some())
                .then(|| Arc::new(crate::throttle::Throttle::new(cfg.max_download_rate))),
            metrics: Arc::default(),
            metrics_url: std::sync::OnceLock::new(),
            hub_endpoint: std::sync::OnceLock::new(),
            preheat: preheat::Board::default(),
            accept_preheat: cfg.accept_preheat,
        });
        // Wait until every listener is bound, so that the addresses we report are real. What else
        // happens meanwhile (a peer found by mDNS, an inbound connection) is kept for the event
        // loop: dropping it lost peers for good, as mDNS does not announce them again for minutes.
        let mut early = Vec::new();
        let mut bound = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bound < cfg.listen.len() {
            match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    lock(&shared.listen).push(address);
                    bound += 1;
                }
                Ok(SwarmEvent::ListenerError { error, .. })
                | Ok(SwarmEvent::ListenerClosed { reason: Err(error), .. }) => {
                    return Err(NodeError::Listen { addr: cfg.listen[0].clone(), reason: error.to_string() });
                }
                Ok(ev) => early.push(ev),
                Err(_) => {
                    return Err(NodeError::Listen { addr: cfg.listen[0].clone(), reason: "timed out binding".into() });
                }
            }
        }
        tokio::spawn(transfer.clone().serve(holdings.clone()));
        let handle = NodeHandle { shared: shared.clone() };
        tokio::spawn(rates(Arc::downgrade(&shared)));
        let schedule = match (&cfg.rate_schedule, &shared.download) {
            (Some(s), Some(download)) => {
                let fallback = crate::schedule::Caps { download: cfg.max_download_rate, upload: cfg.max_upload_rate };
                let drive = crate::schedule::drive(
                    s.clone(),
                    fallback,
                    download.clone(),
                    shared.transfer.upload_throttle(),
                    crate::schedule::WeekTime::now,
                );
                Some(tokio::spawn(drive))
            }
            _ => None,
        };
        let task = tokio::spawn(EventLoop::new(swarm, &cfg, shared).run(rx, early));
        Ok(Node { handle, task, schedule })
    }

    /// The handle.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node: closes connections and ends the event loop.
    pub async fn shutdown(self) {
        if let Some(s) = &self.schedule {
            s.abort();
        }
        let _ = self.handle.shared.cmd.send(Command::Shutdown).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Samples the byte counters once a second: the node's peer traffic and each file in progress,
/// so that `status` shows rates over the last seconds ([`crate::rate`]).
async fn rates(shared: std::sync::Weak<Shared>) {
    let (mut rate_in, mut rate_out) = (crate::rate::RateWindow::default(), crate::rate::RateWindow::default());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let now = std::time::Instant::now();
        rate_in.push(now, s.transfer.counters.bytes_in.load(Relaxed));
        rate_out.push(now, s.transfer.counters.bytes_out.load(Relaxed));
        s.rate_in.store(rate_in.rate().unwrap_or(0.0) as u64, Relaxed);
        s.rate_out.store(rate_out.rate().unwrap_or(0.0) as u64, Relaxed);
        for (_, p) in s.holdings.in_progress() {
            lock(&p.rate).push(now, p.progress.done.load(Relaxed));
        }
    }
}

impl NodeHandle {
    /// This node's id.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The node-wide download cap, shared by every download that sets none of its own.
    pub fn download_throttle(&self) -> Option<Arc<crate::throttle::Throttle>> {
        self.shared.download.clone()
    }

    /// True in a private swarm (a swarm key): its members trust each other's metadata.
    pub fn is_private(&self) -> bool {
        !self.shared.open
    }

    /// Where it listens (with `/p2p/<id>`), as bound.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let id = self.shared.peer_id;
        lock(&self.shared.listen).iter().map(|a| a.clone().with_p2p(id).unwrap_or_else(|a| a)).collect()
    }

    /// Connected peers, not banned.
    pub fn peers(&self) -> Vec<PeerId> {
        lock(&self.shared.connected).keys().filter(|p| !self.shared.bans.is_banned(p)).copied().collect()
    }

    /// Starts offering a file this node is downloading: its chunks are offered to peers one by
    /// one, through the returned [`Offer`], as they are verified.
    pub fn offer(
        &self,
        etag: &Etag,
        name: String,
        progress: Arc<crate::fetch::progress::FileProgress>,
        pf: Arc<crate::store::PartialFile>,
    ) -> Offer {
        let size = progress.size;
        let partial = self.shared.holdings.add_partial(etag, name, progress, pf);
        Offer { node: self.clone(), etag: etag.clone(), size, partial }
    }

    /// Stops offering a file being downloaded. If it completed, `blob` is where its verified
    /// bytes now are, and every chunk is offered from there under this node's signature.
    pub fn finish_offer(&self, etag: &Etag, blob: Option<&Path>) {
        self.shared.holdings.finish_partial(etag, blob);
    }

    /// Says that this node is about to download these files (peers count it among the owners
    /// of their chunks at once), until the returned guard is dropped.
    pub fn want(&self, etags: Vec<Etag>) -> Wanted {
        self.shared.holdings.want(etags.iter().cloned());
        Wanted { node: self.clone(), etags }
    }

    /// Peers that, asking about `etag`, said they download it too, since the last call.
    pub fn take_askers(&self, etag: &Etag) -> Vec<PeerId> {
        self.shared.holdings.take_askers(etag)
    }

    /// Fetches chunk `req.index` from `peer` into `w`, calling `on_bytes` as bytes arrive. The
    /// caller checks the chunk's hash against the peer's record.
    pub async fn fetch_chunk(
        &self,
        peer: PeerId,
        req: &wire::ChunkRequest,
        w: &mut crate::store::ChunkWriter,
        throttle: &crate::throttle::Throttle,
        on_bytes: impl FnMut(u64),
    ) -> Result<(), transfer::PeerFetchError> {
        self.shared.transfer.fetch(peer, req, w, throttle, on_bytes).await
    }

    /// Tells `peer` that the chunk it served did not match the record it gave, so that it can
    /// check its copy (a holder whose disk rotted withdraws the blob). Fire and forget.
    pub fn report_bad_chunk(&self, peer: PeerId, etag: &Etag, size: u64, index: u32) {
        let req = wire::ChunkRequest { etag: etag.clone(), size, index };
        let _ = self.shared.cmd.try_send(PeerCommand::Report { peer, req }.into());
    }

    /// The node's metrics.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.shared.metrics.clone()
    }

    /// The metrics in the text exposition format, up to date.
    pub fn render_metrics(&self) -> String {
        let s = &self.shared;
        let peers = lock(&s.connected).len();
        s.metrics.render(
            s.transfer.counters.bytes_out.load(Relaxed),
            s.takeovers.load(Relaxed),
            s.duplicates.load(Relaxed),
            peers,
        )
    }

    /// Records where the metrics are served (for `status`).
    pub fn set_metrics_url(&self, url: String) {
        let _ = self.shared.metrics_url.set(url);
    }

    /// The preheats this node runs or asked for.
    pub fn preheat_board(&self) -> &preheat::Board {
        &self.shared.preheat
    }

    /// Sends a preheat message to `peer` and waits for its answer.
    pub async fn preheat_ask(&self, peer: PeerId, req: wire::PreheatRequest) -> Result<wire::PreheatReply, String> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .cmd
            .send(PeerCommand::Preheat { peer, req: Box::new(req), reply: tx }.into())
            .await
            .map_err(|_| "the node is stopping".to_owned())?;
        rx.await.map_err(|_| "the node is stopping".to_owned())?
    }

    /// Records where the node's Hub endpoint listens (`join --hub-listen`).
    pub fn set_hub_endpoint(&self, addr: std::net::SocketAddr) {
        let _ = self.shared.hub_endpoint.set(addr);
    }

    /// Where the node's Hub endpoint listens, if it runs.
    pub fn hub_endpoint(&self) -> Option<std::net::SocketAddr> {
        self.shared.hub_endpoint.get().copied()
    }

    /// Bans a peer for the configured time (its records and bytes are refused).
    pub fn ban(&self, peer: PeerId, why: &str) {
        self.shared.metrics.banned();
        self.shared.bans.ban(peer, self.shared.ban_time, why);
        self.shared.transfer.forget(&peer);
    }

    /// Stays up, at most `max`, while a connected peer is still downloading a file this node
    /// completed: this node may hold chunks nobody else has yet, and leaving the moment its own
    /// download ends would send the peer to the Hub for them. If this node completed nothing
    /// (the files were in the cache), it stays until nothing has been served for a second.
    pub async fn linger_while_needed(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let files = self.shared.holdings.completed();
        while tokio::time::Instant::now() < deadline {
            let needed = if files.is_empty() {
                self.shared.transfer.counters.since_last_out().is_some_and(|ago| ago < Duration::from_secs(1))
            } else {
                tokio::time::timeout_at(deadline, self.peers_downloading(&files)).await.unwrap_or(false)
            };
            if !needed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether some connected peer says it is downloading one of `files`.
    async fn peers_downloading(&self, files: &[(Etag, u64)]) -> bool {
        let peers = self.peers();
        let asks = peers.iter().flat_map(|&peer| files.iter().map(move |f| (peer, f))).map(|(peer, (etag, size))| {
            let count = ChunkLayout::for_len(*size).count();
            // Every record is "known": the answer carries the bitmap and flags, no signatures.
            let known = wire::Bitmap::full(count);
            let req = HaveRequest { etag: etag.clone(), size: *size, known, downloading: false, news: false };
            async move { matches!(self.have(peer, req).await, Ok(Some(Availability { downloading: true, .. }))) }
        });
        futures::future::join_all(asks).await.into_iter().any(|downloading| downloading)
    }

    /// Counts chunks taken over from owners that left or stalled.
    pub fn count_takeovers(&self, n: u64) {
        self.shared.takeovers.fetch_add(n, Relaxed);
    }

    /// Counts endgame duplicates (chunks asked of a second source).
    pub fn count_duplicates(&self, n: u64) {
        self.shared.duplicates.fetch_add(n, Relaxed);
    }

    /// Whether a peer is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.shared.bans.is_banned(peer)
    }

    /// Waits until at least one peer is connected and no other has connected for
    /// [`PEERS_SETTLE`], or until `until`. Returns the peer count.
    pub async fn wait_for_peers(&self, until: tokio::time::Instant) -> usize {
        loop {
            let changed = self.shared.peers_changed.notified();
            let n = self.peers().len();
            let quiet_for = lock(&self.shared.peers_changed_at).elapsed();
            if n > 0 && quiet_for >= PEERS_SETTLE {
                return n;
            }
            let wake = if n > 0 { until.min(tokio::time::Instant::now() + (PEERS_SETTLE - quiet_for)) } else { until };
            if tokio::time::timeout_at(wake, changed).await.is_err() && tokio::time::Instant::now() >= until {
                return self.peers().len();
            }
        }
    }

    /// How long a download that asked to wait `asked` for peers should wait: not at all
    /// without discovery; at least [`STATIC_PEER_WAIT`] while `--peer`s are configured, none is
    /// connected, and no download has yet given up on them.
    pub fn peer_wait(&self, asked: Duration) -> Duration {
        if !self.shared.discovers {
            return Duration::ZERO;
        }
        let waiting_for_seed =
            self.shared.has_static_peers && self.peers().is_empty() && !self.shared.static_wait_spent.load(Relaxed);
        if waiting_for_seed { asked.max(STATIC_PEER_WAIT) } else { asked }
    }

    /// After a download's wait for peers: true (once) if `--peer`s are configured and none
    /// could be reached, so that the download says it goes on without them (they are still
    /// dialled, and used as soon as they answer).
    pub fn gave_up_on_static_peers(&self) -> bool {
        self.shared.has_static_peers && self.peers().is_empty() && !self.shared.static_wait_spent.swap(true, Relaxed)
    }

    /// Waits until all of `peers` are connected, or `timeout` passes.
    pub async fn wait_connected(&self, peers: &[PeerId], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.peers_changed.notified();
            let all = {
                let connected = lock(&self.shared.connected);
                peers.iter().all(|p| connected.contains_key(p))
            };
            if all {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Asks `peer` what it holds of a file, and checks its answer: structure, then every
    /// signature. Records signed by banned nodes are dropped. An answer that fails a check is an
    /// error (the caller bans the peer); a peer that cannot answer is `Ok(None)`.
    pub async fn have(&self, peer: PeerId, req: HaveRequest) -> Result<Option<Availability>, InvalidAnswer> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.cmd.send(PeerCommand::Have { peer, req: req.clone(), reply: tx }.into()).await;
        if sent.is_err() {
            return Ok(None);
        }
        let resp = match rx.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "have request failed");
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        let (downloading, fetching, hub_bytes) = (resp.downloading, resp.fetching.clone(), resp.hub_bytes);
        let landed = resp.landed.clone();
        let checked = self.shared.checked.clone();
        // Most answers carry no record or one (the asker lists the records it has): those are
        // checked here, without a blocking thread's two context switches. At most
        // [`INLINE_RECORDS`] signature checks (about 50 µs each) hold this task; more go to a
        // blocking thread.
        let mut chunks = if resp.records.len() <= INLINE_RECORDS {
            check_have(&req, resp, &checked)
        } else {
            tokio::task::spawn_blocking(move || check_have(&req, resp, &checked))
                .await
                .map_err(|e| InvalidAnswer(format!("checking the answer failed: {e}")))?
        }
        .map_err(InvalidAnswer)?;
        chunks.retain(|(_, r)| r.as_ref().is_none_or(|r| !self.is_banned(&r.signer.peer)));
        Ok(Some(Availability { chunks, downloading, fetching, hub_bytes, landed }))
    }

    /// Asks connected peers, all at once, for a revision's commit and listing; returns the
    /// verified answers (a peer whose answer fails its checks is banned).
    pub async fn listings(&self, req: &MetaRequest) -> Vec<meta::Verified> {
        let asks = self.peers().into_iter().map(|peer| {
            let req = req.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                if self.shared.cmd.send(PeerCommand::Meta { peer, req: req.clone(), reply: tx }.into()).await.is_err() {
                    return None;
                }
                let resp = rx.await.ok()?.ok()?;
                match tokio::task::spawn_blocking(move || meta::verify(&req, resp)).await.ok()? {
                    Ok(v) => v,
                    Err(why) => {
                        self.ban(peer, &format!("sent an invalid listing: {why}"));
                        None
                    }
                }
            }
        });
        futures::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// Announces (by a provider record) that this node holds a file.
    pub async fn provide(&self, etag: &Etag) {
        let _ = self.shared.cmd.send(PeerCommand::Provide(etag.clone()).into()).await;
    }

    /// Peers that announced a file in the DHT (beyond those connected).
    pub async fn find_providers(&self, etag: &Etag) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        if self.shared.cmd.send(PeerCommand::FindProviders { etag: etag.clone(), reply: tx }.into()).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The node's state, for `swarm-dl status`.
    pub async fn status(&self) -> NodeStatus {
        let h = self.shared.holdings.clone();
        let blobs = tokio::task::spawn_blocking(move || h.blobs()).await.unwrap_or_default();
        let counters = &self.shared.transfer.counters;
        let peers = lock(&self.shared.connected)
            .iter()
            .map(|(p, a)| {
                let (i, o) = counters.of(p);
                PeerStatus { id: p.to_string(), address: a.to_string(), bytes_in: i, bytes_out: o }
            })
            .collect();
        NodeStatus {
            peer_id: self.shared.peer_id.to_string(),
            listen: self.listen_addrs().iter().map(|a| a.to_string()).collect(),
            open_swarm: self.shared.open,
            peers,
            files_held: blobs.len(),
            bytes_held: blobs.iter().map(|b| b.2).sum(),
            in_progress: self
                .shared
                .holdings
                .in_progress()
                .into_iter()
                .map(|(e, p)| InProgress {
                    name: p.name.clone(),
                    etag: e.to_string(),
                    bytes: p.progress.done.load(Relaxed),
                    rate: lock(&p.rate).rate(),
                    size: p.size,
                    chunks_held: p.held(),
                    chunks: ChunkLayout::for_len(p.size).count(),
                })
                .collect(),
            bytes_in: counters.bytes_in.load(Relaxed),
            bytes_out: counters.bytes_out.load(Relaxed),
            rate_in: self.shared.rate_in.load(Relaxed),
            rate_out: self.shared.rate_out.load(Relaxed),
            banned: self.shared.bans.current().iter().map(|p| p.to_string()).collect(),
            hub_takeovers: self.shared.takeovers.load(Relaxed),
            endgame_duplicates: self.shared.duplicates.load(Relaxed),
            handshake_failures: self.shared.handshake_failures.load(Relaxed),
            metrics: self.shared.metrics_url.get().cloned(),
            hub_endpoint: self.hub_endpoint().map(|a| format!("http://{a}")),
            preheats: preheat::status_views(self, Duration::from_secs(1)).await,
        }
    }
}

/// Validates a have response and verifies its signatures (each distinct record once, `checked`).
/// Returns, per held chunk, the record sent for it (`None` for chunks the asker said it knew).
fn check_have(
    req: &HaveRequest,
    resp: HaveResponse,
    checked: &holdings::CheckedRecords,
) -> Result<Vec<(u32, Option<Record>)>, String> {
    resp.validate(req).map_err(|e| e.to_string())?;
    if resp.have.0.is_empty() {
        return Ok(Vec::new());
    }
    let signers: Vec<Arc<Signer>> = resp
        .signers
        .iter()
        .map(|s| Signer::decode(s).map(Arc::new).ok_or_else(|| "undecodable signer key".to_string()))
        .collect::<Result<_, _>>()?;
    let count = ChunkLayout::for_len(req.size).count();
    let mut out: Vec<(u32, Option<Record>)> = Vec::new();
    let mut by_index: HashMap<u32, Record> = HashMap::new();
    for r in resp.records {
        let rec =
            Record { hash: r.hash, signer: signers[usize::from(r.signer)].clone(), signature: r.signature.into() };
        if !checked.verify(&rec, &req.etag, req.size, r.index) {
            return Err(format!("bad signature on the record of chunk {}", r.index));
        }
        by_index.insert(r.index, rec);
    }
    for i in resp.have.iter(count) {
        out.push((i, by_index.remove(&i)));
    }
    Ok(out)
}

/// An availability answer with at most this many records is checked on the task that asked.
const INLINE_RECORDS: usize = 2;

/// First wait before dialling a `--peer` address again.
pub const STATIC_REDIAL_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two dials of a `--peer` address that does not answer.
pub const STATIC_REDIAL_MAX: Duration = Duration::from_secs(1);
/// The same during the first [`STATIC_START`] of a node: nodes started together with their seed
/// reach it within a quarter second of its listening (1 s would cost a seed that is 2 s late
/// 0.5 s). A refused dial is one SYN and one RST.
pub const STATIC_REDIAL_START_MAX: Duration = Duration::from_millis(250);
pub const STATIC_START: Duration = Duration::from_secs(10);
/// How long the first `get` waits for a `--peer` when none is connected yet.
pub const STATIC_PEER_WAIT: Duration = Duration::from_secs(3);

/// A `--peer` address and when to dial it next.
struct StaticPeer {
    addr: Multiaddr,
    next: tokio::time::Instant,
    delay: Duration,
    since: tokio::time::Instant,
}

impl StaticPeer {
    fn new(addr: Multiaddr) -> Self {
        let now = tokio::time::Instant::now();
        Self { addr, next: now, delay: STATIC_REDIAL_MIN, since: now }
    }

    /// The wait after this dial, and the next one's: twice as long each time, up to the cap.
    fn backoff(&mut self, now: tokio::time::Instant) {
        let cap =
            if now.duration_since(self.since) < STATIC_START { STATIC_REDIAL_START_MAX } else { STATIC_REDIAL_MAX };
        self.next = now + self.delay.min(cap);
        self.delay = (self.delay * 2).min(cap);
    }
}

impl EventLoop {
    /// Answers a peer's preheat message: a private swarm's members may start one, an open
    /// swarm's peers only where `--accept-preheat` says so.
    fn preheat_answer(&self, peer: PeerId, req: wire::PreheatRequest) -> wire::PreheatReply {
        match req {
            wire::PreheatRequest::Progress { id } => {
                self.shared.preheat.progress(id).map_or(wire::PreheatReply::Unknown, wire::PreheatReply::Progress)
            }
            wire::PreheatRequest::Nodes { id } => self
                .shared
                .preheat
                .nodes(id, self.shared.peer_id)
                .map_or(wire::PreheatReply::Unknown, wire::PreheatReply::Nodes),
            wire::PreheatRequest::Start(job) => {
                if self.shared.open && !self.shared.accept_preheat {
                    tracing::info!(%peer, repo = %Printable(&job.repo_id), "refused a preheat: open swarm without --accept-preheat");
                    return wire::PreheatReply::Refused(
                        "this node is in an open swarm and accepts preheats only when started with --accept-preheat"
                            .into(),
                    );
                }
                if let Err(e) = job.validate() {
                    return wire::PreheatReply::Refused(e.to_string());
                }
                tracing::info!(%peer, repo = %Printable(&job.repo_id), revision = %Printable(&job.revision), "preheat asked by a peer");
                match self.shared.preheat.accept(job, Some(peer)) {
                    Ok(()) => wire::PreheatReply::Accepted,
                    Err(why) => wire::PreheatReply::Refused(why),
                }
            }
        }
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    cache_root: PathBuf,
    key: Keypair,
    shared: Arc<Shared>,
    static_peers: Vec<StaticPeer>,
    pending_have: HashMap<OutboundRequestId, oneshot::Sender<Result<HaveResponse, String>>>,
    pending_meta: HashMap<OutboundRequestId, oneshot::Sender<Result<MetaResponse, String>>>,
    pending_preheat: HashMap<OutboundRequestId, oneshot::Sender<Result<wire::PreheatReply, String>>>,
    pending_providers: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    provided: HashSet<Etag>,
    /// Hosts whose failed handshake was already explained in the log.
    warned: HashSet<Multiaddr>,
}

impl EventLoop {
    fn new(swarm: Swarm<Behaviour>, cfg: &NodeConfig, shared: Arc<Shared>) -> Self {
        Self {
            swarm,
            cache_root: cfg.cache_root.clone(),
            key: cfg.key.clone(),
            shared,
            static_peers: cfg.peers.iter().map(|a| StaticPeer::new(a.clone())).collect(),
            pending_have: HashMap::new(),
            pending_meta: HashMap::new(),
            pending_preheat: HashMap::new(),
            pending_providers: HashMap::new(),
            provided: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    /// Dials the `--peer` addresses that are not connected and are due: each is tried again
    /// after 100 ms, then twice as long each time up to [`STATIC_REDIAL_START_MAX`] in the
    /// node's first seconds and [`STATIC_REDIAL_MAX`] after, so a seed that comes up late is
    /// reached within moments of listening.
    fn dial_static(&mut self) {
        let connected: HashSet<PeerId> = lock(&self.shared.connected).keys().copied().collect();
        let addrs: Vec<Multiaddr> = lock(&self.shared.connected).values().cloned().collect();
        let now = tokio::time::Instant::now();
        for sp in &mut self.static_peers {
            let known = sp.addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            let up = match known {
                Some(id) => connected.contains(&id),
                None => addrs.iter().any(|a| same_host_port(a, &sp.addr)),
            };
            if up {
                // Looked at again later; a disconnection redials at once.
                sp.delay = STATIC_REDIAL_MIN;
                sp.next = now + STATIC_REDIAL_MAX;
                continue;
            }
            if now < sp.next {
                continue;
            }
            sp.backoff(now);
            let opts = DialOpts::unknown_peer_id().address(sp.addr.clone()).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(addr = %sp.addr, error = %e, "cannot dial peer");
            }
        }
    }

    /// When the next `--peer` address is due (far away when all are connected or none exist).
    fn next_static_dial(&self) -> tokio::time::Instant {
        self.static_peers
            .iter()
            .map(|sp| sp.next)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + STATIC_REDIAL_MAX)
    }

    /// Dials every `--peer` address at once, from the first backoff step (a listener of ours
    /// appeared, or a static peer went away).
    fn redial_static_now(&mut self) {
        let now = tokio::time::Instant::now();
        for sp in &mut self.static_peers {
            sp.next = now;
            sp.delay = STATIC_REDIAL_MIN;
        }
    }

    fn provide_blobs(&mut self) {
        for (etag, _, _) in self.shared.holdings.blobs() {
            self.provide(etag);
        }
    }

    fn provide(&mut self, etag: Etag) {
        if self.provided.insert(etag.clone())
            && let Err(e) = self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&etag.as_str()))
        {
            tracing::debug!(%etag, error = %e, "cannot announce file");
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, early: Vec<SwarmEvent<BehaviourEvent>>) {
        for ev in early {
            self.event(ev);
        }
        self.dial_static();
        self.provide_blobs();

        let mut rescan = tokio::time::interval(Duration::from_secs(30));
        loop {
            let next_dial = self.next_static_dial();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(Command::Peer(cmd)) => self.command(cmd),
                },
                ev = self.swarm.select_next_some() => self.event(ev),
                _ = tokio::time::sleep_until(next_dial) => self.dial_static(),
                _ = rescan.tick() => self.provide_blobs(),
            }
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        tracing::info!("node stopped");
    }

    fn command(&mut self, cmd: PeerCommand) {
        match cmd {
            PeerCommand::Have { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().have.send_request(&peer, req);
                self.pending_have.insert(id, reply);
            }
            PeerCommand::Respond { channel, resp } => {
                let _ = self.swarm.behaviour_mut().have.send_response(channel, resp);
            }
            PeerCommand::Meta { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().meta.send_request(&peer, req);
                self.pending_meta.insert(id, reply);
            }
            PeerCommand::Preheat { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().preheat.send_request(&peer, *req);
                self.pending_preheat.insert(id, reply);
            }
            PeerCommand::Report { peer, req } => {
                let _ = self.swarm.behaviour_mut().report.send_request(&peer, req);
            }
            PeerCommand::ReportRespond { channel, resp } => {
                let _ = self.swarm.behaviour_mut().report.send_response(channel, resp);
            }
            PeerCommand::MetaRespond { channel, resp } => {
                let _ = self.swarm.behaviour_mut().meta.send_response(channel, resp);
            }
            PeerCommand::Provide(etag) => self.provide(etag),
            PeerCommand::FindProviders { etag, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&etag.as_str()));
                self.pending_providers.insert(id, (reply, HashSet::new()));
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                lock(&self.shared.listen).push(address);
                self.redial_static_now();
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let addr = endpoint.get_remote_address().clone();
                tracing::info!(peer = %peer_id, %addr, "peer connected");
                if endpoint.is_dialer() {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                }
                if lock(&self.shared.connected).insert(peer_id, addr).is_none() {
                    *lock(&self.shared.peers_changed_at) = Instant::now();
                }
                self.shared.peers_changed.notify_waiters();
            }
            SwarmEvent::ConnectionClosed { peer_id, cause: Some(cause), num_established, .. }
                if num_established > 0 =>
            {
                // One of two connections to the peer (both ends dialled at once) failed: the
                // streams on it fail, the peer stays.
                tracing::info!(peer = %peer_id, %cause, "a connection to a peer failed");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                if let Some(cause) = cause {
                    tracing::info!(peer = %peer_id, %cause, "the connection to a peer failed");
                }
                self.redial_static_now();
                tracing::info!(peer = %peer_id, "peer disconnected");
                lock(&self.shared.connected).remove(&peer_id);
                self.shared.transfer.forget(&peer_id);
                self.shared.peers_changed.notify_waiters();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %chain(&error), "dial failed");
                if let libp2p::swarm::DialError::Transport(errors) = &error {
                    for (addr, e) in errors {
                        self.note_failure(addr, e, "could not connect to");
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                tracing::debug!(from = %send_back_addr, error = %chain(&error), "inbound connection failed");
                if let libp2p::swarm::ListenError::Transport(e) = &error {
                    self.note_failure(&send_back_addr, e, "refused a connection from");
                }
            }
            SwarmEvent::Behaviour(b) => self.behaviour(b),
            _ => {}
        }
    }

    fn behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "not dialling a peer found by mDNS");
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != wire::IDENTIFY_VERSION {
                    tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not a swarm-dl node");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                for a in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            BehaviourEvent::Have(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let holdings = self.shared.holdings.clone();
                    if holdings.hooks().withholds_availability() {
                        // Holds the question open: the asker waits for its request timeout.
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            drop(channel);
                        });
                        return;
                    }
                    // A file being downloaded, or a blob already read, is answered from memory
                    // at once: about 600 answers a second cross a 16-node swarm, and a blocking
                    // thread for each cost two context switches. Others may read the disk. The
                    // ban comes first: answering records a downloading asker as an owner.
                    if !self.shared.bans.is_banned(&peer)
                        && let Some(resp) = holdings.answer_from_memory(peer, &request)
                    {
                        let _ = self.swarm.behaviour_mut().have.send_response(channel, resp);
                        return;
                    }
                    self.answer_later(
                        peer,
                        HaveResponse::none(),
                        move || holdings.answer(peer, &request),
                        |resp| PeerCommand::Respond { channel, resp },
                    );
                }
                request_response::Message::Response { request_id, response } => {
                    reply(&mut self.pending_have, request_id, Ok(response));
                }
            },
            BehaviourEvent::Have(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                reply(&mut self.pending_have, request_id, Err(error.to_string()));
            }
            BehaviourEvent::Meta(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let (root, key, open) = (self.cache_root.clone(), self.key.clone(), self.shared.open);
                    let none = MetaResponse { listing: None };
                    self.answer_later(
                        peer,
                        none,
                        move || meta::answer(&root, open, &key, &request),
                        |resp| PeerCommand::MetaRespond { channel, resp },
                    );
                }
                request_response::Message::Response { request_id, response } => {
                    reply(&mut self.pending_meta, request_id, Ok(response));
                }
            },
            BehaviourEvent::Meta(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                reply(&mut self.pending_meta, request_id, Err(error.to_string()));
            }
            BehaviourEvent::Preheat(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let resp = self.preheat_answer(peer, request);
                    let _ = self.swarm.behaviour_mut().preheat.send_response(channel, resp);
                }
                request_response::Message::Response { request_id, response } => {
                    reply(&mut self.pending_preheat, request_id, Ok(response));
                }
            },
            BehaviourEvent::Preheat(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                reply(&mut self.pending_preheat, request_id, Err(error.to_string()));
            }
            BehaviourEvent::Report(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) => {
                let holdings = self.shared.holdings.clone();
                tracing::info!(%peer, chunk = request.index, etag = %request.etag, "a peer reports a chunk it got from here as bad");
                self.answer_later(
                    peer,
                    wire::ReportAck { rechecked: false },
                    move || wire::ReportAck { rechecked: holdings.recheck(&request.etag, request.size, request.index) },
                    |resp| PeerCommand::ReportRespond { channel, resp },
                );
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(r),
                step,
                ..
            }) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r
                    && let Some((_, found)) = self.pending_providers.get_mut(&id)
                {
                    found.extend(providers.into_iter().filter(|p| *p != self.shared.peer_id));
                }
                if step.last
                    && let Some((tx, found)) = self.pending_providers.remove(&id)
                {
                    for p in &found {
                        if !self.swarm.is_connected(p) {
                            let _ = self.swarm.dial(DialOpts::peer_id(*p).build());
                        }
                    }
                    let _ = tx.send(found.into_iter().collect());
                }
            }
            _ => {}
        }
    }
}

/// Whether a failed connection got as far as the handshake and failed there (the other side
/// speaks with another swarm key, or none), rather than not reaching the other side at all.
fn is_handshake_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let text = chain(e).to_ascii_lowercase();
    // libp2p's upgrade timeout ("Timeout has been reached") is a peer that did not answer in
    // time (lost packets, or too busy): a peer with another swarm key fails at once, in the
    // handshake's second or third message. At 32 nodes on the testbed some dials ended so (its
    // kernel neighbour table was full) and were explained as a swarm key mismatch.
    let unreachable = [
        "connection refused",
        "timed out",
        "timeout has been reached",
        "unreachable",
        "no route",
        "address not available",
    ];
    !unreachable.iter().any(|u| text.contains(u))
}

/// An error and its sources on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = one_line(&e.to_string());
    let mut src = e.source();
    while let Some(s) = src {
        let t = one_line(&s.to_string());
        if !out.contains(&t) {
            out = format!("{out}: {t}");
        }
        src = s.source();
    }
    out
}

/// libp2p lists several dial errors on lines of their own; a log line is one line.
fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

impl EventLoop {
    /// Records a connection that failed in the handshake: counted for `status`, and explained
    /// once per address at `warn` (the usual cause is a different `--swarm-key`, or none).
    fn note_failure(&mut self, addr: &Multiaddr, e: &libp2p::TransportError<std::io::Error>, what: &str) {
        let libp2p::TransportError::Other(io) = e else { return };
        if !is_handshake_failure(io) {
            return;
        }
        self.shared.handshake_failures.fetch_add(1, Relaxed);
        // The address without its port: an inbound peer comes from a new port every time.
        let host: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::Tcp(_) | libp2p::multiaddr::Protocol::P2p(_)))
            .collect();
        if self.warned.insert(host) {
            tracing::warn!("{what} {addr}: handshake failed (different --swarm-key, or none?): {}", chain(io));
        }
    }

    /// Answers an inbound request off the event loop: `answer` runs on a blocking thread (it may
    /// read or hash files), and its response comes back as the command `respond` makes. A
    /// banned peer gets `refusal`.
    fn answer_later<R: Send + 'static>(
        &self,
        peer: PeerId,
        refusal: R,
        answer: impl FnOnce() -> R + Send + 'static,
        respond: impl FnOnce(R) -> PeerCommand + Send + 'static,
    ) {
        let cmd = self.shared.cmd.clone();
        let banned = self.shared.bans.is_banned(&peer);
        tokio::spawn(async move {
            let resp = if banned { refusal } else { tokio::task::spawn_blocking(answer).await.unwrap_or(refusal) };
            let _ = cmd.send(respond(resp).into()).await;
        });
    }
}

/// Hands an outbound request's outcome to whoever waits for it.
fn reply<T>(
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<T, String>>>,
    id: OutboundRequestId,
    r: Result<T, String>,
) {
    if let Some(tx) = pending.remove(&id) {
        let _ = tx.send(r);
    }
}

fn same_host_port(a: &Multiaddr, b: &Multiaddr) -> bool {
    let strip = |m: &Multiaddr| -> Vec<String> {
        m.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).map(|p| p.to_string()).collect()
    };
    strip(a) == strip(b)
}

/// Loads the node's key from `dir/node.key`, creating it (mode 0600) on first use, and locks it
/// so that two processes on one cache never run under one identity. Returns `None` for the lock
/// when another process holds it: the caller then runs with a fresh, throwaway key.
pub fn load_identity(dir: &Path) -> Result<(Keypair, Option<std::fs::File>), NodeError> {
    let path = dir.join("node.key");
    let err = |reason: String| NodeError::Identity { path: path.clone(), reason };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("node.key.lock"))
        .map_err(|e| err(e.to_string()))?;
    if lock_file.try_lock().is_err() {
        return Ok((Keypair::generate_ed25519(), None));
    }
    let key = match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
            write_private(&path, &bytes).map_err(|e| err(e.to_string()))?;
            key
        }
        Err(e) => return Err(err(e.to_string())),
    };
    Ok((key, Some(lock_file)))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = crate::os::create_mode(std::fs::OpenOptions::new().create(true).truncate(true).write(true), 0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a swarm key file (the IPFS `swarm.key` format).
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, NodeError> {
    let bad = |reason: String| NodeError::SwarmKey { path: path.to_path_buf(), reason };
    let not_a_key = || {
        bad("it is not a swarm key file (expected three lines: /key/swarm/psk/1.0.0/, /base16/, then 64 hex digits)"
            .into())
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| not_a_key())?;
    text.parse().map_err(|e| {
        tracing::debug!(error = ?e, "swarm key does not parse");
        not_a_key()
    })
}

/// The noise prologue for a swarm: empty when open; for a private one, a hash of its key. Both
/// ends of a handshake mix their prologue into the handshake hash, which authenticates every
/// handshake message, so ends with different prologues never complete one. The prologue itself is
/// never sent. (A node without the key still learns, from the answer to its first message, the
/// public key of the node it dialled, as it could from mDNS; nothing else.)
fn noise_prologue(key: Option<PreSharedKey>) -> Vec<u8> {
    use sha2::Digest as _;
    key.map(|k| {
        let mut h = sha2::Sha256::new();
        h.update(b"swarm-dl noise prologue v1\n");
        h.update(k.to_key_file().as_bytes());
        h.finalize().to_vec()
    })
    .unwrap_or_default()
}

/// A new random swarm key, in the file format.
pub fn new_swarm_key() -> PreSharedKey {
    PreSharedKey::new(rand::random())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local port a dial through `t` leaves from, after `t` has begun listening: with the
    /// listening port, or not.
    async fn dial_port<T>(mut t: T) -> (u16, u16)
    where
        T: libp2p::core::Transport<Output = tcp::tokio::TcpStream> + Unpin,
        T::Error: std::fmt::Debug,
    {
        use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
        t.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().expect("addr")).expect("listen");
        let listening = futures::future::poll_fn(|cx| match std::pin::Pin::new(&mut t).poll(cx) {
            std::task::Poll::Ready(TransportEvent::NewAddress { listen_addr, .. }) => {
                std::task::Poll::Ready(listen_addr)
            }
            std::task::Poll::Ready(_) => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        })
        .await;
        let port = listening
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .expect("a port");
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let to: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/{}", other.local_addr().expect("addr").port()).parse().expect("addr");
        let opts = DialOpts { role: libp2p::core::Endpoint::Dialer, port_use: PortUse::Reuse };
        let (dialled, _) = tokio::join!(t.dial(to, opts).expect("dial"), other.accept());
        (port, dialled.expect("connected").0.local_addr().expect("local").port())
    }

    #[tokio::test]
    async fn dials_leave_from_a_new_port_even_when_asked_to_reuse_the_listening_one() {
        let tcp = || tcp::tokio::Transport::new(tcp::Config::default());
        let (listening, from) = dial_port(tcp()).await;
        assert_eq!(from, listening, "libp2p's own transport reuses the listening port (what this guards against)");
        let (listening, from) = dial_port(NewPorts(tcp())).await;
        assert_ne!(from, listening, "a dial left from the listening port");
    }

    #[test]
    fn only_a_failed_handshake_is_explained_as_one() {
        let err = |text: &str| std::io::Error::other(text.to_owned());
        assert!(is_handshake_failure(&err("noise: decrypt error")), "a mismatched swarm key");
        for not in ["Timeout has been reached", "Connection refused (os error 111)", "No route to host (os error 113)"]
        {
            assert!(!is_handshake_failure(&err(not)), "{not}");
        }
    }

    #[test]
    fn connection_limits_follow_the_open_file_limit() {
        let l = PeerLimits::for_open_files(Some(1024));
        assert_eq!((l.established, l.established_incoming, l.pending_incoming), (512, 256, 64));
        for big in [Some(65_536), None] {
            let l = PeerLimits::for_open_files(big);
            assert_eq!((l.established, l.established_incoming, l.pending_incoming), (2048, 1024, 64));
        }
        let l = PeerLimits::for_open_files(Some(20));
        assert_eq!((l.established, l.established_incoming, l.pending_incoming), (10, 5, 1));
    }

    #[test]
    fn a_silent_peer_is_dialled_four_times_a_second_at_start_and_once_a_second_later() {
        let mut sp = StaticPeer::new("/ip4/127.0.0.1/tcp/9".parse().expect("an address"));
        let start = sp.since;
        let mut dials = vec![];
        while sp.next - start < Duration::from_secs(15) {
            let now = sp.next;
            dials.push(now - start);
            sp.backoff(now);
        }
        let gaps: Vec<Duration> = dials.windows(2).map(|w| w[1] - w[0]).collect();
        let ms = Duration::from_millis;
        assert_eq!(gaps[..4], [ms(100), ms(200), ms(250), ms(250)]);
        for (at, gap) in dials.iter().zip(&gaps) {
            let cap = if *at < STATIC_START { STATIC_REDIAL_START_MAX } else { STATIC_REDIAL_MAX };
            assert!(*gap <= cap, "{gap:?} after the dial at {at:?}");
        }
        assert_eq!(gaps.last(), Some(&STATIC_REDIAL_MAX));
        assert!((40..=45).contains(&dials.iter().filter(|d| **d < STATIC_START).count()), "{dials:?}");
    }
}
