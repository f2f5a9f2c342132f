//! What the cluster zone answers from, updated one change at a time.

use std::net::IpAddr;
use std::sync::Arc;

use imbl::{HashMap, HashSet};

use svcplane_model::dns::dashed_ip;
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{Endpoint, ObjectKey, Service};

/// Services, their ready endpoints, namespaces and (for `--pods verified`) pod IPs, with the
/// reverse maps PTR answers need. Each `apply_*` touches only the one object it is given.
///
/// The tables are persistent maps: a clone shares everything and costs O(1), and an update
/// copies only the path it changes. A writer clones the published index, applies a batch and
/// publishes the result, while readers keep answering from the version they hold, lock-free.
#[derive(Debug, Default, Clone)]
pub struct Index {
    /// namespace → name → Service: looked up by `&str` on every query, without allocating.
    services: HashMap<Box<str>, HashMap<Box<str>, Arc<Service>>>,
    endpoints: HashMap<ObjectKey, ServiceEndpoints>,
    namespaces: HashSet<Box<str>>,
    /// Pod IP → namespaces with a pod of that IP (`--pods verified`).
    pods: HashMap<IpAddr, HashSet<Box<str>>>,
    /// Cluster IP → its Service.
    cluster_ips: HashMap<IpAddr, ObjectKey>,
    /// Ready endpoint IP → (Service, endpoint label) for every Service it backs.
    endpoint_ips: HashMap<IpAddr, Vec<(ObjectKey, Box<str>)>>,
    synced: bool,
    /// SOA serial: when the data last changed, in Unix seconds.
    serial: u32,
}

/// The label an endpoint answers to: its hostname, else its dashed address.
pub(crate) fn endpoint_label(endpoint: &Endpoint, ip: IpAddr) -> Box<str> {
    match &endpoint.hostname {
        Some(h) => h.clone(),
        None => dashed_ip(ip).into(),
    }
}

/// Ready endpoints of a Service as (endpoint, address) pairs, across all its slices.
pub(crate) fn ready_addresses(
    endpoints: &ServiceEndpoints,
) -> impl Iterator<Item = (&Endpoint, IpAddr)> {
    endpoints
        .slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.is_ready())
        .flat_map(|e| e.addresses.iter().map(move |ip| (e, *ip)))
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets or removes a Service.
    pub fn apply_service(&mut self, key: ObjectKey, service: Option<Arc<Service>>) {
        let in_namespace = self.services.entry(key.namespace.clone()).or_default();
        let old = match service {
            Some(svc) => {
                for ip in svc.cluster_ips() {
                    self.cluster_ips.insert(*ip, key.clone());
                }
                in_namespace
                    .insert(key.name.clone(), svc.clone())
                    .filter(|old| !Arc::ptr_eq(old, &svc))
                    .map(|old| (old, Some(svc)))
            }
            None => in_namespace.remove(&key.name).map(|old| (old, None)),
        };
        if in_namespace.is_empty() {
            self.services.remove(&key.namespace);
        }
        // Drop the reverse entries of addresses the Service no longer holds.
        if let Some((old, new)) = old {
            for ip in old.cluster_ips() {
                let kept = new.as_ref().is_some_and(|n| n.cluster_ips().contains(ip));
                if !kept && self.cluster_ips.get(ip) == Some(&key) {
                    self.cluster_ips.remove(ip);
                }
            }
        }
    }

    /// Sets or removes the endpoints of a Service (all its slices, from the endpoints tracker).
    pub fn apply_endpoints(&mut self, key: ObjectKey, endpoints: Option<ServiceEndpoints>) {
        if let Some(old) = self.endpoints.remove(&key) {
            for (_, ip) in ready_addresses(&old) {
                if let Some(owners) = self.endpoint_ips.get_mut(&ip) {
                    owners.retain(|(k, _)| *k != key);
                    if owners.is_empty() {
                        self.endpoint_ips.remove(&ip);
                    }
                }
            }
        }
        if let Some(new) = endpoints {
            for (endpoint, ip) in ready_addresses(&new) {
                let label = endpoint_label(endpoint, ip);
                let owners = self.endpoint_ips.entry(ip).or_default();
                if !owners.iter().any(|(k, l)| *k == key && *l == label) {
                    owners.push((key.clone(), label));
                }
            }
            self.endpoints.insert(key, new);
        }
    }

    pub fn apply_namespace(&mut self, name: &str, exists: bool) {
        if exists {
            self.namespaces.insert(name.into());
        } else {
            self.namespaces.remove(name);
        }
    }

    /// Records (or forgets) that a pod in `namespace` has `ip`, for `--pods verified`.
    pub fn apply_pod_ip(&mut self, namespace: &str, ip: IpAddr, exists: bool) {
        if exists {
            self.pods.entry(ip).or_default().insert(namespace.into());
        } else if let Some(namespaces) = self.pods.get_mut(&ip) {
            namespaces.remove(namespace);
            if namespaces.is_empty() {
                self.pods.remove(&ip);
            }
        }
    }

    /// Marks the first full sync done; until then missing names are SERVFAIL, not NXDOMAIN.
    pub fn set_synced(&mut self) {
        self.synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(namespace)?.get(name)
    }

    pub fn endpoints(&self, key: &ObjectKey) -> Option<&ServiceEndpoints> {
        self.endpoints.get(key)
    }

    pub fn has_namespace(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }

    pub fn has_pod(&self, namespace: &str, ip: IpAddr) -> bool {
        self.pods.get(&ip).is_some_and(|ns| ns.contains(namespace))
    }

    pub fn service_of_cluster_ip(&self, ip: &IpAddr) -> Option<&ObjectKey> {
        self.cluster_ips.get(ip)
    }

    pub fn owners_of_endpoint_ip(&self, ip: &IpAddr) -> &[(ObjectKey, Box<str>)] {
        self.endpoint_ips
            .get(ip)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}
