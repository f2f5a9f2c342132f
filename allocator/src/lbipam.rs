//! LoadBalancer IPAM: gives Services of type LoadBalancer addresses from pools, as MetalLB's
//! controller does (assignment only; announcing the addresses is someone else's job).
//!
//! # What an operator writes
//! - **Pools**: [`LoadBalancerIPPool`] (`allocator.svcplane.dev/v1alpha1`, cluster-scoped; CRD in
//!   `deploy/svcplane-allocator-crds.yaml`): `addresses` (CIDRs and `a-b` ranges), `autoAssign`
//!   (default true), `avoidBuggyIPs` (skip IPv4 `.0`/`.255`), `serviceAllocation` (`priority`,
//!   `namespaces`, `namespaceSelectors`, `serviceSelectors`). The status shows assigned and
//!   available addresses per family and, for a malformed spec, `error`.
//! - **Services**: `type: LoadBalancer` with no `loadBalancerClass` or ours
//!   (`Settings::load_balancer_class`); others are left alone. Annotations:
//!   - [`ANNOTATION_IPS`] `allocator.svcplane.dev/load-balancer-ips`: comma-separated addresses,
//!     one per family; wins over `spec.loadBalancerIP` (which is also honoured).
//!   - [`ANNOTATION_POOL`] `allocator.svcplane.dev/address-pool`: take addresses only from this
//!     pool, even one with `autoAssign: false`.
//!   - [`ANNOTATION_SHARING_KEY`] `allocator.svcplane.dev/allow-shared-ip`: sharing key.
//!
//! # Rules (MetalLB's documented behaviour unless listed under differences)
//! - **Which pools**: a pool admits a Service when its namespace is listed in `namespaces` or
//!   matches a `namespaceSelectors` entry (neither given: every namespace) and the Service
//!   matches a `serviceSelectors` entry (none given: every Service). Automatic assignment tries
//!   admitting pools with `autoAssign` by `priority` (lower first; unset or 0 after all others),
//!   then by name; within a pool the lowest free address, range by range. A Service with a
//!   sharing key first takes an address a Service with the same key holds, if it may share it.
//! - **Requested addresses** must lie in a pool that admits the Service (the named pool, if the
//!   Service names one); `autoAssign` does not matter. Taken by a Service it may not share with:
//!   refused.
//! - **Sharing**: Services may hold the same address only with the same sharing key, no
//!   `(protocol, port)` in common, and both `externalTrafficPolicy: Cluster` or both `Local`
//!   with the same pod selector.
//! - **Families**: from `spec.ipFamilyPolicy` and `spec.ipFamilies`: SingleStack gets the
//!   primary family; PreferDualStack every family the admitting pools offer (if one family's
//!   pools are full it gets the other, with a Warning); RequireDualStack both or nothing. The
//!   primary family is listed first in the status.
//! - **Sticky**: a Service keeps its addresses while they stay valid for it (in a pool that
//!   admits it, as requested, shareable). When a pool, a namespace's labels or the Service
//!   change so that an address is no longer valid, it is released and the Service assigned
//!   anew. A refusal leaves the Service with no addresses.
//! - **Release** on delete, on a change of type away from LoadBalancer (the status is cleared),
//!   and when the Service stops asking for an address; Services refused earlier are tried again
//!   whenever an address is freed or pools change.
//! - **Restarts and leadership**: state comes from the API server. A new leader first adopts
//!   every Service's current `status.loadBalancer.ingress` (oldest Service first, so the older
//!   one wins two claims on one address) and only then decides, so a restart moves nothing that
//!   is valid. Followers keep the same state warm and export the same metrics, but never write.
//! - **Events** on the Service: Warning `AllocationFailed` for every refusal (once per distinct
//!   reason, until it is resolved), Normal `IPAllocated` for every new assignment; a Service that
//!   does not convert gets Warning `InvalidService` and keeps its last good version.
//! - **Pools overlap**: the older pool (then the first by name) keeps the addresses; the other
//!   reports the overlap as an error.
//!
//! # Differences from MetalLB
//! - A pool whose spec has errors is not rejected (there is no validating webhook): it gives out
//!   no new addresses and reports `status.error`, but Services keep addresses they already hold
//!   in its well-formed ranges, so a typo does not move them.
//! - MetalLB keeps running on a "stale" configuration when a pool change would take away an
//!   address in use; here the Service is re-assigned at once.
//! - Pools with equal priority are tried in name order (MetalLB: random).
//! - With `Settings::load_balancer_class` set, Services without a class are still handled
//!   (MetalLB's `--lb-class` handles only its class).
//! - Annotations use our own prefix; MetalLB's `metallb.universe.tf/*` are not read.
//! - PreferDualStack gives both families whenever pools offer both, whatever `ipFamilies` lists.
//!
//! # Layout
//! [`crd`] (the custom resource), [`pool`] (ranges as integers, selectors), [`service`] (the
//! slim [`LbService`] and annotations), `ipam` (the pure allocation core), `controller` (the
//! synchronous intake-and-decide state machine producing [`Action`]s), `metrics`, and [`run`],
//! the async rim: watches in, status writes and Events out.

mod controller;
pub mod crd;
mod ipam;
mod metrics;
pub mod pool;
pub mod service;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::json;
use svcplane_model::ObjectKey;
use svcplane_runtime::{Events, events};
use tokio::sync::watch;
use tokio::time::Instant;

pub use controller::{
    Action, Informers, NamespaceStore, PoolIntake, PoolStore, REASON_ALLOCATED, REASON_FAILED,
    REASON_INVALID, ServiceStore, State,
};
pub use crd::{LoadBalancerIPPool, LoadBalancerIPPoolSpec, LoadBalancerIPPoolStatus};
pub use ipam::{Ipam, Outcome, Refusal, Usage};
pub use metrics::{Metrics, NAMES as METRIC_NAMES};
pub use pool::Pool;
pub use service::{
    ANNOTATION_IPS, ANNOTATION_POOL, ANNOTATION_SHARING_KEY, LbService, Requested, Watched,
};

/// How LoadBalancer IPAM runs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Our `spec.loadBalancerClass`: Services with this class are handled, as are Services with
    /// none; Services with another class are left alone.
    pub load_balancer_class: Option<String>,
}

/// How long pool status writes wait for more changes, so a burst of assignments becomes one
/// write per pool.
const POOL_STATUS_DELAY: Duration = Duration::from_millis(300);
/// First retry of a failed status write; doubles per failure up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why IPAM stopped before shutdown.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs LoadBalancer IPAM until `shutdown`. Watches Services, pools and Namespaces; once all
/// three have listed, and while `leading` is true, writes Service and pool status and
/// publishes Events. Followers keep their state current from the watches and write nothing.
pub async fn run(
    client: Client,
    settings: Settings,
    events: Events,
    metrics: Metrics,
    leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    if let Err(error) = run_until(client, settings, events, metrics, leading, shutdown).await {
        tracing::error!(%error, "LoadBalancer IPAM stopped");
    }
}

async fn run_until(
    client: Client,
    settings: Settings,
    events: Events,
    metrics: Metrics,
    mut leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let config = watcher::Config::default();
    let mut services = pin!(svcplane_runtime::watch(
        Api::<Service>::all(client.clone()),
        config.clone()
    ));
    let mut pools = pin!(svcplane_runtime::watch(
        Api::<LoadBalancerIPPool>::all(client.clone()),
        config.clone()
    ));
    let mut namespaces = pin!(svcplane_runtime::watch(
        Api::<Namespace>::all(client.clone()),
        config
    ));
    let mut shutdown = pin!(shutdown);

    let mut informers = Informers::new(settings.load_balancer_class.clone(), &metrics);
    let mut state = State::new(metrics.clone());
    state.set_leading(*leading.borrow_and_update());
    let rim = Rim {
        client,
        events,
        metrics,
    };
    let mut leading_open = true;
    let mut announced = false;
    let mut retries = Retries::default();
    let mut pool_flush: Option<Instant> = None;
    let mut pool_failures = 0u32;

    loop {
        let retry_at = retries.next_at();
        tokio::select! {
            _ = &mut shutdown => break,
            ev = services.next() => {
                let ev = ev.ok_or(Error::WatchEnded("Service"))?;
                rim.service_event(&mut informers, &mut state, ev).await;
                // Take whatever else is already waiting before deciding: one decision per burst.
                for _ in 0..1024 {
                    let Some(Some(ev)) = services.next().now_or_never() else { break };
                    rim.service_event(&mut informers, &mut state, ev).await;
                }
            }
            ev = pools.next() => {
                let ev = ev.ok_or(Error::WatchEnded("LoadBalancerIPPool"))?;
                informers.pools.handle(ev, &mut PoolStore(&mut state));
            }
            ev = namespaces.next() => {
                let ev = ev.ok_or(Error::WatchEnded("Namespace"))?;
                informers.namespaces.handle(ev, &mut NamespaceStore(&mut state));
            }
            changed = leading.changed(), if leading_open => match changed {
                Ok(()) => {
                    let now = *leading.borrow_and_update();
                    tracing::info!(leading = now, "LoadBalancer IPAM leadership changed");
                    state.set_leading(now);
                    retries = Retries::default();
                }
                // The election is over (shutting down): keep the last word.
                Err(_) => leading_open = false,
            },
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                for key in retries.due(Instant::now()) {
                    state.touch(key);
                }
            }
            _ = sleep_until(pool_flush), if pool_flush.is_some() => {
                pool_flush = None;
                let mut failed = false;
                for action in state.pool_statuses() {
                    failed |= !rim.execute(&mut state, &mut retries, action).await;
                }
                if failed {
                    pool_failures += 1;
                    pool_flush = Some(Instant::now() + rim.backoff(pool_failures));
                } else {
                    pool_failures = 0;
                }
            }
        }
        if !informers.synced() {
            continue;
        }
        if !announced {
            announced = true;
            tracing::info!("LoadBalancer IPAM: Services, pools and Namespaces listed");
        }
        if state.has_work() {
            for action in state.process() {
                rim.execute(&mut state, &mut retries, action).await;
            }
        }
        if pool_flush.is_none()
            && state.pool_statuses_changed()
            && !state.pool_statuses().is_empty()
        {
            pool_flush = Some(Instant::now() + POOL_STATUS_DELAY);
        }
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Failed Service status writes waiting to be tried again, with per-Service backoff.
#[derive(Debug, Default)]
struct Retries(BTreeMap<ObjectKey, (Instant, u32)>);

impl Retries {
    fn next_at(&self) -> Option<Instant> {
        self.0.values().map(|(at, _)| *at).min()
    }

    fn due(&mut self, now: Instant) -> Vec<ObjectKey> {
        let due: Vec<ObjectKey> = self
            .0
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        // Keep the failure count (for the next backoff) but no longer wait.
        for key in &due {
            if let Some(entry) = self.0.get_mut(key) {
                entry.0 = now + Duration::from_secs(24 * 3600);
            }
        }
        due
    }
}

/// The I/O side: API writes and Events.
struct Rim {
    client: Client,
    events: Events,
    metrics: Metrics,
}

impl Rim {
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
    }

    async fn service_event(
        &self,
        informers: &mut Informers,
        state: &mut State,
        ev: watcher::Event<Service>,
    ) {
        // Keep what an Event about a rejected object needs before the informer consumes it.
        let (uid, resource_version) = match &ev {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                (s.meta().uid.clone(), s.meta().resource_version.clone())
            }
            _ => (None, None),
        };
        if let Some(rejected) = informers.services.handle(ev, &mut ServiceStore(state))
            && state.is_leading()
        {
            let mut about = events::reference("v1", "Service", &rejected.key, uid.as_deref());
            about.resource_version = resource_version;
            let note = format!(
                "LoadBalancer IPAM ignores this version of the Service: {}",
                rejected.error
            );
            self.events.warn(&about, REASON_INVALID, note).await;
        }
    }

    /// Carries out one action; false when a write failed (it is retried).
    async fn execute(&self, state: &mut State, retries: &mut Retries, action: Action) -> bool {
        match action {
            Action::ServiceStatus { key, ips } => {
                if !state.is_leading() {
                    return true;
                }
                let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
                let patch = service_status_patch(&ips);
                match api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        self.metrics.wrote("services", true);
                        state.wrote_service(&key, &ips);
                        retries.0.remove(&key);
                        true
                    }
                    Err(kube::Error::Api(status)) if status.is_not_found() => {
                        // Deleted meanwhile: the watch brings the deletion.
                        retries.0.remove(&key);
                        true
                    }
                    Err(error) => {
                        self.metrics.wrote("services", false);
                        let failures = retries.0.get(&key).map_or(0, |(_, n)| *n) + 1;
                        let delay = self.backoff(failures);
                        tracing::warn!(service = %key, %error, ?delay, "writing Service status failed; retrying");
                        retries.0.insert(key, (Instant::now() + delay, failures));
                        false
                    }
                }
            }
            Action::PoolStatus { name, status } => {
                if !state.is_leading() {
                    return true;
                }
                let api: Api<LoadBalancerIPPool> = Api::all(self.client.clone());
                let patch = json!({
                    "status": {
                        "assignedIPv4": status.assigned_ipv4,
                        "assignedIPv6": status.assigned_ipv6,
                        "availableIPv4": status.available_ipv4,
                        "availableIPv6": status.available_ipv6,
                        // null removes a previous error.
                        "error": status.error,
                        "observedGeneration": status.observed_generation,
                    }
                });
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        self.metrics.wrote("loadbalancerippools", true);
                        state.wrote_pool(&name, status);
                        true
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() => true,
                    Err(error) => {
                        self.metrics.wrote("loadbalancerippools", false);
                        tracing::warn!(pool = %name, %error, "writing pool status failed; retrying");
                        false
                    }
                }
            }
            Action::Event {
                key,
                uid,
                resource_version,
                warning,
                reason,
                note,
            } => {
                let mut about = events::reference("v1", "Service", &key, uid.as_deref());
                about.resource_version = resource_version.map(String::from);
                if warning {
                    self.events.warn(&about, reason, note).await;
                } else {
                    self.events.normal(&about, reason, note).await;
                }
                true
            }
        }
    }
}

/// A merge patch setting `status.loadBalancer.ingress` (a merge patch replaces lists whole);
/// no addresses removes the list.
pub fn service_status_patch(ips: &[IpAddr]) -> serde_json::Value {
    if ips.is_empty() {
        return json!({ "status": { "loadBalancer": { "ingress": null } } });
    }
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({ "ip": ip.to_string(), "ipMode": "VIP" }))
        .collect();
    json!({ "status": { "loadBalancer": { "ingress": ingress } } })
}

#[cfg(test)]
mod tests;
