//! The TUN side of the data path: one reader thread (super-packet → segments → sealed frames per
//! next hop) and one writer thread (batches of received packets → coalesced TUN writes). Plain
//! threads, not tokio tasks: each owns its device queue and blocks only on it or on back-pressure
//! from the peers.

use std::io;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tracing::{error, warn};
use tun::{Reader, Tun, Writer};
use wire::babel::Subnet;

use datapath::{bump, DataCounters, Need, Sender, TunBatch};

use crate::metrics::TunHistograms;
use crate::ratelimit::LogLimiter;
use crate::transmit::{self, ChannelNeeds, DataTable, Stalled};

/// How often the reader looks at the stop flag while the TUN is idle.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Batches for the TUN writer queued at most; beyond this peers' readers wait.
pub(crate) const TUN_QUEUE: usize = 8;
/// At most one log line per this interval for a repeating TUN error.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Packets per `write_batch` call at most.
const MAX_WRITE_BATCH: usize = 256;

pub(crate) struct TunIo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TunIo {
    /// Signals both threads and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) struct TunIoConfig {
    pub table: Arc<ArcSwap<DataTable>>,
    pub counters: Arc<DataCounters>,
    pub needs: mpsc::Sender<Need>,
    pub own_subnet: Subnet,
    pub own_addr: Ipv6Addr,
    pub histograms: Arc<TunHistograms>,
    /// The node's runtime: the reader thread waits on it (with a timeout) for room in a link queue.
    pub runtime: tokio::runtime::Handle,
}

/// Starts the reader and writer threads. `to_tun` carries packets for the TUN (from peers and
/// ICMPv6 errors); the reader's own ICMPv6 errors go through a clone of its sender.
pub(crate) fn start(
    tun: Arc<Tun>,
    cfg: TunIoConfig,
    to_tun_tx: mpsc::Sender<TunBatch>,
    to_tun_rx: mpsc::Receiver<TunBatch>,
) -> io::Result<TunIo> {
    let stop = Arc::new(AtomicBool::new(false));
    let histograms = cfg.histograms.clone();
    let counters = cfg.counters.clone();
    let reader = std::thread::Builder::new()
        .name("hypha-tun-rx".into())
        .spawn({
            let tun = tun.clone();
            let stop = stop.clone();
            move || read_loop(&tun, &cfg, &to_tun_tx, &stop)
        })?;
    let writer = std::thread::Builder::new()
        .name("hypha-tun-tx".into())
        .spawn(move || write_loop(&tun, to_tun_rx, &histograms, &counters))?;
    Ok(TunIo {
        stop,
        threads: vec![reader, writer],
    })
}

/// Segments gathered from consecutive TUN reads before they are sealed and handed on: enough
/// for a few 64 KiB super-packets, or a burst of small packets read without waiting in between.
const BATCH_SEGMENTS: usize = 128;
/// Frame bytes gathered at most before the batch is handed on.
const BATCH_BYTES: usize = 128 * 1024;

fn read_loop(tun: &Tun, cfg: &TunIoConfig, to_tun: &mpsc::Sender<TunBatch>, stop: &AtomicBool) {
    let mut rd = Reader::new();
    let mut sender = Sender::new(
        cfg.own_subnet,
        cfg.own_addr,
        cfg.counters.clone(),
        BATCH_BYTES + 80 * 1024,
    );
    let mut errors = 0u32;
    let mut poll_log = LogLimiter::new(ERROR_LOG_EVERY);
    let mut read_log = LogLimiter::new(ERROR_LOG_EVERY);
    let mut stall_log = LogLimiter::new(ERROR_LOG_EVERY);
    let mut stalled = Stalled::default();
    while !stop.load(Ordering::Relaxed) {
        match tun.wait_readable(Some(IDLE_POLL)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                if let Some(n) = poll_log.allow(Instant::now()) {
                    error!("TUN poll failed: {e} ({n} more since the last report)");
                }
                std::thread::sleep(IDLE_POLL);
                continue;
            }
        }
        // Read until the device is empty or the batch is full: one hand-off per batch, however
        // small the packets.
        sender.sink().clear();
        sender
            .sink()
            .set_sessions(cfg.table.load().sessions.clone());
        let mut failed = false;
        while sender.sink().segments() < BATCH_SEGMENTS && sender.sink().bytes() < BATCH_BYTES {
            match tun.read(&mut rd, sender.sink()) {
                Ok(n) => {
                    errors = 0;
                    // A read dropped whole (counted by the device) is no super-packet.
                    if n > 0 {
                        cfg.histograms.read_segments.observe(n as u64);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A read error must not spin: back off, and say so once in a while.
                    errors += 1;
                    if read_log.allow(Instant::now()).is_some() {
                        warn!("TUN read failed ({errors} in a row): {e}");
                    }
                    failed = true;
                    break;
                }
            }
        }
        if sender.sink().segments() > 0 {
            let table = cfg.table.load();
            let mut needs = ChannelNeeds(&cfg.needs);
            let main = sender.handle_segments(&table, &mut needs, Instant::now());
            // The batch's frames leave as one batch per next hop.
            for (link, batch) in main.into_iter().chain(sender.transmits()) {
                let Some(tx) = table.links.get(&link) else {
                    continue;
                };
                let Some(batch) =
                    transmit::offer_batch(tx, link, batch, &mut stalled, &cfg.counters)
                else {
                    continue;
                };
                // The queue is full: wait for the writer (back-pressure), but not for long.
                let wait = transmit::wait_for_room(tx, link, batch, &mut stalled, &cfg.counters);
                if cfg.runtime.block_on(wait) {
                    if let Some(n) = stall_log.allow(Instant::now()) {
                        warn!(
                            link = link.0,
                            "peer link stalled: dropping its packets until it drains \
                             ({n} more since the last report)"
                        );
                    }
                }
            }
            if let Some(icmp) = sender.poll_tun() {
                if to_tun.try_send(icmp).is_err() {
                    bump(&cfg.counters.drop_queue_full);
                }
            }
        }
        if failed {
            std::thread::sleep(Duration::from_millis(10).min(IDLE_POLL));
        }
    }
}

fn write_loop(
    tun: &Tun,
    mut rx: mpsc::Receiver<TunBatch>,
    histograms: &TunHistograms,
    counters: &DataCounters,
) {
    let mut wr = Writer::new(tun);
    let mut pending: Vec<TunBatch> = Vec::new();
    let mut drop_log = LogLimiter::new(ERROR_LOG_EVERY);
    while let Some(first) = rx.blocking_recv() {
        pending.push(first);
        let mut n = pending[0].len();
        while n < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Ok(b) => {
                    n += b.len();
                    pending.push(b);
                }
                Err(_) => break,
            }
        }
        let mut packets: Vec<&mut [u8]> = Vec::with_capacity(n);
        for b in pending.iter_mut() {
            b.split_into(&mut packets);
        }
        let report = tun.write_batch(&mut wr, &mut packets);
        record_write(&report, histograms, counters, &mut drop_log);
        drop(packets);
        pending.clear();
    }
}

/// Counts one `write_batch` (histogram, packets out) and reports drops, rate-limited.
pub(crate) fn record_write(
    report: &tun::WriteReport,
    histograms: &TunHistograms,
    counters: &DataCounters,
    drop_log: &mut LogLimiter,
) {
    histograms
        .write_packets
        .observe_many(report.syscalls as u64, report.written as u64);
    counters
        .tun_packets_out
        .fetch_add(report.written as u64, Ordering::Relaxed);
    if report.dropped > 0 {
        if let Some(n) = drop_log.allow(Instant::now()) {
            warn!(
                "TUN write dropped {} packets (the device's drop counters say why; \
                 {n} more such batches since the last report)",
                report.dropped
            );
        }
    }
}
