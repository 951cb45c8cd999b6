//! Which topics a node accepts messages on, from whom, and which it forwards to a local socket.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

/// An IPv6 prefix a topic accepts senders from (`a::/64`; a bare address means `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        if self.len == 0 {
            return true;
        }
        let shift = 128 - u32::from(self.len);
        (u128::from(self.addr) >> shift) == (u128::from(ip) >> shift)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| format!("invalid subnet '{s}': not an IPv6 address"))?;
        let len = match l {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= 128)
                .ok_or_else(|| format!("invalid subnet '{s}': bad prefix length"))?,
            None => 128,
        };
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One configured topic: the senders it accepts and where its messages go instead of the inbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRule {
    pub sources: Vec<Prefix>,
    pub forward: Option<PathBuf>,
}

/// The topic table. A configured topic accepts only its sources; any other topic follows the
/// default action. Replies are never filtered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub default_accept: bool,
    pub rules: BTreeMap<Vec<u8>, TopicRule>,
}

impl Default for Topics {
    fn default() -> Topics {
        Topics {
            default_accept: true,
            rules: BTreeMap::new(),
        }
    }
}

impl Topics {
    pub fn allows(&self, topic: &[u8], src: Ipv6Addr) -> bool {
        match self.rules.get(topic) {
            Some(rule) => rule.sources.iter().any(|p| p.contains(src)),
            None => self.default_accept,
        }
    }

    pub fn add_topic(&mut self, topic: Vec<u8>) {
        self.rules.entry(topic).or_default();
    }

    pub fn remove_topic(&mut self, topic: &[u8]) {
        self.rules.remove(topic);
    }

    /// Adds a source, creating the topic if needed.
    pub fn add_source(&mut self, topic: Vec<u8>, p: Prefix) {
        let r = self.rules.entry(topic).or_default();
        if !r.sources.contains(&p) {
            r.sources.push(p);
        }
    }

    pub fn remove_source(&mut self, topic: &[u8], p: Prefix) {
        if let Some(r) = self.rules.get_mut(topic) {
            r.sources.retain(|q| *q != p);
        }
    }

    /// `None` for a topic that is not configured.
    pub fn sources(&self, topic: &[u8]) -> Option<Vec<Prefix>> {
        self.rules.get(topic).map(|r| r.sources.clone())
    }

    /// Sets or clears the socket of a configured topic (a topic not configured is left alone).
    pub fn set_forward(&mut self, topic: &[u8], path: Option<PathBuf>) {
        if let Some(r) = self.rules.get_mut(topic) {
            r.forward = path;
        }
    }

    pub fn forward(&self, topic: &[u8]) -> Option<&PathBuf> {
        self.rules.get(topic)?.forward.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitelist_and_default() {
        let mut t = Topics::default();
        let a: Ipv6Addr = "400:1::5".parse().unwrap();
        let b: Ipv6Addr = "400:2::5".parse().unwrap();
        assert!(t.allows(b"x", a));
        t.add_topic(b"x".to_vec());
        assert!(
            !t.allows(b"x", a),
            "a configured topic without sources accepts nobody"
        );
        t.add_source(b"x".to_vec(), "400:1::/64".parse().unwrap());
        assert!(t.allows(b"x", a));
        assert!(!t.allows(b"x", b));
        t.default_accept = false;
        assert!(!t.allows(b"y", a));
        t.remove_source(b"x", "400:1::/64".parse().unwrap());
        assert_eq!(t.sources(b"x"), Some(vec![]));
        assert_eq!(t.sources(b"y"), None);
        t.set_forward(b"y", Some("/tmp/s".into()));
        assert_eq!(t.forward(b"y"), None);
        t.set_forward(b"x", Some("/tmp/s".into()));
        assert_eq!(t.forward(b"x"), Some(&PathBuf::from("/tmp/s")));
    }

    #[test]
    fn prefixes() {
        let p: Prefix = "400:1::7".parse().unwrap();
        assert_eq!(p.len, 128);
        assert_eq!(p.to_string(), "400:1::7/128");
        assert!("400::/129".parse::<Prefix>().is_err());
        assert!("1.2.3.4/8".parse::<Prefix>().is_err());
        let all: Prefix = "::/0".parse().unwrap();
        assert!(all.contains("400::1".parse().unwrap()));
    }
}
