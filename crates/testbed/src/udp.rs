//! UDP trains of mixed datagram sizes, checked for size and content on arrival.
//!
//! A [`Plan`] is a list of trains `(size, count)`. The sender sends each train (optionally as one
//! UDP GSO send, so that the kernel hands a USO super-packet to whatever sits in the path) and waits
//! for the receiver's acknowledgement before the next one; the receiver checks every datagram
//! against the deterministic expected payload and acknowledges each train. Lock-step keeps socket
//! buffers from overflowing, so a missing datagram is a real loss, not test noise.

use std::io;
use std::net::UdpSocket;
use std::time::Duration;

use crate::xfer::Stream;

/// Trains to send: `(datagram size, datagrams in the train)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub trains: Vec<(usize, usize)>,
    pub seed: u64,
    /// Send each train of more than one datagram as one `UDP_SEGMENT` (GSO) send when it fits.
    pub gso: bool,
}

impl Plan {
    /// Mixed sizes from 1 byte up to `max` (the largest payload that fits the path MTU): single
    /// datagrams of every size class, plus trains of equal sizes that a coalescer may merge.
    pub fn mixed(max: usize, seed: u64) -> Plan {
        let mut trains = Vec::new();
        for size in [
            1, 2, 3, 7, 8, 9, 63, 64, 100, 255, 256, 511, 512, 1000, 1023, 1024,
        ] {
            if size <= max {
                trains.push((size, 1));
            }
        }
        for size in [max - 2, max - 1, max] {
            trains.push((size, 1));
        }
        // Equal-size trains (mergeable) and alternating sizes (must not be merged across).
        for (size, count) in [(max, 40), (1000, 32), (1, 16), (max / 2, 20)] {
            trains.push((size, count));
        }
        for i in 0..12 {
            trains.push((if i % 2 == 0 { 700 } else { 300 }, 1));
        }
        Plan {
            trains,
            seed,
            gso: false,
        }
    }

    pub fn datagrams(&self) -> usize {
        self.trains.iter().map(|t| t.1).sum()
    }
}

/// The payload of datagram `idx` of train `train`.
pub fn payload(seed: u64, train: usize, idx: usize, buf: &mut [u8]) {
    Stream::new(seed ^ ((train as u64) << 32) ^ idx as u64).fill(buf);
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Sends `plan` on a connected socket, train by train, waiting for each acknowledgement.
pub fn send(sock: &UdpSocket, plan: &Plan) -> io::Result<()> {
    sock.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0u8; 65536];
    let mut ack = [0u8; 8];
    for (t, &(size, count)) in plan.trains.iter().enumerate() {
        let gso = plan.gso && count > 1 && size * count <= 65000 && count <= 64;
        if gso {
            for k in 0..count {
                payload(plan.seed, t, k, &mut buf[k * size..(k + 1) * size]);
            }
            nix::sys::socket::setsockopt(
                sock,
                nix::sys::socket::sockopt::UdpGsoSegment,
                &(size as i32),
            )
            .map_err(io::Error::from)?;
            let n = sock.send(&buf[..size * count])?;
            if n != size * count {
                return Err(bad(format!("short GSO send {n}")));
            }
            nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::UdpGsoSegment, &0)
                .map_err(io::Error::from)?;
        } else {
            for k in 0..count {
                payload(plan.seed, t, k, &mut buf[..size]);
                sock.send(&buf[..size])?;
            }
        }
        let n = sock.recv(&mut ack)?;
        if n != 8 || u64::from_be_bytes(ack) != t as u64 {
            return Err(bad(format!(
                "train {t}: bad acknowledgement {:?}",
                &ack[..n]
            )));
        }
    }
    Ok(())
}

/// Receives `plan` on a bound socket, checking each datagram, and acknowledges each train to the
/// sender. Returns the number of datagrams checked.
pub fn recv(sock: &UdpSocket, plan: &Plan) -> io::Result<usize> {
    sock.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0u8; 65536];
    let mut want = vec![0u8; 65536];
    let mut checked = 0;
    for (t, &(size, count)) in plan.trains.iter().enumerate() {
        let mut from = None;
        for k in 0..count {
            let (n, peer) = sock.recv_from(&mut buf).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("train {t} datagram {k} (size {size}): {e}"),
                )
            })?;
            if n != size {
                return Err(bad(format!(
                    "train {t} datagram {k}: {n} bytes, sent {size}"
                )));
            }
            payload(plan.seed, t, k, &mut want[..size]);
            if buf[..n] != want[..size] {
                return Err(bad(format!("train {t} datagram {k}: content differs")));
            }
            from = Some(peer);
            checked += 1;
        }
        if let Some(peer) = from {
            sock.send_to(&(t as u64).to_be_bytes(), peer)?;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(gso: bool) -> io::Result<usize> {
        let rx = UdpSocket::bind("127.0.0.1:0")?;
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(rx.local_addr()?)?;
        let mut plan = Plan::mixed(1372, 5);
        plan.gso = gso;
        let p2 = plan.clone();
        let h = std::thread::spawn(move || recv(&rx, &p2));
        send(&tx, &plan)?;
        h.join().unwrap()
    }

    #[test]
    fn mixed_plan_round_trips_on_loopback() {
        let plan = Plan::mixed(1372, 5);
        assert_eq!(pair(false).unwrap(), plan.datagrams());
        assert_eq!(pair(true).unwrap(), plan.datagrams());
        assert!(plan.trains.iter().any(|t| t.0 == 1) && plan.trains.iter().any(|t| t.0 == 1372));
    }

    #[test]
    fn receiver_rejects_wrong_content() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let plan = Plan {
            trains: vec![(16, 1)],
            seed: 1,
            gso: false,
        };
        tx.send(&[0u8; 16]).unwrap();
        let e = recv(&rx, &plan).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
