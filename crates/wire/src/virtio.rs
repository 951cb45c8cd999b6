//! The Linux `struct virtio_net_hdr` that prefixes every packet on a TUN device opened with
//! `IFF_VNET_HDR`.
//!
//! Multi-byte fields are **native-endian** (the "legacy virtio" layout the kernel uses for TUN
//! unless `TUNSETVNETLE` is set), never hard-coded little-endian. The 12-byte layout
//! (`TUNSETVNETHDRSZ` 12) appends a `num_buffers` field that TUN ignores; [`VirtioNetHdr::emit`]
//! writes it as zero.

use core::fmt;

/// Size of the default header.
pub const LEN: usize = 10;
/// Size of the header with `num_buffers` (`VIRTIO_NET_F_MRG_RXBUF` layout).
pub const LEN_MRG_RXBUF: usize = 12;

/// Values of [`VirtioNetHdr::flags`].
pub mod flags {
    /// The L4 checksum must be completed: the field at `csum_start + csum_offset` holds the folded,
    /// non-complemented pseudo-header sum.
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has already been verified.
    pub const DATA_VALID: u8 = 2;
    /// Receive-segment-coalescing info (not used by TUN).
    pub const RSC_INFO: u8 = 4;
}

/// Values of [`VirtioNetHdr::gso_type`].
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    /// Legacy UFO (IP fragmentation of one big datagram).
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    /// USO: one datagram per `gso_size` bytes.
    pub const UDP_L4: u8 = 5;
    /// Flag bit: the super-packet carries CWR, to be set on the first segment only.
    pub const ECN: u8 = 0x80;
}

/// Why bytes were not accepted as a virtio header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer than 10 bytes.
    Truncated,
    /// `emit` was given a buffer that is neither 10 nor 12 bytes.
    BadBufferLen,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "virtio_net_hdr truncated",
            Error::BadBufferLen => "virtio_net_hdr buffer must be 10 or 12 bytes",
        })
    }
}

impl std::error::Error for Error {}

mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
    pub const NUM_BUFFERS: usize = 10;
}

/// The fields of `struct virtio_net_hdr`, as values. Unknown flag bits and GSO types are kept as
/// they came; the consumer decides what to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// On read only a hint (the linear length); re-derive from the packet.
    pub hdr_len: u16,
    /// Payload bytes per segment (MSS for TCP).
    pub gso_size: u16,
    /// Offset of the L4 header (where checksumming starts).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`: 16 for TCP, 6 for UDP.
    pub csum_offset: u16,
}

fn get(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn put(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

impl VirtioNetHdr {
    /// The header of a plain packet: no GSO, no checksum request.
    pub const NONE: VirtioNetHdr = VirtioNetHdr {
        flags: 0,
        gso_type: gso::NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads the leading 10 bytes of `buf` (either layout; the caller skips 10 or 12 bytes to the
    /// packet according to the size it configured).
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        if buf.len() < LEN {
            return Err(Error::Truncated);
        }
        Ok(VirtioNetHdr {
            flags: buf[field::FLAGS],
            gso_type: buf[field::GSO_TYPE],
            hdr_len: get(buf, field::HDR_LEN),
            gso_size: get(buf, field::GSO_SIZE),
            csum_start: get(buf, field::CSUM_START),
            csum_offset: get(buf, field::CSUM_OFFSET),
        })
    }

    /// Writes the header into `out`, which must be exactly [`LEN`] or [`LEN_MRG_RXBUF`] bytes
    /// (`num_buffers` is written as zero).
    pub fn emit(&self, out: &mut [u8]) -> Result<(), Error> {
        if out.len() != LEN && out.len() != LEN_MRG_RXBUF {
            return Err(Error::BadBufferLen);
        }
        let img = self.to_bytes();
        out.copy_from_slice(&img[..out.len()]);
        Ok(())
    }

    /// The 12-byte image; take `[..10]` for the default layout.
    pub fn to_bytes(&self) -> [u8; LEN_MRG_RXBUF] {
        let mut b = [0u8; LEN_MRG_RXBUF];
        b[field::FLAGS] = self.flags;
        b[field::GSO_TYPE] = self.gso_type;
        put(&mut b, field::HDR_LEN, self.hdr_len);
        put(&mut b, field::GSO_SIZE, self.gso_size);
        put(&mut b, field::CSUM_START, self.csum_start);
        put(&mut b, field::CSUM_OFFSET, self.csum_offset);
        put(&mut b, field::NUM_BUFFERS, 0);
        b
    }

    /// `gso_type` without the ECN bit.
    pub const fn gso_kind(&self) -> u8 {
        self.gso_type & !gso::ECN
    }

    /// Whether the ECN bit of `gso_type` is set.
    pub const fn gso_ecn(&self) -> bool {
        self.gso_type & gso::ECN != 0
    }

    pub const fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }

    pub const fn data_valid(&self) -> bool {
        self.flags & flags::DATA_VALID != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> VirtioNetHdr {
        VirtioNetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV6,
            hdr_len: 0x0102,
            gso_size: 1348,
            csum_start: 40,
            csum_offset: 16,
        }
    }

    fn bytes() -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = 1;
        b[1] = 4;
        b[2..4].copy_from_slice(&0x0102u16.to_ne_bytes());
        b[4..6].copy_from_slice(&1348u16.to_ne_bytes());
        b[6..8].copy_from_slice(&40u16.to_ne_bytes());
        b[8..10].copy_from_slice(&16u16.to_ne_bytes());
        b
    }

    #[test]
    fn deconstruct() {
        let h = VirtioNetHdr::parse(&bytes()).unwrap();
        assert!(h.needs_csum());
        assert!(!h.data_valid());
        assert_eq!(h.gso_kind(), gso::TCPV6);
        assert!(!h.gso_ecn());
        assert_eq!(h.hdr_len, 0x0102);
        assert_eq!(h.gso_size, 1348);
        assert_eq!(h.csum_start, 40);
        assert_eq!(h.csum_offset, 16);
    }

    #[test]
    fn construct() {
        let mut h = VirtioNetHdr::NONE;
        h.flags = flags::NEEDS_CSUM;
        h.gso_type = gso::TCPV6;
        h.hdr_len = 0x0102;
        h.gso_size = 1348;
        h.csum_start = 40;
        h.csum_offset = 16;
        assert_eq!(h.to_bytes(), bytes());
    }

    #[test]
    fn parse() {
        assert_eq!(VirtioNetHdr::parse(&bytes()[..10]), Ok(hdr()));
        assert_eq!(VirtioNetHdr::parse(&bytes()), Ok(hdr()));
        assert_eq!(VirtioNetHdr::parse(&bytes()[..9]), Err(Error::Truncated));
    }

    #[test]
    fn emit() {
        let mut ten = [0xffu8; 10];
        hdr().emit(&mut ten).unwrap();
        assert_eq!(ten, bytes()[..10]);
        let mut twelve = [0xffu8; 12];
        hdr().emit(&mut twelve).unwrap();
        assert_eq!(twelve, bytes());
        assert_eq!(hdr().emit(&mut [0u8; 11]), Err(Error::BadBufferLen));
    }

    #[test]
    fn fields_are_native_endian() {
        // Pitfall 7 of docs/protocol.md §9.7: the layout follows the host, not little-endian.
        let b = hdr().to_bytes();
        assert_eq!(&b[4..6], &1348u16.to_ne_bytes());
        if cfg!(target_endian = "big") {
            assert_eq!(&b[4..6], &[0x05, 0x44]);
        } else {
            assert_eq!(&b[4..6], &[0x44, 0x05]);
        }
    }

    #[test]
    fn unknown_gso_type_kept() {
        let mut b = bytes();
        b[1] = 0x87;
        let h = VirtioNetHdr::parse(&b).unwrap();
        assert_eq!(h.gso_type, 0x87);
        assert_eq!(h.gso_kind(), 7);
        assert!(h.gso_ecn());
    }
}
