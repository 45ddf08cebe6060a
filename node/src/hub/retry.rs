//! When and how long to wait before asking the Hub again.
//!
//! Exponential backoff with full jitter (AWS's "full jitter": a uniform draw in
//! `0..min(cap, base·2^attempt)`), except when the server says how long to wait: the
//! `RateLimit` header's `t` when `r=0` (the IETF draft the Hub follows) or `Retry-After` in
//! seconds. Those hints are obeyed, capped at [`MAX_HINT`] so a broken header cannot park us.

use rand::Rng as _;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::time::Duration;

/// The longest server-requested pause we honour.
pub const MAX_HINT: Duration = Duration::from_secs(300);

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request before giving up (the count restarts whenever bytes arrive).
    pub max_attempts: u32,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 7, base: Duration::from_millis(500), cap: Duration::from_secs(16) }
    }
}

impl RetryPolicy {
    /// How long to wait after failed attempt number `attempt` (0-based), given the server's hint.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(h) = hint {
            return h.min(MAX_HINT);
        }
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.cap);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}

/// Statuses worth asking again: 408, 429 and the 5xx that mean "try later".
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The server's own idea of when to come back, from `RateLimit` (`r=0;t=N`) or `Retry-After`.
/// Like `huggingface_hub`, one second is added so the window has surely reset.
pub fn server_hint(headers: &HeaderMap) -> Option<Duration> {
    if let Some(v) = headers.get("ratelimit").and_then(|v| v.to_str().ok()) {
        let mut remaining = None;
        let mut reset = None;
        for param in v.split(';').map(str::trim) {
            if let Some(r) = param.strip_prefix("r=") {
                remaining = r.trim().parse::<u64>().ok();
            } else if let Some(t) = param.strip_prefix("t=") {
                reset = t.trim().parse::<u64>().ok();
            }
        }
        if let (Some(0), Some(t)) = (remaining, reset) {
            return Some(Duration::from_secs(t + 1));
        }
    }
    let secs = headers.get("retry-after")?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let p = RetryPolicy { max_attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(800) };
        for attempt in 0..10 {
            let ceiling = Duration::from_millis(100 * (1 << attempt.min(3)));
            for _ in 0..50 {
                assert!(p.delay(attempt, None) <= ceiling);
            }
        }
    }

    #[test]
    fn hints_come_from_ratelimit_then_retry_after() {
        let mut h = HeaderMap::new();
        assert_eq!(server_hint(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(server_hint(&h), Some(Duration::from_secs(4)));
        h.insert("ratelimit", HeaderValue::from_static("\"resolvers\";r=0;t=7"));
        assert_eq!(server_hint(&h), Some(Duration::from_secs(8)));
        // Quota left: the RateLimit header gives no pause, Retry-After still does.
        h.insert("ratelimit", HeaderValue::from_static("\"api\";r=12;t=7"));
        assert_eq!(server_hint(&h), Some(Duration::from_secs(4)));
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0, Some(Duration::from_secs(9999))), MAX_HINT);
    }
}
