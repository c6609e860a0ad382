//! The bandwidth cap of a migration's streams: a token bucket (pure arithmetic; the
//! caller sleeps for what [`Bucket::take`] answers).

use std::time::{Duration, Instant};

/// A token bucket: `rate` bytes a second, up to `burst` bytes ahead.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket for a cap in megabits per second (`None` or 0: no cap).
    pub fn from_mbps(mbps: Option<u64>, now: Instant) -> Option<Bucket> {
        let mbps = mbps.filter(|m| *m > 0)?;
        Some(Bucket::new(mbps.saturating_mul(1_000_000) / 8, now))
    }

    /// A bucket of `bytes_per_sec`, full (a tenth of a second's worth, 64 KiB at least).
    pub fn new(bytes_per_sec: u64, now: Instant) -> Bucket {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 10.0).max(65536.0);
        Bucket { rate, burst, tokens: burst, last: now }
    }

    /// Bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `n` bytes at `now`; answers how long to wait before sending them (the bucket
    /// goes into debt, so a later call waits for this one's too).
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.rate) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_converts_megabits_and_none_or_zero_is_no_cap() {
        let t = Instant::now();
        assert!(Bucket::from_mbps(None, t).is_none());
        assert!(Bucket::from_mbps(Some(0), t).is_none());
        assert_eq!(Bucket::from_mbps(Some(80), t).map(|b| b.rate()), Some(10_000_000));
    }

    fn ms(d: Duration) -> u64 {
        (d.as_secs_f64() * 1000.0).round() as u64
    }

    #[test]
    fn a_burst_passes_then_bytes_wait_for_their_share_of_the_rate() {
        let t = Instant::now();
        // 1 MB/s: a burst of 100 kB is free, the next 100 kB wait 0.1 s.
        let mut b = Bucket::new(1_000_000, t);
        assert_eq!(ms(b.take(100_000, t)), 0);
        assert_eq!(ms(b.take(100_000, t)), 100);
        // The debt carries: another 100 kB right away waits 0.2 s in all.
        assert_eq!(ms(b.take(100_000, t)), 200);
        // After the wait has passed (and 0.1 s more), the next 100 kB are free again.
        let later = t + Duration::from_millis(300);
        assert_eq!(ms(b.take(100_000, later)), 0);
        // Idle time never stores more than the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(ms(b.take(100_000, much_later)), 0);
        assert_eq!(ms(b.take(1_000_000, much_later)), 1000);
    }
}
