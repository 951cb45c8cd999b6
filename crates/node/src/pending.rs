//! Traffic that waits in the owner for a route: packets from the TUN waiting for a route to their
//! destination, and frames from peers waiting for their sender's key. Both are kept per /64,
//! bounded in count and bytes (in total, per /64 and per link they came from, so one peer cannot
//! take the room honest senders need) and each entry has a deadline, so nothing waits longer than
//! a route query may take — whether or not the query was ever sent.
//!
//! No clock and no I/O: `now` comes from the caller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use routing::LinkId;
use rustc_hash::FxHashMap;
use wire::babel::Subnet;

/// How much may wait, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub per_subnet: usize,
    pub per_subnet_bytes: usize,
    pub total: usize,
    pub total_bytes: usize,
    /// Entries and bytes one link's traffic may hold (frames from peers; the TUN's packets have
    /// no link).
    pub per_link: usize,
    pub per_link_bytes: usize,
    pub deadline: Duration,
}

/// Why an entry was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// Its /64 already holds as many entries or bytes as one /64 may.
    Subnet,
    /// The link it came from holds its share of the bytes.
    Link,
    /// The queue as a whole is full.
    Total,
}

struct Entry<T> {
    item: T,
    bytes: usize,
    link: Option<LinkId>,
    queued: Instant,
}

#[derive(Default)]
struct PerSubnet<T> {
    entries: VecDeque<Entry<T>>,
    bytes: usize,
}

/// A bounded, expiring queue of `T` per /64.
pub(crate) struct Pending<T> {
    limits: Limits,
    subnets: FxHashMap<Subnet, PerSubnet<T>>,
    /// Entries and bytes held per link.
    links: FxHashMap<LinkId, (usize, usize)>,
    len: usize,
    bytes: usize,
}

impl<T> Pending<T> {
    pub fn new(limits: Limits) -> Pending<T> {
        Pending {
            limits,
            subnets: FxHashMap::default(),
            links: FxHashMap::default(),
            len: 0,
            bytes: 0,
        }
    }

    /// Entries waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes waiting.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `item` (`bytes` long) for `subnet`, unless a bound is reached.
    pub fn push(
        &mut self,
        subnet: Subnet,
        item: T,
        bytes: usize,
        link: Option<LinkId>,
        now: Instant,
    ) -> Result<(), Full> {
        let l = &self.limits;
        if self.len >= l.total || self.bytes + bytes > l.total_bytes {
            return Err(Full::Total);
        }
        if let Some(link) = link {
            let (n, b) = self.links.get(&link).copied().unwrap_or((0, 0));
            if n >= l.per_link || b + bytes > l.per_link_bytes {
                return Err(Full::Link);
            }
        }
        if let Some(q) = self.subnets.get(&subnet) {
            if q.entries.len() >= l.per_subnet || q.bytes + bytes > l.per_subnet_bytes {
                return Err(Full::Subnet);
            }
        } else if bytes > l.per_subnet_bytes {
            return Err(Full::Subnet);
        }
        let q = self.subnets.entry(subnet).or_insert_with(|| PerSubnet {
            entries: VecDeque::new(),
            bytes: 0,
        });
        q.entries.push_back(Entry {
            item,
            bytes,
            link,
            queued: now,
        });
        q.bytes += bytes;
        if let Some(link) = link {
            let (n, b) = self.links.entry(link).or_default();
            *n += 1;
            *b += bytes;
        }
        self.len += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// Takes everything waiting for `subnet`, oldest first.
    pub fn take(&mut self, subnet: &Subnet) -> Vec<T> {
        let Some(q) = self.subnets.remove(subnet) else {
            return Vec::new();
        };
        q.entries
            .into_iter()
            .map(|e| {
                self.forget(&e);
                e.item
            })
            .collect()
    }

    /// Removes what has waited past the deadline, handing each to `expired`.
    pub fn expire(&mut self, now: Instant, mut expired: impl FnMut(T)) {
        let deadline = self.limits.deadline;
        let mut gone = Vec::new();
        let mut emptied = Vec::new();
        for (subnet, q) in self.subnets.iter_mut() {
            while q
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.queued) >= deadline)
            {
                let e = q.entries.pop_front().expect("front checked");
                q.bytes -= e.bytes;
                gone.push(e);
            }
            if q.entries.is_empty() {
                emptied.push(*subnet);
            }
        }
        for s in emptied {
            self.subnets.remove(&s);
        }
        for e in gone {
            self.forget(&e);
            expired(e.item);
        }
    }

    /// Drops the accounting of an entry that left the queue.
    fn forget(&mut self, e: &Entry<T>) {
        self.len -= 1;
        self.bytes -= e.bytes;
        if let Some(link) = e.link {
            if let Some((n, b)) = self.links.get_mut(&link) {
                *n -= 1;
                *b -= e.bytes;
                if *n == 0 {
                    self.links.remove(&link);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const LIMITS: Limits = Limits {
        per_subnet: 3,
        per_subnet_bytes: 2500,
        total: 8,
        total_bytes: 6000,
        per_link: 5,
        per_link_bytes: 3000,
        deadline: Duration::from_secs(15),
    };

    fn subnet(i: u16) -> Subnet {
        Subnet::slash64(Ipv6Addr::new(0x400, i, 0, 0, 0, 0, 0, 1))
    }

    #[test]
    fn one_subnet_cannot_hold_more_than_its_share() {
        let mut p = Pending::new(LIMITS);
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(p.push(subnet(1), i, 100, None, t), Ok(()));
        }
        assert_eq!(p.push(subnet(1), 9, 100, None, t), Err(Full::Subnet));
        // By bytes too.
        assert_eq!(p.push(subnet(2), 0, 2000, None, t), Ok(()));
        assert_eq!(p.push(subnet(2), 1, 501, None, t), Err(Full::Subnet));
        assert_eq!(p.push(subnet(3), 0, 2501, None, t), Err(Full::Subnet));
        // Other subnets still have room.
        assert_eq!(p.push(subnet(4), 0, 100, None, t), Ok(()));
        assert_eq!(p.len(), 5);
        assert_eq!(p.bytes(), 2400);
    }

    #[test]
    fn one_link_cannot_take_the_room_of_the_others() {
        let mut p = Pending::new(LIMITS);
        let t = Instant::now();
        let flood = Some(LinkId(1));
        let mut refused = 0;
        for i in 0..20u16 {
            if p.push(subnet(i), i, 1000, flood, t) == Err(Full::Link) {
                refused += 1;
            }
        }
        assert_eq!(refused, 17, "the flooding link keeps 3000 bytes");
        // An honest sender behind another link still gets in.
        assert_eq!(p.push(subnet(100), 0, 1000, Some(LinkId(2)), t), Ok(()));
        // Taking the flood's entries gives its share back.
        assert_eq!(p.take(&subnet(0)), vec![0]);
        assert_eq!(p.push(subnet(50), 50, 1000, flood, t), Ok(()));
        // The share is in entries too: small frames cannot take the whole count.
        let mut p = Pending::new(LIMITS);
        let small = (0..8u16)
            .filter(|&i| p.push(subnet(i), i, 1, flood, t).is_ok())
            .count();
        assert_eq!(small, 5);
        assert_eq!(p.push(subnet(100), 0, 1, Some(LinkId(2)), t), Ok(()));
    }

    #[test]
    fn the_total_is_bounded_in_count_and_bytes() {
        let mut p = Pending::new(LIMITS);
        let t = Instant::now();
        for i in 0..8u16 {
            assert_eq!(
                p.push(subnet(i), i, 10, Some(LinkId(u64::from(i))), t),
                Ok(())
            );
        }
        assert_eq!(p.push(subnet(9), 9, 10, None, t), Err(Full::Total));
        let mut p = Pending::new(LIMITS);
        for i in 0..3u16 {
            assert_eq!(
                p.push(subnet(i), i, 2000, Some(LinkId(u64::from(i))), t),
                Ok(())
            );
        }
        assert_eq!(p.push(subnet(9), 9, 1, None, t), Err(Full::Total));
    }

    #[test]
    fn entries_expire_at_their_deadline_whether_or_not_anyone_asks() {
        let mut p = Pending::new(LIMITS);
        let t = Instant::now();
        p.push(subnet(1), 1, 100, Some(LinkId(1)), t).unwrap();
        p.push(
            subnet(1),
            2,
            100,
            Some(LinkId(1)),
            t + Duration::from_secs(10),
        )
        .unwrap();
        p.push(subnet(2), 3, 100, None, t + Duration::from_secs(1))
            .unwrap();
        let mut gone = Vec::new();
        p.expire(t + Duration::from_secs(14), |x| gone.push(x));
        assert!(gone.is_empty());
        p.expire(t + Duration::from_secs(16), |x| gone.push(x));
        gone.sort_unstable();
        assert_eq!(gone, vec![1, 3]);
        assert_eq!((p.len(), p.bytes()), (1, 100));
        p.expire(t + Duration::from_secs(25), |x| gone.push(x));
        assert_eq!(gone.len(), 3);
        assert_eq!((p.len(), p.bytes()), (0, 0));
        assert!(
            p.subnets.is_empty() && p.links.is_empty(),
            "no empty entries kept"
        );
    }

    #[test]
    fn take_returns_a_subnets_entries_in_order_and_frees_their_room() {
        let mut p = Pending::new(LIMITS);
        let t = Instant::now();
        for i in 0..3 {
            p.push(subnet(1), i, 800, Some(LinkId(7)), t).unwrap();
        }
        assert_eq!(
            p.push(subnet(2), 9, 1000, Some(LinkId(7)), t),
            Err(Full::Link)
        );
        assert_eq!(p.take(&subnet(1)), vec![0, 1, 2]);
        assert!(p.take(&subnet(1)).is_empty());
        assert_eq!((p.len(), p.bytes()), (0, 0));
        assert_eq!(p.push(subnet(2), 9, 1000, Some(LinkId(7)), t), Ok(()));
    }
}
