//! GRO-style coalescing: a batch of IP packets to be written to a TUN device, turned into the
//! fewest writes the kernel will accept and would itself have merged.

use wire::ip::{self, protocol, IpVersion, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};
use wire::virtio::{self, gso, VirtioNetHdr};

use crate::split::PseudoBase;

/// What the coalescer may merge. Read it from the offloads the device granted, and demote a
/// feature (set it to `false`) after repeated `EINVAL` on its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Merge TCP (needs only that the device accepts GSO writes, which every vnet-header TUN does).
    pub tcp: bool,
    /// Merge UDP into `UDP_L4` writes (kernel ≥ 6.2; enable only when USO4|USO6 were granted).
    pub udp: bool,
    /// Most datagrams per UDP train. The kernel refuses more than 64 on 6.6–6.8 and 128 later.
    pub udp_max_segments: usize,
}

impl Default for Config {
    /// TCP on, UDP off (it must be probed), 64 UDP segments.
    fn default() -> Self {
        Config {
            tcp: true,
            udp: false,
            udp_max_segments: 64,
        }
    }
}

/// Largest IP packet a train may become (IPv4 total length / non-jumbo limit of the kernel's GRO).
const MAX_TRAIN_LEN: usize = 65535;

/// One contiguous byte range of one input packet, in a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// Index into the batch passed to [`Coalescer::coalesce`].
    pub packet: usize,
    pub start: usize,
    pub end: usize,
}

impl Slice {
    pub fn range(&self) -> core::ops::Range<usize> {
        self.start..self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[derive(Debug, Clone, Copy)]
struct WriteRec {
    vnet: VirtioNetHdr,
    first_slice: usize,
    slices: usize,
}

/// One write to the TUN device: the virtio header followed by the bytes of `slices`, in order.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// `NONE`/flags 0 for a single packet; `NEEDS_CSUM` and a GSO type for a merged train.
    pub vnet: VirtioNetHdr,
    /// The first slice is a whole packet (its headers already fixed up for the train); the rest
    /// are L4 payloads of later packets of the train.
    pub slices: &'a [Slice],
}

impl Write<'_> {
    /// Number of input packets in this write.
    pub fn packets(&self) -> usize {
        self.slices.len()
    }

    /// Whether this write is a merged train (more than one packet).
    pub fn is_train(&self) -> bool {
        self.slices.len() > 1
    }

    /// Length of the IP packet written (without the virtio header).
    pub fn len(&self) -> usize {
        self.slices.iter().map(Slice::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this write to `out` as one contiguous buffer: the virtio header in `vnet_hdr_len`
    /// bytes (10 or 12), then the packet. For tests and for the `EINVAL` fallback, which hands
    /// `&out[vnet_hdr_len..]` and [`Self::vnet`] to [`split`](crate::split) and writes the
    /// segments singly.
    pub fn materialize<P: AsRef<[u8]>>(
        &self,
        packets: &[P],
        vnet_hdr_len: usize,
        out: &mut Vec<u8>,
    ) {
        let img = self.vnet.to_bytes();
        out.extend_from_slice(&img[..vnet_hdr_len.min(virtio::LEN_MRG_RXBUF)]);
        for s in self.slices {
            out.extend_from_slice(&packets[s.packet].as_ref()[s.range()]);
        }
    }
}

/// The outcome of one [`Coalescer::coalesce`] call: writes in the order to issue them.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    writes: &'a [WriteRec],
    slices: &'a [Slice],
}

impl<'a> Plan<'a> {
    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<Write<'a>> {
        self.writes.get(i).map(|w| Write {
            vnet: w.vnet,
            slices: &self.slices[w.first_slice..w.first_slice + w.slices],
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Write<'a>> + '_ {
        (0..self.writes.len()).map(move |i| self.get(i).expect("index in range"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not a TCP/UDP packet we can identify a flow for: always written alone.
    Other,
    Tcp,
    Udp,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: Kind,
    /// May join a train. A TCP/UDP packet that may not is a barrier in its flow: no train spans it.
    mergeable: bool,
    version: IpVersion,
    l4_off: usize,
    l4_hdr: usize,
    ip_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    ident: u16,
    hash: u64,
    /// Next member of the same open group (linked list), or NIL.
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    hash: u64,
    /// A packet of this flow, for key comparison.
    rep: u32,
    head: u32,
    tail: u32,
}

#[derive(Debug, Clone, Copy)]
struct Train {
    /// Smallest input index of the members: decides the write order.
    pos: usize,
    first: usize,
    len: usize,
}

/// Reusable GRO engine. Internal vectors are kept between calls, so once warmed up to the largest
/// batch it does not allocate.
///
/// Usage by the TUN writer, per batch:
/// 1. `let plan = coalescer.coalesce(&mut packets);` — the first packet of each train has its
///    headers rewritten in place; no payload is copied.
/// 2. for each `write` in `plan.iter()`: one `writev` of `write.vnet` (10 or 12 bytes) followed by
///    `packets[s.packet][s.range()]` for each slice `s` in `write.slices`.
/// 3. on `EINVAL` for a train: `write.materialize(..)`, [`split`](crate::split) it, write the
///    segments singly, count it, and after repeated failures turn that protocol off with
///    [`Coalescer::set_config`]. A failing write never drops the rest of the plan.
///
/// Order: writes come out in the order of their first packet in the batch. Packets of different
/// flows keep their relative order except where a train pulls later packets forward; within a flow,
/// TCP packets between two barriers (packets that may not merge, e.g. pure ACKs) may be reordered
/// by sequence number to form trains; nothing is ever merged across a sequence gap or a barrier.
#[derive(Debug, Default)]
pub struct Coalescer {
    config: Config,
    metas: Vec<Meta>,
    flows: Vec<Flow>,
    group: Vec<(u32, u32)>,
    members: Vec<u32>,
    trains: Vec<Train>,
    writes: Vec<WriteRec>,
    slices: Vec<Slice>,
}

impl Coalescer {
    pub fn new(config: Config) -> Self {
        Coalescer {
            config,
            ..Default::default()
        }
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Changes what may be merged from the next call on (e.g. to demote UDP after `EINVAL`s).
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// Plans the writes for `packets` (each one whole IP packet, in the order they should be
    /// delivered). Rewrites the headers of the first packet of every merged train in place: IPv4
    /// total length and header checksum, IPv6 payload length, UDP length, TCP PSH/FIN taken from
    /// the train's last packet, and the L4 checksum field set to the folded non-complemented
    /// pseudo-header sum over the train's L4 length (the `NEEDS_CSUM` convention). Other packets
    /// are not modified. Malformed packets are passed through singly. Never panics.
    pub fn coalesce<P: AsRef<[u8]> + AsMut<[u8]>>(&mut self, packets: &mut [P]) -> Plan<'_> {
        self.metas.clear();
        self.flows.clear();
        self.members.clear();
        self.trains.clear();
        self.writes.clear();
        self.slices.clear();

        for p in packets.iter() {
            let m = classify(p.as_ref(), &self.config);
            self.metas.push(m);
        }
        for i in 0..packets.len() {
            let m = self.metas[i];
            if m.kind == Kind::Other {
                self.push_single(i);
                continue;
            }
            let f = self.flow_of(i, packets);
            if m.mergeable {
                let fl = &mut self.flows[f];
                if fl.head == NIL {
                    fl.head = i as u32;
                } else {
                    self.metas[fl.tail as usize].next = i as u32;
                }
                fl.tail = i as u32;
            } else {
                self.close_group(f, packets);
                self.push_single(i);
            }
        }
        for f in 0..self.flows.len() {
            self.close_group(f, packets);
        }
        self.trains.sort_unstable_by_key(|t| t.pos);

        for t in 0..self.trains.len() {
            let train = self.trains[t];
            let members = &self.members[train.first..train.first + train.len];
            let first_slice = self.slices.len();
            let head = members[0] as usize;
            let vnet = if train.len == 1 {
                let len = packets[head].as_ref().len();
                self.slices.push(Slice {
                    packet: head,
                    start: 0,
                    end: len,
                });
                VirtioNetHdr::NONE
            } else {
                let hm = self.metas[head];
                let mut total_payload = 0;
                for &j in members {
                    let m = &self.metas[j as usize];
                    total_payload += m.payload;
                    let start = if j as usize == head {
                        0
                    } else {
                        m.l4_off + m.l4_hdr
                    };
                    self.slices.push(Slice {
                        packet: j as usize,
                        start,
                        end: m.ip_len,
                    });
                }
                let last = self.metas[*members.last().expect("train not empty") as usize];
                fix_train_head(packets[head].as_mut(), &hm, total_payload, last.flags)
            };
            self.writes.push(WriteRec {
                vnet,
                first_slice,
                slices: self.slices.len() - first_slice,
            });
        }
        Plan {
            writes: &self.writes,
            slices: &self.slices,
        }
    }

    fn push_single(&mut self, i: usize) {
        self.trains.push(Train {
            pos: i,
            first: self.members.len(),
            len: 1,
        });
        self.members.push(i as u32);
    }

    fn flow_of<P: AsRef<[u8]>>(&mut self, i: usize, packets: &[P]) -> usize {
        let m = self.metas[i];
        let b = packets[i].as_ref();
        for (f, fl) in self.flows.iter().enumerate() {
            if fl.hash == m.hash {
                let r = fl.rep as usize;
                if same_flow(packets[r].as_ref(), &self.metas[r], b, &m) {
                    return f;
                }
            }
        }
        self.flows.push(Flow {
            hash: m.hash,
            rep: i as u32,
            head: NIL,
            tail: NIL,
        });
        self.flows.len() - 1
    }

    /// Turns the open group of flow `f` into trains and empties it.
    fn close_group<P: AsRef<[u8]>>(&mut self, f: usize, packets: &[P]) {
        let head = self.flows[f].head;
        if head == NIL {
            return;
        }
        self.flows[f].head = NIL;
        self.flows[f].tail = NIL;
        self.group.clear();
        let mut i = head;
        while i != NIL {
            self.group.push((0, i));
            let next = self.metas[i as usize].next;
            self.metas[i as usize].next = NIL;
            i = next;
        }
        let kind = self.metas[head as usize].kind;
        if kind == Kind::Tcp && self.group.len() > 1 {
            // Order by sequence number relative to the first packet, so a wrap of the 32-bit space
            // inside the batch sorts correctly; ties keep arrival order.
            let base = self.metas[head as usize].seq.wrapping_sub(1 << 31);
            for g in self.group.iter_mut() {
                g.0 = self.metas[g.1 as usize].seq.wrapping_sub(base);
            }
            // Usually already in order: skip the sort then.
            if !self.group.is_sorted() {
                self.group.sort_unstable();
            }
        }

        let mut k = 0;
        while k < self.group.len() {
            let h = self.group[k].1 as usize;
            let hm = self.metas[h];
            let hb = packets[h].as_ref();
            let first = self.members.len();
            self.members.push(h as u32);
            let mut pos = h;
            k += 1;
            let gso_size = hm.payload;
            let mut next_seq = hm.seq.wrapping_add(hm.payload as u32);
            let mut total = hm.ip_len;
            let mut count = 1;
            let mut last_id = hm.ident;
            let mut fixed_id: Option<bool> = None;
            let mut closed = hm.flags & (TCP_PSH | TCP_FIN) != 0;
            while !closed && k < self.group.len() {
                let c = self.group[k].1 as usize;
                let cm = self.metas[c];
                if cm.payload > gso_size
                    || total + cm.payload > MAX_TRAIN_LEN
                    || (kind == Kind::Tcp && cm.seq != next_seq)
                    || (kind == Kind::Udp && count >= self.config.udp_max_segments)
                    || !compatible(hb, &hm, packets[c].as_ref(), &cm)
                {
                    break;
                }
                if hm.version == IpVersion::V4 {
                    let dont_frag = Ipv4Packet::new_unchecked(hb).dont_frag();
                    let inc = cm.ident == last_id.wrapping_add(1);
                    let same = dont_frag && cm.ident == hm.ident;
                    match fixed_id {
                        None if inc => fixed_id = Some(false),
                        None if same => fixed_id = Some(true),
                        Some(false) if inc => {}
                        Some(true) if same => {}
                        _ => break,
                    }
                    last_id = cm.ident;
                }
                self.members.push(c as u32);
                pos = pos.min(c);
                k += 1;
                count += 1;
                total += cm.payload;
                next_seq = next_seq.wrapping_add(cm.payload as u32);
                closed = cm.payload < gso_size || cm.flags & (TCP_PSH | TCP_FIN) != 0;
            }
            self.trains.push(Train {
                pos,
                first,
                len: self.members.len() - first,
            });
        }
    }
}

const TCP_FIN: u8 = ip::tcp::flags::FIN;
const TCP_PSH: u8 = ip::tcp::flags::PSH;

/// Parses one packet far enough to decide its class and merge keys.
fn classify(b: &[u8], config: &Config) -> Meta {
    let mut m = Meta {
        kind: Kind::Other,
        mergeable: false,
        version: IpVersion::V4,
        l4_off: 0,
        l4_hdr: 0,
        ip_len: b.len(),
        payload: 0,
        seq: 0,
        flags: 0,
        ident: 0,
        hash: 0,
        next: NIL,
    };
    let Ok(loc) = ip::locate(b) else { return m };
    if loc.is_fragment() {
        return m;
    }
    let l4 = &b[loc.l4_offset..loc.ip_len];
    let (kind, l4_hdr) = match loc.protocol {
        protocol::TCP => match TcpPacket::new_checked(l4) {
            Ok(t) => (Kind::Tcp, t.header_len()),
            Err(_) => return m,
        },
        protocol::UDP => match UdpPacket::new_checked(l4) {
            Ok(_) => (Kind::Udp, ip::udp::HEADER_LEN),
            Err(_) => return m,
        },
        _ => return m,
    };
    m.kind = kind;
    m.version = loc.version;
    m.l4_off = loc.l4_offset;
    m.l4_hdr = l4_hdr;
    m.ip_len = loc.ip_len;
    m.payload = l4.len() - l4_hdr;
    m.hash = flow_hash(b, &m);

    let mut ok = !loc.has_options && loc.ip_len == b.len() && m.payload > 0;
    if loc.version == IpVersion::V4 {
        let p = Ipv4Packet::new_unchecked(b);
        m.ident = p.ident();
        // Only DF (and the reserved bit, compared later) may be set: no MF, no offset.
        ok &= p.flags_frag() & 0x3fff == 0;
    }
    match kind {
        Kind::Tcp => {
            let t = TcpPacket::new_unchecked(l4);
            m.seq = t.seq_number();
            m.flags = t.flags();
            use ip::tcp::flags::*;
            ok &= config.tcp && m.flags & ACK != 0 && m.flags & (SYN | RST | URG | CWR) == 0;
        }
        Kind::Udp => {
            let u = UdpPacket::new_unchecked(l4);
            // A zero checksum ("none", IPv4 only) would become a computed one after the merge.
            ok &= config.udp && usize::from(u.len()) == l4.len() && u.checksum() != 0;
        }
        Kind::Other => {}
    }
    m.mergeable = ok;
    m
}

fn addr_range(v: IpVersion) -> core::ops::Range<usize> {
    match v {
        IpVersion::V4 => 12..20,
        IpVersion::V6 => 8..40,
    }
}

fn flow_hash(b: &[u8], m: &Meta) -> u64 {
    // Multiply-rotate over 8-byte words of addresses and ports: only a pre-filter before the byte
    // comparison in `same_flow`, so quality beyond "few collisions" does not matter.
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = mix(m.kind as u64, u64::from(b[0] >> 4));
    for w in b[addr_range(m.version)].chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = mix(h, u64::from_ne_bytes(a));
    }
    let p = &b[m.l4_off..m.l4_off + 4];
    mix(h, u64::from(u32::from_ne_bytes([p[0], p[1], p[2], p[3]])))
}

fn same_flow(a: &[u8], ma: &Meta, b: &[u8], mb: &Meta) -> bool {
    ma.kind == mb.kind
        && ma.version == mb.version
        && a[addr_range(ma.version)] == b[addr_range(mb.version)]
        && a[ma.l4_off..ma.l4_off + 4] == b[mb.l4_off..mb.l4_off + 4]
}

/// Whether `c` may follow head `h` in a train, header-wise (both mergeable, same flow, no IPv4
/// options / IPv6 extension headers). Sequence, size, count and ID rules are checked by the caller.
fn compatible(h: &[u8], hm: &Meta, c: &[u8], cm: &Meta) -> bool {
    if hm.version != cm.version || hm.l4_hdr != cm.l4_hdr || hm.kind != cm.kind {
        return false;
    }
    let ip_ok = match hm.version {
        // version/IHL and TOS; flags+fragment word, TTL, protocol; addresses.
        IpVersion::V4 => eq::<2>(h, c, 0) && eq::<4>(h, c, 6) && eq::<8>(h, c, 12),
        // version, traffic class, flow label; next header, hop limit, addresses.
        IpVersion::V6 => eq::<4>(h, c, 0) && eq::<2>(h, c, 6) && eq::<32>(h, c, 8),
    };
    if !ip_ok {
        return false;
    }
    let (l4h, l4c) = (&h[hm.l4_off..], &c[cm.l4_off..]);
    match hm.kind {
        Kind::Tcp => {
            // Ports; ACK number and data-offset byte; window; urgent pointer; options.
            eq::<4>(l4h, l4c, 0)
                && eq::<5>(l4h, l4c, 8)
                && (hm.flags ^ cm.flags) & !(TCP_PSH | TCP_FIN) == 0
                && eq::<2>(l4h, l4c, 14)
                && eq::<2>(l4h, l4c, 18)
                && l4h[20..hm.l4_hdr] == l4c[20..cm.l4_hdr]
        }
        Kind::Udp => eq::<4>(l4h, l4c, 0),
        Kind::Other => false,
    }
}

/// `a[at..at + N] == b[at..at + N]` with a length known at compile time, so it compiles to a few
/// loads instead of a `memcmp` call (callers guarantee both are long enough).
#[inline(always)]
fn eq<const N: usize>(a: &[u8], b: &[u8], at: usize) -> bool {
    let (Some(x), Some(y)) = (a.get(at..at + N), b.get(at..at + N)) else {
        return false;
    };
    let mut xa = [0u8; N];
    let mut ya = [0u8; N];
    xa.copy_from_slice(x);
    ya.copy_from_slice(y);
    xa == ya
}

/// Rewrites the head packet of a train for `NEEDS_CSUM` GSO and returns its virtio header.
fn fix_train_head(b: &mut [u8], hm: &Meta, total_payload: usize, last_flags: u8) -> VirtioNetHdr {
    let hdr_len = hm.l4_off + hm.l4_hdr;
    let l4_len = hm.l4_hdr + total_payload;
    let ip_len = hm.l4_off + l4_len;
    let (proto, gso_type, csum_offset) = match (hm.kind, hm.version) {
        (Kind::Tcp, IpVersion::V4) => (protocol::TCP, gso::TCPV4, ip::tcp::CHECKSUM_OFFSET),
        (Kind::Tcp, IpVersion::V6) => (protocol::TCP, gso::TCPV6, ip::tcp::CHECKSUM_OFFSET),
        _ => (protocol::UDP, gso::UDP_L4, ip::udp::CHECKSUM_OFFSET),
    };
    let pseudo = PseudoBase::new(b, hm.version, proto).with_len(l4_len);
    let (l3, l4) = b.split_at_mut(hm.l4_off);
    match hm.version {
        IpVersion::V4 => {
            let mut p = Ipv4Packet::new_unchecked(l3);
            p.set_total_len(ip_len as u16);
            p.fill_checksum();
        }
        IpVersion::V6 => {
            let mut p = Ipv6Packet::new_unchecked(l3);
            p.set_payload_len((ip_len - ip::ipv6::HEADER_LEN) as u16);
        }
    }
    if hm.kind == Kind::Tcp {
        let mut t = TcpPacket::new_unchecked(l4);
        t.set_flags(t.flags() | (last_flags & (TCP_PSH | TCP_FIN)));
        // The NEEDS_CSUM seed: folded and NOT complemented (docs/protocol.md §9.5; pitfall 6 of
        // §9.7).
        t.set_checksum(pseudo);
    } else {
        let mut u = UdpPacket::new_unchecked(l4);
        u.set_len(l4_len as u16);
        u.set_checksum(pseudo);
    }
    VirtioNetHdr {
        flags: virtio::flags::NEEDS_CSUM,
        gso_type,
        hdr_len: hdr_len as u16,
        gso_size: hm.payload as u16,
        csum_start: hm.l4_off as u16,
        csum_offset: csum_offset as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(seq: u32, id: u16, payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; 40 + payload];
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((40 + payload) as u16);
        ip.set_ident(id);
        ip.set_dont_frag(true);
        ip.set_ttl(64);
        ip.set_protocol(protocol::TCP);
        ip.fill_checksum();
        let mut t = TcpPacket::new_unchecked(&mut b[20..]);
        t.set_seq_number(seq);
        t.set_header_len(20);
        t.set_flags(ip::tcp::flags::ACK);
        b
    }

    fn footprint(c: &Coalescer) -> [(usize, usize); 7] {
        [
            (c.metas.capacity(), c.metas.as_ptr() as usize),
            (c.flows.capacity(), c.flows.as_ptr() as usize),
            (c.group.capacity(), c.group.as_ptr() as usize),
            (c.members.capacity(), c.members.as_ptr() as usize),
            (c.trains.capacity(), c.trains.as_ptr() as usize),
            (c.writes.capacity(), c.writes.as_ptr() as usize),
            (c.slices.capacity(), c.slices.as_ptr() as usize),
        ]
    }

    #[test]
    fn no_allocation_once_warmed_up() {
        let batch =
            |n: u32| -> Vec<Vec<u8>> { (0..n).map(|i| tcp4(i * 100, i as u16, 100)).collect() };
        let mut c = Coalescer::new(Config::default());
        let mut warm = batch(64);
        assert_eq!(c.coalesce(&mut warm).len(), 1);
        let before = footprint(&c);
        for n in [64, 10, 1, 64, 33] {
            let mut b = batch(n);
            let plan = c.coalesce(&mut b);
            assert_eq!(plan.len(), 1);
            assert_eq!(plan.get(0).unwrap().packets(), n as usize);
            assert_eq!(footprint(&c), before, "batch of {n} reallocated");
        }
    }
}
