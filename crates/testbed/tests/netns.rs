//! Root tests of the namespace helpers themselves: creation, veth, running code inside, iperf3,
//! and cleanup on drop.

use std::net::{Ipv6Addr, TcpListener, TcpStream};
use std::path::Path;

use hypha_testbed::{iperf3, veth_pair, xfer, Netns};

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
