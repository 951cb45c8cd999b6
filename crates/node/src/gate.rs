//! The gate in front of the peer port: an accepted connection is not a link until it proves
//! itself by sending one well-formed frame (every mycelium and hypha node sends its Update for
//! its own subnet at once on a new connection) within [`GateLimits::proof_timeout`]. Until then
//! it costs a small task and the bytes it sent — no link tasks, no read buffer of its own, no
//! second descriptor, no slot in the routing core, nothing in the owner.
//!
//! Unproven connections are capped per source (an IPv4 address, an IPv6 /64): over the cap a new
//! one is closed at once, so one address opening thousands of idle connections costs the node
//! nothing. They are capped in total too, and there a new connection is never refused: the
//! oldest unproven one is closed to make room. A flood from many addresses then only shortens
//! how long each unproven connection may wait, while a legitimate peer, which proves itself in
//! a round trip, still gets in. Accepting never waits for the owner: only a proven connection
//! is handed over, by its own task.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use wire::frame::{Frame, StreamDecoder, MAX_FRAME_LEN};

/// The gate's limits (flags `--max-unproven-peers`, `--max-unproven-per-source`,
/// `--peer-proof-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Unproven connections at once, from everywhere.
    pub max_unproven: usize,
    /// Unproven connections at once from one source (IPv4 address, IPv6 /64).
    pub max_unproven_per_source: usize,
    /// How long a new connection has to send its first well-formed frame.
    pub proof_timeout: Duration,
}

impl Default for GateLimits {
    fn default() -> GateLimits {
        GateLimits {
            max_unproven: 512,
            max_unproven_per_source: 8,
            proof_timeout: Duration::from_secs(10),
        }
    }
}

/// Bytes an unproven connection may send before its first frame is complete: one frame of the
/// largest size (a frame that long must still be whole to prove anything).
const MAX_UNPROVEN_BYTES: usize = MAX_FRAME_LEN;
/// The first read's buffer; it grows only as a long first frame needs.
const FIRST_READ: usize = 512;

/// What happened to connections at the gate, by outcome.
#[derive(Default, Debug)]
pub struct GateStats {
    /// Proven and handed to the owner as links.
    pub proven: AtomicU64,
    /// Closed unproven to make room for a newer one: the cap on unproven connections in total
    /// was reached.
    pub evicted: AtomicU64,
    /// Closed at once: their source had the most unproven connections it may have.
    pub refused_source: AtomicU64,
    /// Closed: no well-formed frame within the proof timeout.
    pub timed_out: AtomicU64,
    /// Closed: the first bytes were not the protocol (broken framing, or no frame in the first
    /// maximum frame's worth of bytes).
    pub malformed: AtomicU64,
    /// Closed by the remote end (or failing) before proving anything.
    pub closed: AtomicU64,
    /// Unproven connections now.
    pub unproven: AtomicU64,
}

/// The source an unproven connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Net(u64),
}

fn source_of(addr: SocketAddr) -> Source {
    match addr.ip() {
        IpAddr::V4(a) => Source::V4(a.into()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Source::V4(v4.into()),
            None => Source::V6Net((u128::from(a) >> 64) as u64),
        },
    }
}

/// The unproven connections now, in total and by source, and their eviction signals, oldest
/// first.
#[derive(Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
    order: VecDeque<(u64, Arc<Notify>)>,
    next_id: u64,
}

/// The gate: limits, the unproven connections now, and what happened so far.
pub struct Gate {
    limits: GateLimits,
    counts: Mutex<Counts>,
    pub stats: Arc<GateStats>,
}

/// An unproven connection's place under the caps; given back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    source: Source,
    id: u64,
    /// Notified when the connection is closed to make room for a newer one.
    evict: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = c.order.iter().position(|(id, _)| *id == self.id) {
            c.order.remove(i);
        }
        c.total = c.total.saturating_sub(1);
        self.gate.stats.unproven.store(c.total as u64, Relaxed);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// Why a connection did not prove itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TimedOut,
    Malformed,
    Closed,
    Evicted,
}

impl Gate {
    pub fn new(limits: GateLimits, stats: Arc<GateStats>) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            counts: Mutex::default(),
            stats,
        })
    }

    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// A place for a new connection from `remote`, or `None` (counted) when its source has
    /// all the unproven connections it may have. At the total cap the oldest unproven
    /// connection is told to close.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Option<Ticket> {
        let source = source_of(remote);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.by_source.get(&source).copied().unwrap_or(0) >= self.limits.max_unproven_per_source {
            self.stats.refused_source.fetch_add(1, Relaxed);
            return None;
        }
        if c.total >= self.limits.max_unproven {
            // Its place is given back when its task ends, at once: it is notified.
            if let Some((_, oldest)) = c.order.pop_front() {
                oldest.notify_one();
            }
        }
        *c.by_source.entry(source).or_insert(0) += 1;
        c.total += 1;
        let id = c.next_id;
        c.next_id += 1;
        let evict = Arc::new(Notify::new());
        c.order.push_back((id, evict.clone()));
        self.stats.unproven.store(c.total as u64, Relaxed);
        Some(Ticket {
            gate: self.clone(),
            source,
            id,
            evict,
        })
    }

    /// Unproven connections now.
    pub fn unproven(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Waits for the connection's first well-formed frame: the bytes read so far (the frame
    /// included), which the link reads first; or why not (counted).
    pub async fn prove<R: AsyncRead + Unpin>(
        &self,
        ticket: &Ticket,
        stream: &mut R,
    ) -> Result<Vec<u8>, Refusal> {
        self.within(ticket, first_frame(stream)).await
    }

    /// Runs `proof` (a QUIC handshake, its stream and first frame, say) under the proof
    /// deadline and the ticket's eviction, and counts how it ended.
    pub async fn within<T>(
        &self,
        ticket: &Ticket,
        proof: impl std::future::Future<Output = Result<T, Refusal>>,
    ) -> Result<T, Refusal> {
        let r = tokio::select! {
            r = tokio::time::timeout(self.limits.proof_timeout, proof) => {
                r.unwrap_or(Err(Refusal::TimedOut))
            }
            () = ticket.evict.notified() => Err(Refusal::Evicted),
        };
        let counter = match r {
            Ok(_) => &self.stats.proven,
            Err(Refusal::TimedOut) => &self.stats.timed_out,
            Err(Refusal::Malformed) => &self.stats.malformed,
            Err(Refusal::Closed) => &self.stats.closed,
            Err(Refusal::Evicted) => &self.stats.evicted,
        };
        counter.fetch_add(1, Relaxed);
        r
    }
}

/// Reads until the bytes hold one complete, well-formed frame (a control TLV or a data frame).
pub(crate) async fn first_frame<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Vec<u8>, Refusal> {
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    let mut proof = Proof::default();
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_UNPROVEN_BYTES {
                return Err(Refusal::Malformed);
            }
            buf.reserve((buf.len()).min(MAX_UNPROVEN_BYTES - buf.len()));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| Refusal::Closed)?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        if proof.proves(&buf)? {
            return Ok(buf);
        }
    }
}

/// Decoding the start of a connection as it arrives: each byte is decoded once, however the
/// bytes are cut into reads (a sender trickling bytes gets linear work, not quadratic).
#[derive(Default)]
struct Proof {
    dec: StreamDecoder,
    /// Bytes of the connection decoded so far.
    pos: usize,
}

impl Proof {
    /// Whether the connection's bytes so far (`bytes`, the ones seen before included) hold a
    /// well-formed frame: `Ok(false)` while more are needed; `Err` when the framing is broken.
    fn proves(&mut self, bytes: &[u8]) -> Result<bool, Refusal> {
        loop {
            let d = self
                .dec
                .decode(&bytes[self.pos..])
                .map_err(|_| Refusal::Malformed)?;
            self.pos += d.consumed;
            match d.frame {
                Some(Frame::Control(_) | Frame::Data { .. }) => return Ok(true),
                // A TLV the decoder skips (unknown or malformed) proves nothing; go on.
                Some(Frame::Skipped(_)) => {}
                None => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn limits(total: usize, per_source: usize) -> GateLimits {
        GateLimits {
            max_unproven: total,
            max_unproven_per_source: per_source,
            proof_timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn the_per_source_cap_refuses_and_the_total_cap_evicts_the_oldest() {
        let gate = Gate::new(limits(5, 2), Arc::default());
        let a: SocketAddr = "198.18.0.1:1000".parse().unwrap();
        let a2: SocketAddr = "[::ffff:198.18.0.1]:1001".parse().unwrap();
        let b: SocketAddr = "[fd00:1:2:3::1]:5".parse().unwrap();
        let b_same_64: SocketAddr = "[fd00:1:2:3::99]:6".parse().unwrap();
        let c: SocketAddr = "[fd00:1:2:4::1]:5".parse().unwrap();
        let t1 = gate.admit(a).unwrap();
        let t2 = gate.admit(a2).unwrap();
        // The same IPv4 address, mapped or not: its two places are taken.
        assert!(gate.admit(a).is_none());
        let _t3 = gate.admit(b).unwrap();
        let _t4 = gate.admit(b_same_64).unwrap();
        assert!(gate.admit(b).is_none());
        let _t5 = gate.admit(c).unwrap();
        assert_eq!(gate.stats.refused_source.load(Relaxed), 2);
        assert_eq!(gate.unproven(), 5);
        // Five in total: a newcomer gets in, and the oldest is told to go.
        let t6 = gate.admit("198.18.9.9:1".parse().unwrap()).unwrap();
        assert!(notified(&t1.evict));
        assert!(!notified(&t2.evict));
        drop(t1);
        assert_eq!(gate.unproven(), 5);
        assert_eq!(gate.stats.unproven.load(Relaxed), 5);
        drop(t6);
        assert_eq!(gate.unproven(), 4);
        assert_eq!(gate.stats.unproven.load(Relaxed), 4);
        // The evicted one's source has its place back.
        assert!(gate.admit(a).is_some());
    }

    /// Whether a `notify_one` waits to be taken by this `Notify`'s next waiter.
    fn notified(n: &Notify) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), n.notified())
                .await
                .is_ok()
        })
    }

    /// Our own encoding of an Update for a /64 (the frame a node sends first).
    fn update_frame() -> Vec<u8> {
        use wire::babel::{Metric, Prefix, RouterId, SeqNo, Subnet, Tlv, Update};
        let subnet = Subnet::new("4aa:1:2:3::".parse().unwrap(), 64).unwrap();
        let tlv = Tlv::Update(Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(1),
            metric: Metric(0),
            prefix: Prefix::V6(subnet),
            router_id: RouterId::new([1; 32], [2; 6]),
        });
        let mut out = Vec::new();
        wire::frame::encode_control(&mut out, &tlv).unwrap();
        out
    }

    #[test]
    fn a_frame_proves_a_connection_and_broken_framing_refuses_it() {
        let f = update_frame();
        for cut in 0..f.len() {
            assert_eq!(Proof::default().proves(&f[..cut]), Ok(false), "{cut} bytes");
        }
        assert_eq!(Proof::default().proves(&f), Ok(true));
        // Byte by byte, decoding where it left off.
        let mut p = Proof::default();
        for cut in 1..f.len() {
            assert_eq!(p.proves(&f[..cut]), Ok(false), "{cut} bytes");
        }
        assert_eq!(p.proves(&f), Ok(true));
        // An HTTP request is not the protocol.
        assert_eq!(
            Proof::default().proves(b"GET / HTTP/1.1\r\n\r\n"),
            Err(Refusal::Malformed)
        );
    }

    #[tokio::test]
    async fn proving_reads_the_first_frame_or_times_out_or_sees_the_end() {
        let gate = Gate::new(limits(10, 10), Arc::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let frame = update_frame();

        // A peer that sends its Update in two pieces, and more behind it.
        let f = frame.clone();
        let peer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(at).await.unwrap();
            s.write_all(&f[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(&f[5..]).await.unwrap();
            s
        });
        let (mut s, from) = l.accept().await.unwrap();
        let t = gate.admit(from).unwrap();
        let got = gate.prove(&t, &mut s).await.unwrap();
        assert!(got.starts_with(&frame), "{} bytes", got.len());
        let _keep = peer.await.unwrap();

        // One that says nothing.
        let _idle = TcpStream::connect(at).await.unwrap();
        let (mut s, from) = l.accept().await.unwrap();
        let t = gate.admit(from).unwrap();
        assert_eq!(gate.prove(&t, &mut s).await, Err(Refusal::TimedOut));

        // One that hangs up.
        drop(TcpStream::connect(at).await.unwrap());
        let (mut s, from) = l.accept().await.unwrap();
        let t = gate.admit(from).unwrap();
        assert_eq!(gate.prove(&t, &mut s).await, Err(Refusal::Closed));

        assert_eq!(gate.stats.proven.load(Relaxed), 1);
        assert_eq!(gate.stats.timed_out.load(Relaxed), 1);
        assert_eq!(gate.stats.closed.load(Relaxed), 1);
    }
}
