//! Offload negotiation: which `TUNSETOFFLOAD` mask the kernel grants, as a pure ladder over a
//! "try this mask" callback so that it can be tested without a kernel.

use std::io;

/// `TUN_F_*` bits from `include/uapi/linux/if_tun.h`.
pub mod flags {
    /// The kernel may hand us packets with partial checksums (`NEEDS_CSUM`). Every other bit
    /// counts only together with this one.
    pub const CSUM: u32 = 0x01;
    pub const TSO4: u32 = 0x02;
    pub const TSO6: u32 = 0x04;
    pub const TSO_ECN: u32 = 0x08;
    pub const UFO: u32 = 0x10;
    /// USO4 and USO6 must be set together (Linux 6.2+).
    pub const USO4: u32 = 0x20;
    pub const USO6: u32 = 0x40;
}

use flags::*;

/// The masks tried, best first. An unknown bit makes the kernel answer `EINVAL`, so the first
/// mask accepted is the best the running kernel supports.
pub const LADDER: [u32; 4] = [
    CSUM | TSO4 | TSO6 | TSO_ECN | USO4 | USO6,
    CSUM | TSO4 | TSO6 | TSO_ECN,
    CSUM | TSO4 | TSO6,
    CSUM,
];

/// Walks [`LADDER`] calling `try_mask` until one mask is accepted, and returns it. `None` means
/// not even `TUN_F_CSUM` was accepted: the caller must then run without a vnet header at all.
pub fn probe_ladder(mut try_mask: impl FnMut(u32) -> io::Result<()>) -> Option<u32> {
    LADDER.into_iter().find(|&mask| try_mask(mask).is_ok())
}

/// What was negotiated with the kernel for one device. Every later decision (whether reads can
/// return super-packets, whether writes may be coalesced) reads this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Bytes of `virtio_net_hdr` before every packet on read and write; 0 = plain packets.
    pub vnet_hdr_len: usize,
    /// The `TUN_F_*` mask the kernel accepted (0 when offloads are off).
    pub offload_mask: u32,
    /// The device was opened with `IFF_MULTI_QUEUE`.
    pub multi_queue: bool,
}

impl Capabilities {
    /// Packets carry a vnet header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr_len != 0
    }
    /// The kernel may hand us packets whose L4 checksum still has to be completed.
    pub fn csum(&self) -> bool {
        self.offload_mask & CSUM != 0
    }
    pub fn tso4(&self) -> bool {
        self.csum() && self.offload_mask & TSO4 != 0
    }
    pub fn tso6(&self) -> bool {
        self.csum() && self.offload_mask & TSO6 != 0
    }
    pub fn tso_ecn(&self) -> bool {
        self.csum() && self.offload_mask & TSO_ECN != 0
    }
    /// UDP segmentation offload (both families; the kernel only grants them together).
    pub fn uso(&self) -> bool {
        self.csum() && self.offload_mask & (USO4 | USO6) == USO4 | USO6
    }
    /// Reads may return super-packets that must be split.
    pub fn gso_reads(&self) -> bool {
        self.tso4() || self.tso6() || self.uso()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(supported: u32) -> impl FnMut(u32) -> io::Result<()> {
        move |mask| {
            if mask & !supported == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }
        }
    }

    #[test]
    fn modern_kernel_gets_everything() {
        let all = CSUM | TSO4 | TSO6 | TSO_ECN | UFO | USO4 | USO6;
        assert_eq!(probe_ladder(kernel(all)), Some(LADDER[0]));
    }

    #[test]
    fn kernel_without_uso_falls_back_one_step() {
        assert_eq!(
            probe_ladder(kernel(CSUM | TSO4 | TSO6 | TSO_ECN | UFO)),
            Some(LADDER[1])
        );
    }

    #[test]
    fn kernel_without_ecn_drops_ecn_and_uso() {
        assert_eq!(
            probe_ladder(kernel(CSUM | TSO4 | TSO6 | USO4 | USO6)),
            Some(LADDER[2])
        );
    }

    #[test]
    fn csum_only_and_nothing() {
        assert_eq!(probe_ladder(kernel(CSUM)), Some(CSUM));
        assert_eq!(probe_ladder(kernel(0)), None);
    }

    #[test]
    fn ladder_tries_in_order_and_stops_at_first_success() {
        let mut tried = Vec::new();
        let got = probe_ladder(|m| {
            tried.push(m);
            if m == LADDER[2] {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }
        });
        assert_eq!(got, Some(LADDER[2]));
        assert_eq!(tried, &LADDER[..3]);
    }

    #[test]
    fn every_rung_carries_csum_and_uso_in_pairs() {
        for m in LADDER {
            assert_ne!(m & CSUM, 0);
            assert!(m & (USO4 | USO6) == 0 || m & (USO4 | USO6) == USO4 | USO6);
        }
    }

    #[test]
    fn capabilities_read_the_mask() {
        let c = Capabilities {
            vnet_hdr_len: 10,
            offload_mask: LADDER[1],
            multi_queue: false,
        };
        assert!(c.vnet_hdr() && c.csum() && c.tso4() && c.tso6() && c.tso_ecn());
        assert!(!c.uso());
        assert!(c.gso_reads());
        let c = Capabilities {
            vnet_hdr_len: 10,
            offload_mask: TSO4,
            multi_queue: false,
        };
        assert!(!c.tso4(), "TSO without CSUM means nothing");
        let plain = Capabilities::default();
        assert!(!plain.vnet_hdr() && !plain.gso_reads());
    }
}
