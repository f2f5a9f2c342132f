//! Real packets through rules rendered by the proxy's core, in network namespaces this test
//! makes: a node namespace holding the rules and routing, two pod namespaces serving TCP and
//! UDP, and a client pod. Everything stays inside those namespaces; they are deleted at the end,
//! also when the test fails. Needs root, `ip` and `nft`; without them the test says why and
//! fails (CI runs as root).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::Arc;

use common::Lab;

use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};
use svcplane_proxy::conntrack::{Conntrack, ConntrackCli, UdpView};
use svcplane_proxy::nft::Nft;
use svcplane_proxy::plan::{Config, NodePortAddresses, plan};
use svcplane_proxy::render;
use svcplane_proxy::topology::NodeFacts;

/// A Service with ports http (TCP 80) and dns (UDP 53) to 8080; with `node_port`, a NodePort
/// Service whose http port is also `node_port`.
fn service(name: &str, ip: &str, node_port: Option<u16>) -> (ObjectKey, Arc<Service>) {
    let key = ObjectKey::new("demo", name);
    let port = |name: &str, protocol, port, node_port| ServicePort {
        name: name.into(),
        protocol,
        port,
        target_port: TargetPort::Number(8080),
        node_port,
        app_protocol: None,
    };
    let type_ = if node_port.is_some() {
        ServiceType::NodePort
    } else {
        ServiceType::ClusterIp
    };
    let svc = Service {
        cluster_ips: ClusterIps::Ips(vec![ip.parse().expect("ip")]),
        ports: vec![
            port("http", Protocol::Tcp, 80, node_port),
            port("dns", Protocol::Udp, 53, None),
        ],
        ..Service::new(key.clone(), type_)
    };
    (key, Arc::new(svc))
}

fn endpoints(svc: &ObjectKey, ips: &[&str]) -> ServiceEndpoints {
    let on_node: Vec<(&str, &str)> = ips.iter().map(|ip| (*ip, "node")).collect();
    endpoints_on(svc, &on_node)
}

/// Endpoints with the node each runs on (`node` is the lab's node).
fn endpoints_on(svc: &ObjectKey, ips: &[(&str, &str)]) -> ServiceEndpoints {
    let port = |name: &str, protocol| EndpointPort {
        name: name.into(),
        protocol,
        port: Some(8080),
        app_protocol: None,
    };
    ServiceEndpoints {
        slices: vec![Arc::new(EndpointSlice {
            key: ObjectKey::new(&*svc.namespace, format!("{}-1", svc.name)),
            service: svc.clone(),
            address_type: AddressType::V4,
            ports: vec![port("http", Protocol::Tcp), port("dns", Protocol::Udp)],
            endpoints: ips
                .iter()
                .map(|(ip, node)| Endpoint {
                    addresses: vec![ip.parse().expect("ip")],
                    conditions: Conditions::default(),
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

fn transaction(
    services: &[(ObjectKey, Arc<Service>)],
    eps: &HashMap<ObjectKey, ServiceEndpoints>,
) -> String {
    transaction_and_plan(services, eps).0
}

fn transaction_and_plan(
    services: &[(ObjectKey, Arc<Service>)],
    eps: &HashMap<ObjectKey, ServiceEndpoints>,
) -> (String, svcplane_proxy::plan::Plan) {
    let config = Config {
        node: NodeFacts {
            name: "node".into(),
            zone: None,
        },
        node_ips: vec!["192.0.2.10".parse().expect("ip")],
        nodeport_addresses: NodePortAddresses::Primary,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        masquerade_all: false,
        masquerade_bit: 14,
        detect_local: Default::default(),
        node_pod_cidrs: Vec::new(),
        service_cidrs: vec!["10.96.0.0/16".parse().expect("cidr")],
    };
    let p = plan(
        AddressType::V4,
        services.iter().map(|(k, s)| (k, s)),
        |k| eps.get(k).cloned(),
        &config,
    );
    let mut text = String::new();
    render::full(&p, &mut text);
    (text, p)
}

#[test]
fn cluster_ips_carry_packets_and_refuse_what_they_should() {
    common::require_namespaces();
    let lab = Lab::ready();
    let web = service("web", "10.96.0.10", Some(30080));
    let empty = service("empty", "10.96.0.11", None);
    let mut eps = HashMap::from([(
        web.0.clone(),
        endpoints(&web.0, &["10.244.1.5", "10.244.2.5"]),
    )]);
    let services = [web.clone(), empty.clone()];
    lab.nft()
        .apply(&transaction(&services, &eps))
        .expect("load rules");

    // TCP and UDP spread over both endpoints; the client's own address is kept (pod to pod).
    let tcp = lab.ask("tcp", "10.96.0.10", 80, 40);
    let from_a = tcp.get("pod-a 10.244.3.5").copied().unwrap_or(0);
    let from_b = tcp.get("pod-b 10.244.3.5").copied().unwrap_or(0);
    assert_eq!(from_a + from_b, 40, "{tcp:?}");
    assert!(
        from_a > 0 && from_b > 0,
        "random choice reached both: {tcp:?}"
    );
    let udp = lab.ask("udp", "10.96.0.10", 53, 20);
    assert_eq!(
        udp.keys().filter(|k| k.starts_with("pod-")).count(),
        2,
        "{udp:?}"
    );

    // The NodePort from outside the node: both endpoints, masqueraded to the node's address on
    // the pod's link (externalTrafficPolicy Cluster).
    let np = lab.ask_from("ext", "tcp", "192.0.2.10", 30080, 20);
    assert_eq!(
        np.keys().cloned().collect::<Vec<_>>(),
        ["pod-a 10.244.1.1", "pod-b 10.244.2.1"],
        "{np:?}"
    );

    // No endpoints: rejected (fast), unknown port: rejected, unallocated address: dropped.
    assert_eq!(
        lab.ask("tcp", "10.96.0.11", 80, 3),
        BTreeMap::from([("refused".into(), 3)])
    );
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 81, 2),
        BTreeMap::from([("refused".into(), 2)])
    );
    assert_eq!(
        lab.ask("tcp", "10.96.0.99", 80, 1),
        BTreeMap::from([("timeout".into(), 1)])
    );

    // A failed transaction changes nothing.
    let error = lab.nft().apply("add rule ip svcplane services nonsense\n");
    assert!(error.is_err());
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 80, 10).values().sum::<u32>(),
        10
    );

    // An endpoint goes away: every new connection goes to the one left.
    eps.insert(web.0.clone(), endpoints(&web.0, &["10.244.1.5"]));
    lab.nft()
        .apply(&transaction(&services, &eps))
        .expect("reload rules");
    assert_eq!(
        lab.ask("tcp", "10.96.0.10", 80, 10),
        BTreeMap::from([("pod-a 10.244.3.5".into(), 10)])
    );

    // Cleanup leaves nothing of ours.
    let mut cleanup = String::new();
    render::delete_table(AddressType::V4, &mut cleanup);
    lab.nft().apply(&cleanup).expect("cleanup");
    let left = Command::new("ip")
        .args(["netns", "exec", &lab.ns("node"), "nft", "list", "ruleset"])
        .output()
        .expect("list");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("svcplane"),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A UDP "connection" (one client address and port) sticks to its endpoint through conntrack;
/// when the endpoint leaves the Service, the proxy deletes the flow so the next datagram goes to
/// an endpoint that is still there.
#[test]
fn a_udp_flow_moves_when_its_endpoint_goes() {
    common::require_namespaces();
    let lab = Lab::ready();
    let web = service("web", "10.96.0.10", None);
    let services = [web.clone()];
    let both = HashMap::from([(
        web.0.clone(),
        endpoints(&web.0, &["10.244.1.5", "10.244.2.5"]),
    )]);
    let (text, before) = transaction_and_plan(&services, &both);
    lab.nft().apply(&text).expect("load rules");
    let first = lab.ask_udp_from_port("10.96.0.10", 53, 3, 40000);
    assert_eq!(first.len(), 1, "one flow, one endpoint: {first:?}");
    let pinned = first.keys().next().cloned().unwrap_or_default();
    let (gone, stays) = if pinned.starts_with("pod-a") {
        ("10.244.1.5", "10.244.2.5")
    } else {
        ("10.244.2.5", "10.244.1.5")
    };
    // The pinned endpoint leaves the Service (its pod still answers, as a terminating pod can).
    let left = HashMap::from([(web.0.clone(), endpoints(&web.0, &[stays]))]);
    let (text, after) = transaction_and_plan(&services, &left);
    lab.nft().apply(&text).expect("reload rules");
    // Without cleanup the flow keeps going to the endpoint that left.
    assert_eq!(
        lab.ask_udp_from_port("10.96.0.10", 53, 2, 40000),
        first.keys().map(|k| (k.clone(), 2)).collect()
    );
    // The proxy's cleanup: the flows answered by the endpoint that went.
    let stale = UdpView::of(&before).stale(&UdpView::of(&after));
    assert_eq!(stale.len(), 1, "{stale:?}");
    let conntrack = ConntrackCli::in_netns(&lab.ns("node"));
    for filter in &stale {
        assert_eq!(filter.reply_src, Some(gone.parse().expect("ip")));
        assert!(conntrack.delete(filter).expect("conntrack") >= 1);
    }
    let moved = lab.ask_udp_from_port("10.96.0.10", 53, 3, 40000);
    let want = if stays == "10.244.1.5" {
        "pod-a 10.244.3.5"
    } else {
        "pod-b 10.244.3.5"
    };
    assert_eq!(moved, BTreeMap::from([(want.to_owned(), 3)]));
}

/// externalTrafficPolicy Local: traffic from outside the node reaches only this node's
/// endpoints and keeps the client's address, and is dropped when this node has none; pods take
/// the short cut to every endpoint.
#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    common::require_namespaces();
    let lab = Lab::ready();
    let (key, svc) = service("local", "10.96.0.20", Some(30081));
    let svc = Arc::new(Service {
        external_traffic_policy: svcplane_model::TrafficPolicy::Local,
        ..(*svc).clone()
    });
    let services = [(key.clone(), svc)];
    // pod-a runs on this node, pod-b elsewhere.
    let mixed = HashMap::from([(
        key.clone(),
        endpoints_on(
            &key,
            &[("10.244.1.5", "node"), ("10.244.2.5", "other-node")],
        ),
    )]);
    lab.nft()
        .apply(&transaction(&services, &mixed))
        .expect("load rules");
    assert_eq!(
        lab.ask_from("ext", "tcp", "192.0.2.10", 30081, 10),
        BTreeMap::from([("pod-a 192.0.2.1".into(), 10)]),
        "outside: the local endpoint only, the client's own address"
    );
    let from_pod = lab.ask("tcp", "192.0.2.10", 30081, 30);
    assert_eq!(
        from_pod.keys().cloned().collect::<Vec<_>>(),
        ["pod-a 10.244.3.5", "pod-b 10.244.3.5"],
        "a pod takes the short cut to every endpoint: {from_pod:?}"
    );

    // No endpoint on this node: outside traffic is dropped, pods still get through.
    let remote = HashMap::from([(
        key.clone(),
        endpoints_on(&key, &[("10.244.2.5", "other-node")]),
    )]);
    lab.nft()
        .apply(&transaction(&services, &remote))
        .expect("reload rules");
    assert_eq!(
        lab.ask_from("ext", "tcp", "192.0.2.10", 30081, 1),
        BTreeMap::from([("timeout".into(), 1)])
    );
    assert_eq!(
        lab.ask("tcp", "192.0.2.10", 30081, 5),
        BTreeMap::from([("pod-b 10.244.3.5".into(), 5)])
    );
}

/// loadBalancerSourceRanges: new connections to a LoadBalancer IP from outside the ranges are
/// dropped before DNAT; from inside them they reach the endpoints.
#[test]
fn load_balancer_source_ranges_filter_the_load_balancer_ip() {
    common::require_namespaces();
    let lab = Lab::ready();
    let (key, svc) = service("lb", "10.96.0.30", Some(30082));
    let with_ranges = |ranges: &[&str]| {
        let svc = Service {
            type_: ServiceType::LoadBalancer,
            load_balancer_ips: vec!["198.51.100.7".parse().expect("ip")],
            load_balancer_source_ranges: ranges.iter().map(|r| r.parse().expect("cidr")).collect(),
            ..(*svc).clone()
        };
        [(key.clone(), Arc::new(svc))]
    };
    let eps = HashMap::from([(key.clone(), endpoints(&key, &["10.244.1.5"]))]);
    lab.nft()
        .apply(&transaction(&with_ranges(&["192.0.2.0/24"]), &eps))
        .expect("load rules");
    assert_eq!(
        lab.ask_from("ext", "tcp", "198.51.100.7", 80, 3),
        BTreeMap::from([("pod-a 10.244.1.1".into(), 3)]),
        "allowed source, masqueraded (externalTrafficPolicy Cluster)"
    );
    lab.nft()
        .apply(&transaction(&with_ranges(&["10.0.0.0/8"]), &eps))
        .expect("reload rules");
    assert_eq!(
        lab.ask_from("ext", "tcp", "198.51.100.7", 80, 1),
        BTreeMap::from([("timeout".into(), 1)]),
        "a source outside the ranges is dropped"
    );
    // The NodePort of the same Service is not filtered, as upstream.
    assert_eq!(
        lab.ask_from("ext", "tcp", "192.0.2.10", 30082, 2),
        BTreeMap::from([("pod-a 10.244.1.1".into(), 2)])
    );
}

/// A sync replaces the table in one transaction; connections already going through a Service
/// keep their conntrack entries (and so their endpoint) across it.
#[test]
fn a_sync_keeps_established_flows() {
    common::require_namespaces();
    let lab = Lab::ready();
    let web = service("web", "10.96.0.10", None);
    let services = [web.clone()];
    let eps = HashMap::from([(
        web.0.clone(),
        endpoints(&web.0, &["10.244.1.5", "10.244.2.5"]),
    )]);
    let text = transaction(&services, &eps);
    lab.nft().apply(&text).expect("load rules");
    lab.ask("tcp", "10.96.0.10", 80, 5);
    let count = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("node"),
                "conntrack",
                "-L",
                "-d",
                "10.96.0.10",
            ])
            .output()
            .expect("conntrack");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = count();
    assert!(before >= 5, "{before}");
    lab.nft().apply(&text).expect("the same rules again");
    assert_eq!(count(), before, "a sync must not drop NAT'd flows");
}

/// The proxy's own sync (full, then partial) in the lab's node namespace.
fn lab_state(lab: &Lab) -> svcplane_proxy::state::State {
    common::proxy_state(
        Box::new(lab.nft()),
        Box::new(ConntrackCli::in_netns(&lab.ns("node"))),
    )
}

fn put(
    s: &mut svcplane_proxy::state::State,
    svc: &(ObjectKey, Arc<Service>),
    eps: ServiceEndpoints,
) {
    s.services.apply(svc.0.clone(), Some(svc.1.clone()));
    for slice in eps.slices {
        s.slices.apply(slice.key.clone(), Some(slice));
    }
}

/// The one answer every request got, or a failure listing what they got.
fn one_answer(tally: &BTreeMap<String, u32>, count: u32) -> String {
    assert_eq!(
        tally.len(),
        1,
        "every request to the same endpoint: {tally:?}"
    );
    let (answer, n) = tally.iter().next().expect("one");
    assert_eq!(*n, count, "{tally:?}");
    assert!(answer.starts_with("pod-"), "{tally:?}");
    answer.clone()
}

#[test]
fn session_affinity_keeps_a_client_on_its_endpoint_across_syncs() {
    common::require_namespaces();
    let lab = Lab::ready();
    let mut s = lab_state(&lab);
    let (key, svc) = service("sticky", "10.96.0.20", Some(30090));
    let mut svc = (*svc).clone();
    svc.session_affinity = svcplane_model::SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    let sticky = (key.clone(), Arc::new(svc));
    put(
        &mut s,
        &sticky,
        endpoints(&key, &["10.244.1.5", "10.244.2.5"]),
    );
    assert_eq!(s.sync().expect("sync"), "full");

    // New connections from one client, each from its own source port: without affinity 20 of
    // them land on one endpoint with probability 2^-19.
    let first = one_answer(&lab.ask_fresh("client", "tcp", "10.96.0.20", 80, 20), 20);

    // A partial sync (another Service) leaves the client sets alone: still the same endpoint.
    let other = service("other", "10.96.0.21", None);
    put(&mut s, &other, endpoints(&other.0, &["10.244.1.5"]));
    assert_eq!(s.sync().expect("sync"), "partial");
    assert_eq!(
        one_answer(&lab.ask_fresh("client", "tcp", "10.96.0.20", 80, 10), 10),
        first
    );

    // The NodePort from outside shares the Service port's client sets; the outside client
    // sticks to one endpoint too (masqueraded: the pod sees the node's address on its link).
    one_answer(&lab.ask_fresh("ext", "tcp", "192.0.2.10", 30090, 10), 10);

    // The client's endpoint leaves: it moves to the other one, and sticks there.
    let left = if first.starts_with("pod-a") {
        "10.244.2.5"
    } else {
        "10.244.1.5"
    };
    put(&mut s, &sticky, endpoints(&key, &[left]));
    assert_eq!(s.sync().expect("sync"), "partial");
    let moved = one_answer(&lab.ask_fresh("client", "tcp", "10.96.0.20", 80, 10), 10);
    assert_ne!(moved, first);
}

/// `eps`' slices with the slice name and address type of the family of its first address.
fn family_slices(svc: &ObjectKey, ips: &[&str]) -> ServiceEndpoints {
    let mut eps = endpoints(svc, ips);
    let v6 = ips.first().is_some_and(|ip| ip.contains(':'));
    if v6 {
        for slice in &mut eps.slices {
            let slice = Arc::make_mut(slice);
            slice.address_type = AddressType::V6;
            slice.key = ObjectKey::new(&*svc.namespace, format!("{}-v6", svc.name));
        }
    }
    eps
}

#[test]
fn ipv6_and_hairpin_carry_packets() {
    common::require_namespaces();
    let lab = Lab::ready();
    let mut s = lab_state(&lab);
    // A dual-stack NodePort Service, endpoints in both families; an IPv6 Service without any.
    let (key, svc) = service("dual", "10.96.0.30", Some(30095));
    let mut svc = (*svc).clone();
    svc.cluster_ips = ClusterIps::Ips(vec![
        "10.96.0.30".parse().expect("ip"),
        "fd00:10:96::30".parse().expect("ip"),
    ]);
    let dual = (key.clone(), Arc::new(svc));
    put(
        &mut s,
        &dual,
        family_slices(&key, &["10.244.1.5", "10.244.2.5"]),
    );
    put(
        &mut s,
        &dual,
        family_slices(&key, &["fd00:10:244:1::5", "fd00:10:244:2::5"]),
    );
    let (empty_key, empty) = service("empty6", "10.96.0.31", None);
    let mut empty = (*empty).clone();
    empty.cluster_ips = ClusterIps::Ips(vec!["fd00:10:96::31".parse().expect("ip")]);
    put(
        &mut s,
        &(empty_key, Arc::new(empty)),
        ServiceEndpoints { slices: Vec::new() },
    );
    assert_eq!(s.sync().expect("sync"), "full");

    // IPv6 ClusterIP, TCP and UDP: both endpoints, the pod's own address kept.
    let tcp = lab.ask_fresh("client", "tcp", "fd00:10:96::30", 80, 30);
    assert_eq!(
        tcp.keys().cloned().collect::<Vec<_>>(),
        ["pod-a fd00:10:244:3::5", "pod-b fd00:10:244:3::5"],
        "{tcp:?}"
    );
    let udp = lab.ask_fresh("client", "udp", "fd00:10:96::30", 53, 20);
    assert_eq!(udp.len(), 2, "{udp:?}");
    // The IPv4 side of the same Service, independently.
    let v4 = lab.ask_fresh("client", "tcp", "10.96.0.30", 80, 20);
    assert_eq!(v4.len(), 2, "{v4:?}");
    // The IPv6 NodePort on the node's IPv6 address, from outside: masqueraded to the node.
    let np = lab.ask_fresh("ext", "tcp", "2001:db8::10", 30095, 20);
    assert_eq!(
        np.keys().cloned().collect::<Vec<_>>(),
        ["pod-a fd00:10:244:1::1", "pod-b fd00:10:244:2::1"],
        "{np:?}"
    );
    // No endpoints: ICMPv6 unreachable, refused at once.
    assert_eq!(
        lab.ask("tcp", "fd00:10:96::31", 80, 2),
        BTreeMap::from([("refused".into(), 2)])
    );

    // Hairpin: a pod reaching itself through its Service is masqueraded (otherwise the reply
    // would go straight back to itself from its own address and the connection would fail).
    let hairpin = service("hairpin", "10.96.0.32", None);
    put(&mut s, &hairpin, endpoints(&hairpin.0, &["10.244.1.5"]));
    assert_eq!(s.sync().expect("sync"), "partial");
    assert_eq!(
        lab.ask_fresh("pod-a", "tcp", "10.96.0.32", 80, 5),
        BTreeMap::from([("pod-a 10.244.1.1".into(), 5)])
    );
    let hairpin6 = (hairpin.0.clone(), {
        let mut svc = (*hairpin.1).clone();
        svc.cluster_ips = ClusterIps::Ips(vec!["fd00:10:96::32".parse().expect("ip")]);
        Arc::new(svc)
    });
    s.slices.apply(ObjectKey::new("demo", "hairpin-1"), None);
    put(
        &mut s,
        &hairpin6,
        family_slices(&hairpin.0, &["fd00:10:244:1::5"]),
    );
    assert_eq!(s.sync().expect("sync"), "partial");
    assert_eq!(
        lab.ask_fresh("pod-a", "tcp", "fd00:10:96::32", 80, 5),
        BTreeMap::from([("pod-a fd00:10:244:1::1".into(), 5)])
    );
}
