//! The allocation core: pools, namespace labels, Services and who holds which address. Pure and
//! synchronous; the controller feeds it watch events and turns its [`Outcome`]s into writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use svcplane_model::{IpFamily, IpFamilyPolicy, Labels, ObjectKey};

use super::pool::{Pool, Range, from_int, is_buggy, to_int};
use super::service::{LbService, Requested, SharingConflict};

/// Why a Service got no address (or, for PreferDualStack, not every family it could have).
/// Each variant has a fixed metric label ([`Refusal::reason`]); the text goes into the Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no pool matches namespace {namespace} and the Service's labels")]
    NoMatchingPool { namespace: Box<str> },
    #[error("pool {0} (allocator.svcplane.dev/address-pool) does not exist")]
    UnknownPool(Box<str>),
    #[error("pool {0} does not admit this Service's namespace or labels (serviceAllocation)")]
    PoolNotAllowed(Box<str>),
    #[error("pool {pool} gives out no addresses while its spec has errors: {error}")]
    PoolInvalid { pool: Box<str>, error: String },
    #[error("{}", no_pool_for_family(*.family, *.required))]
    NoPoolForFamily { family: IpFamily, required: bool },
    #[error("{}", pools_full(*.family, .pools))]
    PoolsFull {
        family: IpFamily,
        pools: Vec<Box<str>>,
    },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("requested IP {0} is in no pool")]
    NotInPool(IpAddr),
    #[error(
        "requested IP {ip} is in pool {actual}, not in pool {named} named by allocator.svcplane.dev/address-pool"
    )]
    OutsideNamedPool {
        ip: IpAddr,
        actual: Box<str>,
        named: Box<str>,
    },
    #[error("requested IP {ip} is one pool {pool} avoids (avoidBuggyIPs)")]
    Avoided { ip: IpAddr, pool: Box<str> },
    #[error("{ip} is used by {by}, {why}")]
    InUse {
        ip: IpAddr,
        by: ObjectKey,
        why: String,
    },
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

fn no_pool_for_family(family: IpFamily, required: bool) -> String {
    let f = family_name(family);
    if required {
        format!("RequireDualStack but no {f} pool matches the Service")
    } else {
        format!("no {f} pool matches the Service")
    }
}

fn pools_full(family: IpFamily, pools: &[Box<str>]) -> String {
    let f = family_name(family);
    match pools {
        [one] => format!("pool {one} is full ({f})"),
        many => format!("pools {} are full ({f})", many.join(", ")),
    }
}

impl Refusal {
    /// The metric label: fixed per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoMatchingPool { .. } => "no_matching_pool",
            Refusal::UnknownPool(_) => "unknown_pool",
            Refusal::PoolNotAllowed(_) => "pool_not_allowed",
            Refusal::PoolInvalid { .. } => "pool_invalid",
            Refusal::NoPoolForFamily { .. } => "no_pool_for_family",
            Refusal::PoolsFull { .. } => "pools_full",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::NotInPool(_) | Refusal::Avoided { .. } => "requested_ip_not_in_pool",
            Refusal::OutsideNamedPool { .. } => "requested_ip_outside_named_pool",
            Refusal::InUse { .. } => "ip_in_use",
        }
    }

    /// Every label [`Refusal::reason`] can return, for documentation and tests.
    pub const REASONS: &'static [&'static str] = &[
        "no_matching_pool",
        "unknown_pool",
        "pool_not_allowed",
        "pool_invalid",
        "no_pool_for_family",
        "pools_full",
        "invalid_request",
        "requested_ip_not_in_pool",
        "requested_ip_outside_named_pool",
        "ip_in_use",
    ];
}

/// What one reconcile decided for one Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Assigned now, primary family first; empty when refused or no longer ours.
    pub ips: Vec<IpAddr>,
    /// Assigned before this reconcile.
    pub previous: Vec<IpAddr>,
    /// Why the Service got nothing (`ips` empty), or, with `ips` set, which family a
    /// PreferDualStack Service went without.
    pub problem: Option<Refusal>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        self.ips != self.previous
    }

    /// Whether an address was given up (so a refused Service may fit now).
    pub fn freed(&self) -> bool {
        self.previous.iter().any(|ip| !self.ips.contains(ip))
    }
}

/// Used and total addresses of one pool, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub size_v4: u128,
    pub size_v6: u128,
    pub used_v4: u128,
    pub used_v6: u128,
}

impl Usage {
    pub fn free_v4(&self) -> u128 {
        self.size_v4.saturating_sub(self.used_v4)
    }

    pub fn free_v6(&self) -> u128 {
        self.size_v6.saturating_sub(self.used_v6)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    pool: Pool,
    /// The pool's ranges less those another, older pool already has; sorted.
    ranges: Vec<Range>,
    /// Spec errors and overlaps with other pools.
    errors: Vec<String>,
}

impl Entry {
    fn usable(&self) -> bool {
        self.errors.is_empty()
    }

    fn has_family(&self, family: IpFamily) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }
}

/// The IPAM state. See the module docs.
#[derive(Debug, Default)]
pub struct Ipam {
    pools: BTreeMap<Box<str>, Entry>,
    /// Every pool's ranges by `(family, start)`: `(end, pool)`. Ranges never overlap.
    index: BTreeMap<(IpFamily, u128), (u128, Box<str>)>,
    namespaces: HashMap<Box<str>, Labels>,
    services: BTreeMap<ObjectKey, LbService>,
    assigned: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Who holds each assigned address.
    users: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
}

impl Ipam {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- inputs ----

    pub fn set_pool(&mut self, pool: Pool) {
        let entry = Entry {
            ranges: Vec::new(),
            errors: Vec::new(),
            pool,
        };
        self.pools.insert(entry.pool.name.clone(), entry);
        self.rebuild_index();
    }

    pub fn remove_pool(&mut self, name: &str) -> bool {
        let removed = self.pools.remove(name).is_some();
        if removed {
            self.rebuild_index();
        }
        removed
    }

    pub fn set_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.into(), labels);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(|k| &**k)
    }

    /// Adds or replaces a Service; its assignment stays until the next reconcile or adopt.
    pub fn set_service(&mut self, svc: LbService) {
        self.services.insert(svc.key.clone(), svc);
    }

    /// Forgets a Service and frees its addresses; returns them.
    pub fn remove_service(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        self.services.remove(key);
        self.release(key)
    }

    // ---- reads ----

    pub fn service(&self, key: &ObjectKey) -> Option<&LbService> {
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = &LbService> {
        self.services.values()
    }

    pub fn service_keys(&self) -> Vec<ObjectKey> {
        self.services.keys().cloned().collect()
    }

    /// Keys of the Services in a namespace.
    pub fn services_in(&self, namespace: &str) -> Vec<ObjectKey> {
        self.services
            .keys()
            .filter(|k| &*k.namespace == namespace)
            .cloned()
            .collect()
    }

    pub fn assigned(&self, key: &ObjectKey) -> &[IpAddr] {
        self.assigned
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Who holds `ip`.
    pub fn holders(&self, ip: &IpAddr) -> impl Iterator<Item = &ObjectKey> {
        self.users.get(ip).into_iter().flatten()
    }

    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(|k| &**k)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name).map(|e| &e.pool)
    }

    /// The pool's spec errors and overlaps with older pools, joined; `None` when it is usable.
    pub fn pool_error(&self, name: &str) -> Option<String> {
        let e = self.pools.get(name)?;
        (!e.errors.is_empty()).then(|| e.errors.join("; "))
    }

    /// The pool an address belongs to (avoided addresses belong to none).
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.locate(ip).map(|e| &*e.pool.name)
    }

    pub fn usage(&self, name: &str) -> Option<Usage> {
        let e = self.pools.get(name)?;
        let avoid = e.pool.avoid_buggy_ips;
        let mut u = Usage::default();
        for r in &e.ranges {
            let used = self
                .users
                .range(from_int(r.family, r.start)..=from_int(r.family, r.end))
                .filter(|(ip, _)| !(avoid && is_buggy(r.family, to_int(**ip).1)))
                .count() as u128;
            let size = r.size(avoid);
            match r.family {
                IpFamily::V4 => {
                    u.size_v4 += size;
                    u.used_v4 += used;
                }
                IpFamily::V6 => {
                    u.size_v6 = u.size_v6.saturating_add(size);
                    u.used_v6 += used;
                }
            }
        }
        Some(u)
    }

    /// Distinct addresses in our Services' `status.loadBalancer.ingress` that lie in no pool.
    pub fn ips_outside_pools(&self) -> usize {
        let outside: BTreeSet<IpAddr> = self
            .services
            .values()
            .flat_map(|s| s.ingress.iter().copied())
            .filter(|ip| self.locate(*ip).is_none())
            .collect();
        outside.len()
    }

    // ---- decisions ----

    /// Drops every assignment (a new leadership term rebuilds them from the API).
    pub fn clear_assignments(&mut self) {
        self.assigned.clear();
        self.users.clear();
    }

    /// Takes the addresses the Service already has in its status, as far as they are still
    /// valid for it (in a pool that admits it, as requested, not clashing with a Service
    /// adopted before); picks nothing new. What a restart or a follower uses, so state comes
    /// from the API server and a restart reshuffles nothing. Call in [`Ipam::adoption_order`].
    pub fn adopt(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        self.release(key);
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in &svc.ingress {
            let family = IpFamily::of(ip);
            if ips.iter().any(|o| IpFamily::of(o) == family) {
                continue;
            }
            let fits = match &svc.requested {
                Requested::Ips(want) => want.contains(ip),
                Requested::Invalid(_) => false,
                Requested::Any => true,
            };
            if fits && self.keepable(svc, *ip) {
                ips.push(*ip);
            }
        }
        self.take(key, &ips);
        ips
    }

    /// Services in the order conflicts are settled: oldest first, then by namespace/name.
    pub fn adoption_order(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<(&Option<_>, &ObjectKey)> = self
            .services
            .values()
            .map(|s| (&s.created, &s.key))
            .collect();
        // Services without a creation time (only in tests) sort last.
        keys.sort_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(y).then_with(|| a.1.cmp(b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(b.1),
        });
        keys.into_iter().map(|(_, k)| k.clone()).collect()
    }

    /// Decides the Service's addresses from scratch, keeping those it has where still valid
    /// (sticky), and records the result. A refusal leaves it with nothing.
    pub fn reconcile(&mut self, key: &ObjectKey) -> Outcome {
        let previous = self.release(key);
        let decided = match self.services.get(key) {
            None => {
                return Outcome {
                    ips: Vec::new(),
                    previous,
                    problem: None,
                };
            }
            Some(svc) => self.decide(svc, &previous),
        };
        match decided {
            Ok((ips, problem)) => {
                self.take(key, &ips);
                Outcome {
                    ips,
                    previous,
                    problem,
                }
            }
            Err(refusal) => Outcome {
                ips: Vec::new(),
                previous,
                problem: Some(refusal),
            },
        }
    }

    fn decide(
        &self,
        svc: &LbService,
        previous: &[IpAddr],
    ) -> Result<(Vec<IpAddr>, Option<Refusal>), Refusal> {
        match &svc.requested {
            Requested::Invalid(why) => Err(Refusal::InvalidRequest(why.clone())),
            Requested::Ips(ips) => {
                self.check_request_families(svc, ips)?;
                for ip in ips {
                    self.check_requested(svc, *ip)?;
                }
                let primary = primary(svc);
                let mut ips = ips.clone();
                ips.sort_by_key(|ip| IpFamily::of(ip) != primary);
                Ok((ips, None))
            }
            Requested::Any => self.auto(svc, previous),
        }
    }

    fn auto(
        &self,
        svc: &LbService,
        previous: &[IpAddr],
    ) -> Result<(Vec<IpAddr>, Option<Refusal>), Refusal> {
        // Addresses still valid are kept even when no pool could give a new one (a pool whose
        // spec broke, autoAssign turned off).
        let candidates = self.candidates(svc);
        let pools: &[&Entry] = candidates.as_deref().unwrap_or(&[]);
        let mut kept: Vec<IpAddr> = Vec::new();
        for ip in previous {
            if !kept.iter().any(|k| IpFamily::of(k) == IpFamily::of(ip)) && self.keepable(svc, *ip)
            {
                kept.push(*ip);
            }
        }
        let offered = |f: IpFamily| {
            kept.iter().any(|ip| IpFamily::of(ip) == f) || pools.iter().any(|e| e.has_family(f))
        };
        let (families, prefer) = match self.families(svc, offered) {
            Ok(found) => found,
            Err(no_family) => return Err(candidates.err().unwrap_or(no_family)),
        };
        let mut ips = Vec::with_capacity(families.len());
        let mut missing = None;
        for family in families {
            if let Some(ip) = kept.iter().find(|ip| IpFamily::of(ip) == family) {
                ips.push(*ip);
                continue;
            }
            match &candidates {
                Ok(pools) => {
                    if let Some(ip) = self.pick(svc, pools, family) {
                        ips.push(ip);
                    } else if missing.is_none() {
                        missing = Some(Refusal::PoolsFull {
                            family,
                            pools: pools
                                .iter()
                                .filter(|e| e.has_family(family))
                                .map(|e| e.pool.name.clone())
                                .collect(),
                        });
                    }
                }
                Err(none) => {
                    if missing.is_none() {
                        missing = Some(none.clone());
                    }
                }
            }
        }
        match missing {
            None => Ok((ips, None)),
            Some(full) if prefer && !ips.is_empty() => Ok((ips, Some(full))),
            Some(full) => Err(full),
        }
    }

    /// Pools the Service may get a new address from, in the order they are tried.
    fn candidates(&self, svc: &LbService) -> Result<Vec<&Entry>, Refusal> {
        if let Some(name) = &svc.pool {
            let entry = self
                .pools
                .get(name)
                .ok_or_else(|| Refusal::UnknownPool(name.clone()))?;
            if !self.admits(entry, svc) {
                return Err(Refusal::PoolNotAllowed(name.clone()));
            }
            if !entry.usable() {
                return Err(Refusal::PoolInvalid {
                    pool: name.clone(),
                    error: entry.errors.join("; "),
                });
            }
            return Ok(vec![entry]);
        }
        let mut list: Vec<&Entry> = self
            .pools
            .values()
            .filter(|e| e.usable() && e.pool.auto_assign && self.admits(e, svc))
            .collect();
        if list.is_empty() {
            return Err(Refusal::NoMatchingPool {
                namespace: svc.key.namespace.clone(),
            });
        }
        // BTreeMap order is by name already; the sort is stable.
        list.sort_by_key(|e| match e.pool.allocation.priority {
            Some(p) if p > 0 => (false, p),
            _ => (true, 0),
        });
        Ok(list)
    }

    /// The families to give addresses of, primary first, and whether the Service prefers
    /// (rather than requires) dual-stack.
    fn families(
        &self,
        svc: &LbService,
        offered: impl Fn(IpFamily) -> bool,
    ) -> Result<(Vec<IpFamily>, bool), Refusal> {
        let primary = primary(svc);
        let other = match primary {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        };
        match stack(svc) {
            Stack::Single => {
                if offered(primary) {
                    Ok((vec![primary], false))
                } else {
                    Err(Refusal::NoPoolForFamily {
                        family: primary,
                        required: false,
                    })
                }
            }
            Stack::PreferDual => {
                let list: Vec<IpFamily> = [primary, other]
                    .into_iter()
                    .filter(|f| offered(*f))
                    .collect();
                if list.is_empty() {
                    Err(Refusal::NoPoolForFamily {
                        family: primary,
                        required: false,
                    })
                } else {
                    Ok((list, true))
                }
            }
            Stack::RequireDual => {
                for f in [primary, other] {
                    if !offered(f) {
                        return Err(Refusal::NoPoolForFamily {
                            family: f,
                            required: true,
                        });
                    }
                }
                Ok((vec![primary, other], false))
            }
        }
    }

    fn check_request_families(&self, svc: &LbService, ips: &[IpAddr]) -> Result<(), Refusal> {
        let primary = primary(svc);
        let list = ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match stack(svc) {
            Stack::Single if ips.len() > 1 => Err(Refusal::InvalidRequest(format!(
                "{list} requested for a single-stack Service (one address expected)"
            ))),
            Stack::Single if IpFamily::of(&ips[0]) != primary => {
                Err(Refusal::InvalidRequest(format!(
                    "requested {list} is not {} like the single-stack Service",
                    family_name(primary)
                )))
            }
            Stack::RequireDual if ips.len() < 2 => Err(Refusal::InvalidRequest(format!(
                "RequireDualStack but only {list} requested (one IPv4 and one IPv6 expected)"
            ))),
            _ => Ok(()),
        }
    }

    fn check_requested(&self, svc: &LbService, ip: IpAddr) -> Result<(), Refusal> {
        let Some(entry) = self.locate_range(ip) else {
            return Err(Refusal::NotInPool(ip));
        };
        if entry.pool.avoid_buggy_ips && is_buggy(IpFamily::of(&ip), to_int(ip).1) {
            return Err(Refusal::Avoided {
                ip,
                pool: entry.pool.name.clone(),
            });
        }
        if let Some(named) = &svc.pool
            && *named != entry.pool.name
        {
            return Err(Refusal::OutsideNamedPool {
                ip,
                actual: entry.pool.name.clone(),
                named: named.clone(),
            });
        }
        if !entry.usable() {
            return Err(Refusal::PoolInvalid {
                pool: entry.pool.name.clone(),
                error: entry.errors.join("; "),
            });
        }
        if !self.admits(entry, svc) {
            return Err(Refusal::PoolNotAllowed(entry.pool.name.clone()));
        }
        self.shareable(svc, ip)
    }

    /// Whether the Service may go on holding `ip`: it lies in a pool that admits the Service
    /// (the named one, if any; autoAssign and spec errors do not matter for keeping) and every
    /// other holder may share it.
    fn keepable(&self, svc: &LbService, ip: IpAddr) -> bool {
        let Some(entry) = self.locate(ip) else {
            return false;
        };
        if svc
            .pool
            .as_ref()
            .is_some_and(|named| *named != entry.pool.name)
        {
            return false;
        }
        self.admits(entry, svc) && self.shareable(svc, ip).is_ok()
    }

    /// Every current holder of `ip` other than `svc` may share it with `svc`.
    fn shareable(&self, svc: &LbService, ip: IpAddr) -> Result<(), Refusal> {
        for holder in self.holders(&ip) {
            if *holder == svc.key {
                continue;
            }
            let Some(other) = self.services.get(holder) else {
                continue;
            };
            if let Err(conflict) = svc.can_share(other) {
                let why = match conflict {
                    SharingConflict::Key => match (&svc.sharing_key, &other.sharing_key) {
                        (Some(k), _) => format!("which does not share key {k}"),
                        (None, _) => "and this Service has no sharing key".to_owned(),
                    },
                    SharingConflict::Port(protocol, port) => {
                        format!("which also uses port {}/{port}", protocol.as_str())
                    }
                    SharingConflict::Backend => "whose externalTrafficPolicy or pod selector differs (sharing needs both Cluster, or both Local with the same selector)".to_owned(),
                };
                return Err(Refusal::InUse {
                    ip,
                    by: holder.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// A new address of `family` for the Service: first an address a Service with the same
    /// sharing key already holds and may share, then the lowest free one, pool by pool.
    fn pick(&self, svc: &LbService, candidates: &[&Entry], family: IpFamily) -> Option<IpAddr> {
        if let Some(key) = &svc.sharing_key {
            let shared: BTreeSet<IpAddr> = self
                .services
                .values()
                .filter(|o| o.key != svc.key && o.sharing_key.as_ref() == Some(key))
                .flat_map(|o| self.assigned(&o.key).iter().copied())
                .filter(|ip| IpFamily::of(ip) == family)
                .collect();
            for entry in candidates {
                let found = shared.iter().find(|ip| {
                    self.locate(**ip)
                        .is_some_and(|e| e.pool.name == entry.pool.name)
                        && self.shareable(svc, **ip).is_ok()
                });
                if let Some(ip) = found {
                    return Some(*ip);
                }
            }
        }
        candidates
            .iter()
            .find_map(|entry| self.first_free(entry, family))
    }

    /// The lowest address of `family` in the pool that nobody holds. Walks from the start of
    /// each range, so the cost is the number of held (and avoided) addresses passed over, never
    /// the size of the range.
    fn first_free(&self, entry: &Entry, family: IpFamily) -> Option<IpAddr> {
        let avoid = entry.pool.avoid_buggy_ips;
        for r in entry.ranges.iter().filter(|r| r.family == family) {
            // Held addresses of the range in ascending order, walked alongside the candidate.
            let mut held = self
                .users
                .range(from_int(family, r.start)..=from_int(family, r.end))
                .map(|(ip, _)| to_int(*ip).1)
                .peekable();
            let mut n = r.start;
            loop {
                while held.next_if(|h| *h < n).is_some() {}
                let taken = held.peek() == Some(&n);
                let avoided = avoid && is_buggy(family, n);
                if !(taken || avoided) {
                    return Some(from_int(family, n));
                }
                if n == r.end {
                    break;
                }
                n += 1;
            }
        }
        None
    }

    fn admits(&self, entry: &Entry, svc: &LbService) -> bool {
        let empty = Labels::default();
        let ns_labels = self.namespaces.get(&svc.key.namespace).unwrap_or(&empty);
        entry
            .pool
            .allocation
            .admits(&svc.key.namespace, ns_labels, &svc.labels)
    }

    /// The pool whose range holds `ip`, avoided addresses included.
    fn locate_range(&self, ip: IpAddr) -> Option<&Entry> {
        let (family, n) = to_int(ip);
        let ((f, _), (end, name)) = self.index.range(..=(family, n)).next_back()?;
        (*f == family && n <= *end)
            .then(|| self.pools.get(name))
            .flatten()
    }

    /// The pool `ip` belongs to: in its ranges and not avoided.
    fn locate(&self, ip: IpAddr) -> Option<&Entry> {
        let entry = self.locate_range(ip)?;
        let (family, n) = to_int(ip);
        (!(entry.pool.avoid_buggy_ips && is_buggy(family, n))).then_some(entry)
    }

    fn release(&mut self, key: &ObjectKey) -> Vec<IpAddr> {
        let ips = self.assigned.remove(key).unwrap_or_default();
        for ip in &ips {
            if let Some(set) = self.users.get_mut(ip) {
                set.remove(key);
                if set.is_empty() {
                    self.users.remove(ip);
                }
            }
        }
        ips
    }

    fn take(&mut self, key: &ObjectKey, ips: &[IpAddr]) {
        if ips.is_empty() {
            return;
        }
        for ip in ips {
            self.users.entry(*ip).or_default().insert(key.clone());
        }
        self.assigned.insert(key.clone(), ips.to_vec());
    }

    /// Recomputes which ranges each pool really has: pools are taken oldest first (then by
    /// name), and a range that overlaps one taken before is dropped and becomes an error.
    fn rebuild_index(&mut self) {
        let mut order: Vec<(Option<k8s_openapi::jiff::Timestamp>, Box<str>)> = self
            .pools
            .values()
            .map(|e| (e.pool.created, e.pool.name.clone()))
            .collect();
        order.sort_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y).then_with(|| a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        let mut index: BTreeMap<(IpFamily, u128), (u128, Box<str>)> = BTreeMap::new();
        for (_, name) in order {
            let Some(entry) = self.pools.get_mut(&name) else {
                continue;
            };
            entry.errors = entry.pool.errors.clone();
            entry.ranges.clear();
            for r in &entry.pool.ranges {
                let clash = index
                    .range(..=(r.family, r.end))
                    .next_back()
                    .filter(|((f, _), (end, _))| *f == r.family && *end >= r.start);
                if let Some(((_, start), (end, other))) = clash {
                    entry.errors.push(format!(
                        "{r} overlaps {} of pool {other}",
                        Range {
                            family: r.family,
                            start: *start,
                            end: *end,
                        }
                    ));
                    continue;
                }
                index.insert((r.family, r.start), (r.end, name.clone()));
                entry.ranges.push(*r);
            }
            entry.ranges.sort();
        }
        self.index = index;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Single,
    PreferDual,
    RequireDual,
}

fn stack(svc: &LbService) -> Stack {
    match svc.policy {
        Some(IpFamilyPolicy::SingleStack) => Stack::Single,
        Some(IpFamilyPolicy::PreferDualStack) => Stack::PreferDual,
        Some(IpFamilyPolicy::RequireDualStack) => Stack::RequireDual,
        None if svc.families.len() > 1 => Stack::RequireDual,
        None => Stack::Single,
    }
}

/// `spec.ipFamilies[0]`, IPv4 when the API left it empty.
fn primary(svc: &LbService) -> IpFamily {
    svc.families.first().copied().unwrap_or(IpFamily::V4)
}
