//! Link-local peer discovery (spec §5): a 50-byte UDP beacon multicast to `[ff02::cafe]:9650` on
//! every suitable interface, and the peers heard that way reported as `tcp://[fe80::…%if]:port`.
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

use std::collections::{BTreeMap, HashMap};
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

use crate::endpoint::Endpoint;

/// The default discovery port.
pub const DEFAULT_PORT: u16 = 9650;
/// The link-local multicast group beacons go to.
pub const GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xcafe);
/// Beacons are exactly this long.
pub const BEACON_LEN: usize = 50;
/// The first 8 bytes of every beacon.
pub const MAGIC: [u8; 8] = *b"mycelium";

/// Beacon layout (spec §5).
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const PORT: Range<usize> = 8..10;
    pub const ROUTER_ID: Range<usize> = 10..50;
}

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
    /// Our own beacons (another socket of ours, or a looped-back copy).
    pub own_beacons: AtomicU64,
    /// Packets that broke an acceptance rule.
    pub bad_packets: AtomicU64,
    /// Endpoints handed to the caller.
    pub reported: AtomicU64,
    /// Interfaces the group is currently joined on.
    pub interfaces: AtomicU64,
    /// Interface scans done.
    pub scans: AtomicU64,
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
    /// It carries our own router-id.
    Own,
}

impl std::fmt::Display for BeaconError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BeaconError::NotLinkLocal => f.write_str("sender is not a scoped fe80::/64 address"),
            BeaconError::Length(n) => write!(f, "{n} bytes, a beacon has {BEACON_LEN}"),
            BeaconError::Magic => f.write_str("bad magic"),
            BeaconError::ZeroPort => f.write_str("announces TCP port 0"),
            BeaconError::Own => f.write_str("our own beacon"),
        }
    }
}

impl std::error::Error for BeaconError {}

/// `"mycelium"` ‖ TCP port (big-endian) ‖ router-id.
pub fn encode_beacon(tcp_port: u16, router_id: &RouterId) -> [u8; BEACON_LEN] {
    let mut b = [0u8; BEACON_LEN];
    b[field::MAGIC].copy_from_slice(&MAGIC);
    b[field::PORT].copy_from_slice(&tcp_port.to_be_bytes());
    b[field::ROUTER_ID].copy_from_slice(&router_id.0);
    b
}

/// Applies the acceptance rules to a packet from `src`, and gives the endpoint to dial:
/// `tcp://[src%scope]:port`.
pub fn parse_beacon(
    src: SocketAddr,
    bytes: &[u8],
    own: &RouterId,
) -> Result<Endpoint, BeaconError> {
    let SocketAddr::V6(src) = src else {
        return Err(BeaconError::NotLinkLocal);
    };
    if src.ip().octets()[..8] != [0xfe, 0x80, 0, 0, 0, 0, 0, 0] || src.scope_id() == 0 {
        return Err(BeaconError::NotLinkLocal);
    }
    let b: &[u8; BEACON_LEN] = bytes
        .try_into()
        .map_err(|_| BeaconError::Length(bytes.len()))?;
    if b[field::MAGIC] != MAGIC {
        return Err(BeaconError::Magic);
    }
    let port = u16::from_be_bytes([b[field::PORT.start], b[field::PORT.start + 1]]);
    if port == 0 {
        return Err(BeaconError::ZeroPort);
    }
    if b[field::ROUTER_ID] == own.0 {
        return Err(BeaconError::Own);
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

/// Allows a log line once per period and counts what it held back, so that an error repeating
/// every packet costs one line a minute.
#[derive(Debug)]
struct LogLimit {
    next: Option<Instant>,
    held: u64,
}

impl LogLimit {
    const PERIOD: Duration = Duration::from_secs(60);

    fn new() -> LogLimit {
        LogLimit {
            next: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|n| now < n) {
            self.held += 1;
            return None;
        }
        self.next = Some(now + Self::PERIOD);
        Some(std::mem::take(&mut self.held))
    }
}

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
        scan_log: LogLimit::new(),
        join_log: LogLimit::new(),
        send_log: LogLimit::new(),
        recv_log: LogLimit::new(),
        bad_log: LogLimit::new(),
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
                    if let Some(held) = task.recv_log.allow(Instant::now()) {
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
    reported: Reported,
    scan_log: LogLimit,
    join_log: LogLimit,
    send_log: LogLimit,
    recv_log: LogLimit,
    bad_log: LogLimit,
}

impl Task {
    /// Joins the group on new eligible interfaces (and beacons there at once), leaves those that
    /// are gone or no longer eligible.
    async fn rescan(&mut self) {
        let addrs = match list_addrs() {
            Ok(a) => a,
            Err(e) => {
                if let Some(held) = self.scan_log.allow(Instant::now()) {
                    tracing::warn!(error = %e, held, "discovery: cannot list interfaces");
                }
                return;
            }
        };
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
                    if let Some(held) = self.join_log.allow(Instant::now()) {
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
                if let Some(held) = self.send_log.allow(Instant::now()) {
                    let name = self.joined.get(&idx).map_or("?", |j| j.name.as_str());
                    tracing::warn!(interface = %name, error = %e, held, "discovery: beacon not sent");
                }
            }
        }
    }

    /// Handles one datagram; `false` when nobody listens for discovered peers any more.
    fn handle(&mut self, src: SocketAddr, bytes: &[u8], found: &mpsc::Sender<Endpoint>) -> bool {
        let now = Instant::now();
        let e = match parse_beacon(src, bytes, &self.cfg.router_id) {
            Ok(e) => e,
            Err(BeaconError::Own) => {
                bump(&self.stats.own_beacons);
                return true;
            }
            Err(err) => {
                bump(&self.stats.bad_packets);
                if let Some(held) = self.bad_log.allow(now) {
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
        let e = parse_beacon(ll("fe80::1:2", 7), &b, &rid(2)).unwrap();
        assert_eq!(e.to_string(), "tcp://[fe80::1:2%7]:9651");
        assert_eq!(e, "tcp://[fe80::1:2%7]:9651".parse().unwrap());
    }

    #[test]
    fn acceptance_rules() {
        let own = rid(2);
        let b = encode_beacon(9651, &rid(1));
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
        // Same key, different per-boot suffix: another instance, accepted.
        let mut sibling = own;
        sibling.0[39] ^= 1;
        assert!(parse_beacon(src, &encode_beacon(1, &sibling), &own).is_ok());
    }

    #[test]
    fn parse_never_panics_on_any_length() {
        let own = rid(9);
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for n in 0..data.len() {
            let r = parse_beacon(ll("fe80::1", 1), &data[..n], &own);
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
    fn log_limit_holds_repeats() {
        let t0 = Instant::now();
        let mut l = LogLimit::new();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(61)), Some(2));
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
