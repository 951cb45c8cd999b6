//! GSO split: one packet read from a TUN device (virtio header + possibly a super-packet) into
//! wire-sized packets with complete headers and checksums.

use core::fmt;

use wire::checksum;
use wire::ip::{self, protocol, IpVersion, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
use wire::virtio::{gso, VirtioNetHdr};

use crate::sink::SegmentSink;

/// Why a packet read from the TUN device could not be split. Every case is the packet's (or the
/// kernel's) fault, never fatal: count it and drop the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// The IP / L4 headers do not parse.
    Malformed(ip::Error),
    /// A GSO type hypha does not split (legacy UFO, or a value it does not know); the raw
    /// `gso_type` byte.
    UnsupportedGso(u8),
    /// The GSO type does not match the packet (e.g. TCPV4 on an IPv6 or UDP packet).
    GsoMismatch,
    /// An IP fragment (IPv4 MF/offset, or an IPv6 fragment header) marked for GSO or checksum
    /// completion.
    Fragment,
    /// `gso_size` is 0 on a GSO packet.
    ZeroGsoSize,
    /// `NEEDS_CSUM` on a packet that is not TCP/UDP, with `csum_start`/`csum_offset` outside it.
    BadChecksumOffsets,
    /// The sink returned `None`; `written` segments were produced before.
    SinkFull { written: usize },
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Malformed(e) => write!(f, "malformed packet from TUN: {e}"),
            SplitError::UnsupportedGso(t) => write!(f, "unsupported GSO type {t:#x}"),
            SplitError::GsoMismatch => f.write_str("GSO type does not match the packet"),
            SplitError::Fragment => f.write_str("IP fragment marked for offload"),
            SplitError::ZeroGsoSize => f.write_str("GSO packet with gso_size 0"),
            SplitError::BadChecksumOffsets => f.write_str("csum_start/csum_offset out of range"),
            SplitError::SinkFull { written } => {
                write!(f, "segment sink full after {written} segments")
            }
        }
    }
}

impl std::error::Error for SplitError {}

impl From<ip::Error> for SplitError {
    fn from(e: ip::Error) -> Self {
        SplitError::Malformed(e)
    }
}

/// Splits one packet read from a TUN device into the packets it stands for, writing each into a
/// buffer from `sink`. Returns the number of segments written.
///
/// * `GSO_NONE`: the packet is copied as is; with `NEEDS_CSUM` its L4 checksum is completed.
/// * `TCPV4` / `TCPV6` / `UDP_L4`: cut into `gso_size`-byte payloads, each with a copy of all
///   headers (IPv4 options and IPv6 extension headers included) fixed up the way the kernel's
///   own GSO does: IPv4 total length, ID = base + i and header checksum; IPv6 payload length
///   (extension headers counted); TCP sequence number, FIN/PSH on the last segment only, CWR on
///   the first only; UDP length; full L4 checksum per segment (a UDP checksum computing to 0 is
///   written 0xffff). There is no limit on the number of segments.
/// * anything else: [`SplitError::UnsupportedGso`].
///
/// `hdr_len` and `csum_start` from the kernel are not trusted: headers are re-derived from the
/// packet. Trailing bytes after the IP length are dropped from GSO output. Never panics.
pub fn split<S: SegmentSink + ?Sized>(
    vnet: &VirtioNetHdr,
    packet: &[u8],
    sink: &mut S,
) -> Result<usize, SplitError> {
    let kind = vnet.gso_kind();
    match kind {
        gso::NONE => return single(vnet, packet, sink),
        gso::TCPV4 | gso::TCPV6 | gso::UDP_L4 => {}
        _ => return Err(SplitError::UnsupportedGso(vnet.gso_type)),
    }
    if vnet.gso_size == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let loc = ip::locate(packet)?;
    if loc.is_fragment() {
        return Err(SplitError::Fragment);
    }
    let packet = &packet[..loc.ip_len];
    let l4 = &packet[loc.l4_offset..];
    let is_tcp = match (kind, loc.version, loc.protocol) {
        (gso::TCPV4, IpVersion::V4, protocol::TCP) | (gso::TCPV6, IpVersion::V6, protocol::TCP) => {
            true
        }
        (gso::UDP_L4, _, protocol::UDP) => false,
        _ => return Err(SplitError::GsoMismatch),
    };
    let l4_hdr_len = if is_tcp {
        TcpPacket::new_checked(l4)?.header_len()
    } else if l4.len() < ip::udp::HEADER_LEN {
        return Err(SplitError::Malformed(ip::Error::Truncated));
    } else {
        ip::udp::HEADER_LEN
    };
    let hdr_len = loc.l4_offset + l4_hdr_len;
    let (headers, payload) = packet.split_at(hdr_len);
    let pseudo = PseudoBase::new(headers, loc.version, loc.protocol);
    let gso_size = usize::from(vnet.gso_size);
    let count = payload.len().div_ceil(gso_size).max(1);
    let base_id = match loc.version {
        IpVersion::V4 => Ipv4Packet::new_unchecked(headers).ident(),
        IpVersion::V6 => 0,
    };
    let base_seq = if is_tcp {
        TcpPacket::new_unchecked(l4).seq_number()
    } else {
        0
    };

    for i in 0..count {
        let start = (i * gso_size).min(payload.len());
        let end = (start + gso_size).min(payload.len());
        let seg_payload = &payload[start..end];
        let len = hdr_len + seg_payload.len();
        let out = sink
            .segment(len)
            .ok_or(SplitError::SinkFull { written: i })?;
        out[..hdr_len].copy_from_slice(headers);
        out[hdr_len..].copy_from_slice(seg_payload);

        let (l3, l4) = out.split_at_mut(loc.l4_offset);
        let l4_len = l4.len();
        fix_ip(l3, loc.version, len, base_id.wrapping_add(i as u16));
        if is_tcp {
            let mut tcp = TcpPacket::new_unchecked(l4);
            tcp.set_seq_number(base_seq.wrapping_add(start as u32));
            let mut f = tcp.flags();
            if i + 1 < count {
                f &= !(ip::tcp::flags::FIN | ip::tcp::flags::PSH);
            }
            if i > 0 {
                f &= !ip::tcp::flags::CWR;
            }
            tcp.set_flags(f);
            tcp.fill_checksum(pseudo.with_len(l4_len));
        } else {
            let mut udp = UdpPacket::new_unchecked(l4);
            udp.set_len(l4_len as u16);
            udp.fill_checksum(pseudo.with_len(l4_len));
        }
    }
    Ok(count)
}

/// Rewrites the length (and for IPv4 the ID and header checksum) of a segment's L3 header.
fn fix_ip(l3: &mut [u8], version: IpVersion, packet_len: usize, id: u16) {
    match version {
        IpVersion::V4 => {
            let mut p = Ipv4Packet::new_unchecked(l3);
            p.set_total_len(packet_len as u16);
            p.set_ident(id);
            p.fill_checksum();
        }
        IpVersion::V6 => {
            let mut p = Ipv6Packet::new_unchecked(l3);
            p.set_payload_len((packet_len - ip::ipv6::HEADER_LEN) as u16);
        }
    }
}

/// The pseudo-header sum without the length, so each segment only adds its own length.
#[derive(Clone, Copy)]
pub(crate) struct PseudoBase(u16);

impl PseudoBase {
    /// `headers` starts with a checked IP header of `version`.
    pub(crate) fn new(headers: &[u8], version: IpVersion, proto: u8) -> Self {
        PseudoBase(match version {
            IpVersion::V4 => {
                let p = Ipv4Packet::new_unchecked(headers);
                checksum::pseudo_v4(p.src_bytes(), p.dst_bytes(), proto, 0)
            }
            IpVersion::V6 => {
                let p = Ipv6Packet::new_unchecked(headers);
                checksum::pseudo_v6(p.src_bytes(), p.dst_bytes(), proto, 0)
            }
        })
    }

    pub(crate) fn with_len(self, l4_len: usize) -> u16 {
        // Length ≤ 65535 here, so one 16-bit word covers both the v4 and v6 forms.
        checksum::add(self.0, l4_len as u16)
    }
}

/// `GSO_NONE`: copy, completing the checksum when asked to.
fn single<S: SegmentSink + ?Sized>(
    vnet: &VirtioNetHdr,
    packet: &[u8],
    sink: &mut S,
) -> Result<usize, SplitError> {
    if !vnet.needs_csum() {
        let out = sink
            .segment(packet.len())
            .ok_or(SplitError::SinkFull { written: 0 })?;
        out.copy_from_slice(packet);
        return Ok(1);
    }
    // Prefer our own parse; fall back to the kernel's offsets only for protocols we do not know
    // (the kernel may ask to complete e.g. an ICMPv6 or SCTP-less generic checksum).
    let known = match ip::locate(packet) {
        Ok(loc) if loc.protocol == protocol::TCP || loc.protocol == protocol::UDP => Some(loc),
        Ok(loc) if loc.is_fragment() => return Err(SplitError::Fragment),
        _ => None,
    };
    match known {
        Some(loc) => {
            let l4 = &packet[loc.l4_offset..loc.ip_len];
            let is_tcp = loc.protocol == protocol::TCP;
            if is_tcp {
                TcpPacket::new_checked(l4)?;
            } else if l4.len() < ip::udp::HEADER_LEN {
                return Err(SplitError::Malformed(ip::Error::Truncated));
            }
            let pseudo = PseudoBase::new(packet, loc.version, loc.protocol).with_len(l4.len());
            let out = sink
                .segment(packet.len())
                .ok_or(SplitError::SinkFull { written: 0 })?;
            out.copy_from_slice(packet);
            let l4 = &mut out[loc.l4_offset..loc.ip_len];
            let field = if is_tcp {
                ip::tcp::CHECKSUM_OFFSET
            } else {
                ip::udp::CHECKSUM_OFFSET
            };
            l4[field..field + 2].copy_from_slice(&[0, 0]);
            let mut c = checksum::finish(checksum::add(pseudo, checksum::sum(l4)));
            if !is_tcp && c == 0 {
                c = 0xffff;
            }
            l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
        }
        None => {
            let start = usize::from(vnet.csum_start);
            let at = start + usize::from(vnet.csum_offset);
            if at + 2 > packet.len() {
                return Err(SplitError::BadChecksumOffsets);
            }
            let out = sink
                .segment(packet.len())
                .ok_or(SplitError::SinkFull { written: 0 })?;
            out.copy_from_slice(packet);
            // The field holds the seed; summing over it folds the seed in.
            let c = checksum::finish(checksum::sum(&out[start..]));
            out[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    Ok(1)
}
