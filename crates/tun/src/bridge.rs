//! A userspace forwarder between two TUN devices: what the data path of a node does minus the
//! crypto and the peer sockets. Used by the root tests and by the `forwarder` example, which is
//! also the TUN I/O benchmark.
//!
//! Each direction is one loop on its own thread (or both share one polling thread): wait until the
//! source is readable, drain it with up to [`Options::max_reads`] reads (each one super-packet,
//! split into ≤ MTU packets), then hand the whole batch to one [`Tun::write_segments`] on the
//! other device.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
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
    /// One thread polling both devices instead of one thread per direction. Fewer wake-ups and
    /// context switches when cores are scarce; no parallelism between the directions.
    pub single_thread: bool,
    /// Two threads per direction, like a node's TUN reader and TUN writer: one reads and splits,
    /// the other coalesces and writes, handing batches over through a small pool of arenas.
    /// Takes precedence over `single_thread`.
    pub pipeline: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_reads: 16,
            idle_poll: Duration::from_millis(50),
            single_thread: false,
            pipeline: false,
        }
    }
}

/// The reusable state of one direction.
struct Direction {
    reader: Reader,
    writer: Writer,
    batch: Segments,
}

impl Direction {
    fn new(to: &Tun) -> Self {
        Direction {
            reader: Reader::new(),
            writer: Writer::new(to),
            batch: Segments::new(),
        }
    }

    /// Drains up to `max_reads` reads from `from` and writes them to `to` as one batch.
    fn forward(&mut self, from: &Tun, to: &Tun, max_reads: usize) {
        self.batch.clear();
        read_batch(from, &mut self.reader, &mut self.batch, max_reads);
        if !self.batch.is_empty() {
            to.write_segments(&mut self.writer, &mut self.batch);
        }
    }
}

/// Appends up to `max_reads` reads from `from` to `batch`. Read errors other than `WouldBlock`
/// are counted and back off briefly instead of spinning.
fn read_batch(from: &Tun, reader: &mut Reader, batch: &mut Segments, max_reads: usize) {
    for _ in 0..max_reads {
        match from.read(reader, batch) {
            // A blocking device only promised one read after poll.
            Ok(_) if !from.is_nonblocking() => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                from.count_read_error();
                std::thread::sleep(Duration::from_millis(10));
                break;
            }
        }
    }
}

/// Forwards `from` → `to` until `stop` is set.
pub fn pump(from: &Tun, to: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    let mut dir = Direction::new(to);
    while !stop.load(Relaxed) {
        if from.wait_readable(Some(opts.idle_poll))? {
            dir.forward(from, to, opts.max_reads);
        }
    }
    Ok(())
}

/// Arenas in flight per pipelined direction: enough to keep both stages busy, few enough to keep
/// the batches in cache.
const PIPELINE_DEPTH: usize = 4;

/// One pipelined direction: this thread reads and splits, a second one coalesces and writes.
fn pipeline(from: &Tun, to: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Segments>(PIPELINE_DEPTH);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Segments>(PIPELINE_DEPTH);
    for _ in 0..PIPELINE_DEPTH {
        let _ = empty_tx.send(Segments::new());
    }
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut writer = Writer::new(to);
            // Ends when the reader hangs up.
            while let Ok(mut batch) = full_rx.recv() {
                to.write_segments(&mut writer, &mut batch);
                batch.clear();
                if empty_tx.send(batch).is_err() {
                    break;
                }
            }
        });
        let mut reader = Reader::new();
        let mut result = Ok(());
        'outer: while !stop.load(Relaxed) {
            match from.wait_readable(Some(opts.idle_poll)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            let mut batch = loop {
                match empty_rx.recv_timeout(opts.idle_poll) {
                    Ok(b) => break b,
                    Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Relaxed) => continue,
                    Err(_) => break 'outer,
                }
            };
            read_batch(from, &mut reader, &mut batch, opts.max_reads);
            if full_tx.send(batch).is_err() {
                break;
            }
        }
        drop(full_tx);
        writer
            .join()
            .map_err(|_| io::Error::other("writer stage panicked"))?;
        result
    })
}

/// Forwards both directions between `a` and `b` until `stop` is set: on two threads, on the
/// calling thread with [`Options::single_thread`], or on four with [`Options::pipeline`].
pub fn run(a: &Tun, b: &Tun, stop: &AtomicBool, opts: Options) -> io::Result<()> {
    if opts.pipeline {
        return both_ways(a, b, "pipeline", |from, to| pipeline(from, to, stop, opts));
    }
    if opts.single_thread {
        let (mut ab, mut ba) = (Direction::new(b), Direction::new(a));
        let ms = opts.idle_poll.as_millis().min(i32::MAX as u128) as i32;
        while !stop.load(Relaxed) {
            let [ra, rb] = crate::sys::poll_readable([a.as_raw_fd(), b.as_raw_fd()], ms)?;
            if ra {
                ab.forward(a, b, opts.max_reads);
            }
            if rb {
                ba.forward(b, a, opts.max_reads);
            }
        }
        return Ok(());
    }
    both_ways(a, b, "loop", |from, to| pump(from, to, stop, opts))
}

/// Runs `each(a, b)` and `each(b, a)` on a thread each; a panic in either is an error naming
/// its direction and `what` ran.
fn both_ways(
    a: &Tun,
    b: &Tun,
    what: &str,
    each: impl Fn(&Tun, &Tun) -> io::Result<()> + Sync,
) -> io::Result<()> {
    std::thread::scope(|s| {
        let ab = s.spawn(|| each(a, b));
        let ba = s.spawn(|| each(b, a));
        let r1 = ab
            .join()
            .map_err(|_| io::Error::other(format!("a→b {what} panicked")))?;
        let r2 = ba
            .join()
            .map_err(|_| io::Error::other(format!("b→a {what} panicked")))?;
        r1.and(r2)
    })
}
