//! A peer that speaks the protocol by hand, for tests of what a malicious (but connected and
//! authenticated) peer can and cannot do: it announces keys of its own and writes whatever data
//! frames it likes. Everything the node sends it is read and thrown away.

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crypto::{PublicKey, SecretKey};
use testbed::Netns;
use wire::babel::{Metric, Prefix, RouterId, SeqNo, Subnet, Tlv, Update};

/// A key the rogue peer owns: it can announce the key's /64 and seal frames from it.
pub struct Sender {
    secret: SecretKey,
    pub public: PublicKey,
    pub addr: Ipv6Addr,
    pub subnet: Subnet,
}

impl Sender {
    pub fn new() -> Sender {
        let secret = SecretKey::generate().expect("random key");
        let public = secret.public_key();
        Sender {
            addr: public.address(),
            subnet: public.subnet(),
            public,
            secret,
        }
    }

    /// The subnet as the CLI prints it.
    pub fn subnet_text(&self) -> String {
        self.subnet.to_string()
    }

    /// The Update that announces this key's /64 as directly reachable.
    pub fn update(&self) -> Vec<u8> {
        let tlv = Tlv::Update(Update {
            flags: 0,
            interval: 30000,
            seqno: SeqNo(0),
            metric: Metric(0),
            prefix: Prefix::V6(self.subnet),
            router_id: RouterId::new(self.public.0, [7; 6]),
        });
        let mut out = Vec::new();
        wire::frame::encode_control(&mut out, &tlv).expect("encode update");
        out
    }

    /// A data frame from `src` to `dst` whose body is `[1, kind, 0, 0] ‖ payload` sealed with
    /// the key this sender shares with `to`.
    pub fn frame(
        &self,
        to: &PublicKey,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        kind: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        wire::frame::encode_data(&mut out, 64, src, dst, &self.seal(to, kind, payload))
            .expect("encode data frame");
        out
    }

    /// `[1, kind, 0, 0] ‖ payload` sealed for `to`: a frame body.
    pub fn seal(&self, to: &PublicKey, kind: u8, payload: &[u8]) -> Vec<u8> {
        let cipher = self
            .secret
            .shared_secret(to)
            .expect("shared secret")
            .cipher();
        let mut body = vec![1, kind, 0, 0];
        body.extend_from_slice(payload);
        cipher.seal_append(&mut body, 0).expect("seal");
        body
    }
}

/// The public key of a key file, read with the CLI.
pub fn public_key_of(key: &std::path::Path) -> PublicKey {
    let out = std::process::Command::new(super::BIN)
        .args(["-k", key.to_str().unwrap(), "inspect", "--json"])
        .output()
        .expect("run hypha inspect");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let hex = v["publicKey"].as_str().expect("publicKey");
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    PublicKey(k)
}

/// One TCP connection to a node's peer port, made from inside `ns`.
pub struct Rogue {
    stream: TcpStream,
}

impl Rogue {
    pub fn connect(ns: &Netns, target: SocketAddr) -> Rogue {
        let stream = ns
            .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .expect("enter ns")
            .expect("connect to the node");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = stream.try_clone().expect("clone stream");
        std::thread::spawn(move || {
            let mut sink = [0u8; 16384];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        });
        Rogue { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// An IPv6 UDP datagram with a valid checksum.
pub fn udp6(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 addresses only");
    };
    let udp_len = 8 + payload.len();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&s.ip().octets());
    p.extend_from_slice(&d.ip().octets());
    p.extend_from_slice(&s.port().to_be_bytes());
    p.extend_from_slice(&d.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = wire::checksum::pseudo_v6(s.ip().octets(), d.ip().octets(), 17, udp_len as u32);
    let sum = wire::checksum::finish(wire::checksum::add(pseudo, wire::checksum::sum(&p[40..])));
    let sum = if sum == 0 { 0xffff } else { sum };
    p[46..48].copy_from_slice(&sum.to_be_bytes());
    p
}
