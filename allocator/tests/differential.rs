//! The webhook against the API server's own allocation, in one dual-stack control plane: the
//! same Service specs are created (and changed) in a namespace the webhook handles and in one it
//! skips. What must match: success or refusal, which fields are set, families and policy, which
//! ports share a node port, and every value lying in its range. Only the chosen numbers may
//! differ (docs/allocator.md; upstream's picks are random).

mod common;

use std::net::IpAddr;

use common::*;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use svcplane_testenv::{Options, TestEnv};

/// What must be equal between the two: everything but the numbers.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    ok: bool,
    cluster_ips: Vec<String>,
    families: Vec<String>,
    policy: Option<String>,
    node_ports: Vec<String>,
    health_check: bool,
}

fn shape(result: &Result<Service, kube::Error>, cidrs: &[IpNet]) -> Shape {
    let Ok(svc) = result else {
        return Shape {
            ok: false,
            cluster_ips: vec![],
            families: vec![],
            policy: None,
            node_ports: vec![],
            health_check: false,
        };
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let cluster_ips = spec
        .cluster_ips
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|ip| match ip.parse::<IpAddr>() {
            Ok(ip) if cidrs.iter().any(|c| c.contains(&ip)) => {
                format!("{} in range", if ip.is_ipv6() { "IPv6" } else { "IPv4" })
            }
            Ok(ip) => format!("{ip} OUT OF RANGE"),
            Err(_) => ip.clone(),
        })
        .collect();
    let ports: Vec<i32> = spec
        .ports
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|p| p.node_port.unwrap_or(0))
        .collect();
    // Node ports as a sharing pattern: 0, or the index of the first port with the same value.
    let node_ports = ports
        .iter()
        .map(|p| match p {
            0 => "none".to_owned(),
            p if !(30000..=32767).contains(p) => format!("{p} OUT OF RANGE"),
            p => format!(
                "like port {}",
                ports.iter().position(|q| q == p).unwrap_or(0)
            ),
        })
        .collect();
    let hc = spec.health_check_node_port.unwrap_or(0);
    Shape {
        ok: true,
        cluster_ips,
        families: spec.ip_families.clone().unwrap_or_default(),
        policy: spec.ip_family_policy.clone(),
        node_ports,
        health_check: hc != 0 && (30000..=32767).contains(&hc) && !ports.contains(&hc),
    }
}

/// Specs, with `{n}` standing for a number unique to the namespace (explicit requests must not
/// collide between the two runs).
fn specs(n: u16) -> Vec<(&'static str, Value)> {
    let np = |base: u16| i32::from(base + n);
    vec![
        ("plain", json!({"ports": [{"port": 80}]})),
        (
            "prefer",
            json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        ),
        (
            "require-v6",
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"], "ports": [{"port": 80}]}),
        ),
        (
            "v6-only",
            json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
        ),
        (
            "static-v4",
            json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": format!("10.96.7.{}", 10 + n), "clusterIPs": [format!("10.96.7.{}", 10 + n)], "ports": [{"port": 80}]}),
        ),
        (
            "headless",
            json!({"clusterIP": "None", "selector": {"app": "x"}, "ports": [{"port": 80}]}),
        ),
        (
            "headless-noselector",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        (
            "external",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        (
            "nodeport",
            json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}]}),
        ),
        (
            "dns",
            json!({"type": "NodePort", "ports": [{"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 53, "protocol": "TCP"}, {"name": "m", "port": 9153}]}),
        ),
        (
            "dns-explicit-later",
            json!({"type": "NodePort", "ports": [{"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 53, "protocol": "TCP", "nodePort": np(30010)}]}),
        ),
        (
            "dns-cip",
            json!({"ports": [{"name": "u", "port": 53, "protocol": "UDP"}, {"name": "t", "port": 53, "protocol": "TCP"}]}),
        ),
        (
            "lb",
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
        ),
        (
            "lb-local",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ),
        (
            "lb-noports",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": np(30020)}]}),
        ),
        (
            "lb-noports-local",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ),
        (
            "explicit-hc",
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": np(30030), "ports": [{"port": 80}]}),
        ),
        // Refused by both.
        (
            "bad-port",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]}),
        ),
        (
            "bad-ip",
            json!({"clusterIP": "10.200.0.1", "clusterIPs": ["10.200.0.1"], "ports": [{"port": 80}]}),
        ),
        (
            "single-two-ips",
            json!({"ipFamilyPolicy": "SingleStack", "clusterIPs": ["10.96.8.1", "fd00:10:96::8:1"], "clusterIP": "10.96.8.1", "ports": [{"port": 80}]}),
        ),
        (
            "taken-ip",
            json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ports": [{"port": 80}]}),
        ),
    ]
}

async fn run_changes(api: &Api<Service>, cidrs: &[IpNet]) -> Vec<(String, Shape)> {
    let mut out = Vec::new();
    let mut record = |step: &str, sh: Shape| out.push((step.to_owned(), sh));
    // A yes/no fact about a step, compared like a shape.
    let flag = |yes: bool| Shape {
        ok: yes,
        cluster_ips: vec![],
        families: vec![],
        policy: None,
        node_ports: vec![],
        health_check: false,
    };
    let pp = PatchParams::default();
    // ClusterIP -> NodePort (upstream shares nothing on update) -> ClusterIP.
    let r = api.patch("plain", &pp, &Patch::Merge(json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "name": "u"}]}}))).await;
    record("plain to NodePort", shape(&r, cidrs));
    let r = api
        .patch(
            "dns-cip",
            &pp,
            &Patch::Merge(json!({"spec": {"type": "NodePort"}})),
        )
        .await;
    record("dns-cip to NodePort", shape(&r, cidrs));
    let r = api.patch("dns", &pp, &Patch::Merge(json!({"spec": {"type": "ClusterIP", "ports": [{"name": "u", "port": 53, "protocol": "UDP", "nodePort": null}, {"name": "t", "port": 53, "protocol": "TCP", "nodePort": null}, {"name": "m", "port": 9153, "nodePort": null}]}}))).await;
    record("dns to ClusterIP", shape(&r, cidrs));
    // LoadBalancer Cluster -> Local adds the health check port; PUT of a bare manifest keeps all.
    let r = api
        .patch(
            "lb",
            &pp,
            &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
        )
        .await;
    record("lb to Local", shape(&r, cidrs));
    if let Ok(current) = &r {
        let mut bare: Service = serde_json::from_value(json!({"metadata": {"name": "lb", "namespace": current.metadata.namespace}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}})).expect("svc");
        bare.metadata.resource_version = current.metadata.resource_version.clone();
        let put = api.replace("lb", &PostParams::default(), &bare).await;
        let same = matches!(&put, Ok(p) if p.spec.as_ref().map(|s| (&s.cluster_ips, s.ports.as_ref().map(|p| p[0].node_port), s.health_check_node_port))
            == current.spec.as_ref().map(|s| (&s.cluster_ips, s.ports.as_ref().map(|p| p[0].node_port), s.health_check_node_port)));
        record("lb bare PUT", shape(&put, cidrs));
        record("lb bare PUT keeps every value", flag(same));
    }
    // LoadBalancer node ports turned off by a PUT that leaves them out: released.
    if let Ok(current) = api.get("lb-local").await {
        let mut bare: Service = serde_json::from_value(json!({"metadata": {"name": "lb-local", "namespace": current.metadata.namespace},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}})).expect("svc");
        bare.metadata.resource_version = current.metadata.resource_version.clone();
        let put = api.replace("lb-local", &PostParams::default(), &bare).await;
        record(
            "lb-local PUT without node ports, allocation off",
            shape(&put, cidrs),
        );
    }
    // Dual-stack PUT naming only clusterIP keeps both families.
    if let Ok(current) = api.get("prefer").await {
        let first = current.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        let mut bare: Service = serde_json::from_value(json!({"metadata": {"name": "prefer", "namespace": current.metadata.namespace},
            "spec": {"ipFamilyPolicy": "PreferDualStack", "clusterIP": first, "ports": [{"port": 80}]}})).expect("svc");
        bare.metadata.resource_version = current.metadata.resource_version.clone();
        let put = api.replace("prefer", &PostParams::default(), &bare).await;
        record("prefer PUT with clusterIP only", shape(&put, cidrs));
    }
    // Single to dual and back.
    let r = api
        .patch(
            "v6-only",
            &pp,
            &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}})),
        )
        .await;
    record("v6-only to PreferDualStack", shape(&r, cidrs));
    if let Ok(s) = &r {
        let first = s
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .take(1)
            .collect::<Vec<_>>();
        let r = api.patch("v6-only", &pp, &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"], "clusterIPs": first}}))).await;
        record("back to SingleStack", shape(&r, cidrs));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_specs_with_and_without_the_webhook() {
    let options = Options::dual_stack();
    let cidrs = options.service_cidrs.clone();
    let s = setup(
        TestEnv::start_with(options).await.expect("control plane"),
        &[],
        "Fail",
    )
    .await;
    let c = &s.client;
    namespace(c, "hooked", false).await;
    namespace(c, "upstream", true).await;
    let before = metric_sum(
        &s.allocator.metrics().await,
        "svcplane_allocator_webhook_requests_total",
        &[],
    );
    let mut mismatches = Vec::new();
    for ((name, ours), (_, theirs)) in specs(0).into_iter().zip(specs(1)) {
        let a = create(c, &service("hooked", name, ours)).await;
        let b = create(c, &service("upstream", name, theirs)).await;
        let (sa, sb) = (shape(&a, &cidrs), shape(&b, &cidrs));
        if sa != sb {
            mismatches.push(format!(
                "{name}:\n  webhook:  {sa:?} {:?}\n  upstream: {sb:?} {:?}",
                a.as_ref().err(),
                b.as_ref().err()
            ));
        }
    }
    let ours = run_changes(&Api::namespaced(c.clone(), "hooked"), &cidrs).await;
    let theirs = run_changes(&Api::namespaced(c.clone(), "upstream"), &cidrs).await;
    assert_eq!(ours.len(), theirs.len());
    for ((step, a), (_, b)) in ours.iter().zip(&theirs) {
        if a != b {
            mismatches.push(format!("{step}:\n  webhook:  {a:?}\n  upstream: {b:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "differences from the API server's own allocation:\n{}",
        mismatches.join("\n")
    );
    // The hooked namespace really went through the webhook, the other never did.
    let body = s.allocator.metrics().await;
    let after = metric_sum(&body, "svcplane_allocator_webhook_requests_total", &[]);
    assert!(after - before >= 20.0, "{before} -> {after}");
    assert!(
        metric_sum(
            &body,
            "svcplane_allocator_webhook_requests_total",
            &[("result", "patched")]
        ) >= 10.0
    );
}
