//! Peer-link framing (docs/protocol.md §3): the 4-byte outer header, the babel control header and
//! the 36-byte data header, with a stream decoder and a batching encoder.
//!
//! A peer link is a TCP byte stream of *packets*:
//!
//! ```text
//! control: 01 01 00 00 | 2a 03 LLLL | TLV...          (LLLL = bytes of TLVs that follow)
//! data:    01 00 00 00 | 00 LLLL HH | src(16) | dst(16) | body(LLLL)
//! ```
//!
//! * [`OuterHeader`], [`BabelHeader`] and [`DataHeader`] are zero-copy views over those headers;
//!   [`DataRepr`] is the parsed form of the data header.
//! * [`StreamDecoder`] turns arbitrary chunks of the stream into [`Frame`]s without copying
//!   payloads; [`FrameReader`] adds a bounded, caller-visible read buffer around it.
//! * [`encode_control`], [`encode_data`] and [`DataSlot`] append frames to a caller's `Vec<u8>`,
//!   so many frames leave in one write; [`DataSlot`] lets the body be sealed in place inside the
//!   outgoing buffer before its header is filled in.
//!
//! Error policy. An outer version other than 1 or a packet type other than 0/1 is the peer's fault
//! and fatal for the link ([`StreamError`]): without a length field there is no way to resync. A
//! babel header with the wrong magic or version, an unknown TLV, or a malformed TLV is skipped by
//! its length and reported as [`Frame::Skipped`] so the caller can count it; the stream stays in
//! step (unlike mycelium's decoder, docs/protocol.md §3.7, §10.2). A babel packet carrying several
//! TLVs yields each of them in turn.

use core::fmt;
use core::ops::Range;
use std::net::Ipv6Addr;

use crate::babel::{DecodeError, EncodeError as TlvEncodeError, Tlv};

mod stream;

pub use stream::{Decoded, FrameReader, StreamDecoder};

/// The only outer protocol version.
pub const PROTOCOL_VERSION: u8 = 1;
/// Outer packet type of a data packet.
pub const TYPE_DATA: u8 = 0;
/// Outer packet type of a control (babel) packet.
pub const TYPE_CONTROL: u8 = 1;
/// Length of the outer header.
pub const OUTER_HEADER_LEN: usize = 4;
/// Babel header magic byte (42).
pub const BABEL_MAGIC: u8 = 42;
/// Babel version used on mycelium links (3, not RFC Babel's 2).
pub const BABEL_VERSION: u8 = 3;
/// Length of the babel header.
pub const BABEL_HEADER_LEN: usize = 4;
/// Length of the data packet header.
pub const DATA_HEADER_LEN: usize = 36;
/// Outer plus data header: the bytes in front of a data body.
pub const DATA_FRAME_OVERHEAD: usize = OUTER_HEADER_LEN + DATA_HEADER_LEN;
/// A data body length is a 16-bit field.
pub const MAX_DATA_BODY: usize = u16::MAX as usize;
/// The largest unit the decoder ever needs contiguous: a full data frame.
pub const MAX_FRAME_LEN: usize = DATA_FRAME_OVERHEAD + MAX_DATA_BODY;

/// Byte ranges of the fixed headers.
mod field {
    use core::ops::Range;

    pub const OUTER_VERSION: usize = 0;
    pub const OUTER_TYPE: usize = 1;
    pub const OUTER_RESERVED: Range<usize> = 2..4;

    pub const BABEL_MAGIC: usize = 0;
    pub const BABEL_VERSION: usize = 1;
    pub const BABEL_BODY_LEN: Range<usize> = 2..4;

    pub const DATA_RESERVED: usize = 0;
    pub const DATA_BODY_LEN: Range<usize> = 1..3;
    pub const DATA_HOP_LIMIT: usize = 3;
    pub const DATA_SRC: Range<usize> = 4..20;
    pub const DATA_DST: Range<usize> = 20..36;
}

/// A header was shorter than its fixed size.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Truncated;

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("header truncated")
    }
}

impl std::error::Error for Truncated {}

fn ipv6_at(b: &[u8], r: Range<usize>) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[r]);
    Ipv6Addr::from(a)
}

/// Zero-copy view over the 4-byte outer header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> OuterHeader<T> {
    /// Wraps `buffer` after checking it holds a full header.
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < OUTER_HEADER_LEN {
            return Err(Truncated);
        }
        Ok(OuterHeader { buffer })
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::OUTER_VERSION]
    }

    pub fn packet_type(&self) -> u8 {
        self.buffer.as_ref()[field::OUTER_TYPE]
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> OuterHeader<T> {
    /// Writes version 1, `packet_type` and zero reserved bytes.
    pub fn fill(&mut self, packet_type: u8) {
        let b = self.buffer.as_mut();
        b[field::OUTER_VERSION] = PROTOCOL_VERSION;
        b[field::OUTER_TYPE] = packet_type;
        b[field::OUTER_RESERVED].fill(0);
    }
}

/// Zero-copy view over the 4-byte babel header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BabelHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> BabelHeader<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < BABEL_HEADER_LEN {
            return Err(Truncated);
        }
        Ok(BabelHeader { buffer })
    }

    pub fn magic(&self) -> u8 {
        self.buffer.as_ref()[field::BABEL_MAGIC]
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::BABEL_VERSION]
    }

    /// Bytes of TLVs after this header.
    pub fn body_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([
            b[field::BABEL_BODY_LEN.start],
            b[field::BABEL_BODY_LEN.start + 1],
        ])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BabelHeader<T> {
    /// Writes magic 42, version 3 and `body_len`.
    pub fn fill(&mut self, body_len: u16) {
        let b = self.buffer.as_mut();
        b[field::BABEL_MAGIC] = BABEL_MAGIC;
        b[field::BABEL_VERSION] = BABEL_VERSION;
        b[field::BABEL_BODY_LEN].copy_from_slice(&body_len.to_be_bytes());
    }
}

/// Zero-copy view over the 36-byte data header (`00 LLLL HH src dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DataHeader<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < DATA_HEADER_LEN {
            return Err(Truncated);
        }
        Ok(DataHeader { buffer })
    }

    /// Length of the body that follows the header.
    pub fn body_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([
            b[field::DATA_BODY_LEN.start],
            b[field::DATA_BODY_LEN.start + 1],
        ])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_HOP_LIMIT]
    }

    pub fn src(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), field::DATA_SRC)
    }

    pub fn dst(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), field::DATA_DST)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataHeader<T> {
    /// Sets the body length and clears the reserved byte (the high byte of the 24-bit length
    /// mycelium's encoder writes, always 0).
    pub fn set_body_len(&mut self, len: u16) {
        let b = self.buffer.as_mut();
        b[field::DATA_RESERVED] = 0;
        b[field::DATA_BODY_LEN].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::DATA_HOP_LIMIT] = hop_limit;
    }

    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DATA_SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DATA_DST].copy_from_slice(&a.octets());
    }
}

/// The parsed data header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataRepr {
    pub hop_limit: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub body_len: u16,
}

impl DataRepr {
    pub fn parse<T: AsRef<[u8]>>(h: &DataHeader<T>) -> DataRepr {
        DataRepr {
            hop_limit: h.hop_limit(),
            src: h.src(),
            dst: h.dst(),
            body_len: h.body_len(),
        }
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut DataHeader<T>) {
        h.set_body_len(self.body_len);
        h.set_hop_limit(self.hop_limit);
        h.set_src(self.src);
        h.set_dst(self.dst);
    }

    /// Bytes of the header alone.
    pub const fn buffer_len(&self) -> usize {
        DATA_HEADER_LEN
    }
}

/// Why a control unit was skipped. The stream stays in step; the caller counts these.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Skip {
    /// Babel header magic was not 42; its body (by length) was skipped.
    BadMagic(u8),
    /// Babel header version was not 3; its body was skipped.
    BadVersion(u8),
    /// A TLV header claimed more bytes than its babel packet has left, or fewer than 2 bytes
    /// remained for a TLV header; the rest of the babel packet was skipped.
    TlvOverrun {
        tlv_type: Option<u8>,
        remaining: u16,
    },
    /// One TLV could not be decoded (unknown type or AE, short body, ...); it was skipped.
    Tlv(DecodeError),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::BadMagic(m) => write!(f, "peer sent babel packet with magic {m}"),
            Skip::BadVersion(v) => write!(f, "peer sent babel packet with version {v}"),
            Skip::TlvOverrun {
                tlv_type,
                remaining,
            } => write!(
                f,
                "peer sent TLV {tlv_type:?} overrunning its babel packet ({remaining} bytes left)"
            ),
            Skip::Tlv(e) => e.fmt(f),
        }
    }
}

/// One unit of the stream. `B` is the body borrow: `&[u8]` or `&mut [u8]` (to open in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<B> {
    /// A data packet; `body` is the encrypted blob.
    Data {
        hop_limit: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        body: B,
    },
    /// One decoded control TLV.
    Control(Tlv),
    /// A control unit that was skipped by its length.
    Skipped(Skip),
}

/// Fatal stream errors: the peer broke the outer framing and the link must be closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum StreamError {
    /// Outer header version was not 1.
    UnknownVersion(u8),
    /// Outer packet type was neither 0 (data) nor 1 (control).
    UnknownPacketType(u8),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::UnknownVersion(v) => write!(f, "peer sent outer protocol version {v}"),
            StreamError::UnknownPacketType(t) => write!(f, "peer sent outer packet type {t}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Why a frame could not be encoded; nothing was appended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EncodeError {
    /// The TLV broke the send policy.
    Tlv(TlvEncodeError),
    /// A data body longer than 65535 bytes.
    BodyTooLong { len: usize },
    /// The buffer was shrunk below the header [`DataSlot::begin`] reserved.
    SlotTruncated,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Tlv(e) => e.fmt(f),
            EncodeError::BodyTooLong { len } => {
                write!(f, "data body of {len} bytes exceeds {MAX_DATA_BODY}")
            }
            EncodeError::SlotTruncated => f.write_str("data frame buffer shrunk below its header"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl From<TlvEncodeError> for EncodeError {
    fn from(e: TlvEncodeError) -> Self {
        EncodeError::Tlv(e)
    }
}

/// Bytes [`encode_control`] appends for `tlv`.
pub fn control_frame_len(tlv: &Tlv) -> usize {
    OUTER_HEADER_LEN + BABEL_HEADER_LEN + tlv.wire_len()
}

/// Appends one control packet carrying exactly one TLV. On error `out` is unchanged.
pub fn encode_control(out: &mut Vec<u8>, tlv: &Tlv) -> Result<(), EncodeError> {
    tlv.check()?;
    let start = out.len();
    out.resize(start + OUTER_HEADER_LEN + BABEL_HEADER_LEN, 0);
    if let Err(e) = tlv.encode(out) {
        out.truncate(start);
        return Err(e.into());
    }
    // A TLV is at most 257 bytes, so its wire length fits the 16-bit babel length.
    let tlv_len = (out.len() - start - OUTER_HEADER_LEN - BABEL_HEADER_LEN) as u16;
    let head = &mut out[start..start + OUTER_HEADER_LEN + BABEL_HEADER_LEN];
    let (outer, babel) = head.split_at_mut(OUTER_HEADER_LEN);
    OuterHeader { buffer: outer }.fill(TYPE_CONTROL);
    BabelHeader { buffer: babel }.fill(tlv_len);
    Ok(())
}

/// Appends one data packet with a copy of `body`. On error `out` is unchanged.
pub fn encode_data(
    out: &mut Vec<u8>,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: &[u8],
) -> Result<(), EncodeError> {
    if body.len() > MAX_DATA_BODY {
        return Err(EncodeError::BodyTooLong { len: body.len() });
    }
    let slot = DataSlot::begin(out);
    out.extend_from_slice(body);
    slot.finish(out, hop_limit, src, dst).map(|_| ())
}

/// A data frame being built in place at the end of a `Vec<u8>`: [`DataSlot::begin`] reserves the
/// 40 header bytes, the caller appends (and e.g. seals in place) the body, then
/// [`DataSlot::finish`] fills the header from the body's final length.
#[must_use = "an unfinished slot leaves a zeroed header in the buffer"]
#[derive(Debug)]
pub struct DataSlot {
    start: usize,
}

impl DataSlot {
    /// Reserves the header at the end of `out`.
    pub fn begin(out: &mut Vec<u8>) -> DataSlot {
        let start = out.len();
        out.resize(start + DATA_FRAME_OVERHEAD, 0);
        DataSlot { start }
    }

    /// Index in the buffer where the body starts.
    pub fn body_start(&self) -> usize {
        self.start + DATA_FRAME_OVERHEAD
    }

    /// Fills the header for a body that runs to the end of `out`; returns the frame length. If the
    /// body is too long the whole frame is removed from `out` and an error returned.
    pub fn finish(
        self,
        out: &mut Vec<u8>,
        hop_limit: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Result<usize, EncodeError> {
        let frame_len = out.len().saturating_sub(self.start);
        let body_len = frame_len.saturating_sub(DATA_FRAME_OVERHEAD);
        let Ok(len16) = u16::try_from(body_len) else {
            out.truncate(self.start);
            return Err(EncodeError::BodyTooLong { len: body_len });
        };
        let Some(head) = out.get_mut(self.start..self.start + DATA_FRAME_OVERHEAD) else {
            out.truncate(self.start);
            return Err(EncodeError::SlotTruncated);
        };
        emit_data_header(head, hop_limit, src, dst, len16);
        Ok(frame_len)
    }
}

/// Writes the 40 header bytes of a data frame whose body of `body_len` bytes follows: for frames
/// laid out in a buffer ahead of time (e.g. one per segment of a super-packet) and filled in
/// place. `head` must be exactly [`DATA_FRAME_OVERHEAD`] bytes; shorter slices are left alone
/// and reported.
pub fn write_data_header(
    head: &mut [u8],
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body_len: usize,
) -> Result<(), EncodeError> {
    let Ok(len16) = u16::try_from(body_len) else {
        return Err(EncodeError::BodyTooLong { len: body_len });
    };
    let Some(head) = head.get_mut(..DATA_FRAME_OVERHEAD) else {
        return Err(EncodeError::SlotTruncated);
    };
    emit_data_header(head, hop_limit, src, dst, len16);
    Ok(())
}

fn emit_data_header(head: &mut [u8], hop_limit: u8, src: Ipv6Addr, dst: Ipv6Addr, body_len: u16) {
    let (outer, data) = head.split_at_mut(OUTER_HEADER_LEN);
    OuterHeader { buffer: outer }.fill(TYPE_DATA);
    DataRepr {
        hop_limit,
        src,
        dst,
        body_len,
    }
    .emit(&mut DataHeader { buffer: data });
}

#[cfg(test)]
mod tests;
