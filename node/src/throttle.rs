//! A byte-rate cap (`--max-download-rate`, `--max-upload-rate`): one token bucket (bytes per
//! second) shared by every transfer it governs, Hub and peers alike.
//!
//! The bucket is `governor`'s GCRA, read through tokio's clock (so tests run it in paused time)
//! and waited on with tokio's timer. Its burst is small (a twentieth of a second's worth, at
//! least [`MIN_BURST`]): a bucket that refills to a whole second while a download is between
//! files lets the next second through at twice the cap. It counts in [`UNIT`]s, not bytes:
//! the bucket keeps time in whole nanoseconds per cell, and a byte cell at 60 MB/s (16.7 ns,
//! kept as 16) let 4 % too much through.

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// The smallest burst, in bytes (a cap below it bursts its whole second).
pub const MIN_BURST: u64 = 16 * 1024;
/// Bytes per cell of the bucket.
pub const UNIT: u64 = 1024;

/// Time for the bucket: tokio's clock, as the time since the bucket was made.
#[derive(Debug, Clone)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A shared byte-rate cap; a no-op when unlimited.
#[derive(Debug)]
pub struct Throttle {
    limiter: Option<Limiter>,
}

#[derive(Debug)]
struct Limiter {
    bucket: Bucket,
    clock: TokioClock,
    /// The burst, in cells: the most one check may take.
    burst: NonZeroU32,
    /// Bytes taken but not yet charged as a whole cell.
    carry: std::sync::Mutex<u64>,
}

impl Throttle {
    /// A cap of `bytes_per_sec`, or none.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let limiter = bytes_per_sec.filter(|&r| r > 0).map(|rate| {
            let cells = |bytes: u64| NonZeroU32::new(u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX));
            let per_sec = cells(rate).unwrap_or(NonZeroU32::MIN);
            let burst = cells((rate / 20).max(MIN_BURST).min(rate)).unwrap_or(NonZeroU32::MIN);
            let clock = TokioClock(tokio::time::Instant::now());
            let bucket = RateLimiter::direct_with_clock(Quota::per_second(per_sec).allow_burst(burst), clock.clone());
            Limiter { bucket, clock, burst, carry: std::sync::Mutex::new(0) }
        });
        Self { limiter }
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let Some(l) = &self.limiter else {
            return;
        };
        let mut cells = {
            let mut carry = l.carry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let bytes = *carry + n as u64;
            *carry = bytes % UNIT;
            bytes / UNIT
        };
        while cells > 0 {
            let step = cells.min(u64::from(l.burst.get()));
            let Some(k) = NonZeroU32::new(step as u32) else { return };
            // `step <= burst`, so the bucket can always hold it: `Err` is impossible.
            while let Ok(Err(not_yet)) = l.bucket.check_n(k) {
                tokio::time::sleep(not_yet.wait_time_from(l.clock.now())).await;
            }
            cells -= step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let t = Throttle::new(None);
        let start = Instant::now();
        t.take(usize::MAX / 2).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// Several transfers share one cap; over every 5 s window after the first second, what
    /// passed is within 3 % of the cap, including after an idle pause (the bucket refills only
    /// a little while nothing is asked of it).
    #[tokio::test(start_paused = true)]
    async fn a_cap_holds_over_every_window_shared_and_after_idling() {
        for rate in [100_000u64, 1_000_000, 30_000_000, 60_000_000] {
            let t = Arc::new(Throttle::new(Some(rate)));
            let start = Instant::now();
            let log = Arc::new(Mutex::new(Vec::<(Duration, usize)>::new()));
            let mut tasks = Vec::new();
            for i in 0..4usize {
                let (t, log) = (t.clone(), log.clone());
                tasks.push(tokio::spawn(async move {
                    // Reads of several sizes, none longer than a twentieth of a second at the cap
                    // (as a socket read is), so that the log is fine-grained enough to judge.
                    let step = [4 * 1024, 16 * 1024, 64 * 1024, 128 * 1024][i].min(rate as usize / 20);
                    loop {
                        let at = start.elapsed();
                        if at >= Duration::from_secs(30) {
                            return;
                        }
                        // Everyone goes quiet for 3 s in the middle (a download between files).
                        if at >= Duration::from_secs(12) && at < Duration::from_secs(15) {
                            tokio::time::sleep(Duration::from_secs(15) - at).await;
                            continue;
                        }
                        t.take(step).await;
                        log.lock().expect("log").push((start.elapsed(), step));
                    }
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            let log = log.lock().expect("log");
            for from_ms in (1000..25_000).step_by(250) {
                let (a, b) = (Duration::from_millis(from_ms), Duration::from_millis(from_ms + 5000));
                let passed: usize = log.iter().filter(|(at, _)| *at > a && *at <= b).map(|(_, n)| n).sum();
                let ratio = passed as f64 / (rate as f64 * 5.0);
                assert!(ratio <= 1.03, "cap {rate} B/s, {a:?}..{b:?}: {passed} B is {ratio:.3}× the cap");
                // Windows that miss the quiet 3 s are busy throughout: the cap is also reached.
                let busy = b <= Duration::from_secs(12) || a >= Duration::from_secs(15);
                assert!(!busy || ratio >= 0.97, "cap {rate} B/s, {a:?}..{b:?}: {passed} B is only {ratio:.3}× the cap");
            }
        }
    }
}
