//! Harness for the node tests: hypha processes in namespaces that the test owns, driven and
//! inspected through the CLI (which exercises the admin API too).
#![allow(dead_code)]

pub mod rogue;

use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testbed::{exec_in, wait_until, ChildGuard, Netns};

pub const BIN: &str = env!("CARGO_BIN_EXE_hypha");

/// One hypha process in a namespace.
pub struct Node {
    pub ns: String,
    pub key: PathBuf,
    pub log: PathBuf,
    pub addr: Ipv6Addr,
    child: Option<ChildGuard>,
}

/// Key file, address: generated with the CLI (`generate-keys`, `inspect --json`).
pub fn make_key(dir: &Path, name: &str) -> (PathBuf, Ipv6Addr) {
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new(BIN)
        .args(["-k", key.to_str().unwrap(), "generate-keys"])
        .output()
        .expect("run hypha generate-keys");
    assert!(out.status.success(), "generate-keys: {out:?}");
    let out = std::process::Command::new(BIN)
        .args(["-k", key.to_str().unwrap(), "inspect", "--json"])
        .output()
        .expect("run hypha inspect");
    assert!(out.status.success(), "inspect: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let addr = v["address"].as_str().unwrap().parse().unwrap();
    (key, addr)
}

impl Node {
    /// Starts `hypha` in `ns` with its own key, logging to a file in `dir`.
    pub fn start(ns: &Netns, dir: &Path, name: &str, extra: &[&str]) -> Node {
        let (key, addr) = make_key(dir, name);
        Self::start_with_key(ns, dir, name, key, addr, extra)
    }

    pub fn start_with_key(
        ns: &Netns,
        dir: &Path,
        name: &str,
        key: PathBuf,
        addr: Ipv6Addr,
        extra: &[&str],
    ) -> Node {
        let node = Self::spawn_with_key(ns, dir, name, key, addr, extra);
        node.wait_api();
        node
    }

    /// Starts `hypha` like [`Node::start`] with `extra`, dialling the node listening on the
    /// default peer port at the underlay address `peer`.
    pub fn start_dialling(
        ns: &Netns,
        dir: &Path,
        name: &str,
        peer: std::net::Ipv4Addr,
        extra: &[&str],
    ) -> Node {
        let peer = format!("tcp://{peer}:9651");
        Self::start(ns, dir, name, &[extra, &["--peers", &peer]].concat())
    }

    /// Starts `hypha` like [`Node::start`], without waiting for it to be up.
    pub fn spawn(ns: &Netns, dir: &Path, name: &str, extra: &[&str]) -> Node {
        let (key, addr) = make_key(dir, name);
        Self::spawn_with_key(ns, dir, name, key, addr, extra)
    }

    /// Waits until the node's API answers.
    pub fn wait_api(&self) {
        self.wait(Duration::from_secs(20), "API up", |n| {
            n.cli(&["peers", "list", "--json"]).is_ok()
        });
    }

    fn spawn_with_key(
        ns: &Netns,
        dir: &Path,
        name: &str,
        key: PathBuf,
        addr: Ipv6Addr,
        extra: &[&str],
    ) -> Node {
        let log = dir.join(format!("{name}.log"));
        let mut cmd = format!("exec {BIN} -k {} --debug", key.display());
        for a in extra {
            cmd.push(' ');
            cmd.push_str(a);
        }
        cmd.push_str(&format!(" 2>>{}", log.display()));
        let child = ns.spawn("sh", &["-c", &cmd]).expect("spawn hypha");
        Node {
            ns: ns.name().to_owned(),
            key,
            log,
            addr,
            child: Some(child),
        }
    }

    pub fn subnet(&self) -> String {
        let seg = self.addr.segments();
        let net = Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0);
        format!("{net}/64")
    }

    /// Runs a CLI subcommand against this node's API.
    pub fn cli(&self, args: &[&str]) -> io::Result<String> {
        exec_in(&self.ns, BIN, args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self
            .cli(args)
            .unwrap_or_else(|e| panic!("hypha {args:?}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("hypha {args:?}: {e}: {out}"))
    }

    pub fn selected_subnets(&self) -> Vec<String> {
        match self.cli(&["routes", "selected", "--json"]) {
            Ok(out) => serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r["subnet"].as_str().map(str::to_owned))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn has_route(&self, subnet: &str) -> bool {
        self.selected_subnets().iter().any(|s| s == subnet)
    }

    /// Waits for `cond`, and panics with the node's log when it does not come true.
    pub fn wait(&self, timeout: Duration, what: &str, mut cond: impl FnMut(&Node) -> bool) {
        if wait_until(timeout, || cond(self)).is_err() {
            panic!(
                "{what}: not within {timeout:?} on {}\n--- log ---\n{}",
                self.ns,
                self.log_tail()
            );
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Kills the process at once (no shutdown): a silent death for its peers.
    pub fn kill(&mut self) {
        self.child.take();
    }

    /// SIGTERM; returns whether it exited 0 in time.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(c) => c
                .terminate(Duration::from_secs(10))
                .map(|o| o.status.success())
                .unwrap_or(false),
            None => false,
        }
    }

    pub fn ping(&self, to: Ipv6Addr) -> io::Result<String> {
        exec_in(
            &self.ns,
            "ping",
            &["-6", "-c", "3", "-i", "0.2", "-W", "2", &to.to_string()],
        )
    }
}

/// A data-path counter of `n` (`hypha stats --json`, `data`), 0 when absent.
pub fn data(n: &Node, field: &str) -> u64 {
    n.json(&["stats", "--json"])["data"][field]
        .as_u64()
        .unwrap_or(0)
}

/// A byte-identical transfer of `len` bytes from `from` to `to`'s overlay address.
pub fn transfer(from: &Netns, to: &Netns, to_addr: Ipv6Addr, port: u16, len: u64) {
    let listen: SocketAddr = (to_addr, port).into();
    let listener = to
        .run(move || TcpListener::bind(listen))
        .expect("enter ns")
        .expect("bind receiver");
    let receiver = std::thread::spawn(move || {
        let (sock, _) = listener.accept()?;
        testbed::xfer::recv(sock)
    });
    let sent = from
        .run(move || -> io::Result<testbed::xfer::Summary> {
            let sock = TcpStream::connect_timeout(&listen, Duration::from_secs(10))?;
            testbed::xfer::send(sock, len, 0x5eed)
        })
        .expect("enter ns")
        .expect("send");
    let got = receiver.join().expect("receiver thread").expect("receive");
    assert_eq!(got.len, len, "bytes received");
    assert_eq!(got, sent, "received stream differs from the sent one");
}

impl Node {
    /// Process id of the node (the `sh -c exec` keeps the pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// One echo with a short timeout: true when answered.
    pub fn ping_once(&self, to: Ipv6Addr) -> bool {
        exec_in(
            &self.ns,
            "ping",
            &["-6", "-c", "1", "-W", "1", &to.to_string()],
        )
        .is_ok()
    }
}

/// A plain HTTP/1.1 request to a node's API from inside its namespace: (status, body).
pub fn http(ns: &Netns, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_port(ns, 8989, method, path, body)
}

/// [`http`] to another loopback port of the namespace (the metrics endpoint, say).
pub fn http_port(
    ns: &Netns,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let req = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    };
    let raw = ns
        .run(move || -> io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .expect("enter ns")
        .expect("HTTP exchange");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
