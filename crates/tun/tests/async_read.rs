//! Root test of the tokio wrapper (built with `--features tokio`): a datagram sent inside the
//! namespace towards the TUN's subnet is read back through `AsyncTun`, intact.
#![cfg(feature = "tokio")]

mod common;

use std::net::{Ipv6Addr, UdpSocket};

use hypha_tun::{AsyncTun, Config, Reader};
use offload::Segments;
use testbed::Netns;

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn async_read_returns_the_packet_sent_into_the_tun() {
    let ns = Netns::new("tunasync").unwrap();
    let local: Ipv6Addr = "fd00:8::1".parse().unwrap();
    let peer: Ipv6Addr = "fd00:8::2".parse().unwrap();
    let tun = common::topology::open_in(ns.name(), &Config::new("hyt5"), local, None).unwrap();
    let sock = ns.run(|| UdpSocket::bind((local, 0))).unwrap().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tun = AsyncTun::new(tun).unwrap();
        let mut rd = Reader::new();
        let mut batch = Segments::new();
        let payload = b"hypha async read";
        sock.send_to(payload, (peer, 9)).unwrap();
        // Other packets (router solicitations, MLD) may come first: read until ours shows up.
        let wait = async {
            loop {
                batch.clear();
                tun.read(&mut rd, &mut batch).await.unwrap();
                let hit = batch.iter().any(|p| {
                    p.len() == 40 + 8 + payload.len() && p[6] == 17 && p[48..] == payload[..]
                });
                if hit {
                    break;
                }
            }
        };
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
        assert!(r.is_ok(), "the datagram never came out of the TUN");
    });
}
