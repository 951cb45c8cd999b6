//! Whole nodes in namespaces: two peers, a relay chain, a diamond with a failing branch.
//! Root only (network namespaces, veth, TUN); reported as ignored otherwise.

mod common;

use std::time::Duration;

use common::{transfer, Node};
use testbed::{link, Netns};

const MB: u64 = 1024 * 1024;
const ROUTE_WAIT: Duration = Duration::from_secs(30);

fn two_nodes(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("n2a").unwrap(), Netns::new("n2b").unwrap());
    let [ip_a, _] = link(&na, &nb, 10).expect("veth link").addrs;
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
    let [ab_a, _] = link(&na, &nb, 20).expect("veth link").addrs;
    let [bc_b, _] = link(&nb, &nc, 21).expect("veth link").addrs;
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
    // A and C are not neighbours and know nothing of each other: the first echo waits at A for
    // C's route, and at C for A's (C needs A's key). None is lost.
    let out = a
        .ping(c.addr)
        .unwrap_or_else(|e| panic!("ping a->c: {e}\n{}", a.log_tail()));
    assert!(
        out.contains(" 0% packet loss"),
        "{out}\n--- a ---\n{}\n--- b ---\n{}\n--- c ---\n{}\n{}",
        a.cli(&["stats"]).unwrap_or_default(),
        b.cli(&["stats"]).unwrap_or_default(),
        c.cli(&["stats"]).unwrap_or_default(),
        c.log_tail()
    );
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
    assert!(
        to_c["nextHop"]
            .as_str()
            .unwrap()
            .contains(&ab_a.to_string()),
        "{to_c}"
    );
    // Hop limit 2 expires at B, which tells A out of band (sealed for A, from B's /64).
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.ns, "ping", "-6", "-c", "1", "-W", "3", "-t", "2",
        ])
        .arg(c.addr.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Time exceeded"), "{text}");
    assert!(
        text.contains(&format!("From {}", b.subnet().trim_end_matches("/64"))),
        "{text}"
    );
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

/// Every admin endpoint and CLI subcommand against live nodes, with the JSON shapes of
/// docs/protocol.md §8.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn api_and_cli_against_live_nodes() {
    use common::http;
    use serde_json::Value;

    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("apa").unwrap(), Netns::new("apb").unwrap());
    let [_, ip_b] = link(&na, &nb, 50).expect("veth link").addrs;
    let a = Node::start(&na, dir.path(), "a", &["--disable-peer-discovery"]);
    let b = Node::start(&nb, dir.path(), "b", &["--disable-peer-discovery"]);

    // GET /api/v1/admin
    let (st, body) = http(&na, "GET", "/api/v1/admin", None);
    assert_eq!(st, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["nodeIp"], a.addr.to_string().as_str());
    assert_eq!(info["nodeSubnet"], a.subnet().as_str());
    let pk = info["nodePubkey"].as_str().unwrap();
    assert_eq!(pk.len(), 64);
    assert!(info["nodeStartTime"].as_u64().unwrap() > 1_600_000_000);
    let inspect = a.json(&["-k", a.key.to_str().unwrap(), "inspect", "--json"]);
    assert_eq!(inspect["publicKey"], pk);

    // Peers: add through the API (204), again (409), garbage (400), then list.
    let ep = format!("tcp://{ip_b}:9651");
    let (st, body) = http(
        &na,
        "POST",
        "/api/v1/admin/peers",
        Some(&format!("{{\"endpoint\":\"{ep}\"}}")),
    );
    assert_eq!(st, 204, "{body}");
    let (st, body) = http(
        &na,
        "POST",
        "/api/v1/admin/peers",
        Some(&format!("{{\"endpoint\":\"{ep}\"}}")),
    );
    assert_eq!(st, 409, "{body}");
    let (st, body) = http(
        &na,
        "POST",
        "/api/v1/admin/peers",
        Some("{\"endpoint\":\"nonsense\"}"),
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("error"), "{body}");
    a.wait(ROUTE_WAIT, "peer b alive", |n| {
        n.json(&["peers", "list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["connectionState"] == "alive")
    });
    let peers = a.json(&["peers", "list", "--json"]);
    let p = &peers.as_array().unwrap()[0];
    assert_eq!(p["endpoint"]["proto"], "tcp");
    assert_eq!(
        p["endpoint"]["addr"]["socket"],
        format!("{ip_b}:9651").as_str()
    );
    assert_eq!(p["type"], "static");
    assert!(p["txBytes"].as_u64().is_some() && p["rxBytes"].as_u64().is_some());
    assert!(p["discovered"].as_u64().is_some());
    let table = a.cli(&["peers", "list"]).unwrap();
    assert!(table.contains(&ep) && table.contains("alive"), "{table}");

    // Routes: selected has b's /64 with the fields of docs/protocol.md §8; fallback and queried
    // are arrays.
    a.wait(ROUTE_WAIT, "route to b", |n| n.has_route(&b.subnet()));
    let sel = a.json(&["routes", "selected", "--json"]);
    let r = sel
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subnet"] == b.subnet().as_str())
        .unwrap();
    assert!(r["nextHop"].as_str().unwrap().starts_with("TCP "), "{r}");
    assert!(
        r["metric"].as_u64().is_some() || r["metric"] == "infinite",
        "{r}"
    );
    assert!(r["seqno"].as_u64().is_some(), "{r}");
    assert!(a.json(&["routes", "fallback", "--json"]).is_array());
    // Query an address nobody owns: it shows up as queried with a string expiration.
    let _ = a.ping_once("4ff:1:2:3::1".parse().unwrap());
    let q = a.json(&["routes", "queried", "--json"]);
    let q = q.as_array().unwrap();
    assert!(
        q.iter()
            .any(|e| e["subnet"] == "4ff:1:2:3::/64" && e["expiration"].is_string()),
        "{q:?}"
    );
    assert!(a
        .cli(&["routes", "queried"])
        .unwrap()
        .contains("4ff:1:2:3::/64"));
    assert!(a
        .cli(&["routes", "selected"])
        .unwrap()
        .contains(&b.subnet()));
    assert!(a.cli(&["routes", "fallback"]).is_ok());

    // GET /api/v1/pubkey/{ip}: b's key is known through its route; an unknown one is 404.
    let (st, body) = http(&na, "GET", &format!("/api/v1/pubkey/{}", b.addr), None);
    assert_eq!(st, 200, "{body}");
    let bk = b.json(&["-k", b.key.to_str().unwrap(), "inspect", "--json"]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["publicKey"], bk["publicKey"]);
    let (st, _) = http(&na, "GET", "/api/v1/pubkey/4ff:9:9:9::1", None);
    assert_eq!(st, 404);

    // Peers through the CLI: remove (204 path), remove again (error), add back.
    a.cli(&["peers", "remove", &ep]).unwrap();
    assert!(a.cli(&["peers", "remove", &ep]).is_err());
    let enc = ep.replace(':', "%3A").replace('/', "%2F");
    let (st, _) = http(&na, "DELETE", &format!("/api/v1/admin/peers/{enc}"), None);
    assert_eq!(st, 404);
    a.cli(&["peers", "add", &ep]).unwrap();
    let (st, _) = http(&na, "DELETE", &format!("/api/v1/admin/peers/{enc}"), None);
    assert_eq!(st, 204);
}
