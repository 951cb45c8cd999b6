//! Table tests for the write path (docs/protocol.md §9.4 merge rules, pitfalls 4–6, 8, 9 of §9.7).

mod common;

use common::*;
use hypha_offload::{split, Coalescer, Config, Segments};
use wire::virtio::{self, flags, gso, VirtioNetHdr};

/// One planned write, materialised.
#[derive(Debug)]
struct W {
    vnet: VirtioNetHdr,
    packets: Vec<usize>,
    bytes: Vec<u8>,
}

fn cfg_all() -> Config {
    Config {
        tcp: true,
        udp: true,
        udp_max_segments: 64,
    }
}

fn plan(c: &mut Coalescer, pkts: &mut [Vec<u8>]) -> Vec<W> {
    let plan = c.coalesce(pkts);
    plan.iter()
        .map(|w| {
            let mut bytes = Vec::new();
            w.materialize(pkts, virtio::LEN, &mut bytes);
            W {
                vnet: w.vnet,
                packets: w.slices.iter().map(|s| s.packet).collect(),
                bytes: bytes[virtio::LEN..].to_vec(),
            }
        })
        .collect()
}

fn coalesce(pkts: &[Vec<u8>], cfg: Config) -> Vec<W> {
    let mut c = Coalescer::new(cfg);
    let mut pkts = pkts.to_vec();
    plan(&mut c, &mut pkts)
}

fn resplit(w: &W) -> Vec<Vec<u8>> {
    let mut s = Segments::new();
    split(&w.vnet, &w.bytes, &mut s).expect("planned write splits");
    s.iter().map(<[u8]>::to_vec).collect()
}

/// `n` consecutive packets of one flow with the given payload sizes (seq contiguous, ID + 1).
fn flow(template: &Pkt, sizes: &[usize]) -> Vec<Pkt> {
    let mut seq = template.seq;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut p = template.clone().with_payload(n, i as u8);
            p.seq = seq;
            p.id = template.id.wrapping_add(i as u16);
            seq = seq.wrapping_add(n as u32);
            p
        })
        .collect()
}

fn build(ps: &[Pkt]) -> Vec<Vec<u8>> {
    ps.iter().map(Pkt::build).collect()
}

fn groups(ws: &[W]) -> Vec<Vec<usize>> {
    ws.iter().map(|w| w.packets.clone()).collect()
}

/// Asserts the plan merges exactly as `want` and that re-splitting each write gives back the
/// packets it was made of, byte for byte.
fn assert_plan(pkts: &[Vec<u8>], cfg: Config, want: &[&[usize]]) -> Vec<W> {
    let ws = coalesce(pkts, cfg);
    let want: Vec<Vec<usize>> = want.iter().map(|g| g.to_vec()).collect();
    assert_eq!(groups(&ws), want);
    for w in &ws {
        let back = resplit(w);
        let orig: Vec<Vec<u8>> = w.packets.iter().map(|&i| pkts[i].clone()).collect();
        assert_eq!(back, orig, "write of {:?} does not split back", w.packets);
        if w.packets.len() == 1 {
            assert_eq!(
                w.vnet,
                VirtioNetHdr::NONE,
                "single packets go out as GSO_NONE, flags 0"
            );
            assert_eq!(
                w.bytes, pkts[w.packets[0]],
                "single packets are not modified"
            );
        }
    }
    ws
}

#[test]
fn tcpv4_train_merged_with_vnet_header_fields() {
    let pkts = build(&flow(&Pkt::tcp4(), &[1000, 1000, 1000, 400]));
    let ws = assert_plan(&pkts, cfg_all(), &[&[0, 1, 2, 3]]);
    let v = ws[0].vnet;
    assert_eq!(v.flags, flags::NEEDS_CSUM);
    assert_eq!(v.gso_type, gso::TCPV4);
    assert_eq!(v.gso_size, 1000);
    assert_eq!(v.hdr_len, 40);
    assert_eq!(v.csum_start, 20);
    assert_eq!(v.csum_offset, 16);
    assert_eq!(ws[0].bytes.len(), 40 + 3400);
}

#[test]
fn tcpv6_train_merged_with_vnet_header_fields() {
    let mut t = Pkt::tcp6();
    t.tcp_options = vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0];
    let pkts = build(&flow(&t, &[1348, 1348, 1348]));
    let ws = assert_plan(&pkts, cfg_all(), &[&[0, 1, 2]]);
    let v = ws[0].vnet;
    assert_eq!((v.gso_type, v.gso_size, v.hdr_len), (gso::TCPV6, 1348, 72));
    assert_eq!((v.csum_start, v.csum_offset), (40, 16));
}

#[test]
fn merged_header_lengths_and_ipv4_header_checksum_are_fixed() {
    // B.6: an IPv4 header checksum left at 0 makes the kernel drop the merged packet.
    let pkts = build(&flow(&Pkt::tcp4(), &[500, 500, 200]));
    let ws = assert_plan(&pkts, cfg_all(), &[&[0, 1, 2]]);
    let b = &ws[0].bytes;
    assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len());
    assert_eq!(wire::checksum::reference::sum(&b[..20]), 0xffff);
}

#[test]
fn l4_checksum_field_is_non_complemented_pseudo_sum() {
    // Bug 6: the NEEDS_CSUM seed is the folded pseudo-header sum, not its complement.
    for (t, field) in [(Pkt::tcp6(), 40 + 16), (Pkt::udp4(), 20 + 6)] {
        let pkts = build(&flow(&t, &[300, 300]));
        let ws = assert_plan(&pkts, cfg_all(), &[&[0, 1]]);
        let b = &ws[0].bytes;
        let l4_off = if t.v6 { 40 } else { 20 };
        let want = pseudo_seed(t.v6, &t.src(), &t.dst(), t.proto, b.len() - l4_off);
        assert_eq!(u16::from_be_bytes([b[field], b[field + 1]]), want);
    }
}

#[test]
fn udp_train_fixes_udp_length() {
    let pkts = build(&flow(&Pkt::udp6(), &[700, 700, 10]));
    let ws = assert_plan(&pkts, cfg_all(), &[&[0, 1, 2]]);
    let b = &ws[0].bytes;
    assert_eq!(
        usize::from(u16::from_be_bytes([b[44], b[45]])),
        b.len() - 40
    );
    assert_eq!(u16::from_be_bytes([b[4], b[5]]), 8 + 1410);
    let v = ws[0].vnet;
    assert_eq!(
        (v.gso_type, v.csum_offset, v.gso_size),
        (gso::UDP_L4, 6, 700)
    );
}

#[test]
fn single_packet_is_gso_none_flags_zero() {
    let pkts = build(&flow(&Pkt::tcp4(), &[1000]));
    assert_plan(&pkts, cfg_all(), &[&[0]]);
}

#[test]
fn ipv4_options_pass_through_unmerged() {
    let mut t = Pkt::tcp4();
    t.ip_options = vec![1, 1, 1, 0];
    let pkts = build(&flow(&t, &[500, 500]));
    assert_plan(&pkts, cfg_all(), &[&[0], &[1]]);
}

#[test]
fn ipv6_extension_headers_pass_through_unmerged() {
    let mut t = Pkt::udp6();
    t.ext = vec![60];
    let pkts = build(&flow(&t, &[500, 500]));
    assert_plan(&pkts, cfg_all(), &[&[0], &[1]]);
}

fn differing(mutate: impl Fn(&mut Pkt), base: Pkt) {
    let mut ps = flow(&base, &[500, 500]);
    mutate(&mut ps[1]);
    assert_plan(&build(&ps), cfg_all(), &[&[0], &[1]]);
}

#[test]
fn ecn_ce_mark_differs_not_merged() {
    // Bug 4 (CE marks lost): TOS / traffic class must be equal, ECN bits included.
    differing(|p| p.tos = 0x03, Pkt::tcp4());
    differing(|p| p.tos = 0x03, Pkt::tcp6());
    differing(|p| p.tos = 0x20, Pkt::udp6());
}

#[test]
fn ttl_or_hop_limit_differs_not_merged() {
    differing(|p| p.ttl = 63, Pkt::tcp4());
    differing(|p| p.ttl = 63, Pkt::tcp6());
}

#[test]
fn flow_label_differs_not_merged() {
    differing(|p| p.flow_label = 7, Pkt::tcp6());
}

#[test]
fn df_differs_not_merged() {
    differing(|p| p.df = false, Pkt::tcp4());
}

#[test]
fn ipv4_fragment_not_merged() {
    let mut ps = flow(&Pkt::udp4(), &[500, 500]);
    ps[0].mf = true;
    ps[1].mf = true;
    let pkts = build(&ps);
    let ws = coalesce(&pkts, cfg_all());
    assert_eq!(groups(&ws), vec![vec![0], vec![1]]);
}

#[test]
fn ipv4_id_must_increment_by_one() {
    differing(|p| p.id = p.id.wrapping_add(1), Pkt::tcp4());
    let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
    ps[2].id = ps[0].id; // the increment mode, once chosen, must hold
    assert_plan(&build(&ps), cfg_all(), &[&[0, 1], &[2]]);
}

#[test]
fn ipv4_fixed_id_merges_only_with_df() {
    let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
    for p in &mut ps {
        p.id = 0;
    }
    let ws = coalesce(&build(&ps), cfg_all());
    assert_eq!(groups(&ws), vec![vec![0, 1, 2]]);
    for p in &mut ps {
        p.df = false;
    }
    assert_plan(&build(&ps), cfg_all(), &[&[0], &[1], &[2]]);
}

#[test]
fn tcp_seq_gap_not_merged() {
    let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
    ps[2].seq += 1;
    assert_plan(&build(&ps), cfg_all(), &[&[0, 1], &[2]]);
}

#[test]
fn tcp_ack_differs_not_merged() {
    differing(|p| p.ack += 1, Pkt::tcp6());
}

#[test]
fn tcp_options_differ_not_merged() {
    let mut t = Pkt::tcp4();
    t.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    differing(|p| p.tcp_options[7] = 2, t.clone());
    differing(|p| p.tcp_options = vec![], t);
}

#[test]
fn tcp_window_differs_not_merged() {
    differing(|p| p.window += 1, Pkt::tcp4());
}

#[test]
fn psh_on_last_is_merged_and_kept() {
    // Bug 4: FIN/PSH on a later packet must survive the merge.
    let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
    ps[2].flags = ACK | PSH;
    let ws = assert_plan(&build(&ps), cfg_all(), &[&[0, 1, 2]]);
    assert_eq!(ws[0].bytes[33], ACK | PSH);
}

#[test]
fn fin_on_last_is_merged_and_kept() {
    let mut ps = flow(&Pkt::tcp6(), &[500, 200]);
    ps[1].flags = ACK | FIN | PSH;
    assert_plan(&build(&ps), cfg_all(), &[&[0, 1]]);
}

#[test]
fn nothing_merges_after_psh_or_fin() {
    for f in [PSH, FIN] {
        let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
        ps[1].flags = ACK | f;
        assert_plan(&build(&ps), cfg_all(), &[&[0, 1], &[2]]);
    }
}

#[test]
fn syn_rst_urg_cwr_never_merged() {
    for f in [SYN, RST, URG, CWR] {
        let mut ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
        for p in &mut ps {
            p.flags = ACK | f;
        }
        assert_plan(&build(&ps), cfg_all(), &[&[0], &[1], &[2]]);
    }
}

#[test]
fn ece_trains_merge() {
    let mut t = Pkt::tcp4();
    t.flags = ACK | ECE;
    let pkts = build(&flow(&t, &[500, 500]));
    assert_plan(&pkts, cfg_all(), &[&[0, 1]]);
}

#[test]
fn pure_ack_not_swallowed_and_is_a_barrier() {
    // Bug 4: a zero-payload ACK with a newer ack number must go out on its own, in place.
    let mut ps = flow(&Pkt::tcp4(), &[500, 500, 0, 500, 500]);
    ps[2].ack += 1000;
    ps[2].window = 9;
    for p in &mut ps[3..] {
        p.ack += 1000;
    }
    assert_plan(&build(&ps), cfg_all(), &[&[0, 1], &[2], &[3, 4]]);
}

#[test]
fn tcp_without_ack_flag_not_merged() {
    let mut ps = flow(&Pkt::tcp4(), &[500, 500]);
    for p in &mut ps {
        p.flags = 0;
    }
    assert_plan(&build(&ps), cfg_all(), &[&[0], &[1]]);
}

#[test]
fn udp_different_sizes_keep_datagram_boundaries() {
    // Bug 5: [100, 30, 100] must not become [100, 100, 30]; small-then-large never merges.
    let pkts = build(&flow(&Pkt::udp4(), &[100, 30, 100]));
    assert_plan(&pkts, cfg_all(), &[&[0, 1], &[2]]);
    let pkts = build(&flow(&Pkt::udp6(), &[30, 100, 100]));
    assert_plan(&pkts, cfg_all(), &[&[0], &[1, 2]]);
}

#[test]
fn tcp_larger_segment_starts_new_train() {
    let pkts = build(&flow(&Pkt::tcp4(), &[500, 600, 600]));
    assert_plan(&pkts, cfg_all(), &[&[0], &[1, 2]]);
}

#[test]
fn udp_segment_cap_default_64_and_configurable() {
    let pkts = build(&flow(&Pkt::udp6(), &[100; 130]));
    let ws = coalesce(&pkts, cfg_all());
    let sizes: Vec<usize> = ws.iter().map(|w| w.packets.len()).collect();
    assert_eq!(sizes, vec![64, 64, 2]);
    let ws = coalesce(
        &pkts,
        Config {
            udp_max_segments: 128,
            ..cfg_all()
        },
    );
    let sizes: Vec<usize> = ws.iter().map(|w| w.packets.len()).collect();
    assert_eq!(sizes, vec![128, 2]);
    assert_eq!(Config::default().udp_max_segments, 64);
}

#[test]
fn udp_zero_checksum_not_merged() {
    let mut ps = flow(&Pkt::udp4(), &[100, 100]);
    for p in &mut ps {
        p.udp_csum_override = Some(0);
    }
    let ws = coalesce(&build(&ps), cfg_all());
    assert_eq!(groups(&ws), vec![vec![0], vec![1]]);
}

#[test]
fn udp_only_when_enabled_tcp_only_when_enabled() {
    let pkts = build(&flow(&Pkt::udp4(), &[100, 100]));
    let no_udp = Config {
        udp: false,
        ..cfg_all()
    };
    assert_plan(&pkts, no_udp, &[&[0], &[1]]);
    assert!(
        !Config::default().udp,
        "UDP merging must be opted into after probing USO"
    );
    let pkts = build(&flow(&Pkt::tcp6(), &[100, 100]));
    let no_tcp = Config {
        tcp: false,
        ..cfg_all()
    };
    assert_plan(&pkts, no_tcp, &[&[0], &[1]]);
}

#[test]
fn total_stays_within_65535() {
    let pkts = build(&flow(&Pkt::tcp4(), &[1400; 60]));
    let ws = coalesce(&pkts, cfg_all());
    // (65535 - 40) / 1400 = 46 payloads fit in one IPv4 packet.
    let sizes: Vec<usize> = ws.iter().map(|w| w.packets.len()).collect();
    assert_eq!(sizes, vec![46, 14]);
    for w in &ws {
        assert!(w.bytes.len() <= 65535);
        assert_eq!(resplit(w).len(), w.packets.len());
    }
    let pkts = build(&flow(&Pkt::tcp6(), &[1400; 60]));
    let ws = coalesce(&pkts, cfg_all());
    assert!(ws.iter().all(|w| w.bytes.len() <= 65535));
}

#[test]
fn in_batch_reordering_by_sequence_number() {
    let ps = flow(&Pkt::tcp4(), &[500, 500, 500]);
    let pkts = build(&[ps[2].clone(), ps[0].clone(), ps[1].clone()]);
    assert_plan(&pkts, cfg_all(), &[&[1, 2, 0]]);
}

#[test]
fn duplicates_and_gaps_are_not_merged_across() {
    let ps = flow(&Pkt::tcp4(), &[500, 500, 500, 500]);
    // 0, 1, 1 again (retransmit), 3 (gap at 2).
    let pkts = build(&[ps[0].clone(), ps[1].clone(), ps[1].clone(), ps[3].clone()]);
    let ws = coalesce(&pkts, cfg_all());
    for w in &ws {
        let orig: Vec<Vec<u8>> = w.packets.iter().map(|&i| pkts[i].clone()).collect();
        assert_eq!(resplit(w), orig);
    }
    assert_eq!(groups(&ws), vec![vec![0, 1], vec![2], vec![3]]);
}

#[test]
fn order_of_first_appearance_across_flows() {
    let mut other = Pkt::tcp4();
    other.sport += 1;
    let a = flow(&Pkt::tcp4(), &[500, 500]);
    let b = flow(&other, &[300, 300]);
    let u = Pkt::udp6().with_payload(10, 1);
    let pkts = build(&[b[0].clone(), a[0].clone(), u, b[1].clone(), a[1].clone()]);
    assert_plan(&pkts, cfg_all(), &[&[0, 3], &[1, 4], &[2]]);
}

#[test]
fn malformed_and_other_packets_pass_singly_in_order() {
    let a = flow(&Pkt::tcp4(), &[500, 500]);
    let garbage = vec![0x45, 0, 0];
    let empty = vec![];
    let pkts = vec![
        a[0].build(),
        garbage.clone(),
        empty,
        vec![0x60; 10],
        a[1].build(),
    ];
    let ws = assert_plan(&pkts, cfg_all(), &[&[0, 4], &[1], &[2], &[3]]);
    assert_eq!(ws[1].bytes, garbage);
}

#[test]
fn no_stale_header_between_batches() {
    // Bug 8: the second batch must not reuse anything of the first's trains.
    let mut c = Coalescer::new(cfg_all());
    let mut first = build(&flow(&Pkt::tcp4(), &[1000, 1000, 1000]));
    let ws = plan(&mut c, &mut first);
    assert_eq!(ws.len(), 1);
    let mut t = Pkt::tcp4();
    t.seq += 3000;
    t.id += 3;
    let originals = build(&flow(&t, &[1000, 1000]));
    let mut second = originals.clone();
    let ws = plan(&mut c, &mut second);
    assert_eq!(groups(&ws), vec![vec![0, 1]]);
    assert_eq!(resplit(&ws[0]), originals);
    let mut third = vec![Pkt::udp4().with_payload(5, 0).build()];
    let ws = plan(&mut c, &mut third);
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].vnet, VirtioNetHdr::NONE);
}

#[test]
fn einval_fallback_materialise_and_split_gives_back_the_packets() {
    let originals = build(&flow(&Pkt::udp6(), &[1200, 1200, 1200, 5]));
    let mut pkts = originals.clone();
    let mut c = Coalescer::new(cfg_all());
    let plan = c.coalesce(&mut pkts);
    assert_eq!(plan.len(), 1);
    let w = plan.get(0).unwrap();
    let mut buf = Vec::new();
    w.materialize(&pkts, virtio::LEN_MRG_RXBUF, &mut buf);
    let hdr = VirtioNetHdr::parse(&buf).unwrap();
    assert_eq!(hdr, w.vnet);
    let mut s = Segments::new();
    split(&hdr, &buf[virtio::LEN_MRG_RXBUF..], &mut s).unwrap();
    let back: Vec<Vec<u8>> = s.iter().map(<[u8]>::to_vec).collect();
    assert_eq!(back, originals);
}

#[test]
fn writev_slices_reference_payloads_without_copy() {
    let pkts0 = build(&flow(&Pkt::tcp6(), &[800, 800, 100]));
    let mut pkts = pkts0.clone();
    let mut c = Coalescer::new(cfg_all());
    let plan = c.coalesce(&mut pkts);
    let w = plan.get(0).unwrap();
    assert_eq!(w.slices.len(), 3);
    assert_eq!((w.slices[0].start, w.slices[0].end), (0, 60 + 800));
    assert_eq!((w.slices[1].start, w.slices[1].end), (60, 60 + 800));
    assert_eq!((w.slices[2].start, w.slices[2].end), (60, 60 + 100));
    // Only the train's first packet was edited.
    assert_ne!(pkts[0], pkts0[0]);
    assert_eq!(pkts[1..], pkts0[1..]);
}
