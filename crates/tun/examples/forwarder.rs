//! TUN-to-TUN forwarder, and the TUN I/O benchmark.
//!
//! ```text
//! forwarder --ns-a NS --ns-b NS [--dev-a hya] [--dev-b hyb] [--no-offload]
//!           [--two-threads | --single-thread]
//!           [--max-reads N] [--seconds S]
//! ```
//! Creates one TUN inside each (existing) namespace with the addresses of the test topology
//! (A: fd00:1::1/64 198.18.0.1/24, B: fd00:1::2/64 198.18.0.2/24, MTU 1400), prints `ready`, and
//! forwards between them with `hypha_tun::bridge` until SIGINT/SIGTERM (or `--seconds`), then
//! prints both devices' counters and its CPU time. Each direction runs as a reader and a writer
//! thread (`bridge::Options::pipeline`); `--two-threads` uses one thread per direction and
//! `--single-thread` one polling thread for both.

#[path = "../tests/common/topology.rs"]
mod topology;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypha_tun::bridge;

struct Args {
    ns_a: String,
    ns_b: String,
    dev_a: String,
    dev_b: String,
    offload: bool,
    max_reads: usize,
    single_thread: bool,
    pipeline: bool,
    seconds: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        ns_a: String::new(),
        ns_b: String::new(),
        dev_a: "hya".into(),
        dev_b: "hyb".into(),
        offload: true,
        max_reads: bridge::Options::default().max_reads,
        // By default each direction is a reader stage and a writer stage on their own threads,
        // the shape of a node's data path (TUN reader → peers, peers → TUN writer).
        single_thread: false,
        pipeline: true,
        seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--ns-a" => a.ns_a = val()?,
            "--ns-b" => a.ns_b = val()?,
            "--dev-a" => a.dev_a = val()?,
            "--dev-b" => a.dev_b = val()?,
            "--no-offload" => a.offload = false,
            "--two-threads" => (a.single_thread, a.pipeline) = (false, false),
            "--single-thread" => (a.single_thread, a.pipeline) = (true, false),
            "--max-reads" => {
                a.max_reads = val()?.parse().map_err(|e| format!("--max-reads: {e}"))?
            }
            "--seconds" => a.seconds = Some(val()?.parse().map_err(|e| format!("--seconds: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.ns_a.is_empty() || a.ns_b.is_empty() {
        return Err("--ns-a and --ns-b are required".into());
    }
    Ok(a)
}

fn main() -> std::io::Result<()> {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("forwarder: {e}");
        std::process::exit(2);
    });
    let (a, b) = topology::tun_pair(
        &args.ns_a,
        &args.ns_b,
        (&args.dev_a, &args.dev_b),
        args.offload,
    )?;
    println!(
        "ready: {} {:?} <-> {} {:?}",
        a.name(),
        a.capabilities(),
        b.name(),
        b.capabilities()
    );
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    if let Some(secs) = args.seconds {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let opts = bridge::Options {
        max_reads: args.max_reads,
        single_thread: args.single_thread,
        pipeline: args.pipeline,
        ..Default::default()
    };
    let started = Instant::now();
    bridge::run(&a, &b, &stop, opts)?;
    println!(
        "ran {:.1} s, {}",
        started.elapsed().as_secs_f64(),
        cpu_time()
    );
    println!("{}: {}", a.name(), a.stats());
    println!("{}: {}", b.name(), b.stats());
    Ok(())
}

/// User and system CPU time of this process, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    format!("cpu user {:.2} s sys {:.2} s", tick(11), tick(12))
}
