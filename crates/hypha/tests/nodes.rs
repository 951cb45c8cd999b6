//! Whole nodes in namespaces: two peers, a relay chain, a diamond with a failing branch.
//! Root only (network namespaces, veth, TUN); reported as ignored otherwise.

mod common;

use std::time::Duration;

use common::{linked_pair, transfer, Node};
use testbed::Netns;

const MB: u64 = 1024 * 1024;
const ROUTE_WAIT: Duration = Duration::from_secs(30);

fn two_nodes(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("n2a").unwrap(), Netns::new("n2b").unwrap());
    let (ip_a, _) = linked_pair(&na, &nb, 10);
    let mut args_a = vec!["--disable-peer-discovery"];
    args_a.extend_from_slice(extra);
    let a = Node::start(&na, dir.path(), "a", &args_a);
    let peer = format!("tcp://{ip_a}:9651");
    let mut args_b = vec!["--disable-peer-discovery", "--peers", &peer];
    args_b.extend_from_slice(extra);
    let b = Node::start(&nb, dir.path(), "b", &args_b);

    a.wait(ROUTE_WAIT, "route to b", |n| n.has_route(&b.subnet()));
    b.wait(ROUTE_WAIT, "route to a", |n| n.has_route(&a.subnet()));
    let out = a
        .ping(b.addr)
        .unwrap_or_else(|e| panic!("ping a->b: {e}\n{}", a.log_tail()));
    assert!(out.contains(" 0% packet loss"), "{out}");
    let out = b
        .ping(a.addr)
        .unwrap_or_else(|e| panic!("ping b->a: {e}\n{}", b.log_tail()));
    assert!(out.contains(" 0% packet loss"), "{out}");
    // The destination sees the hop limit decremented at both ends (64 - 2).
    assert!(out.contains("ttl=62"), "{out}");

    transfer(&na, &nb, b.addr, 5001, 200 * MB);
    transfer(&nb, &na, a.addr, 5002, 200 * MB);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn two_nodes_ping_and_transfer_with_offloads() {
    two_nodes(&[]);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn two_nodes_ping_and_transfer_without_offloads() {
    two_nodes(&["--no-offload"]);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn chain_relays_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb, nc) = (
        Netns::new("cha").unwrap(),
        Netns::new("chb").unwrap(),
        Netns::new("chc").unwrap(),
    );
    let (ab_a, _) = linked_pair(&na, &nb, 20);
    let (bc_b, _) = linked_pair(&nb, &nc, 21);
    let a = Node::start(&na, dir.path(), "a", &["--disable-peer-discovery"]);
    let peer_a = format!("tcp://{ab_a}:9651");
    let b = Node::start(
        &nb,
        dir.path(),
        "b",
        &["--disable-peer-discovery", "--peers", &peer_a],
    );
    let peer_b = format!("tcp://{bc_b}:9651");
    let c = Node::start(
        &nc,
        dir.path(),
        "c",
        &["--disable-peer-discovery", "--peers", &peer_b],
    );
    // A and C are not neighbours: the first packet makes A query C's /64.
    let out = a.ping(c.addr);
    if out.is_err() {
        // The first echo may be answered only after the route query completes; ping again.
        a.wait(ROUTE_WAIT, "route to c", |n| n.has_route(&c.subnet()));
    }
    let out = a
        .ping(c.addr)
        .unwrap_or_else(|e| panic!("ping a->c: {e}\n{}", a.log_tail()));
    assert!(out.contains(" 0% packet loss"), "{out}");
    // Three decrements: A, B and C.
    assert!(out.contains("ttl=61"), "{out}");
    // A's route to C goes through its only neighbour, B.
    let routes = a.json(&["routes", "selected", "--json"]);
    let to_c = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subnet"] == c.subnet().as_str())
        .expect("a has a route to c");
    assert!(to_c["nextHop"].as_str().unwrap().contains(&ab_a), "{to_c}");
    // B holds only its own key: what crosses it is sealed for C; B's TUN sees none of it, which
    // the transfer below would make obvious (B has no listener and would answer with RSTs).
    transfer(&na, &nc, c.addr, 5003, 64 * MB);
    let peers = b.json(&["peers", "list", "--json"]);
    let relayed: u64 = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rxBytes"].as_u64().unwrap())
        .sum();
    assert!(relayed > 64 * MB, "b relayed only {relayed} bytes");
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn demo_runs_and_cleans_up() {
    let out = std::process::Command::new(common::BIN)
        .args(["demo", "--no-wait"])
        .output()
        .expect("run hypha demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ping A -> C (via B): rtt min/avg/max/mdev = "),
        "{text}"
    );
    assert!(!text.contains("no answer"), "{text}");
    // Everything it made is gone.
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&netns.stdout);
    assert!(!listing.contains("hy-demo-"), "left behind: {listing}");
}
