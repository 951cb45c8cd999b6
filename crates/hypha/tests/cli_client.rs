//! The `hypha peers|routes` subcommands as a user runs them: the real binary, its exit status and
//! its output, against the admin API served on loopback for a scripted node.

use std::net::SocketAddr;
use std::process::{Command, Output};

use node::control::{
    ConnectionState, Control, NodeInfo, PeerInfo, PeerKind, PeerOpError, Request, RouteKind,
};
use tokio::sync::mpsc;

/// Runs the binary with a private config directory (so no user config file is read).
fn hypha(addr: SocketAddr, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_hypha"))
        .env("XDG_CONFIG_HOME", dir.path())
        .env("HOME", dir.path())
        .arg("--api-addr")
        .arg(addr.to_string())
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// Serves the API for a node with one alive peer, no routes; the runtime must outlive the test.
fn serve() -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<Request>(8);
        tokio::spawn(async move {
            let mut peers = vec![PeerInfo {
                endpoint: "tcp://198.18.0.6:9651".parse().unwrap(),
                kind: PeerKind::Static,
                connection_state: ConnectionState::Alive,
                tx_bytes: 3 * 1024 * 1024,
                rx_bytes: 10,
                discovered: 100,
                last_connected: Some(3700),
                routes: 3,
                routes_refused: 0,
                failures: 0,
                next_dial_ms: None,
                quic: None,
            }];
            while let Some(r) = rx.recv().await {
                match r {
                    Request::Peers(tx) => {
                        let _ = tx.send(peers.clone());
                    }
                    Request::AddPeer(e, tx) => {
                        let r = if peers.iter().any(|p| p.endpoint == e) {
                            Err(PeerOpError::AlreadyExists)
                        } else {
                            let mut p = peers[0].clone();
                            p.endpoint = e;
                            peers.push(p);
                            Ok(())
                        };
                        let _ = tx.send(r);
                    }
                    Request::RemovePeer(_, tx) => {
                        let _ = tx.send(Err(PeerOpError::NotFound));
                    }
                    Request::Routes(RouteKind::Selected | RouteKind::Fallback, tx) => {
                        let _ = tx.send(Vec::new());
                    }
                    Request::Queried(tx) => {
                        let _ = tx.send(Vec::new());
                    }
                    other => panic!("unexpected request {other:?}"),
                }
            }
        });
        let info = NodeInfo {
            node_subnet: "430:9364:d8d8:84a9::/64".parse().unwrap(),
            node_ip: "430:9364:d8d8:84a9::1".parse().unwrap(),
            node_pubkey: [7; 32],
            node_start_time: 1,
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(node::api::serve(
            l,
            Control::new(info, tx),
            std::future::pending(),
        ));
        addr
    });
    (rt, addr)
}

#[test]
fn list_add_and_errors_through_the_binary() {
    let (_rt, a) = serve();

    let o = hypha(a, &["peers", "list"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "ENDPOINT               TYPE    STATE       TX    RX  CONNECTED  ROUTES  REFUSED  RETRY\n\
         tcp://198.18.0.6:9651  static  alive  3.0 MiB  10 B     1h 01m       3        0  -\n"
    );

    let o = hypha(a, &["peers", "add", "tcp://[fd00::9]:9651"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "added tcp://[fd00::9]:9651\n");

    let o = hypha(a, &["peers", "add", "tcp://[fd00::9]:9651"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "hypha: cannot add peer tcp://[fd00::9]:9651: a peer with this endpoint already exists (HTTP 409)\n"
    );

    let o = hypha(a, &["peers", "remove", "tcp://198.18.0.99:9651"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "hypha: cannot remove peer tcp://198.18.0.99:9651: no peer with this endpoint (HTTP 404)\n"
    );

    let o = hypha(a, &["routes", "selected"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "no selected routes\n");
    let o = hypha(a, &["routes", "queried", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "[]\n");
}

#[test]
fn unreachable_api_is_one_line_and_nonzero() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = hypha(addr, &["routes", "fallback"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        text(&o.stderr),
        format!(
            "hypha: cannot reach the node's API at {addr}: connection refused (is the node running? --api-addr)\n"
        )
    );
}
