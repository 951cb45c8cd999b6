//! The message task: the one owner of the message core ([`message::Messages`]). It takes the
//! message packets the links (and the owner, for frames that waited for a key) opened, requests
//! from the APIs, and the core's timer; it seals the core's packets for their destinations and
//! hands them to the links, and hands completed messages to whoever waits for them
//! (`docs/messages.md`).

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use datapath::{DataCounters, FrameBatch, InboundMessage, MessageBatch, Need};
use message::{Config, Event, MessageId, Messages, PushError, Received, Status, Topics};
use routing::{LinkId, Lookup};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use wire::babel::Subnet;

use crate::control::NodeGone;
use crate::ratelimit::LogLimiter;
use crate::transmit::{self, DataTable, Stalled};

/// How long a message is tried before it is given up (and the receiver told it was aborted).
pub const DEFAULT_SEND_WINDOW: Duration = Duration::from_secs(300);
/// Batches of opened message packets waiting for the task.
pub(crate) const INBOUND_QUEUE: usize = 256;
/// Bytes of frames handed to a link at once.
const BATCH_BYTES: usize = 64 * 1024;
/// A topic's socket gets this long to take a message, and to answer.
const SOCKET_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const SOCKET_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest reply read back from a topic's socket.
const SOCKET_REPLY_MAX: u64 = 16 << 20;
/// Packets for destinations whose route is being queried wait this long at most, this many in
/// all, looked at again every `HOLD_RETRY` (the core resends what is dropped, but only after its
/// own timer: a first message to a new destination would wait 100 ms or more).
const HOLD_MAX: Duration = Duration::from_millis(300);
const HOLD_PACKETS: usize = 512;
const HOLD_RETRY: Duration = Duration::from_millis(5);

/// The message subsystem's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageSettings {
    pub config: Config,
    pub topics: Topics,
}

/// Hands the message packets a link (or the owner) opened to the message task without waiting:
/// when its queue is full they are dropped and counted (`queue_full`); their senders resend.
pub(crate) fn hand_over(
    to: Option<&mpsc::Sender<Vec<InboundMessage>>>,
    batch: &mut MessageBatch,
    counters: &DataCounters,
) {
    let items: Vec<InboundMessage> = batch.drain().collect();
    let n = items.len() as u64;
    let Some(to) = to else {
        counters
            .drop_inner
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    if to.try_send(items).is_err() {
        counters
            .drop_queue_full
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

type PushAnswer = Result<(MessageId, Option<oneshot::Receiver<Received>>), PushError>;
type TopicEdit = Box<dyn FnOnce(&mut Topics) + Send>;

enum Request {
    Push {
        dst: Ipv6Addr,
        topic: Vec<u8>,
        data: Vec<u8>,
        reply_to: Option<MessageId>,
        wait_reply: bool,
        answer: oneshot::Sender<PushAnswer>,
    },
    Pop {
        topic: Option<Vec<u8>>,
        peek: bool,
        wait: bool,
        answer: oneshot::Sender<Received>,
        none: oneshot::Sender<()>,
    },
    Status(MessageId, oneshot::Sender<Option<Status>>),
    Topics(TopicEdit),
    Stats(oneshot::Sender<message::Stats>),
    /// A forwarding task finished: `None` when the socket took the message.
    Forwarded(u64, Option<Received>),
}

/// A cheap handle to the message task, for the APIs.
#[derive(Clone, Debug)]
pub struct MessageHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message request")
    }
}

impl MessageHandle {
    async fn send(&self, r: Request) -> Result<(), NodeGone> {
        self.tx.send(r).await.map_err(|_| NodeGone)
    }

    /// Queues a message (a reply when `reply_to` is set). With `wait_reply`, the receiver gives
    /// the reply when it comes.
    pub async fn push(
        &self,
        dst: Ipv6Addr,
        topic: Vec<u8>,
        data: Vec<u8>,
        reply_to: Option<MessageId>,
        wait_reply: bool,
    ) -> Result<PushAnswer, NodeGone> {
        let (answer, rx) = oneshot::channel();
        self.send(Request::Push {
            dst,
            topic,
            data,
            reply_to,
            wait_reply,
            answer,
        })
        .await?;
        rx.await.map_err(|_| NodeGone)
    }

    /// The oldest message in the inbox (with `topic`), waiting up to `timeout` for one.
    pub async fn pop(
        &self,
        topic: Option<Vec<u8>>,
        peek: bool,
        timeout: Duration,
    ) -> Result<Option<Received>, NodeGone> {
        let (answer, mut rx) = oneshot::channel();
        let (none, none_rx) = oneshot::channel();
        let wait = !timeout.is_zero();
        self.send(Request::Pop {
            topic,
            peek,
            wait,
            answer,
            none,
        })
        .await?;
        let got = tokio::select! {
            m = &mut rx => return Ok(m.ok()),
            Ok(()) = none_rx => None,
            _ = tokio::time::sleep(timeout), if wait => None,
        };
        // Gone without a message: whatever raced in is returned, not lost (a closed receiver
        // makes the task keep the message).
        rx.close();
        Ok(got.or(rx.try_recv().ok()))
    }

    pub async fn status(&self, id: MessageId) -> Result<Option<Status>, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Status(id, tx)).await?;
        rx.await.map_err(|_| NodeGone)
    }

    /// Reads or changes the topic table.
    pub async fn topics<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Topics) -> R + Send + 'static,
    ) -> Result<R, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Topics(Box::new(move |t: &mut Topics| {
            let _ = tx.send(f(t));
        })))
        .await?;
        rx.await.map_err(|_| NodeGone)
    }

    pub async fn stats(&self) -> Result<message::Stats, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Stats(tx)).await?;
        rx.await.map_err(|_| NodeGone)
    }
}

/// What the task needs from the node.
pub(crate) struct MessageTaskCtx {
    pub table: Arc<ArcSwap<DataTable>>,
    pub counters: Arc<DataCounters>,
    pub needs: mpsc::Sender<Need>,
    pub own_addr: Ipv6Addr,
    pub own_subnet: Subnet,
    pub own_key: [u8; 32],
}

struct PopWaiter {
    topic: Option<Vec<u8>>,
    peek: bool,
    answer: oneshot::Sender<Received>,
}

struct Task {
    core: Messages,
    ctx: MessageTaskCtx,
    tx: mpsc::Sender<Request>,
    pops: Vec<PopWaiter>,
    replies: HashMap<MessageId, oneshot::Sender<Received>>,
    asked: HashMap<Ipv6Addr, Instant>,
    /// Packets waiting for a route, oldest first.
    held: std::collections::VecDeque<(Instant, message::Transmit)>,
    stalled: Stalled,
    log: LogLimiter,
    epoch_unix: i64,
    epoch: Instant,
}

/// Starts the message task; it ends when `stop` resolves.
pub(crate) fn start(
    settings: MessageSettings,
    ctx: MessageTaskCtx,
    inbound: mpsc::Receiver<Vec<InboundMessage>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (MessageHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let task = Task {
        core: Messages::new(settings.config, settings.topics),
        ctx,
        tx: tx.clone(),
        pops: Vec::new(),
        replies: HashMap::new(),
        asked: HashMap::new(),
        held: std::collections::VecDeque::new(),
        stalled: Stalled::default(),
        log: LogLimiter::new(Duration::from_secs(10)),
        epoch_unix: crate::owner::unix_now() as i64,
        epoch: Instant::now(),
    };
    let join = tokio::spawn(task.run(rx, inbound, stop));
    (MessageHandle { tx }, join)
}

fn random_id() -> MessageId {
    let mut id = [0u8; 8];
    if getrandom::fill(&mut id).is_err() {
        // Unique, not secret: the clock will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        id.copy_from_slice(&t.to_be_bytes()[8..16]);
    }
    MessageId(id)
}

impl Task {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<Vec<InboundMessage>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            // Handing out a message can send a packet (READ), and sending to ourselves can
            // complete a message: drain both until nothing is left.
            while self.core.has_output() {
                self.events();
                self.flush().await;
            }
            let mut next = self.core.poll_timeout();
            if !self.held.is_empty() {
                let retry = Instant::now() + HOLD_RETRY;
                next = Some(next.map_or(retry, |t| t.min(retry)));
            }
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                Some(batch) = inbound.recv() => {
                    let now = Instant::now();
                    for m in batch {
                        self.core.handle_packet(now, m.src, m.dst, m.sender_key, &m.packet);
                    }
                    // Take some more of what is queued before sending the answers (bounded, so
                    // that requests and timers get their turn under a flood).
                    for _ in 0..64 {
                        let Ok(batch) = inbound.try_recv() else { break };
                        for m in batch {
                            self.core.handle_packet(now, m.src, m.dst, m.sender_key, &m.packet);
                        }
                    }
                }
                Some(r) = requests.recv() => self.request(r),
                () = sleep => {}
            }
            let now = Instant::now();
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
            }
            if !self.held.is_empty() && !self.core.has_output() {
                self.flush().await;
            }
        }
    }

    fn unix_now(&self) -> i64 {
        self.epoch_unix + self.epoch.elapsed().as_secs() as i64
    }

    fn request(&mut self, r: Request) {
        let now = Instant::now();
        match r {
            Request::Push {
                dst,
                topic,
                data,
                reply_to,
                wait_reply,
                answer,
            } => {
                let (id, reply) = match reply_to {
                    Some(id) => (id, true),
                    None => (random_id(), false),
                };
                let src = self.ctx.own_addr;
                let unix = self.unix_now();
                let pushed = self.core.push(
                    now,
                    unix,
                    id,
                    reply,
                    src,
                    dst,
                    topic,
                    data,
                    DEFAULT_SEND_WINDOW,
                );
                let out = pushed.map(|()| {
                    if !wait_reply {
                        return (id, None);
                    }
                    self.replies.retain(|_, tx| !tx.is_closed());
                    let (tx, rx) = oneshot::channel();
                    self.core.expect_reply(id);
                    self.replies.insert(id, tx);
                    (id, Some(rx))
                });
                let _ = answer.send(out);
            }
            Request::Pop {
                topic,
                peek,
                wait,
                answer,
                none,
            } => {
                if self.core.has_message(topic.as_deref()) || wait {
                    self.pops.push(PopWaiter {
                        topic,
                        peek,
                        answer,
                    });
                    self.serve_pops();
                } else {
                    let _ = none.send(());
                }
            }
            Request::Status(id, tx) => {
                let _ = tx.send(self.core.status(id));
            }
            Request::Topics(f) => f(self.core.topics_mut()),
            Request::Stats(tx) => {
                let _ = tx.send(self.core.stats());
            }
            Request::Forwarded(len, back) => self.core.forward_finished(len, back),
        }
    }

    /// Hands inbox messages to waiting readers, oldest waiter first.
    fn serve_pops(&mut self) {
        let mut i = 0;
        while i < self.pops.len() {
            if self.pops[i].answer.is_closed() {
                self.pops.remove(i);
                continue;
            }
            let w = &self.pops[i];
            if !self.core.has_message(w.topic.as_deref()) {
                i += 1;
                continue;
            }
            let w = self.pops.remove(i);
            let Some(m) = self.core.pop(w.topic.as_deref(), w.peek) else {
                continue;
            };
            if let Err(m) = w.answer.send(m) {
                if !w.peek {
                    self.core.unpop(m);
                }
            }
        }
    }

    fn events(&mut self) {
        while let Some(e) = self.core.poll_event() {
            match e {
                Event::Arrived => self.serve_pops(),
                Event::Reply(m) => match self.replies.remove(&m.id) {
                    Some(tx) => {
                        if let Err(m) = tx.send(m) {
                            self.core.reply_unclaimed(m);
                        }
                    }
                    None => self.core.reply_unclaimed(m),
                },
                Event::Forward(m, path) => {
                    let tx = self.tx.clone();
                    tokio::spawn(forward(m, path, tx));
                }
                Event::Refused { id, src, why } => {
                    if let Some(more) = self.log.allow(Instant::now()) {
                        warn!(
                            %id, %src,
                            "message refused: {} ({more} more refusals since the last report)",
                            why.describe()
                        );
                    }
                }
            }
        }
    }

    /// Seals the core's packets and hands them to their next hops; asks the owner for routes it
    /// lacks (at most once a second per destination; the core resends).
    async fn flush(&mut self) {
        let mut per_link: FxHashMap<LinkId, FrameBatch> = FxHashMap::default();
        let mut full: Vec<(LinkId, FrameBatch)> = Vec::new();
        {
            let table = self.ctx.table.load();
            let now = Instant::now();
            let mut queue = std::mem::take(&mut self.held);
            queue.retain(|(at, _)| now.saturating_duration_since(*at) < HOLD_MAX);
            // The core's packets come after the ones that waited.
            while let Some((since, t)) = queue
                .pop_front()
                .or_else(|| self.core.poll_transmit().map(|t| (now, t)))
            {
                if self.ctx.own_subnet.contains_addr(t.dst) {
                    // To ourselves: straight back in.
                    let now = Instant::now();
                    let key = self.ctx.own_key;
                    self.core.handle_packet(now, t.src, t.dst, key, &t.packet);
                    continue;
                }
                let nh = match table.fib.lookup(t.dst) {
                    Lookup::Route(nh) if table.links.contains_key(&nh.link) => nh,
                    _ => {
                        self.ask_route(t.dst);
                        if self.held.len() >= HOLD_PACKETS {
                            self.held.pop_front();
                        }
                        self.held.push_back((since, t));
                        continue;
                    }
                };
                let Some(cipher) = table.cipher(&nh.public_key()) else {
                    continue;
                };
                let batch = per_link.entry(nh.link).or_default();
                if datapath::push_sealed(
                    &mut batch.bytes,
                    &datapath::SealKey::of(&cipher),
                    crypto::PayloadType::Message,
                    &t.packet,
                    message::HOP_LIMIT,
                    t.src,
                    t.dst,
                ) {
                    batch.frames += 1;
                }
                if batch.bytes.len() >= BATCH_BYTES {
                    if let Some(b) = per_link.remove(&nh.link) {
                        full.push((nh.link, b));
                    }
                }
            }
        }
        full.extend(per_link);
        for (link, batch) in full {
            let Some(tx) = self.ctx.table.load().links.get(&link).cloned() else {
                continue;
            };
            let counters = &self.ctx.counters;
            if let Some(b) = transmit::offer_batch(&tx, link, batch, &mut self.stalled, counters) {
                transmit::wait_for_room(&tx, link, b, &mut self.stalled, counters).await;
            }
        }
    }

    fn ask_route(&mut self, dst: Ipv6Addr) {
        let now = Instant::now();
        if self
            .asked
            .get(&dst)
            .is_some_and(|t| now.saturating_duration_since(*t) < Duration::from_secs(1))
        {
            return;
        }
        if self.asked.len() > 4096 {
            self.asked.clear();
        }
        self.asked.insert(dst, now);
        let _ = self.ctx.needs.try_send(Need::Route(dst));
    }
}

/// Gives a message to its topic's socket and sends what the socket answers back as the reply.
async fn forward(m: Received, path: PathBuf, tx: mpsc::Sender<Request>) {
    let len = m.data.len() as u64;
    match exchange(&m.data, &path).await {
        // An answer of nothing leaves the message to be read from the inbox.
        Ok(reply) if !reply.is_empty() => {
            debug!(id = %m.id, socket = %path.display(), "forwarded a message");
            let _ = tx.send(Request::Forwarded(len, None)).await;
            let (answer, _rx) = oneshot::channel();
            let _ = tx
                .send(Request::Push {
                    dst: m.src_ip,
                    topic: Vec::new(),
                    data: reply,
                    reply_to: Some(m.id),
                    wait_reply: false,
                    answer,
                })
                .await;
        }
        Ok(_) => {
            debug!(id = %m.id, socket = %path.display(), "the socket gave no answer; the message goes to the inbox");
            let _ = tx.send(Request::Forwarded(len, Some(m))).await;
        }
        Err(e) => {
            warn!(id = %m.id, socket = %path.display(), "cannot forward a message, keeping it in the inbox: {e}");
            let _ = tx.send(Request::Forwarded(len, Some(m))).await;
        }
    }
}

async fn exchange(data: &[u8], path: &PathBuf) -> std::io::Result<Vec<u8>> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let mut s = tokio::time::timeout(SOCKET_WRITE_TIMEOUT, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(SOCKET_WRITE_TIMEOUT, s.write_all(data))
        .await
        .map_err(|_| timed_out())??;
    s.shutdown().await?;
    let mut reply = Vec::new();
    let mut limited = (&mut s).take(SOCKET_REPLY_MAX);
    tokio::time::timeout(SOCKET_REPLY_TIMEOUT, limited.read_to_end(&mut reply))
        .await
        .map_err(|_| timed_out())??;
    Ok(reply)
}
