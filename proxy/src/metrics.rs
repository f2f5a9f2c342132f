//! What svcplane-proxy reports on `/metrics`; `docs/proxy.md` lists every metric.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry, exponential_buckets,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    sync_duration: HistogramVec,
    sync_failures: IntCounter,
    programming: Histogram,
    pending: IntGauge,
    last_sync: Gauge,
    services: IntGauge,
    conntrack_deleted: IntCounter,
    conntrack_failures: IntCounter,
    no_local: IntGaugeVec,
    foreign_changes: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            sync_duration: HistogramVec::new(
                HistogramOpts::new(
                    "svcplane_proxy_sync_duration_seconds",
                    "Time to plan, render and apply one sync, per kind (full, partial).",
                )
                .buckets(exponential_buckets(0.001, 2.0, 16)?),
                &["kind"],
            )?,
            sync_failures: IntCounter::new(
                "svcplane_proxy_sync_failures_total",
                "Syncs whose transaction nft rejected; the previous rules stayed in place.",
            )?,
            programming: Histogram::with_opts(
                HistogramOpts::new(
                    "svcplane_proxy_network_programming_duration_seconds",
                    "From an EndpointSlice's last-change-trigger-time to the rules carrying it.",
                )
                .buckets(exponential_buckets(0.001, 2.0, 20)?),
            )?,
            pending: IntGauge::new(
                "svcplane_proxy_pending_changes",
                "Service and endpoint changes received but not yet in the rules.",
            )?,
            last_sync: Gauge::new(
                "svcplane_proxy_last_sync_timestamp_seconds",
                "Unix time of the last successful sync (set when its transaction has committed).",
            )?,
            services: IntGauge::new(
                "svcplane_proxy_services",
                "Services known to the proxy (proxied or not).",
            )?,
            conntrack_deleted: IntCounter::new(
                "svcplane_proxy_conntrack_deleted_entries_total",
                "UDP conntrack entries deleted because their endpoint went away.",
            )?,
            conntrack_failures: IntCounter::new(
                "svcplane_proxy_conntrack_cleanup_failures_total",
                "conntrack deletions that failed (the flows then time out by themselves).",
            )?,
            no_local: IntGaugeVec::new(
                Opts::new(
                    "svcplane_proxy_no_local_endpoints",
                    "Service ports (per family) with a Local traffic policy whose endpoints are all on other nodes: traffic under that policy is dropped here.",
                ),
                &["traffic_policy"],
            )?,
            foreign_changes: IntCounter::new(
                "svcplane_proxy_foreign_changes_total",
                "Batches another process committed to svcplane-proxy's tables (each answered by a full sync), and restarts of the nft monitor that watches for them.",
            )?,
        };
        registry.register(Box::new(m.foreign_changes.clone()))?;
        registry.register(Box::new(m.no_local.clone()))?;
        registry.register(Box::new(m.conntrack_deleted.clone()))?;
        registry.register(Box::new(m.conntrack_failures.clone()))?;
        registry.register(Box::new(m.sync_duration.clone()))?;
        registry.register(Box::new(m.sync_failures.clone()))?;
        registry.register(Box::new(m.programming.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.last_sync.clone()))?;
        registry.register(Box::new(m.services.clone()))?;
        Ok(m)
    }

    pub fn synced(&self, kind: &str, took: Duration) {
        self.sync_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_sync.set(now);
    }

    pub fn failed(&self) {
        self.sync_failures.inc();
    }

    pub fn programmed(&self, took: Duration) {
        self.programming.observe(took.as_secs_f64());
    }

    pub fn pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn conntrack_deleted(&self, n: u64) {
        self.conntrack_deleted.inc_by(n);
    }

    pub fn conntrack_failed(&self) {
        self.conntrack_failures.inc();
    }

    /// Service ports without local endpoints under internalTrafficPolicy and
    /// externalTrafficPolicy Local.
    pub fn no_local(&self, internal: usize, external: usize) {
        for (policy, n) in [("internal", internal), ("external", external)] {
            self.no_local
                .with_label_values(&[policy])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn foreign_change(&self) {
        self.foreign_changes.inc();
    }

    pub fn services(&self, n: usize) {
        self.services.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
