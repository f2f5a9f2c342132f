//! svcplane-allocator: decides ClusterIPs and NodePorts as a mutating admission webhook in front
//! of the API server's own allocator (which stays the arbiter of collisions), and assigns
//! LoadBalancer IPs from pools. See `docs/allocator.md`.
//!
//! - [`ranges`]: address and port arithmetic, the static/dynamic bands;
//! - [`index`]: what is taken (watches + in-flight reservations);
//! - [`decide`]: the pure decision for one Service;
//! - [`policy`], [`sticky`]: where dynamic picks come from;
//! - [`webhook`]: AdmissionReview in and out;
//! - [`certs`]: self-managed serving certificates;
//! - [`lbipam`]: LoadBalancer IP pools;
//! - [`audit`]: the periodic and watch-driven audit;
//! - `run`: flags and wiring.

pub mod audit;
pub mod certs;
pub mod decide;
pub mod index;
pub mod lbipam;
pub mod metrics;
pub mod policy;
pub mod ranges;
pub mod run;
pub mod sticky;
pub mod webhook;
