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

/// Lowers the MSS option of a TCP SYN in the IPv6 packet `packet` to `mss` when it is larger
/// (MSS clamping): the receiver of the SYN then sends segments that fit `mss`. The checksum is
/// updated incrementally (RFC 1624), so a complete checksum stays complete and a partial one
/// (`NEEDS_CSUM`, which does not cover the options) must not be passed. Returns whether the
/// packet changed; anything that is not an IPv6 TCP SYN with a well-formed MSS option is left
/// alone.
pub fn clamp_mss_v6(packet: &mut [u8], mss: u16) -> bool {
    let Ok(ip) = super::ipv6::Ipv6Packet::new_checked(&*packet) else {
        return false;
    };
    let Ok(ul) = ip.upper_layer() else {
        return false;
    };
    if ul.protocol != super::protocol::TCP {
        return false;
    }
    let tcp = &mut packet[ul.offset..];
    if tcp.len() < HEADER_LEN || tcp[field::FLAGS] & flags::SYN == 0 {
        return false;
    }
    let header = usize::from(tcp[field::DATA_OFF] >> 4) * 4;
    if header < HEADER_LEN || header > tcp.len() {
        return false;
    }
    let mut at = HEADER_LEN;
    while at < header {
        match tcp[at] {
            0 => return false, // end of options
            1 => at += 1,      // no-op
            kind => {
                if at + 1 >= header {
                    return false;
                }
                let len = usize::from(tcp[at + 1]);
                if len < 2 || at + len > header {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[at + 2], tcp[at + 3]]);
                    if old <= mss {
                        return false;
                    }
                    tcp[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
                    // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). The option starts at an even
                    // offset or not; the word holding the value is aligned either way only if
                    // `at + 2` is even, so sum the two bytes as they sit in their words.
                    let c = u16::from_be_bytes([tcp[field::CHECKSUM], tcp[field::CHECKSUM + 1]]);
                    let (old_w, new_w) = if (at + 2) % 2 == 0 {
                        (old, mss)
                    } else {
                        (old.rotate_left(8), mss.rotate_left(8))
                    };
                    let sum = crate::checksum::add(crate::checksum::add(!c, !old_w), new_w);
                    tcp[field::CHECKSUM..field::CHECKSUM + 2]
                        .copy_from_slice(&(!sum).to_be_bytes());
                    return true;
                }
                at += len;
            }
        }
    }
    false
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

    /// An IPv6 TCP packet with `flags` and `opts` (padded to a multiple of 4 with end-of-options)
    /// and a complete checksum.
    fn syn_v6(flags_: u8, opts: &[u8]) -> Vec<u8> {
        let mut o = opts.to_vec();
        while o.len() % 4 != 0 {
            o.push(0);
        }
        let tcp_len = HEADER_LEN + o.len() + 3;
        let mut p = vec![0u8; 40 + tcp_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8] = 0x04;
        p[23] = 1;
        p[24] = 0x04;
        p[39] = 2;
        let t = &mut p[40..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[12] = (((HEADER_LEN + o.len()) / 4) << 4) as u8;
        t[13] = flags_;
        t[HEADER_LEN..HEADER_LEN + o.len()].copy_from_slice(&o);
        t[HEADER_LEN + o.len()..].copy_from_slice(b"syn");
        fill_v6_checksum(&mut p);
        p
    }

    fn fill_v6_checksum(p: &mut [u8]) {
        let (src, dst): ([u8; 16], [u8; 16]) =
            (p[8..24].try_into().unwrap(), p[24..40].try_into().unwrap());
        let len = (p.len() - 40) as u32;
        p[56..58].copy_from_slice(&[0, 0]);
        let pseudo = crate::checksum::pseudo_v6(src, dst, 6, len);
        let sum = crate::checksum::add(pseudo, reference::sum(&p[40..]));
        p[56..58].copy_from_slice(&(!sum).to_be_bytes());
    }

    fn mss_of(p: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([p[40 + at], p[40 + at + 1]])
    }

    #[test]
    fn mss_clamping_lowers_the_option_and_keeps_the_checksum_complete() {
        // The option at an even offset, and after one no-op at an odd one; in a SYN and a
        // SYN-ACK; several MSS values, 0xffff included.
        for (opts, at) in [
            (vec![2, 4, 0x05, 0x3c], 22),
            (vec![1, 2, 4, 0x05, 0x3c], 23),
            (vec![1, 1, 4, 2, 2, 4, 0xff, 0xff], 26),
        ] {
            for flags_ in [flags::SYN, flags::SYN | flags::ACK] {
                for to in [1220u16, 1282, 0x1000] {
                    let mut p = syn_v6(flags_, &opts);
                    let before = mss_of(&p, at);
                    let changed = clamp_mss_v6(&mut p, to);
                    assert_eq!(changed, before > to);
                    assert_eq!(mss_of(&p, at), before.min(to));
                    let mut full = p.clone();
                    fill_v6_checksum(&mut full);
                    assert_eq!(p, full, "checksum after clamping to {to} at {at}");
                }
            }
        }
    }

    #[test]
    fn mss_clamping_leaves_everything_else_alone() {
        let opts = [2, 4, 0x05, 0x3c];
        // Not a SYN.
        let mut p = syn_v6(flags::ACK, &opts);
        assert!(!clamp_mss_v6(&mut p, 1200));
        // A truncated option list, an option running past the header, end of options first.
        for bad in [vec![2], vec![3, 9, 1], vec![0, 2, 4, 0x05, 0x3c]] {
            let mut p = syn_v6(flags::SYN, &bad);
            let orig = p.clone();
            assert!(!clamp_mss_v6(&mut p, 1200));
            assert_eq!(p, orig);
        }
        // Not TCP, not IPv6, too short.
        let mut p = syn_v6(flags::SYN, &opts);
        p[6] = 17;
        assert!(!clamp_mss_v6(&mut p, 1200));
        let mut p = syn_v6(flags::SYN, &opts);
        p[0] = 0x45;
        assert!(!clamp_mss_v6(&mut p, 1200));
        assert!(!clamp_mss_v6(&mut [0x60; 30], 1200));
    }
}
