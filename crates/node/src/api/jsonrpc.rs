//! JSON-RPC 2.0 over HTTP POST (any path; clients use `/` or `/rpc`): the reference node's
//! method names, parameters and result shapes, answered from the same operations as the REST API
//! (`docs/messages.md` §6). Parameters may be positional (an array) or named (an object, with
//! the names in snake_case or camelCase). Batches are answered as batches; notifications (no
//! `id`) get no answer. `rpc.discover` returns an OpenRPC document built from the method table
//! below, so the two cannot disagree.

use std::net::Ipv6Addr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::messages::{self as msg, MessageSend, OpError, Sent};
use super::types::{PeerRow, QueryRow};
use super::{guard, ApiAccess, ANSWER_TIMEOUT};
use crate::control::{Control, PeerOpError, RouteKind};
use crate::endpoint::Endpoint;

/// A method: its name, its parameters (name, required) and what it returns, for `rpc.discover`.
struct Method {
    name: &'static str,
    params: &'static [(&'static str, bool)],
    result: &'static str,
    summary: &'static str,
}

const METHODS: &[Method] = &[
    Method {
        name: "getInfo",
        params: &[],
        result: "NodeInfo",
        summary: "The node's subnet, address, public key and start time",
    },
    Method {
        name: "getPublicKeyFromIp",
        params: &[("mycelium_ip", true)],
        result: "PublicKey",
        summary: "The public key of the node announcing the subnet of an overlay address",
    },
    Method {
        name: "getPeers",
        params: &[],
        result: "PeerStats[]",
        summary: "The peers and their connection state",
    },
    Method {
        name: "addPeer",
        params: &[("endpoint", true)],
        result: "boolean",
        summary: "Adds a peer (`tcp://host:port`)",
    },
    Method {
        name: "deletePeer",
        params: &[("endpoint", true)],
        result: "boolean",
        summary: "Removes a peer",
    },
    Method {
        name: "getSelectedRoutes",
        params: &[],
        result: "Route[]",
        summary: "The selected routes",
    },
    Method {
        name: "getFallbackRoutes",
        params: &[],
        result: "Route[]",
        summary: "The feasible routes not selected",
    },
    Method {
        name: "getQueriedSubnets",
        params: &[],
        result: "QueriedSubnet[]",
        summary: "Subnets a route query is under way for",
    },
    Method {
        name: "getPacketStatistics",
        params: &[],
        result: "PacketStatistics",
        summary: "Packet counts by source and destination (this node keeps none: empty lists)",
    },
    Method {
        name: "getStats",
        params: &[],
        result: "Stats",
        summary: "Every counter of the node (hypha's addition; as GET /api/v1/admin/stats)",
    },
    Method {
        name: "getProxies",
        params: &[],
        result: "string[]",
        summary: "Known SOCKS proxies (this node probes none: empty)",
    },
    Method {
        name: "connectProxy",
        params: &[("remote", false)],
        result: "string",
        summary: "Not supported by this node",
    },
    Method {
        name: "disconnectProxy",
        params: &[],
        result: "boolean",
        summary: "Not supported by this node",
    },
    Method {
        name: "startProxyProbe",
        params: &[],
        result: "boolean",
        summary: "Not supported by this node",
    },
    Method {
        name: "stopProxyProbe",
        params: &[],
        result: "boolean",
        summary: "Not supported by this node",
    },
    Method {
        name: "rpc.discover",
        params: &[],
        result: "OpenRPC",
        summary: "This API's OpenRPC description",
    },
    Method {
        name: "popMessage",
        params: &[("peek", false), ("timeout", false), ("topic", false)],
        result: "MessageReceiveInfo|null",
        summary:
            "The oldest message in the inbox (with a base64 topic), waiting up to `timeout` seconds",
    },
    Method {
        name: "pushMessage",
        params: &[("message", true), ("reply_timeout", false)],
        result: "{id}|MessageReceiveInfo",
        summary: "Sends a message; with `reply_timeout`, waits that many seconds for the reply",
    },
    Method {
        name: "pushMessageReply",
        params: &[("id", true), ("message", true)],
        result: "boolean",
        summary: "Replies to a received message",
    },
    Method {
        name: "getMessageInfo",
        params: &[("id", true)],
        result: "MessageInfo",
        summary: "The status of a message sent",
    },
    Method {
        name: "getDefaultTopicAction",
        params: &[],
        result: "boolean",
        summary: "Whether topics without rules are accepted",
    },
    Method {
        name: "setDefaultTopicAction",
        params: &[("accept", true)],
        result: "boolean",
        summary: "Accept or refuse topics without rules",
    },
    Method {
        name: "getTopics",
        params: &[],
        result: "string[]",
        summary: "Configured topics, base64",
    },
    Method {
        name: "addTopic",
        params: &[("topic", true)],
        result: "boolean",
        summary: "Configures a topic (base64); it accepts no sender until one is added",
    },
    Method {
        name: "removeTopic",
        params: &[("topic", true)],
        result: "boolean",
        summary: "Removes a topic's rules",
    },
    Method {
        name: "getTopicSources",
        params: &[("topic", true)],
        result: "string[]",
        summary: "The subnets a topic accepts",
    },
    Method {
        name: "addTopicSource",
        params: &[("topic", true), ("subnet", true)],
        result: "boolean",
        summary: "Lets a subnet send on a topic",
    },
    Method {
        name: "removeTopicSource",
        params: &[("topic", true), ("subnet", true)],
        result: "boolean",
        summary: "Stops a subnet sending on a topic",
    },
    Method {
        name: "getTopicForwardSocket",
        params: &[("topic", true)],
        result: "string|null",
        summary: "The Unix socket a topic's messages go to",
    },
    Method {
        name: "setTopicForwardSocket",
        params: &[("topic", true), ("socket_path", true)],
        result: "boolean",
        summary: "Sends a topic's messages to a Unix socket; its answer is the reply",
    },
    Method {
        name: "removeTopicForwardSocket",
        params: &[("topic", true)],
        result: "boolean",
        summary: "Stops forwarding a topic",
    },
];

/// An error object: code and message.
struct RpcError(i64, String);

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL: i64 = -32603;
/// Server errors (the reference node's codes, -32000 to -32099).
const NODE_GONE: i64 = -32000;

impl From<crate::control::NodeGone> for RpcError {
    fn from(e: crate::control::NodeGone) -> RpcError {
        RpcError(NODE_GONE, e.to_string())
    }
}

/// A REST-side refusal under a JSON-RPC `code`.
fn op(code: i64) -> impl Fn(OpError) -> RpcError {
    move |e| {
        let code = if e.0 == StatusCode::SERVICE_UNAVAILABLE {
            NODE_GONE
        } else {
            code
        };
        RpcError(code, e.1)
    }
}

/// The JSON-RPC routes, behind the admin API's checks.
pub fn router(control: Control, access: &ApiAccess) -> Router {
    let guard = guard::Guard::new("JSON-RPC API", access, control.api_counters());
    Router::new()
        .route("/", post(rpc))
        .route("/rpc", post(rpc))
        .fallback(post(rpc))
        .layer(DefaultBodyLimit::max(msg::BODY_MAX))
        .with_state(control)
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
}

async fn rpc(State(c): State<Control>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Json(error_response(
                Value::Null,
                PARSE_ERROR,
                &format!("parse error: {e}"),
            ))
            .into_response()
        }
    };
    match v {
        Value::Array(calls) => {
            if calls.is_empty() {
                let e = error_response(Value::Null, INVALID_REQUEST, "empty batch");
                return Json(e).into_response();
            }
            let mut out = Vec::new();
            for call in calls {
                if let Some(r) = one(&c, call).await {
                    out.push(r);
                }
            }
            if out.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                Json(Value::Array(out)).into_response()
            }
        }
        call => match one(&c, call).await {
            Some(r) => Json(r).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    }
}

fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
}

/// One call; `None` for a notification.
async fn one(c: &Control, call: Value) -> Option<Value> {
    let Value::Object(mut o) = call else {
        return Some(error_response(
            Value::Null,
            INVALID_REQUEST,
            "a call must be an object",
        ));
    };
    let id = o.remove("id");
    let valid_id = matches!(
        id,
        None | Some(Value::Null | Value::Number(_) | Value::String(_))
    );
    let version_ok = o.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let method = o.get("method").and_then(Value::as_str).map(str::to_owned);
    let (Some(method), true, true) = (method, version_ok, valid_id) else {
        return Some(error_response(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "not a JSON-RPC 2.0 call (\"jsonrpc\":\"2.0\", \"method\" and an optional \"id\")",
        ));
    };
    let params = Params(o.remove("params").unwrap_or(Value::Null));
    if !matches!(params.0, Value::Null | Value::Array(_) | Value::Object(_)) {
        return id
            .map(|id| error_response(id, INVALID_PARAMS, "params must be an array or object"));
    }
    let result = dispatch(c, &method, &params).await;
    let id = id?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": id}),
        Err(RpcError(code, message)) => error_response(id, code, &message),
    })
}

struct Params(Value);

fn camel(s: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for ch in s.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

impl Params {
    /// Parameter `i` (positional) or `name` (named); `None` when absent or null.
    fn opt<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<Option<T>, RpcError> {
        let v = match &self.0 {
            Value::Array(a) => a.get(i),
            Value::Object(o) => o.get(name).or_else(|| o.get(&camel(name))),
            _ => None,
        };
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| RpcError(INVALID_PARAMS, format!("invalid parameter {name}: {e}"))),
        }
    }

    fn req<T: DeserializeOwned>(&self, i: usize, name: &str) -> Result<T, RpcError> {
        self.opt(i, name)?
            .ok_or_else(|| RpcError(INVALID_PARAMS, format!("missing parameter {name}")))
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError(INTERNAL, e.to_string()))
}

/// Bounds a wait on the owner tasks, as the REST API does.
async fn answer<T>(
    f: impl std::future::Future<Output = Result<T, crate::control::NodeGone>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RpcError(
            NODE_GONE,
            "the node did not answer in time".to_owned(),
        )),
    }
}

fn endpoint(s: &str, code: i64) -> Result<Endpoint, RpcError> {
    Endpoint::parse_supported(s).map_err(|e| RpcError(code, e.to_string()))
}

fn peer_error(e: PeerOpError, exists: i64, missing: i64) -> RpcError {
    let code = match e {
        PeerOpError::AlreadyExists => exists,
        PeerOpError::NotFound => missing,
        PeerOpError::Unsupported(_) => INVALID_PARAMS,
    };
    RpcError(code, e.to_string())
}

async fn dispatch(c: &Control, method: &str, p: &Params) -> Result<Value, RpcError> {
    let own_pk = c.info().node_pubkey;
    match method {
        "getInfo" => to_value(super::admin_info(c)),
        "getPublicKeyFromIp" => {
            let ip: String = p.req(0, "mycelium_ip").or_else(|_| p.req(0, "ip"))?;
            let addr: Ipv6Addr = ip
                .parse()
                .map_err(|_| RpcError(-32007, format!("invalid IPv6 address '{ip}'")))?;
            match answer(c.pubkey_of(addr)).await? {
                Some(pk) => to_value(super::hex(&pk)),
                None => Err(RpcError(-32008, format!("no public key known for {addr}"))),
            }
        }
        "getPeers" => {
            let rows = answer(c.peers()).await?;
            to_value(rows.into_iter().map(PeerRow::from).collect::<Vec<_>>())
        }
        "addPeer" => {
            let e = endpoint(&p.req::<String>(0, "endpoint")?, -32009)?;
            answer(c.add_peer(e))
                .await?
                .map_err(|e| peer_error(e, -32010, -32011))?;
            Ok(Value::Bool(true))
        }
        "deletePeer" => {
            let e = endpoint(&p.req::<String>(0, "endpoint")?, -32012)?;
            answer(c.remove_peer(e))
                .await?
                .map_err(|e| peer_error(e, -32010, -32011))?;
            Ok(Value::Bool(true))
        }
        "getSelectedRoutes" | "getFallbackRoutes" => {
            let kind = if method == "getSelectedRoutes" {
                RouteKind::Selected
            } else {
                RouteKind::Fallback
            };
            let rows = answer(c.routes(kind)).await?;
            to_value(super::RouteRows(rows))
        }
        "getQueriedSubnets" => {
            let rows = answer(c.queried()).await?;
            to_value(
                rows.into_iter()
                    .map(|q| QueryRow {
                        subnet: q.subnet.to_string(),
                        expiration: q.expires_in.to_string(),
                    })
                    .collect::<Vec<_>>(),
            )
        }
        "getPacketStatistics" => Ok(json!({"bySource": [], "byDestination": []})),
        "getStats" => to_value(answer(c.stats()).await?),
        "getProxies" => Ok(json!([])),
        "connectProxy" => Err(RpcError(
            -32032,
            "this node has no SOCKS proxy support".to_owned(),
        )),
        "disconnectProxy" | "startProxyProbe" | "stopProxyProbe" => Err(RpcError(
            METHOD_NOT_FOUND,
            "this node has no SOCKS proxy support".to_owned(),
        )),
        "rpc.discover" => Ok(discover()),
        "popMessage" => {
            let peek: Option<bool> = p.opt(0, "peek")?;
            let timeout: Option<u64> = p.opt(1, "timeout")?;
            let topic = match p.opt::<String>(2, "topic")? {
                Some(t) => Some(msg::decode_topic(&t).map_err(op(-32013))?),
                None => None,
            };
            let h = msg::handle(c).map_err(op(-32013))?;
            let wait = Duration::from_secs(timeout.unwrap_or(0));
            match h.pop(topic, peek == Some(true), wait).await? {
                Some(m) => to_value(msg::receive_json(m, &own_pk)),
                None => Ok(Value::Null),
            }
        }
        "pushMessage" => {
            let m: MessageSend = p.req(0, "message")?;
            let reply_timeout: Option<u64> = p.opt(1, "reply_timeout")?;
            match msg::send(c, m, None, reply_timeout)
                .await
                .map_err(op(-32015))?
            {
                Sent::Id(id) | Sent::TimedOut(id) => Ok(json!({"id": id.to_hex()})),
                Sent::Reply(r) => to_value(msg::receive_json(r, &own_pk)),
            }
        }
        "pushMessageReply" => {
            let id: String = p.req(0, "id")?;
            let id = msg::parse_id(&id).map_err(op(-32018))?;
            let m: MessageSend = p.req(1, "message")?;
            msg::send(c, m, Some(id), None).await.map_err(op(-32018))?;
            Ok(Value::Bool(true))
        }
        "getMessageInfo" => {
            let id: String = p.req(0, "id")?;
            let id = msg::parse_id(&id).map_err(op(-32020))?;
            let h = msg::handle(c).map_err(op(-32019))?;
            match answer(h.status(id)).await? {
                Some(s) => to_value(msg::MessageStatus::from(s)),
                None => Err(RpcError(-32019, format!("no message {id} is known"))),
            }
        }
        _ => topic_method(c, method, p).await,
    }
}

async fn topic_method(c: &Control, method: &str, p: &Params) -> Result<Value, RpcError> {
    let h = msg::handle(c).map_err(op(-32021))?;
    let topic = |p: &Params| -> Result<Vec<u8>, RpcError> {
        msg::decode_topic(&p.req::<String>(0, "topic")?).map_err(op(-32021))
    };
    let subnet = |p: &Params| -> Result<message::Prefix, RpcError> {
        msg::parse_prefix(&p.req::<String>(1, "subnet")?).map_err(op(-32023))
    };
    match method {
        "getDefaultTopicAction" => to_value(answer(h.topics(|t| t.default_accept)).await?),
        "setDefaultTopicAction" => {
            let accept: bool = p.req(0, "accept")?;
            answer(h.topics(move |t| t.default_accept = accept)).await?;
            Ok(Value::Bool(true))
        }
        "getTopics" => {
            let all = answer(h.topics(|t| t.rules.keys().cloned().collect::<Vec<_>>())).await?;
            to_value(all.iter().map(|t| msg::b64::encode(t)).collect::<Vec<_>>())
        }
        "addTopic" => {
            let t = topic(p)?;
            answer(h.topics(move |x| x.add_topic(t))).await?;
            Ok(Value::Bool(true))
        }
        "removeTopic" => {
            let t = topic(p)?;
            answer(h.topics(move |x| x.remove_topic(&t))).await?;
            Ok(Value::Bool(true))
        }
        "getTopicSources" => {
            let t = topic(p)?;
            match answer(h.topics(move |x| x.sources(&t))).await? {
                Some(s) => to_value(s.iter().map(ToString::to_string).collect::<Vec<_>>()),
                None => Err(RpcError(-32030, "no such topic".to_owned())),
            }
        }
        "addTopicSource" | "removeTopicSource" => {
            let (t, s) = (topic(p)?, subnet(p)?);
            if method == "addTopicSource" {
                answer(h.topics(move |x| x.add_source(t, s))).await?;
            } else {
                answer(h.topics(move |x| x.remove_source(&t, s))).await?;
            }
            Ok(Value::Bool(true))
        }
        "getTopicForwardSocket" => {
            let t = topic(p)?;
            let f = answer(h.topics(move |x| x.forward(&t).cloned())).await?;
            to_value(f.map(|p| p.to_string_lossy().into_owned()))
        }
        "setTopicForwardSocket" => {
            let t = topic(p)?;
            let path: String = p.req(1, "socket_path")?;
            let path = std::path::PathBuf::from(path);
            answer(h.topics(move |x| x.set_forward(&t, Some(path)))).await?;
            Ok(Value::Bool(true))
        }
        "removeTopicForwardSocket" => {
            let t = topic(p)?;
            answer(h.topics(move |x| x.set_forward(&t, None))).await?;
            Ok(Value::Bool(true))
        }
        _ => Err(RpcError(METHOD_NOT_FOUND, format!("no method '{method}'"))),
    }
}

/// The OpenRPC document `rpc.discover` returns.
fn discover() -> Value {
    let methods: Vec<Value> = METHODS
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "summary": m.summary,
                "params": m.params.iter().map(|(n, req)| json!({
                    "name": n, "required": req, "schema": {}
                })).collect::<Vec<_>>(),
                "result": {"name": "result", "schema": {"description": m.result}},
            })
        })
        .collect();
    json!({
        "openrpc": "1.2.6",
        "info": {
            "title": "hypha JSON-RPC API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The admin and message API of a hypha node, as JSON-RPC 2.0 over HTTP POST",
        },
        "methods": methods,
    })
}

/// The method names, for tests and the documentation.
pub fn method_names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}
