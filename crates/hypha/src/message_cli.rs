//! `hypha message send|receive`: messages through the running node's REST API, with the
//! reference CLI's flags and output (one JSON object per line; UTF-8 payloads and topics as
//! text, others base64; `--raw` prints the payload alone).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::client::{error_message, percent_encode};
use anyhow::{anyhow, bail, Context};
use node::api::messages::{b64, Destination, MessageIdAnswer, MessageReceive, MessageSend};
use serde::Serialize;

use crate::cli::MessageCmd;

/// Waiting "for ever" means a year, as the reference CLI does.
const FOREVER: u64 = 365 * 24 * 3600;
/// Largest answer read (a message of the largest size, in base64, in JSON).
const MAX_BODY: u64 = 64 << 20;

pub fn run(cmd: MessageCmd, api: SocketAddr) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        MessageCmd::Send {
            wait,
            timeout,
            topic,
            msg_path,
            reply_to,
            destination,
            message,
        } => {
            let dst = destination_of(&destination)?;
            let payload = match (&msg_path, message) {
                (Some(p), _) => std::fs::read(p)
                    .with_context(|| format!("cannot read the message from {}", p.display()))?,
                (None, Some(m)) => m.into_bytes(),
                (None, None) => bail!("give the message as an argument or with --msg-path"),
            };
            if let Some(t) = &topic {
                if t.len() > message::MAX_TOPIC_LEN {
                    bail!(
                        "topic is {} bytes; at most {} allowed",
                        t.len(),
                        message::MAX_TOPIC_LEN
                    );
                }
            }
            let body = MessageSend {
                dst: Some(dst),
                topic: topic.map(|t| b64::encode(t.as_bytes())),
                payload: b64::encode(&payload),
            };
            let mut path = "/api/v1/messages".to_owned();
            if let Some(id) = &reply_to {
                if message::MessageId::from_hex(id).is_none() {
                    bail!("--reply-to '{id}' is not a message id (16 hex digits)");
                }
                path.push_str(&format!("/reply/{id}"));
            }
            let wait_secs = wait.then(|| timeout.unwrap_or(FOREVER));
            if let Some(s) = wait_secs {
                path.push_str(&format!("?reply_timeout={s}"));
            }
            let (status, text) = call(api, "POST", &path, Some(&body), wait_secs)?;
            match status {
                204 => Ok(()),
                201 | 408 => {
                    let id: MessageIdAnswer = decode(&text)?;
                    writeln!(out, "{}", serde_json::json!({ "id": id.id }))?;
                    Ok(())
                }
                200 => {
                    let m: MessageReceive = decode(&text)?;
                    print_message(&mut out, m, None, false)
                }
                _ => bail!(
                    "the node refused the message: {} (HTTP {status})",
                    error_message(&text)
                ),
            }
        }
        MessageCmd::Receive {
            timeout,
            topic,
            msg_path,
            raw,
        } => {
            let secs = timeout.unwrap_or(FOREVER);
            let mut path = format!("/api/v1/messages?timeout={secs}");
            if let Some(t) = &topic {
                if t.len() > message::MAX_TOPIC_LEN {
                    bail!(
                        "topic is {} bytes; at most {} allowed",
                        t.len(),
                        message::MAX_TOPIC_LEN
                    );
                }
                path.push_str(&format!(
                    "&topic={}",
                    percent_encode(&b64::encode(t.as_bytes()))
                ));
            }
            let (status, text) = call::<()>(api, "GET", &path, None, Some(secs))?;
            match status {
                204 => Ok(()),
                200 => {
                    let m: MessageReceive = decode(&text)?;
                    print_message(&mut out, m, msg_path.as_deref(), raw)
                }
                _ => bail!("the node refused: {} (HTTP {status})", error_message(&text)),
            }
        }
    }
}

fn destination_of(s: &str) -> anyhow::Result<Destination> {
    if s.len() == 64 {
        s.parse::<crypto::PublicKey>()
            .map_err(|e| anyhow!("'{s}' is not a public key: {e}"))?;
        return Ok(Destination::Pk(s.to_owned()));
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| anyhow!("'{s}' is neither an overlay address nor a hex public key"))?;
    match ip {
        IpAddr::V6(v6) if crypto::overlay().contains_addr(v6) => Ok(Destination::Ip(ip)),
        _ => bail!("{s} is not an overlay address (400::/7)"),
    }
}

/// The bytes, and how they are shown: as text when they are UTF-8, else in base64.
fn shown(b64_value: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let bytes = b64::decode(b64_value).ok_or_else(|| anyhow!("the node sent bad base64"))?;
    let s = String::from_utf8(bytes.clone()).unwrap_or_else(|_| b64_value.to_owned());
    Ok((bytes, s))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CliMessage {
    id: String,
    src_ip: std::net::Ipv6Addr,
    src_pk: String,
    dst_ip: std::net::Ipv6Addr,
    dst_pk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
}

fn print_message(
    out: &mut dyn Write,
    m: MessageReceive,
    msg_path: Option<&std::path::Path>,
    raw: bool,
) -> anyhow::Result<()> {
    let (data, payload) = shown(&m.payload)?;
    let topic = m.topic.as_deref().map(shown).transpose()?.map(|t| t.1);
    if let Some(p) = msg_path {
        std::fs::write(p, &data)
            .with_context(|| format!("cannot write the message to {}", p.display()))?;
    }
    if raw {
        if msg_path.is_none() {
            out.write_all(&data)?;
            writeln!(out)?;
        }
        return Ok(());
    }
    let cm = CliMessage {
        id: m.id,
        src_ip: m.src_ip,
        src_pk: m.src_pk,
        dst_ip: m.dst_ip,
        dst_pk: m.dst_pk,
        topic,
        payload: if msg_path.is_some() {
            None
        } else {
            Some(payload)
        },
    };
    serde_json::to_writer(&mut *out, &cm)?;
    writeln!(out)?;
    Ok(())
}

/// One call; `wait` is how long the node itself may take (the message's own timeout).
fn call<B: Serialize>(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&B>,
    wait: Option<u64>,
) -> anyhow::Result<(u16, String)> {
    let total = Duration::from_secs(wait.unwrap_or(0).saturating_add(30));
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(total))
        .timeout_connect(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let url = format!("http://{api}{path}");
    let res = match (method, body) {
        ("POST", Some(b)) => agent.post(&url).send_json(b),
        _ => agent.get(&url).call(),
    };
    let mut res = res.map_err(|e| match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed => {
            anyhow!("cannot reach the node's API at {api} (is the node running? --api-addr)")
        }
        other => anyhow!("talking to the node's API at {api} failed: {other}"),
    })?;
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| anyhow!("reading the node's answer failed: {e}"))?;
    Ok((status, text))
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).context("unexpected answer from the node's API")
}
