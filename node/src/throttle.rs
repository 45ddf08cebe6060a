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
use std::sync::Arc;
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

/// A shared byte-rate cap; a no-op when unlimited. The cap may change while transfers run
/// ([`Throttle::set_rate`], for bandwidth schedules): they follow it within a burst.
#[derive(Debug)]
pub struct Throttle {
    limiter: std::sync::RwLock<Option<Arc<Limiter>>>,
}

#[derive(Debug)]
struct Limiter {
    bucket: Bucket,
    clock: TokioClock,
    /// The burst, in cells: the most one check may take.
    burst: NonZeroU32,
    /// Bytes per second.
    rate: u64,
    /// Bytes taken but not yet charged as a whole cell.
    carry: std::sync::Mutex<u64>,
}

impl Throttle {
    /// A cap of `bytes_per_sec`, or none.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Self { limiter: std::sync::RwLock::new(Self::limiter(bytes_per_sec)) }
    }

    /// Changes the cap (`None`: no cap). Transfers waiting on the old one follow the new one
    /// from their next step (a twentieth of a second's worth at most).
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        *self.limiter.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Self::limiter(bytes_per_sec);
    }

    /// The cap now, bytes per second.
    pub fn rate(&self) -> Option<u64> {
        self.current().map(|l| l.rate)
    }

    fn current(&self) -> Option<Arc<Limiter>> {
        self.limiter.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn limiter(bytes_per_sec: Option<u64>) -> Option<Arc<Limiter>> {
        bytes_per_sec.filter(|&r| r > 0).map(|rate| {
            let cells = |bytes: u64| NonZeroU32::new(u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX));
            let per_sec = cells(rate).unwrap_or(NonZeroU32::MIN);
            let burst = cells((rate / 20).max(MIN_BURST).min(rate)).unwrap_or(NonZeroU32::MIN);
            let clock = TokioClock(tokio::time::Instant::now());
            let bucket = RateLimiter::direct_with_clock(Quota::per_second(per_sec).allow_burst(burst), clock.clone());
            Arc::new(Limiter { bucket, clock, burst, rate, carry: std::sync::Mutex::new(0) })
        })
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let Some(mut l) = self.current() else {
            return;
        };
        let mut cells = {
            let mut carry = l.carry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let bytes = *carry + n as u64;
            *carry = bytes % UNIT;
            bytes / UNIT
        };
        while cells > 0 {
            // The cap may have changed (or gone) since the last step.
            match self.current() {
                Some(now) => l = now,
                None => return,
            }
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

/// Reads a rate: a number with an optional unit, decimal (`K`, `M`, `G`) or binary (`Ki`, `Mi`,
/// `Gi`), and an optional `B`, `b` or `/s` (`50M`, `1.5G/s`, `64MiB`), in bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match &t[i..] {
                "k" | "K" => 1_000,
                "M" | "m" => 1_000_000,
                "G" | "g" => 1_000_000_000,
                "Ki" | "ki" => 1 << 10,
                "Mi" | "mi" => 1 << 20,
                "Gi" | "gi" => 1 << 30,
                other => return Err(format!("unknown unit '{other}' in rate '{s}' (use K, M, G, Ki, Mi or Gi)")),
            };
            (&t[..i], mult)
        }
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a rate (e.g. 50M)"))?;
    let bytes = (n * mult as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("rate '{s}' must be at least 1 byte per second"));
    }
    Ok(bytes as u64)
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
