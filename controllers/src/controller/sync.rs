//! One controller's sync of one Service key: read what the cache holds, compute what the rules
//! want, write the difference, and say how it went ([`Outcome`]). Writes go through to the
//! cache, so the next sync compares with what we wrote even before its watch event arrives.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use svcplane_model::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, HintMode, LABEL_MANAGED_BY, ObjectKey, Pod, Service,
    ServiceType,
};
use svcplane_runtime::events;

use super::{
    ANNOTATION_LEADER, ANNOTATION_OVER_CAPACITY, Controller, ENDPOINTS_MANAGED_BY,
    LABEL_ENDPOINTS_MANAGED_BY, Part, lock,
};
use crate::desired::{address_types, auto_hints, slice_groups};
use crate::endpoints::{self as v1, MAX_ADDRESSES};
use crate::mirror;
use crate::slices::{self, LABEL_HEADLESS, Plan};

/// How a sync ended when no write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The API now says what the rules want.
    Done,
    /// The cache is older than our own last write; nothing was written. Retried after backoff.
    Stale,
    /// Everything else was written, but this many pods wait for Nodes not yet seen (their
    /// zones are unknown). Retried after backoff.
    NodesMissing(usize),
}

/// A write that failed; the sync is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {resource} {object}: {source}")]
pub struct SyncError {
    pub verb: &'static str,
    pub resource: &'static str,
    pub object: ObjectKey,
    #[source]
    pub source: kube::Error,
}

impl SyncError {
    /// A fixed label per kind of failure.
    pub fn reason(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(s) if s.code == 409 => "conflict",
            kube::Error::Api(s) if s.code == 404 => "not_found",
            kube::Error::Api(s) if s.code == 429 => "throttled",
            kube::Error::Api(s) if s.code >= 500 => "server_error",
            kube::Error::Api(_) => "rejected",
            _ => "transport",
        }
    }

    /// Conflicts are expected now and then (someone wrote in between); logged quietly.
    pub fn is_conflict(&self) -> bool {
        self.reason() == "conflict"
    }
}

type SyncResult = Result<Outcome, SyncError>;

fn write_error(
    verb: &'static str,
    resource: &'static str,
    object: ObjectKey,
) -> impl FnOnce(kube::Error) -> SyncError {
    move |source| SyncError {
        verb,
        resource,
        object,
        source,
    }
}

/// The API server refuses new objects in a namespace being deleted; nothing to do there.
fn namespace_terminating(error: &SyncError) -> bool {
    matches!(&error.source, kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated"))
}

/// What one sync reads from the cache.
struct Snapshot {
    svc: Option<Arc<Service>>,
    pods: Vec<Arc<Pod>>,
    endpoints: Option<Arc<Endpoints>>,
    own: Vec<Arc<EndpointSlice>>,
    mirrored: Vec<Arc<EndpointSlice>>,
}

impl Snapshot {
    /// The Service, when it selects pods (not ExternalName, has a selector).
    fn selected(&self) -> Option<&Service> {
        self.svc
            .as_deref()
            .filter(|s| s.type_ != ServiceType::ExternalName && s.selector.is_some())
    }
}

fn service_reference(svc: &Service) -> ObjectReference {
    events::reference("v1", "Service", &svc.key, svc.uid.as_deref())
}

fn endpoints_reference(key: &ObjectKey) -> ObjectReference {
    events::reference("v1", "Endpoints", key, None)
}

fn set_trigger(annotations: &mut BTreeMap<String, String>, trigger: Option<Timestamp>) {
    match trigger {
        Some(t) => annotations.insert(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.into(), t.to_string()),
        None => annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME),
    };
}

impl Controller {
    fn snapshot(&self, key: &ObjectKey) -> Snapshot {
        let cache = self.cache();
        let svc = cache.service(key).cloned();
        let pods = svc
            .as_deref()
            .map(|s| cache.pods_for(s))
            .unwrap_or_default();
        let manager = self.inner.settings.slice_manager.as_str();
        let (own, mirrored) = cache
            .slices_of(key)
            .into_iter()
            .partition(|s| s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(manager));
        Snapshot {
            svc,
            pods,
            endpoints: cache.endpoints(key).cloned(),
            own,
            mirrored,
        }
    }

    /// Syncs `key` for one controller.
    pub async fn sync(&self, part: Part, key: &ObjectKey) -> SyncResult {
        let snap = self.snapshot(key);
        if snap.svc.is_none() {
            self.forget(part, key);
        }
        match part {
            Part::Endpoints => self.sync_endpoints(key, &snap).await,
            Part::Slices => {
                let result = self.sync_slices(key, &snap).await;
                if let (Err(error), Some(svc)) = (&result, snap.svc.as_deref()) {
                    let note = format!("Error updating Endpoint Slices for Service {key}: {error}");
                    self.inner
                        .events
                        .warn(
                            &service_reference(svc),
                            "FailedToUpdateEndpointSlices",
                            note,
                        )
                        .await;
                }
                result
            }
            Part::Mirror => self.sync_mirror(key, &snap).await,
        }
    }

    /// A deleted Service's bookkeeping goes with it.
    fn forget(&self, part: Part, key: &ObjectKey) {
        match part {
            Part::Endpoints => lock(&self.inner.endpoint_triggers).forget(key),
            Part::Slices => {
                lock(&self.inner.slice_triggers).forget(key);
                lock(&self.inner.hints).remove(key);
            }
            Part::Mirror => {}
        }
    }

    async fn sync_endpoints(&self, key: &ObjectKey, snap: &Snapshot) -> SyncResult {
        let writer = self.inner.writers.get(Part::Endpoints);
        let current = snap.endpoints.as_deref();
        let Some(svc) = snap.svc.as_deref() else {
            // No Service: its Endpoints go (upstream deletes any Endpoints without a Service,
            // except leader-election locks).
            if let Some(ep) = current
                && !ep.annotations().contains_key(ANNOTATION_LEADER)
            {
                self.inner.metrics.wrote("delete", "endpoints");
                writer.delete_endpoints(key).await.map_err(write_error(
                    "delete",
                    "endpoints",
                    key.clone(),
                ))?;
                self.cache().apply_endpoints(key.clone(), None);
            }
            return Ok(Outcome::Done);
        };
        // ExternalName or no selector: someone else's Endpoints, left alone.
        let Some(svc) = snap.selected().filter(|s| s.key == svc.key) else {
            return Ok(Outcome::Done);
        };
        let trigger = lock(&self.inner.endpoint_triggers).observe(svc, &snap.pods);
        let desired = v1::desired(svc, snap.pods.iter().map(|p| &**p));
        let mut labels: BTreeMap<String, String> = svc.labels.to_map();
        // Upstream labels every Service without a cluster IP headless, not only `None`.
        if svc.has_cluster_ip() {
            labels.remove(LABEL_HEADLESS);
        } else {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        }
        labels.insert(
            LABEL_ENDPOINTS_MANAGED_BY.into(),
            ENDPOINTS_MANAGED_BY.into(),
        );

        if let Some(current) = current
            && current.metadata.resource_version.is_some()
        {
            let same_subsets =
                v1::canonical(current.subsets.as_deref().unwrap_or_default()) == desired.subsets;
            let mut current_labels = current.labels().clone();
            current_labels.remove(LABEL_HEADLESS);
            let mut wanted_labels = labels.clone();
            wanted_labels.remove(LABEL_HEADLESS);
            let capacity_ok =
                !desired.truncated && !current.annotations().contains_key(ANNOTATION_OVER_CAPACITY);
            if same_subsets && current_labels == wanted_labels && capacity_ok {
                return Ok(Outcome::Done);
            }
        }
        let mut annotations = current.map(|c| c.annotations().clone()).unwrap_or_default();
        set_trigger(&mut annotations, trigger);
        if desired.truncated {
            annotations.insert(ANNOTATION_OVER_CAPACITY.into(), "truncated".into());
        } else {
            annotations.remove(ANNOTATION_OVER_CAPACITY);
        }
        let object = Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.to_string()),
                namespace: Some(key.namespace.to_string()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                resource_version: current.and_then(|c| c.metadata.resource_version.clone()),
                ..Default::default()
            },
            subsets: (!desired.subsets.is_empty()).then_some(desired.subsets),
        };
        let (verb, result) = if current.is_some() {
            ("update", writer.replace_endpoints(&object).await)
        } else {
            ("create", writer.create_endpoints(&object).await)
        };
        self.inner.metrics.wrote(verb, "endpoints");
        match result.map_err(write_error(verb, "endpoints", key.clone())) {
            Ok(written) => {
                self.cache()
                    .apply_endpoints(key.clone(), Some(Arc::new(written)));
                Ok(Outcome::Done)
            }
            Err(e) if namespace_terminating(&e) => Ok(Outcome::Done),
            Err(e) => {
                let reason = if current.is_some() {
                    "FailedToUpdateEndpoint"
                } else {
                    "FailedToCreateEndpoint"
                };
                let note = format!("Failed to write endpoint {key}: {}", e.source);
                self.inner
                    .events
                    .warn(&endpoints_reference(key), reason, note)
                    .await;
                Err(e)
            }
        }
    }

    async fn sync_slices(&self, key: &ObjectKey, snap: &Snapshot) -> SyncResult {
        let listed: Vec<Arc<EndpointSlice>> = snap
            .own
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        if snap.svc.is_none() {
            // The garbage collector removes them through their owner reference; without one
            // (a control plane without it) they would stay, so they are deleted here too.
            let plan = Plan {
                delete: listed,
                ..Plan::default()
            };
            let result = self.execute(Part::Slices, key, plan, None).await;
            self.expectations(Part::Slices).forget(key);
            return result;
        }
        let Some(svc) = snap.selected() else {
            return Ok(Outcome::Done);
        };
        if self
            .expectations(Part::Slices)
            .is_stale(key, listed.iter().map(|s| &**s))
        {
            return Ok(Outcome::Stale);
        }
        let trigger = lock(&self.inner.slice_triggers).observe(svc, &snap.pods);
        let mut missing = 0;
        let mut hint_failure = None;
        let desired: Vec<_> = {
            let cache = self.cache();
            let zone_of = |node: &str| cache.node_zone(node);
            let auto = svc.hint_mode() == HintMode::Auto;
            let ratios = if auto { cache.zone_ratios() } else { None };
            address_types(svc)
                .into_iter()
                .map(|t| {
                    let mut groups = slice_groups(svc, snap.pods.iter().map(|p| &**p), t, &zone_of);
                    missing = missing.max(groups.missing_nodes);
                    if auto && let Err(reason) = auto_hints(&mut groups, ratios.as_ref()) {
                        hint_failure = Some(format!("{reason}, addressType: {}", t.as_str()));
                    }
                    (t, groups)
                })
                .collect()
        };
        self.hints_event(svc, hint_failure).await;
        let plan = slices::plan(
            svc,
            &listed,
            &desired,
            self.inner.settings.max_endpoints_per_slice,
            &self.inner.settings.slice_manager,
        );
        self.execute(Part::Slices, key, plan, trigger).await?;
        Ok(if missing > 0 {
            Outcome::NodesMissing(missing)
        } else {
            Outcome::Done
        })
    }

    /// Sends a plan: creates, updates, then deletes; the first error stops it.
    async fn execute(
        &self,
        part: Part,
        key: &ObjectKey,
        plan: Plan,
        trigger: Option<Timestamp>,
    ) -> SyncResult {
        let writer = self.inner.writers.get(part);
        let stamp = |slice: &mut EndpointSlice| {
            let annotations = slice
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            set_trigger(annotations, trigger);
            if annotations.is_empty() {
                slice.metadata.annotations = None;
            }
            slice.metadata.managed_fields = None;
        };
        let slice_key = |s: &EndpointSlice| {
            ObjectKey::new(
                &*key.namespace,
                s.metadata
                    .name
                    .as_deref()
                    .or(s.metadata.generate_name.as_deref())
                    .unwrap_or_default(),
            )
        };
        for mut slice in plan.create {
            stamp(&mut slice);
            self.inner.metrics.wrote("create", "endpointslices");
            let result = writer.create_slice(&slice).await.map_err(write_error(
                "create",
                "endpointslices",
                slice_key(&slice),
            ));
            match result {
                Ok(created) => self.wrote_slice(part, key, created),
                Err(e) if namespace_terminating(&e) => return Ok(Outcome::Done),
                Err(e) => return Err(e),
            }
        }
        for mut slice in plan.update {
            stamp(&mut slice);
            self.inner.metrics.wrote("update", "endpointslices");
            let updated = writer.replace_slice(&slice).await.map_err(write_error(
                "update",
                "endpointslices",
                slice_key(&slice),
            ))?;
            self.wrote_slice(part, key, updated);
        }
        for slice in plan.delete {
            let object = slice_key(&slice);
            let uid = slice.metadata.uid.as_deref();
            self.inner.metrics.wrote("delete", "endpointslices");
            writer
                .delete_slice(&object, uid)
                .await
                .map_err(write_error("delete", "endpointslices", object.clone()))?;
            self.cache().apply_slice(object, None);
            if let Some(uid) = uid {
                self.expectations(part).deleted(key, uid);
            }
        }
        Ok(Outcome::Done)
    }

    /// Remembers the generation a write got, and writes the slice through to the cache.
    fn wrote_slice(&self, part: Part, key: &ObjectKey, mut written: EndpointSlice) {
        self.expectations(part).written(key, &written);
        written.metadata.managed_fields = None;
        let slice_key = ObjectKey::of(&written);
        self.cache().apply_slice(slice_key, Some(Arc::new(written)));
    }

    /// Tells the Service's owner when Auto hints turn off or on again, once per change (upstream
    /// sends `TopologyAwareHintsDisabled` / `TopologyAwareHintsEnabled`).
    async fn hints_event(&self, svc: &Service, failure: Option<String>) {
        let changed = {
            let mut hints = lock(&self.inner.hints);
            let state = (svc.hint_mode() == HintMode::Auto).then(|| failure.clone());
            let previous = match &state {
                Some(s) => hints.insert(svc.key.clone(), s.clone()),
                None => hints.remove(&svc.key),
            };
            previous != state && state.is_some()
        };
        if !changed {
            return;
        }
        let events = &self.inner.events;
        match failure {
            Some(reason) => {
                events
                    .warn(
                        &service_reference(svc),
                        "TopologyAwareHintsDisabled",
                        reason,
                    )
                    .await
            }
            None => {
                events
                    .normal(
                        &service_reference(svc),
                        "TopologyAwareHintsEnabled",
                        "Topology Aware Hints has been enabled".into(),
                    )
                    .await
            }
        }
    }

    async fn sync_mirror(&self, key: &ObjectKey, snap: &Snapshot) -> SyncResult {
        let source = snap
            .endpoints
            .as_deref()
            .filter(|ep| mirror::should_mirror(ep, snap.svc.as_deref()));
        let plan = match source {
            Some(ep) => {
                let manager = &self.inner.settings.mirror_manager;
                let desired = mirror::desired(ep, manager, MAX_ADDRESSES);
                let events = &self.inner.events;
                if desired.skipped > 0 {
                    let note = format!(
                        "A max of {MAX_ADDRESSES} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
                        desired.skipped
                    );
                    events
                        .warn(&endpoints_reference(key), "TooManyAddressesToMirror", note)
                        .await;
                }
                if desired.invalid > 0 {
                    let note = format!(
                        "Skipped {} invalid IP addresses when mirroring to EndpointSlices",
                        desired.invalid
                    );
                    events
                        .warn(&endpoints_reference(key), "InvalidIPAddress", note)
                        .await;
                }
                mirror::plan(desired.slices, &snap.mirrored)
            }
            None => Plan {
                delete: snap.mirrored.clone(),
                ..Plan::default()
            },
        };
        self.execute(Part::Mirror, key, plan, None).await
    }
}
