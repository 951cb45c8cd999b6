//! A userspace forwarder between two TUN devices: what the data path of a node does minus the
//! crypto and the peer sockets. Used by the root tests and by the `forwarder` example, which is
//! also the TUN I/O benchmark.
//!
//! Each direction is one loop on its own thread: wait until the source is readable, drain it with
//! up to [`Options::max_reads`] reads (each one super-packet, split into ≤ MTU packets), then hand
//! the whole batch to one [`Tun::write_batch`] on the other device.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crate::io::{PacketSink, Reader};
use crate::Tun;

/// Tuning of the forwarding loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Reads per batch at most (each may be a 64 KiB super-packet).
    pub max_reads: usize,
    /// How often an idle loop checks the stop flag.
    pub idle_poll: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_reads: 16,
            idle_poll: Duration::from_millis(50),
        }
    }
}

/// A contiguous arena of packets, reused batch after batch.
#[derive(Debug)]
pub struct Batch {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// An arena for `bytes` bytes of packets.
    pub fn with_capacity(bytes: usize) -> Self {
        Batch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(bytes / 64),
        }
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes left before the arena would have to grow.
    pub fn room(&self) -> usize {
        self.data.capacity() - self.data.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let p = &self.data[start..end];
            start = end;
            p
        })
    }
}

impl PacketSink for Batch {
    fn push_packet(&mut self, packet: &[u8]) -> bool {
        if packet.len() > self.room() {
            return false;
        }
        self.data.extend_from_slice(packet);
        self.ends.push(self.data.len());
        true
    }
}

/// Forwards `from` → `to` until `stop` is set. Read errors other than `WouldBlock` are counted
/// and back off briefly instead of spinning.
pub fn pump(from: &Tun, to: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    let mut reader = Reader::new();
    let mut batch = Batch::with_capacity((opts.max_reads + 1) * crate::MAX_PACKET);
    while !stop.load(Relaxed) {
        if !from.wait_readable(Some(opts.idle_poll))? {
            continue;
        }
        batch.clear();
        for _ in 0..opts.max_reads {
            if batch.room() < crate::MAX_PACKET {
                break;
            }
            match from.read(&mut reader, &mut batch) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    from.count_read_error();
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        if !batch.is_empty() {
            to.write_batch(batch.iter());
        }
    }
    Ok(())
}

/// Forwards both directions between `a` and `b` on two threads until `stop` is set.
pub fn run(a: &Tun, b: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    std::thread::scope(|s| {
        let ab = s.spawn(|| pump(a, b, stop, opts));
        let ba = s.spawn(|| pump(b, a, stop, opts));
        let r1 = ab
            .join()
            .map_err(|_| io::Error::other("a→b loop panicked"))?;
        let r2 = ba
            .join()
            .map_err(|_| io::Error::other("b→a loop panicked"))?;
        r1.and(r2)
    })
}
