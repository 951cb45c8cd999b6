//! Every header view over arbitrary bytes: accept or refuse, never panic; accepted views keep
//! every getter in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ip::{
    self, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};
use wire::virtio::VirtioNetHdr;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = VirtioNetHdr::parse(data) {
        let img = h.to_bytes();
        assert_eq!(VirtioNetHdr::parse(&img), Ok(h));
    }
    if let Ok(l) = ip::locate(data) {
        assert!(l.l4_offset <= l.ip_len && l.ip_len <= data.len());
    }
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (
            p.payload(),
            p.options(),
            p.verify_checksum(),
            p.pseudo_sum(7),
        );
        let _ = Ipv4Repr::parse(&p);
    }
    if let Ok(b) = wire::beacon::Beacon::new_checked(data) {
        assert_eq!(wire::beacon::emit(b.tcp_port(), &b.router_id())[..], data[..]);
    }
    if let Ok(o) = wire::icmp::oob::OobIcmp::new_checked(data) {
        let _ = (o.orig_dst(), o.error_src(), o.error_dst(), o.kind(), o.quote().len());
    }
    if let Ok(p) = Ipv6Packet::new_header_checked(data) {
        let _ = (p.src_addr(), p.dst_addr(), p.hop_limit());
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (
            p.payload(),
            p.flow_label(),
            p.traffic_class(),
            p.pseudo_sum(6, 9),
        );
        if let Ok(u) = p.upper_layer() {
            assert!(u.offset <= data.len());
        }
        let _ = Ipv6Repr::parse(&p);
    }
    if let Ok(p) = TcpPacket::new_checked(data) {
        let _ = (
            p.payload(),
            p.options(),
            p.verify_checksum(0x1234),
            p.flags(),
        );
        let _ = TcpRepr::parse(&p);
    }
    if let Ok(p) = UdpPacket::new_checked(data) {
        let _ = (p.payload(), p.verify_checksum(0x1234));
        let _ = UdpRepr::parse(&p);
    }
    // Setters on a copy of an accepted packet stay in bounds too.
    let mut copy = data.to_vec();
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut copy[..]) {
        p.fill_checksum();
        let _ = p.payload_mut();
    }
    let _ = wire::checksum::sum(data);
});
