//! `swarm-dl cache ls | verify | clean`: reports over a hub cache directory.
//!
//! Reads the layout `huggingface_hub` reads (`scan_cache_dir`), counts unique blobs for sizes,
//! and lists `.incomplete` files. `clean` removes a partial download only when it can take the
//! blob's lock, i.e. when no running process (ours or Python's) is writing it.

use super::{BlobLock, CHUNK_STATE_SUFFIX, HubCache, INCOMPLETE_SUFFIX};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use swarm_protocol::hash::Etag;
use swarm_protocol::repo::{RepoId, RepoType};

/// One repo in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct RepoReport {
    /// Repo type.
    pub repo_type: RepoType,
    /// Repo id.
    pub repo_id: String,
    /// Its folder.
    pub path: PathBuf,
    /// Bytes of unique blobs referenced by its snapshots.
    pub size_on_disk: u64,
    /// Snapshots.
    pub revisions: Vec<RevisionReport>,
    /// Partial downloads in `blobs/`.
    pub incomplete: Vec<IncompleteReport>,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionReport {
    /// Commit id.
    pub commit: String,
    /// Refs pointing at it.
    pub refs: Vec<String>,
    /// Files in the snapshot.
    pub files: usize,
    /// Their total size.
    pub size: u64,
}

/// A partial download.
#[derive(Debug, Clone, Serialize)]
pub struct IncompleteReport {
    /// The `.incomplete` file.
    pub path: PathBuf,
    /// Its ETag, when the name carries one.
    pub etag: Option<String>,
    /// Bytes verified so far, per its chunk state (0 without one).
    pub verified_bytes: u64,
    /// File size.
    pub size: u64,
}

fn repo_dirs(root: &Path) -> io::Result<Vec<(RepoType, RepoId, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((ty, id)) = RepoId::from_folder_name(&name)
            && e.file_type()?.is_dir()
        {
            out.push((ty, id, e.path()));
        }
    }
    out.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    Ok(out)
}

/// Lists the repos of a cache.
pub fn list(root: &Path) -> io::Result<Vec<RepoReport>> {
    let mut out = Vec::new();
    for (ty, id, dir) in repo_dirs(root)? {
        let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let refs_dir = dir.join("refs");
        for e in walkdir::WalkDir::new(&refs_dir).into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file())
        {
            if let (Ok(commit), Ok(rel)) = (fs::read_to_string(e.path()), e.path().strip_prefix(&refs_dir)) {
                refs.entry(commit).or_default().push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        let mut revisions = Vec::new();
        let mut blobs = BTreeSet::new();
        let mut size_on_disk = 0;
        if let Ok(rd) = fs::read_dir(dir.join("snapshots")) {
            for snap in rd.filter_map(Result::ok) {
                let commit = snap.file_name().to_string_lossy().into_owned();
                let (mut files, mut size) = (0, 0);
                for f in walkdir::WalkDir::new(snap.path()).into_iter().filter_map(Result::ok) {
                    if f.file_type().is_dir() {
                        continue;
                    }
                    let Ok(meta) = fs::metadata(f.path()) else {
                        continue;
                    };
                    files += 1;
                    size += meta.len();
                    let target = fs::canonicalize(f.path()).unwrap_or_else(|_| f.path().to_path_buf());
                    if blobs.insert(target) {
                        size_on_disk += meta.len();
                    }
                }
                revisions.push(RevisionReport { refs: refs.remove(&commit).unwrap_or_default(), commit, files, size });
            }
        }
        revisions.sort_by(|a, b| a.commit.cmp(&b.commit));
        let incomplete = incomplete_files(&dir)?;
        out.push(RepoReport { repo_type: ty, repo_id: id.to_string(), path: dir, size_on_disk, revisions, incomplete });
    }
    Ok(out)
}

/// The ETag in a partial file's name: ours (`<etag>.incomplete`) and Python's
/// (`<etag>.<uuid8>.incomplete`).
fn etag_of_incomplete(name: &str) -> Option<Etag> {
    let stem = name.strip_suffix(INCOMPLETE_SUFFIX)?;
    Etag::parse(stem.split('.').next()?).ok()
}

fn incomplete_files(repo_dir: &Path) -> io::Result<Vec<IncompleteReport>> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(repo_dir.join("blobs")) else {
        return Ok(out);
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(INCOMPLETE_SUFFIX) {
            continue;
        }
        let etag = etag_of_incomplete(&name);
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        let verified_bytes = verified_bytes(
            &e.path().with_file_name(format!("{}{CHUNK_STATE_SUFFIX}", name.trim_end_matches(INCOMPLETE_SUFFIX))),
        );
        out.push(IncompleteReport { path: e.path(), etag: etag.map(|e| e.to_string()), verified_bytes, size });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Bytes of an incomplete file that its chunk state (at `state`) records as verified; 0 when
/// there is none or it cannot be read.
pub fn verified_bytes(state: &Path) -> u64 {
    fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<swarm_protocol::manifest::ChunkManifest>(&b).ok())
        .map(|m| {
            let layout = m.layout();
            (0..m.chunks.len() as u32)
                .filter(|i| m.chunks[*i as usize].is_some())
                .filter_map(|i| layout.range(i))
                .map(|r| r.end - r.start)
                .sum()
        })
        .unwrap_or(0)
}

/// Snapshot entries of the repo folder `dir` whose blob is gone (links that lead nowhere).
pub fn dangling(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir.join("snapshots"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|f| f.path_is_symlink() && fs::metadata(f.path()).is_err())
        .map(|f| f.path().to_path_buf())
        .collect()
}

/// Result of re-hashing one blob.
#[derive(Debug, Clone, Serialize)]
pub struct BlobCheck {
    /// Repo type.
    pub repo_type: RepoType,
    /// Repo id.
    pub repo_id: String,
    /// The blob.
    pub path: PathBuf,
    /// `ok`, `mismatch` or `unreadable`.
    pub status: &'static str,
    /// What it hashed to, on a mismatch; the error, when unreadable.
    pub detail: Option<String>,
}

/// Re-hashes every blob (of one repo, or all) against its name, and reports snapshot entries
/// whose blob is gone.
pub fn verify(root: &Path, only: Option<&str>) -> io::Result<Vec<BlobCheck>> {
    let mut out = Vec::new();
    for (repo_type, id, dir) in repo_dirs(root)? {
        if only.is_some_and(|o| o != id.as_str()) {
            continue;
        }
        let repo_id = id.to_string();
        if let Ok(rd) = fs::read_dir(dir.join("blobs")) {
            let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(etag) = Etag::parse(&name) else {
                    continue;
                };
                let check = match hash_file(&e.path(), &etag) {
                    Ok(got) if got == etag.as_str() => {
                        BlobCheck { repo_type, repo_id: repo_id.clone(), path: e.path(), status: "ok", detail: None }
                    }
                    Ok(got) => BlobCheck {
                        repo_type,
                        repo_id: repo_id.clone(),
                        path: e.path(),
                        status: "mismatch",
                        detail: Some(got),
                    },
                    Err(err) => BlobCheck {
                        repo_type,
                        repo_id: repo_id.clone(),
                        path: e.path(),
                        status: "unreadable",
                        detail: Some(err.to_string()),
                    },
                };
                out.push(check);
            }
        }
        for path in dangling(&dir) {
            out.push(BlobCheck {
                repo_type,
                repo_id: repo_id.clone(),
                path,
                status: "missing",
                detail: Some("snapshot entry points at a missing blob".into()),
            });
        }
    }
    Ok(out)
}

/// Hashes a file the way its ETag says (sha256, or git blob sha1).
pub fn hash_file(path: &Path, etag: &Etag) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = etag.hasher(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish_hex())
}

/// One partial download considered by `clean`.
#[derive(Debug, Clone, Serialize)]
pub struct CleanItem {
    /// What it is.
    pub kind: CleanKind,
    /// The `.incomplete` file, or the manifest.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Removed (or would be, with `--dry-run`).
    pub removed: bool,
    /// Skipped because a running process holds its lock.
    pub in_use: bool,
}

/// What [`clean`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanKind {
    /// A partial download (with its chunk state).
    Incomplete,
    /// The saved chunk manifest of a blob that is no longer in the cache.
    Manifest,
    /// A blob moved aside because its bytes no longer matched its name.
    Corrupt,
}

/// Removes partial downloads (and their chunk state) that no running process holds, and the
/// chunk manifests of blobs that are gone (deleted by hand or by another tool).
pub fn clean(root: &Path, dry_run: bool) -> io::Result<Vec<CleanItem>> {
    let mut out = Vec::new();
    for (ty, id, dir) in repo_dirs(root)? {
        let locks = root.join(".locks").join(id.folder_name(ty));
        for inc in incomplete_files(&dir)? {
            let lock = match &inc.etag {
                Some(etag) => BlobLock::try_acquire(&locks.join(format!("{etag}.lock")))?,
                None => None,
            };
            let free = lock.is_some();
            if free && !dry_run {
                fs::remove_file(&inc.path)?;
                let name = inc.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let state = inc
                    .path
                    .with_file_name(format!("{}{CHUNK_STATE_SUFFIX}", name.trim_end_matches(INCOMPLETE_SUFFIX)));
                let _ = fs::remove_file(state);
            }
            drop(lock);
            out.push(CleanItem {
                kind: CleanKind::Incomplete,
                path: inc.path,
                bytes: inc.size,
                removed: free,
                in_use: !free,
            });
        }
    }
    let mut blobs = BTreeSet::new();
    for (_, _, dir) in repo_dirs(root)? {
        if let Ok(entries) = fs::read_dir(dir.join("blobs")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(crate::cache::CORRUPT_SUFFIX) {
                    let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if !dry_run {
                        fs::remove_file(e.path())?;
                    }
                    out.push(CleanItem {
                        kind: CleanKind::Corrupt,
                        path: e.path(),
                        bytes,
                        removed: true,
                        in_use: false,
                    });
                } else {
                    blobs.insert(name);
                }
            }
        }
    }
    let manifests = HubCache::new(root).swarm_dir().join("manifests");
    if let Ok(entries) = fs::read_dir(&manifests) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(etag) = name.strip_suffix(".json") else { continue };
            if blobs.contains(etag) {
                continue;
            }
            let bytes = e.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(e.path())?;
            }
            out.push(CleanItem { kind: CleanKind::Manifest, path: e.path(), bytes, removed: true, in_use: false });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_names_of_both_writers() {
        let e = "a".repeat(64);
        assert_eq!(etag_of_incomplete(&format!("{e}.incomplete")).map(|x| x.to_string()), Some(e.clone()));
        assert_eq!(etag_of_incomplete(&format!("{e}.1a2b3c4d.incomplete")).map(|x| x.to_string()), Some(e));
        assert_eq!(etag_of_incomplete("junk.incomplete"), None);
    }
}
