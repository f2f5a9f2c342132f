use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};
use rand::SeedableRng;
use serde_json::{Value, json};

use super::*;
use crate::index::Holder;

fn index(cidrs: &[&str], ports: &str) -> Index {
    let mut idx = Index::new(ports.parse().expect("range"), Duration::from_secs(60));
    let cidr: ServiceCIDR = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": cidrs}
    }))
    .expect("servicecidr");
    idx.apply_service_cidr("kubernetes", Some(&cidr));
    idx
}

fn svc(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec}))
        .expect("service")
}

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(7)
}

fn create(idx: &mut Index, s: &Service) -> Decision {
    let owner = crate::index::owner_of(s).expect("named");
    let req = Request {
        create: true,
        service: s,
        old: None,
        owner: &owner,
        dry_run: false,
    };
    decide(idx, req, Context::default(), &mut rng(), Instant::now())
}

fn update(idx: &mut Index, old: &Service, new: &Service) -> Decision {
    let owner = crate::index::owner_of(new).expect("named");
    let req = Request {
        create: false,
        service: new,
        old: Some(old),
        owner: &owner,
        dry_run: false,
    };
    decide(idx, req, Context::default(), &mut rng(), Instant::now())
}

/// The patch applied to the Service, as the API server would.
fn apply(s: &Service, d: &Decision) -> Service {
    let mut v = serde_json::to_value(s).expect("json");
    if let Decision::Patch { ops, .. } = d {
        let patch: json_patch::Patch = serde_json::from_value(json!(ops)).expect("patch");
        json_patch::patch(&mut v, &patch).expect("applies");
    }
    serde_json::from_value(v).expect("service")
}

fn denial(d: &Decision) -> &Denial {
    match d {
        Decision::Deny(d) => d,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn ips(s: &Service) -> Vec<String> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
}

fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.node_port.unwrap_or(0))
        .collect()
}

#[test]
fn single_stack_cluster_ip_from_the_dynamic_band() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc("a", json!({"ports": [{"port": 80}]}));
    let d = create(&mut idx, &s);
    let got = apply(&s, &d);
    let ip: IpAddr = ips(&got)[0].parse().expect("ip");
    assert_eq!(
        got.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
        Some(ip.to_string())
    );
    let upper = CidrRange::new("10.96.0.0/16".parse().expect("cidr")).expect("range");
    assert!(
        upper
            .dynamic_band
            .expect("band")
            .contains(&crate::ranges::ip_to_u128(ip)),
        "{ip}"
    );
    assert_eq!(ips(&got).len(), 1);
}

#[test]
fn families_follow_policy_and_order() {
    let mut idx = index(&["10.96.0.0/16", "fd00::/112"], "30000-32767");
    let cases = [
        (json!({}), vec![false]),
        (
            json!({"ipFamilyPolicy": "PreferDualStack"}),
            vec![false, true],
        ),
        (
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}),
            vec![true, false],
        ),
        (json!({"ipFamilies": ["IPv6"]}), vec![true]),
        (
            json!({"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.7.7"], "clusterIP": "10.96.7.7"}),
            vec![false, true],
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let s = svc(&format!("s{i}"), spec.clone());
        let got = apply(&s, &create(&mut idx, &s));
        let fams: Vec<bool> = ips(&got)
            .iter()
            .map(|ip| ip.parse::<IpAddr>().expect("ip").is_ipv6())
            .collect();
        assert_eq!(fams, want, "{spec}");
    }
    let partial = svc(
        "p",
        json!({"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.96.7.8"], "clusterIP": "10.96.7.8"}),
    );
    assert_eq!(
        ips(&apply(&partial, &create(&mut idx, &partial)))[0],
        "10.96.7.8",
        "static kept in place"
    );
}

#[test]
fn what_the_registry_refuses_or_skips_passes_through() {
    let mut single = index(&["10.96.0.0/16"], "30000-32767");
    for spec in [
        json!({"ipFamilyPolicy": "RequireDualStack"}),
        json!({"ipFamilies": ["IPv6"]}),
        json!({"clusterIP": "None"}),
        json!({"type": "ExternalName", "externalName": "example.com"}),
        json!({"clusterIPs": ["10.96.0.5", "10.96.0.6"], "clusterIP": "10.96.0.5"}),
        json!({"clusterIPs": ["banana"], "clusterIP": "banana"}),
        json!({"ipFamilyPolicy": "Sometimes"}),
    ] {
        assert_eq!(
            create(&mut single, &svc("x", spec.clone())),
            Decision::Unchanged,
            "{spec}"
        );
    }
    // No `kubernetes` ServiceCIDR seen yet: the registry allocates.
    let mut empty = Index::new(PortRange::DEFAULT, Duration::from_secs(60));
    assert_eq!(
        create(&mut empty, &svc("x", json!({}))),
        Decision::Unchanged
    );
}

#[test]
fn requested_ips_are_checked_and_denials_name_owner_and_range() {
    let mut idx = index(&["10.96.0.0/24"], "30000-32767");
    let taken: IPAddress = serde_json::from_value(json!({
        "metadata": {"name": "10.96.0.10"},
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "kube-system", "name": "kube-dns"}}
    }))
    .expect("ipaddress");
    idx.apply_ip_address("10.96.0.10", Some(&taken));
    let d = create(
        &mut idx,
        &svc(
            "a",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}),
        ),
    );
    let deny = denial(&d);
    assert_eq!(deny.reason, DenyReason::IpTaken);
    assert!(
        deny.message.contains("kube-system/kube-dns"),
        "{}",
        deny.message
    );
    assert!(
        deny.message.contains("10.96.0.0/24 has 253 free"),
        "{}",
        deny.message
    );
    let d = create(
        &mut idx,
        &svc(
            "a",
            json!({"clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"]}),
        ),
    );
    assert_eq!(denial(&d).reason, DenyReason::IpOutOfRange);
    assert!(
        denial(&d).message.contains("10.96.0.0/24"),
        "{}",
        denial(&d).message
    );
    // The broadcast address is not usable.
    let d = create(
        &mut idx,
        &svc(
            "a",
            json!({"clusterIP": "10.96.0.255", "clusterIPs": ["10.96.0.255"]}),
        ),
    );
    assert_eq!(denial(&d).reason, DenyReason::IpOutOfRange);
    // A free static request is taken and reserved: the next asker is refused.
    let ok = create(
        &mut idx,
        &svc(
            "a",
            json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"]}),
        ),
    );
    assert!(
        matches!(ok, Decision::Unchanged),
        "a static request needs no patch: {ok:?}"
    );
    let d = create(
        &mut idx,
        &svc(
            "b",
            json!({"clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"]}),
        ),
    );
    assert_eq!(d, Decision::Unchanged);
}

#[test]
fn static_requests_are_reserved_even_without_a_patch() {
    // A Service asking for a fixed IP and nothing else needs no patch, but its IP must still
    // be kept from later dynamic picks until the registry has it.
    let mut idx = index(&["10.0.0.0/30"], "30000-32767");
    let a = svc(
        "a",
        json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"]}),
    );
    let _ = create(&mut idx, &a);
    let b = svc("b", json!({}));
    let got = apply(&b, &create(&mut idx, &b));
    assert_eq!(ips(&got), vec!["10.0.0.2"]);
}

#[test]
fn tiny_ranges_never_hand_out_a_value_twice_and_then_say_full() {
    let mut idx = index(&["10.0.0.0/29"], "30000-30003");
    let mut seen_ips = BTreeMap::new();
    let mut seen_ports = BTreeMap::new();
    for i in 0..4 {
        let s = svc(
            &format!("s{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        );
        let got = apply(&s, &create(&mut idx, &s));
        assert!(
            seen_ips.insert(ips(&got)[0].clone(), i).is_none(),
            "duplicate IP"
        );
        assert!(
            seen_ports.insert(node_ports(&got)[0], i).is_none(),
            "duplicate port"
        );
    }
    let s = svc("s4", json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let deny = denial(&create(&mut idx, &s)).clone();
    assert_eq!(deny.reason, DenyReason::PortRangeFull, "{}", deny.message);
    let s = svc("s5", json!({"ports": [{"port": 80}]}));
    let _ = create(&mut idx, &s);
    let _ = create(&mut idx, &svc("s6", json!({"ports": [{"port": 80}]})));
    let deny = denial(&create(&mut idx, &svc("s7", json!({})))).clone();
    assert_eq!(deny.reason, DenyReason::IpRangeFull, "{}", deny.message);
    // Reservations run out: the values come back.
    idx.expire(Instant::now() + Duration::from_secs(61));
    assert!(matches!(
        create(&mut idx, &svc("s8", json!({}))),
        Decision::Patch { .. }
    ));
}

#[test]
fn node_ports_shared_by_port_number_on_create() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "dns",
        json!({"type": "NodePort", "ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153, "protocol": "TCP"}]}),
    );
    let got = node_ports(&apply(&s, &create(&mut idx, &s)));
    assert_eq!(got[0], got[1]);
    assert_ne!(got[0], got[2]);
    // An explicit value on a later port with the same number is shared backwards.
    let s = svc(
        "b",
        json!({"type": "NodePort", "ports": [
        {"name": "u", "port": 53, "protocol": "UDP"},
        {"name": "t", "port": 53, "protocol": "TCP", "nodePort": 30053}]}),
    );
    assert_eq!(
        node_ports(&apply(&s, &create(&mut idx, &s))),
        vec![30053, 30053]
    );
    // Dynamic picks avoid the static band (30000-30085).
    for p in got {
        assert!(p >= 30086, "{p}");
    }
}

#[test]
fn load_balancers_node_ports_and_health_check() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "lb",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    let got = apply(&s, &create(&mut idx, &s));
    let hc = got
        .spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .expect("health check port");
    assert_ne!(node_ports(&got)[0], 0);
    assert_ne!(node_ports(&got)[0], hc);
    let s = svc(
        "nolb",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}, {"port": 81, "nodePort": 30081}]}),
    );
    let got = apply(&s, &create(&mut idx, &s));
    assert_eq!(node_ports(&got), vec![0, 30081], "explicit still honoured");
    // And reserved: another Service asking for it is refused with the owner named.
    let s = svc(
        "other",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30081}]}),
    );
    let deny = denial(&create(&mut idx, &s)).clone();
    assert_eq!(deny.reason, DenyReason::PortTaken);
    assert!(
        deny.message.contains("ns/nolb") && deny.message.contains("30000-32767"),
        "{}",
        deny.message
    );
    let s = svc(
        "low",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]}),
    );
    let deny = denial(&create(&mut idx, &s)).clone();
    assert_eq!(deny.reason, DenyReason::PortOutOfRange, "{}", deny.message);
    assert!(
        deny.message.contains("spec.ports[0].nodePort"),
        "{}",
        deny.message
    );
}

#[test]
fn updates_keep_what_the_service_has() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "a",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}),
    );
    let stored = apply(&s, &create(&mut idx, &s));
    idx.apply_service(&Owner::new("ns", "a"), Some(&stored));
    // A PUT of the original manifest (no allocated fields) keeps everything.
    let put = apply(&s, &update(&mut idx, &stored, &s));
    assert_eq!(ips(&put), ips(&stored));
    assert_eq!(node_ports(&put), node_ports(&stored));
    assert_eq!(
        put.spec.as_ref().and_then(|s| s.health_check_node_port),
        stored.spec.as_ref().and_then(|s| s.health_check_node_port)
    );
    // Ports matched by name, not position.
    let swapped = svc(
        "a",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "https", "port": 443}, {"name": "http", "port": 80}]}),
    );
    let got = apply(&swapped, &update(&mut idx, &stored, &swapped));
    assert_eq!(
        node_ports(&got),
        vec![node_ports(&stored)[1], node_ports(&stored)[0]]
    );
    // Back to ClusterIP: no node ports written.
    let back = svc("a", json!({"ports": [{"name": "http", "port": 80}]}));
    let got = apply(&back, &update(&mut idx, &stored, &back));
    assert_eq!(node_ports(&got), vec![0]);
    assert_eq!(ips(&got), ips(&stored));
}

#[test]
fn clusterip_to_nodeport_does_not_share_like_upstream() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "dns",
        json!({"ports": [{"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 53, "protocol": "TCP"}]}),
    );
    let stored = apply(&s, &create(&mut idx, &s));
    let mut np = serde_json::to_value(&stored).expect("json");
    np["spec"]["type"] = json!("NodePort");
    let np: Service = serde_json::from_value(np).expect("service");
    let got = node_ports(&apply(&np, &update(&mut idx, &stored, &np)));
    assert!(got[0] != 0 && got[1] != 0 && got[0] != got[1], "{got:?}");
}

#[test]
fn dry_run_reserves_nothing() {
    let mut idx = index(&["10.0.0.0/30"], "30000-30001");
    let s = svc("a", json!({}));
    let owner = crate::index::owner_of(&s).expect("named");
    let req = Request {
        create: true,
        service: &s,
        old: None,
        owner: &owner,
        dry_run: true,
    };
    let _ = decide(
        &mut idx,
        req,
        Context::default(),
        &mut rng(),
        Instant::now(),
    );
    assert_eq!(idx.reservations(), (0, 0));
}

#[test]
fn retries_get_their_reservation_back_but_generated_names_never_share() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc("a", json!({}));
    let first = ips(&apply(&s, &create(&mut idx, &s)));
    let again = ips(&apply(&s, &create(&mut idx, &s)));
    assert_eq!(first, again, "a retried request is idempotent");
    let g: Service = serde_json::from_value(json!({"metadata": {"namespace": "ns", "generateName": "g-"}, "spec": {"clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"]}})).expect("svc");
    let owner = crate::index::generated_owner("ns", "g-");
    let req = Request {
        create: true,
        service: &g,
        old: None,
        owner: &owner,
        dry_run: false,
    };
    assert_eq!(
        decide(
            &mut idx,
            req,
            Context::default(),
            &mut rng(),
            Instant::now()
        ),
        Decision::Unchanged
    );
    let req = Request {
        create: true,
        service: &g,
        old: None,
        owner: &owner,
        dry_run: false,
    };
    let d = decide(
        &mut idx,
        req,
        Context::default(),
        &mut rng(),
        Instant::now(),
    );
    assert_eq!(
        denial(&d).reason,
        DenyReason::IpTaken,
        "two generateName requests are two owners"
    );
    assert_eq!(
        idx.ip_holder(
            "10.96.9.9".parse().expect("ip"),
            &Owner::new("ns", "x"),
            Instant::now()
        ),
        Some(Holder::Reserved(owner))
    );
}

#[test]
fn sticky_values_come_back_when_free() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let prev = Remembered {
        namespace: "ns".into(),
        name: "a".into(),
        cluster_ips: vec!["10.96.44.44".parse().expect("ip")],
        node_ports: BTreeMap::from([("http".to_owned(), 31111)]),
        health_check_node_port: None,
        deleted_at: 0,
    };
    let s = svc(
        "a",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]}),
    );
    let owner = crate::index::owner_of(&s).expect("named");
    let req = Request {
        create: true,
        service: &s,
        old: None,
        owner: &owner,
        dry_run: false,
    };
    let ctx = Context {
        rule: None,
        sticky: Some(&prev),
    };
    let d = decide(&mut idx, req, ctx, &mut rng(), Instant::now());
    let got = apply(&s, &d);
    assert_eq!(ips(&got), vec!["10.96.44.44"]);
    assert_eq!(node_ports(&got), vec![31111]);
    let Decision::Patch { picks, .. } = d else {
        panic!("patch")
    };
    assert!(picks.iter().all(|p| p.how == How::Sticky), "{picks:?}");
    // Taken meanwhile: a fresh pick instead.
    let other = svc("b", json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let got = apply(&other, &create(&mut idx, &other));
    assert_ne!(node_ports(&got), vec![31111]);
}

#[test]
fn policy_steers_dynamic_picks() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let extra: ServiceCIDR = serde_json::from_value(
        json!({"metadata": {"name": "team"}, "spec": {"cidrs": ["10.97.0.0/28"]}}),
    )
    .expect("cidr");
    idx.apply_service_cidr("team", Some(&extra));
    let rule = Rule {
        name: "team".into(),
        namespaces: vec!["ns".into()],
        service_selector: BTreeMap::new(),
        service_cidrs: vec!["team".into()],
        node_port_range: Some("31000-31001".parse().expect("range")),
    };
    for i in 0..2 {
        let s = svc(
            &format!("t{i}"),
            json!({"type": "NodePort", "ports": [{"port": 80}], "ipFamilyPolicy": "PreferDualStack"}),
        );
        let owner = crate::index::owner_of(&s).expect("named");
        let req = Request {
            create: true,
            service: &s,
            old: None,
            owner: &owner,
            dry_run: false,
        };
        let got = apply(
            &s,
            &decide(
                &mut idx,
                req,
                Context {
                    rule: Some(&rule),
                    sticky: None,
                },
                &mut rng(),
                Instant::now(),
            ),
        );
        assert!(ips(&got)[0].starts_with("10.97.0."), "{:?}", ips(&got));
        assert!((31000..=31001).contains(&node_ports(&got)[0]));
    }
    let s = svc("t9", json!({"type": "NodePort", "ports": [{"port": 80}]}));
    let owner = crate::index::owner_of(&s).expect("named");
    let req = Request {
        create: true,
        service: &s,
        old: None,
        owner: &owner,
        dry_run: false,
    };
    let d = decide(
        &mut idx,
        req,
        Context {
            rule: Some(&rule),
            sticky: None,
        },
        &mut rng(),
        Instant::now(),
    );
    assert!(
        denial(&d)
            .message
            .contains("31000-31001 of policy rule team"),
        "{}",
        denial(&d).message
    );
}

#[test]
fn put_with_only_cluster_ip_keeps_both_families() {
    let mut idx = index(&["10.96.0.0/16", "fd00::/112"], "30000-32767");
    let s = svc(
        "a",
        json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
    );
    let stored = apply(&s, &create(&mut idx, &s));
    assert_eq!(ips(&stored).len(), 2);
    idx.apply_service(&Owner::new("ns", "a"), Some(&stored));
    let put = svc(
        "a",
        json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": ips(&stored)[0], "ports": [{"port": 80}]}),
    );
    let got = apply(&put, &update(&mut idx, &stored, &put));
    assert_eq!(ips(&got), ips(&stored));
}

#[test]
fn dynamic_picks_on_update_avoid_the_services_own_ports() {
    // Four ports in all: the Service holds two, so its health check port must be one of the
    // other two, whatever the random start.
    for seed in 0..20 {
        let mut idx = index(&["10.96.0.0/16"], "30000-30003");
        let s = svc(
            "a",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
        );
        let stored = apply(&s, &create(&mut idx, &s));
        idx.apply_service(&Owner::new("ns", "a"), Some(&stored));
        let mut lb = serde_json::to_value(&stored).expect("json");
        lb["spec"]["type"] = json!("LoadBalancer");
        lb["spec"]["externalTrafficPolicy"] = json!("Local");
        let lb: Service = serde_json::from_value(lb).expect("svc");
        let owner = Owner::new("ns", "a");
        let req = Request {
            create: false,
            service: &lb,
            old: Some(&stored),
            owner: &owner,
            dry_run: false,
        };
        let d = decide(
            &mut idx,
            req,
            Context::default(),
            &mut rand::rngs::StdRng::seed_from_u64(seed),
            Instant::now(),
        );
        let hc = health_check_port(&apply(&lb, &d));
        assert!(
            !node_ports(&stored).contains(&hc),
            "seed {seed}: {hc} is one of {:?}",
            node_ports(&stored)
        );
    }
}

fn health_check_port(s: &Service) -> i32 {
    s.spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .unwrap_or(0)
}

#[test]
fn invalid_node_ports_pass_through_for_the_api_server_to_refuse() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    for spec in [
        json!({"type": "NodePort", "clusterIP": "10.96.9.1", "clusterIPs": ["10.96.9.1"], "ports": [{"port": 80, "nodePort": 70000}]}),
        json!({"type": "LoadBalancer", "clusterIP": "10.96.9.2", "clusterIPs": ["10.96.9.2"], "externalTrafficPolicy": "Local", "healthCheckNodePort": -1, "ports": [{"port": 80}]}),
    ] {
        assert_eq!(
            create(&mut idx, &svc("x", spec.clone())),
            Decision::Unchanged,
            "{spec}"
        );
    }
}

#[test]
fn retried_requests_get_their_node_ports_back() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "a",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
    );
    let first = node_ports(&apply(&s, &create(&mut idx, &s)));
    let mut again = node_ports(&apply(&s, &create(&mut idx, &s)));
    let mut first_sorted = first.clone();
    first_sorted.sort_unstable();
    again.sort_unstable();
    assert_eq!(again, first_sorted, "no new reservation per retry");
}

#[test]
fn released_node_ports_are_held_briefly_for_their_owner() {
    let mut idx = index(&["10.96.0.0/16"], "30000-32767");
    let s = svc(
        "a",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30500}]}),
    );
    let stored = apply(&s, &create(&mut idx, &s));
    let owner = Owner::new("ns", "a");
    idx.apply_service(&owner, Some(&stored));
    idx.apply_service(&owner, None);
    let now = Instant::now();
    assert!(
        idx.port_taken(30500, &Owner::new("ns", "b"), now),
        "held for the registry to catch up"
    );
    assert!(
        !idx.port_taken(30500, &owner, now),
        "but not from its owner"
    );
    assert!(!idx.port_taken(30500, &Owner::new("ns", "b"), now + Duration::from_secs(4)));
}
