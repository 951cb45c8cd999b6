//! IPv6 header view (RFC 8200) and the walk over extension headers.

use std::net::Ipv6Addr;

use super::{get_u16, protocol, set_u16, Error};
use crate::checksum;

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Extension header fields (RFC 8200 §4.3–4.6): next header, then length in 8-octet units not
/// counting the first eight.
mod ext {
    pub const NXT_HDR: usize = 0;
    pub const LEN: usize = 1;
}

/// The upper-layer header found after the extension headers; see [`Ipv6Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Next-header value that ended the walk: the L4 protocol, or [`protocol::FRAGMENT`] (44) for a
    /// fragment, or anything else the walk does not step over (ESP, AH, no-next-header).
    pub protocol: u8,
    /// Offset of that header from the start of the packet.
    pub offset: usize,
}

/// A view over an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checks; getters may panic if it is too short.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps untrusted bytes: version 6, fixed header and the payload length it claims within the
    /// buffer. Jumbograms (payload length 0 with a jumbo option) are read as an empty payload.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Wraps bytes that must start with an IPv6 fixed header (version 6, 40 bytes), without
    /// checking the payload length field: for packets whose length the buffer itself gives (a
    /// TUN read's segment, a packet opened from a frame), where only the header is read.
    pub fn new_header_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.version() != 6 {
            return Err(Error::BadVersion);
        }
        Ok(p)
    }

    /// The checks of [`Self::new_checked`].
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::BadVersion);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn first_word(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class: DSCP (high six bits) and ECN (low two bits).
    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 0x03
    }

    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_bytes(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        a
    }

    pub fn dst_bytes(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        a
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_bytes())
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_bytes())
    }

    /// Everything after the fixed header up to the payload length (extension headers included).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The pseudo-header sum for an upper-layer segment of `l4_len` bytes with protocol `proto`.
    pub fn pseudo_sum(&self, proto: u8, l4_len: u32) -> u16 {
        checksum::pseudo_v6(self.src_bytes(), self.dst_bytes(), proto, l4_len)
    }

    /// Walks hop-by-hop (0), routing (43) and destination-options (60) headers to the upper layer.
    ///
    /// Stops at anything else, including a fragment header (44), which is returned as the
    /// protocol so callers can refuse fragments. Fails with `Truncated` when an extension header
    /// runs past the payload length. Never loops more than `payload_len / 8` times.
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        let b = self.buffer.as_ref();
        let end = HEADER_LEN + usize::from(self.payload_len());
        let mut nh = self.next_header();
        let mut off = HEADER_LEN;
        loop {
            match nh {
                protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DEST_OPTIONS => {
                    if off + 2 > end {
                        return Err(Error::Truncated);
                    }
                    let len = (usize::from(b[off + ext::LEN]) + 1) * 8;
                    if off + len > end {
                        return Err(Error::Truncated);
                    }
                    nh = b[off + ext::NXT_HDR];
                    off += len;
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol: nh,
                        offset: off,
                    })
                }
            }
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    fn set_first_word(&mut self, w: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    pub fn set_version(&mut self, v: u8) {
        let w = self.first_word() & 0x0fff_ffff;
        self.set_first_word(w | (u32::from(v) << 28));
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let w = self.first_word() & 0xf00f_ffff;
        self.set_first_word(w | (u32::from(tc) << 20));
    }

    pub fn set_flow_label(&mut self, label: u32) {
        let w = self.first_word() & 0xfff0_0000;
        self.set_first_word(w | (label & 0x000f_ffff));
    }

    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = nh;
    }

    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The fields of the fixed IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Result<Self, Error> {
        p.check_len()?;
        Ok(Ipv6Repr {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: usize::from(p.payload_len()),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header. The buffer must hold at least 40 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv6Packet<T>) {
        p.set_first_word(0x6000_0000);
        p.set_traffic_class(self.traffic_class);
        p.set_flow_label(self.flow_label);
        p.set_payload_len(self.payload_len as u16);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: [u8; 44] = [
        0x6a, 0x51, 0x23, 0x45, 0x00, 0x04, 0x11, 0x40, //
        0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
        0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: 17,
            payload_len: 4,
            hop_limit: 64,
            traffic_class: 0xa5,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xa5);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: 17,
                offset: 40
            })
        );
    }

    #[test]
    fn header_checked_reads_the_header_whatever_the_length_field_says() {
        // A payload length past the buffer: refused by new_checked, fine for the header alone.
        let mut b = PACKET;
        b[5] = 200;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).err(),
            Some(Error::Truncated)
        );
        let p = Ipv6Packet::new_header_checked(&b[..]).unwrap();
        assert_eq!(p.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            Ipv6Packet::new_header_checked(&PACKET[..39]).err(),
            Some(Error::Truncated)
        );
        let mut v4 = PACKET;
        v4[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_header_checked(&v4[..]).err(),
            Some(Error::BadVersion)
        );
    }

    #[test]
    fn construct() {
        let mut b = vec![0xffu8; 44];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version(6);
        p.set_traffic_class(0xa5);
        p.set_flow_label(0x12345);
        p.set_payload_len(4);
        p.set_next_header(17);
        p.set_hop_limit(64);
        p.set_src_addr("fd00::1".parse().unwrap());
        p.set_dst_addr("fd00::2".parse().unwrap());
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(b, PACKET);
    }

    #[test]
    fn parse() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&p), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut b = vec![0u8; 44];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        repr().emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(b, PACKET);
    }

    fn with_ext(chain: &[(u8, usize)], last: u8) -> Vec<u8> {
        // chain: (header type, total length in bytes) of each extension header in order.
        let ext_len: usize = chain.iter().map(|c| c.1).sum();
        let mut b = vec![0u8; 40 + ext_len + 8];
        b[0] = 0x60;
        b[4..6].copy_from_slice(&((ext_len + 8) as u16).to_be_bytes());
        b[6] = chain.first().map_or(last, |c| c.0);
        let mut off = 40;
        for (i, &(_, len)) in chain.iter().enumerate() {
            b[off] = chain.get(i + 1).map_or(last, |c| c.0);
            b[off + 1] = (len / 8 - 1) as u8;
            off += len;
        }
        b
    }

    #[test]
    fn walks_hop_by_hop_routing_dest_options() {
        let b = with_ext(&[(0, 8), (43, 24), (60, 16)], 6);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: 6,
                offset: 40 + 48
            })
        );
    }

    #[test]
    fn fragment_header_reported() {
        let b = with_ext(&[(0, 8), (44, 8)], 17);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: protocol::FRAGMENT,
                offset: 48
            })
        );
    }

    #[test]
    fn extension_past_payload_is_truncated() {
        let mut b = with_ext(&[(60, 8)], 6);
        b[41] = 5; // claims 48 bytes in a 16-byte payload
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));
    }

    #[test]
    fn new_checked_rejects() {
        assert_eq!(
            Ipv6Packet::new_checked(&PACKET[..39]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Ipv6Packet::new_checked(&PACKET[..43]).unwrap_err(),
            Error::Truncated
        );
        let mut b = PACKET;
        b[0] = 0x4a;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            Error::BadVersion
        );
    }
}
