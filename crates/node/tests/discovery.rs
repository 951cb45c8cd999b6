//! Link-local discovery between two network namespaces joined by a veth pair: each side must hear
//! the other's beacon and report `tcp://[fe80::…%ifindex]:port` for the other's veth address.
//! The veth is created only after both tasks run, so the interface re-scan is what finds it.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use hypha_node::discovery::{run_with, DiscoveryConfig, DiscoveryStats, Timing};
use hypha_node::endpoint::Endpoint;
use testbed::{veth_pair, wait_until, Netns};
use wire::babel::RouterId;

/// The veth's link-local address, once it has left the tentative state.
fn link_local(ns: &Netns, dev: &str) -> Option<String> {
    let out = ns
        .ip(&[
            "-6",
            "-o",
            "addr",
            "show",
            "dev",
            dev,
            "scope",
            "link",
            "-tentative",
        ])
        .ok()?;
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)?;
    Some(word.split('/').next()?.to_owned())
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", "dev", dev]).unwrap();
    out.split(':').next().unwrap().trim().parse().unwrap()
}

struct Side {
    stats: Arc<DiscoveryStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<std::io::Result<std::io::Result<()>>>,
}

/// Runs discovery in `ns` on a thread of its own; every endpoint it reports goes to `found`.
fn start(ns: &Netns, tcp_port: u16, id: u8, found: std_mpsc::Sender<(u8, Endpoint)>) -> Side {
    let stats = Arc::new(DiscoveryStats::default());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let st = stats.clone();
    let thread = ns
        .spawn_thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(8);
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        let _ = found.send((id, e));
                    }
                });
                let cfg = DiscoveryConfig {
                    port: hypha_node::discovery::DEFAULT_PORT,
                    interfaces: Vec::new(),
                    tcp_port,
                    router_id: RouterId::new([id; 32], [id; 6]),
                };
                let timing = Timing {
                    beacon_interval: Duration::from_secs(1),
                    rescan_interval: Duration::from_millis(500),
                };
                run_with(cfg, timing, st, tx, async move {
                    let _ = stop_rx.await;
                })
                .await
            })
        })
        .unwrap();
    Side {
        stats,
        stop,
        thread,
    }
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn peers_on_a_veth_find_each_other() {
    let a = Netns::new("disc").unwrap();
    let b = Netns::new("disc").unwrap();
    let (found_tx, found_rx) = std_mpsc::channel();
    let sa = start(&a, 7001, 1, found_tx.clone());
    let sb = start(&b, 7002, 2, found_tx);

    // Both tasks have scanned and found nothing to join: only loopback exists.
    wait_until(Duration::from_secs(10), || {
        sa.stats.scans.load(Ordering::Relaxed) >= 1 && sb.stats.scans.load(Ordering::Relaxed) >= 1
    })
    .expect("discovery tasks did not start");
    assert_eq!(sa.stats.interfaces.load(Ordering::Relaxed), 0);
    assert_eq!(sb.stats.interfaces.load(Ordering::Relaxed), 0);

    let (ea, eb) = veth_pair(&a, &b).unwrap();
    let (mut lla, mut llb) = (None, None);
    wait_until(Duration::from_secs(20), || {
        lla = link_local(&a, &ea);
        llb = link_local(&b, &eb);
        lla.is_some() && llb.is_some()
    })
    .expect("veth link-local addresses stayed tentative");
    let want_a: Endpoint = format!("tcp://[{}%{}]:7002", llb.unwrap(), ifindex(&a, &ea))
        .parse()
        .unwrap();
    let want_b: Endpoint = format!("tcp://[{}%{}]:7001", lla.unwrap(), ifindex(&b, &eb))
        .parse()
        .unwrap();

    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got_a.is_empty() || got_b.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match found_rx.recv_timeout(left) {
            Ok((1, e)) => got_a.push(e),
            Ok((_, e)) => got_b.push(e),
            Err(_) => break,
        }
    }
    let (ra, rb) = (sa.stats.clone(), sb.stats.clone());
    for s in [sa, sb] {
        let _ = s.stop.send(());
        s.thread.join().unwrap().unwrap().unwrap();
    }
    // A later beacon may be reported again (once per beacon interval); never anything else.
    assert!(
        !got_a.is_empty() && got_a.iter().all(|e| *e == want_a),
        "side a: {got_a:?} {ra:?}"
    );
    assert!(
        !got_b.is_empty() && got_b.iter().all(|e| *e == want_b),
        "side b: {got_b:?} {rb:?}"
    );
    // Multicast loop is off: neither side saw its own beacon.
    assert_eq!(ra.own_beacons.load(Ordering::Relaxed), 0);
    assert_eq!(rb.own_beacons.load(Ordering::Relaxed), 0);
    assert_eq!(ra.interfaces.load(Ordering::Relaxed), 1);
}
