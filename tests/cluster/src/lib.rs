//! svcplane-cluster: one command, a whole local Service plane. It starts the pinned etcd and
//! kube-apiserver (svcplane-testenv), simulated nodes and pods as network namespaces, applies
//! `deploy/` as `kubectl apply -k deploy/` would, and runs all four svcplane binaries from this
//! checkout as the pods those manifests describe; the demo app then answers
//! `dig @10.96.0.10 web.demo.svc.cluster.local` and `curl http://web.demo.svc.cluster.local/`
//! from a pod's namespace.
//!
//! The parts a cluster brings and svcplane does not replace (Deployment and DaemonSet
//! controllers, scheduler, kubelets) are played by [`agent`], small and through the API.

pub mod agent;
pub mod api_faults;
pub mod churn;
mod cluster;
pub mod demo;
pub mod egress;
pub mod net;
pub mod oracle;
pub mod probe;

pub use cluster::{COMPONENTS, Cluster, Options, deploy_dir, deploy_manifests};

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
