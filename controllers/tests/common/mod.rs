//! Helpers shared by the controller's tests against a real kube-apiserver.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
pub use svcplane_testenv::wait::{eventually, free_port, http_get};

use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use svcplane_testenv::TestEnv;
use svcplane_testenv::kubelet::{self, PodBuilder};

pub const SLICE_MANAGER: &str = "endpointslice.svcplane.dev";
pub const MIRROR_MANAGER: &str = "endpointslicemirroring.svcplane.dev";

/// A running `svcplane-endpoints`; killed on drop.
pub struct Running {
    pub child: Child,
    pub admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(env: &TestEnv, extra: &[&str]) -> Running {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane-endpoints"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .arg(format!("--admin-addr={admin}"))
        .arg("--kube-api-qps=1000")
        .arg("--kube-api-burst=1000")
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .spawn()
        .expect("start svcplane-endpoints");
    Running { child, admin }
}

pub async fn wait_ready(r: &Running) {
    eventually(Duration::from_secs(30), "ready", || async {
        match http_get(r.admin, "/readyz").await.0 {
            200 => Ok(()),
            code => Err(format!("status {code}")),
        }
    })
    .await
}

/// A namespace and Nodes (`(name, zone)`, addresses 192.0.2.1, .2, …) on a fresh control plane.
pub async fn cluster(env: &TestEnv, ns: &str, nodes: &[(&str, Option<&str>)]) -> Client {
    let client = env.client().await.expect("client");
    kubelet::create_namespace(&client, ns)
        .await
        .expect("namespace");
    for (i, (name, zone)) in nodes.iter().enumerate() {
        let ip: IpAddr = format!("192.0.2.{}", i + 1).parse().expect("ip");
        kubelet::create_node(&client, name, *zone, ip)
            .await
            .expect("node");
    }
    client
}

pub fn selector_service(
    ns: &str,
    name: &str,
    selector: &[(&str, &str)],
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(
                selector
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn service_port(name: &str, port: i32, target: IntOrString) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(target),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub async fn create_service(client: &Client, svc: &Service) -> Service {
    let ns = svc.metadata.namespace.clone().expect("namespace");
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), svc)
        .await
        .expect("create Service")
}

/// Creates a pod and reports it running with `ip`.
pub async fn running_pod(client: &Client, builder: PodBuilder, ip: &str, ready: bool) {
    let pod = builder.create(client).await.expect("create pod");
    let ns = pod.metadata.namespace.clone().expect("ns");
    let name = pod.metadata.name.clone().expect("name");
    kubelet::set_pod_running(
        client,
        &ns,
        &name,
        &[ip.parse::<IpAddr>().expect("ip")],
        ready,
    )
    .await
    .expect("pod status");
}

/// One endpoint of a slice as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub pod: Option<String>,
    /// `name:port` pairs of the slice, sorted.
    pub ports: Vec<String>,
}

pub async fn slices(client: &Client, ns: &str, service: &str, manager: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={service},endpointslice.kubernetes.io/managed-by={manager}"
    ));
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("list slices")
        .items
}

/// Every endpoint of a Service's slices by `manager`, sorted; `None` for the conditions
/// upstream leaves unset counts as false.
pub fn seen(slices: &[EndpointSlice]) -> Vec<Seen> {
    let mut out = Vec::new();
    for s in slices {
        let mut ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}:{}",
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or(0)
                )
            })
            .collect();
        ports.sort();
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            for ip in &e.addresses {
                out.push(Seen {
                    ip: ip.clone(),
                    ready: c.ready.unwrap_or(false),
                    serving: c.serving.unwrap_or(false),
                    terminating: c.terminating.unwrap_or(false),
                    hostname: e.hostname.clone(),
                    node: e.node_name.clone(),
                    zone: e.zone.clone(),
                    pod: e.target_ref.as_ref().and_then(|r| r.name.clone()),
                    ports: ports.clone(),
                });
            }
        }
    }
    out.sort();
    out
}

/// Endpoints subsets flattened to sorted `ip ready|notready port,port` lines.
pub fn endpoints_lines(ep: &Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for s in ep.subsets.iter().flatten() {
        let mut ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .map(|p| format!("{}:{}", p.name.clone().unwrap_or_default(), p.port))
            .collect();
        ports.sort();
        let ports = ports.join(",");
        for a in s.addresses.iter().flatten() {
            out.push(format!(
                "{} ready {} {}",
                a.ip,
                ports,
                a.hostname.clone().unwrap_or_default()
            ));
        }
        for a in s.not_ready_addresses.iter().flatten() {
            out.push(format!(
                "{} notready {} {}",
                a.ip,
                ports,
                a.hostname.clone().unwrap_or_default()
            ));
        }
    }
    out.sort();
    out.iter().map(|l| l.trim_end().to_owned()).collect()
}

pub async fn get_endpoints(client: &Client, ns: &str, name: &str) -> Option<Endpoints> {
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get Endpoints")
}
