//! The question set: every name shape of the Kubernetes DNS specification and of CoreDNS's
//! parser, over the objects of [`super::cluster`], crossed with record types, letter case, EDNS
//! and transport.

use std::fmt;
use std::net::IpAddr;

use hickory_proto::rr::{DNSClass, RecordType};

use super::cluster::Cluster;

pub const ZONE: &str = "cluster.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdnsMode {
    None,
    /// EDNS0, 1232-byte buffer, DO clear.
    Edns0,
    /// EDNS0, 1232-byte buffer, DO set.
    Do,
    /// EDNS0, 512-byte buffer, DO set.
    Small,
    /// EDNS version 1 (BADVERS expected).
    Version1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    Lower,
    Mixed,
}

#[derive(Debug, Clone)]
pub struct Question {
    /// As sent, absolute.
    pub name: String,
    /// Lower-case, without the trailing dot: what allow-list name patterns match.
    pub lower: String,
    pub qtype: RecordType,
    pub class: DNSClass,
    pub case: Case,
    pub edns: EdnsMode,
    pub proto: Proto,
    pub rd: bool,
    /// What kind of name it is, for grouping differences.
    pub shape: &'static str,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

impl EdnsMode {
    pub fn label(self) -> &'static str {
        match self {
            EdnsMode::None => "none",
            EdnsMode::Edns0 => "edns0",
            EdnsMode::Do => "do",
            EdnsMode::Small => "small",
            EdnsMode::Version1 => "v1",
        }
    }
}

impl Case {
    pub fn label(self) -> &'static str {
        match self {
            Case::Lower => "lower",
            Case::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} edns={}{}",
            self.name,
            self.class,
            self.qtype,
            self.proto.label(),
            self.edns.label(),
            if self.rd { "" } else { " rd=0" }
        )
    }
}

/// Every other letter upper-case: `WeB.ShOp.SvC.ClUsTeR.LoCaL`.
fn mixed(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                upper = !upper;
                if upper { c.to_ascii_uppercase() } else { c }
            } else {
                c
            }
        })
        .collect()
}

fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

/// Names to ask about (lower-case, absolute), each with its shape.
pub fn names(cluster: &Cluster) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let mut zone = |shape: &'static str, rel: &str| {
        let name = if rel.is_empty() {
            format!("{ZONE}.")
        } else {
            format!("{rel}.{ZONE}.")
        };
        out.push((name, shape));
    };
    zone("apex", "");
    for rel in [
        "svc",
        "pod",
        "dns-version",
        "x.dns-version",
        "ns.dns",
        "foo",
        "a.foo",
    ] {
        zone("structural", rel);
    }
    for ns in ["shop", "empty", "kube-system", "nowhere"] {
        zone("namespace", &format!("{ns}.svc"));
    }
    for ns in ["shop", "nowhere"] {
        zone("namespace", &format!("{ns}.pod"));
    }

    let shop = [
        "web", "plain", "multi", "udp", "dual", "v6", "cip-eps", "nope",
    ];
    for svc in shop {
        zone("service/cluster-ip", &format!("{svc}.shop.svc"));
    }
    for svc in ["db", "hl", "bare", "unready", "vacant", "big"] {
        zone("service/headless", &format!("{svc}.shop.svc"));
    }
    for svc in [
        "ext-out",
        "ext-www",
        "ext-nx",
        "ext-in",
        "ext-chain",
        "ext-dead",
        "ext-ip",
        "ext-self",
    ] {
        zone("service/external-name", &format!("{svc}.shop.svc"));
    }
    for full in [
        "api.other.svc",
        "web.other.svc",
        "kube-dns.kube-system.svc",
        "kubernetes.default.svc",
        "web.nowhere.svc",
    ] {
        zone("service/other-namespace", full);
    }

    // Port and protocol labels: underscores optional, empty labels, unknown ones, `*`.
    let generic = [
        "_http._tcp",
        "_http._udp",
        "_nope._tcp",
        "_._tcp",
        "_http._",
        "_._",
        "http.tcp",
        "_*._tcp",
    ];
    for svc in [
        "web", "plain", "multi", "dual", "cip-eps", "db", "hl", "bare", "unready", "ext-out",
    ] {
        let shape = match svc {
            "db" | "hl" | "bare" | "unready" => "port/headless",
            "ext-out" => "port/external-name",
            _ => "port/cluster-ip",
        };
        for labels in generic {
            zone(shape, &format!("{labels}.{svc}.shop.svc"));
        }
    }
    for (labels, svc, shape) in [
        ("_dns._udp", "multi.shop", "port/cluster-ip"),
        ("_dns-tcp._tcp", "multi.shop", "port/cluster-ip"),
        ("_metrics._tcp", "multi.shop", "port/cluster-ip"),
        ("_dns._", "multi.shop", "port/cluster-ip"),
        ("_syslog._udp", "udp.shop", "port/cluster-ip"),
        ("_syslog._tcp", "udp.shop", "port/cluster-ip"),
        ("_pg._tcp", "db.shop", "port/headless"),
        ("_metrics._tcp", "hl.shop", "port/headless"),
        ("_http._tcp", "big.shop", "port/headless"),
        ("_grpc._tcp", "api.other", "port/headless"),
        ("_dns._udp", "kube-dns.kube-system", "port/cluster-ip"),
        ("_dns-tcp._tcp", "kube-dns.kube-system", "port/cluster-ip"),
        ("_https._tcp", "kubernetes.default", "port/cluster-ip"),
    ] {
        zone(shape, &format!("{labels}.{svc}.svc"));
    }

    // Endpoint names: hostnames, dashed addresses, not-ready ones, unknown ones.
    for (label, svc) in [
        ("db-0", "db.shop"),
        ("10-244-1-6", "db.shop"),
        ("db-2", "db.shop"),
        ("10-244-1-7", "db.shop"),
        ("10-244-1-8", "db.shop"),
        ("fd00-10-244-1--6", "db.shop"),
        ("nope", "db.shop"),
        ("*", "db.shop"),
        ("web-a", "hl.shop"),
        ("10-244-2-2", "hl.shop"),
        ("10-244-2-3", "hl.shop"),
        ("portless", "hl.shop"),
        ("10-244-2-4", "hl.shop"),
        ("solo", "bare.shop"),
        ("10-244-5-1", "unready.shop"),
        ("10-244-6-1", "big.shop"),
        ("api-0", "api.other"),
        ("10-244-0-10", "kube-dns.kube-system"),
    ] {
        zone("endpoint/headless", &format!("{label}.{svc}.svc"));
    }
    for (label, svc) in [
        ("alpha", "cip-eps.shop"),
        ("10-244-3-2", "cip-eps.shop"),
        ("10-244-3-3", "cip-eps.shop"),
        ("x", "web.shop"),
        ("x", "ext-out.shop"),
    ] {
        zone("endpoint/cluster-ip", &format!("{label}.{svc}.svc"));
    }
    for rel in ["a.b.c.web.shop.svc", "a.b.c.db.shop.svc"] {
        zone("too-long", rel);
    }

    for rel in [
        "10-244-1-5.shop.pod",
        "10-244-1-5.empty.pod",
        "10-244-1-5.nowhere.pod",
        "10-244-1-5.pod",
        "fd00-10-244-1--5.shop.pod",
        "--1.shop.pod",
        "1--.shop.pod",
        "fd00--.shop.pod",
        "010-244-1-5.shop.pod",
        "10-244-1-256.shop.pod",
        "1-2-3.shop.pod",
        "not-an-ip.shop.pod",
        "x.10-244-1-5.shop.pod",
        "a.b.10-244-1-5.shop.pod",
        "a.b.c.10-244-1-5.shop.pod",
    ] {
        zone("pod", rel);
    }

    // Reverse names: cluster IPs, endpoint IPs (ready, not ready, shared, port-less), unknown.
    let mut reverse: Vec<(IpAddr, &'static str)> = cluster
        .all_cluster_ips()
        .map(|ip| (ip, "reverse/cluster-ip"))
        .collect();
    for (ip, shape) in [
        ("10.244.1.5", "reverse/endpoint"),
        ("10.244.1.6", "reverse/endpoint"),
        ("10.244.1.7", "reverse/not-ready"),
        ("10.244.2.4", "reverse/endpoint"),
        ("10.244.3.1", "reverse/endpoint"),
        ("fd00:10:244:1::5", "reverse/endpoint"),
        ("fd00:10:244:1::6", "reverse/endpoint"),
        ("10.96.200.200", "reverse/unknown"),
        ("10.244.99.99", "reverse/unknown"),
        ("fd00:10:96::ffff", "reverse/unknown"),
        ("192.0.2.7", "reverse/upstream"),
    ] {
        reverse.push((ip.parse().expect("literal IP"), shape));
    }
    for (ip, shape) in reverse {
        out.push((format!("{}.", reverse_name(ip)), shape));
    }
    for name in [
        "in-addr.arpa.",
        "ip6.arpa.",
        "10.in-addr.arpa.",
        "96.10.in-addr.arpa.",
        "dns-version.in-addr.arpa.",
        "0.0.d.f.ip6.arpa.",
    ] {
        out.push((name.to_owned(), "reverse/zone"));
    }

    for name in [
        "example.org.",
        "www.example.org.",
        "missing.example.org.",
        "big.example.org.",
        "local.",
        "xcluster.local.",
        "cluster.local.example.org.",
    ] {
        out.push((name.to_owned(), "outside"));
    }
    out
}

const ALL_TYPES: [RecordType; 10] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::NS,
    RecordType::ANY,
    RecordType::MX,
];

/// How a name is asked, besides its type.
#[derive(Debug, Clone, Copy)]
struct Variant {
    class: DNSClass,
    case: Case,
    edns: EdnsMode,
    proto: Proto,
    rd: bool,
}

impl Variant {
    const fn new(case: Case, edns: EdnsMode, proto: Proto) -> Self {
        Variant {
            class: DNSClass::IN,
            case,
            edns,
            proto,
            rd: true,
        }
    }
}

/// The whole set: every name and type in lower case without EDNS; most types again in mixed
/// case with EDNS0 and in lower case with DO; over TCP a few types, zone transfers included;
/// and a handful of odd ones (classes other than IN, EDNS version 1, RD clear, a small buffer).
pub fn generate(cluster: &Cluster) -> Vec<Question> {
    use RecordType as T;
    let mut out = Vec::new();
    let mut push = |name: &str, shape: &'static str, qtype: RecordType, v: Variant| {
        out.push(Question {
            name: match v.case {
                Case::Lower => name.to_owned(),
                Case::Mixed => mixed(name),
            },
            lower: name.trim_end_matches('.').to_owned(),
            qtype,
            class: v.class,
            case: v.case,
            edns: v.edns,
            proto: v.proto,
            rd: v.rd,
            shape,
        });
    };
    let plain = Variant::new(Case::Lower, EdnsMode::None, Proto::Udp);
    let sets: [(Variant, &[RecordType]); 4] = [
        (plain, &ALL_TYPES),
        (
            Variant::new(Case::Mixed, EdnsMode::Edns0, Proto::Udp),
            &[T::A, T::AAAA, T::SRV, T::PTR, T::TXT, T::SOA, T::NS],
        ),
        (
            Variant::new(Case::Lower, EdnsMode::Do, Proto::Udp),
            &[T::A, T::AAAA, T::SRV, T::PTR, T::SOA, T::NS],
        ),
        (
            Variant::new(Case::Lower, EdnsMode::Do, Proto::Tcp),
            &[T::A, T::SRV, T::AXFR, T::IXFR],
        ),
    ];
    for (name, shape) in names(cluster) {
        for (variant, types) in &sets {
            for qtype in *types {
                push(&name, shape, *qtype, *variant);
            }
        }
    }

    for (name, shape) in [
        ("web.shop.svc.cluster.local.", "service/cluster-ip"),
        ("db.shop.svc.cluster.local.", "service/headless"),
        ("cluster.local.", "apex"),
        ("example.org.", "outside"),
    ] {
        for class in [DNSClass::CH, DNSClass::HS, DNSClass::ANY] {
            push(name, shape, T::A, Variant { class, ..plain });
        }
        let chaos_edns = Variant {
            class: DNSClass::CH,
            ..Variant::new(Case::Lower, EdnsMode::Edns0, Proto::Udp)
        };
        push(name, shape, T::TXT, chaos_edns);
        for proto in [Proto::Udp, Proto::Tcp] {
            let v1 = Variant::new(Case::Lower, EdnsMode::Version1, proto);
            push(name, shape, T::A, v1);
        }
        push(name, shape, T::A, Variant { rd: false, ..plain });
    }
    let chaos = Variant {
        class: DNSClass::CH,
        ..plain
    };
    push("version.bind.", "outside", T::TXT, chaos);

    // Answers larger than the buffer: truncated over UDP, whole over TCP.
    for (name, shape) in [
        ("big.shop.svc.cluster.local.", "service/headless"),
        ("_http._tcp.big.shop.svc.cluster.local.", "port/headless"),
        ("big.example.org.", "outside"),
    ] {
        for qtype in [T::A, T::SRV] {
            push(
                name,
                shape,
                qtype,
                Variant::new(Case::Lower, EdnsMode::Small, Proto::Udp),
            );
            for edns in [EdnsMode::None, EdnsMode::Small] {
                push(
                    name,
                    shape,
                    qtype,
                    Variant::new(Case::Lower, edns, Proto::Tcp),
                );
            }
        }
    }
    out
}
