//! hypha against the reference implementation of the protocol it speaks: a mycelium binary named by
//! `MYCELIUM_BIN` (read at run time; its presence at build time enables these tests). Every node
//! runs in a namespace the test creates, on 198.18.x.y underlay links.
//!
//! Scenarios: a direct pair (either side dialling), the two mixed relay chains, and a
//! mycelium-only pair that checks the harness itself and gives the baseline figures. Each checks
//! that keys and addresses agree between the two implementations, that routes are exchanged, that
//! ping6 works both ways with the expected hop-limit decrements, and that TCP transfers arrive
//! byte-identical. Throughput and RTT are printed (`--nocapture`), never asserted.

mod common;

use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{make_key, transfer, Node, BIN};
use serde_json::Value;
use testbed::{exec_in, link, wait_until, ChildGuard, Netns};

const MB: u64 = 1024 * 1024;
const ROUTE_WAIT: Duration = Duration::from_secs(60);
const API: &str = "127.0.0.1:8989";

fn mycelium_bin() -> String {
    std::env::var("MYCELIUM_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("MYCELIUM_BIN must name a mycelium binary at run time too")
}

/// `inspect --json` of `key` by either implementation's CLI: the overlay address it derives.
fn inspect(bin: &str, key: &Path, dir: &Path) -> Ipv6Addr {
    let out = std::process::Command::new(bin)
        .env("XDG_CONFIG_HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .args(["-k", key.to_str().unwrap(), "inspect", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("run {bin} inspect: {e}"));
    assert!(out.status.success(), "{bin} inspect: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v["address"].as_str().unwrap().parse().unwrap()
}

/// One mycelium process in a namespace, with its TUN and HTTP API (inside the namespace).
struct Mycelium {
    ns: String,
    log: PathBuf,
    addr: Ipv6Addr,
    _child: ChildGuard,
}

impl Mycelium {
    fn start(ns: &Netns, dir: &Path, name: &str, peer: Option<&str>) -> Mycelium {
        let bin = mycelium_bin();
        // Its own key generator, read back by both CLIs: the key file format and the address
        // derivation must agree.
        let key = dir.join(format!("{name}.key"));
        let out = std::process::Command::new(&bin)
            .env("XDG_CONFIG_HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .args(["-k", key.to_str().unwrap(), "generate-keys"])
            .output()
            .expect("run mycelium generate-keys");
        assert!(out.status.success(), "mycelium generate-keys: {out:?}");
        let addr = inspect(&bin, &key, dir);
        assert_eq!(
            inspect(BIN, &key, dir),
            addr,
            "hypha reads mycelium's key differently"
        );

        let log = dir.join(format!("{name}.log"));
        // No config file from the environment may change the flags below.
        let mut cmd = format!(
            "XDG_CONFIG_HOME={d} XDG_DATA_HOME={d} exec {bin} -k {k} --debug --log-format plain \
             --tcp-listen-port 9651 --disable-quic --disable-peer-discovery --tun-name myc0 \
             --api-addr {API} --jsonrpc-addr 127.0.0.1:8990",
            d = dir.display(),
            k = key.display(),
        );
        if let Some(p) = peer {
            cmd.push_str(&format!(" --peers {p}"));
        }
        cmd.push_str(&format!(" >>{l} 2>&1", l = log.display()));
        let child = ns.spawn("sh", &["-c", &cmd]).expect("spawn mycelium");
        let m = Mycelium {
            ns: ns.name().to_owned(),
            log,
            addr,
            _child: child,
        };
        m.wait(Duration::from_secs(20), "mycelium API up", |m| {
            m.get("/api/v1/admin").is_ok()
        });
        let info = m.get("/api/v1/admin").unwrap();
        assert_eq!(
            info["nodeIp"].as_str(),
            Some(addr.to_string().as_str()),
            "{info}"
        );
        m
    }

    fn get(&self, path: &str) -> io::Result<Value> {
        api_get(&self.ns, path)
    }

    fn selected_subnets(&self) -> Vec<String> {
        self.get("/api/v1/admin/routes/selected")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["subnet"].as_str().map(str::to_owned))
            .collect()
    }

    fn wait(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Mycelium) -> bool) {
        if wait_until(timeout, || cond(self)).is_err() {
            panic!(
                "{what}: not within {timeout:?} on {}\n--- mycelium log ---\n{}",
                self.ns,
                tail(&self.log)
            );
        }
    }
}

/// GET on the HTTP admin API at [`API`] inside `ns` (both implementations serve it there).
fn api_get(ns: &str, path: &str) -> io::Result<Value> {
    let url = format!("http://{API}{path}");
    testbed::run_in(ns, move || -> io::Result<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        agent
            .get(&url)
            .call()
            .map_err(io::Error::other)?
            .body_mut()
            .read_json::<Value>()
            .map_err(io::Error::other)
    })?
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// Either implementation, behind the few operations the scenarios need.
enum Peer {
    Hypha(Node),
    Mycelium(Mycelium),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hypha,
    Mycelium,
}

impl Peer {
    /// Starts a node of `kind` in `ns`, listening on 9651 and dialling `peer` if given.
    fn start(kind: Kind, ns: &Netns, dir: &Path, name: &str, peer: Option<&str>) -> Peer {
        match kind {
            Kind::Hypha => {
                let (key, addr) = make_key(dir, name);
                // hypha's key file read by the reference CLI must give the same address.
                assert_eq!(
                    inspect(&mycelium_bin(), &key, dir),
                    addr,
                    "mycelium reads hypha's key differently"
                );
                let mut args = vec!["--disable-peer-discovery", "--tun-name", "hy0"];
                if let Some(peer) = peer {
                    args.extend_from_slice(&["--peers", peer]);
                }
                Peer::Hypha(Node::start_with_key(ns, dir, name, key, addr, &args))
            }
            Kind::Mycelium => Peer::Mycelium(Mycelium::start(ns, dir, name, peer)),
        }
    }

    fn ns(&self) -> &str {
        match self {
            Peer::Hypha(n) => &n.ns,
            Peer::Mycelium(m) => &m.ns,
        }
    }

    fn addr(&self) -> Ipv6Addr {
        match self {
            Peer::Hypha(n) => n.addr,
            Peer::Mycelium(m) => m.addr,
        }
    }

    fn subnet(&self) -> String {
        let s = self.addr().segments();
        format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
    }

    fn kind(&self) -> &'static str {
        match self {
            Peer::Hypha(_) => "hypha",
            Peer::Mycelium(_) => "mycelium",
        }
    }

    fn selected_subnets(&self) -> Vec<String> {
        match self {
            Peer::Hypha(n) => n.selected_subnets(),
            Peer::Mycelium(m) => m.selected_subnets(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Peer::Hypha(n) => n.log_tail(),
            Peer::Mycelium(m) => tail(&m.log),
        }
    }

    /// For a hypha node: nothing the other implementation sent was malformed, failed to open or
    /// carried an unknown inner type, and the link costs show IHUs answering our Hellos.
    fn assert_clean(&self) {
        let Peer::Hypha(n) = self else { return };
        let stats = api_get(&n.ns, "/api/v1/admin/stats").expect("hypha stats");
        for counter in ["malformedControl", "dropDecrypt", "dropInner"] {
            assert_eq!(
                stats["data"][counter].as_u64(),
                Some(0),
                "hypha {counter} on {}: {stats}",
                n.ns
            );
        }
        let peers = stats["peers"].as_array().expect("peers");
        assert!(!peers.is_empty(), "{stats}");
        for p in peers {
            // Starts at 1000 + static cost; only IHUs that answer our Hellos bring it down.
            let cost = p["linkCost"].as_u64().unwrap_or(u64::MAX);
            assert!(cost < 1000, "no IHU answered our Hello on {}: {p}", n.ns);
        }
    }

    /// The data-path counter `field` of a hypha node (`None` for mycelium).
    fn data(&self, field: &str) -> Option<u64> {
        let Peer::Hypha(n) = self else { return None };
        let stats = api_get(&n.ns, "/api/v1/admin/stats").expect("hypha stats");
        stats["data"][field].as_u64()
    }

    /// Prints what became of the sessions of a hypha node (the session and super-frame state
    /// per remote node).
    fn report_sessions(&self) {
        let Peer::Hypha(n) = self else { return };
        let s = api_get(&n.ns, "/api/v1/admin/sessions").expect("hypha sessions");
        for p in s["peers"].as_array().into_iter().flatten() {
            eprintln!(
                "  sessions on {}: {} state {}, super-frames {} (sent {}, received {}, fallbacks {})",
                n.ns,
                p["address"],
                p["state"],
                p["superFrames"],
                p["supersSent"],
                p["supersReceived"],
                p["superFallbacks"]
            );
        }
    }

    fn wait_route(&self, to: &Peer) {
        let subnet = to.subnet();
        if wait_until(ROUTE_WAIT, || self.selected_subnets().contains(&subnet)).is_err() {
            panic!(
                "{} on {} has no selected route to {} ({subnet}) within {ROUTE_WAIT:?}; \
                 selected: {:?}\n--- {} log ---\n{}\n--- {} log ---\n{}",
                self.kind(),
                self.ns(),
                to.kind(),
                self.selected_subnets(),
                self.kind(),
                self.log_tail(),
                to.kind(),
                to.log_tail()
            );
        }
    }

    fn ping_args(to: Ipv6Addr, count: &str) -> Vec<String> {
        ["-6", "-c", count, "-i", "0.2", "-W", "2"]
            .iter()
            .map(|s| s.to_string())
            .chain([to.to_string()])
            .collect()
    }

    /// Pings `to` until one echo comes back (on-demand routing may need a query first), then
    /// ten more, which must all come back with `hops` decrements of the hop limit. Returns the
    /// average RTT in ms.
    fn ping(&self, to: &Peer, hops: u8) -> f64 {
        let one = Self::ping_args(to.addr(), "1");
        let one: Vec<&str> = one.iter().map(String::as_str).collect();
        if wait_until(ROUTE_WAIT, || exec_in(self.ns(), "ping", &one).is_ok()).is_err() {
            panic!(
                "{} -> {}: no echo reply within {ROUTE_WAIT:?}\n--- {} log ---\n{}\n--- {} log ---\n{}",
                self.kind(),
                to.kind(),
                self.kind(),
                self.log_tail(),
                to.kind(),
                to.log_tail()
            );
        }
        let ten = Self::ping_args(to.addr(), "10");
        let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
        let out = exec_in(self.ns(), "ping", &ten)
            .unwrap_or_else(|e| panic!("ping {} -> {}: {e}", self.kind(), to.kind()));
        assert!(out.contains(" 0% packet loss"), "{out}");
        // Every node on the way, both ends included, decrements once; the reply starts at 64.
        let ttl = format!("ttl={}", 64 - hops);
        assert!(out.contains(&ttl), "expected {ttl}: {out}");
        let avg = testbed::ping::parse(&out)
            .unwrap_or_else(|e| panic!("no rtt line ({e}): {out}"))
            .avg_ms;
        eprintln!(
            "interop figure: ping {} -> {}: avg rtt {avg:.3} ms ({ttl})",
            self.kind(),
            to.kind()
        );
        avg
    }
}

/// A byte-identical transfer of `len` bytes; prints (never asserts) its rate.
fn timed_transfer(from: (&Peer, &Netns), to: (&Peer, &Netns), port: u16, len: u64) -> f64 {
    let start = Instant::now();
    transfer(from.1, to.1, to.0.addr(), port, len);
    let secs = start.elapsed().as_secs_f64();
    let rate = len as f64 / MB as f64 / secs;
    eprintln!(
        "interop figure: transfer {} -> {}: {} MB in {secs:.2} s = {rate:.1} MB/s",
        from.0.kind(),
        to.0.kind(),
        len / MB
    );
    rate
}

/// Keys and logs of one scenario; kept (and named on stderr) when `HYPHA_INTEROP_KEEP` is set.
fn workdir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("HYPHA_INTEROP_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("interop: keys and logs kept in {}", dir.path().display());
    }
    dir
}

/// Two namespaces, `listener` waiting on 198.18.<net>.1:9651 and `dialer` dialling it.
fn direct(listener: Kind, dialer: Kind, net: u8, len: u64) {
    let dir = workdir();
    let (na, nb) = (Netns::new("ia").unwrap(), Netns::new("ib").unwrap());
    let [ip_a, _] = link(&na, &nb, net).expect("veth link").addrs;
    let a = Peer::start(listener, &na, dir.path(), "a", None);
    let peer = format!("tcp://{ip_a}:9651");
    let b = Peer::start(dialer, &nb, dir.path(), "b", Some(&peer));

    a.wait_route(&b);
    b.wait_route(&a);
    a.ping(&b, 2);
    b.ping(&a, 2);
    timed_transfer((&a, &na), (&b, &nb), 5001, len);
    timed_transfer((&b, &nb), (&a, &na), 5002, len);
    // Both still consider the link up after the load (no decode error tore it down).
    a.wait_route(&b);
    b.wait_route(&a);
    a.assert_clean();
    b.assert_clean();
    // Towards mycelium hypha speaks only mycelium's format: no session frames, no super-frames
    // (its unanswered handshakes are ordinary static-key data packets).
    if listener != dialer {
        for p in [&a, &b] {
            for field in ["sessionFramesOut", "superFramesOut", "sessionFramesIn"] {
                if let Some(n) = p.data(field) {
                    assert_eq!(n, 0, "{field} of hypha towards mycelium");
                }
            }
        }
    }
    for p in [&a, &b] {
        p.report_sessions();
    }
}

#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn direct_hypha_dials_mycelium() {
    direct(Kind::Mycelium, Kind::Hypha, 40, 100 * MB);
}

#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn direct_mycelium_dials_hypha() {
    direct(Kind::Hypha, Kind::Mycelium, 41, 100 * MB);
}

/// The harness against the reference alone, and the baseline for the figures above.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn direct_mycelium_pair_baseline() {
    direct(Kind::Mycelium, Kind::Mycelium, 42, 100 * MB);
}

/// The same measurement between two hypha nodes, in the same run as the figures above.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn direct_hypha_pair_baseline() {
    direct(Kind::Hypha, Kind::Hypha, 43, 100 * MB);
}

/// a — b — c on two links; b dials a, c dials b. a and c are not neighbours, so their routes are
/// learnt on demand through b, and every packet between them is relayed by b.
fn chain(kinds: [Kind; 3], net: u8, len: u64) {
    let dir = workdir();
    let (na, nb, nc) = (
        Netns::new("ca").unwrap(),
        Netns::new("cb").unwrap(),
        Netns::new("cc").unwrap(),
    );
    let [ab_a, _] = link(&na, &nb, net).expect("veth link").addrs;
    let [bc_b, _] = link(&nb, &nc, net + 1).expect("veth link").addrs;
    let a = Peer::start(kinds[0], &na, dir.path(), "a", None);
    let peer_a = format!("tcp://{ab_a}:9651");
    let b = Peer::start(kinds[1], &nb, dir.path(), "b", Some(&peer_a));
    let peer_b = format!("tcp://{bc_b}:9651");
    let c = Peer::start(kinds[2], &nc, dir.path(), "c", Some(&peer_b));
    b.wait_route(&a);
    b.wait_route(&c);
    eprintln!(
        "interop figure: chain {} - {} - {} (the middle one relays):",
        a.kind(),
        b.kind(),
        c.kind()
    );

    // Three decrements: a, b and c.
    a.ping(&c, 3);
    c.ping(&a, 3);
    a.wait_route(&c);
    c.wait_route(&a);
    timed_transfer((&a, &na), (&c, &nc), 5003, len);
    timed_transfer((&c, &nc), (&a, &na), 5004, len);
    for p in [&a, &b, &c] {
        p.assert_clean();
        p.report_sessions();
    }
    // Two hypha ends talk through a mycelium relay under a session; the relay forwards it as it
    // forwards any data packet.
    if kinds == [Kind::Hypha, Kind::Mycelium, Kind::Hypha] {
        for p in [&a, &c] {
            assert!(
                p.data("sessionFramesOut").unwrap_or(0) > 0,
                "hypha sealed under a session"
            );
            assert!(
                p.data("sessionFramesIn").unwrap_or(0) > 0,
                "hypha opened under a session"
            );
        }
    }
}

#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn chain_hypha_mycelium_hypha() {
    chain([Kind::Hypha, Kind::Mycelium, Kind::Hypha], 44, 64 * MB);
}

#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn chain_mycelium_hypha_mycelium() {
    chain([Kind::Mycelium, Kind::Hypha, Kind::Mycelium], 46, 64 * MB);
}

/// The peer port of the single inbound link mycelium lists, if it is alive.
fn alive_inbound(m: &Mycelium) -> Option<String> {
    let peers = m.get("/api/v1/admin/peers").ok()?;
    match peers.as_array()?.as_slice() {
        [p] if p["connectionState"] == "alive" => {
            Some(p["endpoint"]["addr"]["socket"].as_str()?.to_owned())
        }
        _ => None,
    }
}

/// Hello/IHU over time: the link outlives both sides' 43 s dead timers on the same TCP
/// connection, so each side answers the other's Hellos with IHUs that are accepted.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn link_stays_up_past_dead_timers() {
    let dir = workdir();
    let (na, nb) = (Netns::new("la").unwrap(), Netns::new("lb").unwrap());
    let [ip_a, _] = link(&na, &nb, 48).expect("veth link").addrs;
    let m = Mycelium::start(&na, dir.path(), "m", None);
    let peer = format!("tcp://{ip_a}:9651");
    let h = Peer::start(Kind::Hypha, &nb, dir.path(), "h", Some(&peer));
    let m = Peer::Mycelium(m);
    h.wait_route(&m);
    m.wait_route(&h);
    let Peer::Mycelium(my) = &m else {
        unreachable!()
    };
    let first = alive_inbound(my).expect("mycelium lists hypha's connection");

    // Mycelium sends a Hello every 20 s (the first within 20 s of connecting): four of them
    // take at least 60 s, past the 43–53 s in which a peer without IHUs is dropped.
    let hellos = |_: &Node| -> bool {
        api_get(h.ns(), "/api/v1/admin/stats")
            .ok()
            .and_then(|s| s["routing"]["helloReceived"].as_u64())
            .is_some_and(|n| n >= 4)
    };
    let Peer::Hypha(hn) = &h else { unreachable!() };
    hn.wait(
        Duration::from_secs(120),
        "four Hellos from mycelium",
        hellos,
    );

    assert_eq!(
        alive_inbound(my).as_deref(),
        Some(first.as_str()),
        "mycelium dropped or replaced hypha's connection\n{}",
        m.log_tail()
    );
    let stats = api_get(h.ns(), "/api/v1/admin/stats").unwrap();
    let ihus = stats["routing"]["ihuReceived"].as_u64().unwrap_or(0);
    assert!(ihus >= 3, "hypha got {ihus} IHUs: {stats}");
    h.assert_clean();
    h.ping(&m, 2);
    m.ping(&h, 2);
}
