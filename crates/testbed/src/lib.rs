//! Helpers for hypha's root tests and benchmarks, with cleanup guards.
//!
//! * [`Netns`]: a uniquely named network namespace (`hy-<tag>-<pid>-<n>`) that deletes itself and
//!   any veth it created on drop; [`Netns::run`] runs a closure on a thread inside it, so sockets
//!   and devices can be created there by the test process itself; [`veth_pair`] joins two.
//! * [`ChildGuard`]: a child process killed and reaped on drop; [`wait_until`]: the polling helper
//!   tests use instead of sleeping.
//! * [`iperf3`]: runs iperf3 in namespaces and parses its `--json` report.
//! * [`xfer`]: a seeded pseudo-random TCP stream with BLAKE3 digests (also the `hy-xfer` binary),
//!   and [`udp`]: datagram trains of mixed sizes whose sizes and contents are checked on arrival.
//!
//! It only ever creates namespaces and devices it owns, and only sends traffic inside them or on
//! loopback (test addresses come from `198.18.0.0/15` and `fd00::/8`). It contains no unsafe code.
#![forbid(unsafe_code)]

pub mod iperf3;
mod netns;
mod process;
pub mod udp;
pub mod xfer;

pub use netns::{exec_in, ip, run_in, veth_pair, Netns};
pub use process::{wait_until, ChildGuard, TimedOut};
