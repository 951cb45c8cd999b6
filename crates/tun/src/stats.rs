//! Device counters: relaxed atomics bumped by the I/O paths, read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one device (shared by all its queues).
        #[derive(Debug, Default)]
        pub struct Counters { $( pub(crate) $name: AtomicU64, )* }

        /// A snapshot of [`Counters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Stats { $( $(#[$doc])* pub $name: u64, )* }

        impl Counters {
            /// Reads every counter (each one atomically; the set is not a consistent cut).
            pub fn snapshot(&self) -> Stats {
                Stats { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl std::ops::Sub for Stats {
            type Output = Stats;
            fn sub(self, rhs: Stats) -> Stats {
                Stats { $( $name: self.$name.wrapping_sub(rhs.$name), )* }
            }
        }
    };
}

counters! {
    /// `read()` calls that returned a packet.
    reads,
    /// Reads that returned a GSO super-packet (more than one segment's worth).
    super_packets,
    /// Packets handed to the caller after splitting.
    segments,
    /// `write()`/`writev()` calls that succeeded.
    writes,
    /// Successful writes that carried a GSO header (a coalesced train).
    coalesced_writes,
    /// IP packets delivered to the kernel (a train counts its segments).
    packets_written,
    /// GSO writes refused with `EINVAL` and retried as single packets.
    einval_fallbacks,
    /// Times TCP or UDP coalescing was switched off for the device after repeated `EINVAL`s.
    demotions,
    /// Read-side drops: a super-packet or packet that could not be parsed or split.
    drop_malformed,
    /// `read()` calls that failed with something other than `EAGAIN`.
    read_errors,
    /// Read-side drops: the read filled the whole buffer (possible truncation).
    drop_truncated,
    /// Read-side drops: the caller's sink had no room (segments after the first refused one).
    drop_sink_full,
    /// Packets not written because the kernel refused them (after any fallback).
    drop_write_error,
    /// Packets not written because the device queue was full (`EAGAIN`).
    drop_would_block,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}

impl Stats {
    /// Segments per super-packet-or-packet read; 1.0 means no super-packets.
    pub fn segments_per_read(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.segments as f64 / self.reads as f64
        }
    }

    /// Packets per write syscall; 1.0 means nothing was coalesced.
    pub fn packets_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.packets_written as f64 / self.writes as f64
        }
    }

    /// All drops, whatever the reason.
    pub fn drops(&self) -> u64 {
        self.drop_malformed
            + self.drop_truncated
            + self.drop_sink_full
            + self.drop_write_error
            + self.drop_would_block
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reads {} (super {}) segments {} ({:.1}/read) | writes {} (coalesced {}) packets {} \
             ({:.1}/write) | einval {} demotions {} | drops malformed {} truncated {} write-error {} \
             would-block {} sink-full {}",
            self.reads,
            self.super_packets,
            self.segments,
            self.segments_per_read(),
            self.writes,
            self.coalesced_writes,
            self.packets_written,
            self.packets_per_write(),
            self.einval_fallbacks,
            self.demotions,
            self.drop_malformed,
            self.drop_truncated,
            self.drop_write_error,
            self.drop_would_block,
            self.drop_sink_full,
        )
    }
}
