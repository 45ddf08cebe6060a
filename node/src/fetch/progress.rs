//! Live counters of a download, read by whoever draws progress (the CLI polls them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// One file's progress.
#[derive(Debug)]
pub struct FileProgress {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes present (resumed or fetched).
    pub done: AtomicU64,
    /// Verified and in place.
    pub finished: AtomicBool,
}

/// Counters for a whole `get`. Bytes are counted as they arrive; `from_hub` and `from_peers`
/// split them by source.
#[derive(Debug, Default)]
pub struct Progress {
    files: Mutex<Vec<Arc<FileProgress>>>,
    /// Files selected.
    pub files_total: AtomicU64,
    /// Files complete (including those already in the cache).
    pub files_done: AtomicU64,
    /// Bytes of the files that needed fetching.
    pub bytes_total: AtomicU64,
    /// Of those, bytes present so far.
    pub bytes_done: AtomicU64,
    /// Bytes kept from an earlier, interrupted run.
    pub bytes_resumed: AtomicU64,
    /// Bytes received from the Hub in this run.
    pub from_hub: AtomicU64,
    /// Bytes received from peers in this run.
    pub from_peers: AtomicU64,
}

impl Progress {
    /// Registers a file about to be fetched.
    pub fn start_file(&self, path: &str, size: u64) -> Arc<FileProgress> {
        let fp = Arc::new(FileProgress {
            path: path.to_owned(),
            size,
            done: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        self.files.lock().unwrap_or_else(|p| p.into_inner()).push(fp.clone());
        fp
    }

    /// Files currently being fetched.
    pub fn active_files(&self) -> Vec<Arc<FileProgress>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|f| !f.finished.load(Relaxed));
        files.clone()
    }

    /// Counts `n` bytes kept from an earlier run.
    pub fn resumed(&self, file: &FileProgress, n: u64) {
        file.done.fetch_add(n, Relaxed);
        self.bytes_done.fetch_add(n, Relaxed);
        self.bytes_resumed.fetch_add(n, Relaxed);
    }

    /// Counts `n` bytes received from the Hub.
    pub fn received_from_hub(&self, file: &FileProgress, n: u64) {
        file.done.fetch_add(n, Relaxed);
        self.bytes_done.fetch_add(n, Relaxed);
        self.from_hub.fetch_add(n, Relaxed);
    }

    /// Takes back bytes that turned out to be wrong (a file fetched again after a bad hash).
    pub fn discard(&self, file: &FileProgress) {
        let n = file.done.swap(0, Relaxed);
        self.bytes_done.fetch_sub(n.min(self.bytes_done.load(Relaxed)), Relaxed);
    }

    /// Marks a file complete.
    pub fn finish_file(&self, file: &FileProgress) {
        file.finished.store(true, Relaxed);
        self.files_done.fetch_add(1, Relaxed);
    }
}
