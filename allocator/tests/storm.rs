//! A storm: 2,000 Service creates in parallel (ClusterIP, NodePort, LoadBalancer; single and
//! dual stack; some asking for fixed values) through two allocator replicas behind a relay that,
//! like a Service, routes to the ready one only. The leader is killed in the middle. No create
//! may fail and no value may be held twice; the new leader must take over.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::json;
use svcplane_testenv::{Options, TestEnv};

const CREATES: usize = 2000;
const PARALLEL: usize = 48;
const KILL_AFTER: usize = 700;

fn spec(i: usize) -> serde_json::Value {
    let ports = json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]);
    match i % 8 {
        0 | 1 => json!({"ports": [{"port": 80}]}),
        2 => json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        3 => json!({"type": "NodePort", "ports": ports}),
        4 => {
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 443}]})
        }
        5 => {
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 443}]})
        }
        // Fixed requests, unique per Service: in the static bands.
        6 => {
            json!({"clusterIP": format!("10.96.0.{}", 2 + i / 8 % 250), "clusterIPs": [format!("10.96.0.{}", 2 + i / 8 % 250)], "ports": [{"port": 80}]})
        }
        _ if i / 8 < 86 => {
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000 + i / 8}]})
        }
        _ => json!({"type": "NodePort", "ports": [{"port": 80}]}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_parallel_creates_with_the_leader_killed() {
    let env = TestEnv::start_with(Options {
        extra_apiserver_args: vec![
            "--max-requests-inflight=800".into(),
            "--max-mutating-requests-inflight=400".into(),
        ],
        ..Options::dual_stack()
    })
    .await
    .expect("control plane");
    let client = env.client().await.expect("client");
    let certs = Certs::new();
    let election = [
        "--leader-elect".to_owned(),
        "--leader-elect-resource-namespace=default".to_owned(),
        "--leader-elect-lease-duration=4s".to_owned(),
        "--leader-elect-renew-deadline=3s".to_owned(),
        "--leader-elect-retry-period=500ms".to_owned(),
        "--load-balancer-ipam=false".to_owned(),
    ];
    let mut a = Some(start(
        env.kubeconfig_path(),
        &certs,
        free_port(),
        "replica-a",
        &election,
    ));
    a.as_ref().expect("a").wait_ready().await;
    let b = start(
        env.kubeconfig_path(),
        &certs,
        free_port(),
        "replica-b",
        &election,
    );
    let (a_webhook, a_admin) = (a.as_ref().expect("a").webhook, a.as_ref().expect("a").admin);
    let relay = ReadyRelay::start(vec![(a_webhook, a_admin), (b.webhook, b.admin)]).await;
    register(
        &client,
        &format!("https://{}/mutate-services", relay.addr),
        &certs.ca_pem,
        "Ignore",
    )
    .await;
    namespace(&client, "probe", false).await;
    wait_webhook_used(&client, a.as_ref().expect("a"), "probe").await;
    namespace(&client, "storm", false).await;
    assert!(!b.ready().await, "the follower is not ready");

    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start_at = Instant::now();
    let results: Vec<(usize, Result<Service, kube::Error>)> = {
        let creates = futures::stream::iter(0..CREATES).map(|i| {
            let client = client.clone();
            let done = done.clone();
            async move {
                let svc = service("storm", &format!("s{i}"), spec(i));
                // Bounded retries only for the API server's own rate limiting (429).
                let mut r = create(&client, &svc).await;
                for _ in 0..5 {
                    match &r {
                        Err(kube::Error::Api(s)) if s.code == 429 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            r = create(&client, &svc).await;
                        }
                        _ => break,
                    }
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (i, r)
            }
        });
        let killer = async {
            while done.load(std::sync::atomic::Ordering::Relaxed) < KILL_AFTER {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // SIGKILL: no lease release; the follower must wait the lease out.
            drop(a.take());
        };
        let (results, ()) = tokio::join!(
            creates.buffer_unordered(PARALLEL).collect::<Vec<_>>(),
            killer
        );
        results
    };
    let elapsed = start_at.elapsed();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("s{i}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CREATES} creates failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // No value held twice across all stored Services.
    let all = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list");
    let mut ip_owner: HashMap<String, String> = HashMap::new();
    let mut port_owner: HashMap<i32, String> = HashMap::new();
    let mut dups = Vec::new();
    for svc in &all.items {
        let key = format!(
            "{}/{}",
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default()
        );
        for ip in ips(svc).into_iter().filter(|ip| ip != "None") {
            if let Some(other) = ip_owner.insert(ip.clone(), key.clone()) {
                dups.push(format!("{ip}: {other} and {key}"));
            }
        }
        let mut mine: Vec<i32> = node_ports(svc)
            .into_iter()
            .chain([health_check_port(svc)])
            .filter(|p| *p != 0)
            .collect();
        mine.sort_unstable();
        mine.dedup();
        for p in mine {
            if let Some(other) = port_owner.insert(p, key.clone()) {
                dups.push(format!("{p}: {other} and {key}"));
            }
        }
    }
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    assert_eq!(
        all.items
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some("storm"))
            .count(),
        CREATES
    );

    // The follower took over and answered the rest.
    b.wait_ready().await;
    let body = b.metrics().await;
    let patched = metric_sum(
        &body,
        "svcplane_allocator_webhook_requests_total",
        &[("result", "patched")],
    );
    assert!(patched > 0.0, "the new leader allocated nothing:\n{body}");
    let p99 = histogram_quantile(&body, "svcplane_allocator_webhook_duration_seconds", 0.99);
    eprintln!(
        "storm: {CREATES} creates in {elapsed:?} ({:.0}/s); new leader patched {patched}, its handler p99 <= {p99}s",
        CREATES as f64 / elapsed.as_secs_f64()
    );
}

/// The upper bound of the bucket holding quantile `q` of a Prometheus histogram.
fn histogram_quantile(body: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}
