//! What the data path reads (the [`DataTable`] snapshot) and what it asks of the owner of the
//! routing core ([`Need`]s, collected in a bounded [`Needs`]).

use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::sync::Arc;

use routing::{ForwardingTable, LinkId};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::sessions::SessionSnapshot;
use crate::Cipher;

/// Derives ciphers the snapshot does not hold yet: the key of a destination or sender first met
/// since the last snapshot. The shell's implementation caches what it derives (bounded) and has
/// it published with the next snapshot, so a flow takes this path for its first packets only.
pub trait KeySource: Send + Sync {
    /// The cipher shared with the owner of `key`; `None` for a key no secret can be shared with
    /// (a low-order point).
    fn cipher(&self, key: &[u8; 32]) -> Option<Cipher>;
}

/// The snapshot the data path reads: routes, the links that can take frames and the ciphers of
/// the keys in use, with a [`KeySource`] for the keys not in use yet. `L` is whatever the shell
/// keeps per link (its queue's sender); the core only asks whether a link is there. Rebuilt by the
/// owner task whenever one of them changes and read without locks.
pub struct DataTable<L> {
    pub fib: Arc<ForwardingTable>,
    pub links: FxHashMap<LinkId, L>,
    pub ciphers: FxHashMap<[u8; 32], Cipher>,
    pub keys: Option<Arc<dyn KeySource>>,
    /// The end-to-end sessions with other hypha nodes (`docs/sessions.md`).
    pub sessions: Arc<SessionSnapshot>,
    /// Links whose frames should stay small: the MSS that TCP SYNs from the TUN routed over them
    /// are clamped to (a QUIC link whose datagrams cannot take a full-size frame, `docs/quic.md`).
    pub mss_clamp: FxHashMap<LinkId, u16>,
    /// Links that carry data frames as datagrams (QUIC): super-packets for them are split, so
    /// that each packet travels, and is lost, on its own.
    pub datagram_links: FxHashSet<LinkId>,
    /// The CE marks each link's queue owes its ECN-capable flows (`fq::CeMarks`).
    pub ce_marks: FxHashMap<LinkId, Arc<crate::fq::CeMarks>>,
}

impl<L> DataTable<L> {
    pub fn empty(fib: Arc<ForwardingTable>) -> DataTable<L> {
        DataTable {
            fib,
            links: FxHashMap::default(),
            ciphers: FxHashMap::default(),
            keys: None,
            sessions: Arc::default(),
            mss_clamp: FxHashMap::default(),
            datagram_links: FxHashSet::default(),
            ce_marks: FxHashMap::default(),
        }
    }

    /// The cipher for `key`: from the snapshot, or derived through the [`KeySource`].
    #[inline]
    pub fn cipher(&self, key: &[u8; 32]) -> Option<Cow<'_, Cipher>> {
        match self.ciphers.get(key) {
            Some(c) => Some(Cow::Borrowed(c)),
            None => self.keys.as_ref()?.cipher(key).map(Cow::Owned),
        }
    }

    /// The cipher for the key of the route that covers `addr` as a source.
    pub(crate) fn source_cipher(&self, addr: Ipv6Addr) -> Option<Cow<'_, Cipher>> {
        self.cipher(&self.fib.source_key(addr)?)
    }
}

/// Most bytes of frames on their way to the owner to wait for a key (see
/// [`crate::DataCounters::pending_in_flight`]).
pub const PENDING_IN_FLIGHT_MAX: usize = 4 << 20;

/// What the data path asks of the owner task.
#[derive(Debug)]
pub enum Need {
    /// A destination of ours is in use: query or refresh its route.
    Route(Ipv6Addr),
    /// A destination of a frame a link asked us to forward: query or refresh its route,
    /// charged to that link's share of the query table.
    RouteFor(Ipv6Addr, LinkId),
    /// A packet from the TUN waits for a route to its destination.
    Pending(Vec<u8>),
    /// A frame for us from a sender whose route (and so key) we don't know yet.
    PendingInbound(InboundFrame),
    /// Traffic goes to the node with this key without a session: negotiate one.
    Session([u8; 32]),
    /// A session handshake message (plaintext after the inner header) from `src` to `dst`.
    Handshake {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        payload: Vec<u8>,
    },
    /// A frame opened under our session with this index for the first time.
    SessionConfirmed(u32),
    /// A path probe (its first bytes) or acknowledgement of type `kind` opened under our session
    /// with this index.
    Path {
        index: u32,
        kind: crypto::PayloadType,
        payload: Vec<u8>,
    },
    /// A frame from the node with this key opened neither under a session nor with the static
    /// key: it seals with a session we do not have (one of us restarted).
    SessionStale([u8; 32]),
}

/// An encrypted frame for our /64, kept until the sender's key is known.
#[derive(Debug)]
pub struct InboundFrame {
    pub hop: u8,
    pub src: Ipv6Addr,
    /// Ours: the address it was sent to.
    pub dst: Ipv6Addr,
    pub body: Vec<u8>,
    /// The link it came in on: its share of the waiting room is charged.
    pub link: LinkId,
}

/// Where the core puts its [`Need`]s: the shell's channel to the owner (non-blocking), or a
/// bounded [`Needs`] list in tests and fuzzing. Links' frames may not use the last part of its
/// room, which stays for the node's own packets, so a flood on one link can neither fill the
/// channel the TUN's needs share nor hold it long against the other links.
pub trait NeedSink {
    /// Hands a need on without waiting; gives it back when there is no room.
    fn try_push(&mut self, need: Need) -> Result<(), Need>;
    /// Whether a link's frames may add one more need: not into the room kept for the node's own.
    fn room_for_links(&self) -> bool;
}

/// A bounded list of needs, for tests and fuzzing: `room` needs at most, of which links may use
/// all but `reserved`.
#[derive(Debug, Default)]
pub struct Needs {
    pub list: Vec<Need>,
    room: usize,
    reserved: usize,
}

impl Needs {
    pub fn with_room(room: usize, reserved: usize) -> Needs {
        Needs {
            list: Vec::new(),
            room,
            reserved,
        }
    }

    /// Takes the needs out, as the owner would, freeing their room.
    pub fn drain(&mut self) -> impl Iterator<Item = Need> + '_ {
        self.list.drain(..)
    }
}

impl NeedSink for Needs {
    fn try_push(&mut self, need: Need) -> Result<(), Need> {
        if self.list.len() >= self.room {
            return Err(need);
        }
        self.list.push(need);
        Ok(())
    }

    fn room_for_links(&self) -> bool {
        self.room - self.list.len() > self.reserved
    }
}
