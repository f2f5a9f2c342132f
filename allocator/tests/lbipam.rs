//! LoadBalancer IPAM against the real API server, case by case as MetalLB documents its
//! behaviour: the CRD from `deploy/` installed with strict validation, the controller running
//! in-process, Services and pools written through the API, and what the allocator wrote (Service
//! and pool status, Events) read back from it.
//!
//! Pools are cluster-wide, so each case pins its pools to its own namespace
//! (`serviceAllocation.namespaces`) and uses its own addresses; the cases then share one control
//! plane and one controller.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_allocator::lbipam::crd::{LabelSelector, ServiceAllocation};
use svcplane_allocator::lbipam::{
    self, ANNOTATION_IPS, ANNOTATION_POOL, ANNOTATION_SHARING_KEY, LoadBalancerIPPool,
    LoadBalancerIPPoolSpec, LoadBalancerIPPoolStatus, Metrics, Settings,
};
use svcplane_runtime::Events;
use svcplane_testenv::{Options, TestEnv};
use tokio::sync::watch;

const WITHIN: Duration = Duration::from_secs(20);
const CLASS: &str = "svcplane.dev/lbipam";

/// Polls `check` until it returns `Ok`, for at most [`WITHIN`].
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    svcplane_testenv::wait::eventually(WITHIN, what, check).await
}

/// Installs the CRD exactly as shipped and waits until the API serves pools.
async fn install_crd(client: &Client) {
    let yaml = include_str!("../../deploy/svcplane-allocator-crds.yaml");
    svcplane_testenv::manifest::apply(client, yaml)
        .await
        .expect("apply deploy/svcplane-allocator-crds.yaml");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually("the CRD is established", || async {
        let crd = crds
            .get("loadbalancerippools.allocator.svcplane.dev")
            .await
            .map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !established {
            return Err("not established".into());
        }
        Api::<LoadBalancerIPPool>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
}

/// The controller in this process; stopped when dropped.
struct Running {
    stop: watch::Sender<bool>,
    leading: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    registry: prometheus::Registry,
}

impl Running {
    fn start(client: &Client, leading: bool) -> Self {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let events = Events::new(client.clone(), "svcplane-allocator", "test".into());
        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading_rx) = watch::channel(leading);
        let shutdown = async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        let task = tokio::spawn(lbipam::run(
            client.clone(),
            Settings {
                load_balancer_class: Some(CLASS.into()),
            },
            events,
            metrics,
            leading_rx,
            shutdown,
        ));
        Running {
            stop,
            leading: leading_tx,
            task: Some(task),
            registry,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WITHIN, task)
                .await
                .expect("the controller stops on shutdown")
                .expect("the controller task");
        }
    }

    /// The value of one series of the scrape.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .find(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_gauge().get_value() + m.get_counter().get_value())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

struct PoolBuilder {
    name: String,
    spec: LoadBalancerIPPoolSpec,
}

fn pool(name: &str, addresses: &[&str]) -> PoolBuilder {
    PoolBuilder {
        name: name.into(),
        spec: LoadBalancerIPPoolSpec {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            service_allocation: None,
        },
    }
}

impl PoolBuilder {
    /// Only Services in `ns` may use the pool (keeps the cases apart).
    fn only(mut self, ns: &str) -> Self {
        self.spec
            .service_allocation
            .get_or_insert_with(Default::default)
            .namespaces
            .push(ns.into());
        self
    }

    fn manual(mut self) -> Self {
        self.spec.auto_assign = false;
        self
    }

    fn avoid_buggy(mut self) -> Self {
        self.spec.avoid_buggy_ips = true;
        self
    }

    fn priority(mut self, p: i32) -> Self {
        self.spec
            .service_allocation
            .get_or_insert_with(Default::default)
            .priority = Some(p);
        self
    }

    fn namespace_selector(mut self, key: &str, value: &str) -> Self {
        let sa: &mut ServiceAllocation = self
            .spec
            .service_allocation
            .get_or_insert_with(Default::default);
        sa.namespace_selectors.push(LabelSelector {
            match_labels: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            match_expressions: Vec::new(),
        });
        self
    }

    async fn create(self, client: &Client) {
        Api::<LoadBalancerIPPool>::all(client.clone())
            .create(
                &PostParams::default(),
                &LoadBalancerIPPool::new(&self.name, self.spec),
            )
            .await
            .expect("create pool");
    }
}

struct SvcBuilder(Service);

fn lb(ns: &str, name: &str) -> SvcBuilder {
    SvcBuilder(Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: Some(vec![ServicePort {
                name: Some("p80".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

impl SvcBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    fn ports(mut self, ports: &[i32]) -> Self {
        self.spec().ports = Some(
            ports
                .iter()
                .map(|p| ServicePort {
                    name: Some(format!("p{p}")),
                    port: *p,
                    ..Default::default()
                })
                .collect(),
        );
        self
    }

    fn shared(self, key: &str) -> Self {
        self.annotate(ANNOTATION_SHARING_KEY, key)
    }

    fn load_balancer_ip(mut self, ip: &str) -> Self {
        self.spec().load_balancer_ip = Some(ip.into());
        self
    }

    fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    fn require_dual_stack(mut self) -> Self {
        self.spec().ip_family_policy = Some("RequireDualStack".into());
        self
    }

    async fn create(self, client: &Client) {
        let ns = self.0.metadata.namespace.clone().expect("namespace");
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &self.0)
            .await
            .expect("create Service");
    }
}

async fn ingress(client: &Client, ns: &str, name: &str) -> Result<Vec<String>, String> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect())
}

/// Waits until the Service's status shows exactly `want`.
async fn expect_ingress(client: &Client, ns: &str, name: &str, want: &[&str]) {
    eventually(&format!("{ns}/{name} has ingress {want:?}"), || async {
        let have = ingress(client, ns, name).await?;
        if have == want {
            Ok(())
        } else {
            Err(format!("{have:?}"))
        }
    })
    .await
}

/// Waits for an Event about the Service with `reason` whose note contains `text`.
async fn expect_event(client: &Client, ns: &str, name: &str, reason: &str, text: &str) -> String {
    eventually(
        &format!("{ns}/{name} has a {reason} Event saying {text:?}"),
        || async {
            let events = Api::<Event>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let about: Vec<String> = events
                .items
                .iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                .map(|e| {
                    format!(
                        "{} {}",
                        e.reason.as_deref().unwrap_or_default(),
                        e.note.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            about
                .iter()
                .find(|e| e.starts_with(reason) && e.contains(text))
                .cloned()
                .ok_or_else(|| format!("{about:?}"))
        },
    )
    .await
}

/// The Service keeps an empty status for a while (a refusal must not be followed by a write).
async fn expect_no_ingress_for_a_while(client: &Client, ns: &str, name: &str) {
    for _ in 0..10 {
        let have = ingress(client, ns, name).await.expect("get Service");
        assert!(have.is_empty(), "{ns}/{name} got {have:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pool_status(client: &Client, name: &str) -> Option<LoadBalancerIPPoolStatus> {
    Api::<LoadBalancerIPPool>::all(client.clone())
        .get(name)
        .await
        .ok()
        .and_then(|p| p.status)
}

async fn delete_service(client: &Client, ns: &str, name: &str) {
    Api::<Service>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete Service");
}

async fn patch_pool_addresses(client: &Client, name: &str, addresses: &[&str]) {
    Api::<LoadBalancerIPPool>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"addresses": addresses}})),
        )
        .await
        .expect("patch pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lbipam_follows_metallbs_documented_behaviour() {
    let env = TestEnv::start_with(Options::dual_stack())
        .await
        .expect("control plane");
    let client = env.client().await.expect("client");
    install_crd(&client).await;
    let running = Running::start(&client, true);

    // --- Automatic assignment: the lowest free address of a matching pool; pool status counts.
    namespace(&client, "auto", &[]).await;
    pool("auto", &["192.0.2.0/30"])
        .only("auto")
        .create(&client)
        .await;
    lb("auto", "one").create(&client).await;
    expect_ingress(&client, "auto", "one", &["192.0.2.0"]).await;
    expect_event(&client, "auto", "one", "IPAllocated", "assigned 192.0.2.0").await;
    lb("auto", "two").create(&client).await;
    expect_ingress(&client, "auto", "two", &["192.0.2.1"]).await;
    eventually("pool auto shows 2 used, 2 free", || async {
        match pool_status(&client, "auto").await {
            Some(s) if (s.assigned_ipv4, s.available_ipv4, s.available_ipv6) == (2, 2, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // --- Release on delete and on type change; the addresses are given out again.
    delete_service(&client, "auto", "one").await;
    Api::<Service>::namespaced(client.clone(), "auto")
        .patch(
            "two",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": null}})),
        )
        .await
        .expect("turn two into a ClusterIP Service");
    expect_ingress(&client, "auto", "two", &[]).await;
    lb("auto", "three").create(&client).await;
    expect_ingress(&client, "auto", "three", &["192.0.2.0"]).await;
    lb("auto", "four").create(&client).await;
    expect_ingress(&client, "auto", "four", &["192.0.2.1"]).await;

    // --- autoAssign: false is used only when asked for, by pool name or address.
    namespace(&client, "manual", &[]).await;
    pool("manual-cheap", &["192.0.2.16/30"])
        .only("manual")
        .create(&client)
        .await;
    pool("manual-gold", &["192.0.2.32/30"])
        .only("manual")
        .manual()
        .create(&client)
        .await;
    lb("manual", "plain").create(&client).await;
    expect_ingress(&client, "manual", "plain", &["192.0.2.16"]).await;
    lb("manual", "named")
        .annotate(ANNOTATION_POOL, "manual-gold")
        .create(&client)
        .await;
    expect_ingress(&client, "manual", "named", &["192.0.2.32"]).await;

    // --- Requested addresses: annotation, spec.loadBalancerIP, and one in no pool.
    lb("manual", "by-annotation")
        .annotate(ANNOTATION_IPS, "192.0.2.34")
        .create(&client)
        .await;
    expect_ingress(&client, "manual", "by-annotation", &["192.0.2.34"]).await;
    lb("manual", "by-spec")
        .load_balancer_ip("192.0.2.18")
        .create(&client)
        .await;
    expect_ingress(&client, "manual", "by-spec", &["192.0.2.18"]).await;
    lb("manual", "nowhere")
        .annotate(ANNOTATION_IPS, "203.0.113.77")
        .create(&client)
        .await;
    expect_event(
        &client,
        "manual",
        "nowhere",
        "AllocationFailed",
        "requested IP 203.0.113.77 is in no pool",
    )
    .await;
    expect_no_ingress_for_a_while(&client, "manual", "nowhere").await;

    // --- Sharing: same key and different ports share; same ports or another key are refused.
    namespace(&client, "share", &[]).await;
    pool("share", &["192.0.2.48/30"])
        .only("share")
        .create(&client)
        .await;
    lb("share", "http")
        .shared("web")
        .ports(&[80])
        .create(&client)
        .await;
    expect_ingress(&client, "share", "http", &["192.0.2.48"]).await;
    lb("share", "https")
        .shared("web")
        .ports(&[443])
        .create(&client)
        .await;
    expect_ingress(&client, "share", "https", &["192.0.2.48"]).await;
    lb("share", "clash")
        .shared("web")
        .ports(&[443])
        .annotate(ANNOTATION_IPS, "192.0.2.48")
        .create(&client)
        .await;
    expect_event(
        &client,
        "share",
        "clash",
        "AllocationFailed",
        "which also uses port TCP/443",
    )
    .await;
    lb("share", "stranger")
        .shared("other")
        .ports(&[8080])
        .annotate(ANNOTATION_IPS, "192.0.2.48")
        .create(&client)
        .await;
    expect_event(
        &client,
        "share",
        "stranger",
        "AllocationFailed",
        "which does not share key other",
    )
    .await;
    expect_no_ingress_for_a_while(&client, "share", "clash").await;
    expect_no_ingress_for_a_while(&client, "share", "stranger").await;
    eventually("a shared address counts once", || async {
        match pool_status(&client, "share").await {
            Some(s) if s.assigned_ipv4 == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // --- Dual-stack: RequireDualStack gets one address of each family, primary first.
    namespace(&client, "dual", &[]).await;
    pool("dual", &["198.51.100.0/30", "2001:db8::/126"])
        .only("dual")
        .create(&client)
        .await;
    lb("dual", "both")
        .require_dual_stack()
        .create(&client)
        .await;
    expect_ingress(&client, "dual", "both", &["198.51.100.0", "2001:db8::"]).await;
    namespace(&client, "v4only", &[]).await;
    pool("v4only", &["198.51.100.8/30"])
        .only("v4only")
        .create(&client)
        .await;
    lb("v4only", "both")
        .require_dual_stack()
        .create(&client)
        .await;
    expect_event(
        &client,
        "v4only",
        "both",
        "AllocationFailed",
        "RequireDualStack but no IPv6 pool",
    )
    .await;

    // --- Namespace selectors and priority: the prioritised pool for labelled namespaces only.
    namespace(&client, "prod", &[("env", "prod")]).await;
    namespace(&client, "dev", &[("env", "dev")]).await;
    pool("sel-fallback", &["198.51.100.16/30"])
        .namespace_selector("env", "prod")
        .namespace_selector("env", "dev")
        .create(&client)
        .await;
    pool("sel-prod", &["198.51.100.24/30"])
        .namespace_selector("env", "prod")
        .priority(1)
        .create(&client)
        .await;
    lb("prod", "web").create(&client).await;
    lb("dev", "web").create(&client).await;
    expect_ingress(&client, "prod", "web", &["198.51.100.24"]).await;
    expect_ingress(&client, "dev", "web", &["198.51.100.16"]).await;

    // --- avoidBuggyIPs skips .255 and .0.
    namespace(&client, "buggy", &[]).await;
    pool("buggy", &["198.51.100.255-198.51.101.1"])
        .only("buggy")
        .avoid_buggy()
        .create(&client)
        .await;
    lb("buggy", "x").create(&client).await;
    expect_ingress(&client, "buggy", "x", &["198.51.101.1"]).await;

    // --- Pool shrink: an address that falls out is replaced; the others stay.
    namespace(&client, "shrink", &[]).await;
    pool("shrink", &["203.0.113.0/29"])
        .only("shrink")
        .create(&client)
        .await;
    lb("shrink", "a").create(&client).await;
    expect_ingress(&client, "shrink", "a", &["203.0.113.0"]).await;
    lb("shrink", "b").create(&client).await;
    expect_ingress(&client, "shrink", "b", &["203.0.113.1"]).await;
    patch_pool_addresses(&client, "shrink", &["203.0.113.1-203.0.113.7"]).await;
    expect_ingress(&client, "shrink", "a", &["203.0.113.2"]).await;
    expect_event(&client, "shrink", "a", "IPAllocated", "(was 203.0.113.0)").await;
    expect_ingress(&client, "shrink", "b", &["203.0.113.1"]).await;
    // A malformed edit is reported in the pool status and moves nobody.
    patch_pool_addresses(
        &client,
        "shrink",
        &["203.0.113.1-203.0.113.7", "203.0.113.300/32"],
    )
    .await;
    eventually("the pool reports its error", || async {
        match pool_status(&client, "shrink").await {
            Some(LoadBalancerIPPoolStatus { error: Some(e), .. })
                if e.contains("203.0.113.300") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    expect_ingress(&client, "shrink", "a", &["203.0.113.2"]).await;

    // --- Another loadBalancerClass is left alone; ours is handled.
    namespace(&client, "classes", &[]).await;
    pool("classes", &["203.0.113.16/30"])
        .only("classes")
        .create(&client)
        .await;
    lb("classes", "theirs")
        .class("example.com/other")
        .create(&client)
        .await;
    lb("classes", "ours").class(CLASS).create(&client).await;
    expect_ingress(&client, "classes", "ours", &["203.0.113.16"]).await;
    expect_no_ingress_for_a_while(&client, "classes", "theirs").await;

    // --- Metrics.
    let used = running.metric(
        "svcplane_allocator_lb_pool_addresses",
        &[("pool", "dual"), ("family", "IPv6"), ("state", "used")],
    );
    assert_eq!(used, Some(1.0));
    assert!(
        running
            .metric(
                "svcplane_allocator_lb_refusals_total",
                &[("reason", "ip_in_use")]
            )
            .is_some_and(|v| v >= 2.0)
    );
    assert_eq!(
        running.metric("svcplane_allocator_lb_ips_outside_pools", &[]),
        Some(0.0)
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lbipam_restarts_and_followers_move_no_address() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    install_crd(&client).await;
    namespace(&client, "r", &[]).await;
    pool("r", &["192.0.2.0/29"]).create(&client).await;

    // A follower writes nothing; the same process assigns once it leads.
    let running = Running::start(&client, false);
    lb("r", "s1").create(&client).await;
    expect_no_ingress_for_a_while(&client, "r", "s1").await;
    running.leading.send_replace(true);
    expect_ingress(&client, "r", "s1", &["192.0.2.0"]).await;
    lb("r", "s2").create(&client).await;
    expect_ingress(&client, "r", "s2", &["192.0.2.1"]).await;
    lb("r", "s3").create(&client).await;
    expect_ingress(&client, "r", "s3", &["192.0.2.2"]).await;
    running.stop().await;

    // While it is down, s1 goes (freeing .0) and s4 arrives.
    delete_service(&client, "r", "s1").await;
    lb("r", "s4").create(&client).await;

    // After a restart s2 and s3 keep their addresses (a fresh assignment would move s2 to .0)
    // and s4 gets the free one.
    let running = Running::start(&client, true);
    expect_ingress(&client, "r", "s4", &["192.0.2.0"]).await;
    expect_ingress(&client, "r", "s2", &["192.0.2.1"]).await;
    expect_ingress(&client, "r", "s3", &["192.0.2.2"]).await;
    eventually("pool r counts three", || async {
        match pool_status(&client, "r").await {
            Some(s) if (s.assigned_ipv4, s.available_ipv4) == (3, 5) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    running.stop().await;
}
