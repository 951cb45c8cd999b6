//! The control plane under a burst of announced routes: a peer announces tens of thousands of
//! /64s at once (a large network's full table, or an attacker's), and the node must absorb them
//! while it keeps serving its real peers. Root only: nodes in namespaces of their own, the
//! announcing peer hand-made (`common::rogue`).
//!
//! Figures (how long the burst took, how soon the new node was reachable) are printed, not
//! asserted: the bench measures them (`hypha bench routes`). The tests assert what must hold
//! however fast the machine is.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::rogue::Rogue;
use common::Node;
use serde_json::Value;
use testbed::Lab;

const QUIET: &str = "--disable-peer-discovery";

/// `n` Updates for the /64s of `n` distinct random keys, each as one control frame.
fn announcements(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 72);
    for tlv in routing::sim::full_table_updates(n, seed) {
        wire::frame::encode_control(&mut out, &tlv).expect("encode update");
    }
    out
}

/// A's routing counters (`hypha stats --json`).
fn routing(node: &Node, name: &str) -> u64 {
    let v: Value = node.json(&["stats", "--json"]);
    v["routing"][name].as_u64().unwrap_or(0)
}

/// Peak resident set of a node, KiB.
fn peak_rss_kib(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap())).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

/// R (the announcing peer) – A (the node under test) – B – C, on veth pairs.
struct Chain {
    // Fields drop in order: nodes before their namespaces.
    a: Node,
    b: Node,
    lab: Lab,
    dir: tempfile::TempDir,
    /// A's peer port as R reaches it.
    a_from_r: SocketAddr,
}

impl Chain {
    fn new(tag: &str, net: u8) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::chain(tag, &[net, net + 1, net + 2]).unwrap();
        let a_from_r: SocketAddr = format!("{}:9651", lab.link(0).addrs[1]).parse().unwrap();
        let a = Node::start(lab.ns(1), dir.path(), "a", &[QUIET]);
        let to_a = format!("tcp://{}:9651", lab.link(1).addrs[0]);
        let b = Node::start(lab.ns(2), dir.path(), "b", &[QUIET, "--peers", &to_a]);
        let b_subnet = b.subnet();
        a.wait(Duration::from_secs(20), "B's route at A", |n| {
            n.has_route(&b_subnet)
        });
        Chain {
            a,
            b,
            lab,
            dir,
            a_from_r,
        }
    }

    /// Starts C behind B.
    fn start_c(&self) -> Node {
        let to_b = format!("tcp://{}:9651", self.lab.link(2).addrs[0]);
        Node::start(
            self.lab.ns(3),
            self.dir.path(),
            "c",
            &[QUIET, "--peers", &to_b],
        )
    }

    /// Starts C behind B and waits until A has C's route and reaches it.
    fn join_c(&self) -> Node {
        let c = self.start_c();
        let c_subnet = c.subnet();
        self.a.wait(Duration::from_secs(30), "C's route at A", |n| {
            n.has_route(&c_subnet)
        });
        self.a.wait(Duration::from_secs(30), "A reaching C", |n| {
            n.ping_once(c.addr)
        });
        c
    }
}

/// 50,000 routes from one peer: A takes them all, a node that joins behind A's real peer while
/// the burst is being absorbed becomes reachable, and A's memory stays bounded.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_burst_of_fifty_thousand_routes_is_absorbed_while_a_new_node_joins() {
    const ROUTES: usize = 50_000;
    let chain = Chain::new("cpb", 70);
    let burst = announcements(ROUTES, 1);
    let before = routing(&chain.a, "selectedRoutes");
    let mut r = Rogue::connect(chain.lab.ns(0), chain.a_from_r);
    let t0 = Instant::now();
    r.send(&burst).expect("send the burst");
    // C joins behind B while A works through the burst.
    let joined = Instant::now();
    let _c = chain.join_c();
    let reachable = joined.elapsed();
    let absorbing = routing(&chain.a, "selectedRoutes") < before + ROUTES as u64;
    chain
        .a
        .wait(Duration::from_secs(120), "all 50,000 routes at A", |n| {
            routing(n, "selectedRoutes") >= before + ROUTES as u64
        });
    let absorbed = t0.elapsed();
    let peak = peak_rss_kib(&chain.a);
    eprintln!(
        "50,000 routes absorbed in {absorbed:.2?}; C reachable {reachable:.2?} after joining \
         (burst still being absorbed then: {absorbing}); A's peak RSS {} MB",
        peak / 1024
    );
    // B, beside A, is still served: A's route to it is still there, and so is the link.
    assert!(chain.a.has_route(&chain.b.subnet()));
    assert!(
        peak <= 64 * 1024,
        "A's peak RSS {} MB over 64 MB after 50,000 routes",
        peak / 1024
    );
    drop(r);
}

/// 300,000 routes from one peer, more than the whole table holds: the peer gets its share and
/// no more, and A keeps learning the routes of its other peers (a node that joins afterwards is
/// reachable).
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn three_hundred_thousand_routes_from_one_peer_leave_room_for_the_others() {
    const ROUTES: usize = 300_000;
    let chain = Chain::new("cpf", 74);
    let burst = announcements(ROUTES, 2);
    let mut r = Rogue::connect(chain.lab.ns(0), chain.a_from_r);
    r.send(&burst).expect("send the burst");
    // A read the whole burst: everything past the peer's share was refused and counted.
    chain.a.wait(
        Duration::from_secs(120),
        "the burst refused past the share",
        |n| routing(n, "routesRefusedLinkShare") + routing(n, "selectedRoutes") > ROUTES as u64,
    );
    let held = routing(&chain.a, "selectedRoutes");
    let refused = routing(&chain.a, "routesRefusedLinkShare");
    eprintln!("A holds {held} routes, refused {refused} from the flooding peer");
    assert!(refused >= (ROUTES - 131_072) as u64, "refused {refused}");
    assert!(held < 140_000, "A holds {held} routes");
    // A new node behind B is still learned and reached.
    let _c = chain.join_c();
    drop(r);
}
