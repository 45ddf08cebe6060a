//! `/swarm-dl/meta/1`: a revision's commit and file listing, from a peer's cache, signed.
//!
//! The Hub is the root of trust for metadata; a listing from a peer is only as good as the
//! peer that signed it. It is used where the Hub cannot be asked (offline runs, said so), and
//! in a private swarm, whose members trust each other, so that the Hub sees about one metadata
//! request per repo and revision per swarm rather than one per node.

use crate::cache::HubCache;
use crate::hub::{RemoteFile, RepoRef};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use std::path::Path;
use swarm_protocol::repo::{RepoId, RepoType, is_commit};
use swarm_protocol::wire::{Listing, MetaFile, MetaRequest, MetaResponse, listing_signing_bytes};

/// Answers from the cache at `cache_root`: the revision's commit (a ref, or the commit itself)
/// and its recorded listing, signed with `key`. An open swarm (`open`) gets listings of repos
/// known to be public only. Blocking.
pub fn answer(cache_root: &Path, open: bool, key: &Keypair, req: &MetaRequest) -> MetaResponse {
    let none = MetaResponse { listing: None };
    let (Ok(ty), Ok(id)) = (req.repo_type.parse::<RepoType>(), RepoId::parse(&req.repo_id)) else {
        return none;
    };
    if swarm_protocol::repo::check_revision(&req.revision).is_err() {
        return none;
    }
    let cache = HubCache::new(cache_root.to_path_buf());
    if open && !cache.folder_is_public(&id.folder_name(ty)) {
        return none;
    }
    let rc = cache.repo(&RepoRef { id, ty });
    let (commit, age_secs) = if is_commit(&req.revision) && req.revision.len() == 40 {
        (Some(req.revision.clone()), 0)
    } else {
        let age = std::fs::metadata(rc.ref_path(&req.revision))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(u64::MAX, |d| d.as_secs());
        (rc.read_ref(&req.revision), age)
    };
    let Some(commit) = commit else { return none };
    let Some(files) = rc.read_tree(&commit) else { return none };
    let files: Vec<MetaFile> = files
        .into_iter()
        .map(|f| MetaFile { path: f.path, size: f.size, etag: f.etag, blob_id: f.blob_id, lfs: f.lfs })
        .collect();
    let signature = key.sign(&listing_signing_bytes(req, &commit, age_secs, &files)).unwrap_or_default();
    MetaResponse {
        listing: Some(Listing { commit, age_secs, files, signer: key.public().encode_protobuf(), signature }),
    }
}

/// A verified listing: who signed it, the commit, the files.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signer.
    pub signer: PeerId,
    /// The commit.
    pub commit: String,
    /// How long ago the signer resolved the revision, seconds.
    pub age_secs: u64,
    /// The files.
    pub files: Vec<RemoteFile>,
}

/// Checks a response's shape and signature. `Ok(None)` when the peer does not know the revision.
pub fn verify(req: &MetaRequest, resp: MetaResponse) -> Result<Option<Verified>, String> {
    let Some(l) = resp.listing else { return Ok(None) };
    l.validate().map_err(|e| e.to_string())?;
    let key = PublicKey::try_decode_protobuf(&l.signer).map_err(|e| format!("bad signer key: {e}"))?;
    if !key.verify(&listing_signing_bytes(req, &l.commit, l.age_secs, &l.files), &l.signature) {
        return Err("bad signature on the listing".into());
    }
    let files = l
        .files
        .into_iter()
        .map(|f| RemoteFile {
            path: f.path,
            size: f.size,
            etag: f.etag,
            blob_id: f.blob_id,
            lfs: f.lfs,
            xet_hash: None,
        })
        .collect();
    Ok(Some(Verified { signer: key.to_peer_id(), commit: l.commit, age_secs: l.age_secs, files }))
}
