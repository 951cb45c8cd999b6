//! Offload throughput: split and coalesce of 64 KiB TCP super-packets cut into ≤ 1400-byte
//! packets, and the checksum against the RFC 1071 reference.
//!
//! Run: `cargo bench -p hypha-offload --bench offload -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hypha_offload::{split, Coalescer, Config, Segments};
use wire::checksum;
use wire::ip::{Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, TcpRepr};
use wire::virtio::{flags, gso, VirtioNetHdr};

const PACKET_MAX: usize = 1400;
const TS_OPTS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

/// A TCP packet with timestamps (as Linux sends them), `payload` bytes, valid checksums.
fn tcp_packet(v6: bool, seq: u32, id: u16, payload: usize) -> Vec<u8> {
    let l3 = if v6 { 40 } else { 20 };
    let l4_len = 20 + TS_OPTS.len() + payload;
    let mut b = vec![0u8; l3 + l4_len];
    for (i, x) in b[l3 + 32..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(7);
    }
    let pseudo = if v6 {
        let r = Ipv6Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: 6,
            payload_len: l4_len,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        r.emit(&mut p);
        p.pseudo_sum(6, l4_len as u32)
    } else {
        let r = Ipv4Repr {
            src_addr: [198, 18, 0, 1].into(),
            dst_addr: [198, 18, 0, 2].into(),
            protocol: 6,
            payload_len: l4_len,
            ttl: 64,
            tos: 0,
            ident: id,
            dont_frag: true,
        };
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        r.emit(&mut p);
        p.pseudo_sum(l4_len as u16)
    };
    let t = TcpRepr {
        src_port: 40000,
        dst_port: 5201,
        seq_number: seq,
        ack_number: 1,
        flags: 0x10,
        window_len: 512,
        urgent_at: 0,
        options: &TS_OPTS,
    };
    let mut tp = TcpPacket::new_unchecked(&mut b[l3..]);
    t.emit(&mut tp);
    tp.fill_checksum(pseudo);
    b
}

fn hdr_len(v6: bool) -> usize {
    (if v6 { 40 } else { 20 }) + 20 + TS_OPTS.len()
}

fn mss(v6: bool) -> usize {
    PACKET_MAX - hdr_len(v6)
}

/// The largest super-packet (65535 bytes) as the kernel hands it over.
fn superpacket(v6: bool) -> (VirtioNetHdr, Vec<u8>) {
    let h = hdr_len(v6);
    let b = tcp_packet(v6, 1000, 7, 65535 - h);
    let l3 = if v6 { 40 } else { 20 };
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: if v6 { gso::TCPV6 } else { gso::TCPV4 },
        hdr_len: h as u16,
        gso_size: mss(v6) as u16,
        csum_start: l3 as u16,
        csum_offset: 16,
    };
    (hdr, b)
}

/// The ≤ 1400-byte packets of one 64 KiB super-packet, as a peer would deliver them.
fn train(v6: bool) -> Vec<Vec<u8>> {
    let m = mss(v6);
    let total = 65535 - hdr_len(v6);
    let mut out = Vec::new();
    let mut off = 0;
    while off < total {
        let n = m.min(total - off);
        out.push(tcp_packet(v6, 1000 + off as u32, 7 + out.len() as u16, n));
        off += n;
    }
    out
}

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("split_64k_tcp");
    for v6 in [false, true] {
        let (hdr, sp) = superpacket(v6);
        let mut segs = Segments::with_headroom(64);
        g.throughput(Throughput::Bytes(sp.len() as u64));
        let name = if v6 { "v6" } else { "v4" };
        g.bench_function(BenchmarkId::new(name, mss(v6)), |b| {
            b.iter(|| {
                segs.clear();
                split(&hdr, &sp, &mut segs).unwrap()
            })
        });
    }
    g.finish();
}

fn bench_coalesce(c: &mut Criterion) {
    let mut g = c.benchmark_group("coalesce_64k_tcp");
    for v6 in [false, true] {
        let name = if v6 { "v6" } else { "v4" };
        let mut pkts = train(v6);
        let bytes: usize = pkts.iter().map(Vec::len).sum();
        let head = pkts[0][..hdr_len(v6)].to_vec();
        let mut co = Coalescer::new(Config::default());
        g.throughput(Throughput::Bytes(bytes as u64));
        // Plan only: what the TUN writer pays before its writev (payloads are not touched).
        g.bench_function(BenchmarkId::new(format!("{name}_plan"), pkts.len()), |b| {
            b.iter(|| {
                // The previous iteration rewrote the head packet's headers in place.
                pkts[0][..head.len()].copy_from_slice(&head);
                let plan = co.coalesce(&mut pkts);
                assert_eq!(plan.len(), 1);
                plan.len()
            })
        });
        // Plan and copy into one contiguous buffer (the EINVAL-fallback / non-writev path).
        let mut out = Vec::with_capacity(70_000);
        g.bench_function(
            BenchmarkId::new(format!("{name}_plan_and_copy"), pkts.len()),
            |b| {
                b.iter(|| {
                    pkts[0][..head.len()].copy_from_slice(&head);
                    out.clear();
                    let plan = co.coalesce(&mut pkts);
                    plan.get(0).unwrap().materialize(&pkts, 10, &mut out);
                    out.len()
                })
            },
        );
    }
    g.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for len in [1400usize, 65535] {
        let data: Vec<u8> = (0..len as u32 + 1).map(|i| (i * 31) as u8).collect();
        // Odd start: unaligned, as payloads after a 20/40-byte header often are.
        let d = &data[1..];
        g.throughput(Throughput::Bytes(d.len() as u64));
        g.bench_function(BenchmarkId::new("fast", len), |b| {
            b.iter(|| checksum::sum(std::hint::black_box(d)))
        });
        g.bench_function(BenchmarkId::new("rfc1071_reference", len), |b| {
            b.iter(|| checksum::reference::sum(std::hint::black_box(d)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_split, bench_coalesce, bench_checksum);
criterion_main!(benches);
