//! The data path: packets from the TUN to peers (route, seal, frame) and frames from peers to the
//! TUN or onwards (open or forward). Both directions work on batches: a super-packet's segments
//! become one buffer of frames per next hop, a socket read's frames become one TUN write batch and
//! one buffer per next hop. Lookups read an immutable [`DataTable`] snapshot, without locks.

use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offload::SegmentSink;
use routing::{ForwardingTable, LinkId, Lookup};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::warn;
use wire::babel::Subnet;
use wire::frame::{write_data_header, DataSlot, DATA_FRAME_OVERHEAD};
use wire::icmp::{self, IcmpError};
use wire::ip::ipv6::Ipv6Packet;

use crate::keys::{self, Cipher};
use crate::ratelimit::{LogLimiter, TokenBucket};

/// IPv6 fixed header length.
const IPV6_HEADER_LEN: usize = 40;
/// Inner "user data" header: version 1, type, two zero bytes (spec §3.4).
const INNER_L3: [u8; 4] = [1, 0, 0, 0];
const INNER_TYPE_L3: u8 = 0;
const INNER_TYPE_OOB_ICMP: u8 = 2;
/// OOB ICMP quotes the dropped body only up to this size (spec §3.7).
const OOB_MAX_QUOTE: usize = 1232;
/// How often a destination in use is reported to the routing core, so that its route is
/// refreshed before it expires.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Initial capacity of a next hop's frame buffer: a 64 KiB super-packet's frames (≈ 47 × 72
/// bytes of framing on top) fit without a reallocation, which profiles showed copying ≈ 6 % of
/// the sender's time away.
const OUTBOX_CAPACITY: usize = 80 * 1024;
/// Hop limit of the ICMPv6 errors we generate.
const ICMP_HOP_LIMIT: u8 = 64;

/// Where data frames for one link go: batches of encoded frames, bounded (back-pressure).
#[derive(Clone, Debug)]
pub(crate) struct LinkTx {
    pub data: mpsc::Sender<FrameBatch>,
}

/// How long a sender waits for room in a link's full queue before it treats the link as stalled.
/// Until that link takes a batch again, its batches are dropped (counted as `queue_full`) instead
/// of waited for, so one peer that stopped reading cannot hold up the TUN reader, or a relay's
/// reader, for everybody else. A healthy link drains a batch in well under a millisecond here.
pub(crate) const LINK_STALL_WAIT: Duration = Duration::from_millis(50);

/// The links a sender found stalled (see [`LINK_STALL_WAIT`]).
#[derive(Default)]
pub(crate) struct Stalled {
    links: Vec<LinkId>,
}

impl Stalled {
    pub fn contains(&self, link: LinkId) -> bool {
        self.links.contains(&link)
    }

    pub fn mark(&mut self, link: LinkId) {
        if !self.contains(link) {
            self.links.push(link);
        }
    }

    pub fn clear(&mut self, link: LinkId) {
        self.links.retain(|&l| l != link);
    }
}

/// Queues a batch for a link without waiting. `None`: queued, or dropped and counted (link gone,
/// or known stalled and still full). `Some(batch)`: the queue is full and the link was not known
/// stalled — the caller waits up to [`LINK_STALL_WAIT`] for room (blocking or async) and marks the
/// link stalled if the time runs out.
pub(crate) fn offer_batch(
    tx: &mpsc::Sender<FrameBatch>,
    link: LinkId,
    batch: FrameBatch,
    stalled: &mut Stalled,
    counters: &DataCounters,
) -> Option<FrameBatch> {
    match tx.try_send(batch) {
        Ok(()) => {
            stalled.clear(link);
            None
        }
        Err(mpsc::error::TrySendError::Closed(b)) => {
            counters
                .drop_no_route
                .fetch_add(u64::from(b.frames), Ordering::Relaxed);
            None
        }
        Err(mpsc::error::TrySendError::Full(b)) => {
            if stalled.contains(link) {
                counters
                    .drop_queue_full
                    .fetch_add(u64::from(b.frames), Ordering::Relaxed);
                None
            } else {
                // The caller waits (bounded) for room.
                Some(b)
            }
        }
    }
}

/// Waits up to [`LINK_STALL_WAIT`] for room for a batch [`offer_batch`] handed back. A link that
/// went away counts the frames as unroutable; one that stays full is marked stalled and the
/// frames count as `queue_full`. Returns true when the link was just marked stalled. Async, so
/// that the timer is created inside the runtime whether the caller awaits it or blocks on it.
pub(crate) async fn wait_for_room(
    tx: &mpsc::Sender<FrameBatch>,
    link: LinkId,
    batch: FrameBatch,
    stalled: &mut Stalled,
    counters: &DataCounters,
) -> bool {
    let frames = u64::from(batch.frames);
    match tokio::time::timeout(LINK_STALL_WAIT, tx.send(batch)).await {
        Ok(Ok(())) => false,
        Ok(Err(_)) => {
            counters.drop_no_route.fetch_add(frames, Ordering::Relaxed);
            false
        }
        Err(_) => {
            stalled.mark(link);
            counters
                .drop_queue_full
                .fetch_add(frames, Ordering::Relaxed);
            true
        }
    }
}

/// Encoded data frames for one link, and how many: the writer counts frames per peer without
/// parsing its buffers again.
#[derive(Default, Debug)]
pub(crate) struct FrameBatch {
    pub bytes: Vec<u8>,
    pub frames: u32,
}

/// The snapshot the data path reads: routes, the links' senders and the ciphers of the keys the
/// routes name. Rebuilt by the owner task whenever one of them changes.
pub(crate) struct DataTable {
    pub fib: Arc<ForwardingTable>,
    pub links: FxHashMap<LinkId, LinkTx>,
    pub ciphers: FxHashMap<[u8; 32], Cipher>,
}

impl DataTable {
    pub fn empty(fib: Arc<ForwardingTable>) -> DataTable {
        DataTable {
            fib,
            links: FxHashMap::default(),
            ciphers: FxHashMap::default(),
        }
    }
}

/// Data path counters (shared by all data path threads and tasks).
#[derive(Default, Debug)]
pub struct DataCounters {
    pub tun_packets_in: AtomicU64,
    pub tun_packets_out: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub frames_delivered: AtomicU64,
    pub drop_not_ipv6: AtomicU64,
    pub drop_no_route: AtomicU64,
    pub drop_no_key: AtomicU64,
    pub drop_hop_limit: AtomicU64,
    pub drop_decrypt: AtomicU64,
    pub drop_inner: AtomicU64,
    pub drop_queue_full: AtomicU64,
    pub drop_no_tun: AtomicU64,
    pub icmp_generated: AtomicU64,
    pub icmp_received: AtomicU64,
    pub malformed_control: AtomicU64,
    /// Opened packets refused before the TUN: not IPv6, a source outside the sender's subnet, a
    /// destination outside our /64.
    pub refused_inner_not_ipv6: AtomicU64,
    pub refused_inner_source: AtomicU64,
    pub refused_inner_destination: AtomicU64,
    /// Out-of-band ICMP errors refused: the quoted packet was not ours to the claimed original
    /// destination, or the link sent more than its rate.
    pub refused_icmp_forged: AtomicU64,
    pub refused_icmp_rate: AtomicU64,
    /// Out-of-band ICMP errors not generated because the link's rate was used up.
    pub icmp_rate_limited: AtomicU64,
    /// Frames for us from a sender that cannot have a key: outside `400::/7`, or inside our /64.
    pub refused_sender: AtomicU64,
    /// Needs (route queries, frames waiting for a key) a link's frames could not hand to the
    /// owner: over the link's rate, or the channel down to the room kept for the TUN.
    pub refused_link_needs: AtomicU64,
    /// Traffic waiting in the owner for a route or key, dropped when its bounds were reached or
    /// when it waited past its deadline.
    pub drop_pending_full: AtomicU64,
    pub drop_pending_expired: AtomicU64,
    /// Bytes of frames handed to the owner to wait for their sender's key and not yet taken by
    /// it (a gauge, not exported): bounds what a flood can park in the channel before the
    /// owner's own bounds apply.
    pub pending_in_flight: AtomicUsize,
}

/// Most bytes of frames on their way to the owner to wait for a key (see
/// [`DataCounters::pending_in_flight`]).
pub(crate) const PENDING_IN_FLIGHT_MAX: usize = 4 << 20;

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the data path asks of the owner task.
#[derive(Debug)]
pub(crate) enum Need {
    /// A destination of ours is in use: query or refresh its route.
    Route(Ipv6Addr),
    /// A destination of a frame a link asked us to forward: query or refresh its route,
    /// charged to that link's share of the query table.
    RouteFor(Ipv6Addr, LinkId),
    /// A packet from the TUN waits for a route to its destination.
    Pending(Vec<u8>),
    /// A frame for us from a sender whose route (and so key) we don't know yet.
    PendingInbound(InboundFrame),
}

/// An encrypted frame for our /64, kept until the sender's key is known.
#[derive(Debug)]
pub(crate) struct InboundFrame {
    pub hop: u8,
    pub src: Ipv6Addr,
    pub body: Vec<u8>,
    /// The link it came in on: its share of the waiting room is charged.
    pub link: LinkId,
}

/// Why an opened packet does not go to the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InnerRefusal {
    NotIpv6,
    /// Its source lies outside the subnet whose key opened it: someone else's address.
    Source,
    /// Its destination lies outside our /64: a host address the overlay must not reach.
    Destination,
}

impl InnerRefusal {
    pub fn count(self, c: &DataCounters) {
        bump(match self {
            InnerRefusal::NotIpv6 => &c.refused_inner_not_ipv6,
            InnerRefusal::Source => &c.refused_inner_source,
            InnerRefusal::Destination => &c.refused_inner_destination,
        });
    }
}

/// The checks every opened packet passes before it is written to the TUN: an IPv6 packet whose
/// source lies in `sender` (the subnet whose key opened it: the key authenticates that subnet and
/// nothing else) and whose destination lies in our own /64. Honest senders never fail them;
/// without them any peer that announces a key could write packets with any addresses into the
/// host.
pub(crate) fn check_inner(packet: &[u8], sender: Subnet, own: Subnet) -> Result<(), InnerRefusal> {
    if packet.len() < IPV6_HEADER_LEN {
        return Err(InnerRefusal::NotIpv6);
    }
    let ip = Ipv6Packet::new_unchecked(packet);
    if ip.version() != 6 {
        return Err(InnerRefusal::NotIpv6);
    }
    if !sender.contains_addr(ip.src_addr()) {
        return Err(InnerRefusal::Source);
    }
    if !own.contains_addr(ip.dst_addr()) {
        return Err(InnerRefusal::Destination);
    }
    Ok(())
}

/// Work a peer can make us do at packet rate, limited per link.
#[derive(Debug)]
pub(crate) struct LinkBudgets {
    /// Out-of-band ICMP errors from this link written to the TUN.
    pub icmp_in: TokenBucket,
    /// Out-of-band ICMP errors sent about this link's frames.
    pub icmp_out: TokenBucket,
    /// Needs this link's frames hand to the owner (see [`link_may_ask`]).
    pub needs: TokenBucket,
    /// Warnings about refused input from this link.
    pub refusals_log: LogLimiter,
}

impl LinkBudgets {
    /// Logs (rate-limited) that input from this link was refused.
    fn warn_refused(&mut self, link: LinkId, now: Instant, what: &str, src: Ipv6Addr) {
        if let Some(more) = self.refusals_log.allow(now) {
            warn!(
                link = link.0,
                "refused {what} (sender {src}); {more} more refusals since the last report"
            );
        }
    }
}

/// Out-of-band ICMP errors a link may bring in, or cause, per second (and in a burst): plenty to
/// tell a host that a path failed, far too few to disturb it.
pub(crate) const ICMP_PER_SEC: u32 = 100;
pub(crate) const ICMP_BURST: u32 = 100;
/// Needs one link's frames may hand to the owner per second, and in a burst: a relay's refreshes
/// and new senders' first frames come far below it.
pub(crate) const LINK_NEEDS_PER_SEC: u32 = 500;
pub(crate) const LINK_NEEDS_BURST: u32 = 500;

impl Default for LinkBudgets {
    fn default() -> LinkBudgets {
        LinkBudgets {
            icmp_in: TokenBucket::new(ICMP_PER_SEC, ICMP_BURST),
            icmp_out: TokenBucket::new(ICMP_PER_SEC, ICMP_BURST),
            needs: TokenBucket::new(LINK_NEEDS_PER_SEC, LINK_NEEDS_BURST),
            refusals_log: LogLimiter::new(Duration::from_secs(10)),
        }
    }
}

/// A batch of IP packets for the TUN: one buffer, packet boundaries alongside.
#[derive(Default, Debug)]
pub(crate) struct TunBatch {
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

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn push(&mut self, packet: &[u8]) {
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
    }

    /// Appends an ICMPv6 error about `offending`.
    pub fn push_icmp(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        kind: IcmpError,
        offending: &[u8],
    ) -> bool {
        if !icmp::may_answer(offending) {
            return false;
        }
        icmp::build_error(&mut self.data, src, dst, ICMP_HOP_LIMIT, kind, offending);
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

/// Per-link output buffers being filled during one batch.
#[derive(Default)]
pub(crate) struct Outbox {
    bufs: Vec<(LinkId, FrameBatch)>,
}

impl Outbox {
    /// The buffer to append one frame for `link` to (counted as one frame).
    fn buf(&mut self, link: LinkId) -> &mut Vec<u8> {
        // Few next hops per batch: a linear scan beats hashing.
        let i = match self.bufs.iter().position(|(l, _)| *l == link) {
            Some(i) => i,
            None => {
                self.bufs.push((
                    link,
                    FrameBatch {
                        bytes: crate::pool::take(OUTBOX_CAPACITY),
                        frames: 0,
                    },
                ));
                self.bufs.len() - 1
            }
        };
        let b = &mut self.bufs[i].1;
        b.frames += 1;
        &mut b.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (LinkId, FrameBatch)> + '_ {
        self.bufs.drain(..)
    }
}

/// Remembers when each destination /64 was last reported to the routing core, so a busy flow
/// costs one report every few seconds, not one per packet.
#[derive(Default)]
pub(crate) struct RefreshTracker {
    last: FxHashMap<u64, Instant>,
}

impl RefreshTracker {
    fn due(&mut self, addr: Ipv6Addr, now: Instant) -> bool {
        let key = (u128::from(addr) >> 64) as u64;
        match self.last.get(&key) {
            Some(t) if now.saturating_duration_since(*t) < REFRESH_EVERY => false,
            _ => {
                if self.last.len() > 65536 {
                    self.last.clear();
                }
                self.last.insert(key, now);
                true
            }
        }
    }
}

/// Appends one data frame carrying the IPv6 `packet` sealed for its destination (inner type 0),
/// built in place in `buf`. False (and nothing appended) if sealing failed.
pub(crate) fn push_sealed_l3(
    buf: &mut Vec<u8>,
    cipher: &Cipher,
    packet: &[u8],
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> bool {
    let slot = DataSlot::begin(buf);
    let body_start = slot.body_start();
    buf.extend_from_slice(&INNER_L3);
    buf.extend_from_slice(packet);
    let sealed = keys::seal_tail(cipher, buf, body_start, body_start - DATA_FRAME_OVERHEAD);
    slot.finish(buf, hop, src, dst).is_ok() && sealed
}

/// The IPv6 address at byte `at` of `p` (the caller checked the length).
pub(crate) fn addr_at(p: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&p[at..at + 16]);
    Ipv6Addr::from(a)
}

/// Everything the outbound (TUN → peers) side needs besides the table.
pub(crate) struct Outbound<'a> {
    pub own_subnet: Subnet,
    pub own_addr: Ipv6Addr,
    pub counters: &'a DataCounters,
    pub needs: &'a mpsc::Sender<Need>,
    pub refresh: &'a mut RefreshTracker,
    pub now: Instant,
}

/// What to do with one IPv6 packet read from the TUN.
pub(crate) enum Verdict<'t> {
    /// Seal it for `cipher` and send it to `link` with outer hop limit `hop`.
    Seal {
        link: LinkId,
        cipher: &'t Cipher,
        hop: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
    /// Already dealt with: dropped and counted, answered with an ICMPv6 error into the TUN
    /// batch, or queued for the owner until its route is known.
    Handled,
}

/// Decides where a packet from the TUN goes. Everything but sealing happens here, so that the
/// caller can seal wherever the packet already lies.
pub(crate) fn classify<'t>(
    ctx: &mut Outbound<'_>,
    table: &'t DataTable,
    packet: &[u8],
    icmp_out: &mut TunBatch,
) -> Verdict<'t> {
    bump(&ctx.counters.tun_packets_in);
    if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
        bump(&ctx.counters.drop_not_ipv6);
        return Verdict::Handled;
    }
    let src = addr_at(packet, 8);
    let dst = addr_at(packet, 24);
    if dst.is_multicast() {
        // Neighbour/router discovery and MLD chatter on the TUN: nothing to route.
        return Verdict::Handled;
    }
    if ctx.own_subnet.contains_addr(dst) {
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::AddressUnreachable, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return Verdict::Handled;
    }
    if !routing::overlay().contains_addr(src) {
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::SourcePolicy, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return Verdict::Handled;
    }
    let hop_limit = packet[7];
    if hop_limit < 2 {
        bump(&ctx.counters.drop_hop_limit);
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::HopLimit, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return Verdict::Handled;
    }
    match table.fib.lookup(dst) {
        Lookup::Route(nh) => {
            if ctx.refresh.due(dst, ctx.now) {
                let _ = ctx.needs.try_send(Need::Route(dst));
            }
            let Some(cipher) = table.ciphers.get(&nh.public_key()) else {
                // The key is computed when the route is published; a miss is a race with an
                // update: let the owner queue it.
                queue_pending(ctx, packet);
                return Verdict::Handled;
            };
            if !table.links.contains_key(&nh.link) {
                queue_pending(ctx, packet);
                return Verdict::Handled;
            }
            Verdict::Seal {
                link: nh.link,
                cipher,
                hop: hop_limit - 1,
                src,
                dst,
            }
        }
        Lookup::Local => {
            if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::AddressUnreachable, packet) {
                bump(&ctx.counters.icmp_generated);
            }
            Verdict::Handled
        }
        Lookup::NoRoute => {
            bump(&ctx.counters.drop_no_route);
            let _ = ctx.needs.try_send(Need::Route(dst));
            if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::NoRoute, packet) {
                bump(&ctx.counters.icmp_generated);
            }
            Verdict::Handled
        }
        Lookup::Resolving | Lookup::Unknown => {
            queue_pending(ctx, packet);
            Verdict::Handled
        }
    }
}

/// Room before each segment in a [`FrameSink`]: the data frame header and the inner header.
const SINK_HEADROOM: usize = DATA_FRAME_OVERHEAD + INNER_L3.len();
/// Room after each segment: the AEAD tag and nonce.
const SINK_TAILROOM: usize = crypto::SEAL_OVERHEAD;
/// Largest segment that still makes a legal frame body.
const MAX_SINK_SEGMENT: usize = wire::frame::MAX_DATA_BODY - INNER_L3.len() - SINK_TAILROOM;

/// Where the TUN reader splits super-packets: each segment is written once, into a buffer laid
/// out as a train of data frames (`header ‖ inner header ‖ segment ‖ tag and nonce`), so sealing
/// and framing happen in place and the buffer goes to the link writer as it is.
pub(crate) struct FrameSink {
    /// Recycled memory, not zeroed again for every batch; the first `len` bytes are in use.
    buf: Vec<u8>,
    len: usize,
    /// Frame start and segment length of each segment.
    spans: Vec<(usize, usize)>,
    capacity: usize,
}

impl FrameSink {
    pub fn new(capacity: usize) -> FrameSink {
        FrameSink {
            buf: crate::pool::take_dirty(capacity),
            len: 0,
            spans: Vec::with_capacity(256),
            capacity,
        }
    }

    pub fn segments(&self) -> usize {
        self.spans.len()
    }

    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Routes and seals every segment. Frames for the first next hop stay in place and are
    /// returned as one batch; frames for other next hops are copied into `out`; what cannot be
    /// sent is cut out. The sink is empty afterwards, with a fresh buffer.
    pub fn seal(
        &mut self,
        ctx: &mut Outbound<'_>,
        table: &DataTable,
        out: &mut Outbox,
        icmp_out: &mut TunBatch,
    ) -> Option<(LinkId, FrameBatch)> {
        let mut main: Option<LinkId> = None;
        let mut frames = 0u32;
        // Where the kept frames end once the holes are closed.
        let mut kept_end = 0usize;
        let mut holes = false;
        for i in 0..self.spans.len() {
            let (start, len) = self.spans[i];
            let seg_at = start + SINK_HEADROOM;
            let frame_len = SINK_HEADROOM + len + SINK_TAILROOM;
            let verdict = classify(ctx, table, &self.buf[seg_at..seg_at + len], icmp_out);
            let Verdict::Seal {
                link,
                cipher,
                hop,
                src,
                dst,
            } = verdict
            else {
                holes = true;
                continue;
            };
            if main.is_some_and(|m| m != link) || len > MAX_SINK_SEGMENT {
                // Another next hop (several reads went into this batch): copy it over.
                let packet = &self.buf[seg_at..seg_at + len];
                if push_sealed_l3(out.buf(link), cipher, packet, hop, src, dst) {
                    bump(&ctx.counters.frames_sent);
                }
                holes = true;
                continue;
            }
            main = Some(link);
            let frame = &mut self.buf[start..start + frame_len];
            let (head, body) = frame.split_at_mut(DATA_FRAME_OVERHEAD);
            body[..INNER_L3.len()].copy_from_slice(&INNER_L3);
            let plain = INNER_L3.len() + len;
            let sealed = cipher.seal_in_place(body, plain).is_ok();
            if !sealed || write_data_header(head, hop, src, dst, body.len()).is_err() {
                holes = true;
                continue;
            }
            if holes {
                self.buf.copy_within(start..start + frame_len, kept_end);
            }
            kept_end += frame_len;
            frames += 1;
            bump(&ctx.counters.frames_sent);
        }
        self.spans.clear();
        self.len = 0;
        let link = main?;
        let mut bytes = std::mem::replace(&mut self.buf, crate::pool::take_dirty(self.capacity));
        bytes.truncate(kept_end);
        Some((link, FrameBatch { bytes, frames }))
    }

    /// Forgets the segments, keeping the buffer.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.len = 0;
    }
}

impl SegmentSink for FrameSink {
    fn segment(&mut self, len: usize) -> Option<&mut [u8]> {
        let start = self.len;
        let seg_at = start + SINK_HEADROOM;
        let end = seg_at + len + SINK_TAILROOM;
        // Safe code has to initialise memory before the split writes into it; a recycled buffer
        // comes back at its last length, so only bytes no earlier batch reached are zeroed.
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.len = end;
        self.spans.push((start, len));
        Some(&mut self.buf[seg_at..seg_at + len])
    }
}

fn queue_pending(ctx: &mut Outbound<'_>, packet: &[u8]) {
    if ctx.needs.try_send(Need::Pending(packet.to_vec())).is_err() {
        bump(&ctx.counters.drop_queue_full);
    }
}

/// Everything the inbound (peer → TUN / onwards) side needs besides the table.
pub(crate) struct Inbound<'a> {
    pub own_subnet: Subnet,
    /// The link the frames came in on.
    pub link: LinkId,
    pub counters: &'a DataCounters,
    pub needs: &'a mpsc::Sender<Need>,
    pub refresh: &'a mut RefreshTracker,
    pub budgets: &'a mut LinkBudgets,
    pub now: Instant,
}

/// One data frame from a peer. `body` is the encrypted blob, opened in place when it is for us.
#[allow(clippy::too_many_arguments)]
pub(crate) fn inbound(
    ctx: &mut Inbound<'_>,
    table: &DataTable,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: &mut [u8],
    out: &mut Outbox,
    tun_out: &mut TunBatch,
    in_place: &mut InPlace,
) {
    let for_us = ctx.own_subnet.contains_addr(dst);
    // Every node, the destination included, requires hop limit >= 2 and decrements it.
    if hop_limit < 2 {
        bump(&ctx.counters.drop_hop_limit);
        if !for_us {
            oob_icmp(ctx, table, IcmpError::HopLimit, src, dst, body, out);
        }
        return;
    }
    let hop = hop_limit - 1;
    if for_us {
        deliver(ctx, table, hop, src, dst, body, tun_out, in_place);
        return;
    }
    match table.fib.lookup(dst) {
        Lookup::Route(nh) if table.links.contains_key(&nh.link) => {
            if ctx.refresh.due(dst, ctx.now) && link_may_ask(ctx) {
                let _ = ctx.needs.try_send(Need::RouteFor(dst, ctx.link));
            }
            let buf = out.buf(nh.link);
            let slot = DataSlot::begin(buf);
            buf.extend_from_slice(body);
            if slot.finish(buf, hop, src, dst).is_ok() {
                bump(&ctx.counters.frames_forwarded);
            }
        }
        Lookup::NoRoute => {
            bump(&ctx.counters.drop_no_route);
            oob_icmp(ctx, table, IcmpError::NoRoute, src, dst, body, out);
        }
        _ => {
            bump(&ctx.counters.drop_no_route);
            if ctx.refresh.due(dst, ctx.now) && link_may_ask(ctx) {
                let _ = ctx.needs.try_send(Need::RouteFor(dst, ctx.link));
            }
        }
    }
}

/// Packets for the TUN that stay where they were opened, in the link reader's buffer: their
/// addresses and lengths, in buffer order. The reader writes them out from there after the
/// batch, without copying them.
#[derive(Default)]
pub(crate) struct InPlace {
    pub spans: Vec<(usize, usize)>,
}

impl InPlace {
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn push(&mut self, packet: &[u8]) {
        self.spans.push((packet.as_ptr() as usize, packet.len()));
    }

    /// The recorded packets as slices of `buf` (the buffer they were opened in). Spans outside
    /// `buf` or out of order are skipped, never trusted.
    pub fn slices<'a>(&self, buf: &'a mut [u8], out: &mut Vec<&'a mut [u8]>) {
        let base = buf.as_ptr() as usize;
        let total = buf.len();
        let mut rest: &'a mut [u8] = buf;
        let mut consumed = 0usize;
        for &(addr, len) in &self.spans {
            let Some(at) = addr.checked_sub(base) else {
                continue;
            };
            if at < consumed || at + len > total {
                continue;
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - consumed);
            let (packet, tail) = tail.split_at_mut(len);
            out.push(packet);
            rest = tail;
            consumed = at + len;
        }
    }

    pub fn clear(&mut self) {
        self.spans.clear();
    }
}

/// A frame for our /64: open it with the sender's key and hand the packet to the TUN.
#[allow(clippy::too_many_arguments)]
fn deliver(
    ctx: &mut Inbound<'_>,
    table: &DataTable,
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: &mut [u8],
    tun_out: &mut TunBatch,
    in_place: &mut InPlace,
) {
    let sender = table.fib.source(src);
    let Some((sender, cipher)) = sender.and_then(|(s, k)| Some((s, table.ciphers.get(&k)?))) else {
        if !may_have_key(src, ctx.own_subnet) {
            // No route query can ever give it a key: refuse it now rather than let it wait.
            bump(&ctx.counters.refused_sender);
            return;
        }
        // Keep it while the sender's route is looked up (bounded here while on its way, and by
        // the owner while it waits).
        if !link_may_ask(ctx) {
            return;
        }
        let in_flight = &ctx.counters.pending_in_flight;
        if in_flight.fetch_add(body.len(), Ordering::Relaxed) + body.len() > PENDING_IN_FLIGHT_MAX {
            in_flight.fetch_sub(body.len(), Ordering::Relaxed);
            bump(&ctx.counters.drop_pending_full);
            return;
        }
        let frame = InboundFrame {
            hop,
            src,
            body: body.to_vec(),
            link: ctx.link,
        };
        if ctx.needs.try_send(Need::PendingInbound(frame)).is_err() {
            in_flight.fetch_sub(body.len(), Ordering::Relaxed);
            bump(&ctx.counters.drop_pending_full);
        }
        return;
    };
    let Ok(plain) = cipher.open_in_place(body) else {
        bump(&ctx.counters.drop_decrypt);
        return;
    };
    if plain.len() < 4 || plain[0] != 1 {
        bump(&ctx.counters.drop_inner);
        return;
    }
    match plain[1] {
        INNER_TYPE_L3 => {
            let packet = &mut plain[4..];
            if let Err(why) = admit_l3(packet, sender, ctx.own_subnet, hop, ctx.counters) {
                let what = match why {
                    InnerRefusal::NotIpv6 => "a packet that is not IPv6",
                    InnerRefusal::Source => "a packet from outside the sender's subnet",
                    InnerRefusal::Destination => "a packet to outside our /64",
                };
                ctx.budgets.warn_refused(ctx.link, ctx.now, what, src);
                return;
            }
            in_place.push(packet);
            bump(&ctx.counters.frames_delivered);
        }
        INNER_TYPE_OOB_ICMP => {
            if !ctx.budgets.icmp_in.take(ctx.now) {
                bump(&ctx.counters.refused_icmp_rate);
                return;
            }
            match deliver_oob_icmp(
                table,
                ctx.own_subnet,
                hop,
                src,
                dst,
                &mut plain[4..],
                tun_out,
            ) {
                Ok(()) => bump(&ctx.counters.icmp_received),
                Err(OobRefusal::Forged) => {
                    bump(&ctx.counters.refused_icmp_forged);
                    let what = "an ICMP error about a packet we did not send to its destination";
                    ctx.budgets.warn_refused(ctx.link, ctx.now, what, src);
                }
                Err(OobRefusal::Malformed) => bump(&ctx.counters.drop_inner),
            }
        }
        _ => bump(&ctx.counters.drop_inner),
    }
}

/// Whether a link's frames may hand the owner one more need (a route to query, a frame to keep
/// until its sender's key is known): not past the link's rate, and not into the last quarter of
/// the channel, which stays for the node's own packets. So a flood on one link can neither fill
/// the channel the TUN's needs share nor hold it for long against the other links. Counts
/// refusals.
fn link_may_ask(ctx: &mut Inbound<'_>) -> bool {
    let reserved = ctx.needs.max_capacity() / 4;
    if ctx.needs.capacity() <= reserved || !ctx.budgets.needs.take(ctx.now) {
        bump(&ctx.counters.refused_link_needs);
        return false;
    }
    true
}

/// Whether a frame from `src` can ever be opened: only senders inside `400::/7` and outside our
/// own /64 have keys a route query could find.
pub(crate) fn may_have_key(src: Ipv6Addr, own: Subnet) -> bool {
    routing::overlay().contains_addr(src) && !own.contains_addr(src)
}

/// Opens a frame kept by the owner until its sender's key was known (`sender` is the subnet
/// that key is for) and delivers it if it is an IPv6 packet that passes [`check_inner`].
/// Counts what it refuses.
pub(crate) fn deliver_pending(
    cipher: &Cipher,
    sender: Subnet,
    own: Subnet,
    frame: &mut InboundFrame,
    tun_out: &mut TunBatch,
    counters: &DataCounters,
) -> bool {
    let Ok(plain) = cipher.open_in_place(&mut frame.body) else {
        bump(&counters.drop_decrypt);
        return false;
    };
    if plain.len() < 4 || plain[0] != 1 || plain[1] != INNER_TYPE_L3 {
        bump(&counters.drop_inner);
        return false;
    }
    let packet = &mut plain[4..];
    if admit_l3(packet, sender, own, frame.hop, counters).is_err() {
        return false;
    }
    tun_out.push(packet);
    true
}

/// Makes an opened IPv6 packet ready for the TUN: [`check_inner`] (counting a refusal), then the
/// decremented outer hop limit written into it, as the destination does (spec §3.2).
fn admit_l3(
    packet: &mut [u8],
    sender: Subnet,
    own: Subnet,
    hop: u8,
    counters: &DataCounters,
) -> Result<(), InnerRefusal> {
    if let Err(why) = check_inner(packet, sender, own) {
        why.count(counters);
        return Err(why);
    }
    packet[7] = hop;
    Ok(())
}

/// Out-of-band ICMP (spec §3.7): an intermediate node that drops a packet tells its source, in a
/// type-2 payload sealed for the source: the original destination, an IPv6 + ICMPv6 header from
/// our /64 network address, and the dropped (still encrypted) body when it is small enough.
fn oob_icmp(
    ctx: &mut Inbound<'_>,
    table: &DataTable,
    kind: IcmpError,
    orig_src: Ipv6Addr,
    orig_dst: Ipv6Addr,
    dropped: &[u8],
    out: &mut Outbox,
) {
    // A source we have no route or key for gets nothing.
    let Lookup::Route(nh) = table.fib.lookup(orig_src) else {
        return;
    };
    if !ctx.budgets.icmp_out.take(ctx.now) {
        bump(&ctx.counters.icmp_rate_limited);
        return;
    }
    if !table.links.contains_key(&nh.link) {
        return;
    }
    let Some(cipher) = table
        .fib
        .source_key(orig_src)
        .and_then(|k| table.ciphers.get(&k))
    else {
        return;
    };
    let from = ctx.own_subnet.addr();
    let quoted: &[u8] = if dropped.len() > OOB_MAX_QUOTE {
        &[]
    } else {
        dropped
    };
    let buf = out.buf(nh.link);
    let slot = DataSlot::begin(buf);
    let body_start = slot.body_start();
    buf.extend_from_slice(&[1, INNER_TYPE_OOB_ICMP, 0, 0]);
    buf.extend_from_slice(&orig_dst.octets());
    // The quote is the still-encrypted body: the source decrypts it with its own key for the
    // original destination.
    icmp::build_error(buf, from, orig_src, ICMP_HOP_LIMIT, kind, quoted);
    let sealed = keys::seal_tail(cipher, buf, body_start, body_start - DATA_FRAME_OVERHEAD);
    if slot.finish(buf, ICMP_HOP_LIMIT, from, orig_src).is_ok() && sealed {
        bump(&ctx.counters.icmp_generated);
    }
}

/// Why a received out-of-band ICMP error is not written to the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OobRefusal {
    /// Not the shape of an OOB ICMP payload, or a quote that does not open.
    Malformed,
    /// The quoted packet is not one we sent to the original destination it names: whoever made
    /// it could otherwise fail any flow of ours (the original destination is the sender's choice,
    /// and the quote opens with the key we share with it).
    Forged,
}

/// Receiving an OOB ICMP (spec §3.8): decrypt the quoted body with the key of the original
/// destination and write a plain ICMPv6 error about our own packet to the TUN — only if the quote
/// is a packet from our /64 to that original destination.
fn deliver_oob_icmp(
    table: &DataTable,
    own: Subnet,
    hop: u8,
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    payload: &mut [u8],
    tun_out: &mut TunBatch,
) -> Result<(), OobRefusal> {
    if payload.len() < 64 || payload.len() > 1296 {
        return Err(OobRefusal::Malformed);
    }
    let orig_dst = addr_at(payload, 0);
    let (ty, code) = (payload[56], payload[57]);
    let kind = IcmpError::from_type_code(ty, code).ok_or(OobRefusal::Malformed)?;
    let cipher = table
        .fib
        .source_key(orig_dst)
        .and_then(|k| table.ciphers.get(&k))
        .ok_or(OobRefusal::Malformed)?;
    let inner = cipher
        .open_in_place(&mut payload[64..])
        .map_err(|_| OobRefusal::Malformed)?;
    if inner.len() < 4 + IPV6_HEADER_LEN || inner[0] != 1 || inner[1] != INNER_TYPE_L3 {
        return Err(OobRefusal::Malformed);
    }
    let original = &inner[4..];
    let quoted = Ipv6Packet::new_unchecked(original);
    if quoted.version() != 6
        || !own.contains_addr(quoted.src_addr())
        || quoted.dst_addr() != orig_dst
    {
        return Err(OobRefusal::Forged);
    }
    icmp::build_error(&mut tun_out.data, outer_src, outer_dst, hop, kind, original);
    tun_out.ends.push(tun_out.data.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Identity;
    use crypto::SecretKey;
    use routing::NextHop;
    use wire::babel::RouterId;
    use wire::frame::{Frame, FrameReader};

    struct Fixture {
        table: DataTable,
        a: Identity,
        b: Identity,
        c: Identity,
        needs_rx: mpsc::Receiver<Need>,
        needs_tx: mpsc::Sender<Need>,
        counters: DataCounters,
    }

    /// Node A with routes to B's /64 over link 1 and to C's /64 over link 2.
    fn fixture() -> Fixture {
        let a = Identity::new(SecretKey::from_bytes([1; 32]));
        let b = Identity::new(SecretKey::from_bytes([2; 32]));
        let c = Identity::new(SecretKey::from_bytes([3; 32]));
        let hop = |id: &Identity, link| NextHop {
            link: LinkId(link),
            router_id: RouterId::new(id.public_key(), [0; 6]),
        };
        let fib = ForwardingTable::from_routes(
            a.subnet(),
            &[(b.subnet(), hop(&b, 1)), (c.subnet(), hop(&c, 2))],
        );
        let mut table = DataTable::empty(Arc::new(fib));
        for (id, link) in [(&b, 1), (&c, 2)] {
            let (tx, rx) = mpsc::channel(1);
            std::mem::forget(rx);
            table.links.insert(LinkId(link), LinkTx { data: tx });
            table
                .ciphers
                .insert(id.public_key(), a.cipher_for(&id.public_key()).unwrap());
        }
        let (needs_tx, needs_rx) = mpsc::channel(16);
        Fixture {
            table,
            a,
            b,
            c,
            needs_rx,
            needs_tx,
            counters: DataCounters::default(),
        }
    }

    fn packet(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, fill: u8, len: usize) -> Vec<u8> {
        let mut p = vec![fill; IPV6_HEADER_LEN + len];
        p[..8].copy_from_slice(&[0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 17, hop]);
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    /// Seals the sink as node A's TUN reader would: the main batch, the other next hops' batches
    /// and the ICMPv6 errors for the TUN.
    fn seal(f: &Fixture, sink: &mut FrameSink) -> (Option<(LinkId, FrameBatch)>, Outbox, TunBatch) {
        let mut refresh = RefreshTracker::default();
        let mut ctx = Outbound {
            own_subnet: f.a.subnet(),
            own_addr: f.a.address(),
            counters: &f.counters,
            needs: &f.needs_tx,
            refresh: &mut refresh,
            now: Instant::now(),
        };
        let mut outbox = Outbox::default();
        let mut icmp = TunBatch::default();
        let main = sink.seal(&mut ctx, &f.table, &mut outbox, &mut icmp);
        (main, outbox, icmp)
    }

    fn put(sink: &mut FrameSink, p: &[u8]) {
        sink.segment(p.len()).unwrap().copy_from_slice(p);
    }

    /// Decodes a batch and opens every frame with `receiver`'s key for `sender`.
    fn open_all(bytes: &[u8], receiver: &Identity, sender: &Identity) -> Vec<(u8, Vec<u8>)> {
        let cipher = receiver.cipher_for(&sender.public_key()).unwrap();
        let mut r = FrameReader::with_capacity(bytes.len() + 1);
        assert_eq!(r.push(bytes), bytes.len());
        let mut out = Vec::new();
        while let Some(f) = r.next_frame_mut().unwrap() {
            let Frame::Data {
                hop_limit, body, ..
            } = f
            else {
                panic!("expected a data frame");
            };
            let plain = cipher.open_in_place(body).unwrap();
            assert_eq!(&plain[..4], &INNER_L3);
            out.push((hop_limit, plain[4..].to_vec()));
        }
        assert_eq!(r.buffered(), 0, "the batch ends on a frame boundary");
        out
    }

    #[test]
    fn segments_are_sealed_in_place_and_others_copied_or_held() {
        let mut f = fixture();
        let (a, b, c) = (f.a.address(), f.b.address(), f.c.address());
        let unknown: Ipv6Addr = "4ff:1:2:3::9".parse().unwrap();
        let to_b1 = packet(a, b, 64, 0x11, 1300);
        let to_b2 = packet(a, b, 2, 0x22, 10);
        let to_nowhere = packet(a, unknown, 64, 0x33, 100);
        let to_c = packet(a, c, 64, 0x44, 500);
        let to_b3 = packet(a, b, 64, 0x55, 1);
        let mut sink = FrameSink::new(4096);
        for p in [&to_b1, &to_b2, &to_nowhere, &to_c, &to_b3] {
            put(&mut sink, p);
        }
        let (main, mut outbox, icmp) = seal(&f, &mut sink);
        let (link, batch) = main.expect("frames for link 1");
        assert_eq!(link, LinkId(1));
        assert_eq!(batch.frames, 3);
        let got = open_all(&batch.bytes, &f.b, &f.a);
        assert_eq!(
            got,
            vec![(63, to_b1.clone()), (1, to_b2.clone()), (63, to_b3.clone())]
        );
        // C's packet went to link 2's buffer, sealed for C.
        let others: Vec<_> = outbox.drain().collect();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].0, LinkId(2));
        assert_eq!(others[0].1.frames, 1);
        assert_eq!(open_all(&others[0].1.bytes, &f.c, &f.a), vec![(63, to_c)]);
        // The unknown destination is held by the owner until a route is known.
        let mut held = Vec::new();
        while let Ok(n) = f.needs_rx.try_recv() {
            if let Need::Pending(p) = n {
                held.push(p);
            }
        }
        assert_eq!(held, vec![to_nowhere]);
        assert!(icmp.is_empty());
        assert_eq!(f.counters.frames_sent.load(Ordering::Relaxed), 4);
        // The sink is ready for the next batch.
        assert_eq!(sink.segments(), 0);
        assert_eq!(sink.bytes(), 0);
    }

    #[test]
    fn a_recycled_buffer_leaves_nothing_of_its_old_contents() {
        let f = fixture();
        let (a, b) = (f.a.address(), f.b.address());
        let unknown: Ipv6Addr = "4ff:1:2:3::9".parse().unwrap();
        let mut sink = FrameSink::new(4096);
        // As a recycled batch comes back: full of an earlier batch's bytes.
        sink.buf = vec![0xAA; 8192];
        let p1 = packet(a, b, 64, 0x11, 700);
        let p2 = packet(a, b, 64, 0x22, 3);
        for p in [&p1, &packet(a, unknown, 64, 0x33, 100), &p2] {
            put(&mut sink, p);
        }
        let (main, _, _) = seal(&f, &mut sink);
        let (_, batch) = main.unwrap();
        // Every byte of every frame was written: the headers' reserved bytes are zero, the batch
        // ends on the last frame, and the frames open to the packets.
        assert_eq!(batch.bytes[..4], [1, 0, 0, 0]);
        assert_eq!(batch.bytes[wire::frame::OUTER_HEADER_LEN], 0);
        assert!(!batch.bytes.windows(8).any(|w| w == [0xAA; 8]));
        assert_eq!(open_all(&batch.bytes, &f.b, &f.a), vec![(63, p1), (63, p2)]);
    }

    #[test]
    fn a_batch_with_nothing_to_send_returns_nothing_and_answers_errors() {
        let mut f = fixture();
        let a = f.a.address();
        let mut sink = FrameSink::new(1024);
        // Hop limit 1: "time exceeded" back into the TUN; not IPv6: dropped.
        put(&mut sink, &packet(a, f.b.address(), 1, 0, 8));
        put(&mut sink, &[0x45; 60]);
        let (main, outbox, icmp) = seal(&f, &mut sink);
        assert!(main.is_none());
        assert!(outbox.is_empty());
        assert_eq!(icmp.len(), 1);
        assert_eq!(f.counters.drop_hop_limit.load(Ordering::Relaxed), 1);
        assert_eq!(f.counters.drop_not_ipv6.load(Ordering::Relaxed), 1);
        assert!(f.needs_rx.try_recv().is_err());
        assert_eq!(sink.bytes(), 0);
    }

    fn batch(frames: u32) -> FrameBatch {
        FrameBatch {
            bytes: vec![0; 10],
            frames,
        }
    }

    #[test]
    fn a_full_link_is_waited_for_until_found_stalled_then_skipped_until_it_drains() {
        let (tx, mut rx) = mpsc::channel(1);
        let counters = DataCounters::default();
        let mut stalled = Stalled::default();
        let link = LinkId(7);
        assert!(offer_batch(&tx, link, batch(1), &mut stalled, &counters).is_none());
        // Full, not known stalled: handed back for a bounded wait.
        let back = offer_batch(&tx, link, batch(2), &mut stalled, &counters).unwrap();
        assert_eq!(back.frames, 2);
        stalled.mark(link);
        // Known stalled and still full: dropped and counted, no wait.
        assert!(offer_batch(&tx, link, batch(3), &mut stalled, &counters).is_none());
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 3);
        // Another link is not affected.
        assert!(!stalled.contains(LinkId(8)));
        // Once it drains, it takes batches again and is no longer stalled.
        assert_eq!(rx.try_recv().unwrap().frames, 1);
        assert!(offer_batch(&tx, link, batch(4), &mut stalled, &counters).is_none());
        assert!(!stalled.contains(link));
        assert_eq!(rx.try_recv().unwrap().frames, 4);
        // A closed link: counted as no route.
        drop(rx);
        assert!(offer_batch(&tx, link, batch(5), &mut stalled, &counters).is_none());
        assert_eq!(counters.drop_no_route.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn waiting_for_room_sends_or_marks_the_link_stalled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let counters = DataCounters::default();
        let mut stalled = Stalled::default();
        let link = LinkId(7);
        tx.try_send(batch(1)).unwrap();
        // Nobody drains the full queue: stalled after the bounded wait, frames counted.
        assert!(rt.block_on(wait_for_room(&tx, link, batch(2), &mut stalled, &counters)));
        assert!(stalled.contains(link));
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 2);
        // Room appears: the batch goes through, nothing counted.
        assert_eq!(rx.try_recv().unwrap().frames, 1);
        assert!(!rt.block_on(wait_for_room(&tx, link, batch(4), &mut stalled, &counters)));
        assert_eq!(rx.try_recv().unwrap().frames, 4);
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 2);
        // The link went away: counted as no route, not as stalled.
        drop(rx);
        assert!(!rt.block_on(wait_for_room(
            &tx,
            LinkId(8),
            batch(5),
            &mut stalled,
            &counters
        )));
        assert_eq!(counters.drop_no_route.load(Ordering::Relaxed), 5);
        assert!(!stalled.contains(LinkId(8)));
    }

    #[test]
    fn in_place_spans_become_slices_and_strays_are_skipped() {
        let mut buf: Vec<u8> = (0..100u8).collect();
        let mut spans = InPlace::default();
        {
            let (head, tail) = buf.split_at(50);
            spans.push(&head[10..20]);
            spans.push(&tail[0..5]);
            spans.push(&head[0..5]); // out of order: skipped
        }
        let stray = [9u8; 3];
        spans.push(&stray);
        let mut out = Vec::new();
        spans.slices(&mut buf, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].to_vec(), (10..20u8).collect::<Vec<_>>());
        assert_eq!(out[1].to_vec(), (50..55u8).collect::<Vec<_>>());
    }

    /// A frame body as `from` seals it for `to`: inner header `[1, kind, 0, 0]`, then `payload`.
    fn body_for(from: &Identity, to: &Identity, kind: u8, payload: &[u8]) -> Vec<u8> {
        let cipher = from.cipher_for(&to.public_key()).unwrap();
        let mut body = vec![1, kind, 0, 0];
        body.extend_from_slice(payload);
        cipher.seal_append(&mut body, 0).unwrap();
        body
    }

    /// What node A does with one data frame that arrives on `link`: the packets it would write
    /// to the TUN (opened in place or built).
    struct Received {
        tun: Vec<Vec<u8>>,
    }

    fn receive(
        f: &Fixture,
        budgets: &mut LinkBudgets,
        now: Instant,
        link: u64,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        mut body: Vec<u8>,
    ) -> Received {
        let mut refresh = RefreshTracker::default();
        let mut ctx = Inbound {
            own_subnet: f.a.subnet(),
            link: LinkId(link),
            counters: &f.counters,
            needs: &f.needs_tx,
            refresh: &mut refresh,
            budgets,
            now,
        };
        let (mut outbox, mut tun_out, mut in_place) =
            (Outbox::default(), TunBatch::default(), InPlace::default());
        inbound(
            &mut ctx,
            &f.table,
            64,
            src,
            dst,
            &mut body,
            &mut outbox,
            &mut tun_out,
            &mut in_place,
        );
        let mut tun: Vec<Vec<u8>> = Vec::new();
        let mut spans = Vec::new();
        in_place.slices(&mut body, &mut spans);
        tun.extend(spans.iter().map(|p| p.to_vec()));
        let mut built = Vec::new();
        tun_out.split_into(&mut built);
        tun.extend(built.iter().map(|p| p.to_vec()));
        Received { tun }
    }

    fn count(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// `packet` in a frame from B's address to A's, sealed by B, on link 1.
    fn from_b(f: &Fixture, budgets: &mut LinkBudgets, packet: &[u8]) -> Received {
        let (a, b) = (f.a.address(), f.b.address());
        let body = body_for(&f.b, &f.a, 0, packet);
        receive(f, budgets, Instant::now(), 1, b, a, body)
    }

    #[test]
    fn opened_packets_reach_the_tun_only_from_the_senders_subnet_to_ours() {
        let f = fixture();
        let mut budgets = LinkBudgets::default();
        let (a, b, c) = (f.a.address(), f.b.address(), f.c.address());
        let b_host = Ipv6Addr::from(u128::from(b) ^ 0xff);
        let host_veth: Ipv6Addr = "fd00::a".parse().unwrap();
        let a_host = Ipv6Addr::from(u128::from(a) ^ 0x5);
        // From B, sealed with B's key: its own address or another host of its /64, to any host
        // of our /64, is delivered with the hop limit the frame arrived with, less one.
        for (src, dst) in [(b, a), (b_host, a_host)] {
            let p = packet(src, dst, 64, 0x11, 20);
            let got = from_b(&f, &mut budgets, &p);
            let mut want = p.clone();
            want[7] = 63;
            assert_eq!(got.tun, vec![want]);
        }
        assert_eq!(count(&f.counters.frames_delivered), 2);
        // C's address (or one outside the overlay) inside a frame B sealed: refused.
        for src in [c, "fd00::99".parse().unwrap()] {
            let p = packet(src, a, 64, 0x22, 20);
            let got = from_b(&f, &mut budgets, &p);
            assert!(
                got.tun.is_empty(),
                "a packet from {src} sealed by B was delivered"
            );
        }
        assert_eq!(count(&f.counters.refused_inner_source), 2);
        // A destination outside our /64 (an address of the host's other interfaces, or B's):
        // refused.
        for dst in [host_veth, b] {
            let p = packet(b, dst, 64, 0x33, 20);
            let got = from_b(&f, &mut budgets, &p);
            assert!(got.tun.is_empty(), "a packet to {dst} was delivered");
        }
        assert_eq!(count(&f.counters.refused_inner_destination), 2);
        // Not IPv6: an IPv4 header, or fewer than 40 bytes.
        let mut v4 = packet(b, a, 64, 0x44, 20);
        v4[0] = 0x45;
        for p in [v4, vec![0x60; 39]] {
            let got = from_b(&f, &mut budgets, &p);
            assert!(got.tun.is_empty());
        }
        assert_eq!(count(&f.counters.refused_inner_not_ipv6), 2);
        assert_eq!(count(&f.counters.frames_delivered), 2);
    }

    #[test]
    fn check_inner_is_bounded_by_the_senders_subnet_not_its_slash_64() {
        let own = Subnet::new("400:1::".parse().unwrap(), 64).unwrap();
        let narrow = Subnet::new("4ff:2::".parse().unwrap(), 96).unwrap();
        let p = |src: &str, dst: &str| packet(src.parse().unwrap(), dst.parse().unwrap(), 9, 0, 0);
        assert_eq!(check_inner(&p("4ff:2::1", "400:1::1"), narrow, own), Ok(()));
        assert_eq!(
            check_inner(&p("4ff:2::1:0:0:1", "400:1::1"), narrow, own),
            Err(InnerRefusal::Source)
        );
        assert_eq!(
            check_inner(&p("4ff:2::1", "400:1:0:1::1"), narrow, own),
            Err(InnerRefusal::Destination)
        );
    }

    #[test]
    fn frames_from_senders_that_can_have_no_key_are_refused_not_held() {
        let mut f = fixture();
        let mut budgets = LinkBudgets::default();
        let a = f.a.address();
        let a_other = Ipv6Addr::from(u128::from(a) ^ 0x77);
        let unknown: Ipv6Addr = "4ff:1:2:3::9".parse().unwrap();
        for src in [
            "fd00::99".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            a_other,
        ] {
            let got = receive(&f, &mut budgets, Instant::now(), 1, src, a, vec![0u8; 200]);
            assert!(got.tun.is_empty());
        }
        assert_eq!(count(&f.counters.refused_sender), 3);
        assert!(
            f.needs_rx.try_recv().is_err(),
            "nothing handed to the owner"
        );
        // An overlay sender without a route yet is held, tagged with its link.
        receive(
            &f,
            &mut budgets,
            Instant::now(),
            2,
            unknown,
            a,
            vec![0u8; 200],
        );
        match f.needs_rx.try_recv() {
            Ok(Need::PendingInbound(frame)) => {
                assert_eq!(
                    (frame.src, frame.link, frame.body.len()),
                    (unknown, LinkId(2), 200)
                );
            }
            other => panic!("expected a held frame, got {other:?}"),
        }
        assert_eq!(count_usize(&f.counters.pending_in_flight), 200);
        // Until the owner takes them, frames on their way are bounded in bytes.
        f.counters.pending_in_flight.store(0, Ordering::Relaxed);
        for _ in 0..15 {
            receive(
                &f,
                &mut budgets,
                Instant::now(),
                2,
                unknown,
                a,
                vec![0u8; 400_000],
            );
        }
        assert_eq!(count(&f.counters.drop_pending_full), 5);
        assert_eq!(count_usize(&f.counters.pending_in_flight), 10 * 400_000);
    }

    #[test]
    fn a_link_cannot_fill_the_owners_channel_or_ask_past_its_rate() {
        let mut f = fixture();
        let mut budgets = LinkBudgets::default();
        let t0 = Instant::now();
        let c = f.c.address();
        let nowhere = |i: u16| Ipv6Addr::new(0x4ff, 0x51, i, 0, 0, 0, 0, 1);
        // Frames to forward to 20 unknown /64s: each asks for a route, until only the quarter
        // of the channel kept for the node's own packets is left.
        for i in 0..20 {
            receive(&f, &mut budgets, t0, 1, c, nowhere(i), vec![0u8; 100]);
        }
        assert_eq!(count(&f.counters.refused_link_needs), 8);
        assert!(f.needs_tx.try_send(Need::Route(nowhere(999))).is_ok());
        let mut asked = 0;
        while let Ok(n) = f.needs_rx.try_recv() {
            assert!(matches!(n, Need::RouteFor(_, LinkId(1)) | Need::Route(_)));
            asked += 1;
        }
        assert_eq!(asked, 13);
        // With the owner keeping up, the link still asks no faster than its rate: its burst,
        // then one per 1/LINK_NEEDS_PER_SEC.
        let mut budgets = LinkBudgets::default();
        let mut asked = 0;
        for i in 0..(LINK_NEEDS_BURST as u16 + 100) {
            receive(&f, &mut budgets, t0, 1, c, nowhere(i), vec![0u8; 100]);
            while f.needs_rx.try_recv().is_ok() {
                asked += 1;
            }
        }
        assert_eq!(asked, LINK_NEEDS_BURST);
        let later = t0 + Duration::from_millis(100);
        for i in 0..100 {
            receive(&f, &mut budgets, later, 1, c, nowhere(i), vec![0u8; 100]);
            while f.needs_rx.try_recv().is_ok() {
                asked += 1;
            }
        }
        assert_eq!(asked, LINK_NEEDS_BURST + LINK_NEEDS_PER_SEC / 10);
    }

    fn count_usize(c: &AtomicUsize) -> usize {
        c.load(Ordering::Relaxed)
    }

    /// The OOB ICMP payload an intermediate node at `from` sends about a dropped packet whose
    /// still-sealed body is `quote`.
    fn oob_payload(from: Ipv6Addr, to: Ipv6Addr, orig_dst: Ipv6Addr, quote: &[u8]) -> Vec<u8> {
        let mut payload = orig_dst.octets().to_vec();
        icmp::build_error(&mut payload, from, to, 64, IcmpError::SourcePolicy, quote);
        payload
    }

    /// B's out-of-band ICMP error to A (from B's /64 address, on link 1) about `quoted`, a packet
    /// B claims A sent it: sealed with the key A and B share, as the quote of a genuine one is.
    fn oob_from_b(f: &Fixture, budgets: &mut LinkBudgets, now: Instant, quoted: &[u8]) -> Received {
        let (a, b, b_net) = (f.a.address(), f.b.address(), f.b.subnet().addr());
        let quote = body_for(&f.a, &f.b, 0, quoted);
        let body = body_for(&f.b, &f.a, 2, &oob_payload(b_net, a, b, &quote));
        receive(f, budgets, now, 1, b_net, a, body)
    }

    #[test]
    fn oob_icmp_is_delivered_only_about_our_own_packets_to_the_claimed_destination() {
        let f = fixture();
        let mut budgets = LinkBudgets::default();
        let (a, b, c) = (f.a.address(), f.b.address(), f.c.address());
        let b_net = f.b.subnet().addr();
        // B claims one of A's packets to B was dropped: B shares the quote's key, so it can forge
        // any such quote, but only about A's flows to B itself — and those it may refuse anyway.
        let ours = packet(a, b, 64, 0x11, 30);
        let got = oob_from_b(&f, &mut budgets, Instant::now(), &ours);
        assert_eq!(got.tun.len(), 1, "a genuine error about our packet to B");
        let err = Ipv6Packet::new_unchecked(&got.tun[0][..]);
        assert_eq!((err.src_addr(), err.dst_addr()), (b_net, a));
        assert_eq!(&err.payload()[8..8 + ours.len()], &ours[..]);
        assert_eq!(count(&f.counters.icmp_received), 1);
        // Forged: a packet of ours to C, or one that was never ours, quoted as if dropped on the
        // way to B.
        let c_host = Ipv6Addr::from(u128::from(c) ^ 1);
        for quoted in [packet(a, c, 64, 0x22, 30), packet(c_host, b, 64, 0x33, 30)] {
            let got = oob_from_b(&f, &mut budgets, Instant::now(), &quoted);
            assert!(got.tun.is_empty(), "a forged error reached the TUN");
        }
        assert_eq!(count(&f.counters.refused_icmp_forged), 2);
        assert_eq!(count(&f.counters.icmp_received), 1);
    }

    #[test]
    fn oob_icmp_from_one_link_is_rate_limited() {
        let f = fixture();
        let mut budgets = LinkBudgets::default();
        let ours = packet(f.a.address(), f.b.address(), 64, 0x11, 30);
        let t0 = Instant::now();
        let delivered: usize = (0..ICMP_BURST + 50)
            .map(|_| oob_from_b(&f, &mut budgets, t0, &ours).tun.len())
            .sum();
        assert_eq!(delivered, ICMP_BURST as usize);
        assert_eq!(count(&f.counters.refused_icmp_rate), 50);
        // Another link has its own budget; this one refills at its rate.
        let mut other = LinkBudgets::default();
        assert_eq!(oob_from_b(&f, &mut other, t0, &ours).tun.len(), 1);
        let later = t0 + Duration::from_millis(100);
        let delivered: usize = (0..50)
            .map(|_| oob_from_b(&f, &mut budgets, later, &ours).tun.len())
            .sum();
        assert_eq!(delivered, (ICMP_PER_SEC / 10) as usize);
    }

    #[test]
    fn oob_icmp_generation_is_rate_limited_per_link() {
        let f = fixture();
        let mut budgets = LinkBudgets::default();
        let (b, c) = (f.b.address(), f.c.address());
        // Frames from B to C with hop limit 1 at A: each would be answered with a time exceeded
        // error sealed for B.
        let mut answered = 0;
        let t0 = Instant::now();
        for _ in 0..(ICMP_BURST + 50) {
            let mut refresh = RefreshTracker::default();
            let mut ctx = Inbound {
                own_subnet: f.a.subnet(),
                link: LinkId(1),
                counters: &f.counters,
                needs: &f.needs_tx,
                refresh: &mut refresh,
                budgets: &mut budgets,
                now: t0,
            };
            let mut outbox = Outbox::default();
            let mut body = vec![0u8; 100];
            inbound(
                &mut ctx,
                &f.table,
                1,
                b,
                c,
                &mut body,
                &mut outbox,
                &mut TunBatch::default(),
                &mut InPlace::default(),
            );
            answered += outbox
                .drain()
                .map(|(_, b)| b.frames as usize)
                .sum::<usize>();
        }
        assert_eq!(answered, ICMP_BURST as usize);
        assert_eq!(count(&f.counters.icmp_rate_limited), 50);
    }
}
