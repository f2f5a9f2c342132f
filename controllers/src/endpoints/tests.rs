use svcplane_model::{ClusterIps, Pod, Service, TargetPort};

use super::*;
use crate::testing::{pod, port, service};

fn ips(addresses: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
    addresses.iter().flatten().map(|a| a.ip.as_str()).collect()
}

#[test]
fn ready_and_not_ready_pods_and_terminating_ones() {
    let svc = service("ns", "web");
    let ready = pod("ns", "a", "web", "10.244.0.10");
    let unready = Pod {
        ready: false,
        ..pod("ns", "b", "web", "10.244.0.2")
    };
    let terminating = Pod {
        terminating: true,
        ..pod("ns", "c", "web", "10.244.0.3")
    };
    let d = desired(&svc, [&ready, &unready, &terminating]);
    assert!(!d.truncated);
    assert_eq!(d.subsets.len(), 1);
    assert_eq!(ips(&d.subsets[0].addresses), ["10.244.0.10"]);
    // Terminating pods are left out unless publishNotReadyAddresses.
    assert_eq!(ips(&d.subsets[0].not_ready_addresses), ["10.244.0.2"]);
    let publish = Service {
        publish_not_ready_addresses: true,
        ..service("ns", "web")
    };
    let d = desired(&publish, [&ready, &unready, &terminating]);
    // All in `addresses`, sorted by IP text (bytewise: "10.244.0.10" < "10.244.0.2").
    assert_eq!(
        ips(&d.subsets[0].addresses),
        ["10.244.0.10", "10.244.0.2", "10.244.0.3"]
    );
    assert!(d.subsets[0].not_ready_addresses.is_none());
    let a = &d.subsets[0].addresses.as_ref().expect("addresses")[0];
    assert_eq!(a.node_name.as_deref(), Some("node-1"));
    assert_eq!(
        a.target_ref.as_ref().and_then(|r| r.name.as_deref()),
        Some("a")
    );
}

#[test]
fn subsets_group_pods_by_resolved_ports() {
    let mut svc = service("ns", "web");
    svc.ports = vec![
        port("http", 80, TargetPort::Name("http".into())),
        port("admin", 81, TargetPort::Number(9000)),
    ];
    let a = pod("ns", "a", "web", "10.244.0.1");
    let b = pod("ns", "b", "web", "10.244.0.2");
    let c = Pod {
        named_ports: vec![],
        ..pod("ns", "c", "web", "10.244.0.3")
    };
    let d = desired(&svc, [&a, &b, &c]);
    let mut got: Vec<(Vec<i32>, Vec<&str>)> = d
        .subsets
        .iter()
        .map(|s| {
            (
                s.ports.iter().flatten().map(|p| p.port).collect(),
                ips(&s.addresses),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            // Ports with the same address set share a subset (upstream's RepackSubsets): the
            // named port reaches a and b, the numeric one all three.
            (vec![8080], vec!["10.244.0.1", "10.244.0.2"]),
            (vec![9000], vec!["10.244.0.1", "10.244.0.2", "10.244.0.3"]),
        ]
    );
}

#[test]
fn headless_without_ports_lists_addresses_and_clusterip_without_ports_none() {
    let headless = Service {
        cluster_ips: ClusterIps::Headless,
        ports: vec![],
        ..service("ns", "web")
    };
    let a = pod("ns", "a", "web", "10.244.0.1");
    let d = desired(&headless, [&a]);
    assert_eq!(d.subsets.len(), 1);
    assert!(d.subsets[0].ports.is_none());
    assert_eq!(ips(&d.subsets[0].addresses), ["10.244.0.1"]);
    let portless = Service {
        ports: vec![],
        ..service("ns", "web")
    };
    assert!(desired(&portless, [&a]).subsets.is_empty());
}

#[test]
fn a_thousand_addresses_at_most_ready_first() {
    let svc = service("ns", "web");
    let pods: Vec<Pod> = (0..1200)
        .map(|i| Pod {
            ready: i < 900,
            ..pod(
                "ns",
                &format!("p{i}"),
                "web",
                &format!("10.1.{}.{}", i / 250, i % 250),
            )
        })
        .collect();
    let d = desired(&svc, &pods);
    assert!(d.truncated);
    let ready: usize = d
        .subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    let not_ready: usize = d
        .subsets
        .iter()
        .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!((ready, not_ready), (900, 100));
    // More ready than fit: only ready ones, 1000 of them.
    let all_ready: Vec<Pod> = pods
        .iter()
        .map(|p| Pod {
            ready: true,
            ..p.clone()
        })
        .collect();
    let d = desired(&svc, &all_ready);
    let ready: usize = d
        .subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(ready, MAX_ADDRESSES);
    assert!(d.subsets.iter().all(|s| s.not_ready_addresses.is_none()));
}

#[test]
fn canonical_form_ignores_order_and_how_subsets_were_split() {
    let svc = service("ns", "web");
    let a = pod("ns", "a", "web", "10.244.0.1");
    let b = Pod {
        ready: false,
        ..pod("ns", "b", "web", "10.244.0.2")
    };
    let d = desired(&svc, [&a, &b]);
    // The same facts written as two subsets in another order read back as equal.
    let mut split = d.subsets[0].clone();
    let mut other = split.clone();
    split.not_ready_addresses = None;
    other.addresses = None;
    assert_eq!(canonical(&[other, split]), d.subsets);
    // A different readiness does not.
    let flipped = desired(&svc, [&a, &Pod { ready: true, ..b }]);
    assert_ne!(canonical(&flipped.subsets), d.subsets);
}
