//! `Coalescer` over an arbitrary batch: every packet appears in exactly one write, writes are in
//! order of first appearance, and every train splits back into the packets it was made of.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload::{split, Coalescer, Config, Segments};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    // Batch: chunks separated by a 2-byte big-endian length prefix.
    let mut pkts: Vec<Vec<u8>> = Vec::new();
    let mut r = rest;
    while r.len() >= 2 && pkts.len() < 128 {
        let n = usize::from(u16::from_be_bytes([r[0], r[1]])) % 2048;
        r = &r[2..];
        let n = n.min(r.len());
        pkts.push(r[..n].to_vec());
        r = &r[n..];
    }
    let originals = pkts.clone();
    let mut c = Coalescer::new(Config {
        tcp: ctl & 1 != 0,
        udp: ctl & 2 != 0,
        udp_max_segments: 1 + usize::from(ctl >> 2),
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
