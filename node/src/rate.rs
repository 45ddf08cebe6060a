//! Transfer rates over a sliding window (the last few seconds), not since the start: what
//! progress bars, ETAs and `status` show.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back a rate looks.
pub const WINDOW: Duration = Duration::from_secs(5);
/// The shortest stretch a rate is given for (less is noise).
pub const MIN_SPAN: Duration = Duration::from_secs(1);

/// Samples of a growing byte count; the rate is the growth across the window.
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Records that the count was `total` at `at` (samples come in time order).
    pub fn push(&mut self, at: Instant, total: u64) {
        self.samples.push_back((at, total));
        // Keep one sample at or before the window's start, so the window is whole.
        while self.samples.len() > 2 && self.samples[1].0 + WINDOW <= at {
            self.samples.pop_front();
        }
    }

    /// Bytes per second across the window, once it spans [`MIN_SPAN`].
    pub fn rate(&self) -> Option<f64> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.checked_duration_since(t0)?;
        (span >= MIN_SPAN).then(|| b1.saturating_sub(b0) as f64 / span.as_secs_f64())
    }

    /// Time to move `left` more bytes at [`Self::rate`]; `None` without a rate or while
    /// nothing moves.
    pub fn eta(&self, left: u64) -> Option<Duration> {
        let r = self.rate()?;
        (r >= 1.0).then(|| Duration::from_secs_f64((left as f64 / r).min(1e7)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_seconds_not_the_average() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RateWindow::default();
        w.push(at(0), 0);
        w.push(at(500), 5_000_000);
        assert_eq!(w.rate(), None, "half a second is too little to say");
        // 10 MB/s for 20 s, then 40 MB/s for 10 s: the average since start is 20 MB/s.
        let mut total = 0;
        for tick in 1..=300u64 {
            total += if tick <= 200 { 1_000_000 } else { 4_000_000 };
            w.push(at(tick * 100), total);
        }
        let r = w.rate().expect("rate");
        assert!((r - 40e6).abs() < 1e3, "{r}");
        assert_eq!(w.eta(80_000_000), Some(Duration::from_secs(2)));
        // It stops: within one window the rate falls to zero, and there is no ETA.
        for tick in 301..=360u64 {
            w.push(at(tick * 100), total);
        }
        assert_eq!(w.rate(), Some(0.0));
        assert_eq!(w.eta(1), None);
    }
}
