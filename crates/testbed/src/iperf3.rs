//! iperf3 in namespaces, with the `--json` report parsed.

use std::io;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{wait_until, ChildGuard};

/// What one iperf3 client run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Receiver-side throughput (bits per second), the number that counts.
    pub received_bps: f64,
    /// Bytes that arrived.
    pub received_bytes: f64,
    /// Sender-side throughput.
    pub sent_bps: f64,
    /// TCP retransmissions reported by the sender (0 for UDP).
    pub retransmits: u64,
    /// Datagrams lost, percent (UDP reports only).
    pub lost_percent: Option<f64>,
}

/// Parses the `end` section of an `iperf3 --json` client report: `end.sum_received` (TCP, and UDP
/// in current iperf3), else `end.sum` (older UDP reports: the sender's rate with the server's loss,
/// so what arrived is what was not lost).
pub fn parse_json(text: &str) -> io::Result<Report> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| io::Error::other(format!("iperf3 gave no JSON report ({e})")))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(io::Error::other(format!("iperf3: {e}")));
    }
    let end = &v["end"];
    let num = |sum: &str, key: &str| end.get(sum)?.get(key)?.as_f64();
    let udp = num("sum", "lost_percent").is_some() || num("sum_received", "lost_percent").is_some();
    let (received_bps, received_bytes, lost) =
        if let Some(bps) = num("sum_received", "bits_per_second") {
            let lost = num("sum_received", "lost_percent").or_else(|| num("sum", "lost_percent"));
            (bps, num("sum_received", "bytes").unwrap_or(0.0), lost)
        } else if let (Some(bps), Some(lost)) =
            (num("sum", "bits_per_second"), num("sum", "lost_percent"))
        {
            let keep = (1.0 - lost / 100.0).max(0.0);
            (
                bps * keep,
                num("sum", "bytes").unwrap_or(0.0) * keep,
                Some(lost),
            )
        } else {
            return Err(io::Error::other("iperf3 report without end.sum_received"));
        };
    if !received_bps.is_finite() || received_bps < 0.0 {
        return Err(io::Error::other(format!(
            "iperf3 reported a throughput of {received_bps} bit/s"
        )));
    }
    Ok(Report {
        received_bps,
        received_bytes,
        sent_bps: num("sum_sent", "bits_per_second").unwrap_or(received_bps),
        retransmits: num("sum_sent", "retransmits").unwrap_or(0.0) as u64,
        lost_percent: if udp { lost } else { None },
    })
}

/// Starts a one-shot iperf3 server (`-s -1`) bound to `addr` in `ns` and waits until it listens.
pub fn server(ns: &Netns, addr: &str, port: u16) -> io::Result<ChildGuard> {
    let port_s = port.to_string();
    let mut guard = ns.spawn("iperf3", &["-s", "-1", "-B", addr, "-p", &port_s])?;
    let filter = format!("sport = :{port}");
    wait_until(Duration::from_secs(10), || {
        matches!(guard.try_wait(), Ok(None))
            && ns
                .exec("ss", &["-Hltn", &filter])
                .is_ok_and(|o| !o.trim().is_empty())
    })?;
    if let Ok(Some(status)) = guard.try_wait() {
        return Err(io::Error::other(format!("iperf3 server exited: {status}")));
    }
    Ok(guard)
}

/// Runs one iperf3 TCP client from `ns` to `addr:port` for `secs` seconds.
pub fn client(ns: &Netns, addr: &str, port: u16, secs: u32, extra: &[&str]) -> io::Result<Report> {
    let (port_s, secs_s) = (port.to_string(), secs.to_string());
    let mut args = vec!["-c", addr, "-p", &port_s, "-t", &secs_s, "--json"];
    args.extend_from_slice(extra);
    let out = ns.spawn("iperf3", &args)?.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_json(&text).map_err(|e| {
        io::Error::other(format!(
            "{e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_report() {
        let j = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"bytes":100,"bits_per_second":9.5e9,"retransmits":3},
            "sum_received":{"bytes":100,"bits_per_second":9.4e9}}}"#;
        let r = parse_json(j).unwrap();
        assert_eq!(r.received_bps, 9.4e9);
        assert_eq!(r.sent_bps, 9.5e9);
        assert_eq!(r.retransmits, 3);
    }

    #[test]
    fn reports_iperf3_errors() {
        let j = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
        let e = parse_json(j).unwrap_err();
        assert!(e.to_string().contains("unable to connect"));
        assert!(parse_json("not json").is_err());
        assert!(parse_json(r#"{"end":{}}"#).is_err());
    }
}
