//! The session state of a node: which remote nodes we share a session with, the handshakes in
//! flight, rekeying and expiry (`docs/sessions.md`). A pure state machine: the owner task feeds
//! it handshake messages, confirmations and ticks with the time, and sends what it returns; the
//! data path reads the [`SessionSnapshot`] it publishes.
//!
//! Rules:
//! * A packet for a remote node without a session makes the owner call [`SessionManager::want`]:
//!   an initiation goes out (sealed with the static key, inner type 16), retried after
//!   [`SessionLimits::retry`] up to [`SessionLimits::attempts`] times; without an answer the node
//!   is taken for a legacy node for [`SessionLimits::legacy_for`], then tried again.
//! * The initiator uses the session as soon as the response arrives and confirms it with a
//!   keepalive; the responder seals with it once a frame from the initiator opened under it.
//! * Simultaneous initiations: the initiation from the lower public key wins; the other node drops
//!   its own and answers.
//! * Initiations whose timestamp is not newer than the last one accepted from that key are
//!   refused (replays). The initiator rekeys after [`SessionLimits::rekey_after`] or
//!   [`SessionLimits::rekey_after_messages`]; the responder after a little longer, in case the
//!   initiator could not. A session is never used past [`SessionLimits::reject_after`]; the one it
//!   replaced still opens frames for [`SessionLimits::keep_previous`], then is dropped (its keys
//!   with it).

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::session::{respond, HandshakeError, HandshakeMessage, Initiator, Timestamp};
use crypto::{PayloadType, PublicKey, SecretKey, Session};
use rustc_hash::FxHashMap;

/// Timers and limits of sessions.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    pub rekey_after: Duration,
    pub rekey_after_messages: u64,
    pub reject_after: Duration,
    pub keep_previous: Duration,
    pub retry: Duration,
    pub attempts: u32,
    pub legacy_for: Duration,
    /// Remote nodes with session state at most.
    pub max_peers: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            rekey_after: Duration::from_secs(120),
            rekey_after_messages: 1 << 48,
            reject_after: Duration::from_secs(180),
            keep_previous: Duration::from_secs(10),
            retry: Duration::from_secs(1),
            attempts: 4,
            legacy_for: Duration::from_secs(300),
            max_peers: 16_384,
        }
    }
}

/// The responder waits this much longer than the initiator before it rekeys itself.
const RESPONDER_REKEY_GRACE: Duration = Duration::from_secs(15);

/// An initiator sends its keepalive again at every tick for this long while the node has not
/// used the new session (a lost keepalive would otherwise leave it sealing with the old one).
const KEEPALIVE_RESEND_FOR: Duration = Duration::from_secs(5);

/// A probe (or super-frames) not acknowledged within this turns super-frames off for the node.
pub const PATH_ACK_WITHIN: Duration = Duration::from_secs(1);
/// After a failed probe or a fallback, the next probe waits this long.
pub const PATH_RETRY: Duration = Duration::from_secs(30);
/// Payload of a path probe: it makes the largest frame a super-frame can be.
pub const PROBE_PAYLOAD: usize =
    wire::frame::MAX_DATA_BODY - crypto::SEAL_OVERHEAD - crypto::INNER_HEADER_LEN;
/// First byte of a path acknowledgement: the answer to a probe (`id` u32 follows), or the count
/// of super-frames received under the session (u64 follows).
pub const ACK_PROBE: u8 = 1;
pub const ACK_SUPERS: u8 = 2;

/// Whether our super-frames reach a node (`docs/sessions.md`, super-frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathState {
    /// No probe yet for this session.
    Unknown,
    Probing {
        id: u32,
        sent: Instant,
    },
    /// Super-frames go out; `acked` is what the node reported receiving under session `index`.
    On {
        index: u32,
        acked: u64,
        progress: Instant,
    },
    Failed {
        retry: Instant,
    },
}

/// A session the data path opens with, and the /64 its frames must come from.
#[derive(Clone, Debug)]
pub struct RecvEntry {
    pub session: Arc<Session>,
    pub prefix: u64,
}

/// What the data path reads: sessions to seal with (by the peer's key) and to open with (by our
/// index in the frame's trailer), and the /64s that take super-frames.
#[derive(Clone, Debug, Default)]
pub struct SessionSnapshot {
    pub enabled: bool,
    pub send: FxHashMap<[u8; 32], Arc<Session>>,
    pub recv: FxHashMap<u32, RecvEntry>,
    /// Destination /64s (upper 64 bits) whose path carried a full-size frame: TUN super-packets
    /// for them go whole.
    pub whole: rustc_hash::FxHashSet<u64>,
}

/// A frame the owner must send: `payload` after an inner header of type `kind`, to the node
/// whose key is `key` (at `dst`), sealed with `session` or, without one, the static key.
#[derive(Debug)]
pub struct Outgoing {
    pub key: PublicKey,
    pub dst: Ipv6Addr,
    pub kind: PayloadType,
    pub payload: Vec<u8>,
    pub session: Option<Arc<Session>>,
}

/// Counts of session events, for the API and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub initiations_sent: u64,
    pub responses_sent: u64,
    pub established: u64,
    pub rekeys: u64,
    pub handshakes_refused: u64,
    pub replayed_initiations: u64,
    /// Remote nodes taken for legacy nodes after their handshake went unanswered.
    pub legacy_fallbacks: u64,
    pub expired: u64,
    pub probes_sent: u64,
    /// Probes answered: super-frames turned on.
    pub paths_whole: u64,
    /// Super-frames turned off for a node: a probe or super-frames went unacknowledged.
    pub whole_fallbacks: u64,
}

/// What one remote node's session looks like, for the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    pub key: PublicKey,
    pub state: &'static str,
    /// Age of the session in use, in seconds.
    pub age_secs: Option<u64>,
    pub rekeys: u64,
    pub replays_refused: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub legacy_fallbacks: u64,
    /// `on`, `probing`, `off` (failed or not probed yet).
    pub super_frames: &'static str,
    pub supers_sent: u64,
    pub supers_received: u64,
    pub super_fallbacks: u64,
}

struct Live {
    session: Arc<Session>,
    since: Instant,
    /// Frames sealed when the last tick looked: traffic since then keeps the node in use.
    seen_sent: u64,
}

impl Live {
    fn new(session: Arc<Session>, now: Instant) -> Live {
        Live {
            session,
            since: now,
            seen_sent: 0,
        }
    }
}

struct Pending {
    init: Initiator,
    attempts: u32,
    next_try: Instant,
}

struct Peer {
    addr: Ipv6Addr,
    current: Option<Live>,
    /// A responder's session not confirmed by the initiator yet.
    next: Option<Live>,
    previous: Option<Live>,
    pending: Option<Pending>,
    last_init_in: Option<Timestamp>,
    last_init_out: Option<Timestamp>,
    legacy_until: Option<Instant>,
    rekeys: u64,
    replays_done: u64,
    fallbacks: u64,
    last_use: Instant,
    path: PathState,
    whole_fallbacks: u64,
    /// Super-frames received under the current session (by its index) when we last told the
    /// node.
    supers_reported: (u32, u64),
}

impl Peer {
    fn new(addr: Ipv6Addr, now: Instant) -> Peer {
        Peer {
            addr,
            current: None,
            next: None,
            previous: None,
            pending: None,
            last_init_in: None,
            last_init_out: None,
            legacy_until: None,
            rekeys: 0,
            replays_done: 0,
            fallbacks: 0,
            last_use: now,
            path: PathState::Unknown,
            whole_fallbacks: 0,
            supers_reported: (0, 0),
        }
    }

    fn sessions(&self) -> impl Iterator<Item = &Live> {
        self.current
            .iter()
            .chain(self.next.iter())
            .chain(self.previous.iter())
    }
}

/// Session state for every remote node we talk to.
pub struct SessionManager {
    own: SecretKey,
    own_key: PublicKey,
    own_addr: Ipv6Addr,
    limits: SessionLimits,
    peers: FxHashMap<PublicKey, Peer>,
    /// Our indexes in use (sessions and initiations) and whose they are.
    indexes: FxHashMap<u32, PublicKey>,
    pub counts: SessionCounts,
    changed: bool,
}

impl SessionManager {
    pub fn new(own: SecretKey, own_addr: Ipv6Addr, limits: SessionLimits) -> SessionManager {
        let own_key = own.public_key();
        SessionManager {
            own,
            own_key,
            own_addr,
            limits,
            peers: FxHashMap::default(),
            indexes: FxHashMap::default(),
            counts: SessionCounts::default(),
            changed: false,
        }
    }

    fn fresh_index(&mut self, peer: PublicKey) -> u32 {
        loop {
            let i = crypto::session::random_index();
            if i != 0 && !self.indexes.contains_key(&i) {
                self.indexes.insert(i, peer);
                return i;
            }
        }
    }

    /// Whether the sessions changed since the last [`SessionManager::snapshot`].
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The sessions for the data path.
    pub fn snapshot(&mut self) -> SessionSnapshot {
        self.changed = false;
        let mut snap = SessionSnapshot {
            enabled: true,
            ..SessionSnapshot::default()
        };
        for (key, p) in &self.peers {
            let prefix = (u128::from(p.addr) >> 64) as u64;
            if let Some(c) = &p.current {
                snap.send.insert(key.0, c.session.clone());
                if matches!(p.path, PathState::On { .. }) {
                    snap.whole.insert(prefix);
                }
            }
            for l in p.sessions() {
                snap.recv.insert(
                    l.session.local_index(),
                    RecvEntry {
                        session: l.session.clone(),
                        prefix,
                    },
                );
            }
        }
        snap
    }

    fn peer(&mut self, key: PublicKey, now: Instant) -> Option<&mut Peer> {
        if !self.peers.contains_key(&key) && self.peers.len() >= self.limits.max_peers {
            self.evict_idle(now);
            if self.peers.len() >= self.limits.max_peers {
                return None;
            }
        }
        let addr = key.address();
        Some(
            self.peers
                .entry(key)
                .or_insert_with(|| Peer::new(addr, now)),
        )
    }

    /// Drops the state of the remote node unused for longest, if it holds no live session.
    fn evict_idle(&mut self, now: Instant) {
        let victim = self
            .peers
            .iter()
            .filter(|(_, p)| p.current.is_none() && p.next.is_none() && p.pending.is_none())
            .min_by_key(|(_, p)| p.last_use)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.remove_peer(&k);
        }
        let _ = now;
    }

    fn remove_peer(&mut self, key: &PublicKey) {
        if let Some(p) = self.peers.remove(key) {
            for l in p.sessions() {
                self.indexes.remove(&l.session.local_index());
            }
            if let Some(pd) = &p.pending {
                self.indexes.remove(&pd.init.local_index());
            }
            self.changed = true;
        }
    }

    /// We have traffic for the node whose key is `key`: starts a handshake unless a session is
    /// up, one is under way, or the node is taken for a legacy node for now.
    pub fn want(&mut self, key: PublicKey, now: Instant, wall: Timestamp) -> Option<Outgoing> {
        if key == self.own_key {
            return None;
        }
        let p = self.peer(key, now)?;
        p.last_use = now;
        if p.current.is_some() || p.pending.is_some() || p.next.is_some() {
            return None;
        }
        if p.legacy_until.is_some_and(|t| now < t) {
            return None;
        }
        self.initiate(key, now, wall, 0)
    }

    fn initiate(
        &mut self,
        key: PublicKey,
        now: Instant,
        wall: Timestamp,
        attempts: u32,
    ) -> Option<Outgoing> {
        let index = self.fresh_index(key);
        let retry = self.limits.retry * (1 << attempts.min(6));
        let own = self.own.clone();
        let own_addr = self.own_addr;
        let p = self.peers.get_mut(&key)?;
        let ts = Timestamp::next_after(wall, p.last_init_out);
        let mut payload = Vec::with_capacity(1 + crypto::session::INIT_LEN);
        let Ok(init) = Initiator::start(&own, own_addr, &key, p.addr, index, ts, &mut payload)
        else {
            self.indexes.remove(&index);
            return None;
        };
        p.last_init_out = Some(ts);
        if let Some(old) = p.pending.replace(Pending {
            init,
            attempts: attempts + 1,
            next_try: now + retry,
        }) {
            self.indexes.remove(&old.init.local_index());
        }
        self.counts.initiations_sent += 1;
        Some(Outgoing {
            key,
            dst: p.addr,
            kind: PayloadType::Handshake,
            payload,
            session: None,
        })
    }

    /// A handshake message (the plaintext after the inner header) from `src` to `dst` (ours).
    /// Returns what to send back: a response to an initiation, a keepalive that confirms the
    /// session a response completed.
    pub fn handle(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        plain: &[u8],
        now: Instant,
    ) -> Result<Option<Outgoing>, HandshakeError> {
        let got = match HandshakeMessage::parse(plain) {
            Ok(HandshakeMessage::Init(init)) => self.on_init(src, dst, init, now),
            Ok(HandshakeMessage::Response { receiver, noise }) => {
                self.on_response(receiver, noise, now)
            }
            Err(e) => Err(e),
        };
        if got.is_err() {
            self.counts.handshakes_refused += 1;
        }
        got
    }

    fn on_init(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        init: &[u8],
        now: Instant,
    ) -> Result<Option<Outgoing>, HandshakeError> {
        let own = self.own.clone();
        let own_key = self.own_key;
        // The index is taken before we know whose it is; it is released if the initiation fails.
        let index = self.fresh_index(own_key);
        let peers = &self.peers;
        let mut replayed = false;
        let mut payload = Vec::with_capacity(1 + crypto::session::RESPONSE_LEN);
        let accept = |peer: &PublicKey, ts: Timestamp| {
            let Some(p) = peers.get(peer) else {
                return true;
            };
            if p.last_init_in.is_some_and(|last| ts <= last) {
                replayed = true;
                return false;
            }
            // Both sides initiated at once: the lower key's initiation is the one completed.
            if p.pending.is_some() && own_key.0 < peer.0 {
                return false;
            }
            true
        };
        let got = respond(&own, dst, src, init, index, accept, &mut payload);
        let responded = match got {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.indexes.remove(&index);
                if replayed {
                    self.counts.replayed_initiations += 1;
                }
                return Ok(None);
            }
            Err(e) => {
                self.indexes.remove(&index);
                return Err(e);
            }
        };
        self.indexes.insert(index, responded.peer);
        let Some(p) = self.peer(responded.peer, now) else {
            self.indexes.remove(&index);
            return Ok(None);
        };
        p.last_use = now;
        p.last_init_in = Some(responded.timestamp);
        p.legacy_until = None;
        let dropped_pending = p.pending.take().map(|pd| pd.init.local_index());
        let replaced = p.next.replace(Live::new(Arc::new(responded.session), now));
        let addr = p.addr;
        if let Some(i) = dropped_pending {
            self.indexes.remove(&i);
        }
        if let Some(old) = replaced {
            self.indexes.remove(&old.session.local_index());
        }
        self.changed = true;
        self.counts.responses_sent += 1;
        Ok(Some(Outgoing {
            key: responded.peer,
            dst: addr,
            kind: PayloadType::Handshake,
            payload,
            session: None,
        }))
    }

    fn on_response(
        &mut self,
        receiver: u32,
        noise: &[u8],
        now: Instant,
    ) -> Result<Option<Outgoing>, HandshakeError> {
        let Some(key) = self.indexes.get(&receiver).copied() else {
            return Err(HandshakeError::Malformed);
        };
        let Some(p) = self.peers.get_mut(&key) else {
            return Err(HandshakeError::Malformed);
        };
        if p.pending.as_ref().map(|pd| pd.init.local_index()) != Some(receiver) {
            return Err(HandshakeError::Malformed);
        }
        let Some(pd) = p.pending.take() else {
            return Err(HandshakeError::Malformed);
        };
        let addr = p.addr;
        let session = match pd.init.finish(noise) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // Noise consumed the initiation: the next packet for the node starts another.
                self.indexes.remove(&receiver);
                return Err(e);
            }
        };
        self.install(key, session.clone(), now);
        Ok(Some(Outgoing {
            key,
            dst: addr,
            kind: PayloadType::Keepalive,
            payload: Vec::new(),
            session: Some(session),
        }))
    }

    /// A frame opened under our session `local_index` for the first time: a responder's new
    /// session becomes the one it seals with.
    pub fn confirmed(&mut self, local_index: u32, now: Instant) {
        let Some(key) = self.indexes.get(&local_index).copied() else {
            return;
        };
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.next
            .as_ref()
            .is_none_or(|n| n.session.local_index() != local_index)
        {
            return;
        }
        let Some(next) = p.next.take() else {
            return;
        };
        self.install(key, next.session, now);
    }

    /// Makes `session` the one we seal with for `key` (the one it replaces keeps opening frames
    /// for a while) and counts it as a first session or a rekey.
    fn install(&mut self, key: PublicKey, session: Arc<Session>, now: Instant) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let rekey = p.current.is_some();
        let old = p.current.replace(Live::new(session, now));
        p.legacy_until = None;
        p.last_use = now;
        if rekey {
            p.rekeys += 1;
            self.counts.rekeys += 1;
        } else {
            self.counts.established += 1;
        }
        for i in retire(p, old, now) {
            self.indexes.remove(&i);
        }
        self.changed = true;
    }

    /// A frame from `key` failed to open with the static key while we hold no session it could
    /// belong to (we restarted, or the peer did): start a handshake now rather than wait for
    /// the next packet of ours.
    pub fn stale(&mut self, key: PublicKey, now: Instant, wall: Timestamp) -> Option<Outgoing> {
        self.want(key, now, wall)
    }

    /// Retries, rekeys and expiry. Returns the initiations to send.
    pub fn tick(&mut self, now: Instant, wall: Timestamp) -> Vec<Outgoing> {
        // A responder's session the peer has used, whose confirmation did not reach us (the data
        // path could not hand it on): it is confirmed now.
        let used: Vec<u32> = self
            .peers
            .values()
            .filter_map(|p| p.next.as_ref().filter(|n| n.session.confirmed()))
            .map(|n| n.session.local_index())
            .collect();
        for index in used {
            self.confirmed(index, now);
        }
        let limits = self.limits.clone();
        let mut initiate: Vec<(PublicKey, u32)> = Vec::new();
        let mut freed: Vec<u32> = Vec::new();
        for (key, p) in self.peers.iter_mut() {
            // A retry (or giving up) this tick: no rekey besides it.
            let mut retried = false;
            if let Some(pd) = &p.pending {
                if now >= pd.next_try {
                    retried = true;
                    let attempts = pd.attempts;
                    if let Some(pd) = p.pending.take() {
                        freed.push(pd.init.local_index());
                    }
                    if attempts >= limits.attempts {
                        p.legacy_until = Some(now + limits.legacy_for);
                        p.fallbacks += 1;
                        self.counts.legacy_fallbacks += 1;
                    } else {
                        initiate.push((*key, attempts));
                    }
                }
            }
            if let Some(c) = &mut p.current {
                let sent = c.session.sent();
                if sent != c.seen_sent {
                    c.seen_sent = sent;
                    p.last_use = now;
                }
            }
            if let Some(c) = &p.current {
                let age = now.saturating_duration_since(c.since);
                if age >= limits.reject_after {
                    freed.push(c.session.local_index());
                    p.current = None;
                    self.counts.expired += 1;
                    self.changed = true;
                } else if p.pending.is_none() && p.next.is_none() && !retried {
                    let after = if c.session.is_initiator() {
                        limits.rekey_after
                    } else {
                        limits.rekey_after + RESPONDER_REKEY_GRACE
                    };
                    let used = now.saturating_duration_since(p.last_use) < limits.rekey_after;
                    if (age >= after && used) || c.session.sent() >= limits.rekey_after_messages {
                        initiate.push((*key, 0));
                    }
                }
            }
            if let Some(n) = &p.next {
                if now.saturating_duration_since(n.since) >= limits.reject_after {
                    freed.push(n.session.local_index());
                    p.next = None;
                    self.changed = true;
                }
            }
            if let Some(o) = &p.previous {
                if now >= o.since + limits.keep_previous {
                    freed.push(o.session.local_index());
                    p.replays_done += o.session.replays();
                    p.previous = None;
                    self.changed = true;
                }
            }
        }
        for i in freed {
            self.indexes.remove(&i);
        }
        let mut probes: Vec<PublicKey> = Vec::new();
        let mut out: Vec<Outgoing> = Vec::new();
        for (key, p) in self.peers.iter_mut() {
            let Some(c) = &p.current else {
                p.path = PathState::Unknown;
                continue;
            };
            let index = c.session.local_index();
            // An initiator's session the node has not used yet: its keepalive may have been
            // lost, and a node that only receives would not confirm it otherwise.
            if c.session.is_initiator()
                && !c.session.confirmed()
                && now.saturating_duration_since(c.since) < KEEPALIVE_RESEND_FOR
            {
                out.push(Outgoing {
                    key: *key,
                    dst: p.addr,
                    kind: PayloadType::Keepalive,
                    payload: Vec::new(),
                    session: Some(c.session.clone()),
                });
            }
            // What we received of the node's super-frames, so it knows they arrive.
            let got = c.session.supers_received();
            let last = p.supers_reported;
            if got > 0 && (last.0 != index || last.1 != got) {
                p.supers_reported = (index, got);
                let mut payload = vec![ACK_SUPERS];
                payload.extend_from_slice(&got.to_be_bytes());
                out.push(Outgoing {
                    key: *key,
                    dst: p.addr,
                    kind: PayloadType::PathAck,
                    payload,
                    session: Some(c.session.clone()),
                });
            }
            match p.path {
                PathState::Unknown => probes.push(*key),
                PathState::Probing { sent, .. } => {
                    if now.saturating_duration_since(sent) >= PATH_ACK_WITHIN {
                        p.path = PathState::Failed {
                            retry: now + PATH_RETRY,
                        };
                        p.whole_fallbacks += 1;
                        self.counts.whole_fallbacks += 1;
                    }
                }
                PathState::On {
                    index: on,
                    acked,
                    progress,
                } => {
                    let sent = c.session.supers_sent();
                    if on != index {
                        // A new session: its counts start again.
                        p.path = PathState::On {
                            index,
                            acked: 0,
                            progress: now,
                        };
                    } else if sent <= acked {
                        p.path = PathState::On {
                            index,
                            acked,
                            progress: now,
                        };
                    } else if now.saturating_duration_since(progress) >= PATH_ACK_WITHIN {
                        p.path = PathState::Failed {
                            retry: now + PATH_RETRY,
                        };
                        p.whole_fallbacks += 1;
                        self.counts.whole_fallbacks += 1;
                        self.changed = true;
                    }
                }
                PathState::Failed { retry } => {
                    if now >= retry {
                        probes.push(*key);
                    }
                }
            }
        }
        for key in probes {
            out.extend(self.probe(key, now));
        }
        // Nodes with nothing left and unused for a while are forgotten.
        let idle = limits.legacy_for.max(limits.reject_after);
        let stale: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.current.is_none()
                    && p.next.is_none()
                    && p.pending.is_none()
                    && p.legacy_until.is_none_or(|t| now >= t)
                    && now.saturating_duration_since(p.last_use) >= idle
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.remove_peer(&k);
        }
        out.extend(
            initiate
                .into_iter()
                .filter_map(|(k, a)| self.initiate(k, now, wall, a)),
        );
        out
    }

    /// Sends a full-size probe to `key` under the current session.
    fn probe(&mut self, key: PublicKey, now: Instant) -> Option<Outgoing> {
        let p = self.peers.get_mut(&key)?;
        let session = p.current.as_ref()?.session.clone();
        let id = crypto::session::random_index();
        p.path = PathState::Probing { id, sent: now };
        self.counts.probes_sent += 1;
        let mut payload = vec![0u8; PROBE_PAYLOAD];
        payload[..4].copy_from_slice(&id.to_be_bytes());
        Some(Outgoing {
            key,
            dst: p.addr,
            kind: PayloadType::PathProbe,
            payload,
            session: Some(session),
        })
    }

    /// A probe arrived under our session `index`: answer it under the session we send with.
    pub fn path_probe(&mut self, index: u32, probe: &[u8]) -> Option<Outgoing> {
        let id = probe.get(..4)?;
        let key = *self.indexes.get(&index)?;
        let p = self.peers.get(&key)?;
        let session = p.current.as_ref()?.session.clone();
        let mut payload = vec![ACK_PROBE];
        payload.extend_from_slice(id);
        Some(Outgoing {
            key,
            dst: p.addr,
            kind: PayloadType::PathAck,
            payload,
            session: Some(session),
        })
    }

    /// An acknowledgement arrived under our session `index`: a probe answered (super-frames on)
    /// or the count of super-frames the node received.
    pub fn path_ack(&mut self, index: u32, ack: &[u8], now: Instant) {
        let Some(key) = self.indexes.get(&index).copied() else {
            return;
        };
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(current) = p.current.as_ref().map(|c| c.session.local_index()) else {
            return;
        };
        match (ack.first(), p.path) {
            (Some(&ACK_PROBE), PathState::Probing { id, .. })
                if ack.get(1..5) == Some(&id.to_be_bytes()[..]) =>
            {
                p.path = PathState::On {
                    index: current,
                    acked: 0,
                    progress: now,
                };
                self.counts.paths_whole += 1;
                self.changed = true;
            }
            (
                Some(&ACK_SUPERS),
                PathState::On {
                    index: on, acked, ..
                },
            ) if on == index => {
                let Some(b) = ack.get(1..9) else {
                    return;
                };
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                let count = u64::from_be_bytes(n);
                if count > acked {
                    p.path = PathState::On {
                        index: on,
                        acked: count,
                        progress: now,
                    };
                }
            }
            _ => {}
        }
    }

    /// Notes that traffic for `key` is flowing (rekeys happen only for sessions in use).
    pub fn used(&mut self, key: &PublicKey, now: Instant) {
        if let Some(p) = self.peers.get_mut(key) {
            p.last_use = now;
        }
    }

    /// The session the node seals with for `key`.
    pub fn current(&self, key: &PublicKey) -> Option<Arc<Session>> {
        Some(self.peers.get(key)?.current.as_ref()?.session.clone())
    }

    /// One row per remote node with session state.
    pub fn rows(&self, now: Instant) -> Vec<SessionRow> {
        let mut rows: Vec<SessionRow> = self
            .peers
            .iter()
            .map(|(key, p)| {
                let state = if p.current.is_some() {
                    "established"
                } else if p.pending.is_some() || p.next.is_some() {
                    "handshaking"
                } else if p.legacy_until.is_some_and(|t| now < t) {
                    "legacy"
                } else {
                    "none"
                };
                let replays =
                    p.replays_done + p.sessions().map(|l| l.session.replays()).sum::<u64>();
                SessionRow {
                    key: *key,
                    state,
                    age_secs: p
                        .current
                        .as_ref()
                        .map(|c| now.saturating_duration_since(c.since).as_secs()),
                    rekeys: p.rekeys,
                    replays_refused: replays,
                    frames_sent: p.current.as_ref().map_or(0, |c| c.session.sent()),
                    frames_received: p.current.as_ref().map_or(0, |c| c.session.received()),
                    legacy_fallbacks: p.fallbacks,
                    super_frames: match p.path {
                        PathState::On { .. } => "on",
                        PathState::Probing { .. } => "probing",
                        _ => "off",
                    },
                    supers_sent: p.current.as_ref().map_or(0, |c| c.session.supers_sent()),
                    supers_received: p
                        .current
                        .as_ref()
                        .map_or(0, |c| c.session.supers_received()),
                    super_fallbacks: p.whole_fallbacks,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.key.0);
        rows
    }

    /// Replayed frames refused over all sessions, live and dropped.
    pub fn replays_refused(&self) -> u64 {
        self.peers
            .values()
            .map(|p| p.replays_done + p.sessions().map(|l| l.session.replays()).sum::<u64>())
            .sum()
    }
}

/// Moves the replaced session to `previous` (dropping the one there); returns the indexes freed.
fn retire(p: &mut Peer, old: Option<Live>, now: Instant) -> Vec<u32> {
    let mut freed = Vec::new();
    if let Some(mut o) = old {
        if let Some(prev) = p.previous.take() {
            p.replays_done += prev.session.replays();
            freed.push(prev.session.local_index());
        }
        o.since = now;
        p.previous = Some(o);
    }
    freed
}
