//! Keys, addresses and end-to-end packet encryption of hypha, compatible with mycelium's data
//! plane (docs/protocol.md §2.1–§2.2, §6.1–§6.3).
//!
//! * [`SecretKey`] / [`PublicKey`]: the node's static X25519 identity, its raw 32-byte key file
//!   (created with mode 0600 when missing), 64-hex-digit public keys.
//! * [`address_from_public_key`], [`PublicKey::address`], [`PublicKey::subnet`]: the 400::/7
//!   overlay address from BLAKE3 and the node's /64; [`overlay`], the 400::/7 itself. The one
//!   derivation in hypha: the routing core's ownership filter uses it too.
//! * [`SharedSecret`] → [`PeerCipher`]: the raw X25519 output is the AES-256-GCM key (no KDF),
//!   expanded once per peer and shared by `Arc`. [`PeerCipher::seal_in_place`],
//!   [`PeerCipher::seal_append`] and [`PeerCipher::open_in_place`] work inside caller buffers and
//!   never allocate per packet; bodies are `ciphertext ‖ tag(16) ‖ nonce(12)` with empty AAD.
//!
//! Nonces are never reused under one key within a process, and collide across restarts only with
//! negligible probability; the scheme is documented on the private `NonceSource`.
//!
//! This crate never touches the network, never reads a clock, and never panics on received bytes:
//! opening arbitrary input returns an [`OpenError`]. The only I/O it does is the key file.
//!
//! # Choice of AES-GCM implementation
//!
//! `ring` is shipped: it was the fastest of the three candidates at every size, and the only one
//! above the target of 80 % of OpenSSL at both 1024 and 16384 bytes. Measured on this project's
//! 2-core AMD EPYC (AES-NI, PCLMULQDQ, AVX2, VAES, VPCLMULQDQ; no AVX-512) while other builds
//! loaded the machine, so all figures are the benchmark thread's CPU time, the divisor
//! `openssl speed` itself uses. Command: `cargo bench -p hypha-crypto --features
//! bench-candidates --bench aead_candidates`, which seals in place with each candidate and runs
//! `openssl speed -evp aes-256-gcm -bytes {1024,16384}` (OpenSSL 3.0.19) before and after the
//! candidates in the same process. Run A used default flags (aes-gcm picks AES-NI/CLMUL at run
//! time); run B was built with `RUSTFLAGS="-C target-feature=+aes,+pclmulqdq,+ssse3,+avx2"`.
//! GiB/s, criterion medians; OpenSSL as the range of its two runs in the same process:
//!
//! | payload | run | ring 0.17.14 | aws-lc-rs 1.x | aes-gcm 0.10.3 | `openssl speed` |
//! |--------:|:---:|-------------:|--------------:|---------------:|----------------:|
//! |    1024 |  A  |         2.65 |          2.02 |           0.89 |     0.98 – 1.13 |
//! |    1024 |  B  |         4.24 |          2.14 |           1.34 |     1.10 – 1.20 |
//! |    1400 |  A  |         3.09 |          1.72 |           0.84 |                 |
//! |    1400 |  B  |         3.50 |          1.86 |           1.17 |                 |
//! |   16384 |  A  |         5.79 |          2.25 |           1.01 |     1.47 – 2.09 |
//! |   16384 |  B  |         5.52 |          2.22 |           1.31 |     3.08 – 3.16 |
//! |   65536 |  A  |         4.87 |          2.89 |           0.98 |                 |
//! |   65536 |  B  |         5.90 |          3.41 |           1.35 |                 |
//!
//! The shared machine makes single figures vary by tens of percent between runs; the order of
//! the candidates did not change. aws-lc-rs built here with Debian's gcc through its cc builder
//! (no cmake needed). The shipped path, [`PeerCipher`] with nonce generation (`cargo bench -p
//! hypha-crypto --bench seal_open`, CPU time): seal 1400 B 3.25 GiB/s, open 1400 B 3.02 GiB/s,
//! seal 64 KiB 5.55 GiB/s, open 64 KiB 4.26 GiB/s (open includes restoring the ciphertext
//! before each round).
#![forbid(unsafe_code)]

mod data;
mod identity;
pub mod session;

pub use data::{
    OpenError, PayloadType, PeerCipher, SealError, SharedSecret, INNER_HEADER_LEN, INNER_VERSION,
    MIN_BODY_LEN, NONCE_LEN, SEAL_OVERHEAD, TAG_LEN,
};
pub use identity::{
    address_from_public_key, overlay, KeyFileError, KeyFileErrorKind, ParsePublicKeyError,
    PublicKey, SecretKey, KEY_LEN,
};
pub use session::{
    HandshakeError, HandshakeMessage, Initiator, ReplayWindow, Responded, Session,
    SessionOpenError, Timestamp,
};

#[cfg(test)]
mod tests;
