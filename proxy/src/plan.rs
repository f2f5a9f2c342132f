//! From Services, their endpoints and this node to what one address family's ruleset holds:
//! which destinations are dispatched to which endpoints, which are rejected or dropped, which
//! connections are masqueraded. Pure; [`crate::render`] turns a [`Plan`] into nftables text.
//!
//! Behaviour per kube-proxy's nftables mode (`docs/upstream/kube-proxy-nftables.md`); the layout
//! is svcplane's own: no chain per Service, but sets and maps keyed by (address, protocol, port)
//! and one dispatch rule per endpoint count, because per-chain cost dominates a large load
//! (`shared/notes/nftables-layout-figures.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ObjectKey, Protocol, Service, ServiceType, SessionAffinity, TrafficPolicy,
};

use crate::topology::{NodeFacts, backends, categorize};

pub use svcplane_model::LABEL_SERVICE_PROXY_NAME;

/// Where NodePorts listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary address of each family (upstream's default for nftables mode).
    Primary,
    /// Node addresses inside these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// How traffic from pods is told apart from other traffic (upstream's `--detect-local-mode`):
/// pods reach ClusterIPs unmasqueraded and take the short cut to every endpoint of an
/// externalTrafficPolicy Local Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DetectLocal {
    /// Sources inside `--cluster-cidr`.
    #[default]
    ClusterCidr,
    /// Sources inside this node's pod CIDRs (`spec.podCIDRs` of the Node).
    NodeCidr,
    /// Packets coming in on this bridge (`--pod-bridge-interface`).
    Bridge(String),
    /// Packets coming in on interfaces whose names start with this (`--pod-interface-name-prefix`).
    InterfacePrefix(String),
}

/// One family's match for traffic from pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Local {
    /// Nothing to tell pods by (no CIDR of this family): no traffic counts as local.
    #[default]
    None,
    Cidrs(Vec<IpNet>),
    /// An nft interface name pattern (`br0`, `veth*`).
    Interface(String),
}

/// What the rules depend on besides Services and endpoints.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeFacts,
    /// The node's addresses (InternalIP first), for NodePorts.
    pub node_ips: Vec<IpAddr>,
    pub nodeport_addresses: NodePortAddresses,
    /// Pod CIDRs of the cluster: traffic from elsewhere to a ClusterIP is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    pub detect_local: DetectLocal,
    /// This node's pod CIDRs, from its Node object.
    pub node_pod_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// Bit of the packet mark that asks for masquerading.
    pub masquerade_bit: u8,
    /// From ServiceCIDR objects: addresses inside them that no Service holds are dropped.
    pub service_cidrs: Vec<IpNet>,
}

impl Config {
    pub fn mark(&self) -> u32 {
        1u32 << self.masquerade_bit.min(31)
    }
}

/// A destination: address, protocol, port.
pub type Vip = (IpAddr, Protocol, u16);
/// A NodePort: protocol, port.
pub type NodePort = (Protocol, u16);
/// An endpoint: address, port.
pub type Target = (IpAddr, u16);

/// What happens to new connections to a destination without usable endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refuse {
    /// ICMP port unreachable: no endpoint anywhere.
    Reject,
    /// Silently: endpoints exist, but none this traffic policy may use.
    Drop,
}

/// ClientIP session affinity of one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// The Service port (`namespace/name:port`), which names the affinity chains and sets.
    pub port: String,
    pub protocol: Protocol,
    pub timeout: u32,
}

/// One family's ruleset content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub family: Option<AddressType>,
    /// Every ClusterIP served.
    pub cluster_ips: BTreeSet<IpAddr>,
    /// ClusterIP destinations with endpoints, by endpoint count.
    pub cluster: BTreeMap<Vip, Vec<Target>>,
    /// External IPs and LoadBalancer IPs under externalTrafficPolicy Cluster (masqueraded).
    pub external: BTreeMap<Vip, Vec<Target>>,
    /// NodePorts under externalTrafficPolicy Cluster (masqueraded).
    pub nodeports: BTreeMap<NodePort, Vec<Target>>,
    /// externalTrafficPolicy Local, traffic from outside: this node's endpoints, the client's
    /// address kept.
    pub external_local: BTreeMap<Vip, Vec<Target>>,
    pub nodeports_local: BTreeMap<NodePort, Vec<Target>>,
    /// externalTrafficPolicy Local, traffic from pods (not masqueraded) and from the node itself
    /// (masqueraded): every endpoint, as for Cluster, since there is no client address to keep.
    pub external_short: BTreeMap<Vip, Vec<Target>>,
    pub nodeports_short: BTreeMap<NodePort, Vec<Target>>,
    /// LoadBalancer IPs with `loadBalancerSourceRanges`: new connections from elsewhere are
    /// dropped before DNAT (NodePorts and external IPs of the same Service are not filtered,
    /// as upstream).
    pub firewall: BTreeMap<Vip, Vec<IpNet>>,
    /// Destinations without usable endpoints, with the Service port they belong to.
    pub refused: BTreeMap<Vip, (Refuse, String)>,
    pub refused_nodeports: BTreeMap<NodePort, (Refuse, String)>,
    /// `None`: NodePorts on every local address but loopback.
    pub nodeport_ips: Option<BTreeSet<IpAddr>>,
    /// Endpoint . endpoint . protocol . port: a pod reaching itself through a Service is
    /// masqueraded (hairpin).
    pub hairpin: BTreeSet<(IpAddr, Protocol, u16)>,
    /// Destinations of Services with `sessionAffinity: ClientIP`: a client keeps its endpoint
    /// for the timeout, whichever of the Service port's addresses it used.
    pub affinity: BTreeMap<Vip, Affinity>,
    pub affinity_nodeports: BTreeMap<NodePort, Affinity>,
    pub service_cidrs: Vec<IpNet>,
    /// Traffic from pods.
    pub local: Local,
    /// Service ports whose internal (`[0]`) or external (`[1]`) traffic policy is Local and
    /// whose endpoints are all elsewhere (upstream's `no_local_endpoints_total`).
    pub no_local: [usize; 2],
    pub masquerade_all: bool,
    pub mark: u32,
}

/// Whether this proxy serves `svc` at all: not handed to another proxy, and with a virtual IP.
pub fn proxied(svc: &Service) -> bool {
    !svc.labels
        .iter()
        .any(|(k, _)| k == LABEL_SERVICE_PROXY_NAME)
        && svc.type_ != ServiceType::ExternalName
        && svc.has_cluster_ip()
}

fn of_family(ip: &IpAddr, family: AddressType) -> bool {
    AddressType::of(ip) == family
}

/// Builds one family's plan.
pub fn plan<'a>(
    family: AddressType,
    services: impl IntoIterator<Item = (&'a ObjectKey, &'a Arc<Service>)>,
    endpoints: impl Fn(&ObjectKey) -> Option<ServiceEndpoints>,
    config: &Config,
) -> Plan {
    let mut p = globals(family, config);
    for (key, svc) in services {
        service(&mut p, family, key, svc, endpoints(key).as_ref(), config);
    }
    p
}

/// A plan holding only what the flags and cluster-wide objects decide.
pub fn globals(family: AddressType, config: &Config) -> Plan {
    Plan {
        family: Some(family),
        service_cidrs: config
            .service_cidrs
            .iter()
            .filter(|c| of_family(&c.addr(), family))
            .copied()
            .collect(),
        local: local(family, config),
        masquerade_all: config.masquerade_all,
        mark: config.mark(),
        nodeport_ips: nodeport_ips(family, config),
        ..Plan::default()
    }
}

/// The match for traffic from pods in `family`, as `--detect-local-mode` says.
fn local(family: AddressType, config: &Config) -> Local {
    let cidrs = |all: &[IpNet]| {
        let mine: Vec<IpNet> = all
            .iter()
            .filter(|c| of_family(&c.addr(), family))
            .copied()
            .collect();
        if mine.is_empty() {
            Local::None
        } else {
            Local::Cidrs(mine)
        }
    };
    match &config.detect_local {
        DetectLocal::ClusterCidr => cidrs(&config.cluster_cidrs),
        DetectLocal::NodeCidr => cidrs(&config.node_pod_cidrs),
        DetectLocal::Bridge(name) => Local::Interface(name.clone()),
        DetectLocal::InterfacePrefix(prefix) => Local::Interface(format!("{prefix}*")),
    }
}

/// Adds one Service's destinations of `family` to `p`: what [`plan`] does per Service, and what a
/// partial sync re-plans for the Services that changed.
pub fn service(
    p: &mut Plan,
    family: AddressType,
    key: &ObjectKey,
    svc: &Service,
    slices: Option<&ServiceEndpoints>,
    config: &Config,
) {
    if !proxied(svc) {
        return;
    }
    let Some(cluster_ip) = svc
        .cluster_ips()
        .iter()
        .copied()
        .find(|ip| of_family(ip, family))
    else {
        return;
    };
    p.cluster_ips.insert(cluster_ip);
    // Overlapping ranges merged: an interval set refuses overlapping elements.
    let ranges: Vec<IpNet> = IpNet::aggregate(
        &svc.load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|c| of_family(&c.addr(), family))
            .collect(),
    );
    let externals: Vec<IpAddr> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .copied()
        .filter(|ip| of_family(ip, family))
        .collect();
    for port in &svc.ports {
        let name = if port.name.is_empty() {
            format!("{key}")
        } else {
            format!("{key}:{}", port.name)
        };
        let found = backends(
            slices.iter().flat_map(|e| e.slices.iter().map(|s| &**s)),
            family,
            &port.name,
            port.protocol,
            &config.node,
        );
        let usable = categorize(&found, &config.node);
        let refuse = if usable.any {
            Refuse::Drop
        } else {
            Refuse::Reject
        };
        for (ip, target_port) in usable.cluster.iter().chain(&usable.local) {
            p.hairpin.insert((*ip, port.protocol, *target_port));
        }
        let internal = match svc.internal_traffic_policy {
            TrafficPolicy::Local => &usable.local,
            TrafficPolicy::Cluster => &usable.cluster,
        };
        let vip = (cluster_ip, port.protocol, port.port);
        if let SessionAffinity::ClientIp { timeout_seconds } = svc.session_affinity {
            let affinity = Affinity {
                port: name.clone(),
                protocol: port.protocol,
                timeout: timeout_seconds,
            };
            p.affinity.insert(vip, affinity.clone());
            for ip in &externals {
                p.affinity
                    .insert((*ip, port.protocol, port.port), affinity.clone());
            }
            if let Some(np) = port.node_port {
                p.affinity_nodeports.insert((port.protocol, np), affinity);
            }
        }
        let elsewhere_only = usable.any && usable.local.is_empty();
        if elsewhere_only && svc.internal_traffic_policy == TrafficPolicy::Local {
            p.no_local[0] += 1;
        }
        let external = node_port_wanted(svc, port.node_port) || !externals.is_empty();
        if elsewhere_only && external && svc.external_traffic_policy == TrafficPolicy::Local {
            p.no_local[1] += 1;
        }
        if internal.is_empty() {
            p.refused.insert(vip, (refuse, name.clone()));
        } else {
            p.cluster.insert(vip, internal.clone());
        }
        // External destinations: external IPs, LoadBalancer IPs, the NodePort.
        let local_policy = svc.external_traffic_policy == TrafficPolicy::Local;
        let wants_node_port =
            matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer);
        let node_port = port
            .node_port
            .filter(|_| wants_node_port)
            .map(|np| (port.protocol, np));
        if !ranges.is_empty() {
            for ip in svc
                .load_balancer_ips
                .iter()
                .filter(|ip| of_family(ip, family))
            {
                p.firewall
                    .insert((*ip, port.protocol, port.port), ranges.clone());
            }
        }
        let vips = externals.iter().map(|ip| (*ip, port.protocol, port.port));
        if local_policy {
            for vip in vips {
                if !usable.cluster.is_empty() {
                    p.external_short.insert(vip, usable.cluster.clone());
                }
                if usable.local.is_empty() {
                    p.refused.insert(vip, (refuse, name.clone()));
                } else {
                    p.external_local.insert(vip, usable.local.clone());
                }
            }
            if let Some(key) = node_port {
                if !usable.cluster.is_empty() {
                    p.nodeports_short.insert(key, usable.cluster.clone());
                }
                if usable.local.is_empty() {
                    p.refused_nodeports.insert(key, (refuse, name.clone()));
                } else {
                    p.nodeports_local.insert(key, usable.local.clone());
                }
            }
        } else {
            for vip in vips {
                if usable.cluster.is_empty() {
                    p.refused.insert(vip, (refuse, name.clone()));
                } else {
                    p.external.insert(vip, usable.cluster.clone());
                }
            }
            if let Some(key) = node_port {
                if usable.cluster.is_empty() {
                    p.refused_nodeports.insert(key, (refuse, name.clone()));
                } else {
                    p.nodeports.insert(key, usable.cluster.clone());
                }
            }
        }
    }
}

fn node_port_wanted(svc: &Service, node_port: Option<u16>) -> bool {
    node_port.is_some() && matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
}

/// The addresses NodePorts answer on, or `None` for every local non-loopback address: upstream's
/// rule is that a family without a CIDR (or, with `primary`, without a node address) matches
/// every address, while CIDRs that match no node address match none.
fn nodeport_ips(family: AddressType, config: &Config) -> Option<BTreeSet<IpAddr>> {
    match &config.nodeport_addresses {
        NodePortAddresses::Primary => config
            .node_ips
            .iter()
            .copied()
            .find(|ip| of_family(ip, family) && !ip.is_loopback())
            .map(|ip| BTreeSet::from([ip])),
        NodePortAddresses::Cidrs(cidrs) => {
            let family_cidrs: Vec<&IpNet> = cidrs
                .iter()
                .filter(|c| of_family(&c.addr(), family))
                .collect();
            if family_cidrs.is_empty() || family_cidrs.iter().any(|c| c.prefix_len() == 0) {
                return None;
            }
            Some(
                config
                    .node_ips
                    .iter()
                    .copied()
                    .filter(|ip| family_cidrs.iter().any(|c| c.contains(ip)))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
