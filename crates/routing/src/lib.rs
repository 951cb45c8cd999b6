//! The routing core of hypha: the Babel variant spoken by mycelium (docs/protocol.md §4, §5), as a
//! pure state machine.
//!
//! [`Router`] keeps the neighbour table (Hello/IHU, link costs, liveness), the route table
//! (sources and feasibility distances, selection with hysteresis, fallbacks, expiry,
//! retractions, triggered updates with split horizon) and on-demand requests (RouteRequest
//! forwarding with generations and a dedup cache, SeqNoRequest origination, forwarding and seqno
//! bumps). Inputs are `handle_*` calls with the current [`Time`]; outputs are polled
//! (`poll_transmit`, `poll_event`, `poll_timeout`). The data path reads immutable
//! [`ForwardingTable`] snapshots without locks; publishing one after k changes costs O(k), not
//! O(table) (copy-on-write shards).
//!
//! The crate never does I/O, never reads a clock, never spawns, never allocates per data packet
//! and never panics on input: malformed or hostile TLVs are counted in [`Counters`] and skipped.
//! Its one random number, the forwarding table's shard key, is [`Config::fib_seed`]:
//! [`Config::new`] draws it from std's `RandomState` (as every `HashMap::new` does), and no
//! behaviour depends on it.
//! Every table and queue has a bound ([`Limits`]). It works on the decoded TLV structs of
//! `wire::babel` and never sees bytes. Inside, router-ids and subnets are interned and a route
//! costs about 16 bytes, a subnet about 90 (docs/simulation.md), so that the simulator can run
//! a 10,000-node mesh, each core holding a route to every node.
//!
//! Where this core deliberately differs from the reference behaviour (all invisible to, or
//! safer for, mycelium peers; docs/protocol.md §10.4):
//! * the first Hello goes out when a link comes up (not up to 20 s later), so the link cost and
//!   the dead timer start from a real measurement;
//! * a reply to a SeqNoRequest carries the metric through our actual next hop, not through the
//!   requester;
//! * a SeqNoRequest is never forwarded back to the neighbour it came from, and the 60 s seqno
//!   cache (checked first) makes the 4 s per-peer skip redundant;
//! * requests for IPv4, link-local or shorter-than-/64 prefixes (and wildcard SeqNoRequests)
//!   are counted and ignored instead of being marked as queried or forwarded; a wildcard
//!   RouteRequest gets the full dump as specified, but at most once per hold-off per link
//!   (requests within it get one dump at its end);
//! * the query table is shared out: each link may cause a bounded number of queries at a
//!   bounded rate (its own RouteRequests apart from those it relays), and some room is kept
//!   for the node's own queries, so one peer cannot stop everyone else's route lookups;
//! * a link may hold routes for a bounded share of the route table (an Update for a subnet new
//!   to a link at its share is refused), and the SeqNoRequests it makes us forward are
//!   rate-limited, so one peer cannot fill the tables everyone shares;
//! * a finite route is held at least a minimum time whatever interval its Update carries
//!   (mycelium sends interval 0 only in retractions), and a subnet that keeps flapping has its
//!   triggered updates damped (see [`Limits`]).
//!
//! [`sim`] joins many routers over virtual links with a virtual clock and a seeded RNG, for
//! tests, the `simreport` and `simscale` examples and benchmarks.
#![forbid(unsafe_code)]

mod fib;
mod names;
mod router;
mod routes;
pub mod sim;
mod time;

/// Re-exported: the routing core's filters accept only this space, and the shell checks packets
/// against the same one.
pub use crypto::overlay;
pub use fib::{ForwardingTable, Lookup, NextHop};
pub use router::{
    consts, Config, Counters, Event, Limits, LinkError, LinkId, LinkInfo, LinkStats, RouteInfo,
    Router, TableSizes,
};
pub use time::Time;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fib;
