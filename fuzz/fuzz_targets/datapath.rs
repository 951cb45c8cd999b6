//! The data-path core on arbitrary input: a link's byte stream (raw bytes, and frames sealed with
//! the sender's real key so that opening, admission and out-of-band ICMP are reached) and
//! arbitrary TUN packets. It must never panic, and whatever it hands the TUN from a peer's frames
//! must be an IPv6 packet from the sender's subnet to our /64 — or an ICMPv6 error it built.
#![no_main]

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use crypto::{PeerCipher, PublicKey, SecretKey};
use datapath::{DataCounters, DataFrame, DataTable, Needs, Receiver, Sender};
use libfuzzer_sys::fuzz_target;
use offload::SegmentSink;
use routing::{ForwardingTable, LinkId, NextHop};
use wire::babel::{RouterId, Subnet};
use wire::frame::{encode_data, Frame, FrameReader};
use wire::ip::ipv6::Ipv6Packet;

#[derive(Arbitrary, Debug)]
enum Item {
    /// Bytes as they come off the socket.
    Raw(Vec<u8>),
    /// A data frame whose body B sealed for A: inner header `[1, kind, 0, 0]`, then `payload`.
    Sealed {
        src: u8,
        dst: u8,
        hop: u8,
        kind: u8,
        payload: Vec<u8>,
        /// Overwrite the payload's start with an IPv6 header with these selectors.
        ip: Option<(u8, u8)>,
    },
    /// A packet read from the TUN.
    Tun(Vec<u8>),
    /// Time passes.
    Wait(u16),
}

struct Node {
    public: PublicKey,
    secret: SecretKey,
}

impl Node {
    fn new(b: u8) -> Node {
        let secret = SecretKey::from_bytes([b; 32]);
        Node {
            public: secret.public_key(),
            secret,
        }
    }
    fn subnet(&self) -> Subnet {
        self.public.subnet()
    }
    fn cipher_for(&self, other: &Node) -> PeerCipher {
        PeerCipher::new(&self.secret.shared_secret(&other.public).unwrap())
    }
}

/// An address chosen by `sel` among the interesting ones.
fn pick(sel: u8, a: &Node, b: &Node, c: &Node) -> Ipv6Addr {
    let host = |n: &Node, h: u16| Ipv6Addr::from(u128::from(n.public.address()) ^ u128::from(h));
    match sel % 8 {
        0 => a.public.address(),
        1 => b.public.address(),
        2 => c.public.address(),
        3 => host(a, u16::from(sel)),
        4 => host(b, u16::from(sel)),
        5 => "fd00::1".parse().unwrap(),
        6 => "4ff:1:2:3::9".parse().unwrap(),
        _ => b.subnet().addr(),
    }
}

fuzz_target!(|items: Vec<Item>| {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let hop = |n: &Node, link| NextHop {
        link: LinkId(link),
        router_id: RouterId::new(n.public.0, [0; 6]),
    };
    let fib = ForwardingTable::from_routes(
        a.subnet(),
        &[(b.subnet(), hop(&b, 1)), (c.subnet(), hop(&c, 2))],
    );
    let mut table: DataTable<()> = DataTable::empty(Arc::new(fib));
    for (n, link) in [(&b, 1), (&c, 2)] {
        table.links.insert(LinkId(link), ());
        table.ciphers.insert(n.public.0, a.cipher_for(n));
    }
    let counters = Arc::new(DataCounters::default());
    let mut needs = Needs::with_room(64, 16);
    let mut rx = Receiver::new(a.subnet(), LinkId(1), counters.clone());
    let mut tx = Sender::new(a.subnet(), a.public.address(), counters.clone(), 256 * 1024);
    let b_to_a = b.cipher_for(&a);
    let mut reader = FrameReader::growable(1024);
    let mut now = Instant::now();
    for item in items {
        match item {
            Item::Raw(bytes) => {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = reader.push(rest);
                    if n == 0 {
                        break;
                    }
                    rest = &rest[n..];
                    if drain(&mut reader, &mut rx, &table, &mut needs, now, &a, &b).is_err() {
                        return;
                    }
                }
            }
            Item::Sealed {
                src,
                dst,
                hop,
                kind,
                mut payload,
                ip,
            } => {
                if let Some((s, d)) = ip {
                    if payload.len() < 40 {
                        payload.resize(40, 0);
                    }
                    let mut p = Ipv6Packet::new_unchecked(&mut payload[..]);
                    p.set_version(6);
                    p.set_src_addr(pick(s, &a, &b, &c));
                    p.set_dst_addr(pick(d, &a, &b, &c));
                }
                let mut body = vec![1, kind % 4, 0, 0];
                body.extend_from_slice(&payload);
                b_to_a.seal_append(&mut body, 0).unwrap();
                let mut frame = Vec::new();
                let (s, d) = (pick(src, &a, &b, &c), pick(dst, &a, &b, &c));
                if encode_data(&mut frame, hop, s, d, &body).is_err() {
                    continue;
                }
                let n = reader.push(&frame);
                if n < frame.len() {
                    return;
                }
                if drain(&mut reader, &mut rx, &table, &mut needs, now, &a, &b).is_err() {
                    return;
                }
            }
            Item::Tun(packet) => {
                if let Some(seg) = tx.sink().segment(packet.len()) {
                    seg.copy_from_slice(&packet);
                }
                let main = tx.handle_segments(&table, &mut needs, now);
                let mut frames = main.map_or(0, |(_, b)| b.frames);
                frames += tx.transmits().map(|(_, b)| b.frames).sum::<u32>();
                assert!(frames <= 1, "one packet made {frames} frames");
                let _ = tx.poll_tun();
            }
            Item::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
        }
        needs.drain().for_each(drop);
    }
});

/// Hands every complete frame in the reader to the receiver, then checks what it would write
/// to the TUN. `Err` when the stream is broken for good (the link would close).
fn drain(
    reader: &mut FrameReader,
    rx: &mut Receiver,
    table: &DataTable<()>,
    needs: &mut Needs,
    now: Instant,
    a: &Node,
    b: &Node,
) -> Result<(), ()> {
    loop {
        match reader.next_frame_at() {
            Ok(Some(Frame::Data {
                hop_limit,
                src,
                dst,
                body,
            })) => {
                let frame = DataFrame {
                    hop_limit,
                    src,
                    dst,
                    body,
                };
                rx.handle_data(table, needs, now, reader.buffer_mut(), frame);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return Err(()),
        }
    }
    let mut packets = Vec::new();
    rx.tun_packets(reader.buffer_mut(), &mut packets);
    for p in &packets {
        let ip = Ipv6Packet::new_header_checked(&p[..]).expect("only IPv6 reaches the TUN");
        let built_icmp = ip.next_header() == wire::icmp::NEXT_HEADER_ICMPV6
            && ip.src_addr() == b.subnet().addr();
        assert!(
            built_icmp || b.subnet().contains_addr(ip.src_addr()),
            "a packet from {} outside the sender's subnet reached the TUN",
            ip.src_addr()
        );
        assert!(
            a.subnet().contains_addr(ip.dst_addr()),
            "a packet to {} reached the TUN",
            ip.dst_addr()
        );
    }
    drop(packets);
    rx.tun_done();
    rx.transmits().for_each(drop);
    Ok(())
}
