use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn service_and_srv_names() {
    let key = ObjectKey::new("shop", "web");
    assert_eq!(
        service_fqdn(&key, "cluster.local"),
        "web.shop.svc.cluster.local"
    );
    assert_eq!(
        srv_name("http", Protocol::Tcp, &key, "cluster.local"),
        "_http._tcp.web.shop.svc.cluster.local"
    );
    assert_eq!(
        srv_name("dns", Protocol::Udp, &key, "example.internal"),
        "_dns._udp.web.shop.svc.example.internal"
    );
    assert_eq!(
        srv_name("assoc", Protocol::Sctp, &key, "cluster.local"),
        "_assoc._sctp.web.shop.svc.cluster.local"
    );
    assert_eq!(
        pod_fqdn(ip("10.244.1.5"), "shop", "cluster.local"),
        "10-244-1-5.shop.pod.cluster.local"
    );
}

#[test]
fn dashed_names_round_trip() {
    let table = [
        ("10.244.1.5", "10-244-1-5"),
        ("0.0.0.0", "0-0-0-0"),
        ("fd00:10:244::5", "fd00-10-244--5"),
        ("2001:db8::", "2001-db8--0"),
        ("::1", "--1"),
        ("2001:db8:1:2:3:4:5:6", "2001-db8-1-2-3-4-5-6"),
    ];
    for (addr, label) in table {
        assert_eq!(dashed_ip(ip(addr)), label, "{addr}");
        assert_eq!(parse_dashed_ip(label), Some(ip(addr)), "{label}");
    }
}

#[test]
fn dashed_names_that_are_not_addresses() {
    for label in [
        "web",
        "10-244-1",
        "10-244-1-500",
        "10-244-1-5-6",
        "",
        "g-h--1",
    ] {
        assert_eq!(parse_dashed_ip(label), None, "{label}");
    }
}

#[test]
fn reverse_names_round_trip() {
    let table = [
        ("10.96.0.10", "10.0.96.10.in-addr.arpa"),
        ("192.0.2.1", "1.2.0.192.in-addr.arpa"),
        (
            "fd00::a",
            "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
        ),
        (
            "2001:db8::567:89ab",
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        ),
    ];
    for (addr, name) in table {
        assert_eq!(reverse_name(ip(addr)), name, "{addr}");
        assert_eq!(parse_reverse_name(name), Some(ip(addr)), "{name}");
        assert_eq!(
            parse_reverse_name(&format!("{}.", name.to_ascii_uppercase())),
            Some(ip(addr)),
            "absolute, upper case {name}"
        );
    }
}

#[test]
fn partial_or_malformed_reverse_names() {
    for name in [
        "96.10.in-addr.arpa",
        "1.0.96.10.10.in-addr.arpa",
        "01.0.96.10.in-addr.arpa",
        "256.0.96.10.in-addr.arpa",
        "+1.0.96.10.in-addr.arpa",
        "a.0.96.10.in-addr.arpa",
        "d.f.ip6.arpa",
        "ab.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
        "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
        "example.org",
    ] {
        assert_eq!(parse_reverse_name(name), None, "{name}");
    }
}
