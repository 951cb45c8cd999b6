//! Raw kernel interface: ioctl numbers, request structs and the few syscalls the device needs.
//!
//! The request structs are byte arrays with typed accessors instead of C unions, so that filling
//! them is safe code and only the syscall itself is `unsafe`. Their sizes are checked against the
//! kernel's (`struct ifreq` is 40 bytes on 64-bit Linux, `struct in6_ifreq` 24).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Interface name buffer length, including the terminating NUL.
pub const IFNAMSIZ: usize = 16;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` as in `include/uapi/asm-generic/ioctl.h`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

const INT: usize = std::mem::size_of::<libc::c_int>();
const UINT: usize = std::mem::size_of::<libc::c_uint>();

pub const TUNSETIFF: u32 = ioc(IOC_WRITE, b'T', 202, INT);
pub const TUNSETPERSIST: u32 = ioc(IOC_WRITE, b'T', 203, INT);
pub const TUNSETOFFLOAD: u32 = ioc(IOC_WRITE, b'T', 208, UINT);
pub const TUNGETIFF: u32 = ioc(IOC_READ, b'T', 210, UINT);
pub const TUNGETVNETHDRSZ: u32 = ioc(IOC_READ, b'T', 215, INT);
pub const TUNSETVNETHDRSZ: u32 = ioc(IOC_WRITE, b'T', 216, INT);

pub const SIOCGIFFLAGS: u32 = 0x8913;
pub const SIOCSIFFLAGS: u32 = 0x8914;
pub const SIOCSIFADDR: u32 = 0x8916;
pub const SIOCSIFNETMASK: u32 = 0x891c;
pub const SIOCGIFMTU: u32 = 0x8921;
pub const SIOCSIFMTU: u32 = 0x8922;
pub const SIOCGIFINDEX: u32 = 0x8933;

pub const IFF_TUN: i16 = 0x0001;
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
pub const IFF_NO_PI: i16 = 0x1000;
pub const IFF_VNET_HDR: i16 = 0x4000;

pub const IFF_UP: i16 = 0x1;
pub const IFF_RUNNING: i16 = 0x40;

/// `struct ifreq`: a name and a 24-byte union. Only the union members hypha uses get accessors.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    /// A request for `name`, which must be 1..=15 bytes without NUL.
    pub fn new(name: &str) -> io::Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() >= IFNAMSIZ
            || bytes.contains(&0)
            || bytes.contains(&b'/')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?} (1 to 15 bytes, no NUL or '/')"),
            ));
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }

    /// An all-zero request, for ioctls that fill the name in (`TUNGETIFF`).
    pub fn zeroed() -> Self {
        IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        }
    }

    pub fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    pub fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    /// `ifr_mtu` / `ifr_ifindex`: the union as a C `int`.
    pub fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    pub fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    /// `ifr_addr` as a `struct sockaddr_in` (family native-endian, port and address big-endian).
    pub fn set_sockaddr_in(&mut self, addr: std::net::Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        (self as *mut Self).cast()
    }
}

/// `struct in6_ifreq` from `include/uapi/linux/ipv6.h`: address, prefix length, interface index.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct In6IfReq {
    pub addr: [u8; 16],
    pub prefixlen: u32,
    pub ifindex: i32,
}

/// Opens `/dev/net/tun` read-write and close-on-exec.
pub fn open_tun() -> io::Result<OwnedFd> {
    let path: &CStr = c"/dev/net/tun";
    // SAFETY: `path` is a valid NUL-terminated string; `open` has no other memory effects.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by `open`, is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A datagram socket of `family`, the handle for interface ioctls in the caller's namespace.
pub fn ioctl_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by `socket`, is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(fd, req, ptr)` where `ptr` points at a request struct the kernel reads and/or writes.
///
/// # Safety
/// `arg` must point to memory valid for reads and writes of the size the request `req` uses.
pub unsafe fn ioctl_ptr(fd: RawFd, req: u32, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: forwarded to the caller's contract on `arg`; `fd` is only a number to the kernel.
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, value)` for requests that take an integer by value (`TUNSETOFFLOAD`).
pub fn ioctl_val(fd: &impl AsRawFd, req: u32, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests used with this helper take their argument by value, so the kernel does
    // not dereference it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, value) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl` with an `IfReq`, the common case.
pub fn ioctl_ifreq(fd: &impl AsRawFd, req: u32, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: `ifr` is a live, exclusively borrowed 40-byte `struct ifreq`, the size every request
    // used with this helper reads or writes.
    unsafe { ioctl_ptr(fd.as_raw_fd(), req, ifr.as_mut_ptr()) }
}

/// `ioctl` with a C `int` the kernel reads or writes (`TUN{GET,SET}VNETHDRSZ`).
pub fn ioctl_int(fd: &impl AsRawFd, req: u32, value: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live, exclusively borrowed `int`, the size these requests access.
    unsafe { ioctl_ptr(fd.as_raw_fd(), req, (value as *mut libc::c_int).cast()) }
}

/// `ioctl(SIOCSIFADDR)` on an `AF_INET6` socket.
pub fn ioctl_in6(fd: &impl AsRawFd, req: u32, ifr: &mut In6IfReq) -> io::Result<()> {
    // SAFETY: `ifr` is a live, exclusively borrowed `struct in6_ifreq` (24 bytes), which is what
    // the IPv6 address ioctls read.
    unsafe { ioctl_ptr(fd.as_raw_fd(), req, (ifr as *mut In6IfReq).cast()) }
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL takes an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `read(2)`.
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `write(2)`.
pub fn write(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `writev(2)` of two slices (vnet header + packet), so the packet is not copied to be
/// prefixed.
pub fn write2(fd: &impl AsRawFd, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut _,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        },
    ];
    // SAFETY: both iovecs describe live slices that outlive the call; writev only reads them.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `writev(2)` of `iov`.
pub fn writev(fd: &impl AsRawFd, iov: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    let count =
        libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix, and every slice
    // it describes is borrowed for the duration of the call; writev only reads them.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr().cast::<libc::iovec>(), count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `poll(2)` on several fds for readability; returns which are readable (or in error/hang-up,
/// which the next read reports).
pub fn poll_readable<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is an exclusively borrowed array of `N` valid `pollfd`s.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(pfds.map(|p| p.revents != 0));
    }
}

/// `poll(2)` on one fd for `events` with a millisecond timeout (negative: forever); `Ok(true)`
/// when ready, `Ok(false)` on timeout.
pub fn poll_one(fd: &impl AsRawFd, events: i16, timeout_ms: i32) -> io::Result<bool> {
    let timeout = u64::try_from(timeout_ms)
        .ok()
        .map(std::time::Duration::from_millis);
    ppoll_one(fd, events, timeout)
}

/// `ppoll(2)` on one fd for `events` with a nanosecond timeout (`None`: forever); `Ok(true)` when
/// ready, `Ok(false)` on timeout. For loops with sub-millisecond deadlines, which `poll`'s
/// millisecond timeout would round to a busy loop or a late wake-up.
pub fn ppoll_one(
    fd: &impl AsRawFd,
    events: i16,
    timeout: Option<std::time::Duration>,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    loop {
        // SAFETY: `pfd` is one valid, exclusively borrowed `pollfd`; `ts_ptr` is null or points
        // to `ts`, which outlives the call; a null signal mask leaves the mask unchanged.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(rc > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETPERSIST, 0x4004_54cb);
        assert_eq!(TUNGETIFF, 0x8004_54d2);
        assert_eq!(TUNGETVNETHDRSZ, 0x8004_54d7);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(
            SIOCSIFMTU as libc::c_ulong,
            libc::SIOCSIFMTU as libc::c_ulong
        );
        assert_eq!(
            SIOCSIFADDR as libc::c_ulong,
            libc::SIOCSIFADDR as libc::c_ulong
        );
        assert_eq!(
            SIOCSIFFLAGS as libc::c_ulong,
            libc::SIOCSIFFLAGS as libc::c_ulong
        );
        assert_eq!(
            SIOCGIFFLAGS as libc::c_ulong,
            libc::SIOCGIFFLAGS as libc::c_ulong
        );
        assert_eq!(
            SIOCGIFINDEX as libc::c_ulong,
            libc::SIOCGIFINDEX as libc::c_ulong
        );
        assert_eq!(
            SIOCSIFNETMASK as libc::c_ulong,
            libc::SIOCSIFNETMASK as libc::c_ulong
        );
        assert_eq!(
            SIOCGIFMTU as libc::c_ulong,
            libc::SIOCGIFMTU as libc::c_ulong
        );
    }

    #[test]
    fn request_structs_have_kernel_sizes() {
        assert_eq!(
            std::mem::size_of::<IfReq>(),
            std::mem::size_of::<libc::ifreq>()
        );
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<In6IfReq>(), 24);
        assert_eq!(std::mem::offset_of!(In6IfReq, prefixlen), 16);
        assert_eq!(std::mem::offset_of!(In6IfReq, ifindex), 20);
        assert_eq!(std::mem::offset_of!(IfReq, data), IFNAMSIZ);
    }

    #[test]
    fn ifreq_name_is_bounded_and_nul_terminated() {
        let r = IfReq::new("hy0").unwrap();
        assert_eq!(r.name(), "hy0");
        assert_eq!(IfReq::new("a23456789012345").unwrap().name().len(), 15);
        assert!(IfReq::new("a234567890123456").is_err());
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a\0b").is_err());
    }

    #[test]
    fn ifreq_union_accessors_match_libc_layout() {
        let mut r = IfReq::new("x").unwrap();
        r.set_flags(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR);
        // SAFETY: IfReq and libc::ifreq have the same size (checked above) and are plain data.
        let c: libc::ifreq = unsafe { std::mem::transmute(r) };
        // SAFETY: reading a plain integer member of a union of plain data.
        assert_eq!(unsafe { c.ifr_ifru.ifru_flags }, 0x5001);
        r.set_int(1400);
        // SAFETY: as above.
        let c: libc::ifreq = unsafe { std::mem::transmute(r) };
        // SAFETY: as above.
        assert_eq!(unsafe { c.ifr_ifru.ifru_mtu }, 1400);
        r.set_sockaddr_in(std::net::Ipv4Addr::new(198, 18, 0, 1));
        // SAFETY: as above.
        let c: libc::ifreq = unsafe { std::mem::transmute(r) };
        // SAFETY: as above; sockaddr is plain data.
        let sa = unsafe { c.ifr_ifru.ifru_addr };
        assert_eq!(sa.sa_family, libc::AF_INET as u16);
        assert_eq!(&sa.sa_data[2..6], &[198u8 as libc::c_char, 18, 0, 1][..]);
    }
}
