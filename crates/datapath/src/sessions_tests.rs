//! Sessions between two [`SessionManager`]s driven as the owner task drives them: handshakes
//! carried between them, frames sealed with the sessions they publish and opened by the index in
//! the trailer (confirming a session the first time), time moved forward by `tick`. Then the
//! data path's receiver and sender with a session snapshot in the table.

use std::collections::BTreeMap;

use crypto::session::{trailer_index, HandshakeError, SessionOpenError, Timestamp};
use crypto::{PayloadType, Session};

use super::*;
use crate::sessions::{Outgoing, SessionLimits, SessionManager};

/// One node's session owner.
struct Node {
    mgr: SessionManager,
    key: PublicKey,
    addr: Ipv6Addr,
    secret: SecretKey,
}

fn node(seed: u8, limits: SessionLimits) -> Node {
    let secret = SecretKey::from_bytes([seed; 32]);
    let key = secret.public_key();
    Node {
        mgr: SessionManager::new(secret.clone(), key.address(), limits),
        key,
        addr: key.address(),
        secret,
    }
}

/// A wall clock that moves with `now`, from an arbitrary date.
fn wall(t0: Instant, now: Instant) -> Timestamp {
    let d = now.saturating_duration_since(t0);
    Timestamp(1_764_000_000 + d.as_secs(), d.subsec_nanos())
}

/// `payload` after an inner header of type `kind`, sealed under `s`.
fn seal(s: &Session, kind: PayloadType, payload: &[u8]) -> Vec<u8> {
    let mut body = kind.inner_header().to_vec();
    body.extend_from_slice(payload);
    s.seal_append(&mut body, 0).unwrap();
    body
}

/// Why a frame did not open at a node.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// No session of the node has the index in the trailer (or not for the sender's /64).
    NoSession,
    Open(SessionOpenError),
}

/// Opens a frame from `src` at `to` as the data path does (the session by the index in the
/// trailer, for the sender's /64), and tells the manager when a session opened its first frame.
fn open_at(
    to: &mut Node,
    src: Ipv6Addr,
    mut body: Vec<u8>,
    now: Instant,
) -> Result<(PayloadType, Vec<u8>), Refused> {
    let snap = to.mgr.snapshot();
    let e = trailer_index(&body)
        .and_then(|i| snap.recv.get(&i))
        .filter(|e| e.prefix == (u128::from(src) >> 64) as u64)
        .ok_or(Refused::NoSession)?;
    let first = !e.session.confirmed();
    let (kind, payload) = e.session.open_payload(&mut body).map_err(Refused::Open)?;
    let got = (kind, payload.to_vec());
    if first {
        to.mgr.confirmed(e.session.local_index(), now);
    }
    Ok(got)
}

/// Carries what `from` sends to `to`: a handshake message to the manager, anything else sealed
/// under its session and opened at `to`. Returns what `to` answers.
fn carry(
    from: &Node,
    to: &mut Node,
    out: Outgoing,
    now: Instant,
) -> Result<Option<Outgoing>, HandshakeError> {
    assert_eq!((out.key, out.dst), (to.key, to.addr));
    match &out.session {
        None => {
            assert_eq!(out.kind, PayloadType::Handshake);
            to.mgr.handle(from.addr, to.addr, &out.payload, now)
        }
        Some(s) => {
            let body = seal(s, out.kind, &out.payload);
            let (kind, _) = open_at(to, from.addr, body, now).expect("opens at the peer");
            assert_eq!(kind, out.kind);
            Ok(None)
        }
    }
}

/// Carries `first` from `a` to `b` and every answer back and forth until none is left.
fn exchange(a: &mut Node, b: &mut Node, first: Outgoing, now: Instant) {
    let mut next = Some((true, first));
    while let Some((a_to_b, out)) = next.take() {
        let got = if a_to_b {
            carry(a, b, out, now)
        } else {
            carry(b, a, out, now)
        };
        next = got.expect("accepted").map(|o| (!a_to_b, o));
    }
}

/// Whether `x` seals what `y` opens and the other way round.
fn pair_works(x: &mut Node, y: &mut Node, now: Instant) -> bool {
    let (Some(sx), Some(sy)) = (x.mgr.current(&y.key), y.mgr.current(&x.key)) else {
        return false;
    };
    if sx.local_index() != sy.remote_index() || sy.local_index() != sx.remote_index() {
        return false;
    }
    let to_y = seal(&sx, PayloadType::L3, b"x to y");
    let to_x = seal(&sy, PayloadType::L3, b"y to x");
    open_at(y, x.addr, to_y, now) == Ok((PayloadType::L3, b"x to y".to_vec()))
        && open_at(x, y.addr, to_x, now) == Ok((PayloadType::L3, b"y to x".to_vec()))
}

fn state(n: &Node, of: &Node, now: Instant) -> &'static str {
    n.mgr
        .rows(now)
        .into_iter()
        .find(|r| r.key == of.key)
        .map_or("absent", |r| r.state)
}

fn initiations(outs: Vec<Outgoing>) -> Vec<Outgoing> {
    outs.into_iter()
        .filter(|o| o.kind == PayloadType::Handshake)
        .collect()
}

#[test]
fn a_handshake_establishes_a_session_the_initiator_uses_at_once() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        node(0x11, SessionLimits::default()),
        node(0x22, SessionLimits::default()),
    );
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).expect("an initiation");
    assert_eq!(
        (init.key, init.dst, init.kind),
        (b.key, b.addr, PayloadType::Handshake)
    );
    assert!(init.session.is_none(), "sealed with the static key");
    assert_eq!(a.mgr.counts.initiations_sent, 1);
    assert_eq!(state(&a, &b, t0), "handshaking");
    // Nothing more while it is under way.
    assert!(a.mgr.want(b.key, t0, wall(t0, t0)).is_none());
    assert!(a.mgr.snapshot().send.is_empty());

    let resp = carry(&a, &mut b, init, t0).unwrap().expect("a response");
    assert_eq!((resp.key, resp.kind), (a.key, PayloadType::Handshake));
    assert!(resp.session.is_none());
    assert_eq!(b.mgr.counts.responses_sent, 1);
    // The responder opens with its new session but does not seal with it yet.
    let snap_b = b.mgr.snapshot();
    assert!(snap_b.send.is_empty());
    assert_eq!(snap_b.recv.len(), 1);
    assert!(b.mgr.current(&a.key).is_none());
    assert_eq!(state(&b, &a, t0), "handshaking");

    let keepalive = carry(&b, &mut a, resp, t0).unwrap().expect("a keepalive");
    assert_eq!(keepalive.kind, PayloadType::Keepalive);
    assert!(keepalive.payload.is_empty());
    let sa = keepalive.session.clone().expect("under the new session");
    // The initiator seals with it at once.
    let snap_a = a.mgr.snapshot();
    assert!(Arc::ptr_eq(&snap_a.send[&b.key.0], &sa));
    assert_eq!(
        snap_a.recv[&sa.local_index()].prefix,
        (u128::from(b.addr) >> 64) as u64
    );
    assert_eq!(a.mgr.counts.established, 1);
    assert_eq!(state(&a, &b, t0), "established");
    assert!(a.mgr.want(b.key, t0, wall(t0, t0)).is_none());
    // Data sealed before the keepalive arrives opens (and confirms) at the responder too.
    let early = seal(&sa, PayloadType::L3, b"early");
    assert_eq!(
        open_at(&mut b, a.addr, early, t0),
        Ok((PayloadType::L3, b"early".to_vec()))
    );
    assert_eq!(b.mgr.counts.established, 1);
    assert_eq!(state(&b, &a, t0), "established");
    assert!(carry(&a, &mut b, keepalive, t0).unwrap().is_none());
    assert!(b.mgr.snapshot().send.contains_key(&a.key.0));
    assert_eq!(b.mgr.counts.established, 1, "confirmed once");
    assert!(pair_works(&mut a, &mut b, t0));
    assert_eq!(
        a.mgr.counts.handshakes_refused + b.mgr.counts.handshakes_refused,
        0
    );
}

#[test]
fn simultaneous_initiations_end_in_one_session() {
    for a_first in [true, false] {
        let t0 = Instant::now();
        let (mut a, mut b) = (
            node(0x11, SessionLimits::default()),
            node(0x22, SessionLimits::default()),
        );
        let ia = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
        let ib = b.mgr.want(a.key, t0, wall(t0, t0)).unwrap();
        let (ra, rb) = if a_first {
            let ra = carry(&b, &mut a, ib, t0).unwrap();
            let rb = carry(&a, &mut b, ia, t0).unwrap();
            (ra, rb)
        } else {
            let rb = carry(&a, &mut b, ia, t0).unwrap();
            let ra = carry(&b, &mut a, ib, t0).unwrap();
            (ra, rb)
        };
        // The initiation from the lower key is the one answered; the other is dropped.
        let a_lower = a.key.0 < b.key.0;
        assert_eq!(ra.is_some(), !a_lower, "a answered");
        assert_eq!(rb.is_some(), a_lower, "b answered");
        let t1 = t0 + Duration::from_millis(20);
        match (ra, rb) {
            (Some(r), None) => exchange(&mut a, &mut b, r, t1),
            (None, Some(r)) => exchange(&mut b, &mut a, r, t1),
            _ => unreachable!(),
        }
        assert!(pair_works(&mut a, &mut b, t1));
        // One session each: nothing left over to open with, nothing left under way.
        assert_eq!(a.mgr.snapshot().recv.len(), 1);
        assert_eq!(b.mgr.snapshot().recv.len(), 1);
        assert_eq!(state(&a, &b, t1), "established");
        assert_eq!(state(&b, &a, t1), "established");
        assert_eq!(a.mgr.counts.established + b.mgr.counts.established, 2);
        // And the dropped initiation is not retried later.
        for s in 1..20 {
            let now = t1 + Duration::from_secs(s);
            assert!(initiations(a.mgr.tick(now, wall(t0, now))).is_empty());
            assert!(initiations(b.mgr.tick(now, wall(t0, now))).is_empty());
        }
        assert_eq!(a.mgr.counts.initiations_sent, 1);
        assert_eq!(b.mgr.counts.initiations_sent, 1);
        assert!(pair_works(&mut a, &mut b, t1 + Duration::from_secs(20)));
    }
}

#[test]
fn a_replayed_initiation_is_refused_and_counted() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        node(0x11, SessionLimits::default()),
        node(0x22, SessionLimits::default()),
    );
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    let copy = init.payload.clone();
    let resp = carry(&a, &mut b, init, t0).unwrap().expect("answered");
    let recv_before: Vec<u32> = b.mgr.snapshot().recv.keys().copied().collect();
    for n in 1..=3 {
        let later = t0 + Duration::from_secs(n);
        assert!(matches!(
            b.mgr.handle(a.addr, b.addr, &copy, later),
            Ok(None)
        ));
        assert_eq!(b.mgr.counts.replayed_initiations, n);
    }
    assert_eq!(b.mgr.counts.responses_sent, 1);
    // The replays changed nothing: the first answer still completes the handshake.
    let recv_after: Vec<u32> = b.mgr.snapshot().recv.keys().copied().collect();
    assert_eq!(recv_before, recv_after);
    exchange(&mut b, &mut a, resp, t0);
    assert!(pair_works(&mut a, &mut b, t0));
    // Once established, a replay is still refused (and the session stays).
    assert!(matches!(b.mgr.handle(a.addr, b.addr, &copy, t0), Ok(None)));
    assert_eq!(b.mgr.counts.replayed_initiations, 4);
    assert!(pair_works(&mut a, &mut b, t0));
    // A replay from another address is refused by the handshake itself.
    let c = node(0x33, SessionLimits::default());
    assert!(b.mgr.handle(c.addr, b.addr, &copy, t0).is_err());
    assert_eq!(b.mgr.counts.handshakes_refused, 1);
}

#[test]
fn an_unanswered_node_is_taken_for_a_legacy_node_for_a_while() {
    let limits = SessionLimits::default();
    let t0 = Instant::now();
    let (mut a, b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
    assert!(a.mgr.want(b.key, t0, wall(t0, t0)).is_some());
    let mut sent = 1;
    let mut now = t0;
    // Time moves in steps of 100 ms until the node is given up on.
    while a.mgr.counts.legacy_fallbacks == 0 {
        now += Duration::from_millis(100);
        assert!(now < t0 + Duration::from_secs(120), "never gave up");
        let outs = initiations(a.mgr.tick(now, wall(t0, now)));
        for o in &outs {
            assert_eq!((o.key, o.dst), (b.key, b.addr));
        }
        sent += outs.len() as u32;
        assert!(a.mgr.want(b.key, now, wall(t0, now)).is_none());
    }
    assert_eq!(sent, limits.attempts, "one initiation per attempt");
    assert_eq!(a.mgr.counts.initiations_sent, u64::from(limits.attempts));
    assert_eq!(state(&a, &b, now), "legacy");
    let row = a
        .mgr
        .rows(now)
        .into_iter()
        .find(|r| r.key == b.key)
        .unwrap();
    assert_eq!(row.legacy_fallbacks, 1);
    let gave_up = now;
    // Not asked again until legacy_for has passed, however much traffic there is.
    while now + Duration::from_secs(1) < gave_up + limits.legacy_for {
        now += Duration::from_secs(1);
        assert!(initiations(a.mgr.tick(now, wall(t0, now))).is_empty());
        assert!(a.mgr.want(b.key, now, wall(t0, now)).is_none(), "{now:?}");
        assert_eq!(state(&a, &b, now), "legacy");
    }
    now = gave_up + limits.legacy_for;
    assert!(a.mgr.want(b.key, now, wall(t0, now)).is_some());
    assert_eq!(state(&a, &b, now), "handshaking");
}

/// Data frames in flight: when each arrives and what it carries.
struct Flight {
    at: Instant,
    from_a: bool,
    body: Vec<u8>,
}

#[test]
fn a_transfer_survives_rekeys_without_losing_a_frame() {
    transfer(true, true);
}

/// One way only, the initiator's or the responder's: whoever sends keeps the sessions fresh.
#[test]
fn a_one_way_transfer_survives_rekeys_without_losing_a_frame() {
    transfer(true, false);
    transfer(false, true);
}

/// A transfer between A (which started the first session) and B over four rekey intervals.
fn transfer(a_sends: bool, b_sends: bool) {
    let limits = SessionLimits::default();
    let step = Duration::from_secs(1);
    let t0 = Instant::now();
    let (mut a, mut b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    exchange(&mut a, &mut b, init, t0);
    // What each side sends: numbered chunks of a byte stream.
    let stream = |seed: u64, n: u64| -> Vec<u8> {
        let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..40 + n % 300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let mut flights: Vec<Flight> = Vec::new();
    let mut got: [BTreeMap<u64, Vec<u8>>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut sent = [0u64; 2];
    // The sessions each side sealed with, in turn.
    let mut used: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    // Frames opened under a session other than the one the receiver seals with.
    let mut under_previous = 0;
    let mut now = t0;
    let end = t0 + limits.rekey_after * 4 + Duration::from_secs(30);
    while now < end {
        now += step;
        // The owners' timers, and what they send.
        let outs_a = a.mgr.tick(now, wall(t0, now));
        let outs_b = b.mgr.tick(now, wall(t0, now));
        for o in outs_a {
            exchange(&mut a, &mut b, o, now);
        }
        for o in outs_b {
            exchange(&mut b, &mut a, o, now);
        }
        // Frames due now arrive (some sealed under a session since replaced).
        let (due, later): (Vec<Flight>, Vec<Flight>) = flights.drain(..).partition(|f| f.at <= now);
        flights = later;
        for f in due {
            let (to, src, of) = if f.from_a {
                (&mut b, a.addr, a.key)
            } else {
                (&mut a, b.addr, b.key)
            };
            let current = to.mgr.current(&of).map(|s| s.local_index());
            if trailer_index(&f.body) != current {
                under_previous += 1;
            }
            let (kind, payload) = open_at(to, src, f.body, now).expect("every frame opens");
            assert_eq!(kind, PayloadType::L3);
            let n = u64::from_be_bytes(payload[..8].try_into().unwrap());
            let side = usize::from(!f.from_a);
            assert!(got[side].insert(n, payload[8..].to_vec()).is_none(), "once");
        }
        // Both send under the session each publishes now; every 7th frame is 5 s late.
        for from_a in [true, false] {
            if (from_a && !a_sends) || (!from_a && !b_sends) {
                continue;
            }
            let s = if from_a {
                a.mgr.current(&b.key)
            } else {
                b.mgr.current(&a.key)
            };
            let Some(s) = s else {
                continue;
            };
            let side = usize::from(!from_a);
            if used[side].last() != Some(&s.local_index()) {
                used[side].push(s.local_index());
            }
            for _ in 0..3 {
                let n = sent[side];
                sent[side] += 1;
                let mut p = n.to_be_bytes().to_vec();
                p.extend_from_slice(&stream(side as u64, n));
                let late = if n % 7 == 3 { 5 } else { 1 };
                flights.push(Flight {
                    at: now + step * late,
                    from_a,
                    body: seal(&s, PayloadType::L3, &p),
                });
            }
        }
    }
    // The last frames arrive.
    for f in flights {
        let (to, src) = if f.from_a {
            (&mut b, a.addr)
        } else {
            (&mut a, b.addr)
        };
        let (_, payload) = open_at(to, src, f.body, end).expect("every frame opens");
        let n = u64::from_be_bytes(payload[..8].try_into().unwrap());
        assert!(got[usize::from(!f.from_a)]
            .insert(n, payload[8..].to_vec())
            .is_none());
    }
    for side in 0..2 {
        assert_eq!(
            got[side].len() as u64,
            sent[side],
            "side {side}: no frame lost"
        );
        for (n, data) in &got[side] {
            assert_eq!(data, &stream(side as u64, *n), "side {side}, chunk {n}");
        }
    }
    assert_eq!(sent[0] > 1000, a_sends);
    assert_eq!(sent[1] > 1000, b_sends);
    assert!(a.mgr.counts.rekeys >= 3, "{:?}", a.mgr.counts);
    assert!(b.mgr.counts.rekeys >= 3, "{:?}", b.mgr.counts);
    for side in 0..2 {
        let sends = [a_sends, b_sends][side];
        assert!(!sends || used[side].len() >= 4, "{side}: {:?}", used[side]);
    }
    assert!(under_previous >= 3, "{under_previous} frames after a rekey");
    assert_eq!(a.mgr.counts.expired + b.mgr.counts.expired, 0);
    assert_eq!(
        a.mgr.counts.handshakes_refused + b.mgr.counts.handshakes_refused,
        0
    );
    assert_eq!(a.mgr.replays_refused() + b.mgr.replays_refused(), 0);
    // The previous session is dropped once keep_previous has passed.
    let later = end + limits.keep_previous + step;
    a.mgr.tick(later, wall(t0, later));
    b.mgr.tick(later, wall(t0, later));
    assert_eq!(a.mgr.snapshot().recv.len(), 1);
    assert_eq!(b.mgr.snapshot().recv.len(), 1);
}

#[test]
fn a_restarted_node_gets_a_new_session() {
    for b_initiated in [false, true] {
        let limits = SessionLimits::default();
        let t0 = Instant::now();
        let (mut a, mut b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
        if b_initiated {
            let init = b.mgr.want(a.key, t0, wall(t0, t0)).unwrap();
            exchange(&mut b, &mut a, init, t0);
        } else {
            let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
            exchange(&mut a, &mut b, init, t0);
        }
        assert!(pair_works(&mut a, &mut b, t0));
        let old = a.mgr.current(&b.key).unwrap();

        // B restarts: same key, no sessions.
        let now = t0 + Duration::from_secs(7);
        b = node(0x22, limits.clone());
        let frame = seal(&old, PayloadType::L3, b"to the old b");
        assert_eq!(
            open_at(&mut b, a.addr, frame.clone(), now),
            Err(Refused::NoSession)
        );
        // Nor does it open with the static key: B takes the session for stale.
        let static_b = Cipher::new(&b.secret.shared_secret(&a.key).unwrap());
        assert!(static_b.open_payload(&mut frame.clone()).is_err());
        let init = b.mgr.stale(a.key, now, wall(t0, now)).expect("a handshake");
        assert!(
            b.mgr.stale(a.key, now, wall(t0, now)).is_none(),
            "one at a time"
        );
        exchange(&mut b, &mut a, init, now);
        let new = a.mgr.current(&b.key).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(pair_works(&mut a, &mut b, now), "b_initiated {b_initiated}");
        // The old session's frames still do not open at B.
        let frame = seal(&old, PayloadType::L3, b"late");
        assert_eq!(open_at(&mut b, a.addr, frame, now), Err(Refused::NoSession));
    }
}

#[test]
fn a_frame_from_another_subnet_does_not_open_under_a_session() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        node(0x11, SessionLimits::default()),
        node(0x22, SessionLimits::default()),
    );
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    exchange(&mut a, &mut b, init, t0);
    let s = a.mgr.current(&b.key).unwrap();
    let c = node(0x33, SessionLimits::default());
    let frame = seal(&s, PayloadType::L3, b"relabelled");
    assert_eq!(open_at(&mut b, c.addr, frame, t0), Err(Refused::NoSession));
}

/// A and B of the data-path fixture (keys `[1; 32]` and `[2; 32]`) with a session that B
/// started: B seals with it, A holds it unconfirmed.
fn fixture_with_session(t0: Instant) -> (Fixture, Node, Node) {
    let f = fixture();
    let (mut a, mut b) = (
        node(1, SessionLimits::default()),
        node(2, SessionLimits::default()),
    );
    assert_eq!((a.key, b.key), (f.a.public, f.b.public));
    let init = b.mgr.want(a.key, t0, wall(t0, t0)).unwrap();
    let resp = carry(&b, &mut a, init, t0).unwrap().unwrap();
    // (The keepalive is lost: the first data frame confirms the session at A.)
    let _ = carry(&a, &mut b, resp, t0).unwrap().unwrap();
    (f, a, b)
}

/// Hands `body` from `src` to A's receiver on link 1 at an offset in a read buffer; returns what
/// went to the TUN.
fn receive_frame(f: &Fixture, rx: &mut Receiver, src: Ipv6Addr, body: &[u8]) -> Vec<Vec<u8>> {
    receive_frame_at(f, rx, Instant::now(), src, body)
}

fn receive_frame_at(
    f: &Fixture,
    rx: &mut Receiver,
    now: Instant,
    src: Ipv6Addr,
    body: &[u8],
) -> Vec<Vec<u8>> {
    let mut buf = vec![0xEE; 9];
    buf.extend_from_slice(body);
    buf.extend_from_slice(&[0xEE; 3]);
    let frame = DataFrame {
        hop_limit: 64,
        src,
        dst: f.a.address(),
        body: 9..9 + body.len(),
    };
    rx.handle_data(&f.table, &mut *f.needs.borrow_mut(), now, &mut buf, frame);
    let mut out = Vec::new();
    rx.tun_packets(&mut buf, &mut out);
    let got = out.iter().map(|p| p.to_vec()).collect();
    drop(out);
    rx.tun_done();
    got
}

#[test]
fn the_receiver_opens_session_frames_once() {
    let t0 = Instant::now();
    let (mut f, mut a, b) = fixture_with_session(t0);
    f.table.sessions = Arc::new(a.mgr.snapshot());
    let sb = b.mgr.current(&a.key).expect("b seals at once");
    let (pa, pb) = (f.a.address(), f.b.address());
    let p = packet(pb, pa, 64, 0x5c, 200);
    let body = seal(&sb, PayloadType::L3, &p);
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());

    let got = receive_frame(&f, &mut rx, pb, &body);
    let mut want = p.clone();
    want[7] = 63;
    assert_eq!(got, vec![want]);
    assert_eq!(count(&f.counters.session_frames_in), 1);
    assert_eq!(count(&f.counters.frames_delivered), 1);
    // The first frame under A's session asks the owner to confirm it.
    match f.next_need() {
        Some(Need::SessionConfirmed(i)) => {
            assert_eq!(i, sb.remote_index());
            a.mgr.confirmed(i, t0);
        }
        other => panic!("expected a confirmation, got {other:?}"),
    }
    assert!(a.mgr.current(&b.key).is_some());

    // The same frame recorded and injected again: refused and counted.
    for n in 1..=3 {
        assert!(receive_frame(&f, &mut rx, pb, &body).is_empty());
        assert_eq!(count(&f.counters.session_replays), n);
    }
    assert_eq!(count(&f.counters.frames_delivered), 1);
    assert_eq!(count(&f.counters.session_frames_in), 1);
    assert!(f.next_need().is_none(), "no second confirmation");

    // Altered: refused as undecryptable, and the next genuine frame still opens.
    let mut forged = seal(&sb, PayloadType::L3, &p);
    let genuine = seal(&sb, PayloadType::L3, &p);
    forged[50] ^= 1;
    let drops = count(&f.counters.drop_decrypt);
    assert!(receive_frame(&f, &mut rx, pb, &forged).is_empty());
    assert_eq!(count(&f.counters.drop_decrypt), drops + 1);
    assert_eq!(receive_frame(&f, &mut rx, pb, &genuine).len(), 1);
    assert_eq!(count(&f.counters.session_frames_in), 2);

    // A session frame from another /64 is not opened under the session.
    let from_c = seal(&sb, PayloadType::L3, &packet(f.c.address(), pa, 64, 1, 10));
    assert!(receive_frame(&f, &mut rx, f.c.address(), &from_c).is_empty());
    assert_eq!(count(&f.counters.session_frames_in), 2);
    assert_eq!(count(&f.counters.frames_delivered), 2);

    // A legacy frame from B (static key) still opens next to the session.
    let legacy = body_for(&f.b, &f.a, 0, &p);
    assert_eq!(receive_frame(&f, &mut rx, pb, &legacy).len(), 1);
    assert_eq!(count(&f.counters.frames_delivered), 3);
    assert_eq!(count(&f.counters.session_frames_in), 2);
}

#[test]
fn the_sender_seals_under_the_session_when_there_is_one() {
    let t0 = Instant::now();
    let (mut f, mut a, mut b) = fixture_with_session(t0);
    let sb = b.mgr.current(&a.key).unwrap();
    // Confirmed at A: A seals with it too.
    let first = seal(&sb, PayloadType::Keepalive, &[]);
    assert!(open_at(&mut a, b.addr, first, t0).is_ok());
    f.table.sessions = Arc::new(a.mgr.snapshot());
    assert!(f.table.sessions.send.contains_key(&f.b.public_key()));

    let (pa, pb) = (f.a.address(), f.b.address());
    let p = packet(pa, pb, 64, 0x3d, 500);
    let mut s = sender(&f, 4096);
    put(&mut s, &p);
    let (main, _, _) = super::seal(&f, &mut s);
    let (link, batch) = main.expect("a frame for B");
    assert_eq!((link, batch.frames), (LinkId(1), 1));
    assert_eq!(count(&f.counters.session_frames_out), 1);
    let mut r = FrameReader::with_capacity(batch.bytes.len() + 1);
    r.push(&batch.bytes);
    let Some(Frame::Data {
        hop_limit, body, ..
    }) = r.next_frame().unwrap()
    else {
        panic!("a data frame");
    };
    assert_eq!(hop_limit, 63);
    // Not the static key's: B opens it under the session only.
    let static_b = f.b.cipher_for(&f.a.public_key()).unwrap();
    assert!(static_b.open_payload(&mut body.to_vec()).is_err());
    let (kind, payload) = open_at(&mut b, a.addr, body.to_vec(), t0).unwrap();
    assert_eq!(kind, PayloadType::L3);
    assert_eq!(payload, p);

    // Without a session for C, C's packets go out under the static key, and the owner is asked
    // for a session.
    f.needs.borrow_mut().drain().for_each(drop);
    let q = packet(pa, f.c.address(), 64, 0x3e, 50);
    put(&mut s, &q);
    let (main, _, _) = super::seal(&f, &mut s);
    let (link, batch) = main.expect("a frame for C");
    assert_eq!(link, LinkId(2));
    assert_eq!(open_all(&batch.bytes, &f.c, &f.a), vec![(63, q)]);
    assert_eq!(count(&f.counters.session_frames_out), 1);
    let asked: Vec<[u8; 32]> = f
        .needs
        .borrow_mut()
        .drain()
        .filter_map(|n| match n {
            Need::Session(k) => Some(k),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![f.c.public_key()]);
}

#[test]
fn a_lost_rekey_is_retried_once_at_a_time() {
    let limits = SessionLimits::default();
    let t0 = Instant::now();
    let (mut a, mut b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    exchange(&mut a, &mut b, init, t0);
    let old = a.mgr.current(&b.key).unwrap();
    // Traffic until the rekey is due.
    let mut now = t0;
    let mut lost = Vec::new();
    while lost.is_empty() {
        now += Duration::from_secs(1);
        let _ = seal(&old, PayloadType::L3, b"traffic");
        lost = initiations(a.mgr.tick(now, wall(t0, now)));
    }
    assert_eq!(lost.len(), 1);
    assert!(now >= t0 + limits.rekey_after);
    // The initiation is lost; each retry sends one initiation, with growing waits.
    let mut sent_at = vec![now];
    let mut last = lost.pop().unwrap();
    while sent_at.len() < 4 {
        now += Duration::from_millis(100);
        let _ = seal(&old, PayloadType::L3, b"traffic");
        let outs = initiations(a.mgr.tick(now, wall(t0, now)));
        assert!(outs.len() <= 1, "{} initiations at once", outs.len());
        if let Some(o) = outs.into_iter().next() {
            sent_at.push(now);
            last = o;
        }
    }
    let waits: Vec<Duration> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    // The last one arrives: the rekey completes, the old session still opens for a while.
    exchange(&mut a, &mut b, last, now);
    assert_eq!(a.mgr.counts.rekeys, 1);
    assert!(!Arc::ptr_eq(&old, &a.mgr.current(&b.key).unwrap()));
    assert!(pair_works(&mut a, &mut b, now));
    let straggler = seal(&old, PayloadType::L3, b"straggler");
    assert!(open_at(&mut b, a.addr, straggler, now).is_ok());
}

#[test]
fn a_confirmation_lost_on_a_full_channel_is_made_up_for_at_the_next_tick() {
    let t0 = Instant::now();
    let (mut f, mut a, b) = fixture_with_session(t0);
    f.table.sessions = Arc::new(a.mgr.snapshot());
    let sb = b.mgr.current(&a.key).unwrap();
    let (pa, pb) = (f.a.address(), f.b.address());
    // The owner's channel is full: the first frame's confirmation cannot be handed on.
    *f.needs.borrow_mut() = Needs::with_room(0, 0);
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());
    for n in 0..3 {
        let p = packet(pb, pa, 64, n, 20);
        let got = receive_frame(&f, &mut rx, pb, &seal(&sb, PayloadType::L3, &p));
        assert_eq!(got.len(), 1, "delivered");
    }
    assert!(f.needs.borrow().list.is_empty());
    assert!(a.mgr.current(&b.key).is_none(), "not confirmed yet");
    // The owner's next tick finds the session used by the peer and seals with it.
    let now = t0 + Duration::from_secs(1);
    a.mgr.tick(now, wall(t0, now));
    let sa = a.mgr.current(&b.key).expect("confirmed at the tick");
    assert_eq!(sa.remote_index(), sb.local_index());
    assert_eq!(a.mgr.counts.established, 1);
    assert!(a.mgr.changed());
}

/// Like [`carry`], for frames that may not open (or be answered) at `to`.
fn send_lossy(from: &Node, to: &mut Node, out: Outgoing, now: Instant) {
    match &out.session {
        None => {
            let _ = to.mgr.handle(from.addr, to.addr, &out.payload, now);
        }
        Some(s) => {
            let _ = open_at(to, from.addr, seal(s, out.kind, &out.payload), now);
        }
    }
}

#[test]
fn after_a_restart_a_lost_keepalive_does_not_cut_one_way_traffic_for_long() {
    let limits = SessionLimits::default();
    let t0 = Instant::now();
    let (mut a, mut b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    exchange(&mut a, &mut b, init, t0);
    // B restarts; A's traffic (one way, A to B) makes B ask for a new session.
    let mut now = t0 + Duration::from_secs(3);
    b = node(0x22, limits.clone());
    let frame = seal(&a.mgr.current(&b.key).unwrap(), PayloadType::L3, b"a");
    assert_eq!(open_at(&mut b, a.addr, frame, now), Err(Refused::NoSession));
    let init = b.mgr.stale(a.key, now, wall(t0, now)).unwrap();
    let resp = carry(&b, &mut a, init, now).unwrap().unwrap();
    let keepalive = carry(&a, &mut b, resp, now).unwrap().unwrap();
    assert_eq!(keepalive.kind, PayloadType::Keepalive);
    drop(keepalive); // lost
                     // A goes on sealing; the owners tick once a second and send what their ticks return (B's
                     // first frame under the new session, a path probe today, confirms it at A).
    let mut opened_at = None;
    for _ in 0..10 {
        now += Duration::from_secs(1);
        for o in a.mgr.tick(now, wall(t0, now)) {
            send_lossy(&a, &mut b, o, now);
        }
        for o in b.mgr.tick(now, wall(t0, now)) {
            send_lossy(&b, &mut a, o, now);
        }
        let s = a.mgr.current(&b.key).unwrap();
        let frame = seal(&s, PayloadType::L3, b"a");
        if open_at(&mut b, a.addr, frame, now).is_ok() {
            opened_at = Some(now);
            break;
        }
    }
    let at = opened_at.expect("A's frames open at B again");
    assert!(at <= t0 + Duration::from_secs(3 + 2), "{:?}", at - t0);
}

#[test]
fn simultaneous_rekeys_end_in_one_new_session() {
    let limits = SessionLimits {
        rekey_after_messages: 10,
        ..SessionLimits::default()
    };
    let t0 = Instant::now();
    let (mut a, mut b) = (node(0x11, limits.clone()), node(0x22, limits.clone()));
    let init = a.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    exchange(&mut a, &mut b, init, t0);
    let (old_a, old_b) = (
        a.mgr.current(&b.key).unwrap(),
        b.mgr.current(&a.key).unwrap(),
    );
    // Both seal their tenth frame: both ticks start a rekey at once.
    for _ in 0..10 {
        let _ = seal(&old_a, PayloadType::L3, b"a");
        let _ = seal(&old_b, PayloadType::L3, b"b");
    }
    let now = t0 + Duration::from_secs(1);
    let ia = initiations(a.mgr.tick(now, wall(t0, now)));
    let ib = initiations(b.mgr.tick(now, wall(t0, now)));
    assert_eq!((ia.len(), ib.len()), (1, 1));
    let ra = carry(&b, &mut a, ib.into_iter().next().unwrap(), now).unwrap();
    let rb = carry(&a, &mut b, ia.into_iter().next().unwrap(), now).unwrap();
    assert_eq!(ra.is_some(), a.key.0 > b.key.0);
    assert_eq!(rb.is_some(), b.key.0 > a.key.0);
    match (ra, rb) {
        (Some(r), None) => exchange(&mut a, &mut b, r, now),
        (None, Some(r)) => exchange(&mut b, &mut a, r, now),
        _ => unreachable!(),
    }
    assert!(pair_works(&mut a, &mut b, now));
    assert!(!Arc::ptr_eq(&old_a, &a.mgr.current(&b.key).unwrap()));
    assert!(!Arc::ptr_eq(&old_b, &b.mgr.current(&a.key).unwrap()));
    assert_eq!((a.mgr.counts.rekeys, b.mgr.counts.rekeys), (1, 1));
    // The new session and the previous one, nothing else.
    assert_eq!(a.mgr.snapshot().recv.len(), 2);
    assert_eq!(b.mgr.snapshot().recv.len(), 2);
    // Old frames still open for a while.
    let late = seal(&old_a, PayloadType::L3, b"late");
    assert!(open_at(&mut b, a.addr, late, now).is_ok());
}

#[test]
fn handshakes_reach_the_owner_only_with_sessions_on() {
    let t0 = Instant::now();
    let mut f = fixture();
    let (mut a, mut b) = (
        node(1, SessionLimits::default()),
        node(2, SessionLimits::default()),
    );
    let (pa, pb) = (f.a.address(), f.b.address());
    let init = b.mgr.want(a.key, t0, wall(t0, t0)).unwrap();
    // Sealed with the static key, inner type 16, as the owner sends it.
    let body = body_for(&f.b, &f.a, PayloadType::Handshake.to_u8(), &init.payload);
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());
    // Sessions off (a node run with --no-sessions): dropped.
    assert!(!f.table.sessions.enabled);
    assert!(receive_frame(&f, &mut rx, pb, &body).is_empty());
    assert_eq!(count(&f.counters.drop_inner), 1);
    assert!(f.next_need().is_none());
    // On: handed to the owner, which answers.
    f.table.sessions = Arc::new(a.mgr.snapshot());
    assert!(receive_frame(&f, &mut rx, pb, &body).is_empty());
    let Some(Need::Handshake { src, dst, payload }) = f.next_need() else {
        panic!("a handshake need");
    };
    assert_eq!((src, dst, &payload), (pb, pa, &init.payload));
    let resp = a
        .mgr
        .handle(src, dst, &payload, t0)
        .unwrap()
        .expect("answered");
    // The answer, the same way back, completes B's side.
    assert!(b.mgr.handle(pa, pb, &resp.payload, t0).unwrap().is_some());
    assert!(b.mgr.current(&a.key).is_some());
    // A keepalive under the session is opened and confirms it; nothing reaches the TUN.
    f.table.sessions = Arc::new(a.mgr.snapshot());
    let sb = b.mgr.current(&a.key).unwrap();
    let drops = count(&f.counters.drop_inner);
    let keepalive = seal(&sb, PayloadType::Keepalive, &[]);
    assert!(receive_frame(&f, &mut rx, pb, &keepalive).is_empty());
    assert_eq!(count(&f.counters.drop_inner), drops);
    assert_eq!(count(&f.counters.session_frames_in), 1);
    assert!(matches!(f.next_need(), Some(Need::SessionConfirmed(i)) if i == sb.remote_index()));
}

#[test]
fn frames_under_a_session_we_lost_ask_for_a_new_one_once_a_second() {
    let t0 = Instant::now();
    let mut f = fixture();
    // A (restarted) holds no session; B still seals under the one it had.
    let (mut a_before, b) = (
        node(1, SessionLimits::default()),
        node(2, SessionLimits::default()),
    );
    let init = a_before.mgr.want(b.key, t0, wall(t0, t0)).unwrap();
    let mut b = b;
    exchange(&mut a_before, &mut b, init, t0);
    let sb = b.mgr.current(&a_before.key).unwrap();
    let mut a = node(1, SessionLimits::default());
    f.table.sessions = Arc::new(a.mgr.snapshot());
    assert!(f.table.sessions.enabled && f.table.sessions.recv.is_empty());
    let (pa, pb) = (f.a.address(), f.b.address());
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());
    let frame = |n| seal(&sb, PayloadType::L3, &packet(pb, pa, 64, n, 10));
    let stale = |f: &Fixture| {
        let mut n = 0;
        while let Some(need) = f.next_need() {
            match need {
                Need::SessionStale(k) => {
                    assert_eq!(k, f.b.public_key());
                    n += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        n
    };
    assert!(receive_frame_at(&f, &mut rx, t0, pb, &frame(1)).is_empty());
    assert_eq!(count(&f.counters.drop_decrypt), 1);
    assert_eq!(stale(&f), 1);
    for n in 2..5 {
        let at = t0 + Duration::from_millis(200 * u64::from(n));
        assert!(receive_frame_at(&f, &mut rx, at, pb, &frame(n)).is_empty());
    }
    assert_eq!(stale(&f), 0, "once a second");
    let later = t0 + Duration::from_secs(1);
    assert!(receive_frame_at(&f, &mut rx, later, pb, &frame(7)).is_empty());
    assert_eq!(stale(&f), 1);
    assert_eq!(count(&f.counters.drop_decrypt), 5);
    // The owner starts a handshake; with the new session B's frames are delivered again.
    let init = a.mgr.stale(b.key, later, wall(t0, later)).unwrap();
    exchange(&mut a, &mut b, init, later);
    f.table.sessions = Arc::new(a.mgr.snapshot());
    let sb = b.mgr.current(&a.key).unwrap();
    let p = packet(pb, pa, 64, 9, 10);
    let got = receive_frame_at(&f, &mut rx, later, pb, &seal(&sb, PayloadType::L3, &p));
    assert_eq!(got.len(), 1);
    f.needs.borrow_mut().drain().for_each(drop);
    // Sessions off: no need at all.
    f.table.sessions = Arc::default();
    let at = later + Duration::from_secs(5);
    assert!(receive_frame_at(&f, &mut rx, at, pb, &frame(10)).is_empty());
    assert_eq!(stale(&f), 0);
}

/// An IPv6 TCP super-packet from `src` to `dst`: three 1,000-byte segments behind one header,
/// and the virtio header its sender's kernel gave it.
fn super_packet(src: Ipv6Addr, dst: Ipv6Addr) -> (wire::virtio::VirtioNetHdr, Vec<u8>) {
    use wire::virtio::{flags, gso, VirtioNetHdr};
    let payload = 3000;
    let mut p = vec![0x5a; 40 + 20 + payload];
    let plen = 20 + payload;
    p[..8].copy_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, 6, 64]);
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40 + 12] = 5 << 4; // data offset: 20 bytes
    p[40 + 13] = 0x10; // ACK
    let vnet = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::TCPV6,
        hdr_len: 60,
        gso_size: 1000,
        csum_start: 40,
        csum_offset: 16,
    };
    (vnet, p)
}

/// Hands `body` from `src` to A's receiver; returns the super-packets it would write whole
/// (header and packet) and the plain packets.
fn receive_whole(
    f: &Fixture,
    rx: &mut Receiver,
    src: Ipv6Addr,
    body: &[u8],
) -> (Vec<(wire::virtio::VirtioNetHdr, Vec<u8>)>, usize) {
    let mut buf = vec![0xEE; 5];
    buf.extend_from_slice(body);
    let frame = DataFrame {
        hop_limit: 64,
        src,
        dst: f.a.address(),
        body: 5..5 + body.len(),
    };
    rx.handle_data(
        &f.table,
        &mut *f.needs.borrow_mut(),
        Instant::now(),
        &mut buf,
        frame,
    );
    let mut runs = Vec::new();
    rx.tun_runs(&mut buf, &mut runs);
    let (mut wholes, mut plain) = (Vec::new(), 0);
    for r in runs {
        match r {
            crate::Run::Whole(h, p) => wholes.push((h, p.to_vec())),
            crate::Run::Packets(v) => plain += v.len(),
        }
    }
    rx.tun_done();
    (wholes, plain)
}

#[test]
fn super_frames_are_admitted_whole_only_under_a_session_and_with_a_sound_header() {
    let t0 = Instant::now();
    let (mut f, a, b) = fixture_with_session(t0);
    let mut a = a;
    f.table.sessions = Arc::new(a.mgr.snapshot());
    let sb = b.mgr.current(&a.key).expect("b seals at once");
    let (pa, pb) = (f.a.address(), f.b.address());
    let (vnet, p) = super_packet(pb, pa);
    let mut payload = vnet.to_bytes()[..10].to_vec();
    payload.extend_from_slice(&p);
    let mut rx = Receiver::new(f.a.subnet(), LinkId(1), f.counters.clone());

    // Under the session: written whole with the header derived from the packet, hop limit
    // decremented like any packet's.
    let body = seal(&sb, PayloadType::SuperPacket, &payload);
    let (wholes, plain) = receive_whole(&f, &mut rx, pb, &body);
    assert_eq!(plain, 0);
    let mut want = p.clone();
    want[7] = 63;
    assert_eq!(wholes, vec![(vnet, want)]);
    assert!(rx.tun_len() == 0);
    assert_eq!(count(&f.counters.super_frames_in), 1);
    let sa = match f.next_need() {
        Some(Need::SessionConfirmed(i)) => {
            a.mgr.confirmed(i, t0);
            a.mgr.current(&b.key).unwrap()
        }
        other => panic!("expected a confirmation, got {other:?}"),
    };
    assert_eq!(sa.supers_received(), 1);

    // The same payload under the static key: never admitted.
    let inner = count(&f.counters.drop_inner);
    let legacy = body_for(&f.b, &f.a, 18, &payload);
    assert_eq!(receive_whole(&f, &mut rx, pb, &legacy), (vec![], 0));
    assert_eq!(count(&f.counters.drop_inner), inner + 1);

    // A header the packet does not bear out, or a packet too short: refused.
    let mut bad = payload.clone();
    bad[1] = wire::virtio::gso::UDP_L4;
    let body = seal(&sb, PayloadType::SuperPacket, &bad);
    assert_eq!(receive_whole(&f, &mut rx, pb, &body), (vec![], 0));
    let body = seal(&sb, PayloadType::SuperPacket, &payload[..8]);
    assert_eq!(receive_whole(&f, &mut rx, pb, &body), (vec![], 0));
    assert_eq!(count(&f.counters.drop_inner), inner + 3);

    // Someone else's source address inside: refused like any packet's.
    let (vnet, p) = super_packet(f.c.address(), pa);
    let mut spoofed = vnet.to_bytes()[..10].to_vec();
    spoofed.extend_from_slice(&p);
    let body = seal(&sb, PayloadType::SuperPacket, &spoofed);
    assert_eq!(receive_whole(&f, &mut rx, pb, &body), (vec![], 0));
    assert_eq!(count(&f.counters.refused_inner_source), 1);
    assert_eq!(count(&f.counters.super_frames_in), 1);
}
