//! The subcommands that talk to a running node through its admin API (`--api-addr`):
//! `peers list|add|remove`, `routes selected|fallback|queried` and `stats [--json] [--watch]`.
//!
//! Human output is aligned tables; `--json` prints the API's JSON exactly as it came. Every failure
//! becomes one line that names what went wrong, and a non-zero exit.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use node::api::types::{AddPeer, ErrorBody, Lenient, PeerRow, QueryRow, RouteMetric, RouteRow};
use node::control::{ConnectionState, PeerKind};
use node::metrics::Stats;

use crate::cli::{Command, PeersCmd, RoutesCmd};

/// The API is local and answers from memory; anything slower than this is a stuck node.
/// Largest answer read from the API.
const MAX_BODY: u64 = 256 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a `peers` or `routes` subcommand against the node at `api_addr`, printing to stdout.
pub fn run(cmd: Command, api_addr: SocketAddr) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(cmd, api_addr, &mut out)
}

fn run_to(cmd: Command, api_addr: SocketAddr, out: &mut dyn Write) -> anyhow::Result<()> {
    let api = Api::new(api_addr);
    match cmd {
        Command::Peers { cmd } => match cmd {
            PeersCmd::List { json } => {
                let text = api.get("/api/v1/admin/peers")?;
                if json {
                    print_raw(out, &text)
                } else {
                    let peers: Vec<PeerRow> = api.decode(&text)?;
                    print_table(out, &peers_table(&peers), "no peers")
                }
            }
            PeersCmd::Add { endpoints } => change_peers(&api, out, &endpoints, true),
            PeersCmd::Remove { endpoints } => change_peers(&api, out, &endpoints, false),
        },
        Command::Routes { cmd } => {
            let (kind, json) = match cmd {
                RoutesCmd::Selected { json } => ("selected", json),
                RoutesCmd::Fallback { json } => ("fallback", json),
                RoutesCmd::Queried { json } => ("queried", json),
            };
            let text = api.get(&format!("/api/v1/admin/routes/{kind}"))?;
            if json {
                return print_raw(out, &text);
            }
            if kind == "queried" {
                let rows: Vec<QueryRow> = api.decode(&text)?;
                print_table(out, &queried_table(&rows), "no subnets being queried")
            } else {
                let rows: Vec<RouteRow> = api.decode(&text)?;
                print_table(out, &routes_table(&rows), &format!("no {kind} routes"))
            }
        }
        Command::Stats { json, watch } => match watch {
            None => {
                let text = api.get("/api/v1/admin/stats")?;
                if json {
                    print_raw(out, &text)
                } else {
                    let s: Stats = api.decode(&text)?;
                    out.write_all(stats_text(&s, None).as_bytes())?;
                    Ok(())
                }
            }
            Some(secs) => watch_stats(&api, out, json, secs),
        },
        Command::Sessions { json } => {
            let text = api.get("/api/v1/admin/sessions")?;
            if json {
                return print_raw(out, &text);
            }
            let s: Option<node::metrics::SessionStats> = api.decode(&text)?;
            match s {
                Some(s) => print_table(out, &sessions_table(&s), "no sessions"),
                None => {
                    writeln!(out, "sessions are off on this node (--no-sessions)")?;
                    Ok(())
                }
            }
        }
        other => bail!("internal: {other:?} is not an API client command"),
    }
}

/// `stats --watch`: one snapshot per interval, with rates over the last interval, until the
/// process is interrupted (Ctrl-C) or the node goes away.
fn watch_stats(api: &Api, out: &mut dyn Write, json: bool, secs: f64) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !(secs.is_finite() && secs >= 0.1) {
        bail!("--watch interval must be at least 0.1 seconds, got {secs}");
    }
    let interval = Duration::from_secs_f64(secs);
    let clear = !json && std::io::stdout().is_terminal();
    let mut prev: Option<(Stats, std::time::Instant)> = None;
    loop {
        let text = api.get("/api/v1/admin/stats")?;
        let now = std::time::Instant::now();
        if json {
            // One compact document per line, for `jq` and friends.
            let v: serde_json::Value = api.decode(&text)?;
            writeln!(out, "{v}")?;
        } else {
            let s: Stats = api.decode(&text)?;
            let rates = prev
                .as_ref()
                .map(|(p, t)| (p, now.duration_since(*t).as_secs_f64()));
            let body = stats_text(&s, rates);
            if clear {
                write!(out, "\x1b[2J\x1b[H")?;
            }
            out.write_all(body.as_bytes())?;
            if !clear {
                writeln!(out)?;
            }
            prev = Some((s, now));
        }
        out.flush()?;
        std::thread::sleep(interval);
    }
}

/// The human rendering of `stats`; with the previous snapshot and the seconds since, rates too.
fn stats_text(s: &Stats, prev: Option<(&Stats, f64)>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let rate = |now: u64, before: Option<u64>| -> Option<f64> {
        let (_, dt) = prev?;
        let before = before?;
        (dt > 0.0).then(|| now.saturating_sub(before) as f64 / dt)
    };
    let _ = writeln!(o, "uptime {}", human_duration(s.uptime));
    let prev_peer = |e: &str| prev.and_then(|(p, _)| p.peers.iter().find(|q| q.endpoint == e));
    let mut peers = Table {
        header: vec![
            "PEER",
            "STATE",
            "COST",
            "TX",
            "RX",
            "TX FRAMES",
            "RX FRAMES",
            "TX/s",
            "RX/s",
            "TX pkt/s",
            "RX pkt/s",
        ],
        right: vec![
            false, false, true, true, true, true, true, true, true, true, true,
        ],
        rows: Vec::new(),
    };
    if prev.is_none() {
        peers.header.truncate(7);
    }
    for p in &s.peers {
        let mut row = vec![
            p.endpoint.clone(),
            state_name(p.connection_state).to_owned(),
            p.link_cost.map_or("-".to_owned(), |c| c.to_string()),
            human_bytes(p.tx_bytes),
            human_bytes(p.rx_bytes),
            format!("{}+{}", p.tx_data_frames, p.tx_control_frames),
            format!("{}+{}", p.rx_data_frames, p.rx_control_frames),
        ];
        if prev.is_some() {
            let q = prev_peer(&p.endpoint);
            row.push(human_rate(rate(p.tx_bytes, q.map(|q| q.tx_bytes))));
            row.push(human_rate(rate(p.rx_bytes, q.map(|q| q.rx_bytes))));
            row.push(count_rate(rate(
                p.tx_data_frames,
                q.map(|q| q.tx_data_frames),
            )));
            row.push(count_rate(rate(
                p.rx_data_frames,
                q.map(|q| q.rx_data_frames),
            )));
        }
        peers.rows.push(row);
    }
    if peers.rows.is_empty() {
        o.push_str("no peers\n");
    } else {
        o.push_str(&peers.render());
    }
    let d = &s.data;
    let pd = prev.map(|(p, _)| &p.data);
    let _ = write!(
        o,
        "data    tun in {} pkts, tun out {} pkts, frames sent {}, forwarded {}, delivered {}",
        d.tun_packets_in, d.tun_packets_out, d.frames_sent, d.frames_forwarded, d.frames_delivered
    );
    if prev.is_some() {
        let _ = write!(
            o,
            " | tun in {}, tun out {}, forwarded {}",
            count_rate(rate(d.tun_packets_in, pd.map(|p| p.tun_packets_in))),
            count_rate(rate(d.tun_packets_out, pd.map(|p| p.tun_packets_out))),
            count_rate(rate(d.frames_forwarded, pd.map(|p| p.frames_forwarded))),
        );
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "drops   no route {}, no key {}, decrypt {}, hop limit {}, queue full {}, queue delay {} \
         (and {} CE marks instead), not ipv6 {}, bad inner {}, no tun {}; malformed control frames {}",
        d.drop_no_route,
        d.drop_no_key,
        d.drop_decrypt,
        d.drop_hop_limit,
        d.drop_queue_full,
        d.drop_queue_delay,
        d.ce_marked,
        d.drop_not_ipv6,
        d.drop_inner,
        d.drop_no_tun,
        d.malformed_control
    );
    let _ = writeln!(
        o,
        "refused inner source {}, inner destination {}, inner not ipv6 {}, forged icmp {}, \
         icmp over rate {} (not sent {}), sender without key {}, link needs over budget {}; waiting \
         traffic dropped full {}, expired {}",
        d.refused_inner_source,
        d.refused_inner_destination,
        d.refused_inner_not_ipv6,
        d.refused_icmp_forged,
        d.refused_icmp_rate,
        d.icmp_rate_limited,
        d.refused_sender,
        d.refused_link_needs,
        d.drop_pending_full,
        d.drop_pending_expired
    );
    match &s.tun {
        Some(t) => {
            let _ = writeln!(
                o,
                "tun     reads {} (super-packets {}), {:.1} segments/read; writes {} (coalesced {}), \
                 {:.1} packets/write; EINVAL fallbacks {}, demotions {}, drops {}",
                t.reads,
                t.super_packets,
                t.read_segments.mean(),
                t.writes,
                t.coalesced_writes,
                t.write_packets.mean(),
                t.einval_fallbacks,
                t.demotions,
                t.drop_malformed
                    + t.drop_truncated
                    + t.drop_sink_full
                    + t.drop_write_error
                    + t.drop_would_block,
            );
        }
        None => o.push_str("tun     none (--no-tun)\n"),
    }
    let r = &s.routing;
    let _ = writeln!(
        o,
        "routing selected {}, fallback {}, queried {}; route requests sent {}, received {}, \
         answered {}; queries timed out {}; routes acquired {}, lost {}",
        r.selected_routes,
        r.fallback_routes,
        r.queried_subnets,
        r.route_requests_sent,
        r.route_requests_received,
        r.route_requests_answered,
        r.route_queries_timed_out,
        r.routes_acquired,
        r.routes_lost
    );
    let _ = writeln!(
        o,
        "limits  queries refused: rate {}, link share {}, table full {}; wildcard dumps deferred \
         {}; updates held to the minimum {}, damped {}; flapping subnets not tracked {}; routes \
         refused over a peer's share {}; seqno requests refused by rate {}",
        r.queries_refused_rate,
        r.queries_refused_share,
        r.queries_refused_table_full,
        r.wildcard_dumps_deferred,
        r.updates_short_hold,
        r.updates_damped,
        r.flap_table_full,
        r.routes_refused_link_share,
        r.seqno_requests_refused_rate
    );
    let a = &s.api;
    let _ = writeln!(
        o,
        "api     refused: host {}, origin {}, content type {}",
        a.refused_host, a.refused_origin, a.refused_content_type
    );
    let p = &s.peering;
    let _ = writeln!(
        o,
        "peering discovered {}; beacons {} (ignored: own {}, own address {}, malformed {}); \
         discovered refused: cap {}, rate {}, backoff {}; backed off {}; self-links closed {}",
        p.discovered_peers,
        p.beacons_received,
        p.beacons_own,
        p.beacons_own_address,
        p.beacons_malformed,
        p.discovered_refused_cap,
        p.discovered_refused_rate,
        p.discovered_refused_backoff,
        p.discovered_backed_off,
        p.self_links_closed
    );
    let _ = writeln!(
        o,
        "inbound proven {}; evicted at the total cap {}, refused over the source cap {}; \
         timed out {}, malformed {}, closed {}; unproven now {}",
        p.inbound_proven,
        p.inbound_evicted,
        p.inbound_refused_source_cap,
        p.inbound_timed_out,
        p.inbound_malformed,
        p.inbound_closed,
        p.inbound_unproven
    );
    if p.quic_accepted + p.quic_dialled + p.quic_handshakes_refused + p.quic_handshakes_failed > 0 {
        let _ = writeln!(
            o,
            "quic: links accepted {}, dialled {}; attempts refused {}, retried {}, failed {}; \
             datagrams sent {} ({}), received {} ({}), malformed {}; data frames on the stream {} \
             (too large after the check {}); TCP SYNs clamped {}",
            p.quic_accepted,
            p.quic_dialled,
            p.quic_handshakes_refused,
            p.quic_handshakes_retried,
            p.quic_handshakes_failed,
            p.quic_datagrams_tx,
            human_bytes(p.quic_datagram_bytes_tx),
            p.quic_datagrams_rx,
            human_bytes(p.quic_datagram_bytes_rx),
            p.quic_datagrams_malformed,
            p.quic_stream_fallbacks,
            p.quic_datagrams_too_large,
            s.data.tcp_mss_clamped
        );
    }
    let closed: Vec<String> = s
        .links_closed
        .labelled()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    let closed = if closed.is_empty() {
        "none".to_owned()
    } else {
        closed.join(", ")
    };
    let _ = writeln!(o, "links closed: {closed}");
    let d = &s.data;
    match &s.sessions {
        Some(ss) => {
            let _ = writeln!(
                o,
                "sessions: {} established, {} handshaking, {} legacy; started {}, rekeys {}, \
                 handshakes refused {}, initiations replayed {}, legacy fallbacks {}; frames \
                 sent {}, received {}, replays refused {}; super-frames sent {}, received {}, \
                 paths whole {}, fallbacks {}",
                ss.established,
                ss.handshaking,
                ss.legacy,
                ss.sessions_started,
                ss.rekeys,
                ss.handshakes_refused,
                ss.replayed_initiations,
                ss.legacy_fallbacks,
                d.session_frames_out,
                d.session_frames_in,
                d.session_replays,
                d.super_frames_out,
                d.super_frames_in,
                ss.paths_whole,
                ss.whole_fallbacks
            );
        }
        None => {
            let _ = writeln!(o, "sessions: off (--no-sessions)");
        }
    }
    let m = &s.messages;
    let _ = writeln!(
        o,
        "messages sent {} ({}), received {} ({}), failed {}; inbox {} ({}), receiving {}, \
         sending {}; refused: malformed {}, inbox full {}, too large {}, topic {}, checksum {}",
        m.sent,
        human_bytes(m.sent_bytes),
        m.received,
        human_bytes(m.received_bytes),
        m.failed,
        m.inbox_messages,
        human_bytes(m.inbox_bytes),
        m.incoming,
        m.outgoing,
        m.malformed,
        m.refused_inbox_full,
        m.refused_too_large,
        m.refused_topic,
        m.bad_checksum
    );
    o
}

/// `hypha sessions`: one row per remote node with session state.
fn sessions_table(s: &node::metrics::SessionStats) -> Table {
    let mut t = Table {
        header: vec![
            "ADDRESS",
            "STATE",
            "AGE",
            "REKEYS",
            "SENT",
            "RECEIVED",
            "REPLAYS",
            "FALLBACKS",
            "SUPER",
            "SUPER OUT",
            "SUPER IN",
            "SUPER FALLBACKS",
        ],
        right: vec![
            false, false, true, true, true, true, true, true, false, true, true, true,
        ],
        rows: Vec::new(),
    };
    for p in &s.peers {
        t.rows.push(vec![
            p.address.clone(),
            p.state.clone(),
            p.age_secs.map_or_else(|| "-".into(), human_duration),
            p.rekeys.to_string(),
            p.frames_sent.to_string(),
            p.frames_received.to_string(),
            p.replays_refused.to_string(),
            p.legacy_fallbacks.to_string(),
            p.super_frames.clone(),
            p.supers_sent.to_string(),
            p.supers_received.to_string(),
            p.super_fallbacks.to_string(),
        ]);
    }
    t
}

fn state_name(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::Alive => "alive",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Dead => "dead",
    }
}

/// Bytes per second in SI units and bits: `12.5 MB/s (100.0 Mbit/s)`; `-` when unknown.
fn human_rate(r: Option<f64>) -> String {
    let Some(r) = r else {
        return "-".to_owned();
    };
    let (v, u) = si(r);
    let (b, bu) = si(r * 8.0);
    format!("{v:.1} {u}B/s ({b:.1} {bu}bit/s)")
}

/// Events per second: `1234/s`, `12.3k/s`; `-` when unknown.
fn count_rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r < 1000.0 => format!("{r:.0}/s"),
        Some(r) => {
            let (v, u) = si(r);
            format!("{v:.1}{}/s", u.to_lowercase())
        }
    }
}

fn si(v: f64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = v;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    (v, UNITS[i])
}

/// Adds or removes each endpoint in turn; reports every failure, then fails if any did. A node
/// that cannot be reached stops the whole run at once.
fn change_peers(
    api: &Api,
    out: &mut dyn Write,
    endpoints: &[String],
    add: bool,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for e in endpoints {
        let r = if add {
            api.send(
                "POST",
                "/api/v1/admin/peers",
                Some(serde_json::json!(AddPeer {
                    endpoint: e.clone()
                })),
            )
        } else {
            api.send(
                "DELETE",
                &format!("/api/v1/admin/peers/{}", percent_encode(e)),
                None,
            )
        };
        match r {
            Ok(()) => writeln!(out, "{} {e}", if add { "added" } else { "removed" })?,
            Err(CallError::Refused { status, message }) => {
                failed.push(format!("{e}: {message} (HTTP {status})"));
            }
            Err(CallError::Transport(err)) => return Err(err),
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(anyhow!(
            "cannot {} peer {}",
            if add { "add" } else { "remove" },
            failed.join("; ")
        )),
    }
}

fn print_raw(out: &mut dyn Write, text: &str) -> anyhow::Result<()> {
    writeln!(out, "{}", text.trim_end())?;
    Ok(())
}

fn print_table(out: &mut dyn Write, table: &Table, empty: &str) -> anyhow::Result<()> {
    if table.rows.is_empty() {
        writeln!(out, "{empty}")?;
    } else {
        out.write_all(table.render().as_bytes())?;
    }
    Ok(())
}

/// A failed call: either the node said no (a status and its message), or we never got an answer.
enum CallError {
    Refused { status: u16, message: String },
    Transport(anyhow::Error),
}

struct Api {
    agent: ureq::Agent,
    addr: SocketAddr,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build();
        Api {
            agent: ureq::Agent::new_with_config(config),
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn transport_error(&self, e: ureq::Error) -> anyhow::Error {
        let addr = self.addr;
        match e {
            ureq::Error::Io(io) => {
                let why = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                    _ => io.to_string(),
                };
                anyhow!(
                    "cannot reach the node's API at {addr}: {why} (is the node running? --api-addr)"
                )
            }
            ureq::Error::Timeout(_) => anyhow!(
                "the node's API at {addr} did not answer within {}s (--api-addr)",
                TIMEOUT.as_secs()
            ),
            ureq::Error::ConnectionFailed => {
                anyhow!("cannot reach the node's API at {addr} (is the node running? --api-addr)")
            }
            other => anyhow!("talking to the node's API at {addr} failed: {other}"),
        }
    }

    /// Makes one call and returns the status and body text.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let url = self.url(path);
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("POST", None) => self.agent.post(&url).send_empty(),
            _ => bail!("internal: unsupported method {method}"),
        };
        let mut res = res.map_err(|e| self.transport_error(e))?;
        let status = res.status().as_u16();
        // A full routing table is tens of megabytes of JSON (262,144 routes at most); the
        // client's default limit of 10 MB would refuse it.
        let text = res
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        Ok((status, text))
    }

    /// GET returning the body of a 2xx answer.
    fn get(&self, path: &str) -> anyhow::Result<String> {
        let (status, text) = self.call("GET", path, None)?;
        if !(200..300).contains(&status) {
            bail!(
                "the node's API at {} refused {path}: {} (HTTP {status})",
                self.addr,
                error_message(&text)
            );
        }
        Ok(text)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), CallError> {
        let (status, text) = self
            .call(method, path, body)
            .map_err(CallError::Transport)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(CallError::Refused {
                status,
                message: error_message(&text),
            })
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, text: &str) -> anyhow::Result<T> {
        serde_json::from_str(text)
            .with_context(|| format!("unexpected answer from the node's API at {}", self.addr))
    }
}

/// The message of an error answer: `{"error": ...}` when the node sent one, else the body itself.
pub(crate) fn error_message(body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) if body.trim().is_empty() => "no details given".to_owned(),
        Err(_) => body.trim().lines().next().unwrap_or_default().to_owned(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so an endpoint fits in one
/// path segment.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// A text table: a header and rows of cells; some columns right-aligned (numbers).
struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns separated by two spaces, no trailing whitespace, one line per row.
    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut s = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.right.get(i).copied().unwrap_or(false) {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

fn peers_table(peers: &[PeerRow]) -> Table {
    Table {
        header: vec![
            "ENDPOINT",
            "TYPE",
            "STATE",
            "TX",
            "RX",
            "CONNECTED",
            "ROUTES",
            "REFUSED",
            "RETRY",
        ],
        right: vec![false, false, false, true, true, true, true, true, false],
        rows: peers
            .iter()
            .map(|p| {
                let endpoint = match &p.endpoint {
                    Lenient::Known(e) => e.to_string(),
                    Lenient::Unknown(e) => e.to_string(),
                };
                let kind = match &p.kind {
                    Lenient::Known(PeerKind::Static) => "static",
                    Lenient::Known(PeerKind::Inbound) => "inbound",
                    Lenient::Known(PeerKind::LinkLocalDiscovery) => "link-local",
                    Lenient::Unknown(k) => k,
                };
                let state = match &p.connection_state {
                    Lenient::Known(s) => state_name(*s),
                    Lenient::Unknown(s) => s,
                };
                let connected = match (&p.connection_state, p.last_connected) {
                    (Lenient::Known(ConnectionState::Alive), Some(s)) => human_duration(s),
                    _ => "-".to_owned(),
                };
                vec![
                    endpoint,
                    kind.to_owned(),
                    state.to_owned(),
                    human_bytes(p.tx_bytes),
                    human_bytes(p.rx_bytes),
                    connected,
                    p.routes.to_string(),
                    p.routes_refused.to_string(),
                    retry(p),
                ]
            })
            .collect(),
    }
}

/// When a peer that is not connected is dialled next, and how many times in a row it failed.
fn retry(p: &PeerRow) -> String {
    if matches!(p.connection_state, Lenient::Known(ConnectionState::Alive)) {
        return "-".to_owned();
    }
    let when = match p.next_dial_in_ms {
        None => return "-".to_owned(),
        Some(ms) if ms < 10_000 => format!("in {:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("in {}", human_duration(ms / 1000)),
    };
    match p.failures {
        0 => when,
        1 => format!("{when}, 1 failure"),
        n => format!("{when}, {n} failures"),
    }
}

fn routes_table(routes: &[RouteRow]) -> Table {
    Table {
        header: vec!["SUBNET", "NEXT HOP", "METRIC", "SEQNO"],
        right: vec![false, false, true, true],
        rows: routes
            .iter()
            .map(|r| {
                let metric = match &r.metric {
                    RouteMetric::Finite(m) => m.to_string(),
                    RouteMetric::Infinite(s) => s.clone(),
                };
                vec![
                    r.subnet.clone(),
                    r.next_hop.clone(),
                    metric,
                    r.seqno.to_string(),
                ]
            })
            .collect(),
    }
}

fn queried_table(rows: &[QueryRow]) -> Table {
    Table {
        header: vec!["SUBNET", "EXPIRES IN"],
        right: vec![false, true],
        rows: rows
            .iter()
            .map(|q| {
                let left = match q.expiration.parse::<u64>() {
                    Ok(s) => human_duration(s),
                    Err(_) => q.expiration.clone(),
                };
                vec![q.subnet.clone(), left]
            })
            .collect(),
    }
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[allow(clippy::cast_precision_loss)] // one decimal shown; the loss is far below it
    let mut v = n as f64;
    let mut unit = 0;
    // Step up while the value would print as 1024.0 or more in this unit.
    while v >= 1023.95 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration in its two largest units: `42s`, `5m 07s`, `3h 04m`, `2d 03h`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use node::control::{
        ConnectionState, Control, NodeInfo, PeerInfo, PeerKind, PeerOpError, QueryInfo, Request,
        RouteInfo, RouteKind,
    };
    use wire::babel::{Metric, Subnet};

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m 00s");
        assert_eq!(human_duration(307), "5m 07s");
        assert_eq!(human_duration(3 * 3600 + 4 * 60 + 5), "3h 04m");
        assert_eq!(human_duration(2 * 86_400 + 3 * 3600), "2d 03h");
    }

    #[test]
    fn table_aligns_columns() {
        let t = Table {
            header: vec!["NAME", "N", "LAST"],
            right: vec![false, true, false],
            rows: vec![
                vec!["a".into(), "1".into(), "x".into()],
                vec!["longer".into(), "1000".into(), "".into()],
            ],
        };
        assert_eq!(
            t.render(),
            "NAME       N  LAST\n\
             a          1  x\n\
             longer  1000\n"
        );
    }

    fn peer_rows() -> Vec<PeerRow> {
        serde_json::from_str(
            r#"[
            {"endpoint":{"proto":"tcp","addr":{"socket":"198.18.0.6:9651"}},"type":"static",
             "connectionState":"alive","txBytes":1536,"rxBytes":3221225472,"discovered":90,
             "lastConnected":307,"routes":1200,"routesRefused":7},
            {"endpoint":{"proto":"tcp","addr":{"socket":"[fe80::1%2]:9651"}},
             "type":"linkLocalDiscovery","connectionState":"connecting","txBytes":0,"rxBytes":0,
             "discovered":5,"lastConnected":null,"failures":3,"nextDialInMs":1234},
            {"endpoint":{"proto":"vsock","addr":{"vsock":{"cid":3,"port":9651}}},"type":"inbound",
             "connectionState":"dead","txBytes":10,"rxBytes":20,"discovered":5,"lastConnected":9,
             "someNewField":true}
            ]"#,
        )
        .unwrap()
    }

    #[test]
    fn peers_table_format() {
        assert_eq!(
            peers_table(&peer_rows()).render(),
            "ENDPOINT                TYPE        STATE            TX       RX  CONNECTED  ROUTES  REFUSED  RETRY\n\
             tcp://198.18.0.6:9651   static      alive       1.5 KiB  3.0 GiB     5m 07s    1200        7  -\n\
             tcp://[fe80::1%2]:9651  link-local  connecting      0 B      0 B          -       0        0  in 1.2s, 3 failures\n\
             vsock://3:9651          inbound     dead           10 B     20 B          -       0        0  -\n"
        );
    }

    #[test]
    fn routes_tables_format() {
        let rows: Vec<RouteRow> = serde_json::from_str(
            r#"[{"subnet":"4ff:1:2:3::/64","nextHop":"TCP [fd00::1]:40000 <-> [fd00::2]:9651","metric":20,"seqno":3},
                {"subnet":"5aa::/64","nextHop":"TCP 198.18.0.1:1 <-> 198.18.0.6:9651","metric":"infinite","seqno":65535}]"#,
        )
        .unwrap();
        assert_eq!(
            routes_table(&rows).render(),
            "SUBNET          NEXT HOP                                  METRIC  SEQNO\n\
             4ff:1:2:3::/64  TCP [fd00::1]:40000 <-> [fd00::2]:9651        20      3\n\
             5aa::/64        TCP 198.18.0.1:1 <-> 198.18.0.6:9651    infinite  65535\n"
        );
        let rows: Vec<QueryRow> = serde_json::from_str(
            r#"[{"subnet":"5aa:9::/64","expiration":"4"},{"subnet":"5aa:a::/64","expiration":"soon"}]"#,
        )
        .unwrap();
        assert_eq!(
            queried_table(&rows).render(),
            "SUBNET      EXPIRES IN\n\
             5aa:9::/64          4s\n\
             5aa:a::/64        soon\n"
        );
    }

    #[test]
    fn percent_encoding_fits_one_segment() {
        assert_eq!(
            percent_encode("tcp://[fe80::1%2]:9651"),
            "tcp%3A%2F%2F%5Bfe80%3A%3A1%252%5D%3A9651"
        );
        assert_eq!(error_message(r#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(""), "no details given");
        assert_eq!(error_message("plain\nmore"), "plain");
    }

    // ---- the whole client against the real API router, served on loopback by a fake node ----

    struct Fake {
        peers: Vec<PeerInfo>,
        keys: HashMap<Subnet, [u8; 32]>,
    }

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn answer(f: &mut Fake, r: Request) {
        match r {
            Request::Peers(tx) => {
                let _ = tx.send(f.peers.clone());
            }
            Request::AddPeer(e, tx) => {
                let res = if f.peers.iter().any(|p| p.endpoint == e) {
                    Err(PeerOpError::AlreadyExists)
                } else {
                    f.peers.push(PeerInfo {
                        endpoint: e,
                        kind: PeerKind::Static,
                        connection_state: ConnectionState::Connecting,
                        tx_bytes: 0,
                        rx_bytes: 0,
                        discovered: 0,
                        last_connected: None,
                        routes: 0,
                        routes_refused: 0,
                        failures: 0,
                        next_dial_ms: Some(0),
                        quic: None,
                    });
                    Ok(())
                };
                let _ = tx.send(res);
            }
            Request::RemovePeer(e, tx) => {
                let n = f.peers.len();
                f.peers.retain(|p| p.endpoint != e);
                let _ = tx.send(if f.peers.len() < n {
                    Ok(())
                } else {
                    Err(PeerOpError::NotFound)
                });
            }
            Request::Routes(kind, tx) => {
                let _ = tx.send(vec![RouteInfo {
                    subnet: subnet("4ff:1:2:3::/64"),
                    next_hop: "TCP 198.18.0.1:40001 <-> 198.18.0.6:9651".into(),
                    metric: if kind == RouteKind::Selected {
                        Metric(20)
                    } else {
                        Metric::INFINITE
                    },
                    seqno: 7,
                }]);
            }
            Request::Queried(tx) => {
                let _ = tx.send(vec![QueryInfo {
                    subnet: subnet("5aa:9::/64"),
                    expires_in: 4,
                }]);
            }
            Request::Stats(tx) => {
                let _ = tx.send(sample_stats(4096));
            }
            Request::PubkeyOf(ip, tx) => {
                let _ = tx.send(
                    f.keys
                        .iter()
                        .find(|(s, _)| s.contains_addr(ip))
                        .map(|(_, k)| *k),
                );
            }
        }
    }

    /// A runtime serving the API for a fake node with one alive peer; kept alive by the caller.
    fn serve_fake() -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let mut fake = Fake {
                peers: vec![PeerInfo {
                    endpoint: "tcp://198.18.0.6:9651".parse().unwrap(),
                    kind: PeerKind::Static,
                    connection_state: ConnectionState::Alive,
                    tx_bytes: 2048,
                    rx_bytes: 100,
                    discovered: 400,
                    last_connected: Some(65),
                    routes: 1200,
                    routes_refused: 7,
                    failures: 0,
                    next_dial_ms: None,
                    quic: None,
                }],
                keys: HashMap::new(),
            };
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    answer(&mut fake, r);
                }
            });
            let info = NodeInfo {
                node_subnet: subnet("430:9364:d8d8:84a9::/64"),
                node_ip: "430:9364:d8d8:84a9::1".parse().unwrap(),
                node_pubkey: [1; 32],
                node_start_time: 1,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(node::api::serve(
                listener,
                Control::new(info, tx),
                std::future::pending(),
            ));
            addr
        });
        (rt, addr)
    }

    fn run_cmd(args: &[&str], addr: SocketAddr) -> (anyhow::Result<()>, String) {
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("hypha").chain(args.iter().copied()))
                .unwrap();
        let mut out = Vec::new();
        let r = run_to(cli.command.unwrap(), addr, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn client_against_the_api() {
        let (_rt, a) = serve_fake();

        let (r, out) = run_cmd(&["peers", "list"], a);
        r.unwrap();
        assert_eq!(
            out,
            "ENDPOINT               TYPE    STATE       TX     RX  CONNECTED  ROUTES  REFUSED  RETRY\n\
             tcp://198.18.0.6:9651  static  alive  2.0 KiB  100 B     1m 05s    1200        7  -\n"
        );

        let (r, out) = run_cmd(&["peers", "list", "--json"], a);
        r.unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["endpoint"]["addr"]["socket"], "198.18.0.6:9651");
        assert_eq!(v[0]["connectionState"], "alive");

        let (r, out) = run_cmd(
            &[
                "peers",
                "add",
                "tcp://198.18.0.7:9651",
                "tcp://[fd00::7]:9651",
            ],
            a,
        );
        r.unwrap();
        assert_eq!(
            out,
            "added tcp://198.18.0.7:9651\nadded tcp://[fd00::7]:9651\n"
        );

        // One bad and one duplicate: both reported, the good one still added, exit non-zero.
        let (r, out) = run_cmd(
            &[
                "peers",
                "add",
                "tls://198.18.0.8:9651",
                "tcp://198.18.0.7:9651",
                "tcp://198.18.0.8:9651",
            ],
            a,
        );
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("cannot add peer tls://198.18.0.8:9651: tls peers are not supported"),
            "{e}"
        );
        assert!(
            e.contains(
                "tcp://198.18.0.7:9651: a peer with this endpoint already exists (HTTP 409)"
            ),
            "{e}"
        );
        assert_eq!(out, "added tcp://198.18.0.8:9651\n");

        let (r, out) = run_cmd(&["peers", "remove", "tcp://[fd00::7]:9651"], a);
        r.unwrap();
        assert_eq!(out, "removed tcp://[fd00::7]:9651\n");
        let (r, _) = run_cmd(&["peers", "remove", "tcp://[fd00::7]:9651"], a);
        assert_eq!(
            r.unwrap_err().to_string(),
            "cannot remove peer tcp://[fd00::7]:9651: no peer with this endpoint (HTTP 404)"
        );

        let (r, out) = run_cmd(&["peers", "list", "--json"], a);
        r.unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let eps: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["endpoint"]["addr"]["socket"].as_str().unwrap())
            .collect();
        assert_eq!(
            eps,
            ["198.18.0.6:9651", "198.18.0.7:9651", "198.18.0.8:9651"]
        );

        let (r, out) = run_cmd(&["routes", "selected"], a);
        r.unwrap();
        assert_eq!(
            out,
            "SUBNET          NEXT HOP                                  METRIC  SEQNO\n\
             4ff:1:2:3::/64  TCP 198.18.0.1:40001 <-> 198.18.0.6:9651      20      7\n"
        );
        let (r, out) = run_cmd(&["routes", "fallback", "--json"], a);
        r.unwrap();
        assert_eq!(
            out,
            "[{\"subnet\":\"4ff:1:2:3::/64\",\"nextHop\":\"TCP 198.18.0.1:40001 <-> 198.18.0.6:9651\",\"metric\":\"infinite\",\"seqno\":7}]\n"
        );
        let (r, out) = run_cmd(&["routes", "queried"], a);
        r.unwrap();
        assert_eq!(out, "SUBNET      EXPIRES IN\n5aa:9::/64          4s\n");
    }

    fn sample_stats(tx: u64) -> Stats {
        let mut s = Stats {
            uptime: 65,
            peers: vec![node::metrics::PeerStats {
                endpoint: "tcp://198.18.0.6:9651".to_owned(),
                connection_state: ConnectionState::Alive,
                link_cost: Some(103),
                tx_bytes: tx,
                rx_bytes: 100,
                tx_data_frames: tx / 1024,
                tx_control_frames: 2,
                rx_data_frames: 1,
                rx_control_frames: 3,
                routes: 1200,
                routes_refused: 7,
            }],
            ..Stats::default()
        };
        s.data.tun_packets_in = tx / 1024;
        s.data.drop_decrypt = 1;
        s.data.refused_inner_source = 2;
        s.routing.selected_routes = 1;
        s.peering.beacons_own_address = 2;
        s.peering.discovered_refused_cap = 5;
        s
    }

    #[test]
    fn stats_text_and_rates() {
        let mut a = sample_stats(4096);
        a.api.refused_origin = 2;
        let text = stats_text(&a, None);
        assert!(text.starts_with("uptime 1m 05s\n"), "{text}");
        assert!(
            text.contains(
                "PEER                   STATE  COST       TX     RX  TX FRAMES  RX FRAMES\n\
                 tcp://198.18.0.6:9651  alive   103  4.0 KiB  100 B        4+2        1+3\n"
            ),
            "{text}"
        );
        assert!(text.contains("decrypt 1,"), "{text}");
        assert!(text.contains("refused inner source 2,"), "{text}");
        assert!(text.contains("tun     none (--no-tun)"), "{text}");
        assert!(text.contains("routing selected 1,"), "{text}");
        assert!(
            text.contains("api     refused: host 0, origin 2, content type 0\n"),
            "{text}"
        );
        assert!(text.contains("own address 2,"), "{text}");
        assert!(text.contains("refused: cap 5,"), "{text}");
        assert!(text.contains("links closed: none\n"), "{text}");
        assert!(
            text.contains("messages sent 0 (0 B), received 0 (0 B), failed 0; inbox 0 (0 B)"),
            "{text}"
        );
        a.links_closed.peer_closed = 3;
        a.links_closed.write_stalled = 1;
        let text = stats_text(&a, None);
        assert!(
            text.contains("links closed: peer_closed 3, write_stalled 1\n"),
            "{text}"
        );
        assert!(!text.contains("/s"), "{text}");
        // 2 s later, 2 MB more sent: 1 MB/s, 1024 data frames per 2 s.
        let b = sample_stats(4096 + 2_000_000);
        let text = stats_text(&b, Some((&a, 2.0)));
        assert!(text.contains("1.0 MB/s (8.0 Mbit/s)"), "{text}");
        assert!(text.contains("0.0 B/s (0.0 bit/s)"), "{text}");
        assert!(text.contains("976/s"), "{text}");
        assert!(text.contains("| tun in 976/s"), "{text}");
        assert_eq!(count_rate(Some(12_345.0)), "12.3k/s");
        assert_eq!(human_rate(None), "-");
    }

    #[test]
    fn stats_command_against_the_api() {
        let (_rt, a) = serve_fake();
        let (r, out) = run_cmd(&["stats"], a);
        r.unwrap();
        assert!(
            out.contains("tcp://198.18.0.6:9651  alive   103  4.0 KiB"),
            "{out}"
        );
        let (r, out) = run_cmd(&["stats", "--json"], a);
        r.unwrap();
        let s: Stats = serde_json::from_str(&out).unwrap();
        assert_eq!(s, sample_stats(4096));
        let (r, _) = run_cmd(&["stats", "--watch", "0"], a);
        assert!(r.unwrap_err().to_string().contains("at least 0.1"));
    }

    #[test]
    fn unreachable_node_is_one_clear_line() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (r, out) = run_cmd(&["peers", "list"], addr);
        let e = format!("{:#}", r.unwrap_err());
        assert_eq!(
            e,
            format!("cannot reach the node's API at {addr}: connection refused (is the node running? --api-addr)")
        );
        assert!(out.is_empty());
        let (r, _) = run_cmd(&["peers", "add", "tcp://198.18.0.1:9651"], addr);
        assert!(format!("{:#}", r.unwrap_err()).starts_with("cannot reach the node's API"));
    }

    #[test]
    fn non_client_commands_are_refused() {
        let (_rt, a) = serve_fake();
        let (r, _) = run_cmd(&["generate-keys"], a);
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("not an API client command"));
    }
}
