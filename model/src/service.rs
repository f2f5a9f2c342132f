use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::convert::{boxed, cidr, convert_all, in_range, ip, port, required};
use crate::{
    ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE, Error, Labels, ObjectKey, Result,
    Selector,
};

const KIND: &str = "Service";

/// A Service as svcplane's components see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ObjectKey,
    /// Needed for owner references on the objects written for this Service.
    pub uid: Option<Box<str>>,
    /// Copied onto Endpoints by the endpoints controller.
    pub labels: Labels,
    pub type_: ServiceType,
    pub cluster_ips: ClusterIps,
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: Option<IpFamilyPolicy>,
    pub ports: Vec<ServicePort>,
    pub selector: Option<Selector>,
    /// Only for `ExternalName` Services.
    pub external_name: Option<Box<str>>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: SessionAffinity,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    pub publish_not_ready_addresses: bool,
    /// `spec.trafficDistribution`, e.g. `PreferClose`.
    pub traffic_distribution: Option<Box<str>>,
    /// `service.kubernetes.io/topology-mode`, e.g. `Auto`; the deprecated
    /// `topology-aware-hints` wins when present, as upstream.
    pub topology_mode: Option<Box<str>>,
    /// `metadata.creationTimestamp`: the trigger time of a Service's first sync.
    pub created: Option<Timestamp>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// How a Service asks for topology hints on its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintMode {
    None,
    /// `trafficDistribution: PreferClose` or `PreferSameZone`: each ready endpoint for its zone.
    SameZone,
    /// `trafficDistribution: PreferSameNode`: zone and node.
    SameNode,
    /// `topology-mode: Auto`: zones get ready endpoints in proportion to their CPU.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// What `spec.clusterIPs` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterIps {
    /// No cluster IP set: ExternalName Services, or one not yet allocated.
    NotSet,
    /// `clusterIP: None`: what "headless" means everywhere in svcplane.
    Headless,
    /// One address per family, primary first.
    Ips(Vec<IpAddr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the API spelling; an unset protocol defaults to TCP, as the API does.
    pub(crate) fn parse(kind: &'static str, field: &'static str, v: Option<&str>) -> Result<Self> {
        match v.unwrap_or("TCP") {
            "TCP" | "" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(Error::UnknownValue {
                kind,
                field,
                value: other.to_owned(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod (see [`crate::Pod::resolve_port`]).
    Name(Box<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for the single unnamed port a Service may have.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    pub app_protocol: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

/// Upstream's default ClientIP affinity timeout (three hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

impl Service {
    /// A Service with the API's defaults and nothing else set (no cluster IP, ports or
    /// selector); fill in the rest with struct update syntax.
    pub fn new(key: ObjectKey, type_: ServiceType) -> Self {
        Service {
            key,
            uid: None,
            labels: Labels::default(),
            type_,
            cluster_ips: ClusterIps::NotSet,
            ip_families: Vec::new(),
            ip_family_policy: None,
            ports: Vec::new(),
            selector: None,
            external_name: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            publish_not_ready_addresses: false,
            traffic_distribution: None,
            topology_mode: None,
            created: None,
            deleting: false,
        }
    }

    /// True for `clusterIP: None`.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips == ClusterIps::Headless
    }

    /// True when a cluster IP is set (upstream's `IsServiceIPSet`): not headless, not ExternalName,
    /// not waiting for allocation. The endpoint controllers label the Endpoints and slices of every
    /// other Service `service.kubernetes.io/headless`, as upstream does.
    pub fn has_cluster_ip(&self) -> bool {
        !self.cluster_ips().is_empty()
    }

    /// The allocated cluster IPs, primary first; empty when headless or unset.
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.cluster_ips {
            ClusterIps::Ips(ips) => ips,
            _ => &[],
        }
    }

    /// How the Service asks for hints on its endpoints. The annotation, when present, decides
    /// alone (even a value that turns hints off); otherwise `trafficDistribution`. The endpoints
    /// controller writes hints by it and the proxy decides by it whether to use them.
    pub fn hint_mode(&self) -> HintMode {
        if let Some(mode) = self.topology_mode.as_deref() {
            return if mode.eq_ignore_ascii_case("auto") {
                HintMode::Auto
            } else {
                HintMode::None
            };
        }
        match self.traffic_distribution.as_deref() {
            Some("PreferClose" | "PreferSameZone") => HintMode::SameZone,
            Some("PreferSameNode") => HintMode::SameNode,
            _ => HintMode::None,
        }
    }

    /// Whether the Service asks for topology hints at all.
    pub fn wants_topology_hints(&self) -> bool {
        self.hint_mode() != HintMode::None
    }
}

impl TryFrom<&core::Service> for Service {
    type Error = Error;

    fn try_from(svc: &core::Service) -> Result<Self> {
        let meta = &svc.metadata;
        let key = ObjectKey::new(
            required(KIND, "metadata.namespace", &meta.namespace)?,
            required(KIND, "metadata.name", &meta.name)?,
        );
        let spec = svc.spec.as_ref().ok_or(Error::MissingField {
            kind: KIND,
            field: "spec",
        })?;
        let type_ = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" | "" => ServiceType::ClusterIp,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            other => {
                return Err(Error::UnknownValue {
                    kind: KIND,
                    field: "spec.type",
                    value: other.to_owned(),
                });
            }
        };

        // clusterIPs supersedes clusterIP; older objects may carry only the latter.
        let raw_ips: &[String] = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips,
            (_, Some(ip)) if !ip.is_empty() => std::slice::from_ref(ip),
            _ => &[],
        };
        let cluster_ips = if type_ == ServiceType::ExternalName || raw_ips.is_empty() {
            ClusterIps::NotSet
        } else if raw_ips[0] == "None" {
            ClusterIps::Headless
        } else {
            ClusterIps::Ips(convert_all(raw_ips, |v| ip(KIND, "spec.clusterIPs", v))?)
        };

        let ip_families = convert_all(
            spec.ip_families.as_deref().unwrap_or_default(),
            |f| match f.as_str() {
                "IPv4" => Ok(IpFamily::V4),
                "IPv6" => Ok(IpFamily::V6),
                other => Err(Error::UnknownValue {
                    kind: KIND,
                    field: "spec.ipFamilies",
                    value: other.to_owned(),
                }),
            },
        )?;
        let ip_family_policy = match spec.ip_family_policy.as_deref() {
            None | Some("") => None,
            Some("SingleStack") => Some(IpFamilyPolicy::SingleStack),
            Some("PreferDualStack") => Some(IpFamilyPolicy::PreferDualStack),
            Some("RequireDualStack") => Some(IpFamilyPolicy::RequireDualStack),
            Some(other) => {
                return Err(Error::UnknownValue {
                    kind: KIND,
                    field: "spec.ipFamilyPolicy",
                    value: other.to_owned(),
                });
            }
        };

        let ports = convert_all(spec.ports.as_deref().unwrap_or_default(), convert_port)?;
        let selector = spec
            .selector
            .as_ref()
            .map(Labels::from)
            .and_then(Selector::new);
        let external_name = if type_ == ServiceType::ExternalName {
            Some(
                required(KIND, "spec.externalName", &spec.external_name)?
                    .trim_end_matches('.')
                    .into(),
            )
        } else {
            None
        };
        let external_ips = convert_all(spec.external_ips.as_deref().unwrap_or_default(), |v| {
            ip(KIND, "spec.externalIPs", v)
        })?;
        let load_balancer_ips = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ing| ing.ip.as_deref().filter(|v| !v.is_empty()))
            .map(|v| ip(KIND, "status.loadBalancer.ingress.ip", v))
            .collect::<Result<Vec<_>>>()?;
        let load_balancer_source_ranges = convert_all(
            spec.load_balancer_source_ranges
                .as_deref()
                .unwrap_or_default(),
            |v| cidr(KIND, "spec.loadBalancerSourceRanges", v),
        )?;

        let session_affinity = match spec.session_affinity.as_deref() {
            None | Some("") | Some("None") => SessionAffinity::None,
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout_seconds = match timeout {
                    Some(t) => in_range(
                        KIND,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        t,
                        1,
                        86_400,
                    )? as u32,
                    None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                };
                SessionAffinity::ClientIp { timeout_seconds }
            }
            Some(other) => {
                return Err(Error::UnknownValue {
                    kind: KIND,
                    field: "spec.sessionAffinity",
                    value: other.to_owned(),
                });
            }
        };

        let annotations = meta.annotations.as_ref();
        let topology_mode = annotations
            .and_then(|a| {
                a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS)
                    .or_else(|| a.get(ANNOTATION_TOPOLOGY_MODE))
            })
            .map(|v| v.as_str().into());

        Ok(Service {
            key,
            uid: boxed(&meta.uid),
            labels: meta.labels.as_ref().map(Labels::from).unwrap_or_default(),
            type_,
            cluster_ips,
            ip_families,
            ip_family_policy,
            ports,
            selector,
            external_name,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            session_affinity,
            external_traffic_policy: traffic_policy(
                "spec.externalTrafficPolicy",
                &spec.external_traffic_policy,
            )?,
            internal_traffic_policy: traffic_policy(
                "spec.internalTrafficPolicy",
                &spec.internal_traffic_policy,
            )?,
            health_check_node_port: spec
                .health_check_node_port
                .filter(|p| *p != 0)
                .map(|p| port(KIND, "spec.healthCheckNodePort", p))
                .transpose()?,
            publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
            traffic_distribution: boxed(&spec.traffic_distribution),
            topology_mode,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.is_some(),
        })
    }
}

fn traffic_policy(field: &'static str, v: &Option<String>) -> Result<TrafficPolicy> {
    match v.as_deref() {
        None | Some("") | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(Error::UnknownValue {
            kind: KIND,
            field,
            value: other.to_owned(),
        }),
    }
}

fn convert_port(p: &core::ServicePort) -> Result<ServicePort> {
    let number = port(KIND, "spec.ports.port", p.port)?;
    let target_port = match &p.target_port {
        None => TargetPort::Number(number),
        Some(IntOrString::Int(0)) => TargetPort::Number(number),
        Some(IntOrString::Int(n)) => TargetPort::Number(port(KIND, "spec.ports.targetPort", *n)?),
        Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(number),
        // Upstream never reads a string targetPort as a number, even one of digits.
        Some(IntOrString::String(s)) => TargetPort::Name(s.as_str().into()),
    };
    Ok(ServicePort {
        name: p.name.as_deref().unwrap_or_default().into(),
        protocol: Protocol::parse(KIND, "spec.ports.protocol", p.protocol.as_deref())?,
        port: number,
        target_port,
        node_port: p
            .node_port
            .filter(|n| *n != 0)
            .map(|n| port(KIND, "spec.ports.nodePort", n))
            .transpose()?,
        app_protocol: boxed(&p.app_protocol),
    })
}

#[cfg(test)]
mod tests;
