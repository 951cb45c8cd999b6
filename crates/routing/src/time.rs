//! The core's notion of time: an opaque instant supplied by the caller.

use core::ops::Add;
use std::time::Duration;

/// An instant on the caller's clock, in microseconds since an epoch the caller chose.
///
/// The core never reads a clock; the shell maps `std::time::Instant` to `Time` (for example as the
/// time since it started), and the simulator uses a virtual clock. All arithmetic saturates, so no
/// input can make it panic.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);
    /// Later than any real instant; used as "never".
    pub const MAX: Time = Time(u64::MAX);

    pub const fn from_micros(us: u64) -> Time {
        Time(us)
    }
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }
    pub const fn from_secs(s: u64) -> Time {
        Time(s.saturating_mul(1_000_000))
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    /// Seconds as a float, for reports.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(
            Time::from_secs(1).saturating_since(Time::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(
            Time::from_millis(1500).saturating_since(Time::from_secs(1)),
            Duration::from_millis(500)
        );
    }
}
