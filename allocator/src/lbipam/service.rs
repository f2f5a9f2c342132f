//! Services as LoadBalancer IPAM sees them: the slim [`LbService`], converted once at the edge
//! from the API object through the model's `Service` (so malformed Services are rejected the
//! way every svcplane component rejects them), plus the annotations only IPAM reads.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::Timestamp;
use svcplane_model::{
    IpFamily, IpFamilyPolicy, Labels, ObjectKey, Protocol, Selector, Service, ServiceType,
    TrafficPolicy,
};

/// Comma-separated addresses the Service asks for, at most one per family. Wins over
/// `spec.loadBalancerIP`.
pub const ANNOTATION_IPS: &str = "allocator.svcplane.dev/load-balancer-ips";
/// Name of the pool to take addresses from; may name a pool with `autoAssign: false`.
pub const ANNOTATION_POOL: &str = "allocator.svcplane.dev/address-pool";
/// Sharing key: Services with the same key may share an address (see [`LbService::can_share`]).
pub const ANNOTATION_SHARING_KEY: &str = "allocator.svcplane.dev/allow-shared-ip";

/// What a Service asks for in addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Anything from a matching pool.
    Any,
    /// Exactly these (one per family), from the annotation or `spec.loadBalancerIP`.
    Ips(Vec<IpAddr>),
    /// The request does not parse; the Service gets nothing until it is fixed.
    Invalid(String),
}

/// Where traffic for the Service goes, as far as sharing an address is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `externalTrafficPolicy: Cluster`: any node forwards.
    Cluster,
    /// `externalTrafficPolicy: Local`: only nodes with the selected pods answer, so Services
    /// sharing an address must select the same pods.
    Local(Option<Selector>),
}

/// A LoadBalancer Service IPAM is responsible for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbService {
    pub key: ObjectKey,
    pub uid: Option<Box<str>>,
    /// The version seen last. Events name it in their object reference: kube's event recorder
    /// folds Events with the same reason about the same reference into one series (keeping the
    /// first note), so this keeps decisions about different versions apart.
    pub resource_version: Option<Box<str>>,
    /// Older Services win conflicts over addresses (two claiming one at start-up).
    pub created: Option<Timestamp>,
    pub labels: Labels,
    /// `spec.ipFamilies`, primary first.
    pub families: Vec<IpFamily>,
    pub policy: Option<IpFamilyPolicy>,
    /// `(protocol, port)` pairs, sorted, without repeats.
    pub ports: Vec<(Protocol, u16)>,
    pub backend: Backend,
    pub sharing_key: Option<Box<str>>,
    pub pool: Option<Box<str>>,
    pub requested: Requested,
    /// `status.loadBalancer.ingress[].ip` as last seen.
    pub ingress: Vec<IpAddr>,
}

impl LbService {
    /// A Service with no ports, IPv4 single-stack, Cluster policy, asking for nothing; fill in
    /// the rest with struct update syntax.
    pub fn new(namespace: &str, name: &str) -> Self {
        LbService {
            key: ObjectKey::new(namespace, name),
            uid: None,
            resource_version: None,
            created: None,
            labels: Labels::default(),
            families: vec![IpFamily::V4],
            policy: Some(IpFamilyPolicy::SingleStack),
            ports: Vec::new(),
            backend: Backend::Cluster,
            sharing_key: None,
            pool: None,
            requested: Requested::Any,
            ingress: Vec::new(),
        }
    }

    /// Whether `self` and `other` may use the same address, by the rules MetalLB documents:
    /// the same sharing key on both, no `(protocol, port)` in common, and the same backend
    /// (both Cluster, or both Local selecting the same pods).
    pub fn can_share(&self, other: &LbService) -> Result<(), SharingConflict> {
        match (&self.sharing_key, &other.sharing_key) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Err(SharingConflict::Key),
        }
        // Both lists are sorted: walk them together.
        let (mut i, mut j) = (0, 0);
        while i < self.ports.len() && j < other.ports.len() {
            match self.ports[i].cmp(&other.ports[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    let (protocol, port) = self.ports[i];
                    return Err(SharingConflict::Port(protocol, port));
                }
            }
        }
        if self.backend != other.backend {
            return Err(SharingConflict::Backend);
        }
        Ok(())
    }
}

/// Why two Services may not share an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharingConflict {
    /// Not both with the same sharing key.
    Key,
    /// Both use this port.
    Port(Protocol, u16),
    /// Different traffic policies, or Local with different selectors.
    Backend,
}

/// What the controller keeps of a watched Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A LoadBalancer of our class (or of none).
    Ours(Box<LbService>),
    /// No longer a LoadBalancer, but `status.loadBalancer.ingress` still holds addresses: the
    /// allocator clears them if it assigned them or they lie in its pools.
    Stale {
        uid: Option<Box<str>>,
        ingress: Vec<IpAddr>,
    },
}

/// Turns a watched Service into what IPAM keeps: `Ok(None)` for Services that are none of its
/// business (not LoadBalancers without leftover addresses, or another `loadBalancerClass`).
/// `class` is ours: Services with no class are always ours, those with a class only when it is
/// `class`.
pub fn convert(
    svc: &core::Service,
    class: Option<&str>,
) -> Result<Option<Watched>, svcplane_model::Error> {
    let model = Service::try_from(svc)?;
    let spec = svc.spec.as_ref();
    if model.type_ != ServiceType::LoadBalancer {
        return Ok(
            (!model.load_balancer_ips.is_empty()).then_some(Watched::Stale {
                uid: model.uid,
                ingress: model.load_balancer_ips,
            }),
        );
    }
    if let Some(theirs) = spec.and_then(|s| s.load_balancer_class.as_deref())
        && Some(theirs) != class
    {
        return Ok(None);
    }
    let annotations = svc.metadata.annotations.as_ref();
    let annotation = |name: &str| {
        annotations
            .and_then(|a| a.get(name))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let requested = match (
        annotation(ANNOTATION_IPS),
        spec.and_then(|s| s.load_balancer_ip.as_deref())
            .map(str::trim)
            .filter(|v| !v.is_empty()),
    ) {
        (Some(list), _) => parse_requested(list, ANNOTATION_IPS),
        (None, Some(ip)) => parse_requested(ip, "spec.loadBalancerIP"),
        (None, None) => Requested::Any,
    };
    let mut ports: Vec<(Protocol, u16)> =
        model.ports.iter().map(|p| (p.protocol, p.port)).collect();
    ports.sort_unstable();
    ports.dedup();
    let backend = match model.external_traffic_policy {
        TrafficPolicy::Cluster => Backend::Cluster,
        TrafficPolicy::Local => Backend::Local(model.selector),
    };
    Ok(Some(Watched::Ours(Box::new(LbService {
        key: model.key,
        uid: model.uid,
        resource_version: svc.metadata.resource_version.as_deref().map(Into::into),
        created: model.created,
        labels: model.labels,
        families: model.ip_families,
        policy: model.ip_family_policy,
        ports,
        backend,
        sharing_key: annotation(ANNOTATION_SHARING_KEY).map(Into::into),
        pool: annotation(ANNOTATION_POOL).map(Into::into),
        requested,
        ingress: model.load_balancer_ips,
    }))))
}

/// A comma-separated list of addresses, at most one per family.
pub fn parse_requested(list: &str, source: &str) -> Requested {
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Ok(ip) = part.parse::<IpAddr>() else {
            return Requested::Invalid(format!("{source}: {part:?} is not an IP address"));
        };
        if let Some(other) = ips.iter().find(|o| IpFamily::of(o) == IpFamily::of(&ip)) {
            return Requested::Invalid(format!(
                "{source}: {other} and {ip} are of the same family (one address per family)"
            ));
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        Requested::Any
    } else {
        Requested::Ips(ips)
    }
}
