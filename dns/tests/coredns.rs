//! svcplane-dns against CoreDNS, question for question.
//!
//! CoreDNS v1.15.0 (built from `bench/coredns`, kubeadm's `kubernetes` stanza) and svcplane-dns
//! run on loopback over one real kube-apiserver holding a varied set of objects
//! ([`cluster`]), both forwarding to one loopback stub ([`stub`]). Both are asked the same few
//! thousand questions ([`questions`]) and their replies compared on rcode, flags, OPT and the
//! three sections as sets ([`wire`]). A difference fails the test unless a row of the table of
//! differences in `docs/dns.md` allows it ([`allow`]); a row that allows nothing fails it too.
//!
//! The full list of differences is written to `coredns-differences.txt` under cargo's
//! `CARGO_TARGET_TMPDIR`; the failure message shows them grouped, two examples per group.

mod common;

#[path = "coredns/allow.rs"]
mod allow;
#[path = "coredns/cluster.rs"]
mod cluster;
#[path = "coredns/questions.rs"]
mod questions;
#[path = "coredns/stub.rs"]
mod stub;
#[path = "coredns/wire.rs"]
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::rr::RecordType;
use svcplane_testenv::{Options, TestEnv};

use common::{Tethered, admin_get, free_dns_port};
use questions::{Case, EdnsMode, Proto, Question};
use wire::{Outcome, answers_with, ask, ask_from, differing};

/// Questions in flight at once (each to both servers).
const CONCURRENCY: usize = 16;
/// Examples shown per group of differences in the failure message.
const EXAMPLES: usize = 2;

/// kubeadm's Corefile as `kubeadm init` writes it, but bound to loopback, with the test's
/// kubeconfig and stub upstream, and ports from the environment so that both servers run from
/// this very file.
const KUBEADM_COREFILE: &str = ".:{$DNS_PORT} {
    bind 127.0.0.1
    errors
    health 127.0.0.1:{$HEALTH_PORT} {
       lameduck 5s
    }
    ready 127.0.0.1:{$READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       kubeconfig {$KUBECONFIG}
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus 127.0.0.1:{$METRICS_PORT}
    forward . {$UPSTREAM} {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
";

/// The edits operators make, on top of kubeadm's block: stub domains (a server block per zone,
/// each with its own upstream), hosts (inline and a file), rewrite rules, and autopath with
/// verified pods.
const EDITED_COREFILE: &str = r"corp.example:{$DNS_PORT} {
    bind 127.0.0.1
    errors
    forward . {$UPSTREAM_CORP}
}
lab.example:{$DNS_PORT} {
    bind 127.0.0.1
    errors
    forward . {$UPSTREAM_LAB}
}
.:{$DNS_PORT} {
    bind 127.0.0.1
    errors
    health 127.0.0.1:{$HEALTH_PORT}
    ready 127.0.0.1:{$READY_PORT}
    hosts {$HOSTS} {
       192.0.2.10 db.inline.example
       192.0.2.11 db.inline.example
       2001:db8::10 db.inline.example
       ttl 60
       fallthrough
    }
    rewrite name exact api.example.com web.shop.svc.cluster.local
    rewrite name suffix .alias.example .shop.svc.cluster.local answer auto
    rewrite name regex ^(.+)\.rx\.example\.$ {1}.shop.svc.cluster.local answer auto
    rewrite name prefix old web
    rewrite name substring .middle. .shop.
    autopath @kubernetes
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       kubeconfig {$KUBECONFIG}
       pods verified
       endpoint_pod_names
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus 127.0.0.1:{$METRICS_PORT}
    forward . {$UPSTREAM}
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    loadbalance
}
";

/// kubeadm's Corefile without endpoint data (`noendpoints`).
fn no_endpoints_corefile() -> String {
    KUBEADM_COREFILE.replace(
        "       pods insecure\n",
        "       pods insecure\n       noendpoints\n",
    )
}

struct Servers {
    coredns: SocketAddr,
    svcplane: SocketAddr,
    admin: SocketAddr,
    // Dropped (stopped) with this struct.
    coredns_process: Tethered,
    svcplane_process: Tethered,
}

/// Starts CoreDNS and svcplane-dns from the same Corefile (`text`, written once), each with its
/// own ports in the environment.
fn start_servers(
    env: &TestEnv,
    coredns_bin: &std::path::Path,
    name: &str,
    text: &str,
    vars: &[(&str, String)],
) -> Servers {
    let conf = env.dir().join(name);
    std::fs::write(&conf, text).expect("write Corefile");
    let ports = || {
        let dns = free_dns_port();
        let ports = [dns, free_dns_port(), free_dns_port(), free_dns_port()];
        let mut vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        for (key, addr) in ["DNS_PORT", "HEALTH_PORT", "READY_PORT", "METRICS_PORT"]
            .into_iter()
            .zip(ports)
        {
            vars.push((key.into(), addr.port().to_string()));
        }
        vars.push((
            "KUBECONFIG".into(),
            env.kubeconfig_path().display().to_string(),
        ));
        (dns, ports[2], vars)
    };
    let (coredns, _, coredns_vars) = ports();
    let coredns_process = Tethered::spawn_with_env(
        "coredns",
        coredns_bin,
        &["-conf".into(), conf.display().to_string()],
        &coredns_vars,
        &env.dir().join(format!("{name}.coredns.log")),
    );
    let (svcplane, admin, svcplane_vars) = ports();
    let svcplane_process = Tethered::spawn_with_env(
        "svcplane-dns",
        std::path::Path::new(env!("CARGO_BIN_EXE_svcplane-dns")),
        &[format!("--corefile={}", conf.display())],
        &svcplane_vars,
        &env.dir().join(format!("{name}.svcplane-dns.log")),
    );
    Servers {
        coredns,
        svcplane,
        admin,
        coredns_process,
        svcplane_process,
    }
}

fn probe(name: &str, qtype: RecordType) -> Question {
    Question {
        name: name.to_owned(),
        lower: name.trim_end_matches('.').to_owned(),
        qtype,
        class: hickory_proto::rr::DNSClass::IN,
        case: Case::Lower,
        edns: EdnsMode::None,
        proto: Proto::Udp,
        rd: true,
        shape: "probe",
    }
}

/// Waits until both servers answer from a full view of the cluster: a Service, an endpoint
/// name (slices) and an empty namespace (namespaces), and svcplane-dns reports ready.
async fn wait_synced(servers: &mut Servers) {
    wait_answering(servers, true).await;
}

/// [`wait_synced`], without the endpoint name when the servers do not watch endpoints.
async fn wait_answering(servers: &mut Servers, endpoints: bool) {
    let mut checks = vec![
        (
            probe("kubernetes.default.svc.cluster.local.", RecordType::A),
            "10.96.0.1",
        ),
        (probe("empty.svc.cluster.local.", RecordType::A), ""),
    ];
    if endpoints {
        checks.push((
            probe("db-0.db.shop.svc.cluster.local.", RecordType::A),
            "10.244.1.5",
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        servers.coredns_process.assert_running();
        servers.svcplane_process.assert_running();
        let mut all = admin_ready(servers.admin).await;
        for (q, want) in &checks {
            for server in [servers.coredns, servers.svcplane] {
                let got = ask(server, q, 1).await;
                all &= if want.is_empty() {
                    got.as_ref().is_ok_and(|r| r.is_nodata())
                } else {
                    answers_with(&got, q.qtype, want)
                };
            }
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the servers did not both answer from the cluster within 60 s; logs:\n\
             --- coredns\n{}\n--- svcplane-dns\n{}",
            servers.coredns_process.log_tail(),
            servers.svcplane_process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn admin_ready(admin: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(admin).await.is_ok() && admin_get(admin, "/ready").await == 200
}

/// One question both servers answered differently, beyond what the table allows.
struct Difference<'q> {
    question: &'q Question,
    fields: BTreeSet<&'static str>,
    coredns: Outcome,
    svcplane: Outcome,
}

fn short(outcome: &Outcome) -> String {
    match outcome {
        Ok(reply) => reply.to_string(),
        Err(why) => format!("({why})"),
    }
}

/// Differences grouped by the fields that differ and the kind of name, largest groups first.
fn report(differences: &[Difference<'_>], examples: usize) -> String {
    let mut groups: BTreeMap<(String, &str), Vec<&Difference<'_>>> = BTreeMap::new();
    for d in differences {
        let fields: Vec<&str> = d.fields.iter().copied().collect();
        groups
            .entry((fields.join(","), d.question.shape))
            .or_default()
            .push(d);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = String::new();
    for ((fields, shape), members) in groups {
        let types: BTreeSet<String> = members
            .iter()
            .map(|d| d.question.qtype.to_string())
            .collect();
        let variants: BTreeSet<String> = members
            .iter()
            .map(|d| {
                format!(
                    "{}/{}/{}",
                    d.question.proto.label(),
                    d.question.edns.label(),
                    d.question.case.label()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\n== {fields} differ | {shape} | {} question(s); types {}; asked {}",
            members.len(),
            types.into_iter().collect::<Vec<_>>().join(" "),
            variants.into_iter().collect::<Vec<_>>().join(" ")
        );
        for d in members.iter().take(examples) {
            let _ = writeln!(out, "   {}", d.question);
            let _ = writeln!(out, "     CoreDNS:      {}", short(&d.coredns));
            let _ = writeln!(out, "     svcplane-dns: {}", short(&d.svcplane));
        }
    }
    out
}

/// Asks both servers every question (from its source address) and returns the replies.
async fn ask_both(servers: &Servers, questions: &[(Question, IpAddr)]) -> Vec<(Outcome, Outcome)> {
    let (coredns, svcplane) = (servers.coredns, servers.svcplane);
    futures::stream::iter(questions.iter().enumerate())
        .map(|(i, (q, src))| async move {
            let id = (i % 65_000) as u16 + 2;
            tokio::join!(
                ask_from(coredns, q, id, *src),
                ask_from(svcplane, q, id, *src)
            )
        })
        .buffered(CONCURRENCY)
        .collect()
        .await
}

/// The differences the table does not allow; counts what each row allowed in `used`.
fn compare<'q>(
    questions: impl Iterator<Item = &'q Question>,
    outcomes: Vec<(Outcome, Outcome)>,
    allowed: &'q [allow::Entry],
    used: &mut BTreeMap<&'q str, usize>,
) -> (Vec<Difference<'q>>, usize) {
    let mut differences = Vec::new();
    let mut allowed_count = 0;
    for (q, (c, s)) in questions.zip(outcomes) {
        let mut fields = differing(&c, &s);
        if fields.is_empty() {
            continue;
        }
        for entry in allowed {
            if !entry.fields.is_disjoint(&fields) && entry.matches(q, &c, &s) {
                *used.entry(entry.id.as_str()).or_default() += 1;
                fields.retain(|f| !entry.fields.contains(f));
            }
        }
        if fields.is_empty() {
            allowed_count += 1;
            continue;
        }
        differences.push(Difference {
            question: q,
            fields,
            coredns: c,
            svcplane: s,
        });
    }
    (differences, allowed_count)
}

/// Addresses the pods autopath knows: a pod in `shop` and one in `other`, on loopback so the
/// test can ask from them.
const SHOP_POD: [u8; 4] = [127, 0, 0, 2];
const OTHER_POD: [u8; 4] = [127, 0, 0, 3];

/// The questions for the edited Corefile: each feature's names, from outside any pod and
/// from the two pods, as a pod with `ndots:5` asks first (its namespace's search domain).
fn edited_questions() -> Vec<(Question, IpAddr)> {
    let plain = |name: &str, qtype: RecordType, shape: &'static str| Question {
        shape,
        ..probe(name, qtype)
    };
    let mut out = Vec::new();
    let local: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let names: &[(&str, &'static str)] = &[
        ("host.corp.example.", "stub-domain"),
        ("a.b.lab.example.", "stub-domain"),
        ("nx.corp.example.", "stub-domain"),
        ("corp.example.", "stub-domain"),
        ("example.org.", "forward"),
        ("db.inline.example.", "hosts"),
        ("files.example.", "hosts"),
        ("files.", "hosts"),
        ("unlisted.example.", "hosts"),
        ("api.example.com.", "rewrite"),
        ("web.alias.example.", "rewrite"),
        ("nope.alias.example.", "rewrite"),
        ("web.rx.example.", "rewrite"),
        ("old.shop.svc.cluster.local.", "rewrite"),
        ("web.middle.svc.cluster.local.", "rewrite"),
        ("web.shop.svc.cluster.local.", "cluster"),
        ("db.shop.svc.cluster.local.", "cluster"),
        ("ext-out.shop.svc.cluster.local.", "cluster"),
    ];
    for (name, shape) in names {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::SRV,
        ] {
            out.push((plain(name, qtype, shape), local));
        }
    }
    for (name, qtype) in endpoint_questions() {
        out.push((plain(&name, qtype, "endpoint-names"), local));
    }
    for ptr in [
        "10.2.0.192.in-addr.arpa.",
        "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "20.2.0.192.in-addr.arpa.",
    ] {
        out.push((plain(ptr, RecordType::PTR, "hosts"), local));
    }
    // A pod's first question for a short name is `<name>.<its namespace>.svc.cluster.local`.
    let searched: &[&str] = &[
        "web",
        "web.shop",
        "db.shop",
        "kubernetes.default",
        "kubernetes.default.svc",
        "example.org",
        "www.example.org",
        "db.inline.example",
        "host.corp.example",
        "missing",
        "missing.example",
        "api.example.com",
    ];
    for (pod, ns) in [(SHOP_POD, "shop"), (OTHER_POD, "other")] {
        let src = IpAddr::from(pod);
        for short in searched {
            let name = format!("{short}.{ns}.svc.cluster.local.");
            for qtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
                out.push((plain(&name, qtype, "autopath"), src));
            }
        }
        // Not in the first search domain: no autopath.
        out.push((
            plain("web.svc.cluster.local.", RecordType::A, "autopath"),
            src,
        ));
        out.push((plain("example.org.", RecordType::A, "autopath"), src));
    }
    // The same first questions from outside any pod: no autopath either.
    for short in ["web", "example.org"] {
        out.push((
            plain(
                &format!("{short}.other.svc.cluster.local."),
                RecordType::A,
                "autopath",
            ),
            local,
        ));
    }
    out
}

/// Headless Services and endpoint names, for `endpoint_pod_names` and `noendpoints`.
fn endpoint_questions() -> Vec<(String, RecordType)> {
    let mut out = Vec::new();
    for name in [
        "named.other.svc.cluster.local.",
        "named-pod-0.named.other.svc.cluster.local.",
        "named-pod-1.named.other.svc.cluster.local.",
        "h1.named.other.svc.cluster.local.",
        "10-244-9-1.named.other.svc.cluster.local.",
        "10-244-9-3.named.other.svc.cluster.local.",
        "_http._tcp.named.other.svc.cluster.local.",
        "db.shop.svc.cluster.local.",
        "db-0.db.shop.svc.cluster.local.",
        "web.shop.svc.cluster.local.",
        "1.9.244.10.in-addr.arpa.",
        "2.9.244.10.in-addr.arpa.",
    ] {
        for qtype in [RecordType::A, RecordType::SRV, RecordType::PTR] {
            out.push((name.to_owned(), qtype));
        }
    }
    out
}

/// Pods whose addresses autopath maps to namespaces.
async fn create_asking_pods(client: &kube::Client) {
    for (ns, name, ip) in [("shop", "asker", SHOP_POD), ("other", "asker", OTHER_POD)] {
        svcplane_testenv::kubelet::PodBuilder::new(ns, name)
            .create(client)
            .await
            .unwrap_or_else(|e| panic!("pod {ns}/{name}: {e}"));
        svcplane_testenv::kubelet::set_pod_running(client, ns, name, &[IpAddr::from(ip)], true)
            .await
            .unwrap_or_else(|e| panic!("pod {ns}/{name} status: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_like_coredns() {
    let doc = std::fs::read_to_string(allow::DOC).expect("docs/dns.md");
    let allowed = allow::parse(&doc).unwrap_or_else(|e| panic!("docs/dns.md: {e}"));
    let coredns_bin = tokio::task::spawn_blocking(svcplane_testenv::ensure_coredns)
        .await
        .expect("join")
        .expect("CoreDNS (bench/coredns/build.sh)");
    let env = TestEnv::start_with(Options::dual_stack())
        .await
        .expect("control plane");
    let client = env.client().await.expect("client");
    let cluster = cluster::populate(&client).await;
    create_asking_pods(&client).await;
    let stub = stub::start().await;
    let mut used: BTreeMap<&str, usize> = allowed.iter().map(|e| (e.id.as_str(), 0)).collect();

    // 1. kubeadm's Corefile, every name shape, every variant.
    let mut servers = start_servers(
        &env,
        &coredns_bin,
        "Corefile",
        KUBEADM_COREFILE,
        &[("UPSTREAM", stub.addr.to_string())],
    );
    wait_synced(&mut servers).await;
    let questions = questions::generate(&cluster);
    let local: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let asked: Vec<(Question, IpAddr)> = questions.iter().map(|q| (q.clone(), local)).collect();
    let started = Instant::now();
    let outcomes = ask_both(&servers, &asked).await;
    eprintln!(
        "kubeadm's Corefile: asked {} questions in {:.1} s",
        asked.len(),
        started.elapsed().as_secs_f64()
    );
    servers.coredns_process.assert_running();
    servers.svcplane_process.assert_running();

    // The set-up is what we think it is: both servers see the cluster and reach the stub.
    let find = |name: &str, qtype: RecordType| {
        questions
            .iter()
            .position(|q| {
                q.name == name
                    && q.qtype == qtype
                    && q.edns == EdnsMode::None
                    && q.proto == Proto::Udp
                    && q.case == Case::Lower
            })
            .unwrap_or_else(|| panic!("{name} {qtype} is asked"))
    };
    let web_ip = cluster.cluster_ips["shop/web"][0].to_string();
    for (name, qtype, rdata) in [
        (
            "web.shop.svc.cluster.local.",
            RecordType::A,
            web_ip.as_str(),
        ),
        ("example.org.", RecordType::A, "192.0.2.7"),
        (
            "ext-out.shop.svc.cluster.local.",
            RecordType::A,
            "192.0.2.7",
        ),
    ] {
        let (c, s) = &outcomes[find(name, qtype)];
        assert!(
            answers_with(c, qtype, rdata) && answers_with(s, qtype, rdata),
            "{name} {qtype}: both should answer {rdata}\n  CoreDNS: {}\n  svcplane-dns: {}",
            short(c),
            short(s)
        );
    }
    let (mut differences, mut allowed_count) =
        compare(asked.iter().map(|(q, _)| q), outcomes, &allowed, &mut used);
    drop(servers);

    // 2. The same plus stub domains, hosts, rewrite and autopath.
    let corp = common::NameStub::start(std::net::Ipv4Addr::new(192, 0, 2, 101)).await;
    let lab = common::NameStub::start(std::net::Ipv4Addr::new(192, 0, 2, 102)).await;
    let hosts = env.dir().join("hosts");
    std::fs::write(
        &hosts,
        "# hosts file\n192.0.2.20 files.example files\n2001:db8::1 files.example\n",
    )
    .expect("hosts file");
    let mut servers = start_servers(
        &env,
        &coredns_bin,
        "Corefile.edited",
        EDITED_COREFILE,
        &[
            ("UPSTREAM", stub.addr.to_string()),
            ("UPSTREAM_CORP", corp.addr.to_string()),
            ("UPSTREAM_LAB", lab.addr.to_string()),
            ("HOSTS", hosts.display().to_string()),
        ],
    );
    wait_synced(&mut servers).await;
    // Both see the asking pods (pods verified) before they are asked.
    let pod_name = probe("127-0-0-2.shop.pod.cluster.local.", RecordType::A);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = ask(servers.coredns, &pod_name, 1).await;
        let s = ask(servers.svcplane, &pod_name, 1).await;
        if answers_with(&c, RecordType::A, "127.0.0.2")
            && answers_with(&s, RecordType::A, "127.0.0.2")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both servers should know the asking pod: CoreDNS {}, svcplane-dns {}",
            short(&c),
            short(&s)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let edited = edited_questions();
    let outcomes = ask_both(&servers, &edited).await;
    servers.coredns_process.assert_running();
    servers.svcplane_process.assert_running();
    // The features are in effect, in both.
    let find = |name: &str, qtype: RecordType, src: IpAddr| {
        edited
            .iter()
            .position(|(q, from)| q.name == name && q.qtype == qtype && *from == src)
            .unwrap_or_else(|| panic!("{name} {qtype} is asked"))
    };
    let shop_pod = IpAddr::from(SHOP_POD);
    for (name, qtype, src, rdata) in [
        ("host.corp.example.", RecordType::A, local, "192.0.2.101"),
        ("a.b.lab.example.", RecordType::A, local, "192.0.2.102"),
        ("db.inline.example.", RecordType::A, local, "192.0.2.11"),
        ("files.example.", RecordType::A, local, "192.0.2.20"),
        ("api.example.com.", RecordType::A, local, web_ip.as_str()),
        ("web.rx.example.", RecordType::A, local, web_ip.as_str()),
        (
            "named-pod-0.named.other.svc.cluster.local.",
            RecordType::A,
            local,
            "10.244.9.1",
        ),
        (
            "example.org.shop.svc.cluster.local.",
            RecordType::A,
            shop_pod,
            "192.0.2.7",
        ),
    ] {
        let (c, s) = &outcomes[find(name, qtype, src)];
        assert!(
            answers_with(c, qtype, rdata) && answers_with(s, qtype, rdata),
            "{name} {qtype} from {src}: both should answer {rdata}\n  CoreDNS: {}\n  svcplane-dns: {}",
            short(c),
            short(s)
        );
    }
    eprintln!("edited Corefile: asked {} questions", edited.len());
    let (more, more_allowed) =
        compare(edited.iter().map(|(q, _)| q), outcomes, &allowed, &mut used);
    differences.extend(more);
    allowed_count += more_allowed;
    drop(servers);

    // 3. kubeadm's Corefile with `noendpoints`.
    let mut servers = start_servers(
        &env,
        &coredns_bin,
        "Corefile.noendpoints",
        &no_endpoints_corefile(),
        &[("UPSTREAM", stub.addr.to_string())],
    );
    wait_answering(&mut servers, false).await;
    let bare: Vec<(Question, IpAddr)> = endpoint_questions()
        .into_iter()
        .map(|(name, qtype)| {
            (
                Question {
                    shape: "noendpoints",
                    ..probe(&name, qtype)
                },
                local,
            )
        })
        .collect();
    let outcomes = ask_both(&servers, &bare).await;
    servers.coredns_process.assert_running();
    servers.svcplane_process.assert_running();
    let web = &outcomes[bare
        .iter()
        .position(|(q, _)| q.name == "web.shop.svc.cluster.local." && q.qtype == RecordType::A)
        .expect("asked")];
    assert!(
        answers_with(&web.0, RecordType::A, &web_ip)
            && answers_with(&web.1, RecordType::A, &web_ip),
        "ClusterIP Services still answer: {} / {}",
        short(&web.0),
        short(&web.1)
    );
    let named = &outcomes[bare
        .iter()
        .position(|(q, _)| q.name == "named.other.svc.cluster.local." && q.qtype == RecordType::A)
        .expect("asked")];
    assert!(
        [&named.0, &named.1]
            .iter()
            .all(|o| o.as_ref().is_ok_and(|r| r.rcode == "NXDOMAIN")),
        "a headless Service without endpoint data is NXDOMAIN: {} / {}",
        short(&named.0),
        short(&named.1)
    );
    let (more, more_allowed) = compare(bare.iter().map(|(q, _)| q), outcomes, &allowed, &mut used);
    differences.extend(more);
    allowed_count += more_allowed;
    let total = asked.len() + edited.len() + bare.len();

    let stale: Vec<&str> = used
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "{} of {total} questions answered alike; {allowed_count} differ as docs/dns.md allows ({}); {} differ otherwise",
        total - allowed_count - differences.len(),
        used.iter()
            .map(|(id, n)| format!("{id}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        differences.len()
    );

    let full = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("coredns-differences.txt");
    let _ = std::fs::write(&full, report(&differences, usize::MAX));
    let mut failure = String::new();
    if !differences.is_empty() {
        let _ = write!(
            failure,
            "{} of {total} questions are answered differently by CoreDNS and svcplane-dns, beyond \
             what docs/dns.md's table of differences allows (every one: {}):{}",
            differences.len(),
            full.display(),
            report(&differences, EXAMPLES)
        );
    }
    if !stale.is_empty() {
        let _ = write!(
            failure,
            "\nrows of docs/dns.md's table of differences that allowed nothing (remove them): {}",
            stale.join(", ")
        );
    }
    assert!(failure.is_empty(), "{failure}");
}
