//! A seeded churn workload for the fault suite: in namespace `churn`, Services are created
//! (ClusterIP, NodePort, LoadBalancer, headless, ExternalName), changed (selector, type, port)
//! and deleted; Deployments scale; pods flip readiness and are deleted; a node is drained and
//! removed, then added back. Everything goes through the API (and the pods' own readiness
//! switches), so the components see what a busy cluster shows them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::rng::Rng;

use crate::Cluster;

/// The namespace the workload lives in.
pub const NAMESPACE: &str = "churn";
/// The Deployments Services select from.
pub const APPS: usize = 3;
/// At most this many pods in all: scaling stops there (two cores run the whole cluster).
const MAX_PODS: i32 = 9;

/// The kinds of Service the workload makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    Headless,
    ExternalName,
}

const KINDS: [Kind; 5] = [
    Kind::ClusterIp,
    Kind::NodePort,
    Kind::LoadBalancer,
    Kind::Headless,
    Kind::ExternalName,
];

/// The workload's state and its random source.
#[derive(Debug)]
pub struct Churn {
    rng: Rng,
    next: usize,
    /// Services the workload made and has not deleted.
    pub services: BTreeMap<String, Kind>,
    /// Services it deleted (they must not resolve nor have endpoints).
    pub deleted: BTreeSet<String>,
    /// Nodes it removed and has not added back.
    pub removed_nodes: BTreeSet<String>,
    /// Operations done so far.
    pub ops: usize,
}

fn deployment(app: usize, replicas: i32) -> serde_json::Value {
    let name = format!("app-{app}");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{
                    "name": "http",
                    "image": "svcplane.local/demo-http:1",
                    "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
                    "readinessProbe": {
                        "httpGet": { "path": "/ready", "port": "http" },
                        "periodSeconds": 1,
                    },
                }]},
            },
        },
    })
}

fn service(name: &str, kind: Kind, app: usize, port: i32) -> serde_json::Value {
    let mut spec = match kind {
        Kind::ExternalName => {
            json!({ "type": "ExternalName", "externalName": format!("{name}.example.test") })
        }
        Kind::Headless => json!({ "clusterIP": "None" }),
        Kind::ClusterIp => json!({ "type": "ClusterIP" }),
        Kind::NodePort => json!({ "type": "NodePort" }),
        Kind::LoadBalancer => json!({ "type": "LoadBalancer" }),
    };
    if kind != Kind::ExternalName {
        spec["selector"] = json!({ "app": format!("app-{app}") });
        spec["ports"] = json!([{ "name": "http", "port": port, "targetPort": "http" }]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": spec,
    })
}

impl Churn {
    /// Creates the namespace, the Deployments (two replicas each) and a first Service of each
    /// kind, and waits until the pods are ready.
    pub async fn setup(cluster: &Cluster, seed: u64) -> anyhow::Result<Churn> {
        let client = cluster.client().clone();
        svcplane_testenv::kubelet::create_namespace(&client, NAMESPACE).await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
        for app in 0..APPS {
            deployments
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(deployment(app, 2))?,
                )
                .await?;
        }
        let mut churn = Churn {
            rng: Rng::new(seed),
            next: 0,
            services: BTreeMap::new(),
            deleted: BTreeSet::new(),
            removed_nodes: BTreeSet::new(),
            ops: 0,
        };
        for kind in KINDS {
            churn.create_service(cluster, kind).await?;
        }
        Ok(churn)
    }

    async fn create_service(&mut self, cluster: &Cluster, kind: Kind) -> anyhow::Result<String> {
        let name = format!("s-{}", self.next);
        self.next += 1;
        let app = self.rng.below(APPS);
        let port = 80 + i32::try_from(self.rng.below(3))?;
        Api::<Service>::namespaced(cluster.client().clone(), NAMESPACE)
            .create(
                &PostParams::default(),
                &serde_json::from_value(service(&name, kind, app, port))?,
            )
            .await
            .with_context(|| format!("creating {name} ({kind:?})"))?;
        self.services.insert(name.clone(), kind);
        Ok(format!("created {name} {kind:?} app-{app}:{port}"))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.rng.below(items.len())])
    }

    async fn app_pods(&self, cluster: &Cluster) -> anyhow::Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(cluster.client().clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// One random operation; what it did, for the log. An operation the API refuses (a
    /// conflict with a controller's write, say) is reported, not fatal.
    pub async fn step(&mut self, cluster: &Cluster) -> String {
        self.ops += 1;
        match self.try_step(cluster).await {
            Ok(did) => did,
            Err(e) => format!("refused: {e:#}"),
        }
    }

    async fn try_step(&mut self, cluster: &Cluster) -> anyhow::Result<String> {
        let client = cluster.client().clone();
        let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
        let names: Vec<String> = self.services.keys().cloned().collect();
        match self.rng.below(100) {
            // Create.
            0..20 if self.services.len() < 14 => {
                let kind = KINDS[self.rng.below(KINDS.len())];
                self.create_service(cluster, kind).await
            }
            // Delete.
            20..32 if self.services.len() > 4 => {
                let name = self.pick(&names).cloned().context("no Service")?;
                services.delete(&name, &DeleteParams::default()).await?;
                self.services.remove(&name);
                self.deleted.insert(name.clone());
                Ok(format!("deleted {name}"))
            }
            // Change the selector, the type, or the port.
            32..50 => {
                let name = self.pick(&names).cloned().context("no Service")?;
                let kind = self.services[&name];
                if kind == Kind::ExternalName {
                    let target = format!("{name}-{}.example.test", self.rng.below(100));
                    let patch = json!({"spec": {"externalName": target}});
                    services
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    return Ok(format!("{name} now names {target}"));
                }
                let patch = match self.rng.below(3) {
                    0 => {
                        json!({"spec": {"selector": {"app": format!("app-{}", self.rng.below(APPS))}}})
                    }
                    1 if matches!(kind, Kind::ClusterIp | Kind::NodePort) => {
                        let (to, now) = if kind == Kind::ClusterIp {
                            ("NodePort", Kind::NodePort)
                        } else {
                            ("ClusterIP", Kind::ClusterIp)
                        };
                        self.services.insert(name.clone(), now);
                        json!({"spec": {"type": to}})
                    }
                    _ => {
                        let port = 80 + i32::try_from(self.rng.below(3))?;
                        let current = services.get(&name).await?;
                        let mut ports = serde_json::to_value(
                            current.spec.and_then(|s| s.ports).unwrap_or_default(),
                        )?;
                        if let Some(first) = ports.get_mut(0) {
                            first["port"] = json!(port);
                        }
                        json!({"spec": {"ports": ports}})
                    }
                };
                services
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(format!("changed {name}: {patch}"))
            }
            // Scale.
            50..62 => {
                let app = self.rng.below(APPS);
                let others: i32 = {
                    let list = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
                        .list(&ListParams::default())
                        .await?;
                    list.items
                        .iter()
                        .filter(|d| d.metadata.name.as_deref() != Some(&format!("app-{app}")))
                        .map(|d| d.spec.replicas.unwrap_or(1))
                        .sum()
                };
                let replicas = i32::try_from(self.rng.below(4))?.min((MAX_PODS - others).max(0));
                Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
                    .patch(
                        &format!("app-{app}"),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
                    )
                    .await?;
                Ok(format!("scaled app-{app} to {replicas}"))
            }
            // Flip a pod's readiness.
            62..82 => {
                let pods = self.app_pods(cluster).await?;
                let pod = self.pick(&pods).context("no pod")?.clone();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let to = if crate::pod_ready(&pod) {
                    "fail"
                } else {
                    "pass"
                };
                cluster
                    .pod_http(NAMESPACE, &name, 8080, &format!("/readiness/{to}"))
                    .await
                    .with_context(|| format!("readiness of {name}"))?;
                Ok(format!("readiness {to} on {name}"))
            }
            // Delete a pod (its Deployment replaces it).
            82..94 => {
                let pods = self.app_pods(cluster).await?;
                let name = self
                    .pick(&pods)
                    .and_then(|p| p.metadata.name.clone())
                    .context("no pod")?;
                Api::<Pod>::namespaced(client, NAMESPACE)
                    .delete(&name, &DeleteParams::default())
                    .await?;
                Ok(format!("deleted pod {name}"))
            }
            // Remove the last node, or add it back (node-1 carries the webhook's egress, the
            // external host's route and the client pod, so it stays).
            94..100 if cluster.nodes().len() > 2 => {
                let node = cluster.nodes().last().context("nodes")?.name.clone();
                if self.removed_nodes.remove(&node) {
                    cluster.add_node_back(&node).await?;
                    Ok(format!("added {node} back"))
                } else {
                    cluster.remove_node(&node).await?;
                    self.removed_nodes.insert(node.clone());
                    Ok(format!("removed {node}"))
                }
            }
            _ => Ok("idle".to_owned()),
        }
    }

    /// `n` operations, `pause` apart; what they did.
    pub async fn burst(&mut self, cluster: &Cluster, n: usize, pause: Duration) -> Vec<String> {
        let mut log = Vec::with_capacity(n);
        for _ in 0..n {
            log.push(self.step(cluster).await);
            tokio::time::sleep(pause).await;
        }
        log
    }

    /// Adds back what the workload removed (so a next phase starts with every node).
    pub async fn restore_nodes(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
        for node in std::mem::take(&mut self.removed_nodes) {
            if Api::<Node>::all(cluster.client().clone())
                .get_opt(&node)
                .await?
                .is_none()
            {
                cluster.add_node_back(&node).await?;
            }
        }
        Ok(())
    }
}

/// The address of node `n` (1-based) on the LAN, port `port`.
pub fn node_addr(n: usize, port: u16) -> SocketAddr {
    SocketAddr::new(crate::net::node_ip(n).into(), port)
}
