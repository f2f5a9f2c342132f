//! The decision for one Service create or update: which ClusterIPs, NodePorts and health-check
//! NodePort to write into it, or why the request is denied. Pure apart from the index it reads
//! and reserves in; see `docs/allocator.md` for the rules and `docs/upstream/apiserver-allocation.md`
//! for the API server behaviour they follow.
//!
//! Principle: the webhook fills in only what the API server's registry would allocate, exactly
//! where it would allocate it. Anything it cannot judge (an invalid family combination, an
//! unparseable IP) passes through unchanged so that the API server's own validation answers.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use serde_json::{Value, json};

use crate::index::{Index, Owner, Owns};
use crate::policy::Rule;
use crate::ranges::{CidrRange, PortRange, Span, scan, u128_to_ip};
use crate::sticky::Remembered;

/// Probes one dynamic pick may make before it reports the range full.
const SCAN_BUDGET: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub create: bool,
    pub service: &'a Service,
    /// The stored object, on updates.
    pub old: Option<&'a Service>,
    pub owner: &'a Owner,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub rule: Option<&'a Rule>,
    pub sticky: Option<&'a Remembered>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClusterIp,
    NodePort,
    HealthCheckNodePort,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClusterIp => "cluster_ip",
            Kind::NodePort => "node_port",
            Kind::HealthCheckNodePort => "health_check_node_port",
        }
    }
}

/// How a value came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Asked for by the user.
    Requested,
    /// Picked from the range.
    Dynamic,
    /// The value this Service had before it was deleted.
    Sticky,
    /// Already this Service's (an update), or reserved for it by an earlier try of this request.
    Kept,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Requested => "requested",
            How::Dynamic => "dynamic",
            How::Sticky => "sticky",
            How::Kept => "kept",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value_ {
    Ip(IpAddr),
    Port(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub kind: Kind,
    pub value: Value_,
    pub how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    IpTaken,
    IpOutOfRange,
    IpRangeFull,
    PortTaken,
    PortOutOfRange,
    PortRangeFull,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::IpTaken => "ip_taken",
            DenyReason::IpOutOfRange => "ip_out_of_range",
            DenyReason::IpRangeFull => "ip_range_full",
            DenyReason::PortTaken => "port_taken",
            DenyReason::PortOutOfRange => "port_out_of_range",
            DenyReason::PortRangeFull => "port_range_full",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit as it is: nothing for the allocator to fill in.
    Unchanged,
    /// Admit with these JSON-patch operations.
    Patch {
        ops: Vec<Value>,
        picks: Vec<Pick>,
    },
    Deny(Denial),
}

/// What every step of one decision reads, and the draft it writes.
struct Step<'s, 'a, R> {
    idx: &'s Index,
    req: &'s Request<'a>,
    ctx: Context<'a>,
    rng: &'s mut R,
    now: Instant,
    draft: &'s mut Draft,
}

/// What the request's picks look like while it is being decided: values chosen so far count
/// as taken for the later picks of the same request.
#[derive(Debug, Default)]
struct Draft {
    ops: Vec<Value>,
    picks: Vec<Pick>,
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

pub fn decide(
    idx: &mut Index,
    req: Request<'_>,
    ctx: Context<'_>,
    rng: &mut impl rand::Rng,
    now: Instant,
) -> Decision {
    let Some(spec) = req.service.spec.as_ref() else {
        return Decision::Unchanged;
    };
    let old_spec = if req.create {
        None
    } else {
        req.old.and_then(|o| o.spec.as_ref())
    };
    let mut draft = Draft::default();
    let result = {
        let mut step = Step {
            idx: &*idx,
            req: &req,
            ctx,
            rng,
            now,
            draft: &mut draft,
        };
        cluster_ips(&mut step, spec, old_spec).and_then(|()| node_ports(&mut step, spec, old_spec))
    };
    if let Err(denial) = result {
        return Decision::Deny(denial);
    }
    // Requested values are reserved too, patch or not: until the registry has them, nothing
    // else may be handed them.
    if !req.dry_run {
        for p in &draft.picks {
            match p.value {
                Value_::Ip(ip) => idx.reserve_ip(ip, req.owner, now),
                Value_::Port(port) => idx.reserve_port(port, req.owner, now),
            }
        }
    }
    if draft.ops.is_empty() {
        return Decision::Unchanged;
    }
    Decision::Patch {
        ops: draft.ops,
        picks: draft.picks,
    }
}

// ---------------------------------------------------------------- ClusterIPs

fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|c| c.first())
            .is_some_and(|c| c == "None")
}

fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("ClusterIP")
}

/// IsServiceIPSet's counterpart: the registry allocates ClusterIPs for this Service.
fn needs_cluster_ip(spec: &ServiceSpec) -> bool {
    service_type(spec) != "ExternalName" && !is_headless(spec)
}

fn ips_of(spec: &ServiceSpec) -> Vec<String> {
    match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec
            .cluster_ip
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
    }
}

fn family_of(s: &str) -> Option<bool> {
    match s {
        "IPv4" => Some(false),
        "IPv6" => Some(true),
        _ => None,
    }
}

/// The families the registry would give the Service, in order (§3 of the upstream notes), or
/// `None` where the registry would refuse the spec: then it passes through for the API server
/// to say why.
fn families(
    spec: &ServiceSpec,
    old: Option<&ServiceSpec>,
    ips: &[String],
    cluster: &[bool],
) -> Option<Vec<bool>> {
    let policy = spec
        .ip_family_policy
        .as_deref()
        .or(old.and_then(|o| o.ip_family_policy.as_deref()))
        .unwrap_or("SingleStack");
    let dual_cluster = cluster.len() > 1;
    let mut fams: Vec<bool> = match spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        Some(f) => f.iter().map(|s| family_of(s)).collect::<Option<_>>()?,
        None => {
            let mut inferred = Vec::new();
            for ip in ips.iter().filter(|s| !s.is_empty()) {
                inferred.push(ip.parse::<IpAddr>().ok()?.is_ipv6());
            }
            if inferred.is_empty() {
                inferred.push(cluster[0]);
            }
            inferred
        }
    };
    if fams.len() > 2 || (fams.len() == 2 && fams[0] == fams[1]) {
        return None;
    }
    match policy {
        "SingleStack" => {
            if fams.len() > 1 || ips.len() > 1 {
                return None;
            }
        }
        "PreferDualStack" | "RequireDualStack" => {
            if policy == "RequireDualStack" && !dual_cluster {
                return None;
            }
            if dual_cluster && fams.len() == 1 {
                fams.push(!fams[0]);
            }
        }
        _ => return None,
    }
    if fams.iter().any(|f| !cluster.contains(f)) || ips.len() > fams.len() {
        return None;
    }
    for (ip, fam) in ips.iter().zip(&fams) {
        if !ip.is_empty() && ip.parse::<IpAddr>().ok()?.is_ipv6() != *fam {
            return None;
        }
    }
    Some(fams)
}

fn cluster_ips<R: rand::Rng>(
    step: &mut Step<'_, '_, R>,
    spec: &ServiceSpec,
    old: Option<&ServiceSpec>,
) -> Result<(), Denial> {
    let (idx, req, ctx, now) = (step.idx, step.req, step.ctx, step.now);
    let (rng, draft) = (&mut *step.rng, &mut *step.draft);
    if !needs_cluster_ip(spec) {
        return Ok(());
    }
    // No `kubernetes` ServiceCIDR seen yet: the registry decides alone.
    let Some(cluster) = idx.cluster_families() else {
        return Ok(());
    };
    let old_ips = old
        .filter(|o| needs_cluster_ip(o))
        .map(ips_of)
        .unwrap_or_default();
    let mut ips = ips_of(spec);
    let mut write = false;
    let no_list = spec.cluster_ips.as_ref().is_none_or(|l| l.is_empty());
    let single = spec.cluster_ip.as_deref().filter(|s| !s.is_empty());
    if no_list && !old_ips.is_empty() && single.is_none_or(|ip| ip == old_ips[0]) {
        // What the registry's patchAllocatedValues would do after us (an empty `clusterIPs`
        // takes the stored list, whatever `clusterIP` says); done here so the copy is not
        // mistaken for a request for fresh addresses.
        ips = old_ips.clone();
        write = true;
    }
    let Some(mut fams) = families(spec, old, &ips, &cluster) else {
        return Ok(());
    };
    let prefer = |s: Option<&ServiceSpec>| {
        s.and_then(|s| s.ip_family_policy.as_deref()) == Some("PreferDualStack")
    };
    let same_type = old.is_some_and(|o| service_type(o) == service_type(spec));
    if same_type && prefer(Some(spec)) && prefer(old) && ips == old_ips {
        // Upstream does not upgrade an unchanged PreferDualStack Service when the cluster
        // becomes dual-stack.
        fams.truncate(ips.len());
    }
    for (i, &v6) in fams.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        match ips.get(i).filter(|s| !s.is_empty()) {
            Some(text) => {
                let Ok(ip) = text.parse::<IpAddr>() else {
                    return Ok(()); // the API server's validation names it
                };
                if old_ips.contains(text) {
                    continue;
                }
                check_ip(idx, req.owner, ip, &field, now)?;
                draft.push_ip(ip, How::Requested);
            }
            None => {
                let (ip, how) = pick_ip(idx, req.owner, v6, ctx, rng, now, draft)?;
                draft.push_ip(ip, how);
                if i < ips.len() {
                    ips[i] = ip.to_string();
                } else {
                    ips.push(ip.to_string());
                }
                write = true;
            }
        }
    }
    if write {
        draft
            .ops
            .push(json!({"op": "add", "path": "/spec/clusterIP", "value": ips[0]}));
        draft
            .ops
            .push(json!({"op": "add", "path": "/spec/clusterIPs", "value": ips}));
    }
    Ok(())
}

impl Draft {
    fn push_ip(&mut self, ip: IpAddr, how: How) {
        self.ips.push(ip);
        self.picks.push(Pick {
            kind: Kind::ClusterIp,
            value: Value_::Ip(ip),
            how,
        });
    }

    fn push_port(&mut self, kind: Kind, port: u16, how: How) {
        self.ports.push(port);
        self.picks.push(Pick {
            kind,
            value: Value_::Port(port),
            how,
        });
    }
}

fn check_ip(
    idx: &Index,
    owner: &Owner,
    ip: IpAddr,
    field: &str,
    now: Instant,
) -> Result<(), Denial> {
    let usable: Vec<(&str, &CidrRange)> = usable_cidrs(idx, ip.is_ipv6());
    if !usable.iter().any(|(_, r)| r.contains(ip)) {
        return Err(Denial {
            reason: DenyReason::IpOutOfRange,
            message: format!(
                "{field}: {ip} is not in any ServiceCIDR of its family; {}",
                describe_ip_ranges(idx, &usable)
            ),
        });
    }
    if let Some(holder) = idx.ip_holder(ip, owner, now) {
        let ranges: Vec<_> = usable.into_iter().filter(|(_, r)| r.contains(ip)).collect();
        return Err(Denial {
            reason: DenyReason::IpTaken,
            message: format!(
                "{field}: {ip} is already allocated to {holder}; {}",
                describe_ip_ranges(idx, &ranges)
            ),
        });
    }
    Ok(())
}

/// Usable ServiceCIDRs' ranges of one family: `kubernetes` first, then by name.
fn usable_cidrs(idx: &Index, v6: bool) -> Vec<(&str, &CidrRange)> {
    let mut out: Vec<(&str, &CidrRange)> = Vec::new();
    let default = idx.service_cidr(crate::index::DEFAULT_SERVICE_CIDR);
    for c in default.into_iter().chain(
        idx.service_cidrs()
            .filter(|c| c.name != crate::index::DEFAULT_SERVICE_CIDR),
    ) {
        if !c.usable {
            continue;
        }
        for r in c.ranges.iter().filter(|r| r.is_v6() == v6) {
            out.push((c.name.as_str(), r));
        }
    }
    out
}

/// Where dynamic picks of one family look, after the policy rule.
fn candidate_cidrs<'a>(
    idx: &'a Index,
    v6: bool,
    rule: Option<&Rule>,
) -> Vec<(&'a str, &'a CidrRange)> {
    let all = usable_cidrs(idx, v6);
    let Some(rule) = rule.filter(|r| !r.service_cidrs.is_empty()) else {
        return all;
    };
    let chosen: Vec<_> = rule
        .service_cidrs
        .iter()
        .flat_map(|name| {
            all.iter()
                .filter(move |(n, _)| *n == name.as_str())
                .copied()
        })
        .collect();
    // A rule naming no CIDR of this family leaves that family to the defaults.
    let names_family = rule.service_cidrs.iter().any(|name| {
        idx.service_cidr(name)
            .is_some_and(|c| c.ranges.iter().any(|r| r.is_v6() == v6))
    });
    if names_family { chosen } else { all }
}

fn describe_ip_ranges(idx: &Index, ranges: &[(&str, &CidrRange)]) -> String {
    if ranges.is_empty() {
        return "no usable ServiceCIDR offers this family".to_owned();
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(name, r)| {
            let free = r.size().saturating_sub(idx.used_in(r));
            format!("ServiceCIDR {name} {} has {free} free", r.cidr)
        })
        .collect();
    parts.join(", ")
}

fn pick_ip(
    idx: &Index,
    owner: &Owner,
    v6: bool,
    ctx: Context<'_>,
    rng: &mut impl rand::Rng,
    now: Instant,
    draft: &Draft,
) -> Result<(IpAddr, How), Denial> {
    let cidrs = candidate_cidrs(idx, v6, ctx.rule);
    let free = |ip: IpAddr| !draft.ips.contains(&ip) && !idx.ip_taken(ip, owner, now);
    if !owner.is_generated()
        && let Some(ip) = idx.reserved_ip_of(owner, v6, now)
        && !draft.ips.contains(&ip)
        && cidrs.iter().any(|(_, r)| r.contains(ip))
    {
        return Ok((ip, How::Kept));
    }
    if let Some(prev) = ctx.sticky {
        for &ip in prev.cluster_ips.iter().filter(|ip| ip.is_ipv6() == v6) {
            if cidrs.iter().any(|(_, r)| r.contains(ip)) && free(ip) {
                return Ok((ip, How::Sticky));
            }
        }
    }
    for (_, range) in &cidrs {
        let bands: Vec<Span> = range.bands().collect();
        if let Some(n) = scan(&bands, rng.random::<f64>(), SCAN_BUDGET, |n| {
            !free(u128_to_ip(n, v6))
        }) {
            return Ok((u128_to_ip(n, v6), How::Dynamic));
        }
    }
    let family = if v6 { "IPv6" } else { "IPv4" };
    let rule = ctx
        .rule
        .filter(|r| !r.service_cidrs.is_empty())
        .map(|r| format!(" allowed by policy rule {}", r.name))
        .unwrap_or_default();
    Err(Denial {
        reason: DenyReason::IpRangeFull,
        message: format!(
            "no free {family} ClusterIP in the ServiceCIDRs{rule}: {}",
            describe_ip_ranges(idx, &cidrs)
        ),
    })
}

// ---------------------------------------------------------------- NodePorts

fn node_port_type(spec: &ServiceSpec) -> bool {
    matches!(service_type(spec), "NodePort" | "LoadBalancer")
}

/// The registry allocates a node port for every service port (§5.1).
fn needs_node_ports(spec: &ServiceSpec) -> bool {
    service_type(spec) == "NodePort"
        || (service_type(spec) == "LoadBalancer"
            && spec.allocate_load_balancer_node_ports != Some(false))
}

fn needs_health_check(spec: &ServiceSpec) -> bool {
    service_type(spec) == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local")
}

fn port_value(p: Option<i32>) -> u16 {
    p.and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
}

fn node_ports<R: rand::Rng>(
    step: &mut Step<'_, '_, R>,
    spec: &ServiceSpec,
    old: Option<&ServiceSpec>,
) -> Result<(), Denial> {
    let (idx, req, ctx, now) = (step.idx, step.req, step.ctx, step.now);
    let (rng, draft) = (&mut *step.rng, &mut *step.draft);
    if !node_port_type(spec) {
        return Ok(());
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let invalid = |p: Option<i32>| p.is_some_and(|p| u16::try_from(p).is_err());
    if ports.iter().any(|p| invalid(p.node_port)) || invalid(spec.health_check_node_port) {
        return Ok(()); // the API server's validation names it
    }
    let owned: BTreeSet<u16> = req
        .old
        .filter(|_| !req.create)
        .map(|o| crate::index::Held::of(o).ports)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let explicit: Vec<u16> = ports.iter().map(|p| port_value(p.node_port)).collect();
    let mut values = explicit.clone();
    let mut write = vec![false; ports.len()];
    let needs = needs_node_ports(spec);
    // Stored node ports are copied only when old and new both need them: a PUT that turns
    // allocateLoadBalancerNodePorts off and leaves them out releases them, as upstream does
    // (the differential test checks this against the API server).
    if let Some(old) = old.filter(|o| needs_node_ports(o) && needs) {
        let old_ports = old.ports.as_deref().unwrap_or_default();
        for i in 0..ports.len() {
            if values[i] != 0 {
                continue;
            }
            let previous = old_ports
                .iter()
                .find(|p| p.name == ports[i].name)
                .map(|p| port_value(p.node_port))
                .filter(|v| *v != 0 && !values.contains(v));
            if let Some(v) = previous {
                values[i] = v;
                write[i] = true;
            }
        }
    }
    // Explicit and copied values first: checked and reserved.
    let mut seen: Vec<u16> = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        if v == 0 || seen.contains(&v) {
            continue;
        }
        seen.push(v);
        if owned.contains(&v) {
            continue;
        }
        check_port(idx, req.owner, v, &format!("spec.ports[{i}].nodePort"), now)?;
        draft.push_port(Kind::NodePort, v, How::Requested);
    }
    // What this Service holds or asks for is taken for its own dynamic picks too.
    for v in values.iter().chain(owned.iter()).copied() {
        if v != 0 && !draft.ports.contains(&v) {
            draft.ports.push(v);
        }
    }
    if needs {
        for i in 0..ports.len() {
            if values[i] != 0 {
                continue;
            }
            let number = ports[i].port;
            // On create, ports with the same number share one node port (TCP 53 + UDP 53):
            // one an earlier port got, else one a later port asks for.
            let shared = req
                .create
                .then(|| {
                    (0..i)
                        .find(|&j| ports[j].port == number && values[j] != 0)
                        .map(|j| values[j])
                        .or_else(|| {
                            (i + 1..ports.len())
                                .find(|&j| ports[j].port == number && explicit[j] != 0)
                                .map(|j| explicit[j])
                        })
                })
                .flatten();
            let v = match shared {
                Some(v) => v,
                None => {
                    let name = ports[i].name.as_deref().unwrap_or("");
                    let sticky = ctx.sticky.and_then(|s| s.node_ports.get(name).copied());
                    let (v, how) = pick_port(idx, req.owner, sticky, ctx, rng, now, draft)?;
                    draft.push_port(Kind::NodePort, v, how);
                    v
                }
            };
            values[i] = v;
            write[i] = true;
        }
    }
    for (i, v) in values.iter().enumerate() {
        if write[i] {
            draft.ops.push(
                json!({"op": "add", "path": format!("/spec/ports/{i}/nodePort"), "value": v}),
            );
        }
    }
    if needs_health_check(spec) {
        let mut v = port_value(spec.health_check_node_port);
        let mut write = false;
        if v == 0
            && let Some(prev) = old
                .filter(|o| needs_health_check(o))
                .map(|o| port_value(o.health_check_node_port))
                .filter(|v| *v != 0)
        {
            v = prev;
            write = true;
        }
        if v != 0 {
            if !owned.contains(&v) {
                if values.contains(&v) {
                    return Err(Denial {
                        reason: DenyReason::PortTaken,
                        message: format!(
                            "spec.healthCheckNodePort: {v} is already used by a port of this Service"
                        ),
                    });
                }
                check_port(idx, req.owner, v, "spec.healthCheckNodePort", now)?;
                draft.push_port(Kind::HealthCheckNodePort, v, How::Requested);
            }
        } else {
            let sticky = ctx.sticky.and_then(|s| s.health_check_node_port);
            let (p, how) = pick_port(idx, req.owner, sticky, ctx, rng, now, draft)?;
            draft.push_port(Kind::HealthCheckNodePort, p, how);
            v = p;
            write = true;
        }
        if write {
            draft
                .ops
                .push(json!({"op": "add", "path": "/spec/healthCheckNodePort", "value": v}));
        }
    }
    Ok(())
}

fn describe_ports(idx: &Index, range: PortRange) -> String {
    let free = range.size().saturating_sub(idx.used_ports_in(range));
    format!("the range of valid ports is {range}, {free} free")
}

fn check_port(
    idx: &Index,
    owner: &Owner,
    port: u16,
    field: &str,
    now: Instant,
) -> Result<(), Denial> {
    let range = idx.node_ports;
    if !range.contains(port) {
        return Err(Denial {
            reason: DenyReason::PortOutOfRange,
            message: format!(
                "{field}: {port} is not in the valid range; {}",
                describe_ports(idx, range)
            ),
        });
    }
    if let Some(holder) = idx.port_holder(port, owner, now) {
        return Err(Denial {
            reason: DenyReason::PortTaken,
            message: format!(
                "{field}: {port} is already allocated to {holder}; {}",
                describe_ports(idx, range)
            ),
        });
    }
    Ok(())
}

fn pick_port(
    idx: &Index,
    owner: &Owner,
    sticky: Option<u16>,
    ctx: Context<'_>,
    rng: &mut impl rand::Rng,
    now: Instant,
    draft: &Draft,
) -> Result<(u16, How), Denial> {
    let sub = ctx
        .rule
        .and_then(|r| r.node_port_range)
        .unwrap_or(idx.node_ports);
    let free = |p: u16| !draft.ports.contains(&p) && !idx.port_taken(p, owner, now);
    // A retried request gets back what an earlier try reserved.
    if let Some(p) = idx
        .reserved_ports_of(owner, now)
        .into_iter()
        .find(|p| sub.contains(*p) && !draft.ports.contains(p))
    {
        return Ok((p, How::Kept));
    }
    if let Some(p) = sticky.filter(|p| sub.contains(*p) && free(*p)) {
        return Ok((p, How::Sticky));
    }
    let bands = idx.node_ports.bands_of(sub);
    let found = scan(&bands, rng.random::<f64>(), SCAN_BUDGET, |n| {
        !free(u16::try_from(n).unwrap_or(0))
    });
    match found.and_then(|n| u16::try_from(n).ok()) {
        Some(p) => Ok((p, How::Dynamic)),
        None => {
            let rule = ctx
                .rule
                .filter(|r| r.node_port_range.is_some())
                .map(|r| format!(" of policy rule {}", r.name))
                .unwrap_or_default();
            Err(Denial {
                reason: DenyReason::PortRangeFull,
                message: format!("no free NodePort in {sub}{rule}"),
            })
        }
    }
}

#[cfg(test)]
mod tests;
