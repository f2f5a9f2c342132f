//! Running from a Corefile, asked by real `dig`: stub domains (two loopback upstreams, one per
//! zone), hosts, rewrite, loadbalance and autopath, on a server built from the Corefile in this
//! process over a fixed index.

mod common;

use common::{NameStub, dig_async, dig_status as status, test_metrics};

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use svcplane_dns::plan::{Environment, Plan};
use svcplane_dns::server::{DnsServer, Handler};
use svcplane_dns::zone::{ZoneService, ZoneSlice};
use svcplane_dns::{Index, corefile};
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};

/// The pod that asks in `shop` and the one that asks in `default`, as autopath knows them.
const SHOP_POD: &str = "127.0.0.2";
const DEFAULT_POD: &str = "127.0.0.3";

const COREFILE: &str = r#"
# Stub domains: one server block per zone, each to its own upstream.
corp.example:{$PORT} {
    bind 127.0.0.1
    forward . {$STUB_CORP}
}
lab.example:{$PORT} {
    bind 127.0.0.1
    forward . {$STUB_LAB}
}
.:{$PORT} {
    bind 127.0.0.1
    errors
    log
    hosts {$HOSTS} {
        192.0.2.10 db.inline.example
        192.0.2.11 db.inline.example
        192.0.2.12 db.inline.example
        ttl 60
        fallthrough
    }
    rewrite name exact api.example.com web.shop.svc.cluster.local
    rewrite name suffix .alias.example .shop.svc.cluster.local answer auto
    rewrite name regex ^(.+)\.rx\.example\.$ {1}.shop.svc.cluster.local answer auto
    rewrite name prefix old web
    autopath @kubernetes
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods verified
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    forward . {$STUB_DEFAULT}
    cache 30
    loadbalance
}
"#;

fn service(name: &str, ips: ClusterIps) -> Service {
    Service {
        cluster_ips: ips,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
        }],
        ..Service::new(ObjectKey::new("shop", name), ServiceType::ClusterIp)
    }
}

/// `shop/web` (10.96.0.20), `shop/pool` (headless, 10.244.1.1–4), and the two asking pods.
fn index() -> Index {
    let mut index = Index::new();
    for ns in ["shop", "default"] {
        index.apply_namespace(ns, true);
    }
    let web = service(
        "web",
        ClusterIps::Ips(vec!["10.96.0.20".parse().expect("ip")]),
    );
    index.apply_service(web.key.clone(), Some(Arc::new(ZoneService::from(&web))));
    let pool = service("pool", ClusterIps::Headless);
    index.apply_service(pool.key.clone(), Some(Arc::new(ZoneService::from(&pool))));
    let slice = EndpointSlice {
        key: ObjectKey::new("shop", "pool-1"),
        service: pool.key.clone(),
        address_type: AddressType::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
            app_protocol: None,
        }],
        endpoints: (1..=4)
            .map(|i| Endpoint {
                addresses: vec![IpAddr::from([10, 244, 1, i])],
                conditions: Conditions::default(),
                hostname: None,
                node_name: None,
                zone: None,
                hints: None,
                target_pod: None,
            })
            .collect(),
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    };
    index.apply_endpoints(
        pool.key.clone(),
        Some(ServiceEndpoints {
            slices: vec![Arc::new(ZoneSlice::from(&slice))],
        }),
    );
    index.apply_pod_ip("shop", SHOP_POD.parse().expect("ip"), true);
    index.apply_pod_ip("default", DEFAULT_POD.parse().expect("ip"), true);
    index.set_synced();
    index.set_serial(1);
    index
}

struct Setup {
    dns: SocketAddr,
    corp: NameStub,
    lab: NameStub,
    default: NameStub,
    _server: tokio::task::JoinHandle<()>,
}

/// Files the plan reads; the machine's resolv.conf is replaced by one without search domains,
/// so that autopath's search path is the same on every machine.
fn read(path: &std::path::Path) -> std::io::Result<String> {
    if path == std::path::Path::new("/etc/resolv.conf") {
        return Ok("nameserver 127.0.0.1\n".into());
    }
    std::fs::read_to_string(path)
}

async fn start() -> Setup {
    let corp = NameStub::start(Ipv4Addr::new(192, 0, 2, 1)).await;
    let lab = NameStub::start(Ipv4Addr::new(192, 0, 2, 2)).await;
    let default = NameStub::start(Ipv4Addr::new(192, 0, 2, 3)).await;
    let hosts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("corefile-test-hosts");
    std::fs::write(
        &hosts,
        "# a hosts file\n192.0.2.20 files.example files\n2001:db8::20 files.example\n",
    )
    .expect("hosts file");
    let (dns, task) = serve(
        COREFILE,
        &[
            ("STUB_CORP", corp.addr.to_string()),
            ("STUB_LAB", lab.addr.to_string()),
            ("STUB_DEFAULT", default.addr.to_string()),
            ("HOSTS", hosts.display().to_string()),
        ],
    )
    .await;
    Setup {
        dns,
        corp,
        lab,
        default,
        _server: task,
    }
}

/// The answer section's records as `name type data`, lower case.
fn answers(out: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                lines.push(format!("{} {} {}", f[0], f[3], f[4..].join(" ")).to_lowercase());
            }
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_domains_go_to_their_own_upstream() {
    let s = start().await;
    for (name, stub) in [
        ("host.corp.example", &s.corp),
        ("a.b.lab.example", &s.lab),
        ("elsewhere.example", &s.default),
    ] {
        let out = dig_async(s.dns, &[name, "A"]).await;
        assert_eq!(
            answers(&out),
            [format!("{name}. a {}", stub.address)],
            "{name}: {out}"
        );
        assert!(
            stub.asked().contains(&format!("{name}. A")),
            "{name} reached its upstream"
        );
    }
    // Each stub saw only its own zone.
    assert!(s.corp.asked().iter().all(|q| q.contains("corp.example")));
    assert!(s.lab.asked().iter().all(|q| q.contains("lab.example")));
    assert!(
        s.default
            .asked()
            .iter()
            .all(|q| !q.contains("corp.example") && !q.contains("lab.example"))
    );
    // The cluster zone is the kubernetes plugin's, not forwarded.
    let out = dig_async(s.dns, &["web.shop.svc.cluster.local", "A"]).await;
    assert_eq!(answers(&out), ["web.shop.svc.cluster.local. a 10.96.0.20"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_entries_inline_and_from_the_file() {
    let s = start().await;
    let out = dig_async(s.dns, &["files.example", "A"]).await;
    assert_eq!(answers(&out), ["files.example. a 192.0.2.20"], "{out}");
    assert!(out.contains(" aa"), "authoritative: {out}");
    assert!(out.contains("\t60\tIN"), "the hosts TTL: {out}");
    let out = dig_async(s.dns, &["files.example", "AAAA"]).await;
    assert_eq!(answers(&out), ["files.example. aaaa 2001:db8::20"], "{out}");
    let mut inline = answers(&dig_async(s.dns, &["db.inline.example", "A"]).await);
    inline.sort();
    assert_eq!(
        inline,
        [
            "db.inline.example. a 192.0.2.10",
            "db.inline.example. a 192.0.2.11",
            "db.inline.example. a 192.0.2.12"
        ]
    );
    // A name hosts has, without records of the type: NODATA from hosts, not forwarded.
    let out = dig_async(s.dns, &["db.inline.example", "AAAA"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(answers(&out).is_empty(), "{out}");
    // PTR from the entries.
    let out = dig_async(s.dns, &["-x", "192.0.2.11"]).await;
    assert_eq!(
        answers(&out),
        ["11.2.0.192.in-addr.arpa. ptr db.inline.example."],
        "{out}"
    );
    // A name it lacks falls through to the next plugins.
    let out = dig_async(s.dns, &["unlisted.example", "A"]).await;
    assert_eq!(answers(&out), ["unlisted.example. a 192.0.2.3"], "{out}");
    assert!(
        s.default
            .asked()
            .contains(&"unlisted.example. A".to_owned())
    );
    assert!(
        !s.default
            .asked()
            .iter()
            .any(|q| q.starts_with("files.example"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_rules_and_their_answers() {
    let s = start().await;
    // exact: the answer carries the name asked (exact rules always revert).
    let out = dig_async(s.dns, &["api.example.com", "A"]).await;
    assert_eq!(answers(&out), ["api.example.com. a 10.96.0.20"], "{out}");
    assert!(
        out.contains("QUESTION SECTION:\n;api.example.com."),
        "{out}"
    );
    // suffix, answer auto.
    let out = dig_async(s.dns, &["web.alias.example", "A"]).await;
    assert_eq!(answers(&out), ["web.alias.example. a 10.96.0.20"], "{out}");
    // regex with a group, answer auto.
    let out = dig_async(s.dns, &["web.rx.example", "A"]).await;
    assert_eq!(answers(&out), ["web.rx.example. a 10.96.0.20"], "{out}");
    // prefix without answer auto: the question is restored, the answer names what was looked
    // up, as CoreDNS.
    let out = dig_async(s.dns, &["old.shop.svc.cluster.local", "A"]).await;
    assert_eq!(
        answers(&out),
        ["web.shop.svc.cluster.local. a 10.96.0.20"],
        "{out}"
    );
    assert!(
        out.contains("QUESTION SECTION:\n;old.shop.svc.cluster.local."),
        "{out}"
    );
    // Rewritten names never reach an upstream.
    assert!(!s.default.asked().iter().any(|q| q.contains("example.com")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadbalance_rotates_every_address_to_the_front() {
    let s = start().await;
    const QUERIES: usize = 200;
    for (name, count) in [("pool.shop.svc.cluster.local", 4), ("db.inline.example", 3)] {
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut orders = std::collections::HashSet::new();
        for _ in 0..QUERIES {
            let out = dig_async(s.dns, &["+short", name, "A"]).await;
            let addrs: Vec<String> = out.lines().map(str::to_owned).collect();
            assert_eq!(addrs.len(), count, "{name}: {out}");
            *first.entry(addrs[0].clone()).or_default() += 1;
            orders.insert(addrs);
        }
        assert_eq!(
            first.len(),
            count,
            "{name}: every address comes first: {first:?}"
        );
        // Uniform would be QUERIES/count each; a quarter of that fails only with a broken
        // shuffle (p < 1e-6 for a fair one).
        let floor = QUERIES / count / 4;
        assert!(
            first.values().all(|n| *n >= floor),
            "{name}: first places {first:?}, each at least {floor}"
        );
        assert!(
            orders.len() > count,
            "{name}: more than rotations: {}",
            orders.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopath_answers_the_first_search_expansion_that_exists() {
    let s = start().await;
    let from = |pod: &'static str| ["-b", pod];
    // A pod in `default` looks up `web.shop`: ndots:5 makes its first question
    // web.shop.default.svc.cluster.local; autopath answers it with a CNAME to the expansion
    // that exists.
    let mut args = from(DEFAULT_POD).to_vec();
    args.extend(["web.shop.default.svc.cluster.local", "A"]);
    let out = dig_async(s.dns, &args).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(
        answers(&out),
        [
            "web.shop.default.svc.cluster.local. cname web.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local. a 10.96.0.20"
        ],
        "{out}"
    );
    // An external name from a pod in `shop`: the walk ends at the name itself, forwarded.
    let mut args = from(SHOP_POD).to_vec();
    args.extend(["www.google.example.shop.svc.cluster.local", "A"]);
    let out = dig_async(s.dns, &args).await;
    assert_eq!(
        answers(&out),
        [
            "www.google.example.shop.svc.cluster.local. cname www.google.example.",
            "www.google.example. a 192.0.2.3"
        ],
        "{out}"
    );
    // The pod's own namespace first: no CNAME when the name asked exists.
    let mut args = from(SHOP_POD).to_vec();
    args.extend(["web.shop.svc.cluster.local", "A"]);
    let out = dig_async(s.dns, &args).await;
    assert_eq!(
        answers(&out),
        ["web.shop.svc.cluster.local. a 10.96.0.20"],
        "{out}"
    );
    // NODATA is an answer too: AAAA of an IPv4 Service stops the walk at once.
    let mut args = from(DEFAULT_POD).to_vec();
    args.extend(["web.shop.default.svc.cluster.local", "AAAA"]);
    let out = dig_async(s.dns, &args).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(answers(&out).is_empty(), "{out}");
    // Not from a pod: no autopath, the name does not exist.
    let out = dig_async(s.dns, &["web.shop.default.svc.cluster.local", "A"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    // Every expansion missing: the first one's NXDOMAIN.
    let mut args = from(SHOP_POD).to_vec();
    args.extend(["nx.missing.shop.svc.cluster.local", "A"]);
    let out = dig_async(s.dns, &args).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
}

/// A server from `text` (a `.:{$PORT}` Corefile) over the fixed index, on a free port.
async fn serve(text: &str, vars: &[(&str, String)]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let port = common::free_dns_port().port();
    let mut vars: HashMap<&str, String> = vars.iter().cloned().collect();
    vars.insert("PORT", port.to_string());
    let file = corefile::parse_with_env(text, &|k| vars.get(k).cloned()).expect("Corefile");
    let metrics = test_metrics();
    let plan = Plan::from_corefile(
        &file,
        &Environment {
            nameserver: ObjectKey::new("kube-system", "kube-dns"),
            metrics: &metrics,
            read,
        },
    )
    .expect("plan");
    let listen = plan.listen.clone();
    let handler = Handler::with_plan(
        Arc::new(ArcSwap::from_pointee(index())),
        Arc::new(ArcSwap::from_pointee(plan)),
        metrics,
    );
    let server = DnsServer::bind(&listen, handler).await.expect("bind");
    let addr = server.local_addrs()[0];
    let task = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_options_except_policy_and_max_concurrent() {
    let first = NameStub::start(Ipv4Addr::new(192, 0, 2, 1)).await;
    let second = NameStub::start(Ipv4Addr::new(192, 0, 2, 2)).await;
    // A port that takes questions and never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (dns, _task) = serve(
        ".:{$PORT} {
    bind 127.0.0.1
    forward . {$FIRST} {$SECOND} {
        policy sequential
        except skipped.example
    }
}
slow.example:{$PORT} {
    bind 127.0.0.1
    forward . {$SILENT} {
        max_concurrent 1
    }
}
",
        &[
            ("FIRST", first.addr.to_string()),
            ("SECOND", second.addr.to_string()),
            ("SILENT", silent.local_addr().expect("addr").to_string()),
        ],
    )
    .await;
    // sequential: the first upstream every time.
    for i in 0..10 {
        let out = dig_async(dns, &[&format!("q{i}.example"), "A"]).await;
        assert_eq!(
            answers(&out),
            [format!("q{i}.example. a 192.0.2.1")],
            "{out}"
        );
    }
    assert!(second.asked().is_empty(), "{:?}", second.asked());
    // except: not forwarded, and nothing after forward: SERVFAIL as CoreDNS.
    let out = dig_async(dns, &["a.skipped.example", "A"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    assert!(!first.asked().iter().any(|q| q.contains("skipped")));
    // max_concurrent 1: while one question waits on the silent upstream, the next is REFUSED.
    let waiting = tokio::spawn(dig_async(dns, &["+time=4", "one.slow.example", "A"]));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let out = dig_async(dns, &["two.slow.example", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");
    let out = waiting.await.expect("join");
    assert_eq!(
        status(&out),
        "SERVFAIL",
        "the silent upstream times out: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loadbalance_flag_shuffles_without_a_corefile() {
    use svcplane_dns::plan::FlagSettings;
    let config = svcplane_dns::Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: svcplane_dns::PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    };
    let metrics = test_metrics();
    let flags = |loadbalance, listen| FlagSettings {
        config: config.clone(),
        listen: vec![listen],
        upstreams: vec![],
        cache_capacity: 10,
        loadbalance,
        admin: "127.0.0.1:0".parse().expect("addr"),
        lameduck: std::time::Duration::ZERO,
        plugins: Default::default(),
    };
    for (loadbalance, orders_wanted) in [(false, 1), (true, 2)] {
        // A port of its own each time: the last server's sockets close in the background.
        let listen: SocketAddr = common::free_dns_port();
        let plan = Plan::from_flags(flags(loadbalance, listen), &metrics);
        let handler = Handler::with_plan(
            Arc::new(ArcSwap::from_pointee(index())),
            Arc::new(ArcSwap::from_pointee(plan)),
            metrics.clone(),
        );
        let server = DnsServer::bind(&[listen], handler).await.expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let mut orders = std::collections::HashSet::new();
        for _ in 0..40 {
            let out = dig_async(listen, &["+short", "pool.shop.svc.cluster.local", "A"]).await;
            orders.insert(out);
        }
        assert!(
            if loadbalance {
                orders.len() >= orders_wanted
            } else {
                orders.len() == 1
            },
            "--loadbalance={loadbalance}: {} orders",
            orders.len()
        );
        let _ = stop.send(());
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_reach_the_same_features() {
    use svcplane_dns::plan::{FlagPlugins, FlagSettings};
    let corp = NameStub::start(Ipv4Addr::new(192, 0, 2, 1)).await;
    let default = NameStub::start(Ipv4Addr::new(192, 0, 2, 3)).await;
    let hosts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("flags-test-hosts");
    std::fs::write(&hosts, "192.0.2.20 files.example\n").expect("hosts file");
    let rule = |text: &str| {
        let file = corefile::parse_with_env(&format!(".:53 {{\n rewrite {text}\n}}\n"), &|_| None)
            .expect("rule");
        file.servers[0].plugins.rewrite[0].clone()
    };
    let listen = common::free_dns_port();
    let metrics = test_metrics();
    let plan = Plan::from_flags(
        FlagSettings {
            config: svcplane_dns::Config {
                zone: "cluster.local".into(),
                ttl: 5,
                pods: svcplane_dns::PodMode::Verified,
                nameserver: ObjectKey::new("kube-system", "kube-dns"),
            },
            listen: vec![listen],
            upstreams: vec![default.addr],
            cache_capacity: 100,
            loadbalance: false,
            admin: "127.0.0.1:0".parse().expect("addr"),
            lameduck: std::time::Duration::ZERO,
            plugins: FlagPlugins {
                stub_domains: vec![("corp.example.".into(), vec![corp.addr])],
                hosts_file: Some(hosts),
                rewrite: vec![rule(
                    "name suffix .alias.example .shop.svc.cluster.local answer auto",
                )],
                autopath: true,
                log: true,
                serve_stale: Some(std::time::Duration::from_secs(60)),
                prefetch: Some(2),
                search: vec![],
            },
        },
        &metrics,
    );
    let handler = Handler::with_plan(
        Arc::new(ArcSwap::from_pointee(index())),
        Arc::new(ArcSwap::from_pointee(plan)),
        metrics,
    );
    let server = DnsServer::bind(&[listen], handler).await.expect("bind");
    let _task = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    let dns = listen;
    // --stub-domain
    let out = dig_async(dns, &["host.corp.example", "A"]).await;
    assert_eq!(answers(&out), ["host.corp.example. a 192.0.2.1"], "{out}");
    let out = dig_async(dns, &["elsewhere.example", "A"]).await;
    assert_eq!(answers(&out), ["elsewhere.example. a 192.0.2.3"], "{out}");
    // --hosts-file, falling through for what it lacks
    let out = dig_async(dns, &["files.example", "A"]).await;
    assert_eq!(answers(&out), ["files.example. a 192.0.2.20"], "{out}");
    // --rewrite
    let out = dig_async(dns, &["web.alias.example", "A"]).await;
    assert_eq!(answers(&out), ["web.alias.example. a 10.96.0.20"], "{out}");
    // --autopath
    let out = dig_async(
        dns,
        &["-b", DEFAULT_POD, "web.shop.default.svc.cluster.local", "A"],
    )
    .await;
    assert_eq!(
        answers(&out),
        [
            "web.shop.default.svc.cluster.local. cname web.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local. a 10.96.0.20"
        ],
        "{out}"
    );
    assert!(corp.asked().iter().all(|q| q.contains("corp.example")));
}
