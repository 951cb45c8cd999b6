//! The message packet: what follows the 4-byte inner header of a data frame of inner type 1
//! (`docs/messages.md` §2). All integers big-endian.
//!
//! ```text
//! 0   8  message id
//! 8   2  flags (INIT 0x8000, DONE 0x4000, ABORTED 0x2000, CHUNK 0x1000, READ 0x0800,
//!        REPLY 0x0400, ACK 0x0100)
//! 10  2  reserved (0)
//! 12  .. body: INIT   u64 length | u8 topic length | topic
//!              CHUNK  u64 index | u64 offset | u64 size | data   (an ACK stops after size)
//!              DONE   u64 chunk count | 32-byte BLAKE3 hash of the whole message
//! ```
//! The kind of a packet is its highest kind flag, in the order INIT, CHUNK, DONE, READ, ABORTED;
//! REPLY and ACK qualify it.

use std::fmt;

/// Bytes before the body.
pub const HEADER_LEN: usize = 12;
/// The fixed part of a CHUNK body (index, offset, size).
pub const CHUNK_HEADER_LEN: usize = 24;
/// A DONE body.
pub const DONE_BODY_LEN: usize = 40;
/// Data in one chunk, as senders cut messages; receivers size their chunk table by it.
pub const CHUNK_SIZE: usize = 1300;
/// Receivers refuse non-final chunks shorter than this.
pub const MIN_CHUNK_SIZE: usize = 250;
/// Longest topic.
pub const MAX_TOPIC_LEN: usize = 255;
/// The hop limit message packets leave with.
pub const HOP_LIMIT: u8 = 64;

mod field {
    use std::ops::Range;
    pub const ID: Range<usize> = 0..8;
    pub const FLAGS: Range<usize> = 8..10;
    pub const INIT_LEN: Range<usize> = 0..8;
    pub const INIT_TOPIC_LEN: usize = 8;
    pub const INIT_TOPIC: usize = 9;
    pub const CHUNK_INDEX: Range<usize> = 0..8;
    pub const CHUNK_OFFSET: Range<usize> = 8..16;
    pub const CHUNK_SIZE: Range<usize> = 16..24;
    pub const DONE_COUNT: Range<usize> = 0..8;
    pub const DONE_HASH: Range<usize> = 8..40;
}

/// The flag bits.
pub mod flags {
    pub const INIT: u16 = 0x8000;
    pub const DONE: u16 = 0x4000;
    pub const ABORTED: u16 = 0x2000;
    pub const CHUNK: u16 = 0x1000;
    pub const READ: u16 = 0x0800;
    pub const REPLY: u16 = 0x0400;
    pub const ACK: u16 = 0x0100;
    /// Every bit with a meaning.
    pub const KNOWN: u16 = INIT | DONE | ABORTED | CHUNK | READ | REPLY | ACK;
}

/// A message id: 8 random bytes, 16 hex digits in the APIs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 8]);

impl MessageId {
    pub fn to_hex(self) -> String {
        let mut s = String::with_capacity(16);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// 16 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<MessageId> {
        let b = s.as_bytes();
        if b.len() != 16 {
            return None;
        }
        let mut id = [0u8; 8];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            id[i] = (hi * 16 + lo) as u8;
        }
        Some(MessageId(id))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a packet was refused; each is counted by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than the header, or than its kind's body.
    Short,
    /// No kind flag set, or bits without a meaning.
    UnknownFlags(u16),
    /// A CHUNK whose size field claims more data than it carries.
    ChunkTruncated,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Short => f.write_str("packet too short"),
            PacketError::UnknownFlags(x) => write!(f, "unknown flags {x:#06x}"),
            PacketError::ChunkTruncated => f.write_str("chunk shorter than its size field"),
        }
    }
}

/// A parsed packet, borrowing its variable parts from the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    Init {
        id: MessageId,
        reply: bool,
        ack: bool,
        len: u64,
        topic: &'a [u8],
    },
    Chunk {
        id: MessageId,
        ack: bool,
        index: u64,
        offset: u64,
        /// The size field (for an ACK, the size of the chunk acknowledged).
        size: u64,
        /// Empty in an ACK.
        data: &'a [u8],
    },
    Done {
        id: MessageId,
        ack: bool,
        chunks: u64,
        hash: [u8; 32],
    },
    Read {
        id: MessageId,
        ack: bool,
    },
    Aborted {
        id: MessageId,
    },
}

fn u64_at(b: &[u8], r: std::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

impl<'a> Repr<'a> {
    /// Parses untrusted bytes; never panics.
    pub fn parse(p: &'a [u8]) -> Result<Repr<'a>, PacketError> {
        if p.len() < HEADER_LEN {
            return Err(PacketError::Short);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&p[field::ID]);
        let id = MessageId(id);
        let f = u16::from_be_bytes([p[field::FLAGS.start], p[field::FLAGS.start + 1]]);
        if f & !flags::KNOWN != 0 {
            return Err(PacketError::UnknownFlags(f));
        }
        let body = &p[HEADER_LEN..];
        let ack = f & flags::ACK != 0;
        if f & flags::INIT != 0 {
            if body.len() <= field::INIT_TOPIC_LEN {
                return Err(PacketError::Short);
            }
            let tlen = usize::from(body[field::INIT_TOPIC_LEN]);
            let topic = match body.get(field::INIT_TOPIC..field::INIT_TOPIC + tlen) {
                Some(t) => t,
                // An acknowledgement may stop after the topic length: the sender only needs the
                // id and flags back.
                None if ack => &body[field::INIT_TOPIC..],
                None => return Err(PacketError::Short),
            };
            Ok(Repr::Init {
                id,
                reply: f & flags::REPLY != 0,
                ack,
                len: u64_at(body, field::INIT_LEN),
                topic,
            })
        } else if f & flags::CHUNK != 0 {
            if body.len() < CHUNK_HEADER_LEN {
                return Err(PacketError::Short);
            }
            let size = u64_at(body, field::CHUNK_SIZE);
            let rest = &body[CHUNK_HEADER_LEN..];
            let data = if ack {
                &rest[..0]
            } else {
                let n = usize::try_from(size).map_err(|_| PacketError::ChunkTruncated)?;
                rest.get(..n).ok_or(PacketError::ChunkTruncated)?
            };
            Ok(Repr::Chunk {
                id,
                ack,
                index: u64_at(body, field::CHUNK_INDEX),
                offset: u64_at(body, field::CHUNK_OFFSET),
                size,
                data,
            })
        } else if f & flags::DONE != 0 {
            if body.len() < DONE_BODY_LEN {
                return Err(PacketError::Short);
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&body[field::DONE_HASH]);
            Ok(Repr::Done {
                id,
                ack,
                chunks: u64_at(body, field::DONE_COUNT),
                hash,
            })
        } else if f & flags::READ != 0 {
            Ok(Repr::Read { id, ack })
        } else if f & flags::ABORTED != 0 {
            Ok(Repr::Aborted { id })
        } else {
            Err(PacketError::UnknownFlags(f))
        }
    }

    /// Bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Repr::Init { topic, .. } => field::INIT_TOPIC + topic.len(),
                Repr::Chunk { data, .. } => CHUNK_HEADER_LEN + data.len(),
                Repr::Done { .. } => DONE_BODY_LEN,
                Repr::Read { .. } | Repr::Aborted { .. } => 0,
            }
    }

    /// Appends the packet to `out`. A topic longer than [`MAX_TOPIC_LEN`] is cut (callers refuse
    /// such topics before they get here).
    pub fn emit(&self, out: &mut Vec<u8>) {
        let (id, mut f) = match *self {
            Repr::Init { id, reply, ack, .. } => (
                id,
                flags::INIT
                    | if reply { flags::REPLY } else { 0 }
                    | if ack { flags::ACK } else { 0 },
            ),
            Repr::Chunk { id, .. } => (id, flags::CHUNK),
            Repr::Done { id, ack, .. } => (id, flags::DONE | if ack { flags::ACK } else { 0 }),
            Repr::Read { id, ack } => (id, flags::READ | if ack { flags::ACK } else { 0 }),
            Repr::Aborted { id } => (id, flags::ABORTED),
        };
        if let Repr::Chunk { ack: true, .. } = self {
            f |= flags::ACK;
        }
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&f.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        match self {
            Repr::Init { len, topic, .. } => {
                let topic = &topic[..topic.len().min(MAX_TOPIC_LEN)];
                out.extend_from_slice(&len.to_be_bytes());
                out.push(topic.len() as u8);
                out.extend_from_slice(topic);
            }
            Repr::Chunk {
                index,
                offset,
                size,
                data,
                ..
            } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(data);
            }
            Repr::Done { chunks, hash, .. } => {
                out.extend_from_slice(&chunks.to_be_bytes());
                out.extend_from_slice(hash);
            }
            Repr::Read { .. } | Repr::Aborted { .. } => {}
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buffer_len());
        self.emit(&mut v);
        v
    }

    pub fn id(&self) -> MessageId {
        match *self {
            Repr::Init { id, .. }
            | Repr::Chunk { id, .. }
            | Repr::Done { id, .. }
            | Repr::Read { id, .. }
            | Repr::Aborted { id } => id,
        }
    }
}

/// The BLAKE3 hash a DONE carries.
pub fn checksum(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: MessageId = MessageId([1, 2, 3, 4, 5, 6, 7, 8]);

    #[test]
    fn init_bytes() {
        let r = Repr::Init {
            id: ID,
            reply: false,
            ack: false,
            len: 33_752_069,
            topic: b"ab",
        };
        let v = r.to_vec();
        assert_eq!(
            v,
            [1, 2, 3, 4, 5, 6, 7, 8, 0x80, 0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 5, 2, b'a', b'b']
        );
        assert_eq!(Repr::parse(&v), Ok(r));
    }

    #[test]
    fn init_ack_of_a_reply_keeps_every_flag() {
        let r = Repr::Init {
            id: ID,
            reply: true,
            ack: true,
            len: 5,
            topic: b"",
        };
        let v = r.to_vec();
        assert_eq!(&v[8..10], &[0x85, 0x00]);
        assert_eq!(Repr::parse(&v), Ok(r));
    }

    #[test]
    fn init_ack_may_stop_after_the_topic_length() {
        let mut v = Repr::Init {
            id: ID,
            reply: false,
            ack: true,
            len: 9,
            topic: b"news",
        }
        .to_vec();
        v.truncate(HEADER_LEN + 9);
        match Repr::parse(&v) {
            Ok(Repr::Init {
                ack: true, topic, ..
            }) => assert!(topic.is_empty()),
            other => panic!("{other:?}"),
        }
        // Not so an INIT itself.
        v[8] = 0x80;
        assert_eq!(Repr::parse(&v), Err(PacketError::Short));
    }

    #[test]
    fn chunk_and_its_ack() {
        let data = [9u8; 300];
        let r = Repr::Chunk {
            id: ID,
            ack: false,
            index: 723,
            offset: 1_000_000,
            size: 300,
            data: &data,
        };
        let v = r.to_vec();
        assert_eq!(v.len(), HEADER_LEN + CHUNK_HEADER_LEN + 300);
        assert_eq!(&v[8..10], &[0x10, 0]);
        assert_eq!(&v[12..20], &[0, 0, 0, 0, 0, 0, 2, 211]);
        assert_eq!(&v[20..28], &[0, 0, 0, 0, 0, 15, 66, 64]);
        assert_eq!(Repr::parse(&v), Ok(r));
        // The ACK is the chunk header cut after the size field.
        let mut ack = v[..HEADER_LEN + CHUNK_HEADER_LEN].to_vec();
        ack[8..10].copy_from_slice(&(flags::CHUNK | flags::ACK).to_be_bytes());
        match Repr::parse(&ack).unwrap() {
            Repr::Chunk {
                ack: true,
                index: 723,
                size: 300,
                data,
                ..
            } => assert!(data.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn done_bytes() {
        let r = Repr::Done {
            id: ID,
            ack: false,
            chunks: 3,
            hash: checksum(b"hello"),
        };
        let v = r.to_vec();
        assert_eq!(v.len(), HEADER_LEN + DONE_BODY_LEN);
        assert_eq!(&v[8..10], &[0x40, 0]);
        assert_eq!(Repr::parse(&v), Ok(r));
    }

    #[test]
    fn read_and_aborted() {
        for r in [Repr::Read { id: ID, ack: false }, Repr::Aborted { id: ID }] {
            assert_eq!(Repr::parse(&r.to_vec()), Ok(r));
        }
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(Repr::parse(&[0; 11]), Err(PacketError::Short));
        // No kind flag.
        assert_eq!(Repr::parse(&[0; 12]), Err(PacketError::UnknownFlags(0)));
        // A bit without meaning.
        let mut p = [0u8; 12];
        p[8] = 0x80;
        p[9] = 0x01;
        assert_eq!(Repr::parse(&p), Err(PacketError::UnknownFlags(0x8001)));
        // INIT without its length, or with a topic past the end.
        let mut p = vec![0u8; 12];
        p[8] = 0x80;
        assert_eq!(Repr::parse(&p), Err(PacketError::Short));
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 5, b'a']);
        assert_eq!(Repr::parse(&p), Err(PacketError::Short));
        // CHUNK whose size field is past its data, or without its header.
        let mut p = vec![0u8; 12 + 24 + 10];
        p[8] = 0x10;
        p[12 + 23] = 11;
        assert_eq!(Repr::parse(&p), Err(PacketError::ChunkTruncated));
        p[12 + 16..12 + 24].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(Repr::parse(&p), Err(PacketError::ChunkTruncated));
        assert_eq!(Repr::parse(&p[..30]), Err(PacketError::Short));
        // DONE without its hash.
        let mut p = vec![0u8; 12 + 39];
        p[8] = 0x40;
        assert_eq!(Repr::parse(&p), Err(PacketError::Short));
    }

    #[test]
    fn ids_in_hex() {
        assert_eq!(ID.to_hex(), "0102030405060708");
        assert_eq!(MessageId::from_hex("0102030405060708"), Some(ID));
        assert_eq!(MessageId::from_hex("01020304050607"), None);
        assert_eq!(MessageId::from_hex("010203040506070g"), None);
        assert_eq!(MessageId::from_hex("ééééééé"), None);
    }
}
