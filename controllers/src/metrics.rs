//! The controller's Prometheus metrics; `docs/endpoints.md` lists them and
//! `controllers/tests/apiserver.rs` checks the list against a scrape.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, exponential_buckets,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    syncs: IntCounterVec,
    sync_duration: HistogramVec,
    writes: IntCounterVec,
    queue_depth: IntGauge,
    queue_latency: HistogramVec,
    leader: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let buckets = exponential_buckets(0.0005, 2.0, 16)?;
        let m = Metrics {
            syncs: IntCounterVec::new(
                Opts::new(
                    "svcplane_endpoints_syncs_total",
                    "Service syncs, per controller and result (ok, stale: the cache was older than our own last write, error).",
                ),
                &["controller", "result"],
            )?,
            sync_duration: HistogramVec::new(
                HistogramOpts::new(
                    "svcplane_endpoints_sync_duration_seconds",
                    "Time one controller spent syncing one Service, API writes included.",
                )
                .buckets(buckets.clone()),
                &["controller"],
            )?,
            writes: IntCounterVec::new(
                Opts::new(
                    "svcplane_endpoints_api_writes_total",
                    "Writes sent to the API, per verb and resource.",
                ),
                &["verb", "resource"],
            )?,
            queue_depth: IntGauge::new(
                "svcplane_endpoints_queue_depth",
                "Services waiting to be synced.",
            )?,
            queue_latency: HistogramVec::new(
                HistogramOpts::new(
                    "svcplane_endpoints_queue_latency_seconds",
                    "From a Service being queued to its sync finishing, per result (ok, stale, error).",
                )
                .buckets(buckets),
                &["result"],
            )?,
            leader: IntGauge::new(
                "svcplane_endpoints_leader",
                "1 while this replica holds the lease (or runs without leader election).",
            )?,
        };
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.sync_duration.clone()))?;
        registry.register(Box::new(m.writes.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.queue_latency.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        Ok(m)
    }

    /// One sync of one controller; `result` is `ok`, `stale` or `error`.
    pub fn synced(&self, controller: &str, result: &str, took: Duration) {
        self.syncs.with_label_values(&[controller, result]).inc();
        self.sync_duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    pub fn wrote(&self, verb: &str, resource: &str) {
        self.writes.with_label_values(&[verb, resource]).inc();
    }

    pub fn queue(&self, depth: usize) {
        self.queue_depth.set(depth as i64);
    }

    pub fn finished(&self, result: &str, since_queued: Duration) {
        self.queue_latency
            .with_label_values(&[result])
            .observe(since_queued.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}
