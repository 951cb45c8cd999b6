//! TCP header view (RFC 9293).

use super::{get_u16, get_u32, set_u16, set_u32, Error};
use crate::checksum;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field (virtio `csum_offset` for TCP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ_NUM: usize = 4;
    pub const ACK_NUM: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// Bits of the TCP flags byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A view over a TCP segment (header, options and payload). The buffer is the whole segment: its
/// length is the L4 length used in the pseudo-header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps untrusted bytes: data offset ≥ 5 and the header within the buffer.
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
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        if hl > len {
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

    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    pub fn urg(&self) -> bool {
        self.flags() & flags::URG != 0
    }

    pub fn ece(&self) -> bool {
        self.flags() & flags::ECE != 0
    }

    pub fn cwr(&self) -> bool {
        self.flags() & flags::CWR != 0
    }

    pub fn window_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// The header bytes, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Whether the checksum verifies, given the pseudo-header sum (which must include this
    /// segment's length, i.e. the buffer length).
    pub fn verify_checksum(&self, pseudo: u16) -> bool {
        checksum::add(pseudo, checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::SEQ_NUM, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::ACK_NUM, v);
    }

    /// Sets the data offset from a length in bytes (a multiple of 4, 20..=60). Keeps the low
    /// nibble (reserved bits and the historic NS bit).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | (((len / 4) as u8) << 4);
    }

    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    pub fn set_window_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::WIN_SIZE, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::URGENT, v);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..hl]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }

    /// Computes and stores the checksum over the whole buffer, given the pseudo-header sum.
    pub fn fill_checksum(&mut self, pseudo: u16) {
        self.set_checksum(0);
        let s = checksum::add(pseudo, checksum::sum(self.buffer.as_ref()));
        self.set_checksum(checksum::finish(s));
    }
}

/// The fields of a TCP header; `options` are raw option bytes (a multiple of four, ≤ 40).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window_len: u16,
    pub urgent_at: u16,
    pub options: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &'a TcpPacket<&'a T>) -> Result<Self, Error> {
        p.check_len()?;
        let b: &'a [u8] = p.buffer.as_ref();
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window_len: p.window_len(),
            urgent_at: p.urgent_at(),
            options: &b[HEADER_LEN..p.header_len()],
        })
    }

    /// Header length, options included.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes the header with a zero checksum; call [`TcpPacket::fill_checksum`] once the payload
    /// is in place. The buffer must hold at least [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TcpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.buffer.as_mut()[field::DATA_OFF] = 0;
        p.set_header_len(self.buffer_len());
        p.set_flags(self.flags);
        p.set_window_len(self.window_len);
        p.set_checksum(0);
        p.set_urgent_at(self.urgent_at);
        p.options_mut().copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{pseudo_v4, reference};

    const SRC: [u8; 4] = [198, 18, 0, 1];
    const DST: [u8; 4] = [198, 18, 0, 2];

    // Header with a 4-byte option (MSS 1348), flags PSH|ACK, payload "hi!".
    fn segment() -> Vec<u8> {
        let mut b = vec![
            0x30, 0x39, 0x01, 0xbb, 0x01, 0x02, 0x03, 0x04, 0xa0, 0xb0, 0xc0, 0xd0, 0x60, 0x18,
            0x01, 0xf4, 0x00, 0x00, 0x00, 0x07, 0x02, 0x04, 0x05, 0x44, b'h', b'i', b'!',
        ];
        let pseudo = pseudo_v4(SRC, DST, 6, b.len() as u16);
        let sum = crate::checksum::add(pseudo, reference::sum(&b));
        b[16..18].copy_from_slice(&(!sum).to_be_bytes());
        b
    }

    const OPTS: [u8; 4] = [0x02, 0x04, 0x05, 0x44];

    fn repr() -> TcpRepr<'static> {
        TcpRepr {
            src_port: 12345,
            dst_port: 443,
            seq_number: 0x0102_0304,
            ack_number: 0xa0b0_c0d0,
            flags: flags::PSH | flags::ACK,
            window_len: 500,
            urgent_at: 7,
            options: &OPTS,
        }
    }

    #[test]
    fn deconstruct() {
        let b = segment();
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.src_port(), 12345);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.ack_number(), 0xa0b0_c0d0);
        assert_eq!(p.header_len(), 24);
        assert!(p.psh() && p.ack());
        assert!(!(p.fin() || p.syn() || p.rst() || p.urg() || p.ece() || p.cwr()));
        assert_eq!(p.window_len(), 500);
        assert_eq!(p.urgent_at(), 7);
        assert_eq!(p.options(), &OPTS);
        assert_eq!(p.payload(), b"hi!");
        assert!(p.verify_checksum(pseudo_v4(SRC, DST, 6, b.len() as u16)));
    }

    #[test]
    fn construct() {
        let mut b = vec![0xeeu8; 27];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(12345);
        p.set_dst_port(443);
        p.set_seq_number(0x0102_0304);
        p.set_ack_number(0xa0b0_c0d0);
        p.as_bytes_mut()[12] = 0;
        p.set_header_len(24);
        p.set_flags(flags::PSH | flags::ACK);
        p.set_window_len(500);
        p.set_urgent_at(7);
        p.options_mut().copy_from_slice(&OPTS);
        p.payload_mut().copy_from_slice(b"hi!");
        p.fill_checksum(pseudo_v4(SRC, DST, 6, 27));
        assert_eq!(b, segment());
    }

    #[test]
    fn parse() {
        let b = segment();
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p), Ok(repr()));
    }

    #[test]
    fn emit() {
        let r = repr();
        let mut b = vec![0x55u8; r.buffer_len() + 3];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        r.emit(&mut p);
        p.payload_mut().copy_from_slice(b"hi!");
        p.fill_checksum(pseudo_v4(SRC, DST, 6, 27));
        assert_eq!(b, segment());
    }

    #[test]
    fn new_checked_rejects() {
        let b = segment();
        assert_eq!(
            TcpPacket::new_checked(&b[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            TcpPacket::new_checked(&b[..23]).unwrap_err(),
            Error::Truncated
        );
        let mut bad = b.clone();
        bad[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).unwrap_err(),
            Error::BadHeaderLen
        );
    }

    #[test]
    fn corrupted_checksum_fails() {
        let mut b = segment();
        b[25] ^= 1;
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum(pseudo_v4(SRC, DST, 6, 27)));
    }
}
