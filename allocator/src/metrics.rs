//! The allocator's metrics (`svcplane_allocator_*`); docs/allocator.md lists them.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: Histogram,
    pub allocations: IntCounterVec,
    pub denials: IntCounterVec,
    pub range_addresses: GaugeVec,
    pub reservations: IntGaugeVec,
    pub sticky_entries: IntGauge,
    pub audit_findings: IntGaugeVec,
    pub leader: IntGauge,
    pub last_audit: Gauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "svcplane_allocator_webhook_requests_total",
                "Admission requests answered, by operation and result (patched, unchanged, denied, not_leader, not_ready, undecodable, malformed).",
            ),
            &["operation", "result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "svcplane_allocator_webhook_duration_seconds",
                "Time from a whole admission request body to its answer, decoding and encoding included.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01,
                0.025, 0.1, 1.0,
            ]),
        )?;
        let allocations = IntCounterVec::new(
            Opts::new(
                "svcplane_allocator_allocations_total",
                "Values written into Services, by kind (cluster_ip, node_port, health_check_node_port) and how they were chosen (dynamic, requested, sticky, kept).",
            ),
            &["kind", "how"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "svcplane_allocator_denials_total",
                "Requests denied, by reason (ip_taken, ip_out_of_range, ip_range_full, port_taken, port_out_of_range, port_range_full).",
            ),
            &["reason"],
        )?;
        let range_addresses = GaugeVec::new(
            Opts::new(
                "svcplane_allocator_range_addresses",
                "Size and use of each range: ServiceCIDR ranges (kind cluster_ip, range = name/cidr) and the NodePort range (kind node_port); state used or free.",
            ),
            &["kind", "range", "state"],
        )?;
        let reservations = IntGaugeVec::new(
            Opts::new(
                "svcplane_allocator_reservations",
                "Values handed out and not yet seen stored, by kind (cluster_ip, node_port).",
            ),
            &["kind"],
        )?;
        let sticky_entries = IntGauge::new(
            "svcplane_allocator_sticky_entries",
            "Deleted Services whose values are remembered for re-creation.",
        )?;
        let audit_findings = IntGaugeVec::new(
            Opts::new(
                "svcplane_allocator_audit_findings",
                "Problems the last audit found, by finding (duplicate_cluster_ip, duplicate_node_port, cluster_ip_out_of_range, node_port_out_of_range, cluster_ip_not_allocated, leaked_ip_address).",
            ),
            &["finding"],
        )?;
        let leader = IntGauge::new(
            "svcplane_allocator_leader",
            "1 while this replica holds the lease (and answers the webhook), else 0.",
        )?;
        let last_audit = Gauge::new(
            "svcplane_allocator_last_audit_timestamp_seconds",
            "When the last audit pass finished (Unix time).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(allocations.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        registry.register(Box::new(range_addresses.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(sticky_entries.clone()))?;
        registry.register(Box::new(audit_findings.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(last_audit.clone()))?;
        Ok(Self {
            requests,
            duration,
            allocations,
            denials,
            range_addresses,
            reservations,
            sticky_entries,
            audit_findings,
            leader,
            last_audit,
        })
    }

    /// Metrics registered nowhere, for tests.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).unwrap_or_else(|_| unreachable!("a fresh registry"))
    }
}
