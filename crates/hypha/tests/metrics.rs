//! The metrics endpoint, the stats API and `hypha stats` against two live nodes moving a known
//! amount of traffic. Root only (network namespaces, veth, TUN); reported as ignored otherwise.

mod common;

use std::time::Duration;

use common::{http_port, transfer, Node};
use node::metrics::{sample, Stats};
use testbed::{link, wait_until, Netns};

const MB: u64 = 1024 * 1024;
const ROUTE_WAIT: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 9100;
/// Bytes a data frame adds to the IP packet it carries: frame header (4), data header (36),
/// inner header (4), AEAD tag (16) and nonce (12).
const FRAME_OVERHEAD: f64 = 72.0;
/// TCP payload per overlay packet: MTU 1400 less IPv6 (40), TCP (20) and timestamps (12).
const MSS: f64 = 1328.0;

fn scrape(ns: &Netns) -> String {
    let (status, body) = http_port(ns, METRICS_PORT, "GET", "/metrics", None);
    assert_eq!(status, 200, "GET /metrics: {body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// A metric summed over all its samples with the given name (every peer, every label).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn value(text: &str, name: &str) -> f64 {
    sample(text, name, "").unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn stats_api(ns: &Netns) -> Stats {
    let (status, body) = common::http(ns, "GET", "/api/v1/admin/stats", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats JSON: {e}: {body}"))
}

fn within(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= want * tolerance,
        "{what}: got {got}, expected {want} ± {:.0} %",
        tolerance * 100.0
    );
}

/// The counters that stand still on an idle pair of nodes (no hellos in them), as /metrics
/// shows them and as a [`Stats`] does.
fn quiet_metrics(text: &str) -> Vec<f64> {
    let mut v = vec![
        value(text, "hypha_tun_packets_in_total"),
        value(text, "hypha_frames_sent_total"),
        value(text, "hypha_frames_delivered_total"),
        total(text, "hypha_data_drops_total"),
        value(text, "hypha_tun_reads_total"),
        value(text, "hypha_tun_super_packets_total"),
        value(text, "hypha_tun_segments_total"),
        value(text, "hypha_tun_coalesced_writes_total"),
        value(text, "hypha_tun_read_segments_count"),
        value(text, "hypha_tun_read_segments_sum"),
    ];
    let data_frames = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("kind=\"data\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    v.push(data_frames("hypha_peer_tx_frames_total{"));
    v.push(data_frames("hypha_peer_rx_frames_total{"));
    v
}

fn quiet_stats(s: &Stats) -> Vec<f64> {
    let t = s.tun.as_ref().expect("tun stats");
    let d = &s.data;
    let drops = d.drop_not_ipv6
        + d.drop_no_route
        + d.drop_no_key
        + d.drop_hop_limit
        + d.drop_decrypt
        + d.drop_inner
        + d.drop_queue_full
        + d.drop_no_tun;
    [
        d.tun_packets_in,
        d.frames_sent,
        d.frames_delivered,
        drops,
        t.reads,
        t.super_packets,
        t.segments,
        t.coalesced_writes,
        t.read_segments.count,
        t.read_segments.sum,
        s.peers.iter().map(|p| p.tx_data_frames).sum(),
        s.peers.iter().map(|p| p.rx_data_frames).sum(),
    ]
    .into_iter()
    .map(|x| x as f64)
    .collect()
}

/// /metrics, the stats API and `hypha stats --json` report the same counters: checked in a
/// window where two scrapes around the other two readings agree (no packet moved meanwhile).
fn sources_agree(node: &Node, ns: &Netns) {
    let mut last = String::new();
    let agreed = wait_until(Duration::from_secs(20), || {
        let before = quiet_metrics(&scrape(ns));
        let api = quiet_stats(&stats_api(ns));
        let cli: Stats = serde_json::from_value(node.json(&["stats", "--json"])).unwrap();
        let cli = quiet_stats(&cli);
        let after = quiet_metrics(&scrape(ns));
        last = format!("metrics {before:?} / {after:?}\napi {api:?}\ncli {cli:?}");
        before == after && api == before && cli == before
    });
    assert!(agreed.is_ok(), "sources disagree on {}:\n{last}", node.ns);
}

fn run(extra: &[&str], offload: bool) {
    let dir = tempfile::tempdir().unwrap();
    let tag = if offload { "mo" } else { "mn" };
    let (na, nb) = (
        Netns::new(&format!("{tag}a")).unwrap(),
        Netns::new(&format!("{tag}b")).unwrap(),
    );
    let [ip_a, _] = link(&na, &nb, 60).expect("veth link").addrs;
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let mut args_a = vec![
        "--disable-peer-discovery",
        "--metrics-api-address",
        &metrics,
    ];
    args_a.extend_from_slice(extra);
    let a = Node::start(&na, dir.path(), "a", &args_a);
    let peer = format!("tcp://{ip_a}:9651");
    let mut args_b = vec![
        "--disable-peer-discovery",
        "--metrics-api-address",
        &metrics,
        "--peers",
        &peer,
    ];
    args_b.extend_from_slice(extra);
    let b = Node::start(&nb, dir.path(), "b", &args_b);
    a.wait(ROUTE_WAIT, "route to b", |n| n.has_route(&b.subnet()));
    b.wait(ROUTE_WAIT, "route to a", |n| n.has_route(&a.subnet()));

    let (a0, b0) = (scrape(&na), scrape(&nb));
    let len = 64 * MB;
    transfer(&na, &nb, b.addr, 5001, len);
    let (a1, b1) = (scrape(&na), scrape(&nb));
    let delta = |t0: &str, t1: &str, name: &str| total(t1, name) - total(t0, name);

    // Bytes: the payload in ≤ MSS pieces, each with TCP/IP headers and the frame overhead.
    let packets = len as f64 / MSS;
    let wire = packets * (1400.0 + FRAME_OVERHEAD);
    let a_tx = delta(&a0, &a1, "hypha_peer_tx_bytes_total");
    let b_rx = delta(&b0, &b1, "hypha_peer_rx_bytes_total");
    within("a's peer tx bytes", a_tx, wire, 0.03);
    within("b's peer rx bytes", b_rx, a_tx, 0.01);
    let a_frames = total(&a1, "hypha_frames_sent_total") - total(&a0, "hypha_frames_sent_total");
    within("a's data frames sent", a_frames, packets, 0.03);
    let b_delivered = delta(&b0, &b1, "hypha_frames_delivered_total");
    within("b's frames delivered", b_delivered, a_frames, 0.01);
    let b_out = delta(&b0, &b1, "hypha_tun_packets_out_total");
    within("b's packets written to the TUN", b_out, b_delivered, 0.01);
    // The write histogram sees every write syscall and every packet written.
    assert_eq!(
        delta(&b0, &b1, "hypha_tun_write_packets_count"),
        delta(&b0, &b1, "hypha_tun_writes_total"),
        "{b1}"
    );
    assert_eq!(
        delta(&b0, &b1, "hypha_tun_write_packets_sum"),
        delta(&b0, &b1, "hypha_tun_packets_written_total"),
        "{b1}"
    );
    // The reverse direction carries ACKs only: far fewer bytes.
    let b_tx = delta(&b0, &b1, "hypha_peer_tx_bytes_total");
    assert!(b_tx < a_tx / 5.0, "b sent {b_tx} bytes for a's {a_tx}");
    assert_eq!(delta(&b0, &b1, "hypha_decrypt_failures_total"), 0.0);

    // TUN batching: super-packets and coalesced writes only with offloads.
    let supers = delta(&a0, &a1, "hypha_tun_super_packets_total");
    let reads = delta(&a0, &a1, "hypha_tun_read_segments_count");
    let segments = delta(&a0, &a1, "hypha_tun_read_segments_sum");
    let coalesced = delta(&b0, &b1, "hypha_tun_coalesced_writes_total");
    within("segments read", segments, packets, 0.03);
    if offload {
        assert!(supers > 0.0, "no super-packets read with offloads:\n{a1}");
        assert!(
            segments / reads > 2.0,
            "{segments} segments in {reads} reads"
        );
        assert!(coalesced > 0.0, "no coalesced writes with offloads:\n{b1}");
    } else {
        assert_eq!(supers, 0.0, "super-packets without offloads:\n{a1}");
        assert_eq!(segments, reads, "one segment per read without offloads");
        assert_eq!(coalesced, 0.0, "coalesced writes without offloads:\n{b1}");
    }
    println!(
        "metrics figure ({}): a tx {a_tx} B for {len} B payload ({:.3}x), {a_frames} frames, \
         {:.1} segments/read, b coalesced writes {coalesced}",
        if offload { "offloads" } else { "no offloads" },
        a_tx / len as f64,
        segments / reads
    );

    // Peer state and link cost are there for the connected peer.
    assert_eq!(total(&a1, "hypha_peer_state"), 1.0, "{a1}");
    assert!(a1.contains("state=\"alive\"} 1"), "{a1}");
    assert!(total(&a1, "hypha_peer_link_cost") > 0.0, "{a1}");
    assert!(total(&b1, "hypha_routes") >= 1.0, "{b1}");

    sources_agree(&a, &na);
    sources_agree(&b, &nb);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn metrics_track_a_transfer_with_offloads() {
    // The arithmetic below is the legacy wire's (a frame per 1400-byte packet): no sessions, so
    // no super-frames (their counters are checked in tests/sessions.rs).
    run(&["--no-sessions"], true);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn metrics_track_a_transfer_without_offloads() {
    run(&["--no-offload", "--no-sessions"], false);
}
