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

    /// A session manager for this identity.
    pub fn session_manager(
        &self,
        limits: datapath::sessions::SessionLimits,
    ) -> datapath::sessions::SessionManager {
        datapath::sessions::SessionManager::new(self.secret.clone(), self.address(), limits)
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

/// The key cache shared by the owner and the data path: a cipher missing from the published
/// snapshot is derived here (under a lock, once per key: only a flow's first packets come this
/// way) and the owner is woken to publish it.
pub(crate) struct SharedKeys {
    identity: std::sync::Arc<Identity>,
    cache: std::sync::Mutex<KeyCache>,
    /// Signalled when a key was derived: the snapshot is out of date.
    pub derived: tokio::sync::Notify,
}

impl SharedKeys {
    pub fn new(identity: std::sync::Arc<Identity>) -> SharedKeys {
        SharedKeys {
            identity,
            cache: std::sync::Mutex::new(KeyCache::default()),
            derived: tokio::sync::Notify::new(),
        }
    }

    /// Every usable cipher held, for the data path's snapshot.
    pub fn snapshot(&self) -> rustc_hash::FxHashMap<[u8; 32], Cipher> {
        self.cache.lock().map(|c| c.snapshot()).unwrap_or_default()
    }
}

impl datapath::KeySource for SharedKeys {
    fn cipher(&self, key: &[u8; 32]) -> Option<Cipher> {
        let mut cache = self.cache.lock().ok()?;
        let c = cache.get(&self.identity, *key);
        if cache.take_added() {
            self.derived.notify_one();
        }
        c
    }
}

/// The ciphers of the keys in use, derived when a destination or sender is first met (not for
/// every route's key: a table of tens of thousands of routes would cost an X25519 each, and a
/// cipher's memory, for nodes we may never talk to). Bounded: two generations of at most
/// [`KeyCache::GENERATION`] keys each; a key used while in the older one moves to the newer, so
/// keys in steady use stay and the rest age out.
#[derive(Default)]
pub(crate) struct KeyCache {
    new: rustc_hash::FxHashMap<[u8; 32], Option<Cipher>>,
    old: rustc_hash::FxHashMap<[u8; 32], Option<Cipher>>,
    /// Keys derived since [`KeyCache::take_added`] was last called.
    added: bool,
}

impl KeyCache {
    /// Keys per generation.
    pub const GENERATION: usize = 4096;

    /// The cipher shared with the owner of `key` (`None` for a low-order key), derived on first
    /// use.
    pub fn get(&mut self, identity: &Identity, key: [u8; 32]) -> Option<Cipher> {
        if let Some(c) = self.new.get(&key) {
            return c.clone();
        }
        let c = match self.old.remove(&key) {
            Some(c) => c,
            None => {
                self.added = true;
                identity.cipher_for(&key)
            }
        };
        if self.new.len() >= Self::GENERATION {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(key, c.clone());
        c
    }

    /// Whether keys were derived (or moved) since the last call: the data path's snapshot is
    /// then out of date.
    pub fn take_added(&mut self) -> bool {
        std::mem::take(&mut self.added)
    }

    /// Every usable cipher held, for the data path's snapshot.
    pub fn snapshot(&self) -> rustc_hash::FxHashMap<[u8; 32], Cipher> {
        self.old
            .iter()
            .chain(&self.new)
            .filter_map(|(k, c)| Some((*k, c.clone()?)))
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_derived_once_kept_while_used_and_bounded() {
        let me = Identity::new(SecretKey::from_bytes([1; 32]));
        let key = |i: u32| {
            let mut s = [7u8; 32];
            s[..4].copy_from_slice(&i.to_be_bytes());
            SecretKey::from_bytes(s).public_key().0
        };
        let mut cache = KeyCache::default();
        let hot = key(0);
        assert!(cache.get(&me, hot).is_some());
        assert!(cache.take_added());
        assert!(cache.get(&me, hot).is_some());
        assert!(!cache.take_added(), "a cached key is not derived again");
        // Many keys pass through; the one in steady use stays, the total stays bounded.
        let n = 3 * KeyCache::GENERATION as u32;
        for i in 1..=n {
            cache.get(&me, key(i));
            if i % 1000 == 0 {
                cache.get(&me, hot);
            }
            assert!(cache.len() <= 2 * KeyCache::GENERATION);
        }
        assert!(cache.snapshot().contains_key(&hot));
        assert!(
            !cache.snapshot().contains_key(&key(1)),
            "an old key aged out"
        );
        // A low-order key gives no cipher, and is not published.
        assert!(cache.get(&me, [0; 32]).is_none());
        assert!(!cache.snapshot().contains_key(&[0; 32]));
    }
}
