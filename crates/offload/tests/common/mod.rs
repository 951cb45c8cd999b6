//! Packet builders and an independent validator for the offload tests.
//!
//! Checksums here are computed with the plain RFC 1071 reference over explicitly laid-out
//! pseudo-header bytes, so the tests do not trust the code they test.
#![allow(dead_code)]

use wire::checksum::reference;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// Everything needed to build one TCP or UDP packet over IPv4 or IPv6.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub v6: bool,
    pub proto: u8,
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    pub flow_label: u32,
    /// IPv4 options (multiple of 4).
    pub ip_options: Vec<u8>,
    /// IPv6 extension header types (0, 43, 60, 44), each 8 bytes long.
    pub ext: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// TCP options (multiple of 4).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Write this into the UDP checksum instead of computing it (e.g. 0 for "none").
    pub udp_csum_override: Option<u16>,
}

impl Pkt {
    pub fn tcp4() -> Self {
        Pkt {
            v6: false,
            proto: TCP,
            src4: [198, 18, 0, 1],
            dst4: [198, 18, 0, 2],
            src6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst6: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            tos: 0,
            ttl: 64,
            id: 0x1000,
            df: true,
            mf: false,
            flow_label: 0,
            ip_options: vec![],
            ext: vec![],
            sport: 40000,
            dport: 5201,
            seq: 1_000_000,
            ack: 77,
            flags: ACK,
            window: 512,
            urgent: 0,
            tcp_options: vec![],
            payload: vec![],
            udp_csum_override: None,
        }
    }

    pub fn tcp6() -> Self {
        Pkt {
            v6: true,
            ..Self::tcp4()
        }
    }

    pub fn udp4() -> Self {
        Pkt {
            proto: UDP,
            flags: 0,
            ..Self::tcp4()
        }
    }

    pub fn udp6() -> Self {
        Pkt {
            v6: true,
            ..Self::udp4()
        }
    }

    pub fn with_payload(mut self, len: usize, seed: u8) -> Self {
        self.payload = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        self
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        if self.proto == TCP {
            let hl = 20 + self.tcp_options.len();
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&self.ack.to_be_bytes());
            l4.push(((hl / 4) as u8) << 4);
            l4.push(self.flags);
            l4.extend_from_slice(&self.window.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&self.urgent.to_be_bytes());
            l4.extend_from_slice(&self.tcp_options);
        } else {
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let field = if self.proto == TCP { 16 } else { 6 };
        let mut c = l4_checksum(self.v6, &self.src(), &self.dst(), self.proto, &l4);
        if self.proto == UDP {
            if c == 0 {
                c = 0xffff;
            }
            if let Some(o) = self.udp_csum_override {
                c = o;
            }
        }
        l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
        l4
    }

    pub fn src(&self) -> Vec<u8> {
        if self.v6 {
            self.src6.to_vec()
        } else {
            self.src4.to_vec()
        }
    }

    pub fn dst(&self) -> Vec<u8> {
        if self.v6 {
            self.dst6.to_vec()
        } else {
            self.dst4.to_vec()
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut p = Vec::new();
        if self.v6 {
            let ext_len = self.ext.len() * 8;
            let w = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
            p.extend_from_slice(&w.to_be_bytes());
            p.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
            p.push(self.ext.first().copied().unwrap_or(self.proto));
            p.push(self.ttl);
            p.extend_from_slice(&self.src6);
            p.extend_from_slice(&self.dst6);
            for (i, _) in self.ext.iter().enumerate() {
                let next = self.ext.get(i + 1).copied().unwrap_or(self.proto);
                p.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
            }
        } else {
            let hl = 20 + self.ip_options.len();
            p.push(0x40 | (hl / 4) as u8);
            p.push(self.tos);
            p.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&self.id.to_be_bytes());
            let ff = (if self.df { 0x4000u16 } else { 0 }) | (if self.mf { 0x2000 } else { 0 });
            p.extend_from_slice(&ff.to_be_bytes());
            p.push(self.ttl);
            p.push(self.proto);
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&self.src4);
            p.extend_from_slice(&self.dst4);
            p.extend_from_slice(&self.ip_options);
            let c = !reference::sum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p.extend_from_slice(&l4);
        p
    }
}

/// Pseudo-header laid out as bytes (RFC 793 / RFC 8200 §8.1), summed with the reference.
pub fn l4_checksum(v6: bool, src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> u16 {
    let mut b = Vec::new();
    b.extend_from_slice(src);
    b.extend_from_slice(dst);
    if v6 {
        b.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        b.extend_from_slice(&[0, proto]);
        b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    b.extend_from_slice(l4);
    !reference::sum(&b)
}

/// The non-complemented folded pseudo-header sum (the `NEEDS_CSUM` seed), from bytes.
pub fn pseudo_seed(v6: bool, src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u16 {
    let mut b = Vec::new();
    b.extend_from_slice(src);
    b.extend_from_slice(dst);
    if v6 {
        b.extend_from_slice(&(l4_len as u32).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        b.extend_from_slice(&[0, proto]);
        b.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    reference::sum(&b)
}

/// What `check` learnt about a valid packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub v6: bool,
    pub proto: u8,
    pub l4_off: usize,
    pub l4_hdr: usize,
    pub id: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Validates lengths and checksums of a TCP/UDP packet independently of the code under test.
pub fn check(p: &[u8]) -> Result<Parsed, String> {
    if p.is_empty() {
        return Err("empty".into());
    }
    let v6 = p[0] >> 4 == 6;
    let (src, dst, mut nh, mut off, id) = if v6 {
        if p.len() < 40 {
            return Err("short v6".into());
        }
        if usize::from(be16(p, 4)) + 40 != p.len() {
            return Err(format!(
                "v6 payload length {} for {} bytes",
                be16(p, 4),
                p.len()
            ));
        }
        (p[8..24].to_vec(), p[24..40].to_vec(), p[6], 40usize, 0)
    } else {
        let hl = usize::from(p[0] & 15) * 4;
        if usize::from(be16(p, 2)) != p.len() {
            return Err(format!(
                "v4 total length {} for {} bytes",
                be16(p, 2),
                p.len()
            ));
        }
        if reference::sum(&p[..hl]) != 0xffff {
            return Err("bad IPv4 header checksum".into());
        }
        (p[12..16].to_vec(), p[16..20].to_vec(), p[9], hl, be16(p, 4))
    };
    while v6 && matches!(nh, 0 | 43 | 60) {
        nh = p[off];
        off += (usize::from(p[off + 1]) + 1) * 8;
    }
    let l4 = &p[off..];
    let (l4_hdr, seq, flags) = match nh {
        TCP => (
            usize::from(l4[12] >> 4) * 4,
            u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
            l4[13],
        ),
        UDP => {
            if usize::from(be16(l4, 4)) != l4.len() {
                return Err(format!("UDP length {} for {} bytes", be16(l4, 4), l4.len()));
            }
            if be16(l4, 6) == 0 {
                return Err("UDP checksum 0".into());
            }
            (8, 0, 0)
        }
        other => return Err(format!("protocol {other}")),
    };
    let residue = l4_checksum(v6, &src, &dst, nh, l4);
    if residue != 0 {
        return Err(format!("bad L4 checksum (residue {residue:#06x})"));
    }
    Ok(Parsed {
        v6,
        proto: nh,
        l4_off: off,
        l4_hdr,
        id,
        seq,
        flags,
        payload: l4[l4_hdr..].to_vec(),
    })
}

/// A super-packet as the kernel hands it to a TUN reader: `template` with the whole payload, the
/// L4 checksum field holding the non-complemented pseudo-header seed, and its virtio header.
pub fn superpacket(template: &Pkt, gso_size: u16) -> (wire::virtio::VirtioNetHdr, Vec<u8>) {
    use wire::virtio::{flags, gso, VirtioNetHdr};
    let mut b = template.build();
    let p = check(&b).expect("template builds a valid packet");
    let field = p.l4_off + if p.proto == TCP { 16 } else { 6 };
    let seed = pseudo_seed(
        p.v6,
        &template.src(),
        &template.dst(),
        p.proto,
        b.len() - p.l4_off,
    );
    b[field..field + 2].copy_from_slice(&seed.to_be_bytes());
    let gso_type = match (p.proto, p.v6) {
        (TCP, false) => gso::TCPV4,
        (TCP, true) => gso::TCPV6,
        _ => gso::UDP_L4,
    };
    let hdr = VirtioNetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type,
        hdr_len: (p.l4_off + p.l4_hdr) as u16,
        gso_size,
        csum_start: p.l4_off as u16,
        csum_offset: if p.proto == TCP { 16 } else { 6 },
    };
    (hdr, b)
}

/// The packets the kernel's GSO would produce from `template` cut at `gso_size`, built
/// independently: ID + i, seq + offset, FIN/PSH last only, CWR first only.
pub fn expected_segments(template: &Pkt, gso_size: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = if template.payload.is_empty() {
        vec![&[][..]]
    } else {
        template.payload.chunks(gso_size).collect()
    };
    let n = chunks.len();
    let mut off = 0u32;
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = template.clone();
            p.payload = c.to_vec();
            p.id = template.id.wrapping_add(i as u16);
            p.seq = template.seq.wrapping_add(off);
            if i + 1 < n {
                p.flags &= !(FIN | PSH);
            }
            if i > 0 {
                p.flags &= !CWR;
            }
            off += c.len() as u32;
            p.build()
        })
        .collect()
}
