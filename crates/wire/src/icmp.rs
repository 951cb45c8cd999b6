//! ICMPv6 error messages (RFC 4443) that a node writes back to its own TUN: destination unreachable
//! (no route, address unreachable, source address failed policy) and time exceeded
//! (docs/protocol.md §6.5–§6.10).

use std::net::Ipv6Addr;

use crate::checksum;

/// IPv6 fixed header length.
const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 error header: type, code, checksum, 4 unused bytes.
const ICMP_ERROR_HEADER_LEN: usize = 8;
/// RFC 4443 §2.4(c): an error message must not exceed the minimum IPv6 MTU.
pub const MAX_ERROR_PACKET: usize = 1280;
/// Next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;

/// ICMPv6 message types used for errors.
pub const TYPE_DEST_UNREACHABLE: u8 = 1;
pub const TYPE_TIME_EXCEEDED: u8 = 3;

/// The errors a node generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpError {
    /// Destination unreachable, code 0: no route to destination.
    NoRoute,
    /// Destination unreachable, code 3: address unreachable (inside our own /64, nobody there).
    AddressUnreachable,
    /// Destination unreachable, code 5: source address failed ingress/egress policy.
    SourcePolicy,
    /// Time exceeded, code 0: hop limit exceeded in transit.
    HopLimit,
}

impl IcmpError {
    pub fn type_code(self) -> (u8, u8) {
        match self {
            IcmpError::NoRoute => (TYPE_DEST_UNREACHABLE, 0),
            IcmpError::AddressUnreachable => (TYPE_DEST_UNREACHABLE, 3),
            IcmpError::SourcePolicy => (TYPE_DEST_UNREACHABLE, 5),
            IcmpError::HopLimit => (TYPE_TIME_EXCEEDED, 0),
        }
    }

    /// The error for an ICMPv6 type/code pair, if it is one of ours.
    pub fn from_type_code(ty: u8, code: u8) -> Option<IcmpError> {
        match (ty, code) {
            (TYPE_DEST_UNREACHABLE, 0) => Some(IcmpError::NoRoute),
            (TYPE_DEST_UNREACHABLE, 3) => Some(IcmpError::AddressUnreachable),
            (TYPE_DEST_UNREACHABLE, 5) => Some(IcmpError::SourcePolicy),
            (TYPE_TIME_EXCEEDED, 0) => Some(IcmpError::HopLimit),
            _ => None,
        }
    }
}

/// Whether an ICMPv6 error may be sent about `offending` (RFC 4443 §2.4(e)): never about another
/// ICMPv6 error message, and never about packets from the unspecified or a multicast source or to a
/// multicast destination. `offending` must start with an IPv6 header; anything shorter is refused.
pub fn may_answer(offending: &[u8]) -> bool {
    if offending.len() < IPV6_HEADER_LEN || offending[0] >> 4 != 6 {
        return false;
    }
    let src = &offending[8..24];
    let dst = &offending[24..40];
    if src.iter().all(|&b| b == 0) || src[0] == 0xff || dst[0] == 0xff {
        return false;
    }
    // An ICMPv6 error (types 0..=127) directly after the fixed header is never answered.
    !(offending[6] == NEXT_HEADER_ICMPV6 && offending.get(40).is_some_and(|&t| t < 128))
}

/// Appends to `out` a complete IPv6 packet carrying the ICMPv6 error `kind` from `src` to `dst`,
/// quoting as much of `offending` as fits in 1280 bytes. Returns the packet length.
pub fn build_error(
    out: &mut Vec<u8>,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    kind: IcmpError,
    offending: &[u8],
) -> usize {
    let quote = offending
        .len()
        .min(MAX_ERROR_PACKET - IPV6_HEADER_LEN - ICMP_ERROR_HEADER_LEN);
    let icmp_len = ICMP_ERROR_HEADER_LEN + quote;
    let start = out.len();
    // IPv6 header: version 6, traffic class 0, flow label 0.
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    out.push(NEXT_HEADER_ICMPV6);
    out.push(hop_limit);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let (ty, code) = kind.type_code();
    let icmp_start = out.len();
    out.extend_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&offending[..quote]);
    let pseudo = checksum::pseudo_v6(
        src.octets(),
        dst.octets(),
        NEXT_HEADER_ICMPV6,
        icmp_len as u32,
    );
    let body = checksum::sum(&out[icmp_start..]);
    let c = checksum::finish(checksum::add(pseudo, body));
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&c.to_be_bytes());
    out.len() - start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offending(len: usize, next_header: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next_header;
        p[7] = 1;
        p[8..24].copy_from_slice(&"430::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"437::2".parse::<Ipv6Addr>().unwrap().octets());
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn error_packet_is_well_formed_and_checksummed() {
        let off = offending(100, 17);
        let mut out = vec![0xAA; 3]; // appends after existing content
        let src: Ipv6Addr = "437::".parse().unwrap();
        let dst: Ipv6Addr = "430::1".parse().unwrap();
        let n = build_error(&mut out, src, dst, 64, IcmpError::NoRoute, &off);
        let p = &out[3..];
        assert_eq!(n, p.len());
        assert_eq!(p.len(), 40 + 8 + 100);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, 8 + 100);
        assert_eq!((p[6], p[7]), (58, 64));
        assert_eq!(&p[8..24], &src.octets());
        assert_eq!(&p[24..40], &dst.octets());
        assert_eq!((p[40], p[41]), (1, 0));
        assert_eq!(&p[48..], &off[..]);
        // Verifying: the sum over pseudo-header and message is 0xFFFF.
        let pseudo = checksum::pseudo_v6(src.octets(), dst.octets(), 58, 108);
        assert_eq!(checksum::add(pseudo, checksum::sum(&p[40..])), 0xFFFF);
    }

    #[test]
    fn quote_is_cut_to_the_minimum_mtu() {
        let off = offending(1400, 6);
        let mut out = Vec::new();
        let n = build_error(
            &mut out,
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            64,
            IcmpError::HopLimit,
            &off,
        );
        assert_eq!(n, MAX_ERROR_PACKET);
        assert_eq!((out[40], out[41]), (3, 0));
    }

    #[test]
    fn type_codes_round_trip() {
        for k in [
            IcmpError::NoRoute,
            IcmpError::AddressUnreachable,
            IcmpError::SourcePolicy,
            IcmpError::HopLimit,
        ] {
            let (t, c) = k.type_code();
            assert_eq!(IcmpError::from_type_code(t, c), Some(k));
        }
        assert_eq!(IcmpError::from_type_code(1, 4), None);
    }

    #[test]
    fn never_answers_errors_multicast_or_garbage() {
        assert!(may_answer(&offending(60, 17)));
        let mut icmp_err = offending(60, 58);
        icmp_err[40] = 1;
        assert!(!may_answer(&icmp_err));
        let mut echo = offending(60, 58);
        echo[40] = 128;
        assert!(may_answer(&echo));
        let mut mcast = offending(60, 17);
        mcast[24] = 0xff;
        assert!(!may_answer(&mcast));
        assert!(!may_answer(&[0x60; 39]));
        let mut v4 = offending(60, 17);
        v4[0] = 0x45;
        assert!(!may_answer(&v4));
    }
}
