//! The forwarding table: lookups on a 50,000-route table, and the cost of publishing it while a
//! neighbour announces 50,000 routes.
//!
//! `cargo bench -p hypha-routing --bench fib` runs
//! * the criterion group `fib`: `lookup` and `source` on a 50,000-route table (half the
//!   addresses inside a route, half unknown), on the [`ForwardingTable`] and on `FlatTable`, a
//!   copy of the single-map table it replaced (same lookup code), so both are measured in one run;
//! * "absorb": one core takes 50,000 Updates from one link (each a new /64, as when a peer
//!   connects with a large network's table, or an attacker), publishing the table after every
//!   change (what the node does) and after every 1,000 changes, once incrementally
//!   ([`Router::forwarding_table`]) and once by rebuilding the whole table at each publish (what
//!   the core did before; [`Router::forwarding_table_rebuilt`]). Routes/s are printed overall and
//!   for the last tenth, where the table is largest. `HYPHA_BENCH_FIB_ROUTES` changes the count;
//!   `HYPHA_BENCH_FIB_SKIP_REBUILD=1` skips the slow rebuild-after-every-change run.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use crypto::address_from_public_key;
use hypha_routing::{Config, ForwardingTable, LinkId, Lookup, NextHop, Router, Time};
use rustc_hash::FxHashMap;
use wire::babel::{Metric, Prefix, RouterId, SeqNo, Subnet, Tlv, Update};

const TABLE: usize = 50_000;

fn key(i: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    k
}

/// A deterministic address stream (splitmix64), no RNG crate needed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn own_subnet() -> Subnet {
    Subnet::slash64(address_from_public_key(&key(usize::MAX - 1)))
}

/// The old slot: the selected route, and the key owner.
type FlatSlot = (Option<NextHop>, Option<RouterId>);

/// The single-map table the sharded one replaced, lookups as they were.
struct FlatTable {
    own_subnet: Subnet,
    plens: Vec<u8>,
    map: FxHashMap<Subnet, FlatSlot>,
}

impl FlatTable {
    fn new(own_subnet: Subnet, routes: &[(Subnet, NextHop)]) -> FlatTable {
        let mut plens: Vec<u8> = routes.iter().map(|(s, _)| s.prefix_len()).collect();
        plens.sort_unstable_by(|a, b| b.cmp(a));
        plens.dedup();
        let map = routes
            .iter()
            .map(|&(s, nh)| (s, (Some(nh), Some(nh.router_id))))
            .collect();
        FlatTable {
            own_subnet,
            plens,
            map,
        }
    }
    fn longest_entry(&self, a: Ipv6Addr) -> Option<(Subnet, &FlatSlot)> {
        self.plens.iter().find_map(|&p| {
            let s = Subnet::new(a, p)?;
            self.map.get(&s).map(|slot| (s, slot))
        })
    }
    fn lookup(&self, dst: Ipv6Addr) -> Lookup {
        if self.own_subnet.contains_addr(dst) {
            return Lookup::Local;
        }
        match self.longest_entry(dst) {
            Some((_, (Some(n), _))) => Lookup::Route(*n),
            Some(_) => Lookup::NoRoute,
            None => Lookup::Unknown,
        }
    }
    fn source(&self, src: Ipv6Addr) -> Option<(Subnet, [u8; 32])> {
        let (s, slot) = self.longest_entry(src)?;
        Some((s, slot.1?.public_key()))
    }
}

fn lookups(c: &mut Criterion) {
    let routes: Vec<(Subnet, NextHop)> = (0..TABLE)
        .map(|i| {
            let s = Subnet::slash64(address_from_public_key(&key(i)));
            let nh = NextHop {
                link: LinkId(i as u64 % 8),
                router_id: RouterId::new(key(i), [2; 6]),
            };
            (s, nh)
        })
        .collect();
    let fib = ForwardingTable::from_routes(own_subnet(), &routes);
    let flat = FlatTable::new(own_subnet(), &routes);
    // 4096 addresses: even ones inside a route (random host bits), odd ones unknown.
    let addrs: Vec<Ipv6Addr> = (0..4096u64)
        .map(|n| {
            let host = u128::from(mix(n));
            if n % 2 == 0 {
                let s = routes[(mix(n + 1) % TABLE as u64) as usize].0;
                Ipv6Addr::from(u128::from(s.addr()) | host)
            } else {
                Ipv6Addr::from((0x04u128 << 120) | (u128::from(mix(n + 7)) << 64) | host)
            }
        })
        .collect();
    lookups_ab(&fib, &flat, &addrs);
    let mut g = c.benchmark_group("fib");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("lookup_50k/sharded", |b| {
        b.iter(|| {
            for a in &addrs {
                black_box(fib.lookup(*a));
            }
        })
    });
    g.bench_function("lookup_50k/flat", |b| {
        b.iter(|| {
            for a in &addrs {
                black_box(flat.lookup(*a));
            }
        })
    });
    g.bench_function("source_50k/sharded", |b| {
        b.iter(|| {
            for a in &addrs {
                black_box(fib.source(*a));
            }
        })
    });
    g.bench_function("source_50k/flat", |b| {
        b.iter(|| {
            for a in &addrs {
                black_box(flat.source(*a));
            }
        })
    });
    g.finish();
}

/// The two tables measured in alternation, best of 200 rounds each (the machine is shared:
/// the best round is the one nothing else got in the way of), nanoseconds per lookup.
fn lookups_ab(fib: &ForwardingTable, flat: &FlatTable, addrs: &[Ipv6Addr]) {
    let time = |f: &dyn Fn(Ipv6Addr)| {
        let start = Instant::now();
        for _ in 0..16 {
            for a in addrs {
                f(*a);
            }
        }
        start.elapsed().as_nanos() as f64 / (16 * addrs.len()) as f64
    };
    let mut best = [f64::MAX; 4];
    for _ in 0..200 {
        let t = [
            time(&|a| {
                black_box(fib.lookup(a));
            }),
            time(&|a| {
                black_box(flat.lookup(a));
            }),
            time(&|a| {
                black_box(fib.source(a));
            }),
            time(&|a| {
                black_box(flat.source(a));
            }),
        ];
        for (b, t) in best.iter_mut().zip(t) {
            *b = b.min(t);
        }
    }
    println!(
        "lookups on 50,000 routes, half unknown, best of 200 rounds: lookup {:.2} ns sharded, \
         {:.2} ns flat; source {:.2} ns sharded, {:.2} ns flat",
        best[0], best[1], best[2], best[3]
    );
}

/// One link announcing `n` new /64s, each its own origin (metric 100, seqno 1).
fn announcements(n: usize) -> Vec<Tlv> {
    (0..n)
        .map(|i| {
            let k = key(i);
            Tlv::Update(Update {
                flags: 0,
                interval: 30000,
                seqno: SeqNo(1),
                metric: Metric(100),
                prefix: Prefix::V6(Subnet::slash64(address_from_public_key(&k))),
                router_id: RouterId::new(k, [3; 6]),
            })
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Publish {
    Incremental,
    Rebuild,
}

/// Absorbs `updates` from link 1 (link 2 is up too, so each route is also sent on), publishing
/// the table every `every` Updates; the last published table stays alive meanwhile, as in the
/// node's arc-swap. Returns (seconds overall, seconds for the last tenth), wall time: the
/// process CPU clock ticks in 10 ms, too coarse here, so run it on a quiet machine.
fn absorb(updates: &[Tlv], every: usize, how: Publish) -> (f64, f64) {
    let mut r = Router::new(
        Config::new(RouterId::new(key(usize::MAX - 1), [1; 6]), own_subnet()),
        Time::ZERO,
    );
    r.handle_link_up(LinkId(1), 10, Time::ZERO).unwrap();
    r.handle_link_up(LinkId(2), 10, Time::ZERO).unwrap();
    let mut published: Arc<ForwardingTable> = r.forwarding_table();
    let tail_from = updates.len() - updates.len() / 10;
    let start = Instant::now();
    let mut tail_start = start;
    for (i, u) in updates.iter().enumerate() {
        if i == tail_from {
            tail_start = Instant::now();
        }
        r.handle_tlv(LinkId(1), u, Time::ZERO);
        while let Some(t) = r.poll_transmit() {
            black_box(t);
        }
        while let Some(e) = r.poll_event() {
            black_box(e);
        }
        if (i + 1) % every == 0 {
            published = match how {
                Publish::Incremental => r.forwarding_table(),
                Publish::Rebuild => r.forwarding_table_rebuilt(),
            };
        }
    }
    if updates.len() % every != 0 {
        published = r.forwarding_table();
    }
    let all = start.elapsed().as_secs_f64();
    let tail = tail_start.elapsed().as_secs_f64();
    assert_eq!(published.len(), updates.len(), "every route absorbed");
    (all, tail)
}

fn absorb_report(updates: &[Tlv]) {
    let skip_rebuild_each = std::env::var_os("HYPHA_BENCH_FIB_SKIP_REBUILD").is_some();
    let n = updates.len();
    for (every, label) in [(1, "after every change"), (1000, "every 1,000 changes")] {
        for (how, name) in [
            (Publish::Rebuild, "full rebuild"),
            (Publish::Incremental, "incremental"),
        ] {
            if every == 1 && skip_rebuild_each && matches!(how, Publish::Rebuild) {
                println!("absorb {n} updates, publishing {label}, {name}: skipped");
                continue;
            }
            let (all, tail) = absorb(updates, every, how);
            println!(
                "absorb {n} updates, publishing {label}, {name}: {:.3} s, {:.0} routes/s \
                 (last {}: {:.0} routes/s)",
                all,
                n as f64 / all,
                n / 10,
                (n / 10) as f64 / tail
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    lookups(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = std::env::var("HYPHA_BENCH_FIB_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TABLE);
    absorb_report(&announcements(n));
}
