//! What the cluster zone keeps of Services and EndpointSlices: only the fields answers are built
//! from. The model's objects carry what every consumer needs (selectors, node names, target
//! references, not-ready endpoints); DNS holds one of these per object instead, which is most of
//! why it needs a fraction of CoreDNS's memory.

use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;
use svcplane_model::tracker::TrackedSlice;
use svcplane_model::{EndpointSlice, ObjectKey, Protocol, Service, ServiceType};

/// A Service as the zone answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneService {
    pub key: ObjectKey,
    pub kind: ServiceKind,
    /// Service ports, in the Service's order (SRV for ClusterIP Services).
    pub ports: Box<[ZonePort]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// Cluster IPs, primary first; empty when not allocated yet.
    ClusterIp(Box<[IpAddr]>),
    Headless,
    /// The external name as written; `None` when the field is empty.
    ExternalName(Option<Box<str>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePort {
    /// Empty for an unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

impl ZoneService {
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.kind {
            ServiceKind::ClusterIp(ips) => ips,
            _ => &[],
        }
    }

    pub fn is_headless(&self) -> bool {
        self.kind == ServiceKind::Headless
    }

    pub fn is_external_name(&self) -> bool {
        matches!(self.kind, ServiceKind::ExternalName(_))
    }
}

impl From<&Service> for ZoneService {
    fn from(svc: &Service) -> Self {
        let kind = if svc.type_ == ServiceType::ExternalName {
            ServiceKind::ExternalName(svc.external_name.clone())
        } else if svc.is_headless() {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp(svc.cluster_ips().into())
        };
        ZoneService {
            key: svc.key.clone(),
            kind,
            ports: svc
                .ports
                .iter()
                .map(|p| ZonePort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: p.port,
                })
                .collect(),
        }
    }
}

/// An EndpointSlice as the zone answers from it: its ports and its ready addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSlice {
    pub key: ObjectKey,
    pub service: ObjectKey,
    /// Ports with a number (upstream's "all ports" entries answer nothing).
    pub ports: Box<[ZonePort]>,
    /// One entry per address of every ready endpoint, in slice order.
    pub ready: Box<[ZoneEndpoint]>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for the programming-latency metric.
    pub trigger_time: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneEndpoint {
    pub ip: IpAddr,
    pub hostname: Option<Box<str>>,
}

impl ZoneEndpoint {
    /// The label the endpoint answers to below its Service: its hostname, else its dashed address.
    pub fn label(&self) -> std::borrow::Cow<'_, str> {
        match &self.hostname {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(svcplane_model::dns::dashed_ip(self.ip)),
        }
    }
}

impl From<&EndpointSlice> for ZoneSlice {
    fn from(slice: &EndpointSlice) -> Self {
        ZoneSlice {
            key: slice.key.clone(),
            service: slice.service.clone(),
            ports: slice
                .ports
                .iter()
                .filter_map(|p| {
                    Some(ZonePort {
                        name: p.name.clone(),
                        protocol: p.protocol,
                        port: p.port?,
                    })
                })
                .collect(),
            ready: slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.is_ready())
                .flat_map(|e| {
                    e.addresses.iter().map(|ip| ZoneEndpoint {
                        ip: *ip,
                        hostname: e.hostname.clone(),
                    })
                })
                .collect(),
            trigger_time: slice.trigger_time,
        }
    }
}

impl TrackedSlice for ZoneSlice {
    fn key(&self) -> &ObjectKey {
        &self.key
    }

    fn service(&self) -> &ObjectKey {
        &self.service
    }

    /// Ports and ready addresses; the trigger time is bookkeeping.
    fn same_endpoints(&self, other: &Self) -> bool {
        self.key == other.key && self.ports == other.ports && self.ready == other.ready
    }

    fn trigger_time(&self) -> Option<Timestamp> {
        self.trigger_time
    }
}
