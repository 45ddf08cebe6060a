//! What nodes say to each other: message types, their encoding, and the bytes a node signs.
//!
//! Two protocols, both versioned by name:
//! - [`HAVE_PROTOCOL`] (request/response): "what do you hold of this file?" answered with a
//!   bitmap of held chunks plus the signed hash record of each held chunk the asker lacks.
//! - [`CHUNK_PROTOCOL`] (a long-lived stream): a sequence of [`ChunkRequest`] frames, each answered
//!   by a [`ChunkHeader`] frame followed by exactly `len` raw bytes — never buffered whole.
//!
//! Every frame is a big-endian `u32` length followed by a bincode body (standard config). Decoding
//! refuses frames over the per-kind limit before reading them, and bincode's own limit bounds
//! every allocation a hostile length prefix could ask for, so decoding untrusted bytes never
//! panics and never allocates more than the limit. Structural limits (chunk count, signature
//! length) are checked by `validate` after decoding.

use crate::chunk::ChunkLayout;
use crate::hash::{ChunkHash, Etag};
use serde::{Deserialize, Serialize};

/// Protocol name of the availability exchange.
pub const HAVE_PROTOCOL: &str = "/swarm-dl/have/6";
/// Protocol name of chunk transfer.
pub const CHUNK_PROTOCOL: &str = "/swarm-dl/chunk/1";
/// Protocol name of the metadata exchange (a revision's commit and file listing).
pub const META_PROTOCOL: &str = "/swarm-dl/meta/1";
/// Protocol name of bad-chunk reports: "the chunk you served me does not match your record"
/// (a [`ChunkRequest`] naming it, answered with a [`ReportAck`]).
pub const REPORT_PROTOCOL: &str = "/swarm-dl/report/1";
/// Protocol name of preheat: "fetch this repo now" ([`PreheatRequest`], answered with a
/// [`PreheatReply`]), and "how far is it?".
pub const PREHEAT_PROTOCOL: &str = "/swarm-dl/preheat/1";
/// Protocol name of the Kademlia DHT (private: never the public IPFS one).
pub const KAD_PROTOCOL: &str = "/swarm-dl/kad/1";
/// Identify's protocol version string.
pub const IDENTIFY_VERSION: &str = "/swarm-dl/1";

/// Largest have request (a bitmap of up to 2^21 chunks plus the file id).
pub const MAX_HAVE_REQUEST: usize = 300 << 10;
/// Largest have response: a bitmap and one record per chunk (≈110 bytes) for the largest file
/// the chunk rule allows (64 MiB chunks × 65 536 = 4 TiB), with room to spare.
pub const MAX_HAVE_RESPONSE: usize = 8 << 20;
/// Largest chunk request or header frame.
pub const MAX_CHUNK_FRAME: usize = 1024;
/// Largest metadata request.
pub const MAX_META_REQUEST: usize = 4096;
/// Largest metadata response (a listing of ~100 000 files).
pub const MAX_META_RESPONSE: usize = 16 << 20;
/// Most files a listing may name.
pub const MAX_LISTING_FILES: usize = 200_000;
/// Largest preheat request frame.
pub const MAX_PREHEAT_FRAME: usize = 64 << 10;
/// Largest preheat reply frame (every node's part, for a few thousand nodes).
pub const MAX_PREHEAT_REPLY: usize = 1 << 20;
/// Most include or exclude patterns a preheat may carry (each).
pub const MAX_PREHEAT_PATTERNS: usize = 64;
/// Longest name (repo type, id, revision, pattern, message) in a preheat frame.
pub const MAX_PREHEAT_FIELD: usize = 512;
/// Most chunks a file may have on the wire.
pub const MAX_CHUNKS: u32 = 1 << 16;
/// Most distinct signers one response may name.
pub const MAX_SIGNERS: usize = 1024;
/// Longest encoded public key (protobuf; ed25519 is 36 bytes).
pub const MAX_KEY_LEN: usize = 128;
/// Longest signature (ed25519 is 64 bytes).
pub const MAX_SIG_LEN: usize = 128;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is larger than its kind allows.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// Not a valid encoding of the message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// Well-formed but inconsistent (wrong counts, oversize fields).
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// A set of chunk indices, one bit each, chunk 0 in the lowest bit of byte 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bitmap(pub Vec<u8>);

impl Bitmap {
    /// An empty set for `count` chunks.
    pub fn new(count: u32) -> Self {
        Self(vec![0; count.div_ceil(8) as usize])
    }

    /// The set of all `count` chunks.
    pub fn full(count: u32) -> Self {
        let mut bits = Self(vec![0xff; count.div_ceil(8) as usize]);
        if let Some(last) = bits.0.last_mut()
            && !count.is_multiple_of(8)
        {
            *last = (1u8 << (count % 8)) - 1;
        }
        bits
    }

    /// Whether chunk `i` is in the set (false beyond the end).
    pub fn get(&self, i: u32) -> bool {
        self.0.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Adds chunk `i` (ignored beyond the end).
    pub fn set(&mut self, i: u32) {
        if let Some(b) = self.0.get_mut((i / 8) as usize) {
            *b |= 1 << (i % 8);
        }
    }

    /// Adds every chunk of `other` (bytes beyond this set's end are ignored; a bitmap from a
    /// peer is checked to fit the file before it gets here).
    pub fn union_with(&mut self, other: &Bitmap) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// Number of chunks in the set.
    pub fn count_ones(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }

    /// Chunks in the set, below `count`.
    pub fn iter(&self, count: u32) -> impl Iterator<Item = u32> + '_ {
        (0..count).filter(|&i| self.get(i))
    }

    fn fits(&self, count: u32) -> bool {
        self.0.len() == count.div_ceil(8) as usize
            && (count.is_multiple_of(8) || self.0.last().is_none_or(|b| b >> (count % 8) == 0))
    }
}

/// "What do you hold of this file?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveRequest {
    /// The file.
    pub etag: Etag,
    /// Its size (with the ETag, fixes the chunk layout).
    pub size: u64,
    /// Chunks whose records the asker already has: send only availability for those.
    pub known: Bitmap,
    /// The asker is downloading this file: a node downloading it too counts the asker among
    /// the file's owners from now on, before its own next round of questions.
    pub downloading: bool,
    /// The asker has just landed a chunk from the Hub near the end of the file: a node
    /// downloading the file asks it back now rather than at its next round, so the last
    /// chunks spread without waiting up to a round. A false one costs one question.
    pub news: bool,
}

/// A signed statement that chunk `index` of a file hashes to `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The chunk.
    pub index: u32,
    /// Its [`ChunkHash`].
    pub hash: ChunkHash,
    /// Index into the response's `signers`.
    pub signer: u16,
    /// Signature over [`record_signing_bytes`].
    pub signature: Vec<u8>,
}

/// The answer to a [`HaveRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveResponse {
    /// Chunks held and verified (empty when the file is unknown).
    pub have: Bitmap,
    /// Public keys (libp2p protobuf encoding) of the nodes that signed the records below.
    pub signers: Vec<Vec<u8>>,
    /// Records for held chunks the asker did not list as known.
    pub records: Vec<ChunkRecord>,
    /// Whether the answering node is downloading this file itself (so it takes a share of the
    /// chunks nobody holds yet).
    pub downloading: bool,
    /// Chunks it is fetching from the Hub right now: the asker waits for them rather than
    /// fetching them too.
    pub fetching: Bitmap,
    /// Bytes it has received from the Hub for this file in its current download, chunks in
    /// flight included (0 when not downloading it). It only grows: an owner whose count does
    /// not grow while it owes chunks is stalled.
    pub hub_bytes: u64,
    /// Chunks that have left the Hub as far as it knows (held by it, by its peers, or said to
    /// be by theirs; empty when it is not downloading the file). A hint that slides the
    /// swarm-wide Hub window past them: a false one can only make the asker use more of its
    /// own Hub connections, never fewer, and never makes it take a chunk from anyone.
    pub landed: Bitmap,
}

impl HaveRequest {
    /// Checks the request against the chunk rule.
    pub fn validate(&self) -> Result<u32, WireError> {
        let count = chunk_count(self.size)?;
        if !self.known.fits(count) {
            return Err(WireError::Invalid(format!("known bitmap does not fit {count} chunks")));
        }
        Ok(count)
    }
}

impl HaveResponse {
    /// A response saying "nothing".
    pub fn none() -> Self {
        Self {
            have: Bitmap::default(),
            signers: Vec::new(),
            records: Vec::new(),
            downloading: false,
            fetching: Bitmap::default(),
            hub_bytes: 0,
            landed: Bitmap::default(),
        }
    }

    /// Checks the response against the request it answers: bitmap size, record indices (held,
    /// unique, in range), signer references and field lengths. Signatures are checked by the
    /// caller, which owns the crypto.
    pub fn validate(&self, req: &HaveRequest) -> Result<(), WireError> {
        let count = req.validate()?;
        if !self.fetching.0.is_empty() && !self.fetching.fits(count) {
            return Err(WireError::Invalid(format!("fetching bitmap does not fit {count} chunks")));
        }
        if !self.landed.0.is_empty() && !self.landed.fits(count) {
            return Err(WireError::Invalid(format!("landed bitmap does not fit {count} chunks")));
        }
        if self.have.0.is_empty() && self.records.is_empty() {
            return Ok(());
        }
        if !self.have.fits(count) {
            return Err(WireError::Invalid(format!("have bitmap does not fit {count} chunks")));
        }
        if self.signers.len() > MAX_SIGNERS || self.signers.iter().any(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
            return Err(WireError::Invalid("bad signer list".into()));
        }
        let mut seen = Bitmap::new(count);
        for r in &self.records {
            if r.index >= count || !self.have.get(r.index) || seen.get(r.index) {
                return Err(WireError::Invalid(format!(
                    "record for chunk {} not held, repeated or out of range",
                    r.index
                )));
            }
            seen.set(r.index);
            if usize::from(r.signer) >= self.signers.len() || r.signature.is_empty() || r.signature.len() > MAX_SIG_LEN
            {
                return Err(WireError::Invalid(format!("bad signature fields for chunk {}", r.index)));
            }
        }
        Ok(())
    }
}

/// "Send me chunk `index` of this file."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The file.
    pub etag: Etag,
    /// Its size.
    pub size: u64,
    /// The chunk.
    pub index: u32,
}

impl ChunkRequest {
    /// The chunk's length, if the request is consistent with the chunk rule.
    pub fn chunk_len(&self) -> Result<u64, WireError> {
        chunk_count(self.size)?;
        let r = ChunkLayout::for_len(self.size)
            .range(self.index)
            .ok_or_else(|| WireError::Invalid(format!("chunk {} out of range", self.index)))?;
        Ok(r.end - r.start)
    }
}

/// The answer to a [`ChunkRequest`]; `Data` is followed on the stream by exactly `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkHeader {
    /// The bytes follow.
    Data {
        /// How many (the chunk's length).
        len: u64,
    },
    /// Not held (any more), or not verified.
    NotHeld,
    /// Too many requests in flight here: ask someone else or later.
    Busy,
}

/// The answer to a bad-chunk report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// Whether the holder hashed the chunk again (reports are rate-limited).
    pub rechecked: bool,
}

/// A preheat: download a repo now, as `get` would, with the receiving node's own Hub and
/// token. No token crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreheatJob {
    /// Chosen by the node that asked; the same on every node.
    pub id: u64,
    /// model, dataset or space.
    pub repo_type: String,
    /// The repo id.
    pub repo_id: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Include patterns (none: all files).
    pub include: Vec<String>,
    /// Exclude patterns.
    pub exclude: Vec<String>,
}

impl PreheatJob {
    /// Checks sizes and counts (names are checked again where they are used).
    pub fn validate(&self) -> Result<(), WireError> {
        let long = |s: &String| s.len() > MAX_PREHEAT_FIELD || s.chars().any(char::is_control);
        if [&self.repo_type, &self.repo_id, &self.revision].into_iter().any(long) {
            return Err(WireError::Invalid(
                "a preheat names a repo or revision that is too long or not printable".into(),
            ));
        }
        for patterns in [&self.include, &self.exclude] {
            if patterns.len() > MAX_PREHEAT_PATTERNS || patterns.iter().any(long) {
                return Err(WireError::Invalid(format!(
                    "a preheat carries more than {MAX_PREHEAT_PATTERNS} patterns, or one too long"
                )));
            }
        }
        Ok(())
    }
}

/// A preheat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreheatRequest {
    /// Start this download.
    Start(PreheatJob),
    /// How far is the preheat with this id?
    Progress {
        /// [`PreheatJob::id`].
        id: u64,
    },
    /// Every node's part in the preheat with this id (asked of the node that started it).
    Nodes {
        /// [`PreheatJob::id`].
        id: u64,
    },
}

/// Where a node's preheat stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreheatState {
    /// Downloading.
    Running,
    /// Every selected file is in its cache.
    Done,
    /// It failed, and why.
    Failed(String),
}

/// A node's progress on one preheat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreheatProgress {
    /// Running, done or failed.
    pub state: PreheatState,
    /// Files complete, of those selected.
    pub files: (u64, u64),
    /// Bytes present, of those to fetch.
    pub bytes: (u64, u64),
}

/// The answer to a [`PreheatRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreheatReply {
    /// The download started (or runs already).
    Accepted,
    /// Not here, and why.
    Refused(String),
    /// The progress asked for.
    Progress(PreheatProgress),
    /// Every node's part, by peer id (a node that refused or went silent: `Failed`).
    Nodes(Vec<(String, PreheatProgress)>),
    /// No preheat with that id here.
    Unknown,
}

/// "Which commit is this revision, and what files does it hold?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRequest {
    /// model, dataset or space.
    pub repo_type: String,
    /// The repo id.
    pub repo_id: String,
    /// Branch, tag or commit.
    pub revision: String,
}

/// One file of a listing: what the cache's `trees/<commit>.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Path in the repo.
    pub path: String,
    /// Size.
    pub size: u64,
    /// Hub ETag.
    pub etag: Etag,
    /// git blob id.
    pub blob_id: String,
    /// LFS sha256 and size, for LFS files.
    pub lfs: Option<(String, u64)>,
}

/// A revision's commit and files, as the signer got them from the Hub, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The commit the revision pointed to.
    pub commit: String,
    /// How long ago the signer learnt that from the Hub, seconds (0 for a commit revision,
    /// which never moves).
    pub age_secs: u64,
    /// Its files.
    pub files: Vec<MetaFile>,
    /// The signer's public key (libp2p protobuf encoding).
    pub signer: Vec<u8>,
    /// Signature over [`listing_signing_bytes`].
    pub signature: Vec<u8>,
}

/// The answer to a [`MetaRequest`]: `None` when the peer does not know the revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResponse {
    /// The listing.
    pub listing: Option<Listing>,
}

impl Listing {
    /// Checks field shapes (the caller checks the signature and the paths' safety).
    pub fn validate(&self) -> Result<(), WireError> {
        if !crate::repo::is_commit(&self.commit) || self.commit.len() != 40 {
            return Err(WireError::Invalid("listing commit is not a full commit id".into()));
        }
        if self.files.len() > MAX_LISTING_FILES || self.signer.is_empty() || self.signer.len() > MAX_KEY_LEN {
            return Err(WireError::Invalid("listing too large or unsigned".into()));
        }
        if self.signature.is_empty() || self.signature.len() > MAX_SIG_LEN {
            return Err(WireError::Invalid("bad listing signature field".into()));
        }
        for f in &self.files {
            crate::repo::check_repo_path(&f.path).map_err(|e| WireError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// The bytes a node signs to vouch for a listing: a domain tag, the request, the commit, its age and
/// every file's path, size, ETag, blob id and LFS fields, length-prefixed.
pub fn listing_signing_bytes(req: &MetaRequest, commit: &str, age_secs: u64, files: &[MetaFile]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut out = b"swarm-dl listing v1\0".to_vec();
    for s in [&req.repo_type, &req.repo_id, &req.revision] {
        field(&mut out, s.as_bytes());
    }
    field(&mut out, commit.as_bytes());
    out.extend_from_slice(&age_secs.to_be_bytes());
    out.extend_from_slice(&(files.len() as u64).to_be_bytes());
    for f in files {
        field(&mut out, f.path.as_bytes());
        out.extend_from_slice(&f.size.to_be_bytes());
        field(&mut out, f.etag.as_str().as_bytes());
        field(&mut out, f.blob_id.as_bytes());
        match &f.lfs {
            Some((sha, size)) => {
                out.push(1);
                field(&mut out, sha.as_bytes());
                out.extend_from_slice(&size.to_be_bytes());
            }
            None => out.push(0),
        }
    }
    out
}

fn chunk_count(size: u64) -> Result<u32, WireError> {
    let count = ChunkLayout::for_len(size).count();
    if count > MAX_CHUNKS {
        return Err(WireError::Invalid(format!("file of {size} bytes has more than {MAX_CHUNKS} chunks")));
    }
    Ok(count)
}

/// The bytes a node signs to vouch for a chunk hash: a domain tag, then the file's ETag and size,
/// the chunk index and its hash. Fixed layout, independent of bincode.
pub fn record_signing_bytes(etag: &Etag, size: u64, index: u32, hash: &ChunkHash) -> Vec<u8> {
    const TAG: &[u8] = b"swarm-dl chunk record v2\0";
    let mut out = Vec::with_capacity(TAG.len() + 64 + 1 + 8 + 4 + 32);
    out.extend_from_slice(TAG);
    out.extend_from_slice(etag.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&hash.0);
    out
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a message body as a frame: `u32` big-endian length, then the bincode body.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own plain types into a Vec cannot fail.
    let body = bincode::serde::encode_to_vec(msg, config()).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads a frame's length prefix, refusing lengths over `limit`.
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame body of at most `limit` bytes. The whole body must be consumed.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, WireError> {
    if body.len() > limit {
        return Err(WireError::TooLarge { len: body.len(), limit });
    }
    // The limit bounds what any length prefix inside the body may make bincode allocate.
    let cfg = config().with_limit::<{ MAX_META_RESPONSE }>();
    let (msg, used) = bincode::serde::decode_from_slice(body, cfg).map_err(|e| WireError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Decode(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(msg)
}

/// Decodes a whole frame (prefix + body) from a slice: for tests and fuzzing.
pub fn decode_frame<T: serde::de::DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, WireError> {
    let prefix: [u8; 4] =
        frame.get(..4).and_then(|p| p.try_into().ok()).ok_or_else(|| WireError::Decode("short frame".into()))?;
    let len = frame_len(prefix, limit)?;
    let body = frame.get(4..).unwrap_or_default();
    if body.len() != len {
        return Err(WireError::Decode(format!("frame says {len} bytes, has {}", body.len())));
    }
    decode_body(body, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::lfs_sha256;
    use proptest::prelude::*;

    fn etag() -> Etag {
        lfs_sha256(b"file")
    }

    #[test]
    fn golden_chunk_request_bytes() {
        let req = ChunkRequest { etag: Etag::parse(&"ab".repeat(32)).expect("etag"), size: 300, index: 2 };
        let frame = encode_frame(&req);
        // length 69 (u32 BE) | string len 64 | 64 ascii hex | size 300 (varint 251+u16) | index 2
        let mut want = vec![0, 0, 0, 69, 64];
        want.extend_from_slice("ab".repeat(32).as_bytes());
        want.extend_from_slice(&[251, 44, 1, 2]);
        assert_eq!(frame, want);
        assert_eq!(decode_frame::<ChunkRequest>(&frame, MAX_CHUNK_FRAME).expect("decode"), req);
    }

    #[test]
    fn golden_signing_bytes() {
        let b = record_signing_bytes(&etag(), 5, 1, &ChunkHash([7; 32]));
        assert!(b.starts_with(b"swarm-dl chunk record v2\0"));
        assert_eq!(b.len(), 25 + 64 + 1 + 8 + 4 + 32);
        assert_eq!(&b[b.len() - 44..b.len() - 32], &[0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1]);
    }

    #[test]
    fn oversize_frames_are_refused_before_reading() {
        assert!(matches!(frame_len([0, 0, 4, 1], MAX_CHUNK_FRAME), Err(WireError::TooLarge { .. })));
        // A body whose inner length prefix claims 2^40 bytes must fail, not allocate.
        let mut body = vec![253];
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_body::<HaveResponse>(&body, MAX_HAVE_RESPONSE).is_err());
    }

    #[test]
    fn response_validation_catches_inconsistencies() {
        let req = HaveRequest { etag: etag(), size: 9 << 20, known: Bitmap::new(3), downloading: true, news: false };
        let mut have = Bitmap::new(3);
        have.set(0);
        let rec = |index, signer| ChunkRecord { index, hash: ChunkHash([1; 32]), signer, signature: vec![1; 64] };
        let ok = HaveResponse {
            have: have.clone(),
            signers: vec![vec![1; 36]],
            records: vec![rec(0, 0)],
            downloading: true,
            fetching: Bitmap::new(3),
            hub_bytes: 5 << 20,
            landed: have.clone(),
        };
        ok.validate(&req).expect("valid");
        let not_held = HaveResponse { records: vec![rec(1, 0)], ..ok.clone() };
        assert!(not_held.validate(&req).is_err());
        let bad_signer = HaveResponse { records: vec![rec(0, 1)], ..ok.clone() };
        assert!(bad_signer.validate(&req).is_err());
        let twice = HaveResponse { records: vec![rec(0, 0), rec(0, 0)], ..ok.clone() };
        assert!(twice.validate(&req).is_err());
        let landed_wide = HaveResponse { landed: Bitmap::new(9), ..ok.clone() };
        assert!(landed_wide.validate(&req).is_err());
        let mut wide = Bitmap::new(3);
        wide.0[0] = 0b1000;
        assert!(HaveResponse { have: wide, ..ok }.validate(&req).is_err());
    }

    fn arb_etag() -> impl Strategy<Value = Etag> {
        prop::array::uniform32(any::<u8>()).prop_map(|b| Etag::parse(&hex::encode(b)).expect("etag"))
    }

    proptest! {
        #[test]
        fn requests_round_trip(etag in arb_etag(), size in 0u64..(1 << 40), index in any::<u32>(), downloading in any::<bool>(), news in any::<bool>()) {
            let req = ChunkRequest { etag: etag.clone(), size, index };
            prop_assert_eq!(decode_frame::<ChunkRequest>(&encode_frame(&req), MAX_CHUNK_FRAME)?, req);
            let have = HaveRequest { etag, size, known: Bitmap(vec![index as u8]), downloading, news };
            prop_assert_eq!(decode_frame::<HaveRequest>(&encode_frame(&have), MAX_HAVE_REQUEST)?, have);
        }

        #[test]
        fn responses_round_trip(bits in prop::collection::vec(any::<u8>(), 0..64), recs in 0usize..20) {
            let resp = HaveResponse {
                have: Bitmap(bits),
                signers: vec![vec![9; 36]],
                records: (0..recs as u32).map(|i| ChunkRecord { index: i, hash: ChunkHash([i as u8; 32]), signer: 0, signature: vec![3; 64] }).collect(),
                downloading: recs % 2 == 0,
                fetching: Bitmap(vec![recs as u8]),
                hub_bytes: (recs as u64) << 22,
                landed: Bitmap(vec![!(recs as u8)]),
            };
            prop_assert_eq!(decode_frame::<HaveResponse>(&encode_frame(&resp), MAX_HAVE_RESPONSE)?, resp);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<HaveRequest>(&bytes, MAX_HAVE_REQUEST);
            let _ = decode_frame::<HaveResponse>(&bytes, MAX_HAVE_RESPONSE);
            let _ = decode_frame::<ChunkRequest>(&bytes, MAX_CHUNK_FRAME);
            let _ = decode_frame::<ChunkHeader>(&bytes, MAX_CHUNK_FRAME);
            if let Ok(r) = decode_body::<HaveRequest>(&bytes, MAX_HAVE_REQUEST) { let _ = r.validate(); }
            if let Ok(MetaResponse { listing: Some(l) }) = decode_body::<MetaResponse>(&bytes, MAX_META_RESPONSE) { let _ = l.validate(); }
            let _ = decode_frame::<MetaRequest>(&bytes, MAX_META_REQUEST);
        }

        #[test]
        fn bitmap_set_get(count in 1u32..5000, picks in prop::collection::vec(any::<u32>(), 0..50)) {
            let mut b = Bitmap::new(count);
            for p in &picks { b.set(p % count); }
            for p in &picks { prop_assert!(b.get(p % count)); }
            prop_assert!(b.fits(count));
            prop_assert!(!b.get(count));
        }

        #[test]
        fn a_full_bitmap_holds_every_chunk_and_fits(count in 0u32..5000) {
            let mut one_by_one = Bitmap::new(count);
            (0..count).for_each(|i| one_by_one.set(i));
            let full = Bitmap::full(count);
            prop_assert_eq!(&full, &one_by_one);
            prop_assert!(full.fits(count));
            prop_assert_eq!(full.count_ones(), count);
        }
    }
}
