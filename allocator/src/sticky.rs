//! Sticky allocation: a Service deleted and created again under the same `namespace/name`
//! within the retention window gets its previous ClusterIPs and NodePorts back, when they are
//! still free and still allowed. The memory is a small JSON document the leader keeps in a
//! ConfigMap (see `run.rs`), so it survives restarts and fail-overs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};

use crate::index::Owner;

/// What a deleted Service held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remembered {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// NodePort by the port's name ("" for a single unnamed port), as the API server itself
    /// matches ports between versions of a Service.
    #[serde(default)]
    pub node_ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub health_check_node_port: Option<u16>,
    /// Seconds since the Unix epoch.
    pub deleted_at: u64,
}

impl Remembered {
    pub fn of(svc: &Service, deleted_at: u64) -> Option<Self> {
        let owner = crate::index::owner_of(svc)?;
        let spec = svc.spec.as_ref()?;
        let cluster_ips = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        let node_ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let np = u16::try_from(p.node_port?).ok().filter(|n| *n != 0)?;
                Some((p.name.clone().unwrap_or_default(), np))
            })
            .collect();
        let health_check_node_port = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let r = Self {
            namespace: owner.namespace.into(),
            name: owner.name.into(),
            cluster_ips,
            node_ports,
            health_check_node_port,
            deleted_at,
        };
        (!r.cluster_ips.is_empty()
            || !r.node_ports.is_empty()
            || r.health_check_node_port.is_some())
        .then_some(r)
    }
}

/// Largest document written (a ConfigMap holds at most 1 MiB in all).
pub const MAX_DOCUMENT: usize = 900 * 1024;

#[derive(Debug)]
pub struct Sticky {
    entries: HashMap<Owner, Remembered>,
    retention: Duration,
    max_entries: usize,
    dirty: bool,
}

impl Sticky {
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            retention,
            max_entries,
            dirty: false,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.retention.is_zero() && self.max_entries > 0
    }

    pub fn remember(&mut self, r: Remembered) {
        if !self.enabled() {
            return;
        }
        let owner = Owner::new(r.namespace.as_str(), r.name.as_str());
        self.entries.insert(owner, r);
        if self.entries.len() > self.max_entries {
            self.forget_oldest(self.entries.len() - self.max_entries);
        }
        self.dirty = true;
    }

    /// Forgets the `n` entries deleted longest ago.
    fn forget_oldest(&mut self, n: usize) {
        let mut by_age: Vec<(u64, Owner)> = self
            .entries
            .iter()
            .map(|(o, r)| (r.deleted_at, o.clone()))
            .collect();
        by_age.sort();
        for (_, o) in by_age.into_iter().take(n) {
            self.entries.remove(&o);
        }
    }

    /// What `owner` held when it was deleted, if that was within the retention window.
    pub fn get(&self, owner: &Owner, now: u64) -> Option<&Remembered> {
        self.entries
            .get(owner)
            .filter(|r| now.saturating_sub(r.deleted_at) <= self.retention.as_secs())
    }

    /// The Service exists again: its memory has served.
    pub fn forget(&mut self, owner: &Owner) {
        if self.entries.remove(owner).is_some() {
            self.dirty = true;
        }
    }

    pub fn expire(&mut self, now: u64) {
        let before = self.entries.len();
        let keep = self.retention.as_secs();
        self.entries
            .retain(|_, r| now.saturating_sub(r.deleted_at) <= keep);
        if self.entries.len() != before {
            self.dirty = true;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The document to persist, if anything changed since the last call. It never exceeds
    /// [`MAX_DOCUMENT`]: the oldest entries are forgotten until it fits.
    pub fn take_dirty(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        loop {
            let mut all: Vec<&Remembered> = self.entries.values().collect();
            all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            let doc = serde_json::to_string(&all).ok()?;
            if doc.len() <= MAX_DOCUMENT || self.entries.is_empty() {
                return Some(doc);
            }
            // Drop the oldest tenth (at least one) and try again.
            let drop = (self.entries.len() / 10).max(1);
            tracing::warn!(
                entries = self.entries.len(),
                dropped = drop,
                "the sticky memory outgrew its ConfigMap; forgetting the oldest"
            );
            self.forget_oldest(drop);
        }
    }

    /// Loads a persisted document; entries already known win. Returns how many were read.
    pub fn load(&mut self, json: &str) -> Result<usize, serde_json::Error> {
        let all: Vec<Remembered> = serde_json::from_str(json)?;
        let n = all.len();
        for r in all {
            self.entries
                .entry(Owner::new(r.namespace.as_str(), r.name.as_str()))
                .or_insert(r);
        }
        Ok(n)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, at: u64) -> Remembered {
        Remembered {
            namespace: "ns".into(),
            name: name.into(),
            cluster_ips: vec!["10.96.5.5".parse().expect("ip")],
            node_ports: BTreeMap::from([("http".to_owned(), 31000)]),
            health_check_node_port: None,
            deleted_at: at,
        }
    }

    #[test]
    fn retention_and_capacity() {
        let mut s = Sticky::new(Duration::from_secs(100), 2);
        s.remember(entry("a", 10));
        s.remember(entry("b", 20));
        s.remember(entry("c", 30));
        assert_eq!(s.len(), 2, "oldest evicted");
        assert!(s.get(&Owner::new("ns", "a"), 40).is_none());
        assert!(s.get(&Owner::new("ns", "b"), 120).is_some());
        assert!(
            s.get(&Owner::new("ns", "b"), 121).is_none(),
            "past retention"
        );
        s.expire(125);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn persists_and_loads() {
        let mut s = Sticky::new(Duration::from_secs(100), 10);
        s.remember(entry("a", 10));
        let doc = s.take_dirty().expect("dirty");
        assert!(s.take_dirty().is_none());
        let mut t = Sticky::new(Duration::from_secs(100), 10);
        assert_eq!(t.load(&doc).expect("valid"), 1);
        assert_eq!(t.get(&Owner::new("ns", "a"), 20), Some(&entry("a", 10)));
        assert!(t.load("{not json").is_err());
    }

    #[test]
    fn the_document_fits_a_config_map() {
        let mut s = Sticky::new(Duration::from_secs(100), 100_000);
        for i in 0..20_000u64 {
            s.remember(entry(&format!("service-with-a-longish-name-{i}"), i));
        }
        let doc = s.take_dirty().expect("dirty");
        assert!(doc.len() <= MAX_DOCUMENT, "{}", doc.len());
        assert!(s.len() < 20_000 && s.len() > 1000, "{}", s.len());
        assert!(
            s.get(
                &Owner::new("ns", "service-with-a-longish-name-19999"),
                19_999
            )
            .is_some(),
            "the newest kept"
        );
    }

    #[test]
    fn disabled_remembers_nothing() {
        let mut s = Sticky::new(Duration::ZERO, 10);
        s.remember(entry("a", 10));
        assert!(s.is_empty());
    }
}
