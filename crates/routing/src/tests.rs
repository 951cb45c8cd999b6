//! Unit tests of the core on hand-built TLVs.

use std::net::Ipv6Addr;
use std::time::Duration;

use wire::babel::{Hello, Ihu, Metric, Prefix, RouterId, SeqNo, Subnet, Tlv, Update};

use crate::{derive_address, Config, Event, LinkId, Lookup, Router, Time};

fn ident(n: u8) -> (RouterId, Subnet) {
    let pk = [n; 32];
    (
        RouterId::new(pk, [n; 6]),
        Subnet::slash64(derive_address(&pk)),
    )
}

fn router() -> Router {
    let (rid, subnet) = ident(0);
    Router::new(Config::new(rid, subnet), Time::ZERO)
}

fn drain(r: &mut Router) -> Vec<(LinkId, Tlv)> {
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

fn events(r: &mut Router) -> Vec<Event> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

fn update(from: u8, seqno: u16, metric: u16) -> Tlv {
    let (rid, subnet) = ident(from);
    Tlv::Update(Update {
        flags: 0,
        interval: 30000,
        seqno: SeqNo(seqno),
        metric: Metric(metric),
        prefix: Prefix::V6(subnet),
        router_id: rid,
    })
}

const L1: LinkId = LinkId(1);
const L2: LinkId = LinkId(2);
const L3: LinkId = LinkId(3);

fn secs(s: u64) -> Time {
    Time::from_secs(s)
}

#[test]
fn link_up_announces_and_hellos() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_timeout(Time::ZERO);
    let out = drain(&mut r);
    assert!(matches!(out[0], (L1, Tlv::Update(u)) if u.metric == Metric(0) && u.interval == 30000));
    assert!(matches!(out[1], (L1, Tlv::Hello(h)) if h.flags == 0x8000 && h.interval == 2000));
    assert_eq!(out.len(), 2);
    assert_eq!(
        r.handle_link_up(L1, 10, Time::ZERO),
        Err(crate::LinkError::Exists)
    );
}

#[test]
fn ihu_smooths_cost_from_hello_round_trip() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_timeout(Time::ZERO);
    drain(&mut r);
    r.handle_tlv(
        L1,
        &Tlv::Ihu(Ihu {
            rx_cost: Metric(1),
            interval: 6000,
            address: None,
        }),
        Time::from_millis(100),
    );
    // (9·1000 + 100) / 10 = 910, plus static 10.
    assert_eq!(r.links(Time::from_millis(100))[0].cost, Metric(920));
    r.handle_tlv(
        L1,
        &Tlv::Hello(Hello {
            flags: 0x8000,
            seqno: SeqNo(0),
            interval: 2000,
        }),
        secs(1),
    );
    let out = drain(&mut r);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(out[0], (L1, Tlv::Ihu(i)) if i.rx_cost == Metric(920) && i.interval == 6000 && i.address.is_none())
    );
}

#[test]
fn silent_peer_dies_and_routes_move() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    r.handle_tlv(L1, &update(5, 1, 100), Time::ZERO);
    r.handle_tlv(L2, &update(5, 1, 200), Time::ZERO);
    let (_, s5) = ident(5);
    assert_eq!(r.selected_next_hop(&s5), Some(L1));
    // L2 keeps answering Hellos, L1 goes silent.
    let mut t = Time::ZERO;
    let mut dead_at = None;
    while t < secs(70) && dead_at.is_none() {
        t = r.poll_timeout().unwrap();
        r.handle_timeout(t);
        for (l, tlv) in drain(&mut r) {
            if l == L2 && matches!(tlv, Tlv::Hello(_)) {
                r.handle_tlv(
                    L2,
                    &Tlv::Ihu(Ihu {
                        rx_cost: Metric(1),
                        interval: 6000,
                        address: None,
                    }),
                    t,
                );
            }
        }
        if events(&mut r).contains(&Event::LinkDead(L1)) {
            dead_at = Some(t);
        }
    }
    let dead_at = dead_at.expect("L1 declared dead");
    assert!(dead_at > secs(43) && dead_at <= secs(53), "{dead_at:?}");
    assert_eq!(r.selected_next_hop(&s5), Some(L2));
    r.check_invariants().unwrap();
}

#[test]
fn triggered_update_respects_split_horizon_and_metric_includes_link_cost() {
    let mut r = router();
    for l in [L1, L2, L3] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    drain(&mut r);
    r.handle_tlv(L1, &update(5, 3, 100), Time::ZERO);
    let out = drain(&mut r);
    let to: Vec<LinkId> = out.iter().map(|(l, _)| *l).collect();
    assert_eq!(to, vec![L2, L3]);
    for (_, t) in out {
        let Tlv::Update(u) = t else { panic!("{t:?}") };
        assert_eq!(
            (u.metric, u.seqno, u.router_id),
            (Metric(1110), SeqNo(3), ident(5).0)
        );
    }
    assert_eq!(events(&mut r), vec![Event::RouteAcquired(ident(5).1)]);
}

#[test]
fn filters_reject_foreign_and_short_prefixes() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    drain(&mut r);
    let (rid5, _) = ident(5);
    let mk = |subnet: Subnet, metric: u16| {
        Tlv::Update(Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(1),
            metric: Metric(metric),
            prefix: Prefix::V6(subnet),
            router_id: rid5,
        })
    };
    let not_owned: Subnet = "500:1:2:3::/64".parse().unwrap();
    let short = Subnet::new(derive_address(&[5; 32]), 48).unwrap();
    let outside: Subnet = "2001:db8::/64".parse().unwrap();
    r.handle_tlv(L1, &mk(not_owned, 10), Time::ZERO);
    r.handle_tlv(L1, &mk(short, 10), Time::ZERO);
    r.handle_tlv(L1, &mk(outside, 10), Time::ZERO);
    // Our own /64 under our own id (as a neighbour echoing it back would send it).
    let Tlv::Update(mut own) = update(0, 1, 10) else {
        unreachable!()
    };
    own.router_id = ident(0).0;
    r.handle_tlv(L1, &Tlv::Update(own), Time::ZERO);
    assert!(r.selected_routes(Time::ZERO).is_empty() && r.fallback_routes(Time::ZERO).is_empty());
    let c = r.counters();
    assert_eq!(
        (c.update_bad_owner, c.update_bad_prefix, c.update_own_subnet),
        (1, 2, 1)
    );
    assert!(drain(&mut r).is_empty());
}

#[test]
fn hysteresis_keeps_current_route_unless_ten_better() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    let s5 = ident(5).1;
    r.handle_tlv(L1, &update(5, 1, 100), Time::ZERO);
    r.handle_tlv(L2, &update(5, 2, 95), Time::ZERO);
    assert_eq!(
        r.selected_next_hop(&s5),
        Some(L1),
        "5 better is within hysteresis"
    );
    r.handle_tlv(L2, &update(5, 2, 80), Time::ZERO);
    assert_eq!(r.selected_next_hop(&s5), Some(L2), "20 better switches");
}

#[test]
fn lookups_and_snapshot() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    let (rid5, s5) = ident(5);
    let a5 = derive_address(&[5; 32]);
    assert_eq!(r.lookup(a5), Lookup::Unknown);
    r.request_route(a5, Time::ZERO);
    assert_eq!(r.lookup(a5), Lookup::Resolving);
    let first = r.forwarding_table();
    r.handle_tlv(L1, &update(5, 1, 100), Time::ZERO);
    let want = Lookup::Route(crate::NextHop {
        link: L1,
        router_id: rid5,
    });
    assert_eq!(r.lookup(a5), want);
    let snap = r.forwarding_table_if_changed().expect("rebuilt");
    assert!(snap.generation() > first.generation());
    assert_eq!(snap.lookup(a5), want);
    assert_eq!(snap.source_key(a5), Some([5; 32]));
    assert_eq!(snap.source(a5), Some((s5, [5; 32])));
    assert_eq!(snap.source(derive_address(&[9; 32])), None);
    assert_eq!(snap.lookup(derive_address(&[0; 32])), Lookup::Local);
    assert!(r.forwarding_table_if_changed().is_none());
    assert!(r.queried_subnets(Time::ZERO).is_empty());
    assert_eq!(
        r.lookup_source_key(Ipv6Addr::from(u128::from(s5.addr()) | 7)),
        Some([5; 32])
    );
    assert_eq!(
        r.lookup_source(Ipv6Addr::from(u128::from(s5.addr()) | 7)),
        Some((s5, [5; 32]))
    );
}

#[test]
fn expiry_retracts_then_forgets() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    let s5 = ident(5).1;
    let Tlv::Update(mut u) = update(5, 1, 100) else {
        unreachable!()
    };
    u.interval = 100; // 1 s → hold 3.5 s
    r.handle_tlv(L1, &Tlv::Update(u), Time::ZERO);
    drain(&mut r);
    r.handle_timeout(Time::from_millis(3499));
    assert_eq!(r.selected_next_hop(&s5), Some(L1));
    r.handle_timeout(Time::from_millis(3500));
    assert_eq!(r.selected_next_hop(&s5), None);
    let out = drain(&mut r);
    assert!(out.iter().any(|(l, t)| *l == L2
        && matches!(t, Tlv::Update(u) if u.metric.is_infinite() && u.router_id == ident(0).0)));
    assert_eq!(
        r.fallback_routes(Time::from_millis(3500)).len(),
        1,
        "held as retracted"
    );
    r.handle_timeout(Time::from_millis(3500) + Duration::from_secs(6));
    assert!(r.fallback_routes(Time::from_secs(10)).is_empty());
    r.check_invariants().unwrap();
}

#[test]
fn prefix_length_index_lists_lengths_in_use_longest_first() {
    let mut idx = crate::router::PlenIndex::default();
    for p in [64, 128, 0, 63, 64, 65, 127] {
        idx.add_pub(p);
    }
    assert_eq!(
        idx.lengths().collect::<Vec<_>>(),
        vec![128, 127, 65, 64, 63, 0]
    );
    idx.remove_pub(64);
    assert_eq!(
        idx.lengths().collect::<Vec<_>>(),
        vec![128, 127, 65, 64, 63, 0]
    );
    idx.remove_pub(64);
    idx.remove_pub(128);
    idx.remove_pub(128); // more removals than adds are harmless
    assert_eq!(idx.lengths().collect::<Vec<_>>(), vec![127, 65, 63, 0]);
}

#[test]
fn answered_route_requests_are_counted() {
    use wire::babel::RouteRequest;
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    // A selected route to node 5 through L2.
    r.handle_tlv(L2, &update(5, 1, 100), secs(1));
    drain(&mut r);
    let own = ident(0).1;
    let other = ident(5).1;
    let unknown = Subnet::slash64("4ff:1:2:3::".parse::<Ipv6Addr>().unwrap());
    for p in [own, other, unknown] {
        let rr = Tlv::RouteRequest(RouteRequest {
            generation: 0,
            prefix: Prefix::V6(p),
        });
        r.handle_tlv(L1, &rr, secs(2));
    }
    let out = drain(&mut r);
    let updates = out
        .iter()
        .filter(|(l, t)| *l == L1 && matches!(t, Tlv::Update(_)))
        .count();
    assert_eq!(updates, 2, "{out:?}");
    assert_eq!(r.counters().route_request_rx, 3);
    assert_eq!(r.counters().route_request_answered, 2);
}
