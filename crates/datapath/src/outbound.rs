//! Outbound: packets from the TUN to peers. Each packet is classified against the table (drop,
//! answer with an ICMPv6 error, hold for the owner, or seal for a next hop) and sealed and framed
//! where the offload split wrote it.

use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{PayloadType, SealError, Session};
use offload::SegmentSink;
use routing::{LinkId, Lookup};
use rustc_hash::FxHashMap;
use wire::babel::Subnet;
use wire::frame::{write_data_header, DataSlot, DATA_FRAME_OVERHEAD};
use wire::icmp::IcmpError;
use wire::ip::ipv6::Ipv6Packet;
use wire::virtio::{gso, VirtioNetHdr, LEN as VNET_LEN};

use crate::batch::{FrameBatch, Outbox, TunBatch};
use crate::counters::{bump, DataCounters};
use crate::sessions::SessionSnapshot;
use crate::table::{DataTable, Need, NeedSink};
use crate::Cipher;

/// The inner header of an IPv6 packet: version 1, type 0 (`docs/protocol.md` §6.3).
pub(crate) const INNER_L3: [u8; crypto::INNER_HEADER_LEN] = [crypto::INNER_VERSION, 0, 0, 0];

/// How often a destination in use is reported to the routing core, so that its route is
/// refreshed before it expires.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Remembers when each destination /64 was last reported to the routing core, so a busy flow
/// costs one report every few seconds, not one per packet.
#[derive(Debug)]
pub(crate) struct RefreshTracker {
    last: FxHashMap<u64, Instant>,
    every: Duration,
}

impl Default for RefreshTracker {
    fn default() -> RefreshTracker {
        RefreshTracker::every(REFRESH_EVERY)
    }
}

impl RefreshTracker {
    pub(crate) fn every(every: Duration) -> RefreshTracker {
        RefreshTracker {
            last: FxHashMap::default(),
            every,
        }
    }

    #[inline]
    pub(crate) fn due(&mut self, addr: Ipv6Addr, now: Instant) -> bool {
        let key = (u128::from(addr) >> 64) as u64;
        match self.last.get(&key) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
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

/// What a frame is sealed with: the session with its destination, or the static key.
#[derive(Debug)]
pub enum SealKey<'t> {
    Static(Cow<'t, Cipher>),
    Session(&'t Session),
}

impl SealKey<'_> {
    /// Seals `buf[..plaintext_len]` in place (see [`Cipher::seal_in_place`]).
    #[inline]
    pub fn seal_in_place(&self, buf: &mut [u8], plaintext_len: usize) -> Result<usize, SealError> {
        match self {
            SealKey::Static(c) => c.seal_in_place(buf, plaintext_len),
            SealKey::Session(s) => s.seal_in_place(buf, plaintext_len),
        }
    }

    /// Seals `buf[start..]` in place and appends tag and nonce or trailer.
    #[inline]
    pub fn seal_append(&self, buf: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        match self {
            SealKey::Static(c) => c.seal_append(buf, start),
            SealKey::Session(s) => s.seal_append(buf, start),
        }
    }

    /// The static key of `cipher`.
    #[inline]
    pub fn of(cipher: &Cipher) -> SealKey<'_> {
        SealKey::Static(Cow::Borrowed(cipher))
    }

    #[inline]
    pub fn is_session(&self) -> bool {
        matches!(self, SealKey::Session(_))
    }
}

/// Appends to `buf` one data frame carrying the IPv6 `packet` sealed for its destination (inner
/// type 0), built in place. False (and nothing appended) if sealing failed.
#[inline]
pub fn push_sealed_l3(
    buf: &mut Vec<u8>,
    cipher: &Cipher,
    packet: &[u8],
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> bool {
    let key = SealKey::Static(Cow::Borrowed(cipher));
    push_sealed(buf, &key, PayloadType::L3, packet, hop, src, dst)
}

/// Appends to `buf` one data frame carrying `payload` after an inner header of type `kind`,
/// sealed with `key` and built in place. False (and nothing appended) if sealing failed.
#[inline]
pub fn push_sealed(
    buf: &mut Vec<u8>,
    key: &SealKey<'_>,
    kind: PayloadType,
    payload: &[u8],
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> bool {
    let slot = DataSlot::begin(buf);
    let body_start = slot.body_start();
    buf.extend_from_slice(&kind.inner_header());
    buf.extend_from_slice(payload);
    let sealed = seal_tail(key, buf, body_start, body_start - DATA_FRAME_OVERHEAD);
    slot.finish(buf, hop, src, dst).is_ok() && sealed
}

/// Seals `buf[start..]` in place and appends tag and nonce. On failure (the OS RNG could not seed
/// the nonce generator, or a session is used up) the frame is cut off at `frame_start` and
/// `false` returned.
#[inline]
pub(crate) fn seal_tail(
    key: &SealKey<'_>,
    buf: &mut Vec<u8>,
    start: usize,
    frame_start: usize,
) -> bool {
    if key.seal_append(buf, start).is_ok() {
        true
    } else {
        buf.truncate(frame_start);
        false
    }
}

/// The outbound core of one TUN reader: its segments, its per-destination refresh times, and
/// the batches and errors a batch of segments produced.
///
/// Per batch: split TUN reads into [`Sender::sink`], call [`Sender::handle_segments`] (which
/// returns the first next hop's frames, sealed where they were split), then take the other next
/// hops' batches from [`Sender::transmits`] and the ICMPv6 errors for the TUN from
/// [`Sender::poll_tun`].
pub struct Sender {
    own_subnet: Subnet,
    own_addr: Ipv6Addr,
    counters: Arc<DataCounters>,
    refresh: RefreshTracker,
    sink: FrameSink,
    outbox: Outbox,
    icmp: TunBatch,
}

impl Sender {
    /// A sender for the node whose /64 is `own_subnet` (`own_addr` its address), splitting into
    /// batches of `batch_capacity` bytes.
    pub fn new(
        own_subnet: Subnet,
        own_addr: Ipv6Addr,
        counters: Arc<DataCounters>,
        batch_capacity: usize,
    ) -> Sender {
        Sender {
            own_subnet,
            own_addr,
            counters,
            refresh: RefreshTracker::default(),
            sink: FrameSink::new(batch_capacity),
            outbox: Outbox::default(),
            icmp: TunBatch::default(),
        }
    }

    /// Where TUN reads split their packets for the next batch.
    #[inline]
    pub fn sink(&mut self) -> &mut FrameSink {
        &mut self.sink
    }

    /// Routes and seals every segment in the sink. Returns the frames for the first next hop,
    /// sealed in place; frames for other next hops wait in [`Sender::transmits`], errors for the
    /// TUN in [`Sender::poll_tun`], and what the owner must do in `needs`.
    pub fn handle_segments<L, N: NeedSink>(
        &mut self,
        table: &DataTable<L>,
        needs: &mut N,
        now: Instant,
    ) -> Option<(LinkId, FrameBatch)> {
        let mut ctx = Outbound {
            own_subnet: self.own_subnet,
            own_addr: self.own_addr,
            counters: &self.counters,
            needs,
            refresh: &mut self.refresh,
            now,
        };
        self.sink
            .seal(&mut ctx, table, &mut self.outbox, &mut self.icmp)
    }

    /// Batches for next hops other than the first, from the last [`Sender::handle_segments`].
    #[inline]
    pub fn transmits(&mut self) -> impl Iterator<Item = (LinkId, FrameBatch)> + '_ {
        self.outbox.drain()
    }

    /// ICMPv6 errors for the TUN about packets that could not be sent.
    #[inline]
    pub fn poll_tun(&mut self) -> Option<TunBatch> {
        (!self.icmp.is_empty()).then(|| std::mem::take(&mut self.icmp))
    }
}

/// Everything classifying a packet needs besides the table.
pub(crate) struct Outbound<'a, N> {
    pub own_subnet: Subnet,
    pub own_addr: Ipv6Addr,
    pub counters: &'a DataCounters,
    pub needs: &'a mut N,
    pub refresh: &'a mut RefreshTracker,
    pub now: Instant,
}

/// What to do with one IPv6 packet read from the TUN.
pub(crate) enum Verdict<'t> {
    /// Seal it for `cipher` and send it to `link` with outer hop limit `hop`.
    Seal {
        link: LinkId,
        key: SealKey<'t>,
        hop: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
    /// Already dealt with: dropped and counted, answered with an ICMPv6 error into the TUN
    /// batch, or handed to the owner until its route is known.
    Handled,
}

/// Decides where a packet from the TUN goes. Everything but sealing happens here, so that the
/// caller can seal wherever the packet already lies.
pub(crate) fn classify<'t, L, N: NeedSink>(
    ctx: &mut Outbound<'_, N>,
    table: &'t DataTable<L>,
    packet: &[u8],
    icmp_out: &mut TunBatch,
) -> Verdict<'t> {
    bump(&ctx.counters.tun_packets_in);
    let Ok(ip) = Ipv6Packet::new_header_checked(packet) else {
        bump(&ctx.counters.drop_not_ipv6);
        return Verdict::Handled;
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst.is_multicast() {
        // Neighbour/router discovery and MLD chatter on the TUN: nothing to route.
        return Verdict::Handled;
    }
    let mut answer = |kind| {
        if icmp_out.push_icmp(ctx.own_addr, src, kind, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        Verdict::Handled
    };
    if ctx.own_subnet.contains_addr(dst) {
        return answer(IcmpError::AddressUnreachable);
    }
    if !routing::overlay().contains_addr(src) {
        return answer(IcmpError::SourcePolicy);
    }
    let hop_limit = ip.hop_limit();
    if hop_limit < 2 {
        bump(&ctx.counters.drop_hop_limit);
        return answer(IcmpError::HopLimit);
    }
    match table.fib.lookup(dst) {
        Lookup::Route(nh) => {
            let due = ctx.refresh.due(dst, ctx.now);
            if due {
                let _ = ctx.needs.try_push(Need::Route(dst));
            }
            let pk = nh.public_key();
            let key = match table.sessions.send.get(&pk) {
                Some(s) => SealKey::Session(s),
                None => {
                    let Some(cipher) = table.cipher(&pk) else {
                        // A key no secret can be shared with: nothing can be sealed for it.
                        bump(&ctx.counters.drop_no_key);
                        return Verdict::Handled;
                    };
                    if due && table.sessions.enabled {
                        let _ = ctx.needs.try_push(Need::Session(pk));
                    }
                    SealKey::Static(cipher)
                }
            };
            if !table.links.contains_key(&nh.link) {
                hold(ctx, packet);
                return Verdict::Handled;
            }
            Verdict::Seal {
                link: nh.link,
                key,
                hop: hop_limit - 1,
                src,
                dst,
            }
        }
        Lookup::Local => answer(IcmpError::AddressUnreachable),
        Lookup::NoRoute => {
            bump(&ctx.counters.drop_no_route);
            let _ = ctx.needs.try_push(Need::Route(dst));
            answer(IcmpError::NoRoute)
        }
        Lookup::Resolving | Lookup::Unknown => {
            hold(ctx, packet);
            Verdict::Handled
        }
    }
}

/// Hands a packet to the owner to wait for its route.
fn hold<N: NeedSink>(ctx: &mut Outbound<'_, N>, packet: &[u8]) {
    if ctx.needs.try_push(Need::Pending(packet.to_vec())).is_err() {
        bump(&ctx.counters.drop_queue_full);
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
pub struct FrameSink {
    /// Recycled memory, not zeroed again for every batch; the first `len` bytes are in use.
    pub(crate) buf: Vec<u8>,
    len: usize,
    /// Frame start and segment length of each segment, and whether it is a super-packet taken
    /// whole (its virtio header first).
    spans: Vec<(usize, usize, bool)>,
    /// The flow tag of each frame kept in place so far (`fq::flow_of_packet`).
    flows: Vec<u32>,
    capacity: usize,
    /// The sessions of the batch being read: which destinations take super-packets whole.
    sessions: Option<Arc<SessionSnapshot>>,
    /// Where a super-packet taken whole is split after all, when its session went away.
    scratch: offload::Segments,
}

impl FrameSink {
    pub fn new(capacity: usize) -> FrameSink {
        FrameSink {
            buf: crate::pool::take_dirty(capacity),
            len: 0,
            spans: Vec::with_capacity(256),
            flows: Vec::with_capacity(64),
            capacity,
            sessions: None,
            scratch: offload::Segments::new(),
        }
    }

    #[inline]
    pub fn segments(&self) -> usize {
        self.spans.len()
    }

    #[inline]
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Routes and seals every segment. Frames for the first next hop stay in place and are
    /// returned as one batch; frames for other next hops are copied into `out`; what cannot be
    /// sent is cut out. The sink is empty afterwards, with a fresh buffer.
    pub(crate) fn seal<L, N: NeedSink>(
        &mut self,
        ctx: &mut Outbound<'_, N>,
        table: &DataTable<L>,
        out: &mut Outbox,
        icmp_out: &mut TunBatch,
    ) -> Option<(LinkId, FrameBatch)> {
        let mut main: Option<LinkId> = None;
        let mut frames = 0u32;
        // Where the kept frames end once the holes are closed.
        let mut kept_end = 0usize;
        let mut holes = false;
        for i in 0..self.spans.len() {
            let (start, len, whole) = self.spans[i];
            let seg_at = start + SINK_HEADROOM;
            let frame_len = SINK_HEADROOM + len + SINK_TAILROOM;
            let packet_at = if whole { seg_at + VNET_LEN } else { seg_at };
            let verdict = classify(ctx, table, &self.buf[packet_at..seg_at + len], icmp_out);
            let Verdict::Seal {
                link,
                key,
                hop,
                src,
                dst,
            } = verdict
            else {
                holes = true;
                continue;
            };
            if !whole {
                if let Some(&mss) = table.mss_clamp.get(&link) {
                    let packet = &mut self.buf[packet_at..seg_at + len];
                    if wire::ip::tcp::clamp_mss_v6(packet, mss) {
                        bump(&ctx.counters.tcp_mss_clamped);
                    }
                }
            }
            let flow = crate::fq::flow_of_packet(&self.buf[packet_at..seg_at + len]);
            if flow & crate::fq::TAG_ECT != 0 {
                // A CE mark the link's queue owes this flow (`fq::CeMarks`).
                if let Some(ce) = table.ce_marks.get(&link) {
                    if ce.take(flow) && crate::fq::mark_ce(&mut self.buf[packet_at..seg_at + len]) {
                        bump(&ctx.counters.ce_marked);
                    }
                }
            }
            let kind = match (whole, &key) {
                (false, _) => PayloadType::L3,
                (true, SealKey::Session(s)) if !table.datagram_links.contains(&link) => {
                    s.note_super_sent();
                    bump(&ctx.counters.super_frames_out);
                    PayloadType::SuperPacket
                }
                (true, _) => {
                    // The session went away since the read, or the next hop carries datagrams
                    // (a super-frame would go on its stream, behind every loss): the packet goes
                    // split after all.
                    let vnet =
                        VirtioNetHdr::parse(&self.buf[seg_at..]).unwrap_or(VirtioNetHdr::NONE);
                    self.scratch.clear();
                    let packet = &self.buf[packet_at..seg_at + len];
                    if offload::split(&vnet, packet, &mut self.scratch).is_ok() {
                        for seg in self.scratch.iter() {
                            let buf = out.buf(link, flow);
                            if push_sealed(buf, &key, PayloadType::L3, seg, hop, src, dst) {
                                bump(&ctx.counters.frames_sent);
                            }
                        }
                    }
                    holes = true;
                    continue;
                }
            };
            if main.is_some_and(|m| m != link) || len > MAX_SINK_SEGMENT {
                // Another next hop (several reads went into this batch): copy it over.
                let packet = &self.buf[seg_at..seg_at + len];
                if push_sealed(out.buf(link, flow), &key, kind, packet, hop, src, dst) {
                    bump(&ctx.counters.frames_sent);
                    if key.is_session() {
                        bump(&ctx.counters.session_frames_out);
                    }
                }
                holes = true;
                continue;
            }
            main = Some(link);
            let frame = &mut self.buf[start..start + frame_len];
            let (head, body) = frame.split_at_mut(DATA_FRAME_OVERHEAD);
            body[..INNER_L3.len()].copy_from_slice(&kind.inner_header());
            let plain = INNER_L3.len() + len;
            let sealed = key.seal_in_place(body, plain).is_ok();
            if !sealed || write_data_header(head, hop, src, dst, body.len()).is_err() {
                holes = true;
                continue;
            }
            if holes {
                self.buf.copy_within(start..start + frame_len, kept_end);
            }
            kept_end += frame_len;
            frames += 1;
            self.flows.push(flow);
            bump(&ctx.counters.frames_sent);
            if key.is_session() {
                bump(&ctx.counters.session_frames_out);
            }
        }
        self.spans.clear();
        self.len = 0;
        let link = main?;
        let mut bytes = std::mem::replace(&mut self.buf, crate::pool::take_dirty(self.capacity));
        bytes.truncate(kept_end);
        let flows = std::mem::replace(&mut self.flows, Vec::with_capacity(64));
        Some((
            link,
            FrameBatch {
                bytes,
                frames,
                flows,
            },
        ))
    }

    /// The sessions the next reads go by: super-packets for destinations they list in
    /// [`SessionSnapshot::whole`] are taken whole, not split.
    pub fn set_sessions(&mut self, sessions: Arc<SessionSnapshot>) {
        self.sessions = Some(sessions);
    }

    /// Forgets the segments, keeping the buffer.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.flows.clear();
        self.len = 0;
    }
}

impl SegmentSink for FrameSink {
    #[inline]
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
        self.spans.push((start, len, false));
        Some(&mut self.buf[seg_at..seg_at + len])
    }

    /// Takes a TCP or UDP super-packet whole when its destination's path carries super-frames
    /// and it fits one frame; laid out like a segment, its virtio header first.
    fn take_whole(&mut self, vnet: &VirtioNetHdr, packet: &[u8]) -> bool {
        let Some(sessions) = &self.sessions else {
            return false;
        };
        let len = VNET_LEN + packet.len();
        if sessions.whole.is_empty()
            || len > MAX_SINK_SEGMENT
            || !matches!(vnet.gso_kind(), gso::TCPV6 | gso::UDP_L4)
        {
            return false;
        }
        let Ok(ip) = Ipv6Packet::new_header_checked(packet) else {
            return false;
        };
        if !sessions
            .whole
            .contains(&((u128::from(ip.dst_addr()) >> 64) as u64))
        {
            return false;
        }
        let start = self.len;
        let seg_at = start + SINK_HEADROOM;
        let end = seg_at + len + SINK_TAILROOM;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        if vnet.emit(&mut self.buf[seg_at..seg_at + VNET_LEN]).is_err() {
            return false;
        }
        self.buf[seg_at + VNET_LEN..seg_at + len].copy_from_slice(packet);
        self.len = end;
        self.spans.push((start, len, true));
        true
    }
}
