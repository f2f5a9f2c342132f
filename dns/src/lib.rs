//! svcplane-dns: cluster DNS for Services and pods, a drop-in for CoreDNS's `kubernetes` plugin.
//!
//! The core is pure: [`Index`] holds what the cluster zone answers from, updated incrementally
//! from the model's change trackers, and [`answer`] turns a question into records and an rcode
//! with no I/O. The behaviour follows the Kubernetes DNS-Based Service Discovery specification,
//! and CoreDNS where the specification is silent (see `docs/upstream/coredns-kubernetes.md`).
//!
//! [`server`] puts it on the wire (UDP and TCP, EDNS sizes, BADVERS, FORMERR) with hickory;
//! [`watch`] keeps the index current from the API; [`run`] is the process.
//! Work in progress: forwarding (names outside the zone are REFUSED for now) and its cache,
//! metrics, and the fuzz target are still to come. This crate must never call the API on the query
//! path.

mod answer;
pub mod forward;
mod index;
pub mod metrics;
mod name;
pub mod run;
pub mod server;
pub mod watch;

pub use answer::{Answer, Config, PodMode, QType, Rcode, Rdata, Record, answer};
pub use index::Index;
pub use name::{QueryName, parse};
