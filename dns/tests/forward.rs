//! Forwarding, against a small upstream DNS server this test runs on loopback.

mod common;

use common::{dig_async, free_dns_port, test_metrics};

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use svcplane_dns::forward::Forwarder;
use svcplane_dns::server::{DnsServer, Handler};
use svcplane_dns::zone::ZoneService;
use svcplane_dns::{Config, Index, PodMode};
use svcplane_model::{ObjectKey, Service, ServiceType};

/// The upstream: a few fixed names, and a count of the questions it was asked.
#[derive(Clone, Default)]
struct Upstream {
    asked: Arc<Mutex<HashMap<String, usize>>>,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

#[async_trait::async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> ResponseInfo {
        let info = request.request_info().expect("one question");
        let q = info.query.name().to_string();
        *self
            .asked
            .lock()
            .expect("lock")
            .entry(format!("{q} {}", info.query.query_type()))
            .or_default() += 1;
        let mut answers = Vec::new();
        let mut soa = Vec::new();
        let mut code = ResponseCode::NoError;
        match (q.as_str(), info.query.query_type()) {
            ("example.org.", RecordType::A) => answers.push(Record::from_rdata(
                name("example.org."),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            )),
            ("big.example.org.", RecordType::A) => {
                for i in 0..100u8 {
                    answers.push(Record::from_rdata(
                        name("big.example.org."),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                    ));
                }
            }
            ("1.2.0.192.in-addr.arpa.", RecordType::PTR) => answers.push(Record::from_rdata(
                name("1.2.0.192.in-addr.arpa."),
                60,
                RData::PTR(PTR(name("host.example.org."))),
            )),
            _ => {
                code = ResponseCode::NXDomain;
                soa.push(Record::from_rdata(
                    name("example.org."),
                    30,
                    RData::SOA(SOA::new(
                        name("ns.example.org."),
                        name("host.example.org."),
                        1,
                        60,
                        60,
                        60,
                        30,
                    )),
                ));
            }
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        let response = MessageResponseBuilder::new(&request.queries, request.edns.as_ref()).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        handle.send_response(response).await.unwrap_or_else(|_| {
            ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            })
        })
    }
}

impl Upstream {
    fn asked(&self, key: &str) -> usize {
        self.asked
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

async fn serve<H: RequestHandler + Clone>(handler: H) -> SocketAddr {
    // A UDP port whose TCP twin is free too (another test may hold it): a few tries.
    let mut tries = 0;
    let (udp, addr, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("udp");
        let addr = udp.local_addr().expect("addr");
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(error) if tries < 20 => {
                tries += 1;
                let _ = error;
            }
            Err(error) => panic!("no port free for both UDP and TCP: {error}"),
        }
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 8);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

fn cluster() -> Index {
    let mut index = Index::new();
    index.apply_namespace("shop", true);
    let ext = Service {
        external_name: Some("example.org".into()),
        ..Service::new(ObjectKey::new("shop", "ext"), ServiceType::ExternalName)
    };
    index.apply_service(ext.key.clone(), Some(Arc::new(ZoneService::from(&ext))));
    index.set_synced();
    index
}

fn config() -> Arc<Config> {
    Arc::new(Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    })
}

async fn svcplane_dns(forwarder: Arc<Forwarder>) -> SocketAddr {
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(cluster())),
        config(),
        Some(forwarder),
        test_metrics(),
    );
    let server = DnsServer::bind(&["127.0.0.1:0".parse().expect("addr")], handler)
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_caches_and_chases() {
    let upstream = Upstream::default();
    let up = serve(upstream.clone()).await;
    let fwd = Arc::new(Forwarder::new(vec![up], &[], 1000, Duration::from_secs(2)));
    let dns = svcplane_dns(fwd).await;

    let out = dig_async(dns, &["example.org", "A"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("192.0.2.1"),
        "{out}"
    );
    assert!(
        out.contains(" ra") && !out.contains(" aa"),
        "recursive, not authoritative: {out}"
    );
    let out = dig_async(dns, &["+short", "example.org", "A"]).await;
    assert_eq!(out.trim(), "192.0.2.1");
    assert_eq!(
        upstream.asked("example.org. A"),
        1,
        "the second answer came from the cache"
    );

    for _ in 0..2 {
        let out = dig_async(dns, &["nx.example.org", "A"]).await;
        assert!(out.contains("status: NXDOMAIN"), "{out}");
    }
    assert_eq!(
        upstream.asked("nx.example.org. A"),
        1,
        "NXDOMAIN is cached too"
    );

    let out = dig_async(dns, &["+short", "ext.shop.svc.cluster.local", "A"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["example.org.", "192.0.2.1"],
        "CNAME, then its target"
    );

    let out = dig_async(dns, &["+short", "-x", "192.0.2.1"]).await;
    assert_eq!(
        out.trim(),
        "host.example.org.",
        "reverse names of outside addresses are forwarded"
    );

    let out = dig_async(dns, &["+bufsize=4096", "+short", "big.example.org", "A"]).await;
    assert_eq!(
        out.lines().count(),
        100,
        "a truncated upstream answer is fetched again over TCP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_servfail_not_a_hang() {
    // A port nobody answers on.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let fwd = Arc::new(Forwarder::new(
        vec![dead],
        &[],
        10,
        Duration::from_millis(300),
    ));
    let dns = svcplane_dns(fwd).await;
    let start = Instant::now();
    let out = dig_async(dns, &["example.org", "A"]).await;
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "bounded by the forward timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_forwarding_to_each_other_detect_the_loop() {
    // B forwards to A, A to B. Addresses are needed before the forwarders exist, so B is a
    // thin relay built on a forwarder whose upstream is filled in below.
    // A serves UDP and TCP: its port must be free for both.
    let a_addr = free_dns_port();
    let b_fwd = Arc::new(Forwarder::new(
        vec![a_addr],
        &[],
        10,
        Duration::from_millis(500),
    ));
    let b = svcplane_dns(b_fwd).await;
    let a_fwd = Arc::new(Forwarder::new(vec![b], &[], 10, Duration::from_millis(500)));
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(cluster())),
        config(),
        Some(a_fwd.clone()),
        test_metrics(),
    );
    let a = DnsServer::bind(&[a_addr], handler)
        .await
        .expect("bind A where B expects it");
    tokio::spawn(a.run(std::future::pending()));

    assert!(!a_fwd.loop_detected());
    a_fwd.probe_for_loops().await;
    assert!(
        a_fwd.loop_detected(),
        "A saw its own probe come back through B"
    );
    let start = Instant::now();
    let out = dig_async(a_addr, &["example.org", "A"]).await;
    assert!(
        out.contains("status: SERVFAIL"),
        "A stopped forwarding: {out}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "and answers at once"
    );
    // Cluster names still answer.
    let out = dig_async(a_addr, &["+short", "ext.shop.svc.cluster.local", "CNAME"]).await;
    assert_eq!(out.trim(), "example.org.");
}
