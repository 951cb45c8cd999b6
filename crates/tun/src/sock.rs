//! What the kernel knows about a TCP connection (`TCP_INFO`): the figures hypha's queue
//! management reads from a peer socket — its round-trip times, the bytes it has not sent yet and
//! the rate at which it delivers.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The part of the kernel's `struct tcp_info` hypha uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// The smallest round-trip time seen (the path without queues).
    pub min_rtt: Duration,
    /// Bytes written to the socket and not sent yet.
    pub notsent_bytes: u32,
    /// Segments sent and not acknowledged.
    pub unacked: u32,
    /// The most recent delivery rate, bytes a second (0: not measured yet).
    pub delivery_rate: u64,
    /// The congestion window, segments.
    pub snd_cwnd: u32,
}

/// Bytes of `struct tcp_info` up to and including `tcpi_delivery_rate` (Linux 4.9 and later).
pub const TCP_INFO_LEN: usize = 168;

impl TcpInfo {
    /// Reads the fields from the kernel's `struct tcp_info` as `getsockopt` filled it (`None`
    /// when it is too short: a kernel older than 4.9).
    pub fn parse(b: &[u8]) -> Option<TcpInfo> {
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        Some(TcpInfo {
            unacked: u32_at(24)?,
            rtt: Duration::from_micros(u64::from(u32_at(68)?)),
            snd_cwnd: u32_at(80)?,
            notsent_bytes: u32_at(144)?,
            min_rtt: Duration::from_micros(u64::from(u32_at(148)?)),
            delivery_rate: u64_at(160)?,
        })
    }
}

/// `getsockopt(TCP_INFO)` on a TCP socket.
pub fn tcp_info(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`, which we own, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = (len as usize).min(buf.len());
    if got < TCP_INFO_LEN {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("TCP_INFO gave {got} bytes, fewer than the {TCP_INFO_LEN} needed"),
        ));
    }
    TcpInfo::parse(&buf[..got]).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_their_offsets() {
        let mut b = vec![0u8; TCP_INFO_LEN];
        b[24..28].copy_from_slice(&7u32.to_ne_bytes());
        b[68..72].copy_from_slice(&20_500u32.to_ne_bytes());
        b[80..84].copy_from_slice(&90u32.to_ne_bytes());
        b[144..148].copy_from_slice(&65_536u32.to_ne_bytes());
        b[148..152].copy_from_slice(&20_000u32.to_ne_bytes());
        b[160..168].copy_from_slice(&25_000_000u64.to_ne_bytes());
        let i = TcpInfo::parse(&b).unwrap();
        assert_eq!(
            i,
            TcpInfo {
                rtt: Duration::from_micros(20_500),
                min_rtt: Duration::from_millis(20),
                notsent_bytes: 65_536,
                unacked: 7,
                delivery_rate: 25_000_000,
                snd_cwnd: 90,
            }
        );
        assert_eq!(TcpInfo::parse(&b[..TCP_INFO_LEN - 1]), None);
    }

    #[test]
    fn a_live_connection_reports_its_round_trip_and_unsent_bytes() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut got).unwrap();
        let i = tcp_info(&c).unwrap();
        assert!(
            i.rtt > Duration::ZERO && i.rtt < Duration::from_secs(1),
            "{i:?}"
        );
        assert!(i.min_rtt <= i.rtt + i.rtt, "{i:?}");
        assert_eq!(i.notsent_bytes, 0);
        assert!(i.snd_cwnd > 0);
        // Not a TCP socket: an error, no garbage.
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(tcp_info(&u).is_err());
    }
}
