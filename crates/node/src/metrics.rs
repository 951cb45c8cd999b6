//! Observability: the node's counters as one [`Stats`] snapshot (served as JSON by
//! `GET /api/v1/admin/stats`) and its Prometheus/OpenMetrics text rendering (served by
//! `GET /metrics` on the metrics address).
//!
//! The hot paths never see this module's types except [`Histogram`], which is a fixed array of
//! relaxed atomics bumped once per TUN read or write batch. Everything else is folded from the
//! counters the paths already keep (data path atomics, per-link atomics, the TUN device's
//! atomics, the routing core's plain counters read by its owner task) when someone asks.
//!
//! Rendering uses `prometheus-client`, the Prometheus project's own Rust client: it owns the
//! exposition format (escaping, `_total` suffixes, histogram `le` buckets, `# EOF`), so we only
//! describe metrics. Its registry-held metric types take locks (its histogram is an `RwLock`), so
//! we don't register live metrics at all: a scrape builds a throwaway registry around one
//! [`Stats`] snapshot through the crate's `Collector` hook.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::control::ConnectionState;
use crate::discovery::DiscoveryStats;
use crate::link::LinkRefusals;
use datapath::DataCounters;

/// Upper bounds of the histogram buckets (an implicit `+Inf` bucket follows). Powers of two up
/// to a 64 KiB super-packet's worth of 1400-byte segments (47) and a full write batch (256).
pub const HISTOGRAM_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A histogram of small counts, lock-free: one relaxed add per bucket hit, one for the sum, one
/// for the count. Meant for one writer thread; concurrent writers are fine too.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records `n` observations that together sum to `sum`, bucketed by their mean.
    ///
    /// With `n == 1` this is one exact observation. The TUN writer uses `n > 1` for a batch whose
    /// report gives only totals (packets written, write syscalls): the count and sum stay exact,
    /// the bucket is that batch's average.
    pub fn observe_many(&self, n: u64, sum: u64) {
        if n == 0 {
            return;
        }
        let mean = sum.div_ceil(n);
        let i = HISTOGRAM_BOUNDS
            .iter()
            .position(|&b| mean <= b)
            .unwrap_or(HISTOGRAM_BOUNDS.len());
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum.fetch_add(sum, Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    pub fn observe(&self, v: u64) {
        self.observe_many(1, v);
    }

    pub fn snapshot(&self) -> HistogramStats {
        let mut acc = 0;
        let buckets = HISTOGRAM_BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, c)| {
                acc += c.load(Relaxed);
                (le, acc)
            })
            .collect();
        HistogramStats {
            buckets,
            sum: self.sum.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A histogram snapshot: cumulative counts per upper bound (the `+Inf` bucket is `count`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramStats {
    pub buckets: Vec<(u64, u64)>,
    pub sum: u64,
    pub count: u64,
}

impl HistogramStats {
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }
}

/// Histograms the TUN threads feed.
#[derive(Debug, Default)]
pub struct TunHistograms {
    /// Segments handed out per TUN read (1 for a plain packet).
    pub read_segments: Histogram,
    /// Packets per TUN write syscall.
    pub write_packets: Histogram,
}

/// Everything `hypha stats` shows: one snapshot of the node's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Seconds since the node started.
    pub uptime: u64,
    pub peers: Vec<PeerStats>,
    pub data: DataStats,
    /// `None` without a TUN device.
    pub tun: Option<TunStats>,
    pub routing: RoutingStats,
    #[serde(default)]
    pub peering: PeeringStats,
    /// Absent from an older node's answer.
    #[serde(default)]
    pub api: ApiStats,
    /// Links closed since the start, by reason.
    #[serde(default)]
    pub links_closed: LinkCloseStats,
    /// End-to-end sessions with other hypha nodes (`None` with `--no-sessions`).
    #[serde(default)]
    pub sessions: Option<SessionStats>,
    /// The message subsystem.
    #[serde(default)]
    pub messages: MessageStats,
}

/// The node's end-to-end sessions (`docs/sessions.md`): totals, and one row per remote node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionStats {
    pub established: u64,
    pub handshaking: u64,
    pub legacy: u64,
    pub initiations_sent: u64,
    pub responses_sent: u64,
    /// Sessions set up (first ones, not rekeys).
    pub sessions_started: u64,
    pub rekeys: u64,
    pub handshakes_refused: u64,
    pub replayed_initiations: u64,
    /// Session frames refused as replays, over all sessions.
    pub replays_refused: u64,
    pub legacy_fallbacks: u64,
    pub expired: u64,
    /// Path probes sent; paths found to carry super-frames; super-frames turned off again
    /// (a probe or super-frames went unacknowledged).
    pub probes_sent: u64,
    pub paths_whole: u64,
    pub whole_fallbacks: u64,
    pub peers: Vec<SessionPeer>,
}

/// One remote node's session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionPeer {
    pub public_key: String,
    pub address: String,
    /// `established`, `handshaking`, `legacy` (no answer: a node without sessions) or `none`.
    pub state: String,
    pub age_secs: Option<u64>,
    pub rekeys: u64,
    pub replays_refused: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub legacy_fallbacks: u64,
    /// `on`, `probing` or `off`.
    pub super_frames: String,
    pub supers_sent: u64,
    pub supers_received: u64,
    pub super_fallbacks: u64,
}

impl SessionStats {
    pub fn from_manager(m: &datapath::sessions::SessionManager, now: std::time::Instant) -> Self {
        let rows = m.rows(now);
        let count = |st: &str| rows.iter().filter(|r| r.state == st).count() as u64;
        let c = m.counts;
        SessionStats {
            established: count("established"),
            handshaking: count("handshaking"),
            legacy: count("legacy"),
            initiations_sent: c.initiations_sent,
            responses_sent: c.responses_sent,
            sessions_started: c.established,
            rekeys: c.rekeys,
            handshakes_refused: c.handshakes_refused,
            replayed_initiations: c.replayed_initiations,
            replays_refused: m.replays_refused(),
            legacy_fallbacks: c.legacy_fallbacks,
            expired: c.expired,
            probes_sent: c.probes_sent,
            paths_whole: c.paths_whole,
            whole_fallbacks: c.whole_fallbacks,
            peers: rows
                .iter()
                .map(|r| SessionPeer {
                    public_key: r.key.to_string(),
                    address: r.key.address().to_string(),
                    state: r.state.to_owned(),
                    age_secs: r.age_secs,
                    rekeys: r.rekeys,
                    replays_refused: r.replays_refused,
                    frames_sent: r.frames_sent,
                    frames_received: r.frames_received,
                    legacy_fallbacks: r.legacy_fallbacks,
                    super_frames: r.super_frames.to_owned(),
                    supers_sent: r.supers_sent,
                    supers_received: r.supers_received,
                    super_fallbacks: r.super_fallbacks,
                })
                .collect(),
        }
    }
}

/// The message subsystem's counters (see `message::Stats`); the last five are gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageStats {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub failed: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub retransmits: u64,
    pub malformed: u64,
    pub refused_inbox_full: u64,
    pub refused_too_large: u64,
    pub refused_topic: u64,
    pub bad_checksum: u64,
    pub aborted_incoming: u64,
    pub idle_incoming: u64,
    pub inbox_messages: u64,
    pub inbox_bytes: u64,
    pub incoming: u64,
    pub outgoing: u64,
    pub outbox_bytes: u64,
}

impl From<message::Stats> for MessageStats {
    fn from(s: message::Stats) -> MessageStats {
        MessageStats {
            sent: s.sent,
            sent_bytes: s.sent_bytes,
            received: s.received,
            received_bytes: s.received_bytes,
            failed: s.failed,
            packets_in: s.packets_in,
            packets_out: s.packets_out,
            retransmits: s.retransmits,
            malformed: s.malformed,
            refused_inbox_full: s.refused_inbox_full,
            refused_too_large: s.refused_too_large,
            refused_topic: s.refused_topic,
            bad_checksum: s.bad_checksum,
            aborted_incoming: s.aborted_incoming,
            idle_incoming: s.idle_incoming,
            inbox_messages: s.inbox_messages,
            inbox_bytes: s.inbox_bytes,
            incoming: s.incoming,
            outgoing: s.outgoing,
            outbox_bytes: s.outbox_bytes,
        }
    }
}

/// Links closed, by reason ([`CloseReason`](crate::link::CloseReason)): the peer ended or broke
/// the connection, it stalled, it was ourselves, the routing core found it dead, or the node
/// removed or replaced it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LinkCloseStats {
    pub peer_closed: u64,
    pub read_failed: u64,
    pub write_failed: u64,
    pub write_stalled: u64,
    pub framing: u64,
    pub self_link: u64,
    pub neighbour_dead: u64,
    pub removed: u64,
    pub replaced: u64,
    pub shutdown: u64,
}

impl LinkCloseStats {
    pub(crate) fn new(c: &crate::link::LinkCloses) -> LinkCloseStats {
        let mut s = LinkCloseStats::default();
        for (label, n) in c.snapshot() {
            *s.by_label(label) = n;
        }
        s
    }

    fn by_label(&mut self, label: &str) -> &mut u64 {
        match label {
            "peer_closed" => &mut self.peer_closed,
            "read_failed" => &mut self.read_failed,
            "write_failed" => &mut self.write_failed,
            "write_stalled" => &mut self.write_stalled,
            "framing" => &mut self.framing,
            "self_link" => &mut self.self_link,
            "neighbour_dead" => &mut self.neighbour_dead,
            "removed" => &mut self.removed,
            "replaced" => &mut self.replaced,
            _ => &mut self.shutdown,
        }
    }

    /// Each reason's label and count, in the order of the metric family.
    pub fn labelled(&self) -> [(&'static str, u64); 10] {
        [
            ("peer_closed", self.peer_closed),
            ("read_failed", self.read_failed),
            ("write_failed", self.write_failed),
            ("write_stalled", self.write_stalled),
            ("framing", self.framing),
            ("self_link", self.self_link),
            ("neighbour_dead", self.neighbour_dead),
            ("removed", self.removed),
            ("replaced", self.replaced),
            ("shutdown", self.shutdown),
        ]
    }
}

/// Requests the admin API and the metrics endpoint refused before any handler, by reason
/// ([`ApiCounters`](crate::api::ApiCounters)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiStats {
    /// `Host` not an IP literal, `localhost` or an allowed name (DNS rebinding).
    pub refused_host: u64,
    /// A foreign `Origin` or `Sec-Fetch-Site` (a cross-site request).
    pub refused_origin: u64,
    /// A body not declared `application/json`.
    pub refused_content_type: u64,
}

impl ApiStats {
    pub fn from_counters(c: &crate::api::ApiCounters) -> ApiStats {
        ApiStats {
            refused_host: c.refused_host.load(Relaxed),
            refused_origin: c.refused_origin.load(Relaxed),
            refused_content_type: c.refused_content_type.load(Relaxed),
        }
    }
}

/// One peer's link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStats {
    pub endpoint: String,
    pub connection_state: ConnectionState,
    /// The routing core's cost of the current link (smoothed RTT part plus static cost).
    pub link_cost: Option<u16>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_data_frames: u64,
    pub tx_control_frames: u64,
    pub rx_data_frames: u64,
    pub rx_control_frames: u64,
    /// Subnets the peer's link holds a route entry for (against its share of the table).
    #[serde(default)]
    pub routes: u64,
    /// Updates from the peer refused because it held its share of the route table.
    #[serde(default)]
    pub routes_refused: u64,
}

macro_rules! data_stats {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The data path's counters ([`DataCounters`]).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct DataStats { $( $(#[$doc])* pub $name: u64, )* }

        impl DataStats {
            pub fn from_counters(c: &DataCounters) -> DataStats {
                DataStats { $( $name: c.$name.load(Relaxed), )* }
            }
        }
    };
}

// The counter list is written once, in the data-path core.
datapath::for_each_data_counter!(data_stats);

/// The TUN device's counters and the data path's histograms of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunStats {
    pub reads: u64,
    pub super_packets: u64,
    pub segments: u64,
    pub writes: u64,
    pub coalesced_writes: u64,
    pub packets_written: u64,
    pub einval_fallbacks: u64,
    pub demotions: u64,
    pub read_errors: u64,
    pub drop_malformed: u64,
    pub drop_truncated: u64,
    pub drop_sink_full: u64,
    pub drop_write_error: u64,
    pub drop_would_block: u64,
    pub read_segments: HistogramStats,
    pub write_packets: HistogramStats,
}

impl TunStats {
    pub fn new(s: &tun::Stats, h: &TunHistograms) -> TunStats {
        TunStats {
            reads: s.reads,
            super_packets: s.super_packets,
            segments: s.segments,
            writes: s.writes,
            coalesced_writes: s.coalesced_writes,
            packets_written: s.packets_written,
            einval_fallbacks: s.einval_fallbacks,
            demotions: s.demotions,
            read_errors: s.read_errors,
            drop_malformed: s.drop_malformed,
            drop_truncated: s.drop_truncated,
            drop_sink_full: s.drop_sink_full,
            drop_write_error: s.drop_write_error,
            drop_would_block: s.drop_would_block,
            read_segments: h.read_segments.snapshot(),
            write_packets: h.write_packets.snapshot(),
        }
    }
}

/// Route table sizes and route query activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStats {
    pub selected_routes: u64,
    pub fallback_routes: u64,
    /// Subnets with a route query in flight.
    pub queried_subnets: u64,
    /// RouteRequest TLVs sent (ours and forwarded ones).
    pub route_requests_sent: u64,
    pub route_requests_received: u64,
    /// RouteRequests answered with an Update (for our /64 or a selected route).
    pub route_requests_answered: u64,
    /// Route queries that ended without a route.
    pub route_queries_timed_out: u64,
    pub routes_acquired: u64,
    pub routes_lost: u64,
    pub hello_received: u64,
    pub ihu_received: u64,
    pub updates_received: u64,
    pub seqno_requests_received: u64,
    /// Route queries a peer caused (RouteRequests to forward, traffic from unknown senders)
    /// refused by a limit: the peer's rate, its share of the query table, the table (all but
    /// the room kept for our own queries) full.
    #[serde(default)]
    pub queries_refused_rate: u64,
    #[serde(default)]
    pub queries_refused_share: u64,
    #[serde(default)]
    pub queries_refused_table_full: u64,
    /// Wildcard RouteRequests within a peer's dump hold-off (answered by one later dump).
    #[serde(default)]
    pub wildcard_dumps_deferred: u64,
    /// Updates whose interval gave a hold time below the minimum (raised to it).
    #[serde(default)]
    pub updates_short_hold: u64,
    /// Triggered updates held back for subnets damped for flapping.
    #[serde(default)]
    pub updates_damped: u64,
    /// Flapping subnets not remembered for damping (its table full).
    #[serde(default)]
    pub flap_table_full: u64,
    /// Updates for a subnet new to a peer refused because the peer holds routes for its share
    /// of the table.
    #[serde(default)]
    pub routes_refused_link_share: u64,
    /// SeqNoRequests from a peer not forwarded because of its rate.
    #[serde(default)]
    pub seqno_requests_refused_rate: u64,
}

/// Link-local discovery and the guards on who becomes a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeeringStats {
    /// Discovered peers held now (the cap applies to this).
    pub discovered_peers: u64,
    /// Valid beacons from other nodes.
    pub beacons_received: u64,
    /// Beacons ignored: ours (our router-id or key), from one of our own addresses, malformed.
    pub beacons_own: u64,
    pub beacons_own_address: u64,
    pub beacons_malformed: u64,
    /// Discovered endpoints refused: cap reached, too many new ones at once, backing off.
    pub discovered_refused_cap: u64,
    pub discovered_refused_rate: u64,
    pub discovered_refused_backoff: u64,
    /// Discovered endpoints forgotten and backing off after failing.
    pub discovered_backed_off: u64,
    /// Links closed because the remote end was this node itself.
    pub self_links_closed: u64,
    /// Accepted connections at the gate (`crate::gate`): proven; closed unproven to make room
    /// for a newer one (the total cap); closed at once over the per-source cap; closed for no
    /// frame in time, for bytes that are not the protocol, or by the remote end before proving
    /// anything; unproven now.
    pub inbound_proven: u64,
    pub inbound_evicted: u64,
    pub inbound_refused_source_cap: u64,
    pub inbound_timed_out: u64,
    pub inbound_malformed: u64,
    pub inbound_closed: u64,
    pub inbound_unproven: u64,
    /// QUIC (`crate::link::quic`): data frames sent as datagrams and frames received as
    /// datagrams, with their bytes; data frames sent on the stream because they did not fit a
    /// datagram (of which refused by the QUIC stack as too large after the size check);
    /// received datagrams that were not one frame; connection attempts refused over the
    /// per-source cap, asked to prove their address (retry), failed or never proven; links
    /// accepted and dialled.
    #[serde(default)]
    pub quic_datagrams_tx: u64,
    #[serde(default)]
    pub quic_datagram_bytes_tx: u64,
    #[serde(default)]
    pub quic_datagrams_rx: u64,
    #[serde(default)]
    pub quic_datagram_bytes_rx: u64,
    #[serde(default)]
    pub quic_stream_fallbacks: u64,
    #[serde(default)]
    pub quic_datagrams_too_large: u64,
    #[serde(default)]
    pub quic_datagrams_malformed: u64,
    #[serde(default)]
    pub quic_handshakes_refused: u64,
    #[serde(default)]
    pub quic_handshakes_retried: u64,
    #[serde(default)]
    pub quic_handshakes_failed: u64,
    #[serde(default)]
    pub quic_accepted: u64,
    #[serde(default)]
    pub quic_dialled: u64,
}

impl PeeringStats {
    pub(crate) fn new(discovered_peers: u64, d: &DiscoveryStats, l: &LinkRefusals) -> PeeringStats {
        PeeringStats {
            discovered_peers,
            beacons_received: d.beacons_received.load(Relaxed),
            beacons_own: d.own_beacons.load(Relaxed),
            beacons_own_address: d.own_address_beacons.load(Relaxed),
            beacons_malformed: d.bad_packets.load(Relaxed),
            discovered_refused_cap: d.refused_cap.load(Relaxed),
            discovered_refused_rate: d.refused_rate.load(Relaxed),
            discovered_refused_backoff: d.refused_backoff.load(Relaxed),
            discovered_backed_off: d.backed_off.load(Relaxed),
            self_links_closed: l.self_link.load(Relaxed),
            inbound_proven: l.gate.proven.load(Relaxed),
            inbound_evicted: l.gate.evicted.load(Relaxed),
            inbound_refused_source_cap: l.gate.refused_source.load(Relaxed),
            inbound_timed_out: l.gate.timed_out.load(Relaxed),
            inbound_malformed: l.gate.malformed.load(Relaxed),
            inbound_closed: l.gate.closed.load(Relaxed),
            inbound_unproven: l.gate.unproven.load(Relaxed),
            quic_datagrams_tx: l.quic.datagrams_tx.load(Relaxed),
            quic_datagram_bytes_tx: l.quic.datagram_bytes_tx.load(Relaxed),
            quic_datagrams_rx: l.quic.datagrams_rx.load(Relaxed),
            quic_datagram_bytes_rx: l.quic.datagram_bytes_rx.load(Relaxed),
            quic_stream_fallbacks: l.quic.stream_fallbacks.load(Relaxed),
            quic_datagrams_too_large: l.quic.datagrams_too_large.load(Relaxed),
            quic_datagrams_malformed: l.quic.datagrams_malformed.load(Relaxed),
            quic_handshakes_refused: l.quic.handshakes_refused.load(Relaxed),
            quic_handshakes_retried: l.quic.handshakes_retried.load(Relaxed),
            quic_handshakes_failed: l.quic.handshakes_failed.load(Relaxed),
            quic_accepted: l.quic.accepted.load(Relaxed),
            quic_dialled: l.quic.dialled.load(Relaxed),
        }
    }
}

/// Renders `stats` in the OpenMetrics text format (which Prometheus scrapes as-is).
pub fn render(stats: &Stats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats.clone())));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct StatsCollector(Stats);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A labelled family: one sample per `(labels, value)`.
fn family<L: prometheus_client::encoding::EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let s = m.encode_family(&labels)?;
        match ty {
            MetricType::Counter => ConstCounter::new(v).encode(s)?,
            _ => ConstGauge::new(v as i64).encode(s)?,
        }
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &HistogramStats,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // The encoder wants per-bucket counts (it accumulates) and `f64::MAX` for `+Inf`.
    let mut prev = 0;
    let buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|&(le, n)| (le as f64, n))
        .chain(std::iter::once((f64::MAX, h.count)))
        .map(|(le, n)| {
            let own = n.saturating_sub(prev);
            prev = n;
            (le, own)
        })
        .collect();
    m.encode_histogram::<NoLabelSet>(h.sum as f64, h.count, &buckets, None)
}

/// prometheus-client writes label values verbatim. Endpoints are `proto://socket-address` and
/// never hold a quote, backslash or newline; if one ever did, it becomes `_` rather than
/// breaking the exposition.
fn label_value(v: &str) -> String {
    v.replace(['"', '\\', '\n'], "_")
}

fn state_name(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::Alive => "alive",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Dead => "dead",
    }
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        let e = &mut e;
        gauge(
            e,
            "hypha_uptime_seconds",
            "Seconds since the node started",
            s.uptime as i64,
        )?;

        let peer = |p: &PeerStats| [("peer", label_value(&p.endpoint))];
        family(
            e,
            "hypha_peer_tx_bytes",
            "Bytes written to the peer's socket",
            Counter,
            s.peers.iter().map(|p| (peer(p), p.tx_bytes)),
        )?;
        family(
            e,
            "hypha_peer_rx_bytes",
            "Bytes read from the peer's socket",
            Counter,
            s.peers.iter().map(|p| (peer(p), p.rx_bytes)),
        )?;
        let kinded = |p: &PeerStats, data: u64, control: u64| {
            [
                (
                    [
                        ("peer", label_value(&p.endpoint)),
                        ("kind", "data".to_owned()),
                    ],
                    data,
                ),
                (
                    [
                        ("peer", label_value(&p.endpoint)),
                        ("kind", "control".to_owned()),
                    ],
                    control,
                ),
            ]
        };
        family(
            e,
            "hypha_peer_tx_frames",
            "Frames sent to the peer",
            Counter,
            s.peers
                .iter()
                .flat_map(|p| kinded(p, p.tx_data_frames, p.tx_control_frames)),
        )?;
        family(
            e,
            "hypha_peer_rx_frames",
            "Frames received from the peer",
            Counter,
            s.peers
                .iter()
                .flat_map(|p| kinded(p, p.rx_data_frames, p.rx_control_frames)),
        )?;
        family(
            e,
            "hypha_peer_state",
            "1 for the peer's connection state",
            Gauge,
            s.peers.iter().flat_map(|p| {
                [
                    ConnectionState::Alive,
                    ConnectionState::Connecting,
                    ConnectionState::Dead,
                ]
                .map(|st| {
                    let labels = [
                        ("peer", label_value(&p.endpoint)),
                        ("state", state_name(st).to_owned()),
                    ];
                    (labels, u64::from(p.connection_state == st))
                })
            }),
        )?;
        family(
            e,
            "hypha_peer_link_cost",
            "Routing cost of the peer's current link",
            Gauge,
            s.peers
                .iter()
                .filter_map(|p| p.link_cost.map(|c| (peer(p), u64::from(c)))),
        )?;
        family(
            e,
            "hypha_peer_routes",
            "Subnets the peer's link holds a route entry for",
            Gauge,
            s.peers.iter().map(|p| (peer(p), p.routes)),
        )?;
        family(
            e,
            "hypha_peer_routes_refused",
            "Updates from the peer refused because it held its share of the route table",
            Counter,
            s.peers.iter().map(|p| (peer(p), p.routes_refused)),
        )?;

        let d = &s.data;
        counter(
            e,
            "hypha_tun_packets_in",
            "IP packets (segments) read from the TUN into the data path",
            d.tun_packets_in,
        )?;
        counter(
            e,
            "hypha_tun_packets_out",
            "IP packets written to the TUN by the data path",
            d.tun_packets_out,
        )?;
        counter(
            e,
            "hypha_frames_sent",
            "Data frames sealed and sent for local packets",
            d.frames_sent,
        )?;
        counter(
            e,
            "hypha_frames_forwarded",
            "Data frames forwarded to another peer",
            d.frames_forwarded,
        )?;
        counter(
            e,
            "hypha_frames_delivered",
            "Data frames opened and delivered locally",
            d.frames_delivered,
        )?;
        counter(
            e,
            "hypha_decrypt_failures",
            "Data frames whose AEAD open failed",
            d.drop_decrypt,
        )?;
        counter(
            e,
            "hypha_malformed_control_frames",
            "Control frames skipped as malformed",
            d.malformed_control,
        )?;
        counter(
            e,
            "hypha_icmp_generated",
            "ICMPv6 errors generated",
            d.icmp_generated,
        )?;
        counter(
            e,
            "hypha_icmp_received",
            "Out-of-band ICMPv6 errors received",
            d.icmp_received,
        )?;
        family(
            e,
            "hypha_data_drops",
            "Data path drops by reason",
            Counter,
            [
                ("not_ipv6", d.drop_not_ipv6),
                ("no_route", d.drop_no_route),
                ("no_key", d.drop_no_key),
                ("hop_limit", d.drop_hop_limit),
                ("decrypt", d.drop_decrypt),
                ("inner", d.drop_inner),
                ("queue_full", d.drop_queue_full),
                ("queue_delay", d.drop_queue_delay),
                ("no_tun", d.drop_no_tun),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;
        counter(
            e,
            "hypha_data_ce_marks",
            "ECN-capable inner packets given a CE mark by a link's queue management instead of a drop",
            d.ce_marked,
        )?;
        family(
            e,
            "hypha_data_refusals",
            "Data path input refused as unsafe or over its limits, by reason",
            Counter,
            [
                ("inner_not_ipv6", d.refused_inner_not_ipv6),
                ("inner_source", d.refused_inner_source),
                ("inner_destination", d.refused_inner_destination),
                ("icmp_forged", d.refused_icmp_forged),
                ("icmp_rate", d.refused_icmp_rate),
                ("icmp_out_rate", d.icmp_rate_limited),
                ("sender_without_key", d.refused_sender),
                ("link_needs", d.refused_link_needs),
                ("pending_full", d.drop_pending_full),
                ("pending_expired", d.drop_pending_expired),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;

        if let Some(t) = &s.tun {
            counter(
                e,
                "hypha_tun_reads",
                "TUN read syscalls that returned a packet",
                t.reads,
            )?;
            counter(
                e,
                "hypha_tun_super_packets",
                "TUN reads that returned a GSO super-packet",
                t.super_packets,
            )?;
            counter(
                e,
                "hypha_tun_segments",
                "Segments handed out by TUN reads",
                t.segments,
            )?;
            counter(
                e,
                "hypha_tun_writes",
                "TUN write syscalls that succeeded",
                t.writes,
            )?;
            counter(
                e,
                "hypha_tun_coalesced_writes",
                "TUN writes that carried a coalesced train",
                t.coalesced_writes,
            )?;
            counter(
                e,
                "hypha_tun_packets_written",
                "IP packets written to the TUN",
                t.packets_written,
            )?;
            counter(
                e,
                "hypha_tun_einval_fallbacks",
                "Coalesced writes refused with EINVAL and retried singly",
                t.einval_fallbacks,
            )?;
            counter(
                e,
                "hypha_tun_offload_demotions",
                "Times coalescing was switched off after repeated EINVAL",
                t.demotions,
            )?;
            counter(
                e,
                "hypha_tun_read_errors",
                "TUN reads that failed",
                t.read_errors,
            )?;
            family(
                e,
                "hypha_tun_drops",
                "TUN drops by reason",
                Counter,
                [
                    ("malformed", t.drop_malformed),
                    ("truncated", t.drop_truncated),
                    ("sink_full", t.drop_sink_full),
                    ("write_error", t.drop_write_error),
                    ("would_block", t.drop_would_block),
                ]
                .map(|(r, v)| ([("reason", r)], v)),
            )?;
            histogram(
                e,
                "hypha_tun_read_segments",
                "Segments per TUN read",
                &t.read_segments,
            )?;
            histogram(
                e,
                "hypha_tun_write_packets",
                "Packets per TUN write syscall (per-batch mean)",
                &t.write_packets,
            )?;
        }

        let r = &s.routing;
        family(
            e,
            "hypha_routes",
            "Routes held",
            Gauge,
            [
                ("selected", r.selected_routes),
                ("fallback", r.fallback_routes),
            ]
            .map(|(k, v)| ([("kind", k)], v)),
        )?;
        gauge(
            e,
            "hypha_route_queries_in_flight",
            "Subnets with a route query in flight",
            r.queried_subnets as i64,
        )?;
        counter(
            e,
            "hypha_route_requests_sent",
            "RouteRequest TLVs sent",
            r.route_requests_sent,
        )?;
        counter(
            e,
            "hypha_route_requests_received",
            "RouteRequest TLVs received",
            r.route_requests_received,
        )?;
        counter(
            e,
            "hypha_route_requests_answered",
            "RouteRequest TLVs answered with an Update",
            r.route_requests_answered,
        )?;
        counter(
            e,
            "hypha_route_queries_timed_out",
            "Route queries that ended without a route",
            r.route_queries_timed_out,
        )?;
        counter(
            e,
            "hypha_routes_acquired",
            "Subnets that gained a route",
            r.routes_acquired,
        )?;
        counter(
            e,
            "hypha_routes_lost",
            "Subnets that lost their route",
            r.routes_lost,
        )?;
        family(
            e,
            "hypha_routing_tlvs_received",
            "Routing TLVs received by type",
            Counter,
            [
                ("hello", r.hello_received),
                ("ihu", r.ihu_received),
                ("update", r.updates_received),
                ("route_request", r.route_requests_received),
                ("seqno_request", r.seqno_requests_received),
            ]
            .map(|(k, v)| ([("type", k)], v)),
        )?;
        family(
            e,
            "hypha_routing_limited",
            "Routing inputs a limit refused, deferred, damped or clamped, by reason",
            Counter,
            [
                ("query_rate", r.queries_refused_rate),
                ("query_share", r.queries_refused_share),
                ("query_table_full", r.queries_refused_table_full),
                ("wildcard_deferred", r.wildcard_dumps_deferred),
                ("short_hold", r.updates_short_hold),
                ("damped", r.updates_damped),
                ("flap_table_full", r.flap_table_full),
                ("route_link_share", r.routes_refused_link_share),
                ("seqno_request_rate", r.seqno_requests_refused_rate),
            ]
            .map(|(k, v)| ([("reason", k)], v)),
        )?;
        let a = &s.api;
        family(
            e,
            "hypha_api_refused",
            "Admin API and metrics requests refused by reason (cross-site, DNS rebinding)",
            Counter,
            [
                ("host", a.refused_host),
                ("origin", a.refused_origin),
                ("content_type", a.refused_content_type),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;

        let p = &s.peering;
        gauge(
            e,
            "hypha_discovered_peers",
            "Peers found by link-local discovery, held now",
            p.discovered_peers as i64,
        )?;
        counter(
            e,
            "hypha_discovery_beacons_received",
            "Valid discovery beacons from other nodes",
            p.beacons_received,
        )?;
        family(
            e,
            "hypha_discovery_beacons_ignored",
            "Discovery beacons ignored by reason",
            Counter,
            [
                ("own", p.beacons_own),
                ("own_address", p.beacons_own_address),
                ("malformed", p.beacons_malformed),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;
        family(
            e,
            "hypha_discovered_peers_refused",
            "Discovered endpoints not made peers, by reason",
            Counter,
            [
                ("cap", p.discovered_refused_cap),
                ("rate", p.discovered_refused_rate),
                ("backoff", p.discovered_refused_backoff),
            ]
            .map(|(r, v)| ([("reason", r)], v)),
        )?;
        counter(
            e,
            "hypha_discovered_peers_backed_off",
            "Discovered endpoints forgotten and backing off after failing",
            p.discovered_backed_off,
        )?;
        counter(
            e,
            "hypha_self_links_closed",
            "Links closed because the remote end was this node itself",
            p.self_links_closed,
        )?;
        family(
            e,
            "hypha_inbound_connections",
            "Accepted peer connections by what became of them at the gate: proven (a link), \
             evicted for a newer one at the total cap of unproven connections, refused over the \
             per-source cap, timed out, malformed, closed by the remote end",
            Counter,
            [
                ("proven", p.inbound_proven),
                ("evicted", p.inbound_evicted),
                ("cap_source", p.inbound_refused_source_cap),
                ("timed_out", p.inbound_timed_out),
                ("malformed", p.inbound_malformed),
                ("closed", p.inbound_closed),
            ]
            .map(|(r, v)| ([("outcome", r)], v)),
        )?;
        family(
            e,
            "hypha_quic_datagrams",
            "Data frames sent as QUIC datagrams and frames received as datagrams",
            Counter,
            [("tx", p.quic_datagrams_tx), ("rx", p.quic_datagrams_rx)]
                .map(|(d, v)| ([("direction", d)], v)),
        )?;
        family(
            e,
            "hypha_quic_datagram_bytes",
            "Bytes of QUIC datagram frames",
            Counter,
            [
                ("tx", p.quic_datagram_bytes_tx),
                ("rx", p.quic_datagram_bytes_rx),
            ]
            .map(|(d, v)| ([("direction", d)], v)),
        )?;
        counter(
            e,
            "hypha_quic_stream_fallbacks",
            "Data frames sent on a QUIC link's stream because they did not fit a datagram",
            p.quic_stream_fallbacks,
        )?;
        counter(
            e,
            "hypha_quic_datagrams_too_large",
            "Datagrams the QUIC stack refused as too large after the size check (sent on the stream)",
            p.quic_datagrams_too_large,
        )?;
        counter(
            e,
            "hypha_quic_datagrams_malformed",
            "Received QUIC datagrams that were not exactly one frame (dropped)",
            p.quic_datagrams_malformed,
        )?;
        family(
            e,
            "hypha_quic_connections",
            "QUIC connection attempts by outcome: accepted or dialled as links, refused over the \
             per-source cap, asked to prove their address (retry), failed or never proven",
            Counter,
            [
                ("accepted", p.quic_accepted),
                ("dialled", p.quic_dialled),
                ("refused", p.quic_handshakes_refused),
                ("retried", p.quic_handshakes_retried),
                ("failed", p.quic_handshakes_failed),
            ]
            .map(|(r, v)| ([("outcome", r)], v)),
        )?;
        gauge(
            e,
            "hypha_unproven_connections",
            "Accepted connections that have not sent a well-formed frame yet",
            i64::try_from(p.inbound_unproven).unwrap_or(i64::MAX),
        )?;
        family(
            e,
            "hypha_links_closed",
            "Peer links closed, by reason",
            Counter,
            s.links_closed.labelled().map(|(r, v)| ([("reason", r)], v)),
        )?;
        if let Some(ss) = &s.sessions {
            family(
                e,
                "hypha_sessions",
                "Remote hypha nodes by the state of our end-to-end session with them",
                Gauge,
                [
                    ("established", ss.established),
                    ("handshaking", ss.handshaking),
                    ("legacy", ss.legacy),
                ]
                .map(|(st, v)| ([("state", st)], v)),
            )?;
            family(
                e,
                "hypha_session_events",
                "Session handshakes and their outcomes",
                Counter,
                [
                    ("initiation_sent", ss.initiations_sent),
                    ("response_sent", ss.responses_sent),
                    ("started", ss.sessions_started),
                    ("rekey", ss.rekeys),
                    ("handshake_refused", ss.handshakes_refused),
                    ("initiation_replayed", ss.replayed_initiations),
                    ("legacy_fallback", ss.legacy_fallbacks),
                    ("expired", ss.expired),
                    ("probe_sent", ss.probes_sent),
                    ("path_whole", ss.paths_whole),
                    ("whole_fallback", ss.whole_fallbacks),
                ]
                .map(|(ev, v)| ([("event", ev)], v)),
            )?;
        }
        family(
            e,
            "hypha_session_frames",
            "Data frames sealed or opened under an end-to-end session, and refused replays",
            Counter,
            [
                ("sent", d.session_frames_out),
                ("received", d.session_frames_in),
                ("replay_refused", d.session_replays),
                ("super_sent", d.super_frames_out),
                ("super_received", d.super_frames_in),
            ]
            .map(|(r, v)| ([("kind", r)], v)),
        )?;
        counter(
            e,
            "hypha_tcp_mss_clamped",
            "TCP SYNs sent or received over a QUIC link whose MSS was lowered to fit its datagrams",
            d.tcp_mss_clamped,
        )?;
        encode_messages(e, &s.messages)
    }
}

fn encode_messages(e: &mut DescriptorEncoder, m: &MessageStats) -> std::fmt::Result {
    let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    counter(
        e,
        "hypha_messages_sent",
        "Messages sent and acknowledged in full",
        m.sent,
    )?;
    counter(
        e,
        "hypha_message_bytes_sent",
        "Bytes of messages sent",
        m.sent_bytes,
    )?;
    counter(
        e,
        "hypha_messages_received",
        "Messages received in full",
        m.received,
    )?;
    counter(
        e,
        "hypha_message_bytes_received",
        "Bytes of messages received",
        m.received_bytes,
    )?;
    counter(
        e,
        "hypha_messages_failed",
        "Outgoing messages given up at their deadline",
        m.failed,
    )?;
    counter(
        e,
        "hypha_message_packets_in",
        "Message packets received",
        m.packets_in,
    )?;
    counter(
        e,
        "hypha_message_packets_out",
        "Message packets sent",
        m.packets_out,
    )?;
    counter(
        e,
        "hypha_message_retransmits",
        "Message packets sent again after no acknowledgement",
        m.retransmits,
    )?;
    family(
        e,
        "hypha_messages_refused",
        "Incoming message packets or messages refused, by reason",
        MetricType::Counter,
        [
            ("malformed", m.malformed),
            ("inbox_full", m.refused_inbox_full),
            ("too_large", m.refused_too_large),
            ("topic", m.refused_topic),
            ("checksum", m.bad_checksum),
            ("aborted", m.aborted_incoming),
            ("idle", m.idle_incoming),
        ]
        .map(|(r, v)| ([("reason", r)], v)),
    )?;
    gauge(
        e,
        "hypha_message_inbox_depth",
        "Messages waiting to be read",
        g(m.inbox_messages),
    )?;
    gauge(
        e,
        "hypha_message_inbox_bytes",
        "Bytes held for the inbox: waiting messages and those being received",
        g(m.inbox_bytes),
    )?;
    gauge(
        e,
        "hypha_messages_incoming",
        "Messages being received",
        g(m.incoming),
    )?;
    gauge(
        e,
        "hypha_messages_outgoing",
        "Messages being sent",
        g(m.outgoing),
    )?;
    gauge(
        e,
        "hypha_message_outbox_bytes",
        "Bytes of messages being sent",
        g(m.outbox_bytes),
    )
}

/// Reads one sample from rendered text: `name` with exactly `labels` (in rendering order, as
/// `key="value"` pairs joined by commas; empty for none). For tests and tools.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        let h = TunHistograms::default();
        h.read_segments.observe(1);
        h.read_segments.observe(47);
        h.read_segments.observe(47);
        h.write_packets.observe_many(3, 90); // three writes of 30 on average
        h.write_packets.observe(300);
        Stats {
            uptime: 12,
            peers: vec![
                PeerStats {
                    endpoint: "tcp://198.18.0.2:9651".to_owned(),
                    connection_state: ConnectionState::Alive,
                    link_cost: Some(103),
                    tx_bytes: 1000,
                    rx_bytes: 2000,
                    tx_data_frames: 5,
                    tx_control_frames: 6,
                    rx_data_frames: 7,
                    rx_control_frames: 8,
                    routes: 1200,
                    routes_refused: 7,
                },
                PeerStats {
                    endpoint: "tcp://[fe80::1%2]:9651".to_owned(),
                    connection_state: ConnectionState::Dead,
                    link_cost: None,
                    tx_bytes: 0,
                    rx_bytes: 0,
                    tx_data_frames: 0,
                    tx_control_frames: 0,
                    rx_data_frames: 0,
                    rx_control_frames: 0,
                    routes: 0,
                    routes_refused: 0,
                },
            ],
            data: DataStats {
                drop_decrypt: 3,
                malformed_control: 4,
                frames_sent: 9,
                refused_inner_source: 7,
                drop_pending_expired: 8,
                ..DataStats::default()
            },
            tun: Some(TunStats::new(
                &tun::Stats {
                    reads: 3,
                    super_packets: 2,
                    segments: 95,
                    einval_fallbacks: 1,
                    ..tun::Stats::default()
                },
                &h,
            )),
            routing: RoutingStats {
                selected_routes: 2,
                route_requests_sent: 4,
                queries_refused_rate: 5,
                ..RoutingStats::default()
            },
            api: ApiStats {
                refused_origin: 6,
                ..ApiStats::default()
            },
            peering: PeeringStats {
                discovered_peers: 3,
                beacons_own_address: 5,
                discovered_refused_cap: 6,
                self_links_closed: 2,
                ..PeeringStats::default()
            },
            links_closed: LinkCloseStats {
                write_stalled: 3,
                self_link: 2,
                ..LinkCloseStats::default()
            },
            sessions: Some(SessionStats {
                established: 4,
                legacy: 1,
                rekeys: 9,
                whole_fallbacks: 2,
                ..SessionStats::default()
            }),
            messages: MessageStats {
                sent: 4,
                received_bytes: 5000,
                malformed: 6,
                inbox_messages: 2,
                ..MessageStats::default()
            },
        }
    }

    #[test]
    fn message_counters_are_rendered() {
        let text = render(&stats());
        assert_eq!(sample(&text, "hypha_messages_sent_total", ""), Some(4.0));
        assert_eq!(
            sample(&text, "hypha_message_bytes_received_total", ""),
            Some(5000.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_messages_refused_total",
                "reason=\"malformed\""
            ),
            Some(6.0)
        );
        assert_eq!(sample(&text, "hypha_message_inbox_depth", ""), Some(2.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(1);
        h.observe(3);
        h.observe(4);
        h.observe(1000);
        h.observe_many(2, 10); // mean 5
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 1018);
        assert_eq!(s.buckets[0], (1, 1));
        assert_eq!(s.buckets[1], (2, 1));
        assert_eq!(s.buckets[2], (4, 3));
        assert_eq!(s.buckets[3], (8, 5));
        assert_eq!(*s.buckets.last().unwrap(), (256, 5));
        h.observe_many(0, 5);
        assert_eq!(h.snapshot().count, 6);
    }

    #[test]
    fn renders_counters_gauges_and_labels() {
        let text = render(&stats());
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE hypha_peer_tx_bytes counter\n"));
        assert_eq!(
            sample(
                &text,
                "hypha_peer_tx_bytes_total",
                "peer=\"tcp://198.18.0.2:9651\""
            ),
            Some(1000.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_peer_rx_frames_total",
                "peer=\"tcp://198.18.0.2:9651\",kind=\"control\""
            ),
            Some(8.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_peer_state",
                "peer=\"tcp://198.18.0.2:9651\",state=\"alive\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_peer_state",
                "peer=\"tcp://198.18.0.2:9651\",state=\"dead\""
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_peer_link_cost",
                "peer=\"tcp://198.18.0.2:9651\""
            ),
            Some(103.0)
        );
        // A dead peer has no cost sample.
        assert!(
            text.contains("peer=\"tcp://[fe80::1%2]:9651\",state=\"dead\"} 1"),
            "{text}"
        );
        assert_eq!(text.matches("hypha_peer_link_cost{").count(), 1);
        assert_eq!(sample(&text, "hypha_decrypt_failures_total", ""), Some(3.0));
        assert_eq!(
            sample(&text, "hypha_data_drops_total", "reason=\"decrypt\""),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_data_refusals_total",
                "reason=\"inner_source\""
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_data_refusals_total",
                "reason=\"pending_expired\""
            ),
            Some(8.0)
        );
        assert_eq!(
            sample(&text, "hypha_malformed_control_frames_total", ""),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_super_packets_total", ""),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_einval_fallbacks_total", ""),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "hypha_routes", "kind=\"selected\""),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "hypha_route_requests_sent_total", ""),
            Some(4.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_routing_limited_total",
                "reason=\"query_rate\""
            ),
            Some(5.0)
        );
        assert_eq!(sample(&text, "hypha_uptime_seconds", ""), Some(12.0));
        assert_eq!(
            sample(&text, "hypha_api_refused_total", "reason=\"origin\""),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, "hypha_api_refused_total", "reason=\"content_type\""),
            Some(0.0)
        );
        assert_eq!(sample(&text, "hypha_discovered_peers", ""), Some(3.0));
        assert_eq!(
            sample(
                &text,
                "hypha_discovery_beacons_ignored_total",
                "reason=\"own_address\""
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_discovered_peers_refused_total",
                "reason=\"cap\""
            ),
            Some(6.0)
        );
        assert_eq!(
            sample(&text, "hypha_self_links_closed_total", ""),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_links_closed_total",
                "reason=\"write_stalled\""
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hypha_links_closed_total", "reason=\"peer_closed\""),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "hypha_sessions", "state=\"established\""),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "hypha_session_events_total", "event=\"rekey\""),
            Some(9.0)
        );
        assert_eq!(
            sample(
                &text,
                "hypha_session_events_total",
                "event=\"whole_fallback\""
            ),
            Some(2.0)
        );
    }

    #[test]
    fn renders_histograms() {
        let text = render(&stats());
        assert!(text.contains("# TYPE hypha_tun_read_segments histogram\n"));
        assert_eq!(
            sample(&text, "hypha_tun_read_segments_count", ""),
            Some(3.0)
        );
        assert_eq!(sample(&text, "hypha_tun_read_segments_sum", ""), Some(95.0));
        assert_eq!(
            sample(&text, "hypha_tun_read_segments_bucket", "le=\"1.0\""),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_read_segments_bucket", "le=\"32.0\""),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_read_segments_bucket", "le=\"64.0\""),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_read_segments_bucket", "le=\"+Inf\""),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_write_packets_count", ""),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_write_packets_bucket", "le=\"32.0\""),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_write_packets_bucket", "le=\"256.0\""),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "hypha_tun_write_packets_bucket", "le=\"+Inf\""),
            Some(4.0)
        );
    }

    #[test]
    fn without_tun_no_tun_metrics() {
        let mut s = stats();
        s.tun = None;
        let text = render(&s);
        assert!(!text.contains("hypha_tun_reads"));
        assert!(text.contains("hypha_frames_sent_total 9\n"));
    }

    #[test]
    fn label_values_cannot_break_the_format() {
        let mut s = stats();
        s.peers[1].endpoint = "a\"b\\c\nd".to_owned();
        let text = render(&s);
        assert_eq!(
            sample(&text, "hypha_peer_tx_bytes_total", "peer=\"a_b_c_d\""),
            Some(0.0)
        );
    }

    #[test]
    fn stats_json_round_trip() {
        let s = stats();
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"connectionState\":\"alive\""), "{j}");
        assert!(
            j.contains("\"api\":{\"refusedHost\":0,\"refusedOrigin\":6,"),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<Stats>(&j).unwrap(), s);
        // A node without the API counters still parses.
        let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v.as_object_mut().unwrap().remove("api");
        let old: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(old.api, ApiStats::default());
    }
}
