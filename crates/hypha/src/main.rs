//! The `hypha` binary: runs a node, or talks to a running one through its admin API.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod client;
mod demo;
mod message_cli;
mod topics;

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context};
use clap::Parser;
use cli::{Command, LogFormat, Settings};
use node::endpoint::Endpoint;
use node::{DiscoverySettings, Node, NodeConfig, TunSettings};

fn main() {
    let cli = cli::Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hypha: {e:#}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        None => run_node(settings),
        Some(Command::Inspect { json, pubkey }) => inspect(&settings.key_file, pubkey, json),
        Some(Command::GenerateKeys { force }) => generate_keys(&settings.key_file, force),
        Some(Command::Demo { no_wait }) => demo::run(!no_wait),
        Some(Command::Bench { args }) => bench::forward(&args),
        Some(Command::Message { cmd }) => message_cli::run(cmd, settings.api_addr),
        Some(
            cmd @ (Command::Peers { .. }
            | Command::Routes { .. }
            | Command::Stats { .. }
            | Command::Sessions { .. }),
        ) => client::run(cmd, settings.api_addr),
    };
    if let Err(e) = result {
        eprintln!("hypha: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(s: &Settings) {
    use tracing_subscriber::EnvFilter;
    let level = if s.debug {
        "debug"
    } else if s.silent {
        "error"
    } else {
        "info"
    };
    // RUST_LOG, when set, refines the level chosen by the flags.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Compact => b.compact().init(),
        LogFormat::Plain => b.with_ansi(false).without_time().init(),
        LogFormat::Logfmt => b.with_ansi(false).with_target(false).init(),
    }
}

fn run_node(s: Settings) -> anyhow::Result<()> {
    init_logging(&s);
    for what in &s.unsupported {
        tracing::warn!("flag accepted but not supported: {what}");
    }
    // Peers and connections are bounded by the node's own caps, not by a default descriptor
    // limit of 1,024.
    match tun::limits::raise_open_files_limit() {
        Ok(n) => tracing::debug!("open files limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    let mut peers = Vec::new();
    for p in &s.peers {
        match Endpoint::parse_supported(p) {
            Ok(e) if e.proto == node::endpoint::Protocol::Quic && s.disable_quic => {
                tracing::warn!("skipping peer {p}: QUIC is disabled (--disable-quic)");
            }
            Ok(e) => peers.push(e),
            // A mycelium command line may list TLS peers; they are skipped, not fatal.
            Err(node::endpoint::EndpointError::Unsupported(proto)) => {
                tracing::warn!("skipping peer {p}: {} is not supported", proto.scheme());
            }
            Err(e) => bail!("invalid peer '{p}': {e}"),
        }
    }
    // The key file's errors name the file and the cause; no context to add.
    let secret = crypto::SecretKey::load_or_create(&s.key_file)?;
    let cfg = NodeConfig {
        secret,
        listen: Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, s.tcp_listen_port))),
        quic_listen: (!s.disable_quic)
            .then(|| SocketAddr::from((Ipv6Addr::UNSPECIFIED, s.quic_listen_port))),
        quic_congestion: s.quic_congestion,
        peers,
        tun: (!s.no_tun).then(|| TunSettings {
            name: s.tun_name.clone(),
            offload: !s.no_offload,
        }),
        discovery: (!s.disable_peer_discovery).then(|| DiscoverySettings {
            port: s.peer_discovery_port,
            interfaces: s.peer_discovery_interface.clone(),
            ..DiscoverySettings::default()
        }),
        api_addr: Some(s.api_addr),
        metrics_addr: s.metrics_api_address,
        api_access: s.api_access.clone(),
        queue_management: !s.no_queue_management,
        gate: s.gate,
        sessions: (!s.no_sessions).then(|| {
            let mut limits = node::SessionLimits::default();
            if let Some(secs) = s.session_rekey_secs {
                limits.rekey_after = std::time::Duration::from_secs_f64(secs);
                limits.reject_after = limits.reject_after.max(limits.rekey_after * 2);
            }
            limits
        }),
        messages: s.messages.clone(),
        jsonrpc_addr: Some(s.jsonrpc_addr),
        jsonrpc_optional: !s.jsonrpc_explicit,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hypha")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let node = Node::start(cfg).await?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn inspect(key_file: &Path, pubkey: Option<String>, json: bool) -> anyhow::Result<()> {
    let key = match pubkey {
        Some(hex) => hex
            .parse::<crypto::PublicKey>()
            .map_err(|e| anyhow::anyhow!("invalid public key '{hex}': {e}"))?,
        None => crypto::SecretKey::load(key_file)?.public_key(),
    };
    let hex = key.to_string();
    let addr = key.address();
    if json {
        println!(
            "{}",
            serde_json::json!({ "publicKey": hex, "address": addr.to_string() })
        );
    } else {
        println!("Public key: {hex}");
        println!("Address: {addr}");
    }
    Ok(())
}

fn generate_keys(key_file: &Path, force: bool) -> anyhow::Result<()> {
    if key_file.exists() && !force {
        bail!(
            "key file {} exists; use --force to overwrite it",
            key_file.display()
        );
    }
    let secret = crypto::SecretKey::generate().context("cannot get random bytes for a key")?;
    if force {
        secret.save_replacing(key_file)?;
    } else {
        secret.save(key_file)?;
    }
    let key = secret.public_key();
    println!("Key file: {}", key_file.display());
    println!("Public key: {key}");
    println!("Address: {}", key.address());
    Ok(())
}
