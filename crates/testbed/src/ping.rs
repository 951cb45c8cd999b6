//! What iputils `ping` printed.

use std::io;

/// The summary lines of a ping run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Round-trip times, ms: `[min, avg, max, mdev]` as ping prints them.
    pub rtt_ms: [f64; 4],
    /// Average round-trip time, ms (`rtt_ms[1]`).
    pub avg_ms: f64,
    /// Echoes lost, percent.
    pub loss_pct: f64,
}

/// Parses the summary of iputils ping: `… 0% packet loss …` and
/// `rtt min/avg/max/mdev = 0.031/0.045/0.081/0.010 ms`. Without replies there is no RTT line, and
/// the error tells the loss.
pub fn parse(text: &str) -> io::Result<Summary> {
    let loss_pct = text
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| l.split(',').find(|f| f.contains("packet loss")))
        .and_then(|f| f.trim().split('%').next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| io::Error::other("ping printed no summary"))?;
    let rtt_ms = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| {
            // `0.031/0.045/0.081/0.010 ms`, maybe followed by `, pipe 2` or `, ipg/ewma …`.
            let v = v.split_whitespace().next()?;
            let mut it = v.split('/').map(|n| n.parse::<f64>().ok());
            Some([it.next()??, it.next()??, it.next()??, it.next()??])
        })
        .ok_or_else(|| io::Error::other(format!("no ping reply ({loss_pct}% packet loss)")))?;
    Ok(Summary {
        rtt_ms,
        avg_ms: rtt_ms[1],
        loss_pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        let out =
            "PING 400::1 56 data bytes\n64 bytes from 400::1: icmp_seq=1 ttl=64 time=0.05 ms\n\n\
                   --- 400::1 ping statistics ---\n\
                   50 packets transmitted, 49 received, 2% packet loss, time 539ms\n\
                   rtt min/avg/max/mdev = 0.031/0.045/0.081/0.010 ms\n";
        assert_eq!(
            parse(out).unwrap(),
            Summary {
                rtt_ms: [0.031, 0.045, 0.081, 0.010],
                avg_ms: 0.045,
                loss_pct: 2.0
            }
        );
        let lost = "5 packets transmitted, 0 received, 100% packet loss, time 4090ms\n";
        let e = parse(lost).unwrap_err();
        assert!(e.to_string().contains("100% packet loss"), "{e}");
        assert!(parse("ping: connect: Network is unreachable").is_err());
        let errs = "5 packets transmitted, 4 received, +1 errors, 20% packet loss, time 4ms\n\
                    rtt min/avg/max/mdev = 1.0/2.5/3.0/0.1 ms\n";
        assert_eq!(parse(errs).unwrap().loss_pct, 20.0);
        // Echoes in flight at once (`pipe`), and flood mode's extra figures.
        let piped = "100 packets transmitted, 100 received, 0% packet loss, time 1593ms\n\
                     rtt min/avg/max/mdev = 0.093/0.479/16.010/1.799 ms, pipe 2\n";
        assert_eq!(parse(piped).unwrap().rtt_ms, [0.093, 0.479, 16.010, 1.799]);
        let flood = "10 packets transmitted, 10 received, 0% packet loss, time 2ms\n\
                     rtt min/avg/max/mdev = 0.011/0.020/0.050/0.010 ms, ipg/ewma 0.2/0.02 ms\n";
        assert_eq!(parse(flood).unwrap().avg_ms, 0.020);
    }
}
