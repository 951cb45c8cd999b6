//! Flow queueing for a link's queue, after fq_codel (RFC 8290): frames are hashed by flow into
//! separate queues, served by deficit round robin one quantum of bytes at a time, and a flow
//! that has nothing queued when its next frame arrives (a ping, an SSH keystroke, a DNS query,
//! the ACKs of a download) goes on the list of new flows, which is served before the bulk
//! flows. Each queue has its own CoDel controller (`crate::codel`), so a bulk flow's standing
//! queue costs that flow its frames, and nobody else's.
//!
//! The wait in the peer socket and the outer connection's flight (`codel::socket_wait`) is
//! charged to the flows being served from the list of old (backlogged) flows only: it is theirs
//! to shed, and a sparse flow's lone frame never counts as a standing queue.
//!
//! Pure: the caller hashes frames ([`flow_of_packet`], [`flow_of_pair`]), passes time in and
//! writes what [`FlowQueues::pop`] hands out.

use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::codel::{Codel, TARGET};

/// Flow queues per link. Collisions only make two flows share a queue (and its fairness).
pub const BUCKETS: usize = 256;
/// Bytes a flow may send per round before the next flow's turn: about one full-size frame.
pub const QUANTUM: u32 = 1_500;

/// The tag bit that says the frame's inner packet is ECN-capable (ECT(0) or ECT(1)).
pub const TAG_ECT: u32 = 1 << 31;

/// Which list a flow is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Idle,
    New,
    Old,
}

#[derive(Debug)]
struct Flow<T> {
    /// Each frame, its length and ECN capability, and when it was queued.
    queue: VecDeque<(T, u32, bool, Instant)>,
    deficit: i64,
    list: List,
    codel: Codel,
}

impl<T> Flow<T> {
    fn new() -> Flow<T> {
        Flow {
            queue: VecDeque::new(),
            deficit: 0,
            list: List::Idle,
            codel: Codel::default(),
        }
    }
}

/// What [`FlowQueues::pop`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Out<T> {
    /// Write this frame (of this many bytes).
    Send(T, u32),
    /// CoDel drops this frame: its flow's queue stood above the target for an interval.
    Drop(T, u32),
    /// Write this frame, and tell its flow of congestion as CoDel would by a drop: its inner
    /// packet is ECN-capable, so a later packet of the flow gets a CE mark instead
    /// ([`CeMarks`]). The tag is the flow's.
    Mark(T, u32, u32),
}

/// The flow queues of one link, holding frames of type `T` (the caller's handle on them).
#[derive(Debug)]
pub struct FlowQueues<T> {
    /// Allocated on first use: most links never queue.
    flows: Vec<Flow<T>>,
    new: VecDeque<u16>,
    old: VecDeque<u16>,
    bytes: usize,
    frames: usize,
    /// Frames CoDel dropped, and frames it chose for a CE mark, so far.
    pub drops: u64,
    pub marks: u64,
}

impl<T> Default for FlowQueues<T> {
    fn default() -> FlowQueues<T> {
        FlowQueues {
            flows: Vec::new(),
            new: VecDeque::new(),
            old: VecDeque::new(),
            bytes: 0,
            frames: 0,
            drops: 0,
            marks: 0,
        }
    }
}

impl<T> FlowQueues<T> {
    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Queues a frame of `len` bytes of flow `tag` (its hash; [`TAG_ECT`] is ignored here),
    /// queued at `at`.
    pub fn push(&mut self, tag: u32, item: T, len: u32, at: Instant) {
        if self.flows.is_empty() {
            self.flows.resize_with(BUCKETS, Flow::new);
        }
        let idx = bucket(tag);
        let f = &mut self.flows[usize::from(idx)];
        f.queue.push_back((item, len, tag & TAG_ECT != 0, at));
        if f.list == List::Idle {
            f.list = List::New;
            f.deficit = i64::from(QUANTUM);
            self.new.push_back(idx);
        }
        self.bytes += len as usize;
        self.frames += 1;
    }

    /// The next frame to write, or to drop, at `now`; `socket_wait` is how long data written
    /// now waits beyond the link's queue (0 when unknown). `None`: nothing is queued.
    pub fn pop(&mut self, now: Instant, socket_wait: Duration) -> Option<Out<T>> {
        loop {
            let (idx, from_new) = match (self.new.front(), self.old.front()) {
                (Some(&i), _) => (i, true),
                (None, Some(&i)) => (i, false),
                (None, None) => return None,
            };
            let f = &mut self.flows[usize::from(idx)];
            if f.deficit <= 0 {
                // Its quantum is spent: to the back of the bulk flows, with a new one.
                f.deficit += i64::from(QUANTUM);
                f.list = List::Old;
                self.front_off(from_new);
                self.old.push_back(idx);
                continue;
            }
            let Some((item, len, ect, at)) = f.queue.pop_front() else {
                // Drained. A new flow goes behind the old ones once more (so that a flow that
                // keeps sending cannot stay new); an old one leaves the lists.
                self.front_off(from_new);
                let f = &mut self.flows[usize::from(idx)];
                if from_new && !self.old.is_empty() {
                    f.list = List::Old;
                    self.old.push_back(idx);
                } else {
                    f.list = List::Idle;
                }
                continue;
            };
            self.bytes -= len as usize;
            self.frames -= 1;
            let charged = if from_new {
                Duration::ZERO
            } else {
                socket_wait
            };
            let sojourn = now.saturating_duration_since(at) + charged;
            let emptied = f.queue.is_empty() && charged < TARGET;
            if f.codel.on_dequeue(now, sojourn, emptied) {
                if ect {
                    self.marks += 1;
                    f.deficit -= i64::from(len);
                    return Some(Out::Mark(item, len, u32::from(idx)));
                }
                self.drops += 1;
                return Some(Out::Drop(item, len));
            }
            f.deficit -= i64::from(len);
            return Some(Out::Send(item, len));
        }
    }

    fn front_off(&mut self, from_new: bool) {
        if from_new {
            self.new.pop_front();
        } else {
            self.old.pop_front();
        }
    }
}

/// CE marks a link's queue owes its ECN-capable flows, by flow queue. The link's writer decides
/// (its CoDel would have dropped a frame, [`Out::Mark`]) after the frame was sealed, when its
/// inner header can no longer be changed; the sealer then marks the next ECN-capable packet it
/// seals of a flow of that queue. The mark reaches the receiver a queue's wait later than a
/// mark at the head would; the flow slows down without losing a packet.
#[derive(Debug)]
pub struct CeMarks {
    owed: Vec<AtomicU8>,
}

/// Marks owed to one flow queue at most: more would outlive the congestion they tell of.
const MAX_OWED: u8 = 4;

impl Default for CeMarks {
    fn default() -> CeMarks {
        CeMarks {
            owed: (0..BUCKETS).map(|_| AtomicU8::new(0)).collect(),
        }
    }
}

impl CeMarks {
    /// The queue of flow `tag` owes a mark (the tag of an [`Out::Mark`] is the queue's).
    pub fn owe(&self, tag: u32) {
        let o = &self.owed[usize::from(bucket(tag))];
        let _ = o.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_OWED).then_some(n + 1)
        });
    }

    /// Whether a packet of flow `tag` (ECN-capable) is to carry a mark; takes it if so.
    pub fn take(&self, tag: u32) -> bool {
        let o = &self.owed[usize::from(bucket(tag))];
        o.load(Ordering::Relaxed) > 0
            && o.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// Sets the CE codepoint in an IPv6 packet's traffic class if it is ECN-capable (ECT(0) or
/// ECT(1)); returns whether it did. No checksum covers the traffic class.
pub fn mark_ce(packet: &mut [u8]) -> bool {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return false;
    }
    let ecn = (packet[1] >> 4) & 0b11;
    if ecn == 0 || ecn == 0b11 {
        return false;
    }
    packet[1] |= 0b11 << 4;
    true
}

/// The flow queue of a tag, as a tag (for [`CeMarks`]).
fn bucket(tag: u32) -> u16 {
    ((tag & !TAG_ECT) as usize % BUCKETS) as u16
}

/// Mixes a word into a running hash (the multiply-rotate of FxHash: fast, and good enough to
/// spread flows over a few hundred buckets).
#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

fn fold(h: u64) -> u32 {
    ((h >> 32) as u32 ^ h as u32) & !TAG_ECT
}

fn words(a: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..a.len().min(8)].copy_from_slice(&a[..a.len().min(8)]);
    u64::from_le_bytes(w)
}

/// The flow tag of a plain IPv6 packet: a hash of its addresses, its next header and, for TCP
/// and UDP, its ports; with [`TAG_ECT`] set when it is ECN-capable. Anything too short to be a
/// packet hashes as one flow.
pub fn flow_of_packet(packet: &[u8]) -> u32 {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return 0;
    }
    let next = packet[6];
    let mut h = mix(0, u64::from(next));
    for chunk in packet[8..40].chunks(8) {
        h = mix(h, words(chunk));
    }
    if matches!(next, 6 | 17) {
        if let Some(ports) = packet.get(40..44) {
            h = mix(h, words(ports));
        }
    }
    let tc_ecn = (packet[1] >> 4) & 0b11;
    fold(h) | if tc_ecn != 0 { TAG_ECT } else { 0 }
}

/// The flow tag of a frame this node relays or sends on its own behalf: its overlay source and
/// destination (what a relay can see of it).
pub fn flow_of_pair(src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
    let (s, d) = (src.octets(), dst.octets());
    let mut h = mix(0, 0xff);
    for chunk in s.chunks(8).chain(d.chunks(8)) {
        h = mix(h, words(chunk));
    }
    fold(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(q: &mut FlowQueues<u32>, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(o) = q.pop(now, Duration::ZERO) {
            match o {
                Out::Send(i, _) => out.push(i),
                Out::Drop(..) | Out::Mark(..) => panic!("no drops expected"),
            }
        }
        out
    }

    #[test]
    fn a_sparse_flows_frame_goes_before_a_bulk_flows_backlog() {
        let mut q = FlowQueues::default();
        let t0 = Instant::now();
        for i in 0..100 {
            q.push(1, i, 1_472, t0);
        }
        // The bulk flow is being served.
        for _ in 0..10 {
            assert!(matches!(
                q.pop(t0, Duration::ZERO),
                Some(Out::Send(_, 1_472))
            ));
        }
        // A ping arrives behind 90 bulk frames: it is next.
        q.push(2, 1_000, 120, t0);
        assert_eq!(q.pop(t0, Duration::ZERO), Some(Out::Send(1_000, 120)));
        assert_eq!(q.len(), 90);
        assert_eq!(q.bytes(), 90 * 1_472);
    }

    #[test]
    fn each_flow_keeps_its_order_and_backlogged_flows_share_by_bytes() {
        let mut q = FlowQueues::default();
        let t0 = Instant::now();
        // Flow A sends 64 KiB frames (super-frames), flow B 1,472-byte ones.
        for i in 0..10 {
            q.push(10, i, 65_000, t0);
        }
        for i in 100..1_000 {
            q.push(20, i, 1_472, t0);
        }
        let mut sent = [0u64; 2];
        let mut last = [None::<u32>; 2];
        while q.bytes() > 0 && sent.iter().all(|&s| s < 300_000) {
            let Some(Out::Send(i, len)) = q.pop(t0, Duration::ZERO) else {
                panic!()
            };
            let f = usize::from(i >= 100);
            assert!(last[f].is_none_or(|l| l < i), "flow {f} out of order");
            last[f] = Some(i);
            sent[f] += u64::from(len);
        }
        // Byte-fair within one large frame.
        let diff = sent[0].abs_diff(sent[1]);
        assert!(diff <= 65_000 + 1_500, "{sent:?}");
    }

    #[test]
    fn only_a_backlogged_flow_loses_frames_to_its_standing_queue() {
        let mut q = FlowQueues::default();
        let t0 = Instant::now();
        let mut bulk_drops = 0;
        let mut now = t0;
        let mut next = 0u32;
        // A bulk flow keeps 20 ms of frames queued; a ping every 10 ms; the socket's own
        // standing queue is 8 ms. One frame leaves per 0.1 ms.
        for step in 0..20_000u32 {
            now = t0 + Duration::from_micros(u64::from(step) * 100);
            while q.len() < 200 {
                q.push(1, next, 1_472, now - 20 * MS);
                next += 1;
            }
            if step % 100 == 0 {
                q.push(7, u32::MAX, 100, now);
            }
            match q.pop(now, 8 * MS) {
                Some(Out::Drop(i, _)) => {
                    assert_ne!(i, u32::MAX, "a ping was dropped");
                    bulk_drops += 1;
                }
                Some(Out::Send(..)) => {}
                Some(Out::Mark(..)) | None => unreachable!(),
            }
        }
        assert!(bulk_drops > 10, "{bulk_drops}");
        assert_eq!(q.drops, bulk_drops);
        let _ = now;
    }

    #[test]
    fn an_ecn_capable_bulk_flow_is_marked_instead_of_dropped_and_the_sealer_takes_the_marks() {
        let mut q = FlowQueues::default();
        let t0 = Instant::now();
        let ce = CeMarks::default();
        let tag = 5 | TAG_ECT;
        let (mut marks, mut sent) = (0, 0);
        for step in 0..5_000u32 {
            let now = t0 + Duration::from_micros(u64::from(step) * 100);
            while q.len() < 200 {
                q.push(tag, step, 1_472, now - 20 * MS);
            }
            match q.pop(now, Duration::ZERO) {
                Some(Out::Mark(_, _, t)) => {
                    ce.owe(t);
                    marks += 1;
                }
                Some(Out::Send(..)) => sent += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(marks > 5 && q.drops == 0 && q.marks == marks, "{marks}");
        assert!(sent > 4_000);
        // The sealer takes at most what is owed (bounded), for flows of that queue only.
        assert!(!ce.take(6 | TAG_ECT));
        let mut taken = 0;
        while ce.take(tag) {
            taken += 1;
        }
        assert!(taken >= 1 && taken <= u32::from(MAX_OWED));
        // Marking a packet: ECT(0) becomes CE; not-ECT and CE stay as they are.
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        assert!(!mark_ce(&mut p));
        p[1] = 0x20;
        assert!(mark_ce(&mut p));
        assert_eq!(p[1], 0x30);
        assert!(!mark_ce(&mut p));
        assert!(!mark_ce(&mut p[..20]));
    }

    #[test]
    fn a_drained_queue_is_empty_and_idle_flows_start_new_again() {
        let mut q = FlowQueues::default();
        let t0 = Instant::now();
        q.push(3, 1, 100, t0);
        q.push(4, 2, 100, t0);
        assert_eq!(drain(&mut q, t0), vec![1, 2]);
        assert!(q.is_empty() && q.bytes() == 0);
        assert!(q.new.is_empty() && q.old.is_empty());
        q.push(4, 3, 100, t0);
        assert_eq!(drain(&mut q, t0), vec![3]);
    }

    #[test]
    fn packets_hash_by_their_five_tuple_and_carry_their_ecn_capability() {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = 6;
        p[8..24].copy_from_slice(&"400::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"400::2".parse::<Ipv6Addr>().unwrap().octets());
        p[40..44].copy_from_slice(&[0x12, 0x34, 0x00, 0x16]);
        let a = flow_of_packet(&p);
        assert_eq!(a & TAG_ECT, 0);
        // Another source port: another flow (in all likelihood another bucket).
        let mut q = p.clone();
        q[41] = 0x35;
        assert_ne!(flow_of_packet(&q), a);
        // The same flow with ECT(0): the same hash, marked capable.
        let mut e = p.clone();
        e[1] = 0x20;
        assert_eq!(flow_of_packet(&e), a | TAG_ECT);
        assert_eq!(bucket(flow_of_packet(&e)), bucket(a));
        // Not a packet: one flow, no panic.
        assert_eq!(flow_of_packet(&p[..10]), 0);
        let x = flow_of_pair("400::1".parse().unwrap(), "400::2".parse().unwrap());
        let y = flow_of_pair("400::2".parse().unwrap(), "400::1".parse().unwrap());
        assert_ne!(x, y);
    }
}
