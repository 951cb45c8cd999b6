//! The link-local discovery beacon (`docs/protocol.md` §7.1): `"mycelium"` ‖ TCP port
//! (big-endian) ‖ router-id, 50 bytes, sent to `ff02::cafe` on the discovery port.

use core::ops::Range;

use crate::babel::RouterId;

/// Beacons are exactly this long.
pub const LEN: usize = 50;
/// The first 8 bytes of every beacon.
pub const MAGIC: [u8; 8] = *b"mycelium";

mod field {
    use super::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const PORT: Range<usize> = 8..10;
    pub const ROUTER_ID: Range<usize> = 10..50;
}

/// Why bytes are not a beacon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not exactly [`LEN`] bytes (how many there were).
    Length(usize),
    /// The first 8 bytes are not `mycelium`.
    Magic,
}

/// A view of a received beacon: length and magic checked.
#[derive(Clone, Copy, Debug)]
pub struct Beacon<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Beacon<T> {
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() != LEN {
            return Err(Error::Length(b.len()));
        }
        if b[field::MAGIC] != MAGIC {
            return Err(Error::Magic);
        }
        Ok(Beacon { buffer })
    }

    /// The TCP port the sender listens on for peers.
    pub fn tcp_port(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PORT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The sender's router-id.
    pub fn router_id(&self) -> RouterId {
        let mut id = [0u8; RouterId::LEN];
        id.copy_from_slice(&self.buffer.as_ref()[field::ROUTER_ID]);
        RouterId(id)
    }
}

/// The beacon announcing `tcp_port` and `router_id`.
pub fn emit(tcp_port: u16, router_id: &RouterId) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[field::MAGIC].copy_from_slice(&MAGIC);
    b[field::PORT].copy_from_slice(&tcp_port.to_be_bytes());
    b[field::ROUTER_ID].copy_from_slice(&router_id.0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construct_and_deconstruct() {
        let id = RouterId::new([0xaa; 32], [1, 2, 3, 4, 5, 6]);
        let b = emit(9651, &id);
        assert_eq!(&b[..8], b"mycelium");
        assert_eq!(&b[8..10], &[0x25, 0xb3]);
        assert_eq!(&b[10..42], &[0xaa; 32]);
        assert_eq!(&b[42..44], &[0, 0]);
        assert_eq!(&b[44..], &[1, 2, 3, 4, 5, 6]);
        let v = Beacon::new_checked(&b[..]).unwrap();
        assert_eq!(v.tcp_port(), 9651);
        assert_eq!(v.router_id(), id);
    }

    #[test]
    fn wrong_length_or_magic_is_refused() {
        let b = emit(1, &RouterId::new([1; 32], [0; 6]));
        assert_eq!(Beacon::new_checked(&b[..49]).err(), Some(Error::Length(49)));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(
            Beacon::new_checked(&long[..]).err(),
            Some(Error::Length(51))
        );
        let mut bad = b;
        bad[0] = b'M';
        assert_eq!(Beacon::new_checked(&bad[..]).err(), Some(Error::Magic));
    }
}
