//! The node's control surface: what the admin API (and tests) can ask a running node, as typed
//! requests answered by the tasks that own the state. No handler shares the routing core or the
//! peer table behind a lock; each request is a message with a reply channel.

use std::net::Ipv6Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use wire::babel::{Metric, Subnet};

use crate::api::ApiCounters;
use crate::endpoint::Endpoint;
use crate::metrics::{ApiStats, Stats};

/// How we came to know a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerKind {
    /// From `--peers`, the config file or the API: redialled every 5 s while down.
    Static,
    /// It connected to us; never redialled.
    Inbound,
    /// Found by link-local discovery; redialled, forgotten after 3 failures in a row (failed
    /// dials, or connections closed before any control frame), then refused for a while.
    LinkLocalDiscovery,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionState {
    Alive,
    Connecting,
    Dead,
}

/// What the node knows of one peer; served as a [`PeerRow`](crate::api::types::PeerRow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub endpoint: Endpoint,
    pub kind: PeerKind,
    pub connection_state: ConnectionState,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds since the peer was learned.
    pub discovered: u64,
    /// Seconds since the current (or last) connection was established.
    pub last_connected: Option<u64>,
    /// Subnets the peer's link holds a route entry for (against its share of the table).
    pub routes: u64,
    /// Updates from the peer refused because it held its share of the route table.
    pub routes_refused: u64,
    /// Failed dials, and connections that closed before they were stable, in a row.
    pub failures: u32,
    /// Milliseconds until the peer is dialled again (a static or discovered peer that is not
    /// connected).
    pub next_dial_ms: Option<u64>,
    /// The QUIC stack's view of a connected QUIC peer's path.
    pub quic: Option<QuicPath>,
}

/// A QUIC link's path, as its QUIC stack measures it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuicPath {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// UDP packets sent, and those declared lost.
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// The largest datagram the path and the peer take now (absent: the peer takes none).
    pub datagram_max: Option<u64>,
    /// The path's UDP payload size now.
    pub mtu: u16,
}

/// One row of `GET /api/v1/admin/routes/{selected,fallback}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub subnet: Subnet,
    /// The link the route goes through, `TCP [local]:port <-> [remote]:port` (one text per
    /// link, shared by its rows).
    pub next_hop: Arc<str>,
    pub metric: Metric,
    pub seqno: u16,
}

/// One row of `GET /api/v1/admin/routes/queried`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryInfo {
    pub subnet: Subnet,
    /// Seconds until the query expires.
    pub expires_in: u64,
}

/// `GET /api/v1/admin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_subnet: Subnet,
    pub node_ip: Ipv6Addr,
    pub node_pubkey: [u8; 32],
    /// Unix seconds.
    pub node_start_time: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Selected,
    Fallback,
}

/// Why adding or removing a peer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerOpError {
    AlreadyExists,
    NotFound,
    Unsupported(String),
}

impl std::fmt::Display for PeerOpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerOpError::AlreadyExists => f.write_str("a peer with this endpoint already exists"),
            PeerOpError::NotFound => f.write_str("no peer with this endpoint"),
            PeerOpError::Unsupported(why) => f.write_str(why),
        }
    }
}

/// A request to the node's owner tasks.
#[derive(Debug)]
pub enum Request {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    AddPeer(Endpoint, oneshot::Sender<Result<(), PeerOpError>>),
    RemovePeer(Endpoint, oneshot::Sender<Result<(), PeerOpError>>),
    Routes(RouteKind, oneshot::Sender<Vec<RouteInfo>>),
    Queried(oneshot::Sender<Vec<QueryInfo>>),
    /// The public key whose announced subnet contains this address.
    PubkeyOf(Ipv6Addr, oneshot::Sender<Option<[u8; 32]>>),
    /// A snapshot of every counter.
    Stats(oneshot::Sender<Stats>),
}

/// The node went away while a request was in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeGone;

impl std::fmt::Display for NodeGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node is shutting down")
    }
}

impl std::error::Error for NodeGone {}

/// A cheap, cloneable handle to a running node's control surface.
#[derive(Clone, Debug)]
pub struct Control {
    info: NodeInfo,
    tx: mpsc::Sender<Request>,
    /// Counted by the API's own checks, which run before any request reaches the owner tasks.
    api: Arc<ApiCounters>,
    /// The message task, when the node runs one.
    messages: Option<crate::messages::MessageHandle>,
}

impl Control {
    pub fn new(info: NodeInfo, tx: mpsc::Sender<Request>) -> Control {
        Control {
            info,
            tx,
            api: Arc::default(),
            messages: None,
        }
    }

    /// The same handle, with the message task's.
    pub fn with_messages(mut self, m: crate::messages::MessageHandle) -> Control {
        self.messages = Some(m);
        self
    }

    /// The message task's handle; `None` on a node without one.
    pub fn messages(&self) -> Option<&crate::messages::MessageHandle> {
        self.messages.as_ref()
    }

    /// The refusal counters of the API and metrics endpoint served with this handle.
    pub fn api_counters(&self) -> Arc<ApiCounters> {
        self.api.clone()
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NodeGone> {
        self.ask(Request::Peers).await
    }

    pub async fn add_peer(&self, e: Endpoint) -> Result<Result<(), PeerOpError>, NodeGone> {
        self.ask(|r| Request::AddPeer(e, r)).await
    }

    pub async fn remove_peer(&self, e: Endpoint) -> Result<Result<(), PeerOpError>, NodeGone> {
        self.ask(|r| Request::RemovePeer(e, r)).await
    }

    pub async fn routes(&self, kind: RouteKind) -> Result<Vec<RouteInfo>, NodeGone> {
        self.ask(|r| Request::Routes(kind, r)).await
    }

    pub async fn queried(&self) -> Result<Vec<QueryInfo>, NodeGone> {
        self.ask(Request::Queried).await
    }

    /// The owner tasks' snapshot, with the API's own counters filled in.
    pub async fn stats(&self) -> Result<Stats, NodeGone> {
        let mut s = self.ask(Request::Stats).await?;
        s.api = ApiStats::from_counters(&self.api);
        if let Some(m) = &self.messages {
            s.messages = crate::metrics::MessageStats::from(m.stats().await?);
        }
        Ok(s)
    }

    pub async fn pubkey_of(&self, ip: Ipv6Addr) -> Result<Option<[u8; 32]>, NodeGone> {
        self.ask(|r| Request::PubkeyOf(ip, r)).await
    }
}
