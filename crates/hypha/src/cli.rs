//! Command line: node flags (compatible with mycelium's, so existing command lines keep working),
//! the TOML config file with the same keys, and the subcommands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use node::api::ApiAccess;
use serde::Deserialize;

pub const DEFAULT_TCP_PORT: u16 = 9651;
pub const DEFAULT_QUIC_PORT: u16 = 9651;
pub const DEFAULT_DISCOVERY_PORT: u16 = 9650;
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8989";
pub const DEFAULT_JSONRPC_ADDR: &str = "127.0.0.1:8990";
pub const DEFAULT_TUN_NAME: &str = "hypha";

#[derive(Parser, Debug)]
#[command(
    name = "hypha",
    version,
    about = "Mesh overlay network node (mycelium wire protocol) with Linux TUN offloads",
    long_about = None
)]
pub struct Cli {
    /// Private key file (raw 32 bytes), created when missing
    /// [default: ~/.local/share/hypha/priv_key.bin]
    #[arg(short = 'k', long = "key-file", global = true)]
    pub key_file: Option<PathBuf>,

    /// TOML config file with the same keys as the long flags (`tcp_listen_port = 9651`); flags win
    /// [default: ~/.config/hypha/hypha.toml when it exists]
    #[arg(short = 'c', long = "config-file", global = true)]
    pub config_file: Option<PathBuf>,

    /// Debug logging
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    /// Log errors only
    #[arg(long, global = true, conflicts_with = "debug")]
    pub silent: bool,

    /// Log format
    #[arg(long = "log-format", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Address of the admin API (the node serves it; subcommands talk to it) [default: 127.0.0.1:8989]
    #[arg(long = "api-addr", global = true)]
    pub api_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub node: NodeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Compact,
    Logfmt,
    Plain,
}

/// Flags of a running node. Options are `Option` so that a config file value applies when the
/// flag is absent; defaults are applied after merging.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// Peers to connect to, e.g. tcp://198.18.0.1:9651 or tcp://[fd00::1]:9651
    #[arg(long, num_args = 1..)]
    pub peers: Vec<String>,

    /// TCP port to listen on for peers [default: 9651]
    #[arg(short = 't', long = "tcp-listen-port")]
    pub tcp_listen_port: Option<u16>,

    /// Run without a TUN device (the node still routes and forwards)
    #[arg(long = "no-tun")]
    pub no_tun: bool,

    /// Name of the TUN device [default: hypha]
    #[arg(long = "tun-name")]
    pub tun_name: Option<String>,

    /// Force the plain TUN path: no virtio-net header, no TSO/USO, no GRO writes
    #[arg(long = "no-offload")]
    pub no_offload: bool,

    /// Let data wait in peer links' queues without limit on its waiting time (no CoDel drops);
    /// for comparisons
    #[arg(long = "no-queue-management")]
    pub no_queue_management: bool,

    /// Speak only mycelium's wire: no end-to-end sessions (forward secrecy, replay protection,
    /// super-frames) with other hypha nodes
    #[arg(long = "no-sessions")]
    pub no_sessions: bool,

    /// Seconds into a session at which it is renegotiated (tests and demonstrations)
    #[arg(long = "session-rekey-secs", hide = true, value_name = "SECS")]
    pub session_rekey_secs: Option<f64>,

    /// Accepted connections that have not yet sent a well-formed frame, at most, from everywhere
    /// [default: 512]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_unproven_peers: Option<u32>,

    /// Such connections at most from one source (an IPv4 address, an IPv6 /64) [default: 8]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_unproven_per_source: Option<u32>,

    /// Seconds an accepted connection has to send its first well-formed frame [default: 10]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub peer_proof_timeout: Option<u32>,

    /// Do not announce or discover peers on the local link
    #[arg(long = "disable-peer-discovery")]
    pub disable_peer_discovery: bool,

    /// UDP port of link-local peer discovery [default: 9650]
    #[arg(long = "peer-discovery-port")]
    pub peer_discovery_port: Option<u16>,

    /// Only discover peers on these interfaces (repeatable)
    #[arg(long = "peer-discovery-interface")]
    pub peer_discovery_interface: Vec<String>,

    /// Run without QUIC: no UDP listener, and quic:// peers are skipped
    #[arg(long = "disable-quic")]
    pub disable_quic: bool,

    /// UDP port for QUIC peers [default: 9651]
    #[arg(short = 'q', long = "quic-listen-port")]
    pub quic_listen_port: Option<u16>,

    /// Congestion controller of QUIC links: bbr (default), cubic, newreno (for measurements)
    #[arg(long = "quic-congestion", hide = true)]
    pub quic_congestion: Option<node::QuicCongestion>,

    /// Address of the JSON-RPC 2.0 API [default: 127.0.0.1:8990; when the default is taken, the
    /// node runs without it and says so]
    #[arg(long = "jsonrpc-addr")]
    pub jsonrpc_addr: Option<SocketAddr>,

    /// TOML file of message topics: `default = "Accept"|"Reject"`, then per topic
    /// `subnets = [...]` and `forward_socket = "/path"` (docs/messages.md)
    #[arg(long = "topic-config", value_name = "FILE")]
    pub topic_config: Option<PathBuf>,

    /// Messages the inbox holds at most, counting those being received [default: 1024]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub inbox_max_messages: Option<u64>,

    /// Bytes the inbox holds at most, counting those being received [default: 67108864]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub inbox_max_bytes: Option<u64>,

    /// Longest message sent or accepted, in bytes [default: 16777216]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_message_size: Option<u64>,

    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9100
    #[arg(long = "metrics-api-address")]
    pub metrics_api_address: Option<SocketAddr>,

    /// A host name the admin API and metrics endpoint also answer to (repeatable). By default
    /// they answer only to IP addresses and `localhost`, which keeps DNS-rebinding web pages out;
    /// list only names whose DNS you control
    #[arg(long = "api-allowed-host", value_name = "NAME")]
    pub api_allowed_host: Vec<String>,

    /// Accepted for compatibility; not supported
    #[arg(long = "firewall-mark")]
    pub firewall_mark: Option<u32>,

    /// Accepted for compatibility; hypha's routing core is a single owner task
    #[arg(long = "update-workers")]
    pub update_workers: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the public key and overlay address of a public key, or of our key file
    Inspect {
        /// Output JSON
        #[arg(long)]
        json: bool,
        /// Hex public key (64 characters); default: the key file's
        pubkey: Option<String>,
    },
    /// Generate a new key file
    GenerateKeys {
        /// Overwrite an existing key file
        #[arg(long)]
        force: bool,
    },
    /// Peers of the running node
    Peers {
        #[command(subcommand)]
        cmd: PeersCmd,
    },
    /// Routes of the running node
    Routes {
        #[command(subcommand)]
        cmd: RoutesCmd,
    },
    /// Counters of the running node: traffic per peer, TUN batching, drops, routing
    Stats {
        /// Output the API's JSON
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 1) with rates per second, until Ctrl-C
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
    },
    /// End-to-end sessions of the running node with other hypha nodes, one row per node
    Sessions {
        /// Output the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Run a three-node overlay in network namespaces on this machine (root), ping across it,
    /// print what happened, clean up
    Demo {
        /// Exit right after the report instead of waiting for Ctrl-C
        #[arg(long)]
        no_wait: bool,
    },
    /// Send or receive messages through the running node
    Message {
        #[command(subcommand)]
        cmd: MessageCmd,
    },
    /// Benchmark the data path (root): raw veth, hypha with and without offloads, the forwarding
    /// floors and other nodes (--compare), in network namespaces with iperf3 and ping; prints one
    /// table
    ///
    /// Runs the `hypha-bench` binary that sits beside this one (build it with `cargo build
    /// --release -p hypha-bench`) with the arguments unchanged; `hypha bench --help` lists them.
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for hypha-bench, passed through unchanged
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MessageCmd {
    /// Send a message; prints its id as JSON, or the reply with --wait
    Send {
        /// Wait for a reply (up to --timeout seconds; default: a year)
        #[arg(short = 'w', long)]
        wait: bool,
        /// Seconds to wait for the reply
        #[arg(long)]
        timeout: Option<u64>,
        /// Topic (text, at most 255 bytes)
        #[arg(short = 't', long)]
        topic: Option<String>,
        /// Read the message from this file
        #[arg(long = "msg-path")]
        msg_path: Option<PathBuf>,
        /// Send as the reply to this received message's id
        #[arg(long = "reply-to", conflicts_with = "wait")]
        reply_to: Option<String>,
        /// Overlay address or hex public key of the receiver
        destination: String,
        /// The message text (unless --msg-path)
        message: Option<String>,
    },
    /// Receive a message; prints it as JSON (UTF-8 payloads as text)
    Receive {
        /// Seconds to wait for one (default: a year); nothing printed if none came
        #[arg(long)]
        timeout: Option<u64>,
        /// Only a message with this topic
        #[arg(short = 't', long)]
        topic: Option<String>,
        /// Write the payload to this file
        #[arg(long = "msg-path")]
        msg_path: Option<PathBuf>,
        /// Print only the payload, as it came
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeersCmd {
    /// List peers and their state
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add peers (tcp://IP:PORT ...)
    Add {
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
    /// Remove peers (tcp://IP:PORT ...)
    Remove {
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoutesCmd {
    /// Selected routes
    Selected {
        #[arg(long)]
        json: bool,
    },
    /// Fallback routes
    Fallback {
        #[arg(long)]
        json: bool,
    },
    /// Subnets being queried
    Queried {
        #[arg(long)]
        json: bool,
    },
}

/// The config file: the long flags' names with `_`. Unknown keys are an error (a typo should not be
/// silently ignored).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub key_file: Option<PathBuf>,
    pub debug: Option<bool>,
    pub silent: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub api_addr: Option<SocketAddr>,
    pub peers: Option<Vec<String>>,
    pub tcp_listen_port: Option<u16>,
    pub no_tun: Option<bool>,
    pub tun_name: Option<String>,
    pub no_offload: Option<bool>,
    pub no_queue_management: Option<bool>,
    pub no_sessions: Option<bool>,
    pub max_unproven_peers: Option<u32>,
    pub max_unproven_per_source: Option<u32>,
    pub peer_proof_timeout: Option<u32>,
    pub disable_peer_discovery: Option<bool>,
    pub peer_discovery_port: Option<u16>,
    pub peer_discovery_interface: Option<Vec<String>>,
    pub disable_quic: Option<bool>,
    pub quic_listen_port: Option<u16>,
    pub jsonrpc_addr: Option<SocketAddr>,
    pub topic_config: Option<PathBuf>,
    pub inbox_max_messages: Option<u64>,
    pub inbox_max_bytes: Option<u64>,
    pub max_message_size: Option<u64>,
    pub metrics_api_address: Option<SocketAddr>,
    pub api_allowed_host: Option<Vec<String>>,
    pub firewall_mark: Option<u32>,
    pub update_workers: Option<usize>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("bad config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))
    }
}

/// Everything a node run needs, after merging flags over the config file over defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub key_file: PathBuf,
    pub debug: bool,
    pub silent: bool,
    pub log_format: LogFormat,
    pub api_addr: SocketAddr,
    pub peers: Vec<String>,
    pub tcp_listen_port: u16,
    pub disable_quic: bool,
    pub quic_listen_port: u16,
    pub quic_congestion: node::QuicCongestion,
    pub no_tun: bool,
    pub tun_name: String,
    pub no_offload: bool,
    pub no_queue_management: bool,
    pub no_sessions: bool,
    pub session_rekey_secs: Option<f64>,
    pub gate: node::gate::GateLimits,
    pub disable_peer_discovery: bool,
    pub peer_discovery_port: u16,
    pub peer_discovery_interface: Vec<String>,
    pub metrics_api_address: Option<SocketAddr>,
    /// JSON-RPC address, and whether it was asked for (not the default).
    pub jsonrpc_addr: SocketAddr,
    pub jsonrpc_explicit: bool,
    /// The message subsystem's bounds and topics.
    pub messages: node::messages::MessageSettings,
    /// Host names the API answers to besides IP literals and `localhost`.
    pub api_access: ApiAccess,
    /// Flags given that hypha accepts but does not implement, for a log line each.
    pub unsupported: Vec<&'static str>,
}

pub fn default_key_file() -> PathBuf {
    data_dir().join("hypha").join("priv_key.bin")
}

fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    home_dir().join(".local").join("share")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn default_config_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".config"));
    base.join("hypha").join("hypha.toml")
}

impl Cli {
    /// Loads the config file (explicit, or the default one when it exists) and merges.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config_file {
            Some(p) => FileConfig::load(p)?,
            None => {
                let p = default_config_file();
                if p.exists() {
                    FileConfig::load(&p)?
                } else {
                    FileConfig::default()
                }
            }
        };
        self.merge(file)
    }

    pub fn merge(&self, f: FileConfig) -> anyhow::Result<Settings> {
        let n = &self.node;
        let mut unsupported = Vec::new();
        if n.firewall_mark.or(f.firewall_mark).is_some() {
            unsupported.push("--firewall-mark");
        }
        if n.update_workers.or(f.update_workers).is_some() {
            unsupported.push("--update-workers (one routing owner task)");
        }
        let peers = if n.peers.is_empty() {
            f.peers.unwrap_or_default()
        } else {
            n.peers.clone()
        };
        let tun_name = n
            .tun_name
            .clone()
            .or(f.tun_name)
            .unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned());
        if tun_name.is_empty() || tun_name.len() > 15 || tun_name.contains(['/', ' ', '\0']) {
            bail!("invalid --tun-name '{tun_name}': 1 to 15 characters, no '/', space or NUL");
        }
        let api_hosts = if n.api_allowed_host.is_empty() {
            f.api_allowed_host.unwrap_or_default()
        } else {
            n.api_allowed_host.clone()
        };
        let api_access = ApiAccess::with_host_names(&api_hosts)
            .map_err(|e| anyhow::anyhow!("invalid --api-allowed-host {e}"))?;
        let debug = self.debug || f.debug.unwrap_or(false);
        let silent = self.silent || f.silent.unwrap_or(false);
        if debug && silent {
            bail!("--debug and --silent exclude each other");
        }
        Ok(Settings {
            key_file: self
                .key_file
                .clone()
                .or(f.key_file)
                .unwrap_or_else(default_key_file),
            debug,
            silent,
            log_format: self
                .log_format
                .or(f.log_format)
                .unwrap_or(LogFormat::Compact),
            api_addr: self
                .api_addr
                .or(f.api_addr)
                .unwrap_or_else(|| DEFAULT_API_ADDR.parse().expect("valid default")),
            peers,
            tcp_listen_port: n
                .tcp_listen_port
                .or(f.tcp_listen_port)
                .unwrap_or(DEFAULT_TCP_PORT),
            disable_quic: n.disable_quic || f.disable_quic.unwrap_or(false),
            quic_listen_port: n
                .quic_listen_port
                .or(f.quic_listen_port)
                .unwrap_or(DEFAULT_QUIC_PORT),
            quic_congestion: n.quic_congestion.unwrap_or_default(),
            no_tun: n.no_tun || f.no_tun.unwrap_or(false),
            tun_name,
            no_offload: n.no_offload || f.no_offload.unwrap_or(false),
            no_queue_management: n.no_queue_management || f.no_queue_management.unwrap_or(false),
            no_sessions: n.no_sessions || f.no_sessions.unwrap_or(false),
            session_rekey_secs: match n.session_rekey_secs {
                Some(s) if !(s.is_finite() && (0.1..=3600.0).contains(&s)) => {
                    bail!("--session-rekey-secs must be between 0.1 and 3600 seconds, got {s}")
                }
                s => s,
            },
            gate: {
                let d = node::gate::GateLimits::default();
                let pick = |flag: Option<u32>, file: Option<u32>, name: &str| match flag.or(file) {
                    Some(0) => bail!("invalid {name} 0: it must be at least 1"),
                    v => Ok(v),
                };
                let total = pick(
                    n.max_unproven_peers,
                    f.max_unproven_peers,
                    "max_unproven_peers",
                )?;
                let per = pick(
                    n.max_unproven_per_source,
                    f.max_unproven_per_source,
                    "max_unproven_per_source",
                )?;
                let secs = pick(
                    n.peer_proof_timeout,
                    f.peer_proof_timeout,
                    "peer_proof_timeout",
                )?;
                node::gate::GateLimits {
                    max_unproven: total.map_or(d.max_unproven, |v| v as usize),
                    max_unproven_per_source: per.map_or(d.max_unproven_per_source, |v| v as usize),
                    proof_timeout: secs
                        .map_or(d.proof_timeout, |v| Duration::from_secs(u64::from(v))),
                }
            },
            disable_peer_discovery: n.disable_peer_discovery
                || f.disable_peer_discovery.unwrap_or(false),
            peer_discovery_port: n
                .peer_discovery_port
                .or(f.peer_discovery_port)
                .unwrap_or(DEFAULT_DISCOVERY_PORT),
            peer_discovery_interface: if n.peer_discovery_interface.is_empty() {
                f.peer_discovery_interface.unwrap_or_default()
            } else {
                n.peer_discovery_interface.clone()
            },
            metrics_api_address: n.metrics_api_address.or(f.metrics_api_address),
            jsonrpc_addr: n
                .jsonrpc_addr
                .or(f.jsonrpc_addr)
                .unwrap_or_else(|| DEFAULT_JSONRPC_ADDR.parse().expect("valid default")),
            jsonrpc_explicit: n.jsonrpc_addr.or(f.jsonrpc_addr).is_some(),
            messages: {
                let mut config = message::Config::default();
                if let Some(v) = n.inbox_max_messages.or(f.inbox_max_messages) {
                    config.inbox_max_messages = v as usize;
                }
                if let Some(v) = n.inbox_max_bytes.or(f.inbox_max_bytes) {
                    config.inbox_max_bytes = v;
                }
                if let Some(v) = n.max_message_size.or(f.max_message_size) {
                    config.max_message_len = v;
                }
                let topics = match n.topic_config.clone().or(f.topic_config) {
                    Some(p) => crate::topics::load(&p)?,
                    None => message::Topics::default(),
                };
                node::messages::MessageSettings { config, topics }
            },
            api_access,
            unsupported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("hypha").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = cli(&[]).merge(FileConfig::default()).unwrap();
        assert_eq!(s.tcp_listen_port, 9651);
        assert_eq!(s.peer_discovery_port, 9650);
        assert_eq!(s.api_addr, "127.0.0.1:8989".parse().unwrap());
        assert_eq!(s.tun_name, "hypha");
        assert!(s.key_file.ends_with("hypha/priv_key.bin"));
        assert!(!s.no_tun && !s.no_offload && !s.disable_peer_discovery);
        assert!(s.unsupported.is_empty());
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let f = FileConfig::parse(
            "tcp_listen_port = 1000\ntun_name = \"fromfile\"\npeers = [\"tcp://198.18.0.1:9651\"]\nno_offload = true\n",
        )
        .unwrap();
        let s = cli(&["-t", "2000", "--peers", "tcp://198.18.0.2:9651"])
            .merge(f)
            .unwrap();
        assert_eq!(s.tcp_listen_port, 2000);
        assert_eq!(s.tun_name, "fromfile");
        assert_eq!(s.peers, vec!["tcp://198.18.0.2:9651".to_owned()]);
        assert!(s.no_offload);
    }

    #[test]
    fn mycelium_command_lines_are_accepted() {
        let c = cli(&[
            "--peers",
            "tcp://198.18.0.1:9651",
            "quic://198.18.0.2:9651",
            "--disable-quic",
            "-q",
            "9652",
            "--jsonrpc-addr",
            "127.0.0.1:8990",
            "--metrics-api-address",
            "127.0.0.1:9999",
            "--tun-name",
            "myc0",
        ]);
        let s = c.merge(FileConfig::default()).unwrap();
        assert_eq!(s.peers.len(), 2);
        assert!(s.disable_quic);
        assert_eq!(s.quic_listen_port, 9652);
        assert!(s.unsupported.is_empty());
        assert!(s.jsonrpc_explicit);
        assert_eq!(s.jsonrpc_addr, "127.0.0.1:8990".parse().unwrap());
        assert_eq!(
            s.metrics_api_address,
            Some("127.0.0.1:9999".parse().unwrap())
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(Cli::try_parse_from(["hypha", "-t", "notaport"]).is_err());
        assert!(Cli::try_parse_from(["hypha", "--no-such-flag"]).is_err());
        let e = FileConfig::parse("tcp_listen_prot = 1\n").unwrap_err();
        assert!(e.to_string().contains("tcp_listen_prot"), "{e}");
        let e = cli(&["--tun-name", "a-very-long-interface-name"])
            .merge(FileConfig::default())
            .unwrap_err();
        assert!(e.to_string().contains("--tun-name"), "{e}");
        let e = cli(&["--api-allowed-host", "node1.lan:9100"])
            .merge(FileConfig::default())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid --api-allowed-host 'node1.lan:9100' is not a host name \
             (letters, digits, '-' and '_' in dot-separated labels, no port)"
        );
    }

    #[test]
    fn message_settings_from_flags_file_and_topic_file() {
        let dir = std::env::temp_dir().join(format!("hypha-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let topics = dir.join("topics.toml");
        std::fs::write(&topics, "default = \"Reject\"\nchat = [\"400::/7\"]\n").unwrap();
        let f = FileConfig::parse(&format!(
            "inbox_max_bytes = 1000\ntopic_config = {:?}\n",
            topics.display().to_string()
        ))
        .unwrap();
        let s = cli(&["--inbox-max-messages", "7", "--max-message-size", "500"])
            .merge(f)
            .unwrap();
        assert_eq!(s.messages.config.inbox_max_messages, 7);
        assert_eq!(s.messages.config.inbox_max_bytes, 1000);
        assert_eq!(s.messages.config.max_message_len, 500);
        assert!(!s.messages.topics.default_accept);
        assert!(s.messages.topics.allows(b"chat", "4aa::1".parse().unwrap()));
        assert!(!s.jsonrpc_explicit);
        std::fs::write(&topics, "chat = [\"nonsense\"]\n").unwrap();
        let e = cli(&["--topic-config", topics.to_str().unwrap()])
            .merge(FileConfig::default())
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("bad topic config") && e.contains("nonsense"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert!(cli_err(&["--inbox-max-messages", "0"]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn cli_err(args: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("hypha").chain(args.iter().copied())).is_err()
    }

    #[test]
    fn api_allowed_hosts_from_flags_or_file() {
        let s = cli(&[]).merge(FileConfig::default()).unwrap();
        assert_eq!(s.api_access, ApiAccess::default());
        let f = FileConfig::parse("api_allowed_host = [\"prom.lan\"]\n").unwrap();
        let s = cli(&[]).merge(f).unwrap();
        assert_eq!(
            s.api_access,
            ApiAccess::with_host_names(["prom.lan"]).unwrap()
        );
        let f = FileConfig::parse("api_allowed_host = [\"prom.lan\"]\n").unwrap();
        let s = cli(&["--api-allowed-host", "a.lan", "--api-allowed-host", "B.lan"])
            .merge(f)
            .unwrap();
        assert_eq!(
            s.api_access,
            ApiAccess::with_host_names(["a.lan", "b.lan"]).unwrap()
        );
    }
}
