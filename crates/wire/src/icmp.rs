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

/// Out-of-band ICMP: the payload an intermediate node seals for the source of a packet it could not
/// deliver (`docs/protocol.md` §6.8): `original destination(16) ‖ IPv6 header(40) ‖ ICMPv6 error
/// header(8) ‖ quote`, where the quote is the dropped frame's body, still sealed for the original
/// destination.
pub mod oob {
    use core::ops::{Range, RangeFrom};
    use std::net::Ipv6Addr;

    use super::{IcmpError, MAX_ERROR_PACKET};
    use crate::ip::Error;

    mod field {
        use super::{Range, RangeFrom};
        pub const ORIG_DST: Range<usize> = 0..16;
        pub const ERROR_SRC: Range<usize> = 24..40;
        pub const ERROR_DST: Range<usize> = 40..56;
        pub const ICMP_TYPE: usize = 56;
        pub const ICMP_CODE: usize = 57;
        pub const QUOTE: RangeFrom<usize> = 64..;
    }

    /// Bytes before the quote.
    pub const HEADER_LEN: usize = 64;
    /// The longest payload: the original destination and a minimum-MTU ICMPv6 error packet.
    pub const MAX_LEN: usize = 16 + MAX_ERROR_PACKET;

    /// A view of an out-of-band ICMP payload.
    #[derive(Debug, Clone, Copy)]
    pub struct OobIcmp<T> {
        buffer: T,
    }

    impl<T: AsRef<[u8]>> OobIcmp<T> {
        /// Wraps untrusted bytes: at least the header, at most [`MAX_LEN`].
        pub fn new_checked(buffer: T) -> Result<Self, Error> {
            let len = buffer.as_ref().len();
            if len < HEADER_LEN {
                return Err(Error::Truncated);
            }
            if len > MAX_LEN {
                return Err(Error::BadLength);
            }
            Ok(OobIcmp { buffer })
        }

        fn addr(&self, r: Range<usize>) -> Ipv6Addr {
            let mut a = [0u8; 16];
            a.copy_from_slice(&self.buffer.as_ref()[r]);
            Ipv6Addr::from(a)
        }

        /// Where the dropped packet was going.
        pub fn orig_dst(&self) -> Ipv6Addr {
            self.addr(field::ORIG_DST)
        }

        /// The error packet's source: the reporting node.
        pub fn error_src(&self) -> Ipv6Addr {
            self.addr(field::ERROR_SRC)
        }

        /// The error packet's destination: the dropped packet's source.
        pub fn error_dst(&self) -> Ipv6Addr {
            self.addr(field::ERROR_DST)
        }

        /// The error, if it is one a node sends.
        pub fn kind(&self) -> Option<IcmpError> {
            let b = self.buffer.as_ref();
            IcmpError::from_type_code(b[field::ICMP_TYPE], b[field::ICMP_CODE])
        }

        /// The quoted body (sealed for the original destination), possibly empty.
        pub fn quote(&self) -> &[u8] {
            &self.buffer.as_ref()[field::QUOTE]
        }
    }

    impl<T: AsRef<[u8]> + AsMut<[u8]>> OobIcmp<T> {
        /// The quote, to open in place.
        pub fn quote_mut(&mut self) -> &mut [u8] {
            &mut self.buffer.as_mut()[field::QUOTE]
        }
    }

    /// Appends an out-of-band ICMP payload about a packet to `orig_dst` from `to` that `from`
    /// dropped, quoting `quote` when it fits (an empty quote otherwise). Returns its length.
    pub fn emit(
        out: &mut Vec<u8>,
        orig_dst: Ipv6Addr,
        from: Ipv6Addr,
        to: Ipv6Addr,
        hop_limit: u8,
        kind: IcmpError,
        quote: &[u8],
    ) -> usize {
        let quote = if quote.len() > MAX_LEN - HEADER_LEN {
            &[][..]
        } else {
            quote
        };
        let start = out.len();
        out.extend_from_slice(&orig_dst.octets());
        super::build_error(out, from, to, hop_limit, kind, quote);
        out.len() - start
    }
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
    fn oob_payload_deconstruct_construct_and_bounds() {
        let orig: Ipv6Addr = "4ab::1".parse().unwrap();
        let from: Ipv6Addr = "437::".parse().unwrap();
        let to: Ipv6Addr = "430::1".parse().unwrap();
        let mut out = Vec::new();
        let n = oob::emit(&mut out, orig, from, to, 64, IcmpError::HopLimit, &[7; 100]);
        assert_eq!(n, out.len());
        assert_eq!(n, oob::HEADER_LEN + 100);
        assert_eq!(&out[..16], &orig.octets());
        let v = oob::OobIcmp::new_checked(&out[..]).unwrap();
        assert_eq!(
            (v.orig_dst(), v.error_src(), v.error_dst()),
            (orig, from, to)
        );
        assert_eq!(v.kind(), Some(IcmpError::HopLimit));
        assert_eq!(v.quote(), &[7; 100]);
        // A quote past the minimum MTU is left out; the view refuses short and long payloads.
        let mut big = Vec::new();
        oob::emit(&mut big, orig, from, to, 64, IcmpError::NoRoute, &[1; 1300]);
        assert_eq!(big.len(), oob::HEADER_LEN);
        assert!(oob::OobIcmp::new_checked(&out[..63]).is_err());
        assert!(oob::OobIcmp::new_checked(&vec![0u8; oob::MAX_LEN + 1][..]).is_err());
        assert!(oob::OobIcmp::new_checked(&vec![0u8; oob::MAX_LEN][..]).is_ok());
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
