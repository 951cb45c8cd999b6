//! `split` over an arbitrary virtio header and packet: an error or valid segments, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload::{split, Segments};
use wire::virtio::VirtioNetHdr;

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = VirtioNetHdr::parse(data) else {
        return;
    };
    let packet = &data[wire::virtio::LEN..];
    let mut s = Segments::with_headroom(3);
    if let Ok(n) = split(&hdr, packet, &mut s) {
        assert_eq!(n, s.len());
        assert!(n >= 1);
        // Segments of a GSO split are whole IP packets whose length fields match.
        if hdr.gso_kind() != 0 {
            for seg in s.iter() {
                let l = wire::ip::locate(seg).expect("segment parses");
                assert_eq!(l.ip_len, seg.len());
            }
        }
    }
});
