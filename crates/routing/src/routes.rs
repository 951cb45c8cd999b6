//! How the route table is kept in memory.
//!
//! A node of a large mesh holds a route list for nearly every subnet in it (triggered updates
//! spread every route everywhere), so the table's size is the core's size: tens of bytes per
//! subnet matter when a simulator runs ten thousand cores. Hence:
//!
//! * names are ids ([`crate::names`]): an entry holds a 4-byte router-id and a 2-byte link
//!   slot, not 40 and 8 bytes;
//! * a subnet's state is one fixed-size [`Slot`] in a vector indexed by its id, with its first
//!   [`INLINE`] entries inside (a subnet has one entry per neighbour that advertises it, so a
//!   few); longer lists move to a side map;
//! * the feasibility distance of the router-id a subnet is advertised under sits in its slot;
//!   a second router-id's distance for the same subnet (after a restart, say) goes to a side map;
//! * an expiry timer per subnet rather than per entry, 12 bytes in a heap;
//! * times are stored as two `u32` halves so that these structs need 4-byte alignment only.
//!
//! The order of entries in a list is that of the `Vec` it replaces (appended, removed by
//! swapping in the last), because selection breaks ties by it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv6Addr;

use rustc_hash::FxHashMap;
use wire::babel::{Metric, RouterId, SeqNo, Subnet};

use crate::names::{Names, RidId, SubnetId, LOCAL};
use crate::router::LinkId;
use crate::time::Time;

/// Entries kept inside a subnet's slot; more go to a side map.
pub(crate) const INLINE: usize = 3;

/// A [`Time`] in two halves (4-byte aligned); [`Stamp::NEVER`] stands for "none".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Debug)]
pub(crate) struct Stamp {
    hi: u32,
    lo: u32,
}

impl Stamp {
    pub(crate) const NEVER: Stamp = Stamp {
        hi: u32::MAX,
        lo: u32::MAX,
    };

    pub(crate) fn new(t: Time) -> Stamp {
        let us = t.as_micros();
        Stamp {
            hi: (us >> 32) as u32,
            lo: us as u32,
        }
    }

    pub(crate) fn get(self) -> Time {
        Time::from_micros((u64::from(self.hi) << 32) | u64::from(self.lo))
    }

    /// `None` for [`Stamp::NEVER`] (so `Some(Time::MAX)` cannot be stored; no caller's clock
    /// gets there).
    pub(crate) fn opt(self) -> Option<Time> {
        (self != Stamp::NEVER).then(|| self.get())
    }

    pub(crate) fn from_opt(t: Option<Time>) -> Stamp {
        t.map_or(Stamp::NEVER, Stamp::new)
    }
}

/// A link as entries name it: an index into [`LinkSlots`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct LinkSlot(pub(crate) u16);

impl LinkSlot {
    pub(crate) const NONE: LinkSlot = LinkSlot(u16::MAX);
}

/// The links entries refer to. A slot outlives its link while entries still name it (a route
/// through a link that went down is held at ∞ for a while), and is reused only after.
#[derive(Debug, Default)]
pub(crate) struct LinkSlots {
    ids: Vec<LinkId>,
    live: Vec<bool>,
    refs: Vec<u32>,
    free: Vec<u16>,
}

impl LinkSlots {
    /// A slot for link `id` coming up: the one it had if entries outlived it (the shell reused
    /// the id, which the core tolerates as before: its held entries are the new link's), else a
    /// free or new one. `None` when every slot is taken.
    pub(crate) fn open(&mut self, id: LinkId) -> Option<LinkSlot> {
        let revived = (0..self.ids.len()).find(|&i| !self.live[i] && self.ids[i] == id);
        if let Some(i) = revived.filter(|&i| self.refs[i] > 0) {
            self.live[i] = true;
            return Some(LinkSlot(i as u16));
        }
        if let Some(i) = self.free.pop() {
            let u = usize::from(i);
            self.ids[u] = id;
            self.live[u] = true;
            return Some(LinkSlot(i));
        }
        let i = u16::try_from(self.ids.len())
            .ok()
            .filter(|&i| i != LinkSlot::NONE.0)?;
        self.ids.push(id);
        self.live.push(true);
        self.refs.push(0);
        Some(LinkSlot(i))
    }

    /// The link went away; its slot is free once no entry names it.
    pub(crate) fn close(&mut self, s: LinkSlot) {
        let i = usize::from(s.0);
        if self.live.get(i) == Some(&true) {
            self.live[i] = false;
            if self.refs[i] == 0 {
                self.free.push(s.0);
            }
        }
    }

    pub(crate) fn id(&self, s: LinkSlot) -> LinkId {
        self.ids
            .get(usize::from(s.0))
            .copied()
            .unwrap_or(LinkId(u64::MAX))
    }

    fn retain(&mut self, s: LinkSlot) {
        if let Some(r) = self.refs.get_mut(usize::from(s.0)) {
            *r += 1;
        }
    }

    fn release(&mut self, s: LinkSlot) {
        let i = usize::from(s.0);
        let Some(r) = self.refs.get_mut(i) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0 && !self.live[i] {
            self.free.push(s.0);
        }
    }
}

/// One neighbour's route to a subnet (20 bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    expires: Stamp,
    pub(crate) rid: RidId,
    /// As advertised by the neighbour (its total), not including our link cost.
    pub(crate) metric: Metric,
    pub(crate) seqno: SeqNo,
    pub(crate) link: LinkSlot,
}

impl Entry {
    const EMPTY: Entry = Entry {
        expires: Stamp::NEVER,
        rid: RidId::NONE,
        metric: Metric::INFINITE,
        seqno: SeqNo(0),
        link: LinkSlot::NONE,
    };

    pub(crate) fn expires(&self) -> Time {
        self.expires.get()
    }

    pub(crate) fn set_expires(&mut self, t: Time) {
        self.expires = Stamp::new(t);
    }
}

/// A feasibility distance (docs/protocol.md §5.4).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fd {
    pub(crate) metric: Metric,
    pub(crate) seqno: SeqNo,
    pub(crate) expires: Time,
}

/// A subnet's state besides its entries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    /// Router-id and total metric of the selection when it was last made.
    pub(crate) sel_rid: RidId,
    /// When the subnet last flapped (for flap damping).
    last_trigger: Stamp,
    /// The triggered-update bucket's theoretical arrival time.
    tat: Stamp,
    /// The earliest expiry timer in the heap for this subnet ([`Stamp::NEVER`]: none).
    timer: Stamp,
    fd_expires: Stamp,
    /// [`RidId::NONE`]: no distance kept here.
    fd_rid: RidId,
    fd_metric: Metric,
    fd_seqno: SeqNo,
    len: u16,
    selected: LinkSlot,
    pub(crate) sel_metric: Metric,
}

impl Meta {
    const EMPTY: Meta = Meta {
        sel_rid: RidId::NONE,
        last_trigger: Stamp::NEVER,
        tat: Stamp { hi: 0, lo: 0 },
        timer: Stamp::NEVER,
        fd_expires: Stamp::NEVER,
        fd_rid: RidId::NONE,
        fd_metric: Metric::INFINITE,
        fd_seqno: SeqNo(0),
        len: 0,
        selected: LinkSlot::NONE,
        sel_metric: Metric::INFINITE,
    };

    pub(crate) fn selected(&self) -> Option<LinkSlot> {
        (self.selected != LinkSlot::NONE).then_some(self.selected)
    }
    pub(crate) fn set_selected(&mut self, s: Option<LinkSlot>) {
        self.selected = s.unwrap_or(LinkSlot::NONE);
    }
    pub(crate) fn last_trigger(&self) -> Option<Time> {
        self.last_trigger.opt()
    }
    pub(crate) fn set_last_trigger(&mut self, t: Option<Time>) {
        self.last_trigger = Stamp::from_opt(t);
    }
    pub(crate) fn tat(&self) -> Time {
        self.tat.get()
    }
    pub(crate) fn set_tat(&mut self, t: Time) {
        self.tat = Stamp::new(t);
    }
    fn occupied(&self) -> bool {
        self.len > 0 || self.fd_rid != RidId::NONE
    }
}

/// A subnet's state (112 bytes).
#[derive(Clone, Copy, Debug)]
struct Slot {
    inline: [Entry; INLINE],
    meta: Meta,
}

const EMPTY_SLOT: Slot = Slot {
    inline: [Entry::EMPTY; INLINE],
    meta: Meta::EMPTY,
};

/// A router-id about to be stored: its id if it was looked up, its address if it was derived.
#[derive(Clone, Copy)]
pub(crate) struct NewRid<'a> {
    pub(crate) rid: &'a RouterId,
    pub(crate) id: Option<RidId>,
    pub(crate) addr: Option<Ipv6Addr>,
}

/// An expiry timer: subnet `id` is due at `at`. Ordered by time, then id; timers due at the
/// same instant are put in subnet order before they run (see [`RouteTable::due`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Due {
    at: Stamp,
    id: u32,
}

/// Route lists, feasibility distances and expiry timers, by subnet id.
#[derive(Debug)]
pub(crate) struct RouteTable {
    pub(crate) names: Names,
    pub(crate) links: LinkSlots,
    /// Slots of shared subnet ids, then of the core's own (index without [`LOCAL`]).
    shared: Vec<Slot>,
    own: Vec<Slot>,
    /// Entries of subnets with more than [`INLINE`].
    spill: FxHashMap<SubnetId, Vec<Entry>>,
    /// Distances for a router-id other than the one in the subnet's slot.
    more_sources: FxHashMap<(SubnetId, RidId), Fd>,
    /// When a route near expiry was last refreshed ([`crate::Router::request_route`]).
    refresh_sent: FxHashMap<SubnetId, Time>,
    expiries: BinaryHeap<Reverse<Due>>,
    lists: usize,
    entries: usize,
    sources: usize,
}

impl RouteTable {
    pub(crate) fn new(address_of: fn(&[u8; 32]) -> Ipv6Addr) -> RouteTable {
        RouteTable {
            names: Names::new(address_of),
            links: LinkSlots::default(),
            shared: Vec::new(),
            own: Vec::new(),
            spill: FxHashMap::default(),
            more_sources: FxHashMap::default(),
            refresh_sent: FxHashMap::default(),
            expiries: BinaryHeap::new(),
            lists: 0,
            entries: 0,
            sources: 0,
        }
    }

    /// Subnets with a route list.
    pub(crate) fn len(&self) -> usize {
        self.lists
    }
    pub(crate) fn entry_count(&self) -> usize {
        self.entries
    }
    pub(crate) fn source_count(&self) -> usize {
        self.sources
    }
    pub(crate) fn timer_count(&self) -> usize {
        self.expiries.len()
    }

    fn slot(&self, id: SubnetId) -> Option<&Slot> {
        if id.0 & LOCAL != 0 {
            self.own.get((id.0 & !LOCAL) as usize)
        } else {
            self.shared.get(id.0 as usize)
        }
    }

    fn slot_mut(&mut self, id: SubnetId) -> &mut Slot {
        let (v, i) = if id.0 & LOCAL != 0 {
            (&mut self.own, (id.0 & !LOCAL) as usize)
        } else {
            (&mut self.shared, id.0 as usize)
        };
        if i >= v.len() {
            v.resize(i + 1, EMPTY_SLOT);
        }
        &mut v[i]
    }

    /// The id of `s` if it has a route list.
    pub(crate) fn list_id(&self, s: &Subnet) -> Option<SubnetId> {
        let id = self.names.subnet_id(s)?;
        self.has_list(id).then_some(id)
    }

    pub(crate) fn has_list(&self, id: SubnetId) -> bool {
        self.slot(id).is_some_and(|s| s.meta.len > 0)
    }

    pub(crate) fn meta(&self, id: SubnetId) -> Option<&Meta> {
        self.slot(id).filter(|s| s.meta.len > 0).map(|s| &s.meta)
    }

    pub(crate) fn meta_mut(&mut self, id: SubnetId) -> &mut Meta {
        &mut self.slot_mut(id).meta
    }

    /// The entries of `id`'s list, in order (empty without a list).
    pub(crate) fn entries(&self, id: SubnetId) -> &[Entry] {
        match self.slot(id) {
            Some(s) if usize::from(s.meta.len) <= INLINE => &s.inline[..usize::from(s.meta.len)],
            Some(_) => self.spill.get(&id).map_or(&[], Vec::as_slice),
            None => &[],
        }
    }

    /// The list's state and entries, both mutable.
    pub(crate) fn list_mut(&mut self, id: SubnetId) -> (&mut Meta, &mut [Entry]) {
        let (v, i) = if id.0 & LOCAL != 0 {
            (&mut self.own, (id.0 & !LOCAL) as usize)
        } else {
            (&mut self.shared, id.0 as usize)
        };
        if i >= v.len() {
            v.resize(i + 1, EMPTY_SLOT);
        }
        let slot = &mut v[i];
        let n = usize::from(slot.meta.len);
        if n <= INLINE {
            (&mut slot.meta, &mut slot.inline[..n])
        } else {
            let e = self
                .spill
                .get_mut(&id)
                .map_or(&mut [][..], Vec::as_mut_slice);
            (&mut slot.meta, e)
        }
    }

    /// Subnets with a route list, in id order.
    pub(crate) fn list_ids(&self) -> impl Iterator<Item = SubnetId> + '_ {
        let shared = self.shared.iter().enumerate().map(|(i, s)| (i as u32, s));
        let own = self
            .own
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32 | LOCAL, s));
        shared
            .chain(own)
            .filter(|(_, s)| s.meta.len > 0)
            .map(|(i, _)| SubnetId(i))
    }

    /// Takes a reference to `id` for the slot if it was unoccupied (before it changes).
    fn occupy(&mut self, id: SubnetId) {
        if !self.slot(id).is_some_and(|s| s.meta.occupied()) {
            self.names.retain_subnet(id);
        }
    }

    /// Drops the slot's reference to `id` if it is unoccupied now.
    fn vacate(&mut self, id: SubnetId) {
        if !self.slot(id).is_some_and(|s| s.meta.occupied()) {
            self.names.release_subnet(id);
        }
    }

    fn take_rid(&mut self, r: NewRid) -> RidId {
        self.names.intern_rid(r.rid, r.id, r.addr)
    }

    /// A new route list for `s` with one entry; its selection is empty and its `sel_rid` the
    /// entry's router-id.
    pub(crate) fn create(
        &mut self,
        s: Subnet,
        link: LinkSlot,
        metric: Metric,
        seqno: SeqNo,
        rid: NewRid,
        expires: Time,
    ) -> SubnetId {
        let id = match self.names.subnet_id(&s) {
            Some(id) => {
                self.occupy(id);
                id
            }
            None => self.names.intern_subnet(s),
        };
        let rid = self.take_rid(rid);
        self.names.retain_rid(rid);
        let m = self.meta_mut(id);
        m.sel_rid = rid;
        m.sel_metric = Metric::INFINITE;
        m.set_selected(None);
        self.push_entry(id, link, metric, seqno, rid, expires);
        self.names.release_rid(rid);
        self.lists += 1;
        id
    }

    /// Appends an entry to `id`'s list (which exists).
    pub(crate) fn push(
        &mut self,
        id: SubnetId,
        link: LinkSlot,
        metric: Metric,
        seqno: SeqNo,
        rid: NewRid,
        expires: Time,
    ) {
        let rid = self.take_rid(rid);
        self.push_entry(id, link, metric, seqno, rid, expires);
        self.names.release_rid(rid);
    }

    /// Appends an entry; takes its own references to `rid` and `link`.
    fn push_entry(
        &mut self,
        id: SubnetId,
        link: LinkSlot,
        metric: Metric,
        seqno: SeqNo,
        rid: RidId,
        expires: Time,
    ) {
        self.names.retain_rid(rid);
        self.links.retain(link);
        self.entries += 1;
        let e = Entry {
            expires: Stamp::new(expires),
            rid,
            metric,
            seqno,
            link,
        };
        let slot = self.slot_mut(id);
        let n = usize::from(slot.meta.len);
        slot.meta.len = slot.meta.len.saturating_add(1);
        if n < INLINE {
            slot.inline[n] = e;
        } else if n == INLINE {
            let mut v = Vec::with_capacity(INLINE + 1);
            v.extend_from_slice(&slot.inline);
            v.push(e);
            slot.inline = [Entry::EMPTY; INLINE];
            self.spill.insert(id, v);
        } else {
            self.spill.entry(id).or_default().push(e);
        }
        self.schedule(id, expires);
    }

    /// Removes entry `i` of `id`'s list, moving the last one into its place (as
    /// `Vec::swap_remove`). The list goes when its last entry does.
    pub(crate) fn swap_remove(&mut self, id: SubnetId, i: usize) -> Option<Entry> {
        let slot = self.slot_mut(id);
        let n = usize::from(slot.meta.len);
        if i >= n {
            return None;
        }
        let e = if n <= INLINE {
            let e = slot.inline[i];
            slot.inline[i] = slot.inline[n - 1];
            slot.inline[n - 1] = Entry::EMPTY;
            e
        } else {
            let v = self.spill.get_mut(&id)?;
            let e = v.swap_remove(i);
            if v.len() <= INLINE {
                let v = self.spill.remove(&id).unwrap_or_default();
                let slot = self.slot_mut(id);
                slot.inline[..v.len()].copy_from_slice(&v);
            }
            e
        };
        let slot = self.slot_mut(id);
        slot.meta.len -= 1;
        let emptied = slot.meta.len == 0;
        self.entries -= 1;
        self.names.release_rid(e.rid);
        self.links.release(e.link);
        if emptied {
            let m = &mut self.slot_mut(id).meta;
            let sel_rid = m.sel_rid;
            *m = Meta {
                fd_expires: m.fd_expires,
                fd_rid: m.fd_rid,
                fd_metric: m.fd_metric,
                fd_seqno: m.fd_seqno,
                ..Meta::EMPTY
            };
            self.names.release_rid(sel_rid);
            self.refresh_sent.remove(&id);
            self.lists -= 1;
            self.vacate(id);
        }
        Some(e)
    }

    /// Entry `i` of `id` takes the router-id `rid`.
    pub(crate) fn set_entry_rid(&mut self, id: SubnetId, i: usize, rid: NewRid) {
        let new = self.take_rid(rid);
        let (_, entries) = self.list_mut(id);
        if let Some(e) = entries.get_mut(i) {
            let old = std::mem::replace(&mut e.rid, new);
            self.names.release_rid(old);
        } else {
            self.names.release_rid(new);
        }
    }

    /// The selection of `id` was made with router-id `rid`.
    pub(crate) fn set_sel_rid(&mut self, id: SubnetId, rid: RidId) {
        self.names.retain_rid(rid);
        let m = self.meta_mut(id);
        let old = std::mem::replace(&mut m.sel_rid, rid);
        self.names.release_rid(old);
    }

    // ----------------------------------------------------------------------------------------
    // Sources
    // ----------------------------------------------------------------------------------------

    /// The feasibility distance for (`id`, `rid`).
    pub(crate) fn source(&self, id: SubnetId, rid: RidId) -> Option<Fd> {
        let m = &self.slot(id)?.meta;
        if m.fd_rid == rid && rid != RidId::NONE {
            return Some(Fd {
                metric: m.fd_metric,
                seqno: m.fd_seqno,
                expires: m.fd_expires.get(),
            });
        }
        if self.more_sources.is_empty() {
            return None;
        }
        self.more_sources.get(&(id, rid)).copied()
    }

    /// Applies `f` to the distance for (`id`, `rid`), or stores `new` if there is none and
    /// fewer than `max` are kept; false if the table is full. `id` must have a route list.
    pub(crate) fn upsert_source(
        &mut self,
        id: SubnetId,
        rid: RidId,
        new: Fd,
        max: usize,
        f: impl FnOnce(&mut Fd),
    ) -> bool {
        let m = &mut self.slot_mut(id).meta;
        if m.fd_rid == rid {
            let mut fd = Fd {
                metric: m.fd_metric,
                seqno: m.fd_seqno,
                expires: m.fd_expires.get(),
            };
            f(&mut fd);
            m.fd_metric = fd.metric;
            m.fd_seqno = fd.seqno;
            m.fd_expires = Stamp::new(fd.expires);
            return true;
        }
        if let Some(fd) = self.more_sources.get_mut(&(id, rid)) {
            f(fd);
            return true;
        }
        if self.sources >= max {
            return false;
        }
        self.sources += 1;
        self.names.retain_rid(rid);
        let m = &mut self.slot_mut(id).meta;
        if m.fd_rid == RidId::NONE {
            // The slot has a list, so it is occupied already.
            m.fd_rid = rid;
            m.fd_metric = new.metric;
            m.fd_seqno = new.seqno;
            m.fd_expires = Stamp::new(new.expires);
        } else {
            self.names.retain_subnet(id);
            self.more_sources.insert((id, rid), new);
        }
        true
    }

    /// Forgets the distances that expired by `now`.
    pub(crate) fn collect_sources(&mut self, now: Time) {
        let mut freed = Vec::new();
        for (v, tag) in [(&mut self.shared, 0), (&mut self.own, LOCAL)] {
            for (i, s) in v.iter_mut().enumerate() {
                let m = &mut s.meta;
                if m.fd_rid != RidId::NONE && m.fd_expires.get() <= now {
                    freed.push((SubnetId(i as u32 | tag), m.fd_rid));
                    m.fd_rid = RidId::NONE;
                    m.fd_expires = Stamp::NEVER;
                }
            }
        }
        for &(id, rid) in &freed {
            self.names.release_rid(rid);
            self.vacate(id);
        }
        let mut gone = 0;
        let names = &mut self.names;
        self.more_sources.retain(|&(id, rid), fd| {
            let keep = fd.expires > now;
            if !keep {
                names.release_rid(rid);
                names.release_subnet(id);
                gone += 1;
            }
            keep
        });
        self.sources -= freed.len() + gone;
    }

    // ----------------------------------------------------------------------------------------
    // Refreshes
    // ----------------------------------------------------------------------------------------

    pub(crate) fn refresh_sent(&self, id: SubnetId) -> Option<Time> {
        if self.refresh_sent.is_empty() {
            return None;
        }
        self.refresh_sent.get(&id).copied()
    }

    pub(crate) fn set_refresh_sent(&mut self, id: SubnetId, t: Time) {
        self.refresh_sent.insert(id, t);
    }

    /// Forgets refreshes older than `ttl`, which count as none.
    pub(crate) fn prune_refreshes(&mut self, now: Time, ttl: std::time::Duration) {
        self.refresh_sent
            .retain(|_, t| now.saturating_since(*t) < ttl);
    }

    // ----------------------------------------------------------------------------------------
    // Expiry timers
    // ----------------------------------------------------------------------------------------

    /// Makes sure `id`'s expiry timer runs at `at` or earlier.
    pub(crate) fn schedule(&mut self, id: SubnetId, at: Time) {
        let m = &mut self.slot_mut(id).meta;
        let at = Stamp::new(at);
        if m.timer == Stamp::NEVER || at < m.timer {
            m.timer = at;
            self.expiries.push(Reverse(Due { at, id: id.0 }));
        }
    }

    /// The time of the earliest expiry timer, if any.
    pub(crate) fn next_due(&self) -> Option<Time> {
        self.expiries.peek().map(|Reverse(d)| d.at.get())
    }

    /// Takes every expiry timer due at the earliest time if that is no later than `now`: that
    /// time, and the subnets, in subnet order (the order of the per-entry timers this replaces:
    /// timers of one instant ran by subnet, then link). Stale timers are dropped.
    pub(crate) fn due(&mut self, now: Time) -> Option<(Time, Vec<(Subnet, SubnetId)>)> {
        let at = self.expiries.peek()?.0.at;
        if at.get() > now {
            return None;
        }
        let mut v = Vec::new();
        while let Some(Reverse(d)) = self.expiries.peek().copied() {
            if d.at != at {
                break;
            }
            self.expiries.pop();
            let id = SubnetId(d.id);
            let live = self.slot(id).is_some_and(|s| s.meta.timer == at);
            if live {
                // Done with this timer; the subnet gets a new one after it has run.
                self.slot_mut(id).meta.timer = Stamp::NEVER;
                v.push((self.names.subnet(id), id));
            }
        }
        v.sort_unstable_by_key(|(s, _)| *s);
        Some((at.get(), v))
    }

    /// Rebuilds the heap with one timer per list when stale ones pile up (expiries brought
    /// forward leave the later timer behind).
    pub(crate) fn compact_timers_if_needed(&mut self) {
        if self.expiries.len() <= 2 * self.lists + 64 {
            return;
        }
        let mut v = Vec::with_capacity(self.lists);
        for (vec, tag) in [(&mut self.shared, 0), (&mut self.own, LOCAL)] {
            for (i, s) in vec.iter_mut().enumerate() {
                s.meta.timer = Stamp::NEVER;
                if s.meta.len == 0 {
                    continue;
                }
                let n = usize::from(s.meta.len);
                let id = SubnetId(i as u32 | tag);
                let first = if n <= INLINE {
                    s.inline[..n].iter().map(|e| e.expires).min()
                } else {
                    self.spill
                        .get(&id)
                        .and_then(|v| v.iter().map(|e| e.expires).min())
                };
                if let Some(at) = first {
                    s.meta.timer = at;
                    v.push(Reverse(Due { at, id: id.0 }));
                }
            }
        }
        self.expiries = BinaryHeap::from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::address_from_public_key;

    fn sub(i: u16) -> Subnet {
        Subnet::slash64(Ipv6Addr::new(0x400 + i, 0, 0, 0, 0, 0, 0, 0))
    }
    fn rid(i: u8) -> RouterId {
        RouterId::new([i; 32], [i; 6])
    }
    fn new_rid(r: &RouterId) -> NewRid<'_> {
        NewRid {
            rid: r,
            id: None,
            addr: None,
        }
    }

    #[test]
    fn sizes_stay_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 20);
        assert_eq!(std::mem::size_of::<Slot>(), 112);
        assert_eq!(std::mem::size_of::<Reverse<Due>>(), 12);
    }

    #[test]
    fn entries_keep_vec_order_inline_and_spilled() {
        let mut t = RouteTable::new(address_from_public_key);
        let mut links = Vec::new();
        for l in 0..6 {
            links.push(t.links.open(LinkId(l)).unwrap());
        }
        let r = rid(1);
        let id = t.create(
            sub(1),
            links[0],
            Metric(0),
            SeqNo(0),
            new_rid(&r),
            Time::ZERO,
        );
        let mut model: Vec<u16> = vec![0];
        for (l, &slot) in links.iter().enumerate().skip(1) {
            t.push(
                id,
                slot,
                Metric(l as u16),
                SeqNo(0),
                new_rid(&r),
                Time::ZERO,
            );
            model.push(l as u16);
        }
        let order = |t: &RouteTable| t.entries(id).iter().map(|e| e.link.0).collect::<Vec<_>>();
        assert_eq!(order(&t), model);
        for i in [1, 0, 2, 0, 1] {
            t.swap_remove(id, i);
            model.swap_remove(i);
            assert_eq!(order(&t), model);
        }
        assert_eq!(t.entry_count(), 1);
        assert_eq!(t.len(), 1);
        t.swap_remove(id, 0);
        assert_eq!(t.len(), 0);
        assert!(t.spill.is_empty());
        assert_eq!(t.names.own_counts(), (0, 0), "every name freed");
    }

    #[test]
    fn a_second_router_id_goes_to_the_side_map_and_all_expire() {
        let mut t = RouteTable::new(address_from_public_key);
        let l = t.links.open(LinkId(1)).unwrap();
        let (r1, r2) = (rid(1), rid(2));
        let id = t.create(sub(1), l, Metric(5), SeqNo(1), new_rid(&r1), Time::ZERO);
        let a = t.names.rid_id(&r1).unwrap();
        let fd = |m, e| Fd {
            metric: Metric(m),
            seqno: SeqNo(1),
            expires: Time::from_secs(e),
        };
        assert!(t.upsert_source(id, a, fd(5, 10), 10, |_| unreachable!()));
        t.set_entry_rid(id, 0, new_rid(&r2));
        let b = t.names.rid_id(&r2).unwrap();
        assert!(t.upsert_source(id, b, fd(7, 20), 10, |_| unreachable!()));
        assert!(!t.upsert_source(id, RidId(5), fd(1, 1), 2, |_| {}));
        assert_eq!(t.source(id, a).unwrap().metric, Metric(5));
        assert_eq!(t.source(id, b).unwrap().metric, Metric(7));
        assert_eq!(t.source_count(), 2);
        // The list goes; its subnet is still named by the distances.
        t.swap_remove(id, 0);
        assert_eq!(t.names.subnet(id), sub(1));
        t.collect_sources(Time::from_secs(10));
        assert!(t.source(id, a).is_none());
        assert_eq!(t.source(id, b).unwrap().metric, Metric(7));
        t.collect_sources(Time::from_secs(20));
        assert_eq!(t.source_count(), 0);
        assert_eq!(t.names.own_counts(), (0, 0), "every name freed");
    }

    #[test]
    fn link_slots_outlive_their_link_while_named() {
        let mut t = RouteTable::new(address_from_public_key);
        let a = t.links.open(LinkId(1)).unwrap();
        let r = rid(1);
        let id = t.create(sub(1), a, Metric(5), SeqNo(1), new_rid(&r), Time::ZERO);
        t.links.close(a);
        // Not reused while an entry names it...
        let b = t.links.open(LinkId(2)).unwrap();
        assert_ne!(a, b);
        // ...but revived if the same link id comes back.
        assert_eq!(t.links.open(LinkId(1)), Some(a));
        t.links.close(a);
        t.swap_remove(id, 0);
        assert_eq!(t.links.open(LinkId(3)), Some(a));
    }

    #[test]
    fn due_timers_come_in_subnet_order_and_stale_ones_are_dropped() {
        let mut t = RouteTable::new(address_from_public_key);
        let l = t.links.open(LinkId(1)).unwrap();
        let r = rid(1);
        let at = Time::from_secs(5);
        let ids: Vec<_> = [3, 1, 2]
            .iter()
            .map(|&i| t.create(sub(i), l, Metric(5), SeqNo(1), new_rid(&r), at))
            .collect();
        // Brought forward: the timer at 5 s is stale for this one.
        t.schedule(ids[2], Time::from_secs(4));
        assert_eq!(t.next_due(), Some(Time::from_secs(4)));
        let (when, v) = t.due(Time::from_secs(10)).unwrap();
        assert_eq!((when, v.len()), (Time::from_secs(4), 1));
        let (when, v) = t.due(Time::from_secs(10)).unwrap();
        assert_eq!(when, at);
        assert_eq!(
            v.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![sub(1), sub(3)]
        );
        assert!(t.due(Time::from_secs(10)).is_none());
    }
}
