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
    let groups = [
        ("cluster", by_count(&plan.cluster)),
        ("external", by_count(&plan.external)),
    ];
    let nodeport_groups = by_count(&plan.nodeports);
    let vip_key = format!("{a} daddr . meta l4proto . th dport");
    for (kind, groups) in &groups {
        for n in groups.keys() {
            let _ = writeln!(out, "add set {f} {TABLE} {kind}-n{n} {{ type {vip}; }}");
            let _ = writeln!(
                out,
                "add map {f} {TABLE} {kind}-n{n}-eps {{ typeof {vip_key} . numgen random mod {n} : {a} daddr . th dport; }}"
            );
        }
    }
    for n in nodeport_groups.keys() {
        let _ = writeln!(
            out,
            "add set {f} {TABLE} nodeport-n{n} {{ type inet_proto . inet_service; }}"
        );
        let _ = writeln!(
            out,
            "add map {f} {TABLE} nodeport-n{n}-eps {{ typeof meta l4proto . th dport . numgen random mod {n} : {a} daddr . th dport; }}"
        );
    }

    // Rules.
    let rule = |out: &mut String, chain: &str, text: &str| {
        let _ = writeln!(out, "add rule {f} {TABLE} {chain} {text}");
    };
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
    for (kind, groups) in &groups {
        // External destinations are always masqueraded (externalTrafficPolicy Cluster).
        let extra = if *kind == "external" {
            format!("{set_mark} ")
        } else {
            String::new()
        };
        for n in groups.keys() {
            rule(
                out,
                "services",
                &format!(
                    "{vip_key} @{kind}-n{n} {extra}dnat {a} to {vip_key} . numgen random mod {n} map @{kind}-n{n}-eps"
                ),
            );
        }
    }
    if !nodeport_groups.is_empty() {
        rule(out, "services", &format!("{nodeport_match} jump nodeports"));
        for n in nodeport_groups.keys() {
            rule(
                out,
                "nodeports",
                &format!(
                    "meta l4proto . th dport @nodeport-n{n} {set_mark} dnat {a} to meta l4proto . th dport . numgen random mod {n} map @nodeport-n{n}-eps"
                ),
            );
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
    for (kind, groups) in &groups {
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
    for (n, entries) in &nodeport_groups {
        elements(
            out,
            f,
            &format!("nodeport-n{n}"),
            entries
                .iter()
                .map(|((p, port), _)| format!("{} . {port}", proto(*p))),
        );
        elements(
            out,
            f,
            &format!("nodeport-n{n}-eps"),
            entries.iter().flat_map(|((p, port), targets)| {
                targets
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| format!("{} . {port} . {i} : {}", proto(*p), target(t)))
            }),
        );
    }
}

#[cfg(test)]
mod tests;
