//! svcplane-dns against a real kube-apiserver, asked by real `dig`: objects written through the
//! API show up in answers, and so do their updates.

mod common;

use common::{admin_fetch, admin_get, dig, free_dns_port};

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use svcplane_testenv::{TestEnv, kubelet};

struct Dns {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// Held so nothing else takes the port given as the upstream.
    _upstream: UdpSocket,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dns(env: &TestEnv) -> Dns {
    let (addr, admin) = (free_dns_port(), free_dns_port());
    // Never the machine's resolv.conf: tests send nothing beyond loopback. This upstream is a
    // silent loopback socket.
    let upstream = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let child = Command::new(env!("CARGO_BIN_EXE_svcplane-dns"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .arg(format!("--listen={addr}"))
        .arg(format!("--admin-addr={admin}"))
        .arg(format!(
            "--upstream={}",
            upstream.local_addr().expect("addr")
        ))
        .arg("--lameduck=0s")
        .stdin(Stdio::null())
        .spawn()
        .expect("start svcplane-dns");
    Dns {
        child,
        addr,
        admin,
        _upstream: upstream,
    }
}

/// Asks until the short answer equals `want` (sorted lines), for at most 15 seconds.
async fn eventually(addr: SocketAddr, args: &[&str], want: &[&str]) {
    eventually_within(Duration::from_secs(15), addr, args, want).await;
}

async fn eventually_within(within: Duration, addr: SocketAddr, args: &[&str], want: &[&str]) {
    let deadline = Instant::now() + within;
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    loop {
        let mut all = vec!["+short"];
        all.extend_from_slice(args);
        let out = tokio::task::block_in_place(|| dig(addr, &all));
        let mut got: Vec<String> = out.lines().map(str::to_owned).collect();
        got.sort();
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{args:?}: wanted {want:?}, still {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(addr: SocketAddr, args: &[&str]) -> String {
    common::dig_status(&dig(addr, args)).to_owned()
}

fn service(name: &str, spec: ServiceSpec) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn endpoint(ip: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..Default::default()
        }),
        hostname: hostname.map(Into::into),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_api() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    kubelet::create_namespace(&client, "shop")
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let pp = PostParams::default();
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        ..Default::default()
    };
    services
        .create(
            &pp,
            &service(
                "web",
                ServiceSpec {
                    ports: Some(vec![port("http", 80)]),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("web");
    services
        .create(
            &pp,
            &service(
                "db",
                ServiceSpec {
                    cluster_ip: Some("None".into()),
                    ports: Some(vec![port("pg", 5432)]),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("db");
    services
        .create(
            &pp,
            &service(
                "ext",
                ServiceSpec {
                    type_: Some("ExternalName".into()),
                    external_name: Some("example.org".into()),
                    ..Default::default()
                },
            ),
        )
        .await
        .expect("ext");
    let web_ip = services
        .get("web")
        .await
        .expect("web")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("cluster IP");

    // The slice a controller would write for db: one ready endpoint, one not.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("db-1".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".into(),
                "db".into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![
            endpoint("10.244.1.5", Some("db-0"), true),
            endpoint("10.244.1.6", None, false),
        ]),
        ports: Some(vec![EndpointPort {
            name: Some("pg".into()),
            port: Some(5432),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    };
    slices.create(&pp, &slice).await.expect("slice");

    let dns = start_dns(&env);
    let a = dns.addr;
    // Synced once the API server's own Service resolves.
    eventually(
        a,
        &["kubernetes.default.svc.cluster.local", "A"],
        &["10.96.0.1"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_get(dns.admin, "/ready").await != 200 {
        assert!(
            Instant::now() < deadline,
            "/ready never turned ready after the sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin_get(dns.admin, "/health").await, 200);

    eventually(a, &["web.shop.svc.cluster.local", "A"], &[&web_ip]).await;
    eventually(a, &["+tcp", "web.shop.svc.cluster.local", "A"], &[&web_ip]).await;
    eventually(
        a,
        &["_http._tcp.web.shop.svc.cluster.local", "SRV"],
        &["0 100 80 web.shop.svc.cluster.local."],
    )
    .await;
    eventually(a, &["-x", &web_ip], &["web.shop.svc.cluster.local."]).await;
    eventually(a, &["db.shop.svc.cluster.local", "A"], &["10.244.1.5"]).await;
    eventually(a, &["db-0.db.shop.svc.cluster.local", "A"], &["10.244.1.5"]).await;
    eventually(
        a,
        &["ext.shop.svc.cluster.local", "CNAME"],
        &["example.org."],
    )
    .await;
    eventually(a, &["dns-version.cluster.local", "TXT"], &["\"1.1.0\""]).await;
    assert_eq!(status(a, &["nope.shop.svc.cluster.local", "A"]), "NXDOMAIN");
    assert_eq!(
        status(a, &["nope.nowhere.svc.cluster.local", "A"]),
        "NXDOMAIN"
    );
    assert_eq!(status(a, &["shop.svc.cluster.local", "A"]), "NOERROR");

    // Updates: the ExternalName moves, the second endpoint turns ready, web is deleted.
    services
        .patch(
            "ext",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalName": "other.example"}})),
        )
        .await
        .expect("patch ext");
    eventually(
        a,
        &["ext.shop.svc.cluster.local", "CNAME"],
        &["other.example."],
    )
    .await;
    slices
        .patch(
            "db-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": true}},
            ]})),
        )
        .await
        .expect("patch slice");
    eventually(
        a,
        &["db.shop.svc.cluster.local", "A"],
        &["10.244.1.5", "10.244.1.6"],
    )
    .await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(a, &["web.shop.svc.cluster.local", "A"]) != "NXDOMAIN" {
        assert!(
            Instant::now() < deadline,
            "web still answers after deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every metric exported is listed in docs/dns.md, and every listed one without labels is
    // exported (labelled ones appear once they have a value).
    let (_, body) = admin_fetch(dns.admin, "/metrics").await;
    let exported: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("svcplane_"))
        .map(str::to_owned)
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dns.md"))
        .expect("docs/dns.md");
    let rows: Vec<(String, bool)> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `svcplane_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let labels = rest.split('|').nth(2)?.trim();
            Some((format!("svcplane_{name}"), !labels.is_empty()))
        })
        .collect();
    let documented: BTreeSet<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        exported.is_subset(&documented),
        "undocumented: {:?}",
        exported.difference(&documented)
    );
    for (name, labelled) in &rows {
        assert!(*labelled || exported.contains(name), "{name} not exported");
    }
    assert!(exported.contains("svcplane_dns_requests_total"));
    assert!(exported.contains("svcplane_dns_programming_duration_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_an_api_server_outage_and_resync_after() {
    let env = TestEnv::start().await.expect("control plane");
    let client = env.client().await.expect("client");
    kubelet::create_namespace(&client, "shop")
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(client, "shop");
    let spec = || ServiceSpec {
        ports: Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            ..Default::default()
        }]),
        ..Default::default()
    };
    services
        .create(&PostParams::default(), &service("web", spec()))
        .await
        .expect("web");
    let web_ip = services
        .get("web")
        .await
        .expect("web")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ip");
    let dns = start_dns(&env);
    eventually(dns.addr, &["web.shop.svc.cluster.local", "A"], &[&web_ip]).await;
    // Every watch has listed (a missing name is NXDOMAIN only then; before, SERVFAIL): the
    // Service can answer before the namespaces have listed on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(dns.addr, &["nope.shop.svc.cluster.local", "A"]) != "NXDOMAIN" {
        assert!(Instant::now() < deadline, "never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    env.stop_apiserver();
    // The API is gone; the last index keeps answering, for a while and repeatedly.
    for _ in 0..10 {
        eventually(dns.addr, &["web.shop.svc.cluster.local", "A"], &[&web_ip]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status(dns.addr, &["nope.shop.svc.cluster.local", "A"]),
        "NXDOMAIN"
    );

    env.restart_apiserver().await.expect("API server back");
    let client = env.client().await.expect("client");
    let services: Api<Service> = Api::namespaced(client, "shop");
    services
        .create(&PostParams::default(), &service("late", spec()))
        .await
        .expect("late");
    let late_ip = services
        .get("late")
        .await
        .expect("late")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ip");
    // The watches reconnect with backoff and pick up what happened meanwhile.
    eventually_within(
        Duration::from_secs(60),
        dns.addr,
        &["late.shop.svc.cluster.local", "A"],
        &[&late_ip],
    )
    .await;
}
