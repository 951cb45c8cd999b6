//! How soon a node dials a peer again after a failed dial, and what chains of nodes started at
//! the same moment (each dialling one that is not listening yet) wait for their first packet.
//! Root only.

mod common;

use std::time::{Duration, Instant};

use common::Node;
use testbed::{link, wait_until, Lab, Netns};

fn peer_row(node: &Node) -> serde_json::Value {
    let rows = node.json(&["peers", "list", "--json"]);
    rows.as_array()
        .and_then(|r| r.first())
        .cloned()
        .expect("one peer")
}

/// B dials A before A runs: the dial fails, the failure and the next dial show in `peers list`,
/// and once A is up B is connected within a fraction of the old fixed 5 s redial period.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_failed_dial_is_retried_within_a_few_hundred_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("rda").unwrap(), Netns::new("rdb").unwrap());
    let [ip_a, _] = link(&na, &nb, 80).expect("veth link").addrs;
    let peer = format!("tcp://{ip_a}:9651");
    let b = Node::start(
        &nb,
        dir.path(),
        "b",
        &["--disable-peer-discovery", "--peers", &peer],
    );
    // Nothing listens at A yet: the dial is refused.
    b.wait(Duration::from_secs(10), "a failed dial of A", |n| {
        peer_row(n)["failures"].as_u64().unwrap_or(0) >= 1
    });
    let row = peer_row(&b);
    assert_ne!(row["connectionState"], "alive", "{row}");
    let next = row["nextDialInMs"].as_u64();
    // The first retries come after 150-250 ms, 300-500 ms, 600 ms-1 s ...; the row may be read
    // while a dial is under way (no next dial then).
    assert!(next.is_none_or(|ms| ms <= 2_000), "{row}");

    let started = Instant::now();
    let a = Node::start(&na, dir.path(), "a", &["--disable-peer-discovery"]);
    b.wait(Duration::from_secs(20), "B connected to A", |n| {
        peer_row(n)["connectionState"] == "alive"
    });
    let took = started.elapsed();
    let row = peer_row(&b);
    eprintln!("B connected {took:.2?} after A was started; {row}");
    assert_eq!(row["nextDialInMs"], serde_json::Value::Null, "{row}");
    // A fixed 5 s redial would take up to 5 s here; the backoff reached by now is at most
    // 1.6 s (x 1.25) unless starting A itself took seconds.
    assert!(
        took < Duration::from_millis(3_000),
        "B connected only {took:?} after A started\n{}",
        b.log_tail()
    );
    drop(a);
}

/// Chains of 3, 4 and 5 nodes started at the same moment, each dialling the next one (which is
/// not listening yet): the first end-to-end echo comes back well within the old 5 s redial.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn chains_started_together_reach_end_to_end_quickly() {
    for n in [3usize, 4, 5] {
        let dir = tempfile::tempdir().unwrap();
        let nets: Vec<u8> = (0..n as u8 - 1).map(|i| 82 + i).collect();
        let lab = Lab::chain(&format!("rc{n}"), &nets).expect("chain");
        let started = Instant::now();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let mut args = vec!["--disable-peer-discovery".to_owned()];
                if i + 1 < n {
                    args.push("--peers".into());
                    args.push(format!("tcp://{}:9651", lab.link(i).addrs[1]));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Node::spawn(lab.ns(i), dir.path(), &format!("n{i}"), &args)
            })
            .collect();
        let (first, last) = (&nodes[0], &nodes[n - 1]);
        let reached = wait_until(Duration::from_secs(20), || {
            testbed::exec_in(
                &first.ns,
                "ping",
                &["-6", "-c", "1", "-W", "0.2", &last.addr.to_string()],
            )
            .is_ok()
        });
        let took = started.elapsed();
        for node in &nodes {
            node.wait_api();
        }
        assert!(
            reached.is_ok(),
            "{n} nodes: no echo end to end in 20 s\n{}",
            first.log_tail()
        );
        eprintln!("{n} nodes started together: first echo end to end after {took:.2?}");
        // With a fixed 5 s redial this took 5 s or more.
        assert!(
            took < Duration::from_secs(3),
            "{n} nodes: first echo end to end only after {took:?}\n{}",
            first.log_tail()
        );
        drop(nodes);
        drop(lab);
    }
}
