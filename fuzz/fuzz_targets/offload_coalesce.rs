//! `Coalescer` over an arbitrary batch: every packet appears in exactly one write, writes are in
//! order of first appearance, and every train splits back into the packets it was made of.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload::{split, Coalescer, Config, Segments};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut pkts = if ctl & 0x80 != 0 {
        flow_batch(rest)
    } else {
        raw_batch(rest)
    };
    let originals = pkts.clone();
    let mut c = Coalescer::new(Config {
        tcp: ctl & 1 != 0,
        udp: ctl & 2 != 0,
        udp_max_segments: 1 + usize::from((ctl >> 2) & 0x1f),
    });
    let plan = c.coalesce(&mut pkts);
    let mut seen = vec![false; pkts.len()];
    let mut last = None;
    let mut seg = Segments::new();
    for w in plan.iter() {
        let first = w
            .slices
            .iter()
            .map(|s| s.packet)
            .min()
            .expect("non-empty write");
        assert!(last.is_none_or(|l| l < first));
        last = Some(first);
        for s in w.slices {
            assert!(!seen[s.packet]);
            seen[s.packet] = true;
        }
        if w.is_train() {
            let mut bytes = Vec::new();
            w.materialize(&pkts, 10, &mut bytes);
            seg.clear();
            split(&w.vnet, &bytes[10..], &mut seg).expect("a planned train splits");
            assert_eq!(seg.len(), w.packets());
            for (s, sl) in seg.iter().zip(w.slices) {
                assert_eq!(same_but_checksums(s, &originals[sl.packet]), Ok(()));
            }
        } else {
            let s = w.slices[0];
            assert_eq!(&pkts[s.packet][s.range()], &originals[s.packet][..]);
        }
    }
    assert!(seen.iter().all(|&s| s));
});

/// Equal except where a merge legitimately rewrites: checksums (the kernel recomputes them over
/// the merged payload, so corrupt input checksums come back repaired) and IPv4 IDs of a fixed-ID
/// (DF) train, which split numbers base + i.
fn same_but_checksums(seg: &[u8], orig: &[u8]) -> Result<(), usize> {
    if seg.len() != orig.len() {
        return Err(usize::MAX);
    }
    let l = wire::ip::locate(orig).expect("merged packets parse");
    let l4_csum = l.l4_offset
        + if l.protocol == wire::ip::protocol::TCP {
            16
        } else {
            6
        };
    for (i, (a, b)) in seg.iter().zip(orig).enumerate() {
        let v4_id_or_csum =
            l.version == wire::ip::IpVersion::V4 && ((4..6).contains(&i) || (10..12).contains(&i));
        let skip = v4_id_or_csum || (l4_csum..l4_csum + 2).contains(&i);
        if a != b && !skip {
            return Err(i);
        }
    }
    Ok(())
}

/// Batch of arbitrary chunks, each behind a 2-byte big-endian length prefix.
fn raw_batch(mut r: &[u8]) -> Vec<Vec<u8>> {
    let mut pkts = Vec::new();
    while r.len() >= 2 && pkts.len() < 128 {
        let n = usize::from(u16::from_be_bytes([r[0], r[1]])) % 2048;
        r = &r[2..];
        let n = n.min(r.len());
        pkts.push(r[..n].to_vec());
        r = &r[n..];
    }
    pkts
}

/// Batch derived from one template packet (the first chunk) so that trains actually form: each
/// 4-byte record gives a payload length and perturbations (sequence gaps, repeated IDs, flag bits,
/// one header byte changed). Lengths and checksums are made valid.
fn flow_batch(r: &[u8]) -> Vec<Vec<u8>> {
    use wire::ip::{IpVersion, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
    let tlen = usize::from(r.first().copied().unwrap_or(0)) + 20;
    if r.len() < 1 + tlen {
        return Vec::new();
    }
    let template = &r[1..1 + tlen];
    let Ok(loc) = wire::ip::locate(template) else {
        return Vec::new();
    };
    let tcp = loc.protocol == wire::ip::protocol::TCP;
    let l4_hdr = if tcp {
        match TcpPacket::new_checked(&template[loc.l4_offset..loc.ip_len]) {
            Ok(t) => t.header_len(),
            Err(_) => return Vec::new(),
        }
    } else if loc.protocol == wire::ip::protocol::UDP && loc.l4_len() >= 8 {
        8
    } else {
        return Vec::new();
    };
    let hdr = &template[..loc.l4_offset + l4_hdr];
    let mut seq = 0u32;
    let mut id = 0u16;
    let mut pkts = Vec::new();
    for rec in r[1 + tlen..].chunks_exact(4).take(128) {
        let (op, n, x) = (
            rec[0],
            usize::from(u16::from_be_bytes([rec[1], rec[2]])) % 1500,
            rec[3],
        );
        let mut p = hdr.to_vec();
        p.extend(std::iter::repeat_n(x, n));
        if op & 1 != 0 {
            seq = seq.wrapping_add(u32::from(x));
        }
        if op & 2 == 0 {
            id = id.wrapping_add(1);
        }
        let len = p.len();
        let pseudo = match loc.version {
            IpVersion::V4 => {
                let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
                ip.set_total_len(len as u16);
                ip.set_ident(id);
                ip.fill_checksum();
                ip.pseudo_sum((len - loc.l4_offset) as u16)
            }
            IpVersion::V6 => {
                let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
                ip.set_payload_len((len - 40) as u16);
                ip.pseudo_sum(loc.protocol, (len - loc.l4_offset) as u32)
            }
        };
        let l4 = &mut p[loc.l4_offset..];
        if tcp {
            let mut t = TcpPacket::new_unchecked(l4);
            t.set_seq_number(seq);
            if op & 8 != 0 {
                t.set_flags(t.flags() ^ (op >> 4));
            }
            t.fill_checksum(pseudo);
        } else {
            let l4_len = l4.len() as u16;
            let mut u = UdpPacket::new_unchecked(l4);
            u.set_len(l4_len);
            u.fill_checksum(pseudo);
        }
        if op & 4 != 0 {
            // After the fix-ups, so checksums may now be wrong too (the merge repairs those).
            let at = usize::from(x) % hdr.len();
            p[at] ^= op;
        }
        seq = seq.wrapping_add(n as u32);
        pkts.push(p);
    }
    pkts
}
