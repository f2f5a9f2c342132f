//! What the proxy knows (Services, endpoints, this Node, ServiceCIDRs) and the sync that turns
//! it into rules. The watches fill the trackers; [`State::sync`] re-plans the Services that
//! changed, writes what changed in both families (or both tables whole) and applies that as one
//! transaction, so IPv4 and IPv6 rules change together or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{AddressType, EndpointSlice, Node, ObjectKey, Service, ServiceCidr};

use crate::conntrack::{Conntrack, Filter, UdpView};
use crate::healthcheck;
use crate::metrics::Metrics;
use crate::nft::{self, Nft};
use crate::plan::{self, Config, Plan};
use crate::render;
use crate::table::Table;
use crate::topology::NodeFacts;

const FAMILIES: [AddressType; 2] = [AddressType::V4, AddressType::V6];

/// Even without failures, the tables are rewritten whole this often (as upstream), which
/// repairs anything else changed in them.
const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// A sync nft refused: which kind it was (`full` or `partial`) and why.
#[derive(Debug, thiserror::Error)]
#[error("{kind} sync: {error}")]
pub struct SyncError {
    pub kind: &'static str,
    #[source]
    pub error: nft::Error,
}

/// Flags that shape the rules; the rest of [`Config`] comes from the API.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub nodeport_addresses: plan::NodePortAddresses,
    pub cluster_cidrs: Vec<IpNet>,
    pub detect_local: plan::DetectLocal,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
}

pub struct State {
    pub settings: Settings,
    pub services: ChangeTracker<ObjectKey, Arc<Service>>,
    pub slices: EndpointsTracker<EndpointSlice>,
    pub nodes: ChangeTracker<ObjectKey, Arc<Node>>,
    pub service_cidrs: ChangeTracker<ObjectKey, Arc<ServiceCidr>>,
    /// Trigger times of endpoint changes not yet in the rules.
    triggers: Vec<Timestamp>,
    nft: Box<dyn Nft>,
    conntrack: Box<dyn Conntrack>,
    /// The tables as last written, IPv4 then IPv6.
    tables: [Table; 2],
    /// The configuration the tables were planned with (`None`: nothing planned yet).
    planned: Option<Config>,
    /// The next sync replaces the tables whole.
    force_full: bool,
    last_full: Option<Instant>,
    /// Whether the last successful sync wrote to nftables (a partial one can have nothing to
    /// write, e.g. when only a not-ready endpoint came).
    wrote: bool,
    /// UDP destinations per family and Service, as planned.
    udp: [HashMap<ObjectKey, UdpView>; 2],
    /// Per family and Service, ports with a Local policy and endpoints only elsewhere
    /// (internal, external), and their sums.
    no_local: [HashMap<ObjectKey, [usize; 2]>; 2],
    no_local_total: [usize; 2],
    /// Per family, the health check ports and local endpoint counts (addresses unset).
    health: [HealthChecks; 2],
    /// UDP flows to delete once the rules that left them stale are in.
    stale: BTreeSet<Filter>,
    metrics: Metrics,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl State {
    pub fn new(
        settings: Settings,
        nft: Box<dyn Nft>,
        conntrack: Box<dyn Conntrack>,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings,
            services: ChangeTracker::new(),
            // Trigger times from before this process started are not its programming latency.
            slices: EndpointsTracker::since(Timestamp::now()),
            nodes: ChangeTracker::new(),
            service_cidrs: ChangeTracker::new(),
            triggers: Vec::new(),
            nft,
            conntrack,
            tables: FAMILIES.map(Table::new),
            planned: None,
            force_full: true,
            wrote: false,
            last_full: None,
            udp: Default::default(),
            no_local: Default::default(),
            no_local_total: [0, 0],
            health: Default::default(),
            stale: BTreeSet::new(),
            metrics,
        }
    }

    /// Changes received since the last sync.
    pub fn pending(&self) -> usize {
        self.services.pending()
            + self.slices.pending()
            + self.nodes.pending()
            + self.service_cidrs.pending()
    }

    fn config(&self) -> Config {
        let node = self
            .nodes
            .get(&ObjectKey::new("", self.settings.node_name.as_str()));
        Config {
            node: NodeFacts {
                name: self.settings.node_name.clone(),
                zone: node.and_then(|n| n.zone.as_deref().map(str::to_owned)),
            },
            node_ips: node.map(|n| n.addresses.clone()).unwrap_or_default(),
            nodeport_addresses: self.settings.nodeport_addresses.clone(),
            cluster_cidrs: self.settings.cluster_cidrs.clone(),
            detect_local: self.settings.detect_local.clone(),
            node_pod_cidrs: node.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
            masquerade_all: self.settings.masquerade_all,
            masquerade_bit: self.settings.masquerade_bit,
            service_cidrs: self
                .service_cidrs
                .iter()
                .flat_map(|(_, c)| c.cidrs.iter().copied())
                .collect(),
        }
    }

    /// Takes what changed into the tables: the Services whose own object or endpoints changed
    /// are re-planned; a change of the Node or the ServiceCIDRs re-plans everything and asks
    /// for a full sync (as upstream does when the Node's labels change).
    fn take_changes(&mut self) {
        let mut keys: BTreeSet<ObjectKey> = BTreeSet::new();
        keys.extend(self.services.drain().into_iter().map(|c| c.key));
        for change in self.slices.drain() {
            self.triggers.extend(change.trigger_times);
            keys.insert(change.key);
        }
        let config_changed = !self.nodes.drain().is_empty()
            | !self.service_cidrs.drain().is_empty()
            | self.planned.is_none();
        if config_changed {
            self.force_full = true;
            keys.extend(self.services.iter().map(|(k, _)| k.clone()));
            for udp in &self.udp {
                keys.extend(udp.keys().cloned());
            }
            let config = self.config();
            for (table, family) in self.tables.iter_mut().zip(FAMILIES) {
                table.set_globals(&plan::globals(family, &config));
            }
            self.planned = Some(config);
        }
        let Some(config) = &self.planned else {
            return;
        };
        for key in keys {
            let svc = self.services.get(&key);
            let endpoints = svc.and_then(|_| self.slices.endpoints(&key));
            for (i, family) in FAMILIES.into_iter().enumerate() {
                let mut p = Plan {
                    family: Some(family),
                    ..Plan::default()
                };
                if let Some(svc) = svc {
                    plan::service(&mut p, family, &key, svc, endpoints.as_ref(), config);
                }
                self.tables[i].set(key.clone(), render::fragment(&p));
                let before = if p.no_local == [0, 0] {
                    self.no_local[i].remove(&key)
                } else {
                    self.no_local[i].insert(key.clone(), p.no_local)
                };
                for (total, (old, new)) in self
                    .no_local_total
                    .iter_mut()
                    .zip(before.unwrap_or_default().into_iter().zip(p.no_local))
                {
                    *total = *total + new - old;
                }
                // Health check ports and their local endpoint counts, kept per Service as
                // the Services change (no scan of every Service per sync).
                let port = svc.and_then(|svc| {
                    healthcheck::health_check_ports(family, std::iter::once((&key, svc)))
                        .remove(&key)
                });
                let health = &mut self.health[i];
                match port {
                    Some(port) => {
                        let local = healthcheck::local_ready_endpoints(
                            family,
                            &config.node.name,
                            endpoints.as_ref(),
                        );
                        health.ports.insert(key.clone(), port);
                        health.local_endpoints.insert(key.clone(), local);
                    }
                    None => {
                        health.ports.remove(&key);
                        health.local_endpoints.remove(&key);
                    }
                }
                let view = UdpView::of(&p);
                let before = self.udp[i].remove(&key).unwrap_or_default();
                self.stale.extend(before.stale(&view));
                if view != UdpView::default() {
                    self.udp[i].insert(key.clone(), view);
                }
            }
        }
    }

    /// The transaction that makes the rules match the state, and whether it replaces the
    /// tables (`full`) or changes them (`partial`). Both families go in one transaction.
    pub fn transaction(&mut self) -> (String, &'static str) {
        self.take_changes();
        let full = self.force_full
            || self.tables.iter().any(Table::needs_full)
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= FULL_SYNC_PERIOD);
        let mut text = String::new();
        if !full {
            for table in &self.tables {
                if table.partial(&mut text).is_none() {
                    text.clear();
                    return self.full_transaction();
                }
            }
            return (text, "partial");
        }
        self.full_transaction()
    }

    fn full_transaction(&mut self) -> (String, &'static str) {
        let mut text = String::new();
        for table in &self.tables {
            table.full(&mut text);
        }
        (text, "full")
    }

    /// Renders and applies what changed (or everything, see [`State::transaction`]). On
    /// failure the previous rules stay in place and the next sync is a full one.
    pub fn sync(&mut self) -> Result<&'static str, SyncError> {
        let started = Instant::now();
        let (text, kind) = self.transaction();
        self.metrics.services(self.services.len());
        if kind == "partial" && text.is_empty() {
            self.wrote = false;
            self.finish(kind, started);
            return Ok(kind);
        }
        match self.nft.apply(&text) {
            Ok(()) => {
                for table in &mut self.tables {
                    table.committed();
                }
                if kind == "full" {
                    self.force_full = false;
                    self.last_full = Some(Instant::now());
                }
                self.wrote = true;
                self.finish(kind, started);
                Ok(kind)
            }
            Err(error) => {
                for table in &mut self.tables {
                    table.failed();
                }
                self.metrics.failed();
                Err(SyncError { kind, error })
            }
        }
    }

    /// Makes the next sync replace the tables whole (someone else changed them).
    pub fn force_full(&mut self) {
        self.force_full = true;
    }

    /// When the periodic full sync is due (`None`: none done yet, the first sync is full).
    pub fn full_sync_due(&self) -> Option<Instant> {
        self.last_full.map(|t| t + FULL_SYNC_PERIOD)
    }

    /// Whether the last successful [`State::sync`] wrote rules (false: it found nothing to
    /// change).
    pub fn last_sync_wrote(&self) -> bool {
        self.wrote
    }

    fn finish(&mut self, kind: &'static str, started: Instant) {
        self.metrics.synced(kind, started.elapsed());
        self.metrics
            .no_local(self.no_local_total[0], self.no_local_total[1]);
        let now = Timestamp::now();
        for t in self.triggers.drain(..) {
            if let Ok(took) = Duration::try_from(now.duration_since(t)) {
                self.metrics.programmed(took);
            }
        }
        self.metrics.pending(0);
        self.clean_conntrack();
    }
}

/// What one family's health check servers serve: where (`None`: every address of the family),
/// which Services on which `healthCheckNodePort`, and each one's ready endpoints on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecks {
    pub addresses: Option<BTreeSet<IpAddr>>,
    pub ports: BTreeMap<ObjectKey, u16>,
    pub local_endpoints: BTreeMap<ObjectKey, usize>,
}

impl State {
    /// The health check servers of `family` as the rules last planned stand.
    pub fn health_checks(&self, family: AddressType) -> HealthChecks {
        let Some(config) = &self.planned else {
            return HealthChecks::default();
        };
        let i = usize::from(family == AddressType::V6);
        HealthChecks {
            addresses: plan::globals(family, config).nodeport_ips,
            ..self.health[i].clone()
        }
    }
}

impl State {
    /// After a successful sync: deletes the UDP flows the change left pointing at endpoints
    /// that are gone (or at destinations that were refused). A failure is logged and counted;
    /// the rules are in place regardless, and the flows time out by themselves.
    fn clean_conntrack(&mut self) {
        for filter in std::mem::take(&mut self.stale) {
            match self.conntrack.delete(&filter) {
                Ok(n) => self.metrics.conntrack_deleted(n),
                Err(error) => {
                    tracing::warn!(%error, "could not delete stale UDP conntrack entries");
                    self.metrics.conntrack_failed();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
