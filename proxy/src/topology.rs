//! Which endpoints of one Service port this node sends traffic to, as kube-proxy's
//! `CategorizeEndpoints` decides (`docs/upstream/kube-proxy-nftables.md` §2.4). Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use svcplane_model::{AddressType, EndpointSlice, Protocol};

/// One endpoint address of a Service port, as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    /// Zone and node hints; `None` when the endpoint has none of that kind.
    pub zones: Option<Vec<Box<str>>>,
    pub nodes: Option<Vec<Box<str>>>,
}

/// This node, as topology needs it.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub name: String,
    pub zone: Option<String>,
}

/// The endpoints of one Service port (`name`, `protocol`) of `family`, from the Service's
/// slices: one entry per `ip:port` (a non-terminating copy wins over a terminating one), sorted
/// by their `ip:port` text as upstream sorts them.
pub fn backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    family: AddressType,
    port_name: &str,
    protocol: Protocol,
    node: &NodeFacts,
) -> Vec<Backend> {
    let mut by_addr: BTreeMap<String, Backend> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| &*p.name == port_name && p.protocol == protocol)
            .and_then(|p| p.port)
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first() else {
                continue;
            };
            let c = e.conditions;
            let backend = Backend {
                ip: *ip,
                port,
                // Unknown conditions: ready and serving, not terminating (upstream's reading).
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
                local: e.node_name.as_deref() == Some(node.name.as_str()),
                zones: e
                    .hints
                    .as_ref()
                    .and_then(|h| (!h.for_zones.is_empty()).then(|| h.for_zones.clone())),
                nodes: e
                    .hints
                    .as_ref()
                    .and_then(|h| (!h.for_nodes.is_empty()).then(|| h.for_nodes.clone())),
            };
            let key = match ip {
                IpAddr::V4(v4) => format!("{v4}:{port}"),
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            };
            match by_addr.get(&key) {
                Some(existing) if !existing.terminating || backend.terminating => {}
                _ => {
                    by_addr.insert(key, backend);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// The endpoints traffic may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usable {
    /// For traffic under a Cluster policy: ready endpoints the topology allows, else every
    /// serving terminating endpoint.
    pub cluster: Vec<(IpAddr, u16)>,
    /// For traffic under a Local policy: this node's ready endpoints, else its serving
    /// terminating ones. Hints never apply.
    pub local: Vec<(IpAddr, u16)>,
    /// Some endpoint anywhere is ready or serving: with no usable endpoint, traffic is dropped
    /// (a Local policy with remote endpoints) rather than rejected.
    pub any: bool,
}

fn addr(b: &Backend) -> (IpAddr, u16) {
    (b.ip, b.port)
}

/// Sorts `backends` into the cluster and local lists.
pub fn categorize(backends: &[Backend], node: &NodeFacts) -> Usable {
    let ready: Vec<&Backend> = backends.iter().filter(|b| b.ready).collect();
    let fallback = |b: &&Backend| b.serving && b.terminating;
    let hinted = |pick: fn(&Backend) -> Option<&Vec<Box<str>>>, me: Option<&str>| {
        let me = me?;
        let all_hinted = !ready.is_empty() && ready.iter().all(|b| pick(b).is_some());
        let mine: Vec<&Backend> = ready
            .iter()
            .copied()
            .filter(|b| pick(b).is_some_and(|h| h.iter().any(|x| &**x == me)))
            .collect();
        (all_hinted && !mine.is_empty()).then_some(mine)
    };
    let topology = hinted(|b| b.nodes.as_ref(), Some(node.name.as_str()))
        .or_else(|| hinted(|b| b.zones.as_ref(), node.zone.as_deref()))
        .unwrap_or_else(|| ready.clone());
    let mut cluster: Vec<(IpAddr, u16)> = topology.iter().map(|b| addr(b)).collect();
    if cluster.is_empty() {
        cluster = backends.iter().filter(fallback).map(addr).collect();
    }
    let mut local: Vec<(IpAddr, u16)> = ready.iter().filter(|b| b.local).map(|b| addr(b)).collect();
    if local.is_empty() {
        local = backends
            .iter()
            .filter(|b| b.local)
            .filter(fallback)
            .map(addr)
            .collect();
    }
    let any = !cluster.is_empty()
        || backends
            .iter()
            .any(|b| b.ready || (b.serving && b.terminating));
    Usable {
        cluster,
        local,
        any,
    }
}

#[cfg(test)]
mod tests;
