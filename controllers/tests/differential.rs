//! svcplane-endpoints against the real thing: kube-controller-manager built from the same pinned
//! Kubernetes module. A seeded random sequence of Service and pod changes is applied to two
//! control planes:
//!
//! - control plane A runs svcplane-endpoints and KCM's `endpointslice-controller` (plus its
//!   garbage collector); the two write slices under different managed-by labels, and for every
//!   Service the endpoints they hold must match (conditions, hostnames, nodes, zones, pods,
//!   ports; slice names and packing may differ);
//! - control plane B runs KCM's `endpoints-controller`; its Endpoints must match the ones
//!   svcplane-endpoints writes on A (both cannot write the same Endpoints on one API server).
//!
//! `SVCPLANE_DIFF_SEED` picks another sequence; a failure prints the seed and the difference.

mod common;

use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod as ApiPod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use svcplane_testenv::TestEnv;
use svcplane_testenv::kubelet::{self, PodBuilder};
use svcplane_testenv::rng::Rng;

const NS: &str = "diff";
const KCM_SLICES: &str = "endpointslice-controller.k8s.io";
const APPS: usize = 5;

#[derive(Clone, Debug)]
struct PodSpec {
    name: String,
    app: usize,
    ip: String,
    node: usize,
    /// The container port named `http`, if any.
    http: Option<i32>,
    /// `hostname`, with the subdomain of the app's Service.
    hostname: bool,
    ready: bool,
    terminating: bool,
}

/// The Services: one per app, each with its own shape.
fn service(app: usize) -> Service {
    let ports = vec![
        service_port("http", 80, IntOrString::String("http".into())),
        service_port("metrics", 9090, IntOrString::Int(9100)),
    ];
    let mut svc = selector_service(
        NS,
        &format!("app{app}"),
        &[("app", &format!("a{app}"))],
        ports,
    );
    let spec = svc.spec.as_mut().expect("spec");
    match app {
        // Headless with ports.
        1 => spec.cluster_ip = Some("None".into()),
        // Publishes not-ready addresses.
        2 => spec.publish_not_ready_addresses = Some(true),
        // Headless without ports.
        3 => {
            spec.cluster_ip = Some("None".into());
            spec.ports = None;
        }
        _ => {}
    }
    svc
}

async fn create_pod(client: &Client, p: &PodSpec) {
    let mut b = PodBuilder::new(NS, &p.name)
        .label("app", &format!("a{}", p.app))
        .node(&format!("node-{}", p.node));
    if let Some(port) = p.http {
        b = b.port("http", port, "TCP");
    }
    if p.hostname {
        b = b.hostname(&p.name, &format!("app{}", p.app));
    }
    running_pod(client, b, &p.ip, p.ready).await;
}

/// One step, applied the same way to every control plane.
#[derive(Debug, Clone)]
enum Step {
    Create(PodSpec),
    Ready(String, String, bool),
    Relabel(String, usize),
    Terminate(String),
    Delete(String),
    Fail(String),
    RecreateService(usize),
}

async fn apply(client: &Client, step: &Step) {
    let pods: Api<ApiPod> = Api::namespaced(client.clone(), NS);
    match step {
        Step::Create(p) => create_pod(client, p).await,
        Step::Ready(name, ip, ready) => {
            kubelet::set_pod_running(client, NS, name, &[ip.parse().expect("ip")], *ready)
                .await
                .expect("readiness");
        }
        Step::Relabel(name, app) => {
            pods.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "app": format!("a{app}") } } })),
            )
            .await
            .expect("relabel");
        }
        Step::Terminate(name) => {
            kubelet::mark_pod_terminating(client, NS, name)
                .await
                .expect("terminate");
        }
        Step::Delete(name) => kubelet::delete_pod(client, NS, name).await.expect("delete"),
        Step::Fail(name) => {
            kubelet::set_pod_phase(client, NS, name, "Failed")
                .await
                .expect("fail");
        }
        Step::RecreateService(app) => {
            let api: Api<Service> = Api::namespaced(client.clone(), NS);
            let name = format!("app{app}");
            api.delete(&name, &DeleteParams::default())
                .await
                .expect("delete Service");
            // Wait until it is gone, then create it again (new UID, new cluster IP).
            for _ in 0..100 {
                if api.get_opt(&name).await.expect("get").is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            create_service(client, &service(*app)).await;
        }
    }
}

/// A random sequence over a world of pods the generator keeps track of.
fn steps(seed: u64, count: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut pods: BTreeMap<String, PodSpec> = BTreeMap::new();
    let mut out = Vec::new();
    let mut serial = 0;
    let new_pod = |rng: &mut Rng, app: usize, serial: &mut usize| {
        *serial += 1;
        PodSpec {
            name: format!("p{serial}"),
            app,
            ip: format!("10.200.{}.{}", *serial / 250, *serial % 250 + 1),
            node: rng.below(4),
            http: match rng.below(3) {
                0 => None,
                1 => Some(8080),
                _ => Some(8081),
            },
            hostname: rng.chance(30),
            ready: rng.chance(70),
            terminating: false,
        }
    };
    // More than one slice's worth behind app0.
    for _ in 0..130 {
        let p = new_pod(&mut rng, 0, &mut serial);
        pods.insert(p.name.clone(), p.clone());
        out.push(Step::Create(p));
    }
    for _ in 0..count {
        let live: Vec<String> = pods
            .values()
            .filter(|p| !p.terminating)
            .map(|p| p.name.clone())
            .collect();
        let pick = |rng: &mut Rng| live[rng.below(live.len())].clone();
        let step = match rng.below(100) {
            0..30 => {
                let app = rng.below(APPS);
                let p = new_pod(&mut rng, app, &mut serial);
                pods.insert(p.name.clone(), p.clone());
                Step::Create(p)
            }
            30..55 => {
                let name = pick(&mut rng);
                let p = pods.get_mut(&name).expect("live");
                p.ready = !p.ready;
                Step::Ready(name, p.ip.clone(), p.ready)
            }
            55..67 => {
                let name = pick(&mut rng);
                let app = rng.below(APPS);
                pods.get_mut(&name).expect("live").app = app;
                Step::Relabel(name, app)
            }
            67..77 => {
                let name = pick(&mut rng);
                pods.get_mut(&name).expect("live").terminating = true;
                Step::Terminate(name)
            }
            77..90 => {
                let name = pick(&mut rng);
                pods.remove(&name);
                Step::Delete(name)
            }
            90..97 => {
                let name = pick(&mut rng);
                pods.remove(&name);
                Step::Fail(name)
            }
            _ => Step::RecreateService(rng.below(APPS)),
        };
        out.push(step);
    }
    out
}

/// Endpoints as comparable lines, with node names and target pods.
fn endpoint_facts(ep: &Endpoints) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in ep.subsets.iter().flatten() {
        let mut ports: Vec<String> = s
            .ports
            .iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}:{}/{}",
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.protocol.clone().unwrap_or_default()
                )
            })
            .collect();
        ports.sort();
        for (ready, list) in [
            ("ready", &s.addresses),
            ("notready", &s.not_ready_addresses),
        ] {
            for a in list.iter().flatten() {
                // One line per (address, port): how the addresses are split into subsets may
                // differ, what each address serves may not.
                for port in if ports.is_empty() {
                    vec![String::new()]
                } else {
                    ports.clone()
                } {
                    out.insert(format!(
                        "{} {ready} {port} host={} node={} pod={}",
                        a.ip,
                        a.hostname.clone().unwrap_or_default(),
                        a.node_name.clone().unwrap_or_default(),
                        a.target_ref
                            .as_ref()
                            .and_then(|r| r.name.clone())
                            .unwrap_or_default(),
                    ));
                }
            }
        }
    }
    out
}

fn over_capacity(ep: &Option<Endpoints>) -> bool {
    ep.as_ref()
        .and_then(|e| e.metadata.annotations.as_ref())
        .is_some_and(|a| a.contains_key("endpoints.kubernetes.io/over-capacity"))
}

async fn differences(a: &Client, b: &Client) -> Vec<String> {
    let mut diffs = Vec::new();
    for app in 0..APPS {
        let name = format!("app{app}");
        let ours = seen(&slices(a, NS, &name, SLICE_MANAGER).await);
        let theirs = seen(&slices(a, NS, &name, KCM_SLICES).await);
        if ours != theirs {
            let o: BTreeSet<_> = ours.iter().map(|s| format!("{s:?}")).collect();
            let t: BTreeSet<_> = theirs.iter().map(|s| format!("{s:?}")).collect();
            diffs.push(format!(
                "{name} slices: only ours {:#?}, only upstream {:#?}",
                o.difference(&t).collect::<Vec<_>>(),
                t.difference(&o).collect::<Vec<_>>()
            ));
        }
        let ours = get_endpoints(a, NS, &name).await;
        let theirs = get_endpoints(b, NS, &name).await;
        let (o, t) = (
            ours.as_ref().map(endpoint_facts),
            theirs.as_ref().map(endpoint_facts),
        );
        if o != t || over_capacity(&ours) != over_capacity(&theirs) {
            let (o, t) = (o.unwrap_or_default(), t.unwrap_or_default());
            diffs.push(format!(
                "{name} Endpoints: only ours {:#?}, only upstream {:#?}",
                o.difference(&t).collect::<Vec<_>>(),
                t.difference(&o).collect::<Vec<_>>()
            ));
        }
    }
    diffs
}

async fn setup(env: &TestEnv) -> Client {
    let client = env.client().await.expect("client");
    kubelet::create_namespace(&client, NS)
        .await
        .expect("namespace");
    for n in 0..4 {
        // node-3 has no zone.
        let zone = (n < 3).then(|| format!("zone-{}", n % 3));
        kubelet::create_node(
            &client,
            &format!("node-{n}"),
            zone.as_deref(),
            format!("192.0.2.{}", n + 1).parse().expect("ip"),
        )
        .await
        .expect("node");
    }
    for app in 0..APPS {
        create_service(&client, &service(app)).await;
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_endpoints_as_kube_controller_manager() {
    let seed: u64 = std::env::var("SVCPLANE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123);
    let count: usize = std::env::var("SVCPLANE_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160);
    println!(
        "differential test: seed {seed}, {count} steps (SVCPLANE_DIFF_SEED, SVCPLANE_DIFF_STEPS)"
    );
    let env_a = TestEnv::start().await.expect("control plane A");
    let env_b = TestEnv::start().await.expect("control plane B");
    let a = setup(&env_a).await;
    let b = setup(&env_b).await;
    let _kcm_slices = env_a
        .start_controller_manager("endpointslice-controller,garbage-collector-controller")
        .await
        .expect("kube-controller-manager on A");
    let _kcm_endpoints = env_b
        .start_controller_manager("endpoints-controller")
        .await
        .expect("kube-controller-manager on B");
    let ours = start(&env_a, &[]);
    wait_ready(&ours).await;

    let plan = steps(seed, count);
    if std::env::var_os("SVCPLANE_DIFF_TRACE").is_some() {
        for (i, step) in plan.iter().enumerate() {
            println!("step {i}: {step:?}");
        }
    }
    let checkpoints = 4;
    let per = plan.len().div_ceil(checkpoints);
    for (i, chunk) in plan.chunks(per).enumerate() {
        for step in chunk {
            apply(&a, step).await;
            apply(&b, step).await;
        }
        let mut last = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            last = differences(&a, &b).await;
            if last.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            last.is_empty(),
            "seed {seed}, checkpoint {i} (after {} steps): svcplane-endpoints and kube-controller-manager differ:\n{}",
            (i + 1) * per,
            last.join("\n")
        );
        println!(
            "checkpoint {i}: {} steps, same endpoints",
            ((i + 1) * per).min(plan.len())
        );
    }
}
