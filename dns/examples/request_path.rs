//! The request path in-process (no sockets): decode, answer from an index of 10,000 Services
//! with 10 ready endpoints each, encode; the benchmark's query mix. For profiling the serving
//! path (`perf record -g target/release/examples/request_path`).
//!
//! Run: `cargo run --release -p svcplane-dns --example request_path [QUERIES]`, with
//! `COREFILE=<path>` to answer as that Corefile says instead of as the flags do.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use svcplane_dns::server::Handler;
use svcplane_dns::zone::{ZoneService, ZoneSlice};
use svcplane_dns::{Config, Index, PodMode};
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};

const SERVICES: u32 = 10_000;
const NAMESPACES: u32 = 100;

fn index() -> Index {
    let mut index = Index::new();
    for n in 0..NAMESPACES {
        index.apply_namespace(&format!("ns-{n}"), true);
    }
    for i in 0..SERVICES {
        let key = ObjectKey::new(format!("ns-{}", i % NAMESPACES), format!("svc-{i}"));
        let svc = Service {
            cluster_ips: ClusterIps::Ips(vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))]),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
                app_protocol: None,
            }],
            ..Service::new(key.clone(), ServiceType::ClusterIp)
        };
        index.apply_service(key.clone(), Some(Arc::new(ZoneService::from(&svc))));
        let slice = EndpointSlice {
            key: ObjectKey::new(&*key.namespace, format!("svc-{i}-x")),
            service: key.clone(),
            address_type: AddressType::V4,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
                app_protocol: None,
            }],
            endpoints: (0..10)
                .map(|e| Endpoint {
                    addresses: vec![IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i * 16 + e))],
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
            key,
            Some(ServiceEndpoints {
                slices: vec![Arc::new(ZoneSlice::from(&slice))],
            }),
        );
    }
    index.set_synced();
    index
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m.to_vec().expect("encode")
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(300_000, |s| s.parse().expect("QUERIES"));
    let config = Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    };
    let metrics =
        svcplane_dns::metrics::Metrics::register(&prometheus::Registry::new()).expect("metrics");
    // With COREFILE=<path>, the handler runs what that Corefile says (e.g. kubeadm's).
    let handler = match std::env::var_os("COREFILE") {
        None => Handler::new(
            Arc::new(ArcSwap::from_pointee(index())),
            Arc::new(config),
            None,
            metrics,
        ),
        Some(path) => {
            let text = std::fs::read_to_string(&path).expect("COREFILE");
            let file = svcplane_dns::corefile::parse(&text).expect("Corefile");
            let plan = svcplane_dns::plan::Plan::from_corefile(
                &file,
                &svcplane_dns::plan::Environment {
                    nameserver: ObjectKey::new("kube-system", "kube-dns"),
                    metrics: &metrics,
                    read: |p| std::fs::read_to_string(p),
                },
            )
            .expect("plan");
            Handler::with_plan(
                Arc::new(ArcSwap::from_pointee(index())),
                Arc::new(ArcSwap::from_pointee(plan)),
                metrics,
            )
        }
    };
    // The benchmark's mix: A 70 %, SRV 20 %, AAAA (no data) 5 %, missing names 5 %.
    let queries: Vec<Vec<u8>> = (0..1000u32)
        .map(|n| {
            let i = (n * 7919) % SERVICES;
            let ns = i % NAMESPACES;
            let (name, t) = match n % 20 {
                0..14 => (format!("svc-{i}.ns-{ns}.svc.cluster.local."), RecordType::A),
                14..18 => (
                    format!("_http._tcp.svc-{i}.ns-{ns}.svc.cluster.local."),
                    RecordType::SRV,
                ),
                18 => (
                    format!("svc-{i}.ns-{ns}.svc.cluster.local."),
                    RecordType::AAAA,
                ),
                _ => (
                    format!("missing-{i}.ns-{ns}.svc.cluster.local."),
                    RecordType::A,
                ),
            };
            query(n as u16, &name, t)
        })
        .collect();
    let src = "127.0.0.1:5353".parse().expect("addr");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let mut bytes = 0;
        for n in 0..count {
            let reply = handler
                .respond_to_bytes(&queries[n % queries.len()], src)
                .await
                .expect("reply");
            bytes += reply.len();
        }
        let took = started.elapsed();
        println!(
            "{count} queries in {took:?}: {:.2} us each, {:.0} per second on one core ({bytes} bytes)",
            took.as_secs_f64() * 1e6 / count as f64,
            count as f64 / took.as_secs_f64()
        );
    });
}
