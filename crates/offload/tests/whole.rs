//! `whole_header`: what a receiver checks in a super-packet another node sent whole, and the
//! virtio header it writes it with (derived from the packet, not taken from the sender).

mod common;

use common::*;
use hypha_offload::{split, whole_header, Segments, SplitError};
use wire::virtio::{flags, gso, VirtioNetHdr};

#[test]
fn tcp6_super_packet_gets_a_header_derived_from_the_packet() {
    let mut t = Pkt::tcp6().with_payload(20 * 1348, 7);
    t.tcp_options = vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0];
    let (sent, packet) = superpacket(&t, 1348);
    // The sender's own fields are not trusted: lie about them.
    let lying = VirtioNetHdr {
        flags: 0,
        hdr_len: 9999,
        csum_start: 3,
        csum_offset: 77,
        ..sent
    };
    let h = whole_header(&lying, &packet).expect("a valid super-packet");
    assert_eq!(h, sent, "the header the kernel gave the sender");
    assert_eq!(
        (h.flags, h.hdr_len, h.csum_start, h.csum_offset),
        (flags::NEEDS_CSUM, 72, 40, 16)
    );
    // Written with that header, it splits into what the kernel's GSO would make.
    let mut segs = Segments::new();
    split(&h, &packet, &mut segs).expect("split");
    let got: Vec<Vec<u8>> = segs.iter().map(|s| s.to_vec()).collect();
    assert_eq!(got, expected_segments(&t, 1348));
}

#[test]
fn udp6_super_packet_is_accepted_and_the_tcp_ecn_bit_only_on_tcp() {
    let t = Pkt::udp6().with_payload(10 * 1200, 3);
    let (mut sent, packet) = superpacket(&t, 1200);
    sent.gso_type |= gso::ECN;
    let h = whole_header(&sent, &packet).expect("a valid UDP super-packet");
    assert_eq!((h.gso_type, h.csum_offset, h.hdr_len), (gso::UDP_L4, 6, 48));

    let t = Pkt::tcp6().with_payload(5 * 1000, 3);
    let (mut sent, packet) = superpacket(&t, 1000);
    sent.gso_type |= gso::ECN;
    assert_eq!(
        whole_header(&sent, &packet).unwrap().gso_type,
        gso::TCPV6 | gso::ECN
    );
}

#[test]
fn anything_else_is_refused() {
    let t = Pkt::tcp6().with_payload(8 * 1000, 1);
    let (sent, packet) = superpacket(&t, 1000);
    let refuse = |h: VirtioNetHdr, p: &[u8]| whole_header(&h, p).unwrap_err();
    // Types the kernel would take but a super-frame never carries, or nonsense.
    for ty in [gso::NONE, gso::TCPV4, gso::UDP, 9] {
        let e = refuse(
            VirtioNetHdr {
                gso_type: ty,
                ..sent
            },
            &packet,
        );
        assert!(matches!(e, SplitError::UnsupportedGso(_)), "{ty}: {e:?}");
    }
    assert_eq!(
        refuse(
            VirtioNetHdr {
                gso_size: 0,
                ..sent
            },
            &packet
        ),
        SplitError::ZeroGsoSize
    );
    // The type must match the packet.
    assert_eq!(
        refuse(
            VirtioNetHdr {
                gso_type: gso::UDP_L4,
                ..sent
            },
            &packet
        ),
        SplitError::GsoMismatch
    );
    // One segment or less is no super-packet.
    assert_eq!(
        refuse(
            VirtioNetHdr {
                gso_size: 8000,
                ..sent
            },
            &packet
        ),
        SplitError::GsoMismatch
    );
    // Truncated, or longer than its IPv6 header says.
    assert!(whole_header(&sent, &packet[..packet.len() - 1]).is_err());
    let mut longer = packet.clone();
    longer.push(0);
    assert!(whole_header(&sent, &longer).is_err());
    assert!(whole_header(&sent, &packet[..30]).is_err());
    // IPv4, and IPv6 with an extension header.
    let (h4, p4) = superpacket(&Pkt::tcp4().with_payload(8 * 1000, 1), 1000);
    assert!(whole_header(
        &VirtioNetHdr {
            gso_type: gso::TCPV6,
            ..h4
        },
        &p4
    )
    .is_err());
    let mut ext = Pkt::tcp6().with_payload(8 * 1000, 1);
    ext.ext = vec![0];
    let (he, pe) = superpacket(&ext, 1000);
    assert_eq!(whole_header(&he, &pe), Err(SplitError::GsoMismatch));
}

proptest::proptest! {
    /// Arbitrary bytes and headers never panic, and what is accepted always splits cleanly.
    #[test]
    fn arbitrary_input_never_panics(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        gso_type in 0u8..8,
        gso_size in 0u16..2000,
    ) {
        let sent = VirtioNetHdr { gso_type, gso_size, ..VirtioNetHdr::NONE };
        if let Ok(h) = whole_header(&sent, &bytes) {
            let mut segs = Segments::new();
            proptest::prop_assert!(split(&h, &bytes, &mut segs).is_ok());
        }
    }
}
