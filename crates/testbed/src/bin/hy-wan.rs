//! `hy-wan [--net N] A_TO_B [B_TO_A]` / `hy-wan check SPEC`
//!
//! Keeps two namespaces joined by an emulated WAN link up until Ctrl-C, printing how to run
//! commands in them and, every second, what each direction did. `B_TO_A` defaults to `A_TO_B`.
//! A spec is `key=value,…` (see `hypha_testbed::WanSpec`), e.g.
//! `rate=100mbit,delay=20ms,jitter=2ms,loss=0.5%,queue=256kb`; `-` is a perfect link.
//! `check` only parses a spec and prints it in canonical form (or the error). Needs root.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use hypha_testbed::{interrupted, watch_signals, Netns, Wan, WanSpec};

const USAGE: &str = "usage: hy-wan [--net N] A_TO_B [B_TO_A] | hy-wan check SPEC
  SPEC: key=value,... with rate=100mbit queue=256kb|100p delay=20ms jitter=1ms loss=1%
        gloss=p:r[:h] reorder=0.5% seed=N; '-' is a perfect link";

fn parse(s: &str) -> Result<WanSpec, String> {
    if s == "-" {
        return Ok(WanSpec::default());
    }
    s.parse().map_err(|e| format!("bad spec `{s}`: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (net, rest) = match args.as_slice() {
        ["check", spec] => {
            return match parse(spec) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hy-wan: {e}");
                    ExitCode::from(2)
                }
            }
        }
        ["--net", n, rest @ ..] => match n.parse::<u8>() {
            Ok(n) => (n, rest),
            Err(_) => {
                eprintln!("hy-wan: --net takes 0..=255\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        rest => (99, rest),
    };
    let specs = match rest {
        [ab] => parse(ab).map(|s| (s.clone(), s)),
        [ab, ba] => parse(ab).and_then(|a| Ok((a, parse(ba)?))),
        _ => Err(USAGE.to_owned()),
    };
    let (ab, ba) = match specs {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hy-wan: {e}");
            return ExitCode::from(2);
        }
    };
    match run(net, ab, ba) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hy-wan: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(net: u8, ab: WanSpec, ba: WanSpec) -> std::io::Result<()> {
    watch_signals(|| {})?;
    let a = Netns::new("wan-a")?;
    let b = Netns::new("wan-b")?;
    let wan = Wan::between(&a, &b, net, ab, ba)?;
    println!("A: ip netns exec {}   ({})", a.name(), wan.addrs[0]);
    println!("B: ip netns exec {}   ({})", b.name(), wan.addrs[1]);
    println!("a→b: {}\nb→a: {}", wan.specs[0], wan.specs[1]);
    println!("Ctrl-C removes them.");
    let mut last = wan.stats();
    let mut at = Instant::now();
    while !interrupted() && wan.running() {
        std::thread::sleep(Duration::from_secs(1));
        let now = wan.stats();
        let secs = at.elapsed().as_secs_f64();
        for (name, (n, l)) in ["a→b", "b→a"].iter().zip(now.iter().zip(&last)) {
            if n.dir.packets_in != l.dir.packets_in {
                let mbit = (n.dir.bytes_out - l.dir.bytes_out) as f64 * 8.0 / secs / 1e6;
                println!("{name} {mbit:8.2} Mbit/s  {n}");
            }
        }
        (last, at) = (now, Instant::now());
    }
    wan.stop()
}
