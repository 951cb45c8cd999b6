//! End-to-end sessions between hypha nodes (`docs/sessions.md`), on live nodes in namespaces:
//! traffic moves to a session, a restarted node gets a new one quickly, and `--no-sessions`
//! keeps mycelium's wire. Root only.

mod common;

use std::time::{Duration, Instant};

use common::{data, Node};
use testbed::{link, Netns};

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn traffic_moves_to_a_session_and_a_restarted_node_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("sea").unwrap(), Netns::new("seb").unwrap());
    let [ab, _] = link(&na, &nb, 110).expect("veth link").addrs;
    let flags = ["--disable-peer-discovery"];
    let a = Node::start(&na, dir.path(), "a", &flags);
    let mut b = Node::start_dialling(&nb, dir.path(), "b", ab, &flags);
    a.wait(Duration::from_secs(30), "B answering", |n| {
        n.ping_once(b.addr)
    });
    a.wait(
        Duration::from_secs(10),
        "pings sealed under a session",
        |n| {
            n.ping_once(b.addr)
                && data(n, "sessionFramesOut") > 0
                && data(&b, "sessionFramesIn") > 0
        },
    );
    assert!(
        data(&b, "sessionFramesOut") > 0,
        "B answers under the session too"
    );
    b.stop();
    let key = dir.path().join("b.key");
    let peer = format!("tcp://{ab}:9651");
    let args = [&flags[..], &["--peers", &peer]].concat();
    let b = Node::start_with_key(&nb, dir.path(), "b2", key, b.addr, &args);
    let t0 = Instant::now();
    a.wait(
        Duration::from_secs(30),
        "B answering after its restart",
        |n| n.ping_once(b.addr),
    );
    eprintln!("traffic again {:?} after B's restart", t0.elapsed());
    b.wait(
        Duration::from_secs(10),
        "B sealing under a new session",
        |n| {
            a.ping_once(n.addr) && data(n, "sessionFramesIn") > 0 && data(n, "sessionFramesOut") > 0
        },
    );
    eprintln!("new session {:?} after B's restart", t0.elapsed());
    let rows = b.json(&["sessions", "--json"]);
    let peers = rows["peers"].as_array().expect("session rows");
    let row = peers
        .iter()
        .find(|r| r["address"] == a.addr.to_string())
        .expect("a row for A");
    assert_eq!(row["state"], "established", "{rows}");
    let text = b.cli(&["sessions"]).unwrap();
    assert!(text.contains("established"), "{text}");
}

/// `--no-sessions` on one side: the other keeps mycelium's wire with it after its handshake goes
/// unanswered, and traffic flows all along.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_node_without_sessions_is_spoken_to_in_the_legacy_format() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("sla").unwrap(), Netns::new("slb").unwrap());
    let [ab, _] = link(&na, &nb, 111).expect("veth link").addrs;
    let a = Node::start(&na, dir.path(), "a", &["--disable-peer-discovery"]);
    let b = Node::start_dialling(
        &nb,
        dir.path(),
        "b",
        ab,
        &["--disable-peer-discovery", "--no-sessions"],
    );
    a.wait(Duration::from_secs(30), "B answering", |n| {
        n.ping_once(b.addr)
    });
    // The handshake is retried with backoff (1 + 2 + 4 + 8 s), then B counts as legacy.
    a.wait(Duration::from_secs(40), "B taken for a legacy node", |n| {
        let s = n.json(&["sessions", "--json"]);
        n.ping_once(b.addr) && s["legacy"].as_u64() == Some(1)
    });
    assert_eq!(data(&a, "sessionFramesOut"), 0);
    assert_eq!(data(&b, "sessionFramesIn"), 0);
    assert!(b.json(&["stats", "--json"])["sessions"].is_null());
    let text = b.cli(&["sessions"]).unwrap();
    assert!(text.contains("off"), "{text}");
}

/// Super-frames: once the path carried a probe, TCP super-packets go whole and a 200 MB transfer
/// each way arrives byte-identical; UDP with 1,200-byte datagrams too.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn super_frames_carry_transfers_byte_identical_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("sfa").unwrap(), Netns::new("sfb").unwrap());
    let [ab, _] = link(&na, &nb, 112).expect("veth link").addrs;
    let flags = ["--disable-peer-discovery"];
    let a = Node::start(&na, dir.path(), "a", &flags);
    let b = Node::start_dialling(&nb, dir.path(), "b", ab, &flags);
    a.wait(Duration::from_secs(30), "B answering", |n| {
        n.ping_once(b.addr)
    });
    for (n, other) in [(&a, &b), (&b, &a)] {
        n.wait(
            Duration::from_secs(10),
            "the path carrying super-frames",
            |n| {
                n.ping_once(other.addr) && {
                    let s = n.json(&["sessions", "--json"]);
                    s["peers"][0]["superFrames"] == "on"
                }
            },
        );
    }
    common::transfer(&na, &nb, b.addr, 5201, 200 << 20);
    common::transfer(&nb, &na, a.addr, 5202, 200 << 20);
    for n in [&a, &b] {
        assert!(
            data(n, "superFramesOut") > 1000,
            "{}",
            n.cli(&["stats"]).unwrap()
        );
        assert!(
            data(n, "superFramesIn") > 1000,
            "{}",
            n.cli(&["stats"]).unwrap()
        );
        assert_eq!(data(n, "sessionReplays"), 0);
    }
    let s = a.json(&["sessions", "--json"]);
    assert_eq!(s["wholeFallbacks"], 0, "{s}");
}

/// Rekeys under load: sessions renegotiated every 0.3 s while transfers cross; the data arrives
/// byte-identical, nothing is refused as a replay, and at least three rekeys happened during them.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn rekeys_during_a_transfer_keep_the_data_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("rka").unwrap(), Netns::new("rkb").unwrap());
    let [ab, _] = link(&na, &nb, 113).expect("veth link").addrs;
    let flags = ["--disable-peer-discovery", "--session-rekey-secs", "0.3"];
    let a = Node::start(&na, dir.path(), "a", &flags);
    let b = Node::start_dialling(&nb, dir.path(), "b", ab, &flags);
    a.wait(
        Duration::from_secs(30),
        "B answering under a session",
        |n| n.ping_once(b.addr) && data(n, "sessionFramesOut") > 0,
    );
    let rekeys = |n: &Node| {
        n.json(&["sessions", "--json"])["rekeys"]
            .as_u64()
            .unwrap_or(0)
    };
    // Transfers of 256 MB, each byte-identical, until three rekeys fell inside them (however
    // fast the machine moves them).
    let mut during = 0;
    for round in 0..40u16 {
        let before = rekeys(&a) + rekeys(&b);
        common::transfer(&na, &nb, b.addr, 5203 + round, 256 << 20);
        during += rekeys(&a) + rekeys(&b) - before;
        if during >= 3 {
            break;
        }
    }
    eprintln!("{during} rekeys during the transfers");
    assert!(during >= 3, "only {during} rekeys during 40 transfers");
    for n in [&a, &b] {
        assert_eq!(data(n, "sessionReplays"), 0);
        assert_eq!(data(n, "dropDecrypt"), 0, "{}", n.cli(&["stats"]).unwrap());
    }
}
