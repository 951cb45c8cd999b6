//! Root tests: traffic between two namespaces joined only by two TUNs and the userspace bridge
//! (`hypha_tun::bridge`, the loop of the `forwarder` example). Every byte is checked.

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::topology::{self, A4, A6, B4, B6};
use hypha_tun::{bridge, Stats, Tun};
use testbed::{udp, xfer, Netns};

const MB: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Two namespaces, their TUNs and the running bridge; stops the bridge and deletes the
/// namespaces when dropped, also when the test fails.
struct Fixture {
    stop: Arc<AtomicBool>,
    bridge: Option<JoinHandle<io::Result<()>>>,
    a: Arc<Tun>,
    b: Arc<Tun>,
    // Declared last: dropped after the bridge has stopped and the devices are closed.
    ns_a: Netns,
    ns_b: Netns,
}

impl Fixture {
    fn new(tag: &str, offload: bool) -> Fixture {
        Fixture::with_options(tag, offload, bridge::Options::default())
    }

    fn with_options(tag: &str, offload: bool, opts: bridge::Options) -> Fixture {
        let ns_a = Netns::new(&format!("{tag}a")).unwrap();
        let ns_b = Netns::new(&format!("{tag}b")).unwrap();
        let (a, b) = topology::tun_pair(ns_a.name(), ns_b.name(), ("hya", "hyb"), offload).unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let stop = Arc::new(AtomicBool::new(false));
        let bridge = {
            let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || bridge::run(&a, &b, &stop, opts))
        };
        Fixture {
            stop,
            bridge: Some(bridge),
            a,
            b,
            ns_a,
            ns_b,
        }
    }

    fn stats(&self) -> (Stats, Stats) {
        (self.a.stats(), self.b.stats())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.bridge.take() {
            let r = h.join();
            if !std::thread::panicking() {
                r.expect("bridge thread panicked").expect("bridge failed");
            }
        }
    }
}

/// Starts a receiver in `rx_ns` on `to` and a sender in `tx_ns`; returns a handle yielding
/// (sent, received) summaries.
fn tcp_transfer(
    tx_ns: &Netns,
    rx_ns: &Netns,
    to: SocketAddr,
    bytes: u64,
    seed: u64,
) -> JoinHandle<(xfer::Summary, xfer::Summary)> {
    let listener = rx_ns.run(|| TcpListener::bind(to)).unwrap().unwrap();
    let rx = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        xfer::recv(s).unwrap()
    });
    let stream = tx_ns
        .run(|| TcpStream::connect_timeout(&to, IO_TIMEOUT))
        .unwrap()
        .unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    std::thread::spawn(move || {
        let sent = xfer::send(stream, bytes, seed).unwrap();
        (sent, rx.join().unwrap())
    })
}

/// 200 MB A→B over IPv6 and 200 MB B→A over IPv4 at the same time, checked by digest.
fn tcp_both_ways(fx: &Fixture, bytes: u64) {
    let ab = tcp_transfer(
        &fx.ns_a,
        &fx.ns_b,
        SocketAddr::new(IpAddr::V6(B6), 5001),
        bytes,
        1,
    );
    let ba = tcp_transfer(
        &fx.ns_b,
        &fx.ns_a,
        SocketAddr::new(IpAddr::V4(A4), 5002),
        bytes,
        2,
    );
    for (h, seed) in [(ab, 1), (ba, 2)] {
        let (sent, got) = h.join().unwrap();
        assert_eq!(sent, xfer::expected(bytes, seed));
        assert_eq!(got, sent, "received stream differs from what was sent");
    }
}

/// Mixed-size UDP both families, A→B, plain sends and (when `gso`) UDP GSO sends.
fn udp_mixed(fx: &Fixture, gso: bool) {
    for (from, to, max) in [
        (IpAddr::V6(A6), IpAddr::V6(B6), 1400 - 48),
        (IpAddr::V4(A4), IpAddr::V4(B4), 1400 - 28),
    ] {
        let rx = fx
            .ns_b
            .run(|| UdpSocket::bind((to, 6001)))
            .unwrap()
            .unwrap();
        let tx = fx.ns_a.run(|| UdpSocket::bind((from, 0))).unwrap().unwrap();
        tx.connect((to, 6001)).unwrap();
        let mut plan = udp::Plan::mixed(max, 9);
        plan.gso = gso;
        let p2 = plan.clone();
        let h = std::thread::spawn(move || udp::recv(&rx, &p2));
        udp::send(&tx, &plan).unwrap();
        assert_eq!(
            h.join().unwrap().unwrap(),
            plan.datagrams(),
            "{from} → {to}, gso {gso}"
        );
    }
}

fn ping(fx: &Fixture) {
    for (ns, dst, fam) in [
        (&fx.ns_a, B6.to_string(), "-6"),
        (&fx.ns_b, A6.to_string(), "-6"),
        (&fx.ns_a, B4.to_string(), "-4"),
    ] {
        let out = ns
            .exec("ping", &[fam, "-c", "3", "-i", "0.2", "-W", "5", &dst])
            .unwrap();
        assert!(out.contains("3 received"), "{out}");
    }
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn offloaded_tcp_200mb_each_way_is_byte_identical_and_uses_super_packets() {
    let opts = bridge::Options {
        pipeline: true,
        ..Default::default()
    };
    let fx = Fixture::with_options("fwtcp", true, opts);
    assert!(fx.a.capabilities().tso6() && fx.b.capabilities().tso4());
    tcp_both_ways(&fx, 200 * MB);
    let (a, b) = fx.stats();
    eprintln!("a: {a}\nb: {b}");
    for s in [a, b] {
        assert!(s.super_packets > 0, "no super-packets read: {s}");
        assert!(s.segments_per_read() > 1.0, "{s}");
        assert!(s.coalesced_writes > 0, "no coalesced writes: {s}");
        assert!(s.packets_per_write() > 1.0, "{s}");
        assert_eq!(s.drop_malformed + s.drop_truncated, 0, "{s}");
    }
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn offloaded_udp_mixed_sizes_and_ping_single_thread() {
    let opts = bridge::Options {
        single_thread: true,
        ..Default::default()
    };
    let fx = Fixture::with_options("fwudp", true, opts);
    ping(&fx);
    udp_mixed(&fx, false);
    udp_mixed(&fx, true);
    let (a, b) = fx.stats();
    eprintln!("a: {a}\nb: {b}");
    if fx.a.capabilities().uso() {
        assert!(
            a.super_packets > 0,
            "UDP GSO sends should arrive as USO super-packets: {a}"
        );
    }
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn without_offload_everything_still_arrives_and_nothing_is_coalesced() {
    let fx = Fixture::new("fwplain", false);
    assert!(!fx.a.capabilities().vnet_hdr());
    ping(&fx);
    udp_mixed(&fx, false);
    udp_mixed(&fx, true);
    tcp_both_ways(&fx, 200 * MB);
    let (a, b) = fx.stats();
    eprintln!("a: {a}\nb: {b}");
    for s in [a, b] {
        assert!(s.reads > 0);
        assert_eq!(s.super_packets, 0, "{s}");
        assert_eq!(s.segments, s.reads, "{s}");
        assert_eq!(s.coalesced_writes, 0, "{s}");
        assert_eq!(s.packets_written, s.writes, "{s}");
    }
}
