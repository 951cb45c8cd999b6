//! The topic file (`--topic-config`): the default action for topics without rules, and per
//! topic the subnets it accepts senders from and the Unix socket its messages go to.
//!
//! ```toml
//! default = "Reject"            # or "Accept" (the default)
//!
//! [weather]                     # the topic, as text
//! subnets = ["400::/7"]
//! forward_socket = "/run/weather.sock"
//!
//! chat = ["5a1:23::/64"]        # subnets only
//! ```

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use message::{Prefix, Topics};

pub fn load(path: &Path) -> anyhow::Result<Topics> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read topic config {}", path.display()))?;
    parse(&text).with_context(|| format!("bad topic config {}", path.display()))
}

pub fn parse(text: &str) -> anyhow::Result<Topics> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow!("{}", e.message()))?;
    let mut topics = Topics::default();
    for (key, value) in table {
        if key == "default" {
            topics.default_accept = match value.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("accept") => true,
                Some("reject") => false,
                _ => bail!("default must be \"Accept\" or \"Reject\""),
            };
            continue;
        }
        if key.len() > message::MAX_TOPIC_LEN {
            bail!(
                "topic '{key}' is longer than {} bytes",
                message::MAX_TOPIC_LEN
            );
        }
        let topic = key.clone().into_bytes();
        topics.add_topic(topic.clone());
        let (subnets, socket) = match value {
            toml::Value::Array(a) => (a, None),
            toml::Value::Table(mut t) => {
                let subnets = match t.remove("subnets") {
                    Some(toml::Value::Array(a)) => a,
                    None => Vec::new(),
                    Some(_) => bail!("topic '{key}': subnets must be a list"),
                };
                let socket = match t.remove("forward_socket") {
                    Some(toml::Value::String(s)) => Some(s),
                    None => None,
                    Some(_) => bail!("topic '{key}': forward_socket must be a path"),
                };
                if let Some(k) = t.keys().next() {
                    bail!("topic '{key}': unknown key '{k}'");
                }
                (subnets, socket)
            }
            _ => bail!("topic '{key}': expected a table or a list of subnets"),
        };
        for s in subnets {
            let s = s
                .as_str()
                .ok_or_else(|| anyhow!("topic '{key}': subnets are strings"))?;
            let p: Prefix = s
                .parse()
                .map_err(|e: String| anyhow!("topic '{key}': {e}"))?;
            topics.add_source(topic.clone(), p);
        }
        topics.set_forward(&topic, socket.map(Into::into));
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_the_default() {
        let t = parse(
            "default = \"Reject\"\nchat = [\"400::/7\"]\n[weather]\nsubnets = [\"5a1::1\"]\nforward_socket = \"/run/w.sock\"\n",
        )
        .unwrap();
        assert!(!t.default_accept);
        assert!(t.allows(b"chat", "4aa::1".parse().unwrap()));
        assert!(t.allows(b"weather", "5a1::1".parse().unwrap()));
        assert!(!t.allows(b"weather", "5a1::2".parse().unwrap()));
        assert_eq!(t.forward(b"weather").unwrap().to_str(), Some("/run/w.sock"));
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for bad in [
            "default = \"maybe\"",
            "chat = [\"not-a-subnet\"]",
            "[chat]\nsubnet = [\"400::/7\"]",
            "chat = 5",
            "chat = [",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }
}
