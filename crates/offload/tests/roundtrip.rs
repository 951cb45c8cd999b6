//! Property tests: `split(coalesce(pkts)) == pkts` under the order rule, every emitted header and
//! checksum valid (checked with the RFC 1071 reference), and split of random super-packets.

mod common;

use common::*;
use hypha_offload::{split, Coalescer, Config, Segments};
use proptest::prelude::*;
use wire::virtio::{self, flags, gso, VirtioNetHdr};

/// How one flow of a generated batch looks.
#[derive(Debug, Clone)]
struct FlowSpec {
    v6: bool,
    tcp: bool,
    ext: Vec<u8>,
    ip_options: bool,
    tcp_ts: bool,
    mss: usize,
    /// Per packet: payload size selector and flag selector.
    pkts: Vec<(u8, u8)>,
    seq0: u32,
    id0: u16,
    tos: u8,
}

fn flow_spec() -> impl Strategy<Value = FlowSpec> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            6 => Just(vec![]),
            1 => Just(vec![60u8]),
            1 => Just(vec![0u8, 43]),
        ],
        prop::bool::weighted(0.1),
        any::<bool>(),
        prop_oneof![Just(1348usize), Just(536), 1usize..1500],
        prop::collection::vec((any::<u8>(), any::<u8>()), 1..48),
        any::<u32>(),
        any::<u16>(),
        prop_oneof![4 => Just(0u8), 1 => Just(3u8)],
    )
        .prop_map(
            |(v6, tcp, ext, ip_options, tcp_ts, mss, pkts, seq0, id0, tos)| FlowSpec {
                v6,
                tcp,
                ext: if v6 { ext } else { vec![] },
                ip_options: ip_options && !v6,
                tcp_ts,
                mss,
                pkts,
                seq0,
                id0,
                tos,
            },
        )
}

/// Builds the packets of one flow, in sequence order. Most packets are full `mss`-sized segments
/// so trains form; some are short, some carry PSH/FIN or are pure ACKs (barriers).
fn build_flow(f: &FlowSpec, index: usize) -> Vec<Vec<u8>> {
    let mut t = match (f.v6, f.tcp) {
        (false, true) => Pkt::tcp4(),
        (true, true) => Pkt::tcp6(),
        (false, false) => Pkt::udp4(),
        (true, false) => Pkt::udp6(),
    };
    t.sport = 1000 + index as u16;
    t.ext = f.ext.clone();
    t.tos = f.tos;
    if f.ip_options {
        t.ip_options = vec![1, 1, 1, 0];
    }
    if f.tcp && f.tcp_ts {
        t.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7];
    }
    let mut seq = f.seq0;
    let mut out = Vec::new();
    for (i, &(size_sel, flag_sel)) in f.pkts.iter().enumerate() {
        let size = match size_sel % 16 {
            0 => usize::from(size_sel) % f.mss + 1,
            1 if f.tcp => 0,
            _ => f.mss,
        };
        let mut p = t.clone().with_payload(size, (index * 64 + i) as u8);
        p.seq = seq;
        p.id = f.id0.wrapping_add(i as u16);
        if f.tcp {
            p.flags = match flag_sel % 20 {
                0 => ACK | PSH,
                1 => ACK | FIN,
                2 => ACK | SYN,
                _ => ACK,
            };
            if size == 0 {
                // A pure ACK carrying news the receiver must not lose.
                p.ack = p.ack.wrapping_add(u32::from(flag_sel));
                t.ack = p.ack;
            }
        }
        seq = seq.wrapping_add(size as u32);
        out.push(p.build());
    }
    out
}

/// A batch: flows interleaved by `picks`, with optional swaps of neighbours inside a flow.
fn batch() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<usize>)> {
    (
        prop::collection::vec(flow_spec(), 1..4),
        prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    )
        .prop_map(|(flows, picks, swaps)| {
            let mut queues: Vec<Vec<Vec<u8>>> = flows
                .iter()
                .enumerate()
                .map(|(i, f)| build_flow(f, i))
                .collect();
            for s in &swaps {
                let q = &mut queues[s.index(flows.len())];
                if q.len() >= 2 {
                    let k = s.index(q.len() - 1);
                    q.swap(k, k + 1);
                }
            }
            let mut pkts = Vec::new();
            let mut flow_of = Vec::new();
            let mut heads = vec![0usize; queues.len()];
            let mut emit = |f: usize, pkts: &mut Vec<Vec<u8>>, flow_of: &mut Vec<usize>| {
                if heads[f] < queues[f].len() {
                    pkts.push(queues[f][heads[f]].clone());
                    flow_of.push(f);
                    heads[f] += 1;
                }
            };
            for p in &picks {
                emit(p.index(queues.len()), &mut pkts, &mut flow_of);
            }
            let lens: Vec<usize> = queues.iter().map(Vec::len).collect();
            for (f, &n) in lens.iter().enumerate() {
                for _ in 0..n {
                    emit(f, &mut pkts, &mut flow_of);
                }
            }
            (pkts, flow_of)
        })
}

fn all_on() -> Config {
    Config {
        tcp: true,
        udp: true,
        udp_max_segments: 64,
    }
}

/// Checks the head of a materialised train: lengths, IPv4 header checksum, and the L4 checksum
/// field holding the non-complemented pseudo-header seed over the whole L4 length.
fn check_train_head(vnet: &VirtioNetHdr, b: &[u8]) -> Result<(), String> {
    let v6 = b[0] >> 4 == 6;
    let l4 = usize::from(vnet.csum_start);
    let proto = if v6 { b[6] } else { b[9] };
    if v6 {
        if usize::from(u16::from_be_bytes([b[4], b[5]])) + 40 != b.len() || l4 != 40 {
            return Err("v6 length / csum_start".into());
        }
    } else {
        if usize::from(u16::from_be_bytes([b[2], b[3]])) != b.len() || l4 != 20 {
            return Err("v4 length / csum_start".into());
        }
        if wire::checksum::reference::sum(&b[..20]) != 0xffff {
            return Err("v4 header checksum".into());
        }
    }
    let (src, dst) = if v6 {
        (&b[8..24], &b[24..40])
    } else {
        (&b[12..16], &b[16..20])
    };
    let (gso_type, off) = match (proto, v6) {
        (TCP, false) => (gso::TCPV4, 16),
        (TCP, true) => (gso::TCPV6, 16),
        (UDP, _) => (gso::UDP_L4, 6),
        _ => return Err("protocol".into()),
    };
    if vnet.gso_type != gso_type || usize::from(vnet.csum_offset) != off {
        return Err("gso_type / csum_offset".into());
    }
    if vnet.flags != flags::NEEDS_CSUM || vnet.gso_size == 0 {
        return Err("flags / gso_size".into());
    }
    if proto == UDP && usize::from(u16::from_be_bytes([b[l4 + 4], b[l4 + 5]])) != b.len() - l4 {
        return Err("UDP length".into());
    }
    let seed = pseudo_seed(v6, src, dst, proto, b.len() - l4);
    if u16::from_be_bytes([b[l4 + off], b[l4 + off + 1]]) != seed {
        return Err("checksum field is not the pseudo-header seed".into());
    }
    let hdr_len = usize::from(vnet.hdr_len);
    if hdr_len <= l4 || hdr_len > b.len() {
        return Err("hdr_len".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn split_of_coalesce_gives_back_the_batch((pkts, flow_of) in batch()) {
        let mut c = Coalescer::new(all_on());
        let mut work = pkts.clone();
        let plan = c.coalesce(&mut work);
        let mut seen = vec![false; pkts.len()];
        let mut last_pos = None;
        let mut seg = Segments::new();
        for w in plan.iter() {
            let idx: Vec<usize> = w.slices.iter().map(|s| s.packet).collect();
            // Order rule: writes in order of their first packet; each packet exactly once.
            let pos = *idx.iter().min().unwrap();
            prop_assert!(last_pos.is_none_or(|l| l < pos), "writes out of order");
            last_pos = Some(pos);
            for &i in &idx {
                prop_assert!(!seen[i], "packet {} twice", i);
                seen[i] = true;
                prop_assert_eq!(flow_of[i], flow_of[idx[0]], "train mixes flows");
            }
            let mut bytes = Vec::new();
            w.materialize(&work, virtio::LEN, &mut bytes);
            let bytes = &bytes[virtio::LEN..];
            if idx.len() == 1 {
                prop_assert_eq!(w.vnet, VirtioNetHdr::NONE);
                prop_assert_eq!(bytes, &pkts[idx[0]][..]);
                continue;
            }
            check_train_head(&w.vnet, bytes).map_err(TestCaseError::fail)?;
            prop_assert!(bytes.len() <= 65535);
            if w.vnet.gso_type == gso::UDP_L4 {
                prop_assert!(idx.len() <= 64);
            }
            seg.clear();
            split(&w.vnet, bytes, &mut seg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(seg.len(), idx.len());
            for (s, &i) in seg.iter().zip(&idx) {
                check(s).map_err(TestCaseError::fail)?;
                prop_assert_eq!(s, &pkts[i][..], "segment differs from packet {}", i);
                // Trains only ever hold plain headers (no IPv4 options / IPv6 extensions).
                let p = check(s).unwrap();
                prop_assert_eq!(p.l4_off, if p.v6 { 40 } else { 20 });
            }
        }
        prop_assert!(seen.iter().all(|&s| s), "a packet was lost");
    }

    #[test]
    fn in_order_uniform_flow_uses_fewest_writes(
        v6 in any::<bool>(), tcp in any::<bool>(), mss in 1usize..1500, n in 1usize..120,
    ) {
        let t = match (v6, tcp) {
            (false, true) => Pkt::tcp4(),
            (true, true) => Pkt::tcp6(),
            (false, false) => Pkt::udp4(),
            (true, false) => Pkt::udp6(),
        };
        let hdr = if v6 { 40 } else { 20 } + if tcp { 20 } else { 8 };
        let mut seq = t.seq;
        let pkts: Vec<Vec<u8>> = (0..n).map(|i| {
            let mut p = t.clone().with_payload(mss, i as u8);
            p.seq = seq;
            p.id = t.id.wrapping_add(i as u16);
            seq = seq.wrapping_add(mss as u32);
            p.build()
        }).collect();
        let mut per_write = (65535 - hdr) / mss;
        if !tcp {
            per_write = per_write.min(64);
        }
        let mut c = Coalescer::new(all_on());
        let mut work = pkts.clone();
        let plan = c.coalesce(&mut work);
        prop_assert_eq!(plan.len(), n.div_ceil(per_write));
    }

    #[test]
    fn split_of_random_super_packets(
        v6 in any::<bool>(), tcp in any::<bool>(), ext in prop::collection::vec(prop::sample::select(vec![0u8, 43, 60]), 0..3),
        ip_opt in any::<bool>(), tcp_ts in any::<bool>(), len in 0usize..65000, gso_size in 1u16..2000,
        tcp_flags in prop::sample::select(vec![ACK, ACK | PSH, ACK | FIN | PSH, ACK | CWR, ACK | ECE | CWR | PSH]),
        seq in any::<u32>(), id in any::<u16>(), seed in any::<u8>(),
    ) {
        let mut t = match (v6, tcp) {
            (false, true) => Pkt::tcp4(),
            (true, true) => Pkt::tcp6(),
            (false, false) => Pkt::udp4(),
            (true, false) => Pkt::udp6(),
        };
        if v6 { t.ext = ext; } else if ip_opt { t.ip_options = vec![1, 1, 1, 0]; }
        if tcp {
            t.flags = tcp_flags;
            if tcp_ts { t.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]; }
        }
        t.seq = seq;
        t.id = id;
        let hdr_room = 60 + 60 + 24;
        let t = t.with_payload(len.min(65535 - hdr_room), seed);
        let (hdr, sp) = superpacket(&t, gso_size);
        let mut s = Segments::new();
        let n = split(&hdr, &sp, &mut s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want_n = t.payload.len().div_ceil(usize::from(gso_size)).max(1);
        prop_assert_eq!(n, want_n);
        let mut payload = Vec::new();
        for (i, seg) in s.iter().enumerate() {
            let p = check(seg).map_err(TestCaseError::fail)?;
            if i + 1 < n {
                prop_assert_eq!(p.payload.len(), usize::from(gso_size));
            }
            if tcp {
                prop_assert_eq!(p.seq, seq.wrapping_add(payload.len() as u32));
                prop_assert_eq!(p.flags & (FIN | PSH) != 0, i + 1 == n && tcp_flags & (FIN | PSH) != 0);
                prop_assert_eq!(p.flags & CWR != 0, i == 0 && tcp_flags & CWR != 0);
            }
            if !v6 {
                prop_assert_eq!(p.id, id.wrapping_add(i as u16));
            }
            payload.extend_from_slice(&p.payload);
        }
        prop_assert_eq!(payload, t.payload.clone());
        // Byte-exact against the independent model of the kernel's GSO.
        let want = expected_segments(&t, usize::from(gso_size));
        let got: Vec<Vec<u8>> = s.iter().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn split_never_panics_on_arbitrary_input(
        flags in any::<u8>(), gso_type in any::<u8>(), gso_size in any::<u16>(),
        csum_start in any::<u16>(), csum_offset in any::<u16>(),
        packet in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let hdr = VirtioNetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
        let mut s = Segments::new();
        let _ = split(&hdr, &packet, &mut s);
    }
}
