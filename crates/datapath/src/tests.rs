//! The core's behaviour: outbound classify/seal, inbound open/admit/forward, out-of-band ICMP,
//! budgets, and in-place delivery by byte range.

use std::cell::RefCell;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::{PublicKey, SecretKey};
use offload::SegmentSink;
use routing::{ForwardingTable, LinkId, NextHop};
use wire::babel::{RouterId, Subnet};
use wire::frame::{Frame, FrameReader};
use wire::icmp::{self, IcmpError};
use wire::ip::ipv6::Ipv6Packet;

use crate::inbound::{DataFrame, Inbound};
use crate::outbound::{RefreshTracker, INNER_L3};
use crate::*;

const IPV6_HEADER_LEN: usize = 40;

/// A node's keys, as the node holds them.
struct Identity {
    secret: SecretKey,
    public: PublicKey,
}

impl Identity {
    fn new(secret: SecretKey) -> Identity {
        let public = secret.public_key();
        Identity { secret, public }
    }
    fn public_key(&self) -> [u8; 32] {
        self.public.0
    }
    fn address(&self) -> Ipv6Addr {
        self.public.address()
    }
    fn subnet(&self) -> Subnet {
        self.public.subnet()
    }
    fn cipher_for(&self, key: &[u8; 32]) -> Option<Cipher> {
        self.secret
            .shared_secret(&PublicKey(*key))
            .map(|s| Cipher::new(&s))
    }
}

struct Fixture {
    table: DataTable<()>,
    a: Identity,
    b: Identity,
    c: Identity,
    /// The owner's channel: 16 needs, the last 4 kept for the node's own.
    needs: RefCell<Needs>,
    counters: Arc<DataCounters>,
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
        table.links.insert(LinkId(link), ());
        table
            .ciphers
            .insert(id.public_key(), a.cipher_for(&id.public_key()).unwrap());
    }
    Fixture {
        table,
        a,
        b,
        c,
        needs: RefCell::new(Needs::with_room(16, 4)),
        counters: Arc::default(),
    }
}

impl Fixture {
    /// The next need the owner would take.
    fn next_need(&self) -> Option<Need> {
        let mut n = self.needs.borrow_mut();
        if n.list.is_empty() {
            None
        } else {
            Some(n.list.remove(0))
        }
    }
}

fn packet(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, fill: u8, len: usize) -> Vec<u8> {
    let mut p = vec![fill; IPV6_HEADER_LEN + len];
    p[..8].copy_from_slice(&[0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 17, hop]);
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

/// A batch for a next hop.
type Transmit = (LinkId, FrameBatch);

fn sender(f: &Fixture, capacity: usize) -> Sender {
    Sender::new(f.a.subnet(), f.a.address(), f.counters.clone(), capacity)
}

/// Seals the sink as node A's TUN reader would: the main batch, the other next hops' batches
/// and the ICMPv6 errors for the TUN.
fn seal(f: &Fixture, s: &mut Sender) -> (Option<Transmit>, Vec<Transmit>, TunBatch) {
    let main = s.handle_segments(&f.table, &mut *f.needs.borrow_mut(), Instant::now());
    let others = s.transmits().collect();
    (main, others, s.poll_tun().unwrap_or_default())
}

fn put(s: &mut Sender, p: &[u8]) {
    s.sink().segment(p.len()).unwrap().copy_from_slice(p);
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
    let f = fixture();
    let (a, b, c) = (f.a.address(), f.b.address(), f.c.address());
    let unknown: Ipv6Addr = "4ff:1:2:3::9".parse().unwrap();
    let to_b1 = packet(a, b, 64, 0x11, 1300);
    let to_b2 = packet(a, b, 2, 0x22, 10);
    let to_nowhere = packet(a, unknown, 64, 0x33, 100);
    let to_c = packet(a, c, 64, 0x44, 500);
    let to_b3 = packet(a, b, 64, 0x55, 1);
    let mut sink = sender(&f, 4096);
    for p in [&to_b1, &to_b2, &to_nowhere, &to_c, &to_b3] {
        put(&mut sink, p);
    }
    let (main, others, icmp) = seal(&f, &mut sink);
    let (link, batch) = main.expect("frames for link 1");
    assert_eq!(link, LinkId(1));
    assert_eq!(batch.frames, 3);
    let got = open_all(&batch.bytes, &f.b, &f.a);
    assert_eq!(
        got,
        vec![(63, to_b1.clone()), (1, to_b2.clone()), (63, to_b3.clone())]
    );
    // C's packet went to link 2's buffer, sealed for C.
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].0, LinkId(2));
    assert_eq!(others[0].1.frames, 1);
    assert_eq!(open_all(&others[0].1.bytes, &f.c, &f.a), vec![(63, to_c)]);
    // The unknown destination is held by the owner until a route is known.
    let mut held = Vec::new();
    while let Some(n) = f.next_need() {
        if let Need::Pending(p) = n {
            held.push(p);
        }
    }
    assert_eq!(held, vec![to_nowhere]);
    assert!(icmp.is_empty());
    assert_eq!(f.counters.frames_sent.load(Ordering::Relaxed), 4);
    // The sink is ready for the next batch.
    assert_eq!(sink.sink().segments(), 0);
    assert_eq!(sink.sink().bytes(), 0);
}

#[test]
fn a_recycled_buffer_leaves_nothing_of_its_old_contents() {
    let f = fixture();
    let (a, b) = (f.a.address(), f.b.address());
    let unknown: Ipv6Addr = "4ff:1:2:3::9".parse().unwrap();
    let mut sink = sender(&f, 4096);
    // As a recycled batch comes back: full of an earlier batch's bytes.
    sink.sink().buf = vec![0xAA; 8192];
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
    let f = fixture();
    let a = f.a.address();
    let mut sink = sender(&f, 1024);
    // Hop limit 1: "time exceeded" back into the TUN; not IPv6: dropped.
    put(&mut sink, &packet(a, f.b.address(), 1, 0, 8));
    put(&mut sink, &[0x45; 60]);
    let (main, others, icmp) = seal(&f, &mut sink);
    assert!(main.is_none());
    assert!(others.is_empty());
    assert_eq!(icmp.len(), 1);
    assert_eq!(f.counters.drop_hop_limit.load(Ordering::Relaxed), 1);
    assert_eq!(f.counters.drop_not_ipv6.load(Ordering::Relaxed), 1);
    assert!(f.next_need().is_none());
    assert_eq!(sink.sink().bytes(), 0);
}

#[test]
fn in_place_spans_become_slices_and_strays_are_skipped() {
    let mut buf: Vec<u8> = (0..100u8).collect();
    let mut spans = InPlace::default();
    spans.push(10..20);
    spans.push(50..55);
    spans.push(0..5); // out of order: skipped
    spans.push(98..103); // past the buffer: skipped
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
    body: Vec<u8>,
) -> Received {
    receive_hop(f, budgets, now, link, 64, src, dst, body).0
}

/// [`receive`] with the frame's hop limit, also returning the batches for next hops. The body
/// sits at an offset in a larger buffer, as in a link's read buffer.
#[allow(clippy::too_many_arguments)]
fn receive_hop(
    f: &Fixture,
    budgets: &mut LinkBudgets,
    now: Instant,
    link: u64,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: Vec<u8>,
) -> (Received, Outbox) {
    let mut buf = vec![0xEE; 7];
    buf.extend_from_slice(&body);
    buf.extend_from_slice(&[0xEE; 5]);
    let frame = DataFrame {
        hop_limit,
        src,
        dst,
        body: 7..7 + body.len(),
    };
    let mut refresh = RefreshTracker::default();
    let mut stale = RefreshTracker::default();
    let mut needs = f.needs.borrow_mut();
    let mut ctx = Inbound {
        own_subnet: f.a.subnet(),
        link: LinkId(link),
        counters: &f.counters,
        needs: &mut *needs,
        refresh: &mut refresh,
        stale: &mut stale,
        budgets,
        messages: &mut Default::default(),
        now,
        admitted: Default::default(),
    };
    let (mut outbox, mut tun_out, mut in_place) =
        (Outbox::default(), TunBatch::default(), InPlace::default());
    let (head, rest) = buf.split_at_mut(7);
    let _ = head;
    ctx.handle(
        &f.table,
        &frame,
        &mut rest[..body.len()],
        &mut outbox,
        &mut tun_out,
        &mut in_place,
    );
    let mut tun: Vec<Vec<u8>> = Vec::new();
    let mut spans = Vec::new();
    in_place.slices(&mut buf, &mut spans);
    tun.extend(spans.iter().map(|p| p.to_vec()));
    let mut built = Vec::new();
    tun_out.split_into(&mut built);
    tun.extend(built.iter().map(|p| p.to_vec()));
    (Received { tun }, outbox)
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
    let f = fixture();
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
    assert!(f.next_need().is_none(), "nothing handed to the owner");
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
    match f.next_need() {
        Some(Need::PendingInbound(frame)) => {
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
    let f = fixture();
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
    assert!(f
        .needs
        .borrow_mut()
        .try_push(Need::Route(nowhere(999)))
        .is_ok());
    let mut asked = 0;
    while let Some(n) = f.next_need() {
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
        while f.next_need().is_some() {
            asked += 1;
        }
    }
    assert_eq!(asked, LINK_NEEDS_BURST);
    let later = t0 + Duration::from_millis(100);
    for i in 0..100 {
        receive(&f, &mut budgets, later, 1, c, nowhere(i), vec![0u8; 100]);
        while f.next_need().is_some() {
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
        let (_, mut outbox) = receive_hop(&f, &mut budgets, t0, 1, 1, b, c, vec![0u8; 100]);
        answered += outbox
            .drain()
            .map(|(_, b)| b.frames as usize)
            .sum::<usize>();
    }
    assert_eq!(answered, ICMP_BURST as usize);
    assert_eq!(count(&f.counters.icmp_rate_limited), 50);
}

#[test]
fn a_read_buffer_of_frames_is_opened_in_place_and_forwarded_through_the_receiver() {
    let f = fixture();
    let (a, b, c) = (f.a.address(), f.b.address(), f.c.address());
    // What B's link brings in one read: two packets for A, one to relay to C, one A must refuse.
    let p1 = packet(b, a, 64, 0x11, 300);
    let p2 = packet(b, a, 9, 0x22, 5);
    let refused = packet(c, a, 64, 0x33, 20);
    let mut stream = Vec::new();
    for p in [&p1, &p2, &refused] {
        let body = body_for(&f.b, &f.a, 0, p);
        wire::frame::encode_data(&mut stream, 64, b, a, &body).unwrap();
    }
    wire::frame::encode_data(&mut stream, 64, b, c, &[0x77; 90]).unwrap();
    let mut reader = FrameReader::new();
    assert_eq!(reader.push(&stream), stream.len());
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());
    let now = Instant::now();
    while let Some(frame) = reader.next_frame_at().unwrap() {
        let Frame::Data {
            hop_limit,
            src,
            dst,
            body,
        } = frame
        else {
            panic!("expected data frames");
        };
        let frame = DataFrame {
            hop_limit,
            src,
            dst,
            body,
        };
        rx.handle_data(
            &f.table,
            &mut *f.needs.borrow_mut(),
            now,
            reader.buffer_mut(),
            frame,
        );
    }
    assert_eq!(rx.tun_len(), 2);
    let mut packets = Vec::new();
    rx.tun_packets(reader.buffer_mut(), &mut packets);
    let got: Vec<Vec<u8>> = packets.iter().map(|p| p.to_vec()).collect();
    drop(packets);
    let (mut w1, mut w2) = (p1.clone(), p2.clone());
    w1[7] = 63;
    w2[7] = 63;
    assert_eq!(got, vec![w1, w2]);
    rx.tun_done();
    assert_eq!(rx.tun_len(), 0);
    // The relayed frame went to C's link as it came, hop limit less one.
    let out: Vec<_> = rx.transmits().collect();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, out[0].1.frames), (LinkId(2), 1));
    let mut r = FrameReader::new();
    r.push(&out[0].1.bytes);
    match r.next_frame().unwrap() {
        Some(Frame::Data {
            hop_limit, body, ..
        }) => assert_eq!((hop_limit, body), (63, &[0x77; 90][..])),
        other => panic!("expected the relayed frame, got {other:?}"),
    }
    assert_eq!(count(&f.counters.frames_delivered), 2);
    assert_eq!(count(&f.counters.frames_forwarded), 1);
    assert_eq!(count(&f.counters.refused_inner_source), 1);
}

/// A key source that derives as A and counts what it was asked.
struct CountingKeys {
    a: Identity,
    asked: std::sync::Mutex<Vec<[u8; 32]>>,
}

impl KeySource for CountingKeys {
    fn cipher(&self, key: &[u8; 32]) -> Option<Cipher> {
        self.asked.lock().unwrap().push(*key);
        self.a.cipher_for(key)
    }
}

#[test]
fn keys_missing_from_the_snapshot_are_derived_through_the_key_source() {
    let mut f = fixture();
    // The snapshot holds no cipher yet (keys are derived when first used).
    f.table.ciphers.clear();
    let keys = Arc::new(CountingKeys {
        a: Identity::new(SecretKey::from_bytes([1; 32])),
        asked: Default::default(),
    });
    f.table.keys = Some(keys.clone());
    let (a, b) = (f.a.address(), f.b.address());
    // Outbound: sealed for B with the derived key.
    let mut s = sender(&f, 4096);
    let p = packet(a, b, 64, 0x11, 100);
    put(&mut s, &p);
    let (main, _, _) = seal(&f, &mut s);
    let (_, batch) = main.expect("sealed with a derived key");
    assert_eq!(open_all(&batch.bytes, &f.b, &f.a), vec![(63, p)]);
    // (The route refresh it asked for.)
    f.needs.borrow_mut().drain().for_each(drop);
    // Inbound: B's frame opened with the derived key, not held for the owner.
    let mut budgets = LinkBudgets::default();
    let q = packet(b, a, 64, 0x22, 10);
    let got = from_b(&f, &mut budgets, &q);
    assert_eq!(got.tun.len(), 1);
    assert!(f.next_need().is_none());
    assert_eq!(*keys.asked.lock().unwrap(), vec![f.b.public_key(); 2]);
    // Without a key source, a miss is a frame that cannot be opened yet: held for the owner.
    f.table.keys = None;
    from_b(&f, &mut budgets, &q);
    assert!(matches!(f.next_need(), Some(Need::PendingInbound(_))));
}

#[test]
fn sealed_frames_carry_their_inner_flows_and_a_batch_walks_frame_by_frame() {
    let f = fixture();
    let (a, b) = (f.a.address(), f.b.address());
    let echo = packet(a, b, 64, 0x11, 56);
    let bulk = packet(a, b, 64, 0x22, 1300);
    let ack = packet(a, b, 64, 0x33, 20);
    let mut sink = sender(&f, 8192);
    for p in [&echo, &bulk, &ack] {
        put(&mut sink, p);
    }
    let (main, _, _) = seal(&f, &mut sink);
    let (_, batch) = main.expect("frames for link 1");
    let want: Vec<u32> = [&echo, &bulk, &ack]
        .iter()
        .map(|p| crate::fq::flow_of_packet(p))
        .collect();
    assert_eq!(batch.flows, want);
    let mut spans = Vec::new();
    batch.for_each_frame(|at, len, tag| spans.push((at, len, tag)));
    assert_eq!(spans.len(), 3);
    assert_eq!(spans.iter().map(|s| s.2).collect::<Vec<_>>(), want);
    // The spans tile the batch, and each is one frame that opens on its own.
    let mut at = 0;
    for (i, &(start, len, _)) in spans.iter().enumerate() {
        assert_eq!(start, at);
        at += len;
        let opened = open_all(&batch.bytes[start..start + len], &f.b, &f.a);
        assert_eq!(opened, vec![(63, [&echo, &bulk, &ack][i].clone())]);
    }
    assert_eq!(at, batch.bytes.len());
    // Untagged frames go by their overlay addresses.
    let untagged = FrameBatch {
        flows: Vec::new(),
        ..batch
    };
    untagged.for_each_frame(|_, _, tag| assert_eq!(tag, crate::fq::flow_of_pair(a, b)));
    // Bytes that are no frame come out as one piece, not lost.
    let junk = FrameBatch {
        bytes: vec![0xff; 100],
        frames: 1,
        flows: Vec::new(),
    };
    let mut pieces = Vec::new();
    junk.for_each_frame(|at, len, tag| pieces.push((at, len, tag)));
    assert_eq!(pieces, vec![(0, 100, 0)]);
}

#[test]
fn message_packets_for_us_go_to_the_message_batch_with_their_senders_key() {
    let f = fixture();
    let (a, b) = (f.a.address(), f.b.address());
    let msg = [0x5au8; 40];
    let mut stream = Vec::new();
    let body = body_for(&f.b, &f.a, 1, &msg);
    wire::frame::encode_data(&mut stream, 64, b, a, &body).unwrap();
    // A message packet sealed by A for B through the generic sealing function opens as one.
    let cipher = f.a.cipher_for(&f.b.public_key()).unwrap();
    let mut out = Vec::new();
    assert!(crate::push_sealed(
        &mut out,
        &crate::SealKey::of(&cipher),
        crypto::PayloadType::Message,
        &msg,
        64,
        a,
        b
    ));
    let mut r = FrameReader::with_capacity(out.len() + 1);
    r.push(&out);
    let Some(Frame::Data { body, .. }) = r.next_frame_mut().unwrap() else {
        panic!("expected a data frame");
    };
    let back = f.b.cipher_for(&f.a.public_key()).unwrap();
    let (kind, plain) = back.open_payload(body).unwrap();
    assert_eq!((kind, &*plain), (crypto::PayloadType::Message, &msg[..]));
    let mut reader = FrameReader::new();
    reader.push(&stream);
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());
    while let Some(Frame::Data {
        hop_limit,
        src,
        dst,
        body,
    }) = reader.next_frame_at().unwrap()
    {
        let frame = DataFrame {
            hop_limit,
            src,
            dst,
            body,
        };
        let now = Instant::now();
        rx.handle_data(
            &f.table,
            &mut *f.needs.borrow_mut(),
            now,
            reader.buffer_mut(),
            frame,
        );
    }
    assert_eq!(rx.tun_len(), 0);
    let got: Vec<_> = rx.messages().drain().collect();
    assert_eq!(
        got,
        vec![crate::InboundMessage {
            src: b,
            dst: a,
            sender_key: f.b.public_key(),
            packet: msg.to_vec(),
        }]
    );
    assert_eq!(count(&f.counters.drop_inner), 0);
}

/// Sessions between managers, and session frames through the receiver and sender.
#[path = "sessions_tests.rs"]
mod sessions_tests;
