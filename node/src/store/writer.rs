//! [`ChunkWriter`]: receives one chunk's bytes in order from any source (the Hub, a peer),
//! hashes them on the way, and writes them at the chunk's offset in a [`PartialFile`], or keeps
//! them in memory for an endgame copy that is written only if it wins.
//!
//! Bytes come in two ways: [`ChunkWriter::push`] copies a slice the source already holds (the
//! Hub's response body), and [`ChunkWriter::spare`] + [`ChunkWriter::filled`] let a source read
//! straight into the writer's buffer (a peer's stream), saving one copy of every byte.

use super::direct::AlignedBuf;
use super::{PartialFile, StoreError, Ticket};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use swarm_protocol::hash::{ChunkHash, ChunkHasher};

/// The write buffer of a writer from a peer. Each full buffer is hashed and written on a
/// blocking thread: a hand-off each way and a direct write that waits for the disk. At 512 KiB
/// those were a fifth of a receiving node's context switches (`bench/p2p.py`, about 5,000 of
/// 28,000 per GiB); at 2 MiB, a quarter of that.
const WRITE_BUF: usize = 2 << 20;
/// The write buffer of a writer that moves the chunk's watermark (the Hub's): what an
/// interruption keeps of a chunk ends at its last full buffer, and bytes from the Hub are the
/// ones worth keeping.
const MARKED_BUF: usize = 512 << 10;

/// Receives one chunk's bytes in order, hashes them, and writes them at the chunk's offset in
/// the file, or, for an endgame duplicate, keeps them in memory until they win.
#[derive(Debug)]
pub struct ChunkWriter {
    sink: Sink,
    /// The chunk's index.
    pub index: u32,
    /// The chunk's byte range in the file.
    pub range: Range<u64>,
    flushed: u64,
    hasher: Option<ChunkHasher>,
    /// The write buffer (file sink; taken at first use): [`WRITE_BUF`] or [`MARKED_BUF`] bytes,
    /// of which the first `fill` are pending. Aligned, and written at aligned offsets from the
    /// chunk's start, so that it goes to disk directly.
    buf: AlignedBuf,
    fill: usize,
    /// The buffer before this one, being hashed and written on a blocking thread while this
    /// one fills (file sink): it hands back the hasher, the buffer and the write's result. The
    /// source is not held up by the disk, and a write error comes out of the next
    /// [`Self::filled`] or [`Self::finish`].
    writing: Option<tokio::task::JoinHandle<Written>>,
    /// Bytes received so far, readable from outside (to take them back from progress if this
    /// copy loses a race).
    got: Arc<AtomicU64>,
    /// Another counter of received bytes (the file's Hub bytes, announced to peers).
    also: Option<Arc<AtomicU64>>,
    /// Writes move the chunk's watermark (see [`Self::resume`]).
    marks: bool,
}

/// What a buffer's write hands back: the hasher, the buffer, and whether the write went through.
type Written = (ChunkHasher, AlignedBuf, Result<(), StoreError>);

#[derive(Debug)]
enum Sink {
    File {
        pf: Arc<PartialFile>,
        ticket: Ticket,
    },
    /// The whole chunk, of which the first `flushed` bytes are received.
    Memory(AlignedBuf),
}

impl ChunkWriter {
    /// A writer of chunk `index` covering `range` into the file.
    pub fn new(pf: Arc<PartialFile>, index: u32, range: Range<u64>) -> Self {
        let ticket = pf.ticket(index);
        Self::with_sink(Sink::File { pf, ticket }, index, range)
    }

    /// A writer that keeps the chunk in memory (an endgame duplicate, written only if it wins).
    pub fn in_memory(index: u32, range: Range<u64>) -> Self {
        let len = (range.end - range.start) as usize;
        Self::with_sink(Sink::Memory(AlignedBuf::new(len)), index, range)
    }

    fn with_sink(sink: Sink, index: u32, range: Range<u64>) -> Self {
        Self {
            sink,
            index,
            range,
            flushed: 0,
            hasher: Some(ChunkHasher::new()),
            buf: AlignedBuf::default(),
            fill: 0,
            writing: None,
            got: Arc::default(),
            also: None,
            marks: false,
        }
    }

    /// A writer into the file that continues chunk `index` from where an earlier writer of the
    /// same kind stopped (its watermark, see [`PartialFile::kept`]), hashing those bytes back
    /// from disk first, and that moves the watermark as it writes. For sources that can start
    /// mid-chunk (the Hub's ranged GETs).
    pub async fn resume(pf: Arc<PartialFile>, index: u32, range: Range<u64>) -> Result<Self, StoreError> {
        let kept = pf.kept(index).min(range.end - range.start);
        let mut w = Self::new(pf.clone(), index, range);
        w.marks = true;
        if kept > 0 {
            let h = tokio::task::spawn_blocking(move || pf.hash_prefix(index, kept))
                .await
                .map_err(|e| StoreError::Task(format!("hashing task failed: {e}")))??;
            w.hasher = Some(h);
            w.flushed = kept;
        }
        Ok(w)
    }

    /// Counts received bytes into `got` as well.
    pub fn counting(mut self, got: Arc<AtomicU64>) -> Self {
        self.got = got;
        self
    }

    /// Counts received bytes into `also` too.
    pub fn also_counting(mut self, also: Option<Arc<AtomicU64>>) -> Self {
        self.also = also;
        self
    }

    /// Bytes received so far (written or buffered).
    pub fn received(&self) -> u64 {
        self.flushed + self.fill as u64
    }

    /// Bytes still wanted.
    pub fn remaining(&self) -> u64 {
        (self.range.end - self.range.start).saturating_sub(self.received())
    }

    /// Appends bytes (at most [`Self::remaining`] are taken).
    pub async fn push(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        let take = (self.remaining().min(data.len() as u64)) as usize;
        data = &data[..take];
        while !data.is_empty() {
            let dst = self.spare();
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.filled(n).await?;
        }
        Ok(())
    }

    /// Where the next bytes go: a source reads into this, then calls [`Self::filled`]. Never
    /// longer than [`Self::remaining`]; empty only when nothing more is wanted.
    pub fn spare(&mut self) -> &mut [u8] {
        let want = self.remaining().min(usize::MAX as u64) as usize;
        match &mut self.sink {
            Sink::Memory(v) => {
                let at = self.flushed as usize;
                &mut v[at..at + want]
            }
            Sink::File { .. } => {
                if self.buf.is_empty() {
                    self.buf = AlignedBuf::reused(if self.marks { MARKED_BUF } else { WRITE_BUF });
                }
                let end = self.buf.len().min(self.fill + want);
                &mut self.buf[self.fill..end]
            }
        }
    }

    /// Takes the first `n` bytes of [`Self::spare`] as received; writes them out when the buffer
    /// is full.
    pub async fn filled(&mut self, n: usize) -> Result<(), StoreError> {
        let n = n.min(self.remaining() as usize);
        self.got.fetch_add(n as u64, Relaxed);
        if let Some(a) = &self.also {
            a.fetch_add(n as u64, Relaxed);
        }
        if let Sink::Memory(v) = &self.sink {
            let at = self.flushed as usize;
            if let Some(h) = &mut self.hasher {
                h.update(&v[at..at + n]);
            }
            self.flushed += n as u64;
            return Ok(());
        }
        debug_assert!(self.fill + n <= self.buf.len(), "filled more than spare() gave");
        self.fill += n;
        if self.fill == self.buf.len() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the pending bytes to a blocking thread to hash and write, once the write before
    /// them is done; fills the other buffer meanwhile.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let Sink::File { pf, ticket } = &self.sink else {
            return Ok(());
        };
        if self.fill == 0 {
            return Ok(());
        }
        let (pf, ticket, marks) = (pf.clone(), *ticket, self.marks);
        let next = self.settle().await?;
        let (buf, fill) = (std::mem::replace(&mut self.buf, next), self.fill);
        let mut hasher = self.hasher.take().unwrap_or_default();
        let offset = self.range.start + self.flushed;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let bytes = &buf[..fill];
            hasher.update(bytes);
            let res = if marks { pf.write_marked(ticket, offset, bytes) } else { pf.write_at(ticket, offset, bytes) };
            (hasher, buf, res)
        }));
        self.flushed += fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// Waits for the write in progress, if any: takes its hasher back and returns its buffer
    /// (empty if there was none).
    async fn settle(&mut self) -> Result<AlignedBuf, StoreError> {
        let Some(writing) = self.writing.take() else {
            return Ok(AlignedBuf::default());
        };
        let (hasher, buf, res) = writing.await.map_err(|e| StoreError::Task(format!("writer task failed: {e}")))?;
        self.hasher = Some(hasher);
        res.map(|()| buf)
    }

    /// Writes what is buffered and returns the chunk's hash. The write buffers go back to the
    /// pool.
    pub async fn finish(&mut self) -> Result<ChunkHash, StoreError> {
        self.flush().await?;
        self.settle().await?.recycle();
        std::mem::take(&mut self.buf).recycle();
        Ok(self.hasher.take().unwrap_or_default().finish())
    }

    /// The bytes of an in-memory copy (empty for a writer into the file).
    pub fn into_bytes(self) -> AlignedBuf {
        match self.sink {
            Sink::File { .. } => AlignedBuf::default(),
            Sink::Memory(mut v) => {
                v.truncate(self.flushed as usize);
                v
            }
        }
    }

    /// Marks the chunk done in the file with `hash` (after [`Self::finish`]). Refused if
    /// another copy took the chunk over.
    pub async fn commit(&self, hash: ChunkHash) -> Result<(), StoreError> {
        let Sink::File { pf, ticket } = &self.sink else {
            return Err(StoreError::Task("an in-memory chunk cannot be committed".into()));
        };
        let (pf, ticket) = (pf.clone(), *ticket);
        tokio::task::spawn_blocking(move || pf.chunk_done(ticket, hash))
            .await
            .map_err(|e| StoreError::Task(format!("writer task failed: {e}")))?
    }
}
