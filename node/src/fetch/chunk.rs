//! Sources of verified chunks, and the writer they fill.
//!
//! A source streams a chunk's bytes into a [`ChunkWriter`], which writes them at the chunk's
//! offset and hashes them on the way. What counts as "verified" depends on the source: bytes
//! from the Hub are the root of trust (the whole file is checked against the Hub's ETag before
//! it is published); bytes from a peer must also match the chunk hash of a signed manifest. The
//! Hub source lives here ([`HubSource`]); the swarm adds a peer source beside it.

use super::{FetchError, progress::FileProgress, progress::Progress, throttle::Throttle};
use crate::hub::{Attempt, HubClient, HubError, Location, RemoteFile, RepoRef, Subject};
use crate::store::{PartialFile, Ticket};
use bytes::BytesMut;
use sha2::Digest as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use swarm_protocol::hash::Sha256;

const WRITE_BUF: usize = 512 << 10;

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
    hasher: Option<sha2::Sha256>,
    buf: BytesMut,
    /// Bytes received so far, readable from outside (to take them back from progress if this
    /// copy loses a race).
    got: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Sink {
    File { pf: Arc<PartialFile>, ticket: Ticket },
    Memory(Vec<u8>),
}

impl ChunkWriter {
    /// A writer of chunk `index` covering `range` into the file.
    pub fn new(pf: Arc<PartialFile>, index: u32, range: Range<u64>) -> Self {
        let ticket = pf.ticket(index);
        Self::with_sink(Sink::File { pf, ticket }, index, range)
    }

    /// A writer that keeps the chunk in memory (an endgame duplicate, written only if it wins).
    pub fn in_memory(index: u32, range: Range<u64>) -> Self {
        let cap = (range.end - range.start) as usize;
        Self::with_sink(Sink::Memory(Vec::with_capacity(cap)), index, range)
    }

    fn with_sink(sink: Sink, index: u32, range: Range<u64>) -> Self {
        Self {
            sink,
            index,
            range,
            flushed: 0,
            hasher: Some(sha2::Sha256::new()),
            buf: BytesMut::with_capacity(WRITE_BUF),
            got: Arc::default(),
        }
    }

    /// Counts received bytes into `got` as well.
    pub fn counting(mut self, got: Arc<AtomicU64>) -> Self {
        self.got = got;
        self
    }

    /// Bytes received so far (written or buffered).
    pub fn received(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Bytes still wanted.
    pub fn remaining(&self) -> u64 {
        (self.range.end - self.range.start).saturating_sub(self.received())
    }

    /// Appends bytes (at most [`Self::remaining`] are taken).
    pub async fn push(&mut self, mut data: &[u8]) -> Result<(), FetchError> {
        let room = (self.remaining().min(data.len() as u64)) as usize;
        self.got.fetch_add(room as u64, Relaxed);
        if let Sink::Memory(v) = &mut self.sink {
            v.extend_from_slice(&data[..room]);
            if let Some(h) = &mut self.hasher {
                h.update(&data[..room]);
            }
            self.flushed += room as u64;
            return Ok(());
        }
        while !data.is_empty() {
            let room = WRITE_BUF - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= WRITE_BUF {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), FetchError> {
        let Sink::File { pf, ticket } = &self.sink else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let mut hasher = self.hasher.take().unwrap_or_default();
        let (pf, ticket) = (pf.clone(), *ticket);
        let offset = self.range.start + self.flushed;
        let (hasher, mut buf, res) = tokio::task::spawn_blocking(move || {
            hasher.update(&buf);
            let res = pf.write_at(ticket, offset, &buf);
            (hasher, buf, res)
        })
        .await
        .map_err(|e| FetchError::Internal(format!("writer task failed: {e}")))?;
        res?;
        self.flushed += buf.len() as u64;
        self.hasher = Some(hasher);
        buf.clear();
        self.buf = buf;
        Ok(())
    }

    /// Writes what is buffered and returns the chunk's sha256.
    pub async fn finish(&mut self) -> Result<Sha256, FetchError> {
        self.flush().await?;
        Ok(Sha256(self.hasher.take().unwrap_or_default().finalize().into()))
    }

    /// The bytes of an in-memory copy (empty for a writer into the file).
    pub fn into_bytes(self) -> Vec<u8> {
        match self.sink {
            Sink::File { .. } => Vec::new(),
            Sink::Memory(v) => v,
        }
    }

    /// Marks the chunk done in the file with `hash` (after [`Self::finish`]). Refused if
    /// another copy took the chunk over.
    pub async fn commit(&self, hash: Sha256) -> Result<(), FetchError> {
        let Sink::File { pf, ticket } = &self.sink else {
            return Err(FetchError::Internal("an in-memory chunk cannot be committed".into()));
        };
        let (pf, ticket) = (pf.clone(), *ticket);
        Ok(super::blocking(move || pf.chunk_done(ticket, hash)).await??)
    }
}

/// Fetches the chunks of one file from the Hub, with ranged GETs, retries and resume.
#[derive(Debug)]
pub struct HubSource {
    hub: HubClient,
    repo: RepoRef,
    commit: String,
    file: RemoteFile,
    location: tokio::sync::Mutex<Option<Location>>,
    multi_chunk: bool,
}

enum Step {
    Done,
    Retry { last: String, hint: Option<std::time::Duration> },
}

impl HubSource {
    /// A source for `file` of `repo` at `commit`.
    pub fn new(hub: HubClient, repo: RepoRef, commit: String, file: RemoteFile, chunks: u32) -> Self {
        Self { hub, repo, commit, file, location: tokio::sync::Mutex::new(None), multi_chunk: chunks > 1 }
    }

    fn subject(&self) -> Subject {
        self.repo.subject(Some(&self.commit), Some(&self.file.path))
    }

    /// Where to GET. A multi-chunk file is located once (one resolver request, then every range
    /// goes straight to the CDN); a single-chunk file is fetched through the resolve URL.
    async fn location(&self) -> Result<Location, HubError> {
        let mut slot = self.location.lock().await;
        if let Some(l) = &*slot {
            return Ok(l.clone());
        }
        let loc = if self.multi_chunk {
            self.hub.locate(&self.repo, &self.commit, &self.file).await?
        } else {
            Location { url: self.hub.resolve_url(&self.repo, &self.commit, &self.file.path), auth: true }
        };
        *slot = Some(loc.clone());
        Ok(loc)
    }

    /// Fills `w` with its chunk's bytes from the Hub. Retries transient failures with backoff,
    /// resuming from the last byte received; the attempt count restarts whenever bytes arrive.
    pub async fn fetch(
        &self,
        w: &mut ChunkWriter,
        throttle: &Throttle,
        progress: &Progress,
        fp: &FileProgress,
    ) -> Result<(), FetchError> {
        let policy = self.hub.retry_policy();
        let mut failures = 0u32;
        loop {
            if w.remaining() == 0 {
                return Ok(());
            }
            let before = w.received();
            let step = self.attempt(w, throttle, progress, fp).await?;
            let Step::Retry { last, hint } = step else {
                return Ok(());
            };
            if w.received() > before {
                failures = 0;
            }
            failures += 1;
            if last.starts_with("CDN answered") {
                *self.location.lock().await = None;
            }
            if failures >= policy.max_attempts {
                return Err(FetchError::Hub(HubError::Unreachable {
                    url: crate::hub::redact(&self.hub.resolve_url(&self.repo, &self.commit, &self.file.path)),
                    attempts: failures,
                    last,
                }));
            }
            let wait = policy.delay(failures - 1, hint);
            tracing::debug!(file = %self.file.path, chunk = w.index, attempt = failures, wait_ms = wait.as_millis() as u64, %last, "retrying range");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        w: &mut ChunkWriter,
        throttle: &Throttle,
        progress: &Progress,
        fp: &FileProgress,
    ) -> Result<Step, FetchError> {
        let loc = self.location().await?;
        let start = w.range.start + w.received();
        let opened = match self.hub.open(&loc, Some(start..w.range.end), &self.subject()).await {
            Ok(o) => o,
            Err(Attempt::Fatal(e)) => return Err(e.into()),
            Err(Attempt::Retry { last, hint }) => return Ok(Step::Retry { last, hint }),
        };
        let mut skip = 0u64;
        if opened.partial {
            if let Some(cr) = opened.response.headers().get(reqwest::header::CONTENT_RANGE) {
                let got = cr.to_str().ok().and_then(parse_content_range);
                if got.is_none_or(|(s, total)| s != start || total.is_some_and(|t| t != self.file.size)) {
                    return Err(FetchError::Hub(HubError::Malformed {
                        url: crate::hub::redact(&opened.location.url),
                        what: format!("asked for bytes from {start}, got Content-Range {cr:?}"),
                    }));
                }
            }
        } else {
            // The server ignored Range and sends the whole file: skip to where we are.
            skip = start;
            tracing::debug!(file = %self.file.path, skip, "server ignored Range; skipping to the wanted offset");
        }
        let mut resp = opened.response;
        loop {
            if w.remaining() == 0 {
                return Ok(Step::Done); // dropping the response closes a 200 we no longer need
            }
            let frame = match resp.chunk().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Ok(Step::Retry { last: "response ended early".into(), hint: None });
                }
                Err(e) => {
                    return Ok(Step::Retry { last: crate::hub::describe(&e), hint: None });
                }
            };
            let mut data = &frame[..];
            if skip > 0 {
                let n = (skip.min(data.len() as u64)) as usize;
                skip -= n as u64;
                data = &data[n..];
            }
            let take = (w.remaining().min(data.len() as u64)) as usize;
            if take == 0 {
                continue;
            }
            throttle.take(take).await;
            w.push(&data[..take]).await?;
            progress.received_from_hub(fp, take as u64);
        }
    }
}

/// `bytes S-E/T` → (S, Some(T)); `T` may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (s, _e) = range.split_once('-')?;
    Some((s.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, Some(100))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
