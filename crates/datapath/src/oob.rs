//! Out-of-band ICMP (`docs/protocol.md` §6.8, §6.9): an intermediate node that drops a packet tells
//! its source in a type-2 payload sealed for the source; the source checks it and writes a plain
//! ICMPv6 error about its own packet to the TUN.

use std::net::Ipv6Addr;

use crypto::PayloadType;
use wire::babel::Subnet;
use wire::frame::{DataSlot, DATA_FRAME_OVERHEAD};
use wire::icmp::{oob::OobIcmp, IcmpError};
use wire::ip::ipv6::Ipv6Packet;

use crate::batch::TunBatch;
use crate::outbound::{seal_tail, SealKey};
use crate::{Cipher, ICMP_HOP_LIMIT};

/// Why a received out-of-band ICMP error is not written to the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OobRefusal {
    /// Not the shape of an OOB ICMP payload, or a quote that does not open.
    Malformed,
    /// The quoted packet is not one we sent to the original destination it names: whoever made
    /// it could otherwise fail any flow of ours (the original destination is the sender's choice,
    /// and the quote opens with the key we share with it).
    Forged,
}

/// Appends to `buf` a data frame from `from` to `orig_src` carrying an out-of-band ICMP error
/// about a frame to `orig_dst` whose still-sealed body was `dropped` (quoted when small enough),
/// sealed with `cipher` (the key shared with `orig_src`). False if sealing failed.
pub fn push_oob_icmp(
    buf: &mut Vec<u8>,
    cipher: &Cipher,
    kind: IcmpError,
    from: Ipv6Addr,
    orig_src: Ipv6Addr,
    orig_dst: Ipv6Addr,
    dropped: &[u8],
) -> bool {
    let slot = DataSlot::begin(buf);
    let body_start = slot.body_start();
    buf.extend_from_slice(&PayloadType::OobIcmp.inner_header());
    // The quote is the still-encrypted body: the source decrypts it with its own key for the
    // original destination.
    wire::icmp::oob::emit(buf, orig_dst, from, orig_src, ICMP_HOP_LIMIT, kind, dropped);
    let key = SealKey::Static(std::borrow::Cow::Borrowed(cipher));
    let sealed = seal_tail(&key, buf, body_start, body_start - DATA_FRAME_OVERHEAD);
    slot.finish(buf, ICMP_HOP_LIMIT, from, orig_src).is_ok() && sealed
}

/// The keys a packet we sent to some destination was sealed with: the static key and, if there
/// is one, our session with that destination.
pub type OrigKeys = (Option<Cipher>, Option<std::sync::Arc<crypto::Session>>);

/// Receiving an out-of-band ICMP error: open the quoted body with the key of the original
/// destination (`orig_cipher` finds it) and write a plain ICMPv6 error about our own packet to the TUN — only if the quote
/// is a packet from our /64 to that original destination.
pub(crate) fn deliver(
    orig_cipher: &dyn Fn(Ipv6Addr) -> OrigKeys,
    own: Subnet,
    hop: u8,
    outer_src: Ipv6Addr,
    outer_dst: Ipv6Addr,
    payload: &mut [u8],
    tun_out: &mut TunBatch,
) -> Result<(), OobRefusal> {
    let mut view = OobIcmp::new_checked(payload).map_err(|_| OobRefusal::Malformed)?;
    let orig_dst = view.orig_dst();
    let kind = view.kind().ok_or(OobRefusal::Malformed)?;
    let (cipher, session) = orig_cipher(orig_dst);
    let quote = view.quote_mut();
    // Sealed under our session with that destination, or with the static key.
    let ours = session.filter(|s| crypto::session::trailer_index(quote) == Some(s.remote_index()));
    let opened = match (ours, cipher) {
        (Some(s), _) => s.open_own(quote).ok(),
        (None, Some(c)) => c.open_payload(quote).ok(),
        (None, None) => None,
    };
    let original = match opened {
        Some((PayloadType::L3, original)) => original,
        _ => return Err(OobRefusal::Malformed),
    };
    let quoted = match Ipv6Packet::new_header_checked(&*original) {
        Ok(ip) => ip,
        // Too short to be a packet at all; a whole header of another version is not ours.
        Err(wire::ip::Error::Truncated) => return Err(OobRefusal::Malformed),
        Err(_) => return Err(OobRefusal::Forged),
    };
    if !own.contains_addr(quoted.src_addr()) || quoted.dst_addr() != orig_dst {
        return Err(OobRefusal::Forged);
    }
    // Built directly (not through `push_icmp`): the quote is our own packet, and the error must
    // reach the host even where RFC 4443 would stop a node from answering it.
    wire::icmp::build_error(&mut tun_out.data, outer_src, outer_dst, hop, kind, original);
    tun_out.ends.push(tun_out.data.len());
    Ok(())
}
