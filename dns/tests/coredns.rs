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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::rr::RecordType;
use svcplane_testenv::{Options, TestEnv};

use common::{Tethered, admin_get, free_dns_port};
use questions::{Case, EdnsMode, Proto, Question, ZONE};
use wire::{Outcome, answers_with, ask, differing};

/// Questions in flight at once (each to both servers).
const CONCURRENCY: usize = 16;
/// Examples shown per group of differences in the failure message.
const EXAMPLES: usize = 2;

fn corefile(port: u16, kubeconfig: &std::path::Path, upstream: SocketAddr) -> String {
    // kubeadm's server block, less what does not change answers (health, ready, prometheus,
    // loop, reload, loadbalance) and the cache, so every answer is fresh. Bound to loopback.
    format!(
        ".:{port} {{
    bind 127.0.0.1
    errors
    kubernetes {ZONE} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . {upstream}
}}
",
        kubeconfig = kubeconfig.display()
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

fn start_servers(env: &TestEnv, coredns_bin: &std::path::Path, upstream: SocketAddr) -> Servers {
    let coredns = free_dns_port();
    let conf = env.dir().join("Corefile");
    std::fs::write(
        &conf,
        corefile(coredns.port(), env.kubeconfig_path(), upstream),
    )
    .expect("write Corefile");
    let coredns_process = Tethered::spawn(
        "coredns",
        coredns_bin,
        &["-conf".into(), conf.display().to_string()],
        &env.dir().join("coredns.log"),
    );
    let (svcplane, admin) = (free_dns_port(), free_dns_port());
    let svcplane_process = Tethered::spawn(
        "svcplane-dns",
        std::path::Path::new(env!("CARGO_BIN_EXE_svcplane-dns")),
        &[
            format!("--kubeconfig={}", env.kubeconfig_path().display()),
            format!("--listen={svcplane}"),
            format!("--admin-addr={admin}"),
            format!("--upstream={upstream}"),
            format!("--cluster-domain={ZONE}"),
            "--ttl=30".into(),
            "--pods=insecure".into(),
            "--lameduck=0s".into(),
        ],
        &env.dir().join("svcplane-dns.log"),
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
    let checks = [
        (
            probe("kubernetes.default.svc.cluster.local.", RecordType::A),
            "10.96.0.1",
        ),
        (
            probe("db-0.db.shop.svc.cluster.local.", RecordType::A),
            "10.244.1.5",
        ),
        (probe("empty.svc.cluster.local.", RecordType::A), ""),
    ];
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
    let stub = stub::start().await;
    let mut servers = start_servers(&env, &coredns_bin, stub.addr);
    wait_synced(&mut servers).await;

    let questions = questions::generate(&cluster);
    let started = Instant::now();
    let (coredns, svcplane) = (servers.coredns, servers.svcplane);
    let outcomes: Vec<(Outcome, Outcome)> = futures::stream::iter(questions.iter().enumerate())
        .map(|(i, q)| async move {
            let id = (i % 65_000) as u16 + 2;
            tokio::join!(ask(coredns, q, id), ask(svcplane, q, id))
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    eprintln!(
        "asked {} questions in {:.1} s",
        questions.len(),
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

    let mut used: BTreeMap<&str, usize> = allowed.iter().map(|e| (e.id.as_str(), 0)).collect();
    let mut differences = Vec::new();
    let mut allowed_count = 0;
    for (q, (c, s)) in questions.iter().zip(outcomes) {
        let mut fields = differing(&c, &s);
        if fields.is_empty() {
            continue;
        }
        for entry in &allowed {
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
    let stale: Vec<&str> = used
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "{} of {} questions answered alike; {allowed_count} differ as docs/dns.md allows ({}); {} differ otherwise",
        questions.len() - allowed_count - differences.len(),
        questions.len(),
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
            "{} of {} questions are answered differently by CoreDNS and svcplane-dns, beyond \
             what docs/dns.md's table of differences allows (every one: {}):{}",
            differences.len(),
            questions.len(),
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
