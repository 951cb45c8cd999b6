//! Drives one routing core over three links with arbitrary TLVs, link events, requests and time
//! steps. Nothing may panic; after every step the core's invariants hold, and nothing it sends
//! breaks the send policy of docs/protocol.md §4.9 (hop count 0, generation ≥ 16, IPv4 or short
//! prefixes in requests, non-IPv6 updates).
#![no_main]

use crypto::address_from_public_key;
use libfuzzer_sys::fuzz_target;
use routing::{Config, Limits, LinkId, Router, Time};
use std::net::{Ipv4Addr, Ipv6Addr};
use wire::babel::{
    Hello, Ihu, Metric, Prefix, RouteRequest, RouterId, SeqNo, SeqNoRequest, Subnet, Tlv, Update,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn arr<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        for b in a.iter_mut() {
            *b = self.u8()?;
        }
        Some(a)
    }
}

/// Node keys 0 (us) to 3; choosing among them makes updates pass the ownership filter.
fn key(k: u8) -> [u8; 32] {
    [k % 4; 32]
}

fn router_id(b: &mut Bytes) -> Option<RouterId> {
    Some(match b.u8()? % 6 {
        k @ 0..=3 => RouterId::new(key(k), [k; 6]),
        4 => RouterId::new(key(b.u8()?), b.arr()?),
        _ => RouterId(b.arr()?),
    })
}

fn prefix(b: &mut Bytes) -> Option<Prefix> {
    Some(match b.u8()? % 8 {
        0 => Prefix::Wildcard,
        1 => Prefix::V4 { addr: Ipv4Addr::from(b.arr::<4>()?), plen: b.u8()? % 33 },
        2 => Prefix::LinkLocal { iid: b.arr()? },
        3 => Prefix::V6(Subnet::new(Ipv6Addr::from(b.arr::<16>()?), b.u8()? % 129)?),
        k => {
            let a = address_from_public_key(&key(k));
            let plen = match b.u8()? % 4 {
                0 => 64,
                1 => 128,
                2 => 63,
                _ => 64 + b.u8()? % 65,
            };
            Prefix::V6(Subnet::new(a, plen)?)
        }
    })
}

fn metric(b: &mut Bytes) -> Option<Metric> {
    Some(match b.u8()? % 4 {
        0 => Metric(0),
        1 => Metric::INFINITE,
        _ => Metric(b.u16()?),
    })
}

fn tlv(b: &mut Bytes) -> Option<Tlv> {
    Some(match b.u8()? % 5 {
        0 => Tlv::Hello(Hello { flags: b.u16()?, seqno: SeqNo(b.u16()?), interval: b.u16()? }),
        1 => Tlv::Ihu(Ihu { rx_cost: metric(b)?, interval: b.u16()?, address: None }),
        2 => Tlv::Update(Update {
            flags: b.u8()?,
            interval: b.u16()?,
            seqno: SeqNo(b.u16()?),
            metric: metric(b)?,
            prefix: prefix(b)?,
            router_id: router_id(b)?,
        }),
        3 => Tlv::RouteRequest(RouteRequest { generation: b.u8()?, prefix: prefix(b)? }),
        _ => Tlv::SeqNoRequest(SeqNoRequest {
            seqno: SeqNo(b.u16()?),
            hop_count: b.u8()?,
            router_id: router_id(b)?,
            prefix: prefix(b)?,
        }),
    })
}

fn check_sent(r: &mut Router) {
    while let Some((_, t)) = r.poll_transmit() {
        match t {
            Tlv::Update(u) => assert!(matches!(u.prefix, Prefix::V6(s) if s.prefix_len() >= 64)),
            Tlv::RouteRequest(q) => {
                assert!(q.generation < 16);
                assert!(matches!(q.prefix, Prefix::V6(s) if s.prefix_len() >= 64));
            }
            Tlv::SeqNoRequest(q) => {
                assert!(q.hop_count > 0);
                assert!(matches!(q.prefix, Prefix::V6(s) if s.prefix_len() >= 64));
            }
            Tlv::Ihu(i) => assert!(i.address.is_none()),
            Tlv::Hello(_) => {}
        }
    }
    while r.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let own = Subnet::slash64(address_from_public_key(&key(0)));
    let mut cfg = Config::new(RouterId::new(key(0), [0; 6]), own);
    cfg.limits = Limits {
        max_links: 3,
        max_subnets: 8,
        max_sources: 8,
        max_queries: 4,
        max_rr_cache: 4,
        max_seqno_cache: 4,
        max_snr_waiters: 4,
        max_transmits: 64,
        max_events: 16,
        queries_reserved_own: 1,
        max_queries_per_link: 2,
        link_query_rate: 1,
        link_query_burst: 2,
        max_flapping: 4,
        flap_threshold: 2,
        ..Limits::default()
    };
    cfg.record_selection_changes = true;
    let mut now = Time::ZERO;
    let mut r = Router::new(cfg, now);
    let mut b = Bytes(data);
    let mut epoch = [0u64; 4];
    while let Some(op) = b.u8() {
        let link = usize::from(op >> 6);
        let id = LinkId((epoch[link] << 8) | link as u64);
        match op % 8 {
            0 => {
                let ms = u64::from(b.u16().unwrap_or(0)) * 64;
                now = now + std::time::Duration::from_millis(ms);
                r.handle_timeout(now);
            }
            1 => r.handle_link_down(id, now),
            2 => {
                epoch[link] += 1;
                let id = LinkId((epoch[link] << 8) | link as u64);
                let _ = r.handle_link_up(id, 10, now);
            }
            3 => {
                let Some(a) = b.arr::<16>() else { break };
                r.request_route(Ipv6Addr::from(a), now);
            }
            4 => {
                let Some(k) = b.u8() else { break };
                // The top bit: an address seen in traffic from `link` rather than our own.
                let a = address_from_public_key(&key(k & 0x7f));
                if k & 0x80 == 0 {
                    r.request_route(a, now);
                } else {
                    r.request_route_for_link(a, id, now);
                }
            }
            _ => {
                let Some(t) = tlv(&mut b) else { break };
                r.handle_tlv(id, &t, now);
            }
        }
        if let Err(e) = r.check_invariants() {
            panic!("invariant broken: {e}");
        }
        for s in r.take_selection_changes() {
            assert!(!own.contains(&s), "route to our own subnet");
        }
        let fib = r.forwarding_table();
        assert!(fib.len() <= 8);
        check_sent(&mut r);
    }
});
