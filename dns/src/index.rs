//! What the cluster zone answers from, updated one change at a time.

use std::net::IpAddr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use svcplane_model::ObjectKey;
use svcplane_model::tracker::ServiceEndpoints;

use crate::zone::{ZoneEndpoint, ZoneService, ZoneSlice};

/// The endpoints of one Service as the zone keeps them.
pub type ZoneEndpoints = ServiceEndpoints<ZoneSlice>;

/// Services, their ready endpoints, namespaces and (for `--pods verified`) pod IPs, with the
/// reverse maps PTR answers need. Each `apply_*` touches only the one object it is given.
///
/// The tables are persistent maps: a clone shares everything and costs O(1), and an update
/// copies only the path it changes. A writer clones the published index, applies a batch and
/// publishes the result, while readers keep answering from the version they hold, lock-free.
/// They are B-trees (`OrdMap`), not hash tries: at 100,000 endpoint addresses a trie's
/// fixed-width nodes cost about 190 bytes an entry, the B-tree about 75 (`examples/index_memory.rs`).
#[derive(Debug, Default, Clone)]
pub struct Index {
    /// namespace → name → Service: looked up by `&str` on every query, without allocating.
    services: OrdMap<Box<str>, OrdMap<Box<str>, Arc<ZoneService>>>,
    endpoints: OrdMap<ObjectKey, ZoneEndpoints>,
    namespaces: OrdSet<Box<str>>,
    /// Pod IP → namespaces with a pod of that IP (`--pods verified`).
    pods: OrdMap<IpAddr, OrdSet<Box<str>>>,
    /// Cluster IP → its Service.
    cluster_ips: OrdMap<IpAddr, Arc<ObjectKey>>,
    /// Ready endpoint IP → the Services it backs. The endpoint's label is looked up in the
    /// Service's endpoints when a PTR query asks, rather than stored per address.
    endpoint_ips: OrdMap<IpAddr, Owners>,
    synced: bool,
    /// SOA serial: when the data last changed, in Unix seconds.
    serial: u32,
}

/// The Services behind one endpoint address: almost always one, shared, so one pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owners {
    One(Arc<ObjectKey>),
    Many(Arc<[Arc<ObjectKey>]>),
}

impl Owners {
    fn as_slice(&self) -> &[Arc<ObjectKey>] {
        match self {
            Owners::One(key) => std::slice::from_ref(key),
            Owners::Many(keys) => keys,
        }
    }

    fn with(&self, key: &Arc<ObjectKey>) -> Owners {
        if self.as_slice().iter().any(|k| k == key) {
            return self.clone();
        }
        let mut keys = self.as_slice().to_vec();
        keys.push(key.clone());
        Owners::Many(keys.into())
    }

    fn without(&self, key: &ObjectKey) -> Option<Owners> {
        let rest: Vec<_> = self
            .as_slice()
            .iter()
            .filter(|k| ***k != *key)
            .cloned()
            .collect();
        match rest.len() {
            0 => None,
            1 => rest.into_iter().next().map(Owners::One),
            _ => Some(Owners::Many(rest.into())),
        }
    }
}

/// Ready endpoints of a Service across all its slices, one entry per address.
pub(crate) fn ready_endpoints(endpoints: &ZoneEndpoints) -> impl Iterator<Item = &ZoneEndpoint> {
    endpoints.slices.iter().flat_map(|s| s.ready.iter())
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets or removes a Service.
    pub fn apply_service(&mut self, key: ObjectKey, service: Option<Arc<ZoneService>>) {
        let in_namespace = self.services.entry(key.namespace.clone()).or_default();
        let old = match &service {
            Some(svc) => in_namespace.insert(key.name.clone(), svc.clone()),
            None => in_namespace.remove(&key.name),
        };
        if in_namespace.is_empty() {
            self.services.remove(&key.namespace);
        }
        // Drop the reverse entries of addresses the Service no longer holds, then add its own.
        if let Some(old) = old {
            for ip in old.cluster_ips() {
                let kept = service
                    .as_ref()
                    .is_some_and(|n| n.cluster_ips().contains(ip));
                if !kept && self.cluster_ips.get(ip).is_some_and(|k| **k == key) {
                    self.cluster_ips.remove(ip);
                }
            }
        }
        if let Some(svc) = service {
            let shared = Arc::new(key);
            for ip in svc.cluster_ips() {
                self.cluster_ips.insert(*ip, shared.clone());
            }
        }
    }

    /// Sets or removes the endpoints of a Service (all its slices, from the endpoints tracker).
    pub fn apply_endpoints(&mut self, key: ObjectKey, endpoints: Option<ZoneEndpoints>) {
        if let Some(old) = self.endpoints.remove(&key) {
            for endpoint in ready_endpoints(&old) {
                if let Some(owners) = self.endpoint_ips.get(&endpoint.ip) {
                    match owners.without(&key) {
                        Some(rest) => self.endpoint_ips.insert(endpoint.ip, rest),
                        None => self.endpoint_ips.remove(&endpoint.ip),
                    };
                }
            }
        }
        if let Some(new) = endpoints {
            let shared = Arc::new(key.clone());
            for endpoint in ready_endpoints(&new) {
                let owners = match self.endpoint_ips.get(&endpoint.ip) {
                    Some(owners) => owners.with(&shared),
                    None => Owners::One(shared.clone()),
                };
                self.endpoint_ips.insert(endpoint.ip, owners);
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

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ZoneService>> {
        self.services.get(namespace)?.get(name)
    }

    pub fn endpoints(&self, key: &ObjectKey) -> Option<&ZoneEndpoints> {
        self.endpoints.get(key)
    }

    pub fn has_namespace(&self, name: &str) -> bool {
        self.namespaces.contains(name)
    }

    pub fn has_pod(&self, namespace: &str, ip: IpAddr) -> bool {
        self.pods.get(&ip).is_some_and(|ns| ns.contains(namespace))
    }

    /// The namespace of a pod with `ip` (`--pods verified`), for autopath; the first in name
    /// order when pods of several namespaces share it.
    pub fn pod_namespace(&self, ip: IpAddr) -> Option<&str> {
        self.pods.get(&ip)?.iter().next().map(|ns| &**ns)
    }

    pub fn service_of_cluster_ip(&self, ip: &IpAddr) -> Option<&ObjectKey> {
        self.cluster_ips.get(ip).map(|k| &**k)
    }

    /// The Services a ready endpoint address backs, in the order they were first seen.
    pub fn owners_of_endpoint_ip(&self, ip: &IpAddr) -> impl Iterator<Item = &ObjectKey> {
        self.endpoint_ips
            .get(ip)
            .map(Owners::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|k| &**k)
    }
}
