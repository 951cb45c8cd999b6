//! The data path's counters: one list, from which the shared atomic counters here and the
//! node's exported statistics (`for_each_data_counter!`) are both generated.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Calls `$callback! { $(#[doc] name),* }` with every data-path counter, in the order they are
/// reported. The one place the list is written: [`DataCounters`] and the node's statistics
/// snapshot are both made from it.
#[macro_export]
macro_rules! for_each_data_counter {
    ($callback:ident) => {
        $callback! {
            /// Packets read from the TUN (segments of super-packets counted one by one).
            tun_packets_in,
            /// Packets written to the TUN.
            tun_packets_out,
            /// Data frames sealed here and sent to a peer.
            frames_sent,
            /// Data frames relayed for other nodes.
            frames_forwarded,
            /// Data frames for us, opened and written to the TUN.
            frames_delivered,
            drop_not_ipv6,
            drop_no_route,
            drop_no_key,
            drop_hop_limit,
            /// AEAD open failed: a forged, corrupted or wrongly keyed frame.
            drop_decrypt,
            drop_inner,
            drop_queue_full,
            /// Data frames a link's queue dropped because data had waited in it too long (its
            /// CoDel controller), so that the inner flows slow down.
            drop_queue_delay,
            /// ECN-capable inner packets given a CE mark instead of a drop by a link's queue
            /// management.
            ce_marked,
            drop_no_tun,
            icmp_generated,
            icmp_received,
            malformed_control,
            /// Opened packets refused before the TUN, by reason: not IPv6, a source outside the
            /// sender's subnet, a destination outside our /64.
            refused_inner_not_ipv6,
            refused_inner_source,
            refused_inner_destination,
            /// Out-of-band ICMP errors refused: the quoted packet was not ours to the claimed
            /// original destination, or the link sent more than its rate.
            refused_icmp_forged,
            refused_icmp_rate,
            /// Out-of-band ICMP errors not generated because the link's rate was used up.
            icmp_rate_limited,
            /// Frames for us from a sender that cannot have a key: outside `400::/7`, or inside
            /// our /64.
            refused_sender,
            /// Needs (route queries, frames waiting for a key) a link's frames could not hand to
            /// the owner: over the link's rate, or the channel down to the room kept for the TUN.
            refused_link_needs,
            /// Traffic waiting in the owner for a route or key, dropped when its bounds were
            /// reached or when it waited past its deadline.
            drop_pending_full,
            drop_pending_expired,
            /// Data frames sealed under an end-to-end session (`docs/sessions.md`).
            session_frames_out,
            /// Data frames opened under a session.
            session_frames_in,
            /// Session frames refused as replays (counter seen, or behind the window).
            session_replays,
            /// Super-frames (whole TUN super-packets) sent and received.
            super_frames_out,
            super_frames_in,
            /// TCP SYNs sent or received over a link whose MSS was lowered to fit its datagrams.
            tcp_mss_clamped,
        }
    };
}

macro_rules! data_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Data path counters, shared by every thread and task of the data path.
        #[derive(Default, Debug)]
        pub struct DataCounters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            /// Bytes of frames handed to the owner to wait for their sender's key and not yet
            /// taken by it (a gauge, not exported): bounds what a flood can park in the channel
            /// before the owner's own bounds apply.
            pub pending_in_flight: AtomicUsize,
        }
    };
}

for_each_data_counter!(data_counters);

/// Adds one to a counter.
#[inline]
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
