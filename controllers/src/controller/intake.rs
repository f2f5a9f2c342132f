//! Watch intake: five informers (Services, Pods, Nodes, our EndpointSlices, Endpoints) apply
//! their events to the indexed [`Cache`], and each event queues the Services it touches for the
//! controllers that care. Slice and Endpoints events that are only our own writes coming back
//! queue nothing; events older than what we already wrote through to the cache are ignored.

use std::pin::pin;
use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    Endpoints, Node as ApiNode, Pod as ApiPod, Service as ApiService,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use svcplane_model::tracker::Store;
use svcplane_model::{LABEL_MANAGED_BY, Node, ObjectKey, Pod, Service};
use svcplane_runtime::informer::{Informer, Rejected};
use svcplane_runtime::{events, watch};

use super::{Controller, Part};
use crate::cache::Cache;

pub(super) enum Update {
    Service(Box<Event<ApiService>>),
    Pod(Box<Event<ApiPod>>),
    Node(Box<Event<ApiNode>>),
    Slice(Box<Event<EndpointSlice>>),
    Endpoints(Box<Event<Endpoints>>),
}

/// The informers, one per watch.
pub(super) struct Informers {
    services: Informer<ApiService, Arc<Service>>,
    pods: Informer<ApiPod, Arc<Pod>>,
    nodes: Informer<ApiNode, Arc<Node>>,
    slices: Informer<EndpointSlice, Arc<EndpointSlice>>,
    endpoints: Informer<Endpoints, Arc<Endpoints>>,
}

impl Informers {
    fn synced(&self) -> bool {
        self.services.is_synced()
            && self.pods.is_synced()
            && self.nodes.is_synced()
            && self.slices.is_synced()
            && self.endpoints.is_synced()
    }
}

/// Our own objects as the cache keeps them: without managed fields (never read, often large).
fn slim<K: kube::Resource + Clone>(obj: &K) -> Result<Option<Arc<K>>, svcplane_model::Error> {
    let mut obj = obj.clone();
    obj.meta_mut().managed_fields = None;
    Ok(Some(Arc::new(obj)))
}

/// True when `incoming` is an older version of the same object than `current` (a watch event
/// arriving after we wrote a newer version through to the cache).
fn is_older(current: &ObjectMeta, incoming: &ObjectMeta) -> bool {
    let version = |m: &ObjectMeta| m.resource_version.as_deref()?.parse::<u64>().ok();
    current.uid == incoming.uid
        && matches!((version(current), version(incoming)), (Some(c), Some(i)) if i < c)
}

/// The cache's tables seen as [`Store`]s, each collecting the Services its changes touch.
struct Services<'a>(&'a mut Cache, Vec<ObjectKey>);
struct Pods<'a>(&'a mut Cache, Vec<ObjectKey>);
struct Nodes<'a>(&'a mut Cache, Vec<ObjectKey>);
struct EndpointsStore<'a>(&'a mut Cache, Vec<ObjectKey>);

impl Store for Services<'_> {
    type Value = Arc<Service>;
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>) {
        let touched = self.0.apply_service(key, value);
        self.1.extend(touched);
    }
    fn get(&self, key: &ObjectKey) -> Option<Self::Value> {
        self.0.service(key).cloned()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.services().cloned().collect()
    }
}

impl Store for Pods<'_> {
    type Value = Arc<Pod>;
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>) {
        let touched = self.0.apply_pod(key, value);
        self.1.extend(touched);
    }
    fn get(&self, key: &ObjectKey) -> Option<Self::Value> {
        self.0.pod(key).cloned()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.pod_keys().cloned().collect()
    }
}

/// Nodes are cluster-scoped: their keys have an empty namespace.
impl Store for Nodes<'_> {
    type Value = Arc<Node>;
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>) {
        let touched = self.0.apply_node(&key.name, value);
        self.1.extend(touched);
    }
    fn get(&self, key: &ObjectKey) -> Option<Self::Value> {
        self.0.node(&key.name).cloned()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.node_names().map(|n| ObjectKey::new("", n)).collect()
    }
}

impl Store for EndpointsStore<'_> {
    type Value = Arc<Endpoints>;
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>) {
        if let (Some(current), Some(new)) = (self.0.endpoints(&key), &value)
            && is_older(&current.metadata, &new.metadata)
        {
            return;
        }
        let touched = self.0.apply_endpoints(key, value);
        self.1.extend(touched);
    }
    fn get(&self, key: &ObjectKey) -> Option<Self::Value> {
        self.0.endpoints(key).cloned()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.endpoints_keys().cloned().collect()
    }
}

/// Our slices (both managers). A change queues its Service only when it is not our own write
/// coming back: an unknown slice, a newer generation than we wrote, or a deletion we did not make.
struct Slices<'a> {
    controller: &'a Controller,
    cache: &'a mut Cache,
    /// Touched Services, for the EndpointSlice controller and the mirroring controller.
    own: Vec<ObjectKey>,
    mirrored: Vec<ObjectKey>,
}

impl Store for Slices<'_> {
    type Value = Arc<EndpointSlice>;
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>) {
        let before = self.cache.slice(&key);
        if let (Some(current), Some(new)) = (&before, &value)
            && is_older(&current.metadata, &new.metadata)
        {
            return;
        }
        let subject = value.as_deref().or(before.as_deref());
        let manager = subject
            .and_then(|s| s.metadata.labels.as_ref()?.get(LABEL_MANAGED_BY))
            .map(String::as_str);
        let part = if manager == Some(self.controller.inner.settings.mirror_manager.as_str()) {
            Part::Mirror
        } else {
            Part::Slices
        };
        let touched = self.cache.apply_slice(key, value.clone());
        let mut expectations = self.controller.expectations(part);
        let foreign: Vec<ObjectKey> = touched
            .iter()
            .filter(|svc| !expectations.is_own_echo(svc, value.as_deref(), before.as_deref()))
            .cloned()
            .collect();
        if let (None, Some(gone)) = (&value, before.as_deref())
            && let Some(uid) = gone.metadata.uid.as_deref()
        {
            for svc in &touched {
                expectations.gone(svc, uid);
            }
        }
        match part {
            Part::Mirror => self.mirrored.extend(foreign),
            _ => self.own.extend(foreign),
        }
    }
    fn get(&self, key: &ObjectKey) -> Option<Self::Value> {
        self.cache.slice(key)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.cache.slice_keys().cloned().collect()
    }
}

impl Controller {
    /// Runs the watches until `shutdown`; `on_synced` runs once every watch has listed.
    pub async fn watch(
        &self,
        client: Client,
        on_synced: impl FnOnce(),
        shutdown: impl Future<Output = ()>,
    ) {
        let settings = &self.inner.settings;
        let managed = format!(
            "{LABEL_MANAGED_BY} in ({},{})",
            settings.slice_manager, settings.mirror_manager
        );
        let all = watcher::Config::default;
        let streams = vec![
            watch(Api::<ApiService>::all(client.clone()), all())
                .map(|e| Update::Service(Box::new(e)))
                .boxed(),
            watch(Api::<ApiPod>::all(client.clone()), all())
                .map(|e| Update::Pod(Box::new(e)))
                .boxed(),
            watch(Api::<ApiNode>::all(client.clone()), all())
                .map(|e| Update::Node(Box::new(e)))
                .boxed(),
            watch(
                Api::<EndpointSlice>::all(client.clone()),
                all().labels(&managed),
            )
            .map(|e| Update::Slice(Box::new(e)))
            .boxed(),
            watch(Api::<Endpoints>::all(client), all())
                .map(|e| Update::Endpoints(Box::new(e)))
                .boxed(),
        ];
        let mut updates = pin!(stream::select_all(streams).ready_chunks(512));
        let mut shutdown = pin!(shutdown);
        let mut informers = self.informers();
        let mut on_synced = Some(on_synced);
        loop {
            let batch = tokio::select! {
                _ = &mut shutdown => return,
                batch = updates.next() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
            };
            for update in batch {
                self.handle(&mut informers, update);
            }
            if informers.synced()
                && let Some(callback) = on_synced.take()
            {
                let (services, pods, nodes) = self.cache().counts();
                tracing::info!(services, pods, nodes, "caches synced");
                self.inner.synced.send_replace(true);
                self.enqueue_all();
                callback();
            }
        }
    }

    pub(super) fn informers(&self) -> Informers {
        let m = &self.inner.watch_metrics;
        fn model<A, T>(obj: &A) -> Result<Option<Arc<T>>, svcplane_model::Error>
        where
            for<'a> T: TryFrom<&'a A, Error = svcplane_model::Error>,
        {
            T::try_from(obj).map(|v| Some(Arc::new(v)))
        }
        Informers {
            services: Informer::new("Service", Box::new(model::<ApiService, Service>), m.clone()),
            pods: Informer::new("Pod", Box::new(model::<ApiPod, Pod>), m.clone()),
            nodes: Informer::new("Node", Box::new(model::<ApiNode, Node>), m.clone()),
            slices: Informer::new("EndpointSlice", Box::new(slim), m.clone()),
            endpoints: Informer::new("Endpoints", Box::new(slim), m.clone()),
        }
    }

    /// Applies one watch event and queues what it touched, for the controllers that care.
    pub(super) fn handle(&self, informers: &mut Informers, update: Update) {
        const ENDPOINTS_AND_SLICES: &[Part] = &[Part::Endpoints, Part::Slices];
        const ENDPOINTS_AND_MIRROR: &[Part] = &[Part::Endpoints, Part::Mirror];
        let mut cache = self.cache();
        let mut queue: Vec<(&[Part], Vec<ObjectKey>)> = Vec::with_capacity(2);
        let rejected = match update {
            Update::Service(e) => {
                let mut store = Services(&mut cache, Vec::new());
                let r = informers.services.handle(*e, &mut store);
                queue.push((&Part::ALL, store.1));
                r
            }
            Update::Pod(e) => {
                let mut store = Pods(&mut cache, Vec::new());
                let r = informers.pods.handle(*e, &mut store);
                queue.push((ENDPOINTS_AND_SLICES, store.1));
                r
            }
            Update::Node(e) => {
                let mut store = Nodes(&mut cache, Vec::new());
                let r = informers.nodes.handle(*e, &mut store);
                queue.push((&[Part::Slices], store.1));
                r
            }
            Update::Slice(e) => {
                let mut store = Slices {
                    controller: self,
                    cache: &mut cache,
                    own: Vec::new(),
                    mirrored: Vec::new(),
                };
                let r = informers.slices.handle(*e, &mut store);
                queue.push((&[Part::Slices], store.own));
                queue.push((&[Part::Mirror], store.mirrored));
                r
            }
            Update::Endpoints(e) => {
                let mut store = EndpointsStore(&mut cache, Vec::new());
                let r = informers.endpoints.handle(*e, &mut store);
                queue.push((ENDPOINTS_AND_MIRROR, store.1));
                r
            }
        };
        drop(cache);
        if let Some(rejected) = rejected {
            self.report_rejected(rejected);
        }
        for (parts, keys) in queue {
            self.enqueue(parts, keys);
        }
    }

    /// A Warning Event on an object that does not convert (the informer logged and counted it).
    fn report_rejected(&self, rejected: Rejected) {
        let Rejected { kind, key, error } = rejected;
        let me = self.clone();
        let reference = events::reference("v1", kind, &key, None);
        let note = format!("svcplane-endpoints ignores this {kind}: {error}");
        tokio::spawn(async move {
            me.inner
                .events
                .warn(&reference, "InvalidObject", note)
                .await;
        });
    }
}
