//! Interned subnets and router-ids: the route table names them by 4-byte ids.
//!
//! A full route table repeats the same names over and over: the 40-byte router-id of a subnet's
//! origin sits in every entry for it, in its selection and in its feasibility distance, and the
//! 17-byte subnet keys several tables. The core keeps each name once, in a [`Names`] table, and
//! refers to it by id everywhere else.
//!
//! A core interns what it learns in its own table and counts the references to each name, so
//! that a name is forgotten with the last entry or source that used it: the table stays bounded
//! by the route and source limits whatever peers send.
//!
//! Cores in one process (the simulator runs thousands) may also share a read-only table of the
//! names they all know ([`SharedNames`], installed with [`crate::Router::share_names`]); then
//! none of them holds a copy of those names, and their per-subnet state is indexed by the shared
//! ids directly. Shared ids are below [`LOCAL`]; a core's own ids have that bit set. A core
//! looks a name up in its own table first, so a name it interned before it was shared keeps the
//! id it had.

use std::net::Ipv6Addr;
use std::sync::Arc;

use crypto::address_from_public_key;
use rustc_hash::FxHashMap;
use wire::babel::{RouterId, Subnet};

/// Ids at or above this are a core's own, below it the shared table's.
pub(crate) const LOCAL: u32 = 1 << 31;

/// A subnet the core holds state for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SubnetId(pub(crate) u32);

/// A router-id the core holds state for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct RidId(pub(crate) u32);

impl RidId {
    /// No router-id (an empty slot).
    pub(crate) const NONE: RidId = RidId(u32::MAX);
}

/// Subnets and router-ids that many cores in one process know (the simulator's nodes), shared
/// read-only through an `Arc` so that each core holds ids instead of copies
/// ([`crate::Router::share_names`]). It also keeps the address each router-id's key derives to,
/// so that cores whose address derivation is the table's skip recomputing it for every Update.
#[derive(Clone, Debug)]
pub struct SharedNames {
    subnets: FxHashMap<Subnet, u32>,
    subnet_list: Vec<Subnet>,
    rids: FxHashMap<RouterId, u32>,
    rid_list: Vec<(RouterId, Ipv6Addr)>,
    address_of: fn(&[u8; 32]) -> Ipv6Addr,
}

impl Default for SharedNames {
    fn default() -> Self {
        SharedNames::new(address_from_public_key)
    }
}

impl SharedNames {
    /// An empty table whose router-id addresses come from `address_of`.
    pub fn new(address_of: fn(&[u8; 32]) -> Ipv6Addr) -> SharedNames {
        SharedNames {
            subnets: FxHashMap::default(),
            subnet_list: Vec::new(),
            rids: FxHashMap::default(),
            rid_list: Vec::new(),
            address_of,
        }
    }

    /// Adds `s` (a second time does nothing).
    pub fn add_subnet(&mut self, s: Subnet) {
        let next = self.subnet_list.len() as u32;
        if next < LOCAL && !self.subnets.contains_key(&s) {
            self.subnets.insert(s, next);
            self.subnet_list.push(s);
        }
    }

    /// Adds `r` (a second time does nothing).
    pub fn add_router_id(&mut self, r: RouterId) {
        let next = self.rid_list.len() as u32;
        if next < LOCAL && !self.rids.contains_key(&r) {
            self.rids.insert(r, next);
            self.rid_list.push((r, (self.address_of)(&r.public_key())));
        }
    }

    /// The shared id of `s`, if it is in the table.
    pub fn subnet_index(&self, s: &Subnet) -> Option<u32> {
        self.subnets.get(s).copied()
    }

    /// The subnet with shared id `i`.
    pub fn subnet_at(&self, i: u32) -> Option<Subnet> {
        self.subnet_list.get(i as usize).copied()
    }

    /// The shared id of `r`, if it is in the table.
    pub fn router_id_index(&self, r: &RouterId) -> Option<u32> {
        self.rids.get(r).copied()
    }

    /// The router-id with shared id `i`.
    pub fn router_id_at(&self, i: u32) -> Option<RouterId> {
        self.rid_list.get(i as usize).map(|(r, _)| *r)
    }
}

/// One of a core's own names, with the number of references to it (0: the slot is free).
#[derive(Clone, Copy, Debug)]
struct Own<K, A> {
    name: K,
    refs: u32,
    /// For router-ids: the derived address, once computed.
    aux: A,
}

/// A core's own names, reference-counted; freed slots are reused.
#[derive(Debug)]
struct OwnTable<K, A> {
    map: FxHashMap<K, u32>,
    slots: Vec<Own<K, A>>,
    free: Vec<u32>,
}

impl<K: Copy + Eq + std::hash::Hash, A: Copy> OwnTable<K, A> {
    fn new() -> Self {
        OwnTable {
            map: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    fn get(&self, k: &K) -> Option<u32> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(k).map(|i| i | LOCAL)
    }

    /// Adds `k` (not in the table) with one reference.
    fn insert(&mut self, k: K, aux: A) -> u32 {
        let own = Own {
            name: k,
            refs: 1,
            aux,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = own;
                i
            }
            None => {
                self.slots.push(own);
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(k, i);
        i | LOCAL
    }

    fn slot(&mut self, id: u32) -> Option<&mut Own<K, A>> {
        self.slots.get_mut((id & !LOCAL) as usize)
    }

    fn retain(&mut self, id: u32) {
        if let Some(o) = self.slot(id) {
            o.refs += 1;
        }
    }

    fn release(&mut self, id: u32) {
        let Some(o) = self.slot(id) else {
            return;
        };
        debug_assert!(o.refs > 0, "name released more often than retained");
        o.refs = o.refs.saturating_sub(1);
        if o.refs == 0 {
            let name = o.name;
            self.map.remove(&name);
            self.free.push(id & !LOCAL);
        }
    }

    fn name(&self, id: u32) -> Option<&Own<K, A>> {
        self.slots
            .get((id & !LOCAL) as usize)
            .filter(|o| o.refs > 0)
    }

    fn live(&self) -> usize {
        self.map.len()
    }
}

/// The names one core refers to: the shared table, then its own.
#[derive(Debug)]
pub(crate) struct Names {
    shared: Arc<SharedNames>,
    /// The shared table derives addresses the way this core does.
    shared_addresses: bool,
    subnets: OwnTable<Subnet, ()>,
    rids: OwnTable<RouterId, Option<Ipv6Addr>>,
    address_of: fn(&[u8; 32]) -> Ipv6Addr,
}

impl Names {
    pub(crate) fn new(address_of: fn(&[u8; 32]) -> Ipv6Addr) -> Names {
        Names {
            shared: Arc::new(SharedNames::new(address_of)),
            shared_addresses: true,
            subnets: OwnTable::new(),
            rids: OwnTable::new(),
            address_of,
        }
    }

    pub(crate) fn share(&mut self, shared: Arc<SharedNames>) {
        self.shared_addresses = std::ptr::fn_addr_eq(shared.address_of, self.address_of);
        self.shared = shared;
    }

    /// Subnets in the shared table.
    pub(crate) fn shared_subnets(&self) -> usize {
        self.shared.subnet_list.len()
    }

    pub(crate) fn subnet_id(&self, s: &Subnet) -> Option<SubnetId> {
        self.subnets
            .get(s)
            .or_else(|| self.shared.subnets.get(s).copied())
            .map(SubnetId)
    }

    /// The id of `s`, with one more reference to it.
    pub(crate) fn intern_subnet(&mut self, s: Subnet) -> SubnetId {
        match self.subnet_id(&s) {
            Some(id) => {
                self.retain_subnet(id);
                id
            }
            None => SubnetId(self.subnets.insert(s, ())),
        }
    }

    pub(crate) fn retain_subnet(&mut self, id: SubnetId) {
        if id.0 & LOCAL != 0 {
            self.subnets.retain(id.0);
        }
    }

    pub(crate) fn release_subnet(&mut self, id: SubnetId) {
        if id.0 & LOCAL != 0 {
            self.subnets.release(id.0);
        }
    }

    /// The subnet named `id` (one this core holds a reference to). A free id would be a bug in
    /// the reference counting: tests catch it, a node does not crash on it.
    pub(crate) fn subnet(&self, id: SubnetId) -> Subnet {
        let s = self.try_subnet(id);
        debug_assert!(s.is_some(), "subnet id {id:?} not held");
        s.unwrap_or_else(|| Subnet::slash64(Ipv6Addr::UNSPECIFIED))
    }

    /// The subnet named `id`, or `None` if the id is free (a stale timer).
    pub(crate) fn try_subnet(&self, id: SubnetId) -> Option<Subnet> {
        if id.0 & LOCAL != 0 {
            self.subnets.name(id.0).map(|o| o.name)
        } else {
            self.shared.subnet_list.get(id.0 as usize).copied()
        }
    }

    pub(crate) fn rid_id(&self, r: &RouterId) -> Option<RidId> {
        self.rids
            .get(r)
            .or_else(|| self.shared.rids.get(r).copied())
            .map(RidId)
    }

    /// The id of `r` (known as `known`, if it was looked up already), with one more reference to
    /// it. `addr` is its derived address, if computed.
    pub(crate) fn intern_rid(
        &mut self,
        r: &RouterId,
        known: Option<RidId>,
        addr: Option<Ipv6Addr>,
    ) -> RidId {
        match known.or_else(|| self.rid_id(r)) {
            Some(id) => {
                self.retain_rid(id);
                id
            }
            None => RidId(self.rids.insert(*r, addr)),
        }
    }

    pub(crate) fn retain_rid(&mut self, id: RidId) {
        if id.0 & LOCAL != 0 && id != RidId::NONE {
            self.rids.retain(id.0);
        }
    }

    pub(crate) fn release_rid(&mut self, id: RidId) {
        if id.0 & LOCAL != 0 && id != RidId::NONE {
            self.rids.release(id.0);
        }
    }

    /// The router-id named `id` (one this core holds a reference to; see [`Names::subnet`]).
    pub(crate) fn rid(&self, id: RidId) -> RouterId {
        let r = if id.0 & LOCAL != 0 {
            self.rids.name(id.0).map(|o| o.name)
        } else {
            self.shared.rid_list.get(id.0 as usize).map(|(r, _)| *r)
        };
        debug_assert!(r.is_some(), "router-id {id:?} not held");
        r.unwrap_or(RouterId([0; RouterId::LEN]))
    }

    /// The address `r`'s key derives to (what an Update's subnet must contain), from the cache
    /// when `r` is known (`known`: its id, if looked up already).
    pub(crate) fn owner_address(&mut self, r: &RouterId, known: Option<RidId>) -> Ipv6Addr {
        if let Some(id) = known {
            if id.0 & LOCAL == 0 {
                if self.shared_addresses {
                    if let Some((_, a)) = self.shared.rid_list.get(id.0 as usize) {
                        return *a;
                    }
                }
            } else if let Some(o) = self.rids.slot(id.0) {
                if let Some(a) = o.aux {
                    return a;
                }
                let a = (self.address_of)(&r.public_key());
                o.aux = Some(a);
                return a;
            }
        }
        (self.address_of)(&r.public_key())
    }

    /// Names of this core's own (not shared) in use, for tests and the memory report.
    pub(crate) fn own_counts(&self) -> (usize, usize) {
        (self.subnets.live(), self.rids.live())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(i: u8) -> Subnet {
        Subnet::slash64(std::net::Ipv6Addr::new(
            0x400 + u16::from(i),
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ))
    }

    #[test]
    fn own_names_are_counted_and_freed_with_the_last_reference() {
        let mut n = Names::new(address_from_public_key);
        let a = n.intern_subnet(sub(1));
        assert_eq!(n.intern_subnet(sub(1)), a);
        n.release_subnet(a);
        assert_eq!(n.subnet(a), sub(1));
        n.release_subnet(a);
        assert_eq!(n.subnet_id(&sub(1)), None);
        assert_eq!(n.try_subnet(a), None);
        // The slot is reused.
        let b = n.intern_subnet(sub(2));
        assert_eq!(b, a);
        assert_eq!(n.own_counts(), (1, 0));
    }

    #[test]
    fn shared_names_need_no_counting_and_own_names_keep_their_ids() {
        let mut n = Names::new(address_from_public_key);
        let own = n.intern_subnet(sub(1));
        let mut shared = SharedNames::default();
        shared.add_subnet(sub(1));
        shared.add_subnet(sub(2));
        let r = RouterId::new([7; 32], [1; 6]);
        shared.add_router_id(r);
        n.share(Arc::new(shared));
        // Interned before it was shared: still the own id.
        assert_eq!(n.subnet_id(&sub(1)), Some(own));
        let s2 = n.intern_subnet(sub(2));
        assert_eq!(s2, SubnetId(1));
        n.release_subnet(s2);
        assert_eq!(n.subnet(s2), sub(2));
        let rid = n.intern_rid(&r, None, None);
        assert_eq!(rid, RidId(0));
        assert_eq!(n.rid(rid), r);
        assert_eq!(
            n.owner_address(&r, Some(rid)),
            address_from_public_key(&[7; 32])
        );
        assert_eq!(n.own_counts(), (1, 0));
    }

    #[test]
    fn an_own_router_id_caches_its_address() {
        let mut n = Names::new(address_from_public_key);
        let r = RouterId::new([9; 32], [1; 6]);
        let id = n.intern_rid(&r, None, None);
        let a = n.owner_address(&r, Some(id));
        assert_eq!(a, address_from_public_key(&[9; 32]));
        assert_eq!(n.rids.slot(id.0).and_then(|o| o.aux), Some(a));
        n.release_rid(id);
        assert_eq!(n.rid_id(&r), None);
    }
}
