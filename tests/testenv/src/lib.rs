//! A real control plane for svcplane's tests: etcd and kube-apiserver, built from the pinned Go
//! modules in `tests/controlplane`, started on free loopback ports with freshly generated
//! certificates, RBAC on, and torn down when the [`TestEnv`] is dropped.
//!
//! No kubelet, scheduler or controller manager runs. The [`kubelet`] helpers do their part
//! (nodes, pod binding and status, graceful deletion) through the API, as they would.
//!
//! This crate must never stand a fake in for the API server: everything it hands out talks to
//! the real one.

mod binaries;
mod certs;
mod env;
mod error;
pub mod kubelet;
pub mod manifest;
pub mod netns;
mod process;
pub mod relay;
pub mod rng;
pub mod wait;

pub use binaries::{
    Binaries, ensure_binaries, ensure_binaries_with_controller_manager,
    ensure_binaries_with_kube_proxy, ensure_coredns,
};
pub use certs::LoopbackTls;
pub use env::{ControllerManager, Options, TestEnv};
pub use error::{Error, Result};
