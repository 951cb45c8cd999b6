//! Creating/attaching the device, negotiating offloads, and configuring the interface.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::probe::{probe_ladder, Capabilities};
use crate::stats::{Counters, Stats};
use crate::sys;

/// How to open a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interface name (1..=15 bytes; a `%d` lets the kernel pick the number).
    pub name: String,
    /// Ask for a vnet header and offloads. `false` forces the plain path: no vnet header, one
    /// packet per read and write, and the device's offload mask reset to 0.
    pub offload: bool,
    /// 10 (`struct virtio_net_hdr`) or 12 (with `num_buffers`).
    pub vnet_hdr_len: usize,
    /// Open with `IFF_MULTI_QUEUE`, so that [`Tun::add_queue`] can attach more queues.
    pub multi_queue: bool,
    /// Put the fd in non-blocking mode (the default; needed for tokio and for clean `EAGAIN`).
    pub nonblocking: bool,
}

impl Config {
    /// Offloads on, 10-byte vnet header, one queue, non-blocking.
    pub fn new(name: impl Into<String>) -> Self {
        Config {
            name: name.into(),
            offload: true,
            vnet_hdr_len: 10,
            multi_queue: false,
            nonblocking: true,
        }
    }

    /// Forces the plain path (no vnet header, no offloads).
    pub fn no_offload(mut self) -> Self {
        self.offload = false;
        self
    }
}

/// The state every queue of one device shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) flags: i16,
    pub(crate) caps: Capabilities,
    pub(crate) nonblocking: bool,
    pub(crate) counters: Counters,
    /// Whether writes may still coalesce TCP / UDP.
    pub(crate) tcp_gro: Demoter,
    pub(crate) udp_gro: Demoter,
}

/// A feature (TCP or UDP coalescing on writes) that is switched off for good after
/// [`crate::DEMOTE_AFTER`] failures.
#[derive(Debug)]
pub(crate) struct Demoter {
    enabled: AtomicBool,
    failures: AtomicU32,
}

impl Demoter {
    pub(crate) fn new(enabled: bool) -> Self {
        Demoter {
            enabled: AtomicBool::new(enabled),
            failures: AtomicU32::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Records one failure; true when this one switched the feature off.
    pub(crate) fn fail(&self) -> bool {
        self.failures.fetch_add(1, Relaxed) + 1 >= crate::DEMOTE_AFTER
            && self.enabled.swap(false, Relaxed)
    }
}

/// One queue (fd) of a Linux TUN device. Reads and writes take `&self`, so one thread may read
/// while another writes; the buffers they need live in [`crate::Reader`] and [`crate::Writer`].
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    pub(crate) shared: Arc<Shared>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// How often, and how far apart, an attach is tried again while the kernel answers EBUSY: right
/// after the previous fd on a device was closed, the kernel may still be releasing it (seen under
/// load when a node restarts at once, or a persistent device is re-attached). About 1 s in all.
const BUSY_TRIES: u32 = 50;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Attaches to (or creates) the device `name`, waiting a bounded time for one that is still
/// being released.
fn attach(name: &str, flags: i16) -> io::Result<(OwnedFd, String, i16)> {
    let mut tries = 1;
    loop {
        match attach_once(name, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(BUSY_PAUSE);
            }
            r => return r,
        }
    }
}

fn attach_once(name: &str, flags: i16) -> io::Result<(OwnedFd, String, i16)> {
    let mut req = sys::IfReq::new(name)?;
    let fd = sys::open_tun()?;
    req.set_flags(flags);
    sys::ioctl_ifreq(&fd, sys::TUNSETIFF, &mut req)?;
    let mut got = sys::IfReq::zeroed();
    sys::ioctl_ifreq(&fd, sys::TUNGETIFF, &mut got)?;
    let wanted = flags & (sys::IFF_TUN | sys::IFF_NO_PI | sys::IFF_VNET_HDR | sys::IFF_MULTI_QUEUE);
    if got.flags() & wanted != wanted {
        return Err(io::Error::other(format!(
            "TUNGETIFF reports flags {:#x}, asked for {:#x}",
            got.flags(),
            wanted
        )));
    }
    Ok((fd, got.name(), got.flags()))
}

impl Tun {
    /// Creates the device (or attaches to an existing persistent one) and negotiates offloads
    /// with the probing ladder: the best `TUN_F_*` mask the kernel accepts, else no vnet header.
    pub fn open(cfg: &Config) -> io::Result<Tun> {
        if cfg.offload && cfg.vnet_hdr_len != 10 && cfg.vnet_hdr_len != 12 {
            return Err(invalid(format!(
                "vnet header length {} (10 or 12)",
                cfg.vnet_hdr_len
            )));
        }
        let mq = if cfg.multi_queue {
            sys::IFF_MULTI_QUEUE
        } else {
            0
        };
        let plain = sys::IFF_TUN | sys::IFF_NO_PI | mq;
        let mut opened = None;
        if cfg.offload {
            // An old kernel may refuse IFF_VNET_HDR itself; then fall through to the plain path.
            if let Ok((fd, name, flags)) = attach(&cfg.name, plain | sys::IFF_VNET_HDR) {
                let mut len = cfg.vnet_hdr_len as libc::c_int;
                sys::ioctl_int(&fd, sys::TUNSETVNETHDRSZ, &mut len)?;
                match probe_ladder(|mask| sys::ioctl_val(&fd, sys::TUNSETOFFLOAD, mask.into())) {
                    Some(mask) => {
                        let caps = Capabilities {
                            vnet_hdr_len: cfg.vnet_hdr_len,
                            offload_mask: mask,
                            multi_queue: cfg.multi_queue,
                        };
                        opened = Some((fd, name, flags, caps));
                    }
                    // Not even TUN_F_CSUM: re-attach without a vnet header. The fd is closed
                    // first so that a non-persistent device is torn down and re-created.
                    None => drop(fd),
                }
            }
        }
        let (fd, name, flags, caps) = match opened {
            Some(o) => o,
            None => {
                let (fd, name, flags) = attach(&cfg.name, plain)?;
                // The mask is device-wide and survives on persistent devices: without this, a
                // device last used with offloads keeps handing out 64 KiB aggregates.
                let _ = sys::ioctl_val(&fd, sys::TUNSETOFFLOAD, 0);
                let caps = Capabilities {
                    multi_queue: cfg.multi_queue,
                    ..Default::default()
                };
                (fd, name, flags, caps)
            }
        };
        sys::set_nonblocking(&fd, cfg.nonblocking)?;
        let shared = Shared {
            name,
            flags,
            caps,
            nonblocking: cfg.nonblocking,
            counters: Counters::default(),
            tcp_gro: Demoter::new(caps.tso4() || caps.tso6()),
            udp_gro: Demoter::new(caps.uso()),
        };
        Ok(Tun {
            fd,
            shared: Arc::new(shared),
        })
    }

    /// Attaches one more queue to a device opened with [`Config::multi_queue`]. Queues share the
    /// capabilities and the counters.
    pub fn add_queue(&self) -> io::Result<Tun> {
        if !self.shared.caps.multi_queue {
            return Err(invalid("device was not opened with multi_queue".into()));
        }
        let (fd, _, _) = attach(&self.shared.name, self.shared.flags)?;
        if self.shared.caps.vnet_hdr() {
            let mut len = self.shared.caps.vnet_hdr_len as libc::c_int;
            sys::ioctl_int(&fd, sys::TUNSETVNETHDRSZ, &mut len)?;
        }
        sys::set_nonblocking(&fd, self.shared.nonblocking)?;
        Ok(Tun {
            fd,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Makes the device outlive its fds (`TUNSETPERSIST`), or not.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        sys::ioctl_val(&self.fd, sys::TUNSETPERSIST, persist.into())
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether the fd is non-blocking ([`Config::nonblocking`]).
    pub fn is_nonblocking(&self) -> bool {
        self.shared.nonblocking
    }

    /// What was negotiated.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.caps
    }

    /// Whether writes may still coalesce TCP / UDP (they start as the offload mask allows and are
    /// switched off after repeated `EINVAL`s).
    pub fn gro_enabled(&self) -> (bool, bool) {
        (self.shared.tcp_gro.enabled(), self.shared.udp_gro.enabled())
    }

    /// A snapshot of the device's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Waits until the fd is readable or `timeout` passes (`None`: forever). For plain threads
    /// driving a non-blocking device.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        sys::poll_one(&self.fd, libc::POLLIN, ms)
    }

    /// Like [`Tun::wait_readable`], with the timeout kept to the nanosecond (`ppoll`): for loops
    /// with sub-millisecond deadlines, such as a link emulator releasing packets at their due time.
    pub fn wait_readable_precise(&self, timeout: Option<Duration>) -> io::Result<bool> {
        sys::ppoll_one(&self.fd, libc::POLLIN, timeout)
    }

    /// One raw `read()`: the vnet header (when the device has one) followed by the packet or
    /// super-packet, exactly as the kernel hands them over; nothing is parsed or counted. For
    /// tools that carry packets opaquely (the bench's forwarding floor); a node uses [`Tun::read`].
    pub fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::retry_eintr(|| sys::read(self, buf))
    }

    /// One raw `write()` of what [`Tun::read_raw`] returned (vnet header included when the
    /// device has one); nothing is parsed or counted.
    pub fn write_raw(&self, buf: &[u8]) -> io::Result<usize> {
        crate::io::retry_eintr(|| sys::write(self, buf))
    }

    /// The interface index in the caller's network namespace.
    pub fn ifindex(&self) -> io::Result<u32> {
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        sys::ioctl_ifreq(&sock, sys::SIOCGIFINDEX, &mut req)?;
        Ok(req.int() as u32)
    }

    /// Sets the MTU (`SIOCSIFMTU`).
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        req.set_int(i32::try_from(mtu).map_err(|_| invalid(format!("mtu {mtu}")))?);
        sys::ioctl_ifreq(&sock, sys::SIOCSIFMTU, &mut req)
    }

    /// Reads the MTU (`SIOCGIFMTU`).
    pub fn mtu(&self) -> io::Result<u32> {
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        sys::ioctl_ifreq(&sock, sys::SIOCGIFMTU, &mut req)?;
        Ok(req.int() as u32)
    }

    /// Adds an IPv6 address with its prefix length (`SIOCSIFADDR` with `struct in6_ifreq`); the
    /// kernel adds the on-link prefix route.
    pub fn add_ipv6(&self, addr: Ipv6Addr, prefix_len: u8) -> io::Result<()> {
        if prefix_len > 128 {
            return Err(invalid(format!("IPv6 prefix length {prefix_len}")));
        }
        let sock = sys::ioctl_socket(libc::AF_INET6)?;
        let mut req = sys::In6IfReq {
            addr: addr.octets(),
            prefixlen: prefix_len.into(),
            ifindex: self.ifindex()? as i32,
        };
        sys::ioctl_in6(&sock, sys::SIOCSIFADDR, &mut req)
    }

    /// Sets the IPv4 address and netmask (`SIOCSIFADDR` then `SIOCSIFNETMASK`).
    pub fn set_ipv4(&self, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        if prefix_len > 32 {
            return Err(invalid(format!("IPv4 prefix length {prefix_len}")));
        }
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        req.set_sockaddr_in(addr);
        sys::ioctl_ifreq(&sock, sys::SIOCSIFADDR, &mut req)?;
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        let mut req = sys::IfReq::new(self.name())?;
        req.set_sockaddr_in(Ipv4Addr::from(mask));
        sys::ioctl_ifreq(&sock, sys::SIOCSIFNETMASK, &mut req)
    }

    /// Brings the interface up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with `IFF_UP`).
    pub fn up(&self) -> io::Result<()> {
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        sys::ioctl_ifreq(&sock, sys::SIOCGIFFLAGS, &mut req)?;
        req.set_flags(req.flags() | sys::IFF_UP | sys::IFF_RUNNING);
        sys::ioctl_ifreq(&sock, sys::SIOCSIFFLAGS, &mut req)
    }

    /// Whether the interface is up.
    pub fn is_up(&self) -> io::Result<bool> {
        let sock = sys::ioctl_socket(libc::AF_INET)?;
        let mut req = sys::IfReq::new(self.name())?;
        sys::ioctl_ifreq(&sock, sys::SIOCGIFFLAGS, &mut req)?;
        Ok(req.flags() & sys::IFF_UP != 0)
    }

    /// The vnet header length the kernel uses on this fd (`TUNGETVNETHDRSZ`), 0 without one.
    pub fn kernel_vnet_hdr_len(&self) -> io::Result<usize> {
        if !self.shared.caps.vnet_hdr() {
            return Ok(0);
        }
        let mut len: libc::c_int = 0;
        sys::ioctl_int(&self.fd, sys::TUNGETVNETHDRSZ, &mut len)?;
        Ok(len as usize)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demoter_switches_off_once_after_the_threshold() {
        let d = Demoter::new(true);
        for _ in 1..crate::DEMOTE_AFTER {
            assert!(!d.fail());
            assert!(d.enabled());
        }
        assert!(d.fail(), "the threshold-th failure demotes");
        assert!(!d.enabled());
        assert!(!d.fail(), "a demoted feature is not demoted twice");
        let off = Demoter::new(false);
        for _ in 0..2 * crate::DEMOTE_AFTER {
            assert!(!off.fail());
        }
    }
}
