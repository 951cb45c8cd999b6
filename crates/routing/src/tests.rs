//! Unit tests of the core on hand-built TLVs.

use std::net::Ipv6Addr;
use std::time::Duration;

use crypto::address_from_public_key;
use wire::babel::{Hello, Ihu, Metric, Prefix, RouterId, SeqNo, Subnet, Tlv, Update};

use crate::{Config, Event, LinkId, Lookup, Router, Time};

fn ident(n: u8) -> (RouterId, Subnet) {
    let pk = [n; 32];
    (
        RouterId::new(pk, [n; 6]),
        Subnet::slash64(address_from_public_key(&pk)),
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
    let short = Subnet::new(address_from_public_key(&[5; 32]), 48).unwrap();
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
    let a5 = address_from_public_key(&[5; 32]);
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
    assert_eq!(snap.source(address_from_public_key(&[9; 32])), None);
    assert_eq!(
        snap.lookup(address_from_public_key(&[0; 32])),
        Lookup::Local
    );
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

/// The counts the stats show are the lengths of the lists, without making them.
#[test]
fn route_counts_are_the_lengths_of_the_lists() {
    let mut r = router();
    let counts = |r: &Router, t: Time| (r.selected_routes(t).len(), r.fallback_routes(t).len());
    assert_eq!(r.route_counts(), (0, 0));
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    for (link, n, metric) in [(L1, 5, 100), (L2, 5, 300), (L2, 6, 100), (L1, 7, 100)] {
        r.handle_tlv(link, &update(n, 1, metric), Time::ZERO);
    }
    drain(&mut r);
    assert_eq!(r.route_counts(), (3, 1));
    assert_eq!(r.route_counts(), counts(&r, Time::ZERO));
    let mut seen = 0;
    r.for_each_route(Time::ZERO, false, |info| {
        assert_eq!((info.next_hop, info.subnet), (L2, ident(5).1));
        seen += 1;
    });
    assert_eq!(seen, 1);
    r.handle_link_down(L1, Time::ZERO);
    drain(&mut r);
    assert_eq!(r.route_counts(), counts(&r, Time::ZERO));
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

/// Drains `r`, answering its Hellos with IHUs (peers that stay alive), and returns what it sent.
fn answer_hellos(r: &mut Router, now: Time) -> Vec<(LinkId, Tlv)> {
    let out = drain(r);
    for (l, t) in &out {
        if matches!(t, Tlv::Hello(_)) {
            let ihu = Ihu {
                rx_cost: Metric(1),
                interval: 6000,
                address: None,
            };
            r.handle_tlv(*l, &Tlv::Ihu(ihu), now);
        }
    }
    out
}

fn random_route_request(rng: &mut crate::sim::SimRng) -> Tlv {
    let mut a = [0u8; 16];
    rng.fill(&mut a);
    a[0] = 0x04 | (a[0] & 1); // inside 400::/7
    Tlv::RouteRequest(wire::babel::RouteRequest {
        generation: 0,
        prefix: Prefix::V6(Subnet::slash64(a.into())),
    })
}

fn route_request(generation: u8, subnet: Subnet) -> Tlv {
    Tlv::RouteRequest(wire::babel::RouteRequest {
        generation,
        prefix: Prefix::V6(subnet),
    })
}

/// Route requests in `out` as (link, generation, subnet).
fn requests(out: &[(LinkId, Tlv)]) -> Vec<(LinkId, u8, Subnet)> {
    out.iter()
        .filter_map(|(l, t)| match t {
            Tlv::RouteRequest(rr) => match rr.prefix {
                Prefix::V6(s) => Some((*l, rr.generation, s)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Issue 12, finding 3: one link flooding RouteRequests for random /64s (17,000 at once, then
/// 1,500/s) used to fill the whole query table, so that no query of the node itself or of any
/// other peer could start.
#[test]
fn a_link_flooding_route_requests_gets_only_its_share_of_the_query_table() {
    let mut r = router();
    for l in [L1, L2, L3] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    drain(&mut r);
    let mut rng = crate::sim::SimRng::new(12);
    for _ in 0..17_000 {
        let rr = random_route_request(&mut rng);
        r.handle_tlv(L1, &rr, Time::ZERO);
    }
    let mut forwarded = requests(&drain(&mut r)).len();
    for tick in 1..=3000 {
        let t = Time::from_millis(10 * tick);
        for _ in 0..15 {
            let rr = random_route_request(&mut rng);
            r.handle_tlv(L1, &rr, t);
        }
        r.handle_timeout(t);
        forwarded += requests(&drain(&mut r)).len();
        events(&mut r);
    }
    let now = secs(30);

    // Our own query starts and goes to every peer.
    let own = address_from_public_key(&[7; 32]);
    let own_subnet = Subnet::slash64(own);
    r.request_route(own, now);
    assert_eq!(r.lookup(own), Lookup::Resolving);
    let sent = requests(&drain(&mut r));
    assert_eq!(sent, [L1, L2, L3].map(|l| (l, 0, own_subnet)).to_vec());

    // Another peer's own request and one it relays are marked and forwarded.
    let (s8, s9) = (ident(8).1, ident(9).1);
    r.handle_tlv(L2, &route_request(0, s8), now);
    r.handle_tlv(L2, &route_request(3, s9), now);
    let sent = requests(&drain(&mut r));
    assert!(
        sent.contains(&(L3, 1, s8)) && sent.contains(&(L3, 4, s9)),
        "{sent:?}"
    );
    assert_eq!(
        r.lookup(address_from_public_key(&[8; 32])),
        Lookup::Resolving
    );

    // Traffic from the flooding link starts no query; traffic from another link does.
    let (a10, a11) = (
        address_from_public_key(&[10; 32]),
        address_from_public_key(&[11; 32]),
    );
    r.request_route_for_link(a10, L1, now);
    r.request_route_for_link(a11, L2, now);
    assert_eq!(
        r.lookup(a10),
        Lookup::Resolving,
        "L1's relayed class is apart"
    );
    for n in 12..=200u8 {
        r.request_route_for_link(address_from_public_key(&[n; 32]), L1, now);
    }
    r.request_route_for_link(a11, L2, now);
    assert_eq!(r.lookup(a11), Lookup::Resolving);

    // The flood held at most its share, and we forwarded what its rate allows.
    let queried = r.queried_subnets(now).len();
    assert!(queried <= 2 * 512 + 8, "{queried} subnets queried");
    assert!(
        forwarded <= 2 * (400 + 50 * 30),
        "{forwarded} requests forwarded"
    );
    let c = r.counters();
    assert_eq!(c.route_request_rx, 17_000 + 3000 * 15 + 2);
    assert!(
        c.query_rate_limited > 0 && c.query_link_share_full > 0,
        "{c:?}"
    );
    assert_eq!(c.query_table_full, 0);
    r.check_invariants().unwrap();
}

/// Issue 12, finding 5: every 13-byte wildcard RouteRequest used to return the whole table.
#[test]
fn wildcard_requests_get_at_most_one_dump_per_holdoff() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    for n in 1..=50 {
        r.handle_tlv(L2, &update(n, 1, 100), Time::ZERO);
    }
    drain(&mut r);
    events(&mut r);
    let wildcard = Tlv::RouteRequest(wire::babel::RouteRequest {
        generation: 0,
        prefix: Prefix::Wildcard,
    });
    // Ten wildcard requests a second on L1 for 150 s.
    let first = Prefix::V6(ident(1).1);
    let (mut dumps, mut updates) = (Vec::new(), 0);
    for tick in 0..1500 {
        let t = Time::from_millis(100 * tick);
        r.handle_tlv(L1, &wildcard, t);
        r.handle_timeout(t);
        for (l, tlv) in answer_hellos(&mut r, t) {
            if let (true, Tlv::Update(u)) = (l == L1, tlv) {
                updates += 1;
                if u.prefix == first {
                    dumps.push(t);
                }
            }
        }
    }
    // At once, then once at the end of each 60 s hold-off.
    assert_eq!(
        dumps.len(),
        3,
        "dumps at {:?}…",
        &dumps[..dumps.len().min(5)]
    );
    assert_eq!(dumps, vec![secs(0), secs(60), secs(120)]);
    assert_eq!(updates, 3 * 51, "our /64 and 50 routes per dump");
    assert_eq!(r.counters().wildcard_dump_deferred, 1500 - 3);
    // Requests in the hold-off are answered by one dump at its end.
    r.handle_tlv(L1, &wildcard, secs(150));
    assert!(drain(&mut r).is_empty());
    let updates_to = |out: Vec<(LinkId, Tlv)>, link| {
        out.iter()
            .filter(|(l, t)| *l == link && matches!(t, Tlv::Update(_)))
            .count()
    };
    r.handle_timeout(secs(180));
    assert_eq!(updates_to(drain(&mut r), L1), 51);
    // Another link's first request is answered at once (our /64: its routes all come from it).
    r.handle_tlv(L2, &wildcard, secs(180));
    assert_eq!(updates_to(drain(&mut r), L2), 1);
    r.check_invariants().unwrap();
}

fn update_with_interval(from: u8, seqno: u16, metric: u16, interval: u16) -> Tlv {
    let Tlv::Update(mut u) = update(from, seqno, metric) else {
        unreachable!()
    };
    u.interval = interval;
    Tlv::Update(u)
}

/// Updates for node 5's /64 in `out` sent on `link`.
fn updates_for_5(out: &[(LinkId, Tlv)], link: LinkId) -> Vec<Update> {
    let s5 = Prefix::V6(ident(5).1);
    out.iter()
        .filter_map(|(l, t)| match t {
            Tlv::Update(u) if *l == link && u.prefix == s5 => Some(*u),
            _ => None,
        })
        .collect()
}

/// Runs `r`'s timers up to `until`, collecting what it sends (peers answer Hellos).
fn run_until(r: &mut Router, until: Time, out: &mut Vec<(LinkId, Tlv)>) {
    while let Some(t) = r.poll_timeout().filter(|t| *t <= until) {
        r.handle_timeout(t);
        out.extend(answer_hellos(r, t));
        events(r);
    }
}

/// Issue 12, finding 6: an Update with interval 0 used to expire at once.
#[test]
fn an_interval_zero_route_is_held_for_the_minimum_hold_time() {
    let mut r = router();
    r.handle_link_up(L1, 10, Time::ZERO).unwrap();
    r.handle_link_up(L2, 10, Time::ZERO).unwrap();
    let s5 = ident(5).1;
    r.handle_tlv(L1, &update_with_interval(5, 1, 100, 0), Time::ZERO);
    r.handle_timeout(Time::ZERO);
    assert_eq!(r.selected_next_hop(&s5), Some(L1));
    r.handle_timeout(Time::from_millis(3499));
    assert_eq!(r.selected_next_hop(&s5), Some(L1));
    r.handle_timeout(Time::from_millis(3500));
    assert_eq!(r.selected_next_hop(&s5), None);
    assert_eq!(r.counters().update_short_hold, 1);
}

/// Issue 12, finding 6: 200 interval-0 Updates made every neighbour get 400 Updates (acquired,
/// lost, acquired, ...), and so on across the mesh.
#[test]
fn a_flapping_route_causes_a_bounded_number_of_updates() {
    let mut r = router();
    for l in [L1, L2, L3] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    let mut out = Vec::new();
    // Each Update comes just after the previous one's minimum hold ran out.
    for i in 0..200u16 {
        let t = Time::from_millis(4000 * u64::from(i));
        run_until(&mut r, t, &mut out);
        r.handle_tlv(L1, &update_with_interval(5, i + 1, 100, 0), t);
        out.extend(answer_hellos(&mut r, t));
        events(&mut r);
    }
    let flapping = updates_for_5(&out, L2).len();
    // Until well after damping ended.
    run_until(&mut r, secs(4 * 200 + 200), &mut out);
    let to_l2 = updates_for_5(&out, L2);
    assert!(to_l2.len() <= 16, "{} updates to L2", to_l2.len());
    assert_eq!(to_l2.len(), flapping + 1, "one catch-up after damping");
    assert_eq!(updates_for_5(&out, L3).len(), to_l2.len());
    // The catch-up tells the neighbours the truth: the route is gone.
    assert!(to_l2.last().unwrap().metric.is_infinite());
    assert_eq!(r.selected_next_hop(&ident(5).1), None);
    let c = r.counters();
    assert!(c.update_damped > 300, "{c:?}");
    assert_eq!(c.update_short_hold, 200);
    r.check_invariants().unwrap();
}

/// Issue 12, finding 6: a source whose metric keeps jumping is damped like one that comes and
/// goes; the last state gets out once it calms down.
#[test]
fn a_route_whose_metric_keeps_jumping_is_damped() {
    let mut r = router();
    for l in [L1, L2] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    let mut out = Vec::new();
    for i in 0..200u16 {
        let t = Time::from_millis(2000 * u64::from(i));
        run_until(&mut r, t, &mut out);
        let metric = if i % 2 == 0 { 100 } else { 3000 };
        r.handle_tlv(L1, &update(5, i + 1, metric), t);
        out.extend(answer_hellos(&mut r, t));
        events(&mut r);
    }
    run_until(&mut r, secs(2 * 200 + 200), &mut out);
    let to_l2 = updates_for_5(&out, L2);
    assert!(to_l2.len() <= 16, "{} updates to L2", to_l2.len());
    // The last state: seqno 200, metric 3000 plus the link's cost at that time.
    let last = to_l2.last().unwrap();
    assert_eq!(last.seqno, SeqNo(200));
    assert!(
        last.metric > Metric(3000) && last.metric < Metric(4000),
        "{last:?}"
    );
    assert_eq!(r.selected_next_hop(&ident(5).1), Some(L1));
    r.check_invariants().unwrap();
}

/// Issue 12, finding 6 (review): changes less than a second apart counted as one flap but each
/// still sent its triggered update, so a route flapping 100 times a second passed at line rate
/// until damped (601 Updates). Now a subnet's triggered updates go out at one a second after a
/// burst of four; the state held back meanwhile goes out when the rate allows.
#[test]
fn a_route_flapping_faster_than_once_a_second_sends_about_one_update_a_second() {
    let mut r = router();
    for l in [L1, L2] {
        r.handle_link_up(l, 10, Time::ZERO).unwrap();
    }
    let mut out = Vec::new();
    // 100 metric flips a second for 20 s.
    for i in 0..2000u16 {
        let t = Time::from_millis(10 * u64::from(i));
        run_until(&mut r, t, &mut out);
        let metric = if i % 2 == 0 { 100 } else { 3000 };
        r.handle_tlv(L1, &update(5, i + 1, metric), t);
        out.extend(answer_hellos(&mut r, t));
        events(&mut r);
    }
    let flapping = updates_for_5(&out, L2).len();
    assert!(flapping <= 25, "{flapping} updates to L2 while flapping");
    // Until well after damping ended: the last state got out.
    run_until(&mut r, secs(20 + 200), &mut out);
    let to_l2 = updates_for_5(&out, L2);
    assert!(to_l2.len() <= flapping + 1, "{} updates to L2", to_l2.len());
    let last = to_l2.last().unwrap();
    assert_eq!(last.seqno, SeqNo(2000));
    assert!(
        last.metric > Metric(3000) && last.metric < Metric(4000),
        "{last:?}"
    );
    assert_eq!(r.selected_next_hop(&ident(5).1), Some(L1));
    assert!(r.counters().update_damped > 1900, "{:?}", r.counters());
    r.check_invariants().unwrap();
}
