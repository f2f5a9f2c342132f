//! The whole local cluster: control plane, network, the four svcplane components as the
//! `deploy/` manifests describe them, and (optionally) the demo app.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use svcplane_testenv::{TestEnv, kubelet, manifest};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, NodeInfo, Settings};
use crate::api_faults::ApiFaults;
use crate::egress::{self, EgressRelay};
use crate::net::{self, Names};

/// The binaries the local kubelets run, built from this checkout.
pub const COMPONENTS: [&str; 4] = [
    "svcplane-allocator",
    "svcplane-endpoints",
    "svcplane-dns",
    "svcplane-proxy",
];

/// The file in the state directory naming the control plane's directory.
const CONTROL_PLANE_DIR: &str = "control-plane-dir";

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated nodes (1 to 9).
    pub nodes: usize,
    /// Every namespace (and state directory) name starts with this; a start removes what an
    /// earlier run with the same prefix left.
    pub prefix: String,
    /// Where the svcplane binaries and `svcplane-cluster` are.
    pub bin_dir: PathBuf,
    /// Also start the demo app (deploy/… then tests/cluster/demo.yaml).
    pub demo: bool,
    /// Put a fault-injecting proxy ([`ApiFaults`]) between the pods and kube-apiserver; it
    /// passes everything through until told otherwise.
    pub api_faults: bool,
}

/// A running local cluster. [`Cluster::stop`] stops it; dropping it also removes every
/// namespace, as a last resort.
pub struct Cluster {
    env: Option<Arc<TestEnv>>,
    client: Client,
    names: Names,
    nodes: Vec<NodeInfo>,
    state_dir: PathBuf,
    agent: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    _egress: Option<EgressRelay>,
    api_faults: Option<ApiFaults>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.names.prefix)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// The `deploy/` directory of this checkout.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The manifests `deploy/kustomization.yaml` lists, in its order.
pub fn deploy_manifests() -> anyhow::Result<Vec<(String, String)>> {
    let dir = deploy_dir();
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .context("reading deploy/kustomization.yaml")?;
    let parsed: serde_json::Value = serde_saphyr::from_str(&kustomization)
        .map_err(|e| anyhow::anyhow!("deploy/kustomization.yaml: {e}"))?;
    let resources = parsed["resources"]
        .as_array()
        .context("deploy/kustomization.yaml lists no resources")?;
    resources
        .iter()
        .map(|r| {
            let file = r.as_str().context("a resource that is not a file name")?;
            let yaml = std::fs::read_to_string(dir.join(file))
                .with_context(|| format!("reading deploy/{file}"))?;
            Ok((file.to_owned(), yaml))
        })
        .collect()
}

impl Cluster {
    /// Starts everything; `progress` hears each step. On error, whatever was made is removed.
    pub async fn start(options: Options, progress: impl Fn(&str)) -> anyhow::Result<Cluster> {
        if let Err(why) = svcplane_testenv::netns::can_make_namespaces() {
            bail!(
                "svcplane-cluster makes network namespaces and nftables rules, which needs root with `ip` and `nft` ({why}); run it with sudo"
            );
        }
        if !(1..=9).contains(&options.nodes) {
            bail!("--nodes must be 1 to 9, not {}", options.nodes);
        }
        for binary in COMPONENTS.iter().chain(&["svcplane-cluster"]) {
            let path = options.bin_dir.join(binary);
            if !path.is_file() {
                bail!(
                    "{} is missing: build with `cargo build --workspace --bins` first",
                    path.display()
                );
            }
        }
        let names = Names {
            prefix: options.prefix.clone(),
        };
        let removed = net::remove_leftovers(&options.prefix).await?;
        if removed > 0 {
            progress(&format!(
                "removed {removed} network namespaces an earlier run left behind"
            ));
        }
        let state_dir = std::env::temp_dir().join(format!("svcplane-cluster-{}", options.prefix));
        // A killed run's control-plane directory (etcd's data, ~120 MB): its processes ended
        // with it (their lifeline), so the files can go.
        if let Ok(dir) = std::fs::read_to_string(state_dir.join(CONTROL_PLANE_DIR)) {
            let dir = PathBuf::from(dir.trim());
            if dir.starts_with(std::env::temp_dir()) && dir.join("kubeconfig").is_file() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let socket = state_dir.join("egress.sock");
        let selector = state_dir.join("egress-selector.yaml");
        std::fs::write(&selector, egress::selector_config(&socket))?;

        progress("starting etcd and kube-apiserver (the first run builds them, a few minutes)");
        let started = Instant::now();
        let env = TestEnv::start_with(svcplane_testenv::Options {
            extra_apiserver_args: vec![format!(
                "--egress-selector-config-file={}",
                selector.display()
            )],
            ..svcplane_testenv::Options::default()
        })
        .await
        .context("starting the control plane")?;
        std::fs::write(
            state_dir.join(CONTROL_PLANE_DIR),
            env.dir().display().to_string(),
        )?;
        progress(&format!(
            "control plane up in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            env.server_url()
        ));
        let client = env.client().await?;
        let nodes: Vec<NodeInfo> = (1..=options.nodes)
            .map(|n| NodeInfo {
                name: format!("node-{n}"),
                n,
                ns: names.node(&format!("node-{n}")),
            })
            .collect();
        let mut cluster = Cluster {
            env: Some(Arc::new(env)),
            client: client.clone(),
            names: names.clone(),
            nodes: nodes.clone(),
            state_dir: state_dir.clone(),
            agent: None,
            _egress: None,
            api_faults: None,
        };
        if options.api_faults {
            let env = cluster.env.as_ref().context("control plane")?;
            let faults = ApiFaults::start(env.dir(), env.server_addr()).await?;
            progress(&format!(
                "pods reach the API server through a fault-injecting proxy at {}",
                faults.addr()
            ));
            cluster.api_faults = Some(faults);
        }

        net::add_lan(&names).await?;
        for node in &nodes {
            net::add_node(&names, &node.name, node.n, nodes.len()).await?;
            register_node(&client, node).await?;
        }
        progress(&format!(
            "{} nodes up: namespaces {} on LAN 192.0.2.0/24",
            nodes.len(),
            nodes
                .iter()
                .map(|n| n.ns.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // The API server reaches Services (the allocator's webhook) from node 1.
        cluster._egress = Some(EgressRelay::start(&socket, nodes[0].ns.clone())?);

        for (file, yaml) in deploy_manifests()? {
            manifest::apply(&client, &yaml)
                .await
                .with_context(|| format!("applying deploy/{file}"))?;
        }
        progress("applied deploy/ (kustomization order)");

        let (stop, stopped) = watch::channel(false);
        let agent = Agent::new(
            client.clone(),
            cluster.env.clone().context("control plane")?,
            Settings {
                names: names.clone(),
                nodes,
                bin_dir: options.bin_dir.clone(),
                state_dir: state_dir.clone(),
                api_target: cluster.api_faults.as_ref().map(ApiFaults::addr),
            },
        );
        cluster.agent = Some((stop, tokio::spawn(agent.run(stopped))));

        cluster.wait_components(Duration::from_secs(120)).await?;
        progress(&format!(
            "svcplane components ready (logs in {})",
            state_dir.join("logs").display()
        ));
        if options.demo {
            manifest::apply(&client, crate::demo::MANIFEST)
                .await
                .context("applying the demo")?;
            cluster.wait_demo(Duration::from_secs(120)).await?;
            progress("demo app ready");
        }
        Ok(cluster)
    }

    /// The Deployments in `namespace` with no ready pod (`all`: fewer ready than wanted).
    async fn unready_deployments(&self, namespace: &str, all: bool) -> anyhow::Result<Vec<String>> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default())
            .await?;
        Ok(deployments
            .items
            .iter()
            .filter(|d| {
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                let want = if all { d.spec.replicas.unwrap_or(1) } else { 1 };
                ready < want
            })
            .filter_map(|d| d.metadata.name.clone())
            .collect())
    }

    /// Waits until every svcplane Deployment has a ready pod and every node's proxy is ready.
    async fn wait_components(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let daemonsets = Api::<DaemonSet>::namespaced(self.client.clone(), "kube-system")
                .list(&ListParams::default())
                .await?;
            let mut waiting = self.unready_deployments("kube-system", false).await?;
            waiting.extend(
                daemonsets
                    .items
                    .iter()
                    .filter(|d| {
                        d.status.as_ref().is_none_or(|s| {
                            s.number_ready < i32::try_from(self.nodes.len()).unwrap_or(0)
                        })
                    })
                    .filter_map(|d| d.metadata.name.clone()),
            );
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready after {}s: {}; logs in {}",
                    within.as_secs(),
                    waiting.join(", "),
                    self.state_dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the demo's pods are ready and the client resolves and reaches `web`.
    async fn wait_demo(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last;
            let unready = self.unready_deployments("demo", true).await?;
            let client_up = Api::<Pod>::namespaced(self.client.clone(), "demo")
                .get_opt("client")
                .await?
                .is_some_and(|p| crate::pod_ready(&p));
            if unready.is_empty() && client_up {
                let out = self
                    .exec("demo", "client", &["curl", "-sS", "-m", "2", "http://web/"])
                    .await;
                match out {
                    Ok(body) if body.contains(" on node-") => return Ok(()),
                    Ok(body) => last = body,
                    Err(e) => last = e.to_string(),
                }
            } else {
                last = format!("waiting for {unready:?} and the client pod");
            }
            if Instant::now() > deadline {
                bail!(
                    "the demo never answered within {}s: {last}",
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs a command in pod `namespace/name`'s network namespace (with its resolv.conf);
    /// its standard output.
    pub async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        command: &[&str],
    ) -> anyhow::Result<String> {
        exec_in(&self.names.pod(namespace, pod), command).await
    }

    /// Runs a command in the external host's namespace.
    pub async fn exec_external(&self, command: &[&str]) -> anyhow::Result<String> {
        exec_in(&self.names.external(), command).await
    }

    /// An admin client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Logs of every pod, one file each.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// The fault-injecting proxy in front of the API server (with [`Options::api_faults`]).
    pub fn api_faults(&self) -> Option<&ApiFaults> {
        self.api_faults.as_ref()
    }

    pub fn env(&self) -> Option<&TestEnv> {
        self.env.as_deref()
    }

    /// GET `path` on `port` inside pod `namespace/name`'s namespace (its admin endpoints).
    pub async fn pod_http(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        net::http_get_in(
            &self.names.pod(namespace, pod),
            SocketAddr::from(([127, 0, 0, 1], port)),
            path,
            Duration::from_secs(2),
        )
        .await
    }

    /// kube-apiserver stopped for `down`, then started again (same port, same etcd); returns
    /// when it is ready.
    pub async fn restart_apiserver(&self, down: Duration) -> anyhow::Result<()> {
        let env = self.env.as_ref().context("control plane stopped")?;
        env.stop_apiserver();
        tokio::time::sleep(down).await;
        env.restart_apiserver().await?;
        Ok(())
    }

    /// Compacts etcd's history up to its current revision (physically), as the API server's
    /// periodic compaction does: a watch resumed from an older resourceVersion then gets
    /// 410 Gone and must list again. The revision compacted to.
    pub async fn compact_etcd(&self) -> anyhow::Result<i64> {
        let env = self.env.as_ref().context("control plane stopped")?;
        let addr: SocketAddr = env
            .etcd_url()
            .trim_start_matches("http://")
            .parse()
            .context("etcd's address")?;
        // etcd's JSON gateway: any range answers with the current revision in its header.
        let range = etcd_post(addr, "/v3/kv/range", r#"{"key":"AA==","limit":1}"#).await?;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("no revision in {range}"))?;
        etcd_post(
            addr,
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}).to_string(),
        )
        .await?;
        Ok(revision)
    }

    /// SIGKILL to every process of pod `namespace/name` (its own network namespace: not for
    /// hostNetwork pods); the kubelet restarts the container. How many were killed.
    pub async fn kill_pod(&self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        kill_all_in(&self.names.pod(namespace, name)).await
    }

    /// SIGKILL to every process in node `n`'s namespace (its hostNetwork pods: the proxy).
    pub async fn kill_node_processes(&self, n: usize) -> anyhow::Result<usize> {
        let node = self.nodes.get(n - 1).context("no such node")?;
        kill_all_in(&node.ns).await
    }

    /// Takes node `name` out: cordoned, its pods deleted (drained), its Node deleted (refused,
    /// as `kubectl drain` refuses, when a pod without a controller runs there). Its
    /// namespace stays, so [`Cluster::add_node_back`] can bring it back.
    pub async fn remove_node(&self, name: &str) -> anyhow::Result<()> {
        let nodes = Api::<Node>::all(self.client.clone());
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
            )
            .await?;
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?;
        // As `kubectl drain` without --force: a pod no controller would replace stops it.
        if let Some(bare) = pods.items.iter().find(|p| {
            p.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
        }) {
            bail!(
                "{name} runs {}/{}, which no controller manages; not draining it",
                bare.metadata.namespace.as_deref().unwrap_or_default(),
                bare.metadata.name.as_deref().unwrap_or_default()
            );
        }
        for p in pods.items {
            let (Some(ns), Some(pod)) = (p.metadata.namespace, p.metadata.name) else {
                continue;
            };
            let _ = Api::<Pod>::namespaced(self.client.clone(), &ns)
                .delete(&pod, &Default::default())
                .await;
        }
        nodes.delete(name, &Default::default()).await?;
        Ok(())
    }

    /// Registers node `name` (one this cluster started with) again after
    /// [`Cluster::remove_node`]; its DaemonSet pods come back.
    pub async fn add_node_back(&self, name: &str) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .context("not a node of this cluster")?;
        register_node(&self.client, node).await
    }

    /// Stops the pods (SIGTERM, then SIGKILL after 2 s), the control plane, and removes every
    /// namespace and file this cluster made.
    pub async fn stop(mut self) {
        if let Some((stop, task)) = self.agent.take() {
            stop.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self._egress = None;
        let _ = net::remove_leftovers(&self.names.prefix).await;
        self.env = None;
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The Node object a kubelet would register (ready, with its LAN address and the OS label the
/// DaemonSets select on).
async fn register_node(client: &Client, node: &NodeInfo) -> anyhow::Result<()> {
    kubelet::create_node(client, &node.name, None, net::node_ip(node.n).into()).await?;
    Api::<Node>::all(client.clone())
        .patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"kubernetes.io/os": "linux"}}})),
        )
        .await?;
    Ok(())
}

async fn kill_all_in(ns: &str) -> anyhow::Result<usize> {
    let pids = net::sh(&["ip", "netns", "pids", ns]).await?;
    let mut killed = 0;
    for pid in pids.split_whitespace() {
        if net::sh(&["kill", "-9", pid]).await.is_ok() {
            killed += 1;
        }
    }
    Ok(killed)
}

/// POSTs JSON to etcd's gateway on loopback; the JSON answer.
async fn etcd_post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .context("etcd did not answer")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP answer from etcd")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("etcd {path}: {head} {body}");
    }
    Ok(serde_json::from_str(body)?)
}

async fn exec_in(ns: &str, command: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["ip", "netns", "exec", ns];
    args.extend_from_slice(command);
    net::sh(&args).await
}

impl Drop for Cluster {
    /// The last resort (a panic, an error during start): kill what runs in our namespaces and
    /// delete them, synchronously.
    fn drop(&mut self) {
        if let Some((stop, task)) = self.agent.take() {
            stop.send_replace(true);
            task.abort();
        }
        net::remove_leftovers_now(&self.names.prefix);
    }
}
