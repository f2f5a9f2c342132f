//! Partial syncs against a real kernel: after every partial sync, the table in the kernel must
//! be the table a full sync of the same state writes (listed as JSON, handles dropped, elements
//! sorted). Random Services over both families, with every dispatch kind, affinity, source
//! ranges and endpoint counts coming and going.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;

use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServiceCidr, ServicePort, ServiceType, SessionAffinity, TargetPort,
    TrafficPolicy,
};
use svcplane_proxy::conntrack::FakeConntrack;
use svcplane_proxy::nft::{Nft, NftCli};
use svcplane_proxy::state::State;
use svcplane_testenv::rng::Rng;

/// Network namespaces of one test, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(names: &[&str]) -> Self {
        let made: Vec<String> = names
            .iter()
            .map(|n| format!("svp-k{}-{n}", std::process::id()))
            .collect();
        let guard = Namespaces(made.clone());
        for ns in &made {
            common::sh(&["ip", "netns", "add", ns]);
        }
        guard
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn state(ns: &str) -> State {
    let mut s = common::proxy_state(
        Box::new(NftCli::in_netns(ns)),
        Box::new(FakeConntrack::default()),
    );
    let cidrs = ServiceCidr {
        key: ObjectKey::new("", "kubernetes"),
        cidrs: vec![
            "10.96.0.0/16".parse().expect("cidr"),
            "fd00:10:96::/112".parse().expect("cidr"),
        ],
    };
    s.service_cidrs
        .apply(cidrs.key.clone(), Some(Arc::new(cidrs)));
    s
}

/// A Service and its slices.
type Live = (Arc<Service>, Vec<Arc<EndpointSlice>>);

/// One random Service `i` (its addresses derived from `i`) and its slices.
fn world(i: u16, rng: &mut Rng) -> Live {
    let v6 = rng.chance(30);
    let ip = |v4: String, v6s: String| -> IpAddr {
        if v6 { v6s.parse() } else { v4.parse() }.expect("ip")
    };
    let type_ = match rng.below(3) {
        0 => ServiceType::ClusterIp,
        1 => ServiceType::NodePort,
        _ => ServiceType::LoadBalancer,
    };
    let key = ObjectKey::new("ns", format!("svc-{i}"));
    let node_port = (type_ != ServiceType::ClusterIp).then_some(30000 + i);
    let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][rng.below(3)];
    let lb = type_ == ServiceType::LoadBalancer;
    let svc = Service {
        cluster_ips: ClusterIps::Ips(vec![ip(
            format!("10.96.1.{}", i % 250),
            format!("fd00:10:96::1:{i:x}"),
        )]),
        ports: vec![ServicePort {
            name: "p".into(),
            protocol,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port,
            app_protocol: None,
        }],
        external_ips: if rng.chance(20) {
            // Sometimes shared with another Service: two owners, one element.
            vec![ip(
                format!("198.51.100.{}", i % 3),
                format!("2001:db8:1::{}", i % 3),
            )]
        } else {
            Vec::new()
        },
        load_balancer_ips: if lb {
            vec![ip(
                format!("203.0.113.{}", i % 250),
                format!("2001:db8:2::{i:x}"),
            )]
        } else {
            Vec::new()
        },
        load_balancer_source_ranges: if lb && rng.chance(50) {
            let r = if v6 {
                "2001:db8:9::/48"
            } else {
                "192.0.2.0/24"
            };
            vec![r.parse().expect("cidr")]
        } else {
            Vec::new()
        },
        external_traffic_policy: if rng.chance(40) {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        session_affinity: if rng.chance(25) {
            SessionAffinity::ClientIp {
                timeout_seconds: [60, 10800][rng.below(2)],
            }
        } else {
            SessionAffinity::None
        },
        ..Service::new(key.clone(), type_)
    };
    let count = rng.below(4);
    let endpoints = (0..count)
        .map(|e| Endpoint {
            addresses: vec![ip(
                format!("10.244.{}.{}", e, 1 + i % 250),
                format!("fd00:10:244:{e}::{i:x}"),
            )],
            conditions: Conditions {
                ready: Some(rng.chance(85)),
                serving: Some(true),
                terminating: Some(false),
            },
            hostname: None,
            node_name: Some(["node", "node-b"][rng.below(2)].into()),
            zone: None,
            hints: None,
            target_pod: None,
        })
        .collect();
    let slice = EndpointSlice {
        key: ObjectKey::new("ns", format!("svc-{i}-1")),
        service: key,
        address_type: if v6 { AddressType::V6 } else { AddressType::V4 },
        ports: vec![EndpointPort {
            name: "p".into(),
            protocol,
            port: Some(8080),
            app_protocol: None,
        }],
        endpoints,
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    };
    (Arc::new(svc), vec![Arc::new(slice)])
}

fn put(s: &mut State, svc: &Arc<Service>, slices: &[Arc<EndpointSlice>]) {
    s.services.apply(svc.key.clone(), Some(svc.clone()));
    for slice in slices {
        s.slices.apply(slice.key.clone(), Some(slice.clone()));
    }
}

fn remove(s: &mut State, svc: &Arc<Service>, slices: &[Arc<EndpointSlice>]) {
    s.services.apply(svc.key.clone(), None);
    for slice in slices {
        s.slices.apply(slice.key.clone(), None);
    }
}

/// The table of `family` in `ns`, comparable across histories: handles dropped, set elements
/// sorted, objects sorted, each rule numbered within its chain.
fn listing(ns: &str, family: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", family, "svcplane",
        ])
        .output()
        .expect("nft list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut positions: std::collections::HashMap<String, usize> = Default::default();
    let mut items: Vec<String> = Vec::new();
    for item in json["nftables"].as_array().expect("array") {
        let mut item = item.clone();
        let Some(obj) = item.as_object_mut() else {
            continue;
        };
        if obj.contains_key("metainfo") {
            continue;
        }
        for inner in obj.values_mut() {
            let Some(inner) = inner.as_object_mut() else {
                continue;
            };
            inner.remove("handle");
            if let Some(serde_json::Value::Array(elems)) = inner.get_mut("elem") {
                elems.sort_by_key(ToString::to_string);
            }
        }
        if let Some(rule) = obj.get_mut("rule").and_then(|r| r.as_object_mut()) {
            let chain = rule["chain"].to_string();
            let n = positions.entry(chain).or_default();
            rule.insert("position".into(), (*n).into());
            *n += 1;
        }
        items.push(item.to_string());
    }
    items.sort();
    items
}

#[test]
fn partial_syncs_leave_the_table_a_full_sync_writes() {
    common::require_namespaces();
    let ns = Namespaces::new(&["partial", "full"]);
    let (partial_ns, full_ns) = (ns.0[0].clone(), ns.0[1].clone());
    let mut rng = Rng::new(0x5eed);
    let mut live: Vec<Option<Live>> = Vec::new();
    let mut s = state(&partial_ns);
    for i in 0..40 {
        let (svc, slices) = world(i, &mut rng);
        put(&mut s, &svc, &slices);
        live.push(Some((svc, slices)));
    }
    assert_eq!(s.sync().expect("first sync"), "full");
    let mut partials = 0;
    for round in 0..25 {
        // A few changes per round: a Service replaced (other type, endpoints, affinity, ...),
        // removed, or brought back.
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(live.len());
            match live[i].take() {
                Some((svc, slices)) if rng.chance(25) => remove(&mut s, &svc, &slices),
                old => {
                    if let Some((svc, slices)) = &old {
                        // Slices the new version doesn't have go.
                        remove(&mut s, svc, slices);
                    }
                    let (svc, slices) = world(u16::try_from(i).expect("small"), &mut rng);
                    put(&mut s, &svc, &slices);
                    live[i] = Some((svc, slices));
                }
            }
        }
        let kind = s
            .sync()
            .unwrap_or_else(|e| panic!("round {round}: partial sync refused: {e}"));
        partials += usize::from(kind == "partial");

        // The same state, written whole into the other namespace.
        let mut fresh = state(&full_ns);
        for (svc, slices) in live.iter().flatten() {
            put(&mut fresh, svc, slices);
        }
        assert_eq!(fresh.sync().expect("full sync"), "full");
        for family in ["ip", "ip6"] {
            let (got, want) = (listing(&partial_ns, family), listing(&full_ns, family));
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "round {round}, {family}: after partial syncs the table differs from a full sync\nmissing: {missing:#?}\nextra: {extra:#?}"
            );
        }
    }
    assert_eq!(partials, 25, "every sync after the first was partial");

    // Someone removes an element behind the proxy's back; the partial sync that deletes it is
    // refused by the kernel and changes nothing; the next sync is a full one and repairs.
    let i = live
        .iter()
        .position(|l| {
            l.as_ref()
                .is_some_and(|(svc, _)| svc.cluster_ips()[0].is_ipv4())
        })
        .expect("an IPv4 Service");
    let (svc, slices) = live[i].take().expect("live");
    let ip = svc.cluster_ips()[0];
    NftCli::in_netns(&partial_ns)
        .apply(&format!(
            "delete element ip svcplane cluster-ips {{ {ip} }}\n"
        ))
        .expect("tamper");
    let before = listing(&partial_ns, "ip");
    remove(&mut s, &svc, &slices);
    assert!(s.sync().is_err(), "deleting a missing element fails");
    assert_eq!(
        listing(&partial_ns, "ip"),
        before,
        "a refused transaction changes nothing"
    );
    assert_eq!(s.sync().expect("retry"), "full");
    let mut fresh = state(&full_ns);
    for (svc, slices) in live.iter().flatten() {
        put(&mut fresh, svc, slices);
    }
    fresh.sync().expect("full sync");
    assert_eq!(listing(&partial_ns, "ip"), listing(&full_ns, "ip"));
}
