//! The data path: packets from the TUN to peers (route, seal, frame) and frames from peers to the
//! TUN or onwards (open or forward). Both directions work on batches: a super-packet's segments
//! become one buffer of frames per next hop, a socket read's frames become one TUN write batch and
//! one buffer per next hop. Lookups read an immutable [`DataTable`] snapshot, without locks.

use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing::{ForwardingTable, LinkId, Lookup};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use wire::babel::Subnet;
use wire::frame::{DataSlot, DATA_FRAME_OVERHEAD};
use wire::icmp::{self, IcmpError};

use crate::keys::{self, Cipher};

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
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the data path asks of the owner task.
#[derive(Debug)]
pub(crate) enum Need {
    /// A destination (or a sender) is in use: query or refresh its route.
    Route(Ipv6Addr),
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
                        bytes: Vec::with_capacity(OUTBOX_CAPACITY),
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

/// One IPv6 packet read from the TUN: route it, seal it into the next hop's buffer, or answer it
/// with an ICMPv6 error into `icmp_out`.
pub(crate) fn outbound(
    ctx: &mut Outbound<'_>,
    table: &DataTable,
    packet: &[u8],
    out: &mut Outbox,
    icmp_out: &mut TunBatch,
) {
    bump(&ctx.counters.tun_packets_in);
    if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
        bump(&ctx.counters.drop_not_ipv6);
        return;
    }
    let src = addr_at(packet, 8);
    let dst = addr_at(packet, 24);
    if dst.is_multicast() {
        // Neighbour/router discovery and MLD chatter on the TUN: nothing to route.
        return;
    }
    if ctx.own_subnet.contains_addr(dst) {
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::AddressUnreachable, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return;
    }
    if !routing::overlay().contains_addr(src) {
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::SourcePolicy, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return;
    }
    let hop_limit = packet[7];
    if hop_limit < 2 {
        bump(&ctx.counters.drop_hop_limit);
        if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::HopLimit, packet) {
            bump(&ctx.counters.icmp_generated);
        }
        return;
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
                return;
            };
            if !table.links.contains_key(&nh.link) {
                queue_pending(ctx, packet);
                return;
            }
            if push_sealed_l3(out.buf(nh.link), cipher, packet, hop_limit - 1, src, dst) {
                bump(&ctx.counters.frames_sent);
            }
        }
        Lookup::Local => {
            if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::AddressUnreachable, packet) {
                bump(&ctx.counters.icmp_generated);
            }
        }
        Lookup::NoRoute => {
            bump(&ctx.counters.drop_no_route);
            let _ = ctx.needs.try_send(Need::Route(dst));
            if icmp_out.push_icmp(ctx.own_addr, src, IcmpError::NoRoute, packet) {
                bump(&ctx.counters.icmp_generated);
            }
        }
        Lookup::Resolving | Lookup::Unknown => queue_pending(ctx, packet),
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
    pub counters: &'a DataCounters,
    pub needs: &'a mpsc::Sender<Need>,
    pub refresh: &'a mut RefreshTracker,
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
        deliver(ctx, table, hop, src, dst, body, tun_out);
        return;
    }
    match table.fib.lookup(dst) {
        Lookup::Route(nh) if table.links.contains_key(&nh.link) => {
            if ctx.refresh.due(dst, ctx.now) {
                let _ = ctx.needs.try_send(Need::Route(dst));
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
            if ctx.refresh.due(dst, ctx.now) {
                let _ = ctx.needs.try_send(Need::Route(dst));
            }
        }
    }
}

/// A frame for our /64: open it with the sender's key and hand the packet to the TUN.
fn deliver(
    ctx: &mut Inbound<'_>,
    table: &DataTable,
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: &mut [u8],
    tun_out: &mut TunBatch,
) {
    let Some(cipher) = table
        .fib
        .source_key(src)
        .and_then(|k| table.ciphers.get(&k))
    else {
        // Keep it while the sender's route is looked up (bounded by the owner).
        let frame = InboundFrame {
            hop,
            src,
            body: body.to_vec(),
        };
        if ctx.needs.try_send(Need::PendingInbound(frame)).is_err() {
            bump(&ctx.counters.drop_no_key);
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
        INNER_TYPE_L3 if plain.len() >= 4 + IPV6_HEADER_LEN => {
            deliver_l3(&mut plain[4..], hop, tun_out);
            bump(&ctx.counters.frames_delivered);
        }
        INNER_TYPE_OOB_ICMP => {
            if deliver_oob_icmp(table, hop, src, dst, &mut plain[4..], tun_out) {
                bump(&ctx.counters.icmp_received);
            } else {
                bump(&ctx.counters.drop_inner);
            }
        }
        _ => bump(&ctx.counters.drop_inner),
    }
}

/// Hands a decrypted IPv6 packet to the TUN batch. The destination writes the decremented outer
/// hop limit into the packet (spec §3.2).
pub(crate) fn deliver_l3(packet: &mut [u8], hop: u8, tun_out: &mut TunBatch) {
    packet[7] = hop;
    tun_out.push(packet);
}

/// Opens a frame kept by the owner until its sender's key was known; delivers it if it is an
/// IPv6 packet.
pub(crate) fn deliver_pending(
    cipher: &Cipher,
    frame: &mut InboundFrame,
    tun_out: &mut TunBatch,
) -> bool {
    let Ok(plain) = cipher.open_in_place(&mut frame.body) else {
        return false;
    };
    if plain.len() < 4 + IPV6_HEADER_LEN || plain[0] != 1 || plain[1] != INNER_TYPE_L3 {
        return false;
    }
    deliver_l3(&mut plain[4..], frame.hop, tun_out);
    true
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

/// Receiving an OOB ICMP (spec §3.8): decrypt the quoted body with the key of the original
/// destination and write a plain ICMPv6 error about our own packet to the TUN.
fn deliver_oob_icmp(
    table: &DataTable,
    hop: u8,
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    payload: &mut [u8],
    tun_out: &mut TunBatch,
) -> bool {
    if payload.len() < 64 || payload.len() > 1296 {
        return false;
    }
    let orig_dst = addr_at(payload, 0);
    let (ty, code) = (payload[56], payload[57]);
    let Some(kind) = IcmpError::from_type_code(ty, code) else {
        return false;
    };
    let Some(cipher) = table
        .fib
        .source_key(orig_dst)
        .and_then(|k| table.ciphers.get(&k))
    else {
        return false;
    };
    let Ok(inner) = cipher.open_in_place(&mut payload[64..]) else {
        return false;
    };
    if inner.len() < 4 + IPV6_HEADER_LEN || inner[0] != 1 || inner[1] != INNER_TYPE_L3 {
        return false;
    }
    let original = &inner[4..];
    icmp::build_error(&mut tun_out.data, outer_src, outer_dst, hop, kind, original);
    tun_out.ends.push(tun_out.data.len());
    true
}
