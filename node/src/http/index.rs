//! What `hub serve` serves: an index of repos, revisions and files, built from a Hugging Face
//! cache directory or from a plain folder `DIR/[datasets/|spaces/]<org>/<name>/<files>`.
//!
//! For a plain folder the hashes are computed once and remembered in `DIR/.swarm-dl/hashes.json`
//! (keyed by path, size and mtime); the commit id is the sha1 of the sorted `(path, etag)` list,
//! so it is stable for unchanged content. Which files are LFS follows the Hub's default
//! `.gitattributes` (model/data extensions) plus everything over 10 MiB.

use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use swarm_protocol::hash::{Etag, git_blob_sha1};
use swarm_protocol::repo::{RepoId, RepoType, check_repo_path, is_commit};

/// A file at a commit.
#[derive(Debug, Clone)]
pub struct IndexedFile {
    /// Size in bytes.
    pub size: u64,
    /// git blob id (of the LFS pointer, for LFS files).
    pub blob_id: String,
    /// sha256, for LFS files.
    pub lfs_sha256: Option<String>,
    /// Where the bytes are.
    pub source: PathBuf,
}

impl IndexedFile {
    /// The ETag clients see.
    pub fn etag(&self) -> &str {
        self.lfs_sha256.as_deref().unwrap_or(&self.blob_id)
    }

    /// Size of the LFS pointer file.
    pub fn pointer_size(&self) -> u64 {
        self.lfs_sha256.as_ref().map_or(0, |s| lfs_pointer(s, self.size).len() as u64)
    }
}

/// One repo: its refs and commits.
#[derive(Debug, Clone, Default)]
pub struct IndexedRepo {
    /// Repo id.
    pub id: String,
    /// Branches, tags and `refs/pr/N` → commit.
    pub refs: BTreeMap<String, String>,
    /// Commit → files by path.
    pub commits: BTreeMap<String, BTreeMap<String, IndexedFile>>,
}

impl IndexedRepo {
    /// A revision → its commit: a ref, a full commit, or a unique prefix (≥ 7 hex) of one.
    pub fn resolve(&self, rev: &str) -> Option<&str> {
        if let Some(c) = self.refs.get(rev) {
            return Some(c);
        }
        if is_commit(rev) {
            return self.commits.get_key_value(rev).map(|(k, _)| k.as_str());
        }
        if rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut m = self.commits.keys().filter(|c| c.starts_with(rev));
            if let (Some(one), None) = (m.next(), m.next()) {
                return Some(one);
            }
        }
        None
    }
}

/// Every repo served, and LFS blobs by sha256 for the data listener.
#[derive(Debug, Default)]
pub struct HubIndex {
    /// (type, id) → repo.
    pub repos: HashMap<(RepoType, String), IndexedRepo>,
    /// sha256 → (path, size).
    pub lfs_blobs: HashMap<String, (PathBuf, u64)>,
}

/// The LFS pointer file git stores for an LFS object.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

const LFS_SUFFIXES: &[&str] = &[
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gguf",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".tgz",
    ".wasm",
    ".xz",
    ".zip",
    ".zst",
];

/// Whether the Hub would store this file in LFS by default.
pub fn is_lfs(path: &str, size: u64) -> bool {
    size > 10 << 20 || LFS_SUFFIXES.iter().any(|s| path.ends_with(s)) || path.contains("tfevents")
}

impl HubIndex {
    /// Indexes `dir`: a hub cache if it looks like one (has `<type>s--…` folders), else a plain folder.
    pub fn build(dir: &Path) -> io::Result<Self> {
        let looks_like_cache = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .any(|e| RepoId::from_folder_name(&e.file_name().to_string_lossy()).is_some());
        let mut idx = Self::default();
        if looks_like_cache {
            idx.add_cache(dir)?
        } else {
            idx.add_plain(dir)?
        }
        Ok(idx)
    }

    fn insert_file(&mut self, f: &IndexedFile) {
        if let Some(sha) = &f.lfs_sha256 {
            self.lfs_blobs.insert(sha.clone(), (f.source.clone(), f.size));
        }
    }

    fn add_cache(&mut self, root: &Path) -> io::Result<()> {
        for e in fs::read_dir(root)?.filter_map(Result::ok) {
            let Some((ty, id)) = RepoId::from_folder_name(&e.file_name().to_string_lossy()) else { continue };
            let dir = e.path();
            let mut repo = IndexedRepo { id: id.to_string(), ..Default::default() };
            let refs_dir = dir.join("refs");
            for r in
                walkdir::WalkDir::new(&refs_dir).into_iter().filter_map(Result::ok).filter(|r| r.file_type().is_file())
            {
                let (Ok(commit), Ok(rel)) = (fs::read_to_string(r.path()), r.path().strip_prefix(&refs_dir)) else {
                    continue;
                };
                repo.refs.insert(rel.to_string_lossy().replace('\\', "/"), commit.trim().to_owned());
            }
            let Ok(snaps) = fs::read_dir(dir.join("snapshots")) else { continue };
            for snap in snaps.filter_map(Result::ok) {
                let commit = snap.file_name().to_string_lossy().into_owned();
                let mut files = BTreeMap::new();
                for f in walkdir::WalkDir::new(snap.path()).into_iter().filter_map(Result::ok) {
                    if f.file_type().is_dir() {
                        continue;
                    }
                    let Ok(rel) = f.path().strip_prefix(snap.path()) else { continue };
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let Ok(meta) = fs::metadata(f.path()) else { continue };
                    let etag = fs::read_link(f.path())
                        .ok()
                        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .and_then(|n| Etag::parse(&n).ok());
                    let source = fs::canonicalize(f.path())?;
                    let file = match etag {
                        Some(etag) if etag.as_str().len() == 64 => IndexedFile {
                            size: meta.len(),
                            blob_id: git_blob_sha1(lfs_pointer(etag.as_str(), meta.len()).as_bytes()).to_string(),
                            lfs_sha256: Some(etag.to_string()),
                            source,
                        },
                        Some(etag) => {
                            IndexedFile { size: meta.len(), blob_id: etag.to_string(), lfs_sha256: None, source }
                        }
                        None => hash_plain(&rel, &source, meta.len())?,
                    };
                    self.insert_file(&file);
                    files.insert(rel, file);
                }
                repo.commits.insert(commit, files);
            }
            self.repos.insert((ty, id.to_string()), repo);
        }
        Ok(())
    }

    fn add_plain(&mut self, root: &Path) -> io::Result<()> {
        let memo_path = root.join(".swarm-dl").join("hashes.json");
        let mut memo: HashMap<String, Memo> =
            fs::read(&memo_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mut changed = false;
        let mut found = Vec::new();
        for top in sorted_dirs(root)? {
            let name = top.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match name.as_str() {
                "datasets" | "spaces" => {
                    let ty = if name == "datasets" { RepoType::Dataset } else { RepoType::Space };
                    for org in sorted_dirs(&top)? {
                        for repo in sorted_dirs(&org)? {
                            found.push((ty, org.clone(), repo));
                        }
                    }
                }
                n if n.starts_with('.') => {}
                _ => {
                    for repo in sorted_dirs(&top)? {
                        found.push((RepoType::Model, top.clone(), repo));
                    }
                }
            }
        }
        for (ty, org, dir) in found {
            let id = format!(
                "{}/{}",
                org.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            );
            if RepoId::parse(&id).is_err() {
                tracing::warn!(dir = %dir.display(), "skipping folder whose name is not a valid repo id");
                continue;
            }
            let mut files = BTreeMap::new();
            let walker =
                walkdir::WalkDir::new(&dir).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git");
            for f in walker.filter_map(Result::ok) {
                if !f.file_type().is_file() {
                    continue;
                }
                let Ok(rel) = f.path().strip_prefix(&dir) else { continue };
                let rel = rel.to_string_lossy().replace('\\', "/");
                if check_repo_path(&rel).is_err() {
                    continue;
                }
                let meta = f.metadata().map_err(io::Error::other)?;
                let mtime =
                    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
                let key = f.path().strip_prefix(root).unwrap_or(f.path()).to_string_lossy().into_owned();
                let file = match memo.get(&key) {
                    Some(m) if m.size == meta.len() && m.mtime_ns == mtime => IndexedFile {
                        size: m.size,
                        blob_id: m.blob_id.clone(),
                        lfs_sha256: m.lfs_sha256.clone(),
                        source: f.path().to_path_buf(),
                    },
                    _ => {
                        let file = hash_plain(&rel, f.path(), meta.len())?;
                        memo.insert(
                            key,
                            Memo {
                                size: file.size,
                                mtime_ns: mtime,
                                blob_id: file.blob_id.clone(),
                                lfs_sha256: file.lfs_sha256.clone(),
                            },
                        );
                        changed = true;
                        file
                    }
                };
                self.insert_file(&file);
                files.insert(rel, file);
            }
            let mut h = sha1::Sha1::new();
            for (path, f) in &files {
                h.update(format!("{path}\0{}\n", f.etag()).as_bytes());
            }
            let commit = hex::encode(h.finalize());
            let mut repo = IndexedRepo { id: id.clone(), ..Default::default() };
            repo.refs.insert("main".into(), commit.clone());
            repo.commits.insert(commit, files);
            self.repos.insert((ty, id), repo);
        }
        if changed {
            let saved = serde_json::to_vec(&memo)
                .map_err(io::Error::other)
                .and_then(|b| crate::cache::write_atomic(&memo_path, &b));
            if let Err(e) = saved {
                tracing::warn!(error = %e, "cannot remember file hashes; they will be computed again next time");
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Memo {
    size: u64,
    mtime_ns: u128,
    blob_id: String,
    lfs_sha256: Option<String>,
}

fn sorted_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

fn hash_plain(rel: &str, path: &Path, size: u64) -> io::Result<IndexedFile> {
    let lfs = is_lfs(rel, size);
    let etag = Etag::parse(&if lfs { "0".repeat(64) } else { "0".repeat(40) }).map_err(io::Error::other)?;
    let got = crate::cache::scan::hash_file(path, &etag)?;
    Ok(if lfs {
        IndexedFile {
            size,
            blob_id: git_blob_sha1(lfs_pointer(&got, size).as_bytes()).to_string(),
            lfs_sha256: Some(got),
            source: path.to_path_buf(),
        }
    } else {
        IndexedFile { size, blob_id: got, lfs_sha256: None, source: path.to_path_buf() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_folder_is_indexed_with_stable_commit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let repo = tmp.path().join("org/model");
        fs::create_dir_all(repo.join("sub")).expect("mkdir");
        fs::write(repo.join("config.json"), b"{}").expect("w");
        fs::write(repo.join("sub/w.safetensors"), vec![7u8; 1000]).expect("w");
        fs::create_dir_all(tmp.path().join("datasets/org/data")).expect("mkdir");
        fs::write(tmp.path().join("datasets/org/data/d.csv"), b"a,b\n").expect("w");
        let idx = HubIndex::build(tmp.path()).expect("index");
        let m = &idx.repos[&(RepoType::Model, "org/model".to_string())];
        let commit = m.resolve("main").expect("main").to_owned();
        assert_eq!(m.resolve(&commit[..7]), Some(commit.as_str()));
        let files = &m.commits[&commit];
        assert_eq!(files["config.json"].blob_id, git_blob_sha1(b"{}").to_string());
        assert!(files["sub/w.safetensors"].lfs_sha256.is_some());
        assert!(idx.repos.contains_key(&(RepoType::Dataset, "org/data".to_string())));
        // Same content, same commit; the memo file is used the second time.
        let again = HubIndex::build(tmp.path()).expect("index");
        assert_eq!(again.repos[&(RepoType::Model, "org/model".to_string())].resolve("main"), Some(commit.as_str()));
        assert!(tmp.path().join(".swarm-dl/hashes.json").is_file());
    }
}
