//! Handing frame batches to link writers: straight to the socket when the link is idle, else
//! through its queue, with a bounded wait for room in a full one and the links found stalled;
//! and the channel that carries the data path's needs to the owner.

use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datapath::{DataCounters, FrameBatch, Need, NeedSink};
use routing::LinkId;
use tokio::sync::{mpsc, Notify, Semaphore, TryAcquireError};

use crate::link::LinkStats;

/// The data path's snapshot as the shell keeps it: each link with its queue's sender.
pub(crate) type DataTable = datapath::DataTable<LinkTx>;

/// Where data frames for one link go: batches of encoded frames, bounded in bytes
/// (back-pressure); and, while nothing of the link is queued or being written, its socket
/// itself.
#[derive(Clone, Debug)]
pub(crate) struct LinkTx {
    data: mpsc::Sender<Queued>,
    /// The link's byte budget, in [`UNIT`]s: a sender takes a batch's units before queueing it,
    /// the writer gives them back once the batch is written or dropped. The writer takes every
    /// queued batch at once (so a sparse flow's frame reaches its flow queue without waiting
    /// behind bulk batches in the channel), which leaves the bound to this.
    room: Arc<Semaphore>,
    direct: Option<Arc<Direct>>,
}

/// Bytes a link's queue holds at most (channel and writer together): 512 KiB, about four
/// batches of super-packet frames, as the queue held before it counted bytes.
pub(crate) const LINK_QUEUE_BYTES: usize = 512 * 1024;
/// The budget's unit.
const UNIT: usize = 1024;

/// A link's byte budget, in units.
pub(crate) fn link_room() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(LINK_QUEUE_BYTES / UNIT))
}

/// The budget units a batch of `bytes` holds: its KiB, rounded up, at least 1 and at most the
/// whole budget (a larger batch waits for an empty queue).
fn units(bytes: usize) -> u32 {
    bytes.div_ceil(UNIT).clamp(1, LINK_QUEUE_BYTES / UNIT) as u32
}

/// A batch in a link's queue, when it was queued (its wait is what queue management
/// measures), and the budget units it holds.
#[derive(Debug)]
pub(crate) struct Queued {
    pub batch: FrameBatch,
    pub at: Instant,
    pub units: u32,
}

/// A socket written without blocking, by whoever holds the lock around it.
pub(crate) trait DirectWrite: Send + Sync {
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;

    /// How long data written now waits in the socket and on the way, beyond the path's own
    /// delay (see `datapath::codel::socket_wait`); `None` when the transport cannot tell.
    fn queue_wait(&self) -> Option<Duration> {
        None
    }
}

/// A peer's TCP socket as senders and the writer write it. Asked how long data waits (which
/// queue management does every millisecond while the link has a queue), it also sizes its
/// unsent backlog to the rate it delivers (`datapath::codel::notsent_lowat`).
pub(crate) struct PeerSocket {
    sock: std::net::TcpStream,
    /// The `TCP_NOTSENT_LOWAT` last set.
    lowat: std::sync::atomic::AtomicU32,
}

impl PeerSocket {
    pub(crate) fn new(sock: std::net::TcpStream, lowat: u32) -> PeerSocket {
        PeerSocket {
            sock,
            lowat: lowat.into(),
        }
    }
}

impl DirectWrite for PeerSocket {
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        std::io::Write::write_vectored(&mut &self.sock, bufs)
    }

    fn queue_wait(&self) -> Option<Duration> {
        let i = tun::sock::tcp_info(&self.sock).ok()?;
        let want = datapath::codel::notsent_lowat(i.delivery_rate);
        if self.lowat.swap(want, Ordering::Relaxed) != want {
            let _ = socket2::SockRef::from(&self.sock).set_tcp_notsent_lowat(want);
        }
        Some(datapath::codel::socket_wait(
            i.notsent_bytes,
            i.delivery_rate,
            i.rtt,
            i.min_rtt,
        ))
    }
}

/// The sender's side of a link's socket. A batch for an idle link is written by the thread
/// that sealed it (the TUN reader, a relaying link reader), in one non-blocking `writev`,
/// instead of waking the link's writer task for it: a lone packet pays no thread hop. Anything
/// queued for the link, or being written by its writer, makes senders queue behind it, so
/// frames of one sender stay in order and writes never interleave.
pub(crate) struct Direct {
    /// Batches in the link's queue or in its writer's hands, plus one while the writer writes
    /// (control frames included) and one for a `leftover`: the socket is the writer's while
    /// this is not zero. Changed under `lock` when it goes from or to zero matters.
    busy: AtomicUsize,
    /// Held around every write of the socket, by senders and the writer alike.
    lock: Mutex<DirectState>,
    /// Wakes the writer for a leftover.
    pub(crate) wake: Notify,
    stats: Arc<LinkStats>,
}

struct DirectState {
    /// `None` once the link closed: the descriptor goes with the link, not with the last
    /// snapshot of the data table that names it.
    sock: Option<Box<dyn DirectWrite>>,
    /// The rest of a batch the socket took only in part: the writer writes it before anything
    /// else.
    leftover: Vec<u8>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("busy", &self.busy.load(Ordering::Relaxed))
            .finish()
    }
}

impl Direct {
    pub(crate) fn new(sock: Box<dyn DirectWrite>, stats: Arc<LinkStats>) -> Direct {
        Direct {
            busy: AtomicUsize::new(0),
            lock: Mutex::new(DirectState {
                sock: Some(sock),
                leftover: Vec::new(),
            }),
            wake: Notify::new(),
            stats,
        }
    }

    /// The writer takes the socket for one round of writes: returns what a sender left half
    /// written, to go first. Pair with [`Direct::writer_done`].
    pub(crate) fn writer_begin(&self) -> Vec<u8> {
        let mut st = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.busy.fetch_add(1, Ordering::SeqCst);
        let rest = std::mem::take(&mut st.leftover);
        if !rest.is_empty() {
            // The leftover's own count goes with it.
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
        rest
    }

    /// The writer wrote `batches` queued batches in its round.
    pub(crate) fn writer_done(&self, batches: usize) {
        self.busy.fetch_sub(batches + 1, Ordering::SeqCst);
    }

    /// How long data written to the socket now waits there and on the way (`None`: unknown, or
    /// the link closed).
    pub(crate) fn queue_wait(&self) -> Option<Duration> {
        let st = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        st.sock.as_ref()?.queue_wait()
    }

    /// The link closed: no more writes from senders, and the descriptor is closed now.
    pub(crate) fn close(&self) {
        let mut st = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Never idle again, whatever the counts do from here.
        self.busy.fetch_add(usize::MAX / 2, Ordering::SeqCst);
        st.sock = None;
        st.leftover = Vec::new();
    }

    /// Writes the batch now if the link is idle: `Err` gives it back (the link is busy, or the
    /// socket took nothing). A batch the socket took in part is finished by the writer.
    fn try_write(&self, batch: FrameBatch) -> Result<FrameBatch, FrameBatch> {
        if self.busy.load(Ordering::SeqCst) != 0 || batch.bytes.is_empty() {
            return Err(batch);
        }
        let Ok(mut st) = self.lock.try_lock() else {
            return Err(batch);
        };
        if self.busy.load(Ordering::SeqCst) != 0 {
            return Err(batch);
        }
        let Some(sock) = &st.sock else {
            return Err(batch);
        };
        let n = match sock.write_vectored(&[IoSlice::new(&batch.bytes)]) {
            Ok(n) if n > 0 => n,
            // Would block, or failed: the writer will find out and close the link.
            _ => return Err(batch),
        };
        if n < batch.bytes.len() {
            st.leftover.extend_from_slice(&batch.bytes[n..]);
            self.busy.fetch_add(1, Ordering::SeqCst);
            self.wake.notify_one();
        }
        drop(st);
        self.stats.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.stats
            .tx_data_frames
            .fetch_add(u64::from(batch.frames), Ordering::Relaxed);
        Ok(batch)
    }
}

impl LinkTx {
    pub(crate) fn new(
        data: mpsc::Sender<Queued>,
        room: Arc<Semaphore>,
        direct: Option<Arc<Direct>>,
    ) -> LinkTx {
        LinkTx { data, room, direct }
    }

    /// Writes the batch to the socket at once if the link is idle (its buffer goes back to the
    /// pool), else queues it without waiting.
    pub(crate) fn try_send(
        &self,
        batch: FrameBatch,
    ) -> Result<(), mpsc::error::TrySendError<FrameBatch>> {
        let batch = match &self.direct {
            Some(d) => match d.try_write(batch) {
                Ok(done) => {
                    crate::pool::give(done.bytes);
                    return Ok(());
                }
                Err(b) => b,
            },
            None => batch,
        };
        let units = units(batch.bytes.len());
        match self.room.try_acquire_many(units) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => return Err(mpsc::error::TrySendError::Full(batch)),
            Err(TryAcquireError::Closed) => return Err(mpsc::error::TrySendError::Closed(batch)),
        }
        self.count_queued(1);
        let q = Queued {
            batch,
            at: Instant::now(),
            units,
        };
        self.data.try_send(q).map_err(|e| {
            self.count_queued(-1);
            self.room.add_permits(units as usize);
            match e {
                mpsc::error::TrySendError::Full(q) => mpsc::error::TrySendError::Full(q.batch),
                mpsc::error::TrySendError::Closed(q) => mpsc::error::TrySendError::Closed(q.batch),
            }
        })
    }

    /// Queues the batch, waiting for room.
    pub(crate) async fn send(
        &self,
        batch: FrameBatch,
    ) -> Result<(), mpsc::error::SendError<FrameBatch>> {
        let units = units(batch.bytes.len());
        match self.room.acquire_many(units).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(mpsc::error::SendError(batch)),
        }
        self.count_queued(1);
        let q = Queued {
            batch,
            at: Instant::now(),
            units,
        };
        self.data.send(q).await.map_err(|e| {
            self.count_queued(-1);
            self.room.add_permits(units as usize);
            mpsc::error::SendError(e.0.batch)
        })
    }

    /// The link closed: senders stop writing its socket, and stop waiting for room.
    pub(crate) fn close(&self) {
        if let Some(d) = &self.direct {
            d.close();
        }
        self.room.close();
    }

    fn count_queued(&self, n: isize) {
        if let Some(d) = &self.direct {
            if n > 0 {
                d.busy.fetch_add(n as usize, Ordering::SeqCst);
            } else {
                d.busy.fetch_sub(n.unsigned_abs(), Ordering::SeqCst);
            }
        }
    }
}

/// How long a sender waits for room in a link's full queue before it treats the link as stalled.
/// Until that link takes a batch again, its batches are dropped (counted as `queue_full`) instead
/// of waited for, so one peer that stopped reading cannot hold up the TUN reader, or a relay's
/// reader, for everybody else. A healthy link drains a batch in well under a millisecond here.
pub(crate) const LINK_STALL_WAIT: Duration = Duration::from_millis(50);

/// The links a sender found stalled (see [`LINK_STALL_WAIT`]).
#[derive(Default)]
pub(crate) struct Stalled {
    links: Vec<LinkId>,
}

impl Stalled {
    pub fn contains(&self, link: LinkId) -> bool {
        self.links.contains(&link)
    }

    pub fn mark(&mut self, link: LinkId) {
        if !self.contains(link) {
            self.links.push(link);
        }
    }

    pub fn clear(&mut self, link: LinkId) {
        self.links.retain(|&l| l != link);
    }
}

/// Queues a batch for a link without waiting. `None`: queued, or dropped and counted (link gone,
/// or known stalled and still full). `Some(batch)`: the queue is full and the link was not known
/// stalled — the caller waits up to [`LINK_STALL_WAIT`] for room (blocking or async) and marks the
/// link stalled if the time runs out.
pub(crate) fn offer_batch(
    tx: &LinkTx,
    link: LinkId,
    batch: FrameBatch,
    stalled: &mut Stalled,
    counters: &DataCounters,
) -> Option<FrameBatch> {
    match tx.try_send(batch) {
        Ok(()) => {
            stalled.clear(link);
            None
        }
        Err(mpsc::error::TrySendError::Closed(b)) => {
            counters
                .drop_no_route
                .fetch_add(u64::from(b.frames), Ordering::Relaxed);
            None
        }
        Err(mpsc::error::TrySendError::Full(b)) => {
            if stalled.contains(link) {
                counters
                    .drop_queue_full
                    .fetch_add(u64::from(b.frames), Ordering::Relaxed);
                None
            } else {
                // The caller waits (bounded) for room.
                Some(b)
            }
        }
    }
}

/// Waits up to [`LINK_STALL_WAIT`] for room for a batch [`offer_batch`] handed back. A link that
/// went away counts the frames as unroutable; one that stays full is marked stalled and the
/// frames count as `queue_full`. Returns true when the link was just marked stalled. Async, so
/// that the timer is created inside the runtime whether the caller awaits it or blocks on it.
pub(crate) async fn wait_for_room(
    tx: &LinkTx,
    link: LinkId,
    batch: FrameBatch,
    stalled: &mut Stalled,
    counters: &DataCounters,
) -> bool {
    let frames = u64::from(batch.frames);
    match tokio::time::timeout(LINK_STALL_WAIT, tx.send(batch)).await {
        Ok(Ok(())) => false,
        Ok(Err(_)) => {
            counters.drop_no_route.fetch_add(frames, Ordering::Relaxed);
            false
        }
        Err(_) => {
            stalled.mark(link);
            counters
                .drop_queue_full
                .fetch_add(frames, Ordering::Relaxed);
            true
        }
    }
}

/// The data path's needs go to the owner over this channel, without waiting; links' frames may
/// not use its last quarter, which stays for the node's own packets.
pub(crate) struct ChannelNeeds<'a>(pub &'a mpsc::Sender<Need>);

impl NeedSink for ChannelNeeds<'_> {
    fn try_push(&mut self, need: Need) -> Result<(), Need> {
        self.0.try_send(need).map_err(|e| match e {
            mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
        })
    }

    fn room_for_links(&self) -> bool {
        self.0.capacity() > self.0.max_capacity() / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(frames: u32) -> FrameBatch {
        FrameBatch {
            bytes: vec![0; 10],
            frames,
            flows: Vec::new(),
        }
    }

    /// What the writer does with a queued batch: takes it, and gives its budget back.
    fn take(rx: &mut mpsc::Receiver<Queued>, room: &Semaphore) -> Queued {
        let q = rx.try_recv().unwrap();
        room.add_permits(q.units as usize);
        q
    }

    #[test]
    fn a_full_link_is_waited_for_until_found_stalled_then_skipped_until_it_drains() {
        // Room for one batch: the byte budget, not the channel, is what fills.
        let (tx, mut rx) = mpsc::channel(8);
        let room = Arc::new(Semaphore::new(1));
        let tx = LinkTx::new(tx, room.clone(), None);
        let counters = DataCounters::default();
        let mut stalled = Stalled::default();
        let link = LinkId(7);
        assert!(offer_batch(&tx, link, batch(1), &mut stalled, &counters).is_none());
        // Full, not known stalled: handed back for a bounded wait.
        let back = offer_batch(&tx, link, batch(2), &mut stalled, &counters).unwrap();
        assert_eq!(back.frames, 2);
        stalled.mark(link);
        // Known stalled and still full: dropped and counted, no wait.
        assert!(offer_batch(&tx, link, batch(3), &mut stalled, &counters).is_none());
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 3);
        // Another link is not affected.
        assert!(!stalled.contains(LinkId(8)));
        // Once it drains, it takes batches again and is no longer stalled.
        assert_eq!(take(&mut rx, &room).batch.frames, 1);
        assert!(offer_batch(&tx, link, batch(4), &mut stalled, &counters).is_none());
        assert!(!stalled.contains(link));
        assert_eq!(take(&mut rx, &room).batch.frames, 4);
        // A closed link: counted as no route.
        drop(rx);
        assert!(offer_batch(&tx, link, batch(5), &mut stalled, &counters).is_none());
        assert_eq!(counters.drop_no_route.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_links_queue_is_bounded_in_bytes_not_batches() {
        let (tx, mut rx) = mpsc::channel(DATA_QUEUE_FOR_TESTS);
        let room = link_room();
        let tx = LinkTx::new(tx, room.clone(), None);
        let big = |kib: usize| FrameBatch {
            bytes: vec![0; kib * 1024],
            frames: 1,
            flows: Vec::new(),
        };
        tx.try_send(big(400)).unwrap();
        // 200 KiB more would pass the 512 KiB budget; small batches still fit.
        assert!(matches!(
            tx.try_send(big(200)),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        for _ in 0..100 {
            tx.try_send(batch(1)).unwrap();
        }
        assert!(tx.try_send(big(20)).is_err());
        // The writer takes the large one: its 400 units come back.
        take(&mut rx, &room);
        tx.try_send(big(200)).unwrap();
        // A batch larger than the whole budget still goes, once the queue is empty enough.
        assert_eq!(units(10 << 20), (LINK_QUEUE_BYTES / UNIT) as u32);
    }

    const DATA_QUEUE_FOR_TESTS: usize = 256;

    #[test]
    fn waiting_for_room_sends_or_marks_the_link_stalled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Room for one batch: the byte budget, not the channel, is what fills.
        let (tx, mut rx) = mpsc::channel(8);
        let room = Arc::new(Semaphore::new(1));
        let tx = LinkTx::new(tx, room.clone(), None);
        let counters = DataCounters::default();
        let mut stalled = Stalled::default();
        let link = LinkId(7);
        tx.try_send(batch(1)).unwrap();
        // Nobody drains the full queue: stalled after the bounded wait, frames counted.
        assert!(rt.block_on(wait_for_room(&tx, link, batch(2), &mut stalled, &counters)));
        assert!(stalled.contains(link));
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 2);
        // Room appears: the batch goes through, nothing counted.
        assert_eq!(take(&mut rx, &room).batch.frames, 1);
        assert!(!rt.block_on(wait_for_room(&tx, link, batch(4), &mut stalled, &counters)));
        assert_eq!(take(&mut rx, &room).batch.frames, 4);
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 2);
        // The link went away: counted as no route, not as stalled.
        drop(rx);
        assert!(!rt.block_on(wait_for_room(
            &tx,
            LinkId(8),
            batch(5),
            &mut stalled,
            &counters
        )));
        assert_eq!(counters.drop_no_route.load(Ordering::Relaxed), 5);
        assert!(!stalled.contains(LinkId(8)));
    }

    impl DirectWrite for std::os::unix::net::UnixStream {
        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            std::io::Write::write_vectored(&mut &*self, bufs)
        }
    }

    fn direct_pair() -> (
        LinkTx,
        Arc<Direct>,
        mpsc::Receiver<Queued>,
        std::os::unix::net::UnixStream,
    ) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let direct = Arc::new(Direct::new(Box::new(ours), Arc::default()));
        let (tx, rx) = mpsc::channel(4);
        (
            LinkTx::new(tx, link_room(), Some(direct.clone())),
            direct,
            rx,
            theirs,
        )
    }

    fn read_all(sock: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match std::io::Read::read(sock, &mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return out,
            }
        }
    }

    fn bytes(fill: u8, len: usize) -> FrameBatch {
        FrameBatch {
            bytes: vec![fill; len],
            frames: 1,
            flows: Vec::new(),
        }
    }

    #[test]
    fn an_idle_link_is_written_at_once_and_a_busy_one_queues_in_order() {
        let (tx, direct, mut rx, mut far) = direct_pair();
        // Idle: written by the sender, nothing queued.
        tx.try_send(bytes(1, 100)).unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(read_all(&mut far), vec![1; 100]);
        assert_eq!(direct.stats.tx_bytes.load(Ordering::Relaxed), 100);
        tx.try_send(bytes(2, 10)).unwrap();
        assert!(rx.try_recv().is_err());
        // While the writer has the socket, batches queue, whatever the socket could take.
        let leftover = direct.writer_begin();
        assert!(leftover.is_empty());
        tx.try_send(bytes(3, 10)).unwrap();
        assert_eq!(rx.try_recv().unwrap().batch.bytes, vec![3; 10]);
        direct.writer_done(1);
        // Idle again: straight out.
        tx.try_send(bytes(4, 10)).unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(read_all(&mut far), [vec![2; 10], vec![4; 10]].concat());
    }

    #[test]
    fn a_batch_the_socket_takes_in_part_is_finished_by_the_writer_before_anything_else() {
        let (tx, direct, mut rx, mut far) = direct_pair();
        // Far larger than the socket buffer: it takes a part.
        tx.try_send(bytes(5, 4 << 20)).unwrap();
        let got = read_all(&mut far);
        assert!(!got.is_empty() && got.len() < 4 << 20);
        // The link is busy until the writer wrote the rest: later batches queue.
        tx.try_send(bytes(6, 10)).unwrap();
        assert_eq!(rx.try_recv().unwrap().batch.bytes, vec![6; 10]);
        let rest = direct.writer_begin();
        assert_eq!(got.len() + rest.len(), 4 << 20);
        assert!(rest.iter().all(|&b| b == 5));
        direct.writer_done(1);
        assert_eq!(direct.busy.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_closed_link_takes_no_direct_writes() {
        let (tx, _direct, mut rx, mut far) = direct_pair();
        tx.close();
        // Neither written nor queued: the link is gone.
        assert!(matches!(
            tx.try_send(bytes(7, 10)),
            Err(mpsc::error::TrySendError::Closed(_))
        ));
        assert!(rx.try_recv().is_err());
        assert!(read_all(&mut far).is_empty());
    }

    #[test]
    fn the_channel_keeps_its_last_quarter_for_the_nodes_own_needs() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut needs = ChannelNeeds(&tx);
        let dst = "4ff::1".parse().unwrap();
        let mut pushed = 0;
        while needs.room_for_links() {
            assert!(needs.try_push(Need::Route(dst)).is_ok());
            pushed += 1;
        }
        assert_eq!(pushed, 6);
        // The node's own needs still fit, up to the channel's capacity.
        assert!(needs.try_push(Need::Route(dst)).is_ok());
        assert!(needs.try_push(Need::Route(dst)).is_ok());
        assert!(needs.try_push(Need::Route(dst)).is_err());
        assert!(rx.try_recv().is_ok());
        assert!(needs.try_push(Need::Route(dst)).is_ok());
    }
}
