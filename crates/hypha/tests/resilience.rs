//! Nodes that lose a relay, and nodes that are sent garbage. Root only.

mod common;

use std::io::Write;
use std::net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{transfer, Node};
use testbed::{link, Netns};
use wire::babel::{Prefix, RouteRequest, Subnet, Tlv};

const ROUTE_WAIT: Duration = Duration::from_secs(30);

/// How the active relay goes away.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Death {
    /// The process is killed: the kernel closes its connections, peers see link-down at once.
    Killed,
    /// The process is frozen (SIGSTOP): connections stay open and silent until the dead timer.
    Silent,
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn diamond_survives_the_death_of_the_active_relay() {
    diamond(Death::Killed);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn diamond_survives_a_silent_relay() {
    diamond(Death::Silent);
}

/// A–B–D and A–C–D. The relay that carries A→D traffic goes away; traffic moves to the other
/// branch. Prints the measured outage.
fn diamond(death: Death) {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<Netns> = ["dma", "dmb", "dmc", "dmd"]
        .iter()
        .map(|t| Netns::new(t).unwrap())
        .collect();
    let [ab, _] = link(&ns[0], &ns[1], 30).expect("veth link").addrs;
    let [ac, _] = link(&ns[0], &ns[2], 31).expect("veth link").addrs;
    let [bd, _] = link(&ns[1], &ns[3], 32).expect("veth link").addrs;
    let [cd, _] = link(&ns[2], &ns[3], 33).expect("veth link").addrs;
    let quiet = "--disable-peer-discovery";
    let a = Node::start(&ns[0], dir.path(), "a", &[quiet]);
    let pa_b = format!("tcp://{ab}:9651");
    let pa_c = format!("tcp://{ac}:9651");
    let mut b = Node::start(&ns[1], dir.path(), "b", &[quiet, "--peers", &pa_b]);
    let mut c = Node::start(&ns[2], dir.path(), "c", &[quiet, "--peers", &pa_c]);
    let pd_b = format!("tcp://{bd}:9651");
    let pd_c = format!("tcp://{cd}:9651");
    let d = Node::start(&ns[3], dir.path(), "d", &[quiet, "--peers", &pd_b, &pd_c]);

    a.wait(ROUTE_WAIT, "a reaches d", |n| n.ping_once(d.addr));
    transfer(&ns[0], &ns[3], d.addr, 5010, 32 << 20);

    // Which relay carries A's route to D?
    let routes = a.json(&["routes", "selected", "--json"]);
    let next_hop = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subnet"] == d.subnet().as_str())
        .map(|r| r["nextHop"].as_str().unwrap().to_owned())
        .expect("a has a route to d");
    // The A–B link is 198.18.30.0/24, the A–C link 198.18.31.0/24.
    let via_b = next_hop.contains("198.18.30.");
    assert!(via_b || next_hop.contains("198.18.31."), "{next_hop}");
    let (victim, survivor) = if via_b { (&mut b, &c) } else { (&mut c, &b) };
    let died = Instant::now();
    match death {
        Death::Killed => victim.kill(),
        Death::Silent => {
            signal(victim, "-STOP");
        }
    }
    // Dead timer 43 s plus the 10 s check period, plus slack.
    a.wait(Duration::from_secs(75), "a reaches d again", |n| {
        n.ping_once(d.addr)
    });
    let outage = died.elapsed();
    println!(
        "diamond: relay {} {death:?}; A->D answered again after {:.2} s (via {})",
        if via_b { "B" } else { "C" },
        outage.as_secs_f64(),
        survivor.ns
    );
    // A new connection succeeds on the surviving branch.
    transfer(&ns[0], &ns[3], d.addr, 5011, 32 << 20);
}

/// A peer that stops reading (SIGSTOP) while A floods it must not hold up A's traffic to its other
/// peer: A waits a bounded time for the stalled link, then drops (and counts) what it cannot take,
/// long before the stalled connection itself is given up (30 s write stall, 43 s dead timer).
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_stalled_peer_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<Netns> = ["sta", "stb", "stc"]
        .iter()
        .map(|t| Netns::new(t).unwrap())
        .collect();
    let [ab, _] = link(&ns[0], &ns[1], 36).expect("veth link").addrs;
    let [ac, _] = link(&ns[0], &ns[2], 37).expect("veth link").addrs;
    let quiet = "--disable-peer-discovery";
    let a = Node::start(&ns[0], dir.path(), "a", &[quiet]);
    let b = Node::start(
        &ns[1],
        dir.path(),
        "b",
        &[quiet, "--peers", &format!("tcp://{ab}:9651")],
    );
    let c = Node::start(
        &ns[2],
        dir.path(),
        "c",
        &[quiet, "--peers", &format!("tcp://{ac}:9651")],
    );
    a.wait(ROUTE_WAIT, "a reaches b", |n| n.ping_once(b.addr));
    a.wait(ROUTE_WAIT, "a reaches c", |n| n.ping_once(c.addr));

    signal(&c, "-STOP");

    // Flood C from A until told to stop: C's socket fills, then A's queue for C. Paced (16
    // datagrams a millisecond, ~150 Mbit/s) so that it fills what C does not read within a
    // second but does not keep A's own TUN queue full, where the kernel would drop A's pings to
    // B before A ever sees them (that would test the machine's load, not the stalled link).
    let stop = Arc::new(AtomicBool::new(false));
    let flood = ns[0]
        .spawn_thread({
            let stop = stop.clone();
            let to = SocketAddr::from((c.addr, 9));
            move || -> std::io::Result<u64> {
                let sock = UdpSocket::bind("[::]:0")?;
                let payload = [0x5au8; 1200];
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..16 {
                        if sock.send_to(&payload, to).is_ok() {
                            sent += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(sent)
            }
        })
        .unwrap();
    let queue_full = |n: &Node| {
        n.json(&["stats", "--json"])["data"]["dropQueueFull"]
            .as_u64()
            .unwrap_or(0)
    };
    a.wait(ROUTE_WAIT, "a drops what the stalled c cannot take", |n| {
        queue_full(n) > 0
    });

    // Meanwhile A's traffic to B flows: a byte-identical transfer and pings, flood still going.
    transfer(&ns[0], &ns[1], b.addr, 5020, 16 << 20);
    // One echo can be lost to the flood in A's TUN queue (the kernel drops when it is full), so
    // the first answer is waited for — well within the 30 s a blocked sender would hold it up.
    a.wait(Duration::from_secs(10), "b answers during the flood", |n| {
        n.ping_once(b.addr)
    });
    // ... and it did not wait for the stalled link to be given up: C is still a live peer of A.
    let peers = a.json(&["peers", "list", "--json"]);
    let c_alive = peers.as_array().unwrap().iter().any(|p| {
        p["endpoint"]["addr"]["socket"]
            .as_str()
            .is_some_and(|s| s.contains(&ac.to_string()) || s.contains("198.18.37."))
            && p["connectionState"] == "alive"
    });
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().unwrap().unwrap().unwrap();
    assert!(sent > 0);
    assert!(
        c_alive,
        "the transfer waited until the stalled peer was dropped: {peers}"
    );
    signal(&c, "-CONT");
}

/// Sends a signal (`kill`'s spelling, e.g. "-STOP") to a node's process.
fn signal(node: &Node, sig: &str) {
    let pid = node.pid().expect("the node runs").to_string();
    let st = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}: {st}");
}

fn attack(ns: &Netns, target: SocketAddr, bytes: Vec<u8>) {
    ns.run(move || {
        if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    })
    .unwrap();
}

/// Garbage on a node's peer port: random bytes, truncated frames, huge lengths, unknown TLVs and
/// a flood of route requests. The node stays up, its real peer keeps working, memory stays
/// bounded.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn garbage_from_a_peer_harms_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb, nx) = (
        Netns::new("bga").unwrap(),
        Netns::new("bgb").unwrap(),
        Netns::new("bgx").unwrap(),
    );
    let [ab, _] = link(&na, &nb, 40).expect("veth link").addrs;
    let [ax, _] = link(&na, &nx, 41).expect("veth link").addrs;
    let quiet = "--disable-peer-discovery";
    let mut a = Node::start(&na, dir.path(), "a", &[quiet]);
    let peer = format!("tcp://{ab}:9651");
    let b = Node::start(&nb, dir.path(), "b", &[quiet, "--peers", &peer]);
    b.wait(ROUTE_WAIT, "b reaches a", |n| n.ping_once(a.addr));
    let target: SocketAddr = format!("{ax}:9651").parse().unwrap();
    let rss_before = a.rss_kib().unwrap_or(0);

    // Random bytes (a seeded xorshift, so a failure can be replayed).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for _ in 0..20 {
        attack(&nx, target, random(4096));
    }
    // Valid framing, invalid content: a truncated data frame, an oversized data length that never
    // completes, a babel packet with unknown TLVs and a short Hello, bad magic.
    let mut junk = Vec::new();
    junk.extend_from_slice(&[1, 0, 0, 0, 0, 0xff, 0xff, 64]);
    junk.extend_from_slice(&[0u8; 100]);
    attack(&nx, target, junk);
    let mut junk = Vec::new();
    junk.extend_from_slice(&[1, 1, 0, 0, 42, 3, 0, 9, 77, 3, 1, 2, 3, 4, 2, 0, 0]);
    junk.extend_from_slice(&[1, 1, 0, 0, 42, 3, 0, 4, 4, 2, 0x80, 0]);
    junk.extend_from_slice(&[1, 1, 0, 0, 99, 3, 0, 2, 4, 0]);
    junk.extend_from_slice(&random(2000));
    attack(&nx, target, junk);

    // A flood of route requests for distinct /64s inside 400::/7.
    let mut flood = Vec::new();
    for i in 0..100_000u32 {
        let addr = Ipv6Addr::new(0x4ff, (i >> 16) as u16, i as u16, 0xdead, 0, 0, 0, 0);
        let tlv = Tlv::RouteRequest(RouteRequest {
            generation: 0,
            prefix: Prefix::V6(Subnet::new(addr, 64).unwrap()),
        });
        wire::frame::encode_control(&mut flood, &tlv).unwrap();
    }
    attack(&nx, target, flood);

    assert!(a.alive(), "node died:\n{}", a.log_tail());
    // Its real peer still works, both ways.
    b.wait(ROUTE_WAIT, "b still reaches a", |n| n.ping_once(a.addr));
    let out = a.ping(b.addr).expect("a still reaches b");
    assert!(out.contains(" 0% packet loss"), "{out}");
    transfer(&na, &nb, b.addr, 5020, 16 << 20);
    // Memory stays bounded: the flood may cost some state, not hundreds of MB.
    let rss_after = a.rss_kib().unwrap_or(0);
    println!("garbage: rss before {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 128 * 1024,
        "rss grew from {rss_before} to {rss_after} KiB"
    );
    // The API still answers.
    assert!(a.cli(&["peers", "list", "--json"]).is_ok());
}

/// Two nodes on one bridge, no `--peers`: they find each other by link-local discovery.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn nodes_on_one_bridge_discover_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, na, nb) = (
        Netns::new("dsh").unwrap(),
        Netns::new("dsa").unwrap(),
        Netns::new("dsb").unwrap(),
    );
    for n in [&na, &nb] {
        // No DAD wait: link-local addresses usable at once.
        n.exec("sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"])
            .unwrap();
        n.exec("sysctl", &["-qw", "net.ipv6.conf.all.accept_dad=0"])
            .unwrap();
    }
    hub.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    hub.ip(&["link", "set", "br0", "up"]).unwrap();
    let (ha, _) = testbed::veth_pair(&hub, &na).unwrap();
    let (hb, _) = testbed::veth_pair(&hub, &nb).unwrap();
    hub.ip(&["link", "set", &ha, "master", "br0"]).unwrap();
    hub.ip(&["link", "set", &hb, "master", "br0"]).unwrap();

    let a = Node::start(&na, dir.path(), "a", &[]);
    let b = Node::start(&nb, dir.path(), "b", &[]);
    a.wait(
        Duration::from_secs(30),
        "a discovers and routes to b",
        |n| n.has_route(&b.subnet()),
    );
    b.wait(Duration::from_secs(30), "b routes to a", |n| {
        n.has_route(&a.subnet())
    });
    let peers = a.json(&["peers", "list", "--json"]);
    let kinds: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"linkLocalDiscovery") || kinds.contains(&"inbound"),
        "{peers}"
    );
    let out = a.ping(b.addr).expect("ping over discovered link");
    assert!(out.contains(" 0% packet loss"), "{out}");
}
