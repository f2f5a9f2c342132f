//! What svcplane-dns reports on `/metrics`. Every metric here is listed in `docs/dns.md`, and a
//! test compares a scrape against that list. Labels are fixed sets, never names from queries.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::QType;

#[derive(Debug, Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    cache: IntCounterVec,
    forwards: IntCounter,
    forward_errors: IntCounterVec,
    programming: Histogram,
    services: IntGauge,
    reloads: IntCounterVec,
    autopath: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("svcplane_dns_requests_total", "DNS requests answered, by query type, rcode and transport."),
                &["qtype", "rcode", "protocol"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("svcplane_dns_request_duration_seconds", "Time to answer a request, by transport.")
                    .buckets(vec![0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["protocol"],
            )?,
            cache: IntCounterVec::new(
                Opts::new("svcplane_dns_cache_requests_total", "Forwarding cache look-ups, by result (hit, miss)."),
                &["result"],
            )?,
            forwards: IntCounter::new("svcplane_dns_forward_requests_total", "Questions sent to upstream resolvers.")?,
            forward_errors: IntCounterVec::new(
                Opts::new("svcplane_dns_forward_errors_total", "Forwarded questions that got no answer, by reason."),
                &["reason"],
            )?,
            programming: Histogram::with_opts(
                HistogramOpts::new(
                    "svcplane_dns_programming_duration_seconds",
                    "From an endpoint change (the EndpointSlice's last-change-trigger-time) to answers reflecting it.",
                )
                .buckets(prometheus::exponential_buckets(0.005, 2.0, 14)?),
            )?,
            services: IntGauge::new("svcplane_dns_services", "Services in the index.")?,
            reloads: IntCounterVec::new(
                Opts::new("svcplane_dns_reloads_total", "Corefile changes seen by reload, by result (applied, rejected)."),
                &["result"],
            )?,
            autopath: IntCounter::new("svcplane_dns_autopath_total", "Questions autopath answered from a later search domain than the one asked.")?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.cache.clone()))?;
        registry.register(Box::new(m.forwards.clone()))?;
        registry.register(Box::new(m.forward_errors.clone()))?;
        registry.register(Box::new(m.programming.clone()))?;
        registry.register(Box::new(m.services.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.autopath.clone()))?;
        Ok(m)
    }

    pub fn request(
        &self,
        qtype: Option<QType>,
        rcode: &'static str,
        protocol: &'static str,
        took: Duration,
    ) {
        self.requests
            .with_label_values(&[qtype_label(qtype), rcode, protocol])
            .inc();
        self.duration
            .with_label_values(&[protocol])
            .observe(took.as_secs_f64());
    }

    pub fn cache(&self, hit: bool) {
        self.cache
            .with_label_values(&[if hit { "hit" } else { "miss" }])
            .inc();
    }

    pub fn forwarded(&self) {
        self.forwards.inc();
    }

    pub fn forward_error(&self, reason: &'static str) {
        self.forward_errors.with_label_values(&[reason]).inc();
    }

    pub fn reload(&self, applied: bool) {
        self.reloads
            .with_label_values(&[if applied { "applied" } else { "rejected" }])
            .inc();
    }

    pub fn autopath(&self) {
        self.autopath.inc();
    }

    pub fn programmed(&self, took: Duration) {
        self.programming.observe(took.as_secs_f64());
    }

    pub fn set_services(&self, n: usize) {
        self.services.set(n as i64);
    }
}

fn qtype_label(q: Option<QType>) -> &'static str {
    match q {
        Some(QType::A) => "A",
        Some(QType::Aaaa) => "AAAA",
        Some(QType::Srv) => "SRV",
        Some(QType::Ptr) => "PTR",
        Some(QType::Txt) => "TXT",
        Some(QType::Cname) => "CNAME",
        Some(QType::Soa) => "SOA",
        Some(QType::Ns) => "NS",
        Some(QType::Axfr) => "AXFR",
        Some(QType::Ixfr) => "IXFR",
        Some(QType::Other(255)) => "ANY",
        Some(QType::Other(_)) => "other",
        None => "none",
    }
}
