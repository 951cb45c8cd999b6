//! One peer link: a reader task (decode frames; control TLVs to the owner, data frames through
//! the data-path core) and a writer task (control TLVs and batches of data frames, many frames
//! per write). Either task ending closes the link; the owner is told once, with a typed
//! [`CloseReason`] that it counts.
//!
//! A link runs over any [`Transport`]: a reliable, ordered byte stream each way. TCP
//! ([`tcp`]) implements it; QUIC ([`quic`]) implements it with one bidirectional stream and
//! datagrams under it. Nothing here knows which one it has.

mod close;
pub(crate) mod quic;
mod sched;
pub(crate) mod tcp;

pub(crate) use close::{CloseReason, LinkCloses};

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use routing::LinkId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};
use wire::babel::{Metric, Prefix, RouterId, Subnet, Tlv};
use wire::frame::{self, Frame, FrameReader};

use datapath::{bump, DataCounters, DataFrame, Need, Receiver, Run, TunBatch};

use crate::metrics::TunHistograms;
use crate::ratelimit::LogLimiter;
use crate::transmit::{
    self, ChannelNeeds, DataTable, Direct, DirectWrite, LinkTx, Queued, Stalled,
};
use sched::Sched;
use tun::{Tun, Writer as TunWriter};

/// A write that makes no progress for this long means the peer stalled: drop it.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Upper bound of bytes gathered into one write.
const MAX_WRITE: usize = 256 * 1024;
/// Control TLVs waiting for the writer; beyond this they are dropped and counted.
pub(crate) const CONTROL_QUEUE: usize = 1024;
/// Data batches in a link's channel at most. The writer empties it every round; what bounds the
/// queue is its byte budget (`transmit::LINK_QUEUE_BYTES`), which senders wait for
/// (back-pressure).
pub(crate) const DATA_QUEUE: usize = 256;
/// The read buffer of a link that carries only control frames (or little data): a burst of
/// control frames is read in pieces of this size rather than all at once, and an idle or unproven
/// connection holds no more than this. It grows by itself for a frame that does not fit.
pub(crate) const SMALL_READ_BUFFER: usize = 16 * 1024;
/// The read buffer while data frames flow: room for several full-size frames per read. A link
/// grows to it when a read brought data frames and filled the buffer.
pub(crate) const READ_BUFFER: usize = 256 * 1024;
/// A read buffer larger than [`SMALL_READ_BUFFER`] goes back to that size after this long without
/// a read that the small buffer could not have taken.
pub(crate) const READ_BUFFER_IDLE: Duration = Duration::from_secs(2);
/// Control TLVs parsed ahead of their hand-over to the owner. Parsing stops at this many until
/// they are handed over (which waits while the owner is busy), so a burst of control frames is
/// never more than this many TLVs in memory.
const CONTROL_CHUNK: usize = 64;
/// A control buffer of the writer grown past this by a burst is given back after the write.
const CONTROL_BUFFER_KEEP: usize = 16 * 1024;

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
    /// Size of the read buffer now (changes only when it grows or shrinks).
    pub rx_buffer: AtomicU64,
}

/// Links the link layer closed by itself, by reason.
#[derive(Default, Debug)]
pub(crate) struct LinkRefusals {
    /// The remote end was this node itself: it sent our own metric-0 Update for our /64.
    pub self_link: AtomicU64,
    /// Accepted connections at the gate, by outcome (`crate::gate`).
    pub gate: Arc<crate::gate::GateStats>,
    /// What QUIC links did (`quic`).
    pub quic: Arc<quic::QuicStats>,
}

/// Messages from link tasks to the owner.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Tlv(LinkId, Tlv),
    Closed(LinkId, CloseReason),
}

/// What a link runs over: a connected, reliable, ordered byte stream in each direction.
pub(crate) trait Transport: Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;

    /// The routing core's static cost of a link over this transport.
    fn static_cost(&self) -> u16;

    /// How the connection is shown in logs: transport and both ends.
    fn describe(&self) -> String;

    /// Tunes the connection for a link and splits it into its two directions.
    fn split(self) -> (Self::Reader, Self::Writer);

    /// The sending side as a socket that senders may write without blocking while the link is
    /// idle (see [`transmit::Direct`]); `None` if the transport has none.
    fn direct(&self) -> Option<Box<dyn DirectWrite>> {
        None
    }

    /// How long data now waits inside the transport, for queue management, when the transport
    /// has no [`direct`](Transport::direct) socket that says so.
    fn queue_probe(&self) -> Option<QueueProbe> {
        None
    }

    /// The QUIC connection under the link, if it is one.
    fn quic(&self) -> Option<quinn::Connection> {
        None
    }
}

/// Asks a transport how long data now waits inside it.
pub(crate) type QueueProbe = Box<dyn Fn() -> Option<Duration> + Send + Sync>;

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
    /// Ours: a peer that announces our /64 at metric 0 under it is ourselves.
    pub own_router_id: RouterId,
    pub refusals: Arc<LinkRefusals>,
    /// Links closed, by reason (counted by the owner).
    pub closes: Arc<LinkCloses>,
    /// CoDel on each link's queue.
    pub queue_management: bool,
    /// Message packets for us go to the message task (bounded; full drops are counted).
    pub messages: Option<mpsc::Sender<Vec<datapath::InboundMessage>>>,
}

/// Handles the owner keeps for a running link.
pub(crate) struct LinkHandles {
    pub control: mpsc::Sender<Tlv>,
    pub data: LinkTx,
    /// The CE marks its queue management owes ECN-capable flows, for the sealers.
    pub ce: Arc<datapath::fq::CeMarks>,
    pub stats: Arc<LinkStats>,
    pub reader: tokio::task::AbortHandle,
    pub writer: tokio::task::AbortHandle,
}

impl LinkHandles {
    pub fn abort(&self) {
        self.reader.abort();
        self.writer.abort();
        self.data.close();
    }
}

/// Starts the tasks of a connected transport.
pub(crate) fn spawn<T: Transport>(id: LinkId, transport: T, ctx: LinkContext) -> LinkHandles {
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let stats = Arc::new(LinkStats::default());
    let direct = transport
        .direct()
        .map(|sock| Arc::new(Direct::new(sock, stats.clone())));
    let probe = transport.queue_probe();
    let (rd, wr) = transport.split();
    let events = ctx.events.clone();
    let room = transmit::link_room();
    let ce = Arc::new(datapath::fq::CeMarks::default());
    let writer = tokio::spawn({
        let stats = stats.clone();
        let events = events.clone();
        let direct = direct.clone();
        let sched = Sched::new(
            ctx.queue_management,
            room.clone(),
            ctx.counters.clone(),
            ce.clone(),
        );
        let wait = SocketWait::new(probe);
        async move {
            let w = write_loop(wr, ctl_rx, data_rx, direct.as_deref(), sched, wait, &stats);
            let why = match w.await {
                Ok(()) => CloseReason::Shutdown,
                Err(e) => e,
            };
            let _ = events.send(LinkEvent::Closed(id, why)).await;
        }
    });
    let reader = tokio::spawn({
        let stats = stats.clone();
        async move {
            let why = match read_loop(id, rd, &ctx, &stats).await {
                Ok(()) => CloseReason::Shutdown,
                Err(e) => e,
            };
            let _ = events.send(LinkEvent::Closed(id, why)).await;
        }
    });
    LinkHandles {
        control: ctl_tx,
        data: LinkTx::new(data_tx, room, direct),
        ce,
        stats,
        reader: reader.abort_handle(),
        writer: writer.abort_handle(),
    }
}

/// Writes until the owner drops the link's queues (`Ok`) or the transport fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut control: mpsc::Receiver<Tlv>,
    mut data: mpsc::Receiver<Queued>,
    direct: Option<&Direct>,
    mut sched: Sched,
    mut wait: SocketWait,
    stats: &LinkStats,
) -> Result<(), CloseReason> {
    // Control frames are encoded here; data frames are written from the buffers they were
    // sealed into, many per vectored write, picked by the scheduler.
    let mut ctl: Vec<u8> = Vec::with_capacity(4096);
    let mut refused_log = LogLimiter::new(Duration::from_secs(10));
    let result = loop {
        let mut control_frames = 0u64;
        // Batches released without being written (empty ones, or all their frames dropped).
        let mut released = 0usize;
        if sched.is_empty() {
            let leftover_ready = async {
                match direct {
                    Some(d) => d.wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                t = control.recv() => match t {
                    Some(tlv) => control_frames += encode_tlv(&mut ctl, &tlv, &mut refused_log),
                    None => break Ok(()),
                },
                q = data.recv() => match q {
                    Some(q) => released += sched.push(q),
                    None => break Ok(()),
                },
                // A sender's batch the socket took only in part.
                () = leftover_ready => {}
            }
        }
        // Gather whatever else is ready: every queued batch goes to the scheduler, so that a
        // sparse flow's frame is among those it picks from.
        while let Ok(tlv) = control.try_recv() {
            control_frames += encode_tlv(&mut ctl, &tlv, &mut refused_log);
        }
        while let Ok(q) = data.try_recv() {
            released += sched.push(q);
        }
        if !sched.is_empty() {
            let now = Instant::now();
            let socket_wait = if sched.wants_socket_wait() {
                wait.read(now, direct)
            } else {
                Duration::ZERO
            };
            released += sched.fill(MAX_WRITE, now, socket_wait);
        }
        // The socket is ours for this round; what a sender left half written goes first.
        let leftover = direct.map(Direct::writer_begin).unwrap_or_default();
        let total = leftover.len() + ctl.len() + sched.round_bytes();
        let written = tokio::time::timeout(
            WRITE_STALL,
            write_all_vectored(&mut wr, &leftover, &ctl, &sched),
        )
        .await;
        let done = sched.round_done();
        if let Some(d) = direct {
            d.writer_done(done.batches + released);
        }
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Err(CloseReason::WriteFailed(e.kind())),
            Err(_) => break Err(CloseReason::WriteStalled),
        }
        stats.tx_bytes.fetch_add(total as u64, Ordering::Relaxed);
        if done.frames > 0 {
            stats
                .tx_data_frames
                .fetch_add(done.frames, Ordering::Relaxed);
        }
        if control_frames > 0 {
            stats
                .tx_control_frames
                .fetch_add(control_frames, Ordering::Relaxed);
        }
        ctl.clear();
        if ctl.capacity() > CONTROL_BUFFER_KEEP {
            ctl.shrink_to(4096);
        }
    };
    // Senders waiting for room stop waiting.
    sched.close();
    result
}

/// How often the writer asks the socket how long data waits there (`TCP_INFO`, one syscall).
const SOCKET_WAIT_EVERY: Duration = Duration::from_millis(1);

/// How long data written now waits in the socket and in the outer connection's flight, as the
/// kernel (or the transport) reports it, read at most every [`SOCKET_WAIT_EVERY`].
pub(crate) struct SocketWait {
    last: Duration,
    read_at: Option<Instant>,
    /// The transport's own measure, for one without a direct socket.
    probe: Option<QueueProbe>,
}

impl SocketWait {
    fn new(probe: Option<QueueProbe>) -> SocketWait {
        SocketWait {
            last: Duration::ZERO,
            read_at: None,
            probe,
        }
    }

    fn read(&mut self, now: Instant, direct: Option<&Direct>) -> Duration {
        if self
            .read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= SOCKET_WAIT_EVERY)
        {
            self.last = direct
                .and_then(Direct::queue_wait)
                .or_else(|| self.probe.as_ref().and_then(|p| p()))
                .unwrap_or_default();
            self.read_at = Some(now);
        }
        self.last
    }
}

/// Writes the control bytes, then every batch, with as few `writev` calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    leftover: &[u8],
    ctl: &[u8],
    sched: &Sched,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(16);
    if !leftover.is_empty() {
        slices.push(IoSlice::new(leftover));
    }
    if !ctl.is_empty() {
        slices.push(IoSlice::new(ctl));
    }
    slices.extend(sched.slices());
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

/// Reads until the peer ends the stream or breaks it (`Err`), or the owner goes away (`Ok`).
async fn read_loop<R: AsyncRead + Unpin>(
    id: LinkId,
    mut rd: R,
    ctx: &LinkContext,
    stats: &LinkStats,
) -> Result<(), CloseReason> {
    let mut reader = FrameReader::growable(SMALL_READ_BUFFER);
    let mut core = Receiver::new(ctx.own_subnet, id, ctx.counters.clone());
    let mut stalled = Stalled::default();
    let mut tun_writer = ctx.tun_dev.as_deref().map(TunWriter::new);
    let mut drop_log = LogLimiter::new(Duration::from_secs(10));
    let mut tlvs: Vec<Tlv> = Vec::with_capacity(CONTROL_CHUNK);
    let mut skipped_logged = 0u32;
    // Armed only while the buffer is larger than the small size; reset at most once per period.
    let idle = tokio::time::sleep(READ_BUFFER_IDLE);
    tokio::pin!(idle);
    // The last read that took more than the small buffer could: while such reads come, the large
    // buffer earns its memory; a trickle of small reads (a byte every second, say) does not keep
    // it.
    let mut last_bulk = Instant::now();
    stats
        .rx_buffer
        .store(reader.capacity() as u64, Ordering::Relaxed);
    loop {
        let grown = reader.capacity() > idle_capacity(reader.buffered());
        let space = reader.read_space();
        let room = space.len();
        let read = tokio::select! {
            biased;
            r = rd.read(space) => Some(r),
            () = &mut idle, if grown => None,
        };
        let Some(read) = read else {
            let now = Instant::now();
            if now.duration_since(last_bulk) >= READ_BUFFER_IDLE {
                reader.resize(idle_capacity(reader.buffered()));
                stats
                    .rx_buffer
                    .store(reader.capacity() as u64, Ordering::Relaxed);
                idle.as_mut().reset((now + READ_BUFFER_IDLE).into());
            } else {
                idle.as_mut().reset((last_bulk + READ_BUFFER_IDLE).into());
            }
            continue;
        };
        let n = read.map_err(|e| CloseReason::ReadFailed(e.kind()))?;
        if n == 0 {
            return Err(CloseReason::PeerClosed);
        }
        reader.commit(n);
        stats.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        if n >= SMALL_READ_BUFFER {
            last_bulk = now;
        }
        let mut saw_data = false;
        // Everything read is handled before the next read, in chunks of at most CONTROL_CHUNK
        // control TLVs.
        loop {
            let table = ctx.table.load();
            let mut needs = ChannelNeeds(&ctx.needs);
            let mut data_frames = 0u64;
            let mut chunk_full = false;
            loop {
                match reader.next_frame_at() {
                    Ok(Some(Frame::Data {
                        hop_limit,
                        src,
                        dst,
                        body,
                    })) => {
                        data_frames += 1;
                        let frame = DataFrame {
                            hop_limit,
                            src,
                            dst,
                            body,
                        };
                        core.handle_data(&table, &mut needs, now, reader.buffer_mut(), frame);
                    }
                    Ok(Some(Frame::Control(tlv))) => {
                        if is_own_announcement(&tlv, &ctx.own_router_id, ctx.own_subnet) {
                            bump(&ctx.refusals.self_link);
                            return Err(CloseReason::SelfLink);
                        }
                        tlvs.push(tlv);
                        if tlvs.len() >= CONTROL_CHUNK {
                            chunk_full = true;
                            break;
                        }
                    }
                    Ok(Some(Frame::Skipped(why))) => {
                        bump(&ctx.counters.malformed_control);
                        if skipped_logged < 10 {
                            skipped_logged += 1;
                            debug!(link = id.0, "skipped control input: {why}");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(CloseReason::Framing(e)),
                }
            }
            drop(table);
            if core.tun_len() > 0 {
                write_to_tun(ctx, &mut reader, &mut core, &mut tun_writer, &mut drop_log);
            }
            if !core.messages().is_empty() {
                crate::messages::hand_over(ctx.messages.as_ref(), core.messages(), &ctx.counters);
            }
            if data_frames > 0 {
                saw_data = true;
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
            if core.has_transmits() {
                forward(ctx, &mut core, &mut stalled).await;
            }
            if !chunk_full {
                break;
            }
        }
        // Data filled the buffer: more is waiting, read it in larger pieces from now on.
        if saw_data && n == room && reader.capacity() < READ_BUFFER {
            reader.resize(READ_BUFFER);
            stats
                .rx_buffer
                .store(reader.capacity() as u64, Ordering::Relaxed);
            last_bulk = now;
            idle.as_mut().reset((now + READ_BUFFER_IDLE).into());
        }
    }
}

/// The size a read buffer holding `buffered` unconsumed bytes goes back to when idle: the small
/// size, or one maximum frame while a larger frame is partly there.
fn idle_capacity(buffered: usize) -> usize {
    if buffered <= SMALL_READ_BUFFER {
        SMALL_READ_BUFFER
    } else {
        buffered.max(frame::MAX_FRAME_LEN)
    }
}

/// Whether `tlv` is our own announcement: our /64 at metric 0 under our router-id. Only we send
/// that (a neighbour relaying our route adds its link cost), so a link that brings it back is
/// connected to this node itself.
fn is_own_announcement(tlv: &Tlv, own: &RouterId, own_subnet: Subnet) -> bool {
    matches!(tlv, Tlv::Update(u)
        if u.router_id == *own && u.metric == Metric(0) && u.prefix == Prefix::V6(own_subnet))
}

/// Writes the packets for the TUN that the frames of one read gave — opened in the read buffer
/// and written straight from there, coalesced, plus any the core built — in one batch.
fn write_to_tun(
    ctx: &LinkContext,
    reader: &mut FrameReader,
    core: &mut Receiver,
    writer: &mut Option<TunWriter>,
    drop_log: &mut LogLimiter,
) {
    let (Some(tun), Some(wr)) = (ctx.tun_dev.as_deref(), writer.as_mut()) else {
        ctx.counters
            .drop_no_tun
            .fetch_add(core.tun_len() as u64, Ordering::Relaxed);
        core.tun_done();
        return;
    };
    if core.tun_has_wholes() {
        // Super-packets carried whole are written as they came, in order with the rest.
        let mut runs = Vec::new();
        core.tun_runs(reader.buffer_mut(), &mut runs);
        for run in runs {
            let report = match run {
                Run::Packets(mut packets) => tun.write_batch(wr, &mut packets),
                Run::Whole(vnet, packet) => tun.write_whole(wr, &vnet, packet),
            };
            crate::tunio::record_write(&report, &ctx.histograms, &ctx.counters, drop_log);
        }
        core.tun_done();
        return;
    }
    let mut packets: Vec<&mut [u8]> = Vec::with_capacity(core.tun_len());
    core.tun_packets(reader.buffer_mut(), &mut packets);
    let report = tun.write_batch(wr, &mut packets);
    drop(packets);
    crate::tunio::record_write(&report, &ctx.histograms, &ctx.counters, drop_log);
    core.tun_done();
}

/// Hands the batches for next hops built from one read to their links.
async fn forward(ctx: &LinkContext, core: &mut Receiver, stalled: &mut Stalled) {
    let table = ctx.table.load();
    let sends: Vec<_> = core
        .transmits()
        .filter_map(|(link, batch)| table.links.get(&link).map(|tx| (link, tx.clone(), batch)))
        .collect();
    drop(table);
    for (link, tx, buf) in sends {
        let Some(buf) = transmit::offer_batch(&tx, link, buf, stalled, &ctx.counters) else {
            continue;
        };
        // Forwarding waits for a full next hop, but a stalled one must not hold up this
        // peer's traffic to everybody else.
        transmit::wait_for_room(&tx, link, buf, stalled, &ctx.counters).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing::ForwardingTable;
    use tokio::net::{TcpListener, TcpStream};
    use wire::babel::{Hello, SeqNo, Update};

    fn own_subnet() -> Subnet {
        Subnet::new("4aa:1:2:3::".parse().unwrap(), 64).unwrap()
    }

    fn own_rid() -> RouterId {
        RouterId::new([0xaa; 32], [1, 2, 3, 4, 5, 6])
    }

    /// A link context with no routes and no TUN; link events go to a channel of `events` slots.
    fn context(events: usize) -> (LinkContext, mpsc::Receiver<LinkEvent>, mpsc::Receiver<Need>) {
        let fib = ForwardingTable::from_routes(own_subnet(), &[]);
        let (events_tx, events_rx) = mpsc::channel(events);
        let (needs_tx, needs_rx) = mpsc::channel(16);
        let ctx = LinkContext {
            table: Arc::new(ArcSwap::from_pointee(DataTable::empty(Arc::new(fib)))),
            counters: Arc::default(),
            needs: needs_tx,
            events: events_tx,
            tun: None,
            tun_dev: None,
            histograms: Arc::default(),
            own_subnet: own_subnet(),
            own_router_id: own_rid(),
            refusals: Arc::default(),
            closes: Arc::default(),
            queue_management: true,
            messages: None,
        };
        (ctx, events_rx, needs_rx)
    }

    /// The next event, within 10 s.
    async fn next(events: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(ev)) => ev,
            other => panic!("no link event: {other:?}"),
        }
    }

    /// A connected loopback pair: (ours, the peer's).
    async fn pair() -> (TcpStream, std::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
        let (ours, _) = l.accept().await.unwrap();
        (ours, peer.join().unwrap())
    }

    /// Writes `bytes` to the peer's end on a thread of its own; keeps the connection open.
    fn send(mut peer: std::net::TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        use std::io::Write;
        std::thread::spawn(move || {
            peer.write_all(&bytes).unwrap();
            // Hold the connection until the link goes away.
            let mut sink = [0u8; 4096];
            while std::io::Read::read(&mut peer, &mut sink).is_ok_and(|n| n > 0) {}
        })
    }

    fn hellos(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let hello = Tlv::Hello(Hello {
                flags: 0x8000,
                seqno: SeqNo(i as u16),
                interval: 2000,
            });
            frame::encode_control(&mut out, &hello).unwrap();
        }
        out
    }

    /// Polls `cond` until it holds; panics after 10 s.
    async fn until(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    /// Finding 8 of issue 12: 256 KiB of Hellos used to be read at once into a 256 KiB buffer
    /// and parsed into one queue of 16,384 TLVs, both kept for the life of the link. Now, while
    /// the owner is busy, the link reads at most one small buffer ahead, and once everything is
    /// handed over the buffer is still the small one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_burst_is_read_in_small_pieces_and_leaves_a_small_buffer() {
        const N: usize = 16 * 1024;
        let (ctx, mut events, _needs) = context(1);
        let (ours, peer) = pair().await;
        let writer = send(peer, hellos(N));
        let h = spawn(LinkId(1), ours, ctx);
        let stats = h.stats.clone();
        // The owner takes nothing yet: the link blocks handing over its first chunk.
        until(|| events.len() == 1).await;
        // It has parsed at most one chunk ahead, out of at most one small read.
        let read = load(&stats.rx_bytes);
        assert!(
            read <= SMALL_READ_BUFFER as u64,
            "read {read} bytes ahead of a busy owner"
        );
        let mut got = 0;
        while got < N {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(LinkEvent::Tlv(_, Tlv::Hello(_)))) => got += 1,
                other => panic!("after {got} Hellos: {other:?}"),
            }
        }
        assert_eq!(load(&stats.rx_control_frames), N as u64);
        assert_eq!(load(&stats.rx_bytes), (N * 16) as u64);
        assert_eq!(load(&stats.rx_buffer), SMALL_READ_BUFFER as u64);
        h.abort();
        writer.join().unwrap();
    }

    /// The other half of finding 8: a burst of data frames grows the buffer to the full size
    /// (while data flows, reads come in large pieces), and once the link has been idle for
    /// [`READ_BUFFER_IDLE`] the buffer is back to the small size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_buffer_grown_by_data_goes_back_to_small_when_idle() {
        let (ctx, _events, _needs) = context(16);
        let counters = ctx.counters.clone();
        let (ours, peer) = pair().await;
        // Frames for a /64 nobody announced: each is counted and dropped.
        let (src, dst) = ("4bb::1".parse().unwrap(), "4cc::1".parse().unwrap());
        let mut burst = Vec::new();
        let mut frames = 0u64;
        while burst.len() < 4 << 20 {
            frame::encode_data(&mut burst, 64, src, dst, &[0x5a; 1400]).unwrap();
            frames += 1;
        }
        let total = burst.len() as u64;
        let writer = send(peer, burst);
        let h = spawn(LinkId(2), ours, ctx);
        let stats = h.stats.clone();
        until(|| load(&stats.rx_buffer) == READ_BUFFER as u64).await;
        until(|| load(&stats.rx_bytes) == total).await;
        assert_eq!(load(&stats.rx_data_frames), frames);
        assert_eq!(load(&counters.drop_no_route), frames);
        until(|| load(&stats.rx_buffer) == SMALL_READ_BUFFER as u64).await;
        h.abort();
        writer.join().unwrap();
    }

    /// A grown buffer is not kept by a trickle: a peer that sends a Hello every 200 ms after a
    /// data burst (so the link never sits 2 s without a read) still sees it go back to small.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickle_of_small_reads_does_not_keep_a_grown_buffer() {
        use std::io::Write;
        let (ctx, _events, _needs) = context(16);
        let (ours, mut peer) = pair().await;
        let (src, dst) = ("4bb::1".parse().unwrap(), "4cc::1".parse().unwrap());
        let mut burst = Vec::new();
        while burst.len() < 4 << 20 {
            frame::encode_data(&mut burst, 64, src, dst, &[0x5a; 1400]).unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let writer = std::thread::spawn(move || {
            peer.write_all(&burst).unwrap();
            // The trickle: paced by the sender, as a slow peer would be.
            while !stopped.load(Ordering::Relaxed) {
                if peer.write_all(&hellos(1)).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let h = spawn(LinkId(3), ours, ctx);
        let stats = h.stats.clone();
        until(|| load(&stats.rx_buffer) == READ_BUFFER as u64).await;
        let reads_before = load(&stats.rx_control_frames);
        until(|| load(&stats.rx_buffer) == SMALL_READ_BUFFER as u64).await;
        assert!(
            load(&stats.rx_control_frames) > reads_before,
            "the trickle kept coming while the buffer shrank"
        );
        stop.store(true, Ordering::Relaxed);
        h.abort();
        writer.join().unwrap();
    }

    /// Finding 9 of issue 12, defence in depth: a link that brings back our own announcement
    /// (our /64 at metric 0 under our router-id) is connected to this node itself; it is closed
    /// and counted. Our route relayed by a neighbour (at a metric that includes the neighbour's
    /// link cost) keeps the link up.
    #[tokio::test]
    async fn a_link_to_ourselves_is_closed() {
        use std::io::Write;
        let (ctx, mut events, _needs) = context(16);
        let refusals = ctx.refusals.clone();
        let (ours, mut peer) = pair().await;
        let own = Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(7),
            metric: Metric(0),
            prefix: Prefix::V6(own_subnet()),
            router_id: own_rid(),
        };
        let relayed = Update {
            metric: Metric(1010),
            ..own
        };
        let mut first = Vec::new();
        frame::encode_control(&mut first, &Tlv::Update(relayed)).unwrap();
        first.extend_from_slice(&hellos(1));
        let mut then = Vec::new();
        frame::encode_control(&mut then, &Tlv::Update(own)).unwrap();
        peer.write_all(&first).unwrap();
        let h = spawn(LinkId(3), ours, ctx);
        assert!(matches!(
            next(&mut events).await,
            LinkEvent::Tlv(LinkId(3), Tlv::Update(u)) if u == relayed
        ));
        assert!(matches!(
            next(&mut events).await,
            LinkEvent::Tlv(LinkId(3), Tlv::Hello(_))
        ));
        assert_eq!(load(&refusals.self_link), 0);
        peer.write_all(&then).unwrap();
        match next(&mut events).await {
            LinkEvent::Closed(LinkId(3), why) => assert_eq!(why, CloseReason::SelfLink),
            other => panic!("{other:?}"),
        }
        assert_eq!(load(&refusals.self_link), 1);
        h.abort();
    }

    /// The first close event of link 5, within 10 s (Tlv events before it are skipped).
    async fn closed(events: &mut mpsc::Receiver<LinkEvent>) -> CloseReason {
        loop {
            match next(events).await {
                LinkEvent::Closed(LinkId(5), why) => return why,
                LinkEvent::Tlv(..) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_link_says_why_it_closed() {
        use std::io::Write;
        // The peer ends the stream after a hello.
        let (ctx, mut events, _needs) = context(16);
        let (ours, mut peer) = pair().await;
        peer.write_all(&hellos(1)).unwrap();
        let h = spawn(LinkId(5), ours, ctx);
        drop(peer);
        assert_eq!(closed(&mut events).await, CloseReason::PeerClosed);
        h.abort();
        // The peer breaks the framing: outer version 9.
        let (ctx, mut events, _needs) = context(16);
        let (ours, mut peer) = pair().await;
        peer.write_all(&[9, 1, 0, 0, 42, 3, 0, 0]).unwrap();
        let h = spawn(LinkId(5), ours, ctx);
        assert_eq!(
            closed(&mut events).await,
            CloseReason::Framing(frame::StreamError::UnknownVersion(9))
        );
        assert_eq!(
            CloseReason::Framing(frame::StreamError::UnknownVersion(9)).label(),
            "framing"
        );
        h.abort();
        drop(peer);
    }
}
