//! Shared by the allocator's integration tests: a serving certificate for loopback, the
//! allocator binary, the webhook registration, and small polling helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
pub use svcplane_testenv::wait::{eventually, free_port, http_get};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use svcplane_testenv::TestEnv;

pub const WEBHOOK: &str = "svcplane-allocator";
/// Namespaces with this label are not sent to the webhook (the differential test's control).
pub const SKIP_LABEL: &str = "allocator.svcplane.dev/skip";

/// The sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A CA and a serving certificate for 127.0.0.1, written to a directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new() -> Self {
        let tls = svcplane_testenv::LoopbackTls::generate().expect("test certificates");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, &tls.cert_pem).expect("write cert");
        std::fs::write(&key, &tls.key_pem).expect("write key");
        Self {
            dir,
            ca_pem: tls.ca_pem,
            cert,
            key,
        }
    }
}

/// A running `svcplane-allocator`; killed on drop.
pub struct Running {
    pub child: Child,
    pub admin: SocketAddr,
    pub webhook: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await.1
    }

    pub async fn ready(&self) -> bool {
        http_get(self.admin, "/readyz").await.0 == 200
    }

    pub async fn wait_ready(&self) {
        eventually(Duration::from_secs(60), "allocator ready", || async {
            if self.ready().await {
                Ok(())
            } else {
                Err("not ready".to_owned())
            }
        })
        .await
    }
}

/// Starts the binary with the test certificate and `extra` flags, against `kubeconfig`.
pub fn start(
    kubeconfig: &Path,
    certs: &Certs,
    webhook: SocketAddr,
    name: &str,
    extra: &[String],
) -> Running {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane-allocator"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg(format!("--admin-addr={admin}"))
        .arg(format!("--webhook-bind-address={webhook}"))
        .arg("--tls-cert-file")
        .arg(&certs.cert)
        .arg("--tls-private-key-file")
        .arg(&certs.key)
        .arg("--namespace=default")
        .arg("--kube-api-qps=1000")
        .arg("--kube-api-burst=1000")
        .args(extra)
        .env("HOSTNAME", name)
        .env("RUST_LOG", "svcplane_allocator=debug,info")
        .stdin(Stdio::null())
        .spawn()
        .expect("start svcplane-allocator");
    Running {
        child,
        admin,
        webhook,
    }
}

/// Registers the webhook at `url` (an https URL on loopback) for Service creates and updates,
/// skipping namespaces labelled [`SKIP_LABEL`].
pub async fn register(client: &Client, url: &str, ca_pem: &str, failure_policy: &str) {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": WEBHOOK},
        "webhooks": [{
            "name": "services.allocator.svcplane.dev",
            "clientConfig": {"url": url, "caBundle": ca},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["services"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": SKIP_LABEL, "operator": "DoesNotExist"}]},
            "failurePolicy": failure_policy,
            "sideEffects": "NoneOnDryRun",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never"
        }]
    }))
    .expect("webhook configuration");
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = api.delete(WEBHOOK, &DeleteParams::default()).await;
    api.create(&PostParams::default(), &mwc)
        .await
        .expect("register webhook");
}

pub async fn namespace(client: &Client, name: &str, skip: bool) {
    let labels = if skip {
        json!({SKIP_LABEL: "true"})
    } else {
        json!({})
    };
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("ns");
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

pub fn service(ns: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .expect("service")
}

pub async fn create(client: &Client, svc: &Service) -> Result<Service, kube::Error> {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), svc)
        .await
}

pub async fn get(client: &Client, ns: &str, name: &str) -> Option<Service> {
    Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get service")
}

pub async fn delete(client: &Client, ns: &str, name: &str) {
    let api = Api::<Service>::namespaced(client.clone(), ns);
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(Duration::from_secs(20), "service gone", || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

pub fn ips(s: &Service) -> Vec<String> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
}

pub fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.node_port.unwrap_or(0))
        .collect()
}

pub fn health_check_port(s: &Service) -> i32 {
    s.spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .unwrap_or(0)
}

/// Waits until the webhook answers Service creates in `ns` (the API server picks a new
/// webhook configuration up within a second or so): dry-run creates until the allocator counts one.
pub async fn wait_webhook_used(client: &Client, r: &Running, ns: &str) {
    let api = Api::<Service>::namespaced(client.clone(), ns);
    let probe = service(ns, "probe", json!({"ports": [{"port": 80}]}));
    eventually(Duration::from_secs(30), "webhook called", || async {
        let before = metric_sum(
            &r.metrics().await,
            "svcplane_allocator_webhook_requests_total",
            &[],
        );
        let _ = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &probe,
            )
            .await;
        let after = metric_sum(
            &r.metrics().await,
            "svcplane_allocator_webhook_requests_total",
            &[],
        );
        if after > before {
            Ok(())
        } else {
            Err(format!("{before} -> {after}"))
        }
    })
    .await
}

/// A control plane with the allocator registered and ready; `extra` are allocator flags.
pub struct Setup {
    // Fields drop in order: the allocator stops before the control plane does.
    pub allocator: Running,
    pub client: Client,
    pub certs: Certs,
    pub env: TestEnv,
}

pub async fn setup(env: TestEnv, extra: &[String], failure_policy: &str) -> Setup {
    let client = env.client().await.expect("client");
    let certs = Certs::new();
    let webhook = free_port();
    let mut args = vec!["--load-balancer-ipam=false".to_owned()];
    args.extend_from_slice(extra);
    let allocator = start(env.kubeconfig_path(), &certs, webhook, "allocator-0", &args);
    allocator.wait_ready().await;
    register(
        &client,
        &format!("https://{webhook}/mutate-services"),
        &certs.ca_pem,
        failure_policy,
    )
    .await;
    namespace(&client, "probe", false).await;
    wait_webhook_used(&client, &allocator, "probe").await;
    Setup {
        allocator,
        client,
        certs,
        env,
    }
}

/// A loopback TCP relay to whichever replica reports ready, as a Service routes to ready
/// endpoints only. With none ready, connections are refused (the API server then applies the
/// webhook's failurePolicy).
pub struct ReadyRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReadyRelay {
    /// `targets`: (webhook, admin) address pairs.
    pub async fn start(targets: Vec<(SocketAddr, SocketAddr)>) -> Self {
        use std::sync::Arc;
        use std::sync::Mutex;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let current: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let poll = {
            let current = current.clone();
            async move {
                loop {
                    let mut ready = None;
                    for (webhook, admin) in &targets {
                        if http_get(*admin, "/readyz").await.0 == 200 {
                            ready = Some(*webhook);
                            break;
                        }
                    }
                    *current.lock().expect("lock") = ready;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let task = tokio::spawn(async move {
            let poller = tokio::spawn(poll);
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                let target = *current.lock().expect("lock");
                let Some(target) = target else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            poller.abort();
        });
        Self { addr, task }
    }
}
