use std::collections::BTreeMap;

use svcplane_model::{ClusterIps, IpFamily, PodPhase, TargetPort};

use super::*;
use crate::testing::{pod, port, service};

fn zone_of(node: &str) -> Option<Option<&'static str>> {
    match node {
        "node-1" => Some(Some("zone-a")),
        "node-2" => Some(None),
        _ => None,
    }
}

fn conditions(e: &Endpoint) -> (bool, bool, bool) {
    let c = e.conditions.as_ref().expect("conditions are always set");
    (
        c.ready.expect("ready"),
        c.serving.expect("serving"),
        c.terminating.expect("terminating"),
    )
}

#[test]
fn which_pods_count() {
    let base = pod("ns", "p", "web", "10.244.0.5");
    let cases: Vec<(&str, Pod, bool, bool)> = vec![
        // (case, pod, in slices (terminating kept), in Endpoints (terminating dropped))
        ("running", base.clone(), true, true),
        (
            "pending with an IP",
            Pod {
                phase: PodPhase::Pending,
                ..base.clone()
            },
            true,
            true,
        ),
        (
            "no IP yet",
            Pod {
                ips: vec![],
                ..base.clone()
            },
            false,
            false,
        ),
        (
            "succeeded",
            Pod {
                phase: PodPhase::Succeeded,
                ..base.clone()
            },
            false,
            false,
        ),
        (
            "failed",
            Pod {
                phase: PodPhase::Failed,
                ..base.clone()
            },
            false,
            false,
        ),
        (
            "terminating",
            Pod {
                terminating: true,
                ..base.clone()
            },
            true,
            false,
        ),
    ];
    for (case, p, slices, endpoints) in cases {
        assert_eq!(include_pod(&p, true), slices, "{case}: slices");
        assert_eq!(include_pod(&p, false), endpoints, "{case}: endpoints");
    }
}

#[test]
fn endpoint_conditions_follow_readiness_termination_and_publish_not_ready() {
    let svc = service("ns", "web");
    let publish = Service {
        publish_not_ready_addresses: true,
        ..service("ns", "web")
    };
    let p = pod("ns", "p", "web", "10.244.0.5");
    let cases = [
        // (case, service, ready, terminating) → (ready, serving, terminating)
        ("ready", &svc, true, false, (true, true, false)),
        ("not ready", &svc, false, false, (false, false, false)),
        (
            "ready and terminating",
            &svc,
            true,
            true,
            (false, true, true),
        ),
        (
            "not ready, terminating",
            &svc,
            false,
            true,
            (false, false, true),
        ),
        (
            "publishNotReady, not ready",
            &publish,
            false,
            false,
            (true, false, false),
        ),
        (
            "publishNotReady, terminating",
            &publish,
            false,
            true,
            (true, false, true),
        ),
    ];
    for (case, s, ready, terminating, want) in cases {
        let p = Pod {
            ready,
            terminating,
            ..p.clone()
        };
        let e = slice_endpoint(s, &p, AddressType::V4, Some("zone-a"), HintMode::None);
        assert_eq!(conditions(&e), want, "{case}");
    }
}

#[test]
fn endpoint_fields() {
    let svc = service("ns", "web");
    let p = Pod {
        hostname: Some("web-0".into()),
        subdomain: Some("web".into()),
        ..pod("ns", "web-0", "web", "10.244.0.5")
    };
    let e = slice_endpoint(&svc, &p, AddressType::V4, Some("zone-a"), HintMode::None);
    assert_eq!(e.addresses, ["10.244.0.5"]);
    assert_eq!(e.hostname.as_deref(), Some("web-0"));
    assert_eq!(e.node_name.as_deref(), Some("node-1"));
    assert_eq!(e.zone.as_deref(), Some("zone-a"));
    let target = e.target_ref.expect("targetRef");
    assert_eq!(
        (
            target.kind.as_deref(),
            target.namespace.as_deref(),
            target.name.as_deref(),
            target.uid.as_deref()
        ),
        (Some("Pod"), Some("ns"), Some("web-0"), Some("uid-web-0"))
    );
    assert!(e.hints.is_none());
    // Hostname only with the Service's name as subdomain.
    let other = Pod {
        subdomain: Some("other".into()),
        ..p.clone()
    };
    assert_eq!(hostname_for(&other, &svc), None);
    let no_subdomain = Pod {
        subdomain: None,
        ..p
    };
    assert_eq!(hostname_for(&no_subdomain, &svc), None);
}

#[test]
fn named_target_ports_resolve_per_pod_and_group_pods() {
    let mut svc = service("ns", "web");
    svc.ports = vec![
        port("http", 80, TargetPort::Name("http".into())),
        port("metrics", 9090, TargetPort::Number(9100)),
    ];
    let a = pod("ns", "a", "web", "10.244.0.5");
    let b = Pod {
        named_ports: vec![svcplane_model::NamedPort {
            name: "http".into(),
            protocol: svcplane_model::Protocol::Tcp,
            port: 8081,
        }],
        ..pod("ns", "b", "web", "10.244.0.6")
    };
    let c = Pod {
        named_ports: vec![],
        ..pod("ns", "c", "web", "10.244.0.7")
    };
    let groups = slice_groups(&svc, [&a, &b, &c], AddressType::V4, &zone_of);
    type Group = (Vec<(String, i32)>, Vec<String>);
    let mut seen: Vec<Group> = groups
        .groups
        .values()
        .map(|(ports, eps)| {
            (
                ports
                    .iter()
                    .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)))
                    .collect(),
                eps.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                vec![("http".into(), 8080), ("metrics".into(), 9100)],
                vec!["10.244.0.5".into()]
            ),
            (
                vec![("http".into(), 8081), ("metrics".into(), 9100)],
                vec!["10.244.0.6".into()]
            ),
            // No named port: only the numeric one.
            (vec![("metrics".into(), 9100)], vec!["10.244.0.7".into()]),
        ]
    );
}

#[test]
fn unknown_nodes_hold_pods_back_and_known_nodes_give_zones() {
    let svc = service("ns", "web");
    let on_1 = pod("ns", "a", "web", "10.244.0.5");
    let on_2 = Pod {
        node_name: Some("node-2".into()),
        ..pod("ns", "b", "web", "10.244.0.6")
    };
    let nowhere = Pod {
        node_name: Some("node-9".into()),
        ..pod("ns", "c", "web", "10.244.0.7")
    };
    let groups = slice_groups(&svc, [&on_1, &on_2, &nowhere], AddressType::V4, &zone_of);
    assert_eq!(groups.missing_nodes, 1);
    let eps: Vec<_> = groups.groups.values().flat_map(|(_, e)| e).collect();
    let zones: Vec<_> = eps.iter().map(|e| e.zone.as_deref()).collect();
    assert_eq!(zones, [Some("zone-a"), None]);
    // With publishNotReadyAddresses the pod is published without a zone.
    let publish = Service {
        publish_not_ready_addresses: true,
        ..svc
    };
    let groups = slice_groups(&publish, [&nowhere], AddressType::V4, &zone_of);
    assert_eq!(groups.missing_nodes, 0);
    assert_eq!(
        groups.groups.values().map(|(_, e)| e.len()).sum::<usize>(),
        1
    );
}

#[test]
fn address_types_per_service() {
    let v4 = service("ns", "web");
    assert_eq!(address_types(&v4), [AddressType::V4]);
    let dual = Service {
        ip_families: vec![IpFamily::V6, IpFamily::V4],
        ..service("ns", "web")
    };
    assert_eq!(address_types(&dual), [AddressType::V6, AddressType::V4]);
    let headless = Service {
        ip_families: vec![],
        cluster_ips: ClusterIps::Headless,
        ..service("ns", "web")
    };
    assert_eq!(address_types(&headless), [AddressType::V4, AddressType::V6]);
    assert_eq!(endpoints_family(&headless), None);
}

#[test]
fn dual_stack_pods_give_one_address_per_family() {
    let svc = service("ns", "web");
    let p = Pod {
        ips: vec![
            "10.244.0.5".parse().expect("ip"),
            "fd00::5".parse().expect("ip"),
        ],
        ..pod("ns", "a", "web", "10.244.0.5")
    };
    let v6 = slice_endpoint(&svc, &p, AddressType::V6, None, HintMode::None);
    assert_eq!(v6.addresses, ["fd00::5"]);
    let v4 = slice_endpoint(&svc, &p, AddressType::V4, None, HintMode::None);
    assert_eq!(v4.addresses, ["10.244.0.5"]);
}

#[test]
fn traffic_distribution_hints() {
    let mut svc = service("ns", "web");
    let p = pod("ns", "a", "web", "10.244.0.5");
    svc.traffic_distribution = Some("PreferClose".into());
    assert_eq!(svc.hint_mode(), HintMode::SameZone);
    let e = slice_endpoint(&svc, &p, AddressType::V4, Some("zone-a"), svc.hint_mode());
    let hints = e.hints.expect("hints");
    assert_eq!(hints.for_zones.expect("zones")[0].name, "zone-a");
    assert!(hints.for_nodes.is_none());
    svc.traffic_distribution = Some("PreferSameNode".into());
    let e = slice_endpoint(&svc, &p, AddressType::V4, Some("zone-a"), svc.hint_mode());
    assert_eq!(
        e.hints.expect("hints").for_nodes.expect("nodes")[0].name,
        "node-1"
    );
    // Not-ready endpoints get none.
    let unready = Pod { ready: false, ..p };
    assert!(
        slice_endpoint(
            &svc,
            &unready,
            AddressType::V4,
            Some("zone-a"),
            svc.hint_mode()
        )
        .hints
        .is_none()
    );
    // The annotation decides when present, even against trafficDistribution.
    svc.topology_mode = Some("Disabled".into());
    assert_eq!(svc.hint_mode(), HintMode::None);
}

fn node(name: &str, zone: Option<&str>, cpu: u64) -> svcplane_model::Node {
    svcplane_model::Node {
        name: name.into(),
        zone: zone.map(Into::into),
        addresses: vec![],
        allocatable_cpu_millis: Some(cpu),
        ready: true,
        control_plane: false,
        pod_cidrs: Vec::new(),
    }
}

#[test]
fn zone_ratios_come_from_ready_worker_nodes() {
    let nodes = [
        node("a", Some("zone-a"), 2000),
        node("b", Some("zone-b"), 6000),
        svcplane_model::Node {
            control_plane: true,
            pod_cidrs: Vec::new(),
            ..node("cp", None, 4000)
        },
        svcplane_model::Node {
            ready: false,
            ..node("down", Some("zone-c"), 4000)
        },
    ];
    let ratios = zone_ratios(&nodes).expect("enough to go by");
    assert_eq!(ratios.len(), 2);
    assert!((ratios["zone-a"] - 0.25).abs() < 1e-9 && (ratios["zone-b"] - 0.75).abs() < 1e-9);
    // A worker without a zone, or a single zone, is not enough.
    assert!(zone_ratios(&[node("a", Some("zone-a"), 1000), node("x", None, 1000)]).is_none());
    assert!(zone_ratios(&[node("a", Some("zone-a"), 1000)]).is_none());
}

/// Nodes `node-a`, `node-b`, `node-c` are in zones a, b, c; `node-x` has no zone.
fn auto_zone(node: &str) -> Option<Option<&'static str>> {
    match node {
        "node-a" => Some(Some("a")),
        "node-b" => Some(Some("b")),
        "node-c" => Some(Some("c")),
        "node-x" => Some(None),
        _ => None,
    }
}

fn auto_pods(zones: &[&str]) -> Vec<Pod> {
    zones
        .iter()
        .enumerate()
        .map(|(i, z)| Pod {
            node_name: Some(format!("node-{z}").into()),
            ..pod(
                "ns",
                &format!("p{i}"),
                "web",
                &format!("10.244.0.{}", i + 10),
            )
        })
        .collect()
}

fn hinted(groups: &SliceGroups) -> Vec<(String, Option<String>)> {
    let mut out: Vec<_> = groups
        .groups
        .values()
        .flat_map(|(_, e)| e)
        .map(|e| {
            (
                e.zone.clone().unwrap_or_default(),
                e.hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z[0].name.clone()),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn auto_hints_follow_cpu_and_move_endpoints_from_crowded_zones() {
    let svc = Service {
        topology_mode: Some("Auto".into()),
        ..service("ns", "web")
    };
    let zone = auto_zone;
    let ratios: BTreeMap<String, f64> = [("a".to_owned(), 0.5), ("b".to_owned(), 0.5)]
        .into_iter()
        .collect();
    // Three endpoints in zone a, one in b, equal CPU: one of a's goes to b.
    let pods = auto_pods(&["a", "a", "a", "b"]);
    let mut groups = slice_groups(&svc, &pods, AddressType::V4, &zone);
    auto_hints(&mut groups, Some(&ratios)).expect("allocates");
    let got = hinted(&groups);
    let to = |z: &str| got.iter().filter(|(_, h)| h.as_deref() == Some(z)).count();
    assert_eq!((to("a"), to("b")), (2, 2), "{got:?}");
    // The same input gives the same hints (no flapping between syncs).
    let mut again = slice_groups(&svc, &pods, AddressType::V4, &zone);
    auto_hints(&mut again, Some(&ratios)).expect("allocates");
    assert_eq!(hinted(&again), got);
    // Balanced already: every endpoint for its own zone.
    let pods = auto_pods(&["a", "b"]);
    let mut groups = slice_groups(&svc, &pods, AddressType::V4, &zone);
    auto_hints(&mut groups, Some(&ratios)).expect("allocates");
    assert!(
        hinted(&groups)
            .iter()
            .all(|(z, h)| h.as_deref() == Some(z.as_str()))
    );
}

#[test]
fn auto_hints_turn_off_when_they_cannot_be_fair() {
    let svc = Service {
        topology_mode: Some("Auto".into()),
        ..service("ns", "web")
    };
    let zone = auto_zone;
    let ratios: BTreeMap<String, f64> = [
        ("a".to_owned(), 0.5),
        ("b".to_owned(), 0.5),
        ("c".to_owned(), 0.0),
    ]
    .into_iter()
    .collect();
    // Fewer endpoints than zones.
    let pods = auto_pods(&["a", "b"]);
    let mut groups = slice_groups(&svc, &pods, AddressType::V4, &zone);
    let err = auto_hints(&mut groups, Some(&ratios)).expect_err("too few endpoints");
    assert!(err.contains("Insufficient number of endpoints"), "{err}");
    assert!(hinted(&groups).iter().all(|(_, h)| h.is_none()));
    // No node information.
    let mut groups = slice_groups(&svc, &pods, AddressType::V4, &zone);
    assert!(auto_hints(&mut groups, None).is_err());
    // An endpoint without a zone turns hints off for all.
    let two: BTreeMap<String, f64> = [("a".to_owned(), 0.5), ("b".to_owned(), 0.5)]
        .into_iter()
        .collect();
    let pods = auto_pods(&["a", "b", "a", "x"]);
    let mut groups = slice_groups(&svc, &pods, AddressType::V4, &zone);
    let err = auto_hints(&mut groups, Some(&two)).expect_err("zoneless endpoint");
    assert!(err.contains("do not have a zone"), "{err}");
}
