use std::sync::Arc;

use svcplane_model::tracker::ServiceEndpoints;
use svcplane_model::{
    AddressType, ClusterIps, Conditions, Endpoint, EndpointPort, EndpointSlice, IpFamily, Protocol,
    Service, ServicePort, ServiceType, TargetPort,
};

use super::*;
use crate::ZoneEndpoints;
use crate::zone::ZoneSlice;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn port(name: &str, protocol: Protocol, number: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port: number,
        target_port: TargetPort::Number(number),
        node_port: None,
        app_protocol: None,
    }
}

fn service(ns: &str, name: &str, ips: ClusterIps, ports: Vec<ServicePort>) -> Service {
    Service {
        ip_families: ips_families(&ips),
        cluster_ips: ips,
        ports,
        ..Service::new(ObjectKey::new(ns, name), ServiceType::ClusterIp)
    }
}

fn ips_families(ips: &ClusterIps) -> Vec<IpFamily> {
    match ips {
        ClusterIps::Ips(ips) => ips.iter().map(IpFamily::of).collect(),
        _ => vec![],
    }
}

fn external(ns: &str, name: &str, target: &str) -> Service {
    let mut s = service(ns, name, ClusterIps::NotSet, vec![]);
    s.type_ = ServiceType::ExternalName;
    s.external_name = Some(target.into());
    s
}

fn endpoint(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        conditions: Conditions {
            ready: Some(ready),
            ..Default::default()
        },
        hostname: hostname.map(Into::into),
        node_name: None,
        zone: None,
        hints: None,
        target_pod: None,
    }
}

fn slice(
    ns: &str,
    service: &str,
    ports: Vec<(&str, Protocol, u16)>,
    endpoints: Vec<Endpoint>,
) -> ZoneEndpoints {
    ServiceEndpoints {
        slices: vec![Arc::new(ZoneSlice::from(&EndpointSlice {
            key: ObjectKey::new(ns, format!("{service}-abcde")),
            service: ObjectKey::new(ns, service),
            address_type: AddressType::V4,
            ports: ports
                .into_iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: name.into(),
                    protocol,
                    port: Some(port),
                    app_protocol: None,
                })
                .collect(),
            endpoints,
            managed_by: None,
            trigger_time: None,
            resource_version: None,
        }))],
    }
}

fn config() -> Config {
    Config {
        zone: "cluster.local".into(),
        ttl: 5,
        pods: PodMode::Insecure,
        nameserver: ObjectKey::new("kube-system", "kube-dns"),
    }
}

fn cluster() -> Index {
    let mut index = Index::new();
    for ns in ["shop", "kube-system", "default"] {
        index.apply_namespace(ns, true);
    }
    let mut add = |svc: Service| {
        index.apply_service(svc.key.clone(), Some(Arc::new(ZoneService::from(&svc))));
    };
    add(service(
        "shop",
        "web",
        ClusterIps::Ips(vec![ip("10.96.0.20")]),
        vec![
            port("http", Protocol::Tcp, 80),
            port("dns", Protocol::Udp, 53),
        ],
    ));
    add(service(
        "shop",
        "dual",
        ClusterIps::Ips(vec![ip("10.96.0.30"), ip("fd00::30")]),
        vec![port("http", Protocol::Tcp, 80)],
    ));
    add(service(
        "kube-system",
        "kube-dns",
        ClusterIps::Ips(vec![ip("10.96.0.10")]),
        vec![port("dns", Protocol::Udp, 53)],
    ));
    add(service(
        "shop",
        "db",
        ClusterIps::Headless,
        vec![port("pg", Protocol::Tcp, 5432)],
    ));
    add(service(
        "shop",
        "cold",
        ClusterIps::Headless,
        vec![port("pg", Protocol::Tcp, 5432)],
    ));
    add(external("shop", "ext", "Example.org."));
    add(external("shop", "alias", "web.shop.svc.cluster.local"));
    add(external(
        "shop",
        "to-nowhere",
        "missing.shop.svc.cluster.local",
    ));
    add(external("shop", "literal", "192.0.2.1"));
    index.apply_endpoints(
        ObjectKey::new("shop", "db"),
        Some(slice(
            "shop",
            "db",
            vec![("pg", Protocol::Tcp, 5432)],
            vec![
                endpoint("10.244.1.5", Some("db-0"), true),
                endpoint("10.244.1.6", None, true),
                endpoint("10.244.1.7", Some("db-2"), false),
            ],
        )),
    );
    index.apply_endpoints(
        ObjectKey::new("shop", "cold"),
        Some(slice(
            "shop",
            "cold",
            vec![("pg", Protocol::Tcp, 5432)],
            vec![endpoint("10.244.2.1", None, false)],
        )),
    );
    index.apply_endpoints(
        ObjectKey::new("shop", "web"),
        Some(slice(
            "shop",
            "web",
            vec![("http", Protocol::Tcp, 8080)],
            vec![endpoint("10.244.3.1", None, true)],
        )),
    );
    index.set_synced();
    index.set_serial(42);
    index
}

/// Records as zone-file lines, for readable tables.
fn lines(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let data = match &r.data {
                Rdata::A(a) => format!("A {a}"),
                Rdata::Aaaa(a) => format!("AAAA {a}"),
                Rdata::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => format!("SRV {priority} {weight} {port} {target}"),
                Rdata::Ptr(t) => format!("PTR {t}"),
                Rdata::Cname(t) => format!("CNAME {t}"),
                Rdata::Txt(t) => format!("TXT \"{t}\""),
                Rdata::Ns(t) => format!("NS {t}"),
                Rdata::Soa {
                    mname,
                    rname,
                    serial,
                    refresh,
                    retry,
                    expire,
                    minimum,
                } => {
                    format!("SOA {mname} {rname} {serial} {refresh} {retry} {expire} {minimum}")
                }
            };
            format!("{} {} {data}", r.name, r.ttl)
        })
        .collect()
}

const NX: Rcode = Rcode::NxDomain;
const OK: Rcode = Rcode::NoError;

#[test]
fn answers_table() {
    let index = cluster();
    let cfg = config();
    // (name, type, rcode, answer lines); an empty NOERROR is NODATA and must carry the SOA.
    let cases: Vec<(&str, QType, Rcode, Vec<&str>)> = vec![
        (
            "dns-version.cluster.local.",
            QType::Txt,
            OK,
            vec!["dns-version.cluster.local. 28800 TXT \"1.1.0\""],
        ),
        (
            "web.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["web.shop.svc.cluster.local. 5 A 10.96.0.20"],
        ),
        (
            "WEB.Shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["WEB.Shop.svc.cluster.local. 5 A 10.96.0.20"],
        ),
        ("web.shop.svc.cluster.local.", QType::Aaaa, OK, vec![]),
        ("web.shop.svc.cluster.local.", QType::Txt, OK, vec![]),
        ("web.shop.svc.cluster.local.", QType::Cname, OK, vec![]),
        (
            "dual.shop.svc.cluster.local.",
            QType::Aaaa,
            OK,
            vec!["dual.shop.svc.cluster.local. 5 AAAA fd00::30"],
        ),
        ("nope.shop.svc.cluster.local.", QType::A, NX, vec![]),
        ("web.nowhere.svc.cluster.local.", QType::A, NX, vec![]),
        ("shop.svc.cluster.local.", QType::A, OK, vec![]),
        ("nowhere.svc.cluster.local.", QType::A, NX, vec![]),
        ("svc.cluster.local.", QType::A, OK, vec![]),
        ("pod.cluster.local.", QType::A, OK, vec![]),
        ("cluster.local.", QType::A, OK, vec![]),
        ("foo.cluster.local.", QType::A, NX, vec![]),
        // Named ports get SRV; unnamed or mismatched protocol is NXDOMAIN.
        (
            "_http._tcp.web.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec![
                "_http._tcp.web.shop.svc.cluster.local. 5 SRV 0 100 80 web.shop.svc.cluster.local.",
            ],
        ),
        (
            "_dns._udp.web.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec![
                "_dns._udp.web.shop.svc.cluster.local. 5 SRV 0 100 53 web.shop.svc.cluster.local.",
            ],
        ),
        (
            "_http._udp.web.shop.svc.cluster.local.",
            QType::Srv,
            NX,
            vec![],
        ),
        (
            "_grpc._tcp.web.shop.svc.cluster.local.",
            QType::Srv,
            NX,
            vec![],
        ),
        // Headless: ready endpoints only, by hostname or dashed IP.
        (
            "db.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec![
                "db.shop.svc.cluster.local. 5 A 10.244.1.5",
                "db.shop.svc.cluster.local. 5 A 10.244.1.6",
            ],
        ),
        (
            "db-0.db.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["db-0.db.shop.svc.cluster.local. 5 A 10.244.1.5"],
        ),
        (
            "10-244-1-6.db.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["10-244-1-6.db.shop.svc.cluster.local. 5 A 10.244.1.6"],
        ),
        ("db-2.db.shop.svc.cluster.local.", QType::A, NX, vec![]),
        ("db.shop.svc.cluster.local.", QType::Aaaa, OK, vec![]),
        (
            "_pg._tcp.db.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec![
                "_pg._tcp.db.shop.svc.cluster.local. 5 SRV 0 50 5432 db-0.db.shop.svc.cluster.local.",
                "_pg._tcp.db.shop.svc.cluster.local. 5 SRV 0 50 5432 10-244-1-6.db.shop.svc.cluster.local.",
            ],
        ),
        ("cold.shop.svc.cluster.local.", QType::A, NX, vec![]),
        ("cold.shop.svc.cluster.local.", QType::Txt, NX, vec![]),
        // ExternalName.
        (
            "ext.shop.svc.cluster.local.",
            QType::Cname,
            OK,
            vec!["ext.shop.svc.cluster.local. 5 CNAME example.org."],
        ),
        ("ext.shop.svc.cluster.local.", QType::Txt, OK, vec![]),
        (
            "alias.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec![
                "alias.shop.svc.cluster.local. 5 CNAME web.shop.svc.cluster.local.",
                "web.shop.svc.cluster.local. 5 A 10.96.0.20",
            ],
        ),
        ("to-nowhere.shop.svc.cluster.local.", QType::A, OK, vec![]),
        ("literal.shop.svc.cluster.local.", QType::A, NX, vec![]),
        ("x.ext.shop.svc.cluster.local.", QType::A, NX, vec![]),
        // Pods (insecure).
        (
            "10-244-9-9.shop.pod.cluster.local.",
            QType::A,
            OK,
            vec!["10-244-9-9.shop.pod.cluster.local. 5 A 10.244.9.9"],
        ),
        (
            "10-244-9-9.shop.pod.cluster.local.",
            QType::Aaaa,
            OK,
            vec![],
        ),
        (
            "10-244-9-9.nowhere.pod.cluster.local.",
            QType::A,
            NX,
            vec![],
        ),
        ("web.shop.pod.cluster.local.", QType::A, NX, vec![]),
        // PTR.
        (
            "20.0.96.10.in-addr.arpa.",
            QType::Ptr,
            OK,
            vec!["20.0.96.10.in-addr.arpa. 5 PTR web.shop.svc.cluster.local."],
        ),
        (
            "5.1.244.10.in-addr.arpa.",
            QType::Ptr,
            OK,
            vec!["5.1.244.10.in-addr.arpa. 5 PTR db-0.db.shop.svc.cluster.local."],
        ),
        (
            "6.1.244.10.in-addr.arpa.",
            QType::Ptr,
            OK,
            vec!["6.1.244.10.in-addr.arpa. 5 PTR 10-244-1-6.db.shop.svc.cluster.local."],
        ),
        // The apex.
        (
            "cluster.local.",
            QType::Soa,
            OK,
            vec![
                "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5",
            ],
        ),
        (
            "cluster.local.",
            QType::Ns,
            OK,
            vec!["cluster.local. 5 NS kube-dns.kube-system.svc.cluster.local."],
        ),
    ];
    for (name, qtype, rcode, want) in cases {
        let got = answer(&index, &cfg, name, qtype);
        assert_eq!(got.rcode, rcode, "{name} {qtype:?}: {got:?}");
        assert_eq!(lines(&got.answers), want, "{name} {qtype:?}");
        assert!(!got.forward, "{name} is a cluster name");
        if got.answers.is_empty() {
            assert!(
                got.authority.is_some(),
                "{name} {qtype:?}: negative answers carry the SOA"
            );
        }
        if name.ends_with("in-addr.arpa.") || !got.answers.is_empty() || rcode == NX {
            assert!(got.authoritative, "{name}: aa");
        }
    }
}

#[test]
fn srv_answers_carry_addresses_in_the_additional_section() {
    let index = cluster();
    let got = answer(
        &index,
        &config(),
        "_pg._tcp.db.shop.svc.cluster.local.",
        QType::Srv,
    );
    assert_eq!(
        lines(&got.additionals),
        [
            "db-0.db.shop.svc.cluster.local. 5 A 10.244.1.5",
            "10-244-1-6.db.shop.svc.cluster.local. 5 A 10.244.1.6"
        ]
    );
    let got = answer(&index, &config(), "cluster.local.", QType::Ns);
    assert_eq!(
        lines(&got.additionals),
        ["kube-dns.kube-system.svc.cluster.local. 5 A 10.96.0.10"]
    );
}

/// Where CoreDNS's behaviour is what clients rely on (issue 12; docs/dns.md).
#[test]
fn coredns_parity_table() {
    let mut index = cluster();
    // A headless Service whose two slices have different ports.
    let multi = service(
        "shop",
        "multi",
        ClusterIps::Headless,
        vec![
            port("pg", Protocol::Tcp, 5432),
            port("metrics", Protocol::Tcp, 9187),
        ],
    );
    index.apply_service(multi.key.clone(), Some(Arc::new(ZoneService::from(&multi))));
    let mut eps = slice(
        "shop",
        "multi",
        vec![("pg", Protocol::Tcp, 5432)],
        vec![endpoint("10.244.5.1", Some("pg-0"), true)],
    );
    let metrics = slice(
        "shop",
        "multi-metrics",
        vec![("metrics", Protocol::Tcp, 9187)],
        vec![endpoint("10.244.5.2", None, true)],
    );
    eps.slices.extend(metrics.slices);
    index.apply_endpoints(multi.key.clone(), Some(eps));
    let cfg = config();
    let cases: Vec<(&str, QType, Rcode, Vec<&str>)> = vec![
        // The name server the SOA names: the kube-dns Service's cluster IPs.
        (
            "ns.dns.cluster.local.",
            QType::A,
            OK,
            vec!["ns.dns.cluster.local. 5 A 10.96.0.10"],
        ),
        ("ns.dns.cluster.local.", QType::Aaaa, OK, vec![]),
        // A headless port name: only endpoints whose slice has the port.
        (
            "_pg._tcp.multi.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["_pg._tcp.multi.shop.svc.cluster.local. 5 A 10.244.5.1"],
        ),
        (
            "_metrics._tcp.multi.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec!["_metrics._tcp.multi.shop.svc.cluster.local. 5 A 10.244.5.2"],
        ),
        // Empty port or protocol labels match any.
        (
            "_._tcp.web.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec!["_._tcp.web.shop.svc.cluster.local. 5 SRV 0 100 80 web.shop.svc.cluster.local."],
        ),
        (
            "_dns._.web.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec!["_dns._.web.shop.svc.cluster.local. 5 SRV 0 100 53 web.shop.svc.cluster.local."],
        ),
        ("_._udp.db.shop.svc.cluster.local.", QType::Srv, NX, vec![]),
        // SRV on an endpoint's name: one per port of its slice, naming the endpoint.
        (
            "pg-0.multi.shop.svc.cluster.local.",
            QType::Srv,
            OK,
            vec![
                "pg-0.multi.shop.svc.cluster.local. 5 SRV 0 100 5432 pg-0.multi.shop.svc.cluster.local.",
            ],
        ),
        // One label under pod.<zone>: an existing namespace is NODATA, anything else NXDOMAIN.
        ("shop.pod.cluster.local.", QType::A, OK, vec![]),
        ("10-244-1-5.pod.cluster.local.", QType::A, NX, vec![]),
        // IPv6 pod names may start with a dash.
        (
            "--1.shop.pod.cluster.local.",
            QType::Aaaa,
            OK,
            vec!["--1.shop.pod.cluster.local. 5 AAAA ::1"],
        ),
        // `_._`: the Service's own answer.
        (
            "_._.db.shop.svc.cluster.local.",
            QType::A,
            OK,
            vec![
                "_._.db.shop.svc.cluster.local. 5 A 10.244.1.5",
                "_._.db.shop.svc.cluster.local. 5 A 10.244.1.6",
            ],
        ),
        (
            "_._.ext.shop.svc.cluster.local.",
            QType::Cname,
            OK,
            vec!["_._.ext.shop.svc.cluster.local. 5 CNAME example.org."],
        ),
        // The reverse zones: the apex is NODATA for other types; dns-version answers there.
        ("in-addr.arpa.", QType::A, OK, vec![]),
        (
            "dns-version.in-addr.arpa.",
            QType::Txt,
            OK,
            vec!["dns-version.in-addr.arpa. 28800 TXT \"1.1.0\""],
        ),
    ];
    for (name, qtype, rcode, want) in cases {
        let got = answer(&index, &cfg, name, qtype);
        assert_eq!(got.rcode, rcode, "{name} {qtype:?}: {got:?}");
        assert_eq!(lines(&got.answers), want, "{name} {qtype:?}");
    }
}

#[test]
fn out_of_zone_external_names_are_chased_upstream() {
    let got = answer(
        &cluster(),
        &config(),
        "ext.shop.svc.cluster.local.",
        QType::A,
    );
    assert_eq!(got.rcode, OK);
    assert_eq!(
        lines(&got.answers),
        ["ext.shop.svc.cluster.local. 5 CNAME example.org."]
    );
    assert_eq!(got.chase.as_deref(), Some("example.org"));
}

#[test]
fn names_outside_the_zone_and_unknown_addresses_are_forwarded() {
    let index = cluster();
    for (name, qtype) in [
        ("example.org.", QType::A),
        ("1.2.0.192.in-addr.arpa.", QType::Ptr),
        ("20.0.96.10.in-addr.arpa.", QType::A),
        ("96.10.in-addr.arpa.", QType::Ptr),
    ] {
        assert!(
            answer(&index, &config(), name, qtype).forward,
            "{name} {qtype:?}"
        );
    }
}

#[test]
fn zone_transfers_are_refused() {
    for qtype in [QType::Axfr, QType::Ixfr] {
        assert_eq!(
            answer(&cluster(), &config(), "cluster.local.", qtype).rcode,
            Rcode::Refused
        );
    }
}

#[test]
fn missing_names_are_servfail_until_the_first_sync() {
    let mut index = Index::new();
    index.apply_namespace("shop", true);
    let got = answer(&index, &config(), "web.shop.svc.cluster.local.", QType::A);
    assert_eq!(got.rcode, Rcode::ServFail);
    index.set_synced();
    let got = answer(&index, &config(), "web.shop.svc.cluster.local.", QType::A);
    assert_eq!(got.rcode, Rcode::NxDomain);
}

#[test]
fn verified_pods_need_a_pod_with_that_address() {
    let mut index = cluster();
    let cfg = Config {
        pods: PodMode::Verified,
        ..config()
    };
    let name = "10-244-9-9.shop.pod.cluster.local.";
    assert_eq!(answer(&index, &cfg, name, QType::A).rcode, NX);
    index.apply_pod_ip("shop", ip("10.244.9.9"), true);
    assert_eq!(
        lines(&answer(&index, &cfg, name, QType::A).answers),
        [format!("{name} 5 A 10.244.9.9")]
    );
    let disabled = Config {
        pods: PodMode::Disabled,
        ..config()
    };
    assert_eq!(answer(&index, &disabled, name, QType::A).rcode, NX);
}

#[test]
fn updates_apply_incrementally() {
    let mut index = cluster();
    let cfg = config();
    // An endpoint turning unready leaves the answers and the reverse map.
    index.apply_endpoints(
        ObjectKey::new("shop", "db"),
        Some(slice(
            "shop",
            "db",
            vec![("pg", Protocol::Tcp, 5432)],
            vec![
                endpoint("10.244.1.5", Some("db-0"), false),
                endpoint("10.244.1.6", None, true),
            ],
        )),
    );
    assert_eq!(
        lines(&answer(&index, &cfg, "db.shop.svc.cluster.local.", QType::A).answers),
        ["db.shop.svc.cluster.local. 5 A 10.244.1.6"]
    );
    assert!(answer(&index, &cfg, "5.1.244.10.in-addr.arpa.", QType::Ptr).forward);
    // A Service whose address changes answers PTR for the new address only.
    let moved = service(
        "shop",
        "web",
        ClusterIps::Ips(vec![ip("10.96.0.21")]),
        vec![port("http", Protocol::Tcp, 80)],
    );
    index.apply_service(moved.key.clone(), Some(Arc::new(ZoneService::from(&moved))));
    assert!(answer(&index, &cfg, "20.0.96.10.in-addr.arpa.", QType::Ptr).forward);
    assert_eq!(
        lines(&answer(&index, &cfg, "21.0.96.10.in-addr.arpa.", QType::Ptr).answers),
        ["21.0.96.10.in-addr.arpa. 5 PTR web.shop.svc.cluster.local."]
    );
    // A deleted Service is gone, and so is its reverse name.
    index.apply_service(ObjectKey::new("shop", "web"), None);
    assert_eq!(
        answer(&index, &cfg, "web.shop.svc.cluster.local.", QType::A).rcode,
        NX
    );
    assert!(answer(&index, &cfg, "21.0.96.10.in-addr.arpa.", QType::Ptr).forward);
    // A changed ExternalName answers with its new target.
    index.apply_service(
        ObjectKey::new("shop", "ext"),
        Some(Arc::new(ZoneService::from(&external(
            "shop",
            "ext",
            "other.example",
        )))),
    );
    assert_eq!(
        lines(&answer(&index, &cfg, "ext.shop.svc.cluster.local.", QType::Cname).answers),
        ["ext.shop.svc.cluster.local. 5 CNAME other.example."]
    );
}

#[test]
fn an_address_backing_several_services_has_a_name_in_each() {
    let mut index = cluster();
    let cfg = config();
    // 10.244.1.5 already backs shop/db as db-0; a second Service selects the same pod.
    index.apply_service(
        ObjectKey::new("shop", "db-read"),
        Some(Arc::new(ZoneService::from(&service(
            "shop",
            "db-read",
            ClusterIps::Headless,
            vec![port("pg", Protocol::Tcp, 5432)],
        )))),
    );
    index.apply_endpoints(
        ObjectKey::new("shop", "db-read"),
        Some(slice(
            "shop",
            "db-read",
            vec![("pg", Protocol::Tcp, 5432)],
            vec![endpoint("10.244.1.5", None, true)],
        )),
    );
    let ptr = |index: &Index| {
        let mut got = lines(&answer(index, &cfg, "5.1.244.10.in-addr.arpa.", QType::Ptr).answers);
        got.sort();
        got
    };
    assert_eq!(
        ptr(&index),
        [
            "5.1.244.10.in-addr.arpa. 5 PTR 10-244-1-5.db-read.shop.svc.cluster.local.",
            "5.1.244.10.in-addr.arpa. 5 PTR db-0.db.shop.svc.cluster.local.",
        ]
    );
    // Either Service letting go leaves the other's name; both letting go leaves none.
    index.apply_endpoints(ObjectKey::new("shop", "db"), None);
    assert_eq!(
        ptr(&index),
        ["5.1.244.10.in-addr.arpa. 5 PTR 10-244-1-5.db-read.shop.svc.cluster.local."]
    );
    index.apply_endpoints(ObjectKey::new("shop", "db-read"), None);
    assert!(answer(&index, &cfg, "5.1.244.10.in-addr.arpa.", QType::Ptr).forward);
}
