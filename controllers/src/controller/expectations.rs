//! What the controller expects to read back after its own slice writes, per Service (upstream's
//! `endpointSliceTracker`): the generation each write got, or that a slice was deleted. Two uses:
//! a sync whose cache is older than its own last write waits instead of acting on it (stale),
//! and a watch event that is only our own write coming back queues nothing. Pure.

use std::collections::HashMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use svcplane_model::ObjectKey;

#[derive(Debug, Default)]
pub struct Expectations {
    /// Per Service: slice UID → the generation written, or `None` for a deletion we made.
    by_service: HashMap<ObjectKey, HashMap<String, Option<i64>>>,
}

fn uid(slice: &EndpointSlice) -> &str {
    slice.metadata.uid.as_deref().unwrap_or_default()
}

fn generation(slice: &EndpointSlice) -> i64 {
    slice.metadata.generation.unwrap_or(0)
}

impl Expectations {
    /// We wrote `slice` (as the API server returned it) for `service`.
    pub fn written(&mut self, service: &ObjectKey, slice: &EndpointSlice) {
        if slice.metadata.uid.is_some() {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(uid(slice).to_owned(), Some(generation(slice)));
        }
    }

    /// We deleted the slice with `uid` of `service`.
    pub fn deleted(&mut self, service: &ObjectKey, uid: &str) {
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(uid.to_owned(), None);
    }

    /// The slice with `uid` of `service` is gone from the cache (its deletion event arrived,
    /// ours or anybody's): nothing more to expect of it (upstream's `HandleDeletion`).
    /// Without this, a slice we wrote and someone else deleted (the garbage collector after
    /// the Service was re-created under the same name, a user) would leave the Service stale
    /// for good: "one we wrote is missing".
    pub fn gone(&mut self, service: &ObjectKey, uid: &str) {
        if let Some(expected) = self.by_service.get_mut(service) {
            expected.remove(uid);
            if expected.is_empty() {
                self.by_service.remove(service);
            }
        }
    }

    /// The Service is gone: nothing more to expect.
    pub fn forget(&mut self, service: &ObjectKey) {
        self.by_service.remove(service);
    }

    /// True when `listed` (the cache's slices of `service`) is older than what we wrote: a
    /// slice we deleted is still there, one we wrote has an older generation, or one we wrote
    /// is missing.
    pub fn is_stale<'a>(
        &self,
        service: &ObjectKey,
        listed: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> bool {
        let Some(expected) = self.by_service.get(service) else {
            return false;
        };
        let mut seen = std::collections::HashSet::new();
        for slice in listed {
            match expected.get(uid(slice)) {
                Some(None) => return true,
                Some(Some(g)) if generation(slice) < *g => return true,
                _ => {}
            }
            seen.insert(uid(slice));
        }
        expected
            .iter()
            .any(|(uid, g)| g.is_some() && !seen.contains(uid.as_str()))
    }

    /// Whether a watch event for a slice of `service` is our own write coming back: `now` is
    /// the slice after the event (`None`: deleted), `before` the cached one before it.
    pub fn is_own_echo(
        &self,
        service: &ObjectKey,
        now: Option<&EndpointSlice>,
        before: Option<&EndpointSlice>,
    ) -> bool {
        let Some(subject) = now.or(before) else {
            return false;
        };
        let expected = self
            .by_service
            .get(service)
            .and_then(|m| m.get(uid(subject)));
        match (now, expected) {
            (None, Some(None)) => true,
            (Some(now), Some(Some(g))) => generation(now) <= *g,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
