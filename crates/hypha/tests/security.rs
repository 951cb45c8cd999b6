//! What a connected peer cannot make a node do with data frames it seals itself: write packets
//! with foreign addresses into the host, fail the host's flows with forged ICMP errors, or fill
//! the node with frames that wait for a key. Root only: each test has a node in a namespace of
//! its own and a hand-made peer (`common::rogue`) in another.

mod common;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use common::rogue::{public_key_of, udp6, Rogue, Sender};
use common::Node;
use serde_json::Value;
use testbed::{wait_until, Lab, Netns};
use wire::icmp::IcmpError;

const ROUTE_WAIT: Duration = Duration::from_secs(20);
const QUIET: &str = "--disable-peer-discovery";

/// A data counter of the node's stats (`hypha stats --json`), 0 if absent.
fn data_counter(node: &Node, name: &str) -> u64 {
    let v: Value = node.json(&["stats", "--json"]);
    v["data"][name].as_u64().unwrap_or(0)
}

fn sa(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// Node A in one namespace, the rogue peer's namespace X beside it, joined by a veth pair (a
/// two-namespace `testbed::Lab`); the rogue connected and its keys' routes selected at A.
struct Setup {
    // Fields drop in order: the node before its namespace.
    a: Node,
    a_key: crypto::PublicKey,
    target: SocketAddr,
    lab: Lab,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(tag: &str, net: u8) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::chain(tag, &[net]).unwrap();
        let ax = lab.link(0).addrs[0];
        let a = Node::start(lab.ns(0), dir.path(), "a", &[QUIET]);
        let a_key = public_key_of(&a.key);
        let target: SocketAddr = format!("{ax}:9651").parse().unwrap();
        Setup {
            a,
            a_key,
            target,
            lab,
            _dir: dir,
        }
    }

    /// A's namespace.
    fn na(&self) -> &Netns {
        self.lab.ns(0)
    }

    /// The rogue's namespace X.
    fn nx(&self) -> &Netns {
        self.lab.ns(1)
    }

    /// A connection from X that announces `keys` and waits until A selected their routes.
    fn rogue(&self, keys: &[&Sender]) -> Rogue {
        let mut r = Rogue::connect(self.nx(), self.target);
        for k in keys {
            r.send(&k.update()).unwrap();
        }
        for k in keys {
            let subnet = k.subnet_text();
            self.a
                .wait(ROUTE_WAIT, "the rogue's route", |n| n.has_route(&subnet));
        }
        r
    }

    /// A UDP socket in A's namespace bound to `addr`.
    fn udp(&self, addr: SocketAddr) -> UdpSocket {
        let s = self
            .na()
            .run(move || UdpSocket::bind(addr))
            .unwrap()
            .expect("bind in A");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

/// Reads datagrams until one equals `last`; returns all read before it. Panics if it does not
/// come within the socket's read timeout.
fn read_until(sock: &UdpSocket, last: &[u8]) -> Vec<Vec<u8>> {
    let mut before = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {:?}: {e}", String::from_utf8_lossy(last)));
        if &buf[..n] == last {
            return before;
        }
        before.push(buf[..n].to_vec());
    }
}

/// Finding 1: the key that opens a frame authenticates its sender's subnet and nothing else, so
/// the packet inside must come from that subnet and go to ours.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_peer_cannot_write_packets_with_foreign_addresses_into_the_host() {
    let lab = Setup::new("sia", 60);
    // An address of the host outside the overlay, as on the veth to a LAN.
    let host_addr: Ipv6Addr = "fd00:60::a".parse().unwrap();
    lab.na()
        .ip(&["addr", "add", "fd00:60::a/64", "dev", "lo", "nodad"])
        .unwrap();
    let port = 7000;
    let sock = lab.udp(sa(Ipv6Addr::UNSPECIFIED, port));
    let r1 = Sender::new();
    let someone_else = Sender::new().addr;
    let mut rogue = lab.rogue(&[&r1]);
    let to_a = sa(lab.a.addr, port);
    let spoofed = udp6(sa(someone_else, 5000), to_a, b"spoofed source");
    let to_host = udp6(sa(r1.addr, 5000), sa(host_addr, port), b"host address");
    let honest = udp6(sa(r1.addr, 5000), to_a, b"honest");
    let mut frames = Vec::new();
    for p in [&spoofed, &to_host, &honest] {
        frames.extend(r1.frame(&lab.a_key, r1.addr, lab.a.addr, 0, p));
    }
    rogue.send(&frames).unwrap();
    // The honest packet comes last on the same link: whatever A let through came before it.
    let before = read_until(&sock, b"honest");
    let texts: Vec<_> = before.iter().map(|b| String::from_utf8_lossy(b)).collect();
    assert!(texts.is_empty(), "delivered to the host: {texts:?}");
    assert_eq!(data_counter(&lab.a, "refusedInnerSource"), 1);
    assert_eq!(data_counter(&lab.a, "refusedInnerDestination"), 1);
}

/// Finding 2: an out-of-band ICMP error names an original destination of the sender's choice
/// and quotes a packet sealed with the key we share with it — so it must quote one of our packets
/// to that very destination, or anyone could fail any of our flows.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_peer_cannot_fail_our_flows_to_others_with_forged_icmp() {
    let lab = Setup::new("sib", 61);
    let (r1, r2) = (Sender::new(), Sender::new());
    let mut rogue = lab.rogue(&[&r1, &r2]);
    // Two flows of A's: one to R2 (the victim of the forgery), one to R1 (the control).
    let connected = |to: SocketAddr| {
        let s = lab.udp(sa(lab.a.addr, 0));
        s.connect(to).unwrap();
        s.send(b"hello").unwrap();
        s
    };
    let (to_r2, to_r1) = (sa(r2.addr, 7001), sa(r1.addr, 7002));
    let victim = connected(to_r2);
    let control = connected(to_r1);
    // R1 claims it dropped a packet of A's: "source address failed policy" (EACCES for a
    // connected UDP socket), once about the flow to R2 and once about the flow to R1.
    let oob = |flow: &UdpSocket, to: SocketAddr| {
        let quoted = udp6(flow.local_addr().unwrap(), to, b"quoted");
        let quote = r1.seal(&lab.a_key, 0, &quoted);
        let from = r1.subnet.addr();
        let mut payload = r1.addr.octets().to_vec();
        wire::icmp::build_error(
            &mut payload,
            from,
            lab.a.addr,
            64,
            IcmpError::SourcePolicy,
            &[],
        );
        payload.extend_from_slice(&quote);
        r1.frame(&lab.a_key, from, lab.a.addr, 2, &payload)
    };
    let mut frames = oob(&victim, to_r2);
    frames.extend(oob(&control, to_r1));
    rogue.send(&frames).unwrap();
    // The genuine one arrives after the forged one, on the same link.
    let failed = wait_until(Duration::from_secs(10), || {
        control.take_error().ok().flatten().is_some()
    });
    assert!(
        failed.is_ok(),
        "the genuine error never reached the control flow"
    );
    let err = victim.take_error().unwrap();
    assert!(
        err.is_none(),
        "a forged error failed the flow to R2: {err:?}"
    );
    assert_eq!(data_counter(&lab.a, "refusedIcmpForged"), 1);
    assert_eq!(data_counter(&lab.a, "icmpReceived"), 1);
}

/// Finding 4: frames for us from senders whose key is unknown wait (bounded) for a route
/// query; senders that can have no key are refused at once, and a flood on one link leaves
/// room for a new honest sender on another.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn frames_waiting_for_a_key_cannot_fill_the_node() {
    let lab = Setup::new("sic", 62);
    let port = 7003;
    let sock = lab.udp(sa(lab.a.addr, port));
    let r1 = Sender::new();
    let mut flood = lab.rogue(&[&r1]);
    let rss_before = lab.a.rss_kib().unwrap();
    let big = vec![0x5a; 60_000];
    // Frames no key can open, from outside 400::/7 and from a thousand /64s nobody announced:
    // 2 × 1,100 × 60 kB.
    let mut burst = Vec::new();
    for i in 0..2200u32 {
        let src = if i < 1100 {
            Ipv6Addr::new(0xfd00, 0x62, (i >> 16) as u16, i as u16, 0, 0, 0, 1)
        } else {
            Ipv6Addr::new(0x4ff, 0x62, (i >> 16) as u16, i as u16, 0, 0, 0, 1)
        };
        wire::frame::encode_data(&mut burst, 64, src, lab.a.addr, &big).unwrap();
        if burst.len() > 4 << 20 {
            flood.send(&burst).unwrap();
            burst.clear();
        }
    }
    // Then a packet from R1, which A can open at once: when it is delivered, A has read the
    // whole flood.
    let done = udp6(sa(r1.addr, 5000), sa(lab.a.addr, port), b"flood done");
    burst.extend(r1.frame(&lab.a_key, r1.addr, lab.a.addr, 0, &done));
    flood.send(&burst).unwrap();
    read_until(&sock, b"flood done");

    // A new honest sender on another link: its first packet arrives before its route does.
    let r3 = Sender::new();
    let mut honest = Rogue::connect(lab.nx(), lab.target);
    let first = udp6(sa(r3.addr, 5000), sa(lab.a.addr, port), b"first packet");
    honest
        .send(&r3.frame(&lab.a_key, r3.addr, lab.a.addr, 0, &first))
        .unwrap();
    honest.send(&r3.update()).unwrap();
    let t = Instant::now();
    let before = read_until(&sock, b"first packet");
    assert!(before.is_empty(), "unexpected datagrams: {before:?}");
    println!(
        "the new sender's first packet arrived {:?} after its route",
        t.elapsed()
    );
    let rss_after = lab.a.rss_kib().unwrap();
    println!("rss before the flood {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 24 * 1024,
        "the flood kept {} KiB",
        rss_after - rss_before
    );
    assert_eq!(data_counter(&lab.a, "refusedSender"), 1100);
    // The other 1,100 were refused at the link's rate of asking the owner, or when the link's
    // share of the waiting room was full; a handful may wait for their queries to time out.
    let refused =
        data_counter(&lab.a, "dropPendingFull") + data_counter(&lab.a, "refusedLinkNeeds");
    assert!(
        refused >= 1000,
        "{refused} of 1,100 key-less frames refused"
    );
}
