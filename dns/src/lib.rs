//! svcplane-dns: cluster DNS for Services and pods, a drop-in for CoreDNS's `kubernetes` plugin.
//!
//! The core is pure: [`Index`] holds what the cluster zone answers from, updated incrementally
//! from the model's change trackers, and [`answer`] turns a question into records and an rcode
//! with no I/O. The behaviour follows the Kubernetes DNS-Based Service Discovery specification,
//! and CoreDNS where the specification is silent (see `docs/upstream/coredns-kubernetes.md`).
//!
//! [`server`] puts it on the wire (UDP and TCP, EDNS sizes, BADVERS, FORMERR) with hickory;
//! [`watch`] keeps the index current from the API; [`run`] is the process.
//! [`forward`] sends everything else upstream through a bounded cache. [`zone`] holds the slim
//! copies of Services and EndpointSlices the index keeps. Nothing on the query path calls the API.

mod answer;
pub mod corefile;
pub mod forward;
mod hosts;
mod index;
pub mod metrics;
mod name;
mod pipeline;
pub mod plan;
pub mod run;
pub mod server;
pub mod watch;
pub mod zone;

pub use answer::{Answer, Config, PodMode, QType, Rcode, Rdata, Record, answer};
pub use index::{Index, ZoneEndpoints};
pub use name::{QueryName, parse};
