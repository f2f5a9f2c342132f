//! Change trackers: the current value per key plus what changed since the consumer last looked.
//!
//! Watch events arrive one object at a time; the DNS index and the proxy's rule sync want "which
//! Services changed, from what to what" in batches. A tracker remembers, for every key touched
//! since the last [`drain`](ChangeTracker::drain), the value it had at that drain; a key whose
//! value comes back to where it started (add then delete, flip then flip back) drops out of the
//! diff, so consumers never do work for changes that cancelled out.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::{EndpointSlice, ObjectKey};

/// Where a watch keeps what it has seen, keyed by object: a tracker, or a consumer's own
/// indexed cache. A watch intake (`svcplane-runtime`'s informer) drives it: `apply` per event,
/// `resync` after a re-list, `get` to keep the last good version of an object whose newer
/// version does not convert.
pub trait Store {
    type Value: Clone;

    /// Sets (`Some`) or removes (`None`) one object.
    fn apply(&mut self, key: ObjectKey, value: Option<Self::Value>);

    /// The object now held under `key`.
    fn get(&self, key: &ObjectKey) -> Option<Self::Value>;

    /// Every key held.
    fn keys(&self) -> Vec<ObjectKey>;

    /// Replaces everything after a re-list: keys missing from `items` are removed (objects
    /// deleted while the watch was down), then every listed value is applied.
    fn resync(&mut self, items: Vec<(ObjectKey, Self::Value)>) {
        let listed: HashSet<&ObjectKey> = items.iter().map(|(k, _)| k).collect();
        let gone: Vec<ObjectKey> = self
            .keys()
            .into_iter()
            .filter(|k| !listed.contains(k))
            .collect();
        for key in gone {
            self.apply(key, None);
        }
        for (key, value) in items {
            self.apply(key, Some(value));
        }
    }
}

/// One key's change between two drains. `None` means "absent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<K, V> {
    pub key: K,
    pub previous: Option<V>,
    pub current: Option<V>,
}

/// Current values per key and the pending diff; the generic tracker Services use.
#[derive(Debug, Clone)]
pub struct ChangeTracker<K, V> {
    current: HashMap<K, V>,
    /// For each key touched since the last drain, its value at that drain.
    previous: HashMap<K, Option<V>>,
}

impl<K, V> Default for ChangeTracker<K, V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> ChangeTracker<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (`Some`) or removes (`None`) the value of `key`.
    pub fn apply(&mut self, key: K, value: Option<V>) {
        let old = match &value {
            Some(v) => self.current.insert(key.clone(), v.clone()),
            None => self.current.remove(&key),
        };
        match self.previous.entry(key) {
            Entry::Vacant(slot) => {
                if old != value {
                    slot.insert(old);
                }
            }
            Entry::Occupied(slot) => {
                if *slot.get() == value {
                    slot.remove();
                }
            }
        }
    }

    /// Replaces the whole state after a re-list: keys missing from `items` are removed, so
    /// objects deleted while the watch was down still show up as deletions.
    pub fn resync(&mut self, items: impl IntoIterator<Item = (K, V)>) {
        let fresh: HashMap<K, V> = items.into_iter().collect();
        for (key, value) in relist(self.current.keys().cloned(), fresh) {
            self.apply(key, value);
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.current.iter()
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Number of keys with a pending change.
    pub fn pending(&self) -> usize {
        self.previous.len()
    }

    /// Takes the diff since the last drain.
    pub fn drain(&mut self) -> Vec<Change<K, V>> {
        self.previous
            .drain()
            .map(|(key, previous)| Change {
                current: self.current.get(&key).cloned(),
                key,
                previous,
            })
            .collect()
    }
}

impl<V: Clone + PartialEq> Store for ChangeTracker<ObjectKey, V> {
    type Value = V;

    fn apply(&mut self, key: ObjectKey, value: Option<V>) {
        ChangeTracker::apply(self, key, value);
    }

    fn get(&self, key: &ObjectKey) -> Option<V> {
        self.current.get(key).cloned()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.current.keys().cloned().collect()
    }

    fn resync(&mut self, items: Vec<(ObjectKey, V)>) {
        ChangeTracker::resync(self, items);
    }
}

/// The updates a re-list amounts to: a removal for every known key missing from `fresh`, then
/// every fresh value. Unchanged values cancel out in the trackers' `apply`.
fn relist<K: Eq + Hash + Clone, V>(
    known: impl Iterator<Item = K>,
    mut fresh: HashMap<K, V>,
) -> Vec<(K, Option<V>)> {
    let mut updates: Vec<(K, Option<V>)> = known
        .filter(|k| !fresh.contains_key(k))
        .map(|k| (k, None))
        .collect();
    updates.extend(fresh.drain().map(|(k, v)| (k, Some(v))));
    updates
}

/// A slice as a consumer keeps it: the model's [`EndpointSlice`], or a consumer's slimmer copy
/// (DNS keeps only ready addresses and hostnames).
pub trait TrackedSlice {
    /// The slice's own namespace and name.
    fn key(&self) -> &ObjectKey;
    /// The Service the slice belongs to.
    fn service(&self) -> &ObjectKey;
    /// Whether two versions say the same thing to this consumer; bookkeeping such as resource
    /// versions or trigger-time annotations does not count.
    fn same_endpoints(&self, other: &Self) -> bool;
    /// When the change this version carries was triggered
    /// (`endpoints.kubernetes.io/last-change-trigger-time`).
    fn trigger_time(&self) -> Option<Timestamp> {
        None
    }
}

impl TrackedSlice for EndpointSlice {
    fn key(&self) -> &ObjectKey {
        &self.key
    }

    fn service(&self) -> &ObjectKey {
        &self.service
    }

    /// Compares what endpoints say (addresses, conditions, ports, placement).
    fn same_endpoints(&self, other: &Self) -> bool {
        self.key == other.key
            && self.address_type == other.address_type
            && self.ports == other.ports
            && self.endpoints == other.endpoints
    }

    fn trigger_time(&self) -> Option<Timestamp> {
        self.trigger_time
    }
}

/// All EndpointSlices of one Service, ordered by slice name.
///
/// Equality is [`TrackedSlice::same_endpoints`] slice by slice, so a rewrite that changes no
/// endpoint is no change.
#[derive(Debug)]
pub struct ServiceEndpoints<S = EndpointSlice> {
    pub slices: Vec<Arc<S>>,
}

impl<S> Clone for ServiceEndpoints<S> {
    fn clone(&self) -> Self {
        Self {
            slices: self.slices.clone(),
        }
    }
}

impl<S> Default for ServiceEndpoints<S> {
    fn default() -> Self {
        Self { slices: Vec::new() }
    }
}

impl<S: TrackedSlice> PartialEq for ServiceEndpoints<S> {
    fn eq(&self, other: &Self) -> bool {
        self.slices.len() == other.slices.len()
            && self
                .slices
                .iter()
                .zip(&other.slices)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.same_endpoints(b))
    }
}

impl<S: TrackedSlice> Eq for ServiceEndpoints<S> {}

/// Tracks EndpointSlices and reports changes per Service, the unit DNS and the proxy work in.
#[derive(Debug)]
pub struct EndpointsTracker<S = EndpointSlice> {
    slices: HashMap<ObjectKey, Arc<S>>,
    by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// For each Service touched since the last drain, its endpoints at that drain.
    previous: HashMap<ObjectKey, Option<ServiceEndpoints<S>>>,
    /// Trigger times of the endpoint changes applied since the last drain, per Service.
    triggers: HashMap<ObjectKey, Vec<Timestamp>>,
    /// Trigger times before this are not reported: objects listed at start-up carry the times of
    /// changes made long before this consumer ran (upstream's tracker start time).
    since: Option<Timestamp>,
}

/// One Service's endpoints between two drains, and when the changes in between were triggered:
/// what a consumer reports as network-programming latency once it has applied the change.
#[derive(Debug)]
pub struct EndpointsChange<S = EndpointSlice> {
    pub key: ObjectKey,
    pub previous: Option<ServiceEndpoints<S>>,
    pub current: Option<ServiceEndpoints<S>>,
    /// One entry per slice update that changed endpoints and carried a trigger time.
    pub trigger_times: Vec<Timestamp>,
}

impl<S> Default for EndpointsTracker<S> {
    fn default() -> Self {
        Self {
            slices: HashMap::new(),
            by_service: HashMap::new(),
            previous: HashMap::new(),
            triggers: HashMap::new(),
            since: None,
        }
    }
}

impl<S: TrackedSlice> EndpointsTracker<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that reports only trigger times at or after `start` (the consumer's start).
    pub fn since(start: Timestamp) -> Self {
        Self {
            since: Some(start),
            ..Self::default()
        }
    }

    /// Sets or removes one slice. A slice that moved to another Service touches both.
    pub fn apply(&mut self, slice_key: ObjectKey, slice: Option<Arc<S>>) {
        if let Some(new) = &slice
            && let Some(t) = new.trigger_time()
            && self.since.is_none_or(|since| t >= since)
        {
            let changed = self
                .slices
                .get(&slice_key)
                .is_none_or(|old| !old.same_endpoints(new));
            if changed {
                self.triggers
                    .entry(new.service().clone())
                    .or_default()
                    .push(t);
            }
        }
        let old_service = self.slices.get(&slice_key).map(|s| s.service().clone());
        let new_service = slice.as_ref().map(|s| s.service().clone());
        for svc in old_service.iter().chain(new_service.iter()) {
            if !self.previous.contains_key(svc) {
                let snapshot = self.endpoints(svc);
                self.previous.insert(svc.clone(), snapshot);
            }
        }
        if let Some(old) = old_service
            && let Some(set) = self.by_service.get_mut(&old)
        {
            set.remove(&slice_key);
            if set.is_empty() {
                self.by_service.remove(&old);
            }
        }
        match slice {
            Some(slice) => {
                self.by_service
                    .entry(slice.service().clone())
                    .or_default()
                    .insert(slice_key.clone());
                self.slices.insert(slice_key, slice);
            }
            None => {
                self.slices.remove(&slice_key);
            }
        }
    }

    /// Replaces all slices after a re-list; slices missing from `items` are removed.
    pub fn resync(&mut self, items: impl IntoIterator<Item = Arc<S>>) {
        let fresh: HashMap<ObjectKey, Arc<S>> =
            items.into_iter().map(|s| (s.key().clone(), s)).collect();
        for (key, slice) in relist(self.slices.keys().cloned(), fresh) {
            self.apply(key, slice);
        }
    }

    /// The current slices of `service`, or `None` when it has none.
    pub fn endpoints(&self, service: &ObjectKey) -> Option<ServiceEndpoints<S>> {
        let keys = self.by_service.get(service)?;
        Some(ServiceEndpoints {
            slices: keys
                .iter()
                .filter_map(|k| self.slices.get(k).cloned())
                .collect(),
        })
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Number of Services with a pending (possibly cancelling) change.
    pub fn pending(&self) -> usize {
        self.previous.len()
    }

    /// Takes the per-Service diff since the last drain, leaving out changes that cancelled out
    /// (and with them their trigger times: nothing is programmed for them).
    pub fn drain(&mut self) -> Vec<EndpointsChange<S>> {
        let touched: Vec<_> = self.previous.drain().collect();
        let mut triggers = std::mem::take(&mut self.triggers);
        touched
            .into_iter()
            .filter_map(|(key, previous)| {
                let current = self.endpoints(&key);
                (previous != current).then(|| EndpointsChange {
                    trigger_times: triggers.remove(&key).unwrap_or_default(),
                    key,
                    previous,
                    current,
                })
            })
            .collect()
    }
}

impl<S: TrackedSlice> Store for EndpointsTracker<S> {
    type Value = Arc<S>;

    fn apply(&mut self, key: ObjectKey, value: Option<Arc<S>>) {
        EndpointsTracker::apply(self, key, value);
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<S>> {
        self.slices.get(key).cloned()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.slices.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
