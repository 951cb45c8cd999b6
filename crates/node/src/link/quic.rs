//! Links over QUIC, in the shape mycelium gives them (`docs/protocol.md` §3.4): the dialler opens
//! one bidirectional stream, which carries control frames with the TCP framing; data frames go
//! as QUIC datagrams, one frame each. A data frame that does not fit the datagram the path and
//! the peer take now (a full-size frame on a 1,500-byte path, a super-frame) goes on the stream
//! instead: every peer reads data frames there too. No datagram is ever larger than what the
//! QUIC stack says the path and the peer take, and a datagram it refuses is sent on the stream.
//!
//! The link layer sees a byte stream each way ([`Transport`]): the reader gives it the stream's
//! bytes and whole datagram frames, the latter only between two stream frames; the writer cuts
//! what it is given into frames and sends each the way it fits.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendDatagramError, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use wire::babel::RouterId;
use wire::frame::{OUTER_HEADER_LEN, PROTOCOL_VERSION, TYPE_CONTROL, TYPE_DATA};

use super::tcp::{canonical, Prefixed};
use super::Transport;
use crate::gate::{first_frame, Gate, Refusal};

/// The server name clients present, and servers ignore (mycelium's convention).
pub(crate) const SERVER_NAME: &str = "dummy.mycelium";
/// A connection with nothing received for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive packets on an idle connection.
const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Datagrams the QUIC stack may hold beyond what congestion control lets out: a queue, so kept
/// short (it is measured by queue management, see [`QuicLink::queue_wait`]); a full buffer
/// back-pressures the link's writer.
const DATAGRAM_SEND_BUFFER: usize = 256 * 1024;
/// Received datagrams the QUIC stack holds before the link reads them (the oldest are dropped
/// beyond it).
const DATAGRAM_RECEIVE_BUFFER: usize = 2 << 20;
/// Received datagrams handed from the connection to the link's reader ahead of it.
const DATAGRAM_QUEUE: usize = 1024;
/// A datagram larger than this is not a frame any peer sends over a real path: dropped.
const MAX_DATAGRAM_FRAME: usize = 16 * 1024;
/// Bytes of a connection's stream in flight or buffered unsent, and its receive windows. The
/// stream carries control frames and the few data frames that do not fit a datagram: short
/// windows keep a queue there small (queue management does not see it) and bound what a peer
/// can make us buffer (out-of-order data included).
const SEND_WINDOW: u64 = 1 << 20;
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
const RECEIVE_WINDOW: u32 = 2 << 20;
/// The receive window of an accepted connection until it has proved itself: all a stranger can
/// make us buffer on its stream.
const UNPROVEN_RECEIVE_WINDOW: u32 = 64 * 1024;
/// UDP socket buffers asked for (the kernel caps them at its maximum).
const SOCKET_BUFFER: usize = 4 << 20;
/// New connections that have not finished their handshake wait in the endpoint, at most.
const MAX_INCOMING: usize = 256;
/// Unproven connections beyond which a client must prove its address first (a QUIC retry, one
/// round trip, no state on our side): spoofed floods then cost nothing.
const RETRY_ABOVE_UNPROVEN: usize = 16;
/// The application error code a link closes its connection with.
const CLOSE_CODE: u32 = 0;

/// QUIC counters of the node (all links, exported as metrics).
#[derive(Default, Debug)]
pub struct QuicStats {
    /// Data frames sent as datagrams, and their bytes.
    pub datagrams_tx: AtomicU64,
    pub datagram_bytes_tx: AtomicU64,
    /// Frames received as datagrams, and their bytes.
    pub datagrams_rx: AtomicU64,
    pub datagram_bytes_rx: AtomicU64,
    /// Data frames sent on the stream because they did not fit a datagram.
    pub stream_fallbacks: AtomicU64,
    /// Datagrams refused by the QUIC stack as too large after the size check (the path's size
    /// went down); they went on the stream.
    pub datagrams_too_large: AtomicU64,
    /// Received datagrams that were not exactly one frame: counted and dropped.
    pub datagrams_malformed: AtomicU64,
    /// Connection attempts refused at once (the gate's per-source cap).
    pub handshakes_refused: AtomicU64,
    /// Connection attempts asked to prove their address first (retry).
    pub handshakes_retried: AtomicU64,
    /// Handshakes that failed or timed out, and connections that never proved themselves.
    pub handshakes_failed: AtomicU64,
    /// Connections accepted as links.
    pub accepted: AtomicU64,
    /// Connections dialled as links.
    pub dialled: AtomicU64,
}

/// The node's QUIC endpoint: one UDP socket, listening and dialling.
pub(crate) struct QuicEndpoint {
    ep: quinn::Endpoint,
    client: quinn::ClientConfig,
    pub stats: Arc<QuicStats>,
}

/// The congestion controller of QUIC links (`--quic-congestion`, hidden: for measurements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuicCongestion {
    /// BBR: paces by the measured bottleneck rate and does not take random loss for congestion.
    #[default]
    Bbr,
    /// CUBIC, quinn's default (and mycelium's): every loss cuts the window.
    Cubic,
    NewReno,
}

impl std::str::FromStr for QuicCongestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bbr" => Ok(QuicCongestion::Bbr),
            "cubic" => Ok(QuicCongestion::Cubic),
            "newreno" => Ok(QuicCongestion::NewReno),
            _ => Err(format!(
                "unknown congestion controller '{s}': expected bbr, cubic or newreno"
            )),
        }
    }
}

/// A server's and a client's transport: the same, but a server starts with the unproven
/// receive window, and a client takes no stream from the server.
fn transport_config(cc: QuicCongestion, server: bool) -> Arc<quinn::TransportConfig> {
    use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
    let mut t = quinn::TransportConfig::default();
    match cc {
        QuicCongestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
        QuicCongestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        QuicCongestion::NewReno => {
            t.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
        }
    };
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        // One stream, opened by the dialler; none other is wanted.
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .send_window(SEND_WINDOW)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(if server {
            UNPROVEN_RECEIVE_WINDOW
        } else {
            RECEIVE_WINDOW
        }));
    Arc::new(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS: a self-signed certificate naming the router id (nobody checks it: the
/// overlay authenticates its traffic end to end; mycelium's clients skip verification too).
fn server_config(router_id: &RouterId, cc: QuicCongestion) -> anyhow::Result<quinn::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec![router_id.to_string()])
        .or_else(|_| rcgen::generate_simple_self_signed(vec!["hypha".to_owned()]))?;
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config(cc, true))
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(4 << 20);
    Ok(cfg)
}

/// The client side: mycelium's server name, any certificate (see [`server_config`]).
pub fn client_config() -> anyhow::Result<quinn::ClientConfig> {
    client_config_with(QuicCongestion::default())
}

fn client_config_with(cc: QuicCongestion) -> anyhow::Result<quinn::ClientConfig> {
    let p = provider();
    let tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config(cc, false));
    Ok(cfg)
}

/// Accepts any server certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl QuicEndpoint {
    /// Binds the UDP socket (dual-stack on an IPv6 address) and starts the endpoint.
    pub fn bind(
        addr: SocketAddr,
        router_id: &RouterId,
        cc: QuicCongestion,
        stats: Arc<QuicStats>,
    ) -> anyhow::Result<QuicEndpoint> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(false)?;
        }
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        sock.bind(&addr.into())?;
        let ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config(router_id, cc)?),
            sock.into(),
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(QuicEndpoint {
            ep,
            client: client_config_with(cc)?,
            stats,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.ep.local_addr().ok()
    }

    /// Connects and opens the link's stream.
    pub async fn dial(&self, addr: SocketAddr) -> io::Result<QuicLink> {
        let connecting = self
            .ep
            .connect_with(self.client.clone(), addr, SERVER_NAME)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let conn = connecting.await.map_err(connection_error)?;
        let (send, recv) = conn.open_bi().await.map_err(connection_error)?;
        self.stats.dialled.fetch_add(1, Relaxed);
        Ok(QuicLink::new(
            conn,
            send,
            recv,
            Vec::new(),
            self.stats.clone(),
        ))
    }

    /// Accepts connections until `stop`: each proves itself (handshake, its stream and a first
    /// well-formed frame) under the gate's limits, in a task of its own, and is handed to
    /// `ready`.
    pub async fn accept_loop(
        self: Arc<Self>,
        gate: Arc<Gate>,
        ready: mpsc::Sender<(QuicLink, SocketAddr)>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let incoming = tokio::select! {
                i = self.ep.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
                _ = stop.changed() => return,
            };
            let remote = canonical(incoming.remote_address());
            // Many handshakes at once: a client proves its address before it costs any crypto.
            if gate.unproven() >= RETRY_ABOVE_UNPROVEN
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                self.stats.handshakes_retried.fetch_add(1, Relaxed);
                let _ = incoming.retry();
                continue;
            }
            let Some(ticket) = gate.admit(remote) else {
                self.stats.handshakes_refused.fetch_add(1, Relaxed);
                incoming.refuse();
                continue;
            };
            let (me, gate, ready) = (self.clone(), gate.clone(), ready.clone());
            tokio::spawn(async move {
                let proof = async {
                    let conn = incoming
                        .accept()
                        .map_err(|_| Refusal::Closed)?
                        .await
                        .map_err(|_| Refusal::Closed)?;
                    // Datagrams before the proof are dropped as they come: a stranger's must not
                    // pile up in the connection.
                    let discard = async {
                        while conn.read_datagram().await.is_ok() {}
                        std::future::pending::<()>().await;
                    };
                    let proof = async {
                        let (send, mut recv) =
                            conn.accept_bi().await.map_err(|_| Refusal::Closed)?;
                        let first = first_frame(&mut recv).await?;
                        Ok::<_, Refusal>((send, recv, first))
                    };
                    let (send, recv, first) = tokio::select! {
                        r = proof => r?,
                        () = discard => return Err(Refusal::Closed),
                    };
                    conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
                    Ok((conn, send, recv, first))
                };
                match gate.within(&ticket, proof).await {
                    Ok((conn, send, recv, first)) => {
                        drop(ticket);
                        me.stats.accepted.fetch_add(1, Relaxed);
                        let link = QuicLink::new(conn, send, recv, first, me.stats.clone());
                        let _ = ready.send((link, remote)).await;
                    }
                    Err(why) => {
                        me.stats.handshakes_failed.fetch_add(1, Relaxed);
                        debug!(%remote, ?why, "closed an unproven QUIC connection");
                    }
                }
            });
        }
    }

    /// Closes every connection and waits briefly for the peers to hear it.
    pub async fn close(&self) {
        self.ep.close(VarInt::from_u32(CLOSE_CODE), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ep.wait_idle()).await;
    }
}

fn connection_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())
}

/// A connected QUIC link: the connection and its one stream.
pub(crate) struct QuicLink {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    /// Stream bytes read while the connection proved itself; the link reads them first.
    first: Vec<u8>,
    stats: Arc<QuicStats>,
}

impl QuicLink {
    fn new(
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        first: Vec<u8>,
        stats: Arc<QuicStats>,
    ) -> QuicLink {
        QuicLink {
            conn,
            send,
            recv,
            first,
            stats,
        }
    }

    /// For an accepted connection from a peer we dialled at the same time: whether the one we
    /// dialled is the one both ends keep. It is the one dialled from the lower address (both
    /// ends compare the same two addresses); between two ends on one address, the newer wins.
    pub fn ours_is_kept(&self) -> bool {
        let remote = canonical(self.conn.remote_address()).ip();
        match self.conn.local_ip() {
            Some(ip) => canonical(SocketAddr::new(ip, 0)).ip() < remote,
            None => false,
        }
    }

    /// A handle to the connection, for its statistics.
    #[cfg(test)]
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }
}

/// The smallest MSS clamped to: IPv6's minimum MTU (1,280) less the IPv6 and TCP headers.
const MIN_MSS: usize = 1220;
/// IPv6 and TCP headers without options, which the MSS does not count.
const TCP_V6_HEADERS: usize = 40 + 20;

/// The MSS that keeps a frame carrying one inner TCP segment within the connection's datagrams
/// now, or `None` when a full-size frame fits (or the peer takes no datagrams at all).
pub(crate) fn mss_clamp(conn: &Connection) -> Option<u16> {
    let max = conn.max_datagram_size()?;
    let frame_overhead =
        wire::frame::DATA_FRAME_OVERHEAD + crypto::INNER_HEADER_LEN + crypto::SEAL_OVERHEAD;
    let mss = max.saturating_sub(frame_overhead + TCP_V6_HEADERS);
    if mss + TCP_V6_HEADERS >= crate::TUN_MTU as usize {
        return None;
    }
    u16::try_from(mss.max(MIN_MSS)).ok()
}

/// The path of a QUIC connection, as the QUIC stack measures it.
pub(crate) fn path(conn: &Connection) -> crate::control::QuicPath {
    let s = conn.stats();
    crate::control::QuicPath {
        rtt_us: u64::try_from(conn.rtt().as_micros()).unwrap_or(u64::MAX),
        cwnd: s.path.cwnd,
        sent_packets: s.path.sent_packets,
        lost_packets: s.path.lost_packets,
        datagram_max: conn.max_datagram_size().map(|m| m as u64),
        mtu: s.path.current_mtu,
    }
}

/// How long data now waits in a QUIC connection: the datagrams it holds at the rate
/// congestion control lets out (a window per round trip).
///
/// Unlike a TCP socket's, the path's queue (the round trip over its minimum) is left out: the
/// connection's RTT estimate changes only when it sends, and after an outage it stays as high
/// as the outage made it while queue management drops what would have refreshed it (seen: a
/// link that passed nothing but pings for 20 s after a 2 s outage). BBR, the links' congestion
/// controller, keeps the path's queue short by itself.
pub(crate) fn queue_wait(conn: &Connection) -> Duration {
    let held = DATAGRAM_SEND_BUFFER.saturating_sub(conn.datagram_send_buffer_space());
    if held == 0 {
        return Duration::ZERO;
    }
    let rtt = conn.rtt();
    let cwnd = conn.stats().path.cwnd;
    let rate = if rtt.is_zero() {
        0
    } else {
        (cwnd as f64 / rtt.as_secs_f64()) as u64
    };
    datapath::codel::socket_wait(u32::try_from(held).unwrap_or(u32::MAX), rate, rtt, rtt)
}

impl Transport for QuicLink {
    type Reader = QuicReader;
    type Writer = QuicWriter;

    fn static_cost(&self) -> u16 {
        match canonical(self.conn.remote_address()) {
            SocketAddr::V4(_) => routing::consts::STATIC_COST_QUIC4,
            SocketAddr::V6(_) => routing::consts::STATIC_COST_QUIC6,
        }
    }

    fn describe(&self) -> String {
        let remote = canonical(self.conn.remote_address());
        match self.conn.local_ip() {
            Some(ip) => format!(
                "QUIC {} <-> {remote}",
                canonical(SocketAddr::new(ip, 0)).ip()
            ),
            None => format!("QUIC <-> {remote}"),
        }
    }

    fn split(self) -> (QuicReader, QuicWriter) {
        let (tx, rx) = mpsc::channel(DATAGRAM_QUEUE);
        tokio::spawn(pump_datagrams(self.conn.clone(), tx));
        let reader = QuicReader {
            conn: self.conn.clone(),
            stream: Prefixed::new(self.first, self.recv),
            datagrams: rx,
            held: None,
            cursor: FrameCursor::default(),
            stats: self.stats.clone(),
        };
        let writer = QuicWriter {
            conn: self.conn,
            stream: self.send,
            stream_left: 0,
            head: Vec::new(),
            unwritten: Vec::new(),
            raw: false,
            waiting: None,
            backlog_wait: None,
            backlog: (DATAGRAM_SEND_BUFFER, None),
            stats: self.stats,
        };
        (reader, writer)
    }

    fn quic(&self) -> Option<Connection> {
        Some(self.conn.clone())
    }

    fn queue_probe(&self) -> Option<super::QueueProbe> {
        let conn = self.conn.clone();
        Some(Box::new(move || Some(queue_wait(&conn))))
    }
}

/// How long the writer waits before it looks again at datagrams held past [`datagram_backlog`]
/// (the timer's resolution).
const BACKLOG_RECHECK: Duration = Duration::from_millis(1);

/// The datagram bytes a connection may hold unsent: [`datapath::codel::SOCKET_BACKLOG`] at the
/// rate its congestion window allows (window over RTT), at least 16 KiB and at most the whole
/// send buffer — as a TCP link's unsent backlog is sized (`codel::notsent_lowat`). The QUIC
/// stack's buffer is a FIFO after the link's flow queues: at 50 Mbit/s its 256 KiB would be
/// 40 ms in front of every echo.
pub(crate) fn datagram_backlog(conn: &Connection) -> usize {
    backlog_at(conn.stats().path.cwnd, conn.rtt())
}

fn backlog_at(cwnd: u64, rtt: Duration) -> usize {
    if rtt.is_zero() {
        return DATAGRAM_SEND_BUFFER;
    }
    let rate = cwnd as f64 / rtt.as_secs_f64();
    let bytes = (rate * datapath::codel::SOCKET_BACKLOG.as_secs_f64()) as usize;
    bytes.clamp(16 * 1024, DATAGRAM_SEND_BUFFER)
}

/// Moves received datagrams from the connection to the link's reader until either goes.
async fn pump_datagrams(conn: Connection, tx: mpsc::Sender<Bytes>) {
    loop {
        let d = tokio::select! {
            d = conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        if tx.send(d).await.is_err() {
            return;
        }
    }
}

/// The length of the frame that starts with `head` (at least [`FRAME_HEAD`] bytes), or `None`
/// if it is not a frame of this protocol.
fn frame_len(head: &[u8]) -> Option<usize> {
    if head.len() < FRAME_HEAD || head[0] != PROTOCOL_VERSION {
        return None;
    }
    let body = |at: usize| usize::from(u16::from_be_bytes([head[at], head[at + 1]]));
    match head[1] {
        TYPE_DATA => Some(wire::frame::DATA_FRAME_OVERHEAD + body(OUTER_HEADER_LEN + 1)),
        TYPE_CONTROL => {
            Some(OUTER_HEADER_LEN + wire::frame::BABEL_HEADER_LEN + body(OUTER_HEADER_LEN + 2))
        }
        _ => None,
    }
}

/// Bytes of a frame that say how long it is (the outer header and the inner header's length).
const FRAME_HEAD: usize = 8;

/// Where a byte stream of frames is: inside a frame, or between two. Fed every byte once.
#[derive(Default, Debug)]
struct FrameCursor {
    head: [u8; FRAME_HEAD],
    have: usize,
    /// Bytes of the current frame still to come, once its head is known.
    left: usize,
    /// Not frames of this protocol: no boundary is known any more.
    broken: bool,
}

impl FrameCursor {
    fn at_boundary(&self) -> bool {
        !self.broken && self.have == 0 && self.left == 0
    }

    /// Bytes up to the end of the current frame, when known.
    fn to_boundary(&self) -> Option<usize> {
        (self.left > 0).then_some(self.left)
    }

    fn advance(&mut self, mut b: &[u8]) {
        while !b.is_empty() && !self.broken {
            if self.left > 0 {
                let n = self.left.min(b.len());
                self.left -= n;
                b = &b[n..];
                continue;
            }
            let n = (FRAME_HEAD - self.have).min(b.len());
            self.head[self.have..self.have + n].copy_from_slice(&b[..n]);
            self.have += n;
            b = &b[n..];
            if self.have == FRAME_HEAD {
                match frame_len(&self.head) {
                    Some(len) => {
                        self.left = len - FRAME_HEAD;
                        self.have = 0;
                    }
                    None => self.broken = true,
                }
            }
        }
    }
}

/// The link's reading side: the stream's bytes, with received datagram frames put between two
/// stream frames.
pub(crate) struct QuicReader {
    conn: Connection,
    /// The stream, after the bytes read while the connection proved itself.
    stream: Prefixed<RecvStream>,
    datagrams: mpsc::Receiver<Bytes>,
    /// A datagram that did not fit the caller's buffer yet.
    held: Option<Bytes>,
    cursor: FrameCursor,
    stats: Arc<QuicStats>,
}

impl Drop for QuicReader {
    fn drop(&mut self) {
        // The link is gone as a whole when either side is.
        self.conn.close(VarInt::from_u32(CLOSE_CODE), b"");
    }
}

impl QuicReader {
    /// Whether `d` is exactly one frame of this protocol.
    fn well_formed(d: &[u8]) -> bool {
        d.len() <= MAX_DATAGRAM_FRAME && frame_len(d) == Some(d.len())
    }
}

impl AsyncRead for QuicReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let start = buf.filled().len();
        // Datagrams first, and only between two stream frames.
        if me.cursor.at_boundary() {
            loop {
                let d = match me.held.take() {
                    Some(d) => d,
                    None => match me.datagrams.poll_recv(cx) {
                        Poll::Ready(Some(d)) => d,
                        _ => break,
                    },
                };
                if !Self::well_formed(&d) {
                    me.stats.datagrams_malformed.fetch_add(1, Relaxed);
                    continue;
                }
                if d.len() > buf.remaining() {
                    me.held = Some(d);
                    break;
                }
                buf.put_slice(&d);
                me.stats.datagrams_rx.fetch_add(1, Relaxed);
                me.stats
                    .datagram_bytes_rx
                    .fetch_add(d.len() as u64, Relaxed);
            }
        }
        let delivered = buf.filled().len() > start;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Then the stream, up to the end of its current frame if datagrams wait for it.
        let waiting = me.held.is_some() || !me.datagrams.is_empty();
        let room = match (waiting, me.cursor.to_boundary()) {
            (true, Some(n)) => n.min(buf.remaining()),
            _ => buf.remaining(),
        };
        let dst = buf.initialize_unfilled_to(room);
        let mut sub = ReadBuf::new(dst);
        match Pin::new(&mut me.stream).poll_read(cx, &mut sub) {
            Poll::Ready(Ok(())) => {
                let n = sub.filled().len();
                me.cursor.advance(sub.filled());
                buf.advance(n);
                if n == 0 && delivered {
                    // The stream ended; the datagrams before it still count. The end comes
                    // again on the next read.
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if !delivered => Poll::Ready(Err(e)),
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            Poll::Pending if delivered => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

type DatagramWait = Pin<Box<dyn Future<Output = Result<(), SendDatagramError>> + Send>>;

/// The link's writing side: frames cut from what it is given, data frames as datagrams where
/// they fit, everything else on the stream.
pub(crate) struct QuicWriter {
    conn: Connection,
    stream: SendStream,
    /// Bytes of the stream frame being written that are still to write.
    stream_left: usize,
    /// The start of a frame cut before its length was known (never, from the link's writer;
    /// handled all the same): it goes on the stream.
    head: Vec<u8>,
    /// Bytes taken for the stream and not written yet (such a head): they go before anything.
    unwritten: Vec<u8>,
    /// Bytes that are not frames of this protocol were given: everything goes on the stream.
    raw: bool,
    /// A datagram waiting for room in the connection, and its length: the caller gives the
    /// same bytes again, and they are skipped once it is sent.
    waiting: Option<(DatagramWait, usize)>,
    /// Set while the datagrams held by the connection are past [`datagram_backlog`]: the
    /// writer looks again when it fires.
    backlog_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// [`datagram_backlog`] as last computed, and when (it is recomputed every
    /// [`BACKLOG_RECHECK`]: the connection's statistics take its lock).
    backlog: (usize, Option<std::time::Instant>),
    stats: Arc<QuicStats>,
}

impl Drop for QuicWriter {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(CLOSE_CODE), b"");
    }
}

fn lost(e: quinn::ConnectionError) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())
}

impl QuicWriter {
    /// [`datagram_backlog`], recomputed at most every [`BACKLOG_RECHECK`].
    fn backlog_limit(&mut self) -> usize {
        let now = std::time::Instant::now();
        if self
            .backlog
            .1
            .is_none_or(|t| now.saturating_duration_since(t) >= BACKLOG_RECHECK)
        {
            self.backlog = (datagram_backlog(&self.conn), Some(now));
        }
        self.backlog.0
    }

    /// Writes `b` on the stream; `Ready(n)` with what it took.
    fn stream_write(&mut self, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream)
            .poll_write(cx, b)
            .map_err(io::Error::from)
    }

    /// Writes what [`QuicWriter::unwritten`] holds, as far as the stream takes it now.
    fn write_unwritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unwritten.is_empty() {
            let bytes = std::mem::take(&mut self.unwritten);
            match self.stream_write(cx, &bytes) {
                Poll::Ready(Ok(0)) => {
                    self.unwritten = bytes;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.unwritten = bytes[n..].to_vec(),
                Poll::Ready(Err(e)) => {
                    self.unwritten = bytes;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    self.unwritten = bytes;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// What `send` came to: the datagram went (`true`), or must go on the stream (`false`).
    fn sent(&self, r: Result<(), SendDatagramError>, len: usize) -> io::Result<bool> {
        match r {
            Ok(()) => {
                self.stats.datagrams_tx.fetch_add(1, Relaxed);
                self.stats.datagram_bytes_tx.fetch_add(len as u64, Relaxed);
                Ok(true)
            }
            Err(SendDatagramError::ConnectionLost(e)) => Err(lost(e)),
            Err(SendDatagramError::TooLarge) => {
                self.stats.datagrams_too_large.fetch_add(1, Relaxed);
                self.stats.stream_fallbacks.fetch_add(1, Relaxed);
                Ok(false)
            }
            Err(_) => {
                self.stats.stream_fallbacks.fetch_add(1, Relaxed);
                Ok(false)
            }
        }
    }
}

/// `Ready(Ok(pos))` if anything was taken, else `other`.
fn taken_or(pos: usize, other: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
    if pos > 0 {
        Poll::Ready(Ok(pos))
    } else {
        other
    }
}

impl AsyncWrite for QuicWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let mut pos = 0;
        if let Some(t) = &mut me.backlog_wait {
            ready!(t.as_mut().poll(cx));
            me.backlog_wait = None;
        }
        if let Some((wait, len)) = &mut me.waiting {
            let len = *len;
            let r = ready!(wait.as_mut().poll(cx));
            me.waiting = None;
            if me.sent(r, len)? {
                pos = len.min(buf.len());
            } else {
                me.stream_left = len;
            }
        }
        loop {
            if !me.unwritten.is_empty() {
                if let Poll::Ready(Err(e)) = me.write_unwritten(cx) {
                    return taken_or(pos, Poll::Ready(Err(e)));
                }
                if !me.unwritten.is_empty() {
                    return taken_or(pos, Poll::Pending);
                }
            }
            if pos == buf.len() {
                return Poll::Ready(Ok(pos));
            }
            if me.raw {
                return match me.stream_write(cx, &buf[pos..]) {
                    Poll::Ready(Ok(n)) => Poll::Ready(Ok(pos + n)),
                    other => taken_or(pos, other),
                };
            }
            if !me.head.is_empty() {
                // A frame whose start came alone: gather its head, then it all goes on the
                // stream.
                let n = (FRAME_HEAD - me.head.len()).min(buf.len() - pos);
                me.head.extend_from_slice(&buf[pos..pos + n]);
                pos += n;
                if me.head.len() < FRAME_HEAD {
                    continue;
                }
                // The head goes on the stream first, then the rest of its frame.
                match frame_len(&me.head) {
                    Some(len) => me.stream_left = len - FRAME_HEAD,
                    None => me.raw = true,
                }
                me.unwritten = std::mem::take(&mut me.head);
                continue;
            }
            if me.stream_left > 0 {
                let n = me.stream_left.min(buf.len() - pos);
                match me.stream_write(cx, &buf[pos..pos + n]) {
                    Poll::Ready(Ok(k)) => {
                        pos += k;
                        me.stream_left -= k;
                        continue;
                    }
                    other => return taken_or(pos, other),
                }
            }
            let rest = &buf[pos..];
            if rest.len() < FRAME_HEAD {
                me.head.extend_from_slice(rest);
                return Poll::Ready(Ok(buf.len()));
            }
            let Some(len) = frame_len(rest) else {
                warn!("QUIC link: the writer was given bytes that are not frames");
                me.raw = true;
                continue;
            };
            let fits = rest[1] == TYPE_DATA
                && len <= rest.len()
                && me.conn.max_datagram_size().is_some_and(|max| len <= max);
            if !fits {
                if rest[1] == TYPE_DATA {
                    me.stats.stream_fallbacks.fetch_add(1, Relaxed);
                }
                me.stream_left = len;
                continue;
            }
            let space = me.conn.datagram_send_buffer_space();
            let held = DATAGRAM_SEND_BUFFER.saturating_sub(space);
            let limit = me.backlog_limit();
            // (At the whole buffer's size, the connection's own wait for room below is the
            // quicker one.)
            if held > 0 && limit < DATAGRAM_SEND_BUFFER && held + len > limit {
                // Enough is waiting in the connection to keep it busy: the rest waits in the
                // link's flow queues, where sparse flows pass it. Look again shortly.
                if pos > 0 {
                    return Poll::Ready(Ok(pos));
                }
                let mut t = Box::pin(tokio::time::sleep(BACKLOG_RECHECK));
                if t.as_mut().poll(cx).is_pending() {
                    me.backlog_wait = Some(t);
                    return Poll::Pending;
                }
                continue;
            }
            let d = Bytes::copy_from_slice(&rest[..len]);
            if space >= len {
                if me.sent(me.conn.send_datagram(d), len)? {
                    pos += len;
                } else {
                    me.stream_left = len;
                }
                continue;
            }
            // The connection holds all it may: what was taken goes back now, and the caller
            // comes back to wait for room.
            if pos > 0 {
                return Poll::Ready(Ok(pos));
            }
            let conn = me.conn.clone();
            let mut wait: DatagramWait = Box::pin(async move { conn.send_datagram_wait(d).await });
            match wait.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    if me.sent(r, len)? {
                        pos += len;
                    } else {
                        me.stream_left = len;
                    }
                }
                Poll::Pending => {
                    me.waiting = Some((wait, len));
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.write_unwritten(cx))?;
        if !self.unwritten.is_empty() {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream)
            .poll_flush(cx)
            .map_err(io::Error::from)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream)
            .poll_shutdown(cx)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
