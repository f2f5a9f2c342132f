//! What a Service's endpoints should be, from its pods: the rules of upstream's
//! `ShouldPodBeInEndpoints`, `podToEndpoint`, `getEndpointPorts` and `FindPort`
//! (`docs/upstream/endpoint-controllers.md` §1, §3.2, §3.3). Pure: no API, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, ForNode, ForZone,
};
use svcplane_model::{AddressType, ClusterIps, HintMode, Pod, Service, ServicePort};

/// A pod counts unless it has finished, has no IP yet, or is terminating when terminating pods
/// are not wanted.
pub fn include_pod(pod: &Pod, include_terminating: bool) -> bool {
    !pod.is_terminal() && !pod.ips.is_empty() && (include_terminating || !pod.terminating)
}

/// `hostname` is published only for a pod that names itself into this Service's subdomain.
pub fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let hostname = pod.hostname.as_deref().filter(|h| !h.is_empty())?;
    (pod.subdomain.as_deref() == Some(&*svc.key.name) && pod.key.namespace == svc.key.namespace)
        .then(|| hostname.to_owned())
}

/// The address types a Service gets slices for: one per IP family; without families, the
/// cluster IP's; a headless Service without families gets both.
pub fn address_types(svc: &Service) -> Vec<AddressType> {
    if !svc.ip_families.is_empty() {
        let mut types: Vec<AddressType> = svc.ip_families.iter().map(|f| (*f).into()).collect();
        types.dedup();
        return types;
    }
    match &svc.cluster_ips {
        ClusterIps::Ips(ips) if !ips.is_empty() => vec![AddressType::of(&ips[0])],
        _ => vec![AddressType::V4, AddressType::V6],
    }
}

/// The family the v1 Endpoints of a Service uses: its first IP family, else its cluster IP's;
/// `None` means "each pod's primary IP".
pub fn endpoints_family(svc: &Service) -> Option<AddressType> {
    if let Some(first) = svc.ip_families.first() {
        return Some((*first).into());
    }
    match &svc.cluster_ips {
        ClusterIps::Ips(ips) if !ips.is_empty() => Some(AddressType::of(&ips[0])),
        _ => None,
    }
}

pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(pod.key.namespace.to_string()),
        name: Some(pod.key.name.to_string()),
        uid: pod.uid.as_deref().map(str::to_owned),
        ..Default::default()
    }
}

/// A Service port resolved for one pod: `None` when the pod has no port of that name.
pub fn resolve(pod: &Pod, port: &ServicePort) -> Option<i32> {
    pod.resolve_port(port).map(i32::from)
}

/// The slice ports a pod is published under, sorted: the grouping key of its slices.
pub fn slice_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = svc
        .ports
        .iter()
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.to_string()),
                port: Some(resolve(pod, p)?),
                protocol: Some(p.protocol.as_str().to_owned()),
                app_protocol: p.app_protocol.as_deref().map(str::to_owned),
            })
        })
        .collect();
    sort_ports(&mut ports);
    ports
}

/// A total order on slice ports, used for grouping and for the order written.
pub fn port_key(p: &EndpointPort) -> (&str, i32, &str, &str) {
    (
        p.name.as_deref().unwrap_or(""),
        p.port.unwrap_or(0),
        p.protocol.as_deref().unwrap_or("TCP"),
        p.app_protocol.as_deref().unwrap_or(""),
    )
}

pub fn sort_ports(ports: &mut [EndpointPort]) {
    ports.sort_by(|a, b| port_key(a).cmp(&port_key(b)));
}

/// A hashable, ordered form of a port list: what groups endpoints into slices.
pub type PortSet = Vec<(String, i32, String, String)>;

pub fn port_set(ports: &[EndpointPort]) -> PortSet {
    let mut set: PortSet = ports
        .iter()
        .map(|p| {
            let (n, port, proto, app) = port_key(p);
            (n.to_owned(), port, proto.to_owned(), app.to_owned())
        })
        .collect();
    set.sort();
    set
}

/// The slice endpoint for a pod, for one address type. `zone` is the pod's Node's zone label.
pub fn slice_endpoint(
    svc: &Service,
    pod: &Pod,
    address_type: AddressType,
    zone: Option<&str>,
    hints: HintMode,
) -> Endpoint {
    let serving = pod.ready;
    let terminating = pod.terminating;
    let ready = svc.publish_not_ready_addresses || (serving && !terminating);
    let node_name = pod.node_name.as_deref().filter(|n| !n.is_empty());
    let zone = zone.filter(|z| !z.is_empty());
    let hints = match hints {
        HintMode::SameZone | HintMode::SameNode if ready => {
            let for_zones = zone.map(|z| vec![ForZone { name: z.to_owned() }]);
            let for_nodes = match hints {
                HintMode::SameNode => node_name.map(|n| vec![ForNode { name: n.to_owned() }]),
                _ => None,
            };
            (for_zones.is_some() || for_nodes.is_some()).then_some(EndpointHints {
                for_zones,
                for_nodes,
            })
        }
        _ => None,
    };
    Endpoint {
        addresses: pod
            .ips
            .iter()
            .filter(|ip| AddressType::of(ip) == address_type)
            .map(|ip| ip.to_string())
            .collect(),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname_for(pod, svc),
        node_name: node_name.map(str::to_owned),
        zone: zone.map(str::to_owned),
        target_ref: Some(pod_reference(pod)),
        hints,
        deprecated_topology: None,
    }
}

/// Desired slice endpoints of one address type, grouped by port set.
#[derive(Debug, Default)]
pub struct SliceGroups {
    pub groups: BTreeMap<PortSet, (Vec<EndpointPort>, Vec<Endpoint>)>,
    /// Pods left out because their Node is unknown (the sync is retried, as upstream).
    pub missing_nodes: usize,
}

/// Groups the pods of a Service into slice endpoints for `address_type`. `zone_of` answers
/// `Some(zone label)` for a known Node (`Some(None)` when it has no zone), `None` for an
/// unknown one.
pub fn slice_groups<'p, 'z>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'p Pod>,
    address_type: AddressType,
    zone_of: &dyn Fn(&str) -> Option<Option<&'z str>>,
) -> SliceGroups {
    let hints = svc.hint_mode();
    let mut out = SliceGroups::default();
    for pod in pods {
        if !include_pod(pod, true) {
            continue;
        }
        let zone = match zone_of(pod.node_name.as_deref().unwrap_or("")) {
            Some(zone) => zone,
            None if svc.publish_not_ready_addresses => None,
            None => {
                out.missing_nodes += 1;
                continue;
            }
        };
        let ports = slice_ports(svc, pod);
        let endpoint = slice_endpoint(svc, pod, address_type, zone, hints);
        let group = out
            .groups
            .entry(port_set(&ports))
            .or_insert_with(|| (ports, Vec::new()));
        // A pod without an address of this family still records its port group.
        if !endpoint.addresses.is_empty() {
            group.1.push(endpoint);
        }
    }
    out
}

/// Each zone's share of the cluster's allocatable CPU, from Ready, non-control-plane Nodes:
/// what `topology-mode: Auto` allocates by. `None` when that is not enough to go by (a Node
/// without a zone or CPU, no CPU at all, or fewer than two zones), as upstream.
pub fn zone_ratios<'a>(
    nodes: impl IntoIterator<Item = &'a svcplane_model::Node>,
) -> Option<BTreeMap<String, f64>> {
    let mut cpu: BTreeMap<String, u64> = BTreeMap::new();
    for node in nodes {
        if node.control_plane || !node.ready {
            continue;
        }
        let zone = node.zone.as_deref()?;
        let millis = node.allocatable_cpu_millis.filter(|m| *m > 0)?;
        *cpu.entry(zone.to_owned()).or_default() += millis;
    }
    let total: u64 = cpu.values().sum();
    if total == 0 || cpu.len() < 2 {
        return None;
    }
    Some(
        cpu.into_iter()
            .map(|(z, m)| (z, m as f64 / total as f64))
            .collect(),
    )
}

/// Hints for `topology-mode: Auto` (upstream's `topologycache.AddHints`): every ready endpoint
/// is hinted for its own zone, then endpoints move from zones holding more than their CPU share
/// to zones holding less, one at a time, largest surplus to largest deficit, until no zone is
/// off by more than half an endpoint. Which endpoints move is deterministic (the last, by
/// address, of the giving zone), so repeated syncs agree. On failure, with the reason, every
/// hint is removed, as upstream does.
pub fn auto_hints(
    groups: &mut SliceGroups,
    ratios: Option<&BTreeMap<String, f64>>,
) -> Result<(), String> {
    let clear = |groups: &mut SliceGroups| {
        for (_, endpoints) in groups.groups.values_mut() {
            for e in endpoints {
                e.hints = None;
            }
        }
    };
    let result = allocate(groups, ratios);
    if result.is_err() {
        clear(groups);
    }
    result
}

fn is_ready(e: &Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

fn allocate(
    groups: &mut SliceGroups,
    ratios: Option<&BTreeMap<String, f64>>,
) -> Result<(), String> {
    let ratios = ratios.ok_or("insufficient Node information: allocatable CPU or zone not specified on one or more nodes, or fewer than two zones")?;
    let mut ready: Vec<&mut Endpoint> = groups
        .groups
        .values_mut()
        .flat_map(|(_, e)| e.iter_mut())
        .filter(|e| is_ready(e))
        .collect();
    ready.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    let n = ready.len();
    if ratios.len() > n {
        return Err(format!(
            "Insufficient number of endpoints ({n} endpoints, {} zones)",
            ratios.len()
        ));
    }
    let mut minimum_total = 0.0;
    for ratio in ratios.values() {
        minimum_total += (ratio * n as f64 / 1.2).ceil();
    }
    if minimum_total > n as f64 {
        return Err("Insufficient number of endpoints to meet the minimum for every zone".into());
    }
    let mut hinted: Vec<String> = Vec::with_capacity(n);
    for e in &ready {
        match e.zone.as_deref() {
            Some(z) if ratios.contains_key(z) => hinted.push(z.to_owned()),
            Some(_) => return Err("One or more endpoints are in a zone without ready Nodes".into()),
            None => return Err("One or more endpoints do not have a zone specified".into()),
        }
    }
    let mut counts: BTreeMap<&str, f64> = ratios.keys().map(|z| (z.as_str(), 0.0)).collect();
    for z in &hinted {
        *counts.entry(z.as_str()).or_default() += 1.0;
    }
    let target = |z: &str| ratios.get(z).copied().unwrap_or(0.0) * n as f64;
    let mut moves: Vec<(String, String)> = Vec::new();
    loop {
        let surplus = |z: &&str| counts[*z] - target(z);
        let giver = counts
            .keys()
            .copied()
            .max_by(|a, b| surplus(a).total_cmp(&surplus(b)));
        let receiver = counts
            .keys()
            .copied()
            .min_by(|a, b| surplus(a).total_cmp(&surplus(b)));
        let (Some(giver), Some(receiver)) = (giver, receiver) else {
            break;
        };
        let (give, need) = (surplus(&giver), -surplus(&receiver));
        if give < 0.5 || need < 0.5 || (give < 1.0 && need < 1.0) {
            break;
        }
        *counts.get_mut(giver).expect("zone") -= 1.0;
        *counts.get_mut(receiver).expect("zone") += 1.0;
        moves.push((giver.to_owned(), receiver.to_owned()));
    }
    for (from, to) in moves {
        // The last endpoint of the giving zone still hinted for it moves.
        let own = |i: usize| ready[i].zone.as_deref() == Some(from.as_str());
        if let Some(i) = (0..hinted.len())
            .rev()
            .find(|&i| hinted[i] == from && own(i))
        {
            hinted[i] = to;
        }
    }
    for (e, zone) in ready.iter_mut().zip(hinted) {
        e.hints = Some(EndpointHints {
            for_zones: Some(vec![ForZone { name: zone }]),
            for_nodes: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
