//! The message subsystem on live nodes in namespaces the tests create (198.18.110–119.x underlay
//! links): hypha to hypha through the CLI, the REST API and JSON-RPC (every method, its result
//! compared with the REST API's), the inbox bound under a reader that never reads, oversize
//! sends; and, with `MYCELIUM_BIN`, against the reference implementation: a 200 KB message with
//! a topic each way, replies with `--wait`, a relay of the other kind, and 10 MB each way timed
//! beside a mycelium pair in the same run (printed, never asserted).

mod common;

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{http, http_port, Node, BIN};
use serde_json::{json, Value};
use testbed::{exec_in, link, wait_until, ChildGuard, Netns};

const ROUTE_WAIT: Duration = Duration::from_secs(60);
const API: &str = "127.0.0.1:8989";

fn b64(data: &[u8]) -> String {
    node::api::messages::b64::encode(data)
}

fn unb64(s: &str) -> Vec<u8> {
    node::api::messages::b64::decode(s).expect("base64")
}

/// Bytes that are not UTF-8 (so the CLIs must not print them as text by accident).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x100;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8 | 0x80
        })
        .collect()
}

fn subnet_of(a: Ipv6Addr) -> String {
    let s = a.segments();
    format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
}

fn hypha(ns: &Netns, dir: &Path, name: &str, peer: Option<&str>, extra: &[&str]) -> Node {
    let mut args = vec!["--disable-peer-discovery", "--tun-name", "hy0"];
    if let Some(p) = peer {
        args.extend_from_slice(&["--peers", p]);
    }
    args.extend_from_slice(extra);
    Node::start(ns, dir, name, &args)
}

fn wait_route(n: &Node, to: Ipv6Addr) {
    let subnet = subnet_of(to);
    n.wait(ROUTE_WAIT, &format!("route to {subnet}"), |n| {
        n.has_route(&subnet)
    });
}

/// A JSON-RPC call to the node in `ns` (default address): the whole answer.
fn rpc(ns: &Netns, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string();
    let (status, text) = http_port(ns, 8990, "POST", "/", Some(&body));
    assert_eq!(status, 200, "{method}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: {e}: {text}"));
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 7);
    v
}

fn rpc_ok(ns: &Netns, method: &str, params: Value) -> Value {
    let v = rpc(ns, method, params);
    assert!(v.get("error").is_none(), "{method}: {v}");
    v["result"].clone()
}

fn rest(ns: &Netns, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = http(ns, method, path, body);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, v)
}

/// Strips what changes from one call to the next (byte counters, timers) from peer rows.
fn steady_peers(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"endpoint": p["endpoint"], "type": p["type"], "state": p["connectionState"]}))
        .collect()
}

fn steady_routes(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["subnet"], r["nextHop"]]))
        .collect()
}

/// Two hypha nodes; every JSON-RPC method on the first, compared with the REST API, and a
/// message each way through JSON-RPC, REST and the CLI.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root (namespaces)")]
fn hypha_pair_rest_jsonrpc_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("ma").unwrap(), Netns::new("mb").unwrap());
    let [ip_a, _] = link(&na, &nb, 110).expect("veth").addrs;
    let a = hypha(&na, dir.path(), "a", None, &[]);
    let peer = format!("tcp://{ip_a}:9651");
    let b = hypha(&nb, dir.path(), "b", Some(&peer), &[]);
    wait_route(&a, b.addr);
    wait_route(&b, a.addr);

    // Admin methods against REST.
    let (_, info) = rest(&na, "GET", "/api/v1/admin", None);
    assert_eq!(rpc_ok(&na, "getInfo", json!([])), info);
    let (_, peers) = rest(&na, "GET", "/api/v1/admin/peers", None);
    assert_eq!(
        steady_peers(&rpc_ok(&na, "getPeers", json!([]))),
        steady_peers(&peers)
    );
    for (m, path) in [
        ("getSelectedRoutes", "selected"),
        ("getFallbackRoutes", "fallback"),
    ] {
        let (_, r) = rest(&na, "GET", &format!("/api/v1/admin/routes/{path}"), None);
        assert_eq!(
            steady_routes(&rpc_ok(&na, m, json!([]))),
            steady_routes(&r),
            "{m}"
        );
    }
    // The same subnets (their seconds left may tick between the two calls).
    let subnets = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| q["subnet"].clone())
            .collect()
    };
    let (_, q) = rest(&na, "GET", "/api/v1/admin/routes/queried", None);
    assert_eq!(
        subnets(&rpc_ok(&na, "getQueriedSubnets", json!([]))),
        subnets(&q)
    );
    let (_, pk) = rest(&na, "GET", &format!("/api/v1/pubkey/{}", b.addr), None);
    assert_eq!(
        rpc_ok(&na, "getPublicKeyFromIp", json!([b.addr.to_string()])),
        pk["publicKey"]
    );
    assert_eq!(
        rpc(&na, "getPublicKeyFromIp", json!(["not-an-ip"]))["error"]["code"],
        -32007
    );
    let stats = rpc_ok(&na, "getStats", json!([]));
    assert!(stats["messages"].is_object(), "{stats}");
    assert_eq!(
        rpc_ok(&na, "getPacketStatistics", json!([])),
        json!({"bySource": [], "byDestination": []})
    );
    assert_eq!(rpc_ok(&na, "getProxies", json!([])), json!([]));
    // No SOCKS proxy support: the actions say so.
    assert_eq!(rpc(&na, "connectProxy", json!([]))["error"]["code"], -32032);
    for m in ["disconnectProxy", "startProxyProbe", "stopProxyProbe"] {
        let e = rpc(&na, m, json!([]));
        assert_eq!(e["error"]["code"], -32601, "{m}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("proxy"));
    }
    // Peers: add a second endpoint, see it through REST, delete it again.
    let extra = "tcp://198.18.110.250:9651";
    assert_eq!(rpc_ok(&na, "addPeer", json!([extra])), json!(true));
    assert_eq!(rpc(&na, "addPeer", json!([extra]))["error"]["code"], -32010);
    let (_, peers) = rest(&na, "GET", "/api/v1/admin/peers", None);
    assert!(peers.to_string().contains("198.18.110.250"), "{peers}");
    assert_eq!(
        rpc_ok(&na, "deletePeer", json!({"endpoint": extra})),
        json!(true)
    );
    assert_eq!(
        rpc(&na, "deletePeer", json!([extra]))["error"]["code"],
        -32011
    );
    // rpc.discover lists every method the node answers.
    let doc = rpc_ok(&na, "rpc.discover", json!([]));
    let listed: Vec<&str> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, node::api::jsonrpc::method_names());
    assert_eq!(rpc(&na, "noSuchMethod", json!([]))["error"]["code"], -32601);
    // Malformed calls.
    let (_, text) = http_port(&na, 8990, "POST", "/rpc", Some("{not json"));
    assert!(text.contains("-32700"), "{text}");
    let (_, text) = http_port(&na, 8990, "POST", "/rpc", Some("[]"));
    assert!(text.contains("-32600"), "{text}");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "getDefaultTopicAction"},
        {"jsonrpc": "2.0", "method": "getTopics"},
        {"jsonrpc": "2.0", "id": 2, "method": "getTopics"}
    ]);
    let (_, text) = http_port(&na, 8990, "POST", "/rpc", Some(&batch.to_string()));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "the notification gets no answer: {v}"
    );

    // Topics through JSON-RPC, checked through REST, and back.
    let topic = b64(b"weather");
    assert_eq!(rpc_ok(&nb, "getDefaultTopicAction", json!([])), json!(true));
    let (_, d) = rest(&nb, "GET", "/api/v1/messages/topics/default", None);
    assert_eq!(d, json!({"accept": true}));
    assert_eq!(rpc_ok(&nb, "addTopic", json!([topic])), json!(true));
    let (_, t) = rest(&nb, "GET", "/api/v1/messages/topics", None);
    assert_eq!(t, json!([topic]));
    assert_eq!(rpc_ok(&nb, "getTopics", json!([])), t);
    assert_eq!(rpc_ok(&nb, "getTopicSources", json!([topic])), json!([]));
    let src = subnet_of(a.addr);
    assert_eq!(
        rpc_ok(&nb, "addTopicSource", json!([topic, src])),
        json!(true)
    );
    let (_, s) = rest(
        &nb,
        "GET",
        &format!(
            "/api/v1/messages/topics/{}/sources",
            topic.replace('=', "%3D")
        ),
        None,
    );
    assert_eq!(s, json!([src]));
    assert_eq!(rpc_ok(&nb, "getTopicSources", json!([topic])), s);
    assert_eq!(
        rpc(&nb, "getTopicSources", json!([b64(b"nope")]))["error"]["code"],
        -32030
    );
    assert_eq!(
        rpc_ok(
            &nb,
            "setTopicForwardSocket",
            json!([topic, "/nonexistent.sock"])
        ),
        json!(true)
    );
    let (_, f) = rest(
        &nb,
        "GET",
        &format!(
            "/api/v1/messages/topics/{}/forward",
            topic.replace('=', "%3D")
        ),
        None,
    );
    assert_eq!(f, json!("/nonexistent.sock"));
    assert_eq!(rpc_ok(&nb, "getTopicForwardSocket", json!([topic])), f);
    assert_eq!(
        rpc_ok(&nb, "removeTopicForwardSocket", json!([topic])),
        json!(true)
    );
    assert_eq!(
        rpc_ok(&nb, "getTopicForwardSocket", json!([topic])),
        Value::Null
    );

    // A message a -> b on the whitelisted topic, through JSON-RPC; popped through JSON-RPC.
    let body = payload(5000, 1);
    let msg = json!({"dst": {"ip": b.addr.to_string()}, "topic": topic, "payload": b64(&body)});
    let sent = rpc_ok(&na, "pushMessage", json!([msg]));
    let id = sent["id"].as_str().unwrap().to_owned();
    let got = rpc_ok(&nb, "popMessage", json!([false, 20, topic]));
    assert_eq!(got["id"], json!(id));
    assert_eq!(unb64(got["payload"].as_str().unwrap()), body);
    assert_eq!(got["topic"], json!(topic));
    assert_eq!(got["srcIp"], json!(a.addr.to_string()));
    assert_eq!(got["srcPk"], info["nodePubkey"]);
    // Its status on the sender, through both APIs, reaches "read".
    let status_path = format!("/api/v1/messages/status/{id}");
    a.wait(Duration::from_secs(10), "status read", |_| {
        rest(&na, "GET", &status_path, None).1["state"] == json!("read")
    });
    let (_, st) = rest(&na, "GET", &status_path, None);
    assert_eq!(rpc_ok(&na, "getMessageInfo", json!([id])), st);
    assert_eq!(st["msgLen"], json!(5000));
    assert_eq!(
        rpc(&na, "getMessageInfo", json!(["zz"]))["error"]["code"],
        -32020
    );
    assert_eq!(
        rpc(&na, "getMessageInfo", json!(["0000000000000000"]))["error"]["code"],
        -32019
    );
    // b answers through pushMessageReply; the reply (nobody waits for it) lands in a's inbox,
    // seen first with a peek.
    let answer = json!({"dst": {"ip": a.addr.to_string()}, "payload": b64(b"thanks")});
    assert_eq!(
        rpc_ok(&nb, "pushMessageReply", json!([id, answer])),
        json!(true)
    );
    assert_eq!(
        rpc(&nb, "pushMessageReply", json!(["xyz", answer]))["error"]["code"],
        -32018
    );
    let peeked = rpc_ok(&na, "popMessage", json!({"peek": true, "timeout": 10}));
    assert_eq!(peeked["id"], json!(id));
    let (st, popped) = rest(&na, "GET", "/api/v1/messages", None);
    assert_eq!(st, 200);
    assert_eq!(popped, peeked);
    assert_eq!(unb64(popped["payload"].as_str().unwrap()), b"thanks");
    // Nothing left: popMessage gives null, REST gives 204.
    assert_eq!(rpc_ok(&nb, "popMessage", json!([false, 0])), Value::Null);
    assert_eq!(rest(&nb, "GET", "/api/v1/messages", None).0, 204);

    // The whitelist refuses a sender outside it: a message from b to b's own topic rule is not
    // it; a -> b on a topic b restricts to another subnet is refused and counted.
    assert_eq!(
        rpc_ok(&nb, "removeTopicSource", json!([topic, src])),
        json!(true)
    );
    rpc_ok(&na, "pushMessage", json!([msg]));
    b.wait(Duration::from_secs(10), "refused by topic", |_| {
        rest(&nb, "GET", "/api/v1/admin/stats", None).1["messages"]["refusedTopic"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    assert_eq!(rpc_ok(&nb, "removeTopic", json!([topic])), json!(true));
    assert_eq!(rpc_ok(&nb, "getTopics", json!([])), json!([]));
    assert_eq!(
        rpc_ok(&nb, "setDefaultTopicAction", json!([false])),
        json!(true)
    );
    assert_eq!(
        rest(&nb, "GET", "/api/v1/messages/topics/default", None).1,
        json!({"accept": false})
    );
    let (st, _) = rest(
        &nb,
        "PUT",
        "/api/v1/messages/topics/default",
        Some(r#"{"accept":true}"#),
    );
    assert_eq!(st, 204);

    // REST: send with a reply wait from b; a answers through the CLI's --reply-to.
    let text = payload(300, 2);
    let nb_name = nb.name().to_owned();
    let a_addr = a.addr;
    let waiter = std::thread::spawn(move || {
        exec_in(
            &nb_name,
            BIN,
            &[
                "message",
                "send",
                "--wait",
                "--timeout",
                "30",
                &a_addr.to_string(),
                "hello",
            ],
        )
    });
    let got = a.json(&["message", "receive", "--timeout", "30"]);
    assert_eq!(got["payload"], json!("hello"));
    let rid = got["id"].as_str().unwrap();
    let file = dir.path().join("reply.bin");
    std::fs::write(&file, &text).unwrap();
    a.cli(&[
        "message",
        "send",
        "--reply-to",
        rid,
        "--msg-path",
        file.to_str().unwrap(),
        &b.addr.to_string(),
    ])
    .expect("reply");
    let out = waiter.join().unwrap().expect("send --wait");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["id"], json!(rid));
    // Not UTF-8: the CLI shows it in base64.
    assert_eq!(unb64(v["payload"].as_str().unwrap()), text);

    // REST send of a message to the reply-less CLI receive with a topic and a file.
    let big = payload(200 * 1024, 3);
    let (st, ans) = rest(
        &nb,
        "POST",
        "/api/v1/messages",
        Some(
            &json!({"dst": {"pk": info["nodePubkey"]}, "topic": b64(b"t"), "payload": b64(&big)})
                .to_string(),
        ),
    );
    assert_eq!(st, 201, "{ans}");
    assert_eq!(ans["id"].as_str().unwrap().len(), 16);
    let out = dir.path().join("out.bin");
    a.cli(&[
        "message",
        "receive",
        "--timeout",
        "30",
        "-t",
        "t",
        "--msg-path",
        out.to_str().unwrap(),
    ])
    .expect("receive");
    assert_eq!(std::fs::read(&out).unwrap(), big);

    // A topic forwarded to a Unix socket: the socket gets the payload, its answer goes back as
    // the reply.
    let sock = dir.path().join("svc.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let mut answer = b"re:".to_vec();
        answer.extend_from_slice(&got);
        s.write_all(&answer).unwrap();
    });
    let svc = b64(b"svc");
    rpc_ok(&nb, "addTopic", json!([svc]));
    rpc_ok(&nb, "addTopicSource", json!([svc, subnet_of(a.addr)]));
    let (st, _) = rest(
        &nb,
        "PUT",
        &format!(
            "/api/v1/messages/topics/{}/forward",
            svc.replace('=', "%3D")
        ),
        Some(&json!({"socketPath": sock.to_str().unwrap()}).to_string()),
    );
    assert_eq!(st, 204);
    let v = a.json(&[
        "message",
        "send",
        "--wait",
        "--timeout",
        "20",
        "-t",
        "svc",
        &b.addr.to_string(),
        "ping",
    ]);
    assert_eq!(v["payload"], json!("re:ping"), "{v}");
    server.join().unwrap();
    assert_eq!(
        rest(&nb, "GET", "/api/v1/messages", None).0,
        204,
        "the forwarded message is not in the inbox"
    );

    // Metrics count what moved.
    let (_, m) = rest(&na, "GET", "/api/v1/admin/stats", None);
    assert!(m["messages"]["received"].as_u64().unwrap() >= 2, "{m}");
    assert!(m["messages"]["sent"].as_u64().unwrap() >= 2, "{m}");
    assert_eq!(m["messages"]["malformed"], json!(0));
}

/// A receiver that never reads: its inbox stays within its bound (count and bytes), further
/// messages wait at the sender (status pending) instead of growing the receiver; reading makes
/// room and they arrive. An oversize send is refused with one line.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root (namespaces)")]
fn inbox_bound_holds_against_a_reader_that_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("mc").unwrap(), Netns::new("md").unwrap());
    let [ip_a, _] = link(&na, &nb, 111).expect("veth").addrs;
    let a = hypha(
        &na,
        dir.path(),
        "a",
        None,
        &["--max-message-size", "3000000"],
    );
    let peer = format!("tcp://{ip_a}:9651");
    let bound: u64 = 4 << 20;
    let b = hypha(
        &nb,
        dir.path(),
        "b",
        Some(&peer),
        &[
            "--inbox-max-bytes",
            &bound.to_string(),
            "--inbox-max-messages",
            "50",
        ],
    );
    wait_route(&a, b.addr);
    let rss_before = b.rss_kib().unwrap();
    // 16 messages of 1 MB: four fit.
    let file = dir.path().join("m.bin");
    std::fs::write(&file, payload(1 << 20, 4)).unwrap();
    let mut ids = Vec::new();
    for _ in 0..16 {
        let v = a.json(&[
            "message",
            "send",
            "--msg-path",
            file.to_str().unwrap(),
            &b.addr.to_string(),
        ]);
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let stats = |n: &Netns| rest(n, "GET", "/api/v1/admin/stats", None).1["messages"].clone();
    b.wait(Duration::from_secs(30), "inbox full and refusing", |_| {
        let s = stats(&nb);
        s["inboxMessages"] == json!(4) && s["refusedInboxFull"].as_u64().unwrap_or(0) > 0
    });
    // Given time, nothing more gets in, and memory did not grow with what waits.
    std::thread::sleep(Duration::from_secs(2));
    let s = stats(&nb);
    assert!(s["inboxBytes"].as_u64().unwrap() <= bound, "{s}");
    assert_eq!(s["inboxMessages"], json!(4), "{s}");
    let rss_after = b.rss_kib().unwrap();
    eprintln!("messages figure: receiver RSS {rss_before} KiB before, {rss_after} KiB with a full inbox of 4 MiB and 12 MB waiting at the sender");
    assert!(
        rss_after < rss_before + 24 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );
    let pending = ids
        .iter()
        .filter(|id| {
            rest(&na, "GET", &format!("/api/v1/messages/status/{id}"), None).1["state"]
                == json!("pending")
        })
        .count();
    assert_eq!(pending, 12, "the others wait at the sender");
    // Reading makes room; everything arrives, none lost.
    for i in 0..16 {
        let got = b.cli(&[
            "message",
            "receive",
            "--timeout",
            "30",
            "--raw",
            "--msg-path",
            "/dev/null",
        ]);
        assert!(got.is_ok(), "message {i}: {got:?}");
    }
    let s = stats(&nb);
    assert_eq!(s["received"], json!(16), "{s}");
    assert_eq!(s["inboxMessages"], json!(0), "{s}");

    // Oversize: refused before anything is sent, in one line.
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, vec![0u8; 3_000_001]).unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            na.name(),
            BIN,
            "message",
            "send",
            "--msg-path",
        ])
        .arg(&huge)
        .arg(b.addr.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("3000001") && err.contains("HTTP 413"), "{err}");
}

/// A connected peer that sends malformed message packets (sealed with a key it announced, so
/// they reach the message core): each is counted and dropped, nothing is acknowledged that should
/// not be, and a well-formed message from the same peer still arrives afterwards.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root (namespaces)")]
fn malformed_message_packets_are_counted_and_dropped() {
    use common::rogue::{public_key_of, Rogue, Sender};
    use message::{checksum, MessageId, Repr};
    let dir = tempfile::tempdir().unwrap();
    let (na, nx) = (Netns::new("ms").unwrap(), Netns::new("mt").unwrap());
    let [ip_a, _] = link(&na, &nx, 120).expect("veth").addrs;
    let a = hypha(&na, dir.path(), "a", None, &[]);
    let a_key = public_key_of(&a.key);
    let target = format!("{ip_a}:9651").parse().unwrap();
    let k = Sender::new();
    let mut r = Rogue::connect(&nx, target);
    r.send(&k.update()).unwrap();
    a.wait(ROUTE_WAIT, "the rogue's route", |n| {
        n.has_route(&k.subnet_text())
    });
    let send = |r: &mut Rogue, p: &[u8]| r.send(&k.frame(&a_key, k.addr, a.addr, 1, p)).unwrap();
    let id = MessageId([9; 8]);
    let init = |len: u64| {
        Repr::Init {
            id,
            reply: false,
            ack: false,
            len,
            topic: b"t",
        }
        .to_vec()
    };
    let chunk = |index: u64, offset: u64, d: &[u8]| {
        Repr::Chunk {
            id,
            ack: false,
            index,
            offset,
            size: d.len() as u64,
            data: d,
        }
        .to_vec()
    };
    let body = payload(2000, 9);
    send(&mut r, &init(2000));
    let mut unknown_flags = vec![0u8; 12];
    unknown_flags[8..10].copy_from_slice(&0x8003u16.to_be_bytes());
    let bad: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],                             // short header
        unknown_flags,                             // unknown flags
        vec![0u8; 12],                             // no kind at all
        chunk(0, 1990, &body[..300]),              // offset past the length
        chunk(0, u64::MAX - 5, &body[..300]),      // offset overflowing
        chunk(0, 0, &body[..100]),                 // short chunk that is not the last
        chunk(0, 0, &body[..1300])[..40].to_vec(), // chunk cut short
    ];
    for p in &bad {
        send(&mut r, p);
    }
    // The chunks, then a DONE with the wrong hash: the message is dropped, not delivered.
    send(&mut r, &chunk(0, 0, &body[..1300]));
    send(&mut r, &chunk(1, 1300, &body[1300..]));
    send(
        &mut r,
        &Repr::Done {
            id,
            ack: false,
            chunks: 2,
            hash: [0; 32],
        }
        .to_vec(),
    );
    let stats = || rest(&na, "GET", "/api/v1/admin/stats", None).1["messages"].clone();
    a.wait(Duration::from_secs(10), "malformed packets counted", |_| {
        let s = stats();
        s["malformed"].as_u64() == Some(bad.len() as u64) && s["badChecksum"] == json!(1)
    });
    assert_eq!(rest(&na, "GET", "/api/v1/messages", None).0, 204);
    // The same peer sending properly is heard.
    let id2 = MessageId([10; 8]);
    let ok = [
        Repr::Init {
            id: id2,
            reply: false,
            ack: false,
            len: 2000,
            topic: b"t",
        }
        .to_vec(),
        Repr::Chunk {
            id: id2,
            ack: false,
            index: 0,
            offset: 0,
            size: 1300,
            data: &body[..1300],
        }
        .to_vec(),
        Repr::Chunk {
            id: id2,
            ack: false,
            index: 1,
            offset: 1300,
            size: 700,
            data: &body[1300..],
        }
        .to_vec(),
        Repr::Done {
            id: id2,
            ack: false,
            chunks: 2,
            hash: checksum(&body),
        }
        .to_vec(),
    ];
    for p in &ok {
        send(&mut r, p);
    }
    let (st, got) = rest(&na, "GET", "/api/v1/messages?timeout=5", None);
    assert_eq!(st, 200, "{}", a.log_tail());
    assert_eq!(unb64(got["payload"].as_str().unwrap()), body);
    assert_eq!(got["srcPk"], json!(k.public.to_string()));
    let s = stats();
    assert_eq!(s["received"], json!(1), "{s}");
}

// ---- against the reference implementation ---------------------------------------------------

fn mycelium_bin() -> String {
    std::env::var("MYCELIUM_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("MYCELIUM_BIN must name a mycelium binary at run time too")
}

/// One mycelium process in a namespace with its API on [`API`].
struct Myc {
    ns: String,
    log: PathBuf,
    addr: Ipv6Addr,
    _child: ChildGuard,
}

impl Myc {
    fn start(ns: &Netns, dir: &Path, name: &str, peer: Option<&str>) -> Myc {
        let bin = mycelium_bin();
        let key = dir.join(format!("{name}.key"));
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&bin)
                .env("XDG_CONFIG_HOME", dir)
                .env("XDG_DATA_HOME", dir)
                .args(["-k", key.to_str().unwrap()])
                .args(args)
                .output()
                .expect("run mycelium");
            assert!(out.status.success(), "mycelium {args:?}: {out:?}");
            out.stdout
        };
        run(&["generate-keys"]);
        let v: Value = serde_json::from_slice(&run(&["inspect", "--json"])).unwrap();
        let addr: Ipv6Addr = v["address"].as_str().unwrap().parse().unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut cmd = format!(
            "XDG_CONFIG_HOME={d} XDG_DATA_HOME={d} exec {bin} -k {k} --log-format plain \
             --tcp-listen-port 9651 --disable-quic --disable-peer-discovery --tun-name myc0 \
             --api-addr {API} --jsonrpc-addr 127.0.0.1:8990",
            d = dir.display(),
            k = key.display(),
        );
        if let Some(p) = peer {
            cmd.push_str(&format!(" --peers {p}"));
        }
        cmd.push_str(&format!(" >>{} 2>&1", log.display()));
        let child = ns.spawn("sh", &["-c", &cmd]).expect("spawn mycelium");
        let m = Myc {
            ns: ns.name().to_owned(),
            log,
            addr,
            _child: child,
        };
        let up = wait_until(Duration::from_secs(20), || {
            m.cli(&["peers", "list"]).is_ok()
        });
        assert!(up.is_ok(), "mycelium API up on {}:\n{}", m.ns, m.log_tail());
        m
    }

    fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let bin = mycelium_bin();
        let mut all = vec!["--api-addr", API];
        all.extend_from_slice(args);
        exec_in(&self.ns, &bin, &all)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn has_route(&self, to: Ipv6Addr) -> bool {
        self.cli(&["routes", "selected", "--json"])
            .is_ok_and(|out| out.contains(&subnet_of(to)))
    }

    fn wait_route(&self, to: Ipv6Addr) {
        let ok = wait_until(ROUTE_WAIT, || self.has_route(to));
        assert!(ok.is_ok(), "mycelium route to {to}:\n{}", self.log_tail());
    }
}

/// Sends the file at `path` to `to` with a CLI (`hypha` or mycelium) in `ns`, while the receiver
/// runs `receive` in `rns`; returns the seconds from the start of the send to the end of the
/// receive, and checks the bytes that came out.
#[allow(clippy::too_many_arguments)]
fn timed_message(
    send_bin: &str,
    ns: &str,
    recv_bin: &str,
    rns: &str,
    to: Ipv6Addr,
    topic: &str,
    path: &Path,
    out: &Path,
) -> f64 {
    let (recv_s, rns, out_s) = (
        recv_bin.to_owned(),
        rns.to_owned(),
        out.to_str().unwrap().to_owned(),
    );
    let topic_s = topic.to_owned();
    let receiver = std::thread::spawn(move || {
        exec_in(
            &rns,
            &recv_s,
            &[
                "--api-addr",
                API,
                "message",
                "receive",
                "--timeout",
                "120",
                "-t",
                &topic_s,
                "--msg-path",
                &out_s,
            ],
        )
    });
    let start = Instant::now();
    exec_in(
        ns,
        send_bin,
        &[
            "--api-addr",
            API,
            "message",
            "send",
            "-t",
            topic,
            "--msg-path",
            path.to_str().unwrap(),
            &to.to_string(),
        ],
    )
    .expect("send");
    receiver.join().unwrap().expect("receive");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(path).unwrap(),
        "{send_bin} -> {recv_bin}: bytes differ"
    );
    secs
}

/// hypha and mycelium side by side: 200 KB with a topic each way (hypha receiving through its
/// REST API and its CLI), replies with `--wait` each way.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn mycelium_and_hypha_exchange_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("me").unwrap(), Netns::new("mf").unwrap());
    let [ip_a, _] = link(&na, &nb, 112).expect("veth").addrs;
    let h = hypha(&na, dir.path(), "h", None, &[]);
    let m = Myc::start(&nb, dir.path(), "m", Some(&format!("tcp://{ip_a}:9651")));
    wait_route(&h, m.addr);
    m.wait_route(h.addr);
    let myc = mycelium_bin();
    let data = payload(200 * 1024, 5);
    let file = dir.path().join("200k.bin");
    std::fs::write(&file, &data).unwrap();

    // mycelium -> hypha, read through hypha's REST API.
    m.cli(&[
        "message",
        "send",
        "-t",
        "news",
        "--msg-path",
        file.to_str().unwrap(),
        &h.addr.to_string(),
    ])
    .expect("mycelium send");
    let (st, got) = rest(
        &na,
        "GET",
        &format!(
            "/api/v1/messages?timeout=8&topic={}",
            b64(b"news").replace('=', "%3D")
        ),
        None,
    );
    assert_eq!(st, 200, "{got}\n{}", h.log_tail());
    assert_eq!(unb64(got["payload"].as_str().unwrap()), data);
    assert_eq!(got["topic"], json!(b64(b"news")));
    assert_eq!(got["srcIp"], json!(m.addr.to_string()));
    // mycelium -> hypha, read through hypha's CLI.
    let out = dir.path().join("h.out");
    let secs = timed_message(&myc, nb.name(), BIN, na.name(), h.addr, "news", &file, &out);
    eprintln!("messages figure: 200 KB mycelium -> hypha in {secs:.3} s");
    // hypha -> mycelium, read by mycelium's CLI.
    let out = dir.path().join("m.out");
    let secs = timed_message(BIN, na.name(), &myc, nb.name(), m.addr, "news", &file, &out);
    eprintln!("messages figure: 200 KB hypha -> mycelium in {secs:.3} s");

    // Replies with --wait, both ways.
    for (asker, answerer) in [("hypha", "mycelium"), ("mycelium", "hypha")] {
        let (ask_bin, ask_ns, ans_bin, ans_ns, dst, back) = if asker == "hypha" {
            (
                BIN.to_owned(),
                na.name().to_owned(),
                myc.clone(),
                nb.name().to_owned(),
                m.addr,
                h.addr,
            )
        } else {
            (
                myc.clone(),
                nb.name().to_owned(),
                BIN.to_owned(),
                na.name().to_owned(),
                h.addr,
                m.addr,
            )
        };
        let (b2, n2) = (ask_bin.clone(), ask_ns.clone());
        let waiter = std::thread::spawn(move || {
            exec_in(
                &n2,
                &b2,
                &[
                    "--api-addr",
                    API,
                    "message",
                    "send",
                    "--wait",
                    "--timeout",
                    "30",
                    &dst.to_string(),
                    "question",
                ],
            )
        });
        let got = exec_in(
            &ans_ns,
            &ans_bin,
            &["--api-addr", API, "message", "receive", "--timeout", "30"],
        )
        .expect("receive the question");
        let got: Value = serde_json::from_str(got.trim()).unwrap();
        assert_eq!(got["payload"], json!("question"), "{asker} -> {answerer}");
        let id = got["id"].as_str().unwrap();
        exec_in(
            &ans_ns,
            &ans_bin,
            &[
                "--api-addr",
                API,
                "message",
                "send",
                "--reply-to",
                id,
                &back.to_string(),
                "answer",
            ],
        )
        .expect("reply");
        let out = waiter.join().unwrap().expect("send --wait");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            v["payload"],
            json!("answer"),
            "{asker} asked {answerer}: {v}"
        );
        assert_eq!(v["id"], json!(id));
    }
    // JSON-RPC: the same methods on both nodes give answers of the same shape.
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    let first = |v: Value| {
        v.as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        keys(&rpc_ok(&na, "getInfo", json!([]))),
        keys(&rpc_ok(&nb, "getInfo", json!([])))
    );
    for method in ["getPeers", "getSelectedRoutes"] {
        let (h_row, m_row) = (
            first(rpc_ok(&na, method, json!([]))),
            first(rpc_ok(&nb, method, json!([]))),
        );
        let (hk, mk) = (keys(&h_row), keys(&m_row));
        assert!(
            mk.iter().all(|k| hk.contains(k)),
            "{method}: hypha {hk:?}, mycelium {mk:?}"
        );
    }
    for (method, params) in [
        ("getDefaultTopicAction", json!([])),
        ("getTopics", json!([])),
        ("popMessage", json!([false, 0])),
        ("getPublicKeyFromIp", json!([h.addr.to_string()])),
    ] {
        assert_eq!(
            rpc_ok(&na, method, params.clone()),
            rpc_ok(&nb, method, params),
            "{method}"
        );
    }
    // A message pushed through each node's JSON-RPC to the other; their statuses have one shape.
    let push = |ns: &Netns, to: Ipv6Addr| {
        let m = json!({"dst": {"ip": to.to_string()}, "topic": b64(b"rpc"), "payload": b64(b"via json-rpc")});
        rpc_ok(ns, "pushMessage", json!([m]))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (hid, mid) = (push(&na, m.addr), push(&nb, h.addr));
    let got_h = rpc_ok(&na, "popMessage", json!([false, 10, b64(b"rpc")]));
    let got_m = rpc_ok(&nb, "popMessage", json!([false, 10, b64(b"rpc")]));
    assert_eq!(
        (got_h["id"].as_str(), got_m["id"].as_str()),
        (Some(mid.as_str()), Some(hid.as_str()))
    );
    assert_eq!(keys(&got_h), keys(&got_m));
    assert_eq!(got_h["payload"], got_m["payload"]);
    let (sh, sm) = (
        rpc_ok(&na, "getMessageInfo", json!([hid])),
        rpc_ok(&nb, "getMessageInfo", json!([mid])),
    );
    assert_eq!(keys(&sh), keys(&sm), "hypha {sh}, mycelium {sm}");
    for (v, who) in [
        (&rpc(&na, "noSuchMethod", json!([])), "hypha"),
        (&rpc(&nb, "noSuchMethod", json!([])), "mycelium"),
    ] {
        assert_eq!(v["error"]["code"], -32601, "{who}: {v}");
    }

    let (_, s) = rest(&na, "GET", "/api/v1/admin/stats", None);
    assert_eq!(s["messages"]["malformed"], json!(0), "{s}");
    assert_eq!(s["data"]["dropInner"], json!(0), "{s}");
}

/// A message across a relay of the other kind: hypha - mycelium - hypha, and
/// mycelium - hypha - mycelium.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn messages_cross_a_relay_of_the_other_kind() {
    let myc = mycelium_bin();
    let data = payload(50 * 1024, 6);
    {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.bin");
        std::fs::write(&file, &data).unwrap();
        let (na, nb, nc) = (
            Netns::new("mg").unwrap(),
            Netns::new("mh").unwrap(),
            Netns::new("mi").unwrap(),
        );
        let [ab_a, _] = link(&na, &nb, 113).unwrap().addrs;
        let [bc_b, _] = link(&nb, &nc, 114).unwrap().addrs;
        let a = hypha(&na, dir.path(), "a", None, &[]);
        let relay = Myc::start(&nb, dir.path(), "r", Some(&format!("tcp://{ab_a}:9651")));
        let c = hypha(
            &nc,
            dir.path(),
            "c",
            Some(&format!("tcp://{bc_b}:9651")),
            &[],
        );
        relay.wait_route(a.addr);
        relay.wait_route(c.addr);
        let out = dir.path().join("c.out");
        let secs = timed_message(BIN, na.name(), BIN, nc.name(), c.addr, "relay", &file, &out);
        eprintln!("messages figure: 50 KB hypha -> mycelium relay -> hypha in {secs:.3} s");
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.bin");
        std::fs::write(&file, &data).unwrap();
        let (na, nb, nc) = (
            Netns::new("mj").unwrap(),
            Netns::new("mk").unwrap(),
            Netns::new("ml").unwrap(),
        );
        let [ab_a, _] = link(&na, &nb, 115).unwrap().addrs;
        let [bc_b, _] = link(&nb, &nc, 116).unwrap().addrs;
        let a = Myc::start(&na, dir.path(), "a", None);
        let relay = hypha(
            &nb,
            dir.path(),
            "r",
            Some(&format!("tcp://{ab_a}:9651")),
            &[],
        );
        let c = Myc::start(&nc, dir.path(), "c", Some(&format!("tcp://{bc_b}:9651")));
        wait_route(&relay, a.addr);
        wait_route(&relay, c.addr);
        let out = dir.path().join("c.out");
        let secs = timed_message(
            &myc,
            na.name(),
            &myc,
            nc.name(),
            c.addr,
            "relay",
            &file,
            &out,
        );
        eprintln!("messages figure: 50 KB mycelium -> hypha relay -> mycelium in {secs:.3} s");
    }
}

/// Sends like [`timed_message`], but a send the sending CLI refuses gives `None` (mycelium's API
/// takes request bodies of at most 2 MB, so it cannot send a 10 MB message at all).
#[allow(clippy::too_many_arguments)]
fn try_timed(
    send_bin: &str,
    ns: &str,
    recv_bin: &str,
    rns: &str,
    to: Ipv6Addr,
    path: &Path,
    out: &Path,
) -> Option<f64> {
    let args = [
        "--api-addr",
        API,
        "message",
        "send",
        "-t",
        "probe",
        "--msg-path",
        path.to_str().unwrap(),
        &to.to_string(),
    ];
    if std::fs::metadata(path).unwrap().len() > 1_500_000 && send_bin != BIN {
        // Check the refusal first, so that no receiver is left waiting.
        let refused = exec_in(ns, send_bin, &args);
        if refused.is_err() || refused.as_deref().is_ok_and(|o| !o.contains("\"id\"")) {
            return None;
        }
        panic!("{send_bin} accepted a message over its API's request limit: {refused:?}");
    }
    Some(timed_message(
        send_bin, ns, recv_bin, rns, to, "big", path, out,
    ))
}

fn figure(v: Option<f64>) -> String {
    match v {
        Some(s) => format!("{s:.2} s"),
        None => "refused by the sender's API".to_owned(),
    }
}

/// 10 MB each way between hypha and mycelium, beside a mycelium pair and a hypha pair in the same
/// run; and 1.5 MB (the most mycelium's API takes in one request) every way, which mycelium can
/// send too. Times are printed, never asserted.
#[test]
#[cfg_attr(
    any(not(hypha_mycelium), not(hypha_root)),
    ignore = "set MYCELIUM_BIN to a mycelium binary, and run as root (namespaces)"
)]
fn ten_megabytes_each_way_timed_beside_a_mycelium_pair() {
    let myc = mycelium_bin();
    let dir = tempfile::tempdir().unwrap();
    let ten = dir.path().join("10m.bin");
    std::fs::write(&ten, payload(10 << 20, 7)).unwrap();
    let small = dir.path().join("1500k.bin");
    std::fs::write(&small, payload(1_500_000, 8)).unwrap();
    let out = dir.path().join("out.bin");

    let (na, nb) = (Netns::new("mm").unwrap(), Netns::new("mn").unwrap());
    let [ip_a, _] = link(&na, &nb, 117).unwrap().addrs;
    let h = hypha(&na, dir.path(), "h", None, &[]);
    let m = Myc::start(&nb, dir.path(), "m", Some(&format!("tcp://{ip_a}:9651")));
    wait_route(&h, m.addr);
    m.wait_route(h.addr);
    let (a, b) = (na.name(), nb.name());
    let h2m = try_timed(BIN, a, &myc, b, m.addr, &ten, &out);
    let m2h = try_timed(&myc, b, BIN, a, h.addr, &ten, &out);
    let h2m_s = try_timed(BIN, a, &myc, b, m.addr, &small, &out);
    let m2h_s = try_timed(&myc, b, BIN, a, h.addr, &small, &out);
    assert!(h2m.is_some() && h2m_s.is_some() && m2h_s.is_some());

    let (nc, nd) = (Netns::new("mo").unwrap(), Netns::new("mp").unwrap());
    let [ip_c, _] = link(&nc, &nd, 118).unwrap().addrs;
    let m1 = Myc::start(&nc, dir.path(), "m1", None);
    let m2 = Myc::start(&nd, dir.path(), "m2", Some(&format!("tcp://{ip_c}:9651")));
    m1.wait_route(m2.addr);
    m2.wait_route(m1.addr);
    let (c, d) = (nc.name(), nd.name());
    let m2m = try_timed(&myc, d, &myc, c, m1.addr, &ten, &out);
    let m2m_s = try_timed(&myc, d, &myc, c, m1.addr, &small, &out);

    // A length whose last 1,300-byte chunk would be short (3 × 1300 + 100): hypha's sender
    // rebalances its last two chunks, so mycelium takes it; between two mycelium nodes it is
    // only reported.
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, payload(3 * 1300 + 100, 9)).unwrap();
    let short_tail = |send: &str, sns: &str, recv: &str, rns: &str, to: Ipv6Addr| {
        let o = out.to_str().unwrap().to_owned();
        let (recv_s, rns_s) = (recv.to_owned(), rns.to_owned());
        let _ = std::fs::remove_file(&out);
        let r = std::thread::spawn(move || {
            exec_in(
                &rns_s,
                &recv_s,
                &[
                    "--api-addr",
                    API,
                    "message",
                    "receive",
                    "--timeout",
                    "5",
                    "-t",
                    "odd",
                    "--msg-path",
                    &o,
                ],
            )
        });
        exec_in(
            sns,
            send,
            &[
                "--api-addr",
                API,
                "message",
                "send",
                "-t",
                "odd",
                "--msg-path",
                odd.to_str().unwrap(),
                &to.to_string(),
            ],
        )
        .expect("send");
        let _ = r.join();
        std::fs::read(&out).ok() == Some(std::fs::read(&odd).unwrap())
    };
    assert!(
        short_tail(BIN, a, &myc, b, m.addr),
        "hypha -> mycelium, 4,000 bytes"
    );
    assert!(
        short_tail(&myc, b, BIN, a, h.addr),
        "mycelium -> hypha, 4,000 bytes"
    );
    let m2m_odd = short_tail(&myc, d, &myc, c, m1.addr);
    eprintln!("messages figure: 4,000 bytes (short last chunk) mycelium -> mycelium delivered within 5 s: {m2m_odd}");

    let (ne, nf) = (Netns::new("mq").unwrap(), Netns::new("mr").unwrap());
    let [ip_e, _] = link(&ne, &nf, 119).unwrap().addrs;
    let h1 = hypha(&ne, dir.path(), "h1", None, &[]);
    let h2 = hypha(
        &nf,
        dir.path(),
        "h2",
        Some(&format!("tcp://{ip_e}:9651")),
        &[],
    );
    wait_route(&h2, h1.addr);
    let (e, f) = (ne.name(), nf.name());
    let h2h = try_timed(BIN, f, BIN, e, h1.addr, &ten, &out);
    let h2h_s = try_timed(BIN, f, BIN, e, h1.addr, &small, &out);

    eprintln!("messages figure: 10 MB: hypha -> mycelium {}, mycelium -> hypha {}, mycelium -> mycelium {}, hypha -> hypha {} (same run)",
        figure(h2m), figure(m2h), figure(m2m), figure(h2h));
    eprintln!("messages figure: 1.5 MB: hypha -> mycelium {}, mycelium -> hypha {}, mycelium -> mycelium {}, hypha -> hypha {} (same run)",
        figure(h2m_s), figure(m2h_s), figure(m2m_s), figure(h2h_s));
    let (_, s) = rest(&na, "GET", "/api/v1/admin/stats", None);
    eprintln!(
        "messages figure: hypha next to mycelium: {} message packets out, {} retransmitted",
        s["messages"]["packetsOut"], s["messages"]["retransmits"]
    );
}

/// 10 MB between two hypha nodes through the REST API, timed in its parts (printed): the POST
/// (JSON and base64 of 14 MB), the transfer until the sender's status says received, and the
/// receiver's GET.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root (namespaces)")]
fn ten_megabytes_between_hypha_nodes_through_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (Netns::new("mu").unwrap(), Netns::new("mv").unwrap());
    let [ip_a, _] = link(&na, &nb, 121).expect("veth").addrs;
    let a = hypha(&na, dir.path(), "a", None, &[]);
    let b = hypha(
        &nb,
        dir.path(),
        "b",
        Some(&format!("tcp://{ip_a}:9651")),
        &[],
    );
    wait_route(&a, b.addr);
    let big = payload(10 << 20, 3);
    let body = json!({"dst": {"ip": b.addr.to_string()}, "payload": b64(&big)}).to_string();
    let start = Instant::now();
    let (st, ans) = rest(&na, "POST", "/api/v1/messages", Some(&body));
    let posted = start.elapsed();
    assert_eq!(st, 201, "{ans}");
    let status = format!("/api/v1/messages/status/{}", ans["id"].as_str().unwrap());
    let done = wait_until(Duration::from_secs(30), || {
        rest(&na, "GET", &status, None).1["state"] == json!("received")
    });
    assert!(done.is_ok(), "{}", a.log_tail());
    let received = start.elapsed();
    let (st, got) = rest(&nb, "GET", "/api/v1/messages", None);
    let read = start.elapsed();
    assert_eq!(st, 200);
    assert_eq!(unb64(got["payload"].as_str().unwrap()), big);
    eprintln!(
        "messages figure: 10 MB hypha -> hypha through REST: POST {posted:.0?}, transfer {:.0?}, \
         GET {:.0?}",
        received - posted,
        read - received
    );
}
