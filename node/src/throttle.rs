//! A byte-rate cap (`--max-download-rate`, `--max-upload-rate`): one token bucket (bytes per
//! second) shared by every transfer it governs, Hub and peers alike.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;

/// A shared byte-rate cap; a no-op when unlimited.
#[derive(Debug)]
pub struct Throttle {
    limiter: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl Throttle {
    /// A cap of `bytes_per_sec` (burst: one second's worth), or none.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let limiter = bytes_per_sec.and_then(|r| NonZeroU32::new(u32::try_from(r).unwrap_or(u32::MAX))).map(|rate| {
            let quota = Quota::per_second(rate).allow_burst(rate);
            (RateLimiter::direct(quota), rate)
        });
        Self { limiter }
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, mut n: usize) {
        let Some((limiter, burst)) = &self.limiter else {
            return;
        };
        while n > 0 {
            let step = n.min(burst.get() as usize);
            if let Some(k) = NonZeroU32::new(step as u32) {
                // `step <= burst`, so capacity is always sufficient.
                let _ = limiter.until_n_ready(k).await;
            }
            n -= step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn unlimited_never_waits_and_a_cap_holds_bytes_back() {
        let t = Throttle::new(None);
        let start = Instant::now();
        t.take(usize::MAX / 2).await;
        assert!(start.elapsed() < Duration::from_secs(1));

        // 1 MB/s with a one-second burst: 3 MB cannot pass in less than two seconds.
        let t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        for _ in 0..30 {
            t.take(100_000).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(1900), "{:?}", start.elapsed());
    }
}
