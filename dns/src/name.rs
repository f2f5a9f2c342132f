//! Reading a question's name: which cluster object, if any, it asks about.

use std::net::IpAddr;

use svcplane_model::dns::{parse_dashed_ip, parse_reverse_name};

/// What a (lower-cased, absolute-or-not) name refers to, relative to the cluster zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryName<'a> {
    /// The zone apex.
    Apex,
    /// `dns-version.<zone>`.
    DnsVersion,
    /// `svc.<zone>`.
    SvcRoot,
    /// `pod.<zone>`.
    PodRoot,
    /// `<ns>.svc.<zone>`.
    Namespace(&'a str),
    /// `ns.dns.<zone>`: the name server the zone's SOA and NS name.
    NameServer,
    /// `<ns>.pod.<zone>`: a namespace under `pod`, no pod name.
    PodNamespace(&'a str),
    /// `<svc>.<ns>.svc.<zone>`.
    Service {
        namespace: &'a str,
        service: &'a str,
    },
    /// `<endpoint>.<svc>.<ns>.svc.<zone>`: a hostname or dashed IP of an endpoint.
    Endpoint {
        namespace: &'a str,
        service: &'a str,
        endpoint: &'a str,
    },
    /// `_<port>._<proto>.<svc>.<ns>.svc.<zone>`; the underscores are optional, as in CoreDNS.
    Port {
        namespace: &'a str,
        service: &'a str,
        port: &'a str,
        protocol: &'a str,
    },
    /// `<dashed-ip>.<ns>.pod.<zone>`; `ip` is `None` when the label is not an address.
    Pod {
        namespace: &'a str,
        ip: Option<IpAddr>,
    },
    /// Inside the zone but of no shape the specification defines.
    Invalid,
    /// A full reverse name (`in-addr.arpa` / `ip6.arpa`) of one address.
    Reverse(IpAddr),
    /// Outside the cluster zone and not a full reverse name: for the forwarder.
    Outside,
}

/// Classifies `name` (already lower-case; a trailing dot is ignored) against `zone` (lower-case,
/// no trailing dot).
pub fn parse<'a>(name: &'a str, zone: &str) -> QueryName<'a> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let rest = if name == zone {
        ""
    } else if let Some(prefix) = name.strip_suffix(zone).and_then(|p| p.strip_suffix('.')) {
        prefix
    } else {
        return match parse_reverse_name(name) {
            Some(ip) => QueryName::Reverse(ip),
            None => QueryName::Outside,
        };
    };
    if rest.is_empty() {
        return QueryName::Apex;
    }
    // Right to left: the kind, then namespace, then object, then port/endpoint labels.
    let labels: Vec<&str> = rest.rsplit('.').collect();
    match labels.as_slice() {
        ["dns-version"] => QueryName::DnsVersion,
        ["svc"] => QueryName::SvcRoot,
        ["pod"] => QueryName::PodRoot,
        ["dns", "ns"] => QueryName::NameServer,
        ["pod", ns] => QueryName::PodNamespace(ns),
        ["svc", ns] => QueryName::Namespace(ns),
        ["svc", ns, svc] => QueryName::Service {
            namespace: ns,
            service: svc,
        },
        ["svc", ns, svc, endpoint] => QueryName::Endpoint {
            namespace: ns,
            service: svc,
            endpoint,
        },
        ["svc", ns, svc, protocol, port] => QueryName::Port {
            namespace: ns,
            service: svc,
            port: port.strip_prefix('_').unwrap_or(port),
            protocol: protocol.strip_prefix('_').unwrap_or(protocol),
        },
        // Extra labels before a pod name are ignored, as CoreDNS does.
        ["pod", ns, pod, ..] if labels.len() <= 5 => QueryName::Pod {
            namespace: ns,
            ip: parse_dashed_ip(pod),
        },
        _ => QueryName::Invalid,
    }
}

#[cfg(test)]
mod tests;

/// Whether `name` is `zone` or below it; both lower case, with or without the final dot (`.`
/// or an empty zone is the root). Allocates nothing: it runs for every question.
pub(crate) fn in_zone(name: &str, zone: &str) -> bool {
    let zone = zone.trim_end_matches('.');
    if zone.is_empty() {
        return true;
    }
    let name = name.trim_end_matches('.');
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// A plugin's `fallthrough`: `None` never; `Some(empty)` for every name; else below its zones.
pub(crate) fn falls_through(fallthrough: &Option<Vec<String>>, name: &str) -> bool {
    fallthrough
        .as_ref()
        .is_some_and(|zones| zones.is_empty() || zones.iter().any(|z| in_zone(name, z)))
}
