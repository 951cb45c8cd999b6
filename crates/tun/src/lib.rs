//! The Linux TUN device of hypha: the only crate with `unsafe` code.
//!
//! * [`Tun::open`] creates or attaches a device (`IFF_TUN | IFF_NO_PI`, plus `IFF_VNET_HDR` when
//!   offloads are wanted), negotiates offloads with the probing ladder ([`probe::probe_ladder`]) and
//!   records the result as [`Capabilities`]; [`Tun::set_mtu`], [`Tun::add_ipv6`],
//!   [`Tun::set_ipv4`] and [`Tun::up`] configure the interface with ioctls in the caller's network
//!   namespace.
//! * [`Tun::read`] does one `read()` into a reused buffer and hands back the packets of one
//!   super-packet already split to at most one MTU each; [`Tun::write_batch`] writes many IP
//!   packets coalesced into as few GSO writes as the kernel's GRO rules allow.
//! * [`bridge`] joins two devices with a userspace forwarding loop (tests and benchmark).
//!
//! Every `unsafe` block is a syscall or ioctl on memory the call borrows, commented with
//! `// SAFETY:`. The crate never panics on bytes from the kernel: malformed super-packets are
//! counted and dropped. It never allocates per packet: buffers belong to the caller or to the
//! reader/writer state, reused across calls. It does no routing and no crypto.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "tokio")]
mod async_tun;
pub mod bridge;
mod device;
mod io;
pub mod probe;
mod stats;
mod sys;

#[cfg(feature = "tokio")]
pub use async_tun::AsyncTun;
pub use device::{Config, Tun};
pub use io::{Reader, WriteReport, Writer, DEMOTE_AFTER, MAX_PACKET, VNET_HDR_MAX};
pub use probe::Capabilities;
pub use stats::{Counters, Stats};
