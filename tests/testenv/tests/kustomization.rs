//! `deploy/kustomization.yaml` lists every manifest in `deploy/` (so `kubectl apply -k deploy/`
//! installs all of svcplane), and, applied in its order to a real API server with strict field
//! validation, every object is accepted.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use svcplane_testenv::{TestEnv, kubelet, manifest};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomization_lists_and_applies_every_manifest() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let text = std::fs::read_to_string(deploy.join("kustomization.yaml"))
        .expect("deploy/kustomization.yaml");
    let k: Kustomization = serde_saphyr::from_str(&text).expect("kustomization parses");
    assert_eq!(
        (k.api_version.as_str(), k.kind.as_str()),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    );
    let listed: BTreeSet<String> = k.resources.iter().cloned().collect();
    let present: BTreeSet<String> = std::fs::read_dir(&deploy)
        .expect("deploy/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "deploy/kustomization.yaml must list every manifest in deploy/"
    );
    assert_eq!(listed.len(), k.resources.len(), "a manifest listed twice");

    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    for file in &k.resources {
        let yaml = std::fs::read_to_string(deploy.join(file)).expect("manifest");
        manifest::apply(&client, &yaml)
            .await
            .unwrap_or_else(|e| panic!("deploy/{file} rejected: {e}"));
    }
}
