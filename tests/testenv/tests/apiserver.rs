//! The foundation's promises, checked against a real etcd + kube-apiserver.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{self as core, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use svcplane_model as model;
use svcplane_testenv::kubelet::{self, PodBuilder};
use svcplane_testenv::{Options, TestEnv};

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

fn service(ns: &str, name: &str, type_: &str, ports: Vec<core::ServicePort>) -> core::Service {
    core::Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
            ..Default::default()
        },
        spec: Some(core::ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

fn port(name: &str, protocol: &str, port: i32, target: IntOrString) -> core::ServicePort {
    core::ServicePort {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        port,
        target_port: Some(target),
        ..Default::default()
    }
}

#[tokio::test]
async fn cluster_ip_service_gets_an_address_and_converts() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let api: Api<core::Service> = Api::namespaced(client, "default");
    let raw = service(
        "default",
        "web",
        "ClusterIP",
        vec![
            port("http", "TCP", 80, IntOrString::String("web".into())),
            port("dns", "UDP", 53, IntOrString::Int(5353)),
        ],
    );
    api.create(&PostParams::default(), &raw)
        .await
        .expect("create");
    let stored = api.get("web").await.expect("read back");

    let svc = model::Service::try_from(&stored).expect("converts");
    let ip = match &svc.cluster_ips {
        model::ClusterIps::Ips(ips) if ips.len() == 1 => ips[0],
        other => panic!("expected one cluster IP, got {other:?}"),
    };
    assert!(
        net("10.96.0.0/16").contains(&ip),
        "{ip} outside 10.96.0.0/16"
    );
    let expected = model::Service {
        key: model::ObjectKey::new("default", "web"),
        uid: stored.metadata.uid.as_deref().map(Into::into),
        labels: [("team", "shop")].into_iter().collect(),
        type_: model::ServiceType::ClusterIp,
        cluster_ips: model::ClusterIps::Ips(vec![ip]),
        ip_families: vec![model::IpFamily::V4],
        ip_family_policy: Some(model::IpFamilyPolicy::SingleStack),
        ports: vec![
            model::ServicePort {
                name: "http".into(),
                protocol: model::Protocol::Tcp,
                port: 80,
                target_port: model::TargetPort::Name("web".into()),
                node_port: None,
                app_protocol: None,
            },
            model::ServicePort {
                name: "dns".into(),
                protocol: model::Protocol::Udp,
                port: 53,
                target_port: model::TargetPort::Number(5353),
                node_port: None,
                app_protocol: None,
            },
        ],
        selector: model::Selector::new([("app", "web")].into_iter().collect()),
        external_name: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity: model::SessionAffinity::None,
        external_traffic_policy: model::TrafficPolicy::Cluster,
        internal_traffic_policy: model::TrafficPolicy::Cluster,
        health_check_node_port: None,
        publish_not_ready_addresses: false,
        traffic_distribution: None,
        topology_mode: None,
        created: stored.metadata.creation_timestamp.as_ref().map(|t| t.0),
        deleting: false,
    };
    assert!(expected.uid.is_some(), "the API server assigns a uid");
    assert_eq!(svc, expected);
}

#[tokio::test]
async fn node_port_service_gets_a_node_port_and_converts() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let api: Api<core::Service> = Api::namespaced(client, "default");
    let mut raw = service(
        "default",
        "edge",
        "NodePort",
        vec![
            port("http", "TCP", 80, IntOrString::Int(8080)),
            port("https", "TCP", 443, IntOrString::String("tls".into())),
        ],
    );
    let spec = raw.spec.as_mut().expect("spec");
    spec.session_affinity = Some("ClientIP".into());
    spec.external_traffic_policy = Some("Local".into());
    spec.publish_not_ready_addresses = Some(true);
    spec.external_ips = Some(vec!["192.0.2.10".into()]);
    raw.metadata.annotations = Some(BTreeMap::from([(
        model::ANNOTATION_TOPOLOGY_MODE.into(),
        "Auto".into(),
    )]));
    api.create(&PostParams::default(), &raw)
        .await
        .expect("create");
    let stored = api.get("edge").await.expect("read back");

    let svc = model::Service::try_from(&stored).expect("converts");
    let node_ports: Vec<u16> = svc.ports.iter().filter_map(|p| p.node_port).collect();
    assert_eq!(node_ports.len(), 2, "every port gets a nodePort: {svc:?}");
    for np in &node_ports {
        assert!(
            (30000..=32767).contains(np),
            "nodePort {np} outside 30000-32767"
        );
    }
    assert_ne!(node_ports[0], node_ports[1]);
    let ip = svc.cluster_ips()[0];
    assert!(net("10.96.0.0/16").contains(&ip));
    let expected = model::Service {
        key: model::ObjectKey::new("default", "edge"),
        uid: stored.metadata.uid.as_deref().map(Into::into),
        labels: [("team", "shop")].into_iter().collect(),
        type_: model::ServiceType::NodePort,
        cluster_ips: model::ClusterIps::Ips(vec![ip]),
        ip_families: vec![model::IpFamily::V4],
        ip_family_policy: Some(model::IpFamilyPolicy::SingleStack),
        ports: vec![
            model::ServicePort {
                name: "http".into(),
                protocol: model::Protocol::Tcp,
                port: 80,
                target_port: model::TargetPort::Number(8080),
                node_port: Some(node_ports[0]),
                app_protocol: None,
            },
            model::ServicePort {
                name: "https".into(),
                protocol: model::Protocol::Tcp,
                port: 443,
                target_port: model::TargetPort::Name("tls".into()),
                node_port: Some(node_ports[1]),
                app_protocol: None,
            },
        ],
        selector: model::Selector::new([("app", "edge")].into_iter().collect()),
        external_name: None,
        external_ips: vec!["192.0.2.10".parse().expect("ip")],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        // The API server fills in the default affinity timeout.
        session_affinity: model::SessionAffinity::ClientIp {
            timeout_seconds: 10_800,
        },
        external_traffic_policy: model::TrafficPolicy::Local,
        internal_traffic_policy: model::TrafficPolicy::Cluster,
        health_check_node_port: None,
        publish_not_ready_addresses: true,
        traffic_distribution: None,
        topology_mode: Some("Auto".into()),
        created: stored.metadata.creation_timestamp.as_ref().map(|t| t.0),
        deleting: false,
    };
    assert_eq!(svc, expected);
    assert!(svc.wants_topology_hints());
}

#[tokio::test]
async fn nodes_and_pods_take_the_kubelets_part() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    kubelet::create_namespace(&client, "shop")
        .await
        .expect("namespace");

    let node_ip: IpAddr = "192.0.2.21".parse().expect("ip");
    let raw_node = kubelet::create_node(&client, "node-a", Some("zone-1"), node_ip)
        .await
        .expect("node");
    let node = model::Node::try_from(&raw_node).expect("node converts");
    assert_eq!(
        node,
        model::Node {
            name: "node-a".into(),
            zone: Some("zone-1".into()),
            addresses: vec![node_ip],
            allocatable_cpu_millis: Some(4000),
            ready: true,
            control_plane: false,
            pod_cidrs: Vec::new(),
        }
    );

    PodBuilder::new("shop", "web-0")
        .label("app", "web")
        .node("node-a")
        .port("http", 8080, "TCP")
        .hostname("web-0", "web")
        .create(&client)
        .await
        .expect("pod");
    let pod_ip: IpAddr = "10.244.1.5".parse().expect("ip");
    kubelet::set_pod_running(&client, "shop", "web-0", &[pod_ip], true)
        .await
        .expect("status");

    let pods: Api<core::Pod> = Api::namespaced(client.clone(), "shop");
    let stored = pods.get("web-0").await.expect("read back");
    let pod = model::Pod::try_from(&stored).expect("pod converts");
    assert_eq!(
        pod,
        model::Pod {
            key: model::ObjectKey::new("shop", "web-0"),
            uid: stored.metadata.uid.as_deref().map(Into::into),
            // The PodTopologyLabels admission plugin copies the node's zone onto bound pods.
            labels: [("app", "web"), ("topology.kubernetes.io/zone", "zone-1")]
                .into_iter()
                .collect(),
            ips: vec![pod_ip],
            phase: model::PodPhase::Running,
            ready: true,
            ready_since: stored
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            terminating: false,
            hostname: Some("web-0".into()),
            subdomain: Some("web".into()),
            node_name: Some("node-a".into()),
            named_ports: vec![model::NamedPort {
                name: "http".into(),
                protocol: model::Protocol::Tcp,
                port: 8080,
            }],
        }
    );

    // Readiness flips through the status subresource.
    kubelet::set_pod_running(&client, "shop", "web-0", &[pod_ip], false)
        .await
        .expect("unready");
    let pod = model::Pod::try_from(&pods.get("web-0").await.expect("get")).expect("converts");
    assert!(!pod.ready);

    // Graceful deletion leaves the pod terminating until the "kubelet" confirms it.
    kubelet::mark_pod_terminating(&client, "shop", "web-0")
        .await
        .expect("terminating");
    let pod =
        model::Pod::try_from(&pods.get("web-0").await.expect("still there")).expect("converts");
    assert!(pod.terminating);
    kubelet::delete_pod(&client, "shop", "web-0")
        .await
        .expect("delete");
    assert!(pods.get_opt("web-0").await.expect("get").is_none());
}

#[tokio::test]
async fn two_control_planes_run_side_by_side() {
    let (a, b) = tokio::join!(TestEnv::start(), TestEnv::start());
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_ne!(a.server_url(), b.server_url());
    assert_ne!(a.etcd_url(), b.etcd_url());
    let (ca, cb) = (a.client().await.expect("a"), b.client().await.expect("b"));
    kubelet::create_namespace(&ca, "only-in-a")
        .await
        .expect("ns in a");
    kubelet::create_namespace(&cb, "only-in-b")
        .await
        .expect("ns in b");
    let names = |list: Vec<Namespace>| -> Vec<String> {
        list.into_iter().filter_map(|n| n.metadata.name).collect()
    };
    let in_a = names(
        Api::<Namespace>::all(ca)
            .list(&ListParams::default())
            .await
            .expect("list a")
            .items,
    );
    let in_b = names(
        Api::<Namespace>::all(cb)
            .list(&ListParams::default())
            .await
            .expect("list b")
            .items,
    );
    assert!(
        in_a.contains(&"only-in-a".to_owned()) && !in_a.contains(&"only-in-b".to_owned()),
        "{in_a:?}"
    );
    assert!(
        in_b.contains(&"only-in-b".to_owned()) && !in_b.contains(&"only-in-a".to_owned()),
        "{in_b:?}"
    );
}

#[tokio::test]
async fn dual_stack_services_get_one_address_per_family() {
    let env = TestEnv::start_with(Options::dual_stack())
        .await
        .expect("control plane");
    let api: Api<core::Service> = Api::namespaced(env.client().await.expect("client"), "default");
    let mut raw = service(
        "default",
        "both",
        "ClusterIP",
        vec![port("http", "TCP", 80, IntOrString::Int(80))],
    );
    raw.spec.as_mut().expect("spec").ip_family_policy = Some("RequireDualStack".into());
    api.create(&PostParams::default(), &raw)
        .await
        .expect("create");
    let svc = model::Service::try_from(&api.get("both").await.expect("get")).expect("converts");
    assert_eq!(
        svc.ip_families,
        vec![model::IpFamily::V4, model::IpFamily::V6]
    );
    assert_eq!(
        svc.ip_family_policy,
        Some(model::IpFamilyPolicy::RequireDualStack)
    );
    let ips = svc.cluster_ips();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(net("10.96.0.0/16").contains(&ips[0]), "{}", ips[0]);
    assert!(net("fd00:10:96::/112").contains(&ips[1]), "{}", ips[1]);
}

#[tokio::test]
async fn rbac_governs_service_account_tokens() {
    let env = TestEnv::start().await.expect("control plane");
    let admin = env.client().await.expect("client");
    kubelet::create_namespace(&admin, "apps")
        .await
        .expect("namespace");
    let token = kubelet::service_account_token(&admin, "apps", "reader")
        .await
        .expect("token");
    let reader = env.client_with_token(&token).await.expect("token client");
    let services: Api<core::Service> = Api::namespaced(reader, "apps");

    let denied = services
        .list(&ListParams::default())
        .await
        .expect_err("no role yet");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "expected 403, got {denied:?}"
    );

    let role = Role {
        metadata: ObjectMeta {
            name: Some("read-services".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["services".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), "apps")
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "read-services".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some("apps".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, "apps")
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    // RBAC caches refresh from watches; allow a moment for the binding to take effect.
    let mut allowed = false;
    for _ in 0..50 {
        if services.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "the bound role grants list");
    let other_ns: Api<core::Service> = Api::namespaced(
        env.client_with_token(&token).await.expect("client"),
        "default",
    );
    assert!(
        other_ns.list(&ListParams::default()).await.is_err(),
        "the role is namespaced"
    );
}

#[tokio::test]
async fn a_failed_start_reports_and_keeps_the_logs() {
    let options = Options {
        extra_apiserver_args: vec!["--no-such-flag".into()],
        ..Options::default()
    };
    let err = TestEnv::start_with(options).await.expect_err("bad flag");
    let svcplane_testenv::Error::ExitedEarly {
        name, log, tail, ..
    } = &err
    else {
        panic!("expected ExitedEarly, got {err:?}");
    };
    assert_eq!(*name, "kube-apiserver");
    assert!(
        tail.contains("no-such-flag"),
        "the log tail explains: {tail}"
    );
    assert!(log.exists(), "the log is kept at {}", log.display());
    let dir = log.parent().expect("log dir");
    assert!(dir.join("etcd.log").exists());
    std::fs::remove_dir_all(dir).expect("clean up the kept directory");
}

#[tokio::test]
async fn runtime_client_flags_reach_the_api_through_the_rate_limiter() {
    let env = TestEnv::start().await.expect("control plane");
    let args = svcplane_runtime::ClientArgs {
        kubeconfig: Some(env.kubeconfig_path().to_owned()),
        kube_api_qps: 50.0,
        kube_api_burst: 5,
        kube_api_timeout: std::time::Duration::from_secs(30),
    };
    let client = args.client().await.expect("client from --kubeconfig");
    let namespaces: Api<Namespace> = Api::all(client);
    // More requests than the burst: the limiter makes them wait, never fail.
    for _ in 0..12 {
        let list = namespaces.list(&ListParams::default()).await.expect("list");
        assert!(
            list.items
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("default"))
        );
    }
    let missing = svcplane_runtime::ClientArgs {
        kubeconfig: Some(env.dir().join("no-such-kubeconfig")),
        ..args
    };
    let Err(err) = missing.client().await else {
        panic!("a missing kubeconfig is an error");
    };
    assert!(
        matches!(err, svcplane_runtime::Error::KubeconfigRead { .. }),
        "{err}"
    );
}
