//! The buffers the core fills for the shell: frames per next hop ([`FrameBatch`], [`Outbox`]),
//! packets for the TUN ([`TunBatch`]) and packets opened where they lie in a read buffer
//! ([`InPlace`]).

use std::net::Ipv6Addr;
use std::ops::Range;

use routing::LinkId;
use wire::frame::{DataHeader, DATA_FRAME_OVERHEAD, OUTER_HEADER_LEN};
use wire::icmp::{self, IcmpError};
use wire::virtio::VirtioNetHdr;

use crate::ICMP_HOP_LIMIT;

/// Initial capacity of a next hop's frame buffer: a 64 KiB super-packet's frames (≈ 47 × 72
/// bytes of framing on top) fit without a reallocation, which profiles showed copying ≈ 6 % of
/// the sender's time away.
const OUTBOX_CAPACITY: usize = 80 * 1024;

/// Encoded data frames for one link, and how many: the writer counts frames per peer without
/// parsing its buffers again.
#[derive(Default, Debug)]
pub struct FrameBatch {
    pub bytes: Vec<u8>,
    pub frames: u32,
    /// The flow tag of each frame, in order (`fq::flow_of_packet`), as the sealer saw its inner
    /// packet; frames past its end (relayed, or the node's own) go by their overlay addresses.
    pub flows: Vec<u32>,
}

impl FrameBatch {
    /// Calls `f` with the start, length and flow tag of each data frame, in order. A tail that
    /// is not a whole frame (nothing the core writes) comes last, as one piece of flow 0, so
    /// that nothing handed over is lost.
    pub fn for_each_frame(&self, mut f: impl FnMut(usize, usize, u32)) {
        let mut pos = 0;
        let mut i = 0;
        while let Some(rest) = self.bytes.get(pos + OUTER_HEADER_LEN..) {
            let Ok(h) = DataHeader::new_checked(rest) else {
                break;
            };
            let len = DATA_FRAME_OVERHEAD + usize::from(h.body_len());
            if pos + len > self.bytes.len() {
                break;
            }
            let tag = match self.flows.get(i) {
                Some(&t) => t,
                None => crate::fq::flow_of_pair(h.src(), h.dst()),
            };
            f(pos, len, tag);
            pos += len;
            i += 1;
        }
        if pos < self.bytes.len() {
            f(pos, self.bytes.len() - pos, 0);
        }
    }
}

/// Per-link output buffers being filled during one batch.
#[derive(Default, Debug)]
pub struct Outbox {
    bufs: Vec<(LinkId, FrameBatch)>,
}

impl Outbox {
    /// The buffer to append one frame of flow `flow` (`fq::flow_of_packet`) for `link` to
    /// (counted as one frame).
    #[inline]
    pub(crate) fn buf(&mut self, link: LinkId, flow: u32) -> &mut Vec<u8> {
        // Few next hops per batch: a linear scan beats hashing.
        let i = match self.bufs.iter().position(|(l, _)| *l == link) {
            Some(i) => i,
            None => {
                self.bufs.push((
                    link,
                    FrameBatch {
                        bytes: crate::pool::take(OUTBOX_CAPACITY),
                        frames: 0,
                        flows: Vec::with_capacity(64),
                    },
                ));
                self.bufs.len() - 1
            }
        };
        let b = &mut self.bufs[i].1;
        b.frames += 1;
        b.flows.push(flow);
        &mut b.bytes
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    #[inline]
    pub fn drain(&mut self) -> impl Iterator<Item = (LinkId, FrameBatch)> + '_ {
        self.bufs.drain(..)
    }
}

/// A batch of IP packets for the TUN: one buffer, packet boundaries alongside.
#[derive(Default, Debug)]
pub struct TunBatch {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
}

impl TunBatch {
    /// An empty batch with room for `bytes` of packet data and `packets` boundaries.
    pub fn with_capacity(bytes: usize, packets: usize) -> TunBatch {
        TunBatch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(packets),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    #[inline]
    pub fn push(&mut self, packet: &[u8]) {
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
    }

    /// Appends an ICMPv6 error about `offending`, unless RFC 4443 forbids answering it.
    pub fn push_icmp(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        kind: IcmpError,
        offending: &[u8],
    ) -> bool {
        self.push_icmp_with_hop(src, dst, ICMP_HOP_LIMIT, kind, offending)
    }

    /// [`TunBatch::push_icmp`] with the hop limit to write.
    pub(crate) fn push_icmp_with_hop(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop: u8,
        kind: IcmpError,
        offending: &[u8],
    ) -> bool {
        if !icmp::may_answer(offending) {
            return false;
        }
        icmp::build_error(&mut self.data, src, dst, hop, kind, offending);
        self.ends.push(self.data.len());
        true
    }

    /// Appends each packet as a mutable slice (the TUN writer rewrites headers in place).
    pub fn split_into<'a>(&'a mut self, out: &mut Vec<&'a mut [u8]>) {
        let mut rest: &mut [u8] = &mut self.data;
        let mut start = 0;
        for &end in &self.ends {
            let (p, r) = std::mem::take(&mut rest).split_at_mut(end - start);
            out.push(p);
            rest = r;
            start = end;
        }
    }
}

/// Packets for the TUN that stay where they were opened, in a link's read buffer: their byte
/// ranges in that buffer, in buffer order, and for a super-packet carried whole the virtio
/// header to write it with. The shell writes them out from there after the batch, without
/// copying them.
#[derive(Default, Debug)]
pub struct InPlace {
    spans: Vec<(Range<usize>, Option<VirtioNetHdr>)>,
    wholes: usize,
}

/// A run of [`InPlace`] packets the shell writes one way: plain packets (coalesced by the
/// writer), or one super-packet with its header.
pub enum Run<'a> {
    Packets(Vec<&'a mut [u8]>),
    Whole(VirtioNetHdr, &'a mut [u8]),
}

impl InPlace {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether any super-packet is among them (then write them with [`InPlace::runs`]).
    #[inline]
    pub fn has_wholes(&self) -> bool {
        self.wholes > 0
    }

    #[inline]
    pub(crate) fn push(&mut self, range: Range<usize>) {
        self.spans.push((range, None));
    }

    #[inline]
    pub(crate) fn push_whole(&mut self, range: Range<usize>, vnet: VirtioNetHdr) {
        self.spans.push((range, Some(vnet)));
        self.wholes += 1;
    }

    /// Walks the recorded ranges of `buf` in order. Ranges outside `buf` or out of order are
    /// skipped, never trusted.
    fn walk<'a>(&self, buf: &'a mut [u8], mut f: impl FnMut(&'a mut [u8], Option<VirtioNetHdr>)) {
        let mut rest: &'a mut [u8] = buf;
        let mut consumed = 0usize;
        for (r, vnet) in &self.spans {
            if r.start < consumed || r.end < r.start || r.end - consumed > rest.len() {
                continue;
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - consumed);
            let (packet, tail) = tail.split_at_mut(r.end - r.start);
            f(packet, *vnet);
            rest = tail;
            consumed = r.end;
        }
    }

    /// The recorded plain packets as slices of `buf` (the buffer they were opened in).
    pub fn slices<'a>(&self, buf: &'a mut [u8], out: &mut Vec<&'a mut [u8]>) {
        self.walk(buf, |p, vnet| {
            if vnet.is_none() {
                out.push(p);
            }
        });
    }

    /// Everything recorded, in order, as runs of plain packets and single super-packets.
    pub fn runs<'a>(&self, buf: &'a mut [u8], out: &mut Vec<Run<'a>>) {
        self.walk(buf, |p, vnet| match (vnet, out.last_mut()) {
            (Some(h), _) => out.push(Run::Whole(h, p)),
            (None, Some(Run::Packets(v))) => v.push(p),
            (None, _) => out.push(Run::Packets(vec![p])),
        });
    }

    pub fn clear(&mut self) {
        self.spans.clear();
        self.wholes = 0;
    }
}
