//! What this node can serve: complete blobs of its cache and verified chunks of files it is
//! still downloading, each chunk with a signed hash record.
//!
//! The rule that makes the swarm safe: a chunk is offered only with a record, and a record exists
//! only for bytes that were checked. Records come from three places:
//! - chunks this node fetched from the Hub: it signs them itself (it saw the Hub's bytes);
//! - chunks received from a peer: the peer's record is kept and relayed, unchanged, after the
//!   bytes matched it (the original signer stays answerable for them);
//! - complete blobs: the whole file matched the Hub's ETag, so this node signs every chunk. A blob
//!   found in the cache (written by another process) is hashed whole once, and served only if it
//!   matches its name.
//!
//! In an open swarm only blobs of repos known to be public are offered: a repo the Hub called
//! gated or private, or one no `get` on this cache has asked the Hub about, is never served,
//! listed or announced, whoever asks. In a private swarm every blob is.

use super::hooks::Hooks;
use crate::os::FileAt as _;
use crate::store::PartialFile;
use crate::store::direct::DataFile;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_protocol::chunk::ChunkLayout;
use swarm_protocol::hash::{ChunkHash, ChunkHasher, Etag};
use swarm_protocol::wire::{Bitmap, ChunkRecord, HaveRequest, HaveResponse, record_signing_bytes};

/// A node that signs records.
#[derive(Debug, PartialEq, Eq)]
pub struct Signer {
    /// Its key.
    pub key: PublicKey,
    /// The key in protobuf encoding (as sent on the wire).
    pub encoded: Vec<u8>,
    /// Its peer id.
    pub peer: PeerId,
}

impl Signer {
    /// Decodes a signer from the wire.
    pub fn decode(encoded: &[u8]) -> Option<Self> {
        let key = PublicKey::try_decode_protobuf(encoded).ok()?;
        Some(Self { peer: key.to_peer_id(), key, encoded: encoded.to_vec() })
    }
}

/// "Chunk `i` hashes to `hash`", signed.
#[derive(Debug, Clone)]
pub struct Record {
    /// The hash.
    pub(in crate::swarm) hash: ChunkHash,
    /// Who vouches for it.
    pub(in crate::swarm) signer: Arc<Signer>,
    /// The signature over [`record_signing_bytes`].
    pub(in crate::swarm) signature: Arc<[u8]>,
}

impl Record {
    /// The chunk hash that the record vouches for.
    pub fn hash(&self) -> ChunkHash {
        self.hash
    }

    /// The node that signed it.
    pub fn signer(&self) -> PeerId {
        self.signer.peer
    }

    /// Whether the signature is valid for this chunk of this file.
    pub fn verify(&self, etag: &Etag, size: u64, index: u32) -> bool {
        self.signer.key.verify(&record_signing_bytes(etag, size, index, &self.hash), &self.signature)
    }
}

/// The records whose signature this node has checked, so that a record is checked once, not
/// once per holder that relays it: every holder of a chunk sends the same record (its first
/// signer's), and at 16 nodes that was about 30,000 ed25519 checks per 512 MiB download, 1.4%
/// of the machine's CPU (perf, 2026-12-03). A record is found by a hash of everything its check
/// covers (signer key, signed bytes, signature), so only a record identical to one checked
/// passes unchecked. Bounded: emptied when full.
#[derive(Debug, Default)]
pub struct CheckedRecords {
    seen: Mutex<HashSet<ChunkHash>>,
    /// Signatures checked (not found in `seen`).
    checks: AtomicU64,
}

impl CheckedRecords {
    /// How many records are remembered at most (32 bytes each).
    const MAX: usize = 1 << 16;

    /// [`Record::verify`], once per distinct record.
    pub fn verify(&self, rec: &Record, etag: &Etag, size: u64, index: u32) -> bool {
        let mut h = ChunkHasher::new();
        for part in [&rec.signer.encoded[..], &record_signing_bytes(etag, size, index, &rec.hash), &rec.signature] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let key = h.finish();
        if lock(&self.seen).contains(&key) {
            return true;
        }
        self.checks.fetch_add(1, Relaxed);
        if !rec.verify(etag, size, index) {
            return false;
        }
        let mut seen = lock(&self.seen);
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        seen.insert(key);
        true
    }

    /// Signatures checked so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Relaxed)
    }
}

/// A file being downloaded here, offered chunk by chunk as chunks are verified.
#[derive(Debug)]
pub struct Partial {
    /// The file's size.
    pub size: u64,
    /// What `status` calls it: `org/model: path/in/repo`.
    pub name: String,
    /// Its download's progress (bytes present).
    pub progress: Arc<crate::fetch::progress::FileProgress>,
    /// Bytes present over the last seconds, sampled once a second.
    pub rate: Mutex<crate::rate::RateWindow>,
    /// Its bytes.
    pub pf: Arc<PartialFile>,
    records: Mutex<Vec<Option<Record>>>,
    fetching: Mutex<Bitmap>,
    /// Chunks that have left the Hub as far as this node's schedule knows (announced: the
    /// swarm-wide Hub window).
    landed: Mutex<Bitmap>,
    /// Bytes received from the Hub for the file in this download (announced: stall detection).
    pub hub_bytes: Arc<AtomicU64>,
    /// Peers that asked with news ([`HaveRequest::news`]) since the download's driver last
    /// looked, and the wake-up that tells it to.
    news: Mutex<HashSet<PeerId>>,
    poked: tokio::sync::Notify,
}

impl Partial {
    /// Offers chunk `index` under `record` (after its bytes were written and checked).
    pub fn add(&self, index: u32, record: Record) {
        if let Some(slot) = lock(&self.records).get_mut(index as usize) {
            *slot = Some(record);
        }
    }

    /// Marks chunk `index` as being fetched from the Hub now (or no longer).
    pub fn set_fetching(&self, index: u32, on: bool) {
        let mut f = lock(&self.fetching);
        if on {
            f.set(index);
        } else if let Some(b) = f.0.get_mut((index / 8) as usize) {
            *b &= !(1 << (index % 8));
        }
    }

    /// Sets the chunks announced as having left the Hub.
    pub fn set_landed(&self, bits: Bitmap) {
        *lock(&self.landed) = bits;
    }

    /// Waits until a peer asks with news, unless one already did since the last call
    /// ([`Self::take_news`] then names it).
    pub async fn poked(&self) {
        self.poked.notified().await;
    }

    /// Peers that asked with news since the last call: the driver asks them back now.
    pub fn take_news(&self) -> Vec<PeerId> {
        lock(&self.news).drain().collect()
    }

    /// Chunks offered so far.
    pub fn held(&self) -> u32 {
        lock(&self.records).iter().filter(|r| r.is_some()).count() as u32
    }

    /// The records of all chunks, if all are held.
    pub fn all_records(&self) -> Option<Vec<Record>> {
        lock(&self.records).iter().cloned().collect()
    }
}

#[derive(Debug)]
struct Complete {
    path: PathBuf,
    records: Vec<Record>,
    /// Chunks whose bytes on disk were hashed and matched since this node took the blob up.
    /// A blob whose hashes came from its saved manifest starts with none: each chunk is checked
    /// the first time it is served.
    checked: Mutex<Bitmap>,
}

impl Complete {
    fn new(path: PathBuf, records: Vec<Record>, checked: bool) -> Self {
        let n = records.len() as u32;
        let bits = if checked { Bitmap::full(n) } else { Bitmap::new(n) };
        Self { path, records, checked: Mutex::new(bits) }
    }
}

/// Rate limits of [`Holdings::recheck`].
#[derive(Debug, Default)]
struct Rechecks {
    last: Option<std::time::Instant>,
    per_chunk: HashMap<(Etag, u32), std::time::Instant>,
}

/// A source of one chunk's bytes.
#[derive(Debug)]
pub enum ChunkBytes {
    /// From a partial file.
    Partial(Arc<PartialFile>, std::ops::Range<u64>),
    /// From a blob; with the hash its bytes must have when this chunk was not checked yet (the
    /// server hashes what it sends and reports back with [`Holdings::served`]).
    Blob(DataFile, std::ops::Range<u64>, Option<ChunkHash>),
}

impl ChunkBytes {
    /// The chunk's byte range.
    pub fn range(&self) -> std::ops::Range<u64> {
        match self {
            Self::Partial(_, r) | Self::Blob(_, r, _) => r.clone(),
        }
    }

    /// Reads `buf.len()` bytes at file offset `offset`. Blocking.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Self::Partial(pf, _) => pf.read_at(offset, buf).map_err(io::Error::other),
            Self::Blob(f, _, _) => f.read_exact_at(buf, offset),
        }
    }

    /// The hash to check the bytes against as they are sent, if this chunk was not checked yet.
    pub fn unchecked(&self) -> Option<ChunkHash> {
        match self {
            Self::Blob(_, _, expect) => *expect,
            Self::Partial(..) => None,
        }
    }
}

/// Everything this node offers to peers.
#[derive(Debug)]
pub struct Holdings {
    cache_root: PathBuf,
    /// An open swarm: serve public repos only.
    open: bool,
    key: Keypair,
    me: Arc<Signer>,
    partial: Mutex<HashMap<Etag, Arc<Partial>>>,
    complete: Mutex<HashMap<Etag, Arc<Complete>>>,
    /// One blob is hashed at a time: hashing is disk- and CPU-bound, and two peers asking for the
    /// same new blob must not hash it twice.
    hashing: Mutex<()>,
    hooks: Hooks,
    /// Files this node is about to download (counted per `get`), announced as `downloading`
    /// before their first chunk is placed, so that nodes starting together see each other.
    wanted: Mutex<HashMap<Etag, u32>>,
    /// The files this node completed most recently (etag, size), newest last.
    completed: Mutex<std::collections::VecDeque<(Etag, u64)>>,
    /// Peers that asked about a file this node is downloading, saying they download it too,
    /// since the download's driver last looked ([`Holdings::take_askers`]).
    askers: Mutex<HashMap<Etag, HashSet<PeerId>>>,
    /// When reported chunks were last hashed again ([`Holdings::recheck`]).
    rechecks: Mutex<Rechecks>,
}

/// Most complete-blob manifests kept in memory (each is ~100 bytes per chunk).
const MAX_COMPLETE: usize = 4096;
/// Most recently completed files remembered (for [`Holdings::completed`]).
const MAX_COMPLETED: usize = 1024;

impl Holdings {
    /// Holdings of the cache at `cache_root`, signed with `key`; `open` for an open swarm.
    pub fn new(cache_root: PathBuf, open: bool, key: Keypair, hooks: Hooks) -> Self {
        let public = key.public();
        let me = Arc::new(Signer { encoded: public.encode_protobuf(), peer: public.to_peer_id(), key: public });
        Self {
            cache_root,
            open,
            key,
            me,
            partial: Mutex::default(),
            complete: Mutex::default(),
            hashing: Mutex::new(()),
            hooks,
            wanted: Mutex::default(),
            completed: Mutex::default(),
            askers: Mutex::default(),
            rechecks: Mutex::default(),
        }
    }

    /// This node's signer identity.
    pub fn me(&self) -> &Arc<Signer> {
        &self.me
    }

    /// Signs a record for a chunk whose bytes this node checked.
    pub fn sign(&self, etag: &Etag, size: u64, index: u32, hash: ChunkHash) -> Record {
        let msg = record_signing_bytes(etag, size, index, &hash);
        // ed25519 signing cannot fail; an empty signature would only be refused by peers.
        let signature: Arc<[u8]> = self.key.sign(&msg).unwrap_or_default().into();
        Record { hash, signer: self.me.clone(), signature }
    }

    /// Starts offering a file being downloaded.
    pub fn add_partial(
        &self,
        etag: &Etag,
        name: String,
        progress: Arc<crate::fetch::progress::FileProgress>,
        pf: Arc<PartialFile>,
    ) -> Arc<Partial> {
        let size = progress.size;
        let count = ChunkLayout::for_len(size).count() as usize;
        let p = Arc::new(Partial {
            size,
            name,
            progress,
            rate: Mutex::default(),
            pf,
            records: Mutex::new(vec![None; count]),
            fetching: Mutex::new(Bitmap::new(count as u32)),
            landed: Mutex::new(Bitmap::new(count as u32)),
            hub_bytes: Arc::default(),
            news: Mutex::default(),
            poked: tokio::sync::Notify::new(),
        });
        lock(&self.partial).insert(etag.clone(), p.clone());
        p
    }

    /// Stops offering a partial file (done or abandoned). If it completed, `blob` is where its
    /// verified bytes now are, and every chunk is offered from there under this node's signature.
    pub fn finish_partial(&self, etag: &Etag, blob: Option<&Path>) {
        let p = lock(&self.partial).remove(etag);
        lock(&self.askers).remove(etag);
        if let (Some(p), Some(path)) = (p, blob)
            && let Some(records) = p.all_records()
        {
            let records =
                records.into_iter().enumerate().map(|(i, r)| self.sign(etag, p.size, i as u32, r.hash)).collect();
            self.insert_complete(etag, Complete::new(path.to_path_buf(), records, true));
            let mut done = lock(&self.completed);
            if done.len() >= MAX_COMPLETED {
                done.pop_front();
            }
            done.push_back((etag.clone(), p.size));
        }
    }

    /// The files this node downloaded and completed (at most the last [`MAX_COMPLETED`]).
    pub fn completed(&self) -> Vec<(Etag, u64)> {
        lock(&self.completed).iter().cloned().collect()
    }

    fn insert_complete(&self, etag: &Etag, c: Complete) {
        let mut map = lock(&self.complete);
        if map.len() >= MAX_COMPLETE
            && let Some(k) = map.keys().next().cloned()
        {
            map.remove(&k);
        }
        map.insert(etag.clone(), Arc::new(c));
    }

    /// Announces that this node is about to download these files.
    pub fn want(&self, etags: impl IntoIterator<Item = Etag>) {
        let mut w = lock(&self.wanted);
        for e in etags {
            *w.entry(e).or_default() += 1;
        }
    }

    /// Withdraws what [`Self::want`] announced.
    pub fn unwant(&self, etags: impl IntoIterator<Item = Etag>) {
        let mut w = lock(&self.wanted);
        for e in etags {
            if let Some(n) = w.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    w.remove(&e);
                    lock(&self.askers).remove(&e);
                }
            }
        }
    }

    /// Files being downloaded.
    pub fn in_progress(&self) -> Vec<(Etag, Arc<Partial>)> {
        lock(&self.partial).iter().map(|(e, p)| (e.clone(), p.clone())).collect()
    }

    /// Whether the blobs of the repo in cache folder `folder` may be served to this swarm.
    fn serves(&self, folder: &Path) -> bool {
        !self.open
            || folder
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| crate::cache::HubCache::new(self.cache_root.clone()).folder_is_public(n))
    }

    /// Every complete blob in the cache that this swarm may be served: (etag, path, size).
    pub fn blobs(&self) -> Vec<(Etag, PathBuf, u64)> {
        let mut out = Vec::new();
        let Ok(repos) = std::fs::read_dir(&self.cache_root) else {
            return out;
        };
        for repo in repos.flatten().filter(|r| self.serves(&r.path())) {
            let Ok(blobs) = std::fs::read_dir(repo.path().join("blobs")) else {
                continue;
            };
            for b in blobs.flatten() {
                let name = b.file_name();
                let Some(etag) = name.to_str().and_then(|n| Etag::parse(n).ok()) else {
                    continue; // .incomplete files and such
                };
                if let Ok(meta) = b.metadata()
                    && meta.is_file()
                {
                    out.push((etag, b.path(), meta.len()));
                }
            }
        }
        out
    }

    fn find_blob(&self, etag: &Etag, size: u64) -> Option<PathBuf> {
        let repos = std::fs::read_dir(&self.cache_root).ok()?;
        repos
            .flatten()
            .filter(|r| self.serves(&r.path()))
            .map(|r| r.path().join("blobs").join(etag.as_str()))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size))
    }

    /// The signed manifest of a complete blob, hashing it (once) if needed. Blocking. `None` if
    /// there is no such blob, or if its bytes do not match its name (then it is never served).
    fn complete(&self, etag: &Etag, size: u64) -> Option<Arc<Complete>> {
        if let Some(c) = lock(&self.complete).get(etag) {
            return Some(c.clone());
        }
        let _one = lock(&self.hashing);
        if let Some(c) = lock(&self.complete).get(etag) {
            return Some(c.clone());
        }
        let path = self.find_blob(etag, size)?;
        let cache = crate::cache::HubCache::new(self.cache_root.clone());
        let saved = cache.load_manifest(etag, size).map(|m| m.chunks.into_iter().flatten().collect::<Vec<_>>());
        let checked = saved.is_none();
        let hashed = match saved {
            Some(h) => Ok(Some(h)),
            None => hash_blob(&path, etag, size).inspect(|h| {
                if let Some(h) = h {
                    let mut m = swarm_protocol::manifest::ChunkManifest::empty(etag.clone(), size);
                    m.chunks = h.iter().copied().map(Some).collect();
                    cache.save_manifest(&m);
                }
            }),
        };
        let hashes = match hashed {
            Ok(Some(h)) => h,
            Ok(None) => {
                tracing::warn!(blob = %path.display(), "cached blob does not match its name; not serving it");
                return None;
            }
            Err(e) => {
                tracing::warn!(blob = %path.display(), error = %e, "cannot read cached blob");
                return None;
            }
        };
        let records = hashes.into_iter().enumerate().map(|(i, h)| self.sign(etag, size, i as u32, h)).collect();
        self.insert_complete(etag, Complete::new(path, records, checked));
        lock(&self.complete).get(etag).cloned()
    }

    /// Hashes chunk `index` of a complete blob again, after a peer reported that what it got
    /// did not match the record (see [`Self::served`] for what a mismatch does). At most one
    /// recheck a second, and one per chunk a minute: reports cost the reporter nothing. Returns
    /// whether it hashed. Blocking.
    pub fn recheck(&self, etag: &Etag, size: u64, index: u32) -> bool {
        let now = std::time::Instant::now();
        {
            let mut r = lock(&self.rechecks);
            let recent = |at: &std::time::Instant| now.duration_since(*at) < Duration::from_secs(60);
            if r.last.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
                || r.per_chunk.get(&(etag.clone(), index)).is_some_and(recent)
            {
                return false;
            }
            r.per_chunk.retain(|_, at| recent(at));
            r.last = Some(now);
            r.per_chunk.insert((etag.clone(), index), now);
        }
        let Some(c) = lock(&self.complete).get(etag).cloned() else {
            return false;
        };
        let (Some(range), Some(record)) = (ChunkLayout::for_len(size).range(index), c.records.get(index as usize))
        else {
            return false;
        };
        let hash = || -> io::Result<ChunkHash> {
            hash_chunk(&File::open(&c.path)?, range.clone(), &mut vec![0u8; 1 << 20], |_| {})
        };
        let good = hash().is_ok_and(|h| h == record.hash);
        self.served(etag, index, good);
        true
    }

    /// Says how a chunk of a blob hashed when it was served (see [`ChunkBytes::unchecked`]). A
    /// chunk that no longer matches its record means the blob rotted on disk: it is withdrawn,
    /// moved aside (`<blob>.corrupt`, which `cache clean` removes) and logged as an error; the
    /// next `get` of its repo fetches it again. Blocking.
    pub fn served(&self, etag: &Etag, index: u32, good: bool) {
        let Some(c) = lock(&self.complete).get(etag).cloned() else { return };
        if good {
            lock(&c.checked).set(index);
            return;
        }
        lock(&self.complete).remove(etag);
        let aside = crate::cache::corrupt_path(&c.path);
        match std::fs::rename(&c.path, &aside) {
            Ok(()) => tracing::error!(
                blob = %c.path.display(),
                chunk = index,
                moved_to = %aside.display(),
                "a cached blob no longer matches its hash (disk error?): no longer served, moved aside; the next get of its repo fetches it again"
            ),
            Err(e) => tracing::error!(
                blob = %c.path.display(),
                chunk = index,
                error = %e,
                "a cached blob no longer matches its hash (disk error?): no longer served, and it cannot be moved aside; run `swarm-dl cache verify --repair`"
            ),
        }
    }

    /// Peers that said, asking about `etag`, that they download it too, since the last call.
    pub fn take_askers(&self, etag: &Etag) -> Vec<PeerId> {
        lock(&self.askers).remove(etag).map(|s| s.into_iter().collect()).unwrap_or_default()
    }

    /// The misbehaviour this node was built with (tests only).
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Answers `from`'s "what do you hold of this file?". Blocking (may hash a blob).
    pub fn answer(&self, from: PeerId, req: &HaveRequest) -> HaveResponse {
        self.answer_if(from, req, true).unwrap_or_else(HaveResponse::none)
    }

    /// [`Self::answer`] when it needs no disk: the file is being downloaded here, or its blob's
    /// records are already in memory. `None`: ask [`Self::answer`] on a blocking thread.
    pub fn answer_from_memory(&self, from: PeerId, req: &HaveRequest) -> Option<HaveResponse> {
        self.answer_if(from, req, false)
    }

    fn answer_if(&self, from: PeerId, req: &HaveRequest, may_read: bool) -> Option<HaveResponse> {
        let Ok(count) = req.validate() else {
            return Some(HaveResponse::none());
        };
        let partial = lock(&self.partial).get(&req.etag).filter(|p| p.size == req.size).cloned();
        let downloading = partial.is_some() || lock(&self.wanted).contains_key(&req.etag);
        if downloading && req.downloading {
            lock(&self.askers).entry(req.etag.clone()).or_default().insert(from);
        }
        if let Some(p) = partial.as_ref().filter(|_| req.news) {
            lock(&p.news).insert(from);
            p.poked.notify_one();
        }
        let fetching = partial.as_ref().map(|p| lock(&p.fetching).clone()).unwrap_or_default();
        let hub_bytes = partial.as_ref().map_or(0, |p| p.hub_bytes.load(Relaxed));
        let landed = partial.as_ref().map(|p| lock(&p.landed).clone()).unwrap_or_default();
        let records: Vec<Option<Record>> = match partial {
            Some(p) => lock(&p.records).clone(),
            None => {
                let complete = if may_read {
                    self.complete(&req.etag, req.size)
                } else {
                    Some(lock(&self.complete).get(&req.etag)?.clone())
                };
                match complete {
                    Some(c) => c.records.iter().cloned().map(Some).collect(),
                    None => return Some(HaveResponse { downloading, ..HaveResponse::none() }),
                }
            }
        };
        let mut resp = HaveResponse {
            have: Bitmap::new(count),
            signers: Vec::new(),
            records: Vec::new(),
            downloading,
            fetching,
            hub_bytes,
            landed,
        };
        let mut signer_index: HashMap<PeerId, u16> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let Some(r) = r else { continue };
            let i = i as u32;
            #[cfg(feature = "test-hooks")]
            let forged;
            #[cfg(feature = "test-hooks")]
            let r = if self.hooks.forges() {
                let Some(f) = self.forge(&req.etag, req.size, i) else { continue };
                forged = f;
                &forged
            } else {
                r
            };
            resp.have.set(i);
            if req.known.get(i) {
                continue;
            }
            let next = resp.signers.len();
            let Ok(next) = u16::try_from(next) else { continue };
            let signer = *signer_index.entry(r.signer.peer).or_insert_with(|| {
                resp.signers.push(r.signer.encoded.clone());
                next
            });
            resp.records.push(ChunkRecord { index: i, hash: r.hash, signer, signature: r.signature.to_vec() });
        }
        Some(resp)
    }

    /// The bytes of chunk `index`, if held and verified. Blocking.
    pub fn chunk(&self, etag: &Etag, size: u64, index: u32) -> Option<ChunkBytes> {
        let range = ChunkLayout::for_len(size).range(index)?;
        let partial = lock(&self.partial).get(etag).filter(|p| p.size == size).cloned();
        if let Some(p) = partial {
            return lock(&p.records)
                .get(index as usize)
                .and_then(|r| r.as_ref())
                .map(|_| ChunkBytes::Partial(p.pf.clone(), range));
        }
        let c = self.complete(etag, size)?;
        let unchecked = !lock(&c.checked).get(index);
        let expect = unchecked.then(|| c.records.get(index as usize).map(|r| r.hash)).flatten();
        DataFile::open_read(&c.path).ok().map(|f| ChunkBytes::Blob(f, range, expect))
    }
}

#[cfg(feature = "test-hooks")]
impl Holdings {
    /// A record vouching for the corrupted bytes a faulty node serves (tests only).
    fn forge(&self, etag: &Etag, size: u64, index: u32) -> Option<Record> {
        let c = self.chunk(etag, size, index)?;
        let r = c.range();
        let mut buf = vec![0u8; (r.end - r.start) as usize];
        c.read_at(r.start, &mut buf).ok()?;
        super::hooks::corrupt(&mut buf);
        Some(self.sign(etag, size, index, ChunkHash::of(&buf)))
    }
}

/// Hashes every chunk of a blob and the whole file; `None` if the whole does not match `etag`.
fn hash_blob(path: &Path, etag: &Etag, size: u64) -> io::Result<Option<Vec<ChunkHash>>> {
    let f = File::open(path)?;
    let layout = ChunkLayout::for_len(size);
    let mut whole = etag.hasher(size);
    let mut hashes = Vec::with_capacity(layout.count() as usize);
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..layout.count() {
        let Some(r) = layout.range(i) else { break };
        hashes.push(hash_chunk(&f, r, &mut buf, |b| whole.update(b))?);
    }
    Ok((whole.finish_hex() == etag.as_str()).then_some(hashes))
}

/// The chunk hash of `range` of `f`, read through `buf`; `also` sees the same bytes.
fn hash_chunk(
    f: &File,
    range: std::ops::Range<u64>,
    buf: &mut [u8],
    mut also: impl FnMut(&[u8]),
) -> io::Result<ChunkHash> {
    let mut h = ChunkHasher::new();
    let mut pos = range.start;
    while pos < range.end {
        let n = ((range.end - pos) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], pos)?;
        h.update(&buf[..n]);
        also(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finish())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_protocol::hash::lfs_sha256;

    /// "What do you hold of this file?", knowing no record yet, without news.
    fn question(etag: &Etag, size: u64, downloading: bool) -> HaveRequest {
        let known = Bitmap::new(ChunkLayout::for_len(size).count());
        HaveRequest { etag: etag.clone(), size, known, downloading, news: false }
    }

    fn cache_with_blob(data: &[u8]) -> (tempfile::TempDir, Etag) {
        let tmp = tempfile::tempdir().expect("tmp");
        let etag = lfs_sha256(data);
        let dir = tmp.path().join("models--a--b/blobs");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(etag.as_str()), data).expect("write");
        (tmp, etag)
    }

    #[test]
    fn complete_blobs_are_offered_with_valid_signed_records() {
        let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (tmp, etag) = cache_with_blob(&data);
        let h = Holdings::new(tmp.path().into(), false, Keypair::generate_ed25519(), Hooks::default());
        let req = question(&etag, data.len() as u64, true);
        let resp = h.answer(PeerId::random(), &req);
        resp.validate(&req).expect("valid");
        assert_eq!(resp.have.count_ones(), 3);
        assert_eq!(resp.records.len(), 3);
        let signer = Signer::decode(&resp.signers[0]).expect("signer");
        for r in &resp.records {
            let rec = Record {
                hash: r.hash,
                signer: Arc::new(Signer::decode(&resp.signers[0]).expect("s")),
                signature: r.signature.clone().into(),
            };
            assert!(rec.verify(&etag, data.len() as u64, r.index));
            assert!(!rec.verify(&etag, data.len() as u64, r.index + 1), "a record is bound to its index");
        }
        assert_eq!(signer.peer, h.me().peer);
        // Known chunks are not sent again.
        let mut known = Bitmap::new(3);
        known.set(0);
        assert_eq!(h.answer(PeerId::random(), &HaveRequest { known, ..req }).records.len(), 2);
        let c = h.chunk(&etag, data.len() as u64, 2).expect("chunk");
        assert_eq!(c.range(), (8 << 20)..(9 << 20));
    }

    #[test]
    fn only_what_is_in_memory_is_answered_without_a_blocking_thread() {
        let data: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 249) as u8).collect();
        let (tmp, etag) = cache_with_blob(&data);
        let h = Holdings::new(tmp.path().into(), false, Keypair::generate_ed25519(), Hooks::default());
        let req = question(&etag, data.len() as u64, false);
        let asker = PeerId::random();
        // A blob not read yet, and a file this node may or may not have: the disk must tell.
        assert_eq!(h.answer_from_memory(asker, &req), None);
        let other = HaveRequest { etag: lfs_sha256(b"other"), ..req.clone() };
        assert_eq!(h.answer_from_memory(asker, &other), None);
        // Once read (and hashed) on a blocking thread, the same answer comes from memory.
        let slow = h.answer(asker, &req);
        assert_eq!(slow.records.len(), 2);
        assert_eq!(h.answer_from_memory(asker, &req), Some(slow));
        // A malformed question needs no disk either.
        let bad = HaveRequest { known: Bitmap::new(9), ..req };
        assert_eq!(h.answer_from_memory(asker, &bad), Some(HaveResponse::none()));
    }

    /// A question with news wakes the download of that file here, and names the asker; one
    /// without news, or about a file not in progress here, wakes nothing.
    #[tokio::test]
    async fn a_question_with_news_wakes_the_download_and_names_the_asker() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (etag, size) = (lfs_sha256(b"in progress"), 9u64 << 20);
        let (pf, _) = PartialFile::open(&tmp.path().join("inc"), &tmp.path().join("state"), &etag, size).expect("open");
        let h = Holdings::new(tmp.path().into(), false, Keypair::generate_ed25519(), Hooks::default());
        let progress = crate::fetch::progress::Progress::default().start_file("f", size);
        let p = h.add_partial(&etag, "a/b: f".into(), progress, Arc::new(pf));
        let woken = || async { tokio::time::timeout(std::time::Duration::from_millis(100), p.poked()).await.is_ok() };
        let (plain, news) = (PeerId::random(), PeerId::random());
        let req = question(&etag, size, true);
        assert!(h.answer_from_memory(plain, &req).is_some(), "a file in progress is answered from memory");
        let elsewhere = HaveRequest { etag: lfs_sha256(b"not here"), news: true, ..req.clone() };
        let _ = h.answer(plain, &elsewhere);
        assert!(!woken().await, "no news about this file");
        assert!(p.take_news().is_empty());
        let _ = h.answer_from_memory(news, &HaveRequest { news: true, ..req.clone() });
        let _ = h.answer(news, &HaveRequest { news: true, ..req });
        assert!(woken().await, "news wakes the download");
        assert_eq!(p.take_news(), vec![news], "once per asker");
        assert!(!woken().await && p.take_news().is_empty(), "taken: nothing more");
    }

    #[test]
    fn a_record_relayed_by_every_holder_is_checked_once_and_a_forged_one_never_passes() {
        let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (tmp, etag) = cache_with_blob(&data);
        let h = Holdings::new(tmp.path().into(), false, Keypair::generate_ed25519(), Hooks::default());
        let req = question(&etag, data.len() as u64, true);
        let resp = h.answer(PeerId::random(), &req);
        let signer = Arc::new(Signer::decode(&resp.signers[0]).expect("signer"));
        let record = |r: &ChunkRecord, signature: Vec<u8>| Record {
            hash: r.hash,
            signer: signer.clone(),
            signature: signature.into(),
        };
        let size = data.len() as u64;
        let checked = CheckedRecords::default();
        // The same three records, as three holders would relay them.
        for _ in 0..3 {
            for r in &resp.records {
                assert!(checked.verify(&record(r, r.signature.clone()), &etag, size, r.index));
            }
        }
        assert_eq!(checked.checks(), 3, "one signature check per distinct record");
        // Anything that differs from a checked record is checked, and fails.
        let r = &resp.records[0];
        let mut forged = r.signature.clone();
        forged[0] ^= 1;
        assert!(!checked.verify(&record(r, forged.clone()), &etag, size, r.index));
        assert!(!checked.verify(&record(r, forged), &etag, size, r.index), "a failed check is not remembered");
        assert!(!checked.verify(&record(r, r.signature.clone()), &etag, size, r.index + 1), "bound to its index");
        let other = Record { hash: ChunkHash([7; 32]), ..record(r, r.signature.clone()) };
        assert!(!checked.verify(&other, &etag, size, r.index), "bound to its hash");
        assert_eq!(checked.checks(), 7);
    }

    #[test]
    fn a_blob_that_does_not_match_its_name_is_never_offered() {
        let (tmp, etag) = cache_with_blob(b"good bytes");
        let path = tmp.path().join("models--a--b/blobs").join(etag.as_str());
        std::fs::write(&path, b"evil bytes").expect("tamper");
        let h = Holdings::new(tmp.path().into(), false, Keypair::generate_ed25519(), Hooks::default());
        let req = question(&etag, 10, true);
        assert_eq!(h.answer(PeerId::random(), &req), HaveResponse::none());
        assert!(h.chunk(&etag, 10, 0).is_none());
    }

    #[test]
    fn an_open_swarm_is_served_only_repos_the_hub_called_public() {
        // Gated repos leaked to tokenless peers of an open swarm: a holder served every blob of
        // its cache, whatever the repo. Now only repos a `get` found public are served there.
        let (tmp, etag) = cache_with_blob(b"weights of a gated model");
        let cache = crate::cache::HubCache::new(tmp.path());
        let repo = crate::hub::RepoRef {
            id: swarm_protocol::repo::RepoId::parse("a/b").expect("id"),
            ty: swarm_protocol::repo::RepoType::Model,
        };
        let req = question(&etag, 24, true);
        let ask = |open: bool| {
            let h = Holdings::new(tmp.path().into(), open, Keypair::generate_ed25519(), Hooks::default());
            (h.answer(PeerId::random(), &req).have.count_ones(), h.chunk(&etag, 24, 0).is_some(), h.blobs().len())
        };
        assert_eq!(ask(true), (0, false, 0), "unknown access: not served to an open swarm");
        assert_eq!(ask(false), (1, true, 1), "a private swarm is served everything");
        cache.record_access(&repo, crate::hub::Access { gated: true, private: false });
        assert_eq!(ask(true), (0, false, 0), "gated: not served to an open swarm");
        cache.record_access(&repo, crate::hub::Access { gated: false, private: true });
        assert_eq!(ask(true), (0, false, 0), "private: not served to an open swarm");
        cache.record_access(&repo, crate::hub::Access { gated: false, private: false });
        assert_eq!(ask(true), (1, true, 1), "public: served");
    }
}
