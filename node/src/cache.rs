//! The Hugging Face cache on disk, exactly as `huggingface_hub` writes it: `blobs/<etag>`, `snapshots/<commit>/<path>` as
//! relative symlinks, `refs/<rev>` holding the bare commit, `trees/<commit>.json`, `.no_exist/`,
//! `.locks/<repo>/<etag>.lock` (BSD `flock`, so Python and Rust exclude each other) and
//! `CACHEDIR.TAG`. Also the `--local-dir` layout ([`local_dir`]) and the `cache ls|verify|clean`
//! reports ([`scan`]).
//!
//! This module knows where things go and writes small metadata files atomically. It does not
//! download or verify content: blobs arrive here already checked ([`crate::store`]).

pub mod local_dir;
pub mod scan;
pub mod trust;

use crate::hub::{Access, RemoteFile, RepoRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use swarm_protocol::hash::Etag;

/// `CACHEDIR.TAG`, byte for byte as `huggingface_hub` writes it.
pub const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by huggingface_hub.\n\
# For information about cache directory tags, see:\n\
#\thttps://bford.info/cachedir/\n";

/// Suffix of a partial download (a plain file, written at chunk offsets).
pub const INCOMPLETE_SUFFIX: &str = ".incomplete";
/// Suffix of a partial download's chunk state, beside it.
pub const CHUNK_STATE_SUFFIX: &str = ".incomplete.chunks.json";

/// A hub cache directory (`HF_HUB_CACHE`).
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
    /// Copy blobs into snapshots instead of linking them (`HF_HUB_DISABLE_SYMLINKS`).
    copies: bool,
}

impl HubCache {
    /// A cache rooted at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), copies: false }
    }

    /// The same cache, with snapshots that hold copies of blobs instead of symlinks to them
    /// (`HF_HUB_DISABLE_SYMLINKS`, or a file system without symlinks).
    pub fn with_copies(mut self, copies: bool) -> Self {
        self.copies = copies;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the root and its `CACHEDIR.TAG`.
    pub fn ensure(&self) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        write_if_absent(&self.root.join("CACHEDIR.TAG"), CACHEDIR_TAG.as_bytes())
    }

    /// swarm-dl's own state for this cache (node identity, running-node announcement, chunk
    /// manifests). It lives under `.locks/`, the one entry of a hub cache that
    /// `huggingface_hub`'s `scan_cache_dir` skips: any other folder there is reported as a
    /// corrupted repo (found by the interop test).
    pub fn swarm_dir(&self) -> PathBuf {
        self.root.join(".locks").join("swarm-dl")
    }

    /// The chunk manifest of a complete blob, saved when swarm-dl verified it, so that a node
    /// can offer the blob's chunks without hashing it again.
    pub fn manifest_path(&self, etag: &Etag) -> PathBuf {
        self.swarm_dir().join("manifests").join(format!("{etag}.json"))
    }

    /// Saves a complete blob's chunk manifest (best effort: it only saves a re-hash).
    pub fn save_manifest(&self, m: &swarm_protocol::manifest::ChunkManifest) {
        let path = self.manifest_path(&m.etag);
        let res =
            serde_json::to_vec(m).map_err(io::Error::other).and_then(|json| trust::write_state_file(&path, &json));
        if let Err(e) = res {
            tracing::debug!(path = %path.display(), error = %e, "cannot save chunk manifest");
        }
    }

    /// A saved manifest for `(etag, size)` with every chunk hash, if there is one.
    pub fn load_manifest(&self, etag: &Etag, size: u64) -> Option<swarm_protocol::manifest::ChunkManifest> {
        // The node signs these hashes without hashing the blob again: only its own files count.
        let m: swarm_protocol::manifest::ChunkManifest =
            serde_json::from_slice(&trust::read_state_file(&self.manifest_path(etag))?).ok()?;
        (m.validate_for(etag, size).is_ok() && m.known() == m.chunks.len()).then_some(m)
    }

    /// Where the access class (gated, private) of the repo in cache folder `folder`
    /// (`models--org--name`) is recorded, as the Hub last said it to a `get` on this cache.
    fn access_path(&self, folder: &str) -> PathBuf {
        self.swarm_dir().join("access").join(format!("{folder}.json"))
    }

    /// Records what the Hub said of a repo's access (best effort: without a record, an open
    /// swarm does not serve the repo).
    pub fn record_access(&self, repo: &RepoRef, access: Access) {
        let path = self.access_path(&repo.id.folder_name(repo.ty));
        let res = serde_json::to_vec(&access)
            .map_err(io::Error::other)
            .and_then(|json| trust::write_state_file(&path, &json));
        if let Err(e) = res {
            tracing::debug!(path = %path.display(), error = %e, "cannot record repo access");
        }
    }

    /// Whether the repo in cache folder `folder` is known to be public (neither gated nor
    /// private): only such repos are served to an open swarm. Unknown means no.
    pub fn folder_is_public(&self, folder: &str) -> bool {
        trust::read_state_file(&self.access_path(folder))
            .and_then(|b| serde_json::from_slice::<Access>(&b).ok())
            .is_some_and(Access::is_public)
    }

    /// The folder of one repo.
    pub fn repo(&self, repo: &RepoRef) -> RepoCache {
        let folder = repo.id.folder_name(repo.ty);
        RepoCache { dir: self.root.join(&folder), locks: self.root.join(".locks").join(folder), copies: self.copies }
    }
}

/// One repo's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    dir: PathBuf,
    locks: PathBuf,
    copies: bool,
}

/// `trees/<commit>.json`, format version 1 (`huggingface_hub._tree_cache`).
#[derive(Debug, Serialize, Deserialize)]
struct TreeCacheFile {
    format_version: u32,
    files: BTreeMap<String, TreeCacheEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TreeCacheEntry {
    size: u64,
    blob_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xet_hash: Option<String>,
}

impl RepoCache {
    /// The repo folder (`models--org--name`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &Etag) -> PathBuf {
        self.dir.join("blobs").join(etag.as_str())
    }

    /// `blobs/<etag>.incomplete`: the partial file, resumable across runs.
    pub fn incomplete(&self, etag: &Etag) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}{INCOMPLETE_SUFFIX}"))
    }

    /// The chunk state beside `blobs/<etag>.incomplete`.
    pub fn chunk_state(&self, etag: &Etag) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}{CHUNK_STATE_SUFFIX}"))
    }

    /// The lock every writer of `blobs/<etag>` takes, Python's included.
    pub fn lock_path(&self, etag: &Etag) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// `snapshots/<commit>`.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// `snapshots/<commit>/<path>`.
    pub fn pointer(&self, commit: &str, path: &str) -> PathBuf {
        join_repo_path(&self.snapshot(commit), path)
    }

    /// `refs/<rev>` (nested for `refs/pr/N`).
    pub fn ref_path(&self, revision: &str) -> PathBuf {
        join_repo_path(&self.dir.join("refs"), revision)
    }

    /// The commit a ref points at, read raw as `huggingface_hub` does.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        swarm_protocol::repo::check_revision(revision).ok()?;
        let s = fs::read_to_string(self.ref_path(revision)).ok()?;
        swarm_protocol::repo::is_commit(&s).then_some(s)
    }

    /// Writes `refs/<rev>` = the bare commit (no newline), atomically, only if it changes.
    /// A revision that breaks git's ref-name rules (`../x`) is refused, never joined to a path.
    pub fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        swarm_protocol::repo::check_revision(revision)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if !swarm_protocol::repo::is_commit(commit) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a ref must hold a full commit id"));
        }
        if self.read_ref(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        write_atomic(&self.ref_path(revision), commit.as_bytes())
    }

    /// `trees/<commit>.json`.
    pub fn tree_path(&self, commit: &str) -> PathBuf {
        self.dir.join("trees").join(format!("{commit}.json"))
    }

    /// `.no_exist/<commit>/<path>`: an empty file saying "the Hub has no such file here".
    pub fn mark_no_exist(&self, commit: &str, path: &str) -> io::Result<()> {
        write_if_absent(&join_repo_path(&self.dir.join(".no_exist").join(commit), path), b"")
    }

    /// The full file listing at a commit, if cached.
    pub fn read_tree(&self, commit: &str) -> Option<Vec<RemoteFile>> {
        read_tree_file(&self.tree_path(commit))
    }

    /// Caches the complete listing at a commit (it never changes).
    pub fn write_tree(&self, commit: &str, files: &[RemoteFile]) -> io::Result<()> {
        write_tree_file(&self.tree_path(commit), files)
    }

    /// True when `snapshots/<commit>/<path>` exists and leads to a file.
    pub fn has_file(&self, commit: &str, path: &str) -> bool {
        fs::metadata(self.pointer(commit, path)).is_ok_and(|m| m.is_file())
    }

    /// Points `snapshots/<commit>/<path>` at `blobs/<etag>` with a relative symlink, replacing
    /// whatever was there. Where symlinks are unavailable (or `HF_HUB_DISABLE_SYMLINKS`), the blob
    /// is copied, as `huggingface_hub` does.
    pub fn link(&self, commit: &str, path: &str, etag: &Etag) -> io::Result<()> {
        let pointer = self.pointer(commit, path);
        let blob = self.blob(etag);
        let parent = pointer.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent)?;
        let tmp = unique_tmp(&parent, "link");
        if !self.copies {
            let depth = path.split('/').count() + 1; // snapshots/<commit>/<path…>
            let mut target = PathBuf::new();
            for _ in 0..depth {
                target.push("..");
            }
            target.push("blobs");
            target.push(etag.as_str());
            #[cfg(unix)]
            if std::os::unix::fs::symlink(&target, &tmp).is_ok() {
                return fs::rename(&tmp, &pointer);
            }
        }
        fs::copy(&blob, &tmp)?;
        fs::rename(&tmp, &pointer)
    }

    /// Ensures `blobs/`, the snapshot folder and the locks folder exist.
    pub fn ensure(&self, commit: &str) -> io::Result<()> {
        fs::create_dir_all(self.dir.join("blobs"))?;
        fs::create_dir_all(self.snapshot(commit))?;
        fs::create_dir_all(&self.locks)
    }
}

/// Joins a `/`-separated repo path (already checked by `check_repo_path`) under `base`.
pub fn join_repo_path(base: &Path, path: &str) -> PathBuf {
    let mut p = base.to_path_buf();
    for seg in path.split('/') {
        p.push(seg);
    }
    p
}

pub(crate) fn read_tree_file(path: &Path) -> Option<Vec<RemoteFile>> {
    let bytes = fs::read(path).ok()?;
    let tree: TreeCacheFile = serde_json::from_slice(&bytes).ok()?;
    if tree.format_version != 1 {
        return None;
    }
    let mut out = Vec::with_capacity(tree.files.len());
    for (path, e) in tree.files {
        swarm_protocol::repo::check_repo_path(&path).ok()?;
        let etag = Etag::parse(e.lfs_sha256.as_deref().unwrap_or(&e.blob_id)).ok()?;
        out.push(RemoteFile {
            path,
            size: e.lfs_size.unwrap_or(e.size),
            etag,
            blob_id: e.blob_id,
            lfs: e.lfs_sha256.map(|s| (s, e.lfs_size.unwrap_or(e.size))),
            xet_hash: e.xet_hash,
        });
    }
    Some(out)
}

pub(crate) fn write_tree_file(path: &Path, files: &[RemoteFile]) -> io::Result<()> {
    let tree = TreeCacheFile {
        format_version: 1,
        files: files
            .iter()
            .map(|f| {
                let entry = TreeCacheEntry {
                    size: f.size,
                    blob_id: f.blob_id.clone(),
                    lfs_sha256: f.lfs.as_ref().map(|(s, _)| s.clone()),
                    lfs_size: f.lfs.as_ref().map(|(_, n)| *n),
                    xet_hash: f.xet_hash.clone(),
                };
                (f.path.clone(), entry)
            })
            .collect(),
    };
    // Python's json.dump(indent=1): one space per level, ", " and ": " separators.
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b" "));
    tree.serialize(&mut ser).map_err(io::Error::other)?;
    write_atomic(path, &buf)
}

/// A temporary name in `dir` that no other call, thread or process uses.
///
/// Regression: names were once unique per process only, so two files of one snapshot linked at
/// the same moment could take each other's temporary symlink, failing with ENOENT or, worse,
/// leaving a pointer to the wrong blob (found by `two_concurrent_gets_share_the_cache_through_its_locks`).
fn unique_tmp(dir: &Path, name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{n}.swarm-dl.tmp", std::process::id()))
}

/// Where a blob found corrupt is moved aside: `<blob>.corrupt`, beside it (`cache clean`
/// removes these).
pub fn corrupt_path(blob: &Path) -> PathBuf {
    let mut name = blob.file_name().unwrap_or_default().to_os_string();
    name.push(CORRUPT_SUFFIX);
    blob.with_file_name(name)
}

/// Suffix of blobs moved aside because their bytes no longer match their name.
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// Writes a file through a temporary sibling and a rename, so readers see all or nothing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = unique_tmp(dir, name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn write_if_absent(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_atomic(path, bytes)
}

/// An exclusive `flock` on a lock file, released on drop. Mode 0664 so that a cache shared by
/// several users stays usable (huggingface_hub#2580).
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

impl BlobLock {
    fn open(path: &Path) -> io::Result<File> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        crate::os::create_mode(&mut o, 0o664);
        o.open(path)
    }

    /// `Ok(false)` when another holder has it.
    fn try_lock(file: &File) -> io::Result<bool> {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Waits for the lock (blocking: call from a blocking thread), logging every 10 s like
    /// `huggingface_hub` does.
    pub fn acquire(path: &Path) -> io::Result<Self> {
        let file = Self::open(path)?;
        let start = std::time::Instant::now();
        let mut next_log = 10;
        while !Self::try_lock(&file)? {
            if start.elapsed().as_secs() >= next_log {
                tracing::info!(lock = %path.display(), waited_s = next_log, "still waiting for another download of this file");
                next_log += 10;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(Self { _file: file })
    }

    /// Takes the lock only if nobody holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Self>> {
        let file = Self::open(path)?;
        Ok(Self::try_lock(&file)?.then_some(Self { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_protocol::repo::{RepoId, RepoType};

    fn repo() -> RepoRef {
        RepoRef { id: RepoId::parse("org/name").expect("id"), ty: RepoType::Model }
    }

    #[test]
    fn refs_are_bare_commits_and_nested_for_prs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let rc = HubCache::new(tmp.path()).repo(&repo());
        let c = "a".repeat(40);
        rc.write_ref("refs/pr/1", &c).expect("write");
        let raw = fs::read_to_string(tmp.path().join("models--org--name/refs/refs/pr/1")).expect("read");
        assert_eq!(raw, c);
        assert_eq!(rc.read_ref("refs/pr/1"), Some(c));
        assert_eq!(rc.read_ref("main"), None);
    }

    #[test]
    fn snapshot_links_are_relative_and_resolve() {
        let tmp = tempfile::tempdir().expect("tmp");
        let rc = HubCache::new(tmp.path()).repo(&repo());
        let c = "b".repeat(40);
        rc.ensure(&c).expect("ensure");
        let etag = swarm_protocol::hash::git_blob_sha1(b"hi");
        fs::write(rc.blob(&etag), b"hi").expect("blob");
        rc.link(&c, "sub/dir/f.txt", &etag).expect("link");
        let p = rc.pointer(&c, "sub/dir/f.txt");
        assert_eq!(fs::read_link(&p).expect("symlink"), Path::new("../../../../blobs").join(etag.as_str()));
        assert_eq!(fs::read(&p).expect("read"), b"hi");
        assert!(rc.has_file(&c, "sub/dir/f.txt"));
    }

    #[test]
    fn concurrent_links_in_one_folder_each_point_at_their_own_blob() {
        let tmp = tempfile::tempdir().expect("tmp");
        let rc = HubCache::new(tmp.path()).repo(&repo());
        let c = "f".repeat(40);
        rc.ensure(&c).expect("ensure");
        let etags: Vec<Etag> = (0..64u32)
            .map(|i| {
                let content = i.to_le_bytes();
                let e = swarm_protocol::hash::git_blob_sha1(&content);
                fs::write(rc.blob(&e), content).expect("blob");
                e
            })
            .collect();
        std::thread::scope(|s| {
            for (i, e) in etags.iter().enumerate() {
                let rc = &rc;
                let c = &c;
                s.spawn(move || rc.link(c, &format!("f{i}"), e).expect("link"));
            }
        });
        for (i, _) in etags.iter().enumerate() {
            assert_eq!(fs::read(rc.pointer(&c, &format!("f{i}"))).expect("read"), (i as u32).to_le_bytes());
        }
    }

    #[test]
    fn tree_cache_matches_python_json_layout() {
        let tmp = tempfile::tempdir().expect("tmp");
        let rc = HubCache::new(tmp.path()).repo(&repo());
        let sha = "c".repeat(64);
        let files = vec![RemoteFile {
            path: "m.bin".into(),
            size: 5,
            etag: Etag::parse(&sha).expect("etag"),
            blob_id: "d".repeat(40),
            lfs: Some((sha.clone(), 5)),
            xet_hash: None,
        }];
        rc.write_tree("e", &files).expect("write");
        let text = fs::read_to_string(rc.tree_path("e")).expect("read");
        let want = format!(
            "{{\n \"format_version\": 1,\n \"files\": {{\n  \"m.bin\": {{\n   \"size\": 5,\n   \"blob_id\": \"{}\",\n   \"lfs_sha256\": \"{sha}\",\n   \"lfs_size\": 5\n  }}\n }}\n}}",
            "d".repeat(40)
        );
        assert_eq!(text, want);
        assert_eq!(rc.read_tree("e"), Some(files));
    }
}
