//! Questions to answers: a pure function over the [`Index`].

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use svcplane_model::ObjectKey;
use svcplane_model::dns::service_fqdn;

use crate::index::{Index, ready_endpoints};
use crate::name::{QueryName, in_zone, parse};
use crate::zone::{ServiceKind, ZonePort, ZoneService};

/// TTL of `dns-version.<zone>`, fixed by the specification.
const DNS_VERSION_TTL: u32 = 28_800;
/// The version of the Kubernetes DNS specification served.
const DNS_VERSION: &str = "1.1.0";
/// How many ExternalName CNAMEs inside the zone are followed before giving up.
const MAX_CNAME_CHAIN: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Ptr,
    Txt,
    Cname,
    Soa,
    Ns,
    Axfr,
    Ixfr,
    /// Any other type, ANY included: such names may exist, but have no records of it.
    Other(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
    ServFail,
    Refused,
}

/// `--pods`: whether and how `<dashed-ip>.<ns>.pod.<zone>` names answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodMode {
    Disabled,
    /// Any well-formed name answers with its address (kubeadm's default).
    Insecure,
    /// Only names of a pod that has that IP in that namespace.
    Verified,
}

/// What answers depend on besides the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Lower-case, without a trailing dot, e.g. `cluster.local`.
    pub zone: String,
    pub ttl: u32,
    pub pods: PodMode,
    /// The Service whose cluster IPs are the zone's name servers (the apex NS and its glue).
    pub nameserver: ObjectKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Cname(String),
    Txt(String),
    Ns(String),
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        refresh: u32,
        retry: u32,
        expire: u32,
        minimum: u32,
    },
}

/// One resource record; names are absolute (trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: Rdata,
}

/// The answer to one question, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: Rcode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The zone SOA for the authority section (negative answers).
    pub authority: Option<Record>,
    /// Set on everything the cluster zone answers.
    pub authoritative: bool,
    /// Not a cluster name: the server forwards the question upstream as it is.
    pub forward: bool,
    /// An ExternalName outside the zone: the server resolves this name upstream (same type)
    /// and appends what it gets to `answers`, which already hold the CNAME.
    pub chase: Option<String>,
}

enum Lookup {
    Records(Vec<Record>, Vec<Record>),
    NoData,
    NxDomain,
    /// CNAME records so far, and the out-of-zone target still to resolve.
    Chase(Vec<Record>, String),
}

/// Answers `qname`/`qtype` from `index`. `qname` is as the client sent it; owner names in the
/// answer keep its letter case.
pub fn answer(index: &Index, config: &Config, qname: &str, qtype: QType) -> Answer {
    answer_lower(index, config, qname, &qname.to_ascii_lowercase(), qtype)
}

/// [`answer`] with `qname` already in lower case as `lower` (the server has it).
pub fn answer_lower(
    index: &Index,
    config: &Config,
    qname: &str,
    lower: &str,
    qtype: QType,
) -> Answer {
    let owner = absolute(qname);
    let name = parse(lower, &config.zone);
    if let Some(zone) = reverse_zone(lower) {
        // The reverse zones, as kubeadm's Corefile serves them from the kubernetes plugin:
        // SOA and NS at the apexes, SOA on any name below (NODATA), AXFR refused; PTR of a
        // cluster address answered; everything else falls through to the forwarder.
        let apex = lower.trim_end_matches('.') == zone;
        match qtype {
            QType::Axfr | QType::Ixfr => return Answer::empty(Rcode::Refused),
            QType::Soa if apex => {
                return authoritative(vec![soa_for(index, config, zone)], vec![]);
            }
            QType::Soa => {
                return Answer {
                    authority: Some(soa_for(index, config, zone)),
                    ..authoritative(vec![], vec![])
                };
            }
            QType::Ns if apex => {
                let Lookup::Records(ns, glue) = nameservers_for(index, config, zone) else {
                    return forward();
                };
                return authoritative(ns, glue);
            }
            QType::Txt if lower.trim_end_matches('.') == format!("dns-version.{zone}") => {
                return authoritative(vec![dns_version(&owner)], vec![]);
            }
            // As CoreDNS: TXT is looked up as a name and falls through to the forwarder.
            QType::Txt => {}
            _ if apex => {
                return Answer {
                    authority: Some(soa_for(index, config, zone)),
                    ..authoritative(vec![], vec![])
                };
            }
            _ => {}
        }
    }
    match name {
        QueryName::Outside => return forward(),
        QueryName::Reverse(ip) => return reverse(index, config, &owner, ip, qtype),
        _ => {}
    }
    if matches!(qtype, QType::Axfr | QType::Ixfr) {
        return Answer::empty(Rcode::Refused);
    }
    let lookup = lookup(index, config, &owner, &name, qtype, 0);
    let soa = || Some(soa_record(index, config));
    let (rcode, answers, additionals, authority, chase) = match lookup {
        Lookup::Records(a, b) if !a.is_empty() => (Rcode::NoError, a, b, None, None),
        Lookup::Records(..) | Lookup::NoData => (Rcode::NoError, vec![], vec![], soa(), None),
        Lookup::Chase(a, target) => (Rcode::NoError, a, vec![], None, Some(target)),
        // Until the first sync a missing name may only be missing from our view.
        Lookup::NxDomain if !index.is_synced() => (Rcode::ServFail, vec![], vec![], soa(), None),
        Lookup::NxDomain => (Rcode::NxDomain, vec![], vec![], soa(), None),
    };
    Answer {
        rcode,
        answers,
        additionals,
        authority,
        authoritative: true,
        forward: false,
        chase,
    }
}

impl Answer {
    fn empty(rcode: Rcode) -> Self {
        Answer {
            rcode,
            answers: vec![],
            additionals: vec![],
            authority: None,
            authoritative: false,
            forward: false,
            chase: None,
        }
    }
}

/// A positive authoritative answer.
fn authoritative(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
    Answer {
        answers,
        additionals,
        authoritative: true,
        ..Answer::empty(Rcode::NoError)
    }
}

/// `in-addr.arpa` or `ip6.arpa` when `name` (lower-case) is that zone or below it.
pub(crate) fn reverse_zone(name: &str) -> Option<&'static str> {
    ["in-addr.arpa", "ip6.arpa"]
        .into_iter()
        .find(|zone| in_zone(name, zone))
}

fn forward() -> Answer {
    Answer {
        forward: true,
        ..Answer::empty(Rcode::NoError)
    }
}

fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn fqdn(key: &ObjectKey, zone: &str) -> String {
    format!("{}.", service_fqdn(key, zone))
}

fn soa_record(index: &Index, config: &Config) -> Record {
    soa_for(index, config, &config.zone)
}

/// The SOA of `zone` (the cluster zone or a reverse zone), as CoreDNS writes it.
fn soa_for(index: &Index, config: &Config, zone: &str) -> Record {
    Record {
        name: format!("{zone}."),
        ttl: config.ttl,
        data: Rdata::Soa {
            mname: format!("ns.dns.{zone}."),
            rname: format!("hostmaster.{zone}."),
            serial: index.serial(),
            refresh: 7200,
            retry: 1800,
            expire: 86_400,
            minimum: config.ttl,
        },
    }
}

fn dns_version(owner: &str) -> Record {
    Record {
        name: owner.to_owned(),
        ttl: DNS_VERSION_TTL,
        data: Rdata::Txt(DNS_VERSION.to_owned()),
    }
}

fn address(owner: &str, ttl: u32, ip: IpAddr) -> Record {
    Record {
        name: owner.to_owned(),
        ttl,
        data: match ip {
            IpAddr::V4(v4) => Rdata::A(v4),
            IpAddr::V6(v6) => Rdata::Aaaa(v6),
        },
    }
}

/// A or AAAA records of the family `qtype` asks for; NODATA when the name has none of it.
fn addresses(owner: &str, ttl: u32, ips: &[IpAddr], qtype: QType) -> Lookup {
    let want_v4 = qtype == QType::A;
    let mut seen = HashSet::new();
    let records: Vec<Record> = ips
        .iter()
        .filter(|ip| ip.is_ipv4() == want_v4 && seen.insert(**ip))
        .map(|ip| address(owner, ttl, *ip))
        .collect();
    if records.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Records(records, vec![])
    }
}

fn lookup(
    index: &Index,
    config: &Config,
    owner: &str,
    name: &QueryName<'_>,
    qtype: QType,
    depth: usize,
) -> Lookup {
    let ttl = config.ttl;
    match *name {
        QueryName::Apex => match qtype {
            QType::Soa => Lookup::Records(vec![soa_record(index, config)], vec![]),
            QType::Ns => nameservers(index, config),
            _ => Lookup::NoData,
        },
        QueryName::DnsVersion if qtype == QType::Txt => {
            Lookup::Records(vec![dns_version(owner)], vec![])
        }
        QueryName::DnsVersion | QueryName::SvcRoot | QueryName::PodRoot => Lookup::NoData,
        // As CoreDNS: an existing namespace is NODATA, anything else does not exist.
        QueryName::PodNamespace(ns) if index.has_namespace(ns) => Lookup::NoData,
        QueryName::PodNamespace(_) => Lookup::NxDomain,
        QueryName::NameServer => match qtype {
            QType::A | QType::Aaaa => {
                let ips = nameserver_ips(index, config);
                addresses(owner, ttl, &ips, qtype)
            }
            _ => Lookup::NoData,
        },
        QueryName::Namespace(ns) if index.has_namespace(ns) => Lookup::NoData,
        QueryName::Namespace(_) | QueryName::Invalid => Lookup::NxDomain,
        QueryName::Pod { namespace, ip } => {
            let known = match config.pods {
                PodMode::Disabled => false,
                PodMode::Insecure => index.has_namespace(namespace),
                PodMode::Verified => ip.is_some_and(|ip| index.has_pod(namespace, ip)),
            };
            match ip {
                Some(ip) if known => match qtype {
                    QType::A | QType::Aaaa => addresses(owner, ttl, &[ip], qtype),
                    _ => Lookup::NoData,
                },
                _ => Lookup::NxDomain,
            }
        }
        QueryName::Service { namespace, service } => {
            let Some(svc) = index.service(namespace, service) else {
                return Lookup::NxDomain;
            };
            service_records(index, config, owner, svc, qtype, depth)
        }
        QueryName::Port {
            namespace,
            service,
            port,
            protocol,
        } => {
            let Some(svc) = index.service(namespace, service) else {
                return Lookup::NxDomain;
            };
            if port.is_empty() && protocol.is_empty() {
                // `_._.<svc>`: both labels match anything, port-less slices and ExternalName
                // Services included, so it answers as the Service's own name (CoreDNS).
                return service_records(index, config, owner, svc, qtype, depth);
            }
            port_records(index, config, owner, svc, port, protocol, qtype)
        }
        QueryName::Endpoint {
            namespace,
            service,
            endpoint,
        } => {
            let Some(svc) = index.service(namespace, service) else {
                return Lookup::NxDomain;
            };
            if svc.is_external_name() {
                return Lookup::NxDomain;
            }
            let ips: Vec<IpAddr> = index
                .endpoints(&svc.key)
                .into_iter()
                .flat_map(ready_endpoints)
                .filter(|e| e.label().eq_ignore_ascii_case(endpoint))
                .map(|e| e.ip)
                .collect();
            if ips.is_empty() {
                Lookup::NxDomain
            } else if matches!(qtype, QType::A | QType::Aaaa) {
                addresses(owner, ttl, &ips, qtype)
            } else if qtype == QType::Srv {
                // As CoreDNS: one SRV per port of the endpoint's slice, naming the endpoint.
                srv_headless(index, config, owner, svc, Wanted::Endpoint(endpoint))
            } else {
                Lookup::NoData
            }
        }
        QueryName::Reverse(_) | QueryName::Outside => Lookup::NxDomain,
    }
}

/// Ready endpoint addresses of a headless Service, deduplicated.
fn headless_ips(index: &Index, svc: &ZoneService) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    index
        .endpoints(&svc.key)
        .into_iter()
        .flat_map(ready_endpoints)
        .map(|e| e.ip)
        .filter(|ip| seen.insert(*ip))
        .collect()
}

fn service_records(
    index: &Index,
    config: &Config,
    owner: &str,
    svc: &ZoneService,
    qtype: QType,
    depth: usize,
) -> Lookup {
    let ttl = config.ttl;
    if svc.is_external_name() {
        return external_name(index, config, owner, svc, qtype, depth);
    }
    if svc.is_headless() {
        let ips = headless_ips(index, svc);
        if ips.is_empty() {
            // The specification: a headless Service with no ready endpoint does not exist.
            return Lookup::NxDomain;
        }
        return match qtype {
            QType::A | QType::Aaaa => addresses(owner, ttl, &ips, qtype),
            QType::Srv => srv_headless(index, config, owner, svc, Wanted::All),
            _ => Lookup::NoData,
        };
    }
    match qtype {
        QType::A | QType::Aaaa => addresses(owner, ttl, svc.cluster_ips(), qtype),
        QType::Srv => srv_cluster_ip(config, owner, svc, svc.ports.iter().collect()),
        _ => Lookup::NoData,
    }
}

fn port_records(
    index: &Index,
    config: &Config,
    owner: &str,
    svc: &ZoneService,
    port: &str,
    protocol: &str,
    qtype: QType,
) -> Lookup {
    if svc.is_external_name() {
        return Lookup::NxDomain;
    }
    let matching: Vec<_> = svc
        .ports
        .iter()
        .filter(|p| label_matches(port, &p.name) && label_matches(protocol, p.protocol.as_str()))
        .collect();
    if matching.is_empty() {
        return Lookup::NxDomain;
    }
    if svc.is_headless() {
        // As CoreDNS: only endpoints whose slice has the port.
        let ips = headless_port_ips(index, svc, port, protocol);
        if ips.is_empty() {
            return Lookup::NxDomain;
        }
        return match qtype {
            QType::Srv => srv_headless(index, config, owner, svc, Wanted::Port(port, protocol)),
            QType::A | QType::Aaaa => addresses(owner, config.ttl, &ips, qtype),
            _ => Lookup::NoData,
        };
    }
    match qtype {
        QType::Srv => srv_cluster_ip(config, owner, svc, matching),
        QType::A | QType::Aaaa => addresses(owner, config.ttl, svc.cluster_ips(), qtype),
        _ => Lookup::NoData,
    }
}

/// A port or protocol label of a question against a Service's: an empty label (`_` alone)
/// matches any, as in CoreDNS.
fn label_matches(label: &str, value: &str) -> bool {
    label.is_empty() || label.eq_ignore_ascii_case(value)
}

/// Ready endpoint addresses of a headless Service's slices that have the port, deduplicated.
fn headless_port_ips(index: &Index, svc: &ZoneService, port: &str, protocol: &str) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    index
        .endpoints(&svc.key)
        .into_iter()
        .flat_map(|e| e.slices.iter())
        .filter(|slice| {
            slice.ports.iter().any(|p| {
                label_matches(port, &p.name) && label_matches(protocol, p.protocol.as_str())
            })
        })
        .flat_map(|slice| slice.ready.iter())
        .map(|e| e.ip)
        .filter(|ip| seen.insert(*ip))
        .collect()
}

/// Which SRV records of a headless Service: all, one port's, or one endpoint's.
#[derive(Clone, Copy)]
enum Wanted<'a> {
    All,
    Port(&'a str, &'a str),
    Endpoint(&'a str),
}

/// Weight shared out as CoreDNS does: 100 split over the candidates, at least 1.
fn weight(candidates: usize) -> u16 {
    (100 / candidates.max(1)).max(1) as u16
}

fn srv_cluster_ip(
    config: &Config,
    owner: &str,
    svc: &ZoneService,
    ports: Vec<&ZonePort>,
) -> Lookup {
    let target = fqdn(&svc.key, &config.zone);
    let ips = svc.cluster_ips();
    if ports.is_empty() || ips.is_empty() {
        return Lookup::NoData;
    }
    let w = weight(ports.len() * ips.len());
    let mut seen = HashSet::new();
    let answers = ports
        .iter()
        .filter(|p| seen.insert(p.port))
        .map(|p| Record {
            name: owner.to_owned(),
            ttl: config.ttl,
            data: Rdata::Srv {
                priority: 0,
                weight: w,
                port: p.port,
                target: target.clone(),
            },
        })
        .collect();
    let additionals = ips
        .iter()
        .map(|ip| address(&target, config.ttl, *ip))
        .collect();
    Lookup::Records(answers, additionals)
}

/// SRV records of a headless Service: one per ready endpoint and slice port (only the port
/// asked for, or only the endpoint asked for, as `wanted` says), targeting the endpoint's own
/// name.
fn srv_headless(
    index: &Index,
    config: &Config,
    owner: &str,
    svc: &ZoneService,
    wanted: Wanted<'_>,
) -> Lookup {
    let mut candidates = Vec::new();
    for slice in index
        .endpoints(&svc.key)
        .into_iter()
        .flat_map(|e| e.slices.iter())
    {
        let ports = slice.ports.iter().filter(|p| match wanted {
            Wanted::Port(name, proto) => {
                label_matches(name, &p.name) && label_matches(proto, p.protocol.as_str())
            }
            Wanted::All | Wanted::Endpoint(_) => true,
        });
        for p in ports {
            for endpoint in slice.ready.iter() {
                if let Wanted::Endpoint(label) = wanted
                    && !endpoint.label().eq_ignore_ascii_case(label)
                {
                    continue;
                }
                let target = format!("{}.{}", endpoint.label(), fqdn(&svc.key, &config.zone));
                candidates.push((target, p.port, endpoint.ip));
            }
        }
    }
    if candidates.is_empty() {
        return Lookup::NoData;
    }
    let w = weight(candidates.len());
    let (mut seen_srv, mut seen_glue) = (HashSet::new(), HashSet::new());
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (target, number, ip) in candidates {
        if seen_glue.insert((target.clone(), ip)) {
            additionals.push(address(&target, config.ttl, ip));
        }
        if seen_srv.insert((target.clone(), number)) {
            answers.push(Record {
                name: owner.to_owned(),
                ttl: config.ttl,
                data: Rdata::Srv {
                    priority: 0,
                    weight: w,
                    port: number,
                    target,
                },
            });
        }
    }
    Lookup::Records(answers, additionals)
}

fn external_name(
    index: &Index,
    config: &Config,
    owner: &str,
    svc: &ZoneService,
    qtype: QType,
    depth: usize,
) -> Lookup {
    let ServiceKind::ExternalName(Some(target)) = &svc.kind else {
        return Lookup::NxDomain;
    };
    // An address is no name to point at; CoreDNS treats such a Service as absent.
    if target.parse::<IpAddr>().is_ok() {
        return Lookup::NxDomain;
    }
    let target = absolute(&target.to_ascii_lowercase());
    let cname = Record {
        name: owner.to_owned(),
        ttl: config.ttl,
        data: Rdata::Cname(target.clone()),
    };
    match qtype {
        QType::Cname => Lookup::Records(vec![cname], vec![]),
        QType::A | QType::Aaaa => {
            let owner_lower = owner.to_ascii_lowercase();
            // Pointing at itself or below itself would loop.
            if target == owner_lower || target.ends_with(&format!(".{owner_lower}")) {
                return Lookup::NoData;
            }
            match parse(&target, &config.zone) {
                QueryName::Outside | QueryName::Reverse(_) => {
                    Lookup::Chase(vec![cname], target.trim_end_matches('.').to_owned())
                }
                _ if depth >= MAX_CNAME_CHAIN => Lookup::NoData,
                inner => match lookup(index, config, &target, &inner, qtype, depth + 1) {
                    Lookup::Records(mut rest, additionals) if !rest.is_empty() => {
                        rest.insert(0, cname);
                        Lookup::Records(rest, additionals)
                    }
                    Lookup::Chase(mut rest, next) => {
                        rest.insert(0, cname);
                        Lookup::Chase(rest, next)
                    }
                    // An in-zone target with nothing to give: NODATA, without the CNAME.
                    _ => Lookup::NoData,
                },
            }
        }
        _ => Lookup::NoData,
    }
}

/// The cluster IPs of the name-server Service (none when it does not exist).
fn nameserver_ips(index: &Index, config: &Config) -> Vec<IpAddr> {
    let key = &config.nameserver;
    index
        .service(&key.namespace, &key.name)
        .map(|svc| svc.cluster_ips().to_vec())
        .unwrap_or_default()
}

/// The apex NS, as CoreDNS in a cluster answers it: the name-server Service's name in the
/// cluster zone, with its cluster IPs as glue; without that Service, `ns.dns.<zone>` (the name
/// the SOA gives) and no glue.
fn nameservers(index: &Index, config: &Config) -> Lookup {
    nameservers_for(index, config, &config.zone)
}

fn nameservers_for(index: &Index, config: &Config, zone: &str) -> Lookup {
    let key = &config.nameserver;
    let ips = nameserver_ips(index, config);
    let name = if ips.is_empty() && index.service(&key.namespace, &key.name).is_none() {
        format!("ns.dns.{zone}.")
    } else {
        fqdn(key, &config.zone)
    };
    let ns = Record {
        name: format!("{zone}."),
        ttl: config.ttl,
        data: Rdata::Ns(name.clone()),
    };
    let glue = ips
        .into_iter()
        .map(|ip| address(&name, config.ttl, ip))
        .collect();
    Lookup::Records(vec![ns], glue)
}

fn reverse(index: &Index, config: &Config, owner: &str, ip: IpAddr, qtype: QType) -> Answer {
    if qtype != QType::Ptr {
        return forward();
    }
    let targets: Vec<String> = if let Some(key) = index.service_of_cluster_ip(&ip) {
        vec![fqdn(key, &config.zone)]
    } else {
        let mut seen = HashSet::new();
        // The label is the endpoint's within each owning Service (hostnames may differ).
        index
            .owners_of_endpoint_ip(&ip)
            .flat_map(|key| {
                index
                    .endpoints(key)
                    .into_iter()
                    .flat_map(ready_endpoints)
                    .filter(|e| e.ip == ip)
                    .map(move |e| format!("{}.{}", e.label(), fqdn(key, &config.zone)))
            })
            .filter(|t| seen.insert(t.clone()))
            .collect()
    };
    if targets.is_empty() {
        // Not a cluster address: the rest of the world may know it.
        return forward();
    }
    Answer {
        answers: targets
            .into_iter()
            .map(|t| Record {
                name: owner.to_owned(),
                ttl: config.ttl,
                data: Rdata::Ptr(t),
            })
            .collect(),
        authoritative: true,
        ..Answer::empty(Rcode::NoError)
    }
}

#[cfg(test)]
mod tests;
