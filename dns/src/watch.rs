//! Watches that keep the published [`Index`] current: Services, EndpointSlices, Namespaces, and
//! Pods for `--pods verified`. Objects are converted to the model once, run through the
//! model's change trackers, and only what changed is applied to a copy of the index, which is
//! then published. Readers never wait for this.

use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod, Service as ApiService};
use k8s_openapi::api::discovery::v1::EndpointSlice as ApiSlice;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use svcplane_model::tracker::{ChangeTracker, EndpointsTracker};
use svcplane_model::{EndpointSlice, ObjectKey, Pod, Service};
use svcplane_runtime::{Informer, WatchMetrics};

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

/// The watch side's own state: one informer per watch and the trackers they feed.
struct State {
    services: ChangeTracker<ObjectKey, Arc<ZoneService>>,
    slices: EndpointsTracker<ZoneSlice>,
    namespaces: ChangeTracker<ObjectKey, ()>,
    pods: ChangeTracker<ObjectKey, PodFacts>,
    service_informer: Informer<ApiService, Arc<ZoneService>>,
    slice_informer: Informer<ApiSlice, Arc<ZoneSlice>>,
    namespace_informer: Informer<Namespace, ()>,
    pod_informer: Informer<ApiPod, PodFacts>,
    watch_pods: bool,
    watch_slices: bool,
}

/// What the watches cover, from the kubernetes plugin's settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Pods (`pods verified`).
    pub pods: bool,
    /// EndpointSlices (off with `noendpoints`).
    pub endpoints: bool,
    /// `endpoint_pod_names`.
    pub endpoint_pod_names: bool,
}

/// Converts to the model (which validates), then keeps only what the zone answers from.
fn convert_service(obj: &ApiService) -> Result<Option<Arc<ZoneService>>, svcplane_model::Error> {
    Service::try_from(obj).map(|svc| Some(Arc::new(ZoneService::from(&svc))))
}

fn convert_slice(
    obj: &ApiSlice,
    pod_names: bool,
) -> Result<Option<Arc<ZoneSlice>>, svcplane_model::Error> {
    match EndpointSlice::try_from(obj) {
        Ok(mut slice) => {
            if pod_names {
                // `endpoint_pod_names`: an endpoint without a hostname answers to its pod's
                // name (when it fits a label), not its dashed address.
                for e in &mut slice.endpoints {
                    if e.hostname.is_none()
                        && let Some(pod) = &e.target_pod
                        && pod.name.len() < 64
                    {
                        e.hostname = Some(pod.name.clone());
                    }
                }
            }
            Ok(Some(Arc::new(ZoneSlice::from(&slice))))
        }
        // FQDN slices are legitimate, just not served.
        Err(error) if error.reason() == "unsupported_address_type" => {
            tracing::debug!(slice = %ObjectKey::of(obj), %error, "skipping EndpointSlice");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The pod facts `--pods verified` needs: namespace and IPs, while it runs and is not finished.
fn convert_pod(obj: &ApiPod) -> Result<Option<PodFacts>, svcplane_model::Error> {
    let pod = Pod::try_from(obj)?;
    Ok((!pod.is_terminal() && !pod.ips.is_empty()).then_some((pod.key.namespace, pod.ips)))
}

impl State {
    fn new(options: Options, metrics: &WatchMetrics) -> Self {
        let watch_pods = options.pods;
        let pod_names = options.endpoint_pod_names;
        State {
            services: ChangeTracker::new(),
            // Trigger times from before this process started are not its programming latency.
            slices: EndpointsTracker::since(Timestamp::now()),
            namespaces: ChangeTracker::new(),
            pods: ChangeTracker::new(),
            service_informer: Informer::new("Service", Box::new(convert_service), metrics.clone()),
            slice_informer: Informer::new(
                "EndpointSlice",
                Box::new(move |obj| convert_slice(obj, pod_names)),
                metrics.clone(),
            ),
            namespace_informer: Informer::new(
                "Namespace",
                Box::new(|_| Ok(Some(()))),
                metrics.clone(),
            ),
            pod_informer: Informer::new("Pod", Box::new(convert_pod), metrics.clone()),
            watch_pods,
            watch_slices: options.endpoints,
        }
    }

    fn synced(&self) -> bool {
        self.service_informer.is_synced()
            && (!self.watch_slices || self.slice_informer.is_synced())
            && self.namespace_informer.is_synced()
            && (!self.watch_pods || self.pod_informer.is_synced())
    }

    /// Applies one event; an object that does not convert keeps answering from its last good
    /// version (the informer logs and counts it).
    fn handle(&mut self, update: Update) {
        match update {
            Update::Service(e) => drop(self.service_informer.handle(*e, &mut self.services)),
            Update::Slice(e) => drop(self.slice_informer.handle(*e, &mut self.slices)),
            Update::Namespace(e) => drop(self.namespace_informer.handle(*e, &mut self.namespaces)),
            Update::Pod(e) => drop(self.pod_informer.handle(*e, &mut self.pods)),
        }
    }

    /// Applies what changed since the last call to a copy of `current`; `None` if nothing did.
    fn next_index(&mut self, current: &Index, metrics: &Metrics) -> Option<Index> {
        let services = self.services.drain();
        let slices = self.slices.drain();
        let namespaces = self.namespaces.drain();
        let pods = self.pods.drain();
        let newly_synced = !current.is_synced() && self.synced();
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
        // Published right after this returns: "now" is when these changes start answering.
        let now = Timestamp::now();
        for change in slices {
            for t in &change.trigger_times {
                if let Ok(took) = std::time::Duration::try_from(now.duration_since(*t)) {
                    metrics.programmed(took);
                }
            }
            next.apply_endpoints(change.key, change.current);
        }
        for change in namespaces {
            next.apply_namespace(&change.key.name, change.current.is_some());
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
    options: Options,
    metrics: Metrics,
    watch_metrics: WatchMetrics,
    on_synced: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) {
    let mut on_synced = Some(on_synced);
    let services =
        watch(Api::<ApiService>::all(client.clone())).map(|e| Update::Service(Box::new(e)));
    let slices = if options.endpoints {
        watch(Api::<ApiSlice>::all(client.clone()))
            .map(|e| Update::Slice(Box::new(e)))
            .boxed()
    } else {
        stream::pending().boxed()
    };
    let namespaces =
        watch(Api::<Namespace>::all(client.clone())).map(|e| Update::Namespace(Box::new(e)));
    let pods = if options.pods {
        watch(Api::<ApiPod>::all(client))
            .map(|e| Update::Pod(Box::new(e)))
            .boxed()
    } else {
        stream::pending().boxed()
    };
    let mut updates = pin!(
        stream::select_all([services.boxed(), slices, namespaces.boxed(), pods]).ready_chunks(1024)
    );
    let mut shutdown = pin!(shutdown);
    let mut state = State::new(options, &watch_metrics);
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
