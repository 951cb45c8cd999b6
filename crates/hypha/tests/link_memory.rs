//! What a peer connection costs in memory after a burst of control frames. Root only.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Node;
use testbed::{link, Netns};
use wire::babel::{Hello, SeqNo, Tlv};

/// Connections that each send one burst.
const CONNECTIONS: usize = 40;
/// Hellos per burst: 16 bytes each on the wire, so 256 KiB.
const HELLOS: usize = 16 * 1024;

/// The review's reproduction: 40 connections each send 256 KiB of Hellos and stay open. The
/// node processes every Hello, and afterwards holds no more than a small, fixed amount per
/// connection (before the fix: ≈ 1.15 MB each, for as long as the connection stayed open).
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn hello_bursts_leave_no_memory_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nx) = (Netns::new("lma").unwrap(), Netns::new("lmx").unwrap());
    let [ax, _] = link(&na, &nx, 42).expect("veth link").addrs;
    // All the connections come from one address; the gate lets 8 wait unproven per source by
    // default, and this test is about links, not the gate.
    let a = Node::start(
        &na,
        dir.path(),
        "a",
        &[
            "--disable-peer-discovery",
            "--max-unproven-per-source",
            "64",
        ],
    );
    let target: SocketAddr = format!("{ax}:9651").parse().unwrap();

    let mut burst = Vec::with_capacity(HELLOS * 16);
    for seqno in 0..HELLOS {
        let hello = Tlv::Hello(Hello {
            flags: 0x8000,
            seqno: SeqNo(seqno as u16),
            interval: 2000,
        });
        wire::frame::encode_control(&mut burst, &hello).unwrap();
    }
    assert_eq!(burst.len(), HELLOS * 16);

    let hellos = |n: &Node| -> u64 {
        n.json(&["stats", "--json"])["routing"]["helloReceived"]
            .as_u64()
            .unwrap_or(0)
    };
    let rss_start = a.rss_kib().unwrap();
    // Idle links first, so that what they cost is apart from what the bursts add: each
    // connection sends one Hello, which makes it a link (see `node::gate`).
    let first = burst[..16].to_vec();
    let mut conns: Vec<TcpStream> = nx
        .run(move || {
            (0..CONNECTIONS)
                .map(|_| {
                    let mut c =
                        TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
                    c.write_all(&first).unwrap();
                    c
                })
                .collect()
        })
        .unwrap();
    a.wait(Duration::from_secs(20), "all connections up", |n| {
        n.json(&["peers", "list", "--json"])
            .as_array()
            .is_some_and(|p| p.len() >= CONNECTIONS)
    });
    let rss_idle = a.rss_kib().unwrap();
    for c in &mut conns {
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&burst).unwrap();
    }
    // Each connection sent one Hello before its burst: at least this many are counted.
    let want = (CONNECTIONS * HELLOS) as u64;
    a.wait(Duration::from_secs(60), "every Hello processed", |n| {
        hellos(n) >= want
    });
    let rss_burst = a.rss_kib().unwrap();
    let per_conn_idle = (rss_idle.saturating_sub(rss_start)) / CONNECTIONS as u64;
    let per_conn_burst = (rss_burst.saturating_sub(rss_idle)) / CONNECTIONS as u64;
    println!(
        "rss: start {rss_start} KiB, {CONNECTIONS} idle connections {rss_idle} KiB \
         ({per_conn_idle} KiB each), after the bursts {rss_burst} KiB (+{per_conn_burst} KiB each)"
    );
    // Before the fix each burst left ≈ 700 KiB behind (a 256 KiB read buffer filled, and a queue
    // of parsed TLVs as long as one read). Now it is ≈ 80–100 KiB: this attacker never reads, so
    // up to CONTROL_QUEUE (1024) IHU replies wait for it (≈ 50 KiB), plus allocator slack; a
    // peer that reads leaves ≈ 30 KiB.
    assert!(
        per_conn_burst < 200,
        "each burst left {per_conn_burst} KiB behind (rss {rss_idle} -> {rss_burst} KiB)"
    );
    drop(conns);
}
