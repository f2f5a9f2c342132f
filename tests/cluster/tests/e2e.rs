//! End to end over the local cluster `svcplane-cluster` starts: the four svcplane binaries as
//! the `deploy/` manifests run them, in simulated nodes and pods (network namespaces), with the
//! demo app. Everything a pod or an external host would do is done from inside those
//! namespaces: `dig @10.96.0.10`, `curl` to a ClusterIP, a NodePort and a LoadBalancer IP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_cluster::Cluster;
use svcplane_testenv::wait::eventually;

mod common;

use common::{bin_dir, prefix, require_root, start};

async fn dig(cluster: &Cluster, args: &[&str]) -> String {
    let mut command = vec!["dig", "@10.96.0.10", "+time=2", "+tries=1"];
    command.extend_from_slice(args);
    cluster
        .exec("demo", "client", &command)
        .await
        .unwrap_or_else(|e| format!("dig failed: {e}"))
}

/// `curl` from namespace-running `exec`: the body, or curl's error (exit code and message).
async fn curl_from_client(cluster: &Cluster, url: &str) -> String {
    cluster
        .exec("demo", "client", &["curl", "-sS", "-m", "2", url])
        .await
        .unwrap_or_else(|e| format!("error: {e}"))
}

/// The pod names that answered `count` requests to `url` from the client, tallied.
async fn spread(cluster: &Cluster, url: &str, count: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for _ in 0..count {
        let body = curl_from_client(cluster, url).await;
        let who = body
            .split(" on ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        *tally.entry(who).or_insert(0) += 1;
    }
    tally
}

async fn web_pods(cluster: &Cluster) -> Vec<Pod> {
    Api::<Pod>::namespaced(cluster.client().clone(), "demo")
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn ready_web_pods(cluster: &Cluster) -> BTreeMap<String, String> {
    web_pods(cluster)
        .await
        .into_iter()
        .filter(svcplane_cluster::pod_ready)
        .map(|p| {
            let ip = p.status.and_then(|s| s.pod_ip).unwrap_or_default();
            (p.metadata.name.unwrap_or_default(), ip)
        })
        .collect()
}

async fn scale(cluster: &Cluster, replicas: i32) {
    Api::<Deployment>::namespaced(cluster.client().clone(), "demo")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scale demo/web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_from_a_pod() {
    let cluster = start("dns").await;
    let services = Api::<Service>::namespaced(cluster.client().clone(), "demo");
    let web_ip = services
        .get("web")
        .await
        .expect("web")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("clusterIP");

    // A: the ClusterIP.
    let a = dig(&cluster, &["+short", "web.demo.svc.cluster.local"]).await;
    assert_eq!(a.trim(), web_ip, "A web.demo.svc.cluster.local");
    // SRV: the named port.
    let srv = dig(
        &cluster,
        &["+short", "SRV", "_http._tcp.web.demo.svc.cluster.local"],
    )
    .await;
    assert_eq!(srv.trim(), "0 100 80 web.demo.svc.cluster.local.", "SRV");
    // Headless: the ready pods' addresses.
    let headless = dig(&cluster, &["+short", "web-headless.demo.svc.cluster.local"]).await;
    let got: BTreeSet<&str> = headless.lines().map(str::trim).collect();
    let want_ips = ready_web_pods(&cluster).await;
    let want: BTreeSet<&str> = want_ips.values().map(String::as_str).collect();
    assert_eq!(got, want, "headless A records are the ready pods");
    // ExternalName: a CNAME (to an in-cluster name, so it resolves without an upstream).
    let cname = dig(&cluster, &["+short", "docs.demo.svc.cluster.local"]).await;
    assert_eq!(
        cname.lines().collect::<Vec<_>>(),
        vec!["web.demo.svc.cluster.local.", web_ip.as_str()],
        "ExternalName"
    );
    // PTR for the ClusterIP.
    let ptr = dig(&cluster, &["+short", "-x", &web_ip]).await;
    assert_eq!(ptr.trim(), "web.demo.svc.cluster.local.", "PTR");
    // kubernetes.default through the pod's search path, and `web` from a pod in demo.
    let kubernetes = dig(&cluster, &["+short", "+search", "kubernetes.default"]).await;
    assert_eq!(kubernetes.trim(), "10.96.0.1", "kubernetes.default");
    let short = dig(&cluster, &["+short", "+search", "web"]).await;
    assert_eq!(short.trim(), web_ip, "`web` through the search path");
    // The system resolver (getent, as curl uses) reads the pod's resolv.conf.
    let hosts = cluster
        .exec("demo", "client", &["getent", "hosts", "web"])
        .await
        .expect("getent");
    assert!(hosts.starts_with(&web_ip), "getent hosts web: {hosts}");

    // TCP fallback: 100 addresses do not fit one UDP answer at dig's default EDNS size (1232),
    // so the server truncates and dig retries over TCP.
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "many"},
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]},
            }))
            .expect("service"),
        )
        .await
        .expect("headless service without selector");
    let endpoints: Vec<_> = (1..=100)
        .map(|i| json!({"addresses": [format!("10.250.0.{i}")], "conditions": {"ready": true}}))
        .collect();
    Api::<EndpointSlice>::namespaced(cluster.client().clone(), "demo")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "many-1", "labels": {"kubernetes.io/service-name": "many"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            }))
            .expect("slice"),
        )
        .await
        .expect("slice");
    let out = eventually(Duration::from_secs(20), "100 records over TCP", || async {
        let out = dig(&cluster, &["many.demo.svc.cluster.local"]).await;
        let answers = out
            .lines()
            .filter(|l| l.starts_with("many.demo.svc.cluster.local.") && l.contains("\tA\t"))
            .count();
        if answers == 100 { Ok(out) } else { Err(out) }
    })
    .await;
    assert!(
        out.contains("Truncated, retrying in TCP mode"),
        "the UDP answer was not truncated: {out}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_reaches_ready_pods_only() {
    let cluster = start("traffic").await;
    let client = cluster.client().clone();
    let services = Api::<Service>::namespaced(client.clone(), "demo");

    // ClusterIP by name from a pod: every ready pod takes a share.
    let ready = ready_web_pods(&cluster).await;
    assert_eq!(ready.len(), 3, "{ready:?}");
    // (The last pod may have turned ready a moment ago: its endpoint reaches the rules
    // within a sync.)
    let want: BTreeSet<String> = ready.keys().cloned().collect();
    eventually(
        Duration::from_secs(15),
        "requests spread over the ready pods",
        || async {
            let tally = spread(&cluster, "http://web.demo.svc.cluster.local/", 30).await;
            let served: BTreeSet<String> = tally.keys().cloned().collect();
            if served == want {
                Ok(())
            } else {
                Err(format!("{tally:?}"))
            }
        },
    )
    .await;

    // From the external host: the NodePort on every node and the LoadBalancer IP that
    // svcplane-allocator assigned from the demo pool.
    let public = services.get("web-public").await.expect("web-public");
    let node_port = public
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port)
        .expect("nodePort");
    let lb_ip = public
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .and_then(|i| i[0].ip.clone())
        .expect("LoadBalancer IP");
    assert!(lb_ip.starts_with("198.51.100."), "{lb_ip}");
    for url in [
        format!("http://192.0.2.11:{node_port}/"),
        format!("http://192.0.2.12:{node_port}/"),
        format!("http://{lb_ip}/"),
    ] {
        let body = cluster
            .exec_external(&["curl", "-sS", "-m", "2", &url])
            .await
            .unwrap_or_else(|e| panic!("{url} from outside: {e}"));
        assert!(body.contains(" on node-"), "{url}: {body}");
    }
    // The Services went through svcplane-allocator's webhook (reached by the API server over
    // its egress, through node 1's proxy, to the leader's pod).
    let mut patched = 0.0;
    for pod in Api::<Pod>::namespaced(client.clone(), "kube-system")
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        if !name.starts_with("svcplane-allocator-") {
            continue;
        }
        let (_, metrics) = cluster
            .pod_http("kube-system", &name, 9090, "/metrics")
            .await
            .unwrap_or_default();
        // The webhook speaks only TLS: plain HTTP gets no HTTP answer.
        let plain = cluster
            .pod_http("kube-system", &name, 9443, "/mutate-services")
            .await;
        assert!(
            plain.is_err(),
            "{name} answered plain HTTP on 9443: {plain:?}"
        );
        patched += metrics
            .lines()
            .filter(|l| {
                l.starts_with("svcplane_allocator_webhook_requests_total")
                    && l.contains("result=\"patched\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(patched >= 2.0, "the webhook patched {patched} Services");

    // A pod whose readiness fails stops getting traffic, and gets it back when it passes.
    let (victim, _) = ready.iter().next().expect("a pod");
    let body = cluster
        .exec(
            "demo",
            victim,
            &[
                "curl",
                "-sS",
                "-m",
                "2",
                "http://127.0.0.1:8080/readiness/fail",
            ],
        )
        .await
        .expect("fail readiness");
    assert!(body.contains("failing"), "{body}");
    eventually(
        Duration::from_secs(30),
        "traffic leaves the unready pod",
        || async {
            let tally = spread(&cluster, "http://web/", 12).await;
            if tally.contains_key(victim) || tally.keys().any(|k| k.contains("error")) {
                Err(format!("{tally:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    cluster
        .exec(
            "demo",
            victim,
            &[
                "curl",
                "-sS",
                "-m",
                "2",
                "http://127.0.0.1:8080/readiness/pass",
            ],
        )
        .await
        .expect("pass readiness");
    eventually(
        Duration::from_secs(30),
        "traffic returns to the pod",
        || async {
            let tally = spread(&cluster, "http://web/", 12).await;
            if tally.contains_key(victim) {
                Ok(())
            } else {
                Err(format!("{tally:?}"))
            }
        },
    )
    .await;

    // Scale to zero: the ClusterIP rejects (connection refused, at once); scale up: answers.
    scale(&cluster, 0).await;
    eventually(
        Duration::from_secs(30),
        "no endpoints: rejected",
        || async {
            let out = curl_from_client(&cluster, "http://web/").await;
            if out.contains("Connection refused") || out.contains("Couldn't connect") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    scale(&cluster, 2).await;
    eventually(
        Duration::from_secs(60),
        "scaled up: served again",
        || async {
            let out = curl_from_client(&cluster, "http://web/").await;
            if out.contains(" on node-") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    assert_eq!(
        web_pods(&cluster).await.len(),
        2,
        "two web pods after scaling to 2"
    );
    cluster.stop().await;
}

/// The command as a person runs it: a SIGKILL leaves namespaces behind, the next start removes
/// them first, and SIGTERM (as Ctrl-C) removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_sigkill_cleans_up_and_ctrl_c_removes_everything() {
    require_root();
    let prefix = prefix("kill");
    let ours = |prefix: &str| -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .map(str::to_owned)
            .collect()
    };
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_svcplane-cluster"))
            .args(["--nodes", "1", "--no-demo", "--prefix", &prefix])
            .arg("--bin-dir")
            .arg(bin_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start svcplane-cluster")
    };
    let wait_up = |child: &mut std::process::Child| {
        use std::io::BufRead as _;
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("The Service plane is up") {
                // Keep reading, so the rest of what it prints never meets a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return;
            }
        }
        let mut err = String::new();
        use std::io::Read as _;
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        panic!("svcplane-cluster ended before it was up: {err}");
    };

    let mut first = start();
    tokio::task::block_in_place(|| wait_up(&mut first));
    let _ = first.kill();
    let _ = first.wait();
    let left = ours(&prefix);
    assert!(left.len() >= 3, "a SIGKILL leaves the namespaces: {left:?}");
    let state = std::env::temp_dir().join(format!("svcplane-cluster-{prefix}"));
    let killed_control_plane = std::fs::read_to_string(state.join("control-plane-dir"))
        .expect("the state directory names the control plane's");

    let mut second = start();
    tokio::task::block_in_place(|| wait_up(&mut second));
    nix_kill(second.id(), "TERM");
    let status = tokio::task::block_in_place(|| second.wait()).expect("wait");
    let mut err = String::new();
    use std::io::Read as _;
    let _ = second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("network namespaces an earlier run left behind"),
        "the second start did not report the leftovers: {err}"
    );
    assert_eq!(
        ours(&prefix),
        Vec::<String>::new(),
        "namespaces left after Ctrl-C"
    );
    assert!(
        !Path::new(killed_control_plane.trim()).exists(),
        "the killed run's control-plane directory is left: {killed_control_plane}"
    );
    assert!(!state.exists(), "the state directory is left after Ctrl-C");
}

fn nix_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Without root the command says so in one line, before building anything.
#[test]
fn without_root_it_says_what_to_do_in_one_line() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_svcplane-cluster"))
        .arg("--bin-dir=/nonexistent")
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without root: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
}
