//! LoadBalancer IPAM's Prometheus metrics. The `pool` label carries pool names: there are few
//! pools and only cluster operators create them, so the label stays bounded.

use std::collections::BTreeSet;

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use svcplane_runtime::WatchMetrics;

use super::ipam::{Ipam, Refusal};

/// Every metric this module exports, for documentation and the scrape test.
pub const NAMES: &[&str] = &[
    "svcplane_allocator_lb_pool_addresses",
    "svcplane_allocator_lb_allocations_total",
    "svcplane_allocator_lb_refusals_total",
    "svcplane_allocator_lb_ips_outside_pools",
    "svcplane_allocator_lb_status_writes_total",
];

#[derive(Debug, Clone)]
pub struct Metrics {
    pool_addresses: GaugeVec,
    allocations: IntCounter,
    refusals: IntCounterVec,
    outside: IntGauge,
    writes: IntCounterVec,
    /// The informers' `svcplane_watch_rejected_objects_total`, shared with the process.
    pub(super) watch: WatchMetrics,
}

impl Metrics {
    /// Registers IPAM's metrics and the shared watch metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Self::register_with(registry, WatchMetrics::register(registry)?)
    }

    /// Registers IPAM's metrics; `watch` is the process's watch metrics, registered elsewhere.
    pub fn register_with(registry: &Registry, watch: WatchMetrics) -> prometheus::Result<Self> {
        let m = Metrics {
            pool_addresses: GaugeVec::new(
                Opts::new(
                    "svcplane_allocator_lb_pool_addresses",
                    "Addresses of each LoadBalancerIPPool per family (IPv4, IPv6) and state (used: assigned to at least one Service; free).",
                ),
                &["pool", "family", "state"],
            )?,
            allocations: IntCounter::new(
                "svcplane_allocator_lb_allocations_total",
                "LoadBalancer Services given new addresses.",
            )?,
            refusals: IntCounterVec::new(
                Opts::new(
                    "svcplane_allocator_lb_refusals_total",
                    "LoadBalancer Services refused an address (or, PreferDualStack, one family), per reason.",
                ),
                &["reason"],
            )?,
            outside: IntGauge::new(
                "svcplane_allocator_lb_ips_outside_pools",
                "Distinct addresses in the status of LoadBalancer Services the allocator handles that lie in no pool.",
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "svcplane_allocator_lb_status_writes_total",
                    "Status writes sent to the API, per resource (services, loadbalancerippools) and result (ok, error).",
                ),
                &["resource", "result"],
            )?,
            watch,
        };
        registry.register(Box::new(m.pool_addresses.clone()))?;
        registry.register(Box::new(m.allocations.clone()))?;
        registry.register(Box::new(m.refusals.clone()))?;
        registry.register(Box::new(m.outside.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        for reason in Refusal::REASONS {
            m.refusals.with_label_values(&[reason]);
        }
        for resource in ["services", "loadbalancerippools"] {
            for result in ["ok", "error"] {
                m.writes.with_label_values(&[resource, result]);
            }
        }
        Ok(m)
    }

    /// Metrics registered nowhere, for tests.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).unwrap_or_else(|_| unreachable!("a fresh registry"))
    }

    pub(super) fn allocated(&self) {
        self.allocations.inc();
    }

    pub(super) fn refused(&self, refusal: &Refusal) {
        self.refusals.with_label_values(&[refusal.reason()]).inc();
    }

    pub(super) fn wrote(&self, resource: &str, ok: bool) {
        self.writes
            .with_label_values(&[resource, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Sets the gauges from IPAM's state; `known` holds the pools reported last time, so the
    /// series of a deleted pool go away.
    pub(super) fn observe(&self, ipam: &Ipam, known: &mut BTreeSet<Box<str>>) {
        let now: BTreeSet<Box<str>> = ipam.pool_names().map(Into::into).collect();
        for gone in known.difference(&now) {
            for family in ["IPv4", "IPv6"] {
                for state in ["used", "free"] {
                    let _ = self
                        .pool_addresses
                        .remove_label_values(&[gone, family, state]);
                }
            }
        }
        for name in &now {
            let Some(u) = ipam.usage(name) else { continue };
            let set = |family: &str, state: &str, v: u128| {
                self.pool_addresses
                    .with_label_values(&[name, family, state])
                    .set(v as f64);
            };
            set("IPv4", "used", u.used_v4);
            set("IPv4", "free", u.free_v4());
            set("IPv6", "used", u.used_v6);
            set("IPv6", "free", u.free_v6());
        }
        *known = now;
        self.outside.set(ipam.ips_outside_pools() as i64);
    }
}
