//! The emulator's core: what happens to each packet, with no I/O and no clock. The shell
//! ([`super::Wan`]) hands in packets with [`Emulator::handle_packet`] and the current time, and
//! takes out the ones that are due with [`Emulator::poll_due`], waking at
//! [`Emulator::next_due`]. Same inputs and seed, same outputs: the unit tests drive it with a
//! virtual clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::spec::{QueueLimit, WanSpec};

/// Packets held at most (bottleneck plus delay line), whatever the spec: a bound on memory
/// (about 100 MB of full-size packets) for a long delay at a high rate. More are dropped and
/// counted as `queue_full`.
pub const MAX_HELD: usize = 65_536;

/// A small, fast, seedable generator (splitmix64): good enough for loss and jitter decisions,
/// and reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (never for 0, always for 1).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// What happened to the packets of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets handed in.
    pub packets_in: u64,
    /// Packets that came out (left the delay line).
    pub packets_out: u64,
    /// IP bytes handed in / out.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Dropped by random or bursty loss.
    pub lost: u64,
    /// Tail-dropped because the bottleneck queue was full.
    pub queue_full: u64,
    /// Packets that skipped the delay line and overtook at least one delayed packet.
    pub reordered: u64,
}

impl DirStats {
    /// Packets inside the emulator now (in the queue or the delay line).
    pub fn held(&self) -> u64 {
        self.packets_in - self.packets_out - self.lost - self.queue_full
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Lost,
    QueueFull,
}

/// One direction of the link: loss, then the bottleneck (rate and bounded FIFO), then the delay
/// line (delay ± jitter, FIFO, except packets that `reorder` sends early).
#[derive(Debug)]
pub struct Emulator<T> {
    spec: WanSpec,
    limit: Option<QueueLimit>,
    rng: Rng,
    /// Gilbert–Elliott state.
    bad: bool,
    /// When the bottleneck finishes sending the last packet admitted.
    busy_until: Option<Instant>,
    /// Departure time and size of the packets still in the bottleneck (being sent or waiting).
    queue: VecDeque<(Instant, u64)>,
    queued_bytes: u64,
    /// The delay line, due times non-decreasing.
    delayed: VecDeque<(Instant, T)>,
    /// Packets that skip the delay line, due at their departure (non-decreasing too).
    early: VecDeque<(Instant, T)>,
    stats: DirStats,
}

impl<T> Emulator<T> {
    /// A fresh direction; `seed` is used when the spec has none.
    pub fn new(spec: WanSpec, seed: u64) -> Emulator<T> {
        let rng = Rng::new(spec.seed.unwrap_or(seed));
        Emulator {
            limit: spec.queue_limit(),
            spec,
            rng,
            bad: false,
            busy_until: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            delayed: VecDeque::new(),
            early: VecDeque::new(),
            stats: DirStats::default(),
        }
    }

    pub fn spec(&self) -> &WanSpec {
        &self.spec
    }

    pub fn stats(&self) -> DirStats {
        self.stats
    }

    /// Takes in a packet of `len` IP bytes that arrived at `now`. `Err` says why it was dropped
    /// (already counted) and hands the packet back, so its buffer can be reused.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        len: usize,
        packet: T,
    ) -> Result<(), (DropReason, T)> {
        let len = len as u64;
        self.stats.packets_in += 1;
        self.stats.bytes_in += len;
        if self.lose() {
            self.stats.lost += 1;
            return Err((DropReason::Lost, packet));
        }
        let departure = match self.spec.rate_bps {
            None => now,
            Some(rate) => {
                while self.queue.front().is_some_and(|&(t, _)| t <= now) {
                    let (_, l) = self.queue.pop_front().unwrap_or((now, 0));
                    self.queued_bytes -= l;
                }
                let full = match self.limit {
                    Some(QueueLimit::Bytes(b)) => self.queued_bytes + len > b,
                    Some(QueueLimit::Packets(p)) => self.queue.len() as u64 >= p,
                    None => false,
                };
                if full || self.held() >= MAX_HELD {
                    self.stats.queue_full += 1;
                    return Err((DropReason::QueueFull, packet));
                }
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let departure = start + Duration::from_nanos(len * 8 * 1_000_000_000 / rate);
                self.busy_until = Some(departure);
                self.queue.push_back((departure, len));
                self.queued_bytes += len;
                departure
            }
        };
        if self.spec.rate_bps.is_none() && self.held() >= MAX_HELD {
            self.stats.queue_full += 1;
            return Err((DropReason::QueueFull, packet));
        }
        if self.rng.chance(self.spec.reorder) {
            if self.delayed.back().is_some_and(|&(t, _)| t > departure) {
                self.stats.reordered += 1;
            }
            self.early.push_back((departure, packet));
            return Ok(());
        }
        let mut due = departure + self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let j = self.spec.jitter.as_secs_f64() * (2.0 * self.rng.unit() - 1.0);
            due = if j >= 0.0 {
                due + Duration::from_secs_f64(j)
            } else {
                due - Duration::from_secs_f64(-j)
            };
        }
        // FIFO: never before the packet in front.
        if let Some(&(last, _)) = self.delayed.back() {
            due = due.max(last);
        }
        self.delayed.push_back((due, packet));
        Ok(())
    }

    /// The next packet due at or before `now`, earliest first.
    pub fn poll_due(&mut self, now: Instant) -> Option<T> {
        let d = self.delayed.front().map(|p| p.0);
        let e = self.early.front().map(|p| p.0);
        let from_early = match (d, e) {
            (_, Some(e)) if e <= now && d.is_none_or(|d| e <= d) => true,
            (Some(d), _) if d <= now => false,
            _ => return None,
        };
        let (_, packet) = if from_early {
            self.early.pop_front()?
        } else {
            self.delayed.pop_front()?
        };
        self.stats.packets_out += 1;
        Some(packet)
    }

    /// Records that a packet [`Emulator::poll_due`] gave out had `len` bytes.
    pub fn count_out_bytes(&mut self, len: usize) {
        self.stats.bytes_out += len as u64;
    }

    /// When the next packet is due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.delayed.front(), self.early.front()) {
            (Some(d), Some(e)) => Some(d.0.min(e.0)),
            (Some(d), None) => Some(d.0),
            (None, Some(e)) => Some(e.0),
            (None, None) => None,
        }
    }

    /// Packets held in the delay line (the bottleneck's are there too: a packet enters the
    /// delay line with its departure time already fixed).
    pub fn held(&self) -> usize {
        self.delayed.len() + self.early.len()
    }

    /// Whether this packet is lost: bursty loss (state step, then the bad state's loss), then
    /// independent loss.
    fn lose(&mut self) -> bool {
        let mut lost = false;
        if let Some(g) = self.spec.burst_loss {
            self.bad = if self.bad {
                !self.rng.chance(g.r)
            } else {
                self.rng.chance(g.p)
            };
            lost = self.bad && self.rng.chance(g.bad_loss);
        }
        lost | self.rng.chance(self.spec.loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emu(spec: &str) -> Emulator<u32> {
        Emulator::new(spec.parse().unwrap(), 1)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` packets of `len` bytes every `gap` from `t0`, and returns (index, exit time) of
    /// those that came out, polling every 10 µs of virtual time.
    fn run(
        e: &mut Emulator<u32>,
        t0: Instant,
        n: u32,
        len: usize,
        gap: Duration,
    ) -> Vec<(u32, Duration)> {
        let mut out = Vec::new();
        let step = Duration::from_micros(10);
        let mut next_in = 0;
        let mut t = t0;
        while next_in < n || e.next_due().is_some() {
            while next_in < n && t0 + gap * next_in <= t {
                let _ = e.handle_packet(t, len, next_in);
                next_in += 1;
            }
            while let Some(p) = e.poll_due(t) {
                out.push((p, t - t0));
            }
            t += step;
        }
        out
    }

    /// Hands in one packet and takes out what is due: whether it was lost.
    fn lost(e: &mut Emulator<u32>, now: Instant, i: u32) -> bool {
        let r = e.handle_packet(now, 100, i);
        while e.poll_due(now).is_some() {}
        match r {
            Ok(()) => false,
            Err((DropReason::Lost, _)) => true,
            Err((why, _)) => panic!("{why:?}"),
        }
    }

    #[test]
    fn delay_only_keeps_order_and_adds_the_delay() {
        let mut e = emu("delay=20ms");
        let t0 = Instant::now();
        let out = run(&mut e, t0, 100, 1000, Duration::from_micros(100));
        assert_eq!(out.len(), 100);
        for (i, &(p, at)) in out.iter().enumerate() {
            assert_eq!(p, i as u32);
            let sent = Duration::from_micros(100) * p;
            let d = at - sent;
            assert!(
                d >= ms(20) && d < ms(20) + Duration::from_micros(20),
                "{d:?}"
            );
        }
    }

    #[test]
    fn rate_spaces_packets_and_the_queue_tail_drops() {
        // 1500-byte packets at 12 Mbit/s leave every 1 ms; 10 packets of queue.
        let mut e = emu("rate=12mbit,queue=15000b");
        let t0 = Instant::now();
        let out = run(&mut e, t0, 100, 1500, Duration::ZERO);
        let s = e.stats();
        assert_eq!(s.queue_full, 90, "{s:?}");
        assert_eq!(out.len(), 10);
        for (i, &(_, at)) in out.iter().enumerate() {
            let want = ms(i as u64 + 1);
            assert!(
                at >= want && at < want + Duration::from_micros(20),
                "{i}: {at:?}"
            );
        }
        // Once drained, the queue takes packets again.
        let t1 = t0 + ms(50);
        assert!(e.handle_packet(t1, 1500, 7).is_ok());
    }

    #[test]
    fn packet_limit() {
        let mut e = emu("rate=12mbit,queue=3p");
        let t0 = Instant::now();
        let ok = (0..10)
            .filter(|&i| e.handle_packet(t0, 100, i).is_ok())
            .count();
        assert_eq!(ok, 3);
    }

    /// Delays stay within `delay ± jitter` and order is kept; packets closer than the jitter
    /// wait for the one in front, which raises their mean delay, so the mean is checked on
    /// packets spaced wider than twice the jitter.
    #[test]
    fn jitter_stays_within_bounds_and_fifo() {
        for (gap, check_mean) in [(ms(1), false), (ms(11), true)] {
            let mut e = emu("delay=10ms,jitter=5ms,seed=3");
            let t0 = Instant::now();
            let out = run(&mut e, t0, 2000, 100, gap);
            assert_eq!(out.len(), 2000);
            for w in out.windows(2) {
                assert!(w[0].0 < w[1].0, "order kept");
            }
            let mut sum = 0.0;
            for &(p, at) in &out {
                let d = at - gap * p;
                assert!(
                    d >= ms(5) && d <= ms(15) + Duration::from_micros(20),
                    "{d:?}"
                );
                sum += d.as_secs_f64();
            }
            let mean = sum / 2000.0;
            if check_mean {
                assert!((mean - 0.010).abs() < 0.0003, "mean delay {mean}");
            } else {
                assert!(mean > 0.010, "mean delay {mean}: FIFO holds packets back");
            }
        }
    }

    #[test]
    fn loss_rate_and_seed_reproducibility() {
        let go = |seed| {
            let mut e: Emulator<u32> = Emulator::new("loss=5%".parse().unwrap(), seed);
            let t0 = Instant::now();
            (0..100_000)
                .map(|i| lost(&mut e, t0, i))
                .collect::<Vec<_>>()
        };
        let a = go(9);
        assert_eq!(a, go(9));
        assert_ne!(a, go(10));
        let lost = a.iter().filter(|&&l| l).count() as f64 / a.len() as f64;
        assert!((lost - 0.05).abs() < 0.003, "{lost}");
    }

    #[test]
    fn bursty_loss_has_the_mean_and_the_bursts() {
        let mut e = emu("gloss=1%:20%,seed=5");
        let t0 = Instant::now();
        let drops: Vec<bool> = (0..200_000).map(|i| lost(&mut e, t0, i)).collect();
        let n = drops.iter().filter(|&&l| l).count() as f64;
        let mean = n / drops.len() as f64;
        assert!((mean - 0.01 / 0.21).abs() < 0.005, "{mean}");
        let runs = drops.windows(2).filter(|w| w[1] && !w[0]).count() as f64;
        let run_len = n / runs;
        assert!((run_len - 5.0).abs() < 0.5, "mean burst {run_len}");
    }

    #[test]
    fn reorder_sends_some_early() {
        let mut e = emu("delay=10ms,reorder=10%,seed=1");
        let t0 = Instant::now();
        let out = run(&mut e, t0, 1000, 100, ms(1));
        assert_eq!(out.len(), 1000);
        let s = e.stats();
        assert!((60..=140).contains(&s.reordered), "{s:?}");
        let early = out
            .iter()
            .filter(|&&(p, at)| at - ms(1) * p < ms(1))
            .count() as u64;
        assert!(early >= s.reordered, "{early} {s:?}");
        let inversions = out.windows(2).filter(|w| w[0].0 > w[1].0).count() as u64;
        assert!(inversions >= 1, "{inversions} {s:?}");
        assert_eq!(s.packets_out, 1000);
        assert_eq!(s.held(), 0);
    }
}
