//! The admin API's JSON bodies, defined once for the server ([`crate::api`]) and its clients
//! (the `hypha` CLI). The shapes are the reference node's (docs/protocol.md §8); the stats body is
//! [`Stats`](crate::metrics::Stats).
//!
//! Decoding is lenient where a node newer than this build may say more: unknown fields are
//! ignored, and a value this build does not know is kept as [`Lenient::Unknown`] rather than
//! failing the whole answer.

use core::fmt;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::control::{ConnectionState, PeerKind};
use crate::endpoint::Endpoint;

/// A value this build knows, or what a newer node sent in its place. Encodes as the value
/// itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Lenient<T, U = String> {
    Known(T),
    Unknown(U),
}

/// An endpoint whose transport this build does not know, as it came:
/// `{"proto":"vsock","addr":{"vsock":{"cid":3,"port":9651}}}`, say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherEndpoint {
    pub proto: String,
    pub addr: serde_json::Value,
}

impl fmt::Display for OtherEndpoint {
    /// The URI form where the address has a known shape (`socket`, `vsock`), else the JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.addr.get("socket").and_then(|s| s.as_str()) {
            return write!(f, "{}://{s}", self.proto);
        }
        if let Some(v) = self.addr.get("vsock") {
            return write!(f, "{}://{}:{}", self.proto, v["cid"], v["port"]);
        }
        write!(f, "{}://{}", self.proto, self.addr)
    }
}

/// One row of `GET /api/v1/admin/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub endpoint: Lenient<Endpoint, OtherEndpoint>,
    #[serde(rename = "type")]
    pub kind: Lenient<PeerKind>,
    pub connection_state: Lenient<ConnectionState>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds since the peer was learned. Clients have never needed it, so none refuses an
    /// answer without it.
    #[serde(default)]
    pub discovered: u64,
    /// Seconds since the current (or last) connection was established.
    pub last_connected: Option<u64>,
    /// Subnets the peer's link holds a route entry for, and Updates refused past its share of
    /// the table (hypha's own; absent from other nodes' answers).
    #[serde(default)]
    pub routes: u64,
    #[serde(default)]
    pub routes_refused: u64,
    /// Failed dials, and connections that closed before they were stable, in a row; and
    /// milliseconds until the next dial of a peer that is not connected (hypha's own).
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub next_dial_in_ms: Option<u64>,
    /// A connected QUIC peer's path (hypha's own; absent for TCP peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<crate::control::QuicPath>,
}

/// One row of `GET /api/v1/admin/routes/{selected,fallback}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRow {
    pub subnet: String,
    /// The link the route goes through, `TCP [local]:port <-> [remote]:port`.
    pub next_hop: String,
    pub metric: RouteMetric,
    pub seqno: u16,
}

/// A route's `metric`: a number, or text for a retracted route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteMetric {
    Finite(u16),
    /// `"infinite"` from this build; a client shows whatever text it gets.
    Infinite(String),
}

/// One row of `GET /api/v1/admin/routes/queried`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRow {
    pub subnet: String,
    /// Seconds left, as a string (the established API's shape).
    pub expiration: String,
}

/// `GET /api/v1/admin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminInfo {
    pub node_subnet: String,
    pub node_ip: Ipv6Addr,
    /// 64 hex digits.
    pub node_pubkey: String,
    /// Unix seconds.
    pub node_start_time: u64,
}

/// `GET /api/v1/pubkey/{ip}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PubkeyAnswer {
    /// 64 hex digits.
    pub public_key: String,
}

/// The body of `POST /api/v1/admin/peers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPeer {
    /// A peer URI, `tcp://IP:PORT`.
    pub endpoint: String,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = r#"{"endpoint":{"proto":"tcp","addr":{"socket":"198.18.0.6:9651"}},"type":"static","connectionState":"alive","txBytes":1,"rxBytes":2,"discovered":3,"lastConnected":null,"routes":4,"routesRefused":5,"failures":6,"nextDialInMs":700}"#;

    #[test]
    fn rows_round_trip_to_the_same_text() {
        let row: PeerRow = serde_json::from_str(PEER).unwrap();
        assert_eq!(row.kind, Lenient::Known(PeerKind::Static));
        assert_eq!(row.connection_state, Lenient::Known(ConnectionState::Alive));
        assert_eq!(serde_json::to_string(&row).unwrap(), PEER);
        for r in [
            r#"{"subnet":"4ff::/64","nextHop":"TCP a <-> b","metric":20,"seqno":3}"#,
            r#"{"subnet":"4ff::/64","nextHop":"TCP a <-> b","metric":"infinite","seqno":3}"#,
        ] {
            let row: RouteRow = serde_json::from_str(r).unwrap();
            assert_eq!(serde_json::to_string(&row).unwrap(), r);
        }
    }

    #[test]
    fn a_newer_nodes_values_are_kept_as_they_came() {
        let newer = PEER
            .replace(r#""type":"static""#, r#""type":"satellite""#)
            .replace(
                r#""connectionState":"alive""#,
                r#""connectionState":"dozing""#,
            )
            .replace(r#""proto":"tcp""#, r#""proto":"vsock""#);
        let row: PeerRow = serde_json::from_str(&newer).unwrap();
        assert_eq!(row.kind, Lenient::Unknown("satellite".to_owned()));
        assert_eq!(row.connection_state, Lenient::Unknown("dozing".to_owned()));
        match &row.endpoint {
            Lenient::Unknown(e) => assert_eq!(e.to_string(), "vsock://198.18.0.6:9651"),
            known => panic!("{known:?}"),
        }
    }
}
