//! The service model every svcplane component shares.
//!
//! Kubernetes objects are converted here, once, into slim values that keep only the fields some
//! component answers from: the endpoints controller, the allocator, the DNS server and the proxy
//! all speak this vocabulary. Conversion is fallible: a malformed object becomes a typed
//! [`Error`], never a panic, so callers can log it and keep serving everything else.
//!
//! This crate must never depend on an API client or an async runtime: everything in it is a pure
//! function over values, tested with tables.

mod convert;
pub mod dns;
mod endpoints;
mod error;
mod key;
mod labels;
mod pod;
mod service;
mod service_cidr;
pub mod tracker;

pub use endpoints::{AddressType, Conditions, Endpoint, EndpointPort, EndpointSlice, Hints};
pub use error::{Error, Result};
pub use key::ObjectKey;
pub use labels::{Labels, Selector};
pub use pod::{NamedPort, Node, Pod, PodPhase};
pub use service::{
    ClusterIps, HintMode, IpFamily, IpFamilyPolicy, Protocol, Service, ServicePort, ServiceType,
    SessionAffinity, TargetPort, TrafficPolicy,
};
pub use service_cidr::ServiceCidr;

/// Label that ties an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Label the endpoint controllers put on Endpoints and slices of Services without a cluster IP;
/// the proxy does not watch such slices.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label that hands a Service to another proxy than the default one.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on Nodes naming their zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Annotation selecting topology-aware routing on a Service.
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// The deprecated spelling of [`ANNOTATION_TOPOLOGY_MODE`], still honoured upstream.
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// Annotation carrying the time of the change that triggered an Endpoints/EndpointSlice write.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
