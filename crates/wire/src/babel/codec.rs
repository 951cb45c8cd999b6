//! TLV codec: mycelium's layouts (docs/protocol.md §4.1–§4.6) over a bounded cursor.
//!
//! Receiving is liberal in what it survives and strict in what it accepts: every decoder works on
//! exactly one TLV body (the caller has already cut it out by its length byte), never reads past
//! it, never panics, and returns a small `Copy` error for anything short, trailing, or unknown.
//!
//! Sending is strict: [`Tlv::encode`] refuses everything that is dangerous for a mycelium peer
//! (docs/protocol.md §4.9, §10.1) with an [`EncodeError`], and writes exactly one TLV per call, so
//! a babel packet built from one call can never carry two.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    ae, tlv_type, Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, SeqNoRequest,
};
use super::{Subnet, Tlv, Update};

/// Hello flag bit for unicast Hellos, the only flag mycelium sends or keeps.
pub const HELLO_UNICAST: u16 = 0x8000;
/// The Update flag bits a receiver keeps (docs/protocol.md §4.4).
pub const UPDATE_FLAGS_KEPT: u8 = 0xC0;
/// The hop count a SeqNoRequest originates with (docs/protocol.md §4.6).
pub const SEQNO_REQUEST_HOPS: u8 = 64;
/// The shortest IPv6 prefix we put into a RouteRequest or SeqNoRequest (docs/protocol.md §4.9).
pub const MIN_REQUEST_PLEN: u8 = 64;

/// Fixed part of each TLV body, before any address bytes.
mod fixed {
    pub const HELLO: usize = 6;
    pub const IHU: usize = 6;
    /// AE, flags, plen, omitted, interval, seqno, metric, then router-id after the prefix.
    pub const UPDATE_HEAD: usize = 10;
    pub const ROUTE_REQUEST_HEAD: usize = 3;
    /// AE, plen, seqno, hop count, reserved, router-id; the prefix follows.
    pub const SEQNO_REQUEST_HEAD: usize = 6;
}

/// Why a TLV body could not be decoded. Every case means "skip this TLV and count it"; none is
/// fatal for the link, because the TLV's length byte already told the caller where the next one
/// starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DecodeError {
    /// A TLV type this node does not know (skipped by its length).
    UnknownTlv(u8),
    /// An address encoding this node does not know (the TLV is skipped).
    UnknownAe { tlv_type: u8, ae: u8 },
    /// The body ended before the fields its type and AE require.
    Truncated {
        tlv_type: u8,
        need: usize,
        have: usize,
    },
    /// The body carries bytes after its last field.
    TrailingBytes { tlv_type: u8, extra: usize },
    /// A prefix length that its AE does not allow (AE 0 with plen ≠ 0, AE 1 > 32, AE 2 > 128,
    /// AE 3 ≠ 64).
    BadPrefixLength { tlv_type: u8, ae: u8, plen: u8 },
    /// A SeqNoRequest with hop count 0, which mycelium drops too.
    ZeroHopCount,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::UnknownTlv(t) => write!(f, "peer sent unknown TLV type {t}"),
            DecodeError::UnknownAe { tlv_type, ae } => {
                write!(
                    f,
                    "peer sent TLV {tlv_type} with unknown address encoding {ae}"
                )
            }
            DecodeError::Truncated {
                tlv_type,
                need,
                have,
            } => write!(
                f,
                "peer sent TLV {tlv_type} with a {have}-byte body, {need} bytes needed"
            ),
            DecodeError::TrailingBytes { tlv_type, extra } => {
                write!(f, "peer sent TLV {tlv_type} with {extra} trailing bytes")
            }
            DecodeError::BadPrefixLength { tlv_type, ae, plen } => write!(
                f,
                "peer sent TLV {tlv_type} with prefix length {plen} invalid for AE {ae}"
            ),
            DecodeError::ZeroHopCount => f.write_str("peer sent a SeqNoRequest with hop count 0"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why this node refuses to encode a TLV: each case is something a mycelium peer mishandles
/// (docs/protocol.md §4.9, §10.1). Always the caller's fault; nothing is written when it is
/// returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EncodeError {
    /// IPv4 prefixes are never sent (an IPv4 RouteRequest crashes mycelium's request task).
    Ipv4Prefix,
    /// AE 3 (link-local) is never sent.
    LinkLocalPrefix,
    /// A wildcard where mycelium never uses one (only wildcard RouteRequests and AE 0 IHUs exist).
    Wildcard,
    /// A RouteRequest/SeqNoRequest prefix shorter than /64 (marks a huge range as queried).
    ShortRequestPrefix { plen: u8 },
    /// A SeqNoRequest with hop count 0 (dropped by every receiver).
    ZeroHopCount,
    /// A RouteRequest generation of 255 or more (overflows the receiver's `+1`).
    GenerationTooHigh { generation: u8 },
    /// An IHU address that is not a full /128.
    IhuAddressNotHost { plen: u8 },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::Ipv4Prefix => f.write_str("refusing to send an IPv4 prefix"),
            EncodeError::LinkLocalPrefix => f.write_str("refusing to send AE 3 (link-local)"),
            EncodeError::Wildcard => f.write_str("refusing to send a wildcard prefix here"),
            EncodeError::ShortRequestPrefix { plen } => {
                write!(f, "refusing to request a /{plen} (shorter than /64)")
            }
            EncodeError::ZeroHopCount => f.write_str("refusing to send hop count 0"),
            EncodeError::GenerationTooHigh { generation } => {
                write!(f, "refusing to send route request generation {generation}")
            }
            EncodeError::IhuAddressNotHost { plen } => {
                write!(f, "IHU address must be a /128, got /{plen}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A borrowed, bounded reader over one TLV body. Every read checks the bound and reports a
/// [`DecodeError::Truncated`] instead of panicking; [`Reader::finish`] rejects trailing bytes.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tlv_type: u8,
}

impl<'a> Reader<'a> {
    /// A reader over `body`; `tlv_type` only labels errors.
    pub fn new(tlv_type: u8, body: &'a [u8]) -> Reader<'a> {
        Reader {
            buf: body,
            pos: 0,
            tlv_type,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or `Truncated` (reporting the whole body length needed).
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                tlv_type: self.tlv_type,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            }),
        }
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                tlv_type: self.tlv_type,
                extra,
            }),
        }
    }
}

/// Bytes a prefix of `plen` bits occupies on the wire (truncated to whole bytes).
fn prefix_bytes(plen: u8) -> usize {
    usize::from(plen).div_ceil(8)
}

/// Reads a `plen`-bit prefix in address encoding `ae`: truncated bytes, zero-filled, host bits
/// cleared.
fn read_prefix(r: &mut Reader<'_>, ae_code: u8, plen: u8) -> Result<Prefix, DecodeError> {
    let bad = DecodeError::BadPrefixLength {
        tlv_type: r.tlv_type,
        ae: ae_code,
        plen,
    };
    match ae_code {
        ae::WILDCARD if plen == 0 => Ok(Prefix::Wildcard),
        ae::IPV4 if plen <= 32 => {
            let mut a = [0u8; 4];
            a[..prefix_bytes(plen)].copy_from_slice(r.take(prefix_bytes(plen))?);
            let bits = u32::from_be_bytes(a);
            let mask = u32::MAX.checked_shl(32 - u32::from(plen)).unwrap_or(0);
            Ok(Prefix::V4 {
                addr: Ipv4Addr::from(bits & mask),
                plen,
            })
        }
        ae::IPV6 if plen <= 128 => {
            let mut a = [0u8; 16];
            a[..prefix_bytes(plen)].copy_from_slice(r.take(prefix_bytes(plen))?);
            Subnet::new(Ipv6Addr::from(a), plen)
                .map(Prefix::V6)
                .ok_or(bad)
        }
        ae::IPV6_LINK_LOCAL if plen == 64 => Ok(Prefix::LinkLocal { iid: r.array()? }),
        ae::WILDCARD | ae::IPV4 | ae::IPV6 | ae::IPV6_LINK_LOCAL => Err(bad),
        other => Err(DecodeError::UnknownAe {
            tlv_type: r.tlv_type,
            ae: other,
        }),
    }
}

impl Prefix {
    /// The address encoding this prefix is sent with.
    pub fn ae(&self) -> u8 {
        match self {
            Prefix::Wildcard => ae::WILDCARD,
            Prefix::V4 { .. } => ae::IPV4,
            Prefix::V6(_) => ae::IPV6,
            Prefix::LinkLocal { .. } => ae::IPV6_LINK_LOCAL,
        }
    }

    /// Prefix length in bits.
    pub fn plen(&self) -> u8 {
        match self {
            Prefix::Wildcard => 0,
            Prefix::V4 { plen, .. } => *plen,
            Prefix::V6(s) => s.prefix_len(),
            Prefix::LinkLocal { .. } => 64,
        }
    }

    /// Bytes the prefix occupies on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Prefix::Wildcard => 0,
            Prefix::V4 { plen, .. } => prefix_bytes((*plen).min(32)),
            Prefix::V6(s) => prefix_bytes(s.prefix_len()),
            Prefix::LinkLocal { .. } => 8,
        }
    }

    /// Appends the truncated prefix bytes.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Prefix::Wildcard => {}
            Prefix::V4 { addr, .. } => out.extend_from_slice(&addr.octets()[..self.wire_len()]),
            Prefix::V6(s) => out.extend_from_slice(&s.addr().octets()[..self.wire_len()]),
            Prefix::LinkLocal { iid } => out.extend_from_slice(iid),
        }
    }

    /// The checks shared by RouteRequest and SeqNoRequest (docs/protocol.md §4.9).
    fn check_request(&self, wildcard_ok: bool) -> Result<(), EncodeError> {
        match self {
            Prefix::Wildcard if wildcard_ok => Ok(()),
            Prefix::Wildcard => Err(EncodeError::Wildcard),
            Prefix::V4 { .. } => Err(EncodeError::Ipv4Prefix),
            Prefix::LinkLocal { .. } => Err(EncodeError::LinkLocalPrefix),
            Prefix::V6(s) if s.prefix_len() < MIN_REQUEST_PLEN => {
                Err(EncodeError::ShortRequestPrefix {
                    plen: s.prefix_len(),
                })
            }
            Prefix::V6(_) => Ok(()),
        }
    }
}

impl Hello {
    pub const BODY_LEN: usize = fixed::HELLO;

    /// Decodes a Hello body; flags other than unicast are dropped as mycelium does.
    pub fn parse(body: &[u8]) -> Result<Hello, DecodeError> {
        let mut r = Reader::new(tlv_type::HELLO, body);
        let h = Hello {
            flags: r.u16()? & HELLO_UNICAST,
            seqno: SeqNo(r.u16()?),
            interval: r.u16()?,
        };
        r.finish()?;
        Ok(h)
    }

    pub fn body_len(&self) -> usize {
        Self::BODY_LEN
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.seqno.0.to_be_bytes());
        out.extend_from_slice(&self.interval.to_be_bytes());
    }
}

impl Ihu {
    /// Decodes an IHU body. The address, if any, is a full address (V4 /32, V6 /128, or a
    /// link-local interface id).
    pub fn parse(body: &[u8]) -> Result<Ihu, DecodeError> {
        let mut r = Reader::new(tlv_type::IHU, body);
        let ae_code = r.u8()?;
        let _reserved = r.u8()?;
        let rx_cost = Metric(r.u16()?);
        let interval = r.u16()?;
        let address = match ae_code {
            ae::WILDCARD => None,
            ae::IPV4 => Some(read_prefix(&mut r, ae_code, 32)?),
            ae::IPV6 => Some(read_prefix(&mut r, ae_code, 128)?),
            ae::IPV6_LINK_LOCAL => Some(read_prefix(&mut r, ae_code, 64)?),
            other => {
                return Err(DecodeError::UnknownAe {
                    tlv_type: tlv_type::IHU,
                    ae: other,
                })
            }
        };
        r.finish()?;
        Ok(Ihu {
            rx_cost,
            interval,
            address,
        })
    }

    pub fn body_len(&self) -> usize {
        fixed::IHU + self.address.map_or(0, |a| a.wire_len())
    }

    fn check(&self) -> Result<(), EncodeError> {
        match self.address {
            None => Ok(()),
            Some(Prefix::V6(s)) if s.prefix_len() == 128 => Ok(()),
            Some(Prefix::V6(s)) => Err(EncodeError::IhuAddressNotHost {
                plen: s.prefix_len(),
            }),
            Some(Prefix::Wildcard) => Err(EncodeError::Wildcard),
            Some(Prefix::V4 { .. }) => Err(EncodeError::Ipv4Prefix),
            Some(Prefix::LinkLocal { .. }) => Err(EncodeError::LinkLocalPrefix),
        }
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        out.push(self.address.map_or(ae::WILDCARD, |a| a.ae()));
        out.push(0);
        out.extend_from_slice(&self.rx_cost.0.to_be_bytes());
        out.extend_from_slice(&self.interval.to_be_bytes());
        if let Some(a) = self.address {
            a.write(out);
        }
    }
}

impl Update {
    /// Decodes an Update body: fixed head, prefix, then the 40-byte router-id.
    pub fn parse(body: &[u8]) -> Result<Update, DecodeError> {
        let mut r = Reader::new(tlv_type::UPDATE, body);
        let ae_code = r.u8()?;
        let flags = r.u8()? & UPDATE_FLAGS_KEPT;
        let plen = r.u8()?;
        let _omitted = r.u8()?;
        let interval = r.u16()?;
        let seqno = SeqNo(r.u16()?);
        let metric = Metric(r.u16()?);
        let prefix = read_prefix(&mut r, ae_code, plen)?;
        let router_id = RouterId(r.array()?);
        r.finish()?;
        Ok(Update {
            flags,
            interval,
            seqno,
            metric,
            prefix,
            router_id,
        })
    }

    pub fn body_len(&self) -> usize {
        fixed::UPDATE_HEAD + self.prefix.wire_len() + RouterId::LEN
    }

    fn check(&self) -> Result<(), EncodeError> {
        match self.prefix {
            Prefix::V6(_) => Ok(()),
            Prefix::Wildcard => Err(EncodeError::Wildcard),
            Prefix::V4 { .. } => Err(EncodeError::Ipv4Prefix),
            Prefix::LinkLocal { .. } => Err(EncodeError::LinkLocalPrefix),
        }
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.prefix.ae(), self.flags, self.prefix.plen(), 0]);
        out.extend_from_slice(&self.interval.to_be_bytes());
        out.extend_from_slice(&self.seqno.0.to_be_bytes());
        out.extend_from_slice(&self.metric.0.to_be_bytes());
        self.prefix.write(out);
        out.extend_from_slice(&self.router_id.0);
    }
}

impl RouteRequest {
    /// Decodes a RouteRequest body: generation, AE, plen, prefix.
    pub fn parse(body: &[u8]) -> Result<RouteRequest, DecodeError> {
        let mut r = Reader::new(tlv_type::ROUTE_REQUEST, body);
        let generation = r.u8()?;
        let ae_code = r.u8()?;
        let plen = r.u8()?;
        let prefix = read_prefix(&mut r, ae_code, plen)?;
        r.finish()?;
        Ok(RouteRequest { generation, prefix })
    }

    pub fn body_len(&self) -> usize {
        fixed::ROUTE_REQUEST_HEAD + self.prefix.wire_len()
    }

    fn check(&self) -> Result<(), EncodeError> {
        if self.generation == u8::MAX {
            return Err(EncodeError::GenerationTooHigh {
                generation: self.generation,
            });
        }
        self.prefix.check_request(true)
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.generation, self.prefix.ae(), self.prefix.plen()]);
        self.prefix.write(out);
    }
}

impl SeqNoRequest {
    /// Decodes a SeqNoRequest body: head, router-id, then the prefix. Hop count 0 is an error.
    pub fn parse(body: &[u8]) -> Result<SeqNoRequest, DecodeError> {
        let mut r = Reader::new(tlv_type::SEQNO_REQUEST, body);
        let ae_code = r.u8()?;
        let plen = r.u8()?;
        let seqno = SeqNo(r.u16()?);
        let hop_count = r.u8()?;
        let _reserved = r.u8()?;
        let router_id = RouterId(r.array()?);
        let prefix = read_prefix(&mut r, ae_code, plen)?;
        r.finish()?;
        if hop_count == 0 {
            return Err(DecodeError::ZeroHopCount);
        }
        Ok(SeqNoRequest {
            seqno,
            hop_count,
            router_id,
            prefix,
        })
    }

    pub fn body_len(&self) -> usize {
        fixed::SEQNO_REQUEST_HEAD + RouterId::LEN + self.prefix.wire_len()
    }

    fn check(&self) -> Result<(), EncodeError> {
        if self.hop_count == 0 {
            return Err(EncodeError::ZeroHopCount);
        }
        self.prefix.check_request(false)
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.prefix.ae(), self.prefix.plen()]);
        out.extend_from_slice(&self.seqno.0.to_be_bytes());
        out.extend_from_slice(&[self.hop_count, 0]);
        out.extend_from_slice(&self.router_id.0);
        self.prefix.write(out);
    }
}

impl Tlv {
    /// The TLV type number.
    pub fn tlv_type(&self) -> u8 {
        match self {
            Tlv::Hello(_) => tlv_type::HELLO,
            Tlv::Ihu(_) => tlv_type::IHU,
            Tlv::Update(_) => tlv_type::UPDATE,
            Tlv::RouteRequest(_) => tlv_type::ROUTE_REQUEST,
            Tlv::SeqNoRequest(_) => tlv_type::SEQNO_REQUEST,
        }
    }

    /// Length of the body (what the TLV length byte holds). Always ≤ 255 for a TLV that
    /// [`Tlv::encode`] accepts.
    pub fn body_len(&self) -> usize {
        match self {
            Tlv::Hello(t) => t.body_len(),
            Tlv::Ihu(t) => t.body_len(),
            Tlv::Update(t) => t.body_len(),
            Tlv::RouteRequest(t) => t.body_len(),
            Tlv::SeqNoRequest(t) => t.body_len(),
        }
    }

    /// Bytes [`Tlv::encode`] appends: the 2-byte TLV header plus the body.
    pub fn wire_len(&self) -> usize {
        2 + self.body_len()
    }

    /// Decodes one TLV body of type `tlv_type`. Unknown types give [`DecodeError::UnknownTlv`].
    pub fn decode(tlv_type: u8, body: &[u8]) -> Result<Tlv, DecodeError> {
        match tlv_type {
            tlv_type::HELLO => Hello::parse(body).map(Tlv::Hello),
            tlv_type::IHU => Ihu::parse(body).map(Tlv::Ihu),
            tlv_type::UPDATE => Update::parse(body).map(Tlv::Update),
            tlv_type::ROUTE_REQUEST => RouteRequest::parse(body).map(Tlv::RouteRequest),
            tlv_type::SEQNO_REQUEST => SeqNoRequest::parse(body).map(Tlv::SeqNoRequest),
            other => Err(DecodeError::UnknownTlv(other)),
        }
    }

    /// Checks the send policy without writing anything.
    pub fn check(&self) -> Result<(), EncodeError> {
        match self {
            Tlv::Hello(_) => Ok(()),
            Tlv::Ihu(t) => t.check(),
            Tlv::Update(t) => t.check(),
            Tlv::RouteRequest(t) => t.check(),
            Tlv::SeqNoRequest(t) => t.check(),
        }
    }

    /// Appends type, length and body of this one TLV to `out`, after checking the send policy.
    /// On error `out` is left untouched.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.check()?;
        out.reserve(self.wire_len());
        out.push(self.tlv_type());
        // The largest body is an Update's 10 + 16 + 40 bytes, so the length byte cannot overflow.
        out.push(self.body_len() as u8);
        match self {
            Tlv::Hello(t) => t.emit_body(out),
            Tlv::Ihu(t) => t.emit_body(out),
            Tlv::Update(t) => t.emit_body(out),
            Tlv::RouteRequest(t) => t.emit_body(out),
            Tlv::SeqNoRequest(t) => t.emit_body(out),
        }
        Ok(())
    }
}

impl From<Hello> for Tlv {
    fn from(t: Hello) -> Tlv {
        Tlv::Hello(t)
    }
}
impl From<Ihu> for Tlv {
    fn from(t: Ihu) -> Tlv {
        Tlv::Ihu(t)
    }
}
impl From<Update> for Tlv {
    fn from(t: Update) -> Tlv {
        Tlv::Update(t)
    }
}
impl From<RouteRequest> for Tlv {
    fn from(t: RouteRequest) -> Tlv {
        Tlv::RouteRequest(t)
    }
}
impl From<SeqNoRequest> for Tlv {
    fn from(t: SeqNoRequest) -> Tlv {
        Tlv::SeqNoRequest(t)
    }
}

#[cfg(test)]
mod tests;
