//! `hypha-bench wan`: the overlay over emulated WAN links (`testbed::wan`): limited rate, delay,
//! loss and a bottleneck queue, as real links have and veth has not.
//!
//! For each scenario two namespaces A and B are joined by an emulated link (a middle namespace,
//! see `testbed::wan`); the bulk flows use the congestion control the scenario names (iperf3
//! `-C`; TCP peer links keep the machine's default). Each subject — the raw link (iperf3 and ping
//! over the underlay itself), hypha with its peer link over TCP, hypha over QUIC (`quic://`: the
//! link paced by the QUIC stack's congestion control instead of the kernel TCP's), every
//! `--compare` binary (B dials A over the link) and the floors — is measured in turn, repetition
//! after repetition:
//!
//! * idle RTT: 40 echoes 50 ms apart;
//! * one bulk TCP flow A → B (iperf3, `--secs`): throughput received and the flow's
//!   retransmits (the inner flow's, through an overlay), with echoes every 20 ms from 1 s into
//!   the flow until it ends: RTT under load, average, 99th percentile and maximum (an echo lost
//!   counts as lost, not as a time);
//! * recovery after an outage: during a bulk flow, every packet across the link is dropped for
//!   2 s (a blackhole rule in the middle namespace); the time from the link's return to the
//!   first echo answered (echoes every 10 ms).
//!
//! The table shows medians over `--runs`, throughput also as a ratio to the raw link, and the
//! issue's targets for hypha with PASS/FAIL.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use testbed::wan::{Wan, WanSpec};
use testbed::{ChildGuard, Daemon, Netns, ScratchDir};

use crate::cli::WanArgs;
use crate::measure::{median, parse_iperf};
use crate::routes::start_node;
use crate::run::{iperf_server, ok_in, quiet, wait_for, Transport};

const API: &str = "127.0.0.1:18991";
const TUN: &str = "hywan";
/// The underlay net of the emulated link: 198.18.<NET>.0/24.
const NET: u8 = 230;

/// One emulated link and what hypha must reach on it.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Each direction's `WanSpec`.
    pub spec: &'static str,
    /// The bulk flows' congestion control (`None`: the machine's default).
    pub cc: Option<&'static str>,
    pub target: Target,
}

/// hypha's target against the raw link in the same run.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// RTT under load within `avg_ms` of the raw link's average and `p99_ms` of its p99;
    /// throughput at least `tput` of the raw link's.
    NearRaw { avg_ms: f64, p99_ms: f64, tput: f64 },
    /// RTT under load below the raw link's (queue management beating a bufferbloated
    /// bottleneck).
    BelowRaw,
    /// RTT under load no worse than the raw link's plus `avg_ms`.
    AtMostRawPlus { avg_ms: f64 },
    /// Reported only.
    None,
}

pub const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "lossy",
        about: "200 Mbit/s, 20 ms RTT, 1 % loss",
        spec: "rate=200mbit,delay=10ms,loss=1%",
        cc: None,
        target: Target::NearRaw {
            avg_ms: 5.0,
            p99_ms: 15.0,
            tput: 0.85,
        },
    },
    Scenario {
        name: "lossy-near",
        about: "200 Mbit/s, no added delay, 1 % loss",
        spec: "rate=200mbit,loss=1%",
        cc: None,
        target: Target::NearRaw {
            avg_ms: 3.0,
            p99_ms: f64::INFINITY,
            tput: 0.85,
        },
    },
    Scenario {
        name: "gbit",
        about: "1 Gbit/s, 5 ms RTT, 0.1 % loss",
        spec: "rate=1gbit,delay=2500us,loss=0.1%",
        cc: None,
        target: Target::None,
    },
    Scenario {
        name: "bloat-cubic",
        about: "50 Mbit/s, 80 ms RTT, 0.5 % loss, 1 s bottleneck queue, CUBIC",
        spec: "rate=50mbit,delay=40ms,loss=0.5%,queue=6mb",
        cc: Some("cubic"),
        target: Target::BelowRaw,
    },
    Scenario {
        name: "bloat-bbr",
        about: "50 Mbit/s, 80 ms RTT, 0.5 % loss, 1 s bottleneck queue, BBR",
        spec: "rate=50mbit,delay=40ms,loss=0.5%,queue=6mb",
        cc: Some("bbr"),
        target: Target::AtMostRawPlus { avg_ms: 5.0 },
    },
];

/// One subject: the raw link, a node binary taking hypha's (mycelium's) flags with its links over
/// a transport, or a floor.
struct Subject {
    label: String,
    kind: Kind,
}

enum Kind {
    Raw,
    Node(PathBuf, Transport),
    /// This binary's forwarding floor (`crate::floor`): over TCP (whole super-packets, no
    /// crypto: the cheapest TCP overlay, head-of-line blocking included) or, with `udp`, one
    /// datagram a packet (the floor of a datagram transport).
    Floor {
        bin: PathBuf,
        udp: bool,
    },
}

impl Subject {
    fn bin(&self) -> Option<&PathBuf> {
        match &self.kind {
            Kind::Raw => None,
            Kind::Node(b, _) | Kind::Floor { bin: b, .. } => Some(b),
        }
    }
}

/// The subjects: the raw link, hypha over TCP and over QUIC, the `compare` binaries and, unless
/// `no_floors`, the floors (`own`'s). hypha stays second: the targets judge the subject after the
/// raw link.
fn subjects(hypha: PathBuf, own: &Path, compare: &[PathBuf], no_floors: bool) -> Vec<Subject> {
    let mut subjects = vec![
        Subject {
            label: "raw link".into(),
            kind: Kind::Raw,
        },
        Subject {
            label: "hypha".into(),
            kind: Kind::Node(hypha.clone(), Transport::Tcp),
        },
        Subject {
            label: "hypha quic://".into(),
            kind: Kind::Node(hypha, Transport::Quic),
        },
    ];
    for c in compare {
        subjects.push(Subject {
            label: crate::run::label_of(c),
            kind: Kind::Node(c.clone(), Transport::Tcp),
        });
    }
    if !no_floors {
        for (label, udp) in [("floor tcp", false), ("floor udp", true)] {
            subjects.push(Subject {
                label: label.into(),
                kind: Kind::Floor {
                    bin: own.to_path_buf(),
                    udp,
                },
            });
        }
    }
    subjects
}

/// The floor nodes' overlay addresses (A, B) and the port B listens on.
const FLOOR_A: &str = "fd00:f100::a";
const FLOOR_B: &str = "fd00:f100::b";
const FLOOR_PORT: u16 = 9661;

/// What one repetition of one subject measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub idle_ms: Option<f64>,
    pub mbps: Option<f64>,
    pub retransmits: Option<u64>,
    pub load_avg_ms: Option<f64>,
    pub load_p99_ms: Option<f64>,
    pub load_max_ms: Option<f64>,
    pub load_lost_pct: Option<f64>,
    pub recover_s: Option<f64>,
    pub error: Option<String>,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    name: &'a str,
    about: &'a str,
    spec: &'a str,
    cc: Option<&'a str>,
    subjects: Vec<JsonSubject<'a>>,
}

#[derive(Serialize)]
struct JsonSubject<'a> {
    label: &'a str,
    samples: &'a [Sample],
}

pub fn run(args: &WanArgs) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenario
            .iter()
            .map(|n| {
                SCENARIOS
                    .iter()
                    .find(|s| s.name == n.trim())
                    .copied()
                    .ok_or_else(|| {
                        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                        anyhow!("--scenario: unknown `{n}` (known: {})", names.join(", "))
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    for s in &scenarios {
        s.spec
            .parse::<WanSpec>()
            .map_err(|e| anyhow!("scenario {}: {e}", s.name))?;
    }
    let own = std::env::current_exe().context("cannot find the hypha-bench binary")?;
    let hypha = args
        .binary
        .clone()
        .unwrap_or_else(|| own.with_file_name("hypha"));
    let subjects = subjects(hypha, &own, &args.compare, args.no_floors);
    for bin in subjects.iter().filter_map(Subject::bin) {
        if !testbed::is_executable(bin) {
            bail!("{}: not an executable file", bin.display());
        }
    }
    if let Some(chart) = &args.chart {
        crate::run::check_chart_path(chart)?;
    }
    if !testbed::is_root() {
        bail!("the WAN bench needs root (network namespaces)");
    }
    testbed::require_tools(&[
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("iperf3", "iperf3"),
        ("ss", "iproute2"),
    ])?;
    testbed::watch_signals(|| eprintln!("hypha-bench: interrupted, cleaning up …"))?;
    let work = ScratchDir::new("hypha-bench-wan")?;
    let mut all: Vec<Vec<Vec<Sample>>> = Vec::new();
    for sc in &scenarios {
        let mut per_subject: Vec<Vec<Sample>> = vec![Vec::new(); subjects.len()];
        for rep in 1..=args.runs {
            for (i, s) in subjects.iter().enumerate() {
                testbed::check_interrupted()?;
                eprintln!("[{} {rep}/{}] {} …", sc.name, args.runs, s.label);
                let sample = match one_run(sc, s, args.secs, work.path(), rep) {
                    Ok(x) => x,
                    Err(e) => {
                        testbed::check_interrupted()?;
                        eprintln!(
                            "[{} {rep}/{}] {} failed: {e:#}",
                            sc.name, args.runs, s.label
                        );
                        Sample {
                            error: Some(format!("{e:#}")),
                            ..Sample::default()
                        }
                    }
                };
                eprintln!("    {}", one_line(&sample));
                per_subject[i].push(sample);
            }
        }
        all.push(per_subject);
    }
    drop(work);
    let labels: Vec<&str> = subjects.iter().map(|s| s.label.as_str()).collect();
    let text = table(&scenarios, &labels, &all, args.runs, args.secs);
    if let Some(path) = &args.chart {
        crate::chart::write_png(&chart(&scenarios, &labels, &all, args.runs), path)
            .with_context(|| format!("cannot write the chart {}", path.display()))?;
        eprintln!("chart written to {}", path.display());
    }
    if args.json {
        eprint!("\n{text}");
        let json: Vec<JsonScenario> = scenarios
            .iter()
            .zip(&all)
            .map(|(sc, per)| JsonScenario {
                name: sc.name,
                about: sc.about,
                spec: sc.spec,
                cc: sc.cc,
                subjects: labels
                    .iter()
                    .zip(per)
                    .map(|(label, samples)| JsonSubject { label, samples })
                    .collect(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

fn one_line(s: &Sample) -> String {
    if let Some(e) = &s.error {
        return format!("failed: {e}");
    }
    format!(
        "{} Mbit/s, {} retransmits; rtt idle {} ms, under load avg {} / p99 {} / max {} ms \
         ({} lost); back {} s after the outage",
        fmt(s.mbps, 1),
        s.retransmits.map_or("-".into(), |r| r.to_string()),
        fmt(s.idle_ms, 2),
        fmt(s.load_avg_ms, 1),
        fmt(s.load_p99_ms, 1),
        fmt(s.load_max_ms, 1),
        s.load_lost_pct.map_or("-".into(), |l| format!("{l:.1} %")),
        fmt(s.recover_s, 2),
    )
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Where the flows go: from A to B's address (B's underlay address, or its overlay address).
struct Ends<'a> {
    a: &'a Netns,
    b: &'a Netns,
    addr: String,
    v6: bool,
}

fn one_run(sc: &Scenario, s: &Subject, secs: u32, work: &Path, rep: u32) -> anyhow::Result<Sample> {
    let spec: WanSpec = sc.spec.parse().map_err(|e| anyhow!("{e}"))?;
    let a = Netns::new("wb-a")?;
    let b = Netns::new("wb-b")?;
    let wan = Wan::between(&a, &b, NET, spec.clone(), spec)?;
    let mut nodes: Vec<Daemon> = Vec::new();
    let ends = match &s.kind {
        Kind::Raw => Ends {
            a: &a,
            b: &b,
            addr: wan.addrs[1].to_string(),
            v6: false,
        },
        Kind::Floor { bin, udp } => {
            let listen = format!("{}:{FLOOR_PORT}", wan.addrs[0]);
            let tag = format!("{}-{}-{rep}", sc.name, nodes_tag(&s.label));
            for (ns, addr, side, mode) in [
                (&a, FLOOR_A, "a", "--listen"),
                (&b, FLOOR_B, "b", "--connect"),
            ] {
                let mut cmd = ns.command(bin);
                cmd.args(["floor", "--tun", TUN, "--addr", addr, mode, &listen]);
                if *udp {
                    cmd.arg("--udp");
                }
                let log = work.join(format!("{tag}-{side}.log"));
                nodes.push(Daemon::start(&format!("floor {side}"), cmd, &log)?);
                if side == "a" {
                    // B's dial finds A listening.
                    let port = format!(":{FLOOR_PORT}");
                    let up = || ok_in(&a, "ss", &["-Htuln"]).is_ok_and(|o| o.contains(&port));
                    if !wait_for(Duration::from_secs(10), up)? {
                        bail!("floor A did not listen within 10 s");
                    }
                }
            }
            overlay_ends(&a, &b, FLOOR_B.into(), &mut nodes, Duration::from_secs(20))?
        }
        Kind::Node(bin, transport) => {
            let tag = format!("{}-{}-{rep}", sc.name, nodes_tag(&s.label));
            let node = |ns, side: &str, peer| {
                let file = format!("{tag}-{side}");
                start_node(bin, ns, work, &file, TUN, API, *transport, peer)
            };
            nodes.push(node(&a, "a", None)?.0);
            let (nb, b_addr) = node(&b, "b", Some(wan.addrs[0]))?;
            nodes.push(nb);
            overlay_ends(&a, &b, b_addr, &mut nodes, Duration::from_secs(45))?
        }
    };
    let mut out = Sample::default();
    let idle = pings(&ends, 40, "0.05", Duration::from_secs(30))?;
    out.idle_ms = median(&idle.rtts_ms);

    // The bulk flow, with echoes from 1 s in until it ends.
    let (_server, mut flow, json) = bulk_flow(&ends, 5401, secs, sc.cc, work)?;
    std::thread::sleep(Duration::from_secs(1));
    let n = (secs.saturating_sub(1) * 50).max(10);
    let loaded = pings(&ends, n, "0.02", Duration::from_secs(u64::from(secs) + 30))?;
    let status = flow.wait_timeout(Duration::from_secs(u64::from(secs) + 20))?;
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    let x = parse_iperf(&report).map_err(|e| anyhow!("the bulk flow failed ({status}): {e}"))?;
    out.mbps = Some(x.gbps * 1000.0);
    out.retransmits = retransmits(&report);
    let mut sorted = loaded.rtts_ms.clone();
    sorted.sort_by(f64::total_cmp);
    out.load_avg_ms =
        (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64);
    out.load_p99_ms = percentile(&sorted, 0.99);
    out.load_max_ms = sorted.last().copied();
    out.load_lost_pct = Some(100.0 * f64::from(n - sorted.len() as u32) / f64::from(n));

    out.recover_s = outage(&ends, &wan, work, secs, sc.cc)?;
    for n in &mut nodes {
        n.check_running()?;
        n.stop(Duration::from_secs(5));
    }
    drop(wan);
    Ok(out)
}

/// The ends of the flows through an overlay (B's overlay address), once A reaches B over it
/// within `wait`.
fn overlay_ends<'a>(
    a: &'a Netns,
    b: &'a Netns,
    addr: String,
    nodes: &mut [Daemon],
    wait: Duration,
) -> anyhow::Result<Ends<'a>> {
    let ends = Ends {
        a,
        b,
        addr,
        v6: true,
    };
    if !wait_for(wait, || ping_ok(&ends))? {
        for n in nodes {
            n.check_running()?;
        }
        bail!("B not reachable over the overlay within {wait:?}");
    }
    Ok(ends)
}

/// Drops everything across the link for 2 s during a bulk flow; seconds from the link's return
/// to the first echo answered after it (`None`: none within 10 s).
fn outage(
    ends: &Ends,
    wan: &Wan,
    work: &Path,
    secs: u32,
    cc: Option<&str>,
) -> anyhow::Result<Option<f64>> {
    let _flow = bulk_flow(ends, 5402, secs + 15, cc, work)?;
    std::thread::sleep(Duration::from_secs(1));
    // 1 s before the outage, 2 s of it, up to 10 s after.
    let count = "1300";
    let mut args = vec!["-D", "-n", "-c", count, "-i", "0.01", "-W", "1"];
    if ends.v6 {
        args.insert(0, "-6");
    }
    args.push(&ends.addr);
    let mut ping = ends.a.command("ping");
    ping.args(&args).stdout(std::process::Stdio::piped());
    let child = ping.spawn().context("ping")?;
    std::thread::sleep(Duration::from_secs(1));
    let net = format!("198.18.{NET}.0/24");
    let rule = ["rule", "add", "priority", "5", "to", &net, "blackhole"];
    wan.middle().ip(&rule)?;
    std::thread::sleep(Duration::from_secs(2));
    wan.middle()
        .ip(&["rule", "del", "priority", "5", "to", &net, "blackhole"])?;
    let back = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let out = child.wait_with_output().context("ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            ts.parse::<f64>().ok()
        })
        .find(|&ts| ts >= back);
    Ok(first.map(|ts| ts - back))
}

/// A bulk TCP flow A → B for `secs` (congestion control `cc`), started: its server, its client
/// and the file its JSON report goes to.
fn bulk_flow(
    ends: &Ends,
    port: u16,
    secs: u32,
    cc: Option<&str>,
    work: &Path,
) -> anyhow::Result<(ChildGuard, ChildGuard, PathBuf)> {
    let server = iperf_server(ends.b, port)?;
    let json = work.join(format!("flow-{}.json", next_file()));
    let logfile = json.to_string_lossy().into_owned();
    let (p, t) = (port.to_string(), secs.to_string());
    let mut args = vec![
        "-c",
        &ends.addr,
        "-p",
        &p,
        "-t",
        &t,
        "-J",
        "--logfile",
        &logfile,
    ];
    if let Some(cc) = cc {
        args.extend(["-C", cc]);
    }
    let client = quiet(ends.a.command("iperf3").args(args))?;
    Ok((server, client, json))
}

/// A fresh number for a file name (iperf3's `--logfile` appends to what is there).
fn next_file() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Echo replies: their RTTs, ms.
struct Echoes {
    rtts_ms: Vec<f64>,
}

/// `count` echoes `interval` seconds apart from A to B's address; the RTT of each answered one.
fn pings(ends: &Ends, count: u32, interval: &str, timeout: Duration) -> anyhow::Result<Echoes> {
    let c = count.to_string();
    let mut args = vec!["-n", "-c", &c, "-i", interval, "-W", "2"];
    if ends.v6 {
        args.insert(0, "-6");
    }
    args.push(&ends.addr);
    let out = testbed::run(ends.a.command("ping").args(&args), timeout)?;
    let rtts_ms = parse_rtts(&out.stdout);
    if rtts_ms.is_empty() {
        bail!("no echo answered: {}", out.why());
    }
    Ok(Echoes { rtts_ms })
}

/// The `time=… ms` of every reply line of ping's output.
fn parse_rtts(text: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The `q` quantile of sorted samples (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The sender's retransmits in an iperf3 `--json` report.
fn retransmits(report: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(report).ok()?;
    v["end"]["sum_sent"]["retransmits"].as_u64()
}

fn ping_ok(ends: &Ends) -> bool {
    let mut args = vec!["-c", "1", "-W", "1"];
    if ends.v6 {
        args.insert(0, "-6");
    }
    args.push(&ends.addr);
    ok_in(ends.a, "ping", &args).is_ok()
}

fn nodes_tag(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The table: one block per scenario, one row per subject, medians.
fn table(
    scenarios: &[Scenario],
    labels: &[&str],
    all: &[Vec<Vec<Sample>>],
    runs: u32,
    secs: u32,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "hypha-bench wan: medians of {runs} runs; one TCP flow A -> B for {secs} s, echoes every \
         20 ms during it; outage: 2 s of total loss during a flow"
    );
    for (sc, per) in scenarios.iter().zip(all) {
        let _ = writeln!(
            t,
            "\n{}: {} (each way: {}{})",
            sc.name,
            sc.about,
            sc.spec,
            sc.cc
                .map_or(String::new(), |c| format!("; congestion control {c}"))
        );
        let _ = writeln!(
            t,
            "{:<14} {:>10} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>10}",
            "subject",
            "Mbit/s",
            "x raw",
            "retrans",
            "rtt idle",
            "load avg",
            "load p99",
            "load max",
            "lost",
            "recovery"
        );
        let med = |s: &[Sample], f: &dyn Fn(&Sample) -> Option<f64>| {
            median(&s.iter().filter_map(f).collect::<Vec<_>>())
        };
        let raw_mbps = med(&per[0], &|x| x.mbps);
        for (label, samples) in labels.iter().zip(per) {
            let mbps = med(samples, &|x| x.mbps);
            let ratio = match (mbps, raw_mbps) {
                (Some(m), Some(r)) if r > 0.0 => format!("{:.2}", m / r),
                _ => "-".into(),
            };
            let _ = writeln!(
                t,
                "{:<14} {:>10} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>10}",
                label,
                fmt(mbps, 1),
                ratio,
                fmt(med(samples, &|x| x.retransmits.map(|r| r as f64)), 0),
                fmt(med(samples, &|x| x.idle_ms), 2),
                fmt(med(samples, &|x| x.load_avg_ms), 1),
                fmt(med(samples, &|x| x.load_p99_ms), 1),
                fmt(med(samples, &|x| x.load_max_ms), 1),
                med(samples, &|x| x.load_lost_pct).map_or("-".into(), |l| format!("{l:.1}%")),
                med(samples, &|x| x.recover_s).map_or("-".into(), |r| format!("{r:.2} s")),
            );
            let failed = samples.iter().filter(|s| s.error.is_some()).count();
            if failed > 0 {
                let _ = writeln!(t, "{:<14} {failed} of {} runs failed", "", samples.len());
            }
        }
        // The targets, for hypha over each kind of link.
        for (label, h) in labels.iter().zip(per).skip(1) {
            if let (Some(raw), "hypha" | "hypha quic://") = (per.first(), *label) {
                let _ = writeln!(t, "target ({label}): {}", verdict(sc.target, raw, h, &med));
            }
        }
    }
    t
}

/// The medians as a chart: throughput, RTT under load (average and p99) and the recovery after
/// the outage, one group of bars per scenario, one bar per subject.
fn chart(
    scenarios: &[Scenario],
    labels: &[&str],
    all: &[Vec<Vec<Sample>>],
    runs: u32,
) -> crate::chart::Chart {
    let panel = |title: &str, unit: &str, f: &dyn Fn(&Sample) -> Option<f64>| crate::chart::Panel {
        title: title.to_owned(),
        unit: unit.to_owned(),
        categories: scenarios.iter().map(|s| s.name.to_owned()).collect(),
        series: labels
            .iter()
            .enumerate()
            .map(|(i, label)| crate::chart::Series {
                name: (*label).to_owned(),
                values: all
                    .iter()
                    .map(|per| median(&per[i].iter().filter_map(f).collect::<Vec<_>>()))
                    .collect(),
            })
            .collect(),
    };
    crate::chart::Chart {
        title: "hypha bench wan".to_owned(),
        subtitle: format!("emulated WAN links, medians of {runs} runs"),
        panels: vec![
            panel("Throughput", "Mbit/s", &|x| x.mbps),
            panel("RTT under load, average", "ms", &|x| x.load_avg_ms),
            panel("RTT under load, p99", "ms", &|x| x.load_p99_ms),
            panel("Recovery after a 2 s outage", "s", &|x| x.recover_s),
        ],
    }
}

type Med<'a> = dyn Fn(&[Sample], &dyn Fn(&Sample) -> Option<f64>) -> Option<f64> + 'a;

fn verdict(target: Target, raw: &[Sample], h: &[Sample], med: &Med) -> String {
    let (ra, rp, rm) = (
        med(raw, &|x| x.load_avg_ms),
        med(raw, &|x| x.load_p99_ms),
        med(raw, &|x| x.mbps),
    );
    let (ha, hp, hm) = (
        med(h, &|x| x.load_avg_ms),
        med(h, &|x| x.load_p99_ms),
        med(h, &|x| x.mbps),
    );
    let pf = |ok: bool| if ok { "PASS" } else { "FAIL" };
    match (target, ra, rp, rm, ha, hp, hm) {
        (Target::None, ..) => "none (reported only)".into(),
        (
            Target::NearRaw {
                avg_ms,
                p99_ms,
                tput,
            },
            Some(ra),
            Some(rp),
            Some(rm),
            Some(ha),
            Some(hp),
            Some(hm),
        ) => {
            let p99 = if p99_ms.is_finite() {
                format!(
                    ", p99 <= raw + {p99_ms} ms: {hp:.1} vs {:.1} {}",
                    rp + p99_ms,
                    pf(hp <= rp + p99_ms)
                )
            } else {
                String::new()
            };
            format!(
                "avg <= raw + {avg_ms} ms: {ha:.1} vs {:.1} {}{p99}; throughput >= {tput}x raw: \
                 {:.2}x {}",
                ra + avg_ms,
                pf(ha <= ra + avg_ms),
                hm / rm,
                pf(hm >= tput * rm)
            )
        }
        (Target::BelowRaw, Some(ra), _, _, Some(ha), ..) => {
            format!("avg below raw: {ha:.1} vs {ra:.1} ms {}", pf(ha < ra))
        }
        (Target::AtMostRawPlus { avg_ms }, Some(ra), _, _, Some(ha), ..) => format!(
            "avg <= raw + {avg_ms} ms: {ha:.1} vs {:.1} ms {}",
            ra + avg_ms,
            pf(ha <= ra + avg_ms)
        ),
        _ => "no figures".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_spec_parses() {
        for s in SCENARIOS {
            assert!(s.spec.parse::<WanSpec>().is_ok(), "{}", s.name);
        }
    }

    #[test]
    fn rtts_and_percentiles() {
        let text = "PING x\n64 bytes from 198.18.1.2: icmp_seq=1 ttl=63 time=20.5 ms\n\
                    [1.5] 64 bytes from fd00::1: icmp_seq=2 ttl=64 time=3 ms\nno answer\n";
        assert_eq!(parse_rtts(text), vec![20.5, 3.0]);
        let sorted: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.99), Some(198.0));
        assert_eq!(percentile(&sorted[..1], 0.99), Some(1.0));
        assert_eq!(percentile(&[], 0.99), None);
    }

    #[test]
    fn the_chart_shows_medians_per_scenario_and_renders() {
        let sample = |mbps: f64, avg: f64| Sample {
            mbps: Some(mbps),
            load_avg_ms: Some(avg),
            load_p99_ms: Some(avg * 2.0),
            recover_s: Some(0.5),
            ..Sample::default()
        };
        let all = vec![vec![
            vec![sample(190.0, 4.0), sample(180.0, 5.0), sample(185.0, 6.0)],
            vec![sample(160.0, 70.0), Sample::default(), sample(170.0, 90.0)],
        ]];
        let c = chart(&SCENARIOS[..1], &["raw link", "hypha"], &all, 3);
        assert_eq!(c.panels.len(), 4);
        assert_eq!(c.panels[0].categories, vec!["lossy"]);
        assert_eq!(c.panels[0].series[0].values, vec![Some(185.0)]);
        // A failed run has no figure and is left out of the median.
        assert_eq!(c.panels[1].series[1].values, vec![Some(80.0)]);
        let (w, h, px) = crate::chart::render(&c).unwrap();
        assert_eq!(px.len(), (w * h * 3) as usize);
    }

    #[test]
    fn hypha_runs_over_tcp_and_over_quic() {
        let own = Path::new("/bin/hypha-bench");
        let s = subjects("/bin/hypha".into(), own, &["/opt/mycelium".into()], false);
        let labels: Vec<&str> = s.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "raw link",
                "hypha",
                "hypha quic://",
                "mycelium",
                "floor tcp",
                "floor udp"
            ]
        );
        // hypha over TCP stays second: the one the targets judge.
        let transport = |i: usize| match &s[i].kind {
            Kind::Node(bin, t) => (bin.to_str().unwrap(), *t),
            _ => panic!("{} is not a node", s[i].label),
        };
        assert_eq!(transport(1), ("/bin/hypha", Transport::Tcp));
        assert_eq!(transport(2), ("/bin/hypha", Transport::Quic));
        assert_eq!(transport(3), ("/opt/mycelium", Transport::Tcp));
        // --no-floors: the raw link and the nodes.
        let s = subjects("/bin/hypha".into(), own, &[], true);
        assert_eq!(s.len(), 3);
        assert!(matches!(s[0].kind, Kind::Raw));
    }

    #[test]
    fn iperf_retransmits() {
        let r = r#"{"end":{"sum_sent":{"retransmits":42}}}"#;
        assert_eq!(retransmits(r), Some(42));
        assert_eq!(retransmits("{}"), None);
    }
}
