//! A [`Plan`] as nftables content (text for `nft -f -`, as upstream's knftables writes it).
//!
//! A plan is cut into *entries*: the elements one destination puts into one set or map (a
//! ClusterIP in `cluster-ips`, a destination and its endpoint buckets in `cluster-n2-eps`, ...),
//! and *objects*: the few chains and sets that belong to one Service (session affinity). The
//! rest, the *skeleton*, is a handful of chains and rules that depend only on the flags and on
//! which dispatch groups exist. [`crate::table::Table`] keeps the entries of every Service and
//! writes either the whole table or only what changed.
//!
//! Layout (one table per family, `ip svcplane` / `ip6 svcplane`):
//! - base chains on the nat hooks (`prerouting`/`output` at dstnat, `postrouting` at srcnat) and
//!   filter hooks (`input`/`forward`/`output` at priority 0), as upstream promises other
//!   components;
//! - `services`: marks off-cluster traffic to ClusterIPs for masquerading, then one rule per
//!   (kind, endpoint count N) that DNATs through `numgen random mod N` into a map
//!   `address . protocol . port . bucket → endpoint . port`; destinations with ClientIP affinity
//!   go through a verdict map to a chain of their Service port instead;
//! - filter chains reject destinations without endpoints (or drop them under Local policies),
//!   reject known ClusterIPs on unknown ports, drop unallocated ServiceCIDR addresses;
//! - `masquerading`: connections carrying the mark, and hairpin connections, leave with the
//!   node's address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use svcplane_model::{AddressType, Protocol};

use crate::plan::{Affinity, Local, Plan, Refuse, Target};

/// The table's name in both families.
pub const TABLE: &str = "svcplane";

/// nft words for one family.
#[derive(Debug, Clone, Copy)]
pub struct Words {
    pub family: &'static str,
    pub addr: &'static str,
    pub addr_type: &'static str,
    pub loopback: &'static str,
}

pub fn words(family: AddressType) -> Words {
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

/// Statements that remove this program's table of `family`, whether or not it exists.
pub fn delete_table(family: AddressType, out: &mut String) {
    let w = words(family);
    let _ = writeln!(out, "add table {} {TABLE}", w.family);
    let _ = writeln!(out, "delete table {} {TABLE}", w.family);
}

/// The full-sync transaction of one whole plan (every Service at once): the table replaced.
pub fn full(plan: &Plan, out: &mut String) {
    let Some(family) = plan.family else {
        return;
    };
    let mut table = crate::table::Table::new(family);
    table.set_globals(plan);
    table.set(crate::table::GLOBAL_OWNER.clone(), fragment(plan));
    table.full(out);
}

/// Kinds of dispatch: which destinations, which endpoints, masqueraded or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// ClusterIPs.
    Cluster,
    /// External and LoadBalancer IPs, externalTrafficPolicy Cluster (masqueraded).
    External,
    /// externalTrafficPolicy Local from pods (unmasqueraded) and the node (masqueraded): every
    /// endpoint.
    ExternalShort,
    /// externalTrafficPolicy Local from elsewhere: this node's endpoints, the client kept.
    ExternalLocal,
    NodePort,
    NodePortShort,
    NodePortLocal,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Cluster,
        Kind::External,
        Kind::ExternalShort,
        Kind::ExternalLocal,
        Kind::NodePort,
        Kind::NodePortShort,
        Kind::NodePortLocal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::External => "external",
            Kind::ExternalShort => "external-short",
            Kind::ExternalLocal => "external-local",
            Kind::NodePort => "nodeport",
            Kind::NodePortShort => "nodeport-short",
            Kind::NodePortLocal => "nodeport-local",
        }
    }

    /// Keyed by protocol . port (NodePorts) rather than address . protocol . port.
    pub fn by_port(self) -> bool {
        matches!(
            self,
            Kind::NodePort | Kind::NodePortShort | Kind::NodePortLocal
        )
    }

    /// Which endpoints an affinity chain of this kind dispatches to (part of its name).
    fn endpoints_name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::ExternalLocal | Kind::NodePortLocal => "local",
            _ => "external",
        }
    }
}

/// A set or map of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetName {
    /// Declared by the skeleton, always present.
    Fixed(&'static str),
    /// Destinations of `kind` with `n` endpoints: `{kind}-n{n}`.
    Group(Kind, usize),
    /// Their endpoints by bucket: `{kind}-n{n}-eps`.
    GroupEps(Kind, usize),
    /// Destinations of `kind` with ClientIP affinity: `{kind}-affinity-keys` (a set, to match
    /// before marking) and `{kind}-affinity` (a verdict map to their chains).
    AffinityKeys(Kind),
    Affinity(Kind),
}

impl std::fmt::Display for SetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetName::Fixed(name) => f.write_str(name),
            SetName::Group(kind, n) => write!(f, "{}-n{n}", kind.name()),
            SetName::GroupEps(kind, n) => write!(f, "{}-n{n}-eps", kind.name()),
            SetName::AffinityKeys(kind) => write!(f, "{}-affinity-keys", kind.name()),
            SetName::Affinity(kind) => write!(f, "{}-affinity", kind.name()),
        }
    }
}

impl SetName {
    /// The declaration of a set that exists only while it holds something.
    pub fn declaration(self, w: Words) -> Option<String> {
        let (f, a, t) = (w.family, w.addr, w.addr_type);
        let vip = format!("{t} . inet_proto . inet_service");
        let port = "inet_proto . inet_service";
        let vip_key = format!("{a} daddr . meta l4proto . th dport");
        let port_key = "meta l4proto . th dport";
        Some(match self {
            SetName::Fixed(_) => return None,
            SetName::Group(kind, _) | SetName::AffinityKeys(kind) => {
                let key = if kind.by_port() { port } else { &vip };
                format!("add set {f} {TABLE} {self} {{ type {key}; }}")
            }
            SetName::GroupEps(kind, n) => {
                let key = if kind.by_port() { port_key } else { &vip_key };
                format!(
                    "add map {f} {TABLE} {self} {{ typeof {key} . numgen random mod {n} : {a} daddr . th dport; }}"
                )
            }
            SetName::Affinity(kind) => {
                let key = if kind.by_port() { port } else { &vip };
                format!("add map {f} {TABLE} {self} {{ type {key} : verdict; }}")
            }
        })
    }
}

/// The elements one destination puts into one set: (key, rest) pairs, `key` alone deletes the
/// element, `key` + `rest` adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry(pub Vec<(String, String)>);

impl Entry {
    fn one(key: String, rest: String) -> Self {
        Entry(vec![(key, rest)])
    }
}

/// A chain or set that belongs to one Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectName {
    Chain(String),
    Set(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The chain's rules.
    Chain(Vec<String>),
    /// The set's declaration (inside the braces).
    Set(String),
}

/// What one owner (a Service, or the flags) puts into the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub entries: BTreeMap<(SetName, String), Entry>,
    pub objects: BTreeMap<ObjectName, Object>,
}

fn vip_text((addr, p, port): &(IpAddr, Protocol, u16)) -> String {
    format!("{addr} . {} . {port}", proto(*p))
}

fn port_text((p, port): &(Protocol, u16)) -> String {
    format!("{} . {port}", proto(*p))
}

fn target_text((addr, port): &Target) -> String {
    format!("{addr} . {port}")
}

fn verdict(refuse: Refuse) -> &'static str {
    match refuse {
        Refuse::Reject => "goto reject-chain",
        Refuse::Drop => "drop",
    }
}

/// nft identifiers take letters, digits and `/ . _ -`; anything else becomes `_`.
fn ident(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "/._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn fixed(out: &mut Fragment, set: &'static str, key: String, rest: String) {
    out.entries
        .insert((SetName::Fixed(set), key.clone()), Entry::one(key, rest));
}

/// Cuts a plan into entries and objects. Global parts (ServiceCIDRs, NodePort addresses) are
/// included; per-Service plans have none.
pub fn fragment(plan: &Plan) -> Fragment {
    let Some(family) = plan.family else {
        return Fragment::default();
    };
    let w = words(family);
    let mut out = Fragment::default();
    for ip in &plan.cluster_ips {
        fixed(&mut out, "cluster-ips", ip.to_string(), String::new());
    }
    for cidr in &plan.service_cidrs {
        fixed(&mut out, "service-cidrs", cidr.to_string(), String::new());
    }
    for ip in plan.nodeport_ips.iter().flatten() {
        fixed(&mut out, "nodeport-ips", ip.to_string(), String::new());
    }
    for (vip, ranges) in &plan.firewall {
        let key = vip_text(vip);
        fixed(&mut out, "firewall-ips", key.clone(), String::new());
        out.entries.insert(
            (SetName::Fixed("firewall-allow"), key.clone()),
            Entry(
                ranges
                    .iter()
                    .map(|r| (format!("{key} . {r}"), String::new()))
                    .collect(),
            ),
        );
    }
    for (e, p, port) in &plan.hairpin {
        let key = format!("{e} . {e} . {} . {port}", proto(*p));
        fixed(&mut out, "hairpin-connections", key, String::new());
    }
    for (vip, (refuse, name)) in &plan.refused {
        let rest = format!(" comment \"{name}\" : {}", verdict(*refuse));
        fixed(&mut out, "no-endpoint-services", vip_text(vip), rest);
    }
    for (port, (refuse, name)) in &plan.refused_nodeports {
        let rest = format!(" comment \"{name}\" : {}", verdict(*refuse));
        fixed(&mut out, "no-endpoint-nodeports", port_text(port), rest);
    }
    let vips = [
        (Kind::Cluster, &plan.cluster),
        (Kind::External, &plan.external),
        (Kind::ExternalShort, &plan.external_short),
        (Kind::ExternalLocal, &plan.external_local),
    ];
    for (kind, dests) in vips {
        for (vip, targets) in dests {
            let affinity = plan.affinity.get(vip);
            dispatch(&mut out, w, kind, vip_text(vip), targets, affinity);
        }
    }
    let ports = [
        (Kind::NodePort, &plan.nodeports),
        (Kind::NodePortShort, &plan.nodeports_short),
        (Kind::NodePortLocal, &plan.nodeports_local),
    ];
    for (kind, dests) in ports {
        for (port, targets) in dests {
            let affinity = plan.affinity_nodeports.get(port);
            dispatch(&mut out, w, kind, port_text(port), targets, affinity);
        }
    }
    out
}

/// One destination with endpoints: into its endpoint-count group, or (with ClientIP affinity)
/// into the affinity map, pointing at its Service port's chain.
fn dispatch(
    out: &mut Fragment,
    w: Words,
    kind: Kind,
    key: String,
    targets: &[Target],
    affinity: Option<&Affinity>,
) {
    let n = targets.len();
    let Some(affinity) = affinity else {
        out.entries.insert(
            (SetName::Group(kind, n), key.clone()),
            Entry::one(key.clone(), String::new()),
        );
        out.entries.insert(
            (SetName::GroupEps(kind, n), key.clone()),
            Entry(
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{key} . {i}"), format!(" : {}", target_text(t))))
                    .collect(),
            ),
        );
        return;
    };
    // As upstream: one client set per endpoint of the Service port, shared by every address
    // of the port, so a client sticks to its endpoint whichever address it uses.
    let a = w.addr;
    let port = ident(&affinity.port);
    let chain = format!("aff-{port}-{}", kind.endpoints_name());
    let mut rules = Vec::new();
    let mut buckets = Vec::new();
    for (i, (addr, tport)) in targets.iter().enumerate() {
        let ep = ident(&format!("{addr}-{tport}"));
        let clients = format!("aff-{port}-{ep}-{}s", affinity.timeout);
        let ep_chain = format!("aff-{port}-{ep}");
        let to = match addr {
            IpAddr::V4(_) => format!("{addr}:{tport}"),
            IpAddr::V6(_) => format!("[{addr}]:{tport}"),
        };
        out.objects.insert(
            ObjectName::Set(clients.clone()),
            Object::Set(format!(
                "type {}; flags dynamic,timeout; timeout {}s;",
                w.addr_type, affinity.timeout
            )),
        );
        out.objects.insert(
            ObjectName::Chain(ep_chain.clone()),
            Object::Chain(vec![
                format!("update @{clients} {{ {a} saddr }}"),
                format!("meta l4proto {} dnat {a} to {to}", proto(affinity.protocol)),
            ]),
        );
        rules.push(format!("{a} saddr @{clients} goto {ep_chain}"));
        buckets.push(format!("{i} : goto {ep_chain}"));
    }
    rules.push(format!(
        "numgen random mod {n} vmap {{ {} }}",
        buckets.join(", ")
    ));
    out.objects
        .insert(ObjectName::Chain(chain.clone()), Object::Chain(rules));
    out.entries.insert(
        (SetName::AffinityKeys(kind), key.clone()),
        Entry::one(key.clone(), String::new()),
    );
    out.entries.insert(
        (SetName::Affinity(kind), key.clone()),
        Entry::one(key, format!(" : goto {chain}")),
    );
}

/// What the skeleton depends on besides the dispatch groups present: the flags, and whether
/// NodePorts answer on listed addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globals {
    pub local: Local,
    pub masquerade_all: bool,
    pub mark: u32,
    pub nodeport_ips: bool,
    pub service_cidrs: bool,
}

impl Globals {
    pub fn of(plan: &Plan) -> Self {
        Globals {
            local: plan.local.clone(),
            masquerade_all: plan.masquerade_all,
            mark: plan.mark,
            nodeport_ips: plan.nodeport_ips.is_some(),
            service_cidrs: !plan.service_cidrs.is_empty(),
        }
    }
}

/// The table without its elements and per-Service objects: chains, their rules and the sets
/// they name. Small (a few dozen lines), compared whole on each sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skeleton {
    /// Chain name → its declaration's extra (hook spec) or empty.
    pub chains: Ordered<String>,
    /// Chain name → rules.
    pub rules: Ordered<Vec<String>>,
    /// Set name → its `add set`/`add map` statement.
    pub sets: Ordered<String>,
}

/// A small map that keeps the order of insertion, so the table reads in a sensible order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ordered<V>(Vec<(String, V)>);

impl<V> Ordered<V> {
    pub fn get(&self, name: &str) -> Option<&V> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn insert(&mut self, name: String, value: V) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn entry_or_default(&mut self, name: &str) -> &mut V
    where
        V: Default,
    {
        let i = match self.0.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.0.push((name.to_owned(), V::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// Base chains: (name, type, hook, priority). Numeric priorities: nft before 1.0.7 rejects
/// `dstnat` on the output hook.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
];

const CHAINS: [&str; 8] = [
    "services",
    "nodeports",
    "masquerading",
    "reject-chain",
    "service-endpoints-check",
    "nodeport-endpoints-check",
    "cluster-ips-check",
    "firewall-check",
];

fn group_chain(kind: Kind, n: usize) -> String {
    format!("{}-n{n}-dnat", kind.name())
}

/// The skeleton for `globals` and the sets that hold something (`present`).
pub fn skeleton(family: AddressType, globals: &Globals, present: &[SetName]) -> Skeleton {
    let w = words(family);
    let (f, a, t) = (w.family, w.addr, w.addr_type);
    let mark = globals.mark;
    let mut s = Skeleton::default();
    for (name, kind, hook, priority) in BASE_CHAINS {
        s.chains.insert(
            name.into(),
            format!(" {{ type {kind} hook {hook} priority {priority}; policy accept; }}"),
        );
    }
    for name in CHAINS {
        s.chains.insert(name.into(), String::new());
    }
    let vip = format!("{t} . inet_proto . inet_service");
    let mut set = |kind: &str, name: &str, spec: String| {
        s.sets.insert(
            name.into(),
            format!("add {kind} {f} {TABLE} {name} {{ {spec} }}"),
        );
    };
    set(
        "set",
        "cluster-ips",
        format!("type {t}; comment \"ClusterIPs served\";"),
    );
    set(
        "map",
        "no-endpoint-services",
        format!("type {vip} : verdict; comment \"destinations without usable endpoints\";"),
    );
    set(
        "map",
        "no-endpoint-nodeports",
        "type inet_proto . inet_service : verdict; comment \"NodePorts without usable endpoints\";"
            .into(),
    );
    set(
        "set",
        "hairpin-connections",
        format!(
            "type {t} . {t} . inet_proto . inet_service; comment \"a pod reaching itself through a Service\";"
        ),
    );
    set(
        "set",
        "firewall-ips",
        format!("type {vip}; comment \"LoadBalancer IPs with source ranges\";"),
    );
    set(
        "set",
        "firewall-allow",
        format!(
            "type {vip} . {t}; flags interval; comment \"sources allowed per LoadBalancer IP\";"
        ),
    );
    set(
        "set",
        "service-cidrs",
        format!("type {t}; flags interval; comment \"ServiceCIDRs\";"),
    );
    set(
        "set",
        "nodeport-ips",
        format!("type {t}; comment \"addresses NodePorts answer on\";"),
    );
    for name in present {
        if let Some(decl) = name.declaration(w) {
            s.sets.insert(name.to_string(), decl);
        }
    }

    let mut rule = |chain: &str, text: String| {
        s.rules.entry_or_default(chain).push(text);
    };
    rule(
        "filter-prerouting-pre-dnat",
        "ct state new jump firewall-check".into(),
    );
    rule(
        "filter-output-pre-dnat",
        "ct state new jump firewall-check".into(),
    );
    rule("nat-prerouting", "jump services".into());
    rule("nat-output", "jump services".into());
    rule("nat-postrouting", "jump masquerading".into());
    rule(
        "filter-input",
        "ct state new jump nodeport-endpoints-check".into(),
    );
    rule(
        "filter-input",
        "ct state new jump service-endpoints-check".into(),
    );
    for chain in ["filter-forward", "filter-output"] {
        rule(chain, "ct state new jump service-endpoints-check".into());
        rule(chain, "ct state new jump cluster-ips-check".into());
    }
    rule("reject-chain", "reject".into());
    let vip_key = format!("{a} daddr . meta l4proto . th dport");
    let port_key = "meta l4proto . th dport";
    rule(
        "firewall-check",
        format!("{vip_key} @firewall-ips {vip_key} . {a} saddr != @firewall-allow drop"),
    );
    rule(
        "service-endpoints-check",
        format!("{vip_key} vmap @no-endpoint-services"),
    );
    let nodeport_match = if globals.nodeport_ips {
        format!("{a} daddr @nodeport-ips")
    } else {
        format!("fib daddr type local {a} daddr != {}", w.loopback)
    };
    rule(
        "nodeport-endpoints-check",
        format!("{nodeport_match} {port_key} vmap @no-endpoint-nodeports"),
    );
    rule(
        "cluster-ips-check",
        format!("{a} daddr @cluster-ips reject"),
    );
    if globals.service_cidrs {
        rule(
            "cluster-ips-check",
            format!("{a} daddr @service-cidrs drop"),
        );
    }

    // Masquerading: off-cluster sources to ClusterIPs (or everyone with --masquerade-all).
    let set_mark = format!("meta mark set meta mark | {mark:#x}");
    // Traffic from pods (`local`) and from elsewhere (`not_local`), as --detect-local-mode says.
    let (local, not_local) = match &globals.local {
        Local::None => (None, None),
        Local::Cidrs(cidrs) => {
            let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            let set = format!("{{ {} }}", cidrs.join(", "));
            (
                Some(format!("{a} saddr {set}")),
                Some(format!("{a} saddr != {set}")),
            )
        }
        Local::Interface(pattern) => (
            Some(format!("iifname \"{pattern}\"")),
            Some(format!("iifname != \"{pattern}\"")),
        ),
    };
    if globals.masquerade_all {
        rule("services", format!("{a} daddr @cluster-ips {set_mark}"));
    } else if let Some(not_local) = &not_local {
        rule(
            "services",
            format!("{a} daddr @cluster-ips {not_local} {set_mark}"),
        );
    }
    // Dispatch rules, in this order: Cluster-policy destinations; then, for
    // externalTrafficPolicy Local, the short cut that pods (not masqueraded) and the node
    // itself (masqueraded) take to every endpoint, since there is no client address to keep;
    // then everyone else to this node's endpoints, the client's address kept.
    let pods = local.map(|l| format!("{l} "));
    let host = "fib saddr type local ".to_owned();
    // (kind, source match, masquerade?)
    let mut patterns: Vec<(Kind, String, bool)> = vec![
        (Kind::Cluster, String::new(), false),
        (Kind::External, String::new(), true),
    ];
    let mut port_patterns: Vec<(Kind, String, bool)> = vec![(Kind::NodePort, String::new(), true)];
    if let Some(pods) = &pods {
        patterns.push((Kind::ExternalShort, pods.clone(), false));
        port_patterns.push((Kind::NodePortShort, pods.clone(), false));
    }
    patterns.push((Kind::ExternalShort, host.clone(), true));
    port_patterns.push((Kind::NodePortShort, host, true));
    patterns.push((Kind::ExternalLocal, String::new(), false));
    port_patterns.push((Kind::NodePortLocal, String::new(), false));
    let dispatch_rules = |chain: &str,
                          key: &str,
                          patterns: &[(Kind, String, bool)],
                          rule: &mut dyn FnMut(&str, String)| {
        for (kind, source, masquerade) in patterns {
            let mark = if *masquerade {
                format!("{set_mark} ")
            } else {
                String::new()
            };
            if present.contains(&SetName::Affinity(*kind)) {
                rule(
                    chain,
                    format!(
                        "{source}{key} @{} {mark}{key} vmap @{}",
                        SetName::AffinityKeys(*kind),
                        SetName::Affinity(*kind)
                    ),
                );
            }
            for name in present {
                if let SetName::Group(k, n) = name
                    && k == kind
                {
                    rule(
                        chain,
                        format!("{source}{key} @{name} {mark}goto {}", group_chain(*k, *n)),
                    );
                }
            }
        }
    };
    dispatch_rules("services", &vip_key, &patterns, &mut rule);
    let any_port = present.iter().any(|name| match name {
        SetName::Group(k, _) | SetName::Affinity(k) => k.by_port(),
        _ => false,
    });
    if any_port {
        rule("services", format!("{nodeport_match} jump nodeports"));
    }
    dispatch_rules("nodeports", port_key, &port_patterns, &mut rule);
    rule(
        "masquerading",
        format!(
            "meta mark & {mark:#x} != 0 meta mark set meta mark ^ {mark:#x} masquerade fully-random"
        ),
    );
    rule(
        "masquerading",
        format!(
            "ct status dnat {a} saddr . {a} daddr . meta l4proto . th dport @hairpin-connections masquerade fully-random"
        ),
    );
    // Each group's DNAT in a chain of its own, written once with its map: nft 1.0.6 cannot
    // add a rule naming a `typeof` map (with `th dport`) that an earlier transaction made, so
    // no rule naming one is ever written again while the map lives.
    for name in present {
        if let SetName::Group(kind, n) = name {
            let key = if kind.by_port() { port_key } else { &vip_key };
            let chain = group_chain(*kind, *n);
            s.chains.insert(chain.clone(), String::new());
            s.rules.insert(
                chain,
                vec![format!(
                    "dnat {a} to {key} . numgen random mod {n} map @{}",
                    SetName::GroupEps(*kind, *n)
                )],
            );
        }
    }
    s
}

#[cfg(test)]
mod tests;
