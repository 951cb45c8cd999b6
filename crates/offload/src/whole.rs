//! Super-packets carried whole between hypha nodes (`docs/sessions.md`): what a receiver checks
//! before it writes one to its TUN, and the virtio header it writes with it.

use wire::ip::{self, protocol, IpVersion, TcpPacket};
use wire::virtio::{flags, gso, VirtioNetHdr};

use crate::split::SplitError;

/// Checks a super-packet received from another node — an IPv6 TCP (`TCPV6`) or UDP (`UDP_L4`)
/// GSO packet without extension headers, `gso_size` non-zero, more payload than one segment —
/// and returns the virtio header to write it with, derived from the packet itself: only the
/// GSO type, its ECN bit and `gso_size` are taken from the sender's header; `hdr_len`,
/// `csum_start` and `csum_offset` are recomputed, `NEEDS_CSUM` is set (the sender's kernel left
/// the partial checksum of the pseudo-header in the L4 checksum field).
pub fn whole_header(sent: &VirtioNetHdr, packet: &[u8]) -> Result<VirtioNetHdr, SplitError> {
    let kind = sent.gso_kind();
    if kind != gso::TCPV6 && kind != gso::UDP_L4 {
        return Err(SplitError::UnsupportedGso(sent.gso_type));
    }
    if sent.gso_size == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let loc = ip::locate(packet)?;
    if loc.version != IpVersion::V6 || loc.is_fragment() || loc.l4_offset != 40 {
        return Err(SplitError::GsoMismatch);
    }
    if loc.ip_len != packet.len() {
        return Err(SplitError::Malformed(ip::Error::Truncated));
    }
    let l4 = &packet[loc.l4_offset..];
    let (l4_hdr, csum_offset) = match (kind, loc.protocol) {
        (gso::TCPV6, protocol::TCP) => (TcpPacket::new_checked(l4)?.header_len(), 16),
        (gso::UDP_L4, protocol::UDP) if l4.len() >= ip::udp::HEADER_LEN => (ip::udp::HEADER_LEN, 6),
        (gso::UDP_L4, protocol::UDP) => return Err(SplitError::Malformed(ip::Error::Truncated)),
        _ => return Err(SplitError::GsoMismatch),
    };
    let hdr_len = loc.l4_offset + l4_hdr;
    if packet.len() <= hdr_len + usize::from(sent.gso_size) {
        // One segment or less: no super-packet (the sender sends those as plain packets).
        return Err(SplitError::GsoMismatch);
    }
    let ecn = if kind == gso::TCPV6 {
        sent.gso_type & gso::ECN
    } else {
        0
    };
    Ok(VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: kind | ecn,
        hdr_len: hdr_len as u16,
        gso_size: sent.gso_size,
        csum_start: loc.l4_offset as u16,
        csum_offset,
    })
}
