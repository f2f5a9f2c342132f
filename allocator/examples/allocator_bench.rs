//! Benchmark of the allocator webhook against the API server alone (run by bench/allocator.sh).
//!
//! One dual-stack control plane, the allocator (release build) registered as the webhook with
//! the test's own CA; Service creates alternate in batches between a namespace the webhook
//! handles and one it skips (label `allocator.svcplane.dev/skip`), so both modes see the same
//! API server, the same machine load and the same growing store. Then extra IPAddress objects
//! are created to reach the object count asked for, and the allocator's memory is read.
//!
//! Prints Markdown table rows for docs/benchmarks.md. Loopback only.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::IPAddress;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use svcplane_testenv::wait::free_port;
use svcplane_testenv::{Options, TestEnv};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spec(i: usize) -> serde_json::Value {
    match i % 10 {
        0 => json!({"type": "NodePort", "ports": [{"port": 80}]}),
        1 | 2 => json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        _ => json!({"ports": [{"port": 80}]}),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The smallest histogram bound at or above quantile q, and the count.
fn hist(body: &str, name: &str, q: f64) -> (String, f64) {
    let buckets: Vec<(String, f64)> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            Some((
                l.split("le=\"").nth(1)?.split('"').next()?.to_owned(),
                l.rsplit(' ').next()?.parse().ok()?,
            ))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    let bound = buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|b| b.0.clone())
        .unwrap_or_default();
    (bound, total)
}

async fn create_batch(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> (Vec<Duration>, usize) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let results: Vec<Result<Duration, String>> = futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(
                    json!({"metadata": {"name": format!("s{i}")}, "spec": spec(i)}),
                )
                .expect("svc");
                let start = Instant::now();
                api.create(&PostParams::default(), &svc)
                    .await
                    .map(|_| start.elapsed())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut failed = 0;
    let mut lat = Vec::new();
    for r in results {
        match r {
            Ok(d) => lat.push(d),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("create failed: {e}");
                }
            }
        }
    }
    (lat, failed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let services = env_usize("SERVICES", 10_000);
    let batch = env_usize("BATCH", 500);
    let parallel = env_usize("PARALLEL", 16);
    let objects = env_usize("OBJECTS", 50_000);
    let allocator_bin =
        std::env::var("ALLOCATOR").unwrap_or_else(|_| "target/release/svcplane-allocator".into());

    let env = TestEnv::start_with(Options {
        extra_apiserver_args: vec![
            "--max-requests-inflight=800".into(),
            "--max-mutating-requests-inflight=400".into(),
        ],
        ..Options::dual_stack()
    })
    .await?;
    let client = env.client().await?;

    // Serving certificate for 127.0.0.1 from a throwaway CA.
    let dir = tempfile::tempdir()?;
    let (ca_pem, cert_path, key_path) = {
        let tls = svcplane_testenv::LoopbackTls::generate()?;
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, &tls.cert_pem)?;
        std::fs::write(&k, &tls.key_pem)?;
        (tls.ca_pem, c, k)
    };
    let webhook = free_port();
    let admin = free_port();
    let mut child = Command::new(&allocator_bin)
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .arg(format!("--admin-addr={admin}"))
        .arg(format!("--webhook-bind-address={webhook}"))
        .arg("--tls-cert-file")
        .arg(&cert_path)
        .arg("--tls-private-key-file")
        .arg(&key_path)
        .args([
            "--namespace=default",
            "--load-balancer-ipam=false",
            "--kube-api-qps=1000",
            "--kube-api-burst=1000",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(admin, "/readyz").await.contains(" 200 ") {
        anyhow::ensure!(Instant::now() < deadline, "allocator not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use base64::Engine as _;
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "svcplane-allocator"},
        "webhooks": [{
            "name": "services.allocator.svcplane.dev",
            "clientConfig": {"url": format!("https://{webhook}/mutate-services"), "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca_pem)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["services"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "allocator.svcplane.dev/skip", "operator": "DoesNotExist"}]},
            "failurePolicy": "Fail", "sideEffects": "NoneOnDryRun", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10
        }]
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await?;
    for (ns, skip) in [("hooked", false), ("plain", true)] {
        let labels = if skip {
            json!({"allocator.svcplane.dev/skip": "true"})
        } else {
            json!({})
        };
        let n: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await?;
    }
    // Wait until the API server calls the webhook.
    let probe: Service = serde_json::from_value(
        json!({"metadata": {"name": "probe"}, "spec": {"ports": [{"port": 80}]}}),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = Api::<Service>::namespaced(client.clone(), "hooked")
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &probe,
            )
            .await;
        if get(admin, "/metrics").await.contains(
            "svcplane_allocator_webhook_requests_total{operation=\"create\",result=\"patched\"}",
        ) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "webhook never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut hooked, mut plain) = (Vec::new(), Vec::new());
    let (mut t_hooked, mut t_plain) = (Duration::ZERO, Duration::ZERO);
    let (mut f_hooked, mut f_plain) = (0, 0);
    let mut start = 0;
    let mut round = 0;
    while start < services {
        let end = (start + batch).min(services);
        // Alternate which mode goes first, so neither always meets the fresher store.
        for hooked_first in [round % 2 == 0, round % 2 != 0] {
            let ns = if hooked_first { "hooked" } else { "plain" };
            let t = Instant::now();
            let (lat, failed) = create_batch(&client, ns, start..end, parallel).await;
            let took = t.elapsed();
            if hooked_first {
                hooked.extend(lat);
                t_hooked += took;
                f_hooked += failed;
            } else {
                plain.extend(lat);
                t_plain += took;
                f_plain += failed;
            }
        }
        start = end;
        round += 1;
    }
    hooked.sort();
    plain.sort();
    let metrics = get(admin, "/metrics").await;
    let (p50_bound, n) = hist(&metrics, "svcplane_allocator_webhook_duration_seconds", 0.5);
    let (p99_bound, _) = hist(
        &metrics,
        "svcplane_allocator_webhook_duration_seconds",
        0.99,
    );
    let rss_services = status_kib(pid, "VmRSS");

    // Extra IPAddress objects up to OBJECTS, in free IPv4 addresses of the default range.
    let ips: Api<IPAddress> = Api::all(client.clone());
    let existing: HashSet<String> = ips
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    let have = existing.len();
    let want = objects.saturating_sub(have);
    let free: Vec<String> = (1u32..65_534)
        .map(|n| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n).to_string())
        .filter(|ip| !existing.contains(ip))
        .take(want)
        .collect();
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    futures::stream::iter(free.into_iter().enumerate())
        .for_each_concurrent(32, |(i, ip)| {
            let ips = ips.clone();
            let made = made.clone();
            async move {
                let o: IPAddress = serde_json::from_value(json!({"metadata": {"name": ip},
                    "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "bench-extra", "name": format!("x{i}")}}}))
                .expect("ipaddress");
                if ips.create(&PostParams::default(), &o).await.is_ok() {
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let total_objects = have + made.load(std::sync::atomic::Ordering::Relaxed);
    let rss_objects = status_kib(pid, "VmRSS");
    let hwm = status_kib(pid, "VmHWM");
    let _ = child.kill();
    let _ = child.wait();

    let thr = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    let (th, tp) = (thr(hooked.len(), t_hooked), thr(plain.len(), t_plain));
    println!("| | with the webhook | API server alone | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| Service creates ({services} each, {parallel} in parallel, batches of {batch} alternating) | {} ok, {f_hooked} failed | {} ok, {f_plain} failed | |",
        hooked.len(),
        plain.len()
    );
    println!(
        "| create latency p50 | {} | {} | {:.2} |",
        ms(quantile(&hooked, 0.5)),
        ms(quantile(&plain, 0.5)),
        quantile(&hooked, 0.5).as_secs_f64() / quantile(&plain, 0.5).as_secs_f64()
    );
    println!(
        "| create latency p99 | {} | {} | {:.2} |",
        ms(quantile(&hooked, 0.99)),
        ms(quantile(&plain, 0.99)),
        quantile(&hooked, 0.99).as_secs_f64() / quantile(&plain, 0.99).as_secs_f64()
    );
    println!(
        "| added latency p50 / p99 | {} / {} | | |",
        ms(quantile(&hooked, 0.5).saturating_sub(quantile(&plain, 0.5))),
        ms(quantile(&hooked, 0.99).saturating_sub(quantile(&plain, 0.99)))
    );
    println!(
        "| throughput | {th:.0} creates/s | {tp:.0} creates/s | {:.2} |",
        th / tp
    );
    println!(
        "| webhook handler p50 / p99 ({n} requests; histogram bucket bound) | <= {p50_bound} s / <= {p99_bound} s | | |"
    );
    println!(
        "| allocator RSS with {} Services | {:.0} MiB | | |",
        services * 2,
        rss_services as f64 / 1024.0
    );
    println!(
        "| allocator RSS with {total_objects} IPAddress objects too / peak | {:.0} / {:.0} MiB | | |",
        rss_objects as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(env);
    Ok(())
}
