//! Link-local peer discovery (docs/protocol.md §7): a 50-byte UDP beacon multicast to
//! `[ff02::cafe]:9650` on every suitable interface, and the peers heard that way reported as
//! `tcp://[fe80::…%if]:port`.
//!
//! The beacon codec ([`encode_beacon`], [`parse_beacon`]) is pure. [`run`] owns one UDP socket:
//! it joins the group on each interface that is up, multicast-capable, not loopback, not
//! point-to-point or ARP-less (TUN and tunnel devices), and has an `fe80::/64` address; it
//! re-scans the interfaces periodically so that interfaces appearing later are used. Interfaces are
//! read with `getifaddrs`, which answers for the network namespace of the calling thread.
//!
//! Discovery only reports endpoints; whether to dial them, and deduplication against known peers,
//! is the caller's business. The beacon carries no proof of identity: it is a hint to dial, never
//! trusted for anything else. A malformed packet is counted and dropped.
//!
//! Anyone on the link can send beacons, with any source address and port. So beacons from any of
//! our own addresses (on any interface) or carrying our own key are ignored, and the node admits
//! what discovery reports through an [`Admission`] gate: a cap on discovered peers, a rate limit
//! on new ones, and a long back-off for an endpoint that did not turn out to be a peer (its dials
//! failed, or its connections closed before a single control frame came). Each refusal is
//! counted in [`DiscoveryStats`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::net::if_::InterfaceFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use wire::babel::RouterId;
use wire::beacon;

use crate::endpoint::Endpoint;
use crate::ratelimit::LogLimiter;

/// The default discovery port.
pub const DEFAULT_PORT: u16 = 9650;
/// The link-local multicast group beacons go to.
pub const GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xcafe);
/// Beacons are exactly this long (the format is `wire::beacon`, docs/protocol.md §7.1).
pub const BEACON_LEN: usize = beacon::LEN;

/// What discovery announces and where it listens.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// UDP port of discovery (beacons are sent to and received on it).
    pub port: u16,
    /// Only use these interfaces; empty means every suitable one.
    pub interfaces: Vec<String>,
    /// Our TCP listen port, announced in the beacon.
    pub tcp_port: u16,
    /// Our router-id, announced in the beacon and used to ignore our own.
    pub router_id: RouterId,
}

/// Periods of the discovery loop.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between beacons on an interface; also the least time between two reports of one endpoint.
    pub beacon_interval: Duration,
    /// Between interface scans. A scan also resends the beacon on interfaces where the last one
    /// failed (typically: the link-local address was still tentative), so it is kept short.
    pub rescan_interval: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            beacon_interval: Duration::from_secs(60),
            rescan_interval: Duration::from_secs(10),
        }
    }
}

/// Counters of a running discovery task.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    pub beacons_sent: AtomicU64,
    pub send_errors: AtomicU64,
    /// Valid beacons from other nodes.
    pub beacons_received: AtomicU64,
    /// Our own beacons (another socket of ours, or a looped-back copy), or beacons with our key.
    pub own_beacons: AtomicU64,
    /// Beacons whose source is one of our own addresses (spoofed, or looped back).
    pub own_address_beacons: AtomicU64,
    /// Packets that broke an acceptance rule.
    pub bad_packets: AtomicU64,
    /// Endpoints handed to the caller.
    pub reported: AtomicU64,
    /// Interfaces the group is currently joined on.
    pub interfaces: AtomicU64,
    /// Interface scans done.
    pub scans: AtomicU64,
    /// Discovered endpoints the node refused: the cap on discovered peers was reached ...
    pub refused_cap: AtomicU64,
    /// ... too many new ones came too fast ...
    pub refused_rate: AtomicU64,
    /// ... or the endpoint is backing off after it failed.
    pub refused_backoff: AtomicU64,
    /// Discovered endpoints forgotten and put in back-off after failing.
    pub backed_off: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why a received packet is not a beacon we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeaconError {
    /// The sender's address is not link-local (`fe80:0:0:0::/64`), or has no scope.
    NotLinkLocal,
    /// Not exactly [`BEACON_LEN`] bytes.
    Length(usize),
    /// The first 8 bytes are not `mycelium`.
    Magic,
    /// It announces TCP port 0, which cannot be dialled.
    ZeroPort,
    /// It carries our own router-id, or our public key with another per-boot suffix.
    Own,
    /// Its source is one of our own addresses.
    OwnAddress,
}

impl std::fmt::Display for BeaconError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BeaconError::NotLinkLocal => f.write_str("sender is not a scoped fe80::/64 address"),
            BeaconError::Length(n) => write!(f, "{n} bytes, a beacon has {BEACON_LEN}"),
            BeaconError::Magic => f.write_str("bad magic"),
            BeaconError::ZeroPort => f.write_str("announces TCP port 0"),
            BeaconError::Own => f.write_str("our own beacon"),
            BeaconError::OwnAddress => f.write_str("sent from one of our own addresses"),
        }
    }
}

impl std::error::Error for BeaconError {}

/// `"mycelium"` ‖ TCP port (big-endian) ‖ router-id.
pub fn encode_beacon(tcp_port: u16, router_id: &RouterId) -> [u8; BEACON_LEN] {
    beacon::emit(tcp_port, router_id)
}

/// Applies the acceptance rules to a packet from `src`, and gives the endpoint to dial:
/// `tcp://[src%scope]:port`. `local` holds our own addresses (of every interface): a beacon from
/// one of them would make us dial ourselves, whatever scope it came in on.
pub fn parse_beacon(
    src: SocketAddr,
    bytes: &[u8],
    own: &RouterId,
    local: &HashSet<Ipv6Addr>,
) -> Result<Endpoint, BeaconError> {
    let SocketAddr::V6(src) = src else {
        return Err(BeaconError::NotLinkLocal);
    };
    if src.ip().octets()[..8] != [0xfe, 0x80, 0, 0, 0, 0, 0, 0] || src.scope_id() == 0 {
        return Err(BeaconError::NotLinkLocal);
    }
    let b = beacon::Beacon::new_checked(bytes).map_err(|e| match e {
        beacon::Error::Length(n) => BeaconError::Length(n),
        beacon::Error::Magic => BeaconError::Magic,
    })?;
    let port = b.tcp_port();
    if port == 0 {
        return Err(BeaconError::ZeroPort);
    }
    // The key is the node; the suffix only tells its boots apart.
    if b.router_id().public_key() == own.public_key() {
        return Err(BeaconError::Own);
    }
    if local.contains(src.ip()) {
        return Err(BeaconError::OwnAddress);
    }
    Ok(Endpoint::tcp(SocketAddr::V6(SocketAddrV6::new(
        *src.ip(),
        port,
        0,
        src.scope_id(),
    ))))
}

/// One interface address as the system lists it.
#[derive(Clone, Debug)]
struct IfAddr {
    name: String,
    flags: InterfaceFlags,
    /// An IPv6 address with its scope id, if this entry has one.
    v6: Option<(Ipv6Addr, u32)>,
}

fn is_link_local_64(a: &Ipv6Addr) -> bool {
    a.octets()[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0]
}

/// The interfaces to beacon on, by index: up, multicast, not loopback, not point-to-point or
/// ARP-less (TUN, WireGuard and other tunnels), with an `fe80::/64` address; limited to `only`
/// when it is not empty.
fn eligible(addrs: &[IfAddr], only: &[String]) -> BTreeMap<u32, String> {
    let must = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST;
    let must_not =
        InterfaceFlags::IFF_LOOPBACK | InterfaceFlags::IFF_POINTOPOINT | InterfaceFlags::IFF_NOARP;
    let mut out = BTreeMap::new();
    for a in addrs {
        if !a.flags.contains(must) || a.flags.intersects(must_not) {
            continue;
        }
        if !only.is_empty() && !only.contains(&a.name) {
            continue;
        }
        if let Some((ip, scope)) = a.v6 {
            if is_link_local_64(&ip) && scope != 0 {
                out.insert(scope, a.name.clone());
            }
        }
    }
    out
}

fn list_addrs() -> io::Result<Vec<IfAddr>> {
    let mut v = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let v6 = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in6())
            .map(|s| (s.ip(), s.scope_id()));
        v.push(IfAddr {
            name: ifa.interface_name,
            flags: ifa.flags,
            v6,
        });
    }
    Ok(v)
}

/// At most one line a minute per repeating discovery error (the rest are counted in the next).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Reports an endpoint at most once per period; the table is bounded.
#[derive(Debug)]
struct Reported {
    last: HashMap<Endpoint, Instant>,
    period: Duration,
}

impl Reported {
    const MAX: usize = 1024;

    /// Whether `e` may be reported at `now`. Does not record it: see [`Reported::record`].
    fn due(&mut self, e: &Endpoint, now: Instant) -> bool {
        if let Some(t) = self.last.get(e) {
            return now.duration_since(*t) >= self.period;
        }
        if self.last.len() >= Self::MAX {
            let period = self.period;
            self.last.retain(|_, t| now.duration_since(*t) < period);
        }
        self.last.len() < Self::MAX
    }

    fn record(&mut self, e: Endpoint, now: Instant) {
        self.last.insert(e, now);
    }
}

/// What the node lets discovery add. Beacons are unauthenticated: without these, anyone on the
/// link could make the node hold and dial any number of endpoints, on any port of its neighbours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryLimits {
    /// Discovered peers held at once, connected or not; more are refused until one is forgotten.
    pub max_peers: usize,
    /// New discovered peers admitted in a row after a quiet period ...
    pub new_peer_burst: u32,
    /// ... and then one per this period.
    pub new_peer_every: Duration,
    /// How long an endpoint that failed is refused: 3 dials failed in a row, or 3 connections
    /// closed in a row before a single control frame came (a service that is not a peer).
    pub failed_backoff: Duration,
}

impl Default for DiscoveryLimits {
    fn default() -> DiscoveryLimits {
        DiscoveryLimits {
            max_peers: 64,
            new_peer_burst: 16,
            new_peer_every: Duration::from_secs(2),
            failed_backoff: Duration::from_secs(600),
        }
    }
}

/// The node's gate for discovered endpoints (held by the owner, which knows its peer table):
/// a cap, a token bucket for new ones, and the endpoints backing off after failing.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: DiscoveryLimits,
    stats: Arc<DiscoveryStats>,
    tokens: u32,
    refilled: std::time::Instant,
    /// Endpoint → refused until.
    backoff: HashMap<Endpoint, std::time::Instant>,
    log: LogLimiter,
}

impl Admission {
    /// Endpoints remembered in back-off; when full, the one whose back-off ends first goes.
    const MAX_BACKOFF: usize = 1024;
    /// Longer back-offs are cut to this (it keeps the deadline arithmetic far from overflow).
    const LONGEST_BACKOFF: Duration = Duration::from_secs(30 * 24 * 3600);

    pub fn new(limits: DiscoveryLimits, stats: Arc<DiscoveryStats>) -> Admission {
        Admission {
            tokens: limits.new_peer_burst,
            refilled: std::time::Instant::now(),
            limits,
            stats,
            backoff: HashMap::new(),
            log: LogLimiter::new(LOG_EVERY),
        }
    }

    pub fn stats(&self) -> &Arc<DiscoveryStats> {
        &self.stats
    }

    /// Whether the new endpoint `e` may become a peer now, with `held` discovered peers already
    /// there. Counts and logs (rate-limited) a refusal.
    pub fn admit(&mut self, e: &Endpoint, held: usize, now: std::time::Instant) -> bool {
        let refused = if self.backoff.get(e).is_some_and(|until| now < *until) {
            Some((
                &self.stats.refused_backoff,
                "it failed before and is backing off",
            ))
        } else if held >= self.limits.max_peers {
            Some((
                &self.stats.refused_cap,
                "the cap on discovered peers is reached",
            ))
        } else if !self.take_token(now) {
            Some((
                &self.stats.refused_rate,
                "too many new discovered peers at once",
            ))
        } else {
            None
        };
        let Some((counter, why)) = refused else {
            self.backoff.remove(e);
            return true;
        };
        bump(counter);
        if let Some(held_back) = self.log.allow(now) {
            tracing::info!(
                peer = %e,
                max_peers = self.limits.max_peers,
                "discovered peer refused: {why} ({held_back} more refusals since the last report)"
            );
        }
        false
    }

    fn take_token(&mut self, now: std::time::Instant) -> bool {
        let burst = self.limits.new_peer_burst;
        let every = self.limits.new_peer_every.max(Duration::from_millis(1));
        let periods = now.saturating_duration_since(self.refilled).as_nanos() / every.as_nanos();
        let missing = burst - self.tokens;
        if periods >= u128::from(missing) {
            self.tokens = burst;
            self.refilled = now;
        } else {
            // `periods < missing`, so it fits; whole periods only, the rest counts toward the next.
            let p = periods as u32;
            self.tokens += p;
            self.refilled += every * p;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// `e` failed and is forgotten: refuse it for the back-off period.
    pub fn failed(&mut self, e: Endpoint, now: std::time::Instant) {
        if self.backoff.len() >= Self::MAX_BACKOFF && !self.backoff.contains_key(&e) {
            self.backoff.retain(|_, until| now < *until);
            if self.backoff.len() >= Self::MAX_BACKOFF {
                if let Some(first) = self
                    .backoff
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(e, _)| *e)
                {
                    self.backoff.remove(&first);
                }
            }
        }
        let backoff = self.limits.failed_backoff.min(Self::LONGEST_BACKOFF);
        self.backoff.insert(e, now + backoff);
        bump(&self.stats.backed_off);
    }
}

fn bind(port: u16) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    // Several listeners on one host (two nodes, or a restart while the old socket lingers) must
    // all be able to bind the discovery port.
    s.set_reuse_address(true)?;
    s.set_only_v6(true)?;
    s.set_multicast_loop_v6(false)?;
    s.set_multicast_hops_v6(1)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// Runs discovery with the default [`Timing`] until `shutdown` resolves or the receiver of
/// `found` is dropped. Fails only if the socket cannot be set up.
pub async fn run(
    cfg: DiscoveryConfig,
    found: mpsc::Sender<Endpoint>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with(
        cfg,
        Timing::default(),
        Arc::new(DiscoveryStats::default()),
        found,
        shutdown,
    )
    .await
}

/// [`run`] with explicit periods and counters.
pub async fn run_with(
    cfg: DiscoveryConfig,
    timing: Timing,
    stats: Arc<DiscoveryStats>,
    found: mpsc::Sender<Endpoint>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let sock = bind(cfg.port)?;
    let mut task = Task {
        beacon: encode_beacon(cfg.tcp_port, &cfg.router_id),
        cfg,
        sock,
        stats,
        joined: BTreeMap::new(),
        reported: Reported {
            last: HashMap::new(),
            period: timing.beacon_interval,
        },
        local: HashSet::new(),
        scan_log: LogLimiter::new(LOG_EVERY),
        own_log: LogLimiter::new(LOG_EVERY),
        join_log: LogLimiter::new(LOG_EVERY),
        send_log: LogLimiter::new(LOG_EVERY),
        recv_log: LogLimiter::new(LOG_EVERY),
        bad_log: LogLimiter::new(LOG_EVERY),
    };
    tracing::info!(port = task.cfg.port, "link-local discovery started");
    task.rescan().await;

    let mut beacon_tick = tokio::time::interval_at(
        Instant::now() + timing.beacon_interval,
        timing.beacon_interval,
    );
    beacon_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rescan_tick = tokio::time::interval_at(
        Instant::now() + timing.rescan_interval,
        timing.rescan_interval,
    );
    rescan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = [0u8; 2 * BEACON_LEN];
    let mut recv_errors_in_row = 0u32;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = beacon_tick.tick() => {
                let all: Vec<u32> = task.joined.keys().copied().collect();
                for idx in all {
                    task.send_beacon(idx).await;
                }
            }
            _ = rescan_tick.tick() => task.rescan().await,
            r = task.sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    recv_errors_in_row = 0;
                    if !task.handle(src, &buf[..n], &found) {
                        break;
                    }
                }
                Err(e) => {
                    // ICMP-induced errors on UDP sockets are transient; a persistent one must not
                    // spin the loop.
                    recv_errors_in_row = recv_errors_in_row.saturating_add(1);
                    if let Some(held) = task.recv_log.allow(std::time::Instant::now()) {
                        tracing::warn!(error = %e, held, "discovery: receive failed");
                    }
                    if recv_errors_in_row > 10 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
        }
    }
    for (idx, _) in std::mem::take(&mut task.joined) {
        let _ = task.sock.leave_multicast_v6(&GROUP, idx);
    }
    tracing::info!("link-local discovery stopped");
    Ok(())
}

struct Joined {
    name: String,
    sent: bool,
}

struct Task {
    cfg: DiscoveryConfig,
    beacon: [u8; BEACON_LEN],
    sock: UdpSocket,
    stats: Arc<DiscoveryStats>,
    /// Interfaces the group is joined on: index → name, and whether the last beacon went out.
    joined: BTreeMap<u32, Joined>,
    /// Every address of every interface, as of the last scan.
    local: HashSet<Ipv6Addr>,
    reported: Reported,
    scan_log: LogLimiter,
    own_log: LogLimiter,
    join_log: LogLimiter,
    send_log: LogLimiter,
    recv_log: LogLimiter,
    bad_log: LogLimiter,
}

impl Task {
    /// Joins the group on new eligible interfaces (and beacons there at once), leaves those that
    /// are gone or no longer eligible.
    async fn rescan(&mut self) {
        let addrs = match list_addrs() {
            Ok(a) => a,
            Err(e) => {
                if let Some(held) = self.scan_log.allow(std::time::Instant::now()) {
                    tracing::warn!(error = %e, held, "discovery: cannot list interfaces");
                }
                return;
            }
        };
        self.local = addrs
            .iter()
            .filter_map(|a| a.v6.map(|(ip, _)| ip))
            .collect();
        let want = eligible(&addrs, &self.cfg.interfaces);
        let gone: Vec<u32> = self
            .joined
            .iter()
            .filter(|(i, j)| want.get(i) != Some(&j.name))
            .map(|(i, _)| *i)
            .collect();
        for idx in gone {
            if let Some(j) = self.joined.remove(&idx) {
                // Fails harmlessly when the interface no longer exists.
                let _ = self.sock.leave_multicast_v6(&GROUP, idx);
                tracing::info!(interface = %j.name, "discovery: interface left");
            }
        }
        for (idx, name) in want {
            if let Some(j) = self.joined.get(&idx) {
                if !j.sent {
                    self.send_beacon(idx).await;
                }
                continue;
            }
            match self.sock.join_multicast_v6(&GROUP, idx) {
                Ok(()) => {
                    tracing::info!(interface = %name, "discovery: beaconing on interface");
                    self.joined.insert(idx, Joined { name, sent: false });
                    self.send_beacon(idx).await;
                }
                Err(e) => {
                    if let Some(held) = self.join_log.allow(std::time::Instant::now()) {
                        tracing::warn!(interface = %name, error = %e, held, "discovery: cannot join ff02::cafe");
                    }
                }
            }
        }
        self.stats
            .interfaces
            .store(self.joined.len() as u64, Ordering::Relaxed);
        bump(&self.stats.scans);
    }

    async fn send_beacon(&mut self, idx: u32) {
        // The scope id of a link-scope multicast destination picks the outgoing interface.
        let to = SocketAddrV6::new(GROUP, self.cfg.port, 0, idx);
        let r = self.sock.send_to(&self.beacon, to).await;
        if let Some(j) = self.joined.get_mut(&idx) {
            j.sent = r.is_ok();
        }
        match r {
            Ok(_) => bump(&self.stats.beacons_sent),
            Err(e) => {
                bump(&self.stats.send_errors);
                if let Some(held) = self.send_log.allow(std::time::Instant::now()) {
                    let name = self.joined.get(&idx).map_or("?", |j| j.name.as_str());
                    tracing::warn!(interface = %name, error = %e, held, "discovery: beacon not sent");
                }
            }
        }
    }

    /// Handles one datagram; `false` when nobody listens for discovered peers any more.
    fn handle(&mut self, src: SocketAddr, bytes: &[u8], found: &mpsc::Sender<Endpoint>) -> bool {
        let now = Instant::now();
        let e = match parse_beacon(src, bytes, &self.cfg.router_id, &self.local) {
            Ok(e) => e,
            Err(BeaconError::Own) => {
                bump(&self.stats.own_beacons);
                return true;
            }
            Err(BeaconError::OwnAddress) => {
                bump(&self.stats.own_address_beacons);
                if let Some(held) = self.own_log.allow(now.into_std()) {
                    tracing::warn!(
                        %src,
                        held,
                        "discovery: ignoring a beacon from one of our own addresses (it would \
                         make us dial ourselves)"
                    );
                }
                return true;
            }
            Err(err) => {
                bump(&self.stats.bad_packets);
                if let Some(held) = self.bad_log.allow(now.into_std()) {
                    tracing::debug!(%src, error = %err, held, "discovery: packet ignored");
                }
                return true;
            }
        };
        bump(&self.stats.beacons_received);
        if !self.reported.due(&e, now) {
            return true;
        }
        match found.try_send(e) {
            Ok(()) => {
                self.reported.record(e, now);
                bump(&self.stats.reported);
                tracing::debug!(peer = %e, "discovery: peer heard");
                true
            }
            // A busy receiver misses this one; the next beacon brings it again.
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(b: u8) -> RouterId {
        RouterId::new([b; 32], [b, 1, 2, 3, 4, 5])
    }

    fn ll(s: &str, scope: u32) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(s.parse().unwrap(), 9650, 0, scope))
    }

    #[test]
    fn beacon_is_exactly_the_documented_bytes() {
        let b = encode_beacon(0x25b3, &rid(0xaa));
        assert_eq!(b.len(), 50);
        assert_eq!(&b[..8], b"mycelium");
        assert_eq!(&b[..8], &[0x6d, 0x79, 0x63, 0x65, 0x6c, 0x69, 0x75, 0x6d]);
        assert_eq!(&b[8..10], &[0x25, 0xb3]);
        assert_eq!(&b[10..42], &[0xaa; 32]);
        assert_eq!(&b[42..44], &[0, 0]);
        assert_eq!(&b[44..], &[0xaa, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn accepted_beacon_gives_scoped_tcp_endpoint() {
        let b = encode_beacon(9651, &rid(1));
        let e = parse_beacon(ll("fe80::1:2", 7), &b, &rid(2), &HashSet::new()).unwrap();
        assert_eq!(e.to_string(), "tcp://[fe80::1:2%7]:9651");
        assert_eq!(e, "tcp://[fe80::1:2%7]:9651".parse().unwrap());
    }

    #[test]
    fn acceptance_rules() {
        let own = rid(2);
        let b = encode_beacon(9651, &rid(1));
        let none = HashSet::new();
        let parse_beacon = |src, bytes: &[u8], own: &RouterId| parse_beacon(src, bytes, own, &none);
        assert_eq!(
            parse_beacon(ll("fe80::1", 3), &encode_beacon(9651, &own), &own),
            Err(BeaconError::Own)
        );
        // Only fe80:0:0:0::/64 counts as link-local here, and it needs a scope.
        for src in [
            ll("fd00::1", 3),
            ll("fe80:0:0:1::1", 3),
            ll("febf::1", 3),
            ll("ff02::1", 3),
            ll("fe80::1", 0),
            "198.18.0.1:9650".parse().unwrap(),
        ] {
            assert_eq!(
                parse_beacon(src, &b, &own),
                Err(BeaconError::NotLinkLocal),
                "{src}"
            );
        }
        let src = ll("fe80::1", 3);
        assert_eq!(
            parse_beacon(src, &b[..49], &own),
            Err(BeaconError::Length(49))
        );
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(parse_beacon(src, &long, &own), Err(BeaconError::Length(51)));
        assert_eq!(parse_beacon(src, &[], &own), Err(BeaconError::Length(0)));
        let mut bad = b;
        bad[0] = b'M';
        assert_eq!(parse_beacon(src, &bad, &own), Err(BeaconError::Magic));
        assert_eq!(
            parse_beacon(src, &encode_beacon(0, &rid(1)), &own),
            Err(BeaconError::ZeroPort)
        );
        // Same key, different per-boot suffix: the key is the node, so it is us (another boot, or
        // somebody replaying our key), never a peer.
        let mut sibling = own;
        sibling.0[39] ^= 1;
        assert_eq!(
            parse_beacon(src, &encode_beacon(1, &sibling), &own),
            Err(BeaconError::Own)
        );
        // Another key with our suffix is somebody else.
        let mut other = own;
        other.0[0] ^= 1;
        assert!(parse_beacon(src, &encode_beacon(1, &other), &own).is_ok());
    }

    /// Finding 9 of issue 12: a beacon from one of our own addresses made the node dial itself.
    /// Any of our addresses counts, whatever interface (scope) the beacon came in on.
    #[test]
    fn beacons_from_our_own_addresses_are_ignored() {
        let own = rid(2);
        let local: HashSet<Ipv6Addr> = ["fe80::a", "fe80::b", "fd00::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let b = encode_beacon(9651, &rid(1));
        for src in [ll("fe80::a", 3), ll("fe80::a", 4), ll("fe80::b", 3)] {
            assert_eq!(
                parse_beacon(src, &b, &own, &local),
                Err(BeaconError::OwnAddress),
                "{src}"
            );
        }
        assert!(parse_beacon(ll("fe80::c", 3), &b, &own, &local).is_ok());
    }

    #[test]
    fn parse_never_panics_on_any_length() {
        let own = rid(9);
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for n in 0..data.len() {
            let r = parse_beacon(ll("fe80::1", 1), &data[..n], &own, &HashSet::new());
            assert!(r.is_err());
        }
    }

    fn ifa(name: &str, flags: InterfaceFlags, v6: Option<(&str, u32)>) -> IfAddr {
        IfAddr {
            name: name.to_owned(),
            flags,
            v6: v6.map(|(a, s)| (a.parse().unwrap(), s)),
        }
    }

    #[test]
    fn interface_selection() {
        use InterfaceFlags as F;
        let eth = F::IFF_UP | F::IFF_BROADCAST | F::IFF_MULTICAST | F::IFF_RUNNING;
        let addrs = vec![
            ifa("lo", F::IFF_UP | F::IFF_LOOPBACK, Some(("::1", 0))),
            ifa("eth0", eth, None),
            ifa("eth0", eth, Some(("fd00::5", 0))),
            ifa("eth0", eth, Some(("fe80::5", 2))),
            ifa("eth1", eth, Some(("fd00::6", 0))),
            ifa(
                "down0",
                F::IFF_BROADCAST | F::IFF_MULTICAST,
                Some(("fe80::7", 4)),
            ),
            ifa("nomc0", F::IFF_UP | F::IFF_BROADCAST, Some(("fe80::8", 5))),
            ifa(
                "hypha",
                F::IFF_UP | F::IFF_POINTOPOINT | F::IFF_NOARP | F::IFF_MULTICAST,
                Some(("fe80::9", 6)),
            ),
            ifa(
                "wg0",
                F::IFF_UP | F::IFF_NOARP | F::IFF_MULTICAST,
                Some(("fe80::a", 7)),
            ),
            ifa("veth1", eth, Some(("fe80::b", 8))),
            ifa("odd0", eth, Some(("fe80:0:0:1::c", 9))),
        ];
        let all = eligible(&addrs, &[]);
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            vec![(2, "eth0".to_owned()), (8, "veth1".to_owned())]
        );
        let only = eligible(&addrs, &["veth1".to_owned(), "hypha".to_owned()]);
        assert_eq!(
            only.into_iter().collect::<Vec<_>>(),
            vec![(8, "veth1".to_owned())]
        );
    }

    #[test]
    fn reports_are_spaced_and_bounded() {
        let t0 = Instant::now();
        let mut r = Reported {
            last: HashMap::new(),
            period: Duration::from_secs(60),
        };
        let e: Endpoint = "tcp://[fe80::1%2]:9651".parse().unwrap();
        assert!(r.due(&e, t0));
        r.record(e, t0);
        assert!(!r.due(&e, t0 + Duration::from_secs(59)));
        assert!(r.due(&e, t0 + Duration::from_secs(60)));
        for i in 0..Reported::MAX as u16 {
            let x = Endpoint::tcp(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 1, i),
                9651,
                0,
                2,
            )));
            if r.due(&x, t0) {
                r.record(x, t0);
            }
        }
        assert_eq!(r.last.len(), Reported::MAX);
        let fresh: Endpoint = "tcp://[fe80::2:1%2]:9651".parse().unwrap();
        assert!(!r.due(&fresh, t0 + Duration::from_secs(1)));
        // Once the old entries have aged out, there is room again.
        assert!(r.due(&fresh, t0 + Duration::from_secs(61)));
        assert!(r.last.is_empty());
    }

    fn endpoint(i: u16) -> Endpoint {
        Endpoint::tcp(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 2, i),
            9651,
            0,
            2,
        )))
    }

    fn admission(limits: DiscoveryLimits) -> Admission {
        Admission::new(limits, Arc::default())
    }

    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Finding 9 of issue 12: beacons announcing many endpoints made the node hold (and dial)
    /// every one of them. At most `max_peers` are held; each refusal beyond is counted.
    #[test]
    fn discovered_peers_are_capped() {
        let limits = DiscoveryLimits {
            new_peer_burst: 1000,
            ..DiscoveryLimits::default()
        };
        let mut a = admission(limits);
        let now = std::time::Instant::now();
        let mut held = 0;
        for i in 0..200 {
            if a.admit(&endpoint(i), held, now) {
                held += 1;
            }
        }
        assert_eq!(held, limits.max_peers);
        assert_eq!(load(&a.stats().refused_cap), 200 - limits.max_peers as u64);
        // One forgotten: room for one more.
        assert!(a.admit(&endpoint(500), held - 1, now));
    }

    #[test]
    fn new_discovered_peers_are_rate_limited() {
        let limits = DiscoveryLimits::default();
        let mut a = admission(limits);
        let t0 = std::time::Instant::now();
        let admitted = (0..100).filter(|&i| a.admit(&endpoint(i), 0, t0)).count();
        assert_eq!(admitted, limits.new_peer_burst as usize);
        assert_eq!(
            load(&a.stats().refused_rate),
            100 - u64::from(limits.new_peer_burst)
        );
        // Then one per period (a partial period earns nothing, and is not lost).
        let half = limits.new_peer_every / 2;
        assert!(!a.admit(&endpoint(200), 0, t0 + half));
        assert!(a.admit(&endpoint(201), 0, t0 + limits.new_peer_every));
        assert!(!a.admit(&endpoint(202), 0, t0 + limits.new_peer_every + half));
        assert!(a.admit(&endpoint(203), 0, t0 + 2 * limits.new_peer_every));
        // A long quiet period refills the burst, not more.
        let later = t0 + 1000 * limits.new_peer_every;
        let admitted = (300..400)
            .filter(|&i| a.admit(&endpoint(i), 0, later))
            .count();
        assert_eq!(admitted, limits.new_peer_burst as usize);
    }

    /// Finding 9 of issue 12 (ports of neighbours): an endpoint that failed is refused for the
    /// back-off period, then admitted again.
    #[test]
    fn a_failed_endpoint_backs_off() {
        let limits = DiscoveryLimits::default();
        let mut a = admission(limits);
        let t0 = std::time::Instant::now();
        let e = endpoint(22);
        assert!(a.admit(&e, 0, t0));
        a.failed(e, t0);
        assert_eq!(load(&a.stats().backed_off), 1);
        let before_end = t0 + limits.failed_backoff - Duration::from_secs(1);
        assert!(!a.admit(&e, 0, before_end));
        assert_eq!(load(&a.stats().refused_backoff), 1);
        // Others are not affected.
        assert!(a.admit(&endpoint(23), 0, before_end));
        assert!(a.admit(&e, 0, t0 + limits.failed_backoff));
        assert!(a.backoff.is_empty());
    }

    #[test]
    fn the_backoff_table_is_bounded() {
        let mut a = admission(DiscoveryLimits::default());
        let t0 = std::time::Instant::now();
        let n = Admission::MAX_BACKOFF as u16 + 100;
        for i in 0..n {
            a.failed(endpoint(i), t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(a.backoff.len(), Admission::MAX_BACKOFF);
        // The ones whose back-off ended first made room; the newest are all there.
        assert!(!a.backoff.contains_key(&endpoint(0)));
        assert!(a.backoff.contains_key(&endpoint(n - 1)));
    }

    /// Over loopback no beacon arrives (multicast needs a real link), but the task must start,
    /// answer garbage without dying, and stop on shutdown.
    #[tokio::test]
    async fn survives_garbage_and_stops() {
        let port = {
            let s = std::net::UdpSocket::bind("[::1]:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let cfg = DiscoveryConfig {
            port,
            interfaces: vec!["no-such-if0".to_owned()],
            tcp_port: 9651,
            router_id: rid(1),
        };
        let stats = Arc::new(DiscoveryStats::default());
        let (tx, _rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_with(
            cfg,
            Timing::default(),
            stats.clone(),
            tx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let s = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let to: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        let beacon = encode_beacon(9651, &rid(3));
        // The task may not have bound yet: keep sending until it has counted garbage.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.bad_packets.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "no packet counted");
            s.send_to(b"junk", to).await.unwrap();
            // A valid beacon from a non-link-local source is still refused.
            s.send_to(&beacon, to).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.reported.load(Ordering::Relaxed), 0);
        assert_eq!(stats.interfaces.load(Ordering::Relaxed), 0);
        assert!(!task.is_finished());
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
