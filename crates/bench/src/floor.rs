//! The forwarding floor: the cheapest overlay a TUN device and TCP can make, as a bench subject.
//!
//! `hypha-bench floor` (a hidden subcommand the bench starts in its namespaces) carries whole TUN
//! reads — the vnet header and the super-packet behind it, up to 64 KiB — over plain TCP to its
//! peers, each prefixed by a 4-byte big-endian length. There is no crypto, no splitting into
//! 1400-byte packets and no coalescing (super-packets travel whole), no routing protocol, no hop
//! limit and no wire format to keep. What remains is what every user-space TUN + TCP overlay pays
//! per byte on each node — a TUN read, a socket send, a socket receive and a TUN write (a relay:
//! a socket receive and a socket send) — and the threads that do it. Its figures therefore bound
//! what any such overlay can reach on the machine, hypha included, and the bench shows them next
//! to hypha's.
//!
//! With `--seal` (the bench's "floor+aes") it also does the one other piece of work that every
//! node speaking the wire protocol must do: AES-256-GCM over each packet, in 1400-byte pieces as
//! the protocol's packets are. The packet after its IPv6 header is sealed in place in 1400-byte
//! chunks (ring, as hypha uses), one 16-byte tag per chunk appended; the receiver opens and
//! checks every chunk before the packet goes to its TUN; relays pass records on unopened. The
//! record then starts with the 8-byte counter its nonces derive from and the packet's length.
//! This is a cost model, not a secure channel: the key is a public constant.
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
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{anyhow, bail, Context};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use tun::{Config, Tun};

use crate::cli::FloorArgs;

/// The length prefix of a record.
const LEN: usize = 4;
/// The largest TUN read: a vnet header and a 64 KiB packet.
const MAX_READ: usize = tun::VNET_HDR_MAX + tun::MAX_PACKET;
/// Bytes of records the TUN reader gathers before it sends.
const BATCH: usize = 256 * 1024;
/// The socket read buffer of each connection.
const READ_BUF: usize = 1024 * 1024;
/// The MTU of the floor's TUN: the same as a node's, so the inner flows are alike.
const MTU: u32 = 1400;
/// Bytes of packet per AES-GCM seal with `--seal`: one overlay packet's worth.
const CHUNK: usize = 1400;
const TAG: usize = 16;
/// A sealed record starts with its nonce counter (8 bytes) and its packet's length (4).
const SEAL_HEAD: usize = 12;
/// Room for the tags of the largest record.
const MAX_TAGS: usize = (MAX_READ / CHUNK + 1) * TAG;
/// The largest record on the wire: a TUN read, sealed or not.
const MAX_RECORD: usize = SEAL_HEAD + MAX_READ + MAX_TAGS;
/// `--seal`'s key: public — the floor does the work of a secure channel without being one.
const KEY: &[u8; 32] = b"hypha bench floor: not a secret!";
/// How long a new connection has to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(5);
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

/// `--seal`: the key and the counter that makes every record's nonces unique.
struct Sealer {
    key: LessSafeKey,
    counter: AtomicU64,
}

impl Sealer {
    fn new() -> Sealer {
        let key = UnboundKey::new(&AES_256_GCM, KEY).unwrap_or_else(|_| unreachable!("32 bytes"));
        Sealer {
            key: LessSafeKey::new(key),
            // Distinct per process, so two nodes never seal under the same nonce.
            counter: AtomicU64::new(u64::from(std::process::id()) << 40),
        }
    }

    fn nonce(counter: u64, chunk: usize) -> Nonce {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&counter.to_be_bytes());
        n[8..].copy_from_slice(&(chunk as u32).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Seals the packet at `rec[SEAL_HEAD..][..n]` from byte `from` on, in place, writes the
    /// record head in front and the tags behind it. Returns the record's length.
    fn seal(&self, rec: &mut [u8], n: usize, from: usize) -> usize {
        let counter = self.counter.fetch_add(1, Relaxed);
        rec[..8].copy_from_slice(&counter.to_be_bytes());
        rec[8..SEAL_HEAD].copy_from_slice(&(n as u32).to_be_bytes());
        let (body, tags) = rec[SEAL_HEAD..].split_at_mut(n);
        let mut t = 0;
        for (i, chunk) in body[from.min(n)..].chunks_mut(CHUNK).enumerate() {
            let tag = self
                .key
                .seal_in_place_separate_tag(Self::nonce(counter, i), Aad::empty(), chunk)
                .unwrap_or_else(|_| unreachable!("AES-GCM input within limits"));
            tags[t..t + TAG].copy_from_slice(tag.as_ref());
            t += TAG;
        }
        SEAL_HEAD + n + t
    }

    /// Opens a sealed record in place; the packet, or `None` when the record is malformed or a
    /// tag does not verify.
    fn open<'a>(&self, rec: &'a mut [u8], from: usize) -> Option<&'a [u8]> {
        let head: [u8; SEAL_HEAD] = rec.get(..SEAL_HEAD)?.try_into().ok()?;
        let counter = u64::from_be_bytes(head[..8].try_into().ok()?);
        let n = u32::from_be_bytes(head[8..].try_into().ok()?) as usize;
        let (body, tags) = rec[SEAL_HEAD..].split_at_mut_checked(n)?;
        let from = from.min(n);
        if tags.len() != (n - from).div_ceil(CHUNK) * TAG {
            return None;
        }
        for (i, (chunk, tag)) in body[from..]
            .chunks_mut(CHUNK)
            .zip(tags.chunks(TAG))
            .enumerate()
        {
            let tag = Tag::try_from(tag).ok()?;
            let nonce = Self::nonce(counter, i);
            self.key
                .open_in_place_separate_tag(nonce, Aad::empty(), tag, chunk, 0..)
                .ok()?;
        }
        Some(body)
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
    sealer: Option<Sealer>,
    peers: RwLock<Vec<Arc<Peer>>>,
    /// Records dropped: no route, too short to route, or (with `--seal`) failing to open.
    dropped: AtomicU64,
}

impl Floor {
    /// Bytes in front of the packet in a record.
    fn head(&self) -> usize {
        if self.sealer.is_some() {
            SEAL_HEAD
        } else {
            0
        }
    }

    /// Where sealing starts in a packet: past the vnet and IPv6 headers, which stay in the clear
    /// for routing, as an overlay's frame header does.
    fn sealed_from(&self) -> usize {
        self.hdr + 40
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// The destination of a packet (vnet header first): its IPv6 destination.
    fn route(&self, packet: &[u8]) -> Next {
        let Some(dst) = packet
            .get(self.hdr + 24..self.hdr + 40)
            .filter(|_| packet[self.hdr] >> 4 == 6)
        else {
            return Next::Drop;
        };
        let dst = ipv6_at(dst);
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
            eprintln!("hypha-bench floor: peer {} gone: {why}", peer.addr);
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
        let head = self.head();
        let mut buf = vec![0u8; BATCH + LEN + MAX_RECORD + 1];
        loop {
            self.tun.wait_readable(None)?;
            let mut used = 0;
            let mut to: Option<Arc<Peer>> = None;
            while used < BATCH {
                let at = used + LEN + head;
                let n = match self.tun.read_raw(&mut buf[at..at + MAX_READ + 1]) {
                    Ok(n) if n > MAX_READ => {
                        self.drop_one();
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                };
                let Next::Peer(p) = self.route(&buf[at..at + n]) else {
                    self.drop_one();
                    continue;
                };
                if let Some(t) = to.as_ref().filter(|t| !Arc::ptr_eq(t, &p)) {
                    self.send(t, &buf[..used]);
                    buf.copy_within(at..at + n, LEN + head);
                    used = 0;
                }
                let rec = &mut buf[used + LEN..];
                let len = match &self.sealer {
                    Some(s) => s.seal(rec, n, self.sealed_from()),
                    None => n,
                };
                buf[used..used + LEN].copy_from_slice(&(len as u32).to_be_bytes());
                used += LEN + len;
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
        let head = self.head();
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
                let rec = start + LEN..start + LEN + len;
                match self.route(buf.get(rec.start + head..rec.end).unwrap_or_default()) {
                    Next::Peer(p) if run.as_ref().is_some_and(|(q, _)| Arc::ptr_eq(q, &p)) => {}
                    next => {
                        if let Some((q, run_start)) = run.take() {
                            self.send(&q, &buf[run_start..start]);
                        }
                        match next {
                            Next::Tun => {
                                let packet = match &self.sealer {
                                    Some(s) => s.open(&mut buf[rec], self.sealed_from()),
                                    None => Some(&buf[rec]),
                                };
                                match packet {
                                    // A packet the kernel refuses is lost, as on a wire.
                                    Some(p) => drop(self.tun.write_raw(p)),
                                    None => self.drop_one(),
                                }
                            }
                            Next::Peer(p) => run = Some((p, start)),
                            Next::Drop => self.drop_one(),
                        }
                    }
                }
                start += LEN + len;
            }
            if let Some((q, run_start)) = run.take() {
                self.send(&q, &buf[run_start..start]);
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
        // A connection that never says hello must not hold up the acceptor.
        stream.set_read_timeout(Some(HELLO_WAIT))?;
        let mut hello = [0u8; LEN + 16];
        hello[..LEN].copy_from_slice(&16u32.to_be_bytes());
        hello[LEN..].copy_from_slice(&self.own.octets());
        (&stream).write_all(&hello)?;
        (&stream).read_exact(&mut hello)?;
        if hello[..LEN] != 16u32.to_be_bytes() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no hello"));
        }
        stream.set_read_timeout(None)?;
        let addr = ipv6_at(&hello[LEN..]);
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

/// The IPv6 address in the first 16 bytes of `b` (`::` when it is shorter).
fn ipv6_at(b: &[u8]) -> Ipv6Addr {
    b.get(..16)
        .and_then(|a| <[u8; 16]>::try_from(a).ok())
        .map_or(Ipv6Addr::UNSPECIFIED, Ipv6Addr::from)
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

/// `hypha-bench floor`: runs one floor node until it is killed.
pub fn run(args: &FloorArgs) -> anyhow::Result<()> {
    if args.listen.is_empty() && args.connect.is_empty() {
        bail!("floor: give --listen and/or --connect");
    }
    let mut cfg = Config::new(args.tun.clone());
    cfg.offload = !args.no_offload && !args.udp;
    let tun = Tun::open(&cfg).with_context(|| format!("cannot open TUN '{}'", args.tun))?;
    tun.set_mtu(MTU)?;
    tun.add_ipv6(args.addr, 64)?;
    tun.up()?;
    if args.udp {
        return run_udp(args, tun);
    }
    let hdr = tun.capabilities().vnet_hdr_len;
    let floor = Arc::new(Floor {
        tun,
        own: args.addr,
        hdr,
        sealer: args.seal.then(Sealer::new),
        peers: RwLock::new(Vec::new()),
        dropped: AtomicU64::new(0),
    });
    for addr in &args.listen {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let floor = floor.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = floor.serve(stream) {
                    eprintln!("hypha-bench floor: incoming connection: {e}");
                }
            }
        });
    }
    for addr in &args.connect {
        floor
            .serve(connect(*addr)?)
            .with_context(|| format!("hello with {addr}"))?;
    }
    let watch = floor.clone();
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            std::thread::sleep(Duration::from_secs(5));
            let now = watch.dropped.load(Relaxed);
            if now != seen {
                eprintln!("hypha-bench floor: {now} records dropped so far");
                seen = now;
            }
        }
    });
    floor.tun_loop().context("TUN read")
}

/// `--udp`: the floor of a datagram transport between two nodes. Each packet the TUN gives (no
/// offloads: one packet of at most the MTU a read) goes to the one peer as one UDP datagram, and
/// each datagram received goes to the TUN: no stream, so a datagram lost on the way delays
/// nothing behind it, and the inner flows see the link's losses as they would without an
/// overlay. The side with `--connect` says hello (its overlay address, 16 bytes) until it hears
/// anything; the side with `--listen` sends to whoever said hello last.
fn run_udp(args: &FloorArgs, tun: Tun) -> anyhow::Result<()> {
    let (sock, peer) = match (args.listen.as_slice(), args.connect.as_slice()) {
        ([l], []) => (
            UdpSocket::bind(l).with_context(|| format!("cannot bind {l}"))?,
            None,
        ),
        ([], [c]) => {
            let any: SocketAddr = if c.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(any).context("cannot bind a UDP socket")?;
            (s, Some(*c))
        }
        _ => bail!("floor --udp: give one --listen or one --connect"),
    };
    let sock = Arc::new(sock);
    let to: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(peer));
    let heard = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let own = args.addr.octets();
    if let Some(c) = peer {
        let (sock, heard) = (sock.clone(), heard.clone());
        std::thread::spawn(move || {
            while !heard.load(Relaxed) {
                // Lost hellos are said again; a failed send is tried again the same way.
                drop(sock.send_to(&own, c));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let tun = Arc::new(tun);
    {
        let (sock, to, tun) = (sock.clone(), to.clone(), tun.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                heard.store(true, Relaxed);
                if n == own.len() {
                    let mut t = to.lock().unwrap_or_else(|p| p.into_inner());
                    if peer.is_none() && *t != Some(from) {
                        *t = Some(from);
                        // Answered, so the other side stops saying hello.
                        drop(sock.send_to(&own, from));
                    }
                    continue;
                }
                // A packet the kernel refuses is lost, as on a wire.
                drop(tun.write_raw(&buf[..n]));
            }
        });
    }
    let mut buf = vec![0u8; MAX_READ + 1];
    loop {
        tun.wait_readable(None)?;
        loop {
            let n = match tun.read_raw(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("TUN read"),
            };
            let dest = *to.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = dest {
                // A full socket buffer or an unreachable peer loses the packet, as a router
                // would.
                drop(sock.send_to(&buf[..n], d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vnet header (10 bytes) and an IPv6 packet of `len` bytes with a patterned payload.
    fn packet(len: usize) -> Vec<u8> {
        let mut p: Vec<u8> = (0..10 + len).map(|i| (i * 7 + 3) as u8).collect();
        p[10] = 0x60;
        p
    }

    /// A record as the TUN reader builds it: the packet behind the head, room for tags.
    fn sealed(s: &Sealer, p: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; SEAL_HEAD + p.len() + MAX_TAGS];
        rec[SEAL_HEAD..SEAL_HEAD + p.len()].copy_from_slice(p);
        let len = s.seal(&mut rec, p.len(), 50);
        rec.truncate(len);
        rec
    }

    #[test]
    fn sealed_records_open_to_the_packet() {
        let s = Sealer::new();
        for len in [40, 41, 1400, 1440, 1441, 2840, 65535] {
            let p = packet(len);
            let mut rec = sealed(&s, &p);
            let chunks = (p.len() - 50).div_ceil(CHUNK);
            assert_eq!(rec.len(), SEAL_HEAD + p.len() + chunks * TAG, "{len}");
            // The headers stay in the clear, the rest does not.
            assert_eq!(rec[SEAL_HEAD..SEAL_HEAD + 50], p[..50]);
            // (At least 16 sealed bytes: a shorter ciphertext equals its plaintext by chance
            // too often — 1 in 256 for one byte.)
            if p.len() >= 50 + 16 {
                assert_ne!(rec[SEAL_HEAD + 50..SEAL_HEAD + p.len()], p[50..], "{len}");
            }
            assert_eq!(s.open(&mut rec, 50), Some(&p[..]), "{len}");
        }
    }

    #[test]
    fn every_record_gets_its_own_nonces() {
        let s = Sealer::new();
        let p = packet(3000);
        let (a, b) = (sealed(&s, &p), sealed(&s, &p));
        assert_ne!(a[..8], b[..8]);
        assert_ne!(a[SEAL_HEAD + 50..], b[SEAL_HEAD + 50..]);
    }

    #[test]
    fn damaged_records_do_not_open() {
        let s = Sealer::new();
        let p = packet(3000);
        let good = sealed(&s, &p);
        // A flipped bit anywhere past the clear headers: counter, length, ciphertext, tags.
        for at in [0, 7, 9, SEAL_HEAD + 60, SEAL_HEAD + 2000, good.len() - 1] {
            let mut rec = good.clone();
            rec[at] ^= 0x10;
            assert_eq!(s.open(&mut rec, 50), None, "bit flipped at {at}");
        }
        // A tag missing, one too many, a head cut short.
        let mut short = good[..good.len() - TAG].to_vec();
        assert_eq!(s.open(&mut short, 50), None);
        let mut long = good.clone();
        long.extend_from_slice(&[0; TAG]);
        assert_eq!(s.open(&mut long, 50), None);
        assert_eq!(s.open(&mut good.clone()[..5], 50), None);
    }
}
