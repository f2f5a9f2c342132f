//! The pieces of `bench/endpoints.sh`, which compares svcplane-endpoints with
//! kube-controller-manager on one API server:
//!
//!   bench populate  --kubeconfig KC --services 5000 --pods 10 --nodes 500
//!   bench converge  --kubeconfig KC --manager M --services 5000 --pods 10
//!   bench flips     --kubeconfig KC --manager M --count 200
//!   bench writes    --kubeconfig KC
//!   bench clean     --kubeconfig KC
//!
//! `converge` watches until every Service has all its pods ready in both its Endpoints and its
//! slices managed by `M`, and prints the seconds that took. `flips` flips one pod's readiness
//! at a time and times until the slice shows it. `writes` prints the API server's count of
//! endpoints/endpointslices writes so far. `clean` deletes every Endpoints the controllers
//! wrote, so the next one starts from nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Endpoints, Namespace, Node, Pod, PodSpec, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Populate {
        #[arg(long, default_value_t = 5000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        pods: usize,
        #[arg(long, default_value_t = 500)]
        nodes: usize,
        #[arg(long, default_value_t = 50)]
        namespaces: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    Converge {
        #[arg(long)]
        manager: String,
        #[arg(long, default_value_t = 5000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        pods: usize,
        #[arg(long, default_value_t = 1800)]
        timeout_seconds: u64,
    },
    Flips {
        #[arg(long)]
        manager: String,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 5000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        pods: usize,
        #[arg(long, default_value_t = 50)]
        namespaces: usize,
    },
    Writes,
    Clean {
        #[arg(long, default_value_t = 50)]
        namespaces: usize,
    },
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_owned),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

fn ns_of(i: usize, namespaces: usize) -> String {
    format!("bench-{}", i % namespaces)
}

fn pod_ip(n: usize) -> String {
    format!("10.{}.{}.{}", 64 + n / 65_536, (n / 256) % 256, n % 256)
}

async fn run_all<F>(concurrency: usize, jobs: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let results: Vec<anyhow::Result<()>> = stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn populate(
    client: Client,
    services: usize,
    pods: usize,
    nodes: usize,
    namespaces: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let pp = PostParams::default();
    run_all(
        concurrency,
        (0..namespaces).map(|j| {
            let api = Api::<Namespace>::all(client.clone());
            let pp = pp.clone();
            async move {
                api.create(
                    &pp,
                    &Namespace {
                        metadata: meta(None, &format!("bench-{j}")),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(())
            }
        }),
    )
    .await?;
    run_all(
        concurrency,
        (0..nodes).map(|n| {
            let api = Api::<Node>::all(client.clone());
            let pp = pp.clone();
            async move {
                let name = format!("node-{n}");
                let mut m = meta(None, &name);
                m.labels = Some(BTreeMap::from([
                    ("kubernetes.io/hostname".into(), name.clone()),
                    (
                        "topology.kubernetes.io/zone".into(),
                        format!("zone-{}", n % 3),
                    ),
                ]));
                api.create(
                    &pp,
                    &Node {
                        metadata: m,
                        ..Default::default()
                    },
                )
                .await?;
                let status = json!({ "status": {
                    "allocatable": { "cpu": "8", "memory": "32Gi", "pods": "110" },
                    "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady" }],
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                Ok(())
            }
        }),
    )
    .await?;
    eprintln!(
        "namespaces and nodes: {:.1}s",
        start.elapsed().as_secs_f64()
    );
    run_all(
        concurrency,
        (0..services).map(|i| {
            let ns = ns_of(i, namespaces);
            let api = Api::<Service>::namespaced(client.clone(), &ns);
            let pp = pp.clone();
            async move {
                let name = format!("svc-{i}");
                let svc = Service {
                    metadata: meta(Some(&ns), &name),
                    spec: Some(ServiceSpec {
                        selector: Some(BTreeMap::from([("app".into(), name.clone())])),
                        ports: Some(vec![ServicePort {
                            name: Some("http".into()),
                            port: 80,
                            target_port: Some(IntOrString::String("http".into())),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    status: None,
                };
                api.create(&pp, &svc).await?;
                Ok(())
            }
        }),
    )
    .await?;
    eprintln!("services: {:.1}s", start.elapsed().as_secs_f64());
    run_all(concurrency, (0..services * pods).map(|n| {
        let i = n / pods;
        let ns = ns_of(i, namespaces);
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        let pp = pp.clone();
        async move {
            let name = format!("svc-{i}-{}", n % pods);
            let mut m = meta(Some(&ns), &name);
            m.labels = Some(BTreeMap::from([("app".into(), format!("svc-{i}"))]));
            let pod = Pod {
                metadata: m,
                spec: Some(PodSpec {
                    node_name: Some(format!("node-{}", n % nodes)),
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.invalid/bench:1".into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
                status: None,
            };
            api.create(&pp, &pod).await?;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({ "status": {
                "phase": "Running",
                "podIP": pod_ip(n),
                "podIPs": [{ "ip": pod_ip(n) }],
                "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }],
            }});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            Ok(())
        }
    }))
    .await?;
    println!(
        "populated services={services} pods={} nodes={nodes} seconds={:.1}",
        services * pods,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn service_of(labels: &BTreeMap<String, String>, ns: &str) -> Option<String> {
    Some(format!(
        "{ns}/{}",
        labels.get("kubernetes.io/service-name")?
    ))
}

/// Ready endpoints per slice, summed per Service; Endpoints ready addresses per Service.
async fn converge(
    client: Client,
    manager: &str,
    services: usize,
    pods: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default()
            .labels(&format!("endpointslice.kubernetes.io/managed-by={manager}")),
    )
    .map(|e| e.map(Either::Slice));
    let endpoints = watcher::watcher(Api::<Endpoints>::all(client), watcher::Config::default())
        .map(|e| e.map(Either::Endpoints));
    let mut events = pin!(stream::select(slices, endpoints));
    // slice key → (service, ready count); service → ready addresses in Endpoints.
    let mut slice_ready: HashMap<String, (String, usize)> = HashMap::new();
    let mut per_service: HashMap<String, usize> = HashMap::new();
    let mut ep_ready: HashMap<String, usize> = HashMap::new();
    let complete = |per_service: &HashMap<String, usize>, ep_ready: &HashMap<String, usize>| {
        per_service.values().filter(|n| **n == pods).count() >= services
            && ep_ready.values().filter(|n| **n == pods).count() >= services
    };
    let deadline = tokio::time::sleep(timeout);
    let mut deadline = pin!(deadline);
    loop {
        let event = tokio::select! {
            _ = &mut deadline => anyhow::bail!(
                "not converged in {timeout:?}: slices complete for {}, Endpoints for {}",
                per_service.values().filter(|n| **n == pods).count(),
                ep_ready.values().filter(|n| **n == pods).count()
            ),
            e = events.next() => match e {
                Some(Ok(e)) => e,
                Some(Err(error)) => { eprintln!("watch: {error}"); continue }
                None => anyhow::bail!("watch ended"),
            },
        };
        match event {
            Either::Slice(Event::Apply(s) | Event::InitApply(s)) => {
                let ns = s.namespace().unwrap_or_default();
                let key = format!("{ns}/{}", s.name_any());
                let Some(svc) = service_of(s.labels(), &ns) else {
                    continue;
                };
                let ready = s
                    .endpoints
                    .iter()
                    .flatten()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .count();
                if let Some((old_svc, old)) = slice_ready.insert(key, (svc.clone(), ready)) {
                    *per_service.entry(old_svc).or_default() -= old;
                }
                *per_service.entry(svc).or_default() += ready;
            }
            Either::Slice(Event::Delete(s)) => {
                let key = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
                if let Some((svc, old)) = slice_ready.remove(&key) {
                    *per_service.entry(svc).or_default() -= old;
                }
            }
            Either::Endpoints(Event::Apply(e) | Event::InitApply(e)) => {
                let key = format!("{}/{}", e.namespace().unwrap_or_default(), e.name_any());
                let ready = e
                    .subsets
                    .iter()
                    .flatten()
                    .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                    .sum();
                ep_ready.insert(key, ready);
            }
            Either::Endpoints(Event::Delete(e)) => {
                ep_ready.remove(&format!(
                    "{}/{}",
                    e.namespace().unwrap_or_default(),
                    e.name_any()
                ));
            }
            _ => {}
        }
        if complete(&per_service, &ep_ready) {
            println!("converged_seconds {:.2}", start.elapsed().as_secs_f64());
            return Ok(());
        }
    }
}

enum Either {
    Slice(Event<EndpointSlice>),
    Endpoints(Event<Endpoints>),
}

async fn flips(
    client: Client,
    manager: &str,
    count: usize,
    services: usize,
    pods: usize,
    namespaces: usize,
) -> anyhow::Result<()> {
    let mut latencies = Vec::with_capacity(count);
    let mut state = 7u64;
    // Pairs: a pod turns unready, then ready again, each timed; the cluster ends as it began.
    while latencies.len() < count {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (state >> 33) as usize % (services * pods);
        let i = n / pods;
        let ns = ns_of(i, namespaces);
        let name = format!("svc-{i}-{}", n % pods);
        for want in [false, true] {
            let took = flip(&client, manager, &ns, i, &name, &pod_ip(n), want).await?;
            latencies.push(took);
        }
    }
    // Where the slowest flips fell in the sequence (stderr: a diagnostic, not a result).
    let mut worst: Vec<(usize, Duration)> = latencies.iter().copied().enumerate().collect();
    worst.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    let worst: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(i, d)| format!("#{i} {:.1}ms", d.as_secs_f64() * 1e3))
        .collect();
    eprintln!("slowest flips: {}", worst.join(", "));
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "flip_p50_ms {:.1}\nflip_p99_ms {:.1}",
        q(0.50).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

/// Sets one pod's readiness and times until its Service's slice shows it.
async fn flip(
    client: &Client,
    manager: &str,
    ns: &str,
    service: usize,
    name: &str,
    ip: &str,
    want: bool,
) -> anyhow::Result<Duration> {
    let pod_api = Api::<Pod>::namespaced(client.clone(), ns);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    let selector = format!(
        "kubernetes.io/service-name=svc-{service},endpointslice.kubernetes.io/managed-by={manager}"
    );
    let rv = slices
        .list(&ListParams::default().labels(&selector))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    // Transition times have one-second resolution; a flip within the same second as the last
    // would carry no new trigger time, which matters to neither controller's speed.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({ "status": { "conditions": [
        { "type": "Ready", "status": if want { "True" } else { "False" }, "lastTransitionTime": now }
    ] } });
    let started = Instant::now();
    pod_api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let wp = kube::api::WatchParams::default()
        .labels(&selector)
        .timeout(30);
    let mut stream = pin!(slices.watch(&wp, &rv).await?);
    while let Some(ev) = stream.next().await {
        if let Ok(kube::api::WatchEvent::Modified(s) | kube::api::WatchEvent::Added(s)) = ev
            && s.endpoints.iter().flatten().any(|e| {
                e.addresses.first().map(String::as_str) == Some(ip)
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(want)
            })
        {
            return Ok(started.elapsed());
        }
    }
    anyhow::bail!("{ns}/{name} turning ready={want} not seen in a slice within 30 s")
}

async fn writes(client: Client) -> anyhow::Result<()> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let resource = ["resource=\"endpoints\"", "resource=\"endpointslices\""]
            .into_iter()
            .find(|r| line.contains(r));
        let verb = [
            "verb=\"POST\"",
            "verb=\"PUT\"",
            "verb=\"PATCH\"",
            "verb=\"DELETE\"",
        ]
        .into_iter()
        .find(|v| line.contains(v));
        if let (Some(r), Some(v)) = (resource, verb)
            && !line.contains("subresource=\"status\"")
        {
            let n: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let key = format!(
                "{}_{}",
                r.trim_start_matches("resource=\"").trim_end_matches('"'),
                v.trim_start_matches("verb=\"").trim_end_matches('"')
            );
            *total.entry(key).or_default() += n as u64;
        }
    }
    let all: u64 = total.values().sum();
    for (k, v) in &total {
        println!("writes_{k} {v}");
    }
    println!("writes_total {all}");
    Ok(())
}

async fn clean(client: Client, namespaces: usize) -> anyhow::Result<()> {
    for j in 0..namespaces {
        let api = Api::<Endpoints>::namespaced(client.clone(), &format!("bench-{j}"));
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = svcplane_runtime::ClientArgs {
        kubeconfig: args.kubeconfig.clone(),
        kube_api_qps: 100_000.0,
        kube_api_burst: 100_000,
        kube_api_timeout: Duration::from_secs(30),
    }
    .client()
    .await?;
    match args.command {
        Command::Populate {
            services,
            pods,
            nodes,
            namespaces,
            concurrency,
        } => populate(client, services, pods, nodes, namespaces, concurrency).await,
        Command::Converge {
            manager,
            services,
            pods,
            timeout_seconds,
        } => {
            converge(
                client,
                &manager,
                services,
                pods,
                Duration::from_secs(timeout_seconds),
            )
            .await
        }
        Command::Flips {
            manager,
            count,
            services,
            pods,
            namespaces,
        } => flips(client, &manager, count, services, pods, namespaces).await,
        Command::Writes => writes(client).await,
        Command::Clean { namespaces } => clean(client, namespaces).await,
    }
}
