//! Incremental decoding of the peer-link byte stream.

use core::ops::Range;
use std::net::Ipv6Addr;

use super::{
    BabelHeader, DataHeader, DataRepr, Frame, OuterHeader, Skip, StreamError, BABEL_HEADER_LEN,
    BABEL_MAGIC, BABEL_VERSION, DATA_FRAME_OVERHEAD, MAX_FRAME_LEN, OUTER_HEADER_LEN,
    PROTOCOL_VERSION, TYPE_CONTROL, TYPE_DATA,
};
use crate::babel::Tlv;

/// TLV header: type and length bytes.
const TLV_HEADER_LEN: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a packet boundary.
    Outer,
    /// Inside a babel packet, `remaining` bytes of TLVs left.
    ControlBody { remaining: u16 },
    /// Discarding the rest of a babel packet that could not be walked.
    Discard { remaining: u16 },
    /// The peer broke the outer framing; every later call reports it again.
    Failed(StreamError),
}

/// A frame whose body is still a range into the decoded buffer.
enum Raw {
    Data {
        hop_limit: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        body: Range<usize>,
    },
    Control(Tlv),
    Skipped(Skip),
}

impl Raw {
    fn with_body<B>(self, body: impl FnOnce(Range<usize>) -> B) -> Frame<B> {
        match self {
            Raw::Data {
                hop_limit,
                src,
                dst,
                body: r,
            } => Frame::Data {
                hop_limit,
                src,
                dst,
                body: body(r),
            },
            Raw::Control(t) => Frame::Control(t),
            Raw::Skipped(s) => Frame::Skipped(s),
        }
    }
}

/// What one [`StreamDecoder::decode`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<B> {
    /// Bytes to drop from the front of the buffer before the next call.
    pub consumed: usize,
    /// The next frame; `None` means every consumable byte was consumed and more are needed.
    pub frame: Option<Frame<B>>,
}

/// Sans-IO decoder for the peer-link stream.
///
/// Feed it the unconsumed bytes of the stream (in any chunking); each [`StreamDecoder::decode`]
/// call consumes whole units from the front and returns at most one frame, borrowing the body from
/// the slice it was given. It keeps only a few bytes of state between calls (where it is inside a
/// babel packet); everything else stays in the caller's buffer. It never needs more than
/// [`MAX_FRAME_LEN`] contiguous bytes to make progress.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    state: State,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            state: State::Outer,
        }
    }

    /// Decodes from the front of `buf`, which must start where the previous call's consumed
    /// bytes ended. Returns the bytes consumed and the next frame, if one is complete. `None`
    /// means "read more": every byte that could be consumed has been.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Decoded<&'a [u8]>, StreamError> {
        let (consumed, raw) = self.decode_raw(buf)?;
        let frame = raw.map(|r| r.with_body(|range| &buf[range]));
        Ok(Decoded { consumed, frame })
    }

    /// [`StreamDecoder::decode`] with a mutable body, so a data packet can be opened in place.
    pub fn decode_mut<'a>(
        &mut self,
        buf: &'a mut [u8],
    ) -> Result<Decoded<&'a mut [u8]>, StreamError> {
        let (consumed, raw) = self.decode_raw(buf)?;
        let frame = raw.map(|r| r.with_body(|range| &mut buf[range]));
        Ok(Decoded { consumed, frame })
    }

    /// True when the decoder sits at a packet boundary (nothing of a packet is pending).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Outer
    }

    fn decode_raw(&mut self, buf: &[u8]) -> Result<(usize, Option<Raw>), StreamError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Failed(e) => return Err(e),
                State::Discard { remaining } => {
                    let n = rest.len().min(usize::from(remaining));
                    pos += n;
                    // `n <= remaining` by construction.
                    let left = remaining - n as u16;
                    if left > 0 {
                        self.state = State::Discard { remaining: left };
                        return Ok((pos, None));
                    }
                    self.state = State::Outer;
                }
                State::Outer => {
                    let Ok(outer) = OuterHeader::new_checked(rest) else {
                        return Ok((pos, None));
                    };
                    if outer.version() != PROTOCOL_VERSION {
                        let e = StreamError::UnknownVersion(outer.version());
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                    match outer.packet_type() {
                        TYPE_DATA => {
                            let Ok(h) = DataHeader::new_checked(&rest[OUTER_HEADER_LEN..]) else {
                                return Ok((pos, None));
                            };
                            let repr = DataRepr::parse(&h);
                            let total = DATA_FRAME_OVERHEAD + usize::from(repr.body_len);
                            if rest.len() < total {
                                return Ok((pos, None));
                            }
                            let body = pos + DATA_FRAME_OVERHEAD..pos + total;
                            pos += total;
                            let raw = Raw::Data {
                                hop_limit: repr.hop_limit,
                                src: repr.src,
                                dst: repr.dst,
                                body,
                            };
                            return Ok((pos, Some(raw)));
                        }
                        TYPE_CONTROL => {
                            let Ok(babel) = BabelHeader::new_checked(&rest[OUTER_HEADER_LEN..])
                            else {
                                return Ok((pos, None));
                            };
                            pos += OUTER_HEADER_LEN + BABEL_HEADER_LEN;
                            let remaining = babel.body_len();
                            let skip = if babel.magic() != BABEL_MAGIC {
                                Some(Skip::BadMagic(babel.magic()))
                            } else if babel.version() != BABEL_VERSION {
                                Some(Skip::BadVersion(babel.version()))
                            } else {
                                None
                            };
                            self.state = match (skip, remaining) {
                                (_, 0) => State::Outer,
                                (Some(_), _) => State::Discard { remaining },
                                (None, _) => State::ControlBody { remaining },
                            };
                            if let Some(s) = skip {
                                return Ok((pos, Some(Raw::Skipped(s))));
                            }
                        }
                        other => {
                            let e = StreamError::UnknownPacketType(other);
                            self.state = State::Failed(e);
                            return Err(e);
                        }
                    }
                }
                State::ControlBody { remaining } => {
                    if usize::from(remaining) < TLV_HEADER_LEN {
                        self.state = State::Discard { remaining };
                        let s = Skip::TlvOverrun {
                            tlv_type: None,
                            remaining,
                        };
                        return Ok((pos, Some(Raw::Skipped(s))));
                    }
                    let &[tlv_type, len, ..] = rest else {
                        return Ok((pos, None));
                    };
                    let total = TLV_HEADER_LEN + usize::from(len);
                    if total > usize::from(remaining) {
                        self.state = State::Discard { remaining };
                        let s = Skip::TlvOverrun {
                            tlv_type: Some(tlv_type),
                            remaining,
                        };
                        return Ok((pos, Some(Raw::Skipped(s))));
                    }
                    let Some(body) = rest.get(TLV_HEADER_LEN..total) else {
                        return Ok((pos, None));
                    };
                    let raw = match Tlv::decode(tlv_type, body) {
                        Ok(t) => Raw::Control(t),
                        Err(e) => Raw::Skipped(Skip::Tlv(e)),
                    };
                    pos += total;
                    // `total <= remaining` was checked above.
                    let left = remaining - total as u16;
                    self.state = if left == 0 {
                        State::Outer
                    } else {
                        State::ControlBody { remaining: left }
                    };
                    return Ok((pos, Some(raw)));
                }
            }
        }
    }
}

/// A bounded read buffer plus a [`StreamDecoder`]: read from the socket into
/// [`FrameReader::read_space`], [`FrameReader::commit`] the count, then drain
/// [`FrameReader::next_frame`] until it returns `None`.
///
/// A reader made by [`FrameReader::new`] or [`FrameReader::with_capacity`] never grows: it holds at
/// least one maximum frame. Unconsumed bytes are moved to the front only when the room behind
/// the read position falls below a maximum frame (or half the buffer, if that is less), so a copy
/// happens at most once per that many bytes read and moves only the partial frame at the end.
///
/// A reader made by [`FrameReader::growable`] starts smaller than a maximum frame, so that a link
/// that carries only control frames holds little. It grows by itself, never past
/// [`MAX_FRAME_LEN`], only when one frame does not fit; the caller may also
/// [`FrameReader::resize`] it (larger while data flows, back to small when idle).
#[derive(Debug)]
pub struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    decoder: StreamDecoder,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// Default capacity: two maximum frames.
    pub const DEFAULT_CAPACITY: usize = 2 * MAX_FRAME_LEN;

    pub fn new() -> FrameReader {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// `capacity` is raised to at least [`MAX_FRAME_LEN`] so any frame fits.
    pub fn with_capacity(capacity: usize) -> FrameReader {
        Self::sized(capacity.max(MAX_FRAME_LEN))
    }

    /// The smallest buffer a [`FrameReader::growable`] reader has.
    pub const MIN_CAPACITY: usize = 1024;

    /// A reader that starts with `initial` bytes (at least [`FrameReader::MIN_CAPACITY`]) and
    /// doubles, up to [`MAX_FRAME_LEN`], when a frame does not fit.
    pub fn growable(initial: usize) -> FrameReader {
        Self::sized(initial.max(Self::MIN_CAPACITY))
    }

    fn sized(capacity: usize) -> FrameReader {
        FrameReader {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            decoder: StreamDecoder::new(),
        }
    }

    /// The buffer's size now.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Gives the buffer `capacity` bytes (at least [`FrameReader::MIN_CAPACITY`], and never
    /// fewer than are buffered), keeping the unconsumed bytes. Bodies returned before are no
    /// longer in [`FrameReader::buffer_mut`] afterwards.
    pub fn resize(&mut self, capacity: usize) {
        let capacity = capacity.max(Self::MIN_CAPACITY).max(self.buffered());
        if capacity == self.buf.len() {
            return;
        }
        let mut buf = vec![0; capacity].into_boxed_slice();
        let n = self.buffered();
        buf[..n].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = buf;
        self.start = 0;
        self.end = n;
    }

    /// Free space to read into. Empty only if complete frames were left undrained.
    pub fn read_space(&mut self) -> &mut [u8] {
        let len = self.buf.len();
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if len - self.start < MAX_FRAME_LEN.min(len / 2) || self.end == len {
            // Moving the partial frame to the front at most once per half buffer read keeps the
            // copies rare in a small buffer too.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == len && len < MAX_FRAME_LEN {
            // Full of one frame that does not fit yet (the decoder consumes every complete one).
            self.resize((2 * self.buf.len()).min(MAX_FRAME_LEN));
        }
        &mut self.buf[self.end..]
    }

    /// The whole buffer, frames already returned included: bodies located by
    /// [`FrameReader::next_frame_at`] (or opened in place by [`FrameReader::next_frame_mut`])
    /// stay where they are until the next [`FrameReader::read_space`] or
    /// [`FrameReader::resize`], so a caller can hand them on from here without copying.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Marks `n` bytes of [`FrameReader::read_space`] as filled (clamped to the space there was).
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies `bytes` in (for tests and fuzzing); returns how many fitted.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let space = self.read_space();
        let n = space.len().min(bytes.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next frame, borrowing from the buffer; `None` means read more.
    pub fn next_frame(&mut self) -> Result<Option<Frame<&[u8]>>, StreamError> {
        let base = self.start;
        let (n, raw) = self.decoder.decode_raw(&self.buf[base..self.end])?;
        self.start += n;
        Ok(raw.map(|r| r.with_body(|range| &self.buf[base + range.start..base + range.end])))
    }

    /// [`FrameReader::next_frame`] with the body as its byte range in
    /// [`FrameReader::buffer_mut`]: the caller opens it there, and can find what it opened again
    /// by offset after more frames were decoded.
    pub fn next_frame_at(&mut self) -> Result<Option<Frame<Range<usize>>>, StreamError> {
        let base = self.start;
        let (n, raw) = self.decoder.decode_raw(&self.buf[base..self.end])?;
        self.start += n;
        Ok(raw.map(|r| r.with_body(|range| base + range.start..base + range.end)))
    }

    /// [`FrameReader::next_frame`] with a mutable body, to open data packets in place.
    pub fn next_frame_mut(&mut self) -> Result<Option<Frame<&mut [u8]>>, StreamError> {
        let base = self.start;
        let (n, raw) = self.decoder.decode_raw(&self.buf[base..self.end])?;
        self.start += n;
        Ok(raw.map(|r| r.with_body(|range| &mut self.buf[base + range.start..base + range.end])))
    }
}
