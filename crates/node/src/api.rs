//! The admin REST API (docs/protocol.md §8): the same paths and JSON shapes as the protocol's
//! reference node, so existing tooling can drive a hypha node.
//!
//! Handlers hold only a [`Control`] handle: every answer comes from the tasks that own the state,
//! through a request message. Every error is a JSON body `{"error":"..."}` with a status code that
//! says whose fault it was: 4xx for the caller's input, 503 when the node is shutting down.
//!
//! Before any handler, [`guard`] refuses what a web page in a local browser could send: foreign
//! `Host` names (DNS rebinding), foreign origins, and bodies not declared JSON.

mod guard;
pub mod jsonrpc;
pub mod messages;
pub mod types;

use std::future::Future;
use std::io;
use std::net::Ipv6Addr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use wire::babel::Metric;

use crate::control::{Control, NodeGone, PeerInfo, PeerOpError, RouteInfo, RouteKind};
use crate::endpoint::Endpoint;
pub use guard::{ApiAccess, ApiCounters};
use types::{AddPeer, AdminInfo, ErrorBody, Lenient, PeerRow, PubkeyAnswer, QueryRow};

/// How long in-flight requests may take to finish once shutdown is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a handler waits for the node's owner tasks. They answer from memory, so a longer wait
/// means a stuck node; the caller gets 503 instead of a connection held forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// An error answer: status code and a one-line message for `{"error": ...}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl From<NodeGone> for ApiError {
    fn from(e: NodeGone) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<PeerOpError> for ApiError {
    fn from(e: PeerOpError) -> ApiError {
        let status = match e {
            PeerOpError::AlreadyExists => StatusCode::CONFLICT,
            PeerOpError::NotFound => StatusCode::NOT_FOUND,
            PeerOpError::Unsupported(_) => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Awaits an answer from the node, bounded by [`ANSWER_TIMEOUT`].
async fn ask<T>(answer: impl Future<Output = Result<T, NodeGone>>) -> ApiResult<T> {
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the node did not answer within {}s",
                ANSWER_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// The routes of the admin API, for [`serve_router`] or for driving in tests, behind the
/// [`guard`] checks (which answer to the names in `access`).
pub fn router(control: Control, access: &ApiAccess) -> Router {
    let guard = guard::Guard::new("admin API", access, control.api_counters());
    Router::new()
        .route("/api/v1/admin", get(admin))
        .route("/api/v1/admin/peers", get(peers).post(add_peer))
        // A wildcard, so that an endpoint whose slashes were not percent-encoded still matches.
        .route(
            "/api/v1/admin/peers/{*endpoint}",
            axum::routing::delete(remove_peer),
        )
        .route("/api/v1/admin/routes/selected", get(selected_routes))
        .route("/api/v1/admin/routes/fallback", get(fallback_routes))
        .route("/api/v1/admin/routes/queried", get(queried))
        .route("/api/v1/admin/stats", get(stats))
        .route("/api/v1/admin/sessions", get(sessions))
        .route("/api/v1/pubkey/{ip}", get(pubkey))
        .merge(messages::routes())
        .fallback(not_found)
        .with_state(control)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

/// The metrics endpoint: `GET /metrics` in the OpenMetrics text format (Prometheus reads it).
/// Served on its own address so it can be exposed to a scraper without the admin API; behind the
/// same [`guard`] checks.
pub fn metrics_router(control: Control, access: &ApiAccess) -> Router {
    let guard = guard::Guard::new("metrics endpoint", access, control.api_counters());
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(control)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

/// Serves the admin API on `listener` until `shutdown` resolves, answering to loopback names and
/// IP literals only ([`ApiAccess::default`]). Requests in flight then get [`SHUTDOWN_GRACE`] to
/// finish; a client that holds its connection longer is cut off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Control,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_router(listener, router(control, &ApiAccess::default()), shutdown).await
}

/// [`serve`] for any set of routes (the admin API or [`metrics_router`]).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let grace_over = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            // The server ended by itself; let its result win the select.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        () = grace_over => {
            tracing::warn!("admin API: connections still open after the shutdown grace period; closing");
            Ok(())
        }
    }
}

/// `GET /api/v1/admin/stats`: every counter, as [`Stats`](crate::metrics::Stats) JSON.
async fn stats(State(c): State<Control>) -> ApiResult<Json<crate::metrics::Stats>> {
    Ok(Json(ask(c.stats()).await?))
}

async fn sessions(
    State(c): State<Control>,
) -> ApiResult<Json<Option<crate::metrics::SessionStats>>> {
    Ok(Json(ask(c.stats()).await?.sessions))
}

async fn metrics(State(c): State<Control>) -> ApiResult<Response> {
    let s = ask(c.stats()).await?;
    let body = crate::metrics::render(&s);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API endpoint".to_owned())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn admin_info(c: &Control) -> AdminInfo {
    let i = c.info();
    AdminInfo {
        node_subnet: i.node_subnet.to_string(),
        node_ip: i.node_ip,
        node_pubkey: hex(&i.node_pubkey),
        node_start_time: i.node_start_time,
    }
}

async fn admin(State(c): State<Control>) -> Json<AdminInfo> {
    Json(admin_info(&c))
}

impl From<PeerInfo> for PeerRow {
    fn from(p: PeerInfo) -> PeerRow {
        PeerRow {
            endpoint: Lenient::Known(p.endpoint),
            kind: Lenient::Known(p.kind),
            connection_state: Lenient::Known(p.connection_state),
            tx_bytes: p.tx_bytes,
            rx_bytes: p.rx_bytes,
            discovered: p.discovered,
            last_connected: p.last_connected,
            routes: p.routes,
            routes_refused: p.routes_refused,
            failures: p.failures,
            next_dial_in_ms: p.next_dial_ms,
            quic: p.quic,
        }
    }
}

async fn peers(State(c): State<Control>) -> ApiResult<Json<Vec<PeerRow>>> {
    let rows = ask(c.peers()).await?;
    Ok(Json(rows.into_iter().map(PeerRow::from).collect()))
}

/// Parses a JSON body (the [`guard`] has made sure it was declared `application/json`).
/// Malformed JSON is 400; well-formed JSON of the wrong shape is 422.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, format!("invalid request body: {e}"))
    })
}

fn parse_endpoint(s: &str) -> ApiResult<Endpoint> {
    Endpoint::parse_supported(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn add_peer(State(c): State<Control>, body: Bytes) -> ApiResult<StatusCode> {
    let body: AddPeer = json_body(&body)?;
    let e = parse_endpoint(&body.endpoint)?;
    ask(c.add_peer(e)).await??;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_peer(
    State(c): State<Control>,
    Path(endpoint): Path<String>,
) -> ApiResult<StatusCode> {
    let e = parse_endpoint(&endpoint)?;
    ask(c.remove_peer(e)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// The rows of a route listing, serialized as [`RouteRow`]s straight from the node's answer: a
/// full table is tens of thousands of rows, and a `RouteRow` of each (three strings) first would
/// more than double what a listing holds at its peak.
pub(crate) struct RouteRows(pub Vec<RouteInfo>);

impl Serialize for RouteRows {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(RowOf))
    }
}

/// One [`RouteRow`], as it serializes, borrowed from a [`RouteInfo`].
struct RowOf<'a>(&'a RouteInfo);

impl Serialize for RowOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut row = s.serialize_struct("RouteRow", 4)?;
        row.serialize_field("subnet", &Shown(&r.subnet))?;
        row.serialize_field("nextHop", &*r.next_hop)?;
        row.serialize_field("metric", &MetricOf(r.metric))?;
        row.serialize_field("seqno", &r.seqno)?;
        row.end()
    }
}

/// A value serialized as the text it displays as, without a `String` of it.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A route's metric as [`RouteMetric`] serializes it: the number, or `"infinite"`.
struct MetricOf(Metric);

impl Serialize for MetricOf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_infinite() {
            s.serialize_str("infinite")
        } else {
            s.serialize_u16(self.0 .0)
        }
    }
}

async fn routes(c: &Control, kind: RouteKind) -> ApiResult<Json<RouteRows>> {
    Ok(Json(RouteRows(ask(c.routes(kind)).await?)))
}

async fn selected_routes(State(c): State<Control>) -> ApiResult<Json<RouteRows>> {
    routes(&c, RouteKind::Selected).await
}

async fn fallback_routes(State(c): State<Control>) -> ApiResult<Json<RouteRows>> {
    routes(&c, RouteKind::Fallback).await
}

async fn queried(State(c): State<Control>) -> ApiResult<Json<Vec<QueryRow>>> {
    let rows = ask(c.queried()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|q| QueryRow {
                subnet: q.subnet.to_string(),
                expiration: q.expires_in.to_string(),
            })
            .collect(),
    ))
}

async fn pubkey(State(c): State<Control>, Path(ip): Path<String>) -> ApiResult<Response> {
    let addr: Ipv6Addr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid IPv6 address '{ip}'")))?;
    match ask(c.pubkey_of(addr)).await? {
        Some(pk) => Ok(Json(PubkeyAnswer {
            public_key: hex(&pk),
        })
        .into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no public key known for {addr}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ConnectionState, NodeInfo, PeerKind, QueryInfo, Request};
    use serde_json::json;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use wire::babel::Subnet;

    /// A scripted node: answers [`Request`]s from plain data, like the owner tasks would.
    struct Fake {
        peers: Vec<PeerInfo>,
        selected: Vec<RouteInfo>,
        fallback: Vec<RouteInfo>,
        queried: Vec<QueryInfo>,
        keys: HashMap<Subnet, [u8; 32]>,
    }

    impl Fake {
        fn handle(&mut self, r: Request) {
            match r {
                Request::Peers(tx) => {
                    let _ = tx.send(self.peers.clone());
                }
                Request::AddPeer(e, tx) => {
                    let res = if self.peers.iter().any(|p| p.endpoint == e) {
                        Err(PeerOpError::AlreadyExists)
                    } else {
                        self.peers
                            .push(peer(e, PeerKind::Static, ConnectionState::Connecting));
                        Ok(())
                    };
                    let _ = tx.send(res);
                }
                Request::RemovePeer(e, tx) => {
                    let before = self.peers.len();
                    self.peers.retain(|p| p.endpoint != e);
                    let res = if self.peers.len() < before {
                        Ok(())
                    } else {
                        Err(PeerOpError::NotFound)
                    };
                    let _ = tx.send(res);
                }
                Request::Routes(RouteKind::Selected, tx) => {
                    let _ = tx.send(self.selected.clone());
                }
                Request::Routes(RouteKind::Fallback, tx) => {
                    let _ = tx.send(self.fallback.clone());
                }
                Request::Queried(tx) => {
                    let _ = tx.send(self.queried.clone());
                }
                Request::PubkeyOf(ip, tx) => {
                    let k = self.keys.iter().find(|(s, _)| s.contains_addr(ip));
                    let _ = tx.send(k.map(|(_, k)| *k));
                }
                Request::Stats(tx) => {
                    let mut s = crate::metrics::Stats {
                        uptime: 5,
                        ..Default::default()
                    };
                    s.data.frames_sent = 77;
                    s.routing.selected_routes = self.selected.len() as u64;
                    let _ = tx.send(s);
                }
            }
        }
    }

    fn peer(e: Endpoint, kind: PeerKind, state: ConnectionState) -> PeerInfo {
        PeerInfo {
            endpoint: e,
            kind,
            connection_state: state,
            tx_bytes: 0,
            rx_bytes: 0,
            discovered: 0,
            last_connected: None,
            routes: 0,
            routes_refused: 0,
            failures: 0,
            next_dial_ms: None,
            quic: None,
        }
    }

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    fn subnet(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn info() -> NodeInfo {
        NodeInfo {
            node_subnet: subnet("430:9364:d8d8:84a9::/64"),
            node_ip: "430:9364:d8d8:84a9::1".parse().unwrap(),
            node_pubkey: [0xab; 32],
            node_start_time: 1_700_000_000,
        }
    }

    fn fake() -> Fake {
        let mut alive = peer(
            ep("tcp://198.18.0.6:9651"),
            PeerKind::Static,
            ConnectionState::Alive,
        );
        alive.tx_bytes = 123;
        alive.rx_bytes = 456;
        alive.discovered = 70;
        alive.last_connected = Some(60);
        let mut keys = HashMap::new();
        keys.insert(subnet("4ff:1:2:3::/64"), [0x11; 32]);
        Fake {
            peers: vec![
                alive,
                peer(
                    ep("tcp://[fe80::1%2]:9651"),
                    PeerKind::LinkLocalDiscovery,
                    ConnectionState::Dead,
                ),
            ],
            selected: vec![RouteInfo {
                subnet: subnet("4ff:1:2:3::/64"),
                next_hop: "TCP [fd00::1]:40000 <-> [fd00::2]:9651".into(),
                metric: Metric(20),
                seqno: 3,
            }],
            fallback: vec![RouteInfo {
                subnet: subnet("4ff:1:2:3::/64"),
                next_hop: "TCP 198.18.0.1:40001 <-> 198.18.0.6:9651".into(),
                metric: Metric::INFINITE,
                seqno: 2,
            }],
            queried: vec![QueryInfo {
                subnet: subnet("5aa:9::/64"),
                expires_in: 4,
            }],
            keys,
        }
    }

    /// Serves the API for `fake` on a loopback port; returns the address.
    async fn start(fake: Option<Fake>) -> std::net::SocketAddr {
        let (tx, mut rx) = mpsc::channel(8);
        match fake {
            Some(mut f) => {
                tokio::spawn(async move {
                    while let Some(r) = rx.recv().await {
                        f.handle(r);
                    }
                });
            }
            // A node that has gone away: nobody receives.
            None => drop(rx),
        }
        let control = Control::new(info(), tx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, control, std::future::pending()));
        addr
    }

    /// A deliberately small HTTP/1.1 client: one request per connection, `Content-Length` bodies,
    /// sent as the CLI sends them (`Host` is the address, JSON bodies say so).
    async fn call(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let host = addr.to_string();
        let mut headers = vec![("Host", host.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        call_with(addr, method, path, &headers, body).await
    }

    /// [`call`] with exactly these headers (no `Host` unless given) and an optional body.
    async fn call_with(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        match body {
            Some(b) => req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len())),
            None => req.push_str("\r\n"),
        }
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        let resp = String::from_utf8(resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{head}"
        );
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    /// Serves the metrics endpoint for `fake` on a loopback port; returns the address.
    async fn start_metrics(mut f: Fake) -> std::net::SocketAddr {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                f.handle(r);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let m = listener.local_addr().unwrap();
        let app = metrics_router(Control::new(info(), tx), &ApiAccess::default());
        tokio::spawn(serve_router(listener, app, std::future::pending()));
        m
    }

    /// How many peers the node lists, asked the honest way.
    async fn peer_count(a: std::net::SocketAddr) -> usize {
        let (st, list) = call(a, "GET", "/api/v1/admin/peers", None).await;
        assert_eq!(st, 200, "{list}");
        parse(&list).as_array().unwrap().len()
    }

    fn parse(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    #[tokio::test]
    async fn stats_json_and_metrics_text() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/admin/stats", None).await;
        assert_eq!(st, 200);
        let v = parse(&body);
        assert_eq!(v["data"]["framesSent"], 77);
        assert_eq!(v["routing"]["selectedRoutes"], 1);
        assert_eq!(v["tun"], serde_json::Value::Null);

        let m = start_metrics(fake()).await;
        let (st, text) = call(m, "GET", "/metrics", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            crate::metrics::sample(&text, "hypha_frames_sent_total", ""),
            Some(77.0)
        );
        assert_eq!(
            crate::metrics::sample(&text, "hypha_routes", "kind=\"selected\""),
            Some(1.0)
        );
        // The metrics address serves nothing of the admin API.
        let (st, _) = call(m, "GET", "/api/v1/admin/stats", None).await;
        assert_eq!(st, 404);
    }

    #[tokio::test]
    async fn admin_info_shape() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/admin", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body),
            json!({
                "nodeSubnet": "430:9364:d8d8:84a9::/64",
                "nodeIp": "430:9364:d8d8:84a9::1",
                "nodePubkey": "ab".repeat(32),
                "nodeStartTime": 1_700_000_000u64,
            })
        );
    }

    #[tokio::test]
    async fn peers_list_shape() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/admin/peers", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body),
            json!([
                {"endpoint":{"proto":"tcp","addr":{"socket":"198.18.0.6:9651"}},
                 "type":"static","connectionState":"alive",
                 "txBytes":123,"rxBytes":456,"discovered":70,"lastConnected":60,
                 "routes":0,"routesRefused":0,"failures":0,"nextDialInMs":null},
                {"endpoint":{"proto":"tcp","addr":{"socket":"[fe80::1%2]:9651"}},
                 "type":"linkLocalDiscovery","connectionState":"dead",
                 "txBytes":0,"rxBytes":0,"discovered":0,"lastConnected":null,
                 "routes":0,"routesRefused":0,"failures":0,"nextDialInMs":null},
            ])
        );
    }

    #[tokio::test]
    async fn add_peer_statuses() {
        let a = start(Some(fake())).await;
        let path = "/api/v1/admin/peers";
        let (st, body) = call(
            a,
            "POST",
            path,
            Some(r#"{"endpoint":"tcp://198.18.0.9:9651"}"#),
        )
        .await;
        assert_eq!((st, body.as_str()), (204, ""));
        let (_, list) = call(a, "GET", path, None).await;
        assert_eq!(parse(&list).as_array().unwrap().len(), 3);

        let (st, body) = call(
            a,
            "POST",
            path,
            Some(r#"{"endpoint":"tcp://198.18.0.9:9651"}"#),
        )
        .await;
        assert_eq!(st, 409);
        assert_eq!(
            parse(&body),
            json!({"error": "a peer with this endpoint already exists"})
        );

        let (st, body) = call(a, "POST", path, Some(r#"{"endpoint":"198.18.0.9:9651"}"#)).await;
        assert_eq!(st, 400);
        assert_eq!(
            parse(&body),
            json!({"error": "missing protocol: expected tcp://IP:PORT or quic://IP:PORT"})
        );

        let (st, body) = call(
            a,
            "POST",
            path,
            Some(r#"{"endpoint":"tls://198.18.0.9:9651"}"#),
        )
        .await;
        assert_eq!(st, 400);
        let msg = parse(&body)["error"].as_str().unwrap().to_owned();
        assert!(msg.contains("not supported"), "{msg}");

        let (st, body) = call(
            a,
            "POST",
            path,
            Some(r#"{"endpoint":"tcp://host.example:1"}"#),
        )
        .await;
        assert_eq!(st, 400);
        assert!(parse(&body)["error"]
            .as_str()
            .unwrap()
            .contains("invalid socket address"));

        let (st, body) = call(a, "POST", path, Some("{not json")).await;
        assert_eq!(st, 400);
        assert!(parse(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid request body"));

        let (st, body) = call(a, "POST", path, Some(r#"{"peer":"tcp://198.18.0.9:9651"}"#)).await;
        assert_eq!(st, 422);
        assert!(parse(&body)["error"].as_str().unwrap().contains("endpoint"));
    }

    #[tokio::test]
    async fn remove_peer_statuses() {
        let a = start(Some(fake())).await;
        let (st, _) = call(
            a,
            "DELETE",
            "/api/v1/admin/peers/tcp%3A%2F%2F198.18.0.6%3A9651",
            None,
        )
        .await;
        assert_eq!(st, 204);
        let (st, body) = call(
            a,
            "DELETE",
            "/api/v1/admin/peers/tcp%3A%2F%2F198.18.0.6%3A9651",
            None,
        )
        .await;
        assert_eq!(st, 404);
        assert_eq!(parse(&body), json!({"error": "no peer with this endpoint"}));
        // Scope ids arrive as %25; unencoded slashes are tolerated.
        let (st, _) = call(
            a,
            "DELETE",
            "/api/v1/admin/peers/tcp%3A%2F%2F%5Bfe80%3A%3A1%252%5D%3A9651",
            None,
        )
        .await;
        assert_eq!(st, 204);
        let (_, list) = call(a, "GET", "/api/v1/admin/peers", None).await;
        assert_eq!(parse(&list), json!([]));
        let (st, _) = call(
            a,
            "POST",
            "/api/v1/admin/peers",
            Some(r#"{"endpoint":"tcp://198.18.0.7:1"}"#),
        )
        .await;
        assert_eq!(st, 204);
        let (st, _) = call(a, "DELETE", "/api/v1/admin/peers/tcp://198.18.0.7:1", None).await;
        assert_eq!(st, 204);
        let (st, body) = call(a, "DELETE", "/api/v1/admin/peers/nonsense", None).await;
        assert_eq!(st, 400);
        assert!(parse(&body)["error"]
            .as_str()
            .unwrap()
            .contains("missing protocol"));
    }

    #[tokio::test]
    async fn routes_shapes() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/admin/routes/selected", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body),
            json!([{"subnet":"4ff:1:2:3::/64","nextHop":"TCP [fd00::1]:40000 <-> [fd00::2]:9651","metric":20,"seqno":3}])
        );
        let (st, body) = call(a, "GET", "/api/v1/admin/routes/fallback", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body),
            json!([{"subnet":"4ff:1:2:3::/64","nextHop":"TCP 198.18.0.1:40001 <-> 198.18.0.6:9651","metric":"infinite","seqno":2}])
        );
        let (st, body) = call(a, "GET", "/api/v1/admin/routes/queried", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body),
            json!([{"subnet":"5aa:9::/64","expiration":"4"}])
        );
    }

    #[tokio::test]
    async fn pubkey_lookup() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/pubkey/4ff:1:2:3::77", None).await;
        assert_eq!(st, 200);
        assert_eq!(parse(&body), json!({"publicKey": "11".repeat(32)}));
        let (st, body) = call(a, "GET", "/api/v1/pubkey/4ff:1:2:4::77", None).await;
        assert_eq!(st, 404);
        assert_eq!(
            parse(&body),
            json!({"error": "no public key known for 4ff:1:2:4::77"})
        );
        let (st, body) = call(a, "GET", "/api/v1/pubkey/not-an-ip", None).await;
        assert_eq!(st, 400);
        assert_eq!(
            parse(&body),
            json!({"error": "invalid IPv6 address 'not-an-ip'"})
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let a = start(Some(fake())).await;
        let (st, body) = call(a, "GET", "/api/v1/nothing", None).await;
        assert_eq!(st, 404);
        assert_eq!(parse(&body), json!({"error": "no such API endpoint"}));
        let (st, _) = call(a, "PUT", "/api/v1/admin/peers", Some("{}")).await;
        assert_eq!(st, 405);
    }

    #[tokio::test]
    async fn node_gone_is_503() {
        let a = start(None).await;
        for path in [
            "/api/v1/admin/peers",
            "/api/v1/admin/routes/selected",
            "/api/v1/admin/routes/fallback",
            "/api/v1/admin/routes/queried",
            "/api/v1/pubkey/4ff::1",
        ] {
            let (st, body) = call(a, "GET", path, None).await;
            assert_eq!(st, 503, "{path}");
            assert_eq!(parse(&body), json!({"error": "the node is shutting down"}));
        }
        let (st, _) = call(
            a,
            "POST",
            "/api/v1/admin/peers",
            Some(r#"{"endpoint":"tcp://198.18.0.7:1"}"#),
        )
        .await;
        assert_eq!(st, 503);
        // What needs no owner still answers.
        let (st, _) = call(a, "GET", "/api/v1/admin", None).await;
        assert_eq!(st, 200);
    }

    #[tokio::test]
    async fn messages_without_a_message_task_are_503_and_bad_input_400() {
        let a = start(Some(fake())).await;
        let send = r#"{"dst":{"ip":"4ff::1"},"payload":"aGk="}"#;
        let (st, body) = call(a, "POST", "/api/v1/messages", Some(send)).await;
        assert_eq!(st, 503);
        assert_eq!(
            parse(&body),
            json!({"error": "this node runs no message subsystem"})
        );
        let (st, _) = call(a, "GET", "/api/v1/messages/topics", None).await;
        assert_eq!(st, 503);
        // Input is checked before the task is asked.
        for (path, bad) in [
            (
                "/api/v1/messages",
                r#"{"dst":{"ip":"10.0.0.1"},"payload":"aGk="}"#,
            ),
            (
                "/api/v1/messages",
                r#"{"dst":{"pk":"zz"},"payload":"aGk="}"#,
            ),
            (
                "/api/v1/messages",
                r#"{"dst":{"ip":"4ff::1"},"payload":"***"}"#,
            ),
            ("/api/v1/messages", r#"{"payload":"aGk="}"#),
            ("/api/v1/messages/reply/nothex", send),
        ] {
            let (st, body) = call(a, "POST", path, Some(bad)).await;
            assert_eq!(st, 400, "{bad}: {body}");
            assert!(!parse(&body)["error"].as_str().unwrap().contains('\n'));
        }
        let (st, _) = call(a, "GET", "/api/v1/messages/status/123", None).await;
        assert_eq!(st, 400);
        let (st, _) = call(a, "GET", "/api/v1/messages?topic=***", None).await;
        assert_eq!(st, 400);
    }

    /// A node that takes requests but never answers: the handler gives up with 503.
    #[tokio::test(start_paused = true)]
    async fn stuck_node_is_503_not_a_hang() {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(r) = rx.recv().await {
                held.push(r);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Control::new(info(), tx),
            std::future::pending(),
        ));
        let (st, body) = call(a, "GET", "/api/v1/admin/peers", None).await;
        assert_eq!(st, 503);
        assert_eq!(
            parse(&body),
            json!({"error": "the node did not answer within 5s"})
        );
    }

    #[tokio::test]
    async fn serve_returns_after_shutdown() {
        let (tx, _rx) = mpsc::channel(1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, Control::new(info(), tx), async move {
            let _ = stop_rx.await;
        }));
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    // ---- Cross-site requests and DNS rebinding (issue 12, finding 7)

    /// A web page can POST `text/plain` cross-site without a CORS preflight; it used to add a
    /// static peer (204).
    #[tokio::test]
    async fn cross_site_text_plain_post_cannot_add_a_peer() {
        let a = start(Some(fake())).await;
        let host = a.to_string();
        let (st, body) = call_with(
            a,
            "POST",
            "/api/v1/admin/peers",
            &[
                ("Host", &host),
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain;charset=UTF-8"),
            ],
            Some(r#"{"endpoint":"tcp://198.18.9.10:9651"}"#),
        )
        .await;
        assert_eq!(st, 403, "{body}");
        assert!(parse(&body)["error"].as_str().unwrap().contains("Origin"));
        assert_eq!(peer_count(a).await, 2);
    }

    /// An HTML form can POST `application/x-www-form-urlencoded` whose body is JSON (a field
    /// named `{"endpoint":...,"x":"` with value `"}`); it used to make the node dial port 22.
    #[tokio::test]
    async fn form_post_cannot_add_a_peer() {
        let a = start(Some(fake())).await;
        let host = a.to_string();
        let body = r#"{"endpoint":"tcp://198.18.9.10:22","x":"="}"#;
        for ct in [
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/plain"),
            Some("application/jsonx"),
            None,
        ] {
            let mut headers = vec![("Host", host.as_str())];
            if let Some(ct) = ct {
                headers.push(("Content-Type", ct));
            }
            let (st, resp) =
                call_with(a, "POST", "/api/v1/admin/peers", &headers, Some(body)).await;
            assert_eq!(st, 415, "{ct:?}: {resp}");
            assert!(
                parse(&resp)["error"]
                    .as_str()
                    .unwrap()
                    .contains("application/json"),
                "{resp}"
            );
        }
        assert_eq!(peer_count(a).await, 2);
    }

    /// DNS rebinding: a page on `rebind.evil.example` whose name now resolves to 127.0.0.1 is
    /// same-origin with the API as far as the browser knows; only the Host header gives it away.
    #[tokio::test]
    async fn dns_rebinding_host_cannot_use_the_api() {
        let a = start(Some(fake())).await;
        for host in [
            "rebind.evil.example:8989",
            "rebind.evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example:8989",
            "sub.localhost",
            "[::1",
        ] {
            let (st, body) =
                call_with(a, "GET", "/api/v1/admin/peers", &[("Host", host)], None).await;
            assert_eq!(st, 403, "{host}: {body}");
            assert!(!body.contains("198.18.0.6"), "{host}: {body}");
            assert!(parse(&body)["error"].as_str().unwrap().contains("Host"));
            let (st, body) = call_with(
                a,
                "POST",
                "/api/v1/admin/peers",
                &[
                    ("Host", host),
                    ("Origin", &format!("http://{host}")),
                    ("Content-Type", "application/json"),
                ],
                Some(r#"{"endpoint":"tcp://198.18.9.10:9651"}"#),
            )
            .await;
            assert_eq!(st, 403, "{host}: {body}");
        }
        assert_eq!(peer_count(a).await, 2);
    }

    /// The metrics endpoint answers to the same Host names only: its peer labels and counters
    /// are no business of a rebinding page.
    #[tokio::test]
    async fn dns_rebinding_host_cannot_read_metrics() {
        let m = start_metrics(fake()).await;
        let (st, body) = call_with(
            m,
            "GET",
            "/metrics",
            &[("Host", "rebind.evil.example:9100")],
            None,
        )
        .await;
        assert_eq!(st, 403, "{body}");
        assert!(!body.contains("hypha_"), "{body}");
        let (st, body) = call_with(
            m,
            "GET",
            "/metrics",
            &[("Host", "127.0.0.1:9100"), ("Sec-Fetch-Site", "cross-site")],
            None,
        )
        .await;
        assert_eq!(st, 403, "{body}");
        let (st, _) = call(m, "GET", "/metrics", None).await;
        assert_eq!(st, 200);
    }

    /// A cross-site request that carries no Origin (a no-cors GET, an `<img>`) still carries
    /// the browser's fetch metadata.
    #[tokio::test]
    async fn cross_site_fetch_metadata_is_refused() {
        let a = start(Some(fake())).await;
        let host = a.to_string();
        for site in ["cross-site", "same-site"] {
            let (st, body) = call_with(
                a,
                "GET",
                "/api/v1/admin/peers",
                &[("Host", &host), ("Sec-Fetch-Site", site)],
                None,
            )
            .await;
            assert_eq!(st, 403, "{site}: {body}");
            assert!(!body.contains("198.18.0.6"), "{body}");
        }
        // A foreign Origin on a GET, too (a CORS fetch would otherwise still reach the node).
        let (st, _) = call_with(
            a,
            "GET",
            "/api/v1/admin/peers",
            &[("Host", &host), ("Origin", "http://localhost:3000")],
            None,
        )
        .await;
        assert_eq!(st, 403);
        let (st, _) = call_with(
            a,
            "DELETE",
            "/api/v1/admin/peers/tcp%3A%2F%2F198.18.0.6%3A9651",
            &[("Host", &host), ("Origin", "null")],
            None,
        )
        .await;
        assert_eq!(st, 403);
        assert_eq!(peer_count(a).await, 2);
    }

    /// What the CLI, curl, Prometheus and the API's own origin send keeps working.
    #[tokio::test]
    async fn honest_clients_are_not_refused() {
        let a = start(Some(fake())).await;
        let port = a.port();
        let hosts = [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_owned(),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            // The API bound to a LAN address is reached by that address.
            "198.18.0.1:8989".to_owned(),
        ];
        for host in &hosts {
            let (st, body) =
                call_with(a, "GET", "/api/v1/admin/peers", &[("Host", host)], None).await;
            assert_eq!(st, 200, "{host}: {body}");
        }
        // HTTP/1.0 without Host: not a browser.
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /api/v1/admin HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.unwrap();
        assert!(resp.starts_with(b"HTTP/1.0 200"), "{resp:?}");

        let host = a.to_string();
        let own = format!("http://{host}");
        for (i, (ct, extra)) in [
            ("application/json", vec![]),
            ("application/json; charset=utf-8", vec![]),
            ("application/json", vec![("Origin", own.as_str())]),
            ("application/json", vec![("Sec-Fetch-Site", "same-origin")]),
            ("application/json", vec![("Sec-Fetch-Site", "none")]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut headers = vec![("Host", host.as_str()), ("Content-Type", ct)];
            headers.extend(extra);
            let body = format!(r#"{{"endpoint":"tcp://198.18.0.{}:9651"}}"#, 100 + i);
            let (st, resp) =
                call_with(a, "POST", "/api/v1/admin/peers", &headers, Some(&body)).await;
            assert_eq!(st, 204, "{headers:?}: {resp}");
        }
        assert_eq!(peer_count(a).await, 7);
        // DELETE needs no type.
        let (st, _) = call_with(
            a,
            "DELETE",
            "/api/v1/admin/peers/tcp%3A%2F%2F198.18.0.100%3A9651",
            &[("Host", &host)],
            None,
        )
        .await;
        assert_eq!(st, 204);
    }

    /// The admin API and the metrics endpoint on loopback ports, answered by a fake owner, both
    /// behind `access`: (API address, metrics address).
    async fn serve_both(access: &ApiAccess) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let (tx, mut rx) = mpsc::channel(8);
        let mut f = fake();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                f.handle(r);
            }
        });
        let control = Control::new(info(), tx);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(serve_router(
            l,
            router(control.clone(), access),
            std::future::pending(),
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let m = l.local_addr().unwrap();
        tokio::spawn(serve_router(
            l,
            metrics_router(control, access),
            std::future::pending(),
        ));
        (a, m)
    }

    /// A name the operator allowed reaches the API and the metrics endpoint; others still not.
    #[tokio::test]
    async fn allowed_host_names_reach_both_endpoints() {
        let access = ApiAccess::with_host_names(["prometheus-target.lan"]).unwrap();
        let (a, m) = serve_both(&access).await;
        let ok = [("Host", "Prometheus-Target.lan:9100")];
        let (st, _) = call_with(m, "GET", "/metrics", &ok, None).await;
        assert_eq!(st, 200);
        let (st, _) = call_with(a, "GET", "/api/v1/admin", &ok, None).await;
        assert_eq!(st, 200);
        let (st, _) = call_with(m, "GET", "/metrics", &[("Host", "other.lan")], None).await;
        assert_eq!(st, 403);
    }

    /// Every refusal is counted by reason, in the stats JSON and in `/metrics`, one set of
    /// counters for both endpoints.
    #[tokio::test]
    async fn refusals_are_counted_by_reason() {
        let (a, m) = serve_both(&ApiAccess::default()).await;
        let host = a.to_string();
        let evil = [("Host", "rebind.evil.example")];
        call_with(a, "GET", "/api/v1/admin/stats", &evil, None).await;
        call_with(m, "GET", "/metrics", &evil, None).await;
        call_with(
            a,
            "GET",
            "/api/v1/admin",
            &[("Host", &host), ("Origin", "http://evil.example")],
            None,
        )
        .await;
        let body = Some(r#"{"endpoint":"tcp://198.18.9.10:22"}"#);
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            let (st, _) = call_with(
                a,
                "POST",
                "/api/v1/admin/peers",
                &[("Host", &host), ("Content-Type", ct)],
                body,
            )
            .await;
            assert_eq!(st, 415);
        }
        let (st, body) = call(a, "GET", "/api/v1/admin/stats", None).await;
        assert_eq!(st, 200);
        assert_eq!(
            parse(&body)["api"],
            json!({"refusedHost": 2, "refusedOrigin": 1, "refusedContentType": 2})
        );
        let (st, text) = call(m, "GET", "/metrics", None).await;
        assert_eq!(st, 200);
        for (reason, n) in [("host", 2.0), ("origin", 1.0), ("content_type", 2.0)] {
            assert_eq!(
                crate::metrics::sample(
                    &text,
                    "hypha_api_refused_total",
                    &format!("reason=\"{reason}\"")
                ),
                Some(n),
                "{reason}"
            );
        }
    }
}
