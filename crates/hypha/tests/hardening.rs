//! A public node under a connection flood: thousands of idle TCP connections from one address
//! (half of them having sent one byte, none a frame) while its existing peer keeps working and
//! a new peer from another address connects and reaches it within 5 s, also after a second flood
//! from many addresses that fills the node's room for unproven connections; its memory stays
//! bounded. Before the gate (`node::gate`) every such connection became a link, and after 4,096
//! of them the routing core refused every new one, the legitimate peer's included. Root only.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Node;
use testbed::{link, Netns};

/// Connections the flood opens (above the 4,096 links the routing core holds).
const FLOOD: usize = 5_000;
/// Addresses the second flood comes from, 8 idle connections each.
const SOURCES: u8 = 80;

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_connection_flood_from_one_address_locks_out_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb, nc, nf) = (
        Netns::new("fla").unwrap(),
        Netns::new("flb").unwrap(),
        Netns::new("flc").unwrap(),
        Netns::new("flf").unwrap(),
    );
    let ab = link(&na, &nb, 41).expect("veth A-B");
    let ac = link(&na, &nc, 42).expect("veth A-C");
    let af = link(&na, &nf, 43).expect("veth A-F");
    let a = Node::start(&na, dir.path(), "a", &["--disable-peer-discovery"]);
    let discovery_off = ["--disable-peer-discovery"];
    let b = Node::start_dialling(&nb, dir.path(), "b", ab.addrs[0], &discovery_off);
    b.wait(Duration::from_secs(20), "B reaching A", |n| {
        n.ping_once(a.addr)
    });
    let rss_before = a.rss_kib().expect("A's RSS");

    // The flood: FLOOD connections from F's one address, every other one sending a byte.
    let target: SocketAddr = (af.addrs[0], 9651).into();
    let flood = nf
        .run(move || {
            let mut held = Vec::with_capacity(FLOOD);
            for i in 0..FLOOD {
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(mut s) => {
                        if i % 2 == 0 {
                            let _ = s.write_all(&[1]);
                        }
                        held.push(s);
                    }
                    Err(e) => return Err(format!("connection {i}: {e}")),
                }
            }
            Ok(held)
        })
        .expect("enter F")
        .expect("the flood's connections");
    assert_eq!(flood.len(), FLOOD);

    // And from many addresses: SOURCES × 8 idle connections, more than the 512 unproven ones A
    // keeps in total, so the oldest are closed to make room for new ones.
    for i in 0..SOURCES {
        let addr = format!("198.18.43.{}/24", 10 + i);
        nf.ip(&["addr", "add", &addr, "dev", &af.devs[1]])
            .expect("another source address");
    }
    let spread = nf
        .run(move || {
            let mut held = Vec::new();
            for i in 0..SOURCES {
                let from: SocketAddr = (Ipv4Addr::new(198, 18, 43, 10 + i), 0).into();
                for _ in 0..8 {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .map_err(|e| e.to_string())?;
                    s.bind(&from.into()).map_err(|e| e.to_string())?;
                    s.connect_timeout(&target.into(), Duration::from_secs(2))
                        .map_err(|e| format!("from {from}: {e}"))?;
                    held.push(s);
                }
            }
            Ok::<_, String>(held)
        })
        .expect("enter F")
        .expect("the spread flood's connections");

    // A new peer from another address, while the flood's connections are held.
    let started = Instant::now();
    let c = Node::start_dialling(&nc, dir.path(), "c", ac.addrs[0], &discovery_off);
    c.wait(
        Duration::from_secs(5),
        "C reaching A during the flood",
        |n| n.ping_once(a.addr),
    );
    let took = started.elapsed();
    // The existing peer still works.
    assert!(b.ping_once(a.addr), "B lost A during the flood");

    let stats = a.json(&["stats", "--json"]);
    let p = &stats["peering"];
    let rss_after = a.rss_kib().expect("A's RSS");
    eprintln!(
        "C reached A {took:.2?} after it started; A: RSS {rss_before} -> {rss_after} KiB; {p}"
    );
    // The floods never became links: refused at the gate, or evicted from it, or waiting there
    // unproven (at most 512).
    let n = |k: &str| p[k].as_u64().unwrap();
    let unproven = n("inboundUnproven");
    assert!(n("inboundRefusedSourceCap") >= FLOOD as u64 - 8, "{p}");
    assert!(
        n("inboundEvicted") >= u64::from(SOURCES) * 8 + 8 - 512,
        "{p}"
    );
    assert!(unproven <= 512, "{p}");
    assert_eq!(n("inboundProven"), 2, "{p}");
    assert_eq!(
        a.json(&["peers", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Bounded memory: the flood cost A a few MiB at most.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "A grew from {rss_before} to {rss_after} KiB"
    );
    drop((flood, spread));
}

/// A node killed and started again at once, with the same key and TUN name, comes up every
/// time (the kernel may still be releasing the device: the open waits for it) and its peer
/// reaches it again.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_node_restarted_at_once_with_the_same_tun_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("rsa").unwrap(), Netns::new("rsb").unwrap());
    let ab = link(&na, &nb, 44).expect("veth A-B");
    let flags = ["--disable-peer-discovery", "--tun-name", "hyrs"];
    let mut a = Node::start(&na, dir.path(), "a", &flags);
    let (key, addr) = (a.key.clone(), a.addr);
    let b = Node::start_dialling(&nb, dir.path(), "b", ab.addrs[0], &flags);
    b.wait(Duration::from_secs(20), "B reaching A", |n| {
        n.ping_once(addr)
    });
    for round in 1..=5 {
        a.kill();
        let started = Instant::now();
        a = Node::start_with_key(&na, dir.path(), "a", key.clone(), addr, &flags);
        b.wait(Duration::from_secs(15), "B reaching the restarted A", |n| {
            n.ping_once(addr)
        });
        eprintln!(
            "round {round}: A back and reached {:.2?} after its restart",
            started.elapsed()
        );
    }
}
