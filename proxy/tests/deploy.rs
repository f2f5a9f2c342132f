//! `deploy/svcplane-proxy.yaml` against a real kube-apiserver: every object is accepted with
//! strict field validation, and the binary, run in a node namespace with the DaemonSet's own
//! arguments and environment under the ServiceAccount's token, programs the node (a ClusterIP
//! carries traffic), so the ClusterRole grants what it needs.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use svcplane_testenv::{TestEnv, kubelet};

const MANIFEST: &str = include_str!("../../deploy/svcplane-proxy.yaml");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_apply_and_their_arguments_and_rbac_program_a_node() {
    common::require_namespaces();
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    let written = svcplane_testenv::manifest::apply(&client, MANIFEST)
        .await
        .unwrap_or_else(|e| panic!("deploy/svcplane-proxy.yaml rejected: {e}"));
    assert_eq!(
        written.len(),
        4,
        "ServiceAccount, ClusterRole, binding, DaemonSet"
    );

    let ds = Api::<DaemonSet>::namespaced(client.clone(), "kube-system")
        .get("svcplane-proxy")
        .await
        .expect("DaemonSet");
    let pod = ds.spec.template.spec.expect("pod template");
    assert_eq!(pod.service_account_name.as_deref(), Some("svcplane-proxy"));
    assert_eq!(pod.host_network, Some(true));
    let container = &pod.containers[0];
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_owned()][..]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let args = container.args.clone().unwrap_or_default();
    let node_env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_env.as_deref(), Some("spec.nodeName"));

    let lab = Lab::ready();
    common::register_node(&client).await;
    let token = kubelet::service_account_token(&client, "kube-system", "svcplane-proxy")
        .await
        .expect("token");
    let _relay = lab.relay_api(&env).await;
    let kubeconfig = env
        .write_kubeconfig_with_token_via(
            "svcplane-proxy.kubeconfig",
            &token,
            common::API_IN_NODE.parse().expect("addr"),
        )
        .expect("kubeconfig");
    // The DaemonSet's arguments as they are (the admin port is the node namespace's own), the
    // node name as the downward API would set it, and a shorter batching period.
    let _proxy = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("node"),
                env!("CARGO_BIN_EXE_svcplane-proxy"),
            ])
            .args(&args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--min-sync-period=100ms")
            .env("NODE_NAME", "node")
            .stdin(Stdio::null())
            .spawn()
            .expect("start svcplane-proxy"),
    );

    let pp = PostParams::default();
    Api::<Service>::namespaced(client.clone(), "demo")
        .create(&pp, &common::web_service())
        .await
        .expect("service");
    Api::<EndpointSlice>::namespaced(client.clone(), "demo")
        .create(
            &pp,
            &EndpointSlice {
                metadata: ObjectMeta {
                    name: Some("web-1".into()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/service-name".to_owned(),
                        "web".to_owned(),
                    )])),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: Some(vec![Endpoint {
                    addresses: vec!["10.244.1.5".into()],
                    node_name: Some("node".into()),
                    ..Default::default()
                }]),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }]),
            },
        )
        .await
        .expect("slice");

    // Only a proxy whose watches all listed (Services, slices, its Node, ServiceCIDRs) syncs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = lab.ask("tcp", "10.96.0.50", 80, 3);
        if seen.get("pod-a 10.244.3.5") == Some(&3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ClusterIP never answered under the manifest's RBAC: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
