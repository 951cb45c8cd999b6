//! The Linux TUN device of hypha: the only crate with `unsafe` code.
//!
//! * [`Tun::open`] creates or attaches a device from a [`Config`] (`IFF_TUN | IFF_NO_PI`, plus
//!   `IFF_VNET_HDR` when offloads are wanted, `IFF_MULTI_QUEUE` on request; flags checked back
//!   with `TUNGETIFF`), sets the vnet header size (10 or 12), negotiates offloads with the probing
//!   ladder ([`probe::probe_ladder`]) and records the result as [`Capabilities`]. Without offloads
//!   (asked for, or nothing granted) it runs the plain path: no vnet header, and the device's
//!   offload mask reset to 0 so that a persistent device stops handing out aggregates.
//!   [`Tun::set_mtu`], [`Tun::add_ipv6`], [`Tun::set_ipv4`] and [`Tun::up`] configure the
//!   interface with ioctls in the caller's network namespace; [`Tun::add_queue`] opens more queues.
//! * Fds are non-blocking by default and expose `AsFd`/`AsRawFd`: use [`Tun::wait_readable`] from
//!   plain threads ([`Tun::wait_readable_precise`] for sub-millisecond deadlines), or `AsyncTun`
//!   (feature `tokio`) from tokio.
//! * [`Tun::read`] does one `read()` into the [`Reader`]'s reused 65535+header buffer and hands the
//!   packets of one super-packet, already split (`offload::split`), to the caller's
//!   `offload::SegmentSink`. [`Tun::write_batch`] plans a batch of IP packets with the [`Writer`]'s
//!   `offload::Coalescer` and issues one `writev` per train or single packet. A train the kernel
//!   refuses with `EINVAL` is re-sent packet by packet; after [`DEMOTE_AFTER`] refusals that
//!   protocol is no longer coalesced on the device. One failing packet never drops the rest.
//! * [`Stats`] is a snapshot of the device's counters: reads, super-packets, segments, writes,
//!   coalesced writes, packets written, `EINVAL` fallbacks, demotions, drops by reason.
//! * [`limits::raise_open_files_limit`] lifts the soft limit on open files to the hard one.
//! * [`sock::tcp_info`] reads a TCP socket's `TCP_INFO` (round trips, unsent bytes, delivery
//!   rate) for the node's queue management.
//! * [`bridge`] joins two devices with a userspace forwarding loop (tests and benchmark).
//!
//! Every `unsafe` block is a syscall or ioctl on memory the call borrows, commented with
//! `// SAFETY:`. The crate never panics on bytes from the kernel: malformed super-packets are
//! counted and dropped. It does not allocate per packet: buffers belong to the caller or to the
//! reader/writer state and are reused across calls. It does no routing and no crypto.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "tokio")]
mod async_tun;
pub mod bridge;
mod device;
mod io;
pub mod limits;
pub mod probe;
pub mod sock;
mod stats;
mod sys;

#[cfg(feature = "tokio")]
pub use async_tun::AsyncTun;
pub use device::{Config, Tun};
pub use io::{Reader, WriteReport, Writer, DEMOTE_AFTER, MAX_PACKET, VNET_HDR_MAX};
pub use probe::Capabilities;
pub use stats::{Counters, Stats};
