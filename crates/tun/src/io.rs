//! Batched reads and writes.
//!
//! A read is one `read()` syscall into the [`Reader`]'s 65535+header buffer; a super-packet is
//! split there ([`offload::split`]) into the caller's [`SegmentSink`]. A write batch is planned by
//! the [`Writer`]'s [`offload::Coalescer`] and issued as one `writev` per write (virtio header +
//! slices of the caller's packets, no payload copy). A train the kernel refuses with `EINVAL` is
//! re-sent packet by packet, and after [`DEMOTE_AFTER`] such refusals coalescing of that protocol
//! is switched off for the device.

use std::io::{self, IoSlice};

use offload::{Coalescer, SegmentSink, Segments, SplitError};
use wire::virtio::{gso, VirtioNetHdr};

use crate::device::Tun;
use crate::stats::Counters;
use crate::sys;

/// Longest vnet header (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_MAX: usize = wire::virtio::LEN_MRG_RXBUF;

/// Largest IP packet, and so the largest read after the vnet header.
pub const MAX_PACKET: usize = 65535;

/// `EINVAL`s on GSO writes of one kind (TCP or UDP) before coalescing of that kind is switched
/// off for the device.
pub const DEMOTE_AFTER: u32 = 8;

/// Most iovecs in one `writev` (Linux `UIO_MAXIOV`); longer writes are copied into one buffer.
const IOV_MAX: usize = 1024;

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
            buf: vec![0u8; VNET_HDR_MAX + MAX_PACKET + 1].into_boxed_slice(),
        }
    }
}

/// Reusable state of the write side: the coalescer and the scratch space of the fallback path.
#[derive(Debug)]
pub struct Writer {
    coalescer: Coalescer,
    /// Recycled between batches (see [`recycle`]); empty outside `write_batch`.
    iov: Vec<IoSlice<'static>>,
    slots: Vec<&'static mut [u8]>,
    /// A refused train, materialized, and its segments.
    train: Vec<u8>,
    singles: Segments,
}

impl Writer {
    /// A writer for `tun`, coalescing what the device's capabilities allow.
    pub fn new(tun: &Tun) -> Self {
        Writer::with_config(tun, offload::Config::default())
    }

    /// A writer with explicit coalescer limits (e.g. `udp_max_segments` for a kernel known to
    /// accept 128). Whether TCP and UDP are merged still follows the device: its capabilities and
    /// any demotion.
    pub fn with_config(tun: &Tun, config: offload::Config) -> Self {
        let (tcp, udp) = tun.gro_enabled();
        Writer {
            coalescer: Coalescer::new(offload::Config { tcp, udp, ..config }),
            iov: Vec::new(),
            slots: Vec::new(),
            train: Vec::with_capacity(VNET_HDR_MAX + MAX_PACKET),
            singles: Segments::new(),
        }
    }
}

/// Empties `v` and gives its allocation back with another lifetime, so that a vector of borrowed
/// slices can be reused across batches without allocating. (`into_iter().map().collect()` on a
/// same-layout element type reuses the allocation in place.)
fn recycle_mut<'a, 'b, T: ?Sized>(mut v: Vec<&'a mut T>) -> Vec<&'b mut T> {
    v.clear();
    v.into_iter()
        .map(|_| -> &'b mut T { unreachable!("the vector is empty") })
        .collect()
}

fn recycle_iov<'a, 'b>(mut v: Vec<IoSlice<'a>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| -> IoSlice<'b> { unreachable!("the vector is empty") })
        .collect()
}

/// What one `write_batch` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Packets the kernel accepted.
    pub written: usize,
    /// Packets dropped (refused or would block); the reasons are in the counters.
    pub dropped: usize,
    /// Write syscalls made.
    pub syscalls: usize,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl Tun {
    /// Reads once and appends the packet(s) to `out`: one packet on the plain path, the segments
    /// of one super-packet with a vnet header. Returns the number appended (0 when the read was
    /// dropped; the reason is counted). `Err(WouldBlock)` when nothing is queued on a
    /// non-blocking device; other errors come from `read()` itself.
    pub fn read(
        &self,
        rd: &mut Reader,
        out: &mut (impl SegmentSink + ?Sized),
    ) -> io::Result<usize> {
        let n = retry_eintr(|| sys::read(self, &mut rd.buf))?;
        let c = &self.shared.counters;
        Counters::add(&c.reads, 1);
        if n == rd.buf.len() {
            // The buffer is one byte longer than any legal read: a full buffer means truncation.
            Counters::add(&c.drop_truncated, 1);
            return Ok(0);
        }
        let hdr_len = self.shared.caps.vnet_hdr_len;
        if n <= hdr_len {
            Counters::add(&c.drop_malformed, 1);
            return Ok(0);
        }
        let count = if hdr_len == 0 {
            match out.segment(n) {
                Some(seg) => {
                    seg.copy_from_slice(&rd.buf[..n]);
                    Ok(1)
                }
                None => Err(SplitError::SinkFull { written: 0 }),
            }
        } else {
            let Ok(hdr) = VirtioNetHdr::parse(&rd.buf[..hdr_len]) else {
                Counters::add(&c.drop_malformed, 1);
                return Ok(0);
            };
            if hdr.gso_kind() != gso::NONE {
                Counters::add(&c.super_packets, 1);
                if out.take_whole(&hdr, &rd.buf[hdr_len..n]) {
                    Counters::add(&c.segments, 1);
                    return Ok(1);
                }
            }
            offload::split(&hdr, &rd.buf[hdr_len..n], out)
        };
        match count {
            Ok(k) => {
                Counters::add(&c.segments, k as u64);
                Ok(k)
            }
            Err(SplitError::SinkFull { written }) => {
                Counters::add(&c.segments, written as u64);
                Counters::add(&c.drop_sink_full, 1);
                Ok(written)
            }
            Err(_) => {
                Counters::add(&c.drop_malformed, 1);
                Ok(0)
            }
        }
    }

    /// Writes `packets` (whole IP packets, in delivery order): coalesced into trains when the
    /// device has a vnet header, one write per packet otherwise. The first packet of each train
    /// has its headers rewritten in place. One failing packet never drops the rest; `EAGAIN`
    /// drops only the packet(s) of that write. Drops are counted by reason.
    pub fn write_batch<P>(&self, wr: &mut Writer, packets: &mut [P]) -> WriteReport
    where
        P: AsRef<[u8]> + AsMut<[u8]>,
    {
        let mut report = WriteReport::default();
        if !self.shared.caps.vnet_hdr() {
            for p in packets.iter() {
                report.syscalls += 1;
                self.write_single(p.as_ref(), &mut report);
            }
            return report;
        }
        // Another queue of the device may have demoted a protocol since the last batch.
        let (tcp, udp) = self.gro_enabled();
        let mut cfg = wr.coalescer.config();
        if (cfg.tcp, cfg.udp) != (tcp, udp) {
            cfg.tcp = tcp;
            cfg.udp = udp;
            wr.coalescer.set_config(cfg);
        }
        let hdr_len = self.shared.caps.vnet_hdr_len;
        let c = &self.shared.counters;
        let plan = wr.coalescer.coalesce(packets);
        let mut demote = None;
        for w in plan.iter() {
            let hdr = w.vnet.to_bytes();
            let result = if w.slices.len() < IOV_MAX {
                let mut iov = recycle_iov(std::mem::take(&mut wr.iov));
                iov.push(IoSlice::new(&hdr[..hdr_len]));
                iov.extend(
                    w.slices
                        .iter()
                        .map(|s| IoSlice::new(&packets[s.packet].as_ref()[s.range()])),
                );
                let r = retry_eintr(|| sys::writev(self, &iov));
                wr.iov = recycle_iov(iov);
                r
            } else {
                wr.train.clear();
                w.materialize(packets, hdr_len, &mut wr.train);
                retry_eintr(|| sys::write(self, &wr.train))
            };
            report.syscalls += 1;
            let n = w.packets();
            match result {
                Ok(_) => {
                    Counters::add(&c.writes, 1);
                    Counters::add(&c.packets_written, n as u64);
                    if w.is_train() {
                        Counters::add(&c.coalesced_writes, 1);
                    }
                    report.written += n;
                }
                Err(e) if w.is_train() && e.raw_os_error() == Some(libc::EINVAL) => {
                    let udp = w.vnet.gso_kind() == gso::UDP_L4;
                    if self.note_gso_einval(udp) {
                        demote = Some(udp);
                    }
                    wr.train.clear();
                    w.materialize(packets, hdr_len, &mut wr.train);
                    wr.singles.clear();
                    match offload::split(&w.vnet, &wr.train[hdr_len..], &mut wr.singles) {
                        Ok(_) => {
                            for seg in wr.singles.iter() {
                                report.syscalls += 1;
                                self.write_single(seg, &mut report);
                            }
                        }
                        Err(_) => {
                            Counters::add(&c.drop_write_error, n as u64);
                            report.dropped += n;
                        }
                    }
                }
                Err(e) => {
                    let counter = if would_block(&e) {
                        &c.drop_would_block
                    } else {
                        &c.drop_write_error
                    };
                    Counters::add(counter, n as u64);
                    report.dropped += n;
                }
            }
        }
        if let Some(udp) = demote {
            let mut cfg = wr.coalescer.config();
            if udp {
                cfg.udp = false;
            } else {
                cfg.tcp = false;
            }
            wr.coalescer.set_config(cfg);
        }
        report
    }

    /// Writes one super-packet whole with the virtio header `vnet` (see
    /// [`offload::whole_header`]): one syscall for all its segments. Where the device cannot take
    /// that GSO type (no vnet header, the type switched off, or the kernel refuses it with
    /// `EINVAL`) the packet is split and written segment by segment instead.
    pub fn write_whole(&self, wr: &mut Writer, vnet: &VirtioNetHdr, packet: &[u8]) -> WriteReport {
        let mut report = WriteReport::default();
        let c = &self.shared.counters;
        let segments = {
            let hdr = usize::from(vnet.hdr_len);
            let size = usize::from(vnet.gso_size).max(1);
            packet.len().saturating_sub(hdr).div_ceil(size).max(1)
        };
        let (tcp, udp) = self.gro_enabled();
        let udp_kind = vnet.gso_kind() == gso::UDP_L4;
        let hdr_len = self.shared.caps.vnet_hdr_len;
        if hdr_len > 0 && (if udp_kind { udp } else { tcp }) {
            let hdr = vnet.to_bytes();
            let iov = [IoSlice::new(&hdr[..hdr_len]), IoSlice::new(packet)];
            report.syscalls += 1;
            match retry_eintr(|| sys::writev(self, &iov)) {
                Ok(_) => {
                    Counters::add(&c.writes, 1);
                    Counters::add(&c.packets_written, segments as u64);
                    Counters::add(&c.coalesced_writes, 1);
                    report.written += segments;
                    return report;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let _ = self.note_gso_einval(udp_kind);
                }
                Err(e) => {
                    let counter = if would_block(&e) {
                        &c.drop_would_block
                    } else {
                        &c.drop_write_error
                    };
                    Counters::add(counter, segments as u64);
                    report.dropped += segments;
                    return report;
                }
            }
        }
        wr.singles.clear();
        match offload::split(vnet, packet, &mut wr.singles) {
            Ok(_) => {
                for seg in wr.singles.iter() {
                    report.syscalls += 1;
                    self.write_single(seg, &mut report);
                }
            }
            Err(_) => {
                Counters::add(&c.drop_write_error, segments as u64);
                report.dropped += segments;
            }
        }
        report
    }

    /// [`Tun::write_batch`] over the packets of a [`Segments`] arena (e.g. the output of reads).
    pub fn write_segments(&self, wr: &mut Writer, segs: &mut Segments) -> WriteReport {
        let mut slots = recycle_mut(std::mem::take(&mut wr.slots));
        slots.extend(segs.iter_mut(false));
        let report = self.write_batch(wr, &mut slots);
        wr.slots = recycle_mut(slots);
        report
    }

    /// Writes one packet without coalescing (with a zero vnet header when the device has one).
    fn write_single(&self, packet: &[u8], report: &mut WriteReport) {
        let c = &self.shared.counters;
        let hdr = [0u8; VNET_HDR_MAX];
        let hdr_len = self.shared.caps.vnet_hdr_len;
        let r = retry_eintr(|| {
            if hdr_len == 0 {
                sys::write(self, packet)
            } else {
                sys::write2(self, &hdr[..hdr_len], packet)
            }
        });
        match r {
            Ok(_) => {
                Counters::add(&c.writes, 1);
                Counters::add(&c.packets_written, 1);
                report.written += 1;
            }
            Err(e) => {
                let counter = if would_block(&e) {
                    &c.drop_would_block
                } else {
                    &c.drop_write_error
                };
                Counters::add(counter, 1);
                report.dropped += 1;
            }
        }
    }

    /// Counts a failed read (the caller backs off).
    pub fn count_read_error(&self) {
        Counters::add(&self.shared.counters.read_errors, 1);
    }

    /// Records an `EINVAL` on a GSO write of one protocol and demotes that protocol after
    /// [`DEMOTE_AFTER`] of them. Returns true when this call demoted it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_vectors_keep_their_allocation() {
        let data = [1u8, 2, 3];
        let mut buf = [0u8; 4];
        let mut m: Vec<&mut [u8]> = Vec::with_capacity(8);
        m.push(&mut buf[..]);
        let ptr = m.as_ptr() as usize;
        let m2: Vec<&mut [u8]> = recycle_mut(m);
        assert!(m2.is_empty() && m2.capacity() == 8 && m2.as_ptr() as usize == ptr);

        let mut s: Vec<IoSlice<'_>> = Vec::with_capacity(16);
        s.push(IoSlice::new(&data));
        let ptr = s.as_ptr() as usize;
        let s2: Vec<IoSlice<'_>> = recycle_iov(s);
        assert!(s2.is_empty() && s2.capacity() == 16 && s2.as_ptr() as usize == ptr);
    }
}
