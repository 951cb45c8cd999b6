//! Byte formats of hypha, and nothing else.
//!
//! * [`checksum`], [`ip`], [`virtio`]: zero-copy views over IPv4/IPv6/TCP/UDP headers and the Linux
//!   `virtio_net_hdr`, plus the Internet checksum. Used by the offload engine and the data path.
//! * [`frame`]: the peer-link framing (outer header, babel control header, data packet header) and
//!   an incremental stream decoder / batching encoder.
//! * [`beacon`]: the link-local discovery beacon.
//! * [`babel`]: the routing TLVs with mycelium's layouts, and the value types they carry
//!   (router-ids, seqnos, metrics, prefixes).
//!
//! This crate never does I/O, never reads a clock and never allocates on a parse path. Parsers take
//! untrusted bytes and return errors; they never panic.
#![forbid(unsafe_code)]

pub mod babel;
pub mod beacon;
pub mod checksum;
pub mod frame;
pub mod icmp;
pub mod ip;
pub mod virtio;

#[cfg(test)]
mod testutil;
