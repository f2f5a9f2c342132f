//! What every svcplane binary shares: the API client flags (with client-side rate limits and a
//! request timeout), logging setup, the admin server (`/metrics`, `/healthz`, `/readyz`),
//! graceful shutdown, and the controller machinery: the watch intake ([`informer`]), Lease
//! leader election ([`leader`]), the keyed work queue ([`queue`]) and Events ([`events`]).
//!
//! Each binary flattens the flag groups here into its own `Args`, so flags are spelled the same
//! everywhere. This crate holds no Service-networking rules: those live in the model and in each
//! component's pure core. The HTTPS listener for the allocator's webhook is a module of its own
//! ([`tls`]), not a growth of the plain admin server.

mod admin;
mod client;
mod error;
pub mod events;
pub mod informer;
pub mod leader;
pub mod queue;
mod shutdown;
mod telemetry;
pub mod tls;
mod watch;

pub use admin::{AdminArgs, AdminServer, Health};
pub use client::{ClientArgs, RateLimit, RateLimitLayer, RequestTimeout, RequestTimeoutLayer};
pub use error::{Error, Result, error_chain};
pub use events::Events;
pub use informer::{Informer, WatchMetrics};
pub use leader::LeaderArgs;
pub use queue::Queue;
pub use shutdown::shutdown_signal;
pub use telemetry::{LogArgs, LogFormat};
pub use tls::{CertStore, Handler, TlsServer};
pub use watch::{parse_duration, watch};
