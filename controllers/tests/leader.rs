//! Two replicas with leader election against a real kube-apiserver: one writes; when it is
//! killed the other takes the Lease within a lease duration and catches up on what changed in
//! between; when its API connection stalls it stops leading before the other takes the Lease.
//! The metrics it exports are the ones `docs/endpoints.md` lists.

mod common;

use common::*;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use svcplane_testenv::TestEnv;
use svcplane_testenv::kubelet::{self, PodBuilder};
use svcplane_testenv::relay::StallRelay;

/// `--leader-elect-lease-duration`, `--leader-elect-renew-deadline`, `--leader-elect-retry-period`.
struct Timings {
    lease: &'static str,
    renew: &'static str,
    retry: &'static str,
}

/// Short, so a take-over after a kill is quick.
const QUICK: Timings = Timings {
    lease: "3s",
    renew: "2s",
    retry: "500ms",
};

/// A renew deadline well inside the lease, so "A steps down" and "B takes over" are seconds
/// apart and their order is not a race.
const SPREAD: Timings = Timings {
    lease: "6s",
    renew: "3s",
    retry: "500ms",
};

/// A replica with leader election, its Lease in `default`, talking to the API through
/// `kubeconfig`; its admin server is on loopback, reachable whatever happens to that path.
fn replica(kubeconfig: &Path, name: &str, timings: &Timings) -> Running {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane-endpoints"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg(format!("--admin-addr={admin}"))
        .args([
            "--leader-elect",
            "--leader-elect-resource-namespace=default",
        ])
        .arg(format!("--leader-elect-lease-duration={}", timings.lease))
        .arg(format!("--leader-elect-renew-deadline={}", timings.renew))
        .arg(format!("--leader-elect-retry-period={}", timings.retry))
        .env("HOSTNAME", name)
        .stdin(Stdio::null())
        .spawn()
        .expect("start svcplane-endpoints");
    Running { child, admin }
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("svcplane-endpoints")
        .await
        .expect("get Lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn metric(r: &Running, name: &str) -> Option<f64> {
    let (_, body) = http_get(r.admin, "/metrics").await;
    samples(&body, name).next()
}

/// The values of every sample of `name` (any labels) in a Prometheus text scrape.
fn samples<'a>(body: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    body.lines()
        .filter(move |l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_when_the_leader_dies_and_loses_no_write() {
    let env = TestEnv::start().await.expect("control plane");
    let ns = "ha";
    let client = cluster(&env, ns, &[("node-a", Some("zone-a"))]).await;
    let mut a = Some(replica(env.kubeconfig_path(), "replica-a", &QUICK));
    let b = replica(env.kubeconfig_path(), "replica-b", &QUICK);
    // Both report ready: a follower is ready once its caches are.
    for r in [a.as_ref().expect("a"), &b] {
        wait_ready(r).await;
    }
    let leader = eventually(Duration::from_secs(20), "a leader", || async {
        holder(&client).await.ok_or_else(|| "no holder".to_owned())
    })
    .await;
    let a_leads = leader.starts_with("replica-a");
    let (mut dying, survivor) = if a_leads {
        (a.take(), b)
    } else {
        (Some(b), a.take().expect("a"))
    };
    let dying_ref = dying.as_ref().expect("leader");
    assert_eq!(
        metric(dying_ref, "svcplane_endpoints_leader").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&survivor, "svcplane_endpoints_leader").await,
        Some(0.0)
    );

    let port = || vec![service_port("http", 80, IntOrString::Int(8080))];
    create_service(
        &client,
        &selector_service(ns, "one", &[("app", "one")], port()),
    )
    .await;
    running_pod(
        &client,
        PodBuilder::new(ns, "one-0")
            .label("app", "one")
            .node("node-a"),
        "10.244.3.1",
        true,
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "Endpoints from the first leader",
        || async {
            match get_endpoints(&client, ns, "one").await {
                Some(ep) if endpoints_lines(&ep) == ["10.244.3.1 ready http:8080"] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // The leader dies without releasing the Lease; changes keep coming meanwhile.
    let killed_at = Instant::now();
    drop(dying.take());
    create_service(
        &client,
        &selector_service(ns, "two", &[("app", "two")], port()),
    )
    .await;
    running_pod(
        &client,
        PodBuilder::new(ns, "two-0")
            .label("app", "two")
            .node("node-a"),
        "10.244.3.2",
        true,
    )
    .await;
    kubelet::set_pod_running(
        &client,
        ns,
        "one-0",
        &["10.244.3.1".parse().expect("ip")],
        false,
    )
    .await
    .expect("flip");

    eventually(
        Duration::from_secs(20),
        "the survivor writes what changed",
        || async {
            let one = get_endpoints(&client, ns, "one")
                .await
                .map(|e| endpoints_lines(&e));
            let two = get_endpoints(&client, ns, "two")
                .await
                .map(|e| endpoints_lines(&e));
            let two_slices = seen(&slices(&client, ns, "two", SLICE_MANAGER).await).len();
            let want_one = vec!["10.244.3.1 notready http:8080".to_owned()];
            let want_two = vec!["10.244.3.2 ready http:8080".to_owned()];
            if one.as_ref() == Some(&want_one) && two.as_ref() == Some(&want_two) && two_slices == 1
            {
                Ok(())
            } else {
                Err(format!("{one:?} {two:?} slices={two_slices}"))
            }
        },
    )
    .await;
    let took = killed_at.elapsed();
    let new_holder = holder(&client).await.expect("holder");
    assert!(!new_holder.starts_with(if a_leads { "replica-a" } else { "replica-b" }));
    assert_eq!(
        metric(&survivor, "svcplane_endpoints_leader").await,
        Some(1.0)
    );
    // Reported, not asserted (timing belongs to benchmarks): with a 3 s lease and 0.5 s retries
    // this is typically 3-5 s; the 20 s bound above is only "it happens at all".
    println!("take-over and catch-up after the leader died: {took:?}");

    // Every metric the docs list is exported, and nothing undocumented.
    let (_, body) = http_get(survivor.admin, "/metrics").await;
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("svcplane_endpoints_") || n.starts_with("svcplane_watch_"))
        .map(str::to_owned)
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/endpoints.md"))
        .expect("docs/endpoints.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("svcplane_endpoints_") || n.starts_with("svcplane_watch_"))
        .map(str::to_owned)
        .collect();
    assert!(
        exported.is_subset(&documented),
        "undocumented: {:?}",
        exported.difference(&documented)
    );
    // A labelled metric appears once it has a value; nothing was rejected in this run.
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert_eq!(
        missing,
        ["svcplane_watch_rejected_objects_total"],
        "not exported: {missing:?}"
    );
}

/// A leader whose API connection stalls (requests hang, nothing fails) stops leading, and stops
/// writing, before another replica can take the Lease: there are never two writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_steps_down_before_another_replica_takes_the_lease() {
    const LEADER: &str = "svcplane_endpoints_leader";
    const WRITES: &str = "svcplane_endpoints_api_writes_total";
    const WITHIN: Duration = Duration::from_secs(40);
    const MAX_FLIPS: u32 = 40;

    let env = TestEnv::start().await.expect("control plane");
    let ns = "stall";
    let client = cluster(&env, ns, &[("node-a", Some("zone-a"))]).await;
    let apiserver: SocketAddr = env
        .server_url()
        .strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .expect("apiserver address");
    let relay = StallRelay::start(apiserver).await.expect("relay");
    let via_relay = env
        .write_kubeconfig_via("kubeconfig-via-relay", relay.addr())
        .expect("relay kubeconfig");

    let mut a = replica(&via_relay, "replica-a", &SPREAD);
    wait_ready(&a).await;
    eventually(Duration::from_secs(20), "replica A leads", || async {
        let lease = holder(&client).await;
        let gauge = metric(&a, LEADER).await;
        match (&lease, gauge) {
            (Some(h), Some(1.0)) if h.starts_with("replica-a") => Ok(()),
            _ => Err(format!("holder {lease:?}, A's gauge {gauge:?}")),
        }
    })
    .await;
    create_service(
        &client,
        &selector_service(
            ns,
            "one",
            &[("app", "one")],
            vec![service_port("http", 80, IntOrString::Int(8080))],
        ),
    )
    .await;
    running_pod(
        &client,
        PodBuilder::new(ns, "one-0")
            .label("app", "one")
            .node("node-a"),
        "10.244.3.1",
        true,
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "Endpoints and slice from A",
        || async {
            let lines = get_endpoints(&client, ns, "one")
                .await
                .map(|e| endpoints_lines(&e));
            let slice = seen(&slices(&client, ns, "one", SLICE_MANAGER).await);
            match (&lines, slice.as_slice()) {
                (Some(l), [e]) if l == &["10.244.3.1 ready http:8080"] && e.ready => Ok(()),
                _ => Err(format!("{lines:?} {slice:?}")),
            }
        },
    )
    .await;
    let (_, body) = http_get(a.admin, "/metrics").await;
    let written: f64 = samples(&body, WRITES).sum();
    assert!(written > 0.0, "A leads but counted no writes");

    // A's requests now hang; B talks to the API server directly. The readiness flips give a
    // leader something to write throughout.
    let stalled_at = Instant::now();
    relay.stall();
    let b = replica(env.kubeconfig_path(), "replica-b", &SPREAD);
    let ip: [IpAddr; 1] = ["10.244.3.1".parse().expect("ip")];
    let mut ready = true;
    let mut flips = 0;
    let mut next_flip = stalled_at;
    // When A stopped leading, and its write count then.
    let mut a_down: Option<(Duration, f64)> = None;
    let mut a_exited = false;
    let mut b_up: Option<Duration> = None;
    let mut a_writes = written;
    while (a_down.is_none() || b_up.is_none()) && stalled_at.elapsed() < WITHIN {
        if flips < MAX_FLIPS && Instant::now() >= next_flip {
            ready = !ready;
            kubelet::set_pod_running(&client, ns, "one-0", &ip, ready)
                .await
                .expect("flip readiness");
            flips += 1;
            next_flip += Duration::from_millis(500);
        }
        if a_down.is_none() {
            let (_, body) = http_get(a.admin, "/metrics").await;
            if !body.is_empty() {
                a_writes = samples(&body, WRITES).sum();
            }
            if samples(&body, LEADER).next() == Some(0.0) {
                a_down = Some((stalled_at.elapsed(), a_writes));
            } else if let Ok(Some(status)) = a.child.try_wait() {
                // Exiting on a lost lease (as client-go's users do) stops writing too.
                eprintln!("replica A exited after the stall: {status}");
                a_exited = true;
                a_down = Some((stalled_at.elapsed(), a_writes));
            }
        }
        if b_up.is_none()
            && holder(&client)
                .await
                .is_some_and(|h| h.starts_with("replica-b"))
        {
            b_up = Some(stalled_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reported, not asserted: only their order matters.
    eprintln!(
        "after the stall: A stopped leading at {:?}, B took the Lease at {b_up:?}",
        a_down.map(|(t, _)| t)
    );
    let Some((a_down_at, a_writes_at_down)) = a_down else {
        panic!(
            "replica A still reports leading {WITHIN:?} after its API connection stalled \
             (B took the Lease at {b_up:?} after the stall): two writers"
        );
    };
    let b_up_at = b_up.expect("replica B never took the Lease");
    assert!(
        a_down_at < b_up_at,
        "B took the Lease {b_up_at:?} after the stall, before A stopped leading at {a_down_at:?}"
    );

    let want = format!(
        "10.244.3.1 {} http:8080",
        if ready { "ready" } else { "notready" }
    );
    eventually(
        Duration::from_secs(20),
        "B writes the last readiness",
        || async {
            let gauge = metric(&b, LEADER).await;
            let lines = get_endpoints(&client, ns, "one")
                .await
                .map(|e| endpoints_lines(&e));
            let slice = seen(&slices(&client, ns, "one", SLICE_MANAGER).await);
            match (gauge, &lines, slice.as_slice()) {
                (Some(1.0), Some(l), [e]) if l == &[want.as_str()] && e.ready == ready => Ok(()),
                _ => Err(format!("B's gauge {gauge:?}, {lines:?} {slice:?}")),
            }
        },
    )
    .await;

    if !a_exited {
        let (_, body) = http_get(a.admin, "/metrics").await;
        assert_eq!(
            samples(&body, LEADER).next(),
            Some(0.0),
            "A leads again while stalled"
        );
        let a_writes_now: f64 = samples(&body, WRITES).sum();
        assert_eq!(
            a_writes_now, a_writes_at_down,
            "A counted writes after it stopped leading"
        );
    }
}
