//! What the controller knows of the cluster, fed by watches, with the indexes that turn one
//! event into the few Services it affects: pods by label, and Services by one "anchor" label
//! of their selector. No event scans every Service or every pod.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use svcplane_model::{HintMode, LABEL_SERVICE_NAME, Labels, Node, ObjectKey, Pod, Service};

/// `namespace`, label key, label value.
type LabelKey = (Box<str>, Box<str>, Box<str>);

fn label_key(ns: &str, k: &str, v: &str) -> LabelKey {
    (ns.into(), k.into(), v.into())
}

#[derive(Debug, Default)]
pub struct Cache {
    services: HashMap<ObjectKey, Arc<Service>>,
    /// Services by the first label of their selector.
    services_by_anchor: HashMap<LabelKey, HashSet<Box<str>>>,
    pods: HashMap<ObjectKey, Arc<Pod>>,
    /// Pod names by each of their labels.
    pods_by_label: HashMap<LabelKey, HashSet<Box<str>>>,
    /// Nodes by name: zones for endpoints, CPU and readiness for `topology-mode: Auto`.
    nodes: HashMap<Box<str>, Arc<Node>>,
    /// Our slices (both managed-by values) by their own key, and which Service each is of.
    slices: HashMap<ObjectKey, (ObjectKey, Arc<EndpointSlice>)>,
    /// Per Service, the names of its slices.
    slices_by_service: HashMap<ObjectKey, BTreeSet<Box<str>>>,
    endpoints: HashMap<ObjectKey, Arc<Endpoints>>,
}

fn anchor(svc: &Service) -> Option<LabelKey> {
    let (k, v) = svc.selector.as_ref()?.labels().iter().next()?;
    Some(label_key(&svc.key.namespace, k, v))
}

impl Cache {
    pub fn service(&self, key: &ObjectKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &ObjectKey> {
        self.services.keys()
    }

    pub fn endpoints(&self, key: &ObjectKey) -> Option<&Arc<Endpoints>> {
        self.endpoints.get(key)
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Arc<Pod>> {
        self.pods.get(key)
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }

    pub fn pod_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.pods.keys()
    }

    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(|n| &**n)
    }

    pub fn slice_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.slices.keys()
    }

    pub fn slice(&self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        self.slices.get(key).map(|(_, s)| s.clone())
    }

    pub fn endpoints_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.endpoints.keys()
    }

    pub fn slices_of(&self, service: &ObjectKey) -> Vec<Arc<EndpointSlice>> {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let key = ObjectKey::new(&*service.namespace, &**name);
                self.slices.get(&key).map(|(_, s)| s.clone())
            })
            .collect()
    }

    pub fn slice_services(&self) -> impl Iterator<Item = &ObjectKey> {
        self.slices_by_service.keys()
    }

    /// `Some(zone)` for a known Node.
    pub fn node_zone(&self, name: &str) -> Option<Option<&str>> {
        self.nodes.get(name).map(|n| n.zone.as_deref())
    }

    /// Each zone's share of CPU, for `topology-mode: Auto` (see [`crate::desired::zone_ratios`]).
    pub fn zone_ratios(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        crate::desired::zone_ratios(self.nodes.values().map(|n| &**n))
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.pods.len(), self.nodes.len())
    }

    /// Pods a Service selects, found through the selector label with the fewest pods.
    pub fn pods_for(&self, svc: &Service) -> Vec<Arc<Pod>> {
        let Some(selector) = &svc.selector else {
            return Vec::new();
        };
        let ns = &svc.key.namespace;
        let narrowest = selector
            .labels()
            .iter()
            .map(|(k, v)| self.pods_by_label.get(&label_key(ns, k, v)))
            .min_by_key(|set| set.map_or(0, HashSet::len));
        let Some(Some(names)) = narrowest else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| self.pods.get(&ObjectKey::new(&**ns, &**name)))
            .filter(|p| selector.matches(&p.labels))
            .cloned()
            .collect()
    }

    /// Services whose selector matches `labels` in `ns`.
    fn services_selecting(&self, ns: &str, labels: &Labels, out: &mut HashSet<ObjectKey>) {
        for (k, v) in labels.iter() {
            for name in self
                .services_by_anchor
                .get(&label_key(ns, k, v))
                .into_iter()
                .flatten()
            {
                let key = ObjectKey::new(ns, &**name);
                if let Some(svc) = self.services.get(&key)
                    && svc.selector.as_ref().is_some_and(|s| s.matches(labels))
                {
                    out.insert(key);
                }
            }
        }
    }

    /// Sets or removes a Service; returns the keys to sync.
    pub fn apply_service(&mut self, key: ObjectKey, svc: Option<Arc<Service>>) -> Vec<ObjectKey> {
        let old = match &svc {
            Some(s) => self.services.insert(key.clone(), s.clone()),
            None => self.services.remove(&key),
        };
        if let Some(a) = old.as_deref().and_then(anchor)
            && let Some(set) = self.services_by_anchor.get_mut(&a)
        {
            set.remove(&key.name);
            if set.is_empty() {
                self.services_by_anchor.remove(&a);
            }
        }
        if let Some(a) = svc.as_deref().and_then(anchor) {
            self.services_by_anchor
                .entry(a)
                .or_default()
                .insert(key.name.clone());
        }
        vec![key]
    }

    fn index_pod(&mut self, pod: &Pod, add: bool) {
        for (k, v) in pod.labels.iter() {
            let lk = label_key(&pod.key.namespace, k, v);
            if add {
                self.pods_by_label
                    .entry(lk)
                    .or_default()
                    .insert(pod.key.name.clone());
            } else if let Some(set) = self.pods_by_label.get_mut(&lk) {
                set.remove(&pod.key.name);
                if set.is_empty() {
                    self.pods_by_label.remove(&lk);
                }
            }
        }
    }

    /// Sets or removes a pod; returns the Services whose endpoints may change: those selecting
    /// it before or after, when anything the endpoints show changed.
    pub fn apply_pod(&mut self, key: ObjectKey, pod: Option<Arc<Pod>>) -> Vec<ObjectKey> {
        let old = match &pod {
            Some(p) => self.pods.insert(key.clone(), p.clone()),
            None => self.pods.remove(&key),
        };
        if old.as_deref() == pod.as_deref() {
            return Vec::new();
        }
        let mut touched = HashSet::new();
        if let Some(old) = &old {
            self.index_pod(old, false);
            self.services_selecting(&key.namespace, &old.labels, &mut touched);
        }
        if let Some(new) = &pod {
            self.index_pod(new, true);
            self.services_selecting(&key.namespace, &new.labels, &mut touched);
        }
        touched.into_iter().collect()
    }

    /// Sets or removes a Node; returns the `topology-mode: Auto` Services when what their
    /// hints are allocated by changed (a zone's CPU, a Node's readiness or zone). Zone changes
    /// reach other endpoints at the next sync of their Services, as upstream; a Node that
    /// appears unblocks the pods waiting for it through the retry of their Services.
    pub fn apply_node(&mut self, name: &str, node: Option<Arc<Node>>) -> Vec<ObjectKey> {
        let old = match &node {
            Some(n) => self.nodes.insert(name.into(), n.clone()),
            None => self.nodes.remove(name),
        };
        let weight = |n: &Node| {
            (
                n.zone.clone(),
                n.allocatable_cpu_millis,
                n.ready,
                n.control_plane,
            )
        };
        if old.as_deref().map(weight) == node.as_deref().map(weight) {
            return Vec::new();
        }
        self.services
            .values()
            .filter(|s| s.hint_mode() == HintMode::Auto)
            .map(|s| s.key.clone())
            .collect()
    }

    /// Sets or removes one of our slices; returns the Services it belongs to, before and after
    /// (relabelling can move a slice).
    pub fn apply_slice(
        &mut self,
        key: ObjectKey,
        slice: Option<Arc<EndpointSlice>>,
    ) -> Vec<ObjectKey> {
        let mut touched = Vec::new();
        if let Some((service, _)) = self.slices.remove(&key) {
            if let Some(names) = self.slices_by_service.get_mut(&service) {
                names.remove(&key.name);
                if names.is_empty() {
                    self.slices_by_service.remove(&service);
                }
            }
            touched.push(service);
        }
        let service = slice.as_ref().and_then(|s| {
            let name = s.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
            Some(ObjectKey::new(&*key.namespace, name.as_str()))
        });
        if let (Some(slice), Some(service)) = (slice, service) {
            self.slices_by_service
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone());
            self.slices.insert(key, (service.clone(), slice));
            if !touched.contains(&service) {
                touched.push(service);
            }
        }
        touched
    }

    pub fn apply_endpoints(
        &mut self,
        key: ObjectKey,
        ep: Option<Arc<Endpoints>>,
    ) -> Vec<ObjectKey> {
        match ep {
            Some(e) => self.endpoints.insert(key.clone(), e),
            None => self.endpoints.remove(&key),
        };
        vec![key]
    }
}

#[cfg(test)]
mod tests;
