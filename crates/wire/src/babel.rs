//! Routing TLVs in mycelium's Babel variant (docs/protocol.md §4), and the values they carry.
//!
//! The value types ([`SeqNo`], [`Metric`], [`RouterId`], [`Subnet`], [`Prefix`]) and the five TLV
//! structs are the vocabulary shared by the codec and the routing core. The codec (`decode`/`encode`)
//! lives in the submodules; everything here is plain data.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

mod codec;

pub use codec::{
    DecodeError, EncodeError, Reader, HELLO_UNICAST, MIN_REQUEST_PLEN, SEQNO_REQUEST_HOPS,
    UPDATE_FLAGS_KEPT,
};

/// TLV type numbers (docs/protocol.md §4.1).
pub mod tlv_type {
    pub const HELLO: u8 = 4;
    pub const IHU: u8 = 5;
    pub const UPDATE: u8 = 8;
    pub const ROUTE_REQUEST: u8 = 9;
    pub const SEQNO_REQUEST: u8 = 10;
}

/// Address encodings (docs/protocol.md §4.1).
pub mod ae {
    pub const WILDCARD: u8 = 0;
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const IPV6_LINK_LOCAL: u8 = 3;
}

/// A 16-bit sequence number compared modulo 2^16 (RFC 8966 §3.2.1; docs/protocol.md §4.7).
///
/// Deliberately not `Ord`: the order is not total (values exactly 32768 apart are unordered).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// `self < other` in modular order.
    pub fn lt(self, other: SeqNo) -> bool {
        self.0 != other.0 && other.0.wrapping_sub(self.0) < 0x8000
    }
    /// `self > other` in modular order.
    pub fn gt(self, other: SeqNo) -> bool {
        self.0 != other.0 && other.0.wrapping_sub(self.0) > 0x8000
    }
    /// The next value, wrapping.
    #[must_use]
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNo({})", self.0)
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A route metric: 0 is directly connected, 0xFFFF is infinite (a retraction)
/// (docs/protocol.md §4.7).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Metric(pub u16);

impl Metric {
    pub const INFINITE: Metric = Metric(0xFFFF);
    /// The largest finite metric; finite sums clamp here.
    pub const MAX_FINITE: Metric = Metric(0xFFFE);

    pub fn is_infinite(self) -> bool {
        self == Self::INFINITE
    }

    /// Infinite if either side is; otherwise the sum clamped to [`Metric::MAX_FINITE`].
    #[must_use]
    pub fn saturating_add(self, other: Metric) -> Metric {
        if self.is_infinite() || other.is_infinite() {
            return Self::INFINITE;
        }
        match self.0.checked_add(other.0) {
            Some(v) if v != 0xFFFF => Metric(v),
            _ => Self::MAX_FINITE,
        }
    }

    /// Saturates at 0; infinity minus anything finite stays infinite; minus infinity is 0
    /// (mycelium panics there; we do not).
    #[must_use]
    pub fn saturating_sub(self, other: Metric) -> Metric {
        if other.is_infinite() {
            return Metric(0);
        }
        if self.is_infinite() {
            return Self::INFINITE;
        }
        Metric(self.0.saturating_sub(other.0))
    }
}

impl fmt::Debug for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_infinite() {
            write!(f, "Metric(inf)")
        } else {
            write!(f, "Metric({})", self.0)
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_infinite() {
            f.write_str("infinite")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A 40-byte router-id: X25519 public key (32) ‖ zone `00 00` (2) ‖ per-boot random (6)
/// (docs/protocol.md §2.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId(pub [u8; 40]);

impl RouterId {
    pub const LEN: usize = 40;

    /// Builds a router-id from a public key and a per-boot random suffix (zone 0).
    pub fn new(public_key: [u8; 32], random: [u8; 6]) -> RouterId {
        let mut b = [0u8; 40];
        b[..32].copy_from_slice(&public_key);
        b[34..].copy_from_slice(&random);
        RouterId(b)
    }

    /// The X25519 public key of the originating node: the encryption key for its subnet.
    pub fn public_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.0[..32]);
        k
    }

    pub fn zone(&self) -> u16 {
        u16::from_be_bytes([self.0[32], self.0[33]])
    }

    pub fn random_suffix(&self) -> [u8; 6] {
        let mut r = [0u8; 6];
        r.copy_from_slice(&self.0[34..]);
        r
    }
}

impl fmt::Display for RouterId {
    /// `<64 hex pk>-<4 hex zone>-<12 hex rnd>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..32] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:04x}-", self.zone())?;
        for b in &self.0[34..] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouterId({self})")
    }
}

/// An IPv6 subnet in network form (host bits are always zero).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv6Addr,
    plen: u8,
}

impl Subnet {
    /// Masks `addr` to `plen` bits. `None` if `plen > 128`.
    pub fn new(addr: Ipv6Addr, plen: u8) -> Option<Subnet> {
        if plen > 128 {
            return None;
        }
        let bits = u128::from(addr);
        let mask = if plen == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(plen))
        };
        Some(Subnet {
            addr: Ipv6Addr::from(bits & mask),
            plen,
        })
    }

    /// The /64 containing `addr`.
    pub fn slash64(addr: Ipv6Addr) -> Subnet {
        Subnet::new(addr, 64).expect("64 <= 128")
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.plen
    }

    pub fn contains_addr(&self, a: Ipv6Addr) -> bool {
        Subnet::new(a, self.plen).is_some_and(|s| s.addr == self.addr)
    }

    /// `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Subnet) -> bool {
        other.plen >= self.plen && self.contains_addr(other.addr)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.plen)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

impl core::str::FromStr for Subnet {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').ok_or("missing '/prefix-length'")?;
        let addr: Ipv6Addr = a.parse().map_err(|_| "invalid IPv6 address")?;
        let plen: u8 = p.parse().map_err(|_| "invalid prefix length")?;
        Subnet::new(addr, plen).ok_or("prefix length above 128")
    }
}

/// A prefix as carried in a TLV, by address encoding. Only [`Prefix::V6`] is ever routed; the other
/// forms are decoded so that a receiver can recognise and ignore them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Prefix {
    /// AE 0: no address, plen 0.
    Wildcard,
    /// AE 1: an IPv4 prefix (plen ≤ 32), host bits zero.
    V4 { addr: Ipv4Addr, plen: u8 },
    /// AE 2: an IPv6 prefix.
    V6(Subnet),
    /// AE 3: an IPv6 link-local prefix `fe80::<iid>/64`, carried as its 8-byte interface id.
    LinkLocal { iid: [u8; 8] },
}

/// Hello (type 4, body 6 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hello {
    /// 0x8000 = unicast (mycelium sends only that).
    pub flags: u16,
    pub seqno: SeqNo,
    /// Centiseconds.
    pub interval: u16,
}

/// IHU (type 5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ihu {
    pub rx_cost: Metric,
    /// Centiseconds.
    pub interval: u16,
    /// `None` = AE 0 (what mycelium sends). `Some(Prefix::V4/V6/LinkLocal)` carries a full address.
    pub address: Option<Prefix>,
}

/// Update (type 8): prefix then 40-byte router-id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Update {
    /// Only bits 0xC0 are kept on receive.
    pub flags: u8,
    /// Centiseconds. Hold time at the receiver is 3.5 × interval.
    pub interval: u16,
    pub seqno: SeqNo,
    pub metric: Metric,
    pub prefix: Prefix,
    pub router_id: RouterId,
}

/// RouteRequest (type 9): generation byte first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RouteRequest {
    pub generation: u8,
    pub prefix: Prefix,
}

/// SeqNoRequest (type 10): router-id before the prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SeqNoRequest {
    pub seqno: SeqNo,
    pub hop_count: u8,
    pub router_id: RouterId,
    pub prefix: Prefix,
}

/// One control TLV.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tlv {
    Hello(Hello),
    Ihu(Ihu),
    Update(Update),
    RouteRequest(RouteRequest),
    SeqNoRequest(SeqNoRequest),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqno_order_is_modular() {
        assert!(SeqNo(1).lt(SeqNo(2)));
        assert!(SeqNo(0xFFFF).lt(SeqNo(0)));
        assert!(SeqNo(0).gt(SeqNo(0xFFFF)));
        assert!(!SeqNo(0).lt(SeqNo(0x8000)) && !SeqNo(0).gt(SeqNo(0x8000)));
        assert!(!SeqNo(5).lt(SeqNo(5)) && !SeqNo(5).gt(SeqNo(5)));
    }

    #[test]
    fn metric_addition_saturates() {
        assert_eq!(Metric(1).saturating_add(Metric(2)), Metric(3));
        assert_eq!(Metric(0xFFFE).saturating_add(Metric(1)), Metric::MAX_FINITE);
        assert_eq!(
            Metric(0xFFF0).saturating_add(Metric(0x20)),
            Metric::MAX_FINITE
        );
        assert_eq!(Metric::INFINITE.saturating_add(Metric(0)), Metric::INFINITE);
        assert_eq!(Metric(10).saturating_sub(Metric(20)), Metric(0));
        assert_eq!(
            Metric::INFINITE.saturating_sub(Metric(20)),
            Metric::INFINITE
        );
    }

    #[test]
    fn subnet_masks_and_contains() {
        let s: Subnet = "430:9364:d8d8:84a9:dd60::1/64".parse().unwrap();
        assert_eq!(s.to_string(), "430:9364:d8d8:84a9::/64");
        assert!(s.contains_addr("430:9364:d8d8:84a9:ffff::".parse().unwrap()));
        assert!(!s.contains_addr("430:9364:d8d8:84aa::".parse().unwrap()));
        let seven = Subnet::new("400::".parse().unwrap(), 7).unwrap();
        assert!(seven.contains(&s));
        assert!(!s.contains(&seven));
        assert!(Subnet::new(Ipv6Addr::UNSPECIFIED, 129).is_none());
    }

    #[test]
    fn router_id_parts() {
        let mut b = [0u8; 40];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        let r = RouterId(b);
        assert_eq!(r.public_key()[31], 31);
        assert_eq!(r.zone(), 0x2021);
        assert_eq!(r.random_suffix(), [34, 35, 36, 37, 38, 39]);
        let n = RouterId::new([7; 32], [9; 6]);
        assert_eq!(n.zone(), 0);
        assert!(n.to_string().ends_with("-0000-090909090909"));
    }
}
