//! The forwarding table as the core publishes it (incremental, copy-on-write) and the
//! per-link limits on what a neighbour may put in the core's tables (docs/protocol.md §5.11).

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use crypto::address_from_public_key;
use proptest::prelude::*;
use wire::babel::{Metric, Prefix, RouterId, SeqNo, SeqNoRequest, Subnet, Tlv, Update};

use crate::fib::Slot;
use crate::{Config, ForwardingTable, LinkId, Lookup, Router, Time};

fn rid(origin: u8, suffix: u8) -> RouterId {
    RouterId::new([origin; 32], [suffix; 6])
}

/// A subnet of `origin`'s address at one of a few prefix lengths, so that lookups must find
/// the longest of several matches.
fn subnet(origin: u8, plen: u8) -> Subnet {
    Subnet::new(address_from_public_key(&[origin; 32]), plen).unwrap()
}

fn update(s: Subnet, rid: RouterId, seqno: u16, metric: u16) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval: 30000,
        seqno: SeqNo(seqno),
        metric: Metric(metric),
        prefix: Prefix::V6(s),
        router_id: rid,
    })
}

fn drain(r: &mut Router) {
    while r.poll_transmit().is_some() {}
    while r.poll_event().is_some() {}
}

type Slots = Vec<(Subnet, Slot)>;

fn sorted_slots(t: &ForwardingTable) -> Slots {
    let mut v: Vec<_> = t.slots().collect();
    v.sort_unstable_by_key(|(s, _)| *s);
    v
}

/// An address inside `s` with some host bits set (the subnet itself for a /128).
fn inside(s: Subnet) -> Ipv6Addr {
    let host = if s.prefix_len() >= 128 {
        0
    } else {
        u128::MAX >> s.prefix_len() & 0x1234_5678_9abc_def1
    };
    Ipv6Addr::from(u128::from(s.addr()) | host)
}

const ORIGINS: [u8; 6] = [1, 2, 3, 4, 5, 6];
const PLENS: [u8; 3] = [64, 96, 128];

/// `t` answers exactly as a table built from scratch from the route table, and as the live
/// state (which only adds `Resolving` for subnets being queried).
fn check_table(r: &Router, t: &ForwardingTable) -> Result<(), TestCaseError> {
    let fresh = r.fwd_build(0);
    prop_assert_eq!(sorted_slots(t), sorted_slots(&fresh));
    prop_assert_eq!(t.len(), fresh.len());
    for o in ORIGINS {
        for p in PLENS {
            let a = inside(subnet(o, p));
            prop_assert_eq!(t.lookup(a), fresh.lookup(a));
            prop_assert_eq!(t.source(a), fresh.source(a));
            prop_assert_eq!(t.source_key(a), fresh.source_key(a));
            let live = match r.lookup(a) {
                Lookup::Resolving => Lookup::Unknown,
                l => l,
            };
            prop_assert_eq!(t.lookup(a), live);
            prop_assert_eq!(t.source(a), r.lookup_source(a));
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Update {
        link: usize,
        origin: u8,
        plen: u8,
        suffix: u8,
        seqno: u16,
        metric: u16,
    },
    Down(usize),
    Up(usize),
    Wait(u64),
    Request(u8),
    Publish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (
            0..3usize,
            prop::sample::select(ORIGINS.to_vec()),
            prop::sample::select(PLENS.to_vec()),
            0..2u8,
            0..4u16,
            prop::sample::select(vec![0u16, 40, 100, 300, 0xFFFF]),
        )
            .prop_map(|(link, origin, plen, suffix, seqno, metric)| Op::Update {
                link,
                origin,
                plen,
                suffix,
                seqno,
                metric,
            }),
        1 => (0..3usize).prop_map(Op::Down),
        1 => (0..3usize).prop_map(Op::Up),
        2 => prop::sample::select(vec![100u64, 3_000, 7_000, 60_000, 1_100_000]).prop_map(Op::Wait),
        1 => prop::sample::select(ORIGINS.to_vec()).prop_map(Op::Request),
        4 => Just(Op::Publish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After any sequence of inputs, the table published incrementally equals one built from
    /// scratch, for every subnet; `forwarding_table_dirty` is false only when nothing changed;
    /// and every snapshot handed out earlier still answers as it did then (copy-on-write). Small limits in half the cases make the dirty set overflow (the
    /// whole-table path) and links hit their share.
    #[test]
    fn incremental_table_equals_a_full_rebuild(
        ops in prop::collection::vec(op(), 1..120),
        small in any::<bool>(),
    ) {
        let mut cfg = Config::new(rid(0, 0), subnet(0, 64));
        cfg.fib_seed = 42;
        if small {
            cfg.limits.max_subnets = 4;
            cfg.limits.max_subnets_per_link = 3;
        }
        let mut r = Router::new(cfg, Time::ZERO);
        let mut now = Time::ZERO;
        // Three link slots; a slot that comes back gets a new id (ids are never reused).
        let mut ids = [LinkId(0), LinkId(1), LinkId(2)];
        let mut up = [true; 3];
        let mut next_id = 3;
        for id in ids {
            r.handle_link_up(id, 10, now).unwrap();
        }
        // Every snapshot handed out, with what it held then.
        let mut held: Vec<(Arc<ForwardingTable>, Slots)> = Vec::new();
        let mut generation = r.forwarding_table().generation();
        for op in ops.into_iter().chain([Op::Publish]) {
            match op {
                Op::Update { link, origin, plen, suffix, seqno, metric } => {
                    let t = update(subnet(origin, plen), rid(origin, suffix), seqno, metric);
                    r.handle_tlv(ids[link], &t, now);
                }
                Op::Down(l) => {
                    r.handle_link_down(ids[l], now);
                    up[l] = false;
                }
                Op::Up(l) if !up[l] => {
                    ids[l] = LinkId(next_id);
                    next_id += 1;
                    r.handle_link_up(ids[l], 10, now).unwrap();
                    up[l] = true;
                }
                Op::Up(_) => {}
                Op::Wait(ms) => {
                    let until = now + Duration::from_millis(ms);
                    while let Some(t) = r.poll_timeout().filter(|t| *t <= until) {
                        now = now.max(t);
                        r.handle_timeout(now);
                        drain(&mut r);
                    }
                    now = until;
                }
                Op::Request(o) => r.request_route(inside(subnet(o, 64)), now),
                Op::Publish => {
                    let snap = r.forwarding_table_if_changed();
                    let cur = r.forwarding_table();
                    prop_assert_eq!(snap.is_some(), cur.generation() != generation);
                    if let Some(s) = &snap {
                        prop_assert!(Arc::ptr_eq(s, &cur));
                    }
                    generation = cur.generation();
                    check_table(&r, &cur)?;
                    held.push((cur.clone(), sorted_slots(&cur)));
                }
            }
            drain(&mut r);
            r.check_invariants().map_err(TestCaseError::fail)?;
            // "Not dirty" is exact: nothing a snapshot would show has changed.
            if !r.forwarding_table_dirty() {
                prop_assert_eq!(sorted_slots(r.fwd_published()), sorted_slots(&r.fwd_build(0)));
            }
        }
        for (snap, then) in &held {
            prop_assert_eq!(&sorted_slots(snap), then);
        }
    }
}

/// A cheap address derivation for tests with many routes: key bytes 1..8 are the /64.
fn cheap_address(k: &[u8; 32]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&k[..8]);
    a[0] = 0x04;
    Ipv6Addr::from(a)
}

fn key(i: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.to_be_bytes());
    k
}

fn many(i: u64) -> (Subnet, RouterId) {
    let k = key(i);
    (Subnet::slash64(cheap_address(&k)), RouterId::new(k, [7; 6]))
}

fn many_router() -> Router {
    let (s, id) = many(u64::MAX);
    let mut cfg = Config::new(id, s);
    cfg.address_of = cheap_address;
    cfg.fib_seed = 7;
    Router::new(cfg, Time::ZERO)
}

#[test]
fn a_snapshot_is_not_changed_by_later_updates_and_shares_the_untouched_shards() {
    let mut r = many_router();
    let (l1, l2) = (LinkId(1), LinkId(2));
    r.handle_link_up(l1, 10, Time::ZERO).unwrap();
    r.handle_link_up(l2, 10, Time::ZERO).unwrap();
    for i in 0..5000 {
        let (s, id) = many(i);
        r.handle_tlv(l1, &update(s, id, 1, 100), Time::ZERO);
    }
    drain(&mut r);
    // 5,000 changes and no snapshot taken: more than half the table, so the core stopped
    // listing them and builds the next snapshot whole.
    assert!(r.forwarding_table_dirty());
    let before = r.forwarding_table();
    let frozen = sorted_slots(&before);
    assert_eq!(frozen, sorted_slots(&r.fwd_build(0)));
    assert!(!r.forwarding_table_dirty());
    // Ten changes: a retraction, a move to another link, a new route, seven refreshes that
    // change nothing the data path sees.
    let (s0, id0) = many(0);
    r.handle_tlv(l1, &update(s0, id0, 1, 0xFFFF), Time::ZERO);
    let (s1, id1) = many(1);
    r.handle_tlv(l2, &update(s1, id1, 2, 10), Time::ZERO);
    let (s9, id9) = many(9999);
    r.handle_tlv(l2, &update(s9, id9, 1, 10), Time::ZERO);
    for i in 2..9 {
        let (s, id) = many(i);
        r.handle_tlv(l1, &update(s, id, 1, 100), Time::ZERO);
    }
    drain(&mut r);
    let after = r
        .forwarding_table_if_changed()
        .expect("three subnets changed");
    assert_eq!(after.generation(), before.generation() + 1);
    assert_eq!(
        sorted_slots(&before),
        frozen,
        "the old snapshot is untouched"
    );
    assert!(after.shares_shards_with(&before) >= 256 - 3);
    assert_eq!(
        before.lookup(inside(s0)),
        Lookup::Route(crate::NextHop {
            link: l1,
            router_id: id0
        })
    );
    assert_eq!(after.lookup(inside(s0)), Lookup::NoRoute);
    assert_eq!(
        after.lookup(inside(s1)),
        Lookup::Route(crate::NextHop {
            link: l2,
            router_id: id1
        })
    );
    assert_eq!(before.lookup(inside(s9)), Lookup::Unknown);
    assert_eq!((before.len(), after.len()), (5000, 5001));
    assert_eq!(sorted_slots(&after), sorted_slots(&r.fwd_build(0)));
    // Refreshes alone publish nothing.
    let (s5, id5) = many(5);
    r.handle_tlv(l1, &update(s5, id5, 1, 100), Time::ZERO);
    assert!(r.forwarding_table_if_changed().is_none());
}

/// One link announces 300,000 routes under the default limits: it gets its share (131,072
/// subnets), the rest are refused and counted, and another link's routes still all get in.
#[test]
fn a_link_at_its_share_is_refused_new_subnets_and_another_still_gets_in() {
    let mut r = many_router();
    let (flood, honest, third) = (LinkId(1), LinkId(2), LinkId(3));
    for l in [flood, honest, third] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    let share = crate::Limits::default().max_subnets_per_link;
    assert_eq!(share, 131_072);
    for i in 0..300_000 {
        let (s, id) = many(i);
        r.handle_tlv(flood, &update(s, id, 1, 100), Time::ZERO);
        if i % 4096 == 0 {
            drain(&mut r);
        }
    }
    drain(&mut r);
    let refused = 300_000 - share as u64;
    let st = r.link_stats(flood).unwrap();
    assert_eq!((st.subnets, st.routes_refused), (share, refused));
    assert_eq!(r.counters().route_link_quota_full, refused);
    // The honest link's own routes, and one of the flooder's subnets, all get in.
    for i in 1_000_000..1_001_000 {
        let (s, id) = many(i);
        r.handle_tlv(honest, &update(s, id, 1, 100), Time::ZERO);
    }
    let (s0, id0) = many(0);
    r.handle_tlv(honest, &update(s0, id0, 1, 50), Time::ZERO);
    drain(&mut r);
    let st = r.link_stats(honest).unwrap();
    assert_eq!((st.subnets, st.routes_refused), (1001, 0));
    // At its share, the flooder still refreshes and changes what it holds...
    r.handle_tlv(flood, &update(s0, id0, 2, 10), Time::ZERO);
    assert_eq!(r.selected_next_hop(&s0), Some(flood));
    // ...but gets no entry for a subnet new to it, even one that is already in the table.
    let (sh, idh) = many(1_000_000);
    r.handle_tlv(flood, &update(sh, idh, 1, 10), Time::ZERO);
    assert_eq!(r.link_stats(flood).unwrap().routes_refused, refused + 1);
    assert_eq!(r.selected_next_hop(&sh), Some(honest));
    // A retraction is never refused; once its entry is gone the link has room for one more.
    let (s1, id1) = many(1);
    r.handle_tlv(flood, &update(s1, id1, 1, 0xFFFF), Time::ZERO);
    r.handle_timeout(Time::from_secs(7));
    drain(&mut r);
    assert_eq!(r.link_stats(flood).unwrap().subnets, share - 1);
    r.handle_tlv(flood, &update(sh, idh, 1, 10), Time::from_secs(7));
    assert_eq!(r.link_stats(flood).unwrap().subnets, share);
    assert_eq!(r.link_stats(third).unwrap(), Default::default());
    assert_eq!(r.link_stats(LinkId(99)), None);
    let fib = r.forwarding_table();
    // The flooder's subnets less the one it retracted, and the honest link's thousand.
    assert_eq!(fib.len(), share - 1 + 1000);
    r.check_invariants().unwrap();
}

/// SeqNoRequests a link sends that we forward take seqno-cache and waiter slots for 60 s: the
/// link's rate bounds its part, and another link's requests still go through.
#[test]
fn seqno_requests_a_link_makes_us_forward_are_rate_limited_per_link() {
    let mut r = many_router();
    let (asker, source, other) = (LinkId(1), LinkId(2), LinkId(3));
    for l in [asker, source, other] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    let (s, id) = many(5);
    r.handle_tlv(source, &update(s, id, 1, 100), Time::ZERO);
    drain(&mut r);
    let snr = |seqno: u16| {
        Tlv::SeqNoRequest(SeqNoRequest {
            seqno: SeqNo(seqno),
            hop_count: 10,
            router_id: id,
            prefix: Prefix::V6(s),
        })
    };
    let forwarded = |r: &mut Router| {
        std::iter::from_fn(|| r.poll_transmit())
            .filter(|(l, t)| *l == source && matches!(t, Tlv::SeqNoRequest(_)))
            .count()
    };
    for n in 0..1000 {
        r.handle_tlv(asker, &snr(2 + n), Time::ZERO);
    }
    let burst = crate::Limits::default().link_seqno_request_burst as usize;
    assert_eq!(forwarded(&mut r), burst);
    let st = r.link_stats(asker).unwrap();
    assert_eq!(st.seqno_requests_refused, 1000 - burst as u64);
    assert_eq!(r.counters().seqno_request_rate_limited, 1000 - burst as u64);
    // Another neighbour's request still goes through at once.
    r.handle_tlv(other, &snr(5000), Time::ZERO);
    assert_eq!(forwarded(&mut r), 1);
    // A second later the asker has 50 more.
    for n in 0..100 {
        r.handle_tlv(asker, &snr(3000 + n), Time::from_secs(1));
    }
    assert_eq!(forwarded(&mut r), 50);
    r.check_invariants().unwrap();
}

#[test]
fn a_core_that_notes_no_changes_still_publishes_correct_snapshots() {
    let (s, id) = many(u64::MAX);
    let mut cfg = Config::new(id, s);
    cfg.address_of = cheap_address;
    cfg.snapshot_changes = false;
    let mut r = Router::new(cfg, Time::ZERO);
    let l = LinkId(1);
    r.handle_link_up(l, 10, Time::ZERO).unwrap();
    for i in 0..100 {
        let (s, id) = many(i);
        r.handle_tlv(l, &update(s, id, 1, 100), Time::ZERO);
    }
    drain(&mut r);
    // Nothing listed: the table is built whole when taken, and again after every change.
    assert!(r.fwd_dirty.is_empty());
    let first = r.forwarding_table_if_changed().expect("a first snapshot");
    assert_eq!(sorted_slots(&first), sorted_slots(&r.fwd_build(0)));
    assert_eq!(first.len(), 100);
    let (s0, id0) = many(0);
    r.handle_tlv(l, &update(s0, id0, 1, 0xFFFF), Time::ZERO);
    assert!(r.fwd_dirty.is_empty());
    let second = r.forwarding_table();
    assert_eq!(second.lookup(inside(s0)), Lookup::NoRoute);
    assert_eq!(sorted_slots(&second), sorted_slots(&r.fwd_build(0)));
}
