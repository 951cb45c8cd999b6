//! Recorded conformance scenarios for the corner cases of the routing protocol
//! (docs/protocol.md §5): each step is an input at a time, followed by the exact TLVs sent (in
//! order) and events raised.

use std::net::Ipv6Addr;

use crypto::address_from_public_key;
use hypha_routing::{Config, Event, LinkId, Router, Time};
use wire::babel::{
    Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, SeqNoRequest, Subnet, Tlv, Update,
};

/// Node 0 is the router under test; other numbers are remote nodes.
fn rid(n: u8) -> RouterId {
    RouterId::new([n; 32], [n; 6])
}
fn subnet(n: u8) -> Subnet {
    Subnet::slash64(address_from_public_key(&[n; 32]))
}
fn addr(n: u8) -> Ipv6Addr {
    address_from_public_key(&[n; 32])
}

enum In {
    Up(u64),
    Down(u64),
    Rx(u64, Tlv),
    Timeout,
    Request(Ipv6Addr),
}

#[derive(Debug, PartialEq)]
enum Out {
    Tx(u64, Tlv),
    Ev(Event),
}

struct Step {
    at_ms: u64,
    input: In,
    expect: Vec<Out>,
}

fn step(at_ms: u64, input: In, expect: Vec<Out>) -> Step {
    Step {
        at_ms,
        input,
        expect,
    }
}

fn tx(link: u64, t: Tlv) -> Out {
    Out::Tx(link, t)
}

fn update(origin: u8, via: RouterId, seqno: u16, metric: u16, interval: u16) -> Tlv {
    Tlv::Update(Update {
        flags: 0,
        interval,
        seqno: SeqNo(seqno),
        metric: Metric(metric),
        prefix: Prefix::V6(subnet(origin)),
        router_id: via,
    })
}
/// An update for `origin`'s /64 under its own id, interval 300 s.
fn upd(origin: u8, seqno: u16, metric: u16) -> Tlv {
    update(origin, rid(origin), seqno, metric, 30000)
}
/// A retraction of `origin`'s /64 sent by `by` with `by`'s seqno.
fn retraction(origin: u8, by: u8, seqno: u16) -> Tlv {
    update(origin, rid(by), seqno, 0xFFFF, 30000)
}
fn own_update(seqno: u16) -> Tlv {
    upd(0, seqno, 0)
}
fn snr(origin: u8, seqno: u16, hop: u8) -> Tlv {
    Tlv::SeqNoRequest(SeqNoRequest {
        seqno: SeqNo(seqno),
        hop_count: hop,
        router_id: rid(origin),
        prefix: Prefix::V6(subnet(origin)),
    })
}
fn rr(generation: u8, prefix: Prefix) -> Tlv {
    Tlv::RouteRequest(RouteRequest { generation, prefix })
}
fn rr_for(generation: u8, origin: u8) -> Tlv {
    rr(generation, Prefix::V6(subnet(origin)))
}
fn hello(seqno: u16) -> Tlv {
    Tlv::Hello(Hello {
        flags: 0x8000,
        seqno: SeqNo(seqno),
        interval: 2000,
    })
}
fn ihu(cost: u16) -> Tlv {
    Tlv::Ihu(Ihu {
        rx_cost: Metric(cost),
        interval: 6000,
        address: None,
    })
}

/// Runs a scenario on a fresh router and returns it for final checks.
fn run(name: &str, steps: Vec<Step>) -> Router {
    let mut r = Router::new(Config::new(rid(0), subnet(0)), Time::ZERO);
    for (i, s) in steps.into_iter().enumerate() {
        let now = Time::from_millis(s.at_ms);
        match s.input {
            In::Up(l) => r.handle_link_up(LinkId(l), 10, now).unwrap(),
            In::Down(l) => r.handle_link_down(LinkId(l), now),
            In::Rx(l, t) => r.handle_tlv(LinkId(l), &t, now),
            In::Timeout => r.handle_timeout(now),
            In::Request(a) => r.request_route(a, now),
        }
        let mut got: Vec<Out> = std::iter::from_fn(|| r.poll_transmit())
            .map(|(l, t)| Out::Tx(l.0, t))
            .collect();
        got.extend(std::iter::from_fn(|| r.poll_event()).map(Out::Ev));
        assert_eq!(got, s.expect, "scenario {name}, step {i} at {} ms", s.at_ms);
        r.check_invariants().unwrap();
    }
    r
}

/// Links 1 and 2 up at t=0 (each gets our /64).
fn two_links() -> Vec<Step> {
    vec![
        step(0, In::Up(1), vec![tx(1, own_update(0))]),
        step(0, In::Up(2), vec![tx(2, own_update(0))]),
    ]
}

/// Links 1, 2 and 3 up at t=0.
fn three_links() -> Vec<Step> {
    let mut s = two_links();
    s.push(step(0, In::Up(3), vec![tx(3, own_update(0))]));
    s
}

#[test]
fn unfeasible_update_gets_a_seqno_request() {
    let mut s = two_links();
    s.extend([
        // Route to node 5 via link 1: advertised on with our link cost (1000 + 10) added,
        // and recorded as our feasibility distance (seqno 1, metric 1110).
        step(
            10,
            In::Rx(1, upd(5, 1, 100)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Same source and seqno, metric not below the distance: not applied, ask for seqno 2.
        step(20, In::Rx(1, upd(5, 1, 1200)), vec![tx(1, snr(5, 2, 64))]),
        // Again within 60 s: the seqno cache suppresses a second request.
        step(30, In::Rx(1, upd(5, 1, 1300)), vec![]),
        // A new neighbour offering an unfeasible route while one is selected: ignored.
        step(40, In::Rx(2, upd(5, 1, 5000)), vec![]),
        // A newer seqno is feasible whatever the metric.
        step(50, In::Rx(2, upd(5, 2, 5000)), vec![]),
    ]);
    let r = run("unfeasible", s);
    assert_eq!(r.counters().update_unfeasible, 3);
    assert_eq!(r.fallback_routes(Time::from_millis(50)).len(), 1);
}

#[test]
fn unknown_subnet_unfeasible_update_asks_that_peer() {
    let mut s = two_links();
    s.extend([
        step(0, In::Timeout, vec![tx(1, hello(0)), tx(2, hello(0))]),
        step(
            0,
            In::Rx(1, upd(5, 1, 100)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Link 1 closes: the route is lost, a retraction with our id goes out.
        step(
            1000,
            In::Down(1),
            vec![
                tx(2, retraction(5, 0, 0)),
                Out::Ev(Event::RouteLost(subnet(5))),
            ],
        ),
        // 7 s later the held entry is gone; the distance (1, 1110) remains.
        step(7000, In::Timeout, vec![]),
        step(8000, In::Rx(2, upd(5, 1, 2000)), vec![tx(2, snr(5, 2, 64))]),
    ]);
    run("unknown-unfeasible", s);
}

#[test]
fn hysteresis_of_ten_and_big_metric_change() {
    let mut s = two_links();
    s.extend([
        step(
            0,
            In::Rx(1, upd(5, 1, 100)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // 1105 is not below 1110 − 10: keep link 1, nothing sent.
        step(10, In::Rx(2, upd(5, 2, 95)), vec![]),
        // 1100 is still not below 1100.
        step(20, In::Rx(2, upd(5, 2, 90)), vec![]),
        // 1099 is: switch to link 2; the metric moved by 11 (> 10), so tell link 1.
        step(30, In::Rx(2, upd(5, 2, 89)), vec![tx(1, upd(5, 2, 1099))]),
        // Small change on the selected route (≤ 10): no triggered update.
        step(40, In::Rx(2, upd(5, 2, 80)), vec![]),
        // Plain seqno increase: no triggered update either.
        step(50, In::Rx(2, upd(5, 3, 80)), vec![]),
    ]);
    let r = run("hysteresis", s);
    assert_eq!(r.selected_next_hop(&subnet(5)), Some(LinkId(2)));
}

#[test]
fn retractions_carry_the_retractors_id_and_pass_the_owner_filter() {
    let mut s = two_links();
    s.extend([
        // A valid request for our own id bumps our seqno to 1 (announced to all links).
        step(
            0,
            In::Rx(1, snr(0, 1, 64)),
            vec![tx(1, own_update(1)), tx(2, own_update(1))],
        ),
        step(
            10,
            In::Rx(1, upd(5, 7, 100)),
            vec![
                tx(2, upd(5, 7, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Neighbour 9 retracts 5's subnet under its own id (whose address is not in that
        // subnet): accepted. We have no other route, so we retract with OUR id and seqno (1)
        // and ask link 1 (the only advertiser) for seqno 8.
        step(
            20,
            In::Rx(1, retraction(5, 9, 3)),
            vec![
                tx(1, retraction(5, 0, 1)),
                tx(2, retraction(5, 0, 1)),
                tx(1, snr(5, 8, 64)),
                Out::Ev(Event::RouteLost(subnet(5))),
            ],
        ),
        // A second retraction for the already-retracted entry is ignored.
        step(30, In::Rx(1, retraction(5, 9, 3)), vec![]),
        // A retraction for a subnet we never had is ignored.
        step(40, In::Rx(2, retraction(6, 9, 3)), vec![]),
        // A finite update under a foreign id is filtered (owner check applies).
        step(50, In::Rx(2, update(5, rid(9), 8, 10, 30000)), vec![]),
    ]);
    let r = run("retraction", s);
    assert_eq!(r.counters().update_retraction_ignored, 2);
    assert_eq!(r.counters().update_bad_owner, 1);
    // The held entry carries the retractor's id.
    let held = r.fallback_routes(Time::from_millis(50));
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].router_id, held[0].metric),
        (rid(9), Metric::INFINITE)
    );
}

#[test]
fn route_request_generations_and_replies() {
    let mut s = three_links();
    s.extend([
        // Unknown subnet, generation 14: forwarded as 15 to every other link.
        step(
            0,
            In::Rx(1, rr_for(14, 5)),
            vec![tx(2, rr_for(15, 5)), tx(3, rr_for(15, 5))],
        ),
        // Generation 15: 15 + 1 ≥ 16, dropped.
        step(0, In::Rx(1, rr_for(15, 6)), vec![]),
        // Being queried already: silent.
        step(0, In::Rx(2, rr_for(0, 5)), vec![]),
        // Our own /64, or a /128 inside it: answered with our update.
        step(0, In::Rx(2, rr_for(0, 0)), vec![tx(2, own_update(0))]),
        step(
            0,
            In::Rx(2, rr(0, Prefix::V6(Subnet::new(addr(0), 128).unwrap()))),
            vec![tx(2, own_update(0))],
        ),
        // Short, IPv4 and link-local prefixes: ignored, never forwarded or marked queried.
        step(
            0,
            In::Rx(2, rr(0, Prefix::V6(Subnet::new(addr(7), 48).unwrap()))),
            vec![],
        ),
        step(
            0,
            In::Rx(
                2,
                rr(
                    0,
                    Prefix::V4 {
                        addr: [10, 0, 0, 0].into(),
                        plen: 8,
                    },
                ),
            ),
            vec![],
        ),
        step(
            0,
            In::Rx(2, rr(0, Prefix::LinkLocal { iid: [1; 8] })),
            vec![],
        ),
        // The answer arrives from link 2: acquired, announced to links 1 and 3.
        step(
            100,
            In::Rx(2, upd(5, 4, 50)),
            vec![
                tx(1, upd(5, 4, 1060)),
                tx(3, upd(5, 4, 1060)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // A request for a selected route is answered, except to its next hop.
        step(200, In::Rx(3, rr_for(3, 5)), vec![tx(3, upd(5, 4, 1060))]),
        step(200, In::Rx(2, rr_for(3, 5)), vec![]),
        // Wildcard: our /64 plus every selected route not via the requester.
        step(
            300,
            In::Rx(1, rr(0, Prefix::Wildcard)),
            vec![tx(1, own_update(0)), tx(1, upd(5, 4, 1060))],
        ),
        step(
            300,
            In::Rx(2, rr(0, Prefix::Wildcard)),
            vec![tx(2, own_update(0))],
        ),
    ]);
    let r = run("rr", s);
    assert_eq!(r.counters().route_request_generation_limit, 1);
    assert_eq!(r.counters().route_request_bad_prefix, 3);
}

#[test]
fn route_request_dedup_cache_and_query_timeout() {
    // Three links up, the first Hellos out, then a RouteRequest for node 5 from link 1 relayed
    // to the other two.
    let queried_from_link_1 = || {
        let mut s = three_links();
        s.extend([
            step(
                0,
                In::Timeout,
                vec![tx(1, hello(0)), tx(2, hello(0)), tx(3, hello(0))],
            ),
            step(
                0,
                In::Rx(1, rr_for(0, 5)),
                vec![tx(2, rr_for(1, 5)), tx(3, rr_for(1, 5))],
            ),
        ]);
        s
    };
    let mut s = queried_from_link_1();
    s.extend([
        step(14_999, In::Timeout, vec![]),
        // Nobody answers: the query times out after 15 s.
        step(
            15_000,
            In::Timeout,
            vec![Out::Ev(Event::QueryTimedOut(subnet(5)))],
        ),
    ]);
    run("rr-dedup-1", s);

    // Dedup proper: the query ended (answered, then lost) but the cache still remembers.
    let mut s = queried_from_link_1();
    s.extend([
        step(
            1000,
            In::Rx(2, upd(5, 1, 10)),
            vec![
                tx(1, upd(5, 1, 1020)),
                tx(3, upd(5, 1, 1020)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        step(
            2000,
            In::Down(2),
            vec![
                tx(1, retraction(5, 0, 0)),
                tx(3, retraction(5, 0, 0)),
                Out::Ev(Event::RouteLost(subnet(5))),
            ],
        ),
        // Held entry gone after 6 s.
        step(8000, In::Timeout, vec![]),
        // Generation 2 ≥ the 1 sent to link 3 within 15 s: link 3 skipped; link 1 never got it.
        step(9000, In::Rx(2, rr_for(1, 5)), vec![]), // link 2 is down: unknown link, ignored
        step(9000, In::Up(4), vec![tx(4, own_update(0))]),
        step(9000, In::Rx(4, rr_for(1, 5)), vec![tx(1, rr_for(2, 5))]),
    ]);
    let r = run("rr-dedup-2", s);
    assert_eq!(r.counters().route_request_dedup, 1);
    assert_eq!(r.counters().unknown_link, 1);
}

#[test]
fn seqno_bump_rate_limit_and_stale_request_quirk() {
    let mut s = two_links();
    s.extend([
        step(
            0,
            In::Rx(1, snr(0, 1, 64)),
            vec![tx(1, own_update(1)), tx(2, own_update(1))],
        ),
        // Within 4 s of the last bump: refused, and nothing is sent back.
        step(3999, In::Rx(2, snr(0, 2, 64)), vec![]),
        step(
            4000,
            In::Rx(2, snr(0, 2, 64)),
            vec![tx(1, own_update(2)), tx(2, own_update(2))],
        ),
        // S ≤ our seqno: no reply at all (the protocol's quirk), however long since the bump.
        step(20_000, In::Rx(1, snr(0, 2, 64)), vec![]),
        step(20_000, In::Rx(1, snr(0, 1, 64)), vec![]),
        // A request for our id but another prefix: nothing.
        step(
            20_000,
            In::Rx(
                1,
                Tlv::SeqNoRequest(SeqNoRequest {
                    seqno: SeqNo(9),
                    hop_count: 64,
                    router_id: rid(0),
                    prefix: Prefix::V6(subnet(3)),
                }),
            ),
            vec![],
        ),
        // Hop count 0 is dropped.
        step(20_000, In::Rx(1, snr(0, 9, 0)), vec![]),
    ]);
    let r = run("bump", s);
    assert_eq!(r.seqno(), SeqNo(2));
    assert_eq!(r.counters().seqno_bump_rate_limited, 1);
    assert_eq!(r.counters().seqno_request_stale_own, 3);
    assert_eq!(r.counters().seqno_request_hop_zero, 1);
}

#[test]
fn seqno_request_forwarding_and_answer_relay() {
    let mut s = three_links();
    s.extend([
        step(
            0,
            In::Rx(2, upd(5, 1, 100)),
            vec![
                tx(1, upd(5, 1, 1110)),
                tx(3, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Our route has seqno 1 ≥ requested 1: answer directly.
        step(10, In::Rx(1, snr(5, 1, 64)), vec![tx(1, upd(5, 1, 1110))]),
        // Requested seqno 2 is newer: forward to the one advertiser, hop count − 1.
        step(20, In::Rx(1, snr(5, 2, 10)), vec![tx(2, snr(5, 2, 9))]),
        // The same request again within 60 s: dropped.
        step(30, In::Rx(3, snr(5, 2, 10)), vec![]),
        // Hop count 1 cannot be forwarded.
        step(40, In::Rx(3, snr(5, 3, 1)), vec![]),
        // The new seqno arrives: no triggered update (plain seqno change) but the requester
        // (link 1) gets it.
        step(50, In::Rx(2, upd(5, 2, 100)), vec![tx(1, upd(5, 2, 1110))]),
    ]);
    run("snr-forward", s);
}

#[test]
fn exactly_one_ihu_per_hello_and_none_unsolicited() {
    let s = vec![
        step(0, In::Up(1), vec![tx(1, own_update(0))]),
        step(0, In::Timeout, vec![tx(1, hello(0))]),
        step(5, In::Rx(1, hello(0)), vec![tx(1, ihu(1010))]),
        step(6, In::Rx(1, hello(1)), vec![tx(1, ihu(1010))]),
        // An IHU is never answered; it sets the cost: (9·1000 + 7)/10 + 10 = 910.
        step(7, In::Rx(1, ihu(1)), vec![]),
        step(8, In::Rx(1, hello(2)), vec![tx(1, ihu(910))]),
        // Timers send Hellos every 20 s and never an IHU.
        step(19_999, In::Timeout, vec![]),
        step(20_000, In::Timeout, vec![tx(1, hello(1))]),
        step(40_000, In::Timeout, vec![tx(1, hello(2))]),
    ];
    run("ihu", s);
}

#[test]
fn peer_dead_after_43_s_without_ihu() {
    let mut s = two_links();
    s.extend([
        step(0, In::Timeout, vec![tx(1, hello(0)), tx(2, hello(0))]),
        // Round trip 1000 ms: cost (9·1000 + 1000)/10 + 10 = 1010.
        step(1000, In::Rx(1, ihu(1)), vec![]),
        step(
            1000,
            In::Rx(1, upd(5, 1, 100)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        step(20_000, In::Timeout, vec![tx(1, hello(1)), tx(2, hello(1))]),
        step(40_000, In::Timeout, vec![tx(1, hello(2)), tx(2, hello(2))]),
        step(40_100, In::Rx(2, ihu(1)), vec![]),
        // Checks run every 10 s: at 40 s link 1 was silent 39 s (alive); link 2 answered.
        // At 44 s nothing is checked yet.
        step(44_000, In::Timeout, vec![]),
        // At 50 s link 1 has been silent 49 s > 43 s: dead, its route lost.
        step(
            50_000,
            In::Timeout,
            vec![
                tx(2, retraction(5, 0, 0)),
                Out::Ev(Event::LinkDead(LinkId(1))),
                Out::Ev(Event::RouteLost(subnet(5))),
            ],
        ),
    ]);
    let r = run("dead", s);
    assert_eq!(r.links(Time::from_secs(50)).len(), 1);
}

#[test]
fn update_filters() {
    let mut s = two_links();
    let foreign = |prefix: Subnet| {
        Tlv::Update(Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(1),
            metric: Metric(10),
            prefix: Prefix::V6(prefix),
            router_id: rid(5),
        })
    };
    s.extend([
        // Outside 400::/7.
        step(
            0,
            In::Rx(1, foreign("2001:db8::/64".parse().unwrap())),
            vec![],
        ),
        // Shorter than /64, though it contains node 5's address.
        step(
            0,
            In::Rx(1, foreign(Subnet::new(addr(5), 63).unwrap())),
            vec![],
        ),
        // A /64 that does not contain node 5's address.
        step(0, In::Rx(1, foreign(subnet(6))), vec![]),
        // IPv4 and wildcard prefixes.
        step(
            0,
            In::Rx(
                1,
                Tlv::Update(Update {
                    flags: 0,
                    interval: 30000,
                    seqno: SeqNo(1),
                    metric: Metric(10),
                    prefix: Prefix::V4 {
                        addr: [10, 0, 0, 0].into(),
                        plen: 8,
                    },
                    router_id: rid(5),
                }),
            ),
            vec![],
        ),
        // Our own /64 echoed back.
        step(0, In::Rx(1, own_update(3)), vec![]),
        // A /96 inside node 5's /64 that contains its address is fine.
        step(
            0,
            In::Rx(
                1,
                Tlv::Update(Update {
                    flags: 0,
                    interval: 30000,
                    seqno: SeqNo(1),
                    metric: Metric(10),
                    prefix: Prefix::V6(Subnet::new(addr(5), 96).unwrap()),
                    router_id: rid(5),
                }),
            ),
            vec![
                tx(
                    2,
                    Tlv::Update(Update {
                        flags: 0,
                        interval: 30000,
                        seqno: SeqNo(1),
                        metric: Metric(1020),
                        prefix: Prefix::V6(Subnet::new(addr(5), 96).unwrap()),
                        router_id: rid(5),
                    }),
                ),
                Out::Ev(Event::RouteAcquired(Subnet::new(addr(5), 96).unwrap())),
            ],
        ),
    ]);
    let r = run("filters", s);
    let c = r.counters();
    assert_eq!(
        (c.update_bad_prefix, c.update_bad_owner, c.update_own_subnet),
        (3, 1, 1)
    );
}

#[test]
fn triggered_updates_with_split_horizon() {
    let mut s = three_links();
    s.extend([
        // Newly acquired: everyone but the next hop.
        step(
            0,
            In::Rx(1, upd(5, 1, 100)),
            vec![
                tx(2, upd(5, 1, 1110)),
                tx(3, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Metric change of 5: silent.
        step(10, In::Rx(1, upd(5, 1, 105)), vec![]),
        // Change of 50 (> 10): sent, still not to link 1.
        step(
            20,
            In::Rx(1, upd(5, 1, 150)),
            vec![tx(2, upd(5, 1, 1160)), tx(3, upd(5, 1, 1160))],
        ),
        // The source changes (node 5 restarted: new router-id): sent.
        step(
            30,
            In::Rx(
                1,
                Tlv::Update(Update {
                    flags: 0,
                    interval: 30000,
                    seqno: SeqNo(0),
                    metric: Metric(150),
                    prefix: Prefix::V6(subnet(5)),
                    router_id: RouterId::new([5; 32], [42; 6]),
                }),
            ),
            vec![
                tx(
                    2,
                    update(5, RouterId::new([5; 32], [42; 6]), 0, 1160, 30000),
                ),
                tx(
                    3,
                    update(5, RouterId::new([5; 32], [42; 6]), 0, 1160, 30000),
                ),
            ],
        ),
    ]);
    run("split-horizon", s);
}

#[test]
fn expiry_at_three_and_a_half_intervals_and_retracted_hold() {
    let mut s = two_links();
    s.extend([
        step(0, In::Timeout, vec![tx(1, hello(0)), tx(2, hello(0))]),
        // Interval 200 cs: held 7 s.
        step(
            0,
            In::Rx(1, update(5, rid(5), 1, 100, 200)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // A fallback via link 2 with interval 100 cs: held 3.5 s, then simply removed.
        step(0, In::Rx(2, update(5, rid(5), 2, 2000, 100)), vec![]),
        step(3_499, In::Timeout, vec![]),
        step(3_500, In::Timeout, vec![]),
        step(6_999, In::Timeout, vec![]),
        // The selected route expires: metric ∞ for 6 s, retraction, request to the advertiser.
        step(
            7_000,
            In::Timeout,
            vec![
                tx(1, retraction(5, 0, 0)),
                tx(2, retraction(5, 0, 0)),
                tx(1, snr(5, 2, 64)),
                Out::Ev(Event::RouteLost(subnet(5))),
            ],
        ),
        step(12_999, In::Timeout, vec![]),
        step(13_000, In::Timeout, vec![]),
        // Interval 0 (mycelium's "not repeating" 6 ms, which it sends only in retractions) in a
        // finite update: held for the minimum hold time (3.5 s by default), not expired at once.
        step(
            14_000,
            In::Rx(1, update(6, rid(6), 1, 100, 0)),
            vec![
                tx(2, upd(6, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(6))),
            ],
        ),
        step(14_000, In::Timeout, vec![]),
        step(17_499, In::Timeout, vec![]),
        step(
            17_500,
            In::Timeout,
            vec![
                tx(1, retraction(6, 0, 0)),
                tx(2, retraction(6, 0, 0)),
                tx(1, snr(6, 2, 64)),
                Out::Ev(Event::RouteLost(subnet(6))),
            ],
        ),
    ]);
    let r = run("expiry", s);
    assert_eq!(r.counters().update_short_hold, 1);
    let held = r.fallback_routes(Time::from_millis(17_500));
    assert_eq!(held.len(), 1, "only 6's retracted entry is held: {held:?}");
    assert_eq!(held[0].subnet, subnet(6));
}

#[test]
fn request_route_queries_then_refreshes_near_expiry() {
    let mut s = two_links();
    s.extend([
        step(
            0,
            In::Request(addr(5)),
            vec![tx(1, rr_for(0, 5)), tx(2, rr_for(0, 5))],
        ),
        // Already being queried: nothing more.
        step(1, In::Request(addr(5)), vec![]),
        step(
            100,
            In::Rx(1, update(5, rid(5), 1, 100, 1000)),
            vec![
                tx(2, upd(5, 1, 1110)),
                Out::Ev(Event::RouteAcquired(subnet(5))),
            ],
        ),
        // Held 35 s: 25 s later it is within 15 s of expiry and in use: refresh (once).
        step(20_000, In::Request(addr(5)), vec![]),
        step(
            25_100,
            In::Request(addr(5)),
            vec![tx(1, rr_for(0, 5)), tx(2, rr_for(0, 5))],
        ),
        step(25_200, In::Request(addr(5)), vec![]),
        // Our own /64 and addresses outside the overlay are never requested.
        step(25_300, In::Request(addr(0)), vec![]),
        step(25_300, In::Request("2001:db8::1".parse().unwrap()), vec![]),
    ]);
    run("request", s);
}
