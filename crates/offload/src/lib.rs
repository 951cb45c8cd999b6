//! Linux TUN offloads as pure functions over caller-owned buffers.
//!
//! * [`split`] (read path, kernel → hypha): one `virtio_net_hdr` + packet read from a TUN device
//!   with `IFF_VNET_HDR` becomes the wire-sized packets it stands for, with every header and
//!   checksum fixed up exactly as the kernel's own GSO would (`TCPV4`, `TCPV6`, `UDP_L4`; `NONE`
//!   with or without `NEEDS_CSUM`). Segments go to a [`SegmentSink`]: the node's sink hands out
//!   its outgoing frame buffers (after their headroom), tests use the reusable [`Segments`] arena.
//! * [`Coalescer`] (write path, hypha → kernel): a batch of IP packets becomes a [`Plan`] of the
//!   fewest writes, merging per-flow trains the kernel's GRO would itself merge
//!   (docs/protocol.md §9.4) and passing everything else through singly, in order. Only the first
//!   packet of each train is edited (in place); a write is the virtio header plus a list of slices
//!   of the caller's packets, so the TUN writer issues one `writev` per write without copying
//!   payloads.
//!
//! How the `tun` crate uses it:
//! * read: `read()` into a buffer of `vnet_hdr_len + 65535` bytes, `VirtioNetHdr::parse`, then
//!   `split(&hdr, &buf[vnet_hdr_len..n], &mut sink)`; an `Err` is counted and the read dropped.
//! * write: `coalescer.coalesce(&mut batch)`, then per [`Write`] one `writev`; on `EINVAL` for a
//!   train, [`Write::materialize`] it, `split` it and write the segments singly (count it; demote
//!   the protocol in [`Config`] after repeated failures). One failing write never drops the rest.
//!
//! This crate never does I/O, never reads a clock, never panics on packet contents, and allocates
//! nothing per packet: [`Segments`] and [`Coalescer`] reuse their memory across calls.
#![forbid(unsafe_code)]

mod coalesce;
mod sink;
mod split;
mod whole;

pub use coalesce::{Coalescer, Config, Plan, Slice, Write};
pub use sink::{SegmentSink, Segments};
pub use split::{split, SplitError};
pub use whole::whole_header;
