//! The Internet checksum (RFC 1071) and its helpers.
//!
//! Conventions used throughout hypha:
//! * a **sum** is the folded, *non-complemented* ones'-complement sum of 16-bit big-endian words,
//!   returned as the number the two bytes would spell in network order (`[0x12, 0x34]` sums to
//!   `0x1234`). Sums of pieces combine with [`add`] as long as every piece but the last has an even
//!   length;
//! * a **checksum** is what goes on the wire: `!sum` ([`finish`]).
//!
//! The Linux `CHECKSUM_PARTIAL` convention (virtio `NEEDS_CSUM`) stores the folded
//! *non-complemented* pseudo-header sum in the L4 checksum field; [`pseudo_v4`] / [`pseudo_v6`]
//! return exactly that value.
//!
//! [`sum`] reads eight bytes at a time into a 64-bit accumulator with end-around carry; the result is
//! bit-identical to the plain RFC 1071 loop in [`reference`](mod@reference), which the tests use as the oracle.

/// Ones'-complement sum of `data` (folded to 16 bits, not complemented), zero-padded on the right
/// when the length is odd.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    // Summing native-endian words and byte-swapping the folded result gives the same value as
    // summing big-endian words (RFC 1071 §2(B), byte-order independence).
    let folded = fold64(sum_ne(data));
    u16::from_be(folded)
}

/// The on-wire checksum of `data`: `!sum(data)`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// Turns a sum into the checksum that goes on the wire.
#[inline]
pub const fn finish(sum: u16) -> u16 {
    !sum
}

/// Ones'-complement addition of two sums.
#[inline]
pub const fn add(a: u16, b: u16) -> u16 {
    let s = a as u32 + b as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Folds a 32-bit accumulator of 16-bit words into a 16-bit sum (end-around carry).
#[inline]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The IPv4 pseudo-header sum (RFC 793/768): source, destination, zero, protocol, L4 length.
#[inline]
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u16 {
    let acc = u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
        + u32::from(protocol)
        + u32::from(l4_len);
    fold(acc)
}

/// The IPv6 pseudo-header sum (RFC 8200 §8.1): source, destination, 32-bit upper-layer length,
/// three zero bytes, next header.
#[inline]
pub fn pseudo_v6(src: [u8; 16], dst: [u8; 16], protocol: u8, l4_len: u32) -> u16 {
    let mut acc = 0u32;
    for pair in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    acc += (l4_len >> 16) + (l4_len & 0xffff) + u32::from(protocol);
    fold(acc)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word covered by `checksum` changed from `old` to
/// `new` (`HC' = ~(~HC + ~m + m')`).
#[inline]
pub const fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !add(add(!checksum, !old), new)
}

/// [`update`] for a 32-bit field (two adjacent words), e.g. a TCP sequence number.
#[inline]
pub const fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    let c = update(checksum, (old >> 16) as u16, (new >> 16) as u16);
    update(c, old as u16, new as u16)
}

#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_ne_bytes(w)
}

#[inline(always)]
fn adc(acc: u64, w: u64) -> u64 {
    let (s, carry) = acc.overflowing_add(w);
    s + u64::from(carry)
}

/// Ones'-complement sum of native-endian 64-bit words, unfolded.
fn sum_ne(data: &[u8]) -> u64 {
    // Two independent carry chains so the adds of one 32-byte block can overlap.
    let mut a = 0u64;
    let mut b = 0u64;
    let mut blocks = data.chunks_exact(32);
    for blk in &mut blocks {
        a = adc(a, word(&blk[0..]));
        b = adc(b, word(&blk[8..]));
        a = adc(a, word(&blk[16..]));
        b = adc(b, word(&blk[24..]));
    }
    let mut acc = adc(a, b);
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        acc = adc(acc, word(w));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        // Zero padding on the right keeps every byte in its own 16-bit lane, because the tail starts
        // at an offset that is a multiple of eight.
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        acc = adc(acc, u64::from_ne_bytes(w));
    }
    acc
}

#[inline]
fn fold64(acc: u64) -> u16 {
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    fold(acc as u32)
}

/// The plain RFC 1071 loop, two bytes at a time. Slow on purpose: it is the oracle the tests and
/// benchmarks compare [`sum`] against.
pub mod reference {
    /// Folded, non-complemented ones'-complement sum of `data` (same contract as [`super::sum`]).
    pub fn sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut pairs = data.chunks_exact(2);
        for p in &mut pairs {
            acc += u32::from(p[0]) << 8 | u32::from(p[1]);
            // Fold as we go so the accumulator can never overflow, whatever the length.
            acc = (acc & 0xffff) + (acc >> 16);
        }
        if let [last] = pairs.remainder() {
            acc += u32::from(*last) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 worked example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(reference::sum(&data), 0xddf2);
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_right() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(reference::sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn all_zero_and_empty_sum_to_zero() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0; 77]), 0);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn fast_matches_reference_all_small_lengths_and_offsets() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..data.len() {
                let s = &data[start..end];
                assert_eq!(sum(s), reference::sum(s), "start {start} end {end}");
            }
        }
    }

    #[test]
    fn all_ones_does_not_collapse_to_zero() {
        let data = [0xff; 64];
        assert_eq!(reference::sum(&data), 0xffff);
        assert_eq!(sum(&data), 0xffff);
    }

    #[test]
    fn add_combines_even_pieces() {
        let data: Vec<u8> = (0..200u8).collect();
        let (a, b) = data.split_at(64);
        assert_eq!(add(sum(a), sum(b)), sum(&data));
    }

    #[test]
    fn pseudo_v4_matches_byte_layout() {
        let src = [192, 0, 2, 1];
        let dst = [198, 18, 0, 7];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&[0, 6]);
        bytes.extend_from_slice(&1234u16.to_be_bytes());
        assert_eq!(pseudo_v4(src, dst, 6, 1234), reference::sum(&bytes));
    }

    #[test]
    fn pseudo_v6_matches_byte_layout() {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        for i in 0..16 {
            src[i] = 0xf0 ^ i as u8;
            dst[i] = 0x0f ^ (i as u8 * 7);
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&70_000u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(pseudo_v6(src, dst, 17, 70_000), reference::sum(&bytes));
    }

    #[test]
    fn rfc1624_update_matches_recompute() {
        let mut data: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        let before = checksum(&data);
        let old = u16::from_be_bytes([data[6], data[7]]);
        data[6..8].copy_from_slice(&0xbeefu16.to_be_bytes());
        // Both 0x0000 and 0xffff encode zero; compare the values mod 0xffff.
        let want = checksum(&data);
        let got = update(before, old, 0xbeef);
        assert_eq!(got % 0xffff, want % 0xffff);

        let old32 = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let before = checksum(&data);
        data[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let got = update32(before, old32, 0x1234_5678);
        assert_eq!(got % 0xffff, checksum(&data) % 0xffff);
    }

    #[test]
    fn rfc1624_worked_example() {
        // RFC 1624 §3: C = 0xcd7a, m = 0x5555 -> m' = 0x3285; HC = 0xdd2f, HC' must be 0x0000
        // (eqn. 2 would give the wrong 0xffff).
        assert_eq!(finish(add(0xcd7a, 0x5555)), 0xdd2f);
        assert_eq!(update(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        #[test]
        fn fast_sum_equals_rfc1071_reference(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000),
            start in 0usize..16,
        ) {
            // Odd start offsets give odd alignments in memory and odd lengths.
            let s = &data[start.min(data.len())..];
            proptest::prop_assert_eq!(sum(s), reference::sum(s));
        }

        #[test]
        fn fast_sum_equals_reference_on_large_buffers(
            len in 60_000usize..65_536, fill in proptest::prelude::any::<u8>(), step in 1u8..255,
        ) {
            let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add((i as u8).wrapping_mul(step))).collect();
            proptest::prop_assert_eq!(sum(&data), reference::sum(&data));
        }

        #[test]
        fn split_sums_combine(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), cut in 0usize..1500) {
            let cut = (cut * 2).min(data.len() & !1);
            proptest::prop_assert_eq!(add(sum(&data[..cut]), sum(&data[cut..])), sum(&data));
        }
    }
}
