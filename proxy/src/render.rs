//! A [`Plan`] as one nftables transaction (text for `nft -f -`, as upstream's knftables writes
//! it). A full sync replaces the whole table in one transaction: the old rules keep working
//! until the new ones take their place, so a proxy restart or a sync never leaves a gap.
//!
//! Layout (one table per family, `ip svcplane` / `ip6 svcplane`):
//! - base chains on the nat hooks (`prerouting`/`output` at dstnat, `postrouting` at srcnat) and
//!   filter hooks (`input`/`forward`/`output` at priority 0), as upstream promises other
//!   components;
//! - `services`: marks off-cluster traffic to ClusterIPs for masquerading, then one rule per
//!   (kind, endpoint count N) that DNATs through `numgen random mod N` into a map
//!   `address . protocol . port . bucket → endpoint . port`;
//! - filter chains reject destinations without endpoints (or drop them under Local policies),
//!   reject known ClusterIPs on unknown ports, drop unallocated ServiceCIDR addresses;
//! - `masquerading`: connections carrying the mark, and hairpin connections, leave with the
//!   node's address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use svcplane_model::{AddressType, Protocol};

use crate::plan::{Plan, Refuse, Target};

/// The table's name in both families.
pub const TABLE: &str = "svcplane";

/// Elements per `add element` statement: keeps lines a manageable size.
const CHUNK: usize = 1000;

/// nft words for one family.
struct Words {
    family: &'static str,
    addr: &'static str,
    addr_type: &'static str,
    loopback: &'static str,
}

fn words(family: AddressType) -> Words {
    match family {
        AddressType::V4 => Words {
            family: "ip",
            addr: "ip",
            addr_type: "ipv4_addr",
            loopback: "127.0.0.0/8",
        },
        AddressType::V6 => Words {
            family: "ip6",
            addr: "ip6",
            addr_type: "ipv6_addr",
            loopback: "::1",
        },
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn ip(a: &IpAddr) -> String {
    a.to_string()
}

/// Statements that remove this program's table of `family`, whether or not it exists.
pub fn delete_table(family: AddressType, out: &mut String) {
    let w = words(family);
    let _ = writeln!(out, "add table {} {TABLE}", w.family);
    let _ = writeln!(out, "delete table {} {TABLE}", w.family);
}

/// Writes `items` as `add element` statements of `set`, `CHUNK` at a time.
fn elements(out: &mut String, family: &str, set: &str, items: impl IntoIterator<Item = String>) {
    let items: Vec<String> = items.into_iter().collect();
    for chunk in items.chunks(CHUNK) {
        let _ = writeln!(
            out,
            "add element {family} {TABLE} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
}

/// Dispatch groups: endpoint count → (key, endpoints).
fn by_count<K: Clone>(
    entries: &BTreeMap<K, Vec<Target>>,
) -> BTreeMap<usize, Vec<(K, &Vec<Target>)>> {
    let mut groups: BTreeMap<usize, Vec<(K, &Vec<Target>)>> = BTreeMap::new();
    for (k, targets) in entries {
        groups
            .entry(targets.len())
            .or_default()
            .push((k.clone(), targets));
    }
    groups
}

fn verdict(refuse: Refuse) -> &'static str {
    match refuse {
        Refuse::Reject => "goto reject-chain",
        Refuse::Drop => "drop",
    }
}

/// The full-sync transaction for one family: the table is replaced as a whole.
pub fn full(plan: &Plan, out: &mut String) {
    let Some(family) = plan.family else {
        return;
    };
    let w = words(family);
    let (f, a, t) = (w.family, w.addr, w.addr_type);
    let mark = plan.mark;
    delete_table(family, out);
    let _ = writeln!(
        out,
        "add table {f} {TABLE} {{ comment \"rules for svcplane-proxy\"; }}"
    );

    // Base chains. Numeric priorities: nft before 1.0.7 rejects `dstnat` on the output hook.
    for (name, kind, hook, priority) in [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("filter-input", "filter", "input", 0),
        ("filter-forward", "filter", "forward", 0),
        ("filter-output", "filter", "output", 0),
    ] {
        let _ = writeln!(
            out,
            "add chain {f} {TABLE} {name} {{ type {kind} hook {hook} priority {priority}; policy accept; }}"
        );
    }
    for name in [
        "services",
        "nodeports",
        "masquerading",
        "reject-chain",
        "service-endpoints-check",
        "nodeport-endpoints-check",
        "cluster-ips-check",
        "firewall-check",
    ] {
        let _ = writeln!(out, "add chain {f} {TABLE} {name}");
    }

    // Sets and maps.
    let vip = format!("{t} . inet_proto . inet_service");
    let _ = writeln!(
        out,
        "add set {f} {TABLE} cluster-ips {{ type {t}; comment \"ClusterIPs served\"; }}"
    );
    let _ = writeln!(
        out,
        "add map {f} {TABLE} no-endpoint-services {{ type {vip} : verdict; comment \"destinations without usable endpoints\"; }}"
    );
    let _ = writeln!(
        out,
        "add map {f} {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict; comment \"NodePorts without usable endpoints\"; }}"
    );
    let _ = writeln!(
        out,
        "add set {f} {TABLE} hairpin-connections {{ type {t} . {t} . inet_proto . inet_service; comment \"a pod reaching itself through a Service\"; }}"
    );
    let _ = writeln!(
        out,
        "add set {f} {TABLE} firewall-ips {{ type {vip}; comment \"LoadBalancer IPs with source ranges\"; }}"
    );
    let _ = writeln!(
        out,
        "add set {f} {TABLE} firewall-allow {{ type {vip} . {t}; flags interval; comment \"sources allowed per LoadBalancer IP\"; }}"
    );
    if !plan.service_cidrs.is_empty() {
        let _ = writeln!(
            out,
            "add set {f} {TABLE} service-cidrs {{ type {t}; flags interval; comment \"ServiceCIDRs\"; }}"
        );
    }
    if plan.nodeport_ips.is_some() {
        let _ = writeln!(
            out,
            "add set {f} {TABLE} nodeport-ips {{ type {t}; comment \"addresses NodePorts answer on\"; }}"
        );
    }
    // Dispatch groups: (set kind, key expression, destinations by endpoint count).
    let vip_key = format!("{a} daddr . meta l4proto . th dport");
    let port_key = "meta l4proto . th dport".to_owned();
    let vip_groups = [
        ("cluster", by_count(&plan.cluster)),
        ("external", by_count(&plan.external)),
        ("external-short", by_count(&plan.external_short)),
        ("external-local", by_count(&plan.external_local)),
    ];
    let port_groups = [
        ("nodeport", by_count(&plan.nodeports)),
        ("nodeport-short", by_count(&plan.nodeports_short)),
        ("nodeport-local", by_count(&plan.nodeports_local)),
    ];
    for (kind, groups) in &vip_groups {
        for n in groups.keys() {
            let _ = writeln!(out, "add set {f} {TABLE} {kind}-n{n} {{ type {vip}; }}");
            let _ = writeln!(
                out,
                "add map {f} {TABLE} {kind}-n{n}-eps {{ typeof {vip_key} . numgen random mod {n} : {a} daddr . th dport; }}"
            );
        }
    }
    for (kind, groups) in &port_groups {
        for n in groups.keys() {
            let _ = writeln!(
                out,
                "add set {f} {TABLE} {kind}-n{n} {{ type inet_proto . inet_service; }}"
            );
            let _ = writeln!(
                out,
                "add map {f} {TABLE} {kind}-n{n}-eps {{ typeof {port_key} . numgen random mod {n} : {a} daddr . th dport; }}"
            );
        }
    }

    // Rules.
    let rule = |out: &mut String, chain: &str, text: &str| {
        let _ = writeln!(out, "add rule {f} {TABLE} {chain} {text}");
    };
    rule(
        out,
        "filter-prerouting-pre-dnat",
        "ct state new jump firewall-check",
    );
    rule(
        out,
        "filter-output-pre-dnat",
        "ct state new jump firewall-check",
    );
    rule(out, "nat-prerouting", "jump services");
    rule(out, "nat-output", "jump services");
    rule(out, "nat-postrouting", "jump masquerading");
    rule(
        out,
        "filter-input",
        "ct state new jump nodeport-endpoints-check",
    );
    rule(
        out,
        "filter-input",
        "ct state new jump service-endpoints-check",
    );
    for chain in ["filter-forward", "filter-output"] {
        rule(out, chain, "ct state new jump service-endpoints-check");
        rule(out, chain, "ct state new jump cluster-ips-check");
    }
    rule(out, "reject-chain", "reject");
    rule(
        out,
        "firewall-check",
        &format!("{vip_key} @firewall-ips {vip_key} . {a} saddr != @firewall-allow drop"),
    );
    rule(
        out,
        "service-endpoints-check",
        &format!("{vip_key} vmap @no-endpoint-services"),
    );
    let nodeport_match = match &plan.nodeport_ips {
        Some(_) => format!("{a} daddr @nodeport-ips"),
        None => format!("fib daddr type local {a} daddr != {}", w.loopback),
    };
    rule(
        out,
        "nodeport-endpoints-check",
        &format!("{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    rule(
        out,
        "cluster-ips-check",
        &format!("{a} daddr @cluster-ips reject"),
    );
    if !plan.service_cidrs.is_empty() {
        rule(
            out,
            "cluster-ips-check",
            &format!("{a} daddr @service-cidrs drop"),
        );
    }

    // Masquerading: off-cluster sources to ClusterIPs (or everyone with --masquerade-all).
    let set_mark = format!("meta mark set meta mark | {mark:#x}");
    if plan.masquerade_all {
        rule(
            out,
            "services",
            &format!("{a} daddr @cluster-ips {set_mark}"),
        );
    } else if !plan.cluster_cidrs.is_empty() {
        let cidrs: Vec<String> = plan.cluster_cidrs.iter().map(ToString::to_string).collect();
        rule(
            out,
            "services",
            &format!(
                "{a} daddr @cluster-ips {a} saddr != {{ {} }} {set_mark}",
                cidrs.join(", ")
            ),
        );
    }
    // Dispatch rules, in this order: Cluster-policy destinations; then, for
    // externalTrafficPolicy Local, the short cut that pods (by --cluster-cidr, not masqueraded)
    // and the node itself (masqueraded) take to every endpoint, since there is no client address
    // to keep; then everyone else to this node's endpoints, the client's address kept.
    let pods = (!plan.cluster_cidrs.is_empty()).then(|| {
        let cidrs: Vec<String> = plan.cluster_cidrs.iter().map(ToString::to_string).collect();
        format!("{a} saddr {{ {} }} ", cidrs.join(", "))
    });
    let host = "fib saddr type local ".to_owned();
    // (kind, source match, masquerade?)
    let mut patterns: Vec<(&str, String, bool)> = vec![
        ("cluster", String::new(), false),
        ("external", String::new(), true),
    ];
    let mut port_patterns: Vec<(&str, String, bool)> = vec![("nodeport", String::new(), true)];
    if let Some(pods) = &pods {
        patterns.push(("external-short", pods.clone(), false));
        port_patterns.push(("nodeport-short", pods.clone(), false));
    }
    patterns.push(("external-short", host.clone(), true));
    port_patterns.push(("nodeport-short", host, true));
    patterns.push(("external-local", String::new(), false));
    port_patterns.push(("nodeport-local", String::new(), false));
    let dispatch = |out: &mut String,
                    chain: &str,
                    key: &str,
                    kind: &str,
                    n: usize,
                    source: &str,
                    masquerade: bool| {
        let mark = if masquerade {
            format!("{set_mark} ")
        } else {
            String::new()
        };
        rule(
            out,
            chain,
            &format!(
                "{source}{key} @{kind}-n{n} {mark}dnat {a} to {key} . numgen random mod {n} map @{kind}-n{n}-eps"
            ),
        );
    };
    for (kind, source, masquerade) in &patterns {
        let groups = vip_groups.iter().find(|(k, _)| k == kind).map(|(_, g)| g);
        for n in groups.into_iter().flat_map(BTreeMap::keys) {
            dispatch(out, "services", &vip_key, kind, *n, source, *masquerade);
        }
    }
    if port_groups.iter().any(|(_, g)| !g.is_empty()) {
        rule(out, "services", &format!("{nodeport_match} jump nodeports"));
    }
    for (kind, source, masquerade) in &port_patterns {
        let groups = port_groups.iter().find(|(k, _)| k == kind).map(|(_, g)| g);
        for n in groups.into_iter().flat_map(BTreeMap::keys) {
            dispatch(out, "nodeports", &port_key, kind, *n, source, *masquerade);
        }
    }
    rule(
        out,
        "masquerading",
        &format!(
            "meta mark & {mark:#x} != 0 meta mark set meta mark ^ {mark:#x} masquerade fully-random"
        ),
    );
    rule(
        out,
        "masquerading",
        &format!(
            "ct status dnat {a} saddr . {a} daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random"
        ),
    );

    // Elements.
    let target = |(ip_, port): &Target| format!("{} . {port}", ip(ip_));
    elements(out, f, "cluster-ips", plan.cluster_ips.iter().map(ip));
    elements(
        out,
        f,
        "firewall-ips",
        plan.firewall
            .keys()
            .map(|(addr, p, port)| format!("{} . {} . {port}", ip(addr), proto(*p))),
    );
    elements(
        out,
        f,
        "firewall-allow",
        plan.firewall.iter().flat_map(|((addr, p, port), ranges)| {
            ranges
                .iter()
                .map(move |r| format!("{} . {} . {port} . {r}", ip(addr), proto(*p)))
        }),
    );
    elements(
        out,
        f,
        "service-cidrs",
        plan.service_cidrs.iter().map(ToString::to_string),
    );
    if let Some(ips) = &plan.nodeport_ips {
        elements(out, f, "nodeport-ips", ips.iter().map(ip));
    }
    elements(
        out,
        f,
        "hairpin-connections",
        plan.hairpin
            .iter()
            .map(|(e, p, port)| format!("{} . {} . {} . {port}", ip(e), ip(e), proto(*p))),
    );
    elements(
        out,
        f,
        "no-endpoint-services",
        plan.refused
            .iter()
            .map(|((addr, p, port), (refuse, name))| {
                format!(
                    "{} . {} . {port} comment \"{name}\" : {}",
                    ip(addr),
                    proto(*p),
                    verdict(*refuse)
                )
            }),
    );
    elements(
        out,
        f,
        "no-endpoint-nodeports",
        plan.refused_nodeports
            .iter()
            .map(|((p, port), (refuse, name))| {
                format!(
                    "{} . {port} comment \"{name}\" : {}",
                    proto(*p),
                    verdict(*refuse)
                )
            }),
    );
    for (kind, groups) in &vip_groups {
        for (n, entries) in groups {
            elements(
                out,
                f,
                &format!("{kind}-n{n}"),
                entries
                    .iter()
                    .map(|((addr, p, port), _)| format!("{} . {} . {port}", ip(addr), proto(*p))),
            );
            elements(
                out,
                f,
                &format!("{kind}-n{n}-eps"),
                entries.iter().flat_map(|((addr, p, port), targets)| {
                    targets.iter().enumerate().map(move |(i, t)| {
                        format!(
                            "{} . {} . {port} . {i} : {}",
                            ip(addr),
                            proto(*p),
                            target(t)
                        )
                    })
                }),
            );
        }
    }
    for (kind, groups) in &port_groups {
        for (n, entries) in groups {
            elements(
                out,
                f,
                &format!("{kind}-n{n}"),
                entries
                    .iter()
                    .map(|((p, port), _)| format!("{} . {port}", proto(*p))),
            );
            elements(
                out,
                f,
                &format!("{kind}-n{n}-eps"),
                entries.iter().flat_map(|((p, port), targets)| {
                    targets
                        .iter()
                        .enumerate()
                        .map(move |(i, t)| format!("{} . {port} . {i} : {}", proto(*p), target(t)))
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests;
