//! The data-path core of hypha: what happens to each packet between the TUN and the peer links,
//! decided over buffers the caller owns.
//!
//! * Outbound ([`Sender`]): IPv6 packets read from the TUN (split from super-packets straight into
//!   a [`FrameSink`]) are classified against the [`DataTable`] snapshot, sealed for their
//!   destination's key and framed in place; the result is one [`FrameBatch`] per next hop,
//!   ICMPv6 errors for the TUN, and [`Need`]s for the owner of the routing core (a route to
//!   query, a packet to hold until its route is known).
//! * Inbound ([`Receiver`], one per link): data frames located in a link's read buffer by their
//!   byte range are opened in place and admitted to the TUN (only from the sender's subnet to
//!   ours), forwarded to the next hop, or answered with out-of-band ICMP; opened packets stay in
//!   the read buffer and are handed back as byte ranges of it.
//!
//! The protocol it implements is described in `docs/protocol.md` (§3.5 data frames, §6.1–§6.7
//! sealing, hop limits, sending and receiving, §6.8–§6.9 out-of-band ICMP); `docs/datapath.md`
//! follows a packet through it and the shell.
//!
//! What it never does: I/O, reading a clock (every call that needs time takes `now`), spawning,
//! waiting or blocking. It counts into shared atomic [`DataCounters`] and logs refusals through
//! `tracing`, rate-limited per link. The tokio shell (`hypha-node`) owns the sockets, the TUN
//! device and the channels, and moves buffers and time in and out.
#![forbid(unsafe_code)]

mod batch;
pub mod codel;
mod counters;
pub mod fq;
mod inbound;
mod oob;
pub use oob::{push_oob_icmp, OrigKeys};
mod outbound;
pub mod pool;
pub mod ratelimit;
pub mod sessions;
mod table;

pub use batch::{FrameBatch, InPlace, Outbox, Run, TunBatch};
pub use counters::{bump, DataCounters};
pub use inbound::{check_inner, deliver_pending, may_have_key, DataFrame, InnerRefusal};
pub use inbound::{InboundMessage, MessageBatch, MESSAGE_BATCH_MAX};
pub use inbound::{LinkBudgets, ICMP_BURST, ICMP_PER_SEC, LINK_NEEDS_BURST, LINK_NEEDS_PER_SEC};
pub use inbound::{PendingOutcome, Receiver};
pub use outbound::{push_sealed, push_sealed_l3, FrameSink, SealKey, Sender};
pub use table::{DataTable, InboundFrame, KeySource, Need, NeedSink, Needs, PENDING_IN_FLIGHT_MAX};

/// The cipher shared with one remote node (AES-256-GCM keyed by the X25519 shared secret).
pub use crypto::PeerCipher as Cipher;

/// Hop limit of the ICMPv6 errors the data path generates.
pub const ICMP_HOP_LIMIT: u8 = 64;

#[cfg(test)]
mod tests;
