//! UDP header view (RFC 768).

use super::{get_u16, set_u16, Error};
use crate::checksum;

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field (virtio `csum_offset` for UDP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view over a UDP datagram. The length field bounds the payload; bytes after it are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps untrusted bytes: 8-byte header, length field ≥ 8 and within the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = usize::from(self.len());
        if l < HEADER_LEN {
            return Err(Error::BadLength);
        }
        if l > len {
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

    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the payload is empty (length field 8).
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Whether the checksum verifies, given the pseudo-header sum (with the length field as L4
    /// length). A zero checksum means "none" over IPv4 and verifies; over IPv6 the caller must
    /// refuse it (RFC 8200 §8.1).
    pub fn verify_checksum(&self, pseudo: u16) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = &self.buffer.as_ref()[..usize::from(self.len())];
        checksum::add(pseudo, checksum::sum(d)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    pub fn set_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }

    /// Computes and stores the checksum over header and payload, given the pseudo-header sum.
    /// A computed 0 is written as 0xffff (RFC 768: zero means "no checksum").
    pub fn fill_checksum(&mut self, pseudo: u16) {
        self.set_checksum(0);
        let l = usize::from(self.len());
        let s = checksum::add(pseudo, checksum::sum(&self.buffer.as_ref()[..l]));
        let c = checksum::finish(s);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl UdpRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>) -> Result<Self, Error> {
        p.check_len()?;
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.payload().len(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with a zero checksum; call [`UdpPacket::fill_checksum`] once the payload
    /// is in place.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut UdpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + self.payload_len) as u16);
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{pseudo_v6, reference};

    const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn datagram() -> Vec<u8> {
        let mut b = vec![0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4];
        let s = crate::checksum::add(pseudo_v6(SRC, DST, 17, 12), reference::sum(&b));
        b[6..8].copy_from_slice(&(!s).to_be_bytes());
        b
    }

    fn repr() -> UdpRepr {
        UdpRepr {
            src_port: 1234,
            dst_port: 5678,
            payload_len: 4,
        }
    }

    #[test]
    fn deconstruct() {
        let b = datagram();
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 5678);
        assert_eq!(p.len(), 12);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert!(p.verify_checksum(pseudo_v6(SRC, DST, 17, 12)));
    }

    #[test]
    fn construct() {
        let mut b = vec![0x77u8; 12];
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(1234);
        p.set_dst_port(5678);
        p.set_len(12);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        p.fill_checksum(pseudo_v6(SRC, DST, 17, 12));
        assert_eq!(b, datagram());
    }

    #[test]
    fn parse() {
        let b = datagram();
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p), Ok(repr()));
    }

    #[test]
    fn emit() {
        let mut b = vec![0u8; 12];
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        repr().emit(&mut p);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        p.fill_checksum(pseudo_v6(SRC, DST, 17, 12));
        assert_eq!(b, datagram());
    }

    #[test]
    fn new_checked_rejects() {
        let b = datagram();
        assert_eq!(
            UdpPacket::new_checked(&b[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&b[..11]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = b.clone();
        bad[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            UdpPacket::new_checked(&bad[..]).unwrap_err(),
            Error::BadLength
        );
    }

    #[test]
    fn udp_checksum_zero_written_as_ffff() {
        // Find a payload whose checksum computes to zero, then check fill_checksum writes 0xffff.
        let pseudo = pseudo_v6(SRC, DST, 17, 10);
        let mut b = vec![0x04, 0xd2, 0x16, 0x2e, 0x00, 0x0a, 0x00, 0x00, 0, 0];
        // Choose the last word so the total sum is 0xffff (checksum 0).
        let partial = crate::checksum::add(pseudo, reference::sum(&b));
        let w = !partial;
        b[8..10].copy_from_slice(&w.to_be_bytes());
        assert_eq!(
            crate::checksum::add(pseudo, reference::sum(&b)),
            0xffff,
            "test setup: checksum must compute to zero"
        );
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.fill_checksum(pseudo);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(pseudo));
    }
}
