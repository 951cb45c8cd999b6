//! The node's identity and the per-peer ciphers, on top of the `crypto` crate.

use std::net::Ipv6Addr;

use crypto::{PublicKey, SecretKey};
use wire::babel::Subnet;

pub(crate) use datapath::Cipher;

/// Our key pair and the addresses derived from it.
pub struct Identity {
    secret: SecretKey,
    public: PublicKey,
}

impl Identity {
    pub fn new(secret: SecretKey) -> Identity {
        let public = secret.public_key();
        Identity { secret, public }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public.0
    }

    /// The node address in 400::/7.
    pub fn address(&self) -> Ipv6Addr {
        self.public.address()
    }

    /// The node /64, the one prefix we announce.
    pub fn subnet(&self) -> Subnet {
        self.public.subnet()
    }

    /// The cipher shared with the owner of `key`; `None` for a low-order key (whose shared
    /// secret everybody knows), which is never used.
    pub fn cipher_for(&self, key: &[u8; 32]) -> Option<Cipher> {
        self.secret
            .shared_secret(&PublicKey(*key))
            .map(|s| Cipher::new(&s))
    }
}
