//! The message protocol's core: the packet codec ([`packet`]), the receiver's reassembly and
//! bounded inbox, the sender's window and retransmission, and the topic table ([`topics`]).
//!
//! A message is an opaque byte string sent end to end between two overlay addresses, inside data
//! frames of inner type 1 (`docs/messages.md` describes the exchange). [`Messages`] is one
//! node's state for all of them. Inputs: [`Messages::handle_packet`] for every message packet
//! that arrives (opened, with its sender's key), [`Messages::push`] for a message to send,
//! [`Messages::pop`] to read the inbox, [`Messages::handle_timeout`] when
//! [`Messages::poll_timeout`] says so. Outputs, drained after every input:
//! [`Messages::poll_transmit`] (packets to seal and route) and [`Messages::poll_event`]
//! (completed messages for the shell to hand out).
//!
//! What it never does: I/O, reading a clock or a random source (`now`, Unix seconds and new ids
//! come from the caller), or grow past its configured bounds on anything a peer sends.
#![forbid(unsafe_code)]

pub mod packet;
pub mod topics;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use packet::{checksum, MessageId, PacketError, Repr, CHUNK_SIZE, HOP_LIMIT, MAX_TOPIC_LEN};
pub use topics::{Prefix, TopicRule, Topics};

use packet::MIN_CHUNK_SIZE;

/// Bounds and timings. The defaults suit a node with a few hundred MB of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most complete messages waiting in the inbox plus messages being received.
    pub inbox_max_messages: usize,
    /// Most bytes of the same (messages being received count their whole announced length).
    pub inbox_max_bytes: u64,
    /// Longest message sent or accepted.
    pub max_message_len: u64,
    /// Most bytes of unfinished outgoing messages.
    pub outbox_max_bytes: u64,
    /// Most chunks in flight per message.
    pub window_max: usize,
    /// Chunks in flight a message starts with.
    pub window_initial: usize,
    /// A message being received that hears nothing for this long is dropped.
    pub incoming_idle: Duration,
    /// How long the status of a finished outgoing message stays queryable.
    pub keep_finished: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            inbox_max_messages: 1024,
            inbox_max_bytes: 64 << 20,
            max_message_len: 16 << 20,
            outbox_max_bytes: 256 << 20,
            window_max: 512,
            window_initial: 32,
            incoming_idle: Duration::from_secs(60),
            keep_finished: Duration::from_secs(600),
        }
    }
}

/// The retransmission timeout before any round trip was measured, and its floor.
const RTO_MIN: Duration = Duration::from_millis(100);
const RTO_MAX: Duration = Duration::from_secs(2);
/// Completed ids remembered so a repeated DONE is acknowledged again.
const RECENT_DONE: usize = 1024;
/// Finished outgoing records kept at most.
const FINISHED_MAX: usize = 4096;

/// A packet to seal for `dst` and send from `src` (inner type 1, hop limit [`HOP_LIMIT`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub packet: Vec<u8>,
}

/// A message received in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub id: MessageId,
    /// It answers a message of ours with the same id.
    pub reply: bool,
    pub src_ip: Ipv6Addr,
    pub src_pk: [u8; 32],
    pub dst_ip: Ipv6Addr,
    pub topic: Vec<u8>,
    pub data: Vec<u8>,
}

/// What the shell must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A message entered the inbox: wake whoever waits in [`Messages::pop`].
    Arrived,
    /// A reply someone waits for ([`Messages::expect_reply`]); it is not in the inbox.
    Reply(Received),
    /// A message for a topic forwarded to a local socket; report with
    /// [`Messages::forward_finished`]. Its bytes stay counted against the inbox until then.
    Forward(Received, PathBuf),
    /// An incoming message was refused or failed (for the log).
    Refused {
        id: MessageId,
        src: Ipv6Addr,
        why: Refusal,
    },
}

/// Why an incoming message was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The inbox holds its maximum count or bytes; the sender keeps retrying its INIT.
    InboxFull,
    /// Longer than `max_message_len`.
    TooLarge,
    /// The topic's whitelist, or the default action, refuses the sender.
    Topic,
    /// The reassembled data did not match the DONE hash.
    Checksum,
    /// The sender aborted it.
    Aborted,
    /// Nothing heard of it for `incoming_idle`.
    Idle,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::InboxFull => "inbox full",
            Refusal::TooLarge => "message longer than the configured maximum",
            Refusal::Topic => "topic not accepted from this sender",
            Refusal::Checksum => "checksum mismatch",
            Refusal::Aborted => "aborted by the sender",
            Refusal::Idle => "sender went silent",
        }
    }
}

/// Why a message could not be queued for sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    TopicTooLong(usize),
    TooLarge { len: u64, max: u64 },
    OutboxFull { max: u64 },
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::TopicTooLong(n) => {
                write!(f, "topic is {n} bytes; at most {MAX_TOPIC_LEN} allowed")
            }
            PushError::TooLarge { len, max } => {
                write!(f, "message is {len} bytes; at most {max} allowed")
            }
            PushError::OutboxFull { max } => write!(
                f,
                "too many bytes waiting to be sent (at most {max}); try again later"
            ),
        }
    }
}

impl std::error::Error for PushError {}

/// Where an outgoing message stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the receiver to accept the INIT.
    Pending,
    Sending {
        pending: usize,
        sent: usize,
        acked: usize,
    },
    Received,
    Read,
    Aborted,
}

/// The status of an outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub dst: Ipv6Addr,
    pub state: Progress,
    /// Unix seconds.
    pub created: i64,
    pub deadline: i64,
    pub msg_len: u64,
    /// Why it failed, in a sentence; `None` unless aborted.
    pub failure: Option<String>,
}

/// Counters, cumulative unless said otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
    /// Outgoing messages aborted at their deadline.
    pub failed: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub retransmits: u64,
    /// Packets that did not parse, or contradicted their message (chunk past the length, index
    /// too high, short non-final chunk).
    pub malformed: u64,
    pub refused_inbox_full: u64,
    pub refused_too_large: u64,
    pub refused_topic: u64,
    pub bad_checksum: u64,
    pub aborted_incoming: u64,
    pub idle_incoming: u64,
    /// Gauges.
    pub inbox_messages: u64,
    pub inbox_bytes: u64,
    pub incoming: u64,
    pub outgoing: u64,
    pub outbox_bytes: u64,
}

struct Incoming {
    reply: bool,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_pk: [u8; 32],
    topic: Vec<u8>,
    len: u64,
    /// Allocated at the first chunk.
    data: Vec<u8>,
    /// Size of each chunk received, by index; 0 for missing.
    sizes: Vec<u32>,
    last: Instant,
}

impl Incoming {
    fn max_index(&self) -> u64 {
        if self.len == 0 {
            0
        } else {
            self.len.div_ceil(MIN_CHUNK_SIZE as u64) - 1
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Unsent,
    /// In flight since, as the send numbered so (per message), retransmitted at least once.
    Sent(Instant, u64, bool),
    Acked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendState {
    Init,
    Sending,
    Received,
    Read,
    Aborted,
}

struct Outgoing {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    reply: bool,
    topic: Vec<u8>,
    /// Emptied once the message is finished.
    data: Vec<u8>,
    len: u64,
    state: SendState,
    /// (offset, size) of each chunk, fixed when the INIT is accepted.
    layout: Vec<(u64, u32)>,
    chunks: Vec<ChunkState>,
    /// Next chunk never sent.
    next: usize,
    /// Chunks in flight, oldest send first, with their send number (entries acked or resent
    /// since are skipped lazily).
    flight: VecDeque<(usize, u64)>,
    /// Sends numbered so far.
    sends: u64,
    /// Acknowledgements of chunks sent after the oldest one in flight (its send number, count):
    /// at three it counts as lost without waiting for its timer (fast retransmit).
    passed: (u64, u32),
    /// Losses of chunks sent before this send number belong to a loss already answered by
    /// shrinking the window.
    recovery: u64,
    in_flight: usize,
    acked: usize,
    /// Chunks allowed in flight: doubles each round trip below `ssthresh`, then grows by one a
    /// round trip; halved when a retransmission timer fires (AIMD, as TCP's Reno).
    window: usize,
    ssthresh: usize,
    /// Acknowledgements counted towards the next increase above `ssthresh`.
    credit: usize,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// When INIT or DONE was last sent, and the current back-off for it.
    ctl_sent: Instant,
    ctl_backoff: Duration,
    done_sent: bool,
    created_unix: i64,
    deadline_unix: i64,
    deadline: Instant,
    finished_at: Option<Instant>,
    failure: Option<String>,
}

impl Outgoing {
    fn rto(&self) -> Duration {
        match self.srtt {
            Some(s) => (s + 4 * self.rttvar).clamp(RTO_MIN, RTO_MAX),
            None => RTO_MIN,
        }
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }

    fn finished(&self) -> bool {
        matches!(
            self.state,
            SendState::Received | SendState::Read | SendState::Aborted
        )
    }
}

/// The message state of one node. See the crate documentation for the order of calls.
pub struct Messages {
    cfg: Config,
    topics: Topics,
    incoming: HashMap<MessageId, Incoming>,
    inbox: VecDeque<Received>,
    /// Bytes of the inbox, of messages being received (their announced length) and of
    /// messages handed out for forwarding.
    inbox_bytes: u64,
    forwarding: usize,
    recent_done: VecDeque<(MessageId, Ipv6Addr)>,
    outgoing: HashMap<MessageId, Outgoing>,
    /// Finished outgoing messages in the order they finished (entries of records replaced since
    /// are skipped when they come up).
    finished: VecDeque<(Instant, MessageId)>,
    outbox_bytes: u64,
    reply_waiters: HashSet<MessageId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Messages {
    pub fn new(cfg: Config, topics: Topics) -> Messages {
        Messages {
            cfg,
            topics,
            incoming: HashMap::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            forwarding: 0,
            recent_done: VecDeque::new(),
            outgoing: HashMap::new(),
            finished: VecDeque::new(),
            outbox_bytes: 0,
            reply_waiters: HashSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn topics_mut(&mut self) -> &mut Topics {
        &mut self.topics
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.inbox_messages = self.inbox.len() as u64;
        s.inbox_bytes = self.inbox_bytes;
        s.incoming = self.incoming.len() as u64;
        s.outgoing = self.outgoing.values().filter(|o| !o.finished()).count() as u64;
        s.outbox_bytes = self.outbox_bytes;
        s
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether packets or events wait to be polled.
    pub fn has_output(&self) -> bool {
        !self.transmits.is_empty() || !self.events.is_empty()
    }

    fn send(&mut self, src: Ipv6Addr, dst: Ipv6Addr, r: &Repr<'_>) {
        self.stats.packets_out += 1;
        self.transmits.push_back(Transmit {
            src,
            dst,
            packet: r.to_vec(),
        });
    }

    // ---- sending -------------------------------------------------------------------------

    /// Queues a message for `dst` from `src` (our address) and sends its INIT. `id` is fresh
    /// randomness from the caller, or the id of the message this replies to (`reply`).
    /// `window` is how long to try before giving up; `unix_now` only labels the status.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        now: Instant,
        unix_now: i64,
        id: MessageId,
        reply: bool,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        topic: Vec<u8>,
        data: Vec<u8>,
        window: Duration,
    ) -> Result<(), PushError> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(PushError::TopicTooLong(topic.len()));
        }
        let len = data.len() as u64;
        if len > self.cfg.max_message_len {
            return Err(PushError::TooLarge {
                len,
                max: self.cfg.max_message_len,
            });
        }
        if self.outbox_bytes + len > self.cfg.outbox_max_bytes {
            return Err(PushError::OutboxFull {
                max: self.cfg.outbox_max_bytes,
            });
        }
        self.expire_finished(now);
        if let Some(old) = self.outgoing.remove(&id) {
            self.outbox_bytes -= old.data.len() as u64;
        }
        self.outbox_bytes += len;
        let o = Outgoing {
            src,
            dst,
            reply,
            topic,
            data,
            len,
            state: SendState::Init,
            layout: Vec::new(),
            chunks: Vec::new(),
            next: 0,
            flight: VecDeque::new(),
            sends: 0,
            passed: (0, 0),
            recovery: 0,
            in_flight: 0,
            acked: 0,
            window: self.cfg.window_initial.max(1),
            ssthresh: self.cfg.window_max,
            credit: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            ctl_sent: now,
            ctl_backoff: RTO_MIN,
            done_sent: false,
            created_unix: unix_now,
            deadline_unix: unix_now.saturating_add(window.as_secs() as i64),
            deadline: now + window,
            finished_at: None,
            failure: None,
        };
        let init = Repr::Init {
            id,
            reply,
            ack: false,
            len,
            topic: &o.topic,
        };
        self.send(src, dst, &init);
        self.outgoing.insert(id, o);
        Ok(())
    }

    /// Whether an outgoing message with this id is known (sending or finished).
    pub fn knows_outgoing(&self, id: MessageId) -> bool {
        self.outgoing.contains_key(&id)
    }

    /// The status of an outgoing message.
    pub fn status(&self, id: MessageId) -> Option<Status> {
        let o = self.outgoing.get(&id)?;
        let state = match o.state {
            SendState::Init => Progress::Pending,
            SendState::Sending => Progress::Sending {
                pending: o.chunks.len() - o.next,
                sent: o.in_flight,
                acked: o.acked,
            },
            SendState::Received => Progress::Received,
            SendState::Read => Progress::Read,
            SendState::Aborted => Progress::Aborted,
        };
        Some(Status {
            dst: o.dst,
            state,
            created: o.created_unix,
            deadline: o.deadline_unix,
            msg_len: o.len,
            failure: o.failure.clone(),
        })
    }

    /// A reply to our message `id` goes to [`Event::Reply`] instead of the inbox.
    pub fn expect_reply(&mut self, id: MessageId) {
        self.reply_waiters.insert(id);
    }

    pub fn forget_reply(&mut self, id: MessageId) {
        self.reply_waiters.remove(&id);
    }

    /// Cuts the message into chunks once its INIT was accepted. Chunks are [`CHUNK_SIZE`]
    /// bytes; when the last would be shorter than receivers accept for a non-final chunk, the
    /// one before it gives it bytes (the chunk count stays `ceil(len / CHUNK_SIZE)`).
    fn layout(len: u64) -> Vec<(u64, u32)> {
        let cs = CHUNK_SIZE as u64;
        let n = len.div_ceil(cs);
        let mut v: Vec<(u64, u32)> = (0..n)
            .map(|i| (i * cs, (len - i * cs).min(cs) as u32))
            .collect();
        if v.len() >= 2 {
            let last = v[v.len() - 1].1 as usize;
            if last < MIN_CHUNK_SIZE {
                let give = (MIN_CHUNK_SIZE - last) as u32;
                let k = v.len();
                v[k - 2].1 -= give;
                v[k - 1].0 -= u64::from(give);
                v[k - 1].1 += give;
            }
        }
        v
    }

    fn on_ack(&mut self, now: Instant, r: &Repr<'_>) {
        let id = r.id();
        let Some(o) = self.outgoing.get_mut(&id) else {
            return;
        };
        match *r {
            Repr::Init { .. } => {
                if o.state != SendState::Init {
                    return;
                }
                if o.ctl_backoff == RTO_MIN {
                    // Only the first INIT was sent: a clean round-trip sample.
                    o.sample_rtt(now.saturating_duration_since(o.ctl_sent));
                }
                o.state = SendState::Sending;
                o.layout = Self::layout(o.len);
                o.chunks = vec![ChunkState::Unsent; o.layout.len()];
                self.fill(now, id);
            }
            Repr::Chunk { index, .. } => {
                if o.state != SendState::Sending {
                    return;
                }
                let Some(c) = usize::try_from(index)
                    .ok()
                    .and_then(|i| o.chunks.get_mut(i))
                else {
                    return;
                };
                match *c {
                    ChunkState::Sent(at, seq, retransmitted) => {
                        *c = ChunkState::Acked;
                        o.in_flight -= 1;
                        o.acked += 1;
                        if !retransmitted {
                            o.sample_rtt(now.saturating_duration_since(at));
                        }
                        if o.window < o.ssthresh {
                            o.window += 1;
                        } else {
                            o.credit += 1;
                            if o.credit >= o.window {
                                o.credit = 0;
                                o.window += 1;
                            }
                        }
                        o.window = o.window.min(self.cfg.window_max);
                        if let Some(p) = fast_retransmit(o, now, seq) {
                            let (src, dst) = (o.src, o.dst);
                            let packet = chunk_packet(id, o, p);
                            self.stats.retransmits += 1;
                            self.stats.packets_out += 1;
                            self.transmits.push_back(Transmit { src, dst, packet });
                        }
                    }
                    ChunkState::Unsent | ChunkState::Acked => return,
                }
                self.fill(now, id);
            }
            Repr::Done { .. } => {
                if o.state != SendState::Sending || o.acked != o.chunks.len() {
                    return;
                }
                o.state = SendState::Received;
                o.finished_at = Some(now);
                self.finished.push_back((now, id));
                self.outbox_bytes -= o.data.len() as u64;
                o.data = Vec::new();
                o.flight = VecDeque::new();
                self.stats.sent += 1;
                self.stats.sent_bytes += o.len;
            }
            Repr::Read { .. } | Repr::Aborted { .. } => {}
        }
    }

    /// Sends chunks up to the window, or DONE once every chunk is acknowledged.
    fn fill(&mut self, now: Instant, id: MessageId) {
        let Some(o) = self.outgoing.get_mut(&id) else {
            return;
        };
        let mut out = Vec::new();
        while o.in_flight < o.window && o.next < o.chunks.len() {
            let i = o.next;
            o.next += 1;
            o.sends += 1;
            o.chunks[i] = ChunkState::Sent(now, o.sends, false);
            o.in_flight += 1;
            o.flight.push_back((i, o.sends));
            out.push(chunk_packet(id, o, i));
        }
        if o.acked == o.chunks.len() && !o.done_sent {
            o.done_sent = true;
            o.ctl_sent = now;
            o.ctl_backoff = o.rto();
            out.push(done_packet(id, o));
        }
        let (src, dst) = (o.src, o.dst);
        self.stats.packets_out += out.len() as u64;
        self.transmits
            .extend(out.into_iter().map(|packet| Transmit { src, dst, packet }));
    }

    // ---- receiving -----------------------------------------------------------------------

    /// One message packet from `src` (whose key is `src_pk`) to `dst` (an address of ours).
    /// Malformed packets are counted and dropped.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        src_pk: [u8; 32],
        packet: &[u8],
    ) {
        self.stats.packets_in += 1;
        let r = match Repr::parse(packet) {
            Ok(r) => r,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let is_ack = match r {
            Repr::Init { ack, .. }
            | Repr::Chunk { ack, .. }
            | Repr::Done { ack, .. }
            | Repr::Read { ack, .. } => ack,
            Repr::Aborted { .. } => false,
        };
        if is_ack {
            // Only the node we sent to may acknowledge.
            if self.outgoing.get(&r.id()).is_some_and(|o| o.dst == src) {
                self.on_ack(now, &r);
            }
            return;
        }
        match r {
            Repr::Init {
                id,
                reply,
                len,
                topic,
                ..
            } => self.on_init(now, src, dst, src_pk, id, reply, len, topic),
            Repr::Chunk {
                id,
                index,
                offset,
                size,
                data,
                ..
            } => self.on_chunk(now, src, dst, id, index, offset, size, data),
            Repr::Done {
                id, chunks, hash, ..
            } => self.on_done(now, src, dst, id, chunks, hash),
            Repr::Read { id, .. } => {
                if let Some(o) = self.outgoing.get_mut(&id) {
                    if o.dst == src && o.state == SendState::Received {
                        o.state = SendState::Read;
                    }
                }
            }
            Repr::Aborted { id } => {
                if self.incoming.get(&id).is_some_and(|m| m.src == src) {
                    self.drop_incoming(id, Refusal::Aborted);
                }
            }
        }
    }

    fn refuse(&mut self, id: MessageId, src: Ipv6Addr, why: Refusal) {
        match why {
            Refusal::InboxFull => self.stats.refused_inbox_full += 1,
            Refusal::TooLarge => self.stats.refused_too_large += 1,
            Refusal::Topic => self.stats.refused_topic += 1,
            Refusal::Checksum => self.stats.bad_checksum += 1,
            Refusal::Aborted => self.stats.aborted_incoming += 1,
            Refusal::Idle => self.stats.idle_incoming += 1,
        }
        self.events.push_back(Event::Refused { id, src, why });
    }

    fn drop_incoming(&mut self, id: MessageId, why: Refusal) {
        if let Some(m) = self.incoming.remove(&id) {
            self.inbox_bytes -= m.len;
            self.refuse(id, m.src, why);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_init(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        src_pk: [u8; 32],
        id: MessageId,
        reply: bool,
        len: u64,
        topic: &[u8],
    ) {
        let ack = Repr::Init {
            id,
            reply,
            ack: true,
            len,
            topic,
        };
        if let Some(m) = self.incoming.get_mut(&id) {
            if m.src == src && m.len == len && m.topic == topic {
                // A repeated INIT (our ACK crossed it): acknowledge again, keep the chunks.
                m.last = now;
                self.send(dst, src, &ack);
                return;
            }
            self.drop_incoming(id, Refusal::Aborted);
        }
        if self.inbox.iter().any(|m| m.id == id) {
            return;
        }
        if len > self.cfg.max_message_len {
            return self.refuse(id, src, Refusal::TooLarge);
        }
        if !reply && !self.topics.allows(topic, src) {
            return self.refuse(id, src, Refusal::Topic);
        }
        let count = self.inbox.len() + self.incoming.len() + self.forwarding;
        if count >= self.cfg.inbox_max_messages || self.inbox_bytes + len > self.cfg.inbox_max_bytes
        {
            // Not acknowledged: the sender tries again, and gets in once room is made.
            return self.refuse(id, src, Refusal::InboxFull);
        }
        self.inbox_bytes += len;
        self.incoming.insert(
            id,
            Incoming {
                reply,
                src,
                dst,
                src_pk,
                topic: topic.to_vec(),
                len,
                data: Vec::new(),
                sizes: vec![0; len.div_ceil(CHUNK_SIZE as u64) as usize],
                last: now,
            },
        );
        self.send(dst, src, &ack);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_chunk(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        id: MessageId,
        index: u64,
        offset: u64,
        size: u64,
        data: &[u8],
    ) {
        let Some(m) = self.incoming.get_mut(&id) else {
            return;
        };
        if m.src != src {
            return;
        }
        let end = offset.checked_add(size);
        let fits = end.is_some_and(|e| e <= m.len);
        let is_last = end == Some(m.len);
        if !fits
            || index > m.max_index()
            || (size < MIN_CHUNK_SIZE as u64 && !is_last)
            || size > u64::from(u32::MAX)
        {
            self.stats.malformed += 1;
            return;
        }
        m.last = now;
        if m.data.is_empty() && m.len > 0 {
            m.data = vec![0; m.len as usize];
        }
        let (o, n) = (offset as usize, size as usize);
        m.data[o..o + n].copy_from_slice(data);
        let i = index as usize;
        if m.sizes.len() <= i {
            m.sizes.resize(i + 1, 0);
        }
        m.sizes[i] = size as u32;
        let ack = Repr::Chunk {
            id,
            ack: true,
            index,
            offset,
            size,
            data: &[],
        };
        self.send(dst, src, &ack);
    }

    fn on_done(
        &mut self,
        now: Instant,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        id: MessageId,
        chunks: u64,
        hash: [u8; 32],
    ) {
        let ack = Repr::Done {
            id,
            ack: true,
            chunks,
            hash,
        };
        let Some(m) = self.incoming.get(&id) else {
            if self.recent_done.contains(&(id, src)) {
                // Our ACK was lost; the sender asks again.
                self.send(dst, src, &ack);
            }
            return;
        };
        if m.src != src {
            return;
        }
        // Every chunk must be there, in the number the sender counted, adding up to the length.
        let complete = m.sizes.iter().all(|&s| s > 0 || m.len == 0)
            && chunks == m.sizes.len() as u64
            && m.sizes.iter().map(|&s| u64::from(s)).sum::<u64>() == m.len;
        if !complete {
            self.stats.malformed += 1;
            return;
        }
        let Some(m) = self.incoming.remove(&id) else {
            return;
        };
        if checksum(&m.data) != hash {
            self.inbox_bytes -= m.len;
            return self.refuse(id, src, Refusal::Checksum);
        }
        let _ = now;
        self.send(dst, src, &ack);
        if self.recent_done.len() >= RECENT_DONE {
            self.recent_done.pop_front();
        }
        self.recent_done.push_back((id, src));
        self.stats.received += 1;
        self.stats.received_bytes += m.len;
        let msg = Received {
            id,
            reply: m.reply,
            src_ip: m.src,
            src_pk: m.src_pk,
            dst_ip: m.dst,
            topic: m.topic,
            data: m.data,
        };
        if msg.reply && self.reply_waiters.remove(&id) {
            self.inbox_bytes -= m.len;
            self.events.push_back(Event::Reply(msg));
            return;
        }
        if !msg.reply {
            if let Some(path) = self.topics.forward(&msg.topic).cloned() {
                self.forwarding += 1;
                self.events.push_back(Event::Forward(msg, path));
                return;
            }
        }
        self.inbox.push_back(msg);
        self.events.push_back(Event::Arrived);
    }

    /// The outcome of an [`Event::Forward`]: `None` when the socket took it, else the message,
    /// which then goes to the inbox.
    pub fn forward_finished(&mut self, len: u64, back: Option<Received>) {
        self.forwarding = self.forwarding.saturating_sub(1);
        match back {
            Some(m) => {
                self.inbox.push_back(m);
                self.events.push_back(Event::Arrived);
            }
            None => self.inbox_bytes = self.inbox_bytes.saturating_sub(len),
        }
    }

    /// A reply whose waiter went away before it could be handed over: into the inbox it goes
    /// (room permitting; otherwise it is counted as refused).
    pub fn reply_unclaimed(&mut self, m: Received) {
        let len = m.data.len() as u64;
        if self.inbox.len() + self.incoming.len() >= self.cfg.inbox_max_messages
            || self.inbox_bytes + len > self.cfg.inbox_max_bytes
        {
            return self.refuse(m.id, m.src_ip, Refusal::InboxFull);
        }
        self.inbox_bytes += len;
        self.inbox.push_back(m);
        self.events.push_back(Event::Arrived);
    }

    /// The oldest message in the inbox (with `topic`, if given): removed unless `peek`. The
    /// sender is told it was read.
    pub fn pop(&mut self, topic: Option<&[u8]>, peek: bool) -> Option<Received> {
        let i = self
            .inbox
            .iter()
            .position(|m| topic.is_none_or(|t| m.topic == t))?;
        let m = if peek {
            self.inbox[i].clone()
        } else {
            let m = self.inbox.remove(i)?;
            self.inbox_bytes -= m.data.len() as u64;
            m
        };
        self.send(
            m.dst_ip,
            m.src_ip,
            &Repr::Read {
                id: m.id,
                ack: false,
            },
        );
        Some(m)
    }

    /// Puts back a message [`Messages::pop`] took that could not be handed over (its reader
    /// left): first in line again, its bytes counted again.
    pub fn unpop(&mut self, m: Received) {
        self.inbox_bytes += m.data.len() as u64;
        self.inbox.push_front(m);
    }

    /// Whether a message (with `topic`) waits in the inbox.
    pub fn has_message(&self, topic: Option<&[u8]>) -> bool {
        self.inbox
            .iter()
            .any(|m| topic.is_none_or(|t| m.topic == t))
    }

    // ---- time ----------------------------------------------------------------------------

    /// The next instant [`Messages::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for o in self.outgoing.values() {
            match o.state {
                SendState::Init => {
                    at(o.ctl_sent + o.ctl_backoff);
                    at(o.deadline);
                }
                SendState::Sending => {
                    if let Some(sent) = oldest_in_flight(o) {
                        at(sent + o.rto());
                    }
                    if o.done_sent {
                        at(o.ctl_sent + o.ctl_backoff);
                    }
                    at(o.deadline);
                }
                _ => {}
            }
        }
        if let Some(&(f, _)) = self.finished.front() {
            at(f + self.cfg.keep_finished);
        }
        for m in self.incoming.values() {
            at(m.last + self.cfg.incoming_idle);
        }
        t
    }

    /// Retransmits what is overdue, aborts what ran out of time, forgets what is stale.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<MessageId> = self
            .outgoing
            .iter()
            .filter(|(_, o)| !o.finished())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.outgoing_timeout(now, id);
        }
        let idle: Vec<MessageId> = self
            .incoming
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last) >= self.cfg.incoming_idle)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.drop_incoming(id, Refusal::Idle);
        }
        self.expire_finished(now);
    }

    /// Forgets finished messages older than `keep_finished`, and the oldest beyond
    /// `FINISHED_MAX`.
    fn expire_finished(&mut self, now: Instant) {
        let keep = self.cfg.keep_finished;
        while let Some(&(at, id)) = self.finished.front() {
            let expired = now.saturating_duration_since(at) >= keep;
            if !expired && self.finished.len() <= FINISHED_MAX {
                break;
            }
            self.finished.pop_front();
            // Only the record that finished then (its id may have been reused since).
            if self
                .outgoing
                .get(&id)
                .is_some_and(|o| o.finished_at == Some(at))
            {
                self.outgoing.remove(&id);
            }
        }
    }

    fn outgoing_timeout(&mut self, now: Instant, id: MessageId) {
        let Some(o) = self.outgoing.get_mut(&id) else {
            return;
        };
        if now >= o.deadline {
            let why = match o.state {
                SendState::Init => "the receiver never accepted the message (unreachable, \
                                    refused by its topic rules, or its inbox stayed full)"
                    .to_owned(),
                _ if o.done_sent => {
                    "the receiver never confirmed the complete message (checksum)".to_owned()
                }
                _ => format!(
                    "{} of {} chunks acknowledged when the send window closed",
                    o.acked,
                    o.chunks.len()
                ),
            };
            o.state = SendState::Aborted;
            o.failure = Some(why);
            o.finished_at = Some(now);
            self.finished.push_back((now, id));
            self.outbox_bytes -= o.data.len() as u64;
            o.data = Vec::new();
            o.flight = VecDeque::new();
            let (src, dst) = (o.src, o.dst);
            self.stats.failed += 1;
            self.send(src, dst, &Repr::Aborted { id });
            return;
        }
        let mut out = Vec::new();
        match o.state {
            SendState::Init if now >= o.ctl_sent + o.ctl_backoff => {
                o.ctl_sent = now;
                // Back off up to a second: a receiver that is unreachable or full is asked again
                // often enough to start soon after it can.
                o.ctl_backoff = (o.ctl_backoff * 2).min(Duration::from_secs(1));
                out.push(
                    Repr::Init {
                        id,
                        reply: o.reply,
                        ack: false,
                        len: o.len,
                        topic: &o.topic,
                    }
                    .to_vec(),
                );
            }
            SendState::Sending => {
                let rto = o.rto();
                let mut lost = false;
                while let Some(&(i, seq)) = o.flight.front() {
                    let sent = match o.chunks[i] {
                        ChunkState::Sent(at, s, _) if s == seq => at,
                        // Acked, or resent since: a stale entry.
                        _ => {
                            o.flight.pop_front();
                            continue;
                        }
                    };
                    if now < sent + rto {
                        break;
                    }
                    o.flight.pop_front();
                    o.sends += 1;
                    o.chunks[i] = ChunkState::Sent(now, o.sends, true);
                    o.flight.push_back((i, o.sends));
                    out.push(chunk_packet(id, o, i));
                    self.stats.retransmits += 1;
                    lost = true;
                    if out.len() >= o.window {
                        break;
                    }
                }
                if lost {
                    // A timeout: the path is worse than a single loss says.
                    o.ssthresh = (o.window / 2).max(4);
                    o.window = o.ssthresh;
                    o.credit = 0;
                    o.recovery = o.sends;
                }
                if o.done_sent && now >= o.ctl_sent + o.ctl_backoff {
                    o.ctl_sent = now;
                    o.ctl_backoff = (o.ctl_backoff * 2).min(RTO_MAX);
                    out.push(done_packet(id, o));
                    self.stats.retransmits += 1;
                }
            }
            _ => {}
        }
        let (src, dst) = (o.src, o.dst);
        self.stats.packets_out += out.len() as u64;
        self.transmits
            .extend(out.into_iter().map(|packet| Transmit { src, dst, packet }));
    }
}

/// When the oldest chunk in flight was sent (skipping entries that are stale).
fn oldest_in_flight(o: &Outgoing) -> Option<Instant> {
    o.flight.iter().find_map(|&(i, seq)| match o.chunks[i] {
        ChunkState::Sent(at, s, _) if s == seq => Some(at),
        _ => None,
    })
}

/// After the acknowledgement of the chunk sent as `acked_seq`: when three chunks sent after the
/// oldest one in flight have been acknowledged and it has not, it is taken as lost (links are in
/// order) and resent at once; the window shrinks once per loss episode. Returns the chunk to
/// resend.
fn fast_retransmit(o: &mut Outgoing, now: Instant, acked_seq: u64) -> Option<usize> {
    let (i, seq) = loop {
        let &(i, seq) = o.flight.front()?;
        if matches!(o.chunks[i], ChunkState::Sent(_, s, _) if s == seq) {
            break (i, seq);
        }
        o.flight.pop_front();
    };
    if acked_seq <= seq {
        return None;
    }
    if o.passed.0 != seq {
        o.passed = (seq, 0);
    }
    o.passed.1 += 1;
    if o.passed.1 < 3 {
        return None;
    }
    o.flight.pop_front();
    o.sends += 1;
    o.chunks[i] = ChunkState::Sent(now, o.sends, true);
    o.flight.push_back((i, o.sends));
    if seq > o.recovery {
        o.ssthresh = (o.window / 2).max(4);
        o.window = o.ssthresh;
        o.credit = 0;
        o.recovery = o.sends;
    }
    Some(i)
}

fn chunk_packet(id: MessageId, o: &Outgoing, i: usize) -> Vec<u8> {
    let (offset, size) = o.layout[i];
    let start = offset as usize;
    Repr::Chunk {
        id,
        ack: false,
        index: i as u64,
        offset,
        size: u64::from(size),
        data: &o.data[start..start + size as usize],
    }
    .to_vec()
}

fn done_packet(id: MessageId, o: &Outgoing) -> Vec<u8> {
    Repr::Done {
        id,
        ack: false,
        chunks: o.chunks.len() as u64,
        hash: checksum(&o.data),
    }
    .to_vec()
}

#[cfg(test)]
mod tests;
