//! `deploy/svcplane-allocator.yaml` (and the CRDs) against a real kube-apiserver: every object
//! is accepted with strict field validation; the binary, run with the Deployment's own
//! arguments under the ServiceAccount's token, takes the Lease, makes its own CA and writes it
//! into the webhook configuration, and then decides the ClusterIP and NodePort of a Service the
//! API server creates: so the RBAC rules grant what it needs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use svcplane_testenv::kubelet;
use svcplane_testenv::{TestEnv, manifest};

const CRDS: &str = include_str!("../../deploy/svcplane-allocator-crds.yaml");
const MANIFEST: &str = include_str!("../../deploy/svcplane-allocator.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_apply_and_the_allocator_runs_under_its_token() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    manifest::apply(&client, CRDS)
        .await
        .unwrap_or_else(|e| panic!("deploy/svcplane-allocator-crds.yaml rejected: {e}"));
    manifest::apply(&client, MANIFEST)
        .await
        .unwrap_or_else(|e| panic!("deploy/svcplane-allocator.yaml rejected: {e}"));

    let deployment = Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .get("svcplane-allocator")
        .await
        .expect("Deployment");
    let pod = deployment.spec.template.spec.expect("pod template");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("svcplane-allocator")
    );
    let args: Vec<String> = pod.containers[0]
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.starts_with("--admin-addr=") && !a.starts_with("--webhook-bind-address="))
        .collect();
    assert!(
        args.iter().any(|a| a == "--leader-elect")
            && args.iter().any(|a| a == "--self-managed-tls"),
        "{args:?}"
    );

    // The test API server cannot reach a Service; point the webhook at loopback instead,
    // leaving the caBundle to the allocator.
    let webhook = free_port();
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mwcs.patch(
        WEBHOOK,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig", "value": {"url": format!("https://{webhook}/mutate-services")}}
        ])).expect("patch")),
    )
    .await
    .expect("point the webhook at loopback");

    let token = kubelet::service_account_token(&client, "kube-system", "svcplane-allocator")
        .await
        .expect("token");
    let kubeconfig = env
        .write_kubeconfig_with_token("svcplane-allocator.kubeconfig", &token)
        .expect("kubeconfig");
    let admin = free_port();
    let running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_svcplane-allocator"))
            .args(&args)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg(format!("--admin-addr={admin}"))
            .arg(format!("--webhook-bind-address={webhook}"))
            .arg("--tls-san-ips=127.0.0.1")
            .env("HOSTNAME", "svcplane-allocator-test")
            .env("POD_NAMESPACE", "kube-system")
            .stdin(Stdio::null())
            .spawn()
            .expect("start svcplane-allocator"),
        admin,
        webhook,
    };
    running.wait_ready().await;
    eventually(Duration::from_secs(30), "caBundle written", || async {
        let mwc = mwcs.get(WEBHOOK).await.map_err(|e| e.to_string())?;
        match mwc
            .webhooks
            .unwrap_or_default()
            .first()
            .and_then(|w| w.client_config.ca_bundle.clone())
        {
            Some(b) if !b.0.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    namespace(&client, "app", false).await;
    wait_webhook_used(&client, &running, "app").await;
    let svc = create(
        &client,
        &service(
            "app",
            "web",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("web");
    assert!(!ips(&svc).is_empty() && node_ports(&svc)[0] != 0);
    let body = running.metrics().await;
    assert!(
        metric_sum(
            &body,
            "svcplane_allocator_allocations_total",
            &[("kind", "node_port")]
        ) >= 1.0,
        "{body}"
    );
    assert_eq!(metric_sum(&body, "svcplane_allocator_leader", &[]), 1.0);
}
