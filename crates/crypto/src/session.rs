//! End-to-end sessions between two hypha nodes (`docs/sessions.md`): a Noise IK handshake over
//! the nodes' X25519 identity keys, carried inside ordinary data packets, and the session
//! transport that follows it.
//!
//! * Handshake: `Noise_IK_25519_AESGCM_SHA256` (the `snow` crate). The prologue binds the overlay
//!   addresses of both ends as they appear in the outer header; the initiator's payload carries
//!   its receiver index and a timestamp (the responder refuses a timestamp that is not newer than
//!   the last it accepted from that key: replayed initiations do nothing); the responder's payload
//!   carries its own index. Both ends derive two fresh AES-256-GCM keys from ephemeral
//!   Diffie-Hellman, one per direction.
//! * Transport ([`Session`]): the body keeps the legacy layout `ciphertext ‖ tag(16) ‖ trailer(12)`;
//!   the trailer that holds the nonce in the legacy format holds `receiver index(4) ‖ counter(8)`
//!   (big-endian). The AES-GCM nonce is Noise's: four zero bytes and the counter. Received
//!   counters pass an anti-replay window of [`REPLAY_WINDOW`] counters (RFC 6479 bitmap).
//!
//! Nothing here reads a clock: callers pass time in. Raw key bytes are wiped as soon as the AES
//! key schedule is built; `ring` frees (without wiping) its schedule when the session drops.

use core::fmt;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::data::TAG_LEN;
use crate::data::{OpenError, PayloadType, SealError};
use crate::data::{INNER_HEADER_LEN, INNER_VERSION, MIN_BODY_LEN, NONCE_LEN, SEAL_OVERHEAD};
use crate::identity::{address_from_public_key, PublicKey, SecretKey, KEY_LEN};

/// The Noise protocol name of the handshake.
pub const NOISE_PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Prefix of the prologue; the two overlay addresses follow it.
const PROLOGUE_TAG: &[u8] = b"hypha session 1";

/// Counters a receiver remembers behind the highest one seen.
pub const REPLAY_WINDOW: u64 = (WINDOW_BLOCKS as u64 - 1) * 64;
const WINDOW_BLOCKS: usize = 33;
/// A counter this far ahead of the highest one seen is not taken for a session frame: random
/// legacy nonces whose first bytes happen to match a live index fail this test (the two together
/// pass with probability about 2^-63), so they are opened with the static key instead.
pub const MAX_COUNTER_JUMP: u64 = 1 << 32;
/// No session seals more frames than this; it is renegotiated long before.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 16);

/// First plaintext byte of a handshake packet (inner type [`PayloadType::Handshake`]).
pub const HANDSHAKE_INIT: u8 = 1;
pub const HANDSHAKE_RESPONSE: u8 = 2;
/// Length of the initiator's timestamp: seconds and nanoseconds since the Unix epoch.
pub const TIMESTAMP_LEN: usize = 12;
const INIT_PAYLOAD_LEN: usize = 4 + TIMESTAMP_LEN;
/// Length of an initiation after its kind byte: `e(32) ‖ s(32+16) ‖ payload(16+16)`.
pub const INIT_LEN: usize = 32 + 48 + INIT_PAYLOAD_LEN + 16;
/// Length of a response after its kind byte: `receiver index(4) ‖ e(32) ‖ payload(4+16)`.
pub const RESPONSE_LEN: usize = 4 + 32 + 4 + 16;

/// A handshake timestamp: strictly increasing per sender (see [`Timestamp::next_after`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Timestamp(pub u64, pub u32);

impl Timestamp {
    /// `now` (seconds and nanoseconds since the epoch), or just after `last` if the clock did not
    /// move past it: the initiator's timestamps always increase.
    pub fn next_after(now: Timestamp, last: Option<Timestamp>) -> Timestamp {
        match last {
            Some(l) if now <= l => {
                if l.1 >= 999_999_999 {
                    Timestamp(l.0 + 1, 0)
                } else {
                    Timestamp(l.0, l.1 + 1)
                }
            }
            _ => now,
        }
    }

    fn to_bytes(self) -> [u8; TIMESTAMP_LEN] {
        let mut b = [0u8; TIMESTAMP_LEN];
        b[..8].copy_from_slice(&self.0.to_be_bytes());
        b[8..].copy_from_slice(&self.1.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Timestamp {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[8..12]);
        Timestamp(u64::from_be_bytes(s), u32::from_be_bytes(n))
    }
}

/// Why a handshake message was refused. Nothing changes on our side.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum HandshakeError {
    /// Not a handshake message of a known kind and length.
    Malformed,
    /// Noise refused it: wrong keys, wrong prologue (addresses), or altered on the way.
    Noise,
    /// The initiator's key does not own the address the initiation came from.
    AddressMismatch,
    /// The initiator is our own key.
    OwnKey,
    /// `snow` could not set up a handshake (no randomness).
    Setup,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Malformed => "malformed handshake message",
            HandshakeError::Noise => "handshake message failed Noise processing",
            HandshakeError::AddressMismatch => "initiator's key does not own its source address",
            HandshakeError::OwnKey => "initiation from our own key",
            HandshakeError::Setup => "could not set up a Noise handshake",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// A handshake packet's plaintext (after the inner header), parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeMessage<'a> {
    /// `e ‖ s ‖ payload`, Noise's first message.
    Init(&'a [u8]),
    /// Noise's second message, for the initiation whose index is `receiver`.
    Response { receiver: u32, noise: &'a [u8] },
}

impl<'a> HandshakeMessage<'a> {
    pub fn parse(plain: &'a [u8]) -> Result<HandshakeMessage<'a>, HandshakeError> {
        match plain.split_first() {
            Some((&HANDSHAKE_INIT, rest)) if rest.len() == INIT_LEN => {
                Ok(HandshakeMessage::Init(rest))
            }
            Some((&HANDSHAKE_RESPONSE, rest)) if rest.len() == RESPONSE_LEN => {
                let (idx, noise) = rest.split_at(4);
                Ok(HandshakeMessage::Response {
                    receiver: u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]),
                    noise,
                })
            }
            _ => Err(HandshakeError::Malformed),
        }
    }
}

fn prologue(initiator: Ipv6Addr, responder: Ipv6Addr) -> [u8; 15 + 32] {
    let mut p = [0u8; 15 + 32];
    p[..15].copy_from_slice(PROLOGUE_TAG);
    p[15..31].copy_from_slice(&initiator.octets());
    p[31..].copy_from_slice(&responder.octets());
    p
}

fn builder_params() -> snow::params::NoiseParams {
    NOISE_PATTERN
        .parse()
        .unwrap_or_else(|_| unreachable!("a valid Noise pattern name"))
}

/// An initiation in flight: what finishing it needs.
pub struct Initiator {
    hs: snow::HandshakeState,
    local_index: u32,
    peer: PublicKey,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("local_index", &self.local_index)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Initiator {
    /// Starts a handshake with `peer` (whose overlay address is `peer_addr`; ours is `own_addr`)
    /// and appends the initiation (kind byte included) to `out`. `local_index` is the index the
    /// peer will put in frames it seals for us.
    pub fn start(
        own: &SecretKey,
        own_addr: Ipv6Addr,
        peer: &PublicKey,
        peer_addr: Ipv6Addr,
        local_index: u32,
        timestamp: Timestamp,
        out: &mut Vec<u8>,
    ) -> Result<Initiator, HandshakeError> {
        let secret = own.to_bytes();
        let pro = prologue(own_addr, peer_addr);
        let mut hs = snow::Builder::new(builder_params())
            .local_private_key(&secret[..])
            .and_then(|b| b.remote_public_key(peer.as_bytes()))
            .and_then(|b| b.prologue(&pro))
            .and_then(|b| b.build_initiator())
            .map_err(|_| HandshakeError::Setup)?;
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        payload[..4].copy_from_slice(&local_index.to_be_bytes());
        payload[4..].copy_from_slice(&timestamp.to_bytes());
        let mut msg = [0u8; INIT_LEN];
        let n = hs
            .write_message(&payload, &mut msg)
            .map_err(|_| HandshakeError::Setup)?;
        debug_assert_eq!(n, INIT_LEN);
        out.push(HANDSHAKE_INIT);
        out.extend_from_slice(&msg[..n]);
        Ok(Initiator {
            hs,
            local_index,
            peer: *peer,
        })
    }

    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    pub fn peer(&self) -> &PublicKey {
        &self.peer
    }

    /// Reads the response (the `noise` part of [`HandshakeMessage::Response`]) and derives the
    /// session. The initiation is used up either way.
    pub fn finish(mut self, noise: &[u8]) -> Result<Session, HandshakeError> {
        let mut payload = [0u8; 64];
        let n = self
            .hs
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        if n != 4 || !self.hs.is_handshake_finished() {
            return Err(HandshakeError::Malformed);
        }
        let remote_index = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        let (send, recv) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
        Ok(Session::new(
            &send,
            &recv,
            self.local_index,
            remote_index,
            true,
        ))
    }
}

/// What an accepted initiation gave the responder.
pub struct Responded {
    pub session: Session,
    /// The initiator's identity, authenticated by the handshake.
    pub peer: PublicKey,
    pub timestamp: Timestamp,
}

impl fmt::Debug for Responded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responded")
            .field("peer", &self.peer)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// Reads an initiation (the bytes of [`HandshakeMessage::Init`]) that came from `src` to
/// `own_addr`, and appends the response (kind byte included) to `out`. `accept` sees the
/// initiator's key and timestamp before anything is answered, and refuses (returns false) a
/// replayed or unwanted one: then nothing is appended and `Ok(None)` returned.
pub fn respond(
    own: &SecretKey,
    own_addr: Ipv6Addr,
    src: Ipv6Addr,
    init: &[u8],
    local_index: u32,
    accept: impl FnOnce(&PublicKey, Timestamp) -> bool,
    out: &mut Vec<u8>,
) -> Result<Option<Responded>, HandshakeError> {
    if init.len() != INIT_LEN {
        return Err(HandshakeError::Malformed);
    }
    let secret = own.to_bytes();
    let pro = prologue(src, own_addr);
    let mut hs = snow::Builder::new(builder_params())
        .local_private_key(&secret[..])
        .and_then(|b| b.prologue(&pro))
        .and_then(|b| b.build_responder())
        .map_err(|_| HandshakeError::Setup)?;
    let mut payload = [0u8; 64];
    let n = hs
        .read_message(init, &mut payload)
        .map_err(|_| HandshakeError::Noise)?;
    if n != INIT_PAYLOAD_LEN {
        return Err(HandshakeError::Malformed);
    }
    let Some(remote) = hs.get_remote_static() else {
        return Err(HandshakeError::Noise);
    };
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(remote);
    let peer = PublicKey(key);
    if peer == own.public_key() {
        return Err(HandshakeError::OwnKey);
    }
    // The key authenticates its own /64, and the prologue bound `src`: both must agree.
    let owner = u128::from(address_from_public_key(&key)) >> 64;
    if owner != u128::from(src) >> 64 {
        return Err(HandshakeError::AddressMismatch);
    }
    let remote_index = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let timestamp = Timestamp::from_bytes(&payload[4..INIT_PAYLOAD_LEN]);
    if !accept(&peer, timestamp) {
        return Ok(None);
    }
    let mut msg = [0u8; 64];
    let n = hs
        .write_message(&local_index.to_be_bytes(), &mut msg)
        .map_err(|_| HandshakeError::Setup)?;
    out.push(HANDSHAKE_RESPONSE);
    out.extend_from_slice(&remote_index.to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (recv, send) = (Zeroizing::new(i2r), Zeroizing::new(r2i));
    Ok(Some(Responded {
        session: Session::new(&send, &recv, local_index, remote_index, false),
        peer,
        timestamp,
    }))
}

/// Why a session frame did not open.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SessionOpenError {
    /// Too short, or its counter is no plausible counter of this session: not a session frame
    /// (open it with the static key).
    NotSession,
    /// The counter was seen already or lies behind the window: refused.
    Replay,
    /// Authentication failed under the session key.
    Authentication,
    /// Opened, but the inner header's version was not 1.
    InnerVersion(u8),
}

/// An anti-replay window over the last [`REPLAY_WINDOW`] counters (RFC 6479): a ring of 64-bit
/// blocks, the block of the highest counter and the ones behind it.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// One past the highest counter accepted (0: none yet).
    next: u64,
    bits: [u64; WINDOW_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> ReplayWindow {
        ReplayWindow {
            next: 0,
            bits: [0; WINDOW_BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Whether `c` would be accepted (not seen, not behind the window), without recording it.
    pub fn check(&self, c: u64) -> bool {
        if c >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if c >= self.next {
            return true;
        }
        if c + REPLAY_WINDOW < self.next {
            return false;
        }
        let block = (c / 64) as usize % WINDOW_BLOCKS;
        self.bits[block] & (1 << (c % 64)) == 0
    }

    /// Records `c`; false (nothing recorded) if it was seen already or lies behind the window.
    pub fn update(&mut self, c: u64) -> bool {
        if !self.check(c) {
            return false;
        }
        if c >= self.next {
            let new_block = c / 64;
            let cleared = if self.next == 0 {
                WINDOW_BLOCKS as u64
            } else {
                (new_block - (self.next - 1) / 64).min(WINDOW_BLOCKS as u64)
            };
            if cleared >= WINDOW_BLOCKS as u64 {
                // (Also the first counter: `new_block - i` would go below 0 for a low one.)
                self.bits = [0; WINDOW_BLOCKS];
            } else {
                for i in 0..cleared {
                    let b = (new_block - i) as usize % WINDOW_BLOCKS;
                    self.bits[b] = 0;
                }
            }
            self.next = c + 1;
        }
        let block = (c / 64) as usize % WINDOW_BLOCKS;
        self.bits[block] |= 1 << (c % 64);
        true
    }

    /// One past the highest counter accepted.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// One direction pair of session keys and their counters. Shared (`Arc`) between the tasks that
/// seal and open with it; sealing takes an atomic counter, opening a short lock on the window.
pub struct Session {
    send: LessSafeKey,
    recv: LessSafeKey,
    local_index: u32,
    remote_index: u32,
    initiator: bool,
    counter: AtomicU64,
    window: Mutex<ReplayWindow>,
    /// Set when a frame from the peer opened under this session.
    confirmed: AtomicBool,
    replays: AtomicU64,
    /// Super-frames sealed and opened under this session.
    supers_sent: AtomicU64,
    supers_received: AtomicU64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .field("sent", &self.sent())
            .finish()
    }
}

fn aes_key(raw: &[u8; 32]) -> LessSafeKey {
    let key = UnboundKey::new(&aead::AES_256_GCM, raw)
        .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
    LessSafeKey::new(key)
}

fn counter_nonce(c: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&c.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A random session index. Without OS randomness it is still unique where the caller checks
/// it, only guessable (which gives an attacker nothing: frames are authenticated).
pub fn random_index() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_be_bytes(b)
}

/// The receiver index in a body's trailer, if the body is long enough to be a session frame.
#[inline]
pub fn trailer_index(body: &[u8]) -> Option<u32> {
    let at = body.len().checked_sub(NONCE_LEN)?;
    if body.len() < MIN_BODY_LEN {
        return None;
    }
    let t = &body[at..at + 4];
    Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
}

impl Session {
    /// A session from raw keys (wiped by the caller's `Zeroizing`): `send` seals what we send,
    /// `recv` opens what the peer sends; the peer puts `local_index` in its frames' trailers, we
    /// put `remote_index` in ours.
    pub fn new(
        send: &[u8; 32],
        recv: &[u8; 32],
        local_index: u32,
        remote_index: u32,
        initiator: bool,
    ) -> Session {
        Session {
            send: aes_key(send),
            recv: aes_key(recv),
            local_index,
            remote_index,
            initiator,
            counter: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::default()),
            confirmed: AtomicBool::new(false),
            replays: AtomicU64::new(0),
            supers_sent: AtomicU64::new(0),
            supers_received: AtomicU64::new(0),
        }
    }

    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }

    /// Whether we started the handshake that made it.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Frames sealed so far (the next counter).
    pub fn sent(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Whether the peer has used it: a frame from the peer opened under it.
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Counts a super-frame sealed under this session.
    pub fn note_super_sent(&self) {
        self.supers_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a super-frame opened under this session.
    pub fn note_super_received(&self) {
        self.supers_received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn supers_sent(&self) -> u64 {
        self.supers_sent.load(Ordering::Relaxed)
    }

    pub fn supers_received(&self) -> u64 {
        self.supers_received.load(Ordering::Relaxed)
    }

    /// Replayed frames refused.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// One past the highest counter received.
    pub fn received(&self) -> u64 {
        self.window.lock().map(|w| w.next()).unwrap_or(0)
    }

    /// Seals `buf[..plaintext_len]` in place and writes tag and trailer after it; returns the body
    /// length. Fails when `buf` is too short or the session has sealed its last frame.
    pub fn seal_in_place(&self, buf: &mut [u8], plaintext_len: usize) -> Result<usize, SealError> {
        let body_len = plaintext_len.saturating_add(SEAL_OVERHEAD);
        let Some(body) = buf.get_mut(..body_len) else {
            return Err(SealError::NoRoom {
                need: body_len,
                have: buf.len(),
            });
        };
        let c = self.counter.fetch_add(1, Ordering::Relaxed);
        if c >= REJECT_AFTER_MESSAGES {
            self.counter.store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return Err(SealError::Exhausted);
        }
        let (plain, trailer) = body.split_at_mut(plaintext_len);
        let tag = self
            .send
            .seal_in_place_separate_tag(counter_nonce(c), Aad::empty(), plain)
            .unwrap_or_else(|_| unreachable!("AES-GCM input within limits"));
        trailer[..TAG_LEN].copy_from_slice(tag.as_ref());
        trailer[TAG_LEN..TAG_LEN + 4].copy_from_slice(&self.remote_index.to_be_bytes());
        trailer[TAG_LEN + 4..].copy_from_slice(&c.to_be_bytes());
        Ok(body_len)
    }

    /// Seals `buf[start..]` in place and appends tag and trailer.
    pub fn seal_append(&self, buf: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        let Some(plaintext_len) = buf.len().checked_sub(start) else {
            return Err(SealError::NoRoom {
                need: start,
                have: buf.len(),
            });
        };
        buf.resize(buf.len() + SEAL_OVERHEAD, 0);
        match self.seal_in_place(&mut buf[start..], plaintext_len) {
            Ok(_) => Ok(()),
            Err(e) => {
                buf.truncate(start + plaintext_len);
                Err(e)
            }
        }
    }

    /// Opens a body whose trailer carries this session's index, and splits off the inner header.
    /// [`SessionOpenError::NotSession`] leaves the body untouched (open it with the static key);
    /// the other errors mean the frame is refused.
    pub fn open_payload<'a>(
        &self,
        body: &'a mut [u8],
    ) -> Result<(PayloadType, &'a mut [u8]), SessionOpenError> {
        let len = body.len();
        if len < MIN_BODY_LEN {
            return Err(SessionOpenError::NotSession);
        }
        let ct_len = len - NONCE_LEN;
        let mut cb = [0u8; 8];
        cb.copy_from_slice(&body[ct_len + 4..]);
        let c = u64::from_be_bytes(cb);
        {
            let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if c >= w.next().saturating_add(MAX_COUNTER_JUMP) {
                return Err(SessionOpenError::NotSession);
            }
            if !w.check(c) {
                self.replays.fetch_add(1, Ordering::Relaxed);
                return Err(SessionOpenError::Replay);
            }
        }
        let plain = self
            .recv
            .open_in_place(counter_nonce(c), Aad::empty(), &mut body[..ct_len])
            .map_err(|_| SessionOpenError::Authentication)?;
        // Recorded only once authentic: forged counters cannot move the window.
        if !self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(c)
        {
            self.replays.fetch_add(1, Ordering::Relaxed);
            return Err(SessionOpenError::Replay);
        }
        self.confirmed.store(true, Ordering::Relaxed);
        let (head, payload) = plain.split_at_mut(INNER_HEADER_LEN);
        if head[0] != INNER_VERSION {
            return Err(SessionOpenError::InnerVersion(head[0]));
        }
        Ok((PayloadType::from_u8(head[1]), payload))
    }
}

impl Session {
    /// Opens a body we sealed ourselves under this session (one a node quotes back to us in an
    /// out-of-band error), without touching the replay window.
    pub fn open_own<'a>(
        &self,
        body: &'a mut [u8],
    ) -> Result<(PayloadType, &'a mut [u8]), SessionOpenError> {
        let len = body.len();
        if len < MIN_BODY_LEN || trailer_index(body) != Some(self.remote_index) {
            return Err(SessionOpenError::NotSession);
        }
        let ct_len = len - NONCE_LEN;
        let mut cb = [0u8; 8];
        cb.copy_from_slice(&body[ct_len + 4..]);
        let c = u64::from_be_bytes(cb);
        if c >= self.sent() {
            return Err(SessionOpenError::NotSession);
        }
        let plain = self
            .send
            .open_in_place(counter_nonce(c), Aad::empty(), &mut body[..ct_len])
            .map_err(|_| SessionOpenError::Authentication)?;
        let (head, payload) = plain.split_at_mut(INNER_HEADER_LEN);
        if head[0] != INNER_VERSION {
            return Err(SessionOpenError::InnerVersion(head[0]));
        }
        Ok((PayloadType::from_u8(head[1]), payload))
    }
}

impl From<SessionOpenError> for OpenError {
    fn from(e: SessionOpenError) -> OpenError {
        match e {
            SessionOpenError::InnerVersion(v) => OpenError::InnerVersion(v),
            _ => OpenError::Authentication,
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
