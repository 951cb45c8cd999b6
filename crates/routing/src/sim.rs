//! A deterministic network simulator for the routing core.
//!
//! Many [`Router`]s joined by virtual links with a fixed per-link latency (so each link delivers
//! in order, like the TCP connections it stands for), optional loss, and up/down events. Time is
//! virtual and advances from event to event (a priority queue of deliveries and timer wake-ups),
//! so a simulated hour of a 1000-node mesh takes seconds. Everything random comes from one
//! seeded generator: the same seed gives the same run.
//!
//! After every event the simulator can check that no selected route is part of a forwarding
//! loop: each subnet whose selection changed at the node that handled the event is followed hop
//! by hop (a loop created by that change must pass through that node).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use crypto::address_from_public_key;
use wire::babel::{
    Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, SeqNoRequest, Subnet, Tlv, Update,
};

use crate::names::SharedNames;
use crate::{consts, Config, Event, LinkId, Router, Time};

/// splitmix64: small, fast, and good enough to pick topologies and losses.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `n` Updates announcing, at metric 0, the /64s of `n` keys drawn from `seed`: valid overlay
/// subnets of distinct keys, as a large network's full table has (a route needs no curve point).
/// What a peer with a full table (or an attacker) sends, for tests and benches of a node.
pub fn full_table_updates(n: usize, seed: u64) -> Vec<Tlv> {
    let mut rng = SimRng::new(seed);
    (0..n)
        .map(|_| {
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            Tlv::Update(Update {
                flags: 0,
                interval: 30000,
                seqno: SeqNo(0),
                metric: Metric(0),
                prefix: Prefix::V6(crypto::PublicKey(key).subnet()),
                router_id: RouterId::new(key, [9; 6]),
            })
        })
        .collect()
}

/// Links of a peer in [`Sim::peer_mesh`]: 3 for 70 % of nodes, 4 for 15 %, then 5, 6, 7 and 8
/// for 6, 4, 3 and 2 % (3.6 on average). Most nodes of an overlay keep the few peers they were
/// given or found; a few keep more. Degree costs memory in a simulation: each neighbour that
/// does not route through a node adds an entry per subnet there.
pub fn peer_degree(rng: &mut SimRng) -> usize {
    match rng.below(100) {
        0..70 => 3,
        70..85 => 4,
        85..91 => 5,
        91..95 => 6,
        95..98 => 7,
        _ => 8,
    }
}

/// Why following next hops did not reach the destination.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathError {
    /// Some node on the way has no selected route.
    NoRoute { at: usize },
    /// The path enters a node that is not running.
    DeadNode { at: usize },
    /// The next hop points at a link the simulator has closed.
    DownLink { at: usize },
    /// The path visits a node twice.
    Loop { at: usize },
}

struct SimNode {
    router: Router,
    alive: bool,
    next_wake: Option<Time>,
    public_key: [u8; 32],
    address: Ipv6Addr,
    subnet: Subnet,
    links: Vec<usize>,
    /// Subnets its core has a selected route for (from its events).
    routes: usize,
}

struct SimLink {
    a: usize,
    b: usize,
    latency: Duration,
    /// Loss probability in parts per million.
    loss_ppm: u32,
    up: bool,
    epoch: u32,
    /// In-flight TLVs per direction (0: a→b, 1: b→a), in arrival order (the latency is
    /// fixed), threaded through [`Sim::flights`]: (first, last), or [`NIL`].
    fifo: [(u32, u32); 2],
    /// Arrival time of the head the queue holds an event for, per direction.
    head: [Option<Time>; 2],
}

/// A TLV in flight in 12 bytes (a `Tlv` takes 72): names are ids in the simulator's shared
/// table, and an Update's flags and interval are the ones the core always sends. During a cold
/// start of a large mesh a hundred million are in flight at once. A TLV that does not fit (a
/// name the table lacks, other flags or interval, an IHU with an address, a prefix that is not
/// an IPv6 one) is kept whole in [`Sim::boxed`] and this holds its index.
#[derive(Clone, Copy, Debug)]
struct Packed {
    /// The kind (top 3 bits), then a subnet id ([`NO_ID`] for a wildcard) or a box index.
    kx: u32,
    /// A router-id id, or an interval, a generation, a hop count.
    y: u32,
    /// A seqno (high half), a metric or Hello flags (low half).
    cd: u32,
}

const HELLO: u32 = 0;
const IHU: u32 = 1;
const UPDATE: u32 = 2;
const ROUTE_REQUEST: u32 = 3;
const SEQNO_REQUEST: u32 = 4;
const BOXED: u32 = 5;
const KIND_SHIFT: u32 = 29;
const ID_MASK: u32 = (1 << KIND_SHIFT) - 1;
const NO_ID: u32 = ID_MASK;

impl Packed {
    fn new(kind: u32, x: u32, y: u32, c: u16, d: u16) -> Packed {
        Packed {
            kx: (kind << KIND_SHIFT) | (x & ID_MASK),
            y,
            cd: (u32::from(c) << 16) | u32::from(d),
        }
    }

    fn kind(&self) -> u32 {
        self.kx >> KIND_SHIFT
    }
    fn x(&self) -> u32 {
        self.kx & ID_MASK
    }
    fn c(&self) -> u16 {
        (self.cd >> 16) as u16
    }
    fn d(&self) -> u16 {
        self.cd as u16
    }

    /// Packs `tlv` if it fits.
    fn pack(tlv: &Tlv, names: &SharedNames) -> Option<Packed> {
        let id = |i: Option<u32>| i.filter(|&i| i < NO_ID);
        let v6 = |p: &Prefix| match p {
            Prefix::V6(s) => id(names.subnet_index(s)),
            _ => None,
        };
        let rid = |r: &RouterId| id(names.router_id_index(r));
        Some(match tlv {
            Tlv::Hello(h) => Packed::new(HELLO, 0, u32::from(h.interval), h.seqno.0, h.flags),
            Tlv::Ihu(i) if i.address.is_none() => {
                Packed::new(IHU, 0, u32::from(i.interval), 0, i.rx_cost.0)
            }
            Tlv::Update(u) if u.flags == 0 && u.interval == consts::UPDATE_INTERVAL_CS => {
                Packed::new(
                    UPDATE,
                    v6(&u.prefix)?,
                    rid(&u.router_id)?,
                    u.seqno.0,
                    u.metric.0,
                )
            }
            Tlv::RouteRequest(r) => {
                let x = match r.prefix {
                    Prefix::Wildcard => NO_ID,
                    ref p => v6(p)?,
                };
                Packed::new(ROUTE_REQUEST, x, u32::from(r.generation), 0, 0)
            }
            Tlv::SeqNoRequest(r) => Packed::new(
                SEQNO_REQUEST,
                v6(&r.prefix)?,
                rid(&r.router_id)?,
                r.seqno.0,
                u16::from(r.hop_count),
            ),
            _ => return None,
        })
    }

    /// The TLV back; `None` for a boxed one.
    fn unpack(&self, names: &SharedNames) -> Option<Tlv> {
        let subnet = || names.subnet_at(self.x()).map(Prefix::V6);
        let rid = || names.router_id_at(self.y);
        let narrow = |v: u32| u16::try_from(v).ok();
        Some(match self.kind() {
            HELLO => Tlv::Hello(Hello {
                flags: self.d(),
                seqno: SeqNo(self.c()),
                interval: narrow(self.y)?,
            }),
            IHU => Tlv::Ihu(Ihu {
                rx_cost: Metric(self.d()),
                interval: narrow(self.y)?,
                address: None,
            }),
            UPDATE => Tlv::Update(Update {
                flags: 0,
                interval: consts::UPDATE_INTERVAL_CS,
                seqno: SeqNo(self.c()),
                metric: Metric(self.d()),
                prefix: subnet()?,
                router_id: rid()?,
            }),
            ROUTE_REQUEST => Tlv::RouteRequest(RouteRequest {
                generation: u8::try_from(self.y).ok()?,
                prefix: if self.x() == NO_ID {
                    Prefix::Wildcard
                } else {
                    subnet()?
                },
            }),
            SEQNO_REQUEST => Tlv::SeqNoRequest(SeqNoRequest {
                seqno: SeqNo(self.c()),
                hop_count: u8::try_from(self.d()).ok()?,
                router_id: rid()?,
                prefix: subnet()?,
            }),
            _ => return None,
        })
    }
}

/// A TLV in flight (20 bytes).
#[derive(Clone, Copy, Debug)]
struct Flight {
    msg: Packed,
    /// The next TLV on the same link direction, or [`NIL`].
    next: u32,
    /// The low 32 bits of the arrival time in microseconds: the arrival is at most a link
    /// latency (under an hour, 2³² µs being 71 minutes) after the time of the one before.
    at: u32,
}

const NIL: u32 = u32::MAX;
const FLIGHT_CHUNK: usize = 1 << 16;

/// The arrival time whose low 32 bits are `at`, the first at or after `now`.
fn arrival(at: u32, now: Time) -> Time {
    let n = now.as_micros();
    let mut t = (n & !0xFFFF_FFFF) | u64::from(at);
    if t < n {
        t += 1 << 32;
    }
    Time::from_micros(t)
}

/// Every TLV in flight, in one arena of fixed-size chunks: it grows without copying and
/// without the slack of doubling (a cold start of ten thousand nodes has a hundred million in
/// flight), and freed places are reused.
#[derive(Default)]
struct Flights {
    chunks: Vec<Box<[Flight]>>,
    /// Places handed out so far.
    len: u32,
    /// A list of freed places threaded through `next`.
    free: Option<u32>,
}

impl Flights {
    fn alloc(&mut self, f: Flight) -> u32 {
        if let Some(i) = self.free {
            let next = self.get(i).next;
            self.free = (next != NIL).then_some(next);
            *self.get_mut(i) = f;
            return i;
        }
        let i = self.len;
        if i as usize / FLIGHT_CHUNK == self.chunks.len() {
            self.chunks.push(vec![f; FLIGHT_CHUNK].into_boxed_slice());
        }
        self.len += 1;
        *self.get_mut(i) = f;
        i
    }

    /// Frees place `i` and returns what it held.
    fn free(&mut self, i: u32) -> Flight {
        let next_free = self.free.unwrap_or(NIL);
        let slot = self.get_mut(i);
        let f = *slot;
        slot.next = next_free;
        self.free = Some(i);
        f
    }

    fn get(&self, i: u32) -> &Flight {
        &self.chunks[i as usize / FLIGHT_CHUNK][i as usize % FLIGHT_CHUNK]
    }

    fn get_mut(&mut self, i: u32) -> &mut Flight {
        &mut self.chunks[i as usize / FLIGHT_CHUNK][i as usize % FLIGHT_CHUNK]
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// The first TLV waiting on a link direction arrives.
    Arrive {
        link: u32,
        dir: u8,
    },
    Wake {
        node: u32,
    },
}

/// The queue holds one event per busy link direction and one per node, so it stays small.
///
/// Events of one instant run in a fixed order, arrivals by link, then wake-ups by node, not in
/// the order they were scheduled: a core may ask to be woken early (a timer with nothing to
/// do), and when it asks must not reorder the run. (`seq` only tells apart copies of one
/// event.)
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct QItem {
    t: Time,
    ev: Ev,
    seq: u64,
}

/// What happened during a run.
#[derive(Clone, Default, Debug)]
pub struct SimStats {
    pub events_processed: u64,
    pub tlvs_delivered: u64,
    pub tlvs_lost: u64,
    pub tlvs_on_down_link: u64,
    pub routes_acquired: u64,
    pub routes_lost: u64,
    pub links_declared_dead: u64,
    pub loop_checks: u64,
    /// Most TLVs in flight at once.
    pub max_in_flight: u64,
    /// When a selected route last changed anywhere (routes converge when this stops moving).
    pub last_selection_change: Option<Time>,
    /// With [`Sim::digest_tlvs`]: a digest (FNV-1a) of every TLV the routers sent, with its time
    /// and link, in order. Two runs with equal digests sent the same TLVs at the same instants,
    /// which shows that a change to the core's internals left its behaviour alone.
    pub tlv_digest: u64,
}

/// FNV-1a over whatever is written to it: the digest needs no `Hash` impl on the TLV types,
/// only their `Debug` form, which names every field.
struct Fnv<'a>(&'a mut u64);

impl std::fmt::Write for Fnv<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            *self.0 = (*self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

/// The simulated network.
pub struct Sim {
    now: Time,
    nodes: Vec<SimNode>,
    links: Vec<SimLink>,
    queue: BinaryHeap<Reverse<QItem>>,
    seq: u64,
    rng: SimRng,
    /// Follow every changed selection after every event (on by default).
    pub check_loops: bool,
    /// Granularity of [`Sim::run_until_cond`] checks (1 ms by default).
    pub cond_resolution: Duration,
    /// Fold every TLV sent into [`SimStats::tlv_digest`] (off by default: it formats each one).
    pub digest_tlvs: bool,
    loops: Vec<String>,
    query_timeouts: Vec<(Time, usize, Subnet)>,
    pub stats: SimStats,
    work: Vec<usize>,
    /// Every node's subnet and router-id (restarted nodes' new ones too), shared by all cores
    /// so that none holds copies of the names of a full table; also names packed TLVs.
    names: SharedNames,
    /// The table the cores hold, if it is up to date.
    shared: Option<Arc<SharedNames>>,
    /// Every TLV in flight.
    flights: Flights,
    /// TLVs in flight that [`Packed`] cannot hold, and free places among them.
    boxed: Vec<Option<Tlv>>,
    boxed_free: Vec<u32>,
    in_flight: usize,
}

fn link_id(index: usize, epoch: u32) -> LinkId {
    LinkId((u64::from(epoch) << 32) | index as u64)
}

fn split_link_id(id: LinkId) -> (usize, u32) {
    ((id.0 & 0xFFFF_FFFF) as usize, (id.0 >> 32) as u32)
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: Time::ZERO,
            nodes: Vec::new(),
            links: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: SimRng::new(seed),
            check_loops: true,
            cond_resolution: Duration::from_millis(1),
            digest_tlvs: false,
            loops: Vec::new(),
            query_timeouts: Vec::new(),
            stats: SimStats {
                tlv_digest: 0xcbf2_9ce4_8422_2325,
                ..SimStats::default()
            },
            work: Vec::new(),
            names: SharedNames::default(),
            shared: None,
            flights: Flights::default(),
            boxed: Vec::new(),
            boxed_free: Vec::new(),
            in_flight: 0,
        }
    }

    pub fn now(&self) -> Time {
        self.now
    }
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
    pub fn router(&self, n: usize) -> &Router {
        &self.nodes[n].router
    }
    pub fn router_mut(&mut self, n: usize) -> &mut Router {
        &mut self.nodes[n].router
    }
    pub fn address(&self, n: usize) -> Ipv6Addr {
        self.nodes[n].address
    }
    pub fn subnet(&self, n: usize) -> Subnet {
        self.nodes[n].subnet
    }
    pub fn is_alive(&self, n: usize) -> bool {
        self.nodes[n].alive
    }
    /// The two ends of a link.
    pub fn link_ends(&self, l: usize) -> (usize, usize) {
        (self.links[l].a, self.links[l].b)
    }
    pub fn link_latency(&self, l: usize) -> Duration {
        self.links[l].latency
    }
    pub fn link_is_up(&self, l: usize) -> bool {
        self.links[l].up
    }
    /// Descriptions of every forwarding loop seen so far.
    pub fn loops(&self) -> &[String] {
        &self.loops
    }
    /// (time, node, subnet) of every query that timed out.
    pub fn query_timeouts(&self) -> &[(Time, usize, Subnet)] {
        &self.query_timeouts
    }

    fn new_router(&mut self, public_key: [u8; 32], subnet: Subnet) -> Router {
        let mut suffix = [0u8; 6];
        self.rng.fill(&mut suffix);
        let rid = RouterId::new(public_key, suffix);
        let mut cfg = Config::new(rid, subnet);
        cfg.record_selection_changes = true;
        // No one takes the cores' forwarding tables here.
        cfg.snapshot_changes = false;
        self.names.add_subnet(subnet);
        self.names.add_router_id(rid);
        self.shared = None;
        Router::new(cfg, self.now)
    }

    /// Gives every core the current shared names (after nodes came or restarted), before
    /// they can hear of them: names are learned only over links.
    fn share_names(&mut self) {
        if self.shared.is_some() {
            return;
        }
        let shared = Arc::new(self.names.clone());
        for n in &mut self.nodes {
            n.router.share_names(shared.clone());
        }
        self.shared = Some(shared);
    }

    /// Adds a running node with a random key.
    pub fn add_node(&mut self) -> usize {
        let mut pk = [0u8; 32];
        self.rng.fill(&mut pk);
        let address = address_from_public_key(&pk);
        let subnet = Subnet::slash64(address);
        let router = self.new_router(pk, subnet);
        self.nodes.push(SimNode {
            router,
            alive: true,
            next_wake: None,
            public_key: pk,
            address,
            subnet,
            links: Vec::new(),
            routes: 0,
        });
        let n = self.nodes.len() - 1;
        self.settle(n);
        n
    }

    /// Connects two nodes; the link comes up now. Latencies are capped at an hour.
    pub fn connect(&mut self, a: usize, b: usize, latency: Duration, loss_ppm: u32) -> usize {
        self.links.push(SimLink {
            a,
            b,
            // In-flight TLVs keep the low 32 bits of their arrival time (see `Flight`).
            latency: latency.min(Duration::from_secs(3600)),
            loss_ppm,
            up: false,
            epoch: 0,
            fifo: [(NIL, NIL); 2],
            head: [None, None],
        });
        let l = self.links.len() - 1;
        self.nodes[a].links.push(l);
        self.nodes[b].links.push(l);
        self.link_up(l);
        l
    }

    /// Brings a link up (a new connection: a new `LinkId` on both sides).
    pub fn link_up(&mut self, l: usize) {
        if self.links[l].up {
            return;
        }
        self.share_names();
        let link = &mut self.links[l];
        link.up = true;
        link.epoch = link.epoch.wrapping_add(1);
        let (a, b, id) = (link.a, link.b, link_id(l, link.epoch));
        for n in [a, b] {
            if self.nodes[n].alive {
                let now = self.now;
                // A fresh id per connection cannot collide; an error here would be a sim bug.
                let _ = self.nodes[n]
                    .router
                    .handle_link_up(id, consts::STATIC_COST_TCP6, now);
            }
        }
        self.settle(a);
        self.settle(b);
    }

    /// Closes a link: both ends learn it at once (a TCP close).
    pub fn link_down(&mut self, l: usize) {
        if !self.links[l].up {
            return;
        }
        self.close(l);
        let (a, b, id) = (
            self.links[l].a,
            self.links[l].b,
            link_id(l, self.links[l].epoch),
        );
        for n in [a, b] {
            if self.nodes[n].alive {
                let now = self.now;
                self.nodes[n].router.handle_link_down(id, now);
            }
        }
        self.settle(a);
        self.settle(b);
    }

    /// The node stops: no more output, inputs vanish, connections stay "open" (no close seen).
    pub fn kill_silently(&mut self, n: usize) {
        self.nodes[n].alive = false;
        self.nodes[n].next_wake = None;
    }

    /// The node restarts with the same key, a new router-id suffix and seqno 0. Its connections
    /// are closed and re-established.
    pub fn restart(&mut self, n: usize) {
        let links = self.nodes[n].links.clone();
        for &l in &links {
            self.link_down(l);
        }
        let pk = self.nodes[n].public_key;
        let subnet = self.nodes[n].subnet;
        self.nodes[n].router = self.new_router(pk, subnet);
        self.nodes[n].routes = 0;
        self.nodes[n].alive = true;
        self.nodes[n].next_wake = None;
        for &l in &links {
            self.link_up(l);
        }
        self.settle(n);
    }

    /// Node `n` sends `tlv` on link `l` as if its router had sent it: lets a test play a hostile
    /// or broken peer. Ignored if the link is down or `n` is not one of its ends.
    pub fn inject(&mut self, n: usize, l: usize, tlv: Tlv) {
        let Some(link) = self.links.get_mut(l) else {
            return;
        };
        if !link.up || (link.a != n && link.b != n) {
            return;
        }
        let t = self.now + link.latency;
        let d = usize::from(link.a != n);
        self.share_names();
        self.enqueue(l, d, t, tlv);
    }

    /// Puts `tlv` in flight on link `l` in direction `d`, arriving at `t`.
    fn enqueue(&mut self, l: usize, d: usize, t: Time, tlv: Tlv) {
        if self.digest_tlvs {
            use std::fmt::Write;
            let _ = write!(
                Fnv(&mut self.stats.tlv_digest),
                "{} {l} {d} {tlv:?};",
                self.now.as_micros()
            );
        }
        let packed = Packed::pack(&tlv, &self.names).unwrap_or_else(|| {
            let i = match self.boxed_free.pop() {
                Some(i) => {
                    self.boxed[i as usize] = Some(tlv);
                    i
                }
                None => {
                    self.boxed.push(Some(tlv));
                    (self.boxed.len() - 1) as u32
                }
            };
            Packed::new(BOXED, i, 0, 0, 0)
        });
        self.in_flight += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight as u64);
        let i = self.flights.alloc(Flight {
            msg: packed,
            next: NIL,
            at: t.as_micros() as u32,
        });
        let link = &mut self.links[l];
        match link.fifo[d] {
            (NIL, _) => link.fifo[d] = (i, i),
            (first, last) => {
                self.flights.get_mut(last).next = i;
                link.fifo[d] = (first, i);
            }
        }
        if link.head[d].is_none() {
            link.head[d] = Some(t);
            self.push(
                t,
                Ev::Arrive {
                    link: l as u32,
                    dir: d as u8,
                },
            );
        }
    }

    /// Node `n` wants to reach node `dst` (the data path asks for a route).
    pub fn request(&mut self, n: usize, dst: usize) {
        let a = self.nodes[dst].address;
        let now = self.now;
        self.nodes[n].router.request_route(a, now);
        self.settle(n);
    }

    /// Follows selected next hops from `from` towards `to`'s subnet; `Ok(hops)` if it arrives.
    pub fn path(&self, from: usize, to: usize) -> Result<usize, PathError> {
        self.walk(from, self.nodes[to].subnet)
    }

    fn walk(&self, from: usize, subnet: Subnet) -> Result<usize, PathError> {
        let mut cur = from;
        let mut hops = 0;
        loop {
            let node = &self.nodes[cur];
            if node.subnet == subnet {
                return Ok(hops);
            }
            if !node.alive {
                return Err(PathError::DeadNode { at: cur });
            }
            let Some(id) = node.router.selected_next_hop(&subnet) else {
                return Err(PathError::NoRoute { at: cur });
            };
            let (l, epoch) = split_link_id(id);
            let Some(link) = self.links.get(l).filter(|x| x.up && x.epoch == epoch) else {
                return Err(PathError::DownLink { at: cur });
            };
            cur = if link.a == cur { link.b } else { link.a };
            hops += 1;
            if hops > self.nodes.len() {
                return Err(PathError::Loop { at: from });
            }
        }
    }

    /// Processes events up to and including `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Time) {
        while self.queue.peek().is_some_and(|Reverse(q)| q.t <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `cond` holds or `deadline`; returns the time it was first seen to hold.
    /// `cond` is checked after an event once per [`Sim::cond_resolution`] of virtual time (so
    /// expensive conditions do not dominate), and at the deadline.
    pub fn run_until_cond(
        &mut self,
        deadline: Time,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Time> {
        if cond(self) {
            return Some(self.now);
        }
        let mut next_check = self.now;
        while self.queue.peek().is_some_and(|Reverse(q)| q.t <= deadline) {
            self.step();
            if self.now >= next_check {
                next_check = self.now + self.cond_resolution;
                if cond(self) {
                    return Some(self.now);
                }
            }
        }
        if cond(self) {
            return Some(self.now);
        }
        self.now = self.now.max(deadline);
        None
    }

    /// Subnets node `n` has a selected route for.
    pub fn selected_routes(&self, n: usize) -> usize {
        self.nodes[n].routes
    }

    /// Whether every running node has a selected route to every other running node.
    pub fn full_tables(&self) -> bool {
        let alive = self.nodes.iter().filter(|n| n.alive).count();
        self.nodes.iter().all(|n| !n.alive || n.routes + 1 >= alive)
    }

    /// Runs until every running node has a route to every other one and no selected route has
    /// changed for `quiet`, or until `deadline`. Returns (when every table was first full,
    /// when the last selection changed), the first `None` if that never happened; the second
    /// is the convergence time when it is followed by `quiet`.
    pub fn run_until_converged(
        &mut self,
        deadline: Time,
        quiet: Duration,
    ) -> (Option<Time>, Option<Time>) {
        let mut full_at = None;
        let mut next_check = self.now;
        while self.queue.peek().is_some_and(|Reverse(q)| q.t <= deadline) {
            self.step();
            if self.now < next_check {
                continue;
            }
            next_check = self.now + self.cond_resolution;
            if full_at.is_none() && self.full_tables() {
                full_at = Some(self.now);
            }
            let settled = self
                .stats
                .last_selection_change
                .is_none_or(|t| self.now.saturating_since(t) >= quiet);
            if full_at.is_some() && settled {
                return (full_at, self.stats.last_selection_change);
            }
        }
        self.now = self.now.max(deadline);
        (full_at, self.stats.last_selection_change)
    }

    fn step(&mut self) {
        let Some(Reverse(item)) = self.queue.pop() else {
            return;
        };
        self.now = self.now.max(item.t);
        self.stats.events_processed += 1;
        match item.ev {
            Ev::Arrive { link, dir } => {
                let (link, d) = (link as usize, usize::from(dir));
                let l = &mut self.links[link];
                if l.head[d] != Some(item.t) {
                    return;
                }
                l.head[d] = None;
                let (first, last) = l.fifo[d];
                if first == NIL {
                    return;
                }
                let f = self.flights.free(first);
                let packed = f.msg;
                l.fifo[d] = if first == last {
                    (NIL, NIL)
                } else {
                    (f.next, last)
                };
                if f.next != NIL && first != last {
                    let next = arrival(self.flights.get(f.next).at, self.now);
                    l.head[d] = Some(next);
                    self.push(
                        next,
                        Ev::Arrive {
                            link: link as u32,
                            dir,
                        },
                    );
                }
                let Some(tlv) = self.unpack(packed) else {
                    return;
                };
                let l = &self.links[link];
                let to = if d == 0 { l.b } else { l.a };
                let id = link_id(link, l.epoch);
                if !self.nodes[to].alive {
                    self.stats.tlvs_on_down_link += 1;
                    return;
                }
                self.stats.tlvs_delivered += 1;
                let now = self.now;
                self.nodes[to].router.handle_tlv(id, &tlv, now);
                self.settle(to);
            }
            Ev::Wake { node } => {
                let node = node as usize;
                let n = &mut self.nodes[node];
                if !n.alive || n.next_wake != Some(item.t) {
                    return;
                }
                n.next_wake = None;
                let now = self.now;
                n.router.handle_timeout(now);
                self.settle(node);
            }
        }
    }

    fn push(&mut self, t: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(QItem {
            t,
            seq: self.seq,
            ev,
        }));
    }

    /// The TLV a packed one stands for (a boxed one leaves the box).
    fn unpack(&mut self, p: Packed) -> Option<Tlv> {
        self.in_flight -= 1;
        if p.kind() != BOXED {
            return p.unpack(&self.names);
        }
        let tlv = self.boxed.get_mut(p.x() as usize)?.take();
        self.boxed_free.push(p.x());
        tlv
    }

    /// Marks a link down and forgets what was in flight on it.
    fn close(&mut self, l: usize) {
        let link = &mut self.links[l];
        link.up = false;
        let mut gone = Vec::new();
        for d in 0..2 {
            let (mut i, _) = std::mem::replace(&mut link.fifo[d], (NIL, NIL));
            while i != NIL {
                let f = self.flights.free(i);
                gone.push(f.msg);
                i = f.next;
            }
            link.head[d] = None;
        }
        self.stats.tlvs_on_down_link += gone.len() as u64;
        for p in gone {
            self.unpack(p);
        }
    }

    /// Drains a node's outputs (and those of nodes affected by its events), checks loops, and
    /// schedules its next wake-up.
    fn settle(&mut self, start: usize) {
        self.work.push(start);
        while let Some(n) = self.work.pop() {
            if !self.nodes[n].alive {
                continue;
            }
            while let Some((id, tlv)) = self.nodes[n].router.poll_transmit() {
                let (l, epoch) = split_link_id(id);
                let Some(link) = self.links.get(l) else {
                    continue;
                };
                if !link.up || link.epoch != epoch || (link.a != n && link.b != n) {
                    self.stats.tlvs_on_down_link += 1;
                    continue;
                }
                if link.loss_ppm > 0 && self.rng.below(1_000_000) < u64::from(link.loss_ppm) {
                    self.stats.tlvs_lost += 1;
                    continue;
                }
                let t = self.now + link.latency;
                let d = usize::from(link.a != n);
                self.enqueue(l, d, t, tlv);
            }
            while let Some(ev) = self.nodes[n].router.poll_event() {
                match ev {
                    Event::LinkDead(id) => {
                        self.stats.links_declared_dead += 1;
                        let (l, epoch) = split_link_id(id);
                        if self.links.get(l).is_some_and(|x| x.up && x.epoch == epoch) {
                            // The shell closes the connection; the other end sees the close.
                            self.close(l);
                            let other = if self.links[l].a == n {
                                self.links[l].b
                            } else {
                                self.links[l].a
                            };
                            if self.nodes[other].alive {
                                let now = self.now;
                                self.nodes[other].router.handle_link_down(id, now);
                                self.work.push(other);
                            }
                        }
                    }
                    Event::RouteAcquired(_) => {
                        self.stats.routes_acquired += 1;
                        self.nodes[n].routes += 1;
                    }
                    Event::RouteLost(_) => {
                        self.stats.routes_lost += 1;
                        self.nodes[n].routes = self.nodes[n].routes.saturating_sub(1);
                    }
                    Event::QueryTimedOut(s) => self.query_timeouts.push((self.now, n, s)),
                }
            }
            let changed = self.nodes[n].router.take_selection_changes();
            if !changed.is_empty() {
                self.stats.last_selection_change = Some(self.now);
            }
            if self.check_loops {
                for s in changed {
                    self.stats.loop_checks += 1;
                    if let Err(PathError::Loop { .. }) = self.walk(n, s) {
                        if self.loops.len() < 100 {
                            self.loops
                                .push(format!("t={:?} node {n} subnet {s}", self.now));
                        }
                    }
                }
            }
            if let Some(t) = self.nodes[n].router.poll_timeout() {
                let t = t.max(self.now);
                if self.nodes[n].next_wake.is_none_or(|w| t < w) {
                    self.nodes[n].next_wake = Some(t);
                    self.push(t, Ev::Wake { node: n as u32 });
                }
            }
        }
    }
}

/// Topology builders.
impl Sim {
    fn latency(&mut self) -> Duration {
        Duration::from_micros(1000 + self.rng.below(49_000))
    }

    /// `n` nodes in a line.
    pub fn chain(seed: u64, n: usize) -> Sim {
        let mut s = Sim::new(seed);
        for _ in 0..n {
            s.add_node();
        }
        for i in 1..n {
            let lat = s.latency();
            s.connect(i - 1, i, lat, 0);
        }
        s
    }

    /// `n` nodes in a ring.
    pub fn ring(seed: u64, n: usize) -> Sim {
        let mut s = Sim::chain(seed, n);
        let lat = s.latency();
        s.connect(n - 1, 0, lat, 0);
        s
    }

    /// A `w`×`h` grid; node `(x, y)` is `y * w + x`.
    pub fn grid(seed: u64, w: usize, h: usize) -> Sim {
        let mut s = Sim::new(seed);
        for _ in 0..w * h {
            s.add_node();
        }
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if x + 1 < w {
                    let lat = s.latency();
                    s.connect(i, i + 1, lat, 0);
                }
                if y + 1 < h {
                    let lat = s.latency();
                    s.connect(i, i + w, lat, 0);
                }
            }
        }
        s
    }

    /// A connected random mesh: a random spanning tree plus random extra links up to an average
    /// degree of `avg_degree`.
    pub fn random_mesh(seed: u64, n: usize, avg_degree: f64) -> Sim {
        let mut s = Sim::new(seed);
        for _ in 0..n {
            s.add_node();
        }
        let mut edges = rustc_hash::FxHashSet::default();
        for i in 1..n {
            let j = s.rng.below(i as u64) as usize;
            edges.insert((j, i));
            let lat = s.latency();
            s.connect(j, i, lat, 0);
        }
        let target = ((n as f64) * avg_degree / 2.0) as usize;
        let mut guard = 0;
        while edges.len() < target && guard < 100 * n {
            guard += 1;
            let a = s.rng.below(n as u64) as usize;
            let b = s.rng.below(n as u64) as usize;
            let key = (a.min(b), a.max(b));
            if a == b || edges.contains(&key) {
                continue;
            }
            edges.insert(key);
            let lat = s.latency();
            s.connect(a, b, lat, 0);
        }
        s
    }

    /// A mesh of `n` peers with 3 to 8 links each (see [`peer_degree`]): the topology of the
    /// large-mesh scenarios.
    pub fn peer_mesh(seed: u64, n: usize) -> Sim {
        Sim::degree_mesh(seed, n, peer_degree)
    }

    /// A connected mesh of `n` nodes in which node `i` has about `degree(rng)` links (drawn
    /// once per node): a random spanning tree first (each node links to an earlier one that
    /// has room), then random pairs of nodes short of their degree. Nodes may end a link short
    /// of their draw when no free partner is left.
    pub fn degree_mesh(seed: u64, n: usize, mut degree: impl FnMut(&mut SimRng) -> usize) -> Sim {
        let mut s = Sim::new(seed);
        for _ in 0..n {
            s.add_node();
        }
        let want: Vec<usize> = (0..n).map(|_| degree(&mut s.rng).max(1)).collect();
        let mut have = vec![0usize; n];
        let mut edges = rustc_hash::FxHashSet::default();
        let link = |s: &mut Sim,
                    have: &mut Vec<usize>,
                    edges: &mut rustc_hash::FxHashSet<(usize, usize)>,
                    a: usize,
                    b: usize| {
            let lat = s.latency();
            s.connect(a, b, lat, 0);
            edges.insert((a.min(b), a.max(b)));
            have[a] += 1;
            have[b] += 1;
        };
        for i in 1..n {
            let mut j = s.rng.below(i as u64) as usize;
            for _ in 0..16 {
                if have[j] < want[j] {
                    break;
                }
                j = s.rng.below(i as u64) as usize;
            }
            link(&mut s, &mut have, &mut edges, j, i);
        }
        for _ in 0..8 {
            let mut stubs: Vec<usize> = (0..n)
                .flat_map(|i| std::iter::repeat_n(i, want[i].saturating_sub(have[i])))
                .collect();
            if stubs.len() < 2 {
                break;
            }
            for i in (1..stubs.len()).rev() {
                let j = s.rng.below(i as u64 + 1) as usize;
                stubs.swap(i, j);
            }
            for p in stubs.chunks_exact(2) {
                let (a, b) = (p[0], p[1]);
                let key = (a.min(b), a.max(b));
                if a == b || have[a] >= want[a] || have[b] >= want[b] || edges.contains(&key) {
                    continue;
                }
                link(&mut s, &mut have, &mut edges, a, b);
            }
        }
        s
    }

    /// Links of node `n`.
    pub fn node_links(&self, n: usize) -> &[usize] {
        &self.nodes[n].links
    }

    /// The link between two nodes, if any.
    pub fn link_between(&self, a: usize, b: usize) -> Option<usize> {
        self.nodes[a].links.iter().copied().find(|&l| {
            (self.links[l].a, self.links[l].b) == (a, b)
                || (self.links[l].a, self.links[l].b) == (b, a)
        })
    }

    /// The node after `from` on its selected path towards `to`.
    pub fn next_node(&self, from: usize, to: usize) -> Option<usize> {
        let id = self.nodes[from]
            .router
            .selected_next_hop(&self.nodes[to].subnet)?;
        let (l, epoch) = split_link_id(id);
        let link = self.links.get(l).filter(|x| x.epoch == epoch)?;
        Some(if link.a == from { link.b } else { link.a })
    }

    /// Hop counts of shortest paths from `from` over links that are up (BFS).
    pub fn bfs_hops(&self, from: usize) -> Vec<Option<usize>> {
        let mut dist = vec![None; self.nodes.len()];
        dist[from] = Some(0);
        let mut q = std::collections::VecDeque::from([from]);
        while let Some(n) = q.pop_front() {
            let d = dist[n].unwrap_or(0);
            for &l in &self.nodes[n].links {
                let link = &self.links[l];
                if !link.up {
                    continue;
                }
                let m = if link.a == n { link.b } else { link.a };
                if dist[m].is_none() && self.nodes[m].alive {
                    dist[m] = Some(d + 1);
                    q.push_back(m);
                }
            }
        }
        dist
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::babel::Ihu;

    #[test]
    fn tlvs_in_flight_pack_small_and_come_back_whole() {
        assert_eq!(std::mem::size_of::<Flight>(), 20);
        let mut names = SharedNames::default();
        let s = Subnet::slash64(address_from_public_key(&[1; 32]));
        let r = RouterId::new([1; 32], [2; 6]);
        names.add_subnet(s);
        names.add_router_id(r);
        let other = Subnet::slash64(address_from_public_key(&[3; 32]));
        let update = |flags, interval, prefix, router_id| {
            Tlv::Update(Update {
                flags,
                interval,
                seqno: SeqNo(7),
                metric: Metric(300),
                prefix,
                router_id,
            })
        };
        let std_interval = consts::UPDATE_INTERVAL_CS;
        let packed = [
            Tlv::Hello(Hello {
                flags: 0x8000,
                seqno: SeqNo(9),
                interval: 2000,
            }),
            Tlv::Ihu(Ihu {
                rx_cost: Metric(1010),
                interval: 6000,
                address: None,
            }),
            update(0, std_interval, Prefix::V6(s), r),
            Tlv::RouteRequest(RouteRequest {
                generation: 3,
                prefix: Prefix::V6(s),
            }),
            Tlv::RouteRequest(RouteRequest {
                generation: 0,
                prefix: Prefix::Wildcard,
            }),
            Tlv::SeqNoRequest(SeqNoRequest {
                seqno: SeqNo(5),
                hop_count: 64,
                router_id: r,
                prefix: Prefix::V6(s),
            }),
        ];
        for t in packed {
            let p = Packed::pack(&t, &names).expect("fits");
            assert_eq!(p.unpack(&names), Some(t));
        }
        let boxed = [
            update(0x80, std_interval, Prefix::V6(s), r),
            update(0, 0, Prefix::V6(s), r),
            update(0, std_interval, Prefix::V6(other), r),
            update(
                0,
                std_interval,
                Prefix::V6(s),
                RouterId::new([4; 32], [0; 6]),
            ),
            Tlv::Ihu(Ihu {
                rx_cost: Metric(1),
                interval: 1,
                address: Some(Prefix::V6(s)),
            }),
        ];
        for t in boxed {
            assert!(Packed::pack(&t, &names).is_none(), "{t:?}");
        }
    }

    #[test]
    fn arrival_times_come_back_from_their_low_bits() {
        let now = Time::from_micros((5 << 32) + 0xFFFF_FF00);
        let at = now + Duration::from_millis(50);
        assert_eq!(arrival(at.as_micros() as u32, now), at);
        assert_eq!(arrival(now.as_micros() as u32, now), now);
    }
}
