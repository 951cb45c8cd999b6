//! The writer's side of a link's queue. The writer takes every batch senders queued as soon as
//! it can (how much may wait is bounded in bytes by the senders' admission, see
//! `transmit::LinkTx`), and each round it picks up to a write's worth of frames:
//!
//! * with queue management on, frame by frame from the flow queues (`datapath::fq`): sparse
//!   flows first, bulk flows by deficit round robin, each flow's standing queue shed by its own
//!   CoDel — judged on the wait in the link's queue plus, for bulk flows, the wait in the socket
//!   and the outer connection's flight (`datapath::codel::socket_wait`);
//! * with it off, whole batches in the order they came.
//!
//! Frames stay in the batch buffers they were sealed into; a round is a list of slices of
//! them, adjacent frames of one buffer merged into one slice. A buffer goes back to the pool,
//! and its bytes back to the senders' budget, when its last frame was written or dropped.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datapath::fq::{CeMarks, FlowQueues, Out};
use datapath::{bump, DataCounters};
use tokio::sync::Semaphore;

use crate::transmit::Queued;

/// Slices in one round at most (the kernel takes 1,024 per `writev`).
const MAX_SLICES: usize = 512;

/// A frame's place: its buffer's slot, and where in it it starts.
type At = (u32, u32);

struct Slot {
    bytes: Vec<u8>,
    /// Frames (or, whole, the batch) not yet written or dropped.
    left: u32,
    frames: u32,
    /// Budget units the batch holds (`transmit::units`).
    units: u32,
}

enum Order {
    /// Whole batches, first come first served (queue management off).
    Fifo(VecDeque<(u32, u32)>),
    /// Frames by flow.
    Flows(FlowQueues<At>),
}

pub(crate) struct Sched {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    order: Order,
    /// This round's pieces: slot, start, length, and frames in it.
    round: Vec<(u32, u32, u32, u32)>,
    room: Arc<Semaphore>,
    counters: Arc<DataCounters>,
    /// The marks the sealer owes ECN-capable flows, on queue management's word.
    ce: Arc<CeMarks>,
}

/// What a finished round released.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Done {
    /// Batches whose every frame is gone (written or dropped).
    pub batches: usize,
    /// Data frames written.
    pub frames: u64,
}

impl Sched {
    pub(crate) fn new(
        flows: bool,
        room: Arc<Semaphore>,
        counters: Arc<DataCounters>,
        ce: Arc<CeMarks>,
    ) -> Sched {
        Sched {
            slots: Vec::new(),
            free: Vec::new(),
            order: if flows {
                Order::Flows(FlowQueues::default())
            } else {
                Order::Fifo(VecDeque::new())
            },
            round: Vec::new(),
            room,
            counters,
            ce,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match &self.order {
            Order::Fifo(q) => q.is_empty(),
            Order::Flows(f) => f.is_empty(),
        }
    }

    /// Whether the writer should ask how long data waits in the socket before a round.
    pub(crate) fn wants_socket_wait(&self) -> bool {
        matches!(self.order, Order::Flows(_))
    }

    /// Takes a batch from the link's channel. Returns how many batches that released at once
    /// (1 for an empty one).
    pub(crate) fn push(&mut self, q: Queued) -> usize {
        let Queued { batch, at, units } = q;
        if batch.bytes.is_empty() {
            crate::pool::give(batch.bytes);
            self.room.add_permits(units as usize);
            return 1;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let left = match &mut self.order {
            Order::Fifo(q) => {
                q.push_back((slot, batch.bytes.len() as u32));
                1
            }
            Order::Flows(f) => {
                let mut n = 0;
                batch.for_each_frame(|start, len, tag| {
                    f.push(tag, (slot, start as u32), len as u32, at);
                    n += 1;
                });
                n
            }
        };
        self.slots[slot as usize] = Some(Slot {
            bytes: batch.bytes,
            left,
            frames: batch.frames,
            units,
        });
        0
    }

    /// Picks this round's frames, up to `max_bytes` (at least one piece): `socket_wait` is how
    /// long data written now waits in the socket and on the way. Frames queue management drops
    /// are counted and let go here. Returns how many batches that released.
    pub(crate) fn fill(&mut self, max_bytes: usize, now: Instant, socket_wait: Duration) -> usize {
        let mut bytes = 0usize;
        let mut released = 0;
        while bytes < max_bytes && self.round.len() < MAX_SLICES {
            match &mut self.order {
                Order::Fifo(q) => {
                    let Some((slot, len)) = q.pop_front() else {
                        break;
                    };
                    let frames = self.slots[slot as usize].as_ref().map_or(0, |s| s.frames);
                    self.round.push((slot, 0, len, frames));
                    bytes += len as usize;
                }
                Order::Flows(f) => match f.pop(now, socket_wait) {
                    None => break,
                    Some(o @ (Out::Send(..) | Out::Mark(..))) => {
                        let ((slot, start), len) = match o {
                            Out::Mark(at, len, tag) => {
                                self.ce.owe(tag);
                                (at, len)
                            }
                            Out::Send(at, len) | Out::Drop(at, len) => (at, len),
                        };
                        bytes += len as usize;
                        match self.round.last_mut() {
                            // The next frame of the same buffer: one slice.
                            Some(last) if last.0 == slot && last.1 + last.2 == start => {
                                last.2 += len;
                                last.3 += 1;
                            }
                            _ => self.round.push((slot, start, len, 1)),
                        }
                    }
                    Some(Out::Drop((slot, _), _)) => {
                        bump(&self.counters.drop_queue_delay);
                        released += self.settle(slot, 1);
                    }
                },
            }
        }
        released
    }

    /// The round's slices, in order.
    pub(crate) fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        self.round.iter().filter_map(|&(slot, start, len, _)| {
            let s = self.slots[slot as usize].as_ref()?;
            let piece = s.bytes.get(start as usize..(start + len) as usize)?;
            Some(IoSlice::new(piece))
        })
    }

    /// Bytes in this round.
    pub(crate) fn round_bytes(&self) -> usize {
        self.round.iter().map(|r| r.2 as usize).sum()
    }

    /// The round was written.
    pub(crate) fn round_done(&mut self) -> Done {
        let mut done = Done::default();
        let round = std::mem::take(&mut self.round);
        for &(slot, _, _, frames) in &round {
            let whole = matches!(self.order, Order::Fifo(_));
            done.frames += u64::from(match (whole, self.slots[slot as usize].as_ref()) {
                (true, Some(s)) => s.frames,
                _ => frames,
            });
            done.batches += self.settle(slot, if whole { 1 } else { frames });
        }
        self.round = round;
        self.round.clear();
        done
    }

    /// The writer stopped: senders waiting for room stop waiting.
    pub(crate) fn close(&self) {
        self.room.close();
    }

    /// `n` frames of the slot are gone; frees it after its last. Returns 1 if it did.
    fn settle(&mut self, slot: u32, n: u32) -> usize {
        let Some(s) = self.slots[slot as usize].as_mut() else {
            return 0;
        };
        s.left = s.left.saturating_sub(n);
        if s.left > 0 {
            return 0;
        }
        let Some(s) = self.slots[slot as usize].take() else {
            return 0;
        };
        crate::pool::give(s.bytes);
        self.room.add_permits(s.units as usize);
        self.free.push(slot);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datapath::FrameBatch;
    use std::net::Ipv6Addr;
    use wire::frame::{DataHeader, DataRepr, DATA_FRAME_OVERHEAD, OUTER_HEADER_LEN};

    /// A batch of data frames with the given body lengths, each of its own flow tag.
    fn batch(frames: &[(u32, usize)]) -> FrameBatch {
        let mut b = FrameBatch::default();
        for &(tag, body) in frames {
            let at = b.bytes.len();
            b.bytes.resize(at + DATA_FRAME_OVERHEAD + body, tag as u8);
            b.bytes[at] = 1;
            b.bytes[at + 1] = 0;
            let mut h = DataHeader::new_checked(&mut b.bytes[at + OUTER_HEADER_LEN..]).unwrap();
            DataRepr {
                body_len: body as u16,
                hop_limit: 64,
                src: Ipv6Addr::LOCALHOST,
                dst: Ipv6Addr::LOCALHOST,
            }
            .emit(&mut h);
            b.frames += 1;
            b.flows.push(tag);
        }
        b
    }

    fn queued(b: FrameBatch, units: u32) -> Queued {
        Queued {
            batch: b,
            at: Instant::now(),
            units,
        }
    }

    fn written(s: &Sched) -> Vec<u8> {
        s.slices().flat_map(|x| x.to_vec()).collect()
    }

    #[test]
    fn a_sparse_flow_is_written_before_a_queued_bulk_batch() {
        let room = Arc::new(Semaphore::new(0));
        let mut s = Sched::new(true, room.clone(), Arc::default(), Arc::default());
        let bulk = batch(&[(1, 1400); 40]);
        let bulk_len = bulk.bytes.len();
        s.push(queued(bulk, 60));
        // The writer is busy with 8 KB of bulk.
        assert_eq!(s.fill(8_000, Instant::now(), Duration::ZERO), 0);
        let first = s.round_bytes();
        assert!((8_000..8_000 + 1_500).contains(&first));
        // One slice: contiguous frames of one buffer.
        assert_eq!(s.slices().count(), 1);
        assert_eq!(
            s.round_done(),
            Done {
                batches: 0,
                frames: 6
            }
        );
        // A ping arrives: it leads the next round.
        let ping = batch(&[(9, 64)]);
        let ping_bytes = ping.bytes.clone();
        s.push(queued(ping, 1));
        s.fill(4_000, Instant::now(), Duration::ZERO);
        assert_eq!(written(&s)[..ping_bytes.len()], ping_bytes[..]);
        let second = s.round_bytes();
        let d = s.round_done();
        assert_eq!(d.batches, 1, "the ping's batch is done");
        assert_eq!(room.available_permits(), 1);
        // The rest of the bulk batch, then its budget comes back.
        let mut total = first + second;
        while !s.is_empty() {
            s.fill(1 << 20, Instant::now(), Duration::ZERO);
            total += s.round_bytes();
            s.round_done();
        }
        assert_eq!(total, bulk_len + ping_bytes.len());
        assert_eq!(room.available_permits(), 61);
    }

    #[test]
    fn with_queue_management_off_batches_go_whole_and_in_order() {
        let room = Arc::new(Semaphore::new(0));
        let mut s = Sched::new(false, room.clone(), Arc::default(), Arc::default());
        let a = batch(&[(1, 1400); 3]);
        let b = batch(&[(9, 64)]);
        let want = [a.bytes.clone(), b.bytes.clone()].concat();
        s.push(queued(a, 5));
        s.push(queued(b, 1));
        s.fill(1 << 20, Instant::now(), Duration::ZERO);
        assert_eq!(written(&s), want);
        assert_eq!(
            s.round_done(),
            Done {
                batches: 2,
                frames: 4
            }
        );
        assert!(s.is_empty());
        assert_eq!(room.available_permits(), 6);
    }

    #[test]
    fn a_standing_bulk_queue_loses_frames_and_their_budget_comes_back() {
        let counters = Arc::new(DataCounters::default());
        let room = Arc::new(Semaphore::new(0));
        let mut s = Sched::new(true, room.clone(), counters.clone(), Arc::default());
        let t0 = Instant::now();
        let mut units = 0;
        // Bulk batches that waited 50 ms, with a 20 ms socket queue, for two seconds of rounds.
        for i in 0..2_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            let mut q = queued(batch(&[(1, 1400); 4]), 6);
            q.at = now - Duration::from_millis(50);
            units += 6;
            s.push(q);
            s.fill(3_000, now, Duration::from_millis(20));
            s.round_done();
        }
        while !s.is_empty() {
            s.fill(1 << 20, t0, Duration::ZERO);
            s.round_done();
        }
        let drops = counters
            .drop_queue_delay
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(drops > 10, "{drops}");
        assert_eq!(room.available_permits(), units);
    }
}
