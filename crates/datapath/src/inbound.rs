//! Inbound: data frames from a peer, opened and admitted to the TUN when they are for us,
//! forwarded to the next hop otherwise.

use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{PayloadType, Session, SessionOpenError, INNER_HEADER_LEN};
use routing::{LinkId, Lookup};
use tracing::warn;
use wire::babel::Subnet;
use wire::frame::DataSlot;
use wire::icmp::IcmpError;
use wire::ip::ipv6::Ipv6Packet;
use wire::virtio::{VirtioNetHdr, LEN as VNET_LEN};

use crate::batch::{FrameBatch, InPlace, Outbox, Run, TunBatch};
use crate::counters::{bump, DataCounters};
use crate::oob::{self, OobRefusal};
use crate::outbound::RefreshTracker;
use crate::ratelimit::{LogLimiter, TokenBucket};
use crate::table::{DataTable, InboundFrame, Need, NeedSink, PENDING_IN_FLIGHT_MAX};
use crate::Cipher;

/// Out-of-band ICMP errors a link may bring in, or cause, per second (and in a burst): plenty to
/// tell a host that a path failed, far too few to disturb it.
pub const ICMP_PER_SEC: u32 = 100;
pub const ICMP_BURST: u32 = 100;
/// Needs one link's frames may hand to the owner per second, and in a burst: a relay's refreshes
/// and new senders' first frames come far below it.
pub const LINK_NEEDS_PER_SEC: u32 = 500;
pub const LINK_NEEDS_BURST: u32 = 500;
/// How often frames from one sender that open under no key we hold may ask for a new session.
const STALE_SESSION_EVERY: Duration = Duration::from_secs(1);

/// Work a peer can make us do at packet rate, limited per link.
#[derive(Debug)]
pub struct LinkBudgets {
    /// Out-of-band ICMP errors from this link written to the TUN.
    pub icmp_in: TokenBucket,
    /// Out-of-band ICMP errors sent about this link's frames.
    pub icmp_out: TokenBucket,
    /// Needs this link's frames hand to the owner (see [`Inbound::link_may_ask`]).
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

/// One data frame as the link framing located it: the outer header's fields and the byte range
/// of its (sealed) body in the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFrame {
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub body: Range<usize>,
}

/// The inbound core of one link: its budgets, its refresh times, and what a batch of its frames
/// produced.
///
/// Per socket read: for every data frame the framing finds in the read buffer, call
/// [`Receiver::handle_data`] with that buffer; then write [`Receiver::tun_packets`] to the TUN
/// (opened in place in the read buffer, plus any built here), call [`Receiver::tun_done`], and
/// send [`Receiver::transmits`] to their next hops. Needs go to the [`NeedSink`] as they arise.
pub struct Receiver {
    own_subnet: Subnet,
    link: LinkId,
    counters: Arc<DataCounters>,
    refresh: RefreshTracker,
    stale: RefreshTracker,
    budgets: LinkBudgets,
    outbox: Outbox,
    built: TunBatch,
    in_place: InPlace,
    messages: MessageBatch,
}

/// Most message packets one read hands to the message task (more are dropped and counted as
/// `queue_full`; the sender retransmits them).
pub const MESSAGE_BATCH_MAX: usize = 1024;

/// A message-protocol packet (inner type 1) for us, opened: its ends, its sender's public key
/// and the plaintext after the inner header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sender_key: [u8; 32],
    pub packet: Vec<u8>,
}

/// Message packets opened since the shell last took them, at most [`MESSAGE_BATCH_MAX`].
#[derive(Debug, Default)]
pub struct MessageBatch {
    items: Vec<InboundMessage>,
}

impl MessageBatch {
    fn push(&mut self, m: InboundMessage, counters: &DataCounters) {
        if self.items.len() >= MESSAGE_BATCH_MAX {
            bump(&counters.drop_queue_full);
            return;
        }
        self.items.push(m);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, InboundMessage> {
        self.items.drain(..)
    }
}

impl Receiver {
    /// The core of `link` on the node whose /64 is `own_subnet`.
    pub fn new(own_subnet: Subnet, link: LinkId, counters: Arc<DataCounters>) -> Receiver {
        Receiver {
            own_subnet,
            link,
            counters,
            refresh: RefreshTracker::default(),
            stale: RefreshTracker::every(STALE_SESSION_EVERY),
            budgets: LinkBudgets::default(),
            outbox: Outbox::default(),
            built: TunBatch::default(),
            in_place: InPlace::default(),
            messages: MessageBatch::default(),
        }
    }

    /// One data frame whose body lies at `frame.body` in `buf`: for us, opened there; for
    /// another node, copied into its next hop's batch.
    pub fn handle_data<L, N: NeedSink>(
        &mut self,
        table: &DataTable<L>,
        needs: &mut N,
        now: Instant,
        buf: &mut [u8],
        frame: DataFrame,
    ) {
        let Some(body) = buf.get_mut(frame.body.clone()) else {
            // The framing hands out ranges inside its buffer; anything else is a caller's bug,
            // never a reason to panic.
            bump(&self.counters.drop_inner);
            return;
        };
        let mut ctx = Inbound {
            own_subnet: self.own_subnet,
            link: self.link,
            counters: &self.counters,
            needs,
            refresh: &mut self.refresh,
            stale: &mut self.stale,
            budgets: &mut self.budgets,
            messages: &mut self.messages,
            now,
            admitted: None,
        };
        ctx.handle(
            table,
            &frame,
            body,
            &mut self.outbox,
            &mut self.built,
            &mut self.in_place,
        );
    }

    /// Packets for the TUN from the frames handled since the last [`Receiver::tun_done`]: those
    /// opened in place, as slices of `buf` (the buffer the frames were handled in), then those
    /// built here (out-of-band ICMP errors turned into ICMPv6 errors).
    pub fn tun_packets<'a>(&'a mut self, buf: &'a mut [u8], out: &mut Vec<&'a mut [u8]>) {
        self.in_place.slices(buf, out);
        self.built.split_into(out);
    }

    /// Whether super-packets are among the packets for the TUN: then write them with
    /// [`Receiver::tun_runs`], which keeps their order with the plain ones.
    #[inline]
    pub fn tun_has_wholes(&self) -> bool {
        self.in_place.has_wholes()
    }

    /// Like [`Receiver::tun_packets`], in runs: plain packets (to coalesce) and super-packets
    /// with the virtio header to write each with, in the order they arrived.
    pub fn tun_runs<'a>(&'a mut self, buf: &'a mut [u8], out: &mut Vec<Run<'a>>) {
        self.in_place.runs(buf, out);
        let mut built = Vec::new();
        self.built.split_into(&mut built);
        if !built.is_empty() {
            out.push(Run::Packets(built));
        }
    }

    /// How many packets wait for the TUN.
    #[inline]
    pub fn tun_len(&self) -> usize {
        self.in_place.len() + self.built.len()
    }

    /// Forgets the packets for the TUN (written, or dropped by the caller).
    pub fn tun_done(&mut self) {
        self.in_place.clear();
        self.built.clear();
    }

    /// The message packets for us from the frames handled since the last call.
    pub fn messages(&mut self) -> &mut MessageBatch {
        &mut self.messages
    }

    /// The batches for next hops from the frames handled since the last call.
    #[inline]
    pub fn transmits(&mut self) -> impl Iterator<Item = (LinkId, FrameBatch)> + '_ {
        self.outbox.drain()
    }

    #[inline]
    pub fn has_transmits(&self) -> bool {
        !self.outbox.is_empty()
    }
}

/// Everything handling a frame needs besides the table and the outputs.
pub(crate) struct Inbound<'a, N> {
    pub own_subnet: Subnet,
    /// The link the frames came in on.
    pub link: LinkId,
    pub counters: &'a DataCounters,
    pub needs: &'a mut N,
    pub refresh: &'a mut RefreshTracker,
    /// When each sender last made us ask for a new session.
    pub stale: &'a mut RefreshTracker,
    pub budgets: &'a mut LinkBudgets,
    /// Message packets for us, for the message task.
    pub messages: &'a mut MessageBatch,
    pub now: Instant,
    /// Set by `accept`: the IPv6 packet it was given may go to the TUN (with the virtio header
    /// to write it with, for a super-packet).
    pub admitted: Option<Option<VirtioNetHdr>>,
}

/// Why an opened packet does not go to the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerRefusal {
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

    fn describe(self) -> &'static str {
        match self {
            InnerRefusal::NotIpv6 => "a packet that is not IPv6",
            InnerRefusal::Source => "a packet from outside the sender's subnet",
            InnerRefusal::Destination => "a packet to outside our /64",
        }
    }
}

/// The checks every opened packet passes before it is written to the TUN: an IPv6 packet whose
/// source lies in `sender` (the subnet whose key opened it: the key authenticates that subnet and
/// nothing else) and whose destination lies in our own /64. Honest senders never fail them;
/// without them any peer that announces a key could write packets with any addresses into the
/// host.
#[inline]
pub fn check_inner(packet: &[u8], sender: Subnet, own: Subnet) -> Result<(), InnerRefusal> {
    let ip = Ipv6Packet::new_header_checked(packet).map_err(|_| InnerRefusal::NotIpv6)?;
    if !sender.contains_addr(ip.src_addr()) {
        return Err(InnerRefusal::Source);
    }
    if !own.contains_addr(ip.dst_addr()) {
        return Err(InnerRefusal::Destination);
    }
    Ok(())
}

/// Whether a frame from `src` can ever be opened: only senders inside `400::/7` and outside our
/// own /64 have keys a route query could find.
#[inline]
pub fn may_have_key(src: Ipv6Addr, own: Subnet) -> bool {
    routing::overlay().contains_addr(src) && !own.contains_addr(src)
}

/// Makes an opened IPv6 packet ready for the TUN: [`check_inner`] (counting a refusal), then the
/// decremented outer hop limit written into it, as the destination does (`docs/protocol.md`
/// §6.4).
#[inline]
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
    Ipv6Packet::new_unchecked(packet).set_hop_limit(hop);
    Ok(())
}

/// Counts what became of a received out-of-band ICMP error; the refusal, if any.
fn count_oob(got: Result<(), OobRefusal>, counters: &DataCounters) -> Option<OobRefusal> {
    match got {
        Ok(()) => {
            bump(&counters.icmp_received);
            None
        }
        Err(why) => {
            bump(match why {
                OobRefusal::Forged => &counters.refused_icmp_forged,
                OobRefusal::Malformed => &counters.drop_inner,
            });
            Some(why)
        }
    }
}

/// Opens a frame kept by the owner until its sender's key was known (`sender` is the subnet
/// that key is for) and adds what it carries to `tun_out`: an IPv6 packet that passes
/// [`check_inner`], or the ICMPv6 error an out-of-band one reports about a packet of ours
/// (`orig_cipher` gives the key of that packet's destination). Counts what it refuses. A message
/// packet goes to `messages`, with `sender_key` (the key that opened it).
#[allow(clippy::too_many_arguments)]
pub fn deliver_pending(
    cipher: &Cipher,
    sender: Subnet,
    sender_key: [u8; 32],
    own: Subnet,
    frame: &mut InboundFrame,
    tun_out: &mut TunBatch,
    messages: &mut MessageBatch,
    counters: &DataCounters,
    orig_cipher: &dyn Fn(Ipv6Addr) -> crate::oob::OrigKeys,
) -> PendingOutcome {
    let (kind, payload) = match cipher.open_payload(&mut frame.body) {
        Ok(opened) => opened,
        Err(crypto::OpenError::InnerVersion(_)) => {
            bump(&counters.drop_inner);
            return PendingOutcome::Refused;
        }
        Err(_) => {
            bump(&counters.drop_decrypt);
            return PendingOutcome::Undecryptable;
        }
    };
    match kind {
        PayloadType::L3 => {
            if admit_l3(payload, sender, own, frame.hop, counters).is_err() {
                return PendingOutcome::Refused;
            }
            tun_out.push(payload);
            PendingOutcome::Delivered
        }
        PayloadType::Handshake => PendingOutcome::Handshake(payload.to_vec()),
        PayloadType::Keepalive => PendingOutcome::Refused,
        PayloadType::OobIcmp => {
            let got = oob::deliver(
                orig_cipher,
                own,
                frame.hop,
                frame.src,
                frame.dst,
                payload,
                tun_out,
            );
            count_oob(got, counters);
            PendingOutcome::Refused
        }
        PayloadType::Message => {
            let m = InboundMessage {
                src: frame.src,
                dst: frame.dst,
                sender_key,
                packet: payload.to_vec(),
            };
            messages.push(m, counters);
            // Not a packet for the TUN: `frames_delivered` counts those only.
            PendingOutcome::Refused
        }
        _ => {
            bump(&counters.drop_inner);
            PendingOutcome::Refused
        }
    }
}

/// What became of a frame that waited for its sender's key.
#[derive(Debug, PartialEq, Eq)]
pub enum PendingOutcome {
    /// An IPv6 packet, added to the TUN batch.
    Delivered,
    /// Opened, and dealt with or refused (counted).
    Refused,
    /// Did not open with the static key (counted): perhaps sealed under a session we lost.
    Undecryptable,
    /// A session handshake message (the plaintext after the inner header).
    Handshake(Vec<u8>),
}

impl<N: NeedSink> Inbound<'_, N> {
    /// One data frame from a peer; `body` (at `frame.body` in the read buffer) is the sealed
    /// blob, opened in place when it is for us.
    pub(crate) fn handle<L>(
        &mut self,
        table: &DataTable<L>,
        frame: &DataFrame,
        body: &mut [u8],
        out: &mut Outbox,
        tun_out: &mut TunBatch,
        in_place: &mut InPlace,
    ) {
        let (src, dst) = (frame.src, frame.dst);
        let for_us = self.own_subnet.contains_addr(dst);
        // Every node, the destination included, requires hop limit >= 2 and decrements it.
        if frame.hop_limit < 2 {
            bump(&self.counters.drop_hop_limit);
            if !for_us {
                self.oob_icmp(table, IcmpError::HopLimit, src, dst, body, out);
            }
            return;
        }
        let hop = frame.hop_limit - 1;
        if for_us {
            self.deliver(table, hop, frame, body, tun_out, in_place);
            return;
        }
        match table.fib.lookup(dst) {
            Lookup::Route(nh) if table.links.contains_key(&nh.link) => {
                if self.refresh.due(dst, self.now) && self.link_may_ask() {
                    let _ = self.needs.try_push(Need::RouteFor(dst, self.link));
                }
                let buf = out.buf(nh.link, crate::fq::flow_of_pair(src, dst));
                let slot = DataSlot::begin(buf);
                buf.extend_from_slice(body);
                if slot.finish(buf, hop, src, dst).is_ok() {
                    bump(&self.counters.frames_forwarded);
                }
            }
            Lookup::NoRoute => {
                bump(&self.counters.drop_no_route);
                self.oob_icmp(table, IcmpError::NoRoute, src, dst, body, out);
            }
            _ => {
                bump(&self.counters.drop_no_route);
                if self.refresh.due(dst, self.now) && self.link_may_ask() {
                    let _ = self.needs.try_push(Need::RouteFor(dst, self.link));
                }
            }
        }
    }

    /// A frame for our /64: open it under a session (by the index in its trailer) or with the
    /// sender's static key, and hand what it carries on.
    fn deliver<L>(
        &mut self,
        table: &DataTable<L>,
        hop: u8,
        frame: &DataFrame,
        body: &mut [u8],
        tun_out: &mut TunBatch,
        in_place: &mut InPlace,
    ) {
        let src = frame.src;
        let sessions = &table.sessions;
        if sessions.enabled {
            let entry = crypto::session::trailer_index(body).and_then(|i| sessions.recv.get(&i));
            if let Some(e) = entry.filter(|e| e.prefix == (u128::from(src) >> 64) as u64) {
                let first = !e.session.confirmed();
                match e.session.open_payload(body) {
                    Ok((kind, payload)) => {
                        if first {
                            let _ = self
                                .needs
                                .try_push(Need::SessionConfirmed(e.session.local_index()));
                        }
                        bump(&self.counters.session_frames_in);
                        let sender = Subnet::slash64(src);
                        let len = payload.len();
                        let session = Some(&*e.session);
                        self.accept(
                            table, hop, frame, sender, None, kind, payload, session, tun_out,
                        );
                        self.clamp_mss(table, body, len);
                        self.place(frame, len, in_place);
                        return;
                    }
                    Err(SessionOpenError::NotSession) => {}
                    Err(SessionOpenError::Replay) => {
                        bump(&self.counters.session_replays);
                        return;
                    }
                    Err(SessionOpenError::Authentication) => {
                        bump(&self.counters.drop_decrypt);
                        return;
                    }
                    Err(SessionOpenError::InnerVersion(_)) => {
                        bump(&self.counters.drop_inner);
                        return;
                    }
                }
            }
        }
        let sender = table.fib.source(src);
        let Some((sender, key, cipher)) = sender.and_then(|(s, k)| Some((s, k, table.cipher(&k)?)))
        else {
            self.hold(hop, src, frame.dst, body);
            return;
        };
        let (kind, payload) = match cipher.open_payload(body) {
            Ok(opened) => opened,
            Err(crypto::OpenError::InnerVersion(_)) => {
                bump(&self.counters.drop_inner);
                return;
            }
            Err(_) => {
                bump(&self.counters.drop_decrypt);
                // Sealed under a session we do not hold (one of us restarted)? Ask for a new one
                // at once, at most once a second per sender.
                if sessions.enabled && self.stale.due(src, self.now) && self.link_may_ask() {
                    let _ = self.needs.try_push(Need::SessionStale(key));
                }
                return;
            }
        };
        let len = payload.len();
        self.accept(
            table,
            hop,
            frame,
            sender,
            Some(key),
            kind,
            payload,
            None,
            tun_out,
        );
        self.clamp_mss(table, body, len);
        self.place(frame, len, in_place);
    }

    /// A TCP SYN that came over a link whose datagrams cannot take a full-size frame gets its MSS
    /// lowered as one sent over it does (`docs/quic.md`): the local host's segments then fit too,
    /// whatever the far end advertised. `body` holds the opened packet after the inner header.
    fn clamp_mss<L>(&self, table: &DataTable<L>, body: &mut [u8], len: usize) {
        if !matches!(self.admitted, Some(None)) {
            return;
        }
        let Some(&mss) = table.mss_clamp.get(&self.link) else {
            return;
        };
        if let Some(p) = body.get_mut(INNER_HEADER_LEN..INNER_HEADER_LEN + len) {
            if wire::ip::tcp::clamp_mss_v6(p, mss) {
                bump(&self.counters.tcp_mss_clamped);
            }
        }
    }

    /// Records where the packet `accept` admitted lies: the plaintext starts at the body's start,
    /// the packet after the inner header (and a super-packet after its virtio header).
    fn place(&mut self, frame: &DataFrame, len: usize, in_place: &mut InPlace) {
        let at = frame.body.start + INNER_HEADER_LEN;
        match self.admitted.take() {
            Some(None) => in_place.push(at..at + len),
            Some(Some(vnet)) => in_place.push_whole(at + VNET_LEN..at + len, vnet),
            None => {}
        }
    }

    /// What an opened frame carries, sent by `sender` (the subnet its key authenticates; the
    /// session it opened under, if any): an IPv6 packet or a super-packet is checked and left in
    /// place (`self.admitted` tells the caller), an out-of-band error becomes an ICMPv6 error for
    /// the TUN, handshakes and path messages go to the owner.
    #[allow(clippy::too_many_arguments)]
    fn accept<L>(
        &mut self,
        table: &DataTable<L>,
        hop: u8,
        frame: &DataFrame,
        sender: Subnet,
        sender_key: Option<[u8; 32]>,
        kind: PayloadType,
        payload: &mut [u8],
        session: Option<&Session>,
        tun_out: &mut TunBatch,
    ) {
        let src = frame.src;
        self.admitted = None;
        match kind {
            PayloadType::L3 => {
                if let Err(why) = admit_l3(payload, sender, self.own_subnet, hop, self.counters) {
                    self.budgets
                        .warn_refused(self.link, self.now, why.describe(), src);
                    return;
                }
                self.admitted = Some(None);
                bump(&self.counters.frames_delivered);
            }
            PayloadType::SuperPacket => {
                let Some(session) = session else {
                    // Only ever sent under a session.
                    bump(&self.counters.drop_inner);
                    return;
                };
                let Some((head, packet)) = payload.split_at_mut_checked(VNET_LEN) else {
                    bump(&self.counters.drop_inner);
                    return;
                };
                let whole = VirtioNetHdr::parse(head)
                    .ok()
                    .and_then(|sent| offload::whole_header(&sent, packet).ok());
                let Some(vnet) = whole else {
                    bump(&self.counters.drop_inner);
                    return;
                };
                if let Err(why) = admit_l3(packet, sender, self.own_subnet, hop, self.counters) {
                    self.budgets
                        .warn_refused(self.link, self.now, why.describe(), src);
                    return;
                }
                session.note_super_received();
                self.admitted = Some(Some(vnet));
                bump(&self.counters.super_frames_in);
                bump(&self.counters.frames_delivered);
            }
            PayloadType::PathProbe | PayloadType::PathAck => {
                let Some(session) = session else {
                    bump(&self.counters.drop_inner);
                    return;
                };
                if self.link_may_ask() {
                    let keep = payload.len().min(16);
                    let _ = self.needs.try_push(Need::Path {
                        index: session.local_index(),
                        kind,
                        payload: payload[..keep].to_vec(),
                    });
                }
            }
            PayloadType::OobIcmp => {
                if !self.budgets.icmp_in.take(self.now) {
                    bump(&self.counters.refused_icmp_rate);
                    return;
                }
                let orig = |dst| {
                    let session = table.fib.source_key(dst);
                    let session = session.and_then(|k| table.sessions.send.get(&k).cloned());
                    (table.source_cipher(dst).map(Cow::into_owned), session)
                };
                let got = oob::deliver(
                    &orig,
                    self.own_subnet,
                    hop,
                    src,
                    frame.dst,
                    payload,
                    tun_out,
                );
                if count_oob(got, self.counters) == Some(OobRefusal::Forged) {
                    let what = "an ICMP error about a packet we did not send to its destination";
                    self.budgets.warn_refused(self.link, self.now, what, src);
                }
            }
            PayloadType::Handshake if table.sessions.enabled => {
                if self.link_may_ask() {
                    let need = Need::Handshake {
                        src,
                        dst: frame.dst,
                        payload: payload.to_vec(),
                    };
                    let _ = self.needs.try_push(need);
                }
            }
            PayloadType::Keepalive => {}
            PayloadType::Message => {
                // Messages travel under the static key: its owner is the sender.
                let Some(sender_key) = sender_key else {
                    bump(&self.counters.drop_inner);
                    return;
                };
                let m = InboundMessage {
                    src,
                    dst: frame.dst,
                    sender_key,
                    packet: payload.to_vec(),
                };
                self.messages.push(m, self.counters);
            }
            _ => bump(&self.counters.drop_inner),
        }
    }

    /// Keeps a frame for us whose sender's key is not known yet while its route is looked up
    /// (bounded here while on its way, and by the owner while it waits); refuses it outright
    /// when no route query can ever give it a key.
    fn hold(&mut self, hop: u8, src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) {
        if !may_have_key(src, self.own_subnet) {
            bump(&self.counters.refused_sender);
            return;
        }
        if !self.link_may_ask() {
            return;
        }
        let in_flight = &self.counters.pending_in_flight;
        if in_flight.fetch_add(body.len(), Ordering::Relaxed) + body.len() > PENDING_IN_FLIGHT_MAX {
            in_flight.fetch_sub(body.len(), Ordering::Relaxed);
            bump(&self.counters.drop_pending_full);
            return;
        }
        let frame = InboundFrame {
            hop,
            src,
            dst,
            body: body.to_vec(),
            link: self.link,
        };
        if self.needs.try_push(Need::PendingInbound(frame)).is_err() {
            in_flight.fetch_sub(body.len(), Ordering::Relaxed);
            bump(&self.counters.drop_pending_full);
        }
    }

    /// Whether this link's frames may hand the owner one more need (a route to query, a frame to
    /// keep until its sender's key is known): not past the link's rate, and not into the room
    /// the need sink keeps for the node's own packets. Counts refusals.
    pub(crate) fn link_may_ask(&mut self) -> bool {
        if !self.needs.room_for_links() || !self.budgets.needs.take(self.now) {
            bump(&self.counters.refused_link_needs);
            return false;
        }
        true
    }

    /// Out-of-band ICMP about a frame we cannot pass on (`docs/protocol.md` §6.8): sealed for its
    /// source, rate-limited per link.
    fn oob_icmp<L>(
        &mut self,
        table: &DataTable<L>,
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
        if !self.budgets.icmp_out.take(self.now) {
            bump(&self.counters.icmp_rate_limited);
            return;
        }
        if !table.links.contains_key(&nh.link) {
            return;
        }
        let Some(cipher) = table.source_cipher(orig_src) else {
            return;
        };
        let from = self.own_subnet.addr();
        if oob::push_oob_icmp(
            out.buf(nh.link, crate::fq::flow_of_pair(from, orig_src)),
            &cipher,
            kind,
            from,
            orig_src,
            orig_dst,
            dropped,
        ) {
            bump(&self.counters.icmp_generated);
        }
    }
}
