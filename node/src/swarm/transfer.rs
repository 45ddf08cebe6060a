//! `/swarm-dl/chunk/1`: chunk bytes over libp2p streams, both ends.
//!
//! A stream carries many requests, one after another (request frame → header frame → raw bytes),
//! so a peer keeps a few long-lived streams instead of opening one per chunk: libp2p-stream's
//! inbound queue holds a single pending stream and drops the rest under bursts.
//!
//! Neither end holds a whole chunk. The server sends it in slices read from disk; the receiver
//! reads the stream straight into its [`ChunkWriter`]'s buffer, which is hashed and written out
//! when full. yamux's flow control carries back-pressure from a slow reader to our disk reads.
//!
//! Serving limits: [`SERVE_PER_PEER`] requests at a time per peer and [`SERVE_TOTAL`] in all;
//! beyond that a request is answered `Busy` so the asker tries another holder, or this one a
//! little later. The upload rate cap is a token bucket shared by every stream.

use super::codec::{read_frame, write_frame};
use super::holdings::Holdings;
use super::hooks::Hooks;
use crate::store::direct::AlignedBuf;
use crate::store::{ChunkWriter, StoreError};
use crate::throttle::Throttle;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_protocol::hash::ChunkHasher;
use swarm_protocol::wire::{CHUNK_PROTOCOL, ChunkHeader, ChunkRequest, MAX_CHUNK_FRAME};
use tokio::sync::Semaphore;

/// Requests served at a time to one peer.
pub const SERVE_PER_PEER: usize = 8;
/// Requests served at a time in all.
pub const SERVE_TOTAL: usize = 64;
/// Longest wait for any progress on a stream (a request, a header, a slice of bytes).
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an idle served stream is kept open.
const SERVE_IDLE: Duration = Duration::from_secs(120);
const SLICE: usize = 256 << 10;
const OPEN_ATTEMPTS: u32 = 5;

/// Bytes moved, per peer and in all.
#[derive(Debug, Default)]
pub struct Counters {
    per_peer: Mutex<HashMap<PeerId, (u64, u64)>>,
    /// Bytes received from peers.
    pub bytes_in: AtomicU64,
    /// Bytes sent to peers.
    pub bytes_out: AtomicU64,
    /// When bytes were last sent, milliseconds after `epoch`.
    last_out_ms: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl Counters {
    fn add(&self, peer: PeerId, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.fetch_add(bytes_in, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
        if bytes_out > 0 {
            let epoch = self.epoch.get_or_init(std::time::Instant::now);
            self.last_out_ms.store(epoch.elapsed().as_millis() as u64 + 1, Relaxed);
        }
        let mut m = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(peer).or_default();
        e.0 += bytes_in;
        e.1 += bytes_out;
    }

    /// How long ago bytes were last sent to a peer (`None`: never).
    pub fn since_last_out(&self) -> Option<Duration> {
        let ms = self.last_out_ms.load(Relaxed);
        let epoch = self.epoch.get()?;
        (ms > 0).then(|| epoch.elapsed().saturating_sub(Duration::from_millis(ms - 1)))
    }

    /// (bytes in, bytes out) exchanged with `peer`.
    pub fn of(&self, peer: &PeerId) -> (u64, u64) {
        self.per_peer.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied().unwrap_or_default()
    }
}

/// Why fetching a chunk from a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerFetchError {
    /// The peer could not deliver: ask someone else.
    #[error("{0}")]
    Unavailable(String),
    /// The peer holds the chunk but has no upload slot free now, or dropped the streams opened
    /// to it unanswered: ask it again a little later.
    #[error("peer is busy")]
    Busy,
    /// The peer began sending the chunk (so it holds it) and its stream broke: ask it again a
    /// little later, as for [`Self::Busy`].
    #[error("the stream broke mid-chunk: {0}")]
    Interrupted(String),
    /// The peer's bytes do not match the record it gave for them: ban it.
    #[error("bytes do not match the peer's record")]
    BadData,
    /// Writing here failed: stop.
    #[error(transparent)]
    Local(#[from] StoreError),
}

/// Both ends of the chunk protocol.
pub struct Transfer {
    control: libp2p_stream::Control,
    pool: Mutex<HashMap<PeerId, Vec<Stream>>>,
    /// Bytes moved.
    pub counters: Arc<Counters>,
    upload: Arc<Throttle>,
    serve_total: Arc<Semaphore>,
    serve_per_peer: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    /// One stream opening at a time per peer (see [`Transfer::open_and_ask`]).
    opening: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    /// Requests in flight to one peer, across all downloads: never more than it serves at once.
    ask_per_peer: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    hooks: Hooks,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer").field("hooks", &self.hooks).finish_non_exhaustive()
    }
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new(CHUNK_PROTOCOL)
}

impl Transfer {
    /// The cap on what is served to peers (changed by a rate schedule).
    pub fn upload_throttle(&self) -> Arc<Throttle> {
        self.upload.clone()
    }

    /// Both ends, on `control`.
    pub fn new(control: libp2p_stream::Control, max_upload_rate: Option<u64>, hooks: Hooks) -> Self {
        Self {
            control,
            pool: Mutex::default(),
            counters: Arc::default(),
            upload: Arc::new(Throttle::new(max_upload_rate)),
            serve_total: Arc::new(Semaphore::new(SERVE_TOTAL)),
            serve_per_peer: Mutex::default(),
            ask_per_peer: Mutex::default(),
            opening: Mutex::default(),
            hooks,
        }
    }

    /// Accepts inbound chunk streams for ever, serving each on its own task.
    pub async fn serve(self: Arc<Self>, holdings: Arc<Holdings>) {
        let mut incoming = match self.control.clone().accept(protocol()) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot accept chunk streams");
                return;
            }
        };
        let mut accepted = 0u32;
        while let Some((peer, stream)) = incoming.next().await {
            let n = accepted;
            accepted = accepted.saturating_add(1);
            if self.hooks.drops_stream(n) {
                drop(stream);
                continue;
            }
            let (me, holdings, cut) = (self.clone(), holdings.clone(), self.hooks.cuts_stream(n));
            tokio::spawn(async move {
                if let Err(e) = me.serve_stream(peer, stream, holdings, cut).await {
                    tracing::debug!(%peer, error = %e, "chunk stream ended");
                }
            });
        }
    }

    /// Serves the chunk requests of one stream. `cut` (a test hook): close it after the first
    /// slice of the first chunk.
    async fn serve_stream(
        &self,
        peer: PeerId,
        mut stream: Stream,
        holdings: Arc<Holdings>,
        cut: bool,
    ) -> std::io::Result<()> {
        // One slice buffer for the stream's life: a fresh zeroed one per slice cost 5% of a
        // serving node's CPU (memset). Aligned, so that slices are read around the page cache.
        let mut buf = AlignedBuf::default();
        loop {
            let req: ChunkRequest =
                match tokio::time::timeout(SERVE_IDLE, read_frame(&mut stream, MAX_CHUNK_FRAME)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                };
            let per_peer = {
                let mut m = self.serve_per_peer.lock().unwrap_or_else(|p| p.into_inner());
                m.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(SERVE_PER_PEER))).clone()
            };
            let (Ok(_p), Ok(_t)) = (per_peer.try_acquire_owned(), self.serve_total.clone().try_acquire_owned()) else {
                write_frame(&mut stream, &ChunkHeader::Busy).await?;
                continue;
            };
            let h = holdings.clone();
            let r = req.clone();
            let bytes = tokio::task::spawn_blocking(move || h.chunk(&r.etag, r.size, r.index))
                .await
                .map_err(std::io::Error::other)?;
            let Some(bytes) = bytes else {
                write_frame(&mut stream, &ChunkHeader::NotHeld).await?;
                continue;
            };
            let range = bytes.range();
            write_frame(&mut stream, &ChunkHeader::Data { len: range.end - range.start }).await?;
            // A blob chunk served for the first time is hashed on the way out: bit rot is found
            // by the holder, which withdraws the blob, not only by the receivers it fails.
            let expect = bytes.unchecked();
            let mut hasher = expect.map(|_| ChunkHasher::new());
            let bytes = Arc::new(bytes);
            let mut pos = range.start;
            while pos < range.end {
                let n = ((range.end - pos) as usize).min(SLICE);
                let b = bytes.clone();
                let h = hasher.take();
                let mut slice = std::mem::take(&mut buf);
                let (slice, h) = tokio::task::spawn_blocking(move || {
                    if slice.is_empty() {
                        slice = AlignedBuf::new(SLICE);
                    }
                    b.read_at(pos, &mut slice[..n])?;
                    let h = h.map(|mut h| {
                        h.update(&slice[..n]);
                        h
                    });
                    Ok::<_, std::io::Error>((slice, h))
                })
                .await
                .map_err(std::io::Error::other)??;
                hasher = h;
                buf = slice;
                if pos == range.start && self.hooks.corrupts() {
                    super::hooks::corrupt(&mut buf[..n]);
                }
                self.upload.take(n).await;
                tokio::time::timeout(IO_TIMEOUT, stream.write_all(&buf[..n]))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading"))??;
                self.counters.add(peer, 0, n as u64);
                pos += n as u64;
                if cut {
                    stream.flush().await?;
                    return Ok(());
                }
                if self.hooks.stalls() {
                    stream.flush().await?;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
            stream.flush().await?;
            if let (Some(expect), Some(h)) = (expect, hasher) {
                let good = h.finish() == expect;
                let (hd, etag, index) = (holdings.clone(), req.etag.clone(), req.index);
                let _ = tokio::task::spawn_blocking(move || hd.served(&etag, index, good)).await;
            }
            tracing::trace!(%peer, chunk = req.index, "served chunk");
        }
    }

    fn pooled(&self, peer: PeerId) -> Option<Stream> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&peer).and_then(|v| v.pop())
    }

    /// Opens a new stream to `peer` and sends `req` on it. Opens to one peer are serialised
    /// until the first answer arrives: the answer proves the peer accepted the stream, so the
    /// next open cannot find its one-slot inbound queue full. Other askers can still fill it, so
    /// a failed open is retried a few times with a short backoff.
    ///
    /// When every attempt opened a stream and the peer dropped it unanswered, the peer is busy
    /// (its queue of new streams was full), not without the chunk: at 16 nodes the holder of
    /// the first chunks dropped streams now and then ("connection is closed"), the asker took
    /// that for "does not hold it", and the chunk went to the Hub.
    async fn open_and_ask(&self, peer: PeerId, req: &ChunkRequest) -> Result<(Stream, ChunkHeader), PeerFetchError> {
        let lock = {
            let mut m = self.opening.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(peer).or_default().clone()
        };
        let _one_open = lock.lock().await;
        let mut last = String::new();
        let mut dropped = 0;
        for attempt in 0..OPEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
            let mut control = self.control.clone();
            let mut stream = match tokio::time::timeout(IO_TIMEOUT, control.open_stream(peer, protocol())).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = format!("cannot open a stream: {e}");
                    if matches!(e, libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) {
                        break;
                    }
                    continue;
                }
                Err(_) => {
                    last = "timed out opening a stream".into();
                    continue;
                }
            };
            match self.ask(&mut stream, req).await {
                Ok(h) => return Ok((stream, h)),
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::TimedOut {
                        dropped += 1;
                    }
                    last = e.to_string();
                }
            }
        }
        if dropped == OPEN_ATTEMPTS {
            tracing::debug!(%peer, chunk = req.index, why = %last, "peer dropped every stream opened to it");
            return Err(PeerFetchError::Busy);
        }
        Err(PeerFetchError::Unavailable(last))
    }

    /// Forgets pooled streams to a peer (it went away).
    pub fn forget(&self, peer: &PeerId) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).remove(peer);
        self.opening.lock().unwrap_or_else(|p| p.into_inner()).remove(peer);
    }

    /// Fetches a chunk from `peer` into `w`, calling `on_bytes` as bytes arrive. The caller checks
    /// the chunk's hash (via `w.finish()`) against the peer's record.
    pub async fn fetch(
        &self,
        peer: PeerId,
        req: &ChunkRequest,
        w: &mut ChunkWriter,
        throttle: &Throttle,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<(), PeerFetchError> {
        let want = w.remaining();
        let slot = {
            let mut m = self.ask_per_peer.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(SERVE_PER_PEER))).clone()
        };
        let _slot = slot.acquire_owned().await.map_err(|e| PeerFetchError::Unavailable(e.to_string()))?;
        // A pooled stream may have died while idle; then a fresh one.
        let pooled = match self.pooled(peer) {
            Some(mut s) => self.ask(&mut s, req).await.ok().map(|h| (s, h)),
            None => None,
        };
        let (mut stream, header) = match pooled {
            Some(sh) => sh,
            None => self.open_and_ask(peer, req).await?,
        };
        let len = match header {
            ChunkHeader::Data { len } => len,
            ChunkHeader::NotHeld => {
                self.give_back(peer, stream);
                return Err(PeerFetchError::Unavailable("peer no longer holds the chunk".into()));
            }
            ChunkHeader::Busy => {
                self.give_back(peer, stream);
                return Err(PeerFetchError::Busy);
            }
        };
        if len != want {
            return Err(PeerFetchError::Unavailable(format!("peer announced {len} bytes for a chunk of {want}")));
        }
        // The stream is read straight into the writer's buffer: no slice in between.
        while w.remaining() > 0 {
            match tokio::time::timeout(IO_TIMEOUT, stream.read(w.spare())).await {
                Ok(Ok(0)) => return Err(PeerFetchError::Interrupted("the peer closed it".into())),
                Ok(Ok(got)) => {
                    throttle.take(got).await;
                    w.filled(got).await?;
                    self.counters.add(peer, got as u64, 0);
                    on_bytes(got as u64);
                }
                Ok(Err(e)) => return Err(PeerFetchError::Interrupted(e.to_string())),
                Err(_) => return Err(PeerFetchError::Unavailable("peer stalled".into())),
            }
        }
        self.give_back(peer, stream);
        Ok(())
    }

    async fn ask(&self, stream: &mut Stream, req: &ChunkRequest) -> std::io::Result<ChunkHeader> {
        tokio::time::timeout(IO_TIMEOUT, async {
            write_frame(stream, req).await?;
            read_frame(stream, MAX_CHUNK_FRAME).await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
    }

    fn give_back(&self, peer: PeerId, stream: Stream) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let v = pool.entry(peer).or_default();
        if v.len() < SERVE_PER_PEER {
            v.push(stream);
        }
    }
}
