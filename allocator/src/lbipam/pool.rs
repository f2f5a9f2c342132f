//! Pools as the allocator uses them: address ranges as integers (so a /64 costs two numbers, not
//! 2^64 addresses), label selectors, and the checks that turn a [`LoadBalancerIPPool`] into a
//! [`Pool`] without ever failing: what is wrong is kept as text for the pool's status.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use svcplane_model::{IpFamily, Labels};

use super::crd::{self, LoadBalancerIPPool};

/// An address as a number within its family.
pub fn to_int(ip: IpAddr) -> (IpFamily, u128) {
    match ip {
        IpAddr::V4(v4) => (IpFamily::V4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (IpFamily::V6, u128::from(v6)),
    }
}

/// The address `n` of `family`; `n` must fit the family (IPv4: 32 bits).
pub fn from_int(family: IpFamily, n: u128) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// IPv4 addresses ending in `.0` or `.255`: what `avoidBuggyIPs` skips.
pub fn is_buggy(family: IpFamily, n: u128) -> bool {
    family == IpFamily::V4 && matches!(n & 0xff, 0 | 0xff)
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub family: IpFamily,
    pub start: u128,
    pub end: u128,
}

impl Range {
    /// A CIDR (`192.0.2.0/28`: every address of the prefix) or a range (`192.0.2.1-192.0.2.9`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let parse = |v: &str| {
                v.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{s:?}: {:?} is not an IP address", v.trim()))
            };
            let (fa, start) = to_int(parse(a)?);
            let (fb, end) = to_int(parse(b)?);
            if fa != fb {
                return Err(format!("{s:?} mixes IPv4 and IPv6"));
            }
            if start > end {
                return Err(format!("{s:?} ends before it starts"));
            }
            return Ok(Range {
                family: fa,
                start,
                end,
            });
        }
        if s.contains('/') {
            let net: IpNet = s
                .parse()
                .map_err(|_| format!("{s:?} is not a CIDR or an address range"))?;
            if net.trunc() != net {
                return Err(format!(
                    "{s:?} has host bits set (the prefix is {})",
                    net.trunc()
                ));
            }
            let (family, start) = to_int(net.network());
            let (_, end) = to_int(net.broadcast());
            return Ok(Range { family, start, end });
        }
        Err(format!(
            "{s:?} is not a CIDR or an address range (a single address is written a/32, a/128 or a-a)"
        ))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (family, n) = to_int(ip);
        family == self.family && self.start <= n && n <= self.end
    }

    pub fn overlaps(&self, other: &Range) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }

    /// Number of addresses, saturating at `u128::MAX` (only `::/0` would overflow).
    pub fn count(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// How many of its addresses `avoidBuggyIPs` skips.
    pub fn buggy(&self) -> u128 {
        if self.family != IpFamily::V4 {
            return 0;
        }
        // Numbers in 0..=n whose last octet is r.
        let upto = |n: u128, r: u128| if n < r { 0 } else { (n - r) / 256 + 1 };
        let count = |r: u128| {
            let below = if self.start == 0 {
                0
            } else {
                upto(self.start - 1, r)
            };
            upto(self.end, r) - below
        };
        count(0) + count(255)
    }

    /// Usable addresses: all, or all but the buggy ones.
    pub fn size(&self, avoid_buggy: bool) -> u128 {
        if avoid_buggy {
            self.count() - self.buggy()
        } else {
            self.count()
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            from_int(self.family, self.start),
            from_int(self.family, self.end)
        )
    }
}

/// One expression of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    In(Box<str>, Vec<Box<str>>),
    NotIn(Box<str>, Vec<Box<str>>),
    Exists(Box<str>),
    DoesNotExist(Box<str>),
}

/// A parsed Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    labels: Vec<(Box<str>, Box<str>)>,
    exprs: Vec<Expr>,
}

impl LabelSelector {
    pub fn parse(sel: &crd::LabelSelector) -> Result<Self, String> {
        let labels = sel
            .match_labels
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let mut exprs = Vec::with_capacity(sel.match_expressions.len());
        for r in &sel.match_expressions {
            let key: Box<str> = r.key.as_str().into();
            let values: Vec<Box<str>> = r.values.iter().map(|v| v.as_str().into()).collect();
            let expr = match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "selector expression on {:?}: {} needs values",
                        r.key, r.operator
                    ));
                }
                "In" => Expr::In(key, values),
                "NotIn" => Expr::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "selector expression on {:?}: {} takes no values",
                        r.key, r.operator
                    ));
                }
                "Exists" => Expr::Exists(key),
                "DoesNotExist" => Expr::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "selector expression on {:?}: unknown operator {other:?}",
                        r.key
                    ));
                }
            };
            exprs.push(expr);
        }
        Ok(Self { labels, exprs })
    }

    /// Every pair and expression holds; an empty selector matches everything.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| match e {
                Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.iter().any(|x| **x == *v)),
                Expr::NotIn(k, vs) => labels.get(k).is_none_or(|v| vs.iter().all(|x| **x != *v)),
                Expr::Exists(k) => labels.get(k).is_some(),
                Expr::DoesNotExist(k) => labels.get(k).is_none(),
            })
    }
}

/// Who may use a pool (see [`crd::ServiceAllocation`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Set only when positive: 0 and negative values rank like no priority.
    pub priority: Option<i32>,
    pub namespaces: Vec<Box<str>>,
    pub namespace_selectors: Vec<LabelSelector>,
    pub service_selectors: Vec<LabelSelector>,
}

impl Allocation {
    /// Whether a Service in namespace `ns` (labelled `ns_labels`) with `labels` may use the pool.
    pub fn admits(&self, ns: &str, ns_labels: &Labels, labels: &Labels) -> bool {
        let namespace_ok = (self.namespaces.is_empty() && self.namespace_selectors.is_empty())
            || self.namespaces.iter().any(|n| **n == *ns)
            || self
                .namespace_selectors
                .iter()
                .any(|s| s.matches(ns_labels));
        let service_ok = self.service_selectors.is_empty()
            || self.service_selectors.iter().any(|s| s.matches(labels));
        namespace_ok && service_ok
    }
}

/// A pool as the allocator uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: Box<str>,
    /// The well-formed entries of `spec.addresses`, in spec order.
    pub ranges: Vec<Range>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub allocation: Allocation,
    /// What is wrong with the spec. A pool with errors gives out no new addresses.
    pub errors: Vec<String>,
    /// Where pools overlap, the older one (then the one first by name) keeps the addresses.
    pub created: Option<Timestamp>,
    pub generation: Option<i64>,
}

impl Pool {
    /// A pool with `addresses` and defaults for everything else (auto-assign on), for tests and
    /// examples; unparsable addresses become errors as in [`Pool::from_crd`].
    pub fn new(name: &str, addresses: &[&str]) -> Self {
        Self::from_spec(
            name,
            &crd::LoadBalancerIPPoolSpec {
                addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                auto_assign: true,
                avoid_buggy_ips: false,
                service_allocation: None,
            },
        )
    }

    /// Never fails: problems are listed in `errors`.
    pub fn from_crd(obj: &LoadBalancerIPPool) -> Self {
        let name = obj.metadata.name.as_deref().unwrap_or_default();
        let mut pool = Self::from_spec(name, &obj.spec);
        pool.created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0);
        pool.generation = obj.metadata.generation;
        pool
    }

    pub fn from_spec(name: &str, spec: &crd::LoadBalancerIPPoolSpec) -> Self {
        let mut errors = Vec::new();
        let mut ranges: Vec<Range> = Vec::with_capacity(spec.addresses.len());
        for a in &spec.addresses {
            match Range::parse(a) {
                Ok(r) => {
                    if let Some(o) = ranges.iter().find(|o| o.overlaps(&r)) {
                        errors.push(format!("{a:?} overlaps {o} of the same pool"));
                    } else {
                        ranges.push(r);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if spec.addresses.is_empty() {
            errors.push("no addresses".into());
        }
        let mut allocation = Allocation::default();
        if let Some(sa) = &spec.service_allocation {
            allocation.priority = sa.priority.filter(|p| *p > 0);
            allocation.namespaces = sa.namespaces.iter().map(|n| n.as_str().into()).collect();
            let mut selectors = |list: &[crd::LabelSelector], what: &str| {
                list.iter()
                    .filter_map(|s| {
                        LabelSelector::parse(s)
                            .map_err(|e| errors.push(format!("{what}: {e}")))
                            .ok()
                    })
                    .collect::<Vec<_>>()
            };
            allocation.namespace_selectors =
                selectors(&sa.namespace_selectors, "namespaceSelectors");
            allocation.service_selectors = selectors(&sa.service_selectors, "serviceSelectors");
        }
        Pool {
            name: name.into(),
            ranges,
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips,
            allocation,
            errors,
            created: None,
            generation: None,
        }
    }

    pub fn with_auto_assign(mut self, on: bool) -> Self {
        self.auto_assign = on;
        self
    }

    pub fn with_avoid_buggy_ips(mut self, on: bool) -> Self {
        self.avoid_buggy_ips = on;
        self
    }

    pub fn with_allocation(mut self, allocation: Allocation) -> Self {
        self.allocation = allocation;
        self
    }

    pub fn with_created(mut self, created: Timestamp) -> Self {
        self.created = Some(created);
        self
    }

    /// Whether the pool offers addresses of `family` at all.
    pub fn has_family(&self, family: IpFamily) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }
}
