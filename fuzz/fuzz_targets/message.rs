//! Message packets: parsing arbitrary bytes never panics, and what parses emits back to the same
//! bytes (for the canonical forms); a receiver fed a stream of arbitrary packets from one sender
//! never panics and stays within its inbox bound.
#![no_main]

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use message::{Config, Messages, Repr, Topics};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Repr::parse(data) {
        let again = r.to_vec();
        assert_eq!(Repr::parse(&again).map(|r| r.to_vec()), Ok(again.clone()));
    }
    let cfg = Config {
        inbox_max_bytes: 64 * 1024,
        inbox_max_messages: 8,
        ..Config::default()
    };
    let mut m = Messages::new(cfg, Topics::default());
    let (src, dst) = (Ipv6Addr::new(0x400, 1, 0, 0, 0, 0, 0, 1), Ipv6Addr::new(0x400, 2, 0, 0, 0, 0, 0, 1));
    let mut now = Instant::now();
    // The input is a sequence of packets, each prefixed by a one-byte length.
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        m.handle_packet(now, src, dst, [1; 32], &tail[..n]);
        rest = &tail[n..];
        now += Duration::from_millis(7);
        m.handle_timeout(now);
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
        assert!(m.stats().inbox_bytes <= 64 * 1024);
    }
    while m.pop(None, false).is_some() {}
});
