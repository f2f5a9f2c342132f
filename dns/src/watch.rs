//! Watches that keep the published [`Index`] current: Services, EndpointSlices, Namespaces, and
//! Pods for `--pods verified`. Objects are converted to the model once, run through the
//! model's change trackers, and only what changed is applied to a copy of the index, which is
//! then published. Readers never wait for this.

use std::collections::HashSet;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod, Service as ApiService};
use k8s_openapi::api::discovery::v1::EndpointSlice as ApiSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{EndpointSlice, ObjectKey, Pod, Service};

use crate::Index;
use crate::metrics::Metrics;
use crate::zone::{ZoneService, ZoneSlice};

/// One event from any of the watches (boxed: API objects are large and sizes differ).
enum Update {
    Service(Box<Event<ApiService>>),
    Slice(Box<Event<ApiSlice>>),
    Namespace(Box<Event<Namespace>>),
    Pod(Box<Event<ApiPod>>),
}

/// What `--pods verified` keeps of a pod: its namespace and IPs.
type PodFacts = (Box<str>, Vec<IpAddr>);

/// The watch side's own state: the trackers and what a re-list is collecting.
struct State {
    services: ChangeTracker<ObjectKey, Arc<ZoneService>>,
    slices: EndpointsTracker<ZoneSlice>,
    namespaces: ChangeTracker<Box<str>, ()>,
    pods: ChangeTracker<ObjectKey, PodFacts>,
    relist_services: Vec<(ObjectKey, Arc<ZoneService>)>,
    relist_slices: Vec<Arc<ZoneSlice>>,
    relist_namespaces: Vec<(Box<str>, ())>,
    relist_pods: Vec<(ObjectKey, PodFacts)>,
    /// Which watches have completed their first list.
    synced: HashSet<&'static str>,
    needed: usize,
}

fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Converts to the model (which validates), then keeps only what the zone answers from.
fn convert_service(obj: &ApiService) -> Option<Arc<ZoneService>> {
    Service::try_from(obj)
        .map(|svc| Arc::new(ZoneService::from(&svc)))
        .map_err(|error| {
            tracing::warn!(service = %key_of(obj), reason = error.reason(), %error, "ignoring a Service that does not convert; its previous version keeps answering");
        })
        .ok()
}

fn convert_slice(obj: &ApiSlice) -> Option<Arc<ZoneSlice>> {
    EndpointSlice::try_from(obj)
        .map(|slice| Arc::new(ZoneSlice::from(&slice)))
        .map_err(|error| {
            // FQDN slices are legitimate, just not served.
            if error.reason() == "unsupported_address_type" {
                tracing::debug!(slice = %key_of(obj), %error, "skipping EndpointSlice");
            } else {
                tracing::warn!(slice = %key_of(obj), reason = error.reason(), %error, "ignoring an EndpointSlice that does not convert");
            }
        })
        .ok()
}

/// The pod facts `--pods verified` needs: namespace and IPs, while it runs and is not finished.
fn convert_pod(obj: &ApiPod) -> Option<PodFacts> {
    match Pod::try_from(obj) {
        Ok(pod) if !pod.is_terminal() && !pod.ips.is_empty() => Some((pod.key.namespace, pod.ips)),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(pod = %key_of(obj), reason = error.reason(), %error, "ignoring a Pod that does not convert");
            None
        }
    }
}

impl State {
    fn new(watch_pods: bool) -> Self {
        State {
            services: ChangeTracker::new(),
            slices: EndpointsTracker::new(),
            namespaces: ChangeTracker::new(),
            pods: ChangeTracker::new(),
            relist_services: Vec::new(),
            relist_slices: Vec::new(),
            relist_namespaces: Vec::new(),
            relist_pods: Vec::new(),
            synced: HashSet::new(),
            needed: if watch_pods { 4 } else { 3 },
        }
    }

    fn handle(&mut self, update: Update) {
        match update {
            Update::Service(event) => match *event {
                Event::Apply(obj) => {
                    if let Some(svc) = convert_service(&obj) {
                        self.services.apply(key_of(&obj), Some(svc));
                    }
                }
                Event::Delete(obj) => self.services.apply(key_of(&obj), None),
                Event::Init => self.relist_services.clear(),
                Event::InitApply(obj) => {
                    if let Some(svc) = convert_service(&obj) {
                        self.relist_services.push((key_of(&obj), svc));
                    } else if let Some(old) = self.services.get(&key_of(&obj)) {
                        // Keep the last good version through a re-list too.
                        self.relist_services.push((key_of(&obj), old.clone()));
                    }
                }
                Event::InitDone => {
                    self.services.resync(self.relist_services.drain(..));
                    self.synced.insert("services");
                }
            },
            Update::Slice(event) => match *event {
                Event::Apply(obj) => {
                    if let Some(slice) = convert_slice(&obj) {
                        self.slices.apply(key_of(&obj), Some(slice));
                    }
                }
                Event::Delete(obj) => self.slices.apply(key_of(&obj), None),
                Event::Init => self.relist_slices.clear(),
                Event::InitApply(obj) => self.relist_slices.extend(convert_slice(&obj)),
                Event::InitDone => {
                    self.slices.resync(self.relist_slices.drain(..));
                    self.synced.insert("endpointslices");
                }
            },
            Update::Namespace(event) => match *event {
                Event::Apply(obj) => self.namespaces.apply(obj.name_any().into(), Some(())),
                Event::Delete(obj) => self.namespaces.apply(obj.name_any().into(), None),
                Event::Init => self.relist_namespaces.clear(),
                Event::InitApply(obj) => self.relist_namespaces.push((obj.name_any().into(), ())),
                Event::InitDone => {
                    self.namespaces.resync(self.relist_namespaces.drain(..));
                    self.synced.insert("namespaces");
                }
            },
            Update::Pod(event) => match *event {
                Event::Apply(obj) => self.pods.apply(key_of(&obj), convert_pod(&obj)),
                Event::Delete(obj) => self.pods.apply(key_of(&obj), None),
                Event::Init => self.relist_pods.clear(),
                Event::InitApply(obj) => {
                    if let Some(pod) = convert_pod(&obj) {
                        self.relist_pods.push((key_of(&obj), pod));
                    }
                }
                Event::InitDone => {
                    self.pods.resync(self.relist_pods.drain(..));
                    self.synced.insert("pods");
                }
            },
        }
    }

    /// Applies what changed since the last call to a copy of `current`; `None` if nothing did.
    fn next_index(&mut self, current: &Index, metrics: &Metrics) -> Option<Index> {
        let services = self.services.drain();
        let slices = self.slices.drain();
        let namespaces = self.namespaces.drain();
        let pods = self.pods.drain();
        let newly_synced = !current.is_synced() && self.synced.len() == self.needed;
        if services.is_empty()
            && slices.is_empty()
            && namespaces.is_empty()
            && pods.is_empty()
            && !newly_synced
        {
            return None;
        }
        let data_changed = !(services.is_empty() && slices.is_empty() && pods.is_empty());
        // O(1): the index's tables are persistent maps.
        let mut next = current.clone();
        for change in services {
            next.apply_service(change.key, change.current);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        for change in slices {
            // The newest trigger time among the Service's slices is the change now programmed.
            let triggered = change
                .current
                .iter()
                .flat_map(|e| e.slices.iter())
                .filter_map(|s| {
                    s.trigger_time
                        .as_deref()?
                        .parse::<k8s_openapi::jiff::Timestamp>()
                        .ok()
                })
                .max();
            if let Some(t) = triggered
                && let Ok(took) = std::time::Duration::try_from(now.duration_since(t))
            {
                metrics.programmed(took);
            }
            next.apply_endpoints(change.key, change.current);
        }
        for change in namespaces {
            next.apply_namespace(&change.key, change.current.is_some());
        }
        for change in pods {
            if let Some((ns, ips)) = &change.previous {
                for ip in ips {
                    next.apply_pod_ip(ns, *ip, false);
                }
            }
            if let Some((ns, ips)) = &change.current {
                for ip in ips {
                    next.apply_pod_ip(ns, *ip, true);
                }
            }
        }
        if data_changed {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            next.set_serial(now as u32);
        }
        if newly_synced {
            tracing::info!("initial sync done; answering NXDOMAIN for missing names from now on");
            next.set_synced();
        }
        Some(next)
    }
}

fn watch<K>(api: Api<K>) -> impl Stream<Item = Event<K>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    svcplane_runtime::watch(api, watcher::Config::default())
}

/// Runs the watches until `shutdown` resolves, publishing each new index into `index`.
/// Events that arrive together are applied as one batch. `on_synced` runs once, when every
/// watch has listed for the first time.
pub async fn run(
    client: Client,
    index: Arc<ArcSwap<Index>>,
    watch_pods: bool,
    metrics: Metrics,
    on_synced: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) {
    let mut on_synced = Some(on_synced);
    let services =
        watch(Api::<ApiService>::all(client.clone())).map(|e| Update::Service(Box::new(e)));
    let slices = watch(Api::<ApiSlice>::all(client.clone())).map(|e| Update::Slice(Box::new(e)));
    let namespaces =
        watch(Api::<Namespace>::all(client.clone())).map(|e| Update::Namespace(Box::new(e)));
    let pods = if watch_pods {
        watch(Api::<ApiPod>::all(client))
            .map(|e| Update::Pod(Box::new(e)))
            .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut updates = pin!(
        stream::select_all([services.boxed(), slices.boxed(), namespaces.boxed(), pods])
            .ready_chunks(1024)
    );
    let mut shutdown = pin!(shutdown);
    let mut state = State::new(watch_pods);
    loop {
        let batch = tokio::select! {
            _ = &mut shutdown => return,
            batch = updates.next() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        for update in batch {
            state.handle(update);
        }
        let current = index.load();
        if let Some(next) = state.next_index(&current, &metrics) {
            metrics.set_services(state.services.len());
            let synced = next.is_synced();
            index.store(Arc::new(next));
            if synced && let Some(callback) = on_synced.take() {
                callback();
            }
        }
    }
}
