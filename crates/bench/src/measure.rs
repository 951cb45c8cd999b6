//! What the bench reads: iperf3's `--json` report (parsed by `testbed::iperf3`), a process's CPU
//! time and peak RSS from `/proc`, and the median of samples. Pure functions over text, plus thin
//! readers. Ping's summary is `testbed::ping`'s.

use anyhow::anyhow;

/// One iperf3 client run, as the receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    /// Received throughput, Gbit/s.
    pub gbps: f64,
    /// Bytes received.
    pub bytes: f64,
    /// Datagrams lost, % (UDP only).
    pub lost_pct: Option<f64>,
}

/// Parses an `iperf3 -c … --json` report (see [`testbed::iperf3::parse_json`] for the shapes).
pub fn parse_iperf(text: &str) -> anyhow::Result<Iperf> {
    let r = testbed::iperf3::parse_json(text).map_err(|e| anyhow!("{e}"))?;
    Ok(Iperf {
        gbps: r.received_bps / 1e9,
        bytes: r.received_bytes,
        lost_pct: r.lost_percent,
    })
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat` (fields 14 and 15; the
/// command name in field 2 may hold spaces and parentheses, so fields count from its last `)`).
pub fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` (peak resident set) in kB from the text of `/proc/<pid>/status`.
pub fn parse_vm_hwm_kb(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (user + system, all threads) the process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    let ticks = parse_stat_ticks(&text).ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        // USER_HZ is 100 on every Linux architecture hypha builds for.
        _ => 100.0,
    }
}

/// Peak resident set of the process so far, MB (10^6 bytes).
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow!("cannot read /proc/{pid}/status: {e}"))?;
    let kb = parse_vm_hwm_kb(&text).ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb as f64 * 1024.0 / 1e6)
}

/// Resets the process's peak resident set to its current one (`clear_refs` 5, Linux ≥ 4.0), so
/// that the next [`peak_rss_mb`] covers only what happened since.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| anyhow!("cannot reset the peak RSS of {pid}: {e}"))
}

/// The median of the finite samples; `None` when there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn tcp_report() {
        let j = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"bytes":5000000000,"bits_per_second":8.1e9,"retransmits":3},
            "sum_received":{"bytes":4990000000,"bits_per_second":8.0e9}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!(r.gbps, 8.0);
        assert_eq!(r.bytes, 4.99e9);
        assert_eq!(r.lost_pct, None);
    }

    #[test]
    fn udp_report_new_and_old_shapes() {
        // iperf3 3.12: sum_received is the server's view.
        let j = r#"{"end":{
            "sum":{"bytes":166476000,"bits_per_second":1.33e9,"lost_percent":3.5},
            "sum_sent":{"bytes":166476000,"bits_per_second":1.33e9,"lost_percent":0},
            "sum_received":{"bytes":160498800,"bits_per_second":1.28e9,"lost_percent":3.5}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!((r.gbps, r.lost_pct), (1.28, Some(3.5)));
        // Older: only `sum`, the sender's rate with the server's loss.
        let j = r#"{"end":{"sum":{"bytes":1000,"bits_per_second":2.0e9,"lost_percent":25.0}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!((r.gbps, r.bytes, r.lost_pct), (1.5, 750.0, Some(25.0)));
    }

    #[test]
    fn iperf_errors() {
        let e = parse_iperf(r#"{"end":{},"error":"unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        assert!(parse_iperf("").is_err());
        assert!(parse_iperf(r#"{"end":{}}"#).is_err());
        assert!(parse_iperf(r#"{"end":{"sum_received":{"bits_per_second":-1}}}"#).is_err());
    }

    #[test]
    fn proc_stat_and_status() {
        // comm with a space and a parenthesis; utime 1200, stime 34.
        let stat = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1200 34 0 0 20 0 9 0 \
                    100 200000000 3000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(1234));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks(""), None);
        let status =
            "Name:\thypha\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(23456));
        assert_eq!(parse_vm_hwm_kb("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(peak_rss_mb(pid).unwrap() > 0.0);
    }
}
