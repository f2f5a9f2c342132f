use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn base() -> core::Service {
    core::Service {
        metadata: ObjectMeta {
            namespace: Some("shop".into()),
            name: Some("web".into()),
            uid: Some("u-1".into()),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            cluster_ip: Some("10.96.0.12".into()),
            cluster_ips: Some(vec!["10.96.0.12".into()]),
            ports: Some(vec![core::ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("web".into())),
                ..Default::default()
            }]),
            selector: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..Default::default()
        }),
        status: None,
    }
}

fn with_spec(f: impl FnOnce(&mut core::ServiceSpec)) -> core::Service {
    let mut svc = base();
    f(svc.spec.as_mut().expect("spec"));
    svc
}

#[test]
fn converts_a_plain_cluster_ip_service() {
    let svc = Service::try_from(&base()).expect("valid");
    assert_eq!(svc.key, ObjectKey::new("shop", "web"));
    assert_eq!(svc.uid.as_deref(), Some("u-1"));
    assert_eq!(svc.type_, ServiceType::ClusterIp);
    assert_eq!(
        svc.cluster_ips(),
        &["10.96.0.12".parse::<IpAddr>().expect("ip")]
    );
    assert!(!svc.is_headless());
    assert_eq!(
        svc.ports,
        vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Name("web".into()),
            node_port: None,
            app_protocol: None,
        }]
    );
    assert!(svc.selector.is_some());
    assert_eq!(svc.session_affinity, SessionAffinity::None);
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
    assert!(!svc.wants_topology_hints());
}

#[test]
fn cluster_ip_variants() {
    let cases: Vec<(core::Service, ClusterIps)> = vec![
        (
            with_spec(|s| {
                s.cluster_ip = Some("None".into());
                s.cluster_ips = Some(vec!["None".into()]);
            }),
            ClusterIps::Headless,
        ),
        (
            with_spec(|s| {
                s.cluster_ip = None;
                s.cluster_ips = None;
            }),
            ClusterIps::NotSet,
        ),
        (
            // Only the legacy singular field set.
            with_spec(|s| s.cluster_ips = None),
            ClusterIps::Ips(vec!["10.96.0.12".parse().expect("ip")]),
        ),
        (
            with_spec(|s| {
                s.cluster_ips = Some(vec!["10.96.0.12".into(), "fd00::12".into()]);
            }),
            ClusterIps::Ips(vec![
                "10.96.0.12".parse().expect("ip"),
                "fd00::12".parse().expect("ip"),
            ]),
        ),
        (
            with_spec(|s| {
                s.type_ = Some("ExternalName".into());
                s.external_name = Some("example.org.".into());
            }),
            ClusterIps::NotSet,
        ),
    ];
    for (svc, want) in cases {
        let got = Service::try_from(&svc).expect("valid");
        // One meaning of headless (`None`); "no IP set" is its own answer.
        assert_eq!(got.is_headless(), want == ClusterIps::Headless);
        assert_eq!(got.has_cluster_ip(), matches!(want, ClusterIps::Ips(_)));
        assert_eq!(got.cluster_ips, want);
    }
}

#[test]
fn hint_mode_table() {
    // (topology-mode annotation, trafficDistribution, mode)
    let cases = [
        (None, None, HintMode::None),
        (None, Some("PreferClose"), HintMode::SameZone),
        (None, Some("PreferSameZone"), HintMode::SameZone),
        (None, Some("PreferSameNode"), HintMode::SameNode),
        (None, Some("SomethingNew"), HintMode::None),
        (Some("Auto"), None, HintMode::Auto),
        (Some("auto"), Some("PreferClose"), HintMode::Auto),
        // The annotation decides alone, even when it turns hints off.
        (Some("Disabled"), Some("PreferClose"), HintMode::None),
    ];
    for (mode, distribution, want) in cases {
        let svc = Service {
            topology_mode: mode.map(Into::into),
            traffic_distribution: distribution.map(Into::into),
            ..Service::new(ObjectKey::new("ns", "web"), ServiceType::ClusterIp)
        };
        assert_eq!(svc.hint_mode(), want, "{mode:?} {distribution:?}");
        assert_eq!(svc.wants_topology_hints(), want != HintMode::None);
    }
}

#[test]
fn target_port_defaults_and_forms() {
    let cases = [
        (None, TargetPort::Number(80)),
        (Some(IntOrString::Int(0)), TargetPort::Number(80)),
        (Some(IntOrString::Int(8080)), TargetPort::Number(8080)),
        (Some(IntOrString::String("".into())), TargetPort::Number(80)),
        (
            Some(IntOrString::String("8080".into())),
            TargetPort::Name("8080".into()),
        ),
    ];
    for (tp, want) in cases {
        let svc = with_spec(|s| s.ports.as_mut().expect("ports")[0].target_port = tp.clone());
        assert_eq!(
            Service::try_from(&svc).expect("valid").ports[0].target_port,
            want,
            "{tp:?}"
        );
    }
}

#[test]
fn optional_fields() {
    let mut raw = with_spec(|s| {
        s.type_ = Some("LoadBalancer".into());
        s.external_ips = Some(vec!["192.0.2.7".into()]);
        s.load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into(), "198.51.100.9".into()]);
        s.session_affinity = Some("ClientIP".into());
        s.external_traffic_policy = Some("Local".into());
        s.internal_traffic_policy = Some("Local".into());
        s.health_check_node_port = Some(31000);
        s.publish_not_ready_addresses = Some(true);
        s.traffic_distribution = Some("PreferClose".into());
        s.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        s.ip_family_policy = Some("PreferDualStack".into());
        let p = &mut s.ports.as_mut().expect("ports")[0];
        p.protocol = Some("UDP".into());
        p.node_port = Some(30080);
        p.app_protocol = Some("http".into());
    });
    raw.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_TOPOLOGY_AWARE_HINTS.into(),
        "auto".into(),
    )]));
    raw.status = Some(core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus {
            ingress: Some(vec![
                core::LoadBalancerIngress {
                    ip: Some("198.51.100.1".into()),
                    ..Default::default()
                },
                core::LoadBalancerIngress {
                    hostname: Some("lb.example.org".into()),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    });
    let svc = Service::try_from(&raw).expect("valid");
    assert_eq!(svc.type_, ServiceType::LoadBalancer);
    assert_eq!(
        svc.external_ips,
        vec!["192.0.2.7".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(
        svc.load_balancer_source_ranges,
        vec![
            "203.0.113.0/24".parse::<IpNet>().expect("net"),
            "198.51.100.9/32".parse::<IpNet>().expect("net"),
        ]
    );
    assert_eq!(
        svc.load_balancer_ips,
        vec!["198.51.100.1".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(
        svc.session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
        }
    );
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(svc.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(svc.health_check_node_port, Some(31000));
    assert!(svc.publish_not_ready_addresses);
    assert_eq!(svc.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(svc.topology_mode.as_deref(), Some("auto"));
    assert!(svc.wants_topology_hints());
    assert_eq!(svc.ip_families, vec![IpFamily::V4, IpFamily::V6]);
    assert_eq!(svc.ip_family_policy, Some(IpFamilyPolicy::PreferDualStack));
    assert_eq!(svc.ports[0].protocol, Protocol::Udp);
    assert_eq!(svc.ports[0].node_port, Some(30080));
    assert_eq!(svc.ports[0].app_protocol.as_deref(), Some("http"));
}

#[test]
fn external_name_is_kept_without_trailing_dot() {
    let raw = with_spec(|s| {
        s.type_ = Some("ExternalName".into());
        s.external_name = Some("db.example.org.".into());
    });
    let svc = Service::try_from(&raw).expect("valid");
    assert_eq!(svc.external_name.as_deref(), Some("db.example.org"));
}

#[test]
fn malformed_services_are_rejected_with_a_reason() {
    let cases: Vec<(core::Service, &str)> = vec![
        (
            {
                let mut s = base();
                s.metadata.name = None;
                s
            },
            "missing_field",
        ),
        (
            {
                let mut s = base();
                s.spec = None;
                s
            },
            "missing_field",
        ),
        (
            with_spec(|s| s.cluster_ips = Some(vec!["10.96.0.300".into()])),
            "invalid_ip",
        ),
        (
            with_spec(|s| s.type_ = Some("Magic".into())),
            "unknown_value",
        ),
        (
            with_spec(|s| s.ports.as_mut().expect("ports")[0].port = 70000),
            "out_of_range",
        ),
        (
            with_spec(|s| s.ports.as_mut().expect("ports")[0].protocol = Some("ICMP".into())),
            "unknown_value",
        ),
        (
            with_spec(|s| s.load_balancer_source_ranges = Some(vec!["not-a-net".into()])),
            "invalid_cidr",
        ),
        (
            with_spec(|s| {
                s.type_ = Some("ExternalName".into());
                s.external_name = None;
            }),
            "missing_field",
        ),
        (
            with_spec(|s| {
                s.session_affinity = Some("ClientIP".into());
                s.session_affinity_config = Some(core::SessionAffinityConfig {
                    client_ip: Some(core::ClientIPConfig {
                        timeout_seconds: Some(0),
                    }),
                });
            }),
            "out_of_range",
        ),
    ];
    for (raw, reason) in cases {
        let err = Service::try_from(&raw).expect_err("must be rejected");
        assert_eq!(err.reason(), reason, "{err}");
    }
}
