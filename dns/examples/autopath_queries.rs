//! How many questions a pod's typical lookups cost with and without `autopath @kubernetes`.
//!
//! A pod's resolver (glibc, `ndots:5`, kubelet's search path for namespace `default` plus one
//! node search domain) looks up each name for A and AAAA, trying the search domains in turn
//! until an answer is not NXDOMAIN. The server is svcplane-dns built from kubeadm's Corefile,
//! once as it is and once with `autopath @kubernetes` and `pods verified`, over an index with
//! the pod's address; names outside the cluster go to a stub upstream on loopback. Every
//! question is counted where it is sent.
//!
//! Run: `cargo run --release -p svcplane-dns --example autopath_queries`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use svcplane_dns::plan::{Environment, Plan};
use svcplane_dns::server::Handler;
use svcplane_dns::zone::ZoneService;
use svcplane_dns::{Index, corefile};
use svcplane_model::{ClusterIps, ObjectKey, Service, ServiceType};

/// The pod asking, in namespace `default`.
const POD: [u8; 4] = [10, 244, 0, 5];
/// kubelet's search path for `default`, then the node's own domain.
const SEARCH: [&str; 4] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
    "corp.internal",
];
const NDOTS: usize = 5;

/// What a pod looks up, and why.
const LOOKUPS: [(&str, &str); 8] = [
    ("web", "a Service in its own namespace"),
    ("db.shop", "a Service in another namespace"),
    ("db.shop.svc", "the same, with .svc"),
    (
        "kubernetes.default.svc.cluster.local",
        "a full name without the final dot",
    ),
    ("api.github.com", "an external name"),
    (
        "s3.eu-west-1.amazonaws.com",
        "an external name with four dots",
    ),
    ("registry.corp.internal", "a name in the node's domain"),
    ("example.com.", "an absolute external name"),
];

fn corefile(autopath: bool) -> String {
    let (autopath, pods) = if autopath {
        ("    autopath @kubernetes\n", "verified")
    } else {
        ("", "insecure")
    };
    format!(
        ".:53 {{
    errors
{autopath}    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods {pods}
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    forward . {{$UPSTREAM}}
    cache 30 {{
       disable success cluster.local
       disable denial cluster.local
    }}
    loadbalance
}}
"
    )
}

fn index() -> Index {
    let mut index = Index::new();
    for ns in ["default", "shop", "kube-system"] {
        index.apply_namespace(ns, true);
    }
    for (ns, name, ip) in [
        ("default", "web", [10, 96, 0, 20]),
        ("shop", "db", [10, 96, 0, 30]),
        ("default", "kubernetes", [10, 96, 0, 1]),
    ] {
        let svc = Service {
            cluster_ips: ClusterIps::Ips(vec![IpAddr::from(ip)]),
            ..Service::new(ObjectKey::new(ns, name), ServiceType::ClusterIp)
        };
        index.apply_service(svc.key.clone(), Some(Arc::new(ZoneService::from(&svc))));
    }
    index.apply_pod_ip("default", IpAddr::from(POD), true);
    index.set_synced();
    index
}

/// An upstream on loopback: NXDOMAIN below the node's domain except `registry.`, an address for
/// every other A question, NODATA for other types.
async fn upstream() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(q) = query.queries.first().cloned() else {
                continue;
            };
            let name = q.name().to_ascii().to_ascii_lowercase();
            let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.recursion_available = true;
            reply.add_query(q.clone());
            let apex = Name::from_ascii("corp.internal.").expect("name");
            let soa = Record::from_rdata(
                apex.clone(),
                60,
                RData::SOA(SOA::new(apex.clone(), apex, 1, 1, 1, 1, 60)),
            );
            if name.ends_with("corp.internal.") && name != "registry.corp.internal." {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authority(soa);
            } else if q.query_type() == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            } else {
                reply.add_authority(soa);
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

/// The names a glibc resolver tries for `name`, in order.
fn candidates(name: &str) -> Vec<String> {
    if name.ends_with('.') {
        return vec![name.to_owned()];
    }
    let searched = SEARCH.iter().map(|d| format!("{name}.{d}."));
    if name.matches('.').count() >= NDOTS {
        std::iter::once(format!("{name}."))
            .chain(searched)
            .collect()
    } else {
        searched
            .chain(std::iter::once(format!("{name}.")))
            .collect()
    }
}

/// Questions sent for one lookup (A and AAAA), and whether it found an address.
async fn lookup(handler: &Handler, name: &str) -> (usize, bool) {
    let src = SocketAddr::new(IpAddr::from(POD), 40_000);
    let mut asked = 0;
    let mut found = false;
    for qtype in [RecordType::A, RecordType::AAAA] {
        for (i, candidate) in candidates(name).into_iter().enumerate() {
            let mut msg = Message::new(i as u16, MessageType::Query, OpCode::Query);
            msg.metadata.recursion_desired = true;
            msg.add_query(Query::query(
                Name::from_ascii(&candidate).expect("name"),
                qtype,
            ));
            asked += 1;
            let raw = handler
                .respond_to_bytes(&msg.to_vec().expect("encode"), src)
                .await
                .expect("a reply");
            let reply = Message::from_vec(&raw).expect("decode");
            if std::env::var_os("DEBUG").is_some() {
                eprintln!(
                    "{candidate} {qtype}: {:?} {:?}",
                    reply.metadata.response_code, reply.answers
                );
            }
            if reply.metadata.response_code != ResponseCode::NXDomain {
                found |= reply
                    .answers
                    .iter()
                    .any(|r| r.record_type() == RecordType::A);
                break;
            }
        }
    }
    (asked, found)
}

/// The server's own resolv.conf has no search domains here, whatever the machine's says.
fn read(path: &std::path::Path) -> std::io::Result<String> {
    if path == std::path::Path::new("/etc/resolv.conf") {
        return Ok("nameserver 127.0.0.1\n".into());
    }
    std::fs::read_to_string(path)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let upstream = upstream().await;
    let metrics =
        svcplane_dns::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let handler = |autopath: bool| {
        let text = corefile(autopath);
        let file =
            corefile::parse_with_env(&text, &|_| Some(upstream.to_string())).expect("Corefile");
        let plan = Plan::from_corefile(
            &file,
            &Environment {
                nameserver: ObjectKey::new("kube-system", "kube-dns"),
                metrics: &metrics,
                read,
            },
        )
        .expect("plan");
        Handler::with_plan(
            Arc::new(ArcSwap::from_pointee(index())),
            Arc::new(ArcSwap::from_pointee(plan)),
            metrics.clone(),
        )
    };
    let (without, with) = (handler(false), handler(true));
    println!("| lookup | what | questions (A+AAAA) without autopath | with autopath |");
    println!("|---|---|---|---|");
    let (mut total_without, mut total_with) = (0, 0);
    for (name, what) in LOOKUPS {
        let (a, found_a) = lookup(&without, name).await;
        let (b, found_b) = lookup(&with, name).await;
        assert_eq!(found_a, found_b, "{name}: both find it or neither");
        assert!(found_a, "{name} resolves");
        total_without += a;
        total_with += b;
        println!("| `{name}` | {what} | {a} | {b} |");
    }
    println!(
        "| all | | {total_without} | {total_with} ({:.1}x fewer) |",
        total_without as f64 / total_with as f64
    );
}
