//! A cold start of a 1,000-node mesh: convergence, loop freedom at every event, and a bound on
//! the memory it takes. Alone in its test binary so that the process's peak memory is its own.
//! The 10,000-node run is the `simscale` example (docs/simulation.md).

use std::time::Duration;

use hypha_routing::sim::Sim;
use hypha_routing::Time;

#[path = "../benches/common/mem.rs"]
mod mem;

/// Peak resident memory the 1,000-node run may add (it took 136 MB when this was written, and
/// about 1 GB before router-ids were interned and entries made compact).
const MEMORY_BOUND_MB: u64 = 200;

#[test]
fn a_thousand_node_mesh_converges_loop_free_within_its_memory_bound() {
    let reset = mem::reset_peak();
    let before = mem::rss_kib();

    let n = 1000;
    let mut sim = Sim::peer_mesh(1, n);
    let (full, settled) = sim.run_until_converged(Time::from_secs(60), Duration::from_secs(5));

    let peak = mem::peak_kib();
    assert!(
        full.is_some(),
        "not every node reached every other within 60 s"
    );
    let settled = settled.expect("routes were selected");
    assert!(
        sim.now().saturating_since(settled) >= Duration::from_secs(5),
        "selections still changing at {:?}",
        sim.now()
    );
    assert!(sim.loops().is_empty(), "{:?}", sim.loops());
    assert!(sim.stats.loop_checks > 0);
    for i in 0..n {
        let t = sim.router(i).table_sizes();
        assert_eq!(t.selected, n - 1, "node {i}");
        assert_eq!(
            (t.own_subnets, t.own_router_ids),
            (0, 0),
            "names are shared"
        );
    }
    for _ in 0..2000 {
        let a = sim.rng().below(n as u64) as usize;
        let b = (a + 1 + sim.rng().below(n as u64 - 1) as usize) % n;
        assert!(sim.path(a, b).is_ok(), "{a} -> {b}: {:?}", sim.path(a, b));
    }
    for i in (0..n).step_by(97) {
        sim.router(i).check_invariants().unwrap();
    }

    // Measured where /proc allows it (Linux); the peak counts from before the mesh was built.
    if let (Some(before), Some(peak)) = (before, peak) {
        let mb = peak.saturating_sub(before) / 1024;
        eprintln!(
            "1000-node cold start: settled at {:.2} s, {} TLVs, peak +{mb} MB (peak reset: {reset})",
            settled.as_secs_f64(),
            sim.stats.tlvs_delivered
        );
        assert!(
            mb <= MEMORY_BOUND_MB,
            "the 1000-node mesh took {mb} MB, more than {MEMORY_BOUND_MB} MB"
        );
    }
}
