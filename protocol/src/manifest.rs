//! The chunk manifest: per file, the hash of every chunk ([`ChunkHash`], BLAKE3).
//!
//! The Hub publishes no per-chunk hashes, so a manifest is written by the node that fetched the
//! bytes from the Hub. Today it is the resume state of a download (a chunk counts as held only if
//! its bytes on disk still hash to the recorded value); the swarm ships it to peers, signed.

use crate::chunk::ChunkLayout;
use crate::hash::{ChunkHash, Etag};
use serde::{Deserialize, Serialize};

/// Per-file chunk hashes. `chunks[i]` is `None` until chunk `i` has been fetched and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkManifest {
    /// Version of the rules the manifest was cut with ([`crate::PROTOCOL_VERSION`]).
    pub version: u32,
    /// The file's Hub ETag.
    pub etag: Etag,
    /// File length in bytes.
    pub size: u64,
    /// Chunk size in bytes ([`crate::chunk::chunk_size_for`] of `size`).
    pub chunk_size: u64,
    /// Hash of each chunk, once known.
    pub chunks: Vec<Option<ChunkHash>>,
}

/// Why a manifest cannot describe the file it claims to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Written under other rules (another protocol version or chunk-size rule).
    #[error("manifest was cut with other rules (version {version}, chunk size {chunk_size})")]
    OtherRules {
        /// The manifest's version.
        version: u32,
        /// The manifest's chunk size.
        chunk_size: u64,
    },
    /// The chunk list does not match the file's chunk count.
    #[error("manifest lists {got} chunks, the file has {want}")]
    WrongCount {
        /// Listed.
        got: usize,
        /// Expected.
        want: u32,
    },
    /// It describes another file.
    #[error("manifest is for {0}, not for this file")]
    OtherFile(String),
}

impl ChunkManifest {
    /// An empty manifest (no chunk known) for a file.
    pub fn empty(etag: Etag, size: u64) -> Self {
        let layout = ChunkLayout::for_len(size);
        Self {
            version: crate::PROTOCOL_VERSION,
            etag,
            size,
            chunk_size: layout.chunk_size,
            chunks: vec![None; layout.count() as usize],
        }
    }

    /// The layout this manifest describes.
    pub fn layout(&self) -> ChunkLayout {
        ChunkLayout { len: self.size, chunk_size: self.chunk_size }
    }

    /// Checks that the manifest follows this version's rules for the file `(etag, size)`.
    /// A manifest from disk or from a peer must pass this before any field is used.
    pub fn validate_for(&self, etag: &Etag, size: u64) -> Result<(), ManifestError> {
        if &self.etag != etag || self.size != size {
            return Err(ManifestError::OtherFile(format!("{} ({} bytes)", self.etag, self.size)));
        }
        let want = ChunkLayout::for_len(size);
        if self.version != crate::PROTOCOL_VERSION || self.chunk_size != want.chunk_size {
            return Err(ManifestError::OtherRules { version: self.version, chunk_size: self.chunk_size });
        }
        if self.chunks.len() != want.count() as usize {
            return Err(ManifestError::WrongCount { got: self.chunks.len(), want: want.count() });
        }
        Ok(())
    }

    /// Number of chunks whose hash is known.
    pub fn known(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etag() -> Etag {
        crate::hash::lfs_sha256(b"x")
    }

    #[test]
    fn fresh_manifest_validates_and_round_trips() {
        let mut m = ChunkManifest::empty(etag(), 10 << 20);
        assert_eq!(m.chunks.len(), 3);
        m.chunks[1] = Some(ChunkHash::of(b"chunk"));
        m.validate_for(&etag(), 10 << 20).expect("valid");
        let json = serde_json::to_string(&m).expect("encode");
        let back: ChunkManifest = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, m);
        assert_eq!(back.known(), 1);
    }

    #[test]
    fn manifests_for_other_files_or_rules_are_refused() {
        let m = ChunkManifest::empty(etag(), 10 << 20);
        assert!(matches!(m.validate_for(&etag(), 11 << 20), Err(ManifestError::OtherFile(_))));
        let mut bad = m.clone();
        bad.chunk_size = 1 << 20;
        assert!(matches!(bad.validate_for(&etag(), 10 << 20), Err(ManifestError::OtherRules { .. })));
        let mut short = m;
        short.chunks.pop();
        assert!(matches!(short.validate_for(&etag(), 10 << 20), Err(ManifestError::WrongCount { .. })));
    }
}
