//! svcplane-proxy as it runs on a node: the binary in the node namespace of a test lab, fed by
//! the real kube-apiserver (reached through a unix-socket relay, no IP route out of the
//! namespace), and checked with real traffic from a pod namespace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::TestEnv;

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slice(name: &str, service: &str, ips: &[(&str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".to_owned(), service.to_owned()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_owned(),
                    "test".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            ips.iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    node_name: Some("node".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// Polls `probe` until `want` holds for what it returns, for at most 20 s.
fn poll<T: std::fmt::Debug>(what: &str, probe: impl Fn() -> T, want: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = probe();
        if want(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the client's view of the web Service until `want` holds.
fn eventually(lab: &Lab, what: &str, want: impl Fn(&BTreeMap<String, u32>) -> bool) {
    poll(what, || lab.ask("tcp", "10.96.0.50", 80, 20), want);
}

/// svcplane-proxy in the lab's node namespace, reaching the API server through the relay.
fn start_proxy(lab: &Lab, env: &TestEnv) -> Proxy {
    let kubeconfig = env
        .write_kubeconfig_via("proxy", common::API_IN_NODE.parse().expect("addr"))
        .expect("kubeconfig");
    Proxy(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("node"),
                env!("CARGO_BIN_EXE_svcplane-proxy"),
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--hostname-override=node",
                "--cluster-cidr=10.244.0.0/16",
                "--admin-addr=127.0.0.1:10249",
                "--min-sync-period=100ms",
                "--sync-period=1s",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start svcplane-proxy"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_programs_a_node_from_the_api_server() {
    common::require_namespaces();
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let lab = Lab::ready();
    common::register_node(&client).await;

    let _relay = lab.relay_api(&env).await;
    let _proxy = start_proxy(&lab, &env);

    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "demo");
    let pp = PostParams::default();
    services
        .create(&pp, &common::web_service())
        .await
        .expect("service");

    // No endpoints yet: rejected.
    eventually(&lab, "rejected while there are no endpoints", |s| {
        s.get("refused") == Some(&20)
    });
    // Two endpoints: both serve.
    slices
        .create(
            &pp,
            &slice(
                "web-1",
                "web",
                &[("10.244.1.5", true), ("10.244.2.5", true)],
            ),
        )
        .await
        .expect("slice");
    eventually(&lab, "both endpoints answer", |s| {
        s.contains_key("pod-a 10.244.3.5") && s.contains_key("pod-b 10.244.3.5")
    });
    // One turns not ready: only the other serves.
    slices
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node"},
                {"addresses": ["10.244.2.5"], "conditions": {"ready": false, "serving": false}, "nodeName": "node"},
            ]})),
        )
        .await
        .expect("patch slice");
    eventually(&lab, "only the ready endpoint answers", |s| {
        s.get("pod-a 10.244.3.5") == Some(&20)
    });
    // Someone else changes the table (flushes it, deletes it, removes a map element): the
    // proxy notices the commit and writes it back as it was.
    let node_nft = svcplane_proxy::nft::NftCli::in_netns(&lab.ns("node"));
    let listing = || node_nft.list("ip").unwrap_or_else(|e| e.to_string());
    let before = listing();
    let foreign_changes = || {
        lab.node_http(10249, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("svcplane_proxy_foreign_changes_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    for (n, edit) in [
        "flush table ip svcplane".to_owned(),
        "delete table ip svcplane".to_owned(),
        "delete element ip svcplane cluster-ips { 10.96.0.50 }".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let done = Command::new("ip")
            .args(["netns", "exec", &lab.ns("node"), "sh", "-c"])
            .arg(format!("nft '{edit}'"))
            .status()
            .expect("nft");
        assert!(done.success(), "{edit}");
        poll(
            &format!("the table restored after `{edit}`"),
            || (foreign_changes(), listing()),
            |(changes, now)| *changes > n as u64 && *now == before,
        );
        eventually(&lab, &format!("traffic back after `{edit}`"), |s| {
            s.get("pod-a 10.244.3.5") == Some(&20)
        });
    }

    // The Service goes: its address is no longer served (dropped as an unallocated
    // ServiceCIDR address).
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(&lab, "the address stops answering", |s| {
        !s.keys().any(|k| k.starts_with("pod-"))
    });

    // Every metric exported is listed in docs/proxy.md, and every listed one is exported (the
    // admin server listens inside the node namespace).
    let body = lab.node_http(10249, "/metrics");
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("svcplane_"))
        .map(str::to_owned)
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/proxy.md"))
        .expect("docs/proxy.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `svcplane_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("svcplane_{n}"))
        .collect();
    // The rejected-objects counter appears once something is rejected (never here).
    let expected: BTreeSet<String> = documented
        .iter()
        .filter(|n| *n != "svcplane_watch_rejected_objects_total")
        .cloned()
        .collect();
    assert!(
        exported.is_subset(&documented),
        "undocumented: {:?}",
        exported.difference(&documented).collect::<Vec<_>>()
    );
    assert_eq!(
        exported,
        expected,
        "documented but not exported: {:?}",
        expected.difference(&exported).collect::<Vec<_>>()
    );
}

/// Polls `url` from namespace `from` until `want` holds for its answer.
fn eventually_http(
    lab: &Lab,
    from: &str,
    url: &str,
    what: &str,
    want: impl Fn(&common::HttpAnswer) -> bool,
) -> common::HttpAnswer {
    poll(what, || lab.http_from(from, url), want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_node_ports_and_proxy_health_answer_as_kube_proxy() {
    common::require_namespaces();
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    let lab = Lab::ready();
    common::register_node(&client).await;
    let _relay = lab.relay_api(&env).await;
    let _proxy = start_proxy(&lab, &env);

    // The proxy's own health (kube-proxy's port 10256), once it has synced.
    let healthz = eventually_http(
        &lab,
        "node",
        "http://127.0.0.1:10256/healthz",
        "healthz",
        |a| a.status == 200,
    );
    let body: serde_json::Value = serde_json::from_str(&healthz.body).expect("json");
    assert_eq!(body["healthy"], true, "{body}");
    assert_eq!(body["nodeEligible"], true, "{body}");
    let livez = lab.http_from("node", "http://127.0.0.1:10256/livez");
    assert_eq!(livez.status, 200, "{livez:?}");

    // A LoadBalancer Service with externalTrafficPolicy Local: the API server allocates its
    // healthCheckNodePort; the proxy answers on it, on the node's address, for load balancers.
    let services: Api<Service> = Api::namespaced(client.clone(), "demo");
    let mut lb = common::web_service();
    let spec = lb.spec.as_mut().expect("spec");
    spec.type_ = Some("LoadBalancer".into());
    spec.external_traffic_policy = Some("Local".into());
    let created = services
        .create(&PostParams::default(), &lb)
        .await
        .expect("service");
    let port = created
        .spec
        .and_then(|s| s.health_check_node_port)
        .expect("healthCheckNodePort allocated");
    let url = format!("http://192.0.2.10:{port}/");
    let none = eventually_http(&lab, "ext", &url, "no local endpoints: 503", |a| {
        a.status == 503
    });
    assert_eq!(none.weight.as_deref(), Some("0"), "{none:?}");
    let body: serde_json::Value = serde_json::from_str(&none.body).expect("json");
    assert_eq!(
        body,
        json!({"service": {"namespace": "demo", "name": "web"}, "localEndpoints": 0, "serviceProxyHealthy": true})
    );

    // A ready endpoint on this node: 200, and the weight says how many.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "demo");
    slices
        .create(
            &PostParams::default(),
            &slice("web-1", "web", &[("10.244.1.5", true)]),
        )
        .await
        .expect("slice");
    let one = eventually_http(&lab, "ext", &url, "a local endpoint: 200", |a| {
        a.status == 200
    });
    assert_eq!(one.weight.as_deref(), Some("1"), "{one:?}");
    assert!(one.body.contains("\"localEndpoints\": 1"), "{one:?}");

    // The Service goes: so does its health check port.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    eventually_http(&lab, "ext", &url, "the port closes", |a| a.status == 0);
}
