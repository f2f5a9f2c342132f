use std::collections::HashMap;

use svcplane_model::{
    ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, Labels, ServicePort, TargetPort,
};

use super::*;

pub(crate) fn config() -> Config {
    Config {
        node: NodeFacts {
            name: "node-a".into(),
            zone: None,
        },
        node_ips: vec![
            "192.0.2.10".parse().expect("ip"),
            "2001:db8::10".parse().expect("ip"),
        ],
        nodeport_addresses: NodePortAddresses::Primary,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        masquerade_bit: 14,
        detect_local: Default::default(),
        node_pod_cidrs: Vec::new(),
        service_cidrs: vec!["10.96.0.0/16".parse().expect("cidr")],
    }
}

pub(crate) fn service(name: &str, ips: &[&str], type_: ServiceType) -> Arc<Service> {
    Arc::new(Service {
        cluster_ips: ClusterIps::Ips(ips.iter().map(|i| i.parse().expect("ip")).collect()),
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: (type_ != ServiceType::ClusterIp).then_some(30080),
                app_protocol: None,
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                target_port: TargetPort::Number(5353),
                node_port: None,
                app_protocol: None,
            },
        ],
        ..Service::new(ObjectKey::new("ns", name), type_)
    })
}

/// Endpoints for both ports of [`service`]: (ip, node, ready).
pub(crate) fn endpoints(svc: &str, eps: &[(&str, &str, bool)]) -> ServiceEndpoints {
    let family = eps
        .first()
        .map(|(ip, _, _)| AddressType::of(&ip.parse().expect("ip")))
        .unwrap_or(AddressType::V4);
    let port = |name: &str, protocol, port| EndpointPort {
        name: name.into(),
        protocol,
        port: Some(port),
        app_protocol: None,
    };
    ServiceEndpoints {
        slices: vec![Arc::new(EndpointSlice {
            key: ObjectKey::new("ns", format!("{svc}-1")),
            service: ObjectKey::new("ns", svc),
            address_type: family,
            ports: vec![
                port("http", Protocol::Tcp, 8080),
                port("dns", Protocol::Udp, 5353),
            ],
            endpoints: eps
                .iter()
                .map(|(ip, node, ready)| Endpoint {
                    addresses: vec![ip.parse().expect("ip")],
                    conditions: Conditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    },
                    hostname: None,
                    node_name: Some((*node).into()),
                    zone: None,
                    hints: None,
                    target_pod: None,
                })
                .collect(),
            managed_by: None,
            trigger_time: None,
            resource_version: None,
        })],
    }
}

pub(crate) fn run(
    family: AddressType,
    services: &[Arc<Service>],
    eps: &HashMap<ObjectKey, ServiceEndpoints>,
    config: &Config,
) -> Plan {
    let services: Vec<(ObjectKey, Arc<Service>)> = services
        .iter()
        .map(|s| (s.key.clone(), s.clone()))
        .collect();
    plan(
        family,
        services.iter().map(|(k, s)| (k, s)),
        |k| eps.get(k).cloned(),
        config,
    )
}

fn vip(ip: &str, p: Protocol, port: u16) -> Vip {
    (ip.parse().expect("ip"), p, port)
}

fn t(ip: &str, port: u16) -> Target {
    (ip.parse().expect("ip"), port)
}

#[test]
fn cluster_ips_dispatch_to_ready_endpoints_per_port() {
    let web = service("web", &["10.96.0.10"], ServiceType::ClusterIp);
    let eps = HashMap::from([(
        web.key.clone(),
        endpoints(
            "web",
            &[
                ("10.244.1.5", "node-b", true),
                ("10.244.2.5", "node-a", true),
                ("10.244.3.5", "node-c", false),
            ],
        ),
    )]);
    let p = run(AddressType::V4, &[web], &eps, &config());
    assert_eq!(p.cluster_ips.len(), 1);
    assert_eq!(
        p.cluster.get(&vip("10.96.0.10", Protocol::Tcp, 80)),
        Some(&vec![t("10.244.1.5", 8080), t("10.244.2.5", 8080)])
    );
    assert_eq!(
        p.cluster.get(&vip("10.96.0.10", Protocol::Udp, 53)),
        Some(&vec![t("10.244.1.5", 5353), t("10.244.2.5", 5353)])
    );
    assert!(p.refused.is_empty());
    assert!(
        p.hairpin
            .contains(&("10.244.1.5".parse().expect("ip"), Protocol::Tcp, 8080))
    );
    // No NodePort for a ClusterIP Service.
    assert!(p.nodeports.is_empty());
}

#[test]
fn no_endpoints_rejects_and_a_local_policy_without_local_endpoints_drops() {
    let empty = service("empty", &["10.96.0.11"], ServiceType::ClusterIp);
    let local = Arc::new(Service {
        internal_traffic_policy: TrafficPolicy::Local,
        ..(*service("local", &["10.96.0.12"], ServiceType::ClusterIp)).clone()
    });
    let eps = HashMap::from([(
        local.key.clone(),
        endpoints("local", &[("10.244.1.5", "node-b", true)]),
    )]);
    let p = run(AddressType::V4, &[empty, local], &eps, &config());
    assert_eq!(
        p.refused
            .get(&vip("10.96.0.11", Protocol::Tcp, 80))
            .map(|r| r.0),
        Some(Refuse::Reject)
    );
    assert_eq!(
        p.refused.get(&vip("10.96.0.12", Protocol::Tcp, 80)),
        Some(&(Refuse::Drop, "ns/local:http".to_owned()))
    );
    assert!(p.cluster.is_empty());
    // Counted as upstream's no_local_endpoints (both ports of `local`); `empty` has no
    // endpoints at all and is not.
    assert_eq!(p.no_local, [2, 0]);

    // externalTrafficPolicy Local on a NodePort whose endpoints are elsewhere: external.
    let np = Arc::new(Service {
        external_traffic_policy: TrafficPolicy::Local,
        ..(*service("np", &["10.96.0.14"], ServiceType::NodePort)).clone()
    });
    let eps = HashMap::from([(
        np.key.clone(),
        endpoints("np", &[("10.244.1.5", "node-b", true)]),
    )]);
    let p = run(AddressType::V4, &[np], &eps, &config());
    assert_eq!(p.no_local, [0, 1], "only the port with a NodePort");
}

#[test]
fn services_without_a_virtual_ip_or_for_another_proxy_are_skipped() {
    let headless = Arc::new(Service {
        cluster_ips: ClusterIps::Headless,
        ..(*service("headless", &[], ServiceType::ClusterIp)).clone()
    });
    let external = Arc::new(Service {
        cluster_ips: ClusterIps::NotSet,
        ..(*service("ext", &[], ServiceType::ExternalName)).clone()
    });
    let other = Arc::new(Service {
        labels: Labels::from_iter([(LABEL_SERVICE_PROXY_NAME, "other-proxy")]),
        ..(*service("other", &["10.96.0.13"], ServiceType::ClusterIp)).clone()
    });
    let p = run(
        AddressType::V4,
        &[headless, external, other],
        &HashMap::new(),
        &config(),
    );
    assert_eq!(p.cluster_ips.len(), 0);
    assert!(p.refused.is_empty());
}

#[test]
fn nodeports_external_ips_and_families() {
    let web = Arc::new(Service {
        external_ips: vec!["198.51.100.7".parse().expect("ip")],
        ..(*service(
            "web",
            &["10.96.0.10", "fd00:10:96::10"],
            ServiceType::NodePort,
        ))
        .clone()
    });
    let eps = HashMap::from([(
        web.key.clone(),
        endpoints("web", &[("10.244.1.5", "node-b", true)]),
    )]);
    let v4 = run(AddressType::V4, std::slice::from_ref(&web), &eps, &config());
    assert_eq!(
        v4.nodeports.get(&(Protocol::Tcp, 30080)),
        Some(&vec![t("10.244.1.5", 8080)])
    );
    assert_eq!(
        v4.external.get(&vip("198.51.100.7", Protocol::Tcp, 80)),
        Some(&vec![t("10.244.1.5", 8080)])
    );
    assert_eq!(
        v4.nodeport_ips
            .as_ref()
            .map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>()),
        Some(vec!["192.0.2.10".to_owned()])
    );
    // The IPv6 family has the cluster IP but no IPv6 endpoints: rejected there.
    let v6 = run(AddressType::V6, &[web], &eps, &config());
    assert_eq!(v6.cluster_ips.len(), 1);
    assert_eq!(
        v6.refused
            .get(&vip("fd00:10:96::10", Protocol::Tcp, 80))
            .map(|r| r.0),
        Some(Refuse::Reject)
    );
    assert!(
        v6.service_cidrs.is_empty(),
        "the IPv4 ServiceCIDR is not the IPv6 table's"
    );
}

#[test]
fn nodeport_addresses() {
    let mut c = config();
    c.nodeport_addresses = NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().expect("cidr")]);
    assert_eq!(nodeport_ips(AddressType::V4, &c), None, "every address");
    c.nodeport_addresses = NodePortAddresses::Cidrs(vec!["192.0.2.0/24".parse().expect("cidr")]);
    assert_eq!(nodeport_ips(AddressType::V4, &c).map(|s| s.len()), Some(1));
    // No IPv6 CIDR: every IPv6 address.
    assert_eq!(nodeport_ips(AddressType::V6, &c), None);
    // A CIDR no node address is in: none.
    c.nodeport_addresses = NodePortAddresses::Cidrs(vec!["198.51.100.0/24".parse().expect("cidr")]);
    assert_eq!(nodeport_ips(AddressType::V4, &c).map(|s| s.len()), Some(0));
    c.node_ips = vec![];
    c.nodeport_addresses = NodePortAddresses::Primary;
    assert_eq!(
        nodeport_ips(AddressType::V4, &c),
        None,
        "no node address: every address"
    );
}

#[test]
fn external_traffic_policy_local_splits_outside_from_pods_and_host() {
    let web = Arc::new(Service {
        external_traffic_policy: TrafficPolicy::Local,
        external_ips: vec!["198.51.100.7".parse().expect("ip")],
        ..(*service("web", &["10.96.0.10"], ServiceType::NodePort)).clone()
    });
    let eps = HashMap::from([(
        web.key.clone(),
        endpoints(
            "web",
            &[
                ("10.244.1.5", "node-a", true),
                ("10.244.2.5", "node-b", true),
            ],
        ),
    )]);
    let p = run(AddressType::V4, std::slice::from_ref(&web), &eps, &config());
    let ext = vip("198.51.100.7", Protocol::Tcp, 80);
    assert_eq!(
        p.external_local.get(&ext),
        Some(&vec![t("10.244.1.5", 8080)])
    );
    assert_eq!(
        p.external_short.get(&ext),
        Some(&vec![t("10.244.1.5", 8080), t("10.244.2.5", 8080)])
    );
    assert_eq!(
        p.nodeports_local.get(&(Protocol::Tcp, 30080)).map(Vec::len),
        Some(1)
    );
    assert!(p.external.is_empty() && p.nodeports.is_empty());
    // The ClusterIP keeps its Cluster policy.
    assert_eq!(
        p.cluster
            .get(&vip("10.96.0.10", Protocol::Tcp, 80))
            .map(Vec::len),
        Some(2)
    );

    // No endpoint on this node: outsiders are dropped, pods and the host still get through.
    let remote = HashMap::from([(
        web.key.clone(),
        endpoints("web", &[("10.244.2.5", "node-b", true)]),
    )]);
    let p = run(AddressType::V4, &[web], &remote, &config());
    assert_eq!(p.refused.get(&ext).map(|r| r.0), Some(Refuse::Drop));
    assert_eq!(
        p.refused_nodeports
            .get(&(Protocol::Tcp, 30080))
            .map(|r| r.0),
        Some(Refuse::Drop)
    );
    assert_eq!(p.external_short.get(&ext).map(Vec::len), Some(1));
}
