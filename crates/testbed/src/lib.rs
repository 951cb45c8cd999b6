//! The one lab of hypha's root tests, its benchmark and `hypha demo`: network namespaces, veth
//! links, processes, traffic, all behind cleanup guards.
//!
//! * [`Netns`]: a uniquely named network namespace (`hy-<tag>-<pid>-<n>`) that deletes itself and
//!   any veth it created on drop; [`Netns::run`] runs a closure on a thread inside it, so sockets
//!   and devices can be created there by the process itself; [`veth_pair`] joins two, [`link`]
//!   also gives the ends underlay addresses, and [`Lab`] is a chain of namespaces so joined.
//!   Namespaces left by a killed process are swept (with what still runs in them) at the next
//!   start.
//! * [`ChildGuard`]: a child process killed (or first asked with SIGTERM) and reaped on drop;
//!   [`Daemon`]: a long-running program with a log file, stopped with SIGTERM on drop; [`run`]: a
//!   command with a timeout; [`wait_until`]: the polling helper used instead of sleeping;
//!   [`ScratchDir`]: a directory for keys and logs, removed on drop.
//! * [`watch_signals`]: Ctrl-C for programs that keep a lab up: it only sets a flag that the waits
//!   above honour, so the guards clean up.
//! * [`iperf3`] and [`ping`]: run the tools and parse what they print.
//! * [`xfer`]: a seeded pseudo-random TCP stream with BLAKE3 digests (also the `hy-xfer` binary),
//!   and [`udp`]: datagram trains of mixed sizes whose sizes and contents are checked on arrival.
//! * [`Wan`]: an emulated WAN link between two namespaces (delay, jitter, rate, bounded queue,
//!   loss, bursty loss, reordering), set from a [`WanSpec`] such as
//!   `rate=100mbit,delay=20ms,loss=1%`; also the `hy-wan` binary.
//!
//! It only ever creates namespaces and devices it owns, and only sends traffic inside them or on
//! loopback (underlay addresses come from `198.18.0.0/15` and `fd00::/8`). It contains no unsafe
//! code.
#![forbid(unsafe_code)]

mod daemon;
mod host;
mod interrupt;
pub mod iperf3;
mod lab;
mod netns;
pub mod ping;
mod process;
mod scratch;
pub mod udp;
pub mod wan;
pub mod xfer;

pub use daemon::Daemon;
pub use host::{find_in_path, is_executable, is_root, require_tools};
pub use interrupt::{check_interrupted, interrupted, watch_signals};
pub use lab::{link, Lab, Link};
pub use netns::{exec_in, ip, owner_pid, run_in, veth_pair, Netns};
pub use process::{command, describe, last_lines, run, wait_until, ChildGuard, Finished, TimedOut};
pub use scratch::ScratchDir;
pub use wan::{Wan, WanSpec};
