//! The routing core: neighbours, link costs, sources and feasibility, route selection, requests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};
use wire::babel::{
    Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, SeqNoRequest, Subnet, Tlv, Update,
};

use crate::fib::{ForwardingTable, Lookup, NextHop, ShardKey, Slot};
use crate::names::{RidId, SharedNames, SubnetId};
use crate::routes::{Fd, LinkSlot, NewRid, RouteTable};
use crate::time::Time;
use crypto::{address_from_public_key, overlay};

/// Protocol constants (docs/protocol.md §5.10). Durations are what the core waits; `*_CS` are wire
/// fields.
pub mod consts {
    use std::time::Duration;

    pub const HELLO_INTERVAL: Duration = Duration::from_secs(20);
    pub const HELLO_INTERVAL_CS: u16 = 2000;
    pub const HELLO_FLAGS_UNICAST: u16 = 0x8000;
    pub const IHU_INTERVAL_CS: u16 = 6000;
    pub const DEAD_AFTER: Duration = Duration::from_secs(43);
    pub const DEAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);
    pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(300);
    pub const UPDATE_INTERVAL_CS: u16 = 30000;
    pub const RETRACTED_HOLD: Duration = Duration::from_secs(6);
    pub const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
    pub const RR_CACHE_TTL: Duration = Duration::from_secs(15);
    pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(15);
    /// A request is dropped when `generation + 1 >= MAX_RR_GENERATION`.
    pub const MAX_RR_GENERATION: u8 = 16;
    pub const SEQNO_BUMP_SPACING: Duration = Duration::from_secs(4);
    pub const SEQNO_CACHE_TTL: Duration = Duration::from_secs(60);
    pub const SNR_HOP_COUNT: u8 = 64;
    pub const SOURCE_TTL: Duration = Duration::from_secs(30 * 60);
    pub const BIG_METRIC_CHANGE: u16 = 10;
    pub const HYSTERESIS: u16 = 10;
    pub const INITIAL_LINK_COST: u16 = 1000;
    pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
    pub const SOURCE_GC_INTERVAL: Duration = Duration::from_secs(60);
    /// Link cost added for TCP over IPv6 / IPv4 (docs/protocol.md §3.1, §5.1).
    pub const STATIC_COST_TCP6: u16 = 10;
    pub const STATIC_COST_TCP4: u16 = 15;
    /// Link cost added for QUIC over IPv6 / IPv4 (docs/protocol.md §3.4).
    pub const STATIC_COST_QUIC6: u16 = 7;
    pub const STATIC_COST_QUIC4: u16 = 12;
}
use consts::*;

/// A peer connection, named by the shell. Ids must not be reused for a new connection while
/// the core may still remember the old one (use a counter): a route held for 6 s after a link
/// went down would otherwise be attributed to the new connection.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LinkId(pub u64);

/// Upper bounds on every table and queue. Whatever does not fit is dropped and counted in
/// [`Counters`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_links: usize,
    /// Distinct subnets in the routing table.
    pub max_subnets: usize,
    /// A link's share of the routing table: the subnets it may hold a route entry for. An
    /// Update that would give a link at its share an entry for one more subnet is refused
    /// (not stored, counted as `route_link_quota_full`), so one neighbour announcing a huge
    /// table (or forged routes) leaves room for everyone else's. Entries it has are updated as
    /// usual. The default, half of [`Limits::max_subnets`], lets a real full table through.
    pub max_subnets_per_link: usize,
    /// Feasibility distances (subnet, router-id).
    pub max_sources: usize,
    /// Subnets being queried at once.
    pub max_queries: usize,
    /// Slots of the query table only the node's own queries ([`Router::request_route`]) may
    /// take: queries caused by a link stop at `max_queries - queries_reserved_own`.
    pub queries_reserved_own: usize,
    /// A link's share of the query table: how many live queries it may have caused, in each
    /// of two classes kept apart so that a flood an honest neighbour relays cannot crowd out
    /// its own queries: its own RouteRequests (generation 0), and the RouteRequests it relays
    /// (generation 1 and up) together with the queries its traffic causes
    /// ([`Router::request_route_for_link`]).
    pub max_queries_per_link: usize,
    /// Sustained rate (per second) at which a link may start queries, in each class; 0 turns
    /// the limit off.
    pub link_query_rate: u32,
    /// Queries a link may start at once in each class before [`Limits::link_query_rate`]
    /// applies.
    pub link_query_burst: u32,
    /// Least time between two answers to wildcard RouteRequests (full-table dumps) on one link.
    /// The first is answered at once; requests within the hold-off get one dump at its end.
    pub wildcard_dump_holdoff: Duration,
    /// Least hold time of a finite route, whatever interval its Update carries (0 would make it
    /// expire at once).
    pub min_route_hold: Duration,
    /// Flap damping: a subnet with more flaps than this within [`Limits::flap_window`] is
    /// damped. A flap is a triggered update for a route acquired or lost, a new source or a
    /// worse metric (a better one is convergence, not counted); flaps less than a second apart
    /// count once. Whatever its flaps, a subnet sends triggered updates at one a second after a
    /// burst of four: one that comes sooner is held back and the subnet's state then goes out
    /// instead. 0 turns damping, and that holding back, off.
    pub flap_threshold: u32,
    /// At most 10 minutes (a longer window is cut to that).
    pub flap_window: Duration,
    /// A damped subnet's triggered updates are held back until it has not flapped for this
    /// long; then its current state (route or retraction) goes out once.
    pub flap_damping: Duration,
    /// Subnets whose recent instability is remembered for damping.
    pub max_flapping: usize,
    /// Subnets in the RouteRequest dedup cache.
    pub max_rr_cache: usize,
    /// (router-id, subnet, seqno) keys in the SeqNoRequest dedup cache.
    pub max_seqno_cache: usize,
    /// Requesters waiting for the answer to a forwarded SeqNoRequest.
    pub max_snr_waiters: usize,
    /// Sustained rate (per second) at which a link's SeqNoRequests may be forwarded, and the
    /// burst before it applies; 0 turns the limit off. Each forwarded one takes a slot of the
    /// seqno cache and of the waiters for 60 s, so this bounds one link's part of both
    /// (60 × rate + burst) and keeps room for everyone else's requests and our own.
    pub link_seqno_request_rate: u32,
    pub link_seqno_request_burst: u32,
    /// TLVs waiting in [`Router::poll_transmit`].
    pub max_transmits: usize,
    /// Events waiting in [`Router::poll_event`].
    pub max_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_links: 4096,
            max_subnets: 1 << 18,
            max_subnets_per_link: 1 << 17,
            max_sources: 1 << 19,
            max_queries: 1 << 14,
            queries_reserved_own: 1 << 10,
            max_queries_per_link: 512,
            link_query_rate: 50,
            link_query_burst: 400,
            wildcard_dump_holdoff: Duration::from_secs(60),
            min_route_hold: Duration::from_millis(3500),
            flap_threshold: 6,
            flap_window: Duration::from_secs(60),
            flap_damping: Duration::from_secs(60),
            max_flapping: 1 << 14,
            max_rr_cache: 1 << 14,
            max_seqno_cache: 1 << 16,
            max_snr_waiters: 1 << 14,
            link_seqno_request_rate: 50,
            link_seqno_request_burst: 400,
            max_transmits: 1 << 20,
            max_events: 1 << 16,
        }
    }
}

/// Everything the core needs to know about this node.
#[derive(Clone, Debug)]
pub struct Config {
    pub router_id: RouterId,
    /// The node's /64, announced with metric 0.
    pub own_subnet: Subnet,
    /// Address derivation used by the Update ownership filter; [`address_from_public_key`] by
    /// default.
    /// A parameter so that tests and simulations can stay cheap and deterministic.
    pub address_of: fn(&[u8; 32]) -> Ipv6Addr,
    pub limits: Limits,
    /// Record every subnet whose next hop changed, for [`Router::take_selection_changes`]
    /// (used by the simulator's loop check). Off by default; bounded by `limits.max_subnets`.
    pub record_selection_changes: bool,
    /// Secret that spreads subnets over the forwarding table's shards, so that a peer cannot
    /// choose keys whose subnets all land in one (see [`ForwardingTable`]). [`Config::new`]
    /// takes it from std's per-process random hash keys (what `HashMap::new` uses); nothing
    /// the core does depends on it but the cost of publishing a snapshot.
    pub fib_seed: u64,
    /// Keep the subnets changed since the last forwarding-table snapshot, so that the next one
    /// costs O(changes) (on by default). A core whose table is never taken (the simulator's
    /// thousands) turns it off: its list would grow to half the table before being dropped,
    /// in every core at once during a cold start. Off, a snapshot is built whole, and
    /// [`Router::forwarding_table_dirty`] always says yes.
    pub snapshot_changes: bool,
}

impl Config {
    pub fn new(router_id: RouterId, own_subnet: Subnet) -> Config {
        Config {
            router_id,
            own_subnet,
            address_of: address_from_public_key,
            limits: Limits::default(),
            record_selection_changes: false,
            fib_seed: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                0x6879_7068_615f_6669u64,
            ),
            snapshot_changes: true,
        }
    }
}

/// Something the shell must act on or may want to know.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// No IHU for 43 s: the core has forgotten the link; the shell must close the connection.
    LinkDead(LinkId),
    /// A subnet gained a selected route (queued packets can go).
    RouteAcquired(Subnet),
    /// A subnet lost its selected route.
    RouteLost(Subnet),
    /// A query (RouteRequest) got no answer within 15 s: queued packets get "no route".
    QueryTimedOut(Subnet),
}

/// Why an input was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkError {
    /// The id is already in use.
    Exists,
    /// `limits.max_links` reached.
    TooMany,
}

/// Counts of what the core received, and of everything it dropped or refused.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Counters {
    pub hello_rx: u64,
    pub ihu_rx: u64,
    pub update_rx: u64,
    pub route_request_rx: u64,
    /// RouteRequests we answered with an Update (our own /64 or a selected route).
    pub route_request_answered: u64,
    pub seqno_request_rx: u64,
    /// TLV from a link the core does not know (not up, or already declared dead).
    pub unknown_link: u64,
    /// IHU although no Hello was sent on that link.
    pub ihu_unsolicited: u64,
    /// Update with a non-IPv6 prefix, outside 400::/7 or shorter than /64.
    pub update_bad_prefix: u64,
    /// Update whose subnet does not contain its router-id's address.
    pub update_bad_owner: u64,
    /// Update for our own subnet.
    pub update_own_subnet: u64,
    pub update_unfeasible: u64,
    /// Retraction for a route we do not have or already hold as retracted.
    pub update_retraction_ignored: u64,
    pub route_table_full: u64,
    /// Update for a subnet new to its link refused: the link holds entries for its share of
    /// the table ([`Limits::max_subnets_per_link`]).
    pub route_link_quota_full: u64,
    pub source_table_full: u64,
    /// RouteRequest for IPv4, link-local, a short prefix or outside 400::/7.
    pub route_request_bad_prefix: u64,
    pub route_request_generation_limit: u64,
    /// RouteRequest not forwarded to a peer that got the same one recently.
    pub route_request_dedup: u64,
    /// Query not started: the table is full (for a query caused by a link: all but the slots
    /// reserved for our own queries are taken).
    pub query_table_full: u64,
    /// Query caused by a link not started: that link's share of the query table is full.
    pub query_link_share_full: u64,
    /// Query caused by a link not started: that link's rate was exceeded.
    pub query_rate_limited: u64,
    /// Wildcard RouteRequest not answered at once: within the link's dump hold-off (all such
    /// requests of one hold-off are answered by one dump at its end).
    pub wildcard_dump_deferred: u64,
    /// Finite Update whose interval gave a hold time below the minimum (raised to it).
    pub update_short_hold: u64,
    /// Triggered update held back because its subnet is damped for flapping, or because it
    /// came sooner than the subnet's update rate allows (one a second after a burst).
    pub update_damped: u64,
    /// Subnet that started to flap but could not be remembered for damping (table full).
    pub flap_table_full: u64,
    pub rr_cache_full: u64,
    pub seqno_request_bad_prefix: u64,
    pub seqno_request_hop_zero: u64,
    /// SeqNoRequest dropped (received) or not originated (local) because of the 60 s cache.
    pub seqno_request_dup: u64,
    /// Bump refused: last one less than 4 s ago.
    pub seqno_bump_rate_limited: u64,
    /// Bump not needed: requested seqno not above ours (no reply, as the protocol does).
    pub seqno_request_stale_own: u64,
    pub seqno_request_no_forward: u64,
    /// SeqNoRequest not forwarded: its link's rate was exceeded
    /// ([`Limits::link_seqno_request_rate`]).
    pub seqno_request_rate_limited: u64,
    pub seqno_cache_full: u64,
    pub snr_waiters_full: u64,
    pub seqno_bumps: u64,
    pub transmit_dropped: u64,
    pub event_dropped: u64,
    pub links_refused: u64,
    pub selection_changes_dropped: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    Hello(LinkId),
    DeadCheck,
    Announce,
    Housekeeping,
    SourceGc,
    // Route expiry timers (per subnet) live in the route table; they run here, between
    // `SourceGc` and `Query` timers due at the same instant (see `Timer::runs_before_expiry`).
    Query(Subnet),
    /// End of a link's wildcard-dump hold-off with a dump pending.
    Dump(LinkId),
    /// A damped subnet may be quiet long enough, or a subnet's update rate lets a held-back
    /// triggered update go out.
    Undamp(Subnet),
}

impl Timer {
    /// Whether this timer runs before route expiry timers due at the same instant: the order
    /// of the variants when expiry timers were among them, kept so that outputs keep their
    /// order.
    fn runs_before_expiry(&self) -> bool {
        matches!(
            self,
            Timer::Hello(_)
                | Timer::DeadCheck
                | Timer::Announce
                | Timer::Housekeeping
                | Timer::SourceGc
        )
    }
}

#[derive(Debug)]
struct Link {
    /// How route entries name this link.
    slot: LinkSlot,
    static_cost: u16,
    smoothed: u16,
    last_ihu: Time,
    last_hello: Option<Time>,
    hello_seqno: SeqNo,
    next_hello: Time,
    /// Queries caused by its own RouteRequests, and by those it relays and its traffic: kept
    /// apart so that a flood an honest neighbour relays does not crowd out its own queries.
    own_queries: Quota,
    relayed_queries: Quota,
    /// When the last wildcard dump went to it, and whether a request waits for the next.
    last_dump: Option<Time>,
    dump_pending: bool,
    /// SeqNoRequests from it that were forwarded ([`Limits::link_seqno_request_rate`]).
    seqno_requests: Bucket,
    /// What it was refused ([`LinkStats`]).
    routes_refused: u64,
    seqno_requests_refused: u64,
}

/// A token bucket in its virtual-scheduling form (GCRA): a theoretical arrival time that each
/// admitted event pushes `1/rate` later, refused when it runs more than `burst` events ahead.
/// Integer microseconds, no clock: `now` comes in.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tat: Time,
}

impl Bucket {
    /// Microseconds between two events at `rate`, and how far ahead `burst` lets it run.
    fn step_ahead(rate: u32, burst: u32) -> (u64, u64) {
        let step = (1_000_000 / u64::from(rate)).max(1);
        (step, step.saturating_mul(u64::from(burst.max(1) - 1)))
    }

    fn admit(&mut self, rate: u32, burst: u32, now: Time) -> bool {
        if rate == 0 {
            return true;
        }
        let (step, ahead) = Self::step_ahead(rate, burst);
        let tat = self.tat.max(now);
        if tat.as_micros() - now.as_micros() > ahead {
            return false;
        }
        self.tat = Time::from_micros(tat.as_micros().saturating_add(step));
        true
    }

    /// The earliest time at which [`Bucket::admit`] will admit an event.
    fn next_admit(&self, rate: u32, burst: u32) -> Time {
        if rate == 0 {
            return Time::ZERO;
        }
        let (_, ahead) = Self::step_ahead(rate, burst);
        Time::from_micros(self.tat.as_micros().saturating_sub(ahead))
    }
}

/// One class of queries a link causes: how many are live (its share of the query table) and
/// how fast new ones may come.
#[derive(Clone, Copy, Debug, Default)]
struct Quota {
    live: usize,
    rate: Bucket,
}

/// A subnet being queried: when the query times out, and who it is charged to.
#[derive(Clone, Copy, Debug)]
struct Query {
    expires: Time,
    by: Charge,
}

/// Flaps of one subnet closer together than this count once: after a failure Babel explores
/// alternative paths, and a route's metric may go up and down several times within a fraction
/// of a second before it settles. Flapping faster than this is damped all the same (each
/// second of it counts).
const FLAP_COALESCE: Duration = Duration::from_secs(1);

/// Triggered updates of one subnet per second (one per [`FLAP_COALESCE`]), after a burst of
/// [`TRIGGER_BURST`]: one that comes sooner is held back, and the subnet's state then goes out
/// once when the rate allows. The burst lets convergence through untouched (a route acquired,
/// then a better path, then a new source, within a fraction of a second); a route flapping
/// faster gets one update a second out of us until damping takes over.
const TRIGGER_RATE: u32 = 1;
const TRIGGER_BURST: u32 = 4;

/// Flap-damping memory of a subnet that flapped twice within the window, or that had a
/// triggered update held back by [`TRIGGER_RATE`].
#[derive(Clone, Copy, Debug)]
struct Flap {
    window_start: Time,
    /// The last flap counted.
    last: Option<Time>,
    /// Flaps in the current window.
    count: u32,
    /// While damped: until when (pushed later by every flap meanwhile).
    damped_until: Option<Time>,
    /// While not damped and an update is held back (see [`Router::held`]): when the rate lets
    /// the current state go out.
    held_until: Option<Time>,
    /// An update was held back: the current state goes out when damping (or the hold) ends.
    pending: bool,
}

impl Link {
    fn cost(&self) -> Metric {
        Metric(self.smoothed).saturating_add(Metric(self.static_cost))
    }
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    link: LinkId,
    router_id: RouterId,
    seqno: SeqNo,
    expires: Time,
}

/// Count of subnets per prefix length, so longest-prefix lookups probe only lengths in use
/// (normally just /64), found through a bitmask rather than a scan of all 129 lengths.
#[derive(Clone, Debug)]
pub(crate) struct PlenIndex {
    counts: [u32; 129],
    mask: [u64; 3],
}

impl Default for PlenIndex {
    fn default() -> Self {
        PlenIndex {
            counts: [0; 129],
            mask: [0; 3],
        }
    }
}

impl PlenIndex {
    /// As `add`; true if `plen` was not in use before.
    pub(crate) fn add_pub(&mut self, plen: u8) -> bool {
        let before = self.mask;
        self.add(plen);
        self.mask != before
    }
    fn add(&mut self, plen: u8) {
        let p = usize::from(plen);
        if let Some(c) = self.counts.get_mut(p) {
            *c += 1;
            self.mask[p / 64] |= 1 << (p % 64);
        }
    }
    /// As `remove`; true if `plen` is no longer in use.
    pub(crate) fn remove_pub(&mut self, plen: u8) -> bool {
        let before = self.mask;
        self.remove(plen);
        self.mask != before
    }
    fn remove(&mut self, plen: u8) {
        let p = usize::from(plen);
        if let Some(c) = self.counts.get_mut(p) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.mask[p / 64] &= !(1 << (p % 64));
            }
        }
    }
    /// Prefix lengths in use, longest first.
    pub(crate) fn lengths(&self) -> PlenIter {
        PlenIter {
            mask: self.mask,
            word: 3,
        }
    }
}

pub(crate) struct PlenIter {
    mask: [u64; 3],
    /// One past the word being drained.
    word: usize,
}

impl Iterator for PlenIter {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        while self.word > 0 {
            let w = self.word - 1;
            let bits = self.mask[w];
            if bits == 0 {
                self.word -= 1;
                continue;
            }
            let top = 63 - bits.leading_zeros() as usize;
            self.mask[w] &= !(1u64 << top);
            return u8::try_from(w * 64 + top).ok();
        }
        None
    }
}

/// One route as shown by the admin API.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RouteInfo {
    pub subnet: Subnet,
    pub next_hop: LinkId,
    /// Metric advertised by the next hop.
    pub metric: Metric,
    /// `metric` plus our current cost to the next hop (what selection compares).
    pub total: Metric,
    pub seqno: SeqNo,
    pub router_id: RouterId,
    pub expires_in: Duration,
}

/// What a route table holds ([`Router::table_sizes`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TableSizes {
    /// Subnets with routes.
    pub subnets: usize,
    /// Subnets with a selected route.
    pub selected: usize,
    /// Routes (one per subnet and neighbour that advertised it).
    pub entries: usize,
    /// Feasibility distances.
    pub sources: usize,
    /// Subnets and router-ids the core keeps names for itself (not in a shared table).
    pub own_subnets: usize,
    pub own_router_ids: usize,
}

/// What one neighbour put in the routing table, and what it was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LinkStats {
    /// Subnets it holds a route entry for (against [`Limits::max_subnets_per_link`]).
    pub subnets: usize,
    /// Updates for subnets new to it refused because it was at that share.
    pub routes_refused: u64,
    /// SeqNoRequests from it not forwarded because of its rate
    /// ([`Limits::link_seqno_request_rate`]).
    pub seqno_requests_refused: u64,
}

/// One neighbour as shown by the admin API.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LinkInfo {
    pub link: LinkId,
    /// Smoothed round-trip part plus static transport cost.
    pub cost: Metric,
    pub static_cost: u16,
    pub since_last_ihu: Duration,
}

enum Targets {
    One(LinkId),
    Advertisers,
}

/// Who a query is charged to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Charge {
    /// The node itself (may use the reserved slots).
    Own,
    /// A neighbour's own RouteRequest (generation 0).
    Neighbour(LinkId),
    /// A RouteRequest the neighbour relays, or traffic that arrived from it.
    Relayed(LinkId),
}

/// The routing state machine of one node.
///
/// # Call order
///
/// The core never does I/O and never reads a clock. The owner (one task in the shell, or the
/// simulator) feeds it inputs and then drains its outputs:
///
/// 1. Create it with [`Router::new`].
/// 2. On every input call the matching `handle_*` method with the current time:
///    [`handle_link_up`](Router::handle_link_up) when a peer connection is established,
///    [`handle_link_down`](Router::handle_link_down) when it closed,
///    [`handle_tlv`](Router::handle_tlv) for every decoded control TLV,
///    [`request_route`](Router::request_route) when the data path needs a destination (also
///    for destinations in use, every few seconds: that is how routes near expiry are refreshed)
///    for the node's own traffic, [`request_route_for_link`](Router::request_route_for_link)
///    for an address in traffic that arrived on a link, and [`handle_timeout`](Router::handle_timeout) when the deadline returned by
///    [`poll_timeout`](Router::poll_timeout) has passed.
/// 3. Then drain [`poll_transmit`](Router::poll_transmit) (send each TLV on its link, one TLV
///    per babel packet) and [`poll_event`](Router::poll_event) (close links reported dead, release
///    or fail queued packets), publish [`forwarding_table_if_changed`](Router::forwarding_table_if_changed)
///    if it returns one, and wait for the next input or for [`poll_timeout`](Router::poll_timeout).
///
/// Times passed in must not go backwards; a time earlier than one already seen is treated as
/// that earlier instant and never makes the core panic.
pub struct Router {
    cfg: Config,
    seqno: SeqNo,
    last_bump: Option<Time>,
    links: BTreeMap<LinkId, Link>,
    /// Route lists, feasibility distances and their expiry timers, by interned name
    /// (`routes.rs`).
    routes: RouteTable,
    route_plens: PlenIndex,
    queries: FxHashMap<Subnet, Query>,
    query_plens: PlenIndex,
    /// Queries charged to links (live or gone), against `max_queries - queries_reserved_own`.
    link_queries: usize,
    flaps: FxHashMap<Subnet, Flap>,
    rr_cache: FxHashMap<Subnet, Vec<(LinkId, u8, Time)>>,
    seqno_cache: FxHashMap<(RouterId, Subnet, SeqNo), Time>,
    snr_waiters: FxHashMap<Subnet, Vec<Waiter>>,
    waiter_count: usize,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    next_dead_check: Time,
    next_announce: Time,
    next_housekeeping: Time,
    next_source_gc: Time,
    transmits: VecDeque<(LinkId, Tlv)>,
    events: VecDeque<Event>,
    counters: Counters,
    /// Subnets whose forwarding slot changed since the last snapshot (see `fwd_touch`). At most
    /// half the route table (or 1,024, and never more than `max_subnets`): beyond that applying
    /// them would cost about as much as building the table whole, so `fwd_rebuild` is set
    /// instead and the set freed; a core whose table no one takes (the simulator's) keeps no
    /// list of changes.
    pub(crate) fwd_dirty: FxHashSet<Subnet>,
    fwd_rebuild: bool,
    fwd_generation: u64,
    /// The last snapshot published; the next one is this one with the dirty subnets applied.
    fwd: Arc<ForwardingTable>,
    changes: Vec<Subnet>,
}

fn push_tx(
    tx: &mut VecDeque<(LinkId, Tlv)>,
    counters: &mut Counters,
    limit: usize,
    link: LinkId,
    tlv: Tlv,
) {
    if tx.len() >= limit {
        counters.transmit_dropped += 1;
    } else {
        tx.push_back((link, tlv));
    }
}

fn hold_time(interval_cs: u16) -> Duration {
    // 3.5 × interval, interval in centiseconds: 35 ms per unit.
    Duration::from_millis(u64::from(interval_cs) * 35)
}

/// What the data path needs of a subnet: its selected route, and the key of its owner (the
/// selected route's router, else any finite route's).
fn fwd_slot(t: &RouteTable, id: SubnetId) -> Option<Slot> {
    let m = t.meta(id)?;
    let sel = m
        .selected()
        .and_then(|l| t.entries(id).find(|e| e.link == l))
        .map(|e| NextHop {
            link: t.links.id(e.link),
            router_id: t.names.rid(e.rid),
        });
    let key = t
        .entries(id)
        .find(|e| !e.metric.is_infinite())
        .map(|e| t.names.rid(e.rid));
    Some(Slot::new(sel, key))
}

impl Router {
    pub fn new(mut cfg: Config, now: Time) -> Router {
        // The route table keeps the last flap of a subnet only as far back as this.
        cfg.limits.flap_window = cfg.limits.flap_window.min(crate::routes::EPOCH_LAG);
        let fwd = Arc::new(ForwardingTable::empty(
            cfg.own_subnet,
            ShardKey::new(cfg.fib_seed),
        ));
        let routes = RouteTable::new(cfg.address_of, now);
        let snapshot_changes = cfg.snapshot_changes;
        let mut r = Router {
            cfg,
            seqno: SeqNo(0),
            last_bump: None,
            links: BTreeMap::new(),
            routes,
            route_plens: PlenIndex::default(),
            queries: FxHashMap::default(),
            query_plens: PlenIndex::default(),
            link_queries: 0,
            flaps: FxHashMap::default(),
            rr_cache: FxHashMap::default(),
            seqno_cache: FxHashMap::default(),
            snr_waiters: FxHashMap::default(),
            waiter_count: 0,
            timers: BinaryHeap::new(),
            next_dead_check: now + DEAD_CHECK_INTERVAL,
            next_announce: now + ANNOUNCE_INTERVAL,
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            next_source_gc: now + SOURCE_GC_INTERVAL,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            fwd_dirty: FxHashSet::default(),
            // Off, every snapshot is built whole (and no change is noted before one is).
            fwd_rebuild: !snapshot_changes,
            fwd_generation: 0,
            fwd,
            changes: Vec::new(),
        };
        r.timers
            .push(Reverse((r.next_dead_check, Timer::DeadCheck)));
        r.timers.push(Reverse((r.next_announce, Timer::Announce)));
        r.timers
            .push(Reverse((r.next_housekeeping, Timer::Housekeeping)));
        r.timers.push(Reverse((r.next_source_gc, Timer::SourceGc)));
        r
    }

    // ----------------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------------

    /// A peer connection is up. `static_cost` is the transport's cost
    /// ([`consts::STATIC_COST_TCP6`] / [`consts::STATIC_COST_TCP4`]). Sends our /64, a
    /// RouteRequest for each subnet being queried, and a first Hello at once.
    pub fn handle_link_up(
        &mut self,
        link: LinkId,
        static_cost: u16,
        now: Time,
    ) -> Result<(), LinkError> {
        self.routes.rebase(now);
        if self.links.contains_key(&link) {
            self.counters.links_refused += 1;
            return Err(LinkError::Exists);
        }
        if self.links.len() >= self.cfg.limits.max_links {
            self.counters.links_refused += 1;
            return Err(LinkError::TooMany);
        }
        // Every slot is taken only if 65,535 links (open, or gone with routes still held) are.
        let Some(slot) = self.routes.links.open(link) else {
            self.counters.links_refused += 1;
            return Err(LinkError::TooMany);
        };
        self.links.insert(
            link,
            Link {
                slot,
                static_cost,
                smoothed: INITIAL_LINK_COST,
                last_ihu: now,
                last_hello: None,
                hello_seqno: SeqNo(0),
                next_hello: now,
                own_queries: Quota::default(),
                relayed_queries: Quota::default(),
                last_dump: None,
                dump_pending: false,
                seqno_requests: Bucket::default(),
                routes_refused: 0,
                seqno_requests_refused: 0,
            },
        );
        self.timers.push(Reverse((now, Timer::Hello(link))));
        let own = self.own_update();
        self.tx(link, Tlv::Update(own));
        let mut queried: Vec<Subnet> = self.queries.keys().copied().collect();
        queried.sort_unstable();
        for s in queried {
            self.tx(
                link,
                Tlv::RouteRequest(RouteRequest {
                    generation: 0,
                    prefix: Prefix::V6(s),
                }),
            );
        }
        Ok(())
    }

    /// The connection closed: the link is gone at once. Unknown links are ignored.
    pub fn handle_link_down(&mut self, link: LinkId, now: Time) {
        self.routes.rebase(now);
        self.drop_link(link, now);
    }

    /// One control TLV received on `link`.
    pub fn handle_tlv(&mut self, link: LinkId, tlv: &Tlv, now: Time) {
        self.routes.rebase(now);
        if !self.links.contains_key(&link) {
            self.counters.unknown_link += 1;
            return;
        }
        match tlv {
            Tlv::Hello(_) => self.on_hello(link),
            Tlv::Ihu(_) => self.on_ihu(link, now),
            Tlv::Update(u) => self.on_update(link, u, now),
            Tlv::RouteRequest(rr) => self.on_route_request(link, rr, now),
            Tlv::SeqNoRequest(snr) => self.on_seqno_request(link, snr, now),
        }
        // Shortened expiries push extra timers; keep the heap bounded even if the shell is
        // slow to call handle_timeout.
        self.compact_timers_if_needed();
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.routes.rebase(now);
        // Two queues merged in time order: the timers here and the route table's expiry
        // timers, which come out one instant at a time, in subnet order.
        let mut expiring = Vec::new().into_iter();
        let mut expiring_at = Time::ZERO;
        loop {
            if expiring.len() == 0 {
                if let Some((at, due)) = self.routes.due(now) {
                    expiring_at = at;
                    expiring = due.into_iter();
                }
            }
            let other = self
                .timers
                .peek()
                .map(|&Reverse((t, timer))| (t, timer))
                .filter(|&(t, _)| t <= now);
            let run_other = match (other, expiring.len() > 0) {
                (None, false) => break,
                (Some(_), false) => true,
                (None, true) => false,
                (Some((t, timer)), true) => {
                    t < expiring_at || (t == expiring_at && timer.runs_before_expiry())
                }
            };
            if run_other {
                if let Some(Reverse((_, timer))) = self.timers.pop() {
                    self.on_timer(timer, now);
                }
            } else if let Some((subnet, id)) = expiring.next() {
                self.on_expiry(subnet, id, now);
            }
        }
        self.compact_timers_if_needed();
    }

    /// The data path needs `dst` for the node's own traffic (from the TUN). Starts a query
    /// (RouteRequest for `dst/64` to every peer) if nothing is known, asks for a new seqno if
    /// only unselected routes exist, and refreshes a selected route that expires within 15 s.
    /// Cheap when there is nothing to do. A new query may use the whole query table, including
    /// the slots reserved for the node's own queries ([`Limits::queries_reserved_own`]).
    pub fn request_route(&mut self, dst: Ipv6Addr, now: Time) {
        self.request(dst, None, now);
    }

    /// As [`Router::request_route`], for an address seen in traffic that arrived on `link` (the
    /// source of a frame whose sender is unknown, the destination of a frame to relay). A new
    /// query is charged to `link`: it counts against the link's share of the query table
    /// ([`Limits::max_queries_per_link`]) and its rate for relayed queries
    /// ([`Limits::link_query_rate`], [`Limits::link_query_burst`]), never uses the slots
    /// reserved for our own queries, and is refused and counted (`query_link_share_full`,
    /// `query_rate_limited`, `query_table_full`) beyond them. Refreshes and seqno requests for
    /// known subnets are not charged (they have their own per-subnet limits). A link the core
    /// does not know (already closed) starts nothing and is counted as `unknown_link`.
    pub fn request_route_for_link(&mut self, dst: Ipv6Addr, link: LinkId, now: Time) {
        if !self.links.contains_key(&link) {
            self.counters.unknown_link += 1;
            return;
        }
        self.request(dst, Some(link), now);
    }

    fn request(&mut self, dst: Ipv6Addr, by: Option<LinkId>, now: Time) {
        self.routes.rebase(now);
        if !overlay().contains_addr(dst) || self.cfg.own_subnet.contains_addr(dst) {
            return;
        }
        if let Some((subnet, id)) = self.longest_route_match(dst) {
            let Some(meta) = self.routes.meta(id) else {
                return;
            };
            let mut entries = self.routes.entries(id);
            match meta
                .selected()
                .and_then(|l| entries.clone().find(|e| e.link == l))
            {
                Some(e) => {
                    let near = self.routes.expires(e).saturating_since(now) < REFRESH_BEFORE_EXPIRY;
                    let recently = self
                        .routes
                        .refresh_sent(id)
                        .is_some_and(|t| now.saturating_since(t) < REFRESH_BEFORE_EXPIRY);
                    if near && !recently {
                        self.routes.set_refresh_sent(id, now);
                        self.send_rr_to_all(subnet, 0, None, now);
                    }
                }
                None => {
                    let rid = entries.find(|e| !e.metric.is_infinite());
                    if let Some(rid) = rid.map(|e| self.routes.names.rid(e.rid)) {
                        self.originate_snr(subnet, rid, Targets::Advertisers, now);
                    }
                }
            }
            return;
        }
        let subnet = Subnet::slash64(dst);
        if self.queries.contains_key(&subnet) {
            return;
        }
        let charge = by.map_or(Charge::Own, Charge::Relayed);
        if self.mark_queried(subnet, charge, now) {
            self.send_rr_to_all(subnet, 0, None, now);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------------------

    /// Next TLV to send, and the link to send it on.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, Tlv)> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Router::handle_timeout`] must be called next. Can be early (a timer that turned
    /// out to have nothing to do), never late.
    pub fn poll_timeout(&self) -> Option<Time> {
        let other = self.timers.peek().map(|Reverse((t, _))| *t);
        match (other, self.routes.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A new snapshot if the forwarding state (a selected route, or the key owner of a subnet)
    /// changed since the last one was taken.
    pub fn forwarding_table_if_changed(&mut self) -> Option<Arc<ForwardingTable>> {
        let generation = self.fwd_generation;
        self.apply_fwd_changes();
        (self.fwd_generation != generation).then(|| self.fwd.clone())
    }

    /// Whether a snapshot taken now would differ from the last one (or, rarely, a change was
    /// undone since: then [`Router::forwarding_table_if_changed`] says `None`).
    pub fn forwarding_table_dirty(&self) -> bool {
        self.fwd_rebuild || !self.fwd_dirty.is_empty()
    }

    /// The current snapshot. Only the subnets that changed since the last one are applied to
    /// it, copying only the shards they fall in that an earlier snapshot still holds (see
    /// [`ForwardingTable`]): O(changes), not O(table).
    pub fn forwarding_table(&mut self) -> Arc<ForwardingTable> {
        self.apply_fwd_changes();
        self.fwd.clone()
    }

    /// A new snapshot built from the whole route table, as every snapshot was before they were
    /// updated in place: the reference that tests compare the incremental table with, and the
    /// "before" of the benchmarks. Not for the node.
    #[doc(hidden)]
    pub fn forwarding_table_rebuilt(&mut self) -> Arc<ForwardingTable> {
        self.fwd_dirty.clear();
        self.fwd_rebuild = !self.cfg.snapshot_changes;
        self.fwd_generation += 1;
        self.fwd = Arc::new(self.fwd_build(self.fwd_generation));
        self.fwd.clone()
    }

    /// The last snapshot published, without applying anything.
    #[cfg(test)]
    pub(crate) fn fwd_published(&self) -> &ForwardingTable {
        &self.fwd
    }

    /// The table of the current route table, built from scratch.
    pub(crate) fn fwd_build(&self, generation: u64) -> ForwardingTable {
        let t = &self.routes;
        let entries = t
            .list_ids()
            .filter_map(|id| Some((t.names.subnet(id), fwd_slot(t, id)?)));
        ForwardingTable::build(
            generation,
            self.cfg.own_subnet,
            ShardKey::new(self.cfg.fib_seed),
            entries,
        )
    }

    fn apply_fwd_changes(&mut self) {
        if self.fwd_rebuild {
            self.forwarding_table_rebuilt();
            return;
        }
        if self.fwd_dirty.is_empty() {
            return;
        }
        let mut changed = false;
        for s in self.fwd_dirty.drain() {
            let slot = self
                .routes
                .list_id(&s)
                .and_then(|id| fwd_slot(&self.routes, id));
            if self.fwd.get(&s) == slot.as_ref() {
                continue;
            }
            // The first change copies the table's shard array (unless no one else holds the
            // snapshot any more); `set` copies a shard the first time it changes one.
            changed |= Arc::make_mut(&mut self.fwd).set(s, slot);
        }
        // A burst (a peer announcing its table) need not keep its dirty set's memory.
        self.fwd_dirty.shrink_to(1024);
        if changed {
            self.fwd_generation += 1;
            let generation = self.fwd_generation;
            Arc::make_mut(&mut self.fwd).set_generation(generation);
        }
    }

    /// `subnet` went through selection or lost an entry (everything that changes an entry ends
    /// in one of the two): it joins the changes for the next snapshot if its slot now differs
    /// from the last snapshot's. Comparing here rather than only when publishing keeps
    /// [`Router::forwarding_table_dirty`] exact for the many Updates that only refresh a route.
    fn fwd_touch(&mut self, subnet: Subnet) {
        if self.fwd_rebuild {
            return;
        }
        let slot = self
            .routes
            .list_id(&subnet)
            .and_then(|id| fwd_slot(&self.routes, id));
        if self.fwd.get(&subnet) == slot.as_ref() {
            // Unchanged, or changed back: if it is in the set already, publishing skips it.
            return;
        }
        let cap = (self.routes.len() / 2)
            .max(1024)
            .min(self.cfg.limits.max_subnets);
        if self.fwd_dirty.len() >= cap && !self.fwd_dirty.contains(&subnet) {
            self.fwd_dirty = FxHashSet::default();
            self.fwd_rebuild = true;
            return;
        }
        self.fwd_dirty.insert(subnet);
    }

    // ----------------------------------------------------------------------------------------
    // Queries
    // ----------------------------------------------------------------------------------------

    pub fn router_id(&self) -> RouterId {
        self.cfg.router_id
    }
    pub fn seqno(&self) -> SeqNo {
        self.seqno
    }
    pub fn own_subnet(&self) -> Subnet {
        self.cfg.own_subnet
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where a packet for `dst` goes, from the live state.
    pub fn lookup(&self, dst: Ipv6Addr) -> Lookup {
        if self.cfg.own_subnet.contains_addr(dst) {
            return Lookup::Local;
        }
        if let Some((_, id)) = self.longest_route_match(dst) {
            let t = &self.routes;
            if let Some(e) = t
                .meta(id)
                .and_then(|m| m.selected())
                .and_then(|l| t.entries(id).find(|e| e.link == l))
            {
                return Lookup::Route(NextHop {
                    link: t.links.id(e.link),
                    router_id: t.names.rid(e.rid),
                });
            }
            return Lookup::NoRoute;
        }
        for p in self.query_plens.lengths() {
            if let Some(s) = Subnet::new(dst, p) {
                if self.queries.contains_key(&s) {
                    return Lookup::Resolving;
                }
            }
        }
        Lookup::Unknown
    }

    /// The public key for packets from `src`: longest match over all routes, selected or not.
    pub fn lookup_source_key(&self, src: Ipv6Addr) -> Option<[u8; 32]> {
        self.lookup_source(src).map(|(_, k)| k)
    }

    /// The subnet a packet from `src` comes from (longest match over all routes) and the public
    /// key that authenticates it.
    pub fn lookup_source(&self, src: Ipv6Addr) -> Option<(Subnet, [u8; 32])> {
        let (s, id) = self.longest_route_match(src)?;
        let t = &self.routes;
        let mut list = t.entries(id);
        let sel = t
            .meta(id)?
            .selected()
            .and_then(|l| list.clone().find(|e| e.link == l));
        sel.or_else(|| list.find(|e| !e.metric.is_infinite()))
            .map(|e| (s, t.names.rid(e.rid).public_key()))
    }

    /// Next hop of the selected route for exactly `subnet`.
    pub fn selected_next_hop(&self, subnet: &Subnet) -> Option<LinkId> {
        let id = self.routes.list_id(subnet)?;
        let sel = self.routes.meta(id)?.selected()?;
        Some(self.routes.links.id(sel))
    }

    /// Shares `names` with other cores in this process (the simulator's): the route table then
    /// names the subnets and router-ids in it by their shared ids and holds no copy of its own.
    /// A table given later must extend the one before (names added at the end, never
    /// changed), since the core's state is indexed by those ids.
    pub(crate) fn share_names(&mut self, names: Arc<SharedNames>) {
        self.routes.names.share(names);
    }

    /// How much the route table holds, for tests, metrics and the simulator's report.
    pub fn table_sizes(&self) -> TableSizes {
        let t = &self.routes;
        let (own_subnets, own_router_ids) = t.names.own_counts();
        TableSizes {
            subnets: t.len(),
            selected: t
                .list_ids()
                .filter(|&id| t.meta(id).is_some_and(|m| m.selected().is_some()))
                .count(),
            entries: t.entry_count(),
            sources: t.source_count(),
            own_subnets,
            own_router_ids,
        }
    }

    /// How many routes are selected and how many are held as fallbacks, without listing them
    /// (the counts [`Router::selected_routes`] and [`Router::fallback_routes`] would have).
    pub fn route_counts(&self) -> (usize, usize) {
        let selected = self.table_sizes().selected;
        (selected, self.routes.entry_count() - selected)
    }

    /// Calls `f` with every selected route (`selected`), or every route not selected, in no
    /// particular order: a listing without a vector of all of them first.
    pub fn for_each_route(&self, now: Time, selected: bool, mut f: impl FnMut(RouteInfo)) {
        let t = &self.routes;
        for id in t.list_ids() {
            let s = t.names.subnet(id);
            let sel = t.meta(id).and_then(|m| m.selected());
            for e in t.entries(id) {
                if (sel == Some(e.link)) != selected {
                    continue;
                }
                let link = t.links.id(e.link);
                let cost = self.links.get(&link).map_or(Metric::INFINITE, |l| l.cost());
                f(RouteInfo {
                    subnet: s,
                    next_hop: link,
                    metric: e.metric,
                    total: e.metric.saturating_add(cost),
                    seqno: e.seqno,
                    router_id: t.names.rid(e.rid),
                    expires_in: t.expires(e).saturating_since(now),
                });
            }
        }
    }

    /// Selected routes, sorted by subnet.
    pub fn selected_routes(&self, now: Time) -> Vec<RouteInfo> {
        self.route_infos(now, true)
    }

    /// Routes known but not selected (including retracted ones still held), sorted by subnet.
    pub fn fallback_routes(&self, now: Time) -> Vec<RouteInfo> {
        self.route_infos(now, false)
    }

    /// Subnets being queried, with the time left before the query times out.
    pub fn queried_subnets(&self, now: Time) -> Vec<(Subnet, Duration)> {
        let mut v: Vec<_> = self
            .queries
            .iter()
            .map(|(s, q)| (*s, q.expires.saturating_since(now)))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn links(&self, now: Time) -> Vec<LinkInfo> {
        self.links
            .iter()
            .map(|(id, l)| LinkInfo {
                link: *id,
                cost: l.cost(),
                static_cost: l.static_cost,
                since_last_ihu: now.saturating_since(l.last_ihu),
            })
            .collect()
    }

    /// What `link` put in the routing table and was refused; `None` for a link the core does
    /// not know.
    pub fn link_stats(&self, link: LinkId) -> Option<LinkStats> {
        self.links.get(&link).map(|l| LinkStats {
            subnets: self.routes.links.entries(l.slot),
            routes_refused: l.routes_refused,
            seqno_requests_refused: l.seqno_requests_refused,
        })
    }

    /// Subnets whose selected next hop changed (or appeared or vanished) since the last call (only with
    /// `Config::record_selection_changes`).
    pub fn take_selection_changes(&mut self) -> Vec<Subnet> {
        std::mem::take(&mut self.changes)
    }

    /// Checks the internal invariants (bounded tables, consistent indexes, no route to our own
    /// subnet, every selection finite and via a live link). For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let l = &self.cfg.limits;
        let checks = [
            (self.links.len() <= l.max_links, "links"),
            (self.routes.len() <= l.max_subnets, "routes"),
            (self.routes.source_count() <= l.max_sources, "sources"),
            (self.queries.len() <= l.max_queries, "queries"),
            (self.rr_cache.len() <= l.max_rr_cache, "rr cache"),
            (self.seqno_cache.len() <= l.max_seqno_cache, "seqno cache"),
            (self.waiter_count <= l.max_snr_waiters, "waiters"),
            (self.transmits.len() <= l.max_transmits, "transmits"),
            (self.events.len() <= l.max_events, "events"),
            (self.changes.len() <= l.max_subnets, "changes"),
            (self.fwd_dirty.len() <= l.max_subnets, "forwarding changes"),
            (self.flaps.len() <= l.max_flapping, "flap memory"),
        ];
        for (ok, what) in checks {
            if !ok {
                return Err(format!("{what} over its limit"));
            }
        }
        let mut entries = 0;
        let mut lists = 0;
        let t = &self.routes;
        for id in t.list_ids() {
            let s = t.names.subnet(id);
            if self.cfg.own_subnet.contains(&s) || !overlay().contains(&s) || s.prefix_len() < 64 {
                return Err(format!("route for {s} should have been filtered"));
            }
            if t.names.subnet_id(&s) != Some(id) {
                return Err(format!("{s}: name and id disagree"));
            }
            let list = t.entries(id);
            if list.len() == 0 {
                return Err(format!("empty route list for {s}"));
            }
            lists += 1;
            entries += list.len();
            if let Some(sel) = t.meta(id).and_then(|m| m.selected()) {
                let Some(e) = list.clone().find(|e| e.link == sel) else {
                    return Err(format!("{s}: selected entry missing"));
                };
                if e.metric.is_infinite() || !self.links.contains_key(&t.links.id(sel)) {
                    return Err(format!("{s}: selected route infinite or via a dead link"));
                }
            }
            for e in list.clone() {
                if list.clone().filter(|x| x.link == e.link).count() != 1 {
                    return Err(format!("{s}: two entries for one link"));
                }
                if t.names.rid_id(&t.names.rid(e.rid)) != Some(e.rid) {
                    return Err(format!("{s}: router-id name and id disagree"));
                }
            }
        }
        if entries != t.entry_count() || lists != t.len() {
            return Err("entry or list count mismatch".into());
        }
        let charged = self
            .queries
            .values()
            .filter(|q| q.by != Charge::Own)
            .count();
        if charged != self.link_queries {
            return Err("charged query count mismatch".into());
        }
        for (id, link) in &self.links {
            if self.routes.links.entries(link.slot) > l.max_subnets_per_link {
                return Err(format!("{id:?} holds more subnets than its share"));
            }
            let own = Charge::Neighbour(*id);
            let relayed = Charge::Relayed(*id);
            for (charge, quota) in [(own, link.own_queries), (relayed, link.relayed_queries)] {
                let n = self.queries.values().filter(|q| q.by == charge).count();
                if n != quota.live || n > l.max_queries_per_link {
                    return Err(format!("{charge:?}: query count wrong or over its share"));
                }
            }
        }
        let timers_bound = 4
            * (self.routes.entry_count()
                + 2 * self.links.len()
                + self.queries.len()
                + self.flaps.len())
            + 64;
        let timers = self.timers.len() + self.routes.timer_count();
        if timers > timers_bound {
            return Err(format!("timer heaps {timers} > {timers_bound}"));
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Neighbours
    // ----------------------------------------------------------------------------------------

    fn on_hello(&mut self, link: LinkId) {
        self.counters.hello_rx += 1;
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let ihu = Ihu {
            rx_cost: l.cost(),
            interval: IHU_INTERVAL_CS,
            address: None,
        };
        self.tx(link, Tlv::Ihu(ihu));
    }

    fn on_ihu(&mut self, link: LinkId, now: Time) {
        self.counters.ihu_rx += 1;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.last_ihu = l.last_ihu.max(now);
        let Some(sent) = l.last_hello else {
            self.counters.ihu_unsolicited += 1;
            return;
        };
        let ms = now.saturating_since(sent).as_millis();
        let sample = u32::try_from(ms)
            .unwrap_or(u32::MAX)
            .min(u32::from(u16::MAX));
        let smoothed = (9 * u32::from(l.smoothed) + sample) / 10;
        l.smoothed = u16::try_from(smoothed).unwrap_or(u16::MAX);
    }

    fn send_hello(&mut self, link: LinkId, now: Time) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.next_hello > now {
            return;
        }
        let hello = Hello {
            flags: HELLO_FLAGS_UNICAST,
            seqno: l.hello_seqno,
            interval: HELLO_INTERVAL_CS,
        };
        l.hello_seqno = l.hello_seqno.next();
        l.last_hello = Some(now);
        l.next_hello = now + HELLO_INTERVAL;
        let next = l.next_hello;
        self.timers.push(Reverse((next, Timer::Hello(link))));
        self.tx(link, Tlv::Hello(hello));
    }

    fn dead_check(&mut self, now: Time) {
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| now.saturating_since(l.last_ihu) > DEAD_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.event(Event::LinkDead(id));
            self.drop_link(id, now);
        }
    }

    fn drop_link(&mut self, link: LinkId, now: Time) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        let slot = l.slot;
        self.routes.links.close(slot);
        // The subnets with an entry from this link, in subnet order. A scan of the table: an
        // index per link would cost more memory than the scan costs time, links going down
        // being rare next to routes.
        let t = &self.routes;
        let mut subnets: Vec<(Subnet, SubnetId)> = t
            .list_ids()
            .filter(|&id| t.entries(id).any(|e| e.link == slot))
            .map(|id| (t.names.subnet(id), id))
            .collect();
        subnets.sort_unstable_by_key(|&(s, _)| s);
        for (subnet, id) in subnets {
            let Some(i) = self.routes.position(id, slot) else {
                continue;
            };
            if self.routes.meta(id).and_then(|m| m.selected()) == Some(slot) {
                if let Some(e) = self.routes.entry_mut(id, i) {
                    e.metric = Metric::INFINITE;
                }
                self.routes.set_expires(id, i, now + RETRACTED_HOLD);
                self.select(subnet, id, now);
            } else {
                self.remove_entry(subnet, id, i);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Updates and selection
    // ----------------------------------------------------------------------------------------

    fn on_update(&mut self, link: LinkId, u: &Update, now: Time) {
        self.counters.update_rx += 1;
        let subnet = match u.prefix {
            Prefix::V6(s) if s.prefix_len() >= 64 && overlay().contains(&s) => s,
            _ => {
                self.counters.update_bad_prefix += 1;
                return;
            }
        };
        let rid = self.routes.names.rid_id(&u.router_id);
        let mut addr = None;
        if !u.metric.is_infinite() {
            let a = self.routes.names.owner_address(&u.router_id, rid);
            if !subnet.contains_addr(a) {
                self.counters.update_bad_owner += 1;
                return;
            }
            addr = Some(a);
        }
        if self.cfg.own_subnet.contains(&subnet) {
            self.counters.update_own_subnet += 1;
            return;
        }
        let Some(slot) = self.links.get(&link).map(|l| l.slot) else {
            return;
        };
        let sid = self.routes.names.subnet_id(&subnet);
        // Before the feasibility check: no SeqNoRequest for a route we would not store.
        if !u.metric.is_infinite() && self.link_at_quota(link, slot, sid) {
            return;
        }
        let feasible = self.is_feasible(sid, rid, u.seqno, u.metric);
        let hold = if u.metric.is_infinite() {
            RETRACTED_HOLD
        } else {
            // Mycelium sends interval 0 only in retractions; a finite route that expires at once
            // would be acquired and lost (two triggered updates) per Update received.
            let min = self.cfg.limits.min_route_hold;
            let hold = hold_time(u.interval);
            if hold < min {
                self.counters.update_short_hold += 1;
            }
            hold.max(min)
        };
        let expires = now + hold;
        let new_rid = NewRid {
            rid: &u.router_id,
            id: rid,
            addr,
        };

        let Some(id) = sid.filter(|&id| self.routes.has_list(id)) else {
            if u.metric.is_infinite() {
                self.counters.update_retraction_ignored += 1;
            } else if !feasible {
                self.counters.update_unfeasible += 1;
                self.originate_snr(subnet, u.router_id, Targets::One(link), now);
            } else if self.routes.len() >= self.cfg.limits.max_subnets {
                self.counters.route_table_full += 1;
            } else {
                let id = self
                    .routes
                    .create(subnet, slot, u.metric, u.seqno, new_rid, expires);
                self.route_plens.add(subnet.prefix_len());
                self.select(subnet, id, now);
                self.serve_waiters(subnet, id, now);
            }
            return;
        };

        match self.routes.position(id, slot) {
            Some(i) => {
                let is_sel = self.routes.meta(id).and_then(|m| m.selected()) == Some(slot);
                let Some(&e) = self.routes.entry(id, i) else {
                    return;
                };
                let same_rid = rid == Some(e.rid);
                if !feasible && is_sel && same_rid {
                    self.counters.update_unfeasible += 1;
                    self.originate_snr(subnet, u.router_id, Targets::One(link), now);
                    return;
                }
                if u.metric.is_infinite() && e.metric.is_infinite() {
                    self.counters.update_retraction_ignored += 1;
                    return;
                }
                if !same_rid {
                    self.routes.set_entry_rid(id, i, new_rid);
                }
                if let Some(e) = self.routes.entry_mut(id, i) {
                    e.seqno = u.seqno;
                    e.metric = u.metric;
                }
                if feasible {
                    self.routes.set_expires(id, i, expires);
                } else {
                    self.counters.update_unfeasible += 1;
                }
            }
            None => {
                if u.metric.is_infinite() {
                    self.counters.update_retraction_ignored += 1;
                    return;
                }
                if !feasible {
                    self.counters.update_unfeasible += 1;
                    if self.routes.meta(id).and_then(|m| m.selected()).is_none() {
                        self.originate_snr(subnet, u.router_id, Targets::One(link), now);
                    }
                    return;
                }
                self.routes
                    .push(id, slot, u.metric, u.seqno, new_rid, expires);
            }
        }
        self.select(subnet, id, now);
        self.serve_waiters(subnet, id, now);
    }

    /// True (and counted) if the subnet (`id`, if it has one) would be new to `link` (entries
    /// name it as `slot`) and the link already holds entries for its share of the table
    /// (docs/protocol.md §5.11). The count is of subnets, not Updates: a neighbour at its share
    /// still refreshes, changes and retracts what it has.
    fn link_at_quota(&mut self, link: LinkId, slot: LinkSlot, id: Option<SubnetId>) -> bool {
        let max = self.cfg.limits.max_subnets_per_link;
        // Entries naming the link's slot: one per subnet it advertised.
        if self.routes.links.entries(slot) < max
            || id.is_some_and(|id| self.routes.position(id, slot).is_some())
        {
            return false;
        }
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        l.routes_refused += 1;
        self.counters.route_link_quota_full += 1;
        true
    }

    fn remove_entry(&mut self, subnet: Subnet, id: SubnetId, index: usize) {
        let Some(e) = self.routes.swap_remove(id, index) else {
            return;
        };
        if self.routes.has_list(id) {
            // Only finite entries stay selected; dropping one is a loss handled by select().
            let m = self.routes.meta_mut(id);
            if m.selected() == Some(e.link) {
                m.set_selected(None);
            }
        } else {
            self.route_plens.remove(subnet.prefix_len());
        }
        self.fwd_touch(subnet);
    }

    /// Whether an Update is feasible (docs/protocol.md §5.4). A subnet or router-id without an
    /// id has no distance: every distance holds its names.
    fn is_feasible(
        &self,
        subnet: Option<SubnetId>,
        rid: Option<RidId>,
        seqno: SeqNo,
        metric: Metric,
    ) -> bool {
        if metric.is_infinite() {
            return true;
        }
        let (Some(s), Some(r)) = (subnet, rid) else {
            return true;
        };
        match self.routes.source(s, r) {
            None => true,
            Some(fd) => seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric),
        }
    }

    /// Runs route selection for one subnet and sends what a change calls for.
    fn select(&mut self, subnet: Subnet, id: SubnetId, now: Time) {
        let t = &self.routes;
        let Some(meta) = t.meta(id) else {
            return;
        };
        let list = t.entries(id);
        let selected = meta.selected();
        let at = |i: usize| t.entry(id, i).copied();
        let mut best: Option<(usize, Metric)> = None;
        let mut cur: Option<(usize, Metric)> = None;
        // Entries nearly always share one router-id: look its distance up once.
        let mut fd_cache: Option<(RidId, Option<Fd>)> = None;
        for (i, e) in list.enumerate() {
            if e.metric.is_infinite() {
                continue;
            }
            let Some(l) = self.links.get(&t.links.id(e.link)) else {
                continue;
            };
            let fd = match fd_cache {
                Some((rid, fd)) if rid == e.rid => fd,
                _ => {
                    let fd = t.source(id, e.rid);
                    fd_cache = Some((e.rid, fd));
                    fd
                }
            };
            let feasible = fd.is_none_or(|fd| {
                e.seqno.gt(fd.seqno) || (e.seqno == fd.seqno && e.metric < fd.metric)
            });
            if !feasible {
                continue;
            }
            let total = e.metric.saturating_add(l.cost());
            let is_cur = selected == Some(e.link);
            if is_cur {
                cur = Some((i, total));
            }
            if best.is_none_or(|(_, b)| total < b || (total == b && is_cur)) {
                best = Some((i, total));
            }
        }
        let chosen = match (cur, best) {
            (Some(c), Some(b)) => {
                let better = b.1 < c.1.saturating_sub(Metric(HYSTERESIS));
                if b.0 != c.0 && (better || at(b.0).is_some_and(|e| e.metric == Metric(0))) {
                    Some(b)
                } else {
                    Some(c)
                }
            }
            (_, b) => b,
        };
        let old = selected.map(|l| (l, meta.sel_rid, meta.sel_metric));
        let new = chosen.and_then(|(i, total)| at(i).map(|e| (e.link, e.rid, e.seqno, total)));
        let m = self.routes.meta_mut(id);
        m.set_selected(new.map(|n| n.0));
        if let Some((_, rid, _, total)) = new {
            m.sel_metric = total;
            self.routes.set_sel_rid(id, rid);
        }
        self.fwd_touch(subnet);
        match (old, new) {
            (None, None) => {}
            (None, Some((link, rid, seqno, total))) => {
                self.selection_changed(subnet);
                self.end_query(subnet);
                self.event(Event::RouteAcquired(subnet));
                if !self.damped(subnet, id, true, now) {
                    let link = self.routes.links.id(link);
                    self.send_route(subnet, id, rid, seqno, total, None, Some(link), now);
                }
            }
            (Some((_, old_rid, _)), None) => {
                self.selection_changed(subnet);
                self.event(Event::RouteLost(subnet));
                if !self.damped(subnet, id, true, now) {
                    self.send_retraction(subnet, None);
                }
                let old_rid = self.routes.names.rid(old_rid);
                self.originate_snr(subnet, old_rid, Targets::Advertisers, now);
            }
            (Some((old_link, old_rid, old_metric)), Some((link, rid, seqno, total))) => {
                if old_link != link {
                    self.selection_changed(subnet);
                }
                let diff = old_metric.0.abs_diff(total.0);
                if old_rid != rid || diff > BIG_METRIC_CHANGE {
                    // A better metric from the same source is how routes converge (link costs
                    // settle, shorter paths answer later): not counted as a flap.
                    let flap = old_rid != rid || total > old_metric;
                    if !self.damped(subnet, id, flap, now) {
                        let link = self.routes.links.id(link);
                        self.send_route(subnet, id, rid, seqno, total, None, Some(link), now);
                    }
                }
            }
        }
    }

    /// Flap damping. Called for each triggered update `subnet` is due to send (`flap`: it is
    /// one that counts, see [`Limits::flap_threshold`]); true if it must be held back.
    ///
    /// A subnet is remembered once it flaps twice within `flap_window` (a route acquired and
    /// lost again soon, a source or metric that keeps changing); stable routes, however many,
    /// cost no memory. One with more than `flap_threshold` flaps in a window is damped: all its
    /// triggered updates are held back until it has not flapped for `flap_damping`, and then
    /// its current state (the selected route, or a retraction) goes out once. Replies to
    /// requests and dumps are never held back and selection is unchanged, so routing stays
    /// correct (a held-back update is one the neighbours missed, which the protocol tolerates:
    /// feasibility depends only on what we did advertise), while a flapping source gets a
    /// bounded number of updates out of us however long it flaps.
    ///
    /// When not damped, a subnet's triggered updates are also held to [`TRIGGER_RATE`] (see
    /// [`Router::held`]).
    fn damped(&mut self, subnet: Subnet, id: SubnetId, flap: bool, now: Time) -> bool {
        if self.cfg.limits.flap_threshold == 0 {
            return false;
        }
        self.damping(subnet, id, flap, now) || self.held(subnet, id, now)
    }

    /// The damping part of [`Router::damped`]: true if the update is held back because the
    /// subnet is damped.
    fn damping(&mut self, subnet: Subnet, id: SubnetId, flap: bool, now: Time) -> bool {
        let lim = &self.cfg.limits;
        let has_list = self.routes.has_list(id);
        let remembered = self.flaps.get(&subnet);
        let previous = match remembered {
            Some(f) => f.last,
            None => self.routes.last_trigger(id),
        };
        let counted = flap && previous.is_none_or(|t| now.saturating_since(t) >= FLAP_COALESCE);
        if counted {
            if has_list {
                self.routes.set_last_trigger(id, Some(now));
            }
            let recent = previous.is_some_and(|t| now.saturating_since(t) < lim.flap_window);
            if remembered.is_none() && recent {
                if self.flaps.len() >= lim.max_flapping {
                    self.counters.flap_table_full += 1;
                    return false;
                }
                // The window opens here; the previous flap is counted in it too.
                let f = Flap {
                    window_start: now,
                    last: Some(now),
                    count: 1,
                    damped_until: None,
                    held_until: None,
                    pending: false,
                };
                self.flaps.insert(subnet, f);
            }
        }
        let Some(f) = self.flaps.get_mut(&subnet) else {
            return false;
        };
        if let Some(until) = f.damped_until {
            if counted {
                f.last = Some(now);
                f.damped_until = Some(until.max(now + lim.flap_damping));
            }
            f.pending = true;
            self.counters.update_damped += 1;
            return true;
        }
        if !counted {
            return false;
        }
        f.last = Some(now);
        if now.saturating_since(f.window_start) >= lim.flap_window {
            f.window_start = now;
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        if f.count <= lim.flap_threshold {
            return false;
        }
        let until = now + lim.flap_damping;
        f.damped_until = Some(until);
        f.pending = true;
        self.counters.update_damped += 1;
        // Damping takes over a hold: the hold's timer, due first, finds the damping and waits
        // for its end.
        if f.held_until.take().is_none_or(|h| h > until) {
            self.timers.push(Reverse((until, Timer::Undamp(subnet))));
        }
        true
    }

    /// Triggered updates of a subnet at [`TRIGGER_RATE`] after a burst of [`TRIGGER_BURST`]:
    /// true if this one comes too soon (or while one is held back already). Then the subnet's
    /// state when the rate allows (its selected route, or a retraction) goes out once, from
    /// the Undamp timer: a route that changes many times a second gets one update a second out
    /// of us until it is damped, not one per change. Only subnets that had an update held get
    /// an entry in the flap memory (bounded by [`Limits::max_flapping`]; when full, updates go
    /// out unheld). The source table only learns what is actually sent, so feasibility (and
    /// loop freedom) is unaffected.
    fn held(&mut self, subnet: Subnet, id: SubnetId, now: Time) -> bool {
        if let Some(f) = self.flaps.get_mut(&subnet) {
            if f.held_until.is_some() {
                f.pending = true;
                self.counters.update_damped += 1;
                return true;
            }
        }
        if !self.routes.has_list(id) {
            return false;
        }
        let mut triggers = Bucket {
            tat: self.routes.tat(id),
        };
        let admitted = triggers.admit(TRIGGER_RATE, TRIGGER_BURST, now);
        self.routes.set_tat(id, triggers.tat);
        if admitted {
            return false;
        }
        let until = triggers.next_admit(TRIGGER_RATE, TRIGGER_BURST).max(now);
        let lim = &self.cfg.limits;
        let full = self.flaps.len() >= lim.max_flapping;
        let f = match self.flaps.entry(subnet) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if full {
                    self.counters.flap_table_full += 1;
                    return false;
                }
                // Remembered from here as if it had flapped: the last flap counted (if recent)
                // is counted in the window that opens here.
                let last = self.routes.last_trigger(id);
                let recent = last.is_some_and(|t| now.saturating_since(t) < lim.flap_window);
                v.insert(Flap {
                    window_start: now,
                    last,
                    count: u32::from(recent),
                    damped_until: None,
                    held_until: None,
                    pending: false,
                })
            }
        };
        f.held_until = Some(until);
        f.pending = true;
        self.counters.update_damped += 1;
        self.timers.push(Reverse((until, Timer::Undamp(subnet))));
        true
    }

    /// Ends damping once the subnet has been quiet for `flap_damping`, or a hold (see
    /// [`Router::held`]) at its end, and sends what was held back: the current state, to every
    /// link but the next hop.
    fn on_undamp_timer(&mut self, subnet: Subnet, now: Time) {
        let Some(f) = self.flaps.get_mut(&subnet) else {
            return;
        };
        if let Some(until) = f.damped_until {
            if until > now {
                // Pushed later by updates held back meanwhile, or a hold's timer that damping
                // took over.
                self.timers.push(Reverse((until, Timer::Undamp(subnet))));
                return;
            }
            f.damped_until = None;
            f.window_start = now;
            f.count = 0;
        } else if let Some(until) = f.held_until {
            if until > now {
                self.timers.push(Reverse((until, Timer::Undamp(subnet))));
                return;
            }
            f.held_until = None;
        } else {
            return;
        }
        if !std::mem::take(&mut f.pending) {
            return;
        }
        let id = self.routes.list_id(&subnet);
        match id.and_then(|id| self.selected(id).map(|s| (id, s))) {
            Some((id, (link, rid, seqno, metric))) => {
                self.send_route(subnet, id, rid, seqno, metric, None, Some(link), now);
            }
            None => self.send_retraction(subnet, None),
        }
        if let Some(id) = id {
            let mut triggers = Bucket {
                tat: self.routes.tat(id),
            };
            triggers.admit(TRIGGER_RATE, TRIGGER_BURST, now);
            self.routes.set_tat(id, triggers.tat);
        }
    }

    fn selection_changed(&mut self, subnet: Subnet) {
        if self.cfg.record_selection_changes {
            if self.changes.len() < self.cfg.limits.max_subnets {
                self.changes.push(subnet);
            } else {
                self.counters.selection_changes_dropped += 1;
            }
        }
    }

    /// Sends an Update for a route we hold (to `only`, or to every link except `except`) and
    /// records it as advertised in the source table.
    #[allow(clippy::too_many_arguments)]
    fn send_route(
        &mut self,
        subnet: Subnet,
        id: SubnetId,
        rid: RidId,
        seqno: SeqNo,
        metric: Metric,
        only: Option<LinkId>,
        except: Option<LinkId>,
        now: Time,
    ) {
        self.note_advertised(id, rid, seqno, metric, now);
        let u = Tlv::Update(Update {
            flags: 0,
            interval: UPDATE_INTERVAL_CS,
            seqno,
            metric,
            prefix: Prefix::V6(subnet),
            router_id: self.routes.names.rid(rid),
        });
        let limit = self.cfg.limits.max_transmits;
        match only {
            Some(l) => push_tx(&mut self.transmits, &mut self.counters, limit, l, u),
            None => {
                for &l in self.links.keys() {
                    if Some(l) != except {
                        push_tx(&mut self.transmits, &mut self.counters, limit, l, u);
                    }
                }
            }
        }
    }

    /// Records an Update sent for `id` (which has a route list) in the source table.
    fn note_advertised(
        &mut self,
        id: SubnetId,
        rid: RidId,
        seqno: SeqNo,
        metric: Metric,
        now: Time,
    ) {
        if metric.is_infinite() {
            return;
        }
        let expires = now + SOURCE_TTL;
        let new = Fd {
            metric,
            seqno,
            expires,
        };
        let max = self.cfg.limits.max_sources;
        let stored = self.routes.upsert_source(id, rid, new, max, |fd| {
            if seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric) {
                fd.seqno = seqno;
                fd.metric = metric;
            }
            fd.expires = expires;
        });
        if !stored {
            self.counters.source_table_full += 1;
        }
    }

    /// Retraction with our own router-id and seqno.
    fn send_retraction(&mut self, subnet: Subnet, only: Option<LinkId>) {
        let u = Tlv::Update(Update {
            flags: 0,
            interval: UPDATE_INTERVAL_CS,
            seqno: self.seqno,
            metric: Metric::INFINITE,
            prefix: Prefix::V6(subnet),
            router_id: self.cfg.router_id,
        });
        let limit = self.cfg.limits.max_transmits;
        match only {
            Some(l) => push_tx(&mut self.transmits, &mut self.counters, limit, l, u),
            None => {
                for &l in self.links.keys() {
                    push_tx(&mut self.transmits, &mut self.counters, limit, l, u);
                }
            }
        }
    }

    fn own_update(&self) -> Update {
        Update {
            flags: 0,
            interval: UPDATE_INTERVAL_CS,
            seqno: self.seqno,
            metric: Metric(0),
            prefix: Prefix::V6(self.cfg.own_subnet),
            router_id: self.cfg.router_id,
        }
    }

    fn announce_own(&mut self) {
        let u = Tlv::Update(self.own_update());
        let limit = self.cfg.limits.max_transmits;
        for &l in self.links.keys() {
            push_tx(&mut self.transmits, &mut self.counters, limit, l, u);
        }
    }

    /// The selected route of `id` as (link, router-id, seqno, advertised metric).
    fn selected(&self, id: SubnetId) -> Option<(LinkId, RidId, SeqNo, Metric)> {
        let sel = self.routes.meta(id)?.selected()?;
        let e = self.routes.entries(id).find(|e| e.link == sel)?;
        let link = self.routes.links.id(sel);
        let cost = self.links.get(&link)?.cost();
        Some((link, e.rid, e.seqno, e.metric.saturating_add(cost)))
    }

    fn serve_waiters(&mut self, subnet: Subnet, id: SubnetId, now: Time) {
        if self.snr_waiters.is_empty() {
            return;
        }
        let Some((link, rid, seqno, metric)) = self.selected(id) else {
            return;
        };
        let Some(waiters) = self.snr_waiters.get_mut(&subnet) else {
            return;
        };
        let rid_name = self.routes.names.rid(rid);
        let mut served = Vec::new();
        waiters.retain(|w| {
            let answers = w.router_id != rid_name || !seqno.lt(w.seqno);
            if answers {
                served.push(w.link);
            }
            !answers
        });
        if waiters.is_empty() {
            self.snr_waiters.remove(&subnet);
        }
        self.waiter_count = self.waiter_count.saturating_sub(served.len());
        served.sort_unstable();
        served.dedup();
        for w in served {
            if w != link && self.links.contains_key(&w) {
                self.send_route(subnet, id, rid, seqno, metric, Some(w), None, now);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Requests
    // ----------------------------------------------------------------------------------------

    fn longest_route_match(&self, a: Ipv6Addr) -> Option<(Subnet, SubnetId)> {
        for p in self.route_plens.lengths() {
            if let Some(s) = Subnet::new(a, p) {
                if let Some(id) = self.routes.list_id(&s) {
                    return Some((s, id));
                }
            }
        }
        None
    }

    /// Marks `subnet` as queried for 15 s, charged to `charge`; false (counted) if a limit
    /// refuses it. A link's query needs room in its share and outside the reserve, then a
    /// token of its rate (taken last, so a refusal for room costs none).
    fn mark_queried(&mut self, subnet: Subnet, charge: Charge, now: Time) -> bool {
        if self.queries.contains_key(&subnet) {
            return true;
        }
        let lim = &self.cfg.limits;
        let room = match charge {
            Charge::Own => lim.max_queries,
            _ => lim.max_queries.saturating_sub(lim.queries_reserved_own),
        };
        if self.queries.len() >= room {
            self.counters.query_table_full += 1;
            return false;
        }
        let (share, rate, burst) = (
            lim.max_queries_per_link,
            lim.link_query_rate,
            lim.link_query_burst,
        );
        if let Some(quota) = self.quota(charge) {
            if quota.live >= share {
                self.counters.query_link_share_full += 1;
                return false;
            }
            if !quota.rate.admit(rate, burst, now) {
                self.counters.query_rate_limited += 1;
                return false;
            }
            quota.live += 1;
            self.link_queries += 1;
        } else if charge != Charge::Own {
            self.counters.unknown_link += 1;
            return false;
        }
        let expires = now + QUERY_TIMEOUT;
        self.queries.insert(
            subnet,
            Query {
                expires,
                by: charge,
            },
        );
        self.query_plens.add(subnet.prefix_len());
        self.timers.push(Reverse((expires, Timer::Query(subnet))));
        true
    }

    /// The quota a link's query is charged to (`None` for our own, or a link gone).
    fn quota(&mut self, charge: Charge) -> Option<&mut Quota> {
        match charge {
            Charge::Own => None,
            Charge::Neighbour(l) => self.links.get_mut(&l).map(|l| &mut l.own_queries),
            Charge::Relayed(l) => self.links.get_mut(&l).map(|l| &mut l.relayed_queries),
        }
    }

    /// Ends the query for `subnet` (answered or timed out) and frees its charge.
    fn end_query(&mut self, subnet: Subnet) {
        let Some(q) = self.queries.remove(&subnet) else {
            return;
        };
        self.query_plens.remove(subnet.prefix_len());
        if q.by != Charge::Own {
            self.link_queries = self.link_queries.saturating_sub(1);
        }
        if let Some(quota) = self.quota(q.by) {
            quota.live = quota.live.saturating_sub(1);
        }
    }

    /// Sends RouteRequest(`generation`, `subnet`) to every link except `except`, skipping links
    /// that got the same request within 15 s unless this one has a lower generation.
    fn send_rr_to_all(
        &mut self,
        subnet: Subnet,
        generation: u8,
        except: Option<LinkId>,
        now: Time,
    ) {
        let full = self.rr_cache.len() >= self.cfg.limits.max_rr_cache;
        if full && !self.rr_cache.contains_key(&subnet) {
            self.counters.rr_cache_full += 1;
            // Without a cache slot we still send: the cache only saves traffic.
        }
        let rr = Tlv::RouteRequest(RouteRequest {
            generation,
            prefix: Prefix::V6(subnet),
        });
        let limit = self.cfg.limits.max_transmits;
        let mut sent = Vec::new();
        let cached = self.rr_cache.get(&subnet);
        for &l in self.links.keys() {
            if Some(l) == except {
                continue;
            }
            let recent = cached.and_then(|c| {
                c.iter()
                    .find(|(cl, _, t)| *cl == l && now.saturating_since(*t) < RR_CACHE_TTL)
            });
            if let Some((_, g, _)) = recent {
                if generation >= *g {
                    self.counters.route_request_dedup += 1;
                    continue;
                }
            }
            push_tx(&mut self.transmits, &mut self.counters, limit, l, rr);
            sent.push(l);
        }
        if sent.is_empty() || (full && !self.rr_cache.contains_key(&subnet)) {
            return;
        }
        let c = self.rr_cache.entry(subnet).or_default();
        for l in sent {
            match c.iter_mut().find(|(cl, _, _)| *cl == l) {
                Some(x) => *x = (l, generation, now),
                None => c.push((l, generation, now)),
            }
        }
    }

    fn on_route_request(&mut self, link: LinkId, rr: &RouteRequest, now: Time) {
        self.counters.route_request_rx += 1;
        let p = match rr.prefix {
            Prefix::Wildcard => return self.on_wildcard_request(link, now),
            Prefix::V6(p) if p.prefix_len() >= 64 && overlay().contains(&p) => p,
            _ => {
                self.counters.route_request_bad_prefix += 1;
                return;
            }
        };
        if self.cfg.own_subnet.contains(&p) {
            let u = self.own_update();
            self.tx(link, Tlv::Update(u));
            self.counters.route_request_answered += 1;
            return;
        }
        if let Some(id) = self.routes.list_id(&p) {
            let sel = self.routes.meta(id).and_then(|m| m.selected());
            if sel.is_some_and(|l| self.routes.links.id(l) != link) {
                if let Some((_, rid, seqno, metric)) = self.selected(id) {
                    self.send_route(p, id, rid, seqno, metric, Some(link), None, now);
                    self.counters.route_request_answered += 1;
                }
            }
            return;
        }
        if self.queries.contains_key(&p) {
            return;
        }
        if u16::from(rr.generation) + 1 >= u16::from(MAX_RR_GENERATION) {
            self.counters.route_request_generation_limit += 1;
            return;
        }
        let charge = if rr.generation == 0 {
            Charge::Neighbour(link)
        } else {
            Charge::Relayed(link)
        };
        if self.mark_queried(p, charge, now) {
            self.send_rr_to_all(p, rr.generation + 1, Some(link), now);
        }
    }

    /// A wildcard request is answered with a dump at once if the link's last dump is at least
    /// the hold-off ago; otherwise one dump goes out when the hold-off ends, however many
    /// requests came meanwhile (the requester still gets the whole table, at most once per
    /// hold-off: 13 bytes must not buy the table again and again).
    fn on_wildcard_request(&mut self, link: LinkId, now: Time) {
        let holdoff = self.cfg.limits.wildcard_dump_holdoff;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let ready = l.last_dump.map_or(now, |t| t + holdoff);
        if ready <= now {
            l.last_dump = Some(now);
            l.dump_pending = false;
            self.dump(link, now);
            return;
        }
        self.counters.wildcard_dump_deferred += 1;
        if !l.dump_pending {
            l.dump_pending = true;
            self.timers.push(Reverse((ready, Timer::Dump(link))));
        }
    }

    fn on_dump_timer(&mut self, link: LinkId, now: Time) {
        let holdoff = self.cfg.limits.wildcard_dump_holdoff;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if !l.dump_pending || l.last_dump.is_some_and(|t| t + holdoff > now) {
            return;
        }
        l.dump_pending = false;
        l.last_dump = Some(now);
        self.dump(link, now);
    }

    /// Reply to a wildcard request: our /64 and every selected route not via the requester.
    fn dump(&mut self, link: LinkId, now: Time) {
        let u = self.own_update();
        self.tx(link, Tlv::Update(u));
        let t = &self.routes;
        let mut subnets: Vec<(Subnet, SubnetId)> = t
            .list_ids()
            .filter(|&id| {
                t.meta(id)
                    .and_then(|m| m.selected())
                    .is_some_and(|s| t.links.id(s) != link)
            })
            .map(|id| (t.names.subnet(id), id))
            .collect();
        subnets.sort_unstable_by_key(|&(s, _)| s);
        for (s, id) in subnets {
            if let Some((_, rid, seqno, metric)) = self.selected(id) {
                self.send_route(s, id, rid, seqno, metric, Some(link), None, now);
            }
        }
    }

    fn on_seqno_request(&mut self, link: LinkId, r: &SeqNoRequest, now: Time) {
        self.counters.seqno_request_rx += 1;
        let p = match r.prefix {
            Prefix::V6(p) if p.prefix_len() >= 64 && overlay().contains(&p) => p,
            _ => {
                self.counters.seqno_request_bad_prefix += 1;
                return;
            }
        };
        if r.hop_count == 0 {
            self.counters.seqno_request_hop_zero += 1;
            return;
        }
        let key = (r.router_id, p, r.seqno);
        if self
            .seqno_cache
            .get(&key)
            .is_some_and(|t| now.saturating_since(*t) < SEQNO_CACHE_TTL)
        {
            self.counters.seqno_request_dup += 1;
            return;
        }
        let pid = self.routes.list_id(&p);
        if let Some((id, (_, rid, seqno, metric))) =
            pid.and_then(|id| self.selected(id).map(|s| (id, s)))
        {
            if self.routes.names.rid_id(&r.router_id) != Some(rid) || !seqno.lt(r.seqno) {
                self.send_route(p, id, rid, seqno, metric, Some(link), None, now);
                return;
            }
        }
        if r.router_id == self.cfg.router_id {
            if p != self.cfg.own_subnet || !r.seqno.gt(self.seqno) {
                self.counters.seqno_request_stale_own += 1;
                return;
            }
            if self
                .last_bump
                .is_some_and(|t| now.saturating_since(t) < SEQNO_BUMP_SPACING)
            {
                self.counters.seqno_bump_rate_limited += 1;
                return;
            }
            self.seqno = self.seqno.next();
            self.last_bump = Some(now);
            self.counters.seqno_bumps += 1;
            self.announce_own();
            return;
        }
        if r.hop_count < 2 {
            self.counters.seqno_request_no_forward += 1;
            return;
        }
        // Forward to one neighbour that advertised P: feasible routes first, then any live
        // finite one; never back to the requester.
        let mut pick: Option<(bool, Metric, LinkId)> = None;
        if let Some(id) = pid {
            for e in self.routes.entries(id) {
                let e_link = self.routes.links.id(e.link);
                if e_link == link || e.metric.is_infinite() {
                    continue;
                }
                let Some(l) = self.links.get(&e_link) else {
                    continue;
                };
                let feasible = self.is_feasible(Some(id), Some(e.rid), e.seqno, e.metric);
                let cand = (!feasible, e.metric.saturating_add(l.cost()), e_link);
                if pick.is_none_or(|b| cand < b) {
                    pick = Some(cand);
                }
            }
        }
        let Some((_, _, next)) = pick else {
            self.counters.seqno_request_no_forward += 1;
            return;
        };
        // Only a request we forward takes cache and waiter slots (60 s each), so only those are
        // charged to the link: a request answered from our table costs nothing to keep.
        let (rate, burst) = (
            self.cfg.limits.link_seqno_request_rate,
            self.cfg.limits.link_seqno_request_burst,
        );
        if let Some(l) = self.links.get_mut(&link) {
            if !l.seqno_requests.admit(rate, burst, now) {
                l.seqno_requests_refused += 1;
                self.counters.seqno_request_rate_limited += 1;
                return;
            }
        }
        if !self.cache_seqno_request(key, now) {
            return;
        }
        let fwd = SeqNoRequest {
            hop_count: r.hop_count - 1,
            ..*r
        };
        self.tx(next, Tlv::SeqNoRequest(fwd));
        if self.waiter_count >= self.cfg.limits.max_snr_waiters {
            self.counters.snr_waiters_full += 1;
            return;
        }
        self.waiter_count += 1;
        self.snr_waiters.entry(p).or_default().push(Waiter {
            link,
            router_id: r.router_id,
            seqno: r.seqno,
            expires: now + SEQNO_CACHE_TTL,
        });
    }

    fn cache_seqno_request(&mut self, key: (RouterId, Subnet, SeqNo), now: Time) -> bool {
        if !self.seqno_cache.contains_key(&key)
            && self.seqno_cache.len() >= self.cfg.limits.max_seqno_cache
        {
            self.counters.seqno_cache_full += 1;
            return false;
        }
        self.seqno_cache.insert(key, now);
        true
    }

    /// Asks for a seqno above our feasibility distance for (subnet, rid), hop count 64.
    fn originate_snr(&mut self, subnet: Subnet, rid: RouterId, targets: Targets, now: Time) {
        let names = &self.routes.names;
        let fd = names
            .subnet_id(&subnet)
            .zip(names.rid_id(&rid))
            .and_then(|(s, r)| self.routes.source(s, r));
        let seqno = fd.map_or(SeqNo(1), |fd| fd.seqno.next());
        let key = (rid, subnet, seqno);
        if self
            .seqno_cache
            .get(&key)
            .is_some_and(|t| now.saturating_since(*t) < SEQNO_CACHE_TTL)
        {
            self.counters.seqno_request_dup += 1;
            return;
        }
        let links: Vec<LinkId> = match targets {
            Targets::One(l) => vec![l],
            Targets::Advertisers => match self.routes.list_id(&subnet) {
                Some(id) => {
                    let mut v: Vec<LinkId> = self
                        .routes
                        .entries(id)
                        .map(|e| self.routes.links.id(e.link))
                        .filter(|l| self.links.contains_key(l))
                        .collect();
                    v.sort_unstable();
                    v
                }
                None => Vec::new(),
            },
        };
        if links.is_empty() || !self.cache_seqno_request(key, now) {
            return;
        }
        let snr = Tlv::SeqNoRequest(SeqNoRequest {
            seqno,
            hop_count: SNR_HOP_COUNT,
            router_id: rid,
            prefix: Prefix::V6(subnet),
        });
        for l in links {
            self.tx(l, snr);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Timers
    // ----------------------------------------------------------------------------------------

    fn on_timer(&mut self, timer: Timer, now: Time) {
        match timer {
            Timer::Hello(link) => self.send_hello(link, now),
            Timer::DeadCheck => {
                if now >= self.next_dead_check {
                    self.dead_check(now);
                    self.next_dead_check = now + DEAD_CHECK_INTERVAL;
                    self.timers
                        .push(Reverse((self.next_dead_check, Timer::DeadCheck)));
                }
            }
            Timer::Announce => {
                if now >= self.next_announce {
                    self.announce_own();
                    self.next_announce = now + ANNOUNCE_INTERVAL;
                    self.timers
                        .push(Reverse((self.next_announce, Timer::Announce)));
                }
            }
            Timer::Housekeeping => {
                if now >= self.next_housekeeping {
                    self.housekeeping(now);
                    self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
                    self.timers
                        .push(Reverse((self.next_housekeeping, Timer::Housekeeping)));
                }
            }
            Timer::SourceGc => {
                if now >= self.next_source_gc {
                    self.routes.collect_sources(now);
                    self.next_source_gc = now + SOURCE_GC_INTERVAL;
                    self.timers
                        .push(Reverse((self.next_source_gc, Timer::SourceGc)));
                }
            }
            Timer::Query(subnet) => {
                if self.queries.get(&subnet).is_some_and(|q| q.expires <= now) {
                    self.end_query(subnet);
                    self.event(Event::QueryTimedOut(subnet));
                }
            }
            Timer::Dump(link) => self.on_dump_timer(link, now),
            Timer::Undamp(subnet) => self.on_undamp_timer(subnet, now),
        }
    }

    fn housekeeping(&mut self, now: Time) {
        self.rr_cache.retain(|_, v| {
            v.retain(|(_, _, t)| now.saturating_since(*t) < RR_CACHE_TTL);
            !v.is_empty()
        });
        self.seqno_cache
            .retain(|_, t| now.saturating_since(*t) < SEQNO_CACHE_TTL);
        self.routes.prune_refreshes(now, REFRESH_BEFORE_EXPIRY);
        let window = self.cfg.limits.flap_window;
        self.flaps.retain(|_, f| {
            f.damped_until.is_some()
                || f.held_until.is_some()
                || now.saturating_since(f.window_start) < window
        });
        let mut count = 0;
        self.snr_waiters.retain(|_, v| {
            v.retain(|w| w.expires > now);
            count += v.len();
            !v.is_empty()
        });
        self.waiter_count = count;
    }

    /// The expiry timer of `id` ran: its entries due by `now` expire, in link order (the order
    /// of the per-entry timers this replaces); then the timer is set for the next one.
    fn on_expiry(&mut self, subnet: Subnet, id: SubnetId, now: Time) {
        let t = &self.routes;
        let mut due: Vec<(LinkId, LinkSlot)> = t
            .entries(id)
            .filter(|e| t.expires(e) <= now)
            .map(|e| (t.links.id(e.link), e.link))
            .collect();
        due.sort_unstable_by_key(|&(l, _)| l);
        for (_, slot) in due {
            let Some(i) = self.routes.position(id, slot) else {
                continue;
            };
            let is_sel = self.routes.meta(id).and_then(|m| m.selected()) == Some(slot);
            let Some(&e) = self.routes.entry(id, i) else {
                continue;
            };
            if self.routes.expires(&e) > now {
                continue;
            }
            if is_sel && !e.metric.is_infinite() {
                if let Some(e) = self.routes.entry_mut(id, i) {
                    e.metric = Metric::INFINITE;
                }
                self.routes.set_expires(id, i, now + RETRACTED_HOLD);
                self.select(subnet, id, now);
            } else {
                self.remove_entry(subnet, id, i);
                if is_sel {
                    self.select(subnet, id, now);
                }
            }
        }
        if let Some(next) = self.routes.first_expiry(id) {
            self.routes.push_due(id, next);
        }
    }

    /// Rebuilds the timer heaps from the state when stale entries pile up, so they stay
    /// bounded.
    fn compact_timers_if_needed(&mut self) {
        self.routes.compact_timers_if_needed();
        let live = 2 * self.links.len() + self.queries.len() + self.flaps.len() + 4;
        if self.timers.len() <= 2 * live + 64 {
            return;
        }
        let mut v = Vec::with_capacity(live);
        v.push(Reverse((self.next_dead_check, Timer::DeadCheck)));
        v.push(Reverse((self.next_announce, Timer::Announce)));
        v.push(Reverse((self.next_housekeeping, Timer::Housekeeping)));
        v.push(Reverse((self.next_source_gc, Timer::SourceGc)));
        let holdoff = self.cfg.limits.wildcard_dump_holdoff;
        for (id, l) in &self.links {
            v.push(Reverse((l.next_hello, Timer::Hello(*id))));
            if l.dump_pending {
                let t = l.last_dump.map_or(Time::ZERO, |t| t + holdoff);
                v.push(Reverse((t, Timer::Dump(*id))));
            }
        }
        for (s, f) in &self.flaps {
            if let Some(t) = f.damped_until.or(f.held_until) {
                v.push(Reverse((t, Timer::Undamp(*s))));
            }
        }
        for (s, q) in &self.queries {
            v.push(Reverse((q.expires, Timer::Query(*s))));
        }
        self.timers = BinaryHeap::from(v);
    }

    // ----------------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------------

    fn tx(&mut self, link: LinkId, tlv: Tlv) {
        let limit = self.cfg.limits.max_transmits;
        push_tx(&mut self.transmits, &mut self.counters, limit, link, tlv);
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= self.cfg.limits.max_events {
            self.counters.event_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn route_infos(&self, now: Time, selected: bool) -> Vec<RouteInfo> {
        let mut v = Vec::new();
        self.for_each_route(now, selected, |r| v.push(r));
        v.sort_unstable_by_key(|r| (r.subnet, r.next_hop));
        v
    }
}
