//! svcplane-proxy against kube-proxy (nftables mode, built from the pinned Kubernetes module):
//! two identical test labs, each a node namespace with its proxy, fed by one kube-apiserver
//! holding the same Services and EndpointSlices; the same traffic from the same places must
//! have the same outcome on both nodes (which endpoints answer, with which client address,
//! rejected or dropped, sticky or not, what the health check port answers). Differences on
//! purpose are listed in docs/proxy.md; none is exercised here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::TestEnv;
use svcplane_testenv::netns::ApiRelay;

/// A proxy process in a lab's node namespace. Its stdin is kept open: kube-proxy (built with
/// the test lifeline) exits when it closes.
struct Node {
    name: &'static str,
    lab: Lab,
    child: Child,
    _stdin: Option<ChildStdin>,
    _relay: ApiRelay,
    /// Admin/metrics port inside the node namespace, and the metric of the last sync.
    metrics_port: u16,
    last_sync_metric: &'static str,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Unix time of the proxy's last successful sync, from its metrics.
    fn last_sync(&self) -> f64 {
        self.lab
            .node_http(self.metrics_port, "/metrics")
            .lines()
            .find(|l| l.starts_with(self.last_sync_metric))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

async fn start(env: &TestEnv, which: &'static str) -> Node {
    let lab = Lab::ready();
    let relay = lab.relay_api(env).await;
    let kubeconfig = env
        .write_kubeconfig_via(
            &format!("{which}.kubeconfig"),
            common::API_IN_NODE.parse().expect("addr"),
        )
        .expect("kubeconfig");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.ns("node")]);
    let (metrics_port, last_sync_metric) = match which {
        "svcplane" => {
            cmd.arg(env!("CARGO_BIN_EXE_svcplane-proxy")).args([
                "--hostname-override=node",
                "--cluster-cidr=10.244.0.0/16",
                "--admin-addr=127.0.0.1:10249",
                "--min-sync-period=100ms",
            ]);
            (10249, "svcplane_proxy_last_sync_timestamp_seconds")
        }
        _ => {
            let bins =
                tokio::task::spawn_blocking(svcplane_testenv::ensure_binaries_with_kube_proxy)
                    .await
                    .expect("join")
                    .expect("kube-proxy binary");
            cmd.arg(bins.kube_proxy()).args([
                "--proxy-mode=nftables",
                "--hostname-override=node",
                "--cluster-cidr=10.244.0.0/16",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
                // A test namespace: leave the machine's conntrack sysctls alone.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
            ]);
            (10249, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
        }
    };
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start proxy");
    let stdin = child.stdin.take();
    Node {
        name: which,
        lab,
        child,
        _stdin: stdin,
        _relay: relay,
        metrics_port,
        last_sync_metric,
    }
}

/// One probe: (from namespace, proto, address, port).
type Probe = (&'static str, &'static str, &'static str, u16);

/// What one probe saw, as a set of distinct answers (who answered and the client address
/// they saw, or `refused` / `timeout`). `sticky`: TCP, and only how many endpoints answered
/// (which one a client sticks to is random). `http`: a GET of `/`, its status, load-balancing
/// weight header and body byte for byte.
fn outcome(lab: &Lab, (from, proto, ip, port): Probe) -> BTreeSet<String> {
    match proto {
        "sticky" => {
            let answers = lab.ask_fresh(from, "tcp", ip, port, 16);
            let endpoints = answers.keys().filter(|a| a.starts_with("pod-")).count();
            let other: Vec<&String> = answers.keys().filter(|a| !a.starts_with("pod-")).collect();
            BTreeSet::from([format!("{endpoints} endpoint(s), other answers {other:?}")])
        }
        "http" => {
            let a = lab.http_from(from, &format!("http://{ip}:{port}/"));
            BTreeSet::from([format!(
                "{} weight {:?} body {:?}",
                a.status, a.weight, a.body
            )])
        }
        _ => {
            let count = if proto == "tcp" { 16 } else { 8 };
            lab.ask_fresh(from, proto, ip, port, count)
                .into_keys()
                .collect()
        }
    }
}

/// Waits until both proxies synced after now, then compares every probe, retrying for a
/// while to absorb watch lag; fails with the differences.
fn compare(step: &str, nodes: &[Node; 2], probes: &[Probe]) {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let synced = nodes.iter().all(|n| n.last_sync() + 1.0 >= since);
        if synced {
            let mut diffs = Vec::new();
            let mut seen = BTreeMap::new();
            for probe in probes {
                let a = outcome(&nodes[0].lab, *probe);
                let b = outcome(&nodes[1].lab, *probe);
                if a != b {
                    diffs.push(format!(
                        "{probe:?}: {} {a:?} vs {} {b:?}",
                        nodes[0].name, nodes[1].name
                    ));
                }
                seen.insert(format!("{probe:?}"), a);
            }
            if diffs.is_empty() {
                eprintln!("{step}: same outcomes: {seen:?}");
                return;
            }
            if Instant::now() >= deadline {
                for n in nodes {
                    let table = if n.name == "svcplane" {
                        "svcplane"
                    } else {
                        "kube-proxy"
                    };
                    let rules = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &n.lab.ns("node"),
                            "nft",
                            "list",
                            "table",
                            "ip",
                            table,
                        ])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    eprintln!("--- {} rules ---\n{rules}", n.name);
                    let flows = Command::new("ip")
                        .args(["netns", "exec", &n.lab.ns("node"), "conntrack", "-L"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    eprintln!("--- {} conntrack ---\n{flows}", n.name);
                }
                panic!("{step}: outcomes differ:\n{}", diffs.join("\n"));
            }
        } else {
            assert!(
                Instant::now() < deadline,
                "{step}: a proxy did not sync within 30 s"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn service(name: &str, ip: &str, type_: &str, node_port: Option<i32>, local: bool) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            cluster_ip: Some(ip.into()),
            external_traffic_policy: (type_ != "ClusterIP")
                .then(|| if local { "Local" } else { "Cluster" }.into()),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    node_port,
                    ..Default::default()
                },
                ServicePort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A slice for both ports: (address, node, ready).
fn slice(name: &str, service: &str, eps: &[(&str, &str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                service.to_owned(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, node, ready)| Endpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    node_name: Some((*node).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![
            EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
            EndpointPort {
                name: Some("dns".into()),
                port: Some(8080),
                protocol: Some("UDP".into()),
                app_protocol: None,
            },
        ]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svcplane_proxy_and_kube_proxy_treat_the_same_traffic_the_same() {
    common::require_namespaces();
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    common::register_node(&client).await;
    let nodes = [
        start(&env, "svcplane").await,
        start(&env, "kube-proxy").await,
    ];

    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "demo");
    let pp = PostParams::default();
    let mut sticky = service("sticky", "10.96.0.53", "ClusterIP", None, false);
    if let Some(spec) = sticky.spec.as_mut() {
        spec.session_affinity = Some("ClientIP".into());
    }
    for svc in [
        service("web", "10.96.0.50", "NodePort", Some(30080), false),
        service("local", "10.96.0.51", "NodePort", Some(30081), true),
        service("empty", "10.96.0.52", "ClusterIP", None, false),
        sticky,
        service("hairpin", "10.96.0.54", "ClusterIP", None, false),
    ] {
        services.create(&pp, &svc).await.expect("service");
    }
    // A LoadBalancer with externalTrafficPolicy Local: the API server allocates its
    // healthCheckNodePort, which both proxies serve on the node's address.
    let lb = services
        .create(
            &pp,
            &service("lb", "10.96.0.55", "LoadBalancer", None, true),
        )
        .await
        .expect("service");
    let health_port = lb
        .spec
        .and_then(|s| s.health_check_node_port)
        .and_then(|p| u16::try_from(p).ok())
        .expect("healthCheckNodePort");
    for (name, eps) in [
        (
            "sticky",
            &[("10.244.1.5", "node", true), ("10.244.2.5", "other", true)][..],
        ),
        ("hairpin", &[("10.244.1.5", "node", true)][..]),
        (
            "lb",
            &[("10.244.1.5", "node", true), ("10.244.2.5", "other", true)][..],
        ),
    ] {
        slices
            .create(&pp, &slice(&format!("{name}-1"), name, eps))
            .await
            .expect("slice");
    }
    slices
        .create(
            &pp,
            &slice(
                "web-1",
                "web",
                &[("10.244.1.5", "node", true), ("10.244.2.5", "other", true)],
            ),
        )
        .await
        .expect("slice");
    slices
        .create(
            &pp,
            &slice(
                "local-1",
                "local",
                &[("10.244.1.5", "node", true), ("10.244.2.5", "other", true)],
            ),
        )
        .await
        .expect("slice");
    let probes: &[Probe] = &[
        ("client", "sticky", "10.96.0.53", 80),
        ("pod-a", "tcp", "10.96.0.54", 80),
        ("ext", "http", "192.0.2.10", health_port),
        ("client", "tcp", "10.96.0.50", 80),
        ("client", "udp", "10.96.0.50", 53),
        ("client", "tcp", "10.96.0.50", 81),
        ("client", "tcp", "10.96.0.52", 80),
        ("client", "tcp", "10.96.0.99", 80),
        ("ext", "tcp", "192.0.2.10", 30080),
        ("ext", "tcp", "192.0.2.10", 30081),
        ("client", "tcp", "192.0.2.10", 30081),
        ("client", "tcp", "10.96.0.51", 80),
    ];
    compare("initial", &nodes, probes);

    // The local endpoint of `local` turns not ready (outside traffic to its NodePort is then
    // dropped on this node; pods still reach the remote one).
    // Not compared yet: an endpoint removed from `web`. Over 30 s kube-proxy kept sending new
    // flows to the removed endpoint while its listed rules no longer named it, and svcplane did
    // not; docs/proxy.md records this as open, to be understood before it is asserted either way.
    slices
        .patch(
            "local-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": false, "serving": false}, "nodeName": "node"},
                {"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "other"},
            ]})),
        )
        .await
        .expect("patch");
    // The local endpoint of the LoadBalancer goes too: its health check says 503.
    slices
        .patch(
            "lb-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "other"},
            ]})),
        )
        .await
        .expect("patch");
    compare("endpoints changed", &nodes, probes);

    // `web` goes.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    compare("service deleted", &nodes, probes);
}
