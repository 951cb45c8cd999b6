//! The benchmark of the node's data path (`hypha-bench`, or `hypha bench`), run as root on one
//! machine.
//!
//! # Lab
//!
//! A `testbed::Lab` of three network namespaces `hy-bench-a-<pid>-<n>`, `-b-`, `-c-`, joined by
//! veth pairs A–B (198.18.220.1/24 – .2) and B–C (198.18.221.1/24 – .2), loopback up. The underlay
//! is routed A ↔ C through B (IPv4 forwarding on in B's namespace only), so raw veth has a chain
//! figure too. The namespaces are built once and every subject runs in them. Guards delete them
//! (and the veths with them), stop every process the bench started and remove its scratch
//! directory, on success, on error, on panic and on Ctrl-C (`testbed::watch_signals`:
//! SIGINT/SIGTERM only set a flag that every wait checks; the children run in their own process
//! group, so a terminal's Ctrl-C reaches the bench alone and the nodes get an orderly SIGTERM).
//! Namespaces and scratch directories left by a bench that was SIGKILLed are swept at the next
//! start, with what still runs in them.
//!
//! # Subjects
//!
//! * `veth`: no overlay; iperf3 and ping between the underlay addresses — the physical reference.
//! * `hypha`: the hypha binary (the one beside this binary, or `--binary`) with its default flags:
//!   offloads, end-to-end sessions and super-frames (a whole TUN super-packet sealed as one frame
//!   once a probe crossed the path).
//! * `hypha quic://`: the same binary with its default flags, its nodes linked over QUIC instead
//!   of TCP (`--peers quic://…:9651`, the UDP listener on the same port number): the same data
//!   path over the other transport (which frames go as datagrams and which on the link's stream
//!   is the link's choice, `node::link::quic`). Shown, not judged. The veths keep their MTU of
//!   1500 (the bench never raises it), so QUIC's packets and datagrams have the size they have
//!   on real paths.
//! * `hypha --no-sessions`: the same binary on mycelium's wire only (every 1,400 bytes split,
//!   sealed and framed), offloads on.
//! * `hypha --no-offload`: the same binary on the plain TUN path.
//! * `floor`: the forwarding floor ([`crate::floor`], `hypha-bench floor`): whole TUN reads carried over
//!   plain TCP with no crypto, no 1400-byte packets and no routing protocol — what every user-space
//!   TUN + TCP overlay pays at least on this machine.
//! * `floor+aes`: the same plus AES-256-GCM over every 1400 bytes, opened and checked at the far
//!   end (`floor --seal`) — what every node of this protocol pays at least. The target
//!   column shows both floors' figures beside hypha's, so a target the floors miss as well is
//!   visibly beyond the machine, not beyond hypha.
//! * one per `--compare PATH`, labelled with the file name: any node that takes mycelium's flags.
//!
//! Every node gets its own key file (`--key-file K generate-keys`; its overlay address from
//! `inspect --json`) and runs as `BIN --key-file K [--peers tcp://…:9651] --disable-peer-discovery
//! --tun-name hyb<n> --api-addr 127.0.0.1:18989` plus `--disable-quic` when the binary's `--help`
//! lists it (the QUIC subject: `--peers quic://…:9651` and QUIC left on). B dials nobody; A dials
//! B, C dials B: A and C only reach each other through B. Floor nodes run as `hypha-bench floor
//! --tun hyb<n> --addr fd00:f100::a|b|c` with `--connect` (A, C) or `--listen` on both of B's
//! underlay addresses, the same port. Nodes run through `ip netns exec`, which execs the binary
//! in place, so the child's pid is the node's (checked through `/proc/<pid>/exe` before any
//! figure is read from `/proc/<pid>`).
//!
//! # One repetition of one subject
//!
//! Nodes start fresh for every subject in every repetition: A and B first, and the bench waits
//! (by pinging, never by sleeping) until A reaches B over the overlay. Then, in order:
//!
//! 1. `tcp1`: iperf3, one TCP stream A → B for `--secs`. The CPU time (utime + stime over all
//!    threads, `/proc/<pid>/stat`) of nodes A and B is read before and after: "node CPU s/Gbit" is
//!    the busiest node's CPU seconds per Gbit received (also summed over both nodes), and
//!    "Gbit per node-CPU-s" its inverse for the busiest node.
//! 2. `fixed`: one TCP stream A → B paced to 1.2 Gbit/s (`-b 1200000000`, iperf3's own pacing)
//!    for `--secs`, a rate every overlay subject carries here, so that CPU compares the same
//!    work: "node CPU all, 1.2G" is the CPU seconds of nodes A and B together per Gbit received,
//!    read exactly as for `tcp1`. Raw veth runs the flow too (its received rate is shown) but
//!    has no nodes.
//! 3. `tcp4`: the same as `tcp1` with four parallel streams (`-P 4`).
//! 4. `udp`: iperf3 UDP, 1200-byte datagrams, unlimited rate (`-u -l 1200 -b 0`, the same for raw
//!    veth); the received rate and the loss. The nodes' peak RSS is reset before it
//!    (`/proc/<pid>/clear_refs` 5) and read after it (`VmHWM`): "peak RSS, udp flood" is the larger
//!    of A's and B's.
//! 5. `rtt`: ping A → B, 100 echoes 10 ms apart, idle; then again (`50/s` for `--secs`) while a bulk
//!    iperf3 TCP flow A → B runs (started `--secs` + 2 s long, pings begin once its data
//!    connection is up). The average RTT of each.
//! 6. `chain`: node C starts, the bench waits until A reaches C through B, then one TCP stream
//!    A → C.
//!
//! "Peak RSS, whole run" is the largest peak of A, B and C over the whole repetition. The nodes
//! stop (SIGTERM) before the next subject starts. iperf3 servers are one-shot (`-s -1`) on a fresh
//! port per measurement; every client is killed if it has not finished `--secs` + 15 s after its
//! start, so a hung overlay cannot hang the bench. A subject whose nodes do not come up is
//! reported as failed for that repetition, with the node's last log lines, and the other
//! subjects still run; so is any single failed measurement.
//!
//! # Fairness and output
//!
//! Subjects are interleaved within each repetition (veth, hypha, quic, no-sessions, no-offload,
//! floors, compare…; then again), so that a noisy machine affects them alike. Each figure is the
//! median of `--runs` repetitions; throughputs are also shown as a ratio to raw veth. The target
//! column judges hypha with its default flags (sessions on, TCP links), from the medians of the
//! same run: one TCP stream ≥ 0.40 × raw veth and ≥ 0.80 × the floor's; ≥ 4 Gbit per
//! node-CPU-second; at the fixed rate ≤ 0.2 CPU-seconds per Gbit (both nodes) and ≤ 1.30 × the
//! floor's; the chain ≥ 0.90 × its own 2-node figure; UDP ≥ 0.90 × raw veth's; RTT under bulk TCP
//! ≤ 1 ms; peak RSS per node ≤ 32 MB under the UDP flood. Both floors' figures are shown beside (a
//! target relative to the floor has none for the floor itself). Progress lines go to stderr; stdout
//! holds the table, or with `--json` the same results with every sample (the table then goes to
//! stderr); `--chart FILE` draws the medians as a PNG.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use std::process::Stdio;

use testbed::{ChildGuard, Daemon, Lab, Netns, ScratchDir};

use crate::cli::BenchArgs;
use crate::measure::{cpu_seconds, parse_iperf, peak_rss_mb, reset_peak_rss, Iperf};
use crate::report::{self, Meta, Metric, RepDetail, Report, Role, SubjectResult};

/// The underlay /24s of the links A–B and B–C: 198.18.220.0/24 and 198.18.221.0/24.
const NETS: [u8; 2] = [220, 221];

/// An error once the bench is interrupted (Ctrl-C); every step checks it.
fn check_stop() -> anyhow::Result<()> {
    testbed::check_interrupted()?;
    Ok(())
}

/// Polls `cond` until it holds (true) or `timeout` passes (false); an error once the bench is
/// interrupted.
pub(crate) fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<bool> {
    let held = testbed::wait_until(timeout, || testbed::interrupted() || cond()).is_ok();
    check_stop()?;
    Ok(held)
}

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Tcp1,
    Fixed,
    Tcp4,
    Udp,
    Rtt,
    Chain,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::Tcp1,
        Scenario::Fixed,
        Scenario::Tcp4,
        Scenario::Udp,
        Scenario::Rtt,
        Scenario::Chain,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Tcp1 => "tcp1",
            Scenario::Fixed => "fixed",
            Scenario::Tcp4 => "tcp4",
            Scenario::Udp => "udp",
            Scenario::Rtt => "rtt",
            Scenario::Chain => "chain",
        }
    }

    fn metrics(self) -> &'static [Metric] {
        match self {
            Scenario::Tcp1 => &[
                Metric::Tcp1,
                Metric::CpuPerGbit,
                Metric::CpuPerGbitSum,
                Metric::GbitPerCpu,
            ],
            Scenario::Fixed => &[Metric::FixedRate, Metric::FixedCpu],
            Scenario::Tcp4 => &[Metric::Tcp4],
            Scenario::Udp => &[Metric::Udp, Metric::UdpLoss, Metric::RssUdp],
            Scenario::Rtt => &[Metric::RttIdle, Metric::RttLoad],
            Scenario::Chain => &[Metric::Chain],
        }
    }
}

/// The transport of a subject's peer links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `tcp://`; the nodes run with `--disable-quic` where the binary has it, so that no QUIC
    /// listener idles beside the links being measured.
    Tcp,
    /// `quic://`, to the UDP listener on the same port number as TCP's.
    Quic,
}

impl Transport {
    /// A node's link flags: `--peers` with the URI of the node it dials (`peer`, listening on
    /// `port`), if any, and `--disable-quic` on TCP when the binary has it (`has_disable_quic`).
    pub(crate) fn node_args(
        self,
        peer: Option<IpAddr>,
        port: u16,
        has_disable_quic: bool,
    ) -> Vec<String> {
        let scheme = match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        };
        let mut args = Vec::new();
        if let Some(ip) = peer {
            args.extend(["--peers".to_owned(), format!("{scheme}://{ip}:{port}")]);
        }
        if self == Transport::Tcp && has_disable_quic {
            args.push("--disable-quic".to_owned());
        }
        args
    }
}

/// One thing being measured.
#[derive(Clone, Debug, PartialEq)]
struct Subject {
    label: String,
    role: Role,
    /// The node binary; `None` for raw veth.
    bin: Option<PathBuf>,
    /// Flags of this subject on top of the common ones.
    flags: Vec<&'static str>,
}

impl Subject {
    fn transport(&self) -> Transport {
        if self.role == Role::HyphaQuic {
            Transport::Quic
        } else {
            Transport::Tcp
        }
    }

    fn command(&self) -> Option<String> {
        let bin = self.bin.as_ref()?;
        let mut s = bin.display().to_string();
        for f in &self.flags {
            s.push(' ');
            s.push_str(f);
        }
        Some(s)
    }
}

/// What a run will do, from the arguments, checked before anything is built.
#[derive(Debug)]
struct Plan {
    subjects: Vec<Subject>,
    scenarios: Vec<Scenario>,
    runs: u32,
    secs: u32,
    binary: PathBuf,
}

/// The subjects for the hypha `binary`, the floor (`floor`, this binary) and the `--compare`
/// binaries, labels made unique.
fn subjects(binary: &Path, floor: &Path, compare: &[PathBuf]) -> Vec<Subject> {
    let mut out = vec![
        Subject {
            label: "veth".into(),
            role: Role::Veth,
            bin: None,
            flags: vec![],
        },
        Subject {
            label: "hypha".into(),
            role: Role::Hypha,
            bin: Some(binary.to_path_buf()),
            flags: vec![],
        },
        Subject {
            label: "hypha quic://".into(),
            role: Role::HyphaQuic,
            bin: Some(binary.to_path_buf()),
            flags: vec![],
        },
        Subject {
            label: "hypha --no-sessions".into(),
            role: Role::HyphaNoSessions,
            bin: Some(binary.to_path_buf()),
            flags: vec!["--no-sessions"],
        },
        Subject {
            label: "hypha --no-offload".into(),
            role: Role::HyphaNoOffload,
            bin: Some(binary.to_path_buf()),
            flags: vec!["--no-offload"],
        },
        Subject {
            label: "floor".into(),
            role: Role::Floor,
            bin: Some(floor.to_path_buf()),
            flags: vec!["floor"],
        },
        Subject {
            label: "floor+aes".into(),
            role: Role::SealedFloor,
            bin: Some(floor.to_path_buf()),
            flags: vec!["floor", "--seal"],
        },
    ];
    for c in compare {
        let base = label_of(c);
        let mut label = base.clone();
        let mut n = 2;
        while out.iter().any(|s| s.label == label) {
            label = format!("{base}-{n}");
            n += 1;
        }
        out.push(Subject {
            label,
            role: Role::Compare,
            bin: Some(c.clone()),
            flags: vec![],
        });
    }
    out
}

/// Refuses a `--chart` path whose directory does not exist, before anything is measured.
pub(crate) fn check_chart_path(chart: &Path) -> anyhow::Result<()> {
    let dir = chart.parent().filter(|d| !d.as_os_str().is_empty());
    if dir.is_some_and(|d| !d.is_dir()) {
        bail!("--chart {}: no such directory", chart.display());
    }
    Ok(())
}

/// How a `--compare` binary is named in tables: its file name.
pub(crate) fn label_of(bin: &Path) -> String {
    bin.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| bin.display().to_string())
}

/// Applies `--only`: names of subjects and of scenarios; an empty side means all of it.
fn select(only: &[String], all: Vec<Subject>) -> anyhow::Result<(Vec<Subject>, Vec<Scenario>)> {
    let mut subj = vec![false; all.len()];
    let mut scen = vec![false; Scenario::ALL.len()];
    for raw in only {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        if let Some(i) = Scenario::ALL.iter().position(|s| s.name() == name) {
            scen[i] = true;
            continue;
        }
        let hits: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, s)| match name {
                "veth" => s.role == Role::Veth,
                "hypha" => s.role == Role::Hypha,
                "quic" => s.role == Role::HyphaQuic,
                "no-sessions" => s.role == Role::HyphaNoSessions,
                "no-offload" => s.role == Role::HyphaNoOffload,
                "floor" => s.role == Role::Floor,
                "floor+aes" => s.role == Role::SealedFloor,
                "compare" => s.role == Role::Compare,
                _ => s.role == Role::Compare && s.label == name,
            })
            .map(|(i, _)| i)
            .collect();
        if hits.is_empty() {
            let compares: Vec<&str> = all
                .iter()
                .filter(|s| s.role == Role::Compare)
                .map(|s| s.label.as_str())
                .collect();
            bail!(
                "--only: unknown name '{name}' (subjects: veth, hypha, quic, no-sessions, \
                 no-offload, floor, floor+aes, compare{}{}; scenarios: tcp1, fixed, tcp4, chain, \
                 udp, rtt)",
                if compares.is_empty() { "" } else { ", " },
                compares.join(", ")
            );
        }
        for i in hits {
            subj[i] = true;
        }
    }
    let any_subj = subj.iter().any(|&x| x);
    let any_scen = scen.iter().any(|&x| x);
    let subjects = all
        .into_iter()
        .zip(subj)
        .filter(|(_, keep)| *keep || !any_subj)
        .map(|(s, _)| s)
        .collect();
    let scenarios = Scenario::ALL
        .into_iter()
        .zip(scen)
        .filter(|(_, keep)| *keep || !any_scen)
        .map(|(s, _)| s)
        .collect();
    Ok((subjects, scenarios))
}

impl Plan {
    /// Checks the arguments, the binaries, root and the tools, in that order; builds nothing.
    fn new(args: &BenchArgs) -> anyhow::Result<Plan> {
        // The floor is this binary's hidden `floor` subcommand.
        let own = std::env::current_exe().context("cannot find the hypha-bench binary")?;
        let binary = match &args.binary {
            Some(b) => b.clone(),
            None => own.with_file_name("hypha"),
        };
        for c in &args.compare {
            if !testbed::is_executable(c) {
                bail!("--compare {}: not an executable file", c.display());
            }
        }
        let (mut subjects, scenarios) = select(&args.only, subjects(&binary, &own, &args.compare))?;
        if !testbed::is_executable(&binary) {
            if args.binary.is_some() {
                bail!("--binary {}: not an executable file", binary.display());
            }
            bail!(
                "no hypha binary beside this one ({}); build it with `cargo build --release -p \
                 hypha` or name one with --binary PATH",
                binary.display()
            );
        }
        // Labels keep the names given; the nodes run the files those names resolve to, so that
        // `/proc/<pid>/exe` can be checked against them.
        for s in &mut subjects {
            if let Some(bin) = &mut s.bin {
                *bin = std::fs::canonicalize(&*bin)
                    .with_context(|| format!("cannot resolve {}", bin.display()))?;
            }
        }
        if let Some(chart) = &args.chart {
            check_chart_path(chart)?;
        }
        if !testbed::is_root() {
            bail!("the bench creates network namespaces: run it as root");
        }
        testbed::require_tools(&[
            ("ip", "iproute2"),
            ("ss", "iproute2"),
            ("iperf3", "iperf3"),
            ("ping", "iputils-ping"),
        ])?;
        Ok(Plan {
            subjects,
            scenarios,
            runs: args.runs,
            secs: args.secs,
            binary,
        })
    }

    fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut m: Vec<Metric> = self
            .scenarios
            .iter()
            .flat_map(|s| s.metrics().iter().copied())
            .collect();
        m.push(Metric::RssPeak);
        m
    }
}

/// Runs the bench described by `args` and prints its table (or JSON); see the module docs.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    // From here on, Ctrl-C (SIGINT) and SIGTERM only make every wait give up; the guards of the
    // lab, the nodes and the scratch directory then clean up as `run` returns.
    testbed::watch_signals(|| eprintln!("hypha-bench: interrupted, cleaning up …"))?;
    let meta = Meta {
        date: utc_now(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: load_average(),
        runs: plan.runs,
        secs: plan.secs,
        binary: plan.binary.display().to_string(),
        scenarios: plan.scenarios.iter().map(|s| s.name()).collect(),
    };
    let wanted = plan.metrics();
    let mut results: Vec<SubjectResult> = plan
        .subjects
        .iter()
        .map(|s| SubjectResult::new(s.label.clone(), s.role, s.command(), &wanted))
        .collect();
    {
        let work = ScratchDir::new("hypha-bench")?;
        let topo = build_lab().context("cannot build the namespaces")?;
        let mut nodes: Vec<Option<NodeSetup>> = Vec::new();
        for (i, s) in plan.subjects.iter().enumerate() {
            let Some(bin) = &s.bin else {
                nodes.push(None);
                continue;
            };
            let setup = if s.role.is_floor() {
                Ok(NodeSetup::floor(bin))
            } else {
                NodeSetup::new(bin, work.path(), i)
            };
            match setup {
                Ok(n) => nodes.push(Some(n)),
                Err(e) => {
                    check_stop()?;
                    eprintln!("{}: cannot prepare its nodes: {e:#}", s.label);
                    results[i].errors.push(format!("{e:#}"));
                    nodes.push(None);
                }
            }
        }
        for rep in 1..=plan.runs {
            for (i, s) in plan.subjects.iter().enumerate() {
                check_stop()?;
                let mut ctx = Rep {
                    plan: &plan,
                    topo: &topo,
                    work: work.path(),
                    rep,
                    res: &mut results[i],
                };
                eprintln!("[{rep}/{}] {}", plan.runs, s.label);
                let outcome = match (&s.bin, &nodes[i]) {
                    (None, _) => ctx.veth(),
                    (Some(_), Some(setup)) => ctx.overlay(s, setup, i),
                    (Some(_), None) => continue,
                };
                if let Err(e) = outcome {
                    check_stop()?;
                    eprintln!("[{rep}/{}] {} failed: {e:#}", plan.runs, s.label);
                    results[i].errors.push(format!("rep {rep}: {e:#}"));
                }
            }
        }
        // The lab goes first, so that the output comes after the cleanup.
        drop(topo);
        drop(work);
    }
    if let Some(path) = &args.chart {
        crate::chart::write_png(&crate::report::chart(&meta, &results), path)
            .with_context(|| format!("cannot write the chart {}", path.display()))?;
        eprintln!("chart written to {}", path.display());
    }
    if args.json {
        // The table still goes to the person watching; stdout is the JSON alone.
        eprint!("\n{}", report::table(&meta, &results));
        let r = Report::new(meta, &results);
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", report::table(&meta, &results));
    }
    Ok(())
}

/// The namespaces A – B – C, the underlay routed A ↔ C through B.
fn build_lab() -> anyhow::Result<Lab> {
    let lab = Lab::chain("bench", &NETS)?;
    lab.route_through()?;
    Ok(lab)
}

/// Key files and overlay addresses of one subject's three nodes, and how its binary is called.
struct NodeSetup {
    /// Key file and overlay address of A, B and C (floor nodes: no key file, an empty path).
    keys: [(PathBuf, Ipv6Addr); 3],
    disable_quic: bool,
    /// The binary as `/proc/<pid>/exe` will show it.
    exe: PathBuf,
}

impl NodeSetup {
    fn new(bin: &Path, work: &Path, subject: usize) -> anyhow::Result<NodeSetup> {
        let exe = bin.to_path_buf();
        let t = Duration::from_secs(20);
        let help = testbed::run(testbed::command(bin).arg("--help"), t)?;
        let disable_quic = help.stdout.contains("--disable-quic");
        let mut keys = Vec::new();
        for x in ["a", "b", "c"] {
            let key = work.join(format!("s{subject}-{x}.key"));
            let with_key = |args: &[&str]| {
                let mut cmd = testbed::command(bin);
                cmd.arg("--key-file").arg(&key).args(args);
                testbed::run(&mut cmd, t)?.ok()
            };
            with_key(&["generate-keys"])?;
            let out = with_key(&["inspect", "--json"])?;
            keys.push((key.clone(), overlay_address(&out)?));
        }
        let keys: [(PathBuf, Ipv6Addr); 3] = keys.try_into().map_err(|_| anyhow!("three keys"))?;
        Ok(NodeSetup {
            keys,
            disable_quic,
            exe,
        })
    }

    /// The forwarding floor's nodes: no key files, fixed addresses in one /64.
    fn floor(bin: &Path) -> NodeSetup {
        let addr = |x: u16| Ipv6Addr::new(0xfd00, 0xf100, 0, 0, 0, 0, 0, x);
        NodeSetup {
            keys: [0xa, 0xb, 0xc].map(|x| (PathBuf::new(), addr(x))),
            disable_quic: false,
            exe: bin.to_path_buf(),
        }
    }
}

/// The `address` of `inspect --json`'s output.
fn overlay_address(json: &str) -> anyhow::Result<Ipv6Addr> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| anyhow!("inspect --json gave no JSON ({e})"))?;
    v.get("address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("inspect --json gave no IPv6 \"address\""))
}

const API_ADDR: &str = "127.0.0.1:18989";
const NODE_PORT: u16 = 9651;
/// How long nodes may take to reach each other (a route request across a relay included).
const OVERLAY_WAIT: Duration = Duration::from_secs(45);

/// A node process of the current repetition ("node a", "node b", "node c").
struct Node {
    proc: Daemon,
}

impl Node {
    fn alive(&mut self) -> anyhow::Result<()> {
        Ok(self.proc.check_running()?)
    }

    fn cpu(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.proc.pid())
    }

    fn peak_rss(&self) -> anyhow::Result<f64> {
        peak_rss_mb(self.proc.pid())
    }
}

/// The rate of the `fixed` scenario's single TCP stream, Gbit/s: below what every overlay subject
/// carries on this machine, so that CPU per Gbit compares the same work.
const FIXED_GBPS: f64 = 1.2;
/// iperf3's arguments for it (`-b` in bit/s, written out so that no suffix convention matters).
const FIXED_ARGS: [&str; 2] = ["-b", "1200000000"];

/// Where a measurement's traffic goes: from one namespace to an address in another.
struct Ends<'a> {
    from: &'a Netns,
    to: &'a Netns,
    addr: String,
    v6: bool,
}

/// One repetition of one subject.
struct Rep<'a> {
    plan: &'a Plan,
    topo: &'a Lab,
    work: &'a Path,
    rep: u32,
    res: &'a mut SubjectResult,
}

impl Rep<'_> {
    fn progress(&self, what: &str) {
        eprintln!(
            "[{}/{}] {}: {what}",
            self.rep, self.plan.runs, self.res.label
        );
    }

    /// Runs one measurement; its failure is recorded and the repetition goes on (an interrupt
    /// ends the bench).
    fn measure(
        &mut self,
        s: Scenario,
        f: impl FnOnce(&mut Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.plan.has(s) {
            return Ok(());
        }
        if let Err(e) = f(self) {
            check_stop()?;
            self.progress(&format!("{} failed: {e:#}", s.name()));
            self.res
                .errors
                .push(format!("rep {} {}: {e:#}", self.rep, s.name()));
        }
        Ok(())
    }

    fn veth(&mut self) -> anyhow::Result<()> {
        let (a, b, c) = (self.topo.ns(0), self.topo.ns(1), self.topo.ns(2));
        let ab = Ends {
            from: a,
            to: b,
            addr: self.topo.link(0).addrs[1].to_string(),
            v6: false,
        };
        let ac = Ends {
            from: a,
            to: c,
            addr: self.topo.link(1).addrs[1].to_string(),
            v6: false,
        };
        self.measure(Scenario::Tcp1, |r| {
            let x = iperf(&ab, r.plan.secs, &[])?;
            r.record_tcp(Metric::Tcp1, &x);
            Ok(())
        })?;
        self.measure(Scenario::Fixed, |r| {
            let x = iperf(&ab, r.plan.secs, &FIXED_ARGS)?;
            r.record_fixed(&x);
            Ok(())
        })?;
        self.measure(Scenario::Tcp4, |r| r.tcp4(&ab))?;
        self.measure(Scenario::Udp, |r| r.udp(&ab).map(drop))?;
        self.measure(Scenario::Rtt, |r| r.rtt(&ab))?;
        self.measure(Scenario::Chain, |r| {
            let x = iperf(&ac, r.plan.secs, &[])?;
            r.record_tcp(Metric::Chain, &x);
            Ok(())
        })
    }

    fn overlay(&mut self, s: &Subject, setup: &NodeSetup, index: usize) -> anyhow::Result<()> {
        let (na, nb, nc) = (self.topo.ns(0), self.topo.ns(1), self.topo.ns(2));
        let tun = format!("hyb{index}");
        let b_from_a = self.topo.link(0).addrs[1];
        let b_from_c = self.topo.link(1).addrs[0];
        let mut b = self.start_node(s, setup, &tun, 1, nb, None)?;
        let mut a = self.start_node(s, setup, &tun, 0, na, Some(b_from_a))?;
        let ab = Ends {
            from: na,
            to: nb,
            addr: setup.keys[1].1.to_string(),
            v6: true,
        };
        wait_reachable(&ab, &mut [&mut a, &mut b], OVERLAY_WAIT)?;
        let mut detail = RepDetail {
            rep: self.rep,
            ..RepDetail::default()
        };
        let mut peaks = [0.0f64; 3];

        self.measure(Scenario::Tcp1, |r| {
            let (x, cpu, gbit) = iperf_with_cpu(&ab, r.plan.secs, &[], [&a, &b])?;
            r.record_tcp(Metric::Tcp1, &x);
            if gbit > 0.0 {
                let busiest = cpu[0].max(cpu[1]);
                r.res.push(Metric::CpuPerGbit, busiest / gbit);
                r.res.push(Metric::CpuPerGbitSum, (cpu[0] + cpu[1]) / gbit);
                if busiest > 0.0 {
                    r.res.push(Metric::GbitPerCpu, gbit / busiest);
                }
                r.progress(&format!(
                    "node CPU {:.2} s (a) {:.2} s (b) for {gbit:.1} Gbit: {:.3} s/Gbit (busiest)",
                    cpu[0],
                    cpu[1],
                    busiest / gbit
                ));
            }
            detail.tcp1_cpu_s = Some(cpu);
            detail.tcp1_gbit = Some(gbit);
            Ok(())
        })?;
        self.measure(Scenario::Fixed, |r| {
            // The same reading as for tcp1, around a flow paced to a rate every subject reaches.
            let (x, cpu, gbit) = iperf_with_cpu(&ab, r.plan.secs, &FIXED_ARGS, [&a, &b])?;
            r.record_fixed(&x);
            if gbit > 0.0 {
                let per_gbit = (cpu[0] + cpu[1]) / gbit;
                r.res.push(Metric::FixedCpu, per_gbit);
                r.progress(&format!(
                    "node CPU {:.2} s (a) {:.2} s (b) for {gbit:.1} Gbit at the fixed rate: \
                     {per_gbit:.3} s/Gbit (both nodes)",
                    cpu[0], cpu[1]
                ));
            }
            detail.fixed_cpu_s = Some(cpu);
            detail.fixed_gbit = Some(gbit);
            Ok(())
        })?;
        self.measure(Scenario::Tcp4, |r| r.tcp4(&ab))?;
        self.measure(Scenario::Udp, |r| {
            // The peak so far is kept for the whole-run figure before the reset wipes it.
            peaks[0] = peaks[0].max(a.peak_rss()?);
            peaks[1] = peaks[1].max(b.peak_rss()?);
            reset_peak_rss(a.proc.pid())?;
            reset_peak_rss(b.proc.pid())?;
            r.udp(&ab)?;
            a.alive()?;
            b.alive()?;
            let rss = [a.peak_rss()?, b.peak_rss()?];
            peaks[0] = peaks[0].max(rss[0]);
            peaks[1] = peaks[1].max(rss[1]);
            r.res.push(Metric::RssUdp, rss[0].max(rss[1]));
            r.progress(&format!(
                "peak RSS during the flood: {:.1} MB (a) {:.1} MB (b)",
                rss[0], rss[1]
            ));
            detail.udp_rss_mb = Some(rss);
            Ok(())
        })?;
        self.measure(Scenario::Rtt, |r| r.rtt(&ab))?;

        let mut c = None;
        self.measure(Scenario::Chain, |r| {
            let node = c.insert(r.start_node(s, setup, &tun, 2, nc, Some(b_from_c))?);
            let ac = Ends {
                from: na,
                to: nc,
                addr: setup.keys[2].1.to_string(),
                v6: true,
            };
            wait_reachable(&ac, &mut [&mut a, &mut b, node], OVERLAY_WAIT)?;
            let x = iperf(&ac, r.plan.secs, &[])?;
            r.record_tcp(Metric::Chain, &x);
            Ok(())
        })?;

        a.alive()?;
        b.alive()?;
        peaks[0] = peaks[0].max(a.peak_rss()?);
        peaks[1] = peaks[1].max(b.peak_rss()?);
        detail.peak_rss_mb = vec![peaks[0], peaks[1]];
        if let Some(c) = &c {
            peaks[2] = peaks[2].max(c.peak_rss()?);
            detail.peak_rss_mb.push(peaks[2]);
        }
        self.res
            .push(Metric::RssPeak, peaks.iter().copied().fold(0.0, f64::max));
        self.res.reps.push(detail);
        // Stopped in order (SIGTERM, then waited for), so the next subject finds no TUN left.
        for mut n in [Some(a), Some(b), c].into_iter().flatten() {
            n.proc.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    fn start_node(
        &self,
        s: &Subject,
        setup: &NodeSetup,
        tun: &str,
        i: usize,
        ns: &Netns,
        peer: Option<Ipv4Addr>,
    ) -> anyhow::Result<Node> {
        let name = ["a", "b", "c"][i];
        let bin = s.bin.as_ref().ok_or_else(|| anyhow!("no binary"))?;
        let key = setup.keys[i].0.as_os_str();
        let addr = setup.keys[i].1.to_string();
        let listen = [self.topo.link(0).addrs[1], self.topo.link(1).addrs[0]]
            .map(|ip| format!("{ip}:{NODE_PORT}"));
        let connect = peer.map(|ip| format!("{ip}:{NODE_PORT}"));
        let links = s
            .transport()
            .node_args(peer.map(IpAddr::V4), NODE_PORT, setup.disable_quic);
        let mut args: Vec<&OsStr> = Vec::new();
        if s.role.is_floor() {
            args.extend(s.flags.iter().map(OsStr::new));
            args.extend(["--tun", tun, "--addr", &addr].map(OsStr::new));
            match &connect {
                Some(c) => args.extend(["--connect", c].map(OsStr::new)),
                None => {
                    for l in &listen {
                        args.extend(["--listen", l].map(OsStr::new));
                    }
                }
            }
        } else {
            args.extend([OsStr::new("--key-file"), key]);
            args.extend(links.iter().map(OsStr::new));
            args.extend(
                [
                    "--disable-peer-discovery",
                    "--tun-name",
                    tun,
                    "--api-addr",
                    API_ADDR,
                ]
                .map(OsStr::new),
            );
            args.extend(s.flags.iter().map(OsStr::new));
        }
        let log = self
            .work
            .join(format!("{}-rep{}-{name}.log", tun, self.rep));
        let mut cmd = ns.command(bin);
        cmd.args(&args);
        let mut node = Node {
            proc: Daemon::start(&format!("node {name}"), cmd, &log)?,
        };
        // `ip netns exec` execs the node in place; figures are read from /proc/<pid> only once
        // the pid is the node's.
        let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let pid = node.proc.pid();
        let is_node = wait_for(Duration::from_secs(10), || {
            node.proc.exited().is_some()
                || exe(pid).is_some_and(|p| {
                    p == setup.exe
                        || p.to_string_lossy().trim_end_matches(" (deleted)")
                            == setup.exe.to_string_lossy()
                })
        })?;
        node.alive()?;
        if !is_node {
            bail!(
                "node {name}: pid {pid} runs {:?}, not {}",
                exe(pid),
                setup.exe.display()
            );
        }
        Ok(node)
    }

    fn record_tcp(&mut self, m: Metric, x: &Iperf) {
        self.res.push(m, x.gbps);
        self.progress(&format!("{} {:.2} Gbit/s", m.label(), x.gbps));
    }

    fn record_fixed(&mut self, x: &Iperf) {
        self.res.push(Metric::FixedRate, x.gbps);
        self.progress(&format!(
            "tcp paced to {} Gbit/s: {:.2} Gbit/s received",
            FIXED_GBPS, x.gbps
        ));
    }

    fn tcp4(&mut self, ab: &Ends) -> anyhow::Result<()> {
        let x = iperf(ab, self.plan.secs, &["-P", "4"])?;
        self.record_tcp(Metric::Tcp4, &x);
        Ok(())
    }

    fn udp(&mut self, ab: &Ends) -> anyhow::Result<Iperf> {
        let x = iperf(ab, self.plan.secs, &["-u", "-l", "1200", "-b", "0"])?;
        self.res.push(Metric::Udp, x.gbps);
        let loss = x.lost_pct.unwrap_or(0.0);
        self.res.push(Metric::UdpLoss, loss);
        self.progress(&format!(
            "udp 1200 B {:.2} Gbit/s received, {loss:.1}% lost",
            x.gbps
        ));
        Ok(x)
    }

    fn rtt(&mut self, ab: &Ends) -> anyhow::Result<()> {
        let idle = ping(ab, 100, "0.01")?;
        self.res.push(Metric::RttIdle, idle);
        // The bulk flow outlasts the pings by 2 s; they start once its data connection is up.
        let secs = self.plan.secs;
        let port = next_port();
        let _server = iperf_server(ab.to, port)?;
        let json = self.work.join(format!("load-{port}.json"));
        let (p, t) = (port.to_string(), (secs + 2).to_string());
        let logfile = json.to_string_lossy().into_owned();
        let args = [
            "-c",
            &ab.addr,
            "-p",
            &p,
            "-t",
            &t,
            "-J",
            "--logfile",
            &logfile,
        ];
        let mut flow = quiet(ab.from.command("iperf3").args(args))?;
        let dport = format!(":{port}");
        let up = wait_for(Duration::from_secs(10), || {
            exited(&mut flow)
                || ok_in(
                    ab.from,
                    "ss",
                    &["-Htn", "state", "established", "dport", "=", &dport],
                )
                .is_ok_and(|o| o.lines().count() >= 2)
        })?;
        if !up || exited(&mut flow) {
            bail!(
                "the bulk flow did not start: {}",
                std::fs::read_to_string(&json).unwrap_or_default().trim()
            );
        }
        let loaded = ping(ab, (secs * 50).max(50), "0.02")?;
        let status = flow.wait_timeout(Duration::from_secs(u64::from(secs) + 17))?;
        let report = std::fs::read_to_string(&json).unwrap_or_default();
        let _ = std::fs::remove_file(&json);
        let bulk = parse_iperf(&report)
            .map_err(|e| anyhow!("the bulk flow under the pings failed ({status}): {e}"))?;
        self.res.push(Metric::RttLoad, loaded);
        self.progress(&format!(
            "rtt {idle:.3} ms idle, {loaded:.3} ms under a {:.2} Gbit/s tcp flow",
            bulk.gbps
        ));
        Ok(())
    }
}

/// Waits until `ends.from` gets an echo reply from `ends.addr`, failing early when a node dies.
fn wait_reachable(ends: &Ends, nodes: &mut [&mut Node], timeout: Duration) -> anyhow::Result<()> {
    let mut dead = None;
    let ok = wait_for(timeout, || {
        if let Some(e) = nodes.iter_mut().find_map(|n| n.alive().err()) {
            dead = Some(e);
            return true;
        }
        ping_once(ends)
    })?;
    if let Some(e) = dead {
        return Err(e);
    }
    if !ok {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} log ends:\n{}", n.proc.name(), n.proc.log_tail(5)))
            .collect();
        bail!(
            "{} not reachable from {} over the overlay within {timeout:?}\n{}",
            ends.addr,
            ends.from.tag(),
            logs.join("\n")
        );
    }
    Ok(())
}

/// A helper process (iperf3) with its output discarded, asked with SIGTERM to stop on drop.
pub(crate) fn quiet(cmd: &mut std::process::Command) -> anyhow::Result<ChildGuard> {
    let guard = ChildGuard::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()))?;
    Ok(guard.stop_on_drop(Duration::from_secs(5)))
}

fn exited(child: &mut ChildGuard) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

/// Runs `prog args` in `ns` to completion (at most 5 s); its stdout, or an error if it failed.
pub(crate) fn ok_in(ns: &Netns, prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = ns.command(prog);
    Ok(testbed::run(cmd.args(args), Duration::from_secs(5))?.ok()?)
}

/// ping's arguments: `count` echoes `interval` seconds apart to `addr` (IPv6 when `v6`).
fn ping_args<'a>(addr: &'a str, v6: bool, count: &'a str, interval: &'a str) -> Vec<&'a str> {
    let mut a = Vec::new();
    if v6 {
        a.push("-6");
    }
    a.extend(["-q", "-c", count, "-i", interval, "-W", "1", addr]);
    a
}

fn ping_once(ends: &Ends) -> bool {
    ok_in(ends.from, "ping", &ping_args(&ends.addr, ends.v6, "1", "1")).is_ok()
}

/// The average RTT of `count` echoes `interval` seconds apart, ms.
fn ping(ends: &Ends, count: u32, interval: &str) -> anyhow::Result<f64> {
    let c = count.to_string();
    let timeout = Duration::from_secs(u64::from(count) / 10 + 30);
    let mut cmd = ends.from.command("ping");
    let out = testbed::run(
        cmd.args(ping_args(&ends.addr, ends.v6, &c, interval)),
        timeout,
    )?;
    let p = testbed::ping::parse(&out.stdout)
        .map_err(|e| anyhow!("ping {}: {e}; {}", ends.addr, out.why()))?;
    Ok(p.avg_ms)
}

static PORT: AtomicU16 = AtomicU16::new(0);

/// A fresh iperf3 port for every measurement (5301…6300, cycling).
fn next_port() -> u16 {
    5301 + PORT.fetch_add(1, Ordering::Relaxed) % 1000
}

/// One [`iperf`] run with the CPU seconds nodes A and B (`nodes`) used during it, read from
/// `/proc/<pid>/stat` right before and after, and the Gbit received.
fn iperf_with_cpu(
    ends: &Ends,
    secs: u32,
    extra: &[&str],
    nodes: [&Node; 2],
) -> anyhow::Result<(Iperf, [f64; 2], f64)> {
    let before = [nodes[0].cpu()?, nodes[1].cpu()?];
    let x = iperf(ends, secs, extra)?;
    let after = [nodes[0].cpu()?, nodes[1].cpu()?];
    let cpu = [after[0] - before[0], after[1] - before[1]];
    Ok((x, cpu, x.bytes * 8.0 / 1e9))
}

/// A one-shot iperf3 server in `ns`, once it listens.
pub(crate) fn iperf_server(ns: &Netns, port: u16) -> anyhow::Result<ChildGuard> {
    let p = port.to_string();
    let mut server = quiet(ns.command("iperf3").args(["-s", "-1", "-p", &p]))?;
    let sport = format!(":{port}");
    let listening = wait_for(Duration::from_secs(10), || {
        exited(&mut server)
            || ok_in(ns, "ss", &["-Hltn", "sport", "=", &sport]).is_ok_and(|o| !o.trim().is_empty())
    })?;
    if let Ok(Some(st)) = server.try_wait() {
        bail!("iperf3 server in {} exited: {st}", ns.tag());
    }
    if !listening {
        bail!("iperf3 server in {} does not listen on {port}", ns.tag());
    }
    Ok(server)
}

/// One iperf3 client run from `ends.from` to the server at `ends.addr`, `secs` long.
fn iperf(ends: &Ends, secs: u32, extra: &[&str]) -> anyhow::Result<Iperf> {
    let port = next_port();
    let mut server = iperf_server(ends.to, port)?;
    let (p, t) = (port.to_string(), secs.to_string());
    let mut args = vec!["-c", &ends.addr, "-p", &p, "-t", &t, "-J"];
    args.extend_from_slice(extra);
    let timeout = Duration::from_secs(u64::from(secs) + 15);
    let out = testbed::run(ends.from.command("iperf3").args(args), timeout)?;
    let x = parse_iperf(&out.stdout).map_err(|e| {
        let err = out.stderr.trim();
        if err.is_empty() {
            e
        } else {
            anyhow!("{e}; {}", testbed::last_lines(err, 3))
        }
    })?;
    // The one-shot server ends with the test; a stuck one is killed on drop.
    let _ = server.wait_timeout(Duration::from_secs(5));
    Ok(x)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn load_average() -> [f64; 3] {
    let text = read_trimmed("/proc/loadavg");
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(secs)
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the epoch (the epoch itself past year 9999).
fn utc_date(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(["hypha-bench"].iter().chain(extra.iter()).copied())
                .unwrap();
        assert!(cli.command.is_none());
        cli.bench
    }

    #[test]
    fn defaults() {
        let a = args(&[]);
        assert_eq!((a.runs, a.secs, a.json), (5, 5, false));
        assert!(a.compare.is_empty() && a.only.is_empty() && a.chart.is_none());
        let a = args(&[
            "--compare",
            "/x/a",
            "--compare",
            "/y/b",
            "--only",
            "veth,tcp1",
        ]);
        assert_eq!(a.compare.len(), 2);
        assert_eq!(a.only, ["veth", "tcp1"]);
    }

    #[test]
    fn bad_numbers_are_refused() {
        use clap::Parser;
        for bad in [&["--runs", "0"][..], &["--secs", "0"], &["--runs", "x"]] {
            let argv = ["hypha-bench"].iter().chain(bad.iter()).copied();
            assert!(crate::cli::Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compare_labels_are_unique() {
        let s = subjects(
            Path::new("/bin/hypha"),
            Path::new("/bin/hypha-bench"),
            &[
                PathBuf::from("/opt/mycelium"),
                PathBuf::from("/usr/bin/hypha"),
            ],
        );
        let labels: Vec<&str> = s.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "veth",
                "hypha",
                "hypha quic://",
                "hypha --no-sessions",
                "hypha --no-offload",
                "floor",
                "floor+aes",
                "mycelium",
                "hypha-2"
            ]
        );
        assert_eq!(s[1].command().unwrap(), "/bin/hypha");
        assert_eq!(s[2].command().unwrap(), "/bin/hypha");
        assert_eq!(s[3].command().unwrap(), "/bin/hypha --no-sessions");
        assert_eq!(s[4].command().unwrap(), "/bin/hypha --no-offload");
        assert_eq!(s[5].command().unwrap(), "/bin/hypha-bench floor");
        assert_eq!(s[6].command().unwrap(), "/bin/hypha-bench floor --seal");
        assert_eq!(s[0].command(), None);
        // Only the QUIC subject links over QUIC; the compared binaries keep TCP.
        let quic: Vec<&str> = s
            .iter()
            .filter(|s| s.transport() == Transport::Quic)
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(quic, ["hypha quic://"]);
    }

    #[test]
    fn only_selects_subjects_and_scenarios() {
        let all = || {
            subjects(
                Path::new("/bin/hypha"),
                Path::new("/bin/hypha-bench"),
                &[PathBuf::from("/opt/mycelium")],
            )
        };
        let (s, sc) = select(&[], all()).unwrap();
        assert_eq!((s.len(), sc.len()), (8, 6));
        let only = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (s, sc) = select(&only(&["hypha", "udp", "veth"]), all()).unwrap();
        assert_eq!(
            s.iter().map(|s| s.role).collect::<Vec<_>>(),
            [Role::Veth, Role::Hypha]
        );
        assert_eq!(sc, [Scenario::Udp]);
        let (s, sc) = select(&only(&["mycelium"]), all()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(sc.len(), 6);
        let (s, _) = select(&only(&["compare", "no-offload"]), all()).unwrap();
        assert_eq!(s.len(), 2);
        let (s, _) = select(&only(&["floor+aes", "floor"]), all()).unwrap();
        assert_eq!(
            s.iter().map(|s| s.role).collect::<Vec<_>>(),
            [Role::Floor, Role::SealedFloor]
        );
        let e = select(&only(&["tcp9"]), all()).unwrap_err().to_string();
        assert!(e.contains("'tcp9'") && e.contains("mycelium"), "{e}");
        assert!(e.contains("no-sessions") && e.contains("fixed"), "{e}");
        assert!(e.contains(" quic,"), "{e}");
    }

    #[test]
    fn only_selects_the_quic_subject() {
        let all = subjects(Path::new("/bin/hypha"), Path::new("/bin/hypha-bench"), &[]);
        let only = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // The short check of the brief: veth, hypha over TCP and over QUIC, in table order.
        let (s, sc) = select(&only(&["quic", "veth", "hypha"]), all.clone()).unwrap();
        assert_eq!(
            s.iter().map(|s| s.role).collect::<Vec<_>>(),
            [Role::Veth, Role::Hypha, Role::HyphaQuic]
        );
        assert_eq!(sc, Scenario::ALL);
        // The same binary and flags as hypha: only the links differ.
        assert_eq!(
            (s[2].bin.as_ref(), &s[2].flags),
            (s[1].bin.as_ref(), &s[1].flags)
        );
        assert_eq!(
            (s[1].transport(), s[2].transport()),
            (Transport::Tcp, Transport::Quic)
        );
        let (s, _) = select(&only(&["quic"]), all).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label, "hypha quic://");
    }

    #[test]
    fn link_flags_follow_the_transport() {
        let b: IpAddr = "198.18.220.2".parse().unwrap();
        // TCP: QUIC off where the binary can turn it off, so no UDP listener idles beside.
        assert_eq!(
            Transport::Tcp.node_args(Some(b), 9651, true),
            ["--peers", "tcp://198.18.220.2:9651", "--disable-quic"]
        );
        assert_eq!(
            Transport::Tcp.node_args(Some(b), 9651, false),
            ["--peers", "tcp://198.18.220.2:9651"]
        );
        assert_eq!(
            Transport::Tcp.node_args(None, 9651, true),
            ["--disable-quic"]
        );
        // QUIC: the dialled URI says quic://, and QUIC stays on, also on the node that only
        // listens.
        assert_eq!(
            Transport::Quic.node_args(Some(b), 9651, true),
            ["--peers", "quic://198.18.220.2:9651"]
        );
        assert!(Transport::Quic.node_args(None, 9651, true).is_empty());
    }

    #[test]
    fn only_selects_no_sessions_and_the_fixed_rate() {
        let all = || {
            subjects(
                Path::new("/bin/hypha"),
                Path::new("/bin/hypha-bench"),
                &[PathBuf::from("/opt/mycelium")],
            )
        };
        let only = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // The same binary with --no-sessions; "hypha" alone does not pick it.
        let (s, sc) = select(&only(&["no-sessions"]), all()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].role, Role::HyphaNoSessions);
        assert_eq!(s[0].label, "hypha --no-sessions");
        assert_eq!(s[0].flags, ["--no-sessions"]);
        assert_eq!(s[0].bin.as_deref(), Some(Path::new("/bin/hypha")));
        assert_eq!(sc, Scenario::ALL);
        let (s, _) = select(&only(&["hypha"]), all()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].role, s[0].flags.len()), (Role::Hypha, 0));
        // The fixed-rate scenario alone: every subject, the floors included.
        let (s, sc) = select(&only(&["fixed"]), all()).unwrap();
        assert_eq!(sc, [Scenario::Fixed]);
        assert_eq!(s.len(), 8);
        assert!(s.iter().any(|s| s.role == Role::Floor));
        assert!(s.iter().any(|s| s.role == Role::SealedFloor));
        // The short check of the brief: scenarios in run order, subjects in table order.
        let (s, sc) = select(
            &only(&["hypha", "no-sessions", "floor", "veth", "tcp1", "fixed"]),
            all(),
        )
        .unwrap();
        assert_eq!(
            s.iter().map(|s| s.role).collect::<Vec<_>>(),
            [Role::Veth, Role::Hypha, Role::HyphaNoSessions, Role::Floor]
        );
        assert_eq!(sc, [Scenario::Tcp1, Scenario::Fixed]);
        // What the fixed rate measures: the paced rate, and the nodes' CPU (none for veth).
        assert_eq!(
            Scenario::Fixed.metrics(),
            [Metric::FixedRate, Metric::FixedCpu]
        );
        assert!(Metric::FixedCpu.nodes_only() && !Metric::FixedRate.nodes_only());
        let veth = crate::report::SubjectResult::new(
            "veth".into(),
            Role::Veth,
            None,
            Scenario::Fixed.metrics(),
        );
        assert!(veth.wanted(Metric::FixedRate) && !veth.wanted(Metric::FixedCpu));
    }

    #[test]
    fn fixed_rate_arguments_match_the_rate() {
        assert_eq!(FIXED_ARGS[0], "-b");
        let bps: f64 = FIXED_ARGS[1].parse().unwrap();
        assert!((bps - FIXED_GBPS * 1e9).abs() < 1.0, "{bps}");
    }

    #[test]
    fn binaries_are_checked_before_anything_else() {
        let e = Plan::new(&args(&["--binary", "/nonexistent/hypha"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--binary /nonexistent/hypha"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        let plain = plain.to_str().unwrap();
        let e = Plan::new(&args(&["--compare", plain]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("--compare {plain}: not an executable")),
            "{e}"
        );
        let e = Plan::new(&args(&["--compare", dir.path().to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an executable"), "{e}");
        let e = Plan::new(&args(&["--binary", "/bin/sh", "--only", "nope"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'nope'"), "{e}");
        let e = Plan::new(&args(&[
            "--binary",
            "/bin/sh",
            "--chart",
            "/no/such/dir/c.png",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("no such directory"), "{e}");
    }

    #[test]
    fn plan_needs_root() {
        let r = Plan::new(&args(&["--binary", "/bin/sh"]));
        if testbed::is_root() {
            let p = r.unwrap();
            assert_eq!(p.subjects.len(), 7);
            assert!(p.metrics().contains(&Metric::RssPeak));
        } else {
            assert!(r.unwrap_err().to_string().contains("as root"));
        }
    }

    #[test]
    fn inspect_output_gives_the_address() {
        let a = overlay_address(r#"{"publicKey":"ab","address":"5e3:1::1"}"#).unwrap();
        assert_eq!(a, "5e3:1::1".parse::<Ipv6Addr>().unwrap());
        // Pretty-printed, as some nodes print it.
        assert!(overlay_address("{\n  \"address\": \"400::1\"\n}\n").is_ok());
        assert!(overlay_address(r#"{"address":"10.0.0.1"}"#).is_err());
        assert!(overlay_address("Address: 400::1").is_err());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(1_764_104_400), "2025-11-25 21:00 UTC");
        assert_eq!(utc_date(951_782_400 + 3_660), "2000-02-29 01:01 UTC");
    }

    #[test]
    fn ping_arguments_follow_the_family() {
        assert_eq!(
            ping_args("400::1", true, "5", "0.01"),
            ["-6", "-q", "-c", "5", "-i", "0.01", "-W", "1", "400::1"]
        );
        assert_eq!(ping_args("400::1", false, "1", "1")[0], "-q");
    }
}
