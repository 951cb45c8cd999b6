//! CoDel's control law (RFC 8289) for a link's queue: when data has waited longer than
//! [`TARGET`] for a whole [`INTERVAL`], drop one frame, then drop again at intervals that
//! shrink with the square root of the drops so far, until the wait falls below the target.
//! The inner flows' own congestion control sees those losses and slows down, so the standing
//! queue stays near the target instead of growing with every flow's window.
//!
//! The caller measures (sojourn time of each batch leaving the queue, and whether the queue is
//! then empty) and drops; this is the decision alone, with time passed in.

use std::time::{Duration, Instant};

/// The standing queue CoDel allows.
pub const TARGET: Duration = Duration::from_millis(5);
/// How long the wait must stay above [`TARGET`] before the first drop (about a worst-case RTT).
pub const INTERVAL: Duration = Duration::from_millis(100);

/// The state of one queue's controller.
#[derive(Debug, Clone)]
pub struct Codel {
    target: Duration,
    interval: Duration,
    /// When the wait, above the target since, will have been so for an interval.
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Option<Instant>,
    count: u32,
    last_count: u32,
}

impl Default for Codel {
    fn default() -> Codel {
        Codel::new(TARGET, INTERVAL)
    }
}

impl Codel {
    pub fn new(target: Duration, interval: Duration) -> Codel {
        Codel {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: None,
            count: 0,
            last_count: 0,
        }
    }

    /// A batch leaves the queue at `now` after waiting `sojourn`; `emptied` says the queue is
    /// empty behind it (a queue that drains is no standing queue). Returns whether to drop a
    /// frame of it.
    pub fn on_dequeue(&mut self, now: Instant, sojourn: Duration, emptied: bool) -> bool {
        let ok_to_drop = if sojourn < self.target || emptied {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(now + self.interval);
                    false
                }
                Some(t) => now >= t,
            }
        };
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return false;
            }
            let next = self.drop_next.unwrap_or(now);
            if now >= next {
                self.count = self.count.saturating_add(1);
                self.drop_next = Some(self.control_law(next));
                return true;
            }
            return false;
        }
        if !ok_to_drop {
            return false;
        }
        self.dropping = true;
        // Dropping again soon after the last dropping state: resume near its rate.
        let delta = self.count.saturating_sub(self.last_count);
        let recent = self
            .drop_next
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval * 16);
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = Some(self.control_law(now));
        true
    }

    /// Whether the controller is dropping (the wait has stayed above the target).
    pub fn dropping(&self) -> bool {
        self.dropping
    }

    fn control_law(&self, t: Instant) -> Instant {
        t + self.interval.div_f64(f64::from(self.count.max(1)).sqrt())
    }
}

/// The longest wait [`socket_wait`] reports: past it the figures are not a queue any more but a
/// stalled or broken connection, which is the link's business, not queue management's.
pub const MAX_SOCKET_WAIT: Duration = Duration::from_secs(2);

/// How long data written to a peer socket now waits before it reaches the far end, beyond the
/// path's own delay, from what the kernel says of the connection (`TCP_INFO`): its unsent bytes
/// at the rate it delivers (`notsent / delivery_rate`, bytes and bytes a second; 0 when the rate
/// is not known yet), plus the queue its flight stands in on the way (smoothed RTT above the
/// smallest RTT seen). Added to the time a batch waited in the link's own queue, it makes the
/// sojourn CoDel judges: the outer TCP's backlog is as much a standing queue as ours, and only
/// losses of the inner flows shorten it.
pub fn socket_wait(notsent: u32, delivery_rate: u64, rtt: Duration, min_rtt: Duration) -> Duration {
    let unsent = if delivery_rate > 0 {
        Duration::from_secs_f64(f64::from(notsent) / delivery_rate as f64)
    } else {
        Duration::ZERO
    };
    (unsent + rtt.saturating_sub(min_rtt)).min(MAX_SOCKET_WAIT)
}

/// How long the peer socket's unsent backlog may last at the connection's delivery rate: long
/// enough that the writer refills it before it runs dry, short enough that a sparse flow's
/// frame, picked first from the flow queues, does not wait behind it.
pub const SOCKET_BACKLOG: Duration = Duration::from_millis(2);
/// The smallest and largest unsent backlog (`TCP_NOTSENT_LOWAT`) a peer socket is given.
pub const MIN_NOTSENT_LOWAT: u32 = 16 * 1024;
pub const MAX_NOTSENT_LOWAT: u32 = 128 * 1024;

/// The unsent backlog to give a peer socket that delivers `delivery_rate` bytes a second
/// ([`SOCKET_BACKLOG`] of it, within the bounds, in steps of 4 KiB so that it settles; the
/// largest while the rate is not known). What the socket does not hold waits in the link's
/// flow queues, where queue management sees it and sparse flows pass it.
pub fn notsent_lowat(delivery_rate: u64) -> u32 {
    if delivery_rate == 0 {
        return MAX_NOTSENT_LOWAT;
    }
    let bytes = (delivery_rate as f64 * SOCKET_BACKLOG.as_secs_f64()) as u64;
    let stepped = bytes.div_ceil(4096) * 4096;
    stepped.clamp(u64::from(MIN_NOTSENT_LOWAT), u64::from(MAX_NOTSENT_LOWAT)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unsent_backlog_is_two_milliseconds_at_the_delivery_rate_within_bounds() {
        // 200 Mbit/s: 50 KB, in 4 KiB steps.
        assert_eq!(notsent_lowat(25_000_000), 53_248);
        // 50 Mbit/s: 12.5 KB, raised to the floor.
        assert_eq!(notsent_lowat(6_250_000), MIN_NOTSENT_LOWAT);
        // 8 Gbit/s and an unknown rate: the ceiling.
        assert_eq!(notsent_lowat(1_000_000_000), MAX_NOTSENT_LOWAT);
        assert_eq!(notsent_lowat(0), MAX_NOTSENT_LOWAT);
    }

    #[test]
    fn the_socket_wait_is_unsent_bytes_at_the_delivery_rate_plus_the_flight_queue() {
        // 128 KiB unsent at 25 MB/s (200 Mbit/s): 5.24 ms; RTT 30 ms over a 20 ms minimum.
        let w = socket_wait(131_072, 25_000_000, 30 * MS, 20 * MS);
        assert_eq!(w.as_micros(), 5_242 + 10_000);
        // No rate measured yet: the flight's queue alone.
        assert_eq!(socket_wait(131_072, 0, 30 * MS, 20 * MS), 10 * MS);
        // An RTT below the minimum (the minimum is older): no negative queue.
        assert_eq!(socket_wait(0, 25_000_000, 19 * MS, 20 * MS), Duration::ZERO);
        // A crawling connection: bounded.
        assert_eq!(socket_wait(u32::MAX, 1, MS, MS), MAX_SOCKET_WAIT);
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_short_wait_or_a_draining_queue_never_drops() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            // Below the target.
            assert!(!c.on_dequeue(t0 + i * MS, 4 * MS, false));
        }
        for i in 1000..2000 {
            // Above it, but the queue empties every time: a burst, not a standing queue.
            assert!(!c.on_dequeue(t0 + i * MS, 50 * MS, true));
        }
        assert!(!c.dropping());
    }

    #[test]
    fn a_standing_queue_is_dropped_from_after_an_interval_ever_faster() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        let mut drops = Vec::new();
        for i in 0..=1000u32 {
            let now = t0 + i * MS;
            if c.on_dequeue(now, 20 * MS, false) {
                drops.push(i);
            }
        }
        // The first drop an interval after the wait went above the target.
        assert_eq!(drops[0], 100);
        // Then at 100/sqrt(n) ms: 100 + 100/√1, + 100/√2, + 100/√3 …
        assert_eq!(&drops[1..4], &[200, 271, 329]);
        let gaps: Vec<u32> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] <= g[0]), "{gaps:?}");
        assert!(c.dropping());
        // The wait falls below the target: dropping stops at once.
        assert!(!c.on_dequeue(t0 + 1001 * MS, 2 * MS, false));
        assert!(!c.dropping());
    }

    #[test]
    fn dropping_again_soon_resumes_near_the_last_rate() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        let mut t = 0u32;
        while c.count < 10 {
            c.on_dequeue(t0 + t * MS, 20 * MS, false);
            t += 1;
        }
        let was = c.count;
        assert!(!c.on_dequeue(t0 + t * MS, 1 * MS, false));
        // Above the target again shortly after: the first drop comes an interval later, and
        // the count resumes where it was rather than at 1.
        let mut first = None;
        for i in (t + 1)..(t + 300) {
            if c.on_dequeue(t0 + i * MS, 20 * MS, false) {
                first = Some(i);
                break;
            }
        }
        assert_eq!(first, Some(t + 101));
        assert!(c.count > 1 && c.count <= was, "{} vs {was}", c.count);
    }
}
