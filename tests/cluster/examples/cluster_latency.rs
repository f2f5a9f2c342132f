//! Network-programming latency end to end on the local cluster (run by `bench/cluster.sh`):
//!
//! - Service created → first DNS answer for its name from a pod, and first HTTP request through
//!   its ClusterIP from that pod (the Service selects the demo's three ready pods);
//! - pod Ready → first request it serves through a ClusterIP whose Service selects only it.
//!
//! Pollers run on threads of their own inside the client pod's network namespace, every 5 ms;
//! nothing is sent outside the cluster's namespaces. Times are from the API's answer to the
//! create (or from the watch event that shows Ready) to the first success.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use svcplane_cluster::{Cluster, Options};

#[derive(Debug, Parser)]
struct Args {
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Pause between rounds (longer than the proxy's --min-sync-period, so every round starts
    /// from a quiet proxy).
    #[arg(long, default_value = "2s", value_parser = svcplane_runtime::parse_duration)]
    pause: Duration,
    /// Where the svcplane binaries are (build them with --release for figures).
    #[arg(long)]
    bin_dir: PathBuf,
    #[arg(long, default_value = "svbench")]
    prefix: String,
    /// Measure again with svcplane-proxy's --sync-settle at 0 (kube-proxy's timing): the
    /// DaemonSet gets SVCPLANE_SYNC_SETTLE=0s and its pods are replaced.
    #[arg(long)]
    compare_settle_zero: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(
        Options {
            nodes: 2,
            prefix: args.prefix.clone(),
            bin_dir: args.bin_dir.clone(),
            demo: true,
            api_faults: false,
        },
        |line| eprintln!("cluster: {line}"),
    )
    .await?;
    let mut result = measure(&cluster, &args, "").await;
    if result.is_ok() && args.compare_settle_zero {
        result = match settle_zero(&cluster).await {
            Ok(()) => measure(&cluster, &args, "settle0_").await,
            Err(e) => Err(e),
        };
    }
    cluster.stop().await;
    result
}

/// Restarts every svcplane-proxy with SVCPLANE_SYNC_SETTLE=0s and waits for them to be ready.
async fn settle_zero(cluster: &Cluster) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use kube::api::{ListParams, Patch, PatchParams};
    let ds: Api<DaemonSet> = Api::namespaced(cluster.client().clone(), "kube-system");
    let mut current = ds.get("svcplane-proxy").await?;
    let pod_spec = current.spec.template.spec.as_mut().context("pod spec")?;
    pod_spec.containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .push(serde_json::from_value(
            json!({"name": "SVCPLANE_SYNC_SETTLE", "value": "0s"}),
        )?);
    ds.patch(
        "svcplane-proxy",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [current.spec.template.spec.as_ref().context("pod spec")?.containers[0]]}}}})),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), "kube-system");
    let old: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("svcplane-proxy-"))
        .collect();
    for name in &old {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.name.as_deref().is_some_and(|n| {
                    n.starts_with("svcplane-proxy-") && !old.iter().any(|o| o == n)
                }) && svcplane_cluster::pod_ready(p)
            })
            .count();
        if ready == cluster.nodes().len() {
            eprintln!("svcplane-proxy restarted with --sync-settle=0s");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted proxies never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(cluster: &Cluster, args: &Args, label: &str) -> anyhow::Result<()> {
    let client_ns = cluster.names().pod("demo", "client");
    let services: Api<Service> = Api::namespaced(cluster.client().clone(), "demo");
    let pods: Api<Pod> = Api::namespaced(cluster.client().clone(), "demo");
    let mut dns = Vec::new();
    let mut connect = Vec::new();
    for i in 0..args.rounds {
        tokio::time::sleep(args.pause).await;
        let name = format!("{}lat-{i}", label.replace('_', "-"));
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))?;
        let created = services.create(&PostParams::default(), &svc).await?;
        let t0 = Instant::now();
        let ip: std::net::IpAddr = created
            .spec
            .and_then(|s| s.cluster_ip)
            .context("clusterIP")?
            .parse()?;
        let fqdn = format!("{name}.demo.svc.cluster.local");
        let dns_poll = poll_in(client_ns.clone(), move || {
            svcplane_cluster::probe::dns_a(&fqdn, Duration::from_millis(50)).is_ok()
        });
        let http_poll = poll_in(client_ns.clone(), move || {
            http_ok(SocketAddr::new(ip, 80)).is_some()
        });
        let (d, c) = tokio::join!(dns_poll, http_poll);
        let (d, c) = (d?, c?);
        dns.push(d.duration_since(t0));
        connect.push(c.duration_since(t0));
        eprintln!(
            "round {i}: dns {:.0} ms, connection {:.0} ms",
            ms(dns[i]),
            ms(connect[i])
        );
        services.delete(&name, &DeleteParams::default()).await?;
    }

    // Pod Ready → first request it serves.
    let solo_name = format!("{}solo", label.replace('_', "-"));
    let solo: Service = serde_json::from_value(json!({
        "metadata": {"name": solo_name},
        "spec": {"selector": {"solo": solo_name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?;
    let solo_ip: std::net::IpAddr = services
        .create(&PostParams::default(), &solo)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("clusterIP")?
        .parse()?;
    let mut ready = Vec::new();
    for i in 0..args.rounds {
        tokio::time::sleep(args.pause).await;
        let name = format!("{solo_name}-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"solo": solo_name}},
            "spec": {"containers": [{
                "name": "web", "image": "svcplane.local/demo-http:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
            }]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        let want = name.clone();
        let served = poll_in(client_ns.clone(), move || {
            http_ok(SocketAddr::new(solo_ip, 80)).is_some_and(|b| b.starts_with(&want))
        });
        let became_ready = ready_seen(&pods, &name);
        let (served, became_ready) = tokio::join!(served, became_ready);
        let (served, became_ready) = (served?, became_ready?);
        let latency = served.saturating_duration_since(became_ready);
        ready.push(latency);
        eprintln!("round {i}: ready → served {:.0} ms", ms(latency));
        pods.delete(&name, &DeleteParams::default()).await?;
        // Gone, and the Service back to no endpoints, before the next round.
        let gone = name.clone();
        poll_in(client_ns.clone(), move || {
            !http_ok(SocketAddr::new(solo_ip, 80)).is_some_and(|b| b.starts_with(&gone))
        })
        .await?;
    }
    println!("{label}rounds={}", args.rounds);
    report(&format!("{label}service_to_dns"), &mut dns);
    report(&format!("{label}service_to_connection"), &mut connect);
    report(&format!("{label}ready_to_served"), &mut ready);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i])
    };
    println!(
        "{what}_ms p50={:.0} p90={:.0} p99={:.0} max={:.0}",
        at(0.5),
        at(0.9),
        at(0.99),
        ms(samples[samples.len() - 1])
    );
}

/// The moment a watch shows pod `name` Ready.
async fn ready_seen(pods: &Api<Pod>, name: &str) -> anyhow::Result<Instant> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher(pods.clone(), config));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("pod never became ready")?
            .context("watch ended")??;
        if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event
            && svcplane_cluster::pod_ready(&pod)
        {
            return Ok(Instant::now());
        }
    }
}

/// Runs `attempt` every 5 ms on a thread inside network namespace `ns` until it succeeds
/// (at most 30 s); the moment it first did.
async fn poll_in(
    ns: String,
    attempt: impl Fn() -> bool + Send + 'static,
) -> anyhow::Result<Instant> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let entered = svcplane_testenv::netns::enter(&ns).map_err(anyhow::Error::from);
        let result = entered.and_then(|()| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if attempt() {
                    return Ok(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            anyhow::bail!("no success within 30 s")
        });
        let _ = tx.send(result);
    });
    rx.await.context("poller thread ended")?
}

/// GET / (HTTP/1.0): the body when the answer is 200.
fn http_ok(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(10)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
}
