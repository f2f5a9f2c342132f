//! The controller's synchronous half: watch intake into [`Ipam`], which Services need another
//! look, and the writes and Events that follow, as [`Action`]s for the async rim to carry out.
//! No I/O here, so the whole flow (leadership terms, start-up adoption, retries, Event
//! de-duplication) is unit-tested without an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::runtime::watcher::Event;
use svcplane_model::tracker::Store;
use svcplane_model::{Labels, ObjectKey};
use svcplane_runtime::Informer;

use super::crd::{LoadBalancerIPPool, LoadBalancerIPPoolStatus};
use super::ipam::{Ipam, Outcome};
use super::metrics::Metrics;
use super::pool::Pool;
use super::service::{self, Watched};

/// Event reasons the controller records on Services.
pub const REASON_ALLOCATED: &str = "IPAllocated";
pub const REASON_FAILED: &str = "AllocationFailed";
pub const REASON_INVALID: &str = "InvalidService";

/// A write or an Event for the rim to carry out (only the leader gets any but Events about
/// objects that do not convert, which are logged either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set `status.loadBalancer.ingress` to these addresses (none: clear it).
    ServiceStatus { key: ObjectKey, ips: Vec<IpAddr> },
    PoolStatus {
        name: Box<str>,
        status: LoadBalancerIPPoolStatus,
    },
    Event {
        key: ObjectKey,
        uid: Option<Box<str>>,
        /// The Service version the decision was made on.
        resource_version: Option<Box<str>>,
        warning: bool,
        reason: &'static str,
        note: String,
    },
}

/// A non-LoadBalancer Service that still shows addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stale {
    uid: Option<Box<str>>,
    ingress: Vec<IpAddr>,
    /// It was a LoadBalancer of ours while we watched.
    was_ours: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct State {
    ipam: Ipam,
    stale: BTreeMap<ObjectKey, Stale>,
    /// Each pool's status as last seen.
    pool_status: BTreeMap<Box<str>, Option<LoadBalancerIPPoolStatus>>,
    /// Services to look at again.
    dirty: BTreeSet<ObjectKey>,
    /// Followers re-adopt everything after a pool or namespace change.
    everything_dirty: bool,
    /// Services that got nothing (or not every family), with the text of the last Warning.
    refused: BTreeMap<ObjectKey, String>,
    leading: bool,
    /// The leader has rebuilt its assignments for this term.
    term_started: bool,
    /// Pools whose series the metrics currently export.
    reported_pools: BTreeSet<Box<str>>,
    /// Something changed that pool statuses are made of, since [`State::pool_statuses_changed`].
    pool_status_stale: bool,
    metrics: Metrics,
}

impl State {
    pub fn new(metrics: Metrics) -> Self {
        State {
            ipam: Ipam::new(),
            stale: BTreeMap::new(),
            pool_status: BTreeMap::new(),
            dirty: BTreeSet::new(),
            everything_dirty: false,
            refused: BTreeMap::new(),
            leading: false,
            term_started: false,
            reported_pools: BTreeSet::new(),
            pool_status_stale: true,
            metrics,
        }
    }

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// Leadership changed. A new term starts at the next [`State::process`]; a follower keeps
    /// its state warm by adopting what the API shows.
    pub fn set_leading(&mut self, leading: bool) {
        if leading != self.leading {
            self.leading = leading;
            self.term_started = false;
            self.everything_dirty = true;
        }
    }

    /// Looks at `key` again (a failed write being retried).
    pub fn touch(&mut self, key: ObjectKey) {
        self.dirty.insert(key);
    }

    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.everything_dirty || (self.leading && !self.term_started)
    }

    /// A status write went through: what the API now shows, before the watch says so.
    pub fn wrote_service(&mut self, key: &ObjectKey, ips: &[IpAddr]) {
        if let Some(svc) = self.ipam.service(key) {
            let mut svc = svc.clone();
            svc.ingress = ips.to_vec();
            self.ipam.set_service(svc);
        } else if ips.is_empty() {
            self.stale.remove(key);
        }
    }

    pub fn wrote_pool(&mut self, name: &str, status: LoadBalancerIPPoolStatus) {
        self.pool_status_stale = true;
        if self.ipam.pool(name).is_some() {
            self.pool_status.insert(name.into(), Some(status));
        }
    }

    /// Decides what changed since the last call; call once every watch has listed.
    pub fn process(&mut self) -> Vec<Action> {
        self.pool_status_stale = true;
        let mut actions = Vec::new();
        if self.leading {
            if !self.term_started {
                self.start_term();
            }
            self.everything_dirty = false;
            // Addresses freed in one round may satisfy Services refused in it: go again, a
            // bounded number of times (each round only moves Services to free addresses).
            for _ in 0..8 {
                if self.dirty.is_empty() {
                    break;
                }
                let keys = std::mem::take(&mut self.dirty);
                let mut freed = false;
                for key in keys {
                    freed |= self.reconcile(&key, &mut actions);
                }
                if freed {
                    self.dirty.extend(self.refused.keys().cloned());
                }
            }
        } else {
            self.follow();
        }
        self.metrics.observe(&self.ipam, &mut self.reported_pools);
        actions
    }

    /// Whether [`State::pool_statuses`] may have something new since the last call of this.
    pub fn pool_statuses_changed(&mut self) -> bool {
        std::mem::take(&mut self.pool_status_stale)
    }

    /// Pool statuses that differ from what the pools show. The rim debounces this.
    pub fn pool_statuses(&self) -> Vec<Action> {
        if !self.leading || !self.term_started {
            return Vec::new();
        }
        let clamp = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
        let mut actions = Vec::new();
        for name in self.ipam.pool_names() {
            let (Some(usage), Some(pool)) = (self.ipam.usage(name), self.ipam.pool(name)) else {
                continue;
            };
            let status = LoadBalancerIPPoolStatus {
                assigned_ipv4: clamp(usage.used_v4),
                assigned_ipv6: clamp(usage.used_v6),
                available_ipv4: clamp(usage.free_v4()),
                available_ipv6: clamp(usage.free_v6()),
                error: self.ipam.pool_error(name),
                observed_generation: pool.generation,
            };
            if self.pool_status.get(name).and_then(Option::as_ref) != Some(&status) {
                actions.push(Action::PoolStatus {
                    name: name.into(),
                    status,
                });
            }
        }
        actions
    }

    fn start_term(&mut self) {
        self.ipam.clear_assignments();
        self.refused.clear();
        for key in self.ipam.adoption_order() {
            self.ipam.adopt(&key);
        }
        self.dirty.extend(self.ipam.service_keys());
        self.dirty.extend(self.stale.keys().cloned());
        self.term_started = true;
        tracing::info!(
            services = self.ipam.services().count(),
            "LoadBalancer IPAM leading: rebuilt assignments from Service status"
        );
    }

    fn follow(&mut self) {
        if self.everything_dirty {
            self.ipam.clear_assignments();
            for key in self.ipam.adoption_order() {
                self.ipam.adopt(&key);
            }
            self.everything_dirty = false;
            self.dirty.clear();
        } else {
            for key in std::mem::take(&mut self.dirty) {
                self.ipam.adopt(&key);
            }
        }
    }

    /// One Service, as leader; true when it gave up an address.
    fn reconcile(&mut self, key: &ObjectKey, actions: &mut Vec<Action>) -> bool {
        if let Some(stale) = self.stale.get(key) {
            let ours = stale.was_ours
                || stale
                    .ingress
                    .iter()
                    .any(|ip| self.ipam.pool_of(*ip).is_some());
            if ours {
                actions.push(Action::ServiceStatus {
                    key: key.clone(),
                    ips: Vec::new(),
                });
            }
            self.refused.remove(key);
            return false;
        }
        let outcome = self.ipam.reconcile(key);
        let freed = outcome.freed();
        let Some(svc) = self.ipam.service(key) else {
            self.refused.remove(key);
            return freed;
        };
        if outcome.ips != svc.ingress {
            actions.push(Action::ServiceStatus {
                key: key.clone(),
                ips: outcome.ips.clone(),
            });
        }
        let about = (svc.uid.clone(), svc.resource_version.clone());
        self.events(key, about, &outcome, actions);
        freed
    }

    fn events(
        &mut self,
        key: &ObjectKey,
        (uid, resource_version): (Option<Box<str>>, Option<Box<str>>),
        outcome: &Outcome,
        actions: &mut Vec<Action>,
    ) {
        let list = |ips: &[IpAddr]| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if outcome.changed() && !outcome.ips.is_empty() {
            self.metrics.allocated();
            let note = if outcome.previous.is_empty() {
                format!("assigned {}", list(&outcome.ips))
            } else {
                format!(
                    "assigned {} (was {})",
                    list(&outcome.ips),
                    list(&outcome.previous)
                )
            };
            tracing::info!(service = %key, ips = %list(&outcome.ips), "LoadBalancer IPs assigned");
            actions.push(Action::Event {
                key: key.clone(),
                uid: uid.clone(),
                resource_version: resource_version.clone(),
                warning: false,
                reason: REASON_ALLOCATED,
                note,
            });
        }
        match &outcome.problem {
            None => {
                self.refused.remove(key);
            }
            Some(refusal) => {
                let mut note = refusal.to_string();
                if !outcome.ips.is_empty() {
                    note = format!("assigned only {}: {note}", list(&outcome.ips));
                } else if !outcome.previous.is_empty() {
                    note = format!("{note}; released {}", list(&outcome.previous));
                }
                if self.refused.get(key) != Some(&note) {
                    self.metrics.refused(refusal);
                    tracing::warn!(service = %key, reason = refusal.reason(), %note, "LoadBalancer IPs refused");
                    actions.push(Action::Event {
                        key: key.clone(),
                        uid,
                        resource_version,
                        warning: true,
                        reason: REASON_FAILED,
                        note: note.clone(),
                    });
                }
                self.refused.insert(key.clone(), note);
            }
        }
    }

    // ---- intake ----

    fn apply_service(&mut self, key: ObjectKey, value: Option<Watched>) {
        match value {
            Some(Watched::Ours(svc)) => {
                self.stale.remove(&key);
                if self.ipam.service(&key) != Some(&*svc) {
                    self.ipam.set_service(*svc);
                    self.dirty.insert(key);
                }
            }
            Some(Watched::Stale { uid, ingress }) => {
                let was_ours = self.ipam.service(&key).is_some()
                    || self.stale.get(&key).is_some_and(|s| s.was_ours);
                self.forget_service(&key);
                let stale = Stale {
                    uid,
                    ingress,
                    was_ours,
                };
                if self.stale.get(&key) != Some(&stale) {
                    self.stale.insert(key.clone(), stale);
                    self.dirty.insert(key);
                }
            }
            None => {
                self.forget_service(&key);
                if self.stale.remove(&key).is_some() {
                    self.dirty.insert(key);
                }
            }
        }
    }

    fn forget_service(&mut self, key: &ObjectKey) {
        if self.ipam.service(key).is_some() {
            let freed = self.ipam.remove_service(key);
            self.refused.remove(key);
            if !freed.is_empty() {
                tracing::info!(service = %key, ips = ?freed, "LoadBalancer IPs released");
                // Services waiting for an address may fit now.
                self.dirty.extend(self.refused.keys().cloned());
            }
            self.dirty.insert(key.clone());
        }
    }

    fn watched_service(&self, key: &ObjectKey) -> Option<Watched> {
        if let Some(svc) = self.ipam.service(key) {
            return Some(Watched::Ours(Box::new(svc.clone())));
        }
        self.stale.get(key).map(|s| Watched::Stale {
            uid: s.uid.clone(),
            ingress: s.ingress.clone(),
        })
    }

    fn apply_pool(&mut self, name: &str, value: Option<(Pool, Option<LoadBalancerIPPoolStatus>)>) {
        self.pool_status_stale = true;
        match value {
            Some((pool, status)) => {
                self.pool_status.insert(name.into(), status);
                if self.ipam.pool(name) != Some(&pool) {
                    if let Some(e) = pool.errors.first() {
                        tracing::warn!(pool = name, error = %e, "LoadBalancerIPPool has errors; it gives out no new addresses");
                    }
                    self.ipam.set_pool(pool);
                    self.everything_changed();
                }
            }
            None => {
                self.pool_status.remove(name);
                if self.ipam.remove_pool(name) {
                    self.everything_changed();
                }
            }
        }
    }

    fn apply_namespace(&mut self, name: &str, labels: Option<Labels>) {
        let before = self.ipam.namespace_labels(name).cloned();
        if before == labels {
            return;
        }
        match labels {
            Some(l) => self.ipam.set_namespace(name, l),
            None => self.ipam.remove_namespace(name),
        }
        let keys = self.ipam.services_in(name);
        self.dirty.extend(keys);
        self.everything_dirty |= !self.leading;
    }

    fn everything_changed(&mut self) {
        self.dirty.extend(self.ipam.service_keys());
        self.everything_dirty = true;
    }
}

/// [`Store`] adapters so the runtime's informers feed [`State`].
#[derive(Debug)]
pub struct ServiceStore<'a>(pub &'a mut State);
#[derive(Debug)]
pub struct PoolStore<'a>(pub &'a mut State);
#[derive(Debug)]
pub struct NamespaceStore<'a>(pub &'a mut State);

impl Store for ServiceStore<'_> {
    type Value = Watched;

    fn apply(&mut self, key: ObjectKey, value: Option<Watched>) {
        self.0.apply_service(key, value);
    }

    fn get(&self, key: &ObjectKey) -> Option<Watched> {
        self.0.watched_service(key)
    }

    fn keys(&self) -> Vec<ObjectKey> {
        let mut keys = self.0.ipam.service_keys();
        keys.extend(self.0.stale.keys().cloned());
        keys
    }
}

/// A pool and the status it showed.
pub type WatchedPool = (Pool, Option<LoadBalancerIPPoolStatus>);

impl Store for PoolStore<'_> {
    type Value = WatchedPool;

    fn apply(&mut self, key: ObjectKey, value: Option<WatchedPool>) {
        self.0.apply_pool(&key.name, value);
    }

    fn get(&self, key: &ObjectKey) -> Option<WatchedPool> {
        let pool = self.0.ipam.pool(&key.name)?.clone();
        let status = self.0.pool_status.get(&key.name).cloned().flatten();
        Some((pool, status))
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0
            .ipam
            .pool_names()
            .map(|n| ObjectKey::new("", n))
            .collect()
    }
}

impl Store for NamespaceStore<'_> {
    type Value = Labels;

    fn apply(&mut self, key: ObjectKey, value: Option<Labels>) {
        self.0.apply_namespace(&key.name, value);
    }

    fn get(&self, key: &ObjectKey) -> Option<Labels> {
        self.0.ipam.namespace_labels(&key.name).cloned()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0
            .ipam
            .namespace_names()
            .map(|n| ObjectKey::new("", n))
            .collect()
    }
}

/// The three watch intakes the controller runs. Pools do not go through the runtime's
/// `Informer`: it needs `k8s_openapi::Metadata`, which kube's `CustomResource` derive does not
/// implement (and cannot be added without clashing with kube's blanket `Resource` impl); a pool
/// never fails to convert anyway.
pub struct Informers {
    pub services: Informer<Service, Watched>,
    pub pools: PoolIntake,
    pub namespaces: Informer<Namespace, Labels>,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("services", &self.services)
            .field("pools", &self.pools)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

impl Informers {
    /// `class` is our `loadBalancerClass`, if any.
    pub fn new(class: Option<String>, metrics: &Metrics) -> Self {
        Informers {
            services: Informer::new(
                "Service",
                Box::new(move |svc: &Service| service::convert(svc, class.as_deref())),
                metrics.watch.clone(),
            ),
            pools: PoolIntake::default(),
            namespaces: Informer::new(
                "Namespace",
                Box::new(|ns: &Namespace| {
                    Ok(Some(
                        ns.metadata
                            .labels
                            .as_ref()
                            .map(Labels::from)
                            .unwrap_or_default(),
                    ))
                }),
                metrics.watch.clone(),
            ),
        }
    }

    pub fn synced(&self) -> bool {
        self.services.is_synced() && self.pools.synced && self.namespaces.is_synced()
    }
}

/// The pool watch's intake: live changes applied at once, a re-list applied whole when done.
#[derive(Debug, Default)]
pub struct PoolIntake {
    listing: Option<Vec<(ObjectKey, WatchedPool)>>,
    synced: bool,
}

impl PoolIntake {
    pub fn handle(&mut self, event: Event<LoadBalancerIPPool>, store: &mut PoolStore<'_>) {
        let key = |p: &LoadBalancerIPPool| {
            ObjectKey::new("", p.metadata.name.as_deref().unwrap_or_default())
        };
        let convert = |p: &LoadBalancerIPPool| (Pool::from_crd(p), p.status.clone());
        match event {
            Event::Apply(p) => store.apply(key(&p), Some(convert(&p))),
            Event::Delete(p) => store.apply(key(&p), None),
            Event::Init => self.listing = Some(Vec::new()),
            Event::InitApply(p) => self
                .listing
                .get_or_insert_with(Vec::new)
                .push((key(&p), convert(&p))),
            Event::InitDone => {
                store.resync(self.listing.take().unwrap_or_default());
                self.synced = true;
            }
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }
}
