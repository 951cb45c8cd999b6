//! The tokio shell of hypha: peer links, the data path between the TUN and the peers, the owner
//! loop of the routing core, link-local discovery and the admin API.
//!
//! Everything protocol-shaped lives in the pure crates below (`wire`, `offload`, `crypto`,
//! `routing`, and `datapath`, which decides what happens to each packet); this crate only moves
//! bytes and time between sockets, the TUN device and those cores, and never lets one bad peer
//! or packet take the node down.
#![forbid(unsafe_code)]

pub mod endpoint;

pub mod gate;
mod keys;
mod link;
pub mod messages;
mod node;
mod owner;
mod pending;
mod redial;
mod sessions;
mod transmit;
mod tunio;

pub use datapath::sessions::SessionLimits;
pub use datapath::DataCounters;
// The log limiter and token bucket, and the buffer pool, live in the data-path core; the
// shell's modules use them under their old paths.
pub(crate) use datapath::{pool, ratelimit};
pub use keys::Identity;
/// The QUIC client configuration of links (for tools and tests that dial a node's QUIC port).
pub use link::quic::client_config as quic_client_config;
pub use link::quic::QuicCongestion;
pub use node::{DiscoverySettings, Node, NodeConfig, TunSettings, TUN_MTU};
pub mod api;
pub mod control;
pub mod discovery;
pub mod metrics;
