//! svcplane-endpoints: the Endpoints, EndpointSlice and EndpointSlice-mirroring controllers,
//! in place of kube-controller-manager's.
//!
//! The rules are pure functions over the model: [`desired`] (which pods, which endpoint, which
//! ports), [`endpoints`] (v1 Endpoints subsets and the 1000-address cap), [`slices`] (which
//! slices to create, update and delete, touching as few as possible) and [`mirror`]. The
//! [`controller`] feeds them from watches through the indexed [`cache`] and the runtime's keyed
//! queue, and writes what they plan; the runtime's Lease election makes sure only one replica
//! writes.
//! The upstream behaviour they follow is in `docs/upstream/endpoint-controllers.md`.

pub mod cache;
pub mod controller;
pub mod desired;
pub mod endpoints;
pub mod metrics;
pub mod mirror;
pub mod run;
pub mod slices;

#[cfg(test)]
mod testing;
