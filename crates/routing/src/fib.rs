//! Immutable forwarding snapshots for the data path.

use std::net::Ipv6Addr;

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

#[derive(Clone, Copy, Debug)]
struct Slot {
    selected: Option<NextHop>,
    key_owner: Option<RouterId>,
}

/// A read-only copy of the selected routes (plus, for decryption, the key owner of every known
/// subnet). Built by [`crate::Router::forwarding_table`] only when the selection changed; data
/// path threads share it through an `Arc` (the node keeps it in an arc-swap) and look up without
/// locks. Lookups cost one hash probe per prefix length in use (normally just /64).
#[derive(Debug)]
pub struct ForwardingTable {
    generation: u64,
    own_subnet: Subnet,
    plens: Vec<u8>,
    map: FxHashMap<Subnet, Slot>,
}

impl ForwardingTable {
    pub(crate) fn empty(own_subnet: Subnet) -> ForwardingTable {
        ForwardingTable {
            generation: 0,
            own_subnet,
            plens: Vec::new(),
            map: FxHashMap::default(),
        }
    }

    pub(crate) fn build(
        generation: u64,
        own_subnet: Subnet,
        entries: Vec<(Subnet, Option<NextHop>, Option<RouterId>)>,
    ) -> ForwardingTable {
        let mut idx = PlenIndex::default();
        let mut map = FxHashMap::default();
        map.reserve(entries.len());
        for (s, selected, key_owner) in entries {
            idx.add_pub(s.prefix_len());
            map.insert(
                s,
                Slot {
                    selected,
                    key_owner,
                },
            );
        }
        ForwardingTable {
            generation,
            own_subnet,
            plens: idx.lengths().collect(),
            map,
        }
    }

    /// A table holding exactly `routes` (each subnet's key owner is its next hop's router), for
    /// simulators, benchmarks and tests of a data path without a running routing core.
    pub fn from_routes(own_subnet: Subnet, routes: &[(Subnet, NextHop)]) -> ForwardingTable {
        let entries = routes
            .iter()
            .map(|&(s, nh)| (s, Some(nh), Some(nh.router_id)))
            .collect();
        ForwardingTable::build(1, own_subnet, entries)
    }

    /// Increases by one at every rebuild.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of subnets known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn longest(&self, a: Ipv6Addr) -> Option<&Slot> {
        self.longest_entry(a).map(|(_, slot)| slot)
    }

    fn longest_entry(&self, a: Ipv6Addr) -> Option<(Subnet, &Slot)> {
        self.plens.iter().find_map(|&p| {
            let s = Subnet::new(a, p)?;
            self.map.get(&s).map(|slot| (s, slot))
        })
    }

    /// Destination lookup. Never says `Resolving`: queries live in the core.
    pub fn lookup(&self, dst: Ipv6Addr) -> Lookup {
        if self.own_subnet.contains_addr(dst) {
            return Lookup::Local;
        }
        match self.longest(dst) {
            Some(Slot {
                selected: Some(n), ..
            }) => Lookup::Route(*n),
            Some(_) => Lookup::NoRoute,
            None => Lookup::Unknown,
        }
    }

    /// Public key of the sender of a packet from `src` (longest match over all routes).
    pub fn source_key(&self, src: Ipv6Addr) -> Option<[u8; 32]> {
        self.longest(src)?.key_owner.map(|r| r.public_key())
    }

    /// The subnet a packet from `src` comes from (longest match) and the public key of its owner:
    /// what that key authenticates is that subnet, and only that subnet.
    pub fn source(&self, src: Ipv6Addr) -> Option<(Subnet, [u8; 32])> {
        let (s, slot) = self.longest_entry(src)?;
        Some((s, slot.key_owner?.public_key()))
    }
}
