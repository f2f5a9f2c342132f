//! What the proxy knows (Services, endpoints, this Node, ServiceCIDRs) and the sync that turns
//! it into rules. The watches fill the trackers; [`State::sync`] renders both families and
//! applies them as one transaction, so IPv4 and IPv6 rules change together or not at all.

use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{AddressType, EndpointSlice, Node, ObjectKey, Service, ServiceCidr};

use crate::conntrack::{Conntrack, UdpView};
use crate::metrics::Metrics;
use crate::nft::{self, Nft};
use crate::plan::{self, Config};
use crate::render;
use crate::topology::NodeFacts;

/// Flags that shape the rules; the rest of [`Config`] comes from the API.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub nodeport_addresses: plan::NodePortAddresses,
    pub cluster_cidrs: Vec<IpNet>,
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
    /// UDP destinations per family as last applied, and as rendered but not yet applied.
    applied_udp: [UdpView; 2],
    rendered_udp: [UdpView; 2],
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
            applied_udp: Default::default(),
            rendered_udp: Default::default(),
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
            masquerade_all: self.settings.masquerade_all,
            masquerade_bit: self.settings.masquerade_bit,
            service_cidrs: self
                .service_cidrs
                .iter()
                .flat_map(|(_, c)| c.cidrs.iter().copied())
                .collect(),
        }
    }

    /// Takes what changed into the state the rules are rendered from.
    fn take_changes(&mut self) {
        self.services.drain();
        self.nodes.drain();
        self.service_cidrs.drain();
        // The tracker itself holds the current endpoints; the drain hands back what a sync
        // needs besides: the trigger times it will have programmed.
        for change in self.slices.drain() {
            self.triggers.extend(change.trigger_times);
        }
    }

    /// The transaction that makes the rules match the state: both families' tables, replaced.
    pub fn transaction(&mut self) -> String {
        self.take_changes();
        let config = self.config();
        let mut text = String::new();
        for (i, family) in [AddressType::V4, AddressType::V6].into_iter().enumerate() {
            let p = plan::plan(
                family,
                self.services.iter(),
                |k| self.slices.endpoints(k),
                &config,
            );
            render::full(&p, &mut text);
            self.rendered_udp[i] = UdpView::of(&p);
        }
        text
    }

    /// Renders and applies everything. On failure the previous rules stay in place and the
    /// next sync tries again with the whole state.
    pub fn sync(&mut self) -> Result<(), nft::Error> {
        let started = Instant::now();
        let text = self.transaction();
        self.metrics.services(self.services.len());
        match self.nft.apply(&text) {
            Ok(()) => {
                self.metrics.synced("full", started.elapsed());
                let now = Timestamp::now();
                for t in self.triggers.drain(..) {
                    if let Ok(took) = std::time::Duration::try_from(now.duration_since(t)) {
                        self.metrics.programmed(took);
                    }
                }
                self.metrics.pending(0);
                self.clean_conntrack();
                Ok(())
            }
            Err(error) => {
                self.metrics.failed();
                Err(error)
            }
        }
    }
}

impl State {
    /// After a successful sync: deletes the UDP flows the change left pointing at endpoints
    /// that are gone (or at destinations that were refused). A failure is logged and counted;
    /// the rules are in place regardless, and the flows time out by themselves.
    fn clean_conntrack(&mut self) {
        let next = std::mem::take(&mut self.rendered_udp);
        for (before, now) in self.applied_udp.iter().zip(&next) {
            for filter in before.stale(now) {
                match self.conntrack.delete(&filter) {
                    Ok(n) => self.metrics.conntrack_deleted(n),
                    Err(error) => {
                        tracing::warn!(%error, "could not delete stale UDP conntrack entries");
                        self.metrics.conntrack_failed();
                    }
                }
            }
        }
        self.applied_udp = next;
    }
}

#[cfg(test)]
mod tests;
