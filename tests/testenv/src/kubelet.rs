//! What a kubelet and scheduler would do, done through the API since neither runs: register
//! Nodes, bind Pods, report their status (IPs, phase, readiness) through the status
//! subresource, and finish graceful deletions. Also ServiceAccount tokens for RBAC tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{Error, Result};

/// A Node as a kubelet would register it: zone label, InternalIP, Ready, allocatable CPU.
pub async fn create_node(
    client: &Client,
    name: &str,
    zone: Option<&str>,
    ip: IpAddr,
) -> Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::from([("kubernetes.io/hostname".to_owned(), name.to_owned())]);
    if let Some(zone) = zone {
        labels.insert("topology.kubernetes.io/zone".to_owned(), zone.to_owned());
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &node).await?;
    let status = json!({ "status": {
        "addresses": [
            { "type": "InternalIP", "address": ip.to_string() },
            { "type": "Hostname", "address": name },
        ],
        "allocatable": { "cpu": "4", "memory": "16Gi", "pods": "110" },
        "capacity": { "cpu": "4", "memory": "16Gi", "pods": "110" },
        "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady" }],
    }});
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?)
}

/// Creates a namespace (no controller manager does it for us, nor its default ServiceAccount).
pub async fn create_namespace(client: &Client, name: &str) -> Result<Namespace> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?)
}

/// A pod template: one container `app`, labels, optional node binding and named ports.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Pod,
}

impl PodBuilder {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            pod: Pod {
                metadata: ObjectMeta {
                    namespace: Some(namespace.to_owned()),
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.invalid/svcplane/app:test".into()),
                        ..Default::default()
                    }],
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
                status: None,
            },
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.pod
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Binds the pod to a node, as the scheduler would at creation.
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_owned());
        self
    }

    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        self.spec().containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                name: Some(name.to_owned()),
                container_port: port,
                protocol: Some(protocol.to_owned()),
                ..Default::default()
            });
        self
    }

    pub fn hostname(mut self, hostname: &str, subdomain: &str) -> Self {
        let spec = self.spec();
        spec.hostname = Some(hostname.to_owned());
        spec.subdomain = Some(subdomain.to_owned());
        self
    }

    pub fn build(self) -> Pod {
        self.pod
    }

    pub async fn create(self, client: &Client) -> Result<Pod> {
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        Ok(Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &self.pod)
            .await?)
    }

    fn spec(&mut self) -> &mut PodSpec {
        self.pod.spec.get_or_insert_with(Default::default)
    }
}

/// Reports a running pod's status as its kubelet would: phase Running, the IPs, and the Ready
/// (and ContainersReady) condition, stamped with the time it changed.
pub async fn set_pod_running(
    client: &Client,
    namespace: &str,
    name: &str,
    ips: &[IpAddr],
    ready: bool,
) -> Result<Pod> {
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ips: Vec<_> = ips
        .iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect();
    let patch = json!({ "status": {
        "phase": "Running",
        "podIP": ips.first().map(|v| v["ip"].clone()),
        "podIPs": ips,
        "conditions": [
            { "type": "Ready", "status": status, "lastTransitionTime": now },
            { "type": "ContainersReady", "status": status, "lastTransitionTime": now },
        ],
    }});
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Sets the phase. A finished pod (`Succeeded` or `Failed`) is also reported not ready, in the
/// same status write, as a kubelet does when its containers stop.
pub async fn set_pod_phase(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: &str,
) -> Result<Pod> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let mut patch = json!({ "status": { "phase": phase } });
    if matches!(phase, "Succeeded" | "Failed") {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        // Conditions are a list: replace it whole, keeping the others.
        let current = api.get(name).await?;
        let mut conditions: Vec<serde_json::Value> = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "Ready" && c.type_ != "ContainersReady")
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        for type_ in ["Ready", "ContainersReady"] {
            conditions.push(json!({ "type": type_, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now }));
        }
        patch["status"]["conditions"] = json!(conditions);
    }
    Ok(api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// Starts a graceful deletion: the pod gets a deletionTimestamp and stays, terminating, until
/// [`delete_pod`] plays the kubelet confirming it. Only a pod bound to a node and not finished
/// terminates gracefully; others the API server deletes at once.
pub async fn mark_pod_terminating(client: &Client, namespace: &str, name: &str) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dp = DeleteParams {
        grace_period_seconds: Some(3600),
        ..Default::default()
    };
    api.delete(name, &dp).await?;
    let pod = api.get(name).await?;
    if pod.metadata.deletion_timestamp.is_none() {
        return Err(Error::Precondition(format!(
            "pod {namespace}/{name} was not left terminating (is it bound to a node?)"
        )));
    }
    Ok(pod)
}

/// Deletes a pod for good (grace period 0), as a kubelet does once containers have stopped.
pub async fn delete_pod(client: &Client, namespace: &str, name: &str) -> Result<()> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

/// Creates the ServiceAccount if needed and mints a one-hour token for it.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    service_account_token_valid_for(client, namespace, name, 3600).await
}

/// Like [`service_account_token`], valid for `seconds`.
pub async fn service_account_token_valid_for(
    client: &Client,
    namespace: &str,
    name: &str,
    seconds: i64,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if api.get_opt(name).await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &sa).await?;
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| Error::Precondition(format!("no token issued for {namespace}/{name}")))
}
