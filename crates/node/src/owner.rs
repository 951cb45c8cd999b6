//! The owner task: the one place that holds the routing core, the peer table, the packets
//! waiting for routes and the key cache. Everything else talks to it with messages; it publishes
//! what the data path needs as an immutable [`DataTable`] snapshot.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use datapath::sessions::SessionManager;
use datapath::{bump, DataCounters, FrameBatch, InboundFrame, Need, PendingOutcome, TunBatch};
use routing::{Event, LinkId, Lookup, Router, Time};
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use wire::babel::{Subnet, Tlv};
use wire::icmp::IcmpError;
use wire::ip::ipv6::Ipv6Packet;

use crate::control::{
    ConnectionState, PeerInfo, PeerKind, PeerOpError, QueryInfo, Request, RouteInfo, RouteKind,
};
use crate::discovery::{Admission, DiscoveryLimits};
use crate::endpoint::{Endpoint, Protocol};
use crate::keys::{Cipher, Identity, SharedKeys};
use crate::link::quic::{QuicEndpoint, QuicLink};
use crate::link::tcp::canonical;
use crate::link::{self, CloseReason, LinkContext, LinkEvent, LinkHandles, LinkStats, Transport};
use crate::metrics::{
    DataStats, LinkCloseStats, PeerStats, PeeringStats, RoutingStats, Stats, TunHistograms,
    TunStats,
};
use crate::pending::{self, Pending};
use crate::ratelimit::LogLimiter;
use crate::redial;
use crate::sessions::{self, SessionNeed};
use crate::transmit::DataTable;

/// Least time between two publications of the data path's snapshot while route changes keep
/// coming: a burst of n changes costs n / (burst length / this) publications, not n.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// How often session retries, rekeys and expiry are looked at.
const SESSION_TICK: Duration = Duration::from_millis(250);
/// A dial that takes longer than this failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovered peers are forgotten after this many failures in a row: dials that failed, or
/// connections that closed before a control frame came.
const DISCOVERED_MAX_FAILURES: u32 = 3;
/// Packets from the TUN waiting for a route: per destination /64 and in total. Far below
/// mycelium's limits (10k / 1M), which would let one flood hold gigabytes. They wait no longer
/// than a route query may take.
const PENDING: pending::Limits = pending::Limits {
    per_subnet: 128,
    per_subnet_bytes: 256 * 1024,
    total: 4096,
    total_bytes: 8 << 20,
    per_link: usize::MAX,
    per_link_bytes: usize::MAX,
    deadline: routing::consts::QUERY_TIMEOUT,
};
/// Frames from senders whose key is not known yet: per sender /64, per link they came in on (so
/// that a flooding peer cannot take the room a new honest sender's first packets need), and in
/// total.
const PENDING_IN: pending::Limits = pending::Limits {
    per_subnet: 64,
    per_subnet_bytes: 256 * 1024,
    total: 1024,
    total_bytes: 4 << 20,
    per_link: 256,
    per_link_bytes: 1 << 20,
    deadline: routing::consts::QUERY_TIMEOUT,
};
/// How often waiting traffic is checked against its deadline.
const PENDING_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Messages to the owner from the rest of the node.
#[derive(Debug)]
pub(crate) enum OwnerMsg {
    Dialed(Endpoint, std::io::Result<Connected>),
    Inbound(crate::link::tcp::Proven, SocketAddr),
    InboundQuic(QuicLink, SocketAddr),
    Discovered(Endpoint),
}

/// A connection a dial made.
#[derive(Debug)]
pub(crate) enum Connected {
    Tcp(TcpStream),
    Quic(QuicLink),
}

impl std::fmt::Debug for QuicLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::link::Transport::describe(self))
    }
}

struct Peer {
    kind: PeerKind,
    learned: Instant,
    link: Option<LinkId>,
    connected_at: Option<Instant>,
    dialing: bool,
    /// Failed dials in a row (and, for a discovered peer, connections that closed before any
    /// control frame): a discovered peer is forgotten after a few.
    failures: u32,
    /// Failed dials and connections that closed before they were stable, in a row: how long
    /// to wait before the next dial.
    backoff: u32,
    /// When to dial it again (static and discovered peers that are neither connected nor
    /// being dialled); see [`redial`](crate::redial).
    next_dial: Option<Instant>,
    /// Bytes of finished connections, plus the live one's counters.
    tx_done: u64,
    rx_done: u64,
    /// Frames of finished connections: data and control sent, data and control received.
    frames_done: [u64; 4],
    /// Route Updates refused past its share on finished connections.
    routes_refused_done: u64,
    stats: Option<Arc<LinkStats>>,
}

pub(crate) struct LinkEntry {
    pub(crate) handles: LinkHandles,
    peer: Endpoint,
    desc: String,
    /// The connection of a QUIC link, for its path statistics.
    quic: Option<quinn::Connection>,
    /// We dialled it.
    dialled: bool,
}

pub(crate) struct Owner {
    router: Router,
    epoch: Instant,
    identity: Arc<Identity>,
    peers: HashMap<Endpoint, Peer>,
    links: FxHashMap<LinkId, LinkEntry>,
    next_link: u64,
    /// Ciphers of the keys in use (not of every route's key), shared with the data path.
    keys: Arc<SharedKeys>,
    /// The data path's snapshot is out of date; it is republished at most every
    /// [`PUBLISH_EVERY`], and once a burst of changes has been drained.
    publish_wanted: bool,
    last_publish: Instant,
    /// The earliest [`Peer::next_dial`].
    next_redial: Option<Instant>,
    /// Control TLVs made while the routing core's forwarding table was ahead of the data
    /// path's: they go out right after the next publication. A neighbour may forward through
    /// us the moment it hears of a route, so it must not hear of one our data path does not
    /// have yet (its first packets would be dropped here as "no route").
    held: Vec<(LinkId, Tlv)>,
    /// Packets from the TUN waiting for a route, by destination /64.
    pending: Pending<Vec<u8>>,
    /// Frames for us whose sender's key is not known yet, by the sender's /64.
    pending_in: Pending<InboundFrame>,
    table: Arc<ArcSwap<DataTable>>,
    link_ctx: LinkContext,
    counters: Arc<DataCounters>,
    msgs_tx: mpsc::Sender<OwnerMsg>,
    /// Where the TUN's own counters and histograms are, for stats requests.
    tun_metrics: Option<(Arc<tun::Tun>, Arc<TunHistograms>)>,
    /// What the shell counts of the routing core's work (the core counts what it receives).
    route_counts: RouteCounts,
    route_log: RouteLog,
    /// Which discovered endpoints may become peers.
    discovery: Admission,
    /// End-to-end sessions with other hypha nodes; `None` with `--no-sessions`.
    sessions: Option<SessionManager>,
    /// The QUIC endpoint that dials `quic://` peers; `None` with `--disable-quic`.
    quic: Option<Arc<QuicEndpoint>>,
}

/// Routing activity seen by the owner: transmitted requests and the core's events.
#[derive(Default)]
struct RouteCounts {
    requests_sent: u64,
    queries_timed_out: u64,
    acquired: u64,
    lost: u64,
}

/// Route changes are summarised at INFO at most this often (each is logged at debug): a peer
/// that floods or flaps routes must not turn into one INFO line per route on every node.
const ROUTE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Route changes not yet reported at INFO.
struct RouteLog {
    acquired: u64,
    lost: u64,
    /// The last subnet that changed, named when it is the only change in a report.
    subnet: Option<Subnet>,
    limit: LogLimiter,
}

impl Default for RouteLog {
    fn default() -> RouteLog {
        RouteLog {
            acquired: 0,
            lost: 0,
            subnet: None,
            limit: LogLimiter::new(ROUTE_LOG_EVERY),
        }
    }
}

/// One INFO report of route changes.
#[derive(Debug, PartialEq)]
enum RouteReport {
    Acquired(Subnet),
    Lost(Subnet),
    Changed { acquired: u64, lost: u64 },
}

impl RouteLog {
    fn note(&mut self, subnet: Subnet, acquired: bool) {
        if acquired {
            self.acquired += 1;
        } else {
            self.lost += 1;
        }
        self.subnet = Some(subnet);
    }

    /// What to report now: nothing if nothing changed or the last report is too recent. A
    /// change after a quiet spell is reported at once.
    fn due(&mut self, now: Instant) -> Option<RouteReport> {
        // The counts are the tally of what was held back; the limiter only keeps the interval.
        if self.acquired + self.lost == 0 || !self.limit.due(now) {
            return None;
        }
        let (acquired, lost) = (
            std::mem::take(&mut self.acquired),
            std::mem::take(&mut self.lost),
        );
        Some(match (acquired, lost, self.subnet.take()) {
            (1, 0, Some(s)) => RouteReport::Acquired(s),
            (0, 1, Some(s)) => RouteReport::Lost(s),
            _ => RouteReport::Changed { acquired, lost },
        })
    }
}

/// The inputs of the owner loop.
pub(crate) struct OwnerInputs {
    pub msgs: mpsc::Receiver<OwnerMsg>,
    pub link_events: mpsc::Receiver<LinkEvent>,
    pub needs: mpsc::Receiver<Need>,
    pub requests: mpsc::Receiver<Request>,
}

impl Owner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        router: Router,
        epoch: Instant,
        identity: Arc<Identity>,
        table: Arc<ArcSwap<DataTable>>,
        link_ctx: LinkContext,
        counters: Arc<DataCounters>,
        msgs_tx: mpsc::Sender<OwnerMsg>,
        static_peers: Vec<Endpoint>,
    ) -> Owner {
        let keys = Arc::new(SharedKeys::new(Arc::clone(&identity)));
        let mut o = Owner {
            router,
            epoch,
            identity,
            peers: HashMap::new(),
            links: FxHashMap::default(),
            next_link: 1,
            keys,
            publish_wanted: false,
            last_publish: Instant::now(),
            next_redial: None,
            held: Vec::new(),
            pending: Pending::new(PENDING),
            pending_in: Pending::new(PENDING_IN),
            table,
            link_ctx,
            counters,
            msgs_tx,
            tun_metrics: None,
            route_counts: RouteCounts::default(),
            route_log: RouteLog::default(),
            discovery: Admission::new(DiscoveryLimits::default(), Arc::default()),
            sessions: None,
            quic: None,
        };
        for e in static_peers {
            o.peers.insert(e, Peer::new(PeerKind::Static));
        }
        o
    }

    /// Negotiates end-to-end sessions with the hypha nodes it sends to.
    pub fn set_sessions(&mut self, mgr: SessionManager) {
        self.sessions = Some(mgr);
        self.publish_wanted = true;
    }

    /// The gate for endpoints that link-local discovery reports (it counts into discovery's stats).
    pub fn set_quic(&mut self, quic: Arc<QuicEndpoint>) {
        self.quic = Some(quic);
    }

    pub fn set_discovery(&mut self, admission: Admission) {
        self.discovery = admission;
    }

    /// Lets stats requests include the TUN device's counters and the TUN threads' histograms.
    pub fn set_tun_metrics(&mut self, tun: Arc<tun::Tun>, histograms: Arc<TunHistograms>) {
        self.tun_metrics = Some((tun, histograms));
    }

    fn now(&self) -> Time {
        Time::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    /// Runs until `shutdown` resolves; then closes every link.
    pub async fn run(
        mut self,
        mut inputs: OwnerInputs,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        self.redial();
        let mut sweep = tokio::time::interval(PENDING_SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session_tick = tokio::time::interval(SESSION_TICK);
        session_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .router
                .poll_timeout()
                .map(|t| self.epoch + t.saturating_since(Time::ZERO))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now();
                    self.router.handle_timeout(now);
                }
                _ = tokio::time::sleep_until(self.next_redial.unwrap_or(self.epoch).into()),
                    if self.next_redial.is_some() => self.redial(),
                _ = sweep.tick() => {
                    self.expire_pending();
                    if self.mss_clamps() != self.table.load().mss_clamp {
                        self.publish_wanted = true;
                    }
                }
                _ = session_tick.tick(), if self.sessions.is_some() => self.tick_sessions(),
                Some(ev) = inputs.link_events.recv() => self.on_link_event(ev),
                Some(m) = inputs.msgs.recv() => self.on_msg(m),
                Some(n) = inputs.needs.recv() => self.on_need(n),
                Some(r) = inputs.requests.recv() => self.on_request(r),
                _ = tokio::time::sleep_until((self.last_publish + PUBLISH_EVERY).into()),
                    if self.publish_wanted => self.publish(),
                // The data path derived a key: publish it, so the flow leaves the slow path.
                _ = self.keys.derived.notified() => self.publish_wanted = true,
            }
            self.drain_router();
        }
        for (_, l) in self.links.drain() {
            l.handles.abort();
        }
    }

    /// Dials the peers that are due, and finds when the next one is.
    fn redial(&mut self) {
        let now = Instant::now();
        let due: Vec<Endpoint> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_dial.is_some_and(|t| t <= now))
            .map(|(e, _)| *e)
            .collect();
        for e in due {
            self.dial(e);
        }
        self.next_redial = self.peers.values().filter_map(|p| p.next_dial).min();
    }

    /// Schedules the next dial of a peer that failed, or whose connection closed.
    fn schedule_dial(&mut self, e: &Endpoint) {
        let Some(p) = self.peers.get_mut(e) else {
            return;
        };
        if p.kind == PeerKind::Inbound || p.link.is_some() || p.dialing {
            return;
        }
        let at = Instant::now() + redial::delay(p.backoff, redial::jitter());
        p.next_dial = Some(at);
        self.next_redial = Some(self.next_redial.map_or(at, |t| t.min(at)));
    }

    /// Starts one dial; the result comes back as [`OwnerMsg::Dialed`].
    fn dial(&mut self, e: Endpoint) {
        if let Some(p) = self.peers.get_mut(&e) {
            p.dialing = true;
            p.next_dial = None;
        }
        let tx = self.msgs_tx.clone();
        let quic = self.quic.clone();
        tokio::spawn(async move {
            let connect = async {
                match e.proto {
                    Protocol::Quic => match quic {
                        Some(q) => q.dial(e.addr).await.map(Connected::Quic),
                        None => Err(std::io::Error::other("QUIC is disabled (--disable-quic)")),
                    },
                    _ => TcpStream::connect(e.addr).await.map(Connected::Tcp),
                }
            };
            let r = match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            };
            let _ = tx.send(OwnerMsg::Dialed(e, r)).await;
        });
    }

    fn on_msg(&mut self, m: OwnerMsg) {
        match m {
            OwnerMsg::Dialed(e, r) => {
                let Some(p) = self.peers.get_mut(&e) else {
                    return; // removed while dialling
                };
                p.dialing = false;
                match r {
                    Ok(stream) if p.link.is_none() => {
                        // A discovered endpoint proves itself by a control frame, not by
                        // accepting a connection (see `close_link`); and the backoff ends with
                        // a connection that lives, not one that is accepted and closed at once.
                        if p.kind != PeerKind::LinkLocalDiscovery {
                            p.failures = 0;
                        }
                        match stream {
                            Connected::Tcp(s) => self.start_link(e, s, true),
                            Connected::Quic(q) => self.start_link(e, q, true),
                        }
                    }
                    // The peer dialled us at the same time and its connection came first: the
                    // one both ends keep is ours if we dialled from the lower address (see
                    // `InboundQuic`).
                    Ok(Connected::Quic(q)) if q.ours_is_kept() => {
                        if let Some(old) = p.link {
                            if self.links.get(&old).is_some_and(|l| !l.dialled) {
                                self.close_link(old, CloseReason::Replaced);
                                self.start_link(e, q, true);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        p.failures += 1;
                        p.backoff += 1;
                        debug!(peer = %e, "dial failed: {err}");
                        if p.kind == PeerKind::LinkLocalDiscovery
                            && p.failures >= DISCOVERED_MAX_FAILURES
                        {
                            info!(peer = %e, "forgetting discovered peer after {} failed dials", p.failures);
                            self.peers.remove(&e);
                            self.discovery.failed(e, Instant::now());
                        } else {
                            self.schedule_dial(&e);
                        }
                    }
                }
            }
            OwnerMsg::Inbound(stream, remote) => {
                let e = Endpoint::tcp(canonical(remote));
                // A new connection from the same remote socket replaces the old one.
                if let Some(old) = self.peers.get(&e).and_then(|p| p.link) {
                    self.close_link(old, CloseReason::Replaced);
                }
                self.peers
                    .entry(e)
                    .or_insert_with(|| Peer::new(PeerKind::Inbound));
                self.start_link(e, stream, false);
            }
            OwnerMsg::InboundQuic(link, remote) => {
                let e = Endpoint {
                    proto: Protocol::Quic,
                    addr: canonical(remote),
                };
                if let Some(old) = self.peers.get(&e).and_then(|p| p.link) {
                    // Two nodes that list each other dialled at the same time: a QUIC node
                    // dials from its listening port, so each connection comes from the very
                    // endpoint the other dialled. Both keep the same one, the one dialled from
                    // the lower address, or each would close the one the other kept.
                    if self.links.get(&old).is_some_and(|l| l.dialled) && link.ours_is_kept() {
                        debug!(peer = %e, "keeping our connection to a peer that dialled us too");
                        return;
                    }
                    self.close_link(old, CloseReason::Replaced);
                }
                self.peers
                    .entry(e)
                    .or_insert_with(|| Peer::new(PeerKind::Inbound));
                self.start_link(e, link, false);
            }
            OwnerMsg::Discovered(e) => {
                if self.peers.contains_key(&e) {
                    return;
                }
                if self
                    .discovery
                    .admit(&e, self.discovered_peers(), Instant::now())
                {
                    info!(peer = %e, "discovered peer on the local link");
                    self.peers
                        .insert(e, Peer::new(PeerKind::LinkLocalDiscovery));
                    // Only this one: a beacon must not make the node redial every peer that is
                    // down (that would bypass the rate limit on new discovered peers).
                    self.dial(e);
                }
            }
        }
    }

    /// Starts a link on a connection we dialled (`dialled`) or accepted.
    fn start_link<T: Transport>(&mut self, e: Endpoint, transport: T, dialled: bool) {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let cost = transport.static_cost();
        let desc = transport.describe();
        let quic = transport.quic();
        let handles = link::spawn(id, transport, self.link_ctx.clone());
        let now = self.now();
        if let Err(err) = self.router.handle_link_up(id, cost, now) {
            warn!(peer = %e, "refusing link: {err:?}");
            handles.abort();
            // A peer we dialled is dialled again later, as after a failed dial.
            if let Some(p) = self.peers.get_mut(&e) {
                p.backoff += 1;
            }
            self.schedule_dial(&e);
            return;
        }
        info!(peer = %e, link = id.0, "peer connected ({desc})");
        if let Some(p) = self.peers.get_mut(&e) {
            p.link = Some(id);
            // A link that replaced another one leaves no dial behind.
            p.next_dial = None;
            p.connected_at = Some(Instant::now());
            p.stats = Some(handles.stats.clone());
        }
        self.links.insert(
            id,
            LinkEntry {
                handles,
                peer: e,
                desc,
                quic,
                dialled,
            },
        );
        self.publish();
    }

    fn close_link(&mut self, id: LinkId, why: CloseReason) {
        let Some(l) = self.links.remove(&id) else {
            return;
        };
        self.link_ctx.closes.count(why);
        let refused = self.router.link_stats(id).map_or(0, |l| l.routes_refused);
        if let Some(p) = self.peers.get_mut(&l.peer) {
            p.routes_refused_done += refused;
        }
        l.handles.abort();
        let now = self.now();
        self.router.handle_link_down(id, now);
        info!(peer = %l.peer, link = id.0, reason = why.label(), "peer disconnected: {why}");
        let mut remove = false;
        let mut forget = false;
        let mut dial_again = false;
        let ourselves = why == CloseReason::SelfLink;
        if let Some(p) = self.peers.get_mut(&l.peer) {
            if p.link == Some(id) {
                p.link = None;
                dial_again = true;
                let stable = p
                    .connected_at
                    .is_some_and(|t| t.elapsed() >= redial::STABLE);
                let mut proven = false;
                if let Some(s) = p.stats.take() {
                    proven = s.rx_control_frames.load(Ordering::Relaxed) > 0;
                    p.tx_done += s.tx_bytes.load(Ordering::Relaxed);
                    p.rx_done += s.rx_bytes.load(Ordering::Relaxed);
                    for (done, live) in p.frames_done.iter_mut().zip([
                        &s.tx_data_frames,
                        &s.tx_control_frames,
                        &s.rx_data_frames,
                        &s.rx_control_frames,
                    ]) {
                        *done += live.load(Ordering::Relaxed);
                    }
                }
                remove = p.kind == PeerKind::Inbound;
                if ourselves {
                    // Redialling it would only connect to ourselves again, every 5 s.
                    warn!(peer = %l.peer, "removed peer: it is this node itself");
                    remove = true;
                }
                if p.kind == PeerKind::LinkLocalDiscovery {
                    // A service on a neighbour's port (or ourselves) accepts, but never speaks.
                    p.failures = if proven { 0 } else { p.failures + 1 };
                    forget = p.failures >= DISCOVERED_MAX_FAILURES;
                }
                p.backoff = if proven && stable { 0 } else { p.backoff + 1 };
            }
        }
        if remove {
            if let Some(p) = self.peers.remove(&l.peer) {
                if ourselves && p.kind == PeerKind::LinkLocalDiscovery {
                    self.discovery.failed(l.peer, Instant::now());
                }
            }
        }
        if forget {
            info!(peer = %l.peer, "forgetting discovered peer: {DISCOVERED_MAX_FAILURES} connections in a row closed before any control frame");
            self.peers.remove(&l.peer);
            self.discovery.failed(l.peer, Instant::now());
        } else if dial_again {
            self.schedule_dial(&l.peer);
        }
        self.publish();
    }

    fn on_link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Tlv(id, tlv) => {
                let now = self.now();
                self.router.handle_tlv(id, &tlv, now);
            }
            LinkEvent::Closed(id, why) => self.close_link(id, why),
        }
    }

    fn on_need(&mut self, n: Need) {
        let now = self.now();
        match n {
            Need::Session(key) => self.session_need(SessionNeed::Want(key)),
            Need::SessionStale(key) => self.session_need(SessionNeed::Stale(key)),
            Need::SessionConfirmed(index) => self.session_need(SessionNeed::Confirmed(index)),
            Need::Path {
                index,
                kind,
                payload,
            } => self.session_need(SessionNeed::Path {
                index,
                kind,
                payload,
            }),
            Need::Handshake { src, dst, payload } => {
                self.session_need(SessionNeed::Handshake { src, dst, payload })
            }
            Need::Route(dst) => self.router.request_route(dst, now),
            Need::RouteFor(dst, link) => self.router.request_route_for_link(dst, link, now),
            Need::PendingInbound(frame) => {
                self.counters
                    .pending_in_flight
                    .fetch_sub(frame.body.len(), Ordering::Relaxed);
                let own = self.router.own_subnet();
                if !datapath::may_have_key(frame.src, own) {
                    bump(&self.counters.refused_sender);
                    return;
                }
                let subnet = Subnet::slash64(frame.src);
                if self.router.lookup_source(frame.src).is_some() {
                    // The key arrived after the data path looked.
                    self.deliver_pending_in(vec![frame]);
                    return;
                }
                // A query the sender's link caused: charged to that link's share.
                self.router
                    .request_route_for_link(frame.src, frame.link, now);
                let (bytes, link) = (frame.body.len(), frame.link);
                let queued = self
                    .pending_in
                    .push(subnet, frame, bytes, Some(link), Instant::now());
                if queued.is_err() {
                    bump(&self.counters.drop_pending_full);
                }
            }
            Need::Pending(packet) => {
                let Some((_, dst, _)) = ends(&packet) else {
                    return;
                };
                let subnet = Subnet::slash64(dst);
                // Maybe the route arrived after the data path looked.
                if let Lookup::Route(_) = self.router.lookup(dst) {
                    self.send_pending(subnet, vec![packet]);
                    return;
                }
                self.router.request_route(dst, now);
                let bytes = packet.len();
                if self
                    .pending
                    .push(subnet, packet, bytes, None, Instant::now())
                    .is_err()
                {
                    bump(&self.counters.drop_queue_full);
                }
            }
        }
    }

    fn session_need(&mut self, need: SessionNeed) {
        let Some(mgr) = self.sessions.as_mut() else {
            return;
        };
        let out = sessions::on_need(mgr, need);
        self.send_session_frames(out);
    }

    fn tick_sessions(&mut self) {
        let Some(mgr) = self.sessions.as_mut() else {
            return;
        };
        let out = mgr.tick(Instant::now(), sessions::wall_now());
        self.send_session_frames(out);
    }

    /// Sends what the session manager wants sent, and republishes when its sessions changed:
    /// at once, so that a new session is used from the next packet on.
    fn send_session_frames(&mut self, out: Vec<datapath::sessions::Outgoing>) {
        if self.sessions.as_ref().is_some_and(|m| m.changed()) {
            self.publish();
        }
        let sending = sessions::Sending {
            router: &self.router,
            keys: &self.keys,
            links: &self.links,
            counters: &self.counters,
            own_addr: self.identity.address(),
        };
        for o in out {
            sending.send(o);
        }
    }

    /// Drops what waited past its deadline: the route query was never answered (or never sent,
    /// when the query table was full). Packets from the TUN are answered with "no route".
    fn expire_pending(&mut self) {
        let now = Instant::now();
        let mut failed = Vec::new();
        self.pending.expire(now, |p| failed.push(p));
        if !failed.is_empty() {
            self.fail_pending(failed);
        }
        let mut expired = 0u64;
        self.pending_in.expire(now, |_| expired += 1);
        self.counters
            .drop_pending_expired
            .fetch_add(expired, Ordering::Relaxed);
    }

    /// Seals and sends packets that waited for a route.
    fn send_pending(&mut self, subnet: Subnet, packets: Vec<Vec<u8>>) {
        let mut per_link: FxHashMap<LinkId, FrameBatch> = FxHashMap::default();
        for p in packets {
            let Some((src, dst, hop_limit)) = ends(&p) else {
                continue;
            };
            let Lookup::Route(nh) = self.router.lookup(dst) else {
                bump(&self.counters.drop_no_route);
                continue;
            };
            let Some(cipher) = self.cipher_for(nh.public_key()) else {
                bump(&self.counters.drop_no_key);
                continue;
            };
            let mut p = p;
            let clamp = self.links.get(&nh.link).and_then(|l| l.quic.as_ref());
            if let Some(mss) = clamp.and_then(crate::link::quic::mss_clamp) {
                if wire::ip::tcp::clamp_mss_v6(&mut p, mss) {
                    bump(&self.counters.tcp_mss_clamped);
                }
            }
            let batch = per_link.entry(nh.link).or_default();
            batch.frames += 1;
            let hop = hop_limit.saturating_sub(1);
            if datapath::push_sealed_l3(&mut batch.bytes, &cipher, &p, hop, src, dst) {
                bump(&self.counters.frames_sent);
            }
        }
        for (link, buf) in per_link {
            if let Some(l) = self.links.get(&link) {
                if l.handles.data.try_send(buf).is_err() {
                    bump(&self.counters.drop_queue_full);
                }
            }
        }
        debug!(%subnet, "released packets waiting for a route");
    }

    /// Opens and delivers frames that waited for their sender's key.
    fn deliver_pending_in(&mut self, frames: Vec<InboundFrame>) {
        let mut batch = TunBatch::default();
        let mut messages = datapath::MessageBatch::default();
        let own = self.router.own_subnet();
        let mut later = Vec::new();
        for mut f in frames {
            let Some((sender, key)) = self.router.lookup_source(f.src) else {
                bump(&self.counters.drop_no_key);
                continue;
            };
            let Some(cipher) = self.cipher_for(key) else {
                bump(&self.counters.drop_no_key);
                continue;
            };
            // An out-of-band error quotes a packet of ours: its destination's key is one we
            // used, found the same way.
            let router = &self.router;
            let keys = &*self.keys;
            let sessions = self.sessions.as_ref();
            let orig = |dst| {
                let Some((_, key)) = router.lookup_source(dst) else {
                    return (None, None);
                };
                let session = sessions.and_then(|m| m.current(&crypto::PublicKey(key)));
                (datapath::KeySource::cipher(keys, &key), session)
            };
            let counters = &self.counters;
            match datapath::deliver_pending(
                &cipher,
                sender,
                key,
                own,
                &mut f,
                &mut batch,
                &mut messages,
                counters,
                &orig,
            ) {
                PendingOutcome::Delivered => bump(&self.counters.frames_delivered),
                PendingOutcome::Refused => {}
                PendingOutcome::Undecryptable => later.push(SessionNeed::Stale(key)),
                PendingOutcome::Handshake(payload) => later.push(SessionNeed::Handshake {
                    src: f.src,
                    dst: f.dst,
                    payload,
                }),
            }
        }
        if !messages.is_empty() {
            let to = self.link_ctx.messages.as_ref();
            crate::messages::hand_over(to, &mut messages, &self.counters);
        }
        for need in later {
            self.session_need(need);
        }
        if batch.is_empty() {
            return;
        }
        match &self.link_ctx.tun {
            Some(tun) => {
                if tun.try_send(batch).is_err() {
                    bump(&self.counters.drop_queue_full);
                }
            }
            None => bump(&self.counters.drop_no_tun),
        }
    }

    fn cipher_for(&mut self, key: [u8; 32]) -> Option<Cipher> {
        datapath::KeySource::cipher(&*self.keys, &key)
    }

    fn on_request(&mut self, r: Request) {
        let now = self.now();
        match r {
            Request::Peers(reply) => {
                let list = self.peer_list();
                let _ = reply.send(list);
            }
            Request::AddPeer(e, reply) => {
                let res = if e.proto == Protocol::Tls {
                    Err(PeerOpError::Unsupported(format!(
                        "{} peers are not supported by hypha",
                        e.proto.scheme()
                    )))
                } else if e.proto == Protocol::Quic && self.quic.is_none() {
                    Err(PeerOpError::Unsupported(
                        "quic peers need QUIC, which is disabled (--disable-quic)".to_owned(),
                    ))
                } else if let std::collections::hash_map::Entry::Vacant(v) = self.peers.entry(e) {
                    v.insert(Peer::new(PeerKind::Static));
                    self.redial();
                    Ok(())
                } else {
                    Err(PeerOpError::AlreadyExists)
                };
                let _ = reply.send(res);
            }
            Request::RemovePeer(e, reply) => {
                let res = match self.peers.get(&e).map(|p| p.link) {
                    None => Err(PeerOpError::NotFound),
                    Some(link) => {
                        if let Some(id) = link {
                            self.close_link(id, CloseReason::Removed);
                        }
                        self.peers.remove(&e);
                        Ok(())
                    }
                };
                let _ = reply.send(res);
            }
            Request::Routes(kind, reply) => {
                // A full table is tens of thousands of rows: they are made straight from the
                // table, sharing one description of each link.
                let selected = kind == RouteKind::Selected;
                let (n_selected, n_fallback) = self.router.route_counts();
                let mut list = Vec::with_capacity(if selected { n_selected } else { n_fallback });
                let mut descs: FxHashMap<LinkId, Arc<str>> = FxHashMap::default();
                self.router.for_each_route(now, selected, |r| {
                    let next_hop = descs.entry(r.next_hop).or_insert_with(|| {
                        match self.links.get(&r.next_hop) {
                            Some(l) => l.desc.as_str().into(),
                            None => format!("link {}", r.next_hop.0).into(),
                        }
                    });
                    list.push(RouteInfo {
                        subnet: r.subnet,
                        next_hop: next_hop.clone(),
                        metric: r.total,
                        seqno: r.seqno.0,
                    });
                });
                list.sort_unstable_by(|a, b| (a.subnet, &a.next_hop).cmp(&(b.subnet, &b.next_hop)));
                let _ = reply.send(list);
            }
            Request::Queried(reply) => {
                let list = self
                    .router
                    .queried_subnets(now)
                    .into_iter()
                    .map(|(subnet, left)| QueryInfo {
                        subnet,
                        expires_in: left.as_secs(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Request::PubkeyOf(ip, reply) => {
                let key = if self.router.own_subnet().contains_addr(ip) {
                    Some(self.identity.public_key())
                } else {
                    self.router.lookup_source_key(ip)
                };
                let _ = reply.send(key);
            }
        }
    }

    fn discovered_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.kind == PeerKind::LinkLocalDiscovery)
            .count()
    }

    fn stats(&self) -> Stats {
        let now = self.now();
        let costs: FxHashMap<LinkId, u16> = self
            .router
            .links(now)
            .into_iter()
            .map(|l| (l.link, l.cost.0))
            .collect();
        let mut peers: Vec<PeerStats> = self
            .peers
            .iter()
            .map(|(e, p)| {
                let load = |f: fn(&LinkStats) -> &std::sync::atomic::AtomicU64| {
                    p.stats.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed))
                };
                let link_stats = p.link.and_then(|l| self.router.link_stats(l));
                PeerStats {
                    endpoint: e.to_string(),
                    connection_state: p.state(),
                    link_cost: p.link.and_then(|l| costs.get(&l).copied()),
                    tx_bytes: p.tx_done + load(|s| &s.tx_bytes),
                    rx_bytes: p.rx_done + load(|s| &s.rx_bytes),
                    tx_data_frames: p.frames_done[0] + load(|s| &s.tx_data_frames),
                    tx_control_frames: p.frames_done[1] + load(|s| &s.tx_control_frames),
                    rx_data_frames: p.frames_done[2] + load(|s| &s.rx_data_frames),
                    rx_control_frames: p.frames_done[3] + load(|s| &s.rx_control_frames),
                    routes: link_stats.map_or(0, |l| l.subnets as u64),
                    routes_refused: p.routes_refused_done
                        + link_stats.map_or(0, |l| l.routes_refused),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        let c = self.router.counters();
        let (selected, fallback) = self.router.route_counts();
        let rc = &self.route_counts;
        Stats {
            uptime: self.epoch.elapsed().as_secs(),
            peers,
            // Counted outside the owner; `Control::stats` fills them in.
            api: Default::default(),
            messages: Default::default(),
            data: DataStats::from_counters(&self.counters),
            tun: self
                .tun_metrics
                .as_ref()
                .map(|(t, h)| TunStats::new(&t.stats(), h)),
            routing: RoutingStats {
                selected_routes: selected as u64,
                fallback_routes: fallback as u64,
                queried_subnets: self.router.queried_subnets(now).len() as u64,
                route_requests_sent: rc.requests_sent,
                route_requests_received: c.route_request_rx,
                route_requests_answered: c.route_request_answered,
                route_queries_timed_out: rc.queries_timed_out,
                routes_acquired: rc.acquired,
                routes_lost: rc.lost,
                hello_received: c.hello_rx,
                ihu_received: c.ihu_rx,
                updates_received: c.update_rx,
                seqno_requests_received: c.seqno_request_rx,
                queries_refused_rate: c.query_rate_limited,
                queries_refused_share: c.query_link_share_full,
                queries_refused_table_full: c.query_table_full,
                wildcard_dumps_deferred: c.wildcard_dump_deferred,
                updates_short_hold: c.update_short_hold,
                updates_damped: c.update_damped,
                flap_table_full: c.flap_table_full,
                routes_refused_link_share: c.route_link_quota_full,
                seqno_requests_refused_rate: c.seqno_request_rate_limited,
            },
            peering: PeeringStats::new(
                self.discovered_peers() as u64,
                self.discovery.stats(),
                &self.link_ctx.refusals,
            ),
            links_closed: LinkCloseStats::new(&self.link_ctx.closes),
            sessions: self
                .sessions
                .as_ref()
                .map(|m| crate::metrics::SessionStats::from_manager(m, Instant::now())),
        }
    }

    fn peer_list(&self) -> Vec<PeerInfo> {
        let mut list: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(e, p)| {
                let (tx, rx) = p.stats.as_ref().map_or((0, 0), |s| {
                    (
                        s.tx_bytes.load(Ordering::Relaxed),
                        s.rx_bytes.load(Ordering::Relaxed),
                    )
                });
                let link_stats = p.link.and_then(|l| self.router.link_stats(l));
                PeerInfo {
                    endpoint: *e,
                    kind: p.kind,
                    connection_state: p.state(),
                    tx_bytes: p.tx_done + tx,
                    rx_bytes: p.rx_done + rx,
                    routes: link_stats.map_or(0, |l| l.subnets as u64),
                    routes_refused: p.routes_refused_done
                        + link_stats.map_or(0, |l| l.routes_refused),
                    discovered: p.learned.elapsed().as_secs(),
                    last_connected: p.connected_at.map(|t| t.elapsed().as_secs()),
                    failures: p.backoff,
                    next_dial_ms: p
                        .next_dial
                        .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
                    quic: p
                        .link
                        .and_then(|l| self.links.get(&l))
                        .and_then(|l| l.quic.as_ref())
                        .map(crate::link::quic::path),
                }
            })
            .collect();
        list.sort_by_key(|p| p.endpoint.to_string());
        list
    }

    /// Sends what the core wants sent, acts on its events, and republishes the data table when
    /// the selection changed.
    fn drain_router(&mut self) {
        while let Some((link, tlv)) = self.router.poll_transmit() {
            self.send_tlv(link, tlv);
        }
        while let Some(ev) = self.router.poll_event() {
            match ev {
                Event::LinkDead(id) => self.close_link(id, CloseReason::NeighbourDead),
                Event::RouteAcquired(subnet) => {
                    self.route_counts.acquired += 1;
                    self.route_log.note(subnet, true);
                    debug!(%subnet, "route acquired");
                    // What waited for this route is sealed and sent by the owner itself (its
                    // keys and routes are current); the data path learns of the route at the
                    // next publication.
                    let q = self.pending.take(&subnet);
                    if !q.is_empty() {
                        self.send_pending(subnet, q);
                    }
                    let q = self.pending_in.take(&subnet);
                    if !q.is_empty() {
                        self.deliver_pending_in(q);
                    }
                }
                Event::RouteLost(subnet) => {
                    self.route_counts.lost += 1;
                    self.route_log.note(subnet, false);
                    debug!(%subnet, "route lost");
                }
                Event::QueryTimedOut(subnet) => {
                    self.route_counts.queries_timed_out += 1;
                    debug!(%subnet, "route query timed out");
                    let q = self.pending.take(&subnet);
                    if !q.is_empty() {
                        self.fail_pending(q);
                    }
                    let q = self.pending_in.take(&subnet);
                    self.counters
                        .drop_no_key
                        .fetch_add(q.len() as u64, Ordering::Relaxed);
                }
            }
            // Sends caused by handling events.
            while let Some((link, tlv)) = self.router.poll_transmit() {
                self.send_tlv(link, tlv);
            }
        }
        if self.router.forwarding_table_dirty() {
            self.publish_wanted = true;
        }
        if self.publish_wanted && self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
        }
        match self.route_log.due(Instant::now()) {
            Some(RouteReport::Acquired(subnet)) => info!(%subnet, "route acquired"),
            Some(RouteReport::Lost(subnet)) => info!(%subnet, "route lost"),
            Some(RouteReport::Changed { acquired, lost }) => {
                info!(acquired, lost, "routes changed since the last report")
            }
            None => {}
        }
    }

    fn send_tlv(&mut self, link: LinkId, tlv: Tlv) {
        if self.router.forwarding_table_dirty() {
            self.publish_wanted = true;
            self.held.push((link, tlv));
            return;
        }
        self.send_tlv_now(link, tlv);
    }

    fn send_tlv_now(&mut self, link: LinkId, tlv: Tlv) {
        if let Some(l) = self.links.get(&link) {
            let request = matches!(tlv, Tlv::RouteRequest(_));
            if l.handles.control.try_send(tlv).is_err() {
                bump(&self.counters.drop_queue_full);
            } else if request {
                self.route_counts.requests_sent += 1;
            }
        }
    }

    /// Answers packets whose route query timed out with "no route".
    fn fail_pending(&mut self, q: Vec<Vec<u8>>) {
        let Some(tun) = &self.link_ctx.tun else {
            return;
        };
        let own = self.identity.address();
        let mut batch = TunBatch::default();
        for p in q {
            let Some((src, _, _)) = ends(&p) else {
                continue;
            };
            if batch.push_icmp(own, src, IcmpError::NoRoute, &p) {
                bump(&self.counters.icmp_generated);
            }
        }
        if !batch.is_empty() {
            let _ = tun.try_send(batch);
        }
    }

    /// Publishes the data path's snapshot: the forwarding table (rebuilt only where routes
    /// changed), the link senders and the ciphers of the keys in use. A cipher the data path
    /// misses sends its packet here (as one waiting for a route), which derives the key and has
    /// it published with the next snapshot.
    /// The MSS each QUIC link wants TCP SYNs clamped to, now.
    fn mss_clamps(&self) -> FxHashMap<LinkId, u16> {
        self.links
            .iter()
            .filter_map(|(id, l)| Some((*id, crate::link::quic::mss_clamp(l.quic.as_ref()?)?)))
            .collect()
    }

    fn publish(&mut self) {
        let fib = self.router.forwarding_table();
        let links = self
            .links
            .iter()
            .map(|(id, l)| (*id, l.handles.data.clone()))
            .collect();
        let keys: Arc<dyn datapath::KeySource> = self.keys.clone();
        let mss_clamp = self.mss_clamps();
        let datagram_links: rustc_hash::FxHashSet<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.quic
                    .as_ref()
                    .is_some_and(|c| c.max_datagram_size().is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        let mut sessions = self
            .sessions
            .as_mut()
            .map(SessionManager::snapshot)
            .unwrap_or_default();
        if !datagram_links.is_empty() {
            // Destinations behind a datagram link get their super-packets split as they are
            // read (the sealing step would split them all the same, with a copy more).
            sessions.whole.retain(|prefix| {
                let addr = Ipv6Addr::from(u128::from(*prefix) << 64);
                !matches!(self.router.lookup(addr), Lookup::Route(nh) if datagram_links.contains(&nh.link))
            });
        }
        let ce_marks = self
            .links
            .iter()
            .map(|(id, l)| (*id, l.handles.ce.clone()))
            .collect();
        self.table.store(Arc::new(DataTable {
            fib,
            links,
            mss_clamp,
            datagram_links,
            ce_marks,
            ciphers: self.keys.snapshot(),
            keys: Some(keys),
            sessions: Arc::new(sessions),
        }));
        self.publish_wanted = false;
        self.last_publish = Instant::now();
        for (link, tlv) in std::mem::take(&mut self.held) {
            self.send_tlv_now(link, tlv);
        }
    }
}

impl Peer {
    fn new(kind: PeerKind) -> Peer {
        Peer {
            kind,
            learned: Instant::now(),
            link: None,
            connected_at: None,
            dialing: false,
            failures: 0,
            backoff: 0,
            next_dial: (kind != PeerKind::Inbound).then(Instant::now),
            tx_done: 0,
            rx_done: 0,
            frames_done: [0; 4],
            routes_refused_done: 0,
            stats: None,
        }
    }

    fn state(&self) -> ConnectionState {
        if self.link.is_some() {
            ConnectionState::Alive
        } else if self.dialing {
            ConnectionState::Connecting
        } else {
            ConnectionState::Dead
        }
    }
}

/// IPv4-mapped IPv6 socket addresses (from the dual-stack listener) shown as plain IPv4.
/// Source, destination and hop limit of a packet from the TUN (checked by the data path before
/// it was handed over; checked again, never trusted).
fn ends(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u8)> {
    let ip = Ipv6Packet::new_header_checked(packet).ok()?;
    Some((ip.src_addr(), ip.dst_addr(), ip.hop_limit()))
}

/// Unix seconds now (for the node's start time).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_changes_are_summarised_not_logged_one_by_one() {
        let s = |n: u8| {
            Subnet::slash64(std::net::Ipv6Addr::new(
                0x400 + u16::from(n),
                0,
                0,
                0,
                0,
                0,
                0,
                1,
            ))
        };
        let t0 = Instant::now();
        let mut log = RouteLog::default();
        assert_eq!(log.due(t0), None);
        // A change after a quiet spell is reported at once, by name.
        log.note(s(1), true);
        assert_eq!(log.due(t0), Some(RouteReport::Acquired(s(1))));
        // 400 changes (a flapping peer) within the next 10 s: one count line at the end.
        for i in 0..200 {
            log.note(s(2), true);
            log.note(s(2), false);
            assert_eq!(log.due(t0 + Duration::from_millis(i * 40)), None);
        }
        assert_eq!(
            log.due(t0 + ROUTE_LOG_EVERY),
            Some(RouteReport::Changed {
                acquired: 200,
                lost: 200
            })
        );
        assert_eq!(log.due(t0 + 3 * ROUTE_LOG_EVERY), None);
        log.note(s(3), false);
        assert_eq!(
            log.due(t0 + 3 * ROUTE_LOG_EVERY),
            Some(RouteReport::Lost(s(3)))
        );
    }
}
