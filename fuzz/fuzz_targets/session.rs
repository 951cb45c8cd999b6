//! Session handshakes and session frames on arbitrary input: parsing handshake messages,
//! answering initiations (with a fixed key), finishing initiations with arbitrary (or altered)
//! responses, and opening arbitrary bodies under a session with fixed keys. Nothing may panic,
//! nothing forged may be accepted, and what a session seals opens once at its peer.
#![no_main]

use std::net::Ipv6Addr;

use crypto::session::{respond, HandshakeMessage, Initiator, ReplayWindow, Session, Timestamp};
use crypto::{PayloadType, SecretKey, SessionOpenError, MIN_BODY_LEN, NONCE_LEN};
use libfuzzer_sys::fuzz_target;

const TS: Timestamp = Timestamp(1_764_000_000, 0);

fn keys() -> (SecretKey, SecretKey) {
    (
        SecretKey::from_bytes([0x11; 32]),
        SecretKey::from_bytes([0x22; 32]),
    )
}

fn addr(k: &SecretKey) -> Ipv6Addr {
    k.public_key().address()
}

/// XORs `mask` into `msg` from its start (cycling the mask).
fn alter(msg: &mut [u8], mask: &[u8]) {
    if mask.is_empty() {
        return;
    }
    for (i, b) in msg.iter_mut().enumerate() {
        *b ^= mask[i % mask.len()];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = keys();
    let (aa, ab) = (addr(&a), addr(&b));
    match mode % 6 {
        // Arbitrary handshake messages.
        0 => {
            let parsed = HandshakeMessage::parse(rest);
            let mut out = Vec::new();
            let got = respond(&b, ab, aa, rest, 1, |_, _| true, &mut out);
            assert!(got.is_err());
            assert!(out.is_empty());
            match parsed {
                Ok(HandshakeMessage::Init(m)) => {
                    let got = respond(&b, ab, aa, m, 1, |_, _| true, &mut out);
                    assert!(got.is_err(), "an initiation nobody made was answered");
                    assert!(out.is_empty());
                }
                Ok(HandshakeMessage::Response { noise, .. }) => {
                    let mut init = Vec::new();
                    let i = Initiator::start(&a, aa, &b.public_key(), ab, 1, TS, &mut init)
                        .expect("an initiation");
                    assert!(i.finish(noise).is_err(), "a forged response was taken");
                }
                Err(_) => {}
            }
        }
        // A genuine initiation, altered; from an arbitrary source address.
        1 => {
            let mut init = Vec::new();
            Initiator::start(&a, aa, &b.public_key(), ab, 1, TS, &mut init).expect("start");
            let (mask, src) = match rest.split_first_chunk::<16>() {
                Some((s, m)) if rest.len() > 32 => (m, Ipv6Addr::from(*s)),
                _ => (rest, aa),
            };
            alter(&mut init[1..], mask);
            let used = &mask[..mask.len().min(init.len() - 1)];
            let changed = src != aa || used.iter().any(|&m| m != 0);
            let mut out = Vec::new();
            let got = respond(&b, ab, src, &init[1..], 2, |_, _| true, &mut out);
            if changed {
                assert!(
                    !matches!(got, Ok(Some(_))),
                    "an altered initiation was answered"
                );
            }
            if !matches!(got, Ok(Some(_))) {
                assert!(out.is_empty());
            }
        }
        // A genuine response, altered, or cut.
        2 => {
            let mut init = Vec::new();
            let i = Initiator::start(&a, aa, &b.public_key(), ab, 1, TS, &mut init).expect("start");
            let mut resp = Vec::new();
            let r = respond(&b, ab, aa, &init[1..], 2, |_, _| true, &mut resp)
                .expect("answered")
                .expect("accepted");
            let (cut, mask) = rest
                .split_first()
                .map_or((0, rest), |(c, m)| (usize::from(*c), m));
            alter(&mut resp[5..], mask);
            let used = &mask[..mask.len().min(resp.len() - 5)];
            let whole = resp.len();
            resp.truncate(whole - cut % whole);
            let changed = resp.len() < whole || used.iter().any(|&m| m != 0);
            match HandshakeMessage::parse(&resp) {
                Ok(HandshakeMessage::Response { noise, .. }) => match i.finish(noise) {
                    Ok(s) => {
                        assert!(!changed, "an altered response was taken");
                        assert_eq!(s.remote_index(), r.session.local_index());
                    }
                    Err(_) => assert!(changed),
                },
                Ok(HandshakeMessage::Init(_)) => unreachable!("a response parsed as initiation"),
                Err(_) => assert!(changed),
            }
        }
        // Arbitrary bodies under a session with fixed keys: never opened.
        3 => {
            let s = Session::new(&[1; 32], &[2; 32], 7, 9, true);
            let mut body = rest.to_vec();
            match s.open_payload(&mut body) {
                Ok(_) => panic!("a forged session frame opened"),
                Err(SessionOpenError::NotSession) => assert_eq!(body, rest),
                Err(_) => assert!(rest.len() >= MIN_BODY_LEN),
            }
            assert_eq!(s.received(), 0);
            let _ = crypto::session::trailer_index(rest);
        }
        // Sealed under a session, opened at its peer once; altered copies never open.
        4 => {
            let (tx, rx) = (
                Session::new(&[1; 32], &[2; 32], 7, 9, true),
                Session::new(&[2; 32], &[1; 32], 9, 7, false),
            );
            let (n, payload) = rest
                .split_first()
                .map_or((1, rest), |(n, p)| (*n % 8 + 1, p));
            let mut sealed = Vec::new();
            for k in 0..n {
                let mut body = PayloadType::L3.inner_header().to_vec();
                body.extend_from_slice(payload);
                body.push(k);
                tx.seal_append(&mut body, 0).expect("sealed");
                sealed.push(body);
            }
            // In reverse (all within the window), then all again.
            for (k, body) in sealed.iter().enumerate().rev() {
                let mut altered = body.clone();
                let at = payload.len() % altered.len();
                altered[at] ^= 1;
                assert!(rx.open_payload(&mut altered).is_err());
                let mut b = body.clone();
                let (kind, p) = rx.open_payload(&mut b).expect("opens");
                assert_eq!(kind, PayloadType::L3);
                assert_eq!(&p[..payload.len()], payload);
                assert_eq!(p[payload.len()], k as u8);
            }
            for body in &sealed {
                let mut b = body.clone();
                assert_eq!(rx.open_payload(&mut b), Err(SessionOpenError::Replay));
            }
            assert_eq!(rx.replays(), u64::from(n));
            assert!(sealed.iter().all(|b| b.len() >= NONCE_LEN));
        }
        // The replay window on arbitrary counters: check and update agree, nothing twice.
        _ => {
            let mut w = ReplayWindow::default();
            for c in rest.chunks_exact(8) {
                let c = u64::from_be_bytes(c.try_into().expect("8 bytes"));
                // Keep most counters near each other so the window is exercised.
                let c = if c >> 63 == 1 { c } else { c % 8192 };
                let ok = w.check(c);
                assert_eq!(w.update(c), ok);
                assert!(!w.check(c));
                assert!(w.next() > c || !ok);
            }
        }
    }
});
