//! One peer connection: a reader task (decode frames; control TLVs to the owner, data frames
//! through the data path) and a writer task (control TLVs and batches of data frames, many frames
//! per write). Either task ending closes the link; the owner is told once.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use routing::LinkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};
use wire::babel::{Subnet, Tlv};
use wire::frame::{self, Frame, FrameReader};

use crate::datapath::{self, DataCounters, DataTable, Inbound, Need, Outbox, RefreshTracker};
use crate::datapath::{FrameBatch, InPlace, LinkBudgets, LinkTx, Stalled, TunBatch};
use crate::metrics::TunHistograms;
use crate::ratelimit::LogLimiter;
use tun::{Tun, Writer as TunWriter};

/// A write that makes no progress for this long means the peer stalled: drop it.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Upper bound of bytes gathered into one write.
const MAX_WRITE: usize = 256 * 1024;
/// Upper bound of data batches gathered into one write (one `iovec` each).
const MAX_BATCHES_PER_WRITE: usize = 64;
/// Control TLVs waiting for the writer; beyond this they are dropped and counted.
pub(crate) const CONTROL_QUEUE: usize = 1024;
/// Data batches waiting for the writer; beyond this senders wait (back-pressure). Short, because
/// every queued byte delays the packets behind it.
pub(crate) const DATA_QUEUE: usize = 4;
/// Unsent bytes the kernel may hold for a peer socket before it stops reporting it writable.
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// The read buffer: room for several full-size frames per read.
const READ_BUFFER: usize = 256 * 1024;

/// Byte and frame counters of one link, shared with the peer table. Each is bumped once per
/// socket read or write, not per frame.
#[derive(Default, Debug)]
pub(crate) struct LinkStats {
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_data_frames: AtomicU64,
    pub tx_control_frames: AtomicU64,
    pub rx_data_frames: AtomicU64,
    pub rx_control_frames: AtomicU64,
}

/// Messages from link tasks to the owner.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Tlv(LinkId, Tlv),
    Closed(LinkId, String),
}

/// Everything a link's tasks share with the rest of the node.
#[derive(Clone)]
pub(crate) struct LinkContext {
    pub table: Arc<ArcSwap<DataTable>>,
    pub counters: Arc<DataCounters>,
    pub needs: mpsc::Sender<Need>,
    pub events: mpsc::Sender<LinkEvent>,
    pub tun: Option<mpsc::Sender<TunBatch>>,
    /// The device itself: each link reader writes the packets it opened straight from its read
    /// buffer (one coalesced batch per socket read).
    pub tun_dev: Option<Arc<Tun>>,
    pub histograms: Arc<TunHistograms>,
    pub own_subnet: Subnet,
}

/// Handles the owner keeps for a running link.
pub(crate) struct LinkHandles {
    pub control: mpsc::Sender<Tlv>,
    pub data: LinkTx,
    pub stats: Arc<LinkStats>,
    pub reader: tokio::task::AbortHandle,
    pub writer: tokio::task::AbortHandle,
}

impl LinkHandles {
    pub fn abort(&self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Starts the tasks of a connected stream.
pub(crate) fn spawn(id: LinkId, stream: tokio::net::TcpStream, ctx: LinkContext) -> LinkHandles {
    let _ = stream.set_nodelay(true);
    // Keep the socket's unsent backlog short: what the kernel has not sent yet waits in our
    // queues instead, where it back-pressures the TUN rather than delaying every packet behind
    // megabytes of bulk data (bufferbloat).
    let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    let (rd, wr) = stream.into_split();
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let stats = Arc::new(LinkStats::default());
    let events = ctx.events.clone();
    let writer = tokio::spawn({
        let stats = stats.clone();
        let events = events.clone();
        async move {
            let why = match write_loop(wr, ctl_rx, data_rx, &stats).await {
                Ok(()) => "closed".to_owned(),
                Err(e) => e,
            };
            let _ = events.send(LinkEvent::Closed(id, why)).await;
        }
    });
    let reader = tokio::spawn({
        let stats = stats.clone();
        async move {
            let why = match read_loop(id, rd, &ctx, &stats).await {
                Ok(()) => "peer closed the connection".to_owned(),
                Err(e) => e,
            };
            let _ = events.send(LinkEvent::Closed(id, why)).await;
        }
    });
    LinkHandles {
        control: ctl_tx,
        data: LinkTx { data: data_tx },
        stats,
        reader: reader.abort_handle(),
        writer: writer.abort_handle(),
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut control: mpsc::Receiver<Tlv>,
    mut data: mpsc::Receiver<FrameBatch>,
    stats: &LinkStats,
) -> Result<(), String> {
    // Control frames are encoded here; data batches are written as they came, several per
    // vectored write, and their buffers go back to the pool afterwards.
    let mut ctl: Vec<u8> = Vec::with_capacity(4096);
    let mut batches: Vec<FrameBatch> = Vec::with_capacity(MAX_BATCHES_PER_WRITE);
    let mut refused_log = LogLimiter::new(Duration::from_secs(10));
    loop {
        let mut data_frames = 0u64;
        let mut control_frames = 0u64;
        let mut bytes = 0usize;
        tokio::select! {
            biased;
            t = control.recv() => match t {
                Some(tlv) => control_frames += encode_tlv(&mut ctl, &tlv, &mut refused_log),
                None => return Ok(()),
            },
            b = data.recv() => match b {
                Some(b) => {
                    data_frames += u64::from(b.frames);
                    bytes += b.bytes.len();
                    batches.push(b);
                }
                None => return Ok(()),
            },
        }
        // Gather whatever else is ready into the same write.
        while let Ok(tlv) = control.try_recv() {
            control_frames += encode_tlv(&mut ctl, &tlv, &mut refused_log);
        }
        while bytes < MAX_WRITE && batches.len() < MAX_BATCHES_PER_WRITE {
            match data.try_recv() {
                Ok(b) => {
                    data_frames += u64::from(b.frames);
                    bytes += b.bytes.len();
                    batches.push(b);
                }
                Err(_) => break,
            }
        }
        let total = ctl.len() + bytes;
        match tokio::time::timeout(WRITE_STALL, write_all_vectored(&mut wr, &ctl, &batches)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "peer stalled: no write progress in {WRITE_STALL:?}"
                ))
            }
        }
        stats.tx_bytes.fetch_add(total as u64, Ordering::Relaxed);
        if data_frames > 0 {
            stats
                .tx_data_frames
                .fetch_add(data_frames, Ordering::Relaxed);
        }
        if control_frames > 0 {
            stats
                .tx_control_frames
                .fetch_add(control_frames, Ordering::Relaxed);
        }
        ctl.clear();
        for b in batches.drain(..) {
            crate::pool::give(b.bytes);
        }
    }
}

/// Writes the control bytes, then every batch, with as few `writev` calls as the socket allows.
async fn write_all_vectored(
    wr: &mut OwnedWriteHalf,
    ctl: &[u8],
    batches: &[FrameBatch],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batches.len() + 1);
    if !ctl.is_empty() {
        slices.push(IoSlice::new(ctl));
    }
    slices.extend(
        batches
            .iter()
            .filter(|b| !b.bytes.is_empty())
            .map(|b| IoSlice::new(&b.bytes)),
    );
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Appends one control frame; returns how many frames it added (0 or 1).
fn encode_tlv(buf: &mut Vec<u8>, tlv: &Tlv, log: &mut LogLimiter) -> u64 {
    match frame::encode_control(buf, tlv) {
        Ok(_) => 1,
        Err(e) => {
            // The routing core never asks for what the send policy forbids; if it did, refusing
            // is the right thing.
            if let Some(n) = log.allow(Instant::now()) {
                warn!("refusing to send {tlv:?}: {e} ({n} more refused since the last report)");
            }
            0
        }
    }
}

async fn read_loop(
    id: LinkId,
    mut rd: OwnedReadHalf,
    ctx: &LinkContext,
    stats: &LinkStats,
) -> Result<(), String> {
    let mut reader = FrameReader::with_capacity(READ_BUFFER);
    let mut refresh = RefreshTracker::default();
    let mut outbox = Outbox::default();
    let mut tun_batch = TunBatch::default();
    let mut in_place = InPlace::default();
    let mut budgets = LinkBudgets::default();
    let mut stalled = Stalled::default();
    let mut tun_writer = ctx.tun_dev.as_deref().map(TunWriter::new);
    let mut drop_log = LogLimiter::new(Duration::from_secs(10));
    let mut tlvs: Vec<Tlv> = Vec::new();
    let mut skipped_logged = 0u32;
    loop {
        let n = rd
            .read(reader.read_space())
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        reader.commit(n);
        stats.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let table = ctx.table.load();
        let mut inb = Inbound {
            own_subnet: ctx.own_subnet,
            link: id,
            counters: &ctx.counters,
            needs: &ctx.needs,
            refresh: &mut refresh,
            budgets: &mut budgets,
            now: Instant::now(),
        };
        let mut data_frames = 0u64;
        loop {
            match reader.next_frame_mut() {
                Ok(Some(Frame::Data {
                    hop_limit,
                    src,
                    dst,
                    body,
                })) => {
                    data_frames += 1;
                    datapath::inbound(
                        &mut inb,
                        &table,
                        hop_limit,
                        src,
                        dst,
                        body,
                        &mut outbox,
                        &mut tun_batch,
                        &mut in_place,
                    )
                }
                Ok(Some(Frame::Control(tlv))) => tlvs.push(tlv),
                Ok(Some(Frame::Skipped(why))) => {
                    datapath::bump(&ctx.counters.malformed_control);
                    if skipped_logged < 10 {
                        skipped_logged += 1;
                        debug!(link = id.0, "skipped control input: {why}");
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("framing error: {e}")),
            }
        }
        drop(table);
        if !in_place.is_empty() {
            write_in_place(
                ctx,
                &mut reader,
                &mut in_place,
                &mut tun_writer,
                &mut drop_log,
            );
        }
        if data_frames > 0 {
            stats
                .rx_data_frames
                .fetch_add(data_frames, Ordering::Relaxed);
        }
        if !tlvs.is_empty() {
            stats
                .rx_control_frames
                .fetch_add(tlvs.len() as u64, Ordering::Relaxed);
        }
        for tlv in tlvs.drain(..) {
            trace!(link = id.0, ?tlv, "control in");
            // Waiting here back-pressures only this peer when the owner is busy.
            if ctx.events.send(LinkEvent::Tlv(id, tlv)).await.is_err() {
                return Ok(());
            }
        }
        flush(ctx, &mut outbox, &mut tun_batch, &mut stalled).await;
    }
}

/// Writes the packets opened in the read buffer to the TUN, coalesced, straight from there.
fn write_in_place(
    ctx: &LinkContext,
    reader: &mut FrameReader,
    in_place: &mut InPlace,
    writer: &mut Option<TunWriter>,
    drop_log: &mut LogLimiter,
) {
    let (Some(tun), Some(wr)) = (ctx.tun_dev.as_deref(), writer.as_mut()) else {
        ctx.counters
            .drop_no_tun
            .fetch_add(in_place.spans.len() as u64, Ordering::Relaxed);
        in_place.clear();
        return;
    };
    let mut packets: Vec<&mut [u8]> = Vec::with_capacity(in_place.spans.len());
    in_place.slices(reader.buffer_mut(), &mut packets);
    let report = tun.write_batch(wr, &mut packets);
    crate::tunio::record_write(&report, &ctx.histograms, &ctx.counters, drop_log);
    in_place.clear();
}

/// Hands the batches built from one read to the TUN writer and the next hops.
async fn flush(
    ctx: &LinkContext,
    outbox: &mut Outbox,
    tun_batch: &mut TunBatch,
    stalled: &mut Stalled,
) {
    if !tun_batch.is_empty() {
        // The next batch starts as large as this one: under load a socket read yields similar
        // batches, and growing from empty by doubling cost the receiver ≈ 9 % of its time.
        let next = TunBatch::with_capacity(tun_batch.data.len(), tun_batch.len());
        let batch = std::mem::replace(tun_batch, next);
        match &ctx.tun {
            Some(tun) => {
                let n = batch.len() as u64;
                if tun.send(batch).await.is_err() {
                    ctx.counters.drop_no_tun.fetch_add(n, Ordering::Relaxed);
                }
            }
            None => {
                ctx.counters
                    .drop_no_tun
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }
    if !outbox.is_empty() {
        let table = ctx.table.load();
        let sends: Vec<_> = outbox
            .drain()
            .filter_map(|(link, batch)| {
                table
                    .links
                    .get(&link)
                    .map(|tx| (link, tx.data.clone(), batch))
            })
            .collect();
        drop(table);
        for (link, tx, buf) in sends {
            let Some(buf) = datapath::offer_batch(&tx, link, buf, stalled, &ctx.counters) else {
                continue;
            };
            // Forwarding waits for a full next hop, but a stalled one must not hold up this
            // peer's traffic to everybody else.
            datapath::wait_for_room(&tx, link, buf, stalled, &ctx.counters).await;
        }
    }
}
