//! Root test of the write path's failure handling against the real kernel: a UDP train longer
//! than the kernel's `UDP_MAX_SEGMENTS` (64 or 128) is refused with `EINVAL`; every datagram must
//! still arrive (re-sent singly), the refusal is counted, and after `DEMOTE_AFTER` refusals UDP
//! coalescing is switched off for the device.

mod common;

use std::net::{Ipv6Addr, UdpSocket};
use std::time::Duration;

use hypha_tun::{Config, Writer, DEMOTE_AFTER};
use testbed::Netns;

const LOCAL: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 5000;
const PAYLOAD: usize = 100;
/// More than any kernel's UDP_MAX_SEGMENTS, within 65535 bytes.
const TRAIN: usize = 150;

fn csum_add(mut sum: u32, bytes: &[u8]) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An IPv6/UDP datagram REMOTE:4000 → LOCAL:5000 with a complete checksum.
fn datagram(batch: usize, i: usize) -> Vec<u8> {
    let udp_len = 8 + PAYLOAD;
    let mut p = vec![0u8; 40 + udp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&REMOTE.octets());
    p[24..40].copy_from_slice(&LOCAL.octets());
    p[40..42].copy_from_slice(&4000u16.to_be_bytes());
    p[42..44].copy_from_slice(&PORT.to_be_bytes());
    p[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
    for (k, b) in p[48..].iter_mut().enumerate() {
        *b = (batch * 31 + i * 7 + k) as u8;
    }
    let mut sum = csum_add(0, &p[8..40]);
    sum += udp_len as u32 + 17;
    sum = csum_add(sum, &p[40..]);
    let c = !fold(sum);
    p[46..48].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn refused_udp_trains_are_resent_singly_then_udp_coalescing_is_demoted() {
    let ns = Netns::new("tunfall").unwrap();
    let tun = common::topology::open_in(ns.name(), &Config::new("hyt6"), LOCAL, None).unwrap();
    if !tun.capabilities().uso() {
        panic!("this kernel grants no USO; the test needs Linux 6.2+");
    }
    let rx = ns.run(|| UdpSocket::bind((LOCAL, PORT))).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Allow trains longer than the kernel accepts, so that it refuses them.
    let cfg = offload::Config {
        udp_max_segments: 4 * TRAIN,
        ..Default::default()
    };
    let mut wr = Writer::with_config(&tun, cfg);
    let mut buf = [0u8; 2048];

    for batch in 0..DEMOTE_AFTER as usize + 1 {
        let before = tun.stats();
        let mut packets: Vec<Vec<u8>> = (0..TRAIN).map(|i| datagram(batch, i)).collect();
        let report = tun.write_batch(&mut wr, &mut packets);
        assert_eq!(report.written, TRAIN, "batch {batch}: {report:?}");
        assert_eq!(report.dropped, 0);
        for i in 0..TRAIN {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(
                &buf[..n],
                &datagram(batch, i)[48..],
                "batch {batch} datagram {i}"
            );
        }
        let d = tun.stats() - before;
        if batch < DEMOTE_AFTER as usize {
            assert_eq!(d.einval_fallbacks, 1, "batch {batch}: {d}");
            assert_eq!(d.coalesced_writes, 0);
        } else {
            // Demoted: no more trains, so no more refusals.
            assert_eq!(d.einval_fallbacks, 0, "batch {batch}: {d}");
            assert_eq!(d.writes, TRAIN as u64);
        }
    }
    let s = tun.stats();
    assert_eq!(s.demotions, 1, "{s}");
    assert_eq!(tun.gro_enabled(), (true, false));
    assert_eq!(
        s.packets_written,
        (TRAIN * (DEMOTE_AFTER as usize + 1)) as u64
    );
}
