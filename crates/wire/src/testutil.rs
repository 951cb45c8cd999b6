//! What the unit tests of the babel codec and the frame codec share: the hex reader and the
//! identities of the spec's vectors.

use crate::babel::{Metric, Prefix, RouterId, SeqNo, Subnet, Update};

/// The bytes of a hex string; anything but hex digits (spaces, say) is skipped.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The router id of the vectors: bytes 0, 1, 2, … 39.
pub fn rid() -> RouterId {
    let mut b = [0u8; 40];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    RouterId(b)
}

/// [`rid`] in hex.
pub const RID_HEX: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627";

/// The /64 of the vectors' node A.
pub fn subnet() -> Subnet {
    "430:9364:d8d8:84a9::/64".parse().unwrap()
}

/// The Update of the vectors: our /64 under [`rid`], seqno 7, metric 0, interval 300 s.
pub fn update() -> Update {
    Update {
        flags: 0,
        interval: 30000,
        seqno: SeqNo(7),
        metric: Metric(0),
        prefix: Prefix::V6(subnet()),
        router_id: rid(),
    }
}
