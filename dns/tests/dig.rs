//! The server on loopback, asked by real `dig` over UDP and TCP.

mod common;

use common::{dig_async, test_metrics};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use svcplane_dns::server::{DnsServer, Handler};
use svcplane_dns::zone::{ZoneService, ZoneSlice};
use svcplane_dns::{Config, Index, PodMode};
use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, ObjectKey,
    Protocol, Service, ServicePort, ServiceType, TargetPort,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// `web` (ClusterIP 10.96.0.20) and `big`, headless with 100 ready endpoints: more than a
/// 512-byte UDP answer holds.
fn index() -> Index {
    let mut index = Index::new();
    index.apply_namespace("shop", true);
    let web = service(
        "web",
        ClusterIps::Ips(vec!["10.96.0.20".parse().expect("ip")]),
    );
    index.apply_service(web.key.clone(), Some(Arc::new(ZoneService::from(&web))));
    let big = service("big", ClusterIps::Headless);
    index.apply_service(big.key.clone(), Some(Arc::new(ZoneService::from(&big))));
    let endpoints = (0..100)
        .map(|i| Endpoint {
            addresses: vec![IpAddr::from([10, 244, 7, i as u8])],
            conditions: Conditions::default(),
            hostname: None,
            node_name: None,
            zone: None,
            hints: None,
            target_pod: None,
        })
        .collect();
    let slice = EndpointSlice {
        key: ObjectKey::new("shop", "big-x1"),
        service: ObjectKey::new("shop", "big"),
        address_type: AddressType::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: Some(8080),
            app_protocol: None,
        }],
        endpoints,
        managed_by: None,
        trigger_time: None,
        resource_version: None,
    };
    index.apply_endpoints(
        ObjectKey::new("shop", "big"),
        Some(ServiceEndpoints {
            slices: vec![Arc::new(ZoneSlice::from(&slice))],
        }),
    );
    // `multi`: headless, two slices with different ports (pg on pg-0 10.244.5.1, metrics on
    // 10.244.5.2).
    let mut multi = service("multi", ClusterIps::Headless);
    multi.ports = [("pg", 5432), ("metrics", 9187)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: name.into(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(port),
            node_port: None,
            app_protocol: None,
        })
        .collect();
    index.apply_service(multi.key.clone(), Some(Arc::new(ZoneService::from(&multi))));
    let multi_slice = |name: &str, port: (&str, u16), ip: [u8; 4], hostname: Option<&str>| {
        Arc::new(ZoneSlice::from(&EndpointSlice {
            key: ObjectKey::new("shop", name),
            service: ObjectKey::new("shop", "multi"),
            address_type: AddressType::V4,
            ports: vec![EndpointPort {
                name: port.0.into(),
                protocol: Protocol::Tcp,
                port: Some(port.1),
                app_protocol: None,
            }],
            endpoints: vec![Endpoint {
                addresses: vec![IpAddr::from(ip)],
                conditions: Conditions::default(),
                hostname: hostname.map(Into::into),
                node_name: None,
                zone: None,
                hints: None,
                target_pod: None,
            }],
            managed_by: None,
            trigger_time: None,
            resource_version: None,
        }))
    };
    index.apply_endpoints(
        ObjectKey::new("shop", "multi"),
        Some(ServiceEndpoints {
            slices: vec![
                multi_slice("multi-a", ("pg", 5432), [10, 244, 5, 1], Some("pg-0")),
                multi_slice("multi-b", ("metrics", 9187), [10, 244, 5, 2], None),
            ],
        }),
    );
    index.set_synced();
    index.set_serial(1);
    index
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    let config = Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    };
    let handler = Handler::new(
        Arc::new(ArcSwap::from_pointee(index())),
        Arc::new(config),
        None,
        test_metrics(),
    );
    let server = DnsServer::bind(&["127.0.0.1:0".parse().expect("addr")], handler)
        .await
        .expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("server ran");
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }
}

fn flags(out: &str) -> String {
    out.lines()
        .find(|l| l.contains(";; flags:"))
        .map(|l| l.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_over_udp_and_tcp() {
    let server = start().await;
    let a = server.addr;
    for transport in ["+notcp", "+tcp"] {
        let out = dig_async(a, &[transport, "+short", "web.shop.svc.cluster.local", "A"]).await;
        assert_eq!(out.trim(), "10.96.0.20", "{transport}");
        let out = dig_async(
            a,
            &[
                transport,
                "+short",
                "_http._tcp.web.shop.svc.cluster.local",
                "SRV",
            ],
        )
        .await;
        assert_eq!(
            out.trim(),
            "0 100 80 web.shop.svc.cluster.local.",
            "{transport}"
        );
        let out = dig_async(a, &[transport, "+short", "-x", "10.96.0.20"]).await;
        assert_eq!(out.trim(), "web.shop.svc.cluster.local.", "{transport}");
    }
    let out = dig_async(a, &["WEB.shop.svc.Cluster.Local", "A"]).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(flags(&out).contains(" aa"), "authoritative: {out}");
    assert!(
        out.contains("WEB.shop.svc.Cluster.Local. 5\tIN\tA\t10.96.0.20"),
        "owner keeps the case: {out}"
    );

    let out = dig_async(a, &["nope.shop.svc.cluster.local", "A"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "SOA in authority: {out}");
    assert!(
        out.contains(
            "IN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
        ),
        "{out}"
    );

    let out = dig_async(a, &["web.shop.svc.cluster.local", "AAAA"]).await;
    assert!(
        out.contains("status: NOERROR")
            && out.contains("ANSWER: 0")
            && out.contains("AUTHORITY: 1"),
        "NODATA: {out}"
    );

    let out = dig_async(a, &["+short", "dns-version.cluster.local", "TXT"]).await;
    assert_eq!(out.trim(), "\"1.1.0\"");

    // The name server the SOA names, and the reverse zones' apexes (kubeadm's Corefile serves
    // them from the kubernetes plugin).
    let out = dig_async(a, &["+short", "ns.dns.cluster.local", "A"]).await;
    assert_eq!(out.trim(), "", "no kube-dns Service in this index: NODATA");
    let out = dig_async(a, &["in-addr.arpa", "SOA"]).await;
    assert!(
        out.contains("in-addr.arpa.\t\t5\tIN\tSOA\tns.dns.in-addr.arpa. hostmaster.in-addr.arpa."),
        "{out}"
    );
    let out = dig_async(a, &["1.2.0.192.in-addr.arpa", "SOA"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains("AUTHORITY: 1"), "{out}");

    let out = dig_async(a, &["cluster.local", "AXFR"]).await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );
    server.stop().await;
}

/// The answers where CoreDNS's behaviour is the contract (issue 12; `dns/tests/coredns.rs`
/// compares with CoreDNS itself), asked with dig.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coredns_parity_with_dig() {
    let server = start().await;
    let a = server.addr;
    let short = |name: &'static str, qtype: &'static str| async move {
        dig_async(a, &["+short", name, qtype])
            .await
            .trim()
            .to_owned()
    };
    // A headless port name: only the endpoints whose slice has the port.
    assert_eq!(
        short("_pg._tcp.multi.shop.svc.cluster.local", "A").await,
        "10.244.5.1"
    );
    // `_` alone matches any port or protocol; `_._` answers as the Service.
    assert_eq!(
        short("_._tcp.web.shop.svc.cluster.local", "SRV").await,
        "0 100 80 web.shop.svc.cluster.local."
    );
    let both = short("_._.multi.shop.svc.cluster.local", "A").await;
    assert_eq!(both.lines().count(), 2, "{both}");
    // SRV on an endpoint's name: its slice's ports.
    assert_eq!(
        short("pg-0.multi.shop.svc.cluster.local", "SRV").await,
        "0 100 5432 pg-0.multi.shop.svc.cluster.local."
    );
    // Pod names: an IPv6 label may start with a dash; `<ns>.pod` is NODATA for a namespace,
    // NXDOMAIN otherwise.
    // (`-q`: a name that starts with a dash is no dig option.)
    let out = dig_async(
        a,
        &["+short", "-q", "--1.shop.pod.cluster.local", "-t", "AAAA"],
    )
    .await;
    assert_eq!(out.trim(), "::1");
    let out = dig_async(a, &["shop.pod.cluster.local", "A"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    let out = dig_async(a, &["10-244-1-5.pod.cluster.local", "A"]).await;
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // The reverse zones' apexes: NODATA with their SOA; dns-version there too.
    let out = dig_async(a, &["in-addr.arpa", "A"]).await;
    assert!(
        out.contains("status: NOERROR")
            && out.contains("ANSWER: 0")
            && out.contains("AUTHORITY: 1"),
        "{out}"
    );
    assert_eq!(short("dns-version.in-addr.arpa", "TXT").await, "\"1.1.0\"");
    let out = dig_async(a, &["ip6.arpa", "AXFR"]).await;
    assert!(
        out.contains("Transfer failed") || out.contains("REFUSED"),
        "{out}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fit_the_clients_buffer() {
    let server = start().await;
    let a = server.addr;
    // No EDNS: at most 512 bytes, truncated with TC.
    let out = dig_async(
        a,
        &["+noedns", "+ignore", "big.shop.svc.cluster.local", "A"],
    )
    .await;
    assert!(flags(&out).contains(" tc"), "TC without EDNS: {out}");
    // EDNS with a 512-byte buffer: truncated, and the OPT record is still there (RFC 6891);
    // the DO bit of the query comes back (RFC 3225).
    let out = dig_async(
        a,
        &[
            "+bufsize=512",
            "+dnssec",
            "+ignore",
            "big.shop.svc.cluster.local",
            "A",
        ],
    )
    .await;
    assert!(flags(&out).contains(" tc"), "TC: {out}");
    assert!(
        out.contains("OPT PSEUDOSECTION"),
        "OPT kept when truncated: {out}"
    );
    assert!(
        out.contains("; EDNS: version: 0, flags: do;"),
        "DO copied: {out}"
    );
    let answers = out
        .lines()
        .filter(|l| l.starts_with("big.shop.svc.cluster.local."))
        .count();
    assert!(answers > 10, "as many answers as fit: {out}");
    let out = dig_async(a, &["+dnssec", "web.shop.svc.cluster.local", "A"]).await;
    assert!(
        out.contains("; EDNS: version: 0, flags: do;"),
        "DO copied: {out}"
    );
    let out = dig_async(a, &["web.shop.svc.cluster.local", "A"]).await;
    assert!(
        out.contains("; EDNS: version: 0, flags:;"),
        "no DO when not asked: {out}"
    );
    // A large EDNS buffer holds all 100 records.
    let out = dig_async(
        a,
        &["+bufsize=4096", "+short", "big.shop.svc.cluster.local", "A"],
    )
    .await;
    assert_eq!(out.lines().count(), 100, "{out}");
    // TCP carries everything.
    let out = dig_async(
        a,
        &[
            "+tcp",
            "+noedns",
            "+short",
            "big.shop.svc.cluster.local",
            "A",
        ],
    )
    .await;
    assert_eq!(out.lines().count(), 100);
    // An EDNS version we do not speak.
    let out = dig_async(
        a,
        &[
            "+edns=1",
            "+noednsnegotiation",
            "web.shop.svc.cluster.local",
            "A",
        ],
    )
    .await;
    assert!(out.contains("status: BADVERS"), "{out}");
    server.stop().await;
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    msg.to_vec().expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_do_not_stop_the_server_and_tcp_pipelines() {
    let server = start().await;
    let a = server.addr;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // Garbage, a header cut short, and a header claiming a question that is not there.
    for junk in [
        &b"\xff\xfe\xfd"[..],
        &[0u8; 11][..],
        &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0][..],
    ] {
        udp.send_to(junk, a).await.expect("send");
    }
    let out = dig_async(a, &["+short", "web.shop.svc.cluster.local", "A"]).await;
    assert_eq!(
        out.trim(),
        "10.96.0.20",
        "still serving after malformed packets"
    );

    // Two queries written back to back on one connection, then both answers read.
    let mut tcp = tokio::net::TcpStream::connect(a).await.expect("connect");
    let mut wire = Vec::new();
    for (id, name) in [
        (7u16, "web.shop.svc.cluster.local."),
        (8, "nope.shop.svc.cluster.local."),
    ] {
        let q = query(id, name);
        wire.extend_from_slice(&(q.len() as u16).to_be_bytes());
        wire.extend_from_slice(&q);
    }
    tcp.write_all(&wire).await.expect("write");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut len = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut len))
            .await
            .expect("answer in time")
            .expect("read");
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut buf).await.expect("read");
        let msg = Message::from_vec(&buf).expect("decode");
        ids.push((msg.metadata.id, msg.metadata.response_code.to_string()));
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            (7, "No Error".to_owned()),
            (8, "Non-Existent Domain".to_owned())
        ]
    );
    server.stop().await;
}
