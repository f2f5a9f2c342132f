//! The controller process core: watches feed the [`Cache`], events queue the Services they
//! touch, and workers sync one Service at a time: its Endpoints, its EndpointSlices and, for
//! Services without a selector, the mirror of someone else's Endpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    Endpoints, Node as ApiNode, Pod as ApiPod, Service as ApiService,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use svcplane_model::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_MANAGED_BY, ObjectKey, Pod, Service, ServiceType,
};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::desired::{
    HintMode, address_type_name, address_types, auto_hints, hint_mode, is_headless, slice_groups,
};
use crate::endpoints::{self as v1, MAX_ADDRESSES};
use crate::metrics::Metrics;
use crate::mirror;
use crate::slices::{self, LABEL_HEADLESS, Plan};
use svcplane_runtime::watch;

/// `endpoints.kubernetes.io/managed-by` on the Endpoints we write.
pub const ENDPOINTS_MANAGED_BY: &str = "svcplane-endpoints";
pub const LABEL_ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Endpoints used as leader-election locks are nobody's endpoints.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_endpoints_per_slice: usize,
    pub workers: usize,
    pub resync: Duration,
    /// `endpointslice.kubernetes.io/managed-by` of the slices we own.
    pub slice_manager: String,
    /// The same for mirrored slices.
    pub mirror_manager: String,
    /// Turns the Endpoints (v1) controller off.
    pub endpoints: bool,
    pub mirroring: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_endpoints_per_slice: 100,
            workers: 5,
            resync: Duration::from_secs(300),
            slice_manager: "endpointslice.svcplane.dev".into(),
            mirror_manager: "endpointslicemirroring.svcplane.dev".into(),
            endpoints: true,
            mirroring: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("EndpointSlice cache is out of date for {0}")]
    Stale(ObjectKey),
    #[error("{0} pods wait for Nodes not yet seen")]
    MissingNodes(usize),
}

/// Per-Service memory that outlives one sync.
#[derive(Debug, Default)]
struct Trackers {
    /// Slice UID → generation we expect to read back (or `None`: we deleted it).
    generations: HashMap<ObjectKey, HashMap<String, Option<i64>>>,
    /// Creation time and pod Ready transition times seen at the last sync.
    triggers: HashMap<ObjectKey, TriggerState>,
    /// For `topology-mode: Auto` Services: why hints are off (`None`: they are on).
    hints: HashMap<ObjectKey, Option<String>>,
}

#[derive(Debug, Default)]
struct TriggerState {
    created: Option<Timestamp>,
    pods: HashMap<Box<str>, Timestamp>,
}

/// Upstream's trigger-time rule: on a Service's first sync, its creation time; afterwards the
/// earliest Ready transition (or creation time) that moved since the last sync.
fn trigger_time(
    state: &mut HashMap<ObjectKey, TriggerState>,
    svc: &Service,
    pods: &[Arc<Pod>],
) -> Option<Timestamp> {
    let first = !state.contains_key(&svc.key);
    let entry = state.entry(svc.key.clone()).or_default();
    let mut earliest: Option<Timestamp> = None;
    let mut consider = |t: Timestamp| {
        earliest = Some(earliest.map_or(t, |e: Timestamp| e.min(t)));
    };
    if svc.created != entry.created
        && let Some(c) = svc.created
    {
        consider(c);
    }
    let mut seen = HashMap::with_capacity(pods.len());
    for pod in pods {
        if let Some(t) = pod.ready_since {
            if entry.pods.get(&pod.key.name) != Some(&t) {
                consider(t);
            }
            seen.insert(pod.key.name.clone(), t);
        }
    }
    entry.created = svc.created;
    entry.pods = seen;
    if first { svc.created } else { earliest }
}

fn format_time(t: Timestamp) -> String {
    t.to_string()
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// API clients: one per controller for writes, each with its own rate limiter (as
/// kube-controller-manager gives each controller its own client), and one for the watches.
#[derive(Clone)]
pub struct Clients {
    pub watch: Client,
    pub endpoints: Client,
    pub slices: Client,
    pub mirror: Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

/// The Controller; clone freely.
#[derive(Clone)]
pub struct Controller {
    clients: Clients,
    cache: Arc<Mutex<Cache>>,
    queue: crate::queue::Queue<ObjectKey>,
    trackers: Arc<Mutex<Trackers>>,
    metrics: Metrics,
    settings: Arc<Settings>,
    recorder: Recorder,
    /// True once every watch has listed: workers start only then, so no sync acts on a
    /// half-listed cache.
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

enum Update {
    Service(Box<Event<ApiService>>),
    Pod(Box<Event<ApiPod>>),
    Node(Box<Event<ApiNode>>),
    Slice(Box<Event<EndpointSlice>>),
    Endpoints(Box<Event<Endpoints>>),
}

/// Keys seen during a re-list, per kind, so objects deleted meanwhile can be removed after.
#[derive(Default)]
struct Relist {
    services: HashSet<ObjectKey>,
    pods: HashSet<ObjectKey>,
    nodes: HashSet<ObjectKey>,
    slices: HashSet<ObjectKey>,
    endpoints: HashSet<ObjectKey>,
}

/// Writes go through here so API errors become sync errors, and writes are counted.
impl Controller {
    pub fn new(clients: Clients, settings: Settings, metrics: Metrics, instance: String) -> Self {
        let reporter = Reporter {
            controller: "svcplane-endpoints".into(),
            instance: Some(instance),
        };
        Controller {
            recorder: Recorder::new(clients.slices.clone(), reporter),
            clients,
            cache: Arc::new(Mutex::new(Cache::default())),
            queue: crate::queue::Queue::new(Duration::from_millis(10), Duration::from_secs(100)),
            trackers: Arc::new(Mutex::new(Trackers::default())),
            metrics,
            settings: Arc::new(settings),
            synced: watch::channel(false).0,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trackers(&self) -> std::sync::MutexGuard<'_, Trackers> {
        self.trackers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        for key in keys {
            self.queue.add(key);
        }
        self.metrics.queue(self.queue.len());
    }

    /// Queues every Service and every Endpoints (leftovers and mirrors).
    pub fn enqueue_all(&self) {
        let keys: Vec<ObjectKey> = {
            let cache = self.cache();
            let mut keys: HashSet<ObjectKey> = cache.services().cloned().collect();
            keys.extend(cache.endpoints_keys().cloned());
            keys.extend(cache.slice_services().cloned());
            keys.into_iter().collect()
        };
        self.enqueue(keys);
    }

    async fn warn(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: String,
    ) {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "could not record an event");
        }
    }

    fn convert<T, A>(&self, kind: &'static str, obj: &A) -> Option<Arc<T>>
    where
        A: Resource + Clone + Send + Sync + 'static,
        for<'a> T: TryFrom<&'a A, Error = svcplane_model::Error>,
        A::DynamicType: Default,
    {
        match T::try_from(obj) {
            Ok(v) => Some(Arc::new(v)),
            Err(error) => {
                let key = key_of(obj);
                tracing::warn!(kind, object = %key, reason = error.reason(), %error, "ignoring an object that does not convert; its last good version stays in use");
                self.metrics.rejected(kind, error.reason());
                let me = self.clone();
                let reference = obj.object_ref(&Default::default());
                let note = format!("svcplane-endpoints ignores this {kind}: {error}");
                tokio::spawn(async move { me.warn(reference, "InvalidObject", note).await });
                None
            }
        }
    }

    fn handle(&self, update: Update, relist: &mut Relist, synced: &mut HashSet<&'static str>) {
        let touched = match update {
            Update::Service(e) => self.on_event(
                *e,
                &mut relist.services,
                "services",
                synced,
                |me, obj| {
                    let key = key_of(obj);
                    // A Service that does not convert keeps its last good version.
                    let svc = me.convert::<Service, _>("Service", obj);
                    svc.map(|s| (key, Some(s)))
                },
                |me, key, svc| me.cache().apply_service(key, svc),
            ),
            Update::Pod(e) => self.on_event(
                *e,
                &mut relist.pods,
                "pods",
                synced,
                |me, obj| {
                    let key = key_of(obj);
                    me.convert::<Pod, _>("Pod", obj).map(|p| (key, Some(p)))
                },
                |me, key, pod| me.cache().apply_pod(key, pod),
            ),
            Update::Node(e) => self.on_event(
                *e,
                &mut relist.nodes,
                "nodes",
                synced,
                |me, obj| {
                    let node = me.convert::<svcplane_model::Node, _>("Node", obj);
                    node.map(|n| (key_of(obj), Some(n)))
                },
                |me, key, node| me.cache().apply_node(&key.name, node),
            ),
            Update::Slice(e) => self.on_event(
                *e,
                &mut relist.slices,
                "endpointslices",
                synced,
                |_, obj| {
                    let mut slice = obj.clone();
                    slice.metadata.managed_fields = None;
                    Some((key_of(obj), Some(Arc::new(slice))))
                },
                |me, key, slice| me.on_slice(key, slice),
            ),
            Update::Endpoints(e) => self.on_event(
                *e,
                &mut relist.endpoints,
                "endpoints",
                synced,
                |_, obj| {
                    let mut ep = obj.clone();
                    ep.metadata.managed_fields = None;
                    Some((key_of(obj), Some(Arc::new(ep))))
                },
                |me, key, ep| me.cache().apply_endpoints(key, ep),
            ),
        };
        self.enqueue(touched);
    }

    /// One watch event: applies it to the cache through `apply`, tracking re-lists so objects
    /// deleted while the watch was down are removed at the end of the list.
    fn on_event<A, T>(
        &self,
        event: Event<A>,
        relist: &mut HashSet<ObjectKey>,
        name: &'static str,
        synced: &mut HashSet<&'static str>,
        convert: impl Fn(&Self, &A) -> Option<(ObjectKey, Option<Arc<T>>)>,
        apply: impl Fn(&Self, ObjectKey, Option<Arc<T>>) -> Vec<ObjectKey>,
    ) -> Vec<ObjectKey>
    where
        A: Resource,
    {
        match event {
            Event::Apply(obj) => match convert(self, &obj) {
                Some((key, value)) => apply(self, key, value),
                None => Vec::new(),
            },
            Event::Delete(obj) => apply(self, key_of(&obj), None),
            Event::Init => {
                relist.clear();
                Vec::new()
            }
            Event::InitApply(obj) => {
                // Nodes, cluster-scoped, get an empty namespace, as in the cache.
                relist.insert(key_of(&obj));
                match convert(self, &obj) {
                    Some((key, value)) => apply(self, key, value),
                    None => Vec::new(),
                }
            }
            Event::InitDone => {
                synced.insert(name);
                let gone = self.known_keys(name, relist);
                let mut touched = Vec::new();
                for key in gone {
                    touched.extend(apply(self, key, None));
                }
                touched
            }
        }
    }

    /// Keys the cache holds of a kind that a finished re-list did not return.
    fn known_keys(&self, name: &str, listed: &HashSet<ObjectKey>) -> Vec<ObjectKey> {
        let cache = self.cache();
        let known: Vec<ObjectKey> = match name {
            "services" => cache.services().cloned().collect(),
            "pods" => cache.pod_keys().cloned().collect(),
            "nodes" => cache.node_names().map(|n| ObjectKey::new("", n)).collect(),
            "endpointslices" => cache.slice_keys().cloned().collect(),
            "endpoints" => cache.endpoints_keys().cloned().collect(),
            _ => Vec::new(),
        };
        known.into_iter().filter(|k| !listed.contains(k)).collect()
    }

    /// A change to one of our slices queues its Service only when it is not our own write
    /// coming back: an unknown slice, a newer generation than we wrote, or a deletion we did
    /// not make.
    fn on_slice(&self, key: ObjectKey, slice: Option<Arc<EndpointSlice>>) -> Vec<ObjectKey> {
        let previous = self.cache().slice(&key);
        let touched = self.cache().apply_slice(key, slice.clone());
        let trackers = self.trackers();
        let ours = |s: &EndpointSlice, svc: &ObjectKey| -> bool {
            let uid = s.metadata.uid.clone().unwrap_or_default();
            let expected = trackers.generations.get(svc).and_then(|m| m.get(&uid));
            match (slice.as_deref(), expected) {
                // Deleted: expected if we deleted it.
                (None, Some(None)) => true,
                (Some(now), Some(Some(generation))) => {
                    now.metadata.generation.unwrap_or(0) <= *generation
                }
                _ => false,
            }
        };
        touched
            .into_iter()
            .filter(|svc| {
                let subject = slice.as_deref().or(previous.as_deref());
                !subject.is_some_and(|s| ours(s, svc))
            })
            .collect()
    }

    /// Runs the watches until `shutdown`; `on_synced` runs once every watch has listed.
    pub async fn watch(&self, on_synced: impl FnOnce(), shutdown: impl Future<Output = ()>) {
        let client = &self.clients.watch;
        let managed = format!(
            "{LABEL_MANAGED_BY} in ({},{})",
            self.settings.slice_manager, self.settings.mirror_manager
        );
        let streams = vec![
            watch(
                Api::<ApiService>::all(client.clone()),
                watcher::Config::default(),
            )
            .map(|e| Update::Service(Box::new(e)))
            .boxed(),
            watch(
                Api::<ApiPod>::all(client.clone()),
                watcher::Config::default(),
            )
            .map(|e| Update::Pod(Box::new(e)))
            .boxed(),
            watch(
                Api::<ApiNode>::all(client.clone()),
                watcher::Config::default(),
            )
            .map(|e| Update::Node(Box::new(e)))
            .boxed(),
            watch(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().labels(&managed),
            )
            .map(|e| Update::Slice(Box::new(e)))
            .boxed(),
            watch(
                Api::<Endpoints>::all(client.clone()),
                watcher::Config::default(),
            )
            .map(|e| Update::Endpoints(Box::new(e)))
            .boxed(),
        ];
        let needed = streams.len();
        let mut updates = pin!(stream::select_all(streams).ready_chunks(512));
        let mut shutdown = pin!(shutdown);
        let mut relist = Relist::default();
        let mut synced = HashSet::new();
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
                self.handle(update, &mut relist, &mut synced);
            }
            if synced.len() == needed
                && let Some(callback) = on_synced.take()
            {
                let (services, pods, nodes) = self.cache().counts();
                tracing::info!(services, pods, nodes, "caches synced");
                self.synced.send_replace(true);
                self.enqueue_all();
                callback();
            }
        }
    }

    /// Runs `workers` sync loops while `leader` is true; returns when `shutdown` resolves.
    pub async fn work(
        &self,
        mut leader: watch::Receiver<bool>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = pin!(shutdown);
        let mut synced = self.synced.subscribe();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = synced.wait_for(|s| *s) => {}
        }
        let resync = self.settings.resync;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        // Without leader election the sender is gone from the start and the value is final.
        let mut final_value = false;
        loop {
            // Wait to lead.
            while !*leader.borrow_and_update() {
                tokio::select! {
                    _ = &mut shutdown => return,
                    changed = leader.changed(), if !final_value => final_value = changed.is_err(),
                }
            }
            tracing::info!("leading: syncing Services");
            self.enqueue_all();
            let workers: Vec<_> = (0..self.settings.workers.max(1))
                .map(|_| {
                    let me = self.clone();
                    tokio::spawn(async move { me.worker().await })
                })
                .collect();
            let lost = loop {
                tokio::select! {
                    _ = &mut shutdown => break false,
                    _ = ticker.tick() => self.enqueue_all(),
                    changed = leader.changed(), if !final_value => {
                        final_value = changed.is_err();
                        if !*leader.borrow_and_update() {
                            break true;
                        }
                    }
                }
            };
            for w in &workers {
                w.abort();
            }
            if !lost {
                return;
            }
            tracing::warn!("lost the lease: stopped writing");
        }
    }

    async fn worker(&self) {
        while let Some((key, since)) = self.queue.next().await {
            self.metrics.queue(self.queue.len());
            let span = tracing::info_span!("sync", service = %key);
            let result = {
                let _enter = span.enter();
                tracing::debug!("syncing");
                drop(_enter);
                self.sync(&key).await
            };
            let ok = result.is_ok();
            if let Err(error) = &result {
                let _enter = span.enter();
                match error {
                    // Expected right after our own writes, until their events arrive.
                    SyncError::Stale(_) => tracing::debug!(%error, "retrying with backoff"),
                    SyncError::Api(kube::Error::Api(s)) if s.code == 409 => {
                        tracing::debug!(%error, "conflict; retrying with backoff")
                    }
                    _ => tracing::warn!(%error, "sync failed; retrying with backoff"),
                }
            }
            self.queue.done(&key, ok);
            self.metrics.finished(ok, since.elapsed());
        }
    }

    /// Syncs one Service key: its Endpoints, its slices and its mirror.
    pub async fn sync(&self, key: &ObjectKey) -> Result<(), SyncError> {
        let (svc, pods, current_endpoints, slices) = {
            let cache = self.cache();
            let svc = cache.service(key).cloned();
            let pods = svc
                .as_deref()
                .map(|s| cache.pods_for(s))
                .unwrap_or_default();
            (
                svc,
                pods,
                cache.endpoints(key).cloned(),
                cache.slices_of(key),
            )
        };
        let (own, mirrored): (Vec<_>, Vec<_>) = slices.into_iter().partition(|s| {
            s.labels().get(LABEL_MANAGED_BY).map(String::as_str)
                == Some(self.settings.slice_manager.as_str())
        });
        let selected = svc
            .as_deref()
            .filter(|s| s.type_ != ServiceType::ExternalName && s.selector.is_some());
        let trigger = match selected {
            Some(s) => trigger_time(&mut self.trackers().triggers, s, &pods),
            None => {
                if svc.is_none() {
                    let mut trackers = self.trackers();
                    trackers.triggers.remove(key);
                    trackers.hints.remove(key);
                }
                None
            }
        };

        // The three write through their own clients, at the same time, as three controllers
        // would: a readiness flip reaches the slice without waiting for the Endpoints write.
        let endpoints = async {
            if !self.settings.endpoints {
                return Ok(());
            }
            let started = Instant::now();
            let result = self
                .sync_endpoints(
                    key,
                    svc.as_deref(),
                    selected,
                    &pods,
                    current_endpoints.as_deref(),
                    trigger,
                )
                .await;
            self.metrics
                .synced("endpoints", result.is_ok(), started.elapsed());
            result
        };
        let slices = async {
            let started = Instant::now();
            let result = self
                .sync_slices(key, svc.as_deref(), selected, &pods, &own, trigger)
                .await;
            self.metrics
                .synced("endpointslice", result.is_ok(), started.elapsed());
            if let (Err(error), Some(s)) = (&result, svc.as_deref())
                && !matches!(error, SyncError::Stale(_) | SyncError::MissingNodes(_))
            {
                self.warn(
                    service_reference(s),
                    "FailedToUpdateEndpointSlices",
                    format!("Error updating Endpoint Slices for Service {key}: {error}"),
                )
                .await;
            }
            result
        };
        let mirror = async {
            if !self.settings.mirroring {
                return Ok(());
            }
            let started = Instant::now();
            let result = self
                .sync_mirror(key, svc.as_deref(), current_endpoints.as_deref(), &mirrored)
                .await;
            self.metrics
                .synced("mirroring", result.is_ok(), started.elapsed());
            result
        };
        let (e, s, m) = tokio::join!(endpoints, slices, mirror);
        let first_error = e.err().or(s.err()).or(m.err());
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn sync_endpoints(
        &self,
        key: &ObjectKey,
        svc: Option<&Service>,
        selected: Option<&Service>,
        pods: &[Arc<Pod>],
        current: Option<&Endpoints>,
        trigger: Option<Timestamp>,
    ) -> Result<(), SyncError> {
        let api: Api<Endpoints> = Api::namespaced(self.clients.endpoints.clone(), &key.namespace);
        let Some(svc) = svc else {
            // No Service: its Endpoints go (upstream deletes any Endpoints without a Service,
            // except leader-election locks).
            if let Some(ep) = current
                && !ep.annotations().contains_key(ANNOTATION_LEADER)
            {
                self.metrics.wrote("delete", "endpoints");
                match api.delete(&key.name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                self.cache().apply_endpoints(key.clone(), None);
            }
            return Ok(());
        };
        // ExternalName or no selector: someone else's Endpoints, left alone.
        let Some(svc) = selected.filter(|s| s.key == svc.key) else {
            return Ok(());
        };
        let desired = v1::desired(svc, pods.iter().map(|p| &**p));
        let mut labels: BTreeMap<String, String> = svc.labels.to_map();
        if is_headless(svc) {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        } else {
            labels.remove(LABEL_HEADLESS);
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
                return Ok(());
            }
        }
        let mut annotations = current.map(|c| c.annotations().clone()).unwrap_or_default();
        match trigger {
            Some(t) => {
                annotations.insert(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.into(), format_time(t))
            }
            None => annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME),
        };
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
        let pp = PostParams::default();
        let result = if current.is_some() {
            self.metrics.wrote("update", "endpoints");
            api.replace(&key.name, &pp, &object).await
        } else {
            self.metrics.wrote("create", "endpoints");
            api.create(&pp, &object).await
        };
        match result {
            Ok(written) => {
                // Written through to the cache: the next sync compares with what we wrote even
                // if its watch event has not arrived yet (no duplicate create, no conflict).
                self.cache()
                    .apply_endpoints(key.clone(), Some(Arc::new(written)));
                Ok(())
            }
            // The namespace is going away; nothing to do.
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                Ok(())
            }
            Err(e) => {
                let reason = if current.is_some() {
                    "FailedToUpdateEndpoint"
                } else {
                    "FailedToCreateEndpoint"
                };
                self.warn(
                    endpoints_reference(key),
                    reason,
                    format!("Failed to write endpoint {key}: {e}"),
                )
                .await;
                Err(e.into())
            }
        }
    }

    fn is_stale(&self, key: &ObjectKey, listed: &[Arc<EndpointSlice>]) -> bool {
        let trackers = self.trackers();
        let Some(expected) = trackers.generations.get(key) else {
            return false;
        };
        let mut seen = HashSet::new();
        for slice in listed {
            let uid = slice.metadata.uid.clone().unwrap_or_default();
            match expected.get(&uid) {
                Some(None) => return true,
                Some(Some(g)) if slice.metadata.generation.unwrap_or(0) < *g => return true,
                _ => {}
            }
            seen.insert(uid);
        }
        expected
            .iter()
            .any(|(uid, g)| g.is_some() && !seen.contains(uid))
    }

    async fn sync_slices(
        &self,
        key: &ObjectKey,
        svc: Option<&Service>,
        selected: Option<&Service>,
        pods: &[Arc<Pod>],
        own: &[Arc<EndpointSlice>],
        trigger: Option<Timestamp>,
    ) -> Result<(), SyncError> {
        let listed: Vec<Arc<EndpointSlice>> = own
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        if svc.is_none() {
            // The garbage collector removes them through their owner reference; without one
            // (a control plane without it) they would stay, so they are deleted here too.
            let plan = Plan {
                delete: listed,
                ..Plan::default()
            };
            let result = self.execute(&self.clients.slices, key, plan, None).await;
            self.trackers().generations.remove(key);
            return result;
        }
        let Some(svc) = selected else {
            return Ok(());
        };
        if self.is_stale(key, &listed) {
            return Err(SyncError::Stale(key.clone()));
        }
        let mut missing = 0;
        let mut hint_failure = None;
        let desired: Vec<_> = {
            let cache = self.cache();
            let zone_of = |node: &str| cache.node_zone(node);
            let auto = hint_mode(svc) == HintMode::Auto;
            let ratios = if auto { cache.zone_ratios() } else { None };
            address_types(svc)
                .into_iter()
                .map(|t| {
                    let mut groups = slice_groups(svc, pods.iter().map(|p| &**p), t, &zone_of);
                    missing = missing.max(groups.missing_nodes);
                    if auto && let Err(reason) = auto_hints(&mut groups, ratios.as_ref()) {
                        hint_failure =
                            Some(format!("{reason}, addressType: {}", address_type_name(t)));
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
            self.settings.max_endpoints_per_slice,
            &self.settings.slice_manager,
        );
        self.execute(&self.clients.slices, key, plan, trigger)
            .await?;
        if missing > 0 {
            return Err(SyncError::MissingNodes(missing));
        }
        Ok(())
    }

    /// Sends a plan: creates, updates, then deletes; the first error stops it.
    async fn execute(
        &self,
        client: &Client,
        key: &ObjectKey,
        plan: Plan,
        trigger: Option<Timestamp>,
    ) -> Result<(), SyncError> {
        if plan.is_empty() {
            return Ok(());
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &key.namespace);
        let pp = PostParams::default();
        let stamp = |slice: &mut EndpointSlice| {
            let annotations = slice
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            match trigger {
                Some(t) => {
                    annotations.insert(ANNOTATION_LAST_CHANGE_TRIGGER_TIME.into(), format_time(t));
                }
                None => {
                    annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME);
                }
            }
            if annotations.is_empty() {
                slice.metadata.annotations = None;
            }
            slice.metadata.managed_fields = None;
        };
        for mut slice in plan.create {
            stamp(&mut slice);
            self.metrics.wrote("create", "endpointslices");
            match api.create(&pp, &slice).await {
                Ok(created) => self.expect(key, created),
                Err(kube::Error::Api(s))
                    if s.code == 403 && s.message.contains("being terminated") =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        for mut slice in plan.update {
            stamp(&mut slice);
            let name = slice.metadata.name.clone().unwrap_or_default();
            self.metrics.wrote("update", "endpointslices");
            let updated = api.replace(&name, &pp, &slice).await?;
            self.expect(key, updated);
        }
        for slice in plan.delete {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let uid = slice.metadata.uid.clone();
            self.metrics.wrote("delete", "endpointslices");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            self.cache()
                .apply_slice(ObjectKey::new(&*key.namespace, name.as_str()), None);
            if let Some(uid) = uid {
                self.trackers()
                    .generations
                    .entry(key.clone())
                    .or_default()
                    .insert(uid, None);
            }
        }
        Ok(())
    }

    /// Tells the Service's owner when Auto hints turn off or on again, once per change (upstream
    /// sends `TopologyAwareHintsDisabled` / `TopologyAwareHintsEnabled`).
    async fn hints_event(&self, svc: &Service, failure: Option<String>) {
        let changed = {
            let mut trackers = self.trackers();
            let auto = hint_mode(svc) == HintMode::Auto;
            let state = if auto { Some(failure.clone()) } else { None };
            let previous = match &state {
                Some(s) => trackers.hints.insert(svc.key.clone(), s.clone()),
                None => trackers.hints.remove(&svc.key),
            };
            previous != state && state.is_some()
        };
        if !changed {
            return;
        }
        match failure {
            Some(reason) => {
                self.warn(service_reference(svc), "TopologyAwareHintsDisabled", reason)
                    .await
            }
            None => {
                let event = KubeEvent {
                    type_: EventType::Normal,
                    reason: "TopologyAwareHintsEnabled".into(),
                    note: Some("Topology Aware Hints has been enabled".into()),
                    action: "Sync".into(),
                    secondary: None,
                };
                if let Err(error) = self.recorder.publish(&event, &service_reference(svc)).await {
                    tracing::debug!(%error, "could not record an event");
                }
            }
        }
    }

    /// Remembers the generation a write got, and writes the slice through to the cache.
    fn expect(&self, key: &ObjectKey, mut written: EndpointSlice) {
        if let Some(uid) = written.metadata.uid.clone() {
            self.trackers()
                .generations
                .entry(key.clone())
                .or_default()
                .insert(uid, Some(written.metadata.generation.unwrap_or(0)));
        }
        written.metadata.managed_fields = None;
        let slice_key = key_of(&written);
        self.cache().apply_slice(slice_key, Some(Arc::new(written)));
    }

    async fn sync_mirror(
        &self,
        key: &ObjectKey,
        svc: Option<&Service>,
        endpoints: Option<&Endpoints>,
        mirrored: &[Arc<EndpointSlice>],
    ) -> Result<(), SyncError> {
        let source = endpoints.filter(|ep| mirror::should_mirror(ep, svc));
        let plan = match source {
            Some(ep) => {
                let desired = mirror::desired(ep, &self.settings.mirror_manager, MAX_ADDRESSES);
                if desired.skipped > 0 {
                    self.warn(
                        endpoints_reference(key),
                        "TooManyAddressesToMirror",
                        format!(
                            "A max of {MAX_ADDRESSES} addresses can be mirrored to EndpointSlices per Endpoints subset. {} addresses were skipped",
                            desired.skipped
                        ),
                    )
                    .await;
                }
                if desired.invalid > 0 {
                    self.warn(
                        endpoints_reference(key),
                        "InvalidIPAddress",
                        format!(
                            "Skipped {} invalid IP addresses when mirroring to EndpointSlices",
                            desired.invalid
                        ),
                    )
                    .await;
                }
                mirror::plan(desired.slices, mirrored)
            }
            None => Plan {
                delete: mirrored.to_vec(),
                ..Plan::default()
            },
        };
        self.execute(&self.clients.mirror, key, plan, None).await
    }
}

fn service_reference(svc: &Service) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(svc.key.namespace.to_string()),
        name: Some(svc.key.name.to_string()),
        uid: svc.uid.as_deref().map(str::to_owned),
        ..Default::default()
    }
}

fn endpoints_reference(key: &ObjectKey) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Endpoints".into()),
        namespace: Some(key.namespace.to_string()),
        name: Some(key.name.to_string()),
        ..Default::default()
    }
}
