//! QUIC links between hypha nodes (`docs/quic.md`) on live nodes in namespaces, over veth with
//! the usual 1,500-byte MTU: full-size traffic both ways, UDP at the TUN's MTU, and bad input on
//! the QUIC port. Root only.

mod common;

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data, transfer, Node};
use serde_json::Value;
use testbed::{link, Netns};

fn peering(n: &Node, field: &str) -> u64 {
    n.json(&["stats", "--json"])["peering"][field]
        .as_u64()
        .unwrap_or(0)
}

/// The peer list's row for the one QUIC peer.
fn quic_row(n: &Node) -> Value {
    let list = n.json(&["peers", "list", "--json"]);
    list.as_array()
        .and_then(|l| {
            l.iter()
                .find(|p| p["endpoint"]["proto"] == "quic" && p["connectionState"] == "alive")
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// Two nodes, B dialling A's QUIC port; returns when they ping each other.
fn quic_pair(
    na: &Netns,
    nb: &Netns,
    net: u8,
    dir: &std::path::Path,
    flags: &[&str],
) -> (Node, Node) {
    let [ab, _] = link(na, nb, net).expect("veth link").addrs;
    let a = Node::start(na, dir, "a", flags);
    let peer = format!("quic://{ab}:9651");
    let b = Node::start(nb, dir, "b", &[flags, &["--peers", &peer]].concat());
    a.wait(Duration::from_secs(30), "B answering over QUIC", |n| {
        n.ping_once(b.addr)
    });
    b.wait(Duration::from_secs(10), "A answering over QUIC", |n| {
        n.ping_once(a.addr)
    });
    (a, b)
}

/// `count` UDP datagrams of `payload` bytes from `from` to `to`'s overlay address; returns how
/// many arrived intact (each carries its number and a pattern derived from it).
fn udp_burst(from: &Netns, to: &Netns, to_addr: Ipv6Addr, count: u32, payload: usize) -> u32 {
    let at: SocketAddr = (to_addr, 7001).into();
    let sock = to
        .run(move || UdpSocket::bind(at))
        .expect("enter ns")
        .expect("bind receiver");
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut intact = 0u32;
        // Until the datagrams stop coming: the sender is done and the overlay drained.
        while let Ok(n) = sock.recv(&mut buf) {
            if n == payload && pattern_ok(&buf[..n]) {
                intact += 1;
            }
        }
        intact
    });
    from.run(move || {
        let s = UdpSocket::bind("[::]:0").unwrap();
        let mut d = vec![0u8; payload];
        for i in 0..count {
            fill_pattern(&mut d, i);
            s.send_to(&d, at).unwrap();
            // Paced at about 100 Mbit/s: the queues on the way are not what is tested.
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .expect("enter ns");
    receiver.join().expect("receiver")
}

fn fill_pattern(d: &mut [u8], i: u32) {
    d[..4].copy_from_slice(&i.to_be_bytes());
    for (k, b) in d[4..].iter_mut().enumerate() {
        *b = (i as usize).wrapping_mul(31).wrapping_add(k) as u8;
    }
}

fn pattern_ok(d: &[u8]) -> bool {
    let i = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    d[4..]
        .iter()
        .enumerate()
        .all(|(k, b)| *b == (i as usize).wrapping_mul(31).wrapping_add(k) as u8)
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn hypha_nodes_over_quic_carry_full_size_traffic_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("qua").unwrap(), Netns::new("qub").unwrap());
    let (a, b) = quic_pair(&na, &nb, 123, dir.path(), &["--disable-peer-discovery"]);
    let row = quic_row(&a);
    assert_eq!(row["type"], "inbound", "{row}");
    let max = row["quic"]["datagramMax"]
        .as_u64()
        .expect("a datagram size");
    // A 1,500-byte path: a full-size frame (1,472 bytes) does not fit one datagram.
    assert!((1000..1472).contains(&max), "{row}");
    let t0 = Instant::now();
    transfer(&na, &nb, b.addr, 5201, 200_000_000);
    transfer(&nb, &na, a.addr, 5202, 200_000_000);
    eprintln!("200 MB each way over QUIC in {:?}", t0.elapsed());
    // Between hypha nodes too the packets went as datagrams (about 150,000 for 200 MB), not as
    // super-frames on the stream.
    for n in [&a, &b] {
        assert!(peering(n, "quicDatagramsTx") > 130_000, "{}", n.ns);
        assert!(peering(n, "quicStreamFallbacks") < 100, "{}", n.ns);
        assert_eq!(data(n, "superFramesOut"), 0, "{}", n.ns);
    }
    // UDP at the TUN's MTU: 1,352 bytes of payload make 1,400-byte packets.
    let sent = 3000;
    let got = udp_burst(&na, &nb, b.addr, sent, 1352);
    eprintln!("UDP: {got} of {sent} datagrams of 1,352 bytes arrived intact");
    assert!(got >= sent * 9 / 10, "{got} of {sent}");
    // The link is the one it was: no reconnection on the way.
    let after = quic_row(&b);
    assert_eq!(after["failures"], 0, "{after}");
    assert!(peering(&a, "quicAccepted") == 1 && peering(&b, "quicDialled") == 1);
    let text = a.cli(&["stats"]).unwrap();
    assert!(text.contains("quic: links accepted 1"), "{text}");
}

/// mycelium's wire on a QUIC link (no sessions, every 1,400 bytes a frame): inner TCP is told a
/// smaller MSS so its segments fit datagrams, and a full-size UDP packet, which nothing can make
/// smaller, goes on the stream; transfers are byte-identical either way.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn inner_tcp_fits_datagrams_and_full_size_udp_goes_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("qla").unwrap(), Netns::new("qlb").unwrap());
    let flags = ["--disable-peer-discovery", "--no-sessions"];
    let (a, b) = quic_pair(&na, &nb, 124, dir.path(), &flags);
    transfer(&na, &nb, b.addr, 5203, 50_000_000);
    transfer(&nb, &na, a.addr, 5204, 50_000_000);
    let (fallbacks, dgrams) = (
        peering(&a, "quicStreamFallbacks"),
        peering(&a, "quicDatagramsTx"),
    );
    eprintln!("TCP: A sent {dgrams} datagrams, {fallbacks} frames on the stream");
    // Each side clamped the SYN it sent (A the SYN-ACK of the first, the SYN of the second).
    assert!(data(&a, "tcpMssClamped") >= 2 && data(&b, "tcpMssClamped") >= 2);
    // 50 MB in segments of about 1,280 bytes went as datagrams, none on the stream.
    assert!(dgrams > 35_000, "{dgrams}");
    assert!(fallbacks < 100, "{fallbacks}");
    assert_eq!(peering(&a, "quicDatagramsTooLarge"), 0);
    // Full-size UDP: on the stream, intact.
    let sent = 2000;
    let got = udp_burst(&na, &nb, b.addr, sent, 1352);
    assert!(got >= sent * 9 / 10, "{got} of {sent}");
    let more = peering(&a, "quicStreamFallbacks") - fallbacks;
    assert!(
        more >= u64::from(got),
        "{more} frames on the stream for {got} UDP packets"
    );
}

/// Garbage datagrams, a flood of handshakes from one address and a stream of garbage at the
/// QUIC port: counted and refused, and the link between A and B never notices.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn bad_input_on_the_quic_port_leaves_peers_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb, nc) = (
        Netns::new("qba").unwrap(),
        Netns::new("qbb").unwrap(),
        Netns::new("qbc").unwrap(),
    );
    let [ac, _] = link(&na, &nc, 126).expect("veth link").addrs;
    let (a, b) = quic_pair(&na, &nb, 125, dir.path(), &["--disable-peer-discovery"]);
    let target: SocketAddr = (ac, 9651).into();

    // 20,000 datagrams of garbage of every size.
    nc.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut x: u32 = 0x1234_5678;
        let mut d = vec![0u8; 1500];
        for i in 0..20_000usize {
            for b in d.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let _ = s.send_to(&d[..1 + i % 1400], target);
        }
    })
    .expect("enter ns");
    assert!(a.ping_once(b.addr), "A and B after the garbage");

    // 100 handshakes at once from one address, none of which opens its stream; then one that
    // sends garbage on its stream.
    let (done, refused, malformed_closed) = nc
        .run(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
                ep.set_default_client_config(node::quic_client_config().unwrap());
                let ep = Arc::new(ep);
                let mut tasks = Vec::new();
                for _ in 0..100 {
                    let ep = ep.clone();
                    tasks.push(tokio::spawn(async move {
                        let c = ep.connect(target, "dummy.mycelium").ok()?;
                        tokio::time::timeout(Duration::from_secs(5), c)
                            .await
                            .ok()?
                            .ok()
                    }));
                }
                let mut conns = Vec::new();
                for t in tasks {
                    if let Some(c) = t.await.unwrap() {
                        conns.push(c);
                    }
                }
                let done = conns.len();
                let refused = 100 - done;
                // Garbage on the stream of one that got in: closed by the gate.
                let mut malformed_closed = false;
                if let Some(c) = conns.first() {
                    let (mut s, _r) = c.open_bi().await.unwrap();
                    s.write_all(&[0xEE; 64]).await.unwrap();
                    malformed_closed = tokio::time::timeout(Duration::from_secs(10), c.closed())
                        .await
                        .is_ok();
                }
                (done, refused, malformed_closed)
            })
        })
        .expect("enter ns");
    eprintln!("flood: {done} handshakes completed, {refused} refused");
    // The gate holds at most 8 unproven connections from one address.
    assert!(done <= 8, "{done} handshakes completed from one address");
    assert!(
        peering(&a, "quicHandshakesRefused") >= 90,
        "refusals counted"
    );
    assert!(
        malformed_closed,
        "garbage on the stream closes the connection"
    );
    a.wait(Duration::from_secs(10), "the garbage stream counted", |n| {
        peering(n, "inboundMalformed") >= 1
    });
    // A and B are as they were: the same link, pinging.
    assert!(a.ping_once(b.addr) && b.ping_once(a.addr));
    let row = quic_row(&b);
    assert_eq!(row["failures"], 0, "{row}");
    assert_eq!(peering(&b, "quicDialled"), 1, "B never redialled");
    assert_eq!(peering(&a, "quicAccepted"), 1);
}

fn closes_total(n: &Node) -> u64 {
    n.json(&["stats", "--json"])["linksClosed"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Two nodes that list each other as `quic://` and start together dial each other at once; each
/// connection comes from the endpoint the other dialled. They settle on one link at the first try:
/// at most the one connection each side gives up is closed, and nothing flaps afterwards.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn nodes_that_dial_each_other_keep_one_link() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("qda").unwrap(), Netns::new("qdb").unwrap());
    let [ab, ba] = link(&na, &nb, 127).expect("veth link").addrs;
    let (pa, pb) = (format!("quic://{ba}:9651"), format!("quic://{ab}:9651"));
    let a = Node::spawn(
        &na,
        dir.path(),
        "a",
        &["--disable-peer-discovery", "--peers", &pa],
    );
    let b = Node::spawn(
        &nb,
        dir.path(),
        "b",
        &["--disable-peer-discovery", "--peers", &pb],
    );
    a.wait_api();
    b.wait_api();
    a.wait(Duration::from_secs(30), "B answering", |n| {
        n.ping_once(b.addr)
    });
    b.wait(Duration::from_secs(10), "A answering", |n| {
        n.ping_once(a.addr)
    });
    let settled = [closes_total(&a), closes_total(&b)];
    eprintln!(
        "links closed while settling: A {}, B {}",
        settled[0], settled[1]
    );
    assert!(settled.iter().all(|&c| c <= 1), "{settled:?}");
    // Ten pings each way over two seconds: the same link all along.
    for _ in 0..10 {
        assert!(a.ping_once(b.addr) && b.ping_once(a.addr));
    }
    assert_eq!([closes_total(&a), closes_total(&b)], settled);
    for n in [&a, &b] {
        let row = quic_row(n);
        assert_eq!(row["type"], "static", "{row}");
    }
}
