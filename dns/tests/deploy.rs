//! `deploy/svcplane-dns.yaml` against a real kube-apiserver: every object is accepted with strict
//! field validation, and the binary, run with the Deployment's own arguments and the
//! ServiceAccount's token, syncs and answers, so the ClusterRole grants what it needs.

mod common;

use common::{admin_get, dig, free_dns_port};

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use svcplane_testenv::{TestEnv, kubelet};

const MANIFEST: &str = include_str!("../../deploy/svcplane-dns.yaml");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn apply_manifest(client: &kube::Client) {
    let written = svcplane_testenv::manifest::apply(client, MANIFEST)
        .await
        .unwrap_or_else(|e| panic!("deploy/svcplane-dns.yaml rejected: {e}"));
    assert!(written.len() >= 6, "manifest has {} objects", written.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_apply_and_their_arguments_and_rbac_run_the_server() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    // The apiserver creates kube-system shortly after it starts; do not race it.
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    apply_manifest(&client).await;

    let kube_dns = Api::<Service>::namespaced(client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .expect("kube-dns Service");
    let cluster_ip = kube_dns.spec.and_then(|s| s.cluster_ip);
    assert_eq!(cluster_ip.as_deref(), Some("10.96.0.10"));

    // The Deployment's arguments, but on loopback ports, with a silent loopback upstream and
    // no lameduck wait: nothing leaves the machine.
    let deployment = Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .get("svcplane-dns")
        .await
        .expect("Deployment");
    let pod = deployment.spec.template.spec.expect("pod template");
    assert_eq!(pod.service_account_name.as_deref(), Some("svcplane-dns"));
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let overridden = ["--listen=", "--admin-addr=", "--lameduck="];
    let kept: Vec<&String> = args
        .iter()
        .filter(|a| !overridden.iter().any(|o| a.starts_with(o)))
        .collect();
    assert_eq!(kept.len() + overridden.len(), args.len(), "args: {args:?}");

    let token = kubelet::service_account_token(&client, "kube-system", "svcplane-dns")
        .await
        .expect("token");
    let kubeconfig = env
        .write_kubeconfig_with_token("svcplane-dns.kubeconfig", &token)
        .expect("kubeconfig");
    let (addr, admin) = (free_dns_port(), free_dns_port());
    let upstream = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _dns = Killed(
        Command::new(env!("CARGO_BIN_EXE_svcplane-dns"))
            .args(kept)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg(format!("--listen={addr}"))
            .arg(format!("--admin-addr={admin}"))
            .arg(format!(
                "--upstream={}",
                upstream.local_addr().expect("addr")
            ))
            .arg("--lameduck=0s")
            .stdin(Stdio::null())
            .spawn()
            .expect("start svcplane-dns"),
    );

    // Ready only after every watch listed: a missing RBAC rule keeps it unready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::net::TcpStream::connect(admin).await.is_ok()
            && admin_get(admin, "/ready").await == 200;
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 30 s under the manifest's RBAC"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = tokio::task::spawn_blocking(move || {
        dig(
            addr,
            &["+short", "kube-dns.kube-system.svc.cluster.local", "A"],
        )
    })
    .await
    .expect("dig");
    assert_eq!(answer.trim(), "10.96.0.10");
    let ns = tokio::task::spawn_blocking(move || dig(addr, &["+short", "cluster.local", "NS"]))
        .await
        .expect("dig");
    assert_eq!(ns.trim(), "kube-dns.kube-system.svc.cluster.local.");
}

/// kubeadm's Corefile, as `kubeadm init` writes it into the `coredns` ConfigMap.
const KUBEADM_COREFILE: &str = include_str!("../testdata/kubeadm.Corefile");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corefile_patch_mounts_the_coredns_configmap() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams, PostParams};

    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    if let Err(error) = kubelet::create_namespace(&client, "kube-system").await {
        assert!(error.to_string().contains("already exists"), "{error}");
    }
    apply_manifest(&client).await;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), "kube-system");
    let coredns = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("coredns".into()),
            ..Default::default()
        },
        data: Some([("Corefile".to_owned(), KUBEADM_COREFILE.to_owned())].into()),
        ..Default::default()
    };
    configmaps
        .create(&PostParams::default(), &coredns)
        .await
        .expect("coredns ConfigMap");

    // The patch as `kubectl patch --patch-file` sends it: a strategic merge, strictly validated.
    let patch: serde_json::Value = serde_saphyr::from_str(include_str!(
        "../../deploy/patches/svcplane-dns-corefile.yaml"
    ))
    .expect("the patch parses");
    let deployments = Api::<Deployment>::namespaced(client.clone(), "kube-system");
    let patched = deployments
        .patch(
            "svcplane-dns",
            &PatchParams::default().validation_strict(),
            &Patch::Strategic(patch),
        )
        .await
        .expect("the patch applies");
    let pod = patched.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        args,
        [
            "--corefile=/etc/coredns/Corefile",
            "--nameserver-service=kube-system/kube-dns",
            "--log-format=json"
        ]
    );
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/coredns")
        .expect("the Corefile is mounted");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let source = volume.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(source.name, "coredns");
    // The probes still find /health and /ready on 9153 (the Corefile's prometheus address).
    assert!(KUBEADM_COREFILE.contains("prometheus :9153"));
    assert_eq!(
        container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .map(|h| h.path.clone()),
        Some(Some("/ready".into()))
    );

    // What the pod would read from the mount, checked by the binary with the patched args.
    let stored = configmaps.get("coredns").await.expect("ConfigMap");
    let corefile = env.dir().join("mounted-Corefile");
    std::fs::write(
        &corefile,
        stored
            .data
            .expect("data")
            .get("Corefile")
            .expect("Corefile key"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_svcplane-dns"))
        .arg(format!("--check-corefile={}", corefile.display()))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(
        described.contains("kubernetes: zone cluster.local"),
        "{described}"
    );
}
