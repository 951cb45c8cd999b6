//! The owner's side of end-to-end sessions (`docs/sessions.md`): the data path's session needs
//! go to the pure [`SessionManager`], and what it wants sent is sealed and queued on the link
//! towards its destination here.

use std::net::Ipv6Addr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crypto::session::Timestamp;
use crypto::{PayloadType, PublicKey};
use datapath::sessions::{Outgoing, SessionManager};
use datapath::{bump, DataCounters, FrameBatch, SealKey};
use routing::{Lookup, Router};
use tracing::debug;

use crate::keys::SharedKeys;
use crate::owner::LinkEntry;

/// Hop limit of the frames sessions send themselves.
const SESSION_HOP_LIMIT: u8 = 64;

/// The wall clock as a handshake timestamp.
pub(crate) fn wall_now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(d.as_secs(), d.subsec_nanos())
}

/// What sending needs from the owner.
pub(crate) struct Sending<'a> {
    pub router: &'a Router,
    pub keys: &'a SharedKeys,
    pub links: &'a rustc_hash::FxHashMap<routing::LinkId, LinkEntry>,
    pub counters: &'a DataCounters,
    pub own_addr: Ipv6Addr,
}

impl Sending<'_> {
    /// Seals `out` for its destination and queues it on the link its route leaves by; dropped
    /// (and counted) without a route or room.
    pub fn send(&self, out: Outgoing) {
        let Lookup::Route(nh) = self.router.lookup(out.dst) else {
            bump(&self.counters.drop_no_route);
            return;
        };
        let Some(link) = self.links.get(&nh.link) else {
            bump(&self.counters.drop_no_route);
            return;
        };
        let key = match &out.session {
            Some(s) => SealKey::Session(s),
            None => match datapath::KeySource::cipher(self.keys, &out.key.0) {
                Some(c) => SealKey::Static(std::borrow::Cow::Owned(c)),
                None => {
                    bump(&self.counters.drop_no_key);
                    return;
                }
            },
        };
        let mut batch = FrameBatch::default();
        let hop = SESSION_HOP_LIMIT;
        if !datapath::push_sealed(
            &mut batch.bytes,
            &key,
            out.kind,
            &out.payload,
            hop,
            self.own_addr,
            out.dst,
        ) {
            return;
        }
        batch.frames = 1;
        bump(&self.counters.frames_sent);
        if link.handles.data.try_send(batch).is_err() {
            bump(&self.counters.drop_queue_full);
        }
        debug!(dst = %out.dst, kind = ?out.kind, "session frame sent");
    }
}

/// The data path asked for something of the session manager; returns what to send.
pub(crate) fn on_need(mgr: &mut SessionManager, need: SessionNeed) -> Vec<Outgoing> {
    let now = Instant::now();
    match need {
        SessionNeed::Want(key) => mgr
            .want(PublicKey(key), now, wall_now())
            .into_iter()
            .collect(),
        SessionNeed::Stale(key) => mgr
            .stale(PublicKey(key), now, wall_now())
            .into_iter()
            .collect(),
        SessionNeed::Confirmed(index) => {
            mgr.confirmed(index, now);
            Vec::new()
        }
        SessionNeed::Path {
            index,
            kind: PayloadType::PathProbe,
            payload,
        } => mgr.path_probe(index, &payload).into_iter().collect(),
        SessionNeed::Path { index, payload, .. } => {
            mgr.path_ack(index, &payload, now);
            Vec::new()
        }
        SessionNeed::Handshake { src, dst, payload } => match mgr.handle(src, dst, &payload, now) {
            Ok(out) => out.into_iter().collect(),
            Err(e) => {
                debug!(%src, "session handshake refused: {e}");
                Vec::new()
            }
        },
    }
}

/// The session needs of [`datapath::Need`].
pub(crate) enum SessionNeed {
    Want([u8; 32]),
    Stale([u8; 32]),
    Confirmed(u32),
    Path {
        index: u32,
        kind: PayloadType,
        payload: Vec<u8>,
    },
    Handshake {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        payload: Vec<u8>,
    },
}
