//! Rate limits: logging for errors that can repeat at packet rate (the first occurrence is
//! logged, then at most one line per interval that says how many were not), and a token bucket
//! for work a peer can ask for at packet rate.

use std::time::{Duration, Instant};

/// One limiter per repeating log site (per thread or task: no sharing, no locks). The only one
/// in hypha: error lines use [`LogLimiter::allow`], summaries such as the node's route-change
/// report [`LogLimiter::due`].
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log this occurrence; `Some(n)` with the number suppressed since the last
    /// line.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.due(now) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Whether a line may go out at `now` (which then starts a new interval), without counting
    /// a suppressed occurrence: for a caller that asks on a schedule rather than per occurrence
    /// and keeps its own tally of what it held back.
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_sec`. One per task or link, no locks.
#[derive(Debug)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub const fn new(per_sec: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            per_sec: per_sec as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(10, 5);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 5);
        // 10 per second: one token every 100 ms, never more than the burst.
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(160)));
        assert!(!b.take(t0 + Duration::from_millis(170)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 5);
    }

    #[test]
    fn first_then_one_per_interval_with_the_suppressed_count() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn due_shares_the_interval_but_counts_nothing() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(l.due(t0));
        assert!(!l.due(t0 + Duration::from_secs(9)));
        assert_eq!(l.allow(t0 + Duration::from_secs(9)), None);
        assert!(l.due(t0 + Duration::from_secs(10)));
        // Only the `allow` call was counted; the interval restarted at 10 s.
        assert_eq!(l.allow(t0 + Duration::from_secs(20)), Some(1));
    }
}
