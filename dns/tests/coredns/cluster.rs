//! The objects both servers answer from, written through the real API server.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use svcplane_testenv::kubelet;

/// The ClusterIP of the name-server Service, fixed as kubeadm does (10th address of the range).
pub const KUBE_DNS_IP: &str = "10.96.0.10";

/// Cluster IPs the API server allocated, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Cluster {
    pub cluster_ips: BTreeMap<String, Vec<IpAddr>>,
}

impl Cluster {
    /// Every cluster IP of every Service created here (plus `default/kubernetes`).
    pub fn all_cluster_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cluster_ips.values().flatten().copied()
    }
}

fn port(name: Option<&str>, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: name.map(Into::into),
        port,
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

fn slice_port(name: Option<&str>, port: i32, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: name.map(Into::into),
        port: Some(port),
        protocol: Some(protocol.into()),
        app_protocol: None,
    }
}

/// One endpoint; `ready: None` leaves the condition out (unknown, which counts as ready).
fn endpoint(ip: &str, hostname: Option<&str>, ready: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready,
            ..Default::default()
        }),
        hostname: hostname.map(Into::into),
        ..Default::default()
    }
}

/// An endpoint backed by pod `other/<pod>` (for `endpoint_pod_names`).
fn pod_endpoint(ip: &str, hostname: Option<&str>, pod: &str) -> Endpoint {
    Endpoint {
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("other".into()),
            name: Some(pod.into()),
            ..Default::default()
        }),
        ..endpoint(ip, hostname, Some(true))
    }
}

enum Kind {
    ClusterIp,
    DualStack,
    Ipv6,
    Fixed(&'static str),
    Headless,
    External(&'static str),
}

struct Svc {
    ns: &'static str,
    name: &'static str,
    kind: Kind,
    ports: Vec<ServicePort>,
}

struct Slice {
    ns: &'static str,
    service: &'static str,
    name: &'static str,
    family: &'static str,
    ports: Option<Vec<EndpointPort>>,
    endpoints: Vec<Endpoint>,
}

fn services() -> Vec<Svc> {
    let http = || port(Some("http"), 80, "TCP");
    let svc = |ns, name, kind, ports| Svc {
        ns,
        name,
        kind,
        ports,
    };
    vec![
        svc("other", "named", Kind::Headless, vec![http()]),
        svc("shop", "web", Kind::ClusterIp, vec![http()]),
        svc(
            "shop",
            "plain",
            Kind::ClusterIp,
            vec![port(None, 8080, "TCP")],
        ),
        svc(
            "shop",
            "multi",
            Kind::ClusterIp,
            vec![
                http(),
                port(Some("dns"), 53, "UDP"),
                port(Some("dns-tcp"), 53, "TCP"),
                port(Some("metrics"), 9090, "TCP"),
            ],
        ),
        svc(
            "shop",
            "udp",
            Kind::ClusterIp,
            vec![port(Some("syslog"), 514, "UDP")],
        ),
        svc("shop", "dual", Kind::DualStack, vec![http()]),
        svc("shop", "v6", Kind::Ipv6, vec![http()]),
        svc("shop", "cip-eps", Kind::ClusterIp, vec![http()]),
        svc(
            "shop",
            "db",
            Kind::Headless,
            vec![port(Some("pg"), 5432, "TCP")],
        ),
        svc(
            "shop",
            "hl",
            Kind::Headless,
            vec![http(), port(Some("metrics"), 9090, "TCP")],
        ),
        svc("shop", "bare", Kind::Headless, vec![]),
        svc("shop", "unready", Kind::Headless, vec![http()]),
        svc("shop", "vacant", Kind::Headless, vec![http()]),
        svc("shop", "big", Kind::Headless, vec![http()]),
        svc("shop", "ext-out", Kind::External("example.org"), vec![]),
        svc("shop", "ext-www", Kind::External("www.example.org"), vec![]),
        svc(
            "shop",
            "ext-nx",
            Kind::External("missing.example.org"),
            vec![],
        ),
        svc(
            "shop",
            "ext-in",
            Kind::External("web.shop.svc.cluster.local"),
            vec![],
        ),
        svc(
            "shop",
            "ext-chain",
            Kind::External("ext-out.shop.svc.cluster.local"),
            vec![],
        ),
        svc(
            "shop",
            "ext-dead",
            Kind::External("nope.shop.svc.cluster.local"),
            vec![],
        ),
        svc("shop", "ext-ip", Kind::External("192.0.2.1"), vec![]),
        svc(
            "shop",
            "ext-self",
            Kind::External("ext-self.shop.svc.cluster.local"),
            vec![],
        ),
        svc(
            "other",
            "api",
            Kind::Headless,
            vec![port(Some("grpc"), 9000, "TCP")],
        ),
        svc(
            "other",
            "web",
            Kind::ClusterIp,
            vec![port(Some("https"), 443, "TCP")],
        ),
        svc(
            "kube-system",
            "kube-dns",
            Kind::Fixed(KUBE_DNS_IP),
            vec![
                port(Some("dns"), 53, "UDP"),
                port(Some("dns-tcp"), 53, "TCP"),
                port(Some("metrics"), 9153, "TCP"),
            ],
        ),
    ]
}

fn slices() -> Vec<Slice> {
    let ready = Some(true);
    let not_ready = Some(false);
    vec![
        // Endpoints backed by pods, one with a hostname, and one without a pod.
        Slice {
            ns: "other",
            service: "named",
            name: "named-1",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("http"), 8080, "TCP")]),
            endpoints: vec![
                pod_endpoint("10.244.9.1", None, "named-pod-0"),
                pod_endpoint("10.244.9.2", Some("h1"), "named-pod-1"),
                endpoint("10.244.9.3", None, ready),
            ],
        },
        Slice {
            ns: "shop",
            service: "cip-eps",
            name: "cip-eps-1",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("http"), 8080, "TCP")]),
            endpoints: vec![
                endpoint("10.244.3.1", Some("alpha"), ready),
                endpoint("10.244.3.2", None, ready),
                endpoint("10.244.3.3", None, not_ready),
            ],
        },
        Slice {
            ns: "shop",
            service: "db",
            name: "db-v4",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("pg"), 5432, "TCP")]),
            endpoints: vec![
                endpoint("10.244.1.5", Some("db-0"), ready),
                endpoint("10.244.1.6", None, ready),
                endpoint("10.244.1.7", Some("db-2"), not_ready),
                endpoint("10.244.1.8", None, None),
            ],
        },
        Slice {
            ns: "shop",
            service: "db",
            name: "db-v6",
            family: "IPv6",
            ports: Some(vec![slice_port(Some("pg"), 5432, "TCP")]),
            endpoints: vec![
                endpoint("fd00:10:244:1::5", Some("db-0"), ready),
                endpoint("fd00:10:244:1::6", None, ready),
            ],
        },
        // Three slices for one Service: two ports, one port, none.
        Slice {
            ns: "shop",
            service: "hl",
            name: "hl-a",
            family: "IPv4",
            ports: Some(vec![
                slice_port(Some("http"), 8080, "TCP"),
                slice_port(Some("metrics"), 9090, "TCP"),
            ]),
            endpoints: vec![
                endpoint("10.244.2.1", Some("web-a"), ready),
                endpoint("10.244.2.2", None, ready),
            ],
        },
        Slice {
            ns: "shop",
            service: "hl",
            name: "hl-b",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("http"), 8081, "TCP")]),
            endpoints: vec![endpoint("10.244.2.3", None, ready)],
        },
        Slice {
            ns: "shop",
            service: "hl",
            name: "hl-c",
            family: "IPv4",
            ports: None,
            endpoints: vec![endpoint("10.244.2.4", Some("portless"), ready)],
        },
        Slice {
            ns: "shop",
            service: "bare",
            name: "bare-1",
            family: "IPv4",
            ports: None,
            endpoints: vec![endpoint("10.244.4.1", Some("solo"), ready)],
        },
        Slice {
            ns: "shop",
            service: "unready",
            name: "unready-1",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("http"), 8080, "TCP")]),
            endpoints: vec![endpoint("10.244.5.1", None, not_ready)],
        },
        // Enough endpoints that answers no longer fit 512 bytes (A) or 1232 bytes (SRV).
        Slice {
            ns: "shop",
            service: "big",
            name: "big-1",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("http"), 8080, "TCP")]),
            endpoints: (1..=40)
                .map(|i| endpoint(&format!("10.244.6.{i}"), None, ready))
                .collect(),
        },
        // Shares 10.244.1.5 with shop/db: its PTR names both.
        Slice {
            ns: "other",
            service: "api",
            name: "api-1",
            family: "IPv4",
            ports: Some(vec![slice_port(Some("grpc"), 9000, "TCP")]),
            endpoints: vec![endpoint("10.244.1.5", Some("api-0"), ready)],
        },
        Slice {
            ns: "kube-system",
            service: "kube-dns",
            name: "kube-dns-1",
            family: "IPv4",
            ports: Some(vec![
                slice_port(Some("dns"), 53, "UDP"),
                slice_port(Some("dns-tcp"), 53, "TCP"),
                slice_port(Some("metrics"), 9153, "TCP"),
            ]),
            endpoints: vec![endpoint("10.244.0.10", None, ready)],
        },
    ]
}

fn spec(kind: &Kind, ports: Vec<ServicePort>) -> ServiceSpec {
    let ports = (!ports.is_empty()).then_some(ports);
    let families = |f: &[&str]| Some(f.iter().map(|s| s.to_string()).collect());
    match kind {
        Kind::ClusterIp => ServiceSpec {
            ports,
            ..Default::default()
        },
        Kind::DualStack => ServiceSpec {
            ports,
            ip_family_policy: Some("RequireDualStack".into()),
            ip_families: families(&["IPv4", "IPv6"]),
            ..Default::default()
        },
        Kind::Ipv6 => ServiceSpec {
            ports,
            ip_family_policy: Some("SingleStack".into()),
            ip_families: families(&["IPv6"]),
            ..Default::default()
        },
        Kind::Fixed(ip) => ServiceSpec {
            ports,
            cluster_ip: Some((*ip).into()),
            ..Default::default()
        },
        Kind::Headless => ServiceSpec {
            ports,
            cluster_ip: Some("None".into()),
            ..Default::default()
        },
        Kind::External(target) => ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some((*target).into()),
            ..Default::default()
        },
    }
}

/// Writes the namespaces, Services and EndpointSlices, and reads back the cluster IPs.
pub async fn populate(client: &Client) -> Cluster {
    for ns in ["shop", "other", "empty"] {
        kubelet::create_namespace(client, ns)
            .await
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    }
    let pp = PostParams::default();
    let mut cluster = Cluster::default();
    for svc in services() {
        let api: Api<Service> = Api::namespaced(client.clone(), svc.ns);
        let object = Service {
            metadata: ObjectMeta {
                name: Some(svc.name.into()),
                namespace: Some(svc.ns.into()),
                ..Default::default()
            },
            spec: Some(spec(&svc.kind, svc.ports)),
            status: None,
        };
        let created = api
            .create(&pp, &object)
            .await
            .unwrap_or_else(|e| panic!("Service {}/{}: {e}", svc.ns, svc.name));
        let ips: Vec<IpAddr> = created
            .spec
            .and_then(|s| s.cluster_ips)
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        if !ips.is_empty() {
            cluster
                .cluster_ips
                .insert(format!("{}/{}", svc.ns, svc.name), ips);
        }
    }
    assert_eq!(
        cluster.cluster_ips.get("shop/dual").map(Vec::len),
        Some(2),
        "shop/dual should have an IPv4 and an IPv6 cluster IP (dual-stack control plane)"
    );
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    let kubernetes = default.get("kubernetes").await.expect("default/kubernetes");
    let ips = kubernetes
        .spec
        .and_then(|s| s.cluster_ips)
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster.cluster_ips.insert("default/kubernetes".into(), ips);

    for slice in slices() {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), slice.ns);
        let object = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice.name.into()),
                namespace: Some(slice.ns.into()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_owned(),
                        slice.service.to_owned(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_owned(),
                        "svcplane-test".to_owned(),
                    ),
                ])),
                ..Default::default()
            },
            address_type: slice.family.into(),
            endpoints: Some(slice.endpoints),
            ports: slice.ports,
        };
        api.create(&pp, &object)
            .await
            .unwrap_or_else(|e| panic!("EndpointSlice {}/{}: {e}", slice.ns, slice.name));
    }
    cluster
}
