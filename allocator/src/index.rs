//! What is taken: the allocator's in-memory view of ClusterIPs and NodePorts, fed by watches on
//! ServiceCIDRs, IPAddresses and Services, plus the picks handed out but not yet visible.
//!
//! A pick the webhook returns is invisible to everyone until the API server's registry creates
//! the IPAddress / stores the Service, so it is *reserved* here, by value, until the watch shows
//! it taken or until `ttl` passes (the request may still fail after the webhook answered, and
//! then the value never appears). A reservation belongs to an owner (`namespace/name`), so a
//! retried request for the same Service gets its own reservation back instead of a denial.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};

use crate::ranges::{CidrRange, PortRange, ip_to_u128};

/// Who holds a value: a Service's key, the model's [`ObjectKey`]. Requests with `generateName`
/// and no name yet are owned by `namespace/prefix*` ([`generated_owner`]), which matches no
/// stored Service.
pub use svcplane_model::ObjectKey as Owner;

/// A `generateName` request's owner (`prefix*`): it owns nothing, not even what another
/// request with the same prefix reserved.
pub fn generated_owner(namespace: &str, prefix: &str) -> Owner {
    Owner::new(namespace, format!("{prefix}*"))
}

/// The owner of a stored Service (`None` without a namespace or name).
pub fn owner_of(svc: &Service) -> Option<Owner> {
    Some(Owner::new(
        svc.metadata.namespace.as_deref()?,
        svc.metadata.name.as_deref()?,
    ))
}

/// What the allocator asks of an owner.
pub trait Owns {
    /// Owned by a `generateName` request.
    fn is_generated(&self) -> bool;
    /// The same owner, and one that can own anything (not a `generateName` request).
    fn is(&self, other: &Owner) -> bool;
}

impl Owns for Owner {
    fn is_generated(&self) -> bool {
        self.name.ends_with('*')
    }

    fn is(&self, other: &Owner) -> bool {
        self == other && !self.is_generated()
    }
}

/// Who else has a value, for a denial message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Service(Owner),
    /// An IPAddress object whose parent is not a Service (or has none).
    IpAddress(String),
    /// Handed out by this allocator moments ago; the Service is being created.
    Reserved(Owner),
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Service(o) => write!(f, "Service {o}"),
            Holder::IpAddress(parent) => write!(f, "IPAddress object ({parent})"),
            Holder::Reserved(o) => write!(f, "Service {o} (being created)"),
        }
    }
}

#[derive(Debug, Clone)]
struct Reservation {
    owner: Owner,
    until: Instant,
}

/// One ServiceCIDR as the allocator uses it.
#[derive(Debug, Clone)]
pub struct Cidrs {
    pub name: String,
    pub ranges: Vec<CidrRange>,
    /// Ready (or no Ready condition) and not being deleted.
    pub usable: bool,
}

/// The values one Service holds, as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

impl Held {
    pub fn of(svc: &Service) -> Self {
        let Some(spec) = &svc.spec else {
            return Self::default();
        };
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        let mut ports: Vec<u16> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .chain(spec.health_check_node_port)
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Self { ips, ports }
    }
}

#[derive(Debug)]
pub struct Index {
    cidrs: BTreeMap<String, Cidrs>,
    ip_objects: HashMap<IpAddr, Holder>,
    service_ips: HashMap<IpAddr, BTreeSet<Owner>>,
    ports: HashMap<u16, BTreeSet<Owner>>,
    services: HashMap<Owner, Held>,
    reserved_ips: HashMap<IpAddr, Reservation>,
    reserved_ports: HashMap<u16, Reservation>,
    pub node_ports: PortRange,
    pub ttl: Duration,
}

/// Values held by more than one Service: (IP, holders) and (port, holders).
pub type Duplicates = (Vec<(IpAddr, Vec<Owner>)>, Vec<(u16, Vec<Owner>)>);

/// How long a node port a Service gave up stays held for it: the API server's registry frees
/// it in its bitmap only after the store the watch reports.
const RELEASE_HOLD: Duration = Duration::from_secs(3);

/// The ServiceCIDR whose first CIDR decides the cluster's primary family (§3 of the upstream notes).
pub const DEFAULT_SERVICE_CIDR: &str = "kubernetes";

impl Index {
    pub fn new(node_ports: PortRange, ttl: Duration) -> Self {
        Self {
            cidrs: BTreeMap::new(),
            ip_objects: HashMap::new(),
            service_ips: HashMap::new(),
            ports: HashMap::new(),
            services: HashMap::new(),
            reserved_ips: HashMap::new(),
            reserved_ports: HashMap::new(),
            node_ports,
            ttl,
        }
    }

    // ---- intake ----

    pub fn apply_service_cidr(&mut self, name: &str, cidr: Option<&ServiceCIDR>) {
        let Some(cidr) = cidr else {
            self.cidrs.remove(name);
            return;
        };
        let ranges = cidr
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .filter_map(CidrRange::new)
            .collect();
        let deleting = cidr.metadata.deletion_timestamp.is_some();
        let ready = cidr
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status == "True");
        self.cidrs.insert(
            name.to_owned(),
            Cidrs {
                name: name.to_owned(),
                ranges,
                usable: ready && !deleting,
            },
        );
    }

    pub fn apply_ip_address(&mut self, name: &str, obj: Option<&IPAddress>) {
        let Ok(ip) = name.parse::<IpAddr>() else {
            return;
        };
        let Some(obj) = obj else {
            self.ip_objects.remove(&ip);
            return;
        };
        let parent = Some(&obj.spec.parent_ref).filter(|p| !p.name.is_empty());
        let holder = match parent {
            Some(p) if p.resource == "services" && p.group.as_deref().unwrap_or("").is_empty() => {
                Holder::Service(Owner::new(
                    p.namespace.clone().unwrap_or_default(),
                    p.name.clone(),
                ))
            }
            Some(p) => Holder::IpAddress(format!(
                "{} {}/{}",
                p.resource,
                p.namespace.clone().unwrap_or_default(),
                p.name
            )),
            None => Holder::IpAddress("no parent".into()),
        };
        self.reserved_ips.remove(&ip);
        self.ip_objects.insert(ip, holder);
    }

    /// Records what a Service holds now (`None`: it is gone). Returns what it held before.
    pub fn apply_service(&mut self, owner: &Owner, svc: Option<&Service>) -> Option<Held> {
        let new = svc.map(Held::of);
        let old = match &new {
            Some(h) => self.services.insert(owner.clone(), h.clone()),
            None => self.services.remove(owner),
        };
        if old == new {
            return old;
        }
        if let Some(old) = &old {
            let now = Instant::now();
            let kept = new.as_ref();
            for ip in &old.ips {
                remove_owner(&mut self.service_ips, ip, owner);
                // A reservation of the owner's (from a takeover's catch-up) ends with the value.
                if !kept.is_some_and(|n| n.ips.contains(ip))
                    && self.reserved_ips.get(ip).is_some_and(|r| r.owner.is(owner))
                {
                    self.reserved_ips.remove(ip);
                }
            }
            for port in &old.ports {
                remove_owner(&mut self.ports, port, owner);
                // The registry clears its bitmap only after the store we just saw: hold a
                // released node port for the owner a moment longer.
                if !kept.is_some_and(|n| n.ports.contains(port)) {
                    self.reserved_ports.insert(
                        *port,
                        Reservation {
                            owner: owner.clone(),
                            until: now + RELEASE_HOLD,
                        },
                    );
                }
            }
        }
        if let Some(new) = &new {
            for ip in &new.ips {
                self.service_ips
                    .entry(*ip)
                    .or_default()
                    .insert(owner.clone());
                self.reserved_ips.remove(ip);
            }
            for port in &new.ports {
                self.ports.entry(*port).or_default().insert(owner.clone());
                self.reserved_ports.remove(port);
            }
        }
        old
    }

    /// Forgets every Service (before a re-list is applied).
    pub fn services(&self) -> impl Iterator<Item = (&Owner, &Held)> {
        self.services.iter()
    }

    pub fn ip_objects(&self) -> impl Iterator<Item = (&IpAddr, &Holder)> {
        self.ip_objects.iter()
    }

    pub fn service_cidrs(&self) -> impl Iterator<Item = &Cidrs> {
        self.cidrs.values()
    }

    pub fn service_cidr(&self, name: &str) -> Option<&Cidrs> {
        self.cidrs.get(name)
    }

    /// Drops reservations whose time is up.
    pub fn expire(&mut self, now: Instant) {
        self.reserved_ips.retain(|_, r| r.until > now);
        self.reserved_ports.retain(|_, r| r.until > now);
    }

    /// What a Service held when last seen.
    pub fn held(&self, owner: &Owner) -> Option<&Held> {
        self.services.get(owner)
    }

    pub fn reservations(&self) -> (usize, usize) {
        (self.reserved_ips.len(), self.reserved_ports.len())
    }

    // ---- queries ----

    /// The cluster's IP families, primary first, from the `kubernetes` ServiceCIDR.
    pub fn cluster_families(&self) -> Option<Vec<bool>> {
        let c = self.cidrs.get(DEFAULT_SERVICE_CIDR)?;
        let fams: Vec<bool> = c.ranges.iter().map(CidrRange::is_v6).collect();
        (!fams.is_empty()).then_some(fams)
    }

    /// Who other than `asking` holds `ip`, if anyone.
    pub fn ip_holder(&self, ip: IpAddr, asking: &Owner, now: Instant) -> Option<Holder> {
        // Any IPAddress object makes the address taken, even one naming the asker: the
        // registry's own request for it would fail with AlreadyExists. (On updates the
        // Service's stored addresses are never checked again.)
        if let Some(h) = self.ip_objects.get(&ip) {
            return Some(h.clone());
        }
        if let Some(o) = self
            .service_ips
            .get(&ip)
            .and_then(|s| s.iter().find(|o| !o.is(asking)))
        {
            return Some(Holder::Service(o.clone()));
        }
        match self.reserved_ips.get(&ip) {
            Some(r) if r.until > now && !r.owner.is(asking) => {
                Some(Holder::Reserved(r.owner.clone()))
            }
            _ => None,
        }
    }

    pub fn port_holder(&self, port: u16, asking: &Owner, now: Instant) -> Option<Holder> {
        if let Some(o) = self
            .ports
            .get(&port)
            .and_then(|s| s.iter().find(|o| !o.is(asking)))
        {
            return Some(Holder::Service(o.clone()));
        }
        match self.reserved_ports.get(&port) {
            Some(r) if r.until > now && !r.owner.is(asking) => {
                Some(Holder::Reserved(r.owner.clone()))
            }
            _ => None,
        }
    }

    pub fn ip_taken(&self, ip: IpAddr, asking: &Owner, now: Instant) -> bool {
        self.ip_holder(ip, asking, now).is_some()
    }

    pub fn port_taken(&self, port: u16, asking: &Owner, now: Instant) -> bool {
        self.port_holder(port, asking, now).is_some()
    }

    /// The IP reserved for `owner` in `family` that is still pending, if any (a retried request
    /// gets it back).
    pub fn reserved_ip_of(&self, owner: &Owner, v6: bool, now: Instant) -> Option<IpAddr> {
        self.reserved_ips
            .iter()
            .filter(|(ip, r)| ip.is_ipv6() == v6 && r.owner.is(owner) && r.until > now)
            .map(|(ip, _)| *ip)
            .min()
    }

    /// The node ports reserved for `owner` and still pending, lowest first (a retried request
    /// gets them back). None for `generateName` owners.
    pub fn reserved_ports_of(&self, owner: &Owner, now: Instant) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .reserved_ports
            .iter()
            .filter(|(_, r)| r.owner.is(owner) && r.until > now)
            .map(|(p, _)| *p)
            .collect();
        out.sort_unstable();
        out
    }

    // ---- writes ----

    pub fn reserve_ip(&mut self, ip: IpAddr, owner: &Owner, now: Instant) {
        let until = now + self.ttl;
        self.reserved_ips.insert(
            ip,
            Reservation {
                owner: owner.clone(),
                until,
            },
        );
    }

    pub fn reserve_port(&mut self, port: u16, owner: &Owner, now: Instant) {
        let until = now + self.ttl;
        self.reserved_ports.insert(
            port,
            Reservation {
                owner: owner.clone(),
                until,
            },
        );
    }

    /// How many addresses of `range` are taken (for messages and gauges).
    pub fn used_in(&self, range: &CidrRange) -> u128 {
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
        ips.extend(self.ip_objects.keys().filter(|ip| range.contains(**ip)));
        ips.extend(self.service_ips.keys().filter(|ip| range.contains(**ip)));
        ips.extend(self.reserved_ips.keys().filter(|ip| range.contains(**ip)));
        ips.len() as u128
    }

    pub fn used_ports_in(&self, range: PortRange) -> u32 {
        let mut ports: BTreeSet<u16> = BTreeSet::new();
        ports.extend(self.ports.keys().filter(|p| range.contains(**p)));
        ports.extend(self.reserved_ports.keys().filter(|p| range.contains(**p)));
        u32::try_from(ports.len()).unwrap_or(u32::MAX)
    }

    /// Every ClusterIP held by more than one Service, and every NodePort likewise.
    pub fn duplicates(&self) -> Duplicates {
        let ips = self
            .service_ips
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(ip, o)| (*ip, o.iter().cloned().collect()))
            .collect();
        let ports = self
            .ports
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(p, o)| (*p, o.iter().cloned().collect()))
            .collect();
        (ips, ports)
    }

    /// The IPAddress object for `ip`, if one exists.
    pub fn ip_object(&self, ip: IpAddr) -> Option<&Holder> {
        self.ip_objects.get(&ip)
    }

    /// Whether some usable ServiceCIDR offers `ip`.
    pub fn in_some_cidr(&self, ip: IpAddr) -> bool {
        self.cidrs
            .values()
            .any(|c| c.ranges.iter().any(|r| r.contains(ip)))
    }

    /// Sorted numeric order of a value, for stable iteration in tests and messages.
    pub fn sort_key(ip: &IpAddr) -> (bool, u128) {
        (ip.is_ipv6(), ip_to_u128(*ip))
    }
}

fn remove_owner<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<Owner>>,
    key: &K,
    owner: &Owner,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(owner);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
