//! The webhook in front of a real kube-apiserver: every rule of docs/allocator.md as Services
//! created through the API and read back as the API server stored them.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::{Options, TestEnv};

fn denied(result: Result<Service, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

async fn allocations(s: &Setup) -> f64 {
    metric_sum(
        &s.allocator.metrics().await,
        "svcplane_allocator_allocations_total",
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_node_ports_and_denials() {
    let s = setup(TestEnv::start().await.expect("control plane"), &[], "Fail").await;
    let c = &s.client;
    namespace(c, "app", false).await;

    // ClusterIP: decided by the webhook (its counter moves), in the dynamic band.
    let before = allocations(&s).await;
    let web = create(c, &service("app", "web", json!({"ports": [{"port": 80}]})))
        .await
        .expect("web");
    assert_eq!(allocations(&s).await, before + 1.0);
    let ip: IpAddr = ips(&web)[0].parse().expect("ip");
    let IpAddr::V4(v4) = ip else { panic!("{ip}") };
    assert!(
        u32::from(v4) > u32::from(std::net::Ipv4Addr::new(10, 96, 1, 0)),
        "dynamic band: {ip}"
    );

    // NodePort: TCP and UDP 53 share one node port; another port gets its own.
    let dns = create(c, &service("app", "dns", json!({"type": "NodePort", "ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153}]}))).await.expect("dns");
    let np = node_ports(&dns);
    assert!(
        np[0] >= 30086 && np[0] == np[1] && np[2] != np[0] && np[2] >= 30086,
        "{np:?}"
    );

    // LoadBalancer with externalTrafficPolicy Local: node ports and a health check port.
    let lb = create(c, &service("app", "lb", json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}))).await.expect("lb");
    assert!(
        node_ports(&lb)[0] != 0
            && health_check_port(&lb) != 0
            && health_check_port(&lb) != node_ports(&lb)[0]
    );
    // allocateLoadBalancerNodePorts false: none, but an explicit one is honoured.
    let nolb = create(
        c,
        &service(
            "app",
            "nolb",
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
        "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}),
        ),
    )
    .await
    .expect("nolb");
    assert_eq!(node_ports(&nolb), vec![0, 30081]);

    // Headless and ExternalName are left alone.
    let before = allocations(&s).await;
    let headless = create(
        c,
        &service(
            "app",
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("headless");
    assert_eq!(ips(&headless), vec!["None"]);
    let ext = create(
        c,
        &service(
            "app",
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
    )
    .await
    .expect("ext");
    assert!(ips(&ext).is_empty());
    assert_eq!(allocations(&s).await, before);

    // Requests for taken or out-of-range values are denied naming the owner and the range;
    // nothing is left behind.
    let msg = denied(
        create(
            c,
            &service(
                "app",
                "dup-ip",
                json!({"clusterIP": ips(&web)[0], "clusterIPs": [ips(&web)[0]]}),
            ),
        )
        .await,
    );
    assert!(
        msg.contains("svcplane-allocator")
            && msg.contains("app/web")
            && msg.contains("10.96.0.0/16 has"),
        "{msg}"
    );
    let msg = denied(
        create(
            c,
            &service(
                "app",
                "out-ip",
                json!({"clusterIP": "10.200.0.1", "clusterIPs": ["10.200.0.1"]}),
            ),
        )
        .await,
    );
    assert!(
        msg.contains("not in any ServiceCIDR") && msg.contains("10.96.0.0/16"),
        "{msg}"
    );
    let msg = denied(
        create(
            c,
            &service(
                "app",
                "dup-port",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": np[2]}]}),
            ),
        )
        .await,
    );
    assert!(
        msg.contains("app/dns") && msg.contains("30000-32767"),
        "{msg}"
    );
    let msg = denied(
        create(
            c,
            &service(
                "app",
                "low-port",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 20000}]}),
            ),
        )
        .await,
    );
    assert!(
        msg.contains("spec.ports[0].nodePort: 20000 is not in the valid range"),
        "{msg}"
    );
    for name in ["dup-ip", "out-ip", "dup-port", "low-port"] {
        assert!(get(c, "app", name).await.is_none(), "{name} half-made");
    }
    // A free explicit request goes through.
    let fixed = create(c, &service("app", "fixed", json!({"clusterIP": "10.96.0.77", "clusterIPs": ["10.96.0.77"], "type": "NodePort", "ports": [{"port": 80, "nodePort": 30077}]}))).await.expect("fixed");
    assert_eq!(
        (ips(&fixed), node_ports(&fixed)),
        (vec!["10.96.0.77".to_owned()], vec![30077])
    );

    // A PUT of the original manifest (no allocated fields) keeps every value.
    let api = Api::<Service>::namespaced(c.clone(), "app");
    let mut put = service(
        "app",
        "lb",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    put.metadata.resource_version = lb.metadata.resource_version.clone();
    let replaced = api
        .replace("lb", &PostParams::default(), &put)
        .await
        .expect("replace");
    assert_eq!(
        (
            ips(&replaced),
            node_ports(&replaced),
            health_check_port(&replaced)
        ),
        (ips(&lb), node_ports(&lb), health_check_port(&lb))
    );

    // Type changes: ClusterIP -> NodePort adds node ports; back releases them (reusable).
    let patch = |ty: &str| json!({"spec": {"type": ty}});
    let np_web = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(patch("NodePort")),
        )
        .await
        .expect("to NodePort");
    let port = node_ports(&np_web)[0];
    assert!(port >= 30086, "{port}");
    assert_eq!(ips(&np_web), ips(&web), "ClusterIP kept");
    let back = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "nodePort": null}]}}),
            ),
        )
        .await
        .expect("to ClusterIP");
    assert_eq!(node_ports(&back), vec![0]);
    eventually(
        Duration::from_secs(10),
        "released port reusable",
        || async {
            let svc = service(
                "app",
                "reuse",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            );
            match create(c, &svc).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;

    // Dry-run allocates nothing that sticks.
    let (ip_res, _) = reservations(&s).await;
    let _ = api
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &service("app", "dry", json!({"ports": [{"port": 80}]})),
        )
        .await
        .expect("dry run");
    assert_eq!(reservations(&s).await.0, ip_res);

    // The metrics docs/allocator.md lists are exported.
    let body = s.allocator.metrics().await;
    for name in [
        "svcplane_allocator_webhook_requests_total",
        "svcplane_allocator_webhook_duration_seconds_bucket",
        "svcplane_allocator_allocations_total",
        "svcplane_allocator_denials_total",
        "svcplane_allocator_leader",
    ] {
        assert!(body.contains(name), "{name} missing");
    }
    assert_eq!(
        metric_sum(
            &body,
            "svcplane_allocator_denials_total",
            &[("reason", "ip_taken")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &body,
            "svcplane_allocator_denials_total",
            &[("reason", "port_out_of_range")]
        ),
        1.0
    );
}

async fn reservations(s: &Setup) -> (f64, f64) {
    let body = s.allocator.metrics().await;
    (
        metric_sum(
            &body,
            "svcplane_allocator_reservations",
            &[("kind", "cluster_ip")],
        ),
        metric_sum(
            &body,
            "svcplane_allocator_reservations",
            &[("kind", "node_port")],
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_families() {
    let s = setup(
        TestEnv::start_with(Options::dual_stack())
            .await
            .expect("control plane"),
        &[],
        "Fail",
    )
    .await;
    let c = &s.client;
    namespace(c, "ds", false).await;
    let fam = |svc: &Service| {
        ips(svc)
            .iter()
            .map(|ip| ip.parse::<IpAddr>().expect("ip").is_ipv6())
            .collect::<Vec<_>>()
    };
    let single = create(
        c,
        &service("ds", "single", json!({"ports": [{"port": 80}]})),
    )
    .await
    .expect("single");
    assert_eq!(fam(&single), vec![false]);
    let prefer = create(
        c,
        &service(
            "ds",
            "prefer",
            json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("prefer");
    assert_eq!(fam(&prefer), vec![false, true]);
    let v6first = create(c, &service("ds", "v6", json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"], "ports": [{"port": 80}]}))).await.expect("v6");
    assert_eq!(fam(&v6first), vec![true, false]);
    assert_eq!(
        v6first.spec.as_ref().and_then(|s| s.ip_families.clone()),
        Some(vec!["IPv6".to_owned(), "IPv4".to_owned()])
    );
    // Static v4 plus a dynamic v6.
    let partial = create(c, &service("ds", "partial", json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "10.96.3.3", "clusterIPs": ["10.96.3.3"], "ports": [{"port": 80}]}))).await.expect("partial");
    assert_eq!(ips(&partial)[0], "10.96.3.3");
    assert_eq!(fam(&partial), vec![false, true]);
    // Dual to single (SingleStack) releases the secondary.
    let api = Api::<Service>::namespaced(c.clone(), "ds");
    let down = api
        .patch("prefer", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"], "clusterIPs": [ips(&prefer)[0]]}})))
        .await
        .expect("downgrade");
    assert_eq!(ips(&down), vec![ips(&prefer)[0].clone()]);
    let body = s.allocator.metrics().await;
    assert!(
        metric_sum(
            &body,
            "svcplane_allocator_allocations_total",
            &[("kind", "cluster_ip"), ("how", "dynamic")]
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_allocation_survives_delete_and_restart() {
    let mut s = setup(TestEnv::start().await.expect("control plane"), &[], "Fail").await;
    let c = s.client.clone();
    namespace(&c, "st", false).await;
    let spec = json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}]});
    let first = create(&c, &service("st", "web", spec.clone()))
        .await
        .expect("web");
    delete(&c, "st", "web").await;
    // Past the 3 s a released node port stays held for its owner: what brings the values back
    // now is the sticky memory alone.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = create(&c, &service("st", "web", spec.clone()))
        .await
        .expect("web again");
    assert_eq!(
        (ips(&again), node_ports(&again)),
        (ips(&first), node_ports(&first))
    );
    let body = s.allocator.metrics().await;
    assert!(
        metric_sum(
            &body,
            "svcplane_allocator_allocations_total",
            &[("how", "sticky")]
        ) >= 2.0,
        "{body}"
    );

    let other = create(
        &c,
        &service(
            "st",
            "other",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("other");
    // Delete, let the leader write its memory, restart the allocator: still sticky.
    delete(&c, "st", "web").await;
    eventually(Duration::from_secs(20), "sticky memory saved", || async {
        let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(c.clone(), "default")
            .get_opt("svcplane-allocator-sticky")
            .await
            .map_err(|e| e.to_string())?;
        let doc = cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("services.json").cloned())
            .unwrap_or_default();
        if doc.contains("\"web\"") {
            Ok(())
        } else {
            Err(doc)
        }
    })
    .await;
    let webhook = s.allocator.webhook;
    drop(std::mem::replace(
        &mut s.allocator,
        start(
            s.env.kubeconfig_path(),
            &s.certs,
            webhook,
            "allocator-1",
            &["--load-balancer-ipam=false".to_owned()],
        ),
    ));
    s.allocator.wait_ready().await;
    wait_webhook_used(&c, &s.allocator, "probe").await;
    // The restarted allocator rebuilt what is taken from the API server: the node port of a
    // Service made before the restart is refused with its owner named.
    let msg = denied(create(&c, &service("st", "clash", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": node_ports(&other)[0]}]}))).await);
    assert!(
        msg.contains("svcplane-allocator") && msg.contains("st/other"),
        "{msg}"
    );
    let third = create(&c, &service("st", "web", spec))
        .await
        .expect("web third");
    assert_eq!(
        (ips(&third), node_ports(&third)),
        (ips(&first), node_ports(&first))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_chooses_service_cidr_and_node_port_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "rules:\n- name: team\n  namespaces: [team]\n  serviceCIDRs: [team]\n  nodePortRange: 31000-31002\n").expect("write");
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let cidr: ServiceCIDR = serde_json::from_value(
        json!({"metadata": {"name": "team"}, "spec": {"cidrs": ["10.97.0.0/24"]}}),
    )
    .expect("cidr");
    Api::<ServiceCIDR>::all(client.clone())
        .create(&PostParams::default(), &cidr)
        .await
        .expect("ServiceCIDR");
    let s = setup(
        env,
        &[format!("--policy-file={}", policy.display())],
        "Fail",
    )
    .await;
    let c = &s.client;
    namespace(c, "team", false).await;
    namespace(c, "other", false).await;
    let mut ports = Vec::new();
    for i in 0..3 {
        let svc = create(
            c,
            &service(
                "team",
                &format!("s{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("team service");
        assert!(ips(&svc)[0].starts_with("10.97.0."), "{:?}", ips(&svc));
        ports.push(node_ports(&svc)[0]);
    }
    ports.sort_unstable();
    assert_eq!(ports, vec![31000, 31001, 31002]);
    let msg = denied(
        create(
            c,
            &service(
                "team",
                "s3",
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            ),
        )
        .await,
    );
    assert!(
        msg.contains("no free NodePort in 31000-31002 of policy rule team"),
        "{msg}"
    );
    let other = create(
        c,
        &service(
            "other",
            "s",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("other");
    assert!(ips(&other)[0].starts_with("10.96."), "{:?}", ips(&other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reports_a_cluster_ip_left_outside_every_service_cidr() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let extra: ServiceCIDR = serde_json::from_value(
        json!({"metadata": {"name": "extra"}, "spec": {"cidrs": ["10.97.0.0/24"]}}),
    )
    .expect("cidr");
    cidrs
        .create(&PostParams::default(), &extra)
        .await
        .expect("ServiceCIDR");
    let flags = [
        "--audit-period=2s".to_owned(),
        "--audit-grace=1s".to_owned(),
    ];
    let s = setup(env, &flags, "Fail").await;
    let c = &s.client;
    namespace(c, "aud", false).await;
    create(
        c,
        &service(
            "aud",
            "web",
            json!({"clusterIP": "10.97.0.5", "clusterIPs": ["10.97.0.5"], "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("web");
    // Nothing to report while the range exists.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = s.allocator.metrics().await;
    assert_eq!(
        metric_sum(
            &body,
            "svcplane_allocator_audit_findings",
            &[("finding", "cluster_ip_out_of_range")]
        ),
        0.0
    );
    // Without kube-controller-manager no finalizer holds the ServiceCIDR: it goes at once and
    // leaves the Service's ClusterIP outside every range.
    cidrs
        .delete("extra", &Default::default())
        .await
        .expect("delete ServiceCIDR");
    eventually(Duration::from_secs(30), "finding counted", || async {
        let body = s.allocator.metrics().await;
        match metric_sum(
            &body,
            "svcplane_allocator_audit_findings",
            &[("finding", "cluster_ip_out_of_range")],
        ) {
            1.0 => Ok(()),
            n => Err(format!("{n}")),
        }
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "aud");
    eventually(
        Duration::from_secs(30),
        "Warning Event on the Service",
        || async {
            let list = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let found = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("ClusterIPOutOfRange")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                    && e.note.as_deref().is_some_and(|n| n.contains("10.97.0.5"))
            });
            if found {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
}

/// `svcplane_runtime::Events` against the real API: a repeated message joins its series, a new
/// message for the same object and reason is a new Event (kube's recorder alone would fold it
/// into the first one and lose it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_keep_every_distinct_message() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    namespace(&client, "ev", false).await;
    let events = svcplane_runtime::Events::new(client.clone(), "svcplane-test", "test-0".into());
    let about = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some("ev".into()),
        name: Some("web".into()),
        ..Default::default()
    };
    events
        .warn(&about, "AllocationFailed", "pool a is full".into())
        .await;
    events
        .warn(&about, "AllocationFailed", "pool a is full".into())
        .await;
    events
        .warn(
            &about,
            "AllocationFailed",
            "requested IP 192.0.2.7 is in no pool".into(),
        )
        .await;
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "ev");
    let list = api.list(&Default::default()).await.expect("events");
    let mut seen: Vec<(String, i32)> = list
        .items
        .iter()
        .map(|e| {
            (
                e.note.clone().unwrap_or_default(),
                e.series.as_ref().map_or(1, |s| s.count),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("pool a is full".to_owned(), 2),
            ("requested IP 192.0.2.7 is in no pool".to_owned(), 1)
        ]
    );
}
