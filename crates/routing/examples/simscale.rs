//! A cold start of a large mesh, with memory and CPU per node.
//!
//! `cargo run --release -p hypha-routing --example simscale -- [nodes] [seed]`
//! (10,000 nodes by default; that takes about 1.5 CPU-hours and 13.5 GB of memory).
//!
//! Every node's links come up at t = 0 (3 to 8 links a node, 3.6 on average:
//! [`hypha_routing::sim::peer_degree`]; latencies 1–50 ms). Each node's own route floods the
//! mesh, so every node ends with a route to every other: the largest tables and the most
//! traffic this mesh can see. The run goes on until every node has a selected route to every
//! other one and no selected route has changed for 5 s (virtual). The simulator follows every
//! selection that changes, after every event, to its destination: a forwarding loop anywhere
//! at any moment would be reported. Afterwards 10,000 random pairs must reach each other.
//!
//! Memory is the process's peak resident size during the run less its size before the mesh
//! was built (`VmHWM` reset through /proc/self/clear_refs); CPU is user + system time.

use std::time::{Duration, Instant};

use hypha_routing::sim::Sim;
use hypha_routing::Time;

#[path = "../benches/common/cpu.rs"]
mod cpu;
#[path = "../benches/common/mem.rs"]
mod mem;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);

    let reset = mem::reset_peak();
    let rss0 = mem::rss_kib().unwrap_or(0);
    let cpu0 = cpu::cpu_seconds();
    let wall0 = Instant::now();

    let mut sim = Sim::peer_mesh(seed, n);
    let links: usize = (0..n).map(|i| sim.node_links(i).len()).sum::<usize>() / 2;
    let mut degrees = [0usize; 10];
    for i in 0..n {
        degrees[sim.node_links(i).len().min(9)] += 1;
    }
    let built = wall0.elapsed();
    println!("## Cold start of a {n}-node mesh (seed {seed})");
    println!(
        "  {links} links, {:.2} a node on average; nodes by degree {:?}",
        2.0 * links as f64 / n as f64,
        degrees
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .collect::<Vec<_>>()
    );

    let (full, settled) = sim.run_until_converged(Time::from_secs(120), Duration::from_secs(5));
    let wall = wall0.elapsed();
    let cpu = cpu::cpu_seconds() - cpu0;
    let peak = mem::peak_kib().unwrap_or(0);

    let mut pairs_ok = 0;
    let samples = 10_000;
    for _ in 0..samples {
        let a = sim.rng().below(n as u64) as usize;
        let b = (a + 1 + sim.rng().below(n as u64 - 1) as usize) % n;
        pairs_ok += usize::from(sim.path(a, b).is_ok());
    }
    let (mut subnets, mut entries, mut sources, mut selected, mut own) = (0, 0, 0, 0, 0);
    for i in 0..n {
        let t = sim.router(i).table_sizes();
        subnets += t.subnets;
        entries += t.entries;
        sources += t.sources;
        selected += t.selected;
        own += t.own_subnets + t.own_router_ids;
    }
    let secs = |t: Option<Time>| t.map_or("never".into(), |t| format!("{:.2} s", t.as_secs_f64()));
    println!(
        "  every node had a route to every other at {}; last change of a selected route at {} \
         (virtual)",
        secs(full),
        secs(settled)
    );
    println!(
        "  {} TLVs delivered, at most {} in flight; {} selection changes followed, {} loops; \
         {pairs_ok} of {samples} random pairs reach each other",
        sim.stats.tlvs_delivered,
        sim.stats.max_in_flight,
        sim.stats.loop_checks,
        sim.loops().len()
    );
    println!(
        "  per node: {:.0} subnets ({:.0} selected), {:.2} routes a subnet, {:.0} feasibility \
         distances, {:.1} names of its own",
        subnets as f64 / n as f64,
        selected as f64 / n as f64,
        entries as f64 / subnets.max(1) as f64,
        sources as f64 / n as f64,
        own as f64 / n as f64
    );
    let delta = peak.saturating_sub(rss0);
    println!(
        "  memory: peak {:.0} MB more than before the mesh ({:.0} KB a node){}",
        delta as f64 / 1024.0,
        delta as f64 / n as f64,
        if reset {
            ""
        } else {
            " (peak not reset: an upper bound)"
        }
    );
    println!(
        "  CPU: {cpu:.0} s ({:.1} ms a node), wall {:.0} s incl. {:.1} s building",
        cpu * 1000.0 / n as f64,
        wall.as_secs_f64(),
        built.as_secs_f64()
    );
    if !sim.loops().is_empty() {
        println!("  loops: {:?}", &sim.loops()[..sim.loops().len().min(5)]);
    }
}
