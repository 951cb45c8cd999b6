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
//!   few); further entries go to [`CHUNK`]-entry chunks chained from the slot, in a pool;
//! * the feasibility distance of the router-id a subnet is advertised under sits in its slot;
//!   a second router-id's distance for the same subnet (after a restart, say) goes to a side map;
//! * expiry timers per subnet rather than per entry, 8 bytes in a heap, and none in the slot:
//!   the heap holds a timer no later than a subnet's earliest expiry, and a new one is pushed
//!   only when that earliest expiry comes forward. Timers of one instant run by subnet, and a
//!   subnet's due entries by link, the order of the per-entry timers before; only when
//!   `handle_timeout` comes late, past several instants, can two subnets' expiries come in
//!   another order than theirs did (each subnet's at its earliest timer);
//! * times are stored in 32 bits from a moving epoch ([`Epoch`]).
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

/// Entries kept inside a subnet's slot; more go to chunks. Two: in a random mesh of average
/// degree 3.5, 73 % of subnets have at most two entries at a node, 92 % at most four.
pub(crate) const INLINE: usize = 2;
/// Entries in a chunk.
pub(crate) const CHUNK: usize = 2;
/// No chunk.
const NO_CHUNK: u32 = u32::MAX;

/// A [`Time`] stored in 32 bits: microseconds after the table's [`Epoch`], which moves
/// forward as time passes ([`RouteTable::rebase`]). [`Stamp::NEVER`] stands for "none".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) struct Stamp(u32);

impl Stamp {
    pub(crate) const NEVER: Stamp = Stamp(u32::MAX);
    const ZERO: Stamp = Stamp(0);
}

/// The instant stamps count from. Every time the core stores lies within 38.3 minutes ahead
/// of the current time (the longest route hold: 3.5 × 655.35 s) and the epoch is kept between
/// 10 and 30 minutes behind it, so stamps (71.6 minutes) hold them exactly. Times older than
/// the epoch are stored as the epoch: the core only asks of such a time whether it is at least
/// a second, or a flap window (at most 10 minutes), before now, and whether it has passed, and
/// the answers stay the same.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(Time);

/// How far the epoch trails the current time after a rebase, and at most before the next.
pub(crate) const EPOCH_LAG: std::time::Duration = std::time::Duration::from_secs(10 * 60);
const EPOCH_LAG_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Epoch {
    fn at(now: Time) -> Epoch {
        Epoch(Time::from_micros(
            now.as_micros().saturating_sub(EPOCH_LAG.as_micros() as u64),
        ))
    }

    pub(crate) fn stamp(self, t: Time) -> Stamp {
        let us = t.as_micros().saturating_sub(self.0.as_micros());
        Stamp(u32::try_from(us).unwrap_or(u32::MAX - 1).min(u32::MAX - 1))
    }

    pub(crate) fn time(self, s: Stamp) -> Time {
        Time::from_micros(self.0.as_micros() + u64::from(s.0))
    }

    fn stamp_opt(self, t: Option<Time>) -> Stamp {
        t.map_or(Stamp::NEVER, |t| self.stamp(t))
    }

    fn time_opt(self, s: Stamp) -> Option<Time> {
        (s != Stamp::NEVER).then(|| self.time(s))
    }
}

impl Stamp {
    /// The same instant after the epoch moved `by` microseconds forward.
    fn shift(self, by: u64) -> Stamp {
        if self == Stamp::NEVER {
            return self;
        }
        Stamp(u32::try_from(u64::from(self.0).saturating_sub(by)).unwrap_or(0))
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
        let revived =
            (0..self.ids.len()).find(|&i| !self.live[i] && self.refs[i] > 0 && self.ids[i] == id);
        if let Some(i) = revived {
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

    /// Entries naming slot `s`: for a link that is up, the subnets it holds a route for.
    pub(crate) fn entries(&self, s: LinkSlot) -> usize {
        self.refs.get(usize::from(s.0)).map_or(0, |&r| r as usize)
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

/// One neighbour's route to a subnet (16 bytes).
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
    fd_expires: Stamp,
    /// [`RidId::NONE`]: no distance kept here.
    fd_rid: RidId,
    fd_metric: Metric,
    fd_seqno: SeqNo,
    len: u16,
    selected: LinkSlot,
    pub(crate) sel_metric: Metric,
    /// The chunk holding entries from [`INLINE`] on, or [`NO_CHUNK`].
    more: u32,
}

impl Meta {
    const EMPTY: Meta = Meta {
        sel_rid: RidId::NONE,
        last_trigger: Stamp::NEVER,
        tat: Stamp::ZERO,
        fd_expires: Stamp::NEVER,
        fd_rid: RidId::NONE,
        fd_metric: Metric::INFINITE,
        fd_seqno: SeqNo(0),
        len: 0,
        selected: LinkSlot::NONE,
        sel_metric: Metric::INFINITE,
        more: NO_CHUNK,
    };

    pub(crate) fn selected(&self) -> Option<LinkSlot> {
        (self.selected != LinkSlot::NONE).then_some(self.selected)
    }
    pub(crate) fn set_selected(&mut self, s: Option<LinkSlot>) {
        self.selected = s.unwrap_or(LinkSlot::NONE);
    }
    fn occupied(&self) -> bool {
        self.len > 0 || self.fd_rid != RidId::NONE
    }
}

/// A subnet's state (68 bytes).
#[derive(Clone, Copy, Debug)]
struct Slot {
    inline: [Entry; INLINE],
    meta: Meta,
}

/// Entries of a list past the inline ones, and the next chunk (or [`NO_CHUNK`]; in a free
/// chunk, the next free one).
#[derive(Clone, Copy, Debug)]
struct Chunk {
    e: [Entry; CHUNK],
    next: u32,
}

/// The entries of one list, in order.
#[derive(Clone)]
pub(crate) struct Entries<'a> {
    inline: std::slice::Iter<'a, Entry>,
    chunks: &'a [Chunk],
    chunk: u32,
    at: usize,
    /// Entries past the inline ones still to come.
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        if let Some(e) = self.inline.next() {
            return Some(e);
        }
        if self.left == 0 {
            return None;
        }
        let c = self.chunks.get(self.chunk as usize)?;
        let e = &c.e[self.at];
        self.left -= 1;
        self.at += 1;
        if self.at == CHUNK {
            self.at = 0;
            self.chunk = c.next;
        }
        Some(e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.inline.len() + self.left;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Entries<'_> {}

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

/// An expiry timer (8 bytes): subnet `id` is due at `at`. Ordered by time, then id; timers
/// due at the same instant are put in subnet order before they run (see
/// [`RouteTable::due`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Due {
    at: Stamp,
    id: u32,
}

/// The vector holding `id`'s slot (`shared` or `own`), made long enough, and the index in it.
/// The slots of shared ids are made for the whole shared table (`shared_len` names) at once,
/// and exactly: a core in a simulated mesh learns a route to nearly every node, and doubling
/// would waste up to half.
fn slots_for<'a>(
    shared: &'a mut Vec<Slot>,
    own: &'a mut Vec<Slot>,
    id: SubnetId,
    shared_len: usize,
) -> (&'a mut Vec<Slot>, usize) {
    if id.0 & LOCAL != 0 {
        let i = (id.0 & !LOCAL) as usize;
        if i >= own.len() {
            own.resize(i + 1, EMPTY_SLOT);
        }
        (own, i)
    } else {
        let i = id.0 as usize;
        if i >= shared.len() {
            let n = (i + 1).max(shared_len);
            shared.reserve_exact(n - shared.len());
            shared.resize(n, EMPTY_SLOT);
        }
        (shared, i)
    }
}

/// Route lists, feasibility distances and expiry timers, by subnet id.
#[derive(Debug)]
pub(crate) struct RouteTable {
    pub(crate) names: Names,
    epoch: Epoch,
    pub(crate) links: LinkSlots,
    /// Slots of shared subnet ids, then of the core's own (index without [`LOCAL`]).
    shared: Vec<Slot>,
    own: Vec<Slot>,
    /// Chunks of entries past the inline ones, and the first free chunk.
    chunks: Vec<Chunk>,
    free_chunk: u32,
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
    pub(crate) fn new(address_of: fn(&[u8; 32]) -> Ipv6Addr, now: Time) -> RouteTable {
        RouteTable {
            names: Names::new(address_of),
            epoch: Epoch::at(now),
            links: LinkSlots::default(),
            shared: Vec::new(),
            own: Vec::new(),
            chunks: Vec::new(),
            free_chunk: NO_CHUNK,
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
        let shared = self.names.shared_subnets();
        let (v, i) = slots_for(&mut self.shared, &mut self.own, id, shared);
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

    /// The entries of `id`'s list, in order (none without a list).
    pub(crate) fn entries(&self, id: SubnetId) -> Entries<'_> {
        let (inline, n, more): (&[Entry], usize, u32) = match self.slot(id) {
            Some(s) => (&s.inline, usize::from(s.meta.len), s.meta.more),
            None => (&[], 0, NO_CHUNK),
        };
        Entries {
            inline: inline[..n.min(INLINE)].iter(),
            chunks: &self.chunks,
            chunk: more,
            at: 0,
            left: n.saturating_sub(INLINE),
        }
    }

    /// Entries in `id`'s list.
    pub(crate) fn list_len(&self, id: SubnetId) -> usize {
        self.slot(id).map_or(0, |s| usize::from(s.meta.len))
    }

    /// The chunk `k` steps along the chain from `first`.
    fn chunk_at(&self, first: u32, k: usize) -> u32 {
        let mut c = first;
        for _ in 0..k {
            c = self.chunks.get(c as usize).map_or(NO_CHUNK, |x| x.next);
        }
        c
    }

    /// Entry `i` of `id`'s list.
    pub(crate) fn entry(&self, id: SubnetId, i: usize) -> Option<&Entry> {
        let s = self.slot(id)?;
        if i >= usize::from(s.meta.len) {
            return None;
        }
        if i < INLINE {
            return s.inline.get(i);
        }
        let c = self.chunk_at(s.meta.more, (i - INLINE) / CHUNK);
        self.chunks
            .get(c as usize)
            .map(|c| &c.e[(i - INLINE) % CHUNK])
    }

    pub(crate) fn entry_mut(&mut self, id: SubnetId, i: usize) -> Option<&mut Entry> {
        let (n, more) = {
            let s = self.slot(id)?;
            (usize::from(s.meta.len), s.meta.more)
        };
        if i >= n {
            return None;
        }
        if i < INLINE {
            return self.slot_mut(id).inline.get_mut(i);
        }
        let c = self.chunk_at(more, (i - INLINE) / CHUNK);
        self.chunks
            .get_mut(c as usize)
            .map(|c| &mut c.e[(i - INLINE) % CHUNK])
    }

    /// The position of the entry from link `l` in `id`'s list.
    pub(crate) fn position(&self, id: SubnetId, l: LinkSlot) -> Option<usize> {
        self.entries(id).position(|e| e.link == l)
    }

    fn alloc_chunk(&mut self, first: Entry) -> u32 {
        let c = Chunk {
            e: [first; CHUNK],
            next: NO_CHUNK,
        };
        if self.free_chunk != NO_CHUNK {
            let i = self.free_chunk;
            self.free_chunk = self.chunks[i as usize].next;
            self.chunks[i as usize] = c;
            return i;
        }
        // A quarter more at a time, not double: the pool holds a large share of a simulated
        // core's entries.
        if self.chunks.len() == self.chunks.capacity() {
            self.chunks.reserve_exact(self.chunks.len() / 4 + 16);
        }
        self.chunks.push(c);
        (self.chunks.len() - 1) as u32
    }

    fn release_chunk(&mut self, i: u32) {
        if let Some(c) = self.chunks.get_mut(i as usize) {
            c.next = self.free_chunk;
            self.free_chunk = i;
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
            expires: self.epoch.stamp(expires),
            rid,
            metric,
            seqno,
            link,
        };
        if self.first_expiry(id).is_none_or(|t| expires < t) {
            self.push_due(id, expires);
        }
        let slot = self.slot_mut(id);
        let n = usize::from(slot.meta.len);
        slot.meta.len = slot.meta.len.saturating_add(1);
        let more = slot.meta.more;
        if n < INLINE {
            slot.inline[n] = e;
        } else if (n - INLINE) % CHUNK == 0 {
            let c = self.alloc_chunk(e);
            if n == INLINE {
                self.slot_mut(id).meta.more = c;
            } else {
                let last = self.chunk_at(more, (n - INLINE) / CHUNK - 1);
                self.chunks[last as usize].next = c;
            }
        } else {
            let last = self.chunk_at(more, (n - INLINE) / CHUNK);
            self.chunks[last as usize].e[(n - INLINE) % CHUNK] = e;
        }
    }

    /// Removes entry `i` of `id`'s list, moving the last one into its place (as
    /// `Vec::swap_remove`). The list goes when its last entry does.
    pub(crate) fn swap_remove(&mut self, id: SubnetId, i: usize) -> Option<Entry> {
        let n = self.list_len(id);
        let e = *self.entry(id, i)?;
        let last = *self.entry(id, n - 1)?;
        if let Some(x) = self.entry_mut(id, i) {
            *x = last;
        }
        if let Some(x) = self.entry_mut(id, n - 1) {
            *x = Entry::EMPTY;
        }
        if n > INLINE && (n - 1 - INLINE) % CHUNK == 0 {
            // The last chunk is empty now.
            let more = self.slot(id).map_or(NO_CHUNK, |s| s.meta.more);
            let k = (n - 1 - INLINE) / CHUNK;
            let gone = self.chunk_at(more, k);
            if k == 0 {
                self.slot_mut(id).meta.more = NO_CHUNK;
            } else {
                let before = self.chunk_at(more, k - 1);
                self.chunks[before as usize].next = NO_CHUNK;
            }
            self.release_chunk(gone);
        }
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
        if let Some(e) = self.entry_mut(id, i) {
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

    /// When entry `e` expires.
    pub(crate) fn expires(&self, e: &Entry) -> Time {
        self.epoch.time(e.expires)
    }

    /// When `id` last flapped (for flap damping).
    pub(crate) fn last_trigger(&self, id: SubnetId) -> Option<Time> {
        self.meta(id)
            .and_then(|m| self.epoch.time_opt(m.last_trigger))
    }

    pub(crate) fn set_last_trigger(&mut self, id: SubnetId, t: Option<Time>) {
        let s = self.epoch.stamp_opt(t);
        self.meta_mut(id).last_trigger = s;
    }

    /// The theoretical arrival time of `id`'s triggered-update bucket.
    pub(crate) fn tat(&self, id: SubnetId) -> Time {
        self.meta(id).map_or(Time::ZERO, |m| self.epoch.time(m.tat))
    }

    pub(crate) fn set_tat(&mut self, id: SubnetId, t: Time) {
        let s = self.epoch.stamp(t);
        self.meta_mut(id).tat = s;
    }

    /// Moves the epoch to [`EPOCH_LAG`] before `now` once it trails by more than 30 minutes,
    /// so that stamps keep holding the times stored. Call before storing any time derived from
    /// `now`; costs a pass over the table every 20 minutes.
    pub(crate) fn rebase(&mut self, now: Time) {
        if now.saturating_since(self.epoch.0) <= EPOCH_LAG_MAX {
            return;
        }
        let new = Epoch::at(now);
        let by = new.0.as_micros() - self.epoch.0.as_micros();
        for s in self.shared.iter_mut().chain(self.own.iter_mut()) {
            for e in &mut s.inline {
                e.expires = e.expires.shift(by);
            }
            let m = &mut s.meta;
            m.last_trigger = m.last_trigger.shift(by);
            m.tat = m.tat.shift(by);
            m.fd_expires = m.fd_expires.shift(by);
        }
        for c in &mut self.chunks {
            for e in &mut c.e {
                e.expires = e.expires.shift(by);
            }
        }
        let heap = std::mem::take(&mut self.expiries).into_vec();
        self.expiries = heap
            .into_iter()
            .map(|Reverse(d)| {
                Reverse(Due {
                    at: d.at.shift(by),
                    id: d.id,
                })
            })
            .collect();
        self.epoch = new;
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
                expires: self.epoch.time(m.fd_expires),
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
        let epoch = self.epoch;
        let m = &mut self.slot_mut(id).meta;
        if m.fd_rid == rid {
            let mut fd = Fd {
                metric: m.fd_metric,
                seqno: m.fd_seqno,
                expires: epoch.time(m.fd_expires),
            };
            f(&mut fd);
            m.fd_metric = fd.metric;
            m.fd_seqno = fd.seqno;
            m.fd_expires = epoch.stamp(fd.expires);
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
            m.fd_expires = epoch.stamp(new.expires);
        } else {
            self.names.retain_subnet(id);
            self.more_sources.insert((id, rid), new);
        }
        true
    }

    /// Forgets the distances that expired by `now`.
    pub(crate) fn collect_sources(&mut self, now: Time) {
        let mut freed = Vec::new();
        let epoch = self.epoch;
        for (v, tag) in [(&mut self.shared, 0), (&mut self.own, LOCAL)] {
            for (i, s) in v.iter_mut().enumerate() {
                let m = &mut s.meta;
                if m.fd_rid != RidId::NONE && epoch.time(m.fd_expires) <= now {
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

    /// The earliest expiry among `id`'s entries.
    pub(crate) fn first_expiry(&self, id: SubnetId) -> Option<Time> {
        let epoch = self.epoch;
        self.entries(id)
            .map(|e| e.expires)
            .min()
            .map(|s| epoch.time(s))
    }

    /// Entry `i` of `id` expires at `t`; a timer is added if that brings the subnet's first
    /// expiry forward (the heap holds one no later than the old first expiry already).
    pub(crate) fn set_expires(&mut self, id: SubnetId, i: usize, t: Time) {
        let first = self.first_expiry(id);
        let stamp = self.epoch.stamp(t);
        if let Some(e) = self.entry_mut(id, i) {
            e.expires = stamp;
            if first.is_none_or(|f| t < f) {
                self.push_due(id, t);
            }
        }
    }

    /// Adds an expiry timer for `id` at `at`.
    pub(crate) fn push_due(&mut self, id: SubnetId, at: Time) {
        // Grow by a quarter rather than doubling: a simulated core's heap holds a timer for
        // nearly every node of the mesh.
        if self.expiries.len() == self.expiries.capacity() {
            self.expiries.reserve_exact(self.expiries.len() / 4 + 16);
        }
        self.expiries.push(Reverse(Due {
            at: self.epoch.stamp(at),
            id: id.0,
        }));
    }

    /// The time of the earliest expiry timer, if any.
    pub(crate) fn next_due(&self) -> Option<Time> {
        self.expiries.peek().map(|Reverse(d)| self.epoch.time(d.at))
    }

    /// Takes every expiry timer due at the earliest time if that is no later than `now`: that
    /// time, and the subnets with a route list, each once, in subnet order (the order of the
    /// per-entry timers these replace: timers of one instant ran by subnet, then link). A
    /// subnet's timer may be early or a duplicate; the caller expires what is due and adds a
    /// timer for the next expiry.
    pub(crate) fn due(&mut self, now: Time) -> Option<(Time, Vec<(Subnet, SubnetId)>)> {
        let at = self.expiries.peek()?.0.at;
        if self.epoch.time(at) > now {
            return None;
        }
        let mut v = Vec::new();
        while let Some(Reverse(d)) = self.expiries.peek().copied() {
            if d.at != at {
                break;
            }
            self.expiries.pop();
            let id = SubnetId(d.id);
            if self.has_list(id) {
                v.push((self.names.subnet(id), id));
            }
        }
        v.sort_unstable_by_key(|(s, _)| *s);
        v.dedup_by_key(|(s, _)| *s);
        Some((self.epoch.time(at), v))
    }

    /// Rebuilds the heap with one timer per list when stale or duplicate ones pile up.
    pub(crate) fn compact_timers_if_needed(&mut self) {
        if self.expiries.len() <= 2 * self.lists + 64 {
            return;
        }
        let mut v = Vec::with_capacity(self.lists);
        for id in self.list_ids() {
            if let Some(at) = self.entries(id).map(|e| e.expires).min() {
                v.push(Reverse(Due { at, id: id.0 }));
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
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Slot>(), 68);
        assert_eq!(std::mem::size_of::<Chunk>(), 36);
        assert_eq!(std::mem::size_of::<Reverse<Due>>(), 8);
    }

    #[test]
    fn entries_keep_vec_order_inline_and_spilled() {
        let mut t = RouteTable::new(address_from_public_key, Time::ZERO);
        let mut links = Vec::new();
        for l in 0..8 {
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
        let order = |t: &RouteTable| {
            let v: Vec<u16> = t.entries(id).map(|e| e.link.0).collect();
            let by_index: Vec<u16> = (0..t.list_len(id))
                .map(|i| t.entry(id, i).unwrap().link.0)
                .collect();
            assert_eq!(v, by_index);
            v
        };
        assert_eq!(order(&t), model);
        for i in [6, 1, 0, 4, 2, 0, 1] {
            t.swap_remove(id, i);
            model.swap_remove(i);
            assert_eq!(order(&t), model);
        }
        // Grows again into freed chunks.
        t.push(id, links[7], Metric(7), SeqNo(0), new_rid(&r), Time::ZERO);
        t.push(id, links[1], Metric(1), SeqNo(0), new_rid(&r), Time::ZERO);
        t.push(id, links[2], Metric(2), SeqNo(0), new_rid(&r), Time::ZERO);
        model.extend([7, 1, 2]);
        assert_eq!(order(&t), model);
        for _ in 0..3 {
            t.swap_remove(id, 0);
            model.swap_remove(0);
            assert_eq!(order(&t), model);
        }
        assert_eq!(t.entry_count(), 1);
        assert_eq!(t.len(), 1);
        t.swap_remove(id, 0);
        assert_eq!(t.len(), 0);
        // Every chunk is back on the free list.
        let mut free = 0;
        let mut c = t.free_chunk;
        while c != NO_CHUNK {
            free += 1;
            c = t.chunks[c as usize].next;
        }
        assert_eq!(free, t.chunks.len());
        assert_eq!(t.names.own_counts(), (0, 0), "every name freed");
    }

    #[test]
    fn a_second_router_id_goes_to_the_side_map_and_all_expire() {
        let mut t = RouteTable::new(address_from_public_key, Time::ZERO);
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
    fn times_survive_the_epoch_moving_and_old_ones_stay_old() {
        let mut t = RouteTable::new(address_from_public_key, Time::ZERO);
        let l = t.links.open(LinkId(1)).unwrap();
        let r = rid(1);
        let hour = Time::from_secs(3600);
        let exp = hour + std::time::Duration::from_micros(38 * 60 * 1_000_000 + 7);
        // The table is used at `hour` for the first time: the epoch moves before storing.
        t.rebase(hour);
        let id = t.create(sub(1), l, Metric(5), SeqNo(1), new_rid(&r), exp);
        let flap = Time::from_secs(3600 + 25 * 60);
        t.set_last_trigger(id, Some(flap));
        t.set_tat(id, flap + std::time::Duration::from_micros(3));
        // 31 minutes on the epoch moves to 10 minutes back; times since then are exact.
        let later = Time::from_secs(3600 + 31 * 60);
        t.rebase(later);
        assert_eq!(t.first_expiry(id), Some(exp));
        assert_eq!(t.next_due(), Some(exp));
        assert_eq!(t.last_trigger(id), Some(flap));
        assert_eq!(t.tat(id), flap + std::time::Duration::from_micros(3));
        // Two hours on, the flap is as old as the epoch (10 minutes), older than any window.
        let much_later = Time::from_secs(3 * 3600 + 31 * 60);
        t.rebase(much_later);
        let lt = t.last_trigger(id).unwrap();
        assert!(much_later.saturating_since(lt) >= EPOCH_LAG);
        assert!(t.first_expiry(id).unwrap() <= much_later, "still expired");
    }

    #[test]
    fn link_slots_outlive_their_link_while_named() {
        let mut t = RouteTable::new(address_from_public_key, Time::ZERO);
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
    fn due_timers_come_in_subnet_order_once_each() {
        let mut t = RouteTable::new(address_from_public_key, Time::ZERO);
        let l = t.links.open(LinkId(1)).unwrap();
        let l2 = t.links.open(LinkId(2)).unwrap();
        let r = rid(1);
        let at = Time::from_secs(5);
        let ids: Vec<_> = [3, 1, 2]
            .iter()
            .map(|&i| t.create(sub(i), l, Metric(5), SeqNo(1), new_rid(&r), at))
            .collect();
        // A later entry adds no timer; an earlier one does.
        t.push(
            ids[0],
            l2,
            Metric(5),
            SeqNo(1),
            new_rid(&r),
            Time::from_secs(9),
        );
        assert_eq!(t.timer_count(), 3);
        t.set_expires(ids[2], 0, Time::from_secs(4));
        assert_eq!(t.timer_count(), 4);
        assert_eq!(t.next_due(), Some(Time::from_secs(4)));
        let (when, v) = t.due(Time::from_secs(10)).unwrap();
        assert_eq!((when, v.len()), (Time::from_secs(4), 1));
        // The timer at 5 s for sub(2) is early now; it still comes, once.
        t.push_due(ids[1], at);
        let (when, v) = t.due(Time::from_secs(10)).unwrap();
        assert_eq!(when, at);
        assert_eq!(
            v.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![sub(1), sub(2), sub(3)]
        );
        assert!(t.due(Time::from_secs(10)).is_none());
    }
}
