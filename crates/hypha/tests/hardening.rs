//! A public node under a connection flood: thousands of idle TCP connections from one address
//! (half of them having sent one byte, none a frame) while its existing peer keeps working and
//! a new peer from another address connects and reaches it within 5 s; the node's memory stays
//! bounded. Before the gate (`node::gate`) every such connection became a link, and after 4,096
//! of them the routing core refused every new one, the legitimate peer's included. Root only.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Node;
use testbed::{link, Netns};

/// Connections the flood opens (above the 4,096 links the routing core holds).
const FLOOD: usize = 5_000;

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
    let peer_ab = format!("tcp://{}:9651", ab.addrs[0]);
    let b = Node::start(
        &nb,
        dir.path(),
        "b",
        &["--disable-peer-discovery", "--peers", &peer_ab],
    );
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

    // A new peer from another address, while the flood's connections are held.
    let started = Instant::now();
    let peer_ac = format!("tcp://{}:9651", ac.addrs[0]);
    let c = Node::start(
        &nc,
        dir.path(),
        "c",
        &["--disable-peer-discovery", "--peers", &peer_ac],
    );
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
    // The flood never became links: refused at the gate (a handful wait there unproven).
    let refused = p["inboundRefusedSourceCap"].as_u64().unwrap();
    let unproven = p["inboundUnproven"].as_u64().unwrap();
    assert!(
        refused + unproven + p["inboundTimedOut"].as_u64().unwrap() >= FLOOD as u64 - 8,
        "{p}"
    );
    assert!(unproven <= 8, "{p}");
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
    drop(flood);
}
