use std::net::IpAddr;

use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::jiff::Timestamp;

use crate::convert::{boxed, convert_all, ip, port, required};
use crate::service::{IpFamily, Protocol};
use crate::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, Error, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, ObjectKey,
    Result,
};

const KIND: &str = "EndpointSlice";

/// An EndpointSlice as consumers (DNS, proxy, the controller's own cache) need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// The Service this slice belongs to, from the `kubernetes.io/service-name` label.
    pub service: ObjectKey,
    pub address_type: AddressType,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
    pub managed_by: Option<Box<str>>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for programming-latency metrics; an
    /// unparsable value counts as absent (as upstream's trackers treat it).
    pub trigger_time: Option<Timestamp>,
    /// Lets a controller detect that its own cache is older than what it last wrote.
    pub resource_version: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressType {
    V4,
    V6,
}

impl AddressType {
    /// The family of one address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressType::V4,
            IpAddr::V6(_) => AddressType::V6,
        }
    }

    /// The API spelling: `IPv4`, `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::V4 => "IPv4",
            AddressType::V6 => "IPv6",
        }
    }
}

impl From<IpFamily> for AddressType {
    fn from(family: IpFamily) -> Self {
        match family {
            IpFamily::V4 => AddressType::V4,
            IpFamily::V6 => AddressType::V6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Empty for an unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    /// `None` means "all ports" upstream; consumers skip such ports.
    pub port: Option<u16>,
    pub app_protocol: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub conditions: Conditions,
    pub hostname: Option<Box<str>>,
    pub node_name: Option<Box<str>>,
    pub zone: Option<Box<str>>,
    /// Boxed: rare, and two vectors inline would fatten every endpoint.
    pub hints: Option<Box<Hints>>,
    /// The pod behind this endpoint, when `targetRef` names one.
    pub target_pod: Option<ObjectKey>,
}

/// Endpoint conditions as written; `None` is "unknown", which readers treat per field (see methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Conditions {
    /// Unknown readiness counts as ready (discovery.k8s.io/v1 semantics).
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// Unknown serving falls back to readiness.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hints {
    pub for_zones: Vec<Box<str>>,
    pub for_nodes: Vec<Box<str>>,
}

impl TryFrom<&discovery::EndpointSlice> for EndpointSlice {
    type Error = Error;

    fn try_from(slice: &discovery::EndpointSlice) -> Result<Self> {
        let meta = &slice.metadata;
        let namespace = required(KIND, "metadata.namespace", &meta.namespace)?;
        let name = required(KIND, "metadata.name", &meta.name)?;
        let labels = meta.labels.as_ref();
        let service_name = labels
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .filter(|v| !v.is_empty())
            .ok_or(Error::MissingField {
                kind: KIND,
                field: "metadata.labels[kubernetes.io/service-name]",
            })?;
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::V4,
            "IPv6" => AddressType::V6,
            other => return Err(Error::UnsupportedAddressType(other.to_owned())),
        };
        let ports = convert_all(slice.ports.as_deref().unwrap_or_default(), |p| {
            Ok(EndpointPort {
                name: p.name.as_deref().unwrap_or_default().into(),
                protocol: Protocol::parse(KIND, "ports.protocol", p.protocol.as_deref())?,
                port: p.port.map(|n| port(KIND, "ports.port", n)).transpose()?,
                app_protocol: boxed(&p.app_protocol),
            })
        })?;
        let endpoints = convert_all(slice.endpoints.as_deref().unwrap_or_default(), |e| {
            convert_endpoint(e, address_type)
        })?;
        Ok(EndpointSlice {
            key: ObjectKey::new(namespace, name),
            service: ObjectKey::new(namespace, service_name.as_str()),
            address_type,
            ports,
            endpoints,
            managed_by: labels
                .and_then(|l| l.get(LABEL_MANAGED_BY))
                .map(|v| v.as_str().into()),
            trigger_time: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
                .and_then(|v| v.parse().ok()),
            resource_version: boxed(&meta.resource_version),
        })
    }
}

fn convert_endpoint(e: &discovery::Endpoint, family: AddressType) -> Result<Endpoint> {
    let addresses = convert_all(&e.addresses, |a| {
        let addr = ip(KIND, "endpoints.addresses", a)?;
        // A slice holds one family; an address of the other family is malformed.
        match (family, addr) {
            (AddressType::V4, IpAddr::V4(_)) | (AddressType::V6, IpAddr::V6(_)) => Ok(addr),
            _ => Err(Error::InvalidIp {
                kind: KIND,
                field: "endpoints.addresses",
                value: a.clone(),
            }),
        }
    })?;
    if addresses.is_empty() {
        return Err(Error::MissingField {
            kind: KIND,
            field: "endpoints.addresses",
        });
    }
    let conditions = e
        .conditions
        .as_ref()
        .map(|c| Conditions {
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
        })
        .unwrap_or_default();
    let hints = e.hints.as_ref().map(|h| {
        Box::new(Hints {
            for_zones: h
                .for_zones
                .iter()
                .flatten()
                .map(|z| z.name.as_str().into())
                .collect(),
            for_nodes: h
                .for_nodes
                .iter()
                .flatten()
                .map(|n| n.name.as_str().into())
                .collect(),
        })
    });
    let target_pod = e
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| Some(ObjectKey::new(r.namespace.as_deref()?, r.name.as_deref()?)));
    Ok(Endpoint {
        addresses,
        conditions,
        hostname: boxed(&e.hostname),
        node_name: boxed(&e.node_name),
        zone: boxed(&e.zone),
        hints,
        target_pod,
    })
}

#[cfg(test)]
mod tests;
