use std::net::IpAddr;

use ipnet::IpNet;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::jiff::Timestamp;

use crate::convert::{boxed, convert_all, ip, port, required};
use crate::service::{Protocol, ServicePort, TargetPort};
use crate::{Error, LABEL_TOPOLOGY_ZONE, Labels, ObjectKey, Result};

/// The pod facts the endpoints controller (and `--pods verified` DNS) need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: ObjectKey,
    pub uid: Option<Box<str>>,
    pub labels: Labels,
    /// `status.podIPs`, primary first.
    pub ips: Vec<IpAddr>,
    pub phase: PodPhase,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// When the `Ready` condition last changed (`lastTransitionTime`), for trigger times.
    pub ready_since: Option<Timestamp>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub hostname: Option<Box<str>>,
    pub subdomain: Option<Box<str>>,
    pub node_name: Option<Box<str>>,
    /// Named container ports, regular containers first, then sidecars (restartable init
    /// containers), the order upstream searches them in.
    pub named_ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

impl Pod {
    /// Pods that have finished never back a Service.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// The pod port a Service port reaches: a number as is; a name by the first container port
    /// with that name and the Service port's protocol. `None` when the pod has no such port.
    pub fn resolve_port(&self, svc_port: &ServicePort) -> Option<u16> {
        match &svc_port.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .named_ports
                .iter()
                .find(|p| p.name == *name && p.protocol == svc_port.protocol)
                .map(|p| p.port),
        }
    }
}

const POD: &str = "Pod";

impl TryFrom<&core::Pod> for Pod {
    type Error = Error;

    fn try_from(pod: &core::Pod) -> Result<Self> {
        let meta = &pod.metadata;
        let key = ObjectKey::new(
            required(POD, "metadata.namespace", &meta.namespace)?,
            required(POD, "metadata.name", &meta.name)?,
        );
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();

        let ips = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(ips) if !ips.is_empty() => convert_all(ips, |p| ip(POD, "status.podIPs", &p.ip))?,
            _ => status
                .and_then(|s| s.pod_ip.as_deref())
                .filter(|v| !v.is_empty())
                .map(|v| ip(POD, "status.podIP", v))
                .transpose()?
                .into_iter()
                .collect(),
        };
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            None | Some("") | Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Unknown") => PodPhase::Unknown,
            Some(other) => {
                return Err(Error::UnknownValue {
                    kind: POD,
                    field: "status.phase",
                    value: other.to_owned(),
                });
            }
        };
        let ready_condition = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready");
        let ready = ready_condition.is_some_and(|c| c.status == "True");
        let ready_since =
            ready_condition.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));

        let sidecars = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
        let named_ports = containers
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty())?;
                Some((name, p))
            })
            .map(|(name, p)| {
                Ok(NamedPort {
                    name: name.into(),
                    protocol: Protocol::parse(
                        POD,
                        "spec.containers.ports.protocol",
                        p.protocol.as_deref(),
                    )?,
                    port: port(POD, "spec.containers.ports.containerPort", p.container_port)?,
                })
            })
            .collect::<Result<_>>()?;

        Ok(Pod {
            key,
            uid: boxed(&meta.uid),
            labels: meta.labels.as_ref().map(Labels::from).unwrap_or_default(),
            ips,
            phase,
            ready,
            ready_since,
            terminating: meta.deletion_timestamp.is_some(),
            hostname: spec.and_then(|s| boxed(&s.hostname)),
            subdomain: spec.and_then(|s| boxed(&s.subdomain)),
            node_name: spec.and_then(|s| boxed(&s.node_name)),
            named_ports,
        })
    }
}

/// The node facts endpoint placement and topology hints need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: Box<str>,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<Box<str>>,
    /// InternalIP and ExternalIP addresses, in status order.
    pub addresses: Vec<IpAddr>,
    /// Allocatable CPU in millicores, which weighs zones for topology hints upstream.
    pub allocatable_cpu_millis: Option<u64>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// Labelled `node-role.kubernetes.io/control-plane` (or the older `.../master`).
    pub control_plane: bool,
    /// `spec.podCIDRs` (or the older `spec.podCIDR`): this node's pod addresses.
    pub pod_cidrs: Vec<IpNet>,
}

const NODE: &str = "Node";

impl TryFrom<&core::Node> for Node {
    type Error = Error;

    fn try_from(node: &core::Node) -> Result<Self> {
        let name = required(NODE, "metadata.name", &node.metadata.name)?.into();
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
            .filter(|z| !z.is_empty())
            .map(|z| z.as_str().into());
        let status = node.status.as_ref();
        let addresses = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .map(|a| ip(NODE, "status.addresses", &a.address))
            .collect::<Result<_>>()?;
        let allocatable_cpu_millis = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .map(|q| {
                cpu_millis(&q.0).ok_or_else(|| Error::UnknownValue {
                    kind: NODE,
                    field: "status.allocatable.cpu",
                    value: q.0.clone(),
                })
            })
            .transpose()?;
        let labels = node.metadata.labels.as_ref();
        let control_plane = labels.is_some_and(|l| {
            l.contains_key("node-role.kubernetes.io/control-plane")
                || l.contains_key("node-role.kubernetes.io/master")
        });
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let spec = node.spec.as_ref();
        let pod_cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default()
            .iter()
            .map(|c| {
                c.parse().map_err(|_| Error::UnknownValue {
                    kind: NODE,
                    field: "spec.podCIDRs",
                    value: c.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Node {
            name,
            zone,
            addresses,
            allocatable_cpu_millis,
            ready,
            control_plane,
            pod_cidrs,
        })
    }
}

/// Parses the CPU quantities nodes report: `4`, `3500m`, `1.5`.
fn cpu_millis(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    let cores: f64 = q.parse().ok()?;
    (cores.is_finite() && cores >= 0.0).then(|| (cores * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests;
