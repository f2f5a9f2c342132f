//! What the rest of a cluster would do, done small: a Deployment and a DaemonSet controller
//! (pods from templates, replica counts, status), a scheduler (binding pods to the
//! fewest-loaded matching node) and one kubelet per node (a pod is a network namespace on a
//! veth, its container a process in it, its readiness probe run inside it, its status written
//! through the API). Nothing here is svcplane: these are the parts a real cluster brings and
//! svcplane replaces none of.
//!
//! A container whose image names an svcplane binary (`…/svcplane-dns:…`) runs that binary from
//! this checkout with the container's arguments and environment, under its pod's
//! ServiceAccount token, reaching the API server at 127.0.0.1:6443 inside its namespace through
//! a unix-socket relay; any other image runs the demo HTTP server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;
use svcplane_testenv::netns::ApiRelay;
use svcplane_testenv::{TestEnv, kubelet};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::net::{self, Names};

/// Where the API server answers inside a pod's (or node's) namespace.
pub const API_PORT: u16 = 6443;

/// The cluster DNS Service's address (kubelet's --cluster-dns).
pub const CLUSTER_DNS: &str = "10.96.0.10";

/// How long component tokens stay valid (kubelet would rotate them; the local cluster mints
/// them once).
const TOKEN_SECONDS: i64 = 7 * 24 * 3600;

/// One simulated node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Its Node name, `node-N`.
    pub name: String,
    /// N, from 1.
    pub n: usize,
    /// Its network namespace.
    pub ns: String,
}

/// What the agent needs to know about the cluster around it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: Names,
    pub nodes: Vec<NodeInfo>,
    /// Where `svcplane-*` binaries (and `svcplane-cluster` for the demo server) are.
    pub bin_dir: PathBuf,
    /// Logs (one per pod) and kubeconfigs.
    pub state_dir: PathBuf,
    /// Where pods reach the API server, if not at the API server itself (a fault-injecting
    /// proxy in front of it).
    pub api_target: Option<SocketAddr>,
}

/// A pod the local kubelets run.
#[derive(Debug)]
struct Running {
    namespace: String,
    name: String,
    /// Its network namespace (the node's for hostNetwork pods).
    netns: String,
    own_netns: bool,
    node: usize,
    /// The last byte of its address on its node (own namespace only).
    host: Option<u8>,
    ip: Ipv4Addr,
    command: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    started: Instant,
    restarts: u32,
    prober: Option<JoinHandle<()>>,
    probe: Option<(u16, String, Duration)>,
    reported: Reported,
    _relay: Option<ApiRelay>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(p) = &self.prober {
            p.abort();
        }
    }
}

/// Pods in their grace period, by uid: their node and address.
type Terminating = Arc<std::sync::Mutex<HashMap<String, (usize, Option<u8>)>>>;

/// The agent: watches, and reconciles on every change and every second.
pub struct Agent {
    client: Client,
    env: Arc<TestEnv>,
    settings: Settings,
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    daemonsets: Store<DaemonSet>,
    nodes: Store<Node>,
    changed: Arc<Notify>,
    watches: Vec<JoinHandle<()>>,
    running: HashMap<String, Running>,
    /// Pods created (by name) whose creation the store has not shown yet, per owner uid.
    creating: HashMap<String, HashMap<String, Instant>>,
    /// Pods (by uid) deleted whose deletion the store may not show yet.
    deleting: HashMap<String, Instant>,
    /// Pods (by uid) bound whose binding the store may not show yet.
    binding: HashMap<String, Instant>,
    node_relays: HashMap<usize, ApiRelay>,
    /// Pods in their grace period (by uid): node and address, until their namespace is gone.
    terminating: Terminating,
    terminations: tokio::task::JoinSet<()>,
    kubeconfigs: HashMap<(String, String), PathBuf>,
    next_veth: usize,
    rng: svcplane_testenv::rng::Rng,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

fn store_of<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::debug!(%error, "agent watch failed; retrying");
            }
            changed.notify_one();
        }
    });
    (store, task)
}

impl Agent {
    pub fn new(client: Client, env: Arc<TestEnv>, settings: Settings) -> Self {
        let changed = Arc::new(Notify::new());
        let (pods, p) = store_of(Api::<Pod>::all(client.clone()), changed.clone());
        let (deployments, d) = store_of(Api::<Deployment>::all(client.clone()), changed.clone());
        let (daemonsets, s) = store_of(Api::<DaemonSet>::all(client.clone()), changed.clone());
        let (nodes, n) = store_of(Api::<Node>::all(client.clone()), changed.clone());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            client,
            env,
            settings,
            pods,
            deployments,
            daemonsets,
            nodes,
            changed,
            watches: vec![p, d, s, n],
            running: HashMap::new(),
            creating: HashMap::new(),
            deleting: HashMap::new(),
            binding: HashMap::new(),
            node_relays: HashMap::new(),
            terminating: Arc::default(),
            terminations: tokio::task::JoinSet::new(),
            kubeconfigs: HashMap::new(),
            next_veth: 0,
            rng: svcplane_testenv::rng::Rng::new(seed),
        }
    }

    /// Reconciles until `stop` turns true, then stops every pod it runs and removes their
    /// namespaces.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        for store in [
            self.pods.wait_until_ready().await,
            self.deployments.wait_until_ready().await,
            self.daemonsets.wait_until_ready().await,
            self.nodes.wait_until_ready().await,
        ] {
            if let Err(error) = store {
                tracing::warn!(%error, "agent: a watch never listed");
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Err(error) = self.reconcile().await {
                tracing::warn!(error = %svcplane_runtime::error_chain(&*error), "agent: reconcile failed; retrying");
            }
        }
        self.stop_all().await;
    }

    async fn stop_all(&mut self) {
        for handle in &self.watches {
            handle.abort();
        }
        let all: Vec<String> = self.running.keys().cloned().collect();
        let stops = all
            .into_iter()
            .filter_map(|uid| self.running.remove(&uid))
            .map(|r| stop_pod(r, SHUTDOWN_GRACE));
        futures::future::join_all(stops).await;
        // Pods still in their grace period are killed (dropping their task kills the process);
        // the cluster removes their namespaces.
        self.terminations.abort_all();
        self.node_relays.clear();
    }

    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let pods = self.pods.state();
        let seen: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        for names in self.creating.values_mut() {
            names.retain(|name, at| {
                !seen.contains(name.as_str()) && now - *at < Duration::from_secs(30)
            });
        }
        self.deleting
            .retain(|_, at| now - *at < Duration::from_secs(5));
        self.binding
            .retain(|_, at| now - *at < Duration::from_secs(5));
        self.deployments(&pods).await?;
        self.daemonsets(&pods).await?;
        self.schedule(&pods).await?;
        self.kubelets(&pods).await?;
        Ok(())
    }

    // ---- Deployment controller ------------------------------------------------------------

    async fn deployments(&mut self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        for d in self.deployments.state() {
            let (Some(ns), Some(name), Some(uid)) = (
                d.metadata.namespace.clone(),
                d.metadata.name.clone(),
                d.metadata.uid.clone(),
            ) else {
                continue;
            };
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let spec = &d.spec;
            let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
            let mut owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| owned_by(p, &uid) && alive(p))
                .filter(|p| !self.deleting.contains_key(&key(p)))
                .collect();
            let creating = self.creating.get(&uid).map_or(0, HashMap::len);
            let have = owned.len() + creating;
            if have < want {
                for _ in have..want {
                    let pod_name = format!("{name}-{}", self.suffix());
                    let pod = from_template(
                        &d.metadata,
                        "Deployment",
                        &spec.template,
                        &ns,
                        &pod_name,
                        None,
                    );
                    Api::<Pod>::namespaced(self.client.clone(), &ns)
                        .create(&PostParams::default(), &pod)
                        .await
                        .with_context(|| {
                            format!("creating pod {ns}/{pod_name} for Deployment {name}")
                        })?;
                    self.creating
                        .entry(uid.clone())
                        .or_default()
                        .insert(pod_name, Instant::now());
                }
            } else if owned.len() > want && creating == 0 {
                // Unscheduled first, then not ready, then the newest (as ReplicaSets choose).
                owned.sort_by_key(|p| {
                    (
                        p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some(),
                        crate::pod_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                    )
                });
                for p in owned.iter().take(owned.len() - want) {
                    let pod_name = p.metadata.name.clone().unwrap_or_default();
                    delete_gracefully(&self.client, &ns, &pod_name).await?;
                    self.deleting.insert(key(p), Instant::now());
                }
            }
            let ready = owned.iter().filter(|p| crate::pod_ready(p)).count();
            let status = json!({
                "observedGeneration": d.metadata.generation,
                "replicas": owned.len(),
                "updatedReplicas": owned.len(),
                "readyReplicas": ready,
                "availableReplicas": ready,
            });
            let current = d.status.as_ref().map(|s| {
                json!({
                    "observedGeneration": s.observed_generation,
                    "replicas": s.replicas.unwrap_or(0),
                    "updatedReplicas": s.updated_replicas.unwrap_or(0),
                    "readyReplicas": s.ready_replicas.unwrap_or(0),
                    "availableReplicas": s.available_replicas.unwrap_or(0),
                })
            });
            if current.as_ref() != Some(&status) {
                Api::<Deployment>::namespaced(self.client.clone(), &ns)
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({ "status": status })),
                    )
                    .await
                    .with_context(|| format!("status of Deployment {ns}/{name}"))?;
            }
        }
        Ok(())
    }

    // ---- DaemonSet controller -------------------------------------------------------------

    async fn daemonsets(&mut self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        for ds in self.daemonsets.state() {
            let (Some(ns), Some(name), Some(uid)) = (
                ds.metadata.namespace.clone(),
                ds.metadata.name.clone(),
                ds.metadata.uid.clone(),
            ) else {
                continue;
            };
            let spec = &ds.spec;
            if ds.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let nodes = self.nodes.state();
            let eligible: Vec<String> = nodes
                .iter()
                .filter(|n| {
                    selects(
                        spec.template
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_selector.as_ref()),
                        n,
                    )
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            let mut ready = 0;
            let mut scheduled = 0;
            for node in &eligible {
                let mine: Vec<&Arc<Pod>> = pods
                    .iter()
                    .filter(|p| owned_by(p, &uid) && alive(p) && node_of(p) == Some(node.as_str()))
                    .collect();
                scheduled += usize::from(!mine.is_empty());
                ready += mine.iter().filter(|p| crate::pod_ready(p)).count().min(1);
                let creating = self
                    .creating
                    .get(&uid)
                    .is_some_and(|c| c.keys().any(|k| k.ends_with(&format!("@{node}"))));
                if mine.is_empty() && !creating {
                    let pod_name = format!("{name}-{}", self.suffix());
                    let pod = from_template(
                        &ds.metadata,
                        "DaemonSet",
                        &spec.template,
                        &ns,
                        &pod_name,
                        Some(node),
                    );
                    Api::<Pod>::namespaced(self.client.clone(), &ns)
                        .create(&PostParams::default(), &pod)
                        .await
                        .with_context(|| {
                            format!("creating pod {ns}/{pod_name} for DaemonSet {name}")
                        })?;
                    // Keyed by name and node, so the node is not given a second one meanwhile.
                    self.creating
                        .entry(uid.clone())
                        .or_default()
                        .insert(format!("{pod_name}@{node}"), Instant::now());
                }
            }
            // "name@node" entries are cleared by time, not by sight: clear the seen ones here.
            if let Some(c) = self.creating.get_mut(&uid) {
                c.retain(|k, _| {
                    let name = k.split('@').next().unwrap_or_default();
                    !pods
                        .iter()
                        .any(|p| p.metadata.name.as_deref() == Some(name))
                });
            }
            let status = json!({
                "desiredNumberScheduled": eligible.len(),
                "currentNumberScheduled": scheduled,
                "updatedNumberScheduled": scheduled,
                "numberReady": ready,
                "numberAvailable": ready,
                "numberMisscheduled": 0,
                "observedGeneration": ds.metadata.generation,
            });
            let current = ds.status.as_ref().map(|s| {
                json!({
                    "desiredNumberScheduled": s.desired_number_scheduled,
                    "currentNumberScheduled": s.current_number_scheduled,
                    "updatedNumberScheduled": s.updated_number_scheduled.unwrap_or(0),
                    "numberReady": s.number_ready,
                    "numberAvailable": s.number_available.unwrap_or(0),
                    "numberMisscheduled": s.number_misscheduled,
                    "observedGeneration": s.observed_generation,
                })
            });
            if current.as_ref() != Some(&status) {
                Api::<DaemonSet>::namespaced(self.client.clone(), &ns)
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({ "status": status })),
                    )
                    .await
                    .with_context(|| format!("status of DaemonSet {ns}/{name}"))?;
            }
        }
        Ok(())
    }

    fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| ALPHABET[self.rng.below(ALPHABET.len())] as char)
            .collect()
    }

    // ---- Scheduler ------------------------------------------------------------------------

    async fn schedule(&mut self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        let nodes = self.nodes.state();
        let mut load: BTreeMap<String, usize> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .map(|n| (n, 0))
            .collect();
        // Pods of one owner per node: replicas spread first, as kube-scheduler's default
        // topology spreading does, then the least-loaded node.
        let owner = |p: &Pod| p.owner_references().first().map(|o| o.uid.clone());
        let mut siblings: HashMap<(String, String), usize> = HashMap::new();
        for p in pods.iter().filter(|p| alive(p)) {
            if let Some(n) = node_of(p).and_then(|n| load.get_mut(n)) {
                *n += 1;
            }
            if let (Some(o), Some(n)) = (owner(p), node_of(p)) {
                *siblings.entry((o, n.to_owned())).or_default() += 1;
            }
        }
        for p in pods {
            if node_of(p).is_some() || !alive(p) || self.binding.contains_key(&key(p)) {
                continue;
            }
            let selector = p.spec.as_ref().and_then(|s| s.node_selector.as_ref());
            let Some(node) = nodes
                .iter()
                .filter(|n| selects(selector, n) && node_ready(n))
                .filter_map(|n| n.metadata.name.clone())
                .min_by_key(|n| {
                    let same =
                        owner(p).map_or(0, |o| siblings.get(&(o, n.clone())).copied().unwrap_or(0));
                    (same, load.get(n).copied().unwrap_or(0), n.clone())
                })
            else {
                continue;
            };
            let (ns, name) = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": { "name": name, "namespace": ns },
                "target": { "apiVersion": "v1", "kind": "Node", "name": node },
            });
            Api::<Pod>::namespaced(self.client.clone(), &ns)
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .with_context(|| format!("binding pod {ns}/{name} to {node}"))?;
            if let Some(o) = owner(p) {
                *siblings.entry((o, node.clone())).or_default() += 1;
            }
            *load.entry(node).or_default() += 1;
            self.binding.insert(key(p), Instant::now());
        }
        Ok(())
    }

    // ---- Kubelets -------------------------------------------------------------------------

    async fn kubelets(&mut self, pods: &[Arc<Pod>]) -> anyhow::Result<()> {
        let present: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        // Pods gone from the API: stop them.
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(r) = self.running.remove(&uid) {
                stop_pod(r, SHUTDOWN_GRACE).await;
            }
        }
        while self.terminations.try_join_next().is_some() {}
        for p in pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            let Some(node) =
                node_of(p).and_then(|n| self.settings.nodes.iter().position(|x| x.name == n))
            else {
                continue;
            };
            let (ns, name) = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            if p.metadata.deletion_timestamp.is_some() {
                // Terminating: SIGTERM, the grace period to exit (the API's
                // deletionGracePeriodSeconds, else the pod's terminationGracePeriodSeconds),
                // then confirm the deletion as a kubelet does. In the background: the grace
                // period is the pod's (svcplane-dns answers through its lameduck meanwhile).
                if self.terminating.lock().is_ok_and(|t| t.contains_key(&uid)) {
                    continue;
                }
                if let Some(r) = self.running.remove(&uid) {
                    let grace = p
                        .metadata
                        .deletion_grace_period_seconds
                        .or(p
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds))
                        .unwrap_or(30);
                    let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
                    if let Ok(mut t) = self.terminating.lock() {
                        t.insert(uid.clone(), (r.node, r.host));
                    }
                    let (client, terminating) = (self.client.clone(), self.terminating.clone());
                    self.terminations.spawn(async move {
                        stop_pod(r, grace).await;
                        if let Err(error) = kubelet::delete_pod(&client, &ns, &name).await {
                            tracing::debug!(%error, pod = %name, "agent: deleting a terminated pod");
                        }
                        if let Ok(mut t) = terminating.lock() {
                            t.remove(&uid);
                        }
                    });
                    continue;
                }
                if !self.deleting.contains_key(&format!("confirm {uid}")) {
                    if let Err(error) = kubelet::delete_pod(&self.client, &ns, &name).await {
                        tracing::debug!(%error, pod = %name, "agent: deleting a terminated pod");
                    }
                    self.deleting
                        .insert(format!("confirm {uid}"), Instant::now());
                }
                continue;
            }
            if !alive(p) {
                continue;
            }
            match self.running.get_mut(&uid) {
                None => {
                    let started = self.start_pod(p, node).await;
                    match started {
                        Ok(r) => {
                            tracing::info!(pod = %format!("{ns}/{name}"), netns = %r.netns, ip = %r.ip, "agent: pod started");
                            self.running.insert(uid, r);
                        }
                        Err(error) => {
                            tracing::warn!(pod = %format!("{ns}/{name}"), error = %svcplane_runtime::error_chain(&*error), "agent: starting a pod failed; retrying");
                            // Half-made namespaces go, to be made again.
                            if !is_host_network(p) {
                                net::remove_namespace(&self.settings.names.pod(&ns, &name)).await;
                            }
                        }
                    }
                }
                Some(r) => {
                    // restartPolicy Always, with a pause between restarts.
                    let exited = r
                        .child
                        .as_mut()
                        .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                    if exited && r.started.elapsed() > Duration::from_secs(2) {
                        r.restarts += 1;
                        tracing::warn!(pod = %format!("{ns}/{name}"), restarts = r.restarts, log = %r.log.display(), "agent: container exited; restarting");
                        r.child = Some(spawn(&r.netns, &r.command, &r.env, &r.log)?);
                        r.started = Instant::now();
                        r.reported
                            .restarts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // A new container starts unready and is probed afresh.
                        if let Some(p) = r.prober.take() {
                            p.abort();
                        }
                        r.reported.write(&self.client, r.probe.is_none()).await?;
                        r.prober = r.probe.clone().map(|(port, path, period)| {
                            tokio::spawn(prober(
                                self.client.clone(),
                                r.netns.clone(),
                                r.reported.clone(),
                                port,
                                path,
                                period,
                            ))
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn start_pod(&mut self, p: &Pod, node: usize) -> anyhow::Result<Running> {
        let (ns, name) = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        let spec = p.spec.clone().unwrap_or_default();
        let container = spec
            .containers
            .first()
            .cloned()
            .context("a pod without containers")?;
        let info = self.settings.nodes[node].clone();
        let host_network = spec.host_network == Some(true);
        let (netns, host, ip) = if host_network {
            (info.ns.clone(), None, net::node_ip(info.n))
        } else {
            // Addresses of terminating pods stay taken until their namespace is gone.
            let mut used: HashSet<u8> = self
                .running
                .values()
                .filter(|r| r.node == node)
                .filter_map(|r| r.host)
                .collect();
            if let Ok(t) = self.terminating.lock() {
                used.extend(
                    t.values()
                        .filter(|(n, _)| *n == node)
                        .filter_map(|(_, h)| *h),
                );
            }
            let host = (2..=254u8)
                .find(|h| !used.contains(h))
                .context("node is out of pod addresses")?;
            let netns = self.settings.names.pod(&ns, &name);
            self.next_veth += 1;
            let veth = format!("vp{}", self.next_veth);
            let ip = net::add_pod(&info.ns, info.n, &netns, &veth, host).await?;
            let resolv = match spec.dns_policy.as_deref() {
                // The simulated node has no resolver of its own; nothing leaves the namespaces.
                Some("Default") => {
                    "# svcplane-cluster: the simulated node has no upstream resolver\n".to_owned()
                }
                _ => format!(
                    "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {CLUSTER_DNS}\noptions ndots:5\n"
                ),
            };
            net::write_resolv_conf(&netns, &resolv)?;
            (netns, Some(host), ip)
        };
        let image = container.image.clone().unwrap_or_default();
        let component = image_binary(&image).filter(|b| self.settings.bin_dir.join(b).is_file());
        let mut relay = None;
        let command = match &component {
            Some(binary) => {
                let sa = spec
                    .service_account_name
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let kubeconfig = self.kubeconfig(&ns, &sa).await?;
                if host_network {
                    if !self.node_relays.contains_key(&node) {
                        let r = ApiRelay::start(
                            &netns,
                            API_PORT,
                            self.apiserver(),
                            &self.settings.state_dir,
                        )
                        .await?;
                        self.node_relays.insert(node, r);
                    }
                } else {
                    relay = Some(
                        ApiRelay::start(
                            &netns,
                            API_PORT,
                            self.apiserver(),
                            &self.settings.state_dir,
                        )
                        .await?,
                    );
                }
                let mut command = vec![self.settings.bin_dir.join(binary).display().to_string()];
                command.extend(container.args.clone().unwrap_or_default());
                command.push(format!("--kubeconfig={}", kubeconfig.display()));
                command
            }
            None => {
                let mut command = vec![
                    self.settings
                        .bin_dir
                        .join("svcplane-cluster")
                        .display()
                        .to_string(),
                    "demo-server".into(),
                    format!("--pod={name}"),
                    format!("--node={}", info.name),
                ];
                let ports: Vec<i32> = container
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .map(|p| p.container_port)
                    .collect();
                for port in if ports.is_empty() { vec![8080] } else { ports } {
                    command.push(format!("--port={port}"));
                }
                command
            }
        };
        let env = container_env(&container, p, ip);
        let log = self
            .settings
            .state_dir
            .join("logs")
            .join(format!("{ns}_{name}.log"));
        let child = spawn(&netns, &command, &env, &log)?;
        let probe = readiness(&container);
        let reported = Reported {
            ns: ns.clone(),
            name: name.clone(),
            container: container.name.clone(),
            image,
            ip,
            host_ip: net::node_ip(info.n),
            started: k8s_openapi::jiff::Timestamp::now().to_string(),
            restarts: Arc::default(),
        };
        reported.write(&self.client, probe.is_none()).await?;
        let prober = probe.clone().map(|(port, path, period)| {
            tokio::spawn(prober(
                self.client.clone(),
                netns.clone(),
                reported.clone(),
                port,
                path,
                period,
            ))
        });
        Ok(Running {
            namespace: ns,
            name,
            netns,
            own_netns: !host_network,
            node,
            host,
            ip,
            command,
            env,
            log,
            child: Some(child),
            started: Instant::now(),
            restarts: 0,
            prober,
            probe,
            reported,
            _relay: relay,
        })
    }

    fn apiserver(&self) -> SocketAddr {
        self.settings
            .api_target
            .unwrap_or_else(|| self.env.server_addr())
    }

    /// A kubeconfig with a token of ServiceAccount `namespace/sa`, for 127.0.0.1:6443 inside
    /// the pod's namespace.
    async fn kubeconfig(&mut self, namespace: &str, sa: &str) -> anyhow::Result<PathBuf> {
        let key = (namespace.to_owned(), sa.to_owned());
        if let Some(path) = self.kubeconfigs.get(&key) {
            return Ok(path.clone());
        }
        let token =
            kubelet::service_account_token_valid_for(&self.client, namespace, sa, TOKEN_SECONDS)
                .await?;
        let path = self.env.write_kubeconfig_with_token_via(
            &format!("{namespace}-{sa}.kubeconfig"),
            &token,
            SocketAddr::from(([127, 0, 0, 1], API_PORT)),
        )?;
        self.kubeconfigs.insert(key, path.clone());
        Ok(path)
    }
}

/// Runs `command` inside `netns`; it dies with us (parent-death signal), its output goes to
/// `log`.
fn spawn(
    netns: &str,
    command: &[String],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
        ])
        .args(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    Ok(child)
}

/// How long pods get to exit when the whole cluster stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Stops a pod: SIGTERM, up to `grace` to exit, then SIGKILL; its namespace goes with it.
async fn stop_pod(mut r: Running, grace: Duration) {
    if let Some(p) = r.prober.take() {
        p.abort();
    }
    if let Some(mut child) = r.child.take() {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    if r.own_netns {
        net::remove_namespace(&r.netns).await;
    }
    tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), "agent: pod stopped");
}

/// What a pod's kubelet reports: its status as `kubectl get pods` reads it.
#[derive(Debug, Clone)]
struct Reported {
    ns: String,
    name: String,
    container: String,
    image: String,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    started: String,
    restarts: Arc<std::sync::atomic::AtomicU32>,
}

impl Reported {
    /// Writes phase Running, the IPs, Ready and the container's status.
    async fn write(&self, client: &Client, ready: bool) -> anyhow::Result<()> {
        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let condition =
            |t: &str, s: &str| json!({ "type": t, "status": s, "lastTransitionTime": now });
        let patch = json!({ "status": {
            "phase": "Running",
            "podIP": self.ip.to_string(),
            "podIPs": [{ "ip": self.ip.to_string() }],
            "hostIP": self.host_ip.to_string(),
            "hostIPs": [{ "ip": self.host_ip.to_string() }],
            "startTime": self.started,
            "conditions": [
                condition("PodScheduled", "True"),
                condition("Initialized", "True"),
                condition("ContainersReady", status),
                condition("Ready", status),
            ],
            "containerStatuses": [{
                "name": self.container,
                "image": self.image,
                "imageID": "",
                "ready": ready,
                "started": true,
                "restartCount": self.restarts.load(std::sync::atomic::Ordering::Relaxed),
                "state": { "running": { "startedAt": self.started } },
            }],
        }});
        Api::<Pod>::namespaced(client.clone(), &self.ns)
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("status of pod {}/{}", self.ns, self.name))?;
        Ok(())
    }
}

/// Probes every `period` from inside the pod's namespace; writes Ready when it changes.
#[allow(clippy::too_many_arguments)]
async fn prober(
    client: Client,
    netns: String,
    reported: Reported,
    port: u16,
    path: String,
    period: Duration,
) {
    let mut ready = false;
    let addr = SocketAddr::from((reported.ip, port));
    loop {
        let ok = matches!(
            net::http_get_in(&netns, addr, &path, Duration::from_secs(1)).await,
            Ok((status, _)) if (200..400).contains(&status)
        );
        if ok != ready {
            match reported.write(&client, ok).await {
                Ok(()) => ready = ok,
                Err(error) => {
                    tracing::debug!(error = %svcplane_runtime::error_chain(&*error), pod = %reported.name, "agent: writing readiness")
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// The readiness probe's port, path and period, when it is an httpGet probe.
fn readiness(container: &Container) -> Option<(u16, String, Duration)> {
    let probe = container.readiness_probe.as_ref()?;
    let get = probe.http_get.as_ref()?;
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).ok()?,
        IntOrString::String(named) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(named.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    let period =
        Duration::from_secs(u64::try_from(probe.period_seconds.unwrap_or(10).max(1)).unwrap_or(10));
    Some((port, get.path.clone().unwrap_or_else(|| "/".into()), period))
}

/// The environment a container runtime would give: the container's `env` (literal values and
/// the downward API's fieldRefs) and HOSTNAME, the pod's name.
fn container_env(container: &Container, pod: &Pod, ip: Ipv4Addr) -> Vec<(String, String)> {
    let mut env = vec![(
        "HOSTNAME".to_owned(),
        pod.metadata.name.clone().unwrap_or_default(),
    )];
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            Some(v.clone())
        } else {
            var.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .and_then(|f| match f.field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone(),
                    "metadata.namespace" => pod.metadata.namespace.clone(),
                    "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone()),
                    "status.podIP" | "status.hostIP" => Some(ip.to_string()),
                    _ => None,
                })
        };
        if let Some(value) = value {
            env.push((var.name.clone(), value));
        }
    }
    env
}

/// `svcplane/svcplane-dns:0.1.0` → `svcplane-dns`; only svcplane's own binaries.
pub fn image_binary(image: &str) -> Option<String> {
    let last = image.rsplit('/').next()?;
    let name = last.split([':', '@']).next()?;
    name.starts_with("svcplane-").then(|| name.to_owned())
}

fn from_template(
    owner: &ObjectMeta,
    kind: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    ns: &str,
    name: &str,
    node: Option<&str>,
) -> Pod {
    let mut spec = template.spec.clone().unwrap_or_default();
    if let Some(node) = node {
        spec.node_name = Some(node.to_owned());
    }
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.to_owned());
    meta.namespace = Some(ns.to_owned());
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

async fn delete_gracefully(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    match Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting pod {ns}/{name}")),
    }
}

fn key(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn owned_by(p: &Pod, uid: &str) -> bool {
    p.owner_references().iter().any(|o| o.uid == uid)
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn is_host_network(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// Not deleting and not finished.
fn alive(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Ready and not cordoned: the scheduler may place pods there.
fn node_ready(n: &Node) -> bool {
    !n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
        && n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn selects(selector: Option<&BTreeMap<String, String>>, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}
