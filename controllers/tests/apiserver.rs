//! svcplane-endpoints against a real kube-apiserver: Services, Nodes and pods written through
//! the API (pod status through the status subresource), and the Endpoints and EndpointSlices
//! that appear checked rule by rule.

mod common;

use common::*;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::TestEnv;
use svcplane_testenv::kubelet::{self, PodBuilder};

const WAIT: Duration = Duration::from_secs(20);

fn seen_one(
    ip: &str,
    (ready, serving, terminating): (bool, bool, bool),
    hostname: Option<&str>,
    node: &str,
    zone: &str,
    pod: &str,
    ports: &[&str],
) -> Seen {
    Seen {
        ip: ip.into(),
        ready,
        serving,
        terminating,
        hostname: hostname.map(str::to_owned),
        node: Some(node.into()),
        zone: Some(zone.into()),
        pod: Some(pod.into()),
        ports: ports.iter().map(|p| (*p).to_owned()).collect(),
    }
}

async fn expect_slices(client: &kube::Client, ns: &str, svc: &str, want: Vec<Seen>) {
    let mut want = want;
    want.sort();
    eventually(WAIT, &format!("slices of {svc}"), || {
        let want = want.clone();
        async move {
            let got = seen(&slices(client, ns, svc, SLICE_MANAGER).await);
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:#?}"))
            }
        }
    })
    .await
}

async fn expect_endpoints(client: &kube::Client, ns: &str, svc: &str, want: &[&str]) -> Endpoints {
    eventually(WAIT, &format!("Endpoints of {svc}"), || async move {
        match get_endpoints(client, ns, svc).await {
            Some(ep) if endpoints_lines(&ep) == want => Ok(ep),
            Some(ep) => Err(format!("{:#?}", endpoints_lines(&ep))),
            None => Err("absent".into()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_services_and_pods() {
    let env = TestEnv::start().await.expect("control plane");
    let ns = "shop";
    let client = cluster(
        &env,
        ns,
        &[("node-a", Some("zone-a")), ("node-b", Some("zone-b"))],
    )
    .await;
    let controller = start(&env, &[]);
    wait_ready(&controller).await;

    let web = selector_service(
        ns,
        "web",
        &[("app", "web")],
        vec![
            service_port("http", 80, IntOrString::String("http".into())),
            service_port("metrics", 9090, IntOrString::Int(9090)),
        ],
    );
    create_service(&client, &web).await;
    let pod = |name: &str, node: &str| PodBuilder::new(ns, name).label("app", "web").node(node);
    // Ready, with the named port and a hostname in the Service's subdomain.
    running_pod(
        &client,
        pod("web-0", "node-a")
            .port("http", 8080, "TCP")
            .hostname("web-0", "web"),
        "10.244.1.10",
        true,
    )
    .await;
    // Not ready, without the named port: only under the numeric one.
    running_pod(&client, pod("web-1", "node-b"), "10.244.1.11", false).await;
    // Ready, about to terminate.
    running_pod(
        &client,
        pod("web-2", "node-a").port("http", 8080, "TCP"),
        "10.244.1.12",
        true,
    )
    .await;
    // Finished, and never started: neither counts.
    running_pod(&client, pod("web-3", "node-a"), "10.244.1.13", true).await;
    kubelet::set_pod_phase(&client, ns, "web-3", "Succeeded")
        .await
        .expect("phase");
    pod("web-4", "node-a")
        .create(&client)
        .await
        .expect("pod without IP");
    // Another app: not selected.
    running_pod(
        &client,
        PodBuilder::new(ns, "db-0")
            .label("app", "db")
            .node("node-a"),
        "10.244.1.20",
        true,
    )
    .await;
    kubelet::mark_pod_terminating(&client, ns, "web-2")
        .await
        .expect("terminating");

    let both = ["http:8080", "metrics:9090"];
    expect_slices(
        &client,
        ns,
        "web",
        vec![
            seen_one(
                "10.244.1.10",
                (true, true, false),
                Some("web-0"),
                "node-a",
                "zone-a",
                "web-0",
                &both,
            ),
            seen_one(
                "10.244.1.11",
                (false, false, false),
                None,
                "node-b",
                "zone-b",
                "web-1",
                &["metrics:9090"],
            ),
            seen_one(
                "10.244.1.12",
                (false, true, true),
                None,
                "node-a",
                "zone-a",
                "web-2",
                &both,
            ),
        ],
    )
    .await;
    // Endpoints leave the terminating pod out; the named port only reaches web-0.
    let ep = expect_endpoints(
        &client,
        ns,
        "web",
        &[
            "10.244.1.10 ready http:8080 web-0",
            "10.244.1.10 ready metrics:9090 web-0",
            "10.244.1.11 notready metrics:9090",
        ],
    )
    .await;
    let labels = ep.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
    assert_eq!(
        labels
            .get("endpoints.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("svcplane-endpoints")
    );
    let addr = &ep.subsets.as_ref().expect("subsets")[0]
        .addresses
        .as_ref()
        .expect("ready")[0];
    assert_eq!(addr.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        addr.target_ref.as_ref().and_then(|r| r.kind.as_deref()),
        Some("Pod")
    );
    // Slice metadata: owner, labels, trigger time.
    let slice = &slices(&client, ns, "web", SLICE_MANAGER).await[0];
    let owner = &slice.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("shop")
    );

    // web-1 turns ready, in a later second than it turned unready: transition times have
    // one-second resolution, and an unchanged time is no trigger (as upstream).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let flipped = kubelet::set_pod_running(
        &client,
        ns,
        "web-1",
        &["10.244.1.11".parse().expect("ip")],
        true,
    )
    .await
    .expect("ready");
    let ready_at = flipped
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_transition_time)
        .expect("Ready transition time")
        .0;
    let ep = expect_endpoints(
        &client,
        ns,
        "web",
        &[
            "10.244.1.10 ready http:8080 web-0",
            "10.244.1.10 ready metrics:9090 web-0",
            "10.244.1.11 ready metrics:9090",
        ],
    )
    .await;
    // The write a readiness flip causes carries the flip's time as its trigger time.
    let trigger = |annotations: Option<&BTreeMap<String, String>>| {
        annotations
            .and_then(|a| a.get("endpoints.kubernetes.io/last-change-trigger-time"))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    };
    assert_eq!(trigger(ep.metadata.annotations.as_ref()), Some(ready_at));
    let flipped_slice = eventually(WAIT, "slice trigger time", || async {
        let s = slices(&client, ns, "web", SLICE_MANAGER).await;
        s.into_iter()
            .find(|s| trigger(s.metadata.annotations.as_ref()) == Some(ready_at))
            .ok_or_else(|| "no slice stamped with the flip".to_owned())
    })
    .await;
    assert!(
        flipped_slice
            .endpoints
            .iter()
            .flatten()
            .any(|e| e.addresses[0] == "10.244.1.11")
    );
    // web-0's labels stop matching: it leaves both.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .patch(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "app": "old" } } })),
        )
        .await
        .expect("relabel");
    expect_slices(
        &client,
        ns,
        "web",
        vec![
            seen_one(
                "10.244.1.11",
                (true, true, false),
                None,
                "node-b",
                "zone-b",
                "web-1",
                &["metrics:9090"],
            ),
            seen_one(
                "10.244.1.12",
                (false, true, true),
                None,
                "node-a",
                "zone-a",
                "web-2",
                &both,
            ),
        ],
    )
    .await;
    expect_endpoints(&client, ns, "web", &["10.244.1.11 ready metrics:9090"]).await;

    // Hints: topology-mode Auto shares ready endpoints out by zone CPU (both Nodes have 4 CPUs:
    // half each); trafficDistribution hints each endpoint for its own zone.
    let mut auto = selector_service(
        ns,
        "auto",
        &[("app", "auto")],
        vec![service_port("http", 80, IntOrString::Int(8080))],
    );
    auto.metadata.annotations = Some(BTreeMap::from([(
        "service.kubernetes.io/topology-mode".into(),
        "Auto".into(),
    )]));
    create_service(&client, &auto).await;
    let mut close = selector_service(
        ns,
        "close",
        &[("app", "auto")],
        vec![service_port("http", 80, IntOrString::Int(8080))],
    );
    close.spec.as_mut().expect("spec").traffic_distribution = Some("PreferClose".into());
    create_service(&client, &close).await;
    for (i, node) in ["node-a", "node-a", "node-a", "node-b"]
        .into_iter()
        .enumerate()
    {
        running_pod(
            &client,
            PodBuilder::new(ns, &format!("auto-{i}"))
                .label("app", "auto")
                .node(node),
            &format!("10.244.4.{}", i + 1),
            true,
        )
        .await;
    }
    let hints = |name: &'static str| {
        let client = client.clone();
        async move {
            let mut got: Vec<(String, String)> = slices(&client, ns, name, SLICE_MANAGER)
                .await
                .iter()
                .flat_map(|s| s.endpoints.clone().unwrap_or_default())
                .map(|e| {
                    let zone = e.zone.unwrap_or_default();
                    let hint = e
                        .hints
                        .and_then(|h| h.for_zones)
                        .map(|z| {
                            z.iter()
                                .map(|z| z.name.clone())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    (zone, hint)
                })
                .collect();
            got.sort();
            got
        }
    };
    eventually(WAIT, "Auto hints", || async {
        let got = hints("auto").await;
        let per_zone = |z: &str| got.iter().filter(|(_, h)| h == z).count();
        if got.len() == 4 && per_zone("zone-a") == 2 && per_zone("zone-b") == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    eventually(WAIT, "PreferClose hints", || async {
        let got = hints("close").await;
        if got.len() == 4 && got.iter().all(|(z, h)| z == h) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // Deleting the Service takes its Endpoints and slices with it.
    Api::<Service>::namespaced(client.clone(), ns)
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "Endpoints and slices gone", || async {
        let ep = get_endpoints(&client, ns, "web").await;
        let s = slices(&client, ns, "web", SLICE_MANAGER).await;
        if ep.is_none() && s.is_empty() {
            Ok(())
        } else {
            Err(format!("{ep:?} {s:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_external_name_selectorless_and_mirroring() {
    let env = TestEnv::start().await.expect("control plane");
    let ns = "apps";
    let client = cluster(&env, ns, &[("node-a", None)]).await;
    let controller = start(&env, &[]);
    wait_ready(&controller).await;

    // Headless without ports: addresses without ports; the slice is labelled headless.
    let mut headless = selector_service(ns, "db", &[("app", "db")], vec![]);
    headless.spec.as_mut().expect("spec").cluster_ip = Some("None".into());
    headless.spec.as_mut().expect("spec").ports = None;
    create_service(&client, &headless).await;
    running_pod(
        &client,
        PodBuilder::new(ns, "db-0")
            .label("app", "db")
            .node("node-a"),
        "10.244.2.10",
        true,
    )
    .await;
    expect_endpoints(&client, ns, "db", &["10.244.2.10 ready"]).await;
    let s = eventually(WAIT, "headless slice", || async {
        let s = slices(&client, ns, "db", SLICE_MANAGER).await;
        let v4: Vec<_> = s.into_iter().filter(|s| s.address_type == "IPv4").collect();
        match v4.first() {
            Some(first) if first.endpoints.as_ref().is_some_and(|e| !e.is_empty()) => {
                Ok(first.clone())
            }
            _ => Err("no IPv4 slice with endpoints".to_owned()),
        }
    })
    .await;
    // `ports: []` reads back as absent.
    assert_eq!(s.ports.as_ref().map_or(0, Vec::len), 0);
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("service.kubernetes.io/headless")
            .map(String::as_str),
        Some("")
    );
    // No zone label on the node: no zone.
    assert_eq!(s.endpoints.as_ref().expect("endpoints")[0].zone, None);

    // ExternalName: nothing at all.
    let external = Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some("ext".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("example.invalid".into()),
            selector: Some(BTreeMap::from([("app".into(), "db".into())])),
            ..Default::default()
        }),
        status: None,
    };
    create_service(&client, &external).await;

    // Selector-less Service with hand-made Endpoints: left alone, and mirrored.
    let manual = Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some("legacy".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![service_port("http", 80, IntOrString::Int(8080))]),
            ..Default::default()
        }),
        status: None,
    };
    create_service(&client, &manual).await;
    let hand_made = Endpoints {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some("legacy".into()),
            labels: Some(BTreeMap::from([("origin".into(), "hand".into())])),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress {
                ip: "192.0.2.50".into(),
                ..Default::default()
            }]),
            not_ready_addresses: Some(vec![EndpointAddress {
                ip: "192.0.2.51".into(),
                ..Default::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }]),
    };
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &hand_made)
        .await
        .expect("hand-made Endpoints");
    let mirrored = eventually(WAIT, "mirrored slice", || async {
        let s = slices(&client, ns, "legacy", MIRROR_MANAGER).await;
        let got: Vec<(String, Option<bool>)> = s
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect();
        if got.len() == 2 {
            Ok(s)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let m = &mirrored[0];
    assert_eq!(
        m.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("origin"))
            .map(String::as_str),
        Some("hand")
    );
    let owner = &m.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Endpoints", "legacy")
    );
    // The hand-made Endpoints is not rewritten by the Endpoints controller.
    let still = get_endpoints(&client, ns, "legacy").await.expect("kept");
    assert_eq!(
        endpoints_lines(&still),
        [
            "192.0.2.50 ready http:8080",
            "192.0.2.51 notready http:8080"
        ]
    );
    // Opting out removes the mirror.
    Api::<Endpoints>::namespaced(client.clone(), ns)
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "endpointslice.kubernetes.io/skip-mirror": "true" } } })),
        )
        .await
        .expect("skip-mirror");
    eventually(WAIT, "mirror removed", || async {
        let s = slices(&client, ns, "legacy", MIRROR_MANAGER).await;
        if s.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", s.len()))
        }
    })
    .await;

    // By now every queued Service has been synced: ExternalName and selector-less Services
    // got neither Endpoints nor slices of ours.
    assert!(get_endpoints(&client, ns, "ext").await.is_none());
    assert!(slices(&client, ns, "ext", SLICE_MANAGER).await.is_empty());
    assert!(
        slices(&client, ns, "legacy", SLICE_MANAGER)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_endpoints_split_into_slices_and_cap_endpoints() {
    let env = TestEnv::start().await.expect("control plane");
    let ns = "big";
    let client = cluster(&env, ns, &[("node-a", Some("zone-a"))]).await;
    let controller = start(&env, &["--max-endpoints-per-slice=40"]);
    wait_ready(&controller).await;
    create_service(
        &client,
        &selector_service(
            ns,
            "web",
            &[("app", "web")],
            vec![service_port("http", 80, IntOrString::Int(8080))],
        ),
    )
    .await;
    let n = 1010;
    let pods = futures::stream::iter(0..n).map(|i| {
        let client = client.clone();
        async move {
            let ip = format!("10.250.{}.{}", i / 200, i % 200 + 1);
            // 10 not ready: with 1000 ready, the cap drops them all.
            running_pod(
                &client,
                PodBuilder::new(ns, &format!("web-{i}"))
                    .label("app", "web")
                    .node("node-a"),
                &ip,
                i >= 10,
            )
            .await;
        }
    });
    use futures::StreamExt;
    pods.buffer_unordered(32).collect::<Vec<()>>().await;

    let counts = eventually(
        Duration::from_secs(60),
        "1010 endpoints in slices",
        || async {
            let s = slices(&client, ns, "web", SLICE_MANAGER).await;
            let counts: Vec<usize> = s
                .iter()
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .collect();
            if counts.iter().sum::<usize>() == n {
                Ok(counts)
            } else {
                Err(format!("{counts:?}"))
            }
        },
    )
    .await;
    // Pods arrived one by one, so slices are not all full (upstream never compacts either);
    // none is over the limit.
    assert!(counts.iter().all(|c| *c <= 40), "{counts:?}");
    assert!(counts.len() >= n.div_ceil(40), "{counts:?}");
    // Wait for the truncated state (1000 addresses and the annotation): on the way there the
    // Endpoints can hold 1000 addresses untruncated, some not yet ready.
    let ep = eventually(Duration::from_secs(60), "Endpoints capped", || async {
        match get_endpoints(&client, ns, "web").await {
            Some(ep)
                if endpoints_lines(&ep).len() == 1000
                    && ep.metadata.annotations.as_ref().is_some_and(|a| {
                        a.contains_key("endpoints.kubernetes.io/over-capacity")
                    }) =>
            {
                Ok(ep)
            }
            other => Err(format!("{:?}", other.map(|e| endpoints_lines(&e).len()))),
        }
    })
    .await;
    assert!(endpoints_lines(&ep).iter().all(|l| l.contains(" ready ")));
    assert_eq!(
        ep.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("endpoints.kubernetes.io/over-capacity"))
            .map(String::as_str),
        Some("truncated")
    );
}
