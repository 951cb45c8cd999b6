//! Links over TCP: the socket tuned for a link (no Nagle, a short unsent backlog) and split into
//! its two directions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::Transport;
use crate::transmit::{DirectWrite, PeerSocket};

/// Unsent bytes the kernel may hold for a peer socket before it stops reporting it writable,
/// until queue management sizes it to the connection's rate (`transmit::PeerSocket`).
const NOTSENT_LOWAT: u32 = datapath::codel::MAX_NOTSENT_LOWAT;

impl Transport for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;

    fn static_cost(&self) -> u16 {
        let v4 = self.peer_addr().is_ok_and(|r| match r {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        });
        if v4 {
            routing::consts::STATIC_COST_TCP4
        } else {
            routing::consts::STATIC_COST_TCP6
        }
    }

    fn describe(&self) -> String {
        match (self.local_addr(), self.peer_addr()) {
            (Ok(l), Ok(r)) => format!("TCP {} <-> {}", canonical(l), canonical(r)),
            _ => "TCP".to_owned(),
        }
    }

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let _ = self.set_nodelay(true);
        // Keep the socket's unsent backlog short: what the kernel has not sent yet waits in our
        // queues instead, where it back-pressures the TUN rather than delaying every packet
        // behind megabytes of bulk data (bufferbloat).
        let _ = socket2::SockRef::from(&self).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        TcpStream::into_split(self)
    }

    fn direct(&self) -> Option<Box<dyn DirectWrite>> {
        // The same socket (a second descriptor, non-blocking like the first).
        let sock = socket2::SockRef::from(self).try_clone().ok()?;
        Some(Box::new(PeerSocket::new(
            std::net::TcpStream::from(sock),
            NOTSENT_LOWAT,
        )))
    }
}

/// An accepted connection that proved itself at the gate (`crate::gate`), with the bytes read
/// while it did: the link reads them first.
#[derive(Debug)]
pub(crate) struct Proven {
    pub stream: TcpStream,
    pub first: Vec<u8>,
}

impl Transport for Proven {
    type Reader = Prefixed<OwnedReadHalf>;
    type Writer = OwnedWriteHalf;

    fn static_cost(&self) -> u16 {
        self.stream.static_cost()
    }

    fn describe(&self) -> String {
        self.stream.describe()
    }

    fn split(self) -> (Prefixed<OwnedReadHalf>, OwnedWriteHalf) {
        let (rd, wr) = Transport::split(self.stream);
        let rd = Prefixed::new(self.first, rd);
        (rd, wr)
    }

    fn direct(&self) -> Option<Box<dyn DirectWrite>> {
        self.stream.direct()
    }
}

/// A reader that yields `first` before what `inner` reads.
pub(crate) struct Prefixed<R> {
    first: Vec<u8>,
    at: usize,
    inner: R,
}

impl<R> Prefixed<R> {
    pub(crate) fn new(first: Vec<u8>, inner: R) -> Prefixed<R> {
        Prefixed {
            first,
            at: 0,
            inner,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.at < me.first.len() {
            let n = buf.remaining().min(me.first.len() - me.at);
            buf.put_slice(&me.first[me.at..me.at + n]);
            me.at += n;
            if me.at == me.first.len() {
                me.first = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

/// An address as people write it: IPv4-mapped IPv6 addresses shown as IPv4.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
