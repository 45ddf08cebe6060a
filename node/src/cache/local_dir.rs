//! The `--local-dir` layout: plain files at their repo paths, plus the metadata
//! `huggingface_hub` keeps in `<dir>/.cache/huggingface/` (`_local_folder.py`): per file a
//! `download/<path>.metadata` of three lines (commit, etag, unix time), a `<path>.lock`, and
//! partial downloads named `<b64(sha1(metadata name))>.<etag>.incomplete`.

use super::{CACHEDIR_TAG, CHUNK_STATE_SUFFIX, INCOMPLETE_SUFFIX, join_repo_path, write_atomic};
use crate::hub::RemoteFile;
use base64::Engine as _;
use sha1::Digest as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use swarm_protocol::hash::Etag;

/// A local directory that receives plain copies of a repo's files.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A local dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn hf_dir(&self) -> PathBuf {
        self.root.join(".cache").join("huggingface")
    }

    /// Creates `.cache/huggingface/` with its `.gitignore` and `CACHEDIR.TAG`.
    pub fn ensure(&self) -> io::Result<()> {
        let hf = self.hf_dir();
        fs::create_dir_all(hf.join("download"))?;
        if !hf.join(".gitignore").exists() {
            write_atomic(&hf.join(".gitignore"), b"*")?;
        }
        if !hf.join("CACHEDIR.TAG").exists() {
            write_atomic(&hf.join("CACHEDIR.TAG"), CACHEDIR_TAG.as_bytes())?;
        }
        Ok(())
    }

    /// Where the file lands.
    pub fn file(&self, path: &str) -> PathBuf {
        join_repo_path(&self.root, path)
    }

    fn metadata(&self, path: &str) -> PathBuf {
        join_repo_path(&self.hf_dir().join("download"), &format!("{path}.metadata"))
    }

    /// The per-file lock, `download/<path>.lock`.
    pub fn lock_path(&self, path: &str) -> PathBuf {
        join_repo_path(&self.hf_dir().join("download"), &format!("{path}.lock"))
    }

    /// The partial file for `path` at `etag`.
    pub fn incomplete(&self, path: &str, etag: &Etag) -> PathBuf {
        let meta = self.metadata(path);
        let name = meta.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let short = base64::engine::general_purpose::URL_SAFE.encode(sha1::Sha1::digest(name.as_bytes()));
        meta.with_file_name(format!("{short}.{etag}{INCOMPLETE_SUFFIX}"))
    }

    /// The chunk state beside a partial file.
    pub fn chunk_state(&self, path: &str, etag: &Etag) -> PathBuf {
        let inc = self.incomplete(path, etag);
        inc.with_file_name(format!(
            "{}{CHUNK_STATE_SUFFIX}",
            inc.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(INCOMPLETE_SUFFIX)
        ))
    }

    /// `trees/<commit>.json` of the local dir.
    pub fn tree_path(&self, commit: &str) -> PathBuf {
        self.hf_dir().join("trees").join(format!("{commit}.json"))
    }

    /// Caches the complete listing at a commit.
    pub fn write_tree(&self, commit: &str, files: &[RemoteFile]) -> io::Result<()> {
        super::write_tree_file(&self.tree_path(commit), files)
    }

    /// Records that `path` holds `etag` from `commit`.
    pub fn write_metadata(&self, path: &str, commit: &str, etag: &Etag) -> io::Result<()> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        write_atomic(&self.metadata(path), format!("{commit}\n{etag}\n{now}\n").as_bytes())
    }

    /// True when `path` is on disk and its metadata says it is `etag` and it was not modified
    /// after the metadata was written (Python's rule: `mtime - 1 <= timestamp`).
    pub fn is_current(&self, path: &str, etag: &Etag) -> bool {
        let Ok(text) = fs::read_to_string(self.metadata(path)) else {
            return false;
        };
        let mut lines = text.lines();
        let (_commit, meta_etag, ts) = (lines.next(), lines.next(), lines.next());
        let Some(ts) = ts.and_then(|t| t.trim().parse::<f64>().ok()) else {
            return false;
        };
        if meta_etag.map(str::trim) != Some(etag.as_str()) {
            return false;
        }
        let Ok(m) = fs::metadata(self.file(path)) else {
            return false;
        };
        let mtime = m.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        m.is_file() && mtime.is_some_and(|t| t.as_secs_f64() - 1.0 <= ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_huggingface_hub() {
        let ld = LocalDir::new("/x");
        let etag = swarm_protocol::hash::git_blob_sha1(b"");
        // base64.urlsafe_b64encode(hashlib.sha1(b"config.json.metadata").digest())
        let inc = ld.incomplete("sub/config.json", &etag);
        assert!(inc.starts_with("/x/.cache/huggingface/download/sub"));
        let name = inc.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.ends_with(&format!(".{etag}.incomplete")), "{name}");
        assert_eq!(ld.lock_path("sub/config.json"), Path::new("/x/.cache/huggingface/download/sub/config.json.lock"));
    }

    #[test]
    fn metadata_round_trip() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ld = LocalDir::new(tmp.path());
        ld.ensure().expect("ensure");
        let etag = swarm_protocol::hash::git_blob_sha1(b"x");
        fs::write(ld.file("f.txt"), b"x").expect("file");
        assert!(!ld.is_current("f.txt", &etag));
        ld.write_metadata("f.txt", &"a".repeat(40), &etag).expect("meta");
        assert!(ld.is_current("f.txt", &etag));
        assert!(!ld.is_current("f.txt", &swarm_protocol::hash::git_blob_sha1(b"y")));
    }
}
