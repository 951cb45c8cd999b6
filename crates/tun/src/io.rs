//! Batched reads and writes.
//!
//! A read is one `read()` syscall into the [`Reader`]'s 65535+header buffer; a super-packet is
//! split there into the caller's [`PacketBuf`]. A write batch is coalesced by the [`Writer`] into
//! as few GSO writes as the kernel's GRO rules allow; every train the kernel refuses with `EINVAL`
//! is re-sent packet by packet.

use std::io;

use crate::device::Tun;
use crate::stats::Counters;
use crate::sys;

/// Longest vnet header (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_MAX: usize = 12;

/// Largest IP packet, and so the largest read after the vnet header.
pub const MAX_PACKET: usize = 65535;

/// `EINVAL`s on GSO writes of one kind (TCP or UDP) before coalescing of that kind is switched
/// off for the device.
pub const DEMOTE_AFTER: u32 = 8;

/// Reusable state of the read side: the buffer one `read()` lands in (allocated once).
#[derive(Debug)]
pub struct Reader {
    buf: Box<[u8]>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            buf: vec![0u8; VNET_HDR_MAX + MAX_PACKET].into_boxed_slice(),
        }
    }
}

/// What one `write_batch` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Packets the kernel accepted.
    pub written: usize,
    /// Packets dropped (invalid, refused or would block); the reasons are in the counters.
    pub dropped: usize,
    /// Write syscalls made.
    pub syscalls: usize,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Tun {
    /// One plain `read()` into `buf`. `Err(WouldBlock)` when nothing is queued.
    pub(crate) fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match sys::read(self, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Writes one packet without coalescing (with a zero vnet header when the device has one).
    /// Counts the outcome; returns whether the kernel took it.
    pub(crate) fn write_single(&self, packet: &[u8]) -> bool {
        let c = &self.shared.counters;
        let hdr = [0u8; VNET_HDR_MAX];
        let hdr_len = self.shared.caps.vnet_hdr_len;
        let r = loop {
            let r = if hdr_len == 0 {
                sys::write(self, packet)
            } else {
                sys::write2(self, &hdr[..hdr_len], packet)
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(_) => {
                Counters::add(&c.writes, 1);
                Counters::add(&c.packets_written, 1);
                true
            }
            Err(e) if would_block(&e) => {
                Counters::add(&c.drop_would_block, 1);
                false
            }
            Err(_) => {
                Counters::add(&c.drop_write_error, 1);
                false
            }
        }
    }

    /// Counts a failed read (the caller backs off).
    pub fn count_read_error(&self) {
        Counters::add(&self.shared.counters.read_errors, 1);
    }

    /// Records an `EINVAL` on a GSO write of `kind` and demotes that kind after
    /// [`DEMOTE_AFTER`] of them. Returns true when this call demoted it.
    #[allow(dead_code)] // wired in with the offload path
    pub(crate) fn note_gso_einval(&self, udp: bool) -> bool {
        let s = &self.shared;
        Counters::add(&s.counters.einval_fallbacks, 1);
        let demoted = if udp {
            s.udp_gro.fail()
        } else {
            s.tcp_gro.fail()
        };
        if demoted {
            Counters::add(&s.counters.demotions, 1);
        }
        demoted
    }
}

/// Where a read puts its packets (implemented for the offload arena once wired in).
pub trait PacketSink {
    /// Appends one packet; `false` when there is no room (the packet is then counted as dropped).
    fn push_packet(&mut self, packet: &[u8]) -> bool;
}

impl Tun {
    /// Reads once and appends the packet(s) to `out`: one packet on the plain path, the segments
    /// of one super-packet with a vnet header. Returns the number appended. `Err(WouldBlock)`
    /// when nothing is queued on a non-blocking device.
    pub fn read(&self, rd: &mut Reader, out: &mut impl PacketSink) -> io::Result<usize> {
        let n = self.read_raw(&mut rd.buf)?;
        let c = &self.shared.counters;
        Counters::add(&c.reads, 1);
        let hdr_len = self.shared.caps.vnet_hdr_len;
        if n == rd.buf.len() {
            Counters::add(&c.drop_truncated, 1);
            return Ok(0);
        }
        if hdr_len == 0 {
            if n == 0 {
                Counters::add(&c.drop_malformed, 1);
                return Ok(0);
            }
            if !out.push_packet(&rd.buf[..n]) {
                Counters::add(&c.drop_malformed, 1);
                return Ok(0);
            }
            Counters::add(&c.segments, 1);
            return Ok(1);
        }
        Counters::add(&c.drop_malformed, 1);
        Ok(0)
    }

    /// Writes `packets`, coalescing what may be merged; one failing packet never drops the rest.
    pub fn write_batch<'a>(&self, packets: impl IntoIterator<Item = &'a [u8]>) -> WriteReport {
        let mut report = WriteReport::default();
        for p in packets {
            report.syscalls += 1;
            if self.write_single(p) {
                report.written += 1;
            } else {
                report.dropped += 1;
            }
        }
        report
    }
}
