//! Table tests for the read path (docs/protocol.md §9.3, pitfalls 1–3 and 7 of §9.7).

mod common;

use common::*;
use hypha_offload::{split, SegmentSink, Segments, SplitError};
use wire::virtio::{flags, gso, VirtioNetHdr};

fn run(hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<Vec<Vec<u8>>, SplitError> {
    let mut s = Segments::with_headroom(7);
    let n = split(hdr, pkt, &mut s)?;
    assert_eq!(n, s.len());
    Ok(s.iter().map(<[u8]>::to_vec).collect())
}

fn assert_split_matches_kernel(template: &Pkt, gso_size: u16) -> Vec<Vec<u8>> {
    let (hdr, sp) = superpacket(template, gso_size);
    let got = run(&hdr, &sp).unwrap();
    let want = expected_segments(template, usize::from(gso_size));
    assert_eq!(got.len(), want.len(), "segment count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        check(g).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert_eq!(g, w, "segment {i} differs from the kernel's");
    }
    got
}

#[test]
fn tcpv4_ip_id_is_base_plus_i_and_header_checksum_recomputed() {
    let t = Pkt::tcp4().with_payload(4000, 1);
    let segs = assert_split_matches_kernel(&t, 1000);
    for (i, s) in segs.iter().enumerate() {
        let p = check(s).unwrap();
        assert_eq!(p.id, 0x1000 + i as u16);
    }
}

#[test]
fn tcpv4_ip_id_wraps() {
    let mut t = Pkt::tcp4().with_payload(3000, 2);
    t.id = 0xffff;
    let segs = assert_split_matches_kernel(&t, 1000);
    assert_eq!(check(&segs[1]).unwrap().id, 0);
}

#[test]
fn tcp_seq_is_base_plus_offset_and_wraps() {
    let mut t = Pkt::tcp6().with_payload(3001, 3);
    t.seq = u32::MAX - 1500;
    let segs = assert_split_matches_kernel(&t, 1000);
    let seqs: Vec<u32> = segs.iter().map(|s| check(s).unwrap().seq).collect();
    assert_eq!(seqs, vec![u32::MAX - 1500, u32::MAX - 500, 499, 1499]);
}

#[test]
fn fin_and_psh_only_on_last_segment() {
    let mut t = Pkt::tcp4().with_payload(2500, 4);
    t.flags = ACK | PSH | FIN;
    let segs = assert_split_matches_kernel(&t, 1000);
    let f: Vec<u8> = segs.iter().map(|s| check(s).unwrap().flags).collect();
    assert_eq!(f, vec![ACK, ACK, ACK | PSH | FIN]);
}

#[test]
fn cwr_only_on_first_segment() {
    let mut t = Pkt::tcp6().with_payload(2500, 5);
    t.flags = ACK | CWR | ECE;
    let (mut hdr, sp) = superpacket(&t, 1000);
    hdr.gso_type |= gso::ECN;
    let segs = run(&hdr, &sp).unwrap();
    let f: Vec<u8> = segs.iter().map(|s| check(s).unwrap().flags).collect();
    assert_eq!(f, vec![ACK | CWR | ECE, ACK | ECE, ACK | ECE]);
    assert_eq!(segs, expected_segments(&t, 1000));
}

#[test]
fn ipv6_payload_length_counts_extension_headers() {
    // Bug 2: wrong payload length after split, or the whole super-packet dropped.
    let mut t = Pkt::tcp6().with_payload(3000, 6);
    t.ext = vec![0, 43, 60];
    let segs = assert_split_matches_kernel(&t, 1200);
    for s in &segs {
        let p = check(s).unwrap();
        assert_eq!(p.l4_off, 40 + 24);
        assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
    }
}

#[test]
fn udp_over_ipv6_with_extension_headers() {
    let mut t = Pkt::udp6().with_payload(3000, 7);
    t.ext = vec![60];
    assert_split_matches_kernel(&t, 1000);
}

#[test]
fn ipv6_fragment_header_refused() {
    let mut t = Pkt::tcp6().with_payload(300, 8);
    t.ext = vec![0, 44];
    let mut b = t.build();
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::TCPV6,
        gso_size: 100,
        ..VirtioNetHdr::NONE
    };
    assert_eq!(run(&hdr, &b), Err(SplitError::Fragment));
    b.truncate(60);
    assert!(run(&hdr, &b).is_err());
}

#[test]
fn ipv4_options_copied_into_every_segment() {
    let mut t = Pkt::tcp4().with_payload(2000, 9);
    t.ip_options = vec![0x94, 0x04, 0x00, 0x00]; // router alert
    let segs = assert_split_matches_kernel(&t, 700);
    for s in &segs {
        assert_eq!(s[0] & 0x0f, 6);
        assert_eq!(&s[20..24], &[0x94, 0x04, 0x00, 0x00]);
    }
}

#[test]
fn tcp_options_copied_into_every_segment() {
    let mut t = Pkt::tcp6().with_payload(2000, 10);
    t.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
    assert_split_matches_kernel(&t, 700);
}

#[test]
fn udp_every_segment_but_last_is_gso_size_with_its_own_length() {
    let t = Pkt::udp4().with_payload(2500, 11);
    let segs = assert_split_matches_kernel(&t, 1000);
    let sizes: Vec<usize> = segs
        .iter()
        .map(|s| check(s).unwrap().payload.len())
        .collect();
    assert_eq!(sizes, vec![1000, 1000, 500]);
}

#[test]
fn udp_computed_zero_checksum_written_as_ffff() {
    // Bug 1. Make the middle segment's checksum compute to 0 by adjusting one payload word, then
    // check split writes 0xffff there (and that the independent builder agrees).
    let mut t = Pkt::udp6().with_payload(3000, 12);
    let mut mid = t.clone();
    mid.payload = t.payload[1000..2000].to_vec();
    let b = mid.build();
    let l4 = &b[40..];
    let mut l4z = l4.to_vec();
    l4z[6..8].copy_from_slice(&[0, 0]);
    let seed = pseudo_seed(true, &t.src(), &t.dst(), UDP, l4z.len());
    let sum = wire::checksum::add(seed, wire::checksum::reference::sum(&l4z));
    // Adding !sum to one even-aligned payload word brings the total to 0xffff (checksum 0).
    let w = u16::from_be_bytes([t.payload[1000], t.payload[1001]]);
    let w2 = wire::checksum::add(w, !sum);
    t.payload[1000..1002].copy_from_slice(&w2.to_be_bytes());

    let segs = assert_split_matches_kernel(&t, 1000);
    let s = &segs[1];
    assert_eq!(
        &s[46..48],
        &[0xff, 0xff],
        "computed 0 must go out as 0xffff"
    );
}

#[test]
fn tcp_64k_with_mss_536_splits_into_123_segments() {
    // Bug 3: never drop a super-packet for having "too many" segments.
    let t = Pkt::tcp4().with_payload(65535 - 40, 13);
    let segs = assert_split_matches_kernel(&t, 536);
    assert_eq!(segs.len(), (65535 - 40usize).div_ceil(536));
    assert!(segs.len() > 64);
}

#[test]
fn udp_200_segments() {
    let t = Pkt::udp6().with_payload(200 * 300, 14);
    let segs = assert_split_matches_kernel(&t, 300);
    assert_eq!(segs.len(), 200);
}

#[test]
fn payload_not_above_gso_size_is_one_segment() {
    let t = Pkt::tcp4().with_payload(500, 15);
    let segs = assert_split_matches_kernel(&t, 1000);
    assert_eq!(segs.len(), 1);
    let t = Pkt::tcp4().with_payload(1000, 15);
    assert_eq!(assert_split_matches_kernel(&t, 1000).len(), 1);
}

#[test]
fn kernel_hdr_len_and_csum_start_are_only_hints() {
    let mut t = Pkt::tcp6().with_payload(3000, 16);
    t.ext = vec![60];
    let (mut hdr, sp) = superpacket(&t, 1000);
    hdr.hdr_len = 3;
    hdr.csum_start = 9999;
    hdr.csum_offset = 77;
    assert_eq!(run(&hdr, &sp).unwrap(), expected_segments(&t, 1000));
}

#[test]
fn gso_without_needs_csum_or_with_data_valid_still_gets_checksums() {
    let t = Pkt::tcp4().with_payload(3000, 17);
    let (mut hdr, sp) = superpacket(&t, 1000);
    hdr.flags = 0;
    assert_eq!(run(&hdr, &sp).unwrap(), expected_segments(&t, 1000));
    hdr.flags = flags::DATA_VALID;
    assert_eq!(run(&hdr, &sp).unwrap(), expected_segments(&t, 1000));
}

#[test]
fn unknown_gso_types_are_errors_not_panics() {
    let t = Pkt::udp4().with_payload(3000, 18);
    let (mut hdr, sp) = superpacket(&t, 1000);
    for ty in [2u8, gso::UDP, 6, 7, 0x7f, 0x83, 0xff] {
        hdr.gso_type = ty;
        assert_eq!(
            run(&hdr, &sp),
            Err(SplitError::UnsupportedGso(ty)),
            "type {ty:#x}"
        );
    }
}

#[test]
fn gso_type_must_match_packet() {
    let t = Pkt::tcp4().with_payload(3000, 19);
    let (mut hdr, sp) = superpacket(&t, 1000);
    hdr.gso_type = gso::TCPV6;
    assert_eq!(run(&hdr, &sp), Err(SplitError::GsoMismatch));
    hdr.gso_type = gso::UDP_L4;
    assert_eq!(run(&hdr, &sp), Err(SplitError::GsoMismatch));
}

#[test]
fn gso_size_zero_is_an_error() {
    let t = Pkt::tcp4().with_payload(3000, 20);
    let (mut hdr, sp) = superpacket(&t, 1000);
    hdr.gso_size = 0;
    assert_eq!(run(&hdr, &sp), Err(SplitError::ZeroGsoSize));
}

#[test]
fn truncated_super_packet_is_malformed() {
    let t = Pkt::tcp4().with_payload(3000, 21);
    let (hdr, sp) = superpacket(&t, 1000);
    for cut in [0, 1, 19, 20, 39, 1000, sp.len() - 1] {
        assert!(
            matches!(run(&hdr, &sp[..cut]), Err(SplitError::Malformed(_))),
            "cut at {cut}"
        );
    }
}

#[test]
fn gso_none_plain_copy() {
    let t = Pkt::udp4().with_payload(100, 22).build();
    assert_eq!(run(&VirtioNetHdr::NONE, &t).unwrap(), vec![t.clone()]);
    let data_valid = VirtioNetHdr {
        flags: flags::DATA_VALID,
        ..VirtioNetHdr::NONE
    };
    assert_eq!(run(&data_valid, &t).unwrap(), vec![t]);
}

#[test]
fn gso_none_needs_csum_completes_tcp_and_udp() {
    for template in [
        Pkt::tcp4().with_payload(333, 23),
        Pkt::tcp6().with_payload(1000, 23),
        Pkt::udp6().with_payload(77, 23),
    ] {
        let want = template.build();
        let (mut hdr, sp) = superpacket(&template, 1400);
        hdr.gso_type = gso::NONE;
        hdr.gso_size = 0;
        assert_ne!(sp, want, "the seed differs from the final checksum");
        assert_eq!(run(&hdr, &sp).unwrap(), vec![want]);
    }
}

#[test]
fn gso_none_needs_csum_other_protocol_uses_kernel_offsets() {
    // ICMPv6 echo with the pseudo-header seed in its checksum field (offset 2).
    let src = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let body = [128u8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    let mut p = vec![0x60, 0, 0, 0, 0, body.len() as u8, 58, 64];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&body);
    let seed = pseudo_seed(true, &src, &dst, 58, body.len());
    p[42..44].copy_from_slice(&seed.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        csum_start: 40,
        csum_offset: 2,
        ..VirtioNetHdr::NONE
    };
    let out = run(&hdr, &p).unwrap();
    assert_eq!(l4_checksum(true, &src, &dst, 58, &out[0][40..]), 0);

    let bad = VirtioNetHdr {
        csum_offset: 200,
        ..hdr
    };
    assert_eq!(run(&bad, &p), Err(SplitError::BadChecksumOffsets));
}

#[test]
fn sink_full_reports_segments_written() {
    let t = Pkt::tcp4().with_payload(5000, 24);
    let (hdr, sp) = superpacket(&t, 1000);
    let mut s = Segments::new();
    s.set_limit(Some(3));
    assert_eq!(
        split(&hdr, &sp, &mut s),
        Err(SplitError::SinkFull { written: 3 })
    );
    assert_eq!(s.len(), 3);
    let want = expected_segments(&t, 1000);
    assert_eq!(s.get(2).unwrap(), &want[2][..]);
}

/// A sink that hands out slices of caller-owned frame buffers after a fixed headroom, as the node
/// does; checks split writes exactly the requested length and nothing else.
struct FrameSink {
    frames: Vec<Vec<u8>>,
    used: usize,
}

impl SegmentSink for FrameSink {
    fn segment(&mut self, len: usize) -> Option<&mut [u8]> {
        let f = self.frames.get_mut(self.used)?;
        self.used += 1;
        f.truncate(0);
        f.resize(16 + len, 0xee);
        Some(&mut f[16..])
    }
}

#[test]
fn custom_sink_with_headroom_receives_segments() {
    let t = Pkt::udp4().with_payload(2100, 25);
    let (hdr, sp) = superpacket(&t, 1000);
    let mut sink = FrameSink {
        frames: vec![Vec::new(); 4],
        used: 0,
    };
    assert_eq!(split(&hdr, &sp, &mut sink), Ok(3));
    let want = expected_segments(&t, 1000);
    for (f, w) in sink.frames.iter().zip(&want) {
        assert_eq!(&f[..16], &[0xee; 16], "headroom untouched");
        assert_eq!(&f[16..], &w[..]);
    }
}

#[test]
fn segments_arena_reused_across_reads() {
    let mut s = Segments::new();
    let a = Pkt::tcp4().with_payload(4000, 26);
    let b = Pkt::udp6().with_payload(900, 27);
    let (ha, pa) = superpacket(&a, 1000);
    let (hb, pb) = superpacket(&b, 1000);
    split(&ha, &pa, &mut s).unwrap();
    s.clear();
    split(&hb, &pb, &mut s).unwrap();
    let got: Vec<Vec<u8>> = s.iter().map(<[u8]>::to_vec).collect();
    assert_eq!(got, expected_segments(&b, 1000));
}
