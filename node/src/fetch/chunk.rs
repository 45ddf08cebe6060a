//! The Hub as a source of chunks: ranged GETs with retries and resume, into a
//! [`ChunkWriter`]. Bytes from the Hub are the root of trust: the whole file is checked against
//! the Hub's ETag before it is published.

use super::{FetchError, progress::FileProgress, progress::Progress};
use crate::hub::{Attempt, HubClient, HubError, Location, RemoteFile, RepoRef, Subject};
use crate::store::ChunkWriter;
use crate::throttle::Throttle;

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
    Retry { last: String, hint: Option<std::time::Duration>, answered: bool },
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
            let Step::Retry { last, hint, answered } = step else {
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
                    answered,
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
        let mut conn = self.hub.data_connection();
        let opened = match conn.hub().open(&loc, Some(start..w.range.end), &self.subject()).await {
            Ok(o) => o,
            Err(Attempt::Fatal(e)) => return Err(e.into()),
            Err(Attempt::Retry { last, hint, cause }) => {
                return Ok(Step::Retry { last, hint, answered: cause == crate::hub::Cause::Answer });
            }
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
                // Dropping the response closes a 200 we no longer need, and its connection.
                if opened.partial {
                    conn.reuse();
                }
                return Ok(Step::Done);
            }
            let frame = match resp.chunk().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Ok(Step::Retry { last: "response ended early".into(), hint: None, answered: false });
                }
                Err(e) => {
                    return Ok(Step::Retry { last: crate::hub::describe(&e), hint: None, answered: false });
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
