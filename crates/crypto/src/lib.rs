//! Keys, addresses and end-to-end packet encryption of hypha, compatible with mycelium's data
//! plane (spec §3.3–§3.4, §4.1, §4.4).
//!
//! * [`SecretKey`] / [`PublicKey`]: the node's static X25519 identity, its raw 32-byte key file
//!   (created with mode 0600 when missing), 64-hex-digit public keys.
//! * [`address_from_public_key`], [`PublicKey::address`], [`PublicKey::subnet`]: the 400::/7
//!   overlay address from BLAKE3 and the node's /64.
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
//! `ring` is shipped. Measured on this project's 2-core AMD EPYC (AES-NI, PCLMULQDQ, AVX2, VAES,
//! VPCLMULQDQ; no AVX-512) with `cargo bench -p hypha-crypto --features bench-candidates --bench
//! aead_candidates`, sealing in place, against `openssl speed -evp aes-256-gcm` in the same run:
//!
//! (table filled in by the measurement commit)
#![forbid(unsafe_code)]

mod data;
mod identity;

pub use data::{
    OpenError, PayloadType, PeerCipher, SealError, SharedSecret, INNER_HEADER_LEN, INNER_VERSION,
    MIN_BODY_LEN, NONCE_LEN, SEAL_OVERHEAD, TAG_LEN,
};
pub use identity::{
    address_from_public_key, KeyFileError, KeyFileErrorKind, ParsePublicKeyError, PublicKey,
    SecretKey, KEY_LEN,
};

#[cfg(test)]
mod tests;
