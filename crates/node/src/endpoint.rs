//! Peer endpoints: `tcp://IP:PORT` and `quic://IP:PORT` URIs, their display and JSON forms (docs/protocol.md §3.2,
//! §8).

use core::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport of a peer endpoint. hypha speaks plain TCP and QUIC; `tls` is recognised so that an
/// error can say precisely why such a peer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Quic,
    Tls,
}

/// A peer endpoint: protocol and literal socket address (no DNS names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub proto: Protocol,
    pub addr: SocketAddr,
}

/// Why a peer URI was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointError {
    MissingProtocol,
    UnknownProtocol(String),
    Unsupported(Protocol),
    InvalidAddress(String),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::MissingProtocol => {
                f.write_str("missing protocol: expected tcp://IP:PORT or quic://IP:PORT")
            }
            EndpointError::UnknownProtocol(p) => {
                write!(f, "unknown protocol '{p}': expected tcp://IP:PORT or quic://IP:PORT")
            }
            EndpointError::Unsupported(p) => write!(
                f,
                "{} peers are not supported by hypha: use tcp://IP:PORT or quic://IP:PORT",
                p.scheme()
            ),
            EndpointError::InvalidAddress(a) => write!(
                f,
                "invalid socket address '{a}': expected a literal IP and port, e.g. 198.18.0.1:9651 or [fd00::1]:9651"
            ),
        }
    }
}

impl std::error::Error for EndpointError {}

impl Protocol {
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Quic => "quic",
            Protocol::Tls => "tls",
        }
    }
}

impl Endpoint {
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint {
            proto: Protocol::Tcp,
            addr,
        }
    }

    /// Parses and requires a transport hypha supports (TCP, QUIC).
    pub fn parse_supported(s: &str) -> Result<Endpoint, EndpointError> {
        let e: Endpoint = s.parse()?;
        if e.proto == Protocol::Tls {
            return Err(EndpointError::Unsupported(e.proto));
        }
        Ok(e)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(EndpointError::MissingProtocol)?;
        let proto = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "quic" => Protocol::Quic,
            "tls" => Protocol::Tls,
            other => return Err(EndpointError::UnknownProtocol(other.to_owned())),
        };
        let addr = SocketAddr::from_str(rest)
            .map_err(|_| EndpointError::InvalidAddress(rest.to_owned()))?;
        Ok(Endpoint { proto, addr })
    }
}

impl fmt::Display for Endpoint {
    /// The URI form, which parses back: `tcp://198.18.0.1:9651`, `tcp://[fd00::1]:9651`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.proto.scheme(), self.addr)
    }
}

/// JSON: `{"proto":"tcp","addr":{"socket":"198.18.0.1:9651"}}` (the admin API's shape).
impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Addr {
            socket: String,
        }
        #[derive(Serialize)]
        struct Wire {
            proto: Protocol,
            addr: Addr,
        }
        Wire {
            proto: self.proto,
            addr: Addr {
                socket: self.addr.to_string(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Addr {
            socket: SocketAddr,
        }
        #[derive(Deserialize)]
        struct Wire {
            proto: Protocol,
            addr: Addr,
        }
        let w = Wire::deserialize(d)?;
        Ok(Endpoint {
            proto: w.proto,
            addr: w.addr.socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_v4_and_v6_case_insensitively() {
        let e: Endpoint = "TCP://198.18.0.1:9651".parse().unwrap();
        assert_eq!(e, Endpoint::tcp("198.18.0.1:9651".parse().unwrap()));
        let e: Endpoint = "tcp://[fd00::1]:9651".parse().unwrap();
        assert_eq!(e.to_string(), "tcp://[fd00::1]:9651");
        let e: Endpoint = "tcp://[fe80::1%2]:9651".parse().unwrap();
        assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
    }

    #[test]
    fn rejects_bad_uris_with_reasons() {
        assert_eq!(
            "198.18.0.1:9651".parse::<Endpoint>(),
            Err(EndpointError::MissingProtocol)
        );
        assert!(matches!(
            "udp://198.18.0.1:1".parse::<Endpoint>(),
            Err(EndpointError::UnknownProtocol(p)) if p == "udp"
        ));
        assert!(matches!(
            "tcp://example.org:9651".parse::<Endpoint>(),
            Err(EndpointError::InvalidAddress(_))
        ));
        assert!(matches!(
            "tcp://[fe80::1%eth0]:9651".parse::<Endpoint>(),
            Err(EndpointError::InvalidAddress(_))
        ));
        assert_eq!(
            Endpoint::parse_supported("QUIC://198.18.0.1:9651"),
            Ok(Endpoint {
                proto: Protocol::Quic,
                addr: "198.18.0.1:9651".parse().unwrap()
            })
        );
        assert_eq!(
            Endpoint::parse_supported("tls://198.18.0.1:9651"),
            Err(EndpointError::Unsupported(Protocol::Tls))
        );
    }

    #[test]
    fn json_shape_round_trips() {
        let e = Endpoint::tcp("198.18.0.6:9651".parse().unwrap());
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(j, r#"{"proto":"tcp","addr":{"socket":"198.18.0.6:9651"}}"#);
        assert_eq!(serde_json::from_str::<Endpoint>(&j).unwrap(), e);
    }
}
