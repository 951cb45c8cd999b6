//! Overlay address derivation (docs/protocol.md §2.2), kept local so the routing core does not
//! depend on the crypto crate: the Update ownership filter needs nothing else from it.

use std::net::Ipv6Addr;
use wire::babel::Subnet;

/// The overlay `400::/7`.
pub fn overlay() -> Subnet {
    Subnet::new(Ipv6Addr::new(0x400, 0, 0, 0, 0, 0, 0, 0), 7).unwrap_or_else(|| unreachable!())
}

/// `BLAKE3(pk)[0..16]` with byte 0 replaced by `0x04 | parity(popcount(h[0]))`.
pub fn derive_address(public_key: &[u8; 32]) -> Ipv6Addr {
    let h = blake3::hash(public_key);
    let h = h.as_bytes();
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[..16]);
    a[0] = 0x04 | (h[0].count_ones() as u8 & 1);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        k
    }

    #[test]
    fn protocol_doc_vectors() {
        let a = derive_address(&hex32(
            "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f",
        ));
        assert_eq!(
            a,
            "430:9364:d8d8:84a9:dd60:de78:c767:d361"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
        let b = derive_address(&hex32(
            "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254",
        ));
        assert_eq!(
            b,
            "437:5106:5530:1589:7c53:fa73:c63e:1ddb"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
        assert!(overlay().contains_addr(a) && overlay().contains_addr(b));
    }
}
