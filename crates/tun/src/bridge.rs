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

use offload::Segments;

use crate::io::{Reader, Writer};
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

/// Forwards `from` → `to` until `stop` is set. Read errors other than `WouldBlock` are counted
/// and back off briefly instead of spinning.
pub fn pump(from: &Tun, to: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    let mut reader = Reader::new();
    let mut writer = Writer::new(to);
    let mut batch = Segments::new();
    while !stop.load(Relaxed) {
        if !from.wait_readable(Some(opts.idle_poll))? {
            continue;
        }
        batch.clear();
        for _ in 0..opts.max_reads {
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
            to.write_segments(&mut writer, &mut batch);
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
