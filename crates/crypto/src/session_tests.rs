//! Sessions (`docs/sessions.md`): the handshake and the transport against the reference Noise
//! library (`snow`), the handshake's refusals, the anti-replay window (against a model), legacy
//! frames that look like session frames, and counter exhaustion.
//!
//! A child of `session` so that a test can put a session's counter near its end.

use super::*;
use crate::data::{PeerCipher, SharedSecret};
use proptest::prelude::*;
use std::collections::HashSet;

fn seq(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn key_a() -> SecretKey {
    SecretKey::from_bytes(seq(0x00))
}

fn key_b() -> SecretKey {
    SecretKey::from_bytes(seq(0x20))
}

fn key_c() -> SecretKey {
    SecretKey::from_bytes(seq(0x40))
}

fn addr(k: &SecretKey) -> Ipv6Addr {
    k.public_key().address()
}

const TS: Timestamp = Timestamp(1_764_000_000, 123_456_789);

/// The prologue as the specification states it, built here independently of `prologue`.
fn spec_prologue(initiator: Ipv6Addr, responder: Ipv6Addr) -> Vec<u8> {
    let mut p = b"hypha session 1".to_vec();
    p.extend_from_slice(&initiator.octets());
    p.extend_from_slice(&responder.octets());
    p
}

fn params() -> snow::params::NoiseParams {
    "Noise_IK_25519_AESGCM_SHA256".parse().unwrap()
}

/// A snow transport state of the given role whose keys are `i2r` (initiator to responder) and
/// `r2i`: the reference sealer for a direction whose keys came out of a real handshake.
fn snow_transport_with(
    initiator: bool,
    i2r: &[u8; 32],
    r2i: &[u8; 32],
) -> snow::StatelessTransportState {
    // Any finished handshake gives a transport state of each role; its keys are then replaced.
    let b = snow::Builder::new(params());
    let ki = b.generate_keypair().unwrap();
    let kr = snow::Builder::new(params()).generate_keypair().unwrap();
    let mut i = snow::Builder::new(params())
        .local_private_key(&ki.private)
        .unwrap()
        .remote_public_key(&kr.public)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params())
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m1, mut m2, mut p) = ([0u8; 256], [0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m1).unwrap();
    r.read_message(&m1[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m2).unwrap();
    i.read_message(&m2[..n], &mut p).unwrap();
    let mut t = if initiator { i } else { r }
        .into_stateless_transport_mode()
        .unwrap();
    t.rekey_manually(Some(i2r), Some(r2i));
    t
}

/// `plain` (inner header included) sealed by `s`: the whole body, and the counter it used.
fn seal_body(s: &Session, plain: &[u8]) -> (Vec<u8>, u64) {
    let counter = s.sent();
    let mut body = plain.to_vec();
    s.seal_append(&mut body, 0).unwrap();
    assert_eq!(body.len(), plain.len() + SEAL_OVERHEAD);
    let (idx, c) = trailer(&body);
    assert_eq!((idx, c), (s.remote_index(), counter));
    (body, c)
}

/// The receiver index and counter in a body's trailer.
fn trailer(body: &[u8]) -> (u32, u64) {
    let t = &body[body.len() - NONCE_LEN..];
    (
        u32::from_be_bytes(t[..4].try_into().unwrap()),
        u64::from_be_bytes(t[4..].try_into().unwrap()),
    )
}

fn plain(kind: PayloadType, payload: &[u8]) -> Vec<u8> {
    let mut p = kind.inner_header().to_vec();
    p.extend_from_slice(payload);
    p
}

/// Checks both directions of a pair against snow: `ours` seals what `reference` (snow, the other
/// end) reads, and byte for byte what `mirror` (snow in our role, same keys) writes; `ours`
/// opens what `reference` writes.
fn check_transport_against_snow(
    ours: &Session,
    reference: &snow::StatelessTransportState,
    mirror: &snow::StatelessTransportState,
) {
    for (n, len) in [(0u8, 0usize), (1, 1), (2, 100), (3, 1400), (4, 9000)] {
        let p = plain(PayloadType::L3, &vec![n; len]);
        let (body, c) = seal_body(ours, &p);
        let sealed = &body[..body.len() - NONCE_LEN];
        let mut expect = vec![0u8; p.len() + TAG_LEN];
        let m = mirror.write_message(c, &p, &mut expect).unwrap();
        assert_eq!(sealed, &expect[..m], "ciphertext and tag of counter {c}");
        let mut out = vec![0u8; p.len()];
        let m = reference.read_message(c, sealed, &mut out).unwrap();
        assert_eq!(&out[..m], &p[..]);
        // The other way: snow seals with counter c, we open with the index and counter appended.
        let back = plain(PayloadType::Message, &vec![n ^ 0xff; len]);
        let mut body = vec![0u8; back.len() + TAG_LEN];
        let m = reference.write_message(c, &back, &mut body).unwrap();
        body.truncate(m);
        body.extend_from_slice(&ours.local_index().to_be_bytes());
        body.extend_from_slice(&c.to_be_bytes());
        let (kind, payload) = ours.open_payload(&mut body).unwrap();
        assert_eq!(kind, PayloadType::Message);
        assert_eq!(payload, &back[INNER_HEADER_LEN..]);
    }
    // A counter far from zero: the nonce is 4 zero bytes and the 8-byte big-endian counter.
    let far = (1u64 << 40) + 0x0102_0304;
    ours.counter.store(far, Ordering::Relaxed);
    let p = plain(PayloadType::L3, b"far counter");
    let (body, c) = seal_body(ours, &p);
    assert_eq!(c, far);
    let mut expect = vec![0u8; p.len() + TAG_LEN];
    let m = mirror.write_message(far, &p, &mut expect).unwrap();
    assert_eq!(&body[..body.len() - NONCE_LEN], &expect[..m]);
    let mut out = vec![0u8; p.len()];
    let m = reference
        .read_message(far, &body[..body.len() - NONCE_LEN], &mut out)
        .unwrap();
    assert_eq!(&out[..m], &p[..]);
}

#[test]
fn our_initiator_against_a_snow_responder() {
    let (a, b) = (key_a(), key_b());
    let (aa, ab) = (addr(&a), addr(&b));
    let mut init = Vec::new();
    let ini = Initiator::start(&a, aa, &b.public_key(), ab, 0x1111_2222, TS, &mut init).unwrap();
    assert_eq!(init.len(), 1 + INIT_LEN);
    assert_eq!(init[0], HANDSHAKE_INIT);
    assert_eq!(
        HandshakeMessage::parse(&init),
        Ok(HandshakeMessage::Init(&init[1..]))
    );

    let pro = spec_prologue(aa, ab);
    let mut r = snow::Builder::new(params())
        .local_private_key(&b.to_bytes()[..])
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut payload = [0u8; 64];
    let n = r.read_message(&init[1..], &mut payload).unwrap();
    // The payload: our index, then the timestamp's seconds and nanoseconds, big-endian.
    let mut want = 0x1111_2222u32.to_be_bytes().to_vec();
    want.extend_from_slice(&TS.0.to_be_bytes());
    want.extend_from_slice(&TS.1.to_be_bytes());
    assert_eq!(&payload[..n], &want[..]);
    assert_eq!(r.get_remote_static().unwrap(), a.public_key().as_bytes());

    let mut msg = [0u8; 128];
    let n = r
        .write_message(&0x3333_4444u32.to_be_bytes(), &mut msg)
        .unwrap();
    assert_eq!(4 + n, RESPONSE_LEN);
    let ours = ini.finish(&msg[..n]).unwrap();
    assert!(ours.is_initiator());
    assert_eq!(
        (ours.local_index(), ours.remote_index()),
        (0x1111_2222, 0x3333_4444)
    );

    let (i2r, r2i) = r.dangerously_get_raw_split();
    let reference = r.into_stateless_transport_mode().unwrap();
    let mirror = snow_transport_with(true, &i2r, &r2i);
    check_transport_against_snow(&ours, &reference, &mirror);
}

#[test]
fn our_responder_against_a_snow_initiator() {
    let (a, b) = (key_a(), key_b());
    let (aa, ab) = (addr(&a), addr(&b));
    let pro = spec_prologue(aa, ab);
    let mut i = snow::Builder::new(params())
        .local_private_key(&a.to_bytes()[..])
        .unwrap()
        .remote_public_key(b.public_key().as_bytes())
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut payload = 0xaabb_ccddu32.to_be_bytes().to_vec();
    payload.extend_from_slice(&TS.0.to_be_bytes());
    payload.extend_from_slice(&TS.1.to_be_bytes());
    let mut msg = [0u8; 256];
    let n = i.write_message(&payload, &mut msg).unwrap();
    assert_eq!(n, INIT_LEN);

    let mut out = vec![0x99];
    let mut seen = None;
    let r = respond(
        &b,
        ab,
        aa,
        &msg[..n],
        0x0506_0708,
        |k, ts| {
            seen = Some((*k, ts));
            true
        },
        &mut out,
    )
    .unwrap()
    .expect("accepted");
    assert_eq!(seen, Some((a.public_key(), TS)));
    assert_eq!((r.peer, r.timestamp), (a.public_key(), TS));
    assert!(!r.session.is_initiator());
    assert_eq!(
        (r.session.local_index(), r.session.remote_index()),
        (0x0506_0708, 0xaabb_ccdd)
    );
    // Appended after what was there: kind, the initiator's index, Noise's second message.
    assert_eq!(out.len(), 1 + 1 + RESPONSE_LEN);
    assert_eq!(out[0], 0x99);
    let Ok(HandshakeMessage::Response { receiver, noise }) = HandshakeMessage::parse(&out[1..])
    else {
        panic!("a response");
    };
    assert_eq!(receiver, 0xaabb_ccdd);
    let mut p = [0u8; 64];
    let n = i.read_message(noise, &mut p).unwrap();
    assert_eq!(&p[..n], &0x0506_0708u32.to_be_bytes());
    assert!(i.is_handshake_finished());

    let (i2r, r2i) = i.dangerously_get_raw_split();
    let reference = i.into_stateless_transport_mode().unwrap();
    let mirror = snow_transport_with(false, &i2r, &r2i);
    check_transport_against_snow(&r.session, &reference, &mirror);
}

/// A full handshake between two of ours: (initiator's session, responder's).
fn handshake(a: &SecretKey, b: &SecretKey) -> (Session, Session) {
    let (aa, ab) = (addr(a), addr(b));
    let mut init = Vec::new();
    let ini = Initiator::start(a, aa, &b.public_key(), ab, 7, TS, &mut init).unwrap();
    let Ok(HandshakeMessage::Init(m)) = HandshakeMessage::parse(&init) else {
        panic!("an initiation");
    };
    let mut resp = Vec::new();
    let r = respond(b, ab, aa, m, 9, |_, _| true, &mut resp)
        .unwrap()
        .unwrap();
    let Ok(HandshakeMessage::Response { receiver, noise }) = HandshakeMessage::parse(&resp) else {
        panic!("a response");
    };
    assert_eq!(receiver, ini.local_index());
    (ini.finish(noise).unwrap(), r.session)
}

#[test]
fn our_handshake_gives_matching_keys_both_ways() {
    let (a, b) = (key_a(), key_b());
    let (sa, sb) = handshake(&a, &b);
    assert_eq!((sa.local_index(), sa.remote_index()), (7, 9));
    assert_eq!((sb.local_index(), sb.remote_index()), (9, 7));
    assert!(sa.is_initiator() && !sb.is_initiator());
    for round in 0..20u8 {
        let (mut body, _) = seal_body(&sa, &plain(PayloadType::L3, &[round; 33]));
        assert_eq!(trailer_index(&body), Some(sb.local_index()));
        assert_eq!(
            sb.open_payload(&mut body).unwrap(),
            (PayloadType::L3, &mut [round; 33][..])
        );
        let (mut body, _) = seal_body(&sb, &plain(PayloadType::Keepalive, &[]));
        assert_eq!(trailer_index(&body), Some(sa.local_index()));
        assert_eq!(
            sa.open_payload(&mut body).unwrap(),
            (PayloadType::Keepalive, &mut [][..])
        );
    }
    assert!(sa.confirmed() && sb.confirmed());
    assert_eq!((sa.sent(), sa.received()), (20, 20));
    // The two directions use different keys: a frame sent back at its sender does not open.
    let (mut body, _) = seal_body(&sa, &plain(PayloadType::L3, b"x"));
    let idx = sa.local_index().to_be_bytes();
    let at = body.len() - NONCE_LEN;
    body[at..at + 4].copy_from_slice(&idx);
    assert_eq!(
        sa.open_payload(&mut body),
        Err(SessionOpenError::Authentication)
    );
    // A second handshake between the same keys gives other keys (fresh ephemerals).
    let (sa2, _) = handshake(&a, &b);
    sa2.counter.store(100, Ordering::Relaxed);
    let (mut body, _) = seal_body(&sa2, &plain(PayloadType::L3, b"y"));
    assert_eq!(
        sb.open_payload(&mut body),
        Err(SessionOpenError::Authentication)
    );
}

#[test]
fn handshake_refusals() {
    let (a, b, c) = (key_a(), key_b(), key_c());
    let (aa, ab, ac) = (addr(&a), addr(&b), addr(&c));
    let start = |own: &SecretKey, own_addr, peer: &SecretKey, peer_addr| {
        let mut init = Vec::new();
        Initiator::start(
            own,
            own_addr,
            &peer.public_key(),
            peer_addr,
            1,
            TS,
            &mut init,
        )
        .unwrap();
        init.split_off(1)
    };
    let answer = |own: &SecretKey, own_addr, src, init: &[u8]| {
        let mut out = vec![0xab];
        let got = respond(own, own_addr, src, init, 2, |_, _| true, &mut out).map(|r| r.is_some());
        if got != Ok(true) {
            assert_eq!(out, vec![0xab], "nothing appended when refused");
        }
        got
    };
    assert_eq!(answer(&b, ab, aa, &start(&a, aa, &b, ab)), Ok(true));

    // The prologue binds both addresses as the outer header carries them.
    let other: Ipv6Addr = "4ff:1:2:3::1".parse().unwrap();
    assert_eq!(
        answer(&b, ab, other, &start(&a, aa, &b, ab)),
        Err(HandshakeError::Noise)
    );
    assert_eq!(
        answer(&b, other, aa, &start(&a, aa, &b, ab)),
        Err(HandshakeError::Noise)
    );
    // A host address in the initiator's /64 is its own; the prologue still binds it exactly.
    let a_host = Ipv6Addr::from(u128::from(aa) ^ 0xffff);
    assert_eq!(answer(&b, ab, a_host, &start(&a, a_host, &b, ab)), Ok(true));
    assert_eq!(
        answer(&b, ab, aa, &start(&a, a_host, &b, ab)),
        Err(HandshakeError::Noise)
    );
    // The initiator claims C's address (consistently), but its key does not own that /64.
    assert_eq!(
        answer(&b, ab, ac, &start(&a, ac, &b, ab)),
        Err(HandshakeError::AddressMismatch)
    );
    // Meant for C, answered by B: Noise refuses (the initiation is encrypted to C's key).
    assert_eq!(
        answer(&b, ab, aa, &start(&a, aa, &c, ab)),
        Err(HandshakeError::Noise)
    );
    // Our own key.
    assert_eq!(
        answer(&a, aa, aa, &start(&a, aa, &a, aa)),
        Err(HandshakeError::OwnKey)
    );
    // Altered on the way: every byte matters.
    let init = start(&a, aa, &b, ab);
    for at in [0, 31, 32, 79, 80, INIT_LEN - 1] {
        let mut m = init.clone();
        m[at] ^= 0x40;
        assert_eq!(answer(&b, ab, aa, &m), Err(HandshakeError::Noise), "{at}");
    }
    // Wrong lengths.
    for len in [0, 1, INIT_LEN - 1] {
        assert_eq!(
            answer(&b, ab, aa, &init[..len]),
            Err(HandshakeError::Malformed)
        );
    }
    let mut long = init.clone();
    long.push(0);
    assert_eq!(answer(&b, ab, aa, &long), Err(HandshakeError::Malformed));
}

#[test]
fn a_refused_timestamp_answers_nothing() {
    let (a, b) = (key_a(), key_b());
    let (aa, ab) = (addr(&a), addr(&b));
    let mut init = Vec::new();
    Initiator::start(&a, aa, &b.public_key(), ab, 1, TS, &mut init).unwrap();
    let mut last: Option<Timestamp> = None;
    let mut accept = |k: &PublicKey, ts: Timestamp| {
        assert_eq!(*k, a.public_key());
        if last.is_some_and(|l| ts <= l) {
            return false;
        }
        last = Some(ts);
        true
    };
    let mut out = Vec::new();
    assert!(respond(&b, ab, aa, &init[1..], 2, &mut accept, &mut out)
        .unwrap()
        .is_some());
    let answered = out.len();
    assert_eq!(answered, 1 + RESPONSE_LEN);
    // The same initiation again (a replay): refused, nothing appended.
    assert!(respond(&b, ab, aa, &init[1..], 3, &mut accept, &mut out)
        .unwrap()
        .is_none());
    assert_eq!(out.len(), answered);
    // An older one too; a newer one is answered.
    let mut older = Vec::new();
    Initiator::start(
        &a,
        aa,
        &b.public_key(),
        ab,
        1,
        Timestamp(TS.0, TS.1 - 1),
        &mut older,
    )
    .unwrap();
    assert!(respond(&b, ab, aa, &older[1..], 3, &mut accept, &mut out)
        .unwrap()
        .is_none());
    assert_eq!(out.len(), answered);
    let mut newer = Vec::new();
    let ts = Timestamp::next_after(TS, Some(TS));
    assert_eq!(ts, Timestamp(TS.0, TS.1 + 1));
    Initiator::start(&a, aa, &b.public_key(), ab, 1, ts, &mut newer).unwrap();
    assert!(respond(&b, ab, aa, &newer[1..], 3, &mut accept, &mut out)
        .unwrap()
        .is_some());
    assert_eq!(out.len(), 2 * answered);
}

#[test]
fn timestamps_always_increase() {
    let t = Timestamp(5, 999_999_999);
    assert_eq!(Timestamp::next_after(t, Some(t)), Timestamp(6, 0));
    assert_eq!(
        Timestamp::next_after(Timestamp(4, 0), Some(t)),
        Timestamp(6, 0)
    );
    assert_eq!(
        Timestamp::next_after(Timestamp(7, 0), Some(t)),
        Timestamp(7, 0)
    );
    assert_eq!(
        Timestamp::next_after(Timestamp(1, 2), None),
        Timestamp(1, 2)
    );
}

#[test]
fn malformed_handshake_messages() {
    use HandshakeError::Malformed;
    for bad in [
        vec![],
        vec![HANDSHAKE_INIT],
        vec![HANDSHAKE_RESPONSE],
        vec![0; 1 + INIT_LEN],
        vec![3; 1 + INIT_LEN],
        vec![3; 1 + RESPONSE_LEN],
    ] {
        assert_eq!(HandshakeMessage::parse(&bad), Err(Malformed), "{bad:?}");
    }
    for len in [INIT_LEN - 1, INIT_LEN + 1, RESPONSE_LEN] {
        let mut m = vec![HANDSHAKE_INIT];
        m.resize(1 + len, 0);
        assert_eq!(HandshakeMessage::parse(&m), Err(Malformed), "init of {len}");
    }
    for len in [RESPONSE_LEN - 1, RESPONSE_LEN + 1, INIT_LEN] {
        let mut m = vec![HANDSHAKE_RESPONSE];
        m.resize(1 + len, 0);
        assert_eq!(
            HandshakeMessage::parse(&m),
            Err(Malformed),
            "response of {len}"
        );
    }
    let mut m = vec![HANDSHAKE_RESPONSE, 1, 2, 3, 4];
    m.resize(1 + RESPONSE_LEN, 7);
    assert_eq!(
        HandshakeMessage::parse(&m),
        Ok(HandshakeMessage::Response {
            receiver: 0x0102_0304,
            noise: &m[5..],
        })
    );

    // Responses that do not finish the initiation.
    let (a, b) = (key_a(), key_b());
    let (aa, ab) = (addr(&a), addr(&b));
    let fresh = || {
        let mut init = Vec::new();
        let i = Initiator::start(&a, aa, &b.public_key(), ab, 1, TS, &mut init).unwrap();
        (i, init)
    };
    let (i, _) = fresh();
    assert_eq!(
        i.finish(&[0; RESPONSE_LEN - 4]).unwrap_err(),
        HandshakeError::Noise
    );
    let (i, _) = fresh();
    assert!(i.finish(&[]).is_err());
    // A genuine response (snow's) whose payload is not a 4-byte index.
    for payload in [&[][..], &[1, 2, 3][..], &[1, 2, 3, 4, 5][..]] {
        let (i, init) = fresh();
        let mut r = snow::Builder::new(params())
            .local_private_key(&b.to_bytes()[..])
            .unwrap()
            .prologue(&spec_prologue(aa, ab))
            .unwrap()
            .build_responder()
            .unwrap();
        let mut p = [0u8; 64];
        r.read_message(&init[1..], &mut p).unwrap();
        let mut msg = [0u8; 128];
        let n = r.write_message(payload, &mut msg).unwrap();
        assert_eq!(i.finish(&msg[..n]).unwrap_err(), Malformed, "{payload:?}");
    }
    // A response altered on the way.
    let (i, init) = fresh();
    let mut out = Vec::new();
    respond(&b, ab, aa, &init[1..], 5, |_, _| true, &mut out)
        .unwrap()
        .unwrap();
    out[20] ^= 1;
    let Ok(HandshakeMessage::Response { noise, .. }) = HandshakeMessage::parse(&out) else {
        panic!("a response");
    };
    assert_eq!(i.finish(noise).unwrap_err(), HandshakeError::Noise);
}

#[test]
fn a_frame_opens_once() {
    let (sa, sb) = handshake(&key_a(), &key_b());
    let (body, _) = seal_body(&sa, &plain(PayloadType::L3, b"once"));
    let mut first = body.clone();
    assert_eq!(
        sb.open_payload(&mut first).unwrap(),
        (PayloadType::L3, &mut b"once".to_vec()[..])
    );
    let mut again = body.clone();
    assert_eq!(sb.open_payload(&mut again), Err(SessionOpenError::Replay));
    assert_eq!(again, body, "a replay is refused before it is opened");
    assert_eq!(sb.replays(), 1);
    // A replay with its ciphertext altered is refused for the same reason.
    let mut forged = body.clone();
    forged[0] ^= 1;
    assert_eq!(sb.open_payload(&mut forged), Err(SessionOpenError::Replay));
    assert_eq!(sb.replays(), 2);
}

/// A deterministic shuffle (xorshift), so a failure repeats.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[test]
fn reordering_inside_the_window_is_accepted_and_older_counters_are_not() {
    let (sa, sb) = handshake(&key_a(), &key_b());
    let frames: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| seal_body(&sa, &plain(PayloadType::L3, &i.to_be_bytes())).0)
        .collect();
    // Held back: the oldest counter behind the last one that the window keeps, and one older.
    let (oldest_kept, too_old) = (2999 - REPLAY_WINDOW + 1, 2999 - REPLAY_WINDOW);
    let mut order: Vec<usize> = (0..3000)
        .filter(|&i| i as u64 != oldest_kept && i as u64 != too_old)
        .collect();
    // Shuffled in blocks of 1000: every frame arrives within 2048 of the highest one yet.
    for (n, block) in order.chunks_mut(1000).enumerate() {
        shuffle(block, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
    }
    assert_ne!(order[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for &i in &order {
        let mut f = frames[i].clone();
        let (kind, payload) = sb.open_payload(&mut f).unwrap();
        assert_eq!(
            (kind, &payload[..]),
            (PayloadType::L3, &(i as u32).to_be_bytes()[..])
        );
    }
    assert_eq!(sb.received(), 3000);
    assert_eq!(sb.replays(), 0);
    let mut f = frames[too_old as usize].clone();
    assert_eq!(sb.open_payload(&mut f), Err(SessionOpenError::Replay));
    let mut f = frames[oldest_kept as usize].clone();
    assert!(sb.open_payload(&mut f).is_ok());
    // Every one of them a second time: all refused.
    for &i in order.iter().rev() {
        let mut f = frames[i].clone();
        assert_eq!(
            sb.open_payload(&mut f),
            Err(SessionOpenError::Replay),
            "{i}"
        );
    }
    assert_eq!(sb.replays(), 1 + order.len() as u64);
}

#[test]
fn forged_frames_do_not_move_the_window() {
    let (sa, sb) = handshake(&key_a(), &key_b());
    let frames: Vec<Vec<u8>> = (0..10u8)
        .map(|i| seal_body(&sa, &plain(PayloadType::L3, &[i; 40])).0)
        .collect();
    let mut f = frames[5].clone();
    sb.open_payload(&mut f).unwrap();
    assert_eq!(sb.received(), 6);
    // Forged: a valid-looking counter far ahead (just inside the jump the session believes),
    // and one just ahead, with a wrong tag or ciphertext.
    let at = frames[0].len() - 8;
    for c in [6u64, 3000, 6 + MAX_COUNTER_JUMP - 1] {
        let mut forged = frames[9].clone();
        forged[at..].copy_from_slice(&c.to_be_bytes());
        let keep = forged.clone();
        assert_eq!(
            sb.open_payload(&mut forged),
            Err(SessionOpenError::Authentication),
            "counter {c}"
        );
        assert_eq!(sb.received(), 6, "counter {c} did not move the window");
        // Nothing recorded either: the same counter is not taken for a replay.
        let mut again = keep;
        assert_eq!(
            sb.open_payload(&mut again),
            Err(SessionOpenError::Authentication)
        );
    }
    let mut tampered = frames[7].clone();
    tampered[3] ^= 0x80;
    assert_eq!(
        sb.open_payload(&mut tampered),
        Err(SessionOpenError::Authentication)
    );
    assert_eq!(sb.replays(), 0);
    // The genuine frames, lower counters than the forged ones: all open (7 too, its forgery
    // recorded nothing).
    for i in [0, 9, 1, 8, 7, 6, 2, 3, 4] {
        let mut f = frames[i].clone();
        assert_eq!(
            sb.open_payload(&mut f).unwrap(),
            (PayloadType::L3, &mut [i as u8; 40][..]),
            "frame {i}"
        );
    }
    assert_eq!(sb.received(), 10);
    // A genuine frame whose inner header is not version 1: counted as seen, refused.
    let (mut body, _) = seal_body(&sa, &[2, 0, 0, 0, 1, 2]);
    assert_eq!(
        sb.open_payload(&mut body),
        Err(SessionOpenError::InnerVersion(2))
    );
}

/// The window as its specification reads: a counter is accepted once, unless more than
/// `REPLAY_WINDOW` counters lie between it and the highest accepted, or it is past the last.
#[derive(Default)]
struct Model {
    seen: HashSet<u64>,
    max: Option<u64>,
}

impl Model {
    fn update(&mut self, c: u64) -> bool {
        if c >= REJECT_AFTER_MESSAGES || self.seen.contains(&c) {
            return false;
        }
        if let Some(m) = self.max {
            if c < m && m - c >= REPLAY_WINDOW {
                return false;
            }
        }
        self.seen.insert(c);
        self.max = Some(self.max.map_or(c, |m| m.max(c)));
        true
    }
}

fn counters() -> impl Strategy<Value = Vec<u64>> {
    // Steps relative to the highest counter so far mostly stay near the window's edge; a few
    // jump far ahead, or land at the end of the counter space.
    let step = prop_oneof![
        6 => -2200i64..200,
        2 => -70i64..70,
        1 => 0i64..10_000,
        1 => Just(i64::MIN),
    ];
    proptest::collection::vec(step, 1..600).prop_map(|steps| {
        let mut max = 0u64;
        steps
            .into_iter()
            .map(|s| {
                let c = if s == i64::MIN {
                    REJECT_AFTER_MESSAGES - 3 + (max % 6)
                } else {
                    max.saturating_add_signed(s)
                };
                max = max.max(c);
                c
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn the_replay_window_agrees_with_its_model(cs in counters()) {
        let mut w = ReplayWindow::default();
        let mut m = Model::default();
        for c in cs {
            let checked = w.check(c);
            let expect = m.update(c);
            prop_assert_eq!(checked, expect, "check({})", c);
            prop_assert_eq!(w.update(c), expect, "update({})", c);
            prop_assert!(!w.check(c));
            prop_assert_eq!(w.next(), m.max.map_or(0, |x| x + 1));
        }
    }

    #[test]
    fn any_delivery_order_opens_each_frame_once(
        order in Just((0..300usize).collect::<Vec<_>>()).prop_shuffle(),
        dups in proptest::collection::vec(0..300usize, 0..50),
    ) {
        // Counters 0..300 in any order (all within the window), with duplicates mixed in.
        let (sa, sb) = handshake(&key_a(), &key_b());
        let frames: Vec<Vec<u8>> = (0..300u16)
            .map(|i| seal_body(&sa, &plain(PayloadType::L3, &i.to_be_bytes())).0)
            .collect();
        let mut opened = vec![0u32; 300];
        let mut sequence = order.clone();
        for (n, d) in dups.iter().enumerate() {
            let at = (n * 7) % sequence.len();
            sequence.insert(at, *d);
        }
        let mut replays = 0;
        for i in sequence {
            let mut f = frames[i].clone();
            match sb.open_payload(&mut f) {
                Ok((_, p)) => {
                    prop_assert_eq!(&p[..], &(i as u16).to_be_bytes()[..]);
                    opened[i] += 1;
                }
                Err(SessionOpenError::Replay) => replays += 1,
                Err(e) => prop_assert!(false, "frame {} gave {:?}", i, e),
            }
        }
        prop_assert!(opened.iter().all(|&n| n == 1));
        prop_assert_eq!(replays, dups.len() as u64);
        prop_assert_eq!(sb.replays(), dups.len() as u64);
    }
}

#[test]
fn the_window_keeps_its_edges_after_big_jumps() {
    let mut w = ReplayWindow::default();
    // The first counter may be anywhere, far from 0 included.
    assert!(w.update(5));
    assert!(w.update(0));
    assert!(!w.update(0));
    assert!(w.update(1_000_000));
    // Jumped more than the window: everything behind it is refused, the bitmap is clean.
    assert!(!w.check(5));
    assert!(!w.check(1_000_000 - REPLAY_WINDOW));
    for c in 1_000_000 - REPLAY_WINDOW + 1..1_000_000 {
        assert!(w.check(c), "{c}");
    }
    assert!(w.update(1_000_000 - REPLAY_WINDOW + 1));
    // Across a block boundary, one block at a time.
    for c in 1_000_001..1_000_300 {
        assert!(w.update(c));
    }
    assert!(!w.check(1_000_000 - REPLAY_WINDOW + 1));
    assert!(!w.check(1_000_100));
    assert!(w.check(1_000_299 - REPLAY_WINDOW + 1));
    assert!(!w.check(1_000_299 - REPLAY_WINDOW));
    // The end of the counter space.
    assert!(!w.check(REJECT_AFTER_MESSAGES));
    assert!(!w.check(u64::MAX));
    assert!(w.update(REJECT_AFTER_MESSAGES - 1));
    assert!(!w.update(REJECT_AFTER_MESSAGES));
    assert_eq!(w.next(), REJECT_AFTER_MESSAGES);
}

#[test]
fn a_legacy_frame_whose_nonce_starts_with_a_live_index_opens_with_the_static_key() {
    let (a, b) = (key_a(), key_b());
    let (sa, sb) = handshake(&a, &b);
    // Some session traffic first, so the window is not at 0.
    for _ in 0..3 {
        let (mut f, _) = seal_body(&sa, &plain(PayloadType::L3, b"s"));
        sb.open_payload(&mut f).unwrap();
    }
    let legacy = PeerCipher::new(&a.shared_secret(&b.public_key()).unwrap());
    let at_b = PeerCipher::new(&b.shared_secret(&a.public_key()).unwrap());
    let mut seed = [0u8; 8 * 64];
    getrandom::fill(&mut seed).unwrap();
    let mut tried = 0;
    for rest in seed.chunks(8) {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&sb.local_index().to_be_bytes());
        nonce[4..].copy_from_slice(rest);
        let c = u64::from_be_bytes(rest.try_into().unwrap());
        if c < sb.received() + MAX_COUNTER_JUMP {
            // Probability 2^-32: such a frame is taken for a session frame (and dropped).
            continue;
        }
        tried += 1;
        let p = plain(PayloadType::L3, b"legacy frame");
        let mut body = p.clone();
        body.resize(p.len() + SEAL_OVERHEAD, 0);
        legacy.seal_with_nonce(&mut body, p.len(), nonce).unwrap();
        assert_eq!(trailer_index(&body), Some(sb.local_index()));
        let keep = body.clone();
        assert_eq!(
            sb.open_payload(&mut body),
            Err(SessionOpenError::NotSession)
        );
        assert_eq!(body, keep, "untouched");
        assert_eq!(
            at_b.open_payload(&mut body).unwrap(),
            (PayloadType::L3, &mut b"legacy frame".to_vec()[..])
        );
    }
    assert!(tried > 60);
    assert_eq!(sb.replays(), 0);
    assert_eq!(sb.received(), 3);

    // The boundary of the rule, with counters chosen: one short of the jump is a session frame
    // (that fails), the jump itself is not one.
    let p = plain(PayloadType::L3, b"edge");
    for (c, want) in [
        (
            sb.received() + MAX_COUNTER_JUMP - 1,
            SessionOpenError::Authentication,
        ),
        (
            sb.received() + MAX_COUNTER_JUMP,
            SessionOpenError::NotSession,
        ),
        (u64::MAX, SessionOpenError::NotSession),
    ] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&sb.local_index().to_be_bytes());
        nonce[4..].copy_from_slice(&c.to_be_bytes());
        let mut body = p.clone();
        body.resize(p.len() + SEAL_OVERHEAD, 0);
        legacy.seal_with_nonce(&mut body, p.len(), nonce).unwrap();
        assert_eq!(sb.open_payload(&mut body), Err(want), "counter {c}");
    }
    // Too short to be a session frame.
    for len in 0..MIN_BODY_LEN {
        let mut body = vec![0u8; len];
        assert_eq!(trailer_index(&body), None);
        assert_eq!(
            sb.open_payload(&mut body),
            Err(SessionOpenError::NotSession)
        );
    }
}

#[test]
fn an_exhausted_session_refuses_to_seal() {
    let (sa, sb) = handshake(&key_a(), &key_b());
    sa.counter
        .store(REJECT_AFTER_MESSAGES - 2, Ordering::Relaxed);
    let p = plain(PayloadType::L3, b"last ones");
    let (last, c) = seal_body(&sa, &p);
    assert_eq!(c, REJECT_AFTER_MESSAGES - 2);
    let mut buf = vec![0u8; p.len() + SEAL_OVERHEAD];
    buf[..p.len()].copy_from_slice(&p);
    assert_eq!(sa.seal_in_place(&mut buf, p.len()), Ok(buf.len()));
    assert_eq!(trailer(&buf).1, REJECT_AFTER_MESSAGES - 1);
    for _ in 0..3 {
        let mut buf = p.clone();
        buf.resize(p.len() + SEAL_OVERHEAD, 0);
        assert_eq!(
            sa.seal_in_place(&mut buf, p.len()),
            Err(SealError::Exhausted)
        );
        let mut v = p.clone();
        assert_eq!(sa.seal_append(&mut v, 0), Err(SealError::Exhausted));
        assert_eq!(v, p, "left as it was");
        assert_eq!(
            sa.sent(),
            REJECT_AFTER_MESSAGES,
            "the counter stays at the end"
        );
    }
    // The receiver takes those last counters (once its window is near them) and none after.
    sb.window.lock().unwrap().update(REJECT_AFTER_MESSAGES - 10);
    let mut f = last.clone();
    assert!(sb.open_payload(&mut f).is_ok());
    assert!(sb.open_payload(&mut buf).is_ok());
    assert_eq!(sb.received(), REJECT_AFTER_MESSAGES);
    // Too short a buffer is refused without using a counter.
    let (_, sc) = handshake(&key_a(), &key_b());
    let mut small = [0u8; 10];
    assert_eq!(
        sc.seal_in_place(&mut small, 5),
        Err(SealError::NoRoom {
            need: 5 + SEAL_OVERHEAD,
            have: 10
        })
    );
    assert_eq!(sc.sent(), 0);
}

#[test]
fn the_legacy_layout_is_kept() {
    // ciphertext ‖ tag ‖ index ‖ counter: a session body is as long as a legacy one.
    let (sa, _) = handshake(&key_a(), &key_b());
    let legacy = SharedSecret::from_bytes([3; 32]).cipher();
    let p = plain(PayloadType::L3, &[0x5a; 77]);
    let (body, _) = seal_body(&sa, &p);
    let mut old = p.clone();
    legacy.seal_append(&mut old, 0).unwrap();
    assert_eq!(body.len(), old.len());
    assert_eq!(trailer(&body), (sa.remote_index(), 0));
}

#[test]
fn concurrent_sealers_never_share_a_counter_and_concurrent_openers_open_each_frame_once() {
    let (sa, sb) = handshake(&key_a(), &key_b());
    let (sa, sb) = (std::sync::Arc::new(sa), std::sync::Arc::new(sb));
    let sealed: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u8)
            .map(|t| {
                let sa = &sa;
                s.spawn(move || {
                    (0..500u16)
                        .map(|i| {
                            let mut p = vec![t];
                            p.extend_from_slice(&i.to_be_bytes());
                            // Not `seal_body`: other threads move the counter meanwhile.
                            let mut body = plain(PayloadType::L3, &p);
                            sa.seal_append(&mut body, 0).unwrap();
                            body
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let frames: Vec<Vec<u8>> = sealed.into_iter().flatten().collect();
    let counters: HashSet<u64> = frames.iter().map(|f| trailer(f).1).collect();
    assert_eq!(counters.len(), 2000);
    assert_eq!(counters.iter().max(), Some(&1999));
    // Four threads open every frame (each a copy): each frame opens exactly once.
    let opened: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (sb, frames) = (&sb, &frames);
                s.spawn(move || {
                    let mut n = 0u64;
                    for f in frames.iter() {
                        match sb.open_payload(&mut f.clone()) {
                            Ok(_) => n += 1,
                            Err(SessionOpenError::Replay) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(opened.iter().sum::<u64>(), 2000);
    assert_eq!(sb.replays(), 3 * 2000);
}
