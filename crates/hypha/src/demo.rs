//! `hypha demo`: a small overlay on this machine. Three nodes in network namespaces, joined by
//! veth pairs in a chain A – B – C (underlay 198.18.200.0/24 and 198.18.201.0/24), each running this
//! same binary. It waits until they have found each other, pings A → C across the relay B, prints
//! addresses, routes and round-trip times, and removes everything on exit and on Ctrl-C.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

struct DemoNode {
    name: &'static str,
    ns: String,
    addr: Ipv6Addr,
    key: PathBuf,
    child: Option<Child>,
}

/// Owns every namespace and process of the demo; dropping it removes them.
struct Lab {
    nodes: Vec<DemoNode>,
    namespaces: Vec<String>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run 'ip' (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

fn wait_for(
    stop: &AtomicBool,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if cond() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}

/// Runs the demo. With `wait`, keeps the overlay up until Ctrl-C.
pub fn run(wait: bool) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone())?;
    let exe = std::env::current_exe().context("cannot find the hypha binary")?;
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("hypha-demo-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let mut lab = Lab {
        nodes: Vec::new(),
        namespaces: Vec::new(),
        dir: dir.clone(),
    };

    println!("Creating three namespaces joined A – B – C by veth pairs …");
    for name in ["a", "b", "c"] {
        let ns = format!("hy-demo-{pid}-{name}");
        ip(&["netns", "add", &ns])?;
        lab.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    let links = [(0usize, 1usize, 200u8), (1, 2, 201)];
    for (x, y, net) in links {
        let (ex, ey) = (format!("hd{pid}{x}{y}x"), format!("hd{pid}{x}{y}y"));
        let (ex, ey) = (&ex[..ex.len().min(15)], &ey[..ey.len().min(15)]);
        ip(&[
            "link",
            "add",
            ex,
            "netns",
            &lab.namespaces[x],
            "type",
            "veth",
            "peer",
            "name",
            ey,
            "netns",
            &lab.namespaces[y],
        ])?;
        ip(&[
            "-n",
            &lab.namespaces[x],
            "addr",
            "add",
            &format!("198.18.{net}.1/24"),
            "dev",
            ex,
        ])?;
        ip(&[
            "-n",
            &lab.namespaces[y],
            "addr",
            "add",
            &format!("198.18.{net}.2/24"),
            "dev",
            ey,
        ])?;
        ip(&["-n", &lab.namespaces[x], "link", "set", ex, "up"])?;
        ip(&["-n", &lab.namespaces[y], "link", "set", ey, "up"])?;
    }

    println!(
        "Starting a hypha node in each (logs in {}) …",
        dir.display()
    );
    // B dials A, C dials B: C reaches A only through B.
    let peers: [&[&str]; 3] = [
        &[],
        &["--peers", "tcp://198.18.200.1:9651"],
        &["--peers", "tcp://198.18.201.1:9651"],
    ];
    for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
        let key = dir.join(format!("{name}.key"));
        let addr = key_and_address(&exe, &key)?;
        let logf = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.namespaces[i]])
            .arg(&exe)
            .arg("-k")
            .arg(&key)
            .arg("--disable-peer-discovery")
            .args(peers[i])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .context("cannot start a node")?;
        lab.nodes.push(DemoNode {
            name,
            ns: lab.namespaces[i].clone(),
            addr,
            key,
            child: Some(child),
        });
    }

    let (a, c) = (&lab.nodes[0], &lab.nodes[2]);
    let c_subnet = format!("{}/64", subnet_of(c.addr));
    // A learns C's route on demand: its first packet to C starts the query.
    let found = wait_for(&stop, Duration::from_secs(30), || {
        let _ = in_ns(
            &a.ns,
            "ping",
            &["-6", "-c", "1", "-W", "1", &c.addr.to_string()],
        );
        in_ns(
            &a.ns,
            &exe.to_string_lossy(),
            &["routes", "selected", "--json"],
        )
        .map(|o| o.contains(&c_subnet))
        .unwrap_or(false)
    })?;
    if !found {
        bail!(
            "A did not find a route to C within 30 s; see the logs in {}",
            dir.display()
        );
    }

    println!();
    println!(
        "{:<5} {:<40} {:<12} KEY FILE",
        "NODE", "OVERLAY ADDRESS", "NAMESPACE"
    );
    for n in &lab.nodes {
        println!(
            "{:<5} {:<40} {:<12} {}",
            n.name,
            n.addr.to_string(),
            n.ns.rsplit('-').next().unwrap_or(""),
            n.key.display()
        );
    }
    for n in &lab.nodes {
        println!("\nRoutes selected by {}:", n.name);
        print!(
            "{}",
            in_ns(&n.ns, &exe.to_string_lossy(), &["routes", "selected"])?
        );
    }
    println!();
    for (from, to) in [(0usize, 1usize), (0, 2), (2, 0)] {
        let (f, t) = (&lab.nodes[from], &lab.nodes[to]);
        let out = in_ns(
            &f.ns,
            "ping",
            &["-6", "-c", "5", "-i", "0.2", "-W", "2", &t.addr.to_string()],
        )?;
        let rtt = out
            .lines()
            .find(|l| l.contains("min/avg/max"))
            .and_then(|l| l.split('=').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "no answer".into());
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
        println!(
            "\nThe overlay stays up until Ctrl-C. Try: ip netns exec {} ping {}",
            lab.nodes[0].ns, lab.nodes[2].addr
        );
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("\nCleaning up …");
    drop(lab);
    Ok(())
}

fn subnet_of(a: Ipv6Addr) -> Ipv6Addr {
    let s = a.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Sets `stop` on SIGINT/SIGTERM, so the lab is torn down by `Drop` instead of the process dying.
fn watch_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                stop.store(true, Ordering::Relaxed);
            })
        })?;
    Ok(())
}
