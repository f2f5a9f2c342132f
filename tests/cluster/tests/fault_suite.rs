//! The fault suite: a seeded churn workload (`svcplane_cluster::churn`) over a three-node local
//! cluster while faults are injected one at a time and then together; after each, the suite
//! waits for the workload to come to rest and for the oracle (`svcplane_cluster::oracle`) to
//! hold: endpoints and slices as the rules say, allocations unique, in range and not leaked,
//! every DNS name answering as its Service says, every ClusterIP/NodePort/LoadBalancer IP
//! reaching exactly the ready pods. A divergence left after two minutes fails with the list.
//!
//! Printed for docs/reliability.md (`bench/faults.sh`): time to converge after each fault, what
//! each fault did, and the memory of every svcplane process before and after
//! `SVCPLANE_MEMORY_OPS` operations without faults. `SVCPLANE_FAULT_SEED` picks another seed.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use svcplane_cluster::api_faults::Mode;
use svcplane_cluster::churn::{self, Churn};
use svcplane_cluster::oracle::{self, Scope};
use svcplane_cluster::{Cluster, net};

use common::pods;

/// What the suite measured, printed at the end.
#[derive(Debug, Default)]
struct Report {
    converged: Vec<(String, Duration)>,
    lines: Vec<String>,
}

struct Suite {
    cluster: Cluster,
    churn: Churn,
    report: Report,
    /// Ready pods per component at the start.
    components: BTreeMap<String, i32>,
}

impl Suite {
    fn scope(&self) -> Scope {
        Scope {
            namespaces: vec![churn::NAMESPACE.to_owned(), "demo".to_owned()],
            deleted: self
                .churn
                .deleted
                .iter()
                .map(|n| (churn::NAMESPACE.to_owned(), n.clone()))
                .collect(),
            components: self.components.clone(),
        }
    }

    /// Adds back a node the workload removed, waits for rest and the oracle; records the
    /// time, or fails with the divergences.
    async fn converge(&mut self, after: &str) {
        self.churn
            .restore_nodes(&self.cluster)
            .await
            .expect("nodes back");
        let scope = self.scope();
        match oracle::converge(&self.cluster, &scope, Duration::from_secs(120)).await {
            Ok((took, waited)) => {
                eprintln!(
                    "fault suite: {after}: converged in {:.1}s{}",
                    took.as_secs_f64(),
                    waited
                        .first()
                        .map(|w| format!(" (first waited for: {w})"))
                        .unwrap_or_default()
                );
                self.report.converged.push((after.to_owned(), took));
            }
            Err(wrong) => {
                let mut text = format!(
                    "after {after}, the plane did not converge within 120 s; logs in {}:\n",
                    self.cluster.log_dir().display()
                );
                for w in &wrong {
                    let _ = writeln!(text, "  {w}");
                }
                panic!("{text}");
            }
        }
    }

    /// `n` churn operations 150 ms apart, while `fault` runs.
    async fn churn_during(&mut self, n: usize, fault: impl Future<Output = ()>) {
        let cluster = &self.cluster;
        let churn = &mut self.churn;
        let (log, ()) = tokio::join!(churn.burst(cluster, n, Duration::from_millis(150)), fault);
        let refused: Vec<&String> = log.iter().filter(|l| l.starts_with("refused")).collect();
        eprintln!(
            "fault suite: {n} operations ({} refused by the API {refused:?}), last: {:?}",
            refused.len(),
            log.last()
        );
    }

    /// 20 churn operations; half a second in, SIGKILL to `victim`; then convergence.
    async fn sigkill_under_churn(&mut self, victim: Victim, what: &str) {
        let c = &self.cluster;
        let kill = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match &victim {
                Victim::Pod(name) => c.kill_pod("kube-system", name).await,
                Victim::Node(n) => c.kill_node_processes(*n).await,
            }
            .expect("kill");
        };
        let _ = tokio::join!(self.churn.burst(c, 20, Duration::from_millis(150)), kill);
        self.converge(&format!("SIGKILL of {what}")).await;
    }
}

/// What a SIGKILL hits: a kube-system pod's processes, or a node's (its proxy).
enum Victim {
    Pod(String),
    Node(usize),
}

/// The pod of a `prefix`… Deployment that holds its Lease (`holder` is `<pod>_<pid>`).
async fn leader(cluster: &Cluster, prefix: &str) -> String {
    let leases = Api::<Lease>::namespaced(cluster.client().clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("leases");
    leases
        .items
        .iter()
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .filter(|h| h.starts_with(prefix))
        .find_map(|h| h.rsplit_once('_').map(|(pod, _)| pod.to_owned()))
        .unwrap_or_else(|| panic!("no Lease held by a {prefix} pod"))
}

fn restarts(pods: &[Pod]) -> i32 {
    pods.iter()
        .flat_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default()
        })
        .map(|c| c.restart_count)
        .sum()
}

/// Resident memory (KiB) of every svcplane process, by pid, with its component's name.
async fn memory(cluster: &Cluster) -> BTreeMap<u32, (String, u64)> {
    let mut namespaces: Vec<String> = pods(cluster, "kube-system", "svcplane-")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| !n.starts_with("svcplane-proxy"))
        .map(|n| cluster.names().pod("kube-system", &n))
        .collect();
    namespaces.extend(cluster.nodes().iter().map(|n| n.ns.clone()));
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let Ok(pids) = net::sh(&["ip", "netns", "pids", &ns]).await else {
            continue;
        };
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 =
                String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default())
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            if !argv0.starts_with("svcplane-") {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                out.insert(pid, (argv0, kb));
            }
        }
    }
    out
}

/// Lines in the components' logs that report a watch expired (410 Gone).
fn expired_watches(cluster: &Cluster) -> usize {
    let Ok(dir) = std::fs::read_dir(cluster.log_dir()) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("kube-system_svcplane-")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| {
            text.lines()
                .filter(|l| l.contains("too old resource version") || l.contains("Expired"))
                .count()
        })
        .sum()
}

/// How many of the 5,000 pods' addresses (10.244.100.0 to 10.244.119.255) node `ns`'s
/// svcplane table holds.
async fn big_addresses_in_rules(ns: &str) -> Result<usize, String> {
    let table = net::sh(&[
        "ip", "netns", "exec", ns, "nft", "list", "table", "ip", "svcplane",
    ])
    .await
    .map_err(|e| e.to_string())?;
    Ok((100..120u8)
        .map(|third| table.matches(&format!("10.244.{third}.")).count())
        .sum())
}

/// Creates `count` ready pods and a Service selecting them in namespace `big`; checks that
/// Endpoints hold the first 1,000 (annotated truncated, as upstream), the slices hold all of
/// them 100 at most per slice, the name resolves and node-1's proxy has a rule per endpoint;
/// then deletes them all and checks nothing is left. What it measured.
async fn big_selector(cluster: &Cluster, count: usize) -> String {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Endpoints;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let client = cluster.client().clone();
    svcplane_testenv::kubelet::create_namespace(&client, "big")
        .await
        .expect("namespace");
    // Their node exists (a slice leaves out pods of a Node that does not) but is cordoned, so
    // nothing else lands there, and it has no kubelet.
    svcplane_testenv::kubelet::create_node(
        &client,
        "node-offline",
        None,
        "192.0.2.99".parse().expect("ip"),
    )
    .await
    .expect("node");
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(
            "node-offline",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("cordon");
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let name = format!("b-{i}");
                svcplane_testenv::kubelet::PodBuilder::new("big", &name)
                    .label("app", "big")
                    .node("node-offline")
                    .port("http", 8080, "TCP")
                    .create(&client)
                    .await
                    .expect("pod");
                let ip =
                    std::net::Ipv4Addr::new(10, 244, 100 + (i / 250) as u8, (i % 250 + 1) as u8);
                svcplane_testenv::kubelet::set_pod_running(
                    &client,
                    "big",
                    &name,
                    &[ip.into()],
                    true,
                )
                .await
                .expect("status");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let created = started.elapsed();
    let services = Api::<Service>::namespaced(client.clone(), "big");
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "big" },
                "spec": { "selector": { "app": "big" },
                    "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] },
            }))
            .expect("service"),
        )
        .await
        .expect("the Service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
    let service_at = Instant::now();
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), "big");
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "big");
    svcplane_testenv::wait::eventually(
        Duration::from_secs(120),
        "5,000 endpoints in Endpoints (truncated) and slices",
        || async {
            let ep = endpoints.get_opt("big").await.map_err(|e| e.to_string())?;
            let in_endpoints = ep
                .as_ref()
                .and_then(|e| e.subsets.clone())
                .unwrap_or_default()
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
            let truncated = ep
                .as_ref()
                .and_then(|e| e.metadata.annotations.as_ref())
                .and_then(|a| a.get("endpoints.kubernetes.io/over-capacity"))
                .map(String::as_str)
                == Some("truncated");
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=big"))
                .await
                .map_err(|e| e.to_string())?;
            let sizes: Vec<usize> = list
                .items
                .iter()
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .collect();
            let in_slices: usize = sizes.iter().sum();
            if in_endpoints == 1000 && truncated && in_slices == count && sizes.iter().all(|n| *n <= 100) {
                Ok(())
            } else {
                Err(format!(
                    "Endpoints {in_endpoints} (truncated {truncated}), slices {} holding {in_slices}",
                    sizes.len()
                ))
            }
        },
    )
    .await;
    let endpoints_took = service_at.elapsed();
    let fqdn = "big.big.svc.cluster.local";
    let node1 = cluster.nodes()[0].ns.clone();
    svcplane_testenv::wait::eventually(
        Duration::from_secs(60),
        "the name and node-1's rules",
        || async {
            let answer = cluster
                .exec(
                    "demo",
                    "client",
                    &["dig", "+short", "+time=2", "@10.96.0.10", fqdn, "A"],
                )
                .await
                .map_err(|e| e.to_string())?;
            let in_rules = big_addresses_in_rules(&node1).await?;
            if answer.trim() == ip && in_rules >= count {
                Ok(())
            } else {
                Err(format!(
                    "dig {answer:?}, {in_rules} endpoint addresses in the rules"
                ))
            }
        },
    )
    .await;
    let programmed = service_at.elapsed();
    // Everything goes: pods at once (no kubelet would confirm a graceful deletion), the Service.
    let pods_api = Api::<Pod>::namespaced(client.clone(), "big");
    pods_api
        .delete_collection(
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
            &ListParams::default(),
        )
        .await
        .expect("delete the pods");
    services
        .delete("big", &DeleteParams::default())
        .await
        .expect("delete the Service");
    svcplane_testenv::wait::eventually(Duration::from_secs(120), "nothing left of big", || async {
        let left_slices = slices
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let left_endpoints = endpoints
            .get_opt("big")
            .await
            .map_err(|e| e.to_string())?
            .is_some();
        let in_rules = big_addresses_in_rules(&node1).await?;
        if left_slices == 0 && !left_endpoints && in_rules == 0 {
            Ok(())
        } else {
            Err(format!(
                "{left_slices} slices, Endpoints {left_endpoints}, {in_rules} addresses in rules"
            ))
        }
    })
    .await;
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete("node-offline", &DeleteParams::default())
        .await
        .expect("delete the node");
    format!(
        "selector over {count} pods (created in {:.0} s): Endpoints truncated to 1,000 and all {count} in slices {:.1} s after the Service, name and node-1's rules {:.1} s after; all gone after deletion",
        created.as_secs_f64(),
        endpoints_took.as_secs_f64(),
        programmed.as_secs_f64()
    )
}

/// Garbage at a DNS server: short headers, bad label lengths, compression loops, truncated
/// questions, random bytes. `count` datagrams, bounded in time.
fn malformed_dns(ns: &str, count: usize) -> usize {
    svcplane_testenv::netns::on_thread_in(ns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let mut rng = svcplane_testenv::rng::Rng::new(7);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        for i in 0..count {
            if Instant::now() > deadline {
                break;
            }
            let id = (i as u16).to_be_bytes();
            let packet: Vec<u8> = match i % 6 {
                0 => vec![id[0], id[1], 0x01],
                1 => vec![
                    id[0], id[1], 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a', 0, 0, 1, 0, 1,
                ],
                2 => vec![
                    id[0], id[1], 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
                ],
                3 => vec![id[0], id[1], 1, 0, 0, 9, 0, 9, 0, 9, 0, 9, 3, b'w', b'e'],
                4 => vec![
                    id[0], id[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1,
                ],
                _ => (0..rng.below(600) + 1)
                    .map(|_| (rng.next_u64() & 0xff) as u8)
                    .collect(),
            };
            if socket.send_to(&packet, ("10.96.0.10", 53)).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    })
    .expect("sending from the client pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plane_converges_after_every_fault() {
    let seed = std::env::var("SVCPLANE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1127);
    eprintln!("fault suite: seed {seed}");
    let cluster = common::start_with("fault", 3, true).await;
    let churn = Churn::setup(&cluster, seed).await.expect("churn workload");
    let mut s = Suite {
        cluster,
        churn,
        report: Report::default(),
        components: BTreeMap::new(),
    };
    s.converge("start").await;
    // What "the components are back" means from here on: as many ready as now (the allocator
    // has one: only its leader is ready).
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.components = oracle::components(&s.cluster).await.expect("components");
    eprintln!("fault suite: ready at the start: {:?}", s.components);

    // --- One fault at a time, each under churn.
    s.churn_during(30, async {}).await;
    s.converge("churn alone").await;

    let endpoints_leader = leader(&s.cluster, "svcplane-endpoints-").await;
    s.sigkill_under_churn(
        Victim::Pod(endpoints_leader.clone()),
        "the endpoints leader",
    )
    .await;
    let new_leader = leader(&s.cluster, "svcplane-endpoints-").await;
    s.report.lines.push(format!(
        "endpoints leader {endpoints_leader} killed; the Lease went to {new_leader}"
    ));
    let allocator_leader = leader(&s.cluster, "svcplane-allocator-").await;
    s.sigkill_under_churn(Victim::Pod(allocator_leader), "the allocator leader")
        .await;
    let dns_one = pods(&s.cluster, "kube-system", "svcplane-dns-").await[0]
        .metadata
        .name
        .clone()
        .expect("name");
    s.sigkill_under_churn(Victim::Pod(dns_one), "one DNS replica")
        .await;
    s.sigkill_under_churn(Victim::Node(2), "node-2's proxy")
        .await;

    // Rolling restarts by SIGTERM: each DNS pod and each proxy pod deleted and replaced.
    let c = &s.cluster;
    let roll = async {
        for prefix in ["svcplane-dns-", "svcplane-proxy-"] {
            for p in pods(c, "kube-system", prefix).await {
                let name = p.metadata.name.expect("name");
                let _ = Api::<Pod>::namespaced(c.client().clone(), "kube-system")
                    .delete(&name, &DeleteParams::default())
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    };
    let _ = tokio::join!(s.churn.burst(c, 30, Duration::from_millis(150)), roll);
    s.converge("SIGTERM rolling restart of DNS and proxy").await;

    // The proxy's table flushed on node-1, deleted on node-2, one element removed on node-3.
    let c = &s.cluster;
    let tamper = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (n, edit) in [
            (0, "flush table ip svcplane"),
            (1, "delete table ip svcplane"),
            (2, "flush set ip svcplane cluster-ips"),
        ] {
            let ns = &c.nodes()[n].ns;
            net::sh(&["ip", "netns", "exec", ns, "nft", edit])
                .await
                .expect("nft edit");
        }
    };
    let _ = tokio::join!(s.churn.burst(c, 15, Duration::from_millis(150)), tamper);
    s.converge("nftables tables flushed, deleted and edited behind the proxy")
        .await;

    // kube-apiserver down for 5 s.
    s.churn_during(10, async {}).await;
    s.cluster
        .restart_apiserver(Duration::from_secs(5))
        .await
        .expect("API server back");
    s.churn_during(10, async {}).await;
    s.converge("kube-apiserver stopped 5 s and restarted").await;

    // etcd compacted to its head, then the API server restarted: its watch cache starts after
    // every client's resourceVersion, so every watch gets 410 Gone and lists again.
    s.churn_during(10, async {}).await;
    let expired_before = expired_watches(&s.cluster);
    let revision = s.cluster.compact_etcd().await.expect("compaction");
    s.cluster
        .restart_apiserver(Duration::from_millis(500))
        .await
        .expect("API server back");
    s.churn_during(10, async {}).await;
    s.converge("etcd compaction and API server restart (410 Gone, re-list)")
        .await;
    let expired = expired_watches(&s.cluster) - expired_before;
    assert!(
        expired > 0,
        "no component logged an expired watch: the fault did not happen"
    );
    s.report.lines.push(format!(
        "etcd compacted at revision {revision}: {expired} watches expired (410) and re-listed"
    ));

    // The API server slow, then refusing (429), then failing (500), for the pods only (a
    // proxy in front of it; the test's own client goes direct).
    let faults = [
        (
            "every request delayed 2 s",
            Mode {
                delay: Duration::from_secs(2),
                ..Mode::default()
            },
        ),
        (
            "half the requests answered 429",
            Mode {
                status: Some(429),
                percent: 50,
                ..Mode::default()
            },
        ),
        (
            "every request answered 500",
            Mode {
                status: Some(500),
                percent: 100,
                ..Mode::default()
            },
        ),
    ];
    for (what, mode) in faults {
        let before = restarts(&pods(&s.cluster, "kube-system", "svcplane-").await);
        let proxy = s.cluster.api_faults().expect("the fault proxy");
        proxy.set(mode);
        let (_, failed_before) = proxy.counts();
        s.churn_during(40, async {}).await;
        let proxy = s.cluster.api_faults().expect("the fault proxy");
        let (_, failed) = proxy.counts();
        proxy.set(Mode::default());
        s.converge(&format!("API server: {what} during 40 operations"))
            .await;
        let after = restarts(&pods(&s.cluster, "kube-system", "svcplane-").await);
        s.report.lines.push(format!(
            "API server, {what}: {} requests failed by the proxy; {} component restarts",
            failed - failed_before,
            after - before
        ));
    }

    // --- Bad input.
    let dns_pods = pods(&s.cluster, "kube-system", "svcplane-dns-").await;
    let dns_restarts = restarts(&dns_pods);
    let client_ns = s.cluster.names().pod("demo", "client");
    let c = &s.cluster;
    let flood = async {
        let ns = client_ns.clone();
        tokio::task::spawn_blocking(move || malformed_dns(&ns, 30_000))
            .await
            .expect("flood")
    };
    let (_, sent) = tokio::join!(s.churn.burst(c, 10, Duration::from_millis(150)), flood);
    let after = pods(&s.cluster, "kube-system", "svcplane-dns-").await;
    assert_eq!(
        restarts(&after),
        dns_restarts,
        "a DNS replica restarted under malformed packets"
    );
    s.report
        .lines
        .push(format!("{sent} malformed DNS datagrams, no DNS restart"));
    s.converge("malformed DNS packets at rate").await;

    // Malformed AdmissionReviews at the allocator's webhook (every replica, over TLS).
    let allocators = pods(&s.cluster, "kube-system", "svcplane-allocator-").await;
    let allocator_restarts = restarts(&allocators);
    let node1 = s.cluster.nodes()[0].ns.clone();
    let bodies = [
        "",
        "{",
        "null",
        r#"{"kind":"AdmissionReview"}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"group":"","version":"v1","kind":"Service"},"operation":"CREATE","object":{"spec":{"ports":"nope"}}}}"#,
    ];
    let mut statuses = Vec::new();
    for p in &allocators {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        for body in bodies {
            for _ in 0..20 {
                let out = net::sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &node1,
                    "curl",
                    "-sk",
                    "-m",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    body,
                    &format!("https://{ip}:9443/mutate-services"),
                ])
                .await
                .unwrap_or_else(|e| e.to_string());
                statuses.push(out);
            }
        }
    }
    let accepted = statuses.iter().filter(|s| s.as_str() == "200").count();
    let answered = statuses
        .iter()
        .filter(|s| s.len() == 3 && s.starts_with('4'))
        .count();
    assert_eq!(
        restarts(&pods(&s.cluster, "kube-system", "svcplane-allocator-").await),
        allocator_restarts,
        "an allocator restarted under malformed AdmissionReviews"
    );
    assert_eq!(accepted, 0, "a malformed AdmissionReview was answered 200");
    assert!(
        answered > 0,
        "no 4xx answer to malformed reviews: {statuses:?}"
    );
    s.report.lines.push(format!(
        "{} malformed AdmissionReviews: {answered} answered 4xx, no allocator restart",
        statuses.len()
    ));

    // Objects at the edge of validity: a 63-character name, 100 ports over TCP/UDP/SCTP from
    // 1 to 65535, ClientIP affinity with the longest timeout; a selector-less Service with a
    // hand-made FQDN slice and an IPv4 slice with an empty endpoint list.
    let services = Api::<Service>::namespaced(s.cluster.client().clone(), churn::NAMESPACE);
    let long = format!("e{}", "x".repeat(62));
    let ports: Vec<serde_json::Value> = (0..100usize)
        .map(|i| {
            let protocol = ["TCP", "UDP", "SCTP"][i % 3];
            json!({
                "name": format!("p{i}"),
                "port": if i == 99 { 65535 } else { i + 1 },
                "targetPort": 8080,
                "protocol": protocol,
            })
        })
        .collect();
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": long },
                "spec": {
                    "type": "NodePort",
                    "selector": { "app": "app-0" },
                    "ports": ports,
                    "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 86400 } },
                },
            }))
            .expect("service"),
        )
        .await
        .expect("the 100-port Service");
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "manual" },
                "spec": { "ports": [{ "port": 80 }] },
            }))
            .expect("service"),
        )
        .await
        .expect("the selector-less Service");
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
        s.cluster.client().clone(),
        churn::NAMESPACE,
    );
    for slice in [
        json!({
            "metadata": { "name": "manual-fqdn", "labels": {
                "kubernetes.io/service-name": "manual",
                "endpointslice.kubernetes.io/managed-by": "someone-else" } },
            "addressType": "FQDN",
            "endpoints": [{ "addresses": ["a.example.test"] }],
            "ports": [{ "port": 80 }],
        }),
        json!({
            "metadata": { "name": "manual-empty", "labels": {
                "kubernetes.io/service-name": "manual",
                "endpointslice.kubernetes.io/managed-by": "someone-else" } },
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [],
        }),
    ] {
        slices
            .create(
                &PostParams::default(),
                &serde_json::from_value(slice).expect("slice"),
            )
            .await
            .expect("a hand-made slice");
    }
    s.churn_during(10, async {}).await;
    s.converge("Services and slices at the edge of validity")
        .await;
    for name in [long.as_str(), "manual"] {
        services
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["manual-fqdn", "manual-empty"] {
        let _ = slices.delete(name, &DeleteParams::default()).await;
    }

    // svcplane-endpoints' slices deleted by someone else (a user; the garbage collector after a
    // Service is re-created under its name): each must be written again.
    let managed = slices
        .list(
            &ListParams::default()
                .labels("endpointslice.kubernetes.io/managed-by=endpointslice.svcplane.dev"),
        )
        .await
        .expect("slices");
    let mut removed = 0;
    for slice in managed.items.iter().take(3) {
        if let Some(name) = &slice.metadata.name {
            slices
                .delete(name, &DeleteParams::default())
                .await
                .expect("delete a slice");
            removed += 1;
        }
    }
    assert!(removed > 0, "no slice of svcplane-endpoints to delete");
    s.churn_during(5, async {}).await;
    s.converge(&format!(
        "{removed} of svcplane-endpoints' slices deleted by hand"
    ))
    .await;

    // --- A selector matching 5,000 pods (API objects on a node no kubelet runs, reported
    // running and ready by the test, addresses 10.244.100.0 and up).
    let big = big_selector(&s.cluster, 5_000).await;
    s.report.lines.push(big);

    // --- Allocator kill storm: both replicas SIGKILLed again and again while Services come
    // and go.
    let c = &s.cluster;
    let storm = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            for p in pods(c, "kube-system", "svcplane-allocator-").await {
                let name = p.metadata.name.expect("name");
                let _ = c.kill_pod("kube-system", &name).await;
            }
        }
    };
    let _ = tokio::join!(s.churn.burst(c, 60, Duration::from_millis(150)), storm);
    s.converge("allocator kill storm (both replicas, six times)")
        .await;

    // --- Everything at once: the endpoints leader, a DNS replica and node-1's proxy killed
    // while the API server restarts, under churn.
    let endpoints_leader = leader(&s.cluster, "svcplane-endpoints-").await;
    let dns_one = pods(&s.cluster, "kube-system", "svcplane-dns-").await[0]
        .metadata
        .name
        .clone()
        .expect("name");
    s.churn_during(10, async {}).await;
    let c = &s.cluster;
    let _ = c.kill_pod("kube-system", &endpoints_leader).await;
    let _ = c.kill_pod("kube-system", &dns_one).await;
    let _ = c.kill_node_processes(1).await;
    c.restart_apiserver(Duration::from_secs(3))
        .await
        .expect("API server back");
    s.churn_during(20, async {}).await;
    s.converge("combined: endpoints leader, DNS replica, proxy and API server")
        .await;

    // Memory under churn alone: the same processes before and after `SVCPLANE_MEMORY_OPS`
    // operations (300 by default; bench/faults.sh runs 1,200, an hour of one change every 3 s).
    let ops: usize = std::env::var("SVCPLANE_MEMORY_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let memory_before = memory(&s.cluster).await;
    s.churn_during(ops, async {}).await;
    s.converge(&format!("{ops} more operations (memory)")).await;
    let memory_after = memory(&s.cluster).await;

    let mut figures = String::new();
    let _ = writeln!(
        figures,
        "fault suite (seed {seed}, {} churn operations):",
        s.churn.ops
    );
    for (after, took) in &s.report.converged {
        let _ = writeln!(
            figures,
            "  {after}: converged in {:.1} s",
            took.as_secs_f64()
        );
    }
    for line in &s.report.lines {
        let _ = writeln!(figures, "  {line}");
    }
    let _ = writeln!(
        figures,
        "  memory (RSS, MiB) of each process before -> after {ops} operations:"
    );
    for (pid, (who, before)) in &memory_before {
        if let Some((_, after)) = memory_after.get(pid) {
            let _ = writeln!(
                figures,
                "    {who} (pid {pid}): {:.1} -> {:.1}",
                *before as f64 / 1024.0,
                *after as f64 / 1024.0
            );
        }
    }
    eprintln!("{figures}");
    s.cluster.stop().await;
}
