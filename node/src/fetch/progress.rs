//! Live counters of a download, read by whoever draws progress (the CLI polls them).

use crate::store::PartialFile;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

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
    /// This process holds the file's lock and is writing it (its partial file exists).
    pub writing: AtomicBool,
    /// Times the file was started again from nothing (after a whole-file mismatch): bytes read
    /// from an earlier round are void.
    pub restarts: AtomicU64,
    /// The partial file being written, for [`FileProgress::readable`].
    partial: Mutex<Weak<PartialFile>>,
}

impl FileProgress {
    fn new(path: &str, size: u64, done: u64) -> Self {
        Self {
            path: path.to_owned(),
            size,
            done: AtomicU64::new(done),
            finished: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            partial: Mutex::new(Weak::new()),
        }
    }

    /// Records the partial file this round writes.
    pub(crate) fn attach(&self, pf: &Arc<PartialFile>) {
        *self.partial.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(pf);
    }

    /// How much of the file's start may be read from its partial file now
    /// ([`PartialFile::readable`]): what the Hub endpoint streams before the file is complete.
    pub fn readable(&self) -> u64 {
        self.partial.lock().unwrap_or_else(|p| p.into_inner()).upgrade().map_or(0, |pf| pf.readable())
    }
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
    /// Chunks fetched from the Hub that another node owned (it left or stalled): the chunks
    /// that may have crossed the uplink twice.
    pub takeovers: AtomicU64,
    /// Endgame duplicates: chunks asked of a second source because the first was slow.
    pub duplicates: AtomicU64,
    /// Warnings for the user, not yet passed on to a remote `get` ([`Progress::take_notes`]).
    notes: Mutex<Vec<String>>,
    /// The node's metrics, which every count here also goes to.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Progress {
    /// Counters that also count into a node's metrics.
    pub fn reporting_to(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics: Some(metrics), ..Self::default() }
    }

    /// A chunk was checked and written.
    pub fn chunk_verified(&self) {
        if let Some(m) = &self.metrics {
            m.chunk_verified();
        }
    }

    /// A chunk (or a whole file) did not match its record (or ETag).
    pub fn verify_failed(&self) {
        if let Some(m) = &self.metrics {
            m.verify_failed();
        }
    }

    fn count(&self, source: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.downloaded(source, n);
        }
    }

    /// Warns the user: logged here, and passed on to the `get` a `join` node runs this for.
    pub fn note(&self, message: String) {
        tracing::warn!("{message}");
        self.notes.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    }

    /// The warnings since the last call.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Registers a file about to be fetched.
    pub fn start_file(&self, path: &str, size: u64) -> Arc<FileProgress> {
        let fp = Arc::new(FileProgress::new(path, size, 0));
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
        self.count("resumed", n);
    }

    /// Counts `n` bytes received from the Hub.
    pub fn received_from_hub(&self, file: &FileProgress, n: u64) {
        file.done.fetch_add(n, Relaxed);
        self.bytes_done.fetch_add(n, Relaxed);
        self.from_hub.fetch_add(n, Relaxed);
        self.count("hub", n);
    }

    /// Counts `n` bytes received from a peer.
    pub fn received_from_peer(&self, file: &FileProgress, n: u64) {
        file.done.fetch_add(n, Relaxed);
        self.bytes_done.fetch_add(n, Relaxed);
        self.from_peers.fetch_add(n, Relaxed);
        self.count("peer", n);
    }

    /// Takes back `n` bytes of one chunk that failed its check (they will be fetched again; they
    /// still count as received from their source).
    pub fn take_back(&self, file: &FileProgress, n: u64) {
        let n = n.min(file.done.load(Relaxed));
        file.done.fetch_sub(n, Relaxed);
        self.bytes_done.fetch_sub(n.min(self.bytes_done.load(Relaxed)), Relaxed);
    }

    /// Takes back bytes that turned out to be wrong (a file fetched again after a bad hash).
    pub fn discard(&self, file: &FileProgress) {
        file.restarts.fetch_add(1, Relaxed);
        let n = file.done.swap(0, Relaxed);
        self.bytes_done.fetch_sub(n.min(self.bytes_done.load(Relaxed)), Relaxed);
    }

    /// Marks a file complete.
    pub fn finish_file(&self, file: &FileProgress) {
        file.finished.store(true, Relaxed);
        self.files_done.fetch_add(1, Relaxed);
    }
}

/// A copy of the counters, sent by a `join` node to the `get` that asked it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`Progress::files_total`].
    pub files_total: u64,
    /// [`Progress::files_done`].
    pub files_done: u64,
    /// [`Progress::bytes_total`].
    pub bytes_total: u64,
    /// [`Progress::bytes_done`].
    pub bytes_done: u64,
    /// [`Progress::bytes_resumed`].
    pub bytes_resumed: u64,
    /// [`Progress::from_hub`].
    pub from_hub: u64,
    /// [`Progress::from_peers`].
    pub from_peers: u64,
    /// Files in flight: (path, size, bytes present).
    pub active: Vec<(String, u64, u64)>,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            files_total: self.files_total.load(Relaxed),
            files_done: self.files_done.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            bytes_done: self.bytes_done.load(Relaxed),
            bytes_resumed: self.bytes_resumed.load(Relaxed),
            from_hub: self.from_hub.load(Relaxed),
            from_peers: self.from_peers.load(Relaxed),
            active: self.active_files().iter().map(|f| (f.path.clone(), f.size, f.done.load(Relaxed))).collect(),
        }
    }

    /// Makes these counters show `s` (a mirror of a remote download).
    pub fn apply(&self, s: &Snapshot) {
        self.files_total.store(s.files_total, Relaxed);
        self.files_done.store(s.files_done, Relaxed);
        self.bytes_total.store(s.bytes_total, Relaxed);
        self.bytes_done.store(s.bytes_done, Relaxed);
        self.bytes_resumed.store(s.bytes_resumed, Relaxed);
        self.from_hub.store(s.from_hub, Relaxed);
        self.from_peers.store(s.from_peers, Relaxed);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for f in files.iter() {
            if !s.active.iter().any(|(p, _, _)| *p == f.path) {
                f.finished.store(true, Relaxed);
            }
        }
        for (path, size, done) in &s.active {
            match files.iter().find(|f| &f.path == path) {
                Some(f) => f.done.store(*done, Relaxed),
                None => files.push(Arc::new(FileProgress::new(path, *size, *done))),
            }
        }
    }
}
