//! Virtual-time measurements of the routing core in the simulator.
//!
//! `cargo run -p hypha-routing --example simreport --release`
//!
//! Link latencies are drawn uniformly from 1–50 ms per link (fixed per link); static link cost
//! 10 (TCP/IPv6). All times below are virtual.

use std::time::{Duration, Instant};

use hypha_routing::sim::Sim;
use hypha_routing::Time;

#[path = "../benches/common/cpu.rs"]
mod cpu;
use cpu::cpu_seconds;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    format!(
        "n={} min={:.0} median={:.0} mean={:.0} max={:.0}",
        s.len(),
        s[0],
        s[s.len() / 2],
        mean,
        s[s.len() - 1]
    )
}

/// Cold start: all links come up at t=0; when does node 0 first have a working path to node k?
fn acquire_chain() {
    println!("## Route acquisition in a chain of 11 (cold start, all links up at t=0)");
    let mut sim = Sim::chain(11, 11);
    let mut first = [None; 11];
    let mut latency_sum = [0.0; 11];
    for k in 1..11 {
        let l = sim.link_between(k - 1, k).unwrap();
        latency_sum[k] = latency_sum[k - 1] + ms(sim.link_latency(l));
    }
    sim.run_until_cond(Time::from_secs(30), |s| {
        for (k, f) in first.iter_mut().enumerate().skip(1) {
            if f.is_none() && s.path(0, k).is_ok() {
                *f = Some(s.now());
            }
        }
        first.iter().skip(1).all(Option::is_some)
    });
    for k in 1..11 {
        match first[k] {
            Some(t) => println!(
                "  {k:2} hops: {:7.1} ms  (one-way latency along the path {:6.1} ms)",
                t.as_secs_f64() * 1000.0,
                latency_sum[k]
            ),
            None => println!("  {k:2} hops: not reached"),
        }
    }
}

/// A new node joins at the end of a converged chain and asks for a route to every other node.
fn acquire_by_request() {
    println!("## Route acquisition by RouteRequest: a node joins a converged chain of 10");
    let mut sim = Sim::chain(12, 10);
    sim.run_for(Duration::from_secs(60));
    let new = sim.add_node();
    let lat = Duration::from_millis(20);
    sim.connect(new, 9, lat, 0);
    let t0 = sim.now();
    for k in 0..9 {
        sim.request(new, k);
    }
    let mut got = [None; 9];
    sim.run_until_cond(t0 + Duration::from_secs(20), |s| {
        for (k, g) in got.iter_mut().enumerate() {
            if g.is_none() && s.path(new, k).is_ok() {
                *g = Some(s.now().saturating_since(t0));
            }
        }
        got.iter().all(Option::is_some)
    });
    let v: Vec<f64> = got.iter().flatten().map(|d| ms(*d)).collect();
    println!(
        "  time to a working path (link to the chain 20 ms): {} ms",
        stats(&v)
    );
    println!("  (the neighbour already knows every destination and answers at once)");
    let t1 = sim.now();
    sim.router_mut(new)
        .request_route("4ff::1".parse().unwrap(), t1);
    sim.run_for(Duration::from_secs(20));
    let timeouts: Vec<_> = sim
        .query_timeouts()
        .iter()
        .filter(|(_, n, _)| *n == new)
        .map(|(t, _, _)| ms(t.saturating_since(t1)))
        .collect();
    println!("  query for a destination that does not exist timed out after {timeouts:?} ms");
}

/// Takes down the first link of the path `a`→`b` and runs until there is a path again, for at
/// most 120 s: how long that took, or `None`. Never a loop on the way.
fn heal_after_first_link_down(sim: &mut Sim, a: usize, b: usize) -> Option<Duration> {
    let next = sim.next_node(a, b).unwrap();
    let l = sim.link_between(a, next).unwrap();
    sim.link_down(l);
    let t0 = sim.now();
    let healed = sim.run_until_cond(t0 + Duration::from_secs(120), |s| s.path(a, b).is_ok());
    assert!(sim.loops().is_empty());
    healed.map(|t| t.saturating_since(t0))
}

/// Prints `title` and the heal times of [`heal_after_first_link_down`] over 20 trials, each on
/// the settled network and pair `trial(seed)` gives (`None` skips the seed).
fn link_down_trials(title: &str, trial: impl Fn(u64) -> Option<(Sim, usize, usize)>) {
    println!("{title}");
    let mut times = Vec::new();
    let mut failed = 0;
    for seed in 0..20u64 {
        let Some((mut sim, a, b)) = trial(seed) else {
            continue;
        };
        match heal_after_first_link_down(&mut sim, a, b) {
            Some(d) => times.push(ms(d)),
            None => failed += 1,
        }
    }
    println!(
        "  time until the path works again: {} ms; {failed} not healed in 120 s",
        stats(&times)
    );
}

/// Reroute after a link goes down (the connection closes: both ends see it at once).
fn reroute_link_down() {
    link_down_trials(
        "## Reroute after link-down (10×10 grid, 20 trials)",
        |seed| {
            let mut sim = Sim::grid(100 + seed, 10, 10);
            sim.run_for(Duration::from_secs(60));
            let (a, b) = ((seed as usize * 7) % 100, 99 - (seed as usize * 3) % 100);
            (a != b && sim.path(a, b).is_ok()).then_some((sim, a, b))
        },
    );
}

/// Reroute in a ring of 10 after the first link on the path goes down: the way round the other
/// side is usually longer, hence not feasible, and needs a new seqno from the destination.
fn reroute_ring() {
    link_down_trials(
        "## Reroute after link-down (ring of 10, destination 4–5 hops away, 20 trials)",
        |seed| {
            let mut sim = Sim::ring(300 + seed, 10);
            sim.run_for(Duration::from_secs(60));
            Some((sim, 0, 4 + (seed as usize % 2)))
        },
    );
}

/// Reroute after a node on the path dies silently (no close; neighbours notice missing IHUs).
fn reroute_silent_death() {
    println!("## Reroute after silent death of the next hop (10×10 grid, 20 trials)");
    let mut times = Vec::new();
    let mut failed = 0;
    for seed in 0..20u64 {
        let mut sim = Sim::grid(200 + seed, 10, 10);
        // Let Hello/IHU settle so the dead timer starts from a steady state.
        sim.run_for(Duration::from_secs(60 + seed * 3));
        let (a, b) = ((seed as usize * 7) % 100, 99 - (seed as usize * 3) % 100);
        if a == b || sim.path(a, b).is_err() {
            continue;
        }
        let victim = sim.next_node(a, b).unwrap();
        if victim == b {
            continue;
        }
        sim.kill_silently(victim);
        let t0 = sim.now();
        match sim.run_until_cond(t0 + Duration::from_secs(180), |s| s.path(a, b).is_ok()) {
            Some(t) => times.push(t.saturating_since(t0).as_secs_f64()),
            None => failed += 1,
        }
        assert!(sim.loops().is_empty());
    }
    let v: Vec<f64> = times.iter().map(|s| s * 1000.0).collect();
    println!(
        "  time until the path works again: {} ms; {failed} not healed in 180 s",
        stats(&v)
    );
    println!("  (dead > 43 s after the last IHU, which came 0–20 s before the death; checked every 10 s)");
}

fn mesh_1000() {
    println!("## Random mesh, 1000 nodes, average degree 3.5");
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut sim = Sim::random_mesh(5, 1000, 3.5);
    let build = start.elapsed();
    let mut first_full = None;
    let t = sim.run_until_cond(Time::from_secs(60), |s| {
        let ok = (1..1000).step_by(10).all(|b| s.path(0, b).is_ok());
        if ok && first_full.is_none() {
            first_full = Some(s.now());
        }
        ok
    });
    let conv = start.elapsed();
    println!(
        "  node 0 reaches 100 sampled destinations at {:?} virtual ({:.1} s wall incl. {:.1} s building)",
        t.map(|t| t.as_secs_f64()),
        conv.as_secs_f64(),
        build.as_secs_f64()
    );
    sim.run_until(Time::from_secs(60));
    let wall = start.elapsed();
    let links: usize = (0..1000).map(|n| sim.node_links(n).len()).sum::<usize>() / 2;
    println!(
        "  60 s virtual: {:.1} s wall, {:.1} s CPU, {links} links, {} TLVs delivered, {} loop checks, {} loops",
        wall.as_secs_f64(),
        cpu_seconds() - cpu0,
        sim.stats.tlvs_delivered,
        sim.stats.loop_checks,
        sim.loops().len()
    );
}

fn main() {
    // `simreport mesh` runs only the 1000-node part (for profiling).
    if std::env::args().nth(1).as_deref() == Some("mesh") {
        mesh_1000();
        return;
    }
    acquire_chain();
    acquire_by_request();
    reroute_link_down();
    reroute_ring();
    reroute_silent_death();
    mesh_1000();
}
