//! tokio integration (feature `tokio`): readiness through `AsyncFd`, I/O through the same
//! batched calls as on plain threads.

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use offload::SegmentSink;

use crate::io::{Reader, WriteReport, Writer};
use crate::Tun;

/// A non-blocking [`Tun`] registered with the tokio reactor.
#[derive(Debug)]
pub struct AsyncTun {
    inner: AsyncFd<Tun>,
}

impl AsyncTun {
    /// Registers `tun`, which must have been opened non-blocking (the default).
    pub fn new(tun: Tun) -> io::Result<AsyncTun> {
        if !tun.shared.nonblocking {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "AsyncTun needs a non-blocking device",
            ));
        }
        // SAFETY: `Tun` owns its `OwnedFd` for its whole lifetime and `as_raw_fd` always returns
        // that descriptor; the `AsyncFd` owns the `Tun`, so the fd stays open while registered.
        let inner = unsafe { AsyncFd::register_with_interest(tun, Interest::READABLE) };
        Ok(AsyncTun {
            inner: inner.map_err(io::Error::from)?,
        })
    }

    pub fn get_ref(&self) -> &Tun {
        self.inner.get_ref()
    }

    /// Waits for the device to be readable, then does one [`Tun::read`].
    pub async fn read(
        &self,
        rd: &mut Reader,
        out: &mut (impl SegmentSink + ?Sized),
    ) -> io::Result<usize> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|t| t.get_ref().read(rd, out)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// [`Tun::write_batch`]: TUN writes do not wait for the reader, so this never suspends.
    pub fn write_batch<P>(&self, wr: &mut Writer, packets: &mut [P]) -> WriteReport
    where
        P: AsRef<[u8]> + AsMut<[u8]>,
    {
        self.inner.get_ref().write_batch(wr, packets)
    }
}
