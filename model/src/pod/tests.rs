use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;

fn container_port(name: &str, port: i32, proto: &str) -> core::ContainerPort {
    core::ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(proto.into()),
        ..Default::default()
    }
}

fn raw_pod() -> core::Pod {
    core::Pod {
        metadata: ObjectMeta {
            namespace: Some("shop".into()),
            name: Some("web-0".into()),
            uid: Some("p-1".into()),
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: "app".into(),
                ports: Some(vec![
                    container_port("http", 8080, "TCP"),
                    container_port("dns", 5353, "UDP"),
                    core::ContainerPort {
                        container_port: 9000,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            init_containers: Some(vec![
                core::Container {
                    name: "proxy".into(),
                    restart_policy: Some("Always".into()),
                    ports: Some(vec![container_port("metrics", 9090, "TCP")]),
                    ..Default::default()
                },
                core::Container {
                    name: "setup".into(),
                    ports: Some(vec![container_port("setup", 7000, "TCP")]),
                    ..Default::default()
                },
            ]),
            hostname: Some("web-0".into()),
            subdomain: Some("web".into()),
            node_name: Some("node-a".into()),
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.244.1.5".into()),
            pod_ips: Some(vec![
                core::PodIP {
                    ip: "10.244.1.5".into(),
                },
                core::PodIP {
                    ip: "fd00:10:244::5".into(),
                },
            ]),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn svc_port(target: TargetPort, protocol: Protocol) -> ServicePort {
    ServicePort {
        name: "p".into(),
        protocol,
        port: 80,
        target_port: target,
        node_port: None,
        app_protocol: None,
    }
}

#[test]
fn converts_every_field() {
    let pod = Pod::try_from(&raw_pod()).expect("valid");
    assert_eq!(pod.key, ObjectKey::new("shop", "web-0"));
    assert_eq!(pod.uid.as_deref(), Some("p-1"));
    assert_eq!(pod.labels.get("app"), Some("web"));
    assert_eq!(
        pod.ips,
        vec![
            "10.244.1.5".parse::<IpAddr>().expect("ip"),
            "fd00:10:244::5".parse::<IpAddr>().expect("ip")
        ]
    );
    assert_eq!(pod.phase, PodPhase::Running);
    assert!(pod.ready);
    assert!(!pod.terminating);
    assert!(!pod.is_terminal());
    assert_eq!(pod.hostname.as_deref(), Some("web-0"));
    assert_eq!(pod.subdomain.as_deref(), Some("web"));
    assert_eq!(pod.node_name.as_deref(), Some("node-a"));
    let names: Vec<_> = pod.named_ports.iter().map(|p| &*p.name).collect();
    assert_eq!(
        names,
        ["http", "dns", "metrics"],
        "unnamed ports and plain init containers are left out"
    );
}

#[test]
fn readiness_deletion_and_legacy_pod_ip() {
    let mut raw = raw_pod();
    let status = raw.status.as_mut().expect("status");
    status.pod_ips = None;
    status.conditions = Some(vec![core::PodCondition {
        type_: "Ready".into(),
        status: "False".into(),
        ..Default::default()
    }]);
    status.phase = Some("Succeeded".into());
    raw.metadata.deletion_timestamp = Some(Time(Default::default()));
    let pod = Pod::try_from(&raw).expect("valid");
    assert_eq!(pod.ips, vec!["10.244.1.5".parse::<IpAddr>().expect("ip")]);
    assert!(!pod.ready);
    assert!(pod.terminating);
    assert!(pod.is_terminal());
}

#[test]
fn named_target_port_resolution() {
    let pod = Pod::try_from(&raw_pod()).expect("valid");
    let cases = [
        (TargetPort::Number(1234), Protocol::Tcp, Some(1234)),
        (TargetPort::Name("http".into()), Protocol::Tcp, Some(8080)),
        (TargetPort::Name("http".into()), Protocol::Udp, None),
        (TargetPort::Name("dns".into()), Protocol::Udp, Some(5353)),
        (
            TargetPort::Name("metrics".into()),
            Protocol::Tcp,
            Some(9090),
        ),
        (TargetPort::Name("setup".into()), Protocol::Tcp, None),
        (TargetPort::Name("missing".into()), Protocol::Tcp, None),
    ];
    for (target, proto, want) in cases {
        assert_eq!(
            pod.resolve_port(&svc_port(target.clone(), proto)),
            want,
            "{target:?}/{proto:?}"
        );
    }
}

#[test]
fn malformed_pods_are_rejected() {
    let mut bad_ip = raw_pod();
    bad_ip.status.as_mut().expect("status").pod_ips = Some(vec![core::PodIP { ip: "nope".into() }]);
    let mut bad_phase = raw_pod();
    bad_phase.status.as_mut().expect("status").phase = Some("Sleeping".into());
    let mut no_ns = raw_pod();
    no_ns.metadata.namespace = None;
    for (raw, reason) in [
        (bad_ip, "invalid_ip"),
        (bad_phase, "unknown_value"),
        (no_ns, "missing_field"),
    ] {
        assert_eq!(Pod::try_from(&raw).expect_err("rejected").reason(), reason);
    }
}

#[test]
fn nodes_convert() {
    let raw = core::Node {
        metadata: ObjectMeta {
            name: Some("node-a".into()),
            labels: Some([(LABEL_TOPOLOGY_ZONE.to_string(), "zone-1".to_string())].into()),
            ..Default::default()
        },
        status: Some(core::NodeStatus {
            addresses: Some(vec![
                core::NodeAddress {
                    type_: "Hostname".into(),
                    address: "node-a".into(),
                },
                core::NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.0.2.10".into(),
                },
            ]),
            allocatable: Some([("cpu".to_string(), Quantity("3500m".into()))].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = Node::try_from(&raw).expect("valid");
    assert_eq!(&*node.name, "node-a");
    assert_eq!(node.zone.as_deref(), Some("zone-1"));
    assert_eq!(
        node.addresses,
        vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(node.allocatable_cpu_millis, Some(3500));
    assert!(node.pod_cidrs.is_empty());

    // Pod CIDRs: the list, else the older single field; a malformed one is rejected.
    let mut with_cidrs = raw.clone();
    with_cidrs.spec = Some(core::NodeSpec {
        pod_cidr: Some("10.244.1.0/24".into()),
        pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]),
        ..Default::default()
    });
    let node = Node::try_from(&with_cidrs).expect("valid");
    assert_eq!(node.pod_cidrs.len(), 2);
    with_cidrs.spec = Some(core::NodeSpec {
        pod_cidr: Some("10.244.2.0/24".into()),
        ..Default::default()
    });
    let node = Node::try_from(&with_cidrs).expect("valid");
    assert_eq!(node.pod_cidrs, vec!["10.244.2.0/24".parse().expect("cidr")]);
    with_cidrs.spec = Some(core::NodeSpec {
        pod_cidrs: Some(vec!["10.244.3.0/33".into()]),
        ..Default::default()
    });
    assert_eq!(
        Node::try_from(&with_cidrs).expect_err("rejected").reason(),
        "unknown_value"
    );
}

#[test]
fn cpu_quantities() {
    for (q, want) in [
        ("4", Some(4000)),
        ("3500m", Some(3500)),
        ("1.5", Some(1500)),
        ("x", None),
        ("-1", None),
    ] {
        assert_eq!(cpu_millis(q), want, "{q}");
    }
}
