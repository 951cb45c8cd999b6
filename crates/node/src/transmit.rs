//! Handing frame batches to link writers: the bounded wait for room in a full link queue, and
//! the links found stalled; and the channel that carries the data path's needs to the owner.

use std::sync::atomic::Ordering;
use std::time::Duration;

use datapath::{DataCounters, FrameBatch, Need, NeedSink};
use routing::LinkId;
use tokio::sync::mpsc;

/// The data path's snapshot as the shell keeps it: each link with its queue's sender.
pub(crate) type DataTable = datapath::DataTable<LinkTx>;

/// Where data frames for one link go: batches of encoded frames, bounded (back-pressure).
#[derive(Clone, Debug)]
pub(crate) struct LinkTx {
    pub data: mpsc::Sender<FrameBatch>,
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
    tx: &mpsc::Sender<FrameBatch>,
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
    tx: &mpsc::Sender<FrameBatch>,
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
        }
    }

    #[test]
    fn a_full_link_is_waited_for_until_found_stalled_then_skipped_until_it_drains() {
        let (tx, mut rx) = mpsc::channel(1);
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
        assert_eq!(rx.try_recv().unwrap().frames, 1);
        assert!(offer_batch(&tx, link, batch(4), &mut stalled, &counters).is_none());
        assert!(!stalled.contains(link));
        assert_eq!(rx.try_recv().unwrap().frames, 4);
        // A closed link: counted as no route.
        drop(rx);
        assert!(offer_batch(&tx, link, batch(5), &mut stalled, &counters).is_none());
        assert_eq!(counters.drop_no_route.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn waiting_for_room_sends_or_marks_the_link_stalled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let counters = DataCounters::default();
        let mut stalled = Stalled::default();
        let link = LinkId(7);
        tx.try_send(batch(1)).unwrap();
        // Nobody drains the full queue: stalled after the bounded wait, frames counted.
        assert!(rt.block_on(wait_for_room(&tx, link, batch(2), &mut stalled, &counters)));
        assert!(stalled.contains(link));
        assert_eq!(counters.drop_queue_full.load(Ordering::Relaxed), 2);
        // Room appears: the batch goes through, nothing counted.
        assert_eq!(rx.try_recv().unwrap().frames, 1);
        assert!(!rt.block_on(wait_for_room(&tx, link, batch(4), &mut stalled, &counters)));
        assert_eq!(rx.try_recv().unwrap().frames, 4);
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
