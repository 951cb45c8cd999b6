//! End-to-end encryption of data packets (docs/protocol.md §6.1–§6.3), sealed and opened in place.
//!
//! Body layout on the wire: `ciphertext ‖ tag(16) ‖ nonce(12)`, AES-256-GCM with the raw X25519
//! output as key and empty AAD. The plaintext starts with the 4-byte inner header
//! `01 <type> 00 00`.

use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::identity::KEY_LEN;

/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of the nonce carried after the tag.
pub const NONCE_LEN: usize = 12;
/// Bytes sealing adds after the plaintext.
pub const SEAL_OVERHEAD: usize = TAG_LEN + NONCE_LEN;
/// Length of the inner header at the start of every plaintext.
pub const INNER_HEADER_LEN: usize = 4;
/// Inner header version byte.
pub const INNER_VERSION: u8 = 1;
/// The shortest body that can hold an inner header once opened.
pub const MIN_BODY_LEN: usize = SEAL_OVERHEAD + INNER_HEADER_LEN;

/// What the plaintext after the inner header carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PayloadType {
    /// An IPv6 packet for the TUN (type 0).
    L3,
    /// A message-subsystem packet (type 1).
    Message,
    /// An out-of-band ICMP error from an intermediate node (type 2).
    OobIcmp,
    /// A hypha session handshake message (type 16; `docs/sessions.md`). Other nodes drop it.
    Handshake,
    /// An empty frame that confirms a new session (type 17).
    Keepalive,
    /// A whole TUN super-packet, virtio-net header first (type 18; sessions only).
    SuperPacket,
    /// A full-size frame that tests whether a path carries super-frames (type 19).
    PathProbe,
    /// The answer to a probe, and the acknowledgement of super-frames received (type 20).
    PathAck,
    /// A type this node does not know; the receiver drops it.
    Unknown(u8),
}

impl PayloadType {
    pub fn to_u8(self) -> u8 {
        match self {
            PayloadType::L3 => 0,
            PayloadType::Message => 1,
            PayloadType::OobIcmp => 2,
            PayloadType::Handshake => 16,
            PayloadType::Keepalive => 17,
            PayloadType::SuperPacket => 18,
            PayloadType::PathProbe => 19,
            PayloadType::PathAck => 20,
            PayloadType::Unknown(t) => t,
        }
    }

    pub fn from_u8(t: u8) -> PayloadType {
        match t {
            0 => PayloadType::L3,
            1 => PayloadType::Message,
            2 => PayloadType::OobIcmp,
            16 => PayloadType::Handshake,
            17 => PayloadType::Keepalive,
            18 => PayloadType::SuperPacket,
            19 => PayloadType::PathProbe,
            20 => PayloadType::PathAck,
            t => PayloadType::Unknown(t),
        }
    }

    /// The 4-byte inner header for this type.
    pub fn inner_header(self) -> [u8; INNER_HEADER_LEN] {
        [INNER_VERSION, self.to_u8(), 0, 0]
    }
}

/// The raw X25519 output between two nodes. It is the AES-256-GCM key for both directions.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; KEY_LEN]);

impl SharedSecret {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> SharedSecret {
        SharedSecret(b)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Expands the AES key schedule once; share the result for every packet with this peer.
    pub fn cipher(&self) -> PeerCipher {
        PeerCipher::new(self)
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// Why sealing failed; nothing was encrypted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SealError {
    /// The caller's buffer cannot hold plaintext plus the 28 bytes of tag and nonce.
    NoRoom { need: usize, have: usize },
    /// The OS random source failed when the nonce sequence was first seeded.
    NoRandomness,
    /// A session has sealed its last frame; a new one must be negotiated.
    Exhausted,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::NoRoom { need, have } => {
                write!(f, "seal needs {need} bytes of buffer, {have} given")
            }
            SealError::NoRandomness => f.write_str("no OS randomness to seed AES-GCM nonces"),
            SealError::Exhausted => f.write_str("session counter exhausted"),
        }
    }
}

impl std::error::Error for SealError {}

/// Why a received body did not open. The packet is dropped and counted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum OpenError {
    /// Shorter than tag + nonce (or, for [`PeerCipher::open_payload`], tag + nonce + header).
    TooShort { len: usize },
    /// Tag mismatch: wrong key, or altered on the way.
    Authentication,
    /// The inner header's version was not 1.
    InnerVersion(u8),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::TooShort { len } => write!(f, "encrypted body of {len} bytes is too short"),
            OpenError::Authentication => f.write_str("encrypted body failed authentication"),
            OpenError::InnerVersion(v) => write!(f, "inner header version {v}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// The per-peer AEAD state: the expanded AES-256 key schedule, behind an `Arc` so clones are a
/// reference count and every task can seal and open with it concurrently.
#[derive(Clone)]
pub struct PeerCipher(Arc<LessSafeKey>);

impl fmt::Debug for PeerCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerCipher(<key>)")
    }
}

impl PeerCipher {
    pub fn new(secret: &SharedSecret) -> PeerCipher {
        // A 32-byte key is always a valid AES-256-GCM key.
        let key = UnboundKey::new(&aead::AES_256_GCM, &secret.0)
            .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        PeerCipher(Arc::new(LessSafeKey::new(key)))
    }

    /// Seals `buf[..plaintext_len]` in place with a fresh nonce and writes tag and nonce right
    /// after it. Returns the body length (`plaintext_len + 28`). `buf` must have that much room.
    pub fn seal_in_place(&self, buf: &mut [u8], plaintext_len: usize) -> Result<usize, SealError> {
        self.seal_with_nonce(buf, plaintext_len, next_nonce()?)
    }

    /// Seals `buf[start..]` in place and appends tag and nonce, so a data frame can be built
    /// inside the outgoing buffer (see `wire::frame::DataSlot`). Allocates only if `buf` lacks
    /// capacity for 28 more bytes.
    pub fn seal_append(&self, buf: &mut Vec<u8>, start: usize) -> Result<(), SealError> {
        let Some(plaintext_len) = buf.len().checked_sub(start) else {
            return Err(SealError::NoRoom {
                need: start,
                have: buf.len(),
            });
        };
        let nonce = next_nonce()?;
        buf.resize(buf.len() + SEAL_OVERHEAD, 0);
        self.seal_with_nonce(&mut buf[start..], plaintext_len, nonce)
            .map(|_| ())
    }

    /// [`PeerCipher::seal_in_place`] with a caller-chosen nonce: for test vectors only. A nonce
    /// must never be reused under one key.
    pub fn seal_with_nonce(
        &self,
        buf: &mut [u8],
        plaintext_len: usize,
        nonce: [u8; NONCE_LEN],
    ) -> Result<usize, SealError> {
        let body_len = plaintext_len.saturating_add(SEAL_OVERHEAD);
        let Some(body) = buf.get_mut(..body_len) else {
            return Err(SealError::NoRoom {
                need: body_len,
                have: buf.len(),
            });
        };
        let (plain, trailer) = body.split_at_mut(plaintext_len);
        // Sealing with a valid key cannot fail for inputs below ring's ~64 GiB limit.
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), plain)
            .unwrap_or_else(|_| unreachable!("AES-GCM input within limits"));
        trailer[..TAG_LEN].copy_from_slice(tag.as_ref());
        trailer[TAG_LEN..].copy_from_slice(&nonce);
        Ok(body_len)
    }

    /// Opens `body` (`ciphertext ‖ tag ‖ nonce`) in place and returns the plaintext, which
    /// occupies the front of `body`.
    pub fn open_in_place<'a>(&self, body: &'a mut [u8]) -> Result<&'a mut [u8], OpenError> {
        let len = body.len();
        let Some(ct_and_tag_len) = len.checked_sub(NONCE_LEN).filter(|&n| n >= TAG_LEN) else {
            return Err(OpenError::TooShort { len });
        };
        let (ct_and_tag, nonce) = body.split_at_mut(ct_and_tag_len);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        self.0
            .open_in_place(Nonce::assume_unique_for_key(n), Aad::empty(), ct_and_tag)
            .map_err(|_| OpenError::Authentication)
    }

    /// Opens `body` and splits off the inner header: returns the payload type and the payload.
    pub fn open_payload<'a>(
        &self,
        body: &'a mut [u8],
    ) -> Result<(PayloadType, &'a mut [u8]), OpenError> {
        if body.len() < MIN_BODY_LEN {
            return Err(OpenError::TooShort { len: body.len() });
        }
        let plain = self.open_in_place(body)?;
        let (head, payload) = plain.split_at_mut(INNER_HEADER_LEN);
        if head[0] != INNER_VERSION {
            return Err(OpenError::InnerVersion(head[0]));
        }
        Ok((PayloadType::from_u8(head[1]), payload))
    }
}

/// Nonce generation.
///
/// Each nonce is `prefix(4) ‖ counter(8)`, big-endian. The prefix and the counter's starting point
/// are drawn from the OS once per process; the counter is one process-wide `AtomicU64` advanced
/// with `fetch_add`, so every call in the process, on any thread and under any key, gets a
/// distinct value until 2^64 calls. A restarted process starts at a fresh random 96-bit point and
/// uses a contiguous range from there, so two runs overlap only if both random draws land within
/// the packet counts of each other: about `2·n / 2^96` for runs of `n` packets. The peer seals with
/// random 96-bit nonces under the same key (the key serves both directions), which collide with
/// ours with probability 2^-96 per pair. This beats per-packet random nonces (whose birthday bound
/// is reached after 2^48 packets) without an OS call per packet.
struct NonceSource {
    prefix: [u8; 4],
    counter: AtomicU64,
}

fn nonce_source() -> Result<&'static NonceSource, SealError> {
    static SOURCE: OnceLock<Option<NonceSource>> = OnceLock::new();
    SOURCE
        .get_or_init(|| {
            // Without OS randomness, fresh nonces across restarts cannot be promised: every seal
            // then fails rather than risk a repeat.
            let mut seed = [0u8; 12];
            getrandom::fill(&mut seed).ok()?;
            let mut prefix = [0u8; 4];
            prefix.copy_from_slice(&seed[..4]);
            let mut start = [0u8; 8];
            start.copy_from_slice(&seed[4..]);
            Some(NonceSource {
                prefix,
                counter: AtomicU64::new(u64::from_be_bytes(start)),
            })
        })
        .as_ref()
        .ok_or(SealError::NoRandomness)
}

fn next_nonce() -> Result<[u8; NONCE_LEN], SealError> {
    let s = nonce_source()?;
    let c = s.counter.fetch_add(1, Ordering::Relaxed);
    let mut n = [0u8; NONCE_LEN];
    n[..4].copy_from_slice(&s.prefix);
    n[4..].copy_from_slice(&c.to_be_bytes());
    Ok(n)
}
