use super::*;

const ZONE: &str = "cluster.local";

#[test]
fn names_table() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let cases: Vec<(&str, QueryName)> = vec![
        ("cluster.local.", QueryName::Apex),
        ("cluster.local", QueryName::Apex),
        ("dns-version.cluster.local.", QueryName::DnsVersion),
        ("svc.cluster.local.", QueryName::SvcRoot),
        ("pod.cluster.local.", QueryName::PodRoot),
        ("shop.svc.cluster.local.", QueryName::Namespace("shop")),
        (
            "web.shop.svc.cluster.local.",
            QueryName::Service {
                namespace: "shop",
                service: "web",
            },
        ),
        (
            "web-0.web.shop.svc.cluster.local.",
            QueryName::Endpoint {
                namespace: "shop",
                service: "web",
                endpoint: "web-0",
            },
        ),
        (
            "_http._tcp.web.shop.svc.cluster.local.",
            QueryName::Port {
                namespace: "shop",
                service: "web",
                port: "http",
                protocol: "tcp",
            },
        ),
        (
            "http.tcp.web.shop.svc.cluster.local.",
            QueryName::Port {
                namespace: "shop",
                service: "web",
                port: "http",
                protocol: "tcp",
            },
        ),
        (
            "10-244-1-5.shop.pod.cluster.local.",
            QueryName::Pod {
                namespace: "shop",
                ip: Some(ip("10.244.1.5")),
            },
        ),
        (
            "fd00--5.shop.pod.cluster.local.",
            QueryName::Pod {
                namespace: "shop",
                ip: Some(ip("fd00::5")),
            },
        ),
        (
            "nope.shop.pod.cluster.local.",
            QueryName::Pod {
                namespace: "shop",
                ip: None,
            },
        ),
        ("a.b.c.web.shop.svc.cluster.local.", QueryName::Invalid),
        ("foo.cluster.local.", QueryName::Invalid),
        ("web.shop.cluster.local.", QueryName::Invalid),
        (
            "10.0.96.10.in-addr.arpa.",
            QueryName::Reverse(ip("10.96.0.10")),
        ),
        ("96.10.in-addr.arpa.", QueryName::Outside),
        ("example.org.", QueryName::Outside),
        ("notcluster.local.", QueryName::Outside),
    ];
    for (name, want) in cases {
        assert_eq!(parse(name, ZONE), want, "{name}");
    }
}
