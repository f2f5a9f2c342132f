//! Faults over the local cluster, under steady load from a pod, counting what the load lost:
//! a rolling restart of svcplane-dns (SIGTERM, its lameduck, a replacement) must fail no DNS
//! query; svcplane-proxy restarted (SIGTERM, and SIGKILL) must break no established connection
//! and refuse no new one, because it leaves its rules in place. The counts are printed (and
//! recorded in docs/reliability.md).
//!
//! The rest of the fault suite (churn with an oracle, API server faults, watch expiry, bad
//! input at rate) is `fault_suite.rs`.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use svcplane_cluster::Cluster;
use svcplane_testenv::wait::eventually;

/// What a load thread saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    first_failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(why) => {
                self.failed += 1;
                if self.first_failures.len() < 5 {
                    self.first_failures.push(why);
                }
            }
        }
    }
}

/// Runs `attempt` every 10 ms on a thread inside network namespace `ns` until `stop`.
fn load_in(
    ns: String,
    stop: Arc<AtomicBool>,
    mut attempt: impl FnMut() -> Result<(), String> + Send + 'static,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        svcplane_testenv::netns::enter(&ns).expect("enter the pod's namespace");
        let mut tally = Tally::default();
        // Bounded: at most 10 minutes, whatever happens to `stop`.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            tally.record(attempt());
            std::thread::sleep(Duration::from_millis(10));
        }
        tally
    })
}

/// One HTTP/1.1 request on a kept-alive connection; the body.
fn request(stream: &mut BufReader<TcpStream>) -> Result<String, String> {
    stream
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut length = None;
    loop {
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length.ok_or("no content-length")?];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn pod_names(cluster: &Cluster, namespace: &str, prefix: &str) -> Vec<String> {
    common::pods(cluster, namespace, prefix)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// Deletes `name` (its grace period as the API gives it) and waits until it is gone and
/// `want` pods with `prefix` are ready again.
async fn replace(cluster: &Cluster, namespace: &str, prefix: &str, name: &str, want: usize) {
    let pods = Api::<Pod>::namespaced(cluster.client().clone(), namespace);
    pods.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        Duration::from_secs(90),
        &format!("{name} replaced"),
        || async {
            let all = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let old = all.iter().any(|p| p.metadata.name.as_deref() == Some(name));
            let ready = all
                .iter()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none() && svcplane_cluster::pod_ready(p)
                })
                .count();
            if !old && ready == want {
                Ok(())
            } else {
                Err(format!("old present {old}, {ready} ready"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_dns_fails_no_query() {
    let cluster = common::start("roll").await;
    let stop = Arc::new(AtomicBool::new(false));
    let client_ns = cluster.names().pod("demo", "client");
    let load = load_in(client_ns, stop.clone(), || {
        svcplane_cluster::probe::dns_a("web.demo.svc.cluster.local", Duration::from_secs(2))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One replica at a time, each through its lameduck (5 s) while its replacement starts.
    for name in pod_names(&cluster, "kube-system", "svcplane-dns-").await {
        replace(&cluster, "kube-system", "svcplane-dns-", &name, 2).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = tokio::task::spawn_blocking(move || load.join().expect("load thread"))
        .await
        .expect("join");
    eprintln!(
        "dns rolling restart: {} answered, {} failed {:?}",
        tally.ok, tally.failed, tally.first_failures
    );
    assert!(tally.ok > 500, "too little load to tell: {tally:?}");
    assert_eq!(
        tally.failed, 0,
        "queries failed during the rolling restart: {tally:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restart_breaks_no_connection() {
    let cluster = common::start("proxy").await;
    let web: SocketAddr = {
        let svc = Api::<Service>::namespaced(cluster.client().clone(), "demo")
            .get("web")
            .await
            .expect("web");
        let ip = svc.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
        SocketAddr::new(ip.parse().expect("ip"), 80)
    };
    let client_ns = cluster.names().pod("demo", "client");
    let stop = Arc::new(AtomicBool::new(false));
    // One connection kept open across the restarts, a request on it every 10 ms...
    let mut kept: Option<BufReader<TcpStream>> = None;
    let established = load_in(client_ns.clone(), stop.clone(), move || {
        if kept.is_none() {
            let s = TcpStream::connect_timeout(&web, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            kept = Some(BufReader::new(s));
        }
        let stream = kept.as_mut().ok_or("no connection")?;
        let body = request(stream).inspect_err(|_| kept = None)?;
        if body.contains(" on node-") {
            Ok(())
        } else {
            Err(body)
        }
    });
    // ...and a new connection every 10 ms.
    let fresh = load_in(client_ns, stop.clone(), move || {
        let s = TcpStream::connect_timeout(&web, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let body = request(&mut BufReader::new(s))?;
        if body.contains(" on node-") {
            Ok(())
        } else {
            Err(body)
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGTERM: each node's proxy pod deleted and replaced by its DaemonSet.
    let names = pod_names(&cluster, "kube-system", "svcplane-proxy-").await;
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        replace(&cluster, "kube-system", "svcplane-proxy-", name, 2).await;
    }
    // SIGKILL: every process in node 1's namespace (the proxy) killed; the kubelet restarts it.
    let node1 = cluster.nodes()[0].ns.clone();
    let killed = cluster.kill_node_processes(1).await.expect("kill");
    assert!(killed > 0, "nothing ran in node 1's namespace");
    eventually(
        Duration::from_secs(30),
        "node 1's proxy running again",
        || async {
            let pids = svcplane_cluster::net::sh(&["ip", "netns", "pids", &node1])
                .await
                .map_err(|e| e.to_string())?;
            if pids.trim().is_empty() {
                Err("no process".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (established, fresh) = tokio::task::spawn_blocking(move || {
        (
            established.join().expect("load thread"),
            fresh.join().expect("load thread"),
        )
    })
    .await
    .expect("join");
    eprintln!(
        "proxy restarts: kept-alive connection {} requests ok, {} failed {:?}; new connections {} ok, {} failed {:?}",
        established.ok,
        established.failed,
        established.first_failures,
        fresh.ok,
        fresh.failed,
        fresh.first_failures
    );
    assert!(
        established.ok > 300 && fresh.ok > 300,
        "too little load to tell"
    );
    assert_eq!(
        established.failed, 0,
        "the established connection broke: {established:?}"
    );
    assert_eq!(fresh.failed, 0, "new connections failed: {fresh:?}");
    cluster.stop().await;
}
