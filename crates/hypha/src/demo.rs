//! `hypha demo`: a small overlay on this machine. Three nodes in network namespaces, joined by
//! veth pairs in a chain A – B – C (underlay 198.18.200.0/24 and 198.18.201.0/24), each running this
//! same binary. It waits until they have found each other, pings A → C across the relay B, prints
//! addresses, routes and round-trip times, and removes everything on exit and on Ctrl-C. The
//! namespaces, node processes and scratch directory are `testbed`'s, with its cleanup guards.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use testbed::{exec_in, Daemon, Lab, ScratchDir};

struct DemoNode {
    name: &'static str,
    ns: String,
    addr: Ipv6Addr,
    key: PathBuf,
    _process: Daemon,
}

/// Everything the demo made. Fields drop in order: the nodes stop (SIGTERM, so they remove their
/// TUNs) before their namespaces go, and the scratch directory last.
struct Demo {
    nodes: Vec<DemoNode>,
    _lab: Lab,
    dir: ScratchDir,
}

fn key_and_address(exe: &Path, key: &Path) -> anyhow::Result<Ipv6Addr> {
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(exe).arg("-k").arg(key).args(args).output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    run(&["generate-keys"])?;
    let v: serde_json::Value = serde_json::from_str(&run(&["inspect", "--json"])?)?;
    v["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .context("inspect gave no address")
}

/// Polls `cond` until it holds (true) or `timeout` passes (false); an error on Ctrl-C.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<bool> {
    let held = testbed::wait_until(timeout, || testbed::interrupted() || cond()).is_ok();
    testbed::check_interrupted()?;
    Ok(held)
}

/// Runs the demo. With `wait`, keeps the overlay up until Ctrl-C.
pub fn run(wait: bool) -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    testbed::require_tools(&[("ip", "iproute2"), ("ping", "iputils-ping")])?;
    // Ctrl-C and SIGTERM from here on only end the waits; the guards then clean up.
    let (signalled, ctrl_c) = std::sync::mpsc::channel();
    testbed::watch_signals(move || {
        let _ = signalled.send(());
    })?;
    let exe = std::env::current_exe().context("cannot find the hypha binary")?;
    let dir = ScratchDir::new("hypha-demo")?;

    println!("Creating three namespaces joined A – B – C by veth pairs …");
    let lab = Lab::chain("demo", &[200, 201]).context("cannot build the namespaces")?;

    println!(
        "Starting a hypha node in each (logs in {}) …",
        dir.path().display()
    );
    // B dials A, C dials B: C reaches A only through B.
    let peers: [Option<String>; 3] = [
        None,
        Some(format!("tcp://{}:9651", lab.link(0).addrs[0])),
        Some(format!("tcp://{}:9651", lab.link(1).addrs[0])),
    ];
    let mut nodes = Vec::new();
    for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
        let key = dir.path().join(format!("{name}.key"));
        let addr = key_and_address(&exe, &key)?;
        let mut cmd = lab.ns(i).command(&exe);
        cmd.arg("-k").arg(&key).arg("--disable-peer-discovery");
        if let Some(p) = &peers[i] {
            cmd.args(["--peers", p]);
        }
        let log = dir.path().join(format!("{name}.log"));
        let process =
            Daemon::start(&format!("node {name}"), cmd, &log).context("cannot start a node")?;
        nodes.push(DemoNode {
            name,
            ns: lab.ns(i).name().to_owned(),
            addr,
            key,
            _process: process,
        });
    }
    let demo = Demo {
        nodes,
        _lab: lab,
        dir,
    };
    let nodes = &demo.nodes;
    let exe_s = exe.to_string_lossy();

    let (a, c) = (&nodes[0], &nodes[2]);
    let c_subnet = format!("{}/64", subnet_of(c.addr));
    // A learns C's route on demand: its first packet to C starts the query.
    let found = wait_for(Duration::from_secs(30), || {
        let _ = exec_in(
            &a.ns,
            "ping",
            &["-6", "-c", "1", "-W", "1", &c.addr.to_string()],
        );
        exec_in(&a.ns, &exe_s, &["routes", "selected", "--json"])
            .map(|o| o.contains(&c_subnet))
            .unwrap_or(false)
    })?;
    if !found {
        bail!(
            "A did not find a route to C within 30 s; see the logs in {}",
            demo.dir.path().display()
        );
    }

    println!();
    println!(
        "{:<5} {:<40} {:<12} KEY FILE",
        "NODE", "OVERLAY ADDRESS", "NAMESPACE"
    );
    for (i, n) in nodes.iter().enumerate() {
        println!(
            "{:<5} {:<40} {:<12} {}",
            n.name,
            n.addr.to_string(),
            Lab::label(i),
            n.key.display()
        );
    }
    for n in nodes {
        println!("\nRoutes selected by {}:", n.name);
        print!("{}", exec_in(&n.ns, &exe_s, &["routes", "selected"])?);
    }
    println!();
    for (from, to) in [(0usize, 1usize), (0, 2), (2, 0)] {
        let (f, t) = (&nodes[from], &nodes[to]);
        let out = exec_in(
            &f.ns,
            "ping",
            &["-6", "-c", "5", "-i", "0.2", "-W", "2", &t.addr.to_string()],
        )?;
        let rtt = match testbed::ping::parse(&out) {
            Ok(s) => {
                let [min, avg, max, mdev] = s.rtt_ms;
                format!("{min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms")
            }
            Err(_) => "no answer".into(),
        };
        let hops = if (from, to) == (0, 1) {
            "direct"
        } else {
            "via B"
        };
        println!(
            "ping {} -> {} ({hops}): rtt min/avg/max/mdev = {rtt}",
            f.name, t.name
        );
    }
    if wait {
        let (a, c) = (&nodes[0], &nodes[2]);
        println!(
            "\nThe overlay stays up until Ctrl-C. Try:\n  ip netns exec {} ping {}\n  \
             ip netns exec {} {exe_s} message receive --timeout 60 &\n  \
             ip netns exec {} {exe_s} message send -t demo {} 'hello from A'",
            a.ns, c.addr, c.ns, a.ns, c.addr
        );
        let _ = ctrl_c.recv();
    }
    println!("\nCleaning up …");
    drop(demo);
    Ok(())
}

fn subnet_of(a: Ipv6Addr) -> Ipv6Addr {
    let s = a.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
}
