//! When a peer that is not connected is dialled again (`docs/protocol.md` §3.1): soon after the
//! first failure, so that nodes started together find each other in well under a second, then
//! backing off exponentially, with jitter so that the peers of a node that went away do not all
//! come back in the same instant.

use std::time::Duration;

/// The delay after the first failure.
pub(crate) const FIRST: Duration = Duration::from_millis(200);
/// The longest delay while a peer is failing for a short while.
pub(crate) const CAP: Duration = Duration::from_secs(5);
/// After this many failures in a row (about a minute of them) a peer is dialled less often.
pub(crate) const PERSISTENT_AFTER: u32 = 16;
/// The delay for peers that keep failing.
pub(crate) const PERSISTENT_CAP: Duration = Duration::from_secs(30);
/// A connection that lived at least this long ends a run of failures: its close is not one.
pub(crate) const STABLE: Duration = Duration::from_secs(10);

/// The delay before the next dial after `failures` failures in a row (a failed dial, or a
/// connection that closed before it was [`STABLE`]), spread by `jitter` (any value) over
/// [0.75, 1.25) of the nominal delay: 200 ms, 400 ms, 800 ms, 1.6 s, 3.2 s, then 5 s, and 30 s
/// from the [`PERSISTENT_AFTER`]th failure on.
pub(crate) fn delay(failures: u32, jitter: u16) -> Duration {
    let nominal = if failures >= PERSISTENT_AFTER {
        PERSISTENT_CAP
    } else {
        let doublings = failures.saturating_sub(1).min(16);
        FIRST.saturating_mul(1 << doublings).min(CAP)
    };
    // (0.75 + 0.5 * jitter / 65536) * nominal, in integer arithmetic.
    let micros = nominal.as_micros() as u64;
    let spread = micros * (3 * 65_536 + 2 * u64::from(jitter)) / (4 * 65_536);
    Duration::from_micros(spread)
}

/// A jitter sample for [`delay`].
pub(crate) fn jitter() -> u16 {
    let mut b = [0u8; 2];
    // Without randomness the delays are merely not spread.
    let _ = getrandom::fill(&mut b);
    u16::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID: u16 = 32_768;

    #[test]
    fn the_schedule_doubles_from_200_ms_to_5_s_then_30_s() {
        let ms = |f| delay(f, MID).as_millis();
        assert_eq!(
            (1..=7).map(ms).collect::<Vec<_>>(),
            [200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(ms(PERSISTENT_AFTER - 1), 5000);
        assert_eq!(ms(PERSISTENT_AFTER), 30_000);
        assert_eq!(ms(u32::MAX), 30_000);
        // No failures yet (a connection that was stable closed): as after the first.
        assert_eq!(ms(0), 200);
    }

    #[test]
    fn jitter_spreads_a_quarter_either_way() {
        assert_eq!(delay(1, 0), Duration::from_millis(150));
        assert!(delay(1, u16::MAX) < Duration::from_millis(250));
        assert!(delay(1, u16::MAX) > Duration::from_millis(249));
        assert_eq!(delay(6, 0), Duration::from_millis(3750));
        assert!(delay(PERSISTENT_AFTER, u16::MAX) < Duration::from_millis(37_500));
    }
}
