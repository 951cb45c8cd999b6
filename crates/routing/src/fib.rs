//! Immutable forwarding snapshots for the data path, published by copy-on-write.
//!
//! A snapshot is a fixed array of shards, each an `Arc` of a hash map. The core publishes the
//! next snapshot by applying only the subnets that changed since the last one
//! ([`ForwardingTable::set`]): the array of shard pointers is copied (reference counts only), and
//! a shard is copied only when a change lands in it while an older snapshot still holds it. So
//! publishing after k changes costs O(k × shard size) at worst, instead of rebuilding all n
//! subnets; a neighbour announcing a full table no longer costs O(n²) (docs/protocol.md §5.11).

use std::net::Ipv6Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use wire::babel::{RouterId, Subnet};

use crate::router::{LinkId, PlenIndex};

/// Where to send a packet, and whose key encrypts it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NextHop {
    pub link: LinkId,
    /// The destination's router-id; bytes 0..32 are its public key.
    pub router_id: RouterId,
}

impl NextHop {
    pub fn public_key(&self) -> [u8; 32] {
        self.router_id.public_key()
    }
}

/// Answer of a destination lookup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lookup {
    /// Inside our own /64.
    Local,
    /// A selected route.
    Route(NextHop),
    /// No route yet, a query is under way: queue the packet.
    Resolving,
    /// Routes are known but none is selected: "no route".
    NoRoute,
    /// Nothing known: call [`crate::Router::request_route`] and queue.
    Unknown,
}

/// What the data path needs of one subnet. The selected route's router is always the key
/// owner, so one router-id serves both: 56 bytes a slot instead of 104 for an optional next hop
/// and an optional key owner side by side, and the shards a publish copies are that much
/// smaller. A lookup copies `hop` out as it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Slot {
    /// The selected route (`Has::Route`); else `hop.router_id` is the key owner
    /// (`Has::Key`), and `hop.link` means nothing.
    hop: NextHop,
    has: Has,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Has {
    Route,
    /// No selected route; the router of a finite unselected one, whose key authenticates
    /// packets from the subnet.
    Key,
    /// Only retracted routes: the subnet is known, with no route and no key.
    Nothing,
}

impl Slot {
    /// A slot for a subnet with the given selected route and, without one, key owner.
    pub(crate) fn new(selected: Option<NextHop>, key_owner: Option<RouterId>) -> Slot {
        match (selected, key_owner) {
            (Some(hop), _) => Slot {
                hop,
                has: Has::Route,
            },
            (None, Some(router_id)) => Slot {
                hop: NextHop {
                    link: LinkId(0),
                    router_id,
                },
                has: Has::Key,
            },
            (None, None) => Slot {
                hop: NextHop {
                    link: LinkId(0),
                    router_id: RouterId([0; RouterId::LEN]),
                },
                has: Has::Nothing,
            },
        }
    }

    fn key_owner(&self) -> Option<&RouterId> {
        (self.has != Has::Nothing).then_some(&self.hop.router_id)
    }
}

/// Number of shards. Publishing copies the shard array (this many reference counts) and each
/// shard a change lands in (1/SHARDS of the table): 256 keeps both at about a microsecond for
/// tables up to `Limits::max_subnets` (1,024 subnets a shard at 262,144).
const SHARDS: usize = 256;

type Shard = FxHashMap<Subnet, Slot>;

/// Picks a subnet's shard from its first 64 bits: multiply-shift hashing with a secret odd
/// multiplier. Keyed because an overlay address is BLAKE3 of a public key anyone may choose
/// (docs/protocol.md §2.2): with a fixed hash a peer could grind keys so that all its routes
/// land in one shard, and every publish would copy that shard again — O(n) per change, the cost
/// this table exists to avoid. Multiply-shift is universal for a random odd multiplier (two
/// given /64s share a shard with probability at most 2/256), so without the key a peer can do
/// no better than chance; and it costs one multiplication on the data path, where a keyed
/// SipHash would cost more than the probe itself. Longer prefixes inside one /64 share its
/// shard: a key gives a peer at most 65 of them (/64 to /128 around its address).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardKey(u64);

impl ShardKey {
    /// The multiplier derived from `seed` (splitmix64), forced odd.
    pub(crate) fn new(seed: u64) -> ShardKey {
        let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ShardKey((x ^ (x >> 31)) | 1)
    }

    #[inline]
    fn shard(&self, s: &Subnet) -> usize {
        let o = s.addr().octets();
        // Byte order does not matter to the hash, so no byte swap.
        let hi = u64::from_ne_bytes([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]);
        // The top bits: the ones every input bit reaches through the multiplication.
        (hi.wrapping_mul(self.0) >> (64 - SHARDS.trailing_zeros())) as usize
    }
}

/// A read-only copy of the selected routes (plus, for decryption, the key owner of every known
/// subnet). Published by [`crate::Router::forwarding_table`] only when something changed; data
/// path threads share it through an `Arc` (the node keeps it in an arc-swap) and look up without
/// locks. Lookups cost one hash probe per prefix length in use (normally just /64). Cloning one
/// is cheap and shares its shards.
#[derive(Clone, Debug)]
pub struct ForwardingTable {
    generation: u64,
    own_subnet: Subnet,
    key: ShardKey,
    len: usize,
    /// Subnets per prefix length, kept as slots come and go.
    plens: PlenIndex,
    /// The lengths in use, longest first: what a lookup walks (a short slice is quicker to walk
    /// than the index's bitmask).
    lens: Vec<u8>,
    /// Inline rather than boxed: one pointer less to follow on every lookup.
    shards: [Arc<Shard>; SHARDS],
}

impl ForwardingTable {
    pub(crate) fn empty(own_subnet: Subnet, key: ShardKey) -> ForwardingTable {
        ForwardingTable {
            generation: 0,
            own_subnet,
            key,
            len: 0,
            plens: PlenIndex::default(),
            lens: Vec::new(),
            // One empty shard shared by all: a core that never publishes (the simulator's
            // thousands) pays one allocation, and the first change to a shard copies it.
            shards: {
                let empty = Arc::new(Shard::default());
                std::array::from_fn(|_| empty.clone())
            },
        }
    }

    /// A table holding exactly `entries`, generation `generation`.
    pub(crate) fn build(
        generation: u64,
        own_subnet: Subnet,
        key: ShardKey,
        entries: impl IntoIterator<Item = (Subnet, Slot)>,
    ) -> ForwardingTable {
        let mut t = ForwardingTable::empty(own_subnet, key);
        for (s, slot) in entries {
            t.set(s, Some(slot));
        }
        t.generation = generation;
        t
    }

    /// A table holding exactly `routes` (each subnet's key owner is its next hop's router), for
    /// simulators, benchmarks and tests of a data path without a running routing core.
    pub fn from_routes(own_subnet: Subnet, routes: &[(Subnet, NextHop)]) -> ForwardingTable {
        // Nothing here comes from a peer, so a fixed key will do.
        let entries = routes.iter().map(|&(s, nh)| (s, Slot::new(Some(nh), None)));
        ForwardingTable::build(1, own_subnet, ShardKey::new(0), entries)
    }

    /// Increases by one at every snapshot that changed something.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Number of subnets known.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub(crate) fn get(&self, s: &Subnet) -> Option<&Slot> {
        self.shards[self.key.shard(s)].get(s)
    }

    /// Sets (`Some`) or removes (`None`) the slot of `s`; true if that changed the table. The
    /// shard is copied first if another snapshot still shares it, and only then.
    pub(crate) fn set(&mut self, s: Subnet, slot: Option<Slot>) -> bool {
        let shard = &mut self.shards[self.key.shard(&s)];
        if shard.get(&s) == slot.as_ref() {
            return false;
        }
        let lengths_changed = match slot {
            Some(slot) => {
                Arc::make_mut(shard).insert(s, slot).is_none() && {
                    self.len += 1;
                    self.plens.add_pub(s.prefix_len())
                }
            }
            None => {
                Arc::make_mut(shard).remove(&s);
                self.len -= 1;
                self.plens.remove_pub(s.prefix_len())
            }
        };
        if lengths_changed {
            self.lens = self.plens.lengths().collect();
        }
        true
    }

    /// Every subnet with its slot, in no particular order.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> impl Iterator<Item = (Subnet, Slot)> + '_ {
        self.shards
            .iter()
            .flat_map(|m| m.iter().map(|(s, slot)| (*s, *slot)))
    }

    /// Whether this table shares shard `i` with `other` (copy-on-write tests).
    #[cfg(test)]
    pub(crate) fn shares_shards_with(&self, other: &ForwardingTable) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }

    #[inline]
    fn longest_entry(&self, a: Ipv6Addr) -> Option<(Subnet, &Slot)> {
        self.lens.iter().find_map(|&p| {
            let s = Subnet::new(a, p)?;
            self.get(&s).map(|slot| (s, slot))
        })
    }

    /// Destination lookup. Never says `Resolving`: queries live in the core.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Lookup {
        if self.own_subnet.contains_addr(dst) {
            return Lookup::Local;
        }
        match self.longest_entry(dst) {
            Some((_, slot)) if slot.has == Has::Route => Lookup::Route(slot.hop),
            Some(_) => Lookup::NoRoute,
            None => Lookup::Unknown,
        }
    }

    /// Public key of the sender of a packet from `src` (longest match over all routes).
    #[inline]
    pub fn source_key(&self, src: Ipv6Addr) -> Option<[u8; 32]> {
        self.longest_entry(src)?
            .1
            .key_owner()
            .map(|r| r.public_key())
    }

    /// The subnet a packet from `src` comes from (longest match) and the public key of its owner:
    /// what that key authenticates is that subnet, and only that subnet.
    #[inline]
    pub fn source(&self, src: Ipv6Addr) -> Option<(Subnet, [u8; 32])> {
        let (s, slot) = self.longest_entry(src)?;
        Some((s, slot.key_owner()?.public_key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(i: u64, plen: u8) -> Subnet {
        let hi = 0x0400_0000_0000_0000u64 | (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8);
        Subnet::new(Ipv6Addr::from(u128::from(hi) << 64 | u128::from(i)), plen).unwrap()
    }

    fn slot(i: u64) -> Slot {
        Slot::new(
            Some(NextHop {
                link: LinkId(i % 3),
                router_id: RouterId::new([i as u8; 32], [1; 6]),
            }),
            None,
        )
    }

    #[test]
    fn shard_key_spreads_and_depends_on_the_key() {
        let (a, b) = (ShardKey::new(1), ShardKey::new(2));
        let mut counts = [0u32; SHARDS];
        let mut same = 0;
        for i in 0..SHARDS as u64 * 64 {
            let s = subnet(i, 64);
            counts[a.shard(&s)] += 1;
            same += u32::from(a.shard(&s) == b.shard(&s));
        }
        // 64 a shard on average: none empty, none more than three times the mean.
        assert!(counts.iter().all(|&c| c > 0 && c < 192), "{counts:?}");
        // Another key puts a subnet in the same shard by chance only (1/256).
        assert!(same < 200, "{same}");
    }

    #[test]
    fn a_slot_is_a_next_hop_and_a_tag() {
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }

    #[test]
    fn set_counts_lengths_and_skips_no_ops() {
        let mut t = ForwardingTable::empty(subnet(999, 64), ShardKey::new(7));
        let (s64, s96) = (subnet(1, 64), subnet(1, 96));
        assert!(t.set(s64, Some(slot(1))));
        assert!(!t.set(s64, Some(slot(1))), "same slot: no change");
        assert!(t.set(s96, Some(slot(2))));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lens, vec![96, 64]);
        let inside96 = Ipv6Addr::from(u128::from(s96.addr()) | 5);
        assert_eq!(t.source(inside96).map(|x| x.0), Some(s96), "longest first");
        assert!(t.set(s96, None));
        assert!(!t.set(s96, None), "already gone");
        assert_eq!(t.source(inside96).map(|x| x.0), Some(s64));
        assert_eq!(t.lens, vec![64]);
        assert_eq!(t.len(), 1);
        let unselected = Slot::new(None, Some(RouterId::new([4; 32], [0; 6])));
        assert!(t.set(s64, Some(unselected)));
        assert_eq!(t.lookup(inside96), Lookup::NoRoute);
        assert_eq!(t.source_key(inside96), Some([4; 32]));
        assert!(t.set(s64, Some(Slot::new(None, None))));
        assert_eq!(t.lookup(inside96), Lookup::NoRoute);
        assert_eq!(t.source_key(inside96), None);
        assert_eq!(t.source(inside96), None);
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_sets() {
        let routes: Vec<(Subnet, NextHop)> =
            (0..5000).map(|i| (subnet(i, 64), slot(i).hop)).collect();
        let old = Arc::new(ForwardingTable::from_routes(subnet(999_999, 64), &routes));
        let mut next = (*old).clone();
        assert_eq!(next.shares_shards_with(&old), SHARDS);
        let (changed, removed, added) = (subnet(1, 64), subnet(2, 64), subnet(7777, 64));
        next.set(changed, Some(slot(5)));
        next.set(removed, None);
        next.set(added, Some(slot(8)));
        // Only the shards the three changes landed in were copied.
        let touched = [changed, removed, added].map(|s| next.key.shard(&s));
        let mut distinct = touched.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(next.shares_shards_with(&old), SHARDS - distinct.len());
        // The old snapshot still answers as before; the new one has the changes.
        let at = |s: Subnet| Ipv6Addr::from(u128::from(s.addr()) | 1);
        assert_eq!(old.lookup(at(changed)), Lookup::Route(slot(1).hop));
        assert_eq!(next.lookup(at(changed)), Lookup::Route(slot(5).hop));
        assert!(old.source(at(removed)).is_some());
        assert_eq!(next.lookup(at(removed)), Lookup::Unknown);
        assert_eq!(old.lookup(at(added)), Lookup::Unknown);
        assert_eq!((old.len(), next.len()), (5000, 5000));
        for (s, nh) in &routes[3..] {
            assert_eq!(old.get(s), next.get(s));
            assert_eq!(old.lookup(at(*s)), Lookup::Route(*nh));
        }
    }
}
