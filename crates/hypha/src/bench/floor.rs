//! The forwarding floor: the cheapest overlay a TUN device and TCP can make, as a bench subject.
//!
//! `hypha bench-floor` (a hidden subcommand the bench starts in its namespaces) carries whole TUN
//! reads — the vnet header and the super-packet behind it, up to 64 KiB — over plain TCP to its
//! peers, each prefixed by a 4-byte big-endian length. There is no crypto, no splitting into
//! 1400-byte packets and no coalescing (super-packets travel whole), no routing protocol, no hop
//! limit and no wire format to keep. What remains is what every user-space TUN + TCP overlay pays
//! per byte on each node — a TUN read, a socket send, a socket receive and a TUN write (a relay:
//! a socket receive and a socket send) — and the threads that do it. Its figures therefore bound
//! what any such overlay can reach on the machine, hypha included, and the bench shows them next
//! to hypha's.
//!
//! Each connection starts with a hello record in both directions: the sender's overlay address
//! (16 bytes). A record whose IPv6 destination is the node's own address is written to its TUN;
//! any other goes to the peer that announced that address, else (when the node has exactly one
//! peer) to its one peer, else it is dropped.
//!
//! Threads: one reads the TUN — waits until it is readable, then drains it (up to [`BATCH`] bytes)
//! into one buffer of records and sends the buffer with one `write`; one per connection reads the
//! socket into a large buffer, writes each record addressed to the node to the TUN, and sends runs
//! of consecutive records passing through straight from the read buffer. Sockets are blocking
//! with `TCP_NODELAY` and the kernel's default buffer sizes.

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tun::{Config, Tun};

use crate::cli::FloorArgs;

/// The length prefix of a record.
const LEN: usize = 4;
/// The largest record: a vnet header and a 64 KiB packet.
const MAX_RECORD: usize = tun::VNET_HDR_MAX + tun::MAX_PACKET;
/// Bytes of records the TUN reader gathers before it sends.
const BATCH: usize = 256 * 1024;
/// The socket read buffer of each connection.
const READ_BUF: usize = 1024 * 1024;
/// The MTU of the floor's TUN: the same as a node's, so the inner flows are alike.
const MTU: u32 = 1400;
/// How long `--connect` keeps trying.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// One connected peer: the overlay address it announced and the sending half of its socket.
struct Peer {
    addr: Ipv6Addr,
    tx: Mutex<TcpStream>,
}

impl Peer {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.write_all(bytes)
    }
}

/// Where a record goes.
enum Next {
    Tun,
    Peer(Arc<Peer>),
    Drop,
}

struct Floor {
    tun: Tun,
    own: Ipv6Addr,
    /// Bytes of vnet header in front of every packet the TUN hands over (0 without offloads).
    hdr: usize,
    peers: RwLock<Vec<Arc<Peer>>>,
}

impl Floor {
    /// The destination of a record: its packet's IPv6 destination.
    fn route(&self, record: &[u8]) -> Next {
        let Some(dst) = record
            .get(self.hdr + 24..self.hdr + 40)
            .filter(|_| record[self.hdr] >> 4 == 6)
        else {
            return Next::Drop;
        };
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(dst).unwrap_or([0; 16]));
        if dst == self.own {
            return Next::Tun;
        }
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.iter().find(|p| p.addr == dst) {
            return Next::Peer(p.clone());
        }
        match peers.as_slice() {
            [only] => Next::Peer(only.clone()),
            _ => Next::Drop,
        }
    }

    fn remove(&self, peer: &Arc<Peer>, why: &io::Error) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = peers.iter().position(|p| Arc::ptr_eq(p, peer)) {
            peers.remove(i);
            eprintln!("hypha bench-floor: peer {} gone: {why}", peer.addr);
        }
    }

    /// Sends `bytes` to `peer`; a peer that fails is dropped.
    fn send(&self, peer: &Arc<Peer>, bytes: &[u8]) {
        if let Err(e) = peer.send(bytes) {
            self.remove(peer, &e);
        }
    }

    /// The TUN reader: drains the device into a buffer of records for one peer at a time.
    fn tun_loop(&self) -> io::Result<()> {
        let mut buf = vec![0u8; BATCH + LEN + MAX_RECORD + 1];
        loop {
            self.tun.wait_readable(None)?;
            let mut used = 0;
            let mut to: Option<Arc<Peer>> = None;
            while used < BATCH {
                let n = match self.tun.read_raw(&mut buf[used + LEN..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                let rec = used + LEN..used + LEN + n;
                let Next::Peer(p) = self.route(&buf[rec.clone()]) else {
                    continue;
                };
                if let Some(t) = to.as_ref().filter(|t| !Arc::ptr_eq(t, &p)) {
                    self.send(t, &buf[..used]);
                    buf.copy_within(rec.clone(), LEN);
                    used = 0;
                }
                buf[used..used + LEN].copy_from_slice(&(n as u32).to_be_bytes());
                used += LEN + n;
                to = Some(p);
            }
            if let Some(t) = &to {
                self.send(t, &buf[..used]);
            }
        }
    }

    /// The reader of one connection: records for this node go to the TUN, runs of records for
    /// another peer are sent from the read buffer as they are.
    fn peer_loop(&self, mut rx: TcpStream, from: &Arc<Peer>) -> io::Result<()> {
        let mut buf = vec![0u8; READ_BUF];
        let (mut start, mut end) = (0, 0);
        loop {
            let n = rx.read(&mut buf[end..])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            end += n;
            let mut run: Option<(Arc<Peer>, usize)> = None;
            while end - start >= LEN {
                let len = u32::from_be_bytes([
                    buf[start],
                    buf[start + 1],
                    buf[start + 2],
                    buf[start + 3],
                ]) as usize;
                if len > MAX_RECORD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("record of {len} bytes from {}", from.addr),
                    ));
                }
                if end - start < LEN + len {
                    break;
                }
                let rec = &buf[start + LEN..start + LEN + len];
                match self.route(rec) {
                    Next::Peer(p) if run.as_ref().is_some_and(|(q, _)| Arc::ptr_eq(q, &p)) => {}
                    next => {
                        if let Some((q, from)) = run.take() {
                            self.send(&q, &buf[from..start]);
                        }
                        match next {
                            Next::Tun => {
                                // A packet the kernel refuses is lost, as on a wire.
                                let _ = self.tun.write_raw(rec);
                            }
                            Next::Peer(p) => run = Some((p, start)),
                            Next::Drop => {}
                        }
                    }
                }
                start += LEN + len;
            }
            if let Some((q, from)) = run.take() {
                self.send(&q, &buf[from..start]);
            }
            if start == end {
                (start, end) = (0, 0);
            } else if buf.len() - end < LEN + MAX_RECORD {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            }
        }
    }

    /// Exchanges hellos on a new connection, registers the peer and reads from it until it fails.
    fn serve(self: &Arc<Self>, stream: TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let mut hello = [0u8; LEN + 16];
        hello[..LEN].copy_from_slice(&16u32.to_be_bytes());
        hello[LEN..].copy_from_slice(&self.own.octets());
        (&stream).write_all(&hello)?;
        (&stream).read_exact(&mut hello)?;
        if hello[..LEN] != 16u32.to_be_bytes() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no hello"));
        }
        let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&hello[LEN..]).unwrap_or([0; 16]));
        let peer = Arc::new(Peer {
            addr,
            tx: Mutex::new(stream.try_clone()?),
        });
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(peer.clone());
        let floor = self.clone();
        std::thread::spawn(move || {
            if let Err(e) = floor.peer_loop(stream, &peer) {
                floor.remove(&peer, &e);
            }
        });
        Ok(())
    }
}

fn connect(to: SocketAddr) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow!("cannot connect to {to}: {e}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `hypha bench-floor`: runs one floor node until it is killed.
pub fn run(args: &FloorArgs) -> anyhow::Result<()> {
    if args.listen.is_empty() && args.connect.is_empty() {
        bail!("bench-floor: give --listen and/or --connect");
    }
    let mut cfg = Config::new(args.tun.clone());
    cfg.offload = !args.no_offload;
    let tun = Tun::open(&cfg).with_context(|| format!("cannot open TUN '{}'", args.tun))?;
    tun.set_mtu(MTU)?;
    tun.add_ipv6(args.addr, 64)?;
    tun.up()?;
    let hdr = tun.capabilities().vnet_hdr_len;
    let floor = Arc::new(Floor {
        tun,
        own: args.addr,
        hdr,
        peers: RwLock::new(Vec::new()),
    });
    for addr in &args.listen {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let floor = floor.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = floor.serve(stream) {
                    eprintln!("hypha bench-floor: incoming connection: {e}");
                }
            }
        });
    }
    for addr in &args.connect {
        floor
            .serve(connect(*addr)?)
            .with_context(|| format!("hello with {addr}"))?;
    }
    floor.tun_loop().context("TUN read")
}
