//! `hypha-bench routes`: the control path under a burst of announced routes, end to end.
//!
//! Four namespaces R – A – B – C on veth pairs (198.18.224–226.0/24). A node of the subject runs
//! in A, and in B peered with A. A hand-made peer in R connects to A and announces `--routes`
//! /64s of distinct random keys in one write (a large network's full table, or an attacker's);
//! at the same moment a node starts in C peered with B. Measured, per repetition: how long A
//! takes to select every announced route (its admin API, polled every 50 ms), how long after C
//! started A reaches C (ping), and A's peak RSS. Beside it, the routing core alone: the same
//! Updates handed to a `routing::Router` in this process, with the forwarding table published
//! every 1,000 Updates (what a node does under such a burst), in routes per second.
//!
//! Only the namespaces it creates are touched, and all traffic stays inside them.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use testbed::{Daemon, Lab, Netns, ScratchDir};
use wire::babel::{RouterId, Tlv};

use crate::cli::RoutesArgs;
use crate::measure::{median, peak_rss_mb};
use crate::run::Transport;

const NETS: [u8; 3] = [224, 225, 226];
const API: &str = "127.0.0.1:18990";
const PORT: u16 = 9651;
/// The targets of the control path (see the issue that set them).
const ABSORB_TARGET_S: f64 = 5.0;
const REACH_TARGET_S: f64 = 1.0;
const RSS_TARGET_MB: f64 = 64.0;

/// The same Updates as the link carries them: one control frame each.
fn encode(tlvs: &[Tlv]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(tlvs.len() * 72);
    for t in tlvs {
        wire::frame::encode_control(&mut out, t).map_err(|e| anyhow!("encode: {e}"))?;
    }
    Ok(out)
}

/// Routes per second of the routing core alone: `tlvs` from one link, the forwarding table
/// published every 1,000 (the best of three tries).
fn core_rate(tlvs: &[Tlv]) -> f64 {
    use routing::{Config, LinkId, Router, Time};
    let mut own = [0u8; 32];
    routing::sim::SimRng::new(u64::MAX).fill(&mut own);
    let own = crypto::PublicKey(own);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let now = Time::ZERO;
        let mut r = Router::new(Config::new(RouterId::new(own.0, [1; 6]), own.subnet()), now);
        let _ = r.handle_link_up(LinkId(1), routing::consts::STATIC_COST_TCP6, now);
        let t0 = Instant::now();
        for (i, t) in tlvs.iter().enumerate() {
            r.handle_tlv(LinkId(1), t, now);
            while r.poll_transmit().is_some() {}
            while r.poll_event().is_some() {}
            if i % 1000 == 999 {
                let _ = r.forwarding_table();
            }
        }
        let _ = r.forwarding_table();
        let s = t0.elapsed().as_secs_f64();
        best = best.max(tlvs.len() as f64 / s);
    }
    best
}

/// One subject: a node binary taking hypha's (mycelium's) flags.
struct Subject {
    label: String,
    bin: PathBuf,
}

/// What one repetition measured.
#[derive(Default, Clone, Copy)]
struct Sample {
    absorb_s: Option<f64>,
    reach_s: Option<f64>,
    rss_mb: Option<f64>,
}

pub fn run(args: &RoutesArgs) -> anyhow::Result<()> {
    let own = std::env::current_exe().context("cannot find the hypha-bench binary")?;
    let hypha = args
        .binary
        .clone()
        .unwrap_or_else(|| own.with_file_name("hypha"));
    let mut subjects = vec![Subject {
        label: "hypha".into(),
        bin: hypha,
    }];
    for c in &args.compare {
        subjects.push(Subject {
            label: crate::run::label_of(c),
            bin: c.clone(),
        });
    }
    for s in &subjects {
        if !testbed::is_executable(&s.bin) {
            bail!("{}: not an executable file", s.bin.display());
        }
    }
    if !testbed::is_root() {
        bail!("the routes bench needs root (network namespaces)");
    }
    testbed::require_tools(&[("ip", "iproute2"), ("ping", "iputils-ping")])?;
    testbed::watch_signals(|| {})?;
    let tlvs = routing::sim::full_table_updates(args.routes as usize, 1);
    let burst = encode(&tlvs)?;
    eprintln!("routing core alone: {} Updates …", tlvs.len());
    let core = core_rate(&tlvs);
    drop(tlvs);
    let work = ScratchDir::new("hypha-bench-routes")?;
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); subjects.len()];
    for rep in 0..args.runs {
        for (i, s) in subjects.iter().enumerate() {
            testbed::check_interrupted()?;
            eprintln!("run {}/{}: {} …", rep + 1, args.runs, s.label);
            let sample = one_run(s, &burst, args.routes as usize, work.path(), rep)
                .with_context(|| format!("{} (run {})", s.label, rep + 1))?;
            results[i].push(sample);
        }
    }
    print_table(args, &subjects, &results, core);
    Ok(())
}

fn one_run(
    s: &Subject,
    burst: &[u8],
    routes: usize,
    work: &Path,
    rep: u32,
) -> anyhow::Result<Sample> {
    let lab = Lab::chain("hy-rt", &NETS)?;
    let (r, a, b, c) = (lab.ns(0), lab.ns(1), lab.ns(2), lab.ns(3));
    let a_from_r = lab.link(0).addrs[1];
    let a_from_b = lab.link(1).addrs[0];
    let b_from_c = lab.link(2).addrs[0];
    let node = |ns: &Netns, name: &str, peer: Option<Ipv4Addr>| {
        let file = format!("{}-{rep}-{name}", s.label);
        let tun = format!("hyrt{name}");
        start_node(&s.bin, ns, work, &file, &tun, API, Transport::Tcp, peer)
    };
    let (mut na, _) = node(a, "a", None)?;
    let (mut nb, _) = node(b, "b", Some(a_from_b))?;
    // Ready when A selected B's route (any route: A has no other peer yet).
    if !crate::run::wait_for(Duration::from_secs(30), || {
        selected(a).is_ok_and(|n| n >= 1)
    })? {
        na.check_running()?;
        nb.check_running()?;
        bail!("A never selected B's route");
    }
    let base = selected(a)?;
    let target: SocketAddr = (a_from_r, PORT).into();
    let mut peer = r
        .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))?
        .context("connect to A")?;
    let mut drain = peer.try_clone()?;
    std::thread::spawn(move || {
        let mut sink = [0u8; 16384];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    let t0 = Instant::now();
    let burst = burst.to_vec();
    let writer = std::thread::spawn(move || {
        let r = peer.write_all(&burst);
        (r, peer)
    });
    let (mut nc, c_addr) = node(c, "c", Some(b_from_c))?;
    let joined = Instant::now();
    let mut reach_s = None;
    let mut absorb_s = None;
    let deadline = Duration::from_secs(120);
    while t0.elapsed() < deadline && (reach_s.is_none() || absorb_s.is_none()) {
        testbed::check_interrupted()?;
        if reach_s.is_none() && ping_once(a, &c_addr) {
            reach_s = Some(joined.elapsed().as_secs_f64());
        }
        if absorb_s.is_none() && selected(a).is_ok_and(|n| n >= base + routes as u64) {
            absorb_s = Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_mb = peak_rss_mb(na.pid()).ok();
    let (sent, _peer) = writer.join().map_err(|_| anyhow!("writer panicked"))?;
    sent.context("send the burst")?;
    for n in [&mut na, &mut nb, &mut nc] {
        n.check_running()?;
        n.stop(Duration::from_secs(5));
    }
    Ok(Sample {
        absorb_s,
        reach_s,
        rss_mb,
    })
}

/// Starts a node of `bin` in `ns` with a fresh key (`work/<file>.key`, its log beside it), the
/// TUN `tun` and the API on `api`, its links over `transport`, dialling `peer` if given: the
/// daemon and its overlay address.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_node(
    bin: &Path,
    ns: &Netns,
    work: &Path,
    file: &str,
    tun: &str,
    api: &str,
    transport: Transport,
    peer: Option<Ipv4Addr>,
) -> anyhow::Result<(Daemon, String)> {
    let key = work.join(format!("{file}.key"));
    let addr = keygen(bin, &key)?;
    let mut cmd = ns.command(bin);
    cmd.arg("--key-file").arg(&key);
    cmd.args([
        "--disable-peer-discovery",
        "--tun-name",
        tun,
        "--api-addr",
        api,
    ]);
    cmd.args(transport.node_args(
        peer.map(IpAddr::V4),
        PORT,
        help_mentions(bin, "--disable-quic")?,
    ));
    let log = work.join(format!("{file}.log"));
    Ok((Daemon::start(&format!("node {file}"), cmd, &log)?, addr))
}

/// Whether `bin --help` mentions `flag`.
fn help_mentions(bin: &Path, flag: &str) -> anyhow::Result<bool> {
    let help = testbed::run(testbed::command(bin).arg("--help"), Duration::from_secs(20))?;
    Ok(help.stdout.contains(flag))
}

/// Makes a key file, returns the overlay address.
fn keygen(bin: &Path, key: &Path) -> anyhow::Result<String> {
    let t = Duration::from_secs(20);
    let with_key = |args: &[&str]| {
        let mut cmd = testbed::command(bin);
        cmd.arg("--key-file").arg(key).args(args);
        testbed::run(&mut cmd, t)?.ok()
    };
    with_key(&["generate-keys"])?;
    let out = with_key(&["inspect", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    v["address"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("inspect --json gave no address"))
}

fn ping_once(ns: &Netns, addr: &str) -> bool {
    ns.exec("ping", &["-6", "-c", "1", "-W", "1", addr]).is_ok()
}

/// How many routes the node in `ns` has selected: its stats where it has them (cheap), else
/// the length of its selected-routes list.
fn selected(ns: &Netns) -> anyhow::Result<u64> {
    if let Ok(v) = get_json(ns, "/api/v1/admin/stats") {
        if let Some(n) = v["routing"]["selectedRoutes"].as_u64() {
            return Ok(n);
        }
    }
    let v = get_json(ns, "/api/v1/admin/routes/selected")?;
    v.as_array()
        .map(|a| a.len() as u64)
        .ok_or_else(|| anyhow!("selected routes: not a list"))
}

/// GET `path` from the admin API in `ns`, as JSON (HTTP/1.0, so the body ends with the stream).
fn get_json(ns: &Netns, path: &str) -> anyhow::Result<serde_json::Value> {
    let path = path.to_owned();
    let body = ns.run(move || -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(API)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let status = all
            .get(9..12)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let start = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(all.len(), |p| p + 4);
        Ok((status, all.split_off(start)))
    })??;
    if body.0 != 200 {
        bail!("HTTP {}", body.0);
    }
    Ok(serde_json::from_slice(&body.1)?)
}

fn print_table(args: &RoutesArgs, subjects: &[Subject], results: &[Vec<Sample>], core: f64) {
    let med = |f: &dyn Fn(&Sample) -> Option<f64>, xs: &[Sample]| {
        let v: Vec<f64> = xs.iter().filter_map(f).collect();
        (median(&v), v.len())
    };
    let show = |m: (Option<f64>, usize), runs: usize, unit: &str| match m {
        (Some(v), n) if n == runs => format!("{v:.2} {unit}"),
        (Some(v), n) => format!("{v:.2} {unit} ({n}/{runs})"),
        (None, _) => "not reached".into(),
    };
    println!(
        "{} routes from one peer, {} run(s); medians (target: absorbed ≤ {ABSORB_TARGET_S} s, \
         new node reachable ≤ {REACH_TARGET_S} s, peak RSS ≤ {RSS_TARGET_MB} MB)",
        args.routes, args.runs
    );
    println!(
        "{:<12} {:>16} {:>14} {:>20} {:>14}",
        "subject", "all absorbed", "routes/s", "new node reachable", "A's peak RSS"
    );
    for (s, xs) in subjects.iter().zip(results) {
        let runs = xs.len();
        let absorb = med(&|x| x.absorb_s, xs);
        let rate = absorb
            .0
            .map_or("-".into(), |t| format!("{:.0}", f64::from(args.routes) / t));
        println!(
            "{:<12} {:>16} {:>14} {:>20} {:>14}",
            s.label,
            show(absorb, runs, "s"),
            rate,
            show(med(&|x| x.reach_s, xs), runs, "s"),
            show(med(&|x| x.rss_mb, xs), runs, "MB"),
        );
    }
    println!(
        "routing core alone (the same Updates, table published every 1,000): {core:.0} routes/s"
    );
}
