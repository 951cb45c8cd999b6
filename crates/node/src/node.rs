//! Starting and stopping a node: bind the peer port, create the TUN, start the owner task, the
//! link acceptor, the TUN threads, discovery and the admin API.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use routing::{Config as RouterConfig, Router, Time};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use wire::babel::{RouterId, Subnet};

use crate::control::{Control, NodeInfo};
use crate::discovery::{Admission, DiscoveryLimits, DiscoveryStats, Timing};
use crate::endpoint::Endpoint;
use crate::gate::Gate;
use crate::keys::Identity;
use crate::link::quic::QuicEndpoint;
use crate::link::tcp::Proven;
use crate::link::LinkContext;
use crate::metrics::TunHistograms;
use crate::owner::{unix_now, Owner, OwnerInputs, OwnerMsg};
use crate::transmit::DataTable;
use crate::tunio::{self, TunIo, TunIoConfig};
use datapath::DataCounters;

/// MTU of the overlay TUN (docs/protocol.md §2.3, §6.11): every packet on the wire carries at
/// most 1400 bytes.
pub const TUN_MTU: u32 = 1400;

/// The TUN device a node creates.
#[derive(Clone, Debug)]
pub struct TunSettings {
    pub name: String,
    /// `false` forces the plain path: no vnet header, no TSO/USO reads, no GRO writes.
    pub offload: bool,
}

/// Link-local discovery settings.
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    pub port: u16,
    /// Only these interfaces (all eligible ones when empty).
    pub interfaces: Vec<String>,
    /// What discovered endpoints may become peers.
    pub limits: DiscoveryLimits,
    /// Beacon and interface-scan periods.
    pub timing: Timing,
}

impl Default for DiscoverySettings {
    fn default() -> DiscoverySettings {
        DiscoverySettings {
            port: crate::discovery::DEFAULT_PORT,
            interfaces: Vec::new(),
            limits: DiscoveryLimits::default(),
            timing: Timing::default(),
        }
    }
}

/// Everything needed to run a node.
pub struct NodeConfig {
    pub secret: crypto::SecretKey,
    /// Where to accept peers, normally `[::]:9651`; `None` accepts none.
    pub listen: Option<SocketAddr>,
    /// The UDP address of the QUIC endpoint, which accepts and dials `quic://` peers, normally
    /// `[::]:9651`; `None` with `--disable-quic`.
    pub quic_listen: Option<SocketAddr>,
    /// The congestion controller of QUIC links.
    pub quic_congestion: crate::QuicCongestion,
    pub peers: Vec<Endpoint>,
    /// `None` runs without a TUN (`--no-tun`): the node routes and forwards only.
    pub tun: Option<TunSettings>,
    pub discovery: Option<DiscoverySettings>,
    /// Admin API address; `None` serves no API.
    pub api_addr: Option<SocketAddr>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// Host names the API and metrics endpoint answer to besides IP literals and `localhost`.
    pub api_access: crate::api::ApiAccess,
    /// Queue management on every link (CoDel on the data waiting for the link); off only to
    /// compare (`--no-queue-management`).
    pub queue_management: bool,
    /// The caps and the deadline for accepted connections that have not proved themselves yet.
    pub gate: crate::gate::GateLimits,
    /// End-to-end sessions with other hypha nodes (`docs/sessions.md`) and their timers; `None`
    /// with `--no-sessions` (mycelium's wire only).
    pub sessions: Option<datapath::sessions::SessionLimits>,
    /// The message subsystem's bounds and topics.
    pub messages: crate::messages::MessageSettings,
    /// JSON-RPC address; `None` serves none.
    pub jsonrpc_addr: Option<SocketAddr>,
    /// A JSON-RPC address that cannot be bound is logged, not fatal (the default address, which
    /// another node on the host may hold).
    pub jsonrpc_optional: bool,
}

/// A running node.
pub struct Node {
    control: Control,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tun_io: Option<TunIo>,
    tun: Option<Arc<tun::Tun>>,
    listen_addr: Option<SocketAddr>,
    quic: Option<Arc<QuicEndpoint>>,
    quic_addr: Option<SocketAddr>,
    api_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    jsonrpc_addr: Option<SocketAddr>,
    counters: Arc<DataCounters>,
}

/// Binds a dual-stack listener with SO_REUSEADDR (so a restarted node gets its port back).
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

fn random_suffix() -> [u8; 6] {
    let mut r = [0u8; 6];
    if getrandom::fill(&mut r).is_err() {
        // Not secret, only distinct per boot: the clock will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        r.copy_from_slice(&t.to_be_bytes()[10..16]);
    }
    r
}

impl Node {
    /// Starts a node. Errors (a taken port, no `/dev/net/tun`, no permission) come back before
    /// anything is left running.
    pub async fn start(cfg: NodeConfig) -> anyhow::Result<Node> {
        let identity = Arc::new(Identity::new(cfg.secret));
        let own_subnet: Subnet = identity.subnet();
        let own_addr: Ipv6Addr = identity.address();
        let router_id = RouterId::new(identity.public_key(), random_suffix());

        let listener = match cfg.listen {
            Some(a) => {
                Some(bind_listener(a).with_context(|| format!("cannot listen for peers on {a}"))?)
            }
            None => None,
        };
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        let tun = match &cfg.tun {
            Some(t) => Some(Arc::new(open_tun(t, own_addr)?)),
            None => None,
        };

        let api_listener = match cfg.api_addr {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot serve the admin API on {a}"))?,
            ),
            None => None,
        };
        let api_addr = api_listener.as_ref().and_then(|l| l.local_addr().ok());
        let metrics_listener = match cfg.metrics_addr {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot serve metrics on {a}"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let jsonrpc_listener = match cfg.jsonrpc_addr {
            Some(a) => match TcpListener::bind(a).await {
                Ok(l) => Some(l),
                Err(e) if cfg.jsonrpc_optional => {
                    warn!("not serving JSON-RPC: cannot listen on {a}: {e} (--jsonrpc-addr)");
                    None
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot serve JSON-RPC on {a}"));
                }
            },
            None => None,
        };
        let jsonrpc_addr = jsonrpc_listener.as_ref().and_then(|l| l.local_addr().ok());
        let histograms = Arc::new(TunHistograms::default());

        let epoch = Instant::now();
        let mut router = Router::new(RouterConfig::new(router_id, own_subnet), Time::ZERO);
        let table = Arc::new(ArcSwap::from_pointee(DataTable::empty(
            router.forwarding_table(),
        )));
        let counters = Arc::new(DataCounters::default());

        let (msgs_tx, msgs_rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::channel(4096);
        let (needs_tx, needs_rx) = mpsc::channel(4096);
        let (req_tx, req_rx) = mpsc::channel(64);
        let (tun_tx, tun_rx) = mpsc::channel(tunio::TUN_QUEUE);
        let (msg_in_tx, msg_in_rx) = mpsc::channel(crate::messages::INBOUND_QUEUE);
        let (shutdown, shutdown_rx) = watch::channel(false);

        let refusals: Arc<crate::link::LinkRefusals> = Default::default();
        let gate_stats = refusals.gate.clone();
        let quic = match cfg.quic_listen {
            Some(a) => Some(Arc::new(
                QuicEndpoint::bind(a, &router_id, cfg.quic_congestion, refusals.quic.clone())
                    .with_context(|| format!("cannot listen for QUIC peers on udp {a}"))?,
            )),
            None => None,
        };
        let quic_addr = quic.as_ref().and_then(|q| q.local_addr());
        let link_ctx = LinkContext {
            table: table.clone(),
            counters: counters.clone(),
            needs: needs_tx.clone(),
            events: events_tx,
            tun: tun.as_ref().map(|_| tun_tx.clone()),
            tun_dev: tun.clone(),
            histograms: histograms.clone(),
            own_subnet,
            own_router_id: router_id,
            refusals,
            closes: Default::default(),
            queue_management: cfg.queue_management,
            messages: Some(msg_in_tx),
        };
        let mut owner = Owner::new(
            router,
            epoch,
            identity.clone(),
            table.clone(),
            link_ctx,
            counters.clone(),
            msgs_tx.clone(),
            cfg.peers,
        );
        if let Some(t) = &tun {
            owner.set_tun_metrics(t.clone(), histograms.clone());
        }
        if let Some(limits) = cfg.sessions {
            owner.set_sessions(identity.session_manager(limits));
        }
        if let Some(q) = &quic {
            owner.set_quic(q.clone());
        }
        let discovery_stats = Arc::new(DiscoveryStats::default());
        if let Some(d) = &cfg.discovery {
            owner.set_discovery(Admission::new(d.limits, discovery_stats.clone()));
        }
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(owner.run(
            OwnerInputs {
                msgs: msgs_rx,
                link_events: events_rx,
                needs: needs_rx,
                requests: req_rx,
            },
            wait_shutdown(shutdown_rx.clone()),
        )));
        // One gate for both transports: unproven connections are capped together.
        let gate = Gate::new(cfg.gate, gate_stats);
        if let Some(l) = listener {
            tasks.push(tokio::spawn(accept_loop(
                l,
                gate.clone(),
                msgs_tx.clone(),
                shutdown_rx.clone(),
            )));
        }
        if let Some(q) = &quic {
            let (ready_tx, mut ready_rx) = mpsc::channel(16);
            tasks.push(tokio::spawn(q.clone().accept_loop(
                gate.clone(),
                ready_tx,
                shutdown_rx.clone(),
            )));
            let owner_tx = msgs_tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some((link, remote)) = ready_rx.recv().await {
                    if owner_tx
                        .send(OwnerMsg::InboundQuic(link, remote))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        let tun_io = match &tun {
            Some(t) => Some(
                tunio::start(
                    t.clone(),
                    TunIoConfig {
                        table: table.clone(),
                        counters: counters.clone(),
                        needs: needs_tx.clone(),
                        own_subnet,
                        own_addr,
                        histograms: histograms.clone(),
                        runtime: tokio::runtime::Handle::current(),
                    },
                    tun_tx,
                    tun_rx,
                )
                .context("cannot start the TUN threads")?,
            ),
            None => None,
        };
        let info = NodeInfo {
            node_subnet: own_subnet,
            node_ip: own_addr,
            node_pubkey: identity.public_key(),
            node_start_time: unix_now(),
        };
        let (messages, msg_task) = crate::messages::start(
            cfg.messages,
            crate::messages::MessageTaskCtx {
                table: table.clone(),
                counters: counters.clone(),
                needs: needs_tx.clone(),
                own_addr,
                own_subnet,
                own_key: identity.public_key(),
            },
            msg_in_rx,
            wait_shutdown(shutdown_rx.clone()),
        );
        tasks.push(msg_task);
        let control = Control::new(info, req_tx).with_messages(messages);
        if let Some(l) = jsonrpc_listener {
            let app = crate::api::jsonrpc::router(control.clone(), &cfg.api_access);
            let stop = wait_shutdown(shutdown_rx.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::api::serve_router(l, app, stop).await {
                    warn!("JSON-RPC API stopped: {e}");
                }
            }));
        }
        if let Some(l) = api_listener {
            let app = crate::api::router(control.clone(), &cfg.api_access);
            let stop = wait_shutdown(shutdown_rx.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::api::serve_router(l, app, stop).await {
                    warn!("admin API stopped: {e}");
                }
            }));
        }
        if let Some(l) = metrics_listener {
            let app = crate::api::metrics_router(control.clone(), &cfg.api_access);
            let stop = wait_shutdown(shutdown_rx.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::api::serve_router(l, app, stop).await {
                    warn!("metrics endpoint stopped: {e}");
                }
            }));
        }
        if let (Some(d), Some(listen)) = (&cfg.discovery, listen_addr) {
            let (found_tx, mut found_rx) = mpsc::channel(64);
            let dcfg = crate::discovery::DiscoveryConfig {
                port: d.port,
                interfaces: d.interfaces.clone(),
                tcp_port: listen.port(),
                router_id,
            };
            let stop = wait_shutdown(shutdown_rx.clone());
            let timing = d.timing;
            tasks.push(tokio::spawn(async move {
                let r =
                    crate::discovery::run_with(dcfg, timing, discovery_stats, found_tx, stop).await;
                if let Err(e) = r {
                    warn!("link-local discovery stopped: {e}");
                }
            }));
            let owner_tx = msgs_tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(e) = found_rx.recv().await {
                    if owner_tx.send(OwnerMsg::Discovered(e)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        info!(
            address = %own_addr,
            subnet = %own_subnet,
            listen = ?listen_addr,
            quic = ?quic_addr,
            tun = ?tun.as_ref().map(|t| t.name().to_owned()),
            "node started"
        );
        Ok(Node {
            control,
            shutdown,
            tasks,
            tun_io,
            tun,
            listen_addr,
            quic,
            quic_addr,
            api_addr,
            metrics_addr,
            jsonrpc_addr,
            counters,
        })
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// The UDP address of the QUIC endpoint.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where JSON-RPC is served, when it is.
    pub fn jsonrpc_addr(&self) -> Option<SocketAddr> {
        self.jsonrpc_addr
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn counters(&self) -> &DataCounters {
        &self.counters
    }

    /// TUN device statistics, when the node has one.
    pub fn tun_stats(&self) -> Option<tun::Stats> {
        self.tun.as_ref().map(|t| t.stats())
    }

    /// Stops every task and thread, closes the links and removes the TUN device.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(q) = self.quic.take() {
            q.close().await;
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                warn!("a task did not stop within 5 s");
            }
        }
        if let Some(io) = self.tun_io.take() {
            let _ = tokio::task::spawn_blocking(move || io.stop()).await;
        }
        // Dropping the last handle closes the fd, which removes a non-persistent device.
        self.tun = None;
    }
}

fn open_tun(t: &TunSettings, addr: Ipv6Addr) -> anyhow::Result<tun::Tun> {
    let mut c = tun::Config::new(t.name.clone());
    if !t.offload {
        c = c.no_offload();
    }
    let dev = tun::Tun::open(&c).with_context(|| {
        format!(
            "cannot create TUN device '{}' (is /dev/net/tun there, and are we root or CAP_NET_ADMIN?)",
            t.name
        )
    })?;
    dev.set_mtu(TUN_MTU)
        .with_context(|| format!("cannot set the MTU of '{}'", t.name))?;
    // Prefix length 7: the kernel then routes all of 400::/7 into the device.
    dev.add_ipv6(addr, 7)
        .with_context(|| format!("cannot add {addr}/7 to '{}'", t.name))?;
    dev.up()
        .with_context(|| format!("cannot bring '{}' up", t.name))?;
    let caps = dev.capabilities();
    info!(device = %dev.name(), ?caps, "TUN device ready");
    Ok(dev)
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(
    l: TcpListener,
    gate: Arc<Gate>,
    owner: mpsc::Sender<OwnerMsg>,
    shutdown: watch::Receiver<bool>,
) {
    let stop = wait_shutdown(shutdown);
    tokio::pin!(stop);
    let mut errors = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = l.accept() => match r {
                Ok((stream, remote)) => {
                    errors = 0;
                    // Over a cap: closed at once (counted), before it costs anything.
                    let Some(ticket) = gate.admit(remote) else {
                        continue;
                    };
                    let (gate, owner) = (gate.clone(), owner.clone());
                    // Proving, and handing over to a busy owner, wait in the connection's own
                    // task, never in the accept loop.
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let first = gate.prove(&ticket, &mut stream).await;
                        drop(ticket);
                        match first {
                            Ok(first) => {
                                let proven = Proven { stream, first };
                                let _ = owner.send(OwnerMsg::Inbound(proven, remote)).await;
                            }
                            Err(why) => debug!(%remote, ?why, "closed an unproven connection"),
                        }
                    });
                }
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    errors += 1;
                    if errors == 1 || errors % 100 == 0 {
                        warn!("accepting a peer failed ({errors} in a row): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
