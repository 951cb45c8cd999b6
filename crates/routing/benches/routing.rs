//! Control-plane throughput of one core, and wall time of the 1000-node simulation.
//!
//! `cargo bench -p hypha-routing --bench routing` runs the criterion group (a realistic mix of
//! Hello, IHU, Update and RouteRequest TLVs against a core holding 1000 routes over 8 links) and
//! then times one run of the 1000-node simulation (set `HYPHA_BENCH_SKIP_SIM=1` to skip it).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use crypto::address_from_public_key;
use hypha_routing::sim::Sim;
use hypha_routing::{Config, LinkId, Router, Time};
use wire::babel::{Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, Subnet, Tlv, Update};

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_seconds;

const LINKS: u64 = 8;
const ROUTES: usize = 1000;

fn key(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    k
}

struct Fixture {
    router: Router,
    now: Time,
    mix: Vec<(LinkId, Tlv)>,
}

fn fixture() -> Fixture {
    let own = Subnet::slash64(address_from_public_key(&key(usize::MAX - 1)));
    let mut r = Router::new(
        Config::new(RouterId::new(key(usize::MAX - 1), [1; 6]), own),
        Time::ZERO,
    );
    for l in 0..LINKS {
        r.handle_link_up(LinkId(l), 10, Time::ZERO).unwrap();
    }
    let routes: Vec<(Subnet, RouterId)> = (0..ROUTES)
        .map(|i| {
            (
                Subnet::slash64(address_from_public_key(&key(i))),
                RouterId::new(key(i), [2; 6]),
            )
        })
        .collect();
    let update = |i: usize, metric: u16| {
        let (s, rid) = routes[i % ROUTES];
        Tlv::Update(Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(1),
            metric: Metric(metric),
            prefix: Prefix::V6(s),
            router_id: rid,
        })
    };
    // Every route from two neighbours, one clearly better.
    for i in 0..ROUTES {
        let l = (i as u64) % LINKS;
        r.handle_tlv(LinkId(l), &update(i, 100), Time::ZERO);
        r.handle_tlv(LinkId((l + 1) % LINKS), &update(i, 3000), Time::ZERO);
    }
    while r.poll_transmit().is_some() {}
    while r.poll_event().is_some() {}
    // The mix, per 10 TLVs: 2 Hello, 2 IHU, 5 Update (refreshes with small metric changes,
    // from the selected and the fallback neighbour), 1 RouteRequest (known or unknown subnet).
    let mut mix = Vec::new();
    for n in 0..20_000usize {
        let link = LinkId((n as u64 * 7) % LINKS);
        let i = (n * 13) % ROUTES;
        let l = (i as u64) % LINKS;
        let t = match n % 10 {
            0 | 5 => (
                link,
                Tlv::Hello(Hello {
                    flags: 0x8000,
                    seqno: SeqNo(n as u16),
                    interval: 2000,
                }),
            ),
            1 | 6 => (
                link,
                Tlv::Ihu(Ihu {
                    rx_cost: Metric(50),
                    interval: 6000,
                    address: None,
                }),
            ),
            2 | 4 | 7 => (LinkId(l), update(i, 100 + (n % 5) as u16)),
            3 | 8 => (LinkId((l + 1) % LINKS), update(i, 3000)),
            _ => {
                let prefix = if n % 20 == 9 {
                    Prefix::V6(routes[i].0)
                } else {
                    Prefix::V6(Subnet::slash64(address_from_public_key(&key(ROUTES + n))))
                };
                (
                    link,
                    Tlv::RouteRequest(RouteRequest {
                        generation: 0,
                        prefix,
                    }),
                )
            }
        };
        mix.push(t);
    }
    Fixture {
        router: r,
        now: Time::ZERO,
        mix,
    }
}

fn tlv_mix(c: &mut Criterion) {
    let mut f = fixture();
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(f.mix.len() as u64));
    g.bench_function("tlv_mix_1000_routes_8_links", |b| {
        b.iter(|| {
            // Time moves on by 1 ms per batch so caches age as they would.
            f.now = f.now + Duration::from_millis(1);
            for (l, t) in &f.mix {
                f.router.handle_tlv(*l, t, f.now);
            }
            f.router.handle_timeout(f.now);
            while let Some(x) = f.router.poll_transmit() {
                black_box(x);
            }
            while let Some(e) = f.router.poll_event() {
                black_box(e);
            }
        })
    });
    g.finish();
    let c = f.router.counters();
    eprintln!(
        "after the bench: {} routes selected, {} updates, {} route requests, {} transmits dropped",
        f.router.selected_routes(f.now).len(),
        c.update_rx,
        c.route_request_rx,
        c.transmit_dropped
    );
}

fn sim_1000() {
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut sim = Sim::random_mesh(5, 1000, 3.5);
    // Routing and simulation cost only; the scenarios and simreport run with loop checks.
    sim.check_loops = false;
    sim.run_for(Duration::from_secs(60));
    let wall = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let reachable = (1..1000)
        .step_by(37)
        .filter(|&b| sim.path(0, b).is_ok())
        .count();
    println!(
        "sim_1000: 1000 nodes, {} links, 60 s virtual in {:.2} s wall, {:.2} s CPU; {} TLVs delivered \
         ({:.0}/CPU-s); {} of {} sampled destinations reachable from node 0; {} loops",
        (0..1000).map(|n| sim.node_links(n).len()).sum::<usize>() / 2,
        wall.as_secs_f64(),
        cpu,
        sim.stats.tlvs_delivered,
        sim.stats.tlvs_delivered as f64 / cpu,
        reachable,
        (1..1000).step_by(37).count(),
        sim.loops().len()
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    tlv_mix(&mut c);
    c.final_summary();
    if std::env::var_os("HYPHA_BENCH_SKIP_SIM").is_none()
        && !std::env::args().any(|a| a == "--list")
    {
        sim_1000();
    }
}
