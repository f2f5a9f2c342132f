//! The v1 Endpoints of a Service: built from its pods, re-packed into subsets the way upstream's
//! `RepackSubsets` does, capped at 1000 addresses (`docs/upstream/endpoint-controllers.md` §2).
//! Pure: the controller decides whether and how to write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};
use svcplane_model::{AddressType, Pod, Service};

use crate::desired::{endpoints_family, hostname_for, include_pod};

/// Most addresses (ready and not) one Endpoints object holds.
pub const MAX_ADDRESSES: usize = 1000;

/// What a Service's Endpoints should hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredEndpoints {
    pub subsets: Vec<EndpointSubset>,
    /// Some addresses were cut to stay within [`MAX_ADDRESSES`].
    pub truncated: bool,
}

/// One (port, address, readiness) fact; `port: None` stands for "no ports" (headless).
type Fact = (Option<EndpointPort>, EndpointAddress, bool);

fn pod_address(svc: &Service, pod: &Pod, family: Option<AddressType>) -> Option<EndpointAddress> {
    let primary = pod.ips.first()?;
    let family = family.unwrap_or_else(|| AddressType::of(primary));
    let ip = pod.ips.iter().find(|ip| AddressType::of(ip) == family)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        hostname: hostname_for(pod, svc),
        // Upstream always sets it, even to "".
        node_name: Some(pod.node_name.as_deref().unwrap_or("").to_owned()),
        target_ref: Some(crate::desired::pod_reference(pod)),
    })
}

/// The Endpoints a Service's pods amount to.
pub fn desired<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> DesiredEndpoints {
    let include_terminating = svc.publish_not_ready_addresses;
    let family = endpoints_family(svc);
    let mut facts: Vec<Fact> = Vec::new();
    for pod in pods {
        if !include_pod(pod, include_terminating) {
            continue;
        }
        let Some(address) = pod_address(svc, pod, family) else {
            continue;
        };
        let ready = svc.publish_not_ready_addresses || pod.ready;
        if svc.ports.is_empty() {
            if !svc.has_cluster_ip() {
                facts.push((None, address, ready));
            }
            continue;
        }
        for port in &svc.ports {
            let Some(number) = crate::desired::resolve(pod, port) else {
                continue;
            };
            let port = EndpointPort {
                name: Some(port.name.to_string()),
                port: number,
                protocol: Some(port.protocol.as_str().to_owned()),
                app_protocol: port.app_protocol.as_deref().map(str::to_owned),
            };
            facts.push((Some(port), address.clone(), ready));
        }
    }
    let subsets = repack(facts);
    truncate(subsets)
}

fn port_order(p: &EndpointPort) -> PortOrder<'_> {
    (
        p.name.as_deref().unwrap_or(""),
        p.port,
        p.protocol.as_deref().unwrap_or("TCP"),
        p.app_protocol.as_deref().unwrap_or(""),
    )
}

/// Identity of an address within a port: its IP and its target's UID.
fn address_key(a: &EndpointAddress) -> (String, String) {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default(),
    )
}

/// Groups (port, address, ready) facts into subsets: per port, addresses deduplicated by
/// (IP, target UID) with "not ready" winning; ports with the same address set share a subset;
/// addresses sorted by IP text, then UID. Subset and port order are svcplane's own (upstream
/// orders by a hash of Go's struct dump); they are stable, so rewrites do not flap.
fn repack(facts: Vec<Fact>) -> Vec<EndpointSubset> {
    type Addresses = BTreeMap<(String, String), (EndpointAddress, bool)>;
    let mut by_port: Vec<(Option<EndpointPort>, Addresses)> = Vec::new();
    for (port, mut address, ready) in facts {
        if let Some(r) = address.target_ref.as_mut() {
            r.resource_version = None;
        }
        let slot = match by_port.iter().position(|(p, _)| *p == port) {
            Some(i) => &mut by_port[i].1,
            None => {
                by_port.push((port, Addresses::new()));
                &mut by_port.last_mut().expect("just pushed").1
            }
        };
        slot.entry(address_key(&address))
            .and_modify(|(_, r)| *r = *r && ready)
            .or_insert((address, ready));
    }
    // Ports with identical (address, readiness) sets form one subset.
    type Signature = Vec<((String, String), bool)>;
    let mut groups: Vec<(Signature, Vec<Option<EndpointPort>>, Addresses)> = Vec::new();
    for (port, addresses) in by_port {
        let signature: Signature = addresses
            .iter()
            .map(|(k, (_, r))| (k.clone(), *r))
            .collect();
        match groups.iter_mut().find(|(s, _, _)| *s == signature) {
            Some(group) => group.1.push(port),
            None => groups.push((signature, vec![port], addresses)),
        }
    }
    let mut subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(_, ports, addresses)| {
            let mut ports: Vec<EndpointPort> = ports.into_iter().flatten().collect();
            ports.sort_by(|a, b| port_order(a).cmp(&port_order(b)));
            let (ready, not_ready): (Vec<_>, Vec<_>) =
                addresses.into_values().partition(|(_, r)| *r);
            let strip = |v: Vec<(EndpointAddress, bool)>| {
                let v: Vec<EndpointAddress> = v.into_iter().map(|(a, _)| a).collect();
                (!v.is_empty()).then_some(v)
            };
            EndpointSubset {
                addresses: strip(ready),
                not_ready_addresses: strip(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    subsets.sort_by(|a, b| subset_order(a).cmp(&subset_order(b)));
    subsets
}

type PortOrder<'a> = (&'a str, i32, &'a str, &'a str);

fn subset_order(s: &EndpointSubset) -> (Vec<PortOrder<'_>>, Option<&str>) {
    let ports = s.ports.iter().flatten().map(port_order).collect();
    let first = s
        .addresses
        .iter()
        .chain(s.not_ready_addresses.iter())
        .flatten()
        .map(|a| a.ip.as_str())
        .min();
    (ports, first)
}

/// Canonical form of subsets read from the API, for comparing with [`desired`]'s output.
pub fn canonical(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let mut facts: Vec<Fact> = Vec::new();
    for s in subsets {
        let ports: Vec<Option<EndpointPort>> = match s.ports.as_deref() {
            Some(p) if !p.is_empty() => p.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for port in &ports {
            for a in s.addresses.iter().flatten() {
                facts.push((port.clone(), a.clone(), true));
            }
            for a in s.not_ready_addresses.iter().flatten() {
                facts.push((port.clone(), a.clone(), false));
            }
        }
    }
    repack(facts)
}

fn count(s: &EndpointSubset) -> (usize, usize) {
    (
        s.addresses.as_ref().map_or(0, Vec::len),
        s.not_ready_addresses.as_ref().map_or(0, Vec::len),
    )
}

/// Caps the total at [`MAX_ADDRESSES`] as upstream does: ready addresses first; slots shared
/// out over subsets in proportion to what each holds, rounding up, in subset order.
fn truncate(mut subsets: Vec<EndpointSubset>) -> DesiredEndpoints {
    let (ready, not_ready) = subsets
        .iter()
        .map(count)
        .fold((0, 0), |(r, n), (a, b)| (r + a, n + b));
    if ready + not_ready <= MAX_ADDRESSES {
        return DesiredEndpoints {
            subsets,
            truncated: false,
        };
    }
    let share = |held: usize, total: usize, slots: usize| -> usize {
        if total == 0 {
            return 0;
        }
        (held * slots).div_ceil(total)
    };
    if ready >= MAX_ADDRESSES {
        // Not-ready addresses all go; the ready ones share the cap.
        let mut left = MAX_ADDRESSES;
        for s in &mut subsets {
            s.not_ready_addresses = None;
            if let Some(a) = s.addresses.as_mut() {
                let keep = share(a.len(), ready, MAX_ADDRESSES).min(left).min(a.len());
                a.truncate(keep);
                left -= keep;
            }
        }
    } else {
        let slots = MAX_ADDRESSES - ready;
        let mut left = slots;
        for s in &mut subsets {
            if let Some(a) = s.not_ready_addresses.as_mut() {
                let keep = share(a.len(), not_ready, slots).min(left).min(a.len());
                a.truncate(keep);
                left -= keep;
            }
        }
    }
    for s in &mut subsets {
        if s.addresses.as_ref().is_some_and(Vec::is_empty) {
            s.addresses = None;
        }
        if s.not_ready_addresses.as_ref().is_some_and(Vec::is_empty) {
            s.not_ready_addresses = None;
        }
    }
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    DesiredEndpoints {
        subsets,
        truncated: true,
    }
}

#[cfg(test)]
mod tests;
