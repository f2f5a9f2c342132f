//! What every svcplane binary shares: the API client flags (with client-side rate limits), logging
//! setup, the admin server (`/metrics`, `/healthz`, `/readyz`), graceful shutdown, retrying
//! watches and duration flags.
//!
//! Each binary flattens the flag groups here into its own `Args`, so flags are spelled the same
//! everywhere. This crate holds no Kubernetes logic of its own.

mod admin;
mod client;
mod error;
mod shutdown;
mod telemetry;
mod watch;

pub use admin::{AdminArgs, AdminServer, Health};
pub use client::{ClientArgs, RateLimit, RateLimitLayer};
pub use error::{Error, Result};
pub use shutdown::shutdown_signal;
pub use telemetry::{LogArgs, LogFormat};
pub use watch::{parse_duration, watch};
