//! Zero-copy views over IPv4, IPv6, TCP and UDP headers.
//!
//! Each view wraps any `T: AsRef<[u8]>` (setters need `AsMut<[u8]>` too). `new_checked` validates
//! lengths once, after which every getter is in bounds; `new_unchecked` is for buffers the caller
//! built itself. Each view has a `*Repr` with `parse` / `emit` / `buffer_len` for building packets.
//!
//! [`locate`] is the one-call parse the offload engine and the TUN path use: IP version, L4
//! protocol, L4 offset (walking IPv6 extension headers) and the packet length the header claims.

pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr, UpperLayer};
pub use tcp::{TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};

use core::fmt;

/// Why bytes were not accepted as a header. Small and `Copy`: the fault is always the sender's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer ends before the header (or the length it claims) does.
    Truncated,
    /// The version nibble is not the one the view expects.
    BadVersion,
    /// A header length field is below the minimum.
    BadHeaderLen,
    /// A length field is inconsistent (e.g. IPv4 total length shorter than its header).
    BadLength,
    /// A header checksum does not verify.
    BadChecksum,
    /// An IP fragment, where a whole datagram was required.
    Fragment,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated header",
            Error::BadVersion => "wrong IP version",
            Error::BadHeaderLen => "header length below minimum",
            Error::BadLength => "inconsistent length field",
            Error::BadChecksum => "bad header checksum",
            Error::Fragment => "IP fragment",
        })
    }
}

impl std::error::Error for Error {}

/// IP protocol / IPv6 next-header numbers used by hypha.
pub mod protocol {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTIONS: u8 = 60;
}

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

/// Where the upper-layer header of an IP packet sits; see [`locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub version: IpVersion,
    /// Upper-layer protocol. [`protocol::FRAGMENT`] means the walk stopped at an IPv6 fragment
    /// header: the packet is a fragment and must not be treated as carrying a whole L4 header.
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the packet.
    pub l4_offset: usize,
    /// Packet length according to the IP header (IPv4 total length, 40 + IPv6 payload length);
    /// never more than the buffer.
    pub ip_len: usize,
    /// IPv4 header with options, or IPv6 with extension headers.
    pub has_options: bool,
}

impl Located {
    /// Length of everything after the L3 headers, as the IP header claims it.
    pub fn l4_len(&self) -> usize {
        self.ip_len - self.l4_offset
    }

    /// Whether this is an IPv4 fragment (MF or offset set) or an IPv6 packet with a fragment
    /// header: no whole L4 header can be assumed.
    pub fn is_fragment(&self) -> bool {
        self.protocol == protocol::FRAGMENT
    }
}

/// Parses the IP header of `packet` (version from the first nibble) and finds the upper layer.
///
/// IPv4 fragments other than the first carry no L4 header; they are reported with protocol
/// [`protocol::FRAGMENT`] too, so one check refuses fragments of both versions.
pub fn locate(packet: &[u8]) -> Result<Located, Error> {
    match packet.first().map(|b| b >> 4) {
        None => Err(Error::Truncated),
        Some(4) => {
            let p = Ipv4Packet::new_checked(packet)?;
            let fragment = p.more_frags() || p.frag_offset() != 0;
            Ok(Located {
                version: IpVersion::V4,
                protocol: if fragment {
                    protocol::FRAGMENT
                } else {
                    p.protocol()
                },
                l4_offset: p.header_len(),
                ip_len: usize::from(p.total_len()),
                has_options: p.header_len() > ipv4::HEADER_LEN,
            })
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(packet)?;
            let upper = p.upper_layer()?;
            Ok(Located {
                version: IpVersion::V6,
                protocol: upper.protocol,
                l4_offset: upper.offset,
                ip_len: ipv6::HEADER_LEN + usize::from(p.payload_len()),
                has_options: upper.offset > ipv6::HEADER_LEN,
            })
        }
        Some(_) => Err(Error::BadVersion),
    }
}

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_v4_with_options() {
        let mut b = [0u8; 32];
        b[0] = 0x46; // IHL 6: 4 option bytes
        b[2..4].copy_from_slice(&32u16.to_be_bytes());
        b[9] = protocol::UDP;
        let l = locate(&b).unwrap();
        assert_eq!(l.version, IpVersion::V4);
        assert_eq!(l.protocol, protocol::UDP);
        assert_eq!(l.l4_offset, 24);
        assert_eq!(l.ip_len, 32);
        assert!(l.has_options);
        assert_eq!(l.l4_len(), 8);
    }

    #[test]
    fn locate_v4_fragment_reported_as_fragment() {
        let mut b = [0u8; 28];
        b[0] = 0x45;
        b[2..4].copy_from_slice(&28u16.to_be_bytes());
        b[6] = 0x20; // MF
        b[9] = protocol::TCP;
        assert_eq!(locate(&b).unwrap().protocol, protocol::FRAGMENT);
    }

    #[test]
    fn locate_rejects_garbage() {
        assert_eq!(locate(&[]), Err(Error::Truncated));
        assert_eq!(locate(&[0x50; 40]), Err(Error::BadVersion));
        assert_eq!(locate(&[0x45; 10]), Err(Error::Truncated));
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every view accepts or refuses arbitrary bytes without panicking, and once accepted all
        /// getters stay in bounds.
        #[test]
        fn views_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(l) = locate(&b) {
                prop_assert!(l.l4_offset <= l.ip_len && l.ip_len <= b.len());
            }
            if let Ok(p) = Ipv4Packet::new_checked(&b[..]) {
                let _ = (p.payload(), p.options(), p.verify_checksum(), p.src_addr(), p.frag_offset());
            }
            if let Ok(p) = Ipv6Packet::new_checked(&b[..]) {
                let _ = (p.payload(), p.flow_label(), p.dst_addr());
                if let Ok(u) = p.upper_layer() {
                    prop_assert!(u.offset <= b.len());
                }
            }
            if let Ok(p) = TcpPacket::new_checked(&b[..]) {
                let _ = (p.payload(), p.options(), p.verify_checksum(0), p.flags());
            }
            if let Ok(p) = UdpPacket::new_checked(&b[..]) {
                let _ = (p.payload(), p.verify_checksum(0));
            }
        }
    }
}
