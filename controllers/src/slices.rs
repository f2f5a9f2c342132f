//! Which EndpointSlices to create, update and delete so a Service's slices hold its desired
//! endpoints, changing as few slices as possible: upstream's `reconcileByPortMapping`,
//! placeholder and recycling rules (`docs/upstream/endpoint-controllers.md` §3.4–3.6).
//! Pure: the controller writes the plan.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use svcplane_model::{AddressType, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, Service};

use crate::desired::{PortSet, SliceGroups, port_set};

pub use svcplane_model::LABEL_HEADLESS;

/// What to write for one Service.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    /// Full objects to replace; those recycled from a deleted slice carry no resourceVersion.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Arc<EndpointSlice>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// The labels every slice of `svc` carries.
pub fn slice_labels(svc: &Service, managed_by: &str) -> BTreeMap<String, String> {
    let mut labels = own_labels(svc.labels.iter());
    if !svc.has_cluster_ip() {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.into(), svc.key.name.to_string());
    labels.insert(LABEL_MANAGED_BY.into(), managed_by.into());
    labels
}

/// Labels other than the three the controller owns.
fn own_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    labels
        .filter(|(k, _)| ![LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS].contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn labels_changed(slice: &EndpointSlice, svc: &Service) -> bool {
    let current = own_labels(
        slice
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    current != own_labels(svc.labels.iter())
}

pub fn owner_reference(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.key.name.to_string(),
        uid: svc.uid.as_deref().unwrap_or_default().to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A slice belongs to the Service only if it names the Service's UID as its owner.
pub fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.uid.as_deref().unwrap_or_default();
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.kind == "Service" && r.api_version == "v1")
}

/// Endpoint identity: addresses, hostname and target pod (not its UID, so a pod re-created
/// under the same name updates in place).
fn identity(e: &Endpoint) -> (Vec<String>, Option<String>, Option<(String, String)>) {
    let mut addresses = e.addresses.clone();
    addresses.sort();
    let target = e.target_ref.as_ref().map(|r| {
        (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        )
    });
    (addresses, e.hostname.clone(), target)
}

fn hints_of(e: &Endpoint) -> (Vec<&str>, Vec<&str>) {
    let Some(h) = &e.hints else {
        return (vec![], vec![]);
    };
    (
        h.for_zones
            .iter()
            .flatten()
            .map(|z| z.name.as_str())
            .collect(),
        h.for_nodes
            .iter()
            .flatten()
            .map(|n| n.name.as_str())
            .collect(),
    )
}

/// Whether a stored endpoint already says what the desired one says.
pub fn same_endpoint(current: &Endpoint, desired: &Endpoint) -> bool {
    let target = |e: &Endpoint| {
        e.target_ref.as_ref().map(|r| {
            (
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.uid.clone(),
            )
        })
    };
    current.addresses == desired.addresses
        && current.conditions == desired.conditions
        && current.hostname == desired.hostname
        && current.node_name == desired.node_name
        && current.zone == desired.zone
        && target(current) == target(desired)
        && hints_of(current) == hints_of(desired)
}

fn new_slice(
    svc: &Service,
    address_type: AddressType,
    ports: &[EndpointPort],
    managed_by: &str,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.key.name)),
            namespace: Some(svc.key.namespace.to_string()),
            labels: Some(slice_labels(svc, managed_by)),
            owner_references: Some(vec![owner_reference(svc)]),
            ..Default::default()
        },
        address_type: address_type.as_str().into(),
        ports: Some(ports.to_vec()),
        endpoints: Some(Vec::new()),
    }
}

fn slice_port_set(slice: &EndpointSlice) -> PortSet {
    port_set(slice.ports.as_deref().unwrap_or_default())
}

fn endpoint_count(slice: &EndpointSlice) -> usize {
    slice.endpoints.as_ref().map_or(0, Vec::len)
}

/// Plans the slices of `svc`. `existing` are the slices labelled as ours for this Service
/// (already without those being deleted); `desired` has the groups of each address type the
/// Service wants.
pub fn plan(
    svc: &Service,
    existing: &[Arc<EndpointSlice>],
    desired: &[(AddressType, SliceGroups)],
    max_per_slice: usize,
    managed_by: &str,
) -> Plan {
    let mut out = Plan::default();
    let max = max_per_slice.max(1);
    for (address_type, groups) in desired {
        let type_name = address_type.as_str();
        let mine: Vec<&Arc<EndpointSlice>> = existing
            .iter()
            .filter(|s| s.address_type == type_name && owned_by(s, svc))
            .collect();
        let mut typed = plan_address_type(svc, *address_type, &mine, groups, max, managed_by);
        out.create.append(&mut typed.create);
        out.update.append(&mut typed.update);
        out.delete.append(&mut typed.delete);
    }
    // Slices of families the Service no longer has, or of another owner (a deleted Service of
    // the same name), go.
    for slice in existing {
        let wanted_type = desired
            .iter()
            .any(|(t, _)| t.as_str() == slice.address_type);
        if !wanted_type || !owned_by(slice, svc) {
            out.delete.push(slice.clone());
        }
    }
    if svc.deleting {
        out.create.clear();
    }
    out
}

fn plan_address_type(
    svc: &Service,
    address_type: AddressType,
    existing: &[&Arc<EndpointSlice>],
    groups: &SliceGroups,
    max: usize,
    managed_by: &str,
) -> Plan {
    let mut create: Vec<EndpointSlice> = Vec::new();
    let mut update: Vec<EndpointSlice> = Vec::new();
    let mut delete: Vec<Arc<EndpointSlice>> = Vec::new();

    let mut by_ports: BTreeMap<PortSet, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        by_ports
            .entry(slice_port_set(slice))
            .or_default()
            .push(slice);
    }

    for (key, (ports, endpoints)) in &groups.groups {
        // The desired endpoints not yet placed, by identity, in pod order.
        let mut order = Vec::new();
        let mut wanted: HashMap<_, &Endpoint> = HashMap::new();
        for e in endpoints {
            let id = identity(e);
            if wanted.insert(id.clone(), e).is_none() {
                order.push(id);
            }
        }
        let mut to_update: Vec<EndpointSlice> = Vec::new();
        let mut unchanged: Vec<&Arc<EndpointSlice>> = Vec::new();
        // 1. Keep what is still wanted where it is; note slices that must change.
        for slice in by_ports.remove(key).unwrap_or_default() {
            let mut changed = false;
            let mut kept = Vec::new();
            for e in slice.endpoints.iter().flatten() {
                match wanted.remove(&identity(e)) {
                    Some(d) => {
                        changed |= !same_endpoint(e, d);
                        kept.push(d.clone());
                    }
                    None => changed = true,
                }
            }
            if changed {
                if kept.is_empty() {
                    delete.push((*slice).clone());
                } else {
                    let mut copy = (**slice).clone();
                    copy.endpoints = Some(kept);
                    to_update.push(copy);
                }
            } else if labels_changed(slice, svc) {
                to_update.push((**slice).clone());
            } else {
                unchanged.push(slice);
            }
        }
        let mut remaining: Vec<Endpoint> = order
            .into_iter()
            .filter_map(|id| wanted.get(&id).map(|e| (*e).clone()))
            .collect();
        // 2. Top up the slices being written anyway, fullest first.
        to_update.sort_by_key(|s| std::cmp::Reverse(endpoint_count(s)));
        for slice in &mut to_update {
            let room = max.saturating_sub(endpoint_count(slice));
            let take = room.min(remaining.len());
            slice
                .endpoints
                .get_or_insert_with(Vec::new)
                .extend(remaining.drain(..take));
        }
        // 3. The rest: into the unchanged slice that fits them most tightly, else new slices.
        while !remaining.is_empty() {
            let fit = (remaining.len() < max)
                .then(|| {
                    unchanged
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| {
                            let free = max.checked_sub(endpoint_count(s) + remaining.len())?;
                            Some((free, i))
                        })
                        .min()
                })
                .flatten();
            let mut slice = match fit {
                Some((_, i)) => (*unchanged.remove(i)).as_ref().clone(),
                None => new_slice(svc, address_type, ports, managed_by),
            };
            let is_new = slice.metadata.name.is_none();
            // A new slice has room for `max`; a picked one for all that remain.
            let room = max.saturating_sub(endpoint_count(&slice)).max(1);
            let take = room.min(remaining.len());
            slice
                .endpoints
                .get_or_insert_with(Vec::new)
                .extend(remaining.drain(..take));
            if is_new {
                create.push(slice);
            } else {
                to_update.push(slice);
            }
        }
        for slice in &mut to_update {
            slice.metadata.labels = Some(slice_labels(svc, managed_by));
        }
        update.extend(to_update);
    }
    // Port groups nobody has any more.
    for slices in by_ports.into_values() {
        delete.extend(slices.into_iter().cloned());
    }

    // Every Service keeps at least one slice per address type: a placeholder with nothing in it.
    if create.is_empty() && update.is_empty() && delete.len() == existing.len() {
        let placeholder = new_slice(svc, address_type, &[], managed_by);
        let is_placeholder = |s: &EndpointSlice| {
            s.ports.as_ref().is_none_or(Vec::is_empty)
                && s.endpoints.as_ref().is_none_or(Vec::is_empty)
                && !labels_changed(s, svc)
        };
        if delete.len() == 1 && is_placeholder(&delete[0]) {
            delete.clear();
        } else {
            create.push(placeholder);
        }
    }

    // Recycle: a slice about to be deleted takes the contents of one about to be created.
    let mut recycled = Vec::new();
    delete.retain(|old| {
        let Some(mut fresh) = create.pop() else {
            return true;
        };
        fresh.metadata.name = old.metadata.name.clone();
        fresh.metadata.generate_name = None;
        recycled.push(fresh);
        false
    });
    update.extend(recycled);
    Plan {
        create,
        update,
        delete,
    }
}

#[cfg(test)]
mod tests;
