//! Labs: namespaces joined by veth links with an IPv4 underlay in 198.18.0.0/15.

use std::io;
use std::net::Ipv4Addr;

use crate::netns::{veth_pair, Netns};

/// A veth link between two namespaces on `198.18.<net>.0/24`: the first end `.1`, the second `.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The device at each end.
    pub devs: [String; 2],
    /// The underlay address at each end.
    pub addrs: [Ipv4Addr; 2],
}

/// Joins `a` and `b` by a veth pair on `198.18.<net>.0/24`, `a`'s end `.1` and `b`'s `.2`, both
/// up. The namespaces delete the devices on drop (see [`veth_pair`]).
pub fn link(a: &Netns, b: &Netns, net: u8) -> io::Result<Link> {
    let (ea, eb) = veth_pair(a, b)?;
    let addrs = [
        Ipv4Addr::new(198, 18, net, 1),
        Ipv4Addr::new(198, 18, net, 2),
    ];
    a.ip(&["addr", "add", &format!("{}/24", addrs[0]), "dev", &ea])?;
    b.ip(&["addr", "add", &format!("{}/24", addrs[1]), "dev", &eb])?;
    Ok(Link {
        devs: [ea, eb],
        addrs,
    })
}

/// Namespaces in a line A – B – C …, each joined to the next by a [`link`]. Dropping the lab
/// deletes the namespaces and their devices; processes started in them have guards of their own
/// ([`crate::ChildGuard`], [`crate::Daemon`]), which should go first.
#[derive(Debug)]
pub struct Lab {
    nodes: Vec<Netns>,
    links: Vec<Link>,
}

impl Lab {
    /// `nets.len() + 1` namespaces (at most 26) tagged `<tag>-a`, `<tag>-b`, … (named
    /// `hy-<tag>-a-<pid>-<n>`, see [`Netns::new`]), link `i` joining namespace `i` to `i + 1` on
    /// `198.18.<nets[i]>.0/24`.
    pub fn chain(tag: &str, nets: &[u8]) -> io::Result<Lab> {
        if nets.is_empty() || nets.len() >= 26 {
            return Err(io::Error::other("a chain has 1 to 25 links"));
        }
        let mut lab = Lab {
            nodes: Vec::new(),
            links: Vec::new(),
        };
        for i in 0..=nets.len() {
            let ns = Netns::new(&format!("{tag}-{}", Self::label(i)))?;
            lab.nodes.push(ns);
        }
        for (i, &net) in nets.iter().enumerate() {
            let l = link(&lab.nodes[i], &lab.nodes[i + 1], net)?;
            lab.links.push(l);
        }
        Ok(lab)
    }

    /// Routes the underlay from end to end: IPv4 forwarding on in the inner namespaces, and in
    /// each namespace a route to every link it is not on, through its neighbour on that side. Raw
    /// veth then has a chain figure too.
    pub fn route_through(&self) -> io::Result<()> {
        for ns in &self.nodes[1..self.nodes.len() - 1] {
            // /proc/sys/net is the namespace's of the thread that opens it.
            ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))??;
        }
        for (i, ns) in self.nodes.iter().enumerate() {
            for (j, far) in self.links.iter().enumerate() {
                let via = if j > i {
                    self.links[i].addrs[1]
                } else if j + 1 < i {
                    self.links[i - 1].addrs[0]
                } else {
                    continue;
                };
                let net = Ipv4Addr::from(u32::from(far.addrs[0]) & 0xffff_ff00);
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{net}/24"),
                    "via",
                    &via.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    /// Namespace `i`, counting from A.
    pub fn ns(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    /// Link `i`, between namespaces `i` and `i + 1`.
    pub fn link(&self, i: usize) -> &Link {
        &self.links[i]
    }

    /// How many namespaces.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a chain has at least two namespaces.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `a`, `b`, … for namespace `i`.
    pub fn label(i: usize) -> char {
        char::from(b'a' + (i % 26) as u8)
    }
}
