//! The `LoadBalancerIPPool` custom resource (`allocator.svcplane.dev/v1alpha1`, cluster-scoped):
//! what an operator writes, and the status the allocator reports back.
//!
//! The spec is kept exactly as written (strings, not parsed addresses) so a malformed pool still
//! round-trips: [`super::pool::Pool::from_crd`] turns it into the parsed form and records what is
//! wrong in `status.error` instead of rejecting the object.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the allocator's custom resources.
pub const GROUP: &str = "allocator.svcplane.dev";
/// Version of [`LoadBalancerIPPool`].
pub const VERSION: &str = "v1alpha1";

/// A set of addresses LoadBalancer Services may be given, and who may use them.
// The printcolumn entries repeat `type_`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "allocator.svcplane.dev",
    version = "v1alpha1",
    kind = "LoadBalancerIPPool",
    plural = "loadbalancerippools",
    shortname = "lbpool",
    status = "LoadBalancerIPPoolStatus",
    derive = "PartialEq",
    doc = "Addresses svcplane-allocator assigns to Services of type LoadBalancer (status.loadBalancer.ingress).",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(name = "Auto", type_ = "boolean", json_path = ".spec.autoAssign"),
    printcolumn(
        name = "IPv4 Used",
        type_ = "integer",
        json_path = ".status.assignedIPv4"
    ),
    printcolumn(
        name = "IPv4 Free",
        type_ = "integer",
        json_path = ".status.availableIPv4"
    ),
    printcolumn(
        name = "IPv6 Used",
        type_ = "integer",
        json_path = ".status.assignedIPv6"
    ),
    printcolumn(
        name = "IPv6 Free",
        type_ = "integer",
        json_path = ".status.availableIPv6"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        json_path = ".status.error",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIPPoolSpec {
    /// Addresses of the pool: CIDRs (`192.0.2.0/28`, `2001:db8::/120`; every address of the
    /// prefix, network and broadcast included) or inclusive ranges (`192.0.2.10-192.0.2.20`).
    /// A single address is `192.0.2.7/32` or `192.0.2.7-192.0.2.7`. Pools must not overlap: where
    /// two do, the older pool keeps the addresses.
    pub addresses: Vec<String>,
    /// Whether Services get addresses from this pool without asking for it. A pool with
    /// `autoAssign: false` serves only Services that name it
    /// (`allocator.svcplane.dev/address-pool`) or request one of its addresses.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in `.0` or `.255`, which some old equipment drops.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Which Services may use the pool, and in what order pools are tried. Absent: every Service,
    /// after the pools with a priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

fn default_true() -> bool {
    true
}

/// Who may use a pool, and how it ranks against other pools.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; pools without a priority (or with 0) come after every pool
    /// with one. Equal priorities are tried in name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Namespaces whose Services may use the pool. With `namespaceSelectors`, a Service's
    /// namespace must be listed here or match one of the selectors; with neither, every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespace label selectors; see `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Service label selectors: a Service must match one of them (none: every Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold. An empty
/// selector matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One expression of a label selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// What the allocator reports about a pool. Counts are of distinct addresses (one shared by
/// several Services counts once); counts beyond 2^63-1 (large IPv6 pools) are shown as 2^63-1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIPPoolStatus {
    /// IPv4 addresses of the pool assigned to Services.
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    /// IPv6 addresses of the pool assigned to Services.
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    /// IPv4 addresses of the pool still free.
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: i64,
    /// IPv6 addresses of the pool still free.
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: i64,
    /// What is wrong with the spec, if anything. A pool with an error hands out no new
    /// addresses; Services keep the ones they have in its well-formed addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
