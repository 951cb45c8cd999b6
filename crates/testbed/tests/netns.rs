//! Root tests of the namespace helpers themselves: creation, veth, running code inside, iperf3,
//! chains of namespaces routed end to end, daemons, and cleanup on drop.

use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use hypha_testbed::{iperf3, ping, veth_pair, wait_until, xfer, Daemon, Lab, Netns, ScratchDir};

fn exists(ns: &str) -> bool {
    Path::new(&format!("/run/netns/{ns}")).exists()
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn namespaces_are_unique_have_lo_up_and_vanish_on_drop() {
    let a = Netns::new("tb").unwrap();
    let b = Netns::new("tb").unwrap();
    assert_ne!(a.name(), b.name());
    assert!(a
        .name()
        .starts_with(&format!("hy-tb-{}-", std::process::id())));
    assert!(exists(a.name()) && exists(b.name()));
    let lo = a.ip(&["link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "{lo}");
    let (name_a, name_b) = (a.name().to_owned(), b.name().to_owned());
    drop(a);
    drop(b);
    assert!(!exists(&name_a) && !exists(&name_b));
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn veth_carries_ping_tcp_and_iperf3_between_namespaces() {
    let a = Netns::new("tbva").unwrap();
    let b = Netns::new("tbvb").unwrap();
    let (va, vb) = veth_pair(&a, &b).unwrap();
    a.ip(&["addr", "add", "fd00:3::1/64", "dev", &va, "nodad"])
        .unwrap();
    b.ip(&["addr", "add", "fd00:3::2/64", "dev", &vb, "nodad"])
        .unwrap();
    a.ip(&["addr", "add", "198.18.3.1/24", "dev", &va]).unwrap();
    b.ip(&["addr", "add", "198.18.3.2/24", "dev", &vb]).unwrap();
    let out = a
        .exec("ping", &["-6", "-c", "1", "-W", "5", "fd00:3::2"])
        .unwrap();
    assert!(out.contains("1 received"), "{out}");

    // Sockets made by threads inside the namespaces, used from this thread.
    let b6: Ipv6Addr = "fd00:3::2".parse().unwrap();
    let l = b.run(|| TcpListener::bind((b6, 7000))).unwrap().unwrap();
    let rx = std::thread::spawn(move || xfer::recv(l.accept().unwrap().0).unwrap());
    let s = a.run(|| TcpStream::connect((b6, 7000))).unwrap().unwrap();
    let sent = xfer::send(s, 5_000_000, 3).unwrap();
    assert_eq!(rx.join().unwrap(), sent);

    let _server = iperf3::server(&b, "198.18.3.2", 5299).unwrap();
    let report = iperf3::client(&a, "198.18.3.2", 5299, 1, &[]).unwrap();
    assert!(report.received_bps > 0.0, "{report:?}");
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_chain_routed_through_carries_ping_end_to_end_and_vanishes_on_drop() {
    let lab = Lab::chain("tbc", &[231, 232]).unwrap();
    assert_eq!(lab.len(), 3);
    assert_eq!(
        lab.link(1).addrs,
        [
            Ipv4Addr::new(198, 18, 232, 1),
            Ipv4Addr::new(198, 18, 232, 2)
        ]
    );
    assert_eq!(lab.ns(2).tag(), "tbc-c");
    let (a, c) = (lab.ns(0), lab.ns(2));
    let far = lab.link(1).addrs[1].to_string();
    // Each link works on its own; A reaches C's end only once the chain is routed.
    let out = lab
        .ns(1)
        .exec("ping", &["-c", "1", "-W", "5", &far])
        .unwrap();
    assert!(out.contains("1 received"), "{out}");
    assert!(a.exec("ping", &["-c", "1", "-W", "1", &far]).is_err());
    lab.route_through().unwrap();
    let out = a
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "5", &far])
        .unwrap();
    let summary = ping::parse(&out).unwrap();
    assert_eq!(summary.loss_pct, 0.0, "{out}");
    assert!(summary.avg_ms > 0.0, "{out}");
    let back = lab.link(0).addrs[0].to_string();
    assert!(c.exec("ping", &["-c", "1", "-W", "5", &back]).is_ok());
    let names: Vec<String> = (0..3).map(|i| lab.ns(i).name().to_owned()).collect();
    drop(lab);
    assert!(names.iter().all(|n| !exists(n)), "{names:?}");
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn a_daemon_logs_and_is_stopped_with_sigterm() {
    let ns = Netns::new("tbd").unwrap();
    let dir = ScratchDir::new(&format!("hy-tbd-test-{}", std::process::id())).unwrap();
    let log = dir.path().join("d.log");
    let mut cmd = ns.command("sh");
    cmd.args([
        "-c",
        "trap 'echo stopped; exit 0' TERM; echo started; while :; do sleep 0.05; done",
    ]);
    let mut d = Daemon::start("sleeper", cmd, &log).unwrap();
    let started = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started"))
    });
    assert!(started.is_ok(), "log: {:?}", std::fs::read_to_string(&log));
    assert!(d.check_running().is_ok());
    // `ip netns exec` execs in place: the pid is the shell's, inside the namespace.
    let pids = ns.name().to_owned();
    let inside = hypha_testbed::ip(&["netns", "pids", &pids]).unwrap();
    assert!(
        inside.split_whitespace().any(|p| p == d.pid().to_string()),
        "{inside}"
    );
    d.stop(Duration::from_secs(10));
    assert_eq!(d.log_tail(1), "stopped");
    let e = d.check_running().unwrap_err().to_string();
    assert!(
        e.starts_with("sleeper exited") && e.contains("stopped"),
        "{e}"
    );
}
