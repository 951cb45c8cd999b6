//! `/api/v1/messages…`: sending, receiving and following messages, and the topic table, with the
//! paths, status codes and JSON shapes of the protocol's reference node (`docs/messages.md` §5).
//! Payloads and topics travel as standard base64. The operations themselves are shared with the
//! JSON-RPC API ([`crate::jsonrpc`]).

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use message::{MessageId, Prefix, Progress, PushError, Received, Status};
use serde::{Deserialize, Serialize};

use super::{ask, json_body, ApiError, ApiResult};
use crate::control::{Control, NodeGone};
use crate::messages::MessageHandle;

/// Largest request body on these paths: a message of the largest default size in base64, and
/// room for the JSON around it.
pub const BODY_MAX: usize = 24 << 20;

/// Standard base64 with padding (RFC 4648 §4), as the APIs carry payloads and topics.
pub mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const INVALID: u8 = 0xff;
    /// The value of each byte as a base64 digit, or [`INVALID`].
    const DIGITS: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 64 {
            t[ALPHABET[i] as usize] = i as u8;
            i += 1;
        }
        t
    };

    pub fn encode(data: &[u8]) -> String {
        let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
        let digit = |n: u32, shift: u32| ALPHABET[(n >> shift & 63) as usize];
        let mut chunks = data.chunks_exact(3);
        for c in &mut chunks {
            let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            out.extend_from_slice(&[digit(n, 18), digit(n, 12), digit(n, 6), digit(n, 0)]);
        }
        match *chunks.remainder() {
            [a] => {
                let n = u32::from(a) << 16;
                out.extend_from_slice(&[digit(n, 18), digit(n, 12), b'=', b'=']);
            }
            [a, b] => {
                let n = u32::from(a) << 16 | u32::from(b) << 8;
                out.extend_from_slice(&[digit(n, 18), digit(n, 12), digit(n, 6), b'=']);
            }
            _ => {}
        }
        // Only ASCII from the alphabet was written.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Decodes padded or unpadded standard base64; `None` for anything else.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.trim_end_matches('=').as_bytes();
        if s.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
        let mut chunks = s.chunks_exact(4);
        for c in &mut chunks {
            let d = [
                DIGITS[c[0] as usize],
                DIGITS[c[1] as usize],
                DIGITS[c[2] as usize],
                DIGITS[c[3] as usize],
            ];
            if d.contains(&INVALID) {
                return None;
            }
            let n = u32::from(d[0]) << 18
                | u32::from(d[1]) << 12
                | u32::from(d[2]) << 6
                | u32::from(d[3]);
            out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut n = 0u32;
            for (i, &b) in rest.iter().enumerate() {
                let d = DIGITS[b as usize];
                if d == INVALID {
                    return None;
                }
                n |= u32::from(d) << (18 - 6 * i);
            }
            out.push((n >> 16) as u8);
            if rest.len() == 3 {
                out.push((n >> 8) as u8);
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            for n in 0..40usize {
                let d: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
                let e = super::encode(&d);
                assert_eq!(e.len() % 4, 0);
                assert_eq!(super::decode(&e), Some(d.clone()));
                assert_eq!(super::decode(e.trim_end_matches('=')), Some(d));
            }
            assert_eq!(super::encode(b"test-topic"), "dGVzdC10b3BpYw==");
            assert_eq!(super::decode("a"), None);
            assert_eq!(super::decode("ab!d"), None);
        }
    }
}

/// Where a message goes: an overlay address or a public key (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Destination {
    Ip(IpAddr),
    Pk(String),
}

/// The body of a send (and of a reply, where `dst` may be left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub payload: String,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceive {
    pub id: String,
    pub src_ip: Ipv6Addr,
    pub src_pk: String,
    pub dst_ip: Ipv6Addr,
    pub dst_pk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub payload: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageIdAnswer {
    pub id: String,
}

/// The status of a message sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    pub dst: Ipv6Addr,
    pub state: StateJson,
    pub created: i64,
    pub deadline: i64,
    pub msg_len: u64,
    /// Why it failed (hypha's addition; absent unless aborted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StateJson {
    Pending,
    Sending {
        pending: usize,
        sent: usize,
        acked: usize,
    },
    Received,
    Read,
    Aborted,
}

impl From<Status> for MessageStatus {
    fn from(s: Status) -> MessageStatus {
        MessageStatus {
            dst: s.dst,
            state: match s.state {
                Progress::Pending => StateJson::Pending,
                Progress::Sending {
                    pending,
                    sent,
                    acked,
                } => StateJson::Sending {
                    pending,
                    sent,
                    acked,
                },
                Progress::Received => StateJson::Received,
                Progress::Read => StateJson::Read,
                Progress::Aborted => StateJson::Aborted,
            },
            created: s.created,
            deadline: s.deadline,
            msg_len: s.msg_len,
            failure: s.failure,
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    super::hex(b)
}

/// A received message as the APIs show it (`dst_pk`: ours).
pub fn receive_json(m: Received, own_pk: &[u8; 32]) -> MessageReceive {
    MessageReceive {
        id: m.id.to_hex(),
        src_ip: m.src_ip,
        src_pk: hex(&m.src_pk),
        dst_ip: m.dst_ip,
        dst_pk: hex(own_pk),
        topic: (!m.topic.is_empty()).then(|| b64::encode(&m.topic)),
        payload: b64::encode(&m.data),
    }
}

/// Why an operation was refused, in a sentence, with the status the REST API gives it.
#[derive(Debug)]
pub struct OpError(pub StatusCode, pub String);

impl From<NodeGone> for OpError {
    fn from(e: NodeGone) -> OpError {
        OpError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        ApiError(e.0, e.1)
    }
}

fn bad(msg: impl Into<String>) -> OpError {
    OpError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) fn handle(c: &Control) -> Result<&MessageHandle, OpError> {
    c.messages().ok_or_else(|| {
        OpError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs no message subsystem".to_owned(),
        )
    })
}

pub fn decode_topic(t: &str) -> Result<Vec<u8>, OpError> {
    b64::decode(t).ok_or_else(|| bad(format!("topic '{t}' is not base64")))
}

pub fn parse_id(s: &str) -> Result<MessageId, OpError> {
    MessageId::from_hex(s).ok_or_else(|| bad(format!("'{s}' is not a message id (16 hex digits)")))
}

fn destination(d: &Destination) -> Result<Ipv6Addr, OpError> {
    match d {
        Destination::Ip(IpAddr::V6(ip)) if crypto::overlay().contains_addr(*ip) => Ok(*ip),
        Destination::Ip(ip) => Err(bad(format!("{ip} is not an overlay address (400::/7)"))),
        Destination::Pk(pk) => pk
            .parse::<crypto::PublicKey>()
            .map(|k| k.address())
            .map_err(|e| bad(format!("invalid public key: {e}"))),
    }
}

/// A send or reply: what the node returns, ready for either API.
pub enum Sent {
    Id(MessageId),
    Reply(Received),
    /// No reply within the time asked for.
    TimedOut(MessageId),
}

/// Sends `m` (a reply to `reply_to` when set: its destination defaults to that message's
/// sender, which the caller passes as `reply_dst`), waiting up to `reply_timeout` for a reply.
pub async fn send(
    c: &Control,
    m: MessageSend,
    reply_to: Option<MessageId>,
    reply_timeout: Option<u64>,
) -> Result<Sent, OpError> {
    let dst = match &m.dst {
        Some(d) => destination(d)?,
        None => return Err(bad("the message needs a destination (\"dst\")")),
    };
    let topic = match &m.topic {
        Some(t) => decode_topic(t)?,
        None => Vec::new(),
    };
    let data = b64::decode(&m.payload).ok_or_else(|| bad("payload is not base64"))?;
    let wait = reply_timeout.is_some() && reply_to.is_none();
    let (id, rx) = handle(c)?
        .push(dst, topic, data, reply_to, wait)
        .await?
        .map_err(|e| {
            let status = match e {
                PushError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                PushError::OutboxFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
                PushError::TopicTooLong(_) => StatusCode::BAD_REQUEST,
            };
            OpError(status, e.to_string())
        })?;
    let (Some(rx), Some(secs)) = (rx, reply_timeout) else {
        return Ok(Sent::Id(id));
    };
    match tokio::time::timeout(Duration::from_secs(secs), rx).await {
        Ok(Ok(reply)) => Ok(Sent::Reply(reply)),
        Ok(Err(_)) => Err(NodeGone.into()),
        Err(_) => Ok(Sent::TimedOut(id)),
    }
}

#[derive(Deserialize)]
struct PopQuery {
    peek: Option<bool>,
    timeout: Option<u64>,
    topic: Option<String>,
}

#[derive(Deserialize)]
struct PushQuery {
    reply_timeout: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultAction {
    pub accept: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBody {
    pub subnet: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardBody {
    pub socket_path: String,
}

/// The message routes, merged into the admin API's router.
pub(super) fn routes() -> Router<Control> {
    Router::new()
        .route("/api/v1/messages", get(pop).post(push))
        .route("/api/v1/messages/status/{id}", get(status))
        .route("/api/v1/messages/reply/{id}", post(reply))
        .route(
            "/api/v1/messages/topics/default",
            get(get_default).put(set_default),
        )
        .route("/api/v1/messages/topics", get(list_topics).post(add_topic))
        .route("/api/v1/messages/topics/{topic}", delete(remove_topic))
        .route(
            "/api/v1/messages/topics/{topic}/sources",
            get(sources).post(add_source),
        )
        .route(
            "/api/v1/messages/topics/{topic}/sources/{*subnet}",
            delete(remove_source),
        )
        .route(
            "/api/v1/messages/topics/{topic}/forward",
            get(get_forward).put(set_forward).delete(remove_forward),
        )
        .layer(DefaultBodyLimit::max(BODY_MAX))
}

async fn pop(State(c): State<Control>, Query(q): Query<PopQuery>) -> ApiResult<Response> {
    let topic = q.topic.as_deref().map(decode_topic).transpose()?;
    let h = handle(&c)?;
    let timeout = Duration::from_secs(q.timeout.unwrap_or(0));
    match h.pop(topic, q.peek == Some(true), timeout).await? {
        Some(m) => Ok(Json(receive_json(m, &c.info().node_pubkey)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn push(
    State(c): State<Control>,
    Query(q): Query<PushQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let m: MessageSend = json_body(&body)?;
    Ok(match send(&c, m, None, q.reply_timeout).await? {
        Sent::Id(id) => (
            StatusCode::CREATED,
            Json(MessageIdAnswer { id: id.to_hex() }),
        )
            .into_response(),
        Sent::Reply(r) => Json(receive_json(r, &c.info().node_pubkey)).into_response(),
        Sent::TimedOut(id) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(MessageIdAnswer { id: id.to_hex() }),
        )
            .into_response(),
    })
}

async fn reply(
    State(c): State<Control>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    let m: MessageSend = json_body(&body)?;
    send(&c, m, Some(id), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(State(c): State<Control>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    match ask(handle(&c)?.status(id)).await? {
        Some(s) => Ok(Json(MessageStatus::from(s)).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no message {id} is known"),
        )),
    }
}

async fn get_default(State(c): State<Control>) -> ApiResult<Json<DefaultAction>> {
    let accept = ask(handle(&c)?.topics(|t| t.default_accept)).await?;
    Ok(Json(DefaultAction { accept }))
}

async fn set_default(State(c): State<Control>, body: Bytes) -> ApiResult<StatusCode> {
    let b: DefaultAction = json_body(&body)?;
    ask(handle(&c)?.topics(move |t| t.default_accept = b.accept)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_topics(State(c): State<Control>) -> ApiResult<Json<Vec<String>>> {
    let topics = ask(handle(&c)?.topics(|t| t.rules.keys().cloned().collect::<Vec<_>>())).await?;
    Ok(Json(topics.iter().map(|t| b64::encode(t)).collect()))
}

/// The reference node takes the topic as a JSON array of bytes here; a base64 string (as its
/// documentation says) is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum TopicBody {
    Bytes(Vec<u8>),
    Base64(String),
}

async fn add_topic(State(c): State<Control>, body: Bytes) -> ApiResult<StatusCode> {
    let topic = match json_body::<TopicBody>(&body)? {
        TopicBody::Bytes(b) => b,
        TopicBody::Base64(s) => decode_topic(&s)?,
    };
    ask(handle(&c)?.topics(move |t| t.add_topic(topic))).await?;
    Ok(StatusCode::CREATED)
}

async fn remove_topic(
    State(c): State<Control>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    let topic = decode_topic(&topic)?;
    ask(handle(&c)?.topics(move |t| t.remove_topic(&topic))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sources(State(c): State<Control>, Path(topic): Path<String>) -> ApiResult<Response> {
    let topic = decode_topic(&topic)?;
    match ask(handle(&c)?.topics(move |t| t.sources(&topic))).await? {
        Some(s) => {
            let s: Vec<String> = s.iter().map(Prefix::to_string).collect();
            Ok(Json(s).into_response())
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such topic".to_owned())),
    }
}

pub fn parse_prefix(s: &str) -> Result<Prefix, OpError> {
    s.parse::<Prefix>().map_err(bad)
}

async fn add_source(
    State(c): State<Control>,
    Path(topic): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = decode_topic(&topic)?;
    let b: SourceBody = json_body(&body)?;
    let p = parse_prefix(&b.subnet)?;
    ask(handle(&c)?.topics(move |t| t.add_source(topic, p))).await?;
    Ok(StatusCode::CREATED)
}

async fn remove_source(
    State(c): State<Control>,
    Path((topic, subnet)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let topic = decode_topic(&topic)?;
    let p = parse_prefix(&subnet)?;
    ask(handle(&c)?.topics(move |t| t.remove_source(&topic, p))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_forward(
    State(c): State<Control>,
    Path(topic): Path<String>,
) -> ApiResult<Json<Option<String>>> {
    let topic = decode_topic(&topic)?;
    let p = ask(handle(&c)?.topics(move |t| t.forward(&topic).cloned())).await?;
    Ok(Json(p.map(|p| p.to_string_lossy().into_owned())))
}

async fn set_forward(
    State(c): State<Control>,
    Path(topic): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = decode_topic(&topic)?;
    let b: ForwardBody = json_body(&body)?;
    let path = std::path::PathBuf::from(b.socket_path);
    ask(handle(&c)?.topics(move |t| t.set_forward(&topic, Some(path)))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_forward(
    State(c): State<Control>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    let topic = decode_topic(&topic)?;
    ask(handle(&c)?.topics(move |t| t.set_forward(&topic, None))).await?;
    Ok(StatusCode::NO_CONTENT)
}
