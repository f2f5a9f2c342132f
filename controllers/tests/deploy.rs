//! `deploy/svcplane-endpoints.yaml` against a real kube-apiserver: every object is accepted with
//! strict field validation, and the binary, run with the Deployment's own arguments (leader
//! election included) under the ServiceAccount's token, takes the Lease and writes Endpoints
//! and slices, so the RBAC rules grant what it needs.

mod common;

use common::*;

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use svcplane_testenv::kubelet::{self, PodBuilder};
use svcplane_testenv::{TestEnv, manifest};

const MANIFEST: &str = include_str!("../../deploy/svcplane-endpoints.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_apply_and_their_arguments_and_rbac_run_the_controller() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    // The apiserver creates kube-system shortly after it starts; do not race it.
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    manifest::apply(&client, MANIFEST)
        .await
        .unwrap_or_else(|e| panic!("deploy/svcplane-endpoints.yaml rejected: {e}"));

    let deployment = Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .get("svcplane-endpoints")
        .await
        .expect("Deployment");
    let pod = deployment.spec.template.spec.expect("pod template");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("svcplane-endpoints")
    );
    let args: Vec<String> = pod.containers[0]
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.starts_with("--admin-addr="))
        .collect();
    assert!(args.iter().any(|a| a == "--leader-elect"), "{args:?}");

    let token = kubelet::service_account_token(&client, "kube-system", "svcplane-endpoints")
        .await
        .expect("token");
    let kubeconfig = env
        .write_kubeconfig_with_token("svcplane-endpoints.kubeconfig", &token)
        .expect("kubeconfig");
    let admin = free_port();
    let running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_svcplane-endpoints"))
            .args(&args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg(format!("--admin-addr={admin}"))
            .env("HOSTNAME", "svcplane-endpoints-test")
            .stdin(Stdio::null())
            .spawn()
            .expect("start svcplane-endpoints"),
        admin,
    };
    // Ready only after every watch listed: a missing list/watch rule keeps it unready.
    wait_ready(&running).await;

    cluster(&env, "shop", &[("node-a", Some("zone-a"))]).await;
    create_service(
        &client,
        &selector_service(
            "shop",
            "web",
            &[("app", "web")],
            vec![service_port("http", 80, IntOrString::Int(8080))],
        ),
    )
    .await;
    running_pod(
        &client,
        PodBuilder::new("shop", "web-0")
            .label("app", "web")
            .node("node-a"),
        "10.244.9.1",
        true,
    )
    .await;
    // Writes need the Lease (Role in kube-system) and the write rules of the ClusterRole.
    eventually(
        Duration::from_secs(30),
        "Endpoints and a slice written",
        || async {
            let ep = get_endpoints(&client, "shop", "web")
                .await
                .map(|e| endpoints_lines(&e));
            let s = seen(&slices(&client, "shop", "web", SLICE_MANAGER).await).len();
            match ep {
                Some(lines) if lines == ["10.244.9.1 ready http:8080"] && s == 1 => Ok(()),
                other => Err(format!("{other:?}, {s} slice endpoints")),
            }
        },
    )
    .await;
    let holder = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("svcplane-endpoints")
        .await
        .expect("Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.starts_with("svcplane-endpoints-test"), "{holder}");
}
