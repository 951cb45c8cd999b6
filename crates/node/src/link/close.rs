//! Why links close, typed so the owner can act on the reason (a link to ourselves is removed, not
//! redialled) and count it (`hypha_links_closed_total{reason}`).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use wire::frame::StreamError;

/// Why a link closed: said by the link's tasks when they end, or by the owner when it drops one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer ended the stream.
    PeerClosed,
    /// Reading from the transport failed (reset, timed out, …).
    ReadFailed(io::ErrorKind),
    /// Writing to the transport failed.
    WriteFailed(io::ErrorKind),
    /// The peer took none of our bytes for the write-stall timeout.
    WriteStalled,
    /// The peer broke the link framing.
    Framing(StreamError),
    /// The link leads to this node itself: the peer sent our own announcement.
    SelfLink,
    /// The routing core heard no IHU from the neighbour for its dead interval.
    NeighbourDead,
    /// Removed through the admin API.
    Removed,
    /// A new connection from the same address replaced it.
    Replaced,
    /// The node dropped the link's queues: shutting down, or already closing it.
    Shutdown,
}

impl CloseReason {
    /// Every reason's metric label, in [`CloseReason::index`] order.
    pub const LABELS: [&'static str; 10] = [
        "peer_closed",
        "read_failed",
        "write_failed",
        "write_stalled",
        "framing",
        "self_link",
        "neighbour_dead",
        "removed",
        "replaced",
        "shutdown",
    ];

    pub fn index(self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::ReadFailed(_) => 1,
            CloseReason::WriteFailed(_) => 2,
            CloseReason::WriteStalled => 3,
            CloseReason::Framing(_) => 4,
            CloseReason::SelfLink => 5,
            CloseReason::NeighbourDead => 6,
            CloseReason::Removed => 7,
            CloseReason::Replaced => 8,
            CloseReason::Shutdown => 9,
        }
    }

    /// The metric label of this reason.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::ReadFailed(k) => write!(f, "read failed: {}", io::Error::from(*k)),
            CloseReason::WriteFailed(k) => write!(f, "write failed: {}", io::Error::from(*k)),
            CloseReason::WriteStalled => f.write_str("peer stalled: no write progress in 30 s"),
            CloseReason::Framing(e) => write!(f, "framing error: {e}"),
            CloseReason::SelfLink => {
                f.write_str("connected to ourselves (the peer sent our own announcement)")
            }
            CloseReason::NeighbourDead => f.write_str("no IHU for 43 s"),
            CloseReason::Removed => f.write_str("removed through the API"),
            CloseReason::Replaced => {
                f.write_str("replaced by a new connection from the same address")
            }
            CloseReason::Shutdown => f.write_str("closed"),
        }
    }
}

/// Links closed, by reason (shared by the owner, which counts every close once, and the stats).
#[derive(Default, Debug)]
pub(crate) struct LinkCloses {
    counts: [AtomicU64; CloseReason::LABELS.len()],
}

impl LinkCloses {
    pub fn count(&self, why: CloseReason) {
        self.counts[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Each reason's label and count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        CloseReason::LABELS
            .iter()
            .zip(&self.counts)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label_and_counter() {
        let reasons = [
            CloseReason::PeerClosed,
            CloseReason::ReadFailed(io::ErrorKind::ConnectionReset),
            CloseReason::WriteFailed(io::ErrorKind::BrokenPipe),
            CloseReason::WriteStalled,
            CloseReason::Framing(StreamError::UnknownVersion(9)),
            CloseReason::SelfLink,
            CloseReason::NeighbourDead,
            CloseReason::Removed,
            CloseReason::Replaced,
            CloseReason::Shutdown,
        ];
        let closes = LinkCloses::default();
        for (i, r) in reasons.iter().enumerate() {
            assert_eq!(r.index(), i);
            for _ in 0..=i {
                closes.count(*r);
            }
        }
        let snap = closes.snapshot();
        assert_eq!(snap.len(), reasons.len());
        for (i, (label, n)) in snap.iter().enumerate() {
            assert_eq!(*label, reasons[i].label());
            assert_eq!(*n, i as u64 + 1);
        }
        let text = CloseReason::ReadFailed(io::ErrorKind::ConnectionReset).to_string();
        assert!(text.starts_with("read failed: "), "{text}");
        assert!(CloseReason::Framing(StreamError::UnknownVersion(9))
            .to_string()
            .starts_with("framing error"));
    }
}
