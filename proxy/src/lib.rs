//! svcplane-proxy: the node proxy that makes ClusterIPs, NodePorts, external IPs and
//! LoadBalancer IPs carry traffic, programming nftables in place of kube-proxy.
//!
//! Pure core, I/O at the rim: [`topology`] picks the endpoints a node may use, [`plan`] decides
//! what one address family's ruleset holds, [`render`] writes it as one nftables transaction;
//! [`nft`] applies transactions (the `nft` binary, or a fake). The behaviour followed is
//! kube-proxy's nftables mode, written down in `docs/upstream/kube-proxy-nftables.md`; what is
//! built and what is not yet is in `docs/proxy.md`.
//!
//! This crate must never leave a half-programmed node: every change is one atomic transaction.

pub mod conntrack;
pub mod healthcheck;
pub mod metrics;
pub mod monitor;
pub mod nft;
pub mod plan;
pub mod render;
pub mod run;
pub mod state;
pub mod table;
pub mod topology;
