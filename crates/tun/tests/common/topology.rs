// The forwarder topology, shared by the root tests and the `forwarder` example:
//
//   namespace A                                  namespace B
//   fd00:1::1/64 198.18.0.1/24 ── TUN a ══ userspace bridge ══ TUN b ── fd00:1::2/64 198.18.0.2/24
//
// Both TUNs have MTU 1400 and are created inside their namespaces by a thread that entered it.

#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use hypha_tun::{Config, Tun};

pub const MTU: u32 = 1400;
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Opens `dev` inside namespace `ns` and gives it the MTU, both addresses, and brings it up.
pub fn tun_in(ns: &str, dev: &str, offload: bool, v6: Ipv6Addr, v4: Ipv4Addr) -> io::Result<Tun> {
    let mut cfg = Config::new(dev);
    cfg.offload = offload;
    open_in(ns, &cfg, v6, Some(v4))
}

/// Opens the device of `cfg` inside namespace `ns`, gives it the MTU, `v6`/64 and `v4`/24 if
/// given, brings it up and waits until `v6` can be bound.
pub fn open_in(ns: &str, cfg: &Config, v6: Ipv6Addr, v4: Option<Ipv4Addr>) -> io::Result<Tun> {
    let tun = testbed::run_in(ns, || -> io::Result<Tun> {
        let tun = Tun::open(cfg)?;
        tun.set_mtu(MTU)?;
        tun.add_ipv6(v6, 64)?;
        if let Some(v4) = v4 {
            tun.set_ipv4(v4, 24)?;
        }
        tun.up()?;
        Ok(tun)
    })??;
    wait_ipv6_ready(ns, tun.name())?;
    Ok(tun)
}

/// Waits until no IPv6 address of `dev` is tentative (DAD is skipped on a TUN, but the address
/// only becomes usable once the kernel's DAD work has run), so that sockets can bind to it.
pub fn wait_ipv6_ready(ns: &str, dev: &str) -> io::Result<()> {
    testbed::wait_until(std::time::Duration::from_secs(10), || {
        testbed::exec_in(ns, "ip", &["-6", "addr", "show", "dev", dev, "tentative"])
            .is_ok_and(|out| out.trim().is_empty())
    })?;
    Ok(())
}

/// The two TUNs of the topology, `a` in namespace `ns_a` and `b` in `ns_b`.
pub fn tun_pair(
    ns_a: &str,
    ns_b: &str,
    names: (&str, &str),
    offload: bool,
) -> io::Result<(Tun, Tun)> {
    let a = tun_in(ns_a, names.0, offload, A6, A4)?;
    let b = tun_in(ns_b, names.1, offload, B6, B4)?;
    Ok((a, b))
}
