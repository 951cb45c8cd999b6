//! Root tests: device creation, offload negotiation and interface configuration, each inside a
//! namespace of its own (the device disappears with its fd and the namespace with its guard).

use std::net::{Ipv4Addr, Ipv6Addr};

use hypha_tun::{probe, Config, Tun};

mod common;
use testbed::Netns;

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn offloaded_device_is_configured_by_ioctls() {
    let ns = Netns::new("tundev").unwrap();
    let tun = ns
        .run(|| -> std::io::Result<Tun> {
            let tun = Tun::open(&Config::new("hyt0"))?;
            tun.set_mtu(1400)?;
            tun.add_ipv6("fd00:7::1".parse::<Ipv6Addr>().unwrap(), 64)?;
            tun.set_ipv4(Ipv4Addr::new(198, 18, 7, 1), 24)?;
            tun.up()?;
            assert_eq!(tun.mtu()?, 1400);
            assert!(tun.is_up()?);
            Ok(tun)
        })
        .unwrap()
        .unwrap();
    let caps = tun.capabilities();
    assert_eq!(tun.name(), "hyt0");
    assert_eq!(caps.vnet_hdr_len, 10);
    assert_eq!(tun.kernel_vnet_hdr_len().unwrap(), 10);
    // Every kernel this runs on (5.x+) grants at least checksum and TCP segmentation offload.
    assert!(caps.csum() && caps.tso4() && caps.tso6(), "{caps:?}");
    assert!(probe::LADDER.contains(&caps.offload_mask));
    let (tcp, udp) = tun.gro_enabled();
    assert!(tcp);
    assert_eq!(udp, caps.uso());

    let show = ns.ip(&["addr", "show", "dev", "hyt0"]).unwrap();
    assert!(show.contains("mtu 1400"), "{show}");
    assert!(show.contains("fd00:7::1/64"), "{show}");
    assert!(show.contains("198.18.7.1/24"), "{show}");
    assert!(show.contains(",UP"), "{show}");
    let routes = ns.ip(&["-6", "route", "show", "dev", "hyt0"]).unwrap();
    assert!(routes.contains("fd00:7::/64"), "{routes}");
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn no_offload_means_no_vnet_header_and_mask_zero() {
    let ns = Netns::new("tunplain").unwrap();
    let tun = ns
        .run(|| Tun::open(&Config::new("hyt1").no_offload()))
        .unwrap()
        .unwrap();
    let caps = tun.capabilities();
    assert!(!caps.vnet_hdr());
    assert_eq!(caps.offload_mask, 0);
    assert_eq!(tun.gro_enabled(), (false, false));
    assert_eq!(tun.kernel_vnet_hdr_len().unwrap(), 0);
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn twelve_byte_header_and_multi_queue() {
    let ns = Netns::new("tunmq").unwrap();
    let mut cfg = Config::new("hyt2");
    cfg.vnet_hdr_len = 12;
    cfg.multi_queue = true;
    let (q0, q1, q2) = ns
        .run(|| -> std::io::Result<_> {
            let q0 = Tun::open(&cfg)?;
            let q1 = q0.add_queue()?;
            let q2 = q0.add_queue()?;
            Ok((q0, q1, q2))
        })
        .unwrap()
        .unwrap();
    assert!(q0.capabilities().multi_queue);
    for q in [&q0, &q1, &q2] {
        assert_eq!(q.kernel_vnet_hdr_len().unwrap(), 12);
        assert_eq!(q.name(), "hyt2");
    }
    let single = ns.run(|| Tun::open(&Config::new("hyt3"))).unwrap().unwrap();
    assert!(
        single.add_queue().is_err(),
        "a single-queue device refuses more queues"
    );
}

#[test]
fn bad_names_and_header_sizes_are_refused() {
    let mut cfg = Config::new("hyt4");
    cfg.vnet_hdr_len = 11;
    assert_eq!(
        Tun::open(&cfg).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    let e = Tun::open(&Config::new("this-name-is-too-long")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

/// The offload mask outlives the fd on a persistent device. Re-attached without offloads, the
/// device must hand out single datagrams, not the USO aggregate a UDP GSO send makes.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn reattaching_a_persistent_device_without_offloads_resets_the_mask() {
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    let ns = Netns::new("tunpers").unwrap();
    let local: Ipv6Addr = "fd00:a::1".parse().unwrap();
    let first = ns
        .run(|| -> std::io::Result<Tun> {
            let tun = Tun::open(&Config::new("hyt7"))?;
            tun.set_persist(true)?;
            Ok(tun)
        })
        .unwrap()
        .unwrap();
    assert!(first.capabilities().uso(), "needs a kernel with USO (6.2+)");
    drop(first);
    let tun = ns
        .run(|| -> std::io::Result<Tun> {
            let tun = Tun::open(&Config::new("hyt7").no_offload())?;
            // Not persistent any more: gone with this fd (and with the namespace in any case).
            tun.set_persist(false)?;
            tun.set_mtu(1400)?;
            tun.add_ipv6(local, 64)?;
            tun.up()?;
            Ok(tun)
        })
        .unwrap()
        .unwrap();
    common::topology::wait_ipv6_ready(ns.name(), "hyt7").unwrap();
    let sock = ns.run(|| UdpSocket::bind((local, 0))).unwrap().unwrap();
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::UdpGsoSegment, &1000).unwrap();
    sock.send_to(&[7u8; 10_000], ("fd00:a::2", 9)).unwrap();

    let mut rd = hypha_tun::Reader::new();
    let mut segs = offload::Segments::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut datagrams = 0;
    while datagrams < 10 && Instant::now() < deadline {
        if !tun.wait_readable(Some(Duration::from_millis(100))).unwrap() {
            continue;
        }
        segs.clear();
        if tun.read(&mut rd, &mut segs).is_err() {
            continue;
        }
        for p in segs.iter() {
            // Skip router/multicast chatter; count our UDP datagrams to port 9.
            if p.len() >= 48 && p[6] == 17 && p[42..44] == 9u16.to_be_bytes() {
                assert_eq!(p.len(), 40 + 8 + 1000, "an aggregate came through");
                datagrams += 1;
            }
        }
    }
    assert_eq!(datagrams, 10);
    assert_eq!(tun.stats().super_packets, 0);
}

/// A blocking device (for plain threads without poll): a read waits for and returns one packet.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn blocking_device_reads_a_datagram() {
    use std::net::UdpSocket;
    use std::time::Duration;

    let ns = Netns::new("tunblk").unwrap();
    let local: Ipv6Addr = "fd00:b::1".parse().unwrap();
    let mut cfg = Config::new("hyt8");
    cfg.nonblocking = false;
    let tun = ns
        .run(|| -> std::io::Result<Tun> {
            let tun = Tun::open(&cfg)?;
            tun.add_ipv6(local, 64)?;
            tun.up()?;
            Ok(tun)
        })
        .unwrap()
        .unwrap();
    assert!(!tun.is_nonblocking());
    common::topology::wait_ipv6_ready(ns.name(), "hyt8").unwrap();
    let sock = ns.run(|| UdpSocket::bind((local, 0))).unwrap().unwrap();
    sock.send_to(b"blocking", ("fd00:b::2", 9)).unwrap();
    let mut rd = hypha_tun::Reader::new();
    let mut segs = offload::Segments::new();
    let mut found = false;
    // Other packets (router solicitations, MLD reports) may come first; poll first so that a
    // missing packet fails the test instead of hanging it.
    for _ in 0..20 {
        assert!(
            tun.wait_readable(Some(Duration::from_secs(10))).unwrap(),
            "nothing to read"
        );
        segs.clear();
        assert!(tun.read(&mut rd, &mut segs).unwrap() <= 1);
        if segs
            .iter()
            .any(|p| p.len() == 56 && p[6] == 17 && &p[48..] == b"blocking")
        {
            found = true;
            break;
        }
    }
    assert!(found);
}

/// `read_raw` hands over the vnet header and the packet untouched, and `write_raw` takes them
/// back: a datagram read raw, turned around (addresses and ports swapped, which leaves every
/// checksum valid) and written raw reaches the socket that sent it.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn raw_reads_and_writes_carry_the_vnet_header_and_packet() {
    use std::net::UdpSocket;
    use std::time::Duration;

    use common::topology::{tun_in, A4, A6, B6};

    let ns = Netns::new("tunraw").unwrap();
    let tun = tun_in(ns.name(), "hyt9", true, A6, A4).unwrap();
    let hdr = tun.capabilities().vnet_hdr_len;
    assert_eq!(hdr, 10);
    let sock = ns.run(|| UdpSocket::bind((A6, 0))).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.send_to(b"raw", (B6, 9)).unwrap();

    let mut buf = vec![0u8; 70_000];
    let mut got = None;
    // Other packets (router solicitations, MLD reports) may come first.
    for _ in 0..20 {
        assert!(
            tun.wait_readable(Some(Duration::from_secs(10))).unwrap(),
            "nothing to read"
        );
        let n = tun.read_raw(&mut buf).unwrap();
        let p = &buf[..n];
        if n == hdr + 51 && p[hdr] >> 4 == 6 && p[hdr + 6] == 17 && &p[hdr + 48..] == b"raw" {
            got = Some(p.to_vec());
            break;
        }
    }
    let mut p = got.expect("the datagram, read raw");
    let ip = hdr;
    let (src, dst) = (ip + 8..ip + 24, ip + 24..ip + 40);
    let a = p[src.clone()].to_vec();
    p.copy_within(dst.clone(), src.start);
    p[dst].copy_from_slice(&a);
    let udp = ip + 40;
    let sport = [p[udp], p[udp + 1]];
    p.copy_within(udp + 2..udp + 4, udp);
    p[udp + 2..udp + 4].copy_from_slice(&sport);
    assert_eq!(tun.write_raw(&p).unwrap(), p.len());

    let mut back = [0u8; 16];
    let (n, from) = sock.recv_from(&mut back).unwrap();
    assert_eq!(&back[..n], b"raw");
    assert_eq!(from.ip(), B6);
    assert_eq!(from.port(), 9);
}

/// An open that finds the device still held (EBUSY: the previous fd is being closed, as when a
/// node restarts at once) waits for it, a bounded time, instead of failing at once.
#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn an_open_waits_for_a_device_that_is_being_released() {
    let ns = Netns::new("tunbusy").unwrap();
    let first = ns.run(|| Tun::open(&Config::new("hyt9"))).unwrap().unwrap();
    // Held: a second open keeps getting EBUSY, and gives up after its bound with that error.
    let held = ns.run(|| Tun::open(&Config::new("hyt9"))).unwrap();
    assert_eq!(
        held.err().and_then(|e| e.raw_os_error()),
        Some(libc::EBUSY),
        "a device held by another fd"
    );
    // Released while the second open waits: it gets the device.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let name = ns.name().to_owned();
    let opener = std::thread::spawn(move || {
        testbed::run_in(&name, || {
            started_tx.send(()).unwrap();
            Tun::open(&Config::new("hyt9"))
        })
    });
    started_rx.recv().unwrap();
    drop(first);
    let second = opener.join().unwrap().unwrap();
    assert_eq!(second.expect("the released device").name(), "hyt9");
}
