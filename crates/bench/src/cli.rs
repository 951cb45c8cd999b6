//! Command line of `hypha-bench` (also reached as `hypha bench`, which passes its arguments on).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hypha-bench",
    version,
    about = "Benchmark hypha's data path (root): raw veth, hypha with and without sessions and \
             offloads and over QUIC links, the forwarding floors and other nodes (--compare), in \
             network namespaces with iperf3 and ping; prints one table",
    long_about = BENCH_ABOUT,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub bench: BenchArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One node of the bench's forwarding floor (started by the bench in its namespaces)
    #[command(hide = true)]
    Floor(FloorArgs),
    /// The control path under a burst of announced routes (root): how fast a node absorbs a full
    /// table from one peer while a new node joins elsewhere, beside the routing core alone
    Routes(RoutesArgs),
    /// The overlay over emulated WAN links (root): limited rate, delay, loss and a bottleneck
    /// queue; throughput, RTT under load (average, p99, max), the inner flow's retransmits and
    /// the recovery after a 2 s outage, for hypha over TCP and over QUIC links beside the raw
    /// link
    Wan(WanArgs),
}

/// Options of `hypha-bench wan`.
#[derive(Args, Debug, Clone)]
pub struct WanArgs {
    /// Only these scenarios (repeatable or comma-separated): lossy, lossy-near, gbit,
    /// bloat-cubic, bloat-bbr [default: all]
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,

    /// Repetitions (the table shows medians)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// Seconds of each bulk flow
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(3..=600))]
    pub secs: u32,

    /// Print the results as JSON (every sample) instead of the table (which then goes to stderr)
    #[arg(long)]
    pub json: bool,

    /// Also draw the medians as a PNG chart into FILE
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,

    /// Another node binary taking mycelium's flags to put side by side (repeatable)
    #[arg(long, value_name = "PATH")]
    pub compare: Vec<PathBuf>,

    /// The hypha binary to run in the namespaces [default: `hypha` beside this binary]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,

    /// Leave out the floors (the cheapest TCP overlay, and a datagram one)
    #[arg(long)]
    pub no_floors: bool,
}

/// Options of `hypha-bench routes`.
#[derive(Args, Debug, Clone)]
pub struct RoutesArgs {
    /// Routes the hand-made peer announces in one burst
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub routes: u32,

    /// Repetitions (the table shows medians)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// Another node binary taking mycelium's flags to put side by side (repeatable)
    #[arg(long, value_name = "PATH")]
    pub compare: Vec<PathBuf>,

    /// The hypha binary to run in the namespaces [default: `hypha` beside this binary]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

const BENCH_ABOUT: &str = "\
Benchmark the data path (needs root, iproute2, iperf3 and ping).

Builds three network namespaces A - B - C joined by veth pairs (198.18.220.0/24, 198.18.221.0/24),
runs a node of each subject in them (the hypha binary beside this one, or --binary) and measures
with iperf3 and ping: one TCP stream A -> B, four TCP streams, one TCP stream across the chain
A -> B -> C (B relays), UDP with 1200-byte datagrams at full rate (received rate and loss), ping RTT
idle and while a bulk TCP flow runs, node CPU seconds per Gbit during the single stream
(/proc/PID/stat) and during one TCP stream paced to 1.2 Gbit/s (both nodes together), and each
node's peak RSS during the UDP flood (/proc/PID/status VmHWM).

Subjects: raw veth without any overlay (the physical reference, routed through B for the chain),
hypha (default flags: offloads, sessions, super-frames; peers over TCP), hypha quic:// (the same
over QUIC links; shown, not judged), hypha --no-sessions (mycelium's wire only), hypha
--no-offload, the forwarding floor (whole TUN reads over plain TCP: no crypto, no 1400-byte
packets; what any TUN + TCP overlay costs at least), the floor with AES-GCM over every 1400 bytes
(floor+aes: what any node of this protocol costs at least), and every --compare binary that takes
mycelium's flags.
Subjects are interleaved within each repetition and nodes start fresh for every repetition. The
table shows the median of --runs repetitions, throughput as a ratio to raw veth, and the targets
for hypha (default flags) with PASS/FAIL. Progress goes to stderr; stdout holds only the table (or
the JSON with --json, which keeps every sample). Everything is removed on exit and on Ctrl-C.";

/// Options of the bench.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Bench options")]
pub struct BenchArgs {
    /// Repetitions of every measurement (the table shows medians)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,

    /// Seconds per iperf3 measurement
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub secs: u32,

    /// Print the results as JSON (every sample included) instead of the table (which then goes
    /// to stderr with the progress lines)
    #[arg(long)]
    pub json: bool,

    /// Also draw the medians as a PNG chart into FILE
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,

    /// Another node binary taking mycelium's flags to put side by side (repeatable)
    #[arg(long, value_name = "PATH")]
    pub compare: Vec<PathBuf>,

    /// Only these subjects and/or scenarios, comma-separated. Subjects: veth, hypha, quic (hypha
    /// over QUIC links), no-sessions, no-offload, floor, floor+aes, compare (all --compare
    /// binaries) or a compare binary's file name; scenarios: tcp1, fixed (one stream paced to
    /// 1.2 Gbit/s), tcp4, chain, udp, rtt. CPU figures come with tcp1 and fixed, the UDP-flood
    /// RSS with udp.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,

    /// The hypha binary to run in the namespaces [default: `hypha` beside this binary]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

/// Options of `hypha-bench floor`, the bench's bare TUN + TCP forwarder (see `floor`).
#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// TUN device to create
    #[arg(long)]
    pub tun: String,
    /// Overlay address of this node (a /64 on the TUN)
    #[arg(long)]
    pub addr: std::net::Ipv6Addr,
    /// Accept peers on this address (repeatable)
    #[arg(long)]
    pub listen: Vec<std::net::SocketAddr>,
    /// Connect to a peer at this address (repeatable)
    #[arg(long)]
    pub connect: Vec<std::net::SocketAddr>,
    /// Plain TUN path: no vnet header, one packet per read
    #[arg(long)]
    pub no_offload: bool,
    /// Also seal every packet with AES-256-GCM in 1400-byte pieces, and open it at the far end
    #[arg(long)]
    pub seal: bool,
    /// A datagram transport instead: each packet (no offloads) as one UDP datagram to the one
    /// peer (one --listen or one --connect)
    #[arg(long, conflicts_with = "seal")]
    pub udp: bool,
}
