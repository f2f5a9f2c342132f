//! Mirroring: Endpoints that someone else maintains, for a Service without a selector, copied
//! into EndpointSlices so slice readers (kube-proxy, DNS) see them
//! (`docs/upstream/endpoint-controllers.md` §4).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use svcplane_model::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, Service,
};

use crate::controller::ANNOTATION_LEADER;
use crate::desired::{PortSet, port_set, sort_ports};
use crate::slices::{Plan, same_endpoint};

pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// An Endpoints is mirrored when its Service exists without a selector and nobody opted out.
pub fn should_mirror(ep: &Endpoints, svc: Option<&Service>) -> bool {
    ep.labels().get(LABEL_SKIP_MIRROR).map(String::as_str) != Some("true")
        && !ep.annotations().contains_key(ANNOTATION_LEADER)
        && svc.is_some_and(|s| s.selector.is_none())
}

#[derive(Debug, Default)]
pub struct DesiredMirror {
    /// One slice per (address type, ports), not yet named.
    pub slices: Vec<EndpointSlice>,
    /// Addresses left out: over the per-subset cap, or invalid.
    pub skipped: usize,
    pub invalid: usize,
}

type MirrorKey = (String, PortSet);

fn key_of(slice: &EndpointSlice) -> MirrorKey {
    (
        slice.address_type.clone(),
        port_set(slice.ports.as_deref().unwrap_or_default()),
    )
}

fn slice_metadata(ep: &Endpoints, manager: &str) -> ObjectMeta {
    let name = ep.name_any();
    let mut labels = ep.labels().clone();
    labels.insert(LABEL_SERVICE_NAME.into(), name.clone());
    labels.insert(LABEL_MANAGED_BY.into(), manager.into());
    let mut annotations = ep.annotations().clone();
    annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME);
    annotations.remove(ANNOTATION_LAST_APPLIED);
    ObjectMeta {
        generate_name: Some(format!("{name}-")),
        namespace: ep.namespace(),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Endpoints".into(),
            name,
            uid: ep.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    }
}

/// The slices an Endpoints amounts to: per subset (after re-packing), per address family, at
/// most `max_per_subset` valid addresses, ready ones first.
pub fn desired(ep: &Endpoints, manager: &str, max_per_subset: usize) -> DesiredMirror {
    let mut out = DesiredMirror::default();
    let mut by_key: BTreeMap<MirrorKey, EndpointSlice> = BTreeMap::new();
    for subset in crate::endpoints::canonical(ep.subsets.as_deref().unwrap_or_default()) {
        let mut ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        sort_ports(&mut ports);
        let addresses = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        let mut added = 0;
        for (address, ready) in addresses {
            if added >= max_per_subset {
                out.skipped += 1;
                continue;
            }
            let Ok(ip) = address.ip.parse::<IpAddr>() else {
                out.invalid += 1;
                out.skipped += 1;
                continue;
            };
            added += 1;
            let address_type = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            let endpoint = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: None,
                    terminating: None,
                }),
                target_ref: address.target_ref.clone(),
                node_name: address.node_name.clone().filter(|n| !n.is_empty()),
                hostname: address.hostname.clone().filter(|h| !h.is_empty()),
                ..Default::default()
            };
            by_key
                .entry((address_type.to_owned(), port_set(&ports)))
                .or_insert_with(|| EndpointSlice {
                    metadata: slice_metadata(ep, manager),
                    address_type: address_type.into(),
                    ports: Some(ports.clone()),
                    endpoints: Some(Vec::new()),
                })
                .endpoints
                .get_or_insert_with(Vec::new)
                .push(endpoint);
        }
    }
    out.slices = by_key.into_values().collect();
    out
}

fn same_contents(current: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let sorted = |s: &EndpointSlice| {
        let mut e: Vec<Endpoint> = s.endpoints.clone().unwrap_or_default();
        e.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        e
    };
    let (a, b) = (sorted(current), sorted(desired));
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| same_endpoint(x, y))
        && current.metadata.labels == desired.metadata.labels
        && current
            .metadata
            .annotations
            .as_ref()
            .filter(|m| !m.is_empty())
            == desired.metadata.annotations.as_ref()
        && current.metadata.owner_references == desired.metadata.owner_references
}

/// Keeps one slice per key (the first by name), rebuilt when it differs; deletes the rest.
pub fn plan(desired: Vec<EndpointSlice>, existing: &[Arc<EndpointSlice>]) -> Plan {
    let mut out = Plan::default();
    let mut current: BTreeMap<MirrorKey, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        current.entry(key_of(slice)).or_default().push(slice);
    }
    for slices in current.values_mut() {
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    for mut want in desired {
        match current.remove(&key_of(&want)) {
            Some(slices) => {
                let (first, rest) = slices.split_first().expect("groups are not empty");
                out.delete.extend(rest.iter().map(|s| (*s).clone()));
                if !same_contents(first, &want) {
                    want.metadata.name = first.metadata.name.clone();
                    want.metadata.generate_name = None;
                    out.update.push(want);
                }
            }
            None => out.create.push(want),
        }
    }
    for slices in current.into_values() {
        out.delete.extend(slices.into_iter().cloned());
    }
    // A slice about to go takes the contents of one about to be created, of the same family.
    let mut recycled = Vec::new();
    out.delete.retain(|old| {
        let Some(i) = out
            .create
            .iter()
            .position(|c| c.address_type == old.address_type)
        else {
            return true;
        };
        let mut fresh = out.create.remove(i);
        fresh.metadata.name = old.metadata.name.clone();
        fresh.metadata.generate_name = None;
        recycled.push(fresh);
        false
    });
    out.update.extend(recycled);
    out
}

#[cfg(test)]
mod tests;
