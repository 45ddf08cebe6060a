//! Repos on disk for the Hub stand-in, with content that is deterministic and cheap to make,
//! and checks that a cache holds exactly that content.

use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

/// `len` pseudo-random bytes from `seed` (xorshift64*): incompressible and reproducible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a large random file in pieces (bounded memory).
pub fn write_random_file(path: &Path, seed: u64, len: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    let mut f = fs::File::create(path).expect("create");
    let piece = 8 << 20;
    let mut left = len;
    let mut i = 0;
    while left > 0 {
        let n = left.min(piece);
        f.write_all(&random_bytes(seed.wrapping_add(i), n as usize)).expect("write");
        left -= n;
        i += 1;
    }
}

/// A repo in a plain folder served by `hub serve`: `root/[datasets/]org/name/…`.
#[derive(Debug)]
pub struct PlainRepo {
    /// The repo's folder.
    pub dir: PathBuf,
    /// path → sha256 of the content.
    pub files: BTreeMap<String, String>,
}

impl PlainRepo {
    /// Creates `root/<prefix>/<id>/`.
    pub fn new(root: &Path, type_prefix: &str, id: &str) -> Self {
        let dir = root.join(type_prefix).join(id);
        fs::create_dir_all(&dir).expect("mkdir");
        Self { dir, files: BTreeMap::new() }
    }

    /// Adds a file with the given content.
    pub fn file(mut self, path: &str, content: &[u8]) -> Self {
        let p = self.dir.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, content).expect("write");
        self.files.insert(path.to_owned(), hex::encode(sha2::Sha256::digest(content)));
        self
    }

    /// Adds a large random file.
    pub fn random(mut self, path: &str, seed: u64, len: u64) -> Self {
        let p = self.dir.join(path);
        write_random_file(&p, seed, len);
        self.files.insert(path.to_owned(), sha256_file(&p));
        self
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The single snapshot of a repo folder in a cache.
pub fn only_snapshot(repo_dir: &Path) -> PathBuf {
    let mut snaps: Vec<_> =
        fs::read_dir(repo_dir.join("snapshots")).expect("snapshots").map(|e| e.expect("entry").path()).collect();
    assert_eq!(snaps.len(), 1, "expected one snapshot in {}", repo_dir.display());
    snaps.pop().expect("one")
}

/// Asserts that `snapshot` holds exactly `files` (path → sha256), every entry a relative
/// symlink into `blobs/`, every blob hashing to its name, and no partial file left as a blob.
pub fn assert_snapshot(snapshot: &Path, files: &BTreeMap<String, String>) {
    for (path, sha) in files {
        let p = snapshot.join(path);
        let target = fs::read_link(&p).unwrap_or_else(|e| panic!("{} is not a symlink: {e}", p.display()));
        assert!(target.is_relative() && target.to_string_lossy().contains("blobs/"), "{}", target.display());
        assert_eq!(&sha256_file(&p), sha, "content of {path}");
    }
    let count = walk_files(snapshot).len();
    assert_eq!(count, files.len(), "files in {}", snapshot.display());
    let repo_dir = snapshot.parent().and_then(Path::parent).expect("repo dir");
    let cache_root = repo_dir.parent().expect("cache root");
    let checks = swarm_node::cache::scan::verify(cache_root, None).expect("verify");
    for c in checks {
        assert_eq!(c.status, "ok", "{c:?}");
    }
}

/// Asserts that a local dir holds exactly `files` as plain files.
pub fn assert_local_dir(dir: &Path, files: &BTreeMap<String, String>) {
    for (path, sha) in files {
        let p = dir.join(path);
        assert!(fs::symlink_metadata(&p).expect("exists").is_file(), "{} must be a plain file", p.display());
        assert_eq!(&sha256_file(&p), sha, "content of {path}");
    }
}

/// Every file below `dir` (following no symlinked directories).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Files in `blobs/` whose names say they are partial.
pub fn partial_files(repo_dir: &Path) -> Vec<PathBuf> {
    walk_files(&repo_dir.join("blobs")).into_iter().filter(|p| p.to_string_lossy().contains(".incomplete")).collect()
}

/// A repo in Hugging Face cache layout (what `hub serve` reads from an existing cache), with
/// several commits and refs: the way to serve branches, tags and `refs/pr/N`.
#[derive(Debug)]
pub struct CacheRepo {
    dir: PathBuf,
}

impl CacheRepo {
    /// `root/models--<org>--<name>` (or another type's prefix).
    pub fn new(root: &Path, folder: &str) -> Self {
        let dir = root.join(folder);
        fs::create_dir_all(dir.join("blobs")).expect("mkdir");
        Self { dir }
    }

    /// Adds a commit with these files (`.safetensors` files are stored as LFS, by sha256).
    pub fn commit(&self, commit: &str, files: &[(&str, &[u8])]) -> &Self {
        for (path, content) in files {
            let etag = if path.ends_with(".safetensors") {
                swarm_protocol::hash::lfs_sha256(content)
            } else {
                swarm_protocol::hash::git_blob_sha1(content)
            };
            fs::write(self.dir.join("blobs").join(etag.as_str()), content).expect("blob");
            let pointer = self.dir.join("snapshots").join(commit).join(path);
            fs::create_dir_all(pointer.parent().expect("parent")).expect("mkdir");
            let depth = path.split('/').count() + 1;
            let target = format!("{}blobs/{etag}", "../".repeat(depth));
            std::os::unix::fs::symlink(target, &pointer).expect("symlink");
        }
        self
    }

    /// Points `refs/<name>` at `commit`.
    pub fn git_ref(&self, name: &str, commit: &str) -> &Self {
        let p = self.dir.join("refs").join(name);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, commit).expect("ref");
        self
    }
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}
